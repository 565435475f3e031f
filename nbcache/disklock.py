"""A key's single-flight lock between processes: ``flock`` on a file of its own.

The system releases a ``flock`` when its holder dies, however it dies, and ``diskgc`` tests a lock file the
same way (``LOCK_NB``) before it removes one nobody holds. This is the call filelock makes on POSIX; nbcache
makes it itself because it needs only this, and importing filelock (4.x: logging, decimal, secrets, its fork
handlers) cost a fresh process's first miss about 10 ms, more than its step's lookup.
"""

from __future__ import annotations

import fcntl
import os
import time

from .diskfiles import make_file

__all__ = ["hold", "let_go"]

FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.001, 0.05  # a waiter polls, each pause twice the last, up to 50 ms


def hold(path: str, mode: int, timeout: float) -> int | None:
    """A descriptor of ``path`` (created with ``mode`` if it is missing) that holds an exclusive ``flock`` on
    it, or None if others held it for ``timeout`` seconds (negative: wait as long as it takes). ``OSError``
    if no lock can be had there at all (a file system without ``flock``, a folder in the file's place)."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE_S
    while True:
        make_file(path, mode)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # (flock needs no write access)
        try:
            while not _try(fd):
                left = deadline - time.monotonic()
                if timeout >= 0 and left <= 0:
                    os.close(fd)
                    return None
                time.sleep(pause if timeout < 0 else min(pause, left))
                pause = min(2 * pause, LONGEST_PAUSE_S)
            if _is_still(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # gc removed the file between our open and our lock: lock the one there now


def let_go(fd: int) -> None:
    """Release what ``hold`` returned."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _try(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # (EWOULDBLOCK: held by another descriptor, in this process or another)
        return False
    return True


def _is_still(path: str, fd: int) -> bool:
    """Whether ``path`` still names the file ``fd`` locked."""
    try:
        there = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)
