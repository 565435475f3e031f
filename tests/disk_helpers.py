"""Helpers of the tests of a cache directory's files: frames as nbcache writes them, rows planted in the
index as another program could, and what is on disk."""

from __future__ import annotations

import inspect
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import diskcache

from nbcache.entry import Entry
from nbcache.frame import Frame

MODE_BINARY, MODE_TEXT = diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT


def frame(value: Any) -> Frame:
    """A Frame as the cache writes it (signed with the suite's key where frames are signed)."""
    if "key" in inspect.signature(Frame).parameters:
        from nbcache.keys import load_key

        return Frame(value, key=load_key())
    return Frame(value)


def entry(step: str = "s", blobs: tuple[str, ...] = ("a",), created_at: float | None = None) -> Entry:
    return Entry(step=step, kind="function", outputs=blobs, blobs=blobs, sizes={b: 10 for b in blobs},
                 created_at=time.time() if created_at is None else created_at, duration_s=1.0,
                 is_tuple=len(blobs) > 1)


def plant(directory: Path, key: str, filename: str, mode: int) -> None:
    """Make the index row of ``key`` point at ``filename``, as a program other than nbcache could."""
    con = sqlite3.connect(directory / "store" / "cache.db")
    with con:
        updated = con.execute("UPDATE Cache SET mode = ?, filename = ?, value = NULL WHERE key = ? AND raw = 1",
                              (mode, filename, key)).rowcount
        if not updated:
            now = time.time()
            con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag,"
                        " size, mode, filename, value) VALUES (?, 1, ?, NULL, ?, 0, ?, 0, ?, ?, NULL)",
                        (key, now, now, "s", mode, filename))
    con.close()


def value_files(directory: Path) -> list[Path]:
    return sorted((directory / "store").rglob("*.val"))


def temporaries(directory: Path) -> list[Path]:
    return sorted(p for p in (directory / "store").rglob("*") if ".tmp-" in p.name)


def mode_of(path: Path) -> int:
    return os.lstat(path).st_mode & 0o777


def kill_a_writer(directory: Path, writer: str) -> int:
    """Run ``writer`` (a script given the cache directory and the repository) until it says it is writing a
    value, then kill it with SIGKILL; return its pid."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", writer, str(directory), str(Path(__file__).parent.parent)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return proc.pid
