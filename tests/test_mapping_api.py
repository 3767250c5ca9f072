"""The shared API on every table kind (FrozenTable, LockedTable, both OwnerTable
access levels, ModuleTable), of both implementations: reads, writes,
construction like dict, copy, ==, repr, collections.abc registration,
subclassing; the full MutableMapping protocol on LockedTable and OwnerTable,
Mapping only on FrozenTable and ModuleTable."""

import collections
import collections.abc as cabc
import types

import pytest

import fastkv
import fastkv._core
from _support import PlainMapping, assert_same


def check_delete_result(kind, result, expected):
    # delete() -> bool (True if the key was there). On an OwnerTable a delete
    # is queued like every write; if it is a pure cast it cannot know, so None
    # is accepted there (DESIGN.md lists delete among the casts).
    if kind.owner:
        assert result is expected or result is None, result
    else:
        assert result is expected


# -- reads ------------------------------------------------------------------


def test_empty(kind):
    t = kind.make()
    assert len(t) == 0
    assert list(t) == []
    assert t.to_dict() == {}
    assert "a" not in t
    assert t.get("a") is None
    with pytest.raises(KeyError):
        t["a"]
    assert not t
    assert t == {}


def test_reads(kind):
    t = kind.make({"a": 1, "b": None, 3: "three"})
    assert len(t) == 3
    assert t["a"] == 1
    assert t[3] == "three"
    assert t["b"] is None
    assert t.get("a") == 1
    assert t.get("b", "dflt") is None
    assert t.get("zz") is None
    assert t.get("zz", "dflt") == "dflt"
    assert "a" in t and "b" in t and 3 in t
    assert "zz" not in t and 4 not in t
    assert bool(t)


def test_getitem_missing_raises_keyerror_with_key(kind):
    t = kind.make({"a": 1})
    with pytest.raises(KeyError) as exc:
        t["missing"]
    assert exc.value.args == ("missing",)
    key = ("tuple", 1)
    with pytest.raises(KeyError) as exc:
        t[key]
    assert exc.value.args == (key,)


def test_iteration_order_and_views(kind):
    data = {"x": 1, 2: "two", "a": [3], (1, 2): None}
    t = kind.make(data)
    assert list(t) == list(data)
    assert list(iter(t)) == list(data)
    keys, values, items = t.keys(), t.values(), t.items()
    assert isinstance(keys, cabc.KeysView)
    assert isinstance(values, cabc.ValuesView)
    assert isinstance(items, cabc.ItemsView)
    assert list(keys) == list(data.keys())
    assert list(values) == list(data.values())
    assert list(items) == list(data.items())
    assert len(keys) == len(values) == len(items) == 4
    assert "x" in keys and "nope" not in keys
    assert [3] in values and "nope" not in values
    assert ("x", 1) in items and ("x", 2) not in items and ("nope", 1) not in items
    # keys and items are set-like
    assert keys == set(data)
    assert keys & {"x", "q"} == {"x"}
    assert keys | {"q"} == set(data) | {"q"}
    assert keys - {"x"} == set(data) - {"x"}
    assert items & {("x", 1), ("x", 2)} == {("x", 1)}
    assert keys.isdisjoint({"q"})


def test_views_are_live(kind):
    t = kind.make({"a": 1})
    keys, values, items = t.keys(), t.values(), t.items()
    t.put("b", 2)
    kind.settle(t)
    assert list(keys) == ["a", "b"]
    assert list(values) == [1, 2]
    assert list(items) == [("a", 1), ("b", 2)]
    assert len(keys) == 2
    t.delete("a")
    kind.settle(t)
    assert list(keys) == ["b"]
    assert "a" not in keys


def test_iteration_survives_writes(kind):
    # iteration walks the snapshot taken when it started: never "changed size
    # during iteration", and the writes made meanwhile are not seen by it.
    t = kind.make({i: i for i in range(10)})
    seen = []
    for k in t:
        seen.append(k)
        t.put(100 + k, k)
        t.delete(k)
    assert seen == list(range(10))
    kind.settle(t)
    assert list(t) == [100 + i for i in range(10)]
    seen = []
    for k, v in t.items():
        seen.append((k, v))
        t.delete(k)
    assert seen == [(100 + i, i) for i in range(10)]
    kind.settle(t)
    assert len(t) == 0


def test_to_dict_is_a_new_dict(kind):
    t = kind.make([("b", 1), ("a", 2)])
    d = t.to_dict()
    assert type(d) is dict
    assert d == {"b": 1, "a": 2}
    assert list(d) == ["b", "a"]
    d["c"] = 3
    del d["b"]
    assert t.to_dict() == {"b": 1, "a": 2}
    assert t.to_dict() is not t.to_dict()


def test_get_many(kind):
    t = kind.make({"a": 1, "b": 2})
    assert t.get_many(["a", "b", "c"]) == [1, 2, None]
    assert t.get_many(("c", "a"), 0) == [0, 1]
    assert t.get_many(["c"], "d") == ["d"]
    assert t.get_many([]) == []
    assert t.get_many(iter(["b", "b"])) == [2, 2]
    assert type(t.get_many(["a"])) is list


def test_default_by_keyword(request, kind):
    # BRIEF: get(key, default=None), get_many(keys, default=None): no "/",
    # so default may be passed by keyword (the reference accepts it)
    t = kind.make({"a": 1})
    assert t.get("zz", default=0) == 0
    assert t.get(key="a") == 1
    assert t.get_many(("zz", "a"), default=0) == [0, 1]
    assert t.get_many(keys=["a"]) == [1]


# -- writes -----------------------------------------------------------------


def test_put_and_delete(kind):
    t = kind.make()
    assert t.put("a", 1) is None
    assert t.put("b", 2) is None
    kind.settle(t)
    assert t["a"] == 1 and t["b"] == 2
    t.put("a", 10)  # overwrite keeps the position
    kind.settle(t)
    assert list(t.items()) == [("a", 10), ("b", 2)]
    check_delete_result(kind, t.delete("a"), True)
    kind.settle(t)
    assert "a" not in t
    check_delete_result(kind, t.delete("a"), False)
    kind.settle(t)
    assert t.to_dict() == {"b": 2}
    t.put("a", 3)  # re-inserted at the end
    kind.settle(t)
    assert list(t) == ["b", "a"]


def test_put_many(kind):
    t = kind.make({"a": 0})
    assert t.put_many({"b": 1, "c": 2}) is None
    t.put_many([("d", 3), ("a", 4)])
    t.put_many((kv for kv in [("e", 5)]))
    t.put_many(kind.impl.FrozenTable({"f": 6}))
    t.put_many(types.MappingProxyType({"g": 7}))
    t.put_many([])
    t.put_many({})
    kind.settle(t)
    assert list(t.items()) == [("a", 4), ("b", 1), ("c", 2), ("d", 3), ("e", 5), ("f", 6), ("g", 7)]


def test_put_many_duplicates_last_value_wins(kind):
    t = kind.make()
    t.put_many([("a", 1), ("b", 2), ("a", 3)])
    kind.settle(t)
    assert list(t.items()) == [("a", 3), ("b", 2)]


def test_put_many_from_keys_only_mapping(kind):
    class KeysOnly:  # what dict(...) accepts: keys() and __getitem__
        def keys(self):
            return ["k1", "k2"]

        def __getitem__(self, key):
            return key.upper()

    t = kind.make()
    t.put_many(KeysOnly())
    kind.settle(t)
    assert t.to_dict() == {"k1": "K1", "k2": "K2"}


def test_put_many_bad_input_loses_nothing(kind):
    t = kind.make({"a": 1})
    with pytest.raises(TypeError):
        t.put_many(5)
    with pytest.raises((TypeError, ValueError)):
        t.put_many([("b", 2), ("c",)])
    kind.settle(t)
    # the table is either unchanged or holds the pairs before the bad one
    assert t.to_dict() in ({"a": 1}, {"a": 1, "b": 2})


# -- close and context manager ---------------------------------------------


def test_context_manager_returns_self(kind):
    t = kind.make({"a": 1})
    with t as entered:
        assert entered is t
        assert entered["a"] == 1


def test_close_is_idempotent(kind):
    t = kind.make({"a": 1})
    t.close()
    t.close()


def test_close_is_a_noop_where_nothing_runs(mapping_kind):
    t = mapping_kind.make({"a": 1})
    t.close()
    assert t["a"] == 1
    t.put("b", 2)
    assert t.to_dict() == {"a": 1, "b": 2}
    with t:
        pass
    assert len(t) == 2


def test_close_is_a_noop_on_locked_table(impl):
    t = impl.LockedTable({"a": 1})
    t.close()
    t["b"] = 2
    assert t.to_dict() == {"a": 1, "b": 2}
    with t:
        pass
    assert t.close() is None
    assert len(t) == 2


def test_owner_table_raises_closed_error_after_with(owner_kind):
    with owner_kind.make({"a": 1}) as t:
        assert t["a"] == 1
    with pytest.raises(owner_kind.impl.ClosedError):
        t.get("a")


# -- construction like dict ------------------------------------------------


def test_construct_like_dict(kind):
    assert_same(kind.make(), {})
    d = {"a": 1, "b": 2}
    assert_same(kind.make(d), d)
    assert_same(kind.make([("a", 1), ("b", 2)]), d)
    assert_same(kind.make((kv for kv in d.items())), d)
    assert_same(kind.make(a=1, b=2), d)
    assert_same(kind.make({"a": 1}, b=2), d)
    assert_same(kind.make([("a", 1)], b=2), d)
    assert_same(kind.make(kind.impl.LockedTable(d)), d)
    assert_same(kind.make(types.MappingProxyType(d)), d)
    assert_same(kind.make([["a", 1], "b2"]), {"a": 1, "b": "2"})


def test_construct_keyword_overrides_data(kind):
    t = kind.make({"a": 1, "b": 2}, a=3)
    assert list(t.items()) == [("a", 3), ("b", 2)]
    assert t.to_dict() == dict({"a": 1, "b": 2}, a=3)


def test_construct_duplicate_pairs(kind):
    one = 1
    t = kind.make([(one, "a"), ("x", "b"), (1.0, "c"), (True, "d")])
    assert list(t.items()) == [(1, "d"), ("x", "b")]
    assert type(next(iter(t))) is int


def test_construct_data_is_positional_only(kind):
    # (data=(), /, **kwargs): a keyword named data is a key, as with dict
    t = kind.make(data=5)
    assert t.to_dict() == {"data": 5}
    t = kind.make({"a": 1}, data=(1, 2), self=0)
    assert t.to_dict() == {"a": 1, "data": (1, 2), "self": 0}


def test_construct_from_keys_only_mapping(kind):
    class KeysOnly:
        def keys(self):
            return iter(["k1", "k2"])

        def __getitem__(self, key):
            return key * 2

    assert kind.make(KeysOnly()).to_dict() == {"k1": "k1k1", "k2": "k2k2"}


def test_construct_bad_input(kind):
    with pytest.raises(TypeError):
        kind.make(5)
    with pytest.raises(TypeError):
        kind.make([1, 2])
    with pytest.raises(ValueError):
        kind.make([("a", 1, 2)])
    if kind.name != "module":  # ModuleTable's second parameter is name=
        with pytest.raises(TypeError):
            kind.make({}, {})


# -- copy -------------------------------------------------------------------


def test_copy_is_independent(kind):
    t = kind.make({"a": 1, "b": [2]})
    c = kind.track(t.copy())
    assert type(c) is kind.cls
    assert c is not t
    assert c == t
    assert list(c.items()) == list(t.items())
    assert c["b"] == t["b"]
    assert c["b"] is t["b"]  # a shallow copy, as dict.copy
    c.put("z", 9)
    c.delete("a")
    kind.settle(c)
    assert t.to_dict() == {"a": 1, "b": [2]}
    assert c.to_dict() == {"b": [2], "z": 9}
    t.put("y", 8)
    kind.settle(t)
    assert "y" not in c


def test_copy_of_owner_table_keeps_access(owner_kind):
    t = owner_kind.make({"a": 1})
    c = owner_kind.track(t.copy())
    assert c.info()["access"] == owner_kind.access == t.info()["access"]
    c.close()
    assert t["a"] == 1  # closing the copy leaves the original running


# -- == and hash ------------------------------------------------------------


def test_equality_with_mappings(kind):
    d = {"a": 1, "b": [2]}
    t = kind.make(d)
    assert t == d
    assert d == t
    assert not (t != d)
    assert not (d != t)
    assert t == {"b": [2], "a": 1}  # order does not matter, as for dict
    assert t == {"a": 1.0, "b": [2.0]}  # values compare with ==
    assert t != {"a": 1}
    assert t != {"a": 1, "b": [2], "c": 3}
    assert t != {"a": 2, "b": [2]}
    assert t == types.MappingProxyType(d)
    assert t == PlainMapping(d)
    assert PlainMapping(d) == t
    assert t == collections.OrderedDict(d)
    assert t == t
    assert t == kind.impl.FrozenTable(d)
    assert kind.impl.LockedTable(d) == t
    assert t != kind.impl.LockedTable({"a": 1})
    assert kind.make({1: "x"}) == {1.0: "x"}


def test_equality_with_non_mappings(kind):
    t = kind.make({"a": 1})
    assert t.__eq__([("a", 1)]) is NotImplemented
    assert t.__eq__(1) is NotImplemented
    assert t != [("a", 1)]
    assert t != {"a"}
    assert t != None  # noqa: E711
    assert not (t == 1)
    assert kind.make() != []


def test_not_hashable(kind):
    t = kind.make({"a": 1})
    assert type(t).__hash__ is None
    with pytest.raises(TypeError):
        hash(t)
    assert not isinstance(t, cabc.Hashable)


# -- repr -------------------------------------------------------------------


def test_repr(kind):
    name = kind.cls.__name__
    assert repr(kind.make()) == f"{name}({{}})"
    assert repr(kind.make({"a": 1})) == f"{name}({{'a': 1}})"
    data = {"a": [1, "x"], 2: None, (3,): 4.5}
    assert repr(kind.make(data)) == f"{name}({data!r})"
    assert str(kind.make({"a": 1})) == f"{name}({{'a': 1}})"


def test_repr_self_reference(kind):
    t = kind.make({"a": 1})
    t.put("self", t)
    kind.settle(t)
    r = repr(t)
    assert r.startswith(f"{kind.cls.__name__}({{'a': 1, 'self': ")
    assert "..." in r
    t.put("self", None)  # break the cycle
    kind.settle(t)


def test_repr_mutual_reference(kind):
    t = kind.make()
    other = kind.impl.LockedTable({"t": t})
    t.put("other", other)
    kind.settle(t)
    r = repr(t)
    assert r.startswith(f"{kind.cls.__name__}({{'other': LockedTable({{'t': ")
    assert "..." in r
    other.clear()


_DEEP = {}


def _deep_value(impl):
    # 100,000 levels: dicts, every tenth level a FrozenTable of ``impl``
    if impl.__name__ not in _DEEP:
        x = None
        for i in range(100_000):
            x = impl.FrozenTable({"a": x}) if i % 10 == 0 else {"a": x}
        _DEEP[impl.__name__] = x
    return _DEEP[impl.__name__]


def test_repr_deep_nesting_raises_recursion_error(kind):
    t = kind.make({"deep": _deep_value(kind.impl)})
    with pytest.raises(RecursionError):
        repr(t)
    assert repr(kind.make({"a": 1})) == f"{kind.cls.__name__}({{'a': 1}})"  # still fine


def test_repr_deep_nesting_of_tables(impl):
    for cls in (impl.FrozenTable, impl.LockedTable):
        x = None
        for _ in range(50_000):
            x = cls({"a": x})
        with pytest.raises(RecursionError):
            repr(x)
        # unwind without deep recursion in the destructors
        while x is not None:
            x = x["a"]


# -- collections.abc --------------------------------------------------------


def test_abc_registration(kind):
    t = kind.make()
    assert isinstance(t, cabc.Mapping)
    assert issubclass(kind.cls, cabc.Mapping)
    for abc in (cabc.Collection, cabc.Container, cabc.Iterable, cabc.Sized):
        assert isinstance(t, abc)
    assert isinstance(t, cabc.MutableMapping) is kind.mutable
    assert issubclass(kind.cls, cabc.MutableMapping) is kind.mutable


def test_mapping_mixin_behaviour(kind):
    # code written against Mapping works unchanged
    t = kind.make({"a": 1, "b": 2})
    assert dict(t) == {"a": 1, "b": 2}
    assert dict(**t) == {"a": 1, "b": 2}
    assert sorted(t) == ["a", "b"]
    assert {**t, "c": 3} == {"a": 1, "b": 2, "c": 3}
    assert set(t.keys()) == {"a", "b"}
    assert sum(t.values()) == 3
    assert "{a}-{b}".format_map(t) == "1-2"


# -- subclassing ------------------------------------------------------------


def test_subclass(kind):
    class Sub(kind.cls):
        def double(self, key):
            return 2 * self[key]

    t = kind.make_as(Sub, {"a": 1}, b=2)
    assert type(t) is Sub
    assert isinstance(t, kind.cls)
    assert isinstance(t, cabc.Mapping)
    assert t.double("b") == 4
    assert repr(t) == "Sub({'a': 1, 'b': 2})"
    t.extra = "attribute"  # subclass instances get a __dict__, as dict's do
    assert t.extra == "attribute"
    assert t == {"a": 1, "b": 2}
    c = kind.track(t.copy())
    assert type(c) is kind.cls  # as dict.copy: the base class
    assert c == t


def test_subclass_with_own_init(kind):
    class Tagged(kind.cls):
        def __init__(self, tag, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.tag = tag

    t = kind.track(Tagged("tag", {"a": 1}, b=2, **kind.extra_kwargs()))
    assert t.tag == "tag"
    assert t.to_dict() == {"a": 1, "b": 2}


def test_subclass_overriding_reads(kind):
    class Upper(kind.cls):
        def __repr__(self):
            return "Upper!"

    t = kind.make_as(Upper, {"a": 1})
    assert repr(t) == "Upper!"
    assert repr(kind.make({"t": t})) == f"{kind.cls.__name__}({{'t': Upper!}})"


# -- Mapping only: FrozenTable, ModuleTable ---------------------------------


def test_mapping_only_has_no_item_assignment(mapping_kind):
    t = mapping_kind.make({"a": 1})
    with pytest.raises(TypeError):
        t["b"] = 2
    with pytest.raises(TypeError):
        t["a"] = 2
    with pytest.raises(TypeError):
        del t["a"]
    assert t.to_dict() == {"a": 1}
    for name in ("__setitem__", "__delitem__", "popitem", "setdefault"):
        assert not hasattr(t, name), name


# -- MutableMapping: LockedTable, OwnerTable --------------------------------


def test_setitem_delitem(mutable_kind):
    k = mutable_kind
    t = k.make({"a": 1})
    t["b"] = 2
    t["a"] = 3
    k.settle(t)
    assert list(t.items()) == [("a", 3), ("b", 2)]
    del t["a"]
    k.settle(t)
    assert t.to_dict() == {"b": 2}
    with pytest.raises(KeyError) as exc:
        del t["a"]
    assert exc.value.args == ("a",)
    k.settle(t)
    assert t.to_dict() == {"b": 2}


def test_pop(mutable_kind):
    k = mutable_kind
    t = k.make({"a": 1, "b": 2})
    assert t.pop("a") == 1
    assert t.pop("a", "dflt") == "dflt"
    assert t.pop("a", None) is None
    with pytest.raises(KeyError) as exc:
        t.pop("a")
    assert exc.value.args == ("a",)
    k.settle(t)
    assert t.to_dict() == {"b": 2}


def test_popitem_is_lifo(mutable_kind):
    k = mutable_kind
    t = k.make([("a", 1), ("b", 2), ("c", 3)])
    t["a"] = 10  # an overwrite does not move the key
    assert t.popitem() == ("c", 3)
    t["d"] = 4
    assert t.popitem() == ("d", 4)
    assert t.popitem() == ("b", 2)
    assert t.popitem() == ("a", 10)
    with pytest.raises(KeyError):
        t.popitem()
    k.settle(t)
    assert len(t) == 0


def test_setdefault(mutable_kind):
    k = mutable_kind
    t = k.make({"a": 1})
    assert t.setdefault("a", 5) == 1
    assert t.setdefault("b", 2) == 2
    assert t.setdefault("c") is None
    k.settle(t)
    assert list(t.items()) == [("a", 1), ("b", 2), ("c", None)]


def test_update(mutable_kind):
    k = mutable_kind
    t = k.make({"a": 1})
    assert t.update({"b": 2}) is None
    t.update([("c", 3), ("a", 4)])
    t.update(d=5)
    t.update({"e": 6}, f=7)
    t.update()
    t.update(k.impl.FrozenTable(g=8))
    t.update(other=9)  # other is positional-only, as for dict.update
    k.settle(t)
    assert list(t.items()) == [
        ("a", 4), ("b", 2), ("c", 3), ("d", 5), ("e", 6), ("f", 7), ("g", 8), ("other", 9)
    ]


def test_clear(mutable_kind):
    k = mutable_kind
    t = k.make({"a": 1, "b": 2})
    assert t.clear() is None
    k.settle(t)
    assert len(t) == 0
    assert t.to_dict() == {}
    t["c"] = 3
    k.settle(t)
    assert list(t) == ["c"]


def test_mutable_mapping_mixins(mutable_kind):
    # generic MutableMapping code works on the table as on a dict
    k = mutable_kind

    def exercise(m):
        m["x"] = 1
        m.update(y=2, z=3)
        m.setdefault("w", [])
        m.pop("x")
        m["y"] += 10
        del m["z"]
        return list(m.items())

    t = k.make()
    expected = exercise({})
    assert exercise(t) == expected
    k.settle(t)
    assert list(t.items()) == expected
