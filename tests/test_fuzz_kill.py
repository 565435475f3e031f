"""kill -9 at random moments: a process storing tens-of-MB results, serving hits, appending to the history and
clearing the cache is killed with SIGKILL after a random delay, over and over, on one cache directory.
Afterwards every call (in a fresh process) returns the right value, recomputing with at most one warning;
``gc`` leaves no byte that nothing names (only the index, lock files and value files the index names remain,
and no temporary); the size the store reports is what ``du`` measures; and the history stays readable.
(A fixed seed: the same choices of operations and delays on every run; where a kill lands varies with timing.)
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import nbcache
from nbcache import Outcome, StepRun
from nbcache.diskgc import GRACE_S
from nbcache.diskstore import open_disk_store

from .conftest import run_python

TRIALS = 32
BIG_KEYS = 6  # big(k) returns 2.5M + 250k * k float64: 20 to 30 MB
SMALL_KEYS = 40

STEPS = textwrap.dedent('''
    import numpy as np
    import nbcache
    from nbcache import step

    @step
    def big(k):
        return np.arange(2_500_000 + 250_000 * k, dtype=np.float64) + k

    @step
    def small(i):
        return {"i": i, "squares": [i * i] * 10}

    def right(name, arg, value):
        if name == "big":
            expected = np.arange(2_500_000 + 250_000 * arg, dtype=np.float64) + arg
            return isinstance(value, np.ndarray) and value.dtype == expected.dtype and np.array_equal(value, expected)
        return value == {"i": arg, "squares": [arg * arg] * 10}
''')

# One trial: loops over random operations until it is killed. Every value it gets is checked; a wrong value,
# an exception out of a call or more than one warning is written to the problems file, and the worker exits.
# The operation under way is written to the doing file, so the test can tell where the kill landed.
WORKER = STEPS + textwrap.dedent('''
    import os, random, sys, traceback, warnings
    from nbcache import CacheWarning

    rng = random.Random(int(sys.argv[1]))
    problems, doing = sys.argv[2], sys.argv[3]
    doing_fd = os.open(doing, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    STEP = {"big": big, "small": small}

    def problem(text):
        with open(problems, "a") as f:
            f.write(f"worker {sys.argv[1]}: {text}\\n")
        os._exit(1)

    def call(name, arg):
        os.write(doing_fd, f"{name}\\n".encode())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = STEP[name](arg)
            except BaseException:
                problem(f"{name}({arg}) raised: {traceback.format_exc()}")
        told = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
        if len(told) > 1:
            problem(f"{name}({arg}) gave {len(told)} warnings: {told}")
        if not right(name, arg, value):
            problem(f"{name}({arg}) returned a wrong value")

    print("ready", flush=True)
    while True:
        op = rng.random()
        if op < 0.45:
            call("big", rng.randrange(''' + str(BIG_KEYS) + '''))
        elif op < 0.85:
            for _ in range(rng.randrange(1, 30)):  # hits (and a few misses): history appends
                call("small", rng.randrange(''' + str(SMALL_KEYS) + '''))
        elif op < 0.93:
            os.write(doing_fd, b"clear step\\n")
            nbcache.clear(rng.choice(["big", "small"]))
        elif op < 0.97:
            os.write(doing_fd, b"clear\\n")
            nbcache.clear()
        else:
            os.write(doing_fd, b"runs\\n")
            nbcache.runs()
''')

# After the trials, in a fresh process: every call returns the right value, with at most one warning (the
# damage it repaired), and a second call of each is a clean hit.
CHECK = STEPS + textwrap.dedent('''
    import json, traceback, warnings
    from nbcache import CacheWarning

    calls = [("big", k) for k in range(''' + str(BIG_KEYS) + ''')] + [("small", i) for i in range(''' + \
    str(SMALL_KEYS) + ''')]
    report = {"wrong": [], "raised": [], "warned": [], "second": []}
    for attempt in ("first", "second"):
        for name, arg in calls:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    value = {"big": big, "small": small}[name](arg)
                except Exception:
                    report["raised"].append(f"{name}({arg}): {traceback.format_exc()}")
                    continue
            told = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
            if not right(name, arg, value):
                report["wrong"].append(f"{name}({arg})")
            if attempt == "first":
                report["warned"].append(len(told))
            elif told or not nbcache.runs()[-1].cached:
                report["second"].append(f"{name}({arg}): {told}, {nbcache.runs()[-1].reason}")
    print(json.dumps(report))
''')


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if not p.is_dir())


def _du(directory: Path) -> int:
    out = subprocess.run(["du", "-s", "-B1", str(directory)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


@pytest.mark.skipif(shutil.which("du") is None, reason="no du")
def test_kill_9_at_random_moments_never_serves_a_wrong_value_and_gc_leaves_no_orphan_bytes(cache_dir, tmp_path):
    rng = random.Random(2024)
    env = {**os.environ, "NBCACHE_DIR": str(cache_dir)}  # (the suite's NBCACHE_KEY_FILE is inherited)
    problems, doing, stderr = tmp_path / "problems.txt", tmp_path / "doing.txt", tmp_path / "stderr.txt"
    landed: collections.Counter[str] = collections.Counter()
    temporaries_seen = 0
    for trial in range(TRIALS):
        doing.write_bytes(b"")
        with open(stderr, "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", WORKER, str(trial), str(problems), str(doing)],
                                    env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            assert proc.stdout.readline() == "ready\n", stderr.read_text()
            time.sleep(rng.uniform(0.0, 1.0))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        assert not problems.exists(), f"trial {trial}: {problems.read_text()}"
        assert proc.returncode == -signal.SIGKILL, f"trial {trial} ended by itself: {stderr.read_text()}"
        done = doing.read_text().split("\n")
        landed[(done[-2] if len(done) > 1 else "nothing")] += 1
        temporaries_seen += sum(1 for p in (cache_dir / "store").rglob(f"*.tmp-{proc.pid}"))

    report = json.loads(run_python(CHECK, env={"NBCACHE_DIR": str(cache_dir)}))
    assert report["raised"] == [] and report["wrong"] == []
    assert max(report["warned"]) <= 1, report["warned"]
    assert report["second"] == []  # whatever was damaged was repaired by one recompute

    runs = nbcache.runs()  # (reading the history does not raise)
    assert runs and all(_well_formed(run) for run in runs)
    store = open_disk_store(cache_dir)
    try:
        assert store.read_runs() == runs and store.unreadable_runs <= TRIALS  # (at most a line cut per kill)
        # gc removes the temporaries of dead writers at once, but only value files older than its grace (a
        # writer may be between its rename and its commit): the trials are over, so age every file past it
        for path in _files(cache_dir / "store"):
            then = time.time() - GRACE_S - 60
            os.utime(path, (then, then))
        collected = store.gc()
        named = {os.path.normpath(name) for name in _value_files_named(cache_dir)}
        for path in _files(cache_dir):
            relative = path.relative_to(cache_dir).as_posix()
            assert (relative in ("runs.jsonl", "store/cache.db", "store/cache.db-wal", "store/cache.db-shm")
                    or relative.startswith("locks/") and relative.endswith(".lock")
                    or relative.startswith("store/") and os.path.normpath(relative[6:]) in named), \
                f"{relative} is left after gc ({path.stat().st_size} bytes)"
        assert not any(".tmp-" in p.name for p in _files(cache_dir))
        empty = [p for p in (cache_dir / "store").rglob("*") if p.is_dir() and not any(p.iterdir())]
        assert empty == []
        assert store.stats().size_bytes == _du(cache_dir)
        # and no blob of the index that no entry names (every key was called again by the check, which stores
        # the same blob under the same name: one left by a kill between a blob and its entry is named again)
        named_blobs = {address for _, entry in store.entries() for address in entry.blobs}
        assert {name[5:] for name in _index_keys(cache_dir) if name.startswith("blob:")} <= named_blobs
    finally:
        store.close()
    print(f"\nkills landed in: {dict(landed)}; temporaries left by the kills: {temporaries_seen};"
          f" warnings of the check: {sum(report['warned'])}; gc freed {collected}")
    assert landed["big"] >= TRIALS // 4  # (the kills did land in stores and hits of big values)


def _index(cache_dir: Path, query: str) -> list:
    con = sqlite3.connect(cache_dir / "store" / "cache.db")
    try:
        return [value for (value,) in con.execute(query)]
    finally:
        con.close()


def _value_files_named(cache_dir: Path) -> list[str]:
    return _index(cache_dir, "SELECT filename FROM Cache WHERE filename IS NOT NULL")


def _index_keys(cache_dir: Path) -> list[str]:
    return [key for key in _index(cache_dir, "SELECT key FROM Cache") if isinstance(key, str)]


def _well_formed(run: StepRun) -> bool:
    return (isinstance(run, StepRun) and run.step in ("big", "small") and isinstance(run.cached, bool)
            and isinstance(run.key, str) and len(run.key) == 32 and isinstance(run.state, Outcome)
            and run.status == "ok" and run.started_at.tzinfo is not None and run.duration_s >= 0
            and (run.state is Outcome.HIT) == run.cached and len(run.outputs) == 1)
