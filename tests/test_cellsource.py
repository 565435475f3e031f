"""A hit gives the functions a ``%%step`` cell defined its text (``cellsource.py``); the real-kernel test,
against the same notebook without nbcache, is in test_magics_kernel.py. Here: which functions count as the
cell's, in the test shell."""

from __future__ import annotations

import inspect
import linecache

from nbcache.cellsource import give_source

CELL = "def area(r):\n    return 3.14 * r * r\n\nsquare = lambda x: x * x\nclass Box:\n    def size(self):\n        return 1\n"


def _from_another_kernel(source: str, name: str, filename: str) -> object:
    namespace: dict = {}
    exec(compile(source, filename, "exec"), namespace)  # (never cached in linecache: as after a restart)
    return namespace[name]


def test_the_functions_the_cell_defined_get_its_text_and_others_keep_theirs(ipshell):
    old = "/tmp/ipykernel_0/gone.py"
    area, square, box = (_from_another_kernel(CELL, n, old) for n in ("area", "square", "Box"))
    other = _from_another_kernel("x = 1\ny = 2\ndef helper():\n    return 0\n", "helper", "/tmp/ipykernel_0/other.py")
    assert old not in linecache.cache
    give_source(ipshell, CELL, [area, square, box, other, 42, "text"])
    assert inspect.getsource(area) == "def area(r):\n    return 3.14 * r * r\n"
    assert inspect.getsource(square) == "square = lambda x: x * x\n"
    assert inspect.getsource(box.size) == "    def size(self):\n        return 1\n"
    assert area.__code__.co_filename in linecache.cache and area(1) == 3.14
    # a function of another cell, bound by this one: line 3 of this cell is blank, not its definition
    assert other.__code__.co_filename == "/tmp/ipykernel_0/other.py"
