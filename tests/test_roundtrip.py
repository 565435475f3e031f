"""A value restored from the cache hashes like the value that was stored, and using a value does not change
its hash.

Every step result is pickled into the cache and unpickled on a hit; the restored value then feeds the next
step's key. ``hash_value(x) == hash_value(loads(dumps(x)))`` must hold for every picklable value, or a
restored value looks new and every step downstream of it runs again. Each case below is a real library
object; each is round-tripped through cloudpickle and, where plain pickle can, through plain pickle.
Reading a value (a groupby aggregated, a model predicting, an index looked up) fills caches inside it, and
must not change its hash either.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import io
import pathlib
import pickle
import re
from typing import Any, Callable, NamedTuple

import cloudpickle
import numpy as np
import pandas as pd
import pytest

from nbcache import UncacheableError, hash_value as H


# -- classes of the corpus: at module level, so that plain pickle finds them -----------------------------

@dataclasses.dataclass
class Run:
    name: str
    params: dict
    scores: list
    when: datetime.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Frozen:
    key: tuple
    inner: Run
    tags: frozenset = frozenset()


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Flags(enum.Flag):
    A = 1
    B = 2


class Pair(NamedTuple):
    left: Any
    right: Any


Coordinates = collections.namedtuple("Coordinates", "lat lon")


class Forgetful(dict):
    """Like scikit-learn's ``Bunch``: bookkeeping in ``__dict__`` that its ``__setstate__`` throws away."""

    def __init__(self, **items):
        super().__init__(items)
        self.__dict__["_notes"] = {"made": "here"}

    def __setstate__(self, state):
        pass


class Measured:
    """A ``functools.cached_property`` stores its value in ``__dict__`` the first time it is read."""

    def __init__(self, values):
        self.values = values

    @functools.cached_property
    def total(self):
        return sum(self.values)


class Careful:
    """A ``__setstate__`` that keeps the state: all of it counts."""

    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        self.__dict__.update(state)


# -- the corpus: name -> (make the value, use it) ---------------------------------------------------------

def _no_use(x: Any) -> None:
    pass


CASES: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {}


def case(name: str, use: Callable[[Any], Any] = _no_use):
    def add(make: Callable[[], Any]) -> Callable[[], Any]:
        CASES[name] = (make, use)
        return make
    return add


# standard library

case("nested-containers")(lambda: {"a": [1, 2.5, (3, "x")], "b": {frozenset({1, 2}), None},
                                   "c": collections.OrderedDict(z=1, y=2), 4: [[], {}, ()]})
case("bytes")(lambda: b"\x00\x01binary\xff")
case("bytearray")(lambda: bytearray(b"mutable\x00"))
case("range")(lambda: range(2, 100, 7))
case("slice")(lambda: [slice(1, 10, 2), slice(None), slice("a", None)])
case("decimal")(lambda: [decimal.Decimal("1.10"), decimal.Decimal("-0"), decimal.Decimal("NaN")])
case("fraction")(lambda: fractions.Fraction(22, 7))
case("path")(lambda: [pathlib.Path("/data/raw/file.csv"), pathlib.PurePosixPath("a/b")])
case("datetime-tz")(lambda: datetime.datetime(2024, 3, 1, 12, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2))))
case("datetime-zoneinfo")(lambda: datetime.datetime(2024, 3, 1, 12, 30, tzinfo=__import__("zoneinfo").ZoneInfo("Europe/Paris")))
case("date-time-timedelta")(lambda: [datetime.date(2024, 2, 29), datetime.time(8, 15, tzinfo=datetime.timezone.utc),
                                     datetime.timedelta(days=3, microseconds=7)])
case("re-pattern", use=lambda p: p.findall("a = 1\nB=2"))(
    lambda: re.compile(r"(?P<word>\w+)\s*=", re.IGNORECASE | re.MULTILINE))
case("dataclass")(lambda: Run("baseline", {"lr": 0.1, "layers": [64, 32]}, [0.5, 0.75],
                              datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)))
case("dataclass-frozen-nested")(lambda: Frozen((1, "a"), Run("inner", {}, []), frozenset({"x", "y"})))
case("enum")(lambda: [Color.RED, Level.HIGH, Flags.A | Flags.B])
case("namedtuple")(lambda: [Pair(1, [2, 3]), Coordinates(48.85, 2.35)])
case("cached-property", use=lambda c: c.total)(lambda: Measured([1.0, 2.5]))
case("setstate-ignores-state")(lambda: Forgetful(a=1, b=[2, 3]))
case("setstate-keeps-state")(lambda: Careful({"x": 1}))
case("counter-defaultdict-deque")(lambda: [collections.Counter("abracadabra"),
                                           collections.defaultdict(list, a=[1]), collections.deque([1, 2], maxlen=5)])


# numpy

case("numpy-structured")(lambda: np.array([(1, 2.0, b"ab"), (3, np.nan, b"c")],
                                          dtype=[("i", "i4"), ("f", "f8"), ("s", "S2")]))
case("numpy-object")(lambda: np.array([1, "two", None, [3]], dtype=object))
case("numpy-datetime64")(lambda: np.array(["2024-01-01T00:00", "NaT", "2024-06-30T12:00"], dtype="M8[m]"))
case("numpy-timedelta64")(lambda: np.arange(5).astype("m8[ms]"))
case("numpy-masked")(lambda: np.ma.masked_array([1.0, 2.0, np.nan, 4.0], mask=[0, 1, 0, 0], fill_value=-1.0))
case("numpy-scalars")(lambda: [np.float32(1.5), np.int64(-3), np.bool_(True), np.datetime64("2024-01-01"),
                               np.str_("s"), np.complex128(1 + 2j)])
case("numpy-float-array", use=lambda a: (a.sum(), a.mean(axis=0)))(
    lambda: np.random.default_rng(0).random((50, 4)))


# pandas

def _tips() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"day": rng.choice(["Thu", "Fri", "Sat", "Sun"], 40),
                       "smoker": rng.choice(["Yes", "No"], 40),
                       "total_bill": rng.uniform(5, 50, 40).round(2),
                       "tip": rng.uniform(1, 10, 40).round(2)})
    df["tip_pct"] = df["tip"] / df["total_bill"]
    return df


def _hourly() -> pd.DataFrame:
    return pd.DataFrame({"v": np.arange(48.0)}, index=pd.date_range("2024-01-01", periods=48, freq="h"))


def _use_groupby(g: Any) -> tuple:
    return g["tip_pct"].agg(["mean"]), g.mean(numeric_only=True), g.size(), list(g.groups), g.ngroups


def _used_groupby() -> Any:
    grouped = _tips().groupby("day")
    _use_groupby(grouped)
    return grouped


def _use_frame(df: pd.DataFrame) -> tuple:
    return (df.describe(include="all"), df.index.is_unique, df.columns.get_loc(df.columns[0]), df.iloc[:2],
            df.T, df.memory_usage(deep=True))


def _all_dtypes() -> pd.DataFrame:
    n = 4
    return pd.DataFrame({
        "int": np.arange(n, dtype="int64"),
        "float_nan": [0.5, np.nan, 1.5, np.nan],
        "category": pd.Categorical(["a", "b", "a", None], categories=["b", "a"], ordered=True),
        "datetime_tz": pd.date_range("2024-03-30", periods=n, freq="D", tz="Europe/Paris"),
        "datetime": pd.to_datetime(["2024-01-01", None, "2024-01-03", "2024-01-04"]),
        "timedelta": pd.to_timedelta([1, 2, None, 4], unit="h"),
        "Int64": pd.array([1, None, 3, 4], dtype="Int64"),
        "boolean": pd.array([True, None, False, True], dtype="boolean"),
        "Float64": pd.array([0.1, None, 0.3, 0.4], dtype="Float64"),
        "string": pd.array(["x", None, "z", "w"], dtype="string"),
        "object": pd.Series([1, "mixed", None, (2, 3)], dtype=object),
        "period": pd.period_range("2024-01", periods=n, freq="M"),
        "interval": pd.interval_range(0, n),
    })


case("pandas-all-dtypes", use=_use_frame)(_all_dtypes)
case("pandas-multiindex", use=lambda df: (df.loc["a"], df.index.is_monotonic_increasing, df.index.levels))(
    lambda: pd.DataFrame({"v": [1.0, 2.0, 3.0, np.nan]},
                         index=pd.MultiIndex.from_product([["a", "b"], [1, 2]], names=["k", "n"])))
case("pandas-series", use=lambda s: (s.value_counts(), s.index.is_unique, s["b"], s.describe()))(
    lambda: pd.Series([1.5, np.nan, 3.0], index=["a", "b", "c"], name="s"))
case("pandas-index", use=lambda i: (i.is_unique, i.get_loc("b"), i.is_monotonic_increasing, i.inferred_type))(
    lambda: pd.Index(["a", "b", "c"], name="letters"))
case("pandas-datetime-index", use=lambda i: (i.is_unique, i.get_loc(i[1]), i.is_monotonic_increasing))(
    lambda: pd.date_range("2024-01-01", periods=5, freq="h", tz="UTC", name="t"))
case("pandas-categorical")(lambda: pd.Categorical(["lo", "hi", "lo"], categories=["lo", "hi"], ordered=True))
case("pandas-timestamp-timedelta")(lambda: [pd.Timestamp("2024-01-01 12:00", tz="US/Eastern"),
                                            pd.Timedelta("1h30min"), pd.NaT, pd.NA, pd.Period("2024-01", "M")])
case("pandas-groupby", use=_use_groupby)(lambda: _tips().groupby(["day", "smoker"]))
case("pandas-groupby-used", use=_use_groupby)(_used_groupby)
case("pandas-rolling", use=lambda r: r.mean())(lambda: _hourly().rolling(3))
case("pandas-resampler", use=lambda r: r.mean())(lambda: _hourly().resample("D"))
case("pandas-series-groupby", use=lambda g: (g.mean(), g.size()))(lambda: _tips().groupby("day")["tip"])
try:
    import pyarrow  # noqa: F401
except ImportError:
    pass
else:
    case("pandas-string-pyarrow")(lambda: pd.Series(["a", None, "c"], dtype="string[pyarrow]"))


# scipy

def _sparse(fmt: str):
    import scipy.sparse as sp

    dense = np.array([[0, 1.5, 0], [2.0, 0, 0], [0, 0, 3.0], [0, 4.0, 0]])
    return getattr(sp, f"{fmt}_matrix")(dense)


def _use_sparse(m: Any) -> tuple:
    return (m @ np.ones(m.shape[1]), m.sum(axis=0), m.nnz, getattr(m, "has_canonical_format", None), m.T,
            m @ m.T)


case("scipy-csr", use=_use_sparse)(lambda: _sparse("csr"))
case("scipy-csc", use=_use_sparse)(lambda: _sparse("csc"))
case("scipy-coo", use=_use_sparse)(lambda: _sparse("coo"))
case("scipy-coo-array", use=lambda m: (m @ m, m.tocsr(), m.sum_duplicates()))(
    lambda: __import__("scipy.sparse", fromlist=["coo_array"]).coo_array(np.eye(4)))
case("scipy-lil-dok", use=lambda ms: [m @ np.ones(3) for m in ms])(
    lambda: [getattr(__import__("scipy.sparse", fromlist=["lil_matrix"]), f"{fmt}_matrix")(np.eye(3))
             for fmt in ("lil", "dok", "dia")])
case("scipy-csr-array", use=_use_sparse)(
    lambda: __import__("scipy.sparse", fromlist=["csr_array"]).csr_array(np.eye(4) * 2))


# scikit-learn

def _iris():
    from sklearn.datasets import load_iris

    return load_iris()


def _digits():
    from sklearn.datasets import load_digits

    return load_digits()


def _xy():
    data = _iris()
    return data.data, data.target


def _fitted(estimator):
    X, y = _xy()
    return estimator.fit(X, y)


def _use_estimator(est: Any) -> None:
    X, _ = _xy()
    if hasattr(est, "predict"):
        est.predict(X[:5])
    if hasattr(est, "transform"):
        est.transform(X[:5])
    est.get_params()
    repr(est)


def _estimators() -> dict[str, Callable[[], Any]]:
    from sklearn.cluster import KMeans
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic": lambda: LogisticRegression(max_iter=500),
        "random-forest": lambda: RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0),
        "scaler": StandardScaler,
        "kmeans": lambda: KMeans(n_clusters=3, n_init=2, random_state=0),
        "pipeline": lambda: Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))]),
    }


case("sklearn-bunch-iris", use=lambda b: (b.data, b["target"], b.feature_names, dir(b)))(_iris)
case("sklearn-bunch-digits", use=lambda b: (b.images, b.target_names))(_digits)
for _name in ("logistic", "random-forest", "scaler", "kmeans", "pipeline"):
    case(f"sklearn-{_name}-unfitted", use=lambda e: (e.get_params(), repr(e)))(
        lambda _name=_name: _estimators()[_name]())
    case(f"sklearn-{_name}-fitted", use=_use_estimator)(lambda _name=_name: _fitted(_estimators()[_name]()))


# matplotlib

def _figure_with_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [1, 4, 9], label="squares")
    ax.set_title("t")
    ax.legend()
    plt.close(fig)
    return fig, ax


def _figure_object():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    ax = fig.add_subplot()
    ax.bar(["a", "b"], [1, 2])
    return fig


case("matplotlib-fig-ax")(_figure_with_axes)
case("matplotlib-figure")(_figure_object)


# -- the properties -----------------------------------------------------------------------------------------

def _cloudpickle(x: Any) -> Any:
    return cloudpickle.loads(cloudpickle.dumps(x))


def _pickle(x: Any) -> Any:
    return pickle.loads(pickle.dumps(x, protocol=5))


ROUND_TRIPS = {"cloudpickle": _cloudpickle, "pickle": _pickle}


@pytest.fixture(params=sorted(CASES), ids=sorted(CASES))
def corpus_case(request):
    return request.param, *CASES[request.param]


@pytest.mark.parametrize("round_trip", sorted(ROUND_TRIPS))
def test_a_restored_value_hashes_like_the_stored_one(corpus_case, round_trip):
    name, make, _ = corpus_case
    trip = ROUND_TRIPS[round_trip]
    value = make()
    try:
        restored = trip(value)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        assert round_trip == "pickle", f"cloudpickle cannot pickle {name}: {exc}"
        pytest.skip(f"plain pickle cannot pickle {name}: {exc}")
    assert H(value) == H(restored)
    assert H(restored) == H(trip(restored))


def test_using_a_value_does_not_change_its_hash(corpus_case):
    _, make, use = corpus_case
    value = make()
    before = H(value)
    use(value)
    assert H(value) == before
    assert H(_cloudpickle(value)) == before  # and a value used before it was stored still matches


def test_the_corpus_covers_what_it_says():
    assert len(CASES) >= 50
    assert {"sklearn-bunch-iris", "pandas-groupby", "scipy-coo", "matplotlib-figure"} <= set(CASES)


# -- the reported cases, spelled out ----------------------------------------------------------------------

def test_a_bunch_restored_from_the_cache_hashes_like_the_one_stored():
    iris = _iris()
    assert iris.__dict__  # the bookkeeping pickling drops: it must not count
    restored = _pickle(iris)
    assert not restored.__dict__
    assert H(restored) == H(iris) == H(_cloudpickle(iris))
    changed = _iris()
    changed["target"] = changed["target"][::-1].copy()
    assert H(changed) != H(iris)  # its items still count


def test_state_a_setstate_ignores_does_not_count_and_state_it_keeps_does():
    a, b = Forgetful(k=1), Forgetful(k=1)
    b.__dict__["_notes"] = {"made": "elsewhere"}
    assert H(a) == H(b)
    assert H(Forgetful(k=1)) != H(Forgetful(k=2))
    assert H(Careful(1)) != H(Careful(2))


def test_a_groupby_hashes_alike_before_and_after_it_is_used():
    grouped = _tips().groupby(["day", "smoker"])
    before = H(grouped)
    grouped["tip_pct"].agg(["mean"])
    assert H(grouped) == before
    grouped.mean(numeric_only=True)
    assert H(grouped) == before
    assert H(_cloudpickle(grouped)) == before == H(_pickle(grouped))
    assert H(_tips().groupby("day")) != before  # other keys, other groupby
    other = _tips()
    other.loc[0, "tip"] += 1
    assert H(other.groupby(["day", "smoker"])) != before


def test_sparse_matrices_hash_alike_after_products_and_by_content():
    import scipy.sparse as sp

    m = _sparse("csr")
    before = H(m)
    assert (m @ m.T).nnz and m.has_canonical_format
    assert H(m) == before == H(_pickle(m))
    changed = m.copy()
    changed.data[0] = 9.0
    assert H(changed) != before
    assert H(sp.csc_matrix(m)) != before


def _draw(figure) -> None:
    figure.savefig(io.BytesIO(), format="png")


@pytest.mark.parametrize("make", [_figure_with_axes, _figure_object], ids=["fig-ax", "figure"])
@pytest.mark.parametrize("round_trip", sorted(ROUND_TRIPS))
def test_a_drawn_figure_hashes_like_its_restored_copy(make, round_trip):
    """A figure shown in a notebook is drawn: its restored copy (no longer marked stale, transforms
    no longer marked invalid) must still match it, and drawing a restored copy must give the same hash."""
    value = make()
    figure = value[0] if isinstance(value, tuple) else value
    restored = ROUND_TRIPS[round_trip](value)
    _draw(figure)
    drawn = H(value)
    assert H(ROUND_TRIPS[round_trip](value)) == drawn
    _draw(restored[0] if isinstance(restored, tuple) else restored)
    assert H(restored) == drawn
    _draw(figure)
    assert H(value) == drawn


# -- closed files -------------------------------------------------------------------------------------------

def test_a_closed_file_hashes_as_its_type_name_and_mode(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n")
    with open(path) as f, pytest.raises(UncacheableError, match="open file"):
        H(f)  # an open file still has no content to hash
    with open(path) as again:
        pass
    with open(path, "rb") as binary:
        pass
    with open(tmp_path / "other.csv", "w") as other:
        pass
    assert H(f) == H(again)
    assert len({H(f), H(binary), H(other)}) == 3
    buffer = io.BytesIO(b"content")
    assert H(buffer) != H(io.BytesIO(b"other"))  # an open in-memory buffer hashes by content, as before
    buffer.close()
    H(buffer)


def test_an_exhausted_csv_reader_hashes_and_an_open_one_does_not(tmp_path):
    path = tmp_path / "data.csv"
    pd.DataFrame({"a": range(25), "b": ["x"] * 25}).to_csv(path, index=False)
    reader = pd.read_csv(path, chunksize=10)
    with pytest.raises(UncacheableError, match="open file"):
        H(reader)
    chunks = list(reader)  # reading it to the end closes its file
    assert len(chunks) == 3
    exhausted = H(reader)
    again = pd.read_csv(path, chunksize=10)
    list(again)
    assert H(again) == exhausted
    with pd.read_csv(path, chunksize=10) as early:
        next(early)
    assert H(early) != exhausted  # it stopped at another row
    other = pd.read_csv(path, chunksize=5)
    list(other)
    assert H(other) != exhausted


def test_importing_and_hashing_builtins_imports_no_library():
    from .conftest import run_python

    code = ("import sys, nbcache, tempfile\n"
            "f = tempfile.TemporaryFile(); f.close()\n"
            "nbcache.hash_value([1, {'a': (2.0, None)}, f, range(3)])\n"
            "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'sklearn', 'matplotlib') if m in sys.modules))")
    assert run_python(code).strip() == "[]"
