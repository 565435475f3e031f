"""scipy handlers for ``hash_value``: a sparse matrix hashes as its arrays, not as what it knows about them.

Loaded by ``hash_base`` only once the user's process has imported scipy. A compressed sparse matrix or array
(csr, csc, bsr, coo) finds out whether its indices are sorted and free of duplicates the first time an
operation asks, and remembers the answer in ``_has_sorted_indices`` and ``_has_canonical_format``: a
product or a sum changed the matrix's hash without changing its content. Those flags are left out; the
matrix is hashed through the pickle fallback as its class, shape and arrays.
"""

from __future__ import annotations

SKIPPED_ATTRIBUTES = frozenset({"_has_sorted_indices", "_has_canonical_format"})
