"""The demo pipeline: importer -> normalizer -> trainer -> evaluator, on synthetic data, with numpy.

``nbcache demo`` runs it twice, each time in a fresh Python process (as a kernel restart would), and
prints how long each step took in each run: the second run is served from the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised by users without the extra
    np = None

from .step import runs, step

STEPS = ("importer", "normalizer", "trainer", "evaluator")


@step
def importer(n_samples: int = 200_000, n_features: int = 64, seed: int = 0):
    """Make a classification data set: features and binary labels from a noisy linear rule."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features))
    X = np.tanh(X @ rng.standard_normal((n_features, n_features)) / 8.0)  # correlated features
    weights = rng.standard_normal(n_features)
    y = (X @ weights + 0.5 * rng.standard_normal(n_samples) > 0).astype(np.float64)
    return X, y


@step
def normalizer(X):
    """Scale every feature to zero mean and unit variance, clipping outliers first."""
    low, high = np.percentile(X, [1, 99], axis=0)
    clipped = np.clip(X, low, high)
    return (clipped - clipped.mean(axis=0)) / clipped.std(axis=0)


@step
def trainer(X, y, epochs: int = 1, learning_rate: float = 0.5):
    """Logistic regression by mini-batch gradient descent."""
    rng = np.random.default_rng(1)
    w = np.zeros(X.shape[1])
    for _ in range(epochs):
        order = rng.permutation(len(X))
        for start in range(0, len(X), 2048):
            batch = order[start:start + 2048]
            p = 1.0 / (1.0 + np.exp(-(X[batch] @ w)))
            w -= learning_rate * X[batch].T @ (p - y[batch]) / len(batch)
    return w


@step
def evaluator(w, X, y):
    """Accuracy of the trained weights on the data."""
    return float(((X @ w > 0) == (y > 0.5)).mean())


def run_pipeline(epochs: int = 1) -> float:
    X, y = importer()
    Xn = normalizer(X)
    w = trainer(Xn, y, epochs=epochs)
    return evaluator(w, Xn, y)


def _run_once(epochs: int) -> None:
    """Child process: run the pipeline and print each step's latest run as JSON."""
    accuracy = run_pipeline(epochs)
    latest = {r.step: r for r in runs()}
    print(json.dumps({"accuracy": accuracy, "steps": {
        name: {"seconds": latest[name].duration_s, "cached": latest[name].cached, "reason": latest[name].reason}
        for name in STEPS}}))


_CHILD = "import sys, nbcache, nbcache.demo as d; nbcache.set_cache_dir(sys.argv[1]); d._run_once(epochs=1)"


def main(cache_dir: str | None = None) -> int:
    if np is None:
        print("nbcache demo needs numpy: pip install 'nbcache[demo]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nbcache-demo-") as scratch:
        directory = Path(cache_dir or scratch).absolute()
        print(f"nbcache demo: a four-step pipeline run twice, each in a fresh Python process\ncache: {directory}\n")
        results = []
        for number in (1, 2):
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(directory)], capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            result = json.loads(proc.stdout.splitlines()[-1])
            results.append(result)
            for name in STEPS:
                info = result["steps"][name]
                print(f"run {number}  {name:<11} {info['seconds']:8.3f} s  {info['reason']}")
            print(f"run {number}  accuracy    {result['accuracy']:.4f}\n")
        print(f"{'step':<11} {'run 1 (s)':>10} {'run 2 (s)':>10} {'speed-up':>9}")
        for name in STEPS:
            first, second = (r["steps"][name]["seconds"] for r in results)
            print(f"{name:<11} {first:10.3f} {second:10.4f} {first / second:8.0f}x")
        total1, total2 = (sum(s["seconds"] for s in r["steps"].values()) for r in results)
        print(f"{'total':<11} {total1:10.3f} {total2:10.4f} {total1 / total2:8.0f}x")
        same = results[0]["accuracy"] == results[1]["accuracy"]
        print(f"\nSame accuracy from the cache: {'yes' if same else 'NO'}")
        return 0 if same and all(s["cached"] for s in results[1]["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
