"""The team cache and the cluster: a remote hit against s3fs's own read of the same object, and a sweep on a
``distributed.LocalCluster``, cold and cached, against the same sweep with plain ``client.map``.

Remote hit: an S3 server from moto (``ThreadedMotoServer``, as in ``tests/test_team.py``) runs on loopback in a
process of its own, so that it does not share this process's GIL, and s3fs is the client. A step returning 1 KB,
10 MB or 256 MB of float64 noise is computed once in one cache directory and uploaded (``team.flush()``). Then every
round calls it in a fresh, empty cache directory (made and opened untimed, as a notebook's is by its first step), so
the result must come from the team cache; each round's outcome is checked to be "team hit". A value up to 16 MB
(``INLINE``) travels inside its entry's object: the hit is one GET, its values loaded from that object in memory,
then written into the local store in the background (finished between rounds, untimed); a bigger one is an object of
its own: one GET of the entry, then one per 64 MB of the value, streamed into the local store. The anchor is
``S3FileSystem().cat_file`` of the object that holds the value (one GET, into memory), in the same process, timed
alternately with the hit in three blocks of rounds, its rounds separated by the same untimed work as the hit's
(after an idle moment a request on the loopback costs a millisecond or so more than in a tight loop). For 256 MB,
the same object read with ``cat_file`` in 64 MB ranges, the requests nbcache makes, is printed too: moto serves a
whole object of that size more slowly than its ranges, so there the ratio says more about moto than about nbcache.
And, for information, s3fs's ``get_file`` of the object into a new local file: the transfer and a local write, as a
hit makes them (which the goal's anchor, a cat into memory, does not).

Sweep: two worker processes with one thread each, 20 points of a body that sleeps 0.2 s, through
``step.map(client, ...)``; cold in a fresh cache directory, then cached (the same sweep again), and the same
body through ``client.map`` without nbcache (and a no-op, Dask's own floor). The workers of a LocalCluster use
this process's cache directory. For information, the same sweep with the team cache on, after a round of other
points (the workers import s3fs and connect): cold (each worker uploads what it stored before its call
returns), then in a fresh directory, so that every point is a team hit on a worker.

Goals: a 1 KB, 10 MB and 256 MB remote hit <= 1.2x s3fs's cat of the object that holds the value. Cold sweep
<= 1.2x plain ``client.map``; cached sweep <= 0.2x cold. About a minute; up to 1.5 GB of memory for a moment, as moto puts the 256 MB upload together (this process takes up to 0.9 GB, in s3fs's cat of it).

Run it as ``python benchmarks/remote.py``: the steps are pickled to the workers by value, from ``__main__``.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from typing import Any

import numpy as np

import nbcache
from nbcache.remote import RANGE
from nbcache.teamentry import INLINE
from _timing import best_of, goal, header, show

SIZES = [(1 << 10, "1 KB", 15), (10 << 20, "10 MB", 6), (256 << 20, "256 MB", 3)]  # bytes, label, rounds
BLOCKS = 3  # the rounds of a hit and of its anchor are run alternately, in this many blocks
POINTS = list(range(20))
SLEEP_S = 0.2
SWEEP_ROUNDS = 3

SERVER = """
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
sys.stdin.read()  # (until the benchmark closes our stdin, or exits)
server.stop()
"""


def noise(nbytes: int) -> np.ndarray:
    """``nbytes`` of float64 noise (not compressible, as most results are not)."""
    return np.random.default_rng(nbytes).random(nbytes // 8)


value = nbcache.step(noise, name="value")


def point(x: int) -> int:
    time.sleep(SLEEP_S)
    return x * x


swept = nbcache.step(point, name="swept")


def noop(x: int) -> int:
    return x


# the S3 server

def _free_port() -> int:
    with socket.socket() as probe:  # (moto cannot say which port port=0 took)
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the moto server did not start") from None
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def stop_server(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# remote hits

class FreshDirs:
    """``between`` for best_of: a new, empty cache directory per round, made and opened untimed. With a
    ``step``, the round before is checked to have been a team hit of it; then its directory is removed. The
    anchor's rounds use it too (without a step), so both start from the same state: an idle moment on the
    loopback costs each request a millisecond or so more than a tight loop of them."""

    count = itertools.count()  # (never a name used before: a cache keeps each directory's store open)

    def __init__(self, root: str, step: nbcache.Step | None = None) -> None:
        self.root, self.step = root, step
        self.current: str | None = None
        self.outcomes: list[str] = []

    def __call__(self) -> None:
        self.done()
        self.current = os.path.join(self.root, f"fresh-{next(self.count)}")
        nbcache.set_cache_dir(self.current)
        # a cache that is open already, its history too, as after a notebook's first step
        nbcache.cache.default_cache().store().prepare()

    def done(self) -> None:
        if self.current is None:
            return
        cache = nbcache.cache.default_cache()
        cache.background.drain(60)  # (the hit's mapped value is checked in the background: not in the next round)
        gc.collect()
        if self.step is not None:
            self.outcomes.append(nbcache.runs(self.step)[-1].state.value)
        shutil.rmtree(self.current)
        self.current = None


def remote_hit(tmp: str, raw: Any, root: str, nbytes: int, rounds: int) -> tuple[int, float, float, float | None,
                                                                                 float]:
    """The value of ``nbytes`` stored and uploaded, then (the bytes of the object that holds it, best team-cache
    hit, best s3fs cat of that object, best cat of it in ``RANGE`` pieces if it has more than one, best s3fs
    get_file of it into a new local file). The object
    is the entry's for a value it carries (up to ``INLINE`` bytes), else the value's own."""
    nbcache.set_cache_dir(os.path.join(tmp, "computed"))
    listed = lambda kind: set(raw.find(f"{root}/{kind}")) if raw.exists(f"{root}/{kind}") else set()
    before = listed("blobs"), listed("entries")
    value(nbytes)  # computed and stored here; uploaded in the background
    assert not nbcache.runs(value)[-1].cached, nbcache.runs(value)[-1]
    assert nbcache.cache.default_cache().team.flush(300), "the upload did not finish"
    raw.invalidate_cache()
    blobs, entries = listed("blobs") - before[0], listed("entries") - before[1]
    assert len(entries) == 1 and len(blobs) == (nbytes > INLINE), (entries, blobs)
    path = (blobs or entries).pop()
    stored = raw.size(path)

    def by_ranges() -> None:
        for at in range(0, stored, RANGE):  # (each range dropped before the next is read, as nbcache does)
            raw.cat_file(path, start=at, end=min(at + RANGE, stored))

    fresh, anchor = FreshDirs(tmp, value), FreshDirs(tmp)
    t_hit = t_cat = t_ranges = t_file = float("inf")
    per = max(1, rounds // BLOCKS)
    for block in range(BLOCKS):  # alternately: a change in the machine's load weighs on the hit and its anchor
        warmup = 1 if block == 0 else 0
        t_hit = min(t_hit, best_of(lambda: value(nbytes), repeat=per, warmup=warmup, between=fresh))
        fresh.done()
        t_cat = min(t_cat, best_of(lambda: raw.cat_file(path), repeat=per, warmup=warmup, between=anchor))
        if stored > RANGE:
            t_ranges = min(t_ranges, best_of(by_ranges, repeat=per, warmup=warmup, between=anchor))
        t_file = min(t_file, best_of(lambda: raw.get_file(path, os.path.join(anchor.current, "copy")),
                                     repeat=per, warmup=warmup, between=anchor))
        anchor.done()
    assert fresh.outcomes == ["team hit"] * (per * BLOCKS + 1), fresh.outcomes
    return stored, t_hit, t_cat, t_ranges if stored > RANGE else None, t_file


def remote_hits(tmp: str, raw: Any) -> None:
    remote = nbcache.cache.default_cache().team.remote
    assert remote is not None, "NBCACHE_REMOTE is not in use"
    rows = []
    for nbytes, label, rounds in SIZES:
        rows.append((label, rounds, *remote_hit(tmp, raw, remote.root, nbytes, rounds)))
        gc.collect()

    for label, rounds, stored, t_hit, t_cat, t_ranges, t_file in rows:
        big = stored >= 1 << 20
        print(f"   -- {label} ({stored:,} bytes in the object that holds it), best of {rounds},"
              f" alternately in {BLOCKS} blocks")
        show("team-cache hit (fresh local dir)", t_hit, nbytes=stored if big else None)
        show("s3fs cat_file of the same object", t_cat, nbytes=stored if big else None)
        if t_ranges is not None:
            show(f"s3fs cat_file, {RANGE >> 20} MB ranges (info)", t_ranges, nbytes=stored)
        show("s3fs get_file to a new file (info)", t_file, nbytes=stored if big else None)
        goal(f"{label} hit / s3fs cat", t_hit / t_cat, "<=", 1.2)


# the sweep

def sweep_rounds(tmp: str, client: Any) -> tuple[float, float]:
    """Best cold wall of the sweep (a fresh cache directory each round) and best cached wall (the same
    sweep again, in the last of them). What the calls did is checked afterwards, in each directory's history."""
    dirs: list[str] = []
    want = [x * x for x in POINTS]

    def run() -> None:
        assert client.gather(swept.map(client, POINTS)) == want

    def fresh() -> None:
        dirs.append(os.path.join(tmp, f"sweep-{len(dirs)}"))
        nbcache.set_cache_dir(dirs[-1])
        nbcache.cache.default_cache().store()

    t_cold = best_of(run, repeat=SWEEP_ROUNDS, between=fresh)
    t_cached = best_of(run, repeat=SWEEP_ROUNDS, warmup=0)  # (in the directory the last cold round filled)
    for i, path in enumerate(dirs):
        nbcache.set_cache_dir(path)
        states = [r.state.value for r in nbcache.runs(swept)]
        hits = SWEEP_ROUNDS * len(POINTS) if i == len(dirs) - 1 else 0
        assert len(states) == len(POINTS) + hits, (path, states)
        assert not {"hit", "team hit"} & set(states[:len(POINTS)]), (path, states)  # cold: every point ran
        assert states[len(POINTS):] == ["hit"] * hits, (path, states)
    return t_cold, t_cached


def team_sweep(tmp: str, client: Any) -> tuple[float, float]:
    """With the team cache on: a cold sweep, then the same sweep in a fresh local directory (every point a team
    hit on a worker); one round each, after a round of other points (the workers import s3fs, connect)."""
    def sweep(offset: int, path: str) -> float:
        nbcache.set_cache_dir(os.path.join(tmp, path))
        nbcache.cache.default_cache().store()
        t0 = time.perf_counter()
        assert client.gather(swept.map(client, [x + offset for x in POINTS])) == [(x + offset) ** 2 for x in POINTS]
        return time.perf_counter() - t0

    sweep(1000, "team-warm-up")
    t_cold = sweep(2000, "team-cold")
    assert not any(r.cached for r in nbcache.runs(swept)), nbcache.runs(swept)
    t_pulled = sweep(2000, "team-pulled")
    states = [r.state.value for r in nbcache.runs(swept)]
    assert states == ["team hit"] * len(POINTS), states
    return t_cold, t_pulled


def cluster_sweeps(tmp: str) -> None:
    from distributed import Client, LocalCluster

    # (the scheduler serves HTTP even without a dashboard: on 8787 if free, else elsewhere, with a warning)
    warnings.filterwarnings("ignore", message="Port 8787 is already in use")
    nbcache.set_remote("")  # the sweep proper: this machine's cache only
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.gather(client.map(noop, POINTS, pure=False))  # (the workers' first tasks: imports)
        t_floor = best_of(lambda: client.gather(client.map(noop, POINTS, pure=False)), repeat=SWEEP_ROUNDS)
        t_plain = best_of(lambda: client.gather(client.map(point, POINTS, pure=False)), repeat=SWEEP_ROUNDS)
        t_cold, t_cached = sweep_rounds(tmp, client)
        nbcache.set_remote(None)  # back to NBCACHE_REMOTE: the team cache, for information
        t_team_cold, t_team_pulled = team_sweep(tmp, client)

    print(f"   -- sweep of {len(POINTS)} points x {SLEEP_S} s on 2 worker processes x 1 thread,"
          f" best of {SWEEP_ROUNDS}")
    show("client.map of a no-op (Dask's floor)", t_floor)
    show("plain client.map of the body", t_plain)
    show("step.map, cold (fresh cache dir)", t_cold)
    show("step.map, cached (same sweep again)", t_cached)
    show("team cache on: cold (1 round)", t_team_cold)
    show("team cache on: fresh dir, team hits", t_team_pulled)
    goal("cold sweep / plain client.map", t_cold / t_plain, "<=", 1.2)
    goal("cached sweep / cold sweep", t_cached / t_cold, "<=", 0.2)


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    header("remote", "team-cache hit vs s3fs cat (moto on loopback); a LocalCluster sweep, cold and cached")
    server, endpoint = start_server()
    try:
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                           "NBCACHE_KEY": secrets.token_hex(32)})
        for name in ("NBCACHE_KEY_FILE", "NBCACHE_WORKER_DIR", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        bucket = f"bench-{uuid.uuid4().hex[:12]}"
        os.environ["NBCACHE_REMOTE"] = f"s3://{bucket}/team"

        import s3fs

        raw = s3fs.S3FileSystem(skip_instance_cache=True)  # s3fs as it comes: the raw transfer
        raw.mkdir(bucket)
        with tempfile.TemporaryDirectory(prefix="nbcache-bench-") as tmp:
            try:
                remote_hits(tmp, raw)
                cluster_sweeps(tmp)
            finally:
                nbcache.set_cache_dir(None)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
