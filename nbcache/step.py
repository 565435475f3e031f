"""The ``@step`` decorator: key a call, serve it from the store or run it, and record what happened.

Nothing a cache does may cost the user their result: an argument that cannot be hashed, a value that cannot
be pickled, a damaged or missing stored value, or a broken cache directory all fall back to running the
function and returning its real result, with one ``CacheWarning`` that says what happened. Exceptions
raised by the function itself pass through untouched and are never cached.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
import time
import types
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar, overload

from .audit import unobserved
from .cache import Cache, default_cache
from .cachedcall import StepCall, addresses_of
from .entry import Entry
from .errors import warn as _warn
from .fingerprint import PREPARE_AFTER_S, fingerprint_parts, prepare
from .frame import Unpicklable
from .hashing import Walk, hash_items, hash_value
from .records import StepRun
from .store import Store

__all__ = ["Step", "step", "runs", "clear"]

F = TypeVar("F", bound=Callable[..., Any])

WORKER_CACHE: contextvars.ContextVar[Cache | None] = contextvars.ContextVar("nbcache_worker_cache", default=None)
"""The cache a step without one of its own uses while a call submitted to a Dask worker runs there."""


class Step:
    """A function whose calls are cached on disk. Made by ``@step``; call it like the function.

    Calling it binds the arguments as the function would (defaults applied), hashes their content, and
    either returns the stored result or runs the function, stores what it returned and records the call.
    On a method, the instance (``self``) is an input like any other argument.

    Attributes:
        name: The step's name in keys, in ``runs()`` and in the lineage.
        enable_cache: ``False``: every call runs the body; calls are still recorded.
        ignore: The names of the arguments left out of the key.
        version: The string given as ``version=``, part of the key; ``None`` if none was given.
        cache: The ``Cache`` its calls use; ``None``: the default one (``set_cache_dir``'s, at each call).
    """

    cache: Cache | None = None  # (a class default, for a Step pickled by an nbcache that had no cache=)

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        name: str | None = None,
        enable_cache: bool = True,
        ignore: Iterable[str] = (),
        version: str | None = None,
        cache: Cache | None = None,
    ) -> None:
        if not callable(func) or isinstance(func, type):
            raise TypeError(f"@step decorates a function, not {type(func).__name__}")
        ignore = _check_options(name, enable_cache, ignore, version, cache)
        functools.update_wrapper(self, func)  # sets __wrapped__, the function the step runs
        self._nbcache_function_ = func  # read by fingerprint(): a step's fingerprint is its function's
        self.name = name or _default_name(func)
        self.enable_cache = enable_cache
        self.version = version
        self.ignore = frozenset(ignore)
        self.cache = cache
        self._signature = inspect.signature(func)
        self._plain = _plain_parameters(self._signature)
        # the analysis of its code, ahead (a ``Job``: pickled or copied, by ``functools.wraps`` too, as done)
        self._ahead = (cache or default_cache()).background.submit(functools.partial(prepare, func),
                                                                   after_s=PREPARE_AFTER_S, optional=True)
        params = self._signature.parameters
        unknown = sorted(self.ignore - set(params))
        if unknown:
            raise ValueError(f"@step(ignore=...) names {', '.join(map(repr, unknown))}, which "
                             f"{'is not a parameter' if len(unknown) == 1 else 'are not parameters'} of"
                             f" {self.name}(); its parameters are: {', '.join(params) or 'none'}")

    def __repr__(self) -> str:
        return f"<nbcache step {self.name!r}>"

    def __nbcache_hash__(self) -> tuple[bytes, tuple]:
        """A step used inside another step counts by its code, like the function it wraps, and its version."""
        return b"step", (self.__wrapped__, self.version)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        return self if instance is None else types.MethodType(self, instance)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started_at = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        cache = self.cache if self.cache is not None else WORKER_CACHE.get() or default_cache()
        ahead = self.__dict__.pop("_ahead", None)  # the analysis of its code, ahead: taken back or waited for
        if ahead is not None:
            ahead.settle()
        try:
            with unobserved:  # (opening a cache is no data the step this one runs in depends on)
                store = cache.store()
        except Exception as exc:  # an unusable cache directory must not stop the user's work
            _warn(f"nbcache: step {self.name!r} ran without the cache: {exc}")
            return self.__wrapped__(*args, **kwargs)
        return _Call(self, cache, store, self._bind(args, kwargs), started_at, t0).run()

    def _bind(self, args: tuple, kwargs: dict[str, Any]) -> inspect.BoundArguments:
        """``bind`` then ``apply_defaults`` of its signature: directly for plain parameters rightly given (the
        common case, which costs a hit a few microseconds less), else by ``inspect``, which says what is wrong."""
        plain = self._plain
        if plain is not None and len(args) <= len(plain[0]):
            names, defaults = plain
            given = dict(zip(names, args))
            if not any(name in given or name not in names for name in kwargs):
                given.update(kwargs)
                if all(name in given or name in defaults for name in names):
                    return inspect.BoundArguments(self._signature, {name: given[name] if name in given
                                                                    else defaults[name] for name in names})
        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as exc:  # the error calling the function itself would give, with its name
            raise TypeError(f"{self.name}() {exc}") from None
        bound.apply_defaults()
        return bound

    def submit(self, client: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Call the step on a Dask cluster: a ``distributed.Future`` of what it returns. Arguments may be
        values or Futures of other submitted steps. A cached call is loaded on the worker and its body runs
        nowhere; a miss runs on a worker, which stores it (``cluster.py``; ``docs/team.md``)."""
        from . import cluster  # (and socket, fsspec's side: when a step is first submitted, not on import)

        return cluster.submit(self, client, args, kwargs)

    def map(self, client: Any, /, *iterables: Iterable[Any], **kwargs: Any) -> list[Any]:
        """``submit`` for each set of arguments (the i-th item of each iterable; ``kwargs`` for all): a list
        of Futures, in order, such as a sweep."""
        from . import cluster

        return cluster.map_calls(self, client, iterables, kwargs)


class _Call(StepCall):
    """One call of a function step: hash its arguments, then serve it from the store or run it."""

    def __init__(self, step: Step, cache: Cache, store: Store, bound: inspect.BoundArguments,
                 started_at: datetime, t0: float) -> None:
        super().__init__(cache, store, step.name, version=step.version, started_at=started_at, t0=t0,
                         enabled=step.enable_cache)
        self.step = step
        self.bound = bound
        self.namespace = getattr(step.__wrapped__, "__globals__", None)
        self.make_key(self._ingredients)  # (whatever fails in it runs the call uncached)

    def _ingredients(self) -> None:
        walk = Walk()
        try:
            self.code, self.deps = fingerprint_parts(self.step.__wrapped__, walk)
        except TypeError as exc:
            self.problem = self.problem_detail = str(exc)
            return
        self.note_globals_reader(walk)
        for name, value in self.bound.arguments.items():
            if name not in self.step.ignore and not self.hash_input(name, value, "argument"):
                break

    def restore(self, values: list[Any], entry: Entry) -> Any:
        if entry.ambient:
            self.set_state(values.pop())
        self.record(cached=True, reason=self.hit_reason(), outputs=entry.outputs, saved_s=entry.duration_s,
                    result=entry.result)
        return tuple(values) if entry.is_tuple else values[0]

    def execute(self, reason: str, *, store: bool) -> Any:
        t_body = time.perf_counter()
        try:
            with self.watching(store):
                result = self.step.__wrapped__(*self.bound.args, **self.bound.kwargs)
        except BaseException as exc:
            self.record_failure(reason, exc, store=store)
            raise
        duration = time.perf_counter() - t_body
        self.keep(lambda: self._keep(result, reason, store=store, duration=duration), reason)  # (never raises)
        return result

    def _keep(self, result: Any, reason: str, *, store: bool, duration: float) -> None:
        """Store what the body returned (when ``store``) and record the run."""
        unrepeatable = self.not_cacheable_after_run() if store else None
        if unrepeatable:
            reason, store = f"{reason}; not cached: {unrepeatable}", False
        if store:
            self._check_arguments_unchanged()
        is_tuple = type(result) is tuple
        values = result if is_tuple else (result,)
        whole, addresses = "", None
        if is_tuple:  # a consumer may take one element or the whole tuple: the lineage needs both hashes
            try:
                whole, items = hash_items(result)
                addresses = tuple(items)
            except Exception:  # (an UncacheableError; or one of its items recursing forever): item by item
                whole = ""
        if not store:
            self.record(cached=False, reason=reason, outputs=addresses or addresses_of(values), result=whole)
            return
        try:
            addresses = self.save(values, duration_s=duration, is_tuple=is_tuple, result=whole, addresses=addresses,
                                  keep_shared=is_tuple)
        except Unpicklable as exc:
            self.trouble(f"it returned a value that cannot be pickled ({exc})", uncached=True)
            self.record(cached=False, reason=reason + "; result not cached: cannot be pickled",
                        outputs=addresses_of(values))
            return
        self.record(cached=False, reason=reason, outputs=addresses, result=whole)

    def _check_arguments_unchanged(self) -> None:
        """Warn when the body changed a data argument in place: a hit returns the result but cannot repeat
        that. Only plain data is checked (lists, dicts, sets, arrays, frames): other objects often change
        their state when merely read (a memo, a ``cached_property``), which the user never sees."""
        changed = []
        for name, digest in self.inputs.items():
            value = self.bound.arguments[name]
            if not _is_plain_data(value):
                continue
            carried = self.cache.carry.address_of(value)
            if carried is not None and carried.address == digest:
                continue  # a restored array no page of which was written: unchanged, nothing to read
            try:
                if hash_value(value, root=name) != digest:
                    changed.append(name)
            except Exception:  # hashable before the call and not now: it was changed
                changed.append(name)
        if changed:
            names = ", ".join(map(repr, changed))
            _warn(f"nbcache: step {self.name!r} changed its argument{'s' if len(changed) > 1 else ''} {names} in"
                  " place; a cache hit returns the result without repeating that change. Change a copy and"
                  " return it instead")


_PLAIN_DATA = (list, dict, set, bytearray)


def _is_plain_data(value: Any) -> bool:
    tp, np, pd = type(value), sys.modules.get("numpy"), sys.modules.get("pandas")  # (imported if value is theirs)
    return tp in _PLAIN_DATA or (np is not None and tp is np.ndarray) or (pd is not None and tp in (pd.DataFrame,
                                                                                                   pd.Series))


def _check_options(name: Any, enable_cache: Any, ignore: Any, version: Any, cache: Any = None) -> tuple[str, ...]:
    """Validate @step's options (when they are given, not when the decorator is applied)."""
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(f"@step(cache=...) takes an nbcache.Cache, not {type(cache).__name__}")
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


def _plain_parameters(signature: inspect.Signature) -> tuple[tuple[str, ...], dict[str, Any]] | None:
    """(names, defaults) of a signature whose parameters are all plain (positional or keyword: no ``/``,
    ``*``, ``*args`` or ``**kwargs``), for ``Step._bind``; None for any other."""
    params = signature.parameters.values()
    if any(p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params), {p.name: p.default for p in params if p.default is not p.empty}


def _default_name(func: Callable[..., Any]) -> str:
    """The function's qualified name, without the ``outer.<locals>.`` of a function defined in a function."""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return qualname.rpartition("<locals>.")[2]


@overload
def step(func: F) -> F: ...
@overload
def step(*, name: str | None = None, enable_cache: bool = True, ignore: Iterable[str] = (),
         version: str | None = None, cache: Cache | None = None) -> Callable[[F], F]: ...


def step(func: Callable[..., Any] | None = None, *, name: str | None = None, enable_cache: bool = True,
         ignore: Iterable[str] = (), version: str | None = None, cache: Cache | None = None) -> Any:
    """Cache a function's results on disk, keyed on its code and its arguments' content.

    Use as ``@step`` or ``@step(name=..., enable_cache=..., ignore=(...), version=...)``. The options are
    checked when they are given, so a typo fails where it is written, not at the first call.

    Args:
        func: The function to cache, when used as a bare ``@step``.
        name: The step's name in keys, in ``runs()``, ``clear()`` and the lineage; default: the function's
            qualified name (``load``, ``Model.fit``). Two steps with one name share their history.
        enable_cache: ``False`` always runs the body while still recording the run, to switch caching off
            for one step without removing the decorator.
        cache: The ``Cache`` to use (``nbcache.Cache(directory)``, or ``Cache(store=MemoryStore())``);
            default: the one ``set_cache_dir`` sets, resolved at each call.
        ignore: Names of arguments left out of the key: a ``verbose`` flag, a logger, a lock. They are
            still passed to the function.
        version: A string to bump when something outside the code and the arguments changed (the data
            behind a path, a library edited in place).

    Returns:
        A ``Step`` wrapping the function (or, with options only, a decorator that makes one).

    Raises:
        TypeError: An option of the wrong type, or a class or other non-function to decorate.
        ValueError: ``ignore`` names something that is not a parameter of the function (at decoration).
    """
    _check_options(name, enable_cache, ignore, version, cache)

    def decorate(f: Callable[..., Any]) -> Any:
        if isinstance(f, (staticmethod, classmethod)):  # (@step above them: as under them)
            return type(f)(decorate(f.__func__))
        return Step(f, name=name, enable_cache=enable_cache, ignore=ignore, version=version, cache=cache)

    if func is None:
        return decorate
    if not callable(func) and not isinstance(func, (staticmethod, classmethod)):
        hint = "write @step under @property" if isinstance(func, property) else "to pass options write @step(name=...)"
        raise TypeError(f"@step takes a function, not {type(func).__name__} {func!r}: {hint}")
    return decorate(func)


def runs(step: str | Step | None = None) -> list[StepRun]:
    """The recorded calls of all steps, or of one step (by name or by the step itself), oldest first.

    The history is read from ``runs.jsonl`` in the cache directory, so it holds the calls of every process
    that used that directory, before and after restarts; ``clear()`` leaves it alone.
    """
    name = step.name if isinstance(step, Step) else step
    if name is not None and not isinstance(name, str):
        raise TypeError(f"runs() takes a step or a step name, not {type(step).__name__}")
    return _cache_of(step).runs(name)


def clear(step: str | Step | None = None) -> int:
    """Remove cached results, of every step or of one; returns how many entries were removed.

    The history stays: a step's next run says ``cached result was removed`` rather than ``first run``.
    """
    name = step.name if isinstance(step, Step) else step
    if name is not None and not isinstance(name, str):
        raise TypeError(f"clear() takes a step or a step name, not {type(step).__name__}")
    return _cache_of(step).clear(name)


def _cache_of(step: Any) -> Cache:
    """A step's own cache (``@step(cache=...)``), else the default one."""
    own = step.cache if isinstance(step, Step) else None
    return own if own is not None else default_cache()
