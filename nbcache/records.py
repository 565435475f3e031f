"""The record of one step call, as kept in the run history and read back by ``nbcache.runs``."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

__all__ = ["StepRun", "Outcome", "Change", "ChangeKind", "SESSION", "describe_error", "format_seconds",
           "format_bytes", "open_history", "parse_runs", "read_history"]

#: Identifies this process (a kernel, until it restarts) in the history.
SESSION = f"{os.getpid()}-{os.urandom(4).hex()}"


class Outcome(enum.Enum):
    """How a call went, and for a call that ran, why. The graph and the CLI read this, never ``reason``."""

    HIT = "hit"
    """Its stored result was used; the body did not run."""
    TEAM_HIT = "team hit"
    """Its result was copied from the team cache (another machine computed it); the body did not run."""
    FIRST_RUN = "first run"
    """No earlier run of this step (under this cache format, as this kind of step) was recorded."""
    CHANGED = "changed"
    """Its code, an input, its version, or something its run read (a file, the RNG state) changed."""
    REMOVED = "removed"
    """Nothing changed, but its stored result had been removed (``clear``)."""
    RETRIED = "retried"
    """Nothing changed since its last run, which failed (its body raised): it ran again."""
    DAMAGED = "damaged"
    """Its stored result was damaged or missing on disk; it was forgotten and recomputed."""
    DISABLED = "disabled"
    """Caching is turned off for this step."""
    UNCACHEABLE = "uncacheable"
    """An input could not be hashed or its code could not be fingerprinted."""
    ALWAYS_RUNS = "always runs"
    """It can never be served from the cache (a shell command, a widget, ``globals()``)."""
    UNREADABLE = "unreadable"
    """The cache itself could not be read; it ran without it."""
    FAILED = "failed"
    """Its body raised; nothing was stored."""

    @property
    def ran(self) -> bool:
        return self is not Outcome.HIT and self is not Outcome.TEAM_HIT


class ChangeKind(enum.Enum):
    """What kind of ingredient a ``Change`` is about."""

    CODE = "code"  # a function of the step's code (``name`` ends in ``()``), or its own code (``name`` "")
    GLOBAL = "global"  # a global value its code reads
    INPUT = "input"  # an argument of a function step, a variable a cell reads
    VERSION = "version"  # the ``version=`` string: ``before`` and ``after``
    KIND = "kind"  # the name was a function step and is a cell now, or back: ``before`` and ``after``
    FORMAT = "format"  # the latest ingredients were written by an nbcache of another cache format
    READ = "read"  # something its run read, checked on lookup: ``name`` says what, in words


_COMPACT = json.JSONEncoder(separators=(",", ":")).encode  # (json.dumps makes an encoder per call: a hit's µs)


@dataclass(frozen=True)
class Change:
    """One thing that differs from a step's latest run."""

    kind: ChangeKind
    name: str = ""
    before: str | None = None
    after: str | None = None

    def to_json(self) -> list:
        return [self.kind.value, self.name, self.before, self.after]

    @classmethod
    def from_json(cls, item: Any) -> Change:
        kind, name, before, after = item
        if not isinstance(name, str) or not all(v is None or isinstance(v, str) for v in (before, after)):
            raise ValueError(f"malformed change {item!r}")
        return cls(ChangeKind(kind), name, before, after)


@dataclass(frozen=True)
class StepRun:
    """One call of a step: whether it came from the cache, how long it took, and why.

    ``inputs`` and ``outputs`` are content hashes, so that a step's outputs can be matched with the inputs
    of the steps that consumed them (the lineage), across restarts and through plain cells. ``deps``
    says what a step's code depends on; comparing two runs' ``deps`` says which helper or global changed.

    Attributes:
        step: The step's name.
        cached: True when the result came from the cache and the body did not run.
        duration_s: Seconds the call took, from the call to the return, hashing and loading included.
        saved_s: For a hit, the seconds the original run of the body took; 0 otherwise.
        key: The cache key, 32 hex characters; empty when the call could not have one.
        code: The code fingerprint that went into the key.
        inputs: Argument (or, for a cell, variable) names mapped to their content hashes.
        outputs: The content hashes of what the step returned, one per element when it returned a
            tuple; for a cell, of the variables in ``output_names``.
        reason: Why it ran or came from the cache, in words: ``first run``, ``cache hit``,
            ``code changed: clean()``, ``argument epochs changed``, ``uncacheable argument rows (generator)``.
        started_at: When the call started, as a timezone-aware UTC ``datetime``.
        status: ``"ok"``, or ``"failed"`` when the body raised (nothing was stored).
        version: The step's ``version`` string, or None.
        deps: Each function (``name()``) and global value the step's code reads, mapped to its own digest.
        error: For a failed call, ``"ExceptionType: message"``.
        kind: ``"function"`` for ``@step``, ``"cell"`` for ``%%step``.
        session: Identifies the process (the kernel, until it restarts) that made the call.
        output_names: For a cell, the variables its ``outputs`` were bound to.
        sizes: The stored bytes of each output, by its content hash.
        result: The content hash of a returned tuple as a whole (its elements are in ``outputs``).
        state: How the call went, as an ``Outcome``: a hit, or why it ran (what the lineage colours).
        changes: For a call that ran because something changed, what changed, as ``Change`` records.
        worker: The address of the Dask worker the call ran on (``Step.submit``); "" for this process.
    """

    step: str
    cached: bool
    duration_s: float
    saved_s: float
    key: str
    code: str
    inputs: Mapping[str, str]
    outputs: tuple[str, ...]
    reason: str
    started_at: datetime
    status: str = "ok"
    version: str | None = None
    deps: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    kind: str = "function"
    session: str = SESSION
    output_names: tuple[str, ...] = ()
    sizes: Mapping[str, int] = field(default_factory=dict)  # stored bytes of each output, by its hash
    result: str = ""  # the hash of a returned tuple as a whole (its elements are in ``outputs``)
    state: Outcome | None = None  # None: inferred (a record written before nbcache kept it)
    changes: tuple[Change, ...] = ()
    worker: str = ""

    def __post_init__(self) -> None:
        if self.state is None:
            object.__setattr__(self, "state", _legacy_state(self))

    @property
    def outcome(self) -> str:
        """``hit``, ``ran`` or ``failed``, in one word for tables."""
        return "hit" if self.cached else ("failed" if self.status == "failed" else "ran")

    def to_json(self) -> str:
        record: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        record["started_at"] = self.started_at.isoformat()
        record["state"] = self.state.value if self.state is not None else None
        record["changes"] = [c.to_json() for c in self.changes]
        return _COMPACT(record)

    @classmethod
    def from_json(cls, line: str | bytes) -> StepRun:
        """A run from its history line; raises ValueError (or KeyError, TypeError) if the line is not one:
        not JSON, nested too deeply to parse, a field missing, of the wrong type or out of range."""
        try:
            return cls._from_json(line)
        except (ValueError, KeyError, TypeError):
            raise
        except Exception as exc:  # (RecursionError: JSON nested 100,000 deep; OverflowError, MemoryError)
            raise ValueError(f"not a run record ({type(exc).__name__})") from None

    @classmethod
    def _from_json(cls, line: str | bytes) -> StepRun:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("a run record is a JSON object")
        if _SURROGATE.search(line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")):
            json.dumps(record, ensure_ascii=False).encode()  # a lone surrogate is no text: UnicodeEncodeError
        record = {k: v for k, v in record.items() if k in _FIELDS}  # records written by a newer nbcache
        for name, types in _TYPES.items():
            if name in record and not isinstance(record[name], types) or name in _BOOLS and name in record \
                    and not isinstance(record[name], bool):
                raise TypeError(f"a run record's {name!r} is of type {type(record[name]).__name__}")
        for name in ("inputs", "deps", "sizes"):
            value_type = int if name == "sizes" else str
            if not all(isinstance(v, value_type) for v in record.get(name, {}).values()):
                raise TypeError(f"a run record's {name!r} holds values of the wrong type")
        for name in ("outputs", "output_names"):
            if not all(isinstance(v, str) for v in record.get(name, ())):
                raise TypeError(f"a run record's {name!r} holds something other than strings")
        if not all(not isinstance(v, bool) and 0 <= v < 2**63 for v in record.get("sizes", {}).values()) or \
                not all(math.isfinite(record.get(name, 0)) for name in ("duration_s", "saved_s")):
            raise ValueError("a run record's 'sizes', 'duration_s' or 'saved_s' is out of range")
        record["started_at"] = datetime.fromisoformat(record["started_at"])
        if record["started_at"].tzinfo is None:
            raise ValueError("a run record's 'started_at' has no time zone")
        if not 1 < record["started_at"].year < 9999:  # (a time that cannot be shown in every time zone)
            raise ValueError("a run record's 'started_at' is out of range")
        record["outputs"] = tuple(record["outputs"])
        record["output_names"] = tuple(record.get("output_names", ()))
        # a newer nbcache's outcome or kind of change is read as an older one would: the outcome from the
        # reason's words, and only the changes it knows
        state = record.get("state")
        record["state"] = Outcome(state) if state in _OUTCOMES else None
        changes = record.get("changes") or ()
        if not isinstance(changes, (list, tuple)):
            raise TypeError("a run record's 'changes' is not a list")
        record["changes"] = tuple(Change.from_json(c) for c in changes if not _newer_change(c))
        return cls(**record)


class RunLines:
    """History lines of runs (``StepRun.to_json``'s JSON, its two timing fields last), made quickly: a step's
    hits one after another differ only in when they started and how long they took, so the rest of a line
    is encoded once and used again while it is the same (compared field by field, as ``==`` compares)."""

    __slots__ = ("_fixed", "_head")

    def __init__(self) -> None:
        self._fixed: tuple | None = None  # (None: no line yet)
        self._head = ""  # the last line's fixed fields, as an unclosed JSON object

    def line(self, run: StepRun) -> str:
        took = run.duration_s
        if type(took) is not float or not math.isfinite(took):  # (not as repr writes it: the long way)
            return run.to_json()
        fixed = tuple(getattr(run, name) for name in _FIXED_FIELDS)
        if fixed != self._fixed:
            record: dict[str, Any] = dict(zip(_FIXED_FIELDS, fixed))
            record["state"] = run.state.value if run.state is not None else None
            record["changes"] = [c.to_json() for c in run.changes]
            # (its mappings copied: one changed in place and recorded again must not compare equal to itself)
            self._fixed = tuple(dict(v) if name in _MAPPING_FIELDS else v for name, v in zip(_FIXED_FIELDS, fixed))
            self._head = _COMPACT(record)[:-1]
        # (an ISO time is digits, '-', ':', '.', '+' and 'T': nothing JSON escapes)
        return f'{self._head},"duration_s":{took!r},"started_at":"{run.started_at.isoformat()}"}}'


def parse_runs(lines: Iterable[str | bytes]) -> tuple[list[StepRun], int]:
    """The runs of history lines, oldest first, and how many lines were not runs (blank lines aside): cut short
    by a killed process, written by hand, damaged. One bad record never costs the others."""
    runs, skipped = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            runs.append(StepRun.from_json(line))
        except Exception:  # (ValueError, KeyError, TypeError, as from_json says)
            skipped += 1
    return runs, skipped


def read_history(path: str | os.PathLike[str]) -> tuple[list[StepRun], int]:
    """``parse_runs`` of a history file (none: no runs). Raises ``OSError`` for a path that is not a regular
    file (a FIFO, a device): it is never waited on nor read without end."""
    with open_history(path) as f:
        return parse_runs(f) if f is not None else ([], 0)


@contextlib.contextmanager
def open_history(path: str | os.PathLike[str]) -> Iterator[BinaryIO | None]:
    """The history file opened to read, in binary (None: there is none); ``OSError`` if it is not a regular
    file, before anything is read from it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        fd = None
    if fd is None:
        yield None
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"the history {os.fspath(path)} is not a regular file")
    with open(fd, "rb") as f:
        yield f


_OUTCOMES = frozenset(o.value for o in Outcome)
_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")  # (a pair is one character: JSON's emoji)
_CHANGE_KINDS = frozenset(k.value for k in ChangeKind)


def _newer_change(item: Any) -> bool:
    """A change of a kind a newer nbcache records: left out, where a malformed one is an error."""
    return isinstance(item, list) and bool(item) and isinstance(item[0], str) and item[0] not in _CHANGE_KINDS


def _legacy_state(run: StepRun) -> Outcome:
    """The outcome of a run recorded before nbcache kept one, from the words of its reason."""
    if run.status == "failed":
        return Outcome.FAILED
    if run.cached:
        return Outcome.HIT
    reason = run.reason
    for prefix, state in _LEGACY_PREFIXES:
        if reason.startswith(prefix):
            return state
    return Outcome.CHANGED


_LEGACY_PREFIXES = (
    ("cache disabled", Outcome.DISABLED), ("uncacheable", Outcome.UNCACHEABLE),
    ("cannot fingerprint", Outcome.UNCACHEABLE), ("cache unreadable", Outcome.UNREADABLE),
    ("runs every time", Outcome.ALWAYS_RUNS), ("not cached", Outcome.ALWAYS_RUNS),
    ("first run", Outcome.FIRST_RUN), ("cached result was removed", Outcome.REMOVED),
    ("cached result was damaged", Outcome.DAMAGED), ("cached result was missing", Outcome.DAMAGED),
)


_FIELDS = tuple(f.name for f in dataclasses.fields(StepRun))
_FIXED_FIELDS = tuple(name for name in _FIELDS if name not in ("duration_s", "started_at"))  # (``RunLines``)
_MAPPING_FIELDS = frozenset({"inputs", "deps", "sizes"})
_NUMBER = (int, float)
_TYPES: dict[str, Any] = {
    "step": str, "cached": bool, "duration_s": _NUMBER, "saved_s": _NUMBER, "key": str, "code": str,
    "inputs": dict, "outputs": list, "reason": str, "started_at": str, "status": str,
    "version": (str, type(None)), "deps": dict, "error": (str, type(None)), "kind": str, "session": str,
    "output_names": list, "sizes": dict, "result": str, "state": (str, type(None)), "changes": (list, type(None)),
    "worker": str,
}
_BOOLS = {"cached"}


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_bytes(nbytes: float) -> str:
    """A size in decimal units, as ``size_limit`` reads them: ``1.5 MB`` is 1,500,000 bytes (1,572,864 bytes,
    1.5 MiB, shows as ``1.6 MB``)."""
    for unit in ("B", "KB", "MB", "GB"):
        if round(nbytes, 1) < 1000:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception (a run's ``error``, a warning's cause), its message cut at ``limit``
    characters, even when the message cannot be had (a ``__str__`` that raises)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
