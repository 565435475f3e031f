"""IPython integration: the ``%%step`` cell magic, ``%steps``, ``%lineage`` and ``%nbcache``. The module that
imports IPython; ``%load_ext nbcache`` loads it.

A ``%%step`` cell is keyed on its syntax tree (comments and layout do not count), on the content of the
variables it reads from the notebook, on its name and on ``--version``. On a miss it runs through the
shell as any cell does while its printed and displayed output is recorded; the variables it binds (and
the inputs it mutated) are stored. On a hit its body does not run: the variables are put back, the output
is replayed in order, and its last expression's value is shown again as its result.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import io
import itertools
import re
import sys
import time
import tokenize
import types
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import publish_display_data
from traitlets import Bool, Unicode, observe
from traitlets.config import Configurable

from .call import StepCall, addresses_of, describe_last_change
from .cellcode import CellCode, analyse_cell
from .errors import warn as _warn
from .fingerprint import imported_module
from .hashing import hash_value
from .records import SESSION, format_bytes, format_seconds
from .step import Step
from .store import Frame, Unpicklable, get_store, set_cache_dir, set_notebook_module

__all__ = ["NBCache", "StepMagics", "load_ipython_extension", "unload_ipython_extension"]

_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # a live widget cannot outlive its kernel


class NBCache(Configurable):
    """nbcache's settings, for ``%config NBCache.<name> = ...`` and IPython profile configuration."""

    cache_dir = Unicode(None, allow_none=True,
                        help="Cache directory (default: $NBCACHE_DIR, else .nbcache next to the notebook)."
                        ).tag(config=True)
    quiet = Bool(False, help="Do not print the line that says a cell came from the cache.").tag(config=True)

    @observe("cache_dir")
    def _cache_dir_changed(self, change: dict) -> None:
        set_cache_dir(change["new"] or None)


class StepCellFailed(Exception):
    """Raised after a ``%%step`` cell's own error has been shown, so the cell still counts as failed."""


def _show_step_failure(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    print(f"nbcache: {value}", file=sys.stderr)


# -- recording and replaying output ---------------------------------------------------------------------

class _Tee:
    """A stream that writes through to the real one and records what went by."""

    def __init__(self, stream: Any, name: str, recorder: _Recorder) -> None:
        self._stream, self._name, self._recorder = stream, name, recorder

    def write(self, text: str) -> int:
        if not self._recorder.paused:
            events = self._recorder.events
            if events and events[-1][0] == self._name:
                events[-1][1].append(text)  # pieces, joined once at the end: many writes stay cheap
            else:
                events.append([self._name, [text]])
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Recorder:
    """Records stdout, stderr, display output and clearing, in order, while letting it all through.

    The displayhook shows the last expression's value (a terminal prints "Out[n]: ..." to stdout); that
    value is stored and shown again as the result, so its display is not recorded as output. Whatever it
    replaces is put back on exit exactly as it was, so recorders nest.
    """

    _HOOK_METHODS = ("write_output_prompt",)

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.events: list[list] = []
        self.paused = False
        self.result_display: tuple[dict, dict] | None = None  # the result as it was shown: every mime type
        self._saved: list[tuple[Any, str, Any]] = []

    def _pausing(self, method: Any) -> Any:
        def paused(*args: Any, **kwargs: Any) -> Any:
            was, self.paused = self.paused, True
            try:
                return method(*args, **kwargs)
            finally:
                self.paused = was
        return paused

    def patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, vars(owner).get(name, _ABSENT) if hasattr(owner, "__dict__")
                            else getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self) -> _Recorder:
        self.patch(sys, "stdout", _Tee(sys.stdout, "stdout", self))
        self.patch(sys, "stderr", _Tee(sys.stderr, "stderr", self))
        hook = self.shell.displayhook
        for name in self._HOOK_METHODS:
            self.patch(hook, name, self._pausing(getattr(hook, name)))
        write_result = self._pausing(hook.write_format_data)

        def write_format_data(format_dict: dict, md_dict: dict | None = None) -> Any:
            self.result_display = (dict(format_dict), dict(md_dict or {}))
            self.events.append(["result"])  # where it came among the outputs (a figure may follow it)
            return write_result(format_dict, md_dict)

        self.patch(hook, "write_format_data", write_format_data)
        publisher = self.shell.display_pub
        publish_through = self._pausing(publisher.publish)  # a terminal's publisher prints: not stdout
        clear_through = self._pausing(publisher.clear_output)

        def publish(data: dict, metadata: dict | None = None, *args: Any, **kwargs: Any) -> None:
            self.events.append(["display", dict(data), dict(metadata or {}),
                                kwargs.get("transient"), bool(kwargs.get("update"))])
            return publish_through(data, metadata, *args, **kwargs)

        def clear_output(wait: bool = False) -> None:
            self.events.append(["clear", wait])
            return clear_through(wait)

        self.patch(publisher, "publish", publish)
        self.patch(publisher, "clear_output", clear_output)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, value in reversed(self._saved):
            if value is _ABSENT:
                delattr(owner, name)  # back to the class's method
            else:
                setattr(owner, name, value)

    def recorded(self) -> list[tuple]:
        return [(e[0], "".join(e[1])) if e[0] in ("stdout", "stderr") else tuple(e) for e in self.events
                if e[0] != "result" or self.result_display is not None]

    def shows_a_widget(self) -> bool:
        """Whether the cell displayed a live widget (``interact``, a slider): a widget needs its kernel-side
        object and comm, which a replay cannot give back."""
        shown = [e[1] for e in self.events if e[0] == "display"]
        if self.result_display is not None:
            shown.append(self.result_display[0])
        return any(_WIDGET_VIEW in data for data in shown)


_ABSENT = object()


def _show_result_as_recorded(shell: Any, value: Any, display: tuple[dict, dict] | None) -> None:
    """Show ``value`` (the cell's result) through the displayhook, as the cell's run did: it becomes ``_``
    and ``Out[n]`` and the cell's result, and is shown with the display data recorded when the cell ran,
    byte for byte, rather than formatted again from the restored value (which may differ: an int64
    array's repr, a figure drawn again)."""
    if value is None:
        return
    hook = shell.displayhook
    if display is not None:
        own = vars(hook).get("compute_format_data", _ABSENT)
        compute = hook.compute_format_data

        def recorded_format_data(result: Any) -> tuple[dict, dict]:
            if result is value:
                return dict(display[0]), dict(display[1])
            return compute(result)

        hook.compute_format_data = recorded_format_data
    try:
        hook(value)
    finally:
        if display is not None:
            if own is _ABSENT:
                del hook.compute_format_data  # the displayhook's own method again
            else:
                hook.compute_format_data = own


def _replay(events: list[tuple], show_result: Any) -> None:
    """Replay recorded output in order; ``show_result()`` where the cell's result was shown."""
    from IPython.display import clear_output

    for event in events:
        kind = event[0]
        if kind == "result":
            show_result()
        elif kind == "display":
            data = {k: v for k, v in event[1].items() if k != _WIDGET_VIEW} or event[1]
            publish_display_data(data, event[2], transient=event[3], update=event[4])
        elif kind == "clear":
            clear_output(wait=event[1])
        else:
            stream = sys.stdout if kind == "stdout" else sys.stderr
            stream.write(event[1])
            stream.flush()


# -- the magics ------------------------------------------------------------------------------------------

def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise UsageError(f"expected variable names separated by commas, such as x,y; got {', '.join(bad)}")
    return names


@magics_class
class StepMagics(Magics):
    """``%%step``, ``%steps``, ``%lineage`` and ``%nbcache``."""

    def __init__(self, shell: Any, settings: NBCache) -> None:
        super().__init__(shell)
        self.settings = settings
        self._analysed: dict[str, _Analysed] = {}
        self.cell_id: str | None = None  # the Jupyter id of the cell being run (None in a plain IPython)
        self.names = _CellNames()

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
        args = self._parse(self.step, line)
        analysed = self._analysed.get(cell)
        if analysed is None:  # what depends on the cell's text alone is worked out once per text
            source = self.shell.transform_cell(cell)
            try:
                code = analyse_cell(source)
            except SyntaxError:
                code = None
            analysed = self._analysed[cell] = _Analysed(
                code, self.shell.should_run_async(cell, transformed_cell=source), _ends_with_semicolon(source))
        if analysed.is_async:
            raise UsageError("%%step cannot run a cell with top-level await; put the awaiting code in an"
                             " async function and run it with asyncio.run(), or run the cell without %%step")
        if analysed.code is None:
            return self._run_plain(cell)  # let the shell report the syntax error as usual
        return _CellCall(self, args, cell, analysed, cell_id).run()

    @line_magic
    def steps(self, line: str) -> None:
        """A table of this kernel's step runs: name, hit or ran, duration, time saved, reason."""
        if line.strip():
            raise UsageError("%steps takes no arguments")
        runs = [r for r in get_store().read_runs() if r.session == SESSION]
        _show_table(["step", "state", "duration", "saved", "reason"],
                    [[r.step, r.outcome,
                      format_seconds(r.duration_s), format_seconds(r.saved_s) if r.cached else "", r.reason] for r in runs],
                    empty="no step has run in this kernel yet")

    @magic_arguments()
    @argument("--history", action="store_true", help="every step the cache knows, not only this kernel's")
    @line_magic
    def lineage(self, line: str) -> Any:
        """Show the lineage graph of the steps, which keeps itself up to date as steps run."""
        from . import lineage

        args = parse_argstring(self.lineage, line)
        return lineage(history=args.history)

    @line_magic
    def nbcache(self, line: str) -> None:
        """``%nbcache info``, ``%nbcache clear [NAME]``, ``%nbcache why NAME``."""
        words = line.split()
        usage = "usage: %nbcache info | %nbcache clear [NAME] | %nbcache why NAME"
        if not words:
            raise UsageError(usage)
        command, rest = words[0], " ".join(words[1:])
        if command == "info" and not rest:
            stats = get_store().stats()
            print(f"cache directory: {stats['directory']}\nentries: {stats['entries']}\n"
                  f"size: {format_bytes(stats['size_bytes'])}")
        elif command == "clear":
            from .step import clear

            count = clear(rest or None)
            print(f"removed {count} cached result{'s' if count != 1 else ''}"
                  + (f" of step {rest!r}" if rest else ""))
        elif command == "why" and rest:
            print(_why(rest))
        else:
            raise UsageError(usage)

    def _parse(self, magic: Any, line: str) -> Any:
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            raise UsageError(f"{exc}\nusage: %%step [NAME] [--no-cache] [--inputs a,b] [--ignore a,b]"
                             " [--outputs x,y] [--version V] [--allow-shell]") from None

    def _run_plain(self, cell: str) -> None:
        result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise StepCellFailed("the cell failed; nothing was stored")


# Names IPython itself binds as cells run (_, __, _i3, _oh, ...): never a cell's outputs.
_IPYTHON_NAMES = re.compile(r"_+\d*|_i+\d*|_(oh|dh|ih|ii|iii)|In|Out|exit|quit|get_ipython")


class _CellNames:
    """Readable step names for cells with a Jupyter id, unique among this kernel's cells.

    A cell's name is made of what it binds and reads (``labels ← X``); when two cells would share one, the
    later gets ``labels ← X #2``. A cell keeps the name it had in an earlier kernel while that still fits
    (its latest ingredients, filed under its id, hold it), so Restart & Run All in another order does not
    swap names.
    """

    def __init__(self) -> None:
        self._by_cell: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # name -> cell id

    def name_of(self, cell_id: str, base: str, store: Any, identity: str) -> str:
        known = self._by_cell.get(cell_id)
        if known is not None and _fits(known, base):
            return known
        if known is not None:
            self._taken.pop(known, None)
        try:
            last = store.get_last(identity)
        except Exception:
            last = None
        earlier = last.get("name") if last else None
        if isinstance(earlier, str) and _fits(earlier, base) and self._taken.get(earlier, cell_id) == cell_id:
            name = earlier
        else:
            name, n = base, 1
            while self._taken.get(name, cell_id) != cell_id:
                n += 1
                name = f"{base} #{n}"
        self._by_cell[cell_id] = name
        self._taken[name] = cell_id
        return name


def _fits(name: str, base: str) -> bool:
    return name == base or (name.startswith(base + " #") and name[len(base) + 2:].isdigit())


@dataclass(frozen=True)
class _Analysed:
    code: CellCode | None  # None: the cell does not parse
    is_async: bool  # it has top-level await
    quiet: bool  # its last expression ends with `;`, which shows nothing (the syntax tree cannot tell)


class _CellCall(StepCall):
    """One execution of a ``%%step`` cell."""

    def __init__(self, magics: StepMagics, args: Any, cell: str, analysed: _Analysed, cell_id: str | None) -> None:
        shell = magics.shell
        ns = shell.user_ns
        code = analysed.code
        assert code is not None
        missing = [n for n in args.inputs if n not in ns]
        if missing:
            raise UsageError(f"--inputs names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                             " not defined in the notebook")
        both = sorted(set(args.inputs) & set(args.ignore))
        if both:
            raise UsageError(f"{', '.join(both)} cannot be both in --inputs and in --ignore")
        unread = [n for n in args.ignore if n not in code.reads]
        if unread:  # a typo would leave the variable meant in the key, and the cell uncached
            _warn(f"nbcache: --ignore names {', '.join(unread)}, which the cell does not read; check the"
                  " spelling")
        hidden = shell.user_ns_hidden  # what IPython itself put in the namespace (get_ipython, open)
        input_names = [n for n in dict.fromkeys([*code.reads, *args.inputs])
                       if n in ns and not (n in hidden and ns[n] is hidden[n]) and n not in args.ignore]
        store = get_store()
        if args.name:  # the user's name is the step's identity
            name, identity = args.name, None
        elif cell_id:  # Jupyter's id of the cell: the same cell, however its code and variables change
            identity = f"cell:{cell_id}"
            base = code.default_name(input_names) if code.binds else f"cell-{cell_id[:8]}"
            name = magics.names.name_of(cell_id, base, store, identity)
        else:  # plain IPython, nbclient: the name made of what the cell binds and reads
            name, identity = code.default_name(input_names), None
        self.derived_identity = not args.name and not cell_id
        super().__init__(store, name, version=args.version, started_at=datetime.now(timezone.utc),
                         t0=time.perf_counter(), kind="cell", enabled=not args.no_cache, identity=identity)
        self.namespace = ns
        self.magics = magics
        self.replayed_magics = code.magics
        self.allow_shell = args.allow_shell
        if code.shell and not args.allow_shell:
            self.always_runs = (f"it runs a shell command ({', '.join(code.shell)}), which a hit would not run;"
                                " %%step --allow-shell caches it anyway")
        elif code.dynamic:
            self.always_runs = (f"it reads the notebook's variables through {code.dynamic}, so nbcache cannot"
                                " tell which ones it depends on")
        self.shell = shell
        self.cell = cell
        self.restrict = args.outputs
        self.missing_outputs: list[str] = []  # what --outputs names but the cell did not define
        self.imports = code.imports
        self.quiet = analysed.quiet
        self.code = hash_value((code.digest, self.restrict, self.quiet))
        self.binds = list(code.binds)
        self.input_names = input_names
        for name in self.input_names:
            if not self.hash_input(name, ns[name], "input"):
                break
        package = ns.get("__package__")
        for module in self.imports:  # the code of the user's own modules it imports counts, like a helper's
            if not self.problem:
                self.hash_input(f"import {module}", imported_module(module, package), "input")
        self.make_key()

    def restore(self, values: list[Any], entry: dict) -> Any:
        return self._restore(values[0], entry)

    def why(self) -> str:
        reason = super().why()
        if self.derived_identity and reason.startswith("code changed"):  # never claim two cells are one
            reason += (" (in this cell, or this is another cell that binds and reads the same variables:"
                       " without a Jupyter cell id nbcache cannot tell them apart; %%step NAME can)")
        return reason

    def _restore(self, payload: dict, entry: dict) -> Any:
        ns = self.shell.user_ns
        for module in self.imports:  # `import a.b` binds `a`; the restored `a` needs `a.b` imported again
            if not module.startswith("."):
                try:
                    importlib.import_module(module)
                except Exception:
                    pass
        self._run_magics_again()
        self.set_state(payload.get("ambient") or {})  # after the magics: `%matplotlib inline` sets rc too
        ns.update(payload["variables"])  # functions and classes come back living in ns (see store.py)
        for name in payload["deleted"]:
            ns.pop(name, None)
        if not self.magics.settings.quiet:  # what it cost now, next to what running it cost then
            took, ran = format_seconds(time.perf_counter() - self.t0), format_seconds(entry["duration_s"])
            publish_display_data(
                {"text/plain": f"nbcache: step {self.name!r} from the cache in {took} (running it took {ran})",
                 "text/html": "<div style='color:#6a737d;font-size:85%;font-family:var(--jp-code-font-family,"
                              f"monospace);padding-left:var(--jp-code-padding,0)'>nbcache: step "
                              f"<b>{html.escape(self.name)}</b> from the cache in {took} (running it took {ran})"
                              "</div>"},
                {"nbcache": {"notice": True}},
            )
        shown = []

        def show_result() -> None:
            shown.append(True)
            _show_result_as_recorded(self.shell, payload["result"], payload.get("result_display"))

        _replay(payload["events"], show_result)
        if not shown:  # recorded by an nbcache that did not mark where the result came
            show_result()
        self.record(cached=True, reason="cache hit", outputs=tuple(entry["outputs"]),
                    saved_s=entry["duration_s"], output_names=tuple(payload["variables"]))
        return None  # shown already, in its place among the outputs

    def _run_magics_again(self) -> None:
        """The line magics of the cell whose effect outlives it (``%matplotlib inline``, ``%config``,
        ``%load_ext``), run again without their output: the replay shows what they printed."""
        for name, line in self.replayed_magics:
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    self.shell.run_line_magic(name, line)
            except Exception as exc:
                _warn(f"nbcache: step {self.name!r} came from the cache, but %{name} {line} failed when run"
                      f" again: {type(exc).__name__}: {exc}")

    def execute(self, reason: str, *, store: bool) -> Any:
        shell = self.shell
        ns = shell.user_ns
        before = {name: id(value) for name, value in ns.items()}
        t_body = time.perf_counter()
        outer = shell.displayhook.exec_result  # the %%step cell's own result, which the inner run replaces
        with _Recorder(shell) as recorder, (self.observe(frozenset(self.binds)) if store else contextlib.nullcontext()):
            if self.quiet:  # IPython looks for the `;` in the %%step line's cell, not in this one
                recorder.patch(shell.displayhook, "quiet", lambda: True)
            outcome = shell.run_cell(self.cell, store_history=False)
        shell.displayhook.exec_result = outer
        if outer is not None and outcome.success and recorder.result_display is not None:
            outer.result = outcome.result  # the cell's result, as without %%step
        duration = time.perf_counter() - t_body
        if not outcome.success:
            error = outcome.error_in_exec or outcome.error_before_exec
            self.record(cached=False, reason=reason, outputs=(), status="failed",
                        error=f"{type(error).__name__}: {error}")
            raise StepCellFailed(f"step {self.name!r} failed; nothing was stored")
        names = self._outputs(before)
        variables = {name: ns[name] for name in names}
        addresses = addresses_of(list(variables.values()))
        unrepeatable = None
        if store and self.missing_outputs:
            unrepeatable = f"--outputs names {', '.join(self.missing_outputs)}, which the cell does not define"
        elif store:
            unrepeatable = ("it shows a widget, which needs the live kernel object a replay cannot give back"
                            if recorder.shows_a_widget() else self.not_cacheable_after_run())
        if unrepeatable:
            reason, store = self._not_stored(reason, unrepeatable), False
        if not store:
            self.record(cached=False, reason=reason, outputs=addresses, output_names=tuple(names))
            return None
        deleted = [n for n in before if n not in ns and not _IPYTHON_NAMES.fullmatch(n)]
        assert self.observer is not None
        payload = {"variables": variables, "deleted": deleted, "events": recorder.recorded(),
                   "result": None if self.quiet else outcome.result,
                   "result_display": None if self.quiet else recorder.result_display,
                   "ambient": self.observer.changed_state()}
        defined_here = {id(v) for v in variables.values() if isinstance(v, (type, types.FunctionType))
                        and id(v) not in before.values()}
        try:
            sizes = {a: _memory_size(v) for a, v in zip(addresses, variables.values()) if a}
            self.save_payload(payload, addresses, {"duration_s": duration}, sizes=sizes, by_value=defined_here)
        except Unpicklable as exc:
            what = next((f"variable {n!r}" for n, v in variables.items() if not _picklable(v, defined_here)),
                        "its output")
            _warn(f"nbcache: step {self.name!r} was not cached: {what} cannot be pickled ({exc.reason})")
            reason = self._not_stored(reason, f"{what} cannot be pickled")
            self.record(cached=False, reason=reason, outputs=addresses, output_names=tuple(names))
            return None
        self.record(cached=False, reason=reason, outputs=addresses, output_names=tuple(names))
        return None  # the shell has shown the result already

    def _not_stored(self, reason: str, why: str) -> str:
        """The reason of a run whose result cannot be stored, for ``why``; the next run will say it runs
        every time, for that reason."""
        self.remember_last(uncached=why)
        return reason if why in reason else f"{reason}; not cached: {why}"  # (`runs every time: <why>`)

    def _outputs(self, before: dict[str, int]) -> list[str]:
        """What the cell bound (seen in its code, or as a name that is new or rebound after it ran), and
        the data inputs it changed in place; or what --outputs names."""
        ns = self.shell.user_ns
        if self.restrict is not None:
            missing = [n for n in self.restrict if n not in ns]
            if missing:  # a typo: storing the rest would leave the name undefined after a hit
                self.missing_outputs = missing
                _warn(f"nbcache: --outputs names {', '.join(missing)}, which the cell did not define; the cell"
                      " was not cached")
            return [n for n in self.restrict if n in ns]
        names = [n for n in self.binds if n in ns]
        names += [n for n, v in ns.items() if before.get(n) != id(v) and n not in names
                  and not _IPYTHON_NAMES.fullmatch(n) and not n.startswith("__")]
        # the `f` of `with open(...) as f:` (a file, an archive, a temporary file) is closed by now:
        # nothing to keep, and it cannot be stored
        names = [n for n in names if not _is_closed(ns[n])]
        for name in self.input_names:
            value = ns.get(name, _ABSENT)
            if name in names or name not in self.inputs or value is _ABSENT or isinstance(value, _CODE_TYPES):
                continue  # a function's hash follows the globals it reads: that is no mutation
            try:
                if hash_value(value) != self.inputs.get(name):
                    names.append(name)  # mutated in place: `items.append(x)`, `df["c"] = ...`
            except Exception:
                pass
        return names


_CODE_TYPES = (types.FunctionType, type, types.ModuleType, types.MethodType, Step)


def _is_closed(value: Any) -> bool:
    """A closed file, archive or temporary file: what a ``with`` block leaves bound."""
    if isinstance(value, io.IOBase):
        return value.closed
    module = type(value).__module__
    try:
        if module == "zipfile":
            return getattr(value, "fp", False) is None
        return module in ("tempfile", "tarfile") and getattr(value, "closed", None) is True
    except Exception:
        return False


def _memory_size(value: Any, depth: int = 3, seen: set[int] | None = None) -> int:
    """About how many bytes a variable holds (its data for arrays and frames, and for the items of tuples,
    lists, sets and dicts, a few levels deep, each object once), for the lineage details. It looks at
    no more than about 10,000 objects: a rough size, quickly."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage) and type(value).__module__.startswith("pandas"):
        try:
            total = usage(deep=True)  # a Series of per-column sizes for a DataFrame, an int for a Series
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:
            pass
    size = sys.getsizeof(value)
    if depth and type(value) in (tuple, list, set, frozenset, dict) and len(seen) < 10_000:
        items = [*value.keys(), *value.values()] if type(value) is dict else value
        size += sum(_memory_size(item, depth - 1, seen) for item in itertools.islice(items, 10_000))
    return size


def _picklable(value: Any, by_value: set[int]) -> bool:
    try:
        Frame(value, by_value=by_value)
        return True
    except Unpicklable:
        return False


def _ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last expression ends with ``;``, which tells IPython not to show its value."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                                    tokenize.DEDENT, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        return False
    return bool(tokens) and tokens[-1].string == ";"


def _why(name: str) -> str:
    """What changed between the last two runs of a step."""
    text = describe_last_change(get_store().read_runs(name), name)
    if text is None:
        raise UsageError(f"no step named {name!r} has run with this cache directory;"
                         " `nbcache ls` in a terminal lists those that have")
    return text


def _show_table(header: list[str], rows: list[list[str]], *, empty: str) -> None:
    if not rows:
        print(empty)
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows) + "</table>"
    publish_display_data({"text/plain": "\n".join(lines), "text/html": table})


# -- loading -----------------------------------------------------------------------------------------------

def load_ipython_extension(shell: Any) -> None:
    settings = NBCache(parent=shell)
    shell.configurables.append(settings)  # (a cache_dir from config already reached set_cache_dir)
    magics = StepMagics(shell, settings)
    shell.register_magics(magics)
    shell.events.register("pre_run_cell", magics.pre_run_cell)
    set_notebook_module(shell.user_module)
    if not shell.custom_exceptions:  # show a failed cell's own traceback once, then one line from us
        shell.set_custom_exc((StepCellFailed,), _show_step_failure)


def unload_ipython_extension(shell: Any) -> None:
    for callback in list(shell.events.callbacks.get("pre_run_cell", [])):
        if isinstance(getattr(callback, "__self__", None), StepMagics):
            shell.events.unregister("pre_run_cell", callback)
    for kind, name in (("cell", "step"), ("line", "steps"), ("line", "nbcache"), ("line", "lineage")):
        shell.magics_manager.magics[kind].pop(name, None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, NBCache)]
    if shell.custom_exceptions == (StepCellFailed,):
        shell.set_custom_exc((), None)
    set_notebook_module(None)
