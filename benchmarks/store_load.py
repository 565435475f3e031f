"""Storing and loading a 256 MiB float64 result: a step's miss and hit against ``np.save`` and ``np.load``.

The step ``make(i)`` fills a fresh array with ``i``. Its store overhead is the miss time minus the time of
the same body run without nbcache; the overhead covers the key, hashing the output, serializing it with a
checksum and writing it. Goals: store overhead <= 1.5x ``np.save`` of the same array to a file in the same
temporary directory, and a hit <= 1.2x ``np.load`` of a file of the same size.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

import nbcache
from _timing import best_of, goal, header, show, temp_cache

NBYTES = 256 << 20
N = NBYTES // 8
REPEAT = 5


def body(i: int) -> np.ndarray:
    out = np.empty(N)
    out.fill(i)
    return out


make = nbcache.step(body, name="make")


def main() -> None:
    header("store_load", f"step returning a {NBYTES >> 20} MiB float64 array vs np.save / np.load")
    with temp_cache() as path:
        fresh = itertools.count(1)  # every miss gets an argument not seen before
        t_body = best_of(lambda: body(next(fresh)), repeat=REPEAT)
        t_miss = best_of(lambda: make(next(fresh)), repeat=REPEAT, between=nbcache.clear)

        arr = body(7)
        saved = os.path.join(path, "array.npy")

        def remove_saved() -> None:  # np.save, like a miss, writes a new file each time
            if os.path.exists(saved):
                os.remove(saved)

        t_save = best_of(lambda: np.save(saved, arr), repeat=REPEAT, between=remove_saved)

        make(0)  # the hit below reads this entry
        assert np.array_equal(make(0), np.zeros(N)) and nbcache.runs(make)[-1].cached
        t_hit = best_of(lambda: make(0), repeat=REPEAT)
        t_load = best_of(lambda: np.load(saved), repeat=REPEAT)

    show("body alone (no nbcache)", t_body)
    show("step miss (body + store)", t_miss)
    show("store overhead (miss - body)", t_miss - t_body, nbytes=NBYTES)
    show("np.save", t_save, nbytes=NBYTES)
    goal("store overhead / np.save", (t_miss - t_body) / t_save, "<=", 1.5)
    show("step hit (load)", t_hit, nbytes=NBYTES)
    show("np.load", t_load, nbytes=NBYTES)
    goal("hit / np.load", t_hit / t_load, "<=", 1.2)


if __name__ == "__main__":
    main()
