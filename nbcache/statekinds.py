"""The kinds of ambient state nbcache keeps, and how each is read and set.

Each ``AmbientKind`` knows how to take a picklable snapshot of one kind of process-wide state
(``np.random``'s, ``matplotlib.rcParams``, ``os.environ``, ...), how to set the process back to one, and
its shape (``statediff.py``), which says what a change to it is. A kind is looked at only while its
library is imported (``import nbcache`` imports none of them), and reading one never changes it. numpy's
global generator lives in ``numpy.random``, which numpy imports only when it is first used: until then its
state is the one it gets when imported, which an observer takes at that moment (``pending``,
``when_imported``), so that a step that never draws does not import it.

Adding a kind is adding a row to ``KINDS``: its get and set must round-trip (``set(get())`` changes
nothing), and its snapshot must pickle.

This module sits in the values layer and imports no hashing: the code fingerprint uses
``global_generator`` (a method of a global generator is counted by name), and hashing counts code by its
fingerprint. Hashing a state is ``ambient.py``'s, above both.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .displaystate import (
    figures_get, figures_set, interactivity_get, interactivity_set, pprint_get, pprint_set, precision_get,
    precision_set,
)
from .pandasstate import pandas_get, pandas_set
from .quietly import quietly
from .statediff import SHAPES, applied, change, equal

__all__ = ["BY_NAME", "KINDS", "AmbientKind", "global_generator", "global_generator_method", "when_imported"]


@dataclass(frozen=True)
class AmbientKind:
    """One kind of process-wide state."""

    name: str  # as reasons and warnings say it: "numpy.random", "matplotlib.rcParams"
    module: str  # looked at only while this module is imported
    get: Callable[[], Any]  # a picklable snapshot
    set: Callable[[Any], None]  # make the process's state equal to a snapshot
    shape: str = "value"  # what a change is: "value" (the new state), "mapping" (keys set and removed),
    #                       "sequence" (entries added or moved in front, appended, and removed)
    renders: bool = False  # it changes how a cell's output looks (display options, rc settings, warnings)
    computes: bool = False  # it changes what code computes (types, values, raising): an input of every step
    per_thread: bool = False  # each thread has its own (a call submitted to a Dask worker takes the caller's)
    computing: tuple[str, Callable[[Any], Any]] | None = None  # of a kind that only renders: the part of its
    #   state that changes what code computes (what reasons call it, and how it is taken), an input of every step
    unordered: bool = False  # as an input, which entries it holds counts, not their order
    rng: bool = False  # a global random generator: a step that draws from it depends on its state
    seed: tuple[str, str] | None = None  # (module, attribute) of the function that seeds it
    lazy_in: str | None = None  # the library that imports ``module`` on first use (numpy, numpy.random)

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"ambient kind {self.name!r}: shape {self.shape!r} is not one of {', '.join(SHAPES)}")

    def active(self) -> bool:
        return self.module in sys.modules

    def pending(self) -> bool:
        """Its library is imported but not yet the module that holds it: its state is the one that module
        will get when imported (by the first use), and to be taken then (``when_imported``)."""
        return self.lazy_in is not None and self.lazy_in in sys.modules and self.module not in sys.modules

    def change(self, before: Any, after: Any) -> Any:
        """What turned ``before`` into ``after``, in this kind's shape; ``statediff.SAME`` if nothing did."""
        return change(self.shape, before, after)

    def apply(self, delta: Any) -> None:
        """Make the same change to the state as it is now."""
        self.set(applied(self.shape, self.get() if self.shape != "value" else None, delta))


def _random_get() -> Any:
    return sys.modules["random"].getstate()


def _random_set(state: Any) -> None:
    sys.modules["random"].setstate(state)


def _numpy_random_get() -> Any:
    return sys.modules["numpy.random"].get_state()


def _numpy_random_set(state: Any) -> None:
    sys.modules["numpy.random"].set_state(state)


def _print_options_get() -> dict:
    return dict(sys.modules["numpy"].get_printoptions())


def _print_options_set(options: dict) -> None:
    sys.modules["numpy"].set_printoptions(**options)


def _errors_get() -> dict:
    return dict(sys.modules["numpy"].geterr())


def _errors_set(handling: dict) -> None:
    sys.modules["numpy"].seterr(**handling)


_NOT_RC = frozenset({"backend"})  # the backend is its own kind: setting it switches pyplot's backend


def _rc_get() -> dict:
    values = dict(dict.items(sys.modules["matplotlib"].rcParams))  # (as stored: RcParams is a dict)
    for key in _NOT_RC:
        values.pop(key, None)
    return values


def _rc_set(values: dict) -> None:
    rc = sys.modules["matplotlib"].rcParams
    changed = {k: v for k, v in values.items() if k in rc and not equal(dict.__getitem__(rc, k), v)}
    quietly(lambda: rc.update(changed))  # (a deprecated key stored by the first run is set back quietly)


def _backend_get() -> Any:
    value = dict.__getitem__(sys.modules["matplotlib"].rcParams, "backend")
    return value if isinstance(value, str) else None  # None: not chosen yet (matplotlib picks on first use)


def _backend_set(name: Any) -> None:
    if not isinstance(name, str) or _backend_get() == name:
        return
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.switch_backend(name)
    else:
        sys.modules["matplotlib"].rcParams["backend"] = name


def _sklearn_get() -> dict:
    return dict(sys.modules["sklearn"].get_config())


def _sklearn_set(config: dict) -> None:
    sklearn = sys.modules["sklearn"]
    known = sklearn.get_config()
    sklearn.set_config(**{k: v for k, v in config.items() if k in known})


def _warnings_get() -> list:
    return list(warnings.filters)


def _warnings_set(filters: list) -> None:
    """The filter list as it was; then one filter added and taken away through ``simplefilter``, which
    tells warnings that its filters changed (so what it remembers of warnings already shown is reset)."""
    warnings.filters[:] = filters
    count = len(warnings.filters)
    warnings.simplefilter("default", _FiltersChanged, append=True)
    if len(warnings.filters) > count:
        warnings.filters.pop()


_TOOLS_WARNINGS = frozenset({"nbcache", "pytest", "_pytest"})  # whose warnings a step's code does not issue


def _raising_filters(filters: list) -> list:
    """The filters up to the last one set to ``"error"`` that a warning can reach: those that decide whether
    a warning raises (one in front of it, ``"ignore"`` or ``"always"``, keeps a warning from raising). None
    when no warning can raise: no filter is set to error, or one that takes every warning comes first
    (``catch_warnings()`` then ``simplefilter("ignore")``, as ``pytest.warns`` does)."""
    if "error" not in [entry[0] for entry in filters]:  # (the usual case, on every lookup: quickly)
        return []
    reach = []
    for entry in filters:
        action, message, category, module, line = entry
        if action == "error" and getattr(category, "__module__", "").partition(".")[0] in _TOOLS_WARNINGS:
            continue  # (nbcache's own warnings, or pytest's about itself: never the step's)
        reach.append(entry)
        if message is None and category is Warning and module is None and not line:  # (it takes them all)
            break
    last = max((i for i, entry in enumerate(reach) if entry[0] == "error"), default=-1)
    return reach[: last + 1]


class _FiltersChanged(Warning):
    """Never issued: its filter is how ``_warnings_set`` marks the filters as changed."""


def _environ_get() -> dict:
    return dict(os.environ)


def _environ_set(environ: dict) -> None:
    for name in [n for n in os.environ if n not in environ]:
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def _cwd_set(path: str) -> None:
    if os.getcwd() != path:
        os.chdir(path)


def _sys_path_get() -> list:
    return list(sys.path)


def _sys_path_set(paths: list) -> None:
    sys.path[:] = paths


KINDS: tuple[AmbientKind, ...] = (
    AmbientKind("random", "random", _random_get, _random_set, rng=True, seed=("random", "seed")),
    AmbientKind("numpy.random", "numpy.random", _numpy_random_get, _numpy_random_set, rng=True,
                seed=("numpy.random", "seed"), lazy_in="numpy"),
    AmbientKind("numpy print options", "numpy", _print_options_get, _print_options_set, shape="mapping", renders=True),
    AmbientKind("numpy error handling", "numpy", _errors_get, _errors_set, shape="mapping", renders=True,
                computes=True, per_thread=True),
    AmbientKind("matplotlib backend", "matplotlib", _backend_get, _backend_set, renders=True),
    AmbientKind("matplotlib.rcParams", "matplotlib", _rc_get, _rc_set, shape="mapping", renders=True),
    AmbientKind("inline figure formats", "matplotlib_inline.config", figures_get, figures_set, renders=True),
    AmbientKind("IPython float precision", "IPython", precision_get, precision_set, renders=True),
    AmbientKind("IPython pretty printing", "IPython", pprint_get, pprint_set, renders=True),
    AmbientKind("IPython expressions shown", "IPython", interactivity_get, interactivity_set, renders=True),
    AmbientKind("pandas options", "pandas", pandas_get, pandas_set, shape="mapping", renders=True),
    AmbientKind("pandas computing options", "pandas", functools.partial(pandas_get, computing=True), pandas_set,
                shape="mapping", computes=True),
    AmbientKind("scikit-learn config", "sklearn", _sklearn_get, _sklearn_set, shape="mapping", computes=True,
                per_thread=True),
    AmbientKind("warnings filters", "warnings", _warnings_get, _warnings_set, shape="sequence", renders=True,
                unordered=True, computing=("that decide whether a warning raises", _raising_filters)),
    AmbientKind("environment variables", "os", _environ_get, _environ_set, shape="mapping"),
    AmbientKind("working directory", "os", os.getcwd, _cwd_set),
    AmbientKind("sys.path", "sys", _sys_path_get, _sys_path_set, shape="sequence"),
    AmbientKind("recursion limit", "sys", sys.getrecursionlimit, sys.setrecursionlimit),
)
"""Every kind nbcache keeps, in the order they are set back (the backend before the rc settings)."""

BY_NAME = {kind.name: kind for kind in KINDS}


def global_generator(obj: Any) -> str | None:
    """The module whose global random generator ``obj`` is (``random``'s, numpy's legacy one), or None.
    ``from numpy.random import rand`` binds a method of that generator in the notebook."""
    random = sys.modules.get("random")
    if random is not None and obj is getattr(random.random, "__self__", None):
        return "random"
    np_random = sys.modules.get("numpy.random")  # (not imported: no generator of its exists yet)
    if np_random is not None and obj is getattr(np_random.rand, "__self__", None):
        return "numpy.random"
    return None


def global_generator_method(module: str, name: str) -> Any:
    """The method ``name`` of the global generator of ``module``, as it is in this process: the module's own
    object for it where it has one (``random.seed``), which is what a run's watch of seeding wraps."""
    owner = __import__(module, fromlist=["_"])
    generator = (owner.random if module == "random" else owner.rand).__self__
    found = vars(owner).get(name)
    return found if getattr(found, "__self__", None) is generator else getattr(generator, name)


# -- taking a state when its module is imported ----------------------------------------------------------

_watched: dict[str, list[Callable[[Any], None]]] = {}  # module name -> callbacks, run once it is imported
_watch_lock = threading.Lock()


class _ImportWatch:
    """A finder first on ``sys.meta_path`` that finds nothing itself: for a watched module it asks the
    other finders, and has the loader run the callbacks once the module's code has run."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _watched:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = None if finder is self or find_spec is None else find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_call(module: Any) -> None:
            try:
                exec_module(module)
            finally:
                vars(loader).pop("exec_module", None)
            with _watch_lock:
                callbacks = _watched.pop(fullname, [])
                _unwatch_if_idle()
            for callback in callbacks:
                try:
                    callback(module)
                except Exception:  # never the import's failure
                    pass

        try:
            loader.exec_module = exec_then_call
        except AttributeError:  # a loader that takes no attributes: not watched (its state is not taken)
            pass
        return spec


_WATCH = _ImportWatch()


def _unwatch_if_idle() -> None:
    if not _watched and _WATCH in sys.meta_path:
        sys.meta_path.remove(_WATCH)


def when_imported(module: str, callback: Callable[[Any], None]) -> Callable[[], None]:
    """Call ``callback(module object)`` once ``module`` has been imported (its code run), in the thread
    that imports it; return a function that cancels the call if it has not happened."""
    with _watch_lock:
        _watched.setdefault(module, []).append(callback)
        if _WATCH not in sys.meta_path:
            sys.meta_path.insert(0, _WATCH)

    def cancel() -> None:
        with _watch_lock:
            callbacks = _watched.get(module, [])
            if any(c is callback for c in callbacks):
                callbacks[:] = [c for c in callbacks if c is not callback]
                if not callbacks:
                    del _watched[module]
            _unwatch_if_idle()

    return cancel
