"""The record of one step call, as kept in the run history and read back by ``nbcache.runs``."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

__all__ = ["StepRun", "SESSION", "format_seconds", "format_bytes"]

#: Identifies this process (a kernel, until it restarts) in the history.
SESSION = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


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

    @property
    def outcome(self) -> str:
        """``hit``, ``ran`` or ``failed``, in one word for tables."""
        return "hit" if self.cached else ("failed" if self.status == "failed" else "ran")

    def to_json(self) -> str:
        record: dict[str, Any] = {name: getattr(self, name) for name in _FIELDS}
        record["started_at"] = self.started_at.isoformat()
        return json.dumps(record, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str | bytes) -> StepRun:
        record = json.loads(line)
        record = {k: v for k, v in record.items() if k in _FIELDS}  # records written by a newer nbcache
        record["started_at"] = datetime.fromisoformat(record["started_at"])
        record["outputs"] = tuple(record["outputs"])
        record["output_names"] = tuple(record.get("output_names", ()))
        return cls(**record)


_FIELDS = tuple(f.name for f in dataclasses.fields(StepRun))


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def format_bytes(nbytes: float) -> str:
    for unit in ("B", "KB", "MB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GB"
