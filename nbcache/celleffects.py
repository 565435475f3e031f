"""What a cell does that its variables do not show: shell commands, and reading the whole namespace.

A cell that runs a shell command (``!make``, ``%%bash``, ``os.system``, ``subprocess.run``) has effects
outside the kernel that a hit would not repeat; one that reads the notebook's namespace without naming
variables (``globals()``, ``%run -i``, a cell magic such as ``%%timeit`` or an extension's ``%%sql``) has
inputs no analysis can list. Both make ``%%step`` run the cell every time (``--allow-shell`` caches the
first kind anyway). Found anywhere in the cell, in functions too, and in a ``%%time`` or ``%%capture`` body,
which is the cell's own code; no IPython.
"""

from __future__ import annotations

import ast
import getopt
import shlex
from dataclasses import dataclass

from .magiclines import (CODE_CELL_MAGICS, SHELL_CELL_MAGICS, SHELL_LINE_MAGICS, TEXT_CELL_MAGICS, cell_magic,
                         ipython_call, line_magic_code, string_arg)

__all__ = ["SHELL_FUNCTIONS", "Effects", "effects_of"]

SHELL_FUNCTIONS = {
    "os": {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl", "execle", "execlp", "execlpe",
           "spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "posix_spawn",
           "posix_spawnp"},
    "subprocess": {"run", "call", "check_call", "check_output", "Popen", "getoutput", "getstatusoutput"},
}
"""The functions, by module as the cell names it, that start a program."""


@dataclass(frozen=True)
class Effects:
    shell: tuple[str, ...]  # shell commands, as written and in order, once each: "!ls", "%%bash", "os.system()"
    dynamic: str  # how it reads the namespace without naming variables: "globals()", or ""
    sets: tuple[str, ...] = ()  # attributes it assigns or deletes, of dotted names: "np.flag", "a.b.c"


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names and attributes, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)) is not None:
        return f"{base}.{node.attr}"
    return None


def effects_of(tree: ast.AST) -> Effects:
    finder = _Finder()
    finder.visit(tree)
    return Effects(tuple(dict.fromkeys(finder.shell)), finder.dynamic, tuple(dict.fromkeys(finder.sets)))


def _in_namespace(line: str | None) -> bool:
    """Whether ``%run LINE`` runs its script in the notebook's namespace: ``-i``, alone or among other flags
    (``-it``), as IPython reads them; a line that is not a plain string (an f-string), or does not read, may."""
    if line is None:
        return True
    try:
        options, _ = getopt.getopt(shlex.split(line), "nidtN:b:pD:l:rs:T:em:G")
    except (getopt.GetoptError, ValueError):
        return True
    return any(option == "-i" for option, _ in options)


_NAMESPACE_READERS = frozenset({"ev", "ex", "user_ns", "user_global_ns", "run_cell", "run_code", "run_cell_async"})


class _Finder(ast.NodeVisitor):
    """Shell commands anywhere in the cell, reads of the whole namespace (``globals()``; at top level also
    ``locals()``, ``vars()`` and ``dir()`` with no argument), and the attributes of dotted names its own
    lines set (``np.flag = 1``, ``del cfg.x``, ``setattr(torch.backends.cudnn, "benchmark", True)``; not in
    a function, whose names may be its parameters): which of them are attributes of modules is known only
    as the cell runs."""

    def __init__(self) -> None:
        self.shell: list[str] = []
        self.dynamic = ""
        self.sets: list[str] = []
        self._depth = 0  # inside a function, lambda or class: locals() is its own

    def visit_Call(self, node: ast.Call) -> None:
        call = ipython_call(node)
        if call is not None:
            method, args = call
            first = string_arg(args, 0)
            if method in ("system", "getoutput"):
                self.shell.append("!" + (first or "...").strip().split(" ")[0])
            elif method == "run_line_magic" and first in SHELL_LINE_MAGICS:
                self.shell.append(f"%{first}")
            elif method == "run_cell_magic" and first in SHELL_CELL_MAGICS:
                self.shell.append(f"%%{first}")
            elif method == "run_cell_magic":
                self._cell_magic(node)
            elif method == "run_line_magic" and first == "run" and _in_namespace(string_arg(args, 1)):
                self.dynamic = self.dynamic or "%run -i"  # (the script runs in the notebook's namespace)
            elif (code := line_magic_code(node)) is not None and code[1] is None:
                self.dynamic = self.dynamic or f"%{first}"  # (its code could not be told from its options)
        func = node.func
        if (self._depth == 0 and isinstance(func, ast.Name) and func.id in ("setattr", "delattr")
                and len(node.args) >= 2 and (target := _dotted(node.args[0]))
                and isinstance(name := node.args[1], ast.Constant) and isinstance(name.value, str)):
            self.sets.append(f"{target}.{name.value}")
        if (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                and func.attr in SHELL_FUNCTIONS.get(func.value.id, ())):
            self.shell.append(f"{func.value.id}.{func.attr}()")
        if isinstance(func, ast.Name) and not self.dynamic:
            if func.id == "globals" or (func.id in ("locals", "vars", "dir") and not node.args
                                        and not node.keywords and self._depth == 0):
                self.dynamic = f"{func.id}()"
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.ctx, (ast.Store, ast.Del)) and self._depth == 0 and (target := _dotted(node)) is not None:
            self.sets.append(target)  # (in a function, `model.n_ = 1` names its parameter, not the module)
        # `get_ipython().ev("x")`, `get_ipython().user_ns["x"]`: the namespace read through IPython's own API
        if not self.dynamic and node.attr in _NAMESPACE_READERS and isinstance(node.value, ast.Call):
            func = node.value.func  # (`get_ipython()`, `IPython.get_ipython()`)
            if getattr(func, "id", None) == "get_ipython" or getattr(func, "attr", None) == "get_ipython":
                self.dynamic = f"get_ipython().{node.attr}"
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # `sys.modules["__main__"]`: the notebook's namespace, as a module
        if (not self.dynamic and isinstance(node.value, ast.Attribute) and node.value.attr == "modules"
                and isinstance(node.slice, ast.Constant) and node.slice.value == "__main__"):
            self.dynamic = "sys.modules['__main__']"
        self.generic_visit(node)

    def _cell_magic(self, node: ast.Call) -> None:
        """A ``%%time`` body is looked through as the cell's own code; a text body (``%%html``) reads nothing;
        any other cell magic (``%%timeit``, an extension's ``%%sql``), or a body that is not plain Python,
        reads the namespace in ways no analysis lists."""
        found = cell_magic(node)
        name = found[0] if found else "?"
        if name in TEXT_CELL_MAGICS:
            return
        if found is not None and name in CODE_CELL_MAGICS:
            try:
                self.visit(ast.parse(found[2]))
                return
            except SyntaxError:  # (IPython syntax inside: `!ls`, `%matplotlib`)
                pass
        self.dynamic = self.dynamic or f"%%{name}"

    def _scope(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = visit_ClassDef = _scope
