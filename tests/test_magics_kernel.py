"""%%step in real Jupyter kernels: restart and run all replays every cell; edits re-run only what changed."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

SETUP = "N = 5"
DATA = """%%step data
import pandas as pd
print("loading data")
df = pd.DataFrame({"a": range(N), "b": [v * 2 for v in range(N)]})
df"""
PLOT = """%%step plot
import matplotlib.pyplot as plt
plt.figure(figsize=(3, 2))
plt.plot(df.a, df.b)
plt.title("b against a")
plt.show()"""
SUMMARY = """%%step summary
import sys
total = int(df.b.sum())
print("total", total)
print("a warning", file=sys.stderr)
total * 2"""
HISTORY = """import nbcache
print([(r.step, r.cached) for r in nbcache.runs() if r.session == nbcache.records.SESSION])"""


def notebook(**replace: str) -> nbformat.NotebookNode:
    sources = {"setup": SETUP, "data": DATA, "plot": PLOT, "summary": SUMMARY, **replace}
    cells = ["%load_ext nbcache", sources["setup"], sources["data"], sources["plot"], sources["summary"], HISTORY]
    return new_notebook(cells=[new_code_cell(c) for c in cells],
                        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    """Run every cell in a new kernel: each call is a kernel restart followed by Run All."""
    nb = copy.deepcopy(nb)
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def history(nb: nbformat.NotebookNode) -> list[tuple[str, bool]]:
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return eval(text)  # the list printed by the HISTORY cell


def run_cells(body: list[str], cached: bool, cwd: Path) -> nbformat.NotebookNode:
    """``body``'s cells run in a new kernel in ``cwd``: cached, after ``%load_ext nbcache``, each under
    ``%%step s<i>`` and followed by the HISTORY cell; or plain, between two ``pass`` cells (the same indexes)."""
    cells = (["%load_ext nbcache"] + [f"%%step s{i}\n{c}" for i, c in enumerate(body)] + [HISTORY] if cached
             else ["pass", *body, "pass"])
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def visible_outputs(cell: nbformat.NotebookNode) -> list[dict]:
    """A cell's outputs without nbcache's own 'from the cache' line and without execution counts."""
    outputs = []
    for output in cell.outputs:
        if output.get("metadata", {}).get("nbcache", {}).get("notice"):
            continue
        output = {k: v for k, v in output.items() if k != "execution_count"}
        outputs.append(output)
    return outputs


def test_restart_run_all_replays_every_cell_without_running_it(tmp_path):
    first = execute(notebook(), tmp_path)
    second = execute(notebook(), tmp_path)
    assert history(first) == [("data", False), ("plot", False), ("summary", False)]
    assert history(second) == [("data", True), ("plot", True), ("summary", True)]
    for index in (2, 3, 4):  # the %%step cells: every output as the first time, in the same order
        assert visible_outputs(second.cells[index]) == visible_outputs(first.cells[index])
    data_types = [o.get("output_type") for o in first.cells[2].outputs]
    assert data_types == ["stream", "execute_result"]
    assert "text/html" in first.cells[2].outputs[1]["data"]  # the DataFrame's table
    assert any("image/png" in o.get("data", {}) for o in second.cells[3].outputs)  # the figure, replayed
    streams = [(o["name"], o["text"]) for o in second.cells[4].outputs if o["output_type"] == "stream"]
    assert streams == [("stdout", "total 20\n"), ("stderr", "a warning\n")]
    notices = [o for o in second.cells[2].outputs if o.get("metadata", {}).get("nbcache")]
    assert "from the cache" in notices[0]["data"]["text/plain"]


@pytest.mark.parametrize("edit, expected", [
    ({"summary": SUMMARY.replace("total * 2", "total * 3")},
     [("data", True), ("plot", True), ("summary", False)]),
    ({"data": DATA.replace("[v * 2 for v in range(N)]", "[2 * v for v in range(N)]")},  # same df
     [("data", False), ("plot", True), ("summary", True)]),
    ({"setup": "N = 6"},
     [("data", False), ("plot", False), ("summary", False)]),
    ({"data": DATA.replace('print("loading data")', '# a comment only\nprint("loading data")  # here too')},
     [("data", True), ("plot", True), ("summary", True)]),
])
def test_an_edit_reruns_only_the_cells_whose_inputs_changed(tmp_path, edit, expected):
    execute(notebook(), tmp_path)
    assert history(execute(notebook(**edit), tmp_path)) == expected


def test_a_failing_step_cell_shows_one_traceback_and_stops_run_all(tmp_path):
    from nbclient.exceptions import CellExecutionError

    nb = notebook(summary="%%step summary\ntotal = int(df.b.sum()) / 0")
    with pytest.raises(CellExecutionError) as info:
        execute(nb, tmp_path)
    assert "ZeroDivisionError" in str(info.value)
    nb = notebook(summary="%%step summary\ntotal = int(df.b.sum()) / 0")
    client = NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = nb.cells[4].outputs
    errors = [o for o in outputs if o["output_type"] == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "ZeroDivisionError"
    assert any("step 'summary' failed; nothing was stored" in o.get("text", "") for o in outputs)


def test_after_a_restart_classes_imports_and_displays_come_back_right(tmp_path):
    cells = [
        "%load_ext nbcache",
        "FACTOR = 2\nclass Model:\n    def __init__(self, k):\n        self.k = k\n"
        "    def score(self):\n        return self.k * FACTOR",
        "%%step model\nm = Model(3)",
        "print(isinstance(m, Model), m.score())",
        "%%step xml\nimport xml.etree.ElementTree\nroot = xml.etree.ElementTree.fromstring('<a/>')",
        "print(xml.etree.ElementTree.tostring(root))",
        "%%step progress\nfrom IPython.display import display, clear_output\nfor i in range(3):\n"
        "    clear_output(wait=True)\n    print('progress', i)\nh = display('start', display_id=True)\n"
        "h.update('end')\nv = 1\nv + 1;",
        HISTORY,
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    first, second = execute(nb, tmp_path), execute(nb, tmp_path)
    assert history(second) == [("model", True), ("xml", True), ("progress", True)]
    for index in range(1, len(cells) - 1):
        assert visible_outputs(second.cells[index]) == visible_outputs(first.cells[index]), cells[index]
    assert second.cells[3].outputs[0]["text"] == "True 6\n"  # the live class, reading the live global
    assert second.cells[5].outputs[0]["text"] == "b'<a />'\n"
    texts = [o.get("text") or o.get("data", {}).get("text/plain") for o in visible_outputs(second.cells[6])]
    assert texts == ["progress 2\n", "'end'"]  # cleared, updated in place, and no `v + 1;` result


def test_a_dataclass_defined_in_a_cell_keeps_the_cells_below_cached_after_a_restart(tmp_path):
    """A dataclass restored from the cache hashes as when it was defined (its __repr__ wrapper, made by
    dataclasses, kept its code): the cell that makes an instance of it stays cached, not 'input Cfg changed'."""
    cells = [
        "%load_ext nbcache",
        "%%step config\nfrom dataclasses import dataclass, field\n@dataclass\nclass Cfg:\n    lr: float = 0.1\n"
        "    layers: list = field(default_factory=lambda: [8, 4])",
        "%%step instance\ncfg = Cfg()\nprint(cfg)",
        "import nbcache\nprint([(r.step, r.cached, r.reason) for r in nbcache.runs() if r.session == nbcache.records.SESSION])",
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    first, second = execute(nb, tmp_path), execute(nb, tmp_path)
    runs = eval("".join(o.get("text", "") for o in second.cells[-1].outputs if o.get("name") == "stdout"))
    assert runs == [("config", True, "cache hit"), ("instance", True, "cache hit")]
    assert visible_outputs(second.cells[2]) == visible_outputs(first.cells[2])


def test_a_figure_made_under_a_backend_the_cell_chose_keeps_the_cells_below_cached_after_a_restart(tmp_path):
    """``matplotlib.use("agg")`` and a figure in one cell: restored, the figure imports pyplot, which took the
    kernel's inline backend before the hit set agg again; the cells below then found the inline backend's
    settings changed and ran again, every restart. The hit sets the backend as the figure loads, first."""
    cells = [
        "%load_ext nbcache",
        "%%step figure\nimport matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots()\nax.plot([1, 2, 3])",
        "%%step reader\nsame = fig",
        "%%step below\nprint(1)",
        "import nbcache\nprint([(r.step, r.cached, r.reason) for r in nbcache.runs() if r.session == nbcache.records.SESSION])",
    ]
    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    execute(nb, tmp_path)
    second = execute(nb, tmp_path)
    runs = eval("".join(o.get("text", "") for o in second.cells[-1].outputs if o.get("name") == "stdout"))
    assert runs == [("figure", True, "cache hit"), ("reader", True, "cache hit"), ("below", True, "cache hit")]


def test_functions_a_cell_defined_keep_their_source_after_a_restart(tmp_path):
    """A function restored from the cache names the cell file of the kernel that ran the cell: without its
    text, a traceback through it showed no line and ``inspect.getsource`` raised. Restored, both read as in
    the same notebook run without nbcache (functions, a class's property, a lambda, a decorated function)."""
    import re

    defs = ("import functools\ndef area(r):\n    return 3.14159 * r * r\nclass Shape:\n"
            "    def __init__(self, r):\n        self.r = r\n    @property\n    def size(self):\n"
            "        return area(self.r)\ntwice = lambda x: 2 * x\n@functools.lru_cache\ndef cube(x):\n"
            "    return x ** 3")
    shown = ("import inspect\nfor f in (area, Shape.size.fget, twice, cube):\n"
             "    print(inspect.getsource(f), end='')")

    def cells(cached: bool) -> list[str]:
        return ["%load_ext nbcache" if cached else "pass", ("%%step defs\n" if cached else "") + defs, shown,
                "Shape(None).size"]

    def run(cached: bool) -> nbformat.NotebookNode:
        nb = new_notebook(cells=[new_code_cell(c) for c in cells(cached)],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                       resources={"metadata": {"path": str(tmp_path / ("cached" if cached else "plain"))}}).execute()
        return nb

    def seen(nb: nbformat.NotebookNode) -> tuple[str, list[str]]:
        printed = "".join(o.get("text", "") for o in nb.cells[2].outputs)
        error = next(o for o in nb.cells[3].outputs if o["output_type"] == "error")
        return printed, [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in error["traceback"]]

    (tmp_path / "plain").mkdir()
    (tmp_path / "cached").mkdir()
    plain, cold, again = run(False), run(True), run(True)
    assert any("from the cache" in o.get("data", {}).get("text/plain", "") for o in again.cells[1].outputs)
    assert seen(plain)[0].startswith("def area(r):\n    return 3.14159 * r * r\n    @property\n")
    assert "Cell In[2], line 3, in area(r)" in "".join(seen(plain)[1])
    assert seen(cold) == seen(plain)
    assert seen(again) == seen(plain)


def test_what_a_cell_logs_through_a_handler_an_earlier_cell_made_is_replayed_on_a_hit(tmp_path):
    """A handler made in a ``%%step`` cell keeps the ``sys.stdout`` of that cell's run: what a later cell logs
    through it was shown but recorded for no cell, so a hit of the later cell showed nothing. And a variable
    keeping that stream held the whole notebook through it: every later cell that changed an input in place
    ran uncached ('variable holder cannot be pickled'). Both as in the same notebook without nbcache."""
    setup = ("import logging, sys\nlogging.basicConfig(stream=sys.stdout, level=logging.INFO,"
             " format='%(levelname)s %(message)s', force=True)\nclass Holder:\n    pass\n"
             "holder = Holder()\nholder.stream = sys.stdout")
    body = [setup, "items = [1]", "logging.warning('end')\nitems.append(2)\nprint(len(items))"]

    def run(cached: bool) -> nbformat.NotebookNode:
        cells = (["%load_ext nbcache"] + [f"%%step s{i}\n{c}" for i, c in enumerate(body)] + [HISTORY]
                 if cached else ["pass", *body, "pass"])
        nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        folder = tmp_path / ("cached" if cached else "plain")
        folder.mkdir(exist_ok=True)
        NotebookClient(nb, kernel_name="python3", timeout=120,
                       resources={"metadata": {"path": str(folder)}}).execute()
        return nb

    def shown(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:  # (the stream, all it showed)
        outputs = visible_outputs(nb.cells[3])
        return [(name, "".join(o["text"] for o in outputs if o.get("name") == name)) for name in ("stdout", "stderr")]

    plain, cold, again = run(False), run(True), run(True)
    assert shown(plain) == [("stdout", "WARNING end\n2\n"), ("stderr", "")]
    assert shown(cold) == shown(plain)
    assert shown(again) == shown(plain)
    assert history(cold) == [("s0", False), ("s1", False), ("s2", False)]
    assert history(again) == [("s0", False), ("s1", True), ("s2", True)]  # (s0 keeps a stream: never stored)


def test_a_global_a_cell_changes_through_a_function_it_calls_comes_back_with_a_hit(tmp_path):
    """``y = f(1)`` where ``f`` appends to a global list: a hit gave ``y`` but not the append, so a cell
    below that reads the list showed it empty after a restart. The list changed through the function is an
    output of the cell, as a variable it changed itself is; as in the same notebook without nbcache."""
    body = ["calls = []\ntotal = {'n': 0}", "def f(x):\n    calls.append(x)\n    total['n'] += x\n    return x * 2",
            "y = f(1) + f(2)", "print(y, len(calls), calls, total)"]

    def run(cached: bool) -> nbformat.NotebookNode:
        return run_cells(body, cached, tmp_path)

    plain, cold, again = run(False), run(True), run(True)
    printed = [[o["text"] for o in visible_outputs(nb.cells[4])] for nb in (plain, cold, again)]
    assert printed == [["6 2 [1, 2] {'n': 3}\n"]] * 3
    assert history(again) == [("s0", True), ("s1", True), ("s2", True), ("s3", True)]


def test_a_variable_holding_a_list_a_cell_showed_is_stored_with_it_when_it_changes(tmp_path):
    """``data`` shown as a cell's value (so ``_`` and ``Out[n]`` hold it too), held by ``box``, then changed
    in place: ``box`` is stored with it, so after a restart ``box['d'] is data`` as without nbcache."""
    body = ["data = [1, 2]", "data", "box = {'d': data}", "data.append(3)", "print(box, data, box['d'] is data)"]

    def run(cached: bool) -> nbformat.NotebookNode:
        cells = ["%load_ext nbcache" if cached else "pass"] + [f"%%step s{i}\n{c}" if cached else c
                                                                 for i, c in enumerate(body)]
        nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
        return nb

    printed = [[o.get("text") for o in visible_outputs(nb.cells[5])] for nb in (run(False), run(True), run(True))]
    assert printed == [["{'d': [1, 2, 3]} [1, 2, 3] True\n"]] * 3


def test_a_global_of_a_users_module_is_not_taken_for_the_notebooks_of_the_same_name(tmp_path):
    """``f`` from helpers.py appends to helpers' own ``calls``: the notebook's ``calls`` is another list,
    which the cell neither reads nor changes. It was taken for what ``f`` changed and stored with the cell,
    which then put its stale value back after an edit (red-team)."""
    (tmp_path / "helpers.py").write_text("calls = []\ndef f(x):\n    calls.append(x)\n    return x * 2\n")
    body = ["from helpers import f", "calls = ['notebook']", "y = f(1)", "print(y, calls)"]

    def run(cached: bool, value: str) -> nbformat.NotebookNode:
        cells = [c.replace("'notebook'", repr(value)) for c in body]
        cells = ["%load_ext nbcache"] + [f"%%step s{i}\n{c}" for i, c in enumerate(cells)] if cached else ["pass", *cells]
        nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(tmp_path)}}).execute()
        return nb

    shown = [[o.get("text") for o in visible_outputs(nb.cells[4])]
             for nb in (run(False, "edited"), run(True, "notebook"), run(True, "edited"))]
    assert shown == [["2 ['edited']\n"], ["2 ['notebook']\n"], ["2 ['edited']\n"]]


def test_a_users_module_a_cell_imports_runs_when_the_cell_imports_it(tmp_path):
    """The key of a cell importing the user's own module imported it, so the module ran before the cell's
    earlier lines: it read the environment before the cell set it (``prod``, cold and cached, where the
    notebook without nbcache says ``test``) and printed first. Its source counts once the cell ran: an edit
    to it runs the cell again, after a restart too (red-team)."""
    module = tmp_path / "settings.py"
    source = "import os\nprint('settings loaded')\nMODE = os.environ.get('APP_MODE', 'prod') + {suffix!r}\n"
    body = ["import os\nos.environ['APP_MODE'] = 'test'\nprint('before')\nimport settings\nprint(settings.MODE)",
            "print(settings.MODE, os.environ['APP_MODE'])"]

    def run(cached: bool) -> nbformat.NotebookNode:
        return run_cells(body, cached, tmp_path)

    def printed(nb: nbformat.NotebookNode) -> list[str]:
        return ["".join(o.get("text", "") for o in visible_outputs(cell)) for cell in nb.cells[1:3]]

    module.write_text(source.format(suffix=""))
    plain, cold, again = run(False), run(True), run(True)
    assert [printed(nb) for nb in (plain, cold, again)] == [["before\nsettings loaded\ntest\n", "test test\n"]] * 3
    assert history(again) == [("s0", True), ("s1", True)]
    module.write_text(source.format(suffix="!"))
    edited_plain, edited = run(False), run(True)
    assert [printed(nb) for nb in (edited_plain, edited)] == [["before\nsettings loaded\ntest!\n", "test! test\n"]] * 2
    assert history(edited)[0] == ("s0", False)


def test_a_cell_that_changes_a_modules_variables_leaves_them_as_the_notebook_would(tmp_path):
    """``config.THRESHOLD = 0.9`` in one cell, read by the next: after a restart the first was a hit that
    set nothing, and the second computed 5.0 where the notebook without nbcache says 9.0; ``np.flag = 1``
    was lost so. A cell that changes a module's variables runs every time, and the cells after it are hits
    that find what the notebook would."""
    (tmp_path / "config.py").write_text("THRESHOLD = 0.5\nSETTINGS = {'mode': 'slow'}\nDEBUG = False\n\n"
                                        "def set_debug(value):\n    global DEBUG\n    DEBUG = value\n")
    body = ["import config\nimport numpy as np",
            "config.THRESHOLD = 0.9\nconfig.SETTINGS['mode'] = 'fast'",
            "np.nbc_flag = 1",
            "config.set_debug(True)",
            "result = config.THRESHOLD * 10\nprint(result, config.SETTINGS, getattr(np, 'nbc_flag', None), config.DEBUG)"]

    def printed(nb: nbformat.NotebookNode) -> str:
        return "".join(o.get("text", "") for o in visible_outputs(nb.cells[5]))

    plain, cold, again = (run_cells(body, cached, tmp_path) for cached in (False, True, True))
    assert [printed(nb) for nb in (plain, cold, again)] == ["9.0 {'mode': 'fast'} 1 True\n"] * 3
    assert history(again) == [("s0", True), ("s1", False), ("s2", False), ("s3", False), ("s4", True)]


def test_errors_in_a_step_cell_name_its_own_number_and_its_value_shows_as_its_out(tmp_path):
    """The body runs as a cell of its own: its tracebacks said ``Cell In[4]`` for cell [3], and a syntax
    error too (red-team). They name the %%step cell, as the same notebook without nbcache does."""
    import re

    body = ["x = 1", "def f():\n    return 1 / 0\nf()", "y = (", "x + 1"]

    def run(cached: bool) -> nbformat.NotebookNode:
        cells = ["%load_ext nbcache" if cached else "pass"] + [f"%%step s{i}\n{c}" if cached else c
                                                                 for i, c in enumerate(body)]
        nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                          metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=True,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
        return nb

    def named(nb: nbformat.NotebookNode) -> list[list[str]]:
        strip = re.compile(r"\x1b\[[0-9;]*m")
        return [sorted({m for o in cell.outputs if o["output_type"] == "error" for line in o["traceback"]
                        for m in re.findall(r"Cell In\[\d+\]", strip.sub("", line))}) for cell in nb.cells]

    def out(nb: nbformat.NotebookNode) -> list:
        return [o.get("execution_count") for o in nb.cells[4].outputs if o["output_type"] == "execute_result"]

    plain, cached = run(False), run(True)
    assert named(plain)[2] == ["Cell In[3]"] and named(plain)[3] == ["Cell In[4]"]  # (what is compared holds)
    assert named(cached) == named(plain)
    assert out(cached) == out(plain) == [5]


def test_a_users_module_a_cell_imports_through_a_function_is_imported_again_by_its_hit(tmp_path):
    """``n = load_count()``, where ``load_count`` imports helpers: its hit did not import helpers, so a cell
    below importing it ran the module there, printing what the notebook without nbcache printed above, and made
    another key (red-team). A hit imports the user's modules its run imported, quietly: the replay shows what
    they printed."""
    (tmp_path / "helpers.py").write_text("print('loading helpers')\nX = 41\ndef count():\n    return X + 1\n")
    body = ["def load_count():\n    import helpers\n    return helpers.count()", "n = load_count()\nprint(n)",
            "import helpers\nprint(helpers.X)"]

    def run(cached: bool) -> nbformat.NotebookNode:
        return run_cells(body, cached, tmp_path)

    def printed(nb: nbformat.NotebookNode) -> list[str]:
        return ["".join(o.get("text", "") for o in visible_outputs(cell)) for cell in nb.cells[1:4]]

    plain, cold, again = run(False), run(True), run(True)
    assert [printed(nb) for nb in (plain, cold, again)] == [["", "loading helpers\n42\n", "41\n"]] * 3
    assert history(again) == [("s0", True), ("s1", True), ("s2", True)]
