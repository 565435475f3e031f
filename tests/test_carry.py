"""A big array served by a hit carries its content address to the next step, which then does not hash it
again, but only while it is provably the same content: the same object, layout and unwritten pages. Every
case is checked against the same calls without the cache: the carried address never changes a result."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

import nbcache
from nbcache import CacheWarning, cachedcall, cellvars
from nbcache.cache import default_cache
from nbcache.frameread import MAP_MIN

from .conftest import run_cell

N = MAP_MIN // 8 * 2  # float64s: a value that is mapped


def _importer(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(N)


def _normalizer(x: np.ndarray, calls: list) -> np.ndarray:
    calls.append("normalizer")
    return (x - x.mean()) / x.std()


def _steps(cache: nbcache.Cache, calls: list):
    importer = nbcache.step(_importer, name="importer", cache=cache)
    normalizer = nbcache.step(_normalizer, name="normalizer", ignore=["calls"], cache=cache)
    return importer, (lambda x: normalizer(x, calls))


@pytest.fixture
def hashed(monkeypatch):
    """The arrays ``hash_value`` read whole while computing keys (by id)."""
    seen: list[int] = []
    original = cachedcall.hash_value

    def counting(value, **kwargs):
        if isinstance(value, np.ndarray):
            seen.append(id(value))
        return original(value, **kwargs)

    monkeypatch.setattr(cachedcall, "hash_value", counting)
    monkeypatch.setattr(cellvars, "hash_value", counting)  # (a cell's check of inputs changed in place)
    return seen


def _stored(directory: Path) -> None:
    calls: list = []
    importer, normalizer = _steps(nbcache.Cache(directory), calls)
    normalizer(importer(1))


def test_a_restored_array_passed_on_is_not_hashed_again(tmp_path, hashed):
    _stored(tmp_path / "c")
    calls: list = []
    cache = nbcache.Cache(tmp_path / "c")  # a new process's view
    importer, normalizer = _steps(cache, calls)
    x = importer(1)
    hashed.clear()
    result = normalizer(x)
    assert calls == [] and id(x) not in hashed  # a hit, keyed on the carried address
    assert cache.runs()[-1].cached and cache.runs()[-1].inputs["x"] == cache.runs()[-2].outputs[0]
    np.testing.assert_array_equal(result, _normalizer(_importer(1), []))
    assert cache.verifier.drain(timeout=60)


@pytest.mark.parametrize("change", ["write", "reshape", "view", "dtype"])
def test_a_changed_array_is_hashed_and_recomputed(tmp_path, hashed, change):
    _stored(tmp_path / "c")
    calls: list = []
    importer, normalizer = _steps(nbcache.Cache(tmp_path / "c"), calls)
    x = importer(1)
    if change == "write":
        x[N // 2] = 7.0  # one page copied on write
    elif change == "reshape":
        x.shape = (2, N // 2)
    elif change == "view":
        x = x[1:]
    else:
        x.dtype = np.int64  # the same bytes, read as other numbers
    hashed.clear()
    result = normalizer(x)
    assert id(x) in hashed and calls == ["normalizer"]
    expected = _importer(1)
    if change == "write":
        expected[N // 2] = 7.0
    elif change == "reshape":
        expected.shape = (2, N // 2)
    elif change == "view":
        expected = expected[1:]
    else:
        expected.dtype = np.int64
    np.testing.assert_array_equal(result, _normalizer(expected, []))


def test_without_pagemap_nothing_is_carried(tmp_path, hashed):
    _stored(tmp_path / "c")
    calls: list = []
    cache = nbcache.Cache(tmp_path / "c")
    cache.carry.enabled = False  # (a system with no /proc/self/pagemap)
    importer, normalizer = _steps(cache, calls)
    x = importer(1)
    hashed.clear()
    normalizer(x)
    assert id(x) in hashed and calls == []  # hashed, and still a hit


def _value_file(directory: Path, size: int) -> Path:
    (path,) = [p for p in (directory / "store").rglob("*.val") if p.stat().st_size >= size]
    return path


def test_carrying_is_on_only_where_pagemap_tells_a_written_page(tmp_path, hashed, monkeypatch):
    """A sandbox may give /proc/self/pagemap with every entry zero: every page would look unwritten, and an
    array written since it was restored would pass on its old address. A page of a private mapping of a
    file must show as the file's, read, and as no file's once written, or nothing is carried."""
    from nbcache import carry

    _stored(tmp_path / "c")
    calls: list = []
    cache = nbcache.Cache(tmp_path / "c")
    importer, normalizer = _steps(cache, calls)
    normalizer(importer(1))
    assert cache.carry.enabled is True  # (this Linux tells: the tests above carry for real)
    monkeypatch.setattr(carry, "_top_byte", lambda fd, address: 0xA0)  # (a file's page, even once written)
    assert carry.pagemap_tells_writes() is False
    monkeypatch.setattr(carry, "_top_byte", lambda fd, address: 0)
    cache = nbcache.Cache(tmp_path / "c")
    importer, normalizer = _steps(cache, calls)
    x = importer(1)
    hashed.clear()
    normalizer(x)
    assert cache.carry.enabled is False and id(x) in hashed  # (hashed: nothing carried)


@pytest.mark.parametrize("found", ["while the next step runs", "before the next step"])
def test_results_computed_from_a_value_found_damaged_are_not_stored(tmp_path, found):
    """Keyed on the carried address, that of the intact value, a result computed from damaged buffers would be
    served for the intact value for good: its inputs' files are checked before it is stored, even while the
    background check has not run (a short script ends before it does)."""
    directory = tmp_path / "c"
    calls: list = []
    importer, _ = _steps(nbcache.Cache(directory), calls)
    importer(1)
    path = _value_file(directory, N * 8)
    with open(path, "r+b") as f:  # one number changed on disk, under an intact signature
        f.seek(-16, os.SEEK_END)
        f.write(np.float64(123.0).tobytes())
    cache = nbcache.Cache(directory)
    gate = threading.Event()
    cache.verifier.worker.submit(gate.wait)  # the background check waits until the test says
    importer, normalizer = _steps(cache, calls)
    with pytest.warns(CacheWarning) as record:
        x = importer(1)  # served, damaged: nobody knows yet
        if found == "before the next step":
            gate.set()
            assert cache.verifier.drain(timeout=60)
        normalizer(x)
        told = " ".join(str(w.message) for w in record)
        assert calls == ["normalizer"] and "found damaged on disk after it was served" in told
        assert ("may be wrong and was not stored" in told) == (found == "while the next step runs")
        later_calls: list = []
        _, later = _steps(nbcache.Cache(directory), later_calls)
        later(_importer(1))  # the intact value, hashed: its key is the carried one; nothing is stored under it
        assert later_calls == ["normalizer"]
        gate.set()
        assert cache.verifier.drain(timeout=60)
    fresh_calls: list = []
    importer, normalizer = _steps(nbcache.Cache(directory), fresh_calls)
    result = normalizer(importer(1))  # recomputed from the recomputed value: nothing wrong is served
    np.testing.assert_array_equal(result, _normalizer(_importer(1), []))


def test_a_result_computed_while_its_input_is_being_checked_waits_for_the_check(tmp_path, monkeypatch):
    """The background check had started (a slow disk) when the next step stored: it was taken for intact."""
    import time

    from nbcache import frameread

    directory = tmp_path / "c"
    calls: list = []
    importer, _ = _steps(nbcache.Cache(directory), calls)
    importer(1)
    with open(_value_file(directory, N * 8), "r+b") as f:
        f.seek(-16, os.SEEK_END)
        f.write(np.float64(123.0).tobytes())
    started = threading.Event()
    check = frameread.Unchecked.check

    def slow(self):
        started.set()
        time.sleep(1.0)
        return check(self)

    monkeypatch.setattr(frameread.Unchecked, "check", slow)
    cache = nbcache.Cache(directory)
    importer, normalizer = _steps(cache, calls)
    with pytest.warns(CacheWarning) as record:
        x = importer(1)
        assert started.wait(30)  # (the check is under way on the background thread)
        normalizer(x)
    assert "may be wrong and was not stored" in " ".join(str(w.message) for w in record)
    later_calls: list = []
    _, later = _steps(nbcache.Cache(directory), later_calls)
    later(_importer(1))
    assert later_calls == ["normalizer"]


IMPORTER_CELL = f"""%%step importer
import numpy as np
images = np.random.default_rng(1).standard_normal({N})
"""
NORMALIZER_CELL = """%%step normalizer
open(LOG, "a").write("x")
X = (images - images.mean()) / images.std()
"""


def test_a_cell_variable_restored_from_the_cache_carries_its_address_to_the_next_cell(shell, cache_dir, tmp_path,
                                                                                       hashed):
    shell.reset()
    shell.user_ns["LOG"] = str(tmp_path / "ran.log")
    run_cell(shell, IMPORTER_CELL)
    run_cell(shell, NORMALIZER_CELL)
    expected = shell.user_ns["X"].copy()
    default_cache().carry = type(default_cache().carry)()  # what this process knew of restored values: gone
    del shell.user_ns["images"], shell.user_ns["X"]
    hashed.clear()
    run_cell(shell, IMPORTER_CELL)  # a hit: `images` comes back mapped, carrying its address
    images = shell.user_ns["images"]
    run_cell(shell, NORMALIZER_CELL)  # a hit keyed on the carried address: `images` is not read
    assert id(images) not in hashed and (tmp_path / "ran.log").read_text() == "x"
    assert [r.cached for r in nbcache.runs()[-2:]] == [True, True]
    np.testing.assert_array_equal(shell.user_ns["X"], expected)
    images[0] = 5.0  # changed in place: read again, and the normalizer runs on what it holds now
    run_cell(shell, NORMALIZER_CELL)
    assert id(images) in hashed and (tmp_path / "ran.log").read_text() == "xx"
    assert shell.user_ns["X"][0] == pytest.approx((5.0 - images.mean()) / images.std())
