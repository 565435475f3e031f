"""``DiskStore``: the ``Store`` of a cache directory, a diskcache index plus an append-only history file.

Layout of a cache directory (``.nbcache/`` by default):

- ``store/``: a ``diskcache.Cache`` holding three kinds of item, told apart by key prefix:
  ``entry:<key>`` (an ``Entry`` as JSON text, tagged with the step name so one step can be cleared),
  ``blob:<content address>`` (one ``Frame``; small ones inside the SQLite index, big ones as files), and
  ``last:<step identity>`` (the step's ``Latest`` ingredients, as JSON text).
- ``runs.jsonl``: one JSON line per step call, appended with a single ``write`` on an ``O_APPEND`` file so
  that a hit costs about a microsecond to record and processes sharing the directory never interleave;
  lines that do not parse (cut short by a killed process) are skipped when reading.

diskcache writes a value's file before it commits the row that points to it, so a process killed mid-write
leaves an orphan file, never an entry that reads as valid.
"""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import diskcache

from .entry import Entry, Latest
from .frame import Damaged, Frame
from .records import StepRun
from .store import StoreStats

__all__ = ["DiskStore", "open_disk_store"]

_INLINE_BYTES = 64 << 10  # smaller values live in the SQLite index; larger ones are files
_ABSENT = diskcache.core.ENOVAL
_PARSED_MAX = 4096  # entries remembered parsed (each about a kilobyte)


class _FrameDisk(diskcache.Disk):
    """diskcache's Disk, taught to write a Frame's parts straight to a file without joining them, and
    never to unpickle a value of the index: nbcache writes its entries as JSON text, so a pickle found
    there was put by something else, and loading it could run its code (``nbcache ls`` reads entries)."""

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            return None
        return super().fetch(mode, filename, value, read)

    def get(self, key: Any, raw: bool) -> Any:
        """A key as stored: nbcache's keys are strings, stored raw; a pickled key is left unloaded."""
        return super().get(key, raw) if raw else None

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if not isinstance(value, Frame):
            return super().store(value, read, key=key)
        if value.nbytes < _INLINE_BYTES:
            return 0, diskcache.core.MODE_RAW, None, sqlite3.Binary(value.to_bytes())
        filename, full_path = self.filename(key, value)
        os.makedirs(os.path.dirname(full_path), exist_ok=True)
        with open(full_path, "xb") as f:
            try:  # reserve the space first, as np.save does: one allocation instead of many, and a full
                os.posix_fallocate(f.fileno(), 0, value.nbytes)  # disk fails here rather than mid-write
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise
            size = value.write(f)
        return size, diskcache.core.MODE_BINARY, filename, None


class DiskStore:
    """The cache of one directory. Safe to share between threads and processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._cache = diskcache.Cache(
            str(self.directory / "store"),
            disk=_FrameDisk,
            eviction_policy="none",  # never drop a result behind the user's back; `clear` does that
            tag_index=True,
            disk_pickle_protocol=pickle.HIGHEST_PROTOCOL,
        )
        self._log_path = self.directory / "runs.jsonl"
        self._log_fd: int | None = None
        self._lock = threading.Lock()
        self._parsed: dict[str, Entry] = {}  # entries read, by their text: a hit parses its entry once

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    # entries and blobs
    def get_entry(self, key: str) -> Entry | None:
        text = self._cache.get("entry:" + key, _ABSENT)
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
        self._cache.set("entry:" + key, entry.to_json(), tag=entry.step)

    def has_blob(self, address: str) -> bool:
        return "blob:" + address in self._cache

    def put_blob(self, address: str, frame: Frame) -> None:
        name = "blob:" + address
        if name not in self._cache:
            self._cache.set(name, frame)

    def open_blob(self, address: str) -> Any:
        handle = self._cache.get("blob:" + address, _ABSENT, read=True)
        if handle is _ABSENT:
            return None
        if handle is None:  # a pickle some other program put in the index, which _FrameDisk leaves unread
            raise Damaged("the value is not one nbcache wrote")
        return handle

    def delete(self, key: str, blobs: Iterable[str] = ()) -> None:
        self._cache.delete("entry:" + key)
        for address in blobs:
            self._cache.delete("blob:" + address)

    # the latest ingredients of each step
    def get_latest(self, identity: str) -> Latest | None:
        text = self._cache.get("last:" + identity, _ABSENT)
        return None if text is _ABSENT else Latest.from_json(text)

    def put_latest(self, identity: str, latest: Latest) -> None:
        self._cache.set("last:" + identity, latest.to_json())

    # the run history
    def append_run(self, run: StepRun) -> None:
        # The newline goes first: a line left unfinished by a killed process is then never glued to the
        # next record, whichever process writes it.
        line = ("\n" + run.to_json()).encode()
        with self._lock:
            if self._log_fd is None:
                self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._log_fd, line)

    def read_runs(self, step: str | None = None) -> list[StepRun]:
        try:
            with open(self._log_path, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        runs = []
        for line in lines:
            if not line:
                continue
            try:
                run = StepRun.from_json(line)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut short by a killed process: the run it described is not lost data
            if step is None or run.step == step:
                runs.append(run)
        return runs

    # maintenance
    def _names(self, prefix: str) -> list[str]:
        return [name for name in self._cache.iterkeys() if isinstance(name, str) and name.startswith(prefix)]

    def _read_entry(self, name: str) -> Entry | None:
        try:
            return Entry.from_json(self._cache.get(name))
        except Damaged:
            return None

    def entries(self) -> Iterator[tuple[str, Entry]]:
        for name in self._names("entry:"):
            entry = self._read_entry(name)
            if entry is not None:
                yield name[6:], entry

    def clear(self, step: str | None = None, *, older_than_s: float | None = None) -> int:
        if older_than_s is not None:
            cutoff = time.time() - older_than_s
            count = 0
            for key, entry in self.entries():
                if entry.created_at < cutoff and step in (None, entry.step):
                    self._cache.delete("entry:" + key)
                    count += 1
            self._collect_blobs()
            return count
        if step is None:
            count = 0
            for name in self._names(("entry:", "blob:")):
                count += name.startswith("entry:")
                self._cache.delete(name)
            return count
        count = self._cache.evict(step)
        self._collect_blobs()
        return count

    def _collect_blobs(self) -> None:
        """Delete blobs that no entry refers to any more (blobs are shared between entries)."""
        live = {address for _, entry in self.entries() for address in entry.blobs}
        for name in self._names("blob:"):
            if name[5:] not in live:
                self._cache.delete(name)

    def stats(self) -> StoreStats:
        names = self._names("entry:")
        readable = sum(1 for name in names if self._read_entry(name) is not None)
        return StoreStats(str(self.directory), readable, len(names) - readable, self._cache.volume())

    def close(self) -> None:
        self._cache.close()
        with self._lock:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None


def open_disk_store(directory: str) -> DiskStore:
    """A ``DiskStore`` of ``directory``, or an ``OSError`` that says what is wrong and what to do."""
    try:
        return DiskStore(directory)
    except OSError as exc:
        raise OSError(
            f"nbcache cannot use {directory} as its cache directory ({exc.strerror or exc});"
            " set NBCACHE_DIR or call nbcache.set_cache_dir() to choose another"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise OSError(
            f"nbcache's index in {directory} is damaged ({exc}); move or delete that directory"
            " to start a fresh cache"
        ) from None
