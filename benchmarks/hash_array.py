"""Hashing a 512 MiB float64 array: ``nbcache.hash_value`` against raw xxh3 and ``joblib.hash``.

Goals: at least 0.7x the throughput of ``xxhash.xxh3_128(arr).digest()`` over the same buffer, and at
least 25x faster than ``joblib.hash(arr)``.
"""

from __future__ import annotations

import joblib
import numpy as np
import xxhash

import nbcache
from _timing import best_of, goal, header, show, temp_cache

NBYTES = 512 << 20


def main() -> None:
    header("hash_array", f"hash a {NBYTES >> 20} MiB float64 array")
    arr = np.random.default_rng(0).random(NBYTES // 8)
    with temp_cache():
        t_nb = best_of(lambda: nbcache.hash_value(arr), repeat=7)
        t_xx = best_of(lambda: xxhash.xxh3_128(arr).digest(), repeat=7)
        t_jl = best_of(lambda: joblib.hash(arr), repeat=2, warmup=0)  # ~0.7 s a call

    show("nbcache.hash_value", t_nb, nbytes=NBYTES)
    show("xxhash.xxh3_128 (raw buffer)", t_xx, nbytes=NBYTES)
    show("joblib.hash", t_jl, nbytes=NBYTES)
    goal("nbcache throughput / xxh3", t_xx / t_nb, ">=", 0.7)
    goal("nbcache speed-up over joblib", t_jl / t_nb, ">=", 25.0)


if __name__ == "__main__":
    main()
