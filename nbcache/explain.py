"""What changed, in records and in words: pure functions over a step's ingredients and its run history.

``changes_since`` compares a call's ingredients with the step's latest ones and returns an ``Outcome`` and
the ``Change`` records; ``render`` turns them into the sentence ``StepRun.reason`` holds for people;
``describe_last_change`` is what ``%nbcache why`` and ``nbcache why`` print.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from .entry import Latest
from .key import CACHE_FORMAT
from .records import Change, ChangeKind, Outcome, StepRun

__all__ = ["changes_since", "render", "describe_last_change", "FORMAT_CHANGED", "KIND_WORDS"]

KIND_WORDS = {"function": "@step function", "cell": "%%step cell"}

FORMAT_CHANGED = Change(ChangeKind.FORMAT)
"""The step's latest ingredients were written by an nbcache of another cache format."""


def changes_since(last: Latest | None, code: str, deps: Mapping[str, str], inputs: Mapping[str, str],
                  version: str | None, kind: str = "function") -> tuple[Outcome, tuple[Change, ...]]:
    """How a call with these ingredients relates to the step's latest run: a first run, what changed, or
    nothing (``REMOVED``: with the same ingredients, its result is simply not stored any more)."""
    if last is None:
        return Outcome.FIRST_RUN, ()
    if last.format != CACHE_FORMAT:  # its results were stored in a layout this nbcache does not read
        return Outcome.FIRST_RUN, (FORMAT_CHANGED,)
    if last.kind != kind:  # one name, used by a function before and by a cell now (or back)
        return Outcome.FIRST_RUN, (Change(ChangeKind.KIND, before=last.kind, after=kind),)
    changes = []
    if last.code != code:
        old = last.deps
        changed = [label for label in sorted(set(old) | set(deps)) if old.get(label) != deps.get(label)]
        changes += [Change(ChangeKind.CODE, c) for c in changed if c.endswith("()")]
        changes += [Change(ChangeKind.GLOBAL, c) for c in changed if not c.endswith("()")]
        if not changed:
            changes.append(Change(ChangeKind.CODE))
    changes += [Change(ChangeKind.INPUT, n) for n in sorted(set(last.inputs) | set(inputs))
                if last.inputs.get(n) != inputs.get(n)]
    if last.version != version:
        changes.append(Change(ChangeKind.VERSION, before=last.version, after=version))
    return (Outcome.CHANGED, tuple(changes)) if changes else (Outcome.REMOVED, ())


def render(outcome: Outcome, changes: Sequence[Change], kind: str = "function") -> str:
    """The words for a first run, a change or a removed result (other outcomes carry their own)."""
    by_kind: dict[ChangeKind, list[Change]] = {}
    for change in changes:
        by_kind.setdefault(change.kind, []).append(change)
    if ChangeKind.FORMAT in by_kind:
        return "first run with this nbcache's cache format (results of the older one are not read)"
    if ChangeKind.KIND in by_kind:
        change = by_kind[ChangeKind.KIND][0]
        now, before = (KIND_WORDS.get(k or "", k) for k in (change.after, change.before))
        return f"first run as a {now} (its last run was a {before})"
    if outcome is Outcome.FIRST_RUN:
        return "first run"
    if outcome is Outcome.REMOVED:
        return "cached result was removed"
    parts = []
    functions = [c.name for c in by_kind.get(ChangeKind.CODE, ()) if c.name]
    if functions:
        parts.append("code changed: " + ", ".join(functions))
    values = [c.name for c in by_kind.get(ChangeKind.GLOBAL, ())]
    if values:
        parts.append(f"global{'s' if len(values) > 1 else ''} {', '.join(values)} changed")
    if ChangeKind.CODE in by_kind and not functions and not values:
        parts.append("code changed")
    names = [c.name for c in by_kind.get(ChangeKind.INPUT, ())]
    if names:
        noun = "argument" if kind == "function" else "input"
        parts.append(f"{noun}{'s' if len(names) > 1 else ''} {', '.join(names)} changed")
    for change in by_kind.get(ChangeKind.VERSION, ()):
        parts.append(f"version changed from {change.before!r} to {change.after!r}")
    parts += [c.name for c in by_kind.get(ChangeKind.READ, ())]
    return "; ".join(parts) or "cached result was removed"


def describe_last_change(runs: Sequence[StepRun], name: str) -> str | None:
    """In words, how a step's last run went and what changed since its previous one; and, when the last
    run came from the cache, why the step last ran (None: it never ran)."""
    runs = [r for r in runs if r.step == name]
    if not runs:
        return None
    lines = [_describe(runs, len(runs) - 1)]
    if runs[-1].cached:  # the run that computed the result it returned: same key, ran, and stored it
        key = runs[-1].key
        ran = next((i for i in range(len(runs) - 1, -1, -1)
                    if runs[i].key == key and not runs[i].cached and runs[i].status == "ok"), None)
        lines.append("the run that computed its result is not in this directory's history" if ran is None
                     else "its result was computed " + _describe(runs, ran, with_name=False))
    return "\n".join(lines)


def _describe(runs: Sequence[StepRun], i: int, with_name: bool = True) -> str:
    """Run ``i`` of one step's runs: when, how and why; and what changed since the run before it."""
    run = runs[i]
    state = {"hit": "came from the cache"}.get(run.outcome, run.outcome)
    when = f"{run.started_at.astimezone():%Y-%m-%d %H:%M:%S}"
    head = (f"{run.step} {state} at {when}" if with_name else f"at {when}") + f": {run.reason}"
    if i == 0:
        return head + (" (its only run)" if len(runs) == 1 else " (its first recorded run)")
    previous = runs[i - 1]
    last = Latest(key=previous.key, code=previous.code, deps=previous.deps, inputs=previous.inputs,
                  version=previous.version, kind=previous.kind)
    outcome, changes = changes_since(last, run.code, run.deps, run.inputs, run.version, run.kind)
    # its code and inputs are as before: the reason says what was not
    change = "its code and inputs did not change" if outcome is Outcome.REMOVED else render(outcome, changes, run.kind)
    return f"{head}\n  since its previous run: {change}"
