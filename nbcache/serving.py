"""Serving a call from the store: a mixin of ``cachedcall.StepCall``.

``lookup`` finds the call's entry, checks its seal and what it read (files, the environment), and loads its
values; what is damaged or missing is forgotten with a warning and counts as a miss, whose reason ``why``
tells by comparing the call with its step's latest ingredients. A hit writes nothing itself: the latest
ingredients and when the entry was used are written later, by ``Cache`` and the store, as is a result pulled
from the team cache (``TeamCache.keep_later``), its carried values loaded from memory first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .audit import inherit, unobserved
from .checks import first_failure
from .cache import Cache
from .entry import Entry, Latest
from .errors import warn as _warn
from .explain import FORMAT_CHANGED, changes_since, render
from .frame import Damaged
from .records import Change, ChangeKind, Outcome
from .store import Store

if TYPE_CHECKING:
    from .teamentry import TeamEntry

__all__ = ["MISS", "Serving"]

MISS = object()
"""What ``lookup`` returns in place of the stored values when there are none to serve."""


class Serving:
    """The lookup of one call. The class using it provides the attributes ``cachedcall.StepCall`` sets."""

    cache: Cache
    store: Store
    name: str
    identity: str
    key: str
    code: str
    deps: dict[str, str]
    inputs: dict[str, str]
    version: str | None
    kind: str
    namespace: dict | None
    outcome: Outcome
    changes: tuple[Change, ...]
    sizes: dict[str, int]

    team: TeamEntry | None = None  # the team cache's record of the result served, if it came from there
    team_asked = False  # whether this call looked in the team cache already

    def _latest(self, uncached: str | None = None) -> Latest:
        raise NotImplementedError

    def hit_reason(self) -> str:
        """Why a hit did not run: ``cache hit``, and where the result came from if another machine made it."""
        if self.team is None:
            return "cache hit"
        return f"cache hit (team cache, computed by {self.team.by} at {self.team.at})"

    def hit_outcome(self) -> Outcome:
        """A hit's outcome: served from this machine's cache, or copied from the team cache."""
        return Outcome.HIT if self.team is None else Outcome.TEAM_HIT

    def lookup(self) -> tuple[Any, Entry | None, str]:
        """(stored values, entry, "") on a hit; (MISS, entry or None, why it ran) on a miss, with ``outcome``
        and ``changes`` set. A damaged or missing stored value warns, is forgotten, and counts as a miss. Errors
        of the index propagate (the caller runs uncached). What it reads is no data a step's run depends on."""
        with unobserved:
            return self._lookup()

    def _lookup(self) -> tuple[Any, Entry | None, str]:
        try:
            entry = self.store.get_entry(self.key)
        except Damaged as exc:
            return MISS, None, self._damaged(exc, ())
        pulled = None
        if entry is None:
            if self.team_asked:  # (a second look, under the key's lock, is for this machine's other callers)
                return MISS, None, self.why()
            self.team_asked = True
            team = self.cache.team_if_any
            if team is None:
                return MISS, None, self.why()
            if team.settle(self.key):  # (this process pulled it a moment ago: now written here)
                with contextlib.suppress(Damaged):
                    entry = self.store.get_entry(self.key)
        if entry is None:
            pulled = team.pull(self.store, self.key)  # (the team cache, if it is there)
            if pulled is None:
                problem = team.damaged_now(self.key)
                if problem is None:
                    return MISS, None, self.why()
                self.outcome, self.changes = Outcome.DAMAGED, ()
                return MISS, None, f"the team cache's result was damaged ({problem})"
            self.team, entry = pulled.found, pulled.entry
        try:
            if pulled is None:  # (a pulled entry's seal was checked as it was read)
                self.cache.check_seal(self.key, entry)
        except Damaged as exc:  # (not the values it names: they may be other entries', and are checked apart)
            return MISS, None, self._damaged(exc, ())
        changed, refreshed = first_failure(entry.checks, self.namespace, trust_stat=pulled is None)
        if changed:
            self.outcome, self.changes = Outcome.CHANGED, (Change(ChangeKind.READ, changed),)
            return MISS, entry, changed
        if refreshed:  # files touched but not changed: remember their new stat, not to read them again
            with contextlib.suppress(Exception):
                entry = self.cache.seal(self.key, dataclasses.replace(entry, checks=refreshed))
                if pulled is None:
                    self.store.put_entry(self.key, entry)
                else:  # (written after the values it names, which are not here yet)
                    pulled = dataclasses.replace(pulled, entry=entry)
        inherit(entry.checks)  # a step running this one from its body depends on them too
        carried = {} if pulled is None else pulled.carried  # (values pulled, in memory: stored once loaded)
        try:
            values = [self.cache.load(self.store, blob, functools.partial(self._mapped, entry, i), carried.get(blob))
                      for i, blob in enumerate(entry.blobs)]
        except Damaged as exc:
            self.cache.verifier.discard()  # (nothing was served: what was mapped is not checked)
            return MISS, entry, self._damaged(exc, entry.blobs)
        except KeyError:  # (the blob rows point at files that are gone)
            self.cache.verifier.discard()
            return MISS, entry, self._damaged("is missing on disk", entry.blobs, word="missing")
        except BaseException:
            self.cache.verifier.discard()
            raise
        self.cache.verifier.release()  # (the mapped values are checked once all are loaded)
        if pulled is not None:
            self.cache.team.keep_later(self.store, self.key, pulled)
        with contextlib.suppress(Exception):  # (in memory, written later: a hit writes nothing, nor fails by it)
            self.cache.latest.write_later(self.store, self.identity, self.key, self._latest)  # (if it changed)
            self.store.touch(self.key)
        self.sizes = dict(entry.sizes)
        return values, entry, ""

    def _mapped(self, entry: Entry, i: int, value: Any) -> tuple[Callable[[str], None], list[tuple[Any, str]]]:
        """For the ``i``-th value of ``entry``, mapped: what to do if it is found damaged, what it carries."""
        return self._found_damaged_later(entry), self.carried(entry, i)(value)

    def carried(self, entry: Entry, i: int) -> Callable[[Any], list[tuple[Any, str]]]:
        """The values in the ``i``-th blob of ``entry``, each with its content address (``carry.py``): a
        function's ``i``-th output (a ``%%step`` cell's variables share one blob: ``CellCall`` says)."""
        address = entry.outputs[i] if i < len(entry.outputs) else ""
        return lambda value: [(value, address)] if address else []

    def _damaged(self, problem: Exception | str, blobs: Sequence[str], *, word: str = "damaged") -> str:
        """Forget a damaged (or missing) result and say so; the reason of the run that recomputes it."""
        what = problem if isinstance(problem, str) else f"is damaged ({problem})"
        _warn(f"nbcache: the cached result of step {self.name!r} {what}; recomputing it")
        if self.team is not None:  # (it came from the team cache: not taken again, replaced once recomputed)
            self.cache.team.refuse(self.key, tuple(blobs))
        with contextlib.suppress(Exception):
            self.store.delete(self.key, blobs)
        self.outcome, self.changes = Outcome.DAMAGED, ()
        return f"cached result was {word}" if self.team is None else f"the team cache's result was {word} ({what})"

    def _found_damaged_later(self, entry: Entry) -> Callable[[str], None]:
        """What to do if the background check finds a mapped value served by this hit damaged on disk."""
        name, key, store, served = self.name, self.key, self.store, time.time()
        team = self.cache.team if self.team is not None else None  # (pulled: maybe not written here yet)

        def damaged(problem: str) -> None:
            with contextlib.suppress(Exception):  # (removed first: the warning may be made an error)
                pending = team is not None and team.forget(key)  # (pulled, not written yet: now never is)
                if pending or store.get_entry(key) == entry:  # (not a result stored since, recomputed)
                    store.delete(key, entry.blobs)
                if team is not None:  # (and the team cache's copy: not taken again, replaced once recomputed)
                    team.refuse(key, entry.blobs)
            at = time.strftime("%H:%M:%S", time.localtime(served))
            _warn(f"nbcache: the cached result step {name!r} returned at {at} was found damaged on disk"
                  f" after it was served ({problem}), so that value may be wrong; it is removed from the cache:"
                  " run the step again to recompute it")

        return damaged

    def why(self) -> str:
        """Why there is no entry: what differs from this step's latest run (sets ``outcome``, ``changes``)."""
        try:
            last = self.store.get_latest(self.identity)
        except Damaged:  # written by an nbcache of another format
            self.outcome, self.changes = Outcome.FIRST_RUN, (FORMAT_CHANGED,)
            return render(self.outcome, self.changes)
        except Exception:
            last = None
        self.outcome, self.changes = changes_since(last, self.code, self.deps, self.inputs, self.version, self.kind)
        if self.outcome is Outcome.REMOVED and last is not None and last.key == self.key and last.uncached:
            self.outcome = Outcome.ALWAYS_RUNS  # nothing changed, but nothing could be stored
            return f"runs every time: {last.uncached}"
        if last is not None and last.failed and self.outcome in (Outcome.REMOVED, Outcome.CHANGED):
            if self.outcome is Outcome.REMOVED:  # (the same key: it failed, and nothing was stored)
                self.outcome = Outcome.RETRIED
                return f"its last run failed ({last.failed}); it runs again"
            return f"{render(self.outcome, self.changes, self.kind)} since its last run, which failed ({last.failed})"
        return render(self.outcome, self.changes, self.kind)

