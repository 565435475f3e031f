"""Small values read and checked once are kept as their parts: a hit of the same value again reads no blob
from the store, and still hands the caller a value of its own; the entry is read from the store every time."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import nbcache
from nbcache import Cache, MemoryStore, smallvalues


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.blob_reads = 0

    def open_blob(self, address: str):
        self.blob_reads += 1
        return super().open_blob(address)


def _table(n: int) -> dict:
    return {"weights": np.arange(n, dtype=float), "names": [f"f{i}" for i in range(3)]}


def test_a_second_hit_reads_no_blob_and_gives_a_value_of_its_own():
    store = CountingStore()
    cache = Cache(store=store)
    table = nbcache.step(cache=cache, name="table")(_table)
    table(100)  # (a miss: stored)
    first = table(100)
    reads = store.blob_reads
    second = table(100)
    assert store.blob_reads == reads  # (made from the parts kept)
    assert [r.state.value for r in cache.runs("table")] == ["first run", "hit", "hit"]
    assert np.array_equal(second["weights"], np.arange(100.0)) and second["names"] == ["f0", "f1", "f2"]
    assert second["weights"].flags.writeable and not np.shares_memory(first["weights"], second["weights"])
    first["weights"][:] = -1  # (the caller's own memory: the next hit is not touched by it)
    first["names"].append("x")
    third = table(100)
    assert np.array_equal(third["weights"], np.arange(100.0)) and third["names"] == ["f0", "f1", "f2"]


def test_a_result_cleared_by_another_process_is_a_miss_though_its_value_was_kept(tmp_path):
    directory = tmp_path / "cache"
    cache = Cache(directory)
    runs = []
    f = nbcache.step(cache=cache, name="f", ignore=["runs"])(lambda x, runs: runs.append(x) or [x] * 3)
    assert f(2, runs) == f(2, runs) == [2, 2, 2] and runs == [2]
    Cache(directory).clear()  # (another process's view of the same directory)
    assert f(2, runs) == [2, 2, 2] and runs == [2, 2]


def test_a_value_past_the_size_kept_is_read_each_time(monkeypatch):
    monkeypatch.setattr(smallvalues, "MAX_VALUE_BYTES", 512)
    store = CountingStore()
    cache = Cache(store=store)
    table = nbcache.step(cache=cache, name="table")(_table)
    table(1000)  # (8 KB of weights)
    table(1000)
    reads = store.blob_reads
    table(1000)
    assert store.blob_reads == reads + 1


def test_what_is_kept_is_let_go_past_its_limit(monkeypatch):
    monkeypatch.setattr(smallvalues, "MAX_BYTES", 3000)
    kept = smallvalues.SmallValues()
    for i in range(5):
        keep = kept.keeper(f"a{i}", b"x" * 1000)
        keep(pickle.dumps(i), [])
    assert kept.value("a4", None) == 4  # (the newest is there)
    assert kept.value("a0", None) is smallvalues.NOT_KEPT
    assert kept._bytes <= 3000
    assert kept.keeper("file", object()) is None  # (a value in a file of its own is not kept)


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_small_value_damaged_before_its_first_read_is_not_kept(damage):
    """Parts are kept only once every check passed: damage found on the first read is recomputed, and the
    damaged bytes are never what a later hit is made from."""
    store = CountingStore()
    cache = Cache(store=store)
    table = nbcache.step(cache=cache, name="table")(_table)
    table(10)
    [address] = store._blobs
    data = bytearray(store._blobs[address])
    if damage == "truncate":
        del data[-5:]
    else:
        data[len(data) // 2] ^= 1
    store._blobs[address] = bytes(data)
    with pytest.warns(nbcache.CacheWarning):
        value = table(10)
    assert np.array_equal(value["weights"], np.arange(10.0))
    again = table(10)
    assert np.array_equal(again["weights"], np.arange(10.0))
    assert cache.runs("table")[-1].state.value == "hit"
