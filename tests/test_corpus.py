"""A cached notebook shows exactly what the same notebook shows without nbcache.

Each notebook of tests/notebooks/ (written like a public tutorial) is run in real kernels, the way a user
runs it in JupyterLab (which sends each cell's id with its execute_request, as the client below does):

- *plain*: as it is, without nbcache;
- *cold*: the cached variant (a first cell ``%load_ext nbcache``, every code cell prefixed with ``%%step``,
  cell ids kept) in a new kernel on an empty cache directory (``NBCACHE_DIR``);
- *run 2*: the cached variant again, in a new kernel on the same cache and in the same folder (a kernel
  restart and Run All);
- *edited plain* and *edited cached*: after one upstream edit (a constant in an early cell, whose effect the
  notebook's own cells carry downstream, through variables and through the files it writes), plain in
  the plain run's folder, cached on the same cache in the cached runs' folder.

Every cell of every cached run must show what the corresponding plain run showed (cold and run 2 against
plain, edited cached against edited plain), nbcache's own notices aside. In run 2 every cell must come from
the cache (show the notice), except the cells tagged ``nbcache-reruns`` (shell escapes, widgets), which
must run again; in the edited cached run every cell above the edited one must come from the cache.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import difflib
import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).parent / "notebooks"
RERUNS = "nbcache-reruns"  # cell tag: expected to run again in run 2 instead of coming from the cache
CELL_TIMEOUT = 60  # seconds per cell before nbclient gives up (a guard against a hung kernel, not a measure)

# One upstream edit per notebook: (the one code cell's text to find, its replacement).
EDITS = {
    "pandas_merge_groupby.ipynb": ("TIP_RATE = 0.15", "TIP_RATE = 0.2"),  # -> tips.csv -> tips -> ...
    "sklearn_classification.ipynb": ("TEST_SIZE = 0.25", "TEST_SIZE = 0.3"),  # -> split -> models, draws
    "matplotlib_styles.ipynb": ("K = 2.0", "K = 3.0"),  # -> damped() -> arrays, figures, random draws
    "widgets_files_shell.ipynb": ("N_READINGS = 6", "N_READINGS = 8"),  # -> readings.txt/.csv -> ...
    "timeseries_cleaning.ipynb": ("N_DAYS = 21", "N_DAYS = 28"),  # -> raw csv -> df -> daily, weekly, files
    "simulation_statistics.ipynb": ("DRIFT = 0.05", "DRIFT = 0.1"),  # -> walks, bootstrap, queue, files
    "project_package.ipynb": ("'and', 'of'}", "'and', 'of', 'cat'}"),  # its words.py -> textstats -> stats, report
}
CORPUS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


# -- running notebooks as JupyterLab does -------------------------------------------------------------------

class LabClient(NotebookClient):
    """An nbclient that sends each cell's id in the execute_request's metadata (``cellId``), as JupyterLab
    does; ipykernel hands it to IPython's ``run_cell(cell_id=...)``."""

    _cell_id: str | None = None

    async def async_start_new_kernel_client(self):
        kc = await super().async_start_new_kernel_client()

        def execute(code: str, silent: bool = False, store_history: bool = True,
                    user_expressions: dict | None = None, allow_stdin: bool | None = None,
                    stop_on_error: bool = True) -> str:
            content = {"code": code, "silent": silent, "store_history": store_history,
                       "user_expressions": user_expressions or {},
                       "allow_stdin": kc.allow_stdin if allow_stdin is None else allow_stdin,
                       "stop_on_error": stop_on_error}
            msg = kc.session.msg("execute_request", content)
            if self._cell_id is not None:
                msg["metadata"]["cellId"] = self._cell_id
            kc.shell_channel.send(msg)
            return msg["header"]["msg_id"]

        kc.execute = execute
        return kc

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        self._cell_id = cell.get("id")
        try:
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
        finally:
            self._cell_id = None


async def run(nb: nbformat.NotebookNode, cwd: Path, cache: Path | None = None) -> nbformat.NotebookNode:
    """Run every cell of a copy of ``nb`` in a new kernel in folder ``cwd``; with ``cache``, NBCACHE_DIR
    points there. Errors do not stop the run: they are outputs, compared like the others."""
    nb = copy.deepcopy(nb)
    env = {k: v for k, v in os.environ.items() if k != "NBCACHE_DIR"}
    if cache is not None:
        env["NBCACHE_DIR"] = str(cache)
    client = LabClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT, allow_errors=True,
                       resources={"metadata": {"path": str(cwd)}})
    await client.async_execute(env=env)
    return nb


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def edit_cell(nb: nbformat.NotebookNode, name: str) -> int:
    """The index of the cell that the edit changes."""
    old = EDITS[name][0]
    found = [i for i, c in code_cells(nb) if old in c.source]
    assert len(found) == 1, f"{name}: the edit expects {old!r} in exactly one code cell, found {found}"
    return found[0]


def edited(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    old, new = EDITS[name]
    nb = copy.deepcopy(nb)
    cell = nb.cells[edit_cell(nb, name)]
    cell.source = cell.source.replace(old, new)
    return nb


def cached_variant(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``%load_ext nbcache`` first, then every code cell as a ``%%step`` cell, with the same ids."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "%%step\n" + cell.source
    load = nbformat.v4.new_code_cell("%load_ext nbcache", id="nbcache-load-ext")
    nb.cells.insert(0, load)
    return nb


@dataclass
class Runs:
    name: str
    plain: nbformat.NotebookNode
    cold: nbformat.NotebookNode
    run2: nbformat.NotebookNode
    edited_plain: nbformat.NotebookNode
    edited_cached: nbformat.NotebookNode


async def run_all(name: str, tmp: Path) -> Runs:
    nb = read(name)
    plain_dir, cached_dir, cache = tmp / "plain", tmp / "cached", tmp / "cache"
    plain_dir.mkdir()
    cached_dir.mkdir()

    async def plain_chain():
        return await run(nb, plain_dir), await run(edited(nb, name), plain_dir)

    async def cached_chain():
        cells = cached_variant(nb)
        cold = await run(cells, cached_dir, cache)
        run2 = await run(cells, cached_dir, cache)
        return cold, run2, await run(cached_variant(edited(nb, name)), cached_dir, cache)

    # two kernels at a time (one per chain): the chains share nothing, each runs its kernels in turn
    (plain, edited_plain), (cold, run2, edited_cached) = await asyncio.gather(plain_chain(), cached_chain())
    return Runs(name, plain, cold, run2, edited_plain, edited_cached)


@pytest.fixture(scope="module", params=CORPUS)
def runs(request, tmp_path_factory) -> Runs:
    """The five runs of one notebook (plain and cached chains side by side, about 10-20 s)."""
    name = request.param
    return asyncio.run(run_all(name, tmp_path_factory.mktemp(Path(name).stem)))


# -- what a cell shows, normalised ----------------------------------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_KERNEL_FILE = re.compile(r"[^\s\"']*/ipykernel_\d+/\d+\.py|<ipython-input-\d+-[0-9a-f]+>")
_TIMING = re.compile(r"\b\d+(\.\d+)?\s?(ns|µs|us|ms|s)\b(?= per loop| ± |$)|Wall time: .*|CPU times: .*", re.M)


def _text(value: Any) -> str:
    text = "".join(value) if isinstance(value, list) else str(value)
    text = _ADDRESS.sub(" at 0x…", text)
    text = _KERNEL_FILE.sub("<cell file>", text)
    return _TIMING.sub("<time>", text)


def _png(data: str) -> str:
    """A PNG as its size and a hash of its bytes: equal strings mean byte-identical images."""
    raw = base64.b64decode(data)
    width, height = struct.unpack(">II", raw[16:24]) if raw[:8] == b"\x89PNG\r\n\x1a\n" else (0, 0)
    return f"<png {width}x{height}, {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()[:16]}>"


def _widget(model_id: str, state: dict, depth: int = 0) -> Any:
    """A widget as its model's name and state, with the models it refers to (children, the Output widget
    with what interact printed, layouts) inlined in place of their random ids."""
    model = state.get(model_id)
    if model is None or depth > 8:
        return "<widget not in the notebook's widget state>"

    def inline(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("IPY_MODEL_"):
            return _widget(value[len("IPY_MODEL_"):], state, depth + 1)
        if isinstance(value, list):
            return [inline(v) for v in value]
        if isinstance(value, dict):
            if "model_id" in value:
                return _widget(value["model_id"], state, depth + 1)
            return {k: inline(v) for k, v in value.items()}
        return _text(value) if isinstance(value, str) else value

    return {"model": model.get("model_name"), "state": inline(model.get("state", {}))}


def shown(cell: nbformat.NotebookNode, nb: nbformat.NotebookNode) -> list[dict]:
    """What a cell showed, without nbcache's notices and with what varies between any two runs
    normalised: execution counts, memory addresses, kernel file names, widget ids, timings. Consecutive
    stream outputs are merged per stream (stdout and stderr are flushed independently by the kernel, so
    their interleaving is not reproducible; the order of streams against displays is)."""
    widget_state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    widget_state = widget_state.get("state", {})
    result: list[dict] = []
    for output in cell.get("outputs", []):
        if output.get("metadata", {}).get("nbcache", {}).get("notice"):
            continue
        kind = output["output_type"]
        if kind == "stream":
            if result and result[-1]["output_type"] == "streams":
                streams = result[-1]
            else:
                streams = {"output_type": "streams"}
                result.append(streams)
            streams[output["name"]] = streams.get(output["name"], "") + _text(output["text"])
        elif kind in ("display_data", "execute_result"):
            data = {}
            for mime, value in output.get("data", {}).items():
                if mime == "image/png":
                    data[mime] = _png(value)
                elif mime == "application/vnd.jupyter.widget-view+json":
                    data[mime] = _widget(value.get("model_id", ""), widget_state)
                elif isinstance(value, (dict, list)) and not isinstance(value, str) and mime.endswith("json"):
                    data[mime] = json.loads(_text(json.dumps(value, sort_keys=True)))
                else:
                    data[mime] = _text(value)
            result.append({"output_type": kind, "data": data, "metadata": dict(output.get("metadata", {}))})
        elif kind == "error":
            result.append({"output_type": "error", "ename": output["ename"], "evalue": _text(output["evalue"]),
                           "traceback": [_text(re.sub(r"\x1b\[[0-9;]*m", "", line))
                                         for line in output["traceback"]]})
        else:
            result.append({k: v for k, v in output.items() if k != "execution_count"})
    return result


def hit(cell: nbformat.NotebookNode) -> bool:
    """Whether the cell came from the cache: nbcache showed its notice."""
    return any(o.get("metadata", {}).get("nbcache", {}).get("notice") for o in cell.get("outputs", []))


def code_cells(nb: nbformat.NotebookNode) -> list[tuple[int, nbformat.NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def pairs(plain: nbformat.NotebookNode, cached: nbformat.NotebookNode):
    """(index in the plain notebook, plain cell, cached cell), matched by cell id."""
    by_id = {c.id: c for c in cached.cells}
    for index, cell in code_cells(plain):
        yield index, cell, by_id[cell.id]


def first_line(cell: nbformat.NotebookNode) -> str:
    return cell.source.removeprefix("%%step\n").splitlines()[0] if cell.source.strip() else "(empty)"


def _lines(outputs: list[dict]) -> list[str]:
    """Outputs as text lines for a readable diff: one header line per output and per mime type, then
    the value's own lines."""
    lines = []
    for n, output in enumerate(outputs):
        kind = output["output_type"]
        if kind == "streams":
            for name in ("stdout", "stderr"):
                if name in output:
                    lines.append(f"[{n}] {name}:")
                    lines += ["    " + line for line in output[name].splitlines()]
        elif kind in ("display_data", "execute_result"):
            lines.append(f"[{n}] {kind}" + (f" metadata={output['metadata']}" if output["metadata"] else ""))
            for mime, value in output["data"].items():
                lines.append(f"    {mime}:")
                text = value if isinstance(value, str) else json.dumps(value, indent=1, sort_keys=True)
                lines += ["        " + line for line in text.splitlines()]
        elif kind == "error":
            lines.append(f"[{n}] error {output['ename']}: {output['evalue']}")
            lines += ["    " + line for entry in output["traceback"] for line in entry.splitlines()]
        else:
            lines.append(f"[{n}] {json.dumps(output, sort_keys=True)}")
    return lines or ["(no output)"]


def describe(name: str, run: str, reference: str, index: int, cell: nbformat.NotebookNode,
             expected: list[dict], got: list[dict], how: str) -> str:
    diff = difflib.unified_diff(_lines(expected), _lines(got), f"{reference} run", f"{run} run", lineterm="", n=1)
    lines = [line if len(line) < 300 else line[:300] + "…" for line in diff]
    if len(lines) > 40:
        lines = lines[:40] + [f"... ({len(lines) - 40} more diff lines)"]
    return (f"{name} cell {index} [{cell.id}] `{first_line(cell)}` ({run} vs {reference}; in the {run} run it "
            f"{how}):\n  " + "\n  ".join(lines))


def compare(runs: Runs, run: str, reference: str) -> None:
    plain, cached = getattr(runs, reference.replace(" ", "_")), getattr(runs, run.replace(" ", "_"))
    problems = []
    load = cached.cells[0]
    if shown(load, cached):
        problems.append(f"{runs.name}: `%load_ext nbcache` showed, in the {run} run:\n  "
                        + "\n  ".join(_lines(shown(load, cached))[:30]))
    for index, expected_cell, cell in pairs(plain, cached):
        expected, got = shown(expected_cell, plain), shown(cell, cached)
        if expected != got:
            how = "came from the cache" if hit(cell) else "ran"
            problems.append(describe(runs.name, run, reference, index, expected_cell, expected, got, how))
    if problems:
        pytest.fail(f"{len(problems)} cell(s) differ:\n\n" + "\n\n".join(problems), pytrace=False)


# -- the tests ------------------------------------------------------------------------------------------------

def test_the_client_sends_each_cell_id_to_the_kernel(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("get_ipython().events.register('pre_run_cell', lambda info: print("
                                  "'cell id:', info.cell_id))", id="register-callback"),
        nbformat.v4.new_code_cell("1 + 1", id="my-cell-id"),
    ])
    done = asyncio.run(run(nb, tmp_path))
    assert [o.get("text") for o in done.cells[1].outputs if o["output_type"] == "stream"] == ["cell id: my-cell-id\n"]


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_notebooks_are_committed_without_outputs_and_every_cell_has_an_id(name):
    nb = read(name)
    assert (nb.nbformat, nb.nbformat_minor) >= (4, 5)
    nbformat.validate(nb)
    ids = [c.get("id") for c in nb.cells]
    assert all(ids) and len(set(ids)) == len(ids), f"{name}: every cell needs a unique id"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"strip the outputs of {name}"
    assert name in EDITS, f"{name}: say in EDITS which upstream edit the test makes"
    edit_cell(nb, name)


def test_the_plain_runs_show_no_error_and_no_stderr(runs):
    """The corpus itself is sound: without nbcache, nothing fails or warns; and the edit changes what
    the notebook shows downstream (or the edited runs would prove nothing)."""
    for label, nb in (("plain", runs.plain), ("edited plain", runs.edited_plain)):
        for index, cell in code_cells(nb):
            bad = [o for o in cell.outputs if o["output_type"] == "error" or o.get("name") == "stderr"]
            assert not bad, f"{runs.name} cell {index} `{first_line(cell)}` ({label} run): {bad}"
    changed = [i for i, a, b in pairs(runs.plain, runs.edited_plain)
               if shown(a, runs.plain) != shown(b, runs.edited_plain)]
    edit_index = edit_cell(runs.plain, runs.name)
    assert len([i for i in changed if i > edit_index]) >= 2, f"{runs.name}: the edit changes too little"


def test_the_cold_run_shows_what_the_plain_run_shows(runs):
    compare(runs, "cold", "plain")


def test_run_2_shows_what_the_plain_run_shows(runs):
    compare(runs, "run2", "plain")


def test_run_2_takes_every_cell_from_the_cache_except_those_that_must_rerun(runs):
    wrong = []
    for index, cell, cached in pairs(runs.plain, runs.run2):
        reruns = RERUNS in cell.metadata.get("tags", [])
        if hit(cached) == reruns:
            expected = "run again (tagged nbcache-reruns)" if reruns else "come from the cache"
            got = "came from the cache" if hit(cached) else "ran"
            wrong.append(f"{runs.name} cell {index} [{cell.id}] `{first_line(cell)}`: should {expected}, {got}")
    if wrong:
        pytest.fail("run 2:\n" + "\n".join(wrong), pytrace=False)


def test_the_edited_cached_run_shows_what_the_edited_plain_run_shows(runs):
    compare(runs, "edited cached", "edited plain")


def test_the_edited_run_takes_the_cells_above_the_edit_from_the_cache(runs):
    """Run All after an edit: nothing above the edited cell changed, so none of it runs again (a cache
    that re-ran everything would show the right outputs too)."""
    edit_index = edit_cell(runs.plain, runs.name)
    wrong = [f"{runs.name} cell {index} [{cell.id}] `{first_line(cell)}` ran in the edited cached run"
             for index, cell, cached in pairs(runs.plain, runs.edited_cached)
             if index < edit_index and RERUNS not in cell.metadata.get("tags", []) and not hit(cached)]
    if wrong:
        pytest.fail("above the edit:\n" + "\n".join(wrong), pytrace=False)
