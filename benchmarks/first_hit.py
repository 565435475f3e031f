"""A fresh process: ``import nbcache``, and the first call of a tiny step that finds its result cached.

Each measurement runs in a new interpreter (best of ``ROUNDS``), against a cache directory that a first
process filled, with its byte-code compiled as an installed package's is. What is timed, inside the child:

- ``import nbcache`` (the interpreter's own start-up is not counted; ``python -c pass`` is printed for scale),
  which opens the existing cache (its index, the key), and for scale the same import where there is no
  cache to open yet;
- the first call of ``add(1)`` right after ``import nbcache`` and the step's definition, as a script does;
- the same call after the child imports numpy first, as a notebook imports its libraries before its first step.

Goals: ``import nbcache`` <= 50 ms, and the first hit right after it <= 2 ms.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _timing import goal, header, show

ROUNDS = 9

MODULE = '''
import nbcache

@nbcache.step
def add(a, b=2):
    return a + b
'''

CHILD = '''
import sys, time
t0 = time.perf_counter()
import nbcache
t1 = time.perf_counter()
{between}
sys.path.insert(0, {folder!r})
from steps import add
t2 = time.perf_counter()
assert add(1) == 3
t3 = time.perf_counter()
assert nbcache.runs()[-1].cached, "the first call missed"
print(t1 - t0, t3 - t2)
'''


def _child(folder: Path, env: dict[str, str], between: str = "") -> tuple[float, float]:
    code = CHILD.format(folder=str(folder), between=between)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    t_import, t_first = map(float, out.stdout.split())
    return t_import, t_first


def _startup(env: dict[str, str]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    header("first_hit", f"import nbcache and a tiny step's first hit in a fresh process, best of {ROUNDS}")
    with tempfile.TemporaryDirectory(prefix="nbcache-bench-") as tmp:
        folder = Path(tmp)
        (folder / "steps.py").write_text(textwrap.dedent(MODULE))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["NBCACHE_DIR"] = str(folder / "cache")
        subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(folder)!r});"
                        " from steps import add; add(1)"], env=env, check=True)  # stored, byte-code written
        imports, scripted, notebook = [], [], []
        for _ in range(ROUNDS):
            t_import, t_first = _child(folder, env)
            imports.append(t_import)
            scripted.append(t_first)
            notebook.append(_child(folder, env, between="import numpy")[1])
        t_start = _startup(env)
        bare = _bare_imports({**env, "NBCACHE_DIR": str(folder / "none yet")})
    show("python -c pass (for scale)", t_start)
    show("import nbcache, no cache to open", bare)
    show("import nbcache, opening the cache", min(imports))
    show("first hit, right after the import", min(scripted))
    show("first hit, after import numpy", min(notebook))
    goal("import nbcache / 50 ms", min(imports) / 0.050, "<=", 1.0)
    goal("first hit / 2 ms", min(scripted) / 0.002, "<=", 1.0)


def _bare_imports(env: dict[str, str]) -> float:
    code = "import time; t0 = time.perf_counter(); import nbcache; print(time.perf_counter() - t0)"
    return min(float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                    check=True).stdout) for _ in range(ROUNDS))


if __name__ == "__main__":
    main()
