"""The overhead of a ``%%step`` hit on a small cell, in IPython's shell, next to running the cell plainly.

The cell reads three inputs and binds three outputs of a few KB each, and prints a line. A hit restores
the outputs, replays the line and shows the result; its overhead is the hit's time minus that of the
shell running an empty cell (the cost every cell pays, magic or not). Goal: overhead <= 2 ms.
"""

from __future__ import annotations

import contextlib
import io

from IPython.testing.globalipapp import start_ipython

import nbcache
from _timing import best_of, goal, header, show, temp_cache

ROUNDS = 5
CALLS = 200
BODY = """\
scaled = [v * factor for v in values]
labels = {k: f"{k}-{v}" for k, v in names.items()}
total = sum(scaled)
print("total", total)
total"""


def main() -> None:
    header("cell_hit", f"%%step hit of a small cell (3 inputs, 3 outputs of a few KB), best of {ROUNDS} x {CALLS}")
    ip = start_ipython()
    ip.run_line_magic("load_ext", "nbcache")
    ip.run_line_magic("config", "NBCache.quiet = True")
    ip.run_cell("values = list(range(500))\nfactor = 3\nnames = {str(i): i for i in range(100)}")
    with temp_cache(), contextlib.redirect_stdout(io.StringIO()):  # the cells print; keep the report clean
        ip.run_cell("%%step small\n" + BODY)  # fill the cache
        t_empty = best_of(lambda: ip.run_cell("pass"), repeat=ROUNDS, number=CALLS)
        t_plain = best_of(lambda: ip.run_cell(BODY), repeat=ROUNDS, number=CALLS)
        t_hit = best_of(lambda: ip.run_cell("%%step small\n" + BODY), repeat=ROUNDS, number=CALLS)
        assert all(r.cached for r in nbcache.runs("small")[1:])
    show("empty cell (the shell's own cost)", t_empty)
    show("the cell without the magic", t_plain)
    show("the cell as a %%step hit", t_hit)
    show("nbcache's overhead on a hit", t_hit - t_empty)
    goal("overhead / 2 ms", (t_hit - t_empty) / 0.002, "<=", 1.0)


if __name__ == "__main__":
    main()
