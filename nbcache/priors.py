"""What a file held before a run changed it: a run that reads a file and then writes it (a counter, an atomic
save over it) or appends to it and reads it back depends on that, not on what it holds after the run.

``audit.py`` takes it as the file is about to be changed (``prior_of``): the content's digest, or, for a
file opened to append to, its length, inode and first megabyte's digest only (a big log appended to is not
read whole), from which ``appended_digest`` gives the digest of what it held, if it was only appended to.
"""

from __future__ import annotations

import os

from .checks import NO_FILE, file_digest

__all__ = ["APPENDED", "CHANGED_BY_THE_RUN", "appended_digest", "prior_of"]

APPENDED = "appended to at "  # a prior of a file appended to: then its length, inode and head's digest
CHANGED_BY_THE_RUN = "changed by the run"  # the digest of what a file held, gone: its check never holds
HEAD = 1 << 20  # the bytes of a file appended to that are hashed as it is opened


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
