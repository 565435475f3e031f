"""A key's single-flight lock between processes: ``flock`` on a file of its own.

The system releases a ``flock`` when its holder dies, however it dies, and ``diskgc`` tests a lock file the
same way (``LOCK_NB``) before it removes one nobody holds. This is the call filelock makes on POSIX; nbcache
makes it itself because it needs only this, and importing filelock (4.x: logging, decimal, secrets, its fork
handlers) cost a fresh process's first miss about 10 ms, more than its step's lookup.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from typing import NamedTuple

__all__ = ["Held", "hold", "let_go"]

FIRST_PAUSE_S, LONGEST_PAUSE_S = 0.001, 0.05  # a waiter polls, each pause twice the last, up to 50 ms
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


class Held(NamedTuple):
    """A lock ``hold`` took: its descriptor, and the process that took it."""

    fd: int
    pid: int


def hold(path: str, mode: int, timeout: float) -> Held | None:
    """An exclusive ``flock`` on ``path`` (created with ``mode`` if it is missing), or None if others held it
    for ``timeout`` seconds (negative: wait as long as it takes). ``OSError`` if no lock can be had there at
    all (a file system without ``flock``, a folder in the file's place)."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE_S
    while True:
        fd = _open(path, mode)
        try:
            while not _try(fd):
                left = deadline - time.monotonic()
                if timeout >= 0 and left <= 0:
                    os.close(fd)
                    return None
                time.sleep(pause if timeout < 0 else min(pause, left))
                pause = min(2 * pause, LONGEST_PAUSE_S)
            if _is_still(path, fd):
                return Held(fd, os.getpid())
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # gc removed the file between our open and our lock: lock the one there now


def let_go(held: Held) -> None:
    """Release what ``hold`` returned. In a child forked while it was held (a step's body that forks), only
    the child's copy of the descriptor is closed: unlocking it would unlock the parent's lock too."""
    try:
        if held.pid == os.getpid():
            fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


def _open(path: str, mode: int) -> int:
    """The lock file, opened for writing where that is allowed (on NFS, ``flock`` is a write lock, which needs
    it), else for reading (locally, that is enough: a shared cache's lock file made by another user)."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | flags, mode)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
    return os.open(path, os.O_RDONLY | flags, mode)


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
