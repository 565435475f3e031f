"""The base handler table: builtin values by content, code by name, everything else by its pickle protocol.

``BASE`` hashes ``1``, ``1.0``, ``True`` and ``"1"`` apart and a list apart from a tuple; dict and set are
hashed order-free by sorting the digests of their members; a container that contains itself hashes as a
back-reference, so the walk always ends. Subclasses of builtins (namedtuples, IntEnums, a list with
attributes) are deliberately left to the pickle fallback, which keeps their class and extra state.

Functions, modules and classes count by name here; ``fingerprint`` extends this table with handlers that
count code by what it does. A closed file has no content, but nothing more can be read from it either, so
it hashes as its type, name and mode.

Big buffers (numpy, pandas) go to xxh3 directly, never through pickle. Their handlers live in the
``_hashing_*`` plugins, loaded into ``BASE`` the first time a type is looked up after their library was
imported, so ``import nbcache`` imports none of those libraries. A plugin declares ``HANDLERS`` (type ->
handler, for the type and its subclasses) and ``SKIPPED_ATTRIBUTES`` (attributes of its library's objects
that are caches or wiring, left out by the pickle fallback).
"""

from __future__ import annotations

import collections
import importlib
import io
import struct
import sys
import types
from typing import Any

from .hash_core import (
    Handler, Handlers, Hasher, Unhashable, Walk, digest_of, enter, feed, feed_bytes_tagged, feed_pairs, leave, pack_len,
    type_name,
)
from .hash_reduce import feed_object, skip_attributes

__all__ = ["BASE"]

_pack_float = struct.Struct("<d").pack
_CANONICAL_NAN = _pack_float(float("nan"))


# -- atoms ------------------------------------------------------------------------------------------------

def _feed_none(obj: None, h: Hasher, walk: Walk) -> None:
    h.update(b"N")


def _feed_bool(obj: bool, h: Hasher, walk: Walk) -> None:
    h.update(b"B1" if obj else b"B0")


def _feed_int(obj: int, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"I", obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True), h)


def _feed_float(obj: float, h: Hasher, walk: Walk) -> None:
    h.update(b"F" + (_pack_float(obj) if obj == obj else _CANONICAL_NAN))


def _feed_complex(obj: complex, h: Hasher, walk: Walk) -> None:
    h.update(b"C")
    _feed_float(obj.real, h, walk)
    _feed_float(obj.imag, h, walk)


def _feed_str(obj: str, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"S", obj.encode("utf-8", "surrogatepass"), h)


def _feed_bytes(obj: bytes, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"Y", obj, h)


def _feed_bytearray(obj: bytearray, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"A", bytes(obj), h)


def _feed_memoryview(obj: memoryview, h: Hasher, walk: Walk) -> None:
    h.update(b"MV" + obj.format.encode() + repr(obj.shape).encode())
    feed_bytes_tagged(b"", obj.tobytes(), h)


def _feed_singleton(obj: Any, h: Hasher, walk: Walk) -> None:
    h.update(b"G" + repr(obj).encode())


# -- containers -------------------------------------------------------------------------------------------

def _sequence(tag: bytes) -> Handler:
    def feed_sequence(obj: Any, h: Hasher, walk: Walk) -> None:
        if not enter(obj, h, walk):
            return
        h.update(tag + pack_len(len(obj)))
        i = 0
        try:
            for i, item in enumerate(obj):
                feed(item, h, walk)
        except Unhashable as e:
            raise e.at(f"[{i}]") from None
        finally:
            leave(obj, walk)

    return feed_sequence


def _mapping(tag: bytes, *, ordered: bool) -> Handler:
    def feed_mapping(obj: Any, h: Hasher, walk: Walk) -> None:
        if not enter(obj, h, walk):
            return
        try:
            h.update(tag)
            feed_pairs(obj.items(), h, walk, ordered=ordered)
        finally:
            leave(obj, walk)

    return feed_mapping


def _set(tag: bytes) -> Handler:
    def feed_set(obj: Any, h: Hasher, walk: Walk) -> None:
        if not enter(obj, h, walk):
            return
        try:
            digests = sorted(digest_of(item, walk) for item in obj)
        except Unhashable as e:
            raise e.at(f" (a member of a {type(obj).__name__})") from None
        finally:
            leave(obj, walk)
        h.update(tag + pack_len(len(digests)) + b"".join(digests))

    return feed_set


# -- names and files --------------------------------------------------------------------------------------

def _feed_type(obj: type, h: Hasher, walk: Walk) -> None:
    """Classes count by qualified name; ``fingerprint`` replaces this for the user's own classes."""
    feed_bytes_tagged(b"t", type_name(obj).encode(), h)


def _feed_named(obj: Any, h: Hasher, walk: Walk) -> None:
    """Functions and modules by name; ``fingerprint`` replaces this with handlers that read the code."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    feed_bytes_tagged(b"n", f"{getattr(obj, '__module__', '')}.{name}".encode(), h)


def _feed_closed_file(obj: io.IOBase, h: Hasher, walk: Walk) -> None:
    """A closed file as its type, name and mode: nothing can be read from it, so that is all it is. An open
    file goes on to the fallback, which keeps a ``StringIO``'s content and refuses a real file."""
    if not obj.closed:
        feed_object(obj, h, walk)
        return
    h.update(b"closed")
    feed(type(obj), h, walk)
    for attribute in ("name", "mode"):
        try:
            value = getattr(obj, attribute, None)
        except ValueError:  # some wrappers refuse every attribute once closed
            value = None
        feed(value if isinstance(value, (str, bytes, int)) else None, h, walk)


# -- plugins ----------------------------------------------------------------------------------------------

# numpy, pandas, matplotlib and scipy handlers are loaded once their library has been imported by the user's
# code (in this order: pandas' plugin uses numpy's).
_PLUGINS = {"numpy": "nbcache._hashing_numpy", "pandas": "nbcache._hashing_pandas",
            "matplotlib": "nbcache._hashing_matplotlib", "scipy": "nbcache._hashing_scipy"}
_loaded: set[str] = set()


def _load_plugins() -> dict[type, Handler]:
    """The handlers of the plugins of libraries the process has imported since the last call."""
    added: dict[type, Handler] = {}
    for library, module_name in _PLUGINS.items():
        if library not in _loaded and library in sys.modules:
            _loaded.add(library)
            module = importlib.import_module(module_name)
            added.update(getattr(module, "HANDLERS", {}))
            skip_attributes(library, getattr(module, "SKIPPED_ATTRIBUTES", ()))
    return added


_EXACT: dict[type, Handler] = {
    type(None): _feed_none,
    bool: _feed_bool,
    int: _feed_int,
    float: _feed_float,
    complex: _feed_complex,
    str: _feed_str,
    bytes: _feed_bytes,
    bytearray: _feed_bytearray,
    memoryview: _feed_memoryview,
    tuple: _sequence(b"T"),
    list: _sequence(b"L"),
    dict: _mapping(b"D", ordered=False),
    collections.OrderedDict: _mapping(b"OD", ordered=True),
    set: _set(b"E"),
    frozenset: _set(b"Z"),
    type(Ellipsis): _feed_singleton,
    type(NotImplemented): _feed_singleton,
}

_BY_CLASS: dict[type, Handler] = {
    types.MappingProxyType: _mapping(b"MP", ordered=False),
    type: _feed_type,
    # every file object's concrete base (io.IOBase itself is an ABC, which no handler table looks through)
    io.IOBase.__mro__[1]: _feed_closed_file,
    **{tp: _feed_named for tp in (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                                  types.ModuleType, types.MethodWrapperType, types.WrapperDescriptorType)},
}

BASE = Handlers(_EXACT, _BY_CLASS, feed_object, loader=_load_plugins)
"""Builtin values by content, code by name, the rest by its pickle protocol; plugins join it when needed."""
