"""Big values come back mapped from their files: a hit reads none of their pages, a write to the array stays
in the process (copy-on-write), the buffers are aligned; their digests are checked by the background pass
(or before the hit returns with NBCACHE_VERIFY=eager) and by ``nbcache verify``."""

from __future__ import annotations

import gc
import io
import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import nbcache
from nbcache import CacheWarning, frameread
from nbcache.cache import default_cache
from nbcache.cli import main as cli
from nbcache.frame import Damaged, Frame, load_frame, read_frame
from nbcache.frameformat import HEAD, ROW, buffer_offsets, tag
from nbcache.frameread import MAP_MIN
from nbcache.keys import load_key
from nbcache.verifier import Verifier

KEY = load_key()
BIG = MAP_MIN // 8 * 4  # float64s: four times what is mapped


def _written(tmp_path: Path, value, name: str = "v") -> Path:
    frame = Frame(value, key=KEY)
    frame.name = name
    path = tmp_path / "value"
    with open(path, "wb") as f:
        frame.write(f)
    return path


def _mapping_of(array: np.ndarray) -> object:
    """The object at the bottom of an array's chain of bases (an mmap for a mapped value)."""
    base = array
    while getattr(base, "base", None) is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_a_big_array_in_a_file_is_mapped_copy_on_write_and_aligned(tmp_path):
    original = np.arange(BIG, dtype=np.float64)
    path = _written(tmp_path, original)
    before = path.read_bytes()
    loaded, unchecked = read_frame(open(path, "rb"), key=KEY, name="v")
    assert isinstance(_mapping_of(loaded), mmap.mmap)
    assert loaded.flags.writeable and loaded.flags.aligned and loaded.ctypes.data % 64 == 0
    assert np.array_equal(loaded, original) and unchecked is not None and unchecked.check() is None
    loaded[:] = -1  # the process's copy of the pages changes, never the file
    assert path.read_bytes() == before
    assert np.array_equal(load_frame(open(path, "rb"), key=KEY, name="v"), original)


def test_small_values_and_bytes_are_read_into_memory(tmp_path):
    small = np.arange(16.0)
    loaded, unchecked = read_frame(open(_written(tmp_path, small), "rb"), key=KEY, name="v")
    assert unchecked is None and not isinstance(_mapping_of(loaded), mmap.mmap)
    data = Frame(np.arange(BIG, dtype=np.float64), key=KEY).to_bytes()
    loaded, unchecked = read_frame(io.BytesIO(data), key=KEY)
    assert unchecked is None and np.array_equal(loaded, np.arange(BIG, dtype=np.float64))


def test_a_flipped_buffer_byte_is_left_to_the_check_when_lazy_and_refused_when_not(tmp_path):
    path = _written(tmp_path, np.zeros(BIG))
    with open(path, "r+b") as f:
        f.seek(-12345, os.SEEK_END)
        f.write(b"\x01")
    loaded, unchecked = read_frame(open(path, "rb"), key=KEY, name="v")  # the signed head and pickle are fine
    assert "checksum" in unchecked.check()
    with pytest.raises(Damaged, match="checksum"):
        load_frame(open(path, "rb"), key=KEY, name="v")


def test_a_changed_pickle_is_refused_before_anything_is_mapped(tmp_path):
    path = _written(tmp_path, np.zeros(BIG))
    with open(path, "r+b") as f:
        f.seek(HEAD.size + ROW.size + 3)  # inside the pickle
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(Damaged, match="signature"):
        read_frame(open(path, "rb"), key=KEY, name="v")


def test_values_of_the_packed_format_still_read():
    """NBC2, the format before buffers were aligned: the same head, the buffers right after the pickle."""
    frame = Frame(np.arange(100.0), key=KEY)
    rows = b"".join(ROW.pack(b.nbytes, d) for b, d in zip(frame.buffers, frame.digests()))
    signature = tag(KEY, b"NBC2", "v", len(frame.pickled), len(frame.buffers), rows, [frame.pickled])
    data = (HEAD.pack(b"NBC2", signature, len(frame.pickled), len(frame.buffers)) + rows + frame.pickled
            + b"".join(bytes(b) for b in frame.buffers))
    assert buffer_offsets(b"NBC2", len(frame.pickled), [800])[1] == len(data)
    assert np.array_equal(load_frame(data, key=KEY, name="v"), np.arange(100.0))


def _value_file(directory: Path) -> Path:
    files = [p for p in (directory / "store").rglob("*") if p.is_file() and p.name != "cache.db"
             and not p.name.startswith("cache.db")]
    assert len(files) == 1, files
    return files[0]


def _flip_last_buffer_byte(directory: Path) -> None:
    with open(_value_file(directory), "r+b") as f:
        f.seek(-8, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _table(n: int, calls: list) -> pd.DataFrame:
    calls.append(n)
    return pd.DataFrame({"a": np.arange(n, dtype=np.float64), "b": np.ones(n)})


def _counting_step(calls: list, cache: nbcache.Cache | None = None):
    """The step ``table(n)``, counting its runs in ``calls`` (left out of its key)."""
    step = nbcache.step(_table, name="table", ignore=["calls"], cache=cache)
    return lambda n: step(n, calls)


def test_a_hit_of_a_big_dataframe_shares_the_file_pages_and_writes_stay_private(cache_dir):
    calls: list = []
    table = _counting_step(calls)
    first = table(BIG)
    hit = table(BIG)
    assert calls == [BIG] and nbcache.runs("table")[-1].cached
    assert hit.equals(first) and isinstance(_mapping_of(hit["a"].to_numpy()), mmap.mmap)
    hit.loc[0, "a"] = 99.0  # allowed, as on the uncached result; the cache does not change
    assert table(BIG).loc[0, "a"] == 0.0
    assert default_cache().verifier.drain(timeout=60)


def test_damage_found_after_a_hit_warns_and_removes_the_result(cache_dir):
    calls: list = []
    table = _counting_step(calls)
    table(BIG)
    default_cache().verifier.drain(timeout=60)
    _flip_last_buffer_byte(cache_dir)
    with pytest.warns(CacheWarning, match="found damaged on disk after it was served.*may be wrong"):
        fresh = nbcache.Cache(cache_dir)  # (a new process's view: this file was never checked by it)
        step = _counting_step(calls, fresh)
        step(BIG)
        assert fresh.verifier.drain(timeout=60)
    assert calls == [BIG]
    assert step(BIG)["b"].sum() == BIG and calls == [BIG, BIG]  # removed: computed again, right this time


def test_eager_verification_refuses_the_damaged_value_before_the_hit_returns(cache_dir, monkeypatch):
    calls: list = []
    table = _counting_step(calls)
    table(BIG)
    _flip_last_buffer_byte(cache_dir)
    monkeypatch.setenv("NBCACHE_VERIFY", "eager")
    with pytest.warns(CacheWarning, match="damaged.*recomputing"):
        result = _counting_step(calls, nbcache.Cache(cache_dir))(BIG)
    assert calls == [BIG, BIG] and result["b"].sum() == BIG


def test_nbcache_verify_reports_and_removes_what_is_not_intact(cache_dir, capsys):
    calls: list = []
    table = _counting_step(calls)
    table(BIG)
    table(3)  # a small value, stored in the index
    assert cli(["verify", "--dir", str(cache_dir)]) == 0
    assert "checked 2 cached results (2 values, read whole): all intact" in capsys.readouterr().out
    _flip_last_buffer_byte(cache_dir)
    assert cli(["verify", "--dir", str(cache_dir)]) == 5
    out = capsys.readouterr().out
    assert "1 not intact" in out and "table" in out and "checksum does not match" in out and "--remove" in out
    assert cli(["verify", "--dir", str(cache_dir), "--json", "--remove"]) == 5
    found = json.loads(capsys.readouterr().out)
    assert found["removed"] and [p["step"] for p in found["problems"]] == ["table"]
    assert cli(["verify", "--dir", str(cache_dir)]) == 0
    assert "checked 1 cached result (1 value" in capsys.readouterr().out
    _counting_step(calls, nbcache.Cache(cache_dir))(BIG)
    assert calls == [BIG, 3, BIG]


def _open_files(under: Path) -> list[str]:
    """This process's descriptors of the cache's own files, but its SQLite index (whose connections diskcache
    keeps per thread, for other tests' caches too: their count is not this test's business)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # (the descriptor listdir itself used)
            pass
    return sorted(n for n in names if n.startswith(str(under)) and "cache.db" not in Path(n).name)


def test_a_mapped_hit_leaves_no_descriptor_open_once_checked(cache_dir):
    calls: list = []
    table = _counting_step(calls)
    table(BIG)
    fresh = nbcache.Cache(cache_dir)
    step = _counting_step(calls, fresh)
    step(BIG)
    fresh.verifier.drain(timeout=60)
    gc.collect()
    before = _open_files(cache_dir)
    for _ in range(20):
        fresh.verifier = Verifier()  # (one that has not seen the file: it checks it again)
        step(BIG)
        fresh.verifier.drain(timeout=60)
    gc.collect()  # (a mapping keeps a descriptor of its file while it lives: the results are gone)
    assert _open_files(cache_dir) == before and calls == [BIG]


def test_past_a_quarter_of_the_open_files_limit_values_are_read_not_mapped(cache_dir, monkeypatch):
    calls: list = []
    step = _counting_step(calls)
    step(BIG)
    monkeypatch.setattr(frameread._MAPPINGS, "most", frameread._MAPPINGS.alive)
    kept = step(BIG)
    assert nbcache.runs("table")[-1].cached and not isinstance(_mapping_of(kept["a"].to_numpy()), mmap.mmap)


def test_the_layout_pads_each_buffer_to_the_alignment():
    offsets, end = buffer_offsets(b"NBC3", 5, [3, 70, 0, 1])
    start = HEAD.size + ROW.size * 4 + 5
    assert all(o % 64 == 0 for o in offsets) and offsets[0] >= start and end == offsets[-1] + 1
    assert struct.calcsize("<Q16s") == ROW.size
