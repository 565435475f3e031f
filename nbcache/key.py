"""The cache key format, in one place: what goes into a key and nothing else.

A key is the xxh3-128 of, in this order: a format tag, ``CACHE_FORMAT`` (bumped whenever the layout of
keys or stored values changes, so old entries simply miss), the Python minor version (bytecode differs
between them), the step name, the step's transitive code fingerprint, the hashes of its bound arguments
(defaults applied, ignored ones left out, sorted by name), and the user's ``version`` string. Each is fed
as its UTF-8 bytes after their length, so no two different lists of ingredients feed the same bytes.
"""

from __future__ import annotations

import struct
import sys
from typing import Mapping

import xxhash

__all__ = ["CACHE_FORMAT", "PYTHON_VERSION", "make_key"]

CACHE_FORMAT = 6  # 3: values are signed; 4: entries sealed, values signed with their names; 5: settings checks;
#                  6: warnings filters that raise, files read then written, live references in cell payloads
"""The version of the key and storage layout. A new nbcache that bumps it misses every older entry
(they are left on disk for ``nbcache clear``) rather than misreading them."""
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


_LENGTH = struct.Struct("<Q").pack


def make_key(step: str, code: str, inputs: Mapping[str, str], version: str | None) -> str:
    h = xxhash.xxh3_128()
    for part in ("nbcache-key", str(CACHE_FORMAT), PYTHON_VERSION, step, code):
        _feed(h, part)
    h.update(_LENGTH(len(inputs)))
    for name, digest in sorted(inputs.items()):
        _feed(h, name)
        _feed(h, digest)
    if version is None:
        h.update(b"N")
    else:
        h.update(b"V")
        _feed(h, version)
    return h.hexdigest()


def _feed(h: xxhash.xxh3_128, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")  # (a name may hold any character)
    h.update(_LENGTH(len(data)))
    h.update(data)
