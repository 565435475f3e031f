"""Many processes on one cache directory at once: 4 processes x 2,000 calls of a tiny step, over keys all of
them call (in the same order, so that they race for each) and keys of their own. No run record is lost, every
value is right, and every key is computed once (single-flight), however the calls interleave."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import nbcache

PROCESSES = 4
CALLS = 2_000  # per process: half of them over SHARED keys, half over as many keys of the process's own
SHARED = 250

WORKER = textwrap.dedent('''
    import json, os, sys, time, warnings
    from nbcache import CacheWarning, step

    worker, log, start = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    calls, shared = int(sys.argv[4]), int(sys.argv[5])

    # The body counts its runs on a file opened here, not in the body: a file a step opens and writes is
    # one of its outputs, checked on every hit (and changed by every other run), so the step would rerun.
    # (``log`` also says which process ran it: a global the body read would be part of its key.)
    log_fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)

    @step(ignore=["log"])
    def tiny(k, log):
        os.write(log[0], f"{k} {log[1]}\\n".encode())  # (one write to an O_APPEND file: lines never interleave)
        return {"k": k, "twice": k * 2}

    time.sleep(max(0.0, start - time.time()))  # all start together
    wrong, warned = [], []
    for i in range(calls):
        n = (i // 2) % shared
        k = f"s{n}" if i % 2 == 0 else f"p{worker}-{n}"  # shared keys in the same order in every process
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = tiny(k, (log_fd, worker))
        if value != {"k": k, "twice": k * 2}:
            wrong.append(k)
        warned += [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    print(json.dumps({"wrong": wrong, "warned": warned}))
''')


def test_four_processes_on_one_directory_lose_no_record_and_compute_each_key_once(cache_dir, tmp_path):
    env = {**os.environ, "NBCACHE_DIR": str(cache_dir)}  # (the suite's NBCACHE_KEY_FILE is inherited)
    log = tmp_path / "computed.log"
    start = time.time() + 1.5  # (after every interpreter has imported nbcache)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(w), str(log), str(start), str(CALLS), str(SHARED)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(PROCESSES)]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        reports.append(json.loads(out))
    assert [r["wrong"] for r in reports] == [[]] * PROCESSES  # every value right
    assert [r["warned"] for r in reports] == [[]] * PROCESSES

    keys = {f"s{n}" for n in range(SHARED)} | {f"p{w}-{n}" for w in range(PROCESSES) for n in range(SHARED)}
    lines = [line.split() for line in log.read_text().splitlines()]
    computed = collections.Counter(k for k, _ in lines)
    by = collections.Counter(w for k, w in lines if k.startswith("s"))  # which process computed each shared key
    assert len(by) > 1, by  # (they did race: shared keys were computed by several of them)
    print(f"\nshared keys computed by each process: {dict(by)}")
    assert set(computed) == keys
    assert [k for k, times in computed.items() if times > 1] == []  # each key computed once, by one process

    runs = nbcache.runs()
    assert len(runs) == PROCESSES * CALLS  # no record lost
    assert all(run.step == "tiny" and run.status == "ok" for run in runs)
    ran = collections.Counter(run.key for run in runs if not run.cached)
    assert len(ran) == len(keys) and set(ran.values()) == {1}  # the records agree: one computation per key
    assert len({run.key for run in runs}) == len(keys)
