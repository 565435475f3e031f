"""cellstep.py's text analysis: whether a cell's last expression is silenced with a semicolon."""

from __future__ import annotations

import pytest

from nbcache.cellstep import ends_with_semicolon


@pytest.mark.parametrize("source, quiet", [
    ("x;", True),
    ("plot(x);  # a comment\n\n", True),
    ("if a:\n    b;\n", True),
    ("x", False),
    ("a = 1;\nb", False),
    ("s = ';'", False),
    ("", False),
    ("f(\n", False),  # does not tokenize
])
def test_a_trailing_semicolon_silences_the_result(source, quiet):
    assert ends_with_semicolon(source) is quiet
