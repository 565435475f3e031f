"""nbcache: cache notebook steps on disk, keyed on their code and the content of their inputs.

Decorate a function with ``@step``; its results are stored under ``.nbcache/`` (or ``$NBCACHE_DIR``) and
served from there when the same code is called with the same inputs again, in this process or after a
restart. ``runs()`` tells what happened and why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cache import Cache, cache_dir, set_cache_dir, set_remote
from .cache import default_cache as _default_cache
from .errors import CacheWarning, NBCacheError, UncacheableError
from .fingerprint import fingerprint
from .hashing import hash_value
from .key import CACHE_FORMAT
from .records import Change, ChangeKind, Outcome, StepRun
from .step import Step, clear, runs, step
from .store import MemoryStore, Store

if TYPE_CHECKING:
    from .widget import LineageWidget

__version__ = "0.1.0"

Cache.warm(_default_cache())  # the key and the store of ./.nbcache (or $NBCACHE_DIR), if there is one


def lineage(*, history: bool = False, limit: int | None = 200) -> LineageWidget:
    """The lineage graph of this kernel's steps as a widget that keeps itself up to date.

    ``history=True`` shows the latest run of every step the cache directory knows. Of more than ``limit``
    steps (200: ``graph.DRAWN_MAX``), the picture draws those that ran last, with the earlier steps that fed
    them, ``limit`` in all (``None``: every step, which takes ``dot`` seconds past a few hundred); any
    step's details can be chosen under it. The widget's ``graph`` is the ``graphviz.Digraph`` of the
    picture; ``save("lineage.svg")`` (or .png, .pdf) writes it.
    """
    from .widget import lineage as lineage_widget  # (ipywidgets and graphviz: imported when first used)

    return lineage_widget(history=history, limit=limit)


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext nbcache``: register ``%%step``, ``%steps`` and ``%nbcache`` (IPython is imported here,
    not by ``import nbcache``)."""
    from .magics import load_ipython_extension as load
    from .widget import lineage as lineage_widget

    load(ipython, lineage=lineage_widget)


def unload_ipython_extension(ipython: object) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "CACHE_FORMAT",
    "Cache",
    "CacheWarning",
    "Change",
    "ChangeKind",
    "MemoryStore",
    "NBCacheError",
    "Outcome",
    "Step",
    "StepRun",
    "Store",
    "UncacheableError",
    "cache_dir",
    "clear",
    "fingerprint",
    "hash_value",
    "lineage",
    "runs",
    "set_cache_dir",
    "set_remote",
    "step",
]
