"""The checks stored with a step's result: what its run turned out to depend on, and verifying it again.

A ``Check`` is one dependency seen while a step ran (``observe.py`` finds them), with what it was then: a
file's content hash and stat, a folder's listing, a global random generator's state, a setting's value, a
variable read through eval. Before a hit, every check of the entry must still hold; the first that does
not says, in words, why the step runs again.

Checks are stored as JSON lists. Reading them back validates every field, since an entry written by a
damaged disk or another nbcache must be recognised as damaged (and recomputed), not raise ``KeyError`` or
``TypeError`` out of a user's step.
"""

from __future__ import annotations

import os
import stat
from typing import Any, NamedTuple

import xxhash

from . import ambient
from .varchecks import (UNHASHABLE, alone_failure, held_failure, holder_failure, module_failure,
                        variable_failure)

__all__ = ["CHANGED_BY_THE_RUN", "HEAD", "KINDS", "NO_FILE", "UNHASHABLE", "Check", "appended_head",
           "checks_from_json", "file_digest", "first_failure", "listing_digest", "stat_of"]

KINDS = frozenset({"file", "wrote", "made", "folder", "gone", "tree", "state", "setting", "random", "variable",
                   "held", "holder", "alone", "appended", "module"})
"""Every kind of check; anything else in a stored entry means the entry is damaged."""
_FILE_KINDS = frozenset({"file", "wrote"})  # the checks that carry a stat
_PAIRED_KINDS = frozenset({"state", "setting"})  # digests "before|after": the state as a run found and left it

NONE = "none"  # the digest of a state whose library was not imported
NO_FILE = "no file"  # the digest of a file that was not there (one a run appended to, and read, made)
CHANGED_BY_THE_RUN = "changed by the run"  # the digest of what a file held before the run, gone: never holds
_HASH_CHUNK = 8 << 20
HEAD = 1 << 20  # the bytes of a file appended to that are hashed: its beginning (a big log is not read whole)


class Check(NamedTuple):
    """One dependency discovered while a step ran, with what it was then.

    ``kind`` is ``file`` (read), ``wrote`` (a file the step wrote), ``made`` (a folder it created), ``folder``
    (listed), ``gone`` (a path it deleted, not there when it ended), ``tree`` (a folder it deleted with ``rmtree``
    and made again: what it held then), ``state`` (the whole of an ambient state, e.g. display settings),
    ``setting`` (one key of a mapping state, ``name<TAB>key``), ``random`` (the state a global generator started
    from) or ``variable`` (a notebook variable read through eval). ``target`` is a path (relative to the folder the
    step started in when it is below it), a state's, a generator's or a variable's name. ``digest`` is the content
    hash (``before|after`` for a state or setting); ``stat`` the file's (size, mtime_ns, inode) for the fast path.
    """

    kind: str
    target: str
    digest: str
    stat: tuple[int, int, int] | None = None

    def to_json(self) -> list:
        return [self.kind, self.target, self.digest, list(self.stat) if self.stat else None]

    @classmethod
    def from_json(cls, item: Any) -> Check:
        """The check ``to_json`` gave; raises ValueError, saying what is wrong, for anything else."""
        if not isinstance(item, (list, tuple)) or len(item) != 4:
            raise ValueError(f"a check is a list [kind, target, digest, stat], not {_shown_value(item)}")
        kind, target, digest, st = item
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"unknown kind of check {_shown_value(kind)}")
        if not isinstance(target, str) or not target:
            raise ValueError(f"the target of a {kind} check is {_shown_value(target)}, not a non-empty string")
        what = f"{kind} check {_short(target)}"
        if not isinstance(digest, str) or not digest:
            raise ValueError(f"the digest of {what} is {_shown_value(digest)}, not a non-empty string")
        if kind in _PAIRED_KINDS and "|" not in digest:
            raise ValueError(f"the digest of {what} is not of the form 'before|after'")
        if kind == "setting" and "\t" not in target:
            raise ValueError(f"the target of {what} is not of the form 'state<TAB>key'")
        if st is None:
            return cls(kind, target, digest)
        if kind not in _FILE_KINDS:
            raise ValueError(f"a {kind} check has no stat, but {_short(target)} has {_shown_value(st)}")
        if not (isinstance(st, (list, tuple)) and len(st) == 3 and all(type(x) is int for x in st)):
            raise ValueError(f"the stat of {what} is {_shown_value(st)}, not [size, mtime_ns, inode]")
        return cls(kind, target, digest, (st[0], st[1], st[2]))

    def failure(self, namespace: dict | None, *, trust_stat: bool = True) -> str | None:
        """Why this dependency no longer holds, in words; None if it does. Unless ``trust_stat``, a file is
        compared by content even if its size, time and inode are as stored (another machine's stat: a fresh
        VM or a container can give another file the same)."""
        if self.kind in _FILE_KINDS:
            return self._file_failure(trust_stat)
        if self.kind == "made":
            if not os.path.isdir(self.target):
                return f"folder {shown_path(self.target)}, which it made, is gone"
            return None
        if self.kind == "folder":
            if listing_digest(self.target) != self.digest:
                return f"folder {shown_path(self.target)} changed (files added or removed)"
            return None
        if self.kind == "gone":  # (a hit would not delete it: the run does)
            return f"{shown_path(self.target)}, which it deletes, is there" if os.path.lexists(self.target) else None
        if self.kind == "tree":
            if tree_digest(self.target) != self.digest:
                return f"folder {shown_path(self.target)}, which it deletes and makes again, holds other files"
            return None
        if self.kind in _PAIRED_KINDS:
            return self._state_failure()
        if self.kind == "random":
            if self.digest == ambient.WORKER_DRAW:  # (made on a Dask worker, where the generator is not the user's)
                if ambient.RAN_ON.get() is None:
                    return (f"the {self.target} global random generator changed while it ran on a Dask worker"
                            " (the worker's, which Dask's own threads draw from too: whether the step drew from"
                            " it cannot be told); here the generator is yours, so it runs again")
                return None
            if ambient.state_hash(self.target) != self.digest:
                return (f"the {self.target} global random state differs from the one it started from when"
                        " cached (it draws random numbers without seeding them)")
            return None
        if self.kind == "variable":
            return variable_failure(self.target, self.digest, namespace)
        if self.kind == "held":
            return held_failure(self.target, self.digest, namespace)
        if self.kind == "holder":
            return holder_failure(self.target, self.digest, namespace)
        if self.kind == "alone":
            return alone_failure(self.target, self.digest, namespace)
        if self.kind == "appended":
            return self._appended_failure()
        if self.kind == "module":
            return module_failure(self.target, self.digest)
        return f"it depends on something this nbcache does not know ({self.kind})"

    def _file_failure(self, trust_stat: bool) -> str | None:
        what = f"file {shown_path(self.target)}" if self.kind == "file" else f"{shown_path(self.target)}, a file it wrote,"
        try:
            st = os.stat(self.target)
        except OSError:
            return None if self.digest == NO_FILE else f"{what} was removed"
        if not stat.S_ISREG(st.st_mode):  # a device or a pipe now: never read one to compare it
            return f"{what} is no longer a regular file"
        if self.digest == CHANGED_BY_THE_RUN:
            return (f"it changed {shown_path(self.target)} as it read it (a SQLite database, or a file emptied or"
                    " made anew), and what it read is gone: it runs every time")
        if trust_stat and self.stat is not None and stat_of(st) == self.stat:
            return None
        if file_digest(self.target) != self.digest:
            return f"{what} changed"
        return None  # the same content: `refreshed` gives this check with the new size, time and inode

    def _state_failure(self) -> str | None:
        name, _, key = self.target.partition("\t")
        before, _, after = self.digest.partition("|")
        now = ambient.state_hash(name) if not key else ambient.setting_hash(name, key)
        if (now or NONE) in (before, after):  # as it started, or as it left it (run again in a kernel)
            return None
        kind = ambient.BY_NAME.get(name)
        if kind is not None and kind.computing is not None and key == kind.computing[0]:
            what = f"{name} {key}"  # (the warnings filters that decide whether a warning raises)
        else:
            what = (name[:-1] if name.endswith("s") else name) + f" {key}" if key else name
        plural = what.endswith("s")
        return f"the {what} {'differ' if plural else 'differs'} from when it was cached"

    def _appended_failure(self) -> str | None:
        """A file it appended to and did not read (a log): still there, and beginning as it did when the run
        ended (what was appended since, by other steps or calls, does not count; a file emptied or made anew
        does)."""
        what = f"{shown_path(self.target)}, a file it appended to,"
        size, _, head = self.digest.partition(":")
        try:
            st = os.stat(self.target)
        except OSError:
            return f"{what} was removed"
        if st.st_size < int(size) or file_digest(self.target, min(int(size), HEAD)) != head:
            return f"{what} no longer begins with what it held then (emptied, or made anew)"
        return None

    def refreshed(self) -> Check | None:
        """For a file whose content matched but whose stat did not (touched, checked out again), or had none
        (pulled from another machine): this check with its stat now, so that the next lookup does not read
        the file again."""
        if self.kind not in _FILE_KINDS:
            return None
        try:
            now = stat_of(os.stat(self.target))
        except OSError:
            return None
        return None if now == self.stat else Check(self.kind, self.target, self.digest, now)


def first_failure(checks: tuple[Check, ...], namespace: dict | None, *,
                  trust_stat: bool = True) -> tuple[str | None, tuple[Check, ...]]:
    """Why the first check that fails fails (None if all hold), and, when all hold but some files were
    compared by content, the checks with their files' stat now (empty if none was). ``trust_stat``: see
    ``Check.failure`` (False for checks another machine stored)."""
    for check in checks:
        try:
            reason = check.failure(namespace, trust_stat=trust_stat)
        except Exception as exc:  # erring toward running
            reason = f"{check.kind} {check.target} could not be checked ({type(exc).__name__})"
        if reason:
            return reason, ()
    refreshed = [check.refreshed() for check in checks]
    if not any(refreshed):
        return None, ()
    return None, tuple(new or old for new, old in zip(refreshed, checks))


def checks_from_json(items: Any) -> tuple[Check, ...]:
    """The checks of an entry (None: it has none); raises ValueError, saying which check is wrong and how,
    if they are malformed (the entry is then damaged)."""
    if items is None:
        return ()
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"malformed checks (a list of checks, not {_shown_value(items)})")
    checks = []
    for i, item in enumerate(items):
        try:
            checks.append(Check.from_json(item))
        except ValueError as exc:
            raise ValueError(f"malformed check #{i + 1} of {len(items)} ({exc})") from None
    return tuple(checks)


def _shown_value(value: Any) -> str:
    """A stored value as a message shows it: its type, and the start of its repr."""
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text[:40] + "..." if len(text) > 40 else text


def shown_path(path: str) -> str:
    """A path as a reason shows it: relative to the working directory when it is below it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:
        return path
    return relative if not relative.startswith("..") else path


def stat_of(st: os.stat_result) -> tuple[int, int, int]:
    """What a file check remembers of a file's stat: (size, mtime_ns, inode)."""
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def appended_head(path: str) -> str:
    """What an ``appended`` check keeps of a file: its length, and the digest of its first ``HEAD`` bytes."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return f"0:{file_digest(os.devnull, 0)}"
    return f"{size}:{file_digest(path, min(size, HEAD))}"


def file_digest(path: str, limit: int | None = None) -> str:
    """The content hash of a file (of its first ``limit`` bytes); "" if it cannot be read."""
    h = xxhash.xxh3_128()
    left = -1 if limit is None else limit
    try:
        with open(path, "rb", buffering=0) as f:
            while left and (chunk := f.read(_HASH_CHUNK if left < 0 else min(left, _HASH_CHUNK))):
                h.update(chunk)
                left -= len(chunk) if left > 0 else 0
    except OSError:
        return ""
    return h.hexdigest()


def tree_digest(path: str) -> str:
    """The hash of the names of everything below a folder; "" if it is not there."""
    if not os.path.isdir(path):
        return ""
    names = sorted(os.path.relpath(os.path.join(d, n), path) for d, dirs, files in os.walk(path) for n in dirs + files)
    return xxhash.xxh3_128("\0".join(["tree", *names]).encode("utf-8", "surrogatepass")).hexdigest()


def listing_digest(path: str) -> str:
    """The hash of a folder's file names; "" if it cannot be listed."""
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return ""
    return xxhash.xxh3_128("\0".join(names).encode("utf-8", "surrogatepass")).hexdigest()
