"""Code fingerprints: what a function does, as opposed to where and how it is written.

A fingerprint is made from bytecode, never source text, so comments, blank lines, formatting and the
function's position in its file or cell change nothing, and functions defined in a notebook need no source
file. Line numbers, file names and line tables are left out; constants, names, flags, the exception table,
default arguments, closure values and nested functions and lambdas are in. An unreferenced docstring is out.

It follows what the function reads. Every global name the bytecode loads (with the attribute chain after
it, ``utils.clean`` or ``np.mean``) is resolved when the fingerprint is taken:
- the user's own functions and classes (defined in the notebook or in a file outside the interpreter's
  and site-packages' folders) are fingerprinted in turn, transitively; mutual recursion ends in a marker;
- modules and functions of installed packages count by name and package version, not by their code;
- any other global value is content-hashed, so ``SCALE = 2`` changed to ``3`` changes the fingerprint.

The static part of each code object is computed once and kept in a weak cache (``fingerprint_code``);
globals are resolved on every call because a notebook rebinds them between calls (``fingerprint_handlers``,
whose ``CODE`` handler table is also what ``hash_value`` hashes with). Which code is the user's and which
version a library has is ``fingerprint_source``'s.
"""

from __future__ import annotations

import types
from typing import Any, Callable

from .fingerprint_code import code_info
from .fingerprint_handlers import CODE, feed_code, label
from .fingerprint_source import (imported_module, is_user_code, is_user_file, library_path, library_roots, module_file,
                                 package_version)
from .hash_core import Unhashable, Walk, feed, new_hasher

__all__ = [
    "CODE", "fingerprint", "fingerprint_parts", "imported_module", "is_user_code", "library_roots",
    "package_version", "prepare", "read_digest",
]


def fingerprint(func: Callable[..., Any]) -> str:
    """Return the transitive code fingerprint of a function, method, class or step, as 32 hex chars.

    It changes when the bytecode changes, or anything the code reads: the user's own helpers (followed
    however deep), global values (by content), installed libraries (by name and version). Comments,
    docstrings, formatting and moving the function do not change it.

    Raises:
        TypeError: ``func`` is not callable, or a default or closure value in it cannot be hashed.
    """
    return fingerprint_parts(func)[0]


def fingerprint_parts(func: Callable[..., Any], walk: Walk | None = None) -> tuple[str, dict[str, str]]:
    """The fingerprint and, for each thing it depends on, that thing's own digest.

    The parts name functions as ``name()`` and global values by their name; comparing two runs' parts says
    which helper or global changed, two calls deep or more. ``walk``, a walk over ``CODE`` (such as a
    ``hashing.Walk()``), is the caller's to read afterwards (``globals_reader``); a new one if None.
    """
    if not callable(func):
        raise TypeError(f"fingerprint() takes a function, method or class, not {type(func).__name__}")
    func = getattr(func, "_nbcache_function_", func)  # a step: the fingerprint that goes into its keys
    parts: dict[str, str] = {}
    if walk is None:
        walk = Walk(CODE)
    walk.parts = parts
    h = new_hasher()
    try:
        if isinstance(func, types.FunctionType):
            feed_code(func, h, walk)  # the function asked about counts by its code, wherever it lives
        else:
            feed(func, h, walk)
    except Unhashable as e:  # only a default or closure value can be unhashable; say which
        raise TypeError(f"cannot fingerprint {label(func)}: {e.type_name} in it cannot be hashed") from None
    except RecursionError:
        raise TypeError(f"cannot fingerprint {label(func)}: what it reads is nested too deeply") from None
    except Exception as exc:  # a value it reads whose pickle protocol misbehaves
        raise TypeError(f"cannot fingerprint {label(func)}: {type(exc).__name__}: {exc}") from None
    return h.hexdigest(), dict(sorted(parts.items()))


def read_digest(value: Any) -> str | None:
    """The digest ``fingerprint_parts`` gives a global value that code reads, in its parts (None: it cannot
    be hashed): a cell compares it after its run, to find the globals its functions changed in place."""
    sub = new_hasher()
    try:
        feed(value, sub, Walk(CODE))
    except Exception:
        return None
    return sub.digest().hex()


def _where_wrapped(func: types.FunctionType) -> None:
    """Where a library's function and the function it wraps, if any, have their code (both kept: the
    paths resolved ahead, so that a first call does not wait on the file system for them)."""
    library_path(func.__code__.co_filename)
    wrapped = getattr(func, "__wrapped__", None)
    if isinstance(wrapped, types.FunctionType):
        is_user_file(wrapped.__code__.co_filename)


PREPARE_AFTER_S = 0.005
"""How long after a step's definition ``prepare`` starts on the background thread: a call that comes sooner
(a module that defines steps and calls them at once) takes it back and does the analysis itself, rather than
wait for it while the two threads take turns at the interpreter lock; a call later (after a history read, a
notebook's next cell) finds it done, or waits for what is left of it."""


def prepare(func: Callable[..., Any], limit: int = 256) -> None:
    """Do ahead what a function's first fingerprint needs and keeps (a step's, on a background thread, so its
    first call in a process finds it done): the analysis of its code and of the user's functions it reads,
    and the versions of the libraries they name. Reads globals as they are, runs nothing of the user's,
    hashes no value, never raises. It does no more than the call would (hashing plugins load when a value
    first needs one), so a call waiting for it never waits longer than doing it itself would take."""
    seen: set[int] = set()
    todo = [getattr(func, "_nbcache_function_", func)]
    try:
        while todo and len(seen) < limit:
            f = todo.pop()
            code = getattr(f, "__code__", None)
            if not isinstance(code, types.CodeType) or id(code) in seen:
                continue
            seen.add(id(code))
            namespace = getattr(f, "__globals__", None) or {}
            for chain in code_info(code).global_chains:
                target = namespace.get(chain[0]) if isinstance(namespace, dict) else None
                if isinstance(target, types.FunctionType):
                    if is_user_code(target.__module__, target.__code__.co_filename):
                        todo.append(target)
                        continue
                    _where_wrapped(target)
                if isinstance(target, types.ModuleType):
                    module = target.__name__
                    is_user_code(module, module_file(target))
                else:
                    module = getattr(target, "__module__", None)
                if isinstance(module, str):
                    package_version(module)
    except Exception:  # (the call does it again, and says what fails)
        pass
