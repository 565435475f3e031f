"""What a file held before a run changed it: a run that reads a file and then writes it (a counter, an atomic
save over it, a SQLite database it updates) or appends to it and reads it back depends on that, not on what
it holds after the run.

``audit.py`` takes it as the file is about to be changed (``prior_of``): the content's digest, or, for a
file opened to append to, its length, inode and first megabyte's digest only (a big log appended to is not
read whole), from which ``appended_digest`` gives the digest of what it held, if it was only appended to.
"""

from __future__ import annotations

import os

from .checks import CHANGED_BY_THE_RUN, HEAD, NO_FILE, file_digest

__all__ = ["APPENDED", "STATED", "appended_digest", "database_stat", "prior_digest", "prior_of"]

APPENDED = "appended to at "  # a prior of a file appended to: then its length, inode and head's digest
STATED = "stat "  # a prior of a SQLite database: its files' stat (``database_stat``) as it was opened


def prior_of(path: str, *, appends: bool = False) -> str:
    """What ``path`` holds now, about to be written (``appends``: only at its end)."""
    try:
        st = os.stat(path)
    except OSError:
        return NO_FILE
    if appends:
        return f"{APPENDED}{st.st_size}:{st.st_ino}:{file_digest(path, min(st.st_size, HEAD))}"
    return file_digest(path)


def appended_digest(path: str, before: str) -> str:
    """The digest of what a file appended to held before (``before``: its prior), if it was only appended to
    since (the same file, as long, beginning alike); else ``CHANGED_BY_THE_RUN``: what it held is gone."""
    size, inode, head = before[len(APPENDED):].split(":")
    try:
        st = os.stat(path)
    except OSError:
        return CHANGED_BY_THE_RUN
    if st.st_ino != int(inode) or st.st_size < int(size) or file_digest(path, min(int(size), HEAD)) != head:
        return CHANGED_BY_THE_RUN
    return file_digest(path, int(size))


def database_stat(path: str) -> str:
    """What a SQLite database's files are, by their stat (the database and its write-ahead log), as a prior:
    what a run reads of it and what it writes cannot be told apart, so one it changed runs every time."""
    found = []
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except OSError:
            found.append(None)
            continue
        found.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return STATED + repr(found)


def prior_digest(path: str, before: str) -> str:
    """The digest of what a file the run read and wrote held before: taken then; of a file appended to, its
    content up to the length it had (if it was only appended to); of a SQLite database, none if its files
    are as they were (its check as a file read covers it), else one that never holds."""
    if before.startswith(APPENDED):
        return appended_digest(path, before)
    if before.startswith(STATED):
        return "" if before == database_stat(path) else CHANGED_BY_THE_RUN
    return before
