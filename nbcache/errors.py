"""The exception and warning types of nbcache. Imports nothing of ours, so every module can use it."""

from __future__ import annotations

import collections
import os
import sys
import threading
import warnings

__all__ = ["SAID", "CacheWarning", "NBCacheError", "Said", "UncacheableError", "warn"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class NBCacheError(Exception):
    """Base class of the errors nbcache raises on purpose."""


class UncacheableError(NBCacheError, TypeError):
    """A value cannot be turned into a cache key.

    ``type_name`` is the offending type and ``path`` says where it sits inside the value that was being
    hashed, for example ``args[1]['loader']``.
    """

    def __init__(self, type_name: str, path: str, detail: str = "") -> None:
        self.type_name = type_name
        self.path = path
        self.detail = detail
        message = f"cannot hash {type_name} at {path}"
        if detail:
            message += f": {detail}"
        message += (
            ". nbcache keys a step on the content of its inputs; if this one does not change the result,"
            " leave it out of the key: @step(ignore=[...]) for an argument, %%step --ignore NAME for a"
            " variable a cell reads"
        )
        super().__init__(message)


class CacheWarning(UserWarning):
    """Something went wrong with the cache, but the user's code ran and returned its real result."""


class Said:
    """The latest warnings nbcache issued in this process, numbered (a bounded record): what a call on a Dask
    worker said is sent back to the client with its runs (``cluster.py``), where the user sees it."""

    KEPT = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._messages: collections.deque[tuple[int, str]] = collections.deque(maxlen=self.KEPT)

    def add(self, message: str) -> None:
        with self._lock:
            self._count += 1
            self._messages.append((self._count, message))

    def mark(self) -> int:
        """Where the record is now: ``since`` gives what was said after."""
        return self._count

    def since(self, mark: int) -> list[tuple[int, str]]:
        """The warnings issued after ``mark`` (those still kept), with their numbers."""
        with self._lock:
            return [(n, message) for n, message in self._messages if n > mark]


SAID = Said()


def warn(message: str, *, relayed: bool = False) -> None:
    """Issue a CacheWarning attributed to the user's line: the first frame outside nbcache. ``relayed``: one
    said elsewhere (a Dask worker), not this process's to send on."""
    if not relayed:
        SAID.add(message)
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    if frame is None or frame.f_code.co_filename == threading.__file__:  # nbcache's own thread: no user line
        level = 2
    warnings.warn(message, CacheWarning, stacklevel=level)
