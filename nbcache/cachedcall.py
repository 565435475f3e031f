"""One call of a step, whatever kind: its key, serving it from the store, saving it, and its record.

``@step`` functions (``step.py``) and ``%%step`` cells (``cellstep.py``) differ in how they find their
inputs and run their body; everything else, from the key to the record that says why a step ran, is here.

Nothing nbcache does may cost a result: what fails in keeping it (pickling, storing, recording) is a trouble,
told in one warning by the run's record (every call ends with one; ``keeping.py``); what fails in computing
the key (``make_key``) runs the call uncached. While one caller computes a key, others wait for its result
(``compute_once``).
"""

from __future__ import annotations

import contextlib
import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import ambient
from .audit import unobserved, watched
from .cache import Cache
from .entry import AMBIENT_BLOB, Entry, Latest
from .errors import UncacheableError
from .errors import warn as _warn
from .frame import Frame
from .fingerprint_source import users_class
from .hashing import Walk, hash_value
from .keeping import Keeping
from .serving import MISS, Serving
from .sharing import shared_between
from .key import make_key
from .records import SESSION, Change, Outcome, StepRun, describe_error
from .store import Store

if TYPE_CHECKING:
    from .observe import Observer

__all__ = ["StepCall", "MISS", "addresses_of"]

FAILED_SAID = 120  # characters of a failed run's error in the next call's reason

class StepCall(Serving, Keeping):
    """Key, lookup, save and record for one call. Subclasses fill ``code``, ``deps`` and ``inputs``."""

    def __init__(self, cache: Cache, store: Store, name: str, *, version: str | None, started_at: datetime,
                 t0: float, kind: str = "function", enabled: bool = True, identity: str | None = None) -> None:
        self.cache = cache
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
        self.outcome = Outcome.FIRST_RUN  # why it ran (set by ``run``), for the record
        self.changes: tuple[Change, ...] = ()
        self.carried_from: set[tuple[int, int, int]] = set()  # files of the inputs whose address was carried
        super().__init__()  # (the troubles of keeping its result: keeping.py)

    def make_key(self, gather: Callable[[], None] | None = None) -> None:
        """Gather the key's ingredients (``gather``: code, inputs), make the key, or warn why there is none: what
        fails in it, not only an input that cannot be hashed (a hasher's bug, memory), runs the call uncached."""
        try:
            if gather is not None:  # outside any step, what making the key reads is nbcache's own work, which
                # a step running in another thread (a Dask worker's) must not take for its own
                with contextlib.nullcontext() if watched() else unobserved:
                    gather()
            if not self.problem:
                self.key = make_key(self.identity, self.code, self.inputs, self.version)
        except Exception as exc:
            if not self.problem:
                self.problem = f"its key could not be computed ({type(exc).__name__})"
                self.problem_detail = f"computing its key failed ({describe_error(exc)})"
        if self.problem and self.enabled:
            _warn(f"nbcache: step {self.name!r} runs without the cache: {self.problem_detail}")

    def hash_input(self, name: str, value: Any, noun: str, parts: dict[str, str] | None = None) -> bool:
        """Hash one input (an array restored unchanged carries its address: ``carry.py``); if it cannot be
        hashed, note the problem and return False (anything else: ``make_key``'s). ``parts``: where to note,
        for code, the digest of each global value it reads (``fingerprint_parts``'s)."""
        carried = self.cache.carry.address_of(value)
        if carried is not None:
            self.inputs[name] = carried.address
            self.carried_from.add(carried.identity)
            return True
        walk = Walk()
        if parts is not None and (callable(value) or users_class(type(value))):  # (a function, a class, a
            walk.parts = parts  # function a decorator wrapped; an object of the user's class, whose methods may run)
        try:
            self.inputs[name] = hash_value(value, root=name, walk=walk)
        except UncacheableError as exc:
            self.problem = f"uncacheable {noun} {exc.path} ({exc.type_name})"
            self.problem_detail = str(exc)
            return False
        self.note_globals_reader(walk)
        return True

    def note_globals_reader(self, walk: Walk) -> None:
        """A function this step calls reads the namespace through ``globals()``: it runs every time (what it
        reads cannot be known)."""
        if walk.globals_reader and not self.always_runs:
            self.always_runs = (f"{walk.globals_reader} reads the notebook's variables through globals(), so"
                                " nbcache cannot tell which ones it depends on")

    def run(self) -> Any:
        """Serve the call from the store, or run it (and store it, when it can be)."""
        if not self.enabled:
            return self._execute_as(Outcome.DISABLED, "cache disabled", store=False)
        if self.problem:
            return self._execute_as(Outcome.UNCACHEABLE, self.problem, store=False)
        if self.always_runs:
            self.remember_last(uncached=self.always_runs)  # (a failure to is told by the run's record)
            return self._execute_as(Outcome.ALWAYS_RUNS, f"runs every time: {self.always_runs}", store=False)
        try:
            values, entry, reason = self.lookup()
        except Exception as exc:  # the index itself failed (locked for too long, damaged): run uncached
            _warn(f"nbcache: step {self.name!r} ran without the cache, which could not be read: {exc}")
            return self._execute_as(Outcome.UNREADABLE, "cache unreadable", store=False)
        if values is MISS:
            return self.compute_once(reason)
        self.outcome, self.changes = self.hit_outcome(), ()
        return self.restore(values, entry)

    def compute_once(self, reason: str) -> Any:
        """Run the body holding the key's lock, so that callers of the same key at the same time (threads,
        processes, kernels sharing the cache) run it once: the others wait, then find its result. A caller
        that waited ``cache.lock_timeout_s`` (or whose lock cannot be had at all) runs the body itself, as does
        a call of the key this very thread is computing (a step calling itself: waiting would never end)."""
        mine = self.cache.keys_computing()
        if self.key in mine:
            return self.execute(reason, store=True)
        try:
            with unobserved:
                held = self.store.lock(self.key, self.cache.lock_timeout_s)
                acquired = held.__enter__()
        except Exception:  # a directory where no lock can be made: no single-flight, but the result
            return self.execute(reason, store=True)
        try:
            if acquired:  # whoever held it may have stored the result meanwhile
                why_it_runs = self.outcome, self.changes
                values, entry, _ = self.lookup()
                if values is not MISS:
                    self.outcome, self.changes = self.hit_outcome(), ()
                    return self.restore(values, entry)
                self.outcome, self.changes = why_it_runs  # (the first look said why: damage, a change, ...)
            mine.add(self.key)
            return self.execute(reason, store=True)
        finally:
            mine.discard(self.key)
            with unobserved, contextlib.suppress(Exception):
                held.__exit__(None, None, None)

    def _execute_as(self, outcome: Outcome, reason: str, *, store: bool) -> Any:
        self.outcome, self.changes = outcome, ()
        return self.execute(reason, store=store)

    def execute(self, reason: str, *, store: bool) -> Any:
        """Run the body, record the run, store the result if ``store``; return what the caller gets."""
        raise NotImplementedError

    def restore(self, values: list[Any], entry: Entry) -> Any:
        """Give back a stored result and record the hit."""
        raise NotImplementedError

    def set_state(self, state: dict[str, Any]) -> None:
        """On a hit: set the process-wide state the first run left (RNG, rc settings, options) again."""
        failed = ambient.apply(state)
        if failed:
            _warn(f"nbcache: step {self.name!r} came from the cache, but its {', '.join(failed)} could not be"
                  " set as its run left them")

    def save(self, values: Sequence[Any], *, duration_s: float, is_tuple: bool, result: str = "",
             addresses: tuple[str, ...] | None = None, keep_shared: bool = False) -> tuple[str, ...]:
        """Store each of ``values`` under this call's key; return their content addresses. With ``keep_shared``,
        values that share objects (``pipe, pipe.named_steps["clf"]``: ``sharing.py``) are stored as their tuple,
        one value (whose hash is ``result``), one pickle, which keeps them one graph of objects: an entry of one
        value, as any nbcache reads it, and a hit returns that tuple. Raises ``Unpicklable`` (nothing stored) if
        a value cannot be serialized; a failure to write is a trouble (a warning)."""
        self.doing = "pickling its result"
        if keep_shared and addresses and all(addresses) and result and shared_between(values):
            frames, stored, is_tuple = [self.cache.frame(tuple(values))], (result,), False
        else:
            frames = [self.cache.frame(value) for value in values]
            if addresses is None or not all(addresses):
                addresses = tuple(_address(v, f) for v, f in zip(values, frames))
            stored = addresses
        names = stored
        self.doing = "storing its result"
        state = self.observer.changed_state() if self.observer else {}
        if state:  # the process-wide state the run changed rides along as one more blob, set again on a hit
            frames.append(self.cache.frame(state))  # (named by all its bytes: an RNG's state is in its buffers)
            names = (*names, f"{AMBIENT_BLOB}-{frames[-1].checksum().hex()}")
        self._put(frames, names, stored, kind="function", duration_s=duration_s, is_tuple=is_tuple, result=result,
                  ambient=bool(state))
        return addresses

    def save_payload(self, payload: Any, addresses: tuple[str, ...], *, duration_s: float, sizes: dict[str, int],
                     by_value: set[int] = frozenset(), live: Mapping[int, str] | None = None) -> None:
        """Store ``payload`` whole (one pickle keeps the identity of objects shared inside it), recording
        ``addresses`` as the content addresses of the outputs and ``sizes`` as theirs; the objects in ``live``
        as references to the notebook's variables (``pickler.py``). Raises ``Unpicklable``."""
        self.doing = "pickling its result"
        frame = self.cache.frame(payload, by_value=by_value, live=live)
        self.doing = "storing its result"
        # named by its outputs' content; by all its bytes if one has no hash (a dict view: its address is "")
        name = hash_value(addresses) if all(addresses) else f"bytes-{frame.checksum().hex()}"
        self._put([frame], (name,), addresses, kind="cell", duration_s=duration_s, sizes=sizes)

    def _put(self, frames: list[Frame], names: tuple[str, ...], addresses: tuple[str, ...], *, kind: str,
             duration_s: float, sizes: dict[str, int] | None = None, **fields: Any) -> None:
        if self.carried_from and (problem := self.cache.verifier.confirm(self.carried_from)) is not None:
            self.trouble(f"its result may be wrong and was not stored: an array it was given, served from the"
                         f" cache, was found damaged ({problem})", uncached=True)
            return
        try:
            # A blob is named by content and by its exact bytes: values that hash alike but differ in what
            # hashing ignores (dict order, DataFrame.attrs) are never served for one another.
            blobs = tuple(f"{name}-{frame.identity()}" for name, frame in zip(names, frames))
            self.sizes = sizes if sizes is not None else {a: f.nbytes for a, f in zip(addresses, frames)}
            entry = Entry(step=self.name, kind=kind, outputs=tuple(addresses), blobs=blobs, sizes=self.sizes,
                          created_at=self.started_at.timestamp(), duration_s=duration_s,
                          checks=self.observer.checks() if self.observer is not None else (), **fields)
            entry = self.cache.seal(self.key, entry)
            with unobserved:
                for address, frame in zip(blobs, frames):
                    self.cache.put(self.store, address, frame)
                self.store.put_entry(self.key, entry)
        except Exception as exc:  # disk full, read-only directory, ...
            self.trouble(f"its result could not be stored ({describe_error(exc)})", uncached=True)
            return
        self.stored = True
        with contextlib.suppress(Exception):  # (what fails in an upload is said by the team cache, once)
            if (team := self.cache.team_if_any) is not None:
                team.push_later(self.store, self.key, entry)
        if self.carried_from:  # (if one of those turns out damaged, this result goes with it)
            self.cache.carry.derived(self.carried_from, self.store, self.key, blobs)
        self.remember_last(force=True)
        try:  # past the size limit, the least recently used entries go (never this one)
            with unobserved:
                self.cache.make_room(self.store, self.key)
        except Exception as exc:
            self.trouble(f"older results could not be evicted to keep the cache under its size limit"
                         f" ({describe_error(exc)})")

    def remember_last(self, force: bool = False, uncached: str | None = None, failed: str | None = None) -> None:
        """Record this call's ingredients as the step's latest (``uncached``: why its result was not stored;
        ``failed``: the error its body raised)."""
        try:
            with unobserved:
                self.cache.latest.write(self.store, self.identity, self._latest(uncached, failed), force=force)
        except Exception as exc:  # only the wording of a later reason depends on it: say so, go on
            self.trouble(f"its ingredients could not be written ({describe_error(exc)})")

    def _latest(self, uncached: str | None = None, failed: str | None = None) -> Latest:
        return Latest(key=self.key, code=self.code, deps=self.deps, inputs=self.inputs, version=self.version,
                      kind=self.kind, name=self.name, uncached=uncached, failed=failed)

    def record_failure(self, reason: str, error: BaseException | None, *, store: bool) -> None:
        """Record a run whose body raised ``error`` (nothing stored). One that would have stored its result
        (``store``) is the step's latest too, failed: the next call's reason says what changed since, or that
        this run failed, rather than ``first run``."""
        said = describe_error(error, limit=FAILED_SAID) if error is not None else "it failed"
        if "\n" in said:  # (a reason is one line: the first of the message, as a traceback's last line starts)
            said = said.splitlines()[0] + " ..."
        if store:
            self.remember_last(force=True, failed=said)
        self.record(cached=False, reason=reason, outputs=(), status="failed",
                    error=describe_error(error, limit=10_000) if error is not None else None)

    def observe(self, bound: frozenset[str] = frozenset()) -> Observer:
        """An observer of this call's run (what it reads, writes, draws, changes); ``bound``: what it binds."""
        from .observe import Observer  # (a run's: a hit never imports it)

        self.observer = Observer(self.store.location or os.devnull, self.namespace, bound,
                                 renders=self.kind == "cell")
        return self.observer

    def not_cacheable_after_run(self) -> str | None:
        """Why the run just observed must not be stored: it used something a hit cannot repeat."""
        if self.observer is None or self.observer.failed:  # (None: it failed to start)
            return "what it read could not be followed"
        if self.observer.commands and not self.allow_shell:
            return (f"it runs a shell command ({', '.join(self.observer.commands)}), which a hit would not run;"
                    " %%step --allow-shell caches it anyway")
        if self.observer.set_up_logging:
            return "it sets up logging (a handler added or removed), which a hit would not set up again"
        if self.observer.set_up_shell:
            return f"it {' and '.join(self.observer.set_up_shell)}, which a hit would not do again"
        return self.observer.changes_modules()

    def record(self, *, cached: bool, reason: str, outputs: tuple[str, ...], saved_s: float = 0.0,
               status: str = "ok", error: str | None = None, output_names: tuple[str, ...] = (),
               result: str = "") -> StepRun | None:
        """Append the run to the history (the last thing every call does); then the one warning of what went
        wrong keeping the call, if anything did. Never raises (but that warning, made an error)."""
        self.recorded, run = self.recorded + 1, None
        try:
            on_worker = ambient.RAN_ON.get()  # (a call on a Dask worker is recorded for the session that sent it)
            worker, session = (on_worker.address, on_worker.session) if on_worker else ("", SESSION)
            state = self.hit_outcome() if cached else (Outcome.FAILED if status == "failed" else self.outcome)
            run = StepRun(
                step=self.name, cached=cached, duration_s=time.perf_counter() - self.t0, saved_s=saved_s,
                key=self.key, code=self.code, inputs=self.inputs, outputs=outputs, reason=reason,
                started_at=self.started_at, status=status, version=self.version, deps=self.deps, error=error,
                kind=self.kind, output_names=output_names, sizes=self.sizes, result=result, state=state,
                changes=self.changes, worker=worker, session=session)
            with unobserved:
                self.cache.record(self.store, run)
        except Exception as exc:
            self.trouble(f"its run could not be recorded ({describe_error(exc)})")
        self.warn_troubles(hit=cached)
        return run


def addresses_of(values: Sequence[Any]) -> tuple[str, ...]:
    """Content addresses of values that are not stored (for the record and the lineage); one value given
    twice (a cell's variable and its alias) is hashed once."""
    seen: dict[int, str] = {}
    return tuple(seen[id(v)] if id(v) in seen else seen.setdefault(id(v), _address(v)) for v in values)


def _address(value: Any, frame: Frame | None = None) -> str:
    """Content address of an output: its value hash, or for a value with no hashable content, its bytes."""
    try:
        return hash_value(value)
    except Exception:  # (an UncacheableError, or an exception that cannot even be shown)
        return "" if frame is None else "bytes-" + frame.checksum().hex()

