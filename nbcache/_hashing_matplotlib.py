"""matplotlib handlers for ``hash_value``: a figure hashes alike each time, in every process.

Two parts of a figure are wiring, not content, and pickle (which the fallback hashes) made them vary:

- a ``CallbackRegistry`` (what to call on a click or a resize) draws the next callback id from a counter
  in its pickle state, so every hash changed the figure and gave a new digest: a figure as an input
  never hit. Pickle drops the callbacks; a registry hashes as its type and the signals it knows.
- a transform's ``_parents`` maps ``id()``s of the transforms that depend on it: different in every
  process. The transform hashes as everything else it holds.

Two flags say only what a draw has yet to redo, and pickling resets them: an artist's ``_stale`` (it must be
drawn again) and a transform's ``_invalid`` (its cached matrix must be computed again). A figure drawn, then
stored and restored, hashed differently; both flags are left out of every matplotlib object. What the first
draw lays out (ticks, autoscaled limits, text positions) is the figure's new state and still counts.
"""

from __future__ import annotations

from matplotlib import cbook, transforms

from .hash_core import Handler, Hasher, Walk, feed
from .hash_reduce import feed_object


def _feed_callback_registry(obj: cbook.CallbackRegistry, h: Hasher, walk: Walk) -> None:
    h.update(b"mplcb")
    feed(sorted(map(str, getattr(obj, "_signals", None) or ())), h, walk)


_WIRING = frozenset({"_parents"})


def _feed_transform(obj: transforms.TransformNode, h: Hasher, walk: Walk) -> None:
    feed_object(obj, h, walk, drop=_WIRING)


HANDLERS: dict[type, Handler] = {
    cbook.CallbackRegistry: _feed_callback_registry,
    transforms.TransformNode: _feed_transform,
}
SKIPPED_ATTRIBUTES = frozenset({"_stale", "_invalid"})
