"""One stored value: a small pickle plus the raw buffers it refers to, signed (``Frame``), and how it is
read back (``load_frame``, from ``frameread.py``).

Values are serialized with ``pickler.NotebookPickler`` (cloudpickle), protocol 5, with out-of-band
buffers: a numpy array or a pandas block is not copied into the pickle but written as its own byte range,
straight from the array's memory, aligned (``frameformat.py``), as ``np.save`` writes it; a big one is
mapped back from the file, a small one read into fresh memory (``frameread.py``).

Every value carries an HMAC-SHA256 tag under the cache's key (``keys.py``) over its header, the digests of
its buffers and its pickle. A value is never unpickled before its tag is checked: one written by another
user, planted or altered raises ``Damaged``, as does one whose header does not fit its size or whose buffer
fails its digest, and the caller recomputes it.
"""

from __future__ import annotations

import io
import os
import struct
import types
from typing import Any, Iterator, Mapping

import xxhash

from .frameformat import HEAD, MAGIC, READ_CHUNK, ROW, Damaged, Unpicklable, buffer_offsets, checksum_thread, tag
from .frameread import load_frame, read_frame, signature_problem
from .pickler import NotebookPickler, is_plain

__all__ = ["Frame", "load_frame", "read_frame", "signature_problem", "Damaged", "Unpicklable"]

NAMED_BUFFER = 64 << 10  # a buffer up to this size counts in a value's name by its content, not only its length


class Frame:
    """A serialized value, laid out as ``frameformat.py`` says: head, buffer rows, pickle, aligned buffers.

    ``notebook`` is the module the notebook's cells run in (``None``: ``__main__``); ``by_value`` the ids
    of the notebook's classes and functions to store by value rather than by name; ``live`` the ids of
    objects stored as references to the notebook variables they are the values of (``pickler.py``); ``key``
    signs the frame when it is written.
    """

    __slots__ = ("pickled", "buffers", "nbytes", "key", "name", "_digests", "_offsets")

    def __init__(self, value: Any, *, notebook: types.ModuleType | None = None,
                 by_value: set[int] = frozenset(), key: bytes | None = None, live: Mapping[int, str] | None = None,
                 ) -> None:
        buffers: list = []
        out = io.BytesIO()
        try:
            NotebookPickler(out, notebook=notebook, by_value=by_value, live=live, plain=is_plain(value),
                            protocol=5, buffer_callback=buffers.append).dump(value)
        except Exception as exc:
            raise Unpicklable(f"{type(value).__module__}.{type(value).__qualname__}: {exc}", str(exc)) from None
        self.pickled = out.getvalue()
        self.buffers = [b.raw() for b in buffers]
        self._offsets, self.nbytes = buffer_offsets(MAGIC, len(self.pickled), [b.nbytes for b in self.buffers])
        self.key = key
        self.name = ""  # the address it is stored under, which the tag covers: set before it is written
        self._digests: list[bytes] | None = None

    def _rows(self, digests: list[bytes]) -> bytes:
        return b"".join(ROW.pack(b.nbytes, d) for b, d in zip(self.buffers, digests))

    def _head(self, rows: bytes) -> bytes:
        if self.key is None:
            raise ValueError("a Frame is written with the key that signs it: Frame(value, key=...)")
        signature = tag(self.key, MAGIC, self.name, len(self.pickled), len(self.buffers), rows, [self.pickled])
        return HEAD.pack(MAGIC, signature, len(self.pickled), len(self.buffers)) + rows

    def _pieces(self, buf: memoryview) -> Iterator[memoryview]:
        for start in range(0, buf.nbytes, READ_CHUNK):
            yield buf[start:start + READ_CHUNK]

    def _padding(self, i: int) -> bytes:
        """The zeros between what precedes buffer ``i`` and its aligned start."""
        if i:
            end = self._offsets[i - 1] + self.buffers[i - 1].nbytes
        else:
            end = HEAD.size + ROW.size * len(self.buffers) + len(self.pickled)
        return bytes(self._offsets[i] - end)

    def _payload(self) -> Iterator[bytes | memoryview]:
        """What follows the head and rows, big buffers cut into pieces."""
        yield self.pickled
        for i, buf in enumerate(self.buffers):
            yield self._padding(i)
            yield from self._pieces(buf)

    def digests(self) -> list[bytes]:
        """The xxh3-128 digest of each raw buffer."""
        if self._digests is None:
            self._digests = [xxhash.xxh3_128_digest(buf) for buf in self.buffers]
        return self._digests

    def identity(self) -> str:
        """A short digest of the pickle and of the small buffers (up to ``NAMED_BUFFER`` bytes; of a bigger
        one, its length: the value's hash covers its content): two values that hash alike but pickle
        differently, or hold other small buffers (a random generator's key array, in a cell's payload beside
        equal outputs), get different names."""
        h = xxhash.xxh3_64()
        for buf in self.buffers:
            h.update(struct.pack("<Q", buf.nbytes))
            if buf.nbytes <= NAMED_BUFFER:
                h.update(buf)
        h.update(self.pickled)
        return h.hexdigest()

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
        f.write(bytes(HEAD.size + ROW.size * len(self.buffers)))
        f.write(self.pickled)
        digests = []
        for i, buf in enumerate(self.buffers):
            f.write(self._padding(i))
            h = xxhash.xxh3_128()
            for piece in self._pieces(buf):
                pending = checksum_thread().submit(h.update, piece) if len(piece) >= READ_CHUNK else None
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
