"""The quickstart notebook in real Jupyter kernels: restart, run all, and nothing recomputes."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "quickstart.ipynb"


def _execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a new kernel (a fresh process, as after a restart) with ``cwd`` as its folder."""
    nb = nbformat.from_dict(nb)
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stdout")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    return tmp_path


def test_restarted_kernel_serves_every_step_from_the_cache(workdir):
    nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    first = _execute(nb, workdir)
    second = _execute(nb, workdir)
    history_first, history_second = _stdout(first.cells[-1]), _stdout(second.cells[-1])
    assert [line.split()[:2] for line in history_first.splitlines()] == [
        ["load", "ran"], ["normalize", "ran"], ["train", "ran"], ["evaluate", "ran"]]
    assert [line.split()[:2] for line in history_second.splitlines()] == [
        ["load", "hit"], ["normalize", "hit"], ["train", "hit"], ["evaluate", "hit"]]
    assert _stdout(first.cells[3]) == _stdout(second.cells[3])  # the same accuracy, from the cache
    assert (workdir / ".nbcache" / "runs.jsonl").exists()  # next to the notebook


def test_editing_a_helper_reruns_only_the_steps_that_depend_on_it(workdir):
    nb = nbformat.read(workdir / NOTEBOOK.name, as_version=4)
    _execute(nb, workdir)
    code = nb.cells[2].source
    assert "rng.normal(size=len(X)) > 0" in code
    nb.cells[2].source = code.replace("rng.normal(size=len(X)) > 0", "rng.normal(size=len(X)) > 0.1")
    history = _stdout(_execute(nb, workdir).cells[-1]).splitlines()
    assert history[0].split()[:2] == ["load", "ran"] and "code changed: noisy_rule()" in history[0]
    # load's X is unchanged, so normalize hits; y changed, so train and evaluate re-run
    assert [line.split()[:2] for line in history[1:]] == [["normalize", "hit"], ["train", "ran"], ["evaluate", "ran"]]


def test_cells_notebook_restart_replays_every_step_cell(tmp_path):
    notebook = NOTEBOOK.parent / "cells.ipynb"
    shutil.copy(notebook, tmp_path / notebook.name)
    nb = nbformat.read(tmp_path / notebook.name, as_version=4)
    first, second = _execute(nb, tmp_path), _execute(nb, tmp_path)
    steps_cell = next(c for c in second.cells if c.source == "%steps")
    table = "".join(o["data"]["text/plain"] for o in steps_cell.outputs if "data" in o)
    rows = [line.split()[:2] for line in table.splitlines()[1:]]
    assert rows == [["raw", "hit"], ["summary", "hit"], ["slope", "hit"]]
    assert _stdout(second.cells[5]) == _stdout(first.cells[5]) and _stdout(first.cells[5]).startswith("slope: 3.0")

    lineage = second.cells[-1].outputs[0]["data"]  # the widget, with a static picture for viewers like this
    assert "application/vnd.jupyter.widget-view+json" in lineage
    assert lineage["text/html"].count('class="node nbcache_step nbcache_hit"') == 3
    from nbconvert import HTMLExporter

    # an HTML export: the picture travels in the saved widget state, which the export's widget embedding
    # draws without a kernel (viewers that cannot show widgets at all use the bundle's text/html above)
    exported, _ = HTMLExporter().from_notebook_node(second)
    assert "application/vnd.jupyter.widget-state+json" in exported
    assert exported.count("nbcache_step nbcache_hit") == 3


def _text(cell: nbformat.NotebookNode) -> str:
    """Everything a cell printed or showed as plain text, in order."""
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[nbformat.NotebookNode, Path]:
    """The digits notebook, executed once in a fresh kernel and folder (about 15 s)."""
    folder = tmp_path_factory.mktemp("digits")
    notebook = NOTEBOOK.parent / "digits_pipeline.ipynb"
    return _execute(nbformat.read(notebook, as_version=4), folder), folder


def _cell(nb: nbformat.NotebookNode, start: str, nth: int = 0) -> nbformat.NotebookNode:
    return [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start)][nth]


def test_digits_notebook_with_step_functions_takes_run_2_s_first_steps_from_the_cache(digits):
    nb, folder = digits
    run_2 = _stdout(_cell(nb, "mark = len(nbcache.runs())\nprint(f\"accuracy {pipeline(epochs=2)")).splitlines()
    assert [line.split(maxsplit=1) for line in run_2[1:5]] == [
        ["importer", "cache hit"], ["normalizer", "cache hit"],
        ["trainer", "argument epochs changed"], ["evaluator", "argument weights changed"]]
    table = [line.split() for line in run_2[6:]]
    assert table[0] == ["step", "run", "1", "(s)", "run", "2", "(s)", "speed-up"]
    assert [row[0] for row in table[1:]] == ["importer", "normalizer", "trainer", "evaluator"]
    assert [row[4:] for row in table[1:3]] == [["(from", "the", "cache)"]] * 2 and table[1][3].endswith("x")
    assert [row[3] for row in table[3:]] == ["re-ran", "re-ran"]
    assert (folder / ".nbcache-digits" / "runs.jsonl").exists()  # its own cache, next to the notebook

    picture = _cell(nb, "nbcache.lineage()").outputs[0]["data"]["text/html"]
    assert picture.count('class="node nbcache_step nbcache_hit"') == 2
    assert picture.count('class="node nbcache_step nbcache_rerun"') == 2


def test_digits_notebook_with_step_cells_replays_the_cached_cells(digits):
    nb, _ = digits
    importer_1, importer_2 = _cell(nb, "%%step importer"), _cell(nb, "%%step importer", 1)
    assert "from the cache" not in _text(importer_1)
    assert _text(importer_2).startswith("nbcache: step 'importer' from the cache")
    assert _text(_cell(nb, "%%step normalizer", 1)).startswith("nbcache: step 'normalizer' from the cache")
    # the cells compute what the functions computed: the same accuracy after one epoch and after two
    functions = [_stdout(_cell(nb, "mark = len(nbcache.runs())\nprint(")), _stdout(_cell(nb, "mark = ", 1))]
    cells = [_stdout(_cell(nb, "%%step evaluator")), _stdout(_cell(nb, "%%step evaluator", 1))]
    assert [c.splitlines()[0] for c in cells] == [f.splitlines()[0] for f in functions]
    assert cells[0] != cells[1]

    steps = _text(_cell(nb, "%steps")).splitlines()[-4:]
    assert [line.split()[:2] for line in steps] == [["importer", "hit"], ["normalizer", "hit"],
                                                    ["trainer", "ran"], ["evaluator", "ran"]]
    assert "input EPOCHS changed" in steps[2]
    picture = _cell(nb, "nbcache.lineage()", 1).outputs[0]["data"]["text/html"]
    assert picture.count("nbcache_hit") == 2 and picture.count("nbcache_rerun") == 2


@pytest.fixture(scope="module")
def dask_sweep(tmp_path_factory) -> nbformat.NotebookNode:
    """The sweep on a LocalCluster with a moto team cache, executed once in a fresh kernel (about 25 s)."""
    folder = tmp_path_factory.mktemp("sweep")
    return _execute(nbformat.read(NOTEBOOK.parent / "sweep_on_dask.ipynb", as_version=4), folder)


def test_dask_sweep_notebook_runs_once_then_from_the_cache_then_from_the_team_cache(dask_sweep):
    sweeps = [_stdout(c).splitlines() for c in dask_sweep.cells if "sweep(client)" in c.source
              and c.cell_type == "code" and not c.source.startswith("@step")]
    assert len(sweeps) == 3 and sweeps[0][0] == sweeps[1][0] == sweeps[2][0]  # the same best alpha, R²
    assert sweeps[0][1].startswith("41 calls on 2 workers: {") and "hit" not in sweeps[0][1]
    assert sweeps[1][1] == "41 calls on 2 workers: {'hit': 41}"
    assert sweeps[2][1] == "41 calls on 2 workers: {'team hit': 41}"
    picture = _cell(dask_sweep, "nbcache.lineage()").outputs[0]["data"]["text/html"]
    assert picture.count('class="node nbcache_step nbcache_team_hit"') == 3


@pytest.mark.parametrize("path", sorted(NOTEBOOK.parent.glob("*.ipynb")), ids=lambda p: p.name)
def test_every_notebook_is_committed_without_outputs_and_runs_without_errors(path, tmp_path, digits, dask_sweep):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"strip the outputs of {path.name}"
    executed = {"digits_pipeline.ipynb": digits[0], "sweep_on_dask.ipynb": dask_sweep}.get(path.name) \
        or _execute(nb, tmp_path)  # (raises on errors)
    assert not [o for c in executed.cells for o in c.get("outputs", []) if o.get("name") == "stderr"]
