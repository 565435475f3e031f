"""What a library's decorator was given, of what the function it made holds in its closure: the code it
wraps, plain values, the context manager it enters (``np.errstate(...)``, a ``mock.patch``); not the state it
keeps as it works (a memo, a dispatch cache, a lock), which changes as the function is used and is no input of
a step. Only a decorator around the user's code counts so (``fingerprint_handlers._feed_function``): a
library's own functions count by name and version.
"""

from __future__ import annotations

import contextlib
import functools
import types
from typing import Any

from .fingerprint_source import MISSING, is_user_file

__all__ = ["GENERATOR_CONTEXT", "closure_of", "given", "holds_users", "is_users"]

GENERATOR_CONTEXT = type(contextlib.contextmanager(lambda: (yield))())
"""The context manager a ``@contextmanager`` function returns."""


def closure_of(func: types.FunctionType) -> dict[str, Any]:
    """What a function's closure holds, by name (``MISSING`` for a cell not yet filled)."""
    values = {}
    for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
        try:
            values[name] = cell.cell_contents
        except ValueError:  # a cell not yet filled
            values[name] = MISSING
    return values


def holds_users(cells: tuple | None) -> bool:
    """Whether a closure holds a function of the user's."""
    for cell in cells or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if type(value) is types.FunctionType and is_user_file(value.__code__.co_filename):
            return True
    return False


def is_users(value: Any) -> bool:
    """Whether ``value`` is a function of the user's (behind ``__wrapped__``s, a few deep)."""
    for _ in range(8):
        if isinstance(value, types.FunctionType):
            if is_user_file(value.__code__.co_filename):
                return True
        value = getattr(value, "__wrapped__", None)
        if value is None:
            return False
    return False


_ATOM_TYPES = (type(None), bool, int, float, complex, str, bytes)


def _plain(value: Any, depth: int = 2) -> bool:
    """A value given to a decorator, not state it keeps as it works (a memo, a dispatch cache, a lock)."""
    if isinstance(value, _ATOM_TYPES + (types.FunctionType, types.BuiltinFunctionType, type)):
        return True
    if depth and type(value) in (tuple, frozenset):
        return all(_plain(item, depth - 1) for item in value)
    if depth and type(value) is functools.partial:
        return _plain(value.func, depth - 1) and _plain(value.args, depth - 1) and not value.keywords
    return getattr(value, "__dict__", None) == {} and not getattr(type(value), "__slots__", ())  # (a sentinel)


def given(value: Any) -> bool:
    """What a library's decorator was given, of what its closure holds: code, plain values, and the context
    manager it enters (``np.errstate(...)``, a ``mock.patch``), whose own attributes are plain."""
    if _plain(value):
        return True
    if isinstance(value, GENERATOR_CONTEXT):
        return True
    if hasattr(type(value), "__enter__") and hasattr(type(value), "__exit__"):
        attributes = dict(getattr(value, "__dict__", None) or {})
        for cls in type(value).__mro__:  # (np.errstate keeps its settings in slots)
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                attributes[slot] = getattr(value, slot, None)
        return bool(attributes) and all(
            _plain(v) or (type(v) in (list, dict) and len(v) <= 16 and all(_plain(x) for x in (
                v.values() if type(v) is dict else v))) for v in attributes.values())
    return False
