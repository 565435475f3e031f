"""The Store contract, run over every store: what the cached call relies on from whichever store it has."""

from __future__ import annotations

import io
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from nbcache import MemoryStore, Store
from nbcache.diskstore import DiskStore
from nbcache.entry import Entry, Latest
from nbcache.frame import Frame, load_frame
from nbcache.records import Change, ChangeKind, Outcome, StepRun
from nbcache.keys import load_key

KEY = load_key()  # (the suite's own key: conftest.py)


@pytest.fixture(params=["disk", "memory"])
def store(request, tmp_path):
    s = DiskStore(tmp_path / "cache") if request.param == "disk" else MemoryStore()
    yield s
    s.close()


def _entry(step: str = "s", blobs: tuple[str, ...] = ("a-1",), created_at: float | None = None) -> Entry:
    return Entry(step=step, kind="function", outputs=tuple(b.split("-")[0] for b in blobs), blobs=blobs,
                 sizes={b.split("-")[0]: 10 for b in blobs}, created_at=time.time() if created_at is None
                 else created_at, duration_s=1.5, is_tuple=len(blobs) > 1)


def _put(store: Store, key: str, entry: Entry, value: object = 1) -> None:
    for address in entry.blobs:
        store.put_blob(address, Frame(value, key=KEY))
    store.put_entry(key, entry)


def _run(step: str = "s", **fields: object) -> StepRun:
    base = dict(step=step, cached=False, duration_s=1.0, saved_s=0.0, key="k", code="c", inputs={"a": "h"},
                outputs=("o",), reason="first run", started_at=datetime(2026, 1, 2, tzinfo=timezone.utc))
    return StepRun(**{**base, **fields})


def test_every_store_keeps_the_protocol(store):
    assert isinstance(store, Store)


def test_entries_round_trip(store):
    entry = _entry(blobs=("a-1", "b-2"))
    _put(store, "k", entry)
    assert store.get_entry("k") == entry
    assert store.get_entry("other") is None
    assert list(store.entries()) == [("k", entry)]


@pytest.mark.parametrize("value", [None, [1, "x", {2.5}], np.arange(300_000.0)], ids=["none", "list", "big"])
def test_blobs_round_trip_by_content_address(store, value):
    store.put_blob("addr", Frame(value, key=KEY))
    assert store.has_blob("addr") and not store.has_blob("other")
    loaded = load_frame(store.open_blob("addr"), key=KEY)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(loaded, value)
        assert loaded.flags.writeable
    else:
        assert loaded == value
    assert store.open_blob("other") is None


@pytest.mark.parametrize("value", ["small", np.arange(300_000.0)], ids=["small", "big"])
def test_a_blob_copied_from_another_store_as_a_file_reads_the_same(store, tmp_path, value):
    """What the team cache does: another store's blob, as ``open_blob`` gave it, streamed in."""
    other = DiskStore(tmp_path / "other")
    other.put_blob("addr", Frame(value, key=KEY))
    source = other.open_blob("addr")
    store.put_blob_file("addr", source if hasattr(source, "read") else io.BytesIO(source))
    data = source.seek(0) or source.read() if hasattr(source, "read") else source
    store.put_blob_file("as bytes", memoryview(data))  # (as the team cache gives a value its entry carried)
    other.close()
    for address in ("addr", "as bytes"):
        loaded = load_frame(store.open_blob(address), key=KEY)
        assert np.array_equal(loaded, value) if isinstance(value, np.ndarray) else loaded == value


def test_a_blob_is_immutable_once_stored(store):
    store.put_blob("addr", Frame("first", key=KEY))
    store.put_blob("addr", Frame("second", key=KEY))
    assert load_frame(store.open_blob("addr"), key=KEY) == "first"


def test_the_latest_ingredients_round_trip(store):
    latest = Latest(key="k", code="c", deps={"f()": "d"}, inputs={"x": "h"}, version="2", kind="cell",
                    name="n", uncached="it runs a shell command")
    assert store.get_latest("step") is None
    store.put_latest("step", latest)
    assert store.get_latest("step") == latest
    store.put_latest("step", Latest(key="k2", code="c"))
    assert store.get_latest("step").key == "k2"


def test_the_history_keeps_every_run_in_order(store):
    runs = [_run(), _run("t", cached=True, reason="cache hit", saved_s=1.0),
            _run(state=Outcome.CHANGED, changes=(Change(ChangeKind.INPUT, "a"),), reason="argument a changed")]
    for run in runs:
        store.append_run(run)
    assert store.read_runs() == runs
    assert store.read_runs("t") == [runs[1]]
    assert store.read_runs("nobody") == []


def test_the_last_run_of_each_step_in_the_order_the_steps_first_ran(store):
    assert store.last_runs() == []
    runs = [_run("s"), _run("t", kind="cell"), _run("s", cached=True, reason="cache hit"), _run("u")]
    for run in runs:
        store.append_run(run)
    assert store.last_runs() == [runs[2], runs[1], runs[3]]


def test_delete_drops_an_entry_and_the_blobs_named(store):
    _put(store, "k", _entry(blobs=("a-1",)))
    store.delete("k", ["a-1"])
    assert store.get_entry("k") is None and store.open_blob("a-1") is None
    store.delete("absent", ["absent"])  # forgetting what is gone is not an error


def test_clear_removes_entries_and_unreferenced_blobs_but_keeps_history(store):
    _put(store, "k1", _entry("s", ("a-1",)))
    _put(store, "k2", _entry("t", ("b-2",)))
    _put(store, "k3", _entry("t", ("a-1",)))  # shares its blob with k1
    store.put_latest("s", Latest(key="k1", code="c"))
    store.append_run(_run())
    assert store.clear("s") == 1
    assert store.get_entry("k1") is None and store.get_entry("k3") is not None
    assert store.has_blob("a-1")  # still referenced by k3
    assert store.clear() == 2
    assert list(store.entries()) == [] and not store.has_blob("a-1") and not store.has_blob("b-2")
    assert store.read_runs() == [_run()] and store.get_latest("s") is not None


def test_clear_by_age(store):
    _put(store, "old", _entry("s", ("a-1",), created_at=time.time() - 3 * 86400))
    _put(store, "new", _entry("s", ("b-2",)))
    assert store.clear(older_than_s=86400) == 1
    assert store.get_entry("old") is None and not store.has_blob("a-1")
    assert store.get_entry("new") is not None and store.has_blob("b-2")


def test_entry_sizes_are_what_entries_say(store):
    """``nbcache ls`` counts entries and their bytes through ``entry_sizes``: the same as whole entries say,
    a damaged one left out."""
    for i, kind in enumerate(["function", "cell", "function"]):
        store.put_entry(f"k{i}", Entry(step=f"s{i % 2}", kind=kind, outputs=("a",), blobs=("a-1",),
                                       sizes={"a": 10 * (i + 1)}, created_at=float(i), duration_s=0.5))
    store.put_entry("bad", Entry(step="s0", kind="cell", outputs=("a",), blobs=("a-1",), sizes={"a": 1},
                                 created_at=0.0, duration_s=0.5))
    if hasattr(store, "_cache"):  # (damaged on disk: not an entry's text)
        store._cache.set("entry:bad", '{"step": "s0", "kind": "cell", "sizes": {"a": -1}, "outputs": [], "blobs": []}')
    else:
        store._entries["bad"] = (store._entries["bad"][0], "not json")
    expected = sorted((e.step, e.kind, sum(e.sizes.values())) for _, e in store.entries())
    assert sorted(store.entry_sizes()) == expected == [("s0", "function", 10), ("s0", "function", 30),
                                                        ("s1", "cell", 20)]


def test_stats_count_entries_and_bytes(store):
    _put(store, "k", _entry(), np.zeros(100_000))
    stats = store.stats()
    assert stats.entries == 1 and stats.unreadable_entries == 0 and stats.size_bytes >= 800_000
    assert stats.as_dict()["entries"] == 1


def _stored_in_order(store: Store, *specs: tuple[str, str, tuple[str, ...]], value: object = 1) -> None:
    """Store entries (key, step, blobs) one after the other, each used later than the one before."""
    for key, step, blobs in specs:
        _put(store, key, _entry(step, blobs), value)
        time.sleep(0.01)


def test_clear_keep_last_keeps_each_steps_most_recently_used(store):
    _stored_in_order(store, ("s1", "s", ("a-1",)), ("s2", "s", ("b-2",)), ("s3", "s", ("c-3",)),
                     ("t1", "t", ("a-1",)), ("t2", "t", ("d-4",)))
    store.touch("s1")  # served: now the most recently used of step s
    assert store.clear(keep_last=2) == 1  # s2 (step t has only two)
    assert {key for key, _ in store.entries()} == {"s1", "s3", "t1", "t2"}
    assert not store.has_blob("b-2") and store.has_blob("a-1")  # a-1 is shared with t1, kept
    assert store.clear("t", keep_last=0) == 2
    assert {key for key, _ in store.entries()} == {"s1", "s3"} and store.has_blob("a-1")


def test_clear_keep_last_with_an_age_removes_only_old_results_past_the_last(store):
    for i, age in enumerate([5, 4, 3]):  # days
        _put(store, f"k{i}", _entry("s", (f"a{i}-{i}",), created_at=time.time() - age * 86400))
        time.sleep(0.01)
    _put(store, "new", _entry("s", ("n-9",)))
    assert store.clear(older_than_s=86400, keep_last=2) == 2
    assert {key for key, _ in store.entries()} == {"k2", "new"}
    with pytest.raises(ValueError, match="keep_last"):
        store.clear(keep_last=-1)


def test_evict_removes_least_recently_used_until_under_the_limit(store):
    big = np.zeros(30_000)  # 240 kB each, so the blobs dominate the total
    _stored_in_order(store, ("k1", "s", ("a-1",)), ("k2", "s", ("b-2",)), value=big)
    _put(store, "k3", _entry("t", ("c-3",)), big[:10])  # tiny blob
    _put(store, "k4", _entry("t", ("c-3", "d-4")), np.ones(30_000))  # shares c-3 with k3
    store.touch("k1")  # k2 is now the least recently used
    assert store.evict(10**12) == 0
    assert store.evict(600_000, keep=["k4"]) == 1
    assert {key for key, _ in store.entries()} == {"k1", "k3", "k4"} and not store.has_blob("b-2")
    # k4 is kept, and k1, k3 go: c-3 stays, k4 uses it
    assert store.evict(0, keep=["k4"]) == 2
    assert [key for key, _ in store.entries()] == ["k4"]
    assert store.has_blob("c-3") and store.has_blob("d-4") and not store.has_blob("a-1")
