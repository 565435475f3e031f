"""Small values read and checked once are kept as their parts: a hit of the same value again reads no blob
from the store, and still hands the caller a value of its own; the entry is read from the store every time."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import nbcache
from nbcache import Cache, MemoryStore, smallvalues
from nbcache.frame import Damaged


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
    kept, store = smallvalues.SmallValues(), MemoryStore()
    for i in range(5):
        keep = kept.keeper(store, f"a{i}", b"x" * 1000)
        keep(pickle.dumps(i), [])
    assert kept.value(store, "a4", None) == 4  # (the newest is there)
    assert kept.value(MemoryStore(), "a4", None) is smallvalues.NOT_KEPT  # (another store's is not this one's)
    assert kept.value(store, "a0", None) is smallvalues.NOT_KEPT
    assert kept._bytes <= 3000
    assert kept.keeper(store, "file", object()) is None  # (a value in a file of its own is not kept)


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


def test_a_value_kept_from_one_directory_is_not_served_in_another(tmp_path):
    """The same result in two directories, damaged in the second: a hit there finds the damage (a warning,
    then the body runs again) as a fresh process would, though the first directory's copy was kept."""
    first, second = tmp_path / "first", tmp_path / "second"
    runs = []
    for directory in (first, second):
        f = nbcache.step(cache=Cache(directory), name="f", ignore=["runs"])(lambda runs: runs.append(1) or [1, 2])
        f(runs)
    cache = Cache(first)
    f = nbcache.step(cache=cache, name="f", ignore=["runs"])(lambda runs: runs.append(1) or [1, 2])
    assert f(runs) == [1, 2] and len(runs) == 2  # (a hit in the first directory: its value kept)
    store = Cache(second).store()
    [(_, entry)] = list(store.entries())
    [name] = entry.blobs
    data = bytearray(store.open_blob(name))
    data[-3] ^= 0xFF
    store.delete("", (name,))
    store.put_blob_file(name, bytes(data))
    cache.set_directory(second)
    with pytest.warns(nbcache.CacheWarning, match="damaged"):
        assert f(runs) == [1, 2]
    assert len(runs) == 3


def test_two_steps_leaving_different_random_states_each_restore_their_own(tmp_path):
    """The state a step leaves (numpy's global generator) rides along in a blob named by all its bytes: two
    states that pickle alike but for their key arrays were once stored under one name, and a hit of the
    second step set the first one's state."""
    cache = Cache(tmp_path / "cache")

    def a():
        np.random.seed(1)
        return float(np.random.rand())

    def b():
        np.random.seed(2)
        return float(np.random.rand())

    step_a, step_b = nbcache.step(cache=cache, name="a")(a), nbcache.step(cache=cache, name="b")(b)
    step_a(), step_b()
    for step, seed in ((step_a, 1), (step_b, 2), (step_a, 1)):
        step()
        np.random.seed(seed)
        np.random.rand()
        expected = np.random.rand()  # (the draw after the step's own run)
        step()
        assert cache.runs()[-1].cached and np.random.rand() == expected


def test_a_kept_value_that_no_longer_unpickles_is_recomputed_and_let_go(monkeypatch):
    store = CountingStore()
    cache = Cache(store=store)
    table = nbcache.step(cache=cache, name="table")(_table)
    table(10)
    table(10)  # (kept)
    [name] = store._blobs
    real = smallvalues.value_of_parts
    monkeypatch.setattr(smallvalues, "value_of_parts", lambda *a: (_ for _ in ()).throw(
        Damaged("it cannot be unpickled (AttributeError: no class)")))
    with pytest.warns(nbcache.CacheWarning, match="damaged|cannot be unpickled"):
        assert np.array_equal(table(10)["weights"], np.arange(10.0))
    assert cache.small.value(store, name, None) is smallvalues.NOT_KEPT
    monkeypatch.setattr(smallvalues, "value_of_parts", real)
    assert np.array_equal(table(10)["weights"], np.arange(10.0))


def test_a_value_that_fails_to_unpickle_when_first_read_is_not_kept(monkeypatch):
    from nbcache import frameread

    store = CountingStore()
    cache = Cache(store=store)
    table = nbcache.step(cache=cache, name="table")(_table)
    table(10)
    [name] = store._blobs
    real, calls = frameread._unpickle, []

    def fails_once(*args):
        if not calls:
            calls.append(1)
            raise Damaged("it cannot be unpickled (AttributeError: no class)")
        return real(*args)

    monkeypatch.setattr(frameread, "_unpickle", fails_once)
    with pytest.warns(nbcache.CacheWarning):
        table(10)  # (read, refused, recomputed: nothing kept from that read)
    assert calls and cache.small.value(store, name, None) is smallvalues.NOT_KEPT
