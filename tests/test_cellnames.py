"""cellnames.py: readable step names for cells, unique in a kernel, kept across kernels."""

from __future__ import annotations

from nbcache.cellnames import CellNames, fits


class Store:
    def __init__(self, last: dict[str, dict] | None = None, fail: bool = False) -> None:
        self.last, self.fail = last or {}, fail

    def get_last(self, identity: str) -> dict | None:
        if self.fail:
            raise OSError("unreadable")
        return self.last.get(identity)


def test_two_cells_with_the_same_variables_get_numbered_names():
    names, store = CellNames(), Store()
    assert names.name_of("a", "labels ← X", store, "cell:a") == "labels ← X"
    assert names.name_of("b", "labels ← X", store, "cell:b") == "labels ← X #2"
    assert names.name_of("c", "labels ← X", store, "cell:c") == "labels ← X #3"
    assert names.name_of("a", "labels ← X", store, "cell:a") == "labels ← X"  # run again: the same name


def test_a_cell_whose_variables_change_gets_a_new_name_and_frees_the_old():
    names, store = CellNames(), Store()
    names.name_of("a", "labels ← X", store, "cell:a")
    assert names.name_of("a", "y ← X", store, "cell:a") == "y ← X"
    assert names.name_of("b", "labels ← X", store, "cell:b") == "labels ← X"


def test_a_cell_keeps_the_name_it_had_in_an_earlier_kernel():
    store = Store({"cell:b": {"name": "labels ← X #2"}})
    names = CellNames()  # a new kernel: cell b runs first, yet keeps its #2
    assert names.name_of("b", "labels ← X", store, "cell:b") == "labels ← X #2"
    assert names.name_of("a", "labels ← X", store, "cell:a") == "labels ← X"


def test_an_earlier_name_that_no_longer_fits_or_is_taken_is_not_kept():
    store = Store({"cell:a": {"name": "old ← X"}, "cell:b": {"name": "labels ← X"}})
    names = CellNames()
    assert names.name_of("a", "labels ← X", store, "cell:a") == "labels ← X"  # its variables changed
    assert names.name_of("b", "labels ← X", store, "cell:b") == "labels ← X #2"  # taken by a, in this kernel


def test_an_unreadable_store_still_gives_a_name():
    assert CellNames().name_of("a", "x", Store(fail=True), "cell:a") == "x"


def test_fits():
    assert fits("x ← y", "x ← y") and fits("x ← y #12", "x ← y")
    assert not fits("x ← y #", "x ← y") and not fits("x ← y #a", "x ← y") and not fits("x ← yz", "x ← y")
