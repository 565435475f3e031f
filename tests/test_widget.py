"""The lineage widget: it draws the graph, follows new runs, shows a step's details, and never raises."""

from __future__ import annotations

import pytest

import nbcache
from nbcache.graph import DotMissing

from .conftest import dot_missing, require, two_steps


@pytest.fixture
def ip(ipshell, cache_dir):
    ipshell.run_line_magic("load_ext", "nbcache")
    ipshell.reset()
    yield ipshell
    ipshell.run_line_magic("unload_ext", "nbcache")


_pipeline = two_steps


def test_widget_draws_the_graph_and_saves_it(cache_dir, tmp_path):
    require(dot_missing())
    load, total = _pipeline()
    total(load(3))
    widget = nbcache.lineage()
    assert list(widget.lineage.nodes) == ["load", "total"]
    assert "nbcache_first" in widget._picture.value and "<svg" in widget._picture.value
    assert [(e.source, e.target) for e in widget.lineage.edges] == [("load", "total")]
    assert widget.graph.source.count("nbcache_step") == 2
    magic = {"svg": b"<?xml", "png": b"\x89PNG", "pdf": b"%PDF"}
    for suffix, start in magic.items():
        path = widget.save(tmp_path / f"lineage.{suffix}")
        with open(path, "rb") as f:
            assert f.read(5).startswith(start)
    with pytest.raises(ValueError, match=r"\.svg, \.png or \.pdf"):
        widget.save(tmp_path / "lineage.gif")


def test_details_of_the_chosen_step(cache_dir):
    load, total = _pipeline()
    total(load(3))
    total(load(3))
    widget = nbcache.lineage()
    assert widget._picker.options == ("load", "total")
    widget._picker.value = "load"
    details = widget._details.value
    assert "served from cache" in details and "why: cache hit" in details
    assert nbcache.runs("load")[-1].key in details
    assert "<td>n</td>" in details and "<td>result</td>" in details
    widget._picker.value = "total"
    assert "<td>values</td>" in widget._details.value and "<td>load</td>" in widget._details.value  # from step


def test_widget_follows_new_runs(ip):
    load, total = _pipeline()
    widget = nbcache.lineage()
    assert widget.lineage.nodes == {}
    assert "No step has run yet" in widget._picture.value
    widget._drawn_at = 0.0  # long ago: the next run redraws at once
    load(2)
    assert list(widget.lineage.nodes) == ["load"]
    ip.user_ns.update(load=load, total=total)
    widget._drawn_at = float("inf")  # just drawn: a burst of runs waits for the end of the cell
    ip.run_cell("t = total(load(2))")
    assert list(widget.lineage.nodes) == ["load", "total"]  # redrawn when the cell finished


def test_only_the_newest_widget_of_a_kind_keeps_following(ip):
    load, total = _pipeline()
    older, newer, history = nbcache.lineage(), nbcache.lineage(), nbcache.lineage(history=True)
    for widget in (older, newer, history):
        widget._drawn_at = 0.0
    load(2)
    assert older.lineage.nodes == {} and list(newer.lineage.nodes) == ["load"]
    assert list(history.lineage.nodes) == ["load"]


def test_static_svg_in_the_mime_bundle_for_viewers_without_a_kernel(cache_dir):
    require(dot_missing())
    load, total = _pipeline()
    total(load(2))
    bundle = nbcache.lineage()._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "<svg" in bundle["text/html"]


def test_without_dot_the_widget_explains_and_shows_a_table(cache_dir, monkeypatch, tmp_path):
    load, total = _pipeline()
    total(load(2))
    monkeypatch.setenv("PATH", "/nonexistent")
    widget = nbcache.lineage()  # no exception
    assert "apt-get install graphviz" in widget._picture.value
    assert "<table>" in widget._picture.value and "load" in widget._picture.value
    with pytest.raises(DotMissing, match="install"):
        widget.save(tmp_path / "lineage.svg")


def test_lineage_magic_and_history_option(ip, cache_dir):
    load, total = _pipeline()
    total(load(2))
    widget = ip.run_line_magic("lineage", "")
    assert list(widget.lineage.nodes) == ["load", "total"]
    history = ip.run_line_magic("lineage", "--history")
    assert list(history.lineage.nodes) == ["load", "total"]


def long_history(steps: int) -> None:
    """``steps`` steps in this kernel, each consuming the output of the one before."""
    from datetime import datetime, timedelta, timezone

    from nbcache.records import SESSION, StepRun

    store, t0 = nbcache.cache.default_cache().store(), datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i in range(steps):
        store.append_run(StepRun(step=f"s{i:03d}", cached=False, duration_s=0.1, saved_s=0.0, key=f"k{i}", code="c",
                                 inputs={"x": f"h{i - 1}"} if i else {}, outputs=(f"h{i}",), reason="first run",
                                 started_at=t0 + timedelta(seconds=i), session=SESSION))


def test_a_long_history_draws_the_steps_that_ran_last_and_lists_every_one(cache_dir, tmp_path):
    long_history(30)
    widget = nbcache.lineage(limit=10)
    assert len(widget.lineage.nodes) == 30 and list(widget.drawn.nodes) == [f"s{i:03d}" for i in range(20, 30)]
    assert widget.drawn.earlier == {"s020"}  # it fed s021, drawn in full
    assert widget._picker.options == tuple(widget.lineage.nodes)  # any step's details can be chosen
    widget._picker.value = "s005"
    assert "s004" in widget._details.value  # where its input came from, though neither is drawn
    assert widget.graph.source.count("nbcache_step") == 10
    if dot_missing() is None:
        picture = widget._picture.value
        assert picture.count('class="node nbcache_step') == 10 and "The 9 steps that ran last, of 30" in picture
        assert widget.save(tmp_path / "part.svg").endswith("part.svg")
        assert "The 9 steps that ran last" in (tmp_path / "part.svg").read_text()  # what is drawn is saved
    assert len(nbcache.lineage(limit=None).drawn.nodes) == 30 and len(nbcache.lineage().drawn.nodes) == 30
    with pytest.raises(ValueError, match="limit is the most steps to draw"):
        nbcache.lineage(limit=0)


def test_lineage_magic_draws_every_step_when_asked(ip, cache_dir):
    from nbcache.graph import DRAWN_MAX

    long_history(DRAWN_MAX + 5)
    assert len(ip.run_line_magic("lineage", "").drawn.nodes) == DRAWN_MAX == len(nbcache.lineage().drawn.nodes)
    assert len(ip.run_line_magic("lineage", "--all").drawn.nodes) == DRAWN_MAX + 5
