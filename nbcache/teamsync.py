"""``nbcache push``, ``pull`` and ``ls --remote``: a cache directory and its team cache compared, and what one
lacks copied from the other, for a command that waits for it.

The remote given is ``strict`` (``remote.py``): a failure raises ``RemoteError``, which the command reports. What
the remote holds is listed in one listing (on S3, one request per 1000 names); its entries' records are read
``READ_BATCH`` at a time with fsspec's ``cat``, which s3fs runs concurrently, one GET each of an object's last
``TAIL`` bytes (``teamentry.py``). A push uploads each result as a step's background upload does
(``teamcache.upload``: values first, entry last); a pull copies each in as a team-cache hit does
(``TeamCache.take``, which downloads the whole entry object if it needs a value carried in it): the entry's seal
is checked with the local key first, and an entry not sealed with it is refused, counted, and nothing of it is
downloaded or unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

from .cache import Cache
from .entry import Entry
from .frame import Damaged
from .keys import key_id
from .remote import Remote
from .teamcache import upload
from .teamentry import MAX_RECORD, TAIL, TeamEntry, Unreadable, read_record

__all__ = ["READ_BATCH", "RemoteStep", "Transfer", "pull", "push", "remote_steps"]

READ_BATCH = 500  # entries read together: a batch of GETs in flight, and what is held in memory at once


@dataclass
class Transfer:
    """What ``push`` or ``pull`` did, counted in results (a result: an entry and the values it names)."""

    copied: int = 0  # results copied, each entry after all its values
    values: int = 0  # values copied (one the other side has already, for another result, is not sent again)
    bytes: int = 0  # the bytes of those values
    present: int = 0  # results the other side has already
    refused: int = 0  # not sealed with this key (made under another one, or changed since): not copied
    incomplete: int = 0  # a value of theirs is missing (gone here; not on the remote): not copied
    unreadable: int = 0  # pull: an entry on the remote that does not read (damaged, or not nbcache's)
    steps: set[str] = field(default_factory=set)  # the steps of every result looked at, whatever the step asked

    def count(self, sent: dict[str, int]) -> None:
        """Count a result copied, with ``sent``: the bytes of each value copied for it, by address."""
        self.copied += 1
        self.values += len(sent)
        self.bytes += sum(sent.values())


@dataclass
class RemoteStep:
    """A step as ``nbcache ls --remote`` lists it: its results on the remote, their values' bytes (as each
    entry counts them), and who stored the latest of them, when (``at``: an ISO time, as the remote has it)."""

    step: str
    entries: int = 0
    bytes: int = 0
    by: str = ""
    at: str = ""


def push(cache: Cache, remote: Remote, step: str | None = None) -> Transfer:
    """Upload every result of ``cache``'s store (or of ``step``) that ``remote`` does not have, each entry sealed
    with ``cache``'s key (one sealed with another is not the team's to share: counted as refused)."""
    store, done = cache.store(), Transfer()
    on_remote, there = _names(remote, "entries"), None
    for key, entry in list(store.entries()):
        done.steps.add(entry.step)
        if step is not None and entry.step != step:
            continue
        if key in on_remote:
            done.present += 1
            continue
        try:
            cache.check_seal(key, entry)
        except Damaged:
            done.refused += 1
            continue
        if there is None:  # (listed once, when there is something to send)
            there = _names(remote, "blobs")
        sent = upload(remote, store, key, entry, _iso(entry.created_at), key_id(cache.key), there)
        if sent is None:
            done.incomplete += 1
        else:
            done.count(sent)
    return done


def pull(cache: Cache, remote: Remote, step: str | None = None) -> Transfer:
    """Copy into ``cache``'s store every result of ``remote`` (or of ``step``) it does not have, each checked
    against ``cache``'s key before anything of it is downloaded."""
    store, done = cache.store(), Transfer()
    here = {key: entry.step for key, entry in store.entries()}
    new = []
    for key in sorted(_names(remote, "entries")):
        if key not in here:
            new.append(key)
        else:
            done.steps.add(here[key])
            done.present += step in (None, here[key])
    for key, found in _read_entries(remote, new):
        entry = _entry_of(found)
        if entry is not None:
            done.steps.add(entry.step)
        if step is not None and (entry is None or entry.step != step):
            continue
        if found is None or entry is None:
            done.unreadable += 1  # (counted only when every step is pulled: whose it is cannot be read)
            continue
        missing = [a for a in dict.fromkeys(entry.blobs) if not store.has_blob(a)]
        try:
            taken = cache.team.take(remote, store, key, found)
        except Damaged:
            done.refused += 1
            continue
        if taken is None:
            done.incomplete += 1
        else:
            done.count({address: found.sizes.get(address, 0) for address in missing})
    return done


def remote_steps(remote: Remote) -> tuple[list[RemoteStep], int]:
    """Every step ``remote`` holds results of, by name, and how many of its entries do not read (damaged, or
    not nbcache's). Nothing is checked against a key: this is what the remote says it holds."""
    steps: dict[str, RemoteStep] = {}
    unreadable = 0
    for _, found in _read_entries(remote, sorted(_names(remote, "entries"))):
        entry = _entry_of(found)
        if found is None or entry is None:  # (both: the type checker learns that found is not None)
            unreadable += 1
            continue
        summary = steps.setdefault(entry.step, RemoteStep(entry.step))
        summary.entries += 1
        summary.bytes += sum(found.sizes.values())
        if not summary.at or _moment(found.at) >= _moment(summary.at):
            summary.by, summary.at = found.by, found.at
    return sorted(steps.values(), key=lambda s: s.step), unreadable


def _names(remote: Remote, kind: str) -> set[str]:
    """The names in the remote's folder ``kind`` (``entries``: cache keys; ``blobs``: content addresses)."""
    try:
        found = remote.fs.find(f"{remote.root}/{kind}")
    except Exception as exc:
        raise remote.failure(f"listing its {kind}", exc) from exc
    names = (path.rsplit("/", 1)[-1] for path in found)
    return {name for name in names if name and not name.startswith(".")}


def _read_entries(remote: Remote, keys: Iterable[str]) -> Iterator[tuple[str, TeamEntry | None]]:
    """(key, the remote's record of it) for each of ``keys`` still there; None for a record that does not read.
    Only the end of each object is read (``TAIL`` bytes, where its record is), not the values it carries."""
    keys = list(keys)
    for start in range(0, len(keys), READ_BATCH):
        paths = [f"{remote.root}/entries/{key}" for key in keys[start:start + READ_BATCH]]
        try:
            found = remote.fs.cat(paths, start=-TAIL, on_error="return")
        except Exception as exc:
            raise remote.failure("reading its entries", exc) from exc
        for path, data in found.items():
            if isinstance(data, FileNotFoundError):
                continue  # (removed since it was listed)
            if isinstance(data, BaseException):
                raise remote.failure("reading its entries", data) from data
            yield path.rsplit("/", 1)[-1], _record(remote, path, data)


def _record(remote: Remote, path: str, tail: bytes) -> TeamEntry | None:
    """The record at the end of the entry object at ``path``, of which ``tail`` are the last bytes."""
    size = len(tail) if len(tail) < TAIL else None
    try:
        try:
            found = read_record(tail, size)
            if isinstance(found, int):  # (a record longer than TAIL)
                found = read_record(remote.fs.cat_file(path, start=-found), None)
        except Unreadable:
            if size is not None:
                return None
            data = remote.fs.cat_file(path, start=0, end=MAX_RECORD + 1)  # (a record alone, as written before
            found = read_record(data, len(data))  # values travelled inline; a longer one is not an entry)
    except Unreadable:
        return None
    except Exception as exc:
        raise remote.failure("reading its entries", exc) from exc
    return found if isinstance(found, TeamEntry) else None


def _entry_of(found: TeamEntry | None) -> Entry | None:
    """The entry a record holds, unchecked (for its step's name), or None if it does not read as one."""
    try:
        return None if found is None else Entry.from_json(found.entry)
    except Damaged:
        return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def _moment(at: str) -> datetime:
    """``at`` as a time to compare; the earliest one for a text that is not an ISO time with its offset."""
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
