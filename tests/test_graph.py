"""The lineage graph from known run histories: nodes, states, edges, colours, and without dot."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import graphviz
import pytest

from nbcache.graph import (DRAWN_MAX, DotMissing, State, build, left_out_text, recent, render_svg, runs_table_html,
                           to_dot)
from nbcache.records import StepRun

from .conftest import dot_missing, require

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def run(step, *, at, inputs=None, outputs=(), cached=False, reason="first run", status="ok", session="k1",
        duration=0.5, saved=0.0):
    return StepRun(step=step, cached=cached, duration_s=duration, saved_s=saved, key=f"key-{step}-{at}",
                   code="c", inputs=inputs or {}, outputs=tuple(outputs), reason=reason,
                   started_at=T0 + timedelta(seconds=at), status=status, session=session)


PIPELINE = [
    run("importer", at=0, inputs={"n": "h-n"}, outputs=["h-raw", "h-labels"]),
    run("normalizer", at=1, inputs={"X": "h-raw"}, outputs=["h-norm"]),
    run("trainer", at=2, inputs={"X": "h-norm", "y": "h-labels", "epochs": "h-1"}, outputs=["h-w1"]),
    run("evaluator", at=3, inputs={"w": "h-w1", "X": "h-norm", "y": "h-labels"}, outputs=["h-acc1"]),
]
SECOND = [  # after a restart: the trainer's epochs changed
    run("importer", at=10, inputs={"n": "h-n"}, outputs=["h-raw", "h-labels"], cached=True, reason="cache hit",
        session="k2", duration=0.001, saved=1.2),
    run("normalizer", at=11, inputs={"X": "h-raw"}, outputs=["h-norm"], cached=True, reason="cache hit",
        session="k2", duration=0.001, saved=1.5),
    run("trainer", at=12, inputs={"X": "h-norm", "y": "h-labels", "epochs": "h-2"}, outputs=["h-w2"],
        reason="argument epochs changed", session="k2"),
    run("evaluator", at=13, inputs={"w": "h-w2", "X": "h-norm", "y": "h-labels"}, outputs=["h-acc2"],
        reason="argument w changed", session="k2"),
]


def test_nodes_are_the_latest_runs_of_this_kernel_with_their_state():
    lineage = build(PIPELINE + SECOND, session="k2")
    assert list(lineage.nodes) == ["importer", "normalizer", "trainer", "evaluator"]
    assert [n.state for n in lineage.nodes.values()] == [State.HIT, State.HIT, State.RERUN, State.RERUN]
    assert lineage.nodes["importer"].label == "importer\n1.0 ms · saved 1.20 s"
    assert build(PIPELINE + SECOND, session="k1").nodes["trainer"].state is State.FIRST


def test_edges_follow_content_hashes_and_name_the_inputs():
    lineage = build(PIPELINE, session="k1")
    edges = {(e.source, e.target): e.values for e in lineage.edges}
    assert edges == {
        ("importer", "normalizer"): ("X",),
        ("importer", "trainer"): ("y",),
        ("normalizer", "trainer"): ("X",),
        ("importer", "evaluator"): ("y",),
        ("normalizer", "evaluator"): ("X",),
        ("trainer", "evaluator"): ("w",),
    }
    assert sorted(e.source for e in lineage.producers("trainer")) == ["importer", "normalizer"]


def test_edges_hold_across_restarts_and_plain_cells():
    # the consumer ran in a later kernel, on a value that went through plain cells unchanged
    later = run("report", at=20, inputs={"acc": "h-acc2"}, session="k3")
    lineage = build(PIPELINE + SECOND + [later], history=True)
    assert ("evaluator", "report") in {(e.source, e.target) for e in lineage.edges}
    assert build(PIPELINE + SECOND + [later], session="k3").edges == ()  # this kernel ran only the report


def test_producer_is_the_latest_before_the_consumer():
    a = run("a", at=0, outputs=["h-x"])
    b = run("b", at=5, outputs=["h-x"])
    early = run("c", at=3, inputs={"x": "h-x"})
    assert [e.source for e in build([a, b, early], session="k1").producers("c")] == ["a"]


@pytest.mark.parametrize("reason, cached, status, state", [
    ("cache hit", True, "ok", State.HIT),
    ("first run", False, "ok", State.FIRST),
    ("code changed: helper()", False, "ok", State.RERUN),
    ("version changed from '1' to '2'", False, "ok", State.RERUN),
    ("cache disabled", False, "ok", State.UNCACHED),
    ("uncacheable argument x (generator)", False, "ok", State.UNCACHED),
    ("first run", False, "failed", State.FAILED),
    ("first run; result not cached: cannot be pickled", False, "ok", State.FIRST),
    ("cannot fingerprint f(): lock in it cannot be hashed", False, "ok", State.UNCACHED),
])
def test_states(reason, cached, status, state):
    assert State.of(run("s", at=0, reason=reason, cached=cached, status=status)) is state


def test_dot_colours_each_state_and_has_a_legend():
    dot = to_dot(build(PIPELINE + SECOND, session="k2"))
    assert isinstance(dot, graphviz.Digraph)
    source = dot.source
    assert source.count(f'fillcolor="{State.HIT.fill}"') == 2
    assert source.count(f'fillcolor="{State.RERUN.fill}"') == 2
    assert 'class="nbcache_step nbcache_hit"' in source
    for state in State:
        assert state.label in source  # the legend names every colour


def test_svg_has_a_node_per_step():
    require(dot_missing())
    svg = render_svg(to_dot(build(PIPELINE, session="k1")))
    assert svg.count('class="node nbcache_step nbcache_first"') == 4
    assert "<svg" in svg


def test_names_that_are_not_identifiers_are_fine():
    require(dot_missing())
    lineage = build([run("X, y", at=0, outputs=["h"]), run("cell-1a2b", at=1, inputs={"X": "h"})], session="k1")
    assert "X, y" in render_svg(to_dot(lineage))


def test_without_dot_a_clear_error_and_a_table(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    lineage = build(PIPELINE, session="k1")
    with pytest.raises(DotMissing, match="apt-get install graphviz"):
        render_svg(to_dot(lineage))
    table = runs_table_html(lineage)
    assert table.count("<tr>") == 5 and "ran for the first time" in table


# a long lineage: the steps that ran last, with the steps that fed them

def chain(n: int, *, session: str = "k1") -> list[StepRun]:
    """n steps, each consuming the output of the one before and of s00 (the first)."""
    return [run(f"s{i:02d}", at=i, outputs=[f"h{i}"], session=session,
                inputs={"prev": f"h{i - 1}", "first": "h0"} if i > 1 else {"prev": "h0"} if i else None)
            for i in range(n)]


def test_a_long_lineage_is_drawn_in_part_the_steps_that_ran_last_and_what_fed_them():
    whole = build(chain(30), session="k1")
    part = recent(whole, 10)
    assert list(part.nodes) == ["s00", *[f"s{i:02d}" for i in range(21, 30)]]  # in the order they ran
    assert part.earlier == {"s00", "s21"}  # s22 drawn in full with what fed it; s21's producer s20 did not fit
    assert part.left_out == 20 and part.nodes["s25"] is whole.nodes["s25"]
    assert {(e.source, e.target) for e in part.edges} == (
        {(f"s{i - 1:02d}", f"s{i:02d}") for i in range(22, 30)} | {("s00", f"s{i:02d}") for i in range(21, 30)})
    assert recent(whole, 30) is whole and recent(whole, None) is whole  # short enough, or asked for all


def test_the_last_step_is_drawn_with_all_its_producers_whatever_the_limit():
    part = recent(build(chain(5), session="k1"), 1)
    assert set(part.nodes) == {"s04", "s03", "s00"} and part.earlier == {"s03", "s00"} and part.left_out == 2


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "10"])
def test_a_limit_that_is_no_number_of_steps_is_refused(limit):
    with pytest.raises(ValueError, match="limit is the most steps to draw"):
        recent(build(chain(3), session="k1"), limit)


def test_the_picture_says_what_it_leaves_out_and_dashes_the_earlier_steps():
    source = to_dot(recent(build(chain(30), session="k1"), 10)).source
    assert "The 8 steps that ran last, of 30; dashed, 2 earlier steps that fed them." in source
    assert "nbcache.lineage(limit=None) draws every step" in source
    assert source.count("nbcache_earlier") == 2 and source.count("rounded,filled,dashed") == 2
    whole = to_dot(build(chain(30), session="k1")).source
    assert "ran last" not in whole and "dashed" not in whole and "nslimit" not in whole
    assert "nslimit" in to_dot(build(chain(DRAWN_MAX + 1), session="k1")).source  # (a bounded layout search)
    table = runs_table_html(recent(build(chain(30), session="k1"), 10))
    assert table.count("<tr>") == 11 and "The 8 steps that ran last, of 30" in table


def test_svg_of_a_part_dashes_the_earlier_steps():
    require(dot_missing())
    svg = render_svg(to_dot(recent(build(chain(30), session="k1"), 10)))
    assert svg.count('class="node nbcache_step') == 10 and svg.count("nbcache_earlier") == 2
    assert "stroke-dasharray" in svg and "ran last, of 30" in svg


def test_what_is_left_out_is_said_in_words():
    assert left_out_text(build(chain(3), session="k1")) == ""
    assert left_out_text(recent(build(chain(5), session="k1"), 1)) == (
        "The step that ran last, of 5; dashed, 2 earlier steps that fed it. nbcache.lineage(limit=None) draws"
        " every step.")
    lone = [run(f"s{i:04d}", at=i) for i in range(1200)]  # steps with no inputs
    assert left_out_text(recent(build(lone, session="k1"), 3)).startswith("The 3 steps that ran last, of 1,200.")
    fed_by_a = [run("a", at=0, outputs=["h"]), run("x", at=1), run("b", at=2, inputs={"v": "h"}),
                run("c", at=3, inputs={"v": "h"})]
    assert left_out_text(recent(build(fed_by_a, session="k1"), 3)).startswith(
        "The 2 steps that ran last, of 4; dashed, the earlier step that fed them.")
