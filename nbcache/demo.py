"""The demo: importer -> normalizer -> trainer -> evaluator on scikit-learn's bundled digits, run twice.

``nbcache demo`` runs the pipeline once with one training epoch, then again with two, each time in a fresh
Python process (as after a kernel restart), and prints how long each step took in each run: in the second
run the importer and the normalizer come from the cache, and only the trainer and what depends on it
run. It then writes the lineage of the second run to ``lineage.svg``. The digits ship with scikit-learn,
so nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
    from scipy import ndimage
    from sklearn.datasets import load_digits
except ImportError:  # pragma: no cover - exercised by users without the extra
    np = None

from .records import SESSION
from .step import runs, step

STEPS = ("importer", "normalizer", "trainer", "evaluator")
ANGLES = (-15, -12, -9, -6, -3, 3, 6, 9, 12, 15)


@step
def importer(seed: int = 0):
    """The digits, augmented with rotated copies (cubic splines): about 20,000 8x8 images."""
    digits = load_digits()
    images = [digits.images]
    for angle in ANGLES:
        images.append(np.stack([ndimage.rotate(im, angle, reshape=False, order=3, mode="nearest")
                                for im in digits.images]))
    X = np.concatenate(images)
    y = np.tile(digits.target, len(images))
    order = np.random.default_rng(seed).permutation(len(X))
    return X[order], y[order]


@step
def normalizer(images):
    """Deskew every image by its second moments, then scale pixels to zero mean and unit variance."""
    rows, cols = np.mgrid[:8, :8]
    out = np.empty((len(images), 64))
    for i, im in enumerate(images):
        total = im.sum() or 1.0
        r, c = (rows * im).sum() / total, (cols * im).sum() / total
        skew = ((rows - r) * (cols - c) * im).sum() / max(((rows - r) ** 2 * im).sum(), 1e-9)
        matrix = np.array([[1.0, 0.0], [skew, 1.0]])
        offset = np.array([r, c]) - matrix @ np.array([3.5, 3.5])
        out[i] = ndimage.affine_transform(im, matrix, offset=offset, order=3, mode="constant").ravel()
    return (out - out.mean(axis=0)) / (out.std(axis=0) + 1e-9)


@step
def trainer(X, y, epochs: int = 1, hidden: int = 512, learning_rate: float = 0.05):
    """A one-hidden-layer network, trained by mini-batch gradient descent."""
    rng = np.random.default_rng(1)
    w1 = rng.normal(scale=0.1, size=(X.shape[1], hidden))
    w2 = rng.normal(scale=0.1, size=(hidden, 10))
    targets = np.eye(10)[y]
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(X)), len(X) // 16):
            h = np.maximum(X[batch] @ w1, 0)
            logits = h @ w2
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            grad = (p - targets[batch]) / len(batch)
            grad_h = (grad @ w2.T) * (h > 0)
            w2 -= learning_rate * h.T @ grad
            w1 -= learning_rate * X[batch].T @ grad_h
    return w1, w2


@step
def evaluator(weights, X, y):
    """Accuracy on the last fifth of the data."""
    w1, w2 = weights
    test = slice(len(X) * 4 // 5, None)
    predicted = (np.maximum(X[test] @ w1, 0) @ w2).argmax(axis=1)
    return float((predicted == y[test]).mean())


def run_pipeline(epochs: int) -> float:
    images, labels = importer()
    X = normalizer(images)
    weights = trainer(X, labels, epochs=epochs)
    return evaluator(weights, X, labels)


def _run_once(epochs: int) -> None:
    """Child process: run the pipeline and print each step's latest run as JSON."""
    accuracy = run_pipeline(epochs)
    latest = {r.step: r for r in runs()}
    print(json.dumps({"accuracy": accuracy, "session": SESSION, "steps": {
        name: {"seconds": latest[name].duration_s, "cached": latest[name].cached, "reason": latest[name].reason}
        for name in STEPS}}))


_CHILD = ("import sys, nbcache, nbcache.demo as d; nbcache.set_cache_dir(sys.argv[1]); "
          "d._run_once(epochs=int(sys.argv[2]))")


def main(cache_dir: str | None = None, output: str = "lineage.svg") -> int:
    if np is None:
        print("nbcache demo needs numpy, scipy and scikit-learn: pip install 'nbcache[demo]'", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nbcache-demo-") as scratch:
        directory = Path(cache_dir or scratch).absolute()
        print("nbcache demo: digits pipeline, run 1 with one epoch, run 2 with two, each in a fresh process")
        print(f"cache: {directory}\n")
        results = []
        for number, epochs in ((1, 1), (2, 2)):
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(directory), str(epochs)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            result = json.loads(proc.stdout.splitlines()[-1])
            results.append(result)
            for name in STEPS:
                info = result["steps"][name]
                print(f"run {number}  {name:<11} {info['seconds']:8.3f} s  {info['reason']}", flush=True)
            print(f"run {number}  accuracy    {result['accuracy']:.4f}\n")
        print(f"{'step':<11} {'run 1 (s)':>10} {'run 2 (s)':>10} {'speed-up':>9}")
        for name in STEPS:
            first, second = (r["steps"][name]["seconds"] for r in results)
            print(f"{name:<11} {first:10.3f} {second:10.4f} {first / second:8.1f}x")
        _write_lineage(directory, results[1]["session"], output)
        second = results[1]["steps"]
        expected = second["importer"]["cached"] and second["normalizer"]["cached"] and not second["trainer"]["cached"]
        return 0 if expected else 1


def _write_lineage(directory: Path, session: str, output: str) -> None:
    from .graph import DotMissing, build, render_svg, to_dot
    from .store import DiskStore

    lineage = build(DiskStore(directory).read_runs(), session=session)
    try:
        Path(output).write_text(render_svg(to_dot(lineage)))
    except DotMissing as exc:
        print(f"\nlineage.svg not written: {exc}")
        return
    print(f"\nlineage of run 2 written to {output}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
