"""notebooks/cells.ipynb in a real JupyterLab: restart and Run All shows each %%step cell from the cache,
and the lineage widget shows every step in the cached colour.

Needs Debian's chromium, playwright and jupyterlab; skips, saying so loudly, when one is not installed
(on CI, where .ci/run installs them, that is a failure instead). Screenshots of both runs, and of the
page when the test fails, go to $NBCACHE_ARTIFACTS (default: tests/artifacts/, git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path


from nbcache.graph import State

from .conftest import require
from .lab import JupyterLab

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("raw", "summary", "slope")
NOTICE = "from the cache"


def require_browser() -> None:
    require(JupyterLab.missing())


def lineage_states(lab: JupyterLab, cell: str = "%lineage") -> dict[str, int]:
    """How many step nodes of each state the lineage widget's SVG shows (the live widget, not a copy)."""
    widget = lab.cell(cell).locator(".jupyter-widgets svg g.nbcache_step")
    classes = widget.evaluate_all("nodes => nodes.map(n => n.getAttribute('class'))")
    states: dict[str, int] = {}
    for names in classes:
        state = next(c for c in names.split() if c.startswith("nbcache_") and c != "nbcache_step")[8:]
        states[state] = states.get(state, 0) + 1
    return states


def write_notebook(folder: Path, name: str, cells: list[str]) -> Path:
    """A notebook of these code cells in a new folder; the folder."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    folder.mkdir()
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nbformat.write(nb, folder / name)
    return folder


def outputs(lab: JupyterLab, step: str) -> list[str]:
    """The text of each output of the `%%step <step>` cell, in order."""
    return lab.cell(f"%%step {step}\n").locator(".jp-OutputArea-output").all_inner_texts()


def test_restart_and_run_all_shows_steps_from_the_cache(tmp_path: Path) -> None:
    require_browser()
    artifacts = Path(os.environ.get("NBCACHE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    failure = artifacts / "cells-failure.png"
    failure.unlink(missing_ok=True)
    with JupyterLab(ROOT / "notebooks", cache_dir=tmp_path / "cache", failure_screenshot=failure) as lab:
        lab.open("cells.ipynb")
        assert lab.run_all(), f"the first Run All stopped at a failing cell: {lab.execution_counts()}"
        lab.screenshot(artifacts / "cells-run1.png")
        first = {step: outputs(lab, step) for step in STEPS}
        for step in STEPS:  # an empty cache: every step ran, none says it came from the cache
            assert first[step] and not any(NOTICE in text for text in first[step]), (step, first[step])
        assert lineage_states(lab) == {"first": len(STEPS)}

        assert lab.restart_and_run_all(), f"the second Run All stopped at a failing cell: {lab.execution_counts()}"
        lab.screenshot(artifacts / "cells-run2.png")
        counts = lab.execution_counts()  # a new kernel counts from 1 again: the restart happened
        assert counts == [f"[{n}]:" for n in range(1, len(counts) + 1)], counts
        for step in STEPS:
            cell = lab.cell(f"%%step {step}\n")
            notice = cell.locator('.jp-OutputArea-output[data-mime-type="text/html"]', has_text=NOTICE)
            assert notice.count() == 1, (step, outputs(lab, step))  # the notice, rendered as HTML
            assert f"step {step} from the cache" in notice.inner_text()
            replayed = [text for text in outputs(lab, step) if NOTICE not in text]
            assert replayed == first[step], step  # the same outputs as the first run, in the same order
        for step, column in (("raw", "group"), ("summary", "mean_x")):  # the DataFrames, as HTML tables
            table = lab.cell(f"%%step {step}\n").locator(".jp-OutputArea-output table")
            assert table.count() == 1 and column in table.inner_text(), step
        assert any(text.strip() == "50,000 rows" for text in outputs(lab, "raw")), outputs(lab, "raw")
        steps_table = "\n".join(lab.cell("%steps").locator(".jp-OutputArea-output").all_inner_texts())
        assert steps_table.count("cache hit") == len(STEPS), steps_table
        # the live lineage widget: every step in the cached colour, a picker, the chosen step's details
        assert lineage_states(lab) == {"hit": len(STEPS)}
        widget = lab.cell("%lineage")
        fills = widget.locator("g.nbcache_hit path, g.nbcache_hit polygon").evaluate_all(
            "shapes => shapes.map(s => s.getAttribute('fill'))")
        assert set(fills) == {State.HIT.fill}, fills
        assert widget.locator(".widget-dropdown select").count() == 1
        assert "served from cache" in widget.locator(".widget-html").last.inner_text()
        widget.screenshot(path=str(artifacts / "lineage-run2.png"))
        assert not lab.console_errors, lab.console_errors


LIVE = [  # the widget is shown before the steps run: it can only show them by updating itself
    "%load_ext nbcache",
    "%lineage",
    "%%step numbers\nimport time\nnumbers = list(range(10))\ntime.sleep(0.6)",
    "%%step doubled\ndoubled = [2 * v for v in numbers]\ntime.sleep(0.6)",
    "%%step total\ntotal = sum(doubled)",
]


def test_lineage_widget_updates_itself_as_steps_run(tmp_path: Path) -> None:
    require_browser()
    folder = write_notebook(tmp_path / "notebooks", "live.ipynb", LIVE)
    artifacts = Path(os.environ.get("NBCACHE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    with JupyterLab(folder, cache_dir=tmp_path / "cache", failure_screenshot=artifacts / "live-failure.png") as lab:
        lab.open("live.ipynb")
        assert lab.run_all()
        lab.page.wait_for_function(  # the cell finished before its widget's last redraw may have arrived
            "() => document.querySelectorAll('.jupyter-widgets svg g.nbcache_first').length === 3")
        assert lineage_states(lab, "%lineage") == {"first": 3}
        assert lab.restart_and_run_all()
        lab.page.wait_for_function(
            "() => document.querySelectorAll('.jupyter-widgets svg g.nbcache_hit').length === 3")
        assert lineage_states(lab, "%lineage") == {"hit": 3}
        lab.cell("%lineage").screenshot(path=str(artifacts / "live-lineage.png"))


TUTORIAL = [  # a tutorial written as most are, every cell under %%step, names left to nbcache
    "%load_ext nbcache",
    "%%step\n%matplotlib inline\nimport numpy as np\nimport matplotlib.pyplot as plt\nplt.rc('font', size=15)\n"
    "np.random.seed(0)\nX = np.arange(12)",
    "%%step\nlabels = X % 3\nlabels",
    "%%step\nlabels = (X > 5).astype(int)\nlabels",
    "%%step\nnoise = np.random.rand(3)\nfig, ax = plt.subplots(figsize=(3, 2))\nax.plot(X, X ** 2)\nnoise",
    "%%step\nfrom ipywidgets import interact\n@interact(k=(1, 5))\ndef power(k=2):\n    print(X[:4] ** k)",
    "%%step\n!echo listing from the shell",
    "%steps",
]


def test_a_tutorial_notebook_comes_back_as_it_ran_in_jupyterlab(tmp_path: Path) -> None:
    """JupyterLab sends each cell's id: two cells that assign `labels` from `X` are two steps; settings,
    seeds and figures come back; the widget cell and the shell cell run again, live."""
    require_browser()
    folder = write_notebook(tmp_path / "notebooks", "tutorial.ipynb", TUTORIAL)
    artifacts = Path(os.environ.get("NBCACHE_ARTIFACTS") or ROOT / "tests" / "artifacts")
    with JupyterLab(folder, cache_dir=tmp_path / "cache",
                    failure_screenshot=artifacts / "tutorial-failure.png") as lab:
        lab.open("tutorial.ipynb")
        assert lab.run_all()
        first = {source: lab.cell(source).locator(".jp-OutputArea-output").all_inner_texts()
                 for source in TUTORIAL[2:5]}
        assert lab.restart_and_run_all()
        lab.screenshot(artifacts / "tutorial-run2.png")
        for source in TUTORIAL[2:5]:  # from the cache, showing what they showed
            texts = lab.cell(source).locator(".jp-OutputArea-output").all_inner_texts()
            assert NOTICE in texts[0], (source, texts)
            assert texts[1:] == first[source], source
        assert "step labels ← X from the cache" in lab.cell(TUTORIAL[2]).inner_text()  # (the name in bold)
        assert "step labels ← X #2 from the cache" in lab.cell(TUTORIAL[3]).inner_text()
        figure = lab.cell(TUTORIAL[4]).locator(".jp-OutputArea-output img")
        assert figure.count() == 1
        widget = lab.cell(TUTORIAL[5])
        assert NOTICE not in widget.inner_text()  # ran again: a live slider, not a picture of one
        assert widget.locator(".widget-slider").count() == 1
        assert NOTICE not in lab.cell(TUTORIAL[6]).inner_text()
        assert "listing from the shell" in lab.cell(TUTORIAL[6]).inner_text()
        steps = lab.cell("%steps").inner_text()
        assert "runs every time: it runs a shell command (!echo)" in steps
        assert "runs every time: it shows a widget" in steps and "not cached" not in steps
        assert not lab.console_errors, lab.console_errors
