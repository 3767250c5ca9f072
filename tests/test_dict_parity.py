"""What a dict user expects beyond the shared API, on every table kind of both
implementations: ``reversed()`` (of the table and of its views), ``|``,
``|=``, ``fromkeys``, and pickle / ``copy.copy`` / ``copy.deepcopy``, each
giving what the same operation gives on a dict -- and the same thing on the
compiled and the reference tables.

Decisions pinned here (dict's rules, where a fastkv table differs from a dict):

- ``t | other`` takes any ``collections.abc.Mapping`` (dict only takes dicts)
  and returns a new table of the fastkv class itself (never a subclass, as
  ``copy()``; an OwnerTable keeps its access level); ``other | t`` likewise.
- ``t |= other`` is ``put_many(other)`` on t itself, on the Mapping-only kinds
  too: everyone holding t sees it (Python's fallback ``t = t | other`` would
  rebind the name only).
- ``fromkeys`` returns ``cls(...)``: a subclass gets its own class.
- pickle and ``copy`` keep the class (a subclass's instance ``__dict__`` too);
  an OwnerTable/Agent loads as a new one with its own owner thread; a
  ModuleTable loads under a new default name. A table (or an Agent's state)
  that holds itself, or sits in any cycle, loads holding the new one, as a
  dict does: made empty, memoized, then filled by ``__setstate__``.
- ``__setstate__`` (not an API) on a table already in use only adds: it is
  one ``put_many`` of the fastkv class; on an Agent it replaces the state.
"""

import collections.abc as cabc
import copy
import gc
import operator
import pickle
import sys
import weakref

import pytest

import fastkv
import fastkv._core
import fastkv.module
import fastkv.reference
from _support import IMPLS, Key, PlainMapping, assert_same

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)
DATA = {"x": 1, 2: "two", "a": [3], (1, 2): None}


# Subclasses picklable by name: one per class of each implementation.
SUBCLASSES = {}
for _impl_name, _impl in IMPLS.items():
    for _cls_name in ("FrozenTable", "LockedTable", "OwnerTable", "Agent"):
        _sub = type(f"{_impl_name.title()}{_cls_name}Sub", (getattr(_impl, _cls_name),), {"__module__": __name__})
        globals()[_sub.__name__] = _sub
        SUBCLASSES[_impl_name, _cls_name] = _sub


class ModuleTableSub(fastkv.module.ModuleTable):
    pass


def subclass_of(kind):
    if kind.name == "module":
        return ModuleTableSub
    return SUBCLASSES[kind.impl_name, kind.cls.__name__]


def made(kind, table):
    """``table`` (a new table from an operation) closed when the test ends."""
    return kind.track(table)


# -- reversed -----------------------------------------------------------------


def test_reversed_gives_keys_last_inserted_first(kind):
    # without __reversed__, reversed() fell back to t[len-1], t[len-2], ...
    assert list(reversed(kind.make(a=1))) == ["a"]
    t = kind.make(DATA)
    assert list(reversed(t)) == list(reversed(DATA))
    assert list(reversed(kind.make())) == []
    t.delete("x")
    t.put("new", 0)
    t.put(2, "deux")  # an existing key keeps its place
    kind.settle(t)
    expected = {2: "deux", "a": [3], (1, 2): None, "new": 0}
    assert list(reversed(t)) == list(reversed(expected))


def test_reversed_of_the_views_as_dict(kind):
    t = kind.make(DATA)
    keys, values, items = t.keys(), t.values(), t.items()
    assert list(reversed(keys)) == list(reversed(DATA.keys()))
    assert list(reversed(values)) == list(reversed(DATA.values()))
    assert list(reversed(items)) == list(reversed(DATA.items()))
    assert isinstance(keys, cabc.KeysView)  # still the collections.abc views
    t.put("late", 5)  # the views are live
    kind.settle(t)
    assert next(reversed(keys)) == "late"
    assert next(reversed(values)) == 5
    assert next(reversed(items)) == ("late", 5)


def test_reversed_length_hint(kind):
    t = kind.make(DATA)
    it = reversed(t)
    assert operator.length_hint(it) == len(DATA)
    next(it)
    assert operator.length_hint(it) == len(DATA) - 1


def test_reversed_walks_one_snapshot(kind):
    # as iter(): the snapshot taken when the iteration starts, never "changed size"
    t = kind.make({i: i for i in range(10)})
    it, it_values, it_items = reversed(t), reversed(t.values()), reversed(t.items())
    first = next(it), next(it_values), next(it_items)
    for k in range(10):
        t.delete(k)
        t.put(100 + k, k)
    kind.settle(t)
    assert [first[0], *it] == list(range(9, -1, -1))
    assert [first[1], *it_values] == list(range(9, -1, -1))
    assert [first[2], *it_items] == [(i, i) for i in range(9, -1, -1)]
    seen = []
    for k in reversed(t):  # writing while walking backwards
        seen.append(k)
        t.put(k + 1000, 0)
        t.delete(k)
    assert seen == list(range(109, 99, -1))


def test_reversed_keeps_key_objects(kind):
    k1, k2 = Key("a"), Key("b")
    t = kind.make([(k1, 1), (k2, 2), (1, "int")])
    t.put(1.0, "float")  # 1 keeps its key object, as in a dict
    kind.settle(t)
    got = list(reversed(t))
    assert got == [1, k2, k1] and type(got[0]) is int and got[1] is k2 and got[2] is k1


def test_reversed_after_close_raises_closed_error(owner_kind):
    t = owner_kind.make({"a": 1})
    t.close()
    for op in (lambda: reversed(t), lambda: reversed(t.keys()), lambda: reversed(t.values()),
               lambda: reversed(t.items())):
        with pytest.raises(fastkv.ClosedError):
            list(op())


# -- | -------------------------------------------------------------------------


def test_or_as_dict(kind):
    t = kind.make({"a": 1, "b": 2, 1: "one"})
    other = {"b": 20, "z": 26, 1.0: "float"}
    u = made(kind, t | other)
    assert type(u) is kind.cls and u is not t
    assert_same(u, {"a": 1, "b": 2, 1: "one"} | other)  # key 1 stays an int: t's key object
    assert t.to_dict() == {"a": 1, "b": 2, 1: "one"}  # t unchanged
    assert_same(made(kind, t | {}), t.to_dict())
    assert_same(made(kind, kind.make() | other), dict(other))
    assert_same(made(kind, kind.make() | {}), {})


def test_or_result_is_independent(kind):
    value = [1]
    t = kind.make({"a": value})
    u = made(kind, t | {"b": 2})
    assert u["a"] is value  # shallow, as dict's |
    u.put("c", 3)
    u.delete("a")
    t.put("d", 4)
    kind.settle(t)
    kind.settle(u)
    assert t.to_dict() == {"a": [1], "d": 4}
    assert u.to_dict() == {"b": 2, "c": 3}


def test_ror_as_dict(kind):
    t = kind.make({"a": 1, "b": 2, 1: "one"})
    other = {"b": 20, "z": 26, 1.0: "float"}
    v = made(kind, other | t)  # dict.__or__ gives NotImplemented: t.__ror__
    assert type(v) is kind.cls
    assert_same(v, other | {"a": 1, "b": 2, 1: "one"})  # key 1.0 stays a float: other's
    assert t.to_dict() == {"a": 1, "b": 2, 1: "one"}
    assert_same(made(kind, {} | t), t.to_dict())
    assert_same(made(kind, other | kind.make()), dict(other))
    assert_same(made(kind, PlainMapping(other) | t), other | t.to_dict())


@pytest.mark.parametrize("other_kind", ["dict", "dict-subclass", "plain-mapping", "frozen", "locked",
                                        "owner", "module"])
def test_or_takes_any_mapping(kind, other_kind):
    data = {"b": 20, "z": 26}
    impl = kind.impl
    other = {
        "dict": lambda: dict(data),
        "dict-subclass": lambda: type("D", (dict,), {})(data),
        "plain-mapping": lambda: PlainMapping(data),
        "frozen": lambda: impl.FrozenTable(data),
        "locked": lambda: impl.LockedTable(data),
        "owner": lambda: kind.track(impl.OwnerTable(data)),
        "module": lambda: fastkv.module.ModuleTable(data),
    }[other_kind]()
    t = kind.make({"a": 1, "b": 2})
    u = made(kind, t | other)
    assert type(u) is kind.cls
    assert_same(u, {"a": 1, "b": 20, "z": 26})
    v = made(kind, other | t)
    if other_kind in ("dict", "dict-subclass", "plain-mapping"):  # no | for a table: t.__ror__
        assert type(v) is kind.cls
    else:  # a fastkv table on the left makes the result, of its own class
        assert type(v) is type(other)
    assert_same(v, {"b": 2, "z": 26, "a": 1})


def test_or_of_subclass_gives_the_fastkv_class(kind):
    Sub = subclass_of(kind)
    t = kind.make_as(Sub, {"a": 1})
    assert type(made(kind, t | {"b": 2})) is kind.cls  # as copy()
    assert type(made(kind, {"b": 2} | t)) is kind.cls


def test_or_of_owner_table_keeps_access(owner_kind):
    t = owner_kind.make({"a": 1})
    for u in (t | {"b": 2}, {"b": 2} | t):
        owner_kind.track(u)
        assert u.info()["access"] == owner_kind.access
        u.put("c", 3)
        owner_kind.settle(u)
        assert u["c"] == 3
        u.close()
    assert t.to_dict() == {"a": 1}  # closing a result leaves t running


@pytest.mark.parametrize("other", [[("b", 2)], 5, None, {"b"}, "ab"], ids=repr)
def test_or_needs_a_mapping(kind, other):
    t = kind.make({"a": 1})
    assert t.__or__(other) is NotImplemented
    assert t.__ror__(other) is NotImplemented
    with pytest.raises(TypeError):
        t | other
    with pytest.raises(TypeError):
        other | t
    assert t.to_dict() == {"a": 1}


class UnhashableKeys(PlainMapping):
    """A Mapping whose one key is a list."""

    def __iter__(self):
        return iter([[1, 2]])

    def __len__(self):
        return 1

    def __getitem__(self, key):
        return 0


def test_or_bad_mapping_changes_nothing(kind):
    class Broken(PlainMapping):
        def __getitem__(self, key):
            raise LookupError("broken")

    t = kind.make({"a": 1})
    with pytest.raises(LookupError):
        t | Broken({"b": 2})
    with pytest.raises(LookupError):
        Broken({"b": 2}) | t
    with pytest.raises(TypeError):
        t | UnhashableKeys()
    with pytest.raises(TypeError):
        UnhashableKeys() | t
    assert t.to_dict() == {"a": 1}


def test_or_with_itself(kind):
    t = kind.make({"a": 1, "b": 2})
    assert_same(made(kind, t | t), {"a": 1, "b": 2})


def test_or_after_close_raises_closed_error(owner_kind):
    t = owner_kind.make({"a": 1})
    t.close()
    with pytest.raises(fastkv.ClosedError):
        t | {"b": 2}
    with pytest.raises(fastkv.ClosedError):
        {"b": 2} | t


# -- |= ------------------------------------------------------------------------


@pytest.mark.parametrize("as_pairs", [False, True], ids=["mapping", "pairs"])
def test_ior_updates_the_table_in_place(kind, as_pairs):
    t = kind.make({"a": 1, "b": 2, 1: "one"})
    holders = [t]
    name = t
    update = {"b": 20, "z": 26, 1.0: "float"}
    name |= list(update.items()) if as_pairs else update
    assert name is t  # not rebound to a new table
    kind.settle(t)
    expected = {"a": 1, "b": 2, 1: "one"}
    expected |= update
    assert_same(holders[0], expected)


def test_ior_takes_any_mapping(kind):
    t = kind.make({"a": 1})
    t |= PlainMapping({"b": 2})
    t |= kind.impl.FrozenTable(c=3)
    t |= kind.make(d=4)
    kind.settle(t)
    assert_same(t, {"a": 1, "b": 2, "c": 3, "d": 4})


def test_ior_with_itself(kind):
    t = kind.make({"a": 1, "b": 2})
    t |= t
    kind.settle(t)
    assert_same(t, {"a": 1, "b": 2})


def test_ior_of_frozen_kinds_is_one_swap(mapping_kind):
    # an iteration started before |= keeps walking the version it started on
    t = mapping_kind.make({"a": 1, "b": 2})
    it = iter(t)
    t |= {"c": 3, "a": 10}
    assert list(it) == ["a", "b"]
    assert t.to_dict() == {"a": 10, "b": 2, "c": 3}


@pytest.mark.parametrize("bad,error", [(5, TypeError), ([("a",)], ValueError), ([1], TypeError),
                                       ([("ok", 1), ([], 2)], TypeError)], ids=repr)
def test_ior_bad_input_loses_nothing(kind, bad, error):
    t = kind.make({"a": 1})
    with pytest.raises(error):
        t |= bad
    kind.settle(t)
    assert t.to_dict() == {"a": 1}


def test_ior_after_close_raises_closed_error(owner_kind):
    t = owner_kind.make({"a": 1})
    t.close()
    with pytest.raises(fastkv.ClosedError):
        t |= {"b": 2}


# -- fromkeys ------------------------------------------------------------------


def test_fromkeys_as_dict(kind):
    t = made(kind, kind.cls.fromkeys("abc"))
    assert type(t) is kind.cls
    assert_same(t, dict.fromkeys("abc"))
    value = []
    t = made(kind, kind.cls.fromkeys(iter([1, 2, 1.0, True, Key("k")]), value))
    assert_same(t, dict.fromkeys([1, 2, 1.0, True, Key("k")], value))  # 1 keeps the first key object
    assert all(v is value for v in t.values())  # one shared value, as dict.fromkeys
    assert_same(made(kind, kind.cls.fromkeys([])), {})
    assert_same(made(kind, kind.cls.fromkeys({"x": 1, "y": 2}, 0)), {"x": 0, "y": 0})


def test_fromkeys_of_a_subclass_gives_the_subclass(kind):
    Sub = subclass_of(kind)
    t = made(kind, Sub.fromkeys(["a"], 1))
    assert type(t) is Sub
    assert t == {"a": 1}


def test_fromkeys_on_an_instance_and_positional_only(kind):
    t = kind.make()
    u = made(kind, t.fromkeys(["a"], 0))  # as dict: a classmethod, callable on an instance
    assert type(u) is kind.cls and u == {"a": 0}
    with pytest.raises(TypeError):
        kind.cls.fromkeys(iterable=["a"])  # as dict.fromkeys(iterable, value=None, /)


def test_fromkeys_of_owner_table_gets_default_access(owner_kind):
    t = owner_kind.track(owner_kind.cls.fromkeys(["a"]))
    assert t.info()["access"] == "private"


def test_fromkeys_bad_input(kind):
    with pytest.raises(TypeError):
        kind.cls.fromkeys(5)
    with pytest.raises(TypeError):
        kind.cls.fromkeys([[]])


def test_agent_has_no_dict_api(impl):
    for name in ("fromkeys", "__reversed__", "__or__", "__ror__", "__ior__"):
        assert not any(name in vars(cls) for cls in impl.Agent.__mro__), name
    with impl.Agent({}) as a:
        with pytest.raises(TypeError):
            a | {}
        with pytest.raises(TypeError):
            reversed(a)


# -- pickle, copy.copy, copy.deepcopy -----------------------------------------


def check_independent(kind, original, new):
    new.put("only_new", 1)
    kind.settle(new)
    assert "only_new" not in original
    original.put("only_original", 1)
    kind.settle(original)
    assert "only_original" not in new


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_pickle_round_trip(kind, proto):
    t = kind.make(DATA)
    u = made(kind, pickle.loads(pickle.dumps(t, proto)))
    assert type(u) is kind.cls and u is not t
    assert_same(u, DATA)
    assert u["a"] is not t["a"]
    if kind.owner:
        assert u.info()["access"] == kind.access
    check_independent(kind, t, u)


@pytest.mark.parametrize("how", ["copy", "deepcopy"])
def test_copy_module(kind, how):
    t = kind.make(DATA)
    u = made(kind, getattr(copy, how)(t))
    assert type(u) is kind.cls and u is not t
    assert_same(u, DATA)
    if how == "copy":
        assert u["a"] is t["a"]  # shallow, as copy.copy of a dict
    else:
        assert u["a"] is not t["a"] and u["a"] == [3]
    if kind.owner:
        assert u.info()["access"] == kind.access
    check_independent(kind, t, u)


@pytest.mark.parametrize("how", ["pickle", "copy", "deepcopy"])
def test_subclass_and_instance_dict_are_kept(kind, how):
    # as for a dict subclass (unlike t.copy(), which gives the fastkv class)
    Sub = subclass_of(kind)
    t = kind.make_as(Sub, {"a": [1]})
    t.extra = ["state"]
    u = made(kind, {"pickle": lambda x: pickle.loads(pickle.dumps(x)), "copy": copy.copy,
                    "deepcopy": copy.deepcopy}[how](t))
    assert type(u) is Sub
    assert u == {"a": [1]} and u.extra == ["state"]
    if how == "copy":
        assert u.extra is t.extra and u["a"] is t["a"]
    else:
        assert u.extra is not t.extra and u["a"] is not t["a"]
    if kind.owner:
        assert u.info()["access"] == kind.access


def test_deepcopy_shares_what_the_memo_shares(kind):
    shared = [1]
    t = kind.make({"a": shared, "b": shared})
    u = made(kind, copy.deepcopy(t))
    assert u["a"] is u["b"] and u["a"] is not shared
    holder = copy.deepcopy({"t": t, "v": shared})
    made(kind, holder["t"])
    assert holder["t"]["a"] is holder["v"]


# A table holding itself: as ``d = {}; d["me"] = d``, which round-trips with
# ``d2["me"] is d2``. Tables reduce as ``(type(t), ctor args without the items,
# (items, attrs))``: pickle and deepcopy make the table empty, memoize it, then
# __setstate__ fills it, so items referring back find the new table. (They
# reduced as ``type(t)(items)`` before: RecursionError on every kind.)

LOADERS = {f"pickle-{proto}": (lambda x, proto=proto: pickle.loads(pickle.dumps(x, proto)))
           for proto in PROTOCOLS}
LOADERS["deepcopy"] = copy.deepcopy


@pytest.mark.parametrize("how", LOADERS)
def test_pickle_of_a_table_holding_itself(kind, how):
    t = kind.make({"a": [1]})
    t.put("me", t)
    t.put("b", 2)
    kind.settle(t)
    u = made(kind, LOADERS[how](t))
    # no settle: the loaded table holds its items when loads/deepcopy returns
    assert type(u) is kind.cls and u is not t
    assert u["me"] is u
    assert list(u) == ["a", "me", "b"] and u["a"] == [1] and u["a"] is not t["a"] and u["b"] == 2
    if kind.owner:
        assert u.info()["access"] == kind.access
    assert repr(u) == f"{kind.cls.__name__}({{'a': [1], 'me': ..., 'b': 2}})"
    check_independent(kind, t, u)
    assert t["me"] is t


@pytest.mark.parametrize("how", LOADERS)
def test_pickle_of_tables_in_a_cycle(kind, how):
    # the cycle runs through another table, a list and a subclass's __dict__
    Sub = subclass_of(kind)
    t, other = kind.make_as(Sub), kind.make()
    t.extra = [t, other]
    t.put_many({"other": other, "list": [t]})
    other.put("back", t)
    kind.settle(t)
    kind.settle(other)
    u = made(kind, LOADERS[how](t))
    assert type(u) is Sub
    v = made(kind, u["other"])
    assert type(v) is kind.cls and v is not other
    assert u["list"][0] is u and v["back"] is u
    assert u.extra[0] is u and u.extra[1] is v


def test_copy_of_a_table_holding_itself_refers_to_the_original(kind):
    # shallow, as copy.copy of such a dict: the new table's item is the old one
    t = kind.make()
    t.put("me", t)
    kind.settle(t)
    u = made(kind, copy.copy(t))
    assert u is not t and u["me"] is t and t["me"] is t


def test_setstate_on_a_table_in_use_only_adds(kind):
    # not an API (dict has no __setstate__): chosen to be put_many, never a clear
    Sub = subclass_of(kind)
    t = kind.make_as(Sub, {"a": 1, "b": 2})
    t.keep = 1
    t.__setstate__(({"b": 20, "c": 3}, {"extra": 4}))
    kind.settle(t)
    assert_same(t, {"a": 1, "b": 20, "c": 3})
    assert t.keep == 1 and t.extra == 4
    t.__setstate__(({}, None))
    kind.settle(t)
    assert_same(t, {"a": 1, "b": 20, "c": 3})


@pytest.mark.parametrize("state,error", [(None, TypeError), (({}, None, 1), ValueError), ((5, None), TypeError),
                                         ((["ab", ("a",)], None), ValueError),
                                         ((["fastkv.items", "a"], None), ValueError),
                                         ((["fastkv.items", "b", 1, "c"], None), ValueError),
                                         ((["fastkv.items", "b", 1, [], 2], None), TypeError)], ids=repr)
def test_setstate_of_another_shape_changes_nothing(kind, state, error):
    t = kind.make({"a": 1})
    with pytest.raises(error):
        t.__setstate__(state)
    kind.settle(t)
    assert_same(t, {"a": 1})


# The items of a pickled table are one flat list ["fastkv.items", k0, v0,
# k1, v1, ...]: pickle writes and loads it without a dict to build (to_dict
# was a third of pickle.dumps's cost at 1M keys). The states of older pickles,
# a dict or a list of pairs, still load.

def test_pickled_items_are_one_flat_marked_list(kind):
    t = kind.make({"a": 1, 2: "b", (3,): None})
    func, args, state = t.__reduce__()[:3]
    assert state[0] == ["fastkv.items", "a", 1, 2, "b", (3,), None]
    assert state[1] is None


@pytest.mark.parametrize("items", [{"b": 2, "a": 1, 3: [4]}, [("b", 2), ("a", 1), (3, [4])],
                                   ["fastkv.items", "b", 2, "a", 1, 3, [4]]], ids=type)
def test_setstate_loads_flat_items_and_the_states_of_older_pickles(kind, items):
    t = kind.make()
    t.__setstate__((items, None))
    kind.settle(t)
    assert_same(t, {"b": 2, "a": 1, 3: [4]})
    assert list(t) == ["b", "a", 3]


def test_flat_items_with_equal_keys_load_as_dict_would(kind):
    # a forged list may repeat a key: the first key object stays, the last
    # value wins (1, 1.0 and True are one key), as dict([...]) does
    t = kind.make()
    t.__setstate__((["fastkv.items", 1, "a", "k", 0, 1.0, "b", True, "c"], None))
    kind.settle(t)
    assert_same(t, {1: "c", "k": 0})
    assert [type(k) for k in t] == [int, str]


def test_setstate_of_closed_owner_table_raises_closed_error(owner_kind):
    t = owner_kind.make()
    t.close()
    with pytest.raises(fastkv.ClosedError):
        t.__setstate__(({"a": 1}, None))


def test_pickle_of_closed_owner_table_raises_closed_error(owner_kind):
    t = owner_kind.make({"a": 1})
    t.close()
    for op in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(fastkv.ClosedError):
            op(t)


def test_module_table_loads_under_a_new_name():
    name = "fastkv_test_dict_parity_named"
    t = fastkv.module.ModuleTable({"a": 1}, name=name)
    try:
        for new in (pickle.loads(pickle.dumps(t)), copy.copy(t), copy.deepcopy(t), t | {}, {} | t):
            assert new.name != name and new.name.startswith("fastkv._generated.")
            assert sys.modules[new.name] is new.module
            assert sys.modules[name] is t.module  # the live table keeps its name and module
            assert new == t
    finally:
        del t
        gc.collect()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_agent_pickle_round_trip(impl, proto):
    with impl.Agent({"n": [1]}) as a:
        with pickle.loads(pickle.dumps(a, proto)) as b:
            assert type(b) is impl.Agent and b is not a
            assert b.get(lambda s: s) == {"n": [1]}
            b.update(lambda s: {"n": [2]})
            assert a.get(lambda s: s) == {"n": [1]}  # its own state, its own owner
            assert b.info()["served"] >= 2


def test_agent_copy_and_deepcopy(impl):
    with impl.Agent({"n": [1]}) as a:
        with copy.copy(a) as b, copy.deepcopy(a) as c:
            state = a.get(lambda s: s)
            assert b.get(lambda s: s) is state  # shallow: the same state object
            assert c.get(lambda s: s) == state and c.get(lambda s: s) is not state
            b.close()
            assert a.get(len) == 1  # closing a copy leaves the original running


def test_agent_subclass_pickle_keeps_class_and_dict(impl):
    Sub = SUBCLASSES["reference" if impl is fastkv.reference else "compiled", "Agent"]
    with Sub(5) as a:
        a.extra = "state"
        with pickle.loads(pickle.dumps(a)) as b:
            assert type(b) is Sub and b.extra == "state" and b.get(lambda s: s) == 5


@pytest.mark.parametrize("how", LOADERS)
def test_agent_holding_itself(impl, how):
    with impl.Agent() as a:
        a.update(lambda s: {"me": a, "n": [1]})
        with LOADERS[how](a) as b:
            assert b is not a
            assert b.get(lambda s: s["me"]) is b  # no sync: set when loads returns
            assert b.get(lambda s: s["n"]) == [1]
            assert a.get(lambda s: s["me"]) is a


def test_agent_setstate_replaces_the_state(impl):
    Sub = SUBCLASSES["reference" if impl is fastkv.reference else "compiled", "Agent"]
    with Sub({"old": 1}) as a:
        a.__setstate__(([2], {"extra": 3}))
        assert a.get(lambda s: s) == [2] and a.extra == 3
        with pytest.raises(ValueError):
            a.__setstate__((1, 2, 3))
        assert a.get(lambda s: s) == [2]
    with pytest.raises(fastkv.ClosedError):
        a.__setstate__((1, None))


def test_agent_pickle_of_closed_agent_raises_closed_error(impl):
    a = impl.Agent(1)
    a.close()
    for op in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(fastkv.ClosedError):
            op(a)


# -- references: nothing leaks, nothing is freed early --------------------------


def refcounts(*objs):
    return [sys.getrefcount(o) for o in objs]


@pytest.mark.parametrize("make_key", [lambda i: f"k{i}", lambda i: 10**30 + i, lambda i: Key(f"k{i}")],
                         ids=["str", "int", "pykey"])
def test_refcounts(kind, make_key, request):
    if kind.name == "module":
        request.getfixturevalue("released_modules")  # free-threaded 3.13: see the fixture
    keys = [make_key(i) for i in range(12)]
    values = [object() for _ in keys]
    other_value = object()
    before = refcounts(*keys, *values, other_value)
    t = kind.cls(zip(keys[:8], values[:8]), **kind.extra_kwargs())  # not tracked: closed below
    other = dict(zip(keys[4:], [other_value] * 8))
    assert list(reversed(t)) == keys[7::-1]
    assert list(reversed(t.values())) == values[7::-1]
    assert list(reversed(t.items())) == list(zip(keys[7::-1], values[7::-1]))
    results = [t | other, other | t, t | {}, {} | t, kind.cls.fromkeys(keys, other_value),
               copy.copy(t), pickle.loads(pickle.dumps(t))]
    t |= other
    t |= [(keys[0], other_value)]
    kind.settle(t)
    assert t.to_dict() == {**dict(zip(keys[:8], values[:8])), **other, keys[0]: other_value}
    assert results[0].to_dict() == {**dict(zip(keys[:8], values[:8])), **other}
    for r in (t, *results):
        r.close()
    del t, r, results, other
    gc.collect()
    assert refcounts(*keys, *values, other_value) == before


@pytest.mark.parametrize("make_key", [lambda i: f"k{i}", lambda i: Key(f"k{i}")], ids=["str", "pykey"])
def test_refcounts_of_tables_holding_themselves(kind, make_key, request):
    if kind.name == "module":
        request.getfixturevalue("released_modules")  # free-threaded 3.13: see the fixture
    # every loaded cycle is collected once closed, and holds no key or value
    keys = [make_key(i) for i in range(6)]
    values = [object() for _ in keys]
    before = refcounts(*keys, *values)
    t = kind.cls(zip(keys, values), **kind.extra_kwargs())  # not tracked: closed below
    t.put("me", t)
    kind.settle(t)
    loaded = [pickle.loads(pickle.dumps(t, proto)) for proto in PROTOCOLS]
    loaded.append(copy.deepcopy(t))
    for u in loaded:
        assert u["me"] is u and list(u) == [*keys, "me"]
    shallow = copy.copy(t)  # shares the keys and values
    assert shallow["me"] is t and shallow.to_dict() == {**dict(zip(keys, values)), "me": t}
    loaded.append(shallow)
    refs = [weakref.ref(x) for x in (t, *loaded)]
    for x in (t, *loaded):
        if kind.name == "module":
            # a ModuleTable holding itself is held by its module in sys.modules
            # (module -> state() -> data -> table) until the item goes, loaded or not
            x.delete("me")
        x.close()
    del t, u, x, loaded, shallow
    gc.collect()
    gc.collect()  # a ModuleTable's __del__ unregisters its module: garbage only then
    assert [r() for r in refs] == [None] * len(refs)
    assert refcounts(*keys, *values) == before
