"""Steps on a Dask cluster: ``Step.submit`` and ``Step.map`` send calls to ``distributed``'s workers.

A submitted call runs on a worker as it would here, under the settings of the submitting thread that change
what code computes (``ambient.computing_as``: numpy's error handling, the scikit-learn config; pandas' options
on a worker of one thread). Its key is made there, from the content of its arguments
(a Future of another submitted step is its value, once computed), so a result equal to last time's stops the
recomputation downstream as it does here; a hit is loaded there from the cache and its body runs nowhere; a
miss runs there and is stored. The worker's cache is this process's directory when the worker reaches the very
same directory (a ``LocalCluster``), else its own: ``NBCACHE_WORKER_DIR`` if set (which wins in both cases),
else a folder of the worker's local directory. Its team cache is this process's (``set_remote``), uploaded to
before the call returns, so a later call on any worker or machine finds what it computed.

Every run a worker makes is sent back here through Dask's events: it is added to this process's history with
the worker's address (``StepRun.worker``) unless the worker wrote it to the same directory, and the lineage
widget hears of it as of a run here. ``distributed`` is imported only when a step is first submitted.
"""

from __future__ import annotations

import copy
import functools
import os
import socket
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from .ambient import RAN_ON, OnWorker, computing_as, computing_state
from .cache import Cache, default_cache
from .errors import SAID, warn
from .keys import key_id
from .records import SESSION, StepRun
from .remote import Remote
from .step import WORKER_CACHE

if TYPE_CHECKING:  # (only for the types: a submitted step imports distributed, not nbcache)
    from .step import Step

__all__ = ["WORKER_DIR_ENV", "ClientCache", "submit", "map_calls"]

WORKER_DIR_ENV = "NBCACHE_WORKER_DIR"
UPLOAD_WAIT_S = 300.0  # how long a worker waits for its uploads before a call returns


@dataclass(frozen=True)
class ClientCache:
    """The cache of the process that submits, as its workers need it: where its directory is (to use it when
    they reach it), its team cache, and the topic their runs are sent back on."""

    host: str
    directory: str
    identity: tuple[int, int]  # the directory's (device, inode), to know it when a worker sees it
    remote: Remote | None
    session: str  # the submitting kernel's (``StepRun.session``): its lineage draws what its workers ran
    key_id: str  # which key it signs with (not the key): a worker signing with another is refused

    @classmethod
    def of(cls, cache: Cache) -> ClientCache:
        if cache.directory is None:
            raise ValueError("a step whose cache lives in memory (Cache(store=MemoryStore())) cannot be"
                             " submitted to a cluster: its workers could not share it; give it a directory")
        cache.store()  # (made if it is not there yet: the workers may use it)
        found = os.stat(cache.directory)
        return cls(socket.gethostname(), str(cache.directory), (found.st_dev, found.st_ino), cache.team.remote,
                   SESSION, key_id(cache.key))

    @property
    def topic(self) -> str:
        return f"nbcache-runs:{self.host}:{self.directory}"

    def is_directory(self, path: str) -> bool:
        """Whether ``path``, as this process (a worker) sees it, is the submitting process's very directory."""
        if socket.gethostname() != self.host:
            return False
        try:
            found = os.stat(path)
        except OSError:
            return False
        return (found.st_dev, found.st_ino) == self.identity


def submit(step: Step, client: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
    """``step(*args, **kwargs)`` as a task of ``client``: a ``distributed.Future`` of what it returns."""
    return _task(client, step, _client_cache(step, client), computing_state(), args, kwargs)


def map_calls(step: Step, client: Any, iterables: tuple[Iterable, ...], kwargs: dict[str, Any]) -> list[Any]:
    """One ``submit`` per set of arguments, the i-th of each iterable, as ``map`` takes them."""
    where, computing = _client_cache(step, client), computing_state()
    return [_task(client, step, where, computing, args, kwargs) for args in zip(*iterables)]


def _task(client: Any, step: Step, where: ClientCache, computing: dict[str, Any], args: tuple,
          kwargs: dict[str, Any]) -> Any:
    """One call as a task of its own (named after the step, for Dask's dashboard), never merged with another;
    it runs under ``computing``, the settings of the submitting thread that change what code computes."""
    return client.submit(_run, step, where, computing, args, kwargs, key=f"{step.name}-{os.urandom(8).hex()}",
                         pure=False)


def _client_cache(step: Step, client: Any) -> ClientCache:
    try:
        from distributed import Client  # (the one place nbcache imports it: a step submitted)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{step.name}.submit() and .map() run steps on a Dask cluster, which needs Dask's"
                                  " distributed: pip install 'nbcache[dask]'", name="distributed") from None

    if not isinstance(client, Client):
        raise TypeError(f"{step.name}.submit() takes a distributed.Client first (Client(LocalCluster()), or"
                        f" Client('tcp://scheduler:8786')), not {type(client).__name__}")
    cache = step.cache if step.cache is not None else default_cache()
    where = ClientCache.of(cache)
    _LISTENERS.ensure(client, where, cache)
    return where


class _Listeners:
    """Which clients send the runs of their workers to which cache of this process (Dask's ``subscribe_topic``,
    once per client and directory, for as long as the client lives); one ``_Arrivals`` per directory, whichever
    client a run comes through."""

    def __init__(self) -> None:
        self._done: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._arrivals: dict[str, _Arrivals] = {}
        self._lock = threading.Lock()

    def ensure(self, client: Any, where: ClientCache, cache: Cache) -> None:
        with self._lock:
            topics = self._done.setdefault(client, set())
            if where.topic in topics:
                return
            topics.add(where.topic)
            arrivals = self._arrivals.setdefault(where.topic, _Arrivals(cache))
        client.subscribe_topic(where.topic, arrivals.take)


_LISTENERS = _Listeners()


class _Arrivals:
    """Runs sent back by the workers, for one cache of this process: each taken once (two clients of one
    scheduler both hear it), and only this session's (another kernel may submit to the same directory)."""

    SEEN_MAX = 100_000

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self._seen: dict[str, None] = {}
        self._lock = threading.Lock()

    def take(self, event: tuple[float, Any]) -> None:
        _, message = event
        try:
            with self._lock:
                if message["id"] in self._seen:
                    return
                self._seen[message["id"]] = None
                if len(self._seen) > self.SEEN_MAX:
                    del self._seen[next(iter(self._seen))]
            if "said" in message:  # (what nbcache warned on the worker: the user would never see it there)
                if message.get("session") == SESSION:
                    for said in message["said"]:
                        warn(f"{said} (on the Dask worker {message['worker']})", relayed=True)
                return
            run = StepRun.from_json(message["run"])
            if run.session != SESSION:
                return
            if not message.get("shared"):  # (else the worker wrote it to this very history)
                self.cache.store().append_run(run)  # (now: runs() read after the Futures have it)
            if self.cache.events:  # (a redraw of the lineage is no work for Dask's event loop: in the background)
                self.cache.background.submit(functools.partial(self.cache.events.notify, run))
        except Exception:  # (a run that cannot be recorded must not stop the client's event loop)
            pass


# on a worker
_OPENING = threading.Lock()  # (a worker's threads start calls at once: one of them opens the cache they share)
# The caches a worker opened, by (directory, remote), and the one each client's cache uses here, by (directory,
# remote, key id): kept for the worker's life. A cache let go would be freed by the garbage collector (its team
# link refers back to it), which, run inside Dask's profiler's ``sys._current_frames()`` on Python < 3.11.9,
# deadlocks the worker (gh-106883); each one also held its index and history files open. A client session
# (a kernel restarted) is no new cache here.
# (A directory removed meanwhile is opened anew by its cache: ``Cache.store``.)
_OPENED: dict[tuple[str, Remote | None], Cache] = {}
_CHOSEN: dict[tuple[str, Remote | None, str], tuple[Cache, bool]] = {}


def _worker_cache(where: ClientCache) -> tuple[Cache, bool]:
    """The cache a worker keeps for the calls of one client cache, and whether it is the client's directory.
    One that signs with another key than the client, where they would share results, is a cache of the
    worker's own instead, sharing nothing, said once: each would take the other's results for damaged ones."""
    config = (where.directory, where.remote, where.key_id)
    with _OPENING:
        chosen = _CHOSEN.get(config)
        if chosen is None:
            chosen = _CHOSEN[config] = _choose_worker_cache(where)
        return chosen


def _opened(directory: str, remote: Remote | None) -> Cache:
    """The worker's cache of ``directory`` with the team cache ``remote`` (none: not even ``NBCACHE_REMOTE``),
    its store open (made if it is not there yet)."""
    cache = _OPENED.get((directory, remote))
    if cache is None:
        cache = _OPENED[directory, remote] = Cache(directory)
        cache.store()
        cache.team.use(remote)
    return cache


def _choose_worker_cache(where: ClientCache) -> tuple[Cache, bool]:
    own = os.environ.get(WORKER_DIR_ENV)
    if not own and where.is_directory(where.directory):
        directory = where.directory
    else:
        from distributed import get_worker
        directory = own or os.path.join(get_worker().local_directory, "nbcache")
    cache = _opened(directory, where.remote)
    shared = where.is_directory(str(cache.directory))
    if (shared or where.remote is not None) and key_id(cache.key) != where.key_id:
        from distributed import get_worker

        warn(f"nbcache: this Dask worker ({socket.gethostname()}) signs results with another key than the process"
             f" that submitted the step, with which it shares {'its cache directory' if shared else 'the team cache'}:"
             " each would take the other's results for damaged ones, so its calls use a cache of its own, which"
             " shares nothing. Give the workers the same key: set NBCACHE_KEY (or NBCACHE_KEY_FILE) in their"
             " environment, as on every teammate's machine (docs/team.md)")
        return _opened(os.path.join(get_worker().local_directory, "nbcache-own-key"), None), False
    return cache, shared


class _Collector:
    """The runs one call makes on a worker (the thread it runs in), to send back to the client."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.runs: list[StepRun] = []

    def take(self, run: StepRun) -> None:
        if threading.get_ident() == self.thread:
            self.runs.append(run)


def _run(step: Step, where: ClientCache, computing: dict[str, Any], args: tuple, kwargs: dict[str, Any]) -> Any:
    """A submitted call, on a worker, under the settings that change what code computes as the submitting
    thread had them (numpy's error handling, the scikit-learn config; pandas' options on a worker of one
    thread), so that it computes, raises and is keyed as the call would be there."""
    from distributed import get_worker

    worker = get_worker()
    mark = SAID.mark()
    cache, shared = _worker_cache(where)
    collector = _Collector()
    cache.events.subscribe(collector.take)
    ran_on = RAN_ON.set(OnWorker(worker.address, where.session, _workers_threads(worker)))
    in_call = WORKER_CACHE.set(cache)  # (the steps its body calls use it too, and their runs are sent back)
    try:
        call = copy.copy(step)
        call.cache = cache
        with computing_as(computing, alone=getattr(getattr(worker, "state", None), "nthreads", 0) == 1):
            return call(*args, **kwargs)
    finally:
        WORKER_CACHE.reset(in_call)
        RAN_ON.reset(ran_on)
        cache.team.flush(UPLOAD_WAIT_S)  # (what it stored is in the team cache before the call returns)
        for run in collector.runs:
            worker.log_event(where.topic, {"run": run.to_json(), "shared": shared, "id": os.urandom(12).hex()})
        said = SAID.since(mark)  # (a call running beside it may send the same: each is shown once)
        for n, message in said:
            worker.log_event(where.topic, {"said": [message], "worker": worker.address, "session": where.session,
                                           "id": f"{worker.address}/{os.getpid()}/{n}"})


def _workers_threads(worker: Any) -> frozenset[int]:
    """The worker's own threads: its event loop's, and Dask's pools' (the thread of this call aside)."""
    found = {t.ident for t in threading.enumerate() if t.name.startswith("Dask-") and t.ident is not None}
    loop = getattr(worker, "thread_id", None)  # (the thread its event loop runs in)
    if isinstance(loop, int):
        found.add(loop)
    found.discard(threading.get_ident())
    return frozenset(found)
