"""Where code comes from: the user's own, or an installed library's (and which version of it).

The user's code (the notebook, and files outside the interpreter's, site-packages' and nbcache's own
folders) is fingerprinted by what it does; a library counts by its name and version only, so that reading
it costs nothing and upgrading it is noticed. ``observe`` uses the same line to tell the user's files from
libraries' when it watches what a step reads.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import site
import sys
import sysconfig
import types
from typing import Any

__all__ = [
    "MISSING", "LibraryName", "UserModuleName", "imported", "imported_module", "is_user_code", "is_user_file",
    "library_path", "library_roots", "module_file", "package_version", "users_class",
]

MISSING = object()
"""A name that resolves to nothing (unbound, or an import of a module that does not exist)."""


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages() if hasattr(site, "getsitepackages") else [])
    roots.add(site.getusersitepackages())
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots))


_OWN_PACKAGE = __name__.partition(".")[0]
_LIBRARY_ROOTS = (*_library_roots(), os.path.join(os.path.dirname(os.path.realpath(__file__)), ""))


def library_roots() -> tuple[str, ...]:
    """The folders of the interpreter, of installed packages and of nbcache itself, each ending in a
    separator: code found there is not the user's."""
    return _LIBRARY_ROOTS


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str | None) -> bool:
    """Code in a file outside the interpreter, site-packages and nbcache itself is the user's; so is code
    with a pseudo file name such as a notebook cell's ``<ipython-input-...>``."""
    if not filename or filename.startswith("<frozen"):
        return False
    return not os.path.realpath(filename).startswith(_LIBRARY_ROOTS)


@functools.lru_cache(maxsize=4096)
def library_path(filename: str) -> str:
    """A library file's path below its root (``contextlib.py``), the same in every environment."""
    real = os.path.realpath(filename)
    for root in _LIBRARY_ROOTS:
        if real.startswith(root):
            return real[len(root):]
    return os.path.basename(filename)


def is_user_code(module_name: str | None, filename: str | None) -> bool:
    """True for code the user wrote: the notebook (``__main__``) or files outside installed packages."""
    if module_name == "__main__":
        return True
    if module_name and module_name.partition(".")[0] == _OWN_PACKAGE:
        return False
    return is_user_file(filename)


@functools.lru_cache(maxsize=None)
def _distributions() -> dict[str, list[str]]:
    import importlib.metadata  # only when a version is looked up: it costs half of `import nbcache`

    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=1024)
def package_version(module_name: str) -> str:
    """``name==version`` of the installed distribution providing a module (or its ``__version__``)."""
    top = module_name.partition(".")[0]
    if top in sys.stdlib_module_names or top in ("builtins", "__main__"):
        return top  # the Python version is in every key already
    version = getattr(sys.modules.get(top), "__version__", None)
    if isinstance(version, str):
        return f"{top}=={version}"
    # the distribution usually has the module's name; mapping all of them is slow, so it comes last
    import importlib.metadata

    try:
        return f"{top}=={importlib.metadata.version(top)}"
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in _distributions().get(top, []):  # (half a second the first time: only when needed)
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return f"{top}==?"


def users_class(kind: type) -> bool:
    """Whether the class ``kind`` was defined by the user (in the notebook, or a module of theirs)."""
    module = getattr(kind, "__module__", None)
    return is_user_code(module, getattr(sys.modules.get(module or ""), "__file__", None))


def module_file(module: types.ModuleType) -> str | None:
    return getattr(module, "__file__", None)


def imported(name: str, package: str | None) -> Any:
    """The module an import inside a function body (or a cell) names, without running an import for it."""
    try:
        name = importlib.util.resolve_name(name, package)  # `from .core import clean`
    except (ImportError, ValueError):
        return MISSING
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:  # only the top-level package is looked up: finding a submodule would import its parents
        spec = importlib.util.find_spec(name.partition(".")[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return MISSING
    where = spec.origin  # (a namespace package, a folder without __init__.py, has none: where that folder is)
    if where in (None, "namespace"):
        where = next(iter(spec.submodule_search_locations or ()), None)
    if not is_user_code(name, where):
        return LibraryName(name)
    # Not imported here: importing runs the module, which must run when the body imports it, after what comes
    # before that import (an environment variable set, a print, a file written). Its source counts, read without
    # running anything (``sourceimports.py``); and every module of the user's the run imports is a file it read.
    return UserModuleName(name, _source_of(name, spec))


def _source_of(name: str, spec: Any) -> str | None:
    """The file of module ``name`` (its top-level package's ``spec``), looked up in its parents' folders
    without importing them; None if it cannot be told."""
    parts = name.split(".")
    for depth in range(1, len(parts)):
        locations = spec.submodule_search_locations if spec is not None else None
        if not locations:
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth + 1]), list(locations))
        except (ImportError, ValueError):
            return None
    return spec.origin if spec is not None and isinstance(spec.origin, str) and os.path.isfile(spec.origin) else None


def imported_module(name: str, package: str | None = None) -> Any:
    """What ``import name`` gives, for hashing: the module if it is imported, an installed module's name
    (counted by name and version, without importing it), the name of one of the user's own modules not imported
    yet (``UserModuleName``), or None when there is no such module."""
    module = imported(name, package)
    return None if module is MISSING else module


class LibraryName(str):
    """An installed module not imported yet: it counts by name and version, like an imported one."""


class UserModuleName(str):
    """One of the user's own modules, not imported yet: it counts by what importing it would run and use, read
    from its source file (``origin``, None if not found) and those of the user's modules it imports
    (``sourceimports.py``). (Imported, it counts by what it holds: a cell run again in the same kernel after its
    first run imported the module makes another key, once.)"""

    origin: str | None

    def __new__(cls, name: str, origin: str | None = None) -> UserModuleName:
        made = super().__new__(cls, name)
        made.origin = origin
        return made
