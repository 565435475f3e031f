"""Small values read from the index once, checked, and kept in memory as their parts (the pickle, the buffers).

A value is stored under a name that covers its content, and never changes there, so a hit that names the
same value in the same store again in this process is made from those parts: unpickled anew, its buffers
copied (the caller owns what it gets, as with any hit), without reading the index or checking the signature
a second time. The entry that names it is still read from the store on every call: a result cleared,
replaced or damaged there counts at once. Only values the index holds itself (those under 64 KiB:
``diskfiles.py``), once read, checked and unpickled, are kept, ``MAX_BYTES`` in all; past that, what was
kept is let go. One that no longer unpickles (its class gone) is let go as its stored copy is removed.
"""

from __future__ import annotations

from typing import Any, Callable

from .frameread import value_of_parts

__all__ = ["MAX_BYTES", "MAX_VALUE_BYTES", "NOT_KEPT", "SmallValues"]

NOT_KEPT = object()

MAX_VALUE_BYTES = 64 << 10  # a stored value larger than this is not kept
MAX_BYTES = 8 << 20  # what all the values kept take at most


class SmallValues:
    """The parts of small values loaded, by store and blob name (one per ``Cache``). What one store holds
    says nothing of another (another directory, with values signed with another key, or damaged)."""

    def __init__(self) -> None:
        self._parts: dict[tuple[int, str], tuple[bytes, tuple[bytes, ...]]] = {}
        self._stores: dict[int, Any] = {}  # (held, so that no other store is given the id of one kept here)
        self._bytes = 0

    def value(self, store: Any, name: str, notebook: Any) -> Any:
        """The value named ``name`` in ``store``, made anew, if it is kept; else ``NOT_KEPT``."""
        parts = self._parts.get((id(store), name))
        if parts is None:
            return NOT_KEPT
        try:
            return value_of_parts(*parts, notebook)
        except Exception:  # (``Damaged``: it no longer unpickles, its class gone): not kept, as not stored
            self._parts.pop((id(store), name), None)
            raise

    def keeper(self, store: Any, name: str, source: Any) -> Callable[[bytes, tuple[bytes, ...]], None] | None:
        """What ``read_frame`` gives the parts it checked of ``source`` to (None: not kept)."""
        if not isinstance(source, (bytes, bytearray)) or len(source) > MAX_VALUE_BYTES:
            return None

        def keep(pickled: bytes, buffers: tuple[bytes, ...]) -> None:
            if self._bytes + len(source) > MAX_BYTES:
                self.clear()
            self._stores[id(store)] = store
            self._parts[id(store), name] = (pickled, buffers)
            self._bytes += len(source)

        return keep

    def clear(self) -> None:
        self._parts, self._stores = {}, {}
        self._bytes = 0
