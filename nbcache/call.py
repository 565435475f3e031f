"""One call of a step, whatever kind: its key, serving it from the store, saving it, and its record.

``@step`` functions (``step.py``) and ``%%step`` cells (``magics.py``) differ in how they find their inputs
and run their body; everything else, from the key to the sentence that says why a step ran, is here.
"""

from __future__ import annotations

import time
import weakref
from datetime import datetime
from typing import Any, Sequence

from . import ambient
from .errors import UncacheableError
from .errors import warn as _warn
from .hashing import Walk, hash_value
from .key import make_key
from .observe import Observer, checks_from_json, first_failure, inherit
from .records import StepRun
from .store import ENOVAL, Damaged, DiskStore, Frame

__all__ = ["StepCall", "addresses_of", "describe_last_change", "explain_change", "forget_last_written",
           "subscribe"]

# The key each step's "last" record holds, as far as this process knows, so a hit writes it only on change.
_last_written: dict[tuple[str, str], str] = {}

# Called with every StepRun this process records (the lineage widget redraws itself from them).
_listeners: list[weakref.WeakMethod] = []


def subscribe(method: Any) -> None:
    """Call the bound ``method(run)`` after each step run of this process, while its object lives."""
    _listeners.append(weakref.WeakMethod(method))


def _notify(run: StepRun) -> None:
    for ref in list(_listeners):
        method = ref()
        if method is None:
            _listeners.remove(ref)
            continue
        try:
            method(run)
        except Exception:  # a display that fails to update must not fail the user's step
            pass


class StepCall:
    """Key, lookup, save and record for one call. Subclasses fill ``code``, ``deps`` and ``inputs``."""

    def __init__(self, store: DiskStore, name: str, *, version: str | None, started_at: datetime, t0: float,
                 kind: str = "function", enabled: bool = True, identity: str | None = None) -> None:
        self.store = store
        self.enabled = enabled  # False: the user turned caching off for this step
        self.name = name
        self.identity = identity or name  # what keys and the latest ingredients are filed under
        self.always_runs: str | None = None  # why this step is never served from the cache (a shell escape)
        self.namespace: dict | None = None  # the notebook's variables, for the ones read through eval
        self.observer: Observer | None = None  # what the run turned out to depend on
        self.allow_shell = True  # False: a program its own code starts makes the run unrepeatable (cells)
        self.version = version
        self.kind = kind
        self.started_at = started_at
        self.t0 = t0
        self.code = ""
        self.deps: dict[str, str] = {}
        self.inputs: dict[str, str] = {}
        self.key = ""
        self.sizes: dict[str, int] = {}  # stored bytes of each output, by address
        self.problem: str | None = None  # why this call cannot be cached, as the run's reason
        self.problem_detail = ""  # the same, in full, for the warning

    def hash_input(self, name: str, value: Any, noun: str) -> bool:
        """Hash one input; on failure note the problem and return False."""
        walk = Walk()
        try:
            self.inputs[name] = hash_value(value, root=name, walk=walk)
        except UncacheableError as exc:
            self.problem = f"uncacheable {noun} {exc.path} ({exc.type_name})"
            self.problem_detail = str(exc)
            return False
        self.note_globals_reader(walk)
        return True

    def note_globals_reader(self, walk: Walk) -> None:
        """A function of the user's that this step calls reads the namespace through ``globals()``: what it
        reads cannot be known, so the step runs every time (erring toward running)."""
        if walk.globals_reader and not self.always_runs:
            self.always_runs = (f"{walk.globals_reader} reads the notebook's variables through globals(), so"
                                " nbcache cannot tell which ones it depends on")

    def make_key(self) -> None:
        """Make the key from the ingredients gathered, or warn why this call cannot have one."""
        if self.problem:
            if self.enabled:
                _warn(f"nbcache: step {self.name!r} runs without the cache: {self.problem_detail}")
            return
        self.key = make_key(self.identity, self.code, self.inputs, self.version)

    def run(self) -> Any:
        """Serve the call from the store, or run it (and store it, when it can be)."""
        if not self.enabled:
            return self.execute("cache disabled", store=False)
        if self.problem:
            return self.execute(self.problem, store=False)
        if self.always_runs:
            self.remember_last(uncached=self.always_runs)
            return self.execute(f"runs every time: {self.always_runs}", store=False)
        try:
            values, entry, reason = self.lookup()
        except Exception as exc:  # the index itself failed (locked for too long, damaged): run uncached
            _warn(f"nbcache: step {self.name!r} ran without the cache, which could not be read: {exc}")
            return self.execute("cache unreadable", store=False)
        if values is ENOVAL:
            return self.execute(reason, store=True)
        return self.restore(values, entry)

    def execute(self, reason: str, *, store: bool) -> Any:
        """Run the body, record the run, store the result if ``store``; return what the caller gets."""
        raise NotImplementedError

    def restore(self, values: list[Any], entry: dict) -> Any:
        """Give back a stored result and record the hit."""
        raise NotImplementedError

    def lookup(self) -> tuple[Any, dict | None, str]:
        """(stored values, entry, "") on a hit; (ENOVAL, entry or None, why it ran) on a miss.

        A damaged or missing stored value warns, is forgotten, and counts as a miss. Errors of the index
        itself propagate: the caller runs uncached.
        """
        entry = self.store.get_entry(self.key)
        if entry is None:
            return ENOVAL, None, self.why()
        blobs = entry["blobs"]
        try:
            checks = checks_from_json(entry.get("checks"))
        except ValueError as exc:
            _warn(f"nbcache: the cached result of step {self.name!r} is damaged ({exc}); recomputing it")
            self.store.forget(self.key, blobs)
            return ENOVAL, entry, "cached result was damaged"
        changed, refreshed = first_failure(checks, self.namespace)
        if changed:
            return ENOVAL, entry, changed
        if refreshed:  # files touched but not changed: remember their new stat, not to read them again
            try:
                entry = {**entry, "checks": [c.to_json() for c in refreshed]}
                self.store.put_entry(self.key, self.name, entry, ())
            except Exception:
                pass
        inherit(checks)  # a step running this one from its body depends on them too
        try:
            values = [self.store.load_blob(blob) for blob in blobs]
        except Damaged as exc:
            _warn(f"nbcache: the cached result of step {self.name!r} is damaged ({exc}); recomputing it")
            self.store.forget(self.key, blobs)
            return ENOVAL, entry, "cached result was damaged"
        if any(v is ENOVAL for v in values):
            _warn(f"nbcache: the cached result of step {self.name!r} is missing on disk; recomputing it")
            self.store.forget(self.key, blobs)  # the blob rows point at files that are gone
            return ENOVAL, entry, "cached result was missing"
        self.remember_last()
        self.sizes = entry.get("sizes", {})
        return values, entry, ""

    def set_state(self, state: dict[str, Any]) -> None:
        """On a hit: set the process-wide state the first run left (RNG, rc settings, options) again."""
        failed = ambient.apply(state)
        if failed:
            _warn(f"nbcache: step {self.name!r} came from the cache, but its {', '.join(failed)} could not be"
                  " set as its run left them")

    def save(self, values: Sequence[Any], entry: dict, addresses: tuple[str, ...] | None = None) -> tuple[str, ...]:
        """Store each of ``values`` under this call's key, with ``entry``'s extra fields; return their
        content addresses. Raises ``Unpicklable`` (nothing stored) if a value cannot be serialized; a
        failure to write warns, since the caller still has its values."""
        frames = [Frame(value) for value in values]
        if addresses is None or not all(addresses):
            addresses = tuple(_address(v, f) for v, f in zip(values, frames))
        names = addresses
        state = self.observer.changed_state() if self.observer else {}
        if state:  # the process-wide state the run changed rides along as one more blob, set again on a hit
            frames.append(Frame(state))
            names = (*addresses, "ambient")
            entry = {**entry, "ambient": True}
        self._put(frames, names, addresses, entry)
        return addresses

    def save_payload(self, payload: Any, addresses: tuple[str, ...], entry: dict, *, sizes: dict[str, int],
                     by_value: set[int] = frozenset()) -> None:
        """Store ``payload`` whole (one pickle keeps the identity of objects shared inside it), recording
        ``addresses`` as the content addresses of the outputs and ``sizes`` as theirs. Raises
        ``Unpicklable``."""
        frame = Frame(payload, by_value=by_value)
        self._put([frame], (hash_value(addresses),), addresses, entry, sizes)

    def _put(self, frames: list[Frame], names: tuple[str, ...], addresses: tuple[str, ...], entry: dict,
             sizes: dict[str, int] | None = None) -> None:
        # A blob is named by content and by its exact bytes: values that hash alike but differ in what
        # hashing ignores (dict order, DataFrame.attrs) are never served for one another.
        blobs = tuple(f"{name}-{frame.identity()}" for name, frame in zip(names, frames))
        self.sizes = sizes if sizes is not None else {a: f.nbytes for a, f in zip(addresses, frames)}
        try:
            entry = {**entry, "outputs": addresses, "blobs": blobs, "sizes": self.sizes,
                     "created_at": self.started_at.timestamp(), "step": self.name}
            if self.observer is not None:
                checks = self.observer.checks()
                if checks:
                    entry["checks"] = [c.to_json() for c in checks]
            self.store.put_entry(self.key, self.name, entry, zip(blobs, frames))
            self.remember_last(force=True)
        except Exception as exc:  # disk full, read-only directory, ...
            _warn(f"nbcache: the result of step {self.name!r} could not be stored: {exc}")

    def why(self) -> str:
        """Why there is no entry: what differs from this step's latest run."""
        try:
            last = self.store.get_last(self.identity)
            if last is None and self.store.has_last(self.identity):  # written by an nbcache of another format
                return "first run with this nbcache's cache format (results of the older one are not read)"
        except Exception:
            last = None
        reason = explain_change(last, self.code, self.deps, self.inputs, self.version, self.kind)
        if reason == "cached result was removed" and last is not None and last.get("key") == self.key \
                and isinstance(last.get("uncached"), str):
            return f"runs every time: {last['uncached']}"  # nothing changed, but nothing could be stored
        return reason

    def remember_last(self, force: bool = False, uncached: str | None = None) -> None:
        """Record this call's ingredients as the step's latest (``uncached``: why its result was not
        stored, for the next run's reason)."""
        slot = (str(self.store.directory), self.identity)
        written = f"{self.key} {uncached}" if uncached else self.key
        if force or _last_written.get(slot) != written:
            try:
                self.store.set_last(self.identity, {"key": self.key, "code": self.code, "deps": self.deps,
                                                    "inputs": self.inputs, "version": self.version,
                                                    "kind": self.kind, "name": self.name,
                                                    **({"uncached": uncached} if uncached else {})})
                _last_written[slot] = written
            except Exception:
                pass  # only the wording of a later reason depends on it

    def observe(self, bound: frozenset[str] = frozenset()) -> Observer:
        """An observer for this call's run (what it reads, writes, draws and changes); ``bound``: the
        variables the step itself binds. A cell's output depends on the display settings too."""
        self.observer = Observer(str(self.store.directory), self.namespace, bound, renders=self.kind == "cell")
        return self.observer

    def not_cacheable_after_run(self) -> str | None:
        """Why the run just observed must not be stored: it used something a hit cannot repeat."""
        if self.observer is None:
            return None
        if self.observer.failed:
            return "what it read could not be followed"
        if self.observer.commands and not self.allow_shell:
            return (f"it runs a shell command ({', '.join(self.observer.commands)}), which a hit would not run;"
                    " %%step --allow-shell caches it anyway")
        return None

    def record(self, *, cached: bool, reason: str, outputs: tuple[str, ...], saved_s: float = 0.0,
               status: str = "ok", error: str | None = None, output_names: tuple[str, ...] = (),
               result: str = "") -> StepRun:
        run = StepRun(
            step=self.name, cached=cached, duration_s=time.perf_counter() - self.t0, saved_s=saved_s,
            key=self.key, code=self.code, inputs=self.inputs, outputs=outputs, reason=reason,
            started_at=self.started_at, status=status, version=self.version, deps=self.deps, error=error,
            kind=self.kind, output_names=output_names, sizes=self.sizes, result=result,
        )
        try:
            self.store.append_run(run)
        except OSError as exc:
            _warn(f"nbcache: the run of step {self.name!r} could not be recorded: {exc}")
        if _listeners:
            _notify(run)
        return run


_KIND_WORDS = {"function": "@step function", "cell": "%%step cell"}


def explain_change(last: dict | None, code: str, deps: dict[str, str], inputs: dict[str, str],
                   version: str | None, kind: str = "function") -> str:
    """In words, what differs between a step's latest recorded ingredients and these."""
    if last is None:
        return "first run"
    if last.get("kind", kind) != kind:  # one name, used by a function before and by a cell now (or back)
        now, before = (_KIND_WORDS.get(k, k) for k in (kind, last["kind"]))
        return f"first run as a {now} (its last run was a {before})"
    noun = "argument" if kind == "function" else "input"
    changes = []
    if last["code"] != code:
        old = last.get("deps", {})
        changed = [label for label in sorted(set(old) | set(deps)) if old.get(label) != deps.get(label)]
        functions = [c for c in changed if c.endswith("()")]
        values = [c for c in changed if not c.endswith("()")]
        if functions:
            changes.append("code changed: " + ", ".join(functions))
        if values:
            changes.append(f"global{'s' if len(values) > 1 else ''} {', '.join(values)} changed")
        if not changed:
            changes.append("code changed")
    old_inputs = last.get("inputs", {})
    changed_inputs = [n for n in sorted(set(old_inputs) | set(inputs)) if old_inputs.get(n) != inputs.get(n)]
    if changed_inputs:
        changes.append(f"{noun}{'s' if len(changed_inputs) > 1 else ''} {', '.join(changed_inputs)} changed")
    if last.get("version") != version:
        changes.append(f"version changed from {last.get('version')!r} to {version!r}")
    return "; ".join(changes) or "cached result was removed"


def addresses_of(values: Sequence[Any]) -> tuple[str, ...]:
    """Content addresses of values that are not stored (for the record and the lineage)."""
    return tuple(_address(v) for v in values)


def _address(value: Any, frame: Frame | None = None) -> str:
    """Content address of an output: its value hash, or for a value with no hashable content, its bytes."""
    try:
        return hash_value(value)
    except UncacheableError:
        if frame is None:
            return ""
        return "bytes-" + frame.checksum().hex()


def forget_last_written(store: DiskStore) -> None:
    for slot in [s for s in _last_written if s[0] == str(store.directory)]:
        del _last_written[slot]


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
    change = explain_change(
        {"code": previous.code, "deps": previous.deps, "inputs": previous.inputs, "version": previous.version,
         "kind": previous.kind}, run.code, dict(run.deps), dict(run.inputs), run.version, run.kind)
    if change == "cached result was removed":  # its code and inputs are as before: the reason says what was not
        change = "its code and inputs did not change"
    return f"{head}\n  since its previous run: {change}"
