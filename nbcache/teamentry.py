"""An entry as the team cache keeps it: one object per cache key, with the sealed entry, who stored it and when,
and the bytes of the result's small values, so that a team-cache hit on such a result is one request (as
Bazel's remote cache hands small outputs back inline with the action's result).

The object ``v<format>/entries/<key>``::

    <value 0><value 1>...<record: JSON><the record's length: 8 bytes, big-endian><MAGIC: 8 bytes>

    record = {"entry": <the sealed entry's JSON>, "by": "user@host", "at": <ISO time>,
              "sizes": {<address>: <bytes>, ...}, "inline": [[<address>, <bytes>], ...], "key": <key id>}

``inline`` names the values the object carries, in order from its first byte; a result's values up to
``INLINE`` bytes in all travel so (the others are objects of their own, ``v<format>/blobs/<address>``). The record
comes last, so that ``nbcache ls --remote`` reads only the end of each object. An object written by nbcache
before values travelled inline is the record alone. Nothing here is trusted: the entry is sealed with the
team's key, each value signed with it, and a record whose parts do not add up to its object is not read.
``key`` says which key sealed the entry (``keys.key_id``, not the key): an entry whose seal does not match is
then known as another key's, not overwritten, rather than as damage, replaced (a record written before it
was kept has none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["INLINE", "MAGIC", "MAX_RECORD", "TAIL", "TeamEntry", "Unreadable", "read_record"]

INLINE = 16 << 20  # a result's values up to this many bytes in all travel inside its entry's object
TAIL = 64 << 10  # the bytes read from an entry object's end to find its record (most records are a few KB)
MAGIC = b"NBCTEAM1"
_TRAILER = 16  # the record's length, then MAGIC
MAX_RECORD = 16 << 20  # far above any real record: a length beyond it is damage, not a record to read


class Unreadable(Exception):
    """An entry object that is not one nbcache wrote as it is now (damaged, cut short, or another program's)."""


@dataclass(frozen=True)
class TeamEntry:
    """The record of an entry object: the sealed entry's JSON text, who stored it and when, the bytes of each
    value by address, the values the object carries itself, in order from its start, and which key sealed
    it."""

    entry: str
    by: str
    at: str
    sizes: dict[str, int] = field(default_factory=dict)
    inline: tuple[tuple[str, int], ...] = ()  # (address, bytes) of each value the object carries
    key: str = ""  # which key sealed the entry (``keys.key_id``); "" if the record does not say

    def record(self) -> bytes:
        """What ends the object: the record, its length, MAGIC (the values it carries go before it)."""
        text = json.dumps({"entry": self.entry, "by": self.by, "at": self.at, "sizes": self.sizes,
                           "inline": [list(item) for item in self.inline], "key": self.key}).encode()
        return text + len(text).to_bytes(8, "big") + MAGIC

    def carried(self) -> dict[str, tuple[int, int]]:
        """Where each value the object carries is in it: address -> (first byte, bytes)."""
        where, at = {}, 0
        for address, size in self.inline:
            where[address] = (at, size)
            at += size
        return where

    @classmethod
    def from_json(cls, data: bytes) -> TeamEntry | None:
        """The record, or None if it is not one (what is wrong with the entry itself, its seal says)."""
        try:
            record = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(record, dict):
            return None
        entry, by, at = record.get("entry"), record.get("by"), record.get("at")
        if not (isinstance(entry, str) and isinstance(by, str) and isinstance(at, str)):
            return None
        sizes = record.get("sizes")
        if not (isinstance(sizes, dict) and all(type(n) is int and 0 < n < 1 << 50 for n in sizes.values())):
            sizes = {}  # (the blobs are then read without it)
        inline = record.get("inline", [])
        if not (isinstance(inline, list) and all(
                isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and type(item[1]) is int
                and 0 < item[1] <= INLINE for item in inline) and len({item[0] for item in inline}) == len(inline)):
            return None  # (what it carries cannot be found in it)
        key = record.get("key")
        return cls(entry, _printable(by[:200]), _printable(at[:40]), sizes, tuple((a, n) for a, n in inline),
                   _printable(key[:64]) if isinstance(key, str) else "")


def _printable(text: str) -> str:
    """``text`` with what a terminal would act on (escapes, newlines) shown as ``?``: who and when are told by
    whoever uploaded, outside the seal, and go into messages and the history."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def read_record(tail: bytes, size: int | None) -> TeamEntry | int:
    """The record in ``tail``, the last bytes of an entry object of ``size`` bytes (None: not known, bigger than
    ``tail``), or how many bytes from the object's end it takes if ``tail`` has too few of them. Raises
    ``Unreadable`` for an object that is not an entry nbcache wrote, or is not the size its record says."""
    whole = size is not None and size == len(tail)
    if len(tail) < _TRAILER or tail[-len(MAGIC):] != MAGIC:
        found = TeamEntry.from_json(tail) if whole else None  # (written before values travelled inline)
        if found is None:
            raise Unreadable("it is not an entry nbcache wrote")
        return found
    length = int.from_bytes(tail[-_TRAILER:-len(MAGIC)], "big")
    if length > MAX_RECORD or (size is not None and length + _TRAILER > size):
        raise Unreadable("it is cut short")
    if length + _TRAILER > len(tail):
        return length + _TRAILER
    found = TeamEntry.from_json(tail[-_TRAILER - length:-_TRAILER])
    if found is None:
        raise Unreadable("its record does not read")
    if size is not None and sum(n for _, n in found.inline) + length + _TRAILER != size:
        raise Unreadable("it is not the size its record says")
    return found
