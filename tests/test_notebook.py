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
