"""Hit latency of a tiny step: ``@nbcache.step`` against ``joblib.Memory(...).cache`` in the same process.

Goal: nbcache's hit costs no more than joblib's (ratio nbcache/joblib <= 1.0).
"""

from __future__ import annotations

import os

import joblib

import nbcache
from _timing import best_of, goal, header, show, temp_cache

ROUNDS = 5
CALLS = 2000


def add(a: int, b: int = 2) -> int:
    return a + b


def main() -> None:
    header("hit_latency", f"tiny step hit, best of {ROUNDS} rounds x {CALLS} calls")
    with temp_cache() as path:
        cached_nb = nbcache.step(add)
        cached_jl = joblib.Memory(os.path.join(path, "joblib"), verbose=0).cache(add)
        assert cached_nb(1) == cached_jl(1) == 3  # fill both caches; every timed call below is a hit

        t_plain = best_of(lambda: add(1), repeat=ROUNDS, number=CALLS)
        t_nb = best_of(lambda: cached_nb(1), repeat=ROUNDS, number=CALLS, warmup=100)
        t_jl = best_of(lambda: cached_jl(1), repeat=ROUNDS, number=CALLS, warmup=100)
        assert all(run.cached for run in nbcache.runs(cached_nb)[1:])

    show("plain call (for scale)", t_plain, unit="us")
    show("nbcache hit", t_nb, unit="us")
    show("joblib.Memory hit", t_jl, unit="us")
    goal("nbcache / joblib", t_nb / t_jl, "<=", 1.0)


if __name__ == "__main__":
    main()
