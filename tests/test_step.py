"""@step: keys, hits, misses, reasons, and every way a cache can fail without costing the user a result."""

from __future__ import annotations

import functools
import threading
import warnings

import numpy as np
import pandas as pd
import pytest

import nbcache
from nbcache import CacheWarning, step

from .conftest import run_python
from .test_fingerprint import define


class Counter:
    """Counts calls through a file, so that the count is not state the step's code reads and hashes.

    (A step that reads a global or closure value is keyed on it: a counter object would change the key.)
    """

    def __init__(self, path):
        self.path = path

    def hit(self):
        with open(self.path, "a") as f:
            f.write("x")

    @property
    def n(self):
        try:
            with open(self.path) as f:
                return len(f.read())
        except FileNotFoundError:
            return 0


@pytest.fixture
def calls(tmp_path):
    return Counter(str(tmp_path / "calls"))


def test_second_call_is_served_from_the_cache(cache_dir, calls):

    @step
    def add(a, b=2):
        calls.hit()
        return a + b

    assert add(1) == 3
    assert add(1) == 3
    assert calls.n == 1
    first, second = nbcache.runs("add")
    assert (first.cached, first.reason, first.status) == (False, "first run", "ok")
    assert (second.cached, second.reason) == (True, "cache hit")
    assert 0 < second.saved_s <= first.duration_s  # the body's time, measured within the first call
    assert second.key == first.key and second.inputs == first.inputs == {"a": second.inputs["a"], "b": second.inputs["b"]}


def test_defaults_are_applied_before_keying(cache_dir, calls):

    @step
    def add(a, b=2):
        calls.hit()
        return a + b

    add(1)
    add(a=1)
    add(1, b=2)
    add(1, 2)
    assert calls.n == 1
    add(1, 3)
    assert calls.n == 2


def test_none_is_a_cached_value_not_a_miss(cache_dir, calls):

    @step
    def nothing():
        calls.hit()

    assert nothing() is None
    assert nothing() is None
    assert calls.n == 1


def test_decorator_options(cache_dir, calls):

    @step(name="loader", ignore=["verbose"], version="1")
    def load(n, verbose=False):
        calls.hit()
        return list(range(n))

    load(3, verbose=True)
    load(3, verbose=False)
    assert calls.n == 1
    assert [r.step for r in nbcache.runs()] == ["loader", "loader"]
    assert "verbose" not in nbcache.runs()[0].inputs


def test_version_forces_a_new_key(cache_dir):
    ns = define("def f(x):\n    return x * 2\n")
    step(version="1")(ns["f"])(2)
    step(version="2")(ns["f"])(2)
    runs = nbcache.runs()
    assert [r.cached for r in runs] == [False, False]
    assert runs[1].reason == "version changed from '1' to '2'"


def test_enable_cache_false_always_runs_and_records(cache_dir, calls):

    @step(enable_cache=False)
    def always(x):
        calls.hit()
        return x

    always(1)
    always(1)
    assert calls.n == 2
    assert [(r.cached, r.reason) for r in nbcache.runs()] == [(False, "cache disabled")] * 2
    assert nbcache.runs()[0].outputs == (nbcache.hash_value(1),)


def test_reasons_name_what_changed(cache_dir):
    cell = """
    SCALE = 2

    def helper(x):
        return x * SCALE

    def train(data, epochs=1):
        return helper(sum(data)) * epochs
    """
    ns = define(cell)
    train = step(ns["train"])
    train([1, 2])
    train([1, 2], epochs=2)
    ns["SCALE"] = 3
    train([1, 2], epochs=2)
    ns2 = define(cell.replace("x * SCALE", "x * SCALE + 1"))
    step(ns2["train"])([1, 2], epochs=2)
    ns3 = define(cell.replace("* epochs", "* epochs * 1.0"))
    step(ns3["train"])([1, 2, 3])
    assert [r.reason for r in nbcache.runs()] == [
        "first run",
        "argument epochs changed",
        "global SCALE changed",
        "code changed: helper(); global SCALE changed",  # the new cell also set SCALE back to 2
        "code changed: helper(), train(); arguments data, epochs changed",
    ]


def test_a_new_definition_with_the_same_code_hits(cache_dir):
    src = "def f(x):\n    # v1\n    return x + 1\n"
    step(define(src)["f"])(1)
    step(define("\n\n" + src.replace("# v1", "# v2, a comment"))["f"])(1)
    assert [r.cached for r in nbcache.runs()] == [False, True]


def test_code_changes_invalidate(cache_dir):
    step(define("def f(x):\n    return x + 1\n")["f"])(1)
    assert step(define("def f(x):\n    return x + 2\n")["f"])(1) == 3
    assert nbcache.runs()[-1].reason == "code changed: f()"


def test_tuple_outputs_are_stored_one_by_one_and_match_consumers(cache_dir):
    @step
    def split(n):
        return np.arange(n), np.arange(n) * 2.0

    @step
    def consume(x):
        return float(x.sum())

    a, b = split(5)
    consume(b)
    a2, b2 = split(5)
    np.testing.assert_array_equal(b2, b)
    produced = nbcache.runs("split")[0].outputs
    assert len(produced) == 2
    assert nbcache.runs("consume")[0].inputs["x"] == produced[1]


def test_same_output_from_new_code_leaves_downstream_hitting(cache_dir, calls):

    def downstream(x):
        calls.hit()
        return x * 10

    down = step(downstream)
    up_v1 = step(define("def up(n):\n    return [i for i in range(n)]\n")["up"])
    up_v2 = step(define("def up(n):\n    return list(range(n))\n")["up"])
    down(up_v1(4))
    down(up_v2(4))
    assert [r.cached for r in nbcache.runs("up")] == [False, False]
    assert calls.n == 1


def test_exceptions_are_not_cached_and_are_recorded(cache_dir, calls):

    @step
    def fragile(x):
        calls.hit()
        if x > 0:
            raise ValueError("bad input")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad input"):
            fragile(1)
    assert calls.n == 2
    runs = nbcache.runs("fragile")
    assert [r.status for r in runs] == ["failed", "failed"]
    assert runs[0].error == "ValueError: bad input"
    # the second run is no first run: the reason says the last one failed, and a fix is told as a change since
    assert [r.reason for r in runs] == ["first run", "its last run failed (ValueError: bad input); it runs again"]
    assert [r.state for r in runs] == [nbcache.Outcome.FAILED] * 2
    assert fragile(-1) is None and nbcache.runs("fragile")[-1].reason == (
        "argument x changed since its last run, which failed (ValueError: bad input)")
    assert nbcache.runs("fragile")[-1].status == "ok"

    @step
    def shaped(x):
        raise ValueError("bad shape\nexpected (3, 4)\ngot (3, 5)")

    for _ in range(2):
        with pytest.raises(ValueError):
            shaped(1)
    assert nbcache.runs("shaped")[-1].reason == "its last run failed (ValueError: bad shape ...); it runs again"


def test_the_run_after_a_failed_one_says_so_after_a_restart_too(cache_dir):
    code = ("import nbcache\n"
            "@nbcache.step\n"
            "def fragile(x):\n"
            "    if x == 1:\n"
            "        raise ValueError('bad input')\n"
            "    return x\n"
            "try:\n"
            "    fragile({})\n"
            "except ValueError:\n"
            "    pass\n"
            "print(nbcache.runs()[-1].reason)\n")
    said = [run_python(code.format(x), env={"NBCACHE_DIR": str(cache_dir)}).strip().splitlines()[-1]
            for x in (1, 1, 2, 2)]
    assert said == ["first run", "its last run failed (ValueError: bad input); it runs again",
                    "argument x changed since its last run, which failed (ValueError: bad input)", "cache hit"]


def test_unpicklable_result_is_returned_with_one_warning(cache_dir):
    @step
    def make_lock():
        return threading.Lock()

    with pytest.warns(CacheWarning, match=r"step 'make_lock' .*_thread\.lock.* not cached") as record:
        lock = make_lock()
    assert len(record) == 1
    assert record[0].filename == __file__  # attributed to the user's call, not to nbcache's code
    assert hasattr(lock, "acquire")
    assert nbcache.runs()[-1].cached is False


def test_unhashable_argument_runs_uncached_with_a_warning_naming_it(cache_dir, calls):

    @step
    def consume(*args):
        calls.hit()
        return len(args)

    def gen():
        yield 1

    with pytest.warns(CacheWarning, match=r"args\[1\]\['loader'\].*generator") as record:
        assert consume(1, {"loader": gen()}) == 2
    assert len(record) == 1 and record[0].filename == __file__
    with pytest.warns(CacheWarning):
        consume(1, {"loader": gen()})
    assert calls.n == 2
    assert nbcache.runs()[-1].reason == "uncacheable argument args[1]['loader'] (generator)"


def test_ignored_unhashable_argument_is_fine(cache_dir):
    @step(ignore=["log"])
    def work(x, log):
        return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        work(1, log=threading.Lock())
        work(1, log=threading.Lock())
    assert [r.cached for r in nbcache.runs()] == [False, True]


def test_numpy_and_pandas_results_round_trip(cache_dir):
    df = pd.DataFrame({"a": np.arange(100_000), "b": ["x"] * 100_000})

    @step
    def transform(frame):
        out = frame.copy()
        out["c"] = out["a"] * 2
        return out, np.arange(len(out)) * 3

    first = transform(df)
    second = transform(df)
    pd.testing.assert_frame_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    second[1][0] = 99  # loaded arrays are ordinary writable arrays
    assert nbcache.runs()[-1].cached


def test_kwargs_are_keyed_by_name(cache_dir, calls):
    @step
    def opts(**kwargs):
        calls.hit()
        return sorted(kwargs)

    opts(a=1, b=2)
    opts(b=2, a=1)
    opts(a=1, b=3)
    assert calls.n == 2
    assert set(nbcache.runs()[0].inputs) == {"kwargs"}


def test_keyword_arguments_never_collide_with_parameters(cache_dir):
    @step
    def g(a, /, **kw):
        return (a, kw)

    @step
    def h(*args, **kw):
        return (args, kw)

    assert g(2) == (2, {})
    assert g(1, a=2) == (1, {"a": 2})
    assert h(5) == ((5,), {})
    assert h(args=(5,)) == ((), {"args": (5,)})


def test_methods_key_on_the_instance(cache_dir):
    class Scaler:
        def __init__(self, k):
            self.k = k

        @step
        def apply(self, x):
            return x * self.k

    assert Scaler(2).apply(3) == 6
    assert Scaler(2).apply(3) == 6
    assert Scaler(3).apply(3) == 9
    assert [r.cached for r in nbcache.runs()] == [False, True, False]


def test_clear_one_step_or_all(cache_dir):
    @step
    def a(x):
        return x

    @step
    def b(x):
        return x

    a(1), b(1), a(2)
    assert nbcache.clear("a") == 2
    a(2), b(1)
    assert [(r.step, r.cached) for r in nbcache.runs()[-2:]] == [("a", False), ("b", True)]
    assert nbcache.runs()[-2].reason == "cached result was removed"
    assert nbcache.clear() == 2
    b(1)
    assert nbcache.runs()[-1].cached is False


def test_clear_keeps_blobs_shared_with_other_steps(cache_dir):
    @step
    def a(x):
        return [x] * 1000

    @step
    def b(x):
        return [x] * 1000

    a(7), b(7)
    nbcache.clear(a)
    b(7)
    assert nbcache.runs()[-1].cached


def test_step_above_staticmethod_or_classmethod_is_as_below_them(cache_dir):
    """``@step`` over ``@staticmethod`` was taken: its calls warned that a staticmethod cannot be hashed, and
    every other step method of the class ran uncached for good; over ``@classmethod``, it was refused."""

    class Prices:
        @step
        @staticmethod
        def taxed(x):
            return x * 2

        @step
        @classmethod
        def scaled(cls, x):
            return x * 3

        @step
        def shifted(self, x):
            return x + 1

        @step(version="2")
        @staticmethod
        def halved(x):
            return x / 2

    for _ in range(2):
        assert (Prices.taxed(1), Prices().taxed(1), Prices.scaled(1), Prices().shifted(1), Prices().halved(1)) \
            == (2, 2, 3, 2, 0.5)
    assert [r.cached for r in nbcache.runs()[-5:]] == [True, True, True, True, True]
    with pytest.raises(TypeError, match="write @step under @property"):
        step(property(lambda self: 1))


def test_bad_decorator_use_is_explained(cache_dir):
    with pytest.raises(ValueError, match=r"'verbos', which is not a parameter of f\(\).*x, verbose"):
        @step(ignore=["verbos"])
        def f(x, verbose=False):
            return x
    with pytest.raises(TypeError, match="version='2'"):
        step(version=2)
    with pytest.raises(TypeError, match="@step takes a function"):
        step("name")
    with pytest.raises(TypeError, match="enable_cache=.... takes True or False"):
        step(enable_cache="no")

    @step
    def g(x):
        return x

    with pytest.raises(TypeError, match=r"^g\(\) too many positional arguments$"):
        g(1, 2)  # the same TypeError the function would raise, naming it


def test_step_keeps_the_function_metadata(cache_dir):
    @step
    def documented(x):
        """Docs."""
        return x

    assert documented.__doc__ == "Docs." and documented.__name__ == "documented"
    assert repr(documented) == "<nbcache step 'documented'>"


def test_runs_and_clear_validate_their_argument(cache_dir):
    with pytest.raises(TypeError, match="step name"):
        nbcache.runs(42)
    with pytest.raises(TypeError, match="step name"):
        nbcache.clear(42)


def test_cache_dir_from_environment_and_set_cache_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nbcache.set_cache_dir(None)
    monkeypatch.delenv("NBCACHE_DIR", raising=False)
    assert nbcache.cache_dir() == tmp_path / ".nbcache"
    monkeypatch.setenv("NBCACHE_DIR", str(tmp_path / "elsewhere"))
    assert nbcache.cache_dir() == tmp_path / "elsewhere"
    nbcache.set_cache_dir(tmp_path / "explicit")
    try:
        assert nbcache.cache_dir() == tmp_path / "explicit"

        @step
        def f():
            return 1

        f()
        assert (tmp_path / "explicit" / "runs.jsonl").exists()
    finally:
        nbcache.set_cache_dir(None)
    with pytest.raises(TypeError, match="takes a path"):
        nbcache.set_cache_dir(3)


def _add_one():
    @step
    def f(x):
        return x + 1

    return f


def test_unusable_cache_directory_still_returns_results(cache_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    nbcache.set_cache_dir(blocker / "cache")  # the fixture puts the default back afterwards
    with pytest.warns(CacheWarning, match="ran without the cache"):
        assert _add_one()(1) == 2


def test_damaged_index_still_returns_results_and_says_what_to_do(cache_dir):
    (cache_dir / "store").mkdir(parents=True)
    (cache_dir / "store" / "cache.db").write_bytes(b"this is not a SQLite database" * 100)
    with pytest.warns(CacheWarning, match="index in .* is damaged .*delete that directory"):
        assert _add_one()(1) == 2


def test_disabled_cache_does_not_warn_about_unhashable_arguments(cache_dir):
    @step(enable_cache=False)
    def consume(it):
        return sum(it)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert consume(x for x in [1, 2]) == 3
    assert nbcache.runs()[-1].reason == "cache disabled"


def test_fingerprint_of_a_step_is_the_one_in_its_keys(cache_dir):
    @step(version="3")
    def f(x):
        return x

    f(1)
    assert nbcache.fingerprint(f) == nbcache.runs()[-1].code == nbcache.fingerprint(f.__wrapped__)


def test_a_returned_open_file_is_not_cached(cache_dir, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("v1")

    @step
    def opener(p):
        return open(p)

    with pytest.warns(CacheWarning, match=r"cannot be pickled.*file object \(.*data.txt, open\)"):
        handle = opener(str(path))
    handle.close()
    path.write_text("v2")
    with pytest.warns(CacheWarning):
        handle = opener(str(path))
    with handle:
        assert handle.read() == "v2"


def test_tuple_results_link_to_consumers_of_an_element_or_of_the_whole(cache_dir):
    from nbcache.graph import build
    from nbcache.hashing import hash_items

    values = (np.arange(3), [1, 2], 7)
    whole, items = hash_items(values)
    assert whole == nbcache.hash_value(values) and items == [nbcache.hash_value(v) for v in values]

    @step
    def fit(n):
        return np.arange(n), np.arange(n) * 2

    @step
    def score(weights):  # takes the tuple whole
        return float(weights[0].sum() + weights[1].sum())

    @step
    def first(w):  # takes one element
        return float(w.sum())

    weights = fit(3)
    score(weights)
    first(weights[1])
    edges = {(e.source, e.target) for e in build(nbcache.runs()).edges}
    assert edges == {("fit", "score"), ("fit", "first")}


def test_a_step_that_changes_its_argument_in_place_is_warned_about(cache_dir):
    @step
    def add_total(rows):
        rows.append(sum(rows))
        return len(rows)

    with pytest.warns(CacheWarning, match=r"step 'add_total' changed its argument 'rows' in place; a cache hit"):
        assert add_total([1, 2, 3]) == 4
    b = [1, 2, 3]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        assert add_total(b) == 4  # a hit: the result, without the change (and no second warning)
    assert b == [1, 2, 3] and not said and nbcache.runs()[-1].cached

    @step
    def total(rows):
        return sum(rows)

    total([1, 2])  # reads only: no warning (CacheWarnings are errors in these tests)

    class Model:  # reading it fills a cache in its state: no change the user can see, and no warning
        @functools.cached_property
        def norm(self):
            return 3

    @step
    def use(model):
        return model.norm

    assert use(Model()) == 3


def _bound_by_inspect(func, args, kwargs):
    import inspect

    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return list(bound.arguments.items()), bound.args, bound.kwargs


@pytest.mark.parametrize("args, kwargs", [
    ((1,), {}), ((1, 3), {}), ((1,), {"b": 3}), ((), {"a": 1}), ((), {"b": 3, "a": 1}), ((1, 3, 4), {}),
    ((1,), {"a": 2}), ((), {}), ((1,), {"c": 3}), ((), {"b": 3}),
])
def test_a_call_binds_its_arguments_as_inspect_does_or_fails_as_the_function_would(cache_dir, args, kwargs):
    """Plain parameters are bound without inspect (a hit's few microseconds): the arguments, their order (which
    the key hashes in) and the errors must be exactly inspect's, so that no key changes and no call is let by."""
    def f(a, b=2):
        return (a, b)

    s = step(f, name="f")
    try:
        expected = _bound_by_inspect(f, args, kwargs)
    except TypeError as exc:
        with pytest.raises(TypeError, match=f"^f\\(\\) {exc}$"):
            s._bind(args, kwargs)
        with pytest.raises(TypeError, match=f"^f\\(\\) {exc}$"):
            s(*args, **kwargs)
        return
    bound = s._bind(args, kwargs)
    assert (list(bound.arguments.items()), bound.args, bound.kwargs) == expected
    assert s(*args, **kwargs) == f(*args, **kwargs) == s(*args, **kwargs)
    assert nbcache.runs("f")[-1].cached


def test_other_signatures_bind_through_inspect(cache_dir):
    def g(a, /, b, *rest, c=3, **more):
        return (a, b, rest, c, more)

    s = step(g, name="g")
    assert s._plain is None
    assert s(1, 2, 5, c=4, d=6) == (1, 2, (5,), 4, {"d": 6}) == s(1, 2, 5, c=4, d=6)
    assert nbcache.runs("g")[-1].cached
    with pytest.raises(TypeError, match="^g\\(\\) missing a required argument: 'b'"):
        s(1)


SHARED_TUPLE = '''
import sys, numpy as np, nbcache
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

@nbcache.step
def build(c):
    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=c))
    rows = [c]
    noise = np.random.random()  # (the global generator: the state the run leaves is stored with the tuple)
    return pipe, pipe.named_steps["logisticregression"], rows, {"rows": rows}, noise

@nbcache.step
def count(rows):
    return len(rows)

pipe, clf, rows, table, noise = build(0.5)
print(nbcache.runs()[-1].cached)
X = np.arange(20.0).reshape(10, 2); y = np.arange(10) % 2
pipe.fit(X, y)  # fitting the pipeline fits the classifier the step returned beside it
print(hasattr(clf, "coef_"), clf is pipe.steps[-1][1])
rows.append(9)
print(table["rows"], count(table["rows"][:1]), nbcache.runs()[-1].inputs["rows"] == nbcache.hash_value([0.5]))
print(repr(noise), repr(np.random.random()))
'''


def test_a_tuple_whose_elements_share_objects_comes_back_shared_after_a_restart(tmp_path):
    """Its elements were stored one by one, so a hit returned copies: fitting the pipeline no longer fitted the
    classifier returned beside it. Stored as one value (the tuple, an entry any nbcache reads), they stay one
    graph of objects. The run that computed it records each element's content address; a hit, the tuple's."""
    env = {"NBCACHE_DIR": str(tmp_path / "cache")}
    seeded = "import numpy as np; np.random.seed(3)\n"
    cold = run_python(seeded + SHARED_TUPLE, env=env).splitlines()
    warm = run_python(seeded + SHARED_TUPLE, env=env).splitlines()
    assert cold[0] == "False" and warm[0] == "True"
    assert warm[1:] == cold[1:]
    assert cold[1] == "True True" and cold[2].startswith("[0.5, 9] 1 True")
    code = SHARED_TUPLE.replace("print(nbcache.runs()[-1].cached)", "runs = nbcache.runs('build')\n"
                                "print([len(r.outputs) for r in runs], runs[-1].outputs == (runs[0].result,))")
    assert run_python(seeded + code, env=env).splitlines()[0] == "[5, 1, 1] True"  # (a hit: the tuple, one value)


def test_a_tuple_of_unshared_values_is_stored_element_by_element(cache_dir):
    from nbcache.cache import default_cache
    from nbcache.sharing import shared_between

    assert not shared_between(([1, 2], [1, 2], "a", 1.0, np.zeros(3)))
    rows = [1]
    assert shared_between((rows, {"rows": rows}))
    assert shared_between(([object() for _ in range(3000)], []))  # (more than it follows: stored together)

    @step
    def apart(n):
        return np.zeros(n), [n]

    @step
    def together(n):
        rows = [n]
        return rows, {"rows": rows}

    apart(3)
    together(3)
    store = default_cache().store()
    entry = store.get_entry(nbcache.runs("apart")[-1].key)
    assert len(entry.blobs) == 2 and entry.is_tuple
    entry = store.get_entry(nbcache.runs("together")[-1].key)
    assert len(entry.blobs) == 1 and not entry.is_tuple and entry.outputs == (nbcache.runs("together")[-1].result,)
