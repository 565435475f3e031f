"""Forking while nbcache's background threads work.

nbcache's background threads (the warm-up, the worker, the recency flusher) hold locks while they work. A
process that forks (``multiprocessing`` does by default on Linux) copies those locks as they are, but not
the threads that would release them: a child that then needs one would wait for ever.

- A ``ForkSafeLock`` is nbcache's own lock: it is made anew in the child, free.
- The locks of others cannot be: the lock of a module a thread was importing (the warm-up imports diskcache
  and SQLite just after ``import nbcache``), SQLite's own. So background work runs inside
  ``background_work()``, and a fork first waits for the work under way to end (``FORK_WAIT_S`` at most:
  a fork is never stopped for good) and starts no new work until it is done.

A module that registers fork handlers of its own while the fork waits gets its handler for after the fork
called without the one before it: ``logging``'s then prints "cannot release un-acquired lock" (harmless) if
the fork comes within milliseconds of ``import nbcache`` in a process that had not imported ``logging`` (a
Jupyter kernel has). So nothing else is imported ahead (``warming.py``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any, Iterator

__all__ = ["FORK_WAIT_S", "ForkSafeLock", "background_work"]

FORK_WAIT_S = 5.0  # how long a fork waits at most for background work under way to end

_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A ``threading.Lock`` (``with``, ``acquire``, ``release``) that is free again in a forked child."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _LOCKS.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


class _ForkGate:
    """How many background threads are working, and whether a fork is waiting for them to stop."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._working = 0
        self._forking = False
        self._local = threading.local()  # (this thread's depth of ``work()``)

    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth:  # (within work already: counted once)
            self._local.depth = depth + 1
            try:
                yield
            finally:
                self._local.depth = depth
            return
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._working += 1
        self._local.depth = 1
        try:
            yield
        finally:
            self._local.depth = 0
            with self._cond:
                self._working -= 1
                self._cond.notify_all()

    def before_fork(self) -> None:
        with self._cond:
            self._forking = True
            mine = 1 if getattr(self._local, "depth", 0) else 0  # (background work that forks itself)
            self._cond.wait_for(lambda: self._working <= mine, timeout=FORK_WAIT_S)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        mine = getattr(self._local, "depth", 0)
        self.__init__()  # type: ignore[misc]  (the other threads are gone, and the condition's lock held)
        self._working = 1 if mine else 0
        self._local.depth = mine


_GATE = _ForkGate()


def background_work() -> contextlib.AbstractContextManager[None]:
    """Around each piece of work nbcache's background threads do: a fork waits for it to end."""
    return _GATE.work()


def _after_fork_in_child() -> None:
    for lock in list(_LOCKS):
        lock._lock = threading.Lock()
    _GATE.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_GATE.before_fork, after_in_parent=_GATE.after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
