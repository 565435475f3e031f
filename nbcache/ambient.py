"""Process-wide state that a step can change besides the variables it binds: the ambient state.

``np.random.seed(42)``, ``plt.rc("font", size=14)``, ``pd.set_option(...)``, ``warnings.filterwarnings``,
``os.chdir``: on a hit the step's body does not run, so without help the notebook would go on with other
random numbers, other fonts, other options. Each kind of state (``statekinds.py``) knows how to read itself
(a picklable snapshot) and set itself back. A run is snapshotted before and after; the kinds it changed are
stored with its result and set again on a hit (``apply``), so after a hit the process is as the first run
left it.

What is stored is what the run *changed* (``statediff.py``), not the whole state: the options it set, the
environment variables it set or removed, the warnings filters it added or moved. A hit applies those
changes to the state as it is now, so it never undoes what other cells, the kernel or the user did since (a
variable the kernel was started with, an rc setting made by a plain cell).

Some state is also a step's *input*: the random generators when it drew from them without seeding them
first, the settings it changed (from what they were), and for a cell the settings that change how its
output looks (``renders``); ``observe.py`` records those as checks, with the digests made here.
"""

from __future__ import annotations

import contextlib
import contextvars
import pickle
from typing import Any, Iterator, NamedTuple

import xxhash

from .hashing import hash_value
from .statediff import EMPTY, SAME, equal
from .statekinds import BY_NAME, KINDS, AmbientKind, global_generator, global_generator_method, when_imported


class OnWorker(NamedTuple):
    """A submitted call running on a Dask worker (``cluster.py``): the worker's address, the session (kernel)
    that submitted it, and the worker's own threads (its event loop, its executor's), whose doings are not the
    step's. There the global random generators are the worker's, which Dask's own threads draw from too: a
    step's draws from them cannot be told from Dask's, nor repeated, so a run there that saw them change keeps
    a check that holds on workers only (``WORKER_DRAW``), and a hit sets no generator's state."""

    address: str
    session: str
    foreign: frozenset[int]


WORKER_DRAW = "drawn on a Dask worker"  # the digest of a "random" check made on a worker (``OnWorker``)

#: The submitted call this context runs, on a Dask worker; ``None`` elsewhere (set by ``cluster.py``).
RAN_ON: contextvars.ContextVar[OnWorker | None] = contextvars.ContextVar("nbcache_ran_on", default=None)

# AmbientKind, KINDS, equal and the global generators are defined in statekinds.py and statediff.py; the
# modules that keep or restore ambient state import them from here
__all__ = ["BY_NAME", "KINDS", "AmbientKind", "Snapshot", "apply", "computing_as", "computing_state", "equal",
           "global_generator", "global_generator_method", "setting_digest", "setting_hash", "snapshot", "state_hash",
           "when_imported"]


class Snapshot(NamedTuple):
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
                elif kind.shape in EMPTY:
                    changes[kind.name] = kind.change(EMPTY[kind.shape], after)
                continue
            change = kind.change(before.values[kind.name], after)
            if change is not SAME:
                changes[kind.name] = change
        return changes

    def same(self, name: str) -> bool:
        """Whether kind ``name`` is in the state it had in this snapshot."""
        kind = BY_NAME[name]
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


def state_hash(name: str, value: Any = SAME) -> str | None:
    """The hash of one kind's state (now, or ``value``); None while its library is not imported."""
    kind = BY_NAME.get(name)
    if kind is None or (value is SAME and not kind.active()):
        return None
    try:
        return _digest(kind.get() if value is SAME else value, kind.unordered)
    except Exception:
        return None


def setting_hash(name: str, key: Any) -> str:
    """The hash of one setting of a mapping kind now (an environment variable, a pandas option), or of the
    part of a kind that changes what code computes (``key``: what its ``computing`` calls it)."""
    kind = BY_NAME.get(name)
    if kind is None or not kind.active():
        return "none"
    try:
        return setting_digest(kind.get(), key, kind)
    except Exception:
        return "?"


def setting_digest(state: Any, key: Any, kind: AmbientKind | None = None) -> str:
    """The hash of one setting's value in a mapping state (``none`` for a setting that is not there), or of
    the part of ``kind``'s state that ``key`` names (its ``computing``)."""
    if kind is not None and kind.computing is not None and key == kind.computing[0]:
        return _digest(kind.computing[1](state))
    return _digest(state[key]) if key in state else "none"


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


def computing_state() -> dict[str, Any]:
    """The state of every kind that changes what code computes (numpy's error handling, the scikit-learn config,
    pandas' computing options), by kind name, as this thread has it: what a call submitted to a Dask worker
    runs under there (``computing_as``)."""
    return snapshot(tuple(kind for kind in KINDS if kind.computes)).values


@contextlib.contextmanager
def computing_as(state: dict[str, Any], *, alone: bool) -> Iterator[None]:
    """Run the block with the kinds of ``state`` (``computing_state``'s, another process's) set to it, each set
    back as it was after (whether the block, or a ``set`` that failed halfway, changed it). Kinds that are the
    whole process's (pandas' options) only if the block runs ``alone``: no other thread runs code beside it
    that they would change (a Dask worker of one thread). Nor a kind whose library is not imported here (a
    step's own imports come with it, as it is unpickled; one it imports in its body only finds that library
    as it is here). A kind left as it is here is recorded so by the step's run, so that a lookup under
    another state tells it apart."""
    undo = []
    try:
        for kind in KINDS:
            if kind.name not in state or not (kind.per_thread or alone) or not kind.active():
                continue
            try:
                undo.append((kind, kind.get()))  # (first: a ``set`` that fails halfway is set back too)
                if not equal(undo[-1][1], state[kind.name]):
                    kind.set(state[kind.name])
            except Exception:  # (a version of the library that cannot take it: its run records what it had)
                continue
        yield
    finally:
        for kind, before in reversed(undo):  # (what the block itself changed of them too: not left behind)
            with contextlib.suppress(Exception):
                if not equal(kind.get(), before):
                    kind.set(before)


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
