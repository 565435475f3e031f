"""The records a store keeps per step: ``Entry`` (what one key produced) and ``Latest`` (a step's latest
ingredients). Both read back as written, read what older nbcache versions wrote, and anything malformed
raises ``Damaged`` saying what is wrong (the caller forgets it and recomputes), never another exception."""

from __future__ import annotations

import json

import pytest

from nbcache.checks import Check
from nbcache.key import CACHE_FORMAT
from nbcache.entry import AMBIENT_BLOB, Entry, Latest
from nbcache.frame import Damaged

FUNCTION = {"step": "load", "kind": "function", "outputs": ["h1"], "blobs": ["h1-x"], "sizes": {"h1": 120},
            "created_at": 1700000000.5, "duration_s": 2.5, "tuple": False, "result": ""}
TUPLE = {"step": "split", "kind": "function", "outputs": ["h1", "h2"],
         "blobs": ["h1-x", "h2-y", f"{AMBIENT_BLOB}-z"], "sizes": {"h1": 10, "h2": 20},
         "created_at": 1700000000.0, "duration_s": 0.25, "tuple": True, "result": "whole", "ambient": True,
         "checks": [["file", "data.csv", "d1", [10, 1700000000000000000, 42]], ["random", "numpy", "s1", None]]}
CELL = {"step": "cell_1", "kind": "cell", "outputs": ["x1", "y1"], "blobs": ["p-1"], "sizes": {"x1": 5, "y1": 6},
        "created_at": 1700000001, "duration_s": 0.0}


def text(record: dict, **changes) -> str:
    record = {**record, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not _DROP})


_DROP = object()


def damaged(text_: object) -> str:
    """The message of the Damaged that reading ``text_`` raises."""
    with pytest.raises(Damaged) as info:
        Entry.from_json(text_)
    return str(info.value)


# valid entries

def test_a_function_entry_reads_back():
    entry = Entry.from_json(text(FUNCTION))
    assert entry == Entry(step="load", kind="function", outputs=("h1",), blobs=("h1-x",), sizes={"h1": 120},
                          created_at=1700000000.5, duration_s=2.5)
    assert Entry.from_json(entry.to_json()) == entry


def test_a_tuple_entry_with_ambient_state_and_checks_reads_back():
    entry = Entry.from_json(text(TUPLE))
    assert entry.is_tuple and entry.ambient and entry.result == "whole"
    assert entry.outputs == ("h1", "h2") and len(entry.blobs) == 3
    assert entry.checks == (Check("file", "data.csv", "d1", (10, 1700000000000000000, 42)),
                            Check("random", "numpy", "s1"))
    assert Entry.from_json(entry.to_json()) == entry


def test_a_cell_entry_reads_back():
    entry = Entry.from_json(text(CELL))
    assert (entry.kind, entry.outputs, entry.blobs) == ("cell", ("x1", "y1"), ("p-1",))
    assert isinstance(entry.created_at, float) and entry.created_at == 1700000001.0
    written = json.loads(entry.to_json())
    assert "tuple" not in written and "result" not in written  # a function's fields only
    assert Entry.from_json(entry.to_json()) == entry


def test_a_function_returning_an_empty_tuple():
    entry = Entry.from_json(text(FUNCTION, outputs=[], blobs=[], sizes={}, tuple=True))
    assert entry.outputs == () and entry.is_tuple


def test_an_entry_written_before_kind_existed():
    # a function's entry had "tuple", a cell's did not
    function = Entry.from_json(text(FUNCTION, kind=_DROP))
    assert function.kind == "function"
    cell = Entry.from_json(text(CELL, kind=_DROP))
    assert cell.kind == "cell"
    assert Entry.from_json(text(TUPLE, kind=_DROP)).kind == "function"


def test_optional_fields_default():
    entry = Entry.from_json(text(FUNCTION, sizes=_DROP, result=_DROP, tuple=_DROP))
    assert (entry.sizes, entry.result, entry.is_tuple, entry.ambient, entry.checks) == ({}, "", False, False, ())


# damaged entries: a Damaged naming what is wrong

@pytest.mark.parametrize("changes, words", [
    pytest.param({"step": _DROP}, "'step' is missing", id="no step"),
    pytest.param({"step": ["load"]}, "'step' is of type list", id="step a list"),
    pytest.param({"step": None}, "'step' is of type NoneType", id="step null"),
    pytest.param({"outputs": _DROP}, "'outputs' is missing", id="no outputs"),
    pytest.param({"outputs": "h1"}, "'outputs' is of type str", id="outputs a string"),
    pytest.param({"outputs": [1]}, "'outputs' holds something other than strings", id="outputs holding a number"),
    pytest.param({"blobs": _DROP}, "'blobs' is missing", id="no blobs"),
    pytest.param({"blobs": {"h1-x": 1}}, "'blobs' is of type dict", id="blobs a dict"),
    pytest.param({"blobs": [None]}, "'blobs' holds something other than strings", id="blobs holding null"),
    pytest.param({"sizes": {"h1": -1}}, "'sizes' is malformed", id="size negative"),
    pytest.param({"sizes": {"h1": True}}, "'sizes' is malformed", id="size a bool"),
    pytest.param({"sizes": {"h1": 1.5}}, "'sizes' is malformed", id="size a float"),
    pytest.param({"sizes": {"h1": "120"}}, "'sizes' is malformed", id="size a string"),
    pytest.param({"sizes": [120]}, "'sizes' is malformed", id="sizes a list"),
    pytest.param({"sizes": None}, "'sizes' is malformed", id="sizes null"),
    pytest.param({"created_at": _DROP}, "'created_at' is missing", id="no created_at"),
    pytest.param({"created_at": "yesterday"}, "'created_at' is of type str", id="created_at a string"),
    pytest.param({"created_at": True}, "'created_at' is of type bool", id="created_at a bool"),
    pytest.param({"created_at": float("nan")}, "'created_at' is nan", id="created_at NaN"),
    pytest.param({"created_at": -1.0}, "'created_at' is -1.0", id="created_at negative"),
    pytest.param({"duration_s": _DROP}, "'duration_s' is missing", id="no duration_s"),
    pytest.param({"duration_s": float("inf")}, "'duration_s' is inf", id="duration_s infinite"),
    pytest.param({"duration_s": None}, "'duration_s' is of type NoneType", id="duration_s null"),
    pytest.param({"tuple": "yes"}, "'tuple' is of type str", id="tuple a string"),
    pytest.param({"tuple": 1}, "'tuple' is of type int", id="tuple a number"),
    pytest.param({"result": 5}, "'result' is of type int", id="result a number"),
    pytest.param({"ambient": 1}, "'ambient' is of type int", id="ambient a number"),
    pytest.param({"kind": "notebook"}, "kind 'notebook' is unknown", id="unknown kind"),
    pytest.param({"kind": 5}, "'kind' is of type int", id="kind a number"),
    pytest.param({"kind": None}, "'kind' is of type NoneType", id="kind null"),
    pytest.param({"checks": "file data.csv"}, "malformed checks", id="checks a string"),
    pytest.param({"checks": [["nonsense", "x", "d", None]]},
                 "malformed check #1 of 1 (unknown kind of check", id="check of unknown kind"),
    pytest.param({"checks": [["file", "data.csv", "d", None], ["file", "", "d", None]]},
                 "malformed check #2 of 2", id="check with no target"),
    pytest.param({"checks": [["file", "data.csv", "d", [1, 2]]]}, "malformed check #1 of 1", id="check stat short"),
    pytest.param({"checks": [["random", "numpy"]]}, "malformed check #1 of 1", id="check too short"),
])
def test_a_malformed_field_is_named(changes, words):
    assert words in damaged(text(FUNCTION, **changes))


@pytest.mark.parametrize("record, changes", [
    pytest.param(FUNCTION, {"blobs": ["h1-x", "h2-y"]}, id="more blobs than outputs"),
    pytest.param(FUNCTION, {"blobs": []}, id="no blob for its output"),
    pytest.param(TUPLE, {"blobs": ["h1-x", "h2-y"]}, id="ambient without its blob"),
    pytest.param(TUPLE, {"ambient": False}, id="a blob too many without ambient"),
    pytest.param(TUPLE, {"outputs": ["h1", "h2", "h3"]}, id="tuple with an output more"),
])
def test_blobs_not_matching_outputs(record, changes):
    message = damaged(text(record, **changes))
    assert "stored values" in message and "outputs" in message
    outputs = len(changes.get("outputs", record["outputs"]))
    blobs = len(changes.get("blobs", record["blobs"]))
    ambient = changes.get("ambient", record.get("ambient", False))
    extra = " and the state its run changed" if ambient else ""
    assert message == f"its 'blobs' name {blobs} stored values for {outputs} outputs{extra}"


@pytest.mark.parametrize("changes", [
    pytest.param({"blobs": ["p-1", "p-2"]}, id="two blobs"),
    pytest.param({"blobs": []}, id="no blob"),
    pytest.param({"ambient": True}, id="ambient"),
    pytest.param({"tuple": True}, id="a tuple"),
])
def test_a_cell_entry_names_one_stored_value(changes):
    assert damaged(text(CELL, **changes)) == "a cell's entry names one stored value"


@pytest.mark.parametrize("text_, words", [
    pytest.param("{not json", "not valid JSON", id="not JSON"),
    pytest.param(text(FUNCTION)[:30], "not valid JSON", id="cut short"),
    pytest.param("", "not valid JSON", id="empty"),
    pytest.param(json.dumps([FUNCTION]), "not a JSON object", id="JSON list"),
    pytest.param("null", "not a JSON object", id="JSON null"),
    pytest.param('"text"', "not a JSON object", id="JSON string"),
    pytest.param(None, "not one nbcache wrote", id="None"),
    pytest.param(text(FUNCTION).encode(), "not one nbcache wrote", id="bytes"),
    pytest.param({"step": "load"}, "not one nbcache wrote", id="a dict"),
])
def test_what_is_not_an_entry_at_all(text_, words):
    assert words in damaged(text_)
    with pytest.raises(Damaged):
        Latest.from_json(text_)


def test_an_entry_made_directly_is_checked_too():
    with pytest.raises(Damaged, match="unknown"):
        Entry(step="s", kind="other", outputs=(), blobs=(), sizes={}, created_at=0.0, duration_s=0.0)
    with pytest.raises(Damaged, match="one stored value"):
        Entry(step="s", kind="cell", outputs=("a",), blobs=(), sizes={}, created_at=0.0, duration_s=0.0)


@pytest.mark.parametrize("read", [Entry.from_json, Latest.from_json], ids=["Entry", "Latest"])
def test_deeply_nested_json_is_damaged(read):
    with pytest.raises(Damaged):
        read("[" * 100_000)


@pytest.mark.parametrize("name", ["created_at", "duration_s"])
def test_a_time_too_large_for_a_float_is_damaged(name):
    with pytest.raises(Damaged, match=name):
        Entry.from_json(text(FUNCTION, **{name: 10 ** 400}))


def test_a_function_entry_with_several_outputs_but_no_tuple_says_so():
    message = damaged(text(FUNCTION, outputs=["h1", "h2"], blobs=["h1-x", "h2-y"], tuple=False))
    assert message == "its 'tuple' is false but it has 2 outputs"


# Latest

LATEST = {"key": "a" * 32, "code": "fp", "deps": {"clean()": "d1", "SCALE": "g"}, "inputs": {"path": "h"},
          "version": "2", "kind": "cell", "name": "cell_1", "format": CACHE_FORMAT}


def latest_damaged(text_: str) -> str:
    with pytest.raises(Damaged) as info:
        Latest.from_json(text_)
    return str(info.value)


def test_latest_reads_back():
    latest = Latest.from_json(json.dumps(LATEST))
    assert latest == Latest(**LATEST)
    assert Latest.from_json(latest.to_json()) == latest
    assert "uncached" not in json.loads(latest.to_json())


def test_latest_with_why_it_was_not_stored_reads_back():
    latest = Latest(key="k", code="c", uncached="it runs a shell command (ls)")
    assert Latest.from_json(latest.to_json()) == latest
    assert json.loads(latest.to_json())["uncached"] == "it runs a shell command (ls)"


def test_latest_of_an_older_nbcache_gets_defaults():
    latest = Latest.from_json(json.dumps({"key": "k", "code": "c"}))
    assert latest == Latest(key="k", code="c", deps={}, inputs={}, version=None, kind="function", name="",
                            uncached=None, format=None)  # (format None: written before formats were kept)
    assert Latest.from_json(json.dumps({**LATEST, "version": None, "uncached": None})).version is None


@pytest.mark.parametrize("changes, words", [
    pytest.param({"key": _DROP}, "'key' is missing", id="no key"),
    pytest.param({"code": _DROP}, "'code' is missing", id="no code"),
    pytest.param({"key": 5}, "'key' is of type int", id="key a number"),
    pytest.param({"code": ["c"]}, "'code' is of type list", id="code a list"),
    pytest.param({"deps": ["clean()"]}, "'deps' is of type list", id="deps a list"),
    pytest.param({"deps": None}, "'deps' is of type NoneType", id="deps null"),
    pytest.param({"deps": {"clean()": 1}}, "'deps' holds something other than strings", id="dep a number"),
    pytest.param({"inputs": {"path": None}}, "'inputs' holds something other than strings", id="input null"),
    pytest.param({"inputs": "path"}, "'inputs' is of type str", id="inputs a string"),
    pytest.param({"version": 2}, "'version' is of type int", id="version a number"),
    pytest.param({"version": True}, "'version' is of type bool", id="version a bool"),
    pytest.param({"kind": None}, "'kind' is of type NoneType", id="kind null"),
    pytest.param({"name": 1}, "'name' is of type int", id="name a number"),
    pytest.param({"uncached": 1}, "'uncached' is of type int", id="uncached a number"),
])
def test_malformed_latest_is_damaged_naming_the_field(changes, words):
    assert words in latest_damaged(text(LATEST, **changes))


@pytest.mark.parametrize("text_", ["{", "[]", "null", "3"])
def test_latest_that_is_not_a_json_object_is_damaged(text_):
    latest_damaged(text_)

