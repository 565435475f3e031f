"""Single-flight: ``Store.lock(key, timeout)`` over every store of the contract suite, and what only a lock
file does: another process waits, and a holder killed with SIGKILL releases it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from nbcache import MemoryStore
from nbcache.diskstore import DiskStore
from nbcache.store import Collected

from .test_store_contract import store  # noqa: F401  (the fixture: every store of the contract)


class _Holder:
    """A thread that holds the lock of ``key`` until told to let go."""

    def __init__(self, store, key: str) -> None:
        self.got: bool | None = None
        self._holding, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store, key), daemon=True)
        self._thread.start()
        assert self._holding.wait(10)

    def _run(self, store, key: str) -> None:
        with store.lock(key, 5) as got:
            self.got = got
            self._holding.set()
            self._release.wait(30)

    def release(self) -> None:
        self._release.set()
        self._thread.join(10)


def test_a_lock_is_acquired_and_acquired_again_once_released(store):  # noqa: F811
    for _ in range(2):
        with store.lock("k", 1) as got:
            assert got is True


def test_a_held_lock_times_out_for_another_caller_who_then_computes_anyway(store):  # noqa: F811
    holder = _Holder(store, "k")
    assert holder.got is True
    started = time.monotonic()
    ran = False
    with store.lock("k", 0.3) as got:
        ran = True  # (the block runs either way: the caller computes itself)
        assert got is False
    assert ran and 0.25 <= time.monotonic() - started < 5
    with store.lock("k", 0) as got:
        assert got is False
    with store.lock("other", 0.3) as got:  # keys are independent
        assert got is True
    holder.release()
    with store.lock("k", 1) as got:
        assert got is True


def test_a_waiter_gets_the_lock_when_its_holder_lets_go(store):  # noqa: F811
    holder = _Holder(store, "k")
    threading.Timer(0.3, holder.release).start()
    started = time.monotonic()
    with store.lock("k", 10) as got:
        assert got is True and time.monotonic() - started >= 0.25


def test_an_exception_in_the_block_releases_the_lock(store):  # noqa: F811
    with pytest.raises(ZeroDivisionError):
        with store.lock("k", 1) as got:
            assert got
            1 / 0
    with store.lock("k", 0) as got:
        assert got is True


def test_gc_returns_what_it_collected(store):  # noqa: F811
    assert store.gc() == Collected(0, 0)


def test_memory_locks_of_keys_no_one_uses_are_forgotten():
    store = MemoryStore()
    holder = _Holder(store, "k")
    with store.lock("k", 0.05):
        pass
    holder.release()
    assert store._key_locks == {}


HOLDER = textwrap.dedent("""
    import sys, time
    from nbcache.diskstore import DiskStore
    with DiskStore(sys.argv[1]).lock("k", 5) as got:
        print("held" if got else "not held", flush=True)
        time.sleep(600)
""")


def test_a_lock_held_by_another_process_is_released_when_that_process_is_killed(tmp_path):
    store = DiskStore(tmp_path / "c")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "c")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "held\n"
        with store.lock("k", 0.3) as got:
            assert got is False  # another process holds it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    started = time.monotonic()
    with store.lock("k", 10) as got:
        assert got is True and time.monotonic() - started < 2  # the system released the dead holder's lock
    store.close()


def test_a_key_is_never_a_path_out_of_the_locks_folder(tmp_path):
    store = DiskStore(tmp_path / "c")
    for key in ("../../escaped", "/abs", "a/b", ".hidden", "x" * 300):
        with store.lock(key, 1) as got:
            assert got
    names = os.listdir(tmp_path / "c" / "locks")
    assert len(names) == 5 and all("/" not in n and not n.startswith(".") for n in names)
    assert sorted(os.listdir(tmp_path)) == ["c"]
    store.close()


def test_no_lock_file_can_be_made_the_caller_computes_anyway(tmp_path):
    store = DiskStore(tmp_path / "c")
    (tmp_path / "c" / "locks").write_text("a file where the folder should be")
    with store.lock("k", 1) as got:
        assert got is False
    store.close()


def test_a_lock_file_removed_by_gc_just_before_it_was_locked_is_made_again_and_locked(tmp_path, monkeypatch):
    """gc removes a lock file nobody holds (it tests it with flock). A caller who opened it just before, and
    locked it just after, would hold a lock on a file no one else can find: it locks the new file instead."""
    from nbcache import disklock

    path = str(tmp_path / "k.lock")
    first = disklock._try
    removed = []

    def gc_in_between(fd: int) -> bool:
        if not removed:
            os.unlink(path)  # (what diskgc does, between this caller's open and its flock)
            removed.append(os.fstat(fd).st_ino)
        return first(fd)

    monkeypatch.setattr(disklock, "_try", gc_in_between)
    held = disklock.hold(path, 0o600, 1)
    try:
        assert held is not None and removed
        assert os.fstat(held.fd).st_ino == os.stat(path).st_ino  # (the file there now is the one held)
        other = os.open(path, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            import fcntl

            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
    finally:
        disklock.let_go(held)


def test_a_child_forked_while_the_lock_is_held_does_not_release_it_when_it_exits(tmp_path):
    """A step's body that forks: the child unwinds through the lock's ``with`` (``sys.exit``) and closes its
    copy of the descriptor; the parent still holds the lock, and another process still waits for it."""
    store = DiskStore(tmp_path / "c")
    probe = textwrap.dedent(f"""
        from nbcache.diskstore import DiskStore
        with DiskStore({str(tmp_path / "c")!r}).lock("k", 0.3) as got:
            print(got)
    """)
    parent = os.getpid()

    def hold_and_fork() -> str:
        with store.lock("k", 5) as got:
            assert got
            pid = os.fork()
            if pid == 0:
                sys.exit(0)  # (the child unwinds through the with, as a body's would)
            os.waitpid(pid, 0)
            return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                  check=True).stdout.strip()

    try:
        seen = hold_and_fork()
    except SystemExit:
        if os.getpid() != parent:
            os._exit(0)
        raise
    assert seen == "False"  # (another process found it held)
    store.close()
