"""hash_core and the handler tables: contexts travel with the walk, nothing registers into another's table,
the one cycle guard, the ``__nbcache_hash__`` protocol, and plugins that use only the public interface."""

from __future__ import annotations

import ast
import pathlib
import types

import pytest

import nbcache
from nbcache import hash_core
from nbcache.fingerprint import CODE
from nbcache.hash_base import BASE
from nbcache.hash_core import Handlers, Walk, enter, feed, leave, new_hasher
from nbcache.hashing import hash_value

PACKAGE = pathlib.Path(nbcache.__file__).parent


def digest(obj, handlers: Handlers) -> str:
    h = new_hasher()
    feed(obj, h, Walk(handlers))
    return h.hexdigest()


def helper(x):
    return x + 1


def _define(body: str) -> types.FunctionType:
    namespace: dict = {"__name__": "__main__"}
    exec(f"def f(x):\n    return {body}\n", namespace)
    return namespace["f"]


def test_the_base_table_counts_functions_by_name_and_code_by_what_it_does():
    plus, minus = _define("x + 1"), _define("x - 1")
    assert digest(plus, BASE) == digest(minus, BASE)  # the same name
    assert digest(plus, CODE) != digest(minus, CODE)  # not the same code
    assert hash_value(plus) == digest(plus, CODE) == digest(_define("x + 1"), CODE)


def test_importing_fingerprint_changes_no_table():
    import nbcache.fingerprint  # noqa: F401  (imported by nbcache already: it must have changed nothing)

    assert BASE.handler(types.FunctionType).__name__ == "_feed_named"
    assert BASE.handler(type).__name__ == "_feed_type"
    assert CODE.handler(types.FunctionType).__name__ == "_feed_function"


def test_extend_makes_a_new_table_and_leaves_its_parent_alone():
    def feed_tagged(obj, h, walk):
        h.update(b"mine")

    child = BASE.extend({int: feed_tagged})
    assert child.handler(int) is feed_tagged and child.handler(bool) is BASE.handler(bool)  # exact stays exact
    assert BASE.handler(int) is not feed_tagged
    assert digest(5, child) != digest(5, BASE) == digest(5, CODE)
    assert child.handler(types.FunctionType) is BASE.handler(types.FunctionType)


def test_a_subclass_finds_the_handler_of_its_nearest_base_in_any_table():
    class Base:
        pass

    class Derived(Base):
        pass

    def feed_base(obj, h, walk):
        h.update(b"base")

    child = BASE.extend({Base: feed_base})
    assert child.handler(Derived) is feed_base
    assert digest(Derived(), child) == digest(Base(), child)
    assert BASE.handler(Derived) is not feed_base


def test_one_cycle_guard_for_containers_and_code():
    walk = Walk(BASE)
    h = new_hasher()
    outer, inner, func = [], [], helper
    assert enter(outer, h, walk) and enter(func, h, walk, back_reference=False) and enter(inner, h, walk)
    assert walk.depth == 2  # code is on the path but is no level of a back-reference
    assert not enter(func, h, walk, back_reference=False)
    before = h.digest()
    assert not enter(outer, h, walk)  # fed a back-reference: two containers up
    assert h.digest() != before
    for obj in (inner, func, outer):
        leave(obj, walk)
    assert walk.path == {} and walk.depth == 0


class _StandIn:
    def __init__(self, func, version):
        self.func, self.version = func, version

    def __nbcache_hash__(self):
        return b"step", (self.func, self.version)


def test_a_type_with_nbcache_hash_is_hashed_as_its_stand_in():
    a, b = _StandIn(helper, "1"), _StandIn(helper, "2")
    assert hash_value(a) == hash_value(_StandIn(helper, "1")) != hash_value(b)
    assert hash_value(_StandIn(_define("x + 1"), "1")) != hash_value(_StandIn(_define("x - 1"), "1"))
    # the protocol reproduces what a step hashed as when step.py registered a handler of its own
    assert hash_value(_StandIn(helper, "2")) == hash_value(nbcache.step(version="2")(helper))
    assert hash_value(_StandIn(helper, None)) == hash_value(nbcache.step(helper))


def test_a_stand_in_of_the_wrong_shape_is_a_clear_error():
    class Bad:
        def __nbcache_hash__(self):
            return "step", [1]

    with pytest.raises(nbcache.UncacheableError, match="must return"):
        hash_value(Bad())


def test_nbcache_hash_does_not_override_a_handler():
    class Odd(dict):
        def __nbcache_hash__(self):
            return b"odd", ()

    assert hash_value(Odd(a=1)) == hash_value(Odd(b=2))  # a dict subclass has no handler of its own
    assert BASE.handler(Odd) is hash_core.feed_stand_in


def _private_imports(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.level and node.module and node.module.startswith(("hash", "fingerprint"))
            for alias in node.names if alias.name.startswith("_")]


@pytest.mark.parametrize("plugin", sorted(p.name for p in PACKAGE.glob("_hashing_*.py")))
def test_plugins_use_only_public_names_and_declare_their_handlers(plugin):
    assert _private_imports(PACKAGE / plugin) == []
    source = (PACKAGE / plugin).read_text()
    assert "HANDLERS" in source or "SKIPPED_ATTRIBUTES" in source


def test_hash_core_imports_nothing_of_nbcache():
    tree = ast.parse((PACKAGE / "hash_core.py").read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
