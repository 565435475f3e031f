"""numpy views stored as views: ``X = data[:, :2]`` made by a ``%%step`` cell that stores ``data`` too, or
that reads it (an input the run left unchanged), is, after a hit, a view of the ``data`` the hit gives, or
finds, sharing its memory as after the run (a write to ``X`` writes ``data``), not a copy of it.
``pickler.py`` asks ``view_of`` of each array it stores.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any, Mapping, Sequence

__all__ = ["Live", "by_memory", "view_of"]


class Live(dict):
    """The ``live`` references of a payload (``NotebookPickler``), and ``arrays``: arrays it stores, whose
    views it stores as views of them."""

    arrays: tuple = ()


def by_memory(arrays: Sequence[Any]) -> dict[int, list[tuple[Any, int, int]]]:
    """Of ``arrays``, the bases of views: those that are one C-contiguous block of plain data (``np.ndarray(
    buffer=...)`` takes no other) and lie inside no bigger one, with where their memory begins and ends, by
    the id of the array that owns it."""
    found: dict[int, list[tuple[Any, int, int]]] = {}
    for array in sorted(arrays, key=lambda a: -a.nbytes):
        if array.flags.c_contiguous and not array.dtype.hasobject and array.nbytes:
            begins = array.__array_interface__["data"][0]
            bases = found.setdefault(id(_owner(array)), [])
            if not any(b <= begins and begins + array.nbytes <= e for _, b, e in bases):
                bases.append((array, begins, begins + array.nbytes))
    return found


def _owner(array: Any) -> Any:
    """The array whose memory ``array`` is (numpy's ``base`` is that one already, or a chain to it; through
    the object ``as_strided`` and ``sliding_window_view`` put between a view and its array, too)."""
    ndarray = sys.modules["numpy"].ndarray
    while True:
        base = array.base
        if not isinstance(base, ndarray) and hasattr(base, "__array_interface__"):
            base = getattr(base, "base", None)
        if not isinstance(base, ndarray):
            return array
        array = base


def view_of(obj: Any, arrays: Mapping[int, list[tuple[Any, int, int]]]) -> tuple | None:
    """How to store a numpy array that is a view of one of the bases ``arrays`` (``by_memory``'s), as that
    view of it: where it starts in its memory, its shape, strides and dtype; None for anything else (a base
    itself, or a view of none of them: a copy)."""
    np = sys.modules.get("numpy")
    if np is None or type(obj) not in (np.ndarray, np.memmap) or obj.dtype.hasobject or not obj.size:
        return None
    bases = arrays.get(id(_owner(obj)), ())
    if any(base is obj for base, _, _ in bases):
        return None
    start = obj.__array_interface__["data"][0]
    low = start + sum(min(0, s * (n - 1)) for s, n in zip(obj.strides, obj.shape))
    high = start + sum(max(0, s * (n - 1)) for s, n in zip(obj.strides, obj.shape)) + obj.itemsize
    for base, begins, ends in bases:  # (one that may be written while its base may not cannot be made again)
        if begins <= low and high <= ends and (base.flags.writeable or not obj.flags.writeable):
            laid_out = (base.shape, base.strides, base.dtype.str)
            return _make_view, (base, start - begins, obj.shape, obj.strides, obj.dtype, obj.flags.writeable,
                                laid_out)
    return None


def _make_view(base: Any, offset: int, shape: tuple, strides: tuple, dtype: Any, writeable: bool = True,
               laid_out: tuple | None = None) -> Any:
    """The view of ``base`` that ``view_of`` described: its memory shared, as when it was stored, and read-only
    if it was (``np.broadcast_to``'s, one made so). A base that is a notebook variable, as it is now (equal
    to the one the run had: the key says so), must be laid out as that one was, and writeable if the view was:
    else the value does not load, and the cell runs."""
    if laid_out is not None and ((base.shape, base.strides, base.dtype.str) != laid_out
                                 or (writeable and not base.flags.writeable)):
        raise pickle.UnpicklingError("an array it is a view of is laid out otherwise now, or cannot be written")
    view = sys.modules["numpy"].ndarray(shape, dtype, buffer=base, offset=offset, strides=strides)
    if not writeable:
        view.flags.writeable = False
    return view
