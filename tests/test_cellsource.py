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
    give_source(ipshell, CELL, CELL, [area, square, box, other, 42, "text"])
    assert inspect.getsource(area) == "def area(r):\n    return 3.14 * r * r\n"
    assert inspect.getsource(square) == "square = lambda x: x * x\n"
    assert inspect.getsource(box.size) == "    def size(self):\n        return 1\n"
    assert area.__code__.co_filename in linecache.cache and area(1) == 3.14
    # a function of another cell, bound by this one: line 3 of this cell is blank, not its definition
    assert other.__code__.co_filename == "/tmp/ipykernel_0/other.py"


def test_a_modules_function_or_code_a_library_made_keeps_its_file(ipshell, tmp_path):
    """A module's function the cell bound (``from helpers import slow``, found decorated at a line where the
    cell has a decorator), and code made by ``exec`` (a dataclass's ``__init__``): never the cell's."""
    helpers = tmp_path / "helpers.py"
    helpers.write_text("import functools\n@functools.lru_cache\ndef slow(x):\n    return 1 / x\n")
    slow = _from_another_kernel(helpers.read_text(), "slow", str(helpers))
    made = _from_another_kernel("def __init__(self):\n    pass\n", "__init__", "<string>")
    cell = "import functools\n@functools.lru_cache\ndef k(x):\n    return x\n"
    give_source(ipshell, cell, cell, [slow, made])
    assert slow.__wrapped__.__code__.co_filename == str(helpers) and made.__code__.co_filename == "<string>"
