"""The layout of one stored value on disk, and its signature: what ``frame.py`` writes and ``frameread.py``
reads and checks.

A value is a head (magic, tag, pickle length, buffer count), a row per raw buffer (its length and xxh3-128
digest), the pickle, then the buffers. In the current format (``NBC3``) each buffer starts at a multiple of
``ALIGN`` bytes, so a buffer mapped from the file is as aligned as numpy's own allocations; values of the
previous format (``NBC2``, buffers packed) still read.

The tag is an HMAC-SHA256, under the cache's key, of the value's name (the address it is stored under), the
head's fields, the rows and the pickle: all that could run code when loaded, and the digests of the raw
buffers, so a reader can trust the pickle without reading the buffers first.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

__all__ = ["ALIGN", "CHECK_CHUNK", "HEAD", "MAGIC", "NOT_SIGNED", "READ_CHUNK", "ROW", "Damaged", "NotSigned",
           "Unpicklable", "buffer_offsets", "check_tag", "parse_head", "signer", "tag"]

MAGIC = b"NBC3"  # buffers aligned to ALIGN
_PACKED = b"NBC2"  # an earlier nbcache's: the same, buffers packed
_UNSIGNED = b"NBC1"  # unsigned values of an earlier nbcache: never unpickled
HEAD = struct.Struct("<4s32sQI")  # magic, tag, pickle length, buffer count
ROW = struct.Struct("<Q16s")  # per buffer: its length and its xxh3-128 digest
ALIGN = 64  # a cache line, and numpy's own alignment of big arrays
READ_CHUNK = 8 << 20  # read and checksum big buffers piece by piece, while the piece is in cache
CHECK_CHUNK = 1 << 20  # a check reads a megabyte at a time: 8 MB reads, each into new memory, took 3x as long


class Damaged(Exception):
    """A stored value or entry is unreadable: truncated, altered on disk, not signed with this cache's key,
    or no longer unpicklable."""


class NotSigned(Damaged):
    """A stored value or entry whose signature does not match this cache's key: written with another key
    (another user's, a team's), or altered."""


class Unpicklable(Exception):
    """A value cannot be serialized. The message names its type; ``reason`` is pickle's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


def buffer_offsets(magic: bytes, pickle_len: int, sizes: Sequence[int]) -> tuple[list[int], int]:
    """Where each buffer of a value starts in its file, and where the value ends."""
    position = HEAD.size + ROW.size * len(sizes) + pickle_len
    if not sizes:
        return [], position
    align = ALIGN if magic == MAGIC else 1
    offsets = []
    for n in sizes:
        position = -(-position // align) * align
        offsets.append(position)
        position += n
    return offsets, position


NOT_SIGNED = ("its signature does not match this cache's key and its name (another user wrote it, or it was"
              " altered or moved)")
_ONE_SHOT = 1 << 16  # a pickle up to this many bytes is signed in one call (``tag``)


def tag(key: bytes, magic: bytes, name: str, pickle_len: int, nbuf: int, rows: bytes | memoryview,
        pickled: Iterable[bytes | memoryview]) -> bytes:
    """The HMAC of a value: its name (so that a value copied under another name does not verify), its
    header's fields, its buffer rows and its pickle (given in pieces)."""
    if pickle_len <= _ONE_SHOT:  # (a small value: one call, a few microseconds less on every hit)
        return hmac.digest(key, b"".join([_signed_head(magic, name, pickle_len, nbuf), rows, *pickled]), "sha256")
    mac = signer(key, magic, name, pickle_len, nbuf)
    mac.update(rows)
    for piece in pickled:
        mac.update(piece)
    return mac.digest()


def signer(key: bytes, magic: bytes, name: str, pickle_len: int, nbuf: int) -> hmac.HMAC:
    """The HMAC of ``tag`` begun: the rows, then the pickle, are to be given to its ``update``."""
    return hmac.new(key, _signed_head(magic, name, pickle_len, nbuf), hashlib.sha256)


def _signed_head(magic: bytes, name: str, pickle_len: int, nbuf: int) -> bytes:
    label = name.encode("utf-8", "surrogatepass")
    return magic + struct.pack("<Q", len(label)) + label + struct.pack("<QI", pickle_len, nbuf)


def parse_head(head: bytes | memoryview, size: int) -> tuple[bytes, bytes, int, int]:
    """(magic, tag, pickle length, buffer count) of a value of ``size`` bytes; every field is checked
    against the size before anything is allocated."""
    if size < HEAD.size or len(head) < HEAD.size:
        raise Damaged("it is truncated")
    magic, signature, pickle_len, nbuf = HEAD.unpack_from(head)
    if magic == _UNSIGNED:
        raise Damaged("it was written by an earlier nbcache, without a signature")
    if magic not in (MAGIC, _PACKED):
        raise Damaged("it is not an nbcache value")
    if nbuf > (size - HEAD.size) // ROW.size or pickle_len > size - HEAD.size - ROW.size * nbuf:
        raise Damaged("its header does not fit its size")
    return magic, signature, pickle_len, nbuf


def check_tag(key: bytes, name: str, magic: bytes, signature: bytes, pickle_len: int, nbuf: int,
              rows: bytes | memoryview, pickled: Iterable[bytes | memoryview],
              size: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """The (length, digest) rows and the buffers' offsets, once the tag proves the name, head, rows and
    pickle were written with ``key`` and the layout they describe fills exactly ``size`` bytes."""
    if not hmac.compare_digest(signature, tag(key, magic, name, pickle_len, nbuf, rows, pickled)):
        raise NotSigned(NOT_SIGNED)
    table = list(ROW.iter_unpack(rows))
    offsets, end = buffer_offsets(magic, pickle_len, [n for n, _ in table])
    if end != size:
        raise Damaged("its size does not match its header")
    return table, offsets


@functools.cache
def checksum_thread() -> ThreadPoolExecutor:
    """One worker thread that checksums big buffers while the caller's thread does their I/O."""
    from concurrent.futures import ThreadPoolExecutor  # (only big values need it: not on import's path)

    return ThreadPoolExecutor(1, thread_name_prefix="nbcache-checksum")
