"""Reading and writing a remote's objects through fsspec: the file system a URL names (with bounded waits for
S3), a value read in ranges as a file, what fails in such a read told apart from the local store's own errors,
and a URL as messages show it (no credentials). ``remote.py`` keeps the remote's layout and its state.
"""

from __future__ import annotations

import functools
import io
import os
import re
from typing import Any, BinaryIO

from .errors import NBCacheError

__all__ = ["COPY_CHUNK", "RANGE", "TIMEOUT_ENV", "TIMEOUT_S", "NotAsListed", "Ranges", "ReadFailed", "Reading",
           "RemoteError", "author", "bytes_of", "credentials_in", "filesystem", "one_try", "shown", "size_of",
           "timeout_s"]

TIMEOUT_ENV = "NBCACHE_REMOTE_TIMEOUT"
TIMEOUT_S = 10.0  # connect and read timeout of an S3 remote, unless its storage options say otherwise
COPY_CHUNK = 8 << 20
RANGE = 64 << 20  # a value is downloaded in ranges of this size, one request each


class RemoteError(NBCacheError):
    """The remote cache named cannot be used as given (its URL, or the package its protocol needs), or a
    ``strict`` one failed."""


def size_of(source: bytes | BinaryIO) -> int:
    """The bytes a blob to upload has (``source`` as ``Store.open_blob`` gives it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return len(source)
    try:
        return os.fstat(source.fileno()).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
        return end - here


def bytes_of(source: bytes | BinaryIO) -> bytes:
    """The bytes of a blob to upload, read whole (``source`` as ``Store.open_blob`` gives it)."""
    return bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else source.read()


class NotAsListed(Exception):
    """A value on the remote is not the size its entry says (changed, or cut short): it is not used."""


class Ranges:
    """A remote object of known ``size`` as a file read front to back (``read`` only), ``RANGE`` bytes per
    request."""

    def __init__(self, fs: Any, path: str, size: int) -> None:
        self._fs, self._path, self._size = fs, path, size
        self._at = 0  # where the range in ``_chunk`` starts
        self._chunk = memoryview(b"")
        self._used = 0

    def read(self, size: int | None = -1) -> bytes | memoryview:
        """The next ``size`` bytes at most, as a slice of the range read, not a copy of it (all that is left,
        as bytes: ``size`` < 0)."""
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(RANGE), b""))
        if self._used == len(self._chunk):
            self._at += len(self._chunk)
            if self._at >= self._size:
                return b""
            end = min(self._at + RANGE, self._size)
            self._chunk = memoryview(self._fs.cat_file(self._path, start=self._at, end=end))
            self._used = 0
            if len(self._chunk) != end - self._at:
                raise NotAsListed(self._path)
        piece = self._chunk[self._used:self._used + size]
        self._used += len(piece)
        return piece


class ReadFailed(Exception):
    """Reading a value from the remote failed (``error``), while the local store wrote it."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class Reading:
    """A file of the remote, as the local store reads it: what fails in a read is the remote's (``ReadFailed``),
    not taken for the local store's own error and said to be its cache directory's."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def read(self, size: int | None = -1) -> bytes | memoryview:
        try:
            return self._f.read(size)
        except NotAsListed:
            raise
        except Exception as exc:
            raise ReadFailed(exc) from exc


@functools.cache
def author() -> str:
    """``user@host``, as an uploaded entry names who stored it."""
    import getpass  # (with socket: only once a result is uploaded, not on `import nbcache`)
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # (no user name in the environment nor the password database)
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    return f"{user}@{socket.gethostname()}"


def credentials_in(url: str) -> bool:
    """Whether ``url`` has credentials written into it, ``user:secret@`` after its ``://`` (a secret may hold
    ``/``; Azure's ``abfs://container@account/...`` and an ``@`` in a path are no credentials)."""
    rest = url.partition("://")[2]
    return "@" in rest and ":" in rest.partition("@")[0]


def shown(url: str) -> str:
    """``url`` as messages show it: without credentials written into it (``s3://key:secret@bucket``)."""
    if not credentials_in(url):
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.partition('@')[2]}"


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV) or ""
    try:
        timeout = float(text) if text.strip() else TIMEOUT_S
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < float("inf"):
        raise RemoteError(f"{TIMEOUT_ENV} is a number of seconds (such as 10 or 2.5), not {text!r}")
    return timeout


def filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    try:
        import fsspec
    except ModuleNotFoundError:
        raise RemoteError(f"a remote cache ({url}) needs fsspec: pip install 'nbcache[remote]'") from None
    options = dict(options)
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol == "file" and not url.startswith("file:"):
        _check_folder(url)
    if protocol in ("s3", "s3a"):  # bounded waits: a remote that does not answer must not hold up a step
        timeout = timeout_s()
        config = dict(options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", timeout)
        config.setdefault("read_timeout", timeout)
        config.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})  # (one wait: then it is down)
        options["config_kwargs"] = config
        options.setdefault("skip_instance_cache", True)
        options.setdefault("max_concurrency", 1)  # (a read is one GET; more reads a size ahead, a HEAD)
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError) as exc:  # the protocol's package is missing, or the URL is not one
        extra = " (pip install 'nbcache[remote]')" if isinstance(exc, ImportError) and protocol in ("s3", "s3a") else ""
        raise RemoteError(f"cannot use {shown(url)!r} as the remote cache: {exc}{extra}") from None
    return fs, root.rstrip("/")


_SCHEME_TYPO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:(?!//)")  # `s3:/bucket`, `gs:bucket` (not `C:`, nor `s3://`)


def _check_folder(url: str) -> None:
    """A team cache given as a folder: an absolute path, which every teammate mounts at one place; else it is
    a URL mistyped, or a folder of the current directory, which nobody else sees (both made a folder here,
    silently, where a team cache was meant)."""
    if _SCHEME_TYPO.match(url):
        scheme, _, rest = url.partition(":")
        raise RemoteError(f"the remote cache {shown(url)!r} looks like a URL without its '//': for a bucket, give"
                          f" {scheme}://{rest.lstrip('/')}; for a folder, an absolute path")
    if not os.path.isabs(os.path.expanduser(url)):
        raise RemoteError(f"the remote cache {shown(url)!r} is a relative path, a folder of the current directory"
                          " that no teammate sees: give an absolute path of a folder everyone mounts"
                          " (/mnt/shared/nbcache), or a bucket's URL (s3://bucket/prefix)")


def one_try(fs: Any) -> Any:
    """``fs`` trying each request once: s3fs tries it five times over, around botocore's own tries (13 minutes
    of a hang at a 10 s timeout). ``Remote`` sets it where it is made and where it is unpickled (a Dask
    worker): fsspec makes the file system anew from its arguments, and this is no argument."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if {"s3", "s3a"} & set(protocols) and isinstance(getattr(fs, "retries", None), int):
        fs.retries = 1
    return fs
