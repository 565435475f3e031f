"""The static part of a fingerprint: what one code object does, computed once and kept in a weak cache.

Made from bytecode, never source text, so comments, blank lines, formatting and the code's position in
its file or cell change nothing. Line numbers, file names and line tables are left out; constants, names,
flags, the exception table and nested functions and lambdas are in. An unreferenced docstring is out.

Besides the digest, the analysis lists every global name the bytecode loads, with the attribute chain
after it (``utils.clean``, ``np.mean``), and every module an import inside the body names, with the chain read
after the local name it binds (``import pkg`` then ``pkg.config.K``): what the names resolve to is the dynamic
part, looked up on every call by ``fingerprint_handlers``.
"""

from __future__ import annotations

import ast
import dis
import re
import types
import weakref
from typing import NamedTuple

from .hash_base import BASE
from .hash_core import Walk, feed, feed_bytes_tagged, new_hasher

__all__ = ["IMPORT_PREFIX", "CodeInfo", "code_info"]

_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_LOCAL_LOADS = frozenset({"LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_DEREF"})
_LOCAL_STORES = frozenset({"STORE_FAST", "STORE_DEREF"})
_CONST_OPS = frozenset(dis.hasconst)
_EVALUATORS = frozenset({"eval", "exec", "query", "compile"})  # eval/exec/compile, pandas' query/eval, pd.eval
_NAME_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_METHOD"})
IMPORT_PREFIX = "import "
"""Marks a chain that names a module imported inside the body (``import utils``), not a global."""


class CodeInfo(NamedTuple):
    digest: bytes  # of the code itself (nested code included), none of the values its names resolve to
    global_chains: tuple[tuple[str, ...], ...]  # what it reads: ("np", "mean"), ("import utils", "clean")


_CODE_INFO: weakref.WeakKeyDictionary[types.CodeType, CodeInfo] = weakref.WeakKeyDictionary()


def code_info(code: types.CodeType) -> CodeInfo:
    """The analysis of ``code``, from the cache while the code object lives."""
    info = _CODE_INFO.get(code)
    if info is None:
        info = _CODE_INFO[code] = _analyse(code)
    return info


def string_reads(text: str) -> set[str]:
    """The names a string of code reads: one given to ``eval``/``exec``, or to pandas' ``query``/``eval``
    (where ``@limit`` is the caller's variable ``limit``); none if it is no code. A name the code binds
    itself, or a column's, is looked for among the globals too, and found unbound: no harm."""
    try:
        tree = ast.parse(re.sub(r"@(?=[A-Za-z_])", "", text))
    except (SyntaxError, ValueError):
        return set(re.findall(r"@([A-Za-z_]\w*)", text))  # (backquoted column names: only the @ names)
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def _analyse(code: types.CodeType) -> CodeInfo:
    chains: set[tuple[str, ...]] = set()
    chain: list[str] = []
    const_zero_used = False
    importing = ""
    from_list = False  # the import names what it imports (`from utils import clean`)
    bound: tuple[str, ...] = ()  # what the instruction before left to be bound to a local name, if it imported
    imports: dict[str, tuple[str, ...]] = {}  # local names bound by imports in the body, and what they name
    recent: list[dis.Instruction] = []
    for ins in dis.get_instructions(code):
        if ins.opcode in _CONST_OPS and ins.arg == 0:
            const_zero_used = True
        if ins.opname == "IMPORT_NAME":  # an import inside the body: `from utils import clean`
            level = recent[-2].argval if len(recent) >= 2 and recent[-2].opname == "LOAD_CONST" else 0
            from_list = bool(recent) and recent[-1].opname == "LOAD_CONST" and recent[-1].argval is not None
            importing = IMPORT_PREFIX + "." * (level or 0) + ins.argval
            chains.add((importing,))
            # (`import a.b` binds a; `import a.b as c`, a.b, through IMPORT_FROM)
            bound = (importing.partition(".")[0] if not level else importing,)
        elif ins.opname == "IMPORT_FROM" and importing:
            chains.add((importing, ins.argval))
            bound = (importing, ins.argval) if from_list else (importing,)
        elif ins.opname in _LOCAL_STORES:
            if bound:
                imports[ins.argval] = bound
            else:  # (rebound: what it names is not known; the module whole still counts, by its chain)
                imports.pop(ins.argval, None)
        elif ins.opname in ("PRECALL", "CALL") and len(recent) == 2 and recent[1].opname == "LOAD_CONST" \
                and isinstance(recent[1].argval, str) and recent[0].argval in ("import_module", "__import__"):
            chains.add((IMPORT_PREFIX + recent[1].argval,))  # `importlib.import_module("helpers")`: an import
        elif ins.opname == "LOAD_CONST" and isinstance(ins.argval, str) and recent \
                and recent[-1].opname in _NAME_LOADS and recent[-1].argval in _EVALUATORS:
            chains.update((name,) for name in string_reads(ins.argval))  # `df.query("a > @LIMIT")`
        if ins.opname not in ("IMPORT_NAME", "IMPORT_FROM", "SWAP", "POP_TOP"):
            bound = ()
        if ins.opname in _GLOBAL_LOADS:
            if chain:
                chains.add(tuple(chain))
            chain = [ins.argval]
        elif ins.opname in _LOCAL_LOADS and ins.argval in imports:  # `pkg.config.K` after `import pkg`
            if chain:
                chains.add(tuple(chain))
            chain = list(imports[ins.argval])
        elif ins.opname in _ATTR_LOADS and chain:
            chain.append(ins.argval)
        elif chain:
            chains.add(tuple(chain))
            chain = []
        recent = [*recent[-1:], ins]
    if chain:
        chains.add(tuple(chain))
    if not _EVALUATORS.isdisjoint(code.co_names):  # `cond = "a > @LIM"`, then `df.query(cond)`: pandas' @names
        chains.update((name,) for const in code.co_consts if isinstance(const, str)
                      for name in re.findall(r"@([A-Za-z_]\w*)", const))

    h = new_hasher()
    walk = Walk(BASE)  # constants are builtin values: no code in them but nested code objects, fed below
    for part in (code.co_name, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                 (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)):
        feed(part, h, walk)
    feed_bytes_tagged(b"code", code.co_code, h)
    feed_bytes_tagged(b"exc", getattr(code, "co_exceptiontable", b""), h)
    consts = code.co_consts
    if consts and isinstance(consts[0], str) and not const_zero_used:
        consts = (None,) + consts[1:]  # a docstring: the bytecode never reads it
    h.update(b"consts")
    for const in consts:
        if isinstance(const, types.CodeType):
            nested = code_info(const)
            h.update(b"nested" + nested.digest)
            chains.update(nested.global_chains)
        else:
            feed(const, h, walk)
    return CodeInfo(h.digest(), tuple(sorted(chains)))
