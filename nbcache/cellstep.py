"""One cached run of a ``%%step`` cell: its key, the run through the shell while its output is recorded,
and on a hit the variables put back and the output replayed.

A ``%%step`` cell is keyed on its syntax tree (comments and layout do not count), on the content of the
variables it reads from the notebook, on its name and on ``--version``. On a miss it runs through the
shell as any cell does while its printed and displayed output is recorded; the variables it binds (and
the inputs it mutated) are stored. On a hit its body does not run: the variables are put back, the output
is replayed in order, and its last expression's value is shown again as its result.

It works on the shell the magics give it and does not import IPython: a misuse of the magic's options is a
``CellUsageError``, which the magics raise as IPython's ``UsageError``.
"""

from __future__ import annotations

import contextlib
import html
import importlib
import io
import sys
import time
import tokenize
import types
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from . import ambient
from .audit import unobserved
from .cache import Cache
from .cachedcall import StepCall, addresses_of
from .capture import Recorder, publish, replay, show_result_as_recorded
from .cellcode import CellCode
from .cellsource import give_source, run_as_step_cell
from .cellnames import CellNames
from .cellvars import (HISTORY_NAMES, Alias, Outputs, deleted_names, held_checks, memory_size, output_names,
                       picklable)
from .codestate import changed_classes, code_states
from .entry import Entry
from .errors import warn as _warn
from .fingerprint import imported_module
from .frame import Unpicklable
from .hashing import hash_value
from .modulestate import module_attributes
from .pickler import LIVE_NAMESPACE, Ahead
from .records import format_seconds
from .serving import MISS
from .store import Store

__all__ = ["Analysed", "CellCall", "CellUsageError", "StepCellFailed", "ends_with_semicolon"]

AHEAD = ("sys.path", "matplotlib backend", "environment variables")  # the state a hit makes as it loads the
# variables, before them: where their modules are, the backend a figure restored takes, the environment a module
# they name reads as it is imported again (`os.environ["MODE"] = "test"`, then `import settings`)


class StepCellFailed(Exception):
    """Raised after a ``%%step`` cell's own error has been shown, so the cell still counts as failed."""


class CellUsageError(Exception):
    """The ``%%step`` line's options do not fit the notebook (an ``--inputs`` name that is not defined)."""


class Magics(Protocol):
    """What a cell's run needs of the magics that started it."""

    shell: Any  # IPython's InteractiveShell
    cache: Cache  # the cache its cells use
    names: CellNames  # the names of this kernel's cells
    settings: Any  # with ``quiet``: say nothing when a cell comes from the cache


def ends_with_semicolon(source: str) -> bool:
    """Whether the cell's last expression ends with ``;``, which tells IPython not to show its value."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
                  if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT,
                                    tokenize.DEDENT, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError):
        return False
    return bool(tokens) and tokens[-1].string == ";"


def _earlier_name(store: Store, identity: str) -> str | None:
    """The name the step filed under ``identity`` had in its latest ingredients (None: not known)."""
    try:
        latest = store.get_latest(identity)
    except Exception:
        return None
    return latest.name or None if latest else None


@dataclass(frozen=True)
class Analysed:
    """What depends on a cell's text alone, worked out once per text."""

    code: CellCode | None  # None: the cell does not parse
    is_async: bool  # it has top-level await
    quiet: bool  # its last expression ends with `;`, which shows nothing (the syntax tree cannot tell)
    source: str  # the cell as the shell transforms it to run it (`%magic` lines made calls)


class CellCall(StepCall):
    """One execution of a ``%%step`` cell."""

    def __init__(self, magics: Magics, args: Any, cell: str, analysed: Analysed, cell_id: str | None) -> None:
        shell = magics.shell
        ns = shell.user_ns
        code = analysed.code
        assert code is not None
        missing = [n for n in args.inputs if n not in ns]
        if missing:
            raise CellUsageError(f"--inputs names {', '.join(missing)}, which"
                                 f" {'is' if len(missing) == 1 else 'are'} not defined in the notebook")
        both = sorted(set(args.inputs) & set(args.ignore))
        if both:
            raise CellUsageError(f"{', '.join(both)} cannot be both in --inputs and in --ignore")
        unread = [n for n in args.ignore if n not in code.reads]
        if unread:  # a typo would leave the variable meant in the key, and the cell uncached
            _warn(f"nbcache: --ignore names {', '.join(unread)}, which the cell does not read; check the"
                  " spelling")
        hidden = shell.user_ns_hidden  # what IPython itself put in the namespace (get_ipython, open)
        input_names = [n for n in dict.fromkeys([*code.reads, *args.inputs])
                       if n in ns and not (n in hidden and ns[n] is hidden[n] and not HISTORY_NAMES.fullmatch(n))
                       and n not in args.ignore]  # (`_ + 1` reads the last output: an input, though hidden)
        with unobserved:
            store = magics.cache.store()
        if args.name:  # the user's name is the step's identity
            name, identity = args.name, None
        elif cell_id:  # Jupyter's id of the cell: the same cell, however its code and variables change
            identity = f"cell:{cell_id}"
            base = code.default_name(input_names) if code.binds else f"cell-{cell_id[:8]}"
            name = magics.names.name_of(cell_id, base, lambda: _earlier_name(store, identity))
        else:  # plain IPython, nbclient: the name made of what the cell binds and reads
            name, identity = code.default_name(input_names), None
        self.derived_identity = not args.name and not cell_id
        super().__init__(magics.cache, store, name, version=args.version, started_at=datetime.now(timezone.utc),
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
        self.shell, self.cell, self.restrict = shell, cell, args.outputs
        self.missing_outputs: list[str] = []  # what --outputs names but the cell did not define
        self.imports = code.imports
        self.sets = code.sets
        self.code_states: dict[str, str | None] = {}  # of the functions and classes it reads, before it runs
        self.class_states: dict[type, str | None] = {}  # ... and of the classes of the objects it reads
        self.read: dict[str, str] = {}  # the globals the functions it reads read, by name: their digests
        self.quiet, self.source = analysed.quiet, analysed.source
        self.binds = list(code.binds)
        self.input_names = input_names
        self.make_key(lambda: self._ingredients(code.digest))  # (whatever fails in it runs the cell uncached)

    def _ingredients(self, digest: str) -> None:
        ns = self.shell.user_ns
        self.code = hash_value((digest, self.restrict, self.quiet))
        for name in self.input_names:
            if not self.hash_input(name, ns[name], "input", self.read):
                break
        package = ns.get("__package__")
        for module in self.imports:  # the code of the user's own modules it imports counts, like a helper's
            if not self.problem:  # (one not imported yet by name, and its source once the cell ran: Observer)
                self.hash_input(f"import {module}", imported_module(module, package), "input")

    def lookup(self) -> tuple[Any, Entry | None, str]:
        """``StepCall.lookup``, its references to unchanged inputs resolved in the shell's namespace; the state
        a payload sets as it loads (``AHEAD``) set back if it is not served (a value of it failed to load). What a
        module the cell imported prints as a hit imports it again is not shown: the replay shows it where it came."""
        kinds = tuple(ambient.BY_NAME[name] for name in AHEAD)
        before = ambient.snapshot(kinds)
        token = LIVE_NAMESPACE.set(self.shell.user_ns)
        served = False
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                values, entry, reason = super().lookup()
            served = values is not MISS
            return values, entry, reason
        finally:
            LIVE_NAMESPACE.reset(token)
            for kind in () if served else [k for k in kinds if k.name in before.values and not before.same(k.name)]:
                with contextlib.suppress(Exception):
                    kind.set(before.values[kind.name])

    def restore(self, values: list[Any], entry: Entry) -> Any:
        return self._restore(values[0], entry)

    def carried(self, entry: Entry, i: int) -> Callable[[Any], list[tuple[Any, str]]]:
        """The cell's variables, with their content addresses (the payload keeps them in that order)."""
        return lambda payload: [(v, a) for v, a in zip(payload["variables"].values(), entry.outputs) if a]

    def why(self) -> str:
        reason = super().why()
        if self.derived_identity and reason.startswith("code changed"):  # never claim two cells are one
            reason += (" (in this cell, or this is another cell that binds and reads the same variables:"
                       " without a Jupyter cell id nbcache cannot tell them apart; %%step NAME can)")
        return reason

    def _restore(self, payload: dict, entry: Entry) -> Any:
        ns = self.shell.user_ns
        # `import a.b` binds `a`, which needs `a.b` imported again; the user's modules the run imported (through a
        # function it called, too) are imported again, as a cell below that imports them finds them without
        # nbcache (what they print: shown by the replay, as in lookup). Only what the run imported: not a module of
        # a branch it did not take (`if FANCY: import fancy_style`), whose import may do what the run did not.
        imports = payload.get("imports", [m for m in self.imports if not m.startswith(".")])
        with contextlib.redirect_stdout(io.StringIO()):
            for module in [*imports, *payload.get("modules", ())]:
                with contextlib.suppress(Exception):
                    importlib.import_module(module)
            for module in payload.get("reloads", ()):  # (`importlib.reload(mod)`: the cells below find it so)
                with contextlib.suppress(Exception):
                    importlib.reload(sys.modules[module])
        self._run_magics_again()
        self.set_state(payload.get("ambient") or {})  # after the magics: `%matplotlib inline` sets rc too
        ns.update(payload["variables"])  # functions and classes come back living in ns (see pickler.py)
        for name, value in payload["variables"].items():
            if isinstance(value, Alias):  # (the input it stands for, live, as the key found it, or what in it)
                try:
                    ns[name] = value.found_in(ns)
                except LookupError:  # (no marker is ever left in the notebook)
                    del ns[name]
        for name in payload["deleted"]:
            ns.pop(name, None)
        give_source(self.shell, self.cell, self.source, payload["variables"].values())  # (tracebacks, inspect)
        if not self.magics.settings.quiet:  # what it cost now, next to what running it cost then
            took, ran = format_seconds(time.perf_counter() - self.t0), format_seconds(entry.duration_s)
            publish(
                self.shell,
                {"text/plain": f"nbcache: step {self.name!r} from the cache in {took} (running it took {ran})",
                 "text/html": "<div style='color:#6a737d;font-size:85%;font-family:var(--jp-code-font-family,"
                              f"monospace);padding-left:var(--jp-code-padding,0)'>nbcache: step "
                              f"<b>{html.escape(self.name)}</b> from the cache in {took} (running it took {ran})"
                              "</div>"},
                {"nbcache": {"notice": True}},
            )
        shown, each = [], iter(payload.get("shown") or ())  # (every value shown, in order; else the result)

        def show_result() -> None:
            shown.append(True)
            value, display = next(each, (payload["result"], payload.get("result_display")))
            show_result_as_recorded(self.shell, value, display)

        replay(self.shell, payload["events"], show_result)
        if not shown:  # recorded by an nbcache that did not mark where the result came
            show_result()
        self.record(cached=True, reason=self.hit_reason(), outputs=entry.outputs,
                    saved_s=entry.duration_s, output_names=tuple(payload["variables"]))
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
        self.code_states, self.class_states = code_states(ns, self.input_names)
        t_body = time.perf_counter()
        outer = shell.displayhook.exec_result  # the %%step cell's own result, which the inner run replaces
        with Recorder(shell) as recorder, self.watching(store, frozenset(self.binds)):
            if self.quiet:  # IPython looks for the `;` in the %%step line's cell, not in this one
                recorder.patch(shell.displayhook, "quiet", lambda: True)
            outcome = run_as_step_cell(shell, self.cell)
        shell.displayhook.exec_result = outer
        if outer is not None and outcome.success and recorder.result_display is not None:
            outer.result = outcome.result  # the cell's result, as without %%step
        duration = time.perf_counter() - t_body
        if not outcome.success:
            self.record_failure(reason, outcome.error_in_exec or outcome.error_before_exec, store=store)
            raise StepCellFailed(f"step {self.name!r} failed; nothing was stored")
        # whatever fails from here on, the cell's variables stay bound and its output shown
        self.keep(lambda: self._keep(before, recorder, outcome, reason, store=store, duration=duration), reason)
        return None  # the shell has shown the result already

    def _keep(self, before: dict[str, int], recorder: Recorder, outcome: Any, reason: str, *, store: bool,
              duration: float) -> None:
        """Store what the cell bound (when ``store``) and record the run."""
        ns, observer = self.shell.user_ns, self.observer
        found = self._outputs(before)
        names, aliases, changed_code = found.names, found.aliases, found.changed_code
        live, checks = held_checks(ns, found)
        if store and observer is not None:  # (a library's module too: `np.flag = 1`, seen in the code)
            observer.changed_modules = list(dict.fromkeys(observer.changed_modules + module_attributes(ns, self.sets)))
            observer.held = checks
        changed_code = (*changed_code, *changed_classes(self.class_states))
        addresses = addresses_of(values := [ns[name] for name in names])
        variables = {name: aliases.get(name, ns[name]) for name in names}
        unrepeatable = None
        if store and self.missing_outputs:
            unrepeatable = f"--outputs names {', '.join(self.missing_outputs)}, which the cell does not define"
        elif store and changed_code:
            unrepeatable = (f"it changes {', '.join(changed_code)} (a default value, what a closure holds, a class's"
                            " attribute, or a method's instance), which a hit would not change again")
        elif store:
            unrepeatable = ("it shows a widget, which needs the live kernel object a replay cannot give back"
                            if recorder.shows_a_widget() else self.not_cacheable_after_run())
        if unrepeatable:
            reason, store = self._not_stored(reason, unrepeatable), False
        if not store:
            self.record(cached=False, reason=reason, outputs=addresses, output_names=tuple(names))
            return
        deleted = deleted_names(ns, before)
        assert observer is not None
        changed = observer.changed_state()
        ahead = {name: changed[name] for name in AHEAD if name in changed}  # (unpickled, and made, first)
        payload = {**({"ahead": Ahead(ahead)} if ahead else {}),
                   "variables": variables, "deleted": deleted, "events": recorder.recorded(),
                   "result": None if self.quiet else outcome.result,
                   "result_display": None if self.quiet else recorder.result_display,
                   "shown": [] if self.quiet else recorder.shown,
                   "ambient": changed, "modules": observer.imported,
                   "imports": [m for m in self.imports if not m.startswith(".") and m in sys.modules],
                   "reloads": list(observer.reloaded)}
        defined_here = {id(v) for n, v in variables.items() if isinstance(v, (type, types.FunctionType))  # (or a
                        and (id(v) not in before.values() or n in found.holders)}  # function holding what it changes)
        try:
            sizes = {a: memory_size(v) for a, v in zip(addresses, values) if a}
            self.save_payload(payload, addresses, duration_s=duration, sizes=sizes, by_value=defined_here, live=live)
        except Unpicklable as exc:
            what = next((f"variable {n!r}" for n, v in variables.items()
                         if not picklable(v, defined_here, self.cache.notebook, live)),
                        "its output")
            self.trouble(f"{what} cannot be pickled ({exc.reason})", uncached=True)
            reason = self._not_stored(reason, f"{what} cannot be pickled")
        self.record(cached=False, reason=reason, outputs=addresses, output_names=tuple(names))

    def _not_stored(self, reason: str, why: str) -> str:
        """The reason of a run whose result cannot be stored, for ``why``; the next run will say it runs
        every time, for that reason."""
        self.remember_last(uncached=why)
        return reason if why in reason else f"{reason}; not cached: {why}"  # (`runs every time: <why>`)

    def _outputs(self, before: dict[str, int]) -> Outputs:
        """What the cell bound (seen in its code, or as a name that is new or rebound after it ran), and
        the data inputs it changed in place, with what shares their objects; or what --outputs names."""
        found = output_names(self.shell.user_ns, before, binds=self.binds, restrict=self.restrict,
                             input_names=self.input_names, inputs=self.inputs, carried=self.cache.carry.address_of,
                             code_states=self.code_states, read=self.read, imports=self.imports)
        missing = found.missing
        if missing:  # a typo: storing the rest would leave the name undefined after a hit
            self.missing_outputs = missing
            _warn(f"nbcache: --outputs names {', '.join(missing)}, which the cell did not define; the cell"
                  " was not cached")
        return found
