"""What a step turned out to depend on while it ran, and checking that again before a hit.

A step's key is made before it runs, from its code and the inputs that can be seen in advance. Some
dependencies only show while it runs, and are stored with its result as *checks*, verified on every lookup:

- files it opened for reading (``pd.read_csv``, ``np.load``, ``open``: any Python-level open, seen through
  an audit hook, and SQLite databases opened by path), in its own code or in threads it started;
- files it wrote that still exist after it, and folders it made (a hit does not make them again: if one
  was removed or changed since, the step runs again to make it);
- folders it listed (``os.listdir``, ``glob``, ``Path.iterdir``): a file added or removed is a change;
- the state of a global random generator it drew from without seeding it first;
- notebook variables it read through ``eval``/``exec`` of a string (seen as the string is compiled).

A file is compared by size, modification time and inode first, and by content only when those differ, so
``touch`` alone does not cause a run. Files of the interpreter, of installed packages, of nbcache's own
cache directory and of the machine (``/proc``, ``/dev``, ...) are not dependencies: the code fingerprint and
the library versions cover code. Opens from C code that bypasses Python's ``open`` (pyarrow, h5py) are not
seen (``docs/pitfalls.md``).

The audit hook is installed once per process (Python cannot remove one) and returns at once while no step
is being observed.
"""

from __future__ import annotations

import ast
import os
import stat
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import ambient
from .fingerprint import is_user_code, library_roots

__all__ = ["Check", "Observer", "checks_from_json", "first_failure", "inherit"]

_HASH_CHUNK = 8 << 20
_IGNORED_SUFFIXES = (".pyc", ".so", ".pyd")  # compiled code, which imports load
_KERNEL_CELLS = os.path.join(os.path.realpath(tempfile.gettempdir()), "ipykernel_")  # cells' code, as
# ipykernel writes it for tracebacks: a new folder for every kernel
_SYSTEM_ROOTS = ("/proc/", "/sys/", "/dev/", "/etc/", "/usr/", "/run/")


@dataclass(frozen=True)
class Check:
    """One dependency discovered while a step ran, with what it was then.

    ``kind`` is ``file`` (read), ``wrote`` (a file the step wrote), ``made`` (a folder it created),
    ``folder`` (listed), ``random`` (the state a global generator started from) or ``variable`` (a notebook
    variable read through eval). ``target`` is a path (relative to the folder the step started in when it
    is below it), a generator's or a variable's name. ``digest`` is the content hash; ``stat`` the file's
    (size, mtime_ns, inode) for the fast path.
    """

    kind: str
    target: str
    digest: str
    stat: tuple[int, int, int] | None = None

    def to_json(self) -> list:
        return [self.kind, self.target, self.digest, list(self.stat) if self.stat else None]

    @classmethod
    def from_json(cls, item: Any) -> Check:
        kind, target, digest, st = item
        if not (isinstance(kind, str) and isinstance(target, str) and isinstance(digest, str)):
            raise ValueError("malformed check")
        return cls(kind, target, digest, tuple(int(x) for x in st) if st else None)

    def failure(self, namespace: dict | None) -> str | None:
        """Why this dependency no longer holds, in words; None if it does."""
        if self.kind in ("file", "wrote"):
            return self._file_failure()
        if self.kind == "made":
            if not os.path.isdir(self.target):
                return f"folder {_shown(self.target)}, which it made, is gone"
            return None
        if self.kind == "folder":
            if listing_digest(self.target) != self.digest:
                return f"folder {_shown(self.target)} changed (files added or removed)"
            return None
        if self.kind in ("state", "setting"):
            name, _, key = self.target.partition("\t")
            before, _, after = self.digest.partition("|")
            now = ambient.state_hash(name) if not key else ambient.setting_hash(name, key)
            if (now or _NONE) in (before, after):  # as it started, or as it left it (run again in a kernel)
                return None
            what = (name[:-1] if name.endswith("s") else name) + f" {key}" if key else name
            plural = what.endswith("s")
            return f"the {what} {'differ' if plural else 'differs'} from when it was cached"
        if self.kind == "random":
            if ambient.state_hash(self.target) != self.digest:
                return (f"the {self.target} global random state differs from the one it started from when"
                        " cached (it draws random numbers without seeding them)")
            return None
        if self.kind == "variable":
            from .hashing import hash_value

            if self.digest == _UNHASHABLE:
                return f"variable {self.target}, read through eval/exec, cannot be hashed to tell if it changed"
            value = (namespace or {}).get(self.target, _ABSENT)
            try:
                now = "" if value is _ABSENT else hash_value(value)
            except Exception:
                now = _UNHASHABLE
            if now != self.digest:
                return f"variable {self.target} (read through eval/exec) changed"
            return None
        return f"it depends on something this nbcache does not know ({self.kind})"

    def _file_failure(self) -> str | None:
        what = f"file {_shown(self.target)}" if self.kind == "file" else f"{_shown(self.target)}, a file it wrote,"
        try:
            st = os.stat(self.target)
        except OSError:
            return f"{what} was removed"
        if not stat.S_ISREG(st.st_mode):  # a device or a pipe now: never read one to compare it
            return f"{what} is no longer a regular file"
        if self.stat is not None and _stat_of(st) == self.stat:
            return None
        if file_digest(self.target) != self.digest:
            return f"{what} changed"
        return None  # the same content: `refreshed` gives this check with the new size, time and inode

    def refreshed(self) -> Check | None:
        """For a file whose content matched but whose stat did not (touched, checked out again): this
        check with its stat now, so that the next lookup does not read the file again."""
        if self.kind not in ("file", "wrote") or self.stat is None:
            return None
        try:
            now = _stat_of(os.stat(self.target))
        except OSError:
            return None
        return None if now == self.stat else Check(self.kind, self.target, self.digest, now)


_ABSENT = object()
_UNHASHABLE = "?"  # the digest of a variable that could not be hashed: the check never holds
_NONE = "none"  # the digest of a state whose library was not imported


def first_failure(checks: tuple[Check, ...], namespace: dict | None) -> tuple[str | None, tuple[Check, ...]]:
    """Why the first check that fails fails (None if all hold), and, when all hold but some files were
    compared by content, the checks with their files' stat now (empty if none was)."""
    for check in checks:
        try:
            reason = check.failure(namespace)
        except Exception as exc:  # erring toward running
            reason = f"{check.kind} {check.target} could not be checked ({type(exc).__name__})"
        if reason:
            return reason, ()
    refreshed = [check.refreshed() for check in checks]
    if not any(refreshed):
        return None, ()
    return None, tuple(new or old for new, old in zip(refreshed, checks))


def checks_from_json(items: Any) -> tuple[Check, ...]:
    """The checks of an entry; raises ValueError if they are malformed (the entry is then damaged)."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ValueError("malformed checks")
    try:
        return tuple(Check.from_json(item) for item in items)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed checks ({exc})") from None


def _shown(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return relative if not relative.startswith("..") else path


def _stat_of(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def file_digest(path: str) -> str:
    h = xxhash.xxh3_128()
    try:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def listing_digest(path: str) -> str:
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return ""
    return xxhash.xxh3_128("\0".join(names).encode("utf-8", "surrogatepass")).hexdigest()


# -- watching a run -----------------------------------------------------------------------------------------

_active: list[Observer] = []  # the observers of the runs under way, innermost last (steps nest)
_hook_installed = False
_hook_lock = threading.Lock()


def _install_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True


def _audit(event: str, args: tuple) -> None:
    if not _active:
        return
    handler = _HANDLERS.get(event)
    if handler is None:
        return
    thread = threading.get_ident()
    own = [o for o in _active if o.thread == thread]
    # an event from a thread no step runs in comes from a worker the step started (a thread pool that
    # reads its files): it counts for every step under way, which can only make them run more often
    for observer in own or _active:
        try:
            handler(observer, args)
        except Exception:  # never break the user's open() because of bookkeeping
            observer.failed = True


def _on_open(observer: Observer, args: tuple) -> None:
    path, mode, flags = args
    if isinstance(path, int) or path is None:
        return
    if sys._getframe(2).f_code.co_filename.startswith("<frozen importlib"):
        return  # an import reading a module: the code fingerprint and the imports in the key cover code
    path = os.path.abspath(os.fsdecode(path))
    if mode is None:  # os.open: the flags say
        access = flags & os.O_ACCMODE
        reads, writes = access in (os.O_RDONLY, os.O_RDWR), access in (os.O_WRONLY, os.O_RDWR)
    else:
        reads = "r" in mode or "+" in mode
        writes = any(c in mode for c in "wax+")
    if writes:
        observer.wrote.setdefault(path)
    elif reads and path not in observer.wrote:
        observer.read.setdefault(path)


def _on_listdir(observer: Observer, args: tuple) -> None:
    path = args[0] if args else None
    if isinstance(path, int) or _finding_code(sys._getframe(2).f_code.co_filename):
        return
    observer.listed.setdefault(os.path.abspath(os.fsdecode(path if path is not None else ".")))


def _finding_code(filename: str) -> bool:
    """Whether an import, or a lookup of installed packages, is listing a folder (every folder on sys.path,
    the notebook's own among them): the key's imports and library versions cover that."""
    if filename.startswith("<frozen importlib"):
        return True
    real = os.path.realpath(filename)
    return real.startswith(_IMPORTLIB) or "importlib_metadata" in real or "pkg_resources" in real


def _on_compile(observer: Observer, args: tuple) -> None:
    source, filename = args[0], args[1]
    if filename != "<string>" or not isinstance(source, (str, bytes)) or observer.namespace is None:
        return
    frame = sys._getframe(2)  # the code that called eval/exec/compile (past this handler and the hook)
    if frame.f_globals is not observer.namespace:
        return  # a library compiling its own code (namedtuple, dataclasses)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in observer.namespace:
            observer.evaluated.setdefault(node.id)


def inherit(checks: tuple[Check, ...]) -> None:
    """A step served from the cache while another step runs: what it depends on, the outer one depends on
    too (its body did not open the files this time). Not its random state, which is the inner step's start
    state: the outer step's own observation covers how the generators were used."""
    if not _active or not checks:
        return
    thread = threading.get_ident()
    for observer in [o for o in _active if o.thread == thread] or _active:
        observer.inherited.extend(c for c in checks if c.kind != "random")


def _on_sqlite(observer: Observer, args: tuple) -> None:
    """A SQLite database opened by path: sqlite3 reads the file from C, past Python's open."""
    database = args[0] if args else None
    if isinstance(database, (str, bytes, os.PathLike)) and os.fsdecode(database) not in ("", ":memory:"):
        observer.read.setdefault(os.path.abspath(os.fsdecode(database)))


def _on_mkdir(observer: Observer, args: tuple) -> None:
    path = args[0] if args else None
    if isinstance(path, (str, bytes, os.PathLike)):
        observer.made.setdefault(os.path.abspath(os.fsdecode(path)))


def _on_command(observer: Observer, args: tuple) -> None:
    """A process started: a shell command of the user's (``subprocess.run(["make"])`` in the step's own
    code) has effects outside the kernel that a hit would not repeat. A library starting its own helpers
    (joblib's workers, Graphviz's ``dot``) is not the user's command."""
    frame = sys._getframe(2)
    while frame is not None and _in_standard_library(frame.f_code.co_filename):
        frame = frame.f_back  # past subprocess, os, multiprocessing: to the code that asked for the process
    # no such code: the standard library alone started it, in a thread the step started
    # (`pool.map(os.system, commands)`), which only the step's own code could have asked for
    if frame is None or frame.f_globals is observer.namespace or is_user_code(frame.f_globals.get("__name__"),
                                                                              frame.f_code.co_filename):
        command = args[1] if len(args) > 1 else args[0]
        if isinstance(command, (list, tuple)):
            command = " ".join(map(str, command))
        text = os.fsdecode(command) if isinstance(command, (str, bytes)) else "..."
        observer.commands.setdefault(text.strip().split(" ")[0] or "...")


def _in_standard_library(filename: str) -> bool:
    if filename.startswith("<frozen"):
        return True
    real = os.path.realpath(filename)
    return real.startswith(_STDLIB) and not real.startswith(_PACKAGES)


def _roots(*names: str) -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.join(os.path.realpath(paths[n]), "") for n in names if n in paths)


_STDLIB = _roots("stdlib", "platstdlib")  # (in a virtual environment, platstdlib holds site-packages)
_PACKAGES = _roots("purelib", "platlib")
_IMPORTLIB = os.path.join(os.path.dirname(os.path.realpath(os.__file__)), "importlib", "")


_HANDLERS = {"open": _on_open, "os.listdir": _on_listdir, "os.scandir": _on_listdir, "compile": _on_compile,
             "sqlite3.connect": _on_sqlite, "os.mkdir": _on_mkdir, "subprocess.Popen": _on_command,
             "os.system": _on_command, "os.spawn": _on_command, "os.exec": _on_command,
             "os.posix_spawn": _on_command}


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
    made: dict[str, None] = field(default_factory=dict)  # folders it created
    commands: dict[str, None] = field(default_factory=dict)  # programs its own code started
    listed: dict[str, None] = field(default_factory=dict)
    evaluated: dict[str, None] = field(default_factory=dict)
    failed: bool = False
    before: ambient.Snapshot | None = None
    after: ambient.Snapshot | None = None
    inherited: list[Check] = field(default_factory=list)  # the checks of steps served from the cache inside
    seeded_first: set[str] = field(default_factory=set)  # generators seeded before anything was drawn
    drew_first: set[str] = field(default_factory=set)  # generators drawn from before being seeded
    _patches: list[tuple[Any, str, Any]] = field(default_factory=list)
    _aliases: list[tuple[Any, Any]] = field(default_factory=list)  # (a seeding function, its wrapper)

    def __enter__(self) -> Observer:
        _install_hook()
        self.before = ambient.snapshot()
        self._patch_seeds()
        _active.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self in _active:
            _active.remove(self)
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

    def _patch_seeds(self) -> None:
        """Wrap the seeding functions of the generators (``np.random.seed``, and a name the notebook bound
        to it with ``from numpy.random import seed``), to tell `seed(); draw()`, which does not depend on
        the state the step started from, from `draw()`, which does."""
        assert self.before is not None
        aliases = self.namespace or {}
        for kind in ambient.KINDS:
            if not (kind.rng and kind.seed and kind.name in self.before.values):
                continue
            owner = sys.modules.get(kind.seed[0])
            original = getattr(owner, kind.seed[1], None)
            if owner is None or original is None:
                continue

            def seed(*args: Any, _kind: ambient.AmbientKind = kind, _original: Any = original, **kwargs: Any) -> Any:
                if _kind.name not in self.seeded_first and _kind.name not in self.drew_first:
                    unchanged = self.before is not None and self.before.same(_kind.name)
                    (self.seeded_first if unchanged else self.drew_first).add(_kind.name)
                return _original(*args, **kwargs)

            self._patches.append((owner, kind.seed[1], original))
            setattr(owner, kind.seed[1], seed)
            self._aliases.append((original, seed))
            for name, value in list(aliases.items()):
                if value is original:
                    aliases[name] = seed

    def changed_state(self) -> dict[str, Any]:
        """The ambient state the run changed, to be set again on a hit."""
        assert self.before is not None and self.after is not None
        return self.after.changed_since(self.before)

    def checks(self) -> tuple[Check, ...]:
        """The dependencies seen, as checks to store with the result."""
        assert self.before is not None and self.after is not None
        found: list[Check] = []
        for path in self.read:
            if path not in self.wrote and _is_data_file(path, self.cache_dir):
                found.append(self._file_check("file", path))
        for path in self.wrote:
            if _is_data_file(path, self.cache_dir) and os.path.isfile(path):
                found.append(self._file_check("wrote", path))
        for path in self.made:
            if _is_data_path(path, self.cache_dir) and os.path.isdir(path):
                found.append(Check("made", self._stored_path(path), "folder"))
        for path in self.listed:
            if _is_data_path(path, self.cache_dir) and os.path.isdir(path):
                found.append(Check("folder", self._stored_path(path), listing_digest(path)))
        for kind in ambient.KINDS:
            if kind.rng and kind.name in self.before.values and kind.name in self.after.values \
                    and kind.name not in self.seeded_first \
                    and not ambient.equal(self.before.values[kind.name], self.after.values[kind.name]):
                found.append(Check("random", kind.name, ambient.state_hash(kind.name, self.before.values[kind.name])
                                   or ""))
        found.extend(self._state_checks())
        if self.evaluated and self.namespace is not None:
            from .hashing import hash_value

            for name in self.evaluated:
                if name in self.namespace and name not in self.bound:
                    try:
                        found.append(Check("variable", name, hash_value(self.namespace[name])))
                    except Exception:
                        found.append(Check("variable", name, _UNHASHABLE))  # never holds: always runs
        unique: dict[tuple[str, str], Check] = {}
        for check in [*found, *self.inherited]:
            if check.digest:
                unique.setdefault((check.kind, check.target), check)
        return tuple(unique.values())

    def _state_checks(self) -> list[Check]:
        """The process-wide state the run depends on: for a cell, every setting that changes how its output
        looks (display options, rc settings, warnings filters), as it started; for any step, the settings
        it changed (``os.environ["PATH"] += ...`` depends on what PATH was) and the folder it moved from.
        Each holds when the state is as the run found it, or as it left it (the step run again in the
        same kernel)."""
        assert self.before is not None and self.after is not None
        found = []
        for kind in ambient.KINDS:
            name = kind.name
            before, after = self.before.values.get(name, _ABSENT), self.after.values.get(name, _ABSENT)
            whole = (self.renders and kind.renders) or (kind.shape == "value" and not kind.rng and before is not _ABSENT
                                                        and after is not _ABSENT and not ambient.equal(before, after))
            if whole:
                digests = [_NONE if v is _ABSENT else ambient.state_hash(name, v) or _UNHASHABLE for v in (before, after)]
                found.append(Check("state", name, "|".join(digests)))
            elif kind.shape == "mapping" and before is not _ABSENT and after is not _ABSENT:
                for key in sorted({*before, *after}, key=str):
                    if not ambient.equal(before.get(key, _ABSENT), after.get(key, _ABSENT)):
                        digests = [ambient.setting_digest(state, key) for state in (before, after)]
                        found.append(Check("setting", f"{name}\t{key}", "|".join(digests)))
        return found

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
        return Check(kind, self._stored_path(path), file_digest(path), _stat_of(st))


def _is_data_path(path: str, cache_dir: str) -> bool:
    real = os.path.realpath(path)
    if real.startswith(_SYSTEM_ROOTS) or real.startswith(library_roots()):
        return False
    cache = os.path.join(os.path.realpath(cache_dir), "")
    return not (real + os.sep).startswith(cache) and not _is_config(real) and not real.startswith(_KERNEL_CELLS)


def _is_data_file(path: str, cache_dir: str) -> bool:
    if path.endswith(_IGNORED_SUFFIXES) or not _is_data_path(path, cache_dir):
        return False
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _config_roots() -> tuple[str, ...]:
    home = os.path.expanduser("~")
    roots = [os.path.join(home, d) for d in (".cache", ".config", ".ipython", ".jupyter", ".local/share/jupyter",
                                             ".matplotlib", ".keras")]
    for variable in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR",
                     "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        if os.environ.get(variable):
            roots.append(os.environ[variable])
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots)


def _is_config(real: str) -> bool:
    """Files of the tools themselves (matplotlib's font cache, IPython's and Jupyter's settings)."""
    return real.startswith(_config_roots()) or os.path.basename(os.path.dirname(real)).startswith("matplotlib-")
