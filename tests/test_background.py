"""What nbcache does on its background threads: a Worker runs jobs in order, survives a failing job, ends
its thread when idle and starts another when given work, and gives a job back to a caller that needs it (or
makes it wait for the job); a step's code is analysed ahead of its first call (``fingerprint.prepare``), which
changes no fingerprint and never fails, and its first call settles that job rather than race it."""

from __future__ import annotations

import functools
import sys
import threading
import time
import types

import pytest

import nbcache
from nbcache import background, fingerprint_code, step
from nbcache.cache import default_cache
from nbcache.background import Worker
from nbcache.fingerprint import fingerprint, prepare

from .conftest import run_python


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


def test_settle_takes_back_a_job_not_started_and_waits_for_one_under_way():
    """A caller that needs what a job does never runs beside it: a queued job is taken back (the caller
    does that work itself), one under way is waited for."""
    worker = Worker("test-settle")
    gate, started = threading.Event(), threading.Event()
    done: list[str] = []

    def slow() -> None:
        started.set()
        gate.wait(30)
        done.append("slow")

    running = worker.submit(slow)
    queued = worker.submit(lambda: done.append("queued"))
    assert started.wait(30)
    assert worker.settle(queued) is True and queued.state == "taken back"
    threading.Timer(0.05, gate.set).start()
    assert worker.settle(running) is False and running.state == "done" and done == ["slow"]
    assert worker.drain(timeout=30) and done == ["slow"]  # the job taken back never ran
    assert worker.settle(running) is False  # (settled already: nothing to do)


def test_a_job_given_a_delay_starts_no_sooner_stays_queued_meanwhile_and_the_jobs_after_it_wait():
    worker = Worker("test-after")
    done: list[str] = []
    t0 = time.monotonic()
    later = worker.submit(lambda: done.append(f"later {time.monotonic() - t0:.2f}"), after_s=0.3)
    worker.submit(lambda: done.append("next"))
    assert later.state == "queued" and done == []
    assert worker.drain(timeout=30) and len(done) == 2 and done[1] == "next"
    assert float(done[0].split()[1]) >= 0.3
    taken = worker.submit(lambda: done.append("taken"), after_s=30)
    assert worker.settle(taken) is True and taken.state == "taken back"
    assert worker.drain(timeout=5) and done[2:] == []  # (taken back while it waited: it never runs)


def test_a_drain_waiting_for_a_job_taken_back_returns_and_the_jobs_given_after_still_run():
    """A caller takes back a delayed job while another thread drains the worker: the drain is told (it
    waited for ever), and a job given next wakes the worker, not the drain (it waited for its idle timeout)."""
    worker = Worker("test-taken")
    delayed = worker.submit(lambda: None, after_s=30)
    drained = threading.Event()
    threading.Thread(target=lambda: worker.drain() and drained.set(), daemon=True).start()
    time.sleep(0.05)  # (the drain is waiting)
    assert worker.settle(delayed) is True and drained.wait(10)
    waiter = threading.Thread(target=worker.drain, args=(30,), daemon=True)
    waiter.start()
    time.sleep(0.05)
    ran = threading.Event()
    worker.submit(ran.set)
    assert ran.wait(10)


def test_an_optional_job_not_started_is_dropped_when_the_interpreter_exits(tmp_path):
    """Work ahead of need (a step's analysis, for a call that never comes) is not done at exit."""
    marker = tmp_path / "ran"
    code = (f"from nbcache.background import Worker\n"
            f"worker = Worker('exit-test', flush_at_exit=True)\n"
            f"worker.submit(lambda: open({str(marker)!r}, 'w').close(), after_s=30, optional=True)\n"
            f"worker.submit(lambda: open({str(marker)!r} + '-needed', 'w').close(), after_s=30)\n")
    run_python(code)
    assert not marker.exists() and (tmp_path / "ran-needed").exists()


def test_a_call_right_after_the_definition_does_the_analysis_itself(cache_dir, monkeypatch):
    """A script (or a notebook run from the top) calls a step as soon as it is defined: the analysis of its
    code, given to the background thread to do a moment later, is taken back, not waited for while it takes
    turns with the caller at the interpreter lock."""
    monkeypatch.setattr(sys.modules["nbcache.step"], "PREPARE_AFTER_S", 30.0)

    @step
    def doubled(x):
        return 2 * x

    job = doubled.__dict__["_ahead"]
    assert job.state == "queued"
    assert doubled(2) == 4 and job.state == "taken back"
    assert doubled(2) == 4 and nbcache.runs()[-1].cached


def test_a_steps_first_call_takes_back_the_analysis_of_its_code_not_started_yet(cache_dir):
    gate = threading.Event()
    busy = default_cache().background.submit(lambda: gate.wait(30))  # the worker is busy elsewhere

    @step
    def tripled(x):
        return 3 * x

    try:
        job = tripled.__dict__["_ahead"]
        assert job.state == "queued"
        assert tripled(2) == 6  # (the call analyses the code itself)
        assert job.state == "taken back" and "_ahead" not in tripled.__dict__
    finally:
        gate.set()
    assert busy.done.wait(30) and tripled(2) == 6 and nbcache.runs()[-1].cached


def test_a_step_and_a_function_wrapping_it_pickle_and_copy_before_their_first_call(cache_dir):
    """``functools.wraps`` copies a step's attributes, its background job among them, into the wrapper."""
    import copy

    import cloudpickle

    @step
    def plus_one(x):
        return x + 1

    @functools.wraps(plus_one)
    def logged(*args):
        return plus_one(*args)

    for thing in (plus_one, logged):
        assert cloudpickle.loads(cloudpickle.dumps(thing))(1) == 2
        assert copy.deepcopy(thing)(1) == 2
    assert plus_one(1) == 2 and nbcache.runs()[-1].cached


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
