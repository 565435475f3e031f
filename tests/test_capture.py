"""capture.py without IPython: a cell's output recorded in order as it goes through, and replayed in order."""

from __future__ import annotations

import sys

import pytest

from nbcache.capture import WIDGET_VIEW, Recorder, replay, show_result_as_recorded


class Hook:
    """A displayhook as IPython's: computes the format data, prints the prompt, writes the data."""

    def __init__(self, log: list) -> None:
        self.log = log

    def compute_format_data(self, result):
        return {"text/plain": repr(result)}, {}

    def write_output_prompt(self) -> None:
        print("Out[1]: ", end="")  # a terminal prints the prompt to stdout: not the cell's output

    def write_format_data(self, format_dict, md_dict=None) -> None:
        self.log.append(("result", format_dict["text/plain"]))

    def __call__(self, result) -> None:
        data, metadata = self.compute_format_data(result)
        self.write_output_prompt()
        self.write_format_data(data, metadata)


class Publisher:
    def __init__(self, log: list) -> None:
        self.log = log

    def publish(self, data, metadata=None, **kwargs) -> None:
        self.log.append(("display", data, kwargs))

    def clear_output(self, wait=False) -> None:
        self.log.append(("clear", wait))


class Shell:
    def __init__(self) -> None:
        self.log: list = []
        self.displayhook = Hook(self.log)
        self.display_pub = Publisher(self.log)


class Stream:
    def __init__(self, name: str, log: list) -> None:
        self.name, self.log = name, log

    def write(self, text: str) -> int:
        self.log.append((self.name, text))
        return len(text)

    def flush(self) -> None:
        pass


@pytest.fixture
def shell(monkeypatch):
    """A shell whose outputs, stdout and stderr included, go to one log, in order."""
    shell = Shell()

    def streams_to_log() -> None:  # at the test's start: pytest sets its own capture between setup and call
        monkeypatch.setattr(sys, "stdout", Stream("stdout", shell.log))
        monkeypatch.setattr(sys, "stderr", Stream("stderr", shell.log))

    shell.streams_to_log = streams_to_log
    return shell


def a_cell(shell: Shell) -> None:
    """What a cell might do: print, warn, show a figure, clear, show its result, show another figure."""
    print("loading", end="")
    print("...")
    print("careful", file=sys.stderr)
    shell.display_pub.publish({"image/png": "PNG1", "text/plain": "<Figure>"}, {"width": 3})
    shell.display_pub.clear_output(wait=True)
    shell.displayhook(42)
    shell.display_pub.publish({"text/plain": "later"}, transient={"display_id": "d"}, update=True)


def test_recording_keeps_the_order_and_lets_everything_through(shell):
    shell.streams_to_log()
    with Recorder(shell) as recorder:
        a_cell(shell)
    assert recorder.recorded() == [
        ("stdout", "loading...\n"),  # consecutive writes are one event
        ("stderr", "careful\n"),
        ("display", {"image/png": "PNG1", "text/plain": "<Figure>"}, {"width": 3}, None, False),
        ("clear", True),
        ("result",),  # where the result came, not the prompt printed with it
        ("display", {"text/plain": "later"}, {}, {"display_id": "d"}, True),
    ]
    assert recorder.result_display == ({"text/plain": "42"}, {})
    went_through = [k for i, k in enumerate(e[0] for e in shell.log) if i == 0 or shell.log[i - 1][0] != k]
    assert went_through == ["stdout", "stderr", "display", "clear", "stdout", "result", "display"]
    assert "".join(e[1] for e in shell.log if e[0] == "stdout") == "loading...\nOut[1]: "


def test_replay_gives_the_output_back_in_the_order_it_came(shell):
    shell.streams_to_log()
    with Recorder(shell) as recorder:
        a_cell(shell)
    shell.log.clear()
    replay(shell, recorder.recorded(), lambda: shell.log.append(("result", "shown again")))
    assert shell.log == [
        ("stdout", "loading...\n"),
        ("stderr", "careful\n"),
        ("display", {"image/png": "PNG1", "text/plain": "<Figure>"}, {"update": False}),
        ("clear", True),
        ("result", "shown again"),
        ("display", {"text/plain": "later"}, {"transient": {"display_id": "d"}, "update": True}),
    ]


def test_a_quiet_result_leaves_no_place_for_itself(shell):
    shell.streams_to_log()
    with Recorder(shell) as recorder:
        print("x")
    assert recorder.recorded() == [("stdout", "x\n")] and recorder.result_display is None


def test_everything_patched_is_put_back_and_recorders_nest(shell):
    shell.streams_to_log()
    stdout = sys.stdout
    with Recorder(shell) as outer:
        print("a")
        with Recorder(shell) as inner:
            shell.display_pub.publish({"text/plain": "b"})
        print("c")
    assert inner.recorded() == [("display", {"text/plain": "b"}, {}, None, False)]
    assert outer.recorded() == [("stdout", "a\n"), ("display", {"text/plain": "b"}, {}, None, False),
                                ("stdout", "c\n")]
    assert sys.stdout is stdout
    assert not {"publish", "clear_output"} & set(vars(shell.display_pub))  # the class's methods again
    assert not {"write_format_data", "write_output_prompt"} & set(vars(shell.displayhook))


def test_a_widget_view_is_not_replayed_when_the_display_has_another_representation(shell):
    with Recorder(shell) as recorder:
        shell.display_pub.publish({WIDGET_VIEW: {"model_id": "m"}, "text/plain": "IntSlider(value=1)"})
        shell.display_pub.publish({WIDGET_VIEW: {"model_id": "n"}})
    assert recorder.shows_a_widget()
    shell.log.clear()
    replay(shell, recorder.recorded(), lambda: None)
    assert [e[1] for e in shell.log] == [{"text/plain": "IntSlider(value=1)"}, {WIDGET_VIEW: {"model_id": "n"}}]


def test_no_widget_no_widget(shell):
    shell.streams_to_log()
    with Recorder(shell) as recorder:
        a_cell(shell)
    assert not recorder.shows_a_widget()


def test_the_result_is_shown_as_it_was_recorded_not_formatted_again(shell):
    value = [1, 2]
    show_result_as_recorded(shell, value, ({"text/plain": "array([1, 2])"}, {}))
    assert shell.log[-1] == ("result", "array([1, 2])")
    assert "compute_format_data" not in vars(shell.displayhook)  # its own method again
    show_result_as_recorded(shell, value, None)  # recorded by an nbcache that kept no display: formatted
    assert shell.log[-1] == ("result", "[1, 2]")
    shell.log.clear()
    show_result_as_recorded(shell, None, None)  # a cell without a result shows nothing
    assert shell.log == []
