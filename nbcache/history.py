"""The last run of each step in the run history, read without parsing every record: what ``nbcache ls`` lists.

A history of tens of thousands of runs takes about 20 microseconds a record to parse and check in full
(``StepRun.from_json``). A listing needs each step's last run only, in the order the steps first ran, so
it reads the step of every line from the line's first field alone (``to_json`` writes ``{"step":"...``
first), and parses in full only the lines that decide the answer: each step's first and last, and the next
ones in when those are no runs. The result is the same as parsing all of it (``last_of_each`` of
``parse_runs``): a line in any other form, or one that could name its step twice, is parsed in full.
"""

from __future__ import annotations

import json
import os
import re
from typing import Iterable, Sequence

from .records import StepRun, open_history

__all__ = ["last_of_each", "last_runs", "read_last_runs"]


def last_of_each(runs: Iterable[StepRun]) -> list[StepRun]:
    """The last run of each step, in the order the steps first ran."""
    last: dict[str, StepRun] = {}
    for run in runs:
        last[run.step] = run  # (a step keeps the place of its first run)
    return list(last.values())


def last_runs(lines: Sequence[bytes]) -> list[StepRun]:
    """``last_of_each(parse_runs(lines)[0])``, parsing only the lines that decide it."""
    lines_of: dict[str, list[int]] = {}  # step -> the indices of its lines
    parsed: dict[int, StepRun | None] = {}  # line index -> its run, None if it is no run

    def run_at(i: int) -> StepRun | None:
        if i not in parsed:
            parsed[i] = _run_or_none(lines[i])
        return parsed[i]

    known: dict[bytes, str] = {}
    for i, line in enumerate(lines):
        name = _named_first(line, known)
        if name is None:
            if not line.strip():
                continue
            run = run_at(i)
            if run is None:
                continue
            name = run.step
        lines_of.setdefault(name, []).append(i)
    firsts = []  # (the index of a step's first run, its last run)
    for indices in lines_of.values():
        first = next((i for i in indices if run_at(i) is not None), None)
        if first is not None:
            firsts.append((first, next(r for i in reversed(indices) if (r := run_at(i)) is not None)))
    return [run for _, run in sorted(firsts, key=lambda pair: pair[0])]


def read_last_runs(path: str | os.PathLike[str]) -> list[StepRun]:
    """``last_runs`` of a history file, opened as ``read_history`` opens it (none: no runs; ``OSError`` for a
    path that is not a regular file)."""
    with open_history(path) as f:
        return last_runs(f.read().split(b"\n")) if f is not None else []


_LEADING_STEP = b'{"step":"'
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string (json.loads then checks it)
_SPELLS_A_KEY_LETTER = re.compile(rb"\\u00[67]")  # an escape of a lowercase letter, such as s, t, e, p


def _named_first(line: bytes, known: dict[bytes, str]) -> str | None:
    """The step a line as ``to_json`` writes it names, or None if the line must be parsed to know: it is in
    another form, or it could name a second step, written out (a second ``"step"`` in the line, even
    inside a string) or with escapes spelling the letters of ``step`` (which ``to_json`` never writes).
    ``known``: the names read so far, by how they are written."""
    if not line.startswith(_LEADING_STEP) or line.count(b'"step"') != 1 or (
            b"\\u00" in line and _SPELLS_A_KEY_LETTER.search(line)):
        return None
    end = line.find(b'"', len(_LEADING_STEP))
    written = line[len(_LEADING_STEP):end]
    name = known.get(written)
    if name is not None or end < 0:
        return name
    try:
        if b"\\" not in written:
            name = written.decode()
        else:  # escapes (a cell's "labels \u2190 X"), decoded as json does
            literal = _STRING.match(line, len(_LEADING_STEP) - 1)
            name = json.loads(literal.group()) if literal else None
    except ValueError:  # (not UTF-8, not JSON: json reads it otherwise, or not at all; parse it)
        return None
    if name is not None and not written.endswith(b"\\"):  # (else that quote is escaped: the name goes on)
        known[written] = name
    return name


def _run_or_none(line: bytes) -> StepRun | None:
    try:
        return StepRun.from_json(line)
    except Exception:  # (ValueError, KeyError, TypeError: what parse_runs skips)
        return None
