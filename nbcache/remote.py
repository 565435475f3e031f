"""The team cache: a second level of the cache, on object storage or a shared folder, through fsspec.

A cache directory stays the first level. A call that finds nothing there looks in the remote (``NBCACHE_REMOTE``
or ``set_remote``: any fsspec URL, ``s3://bucket/prefix``, ``gs://...``, a path on a shared file system); what
it finds is copied into the local directory and served from there. A result computed and stored locally is
uploaded in the background. Layout under the URL, per cache format::

    v<format>/blobs/<address>   a value, as the local store keeps it (signed; content-addressed, immutable)
    v<format>/entries/<key>     a result's values up to 16 MB in all, then its record: the sealed entry, who
                                stored it and when (``teamentry.py``); its other values are blobs

A team-cache hit on a result whose values travel in its entry is one request (the object is read into memory,
16 MB of values at most, and written into the local store; bigger values are streamed). An entry is uploaded
after every blob it names, each through a temporary that is committed whole (an S3 multipart upload completed at
the end, a file written beside its place and renamed), so a killed upload publishes nothing. Entries and
values are signed with the cache's key: a team shares one (``NBCACHE_KEY``), and an object signed with another
key, or changed, is never unpickled. Credentials come as fsspec takes them (the
environment, ``storage_options``) and are never written anywhere by nbcache.

A remote that fails (unreachable, denied, too slow) never fails a step: ``Remote`` says so once, then is left
alone for ``RETRY_S`` seconds, and the calls meanwhile use the local cache only. A ``strict`` one, which the
commands ``nbcache push``, ``pull`` and ``ls --remote`` use, raises ``RemoteError`` instead: they wait for it.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
import time
from typing import Any, BinaryIO, Callable, Iterable

from .errors import warn
from .frameformat import Damaged
from .key import CACHE_FORMAT
from .remoteio import (
    COPY_CHUNK, RANGE, NotAsListed, Ranges, ReadFailed, Reading, RemoteError, author, bytes_of, credentials_in,
    filesystem, one_try, shown, size_of,
)
from .teamentry import INLINE, MAX_RECORD, TeamEntry, Unreadable, read_record

__all__ = ["RANGE", "REMOTE_ENV", "RETRY_S", "Remote", "RemoteError", "author", "bytes_of", "shown", "size_of"]

REMOTE_ENV = "NBCACHE_REMOTE"
RETRY_S = 60.0  # how long a failed remote is left alone before it is tried again
SINGLE_PUT = 32 << 20  # a value up to this size is uploaded in one request
ENTRY_MAX = INLINE + MAX_RECORD + 16  # the most an entry object holds: its values, its record, the trailer
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "az", "memory"}  # each object is published whole, by itself


class Remote:
    """One remote cache: its file system, the folder of this cache format in it, and whether it answers.

    Every method that talks to it returns what it found, or, if the remote failed, ``None`` (a miss) or
    ``False`` (not done), after one warning per outage: ``available`` is then False for ``RETRY_S``.
    ``strict``: a failure raises ``RemoteError`` instead (for a command, which has nothing else to do)."""

    strict = False

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, *, strict: bool = False) -> None:
        if not isinstance(url, str) or not url.strip():
            raise RemoteError(f"the remote cache is given as a URL (s3://bucket/prefix, a folder), not {url!r}")
        self.url = shown(url)
        if credentials_in(url):  # (fsspec would pass them on, into its error messages too)
            raise RemoteError(f"the remote cache {self.url} is given with credentials in its URL (user:secret@):"
                              " give them as storage options (set_remote(url, key=..., secret=...)) or in the"
                              " environment (AWS_ACCESS_KEY_ID, ...) instead")
        self.fs, root = filesystem(url, storage_options or {})
        self.root = f"{root}/v{CACHE_FORMAT}"
        self._setup()
        self.strict = strict

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    def __reduce__(self) -> tuple:
        """A remote travels (to a Dask worker) as its file system, which fsspec pickles with its options."""
        return _remote_of, (self.url, self.fs, self.root)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Remote) and (self.root, self.fs) == (other.root, other.fs)

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    @property
    def writable(self) -> bool:
        """Available, and no upload was denied in the last ``RETRY_S`` (read-only credentials still read)."""
        return self.available and time.monotonic() >= self._writes_down_until

    def _setup(self) -> None:
        one_try(self.fs)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._object_store = bool(OBJECT_STORES.intersection(protocols))
        # conditional writes (``mode="create"``): s3fs has them since 2024.12; they fail on an existing object
        self._create = "s3" in protocols and "mode" in inspect.signature(self.fs.pipe_file).parameters
        self._lock = threading.Lock()
        self._down_until = self._writes_down_until = 0.0
        self._damaged: set[str] = set()  # blobs whose copy on the remote was found damaged (``distrust``)
        self.unreadable: dict[str, str] = {}  # entries found damaged as they were read, why (until asked)

    def failure(self, doing: str, exc: BaseException) -> RemoteError:
        """The error a command reports when this remote failed while ``doing`` (credentials left out)."""
        return RemoteError(f"the team cache {self.url} failed while {doing}: {type(exc).__name__}: {shown(str(exc))}")

    def _failed(self, doing: str, exc: BaseException, *, writing: bool = False) -> None:
        if self.strict:
            raise self.failure(doing, exc) from exc
        denied = writing and isinstance(exc, PermissionError)  # (read-only credentials: lookups go on)
        with self._lock:
            was_up = self.writable if denied else self.available
            if denied:
                self._writes_down_until = time.monotonic() + RETRY_S
            else:
                self._down_until = time.monotonic() + RETRY_S
        if was_up and denied:
            warn(f"nbcache: the team cache {self.url} denied {doing} ({type(exc).__name__}: {shown(str(exc))});"
                 f" results stored here stay here for the next {RETRY_S:.0f} s (`nbcache push` uploads them),"
                 " and it is still looked in")
        elif was_up:
            warn(f"nbcache: the team cache {self.url} failed while {doing} ({type(exc).__name__}: {shown(str(exc))});"
                       f" using the local cache only for the next {RETRY_S:.0f} s")

    def _path(self, kind: str, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"not a name nbcache gives: {name!r}")
        return f"{self.root}/{kind}/{name}"

    # reading
    def get_entry(self, key: str) -> tuple[TeamEntry, bytes] | None:
        """The record of the entry stored under ``key`` and its whole object, with the values it carries (one
        request); None if there is none, or it does not read (said: it is computed here, and the entry
        replaced when it is uploaded)."""
        if not self.available:
            return None
        try:  # (no more than an entry holds: a bigger object in its place is not read whole into memory)
            data = self.fs.cat_file(self._path("entries", key), start=0, end=ENTRY_MAX + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:  # (a folder in its place, on a shared file system: nothing to read)
            data = b""
        except Exception as exc:
            self._failed("looking up a result", exc)
            return None
        try:
            if len(data) > ENTRY_MAX:
                raise Unreadable(f"it is bigger than an entry is, {ENTRY_MAX >> 20} MB")
            found = read_record(data, len(data))
        except Unreadable as exc:
            warn(f"nbcache: the team cache {self.url} holds a damaged entry for this call ({exc}); the result is"
                 " computed here, and the entry replaced when it is uploaded")
            self.unreadable[key] = str(exc)
            return None
        assert isinstance(found, TeamEntry)  # (the whole object was read)
        return found, data

    def copy_blob(self, address: str, size: int | None, put: Callable[[BinaryIO], None]) -> bool:
        """Give ``put`` the blob at ``address`` as a file to read, streamed: one request per ``RANGE`` bytes
        when its ``size`` is known. False if it is not there or the remote failed; what ``put`` raises of what it
        read (``Damaged``) or of its own store (``OSError``) is raised."""
        if not self.available:
            return False
        path = self._path("blobs", address)
        try:
            if size is None:
                with self.fs.open(path, "rb", block_size=COPY_CHUNK) as f:
                    put(Reading(f))
            else:
                put(Reading(Ranges(self.fs, path, size)))
        except FileNotFoundError:
            return False
        except NotAsListed:
            self.distrust([address])
            warn(f"nbcache: the team cache {self.url} holds a damaged value (not the size its entry says);"
                 " the result is computed here, and the value replaced when it is uploaded")
            return False
        except Damaged:  # (what ``put`` found wrong in what it read: not the remote's failure)
            raise
        except ReadFailed as failed:  # (the remote's, as ``put`` read it: not the local store's)
            if not isinstance(failed.error, FileNotFoundError):
                self._failed("downloading a result", failed.error)
            return False
        except OSError:  # (the local store's own: ``put`` says what they are)
            raise
        except Exception as exc:
            self._failed("downloading a result", exc)
            return False
        return True

    def distrusts(self, address: str) -> bool:
        """Whether the remote's copy of blob ``address`` was found damaged (``distrust``), not replaced since."""
        return address in self._damaged

    def distrust(self, addresses: Iterable[str]) -> None:
        """The remote's copies of these blobs were found damaged: the next upload of each replaces it."""
        self._damaged.update(addresses)

    # writing
    def put_blob(self, address: str, source: bytes | BinaryIO) -> bool:
        """Upload a blob unless it is there already (blobs are immutable, whoever stores them): a small one
        in one conditional request where the store has them (S3's ``If-None-Match``), else after a check. One
        found damaged (``distrust``) is written over."""
        path = self._path("blobs", address)
        try:
            if address in self._damaged:
                self._write(path, source)
                self._damaged.discard(address)
                return True
            if self._create and size_of(source) <= SINGLE_PUT:
                try:
                    self.fs.pipe_file(path, bytes_of(source), mode="create")
                except FileExistsError:
                    pass  # (stored by someone else: the same bytes)
                return True
            if self._exists(path):
                return True
            self._write(path, source)
        except Exception as exc:
            self._failed("uploading a result", exc, writing=True)
            return False
        return True

    def put_entry(self, key: str, entry: TeamEntry, carried: Iterable[bytes] = ()) -> bool:
        """Upload an entry, with the values it carries (``entry.inline``, in order), once every other value it
        names is there."""
        try:
            self._write(self._path("entries", key), b"".join([*carried, entry.record()]))
        except Exception as exc:
            self._failed("uploading a result", exc, writing=True)
            return False
        return True

    def _exists(self, path: str) -> bool:
        """Whether ``path`` is there, in one request (its first byte's; fsspec's ``exists`` lists too)."""
        try:
            self.fs.cat_file(path, start=0, end=1)
        except FileNotFoundError:
            return False
        return True

    def _write(self, path: str, source: bytes | BinaryIO) -> None:
        """Write ``path`` whole or not at all. An object store publishes an object whole by itself (one PUT,
        or a multipart upload completed at the end); elsewhere the bytes go to a temporary beside it (a
        ``.`` name, which no listing takes), renamed once complete: on one file system, a rename is atomic
        (fsspec's ``autocommit=False`` writes the temporary in the system's temporary folder, and a move from
        there to another file system is a copy, seen half-written)."""
        temp = None
        if self._object_store:
            if isinstance(source, (bytes, bytearray, memoryview)):
                self.fs.pipe_file(path, bytes(source))  # (one request)
                return
            f = self.fs.open(path, "wb")
        else:
            folder, name = path.rsplit("/", 1)
            self.fs.makedirs(folder, exist_ok=True)
            temp = f"{folder}/.{name}.{os.urandom(8).hex()}.part"  # (hosts on one shared folder: not a pid)
            f = self.fs.open(temp, "wb")
        try:
            if isinstance(source, (bytes, bytearray, memoryview)):
                f.write(source)
            else:
                while chunk := source.read(COPY_CHUNK):
                    f.write(chunk)
            f.close()
            if temp is not None:
                self.fs.mv(temp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                if temp is None:
                    f.discard()  # (a multipart upload aborted: closing would complete it)
                else:
                    f.close()
                    self.fs.rm(temp)
            raise


def _remote_of(url: str, fs: Any, root: str) -> Remote:
    remote = Remote.__new__(Remote)
    remote.url, remote.fs, remote.root = url, fs, root
    remote._setup()
    return remote
