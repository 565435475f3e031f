"""The lineage widget: the graph of steps inline in the notebook, with the details of a chosen step.

The only module that imports ipywidgets. It draws what ``graph.py`` builds and redraws itself when
steps run: at once if it has not drawn for a moment, else when the running cell finishes, so a burst of
fast hits does not pay for a redraw each. In a file without a live kernel (nbconvert, an HTML export) it
still shows, as the static SVG its mime bundle carries. Without Graphviz's ``dot`` it says how to install
it and shows a table of the runs instead; it never raises while displaying.
"""

from __future__ import annotations

import html
import os
import sys
import time
import weakref
from typing import Any

import graphviz
import ipywidgets as widgets

from .cache import Cache, default_cache
from .graph import (DOT_HELP, DRAWN_MAX, DotMissing, Lineage, Node, build, check_limit, recent, render_svg,
                    runs_table_html, to_dot)
from .records import StepRun, format_bytes, format_seconds

__all__ = ["LineageWidget", "lineage"]

_REDRAW_EVERY_S = 0.5


def lineage(*, history: bool = False, limit: int | None = DRAWN_MAX, cache: Cache | None = None) -> LineageWidget:
    """The lineage graph of this kernel's steps as a widget that keeps itself up to date.

    ``history=True`` shows the latest run of every step the cache directory knows. Of more than ``limit``
    steps, the picture draws those that ran last, with the earlier steps that fed them, ``limit`` in all
    (``None``: every step); any step's details can be chosen. The widget's ``graph`` is the
    ``graphviz.Digraph`` of the picture; ``save("lineage.svg")`` (or .png, .pdf) writes it.
    """
    return LineageWidget(history=history, limit=limit, cache=cache)


class LineageWidget(widgets.VBox):
    """The lineage graph of this kernel's steps (or of the whole history), and a step's details."""

    def __init__(self, *, history: bool = False, limit: int | None = DRAWN_MAX, cache: Cache | None = None) -> None:
        self._history, self._limit = history, check_limit(limit)  # (ValueError before anything is made)
        self._cache = cache if cache is not None else default_cache()
        self._picture = widgets.HTML(layout=widgets.Layout(overflow="auto"))
        self._picker = widgets.Dropdown(description="step", options=[], layout=widgets.Layout(width="max-content"))
        self._details = widgets.HTML()
        self._picker.observe(self._show_details, names="value")
        super().__init__([self._picture, self._picker, self._details])
        self.add_class("nbcache-lineage")
        self._runs: list[StepRun] = []
        self._lineage = self._drawn = Lineage({}, ())
        self._drawn_at = 0.0
        self._dirty = False
        self.refresh()
        # ipywidgets keeps every widget alive: the newest one of each kind follows the runs, earlier ones
        # keep their last picture
        self._cache.events.subscribe(self._on_run, slot=(LineageWidget, history))
        _after_each_cell(self._redraw_if_dirty)

    # -- the public surface ----------------------------------------------------------------------------
    @property
    def lineage(self) -> Lineage:
        """Every step, whether or not the picture draws it."""
        return self._lineage

    @property
    def drawn(self) -> Lineage:
        """The part of the lineage the picture draws (``graph.recent``): all of it, up to ``limit`` steps."""
        return self._drawn

    @property
    def graph(self) -> graphviz.Digraph:
        """The picture as a ``graphviz.Digraph``, to render or restyle as you like."""
        return to_dot(self._drawn)

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write the picture to ``path``; its suffix (.svg, .png, .pdf) picks the format. Needs ``dot``."""
        path = os.fspath(path)
        suffix = os.path.splitext(path)[1].lstrip(".").lower()
        if suffix not in ("svg", "png", "pdf"):
            raise ValueError(f"save() writes .svg, .png or .pdf files, not {path!r}")
        try:
            data = self.graph.pipe(format=suffix)
        except graphviz.ExecutableNotFound:
            raise DotMissing(DOT_HELP) from None
        with open(path, "wb") as f:
            f.write(data)
        return path

    def refresh(self) -> None:
        """Read the history again and redraw."""
        self._runs = self._cache.runs()
        self._lineage = build(self._runs, history=self._history)
        self._drawn = recent(self._lineage, self._limit)
        self._picture.value = _picture_html(self._drawn)
        names = list(self._lineage.nodes)
        chosen = self._picker.value if self._picker.value in names else (names[-1] if names else None)
        self._picker.options = names
        self._picker.value = chosen
        self._show_details()
        self._drawn_at, self._dirty = time.monotonic(), False

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self._picture.value  # for viewers without a live kernel
        return bundle

    # -- keeping up with runs --------------------------------------------------------------------------
    def _on_run(self, run: StepRun) -> None:
        if time.monotonic() - self._drawn_at >= _REDRAW_EVERY_S:
            self.refresh()
        else:
            self._dirty = True

    def _redraw_if_dirty(self) -> None:
        if self._dirty:
            self.refresh()

    def _show_details(self, change: Any = None) -> None:
        node = self._lineage.nodes.get(self._picker.value) if self._picker.value else None
        self._details.value = _details_html(node, self._lineage, self._runs) if node else ""


def _picture_html(lineage: Lineage) -> str:
    if not lineage.nodes:
        return "<p>No step has run yet in this kernel: run a <code>@step</code> or a <code>%%step</code> cell.</p>"
    try:
        svg = render_svg(to_dot(lineage))
    except DotMissing as exc:
        return f"<p><b>{html.escape(str(exc))}</b></p>{runs_table_html(lineage)}"
    return f"<div class='nbcache-graph'>{svg[svg.find('<svg'):]}</div>"


def _details_html(node: Node, lineage: Lineage, runs: list[StepRun]) -> str:
    run = node.run
    sizes: dict[str, int] = {}
    for other in runs:
        sizes.update(other.sizes)
    made_by = {address: edge.source for edge in lineage.producers(node.name)
               for address in lineage.nodes[edge.source].run.outputs}

    def size(address: str) -> str:
        return format_bytes(sizes[address]) if address in sizes else ""

    inputs = "".join(
        f"<tr><td>{html.escape(name)}</td><td><code>{address[:12]}</code></td><td>{size(address)}</td>"
        f"<td>{html.escape(made_by.get(address, ''))}</td></tr>" for name, address in run.inputs.items())
    names = run.output_names or ([f"result[{i}]" for i in range(len(run.outputs))] if len(run.outputs) > 1
                                 else ["result"] * len(run.outputs))
    outputs = "".join(
        f"<tr><td>{html.escape(name)}</td><td><code>{address[:12]}</code></td><td>{size(address)}</td></tr>"
        for name, address in zip(names, run.outputs))
    saved = f", saved {format_seconds(run.saved_s)}" if node.state.served else ""
    badge = (f"<span style='background:{node.state.fill};border:1px solid {node.state.line};"
             f"border-radius:3px;padding:0 4px'>{node.state.label}</span>")
    return (
        f"<div class='nbcache-details'><b>{html.escape(node.name)}</b> {badge}<br>"
        f"why: {html.escape(run.reason)}<br>"
        f"started {run.started_at.astimezone():%Y-%m-%d %H:%M:%S}, took {format_seconds(run.duration_s)}{saved}"
        f"<br>key <code>{run.key or '(none: not cached)'}</code>"
        f"<table><tr><th>input</th><th>hash</th><th>size</th><th>from step</th></tr>{inputs}</table>"
        f"<table><tr><th>output</th><th>hash</th><th>size</th></tr>{outputs}</table>"
        + (f"<br>error: <code>{html.escape(run.error)}</code>" if run.error else "") + "</div>"
    )


def _after_each_cell(method: Any) -> None:
    """Call the bound ``method`` after every cell of the running IPython shell, while its object lives.
    (The shell is the one already running, if any: this module does not import IPython.)"""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return
    ref = weakref.WeakMethod(method)

    def after_cell(*args: Any) -> None:
        live = ref()
        if live is None:
            shell.events.unregister("post_run_cell", after_cell)
        else:
            live()

    shell.events.register("post_run_cell", after_cell)
