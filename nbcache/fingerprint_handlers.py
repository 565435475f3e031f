"""The dynamic part of a fingerprint: the handlers that count code by what it does and what it reads.

``CODE`` extends the base handler table: a function of the user's counts by its code (``fingerprint_code``)
and by what every global name it loads resolves to now, resolved on every call because a notebook rebinds
them between calls:
- the user's own functions and classes are fingerprinted in turn, transitively; recursion, mutual or
  through a module, ends in a marker naming the function (the walk's cycle guard);
- modules and functions of installed packages count by name and package version, not by their code;
- any other global value is content-hashed, so ``SCALE = 2`` changed to ``3`` changes the fingerprint.
Each such function's and value's own digest is noted in the walk's ``parts``, to say later what changed.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import sys
import types
from typing import Any

from .errors import warn
from .fingerprint_code import IMPORT_PREFIX, code_info
from .fingerprint_given import GENERATOR_CONTEXT, closure_of, given, holds_users, is_users
from .fingerprint_source import (
    MISSING, LibraryName, UserModuleName, imported, is_user_code, is_user_file, library_path, module_file,
    package_version,
)
from .hash_base import BASE
from .hash_core import Hasher, Unhashable, Walk, enter, feed, feed_bytes_tagged, leave, new_hasher, type_name
from .sourceimports import reached
from .statekinds import global_generator  # not ambient's re-export: ambient hashes with hash_value, over CODE

__all__ = ["CODE", "feed_code", "label"]

_GLOBALS = globals  # the builtin, as a function's code finds it when it calls globals()


def label(obj: Any) -> str:
    """How a function or class is named in parts and messages: ``utils.clean()``, ``Model``."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", repr(obj))
    prefix = "" if module in (None, "__main__") else module + "."
    return f"{prefix}{name}" + ("()" if not isinstance(obj, type) else "")


def _feed_function(func: types.FunctionType, h: Hasher, walk: Walk) -> None:
    # where the code is, not __module__, which functools.wraps copies from the function a wrapper wraps
    if is_user_file(func.__code__.co_filename):
        feed_code(func, h, walk)
        return
    # a function a library's decorator made (contextmanager, singledispatch, functools.wraps, reprlib's
    # recursive_repr): the decorator counts by where its code is, the function it wraps by its own code, and,
    # around the user's code, what it was given (`@np.printoptions(precision=2)`; not the state it keeps as
    # it works, a memo or a dispatch cache, nor a library's own constants around its own code)
    wrapped = getattr(func, "__wrapped__", None)
    around_users = (wrapped is not None and is_users(wrapped)) or holds_users(func.__closure__)
    if wrapped is None and not around_users:
        _feed_library(func, h)
        return
    if not enter(func, h, walk, back_reference=False):  # (a wrapper its own closure holds: diskcache's memoize)
        feed_bytes_tagged(b"cycle", label(func).encode(), h)
        return
    closure = closure_of(func) if around_users else {}
    try:
        where = f"{library_path(func.__code__.co_filename)}:{func.__code__.co_qualname}"
        feed_bytes_tagged(b"wrapper", where.encode(), h)
        if wrapped is not None:
            feed(wrapped, h, walk)
        for name, value in closure.items():
            if value is not wrapped and given(value):
                feed_bytes_tagged(b"given", name.encode(), h)
                _feed_read(f"{name} (closure of {label(func)})", value, h, walk, quiet=True)
        registry = getattr(func, "registry", None)  # singledispatch: every registered implementation counts
        if registry is not None:
            feed(dict(registry), h, walk)
    finally:
        leave(func, walk)


def _feed_generator_context(manager: Any, h: Hasher, walk: Walk) -> None:
    """The context manager a ``@contextmanager`` function returns (``np.printoptions(precision=2)``, also
    used as a decorator): the function it is made from and the arguments it was given. Its generator, made
    from those, holds nothing else until it is entered."""
    made = getattr(manager, "func", None), getattr(manager, "args", None), getattr(manager, "kwds", None)
    if not callable(made[0]) or not isinstance(made[1], tuple) or not isinstance(made[2], dict):
        raise Unhashable(type_name(type(manager)))
    _feed_library(type(manager), h)
    feed(made, h, walk)


def _feed_code_object(code: types.CodeType, h: Hasher, walk: Walk) -> None:
    h.update(b"codeobj" + code_info(code).digest)


def _feed_lru_cache(func: Any, h: Hasher, walk: Walk) -> None:
    """``functools.lru_cache`` and ``functools.cache``: the cache is transparent, the function counts."""
    h.update(b"lru_cache")
    feed(func.__wrapped__, h, walk)


def _enter_code(obj: Any, name: str, h: Hasher, walk: Walk) -> bool:
    """Put a function, class or module on the walk's path; if it is on it already (recursion through
    helpers), close the cycle with a marker naming it and return False."""
    if enter(obj, h, walk, back_reference=False):
        return True
    feed_bytes_tagged(b"cycle", name.encode(), h)
    return False


def feed_code(func: types.FunctionType, h: Hasher, walk: Walk) -> None:
    """A function counted by its code: its own digest (code, defaults, closure values, attributes), then what
    each global name it reads resolves to now. Also for the function ``fingerprint`` is asked about, wherever
    its code lives."""
    if not _enter_code(func, label(func), h, walk):
        return
    try:
        info = code_info(func.__code__)
        own = new_hasher(b"fn" + info.digest)
        feed(func.__defaults__, own, walk)
        feed(func.__kwdefaults__, own, walk)
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # a cell not yet filled
                value = MISSING
            _feed_read(f"{name} (closure of {label(func)})", value, own, walk)
        attributes = func.__dict__  # `g.scale = 3`: what the code reads as `g.scale` (functools.wraps' dunders out)
        for name in sorted(attributes) if attributes else ():
            if not (name.startswith("__") and name.endswith("__")):
                feed_bytes_tagged(b"attr", name.encode(), own)
                # (quietly by type if it cannot be hashed: a library's decorator leaves its own objects there,
                # `@interact`'s widget, which the function does not read)
                _feed_read(f"{label(func)}.{name}", attributes.get(name, MISSING), own, walk, quiet=True)
        own_digest = own.digest()
        if walk.parts is not None:
            walk.parts[label(func)] = own_digest.hex()
        total = new_hasher(own_digest)
        namespace = func.__globals__
        builtins = namespace.get("__builtins__", {})
        if isinstance(builtins, types.ModuleType):
            builtins = vars(builtins)
        for chain in info.global_chains:
            if chain[0].startswith(IMPORT_PREFIX):
                value = imported(chain[0][len(IMPORT_PREFIX):], namespace.get("__package__"))
            else:
                value = namespace.get(chain[0], MISSING)
                if value is MISSING:
                    value = builtins.get(chain[0], MISSING)
            feed_bytes_tagged(b"g", ".".join(chain).encode(), total)
            _feed_chain(chain, value, total, walk)
            if chain[0] == "globals" and value is _GLOBALS and walk.globals_reader is None:
                walk.globals_reader = label(func)  # it reads the namespace without naming what it reads
        digest = total.digest()
    finally:
        leave(func, walk)
    h.update(digest)


def _feed_chain(chain: tuple[str, ...], value: Any, h: Hasher, walk: Walk) -> None:
    """Resolve ``a.b.c`` through the user's own modules; hash what it lands on."""
    for depth, attr in enumerate(chain[1:], start=1):
        if not (isinstance(value, types.ModuleType) and is_user_code(value.__name__, module_file(value))):
            break
        value = getattr(value, attr, MISSING)
    else:
        depth = len(chain)
    _feed_read(".".join(chain[:depth]), value, h, walk)


def _feed_read(name: str, value: Any, h: Hasher, walk: Walk, *, quiet: bool = False) -> None:
    """Feed a value the code reads (a global or a closure variable); one that cannot be hashed counts by its
    type, with a warning unless ``quiet``."""
    if value is MISSING:
        h.update(b"unbound")
        return
    if isinstance(value, (types.FunctionType, type, types.ModuleType, types.BuiltinFunctionType, LibraryName,
                          UserModuleName)) \
            or hasattr(value, "_nbcache_function_"):  # a step counts as its code, in the parts too
        feed(value, h, walk)
        return
    sub = new_hasher()
    try:
        feed(value, sub, walk)
    except Unhashable as e:
        if not quiet:
            _warn_unhashable_global(name, e.type_name)
        feed_bytes_tagged(b"opaque", type_name(type(value)).encode(), h)
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
    feed_bytes_tagged(b"lib", f"{module}.{name}@{package_version(module or 'builtins')}".encode(), h)


def _feed_module(module: types.ModuleType, h: Hasher, walk: Walk) -> None:
    if not is_user_code(module.__name__, module_file(module)):
        feed_bytes_tagged(b"mod", f"{module.__name__}@{package_version(module.__name__)}".encode(), h)
        return
    # the user's own module, used whole (`import utils` inside a body): everything it holds counts
    if not _enter_code(module, module.__name__, h, walk):
        return
    try:
        feed_bytes_tagged(b"usermod", module.__name__.encode(), h)
        for name, value in sorted(vars(module).items()):
            if (name.startswith("__") and name != "__getattr__") or isinstance(value, types.ModuleType):
                continue  # module bookkeeping, and other modules it imported (named where they are used)
            feed_bytes_tagged(b"attr", name.encode(), h)
            _feed_read(f"{module.__name__}.{name}", value, h, walk)
    finally:
        leave(module, walk)


def _feed_library_name(name: LibraryName, h: Hasher, walk: Walk) -> None:
    feed_bytes_tagged(b"mod", f"{name}@{package_version(str(name))}".encode(), h)


def _feed_user_module_name(name: UserModuleName, h: Hasher, walk: Walk) -> None:
    """A module of the user's not imported yet: the sources of what importing it would run, and what it uses of
    their modules imported already (``sourceimports.py``)."""
    unimported, modules = reached(name)
    for module in unimported:
        feed_bytes_tagged(b"usermod-later", str(module).encode(), h)
        source = b""
        if module.origin is not None:
            with contextlib.suppress(OSError), open(module.origin, "rb") as f:
                source = f.read()
        feed_bytes_tagged(b"source", source, h)
    for module in modules:
        feed_bytes_tagged(b"uses", module.__name__.encode(), h)
        _feed_read(module.__name__, module, h, walk)


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
    # what pydantic makes of a model's fields, config and validators (all hashed), naming the class by its id, and
    # the namespace it was made in: another in each process, so a model restored by a hit seemed changed
    "__pydantic_core_schema__", "__pydantic_validator__", "__pydantic_serializer__", "__pydantic_parent_namespace__",
})


def _feed_class(cls: type, h: Hasher, walk: Walk) -> None:
    module = sys.modules.get(cls.__module__)
    if not is_user_code(cls.__module__, module and module_file(module)):
        _feed_library(cls, h)
        return
    if not _enter_code(cls, label(cls), h, walk):
        return
    try:
        sub = new_hasher()
        feed_bytes_tagged(b"class", cls.__qualname__.encode(), sub)
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
            feed_bytes_tagged(b"attr", name.encode(), sub)
            _feed_read(f"{cls.__qualname__}.{name}", _unwrap_member(namespace[name]), sub, walk)
        digest = sub.digest()
    finally:
        leave(cls, walk)
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


_CODE_HANDLERS = {
    types.FunctionType: _feed_function,
    type: _feed_class,
    types.ModuleType: _feed_module,
    LibraryName: _feed_library_name,
    UserModuleName: _feed_user_module_name,
    types.CodeType: _feed_code_object,
    types.BuiltinFunctionType: _feed_builtin,
    types.MethodWrapperType: _feed_builtin,
    type(functools.lru_cache(lambda: None)): _feed_lru_cache,
    types.MethodType: _feed_method,
    GENERATOR_CONTEXT: _feed_generator_context,
}
# Exactly these types are also looked up first, without loading the plugins of libraries imported since: this
# table's own handler wins over any plugin's for them anyway, and a step reading only modules, functions and
# plain values then never waits for numpy's plugin to be imported (a first hit's 0.3 to 0.5 ms)
CODE = BASE.extend(_CODE_HANDLERS, exact=_CODE_HANDLERS)
"""The base table with code counted by what it does: what ``hash_value`` and ``fingerprint`` use."""
