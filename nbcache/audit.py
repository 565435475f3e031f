"""The process-wide audit hook, and the registry of the runs it reports to.

Python's audit events say what a run does below the level of its code: every ``open`` (``pd.read_csv``,
``np.load``), folder listing, ``compile`` of a string (``eval``), SQLite connection, folder made and
process started, in the step's own code or in threads it started. While a step is observed (``watch``),
each event is noted in its ``Watcher`` (an ``observe.Observer``), which turns them into checks after the
run; events that are about code rather than data (imports reading modules, a library listing ``sys.path``
to find installed packages) are not noted.

The hook is installed once per process (Python cannot remove one) and returns at once while no step is
being observed.
"""

from __future__ import annotations

import ast
import dis
import functools
import os
import sys
import threading
import urllib.parse
from typing import Any, Callable, Protocol

from .callers import asked_by_user
from .checks import Check
from .fingerprint_source import is_user_file
from .priors import APPENDED, appended_digest, database_stat, prior_of

__all__ = ["Unobserved", "Watcher", "inherit", "unobserved", "unwatch", "watch", "watched"]


class Watcher(Protocol):
    """What the hook fills in for one run (``observe.Observer`` is one): names in dicts, in order seen."""

    thread: int  # the thread the run's own code runs in
    namespace: dict | None  # the notebook's variables: names an eval'd string reads among them are noted
    read: dict[str, None]  # absolute paths of files opened for reading
    wrote: dict[str, None]  # ... opened for writing
    appended: dict[str, None]  # ... of those, the ones only ever opened to append to (a log)
    prior: dict[str, str]  # ... opened for writing after a read, or to be changed (appended to): as found
    made: dict[str, None]  # folders created
    listed: dict[str, None]  # folders listed
    evaluated: dict[str, None]  # notebook variables an eval'd or exec'd string reads
    commands: dict[str, None]  # programs the run's own code started
    removed: dict[str, str]  # paths the run's own code deleted ("path"; "tree": rmtree) and had not made
    foreign: frozenset[int]  # threads that are not the run's (on a Dask worker, the worker's own: observe.py)
    inherited: list[Check]  # the checks of steps served from the cache inside this run
    failed: bool  # an event could not be followed: what the run read is not known
    read_cwd: bool  # its own code asked for the working directory
    environ: dict[str, None]  # the environment variables its own code read


_active: list[Watcher] = []  # the watchers of the runs under way, innermost last (steps nest)
_hook_installed = False
_hook_lock = threading.Lock()
_quiet = threading.local()  # .depth: how many ``unobserved`` blocks this thread is in


class Unobserved:
    """A block whose events no watcher hears: nbcache's own reads and writes of a cache (this step's, or
    another cache's when a step calls a step kept elsewhere) are not data the step under way depends on."""

    __slots__ = ()

    def __enter__(self) -> None:
        _quiet.depth = getattr(_quiet, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _quiet.depth -= 1


unobserved = Unobserved()


def watch(watcher: Watcher) -> None:
    """Report what this thread (and threads no step runs in) does to ``watcher`` until ``unwatch``."""
    _install_hook()
    with _hook_lock:
        _active.append(watcher)
        if os.getcwd is not _getcwd:
            _cwd[:], (os.getcwd, os.getcwdb) = [os.getcwd, os.getcwdb], (_getcwd, _getcwdb)
        if _Environ.__getitem__ is not _environ_item:  # (each apart: a step may have replaced os.getcwd)
            _environ[:], _Environ.__getitem__ = [_Environ.__getitem__], _environ_item


def unwatch(watcher: Watcher) -> None:
    with _hook_lock:
        if watcher in _active:
            _active.remove(watcher)
        if not _active and os.getcwd is _getcwd:  # (the last run under way ended: both are themselves again)
            os.getcwd, os.getcwdb = _cwd
        if not _active and _Environ.__getitem__ is _environ_item:
            _Environ.__getitem__ = _environ[0]


# No audit event tells os.getcwd, nor an environment variable read: while runs are under way both are wrapped
# (os.environ's item lookup, which os.getenv, .get and `in` use), to tell a run whose own code asked for the
# working directory (``Path.cwd()``: its result may hold the path) or read a variable. A library's is none.
_cwd: list = [os.getcwd, os.getcwdb]
_Environ = type(os.environ)
_environ: list = [_Environ.__getitem__]
_PATH_HELPERS = frozenset({"os", "posixpath", "ntpath", "genericpath", "pathlib", "collections.abc"})


def _getcwd() -> str:
    _asked(sys._getframe(1))
    return _cwd[0]()


def _getcwdb() -> bytes:
    _asked(sys._getframe(1))
    return _cwd[1]()


def _environ_item(self: Any, key: Any) -> Any:
    if self is os.environ and _active:
        frame = sys._getframe(1)  # (one variable asked for: not the whole environment, dict(os.environ))
        if frame.f_code.co_name in _ONE_VARIABLE or frame.f_code.co_code[frame.f_lasti] in _SUBSCRIPT:
            _asked(frame, key)
    return _environ[0](self, key)


_ONE_VARIABLE, _SUBSCRIPT = frozenset({"get", "getenv", "__contains__"}), frozenset(  # (os.environ[...])
    dis.opmap[name] for name in ("BINARY_SUBSCR", "BINARY_OP") if name in dis.opmap)


def _asked(frame: Any, variable: Any = None) -> None:
    """The working directory (or the environment ``variable``) was asked for by ``frame``'s code: a
    dependency of the runs of this thread (or, from a thread no step runs in, of every run it is not foreign
    to, as the audit hook counts it) if that code, past the path helpers, is the user's, or IPython's magics
    run by a cell (``%pwd``, ``%env``)."""
    if not _active or getattr(_quiet, "depth", 0) or getattr(_quiet, "asking", False):
        return
    thread = threading.get_ident()
    runs = [w for w in ([w for w in _active if w.thread == thread] or _theirs(thread))
            if variable is not None or not w.read_cwd]
    if not runs:
        return
    _quiet.asking = True  # (finding out who asked may ask again)
    try:
        while frame is not None and frame.f_globals.get("__name__") in _PATH_HELPERS:
            frame = frame.f_back
        if frame is not None and (is_user_file(frame.f_code.co_filename)
                                  or str(frame.f_globals.get("__name__")).startswith("IPython.core.magics")):
            for watcher in runs:
                if variable is None:
                    watcher.read_cwd = True
                else:
                    watcher.environ.setdefault(str(variable))
    finally:
        _quiet.asking = False


def watched() -> bool:
    """Whether a step is being observed in this thread (the call under way runs inside it)."""
    return any(w.thread == threading.get_ident() for w in _active)


def inherit(checks: tuple[Check, ...]) -> None:
    """A step served from the cache while another step runs: what it depends on, the outer one depends on
    too (its body did not open the files this time). Not its random state, which is the inner step's start
    state: the outer step's own observation covers how the generators were used."""
    if not _active or not checks:
        return
    thread = threading.get_ident()
    for watcher in [w for w in _active if w.thread == thread] or _theirs(thread):
        watcher.inherited.extend(c for c in checks if c.kind != "random")


def _theirs(thread: int) -> list[Watcher]:
    """The runs an event of ``thread``, which runs no step, counts for: those it is not foreign to."""
    return [w for w in _active if thread not in w.foreign]


def _install_hook() -> None:
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)
            _hook_installed = True


def _audit(event: str, args: tuple) -> None:
    if not _active or getattr(_quiet, "depth", 0):
        return
    if (handler := _HANDLERS.get(event)) is None:
        return
    thread = threading.get_ident()
    # an event from a thread no step runs in comes from a worker the step started (a thread pool that
    # reads its files): it counts for every step under way, which can only make them run more often
    for watcher in [w for w in _active if w.thread == thread] or _theirs(thread):
        try:
            handler(watcher, args)
        except Exception:  # never break the user's open() because of bookkeeping
            watcher.failed = True


# -- the events ---------------------------------------------------------------------------------------------
# Each handler is called from the hook, itself called from the code that raised the event: the frame two
# up from a handler is that code's.

def _on_open(watcher: Watcher, args: tuple) -> None:
    path, mode, flags = args
    if isinstance(path, int) or path is None:
        return
    opener = sys._getframe(2).f_code.co_filename
    if opener.startswith("<frozen importlib") or (opener in _SOURCE_READERS and _showing_source()):
        return  # an import reading a module, or a warning or traceback its source line: code, not data
    path = os.path.abspath(os.fsdecode(path))
    if mode is None:  # os.open: the flags say
        access = flags & os.O_ACCMODE
        reads, writes = access in (os.O_RDONLY, os.O_RDWR), access in (os.O_WRONLY, os.O_RDWR)
    else:
        reads = "r" in mode or "+" in mode
        writes = any(c in mode for c in "wax+")
    if writes:
        if mode is None:
            appends = bool(flags & os.O_APPEND) and access == os.O_WRONLY
            keeps = appends or not flags & os.O_TRUNC
        else:
            appends, keeps = "a" in mode and "+" not in mode, "w" not in mode
        _changing(watcher, path, keeps=keeps, appends=appends)
        if not appends or path not in watcher.wrote:  # (appended to only, each time it was opened)
            watcher.appended.setdefault(path) if appends else watcher.appended.pop(path, None)
        watcher.wrote.setdefault(path)
    if reads:  # (a file read that the run wrote first is its own output: observe.py counts it only then)
        watcher.read.setdefault(path)


def _showing_source() -> bool:
    """Whether linecache reads a source file to show a line of it in a warning or a traceback (a step may
    read data through ``linecache.getline`` or ``tokenize.open`` itself)."""
    frame = sys._getframe(3)
    for _ in range(8):
        frame = frame.f_back
        if frame is None:
            return False
        if frame.f_code.co_filename in _SHOWERS:
            return True
    return False


def _changing(watcher: Watcher, path: str, *, keeps: bool = False, appends: bool = False) -> None:
    """``path`` is about to be written (``keeps``: without being emptied first; ``appends``: only at its end):
    a run that read it before, or may read it back after (``n = int(open(p).read())`` then ``open(p, "w")``,
    rows appended then read), depends on what it held, taken now (``priors.py``)."""
    before = watcher.prior.get(path)
    if before is not None and not before.startswith(APPENDED):
        return
    if before is None and path in watcher.wrote:  # (emptied by the run first: what it holds is the run's own)
        return
    if before or keeps or path in watcher.read:
        with unobserved:
            if before is None:
                watcher.prior[path] = prior_of(path, appends=appends)
            elif not appends:  # (appended to, now written otherwise: what it held is taken before that)
                watcher.prior[path] = appended_digest(path, before)


def _on_listdir(watcher: Watcher, args: tuple) -> None:
    path = args[0] if args else None
    if isinstance(path, int) or _finding_code(sys._getframe(2).f_code.co_filename):
        return
    watcher.listed.setdefault(os.path.abspath(os.fsdecode(path if path is not None else ".")))


def _finding_code(filename: str) -> bool:
    """Whether an import, or a lookup of installed packages, is listing a folder (every folder on sys.path,
    the notebook's own among them): the key's imports and library versions cover that."""
    if filename.startswith("<frozen importlib"):
        return True
    real = os.path.realpath(filename)
    return real.startswith(_IMPORTLIB) or "importlib_metadata" in real or "pkg_resources" in real


def _on_compile(watcher: Watcher, args: tuple) -> None:
    source, filename = args[0], args[1]
    if filename != "<string>" or not isinstance(source, (str, bytes)) or watcher.namespace is None:
        return
    frame = sys._getframe(2)  # the code that called eval/exec/compile (past this handler and the hook)
    if frame.f_globals is not watcher.namespace:
        return  # a library compiling its own code (namedtuple, dataclasses)
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in watcher.namespace:
            watcher.evaluated.setdefault(node.id)


def _on_sqlite(watcher: Watcher, args: tuple) -> None:
    """A SQLite database opened by path (or by a ``file:`` URI): sqlite3 reads the file from C, past
    Python's open. What a run writes to it is not told from what it reads: one it changed runs every time."""
    database = args[0] if args else None
    if isinstance(database, (str, bytes, os.PathLike)) and os.fsdecode(database) not in ("", ":memory:"):
        name = os.fsdecode(database)
        names = [name]
        if name.startswith("file:"):  # (`file:data.db?mode=ro`, a URI if uri=True: both are looked at)
            names.append(urllib.parse.unquote(urllib.parse.urlparse(name).path))
        for path in [os.path.abspath(n) for n in names if n and n != ":memory:"]:
            watcher.read.setdefault(path)
            watcher.prior.setdefault(path, database_stat(path))


def _on_rename(watcher: Watcher, args: tuple) -> None:
    """``os.replace(tmp, path)``, ``os.rename``, ``shutil.move``: ``path`` is written (an atomic save)."""
    target = args[1] if len(args) > 1 else None
    if isinstance(target, (str, bytes, os.PathLike)) and (args[3] if len(args) > 3 else -1) in (-1, None):
        path = os.path.abspath(os.fsdecode(target))
        _changing(watcher, path)
        watcher.appended.pop(path, None)
        watcher.wrote.setdefault(path)


def _on_mkdir(watcher: Watcher, args: tuple) -> None:
    path = args[0] if args else None
    if isinstance(path, (str, bytes, os.PathLike)):
        watcher.made.setdefault(os.path.abspath(os.fsdecode(path)))


def _on_remove(watcher: Watcher, args: tuple, *, tree: bool = False) -> None:
    """``os.remove``, ``os.rmdir``, ``shutil.rmtree`` (``tree``) by the user's own code, of what the run did not
    make (a scratch file), there or not: a hit would not delete it (``Observer.checks``). What ``rmtree`` removes
    inside the tree, relative to a folder's descriptor, is its own."""
    path, dir_fd = (args[0], args[1]) if len(args) > 1 else (args[0] if args else None, None)
    if dir_fd not in (None, -1) or not isinstance(path, (str, bytes, os.PathLike)):  # (-1: no descriptor)
        return
    path = os.path.abspath(os.fsdecode(path))  # (called through a partial, which makes no frame: 2 is the code's)
    if path not in watcher.wrote and path not in watcher.made and asked_by_user(sys._getframe(2), watcher.namespace):
        if tree or path not in watcher.removed:
            watcher.removed[path] = "tree" if tree else "path"


def _on_command(watcher: Watcher, args: tuple) -> None:
    """A process started: a shell command of the user's (``subprocess.run(["make"])`` in the step's own
    code) has effects outside the kernel that a hit would not repeat. A library starting its own helpers
    (joblib's workers, Graphviz's ``dot``) is not the user's command."""
    if asked_by_user(sys._getframe(2), watcher.namespace):
        command = args[1] if len(args) > 1 else args[0]
        if isinstance(command, (list, tuple)):
            command = " ".join(map(str, command))
        text = os.fsdecode(command) if isinstance(command, (str, bytes)) else "..."
        watcher.commands.setdefault(text.strip().split(" ")[0] or "...")


_IMPORTLIB = os.path.join(os.path.dirname(os.path.realpath(os.__file__)), "importlib", "")
# linecache reads a source file (through tokenize.open) to show the line of a warning or a traceback
_SOURCE_READERS = frozenset(os.path.join(os.path.dirname(os.__file__), name) for name in ("linecache.py", "tokenize.py"))
_SHOWERS = frozenset(os.path.join(os.path.dirname(os.__file__), name) for name in ("warnings.py", "traceback.py"))


_HANDLERS: dict[str, Callable[[Watcher, tuple], None]] = {
    "open": _on_open, "os.listdir": _on_listdir, "os.scandir": _on_listdir, "compile": _on_compile,
    "sqlite3.connect": _on_sqlite, "os.mkdir": _on_mkdir, "os.rename": _on_rename, "subprocess.Popen": _on_command,
    "os.system": _on_command, "os.spawn": _on_command, "os.exec": _on_command, "os.posix_spawn": _on_command,
    "os.remove": _on_remove, "os.rmdir": _on_remove, "shutil.rmtree": functools.partial(_on_remove, tree=True),
}
