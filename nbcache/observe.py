"""What a step turned out to depend on while it ran: the ``Observer`` around a run's body.

A step's key is made before it runs, from its code and the inputs that can be seen in advance. Some
dependencies only show while it runs, and are stored with its result as *checks* (``checks.py``), verified
on every lookup:

- files it opened for reading (``pd.read_csv``, ``np.load``, ``open``: any Python-level open, seen through
  an audit hook (``audit.py``), and SQLite databases opened by path), in its own code or in threads it
  started;
- files it wrote that still exist after it, and folders it made (a hit does not make them again: if one
  was removed or changed since, the step runs again to make it);
- folders it listed (``os.listdir``, ``glob``, ``Path.iterdir``): a file added or removed is a change;
- the state of a global random generator it drew from without seeding it first;
- the ambient state (``ambient.py``) it changed, as it found it, and for a cell the settings that change
  how its output looks;
- notebook variables it read through ``eval``/``exec`` of a string (seen as the string is compiled).

A file is compared by size, modification time and inode first, and by content only when those differ, so
``touch`` alone does not cause a run. Files of the interpreter, of installed packages, of nbcache's own
cache directory and of the machine (``/proc``, ``/dev``, ...) are not dependencies: the code fingerprint and
the library versions cover code. Opens from C code that bypasses Python's ``open`` (pyarrow, h5py) are not
seen (``docs/pitfalls.md``).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from . import ambient
from .audit import inherit, unwatch, watch
from .callers import users, users_own
from .checks import (
    NONE, UNHASHABLE, Check, appended_head, checks_from_json, file_digest, first_failure, listing_digest, stat_of,
    tree_digest,
)
from .datapaths import is_data_file, is_data_path
from .fingerprint_source import is_user_file
from .hashing import hash_value
from .modulestate import ModuleStates, changed_variables, module_states, unrepeatable
from .priors import prior_digest
from .sourceimports import used_files

# Check, checks_from_json, first_failure (checks.py) and inherit (audit.py) are imported from here too: a
# cached call uses the observer and its checks as one
__all__ = ["Check", "Observer", "checks_from_json", "first_failure", "inherit"]

_ABSENT = object()


@dataclass(eq=False)
class Observer:
    """Watches one run of a step: what it opened, listed and evaluated, how it used the global random
    generators, and which ambient state it changed. Use as a context manager around the body."""

    cache_dir: str
    namespace: dict | None = None  # the notebook's variables (for names read through eval)
    bound: frozenset[str] = frozenset()  # what the step binds itself: read through eval, they are no inputs
    renders: bool = False  # it shows output (a cell): the settings that change how output looks are inputs
    thread: int = field(default_factory=threading.get_ident)
    start: str = field(default_factory=os.getcwd)  # the working directory the run started in
    read: dict[str, None] = field(default_factory=dict)
    wrote: dict[str, None] = field(default_factory=dict)
    appended: dict[str, None] = field(default_factory=dict)  # of those, files it only appended to (a log)
    prior: dict[str, str] = field(default_factory=dict)  # files it wrote after reading them (or appended
    #                                                       to): their content's digests as it found them
    made: dict[str, None] = field(default_factory=dict)  # folders it created
    commands: dict[str, None] = field(default_factory=dict)  # programs its own code started
    removed: dict[str, str] = field(default_factory=dict)  # paths its own code deleted ("tree": rmtree)
    listed: dict[str, None] = field(default_factory=dict)
    evaluated: dict[str, None] = field(default_factory=dict)
    failed: bool = False
    read_cwd: bool = False  # its own code asked for the working directory (os.getcwd, Path.cwd, abspath("x"))
    environ: dict[str, None] = field(default_factory=dict)  # environment variables its own code read
    before: ambient.Snapshot | None = None
    after: ambient.Snapshot | None = None
    inherited: list[Check] = field(default_factory=list)  # the checks of steps served from the cache inside
    seeded_first: set[str] = field(default_factory=set)  # generators seeded before anything was drawn
    drew_first: set[str] = field(default_factory=set)  # generators drawn from before being seeded
    foreign: frozenset[int] = frozenset()  # threads whose events are not the run's (see __enter__)
    _patches: list[tuple[Any, str, Any]] = field(default_factory=list)
    _aliases: list[tuple[Any, Any]] = field(default_factory=list)  # (a function, its wrapper: _wrap)
    _pending: list[Any] = field(default_factory=list)  # cancel the taking of a state when its module is imported
    set_up_logging: bool = False  # its own code added or removed a logging handler (basicConfig, addHandler)
    set_up_shell: dict[str, None] = field(default_factory=dict)  # what its own code changed of IPython's display
    #                                                               formatters and magics (``_watch_shell``)
    modules: frozenset[str] = frozenset()  # the modules imported before it ran
    imported: list[str] = field(default_factory=list)  # the user's modules it imported, in order
    reloaded: dict[str, None] = field(default_factory=dict)  # ... and reloaded (importlib.reload)
    module_states: ModuleStates = field(default_factory=dict)  # the variables of the user's modules, before it ran
    changed_modules: list[str] = field(default_factory=list)  # ... those it changed ("config.THRESHOLD")
    held: list[Check] = field(default_factory=list)  # the notebook's variables its outputs hold (cellvars.held_by)

    def __enter__(self) -> Observer:
        on_worker = ambient.RAN_ON.get()
        if on_worker is not None:  # (on a Dask worker, what the worker's own threads do is not the step's)
            self.foreign = on_worker.foreign - {self.thread}
        self.before = ambient.snapshot()
        self.modules = frozenset(sys.modules)
        self.module_states = module_states(self.namespace)
        self._patch_seeds()
        self._watch_logging()
        self._watch_shell()
        self._watch_reload()
        watch(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        unwatch(self)
        for cancel in self._pending:
            cancel()
        self._pending.clear()
        for owner, name, value in reversed(self._patches):
            setattr(owner, name, value)
        self._patches.clear()
        namespace = self.namespace or {}
        originals = {id(wrapper): original for original, wrapper in self._aliases}
        for name, value in list(namespace.items()):  # the names bound to a wrapper: before the run, or by
            if id(value) in originals:  # `from numpy.random import seed` during it
                namespace[name] = originals[id(value)]
        self._aliases.clear()
        self.after = ambient.snapshot()
        self._read_modules_imported()
        self.changed_modules = changed_variables(self.module_states, self.reloaded)

    def changes_modules(self) -> str | None:
        """Why the run is not stored, if it changed variables of modules (``modulestate.py``)."""
        return unrepeatable(self.changed_modules) if self.changed_modules else None

    def _read_modules_imported(self) -> None:
        """The source files of the user's modules the run imported are files it read, so that an edit to one runs
        the step again: a key holds what it reads in their sources (``sourceimports.py``), not a module found only
        as the step ran (``sys.path.append("src")`` first) or named by a variable (``import_module(name)``)."""
        self.imported = []
        for name in [n for n in sys.modules if n not in self.modules]:
            path = getattr(sys.modules.get(name), "__file__", None)
            if isinstance(path, str) and is_user_file(path):
                self.imported.append(name)
        for path in used_files(self.imported):  # (and the user's modules they import, imported before or not)
            self.read.setdefault(os.path.abspath(path))

    def _patch_seeds(self) -> None:
        """Wrap the seeding functions of the generators (``np.random.seed``, and a name the notebook bound
        to it with ``from numpy.random import seed``), to tell `seed(); draw()`, which does not depend on
        the state the step started from, from `draw()`, which does."""
        assert self.before is not None
        for kind in ambient.KINDS:
            if kind.rng and kind.seed and kind.name in self.before.values:
                self._patch_seed(kind)
            elif kind.rng and kind.pending():  # numpy.random, not imported yet: its state is the one it gets
                # on import, and whether the run seeds it is seen from then on (as if it had been imported now)
                self._pending.append(ambient.when_imported(kind.module, lambda _, kind=kind: self._imported(kind)))

    def _imported(self, kind: ambient.AmbientKind) -> None:
        """The run imported the module of a generator: its state as imported is the one the run started from."""
        assert self.before is not None
        if not self._pending:  # (imported by another thread as the run ended)
            return
        try:
            self.before.values[kind.name] = kind.get()
        except Exception:
            return
        self._patch_seed(kind)

    def _patch_seed(self, kind: ambient.AmbientKind) -> None:
        assert kind.seed is not None
        owner = sys.modules.get(kind.seed[0])
        if owner is not None:  # (from any thread: a step drawing in threads it started seeds there too)
            self._wrap(owner, kind.seed[1], lambda frame, *_: self._seeded(kind), any_thread=True, alias=True)

    def _seeded(self, kind: ambient.AmbientKind) -> None:
        if kind.name not in self.seeded_first and kind.name not in self.drew_first:
            unchanged = self.before is not None and self.before.same(kind.name)
            (self.seeded_first if unchanged else self.drew_first).add(kind.name)

    def _watch_logging(self, logging: Any = None) -> None:
        """Wrap ``Logger.addHandler`` and ``removeHandler`` (once ``logging`` is imported), to tell a run whose
        own code sets up where logs go (``basicConfig``, ``addHandler``): a hit would not set it up again. A
        library doing so as it is imported (dask.distributed), or adding a ``NullHandler``, sets up nothing."""
        logging = logging or sys.modules.get("logging")
        if logging is None:
            self._pending.append(ambient.when_imported("logging", self._watch_logging))
            return

        def changes(frame: Any, logger: Any, handler: Any, *_: Any) -> None:
            if not isinstance(handler, logging.NullHandler) and users(frame, "logging"):
                self.set_up_logging = True

        for name in ("addHandler", "removeHandler"):
            self._wrap(logging.Logger, name, changes)

    def _watch_shell(self) -> None:
        """Wrap how IPython's display formatters (``for_type``, ``for_type_by_name``, ``pop``) and magics
        (``MagicsManager.register``, ``register_function``) are changed, to tell a run whose own code changes how
        values are shown (``sympy.init_printing()``, ``set_matplotlib_formats("svg")``) or defines magics
        (``@register_line_magic``): a hit would not do it again. What an import does (the inline backend
        registering its figure formats as pyplot is imported) happens again as a hit imports the module, and what a
        line magic does (``%matplotlib``, ``%config``, ``%load_ext``) as a hit runs it again: neither counts."""
        formatters, magic = sys.modules.get("IPython.core.formatters"), sys.modules.get("IPython.core.magic")
        targets = [(formatters.BaseFormatter, name, "changes how IPython shows values (a display formatter)")
                   for name in ("for_type", "for_type_by_name", "pop")] if formatters is not None else []
        targets += [(magic.MagicsManager, name, "defines magics") for name in ("register", "register_function")] \
            if magic is not None else []
        def changes(frame: Any, what: str) -> None:
            if users_own(frame):
                self.set_up_shell.setdefault(what)

        for owner, name, what in targets:
            self._wrap(owner, name, lambda frame, *_, what=what: changes(frame, what))

    def _watch_reload(self) -> None:
        """Wrap ``importlib.reload`` (and a name of the notebook bound to it), to tell the user's modules a run
        reloads: a hit reloads them again, or the cells below would find the module as it was before."""
        def reloading(frame: Any, module: Any, *_: Any) -> None:
            if isinstance(path := getattr(module, "__file__", None), str) and is_user_file(path):
                self.reloaded.setdefault(module.__name__)

        self._wrap(importlib, "reload", reloading, alias=True)

    def _wrap(self, owner: Any, name: str, note: Any, *, any_thread: bool = False, alias: bool = False) -> None:
        """While the run is under way, ``owner.name`` (a function of a module, a method of a class) first calls
        ``note(the frame of its caller, *its arguments)``: in the run's own thread only, unless ``any_thread``.
        With ``alias``, the notebook's names bound to it call the wrapper too (``from importlib import reload``),
        and are bound to it again when the run ends (``__exit__``)."""
        original = vars(owner).get(name)
        if original is None:
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if any_thread or threading.get_ident() == self.thread:
                note(sys._getframe(1), *args)
            return original(*args, **kwargs)

        self._patches.append((owner, name, original))
        setattr(owner, name, wrapper)
        if alias:
            self._aliases.append((original, wrapper))
            names = self.namespace or {}
            for bound, value in list(names.items()):
                if value is original:
                    names[bound] = wrapper

    def changed_state(self) -> dict[str, Any]:
        """The ambient state the run changed, to be set again on a hit."""
        assert self.before is not None and self.after is not None
        changed = self.after.changed_since(self.before)
        if ambient.RAN_ON.get():  # (on a Dask worker the global generators are Dask's too: ambient.OnWorker)
            changed = {name: v for name, v in changed.items() if not ambient.BY_NAME[name].rng}
        return changed

    def checks(self) -> tuple[Check, ...]:
        """The dependencies seen, as checks to store with the result."""
        assert self.before is not None and self.after is not None
        found: list[Check] = []
        for path, before in self.prior.items():  # read and written: it read what the file held before
            if path in self.read and is_data_path(path, self.cache_dir):
                digest = prior_digest(path, before)
                if digest:
                    found.append(Check("file", self._stored_path(path), digest))
        for path in self.read:  # (a file it changed is checked as it found it, above)
            if path not in self.wrote and is_data_file(path, self.cache_dir):
                found.append(self._file_check("file", path))
        for path in self.wrote:  # (one it only appended to and did not read, a log: as long as it begins alike,
            if is_data_file(path, self.cache_dir) and os.path.isfile(path):  # what others append does not count)
                found.append(Check("appended", self._stored_path(path), appended_head(path))
                             if path in self.appended and path not in self.read else self._file_check("wrote", path))
        for path in self.made:
            if is_data_path(path, self.cache_dir) and os.path.isdir(path):
                found.append(Check("made", self._stored_path(path), "folder"))
        for path in self.listed:
            if is_data_path(path, self.cache_dir) and os.path.isdir(path):
                found.append(Check("folder", self._stored_path(path), listing_digest(path)))
        for path, how in self.removed.items():  # (what a hit would not delete: the state the run left, checked)
            if is_data_path(path, self.cache_dir):
                if not os.path.lexists(path):
                    found.append(Check("gone", self._stored_path(path), "deleted"))
                elif how == "tree" and os.path.isdir(path):  # (made again: a file it wrote is a check of its own)
                    found.append(Check("tree", self._stored_path(path), tree_digest(path)))
        on_worker = ambient.RAN_ON.get() is not None  # (a draw there holds on workers only: ambient.OnWorker)
        for kind in ambient.KINDS:
            if kind.rng and kind.name in self.before.values and kind.name in self.after.values \
                    and kind.name not in self.seeded_first \
                    and not ambient.equal(self.before.values[kind.name], self.after.values[kind.name]):
                found.append(Check("random", kind.name, ambient.WORKER_DRAW if on_worker else
                                   ambient.state_hash(kind.name, self.before.values[kind.name]) or ""))
        found.extend(self._state_checks())
        if self.evaluated and self.namespace is not None:
            for name in self.evaluated:
                if name in self.namespace and name not in self.bound:
                    try:
                        found.append(Check("variable", name, hash_value(self.namespace[name])))
                    except Exception:
                        found.append(Check("variable", name, UNHASHABLE))  # never holds: always runs
        unique: dict[tuple[str, str], Check] = {}
        for check in [*found, *self.held, *self.inherited]:
            if check.digest:
                unique.setdefault((check.kind, check.target), check)
        return tuple(unique.values())

    def _state_checks(self) -> list[Check]:
        """The process-wide state the run depends on: for a cell, every setting that changes how its output
        looks (display options, rc settings, warnings filters), as it started; for any step, the settings
        that change what code computes (the scikit-learn config, numpy's error handling, pandas' ``future.``
        options, the warnings filters that make a warning an error) while their library is imported, the settings it changed (``os.environ["PATH"] += ...``
        depends on what PATH was) and the folder it moved from. Each holds when the state is as the run found
        it, or as it left it (the step run again in the same kernel)."""
        assert self.before is not None and self.after is not None
        found = []
        for kind in ambient.KINDS:
            name = kind.name
            before, after = self.before.values.get(name, _ABSENT), self.after.values.get(name, _ABSENT)
            seen = before is not _ABSENT or after is not _ABSENT
            whole = (self.renders and kind.renders) or (kind.computes and seen) or (name == CWD and self.read_cwd) or (
                kind.shape == "value" and not kind.rng and before is not _ABSENT and after is not _ABSENT
                and not ambient.equal(before, after))
            if whole:
                digests = [NONE if v is _ABSENT else ambient.state_hash(name, v) or UNHASHABLE for v in (before, after)]
                found.append(Check("state", name, "|".join(digests)))
            elif kind.computing is not None and seen:  # (the warnings filters up to one set to "error")
                digests = [NONE if v is _ABSENT else ambient.setting_digest(v, kind.computing[0], kind)
                           for v in (before, after)]
                found.append(Check("setting", f"{name}\t{kind.computing[0]}", "|".join(digests)))
            elif kind.shape == "mapping" and before is not _ABSENT and after is not _ABSENT:
                for key in sorted({*before, *after}, key=str):
                    if not ambient.equal(before.get(key, _ABSENT), after.get(key, _ABSENT)):
                        digests = [ambient.setting_digest(state, key) for state in (before, after)]
                        found.append(Check("setting", f"{name}\t{key}", "|".join(digests)))
        # a variable its code read holds only as the run found it (first: this check, not the one above): one
        # it read and then set from what it read (`n + 1`) must be read anew when the step runs again
        environ = self.before.values.get(ENVIRON, {})
        return [Check("setting", f"{ENVIRON}\t{key}", "|".join([ambient.setting_digest(environ, key)] * 2))
                for key in self.environ] + found

    def _stored_path(self, path: str) -> str:
        """A path below the folder the run started in, relative to it (so that a copy of the project
        checks its own files); any other path, absolute."""
        relative = os.path.relpath(path, self.start)
        return path if relative.startswith("..") else relative

    def _file_check(self, kind: str, path: str) -> Check:
        try:
            st = os.stat(path)
        except OSError:
            return Check(kind, path, "")
        return Check(kind, self._stored_path(path), file_digest(path), stat_of(st))


CWD = "working directory"  # the ambient kind of os.getcwd()
ENVIRON = "environment variables"  # the ambient kind of os.environ
