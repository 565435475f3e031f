"""The source of the functions and classes a ``%%step`` cell defined, given back on a hit.

A function defined in a cell names, as its file, the name the kernel gave that cell's text when it ran
(ipykernel: ``/tmp/ipykernel_<pid>/<hash>.py``), and the kernel keeps the text under that name in
``linecache``: that is where tracebacks, ``inspect.getsource`` and warnings read a notebook function's lines.
A function restored from the cache in a new kernel names the cell file of the kernel that ran the cell, whose
text this kernel never had: a traceback through it showed no line, ``inspect.getsource`` raised, a warning
showed no source line.

On a hit the shell caches the cell's text as it caches any cell it runs (``compile.cache``: the name it
gives and the ``In[n]`` a traceback shows: ``cache_cell``), and every function the cell defined, and every
method of a class it defined, is pointed at that name: ``__code__`` replaced by the same code with the new
file name (nested code too: lambdas, inner functions, comprehensions). A function a decorator wrapped counts
by ``__wrapped__``, as ``inspect`` finds it. A function is the cell's only if its code names a file no one
has here (not a module's, which exists, nor ``<string>``, code a library made) and the cell defines that
very name where the code starts (``def name`` there or past the decorators there, a ``lambda`` on that
line): a function of a module or of another cell that the cell bound keeps what it has. After an edit of
comments or layout above a function (the key is the same), its lines no longer match: it keeps no source,
as before. The code's file name counts in no key (``fingerprint_handlers.py`` hashes what code does), so
this changes no step's key.
"""

from __future__ import annotations

import linecache
import os
import re
import types
from typing import Any, Iterable

from .codestate import functions_of

__all__ = ["cache_cell", "give_source", "run_as_step_cell"]


def cache_cell(shell: Any, cell: str, source: str) -> str | None:
    """Cache the text of the ``%%step`` cell served now (``source``: as the shell transformed it) as the shell
    caches a cell it runs, under the number of that cell (as ``run_as_step_cell`` does for a run): the name its
    code's file is given. None if the shell could not (never raises)."""
    try:
        return shell.compile.cache(source, running_number(shell), raw_code=cell)
    except Exception:  # (a shell of another kind): tracebacks show what they did before
        return None


def run_as_step_cell(shell: Any, cell: str) -> Any:
    """``shell.run_cell(cell)``, kept out of the history, its code cached under the number of the ``%%step``
    cell running it: the shell has counted on from that number as it started it (IPython 9), and would name
    the body's tracebacks (a syntax error too) after the next cell, where the same notebook without nbcache
    names this one."""
    compiler, number = shell.compile, running_number(shell)
    own = "cache" in vars(compiler)
    original = compiler.cache

    def cache(transformed_code: str, _number: int = 0, raw_code: str | None = None) -> str:
        return original(transformed_code, number, raw_code=raw_code)

    compiler.cache = cache
    try:
        return shell.run_cell(cell, store_history=False)
    finally:
        if own:
            compiler.cache = original
        else:
            del compiler.cache


def running_number(shell: Any) -> int:
    """The number of the cell the shell is running (``In[n]``): the shell counts on from it as it starts."""
    running = getattr(shell.displayhook, "exec_result", None)  # (the result of the cell being run)
    number = getattr(running, "execution_count", None)
    return number if isinstance(number, int) else shell.execution_count


def give_source(shell: Any, cell: str, source: str, values: Iterable[Any]) -> None:
    """Point the functions among ``values`` (and the methods of the classes among them) that the cell
    ``cell`` (``source``: as the shell transformed it) defined in another kernel at its text, cached in this
    one's ``shell`` as the cell it runs. Never raises: what it cannot do, a hit does without."""
    try:
        functions = list({id(f): f for v in values for f in functions_of(v) if _lost(f.__code__.co_filename)}.values())
        if not functions:
            return
        lines = source.splitlines()
        mine = [f for f in functions if _defined_at(lines, f.__code__)]
        name = cache_cell(shell, cell, source) if mine else None
        for function in mine if name is not None else ():
            function.__code__ = _renamed(function.__code__, function.__code__.co_filename, name)
    except Exception:  # (a value whose attributes raise, a shell of another kind)
        return


def _lost(filename: str) -> bool:
    """Whether code names a file whose text no one has here: a cell of another kernel (not a module's file,
    which exists, nor ``<string>``, the code a library made with ``exec``, as dataclasses do)."""
    if filename in linecache.cache or os.path.exists(filename):
        return False
    return not filename.startswith("<") or filename.startswith("<ipython-input-")


_DEF = re.compile(r"\s*(?:async\s+)?def\s+(\w+)")


def _defined_at(lines: list[str], code: types.CodeType) -> bool:
    """Whether the cell's line where ``code`` starts defines it: ``def name`` there, or after the decorators
    starting there; a lambda on it."""
    at = code.co_firstlineno - 1
    if not 0 <= at < len(lines):
        return False
    if code.co_name == "<lambda>":
        return "lambda" in lines[at]
    while at < len(lines) - 1 and lines[at].lstrip().startswith("@"):
        at += 1
    found = _DEF.match(lines[at])
    return found is not None and found.group(1) == code.co_name


def _renamed(code: types.CodeType, old: str, new: str) -> types.CodeType:
    consts = tuple(_renamed(c, old, new) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=new if code.co_filename == old else code.co_filename, co_consts=consts)
