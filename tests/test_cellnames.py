"""cellnames.py: readable step names for cells, unique in a kernel, kept across kernels."""

from __future__ import annotations

from nbcache.cellnames import CellNames, fits


def unknown() -> None:
    return None


def test_two_cells_with_the_same_variables_get_numbered_names():
    names = CellNames()
    assert names.name_of("a", "labels ← X", unknown) == "labels ← X"
    assert names.name_of("b", "labels ← X", unknown) == "labels ← X #2"
    assert names.name_of("c", "labels ← X", unknown) == "labels ← X #3"
    assert names.name_of("a", "labels ← X", unknown) == "labels ← X"  # run again: the same name


def test_a_cell_whose_variables_change_gets_a_new_name_and_frees_the_old():
    names = CellNames()
    names.name_of("a", "labels ← X", unknown)
    assert names.name_of("a", "y ← X", unknown) == "y ← X"
    assert names.name_of("b", "labels ← X", unknown) == "labels ← X"


def test_a_cell_keeps_the_name_it_had_in_an_earlier_kernel():
    earlier = {"b": "labels ← X #2"}
    names = CellNames()  # a new kernel: cell b runs first, yet keeps its #2
    assert names.name_of("b", "labels ← X", lambda: earlier.get("b")) == "labels ← X #2"
    assert names.name_of("a", "labels ← X", lambda: earlier.get("a")) == "labels ← X"


def test_an_earlier_name_that_no_longer_fits_or_is_taken_is_not_kept():
    names = CellNames()
    assert names.name_of("a", "labels ← X", lambda: "old ← X") == "labels ← X"  # its variables changed
    assert names.name_of("b", "labels ← X", lambda: "labels ← X") == "labels ← X #2"  # a has it, in this kernel


def test_the_earlier_name_is_asked_only_for_a_cell_this_kernel_has_not_named():
    asked = []

    def earlier() -> str:
        asked.append(True)
        return "x"

    names = CellNames()
    names.name_of("a", "x", earlier)
    names.name_of("a", "x", earlier)
    assert len(asked) == 1


def test_fits():
    assert fits("x ← y", "x ← y") and fits("x ← y #12", "x ← y")
    assert not fits("x ← y #", "x ← y") and not fits("x ← y #a", "x ← y") and not fits("x ← yz", "x ← y")
