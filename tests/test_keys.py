"""Key semantics are exactly dict's, on every table kind: 1/1.0/True are one
key (the first key object is kept), NaN is found by identity, insertion order
survives deletes and re-inserts, forced hash collisions, keys whose __hash__ or
__eq__ raise (the exception reaches the caller and the table stays consistent,
checked against a dict oracle), str and int subclasses, tables growing and
shrinking across resizes."""

import logging
import random

import pytest

from _support import EqError, HashError, HashKey, assert_same, crashing


def put_all(kind, t, d, pairs):
    for k, v in pairs:
        t.put(k, v)
        d[k] = v
    kind.settle(t)


# -- numeric collisions -----------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [(1, 1.0, True), (True, 1, 1.0), (1.0, True, 1), (0, 0.0, -0.0, False), (1, complex(1, 0))],
    ids=repr,
)
def test_equal_numbers_are_one_key_first_kept(kind, keys):
    t, d = kind.make(), {}
    put_all(kind, t, d, [(k, i) for i, k in enumerate(keys)])
    assert_same(t, d)
    assert len(t) == 1
    first = next(iter(t))
    assert type(first) is type(keys[0])
    for k in keys:
        assert k in t
        assert t[k] == len(keys) - 1
        assert t.get(k) == len(keys) - 1


def test_equal_numbers_in_constructor(kind):
    pairs = [(True, "a"), ("x", 0), (1.0, "b"), (1, "c")]
    t = kind.make(pairs)
    assert_same(t, dict(pairs))
    assert type(next(iter(t))) is bool


def test_equal_numbers_delete(kind):
    t, d = kind.make({1: "a", 2: "b"}), {1: "a", 2: "b"}
    t.delete(True)
    del d[True]
    kind.settle(t)
    assert_same(t, d)
    put_all(kind, t, d, [(1.0, "c")])
    assert_same(t, d)
    assert type(list(t)[-1]) is float


def test_hash_minus_one(kind):
    # hash(-1) == hash(-2) == -2 in CPython (-1 is the C error marker)
    assert hash(-1) == hash(-2)
    t, d = kind.make(), {}
    put_all(kind, t, d, [(-1, "m1"), (-2, "m2"), (HashKey(-1, "h"), "h"), (-1.0, "f")])
    assert_same(t, d)
    assert t[-1] == "f" and t[-2] == "m2" and t[HashKey(-1, "h")] == "h"


# -- NaN --------------------------------------------------------------------


def test_nan_found_by_identity(kind):
    nan = float("nan")
    other_nan = float("nan")
    t, d = kind.make({nan: 1}), {nan: 1}
    assert t[nan] == 1
    assert nan in t
    assert other_nan not in t
    assert t.get(other_nan) is None
    with pytest.raises(KeyError):
        t[other_nan]
    put_all(kind, t, d, [(other_nan, 2), (nan, 3)])
    assert_same(t, d)
    assert len(t) == 2
    assert t[nan] == 3 and t[other_nan] == 2
    t.delete(float("nan"))  # a third NaN: not there
    kind.settle(t)
    assert len(t) == 2
    t.delete(nan)
    kind.settle(t)
    assert list(t) == [other_nan]
    assert next(iter(t)) is other_nan


# -- insertion order --------------------------------------------------------


def test_order_across_deletes_and_reinserts(kind):
    t, d = kind.make(), {}
    put_all(kind, t, d, [("a", 1), ("b", 2), ("c", 3)])
    t.delete("b")
    del d["b"]
    put_all(kind, t, d, [("b", 4), ("a", 5)])
    assert list(t.items()) == [("a", 5), ("c", 3), ("b", 4)]
    assert_same(t, d)


def test_order_random_against_dict(kind):
    rng = random.Random(7)
    n_ops = 60 if kind.copy_on_write else 400
    t, d = kind.make(), {}
    for _ in range(n_ops):
        k = rng.randrange(12)
        if rng.random() < 0.35:
            t.delete(k)
            d.pop(k, None)
        else:
            v = rng.random()
            t.put(k, v)
            d[k] = v
    kind.settle(t)
    assert_same(t, d)


# -- forced hash collisions -------------------------------------------------


def test_forced_collisions(kind):
    keys = [HashKey(0, i) for i in range(40)] + [HashKey(hash("s"), "s"), "s", 0, HashKey(hash(0), "z")]
    t, d = kind.make(), {}
    if kind.copy_on_write:
        t.put_many((k, i) for i, k in enumerate(keys))
        d.update((k, i) for i, k in enumerate(keys))
        kind.settle(t)
    else:
        put_all(kind, t, d, [(k, i) for i, k in enumerate(keys)])
    assert_same(t, d)
    for i, k in enumerate(keys):
        assert t[k] == i
        assert t[HashKey(k.hash, k.name) if isinstance(k, HashKey) else k] == i
    assert HashKey(0, "absent") not in t
    assert t.get(HashKey(0, 999)) is None
    # delete every other colliding key: the probe chains stay intact
    for k in keys[::2]:
        t.delete(HashKey(k.hash, k.name) if isinstance(k, HashKey) else k)
        del d[k]
    kind.settle(t)
    assert_same(t, d)
    for i, k in enumerate(keys):
        assert (k in t) is (i % 2 == 1)
    put_all(kind, t, d, [(HashKey(0, 0), "again"), (HashKey(0, 1), "over")])
    assert_same(t, d)
    assert t.get_many([HashKey(0, 0), HashKey(0, 1), HashKey(0, 2)]) == ["again", "over", None]


def test_equal_hashkeys_first_kept(kind):
    a, b = HashKey(5, "k"), HashKey(5, "k")
    t, d = kind.make(), {}
    put_all(kind, t, d, [(a, 1), (b, 2)])
    assert_same(t, d)
    assert next(iter(t)) is a


# -- keys whose __hash__ / __eq__ raise --------------------------------------


def _check_raises_like_dict(t, d, exc_type, op):
    with crashing(hash=exc_type is HashError, eq=exc_type is EqError):
        with pytest.raises(exc_type):
            op(d)
        with pytest.raises(exc_type):
            op(t)


READ_OPS = {
    "getitem": lambda m, k: m[k],
    "get": lambda m, k: m.get(k),
    "contains": lambda m, k: k in m,
    "get_many": lambda m, k: m.get_many(["s", k]) if not isinstance(m, dict) else [m.get(x) for x in ["s", k]],
}


@pytest.mark.parametrize("op", sorted(READ_OPS))
def test_hash_error_on_read_reaches_caller(kind, op):
    data = {HashKey(1, "a"): 1, "s": 2}
    t, d = kind.make(data), dict(data)
    key = HashKey(1, "a")
    _check_raises_like_dict(t, d, HashError, lambda m: READ_OPS[op](m, key))
    assert_same(t, d)
    assert t[key] == 1


@pytest.mark.parametrize("op", sorted(READ_OPS))
def test_eq_error_on_read_reaches_caller(kind, op):
    stored = HashKey(1, "a")
    data = {stored: 1, "s": 2}
    t, d = kind.make(data), dict(data)
    probe = HashKey(1, "b")  # same hash, another object: __eq__ runs
    _check_raises_like_dict(t, d, EqError, lambda m: READ_OPS[op](m, probe))
    assert_same(t, d)
    with crashing(eq=True):  # identity is checked first: no __eq__ call
        assert t[stored] == 1
        assert stored in t
        assert HashKey(2, "c") not in t  # another hash: no __eq__ call


def _owner_errors(t):
    return t.info()["errors"]


def test_hash_error_on_write_reaches_caller(kind, caplog):
    # a write hashes at the call site, on owner tables too (before queueing)
    stored = HashKey(1, "a")
    t, d = kind.make({stored: 1}), {stored: 1}
    new = HashKey(2, "b")
    with crashing(hash=True):
        with pytest.raises(HashError):
            t.put(new, 2)
        with pytest.raises(HashError):
            t.put(stored, 2)
        with pytest.raises(HashError):
            t.delete(stored)
        with pytest.raises(HashError):
            t.put_many([(new, 2)])
        with pytest.raises(HashError):
            kind.make({}).put_many({new: 1})
        with pytest.raises(HashError):
            kind.make([(new, 2)])
    kind.settle(t)
    assert_same(t, d)
    t.put(new, 3)
    d[new] = 3
    kind.settle(t)
    assert_same(t, d)


def test_eq_error_on_write_table_unchanged(kind, caplog):
    stored = HashKey(1, "a")
    data = {stored: 1, "s": 2}
    t, d = kind.make(data), dict(data)
    probe = HashKey(1, "b")
    writes = [
        lambda: t.put(probe, 3),
        lambda: t.delete(probe),
        lambda: t.put_many([("n", 0), (probe, 3)]),
    ]
    for write in writes:
        if kind.owner and write is writes[1]:
            # delete answers a bool: it may be a call, where the error reaches
            # the caller, or a cast, where it is logged and counted
            before = _owner_errors(t)
            with crashing(eq=True):
                try:
                    write()
                except EqError:
                    t.sync()
                    assert _owner_errors(t) == before
                else:
                    t.sync()
                    assert _owner_errors(t) == before + 1
        elif kind.owner:
            # a cast: the error is logged on the "fastkv" logger and counted,
            # and the owner keeps serving
            before = _owner_errors(t)
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="fastkv"):
                with crashing(eq=True):
                    write()
                    t.sync()
            assert _owner_errors(t) == before + 1
            assert any(r.name == "fastkv" and r.exc_info and r.exc_info[0] is EqError for r in caplog.records)
        else:
            with crashing(eq=True):
                with pytest.raises(EqError):
                    write()
        # put_many may have applied the pairs before the failing one
        t.delete("n")
        kind.settle(t)
        assert_same(t, d)
    assert t[stored] == 1
    t.put(probe, 4)
    d[probe] = 4
    kind.settle(t)
    assert_same(t, d)


def test_write_touches_only_the_written_key(kind):
    data = {HashKey(1, "a"): 1, HashKey(1, "b"): 2, "s": 3}
    t, d = kind.make(data), dict(data)
    with crashing(hash=True, eq=True):  # any call to a stored key's methods raises
        t.put("x", 1)
        t.put("s", 4)
        t.put_many([("y", 2), ("x", 5)])
        t.delete("y")
        t.delete("absent")
        if kind.mutable:
            t["z"] = 6
        if kind.owner:
            t.sync()
    d.update(x=5, s=4)
    if kind.mutable:
        d["z"] = 6
    kind.settle(t)
    assert_same(t, d)
    if kind.owner:
        assert t.info()["errors"] == 0


def test_eq_error_in_constructor(kind):
    with crashing(eq=True):
        with pytest.raises(EqError):
            kind.make([(HashKey(1, "a"), 1), (HashKey(1, "b"), 2)])


def test_eq_error_mutable_mapping_ops(mutable_kind):
    k = mutable_kind
    stored = HashKey(1, "a")
    t, d = k.make({stored: 1}), {stored: 1}
    probe = HashKey(1, "b")
    calls = [
        lambda m: m.pop(probe),
        lambda m: m.pop(probe, None),
        lambda m: m.setdefault(probe, 2),
        lambda m: m.__delitem__(probe),
    ]
    for call in calls:
        _check_raises_like_dict(t, d, EqError, call)
        k.settle(t)
        assert_same(t, d)


# -- str and int subclasses -------------------------------------------------


class Str(str):
    pass


class Int(int):
    pass


class Caseless(str):
    """Equal to any str with the same lower-case form."""

    def __hash__(self):
        return hash(self.lower())

    def __eq__(self, other):
        if isinstance(other, str):
            return self.lower() == other.lower()
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq


class NeverEqualInt(int):
    """An int found only by identity."""

    __hash__ = int.__hash__

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True


class HashZeroStr(str):
    """A str whose hash collides with everything hashed to 0."""

    def __hash__(self):
        return 0

    __eq__ = str.__eq__


SUBCLASS_OPS = [
    ("put", "a", 1),
    ("put", Str("a"), 2),
    ("put", Str("b"), 3),
    ("put", "b", 4),
    ("put", 5, 5),
    ("put", Int(5), 6),
    ("put", Int(6), 7),
    ("put", 6.0, 8),
    ("put", Caseless("Hello"), 9),
    ("put", "hello", 10),
    ("put", "HELLO", 11),
    ("put", NeverEqualInt(7), 12),
    ("put", 7, 13),
    ("put", NeverEqualInt(7), 14),
    ("put", HashZeroStr("z"), 15),
    ("put", "z", 16),
    ("put", 0, 17),
    ("delete", "hello", None),
    ("delete", Str("a"), None),
    ("put", "a", 18),
    ("delete", 6, None),
    ("put", Int(6), 19),
]


def test_str_and_int_subclass_keys(kind):
    t, d = kind.make(), {}
    ops = SUBCLASS_OPS
    for op, key, value in ops:
        if op == "put":
            t.put(key, value)
            d[key] = value
        else:
            t.delete(key)
            d.pop(key, None)
    kind.settle(t)
    assert_same(t, d)
    probes = ["a", Str("a"), "b", Str("b"), 5, Int(5), 6, "hello", "Hello", Caseless("hELLo"),
              NeverEqualInt(7), 7, "z", HashZeroStr("z"), 0, 0.0, "missing", Str("missing")]
    for probe in probes:
        assert (probe in t) == (probe in d), probe
        assert t.get(probe, "-") == d.get(probe, "-"), probe
    assert [type(k) for k in t] == [type(k) for k in d]


# -- large tables -----------------------------------------------------------


def test_grow_and_shrink(kind):
    rng = random.Random(3)
    if kind.copy_on_write:
        n = 3000 if kind.name == "module" else 20000
        t = kind.make((i, -i) for i in range(n))
        d = {i: -i for i in range(n)}
        assert_same(t, d)
        more = [(str(i), i) for i in range(n)]
        t.put_many(more)
        d.update(more)
        assert_same(t, d)
        for k in rng.sample(sorted(d, key=str), 10):
            t.delete(k)
            del d[k]
        assert_same(t, d)
        kept = {k: v for k, v in d.items() if isinstance(k, int) and k % 97 == 0}
        small = kind.make(kept)
        assert_same(small, kept)
        small.put_many([(i, i) for i in range(50)])
        kept.update((i, i) for i in range(50))
        assert_same(small, kept)
        return
    n = 20000
    t, d = kind.make(), {}
    for i in range(n):
        t.put(i, -i)
        d[i] = -i
    kind.settle(t)
    assert_same(t, d)
    assert t.get_many(range(0, n, 7)) == [-i for i in range(0, n, 7)]
    keys = list(range(n))
    rng.shuffle(keys)
    for k in keys[: n - 100]:  # shrink
        t.delete(k)
        del d[k]
    kind.settle(t)
    assert_same(t, d)
    for i in range(n, n + 5000):  # and grow again, new keys after the survivors
        t.put(str(i), i)
        d[str(i)] = i
    kind.settle(t)
    assert_same(t, d)
    assert all(k in t for k in d)
    assert all(k not in t for k in keys[: 1000])
