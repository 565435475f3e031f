"""The nbcache command: the demo runs the pipeline twice and the second run comes from the cache."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbcache.cli import main


def test_demo_second_run_is_served_from_the_cache(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nbcache.cli", "demo", "--dir", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name in ("importer", "normalizer", "trainer", "evaluator"):
        assert f"run 1  {name}" in out and f"run 2  {name}" in out
    run2 = [line for line in out.splitlines() if line.startswith("run 2  ") and "accuracy" not in line]
    assert len(run2) == 4 and all(line.endswith("cache hit") for line in run2)
    assert "Same accuracy from the cache: yes" in out
    assert (tmp_path / "c" / "runs.jsonl").exists()


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
