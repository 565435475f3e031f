"""Pinned digests: the refactor of hashing into contexts (issue 10) changes no key.

Every value below was hashed before the refactor; a key made from it must stay the same, or every entry
in every existing cache would miss (``CACHE_FORMAT`` was not bumped). A function's digest is pinned for
the one Python version its bytecode was compiled by.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

import nbcache
from nbcache import hash_value
from nbcache.key import make_key

SCALE = 3


def _helper(x):
    return x * SCALE


def _pinned_function(x, y=2):
    """A docstring, which does not count."""
    return _helper(x) + math.sqrt(y)


class _Pinned:
    k = 2

    def fit(self, x):
        return _helper(x) * self.k


def test_values_hash_as_before_the_refactor():
    assert hash_value({"a": 1, "b": [1, 2.5, None], "c": (True, b"x"), "d": {3, 1}}) == "071cd02a922a21078286b836a17466c6"
    assert hash_value(np.arange(12.0).reshape(3, 4).T) == "59749a09ef046530480e9f94ad39f7e2"
    assert hash_value(np.float64(1.5)) == "8f2253394dbe3db5f4b114a3884b0cf2"
    selfref: list = [1]
    selfref.append(selfref)
    assert hash_value(selfref) == "8055d7bf655be2c5f7e0cc7057380a59"
    assert hash_value(math) == "de6005e9836fa4c8fc4a11ffd1af9c98"
    assert hash_value(len) == "e38470fa6674870234792b335987054b"
    assert make_key("f", "0" * 32, {"x": "1" * 32}, None) == "bfb9b975b8ef1308378aa74e67f95330"  # CACHE_FORMAT 6, fields fed with their lengths


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="bytecode pinned for Python 3.11")
def test_code_hashes_as_before_the_refactor():
    assert hash_value(_pinned_function) == "322c47f7651fee7f10d930e32957b15b"
    assert hash_value(_Pinned) == "7674c2e4dae8f18bf4f0b3a8a1068315"
    assert hash_value(_Pinned().fit) == "2fa8fa316aaf5ef8dc04c1eb85ffc69f"
    assert hash_value([_pinned_function, _pinned_function]) == "1f96755e36da390c082c2344d45913c4"
    assert nbcache.fingerprint(_pinned_function) == "33000c26dcacda07b227fcd8c0f02ad1"
    assert hash_value(nbcache.step(_pinned_function)) == "dafbb8c45af66d08b89ba4d5a894c057"
    assert hash_value(nbcache.step(version="2")(_helper)) == "69118c3ee3c8c5c8881aea0ba180566e"


def test_arrays_with_nan_and_masked_arrays_hash_as_before_the_single_pass_hashing():
    """Pinned before hashing floats in one pass (issue 12): NaN across chunk boundaries, complex, byte-swapped
    and strided arrays, and masked arrays, whose handler is now reached without importing numpy.ma."""
    big = np.arange(1_000_003, dtype=np.float64) / 7  # 8 MB: chunks of every size
    big[[0, 32767, 32768, 131071, 131072, 999_999]] = np.nan
    big.view(np.uint64)[500_000] = 0xFFF0000000000042  # a NaN with a payload and the sign bit
    assert hash_value(big) == "17bbb2ea52392feff919ba8d272df7f6"
    assert hash_value(big[::3]) == "f785fbc75f86e5090115a34db014a54e"
    c = (np.arange(300_001) + 1j).astype(np.complex64)
    c[[5, 200_000]] = [complex(np.nan, 1), complex(2, -np.nan)]
    assert hash_value(c) == "142b93a395598114d4903b408d5aa6f4"
    swapped = (np.arange(200_000) / 3).astype(">f8")
    swapped[150_000] = np.nan
    # (changed 2026-12-07: its chunk holding the NaN was fed in native order, which other bytes could have)
    assert hash_value(swapped) == "2d83aa5c5a90bd75a9dbedacec72dc54"
    masked = np.ma.masked_array(np.arange(6.0), mask=[0, 1, 0, 0, 1, 0], fill_value=-1.0)
    assert hash_value(masked) == "c4a724bbe0e1fd0501559345d6563783"
    assert hash_value(np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])) == "97481ce660d113d5218a72a241a6c0f8"


def _strings(n: int) -> np.ndarray:
    return np.array([f"é{i}" if i % 7 else f"item-{i}" for i in range(n)], dtype=object)


def test_arrays_of_strings_hash_as_before_they_were_joined_in_pieces():
    """Pinned before strings were joined 65,536 at a time (issue 12): an array of them over several pieces,
    one holding a NUL or an item that is not a str (each element fed then), and small ones."""
    big = _strings(200_003)
    assert hash_value(big) == "5734a6f68b045870ea887a094491f22d"
    assert hash_value(big[::-1]) == "c32e6a5173f982853c3c80c89bd30c42"
    nul, other = big.copy(), big.copy()
    nul[150_000], other[199_999] = "with\0nul", 5
    assert hash_value(nul) == "91f9a7db8d43a7516a7568762135b665"
    assert hash_value(other) == "e09ba5d5bb34bb9976842663025306b2"
    assert hash_value(np.array(["a", "bé", "", "\udcff", "x" * 100], dtype=object)) == "a7579cb42fc8e4a12755771428ffcf57"
    assert hash_value(np.array(["a\0b", "c"], dtype=object)) == "adcf970db997fb4dc6c98bb73ae197d2"
    assert hash_value(np.array(["only"], dtype=object)) == "bdf24b4740bb11efb547c3baadeb40f2"
    assert hash_value(np.array([], dtype=object)) == "4c42f3b08ca63a3a3428d217ddec08ce"
    assert hash_value(np.array(["a", 1, None], dtype=object)) == "d15cdc4d20584d4c503a76b94df12d9b"
    assert hash_value(np.array([["a", "b"], ["c", "d"]], dtype=object)[:, ::-1]) == "e6c3b599e7416c1e7ad88f618da9ddc2"


@pytest.mark.parametrize("items", [["a", "bé", "", "z"], ["a\0", "c"], [], list(_strings(140_000))],
                         ids=["small", "a NUL", "empty", "several pieces"])
def test_a_string_column_without_missing_values_hashes_as_one_with_its_mask_read(items, monkeypatch):
    """A column of pandas' string dtype whose items are all str skips ``isna()``: it feeds the same bytes as
    the path that reads the mask (pinned values would depend on pandas' version, which names the dtype)."""
    pd = pytest.importorskip("pandas")
    from nbcache import _hashing_pandas

    series = pd.Series(items, dtype="string")
    fast = hash_value(series)
    monkeypatch.setattr(_hashing_pandas, "joined_strings", lambda flat: None)
    assert hash_value(series) == fast
    assert hash_value(pd.Series(items[:-1] + [None], dtype="string")) != fast  # (a missing value counts)
