"""Readable step names for ``%%step`` cells that have a Jupyter cell id, unique among a kernel's cells."""

from __future__ import annotations

from typing import Callable

__all__ = ["CellNames", "fits"]


class CellNames:
    """Readable step names for cells with a Jupyter id, unique among this kernel's cells.

    A cell's name is made of what it binds and reads (``labels ← X``); when two cells would share one, the
    later gets ``labels ← X #2``. A cell keeps the name it had in an earlier kernel while that still fits
    (the store's latest ingredients of the cell hold it), so Restart & Run All in another order does not
    swap names.
    """

    def __init__(self) -> None:
        self._by_cell: dict[str, str] = {}
        self._taken: dict[str, str] = {}  # name -> cell id

    def name_of(self, cell_id: str, base: str, earlier_name: Callable[[], str | None]) -> str:
        """The name of cell ``cell_id``, whose name made of its variables is ``base``. ``earlier_name()``
        is the name the cell had when it last ran, in this kernel or an earlier one (None: not known); it
        is asked only when this kernel has not named the cell yet, or its variables changed."""
        known = self._by_cell.get(cell_id)
        if known is not None and fits(known, base):
            return known
        if known is not None:
            self._taken.pop(known, None)
        earlier = earlier_name()
        if isinstance(earlier, str) and fits(earlier, base) and self._taken.get(earlier, cell_id) == cell_id:
            name = earlier
        else:
            name, n = base, 1
            while self._taken.get(name, cell_id) != cell_id:
                n += 1
                name = f"{base} #{n}"
        self._by_cell[cell_id] = name
        self._taken[name] = cell_id
        return name


def fits(name: str, base: str) -> bool:
    """Whether ``name`` is ``base`` or ``base #n``: a name the cell may keep while its variables stay."""
    return name == base or (name.startswith(base + " #") and name[len(base) + 2:].isdigit())
