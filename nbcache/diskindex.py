"""Opening a cache directory's index (a ``diskcache.Cache`` over SQLite, its values laid out by
``diskfiles._FrameDisk``), and telling whether the index file there is still the one a store opened: a
directory removed while a kernel keeps its index open takes what is stored there with it.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import time
from pathlib import Path

import diskcache

from .diskfiles import _FrameDisk

__all__ = ["index_file", "index_identity", "open_index"]

LOCKED_WAIT_S = 60.0  # as long as diskcache waits for a lock


def open_index(directory: Path) -> diskcache.Cache:
    """The diskcache of ``directory``. Processes creating the same index at once can find it locked by
    one another in a statement diskcache does not retry: they try again, ``LOCKED_WAIT_S`` at most."""
    deadline = time.monotonic() + LOCKED_WAIT_S
    while True:
        try:
            return diskcache.Cache(
                str(directory),
                disk=_FrameDisk,
                eviction_policy="none",  # never drop a result behind the user's back; `clear` does that
                tag_index=True,
                disk_pickle_protocol=pickle.HIGHEST_PROTOCOL,
            )
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005)


def index_file(directory: Path) -> str:
    return os.path.join(directory, "cache.db")


def index_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the index file ``path`` (None: there is none)."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino
