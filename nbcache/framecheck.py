"""A stored value checked as its bytes pass once, front to back, without unpickling anything: its signature,
then every buffer against its digest (``StreamCheck``). ``nbcache verify`` reads each value so
(``verify_frame``), and a value copied from a team cache is checked so as it is written into the local store
(``Checking``): nothing is read twice, and a value is in the store only once it has been found whole and right.
"""

from __future__ import annotations

import hmac
import os
import sys
from typing import Any

import xxhash

from .frameformat import CHECK_CHUNK, HEAD, NOT_SIGNED, ROW, Damaged, NotSigned, buffer_offsets, parse_head, signer

__all__ = ["Checking", "StreamCheck", "verify_frame"]


def verify_frame(source: bytes | Any, *, key: bytes, name: str = "") -> Damaged | None:
    """What is wrong with a stored value (None: nothing): its signature (``NotSigned``: not with ``key``),
    and every buffer read and checked against its digest, without unpickling anything: ``nbcache verify``.
    A file is read once, front to back, a megabyte at a time (``StreamCheck``)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        check = StreamCheck(key, name, len(source))
        return check.problem(source)
    if not hasattr(source, "read"):
        return Damaged("the value is not one nbcache wrote")
    try:
        with source as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            check = StreamCheck(key, name, size)
            piece = bytearray(CHECK_CHUNK)
            while got := f.readinto(piece):
                check.feed(memoryview(piece)[:got])
            return check.problem()
    except Damaged as exc:
        return exc


class StreamCheck:
    """A value checked as its bytes pass once, front to back, as ``verify_frame`` checks it: its signature
    under ``key`` and ``name`` as soon as its pickle has passed (``NotSigned``), then every buffer against its
    digest, and its length against its head (and ``size``, if known). A value copied from a team cache is
    checked so as it is written (``Checking``): no second read, and it is never in the store unchecked.

    ``feed`` raises ``Damaged`` as soon as what has passed is wrong; ``problem`` says, at the end, what is
    wrong with the whole (None: nothing). Once wrong, it stays so. Nothing the rows say is believed before the
    signature proves them: until then only their bytes are kept, as a full read keeps them."""

    def __init__(self, key: bytes, name: str, size: int | None = None) -> None:
        self._key, self._name, self._size = key, name, size
        self._front = bytearray()  # the head and the rows, until they have all come
        self._head: tuple[bytes, bytes, int, int] | None = None
        self._at = 0  # bytes fed
        self._spans: list[tuple[int, int, Any]] = []  # (start, end, hasher): the pickle's, then each buffer's
        self._digests: list[bytes] = []  # each buffer's, once the signature proves the rows
        self._next = 0  # the first span not yet passed whole
        self._end: int | None = None  # where the value ends, once the signature proves the rows
        self._error: Damaged | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._feed(memoryview(data).cast("B"))
        except Damaged as exc:
            self._error = exc
            raise

    def problem(self, data: bytes | bytearray | memoryview = b"") -> Damaged | None:
        """What is wrong with the value whose bytes were fed (and ``data``, the rest of them); None: nothing."""
        try:
            self.feed(data)
            if self._end is None or self._at < self._end:
                raise Damaged("the file is truncated")
            while self._next < len(self._spans):  # (empty buffers at the end)
                self._passed()
        except Damaged as exc:
            self._error = self._error or exc
            return self._error
        return None

    def _feed(self, view: memoryview) -> None:
        while len(view):
            if not self._spans:  # still the head, or the rows
                want = (HEAD.size if self._head is None else HEAD.size + ROW.size * self._head[3]) - len(self._front)
                self._front += view[:want]
                self._at += min(want, len(view))
                view = view[want:]
                if self._head is None and len(self._front) == HEAD.size:
                    self._head = parse_head(self._front, sys.maxsize if self._size is None else self._size)
                if self._head is not None and len(self._front) == HEAD.size + ROW.size * self._head[3]:
                    self._begin()
                continue
            start, self._at = self._at, self._at + len(view)
            while self._next < len(self._spans):
                begins, ends, h = self._spans[self._next]
                if begins >= self._at:
                    break
                h.update(view[max(begins - start, 0):min(ends, self._at) - start])
                if ends > self._at:
                    break
                self._passed()
            if self._end is not None and self._at > self._end:
                raise Damaged("its size does not match its header")
            return

    def _begin(self) -> None:
        """The rows have come: the signature begun over them, and the pickle to come."""
        magic, _, pickle_len, nbuf = self._head
        mac = signer(self._key, magic, self._name, pickle_len, nbuf)
        mac.update(memoryview(self._front)[HEAD.size:])
        self._spans = [(len(self._front), len(self._front) + pickle_len, mac)]
        while self._next < len(self._spans) and self._spans[self._next][1] <= self._at:  # (an empty pickle)
            self._passed()

    def _passed(self) -> None:
        """The span ``_next`` has passed whole: the signature checked (the pickle), then where each buffer
        is; or a buffer's digest."""
        _, _, h = self._spans[self._next]
        if self._next == 0:
            if not hmac.compare_digest(h.digest(), self._head[1]):
                raise NotSigned(NOT_SIGNED)
            magic, _, pickle_len, _ = self._head
            table = list(ROW.iter_unpack(memoryview(self._front)[HEAD.size:]))
            offsets, self._end = buffer_offsets(magic, pickle_len, [n for n, _ in table])
            if self._size is not None and self._end != self._size:
                raise Damaged("its size does not match its header")
            self._spans += [(offset, offset + n, xxhash.xxh3_128()) for (n, _), offset in zip(table, offsets)]
            self._digests = [digest for _, digest in table]
            self._front = bytearray()
        elif h.digest() != self._digests[self._next - 1]:
            raise Damaged("a buffer's checksum does not match")
        self._next += 1


class Checking:
    """A file read front to back (``read`` only) whose bytes are checked as they pass (``StreamCheck``):
    ``Damaged`` is raised by the read that brings the first wrong byte, or the end of a value not whole."""

    def __init__(self, f: Any, check: StreamCheck) -> None:
        self._f, self._check = f, check

    def read(self, size: int | None = -1) -> bytes | memoryview:
        data = self._f.read(size)
        if data:
            self._check.feed(data)
        whole = size is None or size < 0
        if (whole or (not data and size != 0)) and (problem := self._check.problem()) is not None:
            raise problem  # (at the end: ``read()``, or a read that brings nothing)
        return data
