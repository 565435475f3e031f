"""What one of the user's modules that is not imported yet would bring in, read from source files without
running anything: the modules of the user's it imports (anywhere in it: at its top, in its functions), those
they import in turn, and the parent packages an import of it runs first.

A key names such a module by its source (``fingerprint_source.imported``), since importing it there would run
it before what comes before the import in the cell. Its source alone misses what it uses of the user's other
modules: one imported already (by an earlier cell) counts by what it holds, as if the step read it; one not
imported yet, by its source in turn.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import sys
import types

from .fingerprint_source import UserModuleName, imported, is_user_code, module_file

__all__ = ["reached", "used_files"]


def reached(root: UserModuleName) -> tuple[list[UserModuleName], list[types.ModuleType]]:
    """The user's modules not imported yet that importing ``root`` would run (itself first), and the user's
    modules already imported that they import; each once, in a stable order."""
    pending = [root]
    found: dict[str, UserModuleName] = {}
    modules: dict[str, types.ModuleType] = {}
    while pending:
        module = pending.pop(0)
        if str(module) in found:
            continue
        found[str(module)] = module
        pending += _parents(module)
        for name in _imports(module):
            value = imported(name, None)
            if isinstance(value, UserModuleName):
                pending.append(value)
            elif isinstance(value, types.ModuleType) and is_user_code(value.__name__, module_file(value)):
                modules.setdefault(value.__name__, value)
    return list(found.values()), [modules[n] for n in sorted(modules)]


def used_files(names: list[str]) -> list[str]:
    """The source files of the user's modules that the (imported) modules ``names`` import, those imported in
    turn, and their own: what a run that imported them used, whether or not it imported it itself (a module it
    imported by a name made as it ran, or found only once it put a folder on ``sys.path``, that imports one an
    earlier cell imported)."""
    seen, files, pending = set(names), [], list(names)
    while pending:
        module = sys.modules.get(pending.pop(0))
        path = getattr(module, "__file__", None)
        if module is None or not isinstance(path, str) or not is_user_code(module.__name__, path):
            continue
        files.append(path)
        for name in _imports(UserModuleName(module.__name__, path)):
            if name not in seen and name in sys.modules:
                seen.add(name)
                pending.append(name)
    return files


def _parents(module: UserModuleName) -> list[UserModuleName]:
    """The packages above ``module`` that are not imported yet (importing it runs their ``__init__`` first)."""
    parts = str(module).split(".")
    found = (imported(".".join(parts[:depth]), None) for depth in range(1, len(parts)))
    return [p for p in found if isinstance(p, UserModuleName)]


def _imports(module: UserModuleName) -> list[str]:
    """The absolute names ``module``'s source imports, and of ``from x import y``, ``x.y`` too when it is a
    module of the user's (a submodule imported by name)."""
    if module.origin is None:
        return []
    package = str(module) if os.path.basename(module.origin) == "__init__.py" else str(module).rpartition(".")[0]
    names: list[str] = []
    for base, level, fromlist in _parse(module.origin):
        try:
            absolute = importlib.util.resolve_name("." * level + base, package) if level else base
        except (ImportError, ValueError):  # (a relative import beyond the top: it fails when run too)
            continue
        names.append(absolute)
        for attribute in fromlist if _may_hold_modules(absolute) else ():
            candidate = f"{absolute}.{attribute}"
            value = imported(candidate, None) if attribute != "*" else None
            if isinstance(value, types.ModuleType) or isinstance(value, UserModuleName) and value.origin is not None:
                names.append(candidate)
    return names


def _may_hold_modules(name: str) -> bool:
    """Whether ``from name import x`` may import a module ``name.x`` of the user's: ``name`` is their package."""
    value = imported(name, None)
    return isinstance(value, UserModuleName) or isinstance(value, types.ModuleType) and \
        hasattr(value, "__path__") and is_user_code(value.__name__, module_file(value))


def _parse(path: str) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """(module, level, names) of each import in the file at ``path``; read again only when it changed."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return _parsed(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=1024)
def _parsed(path: str, mtime_ns: int, size: int) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple((alias.name, 0, ()) for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for alias in node.names) + \
        tuple((node.module or "", node.level, tuple(a.name for a in node.names))
              for node in ast.walk(tree) if isinstance(node, ast.ImportFrom))
