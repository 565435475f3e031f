"""IPython integration: the ``%%step`` cell magic, ``%steps`` and ``%nbcache``. The only module that imports
IPython; ``%load_ext nbcache`` loads it.

A ``%%step`` cell is keyed on its syntax tree (comments and layout do not count), on the content of the
variables it reads from the notebook, on its name and on ``--version``. On a miss it runs through the
shell as any cell does while its printed and displayed output is recorded; the variables it binds (and
the inputs it mutated) are stored. On a hit its body does not run: the variables are put back, the output
is replayed in order, and its last expression's value is shown again as its result.
"""

from __future__ import annotations

import html
import sys
import time
import types
from datetime import datetime, timezone
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import publish_display_data
from traitlets import Bool, Unicode, observe
from traitlets.config import Configurable

from .call import StepCall, addresses_of, explain_change
from .cellcode import CellCode, analyse_cell
from .errors import warn as _warn
from .hashing import hash_value
from .records import SESSION, format_bytes, format_seconds
from .store import ENOVAL, Unpicklable, get_store, set_cache_dir

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
        events = self._recorder.events
        if self._recorder.paused:
            pass
        elif events and events[-1][0] == self._name:
            events[-1] = (self._name, events[-1][1] + text)
        else:
            events.append((self._name, text))
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _Recorder:
    """Records stdout, stderr and display output, in order, while letting it through."""

    # The displayhook shows the last expression's value (a terminal prints "Out[n]: ..." to stdout). That
    # value is stored and shown again as the result, so its display is not recorded as output.
    _HOOK_METHODS = ("write_output_prompt", "write_format_data")

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.events: list[tuple] = []
        self.paused = False

    def _pausing(self, method: Any) -> Any:
        def paused(*args: Any, **kwargs: Any) -> Any:
            self.paused = True
            try:
                return method(*args, **kwargs)
            finally:
                self.paused = False
        return paused

    def __enter__(self) -> _Recorder:
        self._stdout, self._stderr = sys.stdout, sys.stderr
        sys.stdout = _Tee(sys.stdout, "stdout", self)  # type: ignore[assignment]
        sys.stderr = _Tee(sys.stderr, "stderr", self)  # type: ignore[assignment]
        hook = self.shell.displayhook
        for name in self._HOOK_METHODS:
            setattr(hook, name, self._pausing(getattr(hook, name)))
        publisher = self.shell.display_pub
        original = self._pausing(publisher.publish)  # a terminal's publisher prints: not stdout output

        def publish(data: dict, metadata: dict | None = None, *args: Any, **kwargs: Any) -> None:
            if not kwargs.get("update"):
                self.events.append(("display", dict(data), dict(metadata or {})))
            return original(data, metadata, *args, **kwargs)

        publisher.publish = publish
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout, sys.stderr = self._stdout, self._stderr
        del self.shell.display_pub.publish  # back to the classes' methods
        for name in self._HOOK_METHODS:
            delattr(self.shell.displayhook, name)


def _replay(events: list[tuple]) -> None:
    for event in events:
        if event[0] == "display":
            data = {k: v for k, v in event[1].items() if k != _WIDGET_VIEW} or event[1]
            publish_display_data(data, event[2])
        else:
            stream = sys.stdout if event[0] == "stdout" else sys.stderr
            stream.write(event[1])
            stream.flush()


def _rebind(value: Any, namespace: dict) -> Any:
    """Functions and classes defined in a notebook come back from a pickle with a private copy of the
    globals they used; point them at the live namespace again, as if the cell had defined them now."""
    if isinstance(value, types.FunctionType) and value.__module__ == "__main__":
        fresh = types.FunctionType(value.__code__, namespace, value.__name__, value.__defaults__,
                                   value.__closure__)
        fresh.__kwdefaults__, fresh.__qualname__ = value.__kwdefaults__, value.__qualname__
        fresh.__dict__.update(value.__dict__)
        fresh.__doc__, fresh.__annotations__ = value.__doc__, value.__annotations__
        return fresh
    if isinstance(value, type) and value.__module__ == "__main__":
        for name, member in list(vars(value).items()):
            if isinstance(member, types.FunctionType):
                setattr(value, name, _rebind(member, namespace))
            elif isinstance(member, (staticmethod, classmethod)):
                setattr(value, name, type(member)(_rebind(member.__func__, namespace)))
            elif isinstance(member, property):
                setattr(value, name, property(*(_rebind(f, namespace) if f else None
                                                for f in (member.fget, member.fset, member.fdel)),
                                              member.__doc__))
    return value


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
        self._analysed: dict[str, CellCode] = {}

    @magic_arguments()
    @argument("name", nargs="?", help="the step's name (default: the variables the cell assigns)")
    @argument("--no-cache", action="store_true", help="always run the cell; still record it")
    @argument("--inputs", type=_names, default=[], help="more variables the cell depends on: a,b")
    @argument("--outputs", type=_names, default=None, help="store only these variables: x,y")
    @argument("--version", default=None, help="change this to force a re-run")
    @cell_magic
    def step(self, line: str, cell: str) -> Any:
        """Cache a cell: on a hit its variables and output come back without running it."""
        args = self._parse(self.step, line)
        source = self.shell.transform_cell(cell)
        code = self._analysed.get(source)
        if code is None:
            try:
                code = analyse_cell(source)
            except SyntaxError:
                return self._run_plain(cell)  # let the shell report the syntax error as usual
            self._analysed[source] = code
        return _CellCall(self, args, cell, code).run()

    @line_magic
    def steps(self, line: str) -> None:
        """A table of this kernel's step runs: name, hit or ran, duration, time saved, reason."""
        if line.strip():
            raise UsageError("%steps takes no arguments")
        runs = [r for r in get_store().read_runs() if r.session == SESSION]
        _show_table(["step", "state", "duration", "saved", "reason"],
                    [[r.step, "hit" if r.cached else ("failed" if r.status == "failed" else "ran"),
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
            raise UsageError(f"{exc}\nusage: %%step [NAME] [--no-cache] [--inputs a,b] [--outputs x,y]"
                             " [--version V]") from None

    def _run_plain(self, cell: str) -> None:
        result = self.shell.run_cell(cell, store_history=False)
        if not result.success:
            raise StepCellFailed("the cell failed; nothing was stored")


class _CellCall(StepCall):
    """One execution of a ``%%step`` cell."""

    def __init__(self, magics: StepMagics, args: Any, cell: str, code: CellCode) -> None:
        super().__init__(get_store(), args.name or code.default_name(), version=args.version,
                         started_at=datetime.now(timezone.utc), t0=time.perf_counter(), kind="cell")
        self.magics = magics
        self.shell = magics.shell
        self.cell = cell
        self.cache = not args.no_cache
        self.restrict = args.outputs
        ns = self.shell.user_ns
        self.code = hash_value((code.digest, self.restrict))
        self.binds = list(code.binds)
        self.input_names = [n for n in dict.fromkeys([*code.reads, *args.inputs]) if n in ns]
        missing = [n for n in args.inputs if n not in ns]
        if missing:
            raise UsageError(f"--inputs names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'}"
                             " not defined in the notebook")
        for name in self.input_names:
            if not self.hash_input(name, ns[name], "input"):
                break
        if self.problem and self.cache:
            _warn(f"nbcache: step {self.name!r} runs without the cache: {self.problem_detail}")
        self.make_key()

    def run(self) -> Any:
        if not self.cache:
            return self._execute("cache disabled", store=False)
        if self.problem:
            return self._execute(self.problem, store=False)
        try:
            values, entry, reason = self.lookup()
        except Exception as exc:
            _warn(f"nbcache: step {self.name!r} ran without the cache, which could not be read: {exc}")
            return self._execute("cache unreadable", store=False)
        if values is ENOVAL:
            return self._execute(reason, store=True)
        return self._restore(values, entry)

    def _restore(self, values: list, entry: dict) -> Any:
        names = entry["names"]
        ns = self.shell.user_ns
        for name, value in zip(names, values):
            ns[name] = _rebind(value, ns)
        events, result = values[len(names)], values[len(names) + 1]
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
        _replay(events)
        self.record(cached=True, reason="cache hit", outputs=tuple(entry["outputs"][:len(names)]),
                    saved_s=entry["duration_s"], output_names=tuple(names))
        return result

    def _execute(self, reason: str, *, store: bool) -> Any:
        shell = self.shell
        t_body = time.perf_counter()
        with _Recorder(shell) as recorder:
            outcome = shell.run_cell(self.cell, store_history=False)
        duration = time.perf_counter() - t_body
        if not outcome.success:
            error = outcome.error_in_exec or outcome.error_before_exec
            self.record(cached=False, reason=reason, outputs=(), status="failed",
                        error=f"{type(error).__name__}: {error}")
            raise StepCellFailed(f"step {self.name!r} failed; nothing was stored")
        names = self._outputs()
        ns = shell.user_ns
        values = [ns[n] for n in names]
        if not store:
            self.record(cached=False, reason=reason, outputs=addresses_of(values), output_names=tuple(names))
            return None
        result = outcome.result
        try:
            addresses = self.save([*values, recorder.events, result],
                                  {"names": names, "duration_s": duration})
        except Unpicklable as exc:
            index = getattr(exc, "index", None)
            what = (f"variable {names[index]!r}" if index is not None and index < len(names)
                    else "its output")
            _warn(f"nbcache: step {self.name!r} was not cached: {what} cannot be pickled ({exc})")
            self.record(cached=False, reason=reason + f"; not cached: {what} cannot be pickled",
                        outputs=addresses_of(values), output_names=tuple(names))
            return None
        self.record(cached=False, reason=reason, outputs=addresses[:len(names)], output_names=tuple(names))
        return None  # the shell has shown the result already

    def _outputs(self) -> list[str]:
        """What the cell bound, and the inputs it changed in place; or what --outputs names."""
        ns = self.shell.user_ns
        if self.restrict is not None:
            missing = [n for n in self.restrict if n not in ns]
            if missing:
                _warn(f"nbcache: --outputs names {', '.join(missing)}, which the cell did not define")
            return [n for n in self.restrict if n in ns]
        names = [n for n in self.binds if n in ns]
        for name in self.input_names:
            if name in names or name not in ns:
                continue
            try:
                if hash_value(ns[name]) != self.inputs.get(name):
                    names.append(name)  # mutated in place: `items.append(x)`, `df["c"] = ...`
            except Exception:
                pass
        return names


def _why(name: str) -> str:
    """What changed between the last two runs of a step."""
    runs = get_store().read_runs(name)
    if not runs:
        raise UsageError(f"no step named {name!r} has run; %steps lists the steps of this kernel")
    last = runs[-1]
    if len(runs) == 1:
        return f"{name}: {last.reason} (its only run)"
    previous = runs[-2]
    change = explain_change(
        {"code": previous.code, "deps": previous.deps, "inputs": previous.inputs, "version": previous.version},
        last.code, dict(last.deps), dict(last.inputs), last.version,
        "argument" if last.kind == "function" else "input")
    state = "came from the cache" if last.cached else "ran"
    return (f"{name} {state} at {last.started_at.astimezone():%Y-%m-%d %H:%M:%S}: {last.reason}\n"
            f"since its previous run: {'nothing changed' if change == 'cached result was removed' else change}")


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
    shell.configurables.append(settings)
    if settings.cache_dir:
        set_cache_dir(settings.cache_dir)
    shell.register_magics(StepMagics(shell, settings))
    if not shell.custom_exceptions:  # show a failed cell's own traceback once, then one line from us
        shell.set_custom_exc((StepCellFailed,), _show_step_failure)


def unload_ipython_extension(shell: Any) -> None:
    for kind, name in (("cell", "step"), ("line", "steps"), ("line", "nbcache"), ("line", "lineage")):
        shell.magics_manager.magics[kind].pop(name, None)
    shell.configurables[:] = [c for c in shell.configurables if not isinstance(c, NBCache)]
    if shell.custom_exceptions == (StepCellFailed,):
        shell.set_custom_exc((), None)
