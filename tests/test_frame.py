"""frame.py and pickler.py: a value's bytes, checked on the way back, and functions of the notebook coming
back into the notebook they are loaded for (the module given, never a process-wide setting)."""

from __future__ import annotations

import io
import threading
import types

import numpy as np
import pytest

from nbcache.frame import Damaged, Frame, Unpicklable, load_frame
from nbcache.keys import load_key

KEY = load_key()  # (the suite's own key: conftest.py)


def notebook(source: str) -> types.ModuleType:
    """A module standing for a notebook's namespace, with ``source`` run in it as a cell would be."""
    module = types.ModuleType("__main__")
    exec(compile(source, "<cell>", "exec"), vars(module))
    return module


@pytest.mark.parametrize("value", [None, 1, "text", {"a": [1, 2.5]}, np.arange(10.0).reshape(2, 5)])
def test_a_frame_loads_back_from_bytes_and_from_a_file(value):
    data = Frame(value, key=KEY).to_bytes()
    for source in (data, io.BytesIO(data), _carried(data)):
        loaded = load_frame(source, key=KEY)
        if isinstance(value, np.ndarray):
            assert np.array_equal(loaded, value) and loaded.flags.writeable
        else:
            assert loaded == value


def test_the_identity_follows_the_bytes():
    assert Frame([1, 2], key=KEY).identity() == Frame([1, 2], key=KEY).identity() != Frame([1, 3], key=KEY).identity()


def test_the_identity_follows_the_content_of_small_buffers_and_the_length_of_big_ones():
    """A random generator's key array is an out-of-band buffer: two states alike but for it are two names."""
    small = [Frame(np.random.RandomState(seed), key=KEY) for seed in (1, 2)]
    assert small[0].buffers and small[0].pickled == small[1].pickled
    assert small[0].identity() != small[1].identity()
    big = [Frame(np.full(1 << 17, fill), key=KEY) for fill in (1.0, 2.0)]  # (its content is in its address)
    assert big[0].identity() == big[1].identity() != Frame(np.full((1 << 17) + 1, 1.0), key=KEY).identity()


@pytest.mark.parametrize("damage", ["truncate", "flip", "trail", "magic"])
def test_any_change_to_the_bytes_is_damage(damage):
    data = bytearray(Frame(np.arange(1000), key=KEY).to_bytes())
    if damage == "truncate":
        data = data[:-1]
    elif damage == "flip":
        data[-5] ^= 1
    elif damage == "trail":
        data += b"x"
    else:
        data[:4] = b"XXXX"
    for source in (bytes(data), io.BytesIO(bytes(data)), _carried(bytes(data))):
        with pytest.raises(Damaged):
            load_frame(source, key=KEY)


def _carried(data: bytes) -> memoryview:
    """``data`` as a team-cache hit gives a value its entry's object carries: a view of a piece of it."""
    whole = b"other values" + data + b"the entry's record"
    return memoryview(whole)[12:12 + len(data)]


def test_a_value_read_from_a_view_of_a_bigger_object_is_a_copy_of_its_own():
    """A team-cache hit reads a carried value from a view of the entry's object: the buffers are copied once,
    into memory of their own (writable, and not the object's: it is written into the local store after)."""
    value = np.arange(300_000.0)
    whole = bytearray(b"x" * 5 + Frame(value, key=KEY).to_bytes())
    view = memoryview(whole)[5:]
    loaded = load_frame(view, key=KEY)
    assert np.array_equal(loaded, value) and loaded.flags.writeable and not np.shares_memory(loaded, whole)
    loaded[:] = 0
    assert np.array_equal(load_frame(view, key=KEY), value)  # (the object is untouched)


def test_what_cannot_be_pickled_is_named():
    with pytest.raises(Unpicklable, match="_thread.lock") as info:
        Frame({"lock": threading.Lock()}, key=KEY)
    assert "lock" in info.value.reason


def test_an_open_file_is_never_stored(tmp_path):
    with open(tmp_path / "f.txt", "w") as f, pytest.raises(Unpicklable, match="a file object"):
        Frame(f, key=KEY)


def test_a_notebook_function_comes_back_living_in_the_notebook_it_is_loaded_for():
    first = notebook("SCALE = 3\ndef scaled(x):\n    return SCALE * x\n")
    data = Frame(first.scaled, notebook=first, by_value={id(first.scaled)}, key=KEY).to_bytes()
    second = notebook("SCALE = 10\n")  # the same notebook after a restart, SCALE since changed
    restored = load_frame(data, second, key=KEY)
    assert restored.__globals__ is vars(second) and restored(2) == 20


def test_a_notebook_class_is_stored_by_name_unless_the_cell_defines_it():
    nb = notebook("class Point:\n    def __init__(self, x):\n        self.x = x\n")
    point = nb.Point(1)
    by_name = Frame(point, notebook=nb, key=KEY).to_bytes()
    restored = load_frame(by_name, nb, key=KEY)
    assert type(restored) is nb.Point and restored.x == 1  # an instance of the live class
    with pytest.raises(Damaged, match="no longer defines Point"):
        load_frame(by_name, notebook("pass\n"), key=KEY)  # the notebook has no Point any more: recompute
    by_value = Frame(point, notebook=nb, by_value={id(nb.Point)}, key=KEY).to_bytes()
    assert load_frame(by_value, notebook("pass\n"), key=KEY).x == 1


def test_a_huge_pickle_length_in_a_sparse_file_is_proven_before_memory_is_taken(tmp_path):
    """A planted header may claim a pickle of any length the file (sparse, so free on disk) has: the
    signature is checked over it in pieces before any memory is taken for it."""
    import tracemalloc

    from nbcache.frame import signature_problem

    path = tmp_path / "value"
    path.write_bytes(Frame([1, 2, 3], key=KEY).to_bytes())
    size = 300 << 20
    with open(path, "r+b") as f:
        f.truncate(size)  # sparse
        f.seek(36)
        f.write((size - 48).to_bytes(8, "little") + (0).to_bytes(4, "little"))
    tracemalloc.start()
    try:
        with pytest.raises(Damaged, match="signature does not match"):
            load_frame(open(path, "rb"), key=KEY)
        assert "signature does not match" in signature_problem(open(path, "rb"), key=KEY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


PLAIN = [None, True, 7, 2.5, 1 + 2j, "text", b"bytes", (1, "a", None), [np.arange(5), 3.0],
         np.arange(12.0).reshape(3, 4), np.arange(12.0).reshape(3, 4).T, np.array(["a", "bc"]),
         np.array([1, 2], dtype="datetime64[s]"), np.zeros(3, dtype=">f4"), np.arange(6)[::2]]
NOT_PLAIN = [lambda x: x, [1, len], np.array([1, "a"], dtype=object), {"a": 1}, np.ma.masked_array([1, 2]),
             (1, (2, (3, (4,)))), list(range(17)), np.zeros(2, dtype=[("a", "f8"), ("b", "O")]),
             np.zeros(2, dtype=np.dtype("f8", metadata={"m": len})),  # (a dtype can hold any object)
             np.zeros(2, dtype=np.dtype((np.int32, {"names": ["a"], "formats": ["i4"], "titles": [len]})))]


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_a_plain_value_is_pickled_by_pickle_itself_to_the_same_bytes_cloudpickle_writes(value):
    """A step returning an array stores it without importing cloudpickle (8 ms of a process's first miss):
    pickle's own pickler writes the very bytes cloudpickle's would, so the blob is the same either way."""
    from nbcache.pickler import NotebookPickler, is_plain

    assert is_plain(value)
    written = []
    for plain in (True, False):
        out, buffers = io.BytesIO(), []
        pickler = NotebookPickler(out, notebook=None, plain=plain, protocol=5, buffer_callback=buffers.append)
        assert (type(pickler).__module__ == "_pickle") is plain
        pickler.dump(value)
        written.append((out.getvalue(), [bytes(b.raw()) for b in buffers]))
    assert written[0] == written[1]
    loaded = load_frame(Frame(value, key=KEY).to_bytes(), key=KEY)
    assert type(loaded) is type(value) and repr(loaded) == repr(value)


@pytest.mark.parametrize("value", NOT_PLAIN, ids=lambda v: type(v).__name__)
def test_code_objects_of_objects_and_deep_or_long_containers_are_not_plain(value):
    from nbcache.pickler import is_plain

    assert not is_plain(value)


def test_a_first_miss_returning_an_array_does_not_import_cloudpickle(tmp_path):
    from .conftest import run_python

    out = run_python("""
import sys, numpy as np, nbcache
@nbcache.step
def scaled(n):
    return np.arange(n) * 1.5
@nbcache.step
def doubler(n):
    return lambda x: 2 * x * n
print(scaled(4).sum(), "cloudpickle" in sys.modules, doubler(3)(1), "cloudpickle" in sys.modules)
""", env={"NBCACHE_DIR": str(tmp_path / "c")})
    assert out.split() == ["9.0", "False", "6", "True"]


STREAMED = [1, np.arange(1000), (np.zeros(0), np.arange(3.0), np.ones((300, 40))),
            {"a": np.arange(5, dtype=np.int8), "b": "text", "c": np.arange(70_000, dtype=np.int16)}]


@pytest.mark.parametrize("value", STREAMED, ids=["no buffer", "one", "empty, small, big", "unaligned"])
def test_a_value_checked_as_its_bytes_pass_is_refused_exactly_when_a_full_read_refuses_it(value):
    """What a team-cache copy is checked by as it is written (StreamCheck, in any pieces) finds a value wrong
    for exactly the changed bytes that make load_frame refuse it (its padding is no part of it for either)."""
    from nbcache.framecheck import StreamCheck, verify_frame

    frame = Frame(value, key=KEY)
    frame.name = "its address"
    data = frame.to_bytes()

    def streamed(data: bytes, piece: int, size: int | None) -> Damaged | None:
        check = StreamCheck(KEY, "its address", size)
        try:
            for start in range(0, len(data), piece):
                check.feed(data[start:start + piece])
        except Damaged as exc:
            return exc
        return check.problem()

    for piece in (1, 7, 4096, len(data)):
        assert streamed(data, piece, len(data)) is None and streamed(data, piece, None) is None
    assert verify_frame(data, key=KEY, name="its address") is None
    assert verify_frame(io.BytesIO(data), key=KEY, name="its address") is None
    refused = 0
    for at in sorted({*range(0, len(data), max(1, len(data) // 300)), *range(len(data) - 70, len(data))}):
        changed = bytearray(data)
        changed[at] ^= 1
        try:
            load_frame(bytes(changed), key=KEY, name="its address")
            full = False
        except Damaged:
            full = True
        assert (streamed(bytes(changed), 4096, len(data)) is not None) == full, at
        assert (streamed(bytes(changed), 7, None) is not None) == full, at
        assert (verify_frame(io.BytesIO(changed), key=KEY, name="its address") is not None) == full, at
        refused += full
    assert refused > 0
    for damaged in (data[:-1], data + b"x", data[:len(data) // 2]):
        assert streamed(damaged, 4096, None) is not None and streamed(damaged, 4096, len(damaged)) is not None
    assert streamed(data, 4096, len(data) + 1) is not None  # (not the size its entry said)
    assert "signature does not match" in str(StreamCheck(KEY, "another address", None).problem(data))
    once_wrong = StreamCheck(KEY, "its address", None)
    with pytest.raises(Damaged):
        once_wrong.feed(data + b"x")
    assert once_wrong.problem() is not None  # (stays wrong: nothing after it makes it right)


def test_a_value_signed_with_another_key_is_refused_before_its_buffers_are_read():
    """A copy from a team cache stops at the first read past the pickle: 64 MB of a value nobody here can
    trust are not downloaded."""
    from nbcache.frameformat import NotSigned
    from nbcache.framecheck import Checking, StreamCheck

    data = Frame(np.ones(1 << 20), key=b"another key, another team: 32 b").to_bytes()
    source = io.BytesIO(data)
    reading = Checking(source, StreamCheck(KEY, "", len(data)))
    with pytest.raises(NotSigned):
        while reading.read(1 << 16):
            pass
    assert source.tell() <= 1 << 16


def test_rows_a_value_claims_are_not_believed_before_its_signature_proves_them():
    """A blob planted in a team cache by someone without the key, the size its entry lists, claiming a row
    per 24 bytes: refused at its signature, having taken little more memory than its own rows."""
    import tracemalloc

    from nbcache.frameformat import HEAD, MAGIC, ROW, NotSigned
    from nbcache.framecheck import StreamCheck

    size = 8 << 20
    nbuf = (size - HEAD.size - 1) // ROW.size
    planted = HEAD.pack(MAGIC, bytes(32), size - HEAD.size - ROW.size * nbuf, nbuf) + ROW.pack(0, bytes(16)) * nbuf
    planted += bytes(size - len(planted))
    check = StreamCheck(KEY, "its address", size)
    tracemalloc.start()
    try:
        problem = check.problem(planted)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(problem, NotSigned) and peak < 3 * size
