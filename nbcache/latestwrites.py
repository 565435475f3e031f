"""The latest ingredients of each step, written only when they changed: a hit writes none itself.

A step's latest ingredients (``Latest``) say what its latest call was made of, so that the next miss can
tell what changed. A call that stored a result, or could not, writes them at once. A hit leaves them to a
background worker, which reads what is stored and writes only if it is another key's (the first hit of a
process knows nothing of what is stored; it is usually the same key), once no hit came for a moment. A newer
write of the process wins over a background write queued before it; the worker is flushed when the interpreter
exits.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

from .background import Worker
from .forksafe import ForkSafeLock
from .entry import Latest
from .frame import Damaged
from .store import Store

__all__ = ["LatestWrites", "MAX_WAIT_S", "QUIET_S"]

# A hit's write waits until no hit came for QUIET_S (MAX_WAIT_S at most): begun at once, its thread would take
# the interpreter lock from the hit's own end whenever that makes a system call, for up to the 5 ms switch
# interval (the history's append, on a step's first hit in a process, took 1 ms instead of 0.1 so).
QUIET_S = 0.005
MAX_WAIT_S = 0.05


class LatestWrites:
    """What this process knows each step's latest record to hold, by (store, step identity)."""

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker or Worker("nbcache-latest", flush_at_exit=True)
        self._written: dict[tuple[int, str], str] = {}
        self._lock = ForkSafeLock()
        self._last_hit = 0.0  # (monotonic) when the last hit asked for a write

    def write(self, store: Store, identity: str, latest: Latest, *, force: bool = False) -> None:
        """Write ``latest`` now, unless (``force`` aside) this process knows it is written already."""
        slot = (id(store), identity)
        # (one that says why nothing was stored, or that the run failed, is no hit's latest: a hit writes its own)
        written = f"{latest.key} {latest.uncached} {latest.failed}" if latest.uncached or latest.failed else latest.key
        if force or self._written.get(slot) != written:
            with self._lock, contextlib.suppress(Exception):  # (only a later reason's wording needs it)
                store.put_latest(identity, latest)
                self._written[slot] = written

    def write_later(self, store: Store, identity: str, key: str, latest: Callable[[], Latest]) -> None:
        """On a hit of ``key``: make it the latest of ``identity`` unless it is already, on the worker's
        thread (reading what is stored, and writing ``latest()`` if that is another key)."""
        slot = (id(store), identity)
        self._last_hit = time.monotonic()
        if self._written.get(slot) == key:
            return
        self._written[slot] = key

        def write_if_stale() -> None:
            give_up = time.monotonic() + MAX_WAIT_S
            while self._written.get(slot) == key and time.monotonic() < give_up:
                quiet_in = self._last_hit + QUIET_S - time.monotonic()
                if quiet_in <= 0:
                    break
                time.sleep(quiet_in)
            with self._lock:
                if self._written.get(slot) != key:
                    return  # a newer call of the step wrote its own
                try:
                    stored = store.get_latest(identity)
                except Damaged:
                    stored = None
                if stored is None or stored.key != key or stored.uncached or stored.failed:
                    store.put_latest(identity, latest())

        self.worker.submit(write_if_stale)

    def forget(self, store: Store) -> None:
        """Know nothing of ``store`` (it was cleared)."""
        for slot in [s for s in self._written if s[0] == id(store)]:
            del self._written[slot]
