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
