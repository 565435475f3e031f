"""Checking what a hit did not read: the buffers of mapped values, in the background (the whole store is
checked on demand by ``verifystore.py``).

A big value is served by mapping its file (``frameread.py``): its signed head and pickle are checked before
it is unpickled, its raw buffers are not read at all, which is what makes a hit cost the same whatever its
size. Their digests are then checked by the process's background thread, which reads each mapped file once
per process (a file already found intact is not read again). If a digest does not match (the disk flipped a
bit, or something wrote into the file), the step's result is removed from the cache with a warning that
says the value it served may be wrong: the next run recomputes it. ``NBCACHE_VERIFY=eager`` checks every
buffer before a hit returns instead (a hit then reads the whole value, as ``np.load`` would).

A result computed from a mapped array passed on unchanged is keyed on the array's carried address
(``carry.py``), the address of the intact value: before it is stored, the files it was computed from are
checked at once if they were not yet (``confirm``), so that a result computed from damaged buffers is never
filed under the intact value's key, even by a process that ends before its background check would run.
A file is known intact by its device, inode and change time (which any write to it moves on).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterable

from .background import Worker, exiting
from .errors import warn
from .frameread import Unchecked

__all__ = ["DELAY_S", "Verifier", "verify_lazily"]

DELAY_S = 0.05  # how long after a hit its mapped values start being checked
CONFIRM_WAIT_S = 600.0  # how long a result computed from a value being checked waits for the check to end


def verify_lazily() -> bool:
    """Whether buffers of mapped values are checked after a hit returns (``NBCACHE_VERIFY``: ``background``,
    the default) or before (``eager``)."""
    mode = os.environ.get("NBCACHE_VERIFY", "").strip().lower()
    if mode in ("", "background", "lazy"):
        return True
    if mode not in ("eager", "always"):
        warn(f"nbcache: NBCACHE_VERIFY is 'background' or 'eager', not {mode!r}; checking eagerly")
    return False


class Verifier:
    """Checks the buffers of mapped values on its worker's thread, each file once per process; calls a
    value's ``on_damage(problem)`` (on that thread) if it is not intact."""

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker or Worker("nbcache-verify")
        self._intact: set[tuple[int, int, int]] = set()  # files found intact, by (device, inode, ctime)
        self._held: list[tuple[Unchecked, Callable[[str], None]]] = []
        self._pending: dict[int, tuple[Unchecked, Callable[[str], None]]] = {}  # by id: not yet checked
        self._running: dict[tuple[int, int, int], threading.Event] = {}  # files being checked: set when done
        self._damaged: dict[tuple[int, int, int], str] = {}  # files found damaged, and what was wrong
        self._lock = threading.Lock()  # (one thread takes a pending check: ``check`` closes the descriptor)

    def submit(self, unchecked: Unchecked, on_damage: Callable[[str], None], *, hold: bool = False) -> None:
        """Check ``unchecked`` soon (not at all if its file was found intact before); ``hold``: once
        ``release`` is called (a hit loading several values starts checking them when it is done, not
        while its next value loads)."""
        if unchecked.identity in self._intact:
            unchecked.close()
            return
        with self._lock:
            self._pending[id(unchecked)] = (unchecked, on_damage)
        if hold:
            self._held.append((unchecked, on_damage))
        else:
            self.worker.submit(lambda: self._check(unchecked, on_damage))

    def discard(self) -> None:
        """Forget what was held (the hit that loaded it failed: nothing was served)."""
        held, self._held = self._held, []
        for unchecked, _ in held:
            self._take(unchecked)
            unchecked.close()

    def confirm(self, identities: Iterable[tuple[int, int, int]]) -> str | None:
        """Check now the files ``identities`` not yet found intact (their checks still pending are taken
        from the background); what is wrong with the first that is damaged (its ``on_damage`` called), or
        None if all are intact."""
        wanted = set(identities) - self._intact
        if not wanted:
            return None
        with self._lock:
            taken = [(u, d) for u, d in self._pending.values() if u.identity in wanted]
            for unchecked, _ in taken:
                del self._pending[id(unchecked)]
            running = [self._running[i] for i in wanted if i in self._running]
        for unchecked, on_damage in taken:
            self._outcome(unchecked, on_damage)
        for done in running:  # (checked on the background thread as this asked: its outcome is waited for)
            if not done.wait(CONFIRM_WAIT_S):
                return "its check did not finish in time"
        return next((self._damaged[i] for i in wanted if i in self._damaged), None)

    def _take(self, unchecked: Unchecked) -> bool:
        """Whether this thread is the one to check ``unchecked`` (no other took it)."""
        with self._lock:
            return self._pending.pop(id(unchecked), None) is not None

    def _outcome(self, unchecked: Unchecked, on_damage: Callable[[str], None]) -> None:
        identity = unchecked.identity
        if identity in self._intact:
            unchecked.close()
            return
        done = threading.Event()
        with self._lock:
            self._running[identity] = done
        try:
            problem = unchecked.check()
            if problem is None:
                self._intact.add(identity)
            else:
                self._damaged[identity] = problem
                on_damage(problem)
        finally:
            done.set()
            with self._lock:
                if self._running.get(identity) is done:
                    del self._running[identity]

    def release(self) -> None:
        """Check what was held, from ``DELAY_S`` on: a check reads a whole file on another thread, and
        would slow down what the hit and the steps right after it still do in this one."""
        held, self._held = self._held, []
        if held:
            not_before = time.monotonic() + DELAY_S
            for unchecked, on_damage in held:
                self.worker.submit(lambda u=unchecked, d=on_damage: self._check(u, d, not_before))

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every value submitted is checked (at most ``timeout`` seconds); True if all were."""
        return self.worker.drain(timeout)

    def _check(self, unchecked: Unchecked, on_damage: Callable[[str], None], not_before: float = 0.0) -> None:
        time.sleep(max(0.0, not_before - time.monotonic()))
        if not self._take(unchecked):  # (checked meanwhile by ``confirm``)
            return
        if exiting():  # (no time left to)
            unchecked.close()
            return
        self._outcome(unchecked, on_damage)
