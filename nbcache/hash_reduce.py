"""The fallback handler: a value without a handler of its own is hashed through its pickle protocol.

``feed_object`` hashes what ``copyreg``'s reducer or ``__reduce_ex__(4)`` returns, structurally rather than
as pickle bytes, so that sets and dicts inside stay order-free. What refuses to be pickled (a generator, a
lock, an open file) has no content to hash and raises ``Unhashable`` with a hint.

A value restored from the cache must hash like the value that was stored, and reading a value must not
change its hash. The fallback therefore hashes what survives pickling, not all pickle saves: the state of a
class whose ``__setstate__`` ignores it is left out, and so are the attributes a library keeps as caches it
fills lazily or as wiring (``SKIPPED_ATTRIBUTES`` of the per-library plugins, added by ``skip_attributes``).
"""

from __future__ import annotations

import collections
import copyreg
import dis
import functools
import sys
import types
from typing import Any, Iterable

from .hash_core import Hasher, Unhashable, Walk, enter, feed, feed_bytes_tagged, feed_pairs, item_path, leave

__all__ = ["feed_object", "skip_attributes"]

_UNHASHABLE_HINTS = {
    "generator": "a generator can only be read once; pass a list instead",
    "coroutine": "a coroutine has no content; await it and pass the result",
    "TextIOWrapper": "an open file has no content to hash; pass its path or its contents",
    "BufferedReader": "an open file has no content to hash; pass its path or its contents",
    "BufferedWriter": "an open file has no content to hash; pass its path",
    "socket": "a socket has no content to hash",
}

# Attributes that are no content, by library (the top-level module a class comes from): caches the library
# fills lazily when an object is read (pandas' ``cache_readonly`` keeps them in ``_cache``), and wiring.
_SKIPPED: dict[str, frozenset[str]] = {}
_type_rules: dict[type, tuple[frozenset[str], bool]] = {}  # per class: attributes to skip, state ignored


def skip_attributes(library: str, names: Iterable[str]) -> None:
    """Leave the attributes ``names`` out of the hash of every object of ``library`` (or of a subclass of
    one) that is hashed through its pickle state. Called by ``hash_base`` when it loads a library's plugin."""
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


def feed_object(obj: Any, h: Hasher, walk: Walk, drop: frozenset[str] = frozenset()) -> None:
    """The fallback: hash what pickle would save (``copyreg``'s reducer, else ``__reduce_ex__``) and a load
    keeps, less the attributes in ``drop`` (wiring that is no content, for the handlers of particular
    libraries) and those ``skip_attributes`` names for the object's library."""
    tp = type(obj)
    if not enter(obj, h, walk):
        return
    try:
        try:
            reducer = copyreg.dispatch_table.get(tp)
            reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        except Exception as exc:  # the object refuses to be pickled: it has no content we can trust
            name = tp.__name__
            raise Unhashable(name, _UNHASHABLE_HINTS.get(name, str(exc))) from None
        if isinstance(reduced, str):  # a module-level singleton, named
            _feed_named(obj, reduced, h, walk)
            return
        h.update(b"O")
        feed(tp, h, walk)
        skipped, ignores_state = _type_rules.get(tp) or _rules(tp)
        _feed_reduced(obj, reduced, h, walk, drop | skipped if skipped else drop, ignores_state)
    finally:
        leave(obj, walk)


def _feed_named(obj: Any, name: str, h: Hasher, walk: Walk) -> None:
    """An object pickle saves by name (a module's singleton): by that name; and, for a Python object found
    under it, by its class (the user's counts by its code) and what it holds, when the class is of the same
    package. A name no module can hold (numpy's ``frompyfunc`` ufuncs: ``'g (vectorized)'``) says nothing of
    what it does: it cannot be hashed."""
    tp = type(obj)
    if not all(part.isidentifier() for part in name.split(".")):
        raise Unhashable(tp.__name__, f"pickle names it {name!r}, which no module can hold")
    module_name = getattr(obj, "__module__", None)
    if not isinstance(module_name, str):
        module_name = tp.__module__
    feed_bytes_tagged(b"g", f"{module_name}.{name}".encode(), h)
    namespace = getattr(obj, "__dict__", None)
    if not isinstance(namespace, dict) or tp.__module__.partition(".")[0] != module_name.partition(".")[0]:
        return  # (a C object, or one of a class from elsewhere: a library's, counted by its name)
    found: Any = sys.modules.get(module_name, _NOWHERE)
    for part in name.split("."):
        found = getattr(found, part, _NOWHERE)
    if found is obj:
        feed(tp, h, walk)
        if namespace:
            feed_pairs(list(namespace.items()), h, walk, ordered=False, where=_attribute_path)


_NOWHERE = object()


def _attribute_path(name: Any) -> str:
    return f".{name}" if isinstance(name, str) else item_path(name)


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
