"""What a notebook cell reads and binds, what else it does, and a digest of its code that ignores comments
and layout: everything ``%%step`` needs to know about a cell before running it.

Pure analysis of Python source (already passed through IPython's input transformations, so ``!ls`` and
``%time`` lines are plain calls by now); no IPython here. The work is done by ``cellflow.py`` (the names a
cell reads and binds), ``celleffects.py`` (shell commands, reads of the whole namespace) and
``magiclines.py`` (magics as IPython writes them); this module puts their answers together in a
``CellCode``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import xxhash

from .celleffects import effects_of
from .cellflow import flow_of
from .magiclines import REPLAYED_MAGICS, line_magic

__all__ = ["REPLAYED_MAGICS", "CellCode", "analyse_cell"]


@dataclass(frozen=True)
class CellCode:
    digest: str  # of the syntax tree: comments, blank lines and formatting do not change it
    reads: tuple[str, ...]  # in order of first use
    binds: tuple[str, ...]  # in order of first binding, including names bound only on some paths
    imports: tuple[str, ...]  # modules the cell imports ("pkg.mod", or ".mod" for a relative import)
    shell: tuple[str, ...] = ()  # shell commands it runs, as written: "!ls", "%%bash", "os.system()"
    magics: tuple[tuple[str, str], ...] = ()  # top-level line magics whose effect outlives the cell
    dynamic: str = ""  # how it reads the namespace without naming variables: "globals()", or ""
    sets: tuple[str, ...] = ()  # attributes of dotted names it assigns or deletes: "np.flag"

    def default_name(self, inputs: list[str]) -> str:
        """A name for the step that stays the same while the cell binds and reads the same variables:
        ``df ← raw`` and ``df ← df`` for two cells that both assign ``df``."""
        public = [n for n in self.binds if not n.startswith("_")] or list(self.binds)
        if not public:
            return f"cell-{self.digest[:8]}"
        name = _listed(public)
        sources = [n for n in inputs if not n.startswith("_")]
        return f"{name} ← {_listed(sources)}" if sources else name


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def analyse_cell(source: str) -> CellCode:
    """Analyse a cell; raises SyntaxError for code that does not parse."""
    tree = ast.parse(source)
    digest = xxhash.xxh3_128(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
    flow = flow_of(tree.body)
    effects = effects_of(tree)
    magics = tuple(m for st in tree.body if (m := line_magic(st)) and m[0] in REPLAYED_MAGICS)
    return CellCode(digest, flow.reads, flow.binds, flow.imports, effects.shell, magics, effects.dynamic,
                    effects.sets)
