"""The files of a cache directory: what ``DiskStore`` reads, writes and deletes on disk, and nothing outside.

- **Nothing outside the directory.** diskcache keeps the name of a value's file in its index row and joins
  it to the store directory to read or delete it. A row is data, which something other than nbcache may
  have written: ``_FrameDisk`` resolves every such name (``os.path.realpath``) and reads or deletes only a
  regular file inside the store directory. Anything else (an absolute name, ``../``, a link pointing out, a
  device, a FIFO) is damage when read (``Damaged``: the cached call recomputes with a warning) and is left
  alone when its row is deleted. A file is opened ``O_NOFOLLOW | O_NONBLOCK`` after ``lstat`` says it is a
  regular file, and text is never read past ``MAX_TEXT_BYTES``.
- **Private files.** Folders nbcache creates are 0700 and files 0600; a cache shared with a group
  (``DiskStore(shared=True)`` or ``NBCACHE_SHARED=1``) gets 0770 and 0660. The umask applies on top.
- **Atomic publish.** A value file is written under a temporary name ``<name>.tmp-<pid>`` in its final
  folder and renamed into place once complete, so a writer that is killed or fails leaves no file under a
  real name: a failure removes its temporary, and ``gc`` removes those of writers that were killed. Files
  are not fsynced: after a power cut a value may read as zeros, which its checksum reports as damage.
"""

from __future__ import annotations

import errno
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import diskcache

from .frame import Damaged, Frame

__all__ = ["MAX_TEXT_BYTES", "TEMP_NAME", "Modes", "entry_texts", "make_dir", "make_file", "open_append",
           "shared_from_env"]

_INLINE_BYTES = 64 << 10  # smaller values live in the SQLite index; larger ones are files
MAX_TEXT_BYTES = 16 << 20  # an entry or other text value of the index read from a file: far above any real one
TEMP_NAME = re.compile(r"\.tmp-(\d+)$")  # the suffix of a file being written, with its writer's pid
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class Modes:
    """The permissions of what nbcache creates: private to the user, or shared with the group."""

    def __init__(self, shared: bool = False) -> None:
        self.shared = shared
        self.dir = 0o770 if shared else 0o700
        self.file = 0o660 if shared else 0o600


def shared_from_env() -> bool:
    """Whether ``NBCACHE_SHARED`` says the cache directory is shared with a group."""
    return os.environ.get("NBCACHE_SHARED", "").strip().lower() in ("1", "true", "yes", "on")


def make_dir(path: str | os.PathLike[str], mode: int) -> bool:
    """Create the folder ``path`` with ``mode`` (its missing parents as usual); True if it was created. A
    folder that exists keeps its permissions: it may be one the user made."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path) from None
        return False
    return True


def open_append(path: str | os.PathLike[str], mode: int) -> int:
    """A regular file opened for appending (made with ``mode`` if missing); ``OSError`` if it is anything
    else. A FIFO put in its place is never waited on: opened without blocking, it has no reader, or is refused."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def make_file(path: str | os.PathLike[str], mode: int) -> bool:
    """Create the empty file ``path`` with ``mode`` unless it exists; True if it was created."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode))
    except FileExistsError:
        return False
    return True


class _FrameDisk(diskcache.Disk):
    """diskcache's Disk, taught to write a Frame's parts straight to a file without joining them, to publish
    every file it writes atomically and privately, to read and delete only regular files inside its folder,
    and never to unpickle a value of the index: nbcache writes its entries as JSON text, so a pickle found
    there was put by something else, and loading it could run its code (``nbcache ls`` reads entries)."""

    modes = Modes()

    def __init__(self, directory: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(directory, *args, **kwargs)
        self._root = os.path.realpath(directory)

    # reading
    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            return None
        if mode == diskcache.core.MODE_RAW:
            return super().fetch(mode, filename, value, read)
        if mode not in (diskcache.core.MODE_BINARY, diskcache.core.MODE_TEXT):
            raise Damaged(f"the index holds a value of unknown mode {mode!r}")
        fd = self._open(filename)  # (a missing file raises OSError, which diskcache reads as a missing key)
        if mode == diskcache.core.MODE_BINARY and read:
            return os.fdopen(fd, "rb")  # (a value file: load_frame reads it as its header says, and checks it)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_TEXT_BYTES:
                raise Damaged(f"the index points at a file larger than {MAX_TEXT_BYTES >> 20} MiB")
            data = f.read(MAX_TEXT_BYTES + 1)
        if len(data) > MAX_TEXT_BYTES:
            raise Damaged(f"the index points at a file larger than {MAX_TEXT_BYTES >> 20} MiB")
        if mode == diskcache.core.MODE_BINARY:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise Damaged("the index points at a file that is not text") from None

    def get(self, key: Any, raw: bool) -> Any:
        """A key as stored: nbcache's keys are strings, stored raw; a pickled key is left unloaded."""
        return super().get(key, raw) if raw else None

    def _inside(self, filename: Any) -> str:
        """The resolved path of a regular file the index names: ``Damaged`` unless it lies inside the
        folder and is a regular file, not a link (not even to a file of the cache: deleting it would delete
        what another row names); ``OSError`` if it does not exist."""
        if not isinstance(filename, str) or not filename or "\0" in filename or os.path.isabs(filename):
            raise Damaged("the index points outside the cache directory")
        parts = filename.split(os.sep)
        if any(part in ("", ".", "..") for part in parts):
            raise Damaged("the index points outside the cache directory")
        if not filename.endswith(".val"):  # (diskcache names every value file so: never the index itself)
            raise Damaged("the index points at a file that is not a value file")
        path = self._root  # (each folder on the way checked, rather than the whole path resolved: 3 lstat, not 10)
        for part in parts[:-1]:
            path = os.path.join(path, part)
            if not stat.S_ISDIR(os.lstat(path).st_mode):  # a link, even to a folder inside, is not followed
                raise Damaged("the index points outside the cache directory")
        path = os.path.join(path, parts[-1])
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode) and not os.path.realpath(path).startswith(self._root + os.sep):
            raise Damaged("the index points outside the cache directory")
        if not stat.S_ISREG(mode):  # (before opening: a FIFO or a device is never opened)
            raise Damaged("the index points at something that is not a regular file")
        return path

    def _open(self, filename: Any) -> int:
        path = self._inside(filename)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a link since
                raise Damaged("the index points at a link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Damaged("the index points at something that is not a regular file")
        return fd

    # deleting
    def remove(self, file_path: Any) -> None:
        """Delete a value file whose row went, if it is a regular file inside the folder (anything else the
        row named is left where it is), and the folders it emptied."""
        try:
            path = self._inside(file_path)
            os.remove(path)
        except (Damaged, OSError):
            return  # (another process may have deleted it first)
        folder = os.path.dirname(path)
        while folder.startswith(self._root + os.sep):
            try:
                os.rmdir(folder)
            except OSError:
                return  # not empty, or gone
            folder = os.path.dirname(folder)

    # writing
    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> tuple:
        if isinstance(value, memoryview):  # (a blob's bytes, as another store kept it: the team cache's)
            if value.nbytes < _INLINE_BYTES:
                return 0, diskcache.core.MODE_RAW, None, sqlite3.Binary(value)
            filename, full_path = self.filename(key, value)
            return self._publish(full_path, lambda f: f.write(value), reserve=value.nbytes), \
                diskcache.core.MODE_BINARY, filename, None
        if not isinstance(value, Frame):
            return super().store(value, read, key=key)
        if value.nbytes < _INLINE_BYTES:
            return 0, diskcache.core.MODE_RAW, None, sqlite3.Binary(value.to_bytes())
        filename, full_path = self.filename(key, value)
        size = self._publish(full_path, value.write, reserve=value.nbytes)
        return size, diskcache.core.MODE_BINARY, filename, None

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        """diskcache's writer of text, bytes and pickles, through the same atomic publish."""
        def write(f: Any) -> int:
            size = 0
            for chunk in iterator:
                data = chunk.encode(encoding or "utf-8") if isinstance(chunk, str) else chunk
                f.write(data)
                size += len(chunk)
            return size

        return self._publish(full_path, write)

    def _publish(self, full_path: str, write: Callable[[Any], int], reserve: int = 0) -> int:
        """Write a new file at ``full_path`` through a temporary in the same folder, renamed into place once
        complete; on any failure the temporary is removed and the error raised."""
        temp = f"{full_path}.tmp-{os.getpid()}"
        fd = self._create(temp)
        try:
            with os.fdopen(fd, "wb") as f:
                if reserve:
                    try:  # reserve the space first, as np.save does: one allocation instead of many, and a
                        os.posix_fallocate(f.fileno(), 0, reserve)  # full disk fails here, not mid-write
                    except OSError as exc:
                        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                            raise
                size = write(f)
            os.replace(temp, full_path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        return size

    def _create(self, temp: str) -> int:
        """Open a new file for writing, creating its folders (0700) first; another process may remove an
        emptied folder in between, so this tries again a few times, as diskcache does."""
        folders = []
        folder = os.path.dirname(temp)
        while folder.startswith(self._directory + os.sep):
            folders.append(folder)
            folder = os.path.dirname(folder)
        for attempt in range(10):
            for folder in reversed(folders):
                with suppress(FileExistsError):
                    os.mkdir(folder, self.modes.dir)
            try:
                return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                               self.modes.file)
            except FileNotFoundError:
                if attempt == 9:
                    raise
        raise AssertionError("unreachable")


def entry_texts(cache: diskcache.Cache, batch: int = 2000) -> Iterator[tuple[str, Any]]:
    """(name, text) of every entry of the index, in the order stored, each read as ``get`` reads it (None for
    one whose file is gone, or that points outside the cache), but ``batch`` rows to a query: a ``get`` each
    took most of ``nbcache ls`` on 50,000 entries. No query stays open while the caller works on what it
    yields."""
    after = 0
    while True:
        rows = cache._sql("SELECT rowid, key, mode, filename, value FROM Cache WHERE rowid > ? AND raw = 1 AND"
                          " key >= 'entry:' AND key < 'entry;' ORDER BY rowid LIMIT ?", (after, batch)).fetchall()
        for rowid, name, mode, filename, value in rows:
            try:
                text = cache._disk.fetch(mode, filename, value, False)
            except (OSError, Damaged):  # (a file gone, as ``get`` finds a missing key; or one that is not ours)
                text = None
            yield name, text
        if len(rows) < batch:
            return
        after = rows[-1][0]
