"""``nbcache ls`` on a cache of 50,000 entries, timed as a user runs it: a fresh process, from start to exit.

The cache is what a long-lived project directory accumulates: 100 steps (function steps, and cells with
their default names such as ``features_003 ← data``) with 500 stored results each, every result a small
value of its own, and a history of the 50,000 runs that stored them plus 25,000 hits. It is written through
the store API (``Cache.store()``), each entry sealed with the cache's key as a step seals it. The anchors,
printed for scale, are the start of a bare Python and of one that imports the command; the goal is
absolute: the listing in under a second.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import nbcache
from _timing import best_of, goal, header, show
from nbcache.entry import Entry
from nbcache.records import Outcome, StepRun

ENTRIES = 50_000
STEPS = 100
HITS = 25_000


def fill(path: str, entries: int = ENTRIES, steps: int = STEPS, hits: int = HITS) -> None:
    """Write ``entries`` results of ``steps`` steps, their runs and ``hits`` hits into the cache at ``path``."""
    rng = random.Random(0)
    cache = nbcache.Cache(path)
    store = cache.store()
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    names = [f"step_{i:03d}" if i % 4 else f"features_{i:03d} ← data" for i in range(steps)]
    stored: list[tuple[str, str, str, str]] = []  # (step, kind, key, output address)
    for i in range(entries):
        step = names[i % steps]
        kind = "cell" if "←" in step else "function"
        key, address = f"{i:032x}", f"{rng.getrandbits(128):032x}"
        frame = cache.frame(list(range(i % 50)))
        blob = f"{address}-{frame.identity()}"
        cache.put(store, blob, frame)
        started = t0 + timedelta(seconds=i)
        entry = Entry(step=step, kind=kind, outputs=(address,), blobs=(blob,), sizes={address: frame.nbytes},
                      created_at=started.timestamp(), duration_s=rng.random(), is_tuple=False)
        store.put_entry(key, cache.seal(key, entry))
        store.append_run(_run(step, kind, key, address, started, rng, cached=False,
                              state=Outcome.FIRST_RUN if i < steps else Outcome.CHANGED))
        stored.append((step, kind, key, address))
    for j in range(hits):
        step, kind, key, address = rng.choice(stored)
        store.append_run(_run(step, kind, key, address, t0 + timedelta(seconds=entries + j), rng, cached=True,
                              state=Outcome.HIT))
    store.close()


def _run(step: str, kind: str, key: str, address: str, started: datetime, rng: random.Random, *, cached: bool,
         state: Outcome) -> StepRun:
    reason = {Outcome.HIT: "cache hit", Outcome.FIRST_RUN: "first run"}.get(state, "argument x changed")
    return StepRun(step=step, cached=cached, duration_s=rng.random(), saved_s=rng.random() if cached else 0.0,
                   key=key, code=f"{rng.getrandbits(64):016x}", inputs={"x": f"{rng.getrandbits(128):032x}"},
                   outputs=(address,), reason=reason, started_at=started, kind=kind, state=state,
                   sizes={address: 100}, deps={"helper()": f"{rng.getrandbits(64):016x}"})


def _command(*args: str) -> list[str]:
    return [sys.executable, *args]


def _timed(argv: list[str]) -> float:
    def call() -> None:
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return best_of(call, repeat=5)


def main() -> None:
    header("cli_ls", f"`nbcache ls` in a fresh process on a cache of {ENTRIES:,} entries ({STEPS} steps,"
                     f" {ENTRIES + HITS:,} recorded runs)")
    with tempfile.TemporaryDirectory(prefix="nbcache-bench-") as path:
        t0 = time.perf_counter()
        fill(path)
        print(f"   (cache written in {time.perf_counter() - t0:.1f} s)")
        listed = json.loads(subprocess.run(_command("-m", "nbcache.cli", "ls", "--json", "--dir", path),
                                           check=True, capture_output=True, text=True).stdout)
        assert len(listed) == STEPS and {s["entries"] for s in listed} == {ENTRIES // STEPS}, listed[:2]
        assert all(s["last"] is not None for s in listed)
        t_python = _timed(_command("-c", "pass"))
        t_import = _timed(_command("-c", "import nbcache.cli"))
        t_ls = _timed(_command("-m", "nbcache.cli", "ls", "--dir", path))
        t_json = _timed(_command("-m", "nbcache.cli", "ls", "--json", "--dir", path))
    show("python -c pass", t_python)
    show("python -c 'import nbcache.cli'", t_import)
    show("nbcache ls", t_ls)
    show("nbcache ls --json", t_json)
    goal("ls time / 1 s", t_ls / 1.0, "<=", 1.0)


if __name__ == "__main__":
    main()
