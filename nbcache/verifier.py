"""Checking what a hit did not read: the buffers of mapped values, in the background, and the whole store
on demand (``nbcache verify``, as ``git fsck`` checks a repository).

A big value is served by mapping its file (``frameread.py``): its signed head and pickle are checked before
it is unpickled, its raw buffers are not read at all, which is what makes a hit cost the same whatever its
size. Their digests are then checked by the process's background thread, which reads each mapped file once
per process (a file already found intact is not read again). If a digest does not match (the disk flipped a
bit, or something wrote into the file), the step's result is removed from the cache with a warning that
says the value it served may be wrong: the next run recomputes it. ``NBCACHE_VERIFY=eager`` checks every
buffer before a hit returns instead (a hit then reads the whole value, as ``np.load`` would).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from .background import Worker, exiting
from .errors import warn
from .frameformat import Damaged, NotSigned
from .frameread import Unchecked, verify_frame
from .store import Store

__all__ = ["DELAY_S", "Problem", "Verification", "Verifier", "verify_lazily", "verify_store"]

DELAY_S = 0.05  # how long after a hit its mapped values start being checked


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
        self._intact: set[tuple[int, int, int]] = set()  # files found intact, by (device, inode, mtime)
        self._held: list[tuple[Unchecked, Callable[[str], None]]] = []

    def submit(self, unchecked: Unchecked, on_damage: Callable[[str], None], *, hold: bool = False) -> None:
        """Check ``unchecked`` soon (not at all if its file was found intact before); ``hold``: once
        ``release`` is called (a hit loading several values starts checking them when it is done, not
        while its next value loads)."""
        if unchecked.identity in self._intact:
            unchecked.close()
        elif hold:
            self._held.append((unchecked, on_damage))
        else:
            self.worker.submit(lambda: self._check(unchecked, on_damage))

    def discard(self) -> None:
        """Forget what was held (the hit that loaded it failed: nothing was served)."""
        held, self._held = self._held, []
        for unchecked, _ in held:
            unchecked.close()

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
        if unchecked.identity in self._intact or exiting():  # (checked before, or no time left to)
            unchecked.close()
            return
        problem = unchecked.check()
        if problem is None:
            self._intact.add(unchecked.identity)
        else:
            on_damage(problem)


@dataclass(frozen=True)
class Problem:
    """A stored result that is not intact: the entry's cache key and step, the value (its address; empty
    for the entry itself) and what is wrong."""

    key: str
    step: str
    address: str
    what: str
    foreign: bool = False  # not signed with this key (another key's, or altered), rather than damaged


@dataclass(frozen=True)
class Verification:
    """What ``nbcache verify`` found: how many entries and values it read, and the problems."""

    entries: int
    values: int
    problems: tuple[Problem, ...]


def verify_store(store: Store, key: bytes, check_seal: Callable[[str, Any], None]) -> Verification:
    """Check every result of ``store`` under ``key``: entries whose seal does not match, values that are
    missing, not signed with ``key`` under their name, or whose buffers fail their digests (each value read
    whole, never unpickled)."""
    checked: dict[str, str | None] = {}
    problems, entries = [], 0
    for cache_key, entry in store.entries():
        entries += 1
        try:
            check_seal(cache_key, entry)
        except Exception as exc:
            problems.append(Problem(cache_key, entry.step, "", str(exc), isinstance(exc, NotSigned)))
            continue
        for address in entry.blobs:
            if address not in checked:
                checked[address] = _value_problem(store, key, address)
            problem = checked[address]
            if problem is not None:
                problems.append(Problem(cache_key, entry.step, address, str(problem) or type(problem).__name__,
                                        isinstance(problem, NotSigned)))
    return Verification(entries, len(checked), tuple(problems))


def _value_problem(store: Store, key: bytes, address: str) -> Exception | None:
    try:
        source = store.open_blob(address)
        return Damaged("it is missing") if source is None else verify_frame(source, key=key, name=address)
    except Exception as exc:  # (Damaged: the index points at something that is no value file)
        return exc
