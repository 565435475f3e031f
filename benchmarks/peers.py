"""nbcache beside its peers, joblib.Memory and Hamilton's cache, on a three-step pipeline, each run in a new process.

The pipeline: ``importer`` makes a 50,000 x 64 float64 array (a logistic-map recurrence, about 1 s of CPU),
``normalizer`` standardizes it (about 1 s), ``trainer`` fits a least-squares model on it (a few ms). The same
three function bodies are written, per tool, into a module in a temporary directory: decorated with
``@nbcache.step``, decorated with ``joblib.Memory(...).cache``, or plain functions that Hamilton's
``driver.Builder().with_modules(...).with_cache(path=...)`` turns into nodes. Three runs, each in a fresh
process, with a cache directory of its own per tool and round:

1. cold: the cache is empty, every step runs;
2. the trainer's source was edited (its ``penalty`` constant): importer and normalizer come from the cache;
3. nothing changed: every step comes from the cache.

Measured inside the child process, with ``time.perf_counter``:

- import: ``import nbcache`` / ``import joblib`` / ``from hamilton import driver``, after numpy (which all
  three pipelines import) was imported; setup: importing the pipeline module, and for Hamilton building the
  driver. Both are printed and neither is counted in the wall.
- wall: from before the first step call to after the last; for Hamilton, around ``dr.execute(["trainer"])``
  (which includes its per-run work outside the nodes: hashing every node's source, opening its SQLite
  metadata store).
- per step: around each call; for Hamilton, from a node hook placed before the cache adapter to one placed
  after it, so a node's time holds the adapter's key, lookup, load or execution, hashing and storing.

Each child asks each tool which steps ran and which came from its cache (``nbcache.runs``, joblib's
``cache_validation_callback``, Hamilton's ``dr.cache.logs``) and the table marks every cell ``hit`` or
``ran``. Every round repeats the three runs for the three tools; each row shows the round with the lowest wall.

Goals (issue 12): nbcache's run-2 wall <= 0.5x Hamilton's run-2 wall; a cached nbcache step (the slower of
the importer and normalizer hits, in runs 2 and 3) <= 1.5 ms. nbcache's run-2 wall against joblib's is a
goal too (<= 1.0x).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUNDS = 3
TOOLS = ("nbcache", "joblib", "hamilton")
RUNS = {1: "cold", 2: "trainer edited", 3: "all cached"}
STEPS = ("importer", "normalizer", "trainer")
EXPECTED_HITS = {1: set(), 2: {"importer", "normalizer"}, 3: set(STEPS)}
RESULT_TAG = "PEERS_RESULT "

BODIES = '''
ROWS, COLS = 50_000, 64


{deco_importer}def importer() -> np.ndarray:
    """A 50,000 x 64 array from a logistic-map recurrence: about 1 s of CPU."""
    x = np.linspace(0.1, 0.9, ROWS * COLS).reshape(ROWS, COLS)
    for _ in range(180):
        x *= 1.0 - x
        x *= 3.9
    return x


{deco_normalizer}def normalizer(importer: np.ndarray) -> np.ndarray:
    """Standardize the columns and squash them, 36 times over: about 1 s."""
    x = importer.copy()
    for _ in range(36):
        x -= x.mean(axis=0)
        x /= x.std(axis=0)
        np.tanh(x, out=x)
    return x


{deco_trainer}def trainer(normalizer: np.ndarray) -> np.ndarray:
    """Ridge least squares of the last column on the others: a few ms."""
    X, y = normalizer[:, :-1], normalizer[:, -1]
    penalty = {penalty}
    return np.linalg.solve(X.T @ X + penalty * np.eye(X.shape[1]), X.T @ y)
'''

HEADERS = {
    "nbcache": "import numpy as np\n\nimport nbcache\n",
    "joblib": '''import os

import joblib
import numpy as np

memory = joblib.Memory(os.environ["PEERS_CACHE_DIR"], verbose=0)
HITS: list[str] = []


def hit(name):
    """A cache_validation_callback: joblib calls it only for a stored result it would use."""
    return lambda metadata: HITS.append(name) or True
''',
    "hamilton": "import numpy as np\n",
}


def write_pipeline(directory: Path, tool: str, run: int) -> None:
    """Write ``pipe_<tool>.py``; from run 2 on the trainer's penalty differs (its source is edited)."""
    decorations = {f"deco_{name}": {"nbcache": "@nbcache.step\n",
                                    "joblib": f'@memory.cache(cache_validation_callback=hit("{name}"))\n',
                                    "hamilton": ""}[tool] for name in STEPS}
    source = HEADERS[tool] + BODIES.format(penalty="0.0" if run == 1 else "0.25", **decorations)
    (directory / f"pipe_{tool}.py").write_text(source)


# ---------------------------------------------------------------------------------------------------------
# The child: one run of one tool, in a fresh process. It prints one line, RESULT_TAG + JSON.
# ---------------------------------------------------------------------------------------------------------

def child(tool: str, pipeline_dir: str) -> dict[str, Any]:
    """One run of ``tool`` on ``pipe_<tool>.py`` in ``pipeline_dir``: seconds, and the steps that were hits."""
    import importlib

    import numpy as np  # imported by every pipeline: not part of any tool's import time

    t0 = time.perf_counter()
    if tool == "nbcache":
        import nbcache
    elif tool == "joblib":
        import joblib  # noqa: F401
    else:
        from hamilton import driver  # noqa: F401 (what a Hamilton user imports; hamilton_driver uses it)
    t_import = time.perf_counter() - t0

    sys.path.insert(0, pipeline_dir)
    sys.dont_write_bytecode = True  # the edited pipeline must never be read back from a stale .pyc
    t0 = time.perf_counter()
    mod = importlib.import_module(f"pipe_{tool}")
    if tool == "hamilton":
        dr, stamps = hamilton_driver(mod, os.environ["PEERS_CACHE_DIR"])
    t_setup = time.perf_counter() - t0

    if tool == "hamilton":
        t0 = time.perf_counter()
        model = dr.execute(["trainer"])["trainer"]
        wall = time.perf_counter() - t0
        times = {name: end - start for name, (start, end) in stamps.items()}
        logs = dr.cache.logs(run_id=dr.cache.last_run_id, level="info")
        hits = {name for name, events in logs.items()
                if any(event.event_type.value == "get_result" for event in events)}
    else:
        t0 = time.perf_counter()
        x = mod.importer()
        t1 = time.perf_counter()
        xn = mod.normalizer(x)
        t2 = time.perf_counter()
        model = mod.trainer(xn)
        t3 = time.perf_counter()
        wall = t3 - t0
        times = {"importer": t1 - t0, "normalizer": t2 - t1, "trainer": t3 - t2}
        if tool == "nbcache":
            hits = {name for name in STEPS if nbcache.runs(getattr(mod, name))[-1].cached}
        else:
            hits = set(mod.HITS)
    return {"import": t_import, "setup": t_setup, "wall": wall, "times": times, "hits": sorted(hits),
            "model": float(np.asarray(model).sum())}


def hamilton_driver(module: Any, cache_dir: str) -> tuple[Any, dict[str, list[float]]]:
    """A driver of ``module``'s functions with its cache in ``cache_dir``, and the start and end stamps of
    each node it executes: one hook runs before the cache adapter's, one after."""
    from hamilton import driver
    from hamilton.lifecycle import NodeExecutionHook

    class NodeClock(NodeExecutionHook):
        def __init__(self, stamps: dict[str, list[float]], end: bool) -> None:
            self.stamps, self.end = stamps, end

        def run_before_node_execution(self, *, node_name: str, **kwargs: Any) -> None:
            if not self.end:
                self.stamps[node_name] = [time.perf_counter(), 0.0]

        def run_after_node_execution(self, *, node_name: str, **kwargs: Any) -> None:
            if self.end:
                self.stamps[node_name][1] = time.perf_counter()

    stamps: dict[str, list[float]] = {}
    dr = (driver.Builder().with_modules(module)
          .with_adapters(NodeClock(stamps, end=False))
          .with_cache(path=cache_dir)
          .with_adapters(NodeClock(stamps, end=True))
          .build())
    return dr, stamps


# ---------------------------------------------------------------------------------------------------------
# The parent: rounds of three runs per tool, then the table and the goals.
# ---------------------------------------------------------------------------------------------------------

def run_child(tool: str, pipeline_dir: Path, cache_dir: Path) -> dict[str, Any]:
    env = dict(os.environ, PEERS_CACHE_DIR=str(cache_dir), NBCACHE_DIR=str(cache_dir),
               HAMILTON_TELEMETRY_ENABLED="false")  # (older Hamilton releases phone home unless told not to)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # (the tools' byte-code is read as an installed package's is)
    proc = subprocess.run([sys.executable, __file__, "--child", tool, str(pipeline_dir)],
                          env=env, cwd=str(pipeline_dir), capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise RuntimeError(f"{tool}: child process failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_TAG):])


def measure() -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Every round: for each tool, a fresh cache directory and pipeline module, and its three runs."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {(t, r): [] for t in TOOLS for r in RUNS}
    for _ in range(ROUNDS):
        for tool in TOOLS:
            with tempfile.TemporaryDirectory(prefix=f"peers-{tool}-") as tmp:
                pipeline_dir, cache_dir = Path(tmp) / "src", Path(tmp) / "cache"
                pipeline_dir.mkdir()
                for run in RUNS:
                    write_pipeline(pipeline_dir, tool, run)
                    results[tool, run].append(run_child(tool, pipeline_dir, cache_dir))
    return results


def main() -> None:
    from _timing import goal, header

    header("peers", f"importer (~1 s) -> normalizer (~1 s) -> trainer, 3 runs in fresh processes, "
                    f"per tool; best wall of {ROUNDS} rounds")
    versions = _versions()
    print("   " + ", ".join(f"{name} {v}" for name, v in versions.items()))
    results = measure()
    best = {cell: min(rounds, key=lambda r: r["wall"]) for cell, rounds in results.items()}

    print(f"   {'tool':<9}{'run':<17}" + "".join(f"{s:>16}" for s in STEPS)
          + f"{'wall':>10}{'import':>9}{'setup':>8}   (ms)")
    surprises = []
    for tool in TOOLS:
        for run, what in RUNS.items():
            row = best[tool, run]
            cells = "".join(f"{row['times'][s] * 1e3:>11.2f} {'hit' if s in row['hits'] else 'ran':<4}"
                            for s in STEPS)
            print(f"   {tool:<9}{f'{run} {what}':<17}{cells}{row['wall'] * 1e3:>10.1f}"
                  f"{row['import'] * 1e3:>9.1f}{row['setup'] * 1e3:>8.1f}")
            for r in results[tool, run]:
                if set(r["hits"]) != EXPECTED_HITS[run]:
                    surprises.append(f"{tool} run {run}: hits {r['hits']}, expected {sorted(EXPECTED_HITS[run])}")
    for run in RUNS:
        models = {tool: best[tool, run]["model"] for tool in TOOLS}
        if max(models.values()) - min(models.values()) > 1e-6 * max(1.0, max(abs(v) for v in models.values())):
            surprises.append(f"run {run}: the trainers disagree: {models}")
    for line in surprises:
        print(f"   NOTE {line}")

    cached = {f"run {run} {s}": min(r["times"][s] for r in results["nbcache", run])
              for run in (2, 3) for s in ("importer", "normalizer")}
    print("   nbcache's cached steps, best of rounds: "
          + ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in cached.items()))
    nb2, jl2, hm2 = (best[tool, 2]["wall"] for tool in TOOLS)
    goal("nbcache / hamilton, run-2 wall", nb2 / hm2, "<=", 0.5)
    goal("slowest cached step / 1.5 ms", max(cached.values()) / 0.0015, "<=", 1.0)
    goal("nbcache / joblib, run-2 wall", nb2 / jl2, "<=", 1.0)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("joblib", "sf-hamilton", "apache-hamilton", "numpy"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(RESULT_TAG + json.dumps(child(sys.argv[2], sys.argv[3])))
    else:
        main()
