"""The team cache, with the real engines on loopback: an S3 server from moto and s3fs as the client. Each
"machine" is a process with a cache directory of its own; they share a bucket and a signing key."""

from __future__ import annotations

import dataclasses
import json
import io
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import nbcache
from nbcache import remote as remote_module
from nbcache.remote import Remote, RemoteError
from nbcache.teamentry import INLINE, TAIL, TeamEntry, Unreadable, read_record

from .moto_s3 import REQUESTS, aws_env, bucket, change_sealed, endpoint  # noqa: F401  (fixtures)

TEAM_KEY = secrets.token_hex(32)

STEP = '''
import sys, nbcache

@nbcache.step
def squares(n):
    sys.stderr.write("BODY RAN\\n")  # (a file it wrote would be an effect of the step, kept with its result)
    return [i * i for i in range(n)]

print(sum(squares(int(sys.argv[1]))))
run = nbcache.runs()[-1]
print(run.cached, "|", run.reason)
print(run.state.value)
'''


def _machine(tmp_path: Path, name: str, remote: str, n: int = 1000, key: str = TEAM_KEY,
             **extra: str) -> tuple[list[str], str]:
    """Run the step in a new process with its own cache directory; (its stdout lines, its stderr). Each run
    of the body is counted in the machine's ``ran.log``."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    script = folder / "step.py"
    if not script.exists():  # (a test may give a machine a step of its own)
        script.write_text(STEP)
    env = {**os.environ, "NBCACHE_DIR": str(folder / "cache"), "NBCACHE_REMOTE": remote, "NBCACHE_KEY": key,
           **extra}
    env.pop("NBCACHE_KEY_FILE", None)
    proc = subprocess.run([sys.executable, str(script), str(n)], capture_output=True, text=True, env=env,
                          cwd=folder, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open(folder / "ran.log", "a") as log:
        log.write("ran\n" * proc.stderr.count("BODY RAN"))
    return proc.stdout.splitlines(), proc.stderr.replace("BODY RAN\n", "")


def _ran(tmp_path: Path, name: str) -> int:
    log = tmp_path / name / "ran.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_second_machine_gets_the_first_ones_result_without_running_the_body(tmp_path, bucket):
    remote = f"s3://{bucket}/team"
    first, _ = _machine(tmp_path, "alice", remote)
    assert first[0] == str(sum(i * i for i in range(1000))) and first[1].startswith("False")
    second, _ = _machine(tmp_path, "bob", remote)
    assert second[0] == first[0] and _ran(tmp_path, "bob") == 0, second
    cached, reason = second[1].split(" | ")
    assert cached == "True" and reason.startswith("cache hit (team cache, computed by ")
    assert f"@{socket.gethostname()} at " in reason and second[2] == "team hit"  # (its own colour)
    third, _ = _machine(tmp_path, "bob", "")  # now in bob's own cache: no remote needed
    assert third == [first[0], "True | cache hit", "hit"] and _ran(tmp_path, "bob") == 0
    other, _ = _machine(tmp_path, "bob", remote, n=10)  # a call nobody made runs, and is shared in turn
    assert other[1].startswith("False") and _ran(tmp_path, "bob") == 1
    assert _machine(tmp_path, "carol", remote, n=10)[0][1].startswith("True") and _ran(tmp_path, "carol") == 0


def test_a_result_signed_with_another_key_or_changed_is_refused_and_computed(tmp_path, bucket):
    """A result sealed with another key (a teammate without the team's key) is refused, and left as it is: the
    other key's result is not uploaded over it. One changed since it was sealed with this key is replaced."""
    remote = f"s3://{bucket}/team"
    _machine(tmp_path, "alice", remote)
    fs = Remote(remote).fs
    [entry_path] = fs.find(f"{bucket}/team/v{nbcache.CACHE_FORMAT}/entries")
    alices, mallorys_key = fs.cat_file(entry_path), secrets.token_hex(32)
    for name in ("mallory", "mallory again"):  # (a fresh cache directory: she looks in the team cache again)
        out, err = _machine(tmp_path, name, remote, key=mallorys_key)
        assert out[1].startswith("False") and "sealed with another key (key id " in err
        assert "not uploaded over it" in err and err.count("CacheWarning") == 1
        fs.invalidate_cache()
        assert fs.cat_file(entry_path) == alices  # (still the team's)
    assert _ran(tmp_path, "mallory") == _ran(tmp_path, "mallory again") == 1
    out, _ = _machine(tmp_path, "carol", remote)
    assert out[2] == "team hit" and _ran(tmp_path, "carol") == 0
    change_sealed(fs, entry_path)  # a field under the seal
    out, err = _machine(tmp_path, "bob", remote)
    assert out[1].startswith("False") and _ran(tmp_path, "bob") == 1 and "refused" in err
    assert "another key" not in err  # (sealed with this key, then changed: damage)
    fs.invalidate_cache()
    out, _ = _machine(tmp_path, "dave", remote)  # (replaced by bob's upload)
    assert out[2] == "team hit" and _ran(tmp_path, "dave") == 0


VALUE_STEP = '''
import sys, nbcache

@nbcache.step
def block(n):
    sys.stderr.write("BODY RAN\\n")
    return n.to_bytes(8, "big") * (n // 8)

print(len(block(int(sys.argv[1]))))
run = nbcache.runs()[-1]
print(run.cached, "|", run.reason)
'''


@pytest.mark.parametrize("damage", ["cut short", "changed"])
@pytest.mark.parametrize("carried", [True, False], ids=["in its entry", "by itself"])
def test_a_damaged_value_in_the_team_cache_is_computed_and_replaced(tmp_path, bucket, damage, carried):
    """A value up to INLINE bytes travels inside its entry's object; a bigger one is an object of its own."""
    remote = f"s3://{bucket}/team"
    n = 4000 if carried else INLINE + (1 << 20)
    for name in ("alice", "bob", "carol"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.py").write_text(VALUE_STEP)
    _machine(tmp_path, "alice", remote, n=n)
    fs = Remote(remote).fs
    (path,) = fs.find(f"{bucket}/team/v{nbcache.CACHE_FORMAT}/{'entries' if carried else 'blobs'}")
    data = fs.cat_file(path)
    end = sum(size for _, size in read_record(data, len(data)).inline) if carried else len(data)
    assert end > n  # (the value, signed)
    fs.pipe_file(path, data[:-100] if damage == "cut short" else data[:end - 100] + bytes(100) + data[end:])
    out, err = _machine(tmp_path, "bob", remote, n=n)
    assert out[1].startswith("False | the team cache's result was damaged (") and _ran(tmp_path, "bob") == 1
    assert "damaged" in err  # (the reason says so, not "first run": bob never ran it)
    assert fs.cat_file(path)[:end] == data[:end]  # (replaced by bob's upload)
    out, _ = _machine(tmp_path, "carol", remote, n=n)
    assert out[1].startswith("True | cache hit (team cache") and _ran(tmp_path, "carol") == 0


def test_an_unreachable_remote_leaves_the_local_cache_working_with_one_warning(tmp_path, bucket):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    out, err = _machine(tmp_path, "alice", f"s3://{bucket}/team", AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
                        NBCACHE_REMOTE_TIMEOUT="2")
    assert out[1].startswith("False") and err.count("CacheWarning") == 1 and "team cache" in err
    assert time.monotonic() - t0 < 60
    again, err = _machine(tmp_path, "alice", "")
    assert again[1] == "True | cache hit" and err == ""


def test_an_upload_that_cannot_send_every_value_publishes_no_entry(tmp_path, bucket, monkeypatch):
    from nbcache.teamcache import TeamCache

    remote_url = f"s3://{bucket}/team"
    monkeypatch.setenv("NBCACHE_REMOTE", remote_url)
    cache = nbcache.Cache(tmp_path / "local", key=TEAM_KEY)

    @nbcache.step(cache=cache)
    def pair(n):
        return list(range(n)), n

    original = TeamCache._push

    def losing_a_value(self, remote, store, key, entry, record):
        store.delete("", entry.blobs[-1:])  # (the last value is gone before it is sent)
        original(self, remote, store, key, entry, record)

    monkeypatch.setattr(TeamCache, "_push", losing_a_value)
    pair(3)
    assert cache.team.flush(60)
    fs = Remote(remote_url).fs
    assert fs.find(f"{bucket}/team/v{nbcache.CACHE_FORMAT}/entries") == []
    monkeypatch.setattr(TeamCache, "_push", original)
    pair(4)
    assert cache.team.flush(60)
    assert len(fs.find(f"{bucket}/team/v{nbcache.CACHE_FORMAT}/entries")) == 1


def test_set_remote_none_returns_to_the_environment(tmp_path, monkeypatch):
    cache = nbcache.Cache(tmp_path / "local")
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "from-env"))
    assert cache.team.remote.url == str(tmp_path / "from-env")
    cache.team.set(str(tmp_path / "set"), {})
    assert cache.team.remote.url == str(tmp_path / "set")
    cache.team.set("", {})
    assert cache.team.remote is None
    cache.team.set(None, {})
    assert cache.team.remote.url == str(tmp_path / "from-env")


def test_a_remote_given_wrong_says_what_to_do():
    with pytest.raises(RemoteError, match="URL"):
        nbcache.set_remote("   ")
    with pytest.raises(RemoteError, match="cannot use 'nosuchprotocol://x'"):
        nbcache.set_remote("nosuchprotocol://x")
    # a typo, or a folder nobody else sees, made a folder here silently where a team cache was meant
    with pytest.raises(RemoteError, match="looks like a URL without its '//': for a bucket, give s3://bucket/team"):
        nbcache.set_remote("s3:/bucket/team")
    with pytest.raises(RemoteError, match="'team-bucket/nbcache' is a relative path, a folder of the current"):
        nbcache.set_remote("team-bucket/nbcache")
    with pytest.raises(RemoteError) as raised:  # (credentials written into a URL are never shown)
        nbcache.set_remote("nosuchprotocol://user:s3cret@x")
    assert "s3cret" not in str(raised.value)
    for url in ("s3://AKIAXXXX:S3CR3T@bucket/team", "s3://AKIAXXXX:wJal/K7MD/S3CR3T@bucket/team"):
        with pytest.raises(RemoteError, match="with credentials in its URL") as raised:  # (s3fs would show them)
            nbcache.set_remote(url)  # (a secret may hold "/": a third of AWS's do)
        assert "S3CR3T" not in str(raised.value) and "AKIAXXXX" not in str(raised.value)
    nbcache.set_remote(None)
    from nbcache.remoteio import shown

    for url in ("abfs://container@account.dfs.core.windows.net/nbcache", "s3://bucket/users/alice@corp.com/cache",
                "file:///tmp/x/a@b/cache"):  # (Azure's own form, and an @ in a path: no credentials)
        assert shown(url) == url


def test_a_remote_that_never_answers_holds_a_step_up_one_timeout_not_minutes(tmp_path, bucket):
    """s3fs tried each request five times over, around botocore's own tries: 13 minutes of a hang at the
    default 10 s timeout. Now one wait, then one warning, and the local cache alone."""
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        t0 = time.monotonic()
        out, err = _machine(tmp_path, "alice", f"s3://{bucket}/team",
                            AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.getsockname()[1]}", NBCACHE_REMOTE_TIMEOUT="1")
        took = time.monotonic() - t0
    assert out[1].startswith("False") and err.count("CacheWarning") == 1 and "team cache" in err
    assert took < 40, took  # (one 1 s wait on the lookup, one on the upload; it took 120 s and more)


def test_a_request_to_a_remote_that_never_answers_is_sent_once(bucket, monkeypatch):
    """botocore took `max_attempts: 1` for one retry: two waits of the timeout for each request."""
    accepted = []
    with socket.socket() as server:  # accepts connections, never answers
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.1)

        def accept() -> None:
            while not done.is_set():
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    continue

        done = threading.Event()
        listener = threading.Thread(target=accept)
        listener.start()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("NBCACHE_REMOTE_TIMEOUT", "1")
        try:
            remote = Remote(f"s3://{bucket}/team")
            with pytest.warns(nbcache.CacheWarning, match="failed while looking up a result"):
                assert remote.get_entry("k" * 32) is None
        finally:
            done.set()
            listener.join()
            for connection in accepted:
                connection.close()
    assert len(accepted) == 1


def test_a_timeout_given_wrong_is_said_and_the_local_cache_works(tmp_path, bucket):
    out, err = _machine(tmp_path, "alice", f"s3://{bucket}/team", NBCACHE_REMOTE_TIMEOUT="10s")
    assert out[1].startswith("False") and "NBCACHE_REMOTE_TIMEOUT is a number of seconds" in err
    assert "could not be read" not in err
    again, _ = _machine(tmp_path, "alice", f"s3://{bucket}/team", NBCACHE_REMOTE_TIMEOUT="10s")
    assert again[1] == "True | cache hit"


def test_an_object_too_big_to_be_an_entry_is_not_read_whole(tmp_path, bucket, monkeypatch):
    monkeypatch.setattr(remote_module, "ENTRY_MAX", 1000)  # (as a 1.5 GB object would be against 32 MB)
    remote = Remote(f"s3://{bucket}/team")
    path = remote._path("entries", "0" * 32)
    remote.fs.pipe_file(path, b"x" * 5000)
    read = []
    original = remote.fs.cat_file
    monkeypatch.setattr(remote.fs, "cat_file", lambda *a, **k: read.append(original(*a, **k)) or read[-1])
    with pytest.warns(nbcache.CacheWarning, match="bigger than an entry"):
        assert remote.get_entry("0" * 32) is None
    assert [len(data) for data in read] == [1001]


def test_a_folder_on_a_shared_file_system_is_a_remote_too(tmp_path):
    shared = tmp_path / "shared"
    first, _ = _machine(tmp_path, "alice", str(shared))
    second, _ = _machine(tmp_path, "bob", str(shared))
    assert second[0] == first[0] and second[1].startswith("True | cache hit (team cache")
    assert _ran(tmp_path, "bob") == 0
    assert not [p for p in shared.rglob("*") if ".tmp" in p.name or p.name.startswith("tmp")]


def test_an_entry_stored_before_values_travelled_inline_is_read_and_a_folder_in_its_place_is_not(tmp_path,
                                                                                                  monkeypatch):
    """An entry object that is its record alone (as nbcache wrote it before), even one longer than what ``ls
    --remote`` reads of each object's end, still serves a hit and is listed. A folder where an entry should be
    (a shared file system) is a damaged entry: said, and computed; the remote is not given up for it."""
    from nbcache import teamsync

    shared = tmp_path / "shared"
    monkeypatch.setenv("NBCACHE_REMOTE", str(shared))
    def square(n):
        return n * n

    alice = nbcache.Cache(tmp_path / "alice", key=TEAM_KEY)
    nbcache.step(square, cache=alice)(3), nbcache.step(square, cache=alice)(4)
    assert alice.team.flush(30)
    folder = shared / f"v{nbcache.CACHE_FORMAT}"
    entries = sorted((folder / "entries").iterdir())
    data = entries[0].read_bytes()
    record = read_record(data, len(data))
    (folder / "blobs").mkdir()
    for address, (start, size) in record.carried().items():  # (then, every value was an object of its own)
        (folder / "blobs" / address).write_bytes(data[start:start + size])
    old = {"entry": record.entry, "by": record.by, "at": record.at, "pad": "x" * TAIL}
    entries[0].write_text(json.dumps(old))
    entries[1].unlink()
    entries[1].mkdir()
    steps, unreadable = teamsync.remote_steps(Remote(str(shared), strict=True))
    assert [(s.step, s.entries) for s in steps] == [("square", 1)] and unreadable == 0

    bob = nbcache.Cache(tmp_path / "bob", key=TEAM_KEY)
    with pytest.warns(nbcache.CacheWarning, match="holds a damaged entry") as said:
        assert [nbcache.step(square, cache=bob)(n) for n in (3, 4)] == [9, 16]
    assert len(said) == 1 and bob.team.remote.available  # (one of them served, from the entry of the old kind)
    assert sorted(r.cached for r in bob.runs()) == [False, True] and "team hit" in [r.state.value for r in bob.runs()]


def test_requests_follow_the_cost_model(tmp_path, bucket):
    """A miss: one request, the entry's lookup; then in the background the entry's upload, carrying the values
    up to INLINE bytes, after one conditional upload per bigger value (S3 refuses it if the value is there
    already: nothing is overwritten). A team-cache hit: the entry's read and one read per value not carried
    and not already local. A hit in the local cache: nothing."""
    remote = f"s3://{bucket}/team"
    folder = f"/{bucket}/team/v{nbcache.CACHE_FORMAT}"

    def requests(name: str, n: int = 1000) -> list[str]:
        REQUESTS.seen.clear()
        _machine(tmp_path, name, remote, n=n)
        return REQUESTS.of(bucket)

    miss = requests("alice")
    assert [r.split(" ")[0] for r in miss] == ["GET", "PUT"], miss
    assert f"{folder}/entries/" in miss[0] and f"{folder}/entries/" in miss[1]
    hit = requests("bob")
    assert [r.split(" ")[0] for r in hit] == ["GET"] and f"{folder}/entries/" in hit[0], hit
    assert requests("bob") == []
    (tmp_path / "erin").mkdir()
    (tmp_path / "erin" / "step.py").write_text(STEP.replace("i * i", "i * i + 0"))  # other code, same values
    same_value = requests("erin")
    assert [r.split(" ")[0] for r in same_value] == ["GET", "PUT"], same_value

    big = INLINE + 1000
    for name in ("frank", "grace", "heidi"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "step.py").write_text(VALUE_STEP.replace("block(n):", "block(n):\n    n = n - 0"
                                                                    if name == "heidi" else "block(n):"))
    miss = requests("frank", big)
    assert [r.split(" ")[0] for r in miss] == ["GET", "PUT", "PUT"], miss
    assert f"{folder}/entries/" in miss[0] and f"{folder}/blobs/" in miss[1] and f"{folder}/entries/" in miss[2]
    hit = requests("grace", big)
    assert [r.split(" ")[0] for r in hit] == ["GET", "GET"], hit
    assert f"{folder}/entries/" in hit[0] and f"{folder}/blobs/" in hit[1]
    same_value = requests("heidi", big)  # (other code, the same big value: its upload is refused, not written)
    assert [r.split(" ")[0] for r in same_value] == ["GET", "PUT", "PUT"], same_value


def test_an_entry_object_reads_back_and_one_damaged_is_not_read():
    """The values an entry carries, then its record: read from the object's end, whole or in part."""
    record = TeamEntry('{"step": "s"}', "me@here", "2026-12-06T00:00:00+00:00", {"a": 5, "b": 3, "c": 9},
                       (("a", 5), ("b", 3)), "0123456789abcdef")
    data = b"hello" + b"abc" + record.record()
    assert read_record(data, len(data)) == record and record.carried() == {"a": (0, 5), "b": (5, 3)}
    need = read_record(data[-20:], None)  # (``ls --remote`` reads the end of an object first)
    assert isinstance(need, int) and read_record(data[-need:], None) == record
    for damaged, size in [(data[:-1], len(data) - 1), (data[1:], len(data) - 1), (data + b"x", len(data) + 1),
                          (b"\x00" * 40, 40), (data, len(data) + 1)]:
        with pytest.raises(Unreadable):
            read_record(damaged, size)
    old = json.dumps({"entry": "{}", "by": "me@here", "at": "then"}).encode()  # (before values travelled inline)
    assert read_record(old, len(old)) == TeamEntry("{}", "me@here", "then")  # (nor said which key sealed it)
    odd = json.dumps({"entry": "{}", "by": "me@here", "at": "then", "key": 5}).encode()
    assert read_record(odd, len(odd)).key == ""  # (a key id that is not one: the record does not say)
    told = json.dumps({"entry": "{}", "by": "me\x1b[2J@here\n", "at": "then\r", "key": "k\x07"}).encode()
    assert read_record(told, len(told)) == TeamEntry("{}", "me?[2J@here?", "then?", key="k?")  # (outside the seal)
    long = dataclasses.replace(record, entry=json.dumps({"step": "s" * (TAIL + 10)}))  # (longer than TAIL)
    data = b"hello" + b"abc" + long.record()
    need = read_record(data[-TAIL:], None)
    assert isinstance(need, int) and read_record(data[-need:], None) == read_record(data, len(data)) == long
    for inline in [(("a", 0), ("b", 8)), (("a", 5), ("a", 3))]:  # (a value of no bytes; one carried twice)
        crafted = dataclasses.replace(record, inline=inline)
        with pytest.raises(Unreadable):
            read_record(b"helloabc" + crafted.record(), 8 + len(crafted.record()))


def test_a_big_value_is_read_in_ranges_and_one_cut_short_is_not_used(tmp_path, monkeypatch):
    from nbcache import remoteio

    monkeypatch.setattr(remoteio, "RANGE", 1000)
    remote = Remote(str(tmp_path / "shared"))
    value = os.urandom(4500)
    assert remote.put_blob("abc", value) and remote.put_blob("abc", b"other bytes")  # (kept: immutable)
    got: list[bytes] = []
    assert remote.copy_blob("abc", len(value), lambda f: got.append(f.read()))
    assert remote.copy_blob("abc", len(value), lambda f: got.append(b"".join(iter(lambda: f.read(300), b""))))
    assert got == [value, value]  # (whole, or in pieces as a store reads it)
    with pytest.warns(nbcache.CacheWarning, match="holds a damaged value"):  # not as its entry says
        assert not remote.copy_blob("abc", len(value) + 10, lambda f: f.read())
    assert not remote.copy_blob("nothing", 10, lambda f: f.read()) and remote.available


def test_uploads_wait_in_a_bounded_queue_and_push_sends_what_did_not_fit(tmp_path, monkeypatch):
    import threading

    from nbcache import teamcache, teamsync

    release = threading.Event()
    pushed = teamcache.TeamCache._push
    monkeypatch.setattr(teamcache, "UPLOAD_QUEUE_MAX", 2)
    monkeypatch.setattr(teamcache.TeamCache, "_push", lambda *a: (release.wait(30), pushed(*a)))
    shared = tmp_path / "shared"
    monkeypatch.setenv("NBCACHE_REMOTE", str(shared))
    cache = nbcache.Cache(tmp_path / "local", key=TEAM_KEY)
    square = nbcache.step(cache=cache)(lambda n: n * n)
    square(1), square(2)  # (one upload under way, one waiting: the queue is full)
    with pytest.warns(nbcache.CacheWarning, match="2 uploads to the team cache .* are waiting"):
        square(3)
    square(4)  # (said once)
    release.set()
    assert cache.team.flush(30)
    entries = shared / f"v{nbcache.CACHE_FORMAT}" / "entries"
    assert len(list(entries.iterdir())) == 2
    done = teamsync.push(cache, Remote(str(shared), strict=True))
    assert (done.copied, done.present) == (2, 2) and len(list(entries.iterdir())) == 4


BIG_STEP = '''
import os, sys, nbcache

@nbcache.step
def noise(n):
    sys.stderr.write("BODY RAN\\n")
    return os.urandom(n)

print(len(noise(int(sys.argv[1]))))
'''


def test_a_process_killed_while_it_uploads_publishes_nothing(tmp_path, bucket):
    """A value over the one-request size goes up as a multipart upload, completed only at its end: killed
    half-way (here once the upload has begun, while the exiting interpreter waits for it), the process leaves
    neither the value nor its entry for anyone to find, and the next machine computes the result."""
    remote = f"s3://{bucket}/team"
    folder = tmp_path / "alice"
    folder.mkdir()
    (folder / "step.py").write_text(BIG_STEP)
    env = {**os.environ, "NBCACHE_DIR": str(folder / "cache"), "NBCACHE_REMOTE": remote, "NBCACHE_KEY": TEAM_KEY}
    env.pop("NBCACHE_KEY_FILE", None)
    REQUESTS.seen.clear()
    proc = subprocess.Popen([sys.executable, str(folder / "step.py"), str(120 << 20)], env=env, cwd=folder,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(r.startswith("POST ") and "uploads" in r for r in REQUESTS.of(bucket)):  # (begun)
            assert proc.poll() is None and time.monotonic() < deadline, REQUESTS.of(bucket)
            time.sleep(0.01)
        proc.kill()
    finally:
        proc.wait(30)
    assert proc.returncode == -9
    fs = Remote(remote).fs
    assert fs.find(f"{bucket}/team") == []  # (an unfinished multipart upload is no object)
    (tmp_path / "bob").mkdir()
    (tmp_path / "bob" / "step.py").write_text(BIG_STEP)
    out, _ = _machine(tmp_path, "bob", remote, n=120 << 20)  # (the same call: nothing of alice's to find)
    assert out[0] == str(120 << 20) and _ran(tmp_path, "bob") == 1


def _pulled_by_bob(tmp_path: Path, monkeypatch, n: int = 100_000) -> tuple[nbcache.Cache, Any, np.ndarray]:
    """alice computes and shares an array of ``n`` floats (0.8 MB: carried inside its entry's object) through a
    folder on a shared file system; bob, a cache of his own on the same remote, and his step of the same code."""
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "shared"))
    alice = nbcache.Cache(tmp_path / "alice", key=TEAM_KEY)
    expected = nbcache.step(cache=alice, name="ramp")(_ramp)(n)
    assert alice.team.flush(30)
    bob = nbcache.Cache(tmp_path / "bob", key=TEAM_KEY)
    return bob, nbcache.step(cache=bob, name="ramp")(_ramp), expected


def _ramp(n: int) -> np.ndarray:
    return np.arange(n, dtype=float)


def _states(cache: nbcache.Cache) -> list[str]:
    """How each call of ``ramp`` went: a body ran in any but a "hit" and a "team hit"."""
    return [run.state.value for run in cache.runs("ramp")]


def test_a_team_hit_is_served_before_it_is_written_here_and_a_second_call_finds_it_here(tmp_path, monkeypatch):
    """The values an entry's object carries are loaded from the object (each buffer checked), and written
    into the local store in the background. A call of the same key meanwhile does not go to the team cache
    again: it finishes that writing itself, and is a local hit."""
    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    gate = threading.Event()
    bob.background.submit(lambda: gate.wait(30))  # (the background thread busy: bob's copy waits in line)
    try:
        value = ramp(100_000)
        [run] = bob.runs("ramp")
        assert run.state.value == "team hit" and np.array_equal(value, expected) and value.flags.writeable
        assert bob.store().get_entry(run.key) is None  # (served; not written here yet)
        value[:] = -1  # (the caller's own memory, as any hit's array)
        shutil.rmtree(tmp_path / "shared")  # (the team cache is gone: only what bob's process holds is left)
        again = ramp(100_000)
        assert _states(bob) == ["team hit", "hit"]
        assert np.array_equal(again, expected) and bob.store().get_entry(run.key) is not None
    finally:
        gate.set()
    bob.background.drain(30)
    assert np.array_equal(ramp(100_000), expected)


def test_a_team_hit_that_cannot_be_written_here_says_so_once_and_is_fetched_again(tmp_path, monkeypatch):
    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    store = bob.store()

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "put_blob_file", full)
    with pytest.warns(nbcache.CacheWarning, match="could not be written into the local cache .*No space left"):
        assert np.array_equal(ramp(100_000), expected)
        bob.background.drain(30)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert np.array_equal(ramp(100_000), expected)
        bob.background.drain(30)
    assert not said  # (said once)
    assert _states(bob) == ["team hit", "team hit"]
    monkeypatch.undo()  # (room again, and the remote still set: fetched and, this time, kept)
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "shared"))
    ramp(100_000)
    bob.background.drain(30)
    assert _states(bob)[-1] == "team hit" and store.get_entry(bob.runs()[-1].key)


def test_a_damaged_value_copied_from_the_team_cache_is_refused_before_it_is_served(tmp_path, monkeypatch):
    """A value too big to travel in its entry's object is copied here, then mapped on a hit, its buffers
    checked only later: it is read whole once as it is copied, so a damaged one is never served (it was, then
    found damaged after the fact). It is computed here, and its upload replaces the damaged copy."""
    from nbcache import teamcache

    monkeypatch.setattr(teamcache, "INLINE", 1000)  # (a 2.4 MB array then goes by itself, as one over 16 MB)
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "shared"))
    alice = nbcache.Cache(tmp_path / "alice", key=TEAM_KEY)
    expected = nbcache.step(cache=alice, name="ramp")(_ramp)(300_000)
    assert alice.team.flush(30)
    [blob] = (tmp_path / "shared").glob("**/blobs/*")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1  # (a bit of the array's buffer: its signed head and pickle are intact)
    blob.write_bytes(bytes(data))
    bob = nbcache.Cache(tmp_path / "bob", key=TEAM_KEY)
    ramp = nbcache.step(cache=bob, name="ramp")(_ramp)
    with pytest.warns(nbcache.CacheWarning, match="refused .a value is damaged: a buffer's checksum"):
        assert np.array_equal(ramp(300_000), expected)
    assert np.array_equal(ramp(300_000), expected)
    assert _states(bob) == ["damaged", "hit"]  # (told as the team cache's damage, not as a first run)
    assert bob.team.flush(30)  # (its upload replaced the damaged copy)
    carol = nbcache.Cache(tmp_path / "carol", key=TEAM_KEY)
    assert np.array_equal(nbcache.step(cache=carol, name="ramp")(_ramp)(300_000), expected)
    carol.background.drain(60)
    assert _states(carol) == ["team hit"]


def test_clearing_the_cache_clears_a_team_hit_not_written_yet(tmp_path, monkeypatch):
    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    gate = threading.Event()
    bob.background.submit(lambda: gate.wait(30))  # (the copy waits in line)
    try:
        ramp(100_000)
        assert bob.clear() == 1  # (written first, then cleared with the rest)
    finally:
        gate.set()
    bob.background.drain(30)
    assert list(bob.store().entries()) == []


def test_two_threads_calling_while_a_team_hit_is_written_wait_for_it(tmp_path, monkeypatch):
    """Both find the result here: one writes it (taken back from the background thread), the other waits for
    that, rather than going to the team cache again (here gone) and running the body."""
    from nbcache import teamcache

    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    kept = teamcache.keep
    monkeypatch.setattr(teamcache, "keep", lambda *a: (time.sleep(0.3), kept(*a)))  # (a slow disk)
    gate = threading.Event()
    bob.background.submit(lambda: gate.wait(30))
    try:
        ramp(100_000)
        shutil.rmtree(tmp_path / "shared")
        results: list = []
        threads = [threading.Thread(target=lambda: results.append(ramp(100_000))) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        gate.set()
    assert len(results) == 2 and all(np.array_equal(r, expected) for r in results)
    assert _states(bob) == ["team hit", "hit", "hit"]


def test_a_result_refused_for_another_key_is_shared_on_the_next_remote(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "first"))
    alice = nbcache.Cache(tmp_path / "alice", key=TEAM_KEY)
    nbcache.step(cache=alice, name="ramp")(_ramp)(10)
    assert alice.team.flush(30)
    mallory = nbcache.Cache(tmp_path / "mallory", key=secrets.token_hex(32))
    with pytest.warns(nbcache.CacheWarning, match="sealed with another key"):
        nbcache.step(cache=mallory, name="ramp")(_ramp)(10)
    mallory.team.set(str(tmp_path / "second"), {})
    mallory.set_directory(tmp_path / "mallory, elsewhere")
    nbcache.step(cache=mallory, name="ramp")(_ramp)(10)
    assert mallory.team.flush(30)
    assert len(list((tmp_path / "second").glob("**/entries/*"))) == 1


def test_a_value_here_already_is_served_from_here_not_from_the_team_cache(tmp_path, monkeypatch):
    """The entry is the team's, its value the same as one stored here by another step: the copy here (checked
    when it was stored) is used, and a damaged copy in the team cache does not matter."""
    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    [entry_object] = (tmp_path / "shared").glob("**/entries/*")  # (alice's; bob's step below shares its own)
    nbcache.step(cache=bob, name="same values")(lambda n: np.arange(n, dtype=float))(100_000)
    data = bytearray(entry_object.read_bytes())
    data[len(data) // 3] ^= 1  # (in the value it carries)
    entry_object.write_bytes(bytes(data))
    assert np.array_equal(ramp(100_000), expected)
    assert bob.runs("ramp")[-1].state.value == "team hit"


def test_an_eviction_counts_a_team_hit_not_written_yet(tmp_path, monkeypatch):
    """Under a size limit, each store evicts what is least recently used: a result pulled and not yet written
    is written first, so that it counts (and its values are not taken for no entry's)."""
    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    bob.size_limit = "1GB"
    gate = threading.Event()
    bob.background.submit(lambda: gate.wait(30))
    try:
        ramp(100_000)
        key = bob.runs("ramp")[-1].key
        assert bob.store().get_entry(key) is None
        nbcache.step(cache=bob, name="other")(lambda n: n + 1)(1)  # (a miss: stored, then room made)
        assert bob.store().get_entry(key) is not None
    finally:
        gate.set()


def test_two_threads_pulling_one_result_at_once_write_it_once_and_a_clear_clears_it(tmp_path, monkeypatch):
    from nbcache import teamcache

    bob, ramp, expected = _pulled_by_bob(tmp_path, monkeypatch)
    both = threading.Barrier(2, timeout=10)
    pull = teamcache.TeamCache.pull
    monkeypatch.setattr(teamcache.TeamCache, "pull", lambda *a: (both.wait(), pull(*a))[1])  # (both pull)
    gate = threading.Event()
    bob.background.submit(lambda: gate.wait(30))
    try:
        threads = [threading.Thread(target=ramp, args=(100_000,)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert _states(bob) == ["team hit", "team hit"]
        assert bob.clear() == 1
    finally:
        gate.set()
    bob.background.drain(30)
    assert list(bob.store().entries()) == []


def test_a_folder_remote_writes_each_object_beside_its_place_then_renames_it(tmp_path):
    """fsspec's own temporary went to the system's temporary folder, and the move from there to a shared folder
    on another file system was a copy, seen half-written under the final name (and left so by a kill). The
    temporary is now in the same folder, so the rename is atomic; a write that fails leaves nothing."""
    remote = Remote(str(tmp_path / "shared"))
    path = remote._path("blobs", "a" * 32)
    folder = path.rsplit("/", 1)[0]
    seen = []

    class Source(io.BytesIO):
        def read(self, size=-1):
            seen.append((remote.fs.exists(path), sorted(os.listdir(folder)) if os.path.isdir(folder) else []))
            if len(seen) == 3:
                raise KeyboardInterrupt  # (the process is stopped half-way)
            return super().read(1)

    with pytest.raises(KeyboardInterrupt):
        remote._write(path, Source(b"0123456789"))
    assert not remote.fs.exists(path) and os.listdir(folder) == []
    assert [exists for exists, _ in seen] == [False] * 3
    assert all(len(names) == 1 and names[0].startswith(".") for _, names in seen[1:])  # (beside its place)
    remote._write(path, io.BytesIO(b"whole"))
    assert remote.fs.cat_file(path) == b"whole" and os.listdir(folder) == [path.rsplit("/", 1)[1]]


def _total() -> int:
    with open("data.txt") as f:
        return int(f.read()) * 4


def test_a_file_another_machine_read_is_compared_by_content_not_by_its_stat(tmp_path, monkeypatch):
    """A file's size, time and inode as the other machine saw them can be this file's too (a fresh VM, a
    container, a checkout with fixed times) while its content differs: a team hit, or an entry pulled, reads it."""
    from nbcache.teamsync import pull

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NBCACHE_REMOTE", str(tmp_path / "shared"))
    data = tmp_path / "data.txt"
    data.write_text("6")
    alice = nbcache.Cache(tmp_path / "alice", key=TEAM_KEY)
    assert nbcache.step(cache=alice, name="total")(_total)() == 24
    assert alice.team.flush(30)
    before = os.stat(data)
    data.write_text("9")  # (in place: the same size and inode; then the same time)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(data).st_size, os.stat(data).st_mtime_ns, os.stat(data).st_ino) == (
        before.st_size, before.st_mtime_ns, before.st_ino)
    bob = nbcache.Cache(tmp_path / "bob", key=TEAM_KEY)
    assert nbcache.step(cache=bob, name="total")(_total)() == 36
    assert [run.state.value for run in bob.runs("total")] == ["changed"]
    assert bob.team.flush(30)  # (bob's result, for "9", replaced alice's there)
    carol = nbcache.Cache(tmp_path / "carol", key=TEAM_KEY)
    assert pull(carol, carol.team.remote).copied == 1
    monkeypatch.delenv("NBCACHE_REMOTE")
    carol.team.set("", {})
    nines = os.stat(data)
    data.write_text("6")  # (as above: "6" with the stat of the "9" the pulled entry saw)
    os.utime(data, ns=(nines.st_atime_ns, nines.st_mtime_ns))
    assert nbcache.step(cache=carol, name="total")(_total)() == 24
    assert nbcache.step(cache=carol, name="total")(_total)() == 24
    assert [run.state.value for run in carol.runs("total")] == ["changed", "hit"]


def test_an_upload_denied_leaves_lookups_going_on(tmp_path, monkeypatch):
    """Read-only credentials: an upload denied made the whole remote "down" for 60 s, so the calls after it
    found nothing of what the team cache holds. Only uploads wait now; a remote that fails otherwise is left
    alone as before."""
    bob, ramp, _ = _pulled_by_bob(tmp_path, monkeypatch, 10)
    remote = bob.team.remote
    reading = remote.fs.open

    def denied(path, mode="rb", **kwargs):
        if "w" in mode:
            raise PermissionError("Access Denied")
        return reading(path, mode, **kwargs)

    monkeypatch.setattr(remote.fs, "open", denied)
    with pytest.warns(nbcache.CacheWarning, match="denied uploading a result.*still looked in"):
        ramp(20)  # (computed here; its upload denied)
        assert bob.team.flush(30)
    assert remote.available and not remote.writable
    assert np.array_equal(ramp(10), _ramp(10))
    assert _states(bob) == ["first run", "team hit"]
    ramp(30)  # (no upload tried meanwhile, nor a second warning)
    assert bob.team.flush(30)


def test_a_value_the_remote_fails_to_give_is_said_to_be_the_remote_s_failure(tmp_path, monkeypatch):
    """Read as the local store wrote it, its error was taken for the local store's: "nbcache cannot use its
    cache directory ..." (and the step then ran with no cache at all)."""
    from nbcache import teamcache

    monkeypatch.setattr(teamcache, "INLINE", 1000)  # (the array goes by itself)
    bob, ramp, _ = _pulled_by_bob(tmp_path, monkeypatch, 300_000)
    remote = bob.team.remote

    def failing(path, start=None, end=None, **kwargs):
        if "/blobs/" in path:
            raise IsADirectoryError(21, "Is a directory", path)  # (an OSError naming a file, as a folder gives)
        return type(remote.fs).cat_file(remote.fs, path, start=start, end=end, **kwargs)

    monkeypatch.setattr(remote.fs, "cat_file", failing)
    with pytest.warns(nbcache.CacheWarning, match="the team cache .* failed while downloading a result") as said:
        assert np.array_equal(ramp(300_000), _ramp(300_000))
    assert not any("cache directory" in str(w.message) for w in said)
    assert ramp(300_000) is not None
    assert _states(bob) == ["first run", "hit"]  # (stored here: the local cache works)


def test_a_remote_sent_to_a_dask_worker_still_tries_each_request_once(bucket):
    """fsspec makes the file system anew on the worker, from its arguments: s3fs's five tries came back."""
    import pickle

    remote = Remote(f"s3://{bucket}/team")
    there = pickle.loads(pickle.dumps(remote))
    assert remote.fs.retries == there.fs.retries == 1
    assert there.fs.config_kwargs["retries"]["total_max_attempts"] == 1
