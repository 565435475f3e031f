"""Recording a cell's output as it runs, and replaying it in the same order on a hit.

It works on the shell it is given (its ``displayhook`` and ``display_pub``, and ``sys.stdout``/``stderr``)
and never imports IPython. An output is one of these events, in the order the cell made them:

- ``("stdout", text)`` and ``("stderr", text)``: what was printed, consecutive writes joined;
- ``("display", data, metadata, transient, update)``: a ``display()`` (a figure, a table, HTML);
- ``("clear", wait)``: a ``clear_output()``;
- ``("result",)``: where the displayhook showed the cell's last expression (its value is stored apart).
"""

from __future__ import annotations

import sys
from typing import Any, Callable

__all__ = ["WIDGET_VIEW", "Recorder", "clear_output", "publish", "replay", "show_result_as_recorded"]

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # a live widget cannot outlive its kernel

_ABSENT = object()


class _Tee:
    """A stream that writes through to the real one and records what went by, for every recorder running
    now: a ``%%step`` cell that keeps ``sys.stdout`` (a logging handler, ``print(file=...)`` later) keeps
    this, whose writes in a later cell belong to that cell's recorder, and in a plain cell to none. It holds
    nothing but the stream, so a variable that keeps it holds no cell's state."""

    def __init__(self, stream: Any, name: str) -> None:
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        for recorder in _RUNNING:
            if not recorder.paused:
                recorder.note(self._name, text)
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


_RUNNING: list[Recorder] = []  # the recorders running now, outermost first (sys.stdout is the process's)


def _tee(stream: Any, name: str) -> _Tee:
    """A tee of ``stream`` (``stream`` itself if it is one: recorders that nest record from one tee)."""
    return stream if isinstance(stream, _Tee) else _Tee(stream, name)


class Recorder:
    """Records stdout, stderr, display output and clearing, in order, while letting it all through.

    The displayhook shows the last expression's value (a terminal prints "Out[n]: ..." to stdout); that
    value is stored and shown again as the result, so its display is not recorded as output. Whatever it
    replaces is put back on exit exactly as it was, so recorders nest.
    """

    _HOOK_METHODS = ("write_output_prompt",)

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.events: list[list] = []
        self.paused = False
        self.result_display: tuple[dict, dict] | None = None  # the result as it was shown: every mime type
        # every value the displayhook showed, and how, in order: with ``ast_node_interactivity = "all"``, each
        # expression statement's (the last one is the result)
        self.shown: list[tuple[Any, tuple[dict, dict]]] = []
        self._value: Any = None
        self._saved: list[tuple[Any, str, Any]] = []

    def _pausing(self, method: Any) -> Any:
        def paused(*args: Any, **kwargs: Any) -> Any:
            was, self.paused = self.paused, True
            try:
                return method(*args, **kwargs)
            finally:
                self.paused = was
        return paused

    def patch(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name`` to ``value`` until the recorder exits."""
        self._saved.append((owner, name, vars(owner).get(name, _ABSENT) if hasattr(owner, "__dict__")
                            else getattr(owner, name)))
        setattr(owner, name, value)

    def note(self, name: str, text: str) -> None:
        """Record ``text`` written to stream ``name``."""
        events = self.events
        if events and events[-1][0] == name:
            events[-1][1].append(text)  # pieces, joined once at the end: many writes stay cheap
        else:
            events.append([name, [text]])

    def __enter__(self) -> Recorder:
        self.patch(sys, "stdout", _tee(sys.stdout, "stdout"))
        self.patch(sys, "stderr", _tee(sys.stderr, "stderr"))
        _RUNNING.append(self)
        hook = self.shell.displayhook
        for name in self._HOOK_METHODS:
            self.patch(hook, name, self._pausing(getattr(hook, name)))
        write_result = self._pausing(hook.write_format_data)
        compute = hook.compute_format_data

        def compute_format_data(result: Any) -> Any:
            self._value = result  # (the value whose format data is written next)
            return compute(result)

        def write_format_data(format_dict: dict, md_dict: dict | None = None) -> Any:
            self.result_display = (dict(format_dict), dict(md_dict or {}))
            self.shown.append((self._value, self.result_display))
            self.events.append(["result"])  # where it came among the outputs (a figure may follow it)
            return write_result(format_dict, md_dict)

        self.patch(hook, "compute_format_data", compute_format_data)
        self.patch(hook, "write_format_data", write_format_data)
        publisher = self.shell.display_pub
        publish_through = self._pausing(publisher.publish)  # a terminal's publisher prints: not stdout
        clear_through = self._pausing(publisher.clear_output)

        def publish(data: dict, metadata: dict | None = None, *args: Any, **kwargs: Any) -> None:
            self.events.append(["display", dict(data), dict(metadata or {}),
                                kwargs.get("transient"), bool(kwargs.get("update"))])
            return publish_through(data, metadata, *args, **kwargs)

        def clear_output(wait: bool = False) -> None:
            self.events.append(["clear", wait])
            return clear_through(wait)

        self.patch(publisher, "publish", publish)
        self.patch(publisher, "clear_output", clear_output)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self in _RUNNING:
            _RUNNING.remove(self)
        for owner, name, value in reversed(self._saved):
            if value is _ABSENT:
                delattr(owner, name)  # back to the class's method
            else:
                setattr(owner, name, value)

    def recorded(self) -> list[tuple]:
        """The events, in order (see the module's docstring); a ``result`` only if the result was shown."""
        return [(e[0], "".join(e[1])) if e[0] in ("stdout", "stderr") else tuple(e) for e in self.events
                if e[0] != "result" or self.result_display is not None]

    def shows_a_widget(self) -> bool:
        """Whether the cell displayed a live widget (``interact``, a slider): a widget needs its kernel-side
        object and comm, which a replay cannot give back."""
        shown = [e[1] for e in self.events if e[0] == "display"]
        if self.result_display is not None:
            shown.append(self.result_display[0])
        return any(WIDGET_VIEW in data for data in shown)


def publish(shell: Any, data: dict, metadata: dict | None = None, *, transient: dict | None = None,
            update: bool | None = None) -> None:
    """Show a mime bundle through the shell's display publisher, as IPython's ``publish_display_data``
    does (``transient`` is passed only when given, as there, and so is ``update``)."""
    kwargs: dict[str, Any] = {"transient": transient} if transient else {}
    if update is not None:
        kwargs["update"] = update
    shell.display_pub.publish(data=data, metadata=metadata, **kwargs)


def clear_output(shell: Any, wait: bool = False) -> None:
    """Clear the cell's output, as IPython's ``clear_output`` does in a shell."""
    shell.display_pub.clear_output(wait)


def show_result_as_recorded(shell: Any, value: Any, display: tuple[dict, dict] | None) -> None:
    """Show ``value`` (the cell's result) through the displayhook, as the cell's run did: it becomes ``_``
    and ``Out[n]`` and the cell's result, and is shown with the display data recorded when the cell ran,
    byte for byte, rather than formatted again from the restored value (which may differ: an int64
    array's repr, a figure drawn again)."""
    if value is None:
        return
    hook = shell.displayhook
    if display is not None:
        own = vars(hook).get("compute_format_data", _ABSENT)
        compute = hook.compute_format_data

        def recorded_format_data(result: Any) -> tuple[dict, dict]:
            if result is value:
                return dict(display[0]), dict(display[1])
            return compute(result)

        hook.compute_format_data = recorded_format_data
    try:
        hook(value)
    finally:
        if display is not None:
            if own is _ABSENT:
                del hook.compute_format_data  # the displayhook's own method again
            else:
                hook.compute_format_data = own


def replay(shell: Any, events: list[tuple], show_result: Callable[[], None]) -> None:
    """Replay recorded output in order through ``shell``; ``show_result()`` where the cell's result was
    shown. A live widget's view is left out of a display that has another representation."""
    for event in events:
        kind = event[0]
        if kind == "result":
            show_result()
        elif kind == "display":
            data = {k: v for k, v in event[1].items() if k != WIDGET_VIEW} or event[1]
            publish(shell, data, event[2], transient=event[3], update=event[4])
        elif kind == "clear":
            clear_output(shell, wait=event[1])
        else:
            stream = sys.stdout if kind == "stdout" else sys.stderr
            stream.write(event[1])
            stream.flush()
