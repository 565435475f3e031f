"""Checks and the observer, directly: a check's JSON form and its validation (anything malformed is a
damaged entry), verifying checks against files, folders, settings and variables as they are now, and
what an ``Observer`` records around a run.
"""

from __future__ import annotations

import json
import os

import pytest

from nbcache import ambient
from nbcache.audit import inherit
from nbcache.checks import Check, checks_from_json, file_digest, first_failure, listing_digest
from nbcache.observe import Observer


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def file_check(path) -> Check:
    st = os.stat(path)
    return Check("file", str(path), file_digest(str(path)), (st.st_size, st.st_mtime_ns, st.st_ino))


# -- the JSON form -------------------------------------------------------------------------------------------

CHECKS = [
    Check("file", "data.csv", "ab12", (10, 1_700_000_000_000_000_000, 42)),
    Check("wrote", "/abs/out.parquet", "cd34", (0, -5, 7)),  # an mtime before 1970 is a time too
    Check("made", "figures", "folder"),
    Check("folder", "raw", "ef56"),
    Check("state", "pandas options", "none|0a1b"),
    Check("setting", "environment variables\tPATH", "aa|bb"),
    Check("random", "numpy.random", "9f"),
    Check("variable", "threshold", "?"),
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.kind)
def test_a_check_comes_back_from_its_json_form(check):
    assert Check.from_json(json.loads(json.dumps(check.to_json()))) == check


def test_the_checks_of_an_entry_come_back_in_order():
    stored = json.loads(json.dumps([c.to_json() for c in CHECKS]))
    assert checks_from_json(stored) == tuple(CHECKS)
    assert checks_from_json(None) == () and checks_from_json([]) == ()


@pytest.mark.parametrize("item, problem", [
    (["file"], r"a check is a list \[kind, target, digest, stat\], not list \['file'\]"),
    ("file data.csv", "a check is a list .*not str 'file data.csv'"),
    ({"kind": "file"}, "a check is a list .*not dict"),
    (["file", "a", "b", None, "extra"], "a check is a list .*not list"),
    (["socket", "x", "d", None], "unknown kind of check str 'socket'"),
    ([3, "x", "d", None], "unknown kind of check int 3"),
    (["file", None, "d", None], "the target of a file check is NoneType None, not a non-empty string"),
    (["folder", "", "d", None], "the target of a folder check is str '', not a non-empty string"),
    (["file", "a.csv", 12, None], "the digest of file check 'a.csv' is int 12, not a non-empty string"),
    (["file", "a.csv", "", None], "the digest of file check 'a.csv' is str ''"),
    (["state", "pandas options", "ab", None], "the digest of state check 'pandas options' is not of the form"),
    (["setting", "PATH", "a|b", None], "the target of setting check 'PATH' is not of the form 'state<TAB>key'"),
    (["folder", "raw", "ab", [1, 2, 3]], "a folder check has no stat, but 'raw' has list"),
    (["file", "a.csv", "ab", [1, 2]], r"the stat of file check 'a.csv' is list \[1, 2\], not \[size, mtime_ns, inode\]"),
    (["file", "a.csv", "ab", ["1", 2, 3]], "the stat of file check 'a.csv' is list"),
    (["file", "a.csv", "ab", [True, 2, 3]], "the stat of file check 'a.csv' is list"),
    (["file", "a.csv", "ab", 7], "the stat of file check 'a.csv' is int 7"),
])
def test_a_malformed_check_says_what_is_wrong(item, problem):
    with pytest.raises(ValueError, match=problem):
        Check.from_json(item)
    with pytest.raises(ValueError, match=rf"malformed check #2 of 2 \({problem}"):
        checks_from_json([CHECKS[0].to_json(), item])  # the entry is damaged: which check, and how


@pytest.mark.parametrize("items", [{"file": "a"}, "file", 3])
def test_checks_that_are_not_a_list_are_malformed(items):
    with pytest.raises(ValueError, match=f"malformed checks \\(a list of checks, not {type(items).__name__}"):
        checks_from_json(items)


def test_a_long_malformed_value_is_shown_shortened():
    with pytest.raises(ValueError) as info:
        Check.from_json(["file", "x" * 500, 1, None])
    assert len(str(info.value)) < 200 and "..." in str(info.value)


# -- verifying checks --------------------------------------------------------------------------------------

def test_an_unchanged_file_holds_without_being_read_again(here):
    (here / "data.csv").write_text("a\n1\n")
    check = file_check(here / "data.csv")
    assert first_failure((check,), None) == (None, ())


def test_a_touched_file_with_the_same_content_holds_and_is_known_by_its_new_stat(here):
    path = here / "data.csv"
    path.write_text("a\n1\n")
    check = file_check(path)
    os.utime(path, ns=(10**18, 10**18))
    reason, refreshed = first_failure((check,), None)
    assert reason is None
    assert refreshed == (Check("file", str(path), check.digest, (check.stat[0], 10**18, check.stat[2])),)
    assert first_failure(refreshed, None) == (None, ())


@pytest.mark.parametrize("change, reason", [
    (lambda p: p.write_text("a\n2\n"), "file data.csv changed"),
    (lambda p: p.unlink(), "file data.csv was removed"),
    (lambda p: (p.unlink(), p.mkdir()), "file data.csv is no longer a regular file"),
])
def test_a_changed_file_fails_its_check(here, change, reason):
    path = here / "data.csv"
    path.write_text("a\n1\n")
    check = file_check(path)
    change(path)
    assert first_failure((check,), None) == (reason, ())


def test_a_file_the_step_wrote_is_named_as_such(here):
    (here / "out.txt").write_text("x")
    check = Check("wrote", *file_check(here / "out.txt").to_json()[1:3])
    (here / "out.txt").unlink()
    assert first_failure((check,), None)[0] == "out.txt, a file it wrote, was removed"


def test_the_first_check_that_fails_is_the_reason(here):
    (here / "a").write_text("1")
    (here / "b").write_text("2")
    checks = (file_check(here / "a"), file_check(here / "b"))
    (here / "b").write_text("3")
    (here / "a").write_text("4")
    assert first_failure(checks, None)[0] == "file a changed"


def test_folders_made_and_listed(here):
    (here / "raw").mkdir()
    (here / "raw" / "one.csv").write_text("")
    made = Check("made", "figures", "folder")
    listed = Check("folder", "raw", listing_digest("raw"))
    assert first_failure((listed,), None) == (None, ())
    assert first_failure((made,), None)[0] == "folder figures, which it made, is gone"
    (here / "figures").mkdir()
    assert first_failure((made,), None) == (None, ())
    (here / "raw" / "two.csv").write_text("")
    assert first_failure((listed,), None)[0] == "folder raw changed (files added or removed)"


def test_a_variable_read_through_eval_is_compared_by_hash():
    from nbcache import hash_value

    check = Check("variable", "limit", hash_value(3))
    assert first_failure((check,), {"limit": 3}) == (None, ())
    assert first_failure((check,), {"limit": 4})[0] == "variable limit (read through eval/exec) changed"
    assert first_failure((check,), {})[0] == "variable limit (read through eval/exec) changed"
    unhashable = Check("variable", "gen", "?")
    assert "cannot be hashed" in first_failure((unhashable,), {"gen": 1})[0]


def test_a_setting_holds_as_the_run_found_it_or_as_it_left_it(monkeypatch):
    monkeypatch.setenv("NBCACHE_TEST_MODE", "fast")
    found = ambient.setting_hash("environment variables", "NBCACHE_TEST_MODE")
    monkeypatch.setenv("NBCACHE_TEST_MODE", "slow")
    left = ambient.setting_hash("environment variables", "NBCACHE_TEST_MODE")
    check = Check("setting", "environment variables\tNBCACHE_TEST_MODE", f"{found}|{left}")
    assert first_failure((check,), None) == (None, ())
    monkeypatch.setenv("NBCACHE_TEST_MODE", "fast")
    assert first_failure((check,), None) == (None, ())
    monkeypatch.setenv("NBCACHE_TEST_MODE", "other")
    assert first_failure((check,), None)[0] == \
        "the environment variable NBCACHE_TEST_MODE differs from when it was cached"
    monkeypatch.delenv("NBCACHE_TEST_MODE")
    assert first_failure((check,), None)[0] is not None


def test_a_check_that_cannot_be_verified_fails_rather_than_err():
    class Broken(Check):
        def failure(self, namespace, *, trust_stat=True):
            raise OSError("disk gone")

    assert first_failure((Broken("file", "x", "d"),), None)[0] == "file x could not be checked (OSError)"


# -- the observer --------------------------------------------------------------------------------------------

def test_an_observer_records_what_a_run_reads_writes_makes_and_lists(here):
    (here / "in.csv").write_text("v\n1\n")
    (here / "raw").mkdir()
    cache = here / "cache"
    cache.mkdir()
    with Observer(str(cache), {}) as observer:
        open("in.csv").read()
        with open("out.txt", "w") as f:
            f.write("done")
        os.mkdir("figures")
        os.listdir("raw")
        (cache / "entry").write_text("nbcache's own")  # the cache directory is not a dependency
        open(cache / "entry").read()
    checks = {(c.kind, c.target): c for c in _not_settings(observer.checks())}
    assert set(checks) == {("file", "in.csv"), ("wrote", "out.txt"), ("made", "figures"), ("folder", "raw")}
    assert checks["file", "in.csv"].digest == file_digest("in.csv")
    assert first_failure(tuple(checks.values()), None) == (None, ())


def test_an_observer_records_names_read_through_eval_and_programs_started(here):
    namespace = {"limit": 3, "own": 1}
    with Observer(str(here / "cache"), namespace, bound=frozenset({"own"})) as observer:
        exec("import subprocess\nsubprocess.run(['true'])\nvalue = eval('limit + own')", namespace)
    assert list(observer.commands) == ["true"]
    variables = [c.target for c in observer.checks() if c.kind == "variable"]
    assert variables == ["limit"]  # `own` is the step's own output, not an input


def test_an_observer_records_the_ambient_state_a_run_changed(monkeypatch, here):
    monkeypatch.delenv("NBCACHE_TEST_FLAG", raising=False)
    with Observer(str(here / "cache"), {}) as observer:
        os.environ["NBCACHE_TEST_FLAG"] = "on"
    del os.environ["NBCACHE_TEST_FLAG"]  # (monkeypatch.delenv would set it back to "on" after the test)
    assert observer.changed_state() == {"environment variables": {"set": {"NBCACHE_TEST_FLAG": "on"}, "unset": []}}
    settings = [c for c in _not_settings(observer.checks()) if c.kind == "setting"]
    assert [c.target for c in settings] == ["environment variables\tNBCACHE_TEST_FLAG"]
    assert settings[0].digest.startswith("none|")  # it was not set when the run started


def test_a_step_served_from_the_cache_inside_a_run_passes_its_checks_on(here):
    inner = (Check("file", "/data/in.csv", "ab", (1, 2, 3)), Check("random", "numpy.random", "cd"))
    with Observer(str(here / "cache"), {}) as observer:
        inherit(inner)
    assert _not_settings(observer.checks()) == inner[:1]  # not the random state: the outer run's own covers that
    inherit(inner)  # no run under way: nothing to pass them to


def _not_settings(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """Checks but those of settings every run depends on while their library is imported (scikit-learn's
    config, numpy's error handling: imported or not by the tests this process ran before, the warnings
    filters that make a warning an error)."""
    return tuple(c for c in checks if c.kind != "state" and not c.target.startswith("warnings filters\t"))
