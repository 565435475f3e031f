"""The demo: importer -> normalizer -> trainer -> evaluator on scikit-learn's bundled digits, run twice.

An example, not part of the ``nbcache`` package: a module of its own, ``nbcache_demo``, which an editable
install (``pip install -e '.[demo]'``) finds here in ``examples/`` and the wheel carries next to ``nbcache``.
``nbcache demo`` imports it and calls ``main``; ``python examples/nbcache_demo.py [DIR]`` runs it too.

``nbcache demo`` runs the pipeline once with one training epoch, then again with two, each time in a fresh
Python process (as after a kernel restart), and prints how long each step took in each run: in the second
run the importer and the normalizer come from the cache, and only the trainer and what depends on it
run. It then writes the lineage of the second run to ``lineage.svg``. The digits ship with scikit-learn,
so nothing is downloaded.

The work itself is in plain functions (``augment``, ``deskew``, ``fit``, ``accuracy``), so that the
notebook ``notebooks/digits_pipeline.ipynb`` can wrap the same work in its own ``@step`` functions and
``%%step`` cells.

It uses nbcache's public API (``step``, ``runs``, ``set_cache_dir``) but for one function,
``_write_lineage``, which draws the lineage of another process's run with nbcache's graph and store.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

try:
    import numpy as np
    from scipy import ndimage
    from sklearn.datasets import load_digits
    from threadpoolctl import threadpool_limits  # comes with scikit-learn
except ImportError:  # pragma: no cover - exercised by users without the extra
    np = None

import nbcache
from nbcache import step

STEPS = ("importer", "normalizer", "trainer", "evaluator")
ANGLES = (-15, -12.5, -10, -7.5, -5, -2.5, 2.5, 5, 7.5, 10, 12.5, 15)


def augment(seed: int = 0):
    """scikit-learn's 1,797 digits plus rotated copies (cubic splines): about 23,000 8x8 images.

    Returns ``(images, labels, held_out)``: ``held_out`` marks every image made from the fifth of the
    digits kept for testing (picked by ``seed``), so that no rotation of a test digit is trained on.
    """
    digits = load_digits()
    copies = [digits.images] + [
        np.stack([ndimage.rotate(im, angle, reshape=False, order=3, mode="nearest") for im in digits.images])
        for angle in ANGLES]
    n = len(digits.images)
    held_out_digits = np.random.default_rng(seed).permutation(n) < n // 5
    return np.concatenate(copies), np.tile(digits.target, len(copies)), np.tile(held_out_digits, len(copies))


def deskew(images):
    """Straighten every image by its second moments, then scale pixels to zero mean and unit variance."""
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


def fit(X, y, held_out, epochs: int = 1, hidden: int = 4096, learning_rate: float = 0.01):
    """A one-hidden-layer network trained by mini-batch gradient descent on the images not held out;
    returns its weights ``(w1, w2)``."""
    X, y = X[~held_out], y[~held_out]
    rng = np.random.default_rng(1)
    w1 = rng.normal(scale=0.1, size=(X.shape[1], hidden))
    w2 = rng.normal(scale=0.01, size=(hidden, 10))
    targets = np.eye(10)[y]
    # Small matrix products: one BLAS thread is faster than two, and does not crawl when another
    # process wants the second core (two spinning BLAS threads made the trainer ten times slower).
    with threadpool_limits(limits=1, user_api="blas"):
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


def accuracy(weights, X, y, held_out) -> float:
    """The share of held-out images the network labels right."""
    w1, w2 = weights
    predicted = (np.maximum(X[held_out] @ w1, 0) @ w2).argmax(axis=1)
    return float((predicted == y[held_out]).mean())


@step
def importer(seed: int = 0):
    """The digits and their rotated copies, with the held-out mask (see ``augment``)."""
    return augment(seed)


@step
def normalizer(images):
    return deskew(images)


@step
def trainer(X, labels, held_out, epochs: int = 1):
    return fit(X, labels, held_out, epochs=epochs)


@step
def evaluator(weights, X, labels, held_out):
    return accuracy(weights, X, labels, held_out)


def _call(a_step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return a_step(*args, **kwargs)


def run_pipeline(epochs: int, call: Callable[..., Any] = _call) -> float:
    """The four steps in turn, each called as ``call(step, *args, **kwargs)``."""
    images, labels, held_out = call(importer)
    X = call(normalizer, images)
    weights = call(trainer, X, labels, held_out, epochs=epochs)
    return call(evaluator, weights, X, labels, held_out)


def table(first: Sequence[Any], second: Sequence[Any]) -> str:
    """The run-1/run-2 table from two runs' records (``StepRun``s, or anything with ``step``,
    ``duration_s`` and ``cached``): both durations in seconds, and the speed-up of the steps that came
    from the cache in run 2 (a step that ran both times did new work: it has no speed-up to show)."""
    before = {r.step: r for r in first}
    rows = [f"{'step':<11} {'run 1 (s)':>10} {'run 2 (s)':>10}  speed-up"]
    for r in second:
        if r.step not in before:
            continue
        was = before[r.step].duration_s
        gain = f"{was / max(r.duration_s, 1e-9):7.0f}x (from the cache)" if r.cached else "     re-ran"
        rows.append(f"{r.step:<11} {was:10.4f} {r.duration_s:10.4f} {gain}")
    return "\n".join(rows)


def _run_once(epochs: int) -> None:
    """Child process: print each step's run as a JSON line the moment the step returns (or fails), then
    the score and this process's session, whose lineage the parent draws."""
    sessions = []

    def reporting(a_step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        before = len(nbcache.runs(a_step))
        try:
            return a_step(*args, **kwargs)
        finally:
            for run in nbcache.runs(a_step)[before:]:  # the run this call recorded
                sessions.append(run.session)
                print(json.dumps({"step": run.step, "duration_s": run.duration_s, "cached": run.cached,
                                  "reason": run.reason}), flush=True)

    score = run_pipeline(epochs, reporting)
    print(json.dumps({"accuracy": score, "session": sessions[-1]}), flush=True)


# The child imports this very file (its folder first on its path), whether it was found as an installed
# module or run as a script.
_CHILD = ("import sys; sys.path.insert(0, sys.argv[3]); import nbcache, nbcache_demo as d; "
          "nbcache.set_cache_dir(sys.argv[1]); d._run_once(epochs=int(sys.argv[2]))")


def _run_in_child(number: int, epochs: int, directory: Path) -> dict | None:
    """One run in a fresh Python process, printing a progress line as each step finishes; its result, or
    None if it failed (its traceback is on stderr, which it shares)."""
    here = str(Path(__file__).absolute().parent)
    with subprocess.Popen([sys.executable, "-c", _CHILD, str(directory), str(epochs), here],
                          stdout=subprocess.PIPE, text=True) as child:
        try:
            return _follow(child, number)
        except BaseException:  # Ctrl-C, or `nbcache demo | head` closing the pipe: stop the run too
            child.kill()
            raise


def _follow(child: subprocess.Popen, number: int) -> dict | None:
    steps: dict[str, dict] = {}
    for line in child.stdout:
        if not line.startswith("{"):  # something the pipeline printed itself
            print(line, end="")
            continue
        result = json.loads(line)
        if "step" not in result:
            print(f"run {number}  accuracy    {result['accuracy']:.4f}\n")
            return {**result, "steps": steps}
        steps[result["step"]] = result
        print(f"run {number}  {result['step']:<11} {result['duration_s']:8.3f} s  {result['reason']}", flush=True)
    print(f"run {number} failed (exit code {child.wait()}): see the traceback above", file=sys.stderr)
    return None


def main(cache_dir: str | None = None, output: str = "lineage.svg") -> int:
    if np is None:
        print("nbcache demo needs numpy, scipy and scikit-learn: pip install 'nbcache[demo]'", file=sys.stderr)
        return 1
    target = Path(output).absolute()
    problem = ("it must end in .svg" if target.suffix.lower() != ".svg" else
               "its folder does not exist" if not target.parent.is_dir() else
               "it is a folder" if target.is_dir() else None)
    if problem:
        print(f"nbcache demo: cannot write the lineage to {output}: {problem}", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(prefix="nbcache-demo-") as scratch:
        directory = Path(cache_dir or scratch).absolute()
        print("nbcache demo: digits pipeline, run 1 with one epoch, run 2 with two, each in a fresh process")
        print(f"cache: {directory}" + ("" if cache_dir else " (temporary: --dir DIR keeps it)") + "\n", flush=True)
        results = []
        for number, epochs in ((1, 1), (2, 2)):
            result = _run_in_child(number, epochs, directory)
            if result is None:
                return 1
            results.append(result)
        first, second = ([SimpleNamespace(**r["steps"][name]) for name in STEPS] for r in results)
        print(table(first, second))
        _write_lineage(directory, results[1]["session"], output)
        if any(r.cached for r in first):
            print(f"\nrun 1 came from the cache too: {directory} held the demo's results from an earlier run;"
                  " give --dir an empty or new folder to watch run 1 compute")
        if not (second[0].cached and second[1].cached):
            print("\nrun 2 should have taken the importer and the normalizer from the cache, and did not",
                  file=sys.stderr)
            return 1
        return 0


def _write_lineage(directory: Path, session: str, output: str) -> None:
    # nbcache's graph module, the one internal this example uses: the lineage of another process's run
    from nbcache.graph import DotMissing, build, render_svg, to_dot

    lineage = build(nbcache.Cache(directory).runs(), session=session)
    try:
        Path(output).write_text(render_svg(to_dot(lineage)))
    except DotMissing as exc:
        print(f"\nlineage.svg not written: {exc}")
        return
    print(f"\nlineage of run 2 written to {output}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
