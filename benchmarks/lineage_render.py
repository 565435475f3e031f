"""Drawing the lineage of a 2,000-step history: run records to graph, DOT and SVG by dot, as the widget does.

Each step consumes the outputs of up to three earlier ones, a mix of hits, first runs and re-runs, as a
long notebook would produce. The widget draws the steps that ran last with the earlier steps that fed them,
``graph.DRAWN_MAX`` in all (``graph.recent``); the picture of every step (``limit=None``, what ``nbcache
graph`` writes) is timed once, for scale. Goal: the widget, from the history on disk, in under a second.
"""

from __future__ import annotations

import random
import time
from datetime import datetime, timedelta, timezone

import nbcache
from _timing import best_of, goal, header, show, temp_cache
from nbcache.graph import DRAWN_MAX, build, recent, render_svg, to_dot
from nbcache.records import SESSION, StepRun

STEPS = 2_000


def history() -> list[StepRun]:
    rng = random.Random(0)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    runs = []
    for i in range(STEPS):
        inputs = {f"in{j}": f"out-{k}" for j, k in enumerate(rng.sample(range(i), min(i, rng.randint(0, 3))))}
        cached = rng.random() < 0.6
        runs.append(StepRun(step=f"step_{i:03d}", cached=cached, duration_s=rng.random(), saved_s=rng.random(),
                            key=f"k{i}", code="c", inputs=inputs, outputs=(f"out-{i}",),
                            reason="cache hit" if cached else rng.choice(["first run", "argument x changed"]),
                            started_at=t0 + timedelta(seconds=i), session=SESSION))
    return runs


def main() -> None:
    header("lineage_render", f"records -> graph -> DOT -> SVG for {STEPS:,} steps")
    runs = history()
    t_drawn = best_of(lambda: render_svg(to_dot(recent(build(runs)))), repeat=3)
    t0 = time.perf_counter()
    render_svg(to_dot(build(runs)))
    t_whole = time.perf_counter() - t0
    with temp_cache() as path:
        store = nbcache.Cache(path).store()
        for run in runs:
            store.append_run(run)
        t_widget = best_of(lambda: nbcache.lineage(), repeat=3)
        widget = nbcache.lineage()
        assert len(widget.lineage.nodes) == STEPS and len(widget.drawn.nodes) == DRAWN_MAX
    show(f"build + DOT + dot -Tsvg, {DRAWN_MAX} drawn", t_drawn)
    show(f"the same, all {STEPS:,} drawn (once)", t_whole)
    show("nbcache.lineage() widget, from disk", t_widget)
    goal("widget time / 1 s", t_widget / 1.0, "<=", 1.0)


if __name__ == "__main__":
    main()
