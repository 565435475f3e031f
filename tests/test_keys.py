"""keys.py, and what the key is for: a value is unpickled only if it was signed with the cache's key, so a
value planted in a cache directory, or written by another user, never runs its code; a team shares a cache
by sharing a key."""

from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nbcache import Cache, CacheWarning
from nbcache.frame import Damaged, Frame, load_frame
from nbcache.keys import SigningKeyError, load_key, parse_key, user_key_path

A = "a1" * 32
B = "b2" * 32


@pytest.fixture
def no_key(monkeypatch, tmp_path):
    """No key given: the user's own, in a config directory of this test's."""
    monkeypatch.delenv("NBCACHE_KEY", raising=False)
    monkeypatch.delenv("NBCACHE_KEY_FILE", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    return tmp_path / "config" / "nbcache" / "key"


def test_the_users_key_is_made_once_private_and_kept(no_key):
    assert user_key_path() == no_key
    key = load_key()
    assert len(key) == 32 and load_key() == key
    assert stat.S_IMODE(no_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(no_key.parent.stat().st_mode) == 0o700
    assert [p.name for p in no_key.parent.iterdir()] == ["key"]  # no temporary left behind


def test_processes_making_the_key_at_once_agree_on_one(no_key):
    code = "from nbcache.keys import load_key; print(load_key().hex())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
             for _ in range(6)]
    keys = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert keys == {no_key.read_text().strip()}


def test_a_key_given_by_environment_or_file_wins(no_key, monkeypatch, tmp_path):
    team = tmp_path / "team.key"
    team.write_text(B + "\n")
    monkeypatch.setenv("NBCACHE_KEY_FILE", str(team))
    assert load_key() == bytes.fromhex(B)
    monkeypatch.setenv("NBCACHE_KEY", A)
    assert load_key() == bytes.fromhex(A)
    assert not no_key.exists()  # the user's own key is made only when none is given


@pytest.mark.parametrize("text", ["", "not hex", "ab" * 8, "abc"])
def test_a_malformed_key_is_refused_saying_where_it_came_from(monkeypatch, text):
    monkeypatch.setenv("NBCACHE_KEY", text or " ")
    with pytest.raises(SigningKeyError, match="NBCACHE_KEY is not a key: expected an even number, at least 32, of hex digits"):
        load_key()
    with pytest.raises(TypeError):
        parse_key(b"ab" * 32, "here")


def test_a_missing_key_file_is_an_error_not_a_new_key(monkeypatch, tmp_path):
    monkeypatch.delenv("NBCACHE_KEY", raising=False)
    monkeypatch.setenv("NBCACHE_KEY_FILE", str(tmp_path / "nope"))
    with pytest.raises(SigningKeyError, match="NBCACHE_KEY_FILE names .*nope, which does not exist"):
        load_key()
    assert not (tmp_path / "nope").exists()


class Payload:
    """What a hostile value does when unpickled: here, leave a file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_value_signed_with_another_key_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    data = Frame(Payload(marker), key=bytes.fromhex(A)).to_bytes()
    for source in (data, open_bytes(tmp_path, data)):
        with pytest.raises(Damaged, match="signature does not match this cache's key"):
            load_frame(source, key=bytes.fromhex(B))
    assert not marker.exists()
    load_frame(data, key=bytes.fromhex(A))
    assert marker.exists()  # (so the payload would have run)


def open_bytes(tmp_path: Path, data: bytes):
    path = tmp_path / "value"
    path.write_bytes(data)
    return open(path, "rb")


def test_a_planted_pickle_with_a_forged_header_is_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    honest = Frame([1, 2], key=bytes.fromhex(A)).to_bytes()
    evil = pickle.dumps(Payload(marker), protocol=5)
    head = honest[:4 + 32] + len(evil).to_bytes(8, "little") + (0).to_bytes(4, "little")
    with pytest.raises(Damaged, match="signature"):
        load_frame(head + evil, key=bytes.fromhex(A))
    assert not marker.exists()


@pytest.mark.parametrize("field", ["pickle length", "buffer count"])
def test_huge_header_fields_are_damage_not_a_memoryerror(field, tmp_path):
    data = bytearray(Frame(np.arange(10), key=bytes.fromhex(A)).to_bytes())
    if field == "pickle length":
        data[36:44] = (2**62).to_bytes(8, "little")
    else:
        data[44:48] = (2**32 - 1).to_bytes(4, "little")
    for source in (bytes(data), open_bytes(tmp_path, bytes(data))):
        with pytest.raises(Damaged, match="header does not fit"):
            load_frame(source, key=bytes.fromhex(A))


def test_a_value_of_an_earlier_unsigned_format_is_told_apart():
    with pytest.raises(Damaged, match="written by an earlier nbcache, without a signature"):
        load_frame(b"NBC1" + bytes(60), key=bytes.fromhex(A))


STEP = textwrap.dedent('''
    import warnings
    from nbcache import step, runs

    @step
    def double(x):
        return 2 * x

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert double(21) == 42
    print(runs("double")[-1].reason, "|", "; ".join(str(w.message) for w in caught))
''')


def test_a_cache_written_under_another_key_is_recomputed_with_one_warning_then_kept(tmp_path):
    def run(key: str) -> str:
        env = {**os.environ, "NBCACHE_DIR": str(tmp_path / "cache"), "NBCACHE_KEY": key}
        return subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True,
                              check=True, timeout=120).stdout.strip()

    assert run(A) == "first run |"
    assert run(A) == "cache hit |"
    other = run(B)  # another user (or a tampered cache): nothing of it is trusted
    assert other.startswith("cached result was damaged | nbcache: the cached result of step 'double' is"
                            " damaged (its seal does not match this cache's key")
    assert run(B) == "cache hit |"


def test_a_cache_given_a_key_signs_with_it(tmp_path):
    from nbcache import MemoryStore, step

    shared = MemoryStore()
    mine, theirs = Cache(store=shared, key=A), Cache(store=shared, key=A)

    def f(x):
        return [x]

    step(cache=mine)(f)(1)
    assert step(cache=theirs)(f)(1) == [1] and theirs.runs()[-1].cached  # a teammate with the key
    with pytest.raises(SigningKeyError):
        Cache(key="short")
    with pytest.warns(CacheWarning, match="seal does not match this cache.s key"):
        assert step(cache=Cache(store=shared, key=B))(f)(1) == [1]  # a stranger without it


def test_an_entry_moved_under_another_key_or_edited_is_damage_never_another_steps_value(cache_dir):
    """Each value is validly signed; what an entry names, and under which key, is sealed too: swapping the
    entries of two calls (or editing one's fields) never makes a step return the other's value."""
    import json
    import sqlite3

    from nbcache import runs, step

    @step
    def square(x):
        return x * x

    assert (square(3), square(4)) == (9, 16)
    db = cache_dir / "store" / "cache.db"
    with sqlite3.connect(db) as con:
        rows = dict(con.execute("SELECT key, value FROM Cache WHERE key LIKE 'entry:%'").fetchall())
        (k3, e3), (k4, e4) = rows.items()
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (e4, k3))  # swap what the two keys name
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (e3, k4))
    with pytest.warns(CacheWarning, match="seal does not match"):
        assert square(3) == 9
    with pytest.warns(CacheWarning, match="seal does not match"):
        assert square(4) == 16
    assert (square(3), square(4)) == (9, 16) and runs()[-1].cached and runs()[-2].cached
    with sqlite3.connect(db) as con:  # an edit that keeps the JSON well formed: a longer duration
        key, text = con.execute("SELECT key, value FROM Cache WHERE key LIKE 'entry:%'").fetchone()
        record = json.loads(text)
        record["duration_s"] += 100
        con.execute("UPDATE Cache SET value = ? WHERE key = ?", (json.dumps(record), key))
    with pytest.warns(CacheWarning, match="seal does not match"):
        square(3), square(4)


@pytest.mark.parametrize("size", [10, 100_000], ids=["inline", "file"])
def test_a_value_copied_under_another_values_name_is_damage_never_served(cache_dir, size):
    """Values are signed with the name they are stored under: copying one step's validly signed value over
    another's (in the index, or its file) makes a recompute with one warning, never the wrong value."""
    import shutil
    import sqlite3

    from nbcache import step

    @step
    def full(x):
        return np.full(size, x)

    assert full(1)[0] == 1 and full(2)[0] == 2
    db = cache_dir / "store" / "cache.db"
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, value, filename FROM Cache WHERE key LIKE 'blob:%'").fetchall()
        (_, v1, f1), (_, v2, f2) = rows
        if size == 10:
            con.execute("UPDATE Cache SET value = ? WHERE value = ?", (v2, v1))
        else:
            shutil.copyfile(cache_dir / "store" / f2, cache_dir / "store" / f1)
    with pytest.warns(CacheWarning, match="signature does not match this cache's key and its name"):
        values = [full(1)[0], full(2)[0]]
    assert values == [1, 2] and full(1)[0] == 1 and full(2)[0] == 2
