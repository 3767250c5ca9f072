"""The errors of DESIGN.md, on the tables: bad input gets a clear error and
loses nothing. Unhashable keys (TypeError at the call site, casts included),
KeyError(key), update_counter on a non-int, take without default, exceptions in
owner calls and casts, ClosedError after close."""

import logging

import pytest

import fastkv
import fastkv.reference
from _support import assert_same

UNHASHABLE = [[], {}, {1}, ([],)]


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
def test_unhashable_key_reads(kind, key):
    t = kind.make({"a": 1})
    with pytest.raises(TypeError):
        t.get(key)
    with pytest.raises(TypeError):
        t.get(key, 0)
    with pytest.raises(TypeError):
        t[key]
    with pytest.raises(TypeError):
        key in t
    with pytest.raises(TypeError):
        t.get_many(["a", key])
    assert_same(t, {"a": 1})


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
def test_unhashable_key_writes(kind, key):
    # on an OwnerTable the write is a cast: the caller hashes before queueing,
    # so the TypeError is raised here and nothing reaches the owner
    t = kind.make({"a": 1})
    with pytest.raises(TypeError):
        t.put(key, 1)
    with pytest.raises(TypeError):
        t.delete(key)
    with pytest.raises(TypeError):
        t.put_many([(key, 1)])
    with pytest.raises(TypeError):
        t.put_many([("b", 2), (key, 1)])
    kind.settle(t)
    if kind.owner:
        t.sync()
        assert t.info()["errors"] == 0
    assert t.to_dict() in ({"a": 1}, {"a": 1, "b": 2})
    t.delete("b")
    kind.settle(t)
    assert_same(t, {"a": 1})


def test_unhashable_key_on_empty_table(kind):
    # dict.pop skips hashing on an empty dict ({}.pop([], None) is None); the
    # tables do not: an unhashable key is a TypeError whatever the contents
    t = kind.make()
    calls = [lambda: t.delete([]), lambda: t.get([]), lambda: [] in t, lambda: t[[]]]
    if kind.mutable:
        calls += [lambda: t.pop([], None), lambda: t.pop([]), lambda: t.__delitem__([])]
    if kind.name == "locked":
        calls += [lambda: t.take([], None), lambda: t.take([])]
    for call in calls:
        with pytest.raises(TypeError):
            call()
    kind.settle(t)
    assert len(t) == 0


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
def test_unhashable_key_construction(kind, key):
    with pytest.raises(TypeError):
        kind.make([(key, 1)])
    with pytest.raises(TypeError):
        kind.make([("a", 1), (key, 1)])


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
def test_unhashable_key_mutable_mapping(mutable_kind, key):
    k = mutable_kind
    t = k.make({"a": 1})
    with pytest.raises(TypeError):
        t[key] = 1
    with pytest.raises(TypeError):
        del t[key]
    with pytest.raises(TypeError):
        t.pop(key)
    with pytest.raises(TypeError):
        t.pop(key, None)
    with pytest.raises(TypeError):
        t.setdefault(key, 1)
    with pytest.raises(TypeError):
        t.update([(key, 1)])
    k.settle(t)
    if k.owner:
        t.sync()
        assert t.info()["errors"] == 0
    assert_same(t, {"a": 1})


def test_unhashable_key_locked_extras(impl):
    t = impl.LockedTable({"a": 1})
    calls = []
    with pytest.raises(TypeError):
        t.insert_new([], 1)
    with pytest.raises(TypeError):
        t.update_counter([])
    with pytest.raises(TypeError):
        t.take([])
    with pytest.raises(TypeError):
        t.take([], None)
    with pytest.raises(TypeError):
        t.fetch([], calls.append)
    assert calls == []
    assert_same(t, {"a": 1})


# -- KeyError(key) ----------------------------------------------------------


def test_keyerror_carries_the_key(kind):
    t = kind.make({"a": 1})
    for key in ("b", 0, (1, "x"), None, frozenset({1})):
        with pytest.raises(KeyError) as exc:
            t[key]
        assert exc.value.args == (key,)
        assert type(exc.value) is KeyError


def test_keyerror_mutable_mapping(mutable_kind):
    t = mutable_kind.make({"a": 1})
    for key in ("b", (1, "x")):
        with pytest.raises(KeyError) as exc:
            del t[key]
        assert exc.value.args == (key,)
        with pytest.raises(KeyError) as exc:
            t.pop(key)
        assert exc.value.args == (key,)
    t.clear()
    with pytest.raises(KeyError):
        t.popitem()


def test_take_without_default(impl):
    t = impl.LockedTable({"a": 1})
    with pytest.raises(KeyError) as exc:
        t.take("b")
    assert exc.value.args == ("b",)
    assert t.take("b", None) is None
    assert t.take("b", 0) == 0
    assert t.take("a") == 1
    with pytest.raises(KeyError) as exc:
        t.take("a")
    assert exc.value.args == ("a",)
    assert len(t) == 0


# -- update_counter ---------------------------------------------------------


@pytest.mark.parametrize("value", ["x", 1.5, None, [1], 2.0], ids=repr)
def test_update_counter_on_non_int_value(impl, value):
    t = impl.LockedTable({"c": value, "n": 1})
    with pytest.raises(TypeError):
        t.update_counter("c")
    with pytest.raises(TypeError):
        t.update_counter("c", 5, default=0)
    assert t.to_dict() == {"c": value, "n": 1}
    assert t["c"] is value


@pytest.mark.parametrize("default", ["x", 1.5, None], ids=repr)
def test_update_counter_non_int_default(impl, default):
    t = impl.LockedTable({"n": 1})
    with pytest.raises(TypeError):
        t.update_counter("missing", 1, default)
    assert "missing" not in t
    assert t.to_dict() == {"n": 1}
    assert t.update_counter("n", 1, default) == 2  # the default is unused here


def test_update_counter_non_int_incr(impl):
    t = impl.LockedTable({"n": 1})
    with pytest.raises(TypeError):
        t.update_counter("n", 1.5)
    with pytest.raises(TypeError):
        t.update_counter("n", "1")
    assert t.to_dict() == {"n": 1}


# -- owner tables: exceptions in calls and casts ----------------------------


def test_exception_in_call_reaches_caller(owner_kind):
    t = owner_kind.make({"a": 1})

    def boom(table, arg):
        raise ValueError(arg)

    with pytest.raises(ValueError, match="arg"):
        t.call(boom, "arg")
    assert t["a"] == 1
    assert t.call(lambda table: table["a"]) == 1
    assert t.info()["errors"] == 0


def test_exception_in_cast_is_logged_and_counted(owner_kind, caplog):
    k = owner_kind
    t = k.make({"a": 1})
    stored, probe = _Clash("x"), _Clash("y")
    t.put(stored, 1)
    t.sync()
    with caplog.at_level(logging.ERROR, logger="fastkv"):
        _Clash.armed = True
        try:
            t.put(probe, 2)  # hashed at the call site, fails on the owner
            t.sync()
        finally:
            _Clash.armed = False
    assert t.info()["errors"] == 1
    records = [r for r in caplog.records if r.name == "fastkv"]
    assert records and records[-1].exc_info[0] is _ClashError
    # the owner keeps serving
    t.put("b", 2)
    k.settle(t)
    assert t["b"] == 2
    assert t.to_dict() == {"a": 1, stored: 1, "b": 2}


class _ClashError(Exception):
    pass


class _Clash:
    armed = False

    def __init__(self, name):
        self.name = name

    def __hash__(self):
        return 1

    def __eq__(self, other):
        if _Clash.armed:
            raise _ClashError(self.name)
        return isinstance(other, _Clash) and other.name == self.name


def test_invalid_access(impl):
    for access in ("public", "", None, "PRIVATE"):
        with pytest.raises(ValueError):
            t = impl.OwnerTable({}, access=access)
            t.close()


# -- ClosedError ------------------------------------------------------------


def _closed_calls(t):
    return {
        "get": lambda: t.get("a"),
        "getitem": lambda: t["a"],
        "contains": lambda: "a" in t,
        "len": lambda: len(t),
        "iter": lambda: list(t),
        "keys": lambda: list(t.keys()),
        "values": lambda: list(t.values()),
        "items": lambda: list(t.items()),
        "to_dict": lambda: t.to_dict(),
        "get_many": lambda: t.get_many(["a"]),
        "put": lambda: t.put("a", 2),
        "delete": lambda: t.delete("a"),
        "put_many": lambda: t.put_many({"a": 2}),
        "setitem": lambda: t.__setitem__("a", 2),
        "delitem": lambda: t.__delitem__("a"),
        "pop": lambda: t.pop("a", None),
        "popitem": lambda: t.popitem(),
        "setdefault": lambda: t.setdefault("a", 2),
        "update": lambda: t.update(a=2),
        "clear": lambda: t.clear(),
        "call": lambda: t.call(len),
        "sync": lambda: t.sync(),
        "copy": lambda: t.copy(),
    }


def test_closed_error_after_close(owner_kind):
    k = owner_kind
    t = k.make({"a": 1})
    t.put("b", 2)
    assert t.close() is True
    t.close()  # idempotent
    for name, call in _closed_calls(t).items():
        with pytest.raises(k.impl.ClosedError):
            call()
            pytest.fail(f"{name} after close")
    assert issubclass(k.impl.ClosedError, RuntimeError)


def test_close_applies_queued_casts(owner_kind):
    k = owner_kind
    t = k.make()
    # the owner's LockedTable outlives close: take it through a call first
    inner = t.call(lambda table: table)
    for i in range(200):
        t.put(i, i)
    t.put_many((i, -i) for i in range(200, 300))
    t.delete(0)
    assert t.close() is True
    assert len(inner) == 299
    assert inner[250] == -250
    assert 0 not in inner


def test_agent_closed_error(impl):
    a = impl.Agent(0)
    a.update(lambda s: s + 1)
    assert a.close() is True
    a.close()
    for call in (
        lambda: a.get(lambda s: s),
        lambda: a.update(lambda s: s + 1),
        lambda: a.get_and_update(lambda s: (s, s)),
        lambda: a.cast(lambda s: s + 1),
        lambda: a.sync(),
    ):
        with pytest.raises(impl.ClosedError):
            call()


def test_agent_exception_reaches_caller_state_unchanged(impl):
    with impl.Agent([1]) as a:
        def boom(state):
            raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            a.get(boom)
        with pytest.raises(ZeroDivisionError):
            a.update(boom)
        with pytest.raises(ZeroDivisionError):
            a.get_and_update(boom)
        assert a.get(lambda s: s) == [1]
        assert a.info()["errors"] == 0


@pytest.mark.parametrize("name", ["FrozenTable", "LockedTable", "ModuleTable"])
def test_reentrant_write_raises_the_same_runtime_error_everywhere(name):
    # a key whose __eq__ writes to the table it is being compared in: every
    # implementation raises the same RuntimeError and leaves the table as it was
    messages = []
    for module in (fastkv, fastkv.reference):
        if not hasattr(module, name):
            continue  # ModuleTable exists once
        t = getattr(module, name)()

        class Meddler:
            def __hash__(self):
                return 1

            def __eq__(self, other):
                t.put("meddle", 1)
                return False

        t.put(1, "one")
        with pytest.raises(RuntimeError) as info:
            t.put(Meddler(), "x")  # compares with the key 1 while writing
        assert t.to_dict() == {1: "one"}
        messages.append(str(info.value))
    assert len(set(messages)) == 1
    assert messages[0].startswith("re-entrant ") and name in messages[0]
