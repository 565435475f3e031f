"""``import nbcache`` opens the default cache's store and reads its key, if the directory holds a cache
already, so the first step finds them ready: nothing is created by it, no key is made, it never waits long
for an index another process keeps locked, and what is set after the import still counts."""

from __future__ import annotations

import os
import queue
import secrets
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

from .conftest import run_python

KEY_A, KEY_B = secrets.token_hex(32), secrets.token_hex(32)


def _env(tmp_path: Path, directory: Path, **extra: str) -> dict[str, str]:
    env = {"NBCACHE_DIR": str(directory), "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": "",
           "NBCACHE_KEY_FILE": "", "NBCACHE_KEY": ""}
    return {**env, **extra}


def test_import_opens_an_existing_cache_and_the_first_call_is_served(tmp_path):
    directory = tmp_path / "cache"
    store = f"""
import nbcache
@nbcache.step
def add(a, b=2):
    return a + b
print(add(1), nbcache.runs()[-1].cached)
"""
    assert run_python(store, env=_env(tmp_path, directory, NBCACHE_KEY=KEY_A)).split() == ["3", "False"]
    out = run_python(f"""
import sys, nbcache
from nbcache.cache import default_cache
print(default_cache()._warming.thread is None, "cloudpickle" in sys.modules)  # done, and nothing more ahead
print(any(str(s.directory) == {str(directory)!r} for s in default_cache()._stores.values()))
""" + store.replace("import nbcache\n", "", 1), env=_env(tmp_path, directory, NBCACHE_KEY=KEY_A))
    assert out.split() == ["True", "False", "True", "3", "True"]


def test_import_does_not_wait_for_an_index_another_process_keeps_locked(tmp_path):
    """The opening writes to the index: while another process holds its write lock, the import goes on
    (after ``warming.WAIT_S``) instead of waiting with it, and the first step, once the lock is let go, is
    served from the cache."""
    directory = tmp_path / "cache"
    env = {**os.environ, **_env(tmp_path, directory, NBCACHE_KEY=KEY_A)}
    step = "import nbcache\n@nbcache.step\ndef add(a, b=2):\n    return a + b\n"
    run_python(step + "add(1)", env=env)
    lock = sqlite3.connect(directory / "store" / "cache.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # (a long clear or evict in another process)
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\n" + step.replace("\n@", "\nprint('imported', flush=True)\n@", 1)
         + "sys.stdin.readline()\nprint(add(1), nbcache.runs()[-1].cached)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    said: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: said.put(child.stdout.readline()), daemon=True).start()
    try:  # with the lock still held (diskcache itself would wait 60 s for it; the import waits 1 s)
        assert said.get(timeout=30).strip() == "imported"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
        out, err = child.communicate("go\n", timeout=120)
    assert (out.split(), child.returncode) == (["3", "True"], 0), err


def test_import_creates_nothing_and_makes_no_key(tmp_path):
    directory = tmp_path / "nowhere"
    out = run_python("""
import sys, nbcache
from nbcache.cache import default_cache
print(default_cache()._warming.thread is None, "diskcache" in sys.modules, "cloudpickle" in sys.modules,
      "numpy" in sys.modules, "IPython" in sys.modules)
""", env=_env(tmp_path, directory))
    assert out.split() == ["True", "False", "False", "False", "False"]
    assert not directory.exists() and not (tmp_path / "home").exists()
    directory.mkdir()
    (directory / "store").mkdir()  # a cache directory, but no key anywhere yet: none is made ahead of use
    run_python("import nbcache\nfrom nbcache.cache import default_cache\ndefault_cache()._warming.wait()",
               env=_env(tmp_path, directory))
    assert not (tmp_path / "home").exists()


def test_a_key_set_after_the_import_is_the_one_used(tmp_path):
    directory = tmp_path / "cache"
    directory.joinpath("store").mkdir(parents=True)
    out = run_python(f"""
import os, nbcache
from nbcache.cache import default_cache
default_cache()._warming.wait()  # it read KEY_A ahead
os.environ["NBCACHE_KEY"] = {KEY_B!r}
print(default_cache().key.hex())
""", env=_env(tmp_path, directory, NBCACHE_KEY=KEY_A))
    assert out.strip() == KEY_B
    out = run_python("""
import nbcache
from nbcache.cache import default_cache
default_cache()._warming.wait()
print(default_cache().key.hex())
""", env=_env(tmp_path, directory, NBCACHE_KEY=KEY_A))
    assert out.strip() == KEY_A  # nothing changed: the key read ahead is used
    assert os.path.isdir(directory / "store")


def test_a_fifo_in_place_of_the_history_never_holds_up_the_import_nor_a_step(tmp_path):
    directory = tmp_path / "cache"
    env = _env(tmp_path, directory, NBCACHE_KEY=KEY_A)
    step = "import nbcache\n@nbcache.step\ndef add(a, b=2):\n    return a + b\n"
    run_python(step + "add(1)", env=env)
    (directory / "runs.jsonl").unlink()
    os.mkfifo(directory / "runs.jsonl")  # (opened to write, a FIFO waits for a reader: there is none)
    proc = subprocess.run([sys.executable, "-W", "always", "-c", step + "print(add(1), add(5))"],
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
    assert (proc.returncode, proc.stdout.split()) == (0, ["3", "7"]), proc.stderr
    assert proc.stderr.count("could not be recorded") == 2


def test_a_miss_without_a_remote_makes_no_team_cache(tmp_path):
    """Nothing of the team cache is imported or made on a miss where no remote is set (it costs a fresh
    process's first miss); ``NBCACHE_REMOTE`` set after the import is still read when the next call needs it."""
    from nbcache.remote import REMOTE_ENV

    out = run_python(f"""
import os, sys, nbcache
from nbcache.cache import default_cache
assert nbcache.step(lambda x: x + 1, name="inc")(1) == 2
print("nbcache.teamcache" in sys.modules, default_cache()._team is None)
os.environ[{REMOTE_ENV!r}] = {str(tmp_path / "team")!r}
assert nbcache.step(lambda x: x + 2, name="inc2")(1) == 3
assert default_cache().team.flush(30)
print(len(list(os.scandir({str(tmp_path / "team")!r}))) > 0)
""", env=_env(tmp_path, tmp_path / "cache", **{REMOTE_ENV: ""}))
    assert out.split() == ["False", "True", "True"]


def test_a_first_hit_reading_only_modules_functions_and_plain_values_imports_no_hashing_plugin(tmp_path):
    """numpy's hashing plugin is imported when a numpy value is first hashed, not because numpy was imported:
    a step that reads ``np`` and a helper but hashes no array is served without it (a first hit's 0.3 to
    0.5 ms), under the same key as a process that loaded it."""
    directory = tmp_path / "cache"
    source = """
import sys, numpy as np, nbcache

def helper(n):
    return int(np.arange(n).sum())

@nbcache.step
def total(n=4):
    return helper(n) + 1

{before}
print(total(), nbcache.runs()[-1].cached, "nbcache._hashing_numpy" in sys.modules, nbcache.runs()[-1].key)
"""
    env = _env(tmp_path, directory, NBCACHE_KEY=KEY_A)
    loaded = run_python(source.format(before="nbcache.hash_value(np.zeros(1))"), env=env).split()
    assert loaded[:3] == ["7", "False", "True"]
    served = run_python(source.format(before=""), env=env).split()
    assert served == ["7", "True", "False", loaded[3]]
