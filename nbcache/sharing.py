"""Which objects values lead to, by following references: what tells that two values share an object, so
that they are pickled together (one pickle keeps one object one object; two pickles make two copies).

A step's tuple whose elements share an object (``return pipe, pipe.named_steps["clf"]``) is stored as one
value (``step.py``); a ``%%step`` cell's variables that hold one another are stored together (``cellvars.py``).
References are followed with ``gc.get_referents``, a bounded number of objects from each value; code,
classes and modules are not followed (a function's globals are the whole notebook), nor values whose identity
no code can tell from their content (numbers, strings: two tuples holding ``1`` share nothing).
"""

from __future__ import annotations

import gc
import itertools
import sys
import types
from typing import Any, Sequence

__all__ = ["NOT_FOLLOWED", "VALUES", "reach", "shared_between"]

# Values whose identity no code can tell apart from their content: two names bound to one are no alias.
VALUES = (int, float, complex, str, bytes, bool, type(None), frozenset, range, types.BuiltinFunctionType)

NOT_FOLLOWED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                types.CodeType, types.FrameType)


def reach(roots: list[Any], limit: int, *, not_followed: tuple[type, ...] = NOT_FOLLOWED,
          views: bool = True, stop: frozenset[int] | set[int] = frozenset()) -> set[int]:
    """The ids of the objects ``roots`` lead to, themselves included, ``limit`` at most; ``not_followed``
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
        todo.extend(gc.get_referents(obj))
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
