"""cachedcall.StepCall on its own: the outcome and changes of each lookup, damage repaired with one warning,
a broken store never costing the result, and the latest ingredients written only when they change. The call
here is the smallest kind of step there is: one input, a body, one value stored."""

from __future__ import annotations

import threading
import time
import types
from datetime import datetime, timezone
from typing import Any, Callable

import pytest

from nbcache import Cache, CacheWarning, Change, ChangeKind, MemoryStore, Outcome
from nbcache.cachedcall import StepCall


class Call(StepCall):
    def __init__(self, cache: Cache, x: Any, body: Callable[[], Any], code: str = "code-1") -> None:
        super().__init__(cache, cache.store(), "s", version=None, started_at=datetime.now(timezone.utc),
                         t0=time.perf_counter())
        self.code, self.body = code, body
        self.hash_input("x", x, "argument")
        self.make_key()

    def execute(self, reason: str, *, store: bool) -> Any:
        result = self.body()
        outputs = self.save([result], duration_s=0.5, is_tuple=False) if store else ()
        self.record(cached=False, reason=reason, outputs=outputs)
        return result

    def restore(self, values: list[Any], entry: Any) -> Any:
        self.record(cached=True, reason="cache hit", outputs=entry.outputs, saved_s=entry.duration_s)
        return values[0]


def call(cache: Cache, x: Any, body: Callable[[], Any] = lambda: 42, **kw: Any) -> tuple[Any, Call]:
    c = Call(cache, x, body, **kw)
    return c.run(), c


def test_outcomes_and_changes_of_a_first_run_a_hit_and_a_change():
    cache = Cache(store=MemoryStore())
    assert call(cache, 1)[1].outcome is Outcome.FIRST_RUN
    result, hit = call(cache, 1, body=lambda: pytest.fail("a hit ran the body"))
    assert result == 42 and hit.outcome is Outcome.HIT
    _, changed = call(cache, 2)
    assert changed.outcome is Outcome.CHANGED and changed.changes == (Change(ChangeKind.INPUT, "x"),)
    _, code = call(cache, 2, code="code-2")
    assert code.outcome is Outcome.CHANGED and [c.kind for c in code.changes] == [ChangeKind.CODE]
    runs = cache.runs()
    assert [r.state for r in runs] == [Outcome.FIRST_RUN, Outcome.HIT, Outcome.CHANGED, Outcome.CHANGED]
    assert [r.reason for r in runs] == ["first run", "cache hit", "argument x changed", "code changed"]


def test_a_cleared_result_runs_again_and_says_so():
    cache = Cache(store=MemoryStore())
    call(cache, 1)
    assert cache.clear() == 1
    _, again = call(cache, 1)
    assert again.outcome is Outcome.REMOVED and cache.runs()[-1].reason == "cached result was removed"


def notebook(source: str) -> types.ModuleType:
    module = types.ModuleType("__main__")
    exec(compile(source, "<cell>", "exec"), vars(module))
    return module


def test_a_stored_value_that_no_longer_loads_is_forgotten_and_recomputed_with_one_warning():
    # a notebook class is stored by name; after a restart the notebook no longer defines it
    before = notebook("class Point:\n    pass\n")
    cache = Cache(store=MemoryStore(), notebook=before)
    call(cache, 1, body=before.Point)
    cache.notebook = notebook("pass\n")
    ran = []
    with pytest.warns(CacheWarning, match=r"step 's' is damaged \(it cannot be unpickled.*recomputing it"):
        result, damaged = call(cache, 1, body=lambda: ran.append(1) or "fresh")
    assert result == "fresh" and ran == [1] and damaged.outcome is Outcome.DAMAGED
    assert cache.runs()[-1].reason == "cached result was damaged"
    assert call(cache, 1, body=lambda: pytest.fail("ran again"))[0] == "fresh"  # the new value is stored


class BrokenIndex(MemoryStore):
    def get_entry(self, key: str) -> Any:
        raise OSError("database is locked")


def test_a_store_that_cannot_be_read_still_gives_the_result():
    cache = Cache(store=BrokenIndex())
    with pytest.warns(CacheWarning, match="ran without the cache, which could not be read: database is locked"):
        result, c = call(cache, 1)
    assert result == 42 and c.outcome is Outcome.UNREADABLE
    assert [r.reason for r in cache.runs()] == ["cache unreadable"]


class Counting(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.latest_writes = 0

    def put_latest(self, identity: str, latest: Any) -> None:
        self.latest_writes += 1
        super().put_latest(identity, latest)


def test_hits_write_the_latest_ingredients_only_when_they_changed():
    store = Counting()
    cache = Cache(store=store)
    call(cache, 1)
    written = store.latest_writes
    for _ in range(3):
        call(cache, 1)
    assert store.latest_writes == written  # three hits of the same ingredients: nothing written
    call(cache, 2)
    call(cache, 1)  # a hit of other ingredients than the latest: they are the latest now, written later
    assert cache.latest.worker.drain(timeout=30)
    assert store.get_latest("s").inputs == call(cache, 1)[1].inputs


class Watched(Counting):
    """A store whose writes of latest ingredients say which thread made them."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[str] = []

    def put_latest(self, identity: str, latest: Any) -> None:
        self.writers.append(threading.current_thread().name)
        super().put_latest(identity, latest)


def test_a_hit_leaves_stale_latest_ingredients_to_the_background_and_a_newer_call_wins():
    store = Watched()
    cache = Cache(store=store)
    call(cache, 1)
    call(cache, 2)
    fresh = Cache(store=store)  # another process's view: it knows nothing of what is latest
    call(fresh, 1)  # a hit, while the latest stored is of x=2: written, but not by the hit itself
    assert fresh.latest.worker.drain(timeout=30)
    assert store.writers[-1] == "nbcache-background" and store.get_latest("s").inputs == call(fresh, 1)[1].inputs
    writes = store.latest_writes
    third = Cache(store=store)
    call(third, 1)  # a hit of what is already the latest: read, nothing written
    assert third.latest.worker.drain(timeout=30) and store.latest_writes == writes
    gate = threading.Event()
    fresh.latest.worker.submit(gate.wait)  # hold the background thread
    slow = Cache(store=store)
    slow.latest.worker = fresh.latest.worker
    call(slow, 2)  # a hit of x=2: queued behind the gate
    call(slow, 3)  # a miss: its latest is written at once, and the queued one must not undo it
    gate.set()
    assert slow.latest.worker.drain(timeout=30)
    assert store.get_latest("s").inputs == call(slow, 3)[1].inputs
