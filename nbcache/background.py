"""Work a hit leaves for later, so that it returns at once: one daemon thread per ``Worker`` runs the jobs
in the order given. Every ``Cache`` of a process shares one (``shared_worker``): it checks the buffers of
mapped values (``verifier.py``), writes the latest ingredients a hit found stale (``latestwrites.py``),
analyses steps' code ahead of their first call (a moment after the definition: ``submit``'s ``after_s``),
and is flushed when the interpreter exits. ``submit``
gives a ``Job``: a caller that needs what a job does ``settle``s it first, so that it never races the job
for the interpreter lock (it takes a queued job back and does that work itself, or waits for the one under
way). Its jobs are nbcache's own work: no step under way is taken to depend on what they read or write (``unobserved``), and
a fork waits for the one under way (``forksafe.background_work``)."""

from __future__ import annotations

import atexit
import collections
import contextlib
import functools
import os
import threading
import time
import weakref
from typing import Callable

from .audit import unobserved
from .forksafe import background_work

__all__ = ["IDLE_S", "Job", "Worker", "exiting", "shared_worker"]

IDLE_S = 60.0  # a worker's thread ends after this long with nothing to do

_WORKERS: weakref.WeakSet[Worker] = weakref.WeakSet()


class Job:
    """A job given to a ``Worker``: its function, its worker, and how far it got (queued, running, done or
    taken back). A job pickles (or copies) as one already settled: its worker and function stay here."""

    __slots__ = ("fn", "worker", "state", "done", "not_before", "optional")

    def __init__(self, fn: Callable[[], None], worker: Worker | None, not_before: float = 0.0,
                 optional: bool = False) -> None:
        self.fn = fn
        self.worker = worker
        self.state = "queued"
        self.done = threading.Event()
        self.not_before = not_before  # (``time.monotonic()``: it does not start before)
        self.optional = optional  # (work ahead of need: dropped once the interpreter exits)

    def __reduce__(self) -> tuple:
        return _settled_job, ()

    def settle(self, timeout: float = 5.0) -> bool:
        """``Worker.settle`` of this job (False at once for a job that has no worker here)."""
        return False if self.worker is None else self.worker.settle(self, timeout)


def _settled_job() -> Job:
    job = Job(lambda: None, None)
    job.state = "done"
    job.done.set()
    return job


class Worker:
    """A queue of jobs and the daemon thread that runs them, one at a time. A job's exception is dropped:
    jobs say what went wrong themselves. ``flush_at_exit``: the interpreter waits (``flush_s`` seconds at
    most) for the jobs left when it exits."""

    def __init__(self, name: str, *, flush_at_exit: bool = False, flush_s: float = 5.0) -> None:
        self.name = name
        self._reset()
        _WORKERS.add(self)
        if flush_at_exit:
            atexit.register(_flush, weakref.ref(self), flush_s)

    def _reset(self) -> None:
        self._queue: collections.deque[Job] = collections.deque()
        self._busy = 0  # jobs taken from the queue and not finished
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread now, if it is not running (``submit`` does otherwise)."""
        with self._cond:
            self._start()

    def submit(self, fn: Callable[[], None], *, after_s: float = 0.0, optional: bool = False) -> Job:
        """Run ``fn`` after the jobs given before it, and not before ``after_s`` seconds from now (those given
        after it wait too); until it starts, it stays queued, and can be taken back (``settle``). An
        ``optional`` job (work done ahead of need) is dropped, not run, once the interpreter exits."""
        job = Job(fn, self, time.monotonic() + after_s if after_s > 0 else 0.0, optional)
        with self._cond:
            self._queue.append(job)
            self._start()
            self._cond.notify_all()  # (the thread, and not only a ``drain`` waiting on the same condition)
        return job

    @property
    def pending(self) -> int:
        """How many jobs are queued or running."""
        with self._cond:
            return len(self._queue) + self._busy

    def settle(self, job: Job, timeout: float = 5.0) -> bool:
        """Make sure ``job`` no longer runs beside the caller: taken back if it has not started (True: the
        caller does its work), waited for if it is under way (``timeout`` seconds at most), else nothing."""
        with self._cond:
            if job.state == "queued":
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
                job.state = "taken back"
                self._cond.notify_all()  # (a ``drain`` waiting for it, and the thread waiting out its delay)
                return True
            thread = self._thread
        deadline = time.monotonic() + timeout
        while job.state == "running" and not job.done.wait(0.01):
            if thread is None or not thread.is_alive() or time.monotonic() > deadline:  # (forked, or stuck)
                break
        return False

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():  # (none yet, or the process forked)
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every job submitted has run (at most ``timeout`` seconds); True if all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    self._cond.wait(IDLE_S)
                if not self._queue:  # idle for a while: the thread ends (``submit`` starts another)
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                wait = self._queue[0].not_before - time.monotonic()
                if wait > 0 and not _exiting.is_set():  # (not yet: queued meanwhile, it may be taken back)
                    self._cond.wait(wait)
                    continue
                job = self._queue.popleft()
                if job.optional and _exiting.is_set():  # (nobody needs it now)
                    job.state = "taken back"
                    job.done.set()
                    self._cond.notify_all()
                    continue
                job.state = "running"
                self._busy += 1
            try:
                with background_work(), unobserved, contextlib.suppress(Exception):
                    job.fn()
            finally:
                with self._cond:
                    job.state = "done"
                    job.done.set()
                    self._busy -= 1
                    self._cond.notify_all()


_exiting = threading.Event()


def exiting() -> bool:
    """Whether the interpreter is exiting (a job that only checks something may then skip it)."""
    return _exiting.is_set()


@functools.cache
def shared_worker() -> Worker:
    """The worker every ``Cache`` of this process gives its background work to."""
    return Worker("nbcache-background", flush_at_exit=True)


def _flush(ref: weakref.ref[Worker], timeout: float) -> None:
    _exiting.set()
    worker = ref()
    if worker is not None:
        worker.drain(timeout=timeout)


def _after_fork() -> None:
    """A forked child has none of its parent's threads, and a lock may have been held when it forked."""
    for worker in list(_WORKERS):
        worker._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
