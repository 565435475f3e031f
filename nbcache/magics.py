"""IPython integration: the ``%%step`` cell magic, ``%steps``, ``%lineage`` and ``%nbcache``, and the
``NBCache`` settings. The module that imports IPython; ``%load_ext nbcache`` loads it.

The magics parse their lines and hand the work on: a ``%%step`` cell's cached run is ``cellstep.CellCall``
(which records and replays its output with ``capture``), the tables and messages are ``tables``'s, shared
with the ``nbcache`` command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import publish_display_data
from traitlets import Bool, Int, TraitError, Unicode, Union, observe, validate
from traitlets.config import Configurable

from .audit import unobserved
from .cache import Cache, default_cache
from .cellcode import analyse_cell
from .cellsource import run_as_step_cell
from .cellnames import CellNames
from .cellstep import Analysed, CellCall, CellUsageError, StepCellFailed, ends_with_semicolon
from .errors import warn
from .eviction import parse_size
from .remote import RemoteError
from .records import SESSION
from .tables import (KERNEL_RUNS_HEADER, NO_KERNEL_RUNS, info_text, kernel_runs_rows, removed_text, table_bundle,
                     why_text)

__all__ = ["NBCache", "StepMagics", "load_ipython_extension", "unload_ipython_extension"]


class NBCache(Configurable):
    """nbcache's settings, for ``%config NBCache.<name> = ...`` and IPython profile configuration."""

    cache_dir = Unicode(None, allow_none=True,
                        help="Cache directory (default: $NBCACHE_DIR, else .nbcache next to the notebook)."
                        ).tag(config=True)
    quiet = Bool(False, help="Do not print the line that says a cell came from the cache.").tag(config=True)
    size_limit = Union([Int(), Unicode()], default_value=None, allow_none=True,
                       help="Most the cache may take, such as '20GB', '500MB', '1.5GiB' or bytes: past it, the"
                       " least recently used results are evicted (default: $NBCACHE_SIZE_LIMIT, else no limit)."
                       ).tag(config=True)
    remote = Unicode(None, allow_none=True,
                     help="The team cache: any fsspec URL, such as 's3://bucket/prefix' or a shared folder; '' for"
                     " none (default: $NBCACHE_REMOTE). Credentials come from the environment.").tag(config=True)

    def __init__(self, cache: Cache, **kwargs: Any) -> None:
        self.cache = cache  # before the config is applied, which may set cache_dir
        super().__init__(**kwargs)

    @observe("cache_dir")
    def _cache_dir_changed(self, change: dict) -> None:
        self.cache.set_directory(change["new"] or None)

    @validate("remote")
    def _valid_remote(self, proposal: dict) -> Any:
        try:  # (a URL fsspec cannot use, or whose package is missing, is refused where it is written)
            self.cache.team.set(proposal["value"], {})
        except RemoteError as exc:
            raise TraitError(str(exc)) from None
        return proposal["value"]

    @validate("size_limit")
    def _valid_size_limit(self, proposal: dict) -> Any:
        value = proposal["value"]
        if value is not None and value != "":
            try:
                parse_size(value, "NBCache.size_limit")
            except ValueError as exc:
                raise TraitError(str(exc)) from None
        return value

    @observe("size_limit")
    def _size_limit_changed(self, change: dict) -> None:
        self.cache.size_limit = change["new"] if change["new"] not in (None, "") else None


def _show_step_failure(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    print(f"nbcache: {value}", file=sys.stderr)


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"expected variable names separated by commas, such as x,y; got {', '.join(bad)}")
    return names


_STEP_USAGE = ("usage: %%step [NAME] [--no-cache] [--inputs a,b] [--ignore a,b] [--outputs x,y] [--version V]"
               " [--allow-shell]")
_NBCACHE_USAGE = "usage: %nbcache info | %nbcache clear [NAME] | %nbcache why NAME"


@magics_class
class StepMagics(Magics):
    """``%%step``, ``%steps``, ``%lineage`` and ``%nbcache``."""

    def __init__(self, shell: Any, settings: NBCache, lineage: Callable[..., Any] | None) -> None:
        super().__init__(shell)
        self.settings = settings
        self.cache = settings.cache
        self._lineage = lineage  # makes the widget (the magics do not import the widget layer above them)
        self._analysed: dict[str, Analysed] = {}
        self.cell_id: str | None = None  # the Jupyter id of the cell being run (None in a plain IPython)
        self.names = CellNames()

    def pre_run_cell(self, info: Any = None) -> None:
        """IPython's event before each cell: note the cell's id, which Jupyter gives every cell."""
        cell_id = getattr(info, "cell_id", None)
        self.cell_id = cell_id if isinstance(cell_id, str) and cell_id else None

    @magic_arguments()
    @argument("name", nargs="?", help="the step's name (default: the variables the cell assigns)")
    @argument("--no-cache", action="store_true", help="always run the cell; still record it")
    @argument("--inputs", type=_names, default=[], help="more variables the cell depends on: a,b")
    @argument("--ignore", type=_names, default=[],
              help="variables the cell reads that do not change its result (a connection, a logger): a,b")
    @argument("--outputs", type=_names, default=None, help="store only these variables: x,y")
    @argument("--version", default=None, help="change this to force a re-run")
    @argument("--allow-shell", action="store_true",
              help="cache the cell although it runs shell commands (!cmd, %%bash): a hit does not run them")
    @cell_magic
    def step(self, line: str, cell: str) -> Any:
        """Cache a cell: on a hit its variables and output come back without running it."""
        cell_id, self.cell_id = self.cell_id, None  # a cell run inside this one has no id of its own
        args = self._parse(self.step, line, _STEP_USAGE)
        analysed = self._analysed.get(cell)
        if analysed is None:  # what depends on the cell's text alone is worked out once per text
            source = self.shell.transform_cell(cell)
            try:
                code = analyse_cell(source)
            except SyntaxError:
                code = None
            analysed = self._analysed[cell] = Analysed(
                code, self.shell.should_run_async(cell, transformed_cell=source), ends_with_semicolon(source), source)
        if analysed.is_async:
            raise UsageError("%%step cannot run a cell with top-level await; put the awaiting code in an"
                             " async function and run it with asyncio.run(), or run the cell without %%step")
        if analysed.code is None:
            return self._run_plain(cell)  # let the shell report the syntax error as usual
        try:
            with unobserved:
                self.cache.store()
        except Exception as exc:  # a cache directory it cannot use must not stop the user's work
            warn(f"nbcache: the cell ran without the cache: {exc}")
            return self._run_plain(cell)
        try:
            call = CellCall(self, args, cell, analysed, cell_id)
        except CellUsageError as exc:
            raise UsageError(str(exc)) from None
        return call.run()

    @line_magic
    def steps(self, line: str) -> None:
        """A table of this kernel's step runs: name, hit or ran, duration, time saved, reason."""
        if line.strip():
            raise UsageError("%steps takes no arguments")
        rows = kernel_runs_rows(r for r in self.cache.runs() if r.session == SESSION)
        if rows:
            publish_display_data(table_bundle(KERNEL_RUNS_HEADER, rows))
        else:
            print(NO_KERNEL_RUNS)

    @magic_arguments()
    @argument("--history", action="store_true", help="every step the cache knows, not only this kernel's")
    @argument("--all", action="store_true", help="draw every step (of more than 200, the picture draws those"
              " that ran last and the steps that fed them)")
    @line_magic
    def lineage(self, line: str) -> Any:
        """Show the lineage graph of the steps, which keeps itself up to date as steps run."""
        args = parse_argstring(self.lineage, line)
        if self._lineage is None:
            raise UsageError("%lineage needs the widget, which %load_ext nbcache loads (this kernel loaded"
                             " nbcache.magics alone)")
        return self._lineage(history=args.history, cache=self.cache, **({"limit": None} if args.all else {}))

    @magic_arguments()
    @argument("command", choices=["info", "clear", "why"],
              help="info: the cache directory, its size and entries; clear [NAME]: remove cached results;"
                   " why NAME: what changed before that step's last run")
    @argument("name", nargs=argparse.REMAINDER, help="a step's name")
    @line_magic
    def nbcache(self, line: str) -> None:
        """``%nbcache info``, ``%nbcache clear [NAME]``, ``%nbcache why NAME``."""
        if not line.strip():
            raise UsageError(_NBCACHE_USAGE)
        args = self._parse(self.nbcache, line, _NBCACHE_USAGE)
        name = " ".join(args.name)
        if args.command == "info" and not name:
            store = self.cache.store()
            runs = store.read_runs()
            print(info_text(store.stats(), runs=len(runs), unreadable_runs=store.unreadable_runs,
                            size_limit=self.cache.size_limit))
        elif args.command == "clear":
            removed = self.cache.clear(name or None)
            if name and not removed and not self.cache.runs(name):  # (a typo: say so, not "removed 0")
                raise UsageError(_unknown_step(name))
            print(removed_text(removed, name or None))
        elif args.command == "why" and name:
            text = why_text(self.cache.runs(name), name)
            if text is None:
                raise UsageError(_unknown_step(name))
            print(text)
        else:
            raise UsageError(_NBCACHE_USAGE)

    def _parse(self, magic: Any, line: str, usage: str) -> Any:
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            raise UsageError(f"{exc}\n{usage}") from None

    def _run_plain(self, cell: str) -> None:
        result = run_as_step_cell(self.shell, cell)
        if not result.success:
            raise StepCellFailed("the cell failed; nothing was stored")


# -- loading -----------------------------------------------------------------------------------------------

def load_ipython_extension(shell: Any, lineage: Callable[..., Any] | None = None, cache: Cache | None = None) -> None:
    """Register the magics on ``shell``, working with ``cache`` (default: nbcache's default cache);
    ``lineage(history=..., cache=...)`` makes the widget ``%lineage`` shows (``%load_ext nbcache`` gives it;
    without it ``%lineage`` says to load that)."""
    cache = default_cache() if cache is None else cache
    settings = NBCache(cache, parent=shell)
    shell.configurables.append(settings)  # (a cache_dir from config has already reached the cache)
    magics = StepMagics(shell, settings, lineage)
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    cache.notebook = shell.user_module  # what the cells define is pickled by value against it
    if empty_step_cell not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(empty_step_cell)
    if not shell.custom_exceptions:  # show a failed cell's own traceback once, then one line from us
        shell.set_custom_exc((StepCellFailed,), _show_step_failure)


def empty_step_cell(lines: list[str]) -> list[str]:
    """A ``%%step`` cell with nothing under it, as the empty cell it stands for: IPython refuses a cell magic
    without a body, which stopped Run All of a notebook with every cell under ``%%step``, where an empty cell
    does nothing."""
    if lines and lines[0].split(maxsplit=1)[:1] == ["%%step"] and not "".join(lines[1:]).strip():
        return []
    return lines


def unload_ipython_extension(shell: Any) -> None:
    if empty_step_cell in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(empty_step_cell)
    for callback in list(shell.events.callbacks.get("pre_run_cell", [])):
        if isinstance(getattr(callback, "__self__", None), StepMagics):
            shell.events.unregister("pre_run_cell", callback)
    for kind, name in (("cell", "step"), ("line", "steps"), ("line", "nbcache"), ("line", "lineage")):
        shell.magics_manager.magics[kind].pop(name, None)
    for settings in [c for c in shell.configurables if isinstance(c, NBCache)]:
        settings.cache.notebook = None
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, NBCache)]
    if shell.custom_exceptions == (StepCellFailed,):
        shell.set_custom_exc((), None)


def _unknown_step(name: str) -> str:
    return (f"no step named {name!r} has run with this cache directory; `%steps` lists this kernel's, and"
            " `nbcache ls` in a terminal those of the directory")
