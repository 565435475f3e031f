"""What a ``%%step`` cell leaves in the notebook's namespace: which variables are its outputs, which it
deleted, about how big they are and whether they can be stored.

Plain functions of a namespace (a dict) and what the cell's analysis found; no IPython.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import re
import sys
import types
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from .arrayviews import Live
from .checks import Check
from .codestate import code_read, code_state, notebook_reads
from .fingerprint import read_digest
from .fingerprint_source import is_user_file, library_roots
from .frame import Frame, Unpicklable
from .hashing import hash_holding, hash_value
from .sharing import IPYTHON_NAMES, NOT_FOLLOWED, VALUES, closed_over, kernel_objects, path_to, paths_in, reach
from .step import Step

__all__ = ["HISTORY_NAMES", "IPYTHON_NAMES", "Alias", "Outputs", "deleted_names", "held_checks", "is_closed",
           "memory_size", "output_names", "picklable"]

# Of those, the ones that hold what earlier cells showed or were (_, _3, Out[3], _i2, In): a cell that reads
# one depends on its value, though IPython hides it from %who as its own.
HISTORY_NAMES = re.compile(r"_{1,3}|_\d+|_i{1,3}|_i\d+|_(oh|ih)|In|Out")

# A function's hash follows the globals it reads: a change there is no mutation of the function.
_CODE_TYPES = (types.FunctionType, type, types.ModuleType, types.MethodType, types.BuiltinMethodType, Step)

_NOT_SHARED = VALUES + _CODE_TYPES  # (code counts by its own fingerprint: no variable's object to share)

# What holds an output is found by following references from each variable, this many objects at most.
HOLD_LIMIT = 2_000
_NOT_FOLLOWED = (*NOT_FOLLOWED, Step)

_ABSENT = object()


class Alias(NamedTuple):
    """Stored in a variable's place: on a hit, the variable is bound to the notebook's ``of`` as it is then
    (an input of the cell, whose content the key checked): ``df = raw`` binds ``df`` to the live ``raw``; or to
    what ``path`` leads to in it (``best = models["rf"]``, a loop's ``model``: ``(("item", "rf"),)``)."""

    of: str
    path: tuple[tuple[str, Any], ...] = ()

    def found_in(self, ns: Mapping[str, Any]) -> Any:
        """The object it stands for in ``ns``; LookupError if there is none (never, as the input's content is
        the key's)."""
        try:
            value = ns[self.of]
            for kind, key in self.path:
                value = value[key] if kind == "item" else getattr(value, key)
            return value
        except Exception as exc:
            raise LookupError(f"{self.of}{self.path}") from exc


class Outputs(NamedTuple):
    """What a cell's run leaves: the variables stored (``names``), the names ``--outputs`` gave that it did
    not define (``missing``), the outputs stored as an ``Alias`` of an input (``aliases``), and the inputs
    the run left unchanged, by the ids of their objects (``live``): an output holding one holds the live
    object after a hit (``models = {"lr": lr}``: ``pickler.py``)."""

    names: list[str]
    missing: list[str]
    aliases: dict[str, Alias]
    live: dict[int, str] = {}
    changed_code: tuple[str, ...] = ()  # functions and classes it read whose state it changed (a default list
    #                                     appended to, a class attribute set): a hit would not change them
    held: dict[int, tuple[str, ...]] = {}  # of ``live``, the objects of other variables a holder stored holds,
    #                                       with every name bound to each: a hit needs them as they were
    holders: tuple[str, ...] = ()  # of ``names``, those stored only as they hold what the cell changed (not
    #                                those it holds: the base array of a view it changed, ``clf`` in ``pipe``)
    changed_inputs: tuple[str, ...] = ()  # of ``names``, the inputs it changed in place (``lr`` it fits): a hit
    #                                       binds them to other objects, so nothing else may hold them (``alone``)
    modules: dict[int, ModuleObject] = {}  # objects of the modules it reads or imports (``from helpers import
    #                                       REGISTRY``), stored as references to them (``module_objects``)


def output_names(ns: Mapping[str, Any], before: Mapping[str, int], *, binds: Sequence[str],
                 restrict: Sequence[str] | None, input_names: Sequence[str], inputs: Mapping[str, str],
                 carried: Callable[[Any], Any] = lambda value: None,
                 code_states: Mapping[str, str | None] = {}, read: Mapping[str, str] = {},
                 imports: Sequence[str] = ()) -> Outputs:
    """The variables a cell's run leaves as its outputs.

    ``before`` maps each name to the ``id`` of its value before the run. The outputs are what the cell
    binds (``binds``, seen in its code, or a name that is new or rebound after it ran), the data inputs it
    changed in place (``input_names`` whose hash is no longer the one in ``inputs``), and the variables
    sharing their objects (``aliases_of``, ``holders_of``); or, when ``restrict`` (``--outputs``) is given,
    those of its names that are defined. An output bound to the very object of an input the run left
    unchanged (``df = raw``) is stored as an ``Alias`` of it: a hit binds it to the live object, which the
    key found as it was, and whatever holds that object holds it too. ``carried(value)`` is the
    ``carry.Carried`` of an array restored and provably unchanged since (not read again), else None.
    ``code_states``: the ``code_state`` of the functions and classes it read, before it ran. ``read``: the
    digests (``read_digest``) of the global values the functions it read read in turn, before it ran: one
    changed in place (``calls.append(x)`` in a function the cell calls) is an output too. ``imports``: the
    modules it imports, whose objects, as those of the modules it reads, an output is or holds by reference.
    """
    if restrict is not None:
        return Outputs([n for n in restrict if n in ns], [n for n in restrict if n not in ns], {})
    names = [n for n in binds if n in ns]
    names += [n for n, v in ns.items() if before.get(n) != id(v) and n not in names
              and not IPYTHON_NAMES.fullmatch(n) and not n.startswith("__")]
    # the `f` of `with open(...) as f:` (a file, an archive, a temporary file) is closed by now:
    # nothing to keep, and it cannot be stored
    names = [n for n in names if not is_closed(ns[n])]
    unchanged = []  # inputs found as they were: a hit finds them so too, live, with whatever holds them
    changed_code, changed_inputs = [], []
    for name in input_names:
        value = ns.get(name, _ABSENT)
        if name in names or name not in inputs or value is _ABSENT:
            continue
        if isinstance(value, _CODE_TYPES):
            if name in code_states and code_state(value) != code_states[name]:
                changed_code.append(name)
            continue
        known = carried(value)
        if known is not None and known.address == inputs.get(name):
            unchanged.append(name)  # a restored array none of whose pages was written
            continue
        try:
            if hash_value(value) != inputs.get(name):
                names.append(name)  # mutated in place: `items.append(x)`, `df["c"] = ...`
                changed_inputs.append(name)
            else:
                unchanged.append(name)
        except Exception:
            pass
    mine = notebook_reads(code_read(ns, input_names), ns) if read else set()
    for name, digest in read.items():  # (what it changed through a function: as a hit must change it too)
        value = ns.get(name, _ABSENT)
        if (name in mine and name not in names and name not in input_names and value is not _ABSENT
                and not isinstance(value, _CODE_TYPES) and read_digest(value) != digest):
            names.append(name)
    live = {id(ns[n]): n for n in reversed(unchanged) if not isinstance(ns[n], VALUES)}
    if not any(not isinstance(ns[n], _NOT_SHARED) for n in names):
        return Outputs(names, [], {}, live, tuple(changed_code))  # (no object another variable could share)
    modules = module_objects([ns[n] for n in input_names if isinstance(ns.get(n), types.ModuleType)], imports)
    aliases = {n: Alias(live[id(ns[n])]) for n in names if id(ns[n]) in live}
    held = _reach([ns[n] for n in unchanged], HOLD_LIMIT * len(unchanged), kernel_objects(ns))  # (live on a hit)
    for n in names:  # an object inside an unchanged input (`best = models["rf"]`): where it is in the input
        if n not in aliases and id(ns[n]) in held and not isinstance(ns[n], _NOT_SHARED):
            found = next(((u, p) for u in unchanged if (p := path_to(ns[u], id(ns[n]), _NOT_SHARED))), None)
            if found:
                aliases[n] = Alias(*found)
    names += aliases_of(ns, names, held)
    holders, holding = _holders(ns, names, held, set(before.values()))
    others = held_by(ns, names + holders, live) if holders else {}  # (what else they hold of the notebook's:
    live = {**{i: n[0] for i, n in others.items()}, **live}          # its variables' objects, live on a hit)
    return Outputs(names + holders, [], aliases, live, tuple(changed_code), others, tuple(holding),
                   tuple(n for n in changed_inputs if n not in aliases and not isinstance(ns[n], _NOT_SHARED)),
                   modules)


def module_objects(read: Sequence[types.ModuleType], imports: Sequence[str]) -> dict[int, ModuleObject]:
    """The objects of the modules ``read`` and ``imports`` (absolute names; ``pkg.mod`` counts for ``pkg`` too)
    by id: a variable bound to one (``from helpers import REGISTRY``, ``env = os.environ``, ``norm`` of
    ``scipy.stats``) is that object after a hit too, not a copy of it (``pickler.py``). Their public objects
    but plain values, code (stored by name already) and modules; of the user's modules, also what those hold
    (``opts = helpers.CONFIG["opts"]``), and checked by content on a hit (kind ``module``): a library's are
    not, as their content may differ from kernel to kernel (``sys.argv``) and what a cell does to one a hit
    does not do again either way (``docs/pitfalls.md``)."""
    found: dict[int, ModuleObject] = {}
    names = {m.__name__ for m in read} | {p for m in imports if not m.startswith(".")
                                          for p in itertools.accumulate(m.split("."), lambda a, b: f"{a}.{b}")}
    roots = library_roots()
    for name in sorted(names):
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        users = isinstance(path, str) and not path.startswith(roots) and is_user_file(path)
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if attribute[:1] != "_" and not isinstance(value, _NOT_SHARED):
                found.setdefault(id(value), ModuleObject(name, attribute, (), users))
                for identity, inside in (paths_in(value, _NOT_SHARED) if users else {}).items():
                    found.setdefault(identity, ModuleObject(name, attribute, inside, True))
    return found


class ModuleObject(NamedTuple):
    """Where an object of a module is: ``module.attribute``, then ``path`` in it (``sharing.path_to``'s)."""

    module: str
    attribute: str
    path: tuple[tuple[str, Any], ...]
    checked: bool  # (by content, on a hit: a user's module's)


def aliases_of(ns: Mapping[str, Any], names: Sequence[str], held: set[int] = frozenset()) -> list[str]:
    """The other names bound to the very object one of ``names`` is (``df = raw`` in another cell, then
    ``df["c"] = ...`` in this one): stored with it, one object in one pickle, so that a hit binds them all
    to one object again, as the run left them. Not those of an object ``held`` (by an input the run left
    unchanged: a hit finds it live, as it is, and every other name keeps it)."""
    shared = {id(ns[n]) for n in names if not isinstance(ns[n], _NOT_SHARED)} - held
    if not shared:
        return []
    return [n for n, v in ns.items() if id(v) in shared and n not in names and not IPYTHON_NAMES.fullmatch(n)
            and not n.startswith("__")]


def holders_of(ns: Mapping[str, Any], names: Sequence[str], held: set[int] = frozenset(), *,
               existed: set[int] | None = None, limit: int = HOLD_LIMIT) -> list[str]:
    """The other variables whose objects hold an output's object (``models`` after ``models["lr"] = lr``, when
    this cell fits ``lr``), or are held by one (the ``clf`` inside the ``pipe`` this cell fits): stored with
    the outputs, in one pickle, so that a hit keeps them one graph of objects, as the run left it. Found by
    following references (``gc.get_referents``), ``limit`` objects from each variable at most: one past
    that is not seen (``docs/pitfalls.md``). Not objects ``held`` (see ``aliases_of``). Only an output that
    ``existed`` before the run (ids; None: any) can be held by another variable: one the cell made is held
    only by what the cell bound or changed, outputs already."""
    return _holders(ns, names, held, existed, limit)[0]


def _holders(ns: Mapping[str, Any], names: Sequence[str], held: set[int], existed: set[int] | None,
             limit: int = HOLD_LIMIT) -> tuple[list[str], list[str]]:
    """``holders_of``, and of those the ones that hold an output (not one of its own objects, as the base
    array of a view it changed, or the ``clf`` of the ``pipe`` it fits)."""
    outputs = [ns[n] for n in names if not isinstance(ns[n], _NOT_SHARED) and id(ns[n]) not in held]
    if not outputs:
        return [], []
    kernel = kernel_objects(ns)
    inside = _reach(outputs, limit * len(outputs), kernel) - {id(v) for v in outputs}
    targets = {id(v) for v in outputs if existed is None or id(v) in existed}
    found, holding = [], []
    for n, v in ns.items():
        if n in names or IPYTHON_NAMES.fullmatch(n) or n.startswith("__") or id(v) in held:
            continue
        if type(v) is types.MethodType and id(v.__self__) in targets:  # (`predict = lr.predict`, this cell fits lr)
            found.append(n)
            holding.append(n)
        elif isinstance(v, _NOT_SHARED):  # (but a closure holding one: `score = make_scorer(lr)`)
            if targets and (closed := closed_over(v)) and targets & _reach(closed, limit, kernel):
                found.append(n)
                holding.append(n)
        elif id(v) in inside:
            found.append(n)
        elif targets and targets & _reach([v], limit, kernel):
            found.append(n)
            holding.append(n)
    return found, holding


def held_by(ns: Mapping[str, Any], names: Sequence[str], live: Mapping[int, str]) -> dict[int, tuple[str, ...]]:
    """The objects of the notebook's other variables that the outputs ``names`` hold, by id, with the names
    bound to each: ``rf`` in the ``models`` stored because this cell fits ``lr``. Stored as references to
    those variables (``live``), a hit finds them as the notebook holds them then: the ``rf`` an earlier cell
    fitted, not a copy of it. The hit must find them as the run left them, every name still bound to one
    object (``Check`` kind ``held``): a name bound since to another object, or one a hit of a cell above
    bound to a copy, makes it run again (red-team)."""
    kernel = kernel_objects(ns)
    outputs = [ns[n] for n in names if not isinstance(ns[n], _NOT_SHARED)]
    inside = _reach(outputs, HOLD_LIMIT * len(outputs), kernel) - {id(v) for v in outputs}
    found: dict[int, tuple[str, ...]] = {}
    for n, v in ns.items():
        if (id(v) in inside and id(v) not in live and n not in names and not isinstance(v, _NOT_SHARED)
                and not IPYTHON_NAMES.fullmatch(n) and not n.startswith("__")):
            found[id(v)] = (*found.get(id(v), ()), n)
    return found


def held_checks(ns: Mapping[str, Any], found: Outputs) -> tuple[Live, list[Check]]:
    """``found.live`` and ``found.modules``, without the objects of ``held_by`` that cannot be hashed (stored
    with the outputs, then), with the arrays whose views are stored as views (``arrayviews.py``); and the
    checks a hit needs: of the others (kind ``held``), and of each holder (kind ``holder``), which a
    hit puts back as the run left it, so it must find it as the run did, but for what the cell changed in
    it (``models`` holding the ``lr`` this cell fits: a cell above that adds to ``models`` runs it again)."""
    live, checks = Live(found.live), []
    outputs = [ns[n] for n in found.names]  # (an object of a module they are or hold: as a hit must find it)
    for identity in found.modules.keys() & reach(outputs, HOLD_LIMIT * len(outputs), not_followed=_NOT_FOLLOWED):
        module, attribute, path, checked = found.modules[identity]
        target = f"{module}\t{attribute}"
        with contextlib.suppress(Exception):  # (one that cannot be hashed is stored as a copy, as any value)
            if checked and not any(c.target == target for c in checks if c.kind == "module"):
                checks.append(Check("module", target, hash_value(getattr(sys.modules[module], attribute))))
            live.setdefault(identity, (module, attribute, path))
    # views of the arrays it stores, or of the inputs it left unchanged, are stored as views (``arrayviews.py``)
    live.arrays = tuple(ns[n] for n in [*found.names, *found.live.values()] if type(ns[n]).__name__ in ("ndarray",
                                                                                                      "memmap"))
    holders = "\t".join(n for n in found.names if not isinstance(ns[n], _NOT_SHARED))
    for identity, names in found.held.items():  # (and one of the outputs, as found then, holds it: a name
        try:                                     # bound since to another object of the same content is not it)
            checks.append(Check("held", "\t".join(names) + "|" + holders, hash_value(ns[names[0]])))
        except Exception:
            live.pop(identity, None)
    if found.changed_inputs:  # (a variable made since to hold one would keep it as it was before a hit)
        checks.append(Check("alone", "\t".join(found.changed_inputs) + "|" + "\t".join(found.names), "-"))
    changed = {n: ns[n] for n in found.names if n not in found.holders and not isinstance(ns[n], _NOT_SHARED)}
    for holder in found.holders:
        try:
            checks.append(Check("holder", "\t".join([holder, *changed]), hash_holding(ns[holder], changed)))
        except Exception:  # (one that cannot be hashed is put back as it was: a change above it is not seen)
            pass
    return live, checks


def _reach(roots: list[Any], limit: int, kernel: set[int]) -> set[int]:
    """The ids of the objects ``roots`` lead to (``sharing.reach``), a step not followed either, nor the
    objects ``kernel`` (``kernel_objects``')."""
    return reach(roots, limit, not_followed=_NOT_FOLLOWED, stop=kernel)


def deleted_names(ns: Mapping[str, Any], before: Mapping[str, int]) -> list[str]:
    """The names bound before the run that the cell deleted (``del x``), IPython's own left out."""
    return [n for n in before if n not in ns and not IPYTHON_NAMES.fullmatch(n)]


def is_closed(value: Any) -> bool:
    """A closed file, archive or temporary file: what a ``with`` block leaves bound."""
    if isinstance(value, io.IOBase):
        return value.closed
    module = type(value).__module__
    try:
        if module == "zipfile":
            return getattr(value, "fp", False) is None
        return module in ("tempfile", "tarfile") and getattr(value, "closed", None) is True
    except Exception:
        return False


def memory_size(value: Any, depth: int = 3, seen: set[int] | None = None) -> int:
    """About how many bytes a variable holds (its data for arrays and frames, and for the items of tuples,
    lists, sets and dicts, a few levels deep, each object once), for the lineage details. It looks at
    no more than about 10,000 objects: a rough size, quickly."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    nbytes = getattr(value, "nbytes", None)
    if type(nbytes) is int and nbytes >= 0:  # (an object's own nbytes may be anything)
        return nbytes
    usage = getattr(value, "memory_usage", None)
    if callable(usage) and type(value).__module__.startswith("pandas"):
        try:
            total = usage(deep=True)  # a Series of per-column sizes for a DataFrame, an int for a Series
            return int(total.sum() if hasattr(total, "sum") else total)
        except Exception:
            pass
    size = sys.getsizeof(value)
    if depth and type(value) in (tuple, list, set, frozenset, dict) and len(seen) < 10_000:
        items = [*value.keys(), *value.values()] if type(value) is dict else value
        size += sum(memory_size(item, depth - 1, seen) for item in itertools.islice(items, 10_000))
    return size


def picklable(value: Any, by_value: set[int], notebook: types.ModuleType | None = None,
              live: Mapping[int, str] | None = None) -> bool:
    """Whether ``value`` can be stored (``by_value``: ids of the functions and classes pickled by value;
    ``notebook``: the module the notebook's cells run in; ``live``: objects stored as references)."""
    try:
        Frame(value, notebook=notebook, by_value=by_value, live=live)
        return True
    except Unpicklable:
        return False
