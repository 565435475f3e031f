"""The format of one stored value: a small pickle plus the raw buffers it refers to, checksummed.

Values are serialized with ``pickler.NotebookPickler`` (cloudpickle), protocol 5, with out-of-band
buffers: a numpy array or a pandas block is not copied into the pickle but written as its own byte range,
straight from the array's memory, and read back with ``readinto`` into fresh memory, which is what
``np.save`` and ``np.load`` do. Every serialized value carries an xxh3 checksum; a value that fails it, or
cannot be unpickled, raises ``Damaged`` and the caller recomputes it.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import xxhash

from .pickler import NotebookPickler, NotebookUnpickler

__all__ = ["Frame", "load_frame", "Damaged", "Unpicklable"]

_MAGIC = b"NBC1"
_HEAD = struct.Struct("<4s16sQI")  # magic, checksum, pickle length, buffer count
_LEN = struct.Struct("<Q")
READ_CHUNK = 8 << 20  # read and checksum big buffers piece by piece, while the piece is in cache


class Damaged(Exception):
    """A stored value or entry is unreadable: truncated, altered on disk, or no longer unpicklable."""


class Unpicklable(Exception):
    """A value cannot be serialized. The message names its type; ``reason`` is pickle's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class Frame:
    """A serialized value. Layout: magic, xxh3-128 checksum, pickle length, buffer count, buffer lengths,
    pickle, buffers. The checksum covers everything after it.

    ``notebook`` is the module the notebook's cells run in (``None``: ``__main__``); ``by_value`` the ids of
    the notebook's classes and functions to store by value rather than by name.
    """

    __slots__ = ("pickled", "buffers", "lengths", "nbytes", "_checksum")

    def __init__(self, value: Any, *, notebook: types.ModuleType | None = None,
                 by_value: set[int] = frozenset()) -> None:
        buffers: list = []
        out = io.BytesIO()
        try:
            NotebookPickler(out, notebook=notebook, by_value=by_value, protocol=5,
                            buffer_callback=buffers.append).dump(value)
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
            for start in range(0, buf.nbytes, READ_CHUNK):
                yield buf[start:start + READ_CHUNK]

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
            pending = _checksum_thread().submit(h.update, part) if len(part) >= READ_CHUNK else None
            f.write(part)
            if pending is None:
                h.update(part)
            else:
                pending.result()
        self._checksum = h.digest()
        f.flush()
        os.pwrite(f.fileno(), self._head(self._checksum), 0)
        return self.nbytes


@functools.cache
def _checksum_thread() -> ThreadPoolExecutor:
    """One worker thread that checksums big buffers while the main thread does their I/O."""
    return ThreadPoolExecutor(1, thread_name_prefix="nbcache-checksum")


def _alloc(n: int) -> Any:
    """Writable memory for a buffer, not zeroed. numpy's allocator reuses freed memory, so a big array
    loaded again costs a copy rather than fresh page faults; without numpy, a bytearray does."""
    np = sys.modules.get("numpy")
    if np is None and n >= READ_CHUNK:
        try:
            import numpy as np  # out-of-band buffers almost always belong to numpy or pandas values
        except ImportError:
            np = None
    return np.empty(n, dtype=np.uint8) if np is not None else bytearray(n)


def _read_exact(f: Any, view: memoryview, h: Any) -> None:
    """Fill ``view`` from ``f`` and feed it to ``h``. A big buffer is read a piece at a time while the
    helper thread checksums the previous piece."""
    pending = None
    for start in range(0, len(view), READ_CHUNK):
        piece = view[start:start + READ_CHUNK]
        got = f.readinto(piece)
        while got < len(piece):
            more = f.readinto(piece[got:])
            if not more:
                raise Damaged("the file is truncated")
            got += more
        if len(view) <= READ_CHUNK:
            h.update(piece)
            return
        if pending is not None:
            pending.result()
        pending = _checksum_thread().submit(h.update, piece)
    if pending is not None:
        pending.result()


def load_frame(source: bytes | Any, notebook: types.ModuleType | None = None) -> Any:
    """Read a value written by ``Frame`` from bytes or a binary file, verifying its checksum; functions of
    the notebook come back with ``notebook``'s namespace (``None``: ``__main__``) as their globals."""
    if isinstance(source, (bytes, bytearray)):
        return _load_bytes(bytes(source), notebook)
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
    return _unpickle(pickled, buffers, notebook)


def _load_bytes(data: bytes, notebook: types.ModuleType | None) -> Any:
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
    return _unpickle(pickled, buffers, notebook)


def _unpickle(pickled: bytes | memoryview, buffers: list, notebook: types.ModuleType | None) -> Any:
    try:
        return NotebookUnpickler(io.BytesIO(pickled), notebook=notebook, buffers=buffers).load()
    except Exception as exc:  # e.g. the class of a stored object no longer exists
        raise Damaged(f"it cannot be unpickled ({type(exc).__name__}: {exc})") from None
