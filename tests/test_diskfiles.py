"""The files of a cache directory (diskfiles.py): nothing outside the directory is ever read or deleted,
nothing that is not a regular file is opened, text is read within bounds, what nbcache creates is private,
and a value file appears under its name only once complete."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

import nbcache
from nbcache import CacheWarning, step
from nbcache.diskstore import DiskStore
from nbcache.frame import Damaged, Frame
from nbcache.records import StepRun

from .disk_helpers import (MODE_BINARY, MODE_TEXT, entry, frame, kill_a_writer, mode_of, plant, temporaries,
                           value_files)


@pytest.fixture
def store(tmp_path):
    s = DiskStore(tmp_path / "c")
    yield s
    s.close()


def _filled(store: DiskStore) -> None:
    """An entry "k" of step "s" whose blob "a" is a value file."""
    store.put_blob("a", frame(np.arange(100_000)))
    store.put_entry("k", entry("s", ("a",)))


def _victims(tmp_path: Path, store: DiskStore) -> tuple[Path, Path]:
    """Files outside the cache that would read as valid: a copy of the entry's text and of the value."""
    text = tmp_path / "victim.json"
    text.write_text(entry("s", ("a",)).to_json())
    value = tmp_path / "victim.val"
    shutil.copy(value_files(store.directory)[0], value)
    return text, value


def _pointing(how: str, store: DiskStore, target: Path) -> str:
    store_dir = store.directory / "store"
    if how == "absolute":
        return str(target)
    if how == "dotdot":
        return os.path.relpath(target, store_dir)
    link = store_dir / "ab" / "cd" / f"{target.name.replace('.', '_')}.val"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return os.path.relpath(link, store_dir)


@pytest.mark.parametrize("named", ["cache.db", "cache.db-wal", "../runs.jsonl"])
def test_a_row_naming_the_index_or_the_history_never_deletes_it(store, named):
    _filled(store)
    store.append_run(StepRun(step="s", cached=False, duration_s=1.0, saved_s=0.0, key="k", code="c", inputs={},
                             outputs=(), reason="first run", started_at=datetime(2026, 1, 2, tzinfo=timezone.utc)))
    plant(store.directory, "blob:a", named, MODE_BINARY)
    with pytest.raises(Damaged):
        store.open_blob("a")
    store.delete("k", ["a"])
    store.clear()
    assert (store.directory / "store" / "cache.db").exists() and len(store.read_runs()) == 1


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
@pytest.mark.parametrize("removal", ["delete", "clear", "clear-step", "clear-older", "evict-by-overwrite"])
def test_a_row_pointing_outside_is_never_read_nor_deleted(tmp_path, store, how, removal):
    _filled(store)
    text, value = _victims(tmp_path, store)
    plant(store.directory, "entry:k", _pointing(how, store, text), MODE_TEXT)
    plant(store.directory, "blob:a", _pointing(how, store, value), MODE_BINARY)
    with pytest.raises(Damaged, match="outside the cache directory"):
        store.get_entry("k")
    with pytest.raises(Damaged, match="outside the cache directory"):
        store.open_blob("a")
    assert list(store.entries()) == [] and store.stats().unreadable_entries == 1
    if removal == "delete":
        store.delete("k", ["a"])
    elif removal == "clear":
        store.clear()
    elif removal == "clear-step":
        assert store.clear("s") == 1
    elif removal == "clear-older":
        store.clear(older_than_s=0)  # (an unreadable entry counts as old)
        store.delete("k", ["a"])
    else:  # a new value for the same key: diskcache deletes the old row's file
        store.put_entry("k", entry("s", ("a",)))
        store._cache.set("blob:a", frame(np.arange(100_000)))
    assert text.read_text().startswith("{") and value.stat().st_size > 100_000
    assert store.open_blob("a") is None or removal == "evict-by-overwrite"


def test_a_step_whose_row_points_outside_recomputes_and_deletes_nothing(cache_dir, tmp_path):
    @step
    def big(n):
        return np.arange(n) * 2

    big(100_000)
    victim = tmp_path / "victim.val"
    shutil.copy(value_files(cache_dir)[0], victim)
    ((name,),) = _blob_names(cache_dir)
    plant(cache_dir, name, str(victim), MODE_BINARY)
    with pytest.warns(CacheWarning, match="damaged"):
        np.testing.assert_array_equal(big(100_000), np.arange(100_000) * 2)
    assert nbcache.runs()[-1].reason == "cached result was damaged"
    nbcache.clear()
    assert victim.exists()


def _blob_names(directory: Path) -> list[tuple[str]]:
    import sqlite3

    con = sqlite3.connect(directory / "store" / "cache.db")
    try:
        return con.execute("SELECT key FROM Cache WHERE key LIKE 'blob:%'").fetchall()
    finally:
        con.close()


def test_a_link_inside_the_directory_is_not_followed(store):
    """Even a link to a file of the cache itself: what the index names must be the file, not a way to it."""
    _filled(store)
    (real,) = value_files(store.directory)
    link = real.with_name("f" * 28 + ".val")
    link.symlink_to(real)
    plant(store.directory, "blob:a", os.path.relpath(link, store.directory / "store"), MODE_BINARY)
    with pytest.raises(Damaged, match="not a regular file"):
        store.open_blob("a")
    store.delete("k", ["a"])
    assert real.exists()  # only the row went


PROBE = textwrap.dedent("""
    import sys, time
    from nbcache.diskstore import DiskStore
    from nbcache.frame import Damaged
    store = DiskStore(sys.argv[1])
    t0 = time.monotonic()
    print("unreadable", store.stats().unreadable_entries, flush=True)
    try:
        handle = store.open_blob("a")
        print("blob", type(handle).__name__, handle.read(8) if hasattr(handle, "read") else handle, flush=True)
    except Damaged as exc:
        print("blob damaged:", exc, flush=True)
    store.clear()
    print("seconds", time.monotonic() - t0)
""")


def _probe(directory: Path) -> str:
    """Read and clear the cache in a process of its own, with 2 GiB of address space and 60 s: reading a
    device, a FIFO or a huge file whole would exhaust the one or the other."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-c", PROBE, str(directory)], capture_output=True, text=True,
                          timeout=60, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("target", ["dev-zero", "fifo", "sparse-10GB"])
def test_a_row_pointing_at_a_device_a_fifo_or_a_huge_file_neither_hangs_nor_exhausts_memory(store, target):
    _filled(store)
    store_dir = store.directory / "store"
    if target == "dev-zero":
        name = "/dev/zero"
    else:
        path = store_dir / "ee" / "ff" / ("0" * 28 + ".val")
        path.parent.mkdir(parents=True)
        if target == "fifo":
            os.mkfifo(path)
        else:
            with open(path, "wb") as f:
                f.truncate(10 << 30)
        name = os.path.relpath(path, store_dir)
    plant(store.directory, "entry:k", name, MODE_TEXT)
    plant(store.directory, "blob:a", name, MODE_BINARY)
    out = _probe(store.directory)
    assert "unreadable 1" in out
    if target == "sparse-10GB":  # a regular file: handed to load_frame, which finds no nbcache value in it
        assert "blob BufferedReader b'\\x00\\x00" in out
        assert not (store_dir / name).exists()  # a file inside the directory: deleted with its rows
    else:
        assert "blob damaged: the index points" in out
        assert target == "dev-zero" or (store_dir / name).exists()  # not a regular file: left alone


def test_an_entry_file_over_the_bound_is_damage(store):
    store.put_entry("k", entry())
    path = store.directory / "store" / "aa" / "bb" / ("1" * 28 + ".val")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"step": "' + b"x" * (17 << 20) + b'"}')
    plant(store.directory, "entry:k", os.path.relpath(path, store.directory / "store"), MODE_TEXT)
    with pytest.raises(Damaged, match="larger than 16 MiB"):
        store.get_entry("k")


def test_big_entries_still_round_trip_through_files(store):
    big = entry("s", tuple(f"b{i}-{'0' * 40}" for i in range(2000)))  # ~100 kB of JSON: a file of its own
    store.put_entry("k", big)
    assert value_files(store.directory) and store.get_entry("k") == big


# permissions
def _created(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): mode_of(p) for p in [directory, *directory.rglob("*")]}


def _use(store: DiskStore) -> None:
    _filled(store)
    store.append_run(StepRun(step="s", cached=False, duration_s=1.0, saved_s=0.0, key="k", code="c", inputs={},
                             outputs=(), reason="first run", started_at=datetime.now(timezone.utc)))
    with store.lock("k", 1) as got:
        assert got


@pytest.mark.parametrize("umask", [0o022, 0o002])
@pytest.mark.parametrize("shared", [False, True, "env"])
def test_what_nbcache_creates_is_private_unless_shared(tmp_path, monkeypatch, umask, shared):
    if shared == "env":
        monkeypatch.setenv("NBCACHE_SHARED", "1")
    old = os.umask(umask)
    try:
        store = DiskStore(tmp_path / "c", **({} if shared == "env" else {"shared": shared}))
        _use(store)
        modes = _created(tmp_path / "c")
        store.close()
    finally:
        os.umask(old)
    dirs = {name for name in modes if (tmp_path / "c" / name).is_dir()}
    assert {"locks", "store", "store/cache.db", "store/cache.db-wal", "runs.jsonl"} <= set(modes)
    assert len(value_files(tmp_path / "c")) == 1
    want_dir, want_file = (0o770, 0o660) if shared else (0o700, 0o600)
    assert {name: mode for name, mode in modes.items() if name in dirs} == {n: want_dir & ~umask for n in dirs}
    assert {name: mode for name, mode in modes.items() if name not in dirs} == {
        n: want_file & ~umask for n in modes if n not in dirs}


def test_a_directory_the_user_made_keeps_its_permissions(tmp_path):
    (tmp_path / "c").mkdir(mode=0o755)
    os.chmod(tmp_path / "c", 0o755)
    store = DiskStore(tmp_path / "c")
    _use(store)
    store.close()
    assert mode_of(tmp_path / "c") == 0o755 and mode_of(tmp_path / "c" / "store") == 0o700


# atomic publish
class _Failing(Frame):
    """A value whose writing fails half-way, as a full disk or an error of the file system would."""

    __slots__ = ()

    def write(self, f):
        f.write(b"x" * (1 << 20))
        raise OSError(5, "Input/output error")


def _failing(value):
    failing = frame(value)
    failing.__class__ = _Failing
    return failing


def test_a_store_that_fails_mid_write_leaves_no_file(store):
    with pytest.raises(OSError, match="Input/output error"):
        store.put_blob("a", _failing(np.arange(1_000_000)))
    assert value_files(store.directory) == [] and temporaries(store.directory) == []
    assert not store.has_blob("a")
    store.put_blob("a", frame(np.arange(1_000_000)))  # and the next one stores it
    assert len(value_files(store.directory)) == 1


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from tests.disk_helpers import frame
    from nbcache.diskstore import DiskStore

    value = frame(np.arange(4_000_000))
    write = type(value).write
    class Stalled(type(value)):
        __slots__ = ()
        def write(self, f):  # the first half, then a kill -9 finds it writing
            f.write(bytes(value.nbytes // 2))
            f.flush()
            print("writing", flush=True)
            time.sleep(600)
    value.__class__ = Stalled
    DiskStore(sys.argv[1]).put_blob("a", value)
""")


def test_a_writer_killed_mid_write_leaves_only_a_temporary(tmp_path):
    directory = tmp_path / "c"
    DiskStore(directory).close()
    pid = kill_a_writer(directory, WRITER)
    assert value_files(directory) == []
    (temp,) = temporaries(directory)
    assert temp.name.endswith(f".val.tmp-{pid}") and temp.stat().st_size >= 16_000_000
    store = DiskStore(directory)
    assert not store.has_blob("a") and store.open_blob("a") is None
    store.close()
