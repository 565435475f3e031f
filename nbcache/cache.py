"""``Cache``: one cache as an object. It owns which directory (and so which store) is used, the notebook
module values are pickled against, the listeners of its runs, and what this process has written.

Every part of nbcache that needs the cache is given one, or asks ``default_cache()``, the instance that
``nbcache.set_cache_dir``, ``runs()``, ``clear()``, ``@step`` and ``%%step`` use unless told otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import os
import threading
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from .audit import unobserved
from .carry import Carry
from .entry import Entry
from .errors import warn
from .events import Events
from .eviction import parse_size, size_limit_from_env
from .frame import Damaged, Frame, read_frame, signature_problem
from .forksafe import ForkSafeLock
from .frameformat import NotSigned
from .background import shared_worker
from .keys import load_key, parse_key
from .latestwrites import LatestWrites
from .records import StepRun
from .smallvalues import NOT_KEPT, SmallValues
from .store import Store
from .verifier import Verifier, verify_lazily
from .warming import WAIT_S, Warming

if TYPE_CHECKING:
    from .teamcache import TeamCache
    from .verifystore import Verification

__all__ = ["Cache", "default_cache", "cache_dir", "set_cache_dir"]


class Cache:
    """A cache: a directory (or a given ``store``), and the state of this process that goes with it.

    ``directory=None`` follows ``$NBCACHE_DIR``, else ``./.nbcache`` of the working directory at each
    call; ``store`` fixes the store outright (``MemoryStore()`` for a cache that lives in memory).
    ``notebook`` is the module the notebook's cells run in (``None``: ``__main__``). ``key`` signs and
    checks every value stored (hex, at least 32 digits); ``None``: ``NBCACHE_KEY``, ``NBCACHE_KEY_FILE``, or
    the user's own key, made on first use (see ``keys.py``). ``size_limit`` caps what the directory's
    store takes (``20GB``, ``500MB``, ``1.5GiB`` or bytes): past it, each store evicts the least recently
    used entries; ``None``: ``NBCACHE_SIZE_LIMIT``, else no limit.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, store: Store | None = None,
                 notebook: types.ModuleType | None = None, key: str | None = None,
                 size_limit: int | str | None = None) -> None:
        self._key: bytes | None = None if key is None else parse_key(key, "Cache(key=...)")
        self._size_limit = None if size_limit is None else parse_size(size_limit, "Cache(size_limit=...)")
        self._explicit_dir: str | None = None
        self.set_directory(directory)
        self._fixed_store = store
        self._stores: dict[str, Store] = {}
        self._gone: list[Store] = []  # stores whose directory was removed while they were open
        self._stores_lock = ForkSafeLock()  # (the warm-up's thread holds it; free again in a forked child)
        self.notebook = notebook
        self.events = Events()
        self._lock_timeout_s: float | None = None
        # what a hit leaves for later (latest ingredients, checking mapped values) is done on one thread
        self.background = shared_worker()
        self.latest = LatestWrites(self.background)  # what each step's latest record holds, as this process knows
        self._sealed: dict[str, Entry] = {}  # the entry last found sealed for each key
        # the keys each thread is computing, by thread id (no ``threading.local``: on Python < 3.11.9, one freed
        # inside ``sys._current_frames()``, which Dask's profiler calls, deadlocks the process: gh-106883)
        self._computing: dict[int, set[str]] = {}
        self.verifier = Verifier(self.background)  # checks the buffers of big values hits mapped
        self.carry = Carry()  # the content addresses restored arrays carry to the next step
        self.small = SmallValues()  # small values loaded, kept as their checked parts
        self._warming = Warming()  # opening the store ahead of the first call (``warm``)
        self._team: TeamCache | None = None  # the remote cache it shares with a team, if any (``team``)

    def __repr__(self) -> str:
        return f"Cache({self._fixed_store!r})" if self._fixed_store is not None else f"Cache({str(self.directory)!r})"

    def __reduce__(self) -> tuple:
        """A cache pickles as where it is (a step that carries one is stored by a ``%%step`` cell); this
        process's state does not travel, and a cache given a store of its own cannot be pickled."""
        if self is _default:
            return default_cache, ()
        if self._fixed_store is not None:
            raise TypeError("a Cache given a store= cannot be pickled; give it a directory instead")
        return Cache, (self._explicit_dir,)

    def __nbcache_hash__(self) -> tuple[bytes, tuple]:
        """A cache counts as its directory as set (``None``: wherever the working directory puts it), or
        as its store, when read by a step or a cell."""
        if self._fixed_store is not None:
            return b"nbcache.Cache", (type(self._fixed_store).__qualname__, self._fixed_store.location)
        return b"nbcache.Cache", (self._explicit_dir,)

    # where
    def set_directory(self, path: str | os.PathLike[str] | None) -> None:
        """Use ``path`` from now on (``None`` returns to ``NBCACHE_DIR`` or ``.nbcache``)."""
        if path is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"set_cache_dir() takes a path, not {type(path).__name__}")
        self._explicit_dir = None if path is None else os.path.abspath(os.path.expanduser(os.fspath(path)))

    @property
    def directory(self) -> Path | None:
        """The cache directory in use: the one set, else ``$NBCACHE_DIR``, else ``./.nbcache``; for a cache
        given a store, that store's directory (``None`` for a ``MemoryStore``)."""
        if self._fixed_store is not None:
            location = self._fixed_store.location
            return None if location is None else Path(location)
        return Path(self._directory())

    def _directory(self) -> str:
        if self._explicit_dir is not None:
            return self._explicit_dir
        path = os.environ.get("NBCACHE_DIR") or ".nbcache"
        if path.startswith("~"):
            path = os.path.expanduser(path)
        return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)

    @property
    def size_limit(self) -> int | None:
        """The most bytes the store may take before stores evict (the one set, else ``NBCACHE_SIZE_LIMIT``,
        else None: no limit). Set it to ``'20GB'``, ``'500MB'``, ``'1.5GiB'`` or bytes; ``None`` returns to
        ``NBCACHE_SIZE_LIMIT``. ``ValueError`` if malformed."""
        return self._size_limit if self._size_limit is not None else size_limit_from_env()

    @size_limit.setter
    def size_limit(self, value: int | str | None) -> None:
        self._size_limit = None if value is None else parse_size(value, "Cache.size_limit")

    def make_room(self, store: Store, keep: str) -> int:
        """After ``keep`` was stored: evict least recently used entries while over the size limit (if any)."""
        limit = self.size_limit
        if limit is not None and self._team is not None:  # (results pulled are written first: they count too)
            self._team.settle_all()
        return 0 if limit is None else store.evict(limit, keep=(keep,))

    @property
    def lock_timeout_s(self) -> float:
        """How long a caller waits for another computing the same key before computing it too: the one set,
        else ``NBCACHE_LOCK_TIMEOUT`` (seconds, read at each wait), else 900; a negative one waits for ever."""
        if self._lock_timeout_s is not None:
            return self._lock_timeout_s
        return _seconds(os.environ.get("NBCACHE_LOCK_TIMEOUT"), default=900.0)

    @lock_timeout_s.setter
    def lock_timeout_s(self, seconds: float | None) -> None:
        self._lock_timeout_s = seconds

    @property
    def team(self) -> TeamCache:
        """Its link to the team cache (``teamcache.py``), made when first needed: the first miss."""
        if self._team is None:
            from .teamcache import TeamCache  # (and remote.py: not on `import nbcache`'s path)

            self._team = TeamCache(self.check_seal, self.seal, lambda: self.key, self.background)
        return self._team

    @property
    def team_if_any(self) -> TeamCache | None:
        """``team``, or None (none made, nothing imported) if no remote was set and ``NBCACHE_REMOTE`` is not."""
        return self.team if self._team is not None or os.environ.get("NBCACHE_REMOTE") else None

    @property
    def key(self) -> bytes:
        """The key values are signed with (resolved on first use; ``SigningKeyError`` if it cannot be)."""
        if self._key is None:
            self._warming.wait()
            self._key = self._warming.take_key() or load_key()
        return self._key

    def store(self) -> Store:
        """The store of the directory in use, opened once per directory; ``OSError`` if it is unusable,
        ``SigningKeyError`` if there is no key to sign its values with."""
        self.key  # noqa: B018  (resolved here, where a failure runs the step uncached, not mid-store)
        if self._fixed_store is not None:
            return self._fixed_store
        directory = self._directory()  # (a string: this is on every call's path)
        store = self._stores.get(directory)
        if store is None or getattr(store, "gone", bool)():  # (or its directory was removed since: opened anew)
            self._warming.wait()
            with self._stores_lock:
                store = self._stores.get(directory)
                if store is None or getattr(store, "gone", bool)():
                    if store is not None:  # (closed, and kept: never left to the garbage collector)
                        self._gone.append(store)
                        with contextlib.suppress(Exception):
                            store.close()
                    store = self._stores[directory] = self._open(directory)
            self.background.start()  # (now, rather than on a hit)
        return store

    def warm(self) -> None:
        """Read the signing key and open the store of the directory in use, if that directory holds a cache
        already (nothing is created, no key is made), waiting for it a second at most: see ``warming.py``."""
        if self._fixed_store is not None:
            return
        directory = self._directory()
        if directory in self._stores or not os.path.isdir(os.path.join(directory, "store")):
            return

        def open_store() -> None:
            store = self._open(directory)
            with self._stores_lock:
                kept = self._stores.setdefault(directory, store)
            if kept is not store:  # (opened meanwhile by a call)
                store.close()

        self._warming.start(open_store, need_key=self._key is None)
        self._warming.wait(WAIT_S)
        prepare = getattr(self._stores.get(directory), "prepare", None)
        if prepare is not None:  # open in time: made ready for this thread, the one that will call steps
            with unobserved, contextlib.suppress(Exception):
                prepare()

    @staticmethod
    def _open(directory: str) -> Store:
        from .diskstore import open_disk_store  # (diskcache and SQLite: imported when a directory is opened)

        return open_disk_store(directory)

    # values
    def frame(self, value: Any, by_value: set[int] = frozenset(), live: Mapping[int, str] | None = None) -> Frame:
        """``value`` serialized against this cache's notebook; raises ``Unpicklable``."""
        return Frame(value, notebook=self.notebook, by_value=by_value, key=self.key, live=live)

    def put(self, store: Store, address: str, frame: Frame) -> None:
        """Store ``frame`` at ``address``, signed with this cache's key and that name (copied under another, it
        is refused). One there that does not verify (another key's, or damaged) is replaced; else none is."""
        if store.has_blob(address) and not self.is_signed(store, address):
            store.delete("", (address,))
        frame.name = address
        store.put_blob(address, frame)

    def load(self, store: Store, address: str,
             mapped: Callable[[Any], tuple[Callable[[str], None], Iterable[tuple[Any, str]]]] | None = None,
             data: memoryview | None = None) -> Any:
        """The value of the blob at ``address`` (a missing one raises ``KeyError``, a damaged one ``Damaged``).
        A big value is mapped from its file. Given ``mapped``, its buffers are checked in the background
        (``verifier.py``, once ``verifier.release()`` is called): ``mapped(value)`` says what to do if they are
        not intact (``on_damage(problem)``) and which arrays in it carry which content address to the steps
        they are passed to (``carry.py``); without, before it is returned. ``data``: its bytes, in memory."""
        if data is None and (value := self.small.value(store, address, self.notebook)) is not NOT_KEPT:
            return value  # (read and checked before: ``smallvalues.py``)
        source = store.open_blob(address) if data is None else data
        if source is None:
            raise KeyError(address)
        lazy = verify_lazily if mapped is not None else False  # (asked only of a value that is mapped)
        keep = self.small.keeper(store, address, source) if data is None else None
        value, unchecked = read_frame(source, self.notebook, key=self.key, name=address, lazy=lazy, keep=keep)
        if unchecked is not None and mapped is not None:
            on_damage, carried = mapped(value)
            for obj, content_address in carried:
                self.carry.note(obj, content_address, unchecked.identity)
            self.verifier.submit(unchecked, self.carry.with_derived(unchecked.identity, on_damage), hold=True)
        return value

    def verify(self, *, remove: bool = False) -> Verification:
        """Read every stored result whole and check it (entries' seals, values' signatures and buffers),
        unpickling nothing; ``remove``: remove the results that are damaged (not those signed with another
        key), so they are recomputed."""
        from .verifystore import remove_damaged, verify_store  # (`nbcache verify`: not on a hit's path)

        self.verifier.drain()
        found = verify_store(store := self.store(), self.key, self.check_seal)
        return remove_damaged(store, found) if remove else found

    def keys_computing(self) -> set[str]:
        """The keys this thread is computing now (their bodies running, their locks held)."""
        return self._computing.setdefault(threading.get_ident(), set())

    def is_signed(self, store: Store, address: str) -> bool:
        """Whether the blob at ``address`` is intact and signed with this cache's key (read without its
        buffers, never unpickled)."""
        try:
            source = store.open_blob(address)
        except Damaged:
            return False
        return source is not None and signature_problem(source, key=self.key, name=address) is None

    # entries, sealed to the key they are filed under
    def seal(self, key: str, entry: Entry) -> Entry:
        """``entry`` with its seal: an HMAC under this cache's key of the entry and ``key``, so an entry
        moved under another key, or any field of it changed, reads as damaged."""
        return dataclasses.replace(entry, seal=hmac.digest(self.key, entry.sealed_text(key), "sha256").hex())

    def check_seal(self, key: str, entry: Entry) -> None:
        """Raise ``Damaged`` unless ``entry`` was sealed by this cache's key for ``key``."""
        if self._sealed.get(key) is entry:  # (a store hands back the entry it parsed from the same text)
            return
        if not entry.seal_matches(key, lambda text: hmac.digest(self.key, text, "sha256").hex()):
            raise NotSigned("its seal does not match this cache's key and the key it is filed under")
        if len(self._sealed) >= 4096:
            self._sealed.clear()
        self._sealed[key] = entry

    # history and maintenance
    def record(self, store: Store, run: StepRun) -> None:
        """Append ``run`` to the history and tell the listeners; raises ``OSError`` if it cannot be written
        (the listeners are told anyway)."""
        try:
            store.append_run(run)
        finally:
            if self.events:
                self.events.notify(run)

    def runs(self, step: str | None = None) -> list[StepRun]:
        return self.store().read_runs(step)

    def clear(self, step: str | None = None, *, older_than_s: float | None = None, keep_last: int | None = None) -> int:
        store = self.store()
        if self._team is not None:  # (results pulled are written first, so that they are cleared too)
            self._team.settle_all()
        count = store.clear(step, older_than_s=older_than_s, keep_last=keep_last)
        self.small.clear()
        self.latest.forget(store)
        return count


def _seconds(text: str | None, *, default: float) -> float:
    with contextlib.suppress(ValueError):
        if (seconds := float(text) if text else default) != float("inf") and seconds == seconds:  # (not NaN)
            return seconds
    warn(f"nbcache: NBCACHE_LOCK_TIMEOUT is a number of seconds, not {text!r}; waiting {default:g} s")
    return default


_default = Cache()


def default_cache() -> Cache:
    """The cache nbcache's functions and magics use unless given another."""
    return _default


def set_cache_dir(path: str | os.PathLike[str] | None) -> None:
    """Use ``path`` for the cache from now on (``None`` returns to ``NBCACHE_DIR`` or ``.nbcache``); if it
    holds a cache, it is opened now (``Cache.warm``), so that the next step finds it open."""
    _default.set_directory(path)
    _default.warm()


def set_remote(url: str | None, **storage_options: Any) -> None:
    """Share results through the team cache at ``url`` (any fsspec URL: ``s3://bucket/prefix``, ``gs://...``,
    a folder on a shared file system), with fsspec's ``storage_options`` (credentials, ``endpoint_url``):
    what a step finds nowhere locally is looked for there, and what it stores is uploaded in the background.
    ``None`` returns to ``NBCACHE_REMOTE``; ``""`` uses none. See ``docs/team.md``."""
    _default.team.set(url, storage_options)


def cache_dir() -> Path:
    """The cache directory in use: set_cache_dir's, else ``$NBCACHE_DIR``, else ``./.nbcache``."""
    return Path(_default._directory())
