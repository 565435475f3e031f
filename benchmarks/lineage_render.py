"""Drawing the lineage of 200 steps: build the graph from their run records, make DOT, render SVG with dot.

Each step consumes the outputs of up to three earlier ones, a mix of hits, first runs and re-runs, as a
long notebook would produce. Goal: under a second from records to SVG (with the widget's own overhead).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import nbcache
from _timing import best_of, goal, header, show, temp_cache
from nbcache.graph import build, render_svg, to_dot
from nbcache.records import SESSION, StepRun

STEPS = 200


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
    header("lineage_render", f"records -> graph -> DOT -> SVG for {STEPS} steps")
    runs = history()
    t_graph = best_of(lambda: render_svg(to_dot(build(runs))), repeat=3)
    with temp_cache() as path:
        import os

        store = nbcache.Cache(path).store()
        for run in runs:
            store.append_run(run)
        t_widget = best_of(lambda: nbcache.lineage(), repeat=3)
        assert len(nbcache.lineage().lineage.nodes) == STEPS and os.path.isdir(path)
    show("build + DOT + dot -Tsvg", t_graph)
    show("nbcache.lineage() widget, from disk", t_widget)
    goal("widget time / 1 s", t_widget / 1.0, "<=", 1.0)


if __name__ == "__main__":
    main()
