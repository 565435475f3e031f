"""What a cache store is: the ``Store`` contract, and ``MemoryStore``, the simplest store that keeps it.

A store keeps four kinds of thing, and knows nothing of steps, keys or values beyond them:

- **entries** (``Entry``), by cache key: which outputs a call produced and which blobs hold them;
- **blobs**, by content address: serialized values (``Frame``), immutable once written, shared by entries;
- **latest ingredients** (``Latest``), by step identity: what the step's latest run was made of;
- **the run history**: an append-only list of ``StepRun`` records.

Reading an entry or latest ingredients that are malformed raises ``Damaged``; a blob is returned as the
bytes or binary file ``frame.load_frame`` reads, which raises ``Damaged`` if it is not intact. A store
never unpickles anything itself. ``DiskStore`` (``diskstore.py``) is the store of a cache directory;
every store passes the contract suite in ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, BinaryIO, ContextManager, Iterable, Iterator, NamedTuple, Protocol, runtime_checkable

from .entry import Entry, Latest
from .eviction import Candidate, beyond_last, choose_victims
from .frame import Damaged, Frame
from .history import last_of_each
from .records import StepRun

__all__ = ["Collected", "Damaged", "MemoryStore", "Store", "StoreStats"]


class StoreStats(NamedTuple):
    """What ``nbcache info`` and ``%nbcache`` show: where the store is, how many entries it can read, how
    many it cannot (written by an nbcache of another format, or damaged), and its size in bytes."""

    directory: str
    entries: int
    unreadable_entries: int
    size_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return {"directory": self.directory, "entries": self.entries,
                "unreadable_entries": self.unreadable_entries, "size_bytes": self.size_bytes}


class Collected(NamedTuple):
    """What ``Store.gc`` removed: how many files, and the disk space they took (bytes, as ``du`` counts)."""

    files: int = 0
    bytes: int = 0


@runtime_checkable
class Store(Protocol):
    """The contract of a cache store. Safe to share between threads; ``DiskStore`` also between processes."""

    location: str | None
    """The directory the store keeps its files in (what a step's run reading them does not depend on), or
    None for a store with no files."""

    unreadable_runs: int
    """How many records of the history the last ``read_runs`` skipped as unreadable."""

    def get_entry(self, key: str) -> Entry | None:
        """The entry of ``key``; None if there is none; raises ``Damaged`` if it is malformed."""

    def put_entry(self, key: str, entry: Entry) -> None:
        """Write the entry of ``key`` (its blobs must have been put first)."""

    def has_blob(self, address: str) -> bool:
        """Whether a blob is stored under ``address``."""

    def put_blob(self, address: str, frame: Frame) -> None:
        """Store ``frame`` under ``address`` (a blob is immutable: an existing one is kept)."""

    def put_blob_file(self, address: str, f: BinaryIO | bytes | memoryview) -> None:
        """Store under ``address`` the blob read from ``f`` (or given as bytes), as another store kept it
        (``open_blob``'s), streamed: the team cache's download. Its signature is checked when it is loaded."""

    def open_blob(self, address: str) -> bytes | BinaryIO | None:
        """The blob at ``address`` as bytes or a binary file for ``load_frame``; None if it is gone."""

    def get_latest(self, identity: str) -> Latest | None:
        """A step's latest ingredients; None if none are recorded; raises ``Damaged`` if unreadable."""

    def put_latest(self, identity: str, latest: Latest) -> None:
        """Record a step's latest ingredients."""

    def append_run(self, run: StepRun) -> None:
        """Add a run to the history."""

    def read_runs(self, step: str | None = None) -> list[StepRun]:
        """The history, oldest first, of every step or of one; records that do not read are skipped."""

    def last_runs(self) -> list[StepRun]:
        """The last run of each step, in the order the steps first ran: ``read_runs()`` cut to one run a step
        (``history.last_of_each``), which a store may read faster than the whole history."""

    def entries(self) -> Iterator[tuple[str, Entry]]:
        """Every readable entry, as (key, entry)."""

    def entry_sizes(self) -> Iterator[tuple[str, str, int]]:
        """(step, kind, stored bytes) of every entry that reads: what ``nbcache ls`` counts, which a store may
        read faster than whole entries."""

    def delete(self, key: str, blobs: Iterable[str] = ()) -> None:
        """Drop the entry of ``key`` and the blobs named (damaged ones, so recomputed values replace them)."""

    def clear(self, step: str | None = None, *, older_than_s: float | None = None,
              keep_last: int | None = None) -> int:
        """Remove entries (all, one step's, those stored more than ``older_than_s`` seconds ago, all but each
        step's ``keep_last`` most recently used; both: those old and not among the last) and the blobs no
        entry refers to any more; return how many entries went. The history and the latest ingredients
        stay."""

    def touch(self, key: str) -> None:
        """Note that the entry of ``key`` was just served, for ``evict`` and ``clear(keep_last=...)``: cheap,
        on a hit's path, so no synchronous write (a store may keep it in memory and write it later)."""

    def evict(self, limit_bytes: int, *, keep: Iterable[str] = ()) -> int:
        """If the store takes more than ``limit_bytes``, remove entries least recently used first (stored
        or ``touch``-ed, by any process), each with the blobs no other entry uses, until it takes at most
        that; never those of ``keep``. Return how many entries went."""

    def gc(self) -> Collected:
        """Remove what no entry needs and no live writer owns: files left by writers that were killed, and
        values the index no longer refers to. ``clear()`` of everything does it too."""

    def lock(self, key: str, timeout: float) -> ContextManager[bool]:
        """Hold the lock of ``key`` for the ``with`` block, so one caller computes a key while the others
        wait (single-flight). The block gets True if the lock was acquired, False if ``timeout`` seconds
        passed first (a negative timeout waits for ever): the caller then computes anyway. A lock held by a
        process that dies is released."""

    def stats(self) -> StoreStats:
        """Where the store is, its readable and unreadable entries and its size."""

    def close(self) -> None:
        """Release files and connections; the store may be opened again."""


class MemoryStore:
    """A store that lives in this process's memory: for tests, and as the reference of the contract."""

    location = None
    unreadable_runs = 0  # (it keeps only records it wrote)

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, str]] = {}  # key -> (step, JSON text)
        self._blobs: dict[str, bytes] = {}
        self._latest: dict[str, str] = {}
        self._runs: list[str] = []
        self._used: dict[str, float] = {}  # key -> when its entry was last stored or served
        self._lock = threading.Lock()
        self._key_locks: dict[str, tuple[threading.Lock, int]] = {}  # key -> (its lock, callers using it)

    def __repr__(self) -> str:
        return "MemoryStore()"

    def get_entry(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        return None if item is None else Entry.from_json(item[1])

    def put_entry(self, key: str, entry: Entry) -> None:
        with self._lock:
            self._entries[key] = (entry.step, entry.to_json())
            self._used[key] = time.time()

    def has_blob(self, address: str) -> bool:
        return address in self._blobs

    def put_blob(self, address: str, frame: Frame) -> None:
        with self._lock:
            self._blobs.setdefault(address, frame.to_bytes())

    def put_blob_file(self, address: str, f: BinaryIO | bytes | memoryview) -> None:
        data = bytes(f) if isinstance(f, (bytes, bytearray, memoryview)) else f.read()
        with self._lock:
            self._blobs.setdefault(address, data)

    def open_blob(self, address: str) -> bytes | None:
        return self._blobs.get(address)

    def get_latest(self, identity: str) -> Latest | None:
        text = self._latest.get(identity)
        return None if text is None else Latest.from_json(text)

    def put_latest(self, identity: str, latest: Latest) -> None:
        self._latest[identity] = latest.to_json()

    def append_run(self, run: StepRun) -> None:
        with self._lock:
            self._runs.append(run.to_json())

    def read_runs(self, step: str | None = None) -> list[StepRun]:
        runs = [StepRun.from_json(line) for line in list(self._runs)]
        return [r for r in runs if step is None or r.step == step]

    def last_runs(self) -> list[StepRun]:
        return last_of_each(self.read_runs())

    def entries(self) -> Iterator[tuple[str, Entry]]:
        for key, (_, text) in list(self._entries.items()):
            try:
                yield key, Entry.from_json(text)
            except Damaged:
                continue

    def entry_sizes(self) -> Iterator[tuple[str, str, int]]:
        return ((entry.step, entry.kind, sum(entry.sizes.values())) for _, entry in self.entries())

    def delete(self, key: str, blobs: Iterable[str] = ()) -> None:
        with self._lock:
            self._entries.pop(key, None)
            self._used.pop(key, None)
            for address in blobs:
                self._blobs.pop(address, None)

    def clear(self, step: str | None = None, *, older_than_s: float | None = None,
              keep_last: int | None = None) -> int:
        cutoff = None if older_than_s is None else time.time() - older_than_s
        with self._lock:
            gone = [key for key, (name, text) in self._entries.items() if step in (None, name)
                    and (cutoff is None or _created_before(text, cutoff))]
            if keep_last is not None:
                beyond = set(beyond_last(((k, self._entries[k][0], self._used.get(k, 0.0)) for k in
                                          self._entries if step in (None, self._entries[k][0])), keep_last))
                gone = [key for key in gone if key in beyond]
            for key in gone:
                del self._entries[key]
                self._used.pop(key, None)
            self._collect_blobs()
        return len(gone)

    def _collect_blobs(self) -> None:
        live = {b for key, (_, text) in self._entries.items() for b in _blobs_of(text)}
        for address in [a for a in self._blobs if a not in live]:
            del self._blobs[address]

    def touch(self, key: str) -> None:
        if key in self._entries:
            self._used[key] = time.time()

    def evict(self, limit_bytes: int, *, keep: Iterable[str] = ()) -> int:
        with self._lock:
            total = self._size()
            if total <= limit_bytes:
                return 0
            candidates = [Candidate(key, self._used.get(key, 0.0), len(text), _blobs_of(text))
                          for key, (_, text) in self._entries.items()]
            sizes = {address: len(data) for address, data in self._blobs.items()}
            victims = choose_victims(candidates, sizes, total, limit_bytes, keep)
            for key, blobs in victims:
                del self._entries[key]
                self._used.pop(key, None)
                for address in blobs:
                    self._blobs.pop(address, None)
        return len(victims)

    def _size(self) -> int:
        return sum(map(len, self._blobs.values())) + sum(len(t) for _, t in self._entries.values())

    def gc(self) -> Collected:
        return Collected()  # (nothing is ever left behind in memory)

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[bool]:
        with self._lock:
            lock, users = self._key_locks.get(key) or (threading.Lock(), 0)
            self._key_locks[key] = (lock, users + 1)
        acquired = lock.acquire(timeout=-1 if timeout < 0 else timeout)
        try:
            yield acquired
        finally:
            if acquired:
                lock.release()
            with self._lock:  # the last caller of a key forgets its lock
                lock, users = self._key_locks[key]
                if users == 1:
                    del self._key_locks[key]
                else:
                    self._key_locks[key] = (lock, users - 1)

    def stats(self) -> StoreStats:
        readable = sum(1 for _ in self.entries())
        return StoreStats("(memory)", readable, len(self._entries) - readable, self._size())

    def close(self) -> None:
        pass


def _created_before(text: str, cutoff: float) -> bool:
    try:
        return Entry.from_json(text).created_at < cutoff
    except Damaged:
        return True  # (damaged: cleared with the old ones)


def _blobs_of(text: str) -> tuple[str, ...]:
    try:
        return Entry.from_json(text).blobs
    except Damaged:
        return ()
