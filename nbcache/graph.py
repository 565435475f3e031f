"""The lineage graph of steps, built from run records: pure data, drawn as Graphviz DOT.

Nodes are steps: by default the latest run of each step in this kernel, or with ``history=True`` the
latest run of every step the cache directory has a record of. An edge goes from a step to each step that
consumed one of its outputs, matched by content hash, so the graph is right across kernel restarts and
when a value went through plain cells on the way. No IPython and no widgets here: ``widget.py`` shows it. (The module is not called lineage: that name is
``nbcache.lineage()``, the function that returns the widget.)

A long lineage is drawn in part (``recent``): the steps that ran last, with the earlier steps that fed
them, at most ``DRAWN_MAX`` in all. Past a few hundred steps a picture is too big to read, and ``dot``'s
layout takes seconds (it grows faster than the graph: 17 s for 2,000 steps); what is left out is said
under the picture.
"""

from __future__ import annotations

import enum
import html
from dataclasses import dataclass
from typing import Iterable

import graphviz

from .records import SESSION, Outcome, StepRun, format_seconds

__all__ = ["DRAWN_MAX", "Lineage", "Node", "Edge", "State", "build", "check_limit", "left_out_text", "recent",
           "to_dot", "render_svg", "DotMissing"]

DRAWN_MAX = 200
"""The most steps ``recent`` keeps to draw, by default (the lineage widget's ``limit``)."""


class State(enum.Enum):
    """How a step's latest run went; each state has its own colour in the graph."""

    HIT = ("served from cache", "#c8e6c9", "#2e7d32")
    """Its stored result was used; the body did not run."""
    TEAM_HIT = ("served from the team cache", "#b2ebf2", "#00838f")
    """Its result was copied from the team cache (another machine computed it); the body did not run here."""
    FIRST = ("ran for the first time", "#bbdefb", "#1565c0")
    """No earlier run of this step was recorded."""
    RERUN = ("re-ran: something changed", "#ffe0b2", "#e65100")
    """Its code, an input or its version changed, or its stored result was gone."""
    UNCACHED = ("ran without the cache", "#eeeeee", "#616161")
    """Caching was disabled, an input could not be hashed, or the step cannot be cached (it runs a shell
    command, shows a widget, reads the namespace through globals())."""
    FAILED = ("failed", "#ffcdd2", "#c62828")
    """It raised an exception; nothing was stored."""

    def __init__(self, label: str, fill: str, line: str) -> None:
        self.label, self.fill, self.line = label, fill, line

    @property
    def served(self) -> bool:
        """Whether the step's body did not run (its result was served from a cache)."""
        return self is State.HIT or self is State.TEAM_HIT

    @classmethod
    def of(cls, run: StepRun) -> State:
        return _STATES.get(run.state, cls.RERUN)


_STATES = {Outcome.HIT: State.HIT, Outcome.TEAM_HIT: State.TEAM_HIT, Outcome.FAILED: State.FAILED,
           Outcome.FIRST_RUN: State.FIRST,
           Outcome.DISABLED: State.UNCACHED, Outcome.UNCACHEABLE: State.UNCACHED,
           Outcome.ALWAYS_RUNS: State.UNCACHED, Outcome.UNREADABLE: State.UNCACHED}
"""The colour of each outcome; the others (changed, removed, damaged) re-ran."""


@dataclass(frozen=True)
class Node:
    name: str
    run: StepRun
    state: State

    @property
    def label(self) -> str:
        text = f"{self.name}\n{format_seconds(self.run.duration_s)}"
        if self.state.served:
            text += f" · saved {format_seconds(self.run.saved_s)}"
        return text


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    values: tuple[str, ...]  # the consumer's input names that the producer's outputs fed


@dataclass(frozen=True)
class Lineage:
    nodes: dict[str, Node]
    edges: tuple[Edge, ...]
    earlier: frozenset[str] = frozenset()
    """Of a part drawn (``recent``): the steps drawn only because they fed one drawn, dashed."""
    left_out: int = 0
    """Of a part drawn (``recent``): how many steps of the whole lineage it leaves out."""

    def producers(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.target == name]

    def consumers(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.source == name]


def build(runs: Iterable[StepRun], *, history: bool = False, session: str = SESSION) -> Lineage:
    """The graph of the latest run of each step (of ``session``, unless ``history``)."""
    runs = list(runs)
    latest: dict[str, StepRun] = {}
    for run in runs:
        if history or run.session == session:
            latest.pop(run.step, None)  # keep insertion order = order of latest runs
            latest[run.step] = run
    nodes = {name: Node(name, run, State.of(run)) for name, run in latest.items()}
    made_by: dict[str, list[StepRun]] = {}  # every run in the history that produced a value
    for run in runs:
        if run.step in nodes:
            for address in (*run.outputs, run.result):  # a tuple's elements, and the tuple as a whole
                if address:
                    made_by.setdefault(address, []).append(run)
    edges: dict[tuple[str, str], list[str]] = {}
    for consumer in latest.values():
        for input_name, address in consumer.inputs.items():
            producer = _producer(made_by.get(address, []), consumer)
            if producer is not None:
                edges.setdefault((producer.step, consumer.step), []).append(input_name)
    return Lineage(nodes, tuple(Edge(s, t, tuple(v)) for (s, t), v in edges.items()))


def recent(lineage: Lineage, limit: int | None = DRAWN_MAX) -> Lineage:
    """The part of ``lineage`` to draw: the steps that ran last, each with the steps that produced its inputs
    (those that ran before them are ``earlier``: drawn dashed, their own inputs not drawn), at most ``limit``
    steps in all (the last step and its producers always), and every edge between them. A lineage of at
    most ``limit`` steps, or ``limit=None``, is the whole of it."""
    if check_limit(limit) is None or len(lineage.nodes) <= limit:
        return lineage
    producers: dict[str, set[str]] = {}
    for edge in lineage.edges:
        producers.setdefault(edge.target, set()).add(edge.source)
    shown: set[str] = set()
    last: set[str] = set()  # the steps that ran last, drawn in full
    for name in reversed(list(lineage.nodes)):  # (in the order of their latest runs: the last first)
        needed = {name, *producers.get(name, ())} - shown
        if last and len(shown) + len(needed) > limit:
            break
        shown |= needed
        last.add(name)
    return Lineage({name: node for name, node in lineage.nodes.items() if name in shown},
                   tuple(e for e in lineage.edges if e.source in shown and e.target in shown),
                   earlier=frozenset(shown - last), left_out=len(lineage.nodes) - len(shown))


def check_limit(limit: int | None) -> int | None:
    """``limit`` if it is a number of steps to draw, 1 or more, or None (all of them); else ValueError."""
    if limit is not None and (type(limit) is not int or limit < 1):
        raise ValueError(f"limit is the most steps to draw, a whole number from 1 (or None: all), not {limit!r}")
    return limit


def left_out_text(lineage: Lineage) -> str:
    """What a part drawn leaves out, in a sentence ("" when it is the whole lineage)."""
    if not lineage.left_out:
        return ""
    drawn, earlier = len(lineage.nodes) - len(lineage.earlier), len(lineage.earlier)
    text = ("The step that ran last" if drawn == 1 else f"The {drawn:,} steps that ran last") + \
        f", of {len(lineage.nodes) + lineage.left_out:,}"
    if earlier:
        text += (f"; dashed, {'the earlier step' if earlier == 1 else f'{earlier:,} earlier steps'} that fed"
                 f" {'it' if drawn == 1 else 'them'}")
    return text + ". nbcache.lineage(limit=None) draws every step."


def _producer(candidates: list[StepRun], consumer: StepRun) -> StepRun | None:
    """The step that made a value: of the runs that produced it before the consumer started, the latest.

    Any run in the history counts, so the edge stays when the producer has re-run since; a step that only
    ran afterwards is no producer, even if it happens to return an equal value.
    """
    before = [r for r in candidates if r.step != consumer.step and r.started_at <= consumer.started_at]
    return max(before, key=lambda r: r.started_at) if before else None


def to_dot(lineage: Lineage, *, legend: bool = True) -> graphviz.Digraph:
    graph = graphviz.Digraph("lineage", graph_attr={"rankdir": "LR", "bgcolor": "transparent"},
                             node_attr={"shape": "box", "style": "rounded,filled", "fontname": "Helvetica",
                                        "fontsize": "11"},
                             edge_attr={"color": "#757575", "fontname": "Helvetica", "fontsize": "9"})
    if len(lineage.nodes) > DRAWN_MAX:  # (a picture of every step, asked for: dot's search for the best
        graph.attr(nslimit="0.2", mclimit="0.1")  # layout is cut short: 2,000 steps take 2 s, not 17)
    for node in lineage.nodes.values():
        earlier = node.name in lineage.earlier
        graph.node(_id(node.name), node.label, fillcolor=node.state.fill, color=node.state.line,
                   tooltip=f"{node.name}: {node.run.reason}" + (" (drawn for a step it fed)" if earlier else ""),
                   id=f"step_{_id(node.name)}", style="rounded,filled,dashed" if earlier else None,
                   **{"class": f"nbcache_step nbcache_{node.state.name.lower()}"  # for styles and tests
                      + (" nbcache_earlier" if earlier else "")})
    for edge in lineage.edges:
        graph.edge(_id(edge.source), _id(edge.target), label=", ".join(edge.values))
    if legend and lineage.nodes:  # one row of coloured boxes under the graph, and what is not drawn
        cells = "".join(f'<TD BGCOLOR="{s.fill}" COLOR="{s.line}" BORDER="1" STYLE="rounded" CELLPADDING="3">'
                        f'<FONT POINT-SIZE="9" FACE="Helvetica">{s.label}</FONT></TD>' for s in State)
        note = left_out_text(lineage)
        if note:
            cells += (f'</TR><TR><TD COLSPAN="{len(State)}" ALIGN="LEFT"><FONT POINT-SIZE="9" FACE="Helvetica">'
                      f'{html.escape(note)}</FONT></TD>')
        graph.attr(label=f'<<TABLE BORDER="0" CELLSPACING="6"><TR>{cells}</TR></TABLE>>', labelloc="b",
                   labeljust="l")
    return graph


class DotMissing(RuntimeError):
    """Graphviz's ``dot`` program is not installed."""


DOT_HELP = ("Graphviz's dot program is needed to draw the graph: install it with "
            "`apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`.")


def render_svg(graph: graphviz.Digraph) -> str:
    """The graph as SVG text; raises DotMissing (with how to install it) when ``dot`` is not there."""
    try:
        return graph.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound:
        raise DotMissing(DOT_HELP) from None


def runs_table_html(lineage: Lineage) -> str:
    """The nodes as a plain HTML table: what shows instead of the picture when ``dot`` is missing."""
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(n.name)}</td>"
        f"<td style='text-align:left;background:{n.state.fill}'>{n.state.label}</td>"
        f"<td>{format_seconds(n.run.duration_s)}</td>"
        f"<td>{format_seconds(n.run.saved_s) if n.state.served else ''}</td>"
        f"<td style='text-align:left'>{html.escape(n.run.reason)}</td></tr>"
        for n in lineage.nodes.values())
    note = f"<p>{html.escape(left_out_text(lineage))}</p>" if lineage.left_out else ""
    return ("<table><tr><th>step</th><th>state</th><th>duration</th><th>saved</th><th>reason</th></tr>"
            f"{rows}</table>{note}")


def _id(name: str) -> str:
    return "s_" + "".join(c if c.isalnum() else f"_{ord(c):x}_" for c in name)
