"""What a cell may change of the code it reads, besides its variables, and what that code reads of the
notebook: a function's default values, what its closure holds (``nonlocal`` counts, arrays), a class's
attributes (methods added too), the instance of a bound method, the classes of the user's objects a cell
reads (``reg.items.append(x)`` changes ``Registry``). A cell that changes one is not stored: a hit would
not change it again (``cellstep.py``). Plain functions of a namespace; no IPython.
"""

from __future__ import annotations

import sys
import types
from typing import Any, Iterator, Mapping, Sequence

from .fingerprint_code import code_info
from .fingerprint_source import is_user_code, users_class
from .hashing import hash_value

__all__ = ["changed_classes", "code_read", "code_state", "code_states", "functions_of", "notebook_reads"]

# What a cell may change besides variables: default values, what a closure holds, class attributes, the
# instance of a bound method (``code_state``).
_CODE = (types.FunctionType, type, types.MethodType, types.BuiltinMethodType)
_ABSENT = object()


def code_read(ns: Mapping[str, Any], names: Sequence[str]) -> list[Any]:
    """The code a cell reading ``names`` may run of the user's: the functions and classes among them, and the
    classes of the user's objects among them (``ev.run(3)``), with their bases of the user's."""
    found: list[Any] = []
    for name in names:
        value = ns.get(name, _ABSENT)
        if value is _ABSENT:
            continue
        if callable(value):
            found.append(value)
        elif users_class(type(value)):
            found += [kind for kind in type(value).__mro__ if users_class(kind)]
    return list({id(v): v for v in found}.values())


def notebook_reads(code: Sequence[Any], ns: Mapping[str, Any]) -> set[str]:
    """The names of ``ns`` (the notebook's) that the notebook's own functions among ``code`` read, with the
    functions and the methods of the classes they lead to in it (``functions_of``). A function of a module of
    the user's reads that module's globals: a name in both is not the notebook's."""
    found: set[str] = set()
    seen: set[int] = set()
    todo = list(code)
    while todo:
        value = todo.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for f in functions_of(value):
            if f.__globals__ is not ns:
                continue
            for chain in code_info(f.__code__).global_chains:
                if chain[0] in ns and chain[0] not in found:
                    found.add(chain[0])
                    if callable(ns[chain[0]]):
                        todo.append(ns[chain[0]])
    return found


def functions_of(value: Any) -> Iterator[types.FunctionType]:
    """The Python functions ``value`` is or runs: itself, or for a class its methods (static, class methods and
    properties' too), each with the functions its decorators wrapped (``__wrapped__``, as ``inspect`` finds
    them). Data is not asked for attributes."""
    for member in vars(value).values() if isinstance(value, type) else (value,):
        if not (callable(member) or isinstance(member, property)):
            continue
        for f in (member, *(getattr(member, a, None) for a in ("__func__", "fget", "fset", "fdel"))):
            for _ in range(100):  # (a chain of wrappers, never a cycle of them)
                if isinstance(f, types.FunctionType):
                    yield f
                try:
                    f = getattr(f, "__wrapped__", None)
                except Exception:  # (an attribute that raises)
                    break
                if f is None:
                    break


def code_state(value: Any) -> str | None:
    """The hash of what a function or a class of the user's (the notebook's, or a module of theirs) holds
    besides its code: a function's default values, its attributes and what its closure holds (``counter.calls
    += 1``, a registry appended to, a ``nonlocal`` count, an array), a class's attributes (``Point.describe =
    describe``: a function, by identity), a bound method's instance (``tick = tracker.tick``; of a library's
    method too: ``fit = model.fit``, ``log = rows.append``). Only ever compared with itself before a run.
    None for anything else (a library's, which may keep caches of its own in them), or what cannot be
    hashed."""
    if isinstance(value, (types.MethodType, types.BuiltinMethodType)):  # (`fit = model.fit`, `log = rows.append`)
        owner = getattr(value, "__self__", None)
        if owner is None or isinstance(owner, (types.ModuleType, type)):  # (`len`, a class method)
            return code_state(getattr(value, "__func__", None))
        if (isinstance(value, types.BuiltinMethodType) and not isinstance(owner, (list, dict, set, bytearray))
                or any(owner is g for g in _global_generators())):
            return None  # (a library's C object; `rand`, the global generator's method, is ambient state)
        return _hashed((code_state(getattr(value, "__func__", None)), _state_of(owner)))
    module = getattr(value, "__module__", None)
    if isinstance(value, types.FunctionType):
        if not is_user_code(module, value.__code__.co_filename):
            return None
        cells = [_state_of(_contents(c)) for c in value.__closure__ or ()]
        attributes = {k: _state_of(v) for k, v in vars(value).items() if k != "__wrapped__"}
        state: Any = (value.__defaults__, value.__kwdefaults__, attributes, cells)
    elif isinstance(value, type):
        if not users_class(value):
            return None
        state = {k: _state_of(v) for k, v in vars(value).items() if not (k[0] == "_" and k[-1] == "_")}
        # (``__x__`` names, and the ``_x_`` ones enum keeps its members in: ``Perm.R | Perm.W`` adds one)
    else:
        return None
    return _hashed(state)


def _global_generators() -> list[Any]:
    """The hidden generators behind ``random.random`` and ``numpy.random.rand`` (``ambient.py`` keeps them)."""
    return [getattr(getattr(sys.modules.get(m), f, None), "__self__", None)
            for m, f in (("random", "random"), ("numpy.random", "rand"))]


def code_states(ns: Mapping[str, Any], names: Sequence[str]) -> tuple[dict[str, str | None], dict[type, str | None]]:
    """Before a cell runs, the ``code_state`` of the functions, classes and bound methods among ``names``, and
    of the classes of the user's objects among them (``reg.items.append(x)`` changes ``Registry``)."""
    by_name = {n: code_state(ns[n]) for n in names if isinstance(ns.get(n), _CODE)}
    named = {id(ns[n]) for n in by_name}
    return by_name, {kind: code_state(kind) for kind in code_read(ns, names)
                     if isinstance(kind, type) and id(kind) not in named}


def changed_classes(states: Mapping[type, str | None]) -> list[str]:
    """The classes whose ``code_state`` is no longer the one in ``states``."""
    return [kind.__qualname__ for kind, state in states.items() if state is not None and code_state(kind) != state]


def _state_of(value: Any) -> Any:
    """A value held by a function or a class: code by identity (its own code is the key's), data by content."""
    if callable(value) or isinstance(value, (types.ModuleType, staticmethod, classmethod, property)):
        return ("id", id(value))
    try:
        return hash_value(value)
    except Exception:  # (what cannot be hashed: whether it is the same object)
        return ("id", id(value))


def _hashed(state: Any) -> str | None:
    try:
        return hash_value(state)
    except Exception:
        return None


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # (empty)
        return None
