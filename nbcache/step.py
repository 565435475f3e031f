"""The ``@step`` decorator: key a call, serve it from the store or run it, and record what happened.

Nothing a cache does may cost the user their result: an argument that cannot be hashed, a value that cannot
be pickled, a damaged or missing stored value, or a broken cache directory all fall back to running the
function and returning its real result, with one ``CacheWarning`` that says what happened. Exceptions
raised by the function itself pass through untouched and are never cached.
"""

from __future__ import annotations

import functools
import inspect
import time
import types
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar, overload

from .errors import UncacheableError
from .errors import warn as _warn
from .fingerprint import fingerprint_parts
from .hashing import Hasher, Walk, feed, hash_value, register
from .key import make_key
from .records import StepRun
from .store import ENOVAL, Damaged, DiskStore, Frame, Unpicklable, get_store

__all__ = ["Step", "step", "runs", "clear"]

F = TypeVar("F", bound=Callable[..., Any])

# The key each step's "last" record holds, as far as this process knows, so a hit writes it only on change.
_last_written: dict[tuple[str, str], str] = {}


class Step:
    """A function whose calls are cached on disk. Made by ``@step``; call it like the function."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        enable_cache: bool = True,
        ignore: Iterable[str] = (),
        version: str | None = None,
    ) -> None:
        if not callable(func) or isinstance(func, type):
            raise TypeError(f"@step decorates a function, not {type(func).__name__}")
        ignore = _check_options(name, enable_cache, ignore, version)
        self.__wrapped__ = self._nbcache_function_ = func  # the latter is read by fingerprint()
        functools.update_wrapper(self, func)
        self.name = name or _default_name(func)
        self.enable_cache = enable_cache
        self.version = version
        self.ignore = frozenset(ignore)
        self._signature = inspect.signature(func)
        params = self._signature.parameters
        unknown = sorted(self.ignore - set(params))
        if unknown:
            raise ValueError(
                f"@step(ignore=...) names {', '.join(map(repr, unknown))}, which "
                f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of {self.name}();"
                f" its parameters are: {', '.join(params) or 'none'}"
            )

    def __repr__(self) -> str:
        return f"<nbcache step {self.name!r}>"

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            store = get_store()
        except Exception as exc:  # an unusable cache directory must not stop the user's work
            _warn(f"nbcache: step {self.name!r} ran without the cache: {exc}")
            return self.__wrapped__(*args, **kwargs)
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:  # the error calling the function itself would give, with its name
            raise TypeError(f"{self.name}() {exc}") from None
        bound.apply_defaults()
        return _Call(self, store, bound, started_at, t0).run()


class _Call:
    """One call of a step, from key to record."""

    def __init__(self, step: Step, store: DiskStore, bound: inspect.BoundArguments, started_at: datetime,
                 t0: float) -> None:
        self.step = step
        self.store = store
        self.bound = bound
        self.started_at = started_at
        self.t0 = t0
        self.inputs: dict[str, str] = {}
        self.problem: str | None = None  # why this call cannot be cached, if it cannot
        try:
            self.code, self.deps = fingerprint_parts(step.__wrapped__)
        except TypeError as exc:
            self.code, self.deps, self.problem = "", {}, str(exc)
            if step.enable_cache:
                _warn(f"nbcache: step {step.name!r} runs without the cache: {exc}")
        for name, value in bound.arguments.items():
            if name not in step.ignore and not self.problem and not self._hash_input(name, value):
                break
        self.key = "" if self.problem else make_key(step.name, self.code, self.inputs, step.version)

    def _hash_input(self, name: str, value: Any) -> bool:
        try:
            self.inputs[name] = hash_value(value, root=name)
            return True
        except UncacheableError as exc:
            self.problem = f"uncacheable argument {exc.path} ({exc.type_name})"
            if self.step.enable_cache:
                _warn(f"nbcache: step {self.step.name!r} runs without the cache: {exc}")
            return False

    def run(self) -> Any:
        step = self.step
        if not step.enable_cache:
            return self._compute("cache disabled", cache=False)
        if self.problem:
            return self._compute(self.problem, cache=False)
        try:
            entry = self.store.get_entry(self.key)
            result, reason = self._load(entry) if entry is not None else (ENOVAL, self._why())
        except Exception as exc:  # the index itself failed (locked for too long, damaged): run uncached
            _warn(f"nbcache: step {step.name!r} ran without the cache, which could not be read: {exc}")
            return self._compute("cache unreadable", cache=False)
        if result is not ENOVAL:
            return result
        return self._compute(reason, cache=True)

    # -- hit -------------------------------------------------------------------------------------------
    def _load(self, entry: dict) -> tuple[Any, str]:
        """The stored result, or ENOVAL and the reason it could not be used."""
        name = self.step.name
        try:
            values = [self.store.load_blob(address) for address in entry["outputs"]]
        except Damaged as exc:
            _warn(f"nbcache: the cached result of step {name!r} is damaged ({exc}); recomputing it")
            self.store.forget(self.key, entry["outputs"])
            return ENOVAL, "cached result was damaged"
        if any(v is ENOVAL for v in values):
            _warn(f"nbcache: the cached result of step {name!r} is missing on disk; recomputing it")
            self.store.forget(self.key, entry["outputs"])  # the blob rows point at files that are gone
            return ENOVAL, "cached result was missing"
        result = tuple(values) if entry["tuple"] else values[0]
        self._remember_last()
        self._record(
            cached=True, reason="cache hit", outputs=tuple(entry["outputs"]), saved_s=entry["duration_s"]
        )
        return result, ""

    # -- miss ------------------------------------------------------------------------------------------
    def _compute(self, reason: str, *, cache: bool) -> Any:
        step = self.step
        t_body = time.perf_counter()
        try:
            result = step.__wrapped__(*self.bound.args, **self.bound.kwargs)
        except BaseException as exc:
            self._record(cached=False, reason=reason, outputs=(), status="failed",
                         error=f"{type(exc).__name__}: {exc}")
            raise
        duration = time.perf_counter() - t_body
        is_tuple = type(result) is tuple
        values = result if is_tuple else (result,)
        if not cache:
            self._record(cached=False, reason=reason, outputs=tuple(_address(v) for v in values))
            return result
        try:
            frames = [Frame(v) for v in values]
        except Unpicklable as exc:
            _warn(f"nbcache: step {step.name!r} returned a value that cannot be pickled ({exc});"
                  " it is returned but not cached")
            self._record(cached=False, reason=reason + "; result not cached: cannot be pickled",
                         outputs=tuple(_address(v) for v in values))
            return result
        addresses = tuple(_address(v, f) for v, f in zip(values, frames))
        try:
            entry = {"outputs": addresses, "tuple": is_tuple, "duration_s": duration,
                     "created_at": self.started_at.timestamp(), "step": step.name}
            self.store.put_entry(self.key, step.name, entry, zip(addresses, frames))
            self._remember_last(force=True)
        except Exception as exc:  # disk full, read-only directory, ...: the result is still the user's
            _warn(f"nbcache: the result of step {step.name!r} could not be stored: {exc}")
        self._record(cached=False, reason=reason, outputs=addresses)
        return result

    def _why(self) -> str:
        """Why there is no entry: what differs from this step's latest run."""
        try:
            last = self.store.get_last(self.step.name)
        except Exception:
            last = None
        if last is None:
            return "first run"
        changes = []
        if last["code"] != self.code:
            old, new = last.get("deps", {}), self.deps
            changed = [label for label in sorted(set(old) | set(new)) if old.get(label) != new.get(label)]
            functions = [c for c in changed if c.endswith("()")]
            values = [c for c in changed if not c.endswith("()")]
            if functions:
                changes.append("code changed: " + ", ".join(functions))
            if values:
                changes.append(f"global{'s' if len(values) > 1 else ''} {', '.join(values)} changed")
            if not changed:
                changes.append("code changed")
        old_inputs = last.get("inputs", {})
        changed_args = [n for n in sorted(set(old_inputs) | set(self.inputs))
                        if old_inputs.get(n) != self.inputs.get(n)]
        if changed_args:
            plural = len(changed_args) > 1
            changes.append(f"argument{'s' if plural else ''} {', '.join(changed_args)} changed")
        if last.get("version") != self.step.version:
            changes.append(f"version changed from {last.get('version')!r} to {self.step.version!r}")
        return "; ".join(changes) or "cached result was removed"

    def _remember_last(self, force: bool = False) -> None:
        slot = (str(self.store.directory), self.step.name)
        if force or _last_written.get(slot) != self.key:
            try:
                self.store.set_last(self.step.name, {"key": self.key, "code": self.code, "deps": self.deps,
                                                     "inputs": self.inputs, "version": self.step.version})
                _last_written[slot] = self.key
            except Exception:
                pass  # only the wording of a later reason depends on it

    def _record(self, *, cached: bool, reason: str, outputs: tuple[str, ...], saved_s: float = 0.0,
                status: str = "ok", error: str | None = None) -> None:
        run = StepRun(
            step=self.step.name, cached=cached, duration_s=time.perf_counter() - self.t0, saved_s=saved_s,
            key=self.key, code=self.code, inputs=self.inputs, outputs=outputs, reason=reason,
            started_at=self.started_at, status=status, version=self.step.version, deps=self.deps, error=error,
        )
        try:
            self.store.append_run(run)
        except OSError as exc:
            _warn(f"nbcache: the run of step {self.step.name!r} could not be recorded: {exc}")


def _check_options(name: Any, enable_cache: Any, ignore: Any, version: Any) -> tuple[str, ...]:
    """Validate @step's options (when they are given, not when the decorator is applied)."""
    if not isinstance(enable_cache, bool):
        raise TypeError(f"@step(enable_cache=...) takes True or False, not {enable_cache!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TypeError(f"@step(name=...) takes a non-empty string, not {name!r}")
    if version is not None and not isinstance(version, str):
        raise TypeError(f"@step(version=...) takes a string such as version='2', not {version!r}")
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    if not all(isinstance(n, str) for n in ignore):
        raise TypeError(f"@step(ignore=...) takes argument names, such as ignore=['verbose'], not {ignore!r}")
    return ignore


def _default_name(func: Callable[..., Any]) -> str:
    """The function's qualified name, without the ``outer.<locals>.`` of a function defined in a function."""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return qualname.rpartition("<locals>.")[2]


def _address(value: Any, frame: Frame | None = None) -> str:
    """Content address of an output: its value hash, or for a value with no hashable content, its bytes."""
    try:
        return hash_value(value)
    except UncacheableError:
        if frame is None:
            return ""
        return "bytes-" + frame.checksum().hex()


def _feed_step(obj: Step, h: Hasher, walk: Walk) -> None:
    """A step used inside another step counts by its code, like the function it wraps."""
    h.update(b"step")
    feed(obj.__wrapped__, h, walk)
    feed(obj.version, h, walk)


register(Step, _feed_step)


@overload
def step(func: F) -> F: ...
@overload
def step(*, name: str | None = None, enable_cache: bool = True, ignore: Iterable[str] = (),
         version: str | None = None) -> Callable[[F], F]: ...


def step(func: Callable[..., Any] | None = None, *, name: str | None = None, enable_cache: bool = True,
         ignore: Iterable[str] = (), version: str | None = None) -> Any:
    """Cache a function's results on disk, keyed on its code and its arguments' content.

    Use as ``@step`` or ``@step(name=..., enable_cache=..., ignore=(...), version=...)``:
    ``ignore`` names arguments left out of the key (a ``verbose`` flag), ``version`` is a string to bump
    when something outside the code and arguments changed, and ``enable_cache=False`` always runs the body
    while still recording the run.
    """
    _check_options(name, enable_cache, ignore, version)

    def decorate(f: Callable[..., Any]) -> Step:
        return Step(f, name=name, enable_cache=enable_cache, ignore=ignore, version=version)

    if func is None:
        return decorate
    if not callable(func):
        raise TypeError(
            f"@step takes a function; to pass options write @step(name=...), not @step({func!r})"
        )
    return decorate(func)


def runs(step: str | Step | None = None) -> list[StepRun]:
    """The recorded calls of all steps, or of one step (by name or by the step itself), oldest first."""
    name = step.name if isinstance(step, Step) else step
    if name is not None and not isinstance(name, str):
        raise TypeError(f"runs() takes a step or a step name, not {type(step).__name__}")
    return get_store().read_runs(name)


def clear(step: str | Step | None = None) -> int:
    """Remove cached results, of every step or of one; returns how many entries were removed."""
    name = step.name if isinstance(step, Step) else step
    if name is not None and not isinstance(name, str):
        raise TypeError(f"clear() takes a step or a step name, not {type(step).__name__}")
    store = get_store()
    count = store.clear(name)
    for slot in [s for s in _last_written if s[0] == str(store.directory) and name in (None, s[1])]:
        del _last_written[slot]
    return count
