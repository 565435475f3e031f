"""numpy handlers for ``hash_value``: dtype, shape and logical content, at memory speed.

Loaded by ``hash_base`` only once the user's process has imported numpy. An array's data is fed to xxh3 in
C order, a megabyte at a time, so a slice, a transpose or a memmap hashes like its contiguous copy while
only one chunk is ever copied. Float chunks are checked for NaN with ``np.maximum.reduce`` (which
propagates NaN and runs at several times memory speed on data already in cache); only a chunk that holds a
NaN is rewritten, so that every NaN bit pattern hashes alike and arrays equal up to NaN positions are equal.
A contiguous float array is read from memory once, on the calling thread: each chunk is hashed, then
checked while it is still in the core's cache (``_float_digest``), at about two thirds of raw xxh3's speed.
A big one is hashed whole at raw speed while a second thread checks it, when a core looks free for that
thread (``_core_to_spare``); with every core busy, the second thread would make it slower than one pass.

Masked arrays have their own handler, but ``numpy.ma`` is not imported for it (numpy imports it only on
first use, which costs more than hashing most values): an ndarray subclass is looked up in ``numpy.ma``
only once the user's code has imported it, since no masked array exists before.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from .hash_core import Handler, Hasher, Unhashable, Walk, enter, feed, leave, new_hasher, pack_len

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

CHUNK_BYTES = 1 << 20
# hashed, then checked for NaN while still in the core's L2 cache: of 256 KiB to 4 MiB, measured with another core
# busy, 1 MiB was best (a quarter of it paid twice as much in calls as the check saved)
FUSED_BYTES = 1 << 20
PARALLEL_BYTES = 16 << 20  # from here, a second thread may check for NaN while this one hashes
_BUFFER_KINDS = frozenset("biufcmMSUV")
_maximum = np.maximum.reduce


def _float_view(chunk: np.ndarray) -> np.ndarray:
    """The chunk as real floats: complex numbers are checked one component at a time."""
    if chunk.dtype.kind == "c":
        return chunk.view(np.dtype(f"f{chunk.dtype.itemsize // 2}").newbyteorder(chunk.dtype.byteorder))
    return chunk


def _canonical(chunk: np.ndarray) -> np.ndarray:
    """The chunk with every NaN the same bits (and the padding of 80-bit long doubles zeroed)."""
    floats = _float_view(chunk)
    if _has_nan(floats):  # only a chunk holding one is rewritten
        # (in the chunk's own byte order: ``where`` gives native floats, whose bytes a swapped chunk without NaN
        # could have, and hash alike)
        floats = np.where(np.isnan(floats), np.array(np.nan, dtype=floats.dtype), floats).astype(floats.dtype,
                                                                                               copy=False)
    if _is_long_double(floats.dtype) and np.finfo(floats.dtype).nmant == 63:
        floats = floats.copy()
        floats.view(np.uint8).reshape(floats.size, floats.dtype.itemsize)[:, 10:] = 0
    return floats


def _canonical_bools(chunk: np.ndarray) -> np.ndarray:
    """Bools whose bytes are not 0 or 1 (a view of other data) as the bools they mean."""
    raw = chunk.view(np.uint8)
    return raw if _maximum(raw) <= 1 else (raw != 0).view(np.uint8)


def _chunks(a: np.ndarray):
    """Yield C-ordered, C-contiguous pieces of ``a`` of about CHUNK_BYTES each."""
    if a.size == 0:
        return
    if a.flags.c_contiguous:
        flat = a.reshape(-1)
        step = max(1, CHUNK_BYTES // a.itemsize)
        for start in range(0, flat.size, step):
            yield flat[start:start + step]
        return
    if a.ndim == 1:
        step = max(1, CHUNK_BYTES // a.itemsize)
        for start in range(0, a.shape[0], step):
            yield np.ascontiguousarray(a[start:start + step])
        return
    row_bytes = a.itemsize * (a.size // a.shape[0])
    if row_bytes > CHUNK_BYTES:
        for row in a:
            yield from _chunks(row)
        return
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, a.shape[0], step):
        yield np.ascontiguousarray(a[start:start + step]).reshape(-1)


def _float_digest(flat: np.ndarray) -> bytes:
    """xxh3 of contiguous real floats, NaN made canonical, in one pass over memory.

    Hashing a chunk reads it from memory; the NaN check that follows finds it in cache, where it costs a
    fraction of the hash (a second thread checking the whole array from memory is as fast only while a core
    is free for it). A chunk that holds a NaN is hashed again, rewritten, from the state before it: the
    bytes fed are those of the chunk-by-chunk path, and streaming xxh3 gives the digest of the bytes
    whatever the chunks.
    """
    sub = new_hasher()
    step = max(1, FUSED_BYTES // flat.itemsize)
    half = flat.itemsize == 2
    for start in range(0, flat.size, step):
        chunk = flat[start:start + step]
        before = sub.copy()
        sub.update(chunk)
        if _has_nan(chunk) if half else (top := _maximum(chunk)) != top:  # (max propagates NaN)
            sub = before
            sub.update(_canonical(chunk))
    return sub.digest()


_executor: ThreadPoolExecutor | None = None


def _has_nan(floats: np.ndarray) -> bool:
    """Whether real floats hold a NaN: their max is NaN, at several times memory speed; but numpy's
    reductions crawl over float16 (150 MB/s), whose bits are tested instead (exponent all ones, mantissa not
    zero), in their own byte order."""
    if floats.dtype.itemsize == 2:
        bits = floats.view(np.dtype("u2").newbyteorder(floats.dtype.byteorder))
        return bool(((bits & 0x7FFF) > 0x7C00).any())
    top = _maximum(floats)
    return bool(top != top)


def _core_to_spare() -> bool:
    """Whether a core looks idle: fewer tasks running now (this one among them) than CPUs this process may
    use. A guess either way costs speed only, never a different digest."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cpus < 2:
        return False
    try:
        with open("/proc/loadavg", "rb") as f:  # "0.52 0.58 0.59 2/345 6789": 2 running
            running = int(f.read().split()[3].split(b"/")[0])
    except (OSError, ValueError, IndexError):
        return cpus >= 4  # no way to tell (not Linux): several cores, likely one free
    return running < cpus


def _parallel_digest(flat: np.ndarray) -> bytes:
    """xxh3 of the whole buffer while a second thread looks for NaN (both release the GIL); if one is
    found, the one-pass way hashes it again."""
    global _executor
    if _executor is None:
        from concurrent.futures import ThreadPoolExecutor  # (6 ms with logging: only once a big array comes)

        _executor = ThreadPoolExecutor(1, thread_name_prefix="nbcache-nan-check")
    nan_check = _executor.submit(_has_nan, flat)
    sub = new_hasher(flat)
    return sub.digest() if not nan_check.result() else _float_digest(flat)


def _buffer_digest(a: np.ndarray) -> bytes:
    """xxh3 of the array's bytes in C order, NaN made canonical (and bools 0 or 1)."""
    if type(a) is not np.ndarray:  # the data of a subclass (a matrix stays 2-d when reshaped, and reduces so)
        a = a.view(np.ndarray)
    floats = a.dtype.kind in "fc"
    if floats and a.flags.c_contiguous and a.dtype.isnative and not _is_long_double(a.dtype):
        flat = _float_view(a.reshape(-1))
        return _parallel_digest(flat) if flat.nbytes >= PARALLEL_BYTES and _core_to_spare() else _float_digest(flat)
    # (byte-swapped floats keep the megabyte chunks: a chunk holding a NaN is fed rewritten in its own order)
    canonical = _canonical if floats else _canonical_bools if a.dtype.kind == "b" else None
    sub = new_hasher()
    for chunk in _chunks(a):
        sub.update((canonical(chunk) if canonical is not None else chunk).view(np.uint8))
    return sub.digest()


def _is_long_double(dt: np.dtype) -> bool:
    """80-bit floats stored in 12 or 16 bytes, whose padding bytes are garbage."""
    return (dt.kind == "f" and dt.itemsize > 8) or (dt.kind == "c" and dt.itemsize > 16)


def feed_array_data(a: np.ndarray, h: Hasher, walk: Walk) -> None:
    """Feed the logical content of ``a`` (any layout, any dtype)."""
    dt = a.dtype
    if dt.names:
        for name in dt.names:
            h.update(b"field" + name.encode())
            try:
                feed_array_data(a[name], h, walk)
            except Unhashable as e:
                raise e.at(f"[{name!r}]") from None
        return
    if dt.kind in _BUFFER_KINDS and not dt.hasobject:
        h.update(b"data" + _buffer_digest(a))
        return
    # object arrays and dtypes whose bytes are pointers (numpy's StringDType): element by element
    flat = a.reshape(-1) if a.flags.c_contiguous else a.ravel()
    if dt.kind == "O" and _feed_strings(flat, h):
        return
    if dt.kind == "T" and _feed_strings(flat.astype(object), h):  # (numpy's StringDType: its strings, joined)
        return
    i = 0
    try:
        for i, item in enumerate(flat.tolist() if dt.kind != "O" else flat):
            feed(item, h, walk)
    except Unhashable as e:
        raise e.at(f"[{np.unravel_index(i, a.shape) if a.ndim > 1 else i}]") from None


def _feed_strings(flat: np.ndarray, h: Hasher) -> bool:
    """Fast path for an object array holding only ``str``: joined, not fed one call per element. Returns
    False (nothing fed) when the path does not apply."""
    pieces = joined_strings(flat)
    if pieces is None:
        return False
    feed_joined(pieces, flat.size, h)
    return True


_JOIN_ITEMS = 1 << 16  # strings joined at a time


def joined_strings(flat: np.ndarray) -> list[bytes] | None:
    """The items of a 1-d object array, if all are ``str``, UTF-8 encoded and separated by NUL, in pieces
    (each of whole items: their concatenation with a NUL between two is the bytes that are hashed). That is
    unambiguous when the bytes hold exactly the separators, which is checked: None if they do not, or an
    item is not a ``str``. Joined a piece at a time, each piece's memory is reused for the next (fresh
    memory for the whole costs more in page faults than the joining)."""
    pieces = []
    for start in range(0, flat.size, _JOIN_ITEMS):
        chunk = flat[start:start + _JOIN_ITEMS]
        try:
            joined = "\0".join(chunk.tolist())  # (a list joins faster than the array)
        except TypeError:
            return None
        data = joined.encode("utf-8", "surrogatepass")  # (no character but NUL encodes to a zero byte)
        if _zero_bytes(data) != chunk.size - 1:
            return None
        pieces.append(data)
    return pieces


def feed_joined(pieces: list[bytes], count: int, h: Hasher) -> None:
    """Feed ``count`` strings joined by ``joined_strings``."""
    h.update(b"strs" + pack_len(count) + pack_len(sum(map(len, pieces)) + max(0, len(pieces) - 1)))
    for i, data in enumerate(pieces):
        if i:
            h.update(b"\0")
        h.update(data)


def _zero_bytes(data: bytes) -> int:
    """How many bytes of ``data`` are zero."""
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 0))


def _dtype_tag(dt: np.dtype) -> bytes:
    if dt.subdtype is not None:  # ("f8", (2,)): its str is only its size ("|V16")
        base, shape = dt.subdtype
        return _dtype_tag(base) + b"x" + repr(shape).encode()
    return (str(dt.descr) if dt.names else dt.str).encode()


def feed_ndarray(a: np.ndarray, h: Hasher, walk: Walk) -> None:
    tp = type(a)
    if tp is not np.ndarray and tp is not np.memmap:  # a memmap is its data; other subclasses add meaning
        ma = sys.modules.get("numpy.ma")  # (a masked array can exist only once numpy.ma is imported)
        if ma is not None and isinstance(a, ma.MaskedArray):
            feed_masked(a, h, walk)
            return
        h.update(b"nd")
        feed(tp, h, walk)
    else:
        h.update(b"nd")
    h.update(_dtype_tag(a.dtype) + b"|" + repr(a.shape).encode())
    if not a.dtype.hasobject:
        feed_array_data(a, h, walk)
    elif enter(a, h, walk):  # an object array can hold itself
        try:
            feed_array_data(a, h, walk)
        finally:
            leave(a, walk)


def feed_masked(a: np.ma.MaskedArray, h: Hasher, walk: Walk) -> None:
    """Data and mask; what hides under the mask does not count, where a neutral value can stand in."""
    ma = sys.modules["numpy.ma"]
    h.update(b"ma")
    data, mask = ma.getdata(a), ma.getmaskarray(a)
    if data.dtype.kind in "biufcmM" and mask.any():
        data = np.where(mask, np.zeros((), dtype=data.dtype), data)
    feed_ndarray(data, h, walk)
    feed_ndarray(mask, h, walk)
    feed(np.asarray(a.fill_value).tolist(), h, walk)  # what .filled() puts under the mask


def feed_scalar(x: np.generic, h: Hasher, walk: Walk) -> None:
    arr = np.asarray(x)
    h.update(b"ns" + _dtype_tag(arr.dtype) + b"|")
    feed_array_data(arr.reshape(1), h, walk)


def feed_dtype(dt: np.dtype, h: Hasher, walk: Walk) -> None:
    h.update(b"dt" + _dtype_tag(dt))


HANDLERS: dict[type, Handler] = {  # masked arrays: through feed_ndarray, which does not import numpy.ma
    np.ndarray: feed_ndarray,
    np.generic: feed_scalar,
    np.dtype: feed_dtype,
}
