"""Content addresses that values restored from the cache carry to the next step, so a chain of cached steps
does not hash its big intermediates again.

A numpy array served by a hit is mapped from its file (``frameread.py``), and its content address (its
``hash_value``) is in the entry that served it. When the same array is passed to a step, its address is
reused instead of hashing every byte again, if this is proven to be the same content:

- it is the very object restored (by identity, held weakly), with the same data pointer, shape, strides
  and dtype (an in-place reshape or a ``.dtype =`` changes those);
- none of its pages was written since it was mapped: a write to a copy-on-write page makes it a private,
  anonymous page, which Linux tells in ``/proc/self/pagemap``. Where that cannot be read, or does not
  tell a page written from one read (``pagemap_tells_writes``, asked once), nothing is carried and the
  array is hashed as usual.

The buffers of a mapped value are checked against their digests in the background (``verifier.py``). If a
value turns out damaged after it was served, the results computed from its carried address in this process
are removed with it (``derived_from``), so that none stays filed under the address of the intact value.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import weakref
from typing import Any, Callable

from .errors import warn
from .forksafe import ForkSafeLock

__all__ = ["Carried", "Carry"]

_PAGEMAP = "/proc/self/pagemap"


class Carried:
    """What a restored array was when it was served: its address, and what proves it unchanged."""

    __slots__ = ("address", "identity", "ref", "layout", "region", "derived")  # (a plain class: see Unchecked)

    def __init__(self, address: str, identity: tuple[int, int, int], ref: weakref.ref, layout: tuple,
                 region: tuple[int, int]) -> None:
        self.address = address
        self.identity = identity  # the file it is mapped from (device, inode, ctime)
        self.ref = ref
        self.layout = layout  # (data pointer, shape, strides, dtype)
        self.region = region  # (start, length) of its memory
        self.derived: list[tuple[Any, str, tuple[str, ...]]] = []


class Carry:
    """The restored arrays of one cache, by ``id``; ``address_of`` proves one unchanged, or says None."""

    def __init__(self) -> None:
        self._by_id: dict[int, Carried] = {}
        self._by_file: dict[tuple[int, int, int], list[tuple[Any, str, tuple[str, ...]]]] = {}
        self._damaged: set[tuple[int, int, int]] = set()  # files found damaged: nothing carried from them
        self._lock = ForkSafeLock()
        self.enabled: bool | None = None  # (whether pagemap tells writes: found out when an address is first asked)

    def note(self, value: Any, address: str, identity: tuple[int, int, int]) -> None:
        """``value`` was just restored, mapped from the file ``identity``, with content address ``address``."""
        np = sys.modules.get("numpy")
        if np is None or type(value) is not np.ndarray or not _is_mapped(value) or self.enabled is False:
            return
        key = id(value)
        ref = weakref.ref(value, lambda _: self._by_id.pop(key, None))
        layout = _layout(value)
        self._by_id[key] = Carried(address, identity, ref, layout, (layout[0], value.nbytes))

    def address_of(self, value: Any) -> Carried | None:
        """The carried address of ``value`` if it is a restored array, provably unchanged since."""
        if not self._by_id:
            return None
        carried = self._by_id.get(id(value))
        if (carried is None or carried.ref() is not value or _layout(value) != carried.layout
                or carried.identity in self._damaged):
            return None
        if self.enabled is None:
            self.enabled = pagemap_tells_writes()
        return carried if self.enabled and _unwritten(*carried.region) else None

    def derived(self, identities: set[tuple[int, int, int]], store: Any, key: str, blobs: tuple[str, ...]) -> None:
        """The result stored under ``key`` was computed from values carried from the files ``identities``
        (if one was found damaged meanwhile, the result is removed at once)."""
        with self._lock:
            damaged = bool(identities & self._damaged)
            for identity in identities - self._damaged:
                self._by_file.setdefault(identity, []).append((store, key, blobs))
        if damaged:
            _remove([(store, key, blobs)])

    def with_derived(self, identity: tuple[int, int, int], on_damage: Callable[[str], None]) -> Callable[[str], None]:
        """``on_damage`` of a value mapped from the file ``identity``, which also removes the results computed
        from addresses carried from it."""

        def damaged(problem: str) -> None:
            with self._lock:
                self._damaged.add(identity)
                derived = self._by_file.pop(identity, [])
            try:
                on_damage(problem)
            finally:
                _remove(derived)

        return damaged


def _remove(derived: list[tuple[Any, str, tuple[str, ...]]]) -> None:
    for store, key, _ in derived:  # (its values may be others' too: gc collects those no entry names)
        with contextlib.suppress(Exception):
            store.delete(key, ())
    if derived:
        warn(f"nbcache: {len(derived)} cached result(s) computed from that value were removed too")


def _layout(a: Any) -> tuple:
    """Where ``a``'s memory starts, and how it is laid out there. (The address from the array interface: a
    process's first ``a.ctypes`` costs 70 us, a first hit's share.)"""
    return (a.__array_interface__["data"][0], a.shape, a.strides, a.dtype)  # (dtypes compare by fields too)


def _is_mapped(a: Any) -> bool:
    """Whether ``a``'s memory belongs to an ``mmap`` (what a mapped value's arrays are views of)."""
    base = a
    while getattr(base, "base", None) is not None:
        base = base.base
    return isinstance(getattr(base, "obj", None), mmap.mmap)


def _unwritten(start: int, length: int) -> bool:
    """Whether no page of ``[start, start + length)`` was written by this process: each is unmapped yet, or
    maps its file's page (a written copy-on-write page is anonymous; a swapped-out one can only be that)."""
    if length == 0:
        return True
    page = mmap.PAGESIZE
    first, last = start // page, (start + length - 1) // page
    try:
        fd = os.open(_PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(fd, (last - first + 1) * 8, first * 8)
        finally:
            os.close(fd)
    except OSError:
        return False
    if len(data) != (last - first + 1) * 8:
        return False
    return _WRITTEN not in data[_TOP::8].translate(_FLAGS)  # (each entry's top byte, in C loops)


def pagemap_tells_writes() -> bool:
    """Whether ``/proc/self/pagemap`` tells what ``_unwritten`` reads in it (a sandbox may give it with every
    entry zero, which would make every page look unwritten): a page of a private mapping of a file, read,
    must say present and the file's; the same page, written, present and not a file's. Some 50 us, asked
    once per cache, when a restored array is first passed on."""
    try:
        with open(mmap.__file__ if hasattr(mmap, "__file__") else sys.executable, "rb") as f:  # (any file)
            page = mmap.mmap(f.fileno(), mmap.PAGESIZE, flags=mmap.MAP_PRIVATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            np = sys.modules["numpy"]
            address = np.frombuffer(page, dtype=np.uint8).ctypes.data
            fd = os.open(_PAGEMAP, os.O_RDONLY | os.O_CLOEXEC)
            try:
                page[0]  # (read: present, the file's)
                read = _top_byte(fd, address) & 0xE0 == 0xA0
                page[0] = 1  # (written: a private copy, present, no file's)
                written = _top_byte(fd, address) & 0xE0 == 0x80
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(BufferError):
                page.close()
    except (OSError, ValueError, IndexError, KeyError):
        return False
    return read and written


def _top_byte(fd: int, address: int) -> int:
    return os.pread(fd, 8, address // mmap.PAGESIZE * 8)[_TOP]


# A pagemap entry (a native 64-bit integer) has its flags in its top byte: present (bit 7), swapped (6),
# file page or shared anonymous (5). A page is unwritten if it is not present, or present and the file's.
_TOP = 7 if sys.byteorder == "little" else 0
_WRITTEN = b"\x01"
_FLAGS = bytes(0 if (flags & 0xE0) in (0x00, 0x20, 0xA0) else 1 for flags in range(256))
