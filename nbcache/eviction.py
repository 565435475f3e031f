"""A cache's size limit, and which entries go when it is exceeded: the same choice for every store.

- ``parse_size`` reads a limit as people write it (``20GB``, ``500MB``, ``1.5GiB``, a number of bytes);
  ``size_limit_from_env`` reads ``NBCACHE_SIZE_LIMIT``.
- ``choose_victims`` picks the least recently used entries to evict until a total is under a limit: an
  entry goes with the blobs no other entry uses (blobs are shared between entries), and the entries to keep
  (the one just stored) never go.
- ``beyond_last`` picks, step by step, the entries older than a step's N most recently used ones
  (``nbcache clear --keep-last N``).

"Used" is when an entry was stored or last served (``Store.touch``); a store keeps that time as it can
without writing on a hit (``DiskStore`` in memory first, then in one batch).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Iterable, NamedTuple

__all__ = ["ENV_VAR", "Candidate", "beyond_last", "choose_victims", "parse_size", "size_limit_from_env"]

ENV_VAR = "NBCACHE_SIZE_LIMIT"
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(i?)b?", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(value: int | float | str, source: str = ENV_VAR) -> int:
    """A size limit in bytes: ``20GB`` and ``20G`` are 20*1000**3, ``1.5GiB`` 1.5*1024**3, ``500MB``,
    ``4096``. ``ValueError`` naming ``source`` (where the value came from) and an example if malformed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(_malformed(source, value))
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(_malformed(source, value))
        return int(value)
    match = _SIZE.fullmatch(value.strip())
    if not match:
        raise ValueError(_malformed(source, value))
    number, prefix, binary = match.groups()
    if binary and not prefix:  # "5i", "5ib"
        raise ValueError(_malformed(source, value))
    base = 1024 if binary else 1000
    return int(float(number) * base ** _POWERS[prefix.lower()])


def _malformed(source: str, value: object) -> str:
    return (f"{source} is a size such as 20GB, 500MB or 1.5GiB (or a number of bytes), not {value!r};"
            f" for example {source}=20GB" if source == ENV_VAR else
            f"{source} is a size such as '20GB', '500MB' or '1.5GiB' (or a number of bytes), not {value!r};"
            f" for example {source} = '20GB'")


_env_parsed: tuple[str, int | None] = ("", None)


def size_limit_from_env() -> int | None:
    """The limit ``NBCACHE_SIZE_LIMIT`` sets (None when unset or empty); ``ValueError`` if malformed."""
    global _env_parsed
    text = os.environ.get(ENV_VAR, "").strip()
    if text != _env_parsed[0]:  # (parsed once per value: this is on every store's path)
        _env_parsed = (text, parse_size(text, ENV_VAR) if text else None)
    return _env_parsed[1]


class Candidate(NamedTuple):
    """An entry that may be evicted: its key, when it was last used (stored or served, seconds since the
    epoch), the bytes it takes itself (its row), and the blobs it refers to."""

    key: str
    used: float
    size: int
    blobs: tuple[str, ...] = ()


def choose_victims(candidates: Iterable[Candidate], blob_sizes: dict[str, int], total: int, limit: int,
                   keep: Iterable[str] = ()) -> list[tuple[str, tuple[str, ...]]]:
    """(key, blobs to delete with it) of the entries to evict, least recently used first, until ``total``
    is at most ``limit``: a blob goes with the last entry that refers to it. ``keep``: keys never evicted
    (their blobs stay too)."""
    candidates = list(candidates)
    keep = set(keep)
    users = Counter(b for c in candidates for b in set(c.blobs))
    victims = []
    for candidate in sorted(candidates, key=lambda c: (c.used, c.key)):
        if total <= limit:
            break
        if candidate.key in keep:
            continue
        total -= candidate.size
        freed = []
        for blob in dict.fromkeys(candidate.blobs):
            users[blob] -= 1
            if users[blob] == 0:
                freed.append(blob)
                total -= blob_sizes.get(blob, 0)
        victims.append((candidate.key, tuple(freed)))
    return victims


def beyond_last(entries: Iterable[tuple[str, str, float]], keep_last: int) -> list[str]:
    """The keys of (key, step, used) past each step's ``keep_last`` most recently used ones."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"keep_last is a number of entries (0 or more), not {keep_last!r}")
    by_step: dict[str, list[tuple[float, str]]] = {}
    for key, step, used in entries:
        by_step.setdefault(step, []).append((used, key))
    doomed = []
    for items in by_step.values():
        items.sort(reverse=True)
        doomed += [key for _, key in items[keep_last:]]
    return doomed
