"""What changed between two states of one shape, and making that same change to the state as it is now.

An ambient state (``ambient.py``) is one of three shapes: a *value* (a random generator's state, the
working directory), a *mapping* (options, rc settings, environment variables) or a *sequence* (warnings
filters, ``sys.path``). A step's run is stored with what it changed, in its shape's terms, not with the
whole state after it: a hit applies the change to the state as it is now, so it never undoes what other
cells, the kernel or the user did since. Plain functions of values; nothing here reads the process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EMPTY", "SAME", "SHAPES", "applied", "change", "contains", "equal"]

SHAPES = ("value", "mapping", "sequence")
SAME: Any = object()  # what `change` gives when nothing changed
EMPTY: dict[str, Any] = {"mapping": {}, "sequence": []}  # a state before its library was imported


def equal(a: Any, b: Any) -> bool:
    """``a == b``, for states that may hold arrays (numpy's random state) or refuse to compare."""
    if a is b:
        return True
    try:
        result = a == b  # one comparison in C for most states (625 ints, a dict of options)
        if isinstance(result, bool):
            return result
        return bool(result.all()) if hasattr(result, "all") else bool(result)
    except Exception:
        pass
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return False


def contains(items: list, item: Any) -> bool:
    """``item in items``, by `equal`."""
    return any(equal(item, other) for other in items)


def change(shape: str, before: Any, after: Any) -> Any:
    """What turned ``before`` into ``after``, in ``shape``'s terms; SAME if nothing did.

    A value's change is the new value. A mapping's is ``{"set": {key: value}, "unset": [key]}``. A
    sequence's is ``{"front": [...], "back": [...], "removed": [...]}``: the entries put (or moved) in
    front, those appended at the end, and those taken out.
    """
    if equal(before, after):
        return SAME
    if shape == "mapping":
        changed = {k: v for k, v in after.items() if k not in before or not equal(before[k], v)}
        removed = [k for k in before if k not in after]
        return {"set": changed, "unset": removed} if changed or removed else SAME
    if shape == "sequence":
        removed = [e for e in before if not contains(after, e)]
        back = 0  # entries appended at the end (sys.path.append)
        while back < len(after) and not contains(before, after[len(after) - 1 - back]):
            back += 1
        core = after[:len(after) - back]
        # the longest end of the rest whose entries keep their order from before: what precedes it was
        # put in front (warnings.filterwarnings inserts there; simplefilter moves an existing filter)
        i, j = len(core), len(before)
        while i > 0:
            k = j - 1
            while k >= 0 and not equal(before[k], core[i - 1]):
                k -= 1
            if k < 0:
                break
            i, j = i - 1, k
        return {"front": core[:i], "back": after[len(after) - back:], "removed": removed}
    return after


def applied(shape: str, current: Any, delta: Any) -> Any:
    """The state ``current`` with the change ``delta`` (from `change`) made to it (for a value, ``current``
    is not looked at: the change is the new value)."""
    if shape == "mapping":
        return {**{k: v for k, v in current.items() if k not in delta["unset"]}, **delta["set"]}
    if shape == "sequence":
        front, back = delta["front"], delta["back"]
        kept = [e for e in current if not contains(delta["removed"], e) and not contains(front, e)]
        return [*front, *kept, *(e for e in back if not contains(kept, e))]
    return delta
