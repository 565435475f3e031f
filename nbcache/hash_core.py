"""The hashing walk: handler tables, the walk's state, and ``feed``, the one entry point every handler uses.

A ``Handlers`` table says which function feeds a value of each type into the hasher. It is immutable to
everything but the lazy loading of the built-in plugins into the base table (``hash_base``, through a
loader the table calls itself, once the process has imported more modules); ``extend`` makes a new table,
which is how ``fingerprint`` adds its code-aware handlers without changing what anyone else's hash means.
The table travels with the walk (``Walk.handlers``), so every value inside a value is hashed the same way.

A type with no handler of its own goes to the table's fallback (the pickle protocol, ``hash_reduce``),
unless it defines ``__nbcache_hash__``: then ``feed_stand_in`` hashes what that method returns instead.

For handler modules (the ``_hashing_*`` plugins and ``fingerprint``), ``__all__`` is the whole interface:
``feed`` to recurse, ``enter``/``leave`` as the one guard against cycles, ``feed_pairs`` and
``feed_bytes_tagged`` for framing, and ``Unhashable`` to say what cannot be hashed and where.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import weakref
from typing import Any, Callable, Mapping

import xxhash

__all__ = [
    "ATOMS", "Handler", "Handlers", "Hasher", "Unhashable", "Walk", "digest_of", "enter", "feed", "feed_bytes_tagged",
    "feed_pairs", "feed_stand_in", "item_path", "leave", "new_hasher", "pack_len", "type_name",
]

Hasher = Any  # an xxhash.xxh3_128 object
new_hasher = xxhash.xxh3_128
pack_len = struct.Struct("<Q").pack

Handler = Callable[[Any, Hasher, "Walk"], None]
"""``handler(obj, hasher, walk)``: feed ``obj`` into ``hasher``, recursing through ``feed(x, hasher, walk)``."""


class Unhashable(Exception):
    """Raised inside the walk; carries the path, innermost component first, while it unwinds."""

    def __init__(self, type_name: str, detail: str = "") -> None:
        super().__init__(type_name)
        self.type_name = type_name
        self.detail = detail
        self.path: list[str] = []

    def at(self, component: str) -> Unhashable:
        self.path.append(component)
        return self


def type_name(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def feed_bytes_tagged(tag: bytes, data: bytes, h: Hasher) -> None:
    """Feed ``data`` framed by a tag and its length, so that no two sequences of fields run together."""
    h.update(tag + pack_len(len(data)))
    h.update(data)


# -- handler tables ---------------------------------------------------------------------------------------

Loader = Callable[[], Mapping[type, Handler]]


_LOADING = threading.Lock()  # (held while plugins load; made anew in a forked child, where it is free)


def _after_fork_in_child() -> None:
    global _LOADING
    _LOADING = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Handlers:
    """Which handler feeds a value of each type.

    ``exact`` handlers apply to their type only (a namedtuple is not hashed as a tuple: it goes through
    the pickle protocol, which keeps its class); ``by_class`` handlers apply to subclasses too, the most
    specific class in the MRO winning, and a table's own handler winning over its parent's for the same
    class. Types are resolved once and remembered (weakly: a class redefined in a notebook can go).
    """

    __slots__ = ("exact", "_by_class", "_fallback", "_parent", "_root", "_cache", "_generation",
                 "_loader", "_modules_seen", "_generations")

    def __init__(self, exact: Mapping[type, Handler], by_class: Mapping[type, Handler], fallback: Handler,
                 *, loader: Loader | None = None, parent: Handlers | None = None) -> None:
        self.exact: dict[type, Handler] = dict(exact)  # read directly by feed: the fast path
        self._by_class = dict(by_class)
        self._fallback = fallback
        self._parent = parent
        self._root: Handlers = self if parent is None else parent._root
        self._cache: weakref.WeakKeyDictionary[type, Handler] = weakref.WeakKeyDictionary()
        self._generation = 0  # the root's count of loads when _cache was filled
        self._loader = loader  # the root's: handlers of libraries imported since it was last called
        self._modules_seen = 0  # len(sys.modules) when the loader was last called
        self._generations = 0  # (root) how many times the loader added handlers

    def extend(self, by_class: Mapping[type, Handler], exact: Mapping[type, Handler] | None = None) -> Handlers:
        """A new table: this one with ``by_class`` and ``exact`` handlers added or replaced. A class given
        in ``by_class`` loses this table's exact handler for it, so that the new one applies."""
        inherited = {tp: fn for tp, fn in self.exact.items() if tp not in by_class}
        return Handlers({**inherited, **(exact or {})}, by_class, self._fallback, parent=self)

    def handler(self, tp: type) -> Handler:
        """The handler for ``tp``, after loading the plugins of libraries imported since the last look (a
        numpy float64 is also a float: it must not be hashed as one before the numpy handlers exist)."""
        handler = self.exact.get(tp)
        if handler is not None:
            return handler
        root = self._root
        if root._loader is not None and len(sys.modules) != root._modules_seen:
            root._load()
        if self._generation != root._generations:
            self._cache.clear()
            self._generation = root._generations
        handler = self._cache.get(tp)
        if handler is None:
            handler = self._cache[tp] = self._resolve(tp)
        return handler

    def _resolve(self, tp: type) -> Handler:
        for cls in tp.__mro__:
            table: Handlers | None = self
            while table is not None:
                handler = table._by_class.get(cls)
                if handler is not None:
                    return handler
                table = table._parent
        if getattr(tp, "__nbcache_hash__", None) is not None:  # a type that names its own stand-in
            return feed_stand_in
        return self._fallback

    def _load(self) -> None:
        # One thread loads at a time, and counts the modules seen only once the handlers are in: another
        # thread hashing meanwhile waits for them (a Dask worker's threads, the background thread)
        with _LOADING:
            if len(sys.modules) == self._modules_seen:
                return  # (loaded by the thread this one waited for)
            seen = len(sys.modules)
            assert self._loader is not None
            added = self._loader()
            if added:
                self._add(added)
            self._modules_seen = len(sys.modules) if added else seen  # (a plugin may have imported more)

    def _add(self, added: Mapping[type, Handler]) -> None:
        """(Root only) add class handlers, for every table over this one: the plugins' handlers."""
        self._by_class.update(added)
        self._generations += 1


# -- the walk ---------------------------------------------------------------------------------------------

class Walk:
    """Per-call state: the handler table, the objects on the current path (the cycle guard), every
    object's digest so far, and for ``fingerprint`` the parts and the first function seen to call
    ``globals()``."""

    __slots__ = ("handlers", "path", "depth", "parts", "digests", "globals_reader")

    def __init__(self, handlers: Handlers) -> None:
        self.handlers = handlers
        self.path: dict[int, int] = {}  # id -> the depth it was entered at (-1: code, closed by name)
        self.depth = 0  # how many containers are on the path
        self.parts: dict[str, str] | None = None  # label -> own digest, when the caller asks what a digest depends on
        self.digests: dict[int, tuple[Any, bytes]] = {}  # every object digested so far (kept alive: ids stay)
        self.globals_reader: str | None = None  # the first of the user's functions seen to call globals()


def enter(obj: Any, h: Hasher, walk: Walk, *, back_reference: bool = True) -> bool:
    """Put ``obj`` on the path and return True; if it is on it already, return False and, when
    ``back_reference``, feed how many containers up it is (a container that contains itself).

    The one cycle guard, for containers and code alike. Code (``back_reference=False``) closes a cycle
    with a marker of its own and does not count as a level, so that a back-reference's distance counts
    containers only. Every True must be followed by ``leave(obj, walk)`` (in a ``finally``).
    """
    key = id(obj)
    at = walk.path.get(key)
    if at is not None:
        if back_reference:
            h.update(b"R" + pack_len(walk.depth - at))
        return False
    if back_reference:
        walk.path[key] = walk.depth
        walk.depth += 1
    else:
        walk.path[key] = -1
    return True


def leave(obj: Any, walk: Walk) -> None:
    """Take ``obj`` off the path (after ``enter`` returned True)."""
    if walk.path.pop(id(obj)) >= 0:
        walk.depth -= 1


ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})  # fed inline, never remembered


def feed(obj: Any, h: Hasher, walk: Walk) -> None:
    """Feed ``obj`` into ``h`` with the walk's handlers. The one entry point every handler recurses through.

    Anything but an atom is digested on its own and fed as its digest, which is remembered for the rest
    of the walk: an object shared in many places is hashed once (an object graph full of shared parts and
    parent pointers, like a matplotlib figure, would otherwise take exponential time), and ``[x, x]``
    still hashes like ``[[1, 2], [1, 2]]``. In a graph with cycles, a digest that refers back to an
    enclosing object is reused wherever the object appears again; the walk's order is fixed, so the
    result is still the same in every process.
    """
    tp = type(obj)
    handler = walk.handlers.exact.get(tp)
    if handler is None:
        handler = walk.handlers.handler(tp)
    elif tp in ATOMS:
        handler(obj, h, walk)
        return
    key = id(obj)
    known = walk.digests.get(key)
    if known is not None:
        h.update(b"@" + known[1])
        return
    sub = new_hasher()
    handler(obj, sub, walk)
    digest = sub.digest()
    walk.digests[key] = (obj, digest)
    h.update(b"@" + digest)


def digest_of(obj: Any, walk: Walk) -> bytes:
    """Digest of one member, hashed on its own (for order-free containers)."""
    h = new_hasher()
    feed(obj, h, walk)
    return h.digest()


def _key_repr(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def item_path(key: Any) -> str:
    return f"[{_key_repr(key)}]"


def feed_pairs(pairs: Any, h: Hasher, walk: Walk, *, ordered: bool,
               where: Callable[[Any], str] = item_path) -> None:
    """Feed (key, value) pairs; order-free unless ``ordered``. ``where`` names a key in error paths."""
    digests = []
    key = None
    try:
        for key, value in pairs:
            sub = new_hasher()
            feed(key, sub, walk)
            feed(value, sub, walk)
            digests.append(sub.digest())
    except Unhashable as e:
        raise e.at(where(key)) from None
    if not ordered:
        digests.sort()
    h.update(pack_len(len(digests)) + b"".join(digests))


def feed_stand_in(obj: Any, h: Hasher, walk: Walk) -> None:
    """An object whose type defines ``__nbcache_hash__(self) -> (tag, parts)``: hashed as the bytes ``tag``
    followed by each of ``parts`` (a tuple) in turn, in place of the object itself.

    For a value that is known to nbcache by what it stands for rather than by what pickle saves (a step
    used inside another step counts as its function and version). The tag keeps it apart from other
    values; the type is not fed, so choose a tag no other type uses.
    """
    tag, parts = obj.__nbcache_hash__()
    if not isinstance(tag, bytes) or not isinstance(parts, tuple):
        raise TypeError(f"{type(obj).__qualname__}.__nbcache_hash__ must return (bytes, tuple)")
    h.update(tag)
    for part in parts:
        feed(part, h, walk)
