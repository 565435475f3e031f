"""Nothing nbcache does may cost the caller a result (issue 11, "results never lost"): whatever fails after a
step's body returned (hashing, pickling, storing what it returned, recording the run, writing its latest
ingredients, following what it read) gives the result and exactly one ``CacheWarning`` saying what failed,
and the run is still recorded; whatever fails in computing the key runs the step uncached, with one warning,
and never raises out of the step. The same for a ``%%step`` cell: its variables stay bound, its output shown.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

import nbcache
from nbcache import Cache, CacheWarning, MemoryStore, Outcome, step
from nbcache import cachedcall, diskstore, observe

from .conftest import run_cell

step_module = sys.modules["nbcache.step"]  # (``nbcache.step`` is the decorator)


class Recursing:
    """An object whose pickle protocol recurses forever: hashing and pickling it exhaust the stack."""

    def __reduce__(self) -> Any:
        return (Recursing, (Recursing(),))


def deep(n: int) -> list:
    nested: list = []
    for _ in range(n):
        nested = [nested]
    return nested


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


class BrokenReduce:
    """Hashing it raises an exception whose message itself cannot be had."""

    def __reduce__(self) -> Any:
        raise Unprintable()


def one_warning(record: Any) -> str:
    messages = [str(w.message) for w in record if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1, messages
    return messages[0]


def run_body(x: Any, body: Any, log: list) -> Any:
    log.append(x)
    return body()


def counted(cache: Cache, body: Any) -> tuple[Any, list[int]]:
    """A step ``f(x)`` that runs ``body`` (left out of its key, as is the list of the calls that ran)."""
    calls: list[int] = []
    f = step(cache=cache, name="f", ignore=["body", "log"])(run_body)
    return (lambda x: f(x, body, calls)), calls


# -- after the body ran ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: (1, Recursing()), lambda: (1, deep(100_000)), lambda: Recursing(),
                                  lambda: deep(100_000), lambda: [Recursing()]],
                         ids=["tuple-recursing-reduce", "tuple-deep-list", "recursing-reduce", "deep-list",
                              "list-of-recursing"])
def test_a_result_that_cannot_be_hashed_or_pickled_is_returned_with_one_warning_and_recorded(make):
    cache = Cache(store=MemoryStore())
    value = make()
    f, calls = counted(cache, lambda: value)
    with pytest.warns(CacheWarning) as record:
        result = f(1)
    assert result is value and calls == [1]
    assert "cannot be pickled" in one_warning(record) and "not cached" in one_warning(record)
    (run,) = cache.runs()
    assert run.status == "ok" and not run.cached and "not cached" in run.reason
    with pytest.warns(CacheWarning):
        assert f(1) is value and calls == [1, 1]  # nothing was stored: it runs again


class FailingStore(MemoryStore):
    """A store whose writes fail as asked."""

    def __init__(self, *, blobs: bool = False, runs: bool = False, entries: bool = False) -> None:
        super().__init__()
        self.fail_blobs, self.fail_runs, self.fail_entries = blobs, runs, entries

    def put_blob(self, address: str, frame: Any) -> None:
        if self.fail_blobs:
            raise OSError(28, "No space left on device")
        super().put_blob(address, frame)

    def put_entry(self, key: str, entry: Any) -> None:
        if self.fail_entries:
            raise RuntimeError("the index is haunted")
        super().put_entry(key, entry)

    def append_run(self, run: Any) -> None:
        if self.fail_runs:
            raise ValueError("history is read-only today")  # not an OSError: any exception
        super().append_run(run)


def test_a_result_that_cannot_be_stored_is_returned_with_one_warning_and_the_run_recorded():
    store = FailingStore(blobs=True)
    cache = Cache(store=store)
    f, calls = counted(cache, lambda: {"a": 1})
    with pytest.warns(CacheWarning) as record:
        assert f(1) == {"a": 1}
    message = one_warning(record)
    assert "could not be stored (OSError" in message and "No space left on device" in message
    assert "it is returned but not cached" in message
    assert [r.state for r in cache.runs()] == [Outcome.FIRST_RUN]


def test_an_index_that_refuses_the_entry_costs_nothing_but_the_cache():
    cache = Cache(store=FailingStore(entries=True))
    f, _ = counted(cache, lambda: 5)
    with pytest.warns(CacheWarning, match=r"could not be stored \(RuntimeError: the index is haunted\)") as record:
        assert f(1) == 5
    one_warning(record)


def test_a_run_that_cannot_be_recorded_still_returns_and_says_so_once():
    cache = Cache(store=FailingStore(runs=True))
    f, calls = counted(cache, lambda: [1, 2])
    with pytest.warns(CacheWarning) as record:
        assert f(1) == [1, 2]
    assert "its run could not be recorded (ValueError: history is read-only today)" in one_warning(record)
    # the result was stored all the same: a hit, whose record fails as well, with one warning
    with pytest.warns(CacheWarning) as record:
        assert f(1) == [1, 2]
    assert calls == [1]
    assert one_warning(record).startswith("nbcache: step 'f' came from the cache, but its run could not be")


def test_everything_failing_at_once_is_still_one_warning_that_names_each_failure():
    cache = Cache(store=FailingStore(blobs=True, runs=True))
    f, _ = counted(cache, lambda: 3)
    with pytest.warns(CacheWarning) as record:
        assert f(1) == 3
    message = one_warning(record)
    assert "could not be stored" in message and "could not be recorded" in message


def _forget(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("no memory of that")


def test_latest_ingredients_that_cannot_be_written_cost_nothing_but_a_warning():
    cache = Cache(store=MemoryStore())
    cache.latest.write = _forget  # (the writer of the latest ingredients fails)
    f, calls = counted(cache, lambda: 7)
    with pytest.warns(CacheWarning) as record:
        assert f(1) == 7
    assert "its ingredients could not be written (RuntimeError: no memory of that)" in one_warning(record)
    assert [r.status for r in cache.runs()] == ["ok"]


def test_an_unexpected_failure_while_keeping_the_result_is_one_warning_and_a_recorded_run(monkeypatch):
    def broken(self: Any) -> Any:
        raise MemoryError("out of memory while diffing state")

    monkeypatch.setattr(observe.Observer, "changed_state", broken)
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: "value")
    with pytest.warns(CacheWarning) as record:
        assert f(1) == "value"
    message = one_warning(record)
    assert "storing its result failed (MemoryError: out of memory while diffing state)" in message
    assert message.endswith("it is returned but not cached")
    (run,) = cache.runs()
    assert run.status == "ok" and run.reason == "first run; not cached: storing its result failed"


def test_a_failure_in_hashing_the_returned_tuple_falls_back_to_its_items(monkeypatch):
    def broken(values: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(step_module, "hash_items", broken)
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: (1, "a"))
    assert f(1) == (1, "a") and f(1) == (1, "a") and calls == [1]  # no warning: stored and served
    assert len(cache.runs()[0].outputs) == 2


@pytest.mark.parametrize("method", ["__enter__", "__exit__"])
def test_an_observer_that_fails_to_start_or_stop_costs_the_cache_never_the_result(monkeypatch, method):
    original = getattr(observe.Observer, method)

    def broken(self: Any, *args: Any) -> Any:
        original(self, *args)
        raise RuntimeError(f"{method} failed")

    monkeypatch.setattr(observe.Observer, method, broken)
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: 11)
    with pytest.warns(CacheWarning) as record:
        assert f(1) == 11
    assert f"what it read could not be followed (RuntimeError: {method} failed)" in one_warning(record)
    assert calls == [1] and "not cached: what it read could not be followed" in cache.runs()[-1].reason


def test_the_bodys_own_exception_passes_untouched_even_when_it_cannot_be_shown():
    cache = Cache(store=MemoryStore())

    def body() -> Any:
        raise Unprintable()

    f, _ = counted(cache, body)
    with pytest.raises(Unprintable):
        f(1)
    (run,) = cache.runs()
    assert run.status == "failed" and run.error == "Unprintable"


def test_the_bodys_exception_passes_untouched_when_the_observer_also_fails_to_stop(monkeypatch):
    original = observe.Observer.__exit__

    def broken(self: Any, *args: Any) -> Any:
        original(self, *args)
        raise RuntimeError("exit failed")

    monkeypatch.setattr(observe.Observer, "__exit__", broken)
    cache = Cache(store=MemoryStore())

    def body() -> Any:
        raise KeyError("the user's")

    f, _ = counted(cache, body)
    with pytest.raises(KeyError, match="the user's"):
        f(1)


# -- computing the key ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [Recursing, lambda: deep(100_000), BrokenReduce, lambda: {"k": [BrokenReduce()]}],
                         ids=["recursing-reduce", "deep-list", "broken-reduce", "nested-broken-reduce"])
def test_an_input_whose_hashing_fails_in_any_way_runs_uncached_with_one_warning(make):
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: "done")
    with pytest.warns(CacheWarning) as record:
        assert f(make()) == "done"
    assert "runs without the cache" in one_warning(record)
    assert [r.state for r in cache.runs()] == [Outcome.UNCACHEABLE]


@pytest.mark.parametrize("error", [MemoryError("no room"), RecursionError("too deep"), ValueError("bug"),
                                   Unprintable()])
def test_any_failure_in_computing_the_key_runs_the_step_uncached_with_one_warning(monkeypatch, error):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(cachedcall, "hash_value", broken)  # what hashes each input
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: "done")
    with pytest.warns(CacheWarning) as record:
        assert f(1) == "done" and calls == [1]
    message = one_warning(record)
    assert "runs without the cache: computing its key failed" in message and type(error).__name__ in message
    assert cache.runs()[0].reason == f"its key could not be computed ({type(error).__name__})"


def test_a_fingerprint_that_fails_in_an_unexpected_way_runs_uncached(monkeypatch):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(step_module, "fingerprint_parts", broken)
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: 1)
    with pytest.warns(CacheWarning, match="computing its key failed \\(RecursionError") as record:
        assert f(1) == 1
    one_warning(record)


class BadEquality:
    """Comparing it raises; hashing it must not care."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no comparing")

    __hash__ = object.__hash__


def test_an_input_whose_equality_raises_is_hashed_or_run_uncached_never_raised():
    cache = Cache(store=MemoryStore())
    f, calls = counted(cache, lambda: "ok")
    for value in (BadEquality(), {BadEquality(): 1}, [BadEquality(), BadEquality()]):
        with pytest.warns(CacheWarning) if _uncacheable(value) else _nothing():
            assert f(value) == "ok"


def _uncacheable(value: Any) -> bool:
    try:
        nbcache.hash_value(value)
    except nbcache.UncacheableError:
        return True
    return False


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


# -- %%step cells -------------------------------------------------------------------------------------------------

@pytest.fixture
def ip(shell, cache_dir):
    shell.reset()
    shell.run_line_magic("config", "NBCache.quiet = False")
    return shell


def test_a_cell_whose_output_cannot_be_stored_keeps_its_variables_and_output(ip, monkeypatch, capsys):
    def full(self: Any, *args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(diskstore.DiskStore, "put_blob", full)
    with pytest.warns(CacheWarning) as record:
        result = run_cell(ip, "%%step made\nx = [1, 2, 3]\nprint('hello')\nlen(x)")
    message = one_warning(record)
    assert "could not be stored" in message and message.endswith("the cell was not cached")
    assert ip.user_ns["x"] == [1, 2, 3] and result.result == 3 and "hello" in capsys.readouterr().out
    assert nbcache.runs()[-1].output_names == ("x",)


def test_a_cell_whose_keeping_fails_unexpectedly_keeps_its_variables_and_output(ip, monkeypatch, capsys):
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(sys.modules["nbcache.cellstep"], "memory_size", broken)
    with pytest.warns(CacheWarning) as record:
        result = run_cell(ip, "%%step sized\ny = {'a': 1}\nprint('shown')\ny['a']")
    assert "failed (RecursionError: maximum recursion depth exceeded)" in one_warning(record)
    assert ip.user_ns["y"] == {"a": 1} and result.result == 1 and "shown" in capsys.readouterr().out
    (run,) = nbcache.runs()
    assert run.status == "ok" and "not cached" in run.reason


def test_a_cell_reading_a_variable_whose_hashing_fails_runs_uncached(ip):
    ip.user_ns["Recursing"] = Recursing
    ip.user_ns["broken"] = BrokenReduce()
    with pytest.warns(CacheWarning) as record:
        run_cell(ip, "%%step\nz = broken is not None")
    assert "runs without the cache" in one_warning(record) and ip.user_ns["z"] is True
