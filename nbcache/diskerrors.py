"""Why a cache directory cannot be used, told apart so that the advice fits: a read-only file system, a full
disk, permission denied, or a damaged index. Only a damaged index is worth moving aside; the others leave a
cache that is fine, which works again as it was once space is freed or permissions are fixed.
"""

from __future__ import annotations

import errno
import os
import pwd
import sqlite3

__all__ = ["StoreError", "describe"]

READ_ONLY, FULL, PERMISSION, DAMAGED, OTHER = "read-only", "full", "permission", "damaged", "other"
_CHOOSE = "set NBCACHE_DIR or call nbcache.set_cache_dir() to choose another cache directory"
_CHOOSE_FIRST = _CHOOSE[0].upper() + _CHOOSE[1:]
_ERRNO = {READ_ONLY: errno.EROFS, FULL: errno.ENOSPC, PERMISSION: errno.EACCES, DAMAGED: errno.EIO}
# SQLite's primary result codes (https://sqlite.org/rescode.html)
_SQLITE_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_SQLITE_FULL = 13
_SQLITE_ACCESS = {3, 8, 10, 14, 23}  # PERM, READONLY, IOERR, CANTOPEN, AUTH: what the directory may explain


class StoreError(OSError):
    """A cache directory nbcache cannot read or write, and what to do about it. ``kind`` is one of
    ``"read-only"``, ``"full"``, ``"permission"``, ``"damaged"``, ``"other"``; ``errno`` is set to match
    (EROFS, ENOSPC, EACCES, EIO) or to the original error's."""

    def __init__(self, kind: str, message: str, code: int | None, directory: str) -> None:
        super().__init__(code, message)
        self.kind = kind
        self.message = message
        self.directory = directory

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:
        return type(self), (self.kind, self.message, self.errno, self.directory)


def describe(exc: BaseException, directory: str | os.PathLike[str]) -> StoreError:
    """The ``StoreError`` that says what ``exc``, raised while opening or writing the cache of
    ``directory``, means for the user."""
    directory = os.fspath(directory)
    if isinstance(exc, StoreError):
        return exc
    kind = _kind(exc, directory)
    intact = " Its cached results are intact." if os.path.isdir(os.path.join(directory, "store")) else ""
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    if kind == READ_ONLY:
        message = (f"nbcache cannot write to its cache directory {directory}: the file system is read-only"
                   f" ({detail}). {_CHOOSE_FIRST}, or use this one again once it is writable.{intact}")
    elif kind == FULL:
        message = (f"nbcache cannot write to its cache directory {directory}: no space is left on its device"
                   f" ({detail}). Free some space on that device (`df -h {directory}` shows it; once a little is"
                   f" free, `nbcache clear --older-than 30d` removes old results), or {_CHOOSE}.{intact}")
    elif kind == PERMISSION:
        message = (f"nbcache may not use its cache directory {directory}: permission denied ({detail};"
                   f" {_owner(directory)}). Fix its permissions (a cache directory belongs to the user who"
                   f" runs the steps), or {_CHOOSE}.")
    elif kind == DAMAGED:
        message = (f"nbcache's index in {directory} is damaged ({detail}). Its results cannot be read: move"
                   f" it aside (mv {directory} {directory}.damaged) or delete that directory to start a fresh"
                   f" cache, or {_CHOOSE}; the steps then run again.")
    else:
        message = f"nbcache cannot use its cache directory {directory} ({detail}); {_CHOOSE}."
    code = _ERRNO.get(kind, exc.errno if isinstance(exc, OSError) else None)
    return StoreError(kind, message, code, directory)


def _kind(exc: BaseException, directory: str) -> str:
    if isinstance(exc, OSError):
        if exc.errno == errno.EROFS:
            return READ_ONLY
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return FULL
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PERMISSION
        return _probe(directory) or OTHER
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        text = str(exc).lower()
        if primary in _SQLITE_DAMAGED or "not a database" in text or "malformed" in text:
            return DAMAGED
        if primary == _SQLITE_FULL or "disk is full" in text:
            return _probe(directory) or FULL
        if primary in _SQLITE_ACCESS or "readonly" in text or "unable to open" in text:
            return _probe(directory) or OTHER
    return OTHER


def _probe(directory: str) -> str | None:
    """What the directory itself says is wrong with it, if anything: read-only, full or not writable."""
    path = directory
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # (the nearest folder that exists: where the cache would be created)
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if (fs.f_bfree if os.geteuid() == 0 else fs.f_bavail) == 0:
        return FULL
    index = os.path.join(directory, "store", "cache.db")
    for target in (path, os.path.join(directory, "store"), index):
        wanted = os.R_OK | os.W_OK | (os.X_OK if os.path.isdir(target) else 0)
        if os.path.exists(target) and not os.access(target, wanted):
            return PERMISSION
    return None


def _owner(directory: str) -> str:
    """Who owns the directory, and its mode, for the message."""
    path = directory
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.stat(path)
    except OSError:
        return "it cannot be examined"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    mine = " (you)" if st.st_uid == os.geteuid() else f"; you are uid {os.geteuid()}"
    return f"{path} belongs to {owner}{mine}, mode {oct(st.st_mode & 0o777)}"
