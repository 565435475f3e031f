"""What nbcache's background work must never do to the notebook: hang a forked process, become a
dependency of a step under way, lose a removal when warnings are errors, or fail a hit that could not map
its value. Each case was found by a review of the background work and is checked here for real."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import nbcache
from nbcache import CacheWarning, frameread
from nbcache.forksafe import ForkSafeLock
from nbcache.frameread import MAP_MIN

from .conftest import run_python

N = MAP_MIN // 8 * 2


def test_a_lock_held_by_another_thread_when_the_process_forks_is_free_in_the_child():
    lock = ForkSafeLock()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if lock.acquire(timeout=5) else 1)
    release.set()
    thread.join()
    assert os.waitpid(pid, 0)[1] == 0


_FORK_AT_ONCE = """
import logging, multiprocessing, sys, time  # (logging as a kernel has it: see forksafe.py)
import nbcache

def work(x):
    return nbcache.step(lambda x: x + 1, name="inc")(x)

time.sleep(float(sys.argv[1]))  # (the warm-up thread is importing diskcache and SQLite meanwhile)
with multiprocessing.get_context("fork").Pool(2) as pool:
    print(sorted(pool.map(work, [1, 2, 3, 4])))
"""


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.01])
def test_a_process_forking_just_after_import_nbcache_does_not_hang_its_children(tmp_path, delay):
    """``import nbcache`` opens an existing cache on a thread that imports diskcache and SQLite: a child
    forked meanwhile got the module locks that thread held, and hung on its first step (most of the time).
    Nor may a library's own fork handlers complain (filelock's did, when nbcache imported it ahead)."""
    (tmp_path / "fork.py").write_text(_FORK_AT_ONCE)
    env = {**os.environ, "NBCACHE_DIR": str(tmp_path / "cache")}
    run_python("import nbcache; nbcache.step(lambda x: x + 1, name='inc')(1)", env=env, cwd=tmp_path)
    done = subprocess.run([sys.executable, "fork.py", str(delay)], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "[2, 3, 4, 5]"), done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_nbcache_s_own_background_work_is_no_dependency_of_a_step_under_way(tmp_path, cache_dir):
    """An outer step on one cache calls an inner step kept in the default cache: the inner hit's background
    writes open the default cache's index while the outer one runs; that must not become its input."""
    inner = nbcache.step(lambda x: x * 2, name="inner")
    inner(1)
    outer_cache = nbcache.Cache(tmp_path / "outer")

    def outer(x):
        y = inner(x)
        nbcache.cache.default_cache().background.drain(timeout=30)  # (its work done while this one runs)
        return y + 1

    step = nbcache.step(outer, name="outer", cache=outer_cache)
    fresh = nbcache.Cache(cache_dir)  # a new process's view of the inner cache: its hit writes in the background
    inner_fresh = nbcache.step(lambda x: x * 2, name="inner", cache=fresh)

    def outer_fresh(x):
        y = inner_fresh(x)
        fresh.background.drain(timeout=30)
        return y + 1

    fresh_step = nbcache.step(outer_fresh, name="outer", cache=outer_cache)
    assert fresh_step(1) == 3 and step(1) == 3
    assert step(1) == 3 and outer_cache.runs()[-1].cached, outer_cache.runs()[-1].reason
    for _, entry in outer_cache.store().entries():
        assert not [c for c in entry.checks if str(cache_dir) in getattr(c, "target", "")]


def _flip_last_byte(directory: Path) -> None:
    (path,) = [p for p in (directory / "store").rglob("*.val") if p.stat().st_size >= N * 8]
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(np.float64(7.0).tobytes())


def test_a_value_found_damaged_is_removed_even_when_warnings_are_errors(cache_dir):
    calls: list = []
    make = nbcache.step(lambda n, calls: calls.append(n) or np.zeros(n), name="make", ignore=["calls"])
    make(N, calls)
    _flip_last_byte(cache_dir)
    fresh = nbcache.Cache(cache_dir)
    again = nbcache.step(lambda n, calls: calls.append(n) or np.zeros(n), name="make", ignore=["calls"], cache=fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # (the background warning raises on its thread)
        again(N, calls)
        assert fresh.background.drain(timeout=60)
    assert calls == [N] and again(N, calls).sum() == 0 and calls == [N, N]  # removed, then recomputed


def test_a_value_that_cannot_be_mapped_is_read_instead(cache_dir, monkeypatch):
    make = nbcache.step(lambda n: np.arange(n, dtype=np.float64), name="make")
    make(N)

    def no_mapping(*args, **kwargs):
        raise OSError(19, "No such device")  # a file system that cannot map files

    monkeypatch.setattr(frameread.mmap, "mmap", no_mapping)
    fresh = nbcache.Cache(cache_dir)
    value = nbcache.step(lambda n: np.arange(n, dtype=np.float64), name="make", cache=fresh)(N)
    assert fresh.runs()[-1].cached and np.array_equal(value, np.arange(N, dtype=np.float64))


def test_setting_the_cache_directory_again_opens_nothing_more(cache_dir):
    nbcache.step(lambda x: x, name="s")(1)

    def open_files() -> list[str]:
        """The files of this cache directory the process holds open (other tests' leftovers, pytest-xdist's
        own channels and Python's may come and go meanwhile: only this cache's count)."""
        nbcache.cache.default_cache()._warming.wait()
        held = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # closed since listed
                continue
            if target.startswith(str(cache_dir)):
                held.append(target)
        return sorted(held)

    nbcache.set_cache_dir(cache_dir)
    before = open_files()
    assert before, "the cache holds its index open: the count below would prove nothing"
    for _ in range(20):
        nbcache.set_cache_dir(cache_dir)
    assert open_files() == before


def _pairs() -> np.ndarray:
    x = np.zeros(N // 2, dtype=[("a", "<f8"), ("b", "<f8")])
    x["a"], x["b"] = 1.0, 2.0
    return x


def _total_a(x: np.ndarray, calls: list) -> float:
    calls.append(1)
    return float(x["a"].sum())


def test_a_structured_array_read_as_other_fields_is_hashed_again(tmp_path):
    """Swapping field names changes no byte and no page, and every 16-byte record has dtype.str '|V16':
    the carried address must not survive it (a wrong result was served before)."""
    calls: list = []
    cache = nbcache.Cache(tmp_path / "c")
    nbcache.step(_pairs, cache=cache)()
    fresh = nbcache.Cache(tmp_path / "c")
    pairs = nbcache.step(_pairs, cache=fresh)
    total = nbcache.step(_total_a, ignore=["calls"], cache=fresh)
    x = pairs()
    assert total(x, calls) == N // 2 * 1.0
    x.dtype = np.dtype([("b", "<f8"), ("a", "<f8")])  # the same bytes, read as other fields
    assert total(x, calls) == N // 2 * 2.0 and calls == [1, 1]  # as without the cache


@pytest.mark.parametrize("remove", [False, True])
def test_verify_makes_no_key_and_never_removes_what_another_key_signed(tmp_path, capsys, remove):
    from nbcache.cli import main as cli

    directory = tmp_path / "c"
    mine = "ab" * 32
    nbcache.step(lambda: 1, name="one", cache=nbcache.Cache(directory, key=mine))()
    home = tmp_path / "home"
    env = {"NBCACHE_KEY_FILE": "", "NBCACHE_KEY": "", "HOME": str(home), "XDG_CONFIG_HOME": ""}
    args = ["verify", "--dir", str(directory)] + (["--remove"] if remove else [])
    out = run_python(f"import sys\nfrom nbcache.cli import main\nprint(main({args!r}))", env=env)
    assert out.strip().endswith("3") and not home.exists()  # no key: an error, and none made
    other = tmp_path / "other-key"
    other.write_text("cd" * 32)
    out = run_python(f"import sys\nfrom nbcache.cli import main\nprint(main({args!r}))",
                     env={**env, "NBCACHE_KEY_FILE": str(other)})
    assert "not signed with your key" in out and out.strip().endswith("5")
    assert [e.step for _, e in nbcache.Cache(directory, key=mine).store().entries()] == ["one"]  # kept
    del cli, capsys


def test_nothing_of_a_cache_is_a_threading_local(tmp_path):
    """Python before 3.11.9 deadlocks when a ``threading.local`` is freed by a collection that runs inside
    ``sys._current_frames()`` (CPython gh-106883), which Dask's profiler calls every few milliseconds on a
    worker; a Cache, dropped in a reference cycle, would free its own. None of the objects a Cache holds (after
    calls on two threads) is one (a library's, such as diskcache's, may: docs/team.md tells users of old
    Pythons to turn the profiler off)."""
    import gc

    cache = nbcache.Cache(tmp_path / "c")
    inc = nbcache.step(cache=cache, name="inc")(lambda x: x + 1)
    worker = threading.Thread(target=inc, args=(1,))
    worker.start()
    worker.join()
    assert inc(2) == 3
    seen, todo, found = {id(cache)}, [cache], []
    while todo:
        obj = todo.pop()
        for ref in gc.get_referents(obj):
            if isinstance(ref, threading.local):
                found.append(type(obj).__qualname__)
            mine = type(ref).__module__.startswith("nbcache") or isinstance(ref, (dict, list, tuple, set))
            if mine and id(ref) not in seen and not isinstance(ref, type):
                seen.add(id(ref))
                todo.append(ref)
    assert found == []


def test_threads_storing_at_once_share_one_upload_queue(tmp_path, monkeypatch):
    """Two threads storing their first results at the same moment used to make an upload worker each; the
    second replaced the first, so the first thread's ``flush`` waited on the wrong queue and returned before
    its upload was done (a Dask worker's call then returned with its result not yet in the team cache)."""
    import time

    from nbcache import teamcache

    made = []

    class SlowWorker(teamcache.Worker):
        def __init__(self, *args, **kwargs):
            time.sleep(0.05)  # (widens the moment between finding none and keeping the new one)
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(teamcache, "Worker", SlowWorker)
    cache = nbcache.Cache(tmp_path / "c")
    cache.team.set(str(tmp_path / "team"), {})
    double = nbcache.step(cache=cache, name="double")(lambda x: 2 * x)
    threads = [threading.Thread(target=double, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    assert cache.team.flush(30)
    assert len(list((tmp_path / "team").glob("v*/entries/*"))) == 2  # (both uploaded: one per result)
