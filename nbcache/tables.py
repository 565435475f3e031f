"""The tables and messages that ``%steps``/``%nbcache`` in a notebook and ``nbcache`` in a terminal share.

Each table is a header and rows of cells; ``text_table`` lays it out for a terminal (or a notebook's plain
text), ``html_table`` for a notebook, ``table_bundle`` as the mime bundle that carries both. No IPython:
the notebook side publishes the bundle, the terminal side prints the text.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from .explain import describe_last_change
from .records import StepRun, format_bytes, format_seconds
from .store import Collected, StoreStats
from .verifystore import Verification

if TYPE_CHECKING:  # (the team cache's modules: imported by the commands that use them)
    from .teamsync import RemoteStep, Transfer

__all__ = ["KERNEL_RUNS_HEADER", "NO_KERNEL_RUNS", "NO_STEPS", "REMOTE_STEPS_HEADER", "STEP_RUNS_HEADER",
           "STEPS_HEADER", "StepSummary", "collected_text", "html_table", "info_text", "verify_text", "kernel_runs_rows", "printable",
           "remote_steps_rows", "removed_text", "step_runs_rows", "step_summaries", "steps_rows", "table_bundle",
           "text_table", "transfer_problems", "transfer_text", "when", "why_text"]

# What must not reach a terminal as it is: C0 and C1 control characters (ANSI escape sequences, carriage
# returns, backspaces, bells), the marks that reorder text (bidi overrides), line separators, lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                          "\ud800-\udfff]")


def printable(text: str, *, newlines: bool = False) -> str:
    """``text`` safe to print to a terminal: each character that would act on it rather than show (``ESC``,
    ``\\r``, a bidi override, a lone surrogate) written as its escape, ``\\x1b``, ``\\r``, ``\\u202e``, as
    ``repr`` does; ``newlines`` keeps line breaks (a message of several lines)."""
    if not _UNPRINTABLE.search(text):
        return text
    return _UNPRINTABLE.sub(lambda m: m.group() if newlines and m.group() == "\n" else _escape(m.group()), text)


def _escape(char: str) -> str:
    return repr(char)[1:-1]  # (Python's own escape: \t, \x1b, \u202e, \udcff)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The table as lines of left-aligned columns two spaces apart, the header first; no trailing blanks.
    Every cell is ``printable``: one line, no control characters."""
    cells = [[printable(str(c)) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """The table as HTML, its cells escaped and left-aligned."""
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{html.escape(str(c))}</td>" for c in row) + "</tr>"
        for row in rows) + "</table>"


def table_bundle(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, str]:
    """The table as a mime bundle: plain text and HTML."""
    return {"text/plain": text_table(header, rows), "text/html": html_table(header, rows)}


def when(moment: datetime | str) -> str:
    """A run's start (a ``datetime`` or its ISO text) in local time, to the second."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return f"{moment.astimezone():%Y-%m-%d %H:%M:%S}"


# -- %steps: this kernel's runs ----------------------------------------------------------------------------

KERNEL_RUNS_HEADER = ["step", "state", "duration", "saved", "reason"]
NO_KERNEL_RUNS = "no step has run in this kernel yet"


def kernel_runs_rows(runs: Iterable[StepRun]) -> list[list[str]]:
    """A row per run: its step, hit/ran/failed, how long it took, the time a hit saved, and why."""
    return [[r.step, r.outcome, format_seconds(r.duration_s), format_seconds(r.saved_s) if r.cached else "",
             r.reason] for r in runs]


# -- nbcache ls: every step of a cache directory ------------------------------------------------------------

STEPS_HEADER = ["step", "kind", "entries", "size", "last run", "last state"]
NO_STEPS = "no steps yet"


@dataclass
class StepSummary:
    """A step as ``nbcache ls`` lists it: its kind, its stored results and their bytes, its last run."""

    step: str
    kind: str = "?"  # "function" or "cell", from its last run, else from a stored result (one pulled)
    entries: int = 0
    bytes: int = 0
    last: StepRun | None = None


def step_summaries(runs: Iterable[StepRun], stored: Iterable[tuple[str, int, str]]) -> list[StepSummary]:
    """Every step of the history and of the store, in the order they first appear (runs first).

    ``stored`` gives, for each stored result, its step's name, its stored bytes and its kind. A step's kind
    and last run are those of its latest run; a step with results but no run here (pulled from a team cache)
    has the kind of its results."""
    steps: dict[str, StepSummary] = {}
    for run in runs:
        summary = steps.setdefault(run.step, StepSummary(run.step))
        summary.kind, summary.last = run.kind, run
    for name, nbytes, kind in stored:
        summary = steps.setdefault(name, StepSummary(name))
        summary.entries += 1
        summary.bytes += nbytes
        if summary.last is None:
            summary.kind = kind
    return list(steps.values())


def steps_rows(summaries: Iterable[StepSummary]) -> list[list[Any]]:
    return [[s.step, s.kind, s.entries, format_bytes(s.bytes), when(s.last.started_at) if s.last else "",
             s.last.outcome if s.last else ""] for s in summaries]


# -- nbcache ls --remote: the steps of a team cache ------------------------------------------------------------

REMOTE_STEPS_HEADER = ["step", "entries", "size", "latest by", "latest at"]


def remote_steps_rows(steps: Iterable[RemoteStep]) -> list[list[Any]]:
    return [[s.step, s.entries, format_bytes(s.bytes), s.by, _when_given(s.at)] for s in steps]


def _when_given(at: str) -> str:
    """An ISO time a remote holds, as ``when`` shows it; as it is if it is not one."""
    try:
        return when(at)
    except (ValueError, OverflowError):
        return at


# -- nbcache show: one step's runs --------------------------------------------------------------------------

STEP_RUNS_HEADER = ["started", "state", "duration", "key", "reason"]


def step_runs_rows(runs: Iterable[StepRun]) -> list[list[str]]:
    return [[when(r.started_at), r.outcome, format_seconds(r.duration_s), r.key, r.reason] for r in runs]


# -- messages ---------------------------------------------------------------------------------------------

def why_text(runs: Sequence[StepRun], name: str) -> str | None:
    """How step ``name``'s last run went and what changed since its previous one (None: it never ran)."""
    return describe_last_change(runs, name)


def info_text(stats: StoreStats, runs: int | None = None, unreadable_runs: int = 0, unsigned: int = 0,
              size_limit: int | None = None) -> str:
    """A cache directory's ``stats()`` in lines (and its number of recorded runs, when given, its size
    limit if it has one, of history lines that are no runs and of values not signed with the user's key,
    when there are any)."""
    text = f"cache directory: {stats.directory}\nentries: {stats.entries}\nsize: {format_bytes(stats.size_bytes)}"
    if size_limit is not None:
        text += (f"\nsize limit: {format_bytes(size_limit)} ({size_limit} bytes; the least recently used"
                 " results are evicted past it)")
    if runs is not None:
        text += f"\nrecorded runs: {runs}"
    if unreadable_runs:
        text += (f"\nunreadable history lines: {unreadable_runs} (cut short by a process that was killed, or"
                 " damaged; they are skipped)")
    if unsigned:
        text += (f"\nvalues not signed with your key: {unsigned} (written by another user, or altered; never"
                 " loaded: their steps run again)")
    if stats.unreadable_entries:
        text += (f"\nunreadable entries: {stats.unreadable_entries} (written by an nbcache with another cache"
                 " format, or damaged; `nbcache clear` removes them)")
    return text


def collected_text(collected: Collected) -> str:
    """What ``gc`` did: ``removed 3 files left behind (1.2 MB)``."""
    files = collected.files
    return f"removed {files} file{'s' if files != 1 else ''} left behind ({format_bytes(collected.bytes)})"


def removed_text(count: int, step: str | None = None) -> str:
    """What ``clear`` did: ``removed 2 cached results`` (``of step 'load'``)."""
    return f"removed {count} cached result{'s' if count != 1 else ''}" + (f" of step {step!r}" if step else "")


def verify_text(found: Verification, *, removed: bool = False) -> str:
    """What ``verify`` found: every value read whole and checked, and the results that are not intact."""
    checked = (f"checked {found.entries} cached result{'s' if found.entries != 1 else ''}"
               f" ({found.values} value{'s' if found.values != 1 else ''}, read whole)")
    if not found.problems:
        return f"{checked}: all intact"
    rows = [[p.step, p.address or "(its entry)", p.what] for p in found.problems]
    results = len({p.key for p in found.problems})
    foreign = len({p.key for p in found.problems if p.foreign})
    then = ("removed those that are damaged: their steps recompute when run" if removed
            else "nbcache verify --remove removes those that are damaged, so that their steps recompute")
    if foreign:
        then += (f"\n{foreign} not signed with your key (another key's, or altered) were left: never loaded, their"
                 " steps recompute; nbcache clear STEP removes them")
    return f"{checked}: {results} not intact\n" + text_table(["STEP", "VALUE", "PROBLEM"], rows) + f"\n{then}"


def transfer_text(done: Transfer, *, pushed: bool, remote: str, step: str | None = None) -> str:
    """What ``push`` or ``pull`` copied: ``pushed 2 results (3 values, 1.2 MB) to s3://b/t; 5 already there``."""
    results = _plural(done.copied, "result") + (f" of step {step!r}" if step else "")
    where = f"to {remote}; {done.present} already there" if pushed else f"from {remote}; {done.present} already here"
    return (f"{'pushed' if pushed else 'pulled'} {results} ({_plural(done.values, 'value')},"
            f" {format_bytes(done.bytes)}) {where}")


def transfer_problems(done: Transfer, *, pushed: bool) -> list[str]:
    """What ``push`` or ``pull`` did not copy, and why, one line each (none if it copied all it was asked)."""
    problems = []
    if done.refused and pushed:
        problems.append(f"{_plural(done.refused, 'result')} not pushed: not sealed with your key (made under another"
                        " key, or changed since); the team could not use them. nbcache verify says which")
    elif done.refused:
        problems.append(f"{_plural(done.refused, 'result')} refused: not sealed with your key (made under another"
                        " key, or changed since it was stored); nothing of them was kept or loaded. Is"
                        " NBCACHE_KEY the team's key?")
    if done.unreadable:
        problems.append(f"{_plural(done.unreadable, 'entry', 'entries')} of the team cache not pulled: not readable"
                        " (damaged, or not written by nbcache), and nothing of them loaded; a step that needs one"
                        " computes its result, and its upload replaces the entry")
    if done.incomplete:
        where = "missing here (nbcache verify says which)" if pushed else "missing from the team cache"
        problems.append(f"{_plural(done.incomplete, 'result')} not {'pushed' if pushed else 'pulled'}: a value of"
                        f" theirs is {where}")
    return problems


def _plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
