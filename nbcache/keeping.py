"""What keeps a step's result safe from nbcache's own failures: a mixin of ``cachedcall.StepCall``.

Whatever fails after a body returned (pickling, storing, recording, the observer) is a trouble: noted, and
told in one warning by the run's record; the caller always gets the result. ``keep`` guards all that
follows the body, ``watching`` the observer around it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import CacheWarning
from .errors import warn as _warn
from .records import StepRun, describe_error

if TYPE_CHECKING:
    from .observe import Observer

__all__ = ["Keeping"]


class Keeping:
    """The troubles of one call, and the guards that turn failures into them. The class using it provides
    ``name``, ``kind``, ``observe``, ``record``, and the attributes set in ``__init__`` here."""

    name: str
    kind: str
    observer: Observer | None

    def __init__(self) -> None:
        self.troubles: list[str] = []  # what went wrong keeping this call, for the one warning its record gives
        self.uncached_by_trouble = self.stored = False  # one of them cost the result its store; it was stored
        self.recorded = 0  # how many records this call has written (or tried to)
        self.doing = ""  # what ``keep`` is at, for its warning

    def observe(self, bound: frozenset[str] = frozenset()) -> Observer:
        raise NotImplementedError

    def record(self, *, cached: bool, reason: str, outputs: tuple[str, ...], **fields: Any) -> StepRun | None:
        raise NotImplementedError

    def trouble(self, what: str, *, uncached: bool = False) -> None:
        """Note what went wrong keeping this call (``uncached``: so its result is not stored) for the warning."""
        self.troubles.append(what)
        self.uncached_by_trouble |= uncached

    def warn_troubles(self, *, hit: bool = False) -> None:
        """Say in one warning what went wrong keeping this call since the last one, if anything did."""
        if self.troubles:
            what, self.troubles = ", and ".join(self.troubles), []
            tail = "" if hit or not self.uncached_by_trouble else \
                "; the cell was not cached" if self.kind == "cell" else "; it is returned but not cached"
            _warn(f"nbcache: step {self.name!r} {'came from the cache' if hit else 'ran'}, but {what}{tail}")

    def keep(self, keeping: Callable[[], None], reason: str, **fields: Any) -> None:
        """Do ``keeping``, all that follows a body that returned (store what it returned, record the run): what
        fails in it costs no result; one warning says what, and the run is recorded if it was not yet."""
        recorded, self.doing = self.recorded, "keeping its result"
        try:
            keeping()
        except CacheWarning:  # a warning the user made an error: theirs to see
            raise
        except Exception as exc:
            self.trouble(f"{self.doing} failed ({describe_error(exc)})", uncached=not self.stored)
            if self.recorded == recorded:
                self.record(cached=False, reason=f"{reason}; not cached: {self.doing} failed", outputs=(), **fields)
            else:
                self.warn_troubles()

    @contextlib.contextmanager
    def watching(self, store: bool, bound: frozenset[str] = frozenset()) -> Iterator[None]:
        """Observe the body's run when its result is to be stored. An observer that fails to start or stop costs
        the cache (``not_cacheable_after_run``), never the result; the body's own exception passes untouched."""
        observer, failures = None, []
        try:
            if store:
                (observer := self.observe(bound)).__enter__()
        except Exception as exc:  # (self.observer is None if there is none, which is as failed)
            failures.append(exc)
        raised = True
        try:
            yield
            raised = False
        finally:
            try:
                if observer is not None:
                    observer.__exit__(None, None, None)
            except Exception as exc:
                failures.append(exc)
            if failures and not raised:  # an observer that missed some of the run must not say what it read
                if observer is not None:
                    observer.failed = True
                self.trouble(f"what it read could not be followed ({describe_error(failures[0])})", uncached=True)
