"""How a notebook shows values, kept as ambient state (``statekinds.py``): IPython's float precision
(``%precision 2``) and pretty printing (``%pprint``), which of a cell's expressions it shows
(``InteractiveShell.ast_node_interactivity = 'all'``) and the inline backend's figure formats (``%config
InlineBackend.figure_format = 'svg'``). Read and set through the modules already imported; IPython is never
imported here.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["figures_get", "figures_set", "interactivity_get", "interactivity_set", "pprint_get", "pprint_set",
           "precision_get", "precision_set"]


def _plain_text_get(trait: str) -> Any:
    shell = sys.modules["IPython"].get_ipython()
    if shell is None:
        return None
    if not shell.display_formatter.trait_has_value("formatters"):  # (not made yet, as nothing was shown: looking
        # would make them, and a `%config PlainTextFormatter` after that would no longer reach them): what they
        # will be made with, their config or their default
        section = dict.get(shell.display_formatter.config, "PlainTextFormatter") or {}
        cls = sys.modules["IPython.core.formatters"].PlainTextFormatter
        return section[trait] if trait in section else cls.class_traits()[trait].default()
    return getattr(shell.display_formatter.formatters["text/plain"], trait)


def _plain_text_set(trait: str, value: Any) -> None:
    shell = sys.modules["IPython"].get_ipython()
    if shell is not None and value is not None and _plain_text_get(trait) != value:
        setattr(shell.display_formatter.formatters["text/plain"], trait, value)


def precision_get() -> Any:  # (%precision 2: how IPython shows floats)
    return _plain_text_get("float_precision")


def precision_set(value: Any) -> None:
    _plain_text_set("float_precision", value)


def pprint_get() -> Any:  # (%pprint: whether IPython pretty-prints what it shows)
    return _plain_text_get("pprint")


def pprint_set(value: Any) -> None:
    _plain_text_set("pprint", value)


def interactivity_get() -> Any:  # (InteractiveShell.ast_node_interactivity = 'all': every expression shown)
    shell = sys.modules["IPython"].get_ipython()
    return None if shell is None else shell.ast_node_interactivity


def interactivity_set(value: Any) -> None:
    shell = sys.modules["IPython"].get_ipython()
    if shell is not None and value is not None and interactivity_get() != value:
        shell.ast_node_interactivity = value


def figures_get() -> Any:  # (%config InlineBackend.figure_format = 'svg': how the inline backend shows figures)
    config = sys.modules["matplotlib_inline.config"].InlineBackend
    backend = config.instance() if config.initialized() else None  # (not made by looking at it)
    return None if backend is None else (sorted(backend.figure_formats), dict(backend.print_figure_kwargs))


def figures_set(value: Any) -> None:
    config = sys.modules["matplotlib_inline.config"].InlineBackend
    if value is not None and config.initialized() and figures_get() != value:
        config.instance().print_figure_kwargs, config.instance().figure_formats = value[1], set(value[0])
