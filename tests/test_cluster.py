"""Steps on a Dask cluster, with the real engines on loopback: ``distributed.LocalCluster`` with two worker
processes, and for the team cache an S3 server from moto with s3fs. The client is a script run in a process
of its own (its steps pickled by value, as a notebook's are); the bodies count their runs by appending to a
file in /dev/shm, which nbcache, rightly, does not take for data the steps depend on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from distributed import Client  # (in the test extra: these tests never skip)

import nbcache
from nbcache import Cache, MemoryStore

from .moto_s3 import bucket, endpoint  # noqa: F401  (the moto server and a fresh bucket)


@pytest.fixture(autouse=True)
def _no_dask_profiler():
    """Dask's profiler off for the workers these tests run in this process: on Python before 3.11.9 (CI's is
    3.11.7), a collection inside its ``sys._current_frames()`` that frees a ``threading.local`` deadlocks the
    process (CPython gh-106883; docs/team.md says so). nbcache's own objects hold none (tested in
    test_background_safety.py), but libraries' do, diskcache's among them; a worker keeps the caches it
    opens (test_a_worker_keeps_one_cache_per_directory_and_lets_none_go, whose workers profile)."""
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": False}):
        yield

CLIENT = '''
import json, os, sys
import nbcache
from distributed import Client, LocalCluster

COUNT = os.environ["BODY_LOG"]

def ran(what):
    with open(COUNT, "a") as log:
        log.write(what + "\\n")

@nbcache.step
def load(n):
    ran("load")
    return [float(i % 7) for i in range(n)]

@nbcache.step
def scale(xs, factor):
    ran("scale")
    return [x * factor for x in xs]

@nbcache.step
def score(xs, power=1):
    ran("score")
    return sum(x ** power for x in xs)

if __name__ == "__main__":
    with LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        data = load.submit(client, 1000)
        scaled = scale.submit(client, data, 2.0)
        final = score.submit(client, scaled)
        sweep = score.map(client, [scaled] * 20, [p / 10 for p in range(20)])
        print(json.dumps({"final": final.result(), "sweep": client.gather(sweep)}))
    runs = nbcache.runs()
    print(json.dumps([[r.step, r.state.value, r.worker, r.reason] for r in runs]))
'''


@pytest.fixture
def body_log():
    """Where the bodies count their runs (the same file for every run of a test: its name is a global the
    steps' code reads, so part of their key)."""
    log = Path("/dev/shm") / f"nbcache-test-{uuid.uuid4().hex}.log"
    yield log
    log.unlink(missing_ok=True)


def _client(tmp_path: Path, log: Path, run: str, *, code: str = CLIENT,
            **env: str) -> tuple[dict, list[list[str]], int]:
    """Run the client once; (its results, its history, how many bodies ran on the workers)."""
    script = tmp_path / "client.py"
    script.write_text(code)
    before = len(log.read_text().splitlines()) if log.exists() else 0
    environment = {**os.environ, "NBCACHE_DIR": str(tmp_path / "client-cache"), "BODY_LOG": str(log), **env}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=environment,
                          cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, f"{run}: {proc.stderr[-3000:]}"
    bodies = (len(log.read_text().splitlines()) if log.exists() else 0) - before
    results, history = (json.loads(line) for line in proc.stdout.splitlines()[-2:])
    return results, history, bodies


def test_a_pipeline_and_a_sweep_run_on_workers_then_come_from_the_team_cache(tmp_path, bucket, body_log):
    """The workers keep caches of their own (NBCACHE_WORKER_DIR), so what they share travels through the team
    cache: run again with empty worker caches, nothing runs anywhere, and every run is in the client's
    history with the worker that made it."""
    remote = {"NBCACHE_REMOTE": f"s3://{bucket}/team"}
    first, history, bodies = _client(tmp_path, body_log, "cold", NBCACHE_WORKER_DIR=str(tmp_path / "w1"), **remote)
    data = [float(i % 7) for i in range(1000)]
    assert first["final"] == sum(x * 2 for x in data)
    assert first["sweep"] == [sum((x * 2) ** (p / 10) for x in data) for p in range(20)]
    assert bodies == 3 + 20 and len(history) == 1 + 1 + 1 + 20
    assert all(worker.startswith("tcp://127.0.0.1:") for _, _, worker, _ in history)
    assert {state for _, state, _, _ in history} <= {"first run", "changed"}

    second, history, bodies = _client(tmp_path, body_log, "cached", NBCACHE_WORKER_DIR=str(tmp_path / "w2"), **remote)
    assert second == first and bodies == 0
    latest = history[-23:]
    assert [state for _, state, _, _ in latest] == ["team hit"] * 23, latest
    assert all(reason.startswith("cache hit (team cache, computed by ") for _, _, _, reason in latest)

    # the loader's code changes but not what it returns: it runs again, and nothing downstream does
    edited = CLIENT.replace("[float(i % 7) for i in range(n)]", "[float(i) % 7 for i in range(n)]")
    third, history, bodies = _client(tmp_path, body_log, "edited", code=edited, NBCACHE_WORKER_DIR=str(tmp_path / "w2"),
                                     **remote)
    assert third == first and bodies == 1
    assert [(step, state) for step, state, _, _ in history[-23:-21]] == [("load", "changed"), ("scale", "hit")]


def test_workers_on_this_machine_share_its_cache_directory(tmp_path, body_log):
    """No team cache: the workers of a LocalCluster find the client's own directory and use it, so a
    result is stored once and each run is recorded once."""
    first, history, bodies = _client(tmp_path, body_log, "cold")
    assert bodies == 23 and len(history) == 23
    second, history, bodies = _client(tmp_path, body_log, "cached")
    assert second == first and bodies == 0 and len(history) == 46
    assert [state for _, state, _, _ in history[23:]] == ["hit"] * 23
    local = Cache(tmp_path / "client-cache")
    assert {r.step for r in local.runs() if r.cached} == {"load", "scale", "score"}


def test_a_failing_body_raises_from_its_future_and_is_recorded(tmp_path, body_log):
    code = CLIENT.replace('    ran("scale")\n', '    ran("scale")\n    raise ValueError("no scaling today")\n')
    code = code[:code.index('if __name__')] + '''if __name__ == "__main__":
    with LocalCluster(n_workers=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        future = scale.submit(client, load.submit(client, 10), 2.0)
        try:
            future.result()
        except ValueError as exc:
            print(json.dumps({"raised": str(exc)}))
    print(json.dumps([[r.step, r.state.value, r.worker, r.error] for r in nbcache.runs()]))
'''
    results, history, bodies = _client(tmp_path, body_log, "failing", code=code)
    assert results == {"raised": "no scaling today"} and bodies == 2
    assert history[-1][0] == "scale" and history[-1][1] == "failed"
    assert history[-1][3] == "ValueError: no scaling today" and history[-1][2].startswith("tcp://")


def test_submit_says_what_it_needs():
    @nbcache.step
    def double(x):
        return 2 * x

    with pytest.raises(TypeError, match=r"double.submit\(\) takes a distributed.Client first"):
        double.submit("tcp://127.0.0.1:8786", 1)
    in_memory = nbcache.step(cache=Cache(store=MemoryStore()))(lambda x: x)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        with pytest.raises(ValueError, match="lives in memory"):
            in_memory.submit(client, 1)


def test_submit_without_dask_says_which_extra_to_install(monkeypatch):
    @nbcache.step
    def double(x):
        return 2 * x

    monkeypatch.setitem(sys.modules, "distributed", None)  # (as without it: importing it fails)
    with pytest.raises(ModuleNotFoundError, match=r"double.submit\(\) and .map\(\) run steps on a Dask cluster,"
                                                  r" which needs Dask's distributed: pip install 'nbcache\[dask\]'"):
        double.submit(object(), 1)


def test_the_base_install_does_not_import_dask_or_fsspec():
    """Nor nbcache's own cluster and remote modules: ``import nbcache`` pays for neither until they are used."""
    code = ("import sys, nbcache; print(sorted({'distributed', 'dask', 'fsspec', 's3fs', 'nbcache.cluster',"
            " 'nbcache.remote'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


READERS = '''
from concurrent.futures import ThreadPoolExecutor

_POOL = None


def read_all(paths):
    """Reads files through a pool it keeps between calls, as I/O libraries do."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(2)
    return list(_POOL.map(lambda p: open(p).read(), paths))
'''

ODD_CASES = '''
import json, os, random, sys, time, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbcache
import readers
from distributed import Client, LocalCluster

@nbcache.step
def load(path):
    return readers.read_all([path])[0]

@nbcache.step
def draw(n):
    return [random.random() for _ in range(n)]

signed_apart = nbcache.step(cache=nbcache.Cache(os.environ["APART"], key="11" * 32), name="apart")(lambda x: x + 1)

if __name__ == "__main__":
    out = {}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client, Client(cluster) as second:
        out["read"] = client.gather(load.map(client, ["a.txt", "b.txt"]))
        out["drawn"] = draw.submit(client, 3).result()
        out["drawn again"] = draw.submit(second, 3).result()  # (a second client of the same scheduler)
        out["apart here"] = signed_apart(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out["apart there"] = signed_apart.submit(client, 1).result()
            deadline = time.monotonic() + 30  # (what the worker said comes to the client a moment later)
            while not caught and time.monotonic() < deadline:
                time.sleep(0.05)
        out["apart there said"] = [str(w.message) for w in caught]
    random.seed(5)
    out["drawn here"] = draw(3)
    random.seed(5)
    out["uncached here"] = [random.random() for _ in range(3)]
    out["apart here again"] = signed_apart(1)
    print(json.dumps(out))
    print(json.dumps([[r.step, r.state.value, r.worker, r.reason] for r in nbcache.runs()]))
'''


def test_what_a_worker_cannot_know_is_not_taken_for_known(tmp_path, body_log):
    """Files read through a pool kept between calls are the step's on a worker too; a draw from the worker's
    global generator is not served where the generator is the notebook's; a worker signing with another key
    runs the call with a cache of its own, said, not left to destroy the other's results; a second client does
    not record a run twice."""
    (tmp_path / "readers.py").write_text(READERS)
    for name in "ab":
        (tmp_path / f"{name}.txt").write_text(f"{name}1")
    apart = {"APART": str(tmp_path / "apart")}
    first, history, _ = _client(tmp_path, body_log, "first", code=ODD_CASES, **apart)
    assert first["read"] == ["a1", "b1"] and first["drawn again"] == first["drawn"]
    assert first["drawn here"] == first["uncached here"] != first["drawn"]
    assert first["apart there"] == 2  # (run with a cache of the worker's own, said: the call does not fail)
    [said] = first["apart there said"]
    assert "signs results with another key than the process that submitted" in said and "on the Dask worker" in said
    assert first["apart here"] == first["apart here again"] == 2
    assert len(history) == 2 + 2 + 1  # load x2, draw on the worker, its hit through the second client, here
    assert history[-1][3] == ("the random global random generator changed while it ran on a Dask worker (the"
                              " worker's, which Dask's own threads draw from too: whether the step drew from it"
                              " cannot be told); here the generator is yours, so it runs again")
    assert nbcache.Cache(tmp_path / "apart", key="11" * 32).runs("apart")[-1].cached  # (nothing destroyed)

    for name in "ab":
        (tmp_path / f"{name}.txt").write_text(f"{name}2")
    second, history, _ = _client(tmp_path, body_log, "files changed", code=ODD_CASES, **apart)
    assert second["read"] == ["a2", "b2"]


def test_a_worker_told_to_keep_its_cache_in_the_clients_directory_records_each_run_once(tmp_path, body_log):
    _, history, bodies = _client(tmp_path, body_log, "cold", NBCACHE_WORKER_DIR=str(tmp_path / "client-cache"))
    assert bodies == 23 and len(history) == 23


def test_the_lineage_widget_hears_of_runs_on_workers_as_they_come(tmp_path):
    import time

    from nbcache.widget import LineageWidget, _REDRAW_EVERY_S

    cache = Cache(tmp_path / "cache")
    double = nbcache.step(cache=cache, name="double")(lambda x: 2 * x)
    widget = LineageWidget(cache=cache)
    time.sleep(_REDRAW_EVERY_S)  # (a redraw is due at the next run)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=None) as client:
        assert double.submit(client, 21).result() == 42
        deadline = time.monotonic() + 30
        while "double" not in widget.lineage.nodes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "double" in widget.lineage.nodes  # (drawn while the client runs, not at the end of a cell)
        assert widget.lineage.nodes["double"].run.worker.startswith("inproc://")


def test_what_nbcache_says_on_a_worker_is_said_in_the_client_too(tmp_path):
    """A warning on a worker (here: a team cache that cannot be used) would reach only the worker's log; it
    comes back with the runs, once, naming the worker."""
    import time
    import warnings

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    cache = Cache(tmp_path / "cache")
    cache.team.set(str(blocked / "team"), {})  # (a folder under a file: every request to it fails)
    double = nbcache.step(cache=cache, name="double")(lambda x: 2 * x)

    def relayed() -> list[str]:
        return [str(w.message) for w in caught if "on the Dask worker" in str(w.message)]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
            assert client.gather(double.map(client, [1, 2, 3])) == [2, 4, 6]
            deadline = time.monotonic() + 30
            while not relayed() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # (any second copy of it would have come by now)
    assert len(relayed()) == 1, relayed()
    assert "the team cache" in relayed()[0] and "failed while" in relayed()[0] and "inproc://" in relayed()[0]


NESTED = '''
import json, os, sys
import nbcache
from distributed import Client, LocalCluster

@nbcache.step
def inner(x):
    with open(os.environ["BODY_LOG"], "a") as log:
        log.write("inner\\n")
    return x * 10

@nbcache.step
def outer(x):
    return inner(x) + 1

if __name__ == "__main__":
    nbcache.set_cache_dir(os.environ["CHOSEN"])  # (in code, as a notebook would: the workers never run it)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        result = outer.submit(client, 4).result()
    print(json.dumps({"result": result, "here": outer(4)}))
    print(json.dumps([[r.step, r.state.value, r.worker, r.reason] for r in nbcache.runs()]))
'''


def test_steps_a_submitted_step_calls_use_its_cache_and_are_in_the_clients_history(tmp_path, body_log):
    """They used the worker's default cache (its NBCACHE_DIR, or its working folder): their results were not
    shared with the client, nor their runs in its history."""
    chosen = {"CHOSEN": str(tmp_path / "chosen")}
    out, history, bodies = _client(tmp_path, body_log, "cold", code=NESTED, **chosen)
    assert out == {"result": 41, "here": 41} and bodies == 1
    assert [(step, state) for step, state, _, _ in history] == [
        ("inner", "first run"), ("outer", "first run"), ("outer", "hit")]
    assert all(worker.startswith("tcp://") for _, _, worker, _ in history[:2])
    assert not (tmp_path / ".nbcache").exists() and not (tmp_path / "client-cache").exists()


MANY_CACHES = '''
import json, os, sys
import nbcache
from distributed import Client, LocalCluster

base = os.environ["BASE"]
steps = [nbcache.step(cache=nbcache.Cache(f"{base}/c{i}"), name=f"s{i}")(lambda x, i=i: [x + i] * 100)
         for i in range(20)]
odd = nbcache.step(cache=nbcache.Cache(f"{base}/odd", key="11" * 32), name="odd")(lambda x: x + 1)

def histories_open():  # (each cache opened keeps its history file open: runs.jsonl)
    fds = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
    return sum(os.path.basename(os.readlink(fd)) == "runs.jsonl" for fd in fds if os.path.exists(fd))

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        counts = []
        for round in range(4):
            calls = [s.submit(client, round) for s in steps] + [odd.submit(client, round)]
            assert client.gather(calls)[:2] == [[round] * 100, [round + 1] * 100]
            counts.append(list(client.run(histories_open).values())[0])
        print(json.dumps(counts))
    print(json.dumps([]))
'''


def test_a_worker_keeps_one_cache_per_directory_and_lets_none_go(tmp_path, body_log):
    """A worker opens each directory's cache once and keeps it: it kept 16, one per client cache, and let the
    others go to the garbage collector, which freed them inside Dask's profiler (on Python before 3.11.9 a
    deadlock, CPython gh-106883: the worker hung in CI), each leaving its history file open (a worker serving
    20 caches ran out of file descriptors). Its history files open stay as many as its caches, round after
    round (the others, its index's connections, one per thread that used it, stop growing too)."""
    counts, _, _ = _client(tmp_path, body_log, "many caches", code=MANY_CACHES, BASE=str(tmp_path))
    assert counts == [21, 21, 21, 21]  # (20 caches, and the worker's own for the one signed with another key)


REMOVED = '''
import json, os, shutil, sys
import nbcache
from distributed import Client, LocalCluster

directory = os.environ["NBCACHE_DIR"]
f = nbcache.step(lambda x: x * 2, name="f")

if __name__ == "__main__":
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        assert f.submit(client, 1).result() == 2
        shutil.rmtree(directory)  # (the user clears the cache by hand while the cluster lives)
        assert f.submit(client, 2).result() == 4
    print(json.dumps([f(2), nbcache.runs()[-1].cached]))
    print(json.dumps([[r.step, r.state.value, r.worker, r.reason] for r in nbcache.runs()]))
'''


def test_a_worker_opens_again_a_cache_directory_removed_while_it_lives(tmp_path, body_log):
    """The worker kept the index of the removed directory open: what it stored went nowhere the client sees."""
    (value, cached), history, _ = _client(tmp_path, body_log, "removed", code=REMOVED)
    assert (value, cached) == (4, True)  # (stored by the worker in the directory made anew)
    assert [state for _, state, _, _ in history] == ["first run", "hit"]  # (the worker's f(2), then f(2) here)


SETTINGS = '''
import json, sys
import numpy as np
import pandas as pd
import nbcache
from distributed import Client, LocalCluster

@nbcache.step
def ratios(n):
    a = np.arange(n, dtype=float)
    return (a / a[0]).tolist()  # (0 / 0, then x / 0)

@nbcache.step
def bottleneck(n):
    return [pd.get_option("compute.use_bottleneck")] * n

def attempt(call):
    try:
        return call()
    except FloatingPointError as exc:
        return f"FloatingPointError: {exc}"

if __name__ == "__main__":
    handling, threads = sys.argv[1], int(sys.argv[2])
    np.seterr(divide=handling, invalid=handling)
    pd.set_option("compute.use_bottleneck", False)
    with LocalCluster(n_workers=1, threads_per_worker=threads, processes=True, dashboard_address=None) as cluster, \\
            Client(cluster) as client:
        there = [attempt(lambda: ratios.submit(client, 3).result()), bottleneck.submit(client, 1).result()]
        after = client.submit(lambda: [np.geterr()["divide"], pd.get_option("compute.use_bottleneck")]).result()
    here = [attempt(lambda: ratios(3)), bottleneck(1)]
    print(json.dumps({"there": there, "here": here, "worker after": after}))
    print(json.dumps([[r.step, r.state.value, r.worker, r.reason] for r in nbcache.runs()]))
'''


@pytest.mark.parametrize("handling", ["ignore", "raise"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_submitted_call_computes_under_the_settings_of_the_process_that_submits_it(tmp_path, body_log, handling,
                                                                                     threads):
    """numpy's error handling (per thread, so on any worker) and pandas' computing options (the whole process's:
    on a worker of one thread) are the submitting process's while the call runs there, then the worker's
    again: a call raises there where it raises here, returns what it returns here, and its result is a hit
    here. On a worker of two threads, pandas' options stay the worker's, and the call here says so and runs."""
    results, history, _ = _client(tmp_path, body_log, "settings", code=SETTINGS.replace("sys.argv[1]", repr(handling))
                                  .replace("int(sys.argv[2])", str(threads)))
    if handling == "raise":
        assert results["there"][0] == results["here"][0] and results["here"][0].startswith("FloatingPointError: ")
    else:
        assert str(results["there"][0]) == str(results["here"][0]) == "[nan, inf, inf]"
    assert results["worker after"] == ["warn", True]
    states = {(step, worker != ""): (state, reason) for step, state, worker, reason in history}
    differ = ("changed", "the pandas computing options differ from when it was cached")
    if handling == "raise":  # (failed there, and here: nothing is stored of a call that raises)
        assert states["ratios", True][0] == states["ratios", False][0] == "failed"
    if threads == 1:
        assert results["there"][1] == results["here"][1] == [False]
        assert states["bottleneck", False][0] == "hit"
        assert handling == "raise" or states["ratios", False][0] == "hit"
    else:  # (pandas' options are an input of every step while pandas is imported: those of the worker's differ)
        assert results["there"][1] == [True] and results["here"][1] == [False]
        assert states["bottleneck", False] == differ and (handling == "raise" or states["ratios", False] == differ)
