"""Who hears about each step run: the listeners of one ``Cache`` (the lineage widget redraws from them)."""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable

from .records import StepRun

__all__ = ["Events"]


class Events:
    """Bound methods called with every ``StepRun`` recorded, for as long as their object lives."""

    def __init__(self) -> None:
        self._listeners: list[weakref.WeakMethod] = []
        self._slots: dict[object, weakref.WeakMethod] = {}  # slot -> the one listener that holds it
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def subscribe(self, method: Callable[[StepRun], Any], *, slot: object = None) -> None:
        """Call the bound ``method(run)`` after each step run, while its object lives. A listener given a
        ``slot`` replaces the one that held it (the newest lineage widget of each kind follows the runs)."""
        ref = weakref.WeakMethod(method)  # type: ignore[arg-type]
        with self._lock:
            if slot is not None:
                old = self._slots.get(slot)
                if old in self._listeners:
                    self._listeners.remove(old)
                self._slots[slot] = ref
            self._listeners.append(ref)

    def notify(self, run: StepRun) -> None:
        for ref in list(self._listeners):
            method = ref()
            if method is None:
                with self._lock:
                    if ref in self._listeners:
                        self._listeners.remove(ref)
                continue
            try:
                method(run)
            except Exception:  # a display that fails to update must not fail the user's step
                pass
