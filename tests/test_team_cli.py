"""``nbcache push``, ``pull`` and ``ls --remote``, as a user runs them: real processes, each "machine" with a
cache directory of its own, sharing a bucket of an S3 server from moto (on loopback) and a signing key."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import nbcache
from nbcache.remote import Remote
from nbcache.teamentry import read_record

from .moto_s3 import aws_env, change_sealed, endpoint  # noqa: F401  (the S3 server, a fixture)

TEAM_KEY = secrets.token_hex(32)

STEPS = '''
import sys, nbcache

@nbcache.step
def squares(n):
    sys.stderr.write("BODY RAN\\n")
    return [i * i for i in range(n)]

@nbcache.step
def cubes(n):
    sys.stderr.write("BODY RAN\\n")
    return [i ** 3 for i in range(n)]

for step in (squares, cubes)[:int(sys.argv[1])]:
    value = step(100)
    run = nbcache.runs()[-1]
    print(run.step, "|", run.cached, "|", run.reason)
'''


@pytest.fixture
def team(endpoint, monkeypatch, tmp_path):
    """The team's remote URL; the tests' own process reaches it too (to look at it, or tamper with it)."""
    for name, value in aws_env(endpoint).items():
        monkeypatch.setenv(name, value)
    bucket = f"team-{uuid.uuid4().hex[:12]}"
    Remote(f"s3://{bucket}").fs.mkdir(bucket)
    return f"s3://{bucket}/team"


def _env(tmp_path: Path, machine: str, remote: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NBCACHE_DIR": str(tmp_path / machine / "cache"), "NBCACHE_REMOTE": remote,
           "NBCACHE_KEY": TEAM_KEY, **extra}
    env.pop("NBCACHE_KEY_FILE", None)
    return env


def _run_steps(tmp_path: Path, machine: str, remote: str, steps: int = 1) -> tuple[dict[str, str], int]:
    """Run the first ``steps`` steps on ``machine``: {step: "cached | reason"}, and how many bodies ran."""
    folder = tmp_path / machine
    folder.mkdir(exist_ok=True)
    (folder / "steps.py").write_text(STEPS)
    proc = subprocess.run([sys.executable, "steps.py", str(steps)], capture_output=True, text=True, check=False,
                          env=_env(tmp_path, machine, remote), cwd=folder, timeout=120)
    assert proc.returncode == 0, proc.stderr
    runs = dict(line.split(" | ", 1) for line in proc.stdout.splitlines())
    return runs, proc.stderr.count("BODY RAN")


def _nbcache(tmp_path: Path, machine: str, remote: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """``nbcache ARGS`` on ``machine``, as a user types it (``NBCACHE_REMOTE`` set to ``remote``)."""
    return _finish(_start(tmp_path, machine, remote, *args, **extra))


def _start(tmp_path: Path, machine: str, remote: str, *args: str, **extra: str) -> subprocess.Popen:
    (tmp_path / machine).mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "nbcache.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path, machine, remote, **extra),
                            cwd=tmp_path / machine)


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _remote_entries(remote: str) -> list[str]:
    return Remote(remote).fs.find(f"{remote.removeprefix('s3://')}/v{nbcache.CACHE_FORMAT}/entries")


def test_push_uploads_what_ran_without_a_remote_and_another_machine_gets_a_team_hit(tmp_path, team):
    runs, ran = _run_steps(tmp_path, "alice", remote="")  # no remote: nothing is uploaded
    assert runs["squares"].startswith("False") and ran == 1 and _remote_entries(team) == []
    pushed = _nbcache(tmp_path, "alice", team, "push")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.startswith("pushed 1 result (1 value, ") and pushed.stdout.endswith(
        f") to {team}; 0 already there\n") and pushed.stderr == ""
    assert len(_remote_entries(team)) == 1
    again = _nbcache(tmp_path, "alice", "", "push", "--remote", team, "--json")  # (--remote: NBCACHE_REMOTE unset)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"remote": team, "copied": 0, "values": 0, "bytes": 0, "present": 1,
                                        "refused": 0, "incomplete": 0}

    runs, ran = _run_steps(tmp_path, "bob", team)
    assert runs["squares"].startswith("True | cache hit (team cache, computed by ") and ran == 0

    as_json = _start(tmp_path, "carol", "", "ls", "--remote", team, "--json")
    listed = _nbcache(tmp_path, "carol", team, "ls", "--remote")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split() == ["step", "entries", "size", "latest", "by", "latest", "at"]
    assert row.split()[:2] == ["squares", "1"] and f"@{socket.gethostname()}" in row
    [step] = json.loads(_finish(as_json).stdout)
    assert step["step"] == "squares" and step["entries"] == 1 and step["bytes"] > 0
    assert step["by"].endswith(f"@{socket.gethostname()}") and step["at"].endswith("+00:00")


def test_pull_of_a_step_makes_its_later_runs_local_hits_with_no_remote(tmp_path, team):
    runs, _ = _run_steps(tmp_path, "alice", team, steps=2)  # (uploaded in the background, before it exits)
    assert set(runs) == {"squares", "cubes"} and len(_remote_entries(team)) == 2
    pulled = _nbcache(tmp_path, "bob", team, "pull", "squares")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.startswith("pulled 1 result of step 'squares' (1 value, ")
    assert pulled.stdout.endswith(f"from {team}; 0 already here\n")
    runs, ran = _run_steps(tmp_path, "bob", remote="", steps=2)
    assert runs == {"squares": "True | cache hit", "cubes": "False | first run"} and ran == 1

    everything = _nbcache(tmp_path, "carol", team, "pull", "--json")  # all the remote holds, in a new directory
    assert json.loads(everything.stdout)["copied"] == 2, everything.stderr
    listed = _nbcache(tmp_path, "carol", team, "ls", "--json")  # (no run here yet: the kind is the results')
    assert {row["step"]: row["kind"] for row in json.loads(listed.stdout)} == {"squares": "function", "cubes": "function"}
    runs, ran = _run_steps(tmp_path, "carol", remote="", steps=2)
    assert runs == {"squares": "True | cache hit", "cubes": "True | cache hit"} and ran == 0
    unknown = _nbcache(tmp_path, "carol", team, "pull", "nosuchstep")
    assert unknown.returncode == 1 and "its steps: cubes, squares" in unknown.stderr


def test_pull_refuses_a_changed_entry_and_one_sealed_with_another_key(tmp_path, team, caplog):
    _run_steps(tmp_path, "alice", team)
    fs = Remote(team).fs
    [path] = _remote_entries(team)
    change_sealed(fs, path)  # a field under the seal

    caplog.set_level(logging.INFO, logger="werkzeug")  # (the requests the S3 server answered)
    caplog.clear()
    pulled = _nbcache(tmp_path, "bob", team, "pull")
    assert pulled.returncode == 0 and pulled.stdout.startswith("pulled 0 results (0 values, 0 B)")
    assert "1 result refused: not sealed with your key" in pulled.stderr and "Traceback" not in pulled.stderr
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("/entries/" in r for r in requests) and not any("/blobs/" in r for r in requests)  # nothing of it
    assert json.loads(_nbcache(tmp_path, "bob", "", "info", "--json").stdout)["entries"] == 0
    runs, ran = _run_steps(tmp_path, "bob", remote="")
    assert runs["squares"] == "False | first run" and ran == 1

    foreign = _nbcache(tmp_path, "mallory", team, "pull", "--json", NBCACHE_KEY=secrets.token_hex(32))
    assert json.loads(foreign.stdout)["refused"] == 1 and "refused" in foreign.stderr

    fs.pipe_file(path, fs.cat_file(path)[:-100])  # (cut short: no record to read, whatever the key)
    damaged = _nbcache(tmp_path, "carol", team, "pull", "--json")
    assert json.loads(damaged.stdout)["unreadable"] == 1 and json.loads(damaged.stdout)["refused"] == 0
    assert "1 entry of the team cache not pulled: not readable" in damaged.stderr and "key" not in damaged.stderr


def test_an_unreachable_remote_is_an_error_without_a_traceback(tmp_path, team, monkeypatch):
    monkeypatch.delenv("NBCACHE_REMOTE", raising=False)  # (a cache to push: made here, nothing uploaded)
    nbcache.step(cache=nbcache.Cache(tmp_path / "alice" / "cache", key=TEAM_KEY))(lambda n: list(range(n)))(3)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "NBCACHE_REMOTE_TIMEOUT": "2"}
    started = {args: _start(tmp_path, "alice", team, *args, **down) for args in (("push",), ("pull",),
                                                                             ("ls", "--remote"))}
    for args, running in started.items():  # (together: each waits for the retries of its first request)
        proc = _finish(running)
        assert proc.returncode == 6, (args, proc.stderr)
        assert proc.stderr.startswith(f"nbcache: the team cache {team} failed while listing its entries: ")
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_no_remote_or_one_given_wrong_says_what_to_do(tmp_path):
    for args in (["push"], ["pull", "squares"], ["ls", "--remote"]):
        proc = _nbcache(tmp_path, "alice", "", *args)
        assert proc.returncode == 2 and "NBCACHE_REMOTE" in proc.stderr and "--remote URL" in proc.stderr
    wrong = _nbcache(tmp_path, "alice", "nosuchprotocol://user:s3cret@x", "ls", "--remote")
    assert wrong.returncode == 6 and "nosuchprotocol://x" in wrong.stderr and "s3cret" not in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_pull_refuses_a_result_whose_values_were_changed_under_its_sealed_entry(tmp_path, team):
    """The entry's seal names its values but does not cover their bytes: those are checked as they are copied
    (a hit checks them as it loads them; a pull loads nothing), so a value changed on the remote is not kept."""
    _run_steps(tmp_path, "alice", team)
    fs = Remote(team).fs
    [path] = _remote_entries(team)
    data = fs.cat_file(path)
    end = sum(size for _, size in read_record(data, len(data)).inline)
    fs.pipe_file(path, data[:end - 100] + bytes(100) + data[end:])  # (the values it carries, its record intact)
    pulled = _nbcache(tmp_path, "bob", team, "pull", "--json")
    assert json.loads(pulled.stdout)["refused"] == 1 and "refused" in pulled.stderr
    assert json.loads(_nbcache(tmp_path, "bob", "", "info", "--json").stdout)["entries"] == 0
