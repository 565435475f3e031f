"""What nbcache does on its background threads: a Worker runs jobs in order, survives a failing job, ends
its thread when idle and starts another when given work; a step's code is analysed ahead of its first call
(``fingerprint.prepare``), which changes no fingerprint and never fails."""

from __future__ import annotations

import threading
import time
import types

import pytest

from nbcache import background, fingerprint_code
from nbcache.background import Worker
from nbcache.fingerprint import fingerprint, prepare


def test_a_worker_runs_jobs_in_order_and_a_failing_one_stops_nothing():
    worker = Worker("test-worker")
    done: list[int] = []
    worker.submit(lambda: done.append(1))
    worker.submit(lambda: 1 / 0)
    worker.submit(lambda: done.append(2))
    assert worker.drain(timeout=30) and done == [1, 2]


def test_an_idle_worker_ends_its_thread_and_starts_another_for_new_work(monkeypatch):
    monkeypatch.setattr(background, "IDLE_S", 0.05)
    worker = Worker("test-idle")
    worker.submit(lambda: None)
    assert worker.drain(timeout=30)
    first = worker._thread
    deadline = time.monotonic() + 10
    while first is not None and first.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first is not None and not first.is_alive()
    done = threading.Event()
    worker.submit(done.set)
    assert done.wait(10) and worker._thread is not first


def test_drain_times_out_while_a_job_runs():
    worker = Worker("test-slow")
    gate = threading.Event()
    worker.submit(gate.wait)
    assert not worker.drain(timeout=0.05)
    gate.set()
    assert worker.drain(timeout=30)


def _notebook(source: str) -> types.ModuleType:
    module = types.ModuleType("__main__")
    exec(compile(source, "<cell>", "exec"), vars(module))
    return module


def test_prepare_analyses_a_function_and_the_helpers_it_reads_and_changes_no_fingerprint():
    nb = _notebook("import math\nSCALE = 3\ndef helper(x):\n    return math.sqrt(x) * SCALE\n"
                   "def step(x):\n    return helper(x) + 1\n")
    before = fingerprint(nb.step)
    for f in (nb.step, nb.helper):
        fingerprint_code._CODE_INFO.pop(f.__code__, None)
    prepare(nb.step)
    assert nb.step.__code__ in fingerprint_code._CODE_INFO and nb.helper.__code__ in fingerprint_code._CODE_INFO
    assert fingerprint(nb.step) == before


@pytest.mark.parametrize("value", [object(), None, 1, type("Odd", (), {"__getattr__": lambda s, n: 1 / 0})()],
                         ids=["object", "None", "int", "raising getattr"])
def test_prepare_never_fails_whatever_the_globals_hold(value):
    nb = _notebook("def step():\n    return thing.attribute + other\n")
    nb.thing, nb.other = value, value
    prepare(nb.step)
    prepare(print)  # (no code of its own)
    prepare(lambda: undefined_name)  # noqa: F821
