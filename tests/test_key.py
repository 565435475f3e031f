"""The key format: every ingredient changes the key, and nothing else does."""

from __future__ import annotations

import sys

from nbcache.key import make_key

key_module = sys.modules["nbcache.key"]

BASE = dict(step="train", code="c0de", inputs={"epochs": "h1", "data": "h2"}, version=None)


def test_every_ingredient_changes_the_key():
    base = make_key(**BASE)
    variants = [
        {**BASE, "step": "train2"},
        {**BASE, "code": "c0df"},
        {**BASE, "inputs": {"epochs": "h3", "data": "h2"}},
        {**BASE, "inputs": {"epochs": "h1"}},
        {**BASE, "version": "2"},
    ]
    keys = {make_key(**v) for v in variants}
    assert base not in keys and len(keys) == len(variants)


def test_argument_order_does_not_matter():
    assert make_key(**BASE) == make_key(**{**BASE, "inputs": {"data": "h2", "epochs": "h1"}})


def test_cache_format_and_python_version_are_in_every_key(monkeypatch):
    base = make_key(**BASE)
    monkeypatch.setattr(key_module, "CACHE_FORMAT", key_module.CACHE_FORMAT + 1)
    bumped_format = make_key(**BASE)
    monkeypatch.undo()
    monkeypatch.setattr(key_module, "PYTHON_VERSION", "3.99")
    other_python = make_key(**BASE)
    assert len({base, bumped_format, other_python}) == 3


def test_ingredients_that_read_alike_never_share_a_key():
    from nbcache.key import make_key

    assert make_key("ab", "c", {}, None) != make_key("a", "bc", {}, None)
    assert make_key("s", "c", {"x": "1", "y": "2"}, None) != make_key("s", "c", {"x": "12"}, None)
    assert make_key("s", "c", {}, None) != make_key("s", "c", {}, "")
    assert make_key("s", "c", {"a": "1"}, None) == make_key("s", "c", {"a": "1"}, None)
    assert make_key("s\udcff", "c", {}, None) != make_key("s", "c", {}, None)  # any character a name holds
