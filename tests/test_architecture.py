"""The shape of the package, as docs/architecture.md draws it: layers whose imports go one way, IPython only
in the magics layer, no module over ~350 lines, and no import hidden in a function to dodge a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nbcache"

# Lowest first: a module may import from its own layer and the layers before it, never from a later one.
LAYERS: list[tuple[str, set[str]]] = [
    ("values", {"errors", "forksafe", "hash_core", "hash_reduce", "hash_base", "_hashing_numpy", "_hashing_pandas",
                "_hashing_matplotlib", "_hashing_scipy", "quietly", "displaystate", "pandasstate", "statekinds", "statediff", "sharing"}),
    ("code", {"fingerprint_source", "fingerprint_code", "fingerprint_given", "fingerprint_handlers", "fingerprint", "hashing",
              "ambient", "cellflow", "celleffects", "magiclines", "cellcode", "varchecks", "checks", "priors", "callers", "datapaths", "sourceimports", "modulestate", "codestate",
              "audit", "observe"}),
    ("key", {"key"}),
    ("store", {"records", "history", "arrayviews", "pickler", "frameformat", "framecheck", "frameread", "frame", "keys", "entry", "store", "diskfiles", "diskgc", "diskindex", "disklock", "smallvalues", "diskerrors",
               "eviction", "diskevict", "diskstore", "teamentry", "remoteio", "remote"}),
    ("cached call", {"events", "explain", "background", "verifier", "verifystore", "carry", "latestwrites", "warming", "teamcache", "cache", "teamsync", "keeping", "serving", "cachedcall"}),
    ("step and magics", {"cluster", "step", "capture", "cellnames", "cellvars", "cellsource", "tables", "cellstep", "magics"}),
    ("graph", {"graph"}),
    ("widget and cli", {"widget", "cli", "__init__"}),
]
LAYER_OF = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}
IPYTHON_LAYER = {"magics"}  # the only modules that import IPython or traitlets
MAX_LINES = 360  # "about 350"
# Imports that are deferred on purpose, to keep `import nbcache` light: a library's hashing handlers, loaded
# once the user's code has imported that library; the widget and the magics, imported when a lineage is first
# asked for or the extension loaded; the graph (and graphviz), for `nbcache graph` only; the disk store (diskcache,
# SQLite), when a cache first opens its directory; the team cache (and fsspec), at the first miss; the cluster
# (and socket, distributed), when a step is first submitted; checking a whole store, for `nbcache verify` only;
# the observer of a run, on a miss (a hit never runs the body).
DEFERRED = {("cache", "diskstore"), ("cache", "teamcache"), ("hashing", "importlib"), ("__init__", "widget"), ("__init__", "magics"), ("cli", "graph"), ("step", "cluster"), ("cache", "verifystore"),
            ("cachedcall", "observe")}


def _modules() -> dict[str, ast.Module]:
    return {path.stem: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.glob("*.py"))}


def _own_imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(module of nbcache imported, the import node) for each relative or nbcache import."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("nbcache")):
            base = (node.module or "").removeprefix("nbcache").lstrip(".")
            if base:
                found.append((base.split(".")[0], node))
            else:  # from . import ambient
                found += [(alias.name, node) for alias in node.names]
    return found


def test_every_module_has_a_layer():
    assert sorted(set(_modules()) - set(LAYER_OF)) == []


def test_imports_flow_one_way():
    wrong = []
    for name, tree in _modules().items():
        for target, node in _own_imports(tree):
            if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[name] and (name, target) not in DEFERRED:
                wrong.append(f"{name} ({LAYERS[LAYER_OF[name]][0]}) imports {target} "
                             f"({LAYERS[LAYER_OF[target]][0]}) at line {node.lineno}")
    assert wrong == []


def test_no_function_hides_an_import_of_nbcache():
    hidden = []
    for name, tree in _modules().items():
        for func in ast.walk(tree):
            if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for target, node in _own_imports(func):
                    if (name, target) not in DEFERRED:
                        hidden.append(f"{name}.{func.name} imports {target} at line {node.lineno}")
    assert hidden == []


def test_only_the_magics_import_ipython():
    users = set()
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(m.split(".")[0] in ("IPython", "traitlets", "ipykernel") for m in modules):
                users.add(name)
    assert users <= IPYTHON_LAYER


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_module_is_too_long(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
