"""A ``Cache``'s link to its team cache (``remote.py``): which remote it uses, copying a result found there
into the local store, and uploading what this process stores, in the background.

The remote is ``set_remote``'s if one was set, else ``NBCACHE_REMOTE``'s (read when first needed; an unusable
one is said once and ignored). Uploads run on a worker of their own, in the order results were stored; the
interpreter waits for them when it exits (``UPLOAD_FLUSH_S`` at most); ``flush`` waits for them on demand.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any, Callable

from .background import Worker
from .entry import Entry
from .errors import warn
from .forksafe import ForkSafeLock
from .frame import Damaged
from .remote import REMOTE_ENV, Remote, RemoteError, author, bytes_of, size_of
from .store import Store
from .teamentry import INLINE, TeamEntry

__all__ = ["TeamCache", "UPLOAD_FLUSH_S", "UPLOAD_QUEUE_MAX", "upload"]

UPLOAD_FLUSH_S = 60.0  # how long an exiting interpreter waits for its uploads
UPLOAD_QUEUE_MAX = 1000  # uploads waiting at most; past it, results stay local until ``nbcache push``


class TeamCache:
    """The team cache of one ``Cache``, whose ``check_seal(key, entry)`` raises ``Damaged`` for an entry not
    sealed with its key."""

    def __init__(self, check_seal: Callable[[str, Entry], None]) -> None:
        self._check_seal = check_seal
        self._chosen = False  # whether set() chose the remote (else it is NBCACHE_REMOTE's)
        self._remote: Remote | None = None
        self._from_env: str | None = None
        self._uploads: Worker | None = None
        self._uploads_lock = ForkSafeLock()  # (threads storing at once make one worker, not one each)
        self._queue_full_said = False

    def set(self, url: str | None, storage_options: dict[str, Any]) -> None:
        """Use the remote at ``url`` (``None``: ``NBCACHE_REMOTE`` again; ``""``: none). Raises
        ``RemoteError`` if it cannot be used as given; nothing is sent to it yet."""
        self._remote = Remote(url, storage_options) if url else None
        self._chosen = url is not None
        self._from_env = None  # (``NBCACHE_REMOTE`` is read again when the remote is next needed)

    def use(self, remote: Remote | None) -> None:
        """Use ``remote`` as it is (a Dask worker uses its client's: ``cluster.py``)."""
        self._remote, self._chosen, self._from_env = remote, True, None

    @property
    def remote(self) -> Remote | None:
        """The remote in use, if any."""
        if self._chosen:
            return self._remote
        url = os.environ.get(REMOTE_ENV) or None
        if url != self._from_env:
            self._from_env, self._remote = url, None
            if url:
                try:
                    self._remote = Remote(url)
                except RemoteError as exc:
                    warn(f"nbcache: {REMOTE_ENV} is ignored: {exc}")
        return self._remote

    # reading
    def pull(self, store: Store, key: str) -> tuple[TeamEntry, Entry] | None:
        """Copy the result of ``key`` from the remote into ``store`` (``take``): the remote's record of it and
        the entry, or None if there is none to use (a foreign or changed entry is refused with a warning)."""
        remote = self.remote
        if remote is None:
            return None
        got = remote.get_entry(key)
        if got is None:
            return None
        found, body = got
        try:
            entry = self.take(remote, store, key, found, body)
        except Damaged as exc:
            warn(f"nbcache: the team cache {remote.url} holds a result for this call that is refused ({exc});"
                 " it is computed here instead")
            return None
        return None if entry is None else (found, entry)

    def take(self, remote: Remote, store: Store, key: str, found: TeamEntry, body: bytes | None = None) -> Entry | None:
        """Copy ``found``, the remote's record of ``key``, into ``store``: the values ``store`` lacks, then the
        entry. ``body``: the entry's whole object (if it is not given, and a value it carries is needed, it is
        read). The entry, or None if a value could not be copied (no entry then); ``Damaged`` (nothing copied)
        if the entry is not sealed with this cache's key, or was changed since. ``nbcache pull`` uses it too."""
        entry = Entry.from_json(found.entry)
        self._check_seal(key, entry)
        carried = found.carried()
        wanted = [address for address in dict.fromkeys(entry.blobs) if not store.has_blob(address)]
        if body is None and carried.keys() & set(wanted):
            got = remote.get_entry(key)
            return None if got is None else self.take(remote, store, key, *got)
        view = memoryview(b"" if body is None else body)
        for address in wanted:
            if address in carried:
                start, size = carried[address]
                store.put_blob_file(address, view[start:start + size])
            elif not remote.copy_blob(address, found.sizes.get(address),
                                      lambda f, a=address: store.put_blob_file(a, f)):
                return None  # (its values are checked when loaded: signed with the key, under their name)
        store.put_entry(key, entry)
        return entry

    # writing
    def push_later(self, store: Store, key: str, entry: Entry) -> None:
        """Upload the result of ``key`` (stored in ``store`` just now) in the background."""
        remote = self.remote
        if remote is None:
            return
        at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with self._uploads_lock:
            if self._uploads is None:
                self._uploads = Worker("nbcache-upload", flush_at_exit=True, flush_s=UPLOAD_FLUSH_S)
            uploads = self._uploads
        if uploads.pending >= UPLOAD_QUEUE_MAX:  # (a bounded queue: the remote is slower than the steps)
            if not self._queue_full_said:
                self._queue_full_said = True
                warn(f"nbcache: {UPLOAD_QUEUE_MAX} uploads to the team cache {remote.url} are waiting; results"
                     " stored meanwhile stay local: `nbcache push` uploads them")
            return
        uploads.submit(lambda: self._push(remote, store, key, entry, at))

    def _push(self, remote: Remote, store: Store, key: str, entry: Entry, at: str) -> None:
        if remote.available:
            upload(remote, store, key, entry, at)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every upload asked for has been done (or given up); True if all were."""
        return self._uploads is None or self._uploads.drain(timeout)


def upload(remote: Remote, store: Store, key: str, entry: Entry, at: str,
           there: set[str] | None = None) -> dict[str, int] | None:
    """Upload the result of ``key``: its values up to ``INLINE`` bytes in all inside its entry, the others
    first, each by itself, so that no entry is published without all of them. A value in ``there`` (those known
    to be on the remote; it gets those sent) is not sent by itself again. The bytes of each value sent, by
    address; None if one is gone from ``store`` or the remote failed."""
    there = set() if there is None else there
    sizes, sent, carried, room = {}, {}, {}, INLINE
    for address in dict.fromkeys(entry.blobs):
        source = store.open_blob(address)
        if source is None:
            return None
        try:
            size = sizes[address] = size_of(source)
            if size <= room:
                carried[address] = bytes_of(source)
                room -= size
                sent[address] = size
            elif address not in there:
                if not remote.put_blob(address, source):
                    return None  # (no entry without all its blobs)
                sent[address] = size
                there.add(address)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    record = TeamEntry(entry.to_json(), author(), at, sizes, tuple((a, len(data)) for a, data in carried.items()))
    return sent if remote.put_entry(key, record, carried.values()) else None
