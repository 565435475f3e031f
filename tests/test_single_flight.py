"""Single-flight: callers of one key at the same time run its body once; the others wait and get its result.
Across processes (each a fresh interpreter, as kernels are) and threads; a caller whose owner was killed
computes the key itself; one that waited too long computes it too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import nbcache
from nbcache import Cache, MemoryStore, step

WORKER = textwrap.dedent('''
    import os, sys, time
    from nbcache import step, runs
    from nbcache.records import SESSION

    log, start, pause = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])

    @step(ignore=["pause"])
    def slow(x, pause):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(pause)
        return x * 2

    time.sleep(max(0.0, start - time.time()))  # all start together
    value = slow(21, pause)
    print(value, [r for r in runs("slow") if r.session == SESSION][-1].cached)  # (its own run: the history is shared)
''')


def _start(tmp_path: Path, n: int, pause: float, **env: str) -> list[subprocess.Popen]:
    full = {**os.environ, "NBCACHE_DIR": str(tmp_path / "cache"), **env}
    start = time.time() + 1.5  # (after every interpreter has imported nbcache)
    return [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "ran.log"), str(start), str(pause)],
                             env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(n)]


def _results(procs: list[subprocess.Popen]) -> list[str]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        out.append(stdout.strip())
    return out


def test_eight_processes_calling_one_key_run_its_body_once(tmp_path):
    results = _results(_start(tmp_path, 8, pause=1.0))
    assert sorted(results) == ["42 False"] + ["42 True"] * 7
    assert len((tmp_path / "ran.log").read_text().split()) == 1


def test_a_caller_that_waited_too_long_computes_the_key_itself(tmp_path):
    results = _results(_start(tmp_path, 2, pause=4.0, NBCACHE_LOCK_TIMEOUT="0.5"))
    assert results == ["42 False", "42 False"]  # neither waited for the other's 4 s
    assert len((tmp_path / "ran.log").read_text().split()) == 2


def test_when_the_computing_process_is_killed_a_waiting_one_computes(tmp_path):
    log = tmp_path / "ran.log"
    owner = _start(tmp_path, 1, pause=60.0)[0]
    deadline = time.time() + 30
    while not (log.exists() and log.read_text().strip()):  # the owner holds the lock and is in the body
        assert time.time() < deadline, owner.stderr.read() if owner.poll() is not None else "owner never began"
        time.sleep(0.05)
    waiter = _start(tmp_path, 1, pause=0.1)[0]
    time.sleep(2.5)  # the waiter has started and is waiting for the lock
    assert waiter.poll() is None
    os.kill(owner.pid, signal.SIGKILL)
    owner.communicate()
    t0 = time.time()
    assert _results([waiter]) == ["42 False"]
    assert time.time() - t0 < 20  # it did not wait out the 15-minute timeout
    assert len(log.read_text().split()) == 2


def test_threads_calling_one_key_run_its_body_once(cache_dir):
    ran = []
    cache = Cache(store=MemoryStore())

    @step(cache=cache, ignore=["log"])
    def slow(x, log):
        log.append(x)
        time.sleep(0.3)
        return x + 1

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(1, ran))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2] * 4 and ran == [1]
    assert sorted(r.cached for r in cache.runs()) == [False, True, True, True]
    assert nbcache.runs("slow") == []


def test_a_step_calling_itself_with_its_own_key_does_not_wait_for_itself(cache_dir, monkeypatch):
    monkeypatch.setattr(nbcache.cache.default_cache(), "lock_timeout_s", 60.0)

    @step(ignore=["inner"])
    def nested(x, inner=False):
        return nested(x, inner=True) + 1 if not inner else x

    t0 = time.perf_counter()
    assert nested(3) == 4
    assert time.perf_counter() - t0 < 10  # not the lock's timeout
    assert nested(3) == 4 and nbcache.runs()[-1].cached
