"""The Cache object: which directory and store it uses, its notebook module, its listeners, and that two
caches in one process are independent."""

from __future__ import annotations

import os
import types

import pytest

import nbcache
from nbcache import Cache, MemoryStore, step
from nbcache.cache import default_cache
from nbcache.diskstore import DiskStore


def test_a_cache_follows_nbcache_dir_and_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("NBCACHE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    cache = Cache()
    assert cache.directory == tmp_path / ".nbcache"
    monkeypatch.setenv("NBCACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache.directory == tmp_path / "elsewhere"
    cache.set_directory(tmp_path / "mine")
    assert cache.directory == tmp_path / "mine"
    assert isinstance(cache.store(), DiskStore) and cache.store() is cache.store()  # opened once


def test_set_cache_dir_sets_the_default_cache(cache_dir):
    assert nbcache.cache_dir() == cache_dir == default_cache().directory
    with pytest.raises(TypeError, match="takes a path, not int"):
        nbcache.set_cache_dir(3)


def test_steps_given_a_cache_use_it_and_nothing_else(cache_dir):
    memory = Cache(store=MemoryStore())
    calls = []

    @step(cache=memory, ignore=["log"])
    def double(x, log):
        log.append(x)
        return 2 * x

    assert double(2, calls) == 4 and double(2, calls) == 4 and calls == [2]
    assert [r.state for r in memory.runs()] == [nbcache.Outcome.FIRST_RUN, nbcache.Outcome.HIT]
    assert not (cache_dir / "store").exists()  # the default cache saw nothing
    assert nbcache.runs() == []
    assert memory.clear() == 1
    double(2, calls)
    assert calls == [2, 2] and memory.runs()[-1].reason == "cached result was removed"


def test_step_refuses_something_that_is_not_a_cache():
    with pytest.raises(TypeError, match=r"@step\(cache=...\) takes an nbcache.Cache, not str"):
        step(cache=".nbcache")


def test_listeners_hear_each_run_while_they_live(cache_dir):
    cache = Cache(store=MemoryStore())
    heard = []

    class Listener:
        def on_run(self, run):
            heard.append(run.reason)

    listener = Listener()
    cache.events.subscribe(listener.on_run)

    @step(cache=cache)
    def one():
        return 1

    one()
    one()
    assert heard == ["first run", "cache hit"]
    del listener
    one()
    assert heard == ["first run", "cache hit"]


def test_a_listener_given_a_slot_replaces_the_one_before(cache_dir):
    cache = Cache(store=MemoryStore())
    heard = []

    class Listener:
        def __init__(self, name):
            self.name = name

        def on_run(self, run):
            heard.append(self.name)

    first, second = Listener("first"), Listener("second")
    cache.events.subscribe(first.on_run, slot="widget")
    cache.events.subscribe(second.on_run, slot="widget")

    @step(cache=cache)
    def one():
        return 1

    one()
    assert heard == ["second"]


def test_functions_come_back_into_the_cache_s_notebook_module(tmp_path):
    """A function defined in the notebook is stored as code and made again in the namespace of the
    notebook the cache is for, not in whatever __main__ is."""
    notebook = types.ModuleType("notebook")
    exec("K = 10\ndef scaled(x):\n    return x * K\n", vars(notebook))
    notebook.scaled.__module__ = "notebook"
    cache = Cache(tmp_path / "c", notebook=notebook)
    frame = cache.frame([notebook.scaled])
    store = cache.store()
    cache.put(store, "a", frame)
    (restored,) = cache.load(store, "a")
    assert restored is not notebook.scaled and restored.__globals__ is vars(notebook)
    notebook.K = 3
    assert restored(2) == 6  # reads the notebook's live globals
    with pytest.raises(KeyError):
        cache.load(store, "absent")


def test_an_unusable_directory_says_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="set NBCACHE_DIR or call nbcache.set_cache_dir"):
        Cache(blocker / "cache").store()
    assert os.path.exists(blocker)


def test_a_step_calling_a_step_of_another_cache_does_not_depend_on_that_caches_files(cache_dir, tmp_path):
    other = Cache(tmp_path / "other")
    memory = Cache(store=MemoryStore())

    @step(cache=other)
    def inner(n):
        return n * 2

    @step
    def outer(n):
        return inner(n) + 1

    @step(cache=memory)
    def top(n):
        return outer(n) * 10

    assert [outer(3), outer(4), outer(3)] == [7, 9, 7]
    assert [r.reason for r in nbcache.runs("outer")] == ["first run", "argument n changed", "cache hit"]
    assert top(3) == 70 and top(3) == 70 and top(4) == 90
    assert [r.reason for r in memory.runs()] == ["first run", "cache hit", "argument n changed"]
    assert [r.reason for r in nbcache.runs("outer")][3:] == ["cache hit", "cache hit"]  # in top's runs


def test_runs_and_clear_of_a_step_use_its_own_cache(cache_dir):
    memory = Cache(store=MemoryStore())

    @step(cache=memory)
    def double(x):
        return 2 * x

    double(1)
    assert [r.step for r in nbcache.runs(double)] == ["double"] and nbcache.runs("double") == []
    assert nbcache.clear(double) == 1


def test_a_cache_pickles_as_where_it_is_and_hashes_as_that(tmp_path):
    import cloudpickle

    mine = Cache(tmp_path / "c")
    back = cloudpickle.loads(cloudpickle.dumps(mine))
    assert back is not mine and back.directory == mine.directory
    assert cloudpickle.loads(cloudpickle.dumps(default_cache())) is default_cache()
    with pytest.raises(TypeError, match="give it a directory instead"):
        cloudpickle.dumps(Cache(store=MemoryStore()))
    assert nbcache.hash_value(mine) == nbcache.hash_value(Cache(tmp_path / "c"))
    assert nbcache.hash_value(mine) != nbcache.hash_value(Cache(tmp_path / "d"))
    assert nbcache.hash_value(Cache(store=MemoryStore())) != nbcache.hash_value(mine)
    assert Cache(store=MemoryStore()).directory is None


def test_a_step_pickled_before_steps_had_a_cache_still_runs(cache_dir):
    import cloudpickle

    @step
    def triple(x):
        return 3 * x

    del triple.__dict__["cache"]  # as a Step pickled by an nbcache without cache= comes back
    old = cloudpickle.loads(cloudpickle.dumps(triple))
    assert old(2) == 6 and old(2) == 6 and nbcache.runs("triple")[-1].cached


def test_a_cache_directory_removed_while_open_is_made_anew_and_what_is_stored_there_stays(tmp_path):
    """``rm -rf .nbcache`` while a kernel runs: the store kept its index open, and what it stored went into a
    file nobody would open again (lost at the next restart). The directory is made anew and used."""
    import shutil

    cache = Cache(tmp_path / "c")
    double = step(cache=cache, name="double")(lambda x: 2 * x)
    assert double(1) == 2
    shutil.rmtree(tmp_path / "c")
    assert double(1) == 2 and not cache.runs()[-1].cached
    again = Cache(tmp_path / "c")  # (another process, or this kernel restarted)
    assert step(cache=again, name="double")(lambda x: 2 * x)(1) == 2 and again.runs()[-1].cached


def test_an_entry_is_checked_by_its_seal_read_as_written_or_written_otherwise(tmp_path):
    """A hit checks an entry's seal over the text it was read from (not encoding the entry again); a text
    with the same fields written otherwise still checks, and a changed field or another key never does."""
    import json

    from nbcache.entry import Entry
    from nbcache.frame import Damaged

    cache = Cache(tmp_path / "c")
    assert step(cache=cache, name="double")(lambda x: 2 * x)(1) == 2
    store = cache.store()
    key = cache.runs()[-1].key
    text = store._cache.get("entry:" + key)
    read = Entry.from_json(text)
    assert read.unsealed and key.encode() + b"\n" + read.unsealed.encode() == read.sealed_text(key)
    cache.check_seal(key, read)
    respaced = Entry.from_json(json.dumps(json.loads(text), indent=1))
    assert respaced == read and not respaced.unsealed
    cache.check_seal(key, respaced)
    for changed in (text.replace('"step": "double"', '"step": "triple"'),
                    json.dumps({**json.loads(text), "duration_s": 99.0}),
                    json.dumps({"seal": "0" * 64, **{k: v for k, v in json.loads(text).items() if k != "seal"}})):
        with pytest.raises(Damaged):
            cache.check_seal(key, Entry.from_json(changed))
    with pytest.raises(Damaged):
        cache.check_seal("0" * 32, Entry.from_json(text))
    # text that cannot be encoded (a lone surrogate, from a team cache's record) or a seal that is no digest:
    # refused as damage, never an error that leaves the step uncached
    for odd in (text.replace('"step": "double"', '"step": "double\\ud800"'),
                text[: text.rindex('"seal"')] + '"seal": "\u00e9"}'):
        with pytest.raises(Damaged):
            cache.check_seal(key, Entry.from_json(odd))
