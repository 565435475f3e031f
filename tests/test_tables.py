"""tables.py: the tables and messages the notebook's magics and the nbcache command share."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from nbcache.records import StepRun

from nbcache.store import StoreStats
from nbcache.store import Collected
from nbcache.tables import (KERNEL_RUNS_HEADER, STEPS_HEADER, collected_text, html_table, info_text,
                            kernel_runs_rows, printable, removed_text, step_runs_rows, step_summaries, steps_rows,
                            table_bundle, text_table, when, why_text)

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def a_run(step: str, *, cached: bool = False, status: str = "ok", kind: str = "function", at: int = 0,
          reason: str = "first run") -> StepRun:
    return StepRun(step=step, cached=cached, duration_s=0.0123, saved_s=2.5 if cached else 0.0, key="k" * 32,
                   code="c", inputs={}, outputs=(), reason=reason, started_at=T0 + timedelta(seconds=at),
                   status=status, kind=kind)


def test_text_table_aligns_columns_without_trailing_blanks():
    assert text_table(["step", "state"], [["load", "hit"], ["a much longer name", ""]]) == (
        "step                state\n"
        "load                hit\n"
        "a much longer name")


def test_html_table_escapes_what_a_cell_holds():
    table = html_table(["step"], [["<b>x</b> & y"]])
    assert "&lt;b&gt;x&lt;/b&gt; &amp; y" in table and "<b>x</b>" not in table
    assert table.startswith("<table><tr><th>step</th></tr>")


def test_the_bundle_carries_text_and_html():
    bundle = table_bundle(["a"], [[1]])
    assert bundle == {"text/plain": "a\n1", "text/html": html_table(["a"], [[1]])}


def test_kernel_runs_say_what_a_hit_saved_and_why_each_ran():
    rows = kernel_runs_rows([a_run("load"), a_run("load", cached=True, reason="cache hit"),
                             a_run("fit", status="failed", reason="input X changed")])
    assert rows == [["load", "ran", "12.3 ms", "", "first run"],
                    ["load", "hit", "12.3 ms", "2.50 s", "cache hit"],
                    ["fit", "failed", "12.3 ms", "", "input X changed"]]
    assert len(KERNEL_RUNS_HEADER) == len(rows[0])


def test_step_summaries_take_kind_and_last_run_from_the_latest_run_and_count_stored_results():
    """A step with results and no run here (pulled from a team cache) has the kind of its results."""
    runs = [a_run("load"), a_run("total", at=1), a_run("load", kind="cell", cached=True, at=2)]
    summaries = step_summaries(runs, [("load", 100, "function"), ("load", 24, "cell"), ("pulled", 2048, "cell")])
    assert [(s.step, s.kind, s.entries, s.bytes, s.last) for s in summaries] == [
        ("load", "cell", 2, 124, runs[2]), ("total", "function", 0, 0, runs[1]), ("pulled", "cell", 1, 2048, None)]
    rows = steps_rows(summaries)
    assert rows[0] == ["load", "cell", 2, "124 B", when(T0 + timedelta(seconds=2)), "hit"]
    assert rows[2] == ["pulled", "cell", 1, "2.0 KB", "", ""]
    assert len(STEPS_HEADER) == len(rows[0])


def test_step_runs_rows():
    assert step_runs_rows([a_run("load")]) == [[when(T0), "ran", "12.3 ms", "k" * 32, "first run"]]


def test_when_is_local_time_to_the_second_from_a_datetime_or_its_iso_text():
    local = T0.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    assert when(T0) == when(T0.isoformat()) == local


def test_messages():
    stats = StoreStats(directory="/c", entries=3, unreadable_entries=0, size_bytes=2048)
    assert info_text(stats) == "cache directory: /c\nentries: 3\nsize: 2.0 KB"
    assert info_text(stats, runs=5).endswith("\nrecorded runs: 5")
    damaged = info_text(stats._replace(unreadable_entries=2), runs=5)
    assert damaged.endswith("\nrecorded runs: 5\nunreadable entries: 2 (written by an nbcache with another"
                            " cache format, or damaged; `nbcache clear` removes them)")
    assert removed_text(1) == "removed 1 cached result"
    assert removed_text(2, "load") == "removed 2 cached results of step 'load'"


def test_why_text_of_a_step_that_never_ran_is_none():
    assert why_text([a_run("load")], "other") is None
    assert why_text([a_run("load")], "load").startswith("load ran at ")


def test_printable_escapes_what_would_act_on_a_terminal():
    hostile = "load\x1b[31mRED\x1b[0m\rX\x1b[2J\x07\x08\x00\x7f\x85\x9b\u202egnp.exe\u2028\ud800\tend"
    shown = printable(hostile)
    assert shown == ("load\\x1b[31mRED\\x1b[0m\\rX\\x1b[2J\\x07\\x08\\x00\\x7f\\x85\\x9b\\u202egnp.exe\\u2028"
                     "\\ud800\\tend")
    assert shown.isprintable() and printable(shown) == shown  # (escaping twice changes nothing)
    assert printable("a\nb\x1b", newlines=True) == "a\nb\\x1b" and printable("a\nb") == "a\\nb"
    text = "naïve 数据 \U0001F600 \\ back\\slash"
    assert printable(text) is text  # what is printable stays as it is


def test_text_table_escapes_its_cells_and_aligns_what_it_shows():
    table = text_table(["step", "state"], [["a\x1b[2Jb", "hit"], ["two\nlines", "ran"]])
    assert table == ("step        state\n"
                     "a\\x1b[2Jb   hit\n"
                     "two\\nlines  ran")
    assert "\x1b" not in table and table_bundle(["s"], [["\x1b"]])["text/plain"] == "s\n\\x1b"


def test_sizes_show_in_the_units_a_size_limit_is_given_in():
    """``500MB`` is 500,000,000 bytes where a size limit is read: a size shows in the same decimal units (a
    limit of "20GB" once showed as 18.6 GB, and 24,000,000 bytes as 22.9 MB)."""
    from nbcache.eviction import parse_size
    from nbcache.records import format_bytes

    assert [format_bytes(parse_size(text)) for text in ("500MB", "20GB", "1.5GiB", "999999", "1000")] == [
        "500.0 MB", "20.0 GB", "1.6 GB", "1.0 MB", "1.0 KB"]
    assert info_text(StoreStats(directory="/c", entries=1, unreadable_entries=0, size_bytes=24_000_000),
                     size_limit=parse_size("20GB")).startswith(
        "cache directory: /c\nentries: 1\nsize: 24.0 MB\nsize limit: 20.0 GB (20000000000 bytes")


def test_info_counts_unreadable_history_lines_and_gc_says_what_it_freed():
    stats = StoreStats(directory="/c", entries=3, unreadable_entries=0, size_bytes=2048)
    assert "unreadable history" not in info_text(stats, runs=5)
    assert info_text(stats, runs=5, unreadable_runs=2).endswith(
        "\nrecorded runs: 5\nunreadable history lines: 2 (cut short by a process that was killed, or damaged;"
        " they are skipped)")
    assert collected_text(Collected(files=3, bytes=3_000_000)) == "removed 3 files left behind (3.0 MB)"
    assert collected_text(Collected()) == "removed 0 files left behind (0 B)"
