"""Checking a whole store on demand (``nbcache verify``, ``Cache.verify``), as ``git fsck`` checks a
repository: every entry's seal, and every value read whole (never unpickled) against its signature and its
buffers' digests. Imported when asked for, not by ``import nbcache``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .frameformat import Damaged, NotSigned
from .framecheck import verify_frame
from .store import Store

__all__ = ["Problem", "Verification", "remove_damaged", "verify_store"]


@dataclass(frozen=True)
class Problem:
    """A stored result that is not intact: the entry's cache key and step, the value (its address; empty
    for the entry itself) and what is wrong."""

    key: str
    step: str
    address: str
    what: str
    foreign: bool = False  # not signed with this key (another key's, or altered), rather than damaged


@dataclass(frozen=True)
class Verification:
    """What ``nbcache verify`` found: how many entries and values it read, and the problems."""

    entries: int
    values: int
    problems: tuple[Problem, ...]


def verify_store(store: Store, key: bytes, check_seal: Callable[[str, Any], None]) -> Verification:
    """Check every result of ``store`` under ``key``: entries whose seal does not match, values that are
    missing, not signed with ``key`` under their name, or whose buffers fail their digests (each value read
    whole, never unpickled)."""
    checked: dict[str, str | None] = {}
    problems, entries = [], 0
    for cache_key, entry in store.entries():
        entries += 1
        try:
            check_seal(cache_key, entry)
        except Exception as exc:
            problems.append(Problem(cache_key, entry.step, "", str(exc), isinstance(exc, NotSigned)))
            continue
        for address in entry.blobs:
            if address not in checked:
                checked[address] = _value_problem(store, key, address)
            problem = checked[address]
            if problem is not None:
                problems.append(Problem(cache_key, entry.step, address, str(problem) or type(problem).__name__,
                                        isinstance(problem, NotSigned)))
    return Verification(entries, len(checked), tuple(problems))


def _value_problem(store: Store, key: bytes, address: str) -> Exception | None:
    try:
        source = store.open_blob(address)
        return Damaged("it is missing") if source is None else verify_frame(source, key=key, name=address)
    except Exception as exc:  # (Damaged: the index points at something that is no value file)
        return exc


def remove_damaged(store: Store, found: Verification) -> Verification:
    """Remove the results ``found`` damaged, so that they are recomputed; not those signed with another key
    (a team's results, or this user's under another key). ``found`` itself."""
    damaged = [p for p in found.problems if not p.foreign]
    for key in {p.key for p in damaged}:
        store.delete(key, [p.address for p in damaged if p.key == key and p.address])
    return found
