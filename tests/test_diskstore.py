"""DiskStore, the store of a cache directory: value files, checksums, damaged and missing values, the history
file, and what other programs may leave in the index. (What every store does: test_store_contract.py.)"""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nbcache
from nbcache import CacheWarning, step
from nbcache.diskstore import DiskStore
from nbcache.entry import Entry
from nbcache.frame import Damaged, Frame, load_frame
from nbcache.records import StepRun
from nbcache.keys import load_key

KEY = load_key()  # (the suite's own key: conftest.py)


@pytest.fixture
def store(tmp_path):
    s = DiskStore(tmp_path / "store")
    yield s
    s.close()


VALUES = [
    None,
    0,
    "text",
    {"a": [1, 2.5, None], "b": (b"x", {1, 2})},
    np.arange(10),
    np.random.default_rng(0).random((512, 300)),  # over the inline limit: stored as a file
    np.asfortranarray(np.random.default_rng(1).random((300, 200))),
    pd.DataFrame({"a": np.arange(50_000), "b": ["s"] * 50_000}),
    lambda x: x + 1,  # cloudpickle serializes functions defined on the fly
]


def _put(store: DiskStore, address: str, frame: Frame) -> None:
    store.put_blob(address, frame)
    store.put_entry("k", Entry(step="s", kind="function", outputs=(address,), blobs=(address,),
                               sizes={address: frame.nbytes}, created_at=0.0, duration_s=1.0))


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_frames_round_trip_through_the_store(store, value):
    frame = Frame(value, key=KEY)
    _put(store, "addr", frame)
    loaded = load_frame(store.open_blob("addr"), key=KEY)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(loaded, value)
        assert loaded.dtype == value.dtype and loaded.flags.writeable
    elif isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(loaded, value)
    elif callable(value):
        assert loaded(1) == 2
    else:
        assert loaded == value
    assert load_frame(frame.to_bytes(), key=KEY) is not None or value is None


def test_big_buffers_are_files_not_sqlite_rows(store):
    frame = Frame(np.zeros(1_000_000), key=KEY)
    _put(store, "big", frame)
    files = [p for p in (store.directory / "store").rglob("*.val")]
    assert len(files) == 1 and files[0].stat().st_size == frame.nbytes


def test_missing_blob_reads_as_none(store):
    assert store.open_blob("nothing") is None
    assert store.get_entry("nothing") is None


def _blob_file(directory: Path) -> Path:
    (path,) = (directory / "store").rglob("*.val")
    return path


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "append"])
def test_damaged_files_are_detected(store, damage):
    _put(store, "a", Frame(np.arange(100_000), key=KEY))
    path = _blob_file(store.directory)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "empty":
        data = bytearray()
    else:
        data += b"junk"
    path.write_bytes(bytes(data))
    with pytest.raises(Damaged):
        load_frame(store.open_blob("a"), key=KEY)


def test_damaged_inline_value_is_detected(store):
    frame = Frame([1, 2, 3], key=KEY)
    raw = bytearray(frame.to_bytes())
    raw[-3] ^= 0x01
    with pytest.raises(Damaged, match="signature does not match"):
        load_frame(bytes(raw), key=KEY)


def _big_step():
    @step
    def big(n):
        return np.arange(n, dtype=np.float64) * 2

    return big


@pytest.mark.parametrize("n", [20_000, 200_000])  # read into memory; mapped (checked before it returns)
def test_a_damaged_entry_is_recomputed_with_a_warning(cache_dir, monkeypatch, n):
    monkeypatch.setenv("NBCACHE_VERIFY", "eager")  # (the background check of a mapped value: test_mapped.py)
    big = _big_step()
    expected = big(n)
    path = _blob_file(cache_dir)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # one value in the array, silently wrong unless checked
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match=r"step 'big' is damaged \(a buffer's checksum does not match\)") as record:
        again = big(n)
    assert record[0].filename == __file__
    np.testing.assert_array_equal(again, expected)
    assert nbcache.runs()[-1].reason == "cached result was damaged"
    np.testing.assert_array_equal(big(n), expected)  # repaired: a clean hit, no warning
    assert nbcache.runs()[-1].cached


def test_a_deleted_file_is_recomputed_with_a_warning(cache_dir):
    big = _big_step()
    big(200_000)
    _blob_file(cache_dir).unlink()
    with pytest.warns(CacheWarning, match="missing on disk"):
        np.testing.assert_array_equal(big(200_000), np.arange(200_000) * 2.0)
    assert nbcache.runs()[-1].reason == "cached result was missing"
    big(200_000)
    assert nbcache.runs()[-1].cached


def test_a_value_that_no_longer_unpickles_is_recomputed(cache_dir, tmp_path, monkeypatch):
    module_dir = tmp_path / "mods"
    module_dir.mkdir()
    source = "class Thing:\n    def __init__(self, v):\n        self.v = v\n"
    (module_dir / "vanishing_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(module_dir))

    name = "vanishing_mod"  # (named by a variable: its code is not followed, so the key stays as it was)

    @step
    def make(v):
        import importlib

        return importlib.import_module(name).Thing(v)

    make(1)
    # the class changes in a way its stored instances can no longer be loaded into (in memory: an edit to the
    # module's file would run the step again, as a file it read)
    def refuse(self, state):
        raise RuntimeError("incompatible")

    monkeypatch.setattr(sys.modules["vanishing_mod"].Thing, "__setstate__", refuse, raising=False)
    with pytest.warns(CacheWarning, match=r"cannot be unpickled \(RuntimeError: incompatible\)"):
        assert make(1).v == 1
    assert nbcache.runs()[-1].reason == "cached result was damaged"


def test_run_history_survives_a_torn_line(store):
    run = StepRun(step="s", cached=False, duration_s=1.0, saved_s=0.0, key="k", code="c", inputs={"a": "h"},
                  outputs=("o",), reason="first run", started_at=datetime.now(timezone.utc))
    store.append_run(run)
    with open(store.directory / "runs.jsonl", "ab") as f:
        f.write(b'\n{"step": "s", "cach')  # a process killed mid-record
    store.append_run(run)
    assert store.read_runs() == [run, run]


def test_run_records_round_trip_through_json(store):
    run = StepRun(step="s", cached=True, duration_s=0.001, saved_s=2.5, key="k", code="c",
                  inputs={"a": "h"}, outputs=("o1", "o2"), reason="cache hit",
                  started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), deps={"f()": "d"})
    store.append_run(run)
    (back,) = store.read_runs("s")
    assert back == run
    assert store.read_runs("other") == []


def test_stats(store):
    _put(store, "a", Frame(np.zeros(100_000), key=KEY))
    stats = store.stats()
    assert stats.entries == 1 and stats.size_bytes >= 800_000
    assert stats.directory == str(store.directory)


def test_history_file_is_plain_json_lines(cache_dir):
    @step
    def f():
        return 1

    f()
    lines = [line for line in (cache_dir / "runs.jsonl").read_text().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("{") and '"step":"f"' in lines[0]
    assert os.path.getsize(cache_dir / "runs.jsonl") < 2000


class _Planted:
    """What an attacker or an unrelated program might leave in the index: a pickle that runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_pickle_planted_in_the_index_is_never_loaded(cache_dir, tmp_path, capsys):
    import diskcache

    from nbcache.cli import main

    @step
    def small(n):
        return list(range(n))

    small(3)
    marker = tmp_path / "ran"
    with diskcache.Cache(str(cache_dir / "store")) as raw:  # diskcache's own Disk pickles what it stores
        for name in list(raw.iterkeys()):
            raw.set(name, _Planted(marker))
        raw.set(_Planted(marker), "a pickled key")
    for command in (["ls"], ["info"], ["clear", "--older-than", "1d"], ["show", "small"], ["why", "small"]):
        assert main([*command, "--dir", str(cache_dir)]) == 0
    with pytest.warns(CacheWarning, match="damaged"):
        assert small(3) == [0, 1, 2]  # the entry reads as damaged: computed again, not loaded
    assert not marker.exists()
    assert nbcache.runs()[-1].cached is False
    capsys.readouterr()


def test_a_directory_of_an_older_cache_format_is_told_apart(cache_dir, capsys):
    import diskcache

    from nbcache.cli import main

    @step
    def old(n):
        return n

    old(1)
    with diskcache.Cache(str(cache_dir / "store")) as raw:  # what an nbcache that pickled its index left
        raw.set("entry:0123", {"step": "old", "blobs": []}, tag="old")
        raw.set("last:old", {"key": "0123", "code": "c", "deps": {}, "inputs": {}, "version": None})
    old(2)
    assert nbcache.runs()[-1].reason == "first run with this nbcache's cache format (results of the older one are not read)"
    assert main(["info", "--dir", str(cache_dir)]) == 0
    assert "unreadable entries: 1 (written by an nbcache with another cache format" in capsys.readouterr().out
    nbcache.clear()
    assert main(["info", "--dir", str(cache_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable_entries"] == 0


@pytest.mark.parametrize("text", [
    "not json", "[1, 2]", '{"step": ["s"]}',
    '{"step": "s", "tuple": false, "outputs": ["a", "b"], "blobs": ["a-1", "b-2"], "created_at": 1, "duration_s": 1}',
    '{"step": "s", "tuple": false, "outputs": ["a"], "blobs": [], "sizes": {}, "created_at": 1, "duration_s": 1}',
    '{"step": "s", "tuple": false, "outputs": ["a"], "blobs": ["a-1"], "sizes": {}, "created_at": "x", "duration_s": 1}',
], ids=["text", "list", "step-a-list", "tuple-mismatch", "no-blobs", "time-a-string"])
def test_a_malformed_entry_is_damage_repaired_with_one_warning(cache_dir, text):
    """One damaged field never raises KeyError out of the user's step: the entry is forgotten, the step
    recomputed with one warning, and the next call is a clean hit."""
    import diskcache

    @step
    def double(n):
        return 2 * n

    double(4)
    store = DiskStore(cache_dir)
    ((key, _),) = store.entries()
    with diskcache.Cache(str(cache_dir / "store")) as raw:
        raw.set("entry:" + key, text, tag="double")
    with pytest.raises(Damaged):
        store.get_entry(key)
    assert list(store.entries()) == [] and store.stats().unreadable_entries == 1
    store.close()
    with pytest.warns(CacheWarning, match=r"step 'double' is damaged") as record:
        assert double(4) == 8
    assert len(record) == 1
    assert nbcache.runs()[-1].reason == "cached result was damaged"
    assert double(4) == 8 and nbcache.runs()[-1].cached


def test_a_row_turned_into_text_that_is_no_utf8_is_damage_repaired_with_one_warning(cache_dir):
    """SQLite cannot give such a row back (it fails to decode it): the step ran uncached for good, its warning
    quoting raw bytes, since the row was never replaced."""
    import sqlite3

    @step
    def ramp(n):
        return np.arange(n, dtype=float)

    ramp(100)
    with sqlite3.connect(cache_dir / "store" / "cache.db") as con:
        con.execute("UPDATE Cache SET value = CAST(value AS TEXT) WHERE key LIKE 'blob:%'")
    with pytest.warns(CacheWarning, match=r"step 'ramp' is damaged \(its row in the index holds text that is not"):
        np.testing.assert_array_equal(ramp(100), np.arange(100.0))
    assert nbcache.runs()[-1].reason == "cached result was damaged"
    np.testing.assert_array_equal(ramp(100), np.arange(100.0))
    assert nbcache.runs()[-1].cached


def test_entries_are_listed_in_the_order_stored_across_the_reads_in_batches(store):
    """``entries()`` reads the index a batch of rows at a time (``nbcache ls`` on 50,000 entries): every entry
    comes once, in the order stored, whatever the batch, with values and history rows mixed in between."""
    from nbcache.diskfiles import entry_texts

    names = [f"k{i:02d}" for i in (7, 3, 9, 1, 0, 5, 8, 2, 6, 4)]

    def entry(step: str, address: str) -> Entry:
        return Entry(step=step, kind="function", outputs=(address,), blobs=(address,), sizes={address: 1},
                     created_at=1.0, duration_s=0.5)

    for n, name in enumerate(names):
        store.put_entry(name, entry(f"s{n % 3}", f"b{n}"))
        store.put_blob(f"b{n}", Frame(n, key=KEY))  # (rows that are no entries, in between)
    store.put_entry("k03", entry("again", "b1"))  # (replaced: still listed once, where it was)
    assert [key for key, _ in store.entries()] == names
    assert dict(store.entries())["k03"].step == "again"
    for batch in (1, 2, 3, 10, 11):
        assert [name[6:] for name, _ in entry_texts(store._cache, batch=batch)] == names


def test_a_value_copied_in_and_found_damaged_as_it_is_written_is_never_in_the_store(store):
    """How a team-cache copy is written: checked as its bytes pass, it is published only whole and right; one
    found wrong leaves no value and no temporary file behind."""
    from nbcache.framecheck import Checking, StreamCheck

    frame = Frame(np.arange(1_000_000.0), key=KEY)
    frame.name = "a"
    data = bytearray(frame.to_bytes())
    files = lambda: sorted(p.name for p in store.directory.rglob("*") if p.is_file())
    before = files()
    data[len(data) // 2] ^= 1
    with pytest.raises(Damaged, match="checksum"):
        store.put_blob_file("a", Checking(io.BytesIO(bytes(data)), StreamCheck(KEY, "a", len(data))))
    assert not store.has_blob("a") and files() == before
    data[len(data) // 2] ^= 1
    store.put_blob_file("a", Checking(io.BytesIO(bytes(data)), StreamCheck(KEY, "a", len(data))))
    assert np.array_equal(load_frame(store.open_blob("a"), key=KEY, name="a"), np.arange(1_000_000.0))
