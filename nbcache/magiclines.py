"""IPython's magics and shell escapes as they reach the analysis of a cell: calls on ``get_ipython()``.

By the time a cell's source is analysed, IPython's input transformations have turned ``!ls`` into
``get_ipython().system('ls')``, ``%time x = f()`` into ``get_ipython().run_line_magic('time', 'x = f()')``
and a ``%%bash`` cell into ``get_ipython().run_cell_magic('bash', '', ...)``. This module recognises those
calls in a syntax tree; no IPython here.
"""

from __future__ import annotations

import ast
import re

__all__ = ["CODE_CELL_MAGICS", "REPLAYED_MAGICS", "SHELL_CELL_MAGICS", "SHELL_LINE_MAGICS", "TEXT_CELL_MAGICS",
           "cell_magic", "cell_magic_code", "expanded", "ipython_call", "line_magic", "line_magic_code", "string_arg",
           "timed_code"]

# Line magics whose effect lasts beyond the cell (settings of the kernel, IPython or matplotlib): a hit
# runs them again, quietly, since the cell's body, which ran them the first time, does not run.
REPLAYED_MAGICS = frozenset({
    "matplotlib", "config", "load_ext", "reload_ext", "precision", "autoreload", "aimport", "xmode",
    "colors", "env", "cd", "alias", "autocall", "automagic", "doctest_mode", "pdb", "set_env",
})
# Magics that run a shell command: their effect is outside the kernel, and a hit would not repeat it.
SHELL_LINE_MAGICS = frozenset({"sx", "system", "sc"})
SHELL_CELL_MAGICS = frozenset({"bash", "sh", "script", "system", "sx", "perl", "ruby", "zsh", "csh"})
# Cell magics that run their body as Python in the notebook's namespace: the body is analysed as the cell's.
CODE_CELL_MAGICS = frozenset({"time", "capture"})
# Cell magics whose body is text, not code that reads variables. Any other (``%%timeit``, ``%%prun``, an
# extension's ``%%sql``) reads the notebook in ways no analysis lists: the cell runs every time.
TEXT_CELL_MAGICS = frozenset({"html", "HTML", "javascript", "js", "latex", "markdown", "svg", "writefile", "file"})


def ipython_call(node: ast.AST) -> tuple[str, list[ast.expr]] | None:
    """``get_ipython().<method>(args)``, as IPython writes ``!ls`` and ``%magic``: (method, args)."""
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call) and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "get_ipython"):
        return node.func.attr, node.args
    return None


def string_arg(args: list[ast.expr], i: int) -> str | None:
    """Argument ``i``, if it is a string literal (a magic's name, its line: IPython writes them so)."""
    if len(args) > i and isinstance(args[i], ast.Constant) and isinstance(args[i].value, str):
        return args[i].value
    return None


def line_magic(st: ast.stmt) -> tuple[str, str] | None:
    """(name, line) of a statement that is a line magic alone (``%matplotlib inline``), else None."""
    call = ipython_call(st.value) if isinstance(st, ast.Expr) else None
    if call and call[0] == "run_line_magic":
        name, line = string_arg(call[1], 0), string_arg(call[1], 1)
        if name is not None and line is not None:
            return name, line
    return None


def timed_code(st: ast.stmt, magics: tuple[str, ...] = ("time", "prun")) -> list[ast.stmt] | None:
    """The statements of ``%time CODE`` or ``%prun CODE`` (alone, or assigned: ``t = %time f()``), whose CODE
    IPython passes as a string, after the magic's options (``magics``: which magics); None for any other
    statement, or for CODE that does not parse."""
    call = st.value if isinstance(st, (ast.Expr, ast.Assign)) else None
    found = line_magic_code(call) if call is not None else None
    return found[1] if found is not None and found[0] in magics else None


def line_magic_code(call: ast.AST) -> tuple[str, list[ast.stmt] | None] | None:
    """(name, statements) of ``get_ipython().run_line_magic(name, line)`` for a magic whose line ends with code
    run in the notebook (``%time``, ``%timeit``, ``%prun``): its statements after the magic's options, or None
    if they cannot be told (a quoted option value, code that does not parse). None for any other call."""
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == "run_line_magic" and len(call.args) == 2
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)
            and call.args[0].value in _TAKING):
        return None
    name, code = call.args[0].value, call.args[1].value
    taking = _TAKING[name]
    while code.startswith("-") and name != "time":  # (options: `%timeit -n1 -r1 f(x)`, `%prun -s time f(x)`)
        flag, _, code = code.partition(" ")
        if flag[1:2] in taking and len(flag) == 2:
            _, _, code = code.lstrip().partition(" ")  # (its value, given apart)
        code = code.lstrip()
    try:
        return name, ast.parse(code).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return name, None


# The options of a magic that take a value, as IPython reads its line (`%prun`'s -r is a flag).
_TAKING = {"time": "", "timeit": "nrpv", "prun": "DlsT"}


def cell_magic(node: ast.AST) -> tuple[str, str, str] | None:
    """(name, line, body) of ``get_ipython().run_cell_magic(name, line, body)`` (a ``%%name line`` cell, or
    the second line of a ``%%step`` cell), else None."""
    call = ipython_call(node)
    if call and call[0] == "run_cell_magic":
        name, line, body = (string_arg(call[1], i) for i in range(3))
        if name is not None and line is not None and body is not None:
            return name, line, body
    return None


def cell_magic_code(st: ast.stmt) -> list[ast.stmt] | None:
    """The statements of a ``%%time`` or ``%%capture`` body, which runs in the notebook's namespace; None for
    any other statement, or for a body that is not plain Python (IPython syntax in it: ``celleffects`` then
    runs the cell every time)."""
    found = cell_magic(st.value) if isinstance(st, ast.Expr) else None
    if found is None or found[0] not in CODE_CELL_MAGICS:
        return None
    try:
        return ast.parse(found[2]).body
    except SyntaxError:
        return None


# What IPython expands in a magic's line and a shell command before running it: `$name`, `$df.shape`,
# `{expr}` (`$$` and `{{` stay as they are).
_EXPANDED = re.compile(r"\$\$|\{\{|\$([^\W\d][\w.]*)|\{([^{}]+)\}")  # (names of any letters: `$été`)
_EXPANDING = {"run_line_magic": 1, "run_cell_magic": 1, "system": 0, "getoutput": 0}
_UNEXPANDED = frozenset({"time", "timeit", "prun", "debug"})  # (their line is code: IPython leaves it as it is)


def expanded(st: ast.stmt) -> list[ast.expr]:
    """The expressions IPython expands in the lines of the magics and shell commands of a simple statement
    (``%%writefile $name``, ``!ls {folder}``): what they read of the notebook."""
    found = []
    for node in ast.walk(st):
        call = ipython_call(node)
        line = string_arg(call[1], _EXPANDING[call[0]]) if call and call[0] in _EXPANDING else None
        if call and call[0].endswith("_magic") and string_arg(call[1], 0) in _UNEXPANDED:
            line = None
        for match in _EXPANDED.finditer(line or ""):
            text = match.group(1) or match.group(2) or ""
            for candidate in (text, re.split(r"[!:](?=[^!:]*$)", text)[0]):  # (`{path!r}`, `{n:>4}`)
                try:
                    found.append(ast.parse(candidate, mode="eval").body)
                    break
                except (SyntaxError, ValueError, RecursionError, MemoryError):  # (IPython leaves it as it is)
                    continue
    return [expr for expr in found if not isinstance(expr, ast.Constant)]
