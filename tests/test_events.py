"""events.Events: listeners hear every run while they live, a failing listener never fails a step, and a
slot holds the newest listener only."""

from __future__ import annotations

import gc
from datetime import datetime, timezone

from nbcache.events import Events
from nbcache.records import StepRun


def a_run(step: str = "s") -> StepRun:
    return StepRun(step=step, cached=False, duration_s=0.1, saved_s=0.0, key="k", code="c", inputs={},
                   outputs=(), reason="first run", started_at=datetime.now(timezone.utc))


class Listener:
    def __init__(self) -> None:
        self.heard: list[str] = []

    def on_run(self, run: StepRun) -> None:
        self.heard.append(run.step)

    def fail(self, run: StepRun) -> None:
        raise RuntimeError("display gone")


def test_listeners_hear_each_run_while_they_live():
    events, a, b = Events(), Listener(), Listener()
    assert not events
    events.subscribe(a.on_run)
    events.subscribe(b.on_run)
    events.notify(a_run("one"))
    assert a.heard == b.heard == ["one"]
    del b
    gc.collect()
    events.notify(a_run("two"))
    assert a.heard == ["one", "two"] and len(events._listeners) == 1


def test_a_failing_listener_does_not_stop_the_others():
    events, bad, good = Events(), Listener(), Listener()
    events.subscribe(bad.fail)
    events.subscribe(good.on_run)
    events.notify(a_run())
    assert good.heard == ["s"]


def test_a_slot_keeps_only_its_newest_listener():
    events, old, new, other = Events(), Listener(), Listener(), Listener()
    events.subscribe(old.on_run, slot="lineage")
    events.subscribe(new.on_run, slot="lineage")
    events.subscribe(other.on_run, slot="history")
    events.notify(a_run())
    assert (old.heard, new.heard, other.heard) == ([], ["s"], ["s"])
