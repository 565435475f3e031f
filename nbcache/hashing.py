"""Content hashing of Python values: the input half of every cache key.

``hash_value`` feeds a value into an xxh3-128 hasher, tagged with its type at every level, so that ``1``,
``1.0``, ``True`` and ``"1"`` differ and a list never equals a tuple. Containers whose equality ignores
order (dict, set) are hashed order-free by sorting the digests of their members; aliases are hashed like
copies (an object's digest is remembered, not its position as pickle's memo does), and a container that
contains itself hashes as a back-reference, so the walk always ends. Functions, classes and modules count
by their code fingerprint: a function hashes alike wherever it is defined, and differently once it, a
helper it calls or a global it reads changes.

What has no content to hash (a generator, a lock, an open file) raises ``UncacheableError`` naming the type
and where it sits. Everything else falls back to the object's own pickle protocol, hashed structurally.

This module is the public face of hashing, over the modules that do the work, whose imports go one way:
``hash_core`` (the walk, handler tables, ``feed``) <- ``hash_reduce`` (the pickle fallback) <- ``hash_base``
(builtin values, and the ``_hashing_*`` plugins for numpy, pandas, matplotlib and scipy, loaded when their
library is first seen) <- ``fingerprint_handlers`` (``CODE``: the base table with code counted by what it
does) <- here. No module changes another's table: each table is built once, and ``extend`` makes new ones.
So this module belongs to the code layer, above ``fingerprint``: the values layer is ``hash_core``,
``hash_reduce``, ``hash_base`` and the plugins.
"""

from __future__ import annotations

from typing import Any, Mapping

from . import hash_core
from .errors import UncacheableError
from .fingerprint_handlers import CODE
from .hash_core import (
    ATOMS, Handler, Handlers, Hasher, Unhashable, digest_of, feed, feed_bytes_tagged, feed_pairs, new_hasher, type_name,
)

__all__ = [
    "CODE", "Handler", "Handlers", "Hasher", "Unhashable", "Walk", "digest_of", "feed", "feed_bytes_tagged",
    "feed_pairs", "hash_holding", "hash_items", "hash_value", "new_hasher", "type_name",
]


class Walk(hash_core.Walk):
    """A walk over ``CODE``, the handlers ``hash_value`` uses: a caller that hashes several values (a step's
    arguments, after its fingerprint) passes one walk to all of them, and reads what it noted afterwards."""

    __slots__ = ()

    def __init__(self, handlers: Handlers = CODE) -> None:
        super().__init__(handlers)


def hash_value(obj: Any, *, root: str = "value", walk: hash_core.Walk | None = None) -> str:
    """Return the content hash of ``obj`` as 32 hex characters.

    Stable across processes and ``PYTHONHASHSEED``, and tagged with types at every level: ``1``, ``1.0``
    and ``"1"`` differ, a list and a tuple differ, and dict and set order do not count.

    Args:
        obj: The value to hash.
        root: What to call the value in error messages (``args``, an argument's name).
        walk: The walk to use, to read what it noted afterwards (``globals_reader``); a new one if None.

    Raises:
        UncacheableError: ``obj`` holds something with no content to hash (a generator, a lock, an open
            file); the message says where, such as ``value['a'][1]``.
    """
    h = new_hasher()
    try:
        feed(obj, h, walk if walk is not None else Walk())
    except Unhashable as e:
        raise _public_error(e, root) from None
    except RecursionError:
        raise UncacheableError(type(obj).__name__, root, "it is nested too deeply to hash") from None
    except Exception as exc:  # an object whose pickle protocol misbehaves: still a clear, catchable error
        raise UncacheableError(type(obj).__name__, root, f"hashing it failed ({type(exc).__name__}: {exc})")
    return h.hexdigest()


def hash_items(values: tuple) -> tuple[str, list[str]]:
    """``hash_value(values)`` and ``hash_value(v)`` for each item, hashing every item once.

    A step that returns a tuple records both: a consumer may take one element or the whole tuple.
    """
    walk = Walk()
    h = new_hasher()
    try:
        feed(values, h, walk)
    except Unhashable as e:
        raise _public_error(e, "result") from None
    items = [hash_value(v) if type(v) in ATOMS else new_hasher(b"@" + walk.digests[id(v)][1]).hexdigest()
             for v in values]
    return h.hexdigest(), items


def _public_error(e: Unhashable, root: str) -> UncacheableError:
    return UncacheableError(e.type_name, root + "".join(reversed(e.path)), e.detail)


def hash_holding(obj: Any, stand_ins: Mapping[str, Any]) -> str:
    """``hash_value(obj)``, where each object of ``stand_ins`` (by name) counts as its name, whatever it holds:
    a dict of models hashes alike whether the ``lr`` it holds is fitted or not, as long as it holds ``lr``."""
    walk = Walk()
    for name, value in stand_ins.items():
        walk.digests[id(value)] = (value, hash_core.new_hasher(f"stands for {name}".encode()).digest())
    return hash_value(obj, walk=walk)
