"""Content hashing of Python values: the input half of every cache key.

``hash_value`` feeds a value into an xxh3-128 hasher, tagged with its type at every level, so that ``1``,
``1.0``, ``True`` and ``"1"`` differ and a list never equals a tuple. Containers whose equality ignores
order (dict, set) are hashed order-free by sorting the digests of their members; aliases are hashed like
copies (an object's digest is remembered, not its position as pickle's memo does), and a container that
contains itself hashes as a back-reference, so the walk always ends. Big buffers (numpy, pandas) go to xxh3 directly, never through pickle; those handlers
live in ``_hashing_numpy`` and ``_hashing_pandas`` and are registered the first time such a value is seen,
so ``import nbcache`` imports neither library.

What has no content to hash (a generator, a lock, an open file) raises ``UncacheableError`` naming the type
and where it sits; a closed file has no content either, but nothing more can be read from it, so it hashes
as its type, name and mode. Everything else falls back to the object's own pickle protocol
(``__reduce_ex__``), hashed structurally rather than as pickle bytes, so that sets and dicts inside stay
order-free.

A value restored from the cache must hash like the value that was stored, and reading a value must not
change its hash. The fallback therefore hashes what survives pickling, not all pickle saves: the state of a
class whose ``__setstate__`` ignores it is left out, and so are the attributes a library keeps as caches it
fills lazily or as wiring (``skip_attributes``, called by the per-library handler modules).
"""

from __future__ import annotations

import collections
import copyreg
import dis
import functools
import importlib
import io
import struct
import sys
import types
from typing import Any, Callable

import xxhash

from .errors import UncacheableError

__all__ = ["hash_value", "feed", "register", "skip_attributes", "Unhashable", "new_hasher"]

Hasher = Any  # an xxhash.xxh3_128 object
new_hasher = xxhash.xxh3_128

_pack_len = struct.Struct("<Q").pack
_pack_float = struct.Struct("<d").pack
_CANONICAL_NAN = _pack_float(float("nan"))


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


class Walk:
    """Per-call state: the containers on the current path (for self-reference), every object's digest so
    far, and for ``fingerprint`` the functions being digested (for mutual recursion) and the parts."""

    __slots__ = ("stack", "active", "parts", "digests", "globals_reader")

    def __init__(self, parts: dict[str, str] | None = None) -> None:
        self.globals_reader: str | None = None  # the first of the user's functions seen to call globals()
        self.stack: dict[int, int] = {}
        self.active: set[int] = set()
        self.parts = parts  # label -> own digest, when the caller wants to know what a digest depends on
        self.digests: dict[int, tuple[Any, bytes]] = {}  # every object digested so far (kept alive: ids stay)


def hash_value(obj: Any, *, root: str = "value", walk: Walk | None = None) -> str:
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
    items = [hash_value(v) if type(v) in _ATOMS else new_hasher(b"@" + walk.digests[id(v)][1]).hexdigest()
             for v in values]
    return h.hexdigest(), items


def _public_error(e: Unhashable, root: str) -> UncacheableError:
    return UncacheableError(e.type_name, root + "".join(reversed(e.path)), e.detail)


def digest_of(obj: Any, walk: Walk) -> bytes:
    """Digest of one member, hashed on its own (for order-free containers)."""
    h = new_hasher()
    feed(obj, h, walk)
    return h.digest()


def feed(obj: Any, h: Hasher, walk: Walk) -> None:
    """Feed ``obj`` into ``h``. The one entry point every handler recurses through.

    Anything but an atom is digested on its own and fed as its digest, which is remembered for the rest
    of the walk: an object shared in many places is hashed once (an object graph full of shared parts and
    parent pointers, like a matplotlib figure, would otherwise take exponential time), and ``[x, x]``
    still hashes like ``[[1, 2], [1, 2]]``. In a graph with cycles, a digest that refers back to an
    enclosing object is reused wherever the object appears again; the walk's order is fixed, so the
    result is still the same in every process.
    """
    tp = type(obj)
    handler = _EXACT.get(tp)
    if handler is None:
        handler = _dispatch(tp)
    elif tp in _ATOMS:
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


def _feed_bytes_tagged(tag: bytes, data: bytes, h: Hasher) -> None:
    h.update(tag + _pack_len(len(data)))
    h.update(data)


def type_name(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


# -- atoms ------------------------------------------------------------------------------------------------

def _feed_none(obj: None, h: Hasher, walk: Walk) -> None:
    h.update(b"N")


def _feed_bool(obj: bool, h: Hasher, walk: Walk) -> None:
    h.update(b"B1" if obj else b"B0")


def _feed_int(obj: int, h: Hasher, walk: Walk) -> None:
    _feed_bytes_tagged(b"I", obj.to_bytes((obj.bit_length() + 8) // 8, "little", signed=True), h)


def _feed_float(obj: float, h: Hasher, walk: Walk) -> None:
    h.update(b"F" + (_pack_float(obj) if obj == obj else _CANONICAL_NAN))


def _feed_complex(obj: complex, h: Hasher, walk: Walk) -> None:
    h.update(b"C")
    _feed_float(obj.real, h, walk)
    _feed_float(obj.imag, h, walk)


def _feed_str(obj: str, h: Hasher, walk: Walk) -> None:
    _feed_bytes_tagged(b"S", obj.encode("utf-8", "surrogatepass"), h)


def _feed_bytes(obj: bytes, h: Hasher, walk: Walk) -> None:
    _feed_bytes_tagged(b"Y", obj, h)


def _feed_bytearray(obj: bytearray, h: Hasher, walk: Walk) -> None:
    _feed_bytes_tagged(b"A", bytes(obj), h)


def _feed_memoryview(obj: memoryview, h: Hasher, walk: Walk) -> None:
    h.update(b"MV" + obj.format.encode() + repr(obj.shape).encode())
    _feed_bytes_tagged(b"", obj.tobytes(), h)


def _feed_singleton(obj: Any, h: Hasher, walk: Walk) -> None:
    h.update(b"G" + repr(obj).encode())


# -- containers -------------------------------------------------------------------------------------------

def _enter(obj: Any, h: Hasher, walk: Walk) -> bool:
    """Mark ``obj`` as on the path. If it already is, feed a back-reference and return False."""
    depth = walk.stack.get(id(obj))
    if depth is not None:
        h.update(b"R" + _pack_len(len(walk.stack) - depth))
        return False
    walk.stack[id(obj)] = len(walk.stack)
    return True


def _sequence(tag: bytes) -> Callable[[Any, Hasher, Walk], None]:
    def feed_sequence(obj: Any, h: Hasher, walk: Walk) -> None:
        if not _enter(obj, h, walk):
            return
        h.update(tag + _pack_len(len(obj)))
        i = 0
        try:
            for i, item in enumerate(obj):
                feed(item, h, walk)
        except Unhashable as e:
            raise e.at(f"[{i}]") from None
        finally:
            del walk.stack[id(obj)]

    return feed_sequence


def _key_repr(key: Any) -> str:
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def _item_path(key: Any) -> str:
    return f"[{_key_repr(key)}]"


def _attribute_path(name: Any) -> str:
    return f".{name}" if isinstance(name, str) else _item_path(name)


def feed_pairs(pairs: Any, h: Hasher, walk: Walk, *, ordered: bool,
               where: Callable[[Any], str] = _item_path) -> None:
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
    h.update(_pack_len(len(digests)) + b"".join(digests))


def _mapping(tag: bytes, *, ordered: bool) -> Callable[[Any, Hasher, Walk], None]:
    def feed_mapping(obj: Any, h: Hasher, walk: Walk) -> None:
        if not _enter(obj, h, walk):
            return
        try:
            h.update(tag)
            feed_pairs(obj.items(), h, walk, ordered=ordered)
        finally:
            del walk.stack[id(obj)]

    return feed_mapping


def _set(tag: bytes) -> Callable[[Any, Hasher, Walk], None]:
    def feed_set(obj: Any, h: Hasher, walk: Walk) -> None:
        if not _enter(obj, h, walk):
            return
        try:
            digests = sorted(digest_of(item, walk) for item in obj)
        except Unhashable as e:
            raise e.at(f" (a member of a {type(obj).__name__})") from None
        finally:
            del walk.stack[id(obj)]
        h.update(tag + _pack_len(len(digests)) + b"".join(digests))

    return feed_set


# -- everything else: the object's own pickle protocol, hashed structurally ---------------------------------

def _feed_type(obj: type, h: Hasher, walk: Walk) -> None:
    """Classes count by qualified name; ``fingerprint`` replaces this for the user's own classes."""
    _feed_bytes_tagged(b"t", type_name(obj).encode(), h)


def _feed_named(obj: Any, h: Hasher, walk: Walk) -> None:
    """Functions and modules by name; ``fingerprint`` registers content-aware handlers over these."""
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
    _feed_bytes_tagged(b"n", f"{getattr(obj, '__module__', '')}.{name}".encode(), h)


_UNHASHABLE_HINTS = {
    "generator": "a generator can only be read once; pass a list instead",
    "coroutine": "a coroutine has no content; await it and pass the result",
    "TextIOWrapper": "an open file has no content to hash; pass its path or its contents",
    "BufferedReader": "an open file has no content to hash; pass its path or its contents",
    "BufferedWriter": "an open file has no content to hash; pass its path",
    "socket": "a socket has no content to hash",
}


def _feed_closed_file(obj: io.IOBase, h: Hasher, walk: Walk) -> None:
    """A closed file as its type, name and mode: nothing can be read from it, so that is all it is. An open
    file goes on to the fallback, which keeps a ``StringIO``'s content and refuses a real file."""
    if not obj.closed:
        _feed_object(obj, h, walk)
        return
    h.update(b"closed")
    feed(type(obj), h, walk)
    for attribute in ("name", "mode"):
        try:
            value = getattr(obj, attribute, None)
        except ValueError:  # some wrappers refuse every attribute once closed
            value = None
        feed(value if isinstance(value, (str, bytes, int)) else None, h, walk)


# Attributes that are no content, by library (the top-level module a class comes from): caches the library
# fills lazily when an object is read (pandas' ``cache_readonly`` keeps them in ``_cache``), and wiring.
_SKIPPED: dict[str, frozenset[str]] = {}
_type_rules: dict[type, tuple[frozenset[str], bool]] = {}  # per class: attributes to skip, state ignored


def skip_attributes(library: str, names: Any) -> None:
    """Leave the attributes ``names`` out of the hash of every object of ``library`` (or of a subclass of
    one) that is hashed through its pickle state: caches filled when the object is read, and wiring."""
    _SKIPPED[library] = _SKIPPED.get(library, frozenset()) | frozenset(names)
    _type_rules.clear()


def _rules(tp: type) -> tuple[frozenset[str], bool]:
    """The attributes skipped for ``tp`` and whether its ``__setstate__`` ignores the state (once per class).

    Skipped: what ``skip_attributes`` names for the library of the class or of a base, and the values of
    its ``functools.cached_property``s, which the first read stores in ``__dict__``.
    """
    rules = _type_rules.get(tp)
    if rules is None:
        skipped: frozenset[str] = frozenset()
        for cls in tp.__mro__:
            namespace = cls.__dict__
            module = namespace.get("__module__")
            if isinstance(module, str):
                skipped |= _SKIPPED.get(module.partition(".")[0], frozenset())
            skipped |= {member.attrname for member in list(namespace.values())
                        if isinstance(member, functools.cached_property) and isinstance(member.attrname, str)}
        rules = _type_rules[tp] = (skipped, _ignores_state(getattr(tp, "__setstate__", None)))
    return rules


_READS = frozenset(name for name in dis.opmap if name.startswith(("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE",
                                                                  "STORE_FAST", "DELETE_FAST")))


def _ignores_state(setstate: Any) -> bool:
    """Whether ``__setstate__`` is Python code that never reads its state argument (scikit-learn's
    ``Bunch`` throws its ``__dict__`` away on purpose): what pickle saves there does not survive a load."""
    code = getattr(setstate, "__code__", None)
    if not isinstance(setstate, types.FunctionType) or code is None or code.co_argcount != 2:
        return False
    state = code.co_varnames[1]
    if state in code.co_cellvars or "locals" in code.co_names:
        return False
    for instruction in dis.get_instructions(code):
        if instruction.opname in _READS:
            names = instruction.argval if isinstance(instruction.argval, tuple) else (instruction.argval,)
            if state in names:
                return False
    return True


def _feed_object(obj: Any, h: Hasher, walk: Walk, drop: frozenset[str] = frozenset()) -> None:
    """The fallback: hash what pickle would save (``copyreg``'s reducer, else ``__reduce_ex__``) and a load
    keeps, less the attributes in ``drop`` (wiring that is no content, for the handlers of particular
    libraries) and those ``skip_attributes`` names for the object's library."""
    tp = type(obj)
    if not _enter(obj, h, walk):
        return
    try:
        try:
            reducer = copyreg.dispatch_table.get(tp)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:  # the object refuses to be pickled: it has no content we can trust
            name = tp.__name__
            raise Unhashable(name, _UNHASHABLE_HINTS.get(name, str(exc))) from None
        if isinstance(reduced, str):  # a module-level singleton, named
            _feed_bytes_tagged(b"g", f"{tp.__module__}.{reduced}".encode(), h)
            return
        h.update(b"O")
        feed(tp, h, walk)
        skipped, ignores_state = _type_rules.get(tp) or _rules(tp)
        _feed_reduced(obj, reduced, h, walk, drop | skipped if skipped else drop, ignores_state)
    finally:
        del walk.stack[id(obj)]


def _feed_reduced(obj: Any, reduced: tuple, h: Hasher, walk: Walk, drop: frozenset[str] = frozenset(),
                  ignores_state: bool = False) -> None:
    func, args, *rest = reduced + (None,) * (5 - len(reduced))
    state, listitems, dictitems = rest[0], rest[1], rest[2]
    if ignores_state:
        state = None  # pickle hands it to __setstate__, which throws it away: hash what survives a load
    if func is copyreg.__newobj__ and args and args[0] is type(obj):
        args = args[1:]  # the class was fed already
    elif func is not type(obj):
        feed(func, h, walk)
    try:
        feed(args, h, walk)
    except Unhashable as e:
        raise e.at("(constructor arguments)") from None
    if (isinstance(state, tuple) and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)):
        state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, __slots__) as one namespace
    if isinstance(state, dict):
        h.update(b"s")
        items = state.items() if not drop else [(k, v) for k, v in state.items() if k not in drop]
        feed_pairs(items, h, walk, ordered=False, where=_attribute_path)
    else:
        feed(state, h, walk)
    if listitems is not None:
        feed(list(listitems), h, walk)
    if dictitems is not None:
        ordered = isinstance(obj, collections.OrderedDict) or not isinstance(obj, dict)
        feed_pairs(list(dictitems), h, walk, ordered=ordered)


# -- dispatch ---------------------------------------------------------------------------------------------

@functools.singledispatch
def _generic(obj: Any, h: Hasher, walk: Walk) -> None:
    _feed_object(obj, h, walk)


_EXACT: dict[type, Callable[[Any, Hasher, Walk], None]] = {
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
_ATOMS = frozenset({type(None), bool, int, float, complex, str, bytes})  # fed inline, never remembered

# Subclasses of these builtins (namedtuples, IntEnums, a list with attributes) are deliberately not
# registered: they go through __reduce_ex__, which keeps their class and their extra state.
_generic.register(types.MappingProxyType, _mapping(b"MP", ordered=False))
_generic.register(type, _feed_type)
# every file object's concrete base (io.IOBase itself is an ABC: registering one makes every dispatch check
# abc's cache token, and every ABC.register() anywhere empty the dispatch cache)
_generic.register(io.IOBase.__mro__[1], _feed_closed_file)
for _tp in (types.FunctionType, types.BuiltinFunctionType, types.MethodType, types.ModuleType,
            types.MethodWrapperType, types.WrapperDescriptorType):
    _generic.register(_tp, _feed_named)



def _dispatch(tp: type) -> Callable[[Any, Hasher, Walk], None]:
    """The handler for a type not in _EXACT, after registering numpy/pandas handlers if now needed (a
    numpy float64 is also a float: it must not be hashed as one before the numpy handlers exist). The
    libraries are looked for again only when the process has imported something since."""
    global _modules_seen
    if len(_loaded) < len(_LAZY) and len(sys.modules) != _modules_seen:
        _load_lazy_handlers()
        _modules_seen = len(sys.modules)
    return _generic.dispatch(tp)


def register(tp: type, handler: Callable[[Any, Hasher, Walk], None] | None = None) -> Any:
    """Register ``handler(obj, hasher, walk)`` for ``tp`` and its subclasses (usable as a decorator)."""
    if handler is None:
        return lambda fn: register(tp, fn)
    _generic.register(tp, handler)
    _EXACT.pop(tp, None)
    return handler


# numpy, pandas, matplotlib and scipy handlers are registered once their library has been imported by the user's code.
_LAZY = {"numpy": "nbcache._hashing_numpy", "pandas": "nbcache._hashing_pandas",
         "matplotlib": "nbcache._hashing_matplotlib", "scipy": "nbcache._hashing_scipy"}
_loaded: set[str] = set()
_modules_seen = 0  # len(sys.modules) when the libraries were last looked for


def _load_lazy_handlers() -> None:
    """Import the handler modules of libraries the process has loaded by now."""
    for library, module in _LAZY.items():
        if library not in _loaded and library in sys.modules:
            _loaded.add(library)
            importlib.import_module(module)

