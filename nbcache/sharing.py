"""Which objects values lead to, by following references: what tells that two values share an object, so
that they are pickled together (one pickle keeps one object one object; two pickles make two copies).

A step's tuple whose elements share an object (``return pipe, pipe.named_steps["clf"]``) is stored as one
value (``step.py``); a ``%%step`` cell's variables that hold one another are stored together (``cellvars.py``).
References are followed with ``gc.get_referents``, a bounded number of objects from each value; code,
classes and modules are not followed (a function's globals are the whole notebook), nor values whose identity
no code can tell from their content (numbers, strings: two tuples holding ``1`` share nothing).
"""

from __future__ import annotations

import collections
import gc
import itertools
import re
import sys
import types
from typing import Any, Mapping, Sequence

__all__ = ["IPYTHON_NAMES", "NOT_FOLLOWED", "VALUES", "closed_over", "holding", "kernel_objects", "path_to",
           "paths_in", "reach", "shared_between"]

# Names IPython itself binds as cells run (_, __, _i3, _oh, ...): never a cell's outputs.
IPYTHON_NAMES = re.compile(r"_+\d*|_i+\d*|_(oh|dh|ih|ii|iii)|In|Out|exit|quit|get_ipython")
_HISTORY_CONTAINERS = ("Out", "_oh", "In", "_ih", "_dh")

# Values whose identity no code can tell apart from their content: two names bound to one are no alias.
VALUES = (int, float, complex, str, bytes, bool, type(None), frozenset, range, types.BuiltinFunctionType)

_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})  # they hold no object
_FEW = 16
_SCANNED = 8  # items of a container looked at, per object that may still be reached

NOT_FOLLOWED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                types.CodeType, types.FrameType)


def reach(roots: list[Any], limit: int, *, not_followed: tuple[type, ...] = NOT_FOLLOWED,
          views: bool = True, stop: frozenset[int] | set[int] = frozenset()) -> set[int]:
    """The ids of the objects ``roots`` lead to, themselves included, ``limit`` at most (numbers and strings
    in a container of more than a few are passed over: they lead nowhere); ``not_followed``
    types are not followed, nor the objects whose ids are in ``stop`` (not counted either). With ``views``,
    a numpy view leads to the array whose memory it is (``X_train = X[:150]``: a change through one is a
    change of the other). A numpy object array leads to what it holds (a DataFrame's column of models)."""
    np = sys.modules.get("numpy")
    seen: set[int] = set()
    todo = list(roots)
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen or id(obj) in stop or isinstance(obj, not_followed):
            continue
        seen.add(id(obj))
        found = gc.get_referents(obj)
        if len(found) > _FEW:  # (a list of numbers: none leads anywhere, not worth a look each; of a long one,
            found = [o for o in itertools.islice(found, _SCANNED * (limit - len(seen)))  # the first few thousand)
                     if type(o) not in _SCALARS]
        todo.extend(found)
        if np is not None and isinstance(obj, np.ndarray):  # (an array is no container the collector follows:
            if views and obj.base is not None:               # its base, and the objects an object array holds,
                todo.append(obj.base)                        # as a pandas column of models does)
            if obj.dtype.hasobject:
                todo.extend(itertools.islice(obj.flat, max(0, limit - len(seen))))
    return seen


def shared_between(values: Sequence[Any], limit: int = 2_000) -> bool:
    """Whether two of ``values`` lead to one object that is not a plain value; also True when that could not
    be told, one of them leading to more than ``limit`` objects (stored together then: nothing is lost)."""
    owner: dict[int, int] = {}
    skip = VALUES + NOT_FOLLOWED
    for i, value in enumerate(values):
        if isinstance(value, skip):
            continue
        found = reach([value], limit + 1, not_followed=skip, views=False)
        if len(found) > limit:
            return True
        for key in found:
            if owner.setdefault(key, i) != i:
                return True
    return False


def kernel_objects(ns: Mapping[str, Any]) -> set[int]:
    """The notebook's namespace ``ns`` and IPython's history in it (``Out``, ``In``), by id: every variable is in
    those, and the kernel leads to them (a variable keeping ``sys.stdout`` held the whole notebook, its
    session leading to the kernel, and the kernel to the shell): no variable holds another through them.
    Not ``_``, ``_3``: those are values the user's cells showed, which a variable may hold."""
    return {id(ns)} | {id(ns[n]) for n in _HISTORY_CONTAINERS if isinstance(ns.get(n), (dict, list))}


def holding(ns: Mapping[str, Any], targets: Mapping[int, str], skip: set[str] | frozenset[str], limit: int,
            not_followed: tuple[type, ...] = NOT_FOLLOWED) -> tuple[str, str] | None:
    """A variable of the notebook ``ns`` (not one of ``skip``, nor IPython's) that is, holds or is a bound method
    of an object of ``targets`` (ids, with a name for each), as (that variable, the target's name); None if
    none does. References are followed ``limit`` objects from each variable at most."""
    stop = kernel_objects(ns)
    for name, value in list(ns.items()):
        if name in skip or IPYTHON_NAMES.fullmatch(name) or name.startswith("__"):
            continue
        if type(value) is types.MethodType and id(value.__self__) in targets:
            return name, targets[id(value.__self__)]
        if isinstance(value, VALUES + not_followed):
            value = closed_over(value)  # (`score = make_scorer(lr)`: what a closure holds, it holds)
            if not value:
                continue
        found = targets.keys() & reach([value], limit, not_followed=not_followed, stop=stop)
        if found:
            return name, targets[next(iter(found))]
    return None


def closed_over(value: Any) -> list[Any]:
    """What a function holds: its closure (``make_scorer(lr)``'s ``lr``) and its default values (``def
    first(m=lr)``); [] for anything else."""
    if type(value) is not types.FunctionType:
        return []
    found = [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
    for cell in value.__closure__ or ():
        try:
            found.append(cell.cell_contents)
        except ValueError:  # (a cell not filled yet)
            continue
    return found


_KEYS = (str, int, float, bool, type(None))  # dict keys a path may go through


def path_to(root: Any, target: int, skip: tuple[type, ...], limit: int = 2_000,
            depth: int = 4) -> tuple[tuple[str, Any], ...]:
    """The way from ``root`` to the object whose id is ``target``, through dict items (of plain keys), list
    and tuple items and public attributes (``pipe.steps[0][1]``), ``depth`` steps and ``limit`` objects at
    most, not into values of ``skip`` types; () if there is none."""
    return paths_in(root, skip, limit, depth, target).get(target, ())


def paths_in(root: Any, skip: tuple[type, ...], limit: int = 2_000, depth: int = 4,
             target: int | None = None) -> dict[int, tuple[tuple[str, Any], ...]]:
    """The objects ``root`` holds (``path_to``'s ways), by id, with the way to each (the first found, the
    shortest); those of ``skip`` types not; up to ``target``'s, if given."""
    todo, found = collections.deque([(root, ())]), {id(root): ()}
    while todo and len(found) < limit:
        obj, path = todo.popleft()
        if isinstance(obj, dict):  # (a long container: its first ``limit`` items)
            steps = [("item", k, v) for k, v in itertools.islice(list(obj.items()), limit) if isinstance(k, _KEYS)]
        elif isinstance(obj, (list, tuple)):
            steps = [("item", i, v) for i, v in enumerate(itertools.islice(obj, limit))]
        elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, skip):
            steps = [("attr", k, v) for k, v in list(vars(obj).items()) if not k.startswith("_")]
        else:
            continue
        for kind, key, value in steps:
            if id(value) in found or isinstance(value, skip):
                continue
            found[id(value)] = (*path, (kind, key))
            if id(value) == target:
                return found
            if len(path) + 1 < depth:
                todo.append((value, found[id(value)]))
    found.pop(id(root))
    return found
