"""Run every benchmark in sequence, each in its own process, and sum up the goals met and missed.

Exits non-zero only if a benchmark crashed; a missed goal is reported, never an error.
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["hit_latency.py", "first_hit.py", "hash_array.py", "hash_dataframe.py", "store_load.py",
              "cell_hit.py", "lineage_render.py", "cli_ls.py", "peers.py", "remote.py"]


def main() -> int:
    passed, missed, crashed = 0, [], []
    # nbcache's byte-code compiled, and read, as an installed package's is (a first import in a fresh process
    # would otherwise count compiling a module changed since, or never written with PYTHONDONTWRITEBYTECODE)
    compileall.compile_dir(HERE.parent / "nbcache", quiet=1)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for name in BENCHMARKS:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / name)], capture_output=True, text=True, env=env)
        print(proc.stdout, end="")
        print(proc.stderr, end="", file=sys.stderr)
        print(f"   ({time.perf_counter() - t0:.1f} s)\n")
        if proc.returncode != 0:
            crashed.append(name)
        for line in proc.stdout.splitlines():
            if line.endswith(" PASS"):
                passed += 1
            elif line.endswith(" MISS"):
                missed.append(f"{name}: {' '.join(line.split())}")
    print(f"== {passed} goals met, {len(missed)} missed, {len(crashed)} benchmarks crashed")
    for item in missed:
        print(f"   MISS {item}")
    for name in crashed:
        print(f"   CRASH {name}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
