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

The static part of each code object is computed once and kept in a weak cache; globals are resolved on
every call because a notebook rebinds them between calls.
"""

from __future__ import annotations

import dis
import enum
import functools
import importlib
import importlib.util
import os
import site
import sys
import sysconfig
import types
import weakref
from dataclasses import dataclass
from typing import Any, Callable

from .ambient import global_generator
from .errors import warn
from .hashing import (
    Hasher, Unhashable, Walk, feed, new_hasher, register, type_name, _feed_bytes_tagged,
)

__all__ = ["fingerprint", "fingerprint_parts", "imported_module", "is_user_code", "library_roots"]

_GLOBALS = globals  # the builtin, as a function's code finds it when it calls globals()
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_CONST_OPS = frozenset(dis.hasconst)
_MISSING = object()
_IMPORT_PREFIX = "import "


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
    which helper or global changed, two calls deep or more.
    """
    if not callable(func):
        raise TypeError(f"fingerprint() takes a function, method or class, not {type(func).__name__}")
    func = getattr(func, "_nbcache_function_", func)  # a step: the fingerprint that goes into its keys
    parts: dict[str, str] = {}
    if walk is None:
        walk = Walk()
    walk.parts = parts
    h = new_hasher()
    try:
        if isinstance(func, types.FunctionType):
            _feed_code(func, h, walk)  # the function asked about counts by its code, wherever it lives
        else:
            feed(func, h, walk)
    except Unhashable as e:  # only a default or closure value can be unhashable; say which
        raise TypeError(f"cannot fingerprint {_label(func)}: {e.type_name} in it cannot be hashed") from None
    except RecursionError:
        raise TypeError(f"cannot fingerprint {_label(func)}: what it reads is nested too deeply") from None
    except Exception as exc:  # a value it reads whose pickle protocol misbehaves
        raise TypeError(f"cannot fingerprint {_label(func)}: {type(exc).__name__}: {exc}") from None
    return h.hexdigest(), dict(sorted(parts.items()))


# -- where code comes from --------------------------------------------------------------------------------

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
def _is_user_file(filename: str | None) -> bool:
    """Code in a file outside the interpreter, site-packages and nbcache itself is the user's; so is code
    with a pseudo file name such as a notebook cell's ``<ipython-input-...>``."""
    if not filename or filename.startswith("<frozen"):
        return False
    return not os.path.realpath(filename).startswith(_LIBRARY_ROOTS)


def _library_path(filename: str) -> str:
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
    return _is_user_file(filename)


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


def _module_file(module: types.ModuleType) -> str | None:
    return getattr(module, "__file__", None)


def _label(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    prefix = "" if module in (None, "__main__") else module + "."
    return f"{prefix}{name}" + ("()" if not isinstance(obj, type) else "")


# -- the static part: one code object -------------------------------------------------------------------

@dataclass(frozen=True)
class _CodeInfo:
    digest: bytes
    global_chains: tuple[tuple[str, ...], ...]


_CODE_INFO: weakref.WeakKeyDictionary[types.CodeType, _CodeInfo] = weakref.WeakKeyDictionary()


def _code_info(code: types.CodeType) -> _CodeInfo:
    info = _CODE_INFO.get(code)
    if info is None:
        info = _CODE_INFO[code] = _analyse(code)
    return info


def _analyse(code: types.CodeType) -> _CodeInfo:
    chains: set[tuple[str, ...]] = set()
    chain: list[str] = []
    const_zero_used = False
    importing = ""
    recent: list[dis.Instruction] = []
    for ins in dis.get_instructions(code):
        if ins.opcode in _CONST_OPS and ins.arg == 0:
            const_zero_used = True
        if ins.opname == "IMPORT_NAME":  # an import inside the body: `from utils import clean`
            level = recent[-2].argval if len(recent) >= 2 and recent[-2].opname == "LOAD_CONST" else 0
            importing = _IMPORT_PREFIX + "." * (level or 0) + ins.argval
            chains.add((importing,))
        elif ins.opname == "IMPORT_FROM" and importing:
            chains.add((importing, ins.argval))
        if ins.opname in _GLOBAL_LOADS:
            if chain:
                chains.add(tuple(chain))
            chain = [ins.argval]
        elif ins.opname in _ATTR_LOADS and chain:
            chain.append(ins.argval)
        elif chain:
            chains.add(tuple(chain))
            chain = []
        recent = [*recent[-1:], ins]
    if chain:
        chains.add(tuple(chain))

    h = new_hasher()
    walk = Walk()
    for part in (code.co_name, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                 (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)):
        feed(part, h, walk)
    _feed_bytes_tagged(b"code", code.co_code, h)
    _feed_bytes_tagged(b"exc", getattr(code, "co_exceptiontable", b""), h)
    consts = code.co_consts
    if consts and isinstance(consts[0], str) and not const_zero_used:
        consts = (None,) + consts[1:]  # a docstring: the bytecode never reads it
    h.update(b"consts")
    for const in consts:
        if isinstance(const, types.CodeType):
            nested = _code_info(const)
            h.update(b"nested" + nested.digest)
            chains.update(nested.global_chains)
        else:
            feed(const, h, walk)
    return _CodeInfo(h.digest(), tuple(sorted(chains)))


# -- the dynamic part: what the names resolve to now ----------------------------------------------------

def _feed_function(func: types.FunctionType, h: Hasher, walk: Walk) -> None:
    # where the code is, not __module__, which functools.wraps copies from the function a wrapper wraps
    if _is_user_file(func.__code__.co_filename):
        _feed_code(func, h, walk)
        return
    wrapped = getattr(func, "__wrapped__", None)
    if wrapped is None:
        _feed_library(func, h)
        return
    # a library decorator around the user's function (contextmanager, singledispatch, functools.wraps):
    # the decorator counts by where its code is, the function it wraps by its own code
    where = f"{_library_path(func.__code__.co_filename)}:{func.__code__.co_qualname}"
    _feed_bytes_tagged(b"wrapper", where.encode(), h)
    feed(wrapped, h, walk)
    registry = getattr(func, "registry", None)  # singledispatch: every registered implementation counts
    if registry is not None:
        feed(dict(registry), h, walk)


def _feed_code_object(code: types.CodeType, h: Hasher, walk: Walk) -> None:
    h.update(b"codeobj" + _code_info(code).digest)


def _feed_lru_cache(func: Any, h: Hasher, walk: Walk) -> None:
    """``functools.lru_cache`` and ``functools.cache``: the cache is transparent, the function counts."""
    h.update(b"lru_cache")
    feed(func.__wrapped__, h, walk)


def _feed_code(func: types.FunctionType, h: Hasher, walk: Walk) -> None:
    key = id(func)
    if key in walk.active:  # recursion through helpers: the cycle is closed by name
        _feed_bytes_tagged(b"cycle", _label(func).encode(), h)
        return
    walk.active.add(key)
    try:
        info = _code_info(func.__code__)
        own = new_hasher(b"fn" + info.digest)
        feed(func.__defaults__, own, walk)
        feed(func.__kwdefaults__, own, walk)
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # a cell not yet filled
                value = _MISSING
            _feed_read(f"{name} (closure of {_label(func)})", value, own, walk)
        own_digest = own.digest()
        if walk.parts is not None:
            walk.parts[_label(func)] = own_digest.hex()
        total = new_hasher(own_digest)
        namespace = func.__globals__
        builtins = namespace.get("__builtins__", {})
        if isinstance(builtins, types.ModuleType):
            builtins = vars(builtins)
        for chain in info.global_chains:
            if chain[0].startswith(_IMPORT_PREFIX):
                value = _imported(chain[0][len(_IMPORT_PREFIX):], namespace.get("__package__"))
            else:
                value = namespace.get(chain[0], _MISSING)
                if value is _MISSING:
                    value = builtins.get(chain[0], _MISSING)
            _feed_bytes_tagged(b"g", ".".join(chain).encode(), total)
            _feed_chain(chain, value, total, walk)
            if chain[0] == "globals" and value is _GLOBALS and walk.globals_reader is None:
                walk.globals_reader = _label(func)  # it reads the namespace without naming what it reads
        digest = total.digest()
    finally:
        walk.active.discard(key)
    h.update(digest)


def _feed_chain(chain: tuple[str, ...], value: Any, h: Hasher, walk: Walk) -> None:
    """Resolve ``a.b.c`` through the user's own modules; hash what it lands on."""
    for depth, attr in enumerate(chain[1:], start=1):
        if not (isinstance(value, types.ModuleType) and is_user_code(value.__name__, _module_file(value))):
            break
        value = getattr(value, attr, _MISSING)
    else:
        depth = len(chain)
    _feed_read(".".join(chain[:depth]), value, h, walk)


def _feed_read(name: str, value: Any, h: Hasher, walk: Walk) -> None:
    """Feed a value the code reads (a global or a closure variable)."""
    if value is _MISSING:
        h.update(b"unbound")
        return
    if isinstance(value, (types.FunctionType, type, types.ModuleType, types.BuiltinFunctionType, _LibraryName)) \
            or hasattr(value, "_nbcache_function_"):  # a step counts as its code, in the parts too
        feed(value, h, walk)
        return
    sub = new_hasher()
    try:
        feed(value, sub, walk)
    except Unhashable as e:
        _warn_unhashable_global(name, e.type_name)
        _feed_bytes_tagged(b"opaque", type_name(type(value)).encode(), h)
        return
    digest = sub.digest()
    if walk.parts is not None:
        walk.parts[name] = digest.hex()
    h.update(digest)


@functools.lru_cache(maxsize=256)
def _warn_unhashable_global(name: str, tp: str) -> None:
    warn(
        f"nbcache: '{name}' holds a {tp}, which cannot be hashed; it counts by its type only, so changing"
        " its contents will not invalidate the steps that read it. If what it holds affects their results,"
        " pass that as plain data in an argument, or bump @step(version=...) when it changes."
    )


def _feed_library(obj: Any, h: Hasher) -> None:
    module = getattr(obj, "__module__", None) or getattr(getattr(obj, "__self__", None), "__name__", "")
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    _feed_bytes_tagged(b"lib", f"{module}.{name}@{package_version(module or 'builtins')}".encode(), h)


def _imported(name: str, package: str | None) -> Any:
    """The module an import inside a function body names, without running a library's import for it."""
    try:
        name = importlib.util.resolve_name(name, package)  # `from .core import clean`
    except (ImportError, ValueError):
        return _MISSING
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:  # only the top-level package is looked up: finding a submodule would import its parents
        spec = importlib.util.find_spec(name.partition(".")[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return _MISSING
    if not is_user_code(name, spec.origin):
        return _LibraryName(name)
    try:
        return importlib.import_module(name)  # the body imports it anyway; its code must count
    except Exception:
        return _MISSING


def imported_module(name: str, package: str | None = None) -> Any:
    """What ``import name`` gives, for hashing: the user's own module (imported), an installed module's
    name (counted by name and version, without importing it), or None when there is no such module."""
    module = _imported(name, package)
    return None if module is _MISSING else module


class _LibraryName(str):
    """An installed module not imported yet: it counts by name and version, like an imported one."""


def _feed_module(module: types.ModuleType, h: Hasher, walk: Walk) -> None:
    if not is_user_code(module.__name__, _module_file(module)):
        _feed_bytes_tagged(b"mod", f"{module.__name__}@{package_version(module.__name__)}".encode(), h)
        return
    # the user's own module, used whole (`import utils` inside a body): everything it holds counts
    key = id(module)
    if key in walk.active:
        _feed_bytes_tagged(b"cycle", module.__name__.encode(), h)
        return
    walk.active.add(key)
    try:
        _feed_bytes_tagged(b"usermod", module.__name__.encode(), h)
        for name, value in sorted(vars(module).items()):
            if name.startswith("__") or isinstance(value, types.ModuleType):
                continue  # module bookkeeping, and other modules it imported (named where they are used)
            _feed_bytes_tagged(b"attr", name.encode(), h)
            _feed_read(f"{module.__name__}.{name}", value, h, walk)
    finally:
        walk.active.discard(key)


def _feed_library_name(name: _LibraryName, h: Hasher, walk: Walk) -> None:
    _feed_bytes_tagged(b"mod", f"{name}@{package_version(str(name))}".encode(), h)


def _feed_builtin(func: Any, h: Hasher, walk: Walk) -> None:
    """A builtin function by name; a builtin bound method (``weights.get``) by name and its object."""
    _feed_library(func, h)
    bound_to = getattr(func, "__self__", None)
    if bound_to is not None and not isinstance(bound_to, types.ModuleType) and not _is_global_generator(bound_to):
        feed(bound_to, h, walk)


def _is_global_generator(obj: Any) -> bool:
    """``random``'s and numpy's global generators, whose methods a notebook imports by name (``from
    numpy.random import rand``): their state is the step's input only when it draws without seeding first,
    which ``observe`` finds out while the step runs; as part of a function's hash it would change with every
    draw anywhere."""
    return global_generator(obj) is not None


def _feed_method(method: types.MethodType, h: Hasher, walk: Walk) -> None:
    h.update(b"method")
    feed(method.__func__, h, walk)
    if not _is_global_generator(method.__self__):
        feed(method.__self__, h, walk)


# Bookkeeping that Python adds or changes behind the class's back (copyreg caches __slotnames__ on first
# pickle; abc keeps its registry in _abc_impl) must not change the fingerprint.
_CLASS_SKIP = frozenset({
    "__dict__", "__weakref__", "__module__", "__doc__", "__qualname__", "__slotnames__", "_abc_impl",
})


def _feed_class(cls: type, h: Hasher, walk: Walk) -> None:
    module = sys.modules.get(cls.__module__)
    if not is_user_code(cls.__module__, module and _module_file(module)):
        _feed_library(cls, h)
        return
    key = id(cls)
    if key in walk.active:
        _feed_bytes_tagged(b"cycle", _label(cls).encode(), h)
        return
    walk.active.add(key)
    try:
        sub = new_hasher()
        _feed_bytes_tagged(b"class", cls.__qualname__.encode(), sub)
        if type(cls) is not type:
            feed(type(cls), sub, walk)  # the metaclass
        for base in cls.__bases__:
            feed(base, sub, walk)
        namespace = vars(cls)
        skip = _CLASS_SKIP
        if isinstance(cls, enum.EnumMeta):  # enum bookkeeping (_value2member_map_ grows as flags combine)
            feed([(name, member.value) for name, member in cls.__members__.items()], sub, walk)
            skip = {*skip, *cls.__members__, *(k for k in namespace if _is_sunder(k))}
        for name in sorted(k for k in namespace if k not in skip):
            _feed_bytes_tagged(b"attr", name.encode(), sub)
            _feed_read(f"{cls.__qualname__}.{name}", _unwrap_member(namespace[name]), sub, walk)
        digest = sub.digest()
    finally:
        walk.active.discard(key)
    h.update(digest)


def _is_sunder(name: str) -> bool:
    return len(name) > 2 and name[0] == name[-1] == "_" and name[1] != "_" and name[-2] != "_"


def _unwrap_member(member: Any) -> Any:
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return (member.fget, member.fset, member.fdel)
    if isinstance(member, functools.cached_property):  # holds a lock on 3.11: the function is what counts
        return member.func
    return member


register(types.FunctionType, _feed_function)
register(type, _feed_class)
register(types.ModuleType, _feed_module)
register(_LibraryName, _feed_library_name)
register(types.CodeType, _feed_code_object)
register(types.BuiltinFunctionType, _feed_builtin)
register(types.MethodWrapperType, _feed_builtin)
register(type(functools.lru_cache(lambda: None)), _feed_lru_cache)
register(types.MethodType, _feed_method)
