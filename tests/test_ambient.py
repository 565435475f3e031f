"""Ambient state, directly: what a change between two states is (in each shape), snapshots and what
changed since one, applying a run's changes to the state as it is now, and the digests checks compare.
"""

from __future__ import annotations

import os
import random
import sys
import warnings

import numpy as np
import pytest

from nbcache import ambient
from nbcache.statediff import SAME, applied, change, equal
from nbcache.statekinds import KINDS, AmbientKind, global_generator, global_generator_method

from .conftest import run_python

ENV = "environment variables"
PRINT = "numpy print options"


@pytest.fixture
def print_options():
    saved = np.get_printoptions()
    yield
    np.set_printoptions(**saved)


# -- changes, in each shape ----------------------------------------------------------------------------------

def test_equal_compares_states_that_hold_arrays():
    state = np.random.get_state()
    assert equal(state, tuple(x.copy() if isinstance(x, np.ndarray) else x for x in state))
    assert not equal({"a": np.arange(3)}, {"a": np.arange(1, 4)})
    assert equal([1, {"k": np.zeros(2)}], [1, {"k": np.zeros(2)}])
    assert not equal([1], (1,))


@pytest.mark.parametrize("shape, before, after, delta", [
    ("value", 1, 1, SAME),
    ("value", "/a", "/b", "/b"),
    ("mapping", {"a": 1, "b": 2}, {"a": 1, "b": 2}, SAME),
    ("mapping", {"a": 1, "b": 2}, {"a": 5, "c": 3}, {"set": {"a": 5, "c": 3}, "unset": ["b"]}),
    ("sequence", ["a", "b"], ["n", "a", "b", "z"], {"front": ["n"], "back": ["z"], "removed": []}),
    ("sequence", ["a", "b", "c"], ["a", "c"], {"front": [], "back": [], "removed": ["b"]}),
])
def test_a_change_in_each_shape(shape, before, after, delta):
    found = change(shape, before, after)
    if delta is SAME:
        assert found is SAME
    else:
        assert found == delta
        assert applied(shape, before, found) == after


def test_a_mapping_change_keeps_what_was_set_since():
    delta = change("mapping", {"a": 1, "b": 2}, {"a": 5, "b": 2})
    assert applied("mapping", {"a": 1, "b": 2, "new": 9}, delta) == {"a": 5, "b": 2, "new": 9}


@pytest.mark.parametrize("before, after, now, expected", [
    (["a", "b", "c"], ["c", "a", "b"], ["x", "a", "b", "c"], ["c", "x", "a", "b"]),  # moved to the front
    (["a", "b"], ["n", "a", "b"], ["a", "x"], ["n", "a", "x"]),  # put in front (filterwarnings)
    (["a", "b"], ["a", "b", "n"], ["x", "a", "b"], ["x", "a", "b", "n"]),  # appended (sys.path.append)
    (["a", "b", "c"], ["a", "c"], ["a", "b", "c", "x"], ["a", "c", "x"]),  # removed
])
def test_a_list_state_changes_by_moves_additions_and_removals(before, after, now, expected):
    """What a step did to the warnings filters or sys.path is done again to the list as it is now: the
    entries it added or moved, and no others it happened to find (which may be gone since)."""
    state = {"list": list(now)}
    kind = AmbientKind("a list", "sys", lambda: list(state["list"]),
                               lambda value: state.update(list=list(value)), shape="sequence")
    kind.apply(kind.change(before, after))
    assert state["list"] == expected


def test_a_kind_of_an_unknown_shape_is_refused():
    with pytest.raises(ValueError, match="shape 'set' is not one of value, mapping, sequence"):
        AmbientKind("odd", "sys", list, print, shape="set")


# -- snapshots, and applying what changed --------------------------------------------------------------------

def test_numpy_print_options_changed_by_a_run_are_applied_again(print_options):
    before = ambient.snapshot()
    np.set_printoptions(precision=3)
    changes = ambient.snapshot().changed_since(before)
    assert changes == {PRINT: {"set": {"precision": 3}, "unset": []}}
    np.set_printoptions(precision=8, linewidth=99)  # a new kernel, where another cell set the width
    assert ambient.apply(changes) == []
    assert (np.get_printoptions()["precision"], np.get_printoptions()["linewidth"]) == (3, 99)


def test_environment_variables_set_and_removed_by_a_run_are_applied_again(monkeypatch):
    monkeypatch.setenv("NBCACHE_TEST_GONE", "1")
    monkeypatch.delenv("NBCACHE_TEST_NEW", raising=False)
    before = ambient.snapshot()
    monkeypatch.setenv("NBCACHE_TEST_NEW", "on")
    monkeypatch.delenv("NBCACHE_TEST_GONE")
    changes = ambient.snapshot().changed_since(before)
    assert changes == {ENV: {"set": {"NBCACHE_TEST_NEW": "on"}, "unset": ["NBCACHE_TEST_GONE"]}}
    monkeypatch.setenv("NBCACHE_TEST_GONE", "1")
    monkeypatch.delenv("NBCACHE_TEST_NEW")
    monkeypatch.setenv("NBCACHE_TEST_KERNEL", "kept")  # set since, by the kernel: not undone
    assert ambient.apply(changes) == []
    assert (os.environ.get("NBCACHE_TEST_NEW"), "NBCACHE_TEST_GONE" in os.environ,
            os.environ.get("NBCACHE_TEST_KERNEL")) == ("on", False, "kept")


def test_a_run_that_changes_nothing_has_no_changes():
    before = ambient.snapshot()
    assert ambient.snapshot().changed_since(before) == {}


def test_a_kind_whose_library_the_run_imported_counts_whole():
    now = ambient.snapshot()
    was_not_imported = ambient.Snapshot({k: v for k, v in now.values.items() if k not in (ENV, "working directory")})
    changes = now.changed_since(was_not_imported)
    assert changes[ENV]["set"] == now.values[ENV] and changes[ENV]["unset"] == []
    assert changes["working directory"] == now.values["working directory"]


def test_a_change_that_cannot_be_made_is_named(print_options):
    assert ambient.apply({PRINT: {"set": {"no_such_option": 1}, "unset": []}}) == [PRINT]


def test_a_snapshot_knows_whether_a_kind_is_as_it_was():
    random.seed(1)
    snap = ambient.snapshot()
    assert snap.same("random")
    random.random()
    assert not snap.same("random")


def test_the_warnings_filters_a_run_added_are_added_again():
    with warnings.catch_warnings():
        before = ambient.snapshot()
        warnings.filterwarnings("ignore", message="noisy")
        changes = ambient.snapshot().changed_since(before)
        warnings.resetwarnings()
        warnings.simplefilter("default")
        ambient.apply(changes)
        assert warnings.filters[0][1].pattern == "noisy"
        assert any(f[0] == "default" and f[1] is None for f in warnings.filters)


# -- digests, for checks -------------------------------------------------------------------------------------

def test_a_state_hash_follows_the_state(print_options):
    now = ambient.state_hash(PRINT)
    assert now == ambient.state_hash(PRINT, np.get_printoptions())
    np.set_printoptions(precision=2)
    assert ambient.state_hash(PRINT) != now
    assert ambient.state_hash("no such kind") is None


def test_the_warnings_filters_are_hashed_without_their_order():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="a")
        warnings.filterwarnings("ignore", message="b")
        filters = list(warnings.filters)
    swapped = [filters[1], filters[0], *filters[2:]]
    assert ambient.state_hash("warnings filters", filters) == ambient.state_hash("warnings filters", swapped)


def test_a_setting_hash_is_of_one_key(monkeypatch):
    monkeypatch.setenv("NBCACHE_TEST_MODE", "fast")
    digest = ambient.setting_hash(ENV, "NBCACHE_TEST_MODE")
    assert digest == ambient.setting_digest({"NBCACHE_TEST_MODE": "fast", "OTHER": "x"}, "NBCACHE_TEST_MODE")
    monkeypatch.setenv("NBCACHE_TEST_OTHER", "changed")  # another variable: the setting's hash is the same
    assert ambient.setting_hash(ENV, "NBCACHE_TEST_MODE") == digest
    monkeypatch.delenv("NBCACHE_TEST_MODE")
    assert ambient.setting_hash(ENV, "NBCACHE_TEST_MODE") == "none"
    assert ambient.setting_hash("no such kind", "k") == "none"


# -- the kinds -----------------------------------------------------------------------------------------------

def test_every_kind_round_trips_through_its_snapshot():
    import IPython  # noqa: F401  (their kinds are active only while they are imported)
    import matplotlib.pyplot  # noqa: F401
    import matplotlib_inline.config  # noqa: F401
    import pandas  # noqa: F401
    import sklearn  # noqa: F401

    for kind in KINDS:
        assert kind.active(), kind.name
        before = kind.get()
        kind.set(before)
        assert equal(kind.get(), before), kind.name


def test_the_global_generators_are_recognised():
    assert global_generator(np.random.rand.__self__) == "numpy.random"
    assert global_generator(random.random.__self__) == "random"
    assert global_generator(np.random.default_rng(0)) is None
    assert global_generator_method("numpy.random", "rand") == np.random.rand
    assert global_generator_method("random", "random") == random.random


# -- numpy.random, imported by numpy on first use ----------------------------------------------------------

_STEPS = """
import sys
import numpy as np
import nbcache
imported_with_numpy = "numpy.random" in sys.modules
nbcache.set_cache_dir(sys.argv[1])

@nbcache.step
def double(x):
    return x * 2

@nbcache.step
def seeded(n):
    np.random.seed(42)
    return np.random.rand(n).tolist()

@nbcache.step
def unseeded(n):
    return np.random.rand(n).tolist()

for name in sys.argv[2].split(","):
    globals()[name](3)
    print(name, nbcache.runs()[-1].cached, "numpy.random" in sys.modules, imported_with_numpy)
"""


def _run_steps(tmp_path, names: str) -> list[list[str]]:
    script = tmp_path / "steps.py"
    script.write_text(_STEPS)
    code = f"import sys; sys.argv = ['steps', {str(tmp_path / 'cache')!r}, {names!r}]; exec(open({str(script)!r}).read())"
    return [line.split() for line in run_python(code).splitlines()]


def test_a_step_that_does_not_draw_does_not_import_numpy_random(tmp_path):
    """numpy imports numpy.random on first use (several ms); only a step that draws should be that use."""
    lines = _run_steps(tmp_path, "double,double")
    assert [(name, cached) for name, cached, *_ in lines] == [("double", "False"), ("double", "True")]
    imported_with_numpy = lines[0][3] == "True"
    # numpy 2 imports numpy.random lazily; a numpy that imports it with itself leaves nothing to spare
    assert [imported for _, _, imported, _ in lines] == [str(imported_with_numpy)] * 2


def test_a_step_that_first_uses_numpy_random_is_seen_as_if_imported_before(tmp_path):
    """Its state is taken when imported and seeding is seen from then: a step that seeds first hits, one that
    draws without seeding runs every time, in this process and after a restart."""
    first = _run_steps(tmp_path, "seeded,seeded,unseeded,unseeded")
    assert [(name, cached) for name, cached, *_ in first] == [
        ("seeded", "False"), ("seeded", "True"), ("unseeded", "False"), ("unseeded", "False")]
    restarted = _run_steps(tmp_path, "unseeded,seeded")
    assert [(name, cached) for name, cached, *_ in restarted] == [("unseeded", "False"), ("seeded", "True")]


def test_when_imported_calls_back_once_the_module_has_run(tmp_path, monkeypatch):
    (tmp_path / "nbcache_lazy_probe.py").write_text("VALUE = 42\n")
    (tmp_path / "nbcache_lazy_other.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    cancel = ambient.when_imported("nbcache_lazy_probe", lambda module: seen.append(module.VALUE))
    cancelled = ambient.when_imported("nbcache_lazy_other", lambda module: seen.append("never"))
    try:
        cancelled()
        import nbcache_lazy_other  # noqa: F401
        assert seen == []
        import nbcache_lazy_probe  # noqa: F401
        assert seen == [42]
        assert not any(type(finder).__name__ == "_ImportWatch" for finder in sys.meta_path)  # nothing left watched
    finally:
        cancel()
        sys.modules.pop("nbcache_lazy_probe", None)
        sys.modules.pop("nbcache_lazy_other", None)


def test_reading_pandas_options_in_two_threads_puts_showwarning_back():
    """Each hit swapped warnings.showwarning and put back what it found: two threads interleaving left the
    process with warnings never shown again. A thread's own warnings are not shown while it reads; another
    thread's are."""
    import threading
    import warnings

    from nbcache import quietly

    before = warnings.showwarning
    shown: list[str] = []
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with quietly.unshown():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with quietly.unshown():
            b_in.set()
            a_out.wait(5)
            warnings.showwarning("hidden", UserWarning, "x.py", 1)  # (this thread reads: not shown)

    warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
    try:
        mine = warnings.showwarning
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        a_in.wait(5)
        b_in.wait(5)
        warnings.showwarning("seen", UserWarning, "x.py", 1)  # (another thread's, while they read)
        for t in threads:
            t.join(10)
        assert warnings.showwarning is mine and shown == ["seen"]
    finally:
        warnings.showwarning = before



def test_a_call_run_under_another_process_settings_leaves_this_threads_as_they_were():
    """How a Dask worker runs a submitted call (``computing_as``): the caller's numpy error handling and
    pandas computing options while it runs, then the worker's own again, whatever the call changed of them
    itself and even where the caller's could be set only halfway (a pandas of another version)."""
    import pandas as pd

    np.seterr(all="warn", under="ignore")
    mine = ambient.computing_state()
    theirs = ambient.computing_state()
    theirs["numpy error handling"] = dict(theirs["numpy error handling"], divide="ignore")
    theirs["pandas computing options"] = dict(theirs["pandas computing options"],
                                              **{"compute.use_bottleneck": False, "mode.string_storage": "no such"})
    try:
        with ambient.computing_as(theirs, alone=True):
            assert np.geterr()["divide"] == "ignore" and pd.get_option("compute.use_bottleneck") is False
        assert ambient.computing_state() == mine  # (use_bottleneck was set before string_storage failed)
        with ambient.computing_as(mine, alone=True):
            np.seterr(over="raise")  # (what the call does itself)
        assert ambient.computing_state() == mine
        with ambient.computing_as(theirs, alone=False):  # (pandas' options are the whole process's)
            assert np.geterr()["divide"] == "ignore" and pd.get_option("compute.use_bottleneck") is True
        assert ambient.computing_state() == mine
    finally:
        np.seterr(all="warn", under="ignore")
        pd.reset_option("compute.use_bottleneck")
