"""Where cached results live: a diskcache directory, plus the append-only history of runs.

Layout of a cache directory (``.nbcache/`` by default):

- ``store/``: a ``diskcache.Cache`` holding three kinds of item, told apart by key prefix:
  ``entry:<key>`` (which outputs a step call produced, tagged with the step name so one step can be cleared),
  ``blob:<content hash>`` (one serialized output; content-addressed, so equal outputs are stored once), and
  ``last:<step>`` (the ingredients of the step's latest run, to say what changed next time).
- ``runs.jsonl``: one JSON line per step call, appended with a single ``write`` on an ``O_APPEND`` file so
  that a hit costs about a microsecond to record and processes sharing the directory never interleave;
  lines that do not parse (cut short by a killed process) are skipped when reading.

Values are serialized with cloudpickle, protocol 5, with out-of-band buffers: a numpy array or a pandas
block is not copied into the pickle but written as its own byte range, straight from the array's memory,
and read back with ``readinto`` into fresh memory, which is what ``np.save`` and ``np.load`` do. Every
serialized value carries an xxh3 checksum; a value that fails it, or cannot be unpickled, is reported as
``Damaged`` and the caller recomputes it. diskcache writes a value's file before it commits the row that
points to it, so a process killed mid-write leaves an orphan file, never an entry that reads as valid.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import marshal
import os
import pickle
import sqlite3
import struct
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import cloudpickle
import diskcache
import xxhash

from .ambient import global_generator, global_generator_method
from .records import StepRun

__all__ = ["DiskStore", "Damaged", "ENOVAL", "cache_dir", "set_cache_dir", "get_store"]

ENOVAL = diskcache.core.ENOVAL  # "no value": a miss is never None, because None is a valid result

_MAGIC = b"NBC1"
_HEAD = struct.Struct("<4s16sQI")  # magic, checksum, pickle length, buffer count
_LEN = struct.Struct("<Q")
_INLINE_BYTES = 64 << 10  # smaller values live in the SQLite index; larger ones are files
_READ_CHUNK = 8 << 20  # read and checksum big buffers piece by piece, while the piece is in cache


class Damaged(Exception):
    """A stored value is unreadable: truncated, altered on disk, or no longer unpicklable."""


class Unpicklable(Exception):
    """A value cannot be serialized. The message names its type; ``reason`` is pickle's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


# -- serialization ------------------------------------------------------------------------------------------

class _Pickler(cloudpickle.Pickler):
    """cloudpickle, with two exceptions.

    - Open files are refused: cloudpickle would store a snapshot of the file's text, so a hit would
      return stale contents where the step returned a file. Such a result is not cached at all.
    - A class or function of the notebook (``__main__``) that the notebook can name is stored by name,
      not by value, unless it is in ``by_value`` (defined by the very cell being stored). Restored, an
      instance is then of the notebook's live class (``isinstance`` holds, methods read live globals);
      if the notebook no longer defines that name, the stored value fails to load and is recomputed.
    """

    def __init__(self, file: Any, *, by_value: set[int] = frozenset(), **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._by_value = by_value
        self._notebook = _notebook_globals()  # (asked of every object pickled: looked up once)

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
            state = "closed" if obj.closed else "open"
            raise pickle.PicklingError(f"a file object ({getattr(obj, 'name', '?')}, {state}) is not stored")
        if (isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__"
                and id(obj) not in self._by_value and _main_attribute(obj.__qualname__, None) is obj
                and id(_main_attribute(obj.__qualname__.partition(".")[0], None)) not in self._by_value):
            return _main_attribute, (obj.__qualname__,)  # (a method of a class stored by value is not)
        if isinstance(obj, types.FunctionType) and obj.__globals__ is self._notebook:
            return _reduce_notebook_function(obj)
        if isinstance(obj, _LRU) and getattr(obj.__wrapped__, "__globals__", None) is self._notebook:
            return _make_lru, (obj.__wrapped__, obj.cache_parameters())  # (by name: undefined after a restart)
        if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
            module = global_generator(getattr(obj, "__self__", None))
            if module is not None:  # `from numpy.random import rand`: the live generator's, not a copy
                return global_generator_method, (module, obj.__name__)
        return super().reducer_override(obj)


_LRU = type(functools.lru_cache(lambda: None))


def _make_lru(func: Any, parameters: dict) -> Any:
    """A function wrapped in ``functools.lru_cache`` (or ``functools.cache``) again, with an empty cache."""
    return functools.update_wrapper(functools.lru_cache(parameters["maxsize"], parameters["typed"])(func), func)


# A function of the notebook stored by value (defined by the cell being stored, or a lambda or closure) is
# stored as its code (marshal, which is exact for this Python version, and the Python minor version is in
# every key) plus its defaults, closure and attributes, and made again on load with the notebook's live
# namespace as its globals: as if its cell had just defined it. Neither a copy of the globals it saw when
# it was stored nor how a pickling library rebuilds functions is involved.
def _reduce_notebook_function(func: types.FunctionType) -> tuple:
    cells = []
    for cell in func.__closure__ or ():
        try:
            cells.append((True, cell.cell_contents))
        except ValueError:  # a cell not filled yet
            cells.append((False, None))
    state = {"defaults": func.__defaults__, "kwdefaults": func.__kwdefaults__, "cells": cells,
             "qualname": func.__qualname__, "doc": func.__doc__, "annotations": func.__annotations__,
             "dict": dict(vars(func))}
    # the state is pickled after the function itself is memoized, so a function that refers to itself
    # (through its closure, defaults or attributes) is stored once and comes back as one object
    return (_make_notebook_function, (marshal.dumps(func.__code__), func.__name__, len(cells)), state, None, None,
            _set_notebook_function_state)


def _make_notebook_function(code: bytes, name: str, free: int) -> types.FunctionType:
    closure = tuple(types.CellType() for _ in range(free)) or None
    return types.FunctionType(marshal.loads(code), _notebook_globals(), name, None, closure)


def _set_notebook_function_state(func: types.FunctionType, state: dict) -> None:
    func.__defaults__, func.__kwdefaults__ = state["defaults"], state["kwdefaults"]
    func.__qualname__, func.__doc__, func.__annotations__ = state["qualname"], state["doc"], state["annotations"]
    func.__dict__.update(state["dict"])
    for cell, (filled, value) in zip(func.__closure__ or (), state["cells"]):
        if filled:
            cell.cell_contents = value


_notebook_module: types.ModuleType | None = None


def set_notebook_module(module: types.ModuleType | None) -> None:
    """The module whose namespace the notebook's cells run in (IPython's ``user_module``); by default
    ``sys.modules["__main__"]``, which it is in a Jupyter kernel."""
    global _notebook_module
    _notebook_module = module


def _notebook_globals() -> dict:
    """The namespace the notebook's cells run in: the globals of functions restored from the cache."""
    module = _notebook_module or sys.modules.get("__main__")
    return vars(module) if module is not None else {"__builtins__": __builtins__}


def _main_attribute(qualname: str, default: Any = ENOVAL) -> Any:
    """``__main__.<qualname>``: how a notebook's class or function is named in a stored value."""
    value: Any = _notebook_module or sys.modules.get("__main__")
    for part in qualname.split("."):
        value = getattr(value, part, ENOVAL)
        if value is ENOVAL:
            if default is ENOVAL:
                raise AttributeError(f"the notebook no longer defines {qualname}")
            return default
    return value


class Frame:
    """A serialized value: a small pickle plus the raw buffers it refers to, checksummed as it is written.

    Layout: magic, xxh3-128 checksum, pickle length, buffer count, buffer lengths, pickle, buffers. The
    checksum covers everything after it.
    """

    __slots__ = ("pickled", "buffers", "lengths", "nbytes", "_checksum")

    def __init__(self, value: Any, *, by_value: set[int] = frozenset()) -> None:
        buffers: list[pickle.PickleBuffer] = []
        out = io.BytesIO()
        try:
            _Pickler(out, by_value=by_value, protocol=5, buffer_callback=buffers.append).dump(value)
        except Exception as exc:
            raise Unpicklable(f"{type(value).__module__}.{type(value).__qualname__}: {exc}", str(exc)) from None
        self.pickled = out.getvalue()
        self.buffers = [b.raw() for b in buffers]
        self.lengths = b"".join(_LEN.pack(b.nbytes) for b in self.buffers)
        self.nbytes = _HEAD.size + len(self.lengths) + len(self.pickled) + sum(b.nbytes for b in self.buffers)
        self._checksum: bytes | None = None

    def _head(self, checksum: bytes) -> bytes:
        return _HEAD.pack(_MAGIC, checksum, len(self.pickled), len(self.buffers)) + self.lengths

    def _payload(self) -> Iterator[bytes | memoryview]:
        """What follows the head, big buffers cut into pieces."""
        yield self.pickled
        for buf in self.buffers:
            for start in range(0, buf.nbytes, _READ_CHUNK):
                yield buf[start:start + _READ_CHUNK]

    def identity(self) -> str:
        """A short digest of the pickle itself, without the big buffers (whose content the value's hash
        covers): two values that hash alike but pickle differently get different names."""
        return xxhash.xxh3_64_hexdigest(self.lengths + self.pickled)

    def checksum(self) -> bytes:
        if self._checksum is None:
            h = xxhash.xxh3_128(self.lengths)
            for part in self._payload():
                h.update(part)
            self._checksum = h.digest()
        return self._checksum

    def to_bytes(self) -> bytes:
        return b"".join([self._head(self.checksum()), *self._payload()])

    def write(self, f: Any) -> int:
        """Write to a new binary file: each piece is checksummed on a second thread while it is written
        (both release the GIL), and the head, which holds the checksum, is written last, in place."""
        head_size = _HEAD.size + len(self.lengths)
        f.write(bytes(head_size))
        h = xxhash.xxh3_128(self.lengths)
        for part in self._payload():
            pending = _helper_thread().submit(h.update, part) if len(part) >= _READ_CHUNK else None
            f.write(part)
            if pending is None:
                h.update(part)
            else:
                pending.result()
        self._checksum = h.digest()
        f.flush()
        os.pwrite(f.fileno(), self._head(self._checksum), 0)
        return self.nbytes


_helper: ThreadPoolExecutor | None = None


def _helper_thread() -> ThreadPoolExecutor:
    """One worker thread that checksums big buffers while the main thread does their I/O."""
    global _helper
    if _helper is None:
        _helper = ThreadPoolExecutor(1, thread_name_prefix="nbcache-checksum")
    return _helper


def _alloc(n: int) -> Any:
    """Writable memory for a buffer, not zeroed. numpy's allocator reuses freed memory, so a big array
    loaded again costs a copy rather than fresh page faults; without numpy, a bytearray does."""
    np = sys.modules.get("numpy")
    if np is None and n >= _READ_CHUNK:
        try:
            import numpy as np  # out-of-band buffers almost always belong to numpy or pandas values
        except ImportError:
            np = None
    return np.empty(n, dtype=np.uint8) if np is not None else bytearray(n)


def _read_exact(f: Any, view: memoryview, h: Any) -> None:
    """Fill ``view`` from ``f`` and feed it to ``h``. A big buffer is read a piece at a time while the
    helper thread checksums the previous piece."""
    pending = None
    for start in range(0, len(view), _READ_CHUNK):
        piece = view[start:start + _READ_CHUNK]
        got = f.readinto(piece)
        while got < len(piece):
            more = f.readinto(piece[got:])
            if not more:
                raise Damaged("the file is truncated")
            got += more
        if len(view) <= _READ_CHUNK:
            h.update(piece)
            return
        if pending is not None:
            pending.result()
        pending = _helper_thread().submit(h.update, piece)
    if pending is not None:
        pending.result()


def load_frame(source: bytes | Any) -> Any:
    """Read a value written by ``Frame`` from bytes or a binary file, verifying its checksum."""
    if isinstance(source, (bytes, bytearray)):
        return _load_bytes(bytes(source))
    if not hasattr(source, "read"):  # a value of another format in the index (left unpickled)
        raise Damaged("the value is not one nbcache wrote")
    with source as f:
        head = f.read(_HEAD.size)
        if len(head) != _HEAD.size:
            raise Damaged("the file is truncated")
        magic, checksum, pickle_len, nbuf = _HEAD.unpack(head)
        if magic != _MAGIC:
            raise Damaged("the file is not an nbcache value")
        lengths_raw = f.read(_LEN.size * nbuf)
        if len(lengths_raw) != _LEN.size * nbuf:
            raise Damaged("the file is truncated")
        h = xxhash.xxh3_128(lengths_raw)
        pickled = f.read(pickle_len)
        if len(pickled) != pickle_len:
            raise Damaged("the file is truncated")
        h.update(pickled)
        buffers = []
        for (n,) in struct.iter_unpack("<Q", lengths_raw):
            buf = _alloc(n)
            _read_exact(f, memoryview(buf), h)
            buffers.append(buf)
        if f.read(1):
            raise Damaged("the file has trailing bytes")
    if h.digest() != checksum:
        raise Damaged("its checksum does not match")
    return _unpickle(pickled, buffers)


def _load_bytes(data: bytes) -> Any:
    if len(data) < _HEAD.size:
        raise Damaged("the value is truncated")
    magic, checksum, pickle_len, nbuf = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise Damaged("the value is not an nbcache value")
    view = memoryview(data)
    pos = _HEAD.size
    lengths_raw = view[pos:pos + _LEN.size * nbuf]
    pos += len(lengths_raw)
    h = xxhash.xxh3_128(lengths_raw)
    h.update(view[pos:])
    if h.digest() != checksum:
        raise Damaged("its checksum does not match")
    pickled = view[pos:pos + pickle_len]
    pos += pickle_len
    buffers = []
    for (n,) in struct.iter_unpack("<Q", lengths_raw):
        buffers.append(bytearray(view[pos:pos + n]))  # writable, like an array loaded from a file
        pos += n
    return _unpickle(pickled, buffers)


def _unpickle(pickled: bytes | memoryview, buffers: list) -> Any:
    try:
        return pickle.loads(pickled, buffers=buffers)
    except Exception as exc:  # e.g. the class of a stored object no longer exists
        raise Damaged(f"it cannot be unpickled ({type(exc).__name__}: {exc})") from None


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


# -- the store ----------------------------------------------------------------------------------------------

class DiskStore:
    """The cache of one directory. Safe to share between threads and processes."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
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

    def __repr__(self) -> str:
        return f"DiskStore({str(self.directory)!r})"

    # entries and blobs
    def get_entry(self, key: str) -> dict | None:
        return _from_json(self._cache.get("entry:" + key))

    def load_blob(self, address: str) -> Any:
        """The stored value at ``address``; ENOVAL if it is gone; raises ``Damaged`` if unreadable."""
        handle = self._cache.get("blob:" + address, ENOVAL, read=True)
        if handle is ENOVAL:
            return ENOVAL
        return load_frame(handle)

    def put_entry(self, key: str, step: str, entry: dict, blobs: Iterable[tuple[str, Frame]]) -> None:
        """Write the blobs (unless an equal one is stored already), then the entry that points to them."""
        for address, frame in blobs:
            name = "blob:" + address
            if name not in self._cache:
                self._cache.set(name, frame)
        self._cache.set("entry:" + key, json.dumps(entry), tag=step)

    def forget(self, key: str, addresses: Iterable[str] = ()) -> None:
        """Drop an entry and blobs found damaged, so the recomputed value replaces them."""
        self._cache.delete("entry:" + key)
        for address in addresses:
            self._cache.delete("blob:" + address)

    # the latest ingredients of each step
    def get_last(self, step: str) -> dict | None:
        return _from_json(self._cache.get("last:" + step))

    def has_last(self, step: str) -> bool:
        """Whether some nbcache recorded this step's latest ingredients here, readable or not."""
        return "last:" + step in self._cache

    def set_last(self, step: str, ingredients: dict) -> None:
        self._cache.set("last:" + step, json.dumps(ingredients))

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
    def entries(self) -> Iterator[tuple[str, dict]]:
        """Every stored entry, as (key, entry): its step, outputs, blobs, sizes and creation time."""
        for name in list(self._cache.iterkeys()):
            if isinstance(name, str) and name.startswith("entry:"):
                entry = _from_json(self._cache.get(name))
                if entry is not None:
                    yield name[6:], entry

    def clear(self, step: str | None = None, *, older_than_s: float | None = None) -> int:
        """Remove cached results (all, or one step's, or those stored more than ``older_than_s`` seconds
        ago) and return how many entries went.

        The run history stays, and so does each step's latest ingredients: it is a record of what
        happened, and it lets the next run say that it ran because its result had been removed.
        """
        if older_than_s is not None:
            cutoff = time.time() - older_than_s
            count = 0
            for key, entry in self.entries():
                if entry["created_at"] < cutoff and step in (None, entry["step"]):
                    self._cache.delete("entry:" + key)
                    count += 1
            self._collect_blobs()
            return count
        if step is None:
            count = 0
            for name in list(self._cache.iterkeys()):
                if isinstance(name, str) and name.startswith(("entry:", "blob:")):
                    count += name.startswith("entry:")
                    self._cache.delete(name)
            return count
        count = self._cache.evict(step)
        self._collect_blobs()
        return count

    def _collect_blobs(self) -> None:
        """Delete blobs that no entry refers to any more (blobs are shared between entries)."""
        live: set[str] = set()
        blobs: list[str] = []
        for name in list(self._cache.iterkeys()):
            if not isinstance(name, str):
                continue
            if name.startswith("entry:"):
                entry = _from_json(self._cache.get(name))
                if entry is not None:
                    live.update(entry["blobs"])
            elif name.startswith("blob:"):
                blobs.append(name[5:])
        for address in blobs:
            if address not in live:
                self._cache.delete("blob:" + address)

    def stats(self) -> dict[str, Any]:
        """The directory, its readable entries, the entries it cannot read (written by an nbcache with
        another cache format; ``clear()`` removes them) and its size on disk."""
        names = [k for k in self._cache.iterkeys() if isinstance(k, str) and k.startswith("entry:")]
        readable = sum(1 for _ in self.entries())
        return {"directory": str(self.directory), "entries": readable, "unreadable_entries": len(names) - readable,
                "size_bytes": self._cache.volume()}

    def close(self) -> None:
        self._cache.close()
        with self._lock:
            if self._log_fd is not None:
                os.close(self._log_fd)
                self._log_fd = None


def _from_json(text: Any) -> dict | None:
    """An entry or a step's latest ingredients, from the JSON text they are stored as; None if absent or
    not readable as such (a value of another format, which ``_FrameDisk`` does not unpickle)."""
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- which directory ------------------------------------------------------------------------------------

_explicit_dir: str | None = None
_stores: dict[str, DiskStore] = {}
_stores_lock = threading.Lock()


def set_cache_dir(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` for the cache from now on (``None`` returns to ``NBCACHE_DIR`` or ``.nbcache``)."""
    global _explicit_dir
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"set_cache_dir() takes a path, not {type(path).__name__}")
    _explicit_dir = None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))


def _resolve_dir() -> str:
    if _explicit_dir is not None:
        return _explicit_dir
    path = os.environ.get("NBCACHE_DIR") or ".nbcache"
    if path.startswith("~"):
        path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def cache_dir() -> Path:
    """The cache directory in use: set_cache_dir's, else ``$NBCACHE_DIR``, else ``./.nbcache``."""
    return Path(_resolve_dir())


def get_store() -> DiskStore:
    directory = _resolve_dir()
    store = _stores.get(directory)
    if store is None:
        with _stores_lock:
            store = _stores.get(directory)
            if store is None:
                try:
                    store = _stores[directory] = DiskStore(directory)
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
    return store
