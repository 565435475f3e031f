"""Which names a notebook cell reads from the notebook, and which it binds there: its inputs and outputs.

Pure analysis of a cell's syntax tree (already passed through IPython's input transformations, so ``!ls``
and ``%time`` lines are plain calls by now); no IPython here. A name is *read* when the cell loads it
before binding it at top level, or when a function, lambda, class or comprehension of the cell refers to
it without binding it itself (it will look it up in the notebook's namespace when called), or when a
``df.query``/``df.eval`` string names it (``"tip > @limit"``). A name is *bound* by top-level assignment,
augmented or annotated assignment, ``for``, ``with ... as``, ``import``, ``def``, ``class``, a walrus,
``except ... as``, a ``match`` pattern, or by calling a function of the cell that declares it ``global``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from .magiclines import cell_magic_code, expanded, timed_code

__all__ = ["Flow", "flow_of"]


@dataclass(frozen=True)
class Flow:
    reads: tuple[str, ...]  # in order of first use
    binds: tuple[str, ...]  # in order of first binding, including names bound only on some paths
    imports: tuple[str, ...]  # modules imported ("pkg.mod", or ".mod" for a relative import)


def flow_of(body: list[ast.stmt]) -> Flow:
    """The reads, binds and imports of a cell's top-level statements. The names of forward references in
    annotations (``item: "Item"``, which pydantic resolves as the class is made) are reads too, unless the
    cell binds them (a class naming itself, or one defined below it)."""
    walker = _Walker()
    walker.statements(body)
    for name in walker.forward:
        if name not in walker.binds:
            walker.reads.setdefault(name)
    return Flow(tuple(walker.reads), tuple(walker.binds), tuple(walker.imports))


class _Walker:
    """Walks top-level statements in execution order; compound statements bind before their bodies.

    A name read before the cell has certainly bound it is an input. Within a block, a name bound earlier in
    that block is certainly bound for the rest of it: the target of ``for tree in forest:`` inside the loop
    body, ``m`` after ``m = fit()`` in the same branch. Leaving a block that may not run (a branch, a loop
    body, a ``try``), its bindings are no longer certain, except those both branches of an ``if`` make:
    ``if retrain: model = fit()`` followed by ``model.predict(X)`` reads the notebook's ``model``.
    """

    def __init__(self) -> None:
        self.reads: dict[str, None] = {}
        self.binds: dict[str, None] = {}
        self.certain: set[str] = set()
        self.imports: dict[str, None] = {}
        self.forward: dict[str, None] = {}

    def read(self, node: ast.AST | None) -> None:
        if node is None:
            return
        reader = _Reader()
        reader.visit(node)
        self.forward.update(dict.fromkeys(reader.forward))
        for name in reader.names:
            if name not in self.certain:
                self.reads.setdefault(name)
        for name in reader.global_writes:  # `global x` in a function of the cell: calling it binds x
            self.binds.setdefault(name)

    def bind(self, node: ast.AST | None) -> None:
        if node is None:
            return
        for name in _bound_names(node):
            self.binds.setdefault(name)
            self.certain.add(name)
        if isinstance(node, ast.Import):
            self.imports.update(dict.fromkeys(alias.name for alias in node.names))
        elif isinstance(node, ast.ImportFrom):
            self.imports.setdefault("." * node.level + (node.module or ""))

    def target(self, target: ast.expr) -> None:
        self.bind(ast.Assign(targets=[target], value=ast.Constant(None)))

    def block(self, body: list[ast.stmt], *, bound: tuple[ast.expr | str, ...] = ()) -> set[str]:
        """Walk a block that may not run; return what is certainly bound at its end. The names it binds
        stay outputs, but stop being certain after it."""
        outside = set(self.certain)
        for target in bound:
            if isinstance(target, str):
                self.binds.setdefault(target)
                self.certain.add(target)
            else:
                self.target(target)
        self.statements(body)
        inside, self.certain = self.certain, outside
        return inside

    def statements(self, body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, (ast.Expr, ast.Assign, ast.AugAssign, ast.AnnAssign)):
                for expr in expanded(st):  # `%%writefile $name`: IPython reads name as it runs the magic
                    self.read(expr)
            if isinstance(st, (ast.For, ast.AsyncFor)):
                self.read(st.iter)
                self.block(st.body, bound=(st.target,))
                self.block(st.orelse)
            elif isinstance(st, (ast.With, ast.AsyncWith)):
                for item in st.items:
                    self.read(item.context_expr)
                    if item.optional_vars is not None:
                        self.target(item.optional_vars)
                if any(_suppresses(item.context_expr) for item in st.items):
                    self.block(st.body)  # `with suppress(KeyError): y = cfg["y"]` may stop before binding y
                else:
                    self.statements(st.body)
            elif isinstance(st, ast.If):
                self.read(st.test)
                both = self.block(st.body) & self.block(st.orelse)
                self.certain |= both
            elif isinstance(st, ast.While):
                self.read(st.test)
                self.block(st.body)
                self.block(st.orelse)
            elif isinstance(st, (ast.Try, getattr(ast, "TryStar", ast.Try))):
                self.block(st.body + st.orelse)
                for handler in st.handlers:
                    self.read(handler.type)
                    self.block(handler.body, bound=(handler.name,) if handler.name else ())
                self.statements(st.finalbody)
            elif isinstance(st, ast.Match):
                self.read(st.subject)
                for case in st.cases:
                    names = tuple(n.name for n in ast.walk(case.pattern)
                                  if isinstance(n, (ast.MatchAs, ast.MatchStar)) and n.name)
                    names += tuple(n.rest for n in ast.walk(case.pattern) if isinstance(n, ast.MatchMapping) and n.rest)
                    self.read(case.pattern)  # `case cfg.HIGH:`, `case Point(x=0):` read cfg and Point
                    self.read(case.guard)
                    self.block(case.body, bound=names)
            elif (inner := timed_code(st)) is not None:
                self.statements(inner)  # `%time x = f()` binds x like the plain statement would
            elif (inner := timed_code(st, ("timeit",))) is not None:
                for statement in inner:  # `%timeit f(x)` reads x, and binds nothing (its code runs in a function)
                    self.read(statement)
            elif (inner := cell_magic_code(st)) is not None:
                self.statements(inner)  # a `%%time` cell's body reads and binds as the cell would
            else:
                self.read(st)
                self.bind(st)


_SUPPRESSING = frozenset({"suppress", "raises", "assertRaises", "assertRaisesRegex", "assertWarns"})


def _suppresses(expr: ast.expr) -> bool:
    """A context manager that swallows exceptions, so its body may stop halfway and the cell go on."""
    func = expr.func if isinstance(expr, ast.Call) else expr
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in _SUPPRESSING


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

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:  # `x: int` alone declares x; it binds nothing
            self.visit(node.target)
            self.visit(node.value)

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


class _Reader(ast.NodeVisitor):
    """Names a piece of code loads from the enclosing (notebook) scope, in order of appearance, and the
    names its functions declare ``global`` (and so may bind in the notebook when called)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.global_writes: set[str] = set()
        self.forward: list[str] = []  # the names in forward references (string annotations)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            self.names.append(node.id)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._forward(node.annotation)
        self.generic_visit(node)

    def _forward(self, annotation: ast.expr) -> None:
        """``"Item"``, ``"list[Item]"``: the names a string annotation would read if evaluated."""
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
            try:
                parsed = ast.parse(annotation.value.strip(), mode="eval")
            except (SyntaxError, ValueError):  # (a comment in an annotation: no reference)
                return
            self.forward += [n.id for n in ast.walk(parsed) if isinstance(n, ast.Name)]

    def visit_Call(self, node: ast.Call) -> None:
        """``df.query("tip > @limit")`` and ``df.eval(...)`` read ``limit`` from the caller's variables."""
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("query", "eval") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            self.names.extend(re.findall(r"@([A-Za-z_]\w*)", node.args[0].value))
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if isinstance(node.target, ast.Name):  # `x += 1` reads x first
            self.names.append(node.target.id)
        self.generic_visit(node)

    def _nested(self, local: set[str], body: list[ast.AST]) -> None:
        inner = _Reader()
        for part in body:
            inner.visit(part)
        declared = {name for part in body for node in ast.walk(part) if isinstance(node, ast.Global)
                    for name in node.names}
        bound = set(local)
        for part in body:
            bound.update(_scope_bindings(part))
        bound -= declared
        self.names.extend(n for n in inner.names if n not in bound)
        self.global_writes |= declared | inner.global_writes
        self.forward += inner.forward

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for expr in [*node.decorator_list, *_defaults(node.args), *_annotations(node)]:
            self.visit(expr)  # (annotations too: evaluated as the def runs, unless a cell imported
            # `from __future__ import annotations`, when reading them only makes a change re-run the cell)
        for annotation in _annotations(node):
            self._forward(annotation)
        self._nested(_parameters(node.args), list(node.body))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for expr in _defaults(node.args):
            self.visit(expr)
        self._nested(_parameters(node.args), [node.body])

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        """Names bound in a class body are visible to the rest of the body, but not inside its methods."""
        for expr in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(expr)
        class_bound: set[str] = set()
        for statement in node.body:
            inner = _Reader()
            inner.visit(statement)
            # a name bound in the class body is not seen by its methods, nor inside its lambdas and
            # comprehensions (but their first iterable): there, it is the notebook's
            unseen = isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or any(
                isinstance(n, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp))
                for n in ast.walk(statement))
            self.names.extend(n for n in inner.names if unseen or n not in class_bound)
            self.global_writes |= inner.global_writes
            self.forward += inner.forward
            class_bound.update(_scope_bindings(statement))

    def _comprehension(self, node: ast.AST, elements: list[ast.AST]) -> None:
        generators = node.generators  # type: ignore[attr-defined]
        self.visit(generators[0].iter)  # evaluated in the enclosing scope
        targets = set()
        for gen in generators:
            targets.update(_scope_bindings(ast.Assign(targets=[gen.target], value=ast.Constant(None))))
        body: list[ast.AST] = [*elements, *(g.iter for g in generators[1:]),
                               *(cond for g in generators for cond in g.ifs)]
        self._nested(targets, body)

    def visit_ListComp(self, node: ast.ListComp) -> None:
        self._comprehension(node, [node.elt])

    visit_SetComp = visit_GeneratorExp = visit_ListComp

    def visit_DictComp(self, node: ast.DictComp) -> None:
        self._comprehension(node, [node.key, node.value])


def _annotations(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.expr]:
    args = node.args
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a)]
    return [a.annotation for a in every if a.annotation is not None] + ([node.returns] if node.returns else [])


def _parameters(args: ast.arguments) -> set[str]:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names


_scope_bindings = _bound_names  # the same question, asked of a nested scope's statements
