"""What a step does besides binding variables: process-wide state set again on a hit, files, folders, random
state and eval'd names checked on lookup, shell escapes and namespace-wide reads that make a step run every
time, the recorded display of a result, and cells told apart by their Jupyter ids.

Each test runs a step, changes the world the way a new kernel or an edit would, and runs it again.
"""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import random
import subprocess
import sys
import warnings

import diskcache
import numpy as np
import pytest

import nbcache
import nbcache.cache
from nbcache import ambient

from .conftest import every_cell_a_hit_after_a_restart, run_cell, run_python


@pytest.fixture
def ip(shell, cache_dir, tmp_path, monkeypatch):
    shell.reset()
    shell.run_line_magic("config", "NBCache.quiet = True")
    monkeypatch.chdir(tmp_path)
    shell.user_ns["LOG"] = str(tmp_path / "ran.log")
    return shell


run = run_cell


def last():
    return nbcache.runs()[-1]


def times_ran(ip) -> int:
    with open(ip.user_ns["LOG"]) as f:
        return len(f.read())


# -- process-wide state -----------------------------------------------------------------------------------

STATE_CASES = {
    # a cell that sets state; what later code sees
    "numpy seed": ("import numpy as np\nnp.random.seed(42)", "np.random.rand()"),
    "random seed": ("import random\nrandom.seed(3)", "random.random()"),
    "numpy print options": ("import numpy as np\nnp.set_printoptions(precision=2)", "repr(np.array([1/3]))"),
    "numpy error handling": ("import numpy as np\nnp.seterr(divide='ignore', invalid='ignore')", "np.geterr()"),
    "matplotlib rc": ("import matplotlib\nmatplotlib.use('agg')\nimport matplotlib.pyplot as plt\n"
                      "plt.rc('font', size=17)\nplt.style.use('ggplot')",
                      "(plt.rcParams['font.size'], plt.rcParams['axes.facecolor'])"),
    "pandas options": ("import pandas as pd\npd.set_option('display.max_rows', 7)", "pd.get_option('display.max_rows')"),
    "warnings filters": ("import warnings\nwarnings.filterwarnings('ignore', message='noisy')",
                         "any(f[1] is not None and f[1].pattern == 'noisy' for f in warnings.filters)"),
    "environment": ("import os\nos.environ['NBCACHE_TEST_FLAG'] = 'on'", "os.environ.get('NBCACHE_TEST_FLAG')"),
    "sys.path": ("import sys\nsys.path.append('/nbcache-test-path')", "'/nbcache-test-path' in sys.path"),
    "scikit-learn config": ("import sklearn\nsklearn.set_config(display='text')", "sklearn.get_config()['display']"),
    "recursion limit": ("import sys\nsys.setrecursionlimit(2345)", "sys.getrecursionlimit()"),
    "IPython expressions shown": ("get_ipython().ast_node_interactivity = 'all'",
                                  "get_ipython().ast_node_interactivity"),
}


def state_now() -> dict:
    """Every kind of process-wide state nbcache keeps, as it is now."""
    import matplotlib.pyplot  # noqa: F401  (the kinds of the libraries the cases use are all there)
    import pandas  # noqa: F401
    import sklearn  # noqa: F401

    return ambient.snapshot().values


def back_to(state: dict) -> None:
    """The process as it was: what a new kernel starts from, for the state these tests change."""
    for kind in ambient.KINDS:
        if kind.name in state:
            kind.set(state[kind.name])


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_state_a_cell_set_is_set_again_on_a_hit(ip, case):
    setup, probe = STATE_CASES[case]
    cell = f"%%step\n{setup}\nopen(LOG, 'a').write('x')"
    start = state_now()
    try:
        run(ip, cell)
        expected = ip.run_cell(probe).result
        back_to(start)  # a new kernel
        assert ip.run_cell(probe).result != expected  # the test changes what it means to
        run(ip, cell)
        assert last().cached and times_ran(ip) == 1
        assert ip.run_cell(probe).result == expected
    finally:
        back_to(start)  # leave the process as other tests expect it


@pytest.mark.parametrize("cell, what", [
    ("class Money(float):\n    pass\nget_ipython().display_formatter.formatters['text/plain'].for_type(Money,"
     " lambda v, p, cycle: p.text(f'${v:.2f}'))", "changes how IPython shows values (a display formatter)"),
    ("get_ipython().display_formatter.formatters['text/html'].for_type_by_name('decimal', 'Decimal', str)",
     "changes how IPython shows values (a display formatter)"),
    ("from IPython.core.magic import register_line_magic\n@register_line_magic\ndef shout(line):\n"
     "    return line.upper()", "defines magics"),
])
def test_a_cell_changing_how_ipython_shows_values_or_its_magics_runs_every_time(ip, cell, what):
    """``sympy.init_printing()``, ``set_matplotlib_formats("svg")``, ``@register_line_magic``: a hit would
    not do it again, and the cells below that run would show their values otherwise, or fail to find the
    magic, than without nbcache (red-team)."""
    formatters = ip.display_formatter.formatters
    before = {mime: (dict(f.type_printers), dict(f.deferred_printers)) for mime, f in formatters.items()}
    try:
        run(ip, "%%step\n" + cell)
        run(ip, "%%step\n" + cell)
        assert not last().cached
        assert last().reason.startswith(f"runs every time: it {what}, which a hit would not do again")
    finally:
        for mime, (types_, deferred) in before.items():
            formatters[mime].type_printers.clear()
            formatters[mime].type_printers.update(types_)
            formatters[mime].deferred_printers.clear()
            formatters[mime].deferred_printers.update(deferred)
        ip.magics_manager.magics["line"].pop("shout", None)


def test_what_an_import_or_a_line_magic_registers_in_ipython_is_no_change_of_the_cells(ip):
    """pyplot imported under the inline backend registers its figure formats as it is imported, and
    ``%matplotlib inline`` and ``%load_ext`` as they run: a hit imports and runs them again."""
    cell = "%%step\n%matplotlib inline\nimport matplotlib.pyplot as plt\n%load_ext autoreload\nx = 1"
    run(ip, cell)
    run(ip, cell)
    assert last().cached


def test_working_directory_changed_by_a_cell_is_changed_again(ip, tmp_path):
    (tmp_path / "sub").mkdir()
    cell = "%%step\nimport os\nos.chdir('sub')"
    run(ip, cell)
    os.chdir(tmp_path)
    run(ip, cell)
    assert last().cached and os.getcwd() == str(tmp_path / "sub")


def test_line_magics_with_lasting_effect_run_again_quietly_on_a_hit(ip, capsys):
    formatter = ip.display_formatter.formatters["text/plain"]
    cell = "%%step\n%precision 3\nx = 1"
    run(ip, cell)
    three = formatter.float_precision
    run(ip, "%precision")  # back to the default, as in a new kernel
    assert formatter.float_precision != three
    capsys.readouterr()
    run(ip, cell)
    assert last().cached and formatter.float_precision == three
    assert capsys.readouterr().out == ""  # run again without printing anything the replay did not


def test_a_function_step_that_seeds_leaves_the_generator_as_its_run_did(cache_dir):
    @nbcache.step
    def sample(n):
        np.random.seed(0)
        return np.random.rand(n)

    sample(2)
    after_run = np.random.rand()
    np.random.seed(123)
    sample(2)
    assert nbcache.runs()[-1].cached and np.random.rand() == after_run


# -- random state as an input ------------------------------------------------------------------------------

def test_drawing_without_seeding_depends_on_the_state_the_step_started_from(ip):
    cell = "%%step\nimport numpy as np\ndraw = np.random.rand()"
    np.random.seed(1)
    run(ip, cell)
    first = ip.user_ns["draw"]
    np.random.seed(1)
    run(ip, cell)
    assert last().cached and ip.user_ns["draw"] == first
    assert np.random.rand() == pytest.approx(np.random.RandomState(1).rand(2)[1])  # state after the draw
    np.random.seed(2)
    run(ip, cell)
    assert not last().cached
    assert last().reason.startswith("the numpy.random global random state differs")
    assert ip.user_ns["draw"] == np.random.RandomState(2).rand()


def test_two_cells_with_equal_outputs_that_seed_differently_each_restore_their_own_state(ip):
    """Their payloads differ only in the generator's key array (an out-of-band buffer): each is stored under a
    name of its own, and a hit of each sets the state its own run left."""
    cells = {seed: f"%%step\nimport numpy as np\nnp.random.seed({seed})\nx = 5" for seed in (1, 2)}
    for seed in (1, 2):
        run(ip, cells[seed])
    for seed in (1, 2, 1):
        run(ip, cells[seed])
        assert last().cached and np.random.rand() == np.random.RandomState(seed).rand()


def test_two_cells_binding_values_with_no_hash_each_restore_their_own(ip):
    """A dict view pickles but has no hash (its address is ""): the payload is named by all its bytes, so two
    cells binding views over different arrays (big ones, beyond the small buffers a name covers) are two."""
    run(ip, "import numpy as np")
    cells = {scale: f"%%step\nv = {{'w': np.arange(20_000.0) * {scale}}}.values()" for scale in (1, 10)}
    for scale in (1, 10, 1, 10):
        run(ip, cells[scale])
        assert np.array_equal(list(ip.user_ns["v"])[0], np.arange(20_000.0) * scale)
    assert last().cached


def test_seeding_before_drawing_does_not_depend_on_the_starting_state(ip):
    cell = "%%step\nimport random\nrandom.seed(5)\npick = random.random()"
    run(ip, cell)
    random.seed(99)
    run(ip, cell)
    assert last().cached


def test_a_function_step_drawing_from_the_global_generator_depends_on_its_state(cache_dir):
    @nbcache.step
    def noisy():
        return random.random()

    random.seed(4)
    a = noisy()
    random.seed(4)
    assert noisy() == a and nbcache.runs()[-1].cached
    random.seed(5)
    b = noisy()
    assert not nbcache.runs()[-1].cached and b == random.Random(5).random()


# -- files and folders -------------------------------------------------------------------------------------

def test_a_file_read_is_checked_on_lookup(ip, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a\n1\n2\n")
    cell = "%%step\nimport pandas as pd\ndf = pd.read_csv('data.csv')\ntotal = int(df.a.sum())"
    run(ip, cell)
    run(ip, cell)
    assert last().cached
    os.utime(data, ns=(1, 1))  # touched, same content: still a hit
    run(ip, cell)
    assert last().cached
    data.write_text("a\n1\n5\n")
    run(ip, cell)
    assert (last().cached, last().reason, ip.user_ns["total"]) == (False, "file data.csv changed", 6)
    data.unlink()
    assert not ip.run_cell(cell).success  # the cell runs, and fails as it would without the cache
    assert (last().status, last().reason) == ("failed", "file data.csv was removed")


@pytest.mark.parametrize("cell, deleted, reason", [
    ("import os\nos.remove('old.csv')", "old.csv", "old.csv, which it deletes, is there"),
    ("from pathlib import Path\nPath('old.csv').unlink(missing_ok=True)", "old.csv", "old.csv, which it deletes, is there"),
    ("import os\nos.rmdir('empty')", "empty", "empty, which it deletes, is there"),
    ("import shutil\nshutil.rmtree('results', ignore_errors=True)", "results", "results, which it deletes, is there"),
    ("import shutil, os\nshutil.rmtree('results', ignore_errors=True)\nos.makedirs('results')",
     "results/part2.csv", "folder results, which it deletes and makes again, holds other files"),
])
def test_a_cell_deleting_files_is_a_hit_only_while_they_are_gone(ip, tmp_path, cell, deleted, reason):
    """A hit would not delete them: after a restart, a cell below listing the folder found them still there
    (red-team). What the run deleted is checked on lookup as it left it: gone, or the folder it made again as
    it was; the cell runs again, and says why, when they are there again, as the run would delete them."""
    def files() -> None:  # (what an earlier cell makes, before this one deletes it)
        (tmp_path / "old.csv").write_text("a\n1\n")
        (tmp_path / "results").mkdir(exist_ok=True)
        (tmp_path / "results" / "part2.csv").write_text("a\n2\n")
        (tmp_path / "empty").mkdir(exist_ok=True)

    files()
    run(ip, "%%step\n" + cell)
    assert not (tmp_path / deleted).exists() and not last().cached
    run(ip, "%%step\n" + cell)
    assert last().cached  # (nothing there to delete: what the run would do, the hit leaves as it is)
    files()
    run(ip, "%%step\n" + cell)
    assert (last().cached, last().reason) == (False, reason)
    assert not (tmp_path / deleted).exists()


def test_deleting_what_the_run_made_itself_or_what_is_not_there_or_is_made_again_is_no_deletion(ip, tmp_path):
    (tmp_path / "old.csv").write_text("a\n1\n")
    cell = ("%%step\nimport os, shutil, tempfile\nfrom pathlib import Path\n"
            "with open('scratch.txt', 'w') as f:\n    f.write('x')\nos.remove('scratch.txt')\n"
            "with tempfile.TemporaryDirectory() as d:\n    open(os.path.join(d, 'a'), 'w').close()\n"
            "with tempfile.NamedTemporaryFile() as f:\n    pass\nos.makedirs('tmpdir')\nos.rmdir('tmpdir')\n"
            "Path('none.csv').unlink(missing_ok=True)\nshutil.rmtree('no-such-folder', ignore_errors=True)\n"
            "Path('old.csv').unlink()\nPath('old.csv').write_text('a\\n2\\n')  # (replaced: no file is gone)\ny = 1")
    run(ip, cell)
    run(ip, cell)
    assert last().cached


def test_a_file_another_cell_wrote_and_this_one_reads(ip, tmp_path):
    writer = "%%step\nwith open('out.txt', 'w') as f:\n    f.write(TEXT)"
    reader = "%%step\ntext = open('out.txt').read()"
    ip.user_ns["TEXT"] = "one"
    run(ip, writer)
    run(ip, reader)
    (tmp_path / "out.txt").unlink()  # the file is gone (a clean checkout): the writer must write it again
    run(ip, writer)
    assert not last().cached and last().reason == "out.txt, a file it wrote, was removed"
    run(ip, reader)
    assert last().cached and ip.user_ns["text"] == "one"
    ip.user_ns["TEXT"] = "two"
    run(ip, writer)
    run(ip, reader)
    assert (last().reason, ip.user_ns["text"]) == ("file out.txt changed", "two")


def test_a_cell_that_reads_a_file_then_writes_it_depends_on_what_it_read(ip, tmp_path):
    """A counter file read and written back, and rows appended then read back: without nbcache every run
    reads what the last one wrote. A hit would give the first run's ``n`` and leave the file as it was."""
    (tmp_path / "count.txt").write_text("0")
    counter = "%%step\nn = int(open('count.txt').read())\nopen('count.txt', 'w').write(str(n + 1))"
    appender = "%%step\nwith open('rows.csv', 'a') as f:\n    f.write('r\\n')\nrows = len(open('rows.csv').read().split())"
    logger = "%%step\nwith open('log.txt', 'a') as f:\n    f.write('ran\\n')\ndone = True"
    for expected in (0, 1, 2):
        run(ip, counter)
        assert ip.user_ns["n"] == expected and (tmp_path / "count.txt").read_text() == str(expected + 1)
    assert last().reason == "file count.txt changed"
    for expected in (1, 2):
        run(ip, appender)
        assert ip.user_ns["rows"] == expected and not last().cached
    run(ip, logger)
    run(ip, logger)  # (appended to, never read: a file it wrote, there as it left it)
    assert last().cached and (tmp_path / "log.txt").read_text() == "ran\n"


def test_a_cell_that_puts_a_folder_on_sys_path_and_imports_from_it_is_a_hit_after_a_restart(ip, tmp_path):
    """``sys.path.append("src")`` then ``from mylib import double``: the stored ``double`` is found in mylib,
    which imports only once ``src`` is on the path again. The hit puts it there before loading the
    variables; it was put back after, so every restart found the result "damaged" and ran the cell again."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "mylib.py").write_text("def double(x):\n    return 2 * x\n")
    cell = "%%step\nimport sys\nsys.path.append('src')\nfrom mylib import double\ny = double(5)"
    path = list(sys.path)
    sys.path_importer_cache.pop("src", None)  # (what a test before found in its own src, by that name)
    try:
        run(ip, cell)
        sys.path[:] = path  # (a new kernel: src is not on the path, mylib not imported)
        sys.modules.pop("mylib")
        del ip.user_ns["double"], ip.user_ns["y"]
        run(ip, cell)  # (the "damaged" warning it gave would fail the test: nbcache's warnings are errors here)
        assert last().cached
        assert ip.user_ns["double"](2) == 4 and ip.user_ns["y"] == 10 and sys.path[-1] == "src"
        # mylib could not be found when the key was made: its code is in no key, its file is read by the cell
        (tmp_path / "src" / "mylib.py").write_text("def double(x):\n    return 3 * x  # (edited)\n")  # (not the
        # same size: byte-code written within the same second would be taken for this source)
        sys.path[:] = path
        sys.modules.pop("mylib")
        run(ip, cell)
        assert (last().cached, last().reason, ip.user_ns["y"]) == (False, "file src/mylib.py changed", 15)
    finally:
        sys.path[:] = path
        sys.modules.pop("mylib", None)


def test_a_users_module_imported_by_one_a_step_imports_counts_as_a_file_it_read(cache_dir, tmp_path, monkeypatch):
    """The key names a module of the user's that is not imported yet by its source file, and those it imports,
    without importing it (which would run it before the body's earlier lines): an edit to either runs the step
    again, and the step is a hit again after a restart."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outer_fx.py").write_text("import inner_fx\ndef scale(x):\n    return x * inner_fx.FACTOR\n")
    inner = tmp_path / "inner_fx.py"
    inner.write_text("FACTOR = 2\n")

    @nbcache.step
    def scaled(x):
        import outer_fx
        return outer_fx.scale(x)

    def restart() -> None:  # (the modules as a new kernel finds them: not imported)
        for name in ("outer_fx", "inner_fx"):
            sys.modules.pop(name, None)
        importlib.invalidate_caches()

    try:
        restart()
        assert scaled(5) == 10 and not last().cached
        assert "outer_fx" in sys.modules  # (the body imported it; the key did not, as asserted below)
        restart()
        assert scaled(5) == 10 and last().cached and "outer_fx" not in sys.modules
        inner.write_text("FACTOR = 3  # edited\n")  # (another size: byte-code of the same second is not taken)
        restart()
        assert (scaled(5), last().cached, last().reason) == (15, False, "code changed")  # (its source, in the key)
    finally:
        restart()


@pytest.mark.parametrize("layout", ["module", "package"])
def test_what_a_module_not_imported_yet_uses_of_modules_imported_already_counts(cache_dir, tmp_path, monkeypatch,
                                                                               layout):
    """``import helpers`` (not imported yet: its source counts) where helpers does ``from utils import g`` and
    an earlier cell imported utils: an edit to utils, imported again by that cell, ran no step again, and the
    cell printed the old result (red-team). What it uses of modules imported already counts as they are."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    if layout == "module":
        files = {"utils_ix.py": "K = 2\ndef g(x):\n    return x * K\n",
                 "helpers_ix.py": "from utils_ix import g\ndef scale(x):\n    return g(x) + 1\n"}
        used, helper, imports = "utils_ix", "helpers_ix", "import helpers_ix as h"
    else:
        files = {"pkg_ix/__init__.py": "from . import core\n", "pkg_ix/core.py": "K = 2\n",
                 "pkg_ix/sub.py": "from .core import K\ndef scale(x):\n    return x * K + 1\n"}
        used, helper, imports = "pkg_ix.core", "pkg_ix.sub", "import pkg_ix.sub as h"
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text)
    importlib.invalidate_caches()
    importlib.import_module(used)  # (an earlier cell imported it)
    code = f"def scaled(x):\n    {imports}\n    return h.scale(x)\n"
    namespace: dict = {}
    exec(compile(code, str(tmp_path / "nb_ix.py"), "exec"), namespace)
    scaled = nbcache.step(namespace["scaled"])
    try:
        assert scaled(10) == 21 and not last().cached
        sys.modules.pop(helper)  # (a new kernel, where the earlier cell imports utils again)
        assert scaled(10) == 21 and last().cached
        sys.modules.pop(helper, None)  # (a hit of a step does not import it)
        edited = tmp_path / (used.replace(".", "/") + ".py")
        edited.write_text(edited.read_text().replace("K = 2", "K = 7  # edited"))
        importlib.reload(sys.modules[used])
        assert (scaled(10), last().cached) == (71, False)
        assert last().reason.endswith(f"{used}.K changed")  # (the global of the module imported already)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("utils_ix", "helpers_ix", "pkg_ix")]:
            sys.modules.pop(name)


@pytest.mark.parametrize("layout", ["imported by a name made as it runs", "a namespace package"])
def test_a_module_a_step_imports_counts_with_the_users_modules_it_uses_imported_before(ip, tmp_path, monkeypatch,
                                                                                      layout):
    """``common`` imported by an earlier cell, and used by a module the cell imports where no key can follow it
    (``import_module(f"plugins.{name}")``; a folder without ``__init__.py``, taken for a library's): an edit to
    common.py ran the earlier cell again but served this one with the old value (red-team)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    common = tmp_path / "common_ux.py"
    common.write_text("K = 1\n")
    (tmp_path / "plugins_ux").mkdir()
    (tmp_path / "plugins_ux" / "plug.py").write_text("from common_ux import K\nV = K * 10\n")
    cell = ("%%step\nimport importlib\nname = 'plug'\nv = importlib.import_module(f'plugins_ux.{name}').V"
            if layout.startswith("imported") else "%%step\nimport plugins_ux.plug\nv = plugins_ux.plug.V")

    def restart() -> None:  # (a new kernel, where the earlier cell imports common again)
        for name in [n for n in sys.modules if n.split(".")[0] in ("common_ux", "plugins_ux")]:
            sys.modules.pop(name)
        importlib.invalidate_caches()
        importlib.import_module("common_ux")

    try:
        restart()
        run(ip, cell)
        restart()
        run(ip, cell)
        assert last().cached and ip.user_ns["v"] == 10
        common.write_text("K = 2  # edited\n")
        restart()
        run(ip, cell)
        assert (last().cached, ip.user_ns["v"]) == (False, 20)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("common_ux", "plugins_ux")]:
            sys.modules.pop(name)


def test_a_hit_imports_and_reloads_only_what_its_run_did(ip, tmp_path, monkeypatch):
    """A hit imported every module the cell names, a branch it did not take too (``if FANCY: import fancy``,
    whose import set an environment variable), and did not repeat ``importlib.reload(mod)`` (red-team)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "fancy_rx.py").write_text("import os\nos.environ['NBCACHE_TEST_STYLE'] = 'fancy'\n")
    module = tmp_path / "mod_rx.py"
    branch = "%%step\nFANCY = False\nif FANCY:\n    import fancy_rx"
    load, reload = "%%step\nimport mod_rx", "%%step\nimport importlib\nimportlib.reload(mod_rx)\nv = mod_rx.V"
    try:
        for source, cells in (("V = 1\n", [branch, load]), ("V = 2  # (another size)\n", [reload])) * 2:
            module.write_text(source)
            importlib.invalidate_caches()
            if cells[0] is branch:  # (the second time: a new kernel)
                for name in ("mod_rx", "fancy_rx"):
                    sys.modules.pop(name, None)
            for cell in cells:
                run(ip, cell)
        assert [r.cached for r in nbcache.runs()[-3:]] == [True, True, True]
        assert "fancy_rx" not in sys.modules and "NBCACHE_TEST_STYLE" not in os.environ
        assert sys.modules["mod_rx"].V == 2 and ip.user_ns["v"] == 2
    finally:
        for name in ("mod_rx", "fancy_rx"):
            sys.modules.pop(name, None)
        os.environ.pop("NBCACHE_TEST_STYLE", None)


def test_the_state_a_payload_set_as_it_loaded_is_set_back_when_it_fails_to_load(ip, tmp_path):
    """sys.path is set as the payload loads, before its variables: one that then fails to load is no hit, and
    the cell, run again, puts src on the path once, as without nbcache, not twice."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "boxes.py").write_text(
        "import os\nclass Box:\n    def __init__(self, v):\n        self.v = v\n"
        "    def __reduce__(self):\n        return make, (self.v,)\n"
        "def make(v):\n    if os.path.exists('refuse'):\n        raise ValueError('refused')\n    return Box(v)\n")
    cell = "%%step\nimport sys\nsys.path.append('src')\nimport boxes\nbox = boxes.Box(1)"
    path = list(sys.path)
    sys.path_importer_cache.pop("src", None)  # (what a test before found in its own src, by that name)
    try:
        with warnings.catch_warnings(record=True) as said:  # (the filters, an input of a cell, as they were)
            warnings.simplefilter("always")
            run(ip, cell)
            sys.path[:] = path  # (a new kernel)
            sys.modules.pop("boxes")
            (tmp_path / "refuse").write_text("")
            run(ip, cell)
        assert [w for w in said if "cannot be unpickled (ValueError: refused)" in str(w.message)]
        assert last().reason == "cached result was damaged" and sys.path.count("src") == 1
    finally:
        sys.path[:] = path
        sys.modules.pop("boxes", None)


def test_a_step_that_saves_over_a_file_it_read_depends_on_what_it_read(tmp_path, cache_dir, monkeypatch):
    """An atomic save (write q.tmp, then os.replace onto q) changes what the step read: the file was hashed
    after the run, holding the new count, so every later call was served the first one. Appended to, then
    emptied or made anew in the same run, a file's earlier content is gone: the step runs again; so does one
    that writes to a SQLite database, which it may have read before. A file it wrote first is its own."""
    import sqlite3

    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.txt").write_text("0")
    (tmp_path / "led.txt").write_text("0123")

    @nbcache.step
    def saved():
        n = int(open("q.txt").read())
        with open("q.tmp", "w") as f:
            f.write(str(n + 1))
        os.replace("q.tmp", "q.txt")
        return n

    @nbcache.step
    def rotated():
        with open("led.txt", "a") as f:
            f.write("+")
        old = open("led.txt").read()
        os.remove("led.txt")
        with open("led.txt", "w") as f:
            f.write("fresh")
        return old

    @nbcache.step
    def rows_written():  # (what it reads back is what it wrote: no file it depends on)
        with open("rows.csv", "w") as f:
            f.write("header\n")
        with open("rows.csv", "a") as f:
            f.write("row\n")
        return open("rows.csv").read()

    @nbcache.step
    def counted():  # (what it writes to a database cannot be told from what it reads there)
        db = sqlite3.connect("runs.db")
        try:
            db.execute("create table if not exists t(tag)")
            db.execute("insert into t values (1)")
            db.commit()
            return db.execute("select count(*) from t").fetchone()[0]
        finally:
            db.close()

    assert [saved() for _ in range(3)] == [0, 1, 2] and nbcache.runs()[-1].reason == "file q.txt changed"
    assert [rotated() for _ in range(2)] == ["0123+", "fresh+"] and not nbcache.runs()[-1].cached
    assert rows_written() == rows_written() == "header\nrow\n" and nbcache.runs()[-1].cached
    assert [counted() for _ in range(3)] == [1, 2, 3]
    assert nbcache.runs()[-1].reason.startswith("it changed runs.db as it read it (a SQLite database")


def test_a_file_appended_to_is_hashed_only_if_the_step_reads_it_back(tmp_path, cache_dir, monkeypatch):
    """Appending to a log is no read of it: its content is never hashed whole (it was as it was opened, and
    as a file the step wrote: a big log cost every call that appended to it), only its first megabyte; read
    back, its content up to where the step appended is what the step depends on."""
    from nbcache import checks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "log.txt").write_text("old\n")
    hashed: list[str] = []  # (whole files hashed: the first megabyte of one appended to is, to tell it apart)
    digest = checks.file_digest

    def counted(path: str, limit: int | None = None) -> str:
        if limit is None:
            hashed.append(os.path.basename(path))
        return digest(path, limit)

    monkeypatch.setattr(checks, "file_digest", counted)
    monkeypatch.setattr("nbcache.priors.file_digest", counted)
    monkeypatch.setattr("nbcache.observe.file_digest", counted)

    @nbcache.step
    def logged(x):
        with open("log.txt", "a") as f:
            f.write(f"{x}\n")
        return x

    @nbcache.step
    def tail(x):
        with open("log.txt", "a") as f:
            f.write(f"{x}\n")
        return open("log.txt").read().split()

    assert logged(1) == 1 and hashed.count("log.txt") == 0
    assert tail(2) == ["old", "1", "2"] and tail(2) == ["old", "1", "2", "2"]  # (it read what it appended to)
    assert nbcache.runs()[-1].reason == "file log.txt changed"


def test_steps_that_append_to_one_log_are_hits_while_it_begins_as_they_left_it(tmp_path, cache_dir, monkeypatch):
    """Two steps, and two calls of one, appending to one log: each appended to it after the others, so the
    log was no longer what the run left, and every one ran again in every new process (a newcomer's Dask sweep
    logging to one file never came from the cache). Served while the log begins as the run left it; emptied
    or made anew, they run again."""
    monkeypatch.chdir(tmp_path)
    code = ("import nbcache\n"
            "@nbcache.step\n"
            "def f(x):\n"
            "    with open('shared.log', 'a') as fh:\n"
            "        fh.write(f'f {x}\\n')\n"
            "    return x * 2\n"
            "@nbcache.step\n"
            "def g(y):\n"
            "    with open('shared.log', 'a') as fh:\n"
            "        fh.write(f'g {y}\\n')\n"
            "    return y + 1\n"
            "assert (g(f(1)), f(2)) == (3, 4)\n"
            "print([r.cached for r in nbcache.runs()[-3:]], nbcache.runs()[-3].reason)\n")
    env = {"NBCACHE_DIR": str(cache_dir)}
    assert run_python(code, env=env, cwd=tmp_path).split()[:3] == ["[False,", "False,", "False]"]
    assert run_python(code, env=env, cwd=tmp_path).split()[:3] == ["[True,", "True,", "True]"]
    assert (tmp_path / "shared.log").read_text() == "f 1\ng 2\nf 2\n"  # (a hit does not append: pitfalls.md)
    (tmp_path / "shared.log").write_text("")
    said = run_python(code, env=env, cwd=tmp_path)
    assert said.startswith("[False, False, False] shared.log, a file it appended to, no longer begins with what it")


def test_a_folder_listed_is_checked_for_new_and_removed_files(ip, tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.txt").write_text("1")
    cell = "%%step\nimport glob\nfiles = sorted(glob.glob('parts/*.txt'))"
    run(ip, cell)
    run(ip, cell)
    assert last().cached
    (tmp_path / "parts" / "b.txt").write_text("2")
    run(ip, cell)
    assert last().reason == "folder parts changed (files added or removed)"
    assert ip.user_ns["files"] == ["parts/a.txt", "parts/b.txt"]


def test_a_function_step_reading_a_file_and_a_step_calling_it_from_the_cache(tmp_path, cache_dir):
    data = tmp_path / "rows.txt"
    data.write_text("1\n2\n")

    @nbcache.step
    def load(path):
        return [int(line) for line in open(path)]

    @nbcache.step
    def report(path):
        return sum(load(path))

    load(str(data))  # cached first: inside report's run it is a hit and opens nothing
    assert report(str(data)) == 3
    data.write_text("1\n2\n3\n")
    assert report(str(data)) == 6  # report depends on the file through load's entry
    assert [r.reason for r in nbcache.runs()[-2:]] == [f"file {data} changed"] * 2  # (outside the cwd)


def test_damaged_checks_are_a_damaged_entry(ip):
    cell = "%%step\nv = 1"
    run(ip, cell)
    store = nbcache.cache.default_cache().store()
    key, entry = next(iter(store.entries()))
    record = json.loads(entry.to_json())
    with diskcache.Cache(str(store.directory / "store")) as raw:  # what a damaged file leaves in the index
        raw.set("entry:" + key, json.dumps({**record, "checks": [["file"]]}), tag=entry.step)
    with pytest.warns(nbcache.CacheWarning, match="damaged"):
        run(ip, cell)
    assert last().reason == "cached result was damaged"
    with warnings.catch_warnings(record=True):  # the warnings filters as they were (a cell's input)
        warnings.simplefilter("always")
        run(ip, cell)
    assert last().cached


# -- names read without being named ------------------------------------------------------------------------

def test_names_read_through_eval_are_checked(ip):
    ip.user_ns["a"] = 1
    cell = "%%step\nv = eval('a') * 2"
    run(ip, cell)
    run(ip, cell)
    assert last().cached
    ip.user_ns["a"] = 5
    run(ip, cell)
    assert (last().reason, ip.user_ns["v"]) == ("variable a (read through eval/exec) changed", 10)


def test_a_display_helper_that_evals_names_in_its_repr(ip, capsys):
    """The merge/join tutorial's `display('df1', 'df2')`: its _repr_ reads the frames by name."""
    run(ip, "class show:\n    def __init__(self, *names):\n        self.names = names\n"
            "    def __repr__(self):\n        return ' | '.join(f'{n}={eval(n)!r}' for n in self.names)")
    ip.user_ns["left"] = [1]
    cell = "%%step\nright = [2]\nshow('left', 'right')"
    run(ip, cell)
    run(ip, cell)
    assert last().cached
    ip.user_ns["left"] = [3]
    capsys.readouterr()
    run(ip, cell)
    assert last().reason == "variable left (read through eval/exec) changed"
    assert "left=[3] | right=[2]" in capsys.readouterr().out


@pytest.mark.parametrize("body, reader", [
    ("names = sorted(globals())", "globals()"),
    ("names = sorted(vars())", "vars()"),
    ("names = helper()", "helper()"),
])
def test_a_cell_reading_the_whole_namespace_runs_every_time(ip, body, reader):
    run(ip, "def helper():\n    return sorted(globals())")
    run(ip, "%%step\n" + body)
    run(ip, "%%step\n" + body)
    assert not last().cached and last().reason.startswith(f"runs every time: {reader} reads" if reader ==
                                                          "helper()" else "runs every time: it reads")
    assert reader in last().reason


def test_a_step_function_whose_helper_calls_globals_runs_every_time(ip):
    run(ip, "def config():\n    return {k: v for k, v in globals().items() if k.isupper()}\n"
            "from nbcache import step\n@step\ndef use():\n    return config()")
    run(ip, "use()")
    run(ip, "use()")
    assert not last().cached and last().reason.startswith("runs every time: config() reads")


# -- shell escapes -----------------------------------------------------------------------------------------

def test_allow_shell_caches_a_shell_cell(ip):
    cell = "%%step --allow-shell\nout = !echo hi"
    run(ip, cell)
    run(ip, cell)
    assert last().cached and ip.user_ns["out"] == ["hi"]


# -- the result as it was shown ----------------------------------------------------------------------------

def test_the_result_is_shown_as_recorded_not_formatted_again(ip, capsys):
    run(ip, "import time\nclass Stamp:\n    def __repr__(self):\n"
            "        return f'shown at {time.perf_counter_ns()}'")  # a new text every time it is formatted
    cell = "%%step\ns = Stamp()\ns"
    run(ip, cell)
    first = capsys.readouterr().out
    result = run(ip, cell)
    assert last().cached and capsys.readouterr().out == first  # not formatted again
    assert result.result is ip.user_ns["s"]  # the value itself is the result (Out, _)
    run(ip, "s")
    assert capsys.readouterr().out not in ("", first)  # the displayhook formats values again


# -- cells told apart by their ids -------------------------------------------------------------------------

def test_two_cells_with_the_same_derived_name_are_two_steps(ip):
    ip.user_ns["X"] = [3, 1, 2]
    first = "%%step\nlabels = sorted(X)"
    second = "%%step\nlabels = [v * 2 for v in X]"
    run(ip, first, cell_id="cell-a")
    run(ip, second, cell_id="cell-b")
    names = [r.step for r in nbcache.runs()]
    assert names == ["labels ← X", "labels ← X #2"]
    assert [r.reason for r in nbcache.runs()] == ["first run", "first run"]
    ip.user_ns["X"] = [5]
    run(ip, first, cell_id="cell-a")
    run(ip, second, cell_id="cell-b")
    assert [(r.step, r.reason) for r in nbcache.runs()[2:]] == [("labels ← X", "input X changed"),
                                                                 ("labels ← X #2", "input X changed")]


def test_a_cell_keeps_its_name_in_a_new_kernel_whatever_order_cells_run_in(shell, cache_dir, tmp_path):
    from nbcache.magics import StepMagics

    shell.reset()
    shell.user_ns["X"] = [1]
    run(shell, "%%step\nlabels = list(X)", cell_id="cell-a")
    run(shell, "%%step\nlabels = X * 2", cell_id="cell-b")
    magics = next(m for m in shell.magics_manager.registry.values() if isinstance(m, StepMagics))
    magics.names = type(magics.names)()  # what a new kernel knows of the names: nothing
    run(shell, "%%step\nlabels = X * 2", cell_id="cell-b")
    run(shell, "%%step\nlabels = list(X)", cell_id="cell-a")
    assert [(r.step, r.cached) for r in nbcache.runs()[2:]] == [("labels ← X #2", True), ("labels ← X", True)]


def test_an_edited_cell_is_compared_with_itself(ip):
    ip.user_ns["X"] = [1]
    run(ip, "%%step\nlabels = list(X)", cell_id="cell-a")
    run(ip, "%%step\nlabels = X * 3", cell_id="cell-b")
    run(ip, "%%step\nlabels = X * 4", cell_id="cell-b")
    assert (last().step, last().reason) == ("labels ← X #2", "code changed")


def test_without_cell_ids_two_cells_with_one_derived_name_are_not_claimed_to_be_one(ip):
    """Plain IPython and nbclient send no cell id: a new code under the same derived name may be an edit
    or another cell, and the reason says so rather than calling it this cell's change."""
    ip.user_ns["X"] = [1]
    run(ip, "%%step\nlabels = list(X)")
    run(ip, "%%step\nlabels = X * 2")
    assert last().reason.startswith("code changed (in this cell, or this is another cell that binds and reads")
    run(ip, "%%step labels\nlabels = X * 2")
    run(ip, "%%step labels\nlabels = X * 3")
    assert last().reason == "code changed"  # a name the user gave is the cell's identity


def test_a_sqlite_database_opened_by_path_is_a_file_it_reads(tmp_path, cache_dir):
    import sqlite3

    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("create table sales(amount)")
        db.execute("insert into sales values (3)")
    db.close()

    @nbcache.step
    def revenue():
        db = sqlite3.connect(path)
        try:
            return db.execute("select sum(amount) from sales").fetchone()[0]
        finally:
            db.close()

    @nbcache.step
    def read_only():  # (a URI: the path is in it)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return db.execute("select sum(amount) from sales").fetchone()[0]
        finally:
            db.close()

    assert revenue() == 3 and revenue() == 3 and nbcache.runs()[-1].cached
    assert read_only() == 3 and read_only() == 3 and nbcache.runs()[-1].cached
    with sqlite3.connect(path) as db:
        db.execute("insert into sales values (4)")
    db.close()
    assert revenue() == 7 and nbcache.runs()[-1].reason.endswith("shop.sqlite changed")
    assert read_only() == 7 and nbcache.runs()[-1].reason.endswith("shop.sqlite changed")


# -- a hit changes what the run changed, and nothing else ------------------------------------------------------

def test_a_hit_does_not_undo_what_other_cells_or_the_kernel_set(ip, monkeypatch):
    """The step's changes are applied to the state as it is now: what other cells and the kernel set
    stays. (Display settings are the same in both sessions: a cell's output depends on them, so a cell
    started with other ones runs again.)"""
    cell = ("%%step\nimport os, sys\nimport pandas as pd\nos.environ['NBCACHE_STEP_VAR'] = 'x'\n"
            "sys.path.append('/from-the-step')\npd.set_option('display.max_rows', 7)\ndone = 1")
    other = ("import os, sys\nimport pandas as pd\nos.environ['NBCACHE_SESSION'] = '{n}'\n"
             "sys.path.append('/session-{n}')\npd.set_option('display.max_columns', 11)")
    saved_path = list(sys.path)
    try:
        run(ip, other.format(n=1))
        start = state_now()
        run(ip, cell)
        # a new kernel: the first session's settings are gone, a plain cell makes its own
        back_to(start)
        monkeypatch.delenv("NBCACHE_SESSION")
        sys.path[:] = list(saved_path)
        monkeypatch.setenv("NBCACHE_KERNEL_VAR", "set when the kernel started")
        run(ip, other.format(n=2))
        run(ip, cell)
        assert last().cached
        got = ip.run_cell("(os.environ['NBCACHE_SESSION'], os.environ.get('NBCACHE_STEP_VAR'),"
                          " os.environ.get('NBCACHE_KERNEL_VAR'), [p for p in sys.path if p.startswith('/se')"
                          " or p.startswith('/from')], pd.get_option('display.max_columns'),"
                          " pd.get_option('display.max_rows'))").result
        assert got == ("2", "x", "set when the kernel started", ["/session-2", "/from-the-step"], 11, 7)
    finally:
        reset_pandas()
        sys.path[:] = saved_path


def test_display_settings_are_inputs_of_a_cell(ip):
    """A plain cell above changes how output looks: a cached cell that shows a table is run again."""
    import pandas as pd

    run(ip, "import pandas as pd\npd.set_option('display.max_rows', 6)")
    cell = "%%step\ntable = pd.DataFrame({'v': range(20)})\ntable"
    try:
        run(ip, cell)
        run(ip, cell)
        assert last().cached
        run(ip, "pd.set_option('display.max_rows', 30)")
        run(ip, cell)
        assert (last().cached, last().reason) == (False, "the pandas options differ from when it was cached")
    finally:
        reset_pandas()
    assert pd.get_option("display.max_rows") == 60


def test_settings_that_change_what_code_computes_are_inputs_of_every_step(cache_dir):
    """scikit-learn's transform_output makes a scaler return a DataFrame, pandas' future options change the
    dtypes and scalars pandas gives, numpy's error handling whether 0/0 raises: a step run while a plain cell
    above set them otherwise is run again, not served the other setting's result."""
    import pandas as pd
    import sklearn
    from sklearn.preprocessing import StandardScaler

    @nbcache.step
    def scaled(x):
        return StandardScaler().fit_transform(x)

    @nbcache.step
    def names():
        return str(pd.DataFrame({"name": ["n0", "n1"]})["name"].dtype)

    @nbcache.step
    def missing():
        return pd.Series([np.inf, 1.0]).isna().tolist()

    @nbcache.step
    def ratio(a, b):
        return a / b

    x = np.arange(12.0).reshape(6, 2)
    try:
        assert type(scaled(x)) is np.ndarray
        sklearn.set_config(transform_output="pandas")
        assert type(scaled(x)) is pd.DataFrame
        assert nbcache.runs()[-1].reason == "the scikit-learn config differs from when it was cached"
        assert type(scaled(x)) is pd.DataFrame and nbcache.runs()[-1].cached  # (the config as it ran)
    finally:
        sklearn.set_config(transform_output="default")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (pandas 3 deprecates the switch it reads)
        future = dir(pd.options.future) if "future" in dir(pd.options) else ()
        switch, kind = ("future.infer_string", names) if "infer_string" in future else (
            "mode.use_inf_as_na", missing)  # (pandas 2.0 has no future.infer_string)
        before = kind()
        with pd.option_context(switch, not pd.get_option(switch)):
            assert kind() != before
            assert nbcache.runs()[-1].reason == "the pandas computing options differ from when it was cached"
        assert kind() == before  # (run again: one result per key, the last setting's)
    zero = np.zeros(1)
    with np.errstate(all="ignore"):
        assert np.isnan(ratio(zero, zero)[0])
    with np.errstate(invalid="raise"), pytest.raises(FloatingPointError):
        ratio(zero, zero)


def test_the_pandas_options_that_change_what_it_computes_are_found_without_reading_the_others():
    """A first hit reads only those (``display.`` and ``styler.`` hold most of pandas' options): the walk that
    skips the others finds exactly the computing ones among all of them, but the no-ops pandas 3 keeps, with
    the values pandas gives for them."""
    import pandas as pd

    from nbcache import pandasstate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (dir() of a deprecated option warns)
        every = pandasstate._pandas_options()
        computing = pandasstate._pandas_options(computing=True)
        no_ops = pandasstate._no_ops(pd)
        assert computing == {name: pd.get_option(name) for name in every
                             if name.startswith(pandasstate._COMPUTING) and name not in no_ops}
    assert "compute.use_bottleneck" in computing and not any(name.startswith("display.") for name in computing)
    assert ("mode.copy_on_write" in no_ops) == (int(pd.__version__.split(".")[0]) >= 3)


def test_a_warnings_filter_set_to_error_is_an_input_of_every_step(cache_dir):
    """Under ``simplefilter("error")`` the step's warning raises: a result cached without that filter is not
    served. An ``"ignore"`` filter in front of the error one keeps the warning from raising: it counts too."""

    @nbcache.step
    def doubled(x):
        warnings.warn("x is big", UserWarning)
        return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert doubled(21) == 42
        assert doubled(21) == 42 and nbcache.runs()[-1].cached  # ("ignore" is how it looks, not what it computes)
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="x is big"):
            doubled(21)
        assert nbcache.runs()[-1].reason == ("the warnings filters that decide whether a warning raises differ"
                                             " from when it was cached")
        warnings.simplefilter("ignore", UserWarning)  # (in front of "error": it does not raise)
        assert doubled(21) == 42 and not nbcache.runs()[-1].cached
        assert doubled(21) == 42 and nbcache.runs()[-1].cached


def test_a_step_that_catches_its_own_warning_made_an_error_is_not_served_without_the_filter(cache_dir):
    """Cached under the "error" filter, the step took its fallback; without the filter it converts."""

    @nbcache.step
    def parse(x):
        try:
            warnings.warn("lossy", UserWarning)
            return f"converted {x}"
        except UserWarning:
            return f"fallback {x}"

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert parse(1) == "fallback 1"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert parse(1) == "converted 1" and not nbcache.runs()[-1].cached


def test_the_source_a_warning_shows_is_no_file_the_step_reads(cache_dir, tmp_path, monkeypatch):
    """To show a warning, Python reads the line of the helper that warned from its .py file: that made the
    helper's source a data file of the step, and a comment added to it re-ran the step."""
    (tmp_path / "warnhelp.py").write_text("import warnings\ndef clean(x):\n    warnings.warn('slow')\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import warnhelp

    @nbcache.step
    def cleaned(x):
        return warnhelp.clean(x)

    shown = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda *warning, **_: shown.write(warnings.formatwarning(*warning[:4]))
        assert cleaned(1) == 2
        assert "warnings.warn('slow')" in shown.getvalue()  # (the line was read to be shown)
        with open(tmp_path / "warnhelp.py", "a") as f:
            f.write("# a comment\n")
        assert cleaned(1) == 2 and nbcache.runs()[-1].cached

    @nbcache.step
    def first_line(path):  # (a step of yours that reads data through linecache reads a file, though)
        import linecache

        linecache.checkcache(path)
        return linecache.getline(path, 1)

    (tmp_path / "data.txt").write_text("old\n")
    assert first_line(str(tmp_path / "data.txt")) == "old\n"
    (tmp_path / "data.txt").write_text("new\n")
    assert first_line(str(tmp_path / "data.txt")) == "new\n"


def test_a_hit_leaves_the_warning_filters_alone(cache_dir, tmp_path):
    """Reading pandas' options on a hit went through catch_warnings, which resets what was shown: a warning
    of the "default" action, shown once per place, showed again after every hit."""
    script = tmp_path / "warns.py"
    script.write_text(
        "import warnings, pandas, nbcache\n"
        "warnings.simplefilter('default')\n"
        "@nbcache.step\ndef f(x):\n    return x\n"
        "def say():\n    warnings.warn('once per place', UserWarning)\n"
        "for _ in range(3):\n    f(1)\n    say()\n")
    env = {**os.environ, "NBCACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("UserWarning: once per place") == 1, done.stderr


def test_a_cell_after_the_scikit_learn_config_changed_runs_again(ip):
    cell = ("%%step\nimport numpy as np\nfrom sklearn.preprocessing import StandardScaler\n"
            "kind = type(StandardScaler().fit_transform(np.array([[1.0], [2.0]]))).__name__")
    run(ip, cell)
    try:
        run(ip, "import sklearn\nsklearn.set_config(transform_output='pandas')")
        run(ip, cell)
        assert (last().cached, ip.user_ns["kind"]) == (False, "DataFrame")
    finally:
        import sklearn

        sklearn.set_config(transform_output="default")


def test_ipython_float_precision_is_an_input_of_a_cell_that_shows_floats(ip):
    """`%precision 2` in a cell above decides how the cell's float shows: changed to 5, the cell runs
    again (it showed 3.14 where IPython now shows 3.14159), and a hit sets back the precision a cell set."""
    formatter = ip.display_formatter.formatters["text/plain"]
    cell = "%%step pi\nimport math\nval = math.pi\nval"
    try:
        ip.run_line_magic("precision", "2")
        assert run(ip, cell).result == math.pi and formatter.float_format % math.pi == "3.14"
        run(ip, cell)
        assert last().cached
        ip.run_line_magic("precision", "5")
        run(ip, cell)
        assert not last().cached and last().reason in (  # (%precision sets numpy's too, when it is imported)
            "the numpy print options differ from when it was cached",
            "the IPython float precision differs from when it was cached")
        assert ambient.state_hash("IPython float precision") != ambient.state_hash("IPython float precision", "2")
        ip.run_line_magic("precision", "")
        run(ip, "%%step setter\n%precision 3\nthree = 3")
        ip.run_line_magic("precision", "")  # (a new kernel's)
        run(ip, "%%step setter\n%precision 3\nthree = 3")
        assert last().cached and formatter.float_precision == "3"
    finally:
        ip.run_line_magic("precision", "")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # (matplotlib_inline's own traitlets handlers)
def test_the_inline_backends_figure_formats_are_read_and_set_back():
    pytest.importorskip("matplotlib_inline")
    from matplotlib_inline.config import InlineBackend

    from nbcache.displaystate import figures_get, figures_set

    backend = InlineBackend.instance()
    before = figures_get()
    try:
        figures_set((["svg"], {"bbox_inches": None}))
        assert figures_get() == (["svg"], {"bbox_inches": None}) and backend.figure_formats == {"svg"}
    finally:
        figures_set(before)
    assert figures_get() == before


@pytest.mark.parametrize("asks", ["os.path.abspath('data.txt')", "str(pathlib.Path.cwd() / 'data.txt')",
                                  "os.path.join(os.getcwd(), 'data.txt')"])
def test_a_step_that_asks_for_the_working_directory_depends_on_it(cache_dir, tmp_path, monkeypatch, asks):
    """A project copied elsewhere (or a teammate's checkout) was served the first folder's path."""
    import pathlib

    real_getcwd = os.getcwd
    namespace = {"os": os, "pathlib": pathlib}
    exec(f"def where():\n    return {asks}\n", namespace)
    where = nbcache.step(namespace["where"])
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    assert where() == str(tmp_path / "a" / "data.txt")
    assert where() == str(tmp_path / "a" / "data.txt") and nbcache.runs()[-1].cached
    monkeypatch.chdir(tmp_path / "b")
    assert where() == str(tmp_path / "b" / "data.txt")
    assert nbcache.runs()[-1].reason == "the working directory differs from when it was cached"
    assert os.getcwd is real_getcwd  # (wrapped only while a run is under way)


@pytest.mark.parametrize("asks", ["threading", "bytes"])
def test_the_working_directory_asked_from_a_thread_of_the_step_or_as_bytes_counts(cache_dir, tmp_path, monkeypatch,
                                                                                   asks):
    import threading

    def where():
        if asks == "bytes":
            return os.fsdecode(os.path.abspath(b"data"))
        found = []
        worker = threading.Thread(target=lambda: found.append(os.getcwd()))
        worker.start()
        worker.join()
        return found[0]

    step = nbcache.step(where, name=f"where_{asks}")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    step()
    monkeypatch.chdir(tmp_path / "b")
    assert str(tmp_path / "b") in step()
    assert nbcache.runs()[-1].reason == "the working directory differs from when it was cached"


def test_pwd_in_a_cell_counts(ip, tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    run(ip, "%%step here\nhere = %pwd")
    monkeypatch.chdir(tmp_path / "b")
    run(ip, "%%step here\nhere = %pwd")
    assert ip.user_ns["here"] == str(tmp_path / "b") and not last().cached


def test_a_library_asking_for_the_working_directory_is_no_dependency(cache_dir, tmp_path, monkeypatch):
    """pandas resolving a relative path asks for it too: a copy of the project with the same file hits."""
    import pandas as pd

    @nbcache.step
    def load():
        return pd.read_csv("table.csv")

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.csv").write_text("x,y\n1,2\n")
    monkeypatch.chdir(tmp_path / "a")
    load()
    monkeypatch.chdir(tmp_path / "b")
    assert load().equals(pd.DataFrame({"x": [1], "y": [2]})) and nbcache.runs()[-1].cached


@pytest.mark.parametrize("reads", ["os.environ.get('NBC_MODE', 'none')", "os.getenv('NBC_MODE') or 'none'",
                                   "os.environ['NBC_MODE'] if 'NBC_MODE' in os.environ else 'none'"])
def test_a_step_that_reads_an_environment_variable_depends_on_it(cache_dir, monkeypatch, reads):
    """A step reading ``MODE`` was served its first value after the variable changed (red-team)."""
    namespace = {"os": os}
    exec(f"def mode():\n    return {reads}\n", namespace)
    mode = nbcache.step(namespace["mode"])
    monkeypatch.delenv("NBC_MODE", raising=False)
    assert mode() == "none" and mode() == "none" and nbcache.runs()[-1].cached
    monkeypatch.setenv("NBC_MODE", "prod")
    assert mode() == "prod"
    assert nbcache.runs()[-1].reason == "the environment variable NBC_MODE differs from when it was cached"
    assert mode() == "prod" and nbcache.runs()[-1].cached
    monkeypatch.delenv("NBC_MODE")
    assert mode() == "none" and not nbcache.runs()[-1].cached  # (unset again: its first value's entry)
    assert type(os.environ).__getitem__.__module__ == "os"  # (wrapped only while a run is under way)


def test_a_step_that_sets_a_variable_from_what_it_read_runs_again_when_called_again(cache_dir, monkeypatch):
    """``COUNT = COUNT + 1``: run again in the same process, the variable is as the run left it, which is not
    what it read: a hit would give 1 every time where the calls give 1, 2, 3 (red-team)."""

    @nbcache.step
    def bump():
        n = int(os.environ.get("NBC_COUNT", "0")) + 1
        os.environ["NBC_COUNT"] = str(n)
        return n

    monkeypatch.delenv("NBC_COUNT", raising=False)
    assert [bump(), bump(), bump()] == [1, 2, 3]
    assert [r.cached for r in nbcache.runs()[-3:]] == [False, False, False]
    assert nbcache.runs()[-1].reason == "the environment variable NBC_COUNT differs from when it was cached"


def test_os_getcwd_replaced_while_a_step_runs_leaves_environment_reads_working(cache_dir, monkeypatch):
    """The two wrappers are put on and taken off apart: one over the other would call itself for ever."""
    real = os.getcwd

    @nbcache.step
    def replaces():
        os.getcwd = lambda: "/elsewhere"  # (a step, or a test's monkeypatch, replacing it meanwhile)
        return 1

    @nbcache.step
    def mode():
        return os.environ.get("NBC_MODE", "none")

    try:
        replaces()
        monkeypatch.setenv("NBC_MODE", "a")
        assert mode() == "a" and mode() == "a"
        monkeypatch.setenv("NBC_MODE", "b")
        assert mode() == "b" and not nbcache.runs()[-1].cached
    finally:
        os.getcwd = real
    assert type(os.environ).__getitem__.__module__ == "os"


def test_a_library_reading_an_environment_variable_is_no_dependency(cache_dir, monkeypatch):
    """getpass reads LOGNAME for its own answer: the step's code did not read it (pass it as an argument)."""
    import getpass

    @nbcache.step
    def who():
        return len(getpass.getuser()) > 0

    monkeypatch.setenv("LOGNAME", "ada")
    who()
    monkeypatch.setenv("LOGNAME", "grace")
    assert who() and nbcache.runs()[-1].cached


def test_an_environment_variable_a_cell_reads_counts(ip, monkeypatch):
    monkeypatch.setenv("NBC_STAGE", "dev")
    for magic in (False, True):
        cell = "%%step stage\nstage = %env NBC_STAGE" if magic else "%%step\nimport os\nstage = os.environ['NBC_STAGE']"
        run(ip, cell)
        monkeypatch.setenv("NBC_STAGE", "prod")
        run(ip, cell)
        assert ip.user_ns["stage"] == "prod" and not last().cached
        assert last().reason == "the environment variable NBC_STAGE differs from when it was cached"
        monkeypatch.setenv("NBC_STAGE", "dev")


def test_a_cell_that_sets_up_logging_runs_again_rather_than_lose_its_handler(ip):
    """A hit would bind the logger but not attach the handler: what later cells log would go nowhere.
    A library's NullHandler, added to its own logger as it is imported, sets nothing up."""
    import logging

    logger = logging.getLogger("nbcache_test_setup")
    try:
        cell = ("%%step setup\nimport logging\nlog = logging.getLogger('nbcache_test_setup')\n"
                "log.handlers.clear()\nlog.addHandler(logging.StreamHandler())\nready = 1")
        run(ip, cell)
        assert last().reason.endswith("not cached: it sets up logging (a handler added or removed), which a hit"
                                      " would not set up again")
        run(ip, cell)
        assert not last().cached and len(logger.handlers) == 1
        quiet = "%%step quiet\nimport logging\nlogging.getLogger('nbcache_test_lib').addHandler(logging.NullHandler())"
        run(ip, quiet)
        run(ip, quiet)
        assert last().cached
        config = ("%%step config\nimport logging.config\nlogging.config.dictConfig({'version': 1, 'handlers': {'h':"
                  " {'class': 'logging.StreamHandler'}}, 'loggers': {'nbcache_test_setup': {'handlers': ['h']}},"
                  " 'disable_existing_loggers': False})")
        run(ip, config)
        assert "it sets up logging" in last().reason
        # a library that adds a handler of its own (as dask.distributed does as it is imported) sets nothing up
        library = "%%step library\nimport multiprocessing\nmultiprocessing.log_to_stderr()\nok = 1"
        run(ip, library)
        run(ip, library)
        assert last().cached
    finally:
        logger.handlers.clear()
        logging.getLogger("nbcache_test_lib").handlers.clear()
        logging.getLogger("multiprocessing").handlers.clear()


def test_a_setting_a_step_derives_from_its_old_value_is_an_input(ip, monkeypatch):
    monkeypatch.setenv("NBCACHE_TOOL_PATH", "/a/bin")
    cell = "%%step\nimport os\nos.environ['NBCACHE_TOOL_PATH'] += ':/opt/tool'\ndone = 1"
    run(ip, cell)
    monkeypatch.setenv("NBCACHE_TOOL_PATH", "/b/bin")  # another session's value
    run(ip, cell)
    assert last().reason == "the environment variable NBCACHE_TOOL_PATH differs from when it was cached"
    assert os.environ["NBCACHE_TOOL_PATH"] == "/b/bin:/opt/tool"


def reset_pandas() -> None:
    import pandas as pd

    with warnings.catch_warnings():  # pandas warns about its deprecated options as it resets them
        warnings.simplefilter("ignore")
        pd.reset_option("all")


def test_in_a_copy_of_the_project_a_cell_reads_and_moves_within_the_copy(ip, tmp_path):
    """A cache shared by two checkouts: paths below the folder a step started in are checked relative to
    it; a step that changed the working directory depends on where it started."""
    for name, text in (("w1", "v\n1\n"), ("w2", "v\n2\n")):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data.csv").write_text(text)
    reader = "%%step\nimport pandas as pd\ntotal = int(pd.read_csv('data.csv').v.sum())"
    mover = "%%step\nimport os\nos.chdir('data')\nmoved = True"
    os.chdir(tmp_path / "w1")
    run(ip, reader)
    run(ip, mover)
    os.chdir(tmp_path / "w2")
    run(ip, reader)
    assert (last().reason, ip.user_ns["total"]) == ("file data.csv changed", 2)
    run(ip, mover)  # it moved from w1 the first time: it runs again, and moves within the copy
    assert (last().reason, os.getcwd()) == ("the working directory differs from when it was cached",
                                            str(tmp_path / "w2" / "data"))


def test_files_read_by_worker_threads_are_dependencies(ip, tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(str(i))
    cell = ("%%step\nfrom concurrent.futures import ThreadPoolExecutor\nwith ThreadPoolExecutor(2) as pool:\n"
            "    parts = list(pool.map(lambda i: open(f'part{i}.txt').read(), range(3)))\ndel pool")
    run(ip, cell)
    (tmp_path / "part2.txt").write_text("changed")
    run(ip, cell)
    assert (last().reason, ip.user_ns["parts"]) == ("file part2.txt changed", ["0", "1", "changed"])


@pytest.mark.parametrize("runner", ["%run {script}", "exec(open('{script}').read())"])
def test_a_script_a_cell_runs_is_a_file_it_reads(ip, tmp_path, runner):  # (`%run -i`: test_magics.py)
    script = tmp_path / "params.py"
    script.write_text("VALUE = 1\n")
    cell = "%%step\n" + runner.format(script="params.py") + "\nresult = VALUE * 10"
    run(ip, cell)
    del ip.user_ns["VALUE"]  # a new kernel (in this one, VALUE would now be an input too)
    run(ip, cell)
    assert last().cached
    script.write_text("VALUE = 2\n")
    del ip.user_ns["VALUE"]
    run(ip, cell)
    assert (last().reason, ip.user_ns["result"]) == ("file params.py changed", 20)


@pytest.mark.parametrize("command", ["import subprocess as sp\nsp.run(['true'])",
                                     "from subprocess import check_call\ncheck_call(['true'])"])
def test_a_program_started_however_it_is_named_makes_the_cell_run_every_time(ip, command):
    run(ip, "%%step\n" + command)
    run(ip, "%%step\n" + command)
    assert not last().cached and last().reason.startswith("runs every time: it runs a shell command (true)")


def test_a_library_starting_its_own_processes_is_not_a_shell_command(ip):
    """joblib starting its workers, Graphviz's dot: processes a library starts for its own work."""
    import types

    tool = types.ModuleType("installed_tool")  # a module whose code lives among the installed packages
    exec(compile("import subprocess\ndef start():\n    return subprocess.run(['true']).returncode",
                 pytest.__file__, "exec"), vars(tool))
    ip.user_ns["installed_tool"] = tool
    cell = "%%step\nv = installed_tool.start()"
    run(ip, cell)
    run(ip, cell)
    assert last().cached


def test_a_folder_a_step_made_is_made_again_when_it_is_gone(ip, tmp_path):
    cell = "%%step\nimport os\nos.makedirs('results', exist_ok=True)\nn = 1"
    run(ip, cell)
    run(ip, cell)
    assert last().cached
    (tmp_path / "results").rmdir()
    run(ip, cell)
    assert last().reason == "folder results, which it made, is gone" and (tmp_path / "results").is_dir()


def test_a_touched_file_is_read_once_then_known_by_its_new_stat(ip, tmp_path):
    data = tmp_path / "big.txt"
    data.write_text("same")
    cell = "%%step\ntext = open('big.txt').read()"
    run(ip, cell)
    os.utime(data, ns=(10**18, 10**18))
    run(ip, cell)
    assert last().cached
    store = nbcache.cache.default_cache().store()
    (_, entry), = list(store.entries())
    assert entry.checks[0].stat[1] == 10**18  # the new mtime: the next hit does not read the file


def test_an_lru_cached_function_defined_in_a_cell_comes_back_after_a_restart(ip):
    cell = "%%step\nimport functools\n@functools.lru_cache(maxsize=64)\ndef fib(n):\n" \
           "    return n if n < 2 else fib(n - 1) + fib(n - 2)"
    run(ip, cell)
    del ip.user_ns["fib"]  # a new kernel knows no fib
    run(ip, cell)
    assert last().cached
    assert ip.run_cell("fib(30), fib.cache_parameters()['maxsize']").result == (832040, 64)


def test_seed_and_rand_imported_by_name(ip):
    run(ip, "from numpy.random import seed, rand")
    cell = "%%step\nseed(0)\nx = rand()"
    run(ip, cell)
    np.random.seed(123)  # another starting state: the cell seeds first, so it does not matter
    run(ip, cell)
    assert last().cached and ip.user_ns["seed"] is np.random.seed
    assert np.random.rand() == np.random.RandomState(0).rand(2)[1]


def test_a_cell_whose_variable_cannot_be_pickled_says_why_on_its_next_run(ip):
    cell = "%%step\nimport threading\nlock = threading.Lock()"
    with pytest.warns(nbcache.CacheWarning, match="cannot be pickled"):
        run(ip, cell)
    assert last().reason == "first run; not cached: variable 'lock' cannot be pickled"
    with pytest.warns(nbcache.CacheWarning):
        run(ip, cell)
    assert last().reason == "runs every time: variable 'lock' cannot be pickled"


def test_values_that_behave_differently_hash_differently():
    import pandas as pd

    days = pd.date_range("2024-01-01", periods=3, freq="D")
    assert nbcache.hash_value(days) != nbcache.hash_value(pd.DatetimeIndex(list(days)))
    masked = np.ma.array([1, 2], mask=[False, True], fill_value=5)
    assert nbcache.hash_value(masked) != nbcache.hash_value(np.ma.array([1, 2], mask=[False, True], fill_value=7))


def test_a_variable_read_through_eval_that_cannot_be_hashed_makes_the_cell_run_every_time(ip):
    run(ip, "import threading\nguard = threading.Lock()")
    cell = "%%step\nlocked = eval('guard').locked()"
    run(ip, cell)
    run(ip, cell)
    assert not last().cached
    assert last().reason == "variable guard, read through eval/exec, cannot be hashed to tell if it changed"


def test_generator_methods_imported_by_name_come_back_as_the_live_generators(ip):
    cell = "%%step\nfrom numpy.random import seed, rand\nfrom random import shuffle\nready = 1"
    run(ip, cell)
    for name in ("seed", "rand", "shuffle"):
        del ip.user_ns[name]
    run(ip, cell)
    assert last().cached
    assert ip.user_ns["rand"].__self__ is np.random.rand.__self__
    assert ip.user_ns["shuffle"].__self__ is random.shuffle.__self__
    ip.run_cell("seed(0)")
    assert ip.run_cell("rand()").result == np.random.RandomState(0).rand()


def test_a_program_a_step_s_thread_starts_is_a_shell_command(ip):
    cell = ("%%step\nimport os\nfrom concurrent.futures import ThreadPoolExecutor\n"
            "with ThreadPoolExecutor(1) as pool:\n    codes = list(pool.map(os.system, ['true']))\ndel pool")
    run(ip, cell)
    run(ip, cell)
    assert not last().cached and last().reason.startswith("runs every time: it runs a shell command (true)")


def test_finding_installed_packages_does_not_make_the_notebook_folder_a_dependency(ip, tmp_path):
    import importlib.metadata

    cell = "%%step\nimport importlib.metadata, sys\nsys.path.insert(0, '')\n" \
           "found = importlib.metadata.version('numpy')\nsys.path.remove('')"
    run(ip, cell)
    (tmp_path / "new-file.txt").write_text("x")  # the notebook's folder changes
    run(ip, cell)
    assert last().cached and ip.user_ns["found"] == importlib.metadata.version("numpy")


def test_an_lru_cached_method_of_a_class_the_cell_defines_comes_back(ip):
    cell = "%%step\nimport functools\nclass Table:\n    @functools.lru_cache\n    def row(self, n):\n" \
           "        return n * 2"
    run(ip, cell)
    del ip.user_ns["Table"]
    run(ip, cell)  # (a 'damaged' CacheWarning would be an error here: see pyproject's filterwarnings)
    assert last().cached and ip.run_cell("Table().row(4)").result == 8


def test_an_outputs_name_the_cell_does_not_define_is_not_cached(ip):
    """A typo in --outputs would leave the real variable undefined after a hit."""
    ip.user_ns["a"] = 1
    cell = "%%step --outputs nosuch\nb = a + 1"
    with pytest.warns(nbcache.CacheWarning, match="--outputs names nosuch"):
        run(ip, cell)
    assert last().reason == "first run; not cached: --outputs names nosuch, which the cell does not define"


def test_a_cell_that_binds_nothing_keeps_its_name_when_edited(ip):
    run(ip, "%%step\nprint('one')", cell_id="seed-cell-1234")
    run(ip, "%%step\nprint('two')", cell_id="seed-cell-1234")
    assert [(r.step, r.reason) for r in nbcache.runs()] == [("cell-seed-cel", "first run"),
                                                            ("cell-seed-cel", "code changed")]


def test_a_settings_cell_run_again_in_the_same_kernel_is_a_hit(ip):
    cell = "%%step\nimport pandas as pd\npd.set_option('display.max_rows', 7)\nimport numpy as np\n" \
           "np.set_printoptions(precision=3)"
    try:
        run(ip, cell)
        run(ip, cell)  # the settings are now as the cell left them, not as it found them: still a hit
        assert last().cached
    finally:
        reset_pandas()
        np.set_printoptions(precision=8)


def test_the_whole_environment_read_at_once_is_no_dependency(cache_dir, monkeypatch):
    """``dict(os.environ)``, ``{**os.environ}`` and ``os.environ.copy()`` (a subprocess's env, a config dump)
    would make every variable an input: one a kernel's launch sets differently would miss every time."""

    @nbcache.step
    def snapshot():
        return len(dict(os.environ)) > 0 and len({**os.environ}) > 0 and len(os.environ.copy()) > 0

    monkeypatch.setenv("NBC_LAUNCH", "1")
    snapshot()
    monkeypatch.setenv("NBC_LAUNCH", "2")
    assert snapshot() and nbcache.runs()[-1].cached


# -- variables of modules ---------------------------------------------------------------------------------

@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's, ``nbc_settings``, imported from the notebook's folder."""
    (tmp_path / "nbc_settings.py").write_text(
        "THRESHOLD = 0.5\nSETTINGS = {'mode': 'slow'}\nDEBUG = False\n\n"
        "def set_debug(value):\n    global DEBUG\n    DEBUG = value\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("nbc_settings", None)


@pytest.mark.parametrize("change, changed", [
    ("nbc_settings.THRESHOLD = 0.9", "nbc_settings.THRESHOLD"),
    ("nbc_settings.SETTINGS['mode'] = 'fast'", "nbc_settings.SETTINGS"),
    ("nbc_settings.set_debug(True)", "nbc_settings.DEBUG"),  # through a function of the module
    ("del nbc_settings.DEBUG", "nbc_settings.DEBUG"),
    ("setattr(nbc_settings, 'EXTRA', 1)", "nbc_settings.EXTRA"),
])
def test_a_step_that_changes_a_variable_of_a_module_of_yours_runs_every_time(ip, user_module, change, changed):
    """A hit would leave the module as it was, and a later cell would compute with the old value."""
    run(ip, "import nbc_settings")
    cell = f"%%step tune\n{change}\nopen(LOG, 'a').write('x')"
    run(ip, cell)
    assert last().reason == (f"first run; not cached: it changes {changed} (a variable of a module), which a hit"
                             " would not change again")
    del sys.modules["nbc_settings"]  # as a new kernel finds it
    run(ip, "import nbc_settings")
    run(ip, cell)
    assert not last().cached and times_ran(ip) == 2
    assert last().reason.startswith(f"runs every time: it changes {changed}")


def test_a_function_step_that_changes_a_variable_of_a_module_runs_every_time(ip, user_module):
    run(ip, "import nbc_settings\nfrom nbcache import step\n\n@step\ndef count(x):\n"
            "    nbc_settings.SETTINGS['calls'] = nbc_settings.SETTINGS.get('calls', 0) + 1\n    return x")
    run(ip, "count(1)")
    run(ip, "count(1)")
    assert not last().cached and ip.user_ns["nbc_settings"].SETTINGS["calls"] == 2
    assert "it changes nbc_settings.SETTINGS (a variable of a module)" in last().reason


def test_a_step_that_sets_a_library_module_attribute_runs_every_time(ip):
    """What the cell assigns to a library's module: a hit would not assign it."""
    cell = "%%step flags\nimport json\njson.nbc_flag = 1\nsetattr(json.decoder, 'nbc_other', 2)"
    try:
        run(ip, cell)
        assert last().reason.endswith("it changes json.nbc_flag, json.decoder.nbc_other (a variable of a module),"
                                      " which a hit would not change again")
    finally:
        import json
        for owner, name in ((json, "nbc_flag"), (json.decoder, "nbc_other")):
            if hasattr(owner, name):
                delattr(owner, name)


def test_what_a_step_does_not_change_of_modules_leaves_it_cached(ip, user_module, tmp_path):
    """Reading a module's variables, importing a module of yours or a submodule (which binds it in its
    package), setting attributes of objects that are not modules, or reloading a module: all cached."""
    (tmp_path / "nbc_pkg").mkdir()
    (tmp_path / "nbc_pkg" / "__init__.py").write_text("")
    (tmp_path / "nbc_pkg" / "sub.py").write_text("VALUE = 3\n")
    run(ip, "import nbc_settings, nbc_pkg\nclass Box:\n    pass\nbox = Box()")
    cells = ["%%step reads\nlimit = nbc_settings.THRESHOLD * 2",
             "%%step subs\nimport nbc_pkg.sub\nvalue = nbc_pkg.sub.VALUE",
             "%%step box\nbox.size = 3",
             "%%step reload\nimport importlib\nimportlib.reload(nbc_settings)\nmode = nbc_settings.SETTINGS['mode']"]
    try:
        for cell in cells:
            for _ in range(3):  # (a cell's first import of a module of yours makes another key once)
                run(ip, cell)
                assert "not cached" not in last().reason, (cell, last().reason)
            assert last().cached, (cell, last().reason)
    finally:
        for name in ("nbc_pkg", "nbc_pkg.sub"):
            sys.modules.pop(name, None)


# -- what a cell changes of the notebook's functions, classes and objects -----------------------------------

@pytest.mark.parametrize("setup, cell, changed", [
    ("def make():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n        return n\n    return inc\n"
     "next_id = make()", "a = next_id()", "next_id"),  # a nonlocal count
    ("import numpy as np\ndef make():\n    buf = np.zeros(3)\n    def add(i):\n        buf[i] += 1\n"
     "        return float(buf.sum())\n    return add\nadd = make()", "s = add(0)", "add"),  # an array in a closure
    ("class Tracker:\n    def __init__(self):\n        self.n = 0\n    def tick(self):\n        self.n += 1\n"
     "        return self.n\ntick = Tracker().tick", "t = tick()", "tick"),  # a bound method's instance
    ("class Point:\n    pass\ndef describe(self):\n    return 'p'", "Point.describe = describe", "Point"),
    ("class Registry:\n    items = []\nreg = Registry()", "reg.items.append('a')", "Registry"),  # through an object
])
def test_a_cell_that_changes_what_code_or_a_class_holds_runs_every_time(ip, setup, cell, changed):
    """A hit would leave the counter, the array, the instance or the class as they were: the next cell
    would count from the start again or miss a method (red-team)."""
    run(ip, setup)
    run(ip, f"%%step s\n{cell}")
    assert last().reason == (f"first run; not cached: it changes {changed} (a default value, what a closure holds,"
                             " a class's attribute, or a method's instance), which a hit would not change again")
    run(ip, f"%%step s\n{cell}")
    assert not last().cached


def test_a_notebook_variable_a_method_changes_is_an_output(ip):
    """``ev.run(3)`` appends to the notebook's ``results`` through a method of the notebook's class: stored
    with the cell, as for a function of the notebook's (red-team)."""
    run(ip, "results = []\nclass Evaluator:\n    def run(self, x):\n        results.append(x)\n        return x * 2\n"
            "ev = Evaluator()")
    cell = "%%step s\ny = ev.run(3)"
    run(ip, cell)
    assert ip.user_ns["results"] == [3]
    ip.user_ns["results"].clear()  # as a new kernel, whose first cell made it empty
    run(ip, cell)
    assert last().cached and ip.user_ns["results"] == [3]


@pytest.mark.parametrize("module, cell, changed", [
    ("from collections import Counter, defaultdict\nseen = Counter()\nby = defaultdict(list)",
     "nbc_state.seen['fit'] += 1\nnbc_state.by['fit'].append(3)", "nbc_state.seen"),  # containers of the stdlib
    ("import random\nimport numpy as np\nrng = np.random.default_rng(0)\nlegacy = random.Random(0)",
     "x = nbc_state.rng.normal(size=2)\ny = nbc_state.legacy.random()", "nbc_state.rng"),  # generators
    ("import types\ncfg = types.SimpleNamespace(lr=0.1)", "nbc_state.cfg.lr = 0.5", "nbc_state.cfg"),
])
def test_what_a_module_of_yours_holds_is_compared_by_content(ip, tmp_path, monkeypatch, module, cell, changed):
    """A ``Counter``, a ``SimpleNamespace`` config, a random generator a module keeps: a hit would leave them
    as they were, where the notebook without nbcache counts, sets, draws on (red-team)."""
    (tmp_path / "nbc_state.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        run(ip, "import nbc_state")
        run(ip, f"%%step s\n{cell}")
        assert last().reason.startswith(f"first run; not cached: it changes {changed}")
    finally:
        sys.modules.pop("nbc_state", None)


def test_a_big_table_a_module_of_yours_keeps_is_compared_by_its_length(ip, tmp_path, monkeypatch):
    """Hashing a million-entry dict before and after every run took seconds (red-team): past
    ``modulestate.BIG`` items, what counts is whether it is the same object, as long."""
    from nbcache import modulestate

    (tmp_path / "nbc_table.py").write_text(f"TABLE = {{i: i for i in range({modulestate.BIG + 1})}}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hashed = []
    monkeypatch.setattr(modulestate, "hash_value", lambda v: hashed.append(len(v)) or "h")
    try:
        run(ip, "import nbc_table")
        run(ip, "%%step s\nn = len(nbc_table.TABLE)")
        assert modulestate.BIG + 1 not in hashed and "not cached" not in last().reason
        run(ip, "%%step t\nnbc_table.TABLE[-1] = 0")
        assert "it changes nbc_table.TABLE" in last().reason
    finally:
        sys.modules.pop("nbc_table", None)


@pytest.mark.parametrize("setup, cell", [
    ("import json\ndef train(json, x):\n    json.n_seen_ = x", "%%step s\ndef train(json, x):\n    json.n_seen_ = x"),
    ("import enum\nclass Perm(enum.Flag):\n    R = 1\n    W = 2", "%%step s\nboth = Perm.R | Perm.W"),
])
def test_what_only_looks_like_a_change_of_code_or_modules_leaves_a_cell_cached(ip, setup, cell):
    """A parameter named like a module set in a function the cell defines; the combination of flags an enum
    keeps on its class (red-team: both ran every time)."""
    run(ip, setup)
    run(ip, cell)
    run(ip, cell)
    assert last().cached, last().reason


def test_a_bound_method_of_a_library_object_or_a_list_is_state_a_cell_changes(ip):
    """``fit = model.fit`` then ``fit(X, y)``; ``log = history.append`` then ``log(x)``: a hit left the model
    unfitted and the list empty (red-team)."""
    run(ip, "from sklearn.linear_model import LinearRegression\nmodel = LinearRegression()\nfit = model.fit\n"
            "history = []\nlog = history.append")
    for cell, name in (("%%step a\nfit([[1], [2]], [1, 2])", "fit"), ("%%step b\nlog('epoch 1')", "log")):
        run(ip, cell)
        assert last().reason.startswith(f"first run; not cached: it changes {name} ")
        run(ip, cell)
        assert not last().cached


def test_a_variable_a_stored_holder_holds_must_be_one_object_as_it_was(ip):
    """``models`` holds ``rf``, which a loop variable ``model`` also names once the loop ran; after a restart
    the loop's hit bound ``model`` to a copy, and the fit's hit held that copy as ``models["rf"]``:
    ``NotFittedError`` with nothing edited (red-team). Names that held one object hold one now, or it runs."""
    cells = ["%%step\nclass Est:\n    def __init__(self, n):\n        self.n = n\n"
             "    def fit(self, x):\n        self.coef_ = sum(x) * self.n\n        return self",
             "%%step\nmodel = Est(0)",
             "%%step\nlr, rf = Est(1), Est(10)\nmodels = {'lr': lr, 'rf': rf}",
             "%%step\nfor name, model in models.items():\n    pass",
             "%%step\nlr.fit([1, 2])"]
    every_cell_a_hit_after_a_restart(ip, cells, forget=("Est", "model", "lr", "rf", "models", "name"))
    run(ip, "rf.fit([1, 2])")
    ns = ip.user_ns
    assert ns["models"]["rf"] is ns["rf"] and ns["models"]["rf"].coef_ == 30 and ns["models"]["lr"] is ns["lr"]
