"""How values are pickled: cloudpickle, taught about the notebook they come from and go back to.

Everything here takes the notebook's module as a parameter (IPython's ``user_module``; ``None`` means
``sys.modules["__main__"]``, which it is in a Jupyter kernel): functions restored from the cache live in the
notebook's namespace as they are unpickled, and a class or function of the notebook is stored by name.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import io
import marshal
import pickle
import sys
import types
from typing import Any, Mapping

from .ambient import apply as apply_state
from .ambient import global_generator, global_generator_method
from .arrayviews import by_memory, view_of

__all__ = ["LIVE_NAMESPACE", "Ahead", "NotebookPickler", "NotebookUnpickler", "is_plain", "notebook_globals"]

_MISSING = object()


def notebook_globals(notebook: types.ModuleType | None) -> dict:
    """The namespace the notebook's cells run in: the globals of functions restored from the cache."""
    module = notebook or sys.modules.get("__main__")
    return vars(module) if module is not None else {"__builtins__": __builtins__}


def main_attribute(notebook: types.ModuleType | None, qualname: str, default: Any = _MISSING) -> Any:
    """``<notebook>.<qualname>``: how a notebook's class or function is named in a stored value."""
    value: Any = notebook or sys.modules.get("__main__")
    for part in qualname.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise AttributeError(f"the notebook no longer defines {qualname}")
            return default
    return value


def NotebookPickler(file: Any, *, notebook: types.ModuleType | None, by_value: set[int] = frozenset(),  # noqa: N802
                    live: Mapping[int, Any] | None = None, plain: bool = False, **kwargs: Any) -> pickle.Pickler:
    """A pickler of values of ``notebook`` (see ``_pickler_class``); cloudpickle is imported on the first
    value stored that is not ``plain`` (``is_plain``: pickle's own pickler writes the same bytes for it), not
    by ``import nbcache`` (a hit never needs it)."""
    if plain and not live:
        return pickle.Pickler(file, **kwargs)
    return _pickler_class()(file, notebook=notebook, by_value=by_value, live=live, **kwargs)


_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})


def is_plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` holds no code, class or file that cloudpickle or ``NotebookPickler`` would store
    otherwise than pickle does: a number, string, bytes or None; an array of numpy's own type of plain
    data; a short tuple or list of these (a first miss of a step returning an array then does not import
    cloudpickle: 8 ms)."""
    kind = type(value)
    if kind in _PLAIN:
        return True
    if kind in (tuple, list):
        return depth < 2 and len(value) <= 16 and all(is_plain(item, depth + 1) for item in value)
    np = sys.modules.get("numpy")
    if np is None or kind is not np.ndarray:
        return False
    dtype = value.dtype  # (no fields, no metadata: a dtype's titles and metadata can hold any object)
    return dtype.kind in "biufcmMSU" and not dtype.hasobject and dtype.fields is None and not dtype.metadata


@functools.cache
def _pickler_class() -> type:
    import cloudpickle

    class NotebookPickler(cloudpickle.Pickler):
        """cloudpickle, with these exceptions.

        - Open files are refused: cloudpickle would store a snapshot of the file's text, so a hit would
          return stale contents where the step returned a file. Such a result is not cached at all.
        - A class or function of the notebook (``__main__``) that the notebook can name is stored by name,
          not by value, unless it is in ``by_value`` (defined by the very cell being stored). Restored, an
          instance is then of the notebook's live class (``isinstance`` holds, methods read live globals);
          if the notebook no longer defines that name, the stored value fails to load and is recomputed.
        - A function whose globals are the notebook's is stored as its code (see ``_reduce_notebook_function``).
        - An ``lru_cache`` function of the notebook is stored by value (by name it is undefined after a restart),
          and a method of a global random generator (``from numpy.random import rand``) by reference.
        - An object in ``live`` (by id: the notebook variable it is the value of) is stored as a reference to
          that variable, and loads as the variable's value then: ``models = {"lr": lr}`` holds the live
          ``lr`` after a hit, as after the run (``lr`` is an input of the cell, its content in the key).
          One given there as ``(module, attribute, path)`` is stored as what that path leads to in that
          attribute of that module, and loads as it is then: ``from helpers import REGISTRY`` (or ``env =
          os.environ``) binds the module's own object after a hit, as after the run (``cellvars.module_objects``
          says which, and which a hit checks); if the module no longer has it, the value fails to load. A numpy
          view of one of ``live.arrays`` (``arrayviews.Live``) is stored as that view of it (``X = data[:,
          :2]``: a write to ``X`` writes ``data``, after a hit too).
        """

        def __init__(self, file: Any, *, notebook: types.ModuleType | None, by_value: set[int] = frozenset(),
                     live: Mapping[int, Any] | None = None, **kwargs: Any) -> None:
            if live:  # (asked of every object pickled, so only when there are some: pickle looks at __init__)
                self.persistent_id = lambda obj: _reference(live[id(obj)]) if id(obj) in live else None
            self._arrays = by_memory(getattr(live, "arrays", ()))
            super().__init__(file, **kwargs)
            self._by_value = by_value
            self._module = notebook
            self._notebook = notebook_globals(notebook)  # (asked of every object pickled: looked up once)

        def reducer_override(self, obj: Any) -> Any:
            if self._arrays and (view := view_of(obj, self._arrays)) is not None:
                return view
            if isinstance(obj, io.IOBase) and not isinstance(obj, (io.BytesIO, io.StringIO)):
                state = "closed" if obj.closed else "open"
                raise pickle.PicklingError(f"a file object ({getattr(obj, 'name', '?')}, {state}) is not stored")
            if (isinstance(obj, (type, types.FunctionType)) and getattr(obj, "__module__", None) == "__main__"
                    and id(obj) not in self._by_value
                    and main_attribute(self._module, obj.__qualname__, None) is obj
                    and id(main_attribute(self._module, obj.__qualname__.partition(".")[0], None))
                    not in self._by_value):
                return _main_attribute, (obj.__qualname__,)  # (a method of a class stored by value is not)
            if _is_singledispatch(obj) and not _found_by_name(obj):  # (its dispatch cache holds weak references,
                # which do not pickle: the notebook's is made again, with what was registered; a library's is named)
                return _make_singledispatch, (obj.__wrapped__, [(k, f) for k, f in obj.registry.items()
                                                                if k is not object])
            if isinstance(obj, types.FunctionType) and obj.__globals__ is self._notebook:
                return _reduce_notebook_function(obj)
            if (isinstance(obj, types.FunctionType) and "<locals>" in obj.__code__.co_qualname
                    and not _found_by_name(obj)):  # (a decorated library function is stored by its name)
                module = obj.__globals__.get("__name__")
                if module != "__main__" and getattr(sys.modules.get(module), "__dict__", None) is obj.__globals__:
                    return _reduce_module_closure(obj, module)
            if isinstance(obj, _LRU) and getattr(obj.__wrapped__, "__globals__", None) is self._notebook:
                return _make_lru, (obj.__wrapped__, obj.cache_parameters())
            if type(obj) is functools.cached_property:  # (on Python 3.11 it holds a lock, which cannot pickle)
                return _make_cached_property, (obj.func, obj.attrname, obj.__doc__)
            if isinstance(obj, (types.MethodType, types.BuiltinMethodType)):
                module = global_generator(getattr(obj, "__self__", None))
                if module is not None:  # `from numpy.random import rand`: the live generator's, not a copy
                    return global_generator_method, (module, obj.__name__)
            if isinstance(obj, type) and vars(obj).get("__slots__", ()) and obj.__module__ == "__main__":
                raise pickle.PicklingError(  # (a notebook's class, stored by value: cloudpickle makes it anew)
                    f"class {obj.__qualname__} defines __slots__, which a class stored by value loses: its"
                    " instances would take any attribute")
            return super().reducer_override(obj)

    return NotebookPickler


class NotebookUnpickler(pickle.Unpickler):
    """pickle's Unpickler, which gives the two loaders that need the notebook (a notebook function made
    again, a notebook name looked up) the notebook this load is for. Values stored when these loaders
    lived in ``nbcache.store`` load too."""

    def __init__(self, file: Any, *, notebook: types.ModuleType | None, buffers: Any = None) -> None:
        super().__init__(file, buffers=buffers)
        self._module = notebook

    def persistent_load(self, pid: Any) -> Any:
        if type(pid) is tuple and len(pid) in (3, 4) and pid[0] == MODULE_ATTRIBUTE:
            try:
                found = getattr(importlib.import_module(pid[1]), pid[2])
                for kind, key in pid[3] if len(pid) == 4 else ():
                    found = found[key] if kind == "item" else getattr(found, key)
                return found
            except Exception as exc:  # (then the value is not served: the cell runs)
                raise pickle.UnpicklingError(f"it holds {pid[1]}.{pid[2]}, which cannot be had now"
                                             f" ({type(exc).__name__})") from None
        if type(pid) is tuple and len(pid) == 2 and pid[0] == LIVE:
            variables = LIVE_NAMESPACE.get()
            if variables is None:
                variables = notebook_globals(self._module)
            if pid[1] in variables:
                return variables[pid[1]]
            raise pickle.UnpicklingError(f"it holds the notebook's variable {pid[1]!r}, which is not defined")
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")

    def find_class(self, module: str, name: str) -> Any:
        if module in _LOADER_MODULES:
            if name == "_make_notebook_function":
                return functools.partial(_make_function, notebook_globals(self._module))
            if name == "_main_attribute":
                return functools.partial(main_attribute, self._module)
            if name in ("_set_notebook_function_state", "_make_lru", "_make_module_closure", "_make_ahead",
                        "_make_singledispatch"):
                return globals()[name]
        return super().find_class(module, name)


class Ahead:
    """Changes to process-wide state made as a value loads, before what follows it in the pickle: the folders
    a cell put on ``sys.path``, from which the modules of its variables' functions and classes import
    (``sys.path.append("src")``, then ``from mylib import double``). First in a cell's stored payload."""

    __slots__ = ("changes",)

    def __init__(self, changes: dict[str, Any]) -> None:
        self.changes = changes

    def __reduce__(self) -> tuple:
        return _make_ahead, (self.changes,)


def _make_ahead(changes: dict[str, Any]) -> Ahead:
    apply_state(changes)  # (made again by the hit with the rest of the state: ambient.apply is idempotent)
    return Ahead(changes)


_LOADER_MODULES = frozenset({__name__, "nbcache.store"})
LIVE = "nbcache.live"  # the persistent id of a reference to a notebook variable: (LIVE, its name)
MODULE_ATTRIBUTE = "nbcache.module"  # ... to an object of a module: (MODULE_ATTRIBUTE, module, attribute, path)


def _reference(target: str | tuple) -> tuple:
    """The persistent id of an object in ``live``: a notebook variable's name, or (module, attribute, path
    in it: ``sharing.path_to``'s)."""
    return (LIVE, target) if type(target) is str else (MODULE_ATTRIBUTE, *target)


#: The variables such references name while a cell's payload loads: the shell's ``user_ns`` (which an
#: embedded shell keeps apart from its module's); ``None``: the notebook module's globals.
LIVE_NAMESPACE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("nbcache_live_namespace", default=None)
_LRU = type(functools.lru_cache(lambda: None))


def _is_singledispatch(obj: Any) -> bool:
    """Whether ``obj`` is a ``functools.singledispatch`` function (told by its documented attributes)."""
    return (isinstance(obj, types.FunctionType) and isinstance(getattr(obj, "registry", None), types.MappingProxyType)
            and callable(getattr(obj, "register", None)) and callable(getattr(obj, "dispatch", None))
            and callable(getattr(obj, "__wrapped__", None)))


def _make_singledispatch(func: Any, registered: list[tuple[Any, Any]]) -> Any:
    """A ``functools.singledispatch`` function again: ``func`` for any type, and each ``(type, implementation)``
    registered, in the order they were."""
    dispatcher = functools.singledispatch(func)
    for kind, implementation in registered:
        dispatcher.register(kind, implementation)
    return dispatcher


def _make_lru(func: Any, parameters: dict) -> Any:
    """A function wrapped in ``functools.lru_cache`` (or ``functools.cache``) again, with an empty cache."""
    return functools.update_wrapper(functools.lru_cache(parameters["maxsize"], parameters["typed"])(func), func)


def _make_cached_property(func: Any, name: str | None, doc: str | None) -> functools.cached_property:
    """A ``functools.cached_property`` of a class stored by value, made again (its cache is each instance's)."""
    made = functools.cached_property(func)
    made.attrname, made.__doc__ = name, doc
    return made


def _main_attribute(qualname: str) -> Any:  # pragma: no cover - NotebookUnpickler binds it to a notebook
    return main_attribute(None, qualname)


# A function of the notebook stored by value (defined by the cell being stored, or a lambda or closure) is
# stored as its code (marshal, which is exact for this Python version, and the Python minor version is in
# every key) plus its defaults, closure and attributes, and made again on load with the notebook's live
# namespace as its globals: as if its cell had just defined it. Neither a copy of the globals it saw when
# it was stored nor how a pickling library rebuilds functions is involved.
def _reduce_notebook_function(func: types.FunctionType) -> tuple:
    cells = []
    for cell in func.__closure__ or ():
        try:
            cells.append((True, cell.cell_contents))
        except ValueError:  # a cell not filled yet
            cells.append((False, None))
    state = {"defaults": func.__defaults__, "kwdefaults": func.__kwdefaults__, "cells": cells,
             "qualname": func.__qualname__, "doc": func.__doc__, "annotations": func.__annotations__,
             "dict": dict(vars(func)), "module": func.__module__}
    # the state is pickled after the function itself is memoized, so a function that refers to itself
    # (through its closure, defaults or attributes) is stored once and comes back as one object
    return (_make_notebook_function, (marshal.dumps(func.__code__), func.__name__, len(cells)), state, None, None,
            _set_notebook_function_state)


def _reduce_module_closure(func: types.FunctionType, module: str) -> tuple:
    """A function a module's function made (``dataclasses``' wrapper of a ``__repr__``, a decorator's inner
    function): its code as it is, with its file (cloudpickle renames that ``<dynamic-code>``, and the code
    of a library would then be fingerprinted as the user's, so a class restored from the cache hashed
    otherwise than when it was defined), and the module's globals, by its name."""
    reduced = _reduce_notebook_function(func)
    return (_make_module_closure, (module, *reduced[1]), *reduced[2:])


def _found_by_name(func: types.FunctionType) -> bool:
    """Whether ``func`` is what its module (not the notebook's) and qualified name say, so that it pickles by
    reference (``functools.wraps`` gives a wrapper the name of what it wraps: ``Cfg.__repr__`` of the
    notebook, which cloudpickle stores by value)."""
    if getattr(func, "__module__", None) in (None, "__main__"):
        return False
    found: Any = sys.modules.get(func.__module__)
    for part in getattr(func, "__qualname__", "<locals>").split("."):
        found = getattr(found, part, None)
    return found is func


def _make_module_closure(module: str, code: bytes, name: str, free: int) -> types.FunctionType:
    return _make_function(vars(importlib.import_module(module)), code, name, free)


def _make_notebook_function(code: bytes, name: str, free: int) -> types.FunctionType:
    return _make_function(notebook_globals(None), code, name, free)  # (NotebookUnpickler binds a notebook)


def _make_function(namespace: dict, code: bytes, name: str, free: int) -> types.FunctionType:
    closure = tuple(types.CellType() for _ in range(free)) or None
    return types.FunctionType(marshal.loads(code), namespace, name, None, closure)


def _set_notebook_function_state(func: types.FunctionType, state: dict) -> None:
    func.__defaults__, func.__kwdefaults__ = state["defaults"], state["kwdefaults"]
    func.__qualname__, func.__doc__, func.__annotations__ = state["qualname"], state["doc"], state["annotations"]
    func.__module__ = state.get("module", func.__module__)  # (functools.wraps gives a wrapper the wrapped's)
    func.__dict__.update(state["dict"])
    for cell, (filled, value) in zip(func.__closure__ or (), state["cells"]):
        if filled:
            cell.cell_contents = value
