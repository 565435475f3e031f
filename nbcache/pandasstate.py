"""pandas' options, kept as ambient state (``statekinds.py``): all of them (how tables show, for a cell), or
those that change what pandas computes (an input of every step). Read through ``pd.options`` and
``pd.get_option`` as a user would, without showing the warnings deprecated options give.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

from .quietly import quietly, unshown
from .statediff import equal

__all__ = ["pandas_get", "pandas_set"]


def _pandas_options(computing: bool = False) -> dict[str, Any]:
    """Every option by its full name (``display.max_rows``) with its value, found through ``pd.options`` as a
    user would; or (``computing``) those under ``_COMPUTING``, without reading the others (a first hit reads
    them: the 75 options of pandas 3 took 0.4 ms, ``display.`` and ``styler.`` most of it), nor the no-ops
    pandas keeps (``_no_ops``). Under filters that ignore warnings: reading a deprecated option warns."""
    pd = sys.modules["pandas"]
    options = pd.options
    skip = _no_ops(pd) if computing else frozenset()
    found: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        for attribute in dir(node):
            name = prefix + attribute
            if name in skip or computing and not any(c.startswith(name) or name.startswith(c) for c in _COMPUTING):
                continue  # (neither one of them, nor a group holding one)
            value = getattr(node, attribute)
            if type(value) is type(options):
                walk(value, f"{name}.")
            elif not computing or name.startswith(_COMPUTING):
                found[name] = value

    walk(options, "")
    return found


def _no_ops(pd: Any) -> frozenset[str]:
    """The options pandas 3 keeps as deprecated no-ops: reading one warns (10 us a hit each) and says nothing."""
    return _NO_OPS_SINCE_3 if int(pd.__version__.split(".")[0]) >= 3 else frozenset()


_pandas_names: dict[bool, list[str]] = {}  # the options pandas registers do not change while it is imported
_NO_OPS_SINCE_3 = frozenset({"future.no_silent_downcasting", "mode.chained_assignment", "mode.copy_on_write"})
_COMPUTING = ("future.", "compute.", "mode.string_storage", "mode.chained_assignment", "mode.copy_on_write",
              "mode.use_inf_as_na", "io.parquet.engine", "io.sql.engine")


def pandas_get(computing: bool = False) -> dict:
    """Every pandas option, or (``computing``) those that change what pandas computes, not how it shows it:
    the ``future.`` switches (``future.infer_string``: str or object columns), ``compute.`` (bottleneck's
    sums differ in the last bits), how strings are stored, whether chained assignment raises, which engine
    reads parquet; these few read one by one (a hit reads them). The first call finds them, and reads them
    as it does."""
    pd = sys.modules["pandas"]
    if computing not in _pandas_names:
        with warnings.catch_warnings():  # (dir() of a deprecated option warns)
            warnings.simplefilter("ignore")
            found = _pandas_options(computing)
        _pandas_names[computing] = list(found)
        return found
    values = {}
    with unshown():  # (reading a deprecated one warns)
        for name in _pandas_names[computing]:
            try:
                values[name] = pd.get_option(name)
            except Warning:  # (a filter makes its warning an error)
                values[name] = quietly(functools.partial(pd.get_option, name))
            except Exception:  # an option removed since the names were read
                continue
    return values


def pandas_set(values: dict) -> None:
    pd = sys.modules["pandas"]
    current = pandas_get()
    for name, value in values.items():
        if name in current and not equal(current[name], value):
            quietly(functools.partial(pd.set_option, name, value))  # (a deprecated one warns)
