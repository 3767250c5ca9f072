"""SharedTable, compiled and reference: the API, key and value rules, the file
format (one format: each implementation reads the other's files, byte for
byte the same), validation (a corrupt or hostile file is a ValueError, never
a crash: fuzzed with hypothesis), publish/reclamation across processes (fork
and spawn), and nothing left in /dev/shm afterwards."""

import gc
import itertools
import multiprocessing
import os
import signal
import stat
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastkv
import fastkv._core
import fastkv.reference
from fastkv import _shm

IMPLS = {"compiled": fastkv._core.SharedTable, "reference": fastkv.reference.SharedTable}
TIMEOUT = 60
_names = itertools.count()


@pytest.fixture(params=sorted(IMPLS))
def cls(request):
    return IMPLS[request.param]


@pytest.fixture
def name(request):
    """A fresh table name; the test fails if any file of it is left behind."""
    n = f"t{os.getpid()}-{next(_names)}"
    yield n
    left = _shm.table_files(n)
    for _ in range(40):      # a close racing the test's end (threads) gets 2 s
        if not left:
            break
        time.sleep(0.05)
        left = _shm.table_files(n)
    _shm.sweep_if_dead(_shm.control_path(n))
    assert not left, f"leaked: {left}"


def other(cls):
    return IMPLS["reference"] if cls is IMPLS["compiled"] else IMPLS["compiled"]


# -- the API ----------------------------------------------------------------------


def test_read_api(cls, name):
    data = {"a": 1, "b": [1, 2.5, "x", None, True], (1, "z"): {"q": b"x"}, b"k": "é", -5: (1, (2,))}
    with cls.create(name, data) as t:
        assert len(t) == 5 and list(t) == list(data) and t.to_dict() == data
        assert t["a"] == 1 and t.get("missing") is None and t.get("missing", 7) == 7
        assert "a" in t and "zz" not in t and [] != t
        assert list(t.keys()) == list(data) and list(t.values()) == list(data.values())
        assert list(t.items()) == list(data.items())
        assert t.get_many(["a", "nope", -5], 0) == [1, 0, (1, (2,))]
        assert t == data and t != {"a": 1}
        assert "generation=1" in repr(t) and "len=5" in repr(t)
        with pytest.raises(KeyError) as e:
            t["nope"]
        assert e.value.args == ("nope",)
        with pytest.raises(TypeError):
            t.get([1])  # unhashable, as for dict
        with pytest.raises(TypeError):
            hash(t)
        assert isinstance(t, fastkv.reference.Mapping)
    with pytest.raises(fastkv.ClosedError):
        t["a"]
    with pytest.raises(fastkv.ClosedError):
        t.put("a", 1)
    t.close()  # idempotent
    with pytest.raises(TypeError):
        cls()



def test_dict_parity(cls, name):
    """What a dict user writes works as for a dict (the result a dict where a
    SharedTable would need a name), or is a clear TypeError (fromkeys)."""
    data = {"a": 1, 0: "zero", 1: "one", ("t", 2): [1.5, None], b"b": {"x": True}}
    with cls.create(name, data) as t:
        items = t.items()
        # items view membership, as dict's: never unpacks a non-pair
        for probe in (1, "a", (), ("a",), ("a", 1, 2), [("a", 1)], ("a", 1), ("a", 2), (1, "one"),
                      (True, "one"), (1.0, "one"), ("nope", None), ((("t", 2)), [1.5, None]), (1.5, "x")):
            assert (probe in items) == (probe in data.items()), probe
        with pytest.raises(TypeError):
            ([], 1) in items   # an unhashable key, as dict
        # copy(): an independent dict of one snapshot
        c = t.copy()
        assert type(c) is dict and c == data
        c["a"] = 99
        assert t["a"] == 1
        # | gives a dict, either side, the right operand's values winning
        other = {"a": 2, "new": 3}
        assert type(t | other) is dict and list((t | other).items()) == list((data | other).items())
        assert type(other | t) is dict and list((other | t).items()) == list((other | data).items())
        assert t | fastkv.reference.FrozenTable(other) == data | other
        with cls.open(name) as u:
            assert list((t | u).items()) == list(data.items())
        with pytest.raises(TypeError):
            t | [("a", 1)]
        with pytest.raises(TypeError):
            [("a", 1)] | t
        # reversed() over the table and its views: one snapshot, last first
        # (with keys 0 and 1 the sequence fallback would have read t[1], t[0])
        assert list(reversed(t)) == list(reversed(data))
        assert list(reversed(t.keys())) == list(reversed(data.keys()))
        assert list(reversed(t.values())) == list(reversed(data.values()))
        assert list(reversed(t.items())) == list(reversed(data.items()))
        # set operations on the keys and items views, == with dicts and views
        assert t.keys() & {"a", "q", 0} == data.keys() & {"a", "q", 0}
        assert {"a", "q"} & t.keys() == {"a"} and t.keys() | {"q"} == data.keys() | {"q"}
        assert t.keys() - {"a"} == data.keys() - {"a"} and t.keys() ^ {"a", "q"} == data.keys() ^ {"a", "q"}
        assert t.keys() == data.keys() and t.keys() == set(data) and t.keys().isdisjoint({"q"})
        assert t.items() & {("a", 1), ("a", 2)} == {("a", 1)}
        assert t == data and data == t and not (t != data) and t != {**data, "a": 2} and t != []
        assert t.values() != t.values()   # as dict's values views: identity
        # |= publishes (put_many: a mapping or pairs) and keeps the table
        u = t
        u |= {"a": 5}
        u |= [("p", 6)]
        assert u is t and t["a"] == 5 and t["p"] == 6 and t.info()["generation"] == 3
        with pytest.raises(TypeError):
            t |= 5
        # fromkeys makes no sense without a name: a TypeError that says what to do
        with pytest.raises(TypeError, match=r"SharedTable.create\(name, dict.fromkeys"):
            cls.fromkeys(["a"], 0)
        # repr stays a handle's: O(1), what is mapped, never the contents
        assert repr(t).startswith("<SharedTable ") and "len=6" in repr(t) and "'a'" not in repr(t)
        assert dict(t) == t.to_dict() and bool(t)
    with cls.create(name) as e:
        assert list(reversed(e)) == [] and e.copy() == {} and not e and e | {} == {}


def test_writes(cls, name):
    with cls.create(name, {"a": 1}) as t, other(cls).open(name) as u:
        t.put("b", 2)
        t.put("a", 10)
        assert u.to_dict() == {"a": 10, "b": 2}
        t.put_many({"c": 3, "a": 11}, d=4)
        t.put_many([("e", 5)])
        assert list(u.items()) == [("a", 11), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]
        assert t.delete("b") is True and t.delete("b") is False and t.delete(1.5) is False
        assert u.to_dict() == {"a": 11, "c": 3, "d": 4, "e": 5}
        u.put("f", 6)  # the other implementation writes the same file
        assert t["f"] == 6 and t.info()["generation"] == u.info()["generation"]
        with pytest.raises(ValueError):
            t.put_many([("x",)])
        with pytest.raises(TypeError):
            t.put_many([1])


def test_keys_fold_like_dict(cls, name):
    with cls.create(name, {1: "one", (1, "a"): "t", 2**70: "big", -(2**70): "neg", "\ud800": "sur"}) as t:
        assert t[True] == t[1.0] == t[1] == "one"
        assert t[(True, "a")] == t[(1.0, "a")] == "t"
        assert t[2**70] == "big" and t[-(2**70)] == "neg" and t["\ud800"] == "sur"
        assert t.get(1.5) is None and t.get(object()) is None and t.get(b"\x01") is None
        assert t.get("1") is None  # str and int never collide
        t.put(True, "true")
        assert t[1] == "true" and list(t)[0] == 1  # stored canonically: the int
        for bad in (1.5, None, frozenset(), object()):
            with pytest.raises(TypeError):
                t.put(bad, 1)


@pytest.mark.parametrize("value", [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**63, -(2**200), 1.5, float("inf"), "", "x" * 300,
    "é\ud800", b"", b"\0" * 300, [], (), {}, [1, [2, (3, {"a": [None]})]], {1: 2, "k": (1,), (1, 2): b"v"},
])
def test_values_round_trip(cls, name, value):
    with cls.create(name, {"k": value}) as t, other(cls).open(name) as u:
        assert t["k"] == value and type(t["k"]) is type(value)
        assert u["k"] == value


def test_nan_value(cls, name):
    with cls.create(name, {"k": float("nan")}) as t:
        assert t["k"] != t["k"]


def test_value_types_and_pickle(cls, name):
    with cls.create(name, {}) as t:
        for bad in (object(), {1, 2}, 1 + 2j, bytearray(b"x"), [object()], {"a": frozenset()}):
            with pytest.raises(TypeError):
                t.put("k", bad)
        a = []
        a.append(a)
        with pytest.raises(ValueError):
            t.put("k", a)  # cyclic: too deep
        assert len(t) == 0
    n2 = name + "p"
    with cls.create(n2, {"s": {1, 2}}, pickle=True) as t:
        assert t["s"] == {1, 2}
        t.put("c", 1 + 2j)
        with pytest.raises(ValueError, match="pickle=True"):
            other(cls).open(n2)
        with other(cls).open(n2, pickle=True) as u:
            assert u["c"] == 1 + 2j
    assert not _shm.table_files(n2)


def test_modes(cls, name):
    with cls.create(name, {"a": 1}) as t:
        t.put("b", 2)
        files = _shm.table_files(name)
        assert len(files) == 4  # control, the current index, the data, the writers' lock
        for f in files:
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f
    n2 = name + "m"
    with cls.create(n2, {"a": 1}, mode=0o640) as t:
        t.put("b", 2)
        for f in _shm.table_files(n2):
            assert stat.S_IMODE(os.stat(f).st_mode) == 0o640, f


def test_create_exists_and_unlink(cls, name, tmp_path):
    t = cls.create(name, {"a": 1})
    with pytest.raises(FileExistsError):
        cls.create(name, {})
    assert cls.unlink(name) is False  # live
    t.close()
    assert not _shm.table_files(name)
    with pytest.raises(FileNotFoundError):
        cls.open(name)
    path = str(tmp_path / "tbl")  # any path
    with cls.create(path, {"x": 1}) as t, other(cls).open(path) as u:
        assert u["x"] == 1 and t.path == path
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError):
        cls.create("bad name!", {})


def test_cache_is_bounded_and_invalidated(cls, name):
    with cls.create(name, {i: str(i) for i in range(10)}, cache_size=3) as t, other(cls).open(name) as w:
        for i in range(10):
            assert t[i] == str(i)
            assert t.info()["cached"] <= 3
        assert t[9] is t[9]  # cached: the same object
        w.put(9, "nine")
        assert t[9] == "nine" and t.info()["cached"] == 1
    with cls.create(name, {"a": 1}, cache_size=0) as t:
        assert t["a"] == 1 and t.info()["cached"] == 0


def test_iteration_is_one_snapshot(cls, name):
    with cls.create(name, {i: i for i in range(50)}) as t:
        it = iter(t.items())
        first = [next(it) for _ in range(5)]
        t.put_many({i: -i for i in range(100)})
        rest = list(it)
        assert first + rest == [(i, i) for i in range(50)]
        assert t[7] == -7 and len(t) == 100


def test_big_table_and_compaction(cls, name):
    n = 3000 if cls is IMPLS["compiled"] else 400
    with cls.create(name, {i: "v" * 20 for i in range(n)}) as t, other(cls).open(name) as u:
        for r in range(6):
            t.put_many({i: f"w{r}" * 10 for i in range(n)})  # garbage > live: compacted
        assert t.info()["garbage"] <= max(t.info()["data_size"] // 2, _shm.COMPACT_MIN)
        for i in range(0, n, 3):
            t.delete(i) if i % 100 == 0 else None
        d = {i: "w5" * 10 for i in range(n) if i % 300 != 0}
        assert t.to_dict() == d and u.to_dict() == d
        assert u.get_many(range(n)) == [d.get(i) for i in range(n)]


# -- one format ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(
    st.one_of(st.text(max_size=6), st.integers(), st.binary(max_size=5),
              st.tuples(st.integers(-3, 3), st.text(max_size=2))),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
                 | st.binary(max_size=5), lambda c: st.lists(c, max_size=3) | st.tuples(c, c)
                 | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=6),
    max_size=12))
def test_both_implementations_write_the_same_bytes(data):
    files = []
    for impl, mod in (("compiled", fastkv._core), ("reference", fastkv.reference)):
        codec = mod._SH_CODEC
        keyb, valb = (mod._sh_key_bytes, lambda v, m=mod: m._sh_value_bytes(v, False))
        changes = {keyb(k): valb(v) for k, v in data.items()}
        path = f"/dev/shm/fastkv-format-{os.getpid()}-{impl}-1"
        dpath = path[:-2] + "-d1"
        try:
            _shm.write_snapshot(path, 0o600, codec, None, changes, 0, seed=12345)
            with open(path, "rb") as f:
                files.append(f.read())
            if os.path.exists(dpath):
                with open(dpath, "rb") as f:
                    files[-1] += f.read()
        finally:
            for p in (path, dpath):
                if os.path.exists(p):
                    os.unlink(p)
    assert files[0] == files[1]
    # and the hash is the same in C and Python
    for kb in (b"", b"a", b"abcdefgh", b"abcdefghi" * 5):
        for seed in (0, 1, 2**64 - 1):
            assert fastkv._core._sh_hash(seed, kb) == fastkv.reference._sh_hash(seed, kb)
    blob = b"".join(files) + b"xyz"
    assert fastkv._core._sh_checksum(blob) == fastkv.reference._sh_checksum(blob)


def test_hash_ignores_pythonhashseed(cls, name):
    data = {f"k{i}": i for i in range(200)} | {(i, "t"): i for i in range(50)}
    with cls.create(name, data):
        for seed in ("0", "1", "12345"):
            code = (f"import fastkv._core, fastkv.reference\n"
                    f"for C in (fastkv._core.SharedTable, fastkv.reference.SharedTable):\n"
                    f"    t = C.open({name!r})\n"
                    f"    assert all(t[k] == v for k, v in {data!r}.items())\n"
                    f"    t.close()\n")
            env = dict(os.environ, PYTHONHASHSEED=seed)
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=TIMEOUT)


# -- validation: corrupt and hostile files ------------------------------------------------


_epochs = itertools.count(1000)


def _ctl(table):
    with open(table.path, "rb") as f:
        _, _, _, gen, token = _shm.CTL.unpack_from(f.read(_shm.CTL_SIZE), 0)
    return gen, token.decode()


def _publish_raw(table, index, data=None):
    """Publish ``index`` (and ``data`` as a new data file it is pointed at:
    epoch and length patched in first) as the table's next snapshot, as a
    hostile writer would."""
    gen, token = _ctl(table)
    if data is not None:
        epoch = next(_epochs)
        with open(_shm.data_path(table.path, token, epoch), "wb") as f:
            f.write(data)
        index = _point_at(index, epoch)
    snap = _shm.snapshot_path(table.path, token, gen + 1)
    with open(snap, "wb") as s:
        s.write(index)
    with open(table.path, "r+b") as f:
        f.seek(_shm.GEN_OFFSET)
        f.write(struct.pack("<Q", gen + 1))
    os.unlink(_shm.snapshot_path(table.path, token, gen))
    return epoch if data is not None else None


def _current_bytes(table):
    """(index, data) of the published snapshot."""
    gen, token = _ctl(table)
    with open(_shm.snapshot_path(table.path, token, gen), "rb") as s:
        index = s.read()
    epoch, data_len = struct.unpack_from("<QQ", index, 48)
    with open(_shm.data_path(table.path, token, epoch), "rb") as d:
        return index, d.read()[:data_len]


def _point_at(index, epoch):
    """``index`` naming data file ``epoch``, its header checksum fixed."""
    index = bytearray(index)
    if len(index) >= 56:
        struct.pack_into("<Q", index, 48, epoch)
    return _fix_head_sum(index)


def _fix_head_sum(raw):
    raw = bytearray(raw)
    if len(raw) >= _shm.HEADER_SIZE:
        struct.pack_into("<Q", raw, _shm.HEAD_SUM_AT, _shm.checksum(bytes(raw[:_shm.HEAD_SUM_AT])))
    return bytes(raw)


def _exercise(t):
    """Every read either works or raises ValueError."""
    for op in (len, list, lambda t: t.to_dict(), lambda t: list(t.items()),
               lambda t: [t.get(k) for k in ("a", "b", 1, (1, "x"), b"z", "missing")],
               lambda t: t.get_many(["a", 1]), lambda t: "a" in t, lambda t: t.put("new", 1)):
        try:
            op(t)
        except ValueError:
            pass


FUZZ_DATA = {"a": 1, "b": [1, "two", 3.0, None], 1: {"k": (b"v", True)}, (1, "x"): "é" * 3, b"z": 2**80}


@pytest.fixture(scope="module")
def fuzz_tables():
    """One table per implementation, reused by the fuzz examples."""
    made = {}
    for impl, c in IMPLS.items():
        n = f"fuzz{os.getpid()}-{impl}"
        t = c.create(n, FUZZ_DATA)
        made[impl] = (t, _current_bytes(t))
    yield made
    for t, _ in made.values():
        t.close()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("extend"), st.integers(1, 64), st.integers(0, 255)),
    st.tuples(st.just("u64"), st.integers(0, 10**6), st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(impl=st.sampled_from(sorted(IMPLS)), target=st.sampled_from(["index", "data"]),
       mutations=st.lists(mutation, min_size=1, max_size=4), hostile=st.booleans())
def test_fuzz_mutated_files(fuzz_tables, impl, target, mutations, hostile):
    t, (good_index, good_data) = fuzz_tables[impl]
    raw = bytearray(good_index if target == "index" else good_data)
    for kind, pos, arg in mutations:
        if kind == "extend":
            raw += bytes([arg]) * pos
            continue
        if not raw:
            break
        pos %= len(raw)
        if kind == "flip":
            raw[pos] ^= 1 << arg
        elif kind == "set":
            raw[pos] = arg
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "u64" and pos + 8 <= len(raw):
            struct.pack_into("<Q", raw, pos & ~7, arg)
    epoch = next(_epochs)
    if target == "index":
        index, data = raw, good_data
    else:
        index, data = good_index, raw
    index = _point_at(index, epoch) if target == "data" or hostile else bytes(index)
    if hostile:  # a writer who knows the format: the header checksum passes
        index = _fix_head_sum(index)
    gen, token = _ctl(t)
    with open(_shm.data_path(t.path, token, epoch), "wb") as f:
        f.write(data)
    _publish_raw(t, index)
    _exercise(t)
    for c in IMPLS.values():
        try:
            u = c.open(t.path, verify=True)
        except ValueError:
            continue
        with u:  # verified: only files whose checksums agree get here
            _exercise(u)
    os.unlink(_shm.data_path(t.path, token, epoch))
    _publish_raw(t, good_index, good_data)  # a later good publish heals it
    assert t.to_dict() == FUZZ_DATA


def test_hostile_record_fields(cls, name):
    """The record fast path (a dict's short str keys and values decoded in
    its loop) checks what the general path does: non-ASCII bytes in an ASCII
    str, a length past the entry and an unhashable dict key are ValueError."""
    rec = {"name": "ab", "xy": "cd"}
    enc = fastkv._core._sh_value_bytes(rec, False)
    assert enc == fastkv.reference._sh_value_bytes(rec, False)
    with cls.create(name, {"r": rec}) as t:
        index, data = _current_bytes(t)
        assert data.count(enc) == 1
        for bad, msg in ((enc.replace(b"cd", b"c\xff"), "ASCII"),
                         (enc.replace(b"\x02cd", b"\x7fcd"), "past its entry"),
                         (enc.replace(b"\x06\x02xy", b"\x09\x02\x00\x00"), "unhashable")):
            assert len(bad) == len(enc) and bad != enc
            _publish_raw(t, index, data.replace(enc, bad))
            for u in (t, other(cls).open(t.path)):
                with pytest.raises(ValueError, match=msg):
                    u["r"]
                with pytest.raises(ValueError, match=msg):
                    list(u.values())
                if u is not t:
                    u.close()
        _publish_raw(t, index, data)
        assert t["r"] == rec


def test_foreign_and_truncated_files(cls, name, tmp_path):
    with cls.create(name, {"a": 1}) as t:
        _publish_raw(t, *_current_bytes(t))  # the data file now has an epoch of its own (1000+)
        good, data = _current_bytes(t)
        for raw, msg in ((b"", "shorter"), (good[:50], "shorter"), (b"X" * 200, "magic"),
                         (good[:-1], "header says"), (good + b"\0", "header says"),
                         (good[:8] + b"\x09" + good[9:], "version"),
                         (good[:20] + b"\xff" + good[21:], "checksum"),
                         (_point_at(good, 12345), "data file 12345 is missing")):
            _publish_raw(t, raw)
            with pytest.raises(ValueError, match=msg):
                t["a"]
        # a data file shorter than the header says
        _publish_raw(t, good, data[:-8])
        with pytest.raises(ValueError, match="data file has"):
            t["a"]
        # the body is checked only with verify=True
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 1
        _publish_raw(t, good, bytes(flipped))
        t.get("a", 0)
        with pytest.raises(ValueError, match="checksum"):
            other(cls).open(name, verify=True)
        _publish_raw(t, good, data)
        assert t["a"] == 1
    bad = tmp_path / "ctl"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="control file"):
        cls.open(str(bad))
    bad.write_bytes(b"short")
    with pytest.raises(ValueError, match="control file"):
        cls.open(str(bad))


# -- differential: SharedTable against a dict, writers in two implementations ------------------

ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 30), st.integers()),
    st.tuples(st.just("put"), st.text(max_size=3), st.lists(st.text(max_size=3), max_size=3)),
    st.tuples(st.just("delete"), st.integers(0, 30), st.none()),
    st.tuples(st.just("put_many"), st.dictionaries(st.integers(0, 40), st.integers(), max_size=20), st.none()),
), max_size=25)


@settings(max_examples=30, deadline=None)
@given(ops=ops, writer_flips=st.lists(st.booleans(), min_size=25, max_size=25))
def test_differential_against_dict(ops, writer_flips):
    n = f"diff{os.getpid()}-{next(_names)}"
    a = IMPLS["compiled"].create(n, {})
    b = IMPLS["reference"].open(n)
    oracle = {}
    try:
        for (op, k, v), flip in zip(ops, writer_flips):
            w = b if flip else a
            if op == "put":
                w.put(k, v)
                oracle[k] = v
            elif op == "delete":
                assert w.delete(k) == (k in oracle)
                oracle.pop(k, None)
            else:
                w.put_many(k)
                oracle.update(k)
            for t in (a, b):
                assert list(t.items()) == list(oracle.items())
                assert len(t) == len(oracle)
                for key in list(oracle)[:5] + [99, "zz"]:
                    assert t.get(key, "miss") == oracle.get(key, "miss")
    finally:
        a.close()
        b.close()
    assert not _shm.table_files(n)


# -- across processes ---------------------------------------------------------------------


def _worker_read_write(impl, name, worker, writer, q):
    try:
        t = IMPLS[impl].open(name)
        assert t["config"] == {"workers": 8}
        assert all(t[i] == i * i for i in range(500))
        if writer:
            t.put("written_by", worker)
        else:
            deadline = time.monotonic() + TIMEOUT
            while t.get("written_by") is None:  # one shared-memory load per read notices it
                assert time.monotonic() < deadline, "the write never became visible"
                time.sleep(0.005)
        t.put_many({f"w{worker}": os.getpid()})
        q.put((worker, t.get("written_by"), os.getpid()))
        t.close()
    except BaseException as e:
        q.put((worker, repr(e), None))


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_gunicorn_style_workers(impl, name):
    """A parent creates the table (as a --preload app would), 4 forked and 4
    spawned workers open it and read, one writes, all see the write, every
    worker's own put lands (writers lose nothing), nothing is left behind."""
    t = IMPLS[impl].create(name, {"config": {"workers": 8}, **{i: i * i for i in range(500)}})
    procs = []
    q = multiprocessing.get_context("spawn").Queue()
    for worker in range(8):
        ctx = multiprocessing.get_context("fork" if worker < 4 else "spawn")
        p = ctx.Process(target=_worker_read_write, args=(impl, name, worker, worker == 5, q))
        p.start()
        procs.append(p)
    results = [q.get(timeout=TIMEOUT) for _ in procs]
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert sorted(r[0] for r in results) == list(range(8))
    assert all(r[1] == 5 for r in results), results
    assert t["written_by"] == 5
    assert {f"w{r[0]}": r[2] for r in results}.items() <= t.to_dict().items()
    t.close()
    assert not _shm.table_files(name)


def _concurrent_writer(impl, name, worker, n):
    t = IMPLS[impl].open(name)
    for i in range(n):
        t.put(f"{worker}-{i}", i)
    t.close()


def test_concurrent_writers_lose_nothing(name):
    t = IMPLS["compiled"].create(name, {})
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_concurrent_writer, args=(impl, name, w, 25))
             for w, impl in enumerate(["compiled", "reference", "compiled"])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert t.to_dict() == {f"{w}-{i}": i for w in range(3) for i in range(25)}
    assert len(_shm.table_files(name)) == 4  # only the current index and data remain
    t.close()


KILLED_WRITER = """
import os, signal, sys
from fastkv import _shm
import fastkv._core, fastkv.reference
cls = {"compiled": fastkv._core.SharedTable, "reference": fastkv.reference.SharedTable}[sys.argv[1]]
t = cls.open(sys.argv[2])
_shm.before_publish = lambda path: os.kill(os.getpid(), signal.SIGKILL)
t.put("half", 1)
"""


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_writer_killed_mid_publish(impl, name):
    t = IMPLS[impl].create(name, {"a": 1})
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, impl, name], timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL
    assert "half" not in t and t["a"] == 1  # the complete old snapshot
    assert len(_shm.table_files(name)) == 5  # + the killed writer's unpublished index
    t.put("b", 2)  # the lock died with the writer; the leftover is overwritten
    assert t.to_dict() == {"a": 1, "b": 2}
    assert len(_shm.table_files(name)) == 4
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, impl, name], timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL
    t.close()  # the last user: the leftover goes too
    assert not _shm.table_files(name)


def test_all_users_killed_then_swept(cls, name):
    code = (f"import os, signal, fastkv._core, fastkv.reference\n"
            f"t = fastkv.{'_core' if cls is IMPLS['compiled'] else 'reference'}.SharedTable.create({name!r}, {{'a': 1}})\n"
            f"t.put('b', 2)\n"
            f"os.kill(os.getpid(), signal.SIGKILL)\n")
    p = subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT)
    assert p.returncode == -signal.SIGKILL
    assert _shm.table_files(name)
    with cls.open(name) as t:  # a dead table still opens...
        assert t.to_dict() == {"a": 1, "b": 2}
    assert not _shm.table_files(name)  # ...and its last closer removes it
    subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT)
    with cls.create(name, {"fresh": 1}) as t:  # create sweeps a dead one
        assert t.to_dict() == {"fresh": 1}
    subprocess.run([sys.executable, "-c", code], timeout=TIMEOUT)
    assert cls.unlink(name) is True
    assert not _shm.table_files(name)


def _spawned_reader(t, q):
    q.put(t.to_dict())
    t.close()


def test_pickles_as_a_reopen(cls, name):
    with cls.create(name, {"a": [1]}) as t:
        ctx = multiprocessing.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_spawned_reader, args=(t, q))
        p.start()
        assert q.get(timeout=TIMEOUT) == {"a": [1]}
        p.join(TIMEOUT)
        assert p.exitcode == 0


def test_fork_child_inherits_the_table(cls, name):
    with cls.create(name, {"a": 1}) as t:
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            code = 1
            try:
                t.put("child", os.getpid())
                t.close()  # the parent still holds it: nothing removed
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert t["child"] == pid


def _hold_until(t, ready, go):
    assert t["a"] == 1
    ready.set()
    go.wait(TIMEOUT)     # then returns: multiprocessing ends the child in os._exit


def test_fork_child_outliving_the_close_removes_the_files_at_its_exit(cls, name):
    # A multiprocessing fork child ends in os._exit (no atexit): a table it
    # inherited and never closed kept its files in /dev/shm when the parent
    # had closed first, until the next create of the name. multiprocessing's
    # own exit finalizers now close it there: the last user sweeps.
    ctx = multiprocessing.get_context("fork")
    t = cls.create(name, {"a": 1})
    ready, go = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_until, args=(t, ready, go))
    p.start()
    try:
        assert ready.wait(TIMEOUT)
        t.close()
        assert _shm.table_files(name)       # the child still has it open
    finally:
        go.set()
        p.join(TIMEOUT)
    assert p.exitcode == 0
    assert not _shm.table_files(name)       # its exit closed it: files gone


def test_threads_refreshing_at_once_lose_no_write(cls, name):
    """Regression (a SIGBUS on the free-threaded build, files left behind on
    3.14): threads of one process that remap at once could leave the table
    holding one snapshot's map under another's generation; a writer that
    trusted it wrote generation G+1's file again with O_TRUNC under its
    readers and lost the writes published since. Every write must land and
    every read see a whole snapshot, with threads switching every 10 us.
    On free-threaded 3.13 the reference's variant also left its files in
    /dev/shm (6 runs in 100): see
    test_close_with_the_control_mapping_in_use_leaves_nothing."""
    from _support import run_threads

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with cls.create(name, {"a": 0, "b": 0}, cache_size=2) as t:
            def work(i):
                if i < 2:
                    for n in range(40):
                        t.put(f"w{i}-{n}", n)
                        t.put_many({"a": n, "b": n})
                else:
                    for n in range(400):
                        a, b = t.get_many(["a", "b"])
                        assert a == b
                        t.get(f"w{n % 2}-{n % 40}")

            run_threads(work, 5)
            assert {k: t[k] for k in t if k[0] == "w"} == {f"w{i}-{n}": n for i in range(2) for n in range(40)}
    finally:
        sys.setswitchinterval(old)


def test_segment_refuses_to_publish_from_a_stale_generation(name):
    """The last line of defence behind the one above: a publish from a
    generation that is no longer current raises instead of rewriting the
    live snapshot's file."""
    t = fastkv.reference.SharedTable.create(name, {"a": 1})
    try:
        seg = t._seg
        gen = seg.generation()
        t.put("a", 2)
        live = _shm.snapshot_path(seg.path, seg.token, gen + 1)
        before = os.stat(live)
        with pytest.raises(RuntimeError, match="stale|generation"):
            seg.publish(gen, lambda path: pytest.fail("wrote " + path), lambda g: pytest.fail("stored"))
        assert os.stat(live).st_ino == before.st_ino and os.stat(live).st_size == before.st_size
        assert t["a"] == 2 and seg.generation() == gen + 1
    finally:
        t.close()


GEN_READER = """
import sys, time
from fastkv import _shm
seg = _shm.Segment.open(sys.argv[1])
last, bad, n = seg.generation(), 0, 0
print("ready", flush=True)
deadline = time.monotonic() + 60
while last < int(sys.argv[2]) and time.monotonic() < deadline:
    g = seg.generation()
    n += 1
    if g == 0 or g < last:
        bad += 1
    last = max(last, g)
print(bad, n, last, flush=True)
seg.close()
"""


def test_generation_is_published_in_one_store(cls, name):
    """Regression (free-threaded 3.13: ValueError "the snapshot of generation
    0 is missing" from test_threads_share_one_table[reference], 1 run in
    600): the reference stored the generation with struct.pack_into, which
    zeroes the 8 bytes before it writes them, so a reader in another process
    (or thread, GIL off) saw generation 0. A reader process watches the
    counter while this one stores 2..N: it never sees 0 or a step back."""
    n = 500_000
    t = cls.create(name, {"a": 1})
    try:
        p = subprocess.Popen([sys.executable, "-c", GEN_READER, name, str(n)],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "ready"
            for g in range(2, n + 1):
                t._store_gen(g)
            out, _ = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        bad, reads, last = map(int, out.split())
        assert last == n and bad == 0, f"{bad} of {reads} reads saw 0 or a step back"
    finally:
        t.close()


def _segment_of(t):
    """The _shm.Segment of a table of either implementation."""
    return next(o for o in gc.get_referents(t) if isinstance(o, _shm.Segment))


def test_close_with_the_control_mapping_in_use_leaves_nothing(cls, name):
    """Regression (the reference's files left in /dev/shm by the thread tests
    on free-threaded 3.13, 6 runs in 100): mmap keeps a dup of the
    descriptor it maps, and the liveness flock belongs to the open file
    description that dup shares. close() could not unmap the control file
    while a buffer of it was exported (a reader on another thread; on 3.13t
    mmap's export count is not thread-safe: concurrent struct.unpack_from
    leaves it above zero for good), swallowed the BufferError, and the
    mapping's dup kept LOCK_SH: the last closer found the table in use and
    removed nothing. The memoryview here is that reader."""
    t = cls.create(name, {"a": 1})
    view = memoryview(_segment_of(t).ctl)
    try:
        t.close()
        assert not _shm.table_files(name)
        with pytest.raises(FileNotFoundError):
            cls.open(name)
    finally:
        view.release()


def test_close_racing_a_publish_leaves_nothing(cls, name, monkeypatch):
    """A close by another thread between a put's closed check and its
    writers' lock: the lock file was created again after the cleanup had
    removed the table's files, and stayed. Now the publish sees the close
    (ClosedError) and creates nothing."""
    t = cls.create(name, {"a": 1})
    lock = _shm.Segment.lock

    def close_first(seg):
        t.close()  # the other thread
        return lock(seg)

    monkeypatch.setattr(_shm.Segment, "lock", close_first)
    with pytest.raises(fastkv.ClosedError):
        t.put("b", 2)
    assert not _shm.table_files(name)


def test_close_during_a_publish_leaves_nothing(cls, name, monkeypatch):
    """A close by another thread while a put writes its snapshot: the
    cleanup ran under the publish (the compiled table then stored the
    generation through a NULL pointer; the reference raised AttributeError).
    Now the publish holds the table open until it ends: the put raises
    ClosedError and its unlock removes every file."""
    t = cls.create(name, {"a": 1})
    monkeypatch.setattr(_shm, "before_publish", lambda path: t.close())
    with pytest.raises(fastkv.ClosedError):
        t.put("b", 2)
    assert not _shm.table_files(name)


def test_close_during_a_refresh_is_closed_error(cls, name, monkeypatch):
    """A close by another thread while a read maps a new snapshot: the read
    raises ClosedError (was a ValueError naming a missing snapshot, or an
    AttributeError in the reference), and nothing stays mapped or on disk."""
    t = cls.create(name, {"a": 1})
    other_t = cls.open(name)
    other_t.put("a", 2)  # t's next read refreshes
    other_t.close()
    load = _shm.Segment.load

    def close_first(seg, gen_fn):
        t.close()  # the other thread
        return load(seg, gen_fn)

    monkeypatch.setattr(_shm.Segment, "load", close_first)
    with pytest.raises(fastkv.ClosedError):
        t["a"]
    assert not _shm.table_files(name)


def test_close_from_many_threads_at_once(cls, name):
    """close() is idempotent across threads: the control descriptor is closed
    once (a second os.close could close a descriptor another thread had just
    opened under the same number) and the files are removed. A stress guard:
    it did not fail on the old code (whose check-then-set window is a few
    bytecodes wide)."""
    from _support import run_threads

    for _ in range(20):
        t = cls.create(name, {"a": 1})
        run_threads(lambda i: t.close(), 4)
        assert not _shm.table_files(name)


def test_threads_share_one_table(cls, name):
    """Readers on several threads and writers on two, one SharedTable object
    (the free-threaded build's critical sections): every read sees a whole
    snapshot (a writer's put_many keeps "a" and "b" equal) and no write is
    lost."""
    from _support import run_threads

    with cls.create(name, {"a": 0, "b": 0}, cache_size=4) as t:
        def work(i):
            if i < 2:
                for n in range(15):
                    t.put_many({"a": n, "b": n})
                    t.put(f"w{i}-{n}", n)
            else:
                for _ in range(300):
                    items = dict(t.items())
                    assert items["a"] == items["b"]
                    assert t.get("a") is not None and len(t) >= 2
                    list(t.get_many(["a", "b", "w0-1"]))

        run_threads(work, 4)
        assert all(t[f"w{i}-{n}"] == n for i in range(2) for n in range(15))
