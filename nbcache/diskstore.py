"""``DiskStore``: the ``Store`` of a cache directory, a diskcache index plus an append-only history file.

Layout of a cache directory (``.nbcache/`` by default):

- ``store/``: a ``diskcache.Cache`` holding three kinds of item, told apart by key prefix:
  ``entry:<key>`` (an ``Entry`` as JSON text, tagged with the step name so one step can be cleared),
  ``blob:<content address>`` (one ``Frame``; small ones inside the SQLite index, big ones as files), and
  ``last:<step identity>`` (the step's ``Latest`` ingredients, as JSON text).
- ``runs.jsonl``: one JSON line per step call, appended with a single ``write`` on an ``O_APPEND`` file so
  that a hit costs about a microsecond to record and processes sharing the directory never interleave;
  lines that do not parse (cut short by a killed process) are skipped when reading.
- ``locks/``: one lock file per key being computed (``lock``), so that one caller computes it at a time.

What is read, written and deleted on disk, and with which permissions, is ``diskfiles.py``'s: a value file
is written under a temporary name and renamed into place before the row that points to it is committed,
so a process killed mid-write leaves a temporary or an orphan file, never an entry that reads as valid;
``gc`` (``diskgc.py``) removes those. A hit notes its entry as used in memory, written to the index
later in one batch, for ``evict`` and ``clear(keep_last=...)`` (``diskevict.py``). Errors of a directory
that cannot be used say why and what to do (``diskerrors.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from .diskerrors import StoreError, describe
from .diskevict import Recency, candidates, last_used
from .diskfiles import Modes, entry_texts, make_dir, make_file, open_append, shared_from_env
from .diskgc import GRACE_S, collect, disk_usage
from .diskindex import index_file, index_identity, open_index
from .disklock import hold, let_go
from .entry import Entry, Latest, entry_size
from .eviction import beyond_last, choose_victims
from .frame import Damaged, Frame
from .history import read_last_runs
from .records import RunLines, StepRun, read_history
from .store import Collected, StoreStats

__all__ = ["DiskStore", "StoreError", "open_disk_store"]

_ABSENT = diskcache.core.ENOVAL
_PARSED_MAX = 4096  # entries remembered parsed (each about a kilobyte)
_LOCK_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")  # a key usable as a file name as it is


class DiskStore:
    """The cache of one directory. Safe to share between threads and processes.

    What it creates is private to the user (folders 0700, files 0600) unless ``shared`` (default: the
    environment variable ``NBCACHE_SHARED=1``) says the directory is shared with a group: 0770 and 0660,
    the umask applying as usual. A directory that exists keeps its permissions."""

    def __init__(self, directory: str | os.PathLike[str], *, shared: bool | None = None) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.shared = shared_from_env() if shared is None else bool(shared)
        self._modes = Modes(self.shared)
        make_dir(self.directory, self._modes.dir)
        make_dir(self.directory / "store", self._modes.dir)
        # SQLite would create its index 0644; made first, it keeps its mode, and its -wal and -shm files take it
        make_file(self.directory / "store" / "cache.db", self._modes.file)
        self._cache = open_index(self.directory / "store")
        self._index_file = index_file(self.directory / "store")
        self._index = index_identity(self._index_file)  # (which file it opened: ``gone``)
        self._cache.disk.modes = self._modes
        self._recency = Recency(self._cache)  # when entries were last served, written in batches
        self._locks_dir = self.directory / "locks"
        self._log_path = self.directory / "runs.jsonl"
        self._log_fd: int | None = None
        self._lines = RunLines()  # history lines, made quickly for a step's hits one after another
        self.unreadable_runs = 0  # history lines the last read_runs skipped
        self._lock = threading.Lock()
        self._parsed: dict[str, Entry] = {}  # entries read, by their text: a hit parses its entry once

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    def gone(self) -> bool:
        """Whether its index was removed (or made anew) since it was opened: ``rm -rf .nbcache`` while a kernel
        keeps it open. What it would store there, nobody would see again: the cache opens the directory anew."""
        return index_identity(self._index_file) != self._index

    # entries and blobs
    def _get(self, name: str, **kwargs: Any) -> Any:
        """The index's row ``name`` (``_ABSENT``: none); one SQLite cannot decode (text where bytes were) is damage."""
        try:
            return self._cache.get(name, _ABSENT, **kwargs)
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):
                raise
            raise Damaged("its row in the index holds text that is not UTF-8 where nbcache wrote bytes") from None

    def get_entry(self, key: str) -> Entry | None:
        text = self._get("entry:" + key)
        if text is _ABSENT:
            return None
        entry = self._parsed.get(text) if type(text) is str else None
        if entry is None:
            entry = Entry.from_json(text)  # (raises Damaged: nothing is remembered)
            if len(self._parsed) >= _PARSED_MAX:
                self._parsed.clear()
            self._parsed[text] = entry
        return entry

    def put_entry(self, key: str, entry: Entry) -> None:
        try:
            self._cache.set("entry:" + key, entry.to_json(), tag=entry.step)
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc

    def has_blob(self, address: str) -> bool:
        return "blob:" + address in self._cache

    def put_blob(self, address: str, frame: Frame) -> None:
        self._put_blob(address, frame, read=False)

    def put_blob_file(self, address: str, f: Any) -> None:
        if isinstance(f, (bytes, bytearray, memoryview)):  # (in the index if small, as a Frame would be)
            self._put_blob(address, memoryview(f), read=False)
        else:
            self._put_blob(address, f, read=True)  # (a file of its own, written whole, then renamed)

    def _put_blob(self, address: str, value: Frame | Any, *, read: bool) -> None:
        name = "blob:" + address
        try:
            if name not in self._cache:
                self._cache.set(name, value, read=read)
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc

    def open_blob(self, address: str) -> Any:
        handle = self._get("blob:" + address, read=True)
        if handle is _ABSENT:
            return None
        if handle is None:  # a pickle some other program put in the index, which _FrameDisk leaves unread
            raise Damaged("the value is not one nbcache wrote")
        return handle

    def delete(self, key: str, blobs: Iterable[str] = ()) -> None:
        try:
            self._cache.delete("entry:" + key)
            for address in blobs:
                self._cache.delete("blob:" + address)
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc

    # the latest ingredients of each step
    def get_latest(self, identity: str) -> Latest | None:
        text = self._get("last:" + identity)
        return None if text is _ABSENT else Latest.from_json(text)

    def put_latest(self, identity: str, latest: Latest) -> None:
        try:
            self._cache.set("last:" + identity, latest.to_json())
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc

    # the run history
    def prepare(self) -> None:
        """Open the history for appending, and the calling thread's connection to the index (diskcache keeps
        one per thread), now rather than on the first call (``Cache.warm``)."""
        with self._lock:
            if self._log_fd is None:
                self._log_fd = self._open_log()
        self._cache.get("entry:", _ABSENT)  # (reads: never wait for another process's write; SQLite compiles
        "blob:" in self._cache  # a connection's statements when first used: a hit's, and a team hit's ``has_blob``)

    def _open_log(self) -> int:
        return open_append(self._log_path, self._modes.file)

    def append_run(self, run: StepRun) -> None:
        # The newline goes first: a line left unfinished by a killed process is then never glued to the
        # next record, whichever process writes it.
        try:
            with self._lock:  # (the encoder, too: it remembers the last line)
                line = ("\n" + self._lines.line(run)).encode()
                if self._log_fd is None:
                    self._log_fd = self._open_log()
                os.write(self._log_fd, line)
        except OSError as exc:
            raise describe(exc, self.directory) from exc

    def read_runs(self, step: str | None = None) -> list[StepRun]:
        # a line cut short by a killed process (or damaged) is skipped and counted: the others are read
        runs, self.unreadable_runs = read_history(self._log_path)
        return runs if step is None else [r for r in runs if r.step == step]

    def last_runs(self) -> list[StepRun]:
        return read_last_runs(self._log_path)  # (only the lines that decide it are parsed)

    # maintenance
    def _names(self, prefix: str | tuple[str, ...]) -> list[str]:
        # (iterating the index is linear; iterkeys pages with a query that is not: 3 s for 100,000 keys)
        return [name for name in self._cache if isinstance(name, str) and name.startswith(prefix)]

    def _all_entries(self) -> Iterator[tuple[str, Entry | None]]:
        """Every entry by key, None for one that does not read (``stats`` counts those, ``evict`` drops them)."""
        for name, text in entry_texts(self._cache):
            try:
                entry = Entry.from_json(text)
            except Damaged:
                entry = None
            yield name[6:], entry

    def entries(self) -> Iterator[tuple[str, Entry]]:
        return ((key, entry) for key, entry in self._all_entries() if entry is not None)

    def entry_sizes(self) -> Iterator[tuple[str, str, int]]:
        for _, text in entry_texts(self._cache):  # (the three fields, where they are as to_json writes them:
            summary = entry_size(text)            # parsing and checking whole entries took most of `ls`)
            if summary is not None:
                yield summary

    def clear(self, step: str | None = None, *, older_than_s: float | None = None,
              keep_last: int | None = None) -> int:
        try:
            count = self._clear(step, older_than_s, keep_last)
            if step is None:
                self.gc()
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc
        return count

    def _clear(self, step: str | None, older_than_s: float | None, keep_last: int | None) -> int:
        if older_than_s is None and keep_last is None:
            if step is not None:
                count = self._cache.evict(step)
                self._collect_blobs()
                return count
            count = 0
            for name in self._names(("entry:", "blob:")):
                count += name.startswith("entry:")
                self._cache.delete(name)
            return count
        mine = [(key, entry) for key, entry in self.entries() if step in (None, entry.step)]
        if older_than_s is not None:
            cutoff = time.time() - older_than_s
            doomed = {key for key, entry in mine if entry.created_at < cutoff}
        else:
            doomed = {key for key, _ in mine}
        if keep_last is not None:
            self._recency.flush()  # (what this process served counts as used)
            used = last_used(self._cache)
            doomed &= set(beyond_last(((key, e.step, used.get(key, e.created_at)) for key, e in mine), keep_last))
        for key in doomed:
            self._cache.delete("entry:" + key)
        self._collect_blobs()
        return len(doomed)

    # recency and size
    def touch(self, key: str) -> None:
        """Note that ``key`` was served: in memory, written in one batch later (``diskevict.Recency``)."""
        self._recency.touch(key)

    def evict(self, limit_bytes: int, *, keep: Iterable[str] = ()) -> int:
        """Remove the least recently used entries (of every process: the index is shared) and the blobs only
        they use until the index and its files take at most ``limit_bytes``; never those of ``keep``."""
        try:
            total = self._cache.volume()  # (diskcache's: the index's pages and the files it names)
            if total <= limit_bytes:
                return 0
            self._recency.flush()  # (the hits noted so far decide what is least recently used)
            found, blob_sizes = candidates(self._cache, list(self._all_entries()))
            victims = choose_victims(found, blob_sizes, total, limit_bytes, keep)
            for key, blobs in victims:
                self._cache.delete("entry:" + key)
                for address in blobs:
                    self._cache.delete("blob:" + address)
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc
        return len(victims)

    def _collect_blobs(self) -> None:
        """Delete blobs that no entry refers to any more (blobs are shared between entries)."""
        live = {address for _, entry in self.entries() for address in entry.blobs}
        for name in self._names("blob:"):
            if name[5:] not in live:
                self._cache.delete(name)

    def gc(self) -> Collected:
        """Remove the temporaries of writers no longer alive, value files the index does not name (once ten
        minutes old) and lock files unused for as long (``diskgc.py``)."""
        try:
            dropped = self._drop_unnamed_blobs(time.time() - GRACE_S)
            collected = collect(self.directory / "store", self._locks_dir)
        except (OSError, sqlite3.Error) as exc:
            raise describe(exc, self.directory) from exc
        return Collected(collected.files + dropped.files, collected.bytes + dropped.bytes)

    def _drop_unnamed_blobs(self, before: float) -> Collected:
        """Values no entry names, stored before ``before``: a writer killed between its values and its entry
        left them (younger ones may be a live writer's, about to be named)."""
        named = {address for _, entry in self.entries() for address in entry.blobs}
        rows = self._cache._sql("SELECT key, store_time, size FROM Cache WHERE raw = 1 AND key LIKE 'blob:%'")
        files = nbytes = 0
        for name, stored_at, size in rows.fetchall():
            if name[5:] not in named and stored_at < before and self._cache.delete(name):
                files, nbytes = files + 1, nbytes + (size or 0)
        return Collected(files, nbytes)

    def stats(self) -> StoreStats:
        """``size_bytes`` is what ``du -s`` reports for the directory: every file in it, orphans included."""
        read = [entry is not None for _, entry in self._all_entries()]
        return StoreStats(str(self.directory), sum(read), len(read) - sum(read), disk_usage(self.directory))

    # single-flight
    @contextlib.contextmanager
    def lock(self, key: str, timeout: float) -> Iterator[bool]:
        """An exclusive lock on ``locks/<key>.lock`` (``flock``: the system releases it when its holder
        dies). Yields False, to compute anyway, if it timed out or no lock file can be made."""
        held = None
        try:
            if not self._locks_dir.is_dir():
                make_dir(self._locks_dir, self._modes.dir)
            name = key if _LOCK_NAME.fullmatch(key) else hashlib.sha256(key.encode()).hexdigest()
            path = self._locks_dir / (name + ".lock")
            held = hold(str(path), self._modes.file, timeout)
        except OSError:
            held = None
        try:
            if held is not None:
                with contextlib.suppress(OSError):
                    os.utime(path)  # in use: gc leaves it
            yield held is not None
        finally:
            if held is not None:
                let_go(held)

    def close(self) -> None:
        self._recency.close()
        self._cache.close()
        with self._lock:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None


def open_disk_store(directory: str | os.PathLike[str], *, shared: bool | None = None) -> DiskStore:
    """A ``DiskStore`` of ``directory``, or a ``StoreError`` (an ``OSError``) that says what is wrong
    (read-only, full, permission denied, damaged index) and what to do."""
    try:
        return DiskStore(directory, shared=shared)
    except (OSError, sqlite3.Error) as exc:
        raise describe(exc, directory) from None
