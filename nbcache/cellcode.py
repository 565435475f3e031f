"""What a notebook cell reads and binds, and a digest of its code that ignores comments and layout.

Pure analysis of Python source (already passed through IPython's input transformations, so ``!ls`` and
``%time`` lines are plain calls by now); no IPython here. A name is *read* when the cell loads it before
binding it at top level, or when a function, lambda, class or comprehension of the cell refers to it
without binding it itself (it will look it up in the notebook's namespace when called). A name is *bound*
by top-level assignment, augmented or annotated assignment, ``for``, ``with ... as``, ``import``, ``def``,
``class``, a walrus, or ``except ... as``.
"""

from __future__ import annotations

import ast
import builtins
from dataclasses import dataclass

import xxhash

__all__ = ["CellCode", "analyse_cell"]

_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class CellCode:
    digest: str  # of the syntax tree: comments, blank lines and formatting do not change it
    reads: tuple[str, ...]  # in order of first use
    binds: tuple[str, ...]  # in order of first binding

    def default_name(self) -> str:
        """A name for the step that stays the same while the cell keeps binding the same variables."""
        public = [n for n in self.binds if not n.startswith("_")] or list(self.binds)
        if not public:
            return f"cell-{self.digest[:8]}"
        shown = ", ".join(public[:3])
        return shown + (", ..." if len(public) > 3 else "")


def analyse_cell(source: str) -> CellCode:
    """Analyse a cell; raises SyntaxError for code that does not parse."""
    tree = ast.parse(source)
    digest = xxhash.xxh3_128(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
    flow = _Flow()
    flow.statements(tree.body)
    return CellCode(digest, tuple(flow.reads), tuple(flow.binds))


class _Flow:
    """Walks top-level statements in execution order; compound statements bind before their bodies."""

    def __init__(self) -> None:
        self.reads: dict[str, None] = {}
        self.binds: dict[str, None] = {}

    def read(self, node: ast.AST | None) -> None:
        if node is not None:
            for name in _free_names(node):
                if name not in self.binds:
                    self.reads.setdefault(name)

    def bind(self, node: ast.AST | None) -> None:
        if node is not None:
            for name in _bound_names(node):
                self.binds.setdefault(name)

    def statements(self, body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, (ast.For, ast.AsyncFor)):
                self.read(st.iter)
                self.bind(ast.Assign(targets=[st.target], value=ast.Constant(None)))
                self.statements(st.body + st.orelse)
            elif isinstance(st, (ast.With, ast.AsyncWith)):
                for item in st.items:
                    self.read(item.context_expr)
                    if item.optional_vars is not None:
                        self.bind(ast.Assign(targets=[item.optional_vars], value=ast.Constant(None)))
                self.statements(st.body)
            elif isinstance(st, (ast.If, ast.While)):
                self.read(st.test)
                self.statements(st.body + st.orelse)
            elif isinstance(st, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                self.statements(st.body)
                for handler in st.handlers:
                    self.read(handler.type)
                    if handler.name:
                        self.binds.setdefault(handler.name)
                    self.statements(handler.body)
                self.statements(st.orelse + st.finalbody)
            elif (inner := _timed_code(st)) is not None:
                self.statements(inner)  # `%time x = f()` binds x like the plain statement would
            else:
                self.read(st)
                self.bind(st)


def _timed_code(st: ast.stmt) -> list[ast.stmt] | None:
    """The statements of ``%time CODE``, which IPython turns into a call with CODE as a string."""
    call = st.value if isinstance(st, (ast.Expr, ast.Assign)) else None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == "run_line_magic" and len(call.args) == 2
            and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in call.args)
            and call.args[0].value == "time"):
        return None
    try:
        return ast.parse(call.args[1].value).body
    except SyntaxError:
        return None


def _bound_names(statement: ast.stmt) -> list[str]:
    """Names a top-level statement binds in the notebook's namespace."""
    collector = _Binder()
    collector.visit(statement)
    return collector.names


class _Binder(ast.NodeVisitor):
    """Collects bindings in the current scope, without entering nested scopes."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.names.append(node.id)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.names.append(node.name)
        for expr in [*node.decorator_list, *_defaults(node.args)]:
            self.visit(expr)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.names.append(node.name)
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)

    def visit_Lambda(self, node: ast.Lambda) -> None:
        pass

    def visit_ListComp(self, node: ast.AST) -> None:
        pass  # comprehension variables are local to the comprehension; walrus targets are rare here

    visit_SetComp = visit_DictComp = visit_GeneratorExp = visit_ListComp

    def visit_Import(self, node: ast.Import | ast.ImportFrom) -> None:
        for alias in node.names:
            if alias.name != "*":
                self.names.append(alias.asname or alias.name.partition(".")[0])

    visit_ImportFrom = visit_Import

    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.name:
            self.names.append(node.name)
        self.generic_visit(node)


def _defaults(args: ast.arguments) -> list[ast.expr]:
    return [*args.defaults, *(d for d in args.kw_defaults if d is not None)]


def _free_names(node: ast.AST) -> list[str]:
    """Names ``node`` loads from the enclosing (notebook) scope, in order of appearance."""
    reader = _Reader()
    reader.visit(node)
    return [n for n in reader.names if n not in _BUILTINS or n in reader.shadowed]


class _Reader(ast.NodeVisitor):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.shadowed: set[str] = set()

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.append(node.id)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):  # `x += 1` reads x first
            self.names.append(node.target.id)
        self.generic_visit(node)

    def _nested(self, node: ast.AST, local: set[str], body: list[ast.AST]) -> None:
        inner = _Reader()
        for part in body:
            inner.visit(part)
        bound = set(local)
        for part in body:
            bound.update(_scope_bindings(part))
        self.names.extend(n for n in inner.names if n not in bound)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *_defaults(node.args)]:
            self.visit(expr)
        self._nested(node, _parameters(node.args), list(node.body))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _defaults(node.args):
            self.visit(expr)
        self._nested(node, _parameters(node.args), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        self._nested(node, set(), list(node.body))

    def _comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        generators = node.generators  # type: ignore[attr-defined]
        self.visit(generators[0].iter)  # evaluated in the enclosing scope
        targets = set()
        for gen in generators:
            targets.update(_scope_bindings(ast.Assign(targets=[gen.target], value=ast.Constant(None))))
        body: list[ast.AST] = [*elements, *(g.iter for g in generators[1:]),
                               *(cond for g in generators for cond in g.ifs)]
        self._nested(node, targets, body)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


def _parameters(args: ast.arguments) -> set[str]:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names


def _scope_bindings(node: ast.AST) -> list[str]:
    """Names bound in a nested scope by ``node`` (for telling its locals from the notebook's names)."""
    collector = _Binder()
    collector.visit(node)
    return collector.names
