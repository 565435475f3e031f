"""Checks of the notebook's variables and modules (``checks.Check`` kinds ``variable``, ``held``, ``holder``,
``alone`` and ``module``): whether what a ``%%step`` cell's stored result refers to, or was stored beside, is
still as the run left it. Each gives why it no longer holds, in words, or None.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any

from .hashing import hash_holding, hash_value
from .sharing import holding, reach

__all__ = ["HELD_LIMIT", "UNHASHABLE", "alone_failure", "held_failure", "holder_failure", "module_failure",
           "variable_failure"]

UNHASHABLE = "?"  # the digest of a variable or state that could not be hashed: the check never holds
HELD_LIMIT = 2_000  # objects followed from each output, to find a variable one holds (``cellvars.HOLD_LIMIT``)
_ABSENT = object()


def variable_failure(target: str, digest: str, namespace: dict | None) -> str | None:
    """A variable read through eval or exec (the target: its name): as the run found it."""
    if digest == UNHASHABLE:
        return f"variable {target}, read through eval/exec, cannot be hashed to tell if it changed"
    value = (namespace or {}).get(target, _ABSENT)
    if ("" if value is _ABSENT else _digest_now(hash_value, value)) != digest:
        return f"variable {target} (read through eval/exec) changed"
    return None


def held_failure(target: str, digest: str, namespace: dict | None) -> str | None:
    """A variable an output holds (``rf`` in ``models``): every name bound to it then is bound to one object
    now, which the outputs as they are now hold (``models`` as an earlier cell left it), with the content
    it had (the target: the names, then ``|`` and the outputs, each tab-separated)."""
    named, _, outputs = target.partition("|")
    names, holders = named.split("\t"), [n for n in outputs.split("\t") if n]
    values = [(namespace or {}).get(n, _ABSENT) for n in names]
    missing = [n for n, v in zip(names, values) if v is _ABSENT]
    if missing:
        return f"variable {missing[0]}, which an output of it holds, is not defined"
    if any(v is not values[0] for v in values):
        return f"{', '.join(names)}, one object when it ran (an output of it holds it), are no longer one"
    found = [(namespace or {})[n] for n in holders if n in (namespace or {})]
    if holders and id(values[0]) not in reach(found, HELD_LIMIT * len(found)):
        return f"variable {names[0]}, which an output of it holds, is another object now"
    if _digest_now(hash_value, values[0]) != digest:
        return f"variable {names[0]}, which an output of it holds, changed"
    return None


def holder_failure(target: str, digest: str, namespace: dict | None) -> str | None:
    """A variable stored as it holds what the run changed (``models``, holding the ``lr`` it fits): as the
    run found it, but for those (the target: its name, then theirs, tab-separated)."""
    holder, *changed = target.split("\t")
    ns = namespace or {}
    if holder not in ns:
        return f"variable {holder}, which it stored as it holds {', '.join(changed)}, is not defined"
    if _digest_now(hash_holding, ns[holder], {n: ns[n] for n in changed if n in ns}) != digest:
        return f"variable {holder}, which it stored as it holds {', '.join(changed)}, changed"
    return None


def module_failure(target: str, digest: str) -> str | None:
    """An object of a module an output is or holds (``from helpers import REGISTRY``), stored as a reference
    to it (``cellvars.module_objects``): a hit binds the module's object as it is then, which must be as
    the run left it (target: module, tab, attribute); a cell that changes it (``REGISTRY.append``) runs."""
    module, _, attribute = target.partition("\t")
    what = f"{module}.{attribute}, which it binds or holds,"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # (what an import prints: shown where it runs)
            value = getattr(importlib.import_module(module), attribute)
    except Exception as exc:
        return f"{what} cannot be had now ({type(exc).__name__})"
    if _digest_now(hash_value, value) != digest:
        return f"{what} differs from when it was cached (it changes it, or the module makes it anew at each run)"
    return None


def alone_failure(target: str, digest: str, namespace: dict | None) -> str | None:
    """Inputs it changed in place (``lr`` it fits), which a hit binds to the objects stored instead: held by
    no variable but those it stores (the target: their names, then ``|`` and those, each tab-separated),
    as a variable made since to hold one (``models = {"lr": lr}`` above) would keep it unchanged."""
    named, _, stored = target.partition("|")
    ns = namespace or {}
    targets = {id(ns[n]): n for n in named.split("\t") if n in ns}
    found = holding(ns, targets, set(stored.split("\t")), HELD_LIMIT) if targets else None
    if found is None:
        return None
    holder, held = found
    return (f"variable {holder} holds {held}, which it changes in place, and did not when it was cached: a hit"
            f" would leave {holder} holding {held} unchanged")


def _digest_now(digest: Any, *args: Any) -> str:
    """``digest(*args)``, or ``UNHASHABLE`` if it cannot be had: a check on it then does not hold."""
    try:
        return digest(*args)
    except Exception:
        return UNHASHABLE
