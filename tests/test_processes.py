"""What must hold across processes: hash seeds, restarts, sharing a cache directory, and being killed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from .conftest import run_python

VALUES_SCRIPT = textwrap.dedent('''
    import collections, dataclasses, datetime, json
    import matplotlib, matplotlib.pyplot as plt, numpy as np, pandas as pd
    import nbcache

    @dataclasses.dataclass
    class Config:
        name: str
        tags: frozenset
        weights: dict

    class Model:
        def __init__(self):
            self.classes = {"cat", "dog", "emu"}
            self.coef = np.arange(4.0)

    def uses_frozenset(x):
        return x in {"alpha", "beta", "gamma", "delta"}

    SCALE = {"a", "b", "c"}

    matplotlib.use("Agg")
    figure, axes = plt.subplots()
    axes.plot([1, 2, 3], label="line")

    def uses_global(x):
        return len(SCALE) * uses_frozenset(x)

    values = {
        "set_of_str": {"alpha", "beta", "gamma", "delta", "epsilon"},
        "frozenset": frozenset({"x", "y", ("t", 1)}),
        "dict_mixed_keys": {"b": 1, 2: "a", (1, "z"): None, 3.5: [1]},
        "nested": [{"k": {"s", "t"}}, ({"u"},)],
        "dataclass": Config("c", frozenset({"p", "q"}), {"w": 1.5, "v": 2}),
        "object": Model(),
        "function": uses_frozenset,
        "function_with_global": uses_global,
        "class": Model,
        "array": np.arange(12.0).reshape(3, 4).T,
        "frame": pd.DataFrame({"a": [1, 2], "s": ["x", "y"], "c": pd.Categorical(["p", "q"])}),
        "date": datetime.date(2026, 11, 23),
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
        "figure": figure,
    }
    hashes = {name: nbcache.hash_value(value) for name, value in values.items()}
    hashes["fingerprint"] = nbcache.fingerprint(uses_global)
    print(json.dumps(hashes))
''')


def test_hashes_are_identical_across_processes_and_hash_seeds():
    results = [json.loads(run_python(VALUES_SCRIPT, env={"PYTHONHASHSEED": seed}))
               for seed in ("0", "1", "12345", "random")]
    for other in results[1:]:
        assert other == results[0]
    hashes = results[0]
    assert len(set(hashes.values())) == len(hashes)  # and different values hash differently


def test_import_nbcache_imports_neither_numpy_pandas_nor_ipython():
    out = run_python("import sys, nbcache; nbcache.hash_value({'a': [1]}); "
                     "print(sorted(m for m in ('numpy', 'pandas', 'IPython', 'ipywidgets') if m in sys.modules))")
    assert out.strip() == "[]"


PIPELINE = textwrap.dedent('''
    import sys
    import nbcache
    from nbcache import step

    OFFSET = {offset}

    def helper(x):
        return x + OFFSET

    @step
    def load(n):
        print("ran load", file=sys.stderr)
        return list(range(n))

    @step
    def transform(data):
        print("ran transform", file=sys.stderr)
        return [helper(v) for v in data]

    @step
    def total(data):
        print("ran total", file=sys.stderr)
        return sum(data)

    print(total(transform(load(1000))))
    print(",".join(f"{{r.step}}:{{r.cached}}" for r in nbcache.runs()[-3:]))
''')


def _pipeline(cache, offset=1, seed="0"):
    proc = subprocess.run([sys.executable, "-c", PIPELINE.format(offset=offset)], capture_output=True, text=True,
                          env={"NBCACHE_DIR": str(cache), "PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin",
                               "NBCACHE_KEY_FILE": os.environ["NBCACHE_KEY_FILE"]},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result, hits = proc.stdout.split()
    return int(result), hits, proc.stderr


def test_a_restart_is_served_from_the_cache_and_only_changes_recompute(tmp_path):
    cache = tmp_path / "cache"
    first = _pipeline(cache, offset=1, seed="1")
    assert first[1] == "load:False,transform:False,total:False"
    second = _pipeline(cache, offset=1, seed="2")
    assert second[:2] == (first[0], "load:True,transform:True,total:True")
    assert "ran" not in second[2]  # no step body ran after the restart
    third = _pipeline(cache, offset=2, seed="3")  # a global read by a helper of one step changed
    assert third[1] == "load:True,transform:False,total:False"
    assert third[0] == first[0] + 1000


CONCURRENT = textwrap.dedent('''
    import sys
    from nbcache import step

    @step
    def square(i):
        return [i * i] * 1000

    worker = int(sys.argv[1])
    for i in range(40):
        square(i if i % 2 else i + 1000 * worker)  # odd keys shared between workers, even keys private
''')


def test_two_processes_sharing_a_cache_lose_nothing(tmp_path):
    env = {"NBCACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "NBCACHE_KEY_FILE": os.environ["NBCACHE_KEY_FILE"]}
    workers = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(w)], env=env, stderr=subprocess.PIPE,
                                text=True) for w in (1, 2)]
    for proc in workers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    check = textwrap.dedent('''
        import nbcache
        from nbcache import step

        @step
        def square(i):
            return [i * i] * 1000

        keys = [i if i % 2 else i + 1000 * w for w in (1, 2) for i in range(40)]
        assert all(square(i) == [i * i] * 1000 for i in keys)
        runs = nbcache.runs("square")
        print(sum(r.cached for r in runs[-len(keys):]), len(runs))
    ''')
    hits, total = run_python(check, env=env).split()
    assert hits == "80"  # every value either worker computed is there
    assert int(total) == 80 + 80  # and every call of both workers was recorded


KILLED = textwrap.dedent('''
    import os, signal
    import numpy as np
    import nbcache.frame as frame
    from nbcache import step

    real_pieces = frame.Frame._pieces

    def pieces_then_die(self, buf):
        chunks = real_pieces(self, buf)
        yield next(chunks)
        os.kill(os.getpid(), signal.SIGKILL)  # killed halfway through writing the value

    frame.Frame._pieces = pieces_then_die

    @step
    def big(n):
        return np.arange(n, dtype=np.float64)

    big(2_000_000)
''')

AFTER_KILL = textwrap.dedent('''
    import warnings
    import numpy as np
    import nbcache
    from nbcache import step

    @step
    def big(n):
        return np.arange(n, dtype=np.float64)

    warnings.simplefilter("error")  # a half-written entry must not even look damaged: it must not exist
    out = big(2_000_000)
    assert np.array_equal(out, np.arange(2_000_000, dtype=np.float64))
    out = big(2_000_000)
    assert np.array_equal(out, np.arange(2_000_000, dtype=np.float64))
    print([(r.cached, r.reason) for r in nbcache.runs("big")])
''')


def test_a_process_killed_mid_write_leaves_no_valid_looking_entry(tmp_path):
    env = {"NBCACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin",
           "NBCACHE_KEY_FILE": os.environ["NBCACHE_KEY_FILE"]}
    proc = subprocess.run([sys.executable, "-c", KILLED], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9
    partial = [p for p in (tmp_path / "cache" / "store").rglob("*.tmp-*")]  # (values are renamed into place whole)
    with open(partial[0], "rb") as f:
        assert f.read(4) == bytes(4)  # the write really was cut short: the head is written last
    out = run_python(AFTER_KILL, env=env)
    assert out.strip() == "[(False, 'first run'), (True, 'cache hit')]"


@pytest.mark.parametrize("seed", ["0", "7"])
def test_fingerprints_of_notebook_functions_are_stable_across_processes(seed):
    code = textwrap.dedent('''
        import nbcache
        SETS = {"a", "b", "c"}
        def helper(x):
            return {k: x for k in SETS if k in {"a", "c", "zz"}}
        def f(x):
            return helper(x), lambda y: y in frozenset({"q", "r"})
        print(nbcache.fingerprint(f))
    ''')
    assert run_python(code, env={"PYTHONHASHSEED": seed}) == run_python(code, env={"PYTHONHASHSEED": "99"})
