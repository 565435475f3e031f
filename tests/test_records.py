"""The run history's records: a ``StepRun`` read back as written, records of older nbcache versions given
the right ``Outcome``, and lines that are not records rejected (so the history skips them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from nbcache.diskstore import DiskStore
from nbcache.explain import describe_last_change
from nbcache.records import Change, ChangeKind, Outcome, RunLines, StepRun, parse_runs, read_history

WHEN = datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)


def make(**fields) -> StepRun:
    base = {"step": "load", "cached": False, "duration_s": 1.25, "saved_s": 0.0, "key": "a" * 32, "code": "fp",
            "inputs": {"path": "h1"}, "outputs": ("o1",), "reason": "first run", "started_at": WHEN}
    return StepRun(**{**base, **fields})


def legacy_line(**fields) -> str:
    """A record as the nbcache before issue 10 wrote it: no "state", no "changes"."""
    record = {"step": "load", "cached": False, "duration_s": 1.25, "saved_s": 0.0, "key": "a" * 32,
              "code": "fp", "inputs": {"path": "h1"}, "outputs": ["o1"], "reason": "first run",
              "started_at": WHEN.isoformat(), "status": "ok", "version": None, "deps": {}, "error": None,
              "kind": "function", "session": "123-abcdef01", "output_names": [], "sizes": {"o1": 10},
              "result": ""}
    record.update(fields)
    return json.dumps(record)


# round trip

def test_a_run_reads_back_as_written_with_its_state_and_changes():
    run = make(
        cached=False, reason="code changed: clean(); argument path changed; version changed from 'a' to None; "
                             "file data.csv changed",
        deps={"clean()": "d1", "SCALE": "g"}, version=None, kind="function", output_names=(),
        sizes={"o1": 1234}, result="r", state=Outcome.CHANGED, status="ok",
        changes=(Change(ChangeKind.CODE, "clean()"), Change(ChangeKind.INPUT, "path"),
                 Change(ChangeKind.VERSION, before="a", after=None),
                 Change(ChangeKind.READ, "file data.csv changed")),
    )
    line = run.to_json()
    assert "\n" not in line  # one line of the history
    back = StepRun.from_json(line)
    assert back == run
    assert back.state is Outcome.CHANGED
    assert back.changes[2] == Change(ChangeKind.VERSION, "", "a", None)
    assert back.started_at == WHEN and back.started_at.tzinfo is not None


def test_history_lines_made_quickly_read_back_as_the_runs_they_record():
    """``RunLines`` encodes a line's fixed fields once for a step's hits one after another: each line still
    reads back as its own run, whatever changed since the line before (a field, a nested value, the state)."""
    later = datetime(2024, 3, 1, 12, 30, 16, 5, tzinfo=UTC)
    runs = [make(cached=True, reason="cache hit", state=Outcome.HIT, duration_s=0.0001),
            make(cached=True, reason="cache hit", state=Outcome.HIT, duration_s=2.5e-05, started_at=later),
            make(cached=True, reason="cache hit", state=Outcome.HIT, duration_s=0.1, inputs={"path": "h2"}),
            make(cached=True, reason="cache hit", state=Outcome.HIT, duration_s=0.1, inputs={"path": "h2"},
                 sizes={"o1": 7}),
            make(state=Outcome.CHANGED, changes=(Change(ChangeKind.INPUT, "path"),), duration_s=1e-07),
            make(state=Outcome.CHANGED, changes=(Change(ChangeKind.INPUT, "rows"),), duration_s=1e-07),
            make(step="other", duration_s=3.0),
            make(duration_s=1),  # (an int: written the long way)
            make(duration_s=float("nan"))]
    lines = RunLines()
    written = [lines.line(run) for run in runs]
    assert [StepRun.from_json(line) for line in written[:-1]] == runs[:-1]
    assert written[-1] == runs[-1].to_json()  # (not a number: as json writes it)
    assert all(json.loads(line) == json.loads(run.to_json()) for line, run in zip(written[:-1], runs))
    assert all(line.startswith('{"step":"') and "\n" not in line for line in written)  # (read_last_runs)
    inputs = {"path": "h1"}
    first = make(inputs=inputs, duration_s=0.5)
    assert StepRun.from_json(lines.line(first)) == first
    inputs["path"] = "h9"  # (the same dict, changed in place, recorded again)
    assert StepRun.from_json(lines.line(first)).inputs == {"path": "h9"}


@pytest.mark.parametrize("state", list(Outcome))
def test_every_outcome_reads_back(state):
    run = make(state=state, cached=state is Outcome.HIT, status="failed" if state is Outcome.FAILED else "ok")
    assert StepRun.from_json(run.to_json()).state is state


def test_a_cell_run_reads_back():
    run = make(kind="cell", inputs={"N": "h"}, outputs=("x1", "y1"), output_names=("x", "y"),
               state=Outcome.CHANGED, changes=(Change(ChangeKind.KIND, before="function", after="cell"),))
    back = StepRun.from_json(run.to_json().encode())  # the history is read as bytes
    assert back == run and back.output_names == ("x", "y") and back.outputs == ("x1", "y1")


def test_a_record_of_a_newer_nbcache_reads_without_its_new_fields():
    record = json.loads(make(state=Outcome.FIRST_RUN).to_json())
    record["something_new"] = [1, 2]
    assert StepRun.from_json(json.dumps(record)) == make(state=Outcome.FIRST_RUN)


def test_a_newer_nbcaches_outcome_and_kinds_of_change_read_as_an_older_one_would():
    record = json.loads(make(state=Outcome.CHANGED, reason="argument x changed",
                             changes=(Change(ChangeKind.INPUT, "x"),)).to_json())
    record["state"] = "served by a colleague"
    record["changes"].append(["telepathy", "y", None, None])
    run = StepRun.from_json(json.dumps(record))
    assert run.state is Outcome.CHANGED  # from the reason's words
    assert run.changes == (Change(ChangeKind.INPUT, "x"),)


def test_change_json():
    change = Change(ChangeKind.VERSION, "", "1", None)
    assert change.to_json() == ["version", "", "1", None]
    assert Change.from_json(["version", "", "1", None]) == change
    assert Change.from_json(["input", "x", None, None]) == Change(ChangeKind.INPUT, "x")


@pytest.mark.parametrize("item", [
    ["nonsense", "x", None, None],  # unknown kind
    ["input", 5, None, None],  # name not a string
    ["version", "", 1, None],  # before not a string
    ["version", "", None, ["2"]],  # after not a string
    ["input", "x"],  # too short
    ["input", "x", None, None, None],  # too long
])
def test_a_malformed_change_raises_valueerror(item):
    with pytest.raises(ValueError):
        Change.from_json(item)


# the outcome of records written before nbcache kept one

@pytest.mark.parametrize("fields, state", [
    ({"reason": "first run"}, Outcome.FIRST_RUN),
    ({"reason": "first run as a %%step cell (its last run was a @step function)", "kind": "cell"}, Outcome.FIRST_RUN),
    ({"reason": "first run with this nbcache's cache format (results of the older one are not read)"},
     Outcome.FIRST_RUN),
    ({"reason": "first run; not cached: it runs a shell command (ls)"}, Outcome.FIRST_RUN),
    ({"reason": "code changed: f()"}, Outcome.CHANGED),
    ({"reason": "code changed"}, Outcome.CHANGED),
    ({"reason": "global SCALE changed"}, Outcome.CHANGED),
    ({"reason": "argument x changed"}, Outcome.CHANGED),
    ({"reason": "input N changed", "kind": "cell"}, Outcome.CHANGED),
    ({"reason": "version changed from '1' to '2'"}, Outcome.CHANGED),
    ({"reason": "file data.csv changed"}, Outcome.CHANGED),
    ({"reason": "code changed: f(); result not cached: cannot be pickled"}, Outcome.CHANGED),
    ({"reason": "cached result was removed"}, Outcome.REMOVED),
    ({"reason": "cached result was damaged"}, Outcome.DAMAGED),
    ({"reason": "cached result was missing"}, Outcome.DAMAGED),
    ({"reason": "cache disabled"}, Outcome.DISABLED),
    ({"reason": "uncacheable argument args[1]['loader'] (generator)"}, Outcome.UNCACHEABLE),
    ({"reason": "cannot fingerprint load"}, Outcome.UNCACHEABLE),
    ({"reason": "cache unreadable"}, Outcome.UNREADABLE),
    ({"reason": "runs every time: it runs a shell command (ls)"}, Outcome.ALWAYS_RUNS),
    ({"reason": "not cached: what it read could not be followed"}, Outcome.ALWAYS_RUNS),
    ({"reason": "cache hit", "cached": True, "saved_s": 2.0}, Outcome.HIT),
    ({"reason": "first run", "cached": True}, Outcome.HIT),  # cached says it, whatever the words
    ({"reason": "first run", "status": "failed", "error": "ValueError: bad"}, Outcome.FAILED),
    ({"reason": "code changed: f()", "status": "failed", "error": "KeyError: 'x'"}, Outcome.FAILED),
])
def test_a_record_of_the_previous_nbcache_gets_the_right_outcome(fields, state):
    run = StepRun.from_json(legacy_line(**fields))
    assert run.state is state
    assert run.changes == ()
    assert run.reason == fields["reason"]  # the words shown stay what they were


def test_a_legacy_record_with_a_null_state_is_inferred_too():
    assert StepRun.from_json(legacy_line(reason="cache disabled", state=None)).state is Outcome.DISABLED


def test_a_legacy_record_rewritten_keeps_its_inferred_outcome():
    run = StepRun.from_json(legacy_line(reason="runs every time: it calls globals()"))
    again = StepRun.from_json(run.to_json())
    assert again.state is Outcome.ALWAYS_RUNS and again == run


def test_a_run_made_without_a_state_gets_one():
    assert make(reason="cache disabled").state is Outcome.DISABLED
    assert make(reason="cache hit", cached=True).state is Outcome.HIT


def test_outcome_in_one_word_and_ran():
    assert make(cached=True, reason="cache hit").outcome == "hit"
    assert make().outcome == "ran"
    assert make(status="failed").outcome == "failed"
    assert not Outcome.HIT.ran and not Outcome.TEAM_HIT.ran
    assert all(o.ran for o in Outcome if o not in (Outcome.HIT, Outcome.TEAM_HIT))


# lines that are not records

GOOD = json.loads(legacy_line())


def without(name: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != name})


def replaced(**fields) -> str:
    return json.dumps({**GOOD, **fields})


MALFORMED = [
    pytest.param("not json at all", id="not JSON"),
    pytest.param(legacy_line()[:40], id="cut short"),
    pytest.param("", id="empty"),
    pytest.param(without("started_at"), id="no started_at"),
    pytest.param(without("outputs"), id="no outputs"),
    pytest.param(without("step"), id="no step"),
    pytest.param(without("reason"), id="no reason"),
    pytest.param(replaced(started_at=5), id="started_at a number"),
    pytest.param(replaced(started_at="yesterday"), id="started_at not a date"),
    pytest.param(replaced(outputs=None), id="outputs null"),
    pytest.param(replaced(changes=[["input"]]), id="change too short"),
    pytest.param(replaced(changes=[5]), id="change a number"),
    pytest.param(replaced(changes=5), id="changes a number"),
    # records of the wrong type, written by hand or by something else (issue 11)
    pytest.param(replaced(step=["a"]), id="step a list"),
    pytest.param(replaced(inputs=5), id="inputs a number"),
    pytest.param(replaced(sizes={"x": "big"}), id="a size a string"),
    pytest.param(replaced(sizes={"x": True}), id="a size a bool"),
    pytest.param(replaced(sizes={"x": -1}), id="a size negative"),
    pytest.param(replaced(sizes={"x": 10**400}), id="a size past any disk"),
    pytest.param(replaced(duration_s=10**400), id="duration too big for a float"),
    pytest.param(replaced(saved_s=float("nan")), id="saved not a number"),
    pytest.param(replaced(started_at="0001-01-01T00:00:00+14:00"), id="started_at out of range"),
    pytest.param(replaced(step="a\ud800"), id="step a lone surrogate"),
    pytest.param(json.dumps({**GOOD, "reason": "\udfff"}, ensure_ascii=False), id="a raw lone surrogate"),
    pytest.param("[" * 100_000 + "]" * 100_000, id="JSON nested 100000 deep"),
    pytest.param('{"step": ' + "[" * 100_000 + "]" * 100_000 + "}", id="a field nested 100000 deep"),
]


@pytest.mark.parametrize("line", MALFORMED)
def test_a_malformed_line_raises_what_the_history_skips(line):
    with pytest.raises((ValueError, KeyError, TypeError)):
        StepRun.from_json(line)
    with pytest.raises((ValueError, KeyError, TypeError)):
        StepRun.from_json(line.encode("utf-8", "surrogatepass"))  # as the history reads it


def test_what_the_history_can_hold_still_reads():
    assert StepRun.from_json(replaced(step="\U0001F600 plot")).step == "\U0001F600 plot"  # (a surrogate pair)
    assert StepRun.from_json(replaced(step="load\x1b[31m")).step == "load\x1b[31m"  # escaped when printed
    assert StepRun.from_json(replaced(sizes={"o1": 0}, duration_s=0)).sizes == {"o1": 0}


def test_parse_runs_skips_and_counts_what_is_not_a_run():
    good = [make(state=Outcome.FIRST_RUN), make(cached=True, reason="cache hit", state=Outcome.HIT)]
    lines = ["", good[0].to_json(), *(p.values[0] for p in MALFORMED if p.values[0]), "  ", good[1].to_json()]
    runs, skipped = parse_runs(lines)
    assert runs == good and skipped == sum(1 for p in MALFORMED if p.values[0])  # blank lines are no records


def test_read_history_of_a_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert read_history(path) == ([], 0)  # none yet
    path.write_bytes(b"\n" + make().to_json().encode() + b"\n" + replaced(step=["a"]).encode() + b"\n{cut")
    assert read_history(path) == ([make()], 2)


def test_read_history_never_waits_on_a_fifo_nor_reads_a_device(tmp_path):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    devices = [d for d in ("/dev/zero", "/dev/urandom", "/dev/null") if os.path.exists(d)]
    for path in (fifo, tmp_path, *devices):
        with pytest.raises(OSError, match="not a regular file"):
            read_history(path)


@pytest.mark.parametrize("line", ["[1, 2]", "null", '"a string"', "42"])
def test_a_json_line_that_is_not_an_object_raises_a_documented_error(line):
    with pytest.raises((ValueError, KeyError, TypeError)):
        StepRun.from_json(line)


def test_a_record_with_inputs_of_the_wrong_type_never_crashes_why():
    """Whatever from_json makes of a damaged history line, `nbcache why` must not crash on it."""
    try:
        damaged = StepRun.from_json(replaced(inputs=5, key="b" * 32))
    except (ValueError, KeyError, TypeError):
        return  # rejected when read: the history skips it
    describe_last_change([make(state=Outcome.FIRST_RUN), damaged], "load")


def test_the_history_skips_lines_that_are_not_records(tmp_path):
    good = [make(state=Outcome.FIRST_RUN), make(cached=True, reason="cache hit", state=Outcome.HIT)]
    lines = [good[0].to_json(), "not json", legacy_line()[:40], "[1, 2]", "null", without("started_at"),
             replaced(started_at="yesterday"), good[1].to_json(), legacy_line(reason="cache disabled")]
    (tmp_path / "runs.jsonl").write_text("\n" + "\n".join(lines) + "\n")
    store = DiskStore(tmp_path)
    try:
        runs = store.read_runs()
    finally:
        store.close()
    assert runs[:2] == good
    assert len(runs) == 3 and runs[2].state is Outcome.DISABLED


def test_every_mapping_field_of_a_run_is_copied_by_the_history_lines():
    """``RunLines`` compares a line's fields with copies of its mappings: a mapping field added later must be
    among them, or one changed in place would be written as it was."""
    import dataclasses

    from nbcache.records import _MAPPING_FIELDS

    assert _MAPPING_FIELDS == {f.name for f in dataclasses.fields(StepRun) if "Mapping" in str(f.type)}
