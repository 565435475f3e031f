"""The variables of the user's own modules, before and after a step runs.

A run that changes one (``config.THRESHOLD = 0.9``, ``config.SETTINGS["mode"] = "fast"``, a counter or a
list a helper module keeps) leaves the kernel as a hit would not: the body does not run, so the module
keeps what it held. Such a step is not stored; it runs every time and says which variables it changes.
The modules of libraries are not compared (they keep caches of their own); what the user's own code
assigns to one is found in the cell's code instead (``celleffects.py``).

A variable holding plain data, the standard library's containers, a random generator or an object of the
user's own classes is compared by its content hash (``hash_value``; a list, dict or set past ``BIG`` items
by its length); a library's other objects (an array, ``rcParams`` imported from matplotlib), functions and
classes by identity: whether the variable was bound to another one. Not compared: names of the form
``__x__`` (``__warningregistry__``), variables that hold modules (what an import binds: a hit imports
again), and the modules a run reloads (a hit reloads them too).
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any, Mapping, Sequence

from .fingerprint_source import is_user_file, library_roots, users_class
from .hashing import hash_value

__all__ = ["ModuleStates", "changed_variables", "module_attributes", "module_states", "unrepeatable"]

_ABSENT = object()

ModuleStates = dict[str, tuple[int, dict[str, Any]]]
"""By module name: the module's ``id`` and, by variable, its digest (``_digest``)."""


_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None), list, dict, set, frozenset, tuple, bytearray})
# the standard library's containers and records, and random generators (a library's object, but what it
# holds is what it gives next), are compared by content too
_DATA_MODULES = frozenset({"collections", "types", "datetime", "decimal", "fractions", "random", "numpy.random",
                           "numpy.random._generator", "numpy.random.mtrand"})
BIG = 10_000  # items of a list, dict or set past which only its length counts: hashing it at each run costs
#               seconds (a million-entry dict: 4 s), and a module holding one is mostly a table, seldom changed


def _by_content(kind: type) -> bool:
    """Plain data, the standard library's containers (``Counter``, ``defaultdict``, ``SimpleNamespace``),
    random generators and the objects of the user's own classes; not a library's other objects (``from
    matplotlib import rcParams``, ``from os import environ``), which change as the library works (and what
    nbcache keeps of them, it sets again on a hit)."""
    return kind in _PLAIN or getattr(kind, "__module__", None) in _DATA_MODULES or users_class(kind)


def _digest(value: Any) -> Any:
    if callable(value) or not _by_content(type(value)):  # (a function, a class, a step; a library's object)
        return ("id", id(value))
    if isinstance(value, (list, dict, set, frozenset, tuple)) and len(value) > BIG:
        return ("big", id(value), len(value))
    try:
        return hash_value(value)
    except Exception:  # (what cannot be hashed: whether it is the same object)
        return ("id", id(value))


def _variables(module: types.ModuleType) -> dict[str, Any]:
    return {name: _digest(value) for name, value in list(vars(module).items())
            if not (name.startswith("__") and name.endswith("__")) and not isinstance(value, types.ModuleType)}


def _users(namespace: Mapping[str, Any] | None) -> list[types.ModuleType]:
    """The user's modules imported now, but the one whose variables are ``namespace`` (the notebook's). A
    file found under a library's folder as it is named is a library's without resolving its links (which
    takes 0.1 s for the two thousand modules of a kernel that imported scikit-learn)."""
    roots = library_roots()
    found = []
    for name, module in list(sys.modules.items()):
        path = module.__dict__.get("__file__") if isinstance(module, types.ModuleType) else None
        if (isinstance(path, str) and not path.startswith(roots) and name != "__main__"
                and module.__dict__ is not namespace and is_user_file(path)):
            found.append(module)
    return found


def module_states(namespace: Mapping[str, Any] | None = None) -> ModuleStates:
    """The variables of every module of the user's imported now (not the notebook's own namespace)."""
    return {m.__name__: (id(m), _variables(m)) for m in _users(namespace)}


def changed_variables(before: ModuleStates, skip: Mapping[str, Any] = {}) -> list[str]:
    """``module.variable`` for each variable of a module in ``before`` that was bound, rebound, changed in
    place or deleted since, but in the modules ``skip`` names; in the order of the modules, then of their
    variables."""
    changed = []
    for name, (identity, variables) in before.items():
        module = sys.modules.get(name)
        if module is None or id(module) != identity or name in skip:
            continue
        now = _variables(module)
        changed += [f"{name}.{v}" for v in [*variables, *(v for v in now if v not in variables)]
                    if variables.get(v) != now.get(v)]
    return changed


def module_attributes(namespace: Mapping[str, Any], dotted: Sequence[str]) -> list[str]:
    """``module.attribute`` for each of the ``dotted`` names a cell's code assigns or deletes (``np.flag``,
    ``torch.backends.cudnn.benchmark``) whose owner is a module, found in ``namespace`` as the run left it
    (not by calling anything: a property is not read)."""
    found = []
    for name in dotted:
        *path, attribute = name.split(".")
        owner = namespace.get(path[0], _ABSENT) if path else _ABSENT
        for part in path[1:]:
            owner = inspect.getattr_static(owner, part, _ABSENT) if owner is not _ABSENT else _ABSENT
        if isinstance(owner, types.ModuleType) and owner.__dict__ is not namespace:
            found.append(f"{owner.__name__}.{attribute}")
    return list(dict.fromkeys(found))


def unrepeatable(changed: list[str]) -> str:
    """Why a run that changed these variables of modules is not stored."""
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"it changes {shown} (a variable of a module), which a hit would not change again"
