"""Recency and size of a ``DiskStore``'s entries: what its ``touch``, ``evict`` and ``clear(keep_last=...)`` read
and write in the index.

**When an entry was last used** is the ``access_time`` of its row in diskcache's ``Cache`` table: diskcache
sets it when the row is written (the entry stored), and, with ``eviction_policy="none"``, never on a read.
A hit must not write the index synchronously (a write takes the database's lock, which other processes may
hold, and costs a transaction), so ``Recency.touch`` only notes the time in memory; the times noted are
written in one transaction:

- before this process evicts or clears (so what it just served counts as recently used),
- by a timer thread ``FLUSH_S`` seconds after the first hit not yet written, off the hit's path,
- when the store is closed, and when the process exits (``atexit``).

A process killed before then loses at most ``FLUSH_S`` seconds of hits: those entries count as used when
they were stored, or last written. Every process sharing the directory writes its own hits, and eviction
reads all of them from the index, so entries of other processes count as theirs do.

**The size** of the index is what SQLite's pages in use take plus the value files its rows name (diskcache
keeps their sum); an entry takes its row, and its blobs (their inline bytes, or their file's size).
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from typing import Iterable

import diskcache

from .audit import unobserved
from .entry import Entry
from .eviction import Candidate

__all__ = ["FLUSH_S", "Recency", "candidates", "last_used"]

FLUSH_S = 30.0  # the hits of a process are written this long after the first one not yet written, at most


class Recency:
    """The entries a process served and when, written to the index in batches (never on the hit's path)."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._pending: dict[str, float] = {}  # "entry:<key>" -> when it was last served
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def touch(self, key: str) -> None:
        """Note that the entry of ``key`` was served now (a dict assignment; a timer started if none is)."""
        self._pending["entry:" + key] = time.time()
        if self._timer is None:
            self._start_timer()

    def _start_timer(self) -> None:
        with self._lock:
            if self._timer is not None:
                return
            timer = threading.Timer(FLUSH_S, self._on_timer)
            timer.daemon = True
            self._timer = timer
            _unwritten.add(self)
        timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        with unobserved, contextlib.suppress(Exception):  # (recency only orders evictions: never fail for it)
            self.flush()  # (unobserved: no step running meanwhile reads or writes the index for it)

    def flush(self) -> None:
        """Write the times noted since the last flush, in one transaction; raises what the index raises
        (the times are then kept for the next flush)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with self._cache.transact():
                sql = self._cache._sql
                for name, used in pending.items():  # (a row deleted meanwhile is not made again)
                    sql("UPDATE Cache SET access_time = ? WHERE key = ? AND raw = 1 AND access_time < ?",
                        (used, name, used))
        except BaseException:
            with self._lock:
                for name, used in pending.items():
                    self._pending[name] = max(used, self._pending.get(name, used))
            raise

    def close(self) -> None:
        """Stop the timer and write what is noted (quietly: the store is being closed)."""
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        with contextlib.suppress(Exception):
            self.flush()


_unwritten: weakref.WeakSet[Recency] = weakref.WeakSet()  # stores that noted hits, to flush at exit


@atexit.register
def _flush_at_exit() -> None:
    for recency in list(_unwritten):
        recency.close()


def last_used(cache: diskcache.Cache) -> dict[str, float]:
    """When each entry was last used (stored or served), by key (without ``entry:``)."""
    rows = cache._sql("SELECT key, access_time FROM Cache WHERE raw = 1 AND key LIKE 'entry:%'").fetchall()
    return {name[6:]: float(used) for name, used in rows if isinstance(name, str)
            and isinstance(used, (int, float))}


def candidates(cache: diskcache.Cache, entries: Iterable[tuple[str, Entry | None]]
               ) -> tuple[list[Candidate], dict[str, int]]:
    """The entries (key, its ``Entry``, or None if damaged) as eviction candidates, and each blob's bytes."""
    rows = cache._sql("SELECT key, access_time, COALESCE(size, 0) + COALESCE(LENGTH(value), 0) FROM Cache"
                      " WHERE raw = 1 AND (key LIKE 'entry:%' OR key LIKE 'blob:%')").fetchall()
    used = {name: (t, int(n or 0)) for name, t, n in rows if isinstance(name, str)}
    blob_sizes = {name[5:]: n for name, (_, n) in used.items() if name.startswith("blob:")}
    found = []
    for key, entry in entries:
        when, size = used.get("entry:" + key, (0.0, 0))
        when = float(when) if isinstance(when, (int, float)) else 0.0
        if entry is None:  # damaged: the first to go, alone (the blobs it names cannot be known)
            found.append(Candidate(key, float("-inf"), size))
        else:
            found.append(Candidate(key, when, size, entry.blobs))
    return found, blob_sizes

