"""Recency and size of a ``DiskStore``'s entries: what its ``touch``, ``evict`` and ``clear(keep_last=...)`` read
and write in the index.

**When an entry was last used** is the ``access_time`` of its row in diskcache's ``Cache`` table: diskcache
sets it when the row is written (the entry stored), and, with ``eviction_policy="none"``, never on a read.
A hit must not write the index synchronously (a write takes the database's lock, which other processes may
hold, and costs a transaction), so ``Recency.touch`` only notes the time in memory; the times noted are
written in one transaction:

- before this process evicts or clears (so what it just served counts as recently used),
- every ``FLUSH_S`` seconds, by one thread of the process (started with its first store, off any hit's path),
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
from .forksafe import ForkSafeLock, background_work
from .entry import Entry
from .eviction import Candidate

__all__ = ["FLUSH_S", "Recency", "candidates", "last_used"]

FLUSH_S = 30.0  # the hits of a process are written this long after the first one not yet written, at most


class Recency:
    """The entries a process served and when, written to the index in batches (never on the hit's path)."""

    def __init__(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        self._pending: dict[str, float] = {}  # "entry:<key>" -> when it was last served
        self._lock = ForkSafeLock()
        _flusher.watch(self)  # (its thread starts with the store, not on a hit)

    def touch(self, key: str) -> None:
        """Note that the entry of ``key`` was served now (a dict assignment)."""
        self._pending["entry:" + key] = time.time()

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
        """Write what is noted (quietly: the store is being closed) and stop being flushed."""
        _flusher.forget(self)
        with contextlib.suppress(Exception):
            self.flush()


class _Flusher:
    """The one thread of a process that writes the noted hits of its stores every ``FLUSH_S`` seconds, and
    at exit."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[Recency] = weakref.WeakSet()
        self._lock = ForkSafeLock()
        self._thread: threading.Thread | None = None
        atexit.register(self.flush_all)

    def watch(self, recency: Recency) -> None:
        with self._lock:
            self._stores.add(recency)
            if self._thread is None or not self._thread.is_alive():  # (none yet, or the process forked)
                self._thread = threading.Thread(target=self._run, name="nbcache-recency", daemon=True)
                self._thread.start()

    def forget(self, recency: Recency) -> None:
        with self._lock:
            self._stores.discard(recency)

    def flush_all(self) -> None:
        with self._lock:
            stores = list(self._stores)
        for recency in stores:  # (recency only orders evictions: never fail for it)
            with unobserved, contextlib.suppress(Exception):  # (no step's run reads or writes the index for it)
                recency.flush()

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(min(FLUSH_S, 1.0))  # (FLUSH_S read each time: a test may shorten it)
            if time.monotonic() - last >= FLUSH_S:
                with background_work():
                    self.flush_all()
                last = time.monotonic()


_flusher = _Flusher()


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

