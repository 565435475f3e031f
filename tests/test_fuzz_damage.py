"""Bit flips anywhere a step's stored result lives: the entry's JSON in the index, the latest ingredients,
a value kept inline in the index, a value file's header, and samples of its payload. Whatever is flipped, a
step returns the right value, with at most one warning, and the next call is a clean hit: damage is
repaired by one recompute. (A fixed seed: the same flips on every run.)"""

from __future__ import annotations

import random
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest

import nbcache
from nbcache import CacheWarning, step

TRIALS = 160


@step
def array(n):
    return np.arange(n, dtype=np.float64) * 0.5


@step
def pair(n):
    return n, [n] * 3


CALLS = [(array, 50_000, lambda v: np.array_equal(v, np.arange(50_000) * 0.5)),
         (pair, 7, lambda v: v == (7, [7, 7, 7]))]


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT rowid, key, value, filename FROM Cache").fetchall()


def _flip_in_row(db: Path, rng: random.Random, prefix: str) -> str:
    rows = [r for r in _rows(db) if isinstance(r[1], str) and r[1].startswith(prefix) and r[2] is not None]
    rowid, key, value, _ = rng.choice(rows)
    if isinstance(value, str):
        data = bytearray(value.encode())
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(7)  # (stays ASCII: the column holds text)
        new: str | bytes = data.decode()
    else:
        data = bytearray(value)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        new = bytes(data)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (new, rowid))
    return f"{key} (in the index)"


def _flip_in_file(store: Path, rng: random.Random, where: str) -> str | None:
    files = sorted(p for p in store.rglob("*.val"))
    if not files:
        return None
    path = rng.choice(files)
    data = bytearray(path.read_bytes())
    head = 48 + 24  # the head and one buffer row
    at = rng.randrange(head) if where == "header" else rng.randrange(head, len(data))
    data[at] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"{path.name} byte {at}"


def _call_all() -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fn, arg, right in CALLS:
            assert right(fn(arg)), f"{fn.name} returned a wrong value"
    return [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]


def test_single_bit_flips_never_raise_never_serve_a_wrong_value_and_are_repaired(cache_dir):
    rng = random.Random(1454)
    _call_all()
    db, store = cache_dir / "store" / "cache.db", cache_dir / "store"
    targets = ["entry:", "last:", "blob:", "header", "payload"]
    repaired = 0
    for trial in range(TRIALS):
        target = targets[trial % len(targets)]
        if target in ("header", "payload"):
            what = _flip_in_file(store, rng, target)
        else:
            what = _flip_in_row(db, rng, target)
        before = len(nbcache.runs())
        told = _call_all()  # right values (asserted inside), whatever was flipped
        assert len(told) <= 1, f"trial {trial}, {what}: {told}"
        repaired += bool(told)
        assert _call_all() == [], f"trial {trial}, {what}: not repaired by one recompute"
        assert all(r.cached for r in nbcache.runs()[before + len(CALLS):]), f"trial {trial}, {what}"
    assert repaired >= TRIALS // 4  # (the flips did land where they are noticed)
