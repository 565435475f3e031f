"""The process's global random generators: ``random``'s and numpy's legacy one.

``from numpy.random import rand`` binds a method of such a generator in the notebook. The code fingerprint
counts that method by name only (its generator's state would change the fingerprint with every draw
anywhere); ``ambient`` keeps the state as an input of the steps that draw without seeding first, and the
pickler stores the method by name, to be bound again to this process's generator on load.

A module of its own, below both ``fingerprint`` and ``ambient``: ambient hashes states with ``hash_value``,
which counts code by its fingerprint, so fingerprint cannot import ambient.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["global_generator", "global_generator_method"]


def global_generator(obj: Any) -> str | None:
    """The module whose global random generator ``obj`` is (``random``'s, numpy's legacy one), or None.
    ``from numpy.random import rand`` binds a method of that generator in the notebook."""
    random = sys.modules.get("random")
    if random is not None and obj is getattr(random.random, "__self__", None):
        return "random"
    np = sys.modules.get("numpy")
    if np is not None and obj is getattr(np.random.rand, "__self__", None):
        return "numpy.random"
    return None


def global_generator_method(module: str, name: str) -> Any:
    """The method ``name`` of the global generator of ``module``, as it is in this process."""
    owner = __import__(module, fromlist=["_"])
    generator = (owner.random if module == "random" else owner.rand).__self__
    return getattr(generator, name)
