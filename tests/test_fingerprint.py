"""fingerprint: bytecode not text, and everything the function reads, followed transitively."""

from __future__ import annotations

import textwrap
import types

import pytest

import nbcache
from nbcache import fingerprint
from nbcache.fingerprint import fingerprint_parts

from .conftest import run_python


def define(source: str, **namespace) -> dict:
    """Run ``source`` as a notebook cell would: in a namespace whose module is ``__main__``."""
    ns = {"__name__": "__main__", **namespace}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), ns)
    return ns


def fp(source: str, name: str = "f", **namespace) -> str:
    return fingerprint(define(source, **namespace)[name])


BASE = """
def f(x, y=2):
    total = x + y
    return [total * k for k in range(3)]
"""


def test_comments_blank_lines_and_position_do_not_matter():
    commented = """



    # a comment that moves everything down
    def f(x, y=2):
        total = x + y   # inline comment

        return [total * k   for k in range(3)]  # another
    """
    assert fp(BASE) == fp(commented)


def test_docstrings_do_not_matter():
    documented = '''
    def f(x, y=2):
        """Explains f."""
        total = x + y
        return [total * k for k in range(3)]
    '''
    assert fp(BASE) == fp(documented)


def test_a_string_constant_returned_is_not_mistaken_for_a_docstring():
    assert fp('def f():\n    return "a"\n') != fp('def f():\n    return "b"\n')
    assert fp('def f():\n    "a"\n    return "a"\n') != fp('def f():\n    "b"\n    return "b"\n')


@pytest.mark.parametrize("changed", [
    BASE.replace("x + y", "x - y"),          # body
    BASE.replace("range(3)", "range(4)"),    # constant
    BASE.replace("y=2", "y=3"),              # default argument
    BASE.replace("total * k", "total ** k"),  # operator
    BASE.replace("for k in", "for j in").replace("total * k", "total * j"),  # local name
])
def test_any_change_to_the_code_changes_the_fingerprint(changed):
    assert fp(BASE) != fp(changed)


def test_nested_functions_and_lambdas_count():
    src = """
    def f(xs):
        def inner(v):
            return v + 1
        return sorted(map(inner, xs), key=lambda v: -v)
    """
    assert fp(src) != fp(src.replace("v + 1", "v + 2"))
    assert fp(src) != fp(src.replace("-v", "v"))


def test_closure_values_count():
    def make(scale):
        def f(x):
            return x * scale
        return f

    assert fingerprint(make(2)) == fingerprint(make(2))
    assert fingerprint(make(2)) != fingerprint(make(3))


def test_exception_handling_counts():
    src = """
    def f(x):
        try:
            return 1 / x
        except ZeroDivisionError:
            return 0
    """
    assert fp(src) != fp(src.replace("ZeroDivisionError", "ArithmeticError"))


HELPERS = """
SCALE = 2

def inner(x):
    return x * SCALE

def middle(x):
    return inner(x) + 1

def f(x):
    return middle(x)
"""


def test_a_helper_two_calls_deep_changes_the_fingerprint():
    assert fp(HELPERS) != fp(HELPERS.replace("x * SCALE", "x * SCALE + 0.5"))
    old = fingerprint_parts(define(HELPERS)["f"])[1]
    new = fingerprint_parts(define(HELPERS.replace("x * SCALE", "x * SCALE + 0.5"))["f"])[1]
    assert [k for k in new if new[k] != old.get(k)] == ["inner()"]


def test_global_values_are_hashed_and_read_when_the_fingerprint_is_taken():
    ns = define(HELPERS)
    before = fingerprint(ns["f"])
    ns["SCALE"] = 3
    after = fingerprint(ns["f"])
    assert before != after
    ns["SCALE"] = 2
    assert fingerprint(ns["f"]) == before
    assert "SCALE" in fingerprint_parts(ns["f"])[1]


@pytest.mark.parametrize("body", [
    'return df.query("a > @LIMIT")',  # (pandas reads @LIMIT from the caller's globals)
    'return df.eval("a * @LIMIT")',
    'return pd.eval("df.a + LIMIT")',
    'return eval("df + LIMIT")',
    'exec("out = LIMIT", globals(), space)\n    return space["out"]',
    'cond = "a > @LIMIT"\n    return df.query(cond)',  # (a string given through a variable)
    'return df.query(f"{cols[0]} > @LIMIT")',
    'return eval(compile("df + LIMIT", "<expr>", "eval"))',
])
def test_the_globals_a_string_of_code_it_evaluates_reads_count(body):
    """The names in a string given to eval/exec, or to pandas' query/eval, are globals the function reads."""
    ns = define(f"import types\npd = types\nLIMIT = 1\ny = 1\ndef f(df, space={{}}):\n    cols = ['x', 'y']\n    {body}\n")
    before = fingerprint(ns["f"])
    ns["y"] = 2  # (a string that is not given to eval/query is no code: `y` is not read)
    assert fingerprint(ns["f"]) == before
    ns["LIMIT"] = 2
    assert fingerprint(ns["f"]) != before and "LIMIT" in fingerprint_parts(ns["f"])[1]


def test_rebinding_a_helper_name_changes_the_fingerprint():
    ns = define(HELPERS)
    before = fingerprint(ns["f"])
    define("def inner(x):\n    return x * 10\n", **{k: v for k, v in ns.items() if k != "__builtins__"})
    exec("def inner(x):\n    return x * 10\n", ns)
    assert fingerprint(ns["f"]) != before


def test_mutual_recursion_terminates_and_both_sides_count():
    src = """
    def even(n):
        return n == 0 or odd(n - 1)

    def odd(n):
        return n != 0 and even(n - 1)

    f = even
    """
    assert fp(src) == fp(src)
    assert fp(src) != fp(src.replace("n != 0", "n > 0"))


def test_recursive_function_terminates():
    assert fp("def f(n):\n    return 1 if n < 2 else n * f(n - 1)\n")


def test_library_modules_and_functions_count_by_name_not_code():
    src = """
    import json
    from os.path import join

    def f(x):
        return json.dumps(join("a", x))
    """
    parts = fingerprint_parts(define(src)["f"])[1]
    assert list(parts) == ["f()"]  # json and os.path are not walked into
    assert fp(src) != fp(src.replace("json.dumps", "json.loads"))


def test_library_version_is_part_of_the_fingerprint(monkeypatch):
    import sys

    import numpy

    handlers = sys.modules["nbcache.fingerprint_handlers"]  # where libraries are counted by version
    src = "def f(x):\n    return np.mean(x)\n"
    before = fp(src, np=numpy)
    handlers.package_version.cache_clear()
    real = handlers.package_version.__wrapped__
    monkeypatch.setattr(handlers, "package_version",
                        lambda name: real(name) + ("-patched" if name == "numpy" else ""))
    assert fp(src, np=numpy) != before


def test_user_classes_are_followed():
    src = """
    class Model:
        def __init__(self, k):
            self.k = k

        def predict(self, x):
            return x * self.k

    def f(x):
        return Model(2).predict(x)
    """
    assert fp(src) != fp(src.replace("x * self.k", "x + self.k"))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Write (or rewrite and reload) a module of the user's, ``name`` or ``package/name``, on sys.path."""
    import importlib.util
    import pathlib
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> None:
        path = tmp_path / f"{name}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.parent != tmp_path and not (path.parent / "__init__.py").exists():
            (path.parent / "__init__.py").write_text("")
        path.write_text(source)
        # (a rewrite of the same size within the same second would be read from the stale byte-code)
        pathlib.Path(importlib.util.cache_from_source(str(path))).unlink(missing_ok=True)
        importlib.invalidate_caches()
        module = sys.modules.get(name.replace("/", "."))
        if module is not None:
            importlib.reload(module)

    return write


CONTEXT_HELPER = "import contextlib\n@contextlib.contextmanager\ndef ctx(x):\n    yield x + 1\n"


@pytest.mark.parametrize("module, old, new, src", [
    ("mylib_fp", "def clean(x):\n    return x\n", "def clean(x):\n    return x * 2\n",
     "import mylib_fp\n\ndef f(x):\n    return mylib_fp.clean(x)\n"),
    ("mylib_fp2", "def clean(x):\n    return x\n", "def clean(x):\n    return x * 2\n",
     "def f(x):\n    from mylib_fp2 import clean\n    return clean(x)\n"),  # an import inside the body
    ("cfgmod_fp", "SCALE = 1\n", "SCALE = 2\n",
     "def f(x):\n    import cfgmod_fp\n    return x * cfgmod_fp.SCALE\n"),  # a whole module in the body
    ("ctxhelpers_fp", CONTEXT_HELPER, CONTEXT_HELPER.replace("x + 1", "x + 2"),  # a library decorator
     "import ctxhelpers_fp\n\ndef f(x):\n    with ctxhelpers_fp.ctx(x) as y:\n        return y\n"),
    ("dynhelpers_fp", "def scale(x):\n    return x * 2\n", "def scale(x):\n    return x * 3\n",  # named in a call
     "import importlib\n\ndef f(x):\n    return importlib.import_module('dynhelpers_fp').scale(x)\n"),
])
def test_the_users_own_modules_are_followed(user_module, module, old, new, src):
    import sys

    user_module(module, old)
    before = fp(src)
    # a user module imported only in the body is not imported to fingerprint it (that would run it before what
    # comes before the import in the body or cell): its source counts
    assert (module in sys.modules) == src.startswith("import " + module)
    user_module(module, new)
    assert fp(src) != before


def test_a_package_imported_in_the_body_is_followed_into_its_submodules(user_module):
    """`import pkg` in the body, then `pkg.config.K`: a module the package imported counts where it is read
    (imported by the notebook already: one imported only as the step runs counts by its source files)."""
    user_module("pkgsub_fp/config", "K = 3\n")
    user_module("pkgsub_fp/__init__", "from . import config\n")
    user_module("pkgsub_fp/core", "def g(x):\n    return x\n")
    import pkgsub_fp.core  # noqa: F401
    src = "def f(x):\n    import pkgsub_fp\n    import pkgsub_fp.core as core\n" \
          "    return core.g(x) * pkgsub_fp.config.K\n"
    before = fp(src)
    user_module("pkgsub_fp/config", "K = 4\n")
    after_constant = fp(src)
    assert after_constant != before
    user_module("pkgsub_fp/core", "def g(x):\n    return x + 1\n")
    assert fp(src) != after_constant


def test_what_a_module_getattr_gives_counts(user_module):
    user_module("lazymod_fp", "def __getattr__(name):\n    return 3\n")
    src = "def f(x):\n    import lazymod_fp\n    return x * lazymod_fp.K\n"
    whole = "def f(x):\n    import lazymod_fp\n    return getattr(lazymod_fp, 'K')\n"
    before, before_whole = fp(src), fp(whole)
    user_module("lazymod_fp", "def __getattr__(name):\n    return 4\n")
    assert fp(src) != before
    assert fp(whole) != before_whole


@pytest.mark.parametrize("old, new", [
    ("@np.printoptions(precision=2)", "@np.printoptions(precision=5)"),  # a @contextmanager used as a decorator
    ("@np.errstate(divide='ignore')", "@np.errstate(divide='raise')"),
    ("@reprlib.recursive_repr(fillvalue='<A>')", "@reprlib.recursive_repr(fillvalue='<B>')"),  # no __wrapped__
])
def test_what_a_library_decorator_was_given_counts(old, new):
    src = """
    import reprlib
    import numpy as np

    {decorator}
    def g(x):
        return str(x)

    def f(x):
        return g(x)
    """
    assert fp(src.format(decorator=old)) == fp(src.format(decorator=old))
    assert fp(src.format(decorator=old)) != fp(src.format(decorator=new))


def test_a_function_a_library_decorator_made_counts_the_users_code_it_holds():
    src = """
    import reprlib

    class Node:
        @reprlib.recursive_repr()
        def __repr__(self):
            return "Node()"

    def f():
        return repr(Node())
    """
    assert fp(src) != fp(src.replace('"Node()"', '"Node(...)"'))


def test_what_a_library_decorator_keeps_as_it_works_does_not_count(tmp_path):
    """A memo, a dispatch cache or the cache object a decorator keeps in its closure changes as the helper is
    used, anywhere: it is no input of the step. (It was hashed, so each use changed the key; diskcache's
    memoize holds its own wrapper, and its fingerprint never ended.)"""
    import diskcache
    import toolz

    src = """
    import functools

    @functools.singledispatch
    def fmt(x):
        return str(x)

    @fmt.register
    def _(x: int):
        return f"int {x}"

    def f(n):
        return fmt(n) + square(n) + str(cube(n))
    """
    with diskcache.Cache(str(tmp_path / "memo")) as memo:
        ns = define(src, square=toolz.memoize(lambda n: str(n * n)), cube=memo.memoize()(lambda n: n ** 3))
        before = fingerprint(ns["f"])
        ns["f"](2), ns["fmt"](2.5), ns["square"](3), ns["cube"](4)  # (their caches fill)
        assert fingerprint(ns["f"]) == before


def test_a_library_s_own_functions_count_by_name_not_by_what_their_closures_hold():
    from sklearn.metrics import accuracy_score

    assert accuracy_score.__closure__  # (validate_params: its constraints, a library's constants)
    parts = fingerprint_parts(define("def f(y):\n    return accuracy_score(y, y)\n",
                                     accuracy_score=accuracy_score)["f"])[1]
    assert not any("closure" in name for name in parts), parts


def test_an_attribute_set_on_a_helper_counts():
    src = "def g(x):\n    return x * g.scale\n\ndef f(x):\n    return g(x)\n"
    ns = define(src)
    ns["g"].scale = 3
    before = fingerprint(ns["f"])
    assert fingerprint(ns["f"]) == before
    ns["g"].scale = 4
    assert fingerprint(ns["f"]) != before
    wrapper = define("def f(x):\n    return x\n")["f"]
    plain = fingerprint(wrapper)
    wrapper.__wrapped__ = len  # (as functools.wraps sets it: dunders are not the function's own data)
    assert fingerprint(wrapper) == plain
    import threading
    import warnings

    wrapper.widget = threading.Lock()  # (what ipywidgets' @interact leaves there: counted by type, quietly)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fingerprint(wrapper) != plain


def test_relative_import_in_the_body_is_followed(user_module):
    import importlib

    user_module("pkgrel_fp/core", "def clean(x):\n    return x\n")
    user_module("pkgrel_fp/steps", "def run(x):\n    from .core import clean\n    return clean(x)\n")
    steps = importlib.import_module("pkgrel_fp.steps")
    before = fingerprint(steps.run)
    user_module("pkgrel_fp/core", "def clean(x):\n    return x * 2\n")
    assert fingerprint(steps.run) != before


def test_steps_fingerprint_like_their_function_and_count_their_version_when_called(cache_dir):
    ns = define("def f(x):\n    return x + 1\n\ndef g(x):\n    return inner(x)\n")
    assert fingerprint(nbcache.step(ns["f"])) == fingerprint(ns["f"])
    ns["inner"] = nbcache.step(ns["f"])
    before = fingerprint(ns["g"])
    ns["inner"] = nbcache.step(version="2")(ns["f"])  # a step called by g: its version is part of g
    assert fingerprint(ns["g"]) != before


def test_fingerprint_rejects_non_callables():
    with pytest.raises(TypeError, match="takes a function"):
        fingerprint(42)


def test_unhashable_global_counts_by_type_with_a_warning():
    import threading

    ns = define("def f():\n    return LOCK_G is not None\n", LOCK_G=threading.Lock())
    with pytest.warns(nbcache.CacheWarning, match="LOCK_G"):
        first = fingerprint(ns["f"])
    assert isinstance(first, str)


def test_static_analysis_is_cached_per_code_object():
    from nbcache.fingerprint_code import _CODE_INFO

    ns = define(BASE)
    fingerprint(ns["f"])
    assert ns["f"].__code__ in _CODE_INFO
    assert isinstance(ns["f"], types.FunctionType)


@pytest.mark.parametrize("decorator", ["functools.lru_cache", "functools.cache", "functools.singledispatch"])
def test_helpers_behind_functools_decorators_are_followed(decorator):
    src = f"""
    import functools

    @{decorator}
    def helper(x):
        return x + 1

    def f(x):
        return helper(x)
    """
    assert fp(src) != fp(src.replace("x + 1", "x + 100"))


def test_singledispatch_registrations_count():
    src = """
    import functools

    @functools.singledispatch
    def helper(x):
        return x

    @helper.register
    def _(x: int):
        return x + 1

    def f(x):
        return helper(x)
    """
    assert fp(src) != fp(src.replace("x + 1", "x + 2"))


def test_dotted_library_import_in_a_body_imports_nothing():
    code = ("import sys, nbcache\n"
            "def f(x):\n    from numpy.linalg import norm\n    import pandas.io.formats\n    return norm(x)\n"
            "nbcache.fingerprint(f)\n"
            "print('numpy' in sys.modules, 'pandas' in sys.modules)")
    assert run_python(code).split() == ["False", "False"]


def test_metaclass_counts():
    src = """
    class Meta(type):
        def create(cls):
            return 1

    class C(metaclass=Meta):
        pass

    def f():
        return C.create()
    """
    assert fp(src) != fp(src.replace("return 1", "return 2"))


def test_enum_flags_are_stable_and_their_members_count():
    src = """
    import enum

    class Perm(enum.Flag):
        R = 1
        W = 2

    def f(p):
        return p & Perm.R
    """
    ns = define(src)
    before = fingerprint(ns["f"])
    ns["Perm"].R | ns["Perm"].W  # creates a pseudo-member, which enum caches on the class
    assert fingerprint(ns["f"]) == before
    assert fp(src) != fp(src.replace("W = 2", "W = 4"))


def test_cached_property_body_counts():
    src = """
    import functools

    class C:
        @functools.cached_property
        def p(self):
            return 1

    def f():
        return C().p
    """
    assert fp(src) != fp(src.replace("return 1", "return 2"))


def test_too_deep_a_global_makes_the_step_run_uncached(cache_dir):
    class Node:
        def __init__(self, v, nxt):
            self.v, self.next = v, nxt

    chain = None
    for i in range(3000):
        chain = Node(i, chain)
    ns = define("def head(n):\n    return CHAIN.v + n\n", CHAIN=chain)
    with pytest.warns(nbcache.CacheWarning, match="nested too deeply"):
        assert nbcache.step(ns["head"])(1) == 3000
