"""Warnings a library gives as nbcache reads or sets its state (a deprecated pandas option, a matplotlib rc
key), kept from the user without ``warnings.catch_warnings``, which resets the filters' record of what was
shown: a warning of the "default" action, shown once, would show again after every hit.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Callable, Iterator

__all__ = ["quietly", "unshown"]


def quietly(call: Callable[[], Any]) -> Any:
    """``call()`` with the warnings it gives unshown; where a filter makes one an error (``-W error``), as
    ``catch_warnings`` would let it run: ignored."""
    try:
        with unshown():
            return call()
    except Warning:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()


@contextlib.contextmanager
def unshown() -> Iterator[None]:
    """Warnings this thread issues meanwhile are not shown, and the filters are left alone: ``catch_warnings``
    resets them, which makes a warning already shown once (the "default" action) show again, here on every
    hit. ``warnings.showwarning`` is replaced while any thread reads (the last one puts it back)."""
    me = threading.get_ident()
    with _lock:
        if not _readers:
            _shown[0] = warnings.showwarning
            warnings.showwarning = _not_here
        _readers.append(me)
    try:
        yield
    finally:
        with _lock:
            _readers.remove(me)
            if not _readers and warnings.showwarning is _not_here:
                warnings.showwarning = _shown[0]


_readers: list[int] = []  # the threads reading options now
_shown: list = [warnings.showwarning]  # what showed warnings before the first of them
_lock = threading.Lock()


def _not_here(*args: Any, **kwargs: Any) -> None:
    if threading.get_ident() not in _readers:  # (another thread's warning: shown as it would be)
        _shown[0](*args, **kwargs)
