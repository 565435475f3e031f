"""Opening a cache ahead of its first call: the signing key read and the store opened, so that the first
step finds both ready.

``import nbcache`` warms the default cache, and ``set_cache_dir`` the directory it sets, if that directory
holds a cache already: nothing is created and no key is made ahead of use. A key read ahead is used only if
what chooses the key (``NBCACHE_KEY``, ``NBCACHE_KEY_FILE``, ``HOME``, ``XDG_CONFIG_HOME``) is unchanged
when it is first needed.

The opening runs on a thread of its own, and the import (or ``set_cache_dir``) waits for it, ``WAIT_S`` at
most: about 12 ms of work (importing diskcache and SQLite, opening the index) that would cost the same on a
thread running beside the user's code, since Python runs one thread at a time, and more, since the two
would take turns at the interpreter lock. The thread is there for an index another process keeps locked for
long: the import goes on after ``WAIT_S`` and the first step waits for the rest. Nothing else is done ahead:
a first miss imports cloudpickle itself. (A library imported on this thread could register ``os.fork``
handlers while a fork waits for background work: the after-fork one would run alone. filelock, when nbcache
used it, printed a ``KeyError`` so.)
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
import time
from typing import Callable

from .audit import unobserved
from .forksafe import background_work
from .keys import load_key

__all__ = ["WAIT_S", "Warming", "key_sources"]

WAIT_S = 1.0  # how long the import waits for the opening (usually ~12 ms)

def key_sources() -> tuple:
    """What decides which signing key is used (``keys.py``): set after ``import nbcache``, it still counts."""
    return (os.environ.get("NBCACHE_KEY"), os.environ.get("NBCACHE_KEY_FILE"), os.environ.get("XDG_CONFIG_HOME"),
            os.environ.get("HOME"))


class Warming:
    """One cache's warm-up: its thread, whether it is done, and the key it read."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._ready: threading.Event | None = None
        self._key: tuple[tuple, bytes] | None = None  # (what chose it, the key)

    def start(self, open_store: Callable[[], None], *, need_key: bool) -> None:
        """Read the key (``need_key``) and ``open_store()`` on a new thread."""
        ready = threading.Event()

        def ahead() -> None:
            try:  # (unobserved: no step under way depends on what nbcache reads of its own cache)
                with background_work(), unobserved, contextlib.suppress(Exception):  # (what fails here fails again)
                    if need_key:
                        sources = key_sources()
                        key = load_key(make=False)
                        if key is not None:
                            self._key = (sources, key)
                            hmac.digest(key, b"", "sha256")  # (a process's first HMAC sets up its hash)
                    open_store()
            finally:
                ready.set()

        self.thread = threading.Thread(target=ahead, name="nbcache-warm", daemon=True)
        self._ready = ready
        self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Until the key is read and the store open (or that failed), or ``timeout`` seconds have passed; at
        once if no warm-up is running."""
        thread, ready = self.thread, self._ready
        if thread is not None and ready is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not ready.wait(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))):
                if not thread.is_alive():  # (a forked child has no such thread)
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return
            self.thread = None

    def take_key(self) -> bytes | None:
        """The key read ahead, if what chooses the key has not changed since (given once)."""
        warmed, self._key = self._key, None
        return warmed[1] if warmed and warmed[0] == key_sources() else None
