"""The nbcache command: the demo, and looking into a cache directory from a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nbcache
from nbcache.cli import main

from .conftest import dot_missing, require, two_steps


def test_demo_second_run_takes_the_first_two_steps_from_the_cache(tmp_path):
    require(dot_missing())
    proc = subprocess.run([sys.executable, "-m", "nbcache.cli", "demo", "--dir", str(tmp_path / "c"),
                           "-o", str(tmp_path / "lineage.svg")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    reasons = {line.split()[2]: " ".join(line.split()[5:]) for line in lines
               if line.startswith("run 2  ") and "accuracy" not in line}
    assert reasons == {"importer": "cache hit", "normalizer": "cache hit",
                       "trainer": "argument epochs changed", "evaluator": "argument weights changed"}
    table = [line.split() for line in lines if line.split() and line.split()[0] in reasons and "run" not in line]
    assert [row[0] for row in table] == ["importer", "normalizer", "trainer", "evaluator"]
    assert [row[4:] for row in table] == [["(from", "the", "cache)"]] * 2 + [[], []]
    assert [row[3] for row in table[2:]] == ["re-ran", "re-ran"]
    svg = (tmp_path / "lineage.svg").read_text()
    assert svg.count("nbcache_hit") == 2 and svg.count("nbcache_rerun") == 2

    # again on the kept directory: everything comes from the cache, and the demo says why
    again = subprocess.run([sys.executable, "-m", "nbcache.cli", "demo", "--dir", str(tmp_path / "c"),
                            "-o", str(tmp_path / "lineage.svg")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "run 1 came from the cache too" in again.stdout


def test_the_demo_is_an_example_outside_the_package():
    import importlib.util

    import nbcache_demo

    assert importlib.util.find_spec("nbcache.demo") is None  # no numpy/scipy/sklearn code in the library
    assert Path(nbcache_demo.__file__).name == "nbcache_demo.py"
    assert Path(nbcache_demo.__file__).parent != Path(nbcache.__file__).parent


def test_demo_without_the_example_says_how_to_get_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nbcache_demo", None)  # as if it were not installed
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "examples/nbcache_demo.py" in err and "pip install -e '.[demo]'" in err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["nonsense"])
    assert info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


@pytest.fixture
def filled(cache_dir):
    """A cache directory with two steps, one of them run twice with a changed argument."""
    load, total = two_steps()
    total(load(3))
    total(load(4))
    return str(cache_dir)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ls_and_info(filled, capsys):
    code, out, _ = cli(capsys, "ls", "--dir", filled)
    assert code == 0 and out.splitlines()[0].split()[:3] == ["step", "kind", "entries"]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert rows["load"][1:3] == ["function", "2"] and rows["total"][2] == "2"
    code, out, _ = cli(capsys, "ls", "--dir", filled, "--json")
    listed = {row["step"]: row for row in json.loads(out)}
    assert listed["load"]["entries"] == 2 and listed["load"]["last"]["reason"] == "argument n changed"
    code, out, _ = cli(capsys, "info", "--dir", filled, "--json")
    assert json.loads(out)["entries"] == 4 and json.loads(out)["runs"] == 4


def test_ls_gives_the_kind_of_the_latest_run(filled, capsys):
    import dataclasses

    nbcache.cache.default_cache().store().append_run(dataclasses.replace(nbcache.runs("load")[-1], kind="cell"))  # a cell took the name
    _, out, _ = cli(capsys, "ls", "--dir", filled)
    assert {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]} == {"load": "cell", "total": "function"}


def test_show_and_why(filled, capsys):
    code, out, _ = cli(capsys, "show", "total", "--dir", filled, "--json")
    runs = json.loads(out)
    assert code == 0 and [r["reason"] for r in runs] == ["first run", "argument values changed"]
    code, out, _ = cli(capsys, "why", "load", "--dir", filled)
    assert code == 0 and "since its previous run: argument n changed" in out


def test_why_after_a_hit_still_says_why_the_step_last_ran(cache_dir, capsys):
    load, total = two_steps()
    load(3)
    load(4)
    load(4)  # Restart & Run All: the latest run is a hit
    code, out, _ = cli(capsys, "why", "load", "--dir", str(cache_dir))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("load came from the cache at ") and lines[0].endswith(": cache hit")
    assert lines[1] == "  since its previous run: its code and inputs did not change"
    assert lines[2].startswith("its result was computed at ") and lines[2].endswith(": argument n changed")
    assert lines[3] == "  since its previous run: argument n changed"

    @nbcache.step
    def parse(text):
        return int(text)

    parse("1")
    with pytest.raises(ValueError):
        parse("x")
    parse("1")  # a hit: its result is the first run's, not the failed run's since
    _, out, _ = cli(capsys, "why", "parse", "--dir", str(cache_dir))
    assert out.splitlines()[2].startswith("its result was computed at ") and out.splitlines()[2].endswith(
        ": first run (its first recorded run)")


def test_graph_writes_the_lineage(filled, capsys, tmp_path):
    require(dot_missing())
    target = tmp_path / "lineage.svg"
    code, out, _ = cli(capsys, "graph", "-o", str(target), "--dir", filled)
    assert code == 0 and "2 steps, 1 edges" in out
    assert "nbcache_step" in target.read_text()


def test_clear_one_step_and_by_age(filled, capsys):
    code, out, _ = cli(capsys, "clear", "--older-than", "1h", "--dir", filled)
    assert out.strip() == "removed 0 cached results"  # everything is younger than an hour
    time.sleep(0.05)
    code, out, _ = cli(capsys, "clear", "load", "--older-than", "0.01s", "--dir", filled, "--json")
    assert json.loads(out) == {"removed": 2}
    code, out, _ = cli(capsys, "clear", "--dir", filled)
    assert out.strip() == "removed 2 cached results"
    assert len(nbcache.runs()) == 4  # the history stays


def test_errors_name_the_problem_and_exit_non_zero(filled, capsys, tmp_path):
    code, _, err = cli(capsys, "show", "nope", "--dir", filled)
    assert code == 1 and "no step named 'nope'" in err and "known steps: load, total" in err
    code, _, err = cli(capsys, "ls", "--dir", str(tmp_path / "missing"))
    assert code == 4 and "no cache at" in err
    assert not (tmp_path / "missing").exists()  # looking never creates a cache
    code, _, err = cli(capsys, "graph", "-o", str(tmp_path / "lineage.gif"), "--dir", filled)
    assert code == 3 and ".svg, .png or .pdf" in err
    if dot_missing() is None:
        code, _, err = cli(capsys, "graph", "-o", str(tmp_path / "no" / "lineage.svg"), "--dir", filled)
        assert code == 3 and err.startswith(f"nbcache: cannot write {tmp_path / 'no' / 'lineage.svg'}: ")
    with pytest.raises(SystemExit):
        main(["clear", "--older-than", "soon", "--dir", filled])
    assert "expected a duration such as 7d" in capsys.readouterr().err


def test_the_installed_command(filled):
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nbcache"), "info", "--dir", filled],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "entries: 4" in proc.stdout


def test_a_reader_that_leaves_early_gets_no_traceback(filled):
    # `nbcache ls | head`: the pipe's reading end is closed before nbcache writes a byte
    proc = subprocess.Popen([sys.executable, "-m", "nbcache.cli", "ls", "--json", "--dir", filled],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_a_damaged_index_is_one_line_and_exit_3(filled, capsys, tmp_path):
    import shutil

    with open(os.path.join(filled, "runs.jsonl"), "a") as f:
        f.write("\nnull\n[1]\n")  # valid JSON, no record: skipped like a torn line
    code, out, _ = cli(capsys, "ls", "--dir", filled)
    assert code == 0 and out.splitlines()[1].split()[0] in ("load", "total")
    damaged = tmp_path / "damaged"
    shutil.copytree(filled, damaged)
    (damaged / "store" / "cache.db").write_bytes(b"this is not a database" * 100)
    for log in ("cache.db-wal", "cache.db-shm"):  # (SQLite reads its pages from a log not yet folded in)
        (damaged / "store" / log).unlink(missing_ok=True)
    code, _, err = cli(capsys, "ls", "--dir", str(damaged))
    assert code == 3 and err.startswith(f"nbcache: nbcache's index in {damaged}") and "damaged" in err
    assert "Traceback" not in err


def test_demo_checks_where_it_will_write_before_running(tmp_path, capsys):
    for output, problem in ((tmp_path / "lineage.png", "it must end in .svg"),
                            (tmp_path / "missing" / "lineage.svg", "its folder does not exist")):
        assert main(["demo", "--dir", str(tmp_path / "c"), "-o", str(output)]) == 3
        assert capsys.readouterr().err.strip().endswith(problem)
    assert not (tmp_path / "c").exists()  # nothing ran


# -- a history nbcache did not write: skipped, counted, and never printed raw (issue 11) ----------------------

def record(step: str, **fields) -> dict:
    """A history record as nbcache writes one, by hand."""
    return {"step": step, "cached": False, "duration_s": 0.5, "saved_s": 0.0, "key": "k" * 32, "code": "c",
            "inputs": {"n": "i" * 32}, "outputs": ["o" * 32], "reason": "first run",
            "started_at": "2024-05-01T12:00:00+00:00", "status": "ok", "kind": "function", **fields}


WRONG_TYPES = [record(["a"]), record("load", inputs=5), record("load", sizes={"x": "big"}),
               record("load", started_at=5), record("load", sizes={"x": 10**400}), record("load\ud800"),
               record("load", changes=[[5]]), record("load", cached="yes")]


def write_history(directory: Path, records: list, *extra: str) -> None:
    lines = [json.dumps(r) for r in records] + list(extra)
    (directory / "store").mkdir(parents=True, exist_ok=True)
    (directory / "runs.jsonl").write_text("\n".join(lines) + "\n")


def test_records_of_the_wrong_type_are_skipped_and_counted_by_every_command(tmp_path, capsys):
    good = [record("load"), record("total", inputs={"values": "o" * 32}, started_at="2024-05-01T12:01:00+00:00")]
    write_history(tmp_path, [good[0], *WRONG_TYPES, good[1]], "[" * 100_000 + "]" * 100_000, "{cut short")
    skipped = len(WRONG_TYPES) + 2
    code, out, err = cli(capsys, "ls", "--dir", str(tmp_path))
    assert code == 0 and [line.split()[0] for line in out.splitlines()[1:]] == ["load", "total"], err
    code, out, err = cli(capsys, "show", "load", "--dir", str(tmp_path))
    assert code == 0 and len(out.splitlines()) == 2, err
    code, out, err = cli(capsys, "why", "total", "--dir", str(tmp_path))
    assert code == 0 and out.startswith("total ran at "), err
    code, out, err = cli(capsys, "info", "--dir", str(tmp_path))
    assert code == 0 and "recorded runs: 2" in out and f"unreadable history lines: {skipped} (" in out, err
    code, out, err = cli(capsys, "info", "--dir", str(tmp_path), "--json")
    assert code == 0 and json.loads(out)["unreadable_history_lines"] == skipped and json.loads(out)["runs"] == 2
    if dot_missing() is None:
        code, out, err = cli(capsys, "graph", "-o", str(tmp_path / "g.svg"), "--dir", str(tmp_path))
        assert code == 0 and "2 steps, 1 edges" in out, err
    assert [r.step for r in nbcache.Cache(tmp_path).runs()] == ["load", "total"]  # (what runs() reads, too)


def test_ls_lists_the_last_run_of_each_step_that_reads(tmp_path, capsys):
    from nbcache.records import StepRun

    def line(step: str, minute: int, **fields) -> str:
        return StepRun.from_json(json.dumps(record(step, started_at=f"2024-05-01T12:0{minute}:00+00:00",
                                                   **fields))).to_json()  # (as nbcache writes it)

    write_history(tmp_path, [], line("total", 0)[:25], line("load", 1), line("total", 2),
                  line("load", 3, cached=True, reason="cache hit"), line("total", 4)[:-9])  # two cut short
    code, out, err = cli(capsys, "ls", "--dir", str(tmp_path), "--json")
    listed = json.loads(out)
    assert code == 0 and [s["step"] for s in listed] == ["load", "total"], err
    assert listed[0]["last"]["reason"] == "cache hit" and listed[1]["last"]["started_at"].startswith("2024-05-01T12:02")


def test_a_history_that_is_not_a_file_is_an_error_not_a_hang(tmp_path, capsys):
    (tmp_path / "store").mkdir()
    os.mkfifo(tmp_path / "runs.jsonl")  # reading it would wait for a writer forever
    code, _, err = cli(capsys, "ls", "--dir", str(tmp_path))
    assert code == 3 and "is not a regular file" in err


HOSTILE = "evil\x1b[2J\x1b]0;owned\x07\rname\u202e"


def test_control_characters_in_what_the_cache_holds_never_reach_the_terminal(tmp_path, capsys):
    write_history(tmp_path, [record(HOSTILE, reason="first run\x1b[1A\x1b[2K"),
                             record("fit", status="failed", error="ValueError: \x1b[31mred\x1b[0m")])
    outputs = []
    for args in (["ls"], ["show", HOSTILE], ["why", HOSTILE], ["why", "fit"], ["show", "nope"], ["info"]):
        code, out, err = cli(capsys, *args, "--dir", str(tmp_path))
        outputs.append(out + err)
    shown = "\n".join(outputs)
    assert not any(c in shown for c in "\x1b\x07\r\u202e")
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\rname\\u202e" in outputs[0]  # each control as its escape
    assert "\\x1b[1A\\x1b[2K" in outputs[1] and "known steps: evil\\x1b[2J" in outputs[4]
    for args in (["ls"], ["show", HOSTILE], ["why", HOSTILE]):  # --json: every control a \u escape, ASCII only
        code, out, _ = cli(capsys, *args, "--dir", str(tmp_path), "--json")
        assert code == 0 and out.isascii() and "\\u001b[2J" in out
    assert json.loads(cli(capsys, "ls", "--dir", str(tmp_path), "--json")[1])[0]["step"] == HOSTILE


def test_a_directory_name_with_controls_is_escaped_in_messages(tmp_path, capsys):
    missing = tmp_path / "no\x1b[2Jcache"
    code, _, err = cli(capsys, "ls", "--dir", str(missing))
    assert code == 4 and "\x1b" not in err and "no\\x1b[2Jcache" in err


# -- gc ---------------------------------------------------------------------------------------------------------

def test_gc_removes_what_writers_left_and_says_what_it_freed(filled, capsys, monkeypatch):
    code, out, err = cli(capsys, "gc", "--dir", filled)
    assert code == 0 and out.startswith("removed ") and "file" in out, err
    code, out, _ = cli(capsys, "gc", "--dir", filled, "--json")
    assert code == 0 and set(json.loads(out)) == {"removed_files", "freed_bytes"}
    called = []

    def gc(self):
        called.append(self.directory)
        return nbcache.store.Collected(files=2, bytes=4000)

    monkeypatch.setattr(nbcache.diskstore.DiskStore, "gc", gc)
    assert cli(capsys, "gc", "--dir", filled)[1] == "removed 2 files left behind (4.0 KB)\n"
    assert json.loads(cli(capsys, "gc", "--dir", filled, "--json")[1]) == {"removed_files": 2, "freed_bytes": 4000}
    assert len(called) == 2
    assert cli(capsys, "ls", "--dir", filled)[0] == 0  # nothing a step needs went


def test_info_makes_no_key_and_counts_every_value_unsigned_for_a_user_without_one(filled, capsys, monkeypatch,
                                                                                    tmp_path):
    monkeypatch.delenv("NBCACHE_KEY_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # a user with no key of their own yet
    code, out, _ = cli(capsys, "info", "--dir", filled, "--json")
    assert code == 0 and json.loads(out)["unsigned_values"] == 4  # a step would make a key, and refuse them
    assert not (tmp_path / "config").exists()


def test_info_counts_values_that_are_not_signed_with_your_key(filled, capsys, monkeypatch):
    code, out, _ = cli(capsys, "info", "--dir", filled, "--json")
    assert json.loads(out)["unsigned_values"] == 0
    monkeypatch.setenv("NBCACHE_KEY", "ab" * 32)  # another user, whose key is not the one that signed them
    code, out, _ = cli(capsys, "info", "--dir", filled, "--json")
    assert code == 0 and json.loads(out)["unsigned_values"] == 4
    code, out, _ = cli(capsys, "info", "--dir", filled)
    assert "values not signed with your key: 4 (written by another user, or altered; never loaded" in out
