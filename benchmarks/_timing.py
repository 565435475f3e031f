"""Timing and reporting helpers shared by the benchmark scripts.

Every benchmark compares nbcache with an anchor measured in the same run, and prints the ratio next to
its goal as PASS or MISS. Nothing here asserts on time: a slow machine prints MISS, it does not fail.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import tempfile
import time
from typing import Callable, Iterator

import nbcache

__all__ = ["best_of", "header", "show", "goal", "temp_cache"]


def best_of(fn: Callable[[], object], *, repeat: int = 5, number: int = 1, warmup: int = 1,
            between: Callable[[], object] | None = None) -> float:
    """Seconds per call of ``fn``: the best of ``repeat`` rounds of ``number`` calls, after ``warmup`` calls.

    ``between`` runs untimed before every warm-up call and every round (e.g. to clear a cache or delete a
    file). The garbage collector is off while a round runs, as in ``timeit``.
    """
    for _ in range(warmup):
        if between is not None:
            between()
        fn()
    best = float("inf")
    for _ in range(repeat):
        if between is not None:
            between()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            elapsed = time.perf_counter() - t0
        finally:
            if gc_was_enabled:
                gc.enable()
        best = min(best, elapsed / number)
    return best


def header(title: str, what: str) -> None:
    """Print the benchmark's name, what it measures and the machine it ran on."""
    print(f"== {title}: {what}")
    print(f"   python {platform.python_version()}, {os.cpu_count()} cpus, nbcache {nbcache.__version__}")


def show(label: str, seconds: float, *, unit: str = "ms", nbytes: int | None = None) -> None:
    """Print one measurement: time per call in ``unit`` (s, ms or us), plus GB/s when ``nbytes`` is given."""
    scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
    rate = f"  {nbytes / seconds / 1e9:7.2f} GB/s" if nbytes is not None else ""
    print(f"   {label:<34} {seconds * scale:10.2f} {unit}{rate}")


def goal(label: str, ratio: float, op: str, target: float) -> bool:
    """Print ``ratio`` against its goal (``op`` is "<=" or ">=") with PASS or MISS; return whether it passed."""
    ok = ratio <= target if op == "<=" else ratio >= target
    print(f"   {label:<34} {ratio:10.2f}x   goal {op} {target:.1f}x   {'PASS' if ok else 'MISS'}")
    return ok


@contextlib.contextmanager
def temp_cache() -> Iterator[str]:
    """A fresh temporary directory, made nbcache's cache directory for the duration of the block."""
    with tempfile.TemporaryDirectory(prefix="nbcache-bench-") as path:
        nbcache.set_cache_dir(path)
        try:
            yield path
        finally:
            nbcache.set_cache_dir(None)
