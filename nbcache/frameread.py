"""Reading a stored value back: its signature checked before anything is unpickled, its buffers read into
fresh memory or mapped from its file.

- **Small values** (bytes from the index, or buffers under ``MAP_MIN`` in all) are read eagerly: every
  buffer is read into fresh memory and checked against its digest before the value is returned.
- **Big values in a file** are mapped copy-on-write (``mmap.ACCESS_COPY``): the buffers of the arrays and
  DataFrames that come back are the file's pages, read by the system when first touched, so a hit costs the
  same whatever the size; writing to such an array changes this process's copy of the page, never the file.
  The head, rows and pickle are read and their signature checked first, as for any value: nothing that can
  run code is trusted unchecked, and atomic publish means no torn file is ever mapped. The buffers' own
  digests are checked by ``Unchecked.check`` (reading the file again, not the mapping the caller may have
  written to): before the value is returned (``lazy=False``), or later, by the ``Cache``'s background pass.
"""

from __future__ import annotations

import io
import mmap
import os
import sys
import types
import weakref
from typing import Any, Callable, Iterator

import xxhash

from .frameformat import ALIGN, CHECK_CHUNK, HEAD, READ_CHUNK, ROW, Damaged, check_tag, checksum_thread, parse_head
from .pickler import NotebookUnpickler

__all__ = ["MAP_MIN", "Unchecked", "load_frame", "read_frame", "signature_problem", "value_of_parts"]

MAP_MIN = 1 << 20  # buffers of a value in a file that, together, are mapped rather than read
_SMALL_PICKLE = 64 << 20  # a longer pickle is proven in a first pass before memory is taken for it


class Unchecked:
    """The buffers of a mapped value whose digests are not checked yet: the file (a descriptor of its own,
    so the check reads what is on disk whatever happened to the mapping) and, per buffer, its offset,
    length and digest. ``check`` reads them once and closes the descriptor."""

    __slots__ = ("fd", "name", "rows", "identity")  # (a plain class: a dataclass costs `import nbcache` 0.7 ms)

    def __init__(self, fd: int, name: str, rows: tuple[tuple[int, int, bytes], ...],
                 identity: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.fd, self.name, self.rows = fd, name, rows
        self.identity = identity  # (device, inode, ctime): which file it was, as last changed

    def check(self) -> str | None:
        """What is wrong with the buffers (None: every digest matches)."""
        try:
            for offset, n, digest in self.rows:
                h = xxhash.xxh3_128()
                done = 0
                while done < n:
                    piece = os.pread(self.fd, min(CHECK_CHUNK, n - done), offset + done)
                    if not piece:
                        return "the file is truncated"
                    h.update(piece)
                    done += len(piece)
                if h.digest() != digest:
                    return "a buffer's checksum does not match"
            return None
        except OSError as exc:
            return f"it could not be read again ({exc})"
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:  # (a check that never ran must not leak the descriptor)
        self.close()


def load_frame(source: bytes | Any, notebook: types.ModuleType | None = None, *, key: bytes,
               name: str = "") -> Any:
    """Read a value written by ``Frame`` from bytes or a binary file, everything checked before it is
    returned: its tag under ``key`` and the ``name`` it was stored under before anything is unpickled, and
    every buffer against its digest; functions of the notebook come back with ``notebook``'s namespace
    (``None``: ``__main__``) as their globals."""
    return read_frame(source, notebook, key=key, name=name, lazy=False)[0]


def read_frame(source: bytes | memoryview | Any, notebook: types.ModuleType | None = None, *, key: bytes,
               name: str = "", lazy: bool | Callable[[], bool] = True,
               keep: Callable[[bytes, tuple[bytes, ...]], None] | None = None) -> tuple[Any, Unchecked | None]:
    """``load_frame``, but a big value in a file is mapped, and (``lazy``, or what ``lazy()`` says once a
    value is mapped) its buffers' digests are left to check: (the value, what is left to check, or None).
    ``keep(pickle, buffers)`` is given a copy of a value's parts read into memory once it is checked and
    unpickled (never those of a value that fails either)."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, memoryview):
        source = _InMemory(source)
    elif not hasattr(source, "read"):  # a value of another format in the index (left unpickled)
        raise Damaged("the value is not one nbcache wrote")
    with source as f:
        table, offsets, pickled = _open_checked(f, key, name)
        buffers, unchecked = None, None
        if (sum(n for n, _ in table) >= MAP_MIN and all(o % ALIGN == 0 for o in offsets) and _is_file(f)
                and _MAPPINGS.room()):  # (an earlier format's packed buffers are read: aligned, as before)
            try:
                buffers, unchecked = _map(f, table, offsets, name)
            except OSError:  # a file system that cannot map, no address space or descriptor left: read it
                buffers = None
        parts = None
        if buffers is None:
            buffers = _read_buffers(f, table, offsets)
            if keep is not None:  # (copied before unpickling: an object may take its buffer as its own)
                parts = (bytes(pickled), tuple(bytes(memoryview(b).cast("B")) for b in buffers))
        elif not (lazy() if callable(lazy) else lazy):
            problem = unchecked.check()
            if problem:
                raise Damaged(problem)
            unchecked = None
    value = _unpickle(pickled, buffers, notebook)
    if parts is not None:
        keep(*parts)
    return value, unchecked


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


class _InMemory:
    """A value's bytes in memory, read as a file without a copy of them (``io.BytesIO`` copies all but
    ``bytes``): a value a team-cache hit carries is a piece of its entry's object."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._at = 0

    def __enter__(self) -> _InMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self._view.release()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: len(self._view)}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else min(len(self._view), self._at + n)
        data = bytes(self._view[self._at:end])
        self._at = max(self._at, end)
        return data

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        n = max(0, min(len(target), len(self._view) - self._at))
        target[:n] = self._view[self._at:self._at + n]
        self._at += n
        return n


def _is_file(f: Any) -> bool:
    try:
        f.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    return True


class _Mappings:
    """How many mappings of values are alive. Python's ``mmap`` keeps a descriptor of its file open for as
    long as the mapping lives, so past a quarter of the process's limit of open files values are read into
    memory instead: mapped values must never make the user's own ``open`` fail."""

    def __init__(self) -> None:
        self.alive = 0
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            soft = 1024
        self.most = max(16, (soft if 0 < soft < 1 << 20 else 1 << 20) // 4)

    def room(self) -> bool:
        return self.alive < self.most

    def track(self, mapping: mmap.mmap) -> None:
        self.alive += 1
        weakref.finalize(mapping, self._gone)

    def _gone(self) -> None:
        self.alive -= 1


_MAPPINGS = _Mappings()


def _map(f: Any, table: list[tuple[int, bytes]], offsets: list[int],
         name: str) -> tuple[list[memoryview], Unchecked]:
    """The buffers as views of a private, copy-on-write mapping of the file, and what is left to check."""
    fd = f.fileno()
    mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    _MAPPINGS.track(mapping)
    view = memoryview(mapping)
    buffers = [view[offset:offset + n] for (n, _), offset in zip(table, offsets)]
    st = os.fstat(fd)
    rows = tuple((offset, n, digest) for (n, digest), offset in zip(table, offsets))
    return buffers, Unchecked(os.dup(fd), name, rows, (st.st_dev, st.st_ino, st.st_ctime_ns))


def _read_buffers(f: Any, table: list[tuple[int, bytes]], offsets: list[int]) -> list[Any]:
    buffers = []
    for (n, digest), offset in zip(table, offsets):
        f.seek(offset)
        buf = _alloc(n)  # (writable, like an array np.load reads)
        if _read_exact(f, memoryview(buf).cast("B")) != digest:
            raise Damaged("a buffer's checksum does not match")
        buffers.append(buf)
    return buffers


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
        pending = checksum_thread().submit(h.update, piece)
    if pending is not None:
        pending.result()
    return h.digest()


def _pieces_of(f: Any, n: int) -> Iterator[bytes]:
    """The next ``n`` bytes of ``f`` in pieces, none kept: a header's length is checked before it is
    believed enough to allocate that much."""
    while n > 0:
        piece = f.read(min(n, READ_CHUNK))
        if not piece:
            raise Damaged("the file is truncated")
        n -= len(piece)
        yield piece


def _open_checked(f: Any, key: bytes, name: str, *,
                  keep: bool = True) -> tuple[list[tuple[int, bytes]], list[int], bytes]:
    """Check the value ``f`` reads from: its header, its size and its signature; return its buffer rows,
    their offsets and (``keep``) its pickle. A pickle longer than ``_SMALL_PICKLE`` is proven in pieces
    before memory is taken for it (a planted sparse file may claim any length), then read and proven again,
    so what is unpickled is what was proven."""
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    magic, signature, pickle_len, nbuf = parse_head(f.read(HEAD.size), size)
    rows = f.read(ROW.size * nbuf)
    if len(rows) != ROW.size * nbuf:
        raise Damaged("the file is truncated")
    start = f.tell()
    if pickle_len > _SMALL_PICKLE:
        table, offsets = check_tag(key, name, magic, signature, pickle_len, nbuf, rows,
                                   _pieces_of(f, pickle_len), size)
        if not keep:
            return table, offsets, b""
        f.seek(start)
    pickled = f.read(pickle_len)
    if len(pickled) != pickle_len:
        raise Damaged("the file is truncated")
    table, offsets = check_tag(key, name, magic, signature, pickle_len, nbuf, rows, [pickled], size)
    return table, offsets, pickled


def value_of_parts(pickled: bytes, buffers: tuple[bytes, ...], notebook: types.ModuleType | None) -> Any:
    """A value made anew from parts ``read_frame`` checked and gave ``keep``: its buffers copied, writable."""
    copies = []
    for buf in buffers:
        copy = _alloc(len(buf))
        memoryview(copy).cast("B")[:] = buf
        copies.append(copy)
    return _unpickle(pickled, copies, notebook)


def _unpickle(pickled: bytes | memoryview, buffers: list, notebook: types.ModuleType | None) -> Any:
    try:
        return NotebookUnpickler(io.BytesIO(pickled), notebook=notebook, buffers=buffers).load()
    except Exception as exc:  # e.g. the class of a stored object no longer exists
        raise Damaged(f"it cannot be unpickled ({type(exc).__name__}: {exc})") from None
