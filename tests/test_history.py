"""The last run of each step, read from the history without parsing all of it (what ``nbcache ls`` lists):
always the answer parsing all of it gives, whatever the history holds."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime, timedelta

import pytest

from nbcache.history import last_of_each, last_runs, read_last_runs
from nbcache.records import StepRun, parse_runs, read_history

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def run(step: str, at: int, **fields) -> StepRun:
    return StepRun(**{"step": step, "cached": False, "duration_s": 0.5, "saved_s": 0.0, "key": "k" * 32,
                      "code": "c", "inputs": {"n": "i" * 32}, "outputs": ("o" * 32,), "reason": "first run",
                      "started_at": T0 + timedelta(seconds=at), **fields})


def line(step: str, at: int, **fields) -> bytes:
    return run(step, at, **fields).to_json().encode()


def parsed_in_full(lines: list[bytes]) -> list[StepRun]:
    return last_of_each(parse_runs(lines)[0])


def steps_and_times(runs: list[StepRun]) -> list[tuple[str, int]]:
    return [(r.step, int((r.started_at - T0).total_seconds())) for r in runs]


def test_the_last_run_of_each_step_in_the_order_the_steps_first_ran():
    lines = [line("a", 0), line("b", 1), line("a", 2), line("c", 3), line("b", 4)]
    assert steps_and_times(last_runs(lines)) == [("a", 2), ("b", 4), ("c", 3)]
    assert last_runs(lines) == parsed_in_full(lines)


def test_a_damaged_first_or_last_line_gives_way_to_the_next_run_in():
    lines = [line("c", 0)[:30], line("a", 1), line("b", 2), line("c", 3), line("a", 4)[:-5], b"",
             line("d", 5)[:-1]]  # c's first run cut short, a's last one too; d has no readable run
    assert steps_and_times(last_runs(lines)) == [("a", 1), ("b", 2), ("c", 3)]
    assert last_runs(lines) == parsed_in_full(lines)


def rewritten(raw: bytes, transform) -> bytes:
    return transform(json.loads(raw)).encode()


OTHER_FORMS = [
    rewritten(line("spaced", 10), json.dumps),  # default separators: {"step": "spaced", ...
    rewritten(line("reordered", 11), lambda r: json.dumps(dict(reversed(list(r.items()))))),
    line('quote " and \\ slash', 12), line("labels ← X", 13), line("naïve", 14), line("tab\there", 15),
    rewritten(line("first", 16), lambda r: json.dumps(r, separators=(",", ":"))[:-1] + ',"step":"second"}'),
    rewritten(line("first", 17), lambda r: json.dumps(r, separators=(",", ":"))[:-1] + ',"\\u0073tep":"third"}'),
    line("x", 18, reason='the "step" key', inputs={"step": "step"}), line("step", 19),
    b'{"step":"unterminated', b'{"step":"no close}', b"null", b"[1]", b"[" * 5000 + b"]" * 5000, b"  ", b"\r",
    line("surrogate", 20).replace(b"surrogate", b"\xed\xa0\x80"), line("bad utf8", 21).replace(b"bad", b"\xff"),
]


def test_a_name_spelled_two_ways_is_one_step():
    lines = [line("объект", 0), line("b", 1), line("объект", 2).replace(b"\\u044a", b"\\u044A")]
    assert b"\\u044A" in lines[2] and steps_and_times(last_runs(lines)) == [("объект", 2), ("b", 1)]


def test_lines_in_other_forms_are_parsed_in_full():
    lines = [line("a", 0), *OTHER_FORMS, line("a", 30)]
    assert last_runs(lines) == parsed_in_full(lines)
    names = [r.step for r in last_runs(lines)]
    assert "second" in names and "third" in names and "first" not in names  # (json: the last key counts)
    assert 'quote " and \\ slash' in names and "labels ← X" in names and "step" in names


def damage(rng: random.Random, raw: bytes) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return raw[:rng.randrange(len(raw))]  # cut short
    if kind == 1:
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.randrange(256)]) + raw[i + 1:]  # one byte changed
    if kind in (2, 6):  # a second name, written out or spelled with escapes
        return raw[:-1] + (b',"step":"', b',"\\u0073tep":"')[kind == 6] + rng.choice([b"a", b"b", b"z"]) + b'"}'
    if kind == 3:
        return raw.replace(b'"cached":false', b'"cached":"no"')  # a field of the wrong type
    if kind == 4:
        return rng.choice([raw.replace(b'{"step":', b'{"step": ', 1),  # another form, still a run
                           raw.replace(b"\\u044a", b"\\u044A")])  # the same name, spelled otherwise
    return raw.replace(b'"step":"', b'"\\u0073tep":"', 1)  # its name spelled with escapes


@pytest.mark.parametrize("seed", range(40))
def test_any_damage_reads_as_parsing_it_all_would(seed):
    rng = random.Random(seed)
    names = ["a", "b", "labels ← X", "объект", 'q"uote', 'q"other', "naïve", "tab\there"]
    lines = [line(rng.choice(names), i, cached=rng.random() < 0.5) for i in range(rng.randrange(1, 120))]
    for i in rng.sample(range(len(lines)), k=len(lines) // 3):
        lines[i] = damage(rng, lines[i])
    assert last_runs(lines) == parsed_in_full(lines)


def test_read_last_runs_of_a_file(tmp_path):
    path = tmp_path / "runs.jsonl"
    assert read_last_runs(path) == []  # no history yet
    path.write_bytes(b"\n".join([line("a", 0), line("b", 1), b'{"step":"a","cut', line("a", 2)]) + b"\n")
    assert read_last_runs(path) == last_of_each(read_history(path)[0])
    assert steps_and_times(read_last_runs(path)) == [("a", 2), ("b", 1)]
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError, match="not a regular file"):
        read_last_runs(tmp_path / "fifo")
