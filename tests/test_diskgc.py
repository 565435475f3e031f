"""Garbage collection of a cache directory (diskgc.py): the temporaries of killed writers, value files no row
names and unused lock files go, nothing else does; and the size reported is what ``du`` measures."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nbcache.diskgc import GRACE_S
from nbcache.diskstore import DiskStore
from nbcache.store import Collected

from .disk_helpers import entry, frame, kill_a_writer, temporaries, value_files
from .test_diskfiles import WRITER


@pytest.fixture
def store(tmp_path):
    s = DiskStore(tmp_path / "c")
    yield s
    s.close()


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _orphan(store: DiskStore, name: str = "o") -> Path:
    """A value file whose row another program deleted without deleting the file."""
    before = set(value_files(store.directory))
    store.put_blob(name, frame(np.arange(200_000)))
    (path,) = set(value_files(store.directory)) - before
    con = sqlite3.connect(store.directory / "store" / "cache.db")
    with con:
        con.execute("DELETE FROM Cache WHERE key = ?", ("blob:" + name,))
    con.close()
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_gc_removes_old_orphans_and_dead_writers_temporaries_only(store):
    store.put_blob("kept", frame(np.arange(200_000)))
    store.put_entry("k", entry("s", ("kept",)))
    (kept,) = value_files(store.directory)
    young, old = _orphan(store, "young"), _orphan(store, "old")
    for path in (kept, old):
        _age(path, GRACE_S + 60)  # an old value a row names stays, however old
    live = old.parent / (old.name + f".tmp-{os.getpid()}")  # a writer still at work
    dead = old.parent / ("e" * 28 + f".val.tmp-{_dead_pid()}")
    foreign = store.directory / "store" / "notes.txt"  # what nbcache did not write, it does not remove
    draft = store.directory / "store" / "mine" / f"report.tmp-{_dead_pid()}"  # (a store linked to a user's folder)
    draft.parent.mkdir()
    (store.directory / "store" / "empty").mkdir()
    for path in (live, dead, foreign, draft):
        path.write_bytes(b"x" * 100_000)
    _age(foreign, 10 * GRACE_S)
    collected = store.gc()
    assert collected.files == 2 and collected.bytes >= 1_600_000 + 100_000
    assert kept.exists() and young.exists() and live.exists() and foreign.exists() and draft.exists()
    assert (store.directory / "store" / "empty").is_dir()
    assert not old.exists() and not dead.exists()
    assert store.gc() == Collected(0, 0)
    assert store.has_blob("kept") and store.get_entry("k") is not None


def test_gc_removes_the_emptied_folders(store):
    path = _orphan(store)
    _age(path, GRACE_S + 60)
    assert store.gc().files == 1
    assert not path.parent.exists() and not path.parent.parent.exists()
    assert (store.directory / "store").is_dir()


def test_clearing_everything_collects_too(store):
    path = _orphan(store)
    _age(path, GRACE_S + 60)
    store.clear("some step")
    assert path.exists()  # clearing one step leaves the rest of the directory alone
    store.clear()
    assert not path.exists()


def test_a_killed_writers_temporary_is_collected_and_counted_until_then(tmp_path):
    directory = tmp_path / "c"
    store = DiskStore(directory)
    store.put_blob("small", frame(np.arange(10)))
    size = store.stats().size_bytes
    kill_a_writer(directory, WRITER)
    (temp,) = temporaries(directory)
    blocks = temp.stat().st_blocks * 512
    assert blocks >= 16_000_000 and store.stats().size_bytes >= size + blocks  # counted, as du counts it
    assert store.gc() == Collected(1, blocks)
    assert temporaries(directory) == [] and store.stats().size_bytes < size + 1_000_000
    store.close()


def test_unused_lock_files_are_collected_not_held_ones(store):
    with store.lock("held", 1) as got:
        assert got
        with store.lock("done", 1):
            pass
        with store.lock("recent", 1):
            pass
        locks = store.directory / "locks"
        for name in ("held", "done"):
            _age(locks / f"{name}.lock", GRACE_S + 60)
        assert store.gc().files == 1
        assert sorted(p.name for p in locks.iterdir()) == ["held.lock", "recent.lock"]
    with store.lock("held", 0) as got:
        assert got


@pytest.mark.skipif(shutil.which("du") is None, reason="no du")
def test_the_size_reported_is_what_du_measures(store):
    store.put_blob("a", frame(np.arange(300_000)))
    store.put_entry("k", entry("s", ("a",)))
    _orphan(store)
    (store.directory / "runs.jsonl").write_text("x" * 5000)
    sparse = store.directory / "store" / "ab"
    sparse.mkdir()
    with open(sparse / "sparse", "wb") as f:
        f.truncate(1 << 30)  # a gigabyte that takes no disk
    du = int(subprocess.run(["du", "-s", "-B1", str(store.directory)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    assert store.stats().size_bytes == du


KILLED_BEFORE_ENTRY = '''
import os, signal, numpy as np, nbcache.diskstore as ds
from nbcache import step
ds.DiskStore.put_entry = lambda self, key, entry: os.kill(os.getpid(), signal.SIGKILL)
@step
def big(n):
    return np.arange(n, dtype=np.float64)
big(1_000_000)
'''


def test_values_no_entry_names_are_collected_once_old(tmp_path):
    """A writer killed between storing its value and its entry leaves a value that no entry names."""
    env = {**os.environ, "NBCACHE_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_BEFORE_ENTRY], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    store = DiskStore(tmp_path)
    try:
        assert list(store.entries()) == [] and len(value_files(tmp_path)) == 1
        assert store.gc().files == 0  # a live writer might be about to name it
        db = tmp_path / "store" / "cache.db"
        with sqlite3.connect(db) as con:
            con.execute("UPDATE Cache SET store_time = store_time - ?", (GRACE_S + 1,))
        for path in value_files(tmp_path):
            os.utime(path, (time.time() - GRACE_S - 1,) * 2)
        collected = store.gc()
        assert collected.files >= 1 and collected.bytes >= 8_000_000
        assert value_files(tmp_path) == [] and not list(store._cache.iterkeys())
    finally:
        store.close()
