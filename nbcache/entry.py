"""The two records a store keeps per step besides values: ``Entry`` and ``Latest``, parsed in one place.

An ``Entry`` says what one cache key produced: the content addresses of the outputs, the blobs holding
them, their sizes, and what the run was found to depend on (``checks``). ``Latest`` holds the ingredients
of a step's latest run, so the next run can say what changed. Both are stored as JSON text; reading one
validates every field, and anything malformed raises ``Damaged``: the caller forgets it and recomputes,
never indexing into a dict that lacks a key.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, NamedTuple

from .checks import Check, checks_from_json
from .frame import Damaged
from .key import CACHE_FORMAT

__all__ = ["Entry", "Latest", "AMBIENT_BLOB"]

AMBIENT_BLOB = "ambient"
"""The name of the extra blob of a function step's entry that holds the process-wide state its run changed."""


@dataclass(frozen=True)
class Entry:
    """What one cache key produced.

    ``kind`` is ``"function"`` (one blob per output, plus the changed process-wide state as a last blob
    when ``ambient``; ``is_tuple``: the function returned a tuple of the outputs) or ``"cell"`` (one blob
    holding the cell's whole payload).
    """

    step: str
    kind: str
    outputs: tuple[str, ...]
    blobs: tuple[str, ...]
    sizes: Mapping[str, int]
    created_at: float
    duration_s: float
    is_tuple: bool = False
    result: str = ""  # the hash of a returned tuple as a whole
    ambient: bool = False
    checks: tuple[Check, ...] = ()
    seal: str = ""  # an HMAC under the cache's key of the entry and the key it is filed under (cache.py)
    # the text it was read from, its seal taken out, when that text is as ``to_json`` writes it: what the seal
    # covers, without encoding the entry again (a first hit's 50 us); not a field of the entry
    unsealed: str = dataclasses.field(default="", init=False, compare=False, repr=False)

    def sealed_text(self, key: str) -> bytes:
        """What the seal covers: the cache key and every field but the seal."""
        return key.encode() + b"\n" + dataclasses.replace(self, seal="").to_json().encode()

    def seal_matches(self, key: str, sign: Callable[[bytes], str]) -> bool:
        """Whether its seal is ``sign`` of ``sealed_text(key)``: first of the text it was read from, if that
        text is as ``to_json`` writes it (a seal that matches it matches the entry: only ``to_json``'s texts
        are sealed, and the entry is what that text says), else of the entry encoded again."""
        if not self.seal.isascii():  # (no hex digest: compare_digest would raise)
            return False
        if self.unsealed and hmac.compare_digest(self.seal, sign(key.encode() + b"\n" + self.unsealed.encode())):
            return True
        return hmac.compare_digest(self.seal, sign(self.sealed_text(key)))

    def __post_init__(self) -> None:
        if self.kind == "function":
            values = len(self.blobs) - self.ambient
            if values != len(self.outputs):
                extra = " and the state its run changed" if self.ambient else ""
                raise Damaged(f"its 'blobs' name {len(self.blobs)} stored values for {len(self.outputs)}"
                              f" outputs{extra}")
            if not self.is_tuple and values != 1:
                raise Damaged(f"its 'tuple' is false but it has {len(self.outputs)} outputs")
        elif self.kind == "cell":
            if len(self.blobs) != 1 or self.ambient or self.is_tuple:
                raise Damaged("a cell's entry names one stored value")
        else:
            raise Damaged(f"its kind {self.kind!r} is unknown")

    def to_json(self) -> str:
        record: dict[str, Any] = {
            "step": self.step, "kind": self.kind, "outputs": self.outputs, "blobs": self.blobs,
            "sizes": dict(self.sizes), "created_at": self.created_at, "duration_s": self.duration_s,
        }
        if self.kind == "function":
            record.update({"tuple": self.is_tuple, "result": self.result})
        if self.ambient:
            record["ambient"] = True
        if self.checks:
            record["checks"] = [c.to_json() for c in self.checks]
        if self.seal:
            record["seal"] = self.seal
        return json.dumps(record)

    @classmethod
    def from_json(cls, text: Any) -> Entry:
        """The entry stored as ``text``; raises ``Damaged`` naming what is wrong with it."""
        record = _object(text)
        fields = _plain_fields(record)
        entry = cls(**fields) if fields is not None else cls._checked(record)
        tail = f', "seal": "{entry.seal}"}}'
        if entry.seal.isalnum() and text.isascii() and text.endswith(tail):  # (as to_json writes it: ASCII)
            object.__setattr__(entry, "unsealed", text[: -len(tail)] + "}")
        return entry

    @classmethod
    def _checked(cls, record: dict) -> Entry:
        """The entry of a parsed record read field by field, saying what is wrong (``Damaged``)."""
        try:
            # entries written before "kind" was: a function's has "tuple", a cell's does not
            kind = record.get("kind", "function" if "tuple" in record else "cell")
            return cls(
                step=_typed(record, "step", str), kind=_typed({"kind": kind}, "kind", str),
                outputs=_strings(record, "outputs"), blobs=_strings(record, "blobs"),
                sizes=_sizes(record.get("sizes", {})),
                created_at=_seconds(record, "created_at"), duration_s=_seconds(record, "duration_s"),
                is_tuple=_typed(record, "tuple", bool, False), result=_typed(record, "result", str, ""),
                ambient=_typed(record, "ambient", bool, False), checks=checks_from_json(record.get("checks")),
                seal=_typed(record, "seal", str, ""),
            )
        except ValueError as exc:  # malformed checks
            raise Damaged(str(exc)) from None


_NONE: Mapping[str, str] = MappingProxyType({})  # (a default no run can change)


class Latest(NamedTuple):
    """The ingredients of a step's latest run (``uncached``: why its result could not be stored; ``failed``:
    the error its body raised, ``Type: message``, when it failed and stored nothing)."""

    key: str
    code: str
    deps: Mapping[str, str] = _NONE
    inputs: Mapping[str, str] = _NONE
    version: str | None = None
    kind: str = "function"
    name: str = ""
    uncached: str | None = None
    format: int | None = CACHE_FORMAT  # the cache format it was written with (None: before it was recorded)
    failed: str | None = None

    def to_json(self) -> str:
        record = {"key": self.key, "code": self.code, "deps": dict(self.deps), "inputs": dict(self.inputs),
                  "version": self.version, "kind": self.kind, "name": self.name, "format": self.format}
        if self.uncached:
            record["uncached"] = self.uncached
        if self.failed:
            record["failed"] = self.failed
        return json.dumps(record)

    @classmethod
    def from_json(cls, text: Any) -> Latest:
        """The ingredients stored as ``text``; raises ``Damaged`` if they are not readable as such (for
        instance written by an nbcache of another cache format)."""
        record = _object(text)
        return cls(key=_typed(record, "key", str), code=_typed(record, "code", str),
                   deps=_string_map(record, "deps"), inputs=_string_map(record, "inputs"),
                   version=_typed(record, "version", (str, type(None)), None),
                   kind=_kind(_typed(record, "kind", str, "function")), name=_typed(record, "name", str, ""),
                   uncached=_typed(record, "uncached", (str, type(None)), None),
                   format=_typed(record, "format", (int, type(None)), None),
                   failed=_typed(record, "failed", (str, type(None)), None))


_REQUIRED = object()
_INF = float("inf")


def _plain_fields(record: dict) -> dict[str, Any] | None:
    """The fields of a record as ``to_json`` writes it, with no checks, in a few type tests (a listing reads
    tens of thousands); None for any other record, which ``from_json`` then reads field by field, to say
    what is wrong. Every value of a parsed JSON text is of a built-in type: ``type(v) is str`` is the test."""
    get = record.get
    step, kind, outputs, blobs = get("step"), get("kind"), get("outputs"), get("blobs")
    sizes, created_at, duration_s = get("sizes"), get("created_at"), get("duration_s")
    is_tuple, result, ambient, seal = get("tuple", False), get("result", ""), get("ambient", False), get("seal", "")
    if not (type(step) is str and type(kind) is str and type(outputs) is list and type(blobs) is list
            and type(sizes) is dict and type(created_at) is float and type(duration_s) is float
            and 0.0 <= created_at < _INF and 0.0 <= duration_s < _INF and type(is_tuple) is bool
            and type(result) is str and type(ambient) is bool and type(seal) is str and get("checks") is None):
        return None
    for value in (*outputs, *blobs):
        if type(value) is not str:
            return None
    for value in sizes.values():
        if type(value) is not int or value < 0:
            return None
    return {"step": step, "kind": kind, "outputs": tuple(outputs), "blobs": tuple(blobs), "sizes": sizes,
            "created_at": created_at, "duration_s": duration_s, "is_tuple": is_tuple, "result": result,
            "ambient": ambient, "seal": seal}


def entry_size(text: Any) -> tuple[str, str, int] | None:
    """(step, kind, stored bytes) of the entry stored as ``text``, read from those fields and checked as
    ``from_json`` checks them, the others' types only; None for one that does not read (``Entry.from_json``
    says why)."""
    try:
        record = json.loads(text)
        step, kind, sizes = record["step"], record["kind"], record["sizes"]
        if (type(step) is str and type(kind) is str and type(sizes) is dict and kind in ("function", "cell")
                and type(record.get("outputs")) is list and type(record.get("blobs")) is list):
            total = 0
            for size in sizes.values():
                if type(size) is not int or size < 0:
                    raise ValueError(size)
                total += size
            return step, kind, total
    except (ValueError, TypeError, KeyError, RecursionError):
        pass
    try:  # (another shape: an older entry, or a damaged one)
        entry = Entry.from_json(text)
    except Damaged:
        return None
    return entry.step, entry.kind, sum(entry.sizes.values())


def _object(text: Any) -> dict:
    if not isinstance(text, str):
        raise Damaged("it is not one nbcache wrote")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        raise Damaged("it is not valid JSON") from None
    if not isinstance(record, dict):
        raise Damaged("it is not a JSON object")
    return record


def _typed(record: dict, name: str, types: Any, default: Any = _REQUIRED) -> Any:
    value = record.get(name, default)
    if value is _REQUIRED:
        raise Damaged(f"its {name!r} is missing")
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise Damaged(f"its {name!r} is of type {type(value).__name__}")
    return value


def _seconds(record: dict, name: str) -> float:
    try:
        value = float(_typed(record, name, (int, float)))
    except OverflowError:
        raise Damaged(f"its {name!r} is too large") from None
    if not value >= 0 or value == float("inf"):  # (NaN too)
        raise Damaged(f"its {name!r} is {value}")
    return value


def _kind(kind: str) -> str:
    if kind not in ("function", "cell"):
        raise Damaged(f"its 'kind' {kind!r} is unknown")
    return kind


def _tuple(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _strings(record: dict, name: str) -> tuple[str, ...]:
    value = _typed(record, name, list)
    if not all(isinstance(v, str) for v in value):
        raise Damaged(f"its {name!r} holds something other than strings")
    return tuple(value)


def _string_map(record: dict, name: str) -> dict[str, str]:
    value = _typed(record, name, dict, {})
    if not all(isinstance(v, str) for v in value.values()):
        raise Damaged(f"its {name!r} holds something other than strings")
    return value


def _sizes(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value.values()):
        raise Damaged("its 'sizes' is malformed")
    return value
