"""The format of one stored value: a small pickle plus the raw buffers it refers to, signed.

Values are serialized with ``pickler.NotebookPickler`` (cloudpickle), protocol 5, with out-of-band
buffers: a numpy array or a pandas block is not copied into the pickle but written as its own byte range,
straight from the array's memory, and read back with ``readinto`` into fresh memory, which is what
``np.save`` and ``np.load`` do.

Every value carries an HMAC-SHA256 tag under the cache's key (``keys.py``) over its header, the digests of
its buffers and its pickle. A value is never unpickled before its tag is checked: one written by another
user, planted or altered raises ``Damaged``, as does one whose header does not fit its size or whose buffer
fails its digest, and the caller recomputes it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import os
import struct
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import xxhash

from .pickler import NotebookPickler, NotebookUnpickler

__all__ = ["Frame", "load_frame", "signature_problem", "Damaged", "Unpicklable"]

_MAGIC = b"NBC2"
_OLD_MAGIC = b"NBC1"  # unsigned values of an earlier nbcache: never unpickled
_HEAD = struct.Struct("<4s32sQI")  # magic, tag, pickle length, buffer count
_ROW = struct.Struct("<Q16s")  # per buffer: its length and its xxh3-128 digest
READ_CHUNK = 8 << 20  # read and checksum big buffers piece by piece, while the piece is in cache
_SMALL_PICKLE = 64 << 20  # a longer pickle is proven in a first pass before memory is taken for it


class Damaged(Exception):
    """A stored value or entry is unreadable: truncated, altered on disk, not signed with this cache's key,
    or no longer unpicklable."""


class Unpicklable(Exception):
    """A value cannot be serialized. The message names its type; ``reason`` is pickle's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class Frame:
    """A serialized value. Layout: the head (magic, tag, pickle length, buffer count), a row per raw buffer
    (its length and xxh3-128 digest), the pickle, the buffers.

    The tag is an HMAC-SHA256, under the cache's key, of the head's fields, the rows and the pickle: all
    that could run code when loaded, and the digests of the raw buffers, so a reader can trust the pickle
    without reading the buffers first. ``notebook`` is the module the notebook's cells run in (``None``:
    ``__main__``); ``by_value`` the ids of the notebook's classes and functions to store by value rather
    than by name; ``key`` signs the frame when it is written.
    """

    __slots__ = ("pickled", "buffers", "nbytes", "key", "name", "_digests")

    def __init__(self, value: Any, *, notebook: types.ModuleType | None = None,
                 by_value: set[int] = frozenset(), key: bytes | None = None) -> None:
        buffers: list = []
        out = io.BytesIO()
        try:
            NotebookPickler(out, notebook=notebook, by_value=by_value, protocol=5,
                            buffer_callback=buffers.append).dump(value)
        except Exception as exc:
            raise Unpicklable(f"{type(value).__module__}.{type(value).__qualname__}: {exc}", str(exc)) from None
        self.pickled = out.getvalue()
        self.buffers = [b.raw() for b in buffers]
        self.nbytes = (_HEAD.size + _ROW.size * len(self.buffers) + len(self.pickled)
                       + sum(b.nbytes for b in self.buffers))
        self.key = key
        self.name = ""  # the address it is stored under, which the tag covers: set before it is written
        self._digests: list[bytes] | None = None

    def _rows(self, digests: list[bytes]) -> bytes:
        return b"".join(_ROW.pack(b.nbytes, d) for b, d in zip(self.buffers, digests))

    def _head(self, rows: bytes) -> bytes:
        if self.key is None:
            raise ValueError("a Frame is written with the key that signs it: Frame(value, key=...)")
        tag = _tag(self.key, self.name, len(self.pickled), len(self.buffers), rows, [self.pickled])
        return _HEAD.pack(_MAGIC, tag, len(self.pickled), len(self.buffers)) + rows

    def _pieces(self, buf: memoryview) -> Iterator[memoryview]:
        for start in range(0, buf.nbytes, READ_CHUNK):
            yield buf[start:start + READ_CHUNK]

    def _payload(self) -> Iterator[bytes | memoryview]:
        """What follows the head and rows, big buffers cut into pieces."""
        yield self.pickled
        for buf in self.buffers:
            yield from self._pieces(buf)

    def digests(self) -> list[bytes]:
        """The xxh3-128 digest of each raw buffer."""
        if self._digests is None:
            self._digests = [xxhash.xxh3_128_digest(buf) for buf in self.buffers]
        return self._digests

    def identity(self) -> str:
        """A short digest of the pickle itself, without the big buffers (whose content the value's hash
        covers): two values that hash alike but pickle differently get different names."""
        lengths = b"".join(struct.pack("<Q", b.nbytes) for b in self.buffers)
        return xxhash.xxh3_64_hexdigest(lengths + self.pickled)

    def checksum(self) -> bytes:
        """A digest of the whole value, pickle and buffers (the same whatever the key)."""
        return xxhash.xxh3_128_digest(self._rows(self.digests()) + self.pickled)

    def to_bytes(self) -> bytes:
        return b"".join([self._head(self._rows(self.digests())), *self._payload()])

    def write(self, f: Any) -> int:
        """Write to a new binary file: each big buffer is checksummed on a second thread while it is
        written (both release the GIL), and the head and rows, which hold the tag and digests, are written
        last, in place."""
        if self.key is None:
            raise ValueError("a Frame is written with the key that signs it: Frame(value, key=...)")
        f.write(bytes(_HEAD.size + _ROW.size * len(self.buffers)))
        f.write(self.pickled)
        digests = []
        for buf in self.buffers:
            h = xxhash.xxh3_128()
            for piece in self._pieces(buf):
                pending = _checksum_thread().submit(h.update, piece) if len(piece) >= READ_CHUNK else None
                f.write(piece)
                if pending is None:
                    h.update(piece)
                else:
                    pending.result()
            digests.append(h.digest())
        self._digests = digests
        f.flush()
        os.pwrite(f.fileno(), self._head(self._rows(digests)), 0)
        return self.nbytes


def _tag(key: bytes, name: str, pickle_len: int, nbuf: int, rows: bytes | memoryview,
         pickled: Iterable[bytes | memoryview]) -> bytes:
    """The HMAC of a value: its name (the address it is stored under, so that a value copied under another
    name does not verify), its header's fields, its buffer rows and its pickle (given in pieces)."""
    label = name.encode("utf-8", "surrogatepass")
    mac = hmac.new(key, _MAGIC + struct.pack("<Q", len(label)) + label + struct.pack("<QI", pickle_len, nbuf),
                   hashlib.sha256)
    mac.update(rows)
    for piece in pickled:
        mac.update(piece)
    return mac.digest()


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


def _read_exact(f: Any, view: memoryview) -> bytes:
    """Fill ``view`` from ``f``; return its xxh3-128 digest. A big buffer is read a piece at a time while
    the helper thread checksums the previous piece."""
    h = xxhash.xxh3_128()
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
            return h.digest()
        if pending is not None:
            pending.result()
        pending = _checksum_thread().submit(h.update, piece)
    if pending is not None:
        pending.result()
    return h.digest()


def _parse_head(head: bytes | memoryview, size: int) -> tuple[bytes, int, int]:
    """(tag, pickle length, buffer count) of a value of ``size`` bytes; every field is checked against
    the size before anything is allocated."""
    if size < _HEAD.size:
        raise Damaged("it is truncated")
    magic, tag, pickle_len, nbuf = _HEAD.unpack_from(head)
    if magic == _OLD_MAGIC:
        raise Damaged("it was written by an earlier nbcache, without a signature")
    if magic != _MAGIC:
        raise Damaged("it is not an nbcache value")
    if nbuf > (size - _HEAD.size) // _ROW.size or pickle_len > size - _HEAD.size - _ROW.size * nbuf:
        raise Damaged("its header does not fit its size")
    return tag, pickle_len, nbuf


def _check(key: bytes, name: str, tag: bytes, pickle_len: int, nbuf: int, rows: bytes | memoryview,
           pickled: Iterable[bytes | memoryview], size: int) -> list[tuple[int, bytes]]:
    """The (length, digest) rows, once the tag proves the name, head, rows and pickle were written with
    ``key``."""
    if not hmac.compare_digest(tag, _tag(key, name, pickle_len, nbuf, rows, pickled)):
        raise Damaged("its signature does not match this cache's key and its name (another user wrote it,"
                      " or it was altered or moved)")
    table = list(_ROW.iter_unpack(rows))
    if _HEAD.size + len(rows) + pickle_len + sum(n for n, _ in table) != size:
        raise Damaged("its size does not match its header")
    return table


def _pieces_of(f: Any, n: int) -> Iterator[bytes]:
    """The next ``n`` bytes of ``f`` in pieces, none kept: a header's length is checked before it is
    believed enough to allocate that much."""
    while n > 0:
        piece = f.read(min(n, READ_CHUNK))
        if not piece:
            raise Damaged("the file is truncated")
        n -= len(piece)
        yield piece


def _open_checked(f: Any, key: bytes, name: str, *, keep: bool = True) -> tuple[list[tuple[int, bytes]], bytes]:
    """Check the value ``f`` reads from: its header, its size and its signature; return its buffer rows and
    (``keep``) its pickle, with ``f`` left at the first buffer. A pickle longer than ``_SMALL_PICKLE`` is
    proven in pieces before memory is taken for it (a planted sparse file may claim any length), then read
    and proven again, so what is unpickled is what was proven."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    tag, pickle_len, nbuf = _parse_head(f.read(_HEAD.size), size)
    rows = f.read(_ROW.size * nbuf)
    if len(rows) != _ROW.size * nbuf:
        raise Damaged("the file is truncated")
    start = f.tell()
    if pickle_len > _SMALL_PICKLE:
        table = _check(key, name, tag, pickle_len, nbuf, rows, _pieces_of(f, pickle_len), size)
        if not keep:
            return table, b""
        f.seek(start)
    pickled = f.read(pickle_len)
    if len(pickled) != pickle_len:
        raise Damaged("the file is truncated")
    return _check(key, name, tag, pickle_len, nbuf, rows, [pickled], size), pickled


def load_frame(source: bytes | Any, notebook: types.ModuleType | None = None, *, key: bytes,
               name: str = "") -> Any:
    """Read a value written by ``Frame`` from bytes or a binary file: its tag is checked under ``key`` and
    the ``name`` it was stored under before anything is unpickled, and every buffer against its digest;
    functions of the notebook come back with ``notebook``'s namespace (``None``: ``__main__``) as their
    globals."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not hasattr(source, "read"):  # a value of another format in the index (left unpickled)
        raise Damaged("the value is not one nbcache wrote")
    with source as f:
        table, pickled = _open_checked(f, key, name)
        buffers = []
        for n, digest in table:
            buf = _alloc(n)  # (writable, like an array np.load reads)
            if _read_exact(f, memoryview(buf).cast("B")) != digest:
                raise Damaged("a buffer's checksum does not match")
            buffers.append(buf)
    return _unpickle(pickled, buffers, notebook)


def signature_problem(source: bytes | Any, *, key: bytes, name: str = "") -> str | None:
    """What is wrong with a stored value's header or signature under ``key`` and ``name`` (None: nothing),
    read without its buffers and without unpickling anything: how ``nbcache info`` counts values it would
    refuse."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif not hasattr(source, "read"):
        return "the value is not one nbcache wrote"
    try:
        with source as f:
            _open_checked(f, key, name, keep=False)
    except Damaged as exc:
        return str(exc)
    return None


def _unpickle(pickled: bytes | memoryview, buffers: list, notebook: types.ModuleType | None) -> Any:
    try:
        return NotebookUnpickler(io.BytesIO(pickled), notebook=notebook, buffers=buffers).load()
    except Exception as exc:  # e.g. the class of a stored object no longer exists
        raise Damaged(f"it cannot be unpickled ({type(exc).__name__}: {exc})") from None
