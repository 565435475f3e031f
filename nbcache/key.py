"""The cache key format, in one place: what goes into a key and nothing else.

A key is the xxh3-128 of, in this order: a format tag, ``CACHE_FORMAT`` (bumped whenever the layout of
keys or stored values changes, so old entries simply miss), the Python minor version (bytecode differs
between them), the step name, the step's transitive code fingerprint, the hashes of its bound arguments
(defaults applied, ignored ones left out, sorted by name), and the user's ``version`` string.
"""

from __future__ import annotations

import sys
from typing import Mapping

from .hashing import hash_value

__all__ = ["CACHE_FORMAT", "PYTHON_VERSION", "make_key"]

CACHE_FORMAT = 3  # 3: values are signed (frame.py)
"""The version of the key and storage layout. A new nbcache that bumps it misses every older entry
(they are left on disk for ``nbcache clear``) rather than misreading them."""
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def make_key(step: str, code: str, inputs: Mapping[str, str], version: str | None) -> str:
    return hash_value(
        ("nbcache-key", CACHE_FORMAT, PYTHON_VERSION, step, code, tuple(sorted(inputs.items())), version)
    )
