"""Garbage collection and size of a cache directory: what ``DiskStore.gc`` removes, what ``stats`` counts.

A value file is published by renaming a complete temporary into place and then committing the index row
that names it (``diskfiles.py``). Two kinds of file can therefore be left behind:

- **temporaries** (``<name>.tmp-<pid>``) of a writer that was killed: removed once no process of that pid
  is alive (or, whoever has that pid now, once the file is a day old: pids are reused);
- **orphans**: value files that no index row names, from a writer killed between the rename and the
  commit, or a row deleted by a program that did not delete its file. Removed once older than
  ``GRACE_S``, so a writer between its rename and its commit is never robbed of its file.

And the lock files of single-flight (``locks/``), one per key ever computed: removed when older than
``GRACE_S`` and held by nobody. (If a process opens one just as it is removed, two callers may compute the
same key at once: what happens without the lock, never a wrong value.)

``disk_usage`` is what ``du`` reports: the blocks of every file and folder under the directory, each
counted once, links not followed.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import stat
import time
from pathlib import Path

from .diskfiles import TEMP_NAME
from .store import Collected

__all__ = ["GRACE_S", "collect", "disk_usage"]

GRACE_S = 600.0  # an unreferenced value file or an unused lock file younger than this is left alone
STALE_TEMP_S = 86400.0  # a temporary this old is a dead writer's, whatever process has its pid now
_VALUE_NAME = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")  # the names diskcache gives files
_VALUE_FOLDER = re.compile(r"[0-9a-f]{2}(/[0-9a-f]{2})?")  # ... and their folders


def collect(store_dir: str | os.PathLike[str], locks_dir: str | os.PathLike[str], *,
            grace_s: float = GRACE_S, now: float | None = None) -> Collected:
    """Remove the temporaries of dead writers, value files no index row names and unused lock files."""
    now = time.time() if now is None else now
    root = os.fspath(store_dir)
    temps, values = [], []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            st = _regular(path)
            if st is None:
                continue
            match = TEMP_NAME.search(name)
            if match and _VALUE_NAME.fullmatch(os.path.relpath(path[:len(path) - len(match.group())], root)):
                if not _alive(int(match.group(1))) or st.st_mtime < now - STALE_TEMP_S:
                    temps.append((path, st))  # (nbcache's own names only: never a file of the user's)
            elif st.st_mtime < now - grace_s and _VALUE_NAME.fullmatch(os.path.relpath(path, root)):
                values.append((path, st))
    # (listed before the index is read: a file published since is either named by then or too young)
    named = _named_files(os.path.join(root, "cache.db")) if values else set()
    doomed = temps + [(p, st) for p, st in values if os.path.relpath(p, root) not in named]
    files, freed = _unlink(doomed)
    _prune(root)
    lock_files, lock_bytes = _collect_locks(os.fspath(locks_dir), now - grace_s)
    return Collected(files + lock_files, freed + lock_bytes)


def disk_usage(directory: str | os.PathLike[str]) -> int:
    """Bytes of disk the directory takes, as ``du -s`` counts them (st_blocks of each inode, once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    paths = [os.fspath(directory)]
    for folder, dirs, files in os.walk(directory):
        paths += [os.path.join(folder, name) for name in dirs + files]
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue  # (deleted meanwhile)
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _regular(path: str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _alive(pid: int) -> bool:
    """Whether a process of ``pid`` exists (one of another user counts)."""
    if pid <= 0:
        return False  # (no writer has such a pid; and os.kill(0, ...) would mean the process group)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, OSError):
        return False
    return True


def _named_files(db_path: str) -> set[str]:
    """The value files the index names, read through a read-only connection of its own."""
    uri = Path(db_path).absolute().as_uri() + "?mode=ro"
    con = sqlite3.connect(uri, uri=True, timeout=60)
    try:
        rows = con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL").fetchall()
    finally:
        con.close()
    return {os.path.normpath(name) for (name,) in rows if isinstance(name, str)}


def _unlink(doomed: list[tuple[str, os.stat_result]]) -> tuple[int, int]:
    files = freed = 0
    for path, st in doomed:
        try:
            os.unlink(path)
        except OSError:
            continue
        files += 1
        freed += st.st_blocks * 512
    return files, freed


def _prune(root: str) -> None:
    """Remove the emptied folders of value files (never the store's own folder)."""
    for folder, _, _ in os.walk(root, topdown=False):
        if folder != root and _VALUE_FOLDER.fullmatch(os.path.relpath(folder, root)):
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty


def _collect_locks(locks_dir: str, before: float) -> tuple[int, int]:
    """Remove the lock files not used since ``before`` that nobody holds."""
    try:
        names = os.listdir(locks_dir)
    except OSError:
        return 0, 0
    files = freed = 0
    for name in names:
        path = os.path.join(locks_dir, name)
        st = _regular(path)
        if st is None or st.st_mtime >= before or not name.endswith(".lock"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (raises if someone holds it)
            os.unlink(path)
            files += 1
            freed += st.st_blocks * 512
        except OSError:
            pass
        finally:
            os.close(fd)
    return files, freed
