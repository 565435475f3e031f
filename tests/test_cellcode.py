"""Cell analysis, directly: which variables a cell reads from the notebook (its inputs), which it binds
(its outputs), what it imports, which shell commands it runs and which magics a hit must run again.

No IPython here: a cell is given as IPython's input transformations leave it (``!ls`` is
``get_ipython().system('ls')``, ``%matplotlib inline`` is ``get_ipython().run_line_magic(...)``), which is
what ``%%step`` analyses.
"""

from __future__ import annotations

import ast

import pytest

from nbcache.cellcode import REPLAYED_MAGICS, CellCode, analyse_cell
from nbcache.magiclines import line_magic, timed_code


def reads(source: str) -> set[str]:
    return set(analyse_cell(source).reads)


def binds(source: str) -> set[str]:
    return set(analyse_cell(source).binds)


# -- reads and binds --------------------------------------------------------------------------------------

def test_reads_and_binds_in_order_of_first_use():
    code = analyse_cell("y = f(x)\nz = g(y, x)\nw = z + h")
    assert code.reads == ("f", "x", "g", "h")
    assert code.binds == ("y", "z", "w")


@pytest.mark.parametrize("source, inputs", [
    ("a = 1\nb = a + c", {"c"}),  # bound above: not an input
    ("b = a + c\na = 1", {"a", "c"}),  # read before this cell binds it: the notebook's a
    ("x += 1", {"x"}),  # an augmented assignment reads first
    ("for tree, (X, y) in zip(forest, sets):\n    tree.fit(X, y)", {"zip", "forest", "sets"}),
    ("for i in range(3):\n    total = total + i", {"range", "total"}),  # the loop may not run: total is read
    ("while cond():\n    n = step(n)", {"cond", "step", "n"}),
    ("with open(path) as f:\n    text = f.read()", {"open", "path"}),
])
def test_a_name_bound_before_it_is_read_is_not_an_input(source, inputs):
    assert reads(source) == inputs


@pytest.mark.parametrize("source, inputs", [
    # bound on one branch only: after the if, the notebook's model may be the one used
    ("if retrain:\n    model = fit()\n    model.save()\nmodel.predict()", {"retrain", "fit", "model"}),
    # bound on both branches: certainly bound
    ("if a:\n    m = 1\nelse:\n    m = 2\nprint(m)", {"a", "print"}),
    ("if a:\n    m = 1\nelif b:\n    m = 2\nprint(m)", {"a", "b", "print", "m"}),  # no else: may stay unbound
    ("try:\n    v = f()\nexcept E as e:\n    log(e)\nprint(v)", {"f", "E", "log", "print", "v"}),
    ("try:\n    v = f()\nfinally:\n    w = 1\nprint(w)", {"f", "print"}),  # finally always runs
    ("match cmd:\n    case [first, *rest]:\n        out = first + rest\nprint(out)", {"cmd", "print", "out"}),
])
def test_a_binding_that_may_not_happen_leaves_the_name_an_input(source, inputs):
    assert reads(source) == inputs


def test_a_binding_inside_a_suppressing_with_may_not_happen():
    code = analyse_cell("from contextlib import suppress\nwith suppress(KeyError):\n    y = cfg['y']\nz = y * 10")
    assert set(code.reads) == {"KeyError", "cfg", "y"}
    assert set(code.binds) == {"suppress", "y", "z"}
    assert "y" not in reads("with open('f') as fh:\n    y = fh.read()\nz = y * 10")  # an ordinary with runs its body


def test_every_name_bound_on_some_path_is_an_output():
    assert binds("for tree, (X, y) in pairs:\n    last = tree\nelse:\n    done = True") == \
        {"tree", "X", "y", "last", "done"}
    assert binds("try:\n    v = f()\nexcept E as e:\n    v = None") == {"v", "e"}
    assert binds("total = (n := len(xs)) * 2") == {"total", "n"}
    assert binds("match p:\n    case {'k': value, **others}:\n        pass") == {"value", "others"}


@pytest.mark.parametrize("source, bound", [
    ("x: int", set()),  # a bare annotation binds nothing
    ("x: int = 3", {"x"}),
    ("a, *rest = items", {"a", "rest"}),
    ("obj.attr = 1\nd['k'] = 2", set()),  # changes a value the cell reads; binds no name
    ("def f(): pass\nclass C: pass", {"f", "C"}),
    ("[i for i in range(3)]", set()),  # a comprehension's variable is its own
])
def test_what_a_statement_binds(source, bound):
    assert binds(source) == bound


def test_query_and_eval_strings_read_the_variables_they_name():
    assert reads("r = df.query('tip > @limit and day == @day')") == {"df", "limit", "day"}
    assert reads("s = frame.eval('a + @offset')") == {"frame", "offset"}
    assert reads("r = df.query(expr)") == {"df", "expr"}  # not a literal: only the names in the code


def test_functions_lambdas_and_comprehensions_read_what_they_do_not_bind():
    source = ("def f(a, *args, scale=default, **kw):\n    local = a * factor\n    return local + len(args)\n"
              "g = lambda v: v * k\nsq = [i * w for i in items if i > lo]\nresult = f(2)")
    code = analyse_cell(source)
    assert set(code.reads) == {"default", "factor", "len", "k", "w", "items", "lo"}
    assert set(code.binds) == {"f", "g", "sq", "result"}


def test_a_class_body_sees_its_own_names_but_its_methods_do_not():
    source = "class M:\n    size = 3\n    double = size * 2\n    def area(self):\n        return size * unit"
    assert reads(source) == {"size", "unit"}
    assert binds(source) == {"M"}


def test_a_class_body_s_lambdas_and_comprehensions_read_the_notebook_s_names_not_its_own():
    """Only the class body itself sees what it bound: inside its comprehension, ``k`` is the notebook's."""
    assert reads("class T:\n    k = 1\n    zs = [v + k for v in range(3)]\n") == {"k", "range"}
    assert reads("class T:\n    k = 1\n    f = lambda: k\n") == {"k"}
    assert reads("class T:\n    k = 1\n    j = k + 1\n") == set()


def test_match_patterns_read_the_names_they_compare_with():
    source = "match level:\n    case cfg.HIGH:\n        label = 'high'\n    case Point(x=0) as p:\n        label = p\n"
    assert reads(source) == {"level", "cfg", "Point"}
    assert {"label", "p"} <= binds(source)


def test_a_function_s_annotations_are_read_as_its_def_runs():
    source = "def field(raw: Num, *rest: Extra, key: Key = None) -> Out:\n    return raw\nv = field('7')"
    assert reads(source) == {"Num", "Extra", "Key", "Out"}


def test_a_function_declaring_a_global_binds_it_when_called():
    code = analyse_cell("def setup():\n    global cfg\n    cfg = load()\nsetup()")
    assert set(code.binds) == {"setup", "cfg"}
    assert code.reads == ("load",)


def test_imports_bind_their_names_and_are_listed():
    code = analyse_cell("import numpy as np\nimport os.path\nfrom . import helpers\nfrom .sub import x\n"
                        "from pkg.mod import thing as other\nfrom m import *")
    assert code.imports == ("numpy", "os.path", ".", ".sub", "pkg.mod", "m")
    assert code.binds == ("np", "os", "helpers", "x", "other")  # `import *` binds what the module has
    assert code.reads == ()


def test_timed_code_binds_and_reads_like_the_plain_statement():
    code = analyse_cell("get_ipython().run_line_magic('time', 'x = f(y)')")  # %time x = f(y)
    assert (code.reads, code.binds) == (("f", "y"), ("x",))


def test_code_that_does_not_parse_raises_syntax_error():
    with pytest.raises(SyntaxError):
        analyse_cell("x = (")


# -- the digest ---------------------------------------------------------------------------------------------

def test_the_digest_ignores_comments_and_layout_but_not_code():
    base = analyse_cell("x = f(1, 2)\ny = x + 1").digest
    assert analyse_cell("# a comment\nx = f(1,   2)  # why\n\n\ny = x+1\n").digest == base
    assert analyse_cell("x = f(1, 3)\ny = x + 1").digest != base
    assert analyse_cell("y = x + 1\nx = f(1, 2)").digest != base


# -- shell commands and namespace-wide reads -----------------------------------------------------------------

@pytest.mark.parametrize("source, shell", [
    ("get_ipython().system('ls -l')", ("!ls",)),  # !ls -l
    ("out = get_ipython().getoutput('echo hi')", ("!echo",)),  # out = !echo hi
    ("get_ipython().run_line_magic('sx', 'ls')", ("%sx",)),  # %sx ls
    ("files = get_ipython().run_line_magic('system', 'ls')", ("%system",)),
    ("get_ipython().run_cell_magic('bash', '', 'echo hi\\n')", ("%%bash",)),  # a %%bash cell
    ("import os\nos.system('make')", ("os.system()",)),
    ("import subprocess\nsubprocess.run(['make'], check=True)", ("subprocess.run()",)),
    ("import subprocess\nout = subprocess.check_output(['git', 'rev-parse', 'HEAD'])", ("subprocess.check_output()",)),
    ("def build():\n    os.system('make')\n    os.system('make install')", ("os.system()",)),  # in a function; once
    ("get_ipython().system('a')\nos.popen('b')", ("!a", "os.popen()")),
])
def test_shell_commands_are_found_anywhere_in_the_cell(source, shell):
    assert analyse_cell(source).shell == shell


@pytest.mark.parametrize("source", [
    "x = compute(1)",
    "get_ipython().run_line_magic('time', 'f()')",  # a magic that is not a shell command
    "get_ipython().run_cell_magic('capture', 'out', 'print(1)\\n')",
    "path = os.path.join('a', 'b')\nresult = runner.run()",  # `run` of something that is not subprocess
])
def test_a_cell_without_shell_commands(source):
    assert analyse_cell(source).shell == ()


@pytest.mark.parametrize("source, dynamic", [
    ("names = list(globals())", "globals()"),
    ("def f():\n    return globals()['x']", "globals()"),  # globals() is the notebook's anywhere
    ("print(locals())", "locals()"),
    ("print(vars())", "vars()"),
    ("print(dir())", "dir()"),
    ("def f(a):\n    return locals()", ""),  # a function's own locals
    ("print(vars(obj), dir(obj))", ""),  # of an object, not of the namespace
    ("x = 1", ""),
])
def test_reads_of_the_whole_namespace(source, dynamic):
    assert analyse_cell(source).dynamic == dynamic


# -- line magics a hit runs again ---------------------------------------------------------------------------

def test_line_magics_with_a_lasting_effect_are_replayed():
    source = ("get_ipython().run_line_magic('matplotlib', 'inline')\n"
              "get_ipython().run_line_magic('config', 'InlineBackend.figure_format = \"svg\"')\n"
              "get_ipython().run_line_magic('time', 'x = 1')\n"  # %time: its effect is the statement's
              "if flag:\n    get_ipython().run_line_magic('load_ext', 'autoreload')\n"  # not at top level
              "get_ipython().run_line_magic('load_ext', 'autoreload')")
    assert analyse_cell(source).magics == (("matplotlib", "inline"), ("config", 'InlineBackend.figure_format = "svg"'),
                                           ("load_ext", "autoreload"))
    assert {"matplotlib", "config", "load_ext", "env", "cd"} <= REPLAYED_MAGICS


def test_magic_lines_are_recognised_in_the_tree():
    first, assigned, call = ast.parse("get_ipython().run_line_magic('cd', '/tmp')\n"
                                      "t = get_ipython().run_line_magic('time', 'f(y)')\nf(1)").body
    assert line_magic(first) == ("cd", "/tmp")
    assert line_magic(assigned) is None and line_magic(call) is None
    assert ast.dump(timed_code(assigned)[0]) == ast.dump(ast.parse("f(y)").body[0])
    assert timed_code(first) is None and timed_code(call) is None


# -- a cell's default step name ------------------------------------------------------------------------------

def test_a_default_name_says_what_the_cell_binds_and_reads():
    code = analyse_cell("df = clean(raw)")
    assert code.default_name(["clean", "raw"]) == "df ← clean, raw"
    assert code.default_name([]) == "df"
    assert analyse_cell("a = b = c = d = 1").default_name(["_x"]) == "a, b, c, ..."
    assert analyse_cell("_tmp = 1").default_name([]) == "_tmp"  # only private names: those, still
    nothing = analyse_cell("print(1)")
    assert nothing.default_name(["print"]) == f"cell-{nothing.digest[:8]}"


def test_a_cell_code_is_a_frozen_record():
    code = analyse_cell("x = 1")
    assert isinstance(code, CellCode)
    with pytest.raises(AttributeError):
        code.reads = ("y",)  # type: ignore[misc]


def test_the_code_of_timeit_and_prun_lines_is_read():
    timed = analyse_cell("get_ipython().run_line_magic('timeit', '-n1 -r 3 y = f(x)')")  # %timeit -n1 -r 3 ...
    assert (list(timed.reads), list(timed.binds)) == (["f", "x"], [])  # (timeit runs it in a function)
    profiled = analyse_cell("get_ipython().run_line_magic('prun', '-s time y = g(z)')")
    assert (list(profiled.reads), list(profiled.binds)) == (["g", "z"], ["y"])
    braces = analyse_cell("get_ipython().run_line_magic('time', 'd = {k: 1}')")  # (IPython expands no code line)
    assert (list(braces.reads), list(braces.binds)) == (["k"], ["d"])
    flagged = analyse_cell("get_ipython().run_line_magic('prun', '-q -r out.append(g(x))')")  # (-r: a flag)
    assert list(flagged.reads) == ["out", "g", "x"]
    quoted = analyse_cell("get_ipython().run_line_magic('prun', \"-T 'a b.txt' f(x)\")")  # (not told apart)
    assert quoted.dynamic == "%prun"


@pytest.mark.parametrize(("source", "reads", "dynamic"), [
    ("get_ipython().run_cell_magic('writefile', '$été', 'x')", ["été", "get_ipython"], ""),
    ("a = IPython.get_ipython().user_ns['x']", ["IPython"], "get_ipython().user_ns"),
    ("a = sys.modules['__main__'].__dict__['x']", ["sys"], "sys.modules['__main__']"),
    ("get_ipython().system('echo {' + '-' * 20000 + 'n}')", ["get_ipython"], ""),  # (no parse: read as text)
])
def test_what_ipython_reads_for_a_cell_is_told(source, reads, dynamic):
    code = analyse_cell(source)
    assert (list(code.reads), code.dynamic) == (reads, dynamic)

