"""A cache directory that cannot be used says why, and the advice fits (diskerrors.py): a read-only file
system, a full disk and another user's directory are told apart from a damaged index, and only the damaged
index is worth moving aside. Real file systems: tmpfs mounts in a mount namespace of their own (root only),
a process of another user (root only) or a directory without write permission."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nbcache.diskerrors import StoreError, describe
from nbcache.diskstore import DiskStore, open_disk_store

from .disk_helpers import frame


def _check_advice(error: BaseException, kind: str, directory: Path | str) -> str:
    assert isinstance(error, StoreError) and isinstance(error, OSError)
    message = str(error)
    assert error.kind == kind and str(directory) in message and "NBCACHE_DIR" in message, message
    if kind == "damaged":
        assert "move it aside" in message
    else:  # a cache that is fine is never to be deleted nor moved
        assert not re.search(r"\b(delete|move|mv|damaged)\b", message, re.IGNORECASE), message
    return message


def test_a_damaged_index_is_the_one_to_move_aside(tmp_path):
    directory = tmp_path / "c"
    (directory / "store").mkdir(parents=True)
    (directory / "store" / "cache.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as caught:
        open_disk_store(directory)
    _check_advice(caught.value, "damaged", directory)
    assert caught.value.errno == errno.EIO


@pytest.mark.parametrize("error, kind", [
    (OSError(errno.EROFS, "Read-only file system"), "read-only"),
    (OSError(errno.ENOSPC, "No space left on device"), "full"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "full"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission"),
    (OSError(errno.EPERM, "Operation not permitted"), "permission"),
    (sqlite3.DatabaseError("file is not a database"), "damaged"),
    (sqlite3.DatabaseError("database disk image is malformed"), "damaged"),
    (sqlite3.OperationalError("database or disk is full"), "full"),
])
def test_each_error_gets_its_own_advice(tmp_path, error, kind):
    _check_advice(describe(error, tmp_path), kind, tmp_path)


def test_a_directory_of_another_user(tmp_path):
    directory = tmp_path / "c"
    DiskStore(directory).close()  # 0700: its owner's
    if os.geteuid() == 0:  # root may write anywhere: ask as another user, in a process of its own
        result = _as_user(65534, directory)
    else:
        os.chmod(directory, 0o500)
        try:
            result = _attempt(lambda: open_disk_store(directory))
        finally:
            os.chmod(directory, 0o700)
    kind, message = result
    assert kind == "permission" and "Fix its permissions" in message and str(directory) in message
    assert "delete" not in message and "damaged" not in message


def _attempt(open_it) -> tuple[str | None, str]:
    try:
        open_it()
    except StoreError as exc:
        return exc.kind, str(exc)
    return None, ""


def _as_user(uid: int, directory: Path) -> tuple[str | None, str]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child only opens the store and reports: no interpreter to start as that user)
        try:
            os.close(read)
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, json.dumps(_attempt(lambda: open_disk_store(directory))).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(text))


MOUNTED = textwrap.dedent("""
    import json, os, subprocess, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from tests.disk_helpers import frame, temporaries, value_files
    from nbcache.diskstore import DiskStore, StoreError, open_disk_store
    from nbcache.frame import load_frame
    from pathlib import Path

    base, out = Path(sys.argv[1]), {}
    def mount(name, options):
        (base / name).mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(base / name)], check=True)
        return base / name
    def attempt(label, do):
        try:
            do()
            out[label] = None
        except StoreError as exc:
            out[label] = [exc.kind, str(exc)]

    ro = mount("ro", "size=4m")
    store = DiskStore(ro / "c")
    store.put_blob("a", frame(np.arange(100_000)))
    store.close()
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    attempt("read-only cache", lambda: open_disk_store(ro / "c"))
    attempt("read-only new", lambda: open_disk_store(ro / "new"))

    full = mount("full", "size=2m")
    store = DiskStore(full / "c")
    store.put_blob("a", frame(np.arange(10_000)))
    before = temporaries(full / "c") + value_files(full / "c")
    with open(full / "filler", "wb", buffering=0) as f:  # the disk fills up
        try:
            while True:
                f.write(bytes(4096))
                f.flush()
        except OSError:
            pass
    attempt("full write", lambda: store.put_blob("big", frame(np.arange(200_000))))
    out["full write left"] = [str(p) for p in temporaries(full / "c") + value_files(full / "c") if p not in before]
    attempt("full new", lambda: open_disk_store(full / "new"))
    os.unlink(full / "filler")  # space freed: the same cache works as before
    store.put_blob("big", frame(np.arange(200_000)))
    store.close()
    again = open_disk_store(full / "c")
    out["after freeing"] = [again.has_blob("a"), again.has_blob("big"), len(value_files(full / "c"))]
    again.close()
    print(json.dumps(out))
""")


def test_a_read_only_file_system_and_a_full_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("mounting a tmpfs takes root and unshare")
    proc = subprocess.run(["unshare", "--mount", sys.executable, "-c", MOUNTED, str(tmp_path),
                           str(Path(__file__).parent.parent)], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 and "mount" in proc.stderr and "permission denied" in proc.stderr.lower():
        pytest.skip(f"tmpfs cannot be mounted here: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for label, kind, name in [("read-only cache", "read-only", "ro/c"), ("read-only new", "read-only", "ro/new"),
                              ("full write", "full", "full/c"), ("full new", "full", "full/new")]:
        assert out[label] is not None, label
        _check_advice(StoreError(out[label][0], out[label][1], None, ""), kind, tmp_path / name)
    assert "Free some space" in out["full write"][1] and "results are intact" in out["full write"][1]
    assert out["full write left"] == []  # the failed store removed its temporary
    assert out["after freeing"] == [True, True, 2]


def test_processes_creating_one_cache_at_once_all_open_it(tmp_path):
    """diskcache does not retry every statement of its set-up when another process holds the new index:
    processes that create one cache at once (kernels started together) must all open it, not see an error.
    (Without the retry this failed about one trial in thirty: a guard, more than a proof.)"""
    for trial in range(40):
        directory = tmp_path / str(trial)
        start = time.time() + 0.05
        pids = []
        for _ in range(8):
            pid = os.fork()
            if pid == 0:  # (forked: the trials cost no interpreter start-up)
                code = 1
                try:
                    while time.time() < start:
                        pass
                    DiskStore(directory).close()
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        failed = [pid for pid in pids if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
        assert failed == [], f"trial {trial}: {len(failed)} of 8 processes could not open the new cache"
