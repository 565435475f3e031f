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

    ``inputs`` maps argument names to their value hashes and ``outputs`` lists the hashes of what the step
    returned (one per element when it returned a tuple), so that a step's outputs can be matched with the
    inputs of the steps that consumed them. ``saved_s`` is the time the original run took, for a hit.
    ``deps`` maps each function and global value the step's code depends on to its own digest; comparing
    two runs' ``deps`` says what changed. ``kind`` is ``"function"`` for ``@step`` and ``"cell"`` for
    ``%%step``, whose ``output_names`` name the variables its ``outputs`` were bound to. ``session``
    identifies the process (the kernel, until it restarts) that made the call.
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
