"""cellvars.py: what a cell's run leaves in the namespace as its outputs, and their sizes."""

from __future__ import annotations

import io
import tempfile
import threading
import zipfile

import pytest

from nbcache.cellvars import Alias, deleted_names, holders_of, is_closed, memory_size, output_names, picklable
from nbcache.hashing import hash_value


def run(ns: dict, code: str) -> dict[str, int]:
    """Run ``code`` in ``ns``; return what ``before`` was."""
    before = {name: id(value) for name, value in ns.items()}
    exec(code, ns)
    return before


def outputs(ns, before, binds=(), restrict=None, input_names=(), inputs=None):
    """(the outputs' names, the names ``--outputs`` gave that the cell did not define)"""
    return output_names(ns, before, binds=list(binds), restrict=restrict, input_names=list(input_names),
                        inputs=inputs or {})[:2]


def test_what_the_cell_binds_or_rebinds_is_an_output_ipython_names_are_not():
    ns = {"a": 1, "keep": [1], "_": None}
    before = run(ns, "a = 2\nb = 3\n_ = 4\n_i5 = 'x'\nOut = {}\n__tmp = 1\nc = keep")
    assert outputs(ns, before, binds=["a"]) == (["a", "b", "c", "keep"], [])  # (keep: c's alias, a list)


def test_other_names_of_an_output_s_object_are_outputs_but_not_of_a_plain_value():
    ns = {"raw": {"a": 1}, "n": 7, "text": "t", "f": len}
    before = run(ns, "df = raw\nm = n\ns = text\ng = f")
    assert outputs(ns, before, binds=["df", "m", "s", "g"]) == (["df", "m", "s", "g", "raw"], [])


def test_an_output_that_is_an_unchanged_input_s_object_stands_for_it_and_its_other_names_are_not_stored():
    """``df = raw``: df is stored as an alias of the input raw (a hit binds it to the live raw, which the key
    checked); ``keep``, another name of that object, needs nothing. Changed through df, raw is stored."""
    ns = {"raw": {"a": 1}}
    ns["keep"] = ns["raw"]
    inputs = {"raw": hash_value(ns["raw"])}
    before = run(ns, "df = raw")
    found = output_names(ns, before, binds=["df"], restrict=None, input_names=["raw"], inputs=inputs)
    assert found.names == ["df"] and found.aliases == {"df": Alias("raw")}
    before = run(ns, "df = raw\ndf['b'] = 2")
    found = output_names(ns, before, binds=["df"], restrict=None, input_names=["raw"], inputs=inputs)
    assert found.names == ["df", "raw", "keep"] and found.aliases == {}


def test_variables_holding_an_output_or_held_by_one_are_found_up_to_the_limit():
    lr = object.__new__(type("Model", (), {}))
    ns = {"lr": lr, "models": {"lr": lr}, "deep": [[[lr]]], "other": {"x": 1}, "pipe": {"steps": [("s", None)]}}
    ns["scaler"] = object.__new__(type("Scaler", (), {}))
    ns["pipe"]["steps"][0] = ("s", ns["scaler"])
    assert holders_of(ns, ["lr"]) == ["models", "deep"]  # (hold it)
    assert holders_of(ns, ["lr"], existed=set()) == []  # (made by the cell: only its outputs hold it)
    assert holders_of(ns, ["pipe"], existed=set()) == ["scaler"]  # (held by it)
    assert holders_of(ns, ["lr"], limit=2) == ["models"]  # (deep holds it three objects down)
    assert holders_of(ns, ["lr"], held={id(lr)}) == []  # (an unchanged input's: live on a hit)


def test_a_name_the_code_binds_but_the_run_left_unchanged_is_still_an_output():
    ns = {"y": 1}
    before = run(ns, "pass")
    assert outputs(ns, before, binds=["y", "never_bound"]) == (["y"], [])


def test_the_closed_file_of_a_with_block_is_not_an_output(tmp_path):
    ns = {"path": str(tmp_path / "f.txt")}
    before = run(ns, "with open(path, 'w') as f:\n    f.write('x')\nn = 1")
    assert outputs(ns, before, binds=["f", "n"]) == (["n"], [])


def test_an_input_changed_in_place_is_an_output_a_function_is_not():
    ns = {"items": [1], "same": [2], "g": lambda: 1}
    inputs = {name: hash_value(ns[name]) for name in ("items", "same")}
    inputs["g"] = "whatever"
    before = run(ns, "items.append(2)")
    assert outputs(ns, before, input_names=["items", "same", "g"], inputs=inputs) == (["items"], [])


def test_outputs_restricts_and_names_what_the_cell_did_not_define():
    ns = {}
    before = run(ns, "x = 1\ny = 2")
    assert outputs(ns, before, binds=["x", "y"], restrict=["y", "typo"]) == (["y"], ["typo"])


def test_deleted_names():
    ns = {"a": 1, "b": 2, "_": 3, "_5": 4}
    before = run(ns, "del a\ndel _\ndel _5")
    assert deleted_names(ns, before) == ["a"]


def test_what_a_with_block_leaves_is_closed(tmp_path):
    with open(tmp_path / "f", "w") as f:
        pass
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        pass
    with tempfile.TemporaryFile() as t:
        pass
    assert is_closed(f) and is_closed(z) and is_closed(t)
    assert not is_closed(io.StringIO()) and not is_closed([1]) and not is_closed(None)


def test_memory_size_counts_the_data_inside_containers_each_object_once():
    class Array:
        nbytes = 8_000_000

    big = Array()
    assert memory_size(big) == 8_000_000
    assert memory_size((big, big)) < 8_001_000  # the same array twice is counted once
    assert memory_size({"a": big, "b": Array()}) > 16_000_000
    assert memory_size(b"x" * 10_000) >= 10_000


@pytest.mark.parametrize("nbytes", [-1, True, 2.5, "8"])
def test_memory_size_ignores_an_nbytes_that_is_no_size(nbytes):
    odd = type("Odd", (), {"nbytes": nbytes})()
    size = memory_size(odd)
    assert type(size) is int and size > 0  # what a stored entry's sizes can hold


def test_memory_size_is_quick_on_deep_and_long_data():
    deep: list = []
    for _ in range(10_000):
        deep = [deep]
    assert memory_size(deep) > 0
    assert memory_size(list(range(1_000_000))) > 8_000_000


def test_picklable():
    assert picklable({"a": [1, 2]}, set())
    assert not picklable(threading.Lock(), set())
