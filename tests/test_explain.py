"""The words nbcache shows for why a step ran (``runs()``, the lineage) and what ``nbcache why`` prints.

The expected sentences were taken from ``call.explain_change`` and ``call.describe_last_change`` as they
were before issue 10 moved them to ``explain.py``: users and their notebooks read these sentences, so
the refactor must keep them word for word.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from nbcache.entry import Latest
from nbcache.explain import (
    FORMAT_CHANGED,
    KIND_WORDS,
    changes_since,
    describe_last_change,
    render,
)
from nbcache.records import Change, ChangeKind, Outcome, StepRun


def latest(code="c1", deps=None, inputs=None, version=None, kind="function") -> Latest:
    return Latest(key="k" * 32, code=code, deps=deps or {}, inputs=inputs or {}, version=version, kind=kind)


def sentence(last, code="c1", deps=None, inputs=None, version=None, kind="function") -> str:
    outcome, changes = changes_since(last, code, deps or {}, inputs or {}, version, kind)
    return render(outcome, changes, kind)


DEPS = {"clean()": "d1", "load()": "d2", "SCALE": "g1", "A": "g2", "B": "g3"}

# (latest ingredients, this call's ingredients, the sentence). Every sentence is what the old
# ``explain_change`` said for the same ingredients.
CASES = [
    pytest.param(None, {}, "first run", id="first run"),
    pytest.param(latest(kind="function"), {"kind": "cell"},
                 "first run as a %%step cell (its last run was a @step function)", id="function -> cell"),
    pytest.param(latest(kind="cell"), {"kind": "function"},
                 "first run as a @step function (its last run was a %%step cell)", id="cell -> function"),
    pytest.param(latest(kind="cell", code="other", inputs={"N": "1"}), {"kind": "function", "inputs": {"N": "2"}},
                 "first run as a @step function (its last run was a %%step cell)", id="kind change hides the rest"),
    pytest.param(latest(code="c1", deps=DEPS),
                 {"code": "c2", "deps": {**DEPS, "clean()": "x", "load()": "y"}},
                 "code changed: clean(), load()", id="helpers named"),
    pytest.param(latest(code="c1", deps={"load()": "d2"}), {"code": "c2", "deps": {}},
                 "code changed: load()", id="helper no longer called"),
    pytest.param(latest(code="c1", deps={}), {"code": "c2", "deps": {"parse()": "p"}},
                 "code changed: parse()", id="helper newly called"),
    pytest.param(latest(code="c1", deps=DEPS), {"code": "c2", "deps": {**DEPS, "SCALE": "x"}},
                 "global SCALE changed", id="one global"),
    pytest.param(latest(code="c1", deps=DEPS), {"code": "c2", "deps": {**DEPS, "B": "x", "A": "y"}},
                 "globals A, B changed", id="two globals, sorted"),
    pytest.param(latest(code="c1", deps=DEPS), {"code": "c2", "deps": {**DEPS, "clean()": "x", "SCALE": "y"}},
                 "code changed: clean(); global SCALE changed", id="helper and global"),
    pytest.param(latest(code="c1", deps=DEPS), {"code": "c2", "deps": DEPS},
                 "code changed", id="own code"),
    pytest.param(latest(code="c1", deps=DEPS), {"code": "c1", "deps": {**DEPS, "SCALE": "x"}},
                 "cached result was removed", id="deps only compared when the code changed"),
    pytest.param(latest(inputs={"x": "1", "y": "1"}), {"inputs": {"x": "2", "y": "1"}},
                 "argument x changed", id="one argument"),
    pytest.param(latest(inputs={"b": "1", "a": "1"}), {"inputs": {"b": "2", "a": "2"}},
                 "arguments a, b changed", id="two arguments, sorted"),
    pytest.param(latest(inputs={"x": "1"}), {"inputs": {"x": "1", "extra": "1"}},
                 "argument extra changed", id="argument added"),
    pytest.param(latest(inputs={"x": "1", "gone": "1"}), {"inputs": {"x": "1"}},
                 "argument gone changed", id="argument dropped"),
    pytest.param(latest(kind="cell", inputs={"N": "1"}), {"kind": "cell", "inputs": {"N": "2"}},
                 "input N changed", id="one cell input"),
    pytest.param(latest(kind="cell", inputs={"N": "1", "M": "1"}), {"kind": "cell", "inputs": {"N": "2", "M": "2"}},
                 "inputs M, N changed", id="two cell inputs"),
    pytest.param(latest(kind="cell", code="a"), {"kind": "cell", "code": "b"},
                 "code changed", id="cell code"),
    pytest.param(latest(version="a"), {"version": None},
                 "version changed from 'a' to None", id="version removed"),
    pytest.param(latest(version=None), {"version": "2"},
                 "version changed from None to '2'", id="version added"),
    pytest.param(latest(version="1"), {"version": "2"},
                 "version changed from '1' to '2'", id="version bumped"),
    pytest.param(latest(code="c1", deps=DEPS, inputs={"x": "1"}, version="1"),
                 {"code": "c2", "deps": {**DEPS, "load()": "z", "A": "z"}, "inputs": {"x": "2"}, "version": "2"},
                 "code changed: load(); global A changed; argument x changed; version changed from '1' to '2'",
                 id="several, joined by '; '"),
    pytest.param(latest(kind="cell", code="c1", inputs={"N": "1"}),
                 {"kind": "cell", "code": "c2", "inputs": {"N": "2"}},
                 "code changed; input N changed", id="cell code and input"),
    pytest.param(latest(code="c1", deps=DEPS, inputs={"x": "1"}, version="v"),
                 {"code": "c1", "deps": DEPS, "inputs": {"x": "1"}, "version": "v"},
                 "cached result was removed", id="nothing changed"),
]


@pytest.mark.parametrize("last, call, expected", CASES)
def test_the_sentence_is_the_one_nbcache_always_showed(last, call, expected):
    assert sentence(last, **call) == expected


def test_first_run_has_no_changes():
    assert changes_since(None, "c", {}, {}, None) == (Outcome.FIRST_RUN, ())
    assert changes_since(None, "c", {}, {}, None, "cell") == (Outcome.FIRST_RUN, ())


def test_a_kind_change_is_a_first_run_with_the_kinds_before_and_after():
    outcome, changes = changes_since(latest(kind="function"), "c1", {}, {}, None, "cell")
    assert outcome is Outcome.FIRST_RUN
    assert changes == (Change(ChangeKind.KIND, before="function", after="cell"),)


def test_nothing_changed_means_the_result_was_removed():
    last = latest(code="c", deps={"f()": "1"}, inputs={"x": "1"}, version="v")
    assert changes_since(last, "c", {"f()": "1"}, {"x": "1"}, "v") == (Outcome.REMOVED, ())
    assert render(Outcome.REMOVED, ()) == "cached result was removed"


def test_the_change_records_say_what_changed():
    last = latest(code="c1", deps=DEPS, inputs={"x": "1"}, version="a")
    outcome, changes = changes_since(last, "c2", {**DEPS, "load()": "z", "clean()": "z", "SCALE": "z"},
                                     {"x": "2"}, None)
    assert outcome is Outcome.CHANGED
    assert changes == (
        Change(ChangeKind.CODE, "clean()"), Change(ChangeKind.CODE, "load()"),
        Change(ChangeKind.GLOBAL, "SCALE"), Change(ChangeKind.INPUT, "x"),
        Change(ChangeKind.VERSION, before="a", after=None),
    )


def test_own_code_change_is_a_code_change_with_no_name():
    outcome, changes = changes_since(latest(code="c1"), "c2", {}, {}, None)
    assert (outcome, changes) == (Outcome.CHANGED, (Change(ChangeKind.CODE),))


def test_input_wording_follows_the_kind_given_to_render():
    changes = (Change(ChangeKind.INPUT, "x"),)
    assert render(Outcome.CHANGED, changes, "function") == "argument x changed"
    assert render(Outcome.CHANGED, changes, "cell") == "input x changed"
    assert render(Outcome.CHANGED, changes) == "argument x changed"  # a function, by default


def test_format_change_wording():
    expected = "first run with this nbcache's cache format (results of the older one are not read)"
    assert render(Outcome.FIRST_RUN, (FORMAT_CHANGED,)) == expected
    assert render(Outcome.FIRST_RUN, (FORMAT_CHANGED,), "cell") == expected
    # it says why the step runs, whatever else is listed
    assert render(Outcome.CHANGED, (Change(ChangeKind.INPUT, "x"), FORMAT_CHANGED)) == expected


def test_read_changes_are_rendered_as_given():
    read = Change(ChangeKind.READ, "file data.csv changed")
    assert render(Outcome.CHANGED, (read,)) == "file data.csv changed"
    assert render(Outcome.CHANGED, (read,), "cell") == "file data.csv changed"
    random = Change(ChangeKind.READ, "the numpy global random state differs from the one it started from")
    assert render(Outcome.CHANGED, (Change(ChangeKind.INPUT, "x"), read, random)) == (
        "argument x changed; file data.csv changed; "
        "the numpy global random state differs from the one it started from")


def test_kind_words():
    assert KIND_WORDS == {"function": "@step function", "cell": "%%step cell"}


# describe_last_change: what `%nbcache why` and `nbcache why` print

T0 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def shown(when: datetime) -> str:
    """A time as `why` shows it: in the local time zone, to the second."""
    return f"{when.astimezone():%Y-%m-%d %H:%M:%S}"


def run(step="load", *, minute=0, cached=False, key="k1", code="c1", deps=None, inputs=None, version=None,
        reason="first run", status="ok", kind="function") -> StepRun:
    return StepRun(step=step, cached=cached, duration_s=0.5, saved_s=0.0, key=key, code=code,
                   inputs=inputs or {}, outputs=("o",), reason=reason, started_at=at(minute), status=status,
                   version=version, deps=deps or {}, kind=kind)


def test_a_step_that_never_ran_has_nothing_to_describe():
    assert describe_last_change([], "load") is None
    assert describe_last_change([run("other")], "load") is None


def test_its_only_run():
    assert describe_last_change([run(minute=0)], "load") == f"load ran at {shown(at(0))}: first run (its only run)"


def test_a_hit_after_its_run_says_it_came_from_the_cache_and_why_it_last_ran():
    runs = [run(minute=0), run("other", minute=1), run(minute=2, cached=True, reason="cache hit")]
    assert describe_last_change(runs, "load") == (
        f"load came from the cache at {shown(at(2))}: cache hit\n"
        "  since its previous run: its code and inputs did not change\n"
        f"its result was computed at {shown(at(0))}: first run (its first recorded run)"
    )


def test_the_run_that_computed_a_hit_is_the_latest_that_ran_with_its_key():
    runs = [
        run(minute=0, key="k1", code="c1", deps={"clean()": "1"}),
        run(minute=1, key="k2", code="c2", deps={"clean()": "2"}, reason="code changed: clean()"),
        run(minute=2, key="k2", cached=True, code="c2", deps={"clean()": "2"}, reason="cache hit"),
    ]
    assert describe_last_change(runs, "load") == (
        f"load came from the cache at {shown(at(2))}: cache hit\n"
        "  since its previous run: its code and inputs did not change\n"
        f"its result was computed at {shown(at(1))}: code changed: clean()\n"
        "  since its previous run: code changed: clean()"
    )


def test_a_failed_run_did_not_compute_the_result():
    runs = [
        run(minute=0, key="k1"),
        run(minute=1, key="k1", status="failed", reason="cached result was removed"),
        run(minute=2, key="k1", cached=True, reason="cache hit"),
    ]
    lines = describe_last_change(runs, "load").splitlines()
    assert lines[-1] == f"its result was computed at {shown(at(0))}: first run (its first recorded run)"


def test_a_hit_whose_run_is_not_in_the_history():
    runs = [run(minute=0, key="k1"), run(minute=1, key="k9", cached=True, reason="cache hit")]
    assert describe_last_change(runs, "load").splitlines()[-1] == (
        "the run that computed its result is not in this directory's history")


def test_what_changed_since_the_previous_run_of_a_cell():
    runs = [run(minute=0, kind="cell", inputs={"N": "1"}),
            run(minute=1, kind="cell", key="k2", inputs={"N": "2"}, reason="input N changed")]
    assert describe_last_change(runs, "load") == (
        f"load ran at {shown(at(1))}: input N changed\n  since its previous run: input N changed")


def test_what_changed_since_the_previous_run_lists_everything():
    runs = [run(minute=0, deps={"SCALE": "1"}, inputs={"x": "1"}, version="1"),
            run(minute=1, key="k2", code="c2", deps={"SCALE": "2"}, inputs={"x": "2"}, version=None,
                reason="global SCALE changed; argument x changed; version changed from '1' to None")]
    assert describe_last_change(runs, "load").splitlines()[1] == (
        "  since its previous run: global SCALE changed; argument x changed; version changed from '1' to None")


def test_a_failed_last_run_and_a_kind_change():
    runs = [run(minute=0, kind="function"),
            run(minute=1, kind="cell", key="k2", status="failed",
                reason="first run as a %%step cell (its last run was a @step function)")]
    assert describe_last_change(runs, "load") == (
        f"load failed at {shown(at(1))}: first run as a %%step cell (its last run was a @step function)\n"
        "  since its previous run: first run as a %%step cell (its last run was a @step function)")


def test_a_rerun_with_nothing_changed_leaves_the_reason_to_say_why():
    runs = [run(minute=0), run(minute=1, reason="file data.csv changed")]
    assert describe_last_change(runs, "load") == (
        f"load ran at {shown(at(1))}: file data.csv changed\n"
        "  since its previous run: its code and inputs did not change")


def test_the_latest_ingredients_of_another_cache_format_make_a_first_run():
    same = Latest(key="k", code="c", inputs={"x": "1"})
    older = same._replace(format=None)  # written before the format was kept, or by another one
    assert changes_since(same, "c", {}, {"x": "1"}, None) == (Outcome.REMOVED, ())
    assert changes_since(older, "c", {}, {"x": "1"}, None) == (Outcome.FIRST_RUN, (FORMAT_CHANGED,))
