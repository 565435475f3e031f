"""Opening a cache ahead of its first call: the signing key read and the store opened on a background
thread, while the notebook imports its libraries, so that its first step finds both ready.

``import nbcache`` warms the default cache, and ``set_cache_dir`` the directory it sets, if that directory
holds a cache already: nothing is created and no key is made ahead of use. A key read ahead is used only if
what chooses the key (``NBCACHE_KEY``, ``NBCACHE_KEY_FILE``, ``HOME``, ``XDG_CONFIG_HOME``) is unchanged
when it is first needed. Once the store is open, cloudpickle, which a step's first miss needs to store its
result, is imported on the cache's background thread too. Not filelock (single-flight's lock): it registers
handlers of its own for ``os.fork``, and imported while a fork waits for the background work, its handler
after the fork would run without the one before it (and print a ``KeyError``); a first miss imports it.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import threading
from typing import Callable

from .audit import unobserved
from .forksafe import background_work
from .keys import load_key
from .pickler import NotebookPickler

__all__ = ["Warming", "key_sources", "ready_for_a_miss"]

def key_sources() -> tuple:
    """What decides which signing key is used (``keys.py``): set after ``import nbcache``, it still counts."""
    return (os.environ.get("NBCACHE_KEY"), os.environ.get("NBCACHE_KEY_FILE"), os.environ.get("XDG_CONFIG_HOME"),
            os.environ.get("HOME"))


def ready_for_a_miss() -> None:
    """Import what a step's first miss needs to store its result (cloudpickle)."""
    with contextlib.suppress(Exception):
        NotebookPickler(io.BytesIO(), notebook=None)


class Warming:
    """One cache's warm-up: its thread, whether it is done, and the key it read."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self._ready: threading.Event | None = None
        self._key: tuple[tuple, bytes] | None = None  # (what chose it, the key)

    def start(self, open_store: Callable[[], None], *, need_key: bool, then: Callable[[], None]) -> None:
        """Read the key (``need_key``) and ``open_store()`` on a new thread; ``then()`` once that is done."""
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
            then()

        self.thread = threading.Thread(target=ahead, name="nbcache-warm", daemon=True)
        self._ready = ready
        self.thread.start()

    def wait(self) -> None:
        """Until the key is read and the store open (or that failed); at once if no warm-up is running."""
        thread, ready = self.thread, self._ready
        if thread is not None and ready is not None:
            while not ready.wait(0.05) and thread.is_alive():  # (a forked child has no such thread)
                pass
            self.thread = None

    def take_key(self) -> bytes | None:
        """The key read ahead, if what chooses the key has not changed since (given once)."""
        warmed, self._key = self._key, None
        return warmed[1] if warmed and warmed[0] == key_sources() else None
