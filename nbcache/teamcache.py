"""A ``Cache``'s link to its team cache (``remote.py``): which remote it uses, copying a result found there
into the local store, and uploading what this process stores, in the background.

A hit on the team cache is served before the result is in the local store: the values its entry's object
carries are loaded from that object in memory, then written into the store, with the entry, on the ``Cache``'s
background worker (``keep_later``); a call of the same key meanwhile finishes that writing first (``settle``).

The remote is ``set_remote``'s if one was set, else ``NBCACHE_REMOTE``'s (read when first needed; an unusable
one is said once and ignored). Uploads run on a worker of their own, in the order results were stored; the
interpreter waits for them when it exits (``UPLOAD_FLUSH_S`` at most); ``flush`` waits for them on demand.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from .background import Job, Worker
from .entry import Entry
from .errors import warn
from .forksafe import ForkSafeLock
from .frame import Damaged
from .frameformat import NotSigned
from .framecheck import Checking, StreamCheck, verify_frame
from .keys import key_id
from .remote import REMOTE_ENV, Remote, RemoteError, author, bytes_of, size_of
from .store import Store
from .teamentry import INLINE, TeamEntry

__all__ = ["Pulled", "TeamCache", "UPLOAD_FLUSH_S", "UPLOAD_QUEUE_MAX", "keep", "upload"]

UPLOAD_FLUSH_S = 60.0  # how long an exiting interpreter waits for its uploads
UPLOAD_QUEUE_MAX = 1000  # uploads waiting at most; past it, results stay local until ``nbcache push``


@dataclass(frozen=True)
class Pulled:
    """A result found in the team cache for a hit: the remote's record of it, its entry (sealed with the
    cache's key), and the values its object carries that the local store lacks, as views of that object, by
    address (loaded from there, and so checked, before they are written into the store)."""

    found: TeamEntry
    entry: Entry
    carried: dict[str, memoryview]


class _Keeping:
    """A pulled result being written into a store: its job, whether its writing started (or it was
    forgotten), and when it is done."""

    __slots__ = ("store", "pulled", "job", "started", "done")

    def __init__(self, store: Store, pulled: Pulled) -> None:
        self.store, self.pulled = store, pulled
        self.job: Job | None = None
        self.started = False
        self.done = threading.Event()


class _Unread(Exception):
    """A value the entry's object carries is needed, and that object was not read."""


class TeamCache:
    """The team cache of one ``Cache``, whose ``check_seal(key, entry)`` raises ``Damaged`` for an entry not
    sealed with its key, ``seal(key, entry)`` seals one, and ``key()`` is that key (its values are signed with
    it too); ``background`` writes the results a hit pulled into the local store."""

    def __init__(self, check_seal: Callable[[str, Entry], None], seal: Callable[[str, Entry], Entry],
                 key: Callable[[], bytes], background: Worker) -> None:
        self._check_seal, self._seal = check_seal, seal
        self._key = key
        self._background = background
        self._others: set[str] = set()  # cache keys whose entry there is sealed with another key: not replaced
        self._refused: set[str] = set()  # cache keys whose result from there was found damaged: not taken again
        self._damaged_now: dict[str, str] = {}  # ... refused as it was pulled, why (for the run's reason, once)
        self._keeping: dict[str, _Keeping] = {}  # results pulled, being written into the local store
        self._keeping_lock = ForkSafeLock()
        self._keep_failed_said = False
        self._chosen = False  # whether set() chose the remote (else it is NBCACHE_REMOTE's)
        self._remote: Remote | None = None
        self._from_env: str | None = None
        self._uploads: Worker | None = None
        self._uploads_lock = ForkSafeLock()  # (threads storing at once make one worker, not one each)
        self._queue_full_said = False

    def _key_id(self) -> str:
        return key_id(self._key())

    def set(self, url: str | None, storage_options: dict[str, Any]) -> None:
        """Use the remote at ``url`` (``None``: ``NBCACHE_REMOTE`` again; ``""``: none). Raises
        ``RemoteError`` if it cannot be used as given; nothing is sent to it yet."""
        self._remote = Remote(url, storage_options) if url else None
        self._chosen = url is not None
        self._from_env = None  # (``NBCACHE_REMOTE`` is read again when the remote is next needed)
        self._others.clear()  # (what another remote holds says nothing of this one)

    def use(self, remote: Remote | None) -> None:
        """Use ``remote`` as it is (a Dask worker uses its client's: ``cluster.py``)."""
        self._remote, self._chosen, self._from_env = remote, True, None
        self._others.clear()

    @property
    def remote(self) -> Remote | None:
        """The remote in use, if any."""
        if self._chosen:
            return self._remote
        url = os.environ.get(REMOTE_ENV) or None
        if url != self._from_env:
            self._from_env, self._remote = url, None
            self._others.clear()
            if url:
                try:
                    self._remote = Remote(url)
                except RemoteError as exc:
                    warn(f"nbcache: {REMOTE_ENV} is ignored: {exc}")
        return self._remote

    # reading
    def pull(self, store: Store, key: str) -> Pulled | None:
        """The result of ``key`` from the remote, for a hit (one request, and one per value not carried in its
        entry's object, copied into ``store`` at once), or None if there is none to use (a foreign or changed
        entry is refused with a warning). The values its object carries that ``store`` lacks are left in
        memory, and the entry unwritten: the caller loads those from there (``Pulled.carried``), then
        ``keep_later``."""
        remote = self.remote
        if remote is None or key in self._refused:
            return None
        got = remote.get_entry(key)
        if got is None:
            if (problem := remote.unreadable.pop(key, None)) is not None:
                self._damaged_now[key] = f"its entry: {problem}"
            return None
        found, body = got
        try:
            fetched = self._fetch(remote, store, key, found, body)
        except Damaged as exc:
            if isinstance(exc, NotSigned) and found.key and found.key != self._key_id():  # (not damage)
                self._others.add(key)
                warn(f"nbcache: the team cache {remote.url} holds a result for this call sealed with another key"
                     f" (key id {found.key}; this cache signs with {self._key_id()}), which is refused; it is"
                     " computed here, and not uploaded over it. To share results, everyone sets the team's key:"
                     " NBCACHE_KEY or NBCACHE_KEY_FILE (docs/team.md)")
                return None
            warn(f"nbcache: the team cache {remote.url} holds a result for this call that is refused ({exc});"
                 " it is computed here instead")
            self._damaged_now[key] = str(exc)
            return None
        if fetched is None:
            return None
        return Pulled(found, *fetched)

    def keep_later(self, store: Store, key: str, pulled: Pulled) -> None:
        """Write ``pulled``'s carried values, then its entry, into ``store`` on the background worker (once its
        values were loaded: what did not verify is never kept; after the check of the values it mapped,
        queued before). Until it is done, ``settle(key)`` finishes it, and ``forget(key)`` cancels it."""
        keeping = _Keeping(store, pulled)
        with self._keeping_lock:  # (noted before the job can end, which forgets it)
            if key in self._keeping:  # (another thread pulled it too: that one writes it)
                return
            self._keeping[key] = keeping
            keeping.job = self._background.submit(lambda: self._keep(key, keeping))

    def settle(self, key: str, timeout: float = 5.0) -> bool:
        """Finish keeping the result of ``key`` this process pulled, if that is under way, waiting for another
        thread doing it (True then: look in the store again)."""
        with self._keeping_lock:  # (its job given: ``keep_later`` notes both at once)
            keeping = self._keeping.get(key)
        if keeping is None:
            return False
        if keeping.job is not None and keeping.job.settle(timeout):  # (taken back from the queue: done here)
            self._keep(key, keeping)
        keeping.done.wait(timeout)
        return True

    def settle_all(self) -> None:
        """``settle`` every result being kept (before the store is cleared or evicted from)."""
        for key in list(self._keeping):
            self.settle(key)

    def forget(self, key: str) -> bool:
        """Cancel keeping the result of ``key`` (its mapped values were found damaged); True if it was not
        written yet, so never will be (False: it is in the store, if it could be written)."""
        with self._keeping_lock:
            keeping = self._keeping.pop(key, None)
            if keeping is None:
                return False
            cancelled, keeping.started = not keeping.started, True  # (its job, or a settle, then writes nothing)
        if cancelled:
            keeping.done.set()
        else:  # (being written by another thread: waited for, to be found in the store)
            keeping.done.wait(5.0)
        return cancelled

    def damaged_now(self, key: str) -> str | None:
        """Why ``pull`` just refused the result of ``key`` as damaged (once); None if it did not."""
        return self._damaged_now.pop(key, None)

    def refuse(self, key: str, blobs: tuple[str, ...]) -> None:
        """The result of ``key`` served from here was found damaged (its ``blobs``): it is not taken from the
        remote again, but computed, and its upload replaces the damaged copies."""
        self._refused.add(key)
        remote = self.remote
        if remote is not None:
            remote.distrust(blobs)

    def _keep(self, key: str, keeping: _Keeping) -> None:
        with self._keeping_lock:
            if keeping.started:  # (done by another thread, or forgotten)
                return
            keeping.started = True
        try:
            keep(keeping.store, key, keeping.pulled.entry, keeping.pulled.carried)
        except Exception as exc:  # (served already: it is looked for in the team cache again when next needed)
            if not self._keep_failed_said:
                self._keep_failed_said = True
                warn(f"nbcache: a result served from the team cache could not be written into the local cache"
                     f" ({type(exc).__name__}: {exc}); it is fetched again when it is next needed")
        finally:
            with self._keeping_lock:
                if self._keeping.get(key) is keeping:  # (not a later pull's)
                    del self._keeping[key]
            keeping.done.set()

    def take(self, remote: Remote, store: Store, key: str, found: TeamEntry, body: bytes | None = None) -> Entry | None:
        """Copy ``found``, the remote's record of ``key``, into ``store``: the values ``store`` lacks, then the
        entry. ``body``: the entry's whole object (if it is not given, and a value it carries is needed, it is
        read). The entry, or None if a value could not be copied (no entry then); ``Damaged`` (nothing copied)
        if the entry is not sealed with this cache's key, or was changed since. ``nbcache pull`` uses it."""
        try:
            fetched = self._fetch(remote, store, key, found, body)
        except _Unread:
            got = remote.get_entry(key)
            return None if got is None else self.take(remote, store, key, *got)
        if fetched is None:
            return None
        for address, data in fetched[1].items():  # (a hit checks them as it loads them; here nothing loads them)
            problem = verify_frame(data, key=self._key(), name=address)
            if problem is not None:  # (in the entry's object: replaced with it when this result is uploaded)
                raise Damaged(f"a value it carries is refused: {problem}")
        entry = fetched[0]
        if any(check.stat is not None for check in entry.checks):  # (another machine's stat: compared by content)
            entry = self._seal(key, dataclasses.replace(entry, checks=tuple(
                check._replace(stat=None) for check in entry.checks)))
        keep(store, key, entry, fetched[1])
        return entry

    def _fetch(self, remote: Remote, store: Store, key: str, found: TeamEntry,
               body: bytes | None) -> tuple[Entry, dict[str, memoryview]] | None:
        """The entry of ``found`` (its seal checked: ``Damaged``), after the values ``store`` lacks that it does
        not carry are copied into ``store``; and those it carries, as views of ``body`` (``_Unread`` if it is
        None and ``store`` lacks one of them). None if one could not be copied."""
        entry = Entry.from_json(found.entry)
        self._check_seal(key, entry)
        carried = found.carried()
        # (a value here already, checked when it was stored, is served from here: not the remote's copy)
        wanted = [address for address in dict.fromkeys(entry.blobs) if not store.has_blob(address)]
        if body is None and carried.keys() & set(wanted):
            raise _Unread(key)
        view = memoryview(b"" if body is None else body)
        inline = {}
        for address in wanted:
            if address in carried:
                start, size = carried[address]
                inline[address] = view[start:start + size]
                continue
            # (checked whole as it is written, never stored unchecked: a big value is mapped on a hit, its
            # buffers checked only later)
            size = found.sizes.get(address)
            check = StreamCheck(self._key(), address, size)
            try:
                if not remote.copy_blob(address, size, lambda f, a=address: store.put_blob_file(a, Checking(f, check))):
                    if remote.distrusts(address):  # (not as its entry says: said already, and told as damage)
                        self._damaged_now[key] = "a value is not the size its entry says"
                    return None
            except Damaged as problem:
                remote.distrust([address])
                raise Damaged(f"a value is damaged: {problem}") from None
        return entry, inline

    # writing
    def push_later(self, store: Store, key: str, entry: Entry) -> None:
        """Upload the result of ``key`` (stored in ``store`` just now) in the background."""
        remote = self.remote
        if remote is None or key in self._others:  # (another key's result there is not replaced)
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
        if remote.writable and upload(remote, store, key, entry, at, self._key_id()) is not None:
            self._refused.discard(key)  # (replaced there)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every upload asked for has been done (or given up); True if all were."""
        return self._uploads is None or self._uploads.drain(timeout)


def keep(store: Store, key: str, entry: Entry, carried: dict[str, memoryview]) -> None:
    """Write the values of ``carried`` (those ``store`` lacked), then ``entry`` under ``key``: the entry last,
    so that it never names a value that is not there."""
    for address, data in carried.items():
        store.put_blob_file(address, data)
    store.put_entry(key, entry)


def upload(remote: Remote, store: Store, key: str, entry: Entry, at: str, sealed_by: str,
           there: set[str] | None = None) -> dict[str, int] | None:
    """Upload the result of ``key``: its values up to ``INLINE`` bytes in all inside its entry, the others
    first, each by itself, so that no entry is published without all of them; ``sealed_by``: the id of the key
    that sealed ``entry`` (``keys.key_id``), told in its record. A value in ``there`` (those known
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
    record = TeamEntry(entry.to_json(), author(), at, sizes, tuple((a, len(data)) for a, data in carried.items()),
                       sealed_by)
    return sent if remote.put_entry(key, record, carried.values()) else None
