"""Process-wide state that a step can change besides the variables it binds: the ambient state.

``np.random.seed(42)``, ``plt.rc("font", size=14)``, ``pd.set_option(...)``, ``warnings.filterwarnings``,
``os.chdir``: on a hit the step's body does not run, so without help the notebook would go on with other
random numbers, other fonts, other options. Each kind of state here knows how to read itself (a picklable
snapshot), hash itself and set itself back. A run is snapshotted before and after; the kinds it changed are
stored with its result and set again on a hit, so after a hit the process is as the first run left it.

What is stored is what the run *changed*, not the whole state: the options it set, the environment
variables it set or removed, the warnings filters it added or moved. A hit applies those changes to the
state as it is now, so it never undoes what other cells, the kernel or the user did since (a variable the
kernel was started with, an rc setting made by a plain cell).

A kind is looked at only while its library is imported (``import nbcache`` imports none of them), and
reading one never changes it. Some state is also a step's *input*: the random generators when it drew
from them without seeding them first, the settings it changed (from what they were), and for a cell the
settings that change how its output looks (``renders``); ``observe.py`` records those as checks.
"""

from __future__ import annotations

import os
import pickle
import sys
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import xxhash

from .hashing import hash_value

__all__ = ["AmbientKind", "KINDS", "Snapshot", "apply", "equal", "global_generator", "global_generator_method",
           "snapshot", "state_hash"]


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
    unordered: bool = False  # as an input, which entries it holds counts, not their order
    rng: bool = False  # a global random generator: a step that draws from it depends on its state
    seed: tuple[str, str] | None = None  # (module, attribute) of the function that seeds it

    def active(self) -> bool:
        return self.module in sys.modules

    def change(self, before: Any, after: Any) -> Any:
        """What turned ``before`` into ``after``, in this kind's shape; _SAME if nothing did."""
        if equal(before, after):
            return _SAME
        if self.shape == "mapping":
            changed = {k: v for k, v in after.items() if k not in before or not equal(before[k], v)}
            removed = [k for k in before if k not in after]
            return {"set": changed, "unset": removed} if changed or removed else _SAME
        if self.shape == "sequence":
            removed = [e for e in before if not _contains(after, e)]
            back = 0  # entries appended at the end (sys.path.append)
            while back < len(after) and not _contains(before, after[len(after) - 1 - back]):
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

    def apply(self, change: Any) -> None:
        """Make the same change to the state as it is now."""
        if self.shape == "mapping":
            current = self.get()
            self.set({**{k: v for k, v in current.items() if k not in change["unset"]}, **change["set"]})
        elif self.shape == "sequence":
            front, back = change["front"], change["back"]
            kept = [e for e in self.get() if not _contains(change["removed"], e) and not _contains(front, e)]
            self.set([*front, *kept, *(e for e in back if not _contains(kept, e))])
        else:
            self.set(change)


_SAME = object()
_EMPTY: dict[str, Any] = {"mapping": {}, "sequence": []}


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


def _contains(items: list, item: Any) -> bool:
    return any(equal(item, other) for other in items)


# -- the kinds ----------------------------------------------------------------------------------------------

def _random_get() -> Any:
    return sys.modules["random"].getstate()


def _random_set(state: Any) -> None:
    sys.modules["random"].setstate(state)


def _numpy_random_get() -> Any:
    return sys.modules["numpy"].random.get_state()


def _numpy_random_set(state: Any) -> None:
    sys.modules["numpy"].random.set_state(state)


def _print_options_get() -> dict:
    return dict(sys.modules["numpy"].get_printoptions())


def _print_options_set(options: dict) -> None:
    sys.modules["numpy"].set_printoptions(**options)


_NOT_RC = frozenset({"backend"})  # the backend is its own kind: setting it switches pyplot's backend


def _rc_get() -> dict:
    values = dict(dict.items(sys.modules["matplotlib"].rcParams))  # (as stored: RcParams is a dict)
    for key in _NOT_RC:
        values.pop(key, None)
    return values


def _rc_set(values: dict) -> None:
    rc = sys.modules["matplotlib"].rcParams
    changed = {k: v for k, v in values.items() if k in rc and not equal(dict.__getitem__(rc, k), v)}
    with warnings.catch_warnings():  # a deprecated key stored by the first run is set back quietly
        warnings.simplefilter("ignore")
        rc.update(changed)


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


def _pandas_option_names() -> list[str]:
    """Every option's full name (``display.max_rows``), found through ``pd.options`` as a user would."""
    options = sys.modules["pandas"].options
    names: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for attribute in dir(node):
            value = getattr(node, attribute)
            if type(value) is type(options):
                walk(value, f"{prefix}{attribute}.")
            else:
                names.append(prefix + attribute)

    walk(options, "")
    return names


_pandas_names: list[str] = []  # the options pandas registers do not change while it is imported


def _pandas_get() -> dict:
    pd = sys.modules["pandas"]
    with warnings.catch_warnings():  # reading a deprecated option warns
        warnings.simplefilter("ignore")
        if not _pandas_names:
            _pandas_names.extend(_pandas_option_names())
        values = {}
        for name in _pandas_names:
            try:
                values[name] = pd.get_option(name)
            except Exception:  # an option removed since the names were read
                continue
    return values


def _pandas_set(values: dict) -> None:
    pd = sys.modules["pandas"]
    current = _pandas_get()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, value in values.items():
            if name in current and not equal(current[name], value):
                pd.set_option(name, value)


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
    AmbientKind("numpy.random", "numpy", _numpy_random_get, _numpy_random_set, rng=True,
                seed=("numpy.random", "seed")),
    AmbientKind("numpy print options", "numpy", _print_options_get, _print_options_set, shape="mapping", renders=True),
    AmbientKind("matplotlib backend", "matplotlib", _backend_get, _backend_set, renders=True),
    AmbientKind("matplotlib.rcParams", "matplotlib", _rc_get, _rc_set, shape="mapping", renders=True),
    AmbientKind("pandas options", "pandas", _pandas_get, _pandas_set, shape="mapping", renders=True),
    AmbientKind("scikit-learn config", "sklearn", _sklearn_get, _sklearn_set, shape="mapping"),
    AmbientKind("warnings filters", "warnings", _warnings_get, _warnings_set, shape="sequence", renders=True,
                unordered=True),
    AmbientKind("environment variables", "os", _environ_get, _environ_set, shape="mapping"),
    AmbientKind("working directory", "os", os.getcwd, _cwd_set),
    AmbientKind("sys.path", "sys", _sys_path_get, _sys_path_set, shape="sequence"),
)
"""Every kind nbcache keeps, in the order they are set back (the backend before the rc settings)."""

_BY_NAME = {kind.name: kind for kind in KINDS}


def global_generator(obj: Any) -> str | None:
    """The module whose global random generator ``obj`` is (``random``'s, numpy's legacy one), or None.
    ``from numpy.random import rand`` binds a method of that generator in the notebook."""
    random = sys.modules.get("random")
    if random is not None and obj is getattr(random.random, "__self__", None):
        return "random"
    np = sys.modules.get("numpy")
    if np is not None and obj is getattr(np.random.rand, "__self__", None):
        return "numpy.random"
    return None


def global_generator_method(module: str, name: str) -> Any:
    """The method ``name`` of the global generator of ``module``, as it is in this process."""
    owner = __import__(module, fromlist=["_"])
    generator = (owner.random if module == "random" else owner.rand).__self__
    return getattr(generator, name)


@dataclass(frozen=True)
class Snapshot:
    """The state of every active kind at one moment, by kind name."""

    values: dict[str, Any]

    def changed_since(self, before: Snapshot) -> dict[str, Any]:
        """What changed since ``before``, kind by kind (a kind that became active counts from its state
        when its library was imported: all of it)."""
        changes = {}
        for kind in KINDS:
            if kind.name not in self.values:
                continue
            after = self.values[kind.name]
            if kind.name not in before.values:  # imported by the run: all of its state is the run's doing
                if kind.shape == "value":
                    changes[kind.name] = after
                elif kind.shape in _EMPTY:
                    changes[kind.name] = kind.change(_EMPTY[kind.shape], after)
                continue
            change = kind.change(before.values[kind.name], after)
            if change is not _SAME:
                changes[kind.name] = change
        return changes

    def same(self, name: str) -> bool:
        """Whether kind ``name`` is in the state it had in this snapshot."""
        kind = _BY_NAME[name]
        try:
            return name in self.values and kind.active() and equal(kind.get(), self.values[name])
        except Exception:
            return False


def snapshot(kinds: tuple[AmbientKind, ...] = KINDS) -> Snapshot:
    values = {}
    for kind in kinds:
        if not kind.active():
            continue
        try:
            values[kind.name] = kind.get()
        except Exception:  # a library version whose state cannot be read this way: not kept
            continue
    return Snapshot(values)


def state_hash(name: str, value: Any = _SAME) -> str | None:
    """The hash of one kind's state (now, or ``value``); None while its library is not imported."""
    kind = _BY_NAME.get(name)
    if kind is None or (value is _SAME and not kind.active()):
        return None
    try:
        return _digest(kind.get() if value is _SAME else value, kind.unordered)
    except Exception:
        return None


def setting_hash(name: str, key: Any) -> str:
    """The hash of one setting of a mapping kind now (an environment variable, a pandas option)."""
    kind = _BY_NAME.get(name)
    if kind is None or not kind.active():
        return "none"
    try:
        return setting_digest(kind.get(), key)
    except Exception:
        return "?"


def setting_digest(mapping: dict, key: Any) -> str:
    """The hash of one setting's value in a mapping state; ``none`` for a setting that is not there."""
    return _digest(mapping[key]) if key in mapping else "none"


def _digest(value: Any, unordered: bool = False) -> str:
    """A content hash of a state, quickly: of its pickle when it has one (a state is options, filters,
    numbers: equal states pickle alike; should two ever not, the cost is a re-run, never a wrong hit),
    else ``hash_value``'s. A mapping is hashed in key order; an ``unordered`` list as a set."""
    if isinstance(value, dict):
        value = sorted(value.items(), key=lambda item: str(item[0]))
    elif unordered:
        value = sorted(map(repr, value))
    try:
        return xxhash.xxh3_128_hexdigest(pickle.dumps(value, protocol=4))
    except Exception:
        return hash_value(value)


def apply(changes: dict[str, Any]) -> list[str]:
    """Make the changes a step's run made to the process's state again; return the names of the kinds that
    could not be changed."""
    failed = []
    for kind in KINDS:
        if kind.name not in changes:
            continue
        if not kind.active():
            try:  # the first run imported it (`import numpy as np; np.random.seed(0)`): so does the hit
                __import__(kind.module)
            except Exception:
                failed.append(kind.name)
                continue
        try:
            kind.apply(changes[kind.name])
        except Exception:
            failed.append(kind.name)
    return failed
