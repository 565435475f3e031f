"""Size-capped eviction: the limit (NBCACHE_SIZE_LIMIT, Cache.size_limit), least recently used entries
evicted after a store, hits noted without a write on their path, and shared directories."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import nbcache
from nbcache import Cache, MemoryStore, diskevict, step
from nbcache.diskstore import DiskStore
from nbcache.eviction import Candidate, beyond_last, choose_victims, parse_size

MB = 1_000_000


@pytest.mark.parametrize("text, expected", [
    ("20GB", 20 * 10**9), ("20G", 20 * 10**9), ("500MB", 500 * MB), ("500 mb", 500 * MB),
    ("1.5GiB", int(1.5 * 2**30)), ("64KiB", 65536), ("4096", 4096), (" 7 ", 7), ("10b", 10), ("2TB", 2 * 10**12),
    (1024, 1024), (0, 0),
])
def test_sizes_parse_as_people_write_them(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "20 GBs", "-5GB", "twenty", "5iB", "1e9", True, None, float("inf")])
def test_a_malformed_size_names_its_source_and_gives_an_example(text):
    with pytest.raises(ValueError, match=r"NBCACHE_SIZE_LIMIT is a size such as 20GB.*NBCACHE_SIZE_LIMIT=20GB"):
        parse_size(text)
    with pytest.raises(ValueError, match=r"NBCache.size_limit is a size .*NBCache.size_limit = '20GB'"):
        parse_size(text, "NBCache.size_limit")


def test_victims_go_least_recently_used_first_with_the_blobs_only_they_use():
    found = [Candidate("old", 1.0, 10, ("a", "shared")), Candidate("mid", 2.0, 10, ("b",)),
             Candidate("new", 3.0, 10, ("shared",)), Candidate("kept", 0.0, 10, ("c",))]
    sizes = {"a": 100, "b": 100, "shared": 100, "c": 100}
    assert choose_victims(found, sizes, 440, 1000) == []
    assert choose_victims(found, sizes, 440, 330, keep=["kept"]) == [("old", ("a",))]  # (shared: new uses it)
    assert choose_victims(found, sizes, 440, 0, keep=["kept"]) == [("old", ("a",)), ("mid", ("b",)),
                                                                  ("new", ("shared",))]
    assert beyond_last([("k1", "s", 1.0), ("k2", "s", 3.0), ("k3", "s", 2.0), ("t1", "t", 0.0)], 1) == ["k3", "k1"]


# -- a directory ---------------------------------------------------------------------------------------------

def _access_times(directory) -> dict[str, float]:
    con = sqlite3.connect(directory / "store" / "cache.db")
    try:
        rows = con.execute("SELECT key, access_time FROM Cache WHERE key LIKE 'entry:%'").fetchall()
    finally:
        con.close()
    return dict(rows)


class _Ran:
    """The arguments a step's body ran for, as its cache's history says (a list the body appended to would
    be one of its inputs)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache

    def __eq__(self, other: object) -> bool:
        return [r.inputs for r in self.cache.runs("load") if not r.cached] == [
            self.cache.runs("load")[0].inputs.__class__(i=_hash(i)) for i in other]

    def __repr__(self) -> str:
        return repr([r.inputs for r in self.cache.runs("load") if not r.cached])


def _hash(i):
    return nbcache.hash_value(i)


def _calls(tmp_path, limit):
    """A cache of ``limit`` and a step storing 400 kB per call; the arguments it ran for."""
    cache = Cache(tmp_path / "c", size_limit=limit)

    @step(cache=cache)
    def load(i):
        return np.full(50_000, float(i))

    return cache, load, _Ran(cache)


def test_a_store_past_the_limit_evicts_the_least_recently_used(tmp_path):
    cache, load, ran = _calls(tmp_path, "1.1MB")
    load(1), load(2)
    load(1)  # a hit: 1 is now more recent than 2
    assert ran == [1, 2]
    load(3)  # 1.2 MB: 2 goes
    load(1), load(3)
    assert ran == [1, 2, 3]
    load(2)
    assert ran == [1, 2, 3, 2]
    assert cache.store().stats().entries == 2


def test_no_limit_keeps_everything(tmp_path, monkeypatch):
    monkeypatch.delenv("NBCACHE_SIZE_LIMIT", raising=False)
    cache, load, ran = _calls(tmp_path, None)
    assert cache.size_limit is None
    for i in range(5):
        load(i)
    assert cache.store().stats().entries == 5


def test_an_entry_larger_than_the_limit_is_kept_by_its_own_store(tmp_path):
    cache, load, ran = _calls(tmp_path, "100KB")
    load(1), load(2)
    assert [key for key, _ in cache.store().entries()] == [cache.runs()[-1].key]
    load(2)
    assert ran == [1, 2]


def test_a_hit_writes_nothing_to_the_index_until_a_flush(tmp_path):
    cache, load, ran = _calls(tmp_path, None)
    load(1)
    before = _access_times(tmp_path / "c")
    load(1)
    assert _access_times(tmp_path / "c") == before  # noted in memory only
    cache.store()._recency.flush()
    after = _access_times(tmp_path / "c")
    assert list(after) == list(before) and after != before


def test_hits_are_written_by_a_thread_off_the_hit_path(tmp_path, monkeypatch):
    monkeypatch.setattr(diskevict, "FLUSH_S", 0.05)
    cache, load, ran = _calls(tmp_path, None)
    load(1)
    before = _access_times(tmp_path / "c")
    load(1)
    assert _access_times(tmp_path / "c") == before  # not by the hit itself
    deadline = time.monotonic() + 10
    while _access_times(tmp_path / "c") == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _access_times(tmp_path / "c") != before


def test_hits_are_written_when_the_process_exits(tmp_path):
    code = f"""
import numpy as np, nbcache
cache = nbcache.Cache({str(tmp_path / 'c')!r})
@nbcache.step(cache=cache)
def load(i):
    return np.zeros(10)
load(1)
import sqlite3, sys
print(sqlite3.connect({str(tmp_path / 'c' / 'store' / 'cache.db')!r}).execute(
    "SELECT access_time FROM Cache WHERE key LIKE 'entry:%'").fetchone()[0])
load(1)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    stored = float(out.stdout.split()[0])
    (used,) = _access_times(tmp_path / "c").values()
    assert used > stored


def test_entries_of_other_processes_count_and_go_first_when_older(tmp_path):
    directory = tmp_path / "c"
    other = DiskStore(directory)  # another process's store: its own connection to the index
    cache, load, ran = _calls(tmp_path, "1.1MB")

    @step(cache=Cache(directory))
    def theirs():
        return np.zeros(50_000)

    theirs()
    load(1), load(2)  # 1.2 MB in all, theirs the least recently used
    assert ran == [1, 2]
    assert {e.step for _, e in other.entries()} == {"load"}
    other.close()


def test_the_limit_comes_from_the_environment_unless_set(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCACHE_SIZE_LIMIT", "2GiB")
    cache = Cache(store=MemoryStore())
    assert cache.size_limit == 2 * 2**30
    cache.size_limit = "20GB"
    assert cache.size_limit == 20 * 10**9
    cache.size_limit = None
    assert cache.size_limit == 2 * 2**30
    assert Cache(store=MemoryStore(), size_limit=500).size_limit == 500
    with pytest.raises(ValueError, match=r"Cache\(size_limit=...\) is a size such as '20GB'"):
        Cache(size_limit="lots")
    with pytest.raises(ValueError, match="Cache.size_limit is a size"):
        cache.size_limit = "-1GB"


def test_a_malformed_environment_limit_warns_and_keeps_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCACHE_SIZE_LIMIT", "20 gigs")
    cache, load, ran = _calls(tmp_path, None)
    with pytest.warns(nbcache.CacheWarning, match="NBCACHE_SIZE_LIMIT is a size such as 20GB"):
        value = load(1)
    assert value[0] == 1.0
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        load(1)  # a hit: stored all the same, and nothing to evict on a hit
    assert ran == [1] and not said


def test_a_memory_cache_evicts_too():
    cache = Cache(store=MemoryStore(), size_limit="1MB")

    @step(cache=cache)
    def load(i):
        return np.full(50_000, float(i))

    for i in range(4):
        load(i)
    assert cache.store().stats().entries == 2


# -- the magics and the command ------------------------------------------------------------------------------

def test_config_sets_the_magics_caches_limit(shell, cache_dir, capsys, caplog, monkeypatch):
    monkeypatch.delenv("NBCACHE_SIZE_LIMIT", raising=False)
    cache = nbcache.cache.default_cache()
    try:
        shell.run_line_magic("config", "NBCache.size_limit = '20GB'")
        assert cache.size_limit == 20 * 10**9
        shell.run_line_magic("config", "NBCache.size_limit = 4096")
        assert cache.size_limit == 4096
        shell.run_line_magic("nbcache", "info")
        assert "size limit: 4.1 KB (4096 bytes" in capsys.readouterr().out
        shell.run_line_magic("config", "NBCache.size_limit = 'huge'")  # (%config logs the error)
        assert "NBCache.size_limit is a size such as '20GB'" in caplog.text and "'huge'" in caplog.text
        assert cache.size_limit == 4096  # (refused: unchanged)
    finally:
        shell.run_line_magic("config", "NBCache.size_limit = None")
    assert cache.size_limit is None


def _filled(tmp_path) -> str:
    cache = Cache(tmp_path / "c")

    @step(cache=cache)
    def load(i):
        return i

    @step(cache=cache)
    def other(i):
        return -i

    for i in range(4):
        load(i)
    other(1), other(2)
    load(0)  # a hit: 0 is now the most recently used of load
    cache.store().close()  # (and its hits written)
    return str(tmp_path / "c")


def test_cli_clear_keep_last_keeps_each_steps_most_recently_used(tmp_path, capsys):
    from nbcache.cli import main

    directory = _filled(tmp_path)
    assert main(["clear", "--keep-last", "2", "--dir", directory]) == 0
    assert "removed 2 cached results" in capsys.readouterr().out
    store = DiskStore(directory)
    kept = sorted((e.step, e.outputs) for _, e in store.entries())
    assert kept == sorted([("load", (nbcache.hash_value(0),)), ("load", (nbcache.hash_value(3),)),
                           ("other", (nbcache.hash_value(-1),)), ("other", (nbcache.hash_value(-2),))])
    assert main(["clear", "other", "--keep-last", "0", "--dir", directory, "--json"]) == 0
    assert '"removed": 2' in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["clear", "--keep-last", "-1", "--dir", directory])
    assert "expected a number of results to keep" in capsys.readouterr().err


def test_cli_info_shows_the_limit_from_the_environment(tmp_path, capsys, monkeypatch):
    from nbcache.cli import main

    directory = _filled(tmp_path)
    monkeypatch.delenv("NBCACHE_SIZE_LIMIT", raising=False)
    assert main(["info", "--dir", directory]) == 0
    assert "size limit" not in capsys.readouterr().out
    monkeypatch.setenv("NBCACHE_SIZE_LIMIT", "20GB")
    assert main(["info", "--dir", directory]) == 0
    assert "size limit: 20.0 GB (20000000000 bytes" in capsys.readouterr().out
    assert main(["info", "--dir", directory, "--json"]) == 0
    assert '"size_limit_bytes": 20000000000' in capsys.readouterr().out
    monkeypatch.setenv("NBCACHE_SIZE_LIMIT", "20 gigs")
    assert main(["info", "--dir", directory]) == 3
    assert "NBCACHE_SIZE_LIMIT is a size such as 20GB" in capsys.readouterr().err
