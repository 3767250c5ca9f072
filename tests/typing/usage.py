"""Typed use of the fastkv tables, checked by ``mypy --strict`` (see
tests/test_typing.py) and also run by that test, so the stubs and the
runtime agree on what the example does.

``assert_type`` checks the inferred types statically; at run time it returns
its argument unchanged.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Mapping, MutableMapping
from typing import Any

from typing_extensions import assert_type

from fastkv import Agent, ClosedError, FrozenTable, LockedTable, OwnerTable, SharedTable


def total(m: Mapping[str, int]) -> int:
    return sum(m.values())


def bump(m: MutableMapping[str, int], key: str) -> None:
    m[key] = m.get(key, 0) + 1


def frozen() -> None:
    t: FrozenTable[str, int] = FrozenTable({"a": 1}, b=2)
    assert_type(t["a"], int)
    assert_type(t.get("a"), int | None)
    assert_type(t.get("a", 0), int)
    assert_type(t.get("a", "x"), int | str)
    assert_type(t.get_many(["a", "b"]), list[int | None])
    assert_type(t.get_many(["a"], 0), list[int])
    assert_type(t.to_dict(), dict[str, int])
    t.put("c", 3)
    deleted: bool = t.delete("c")
    t.put_many({"d": 4})
    t.put_many([("e", 5)])
    assert_type(list(t.items()), list[tuple[str, int]])
    assert_type(t.copy(), FrozenTable[str, int])
    with FrozenTable([(1, "one")]) as pairs:
        assert_type(pairs, FrozenTable[int, str])
    assert total(t) == 12
    assert deleted and "a" in t and len(t) == 4


def locked() -> None:
    t = LockedTable({"hits": 0})
    assert_type(t, LockedTable[str, int])
    t["hits"] += 1
    bump(t, "misses")
    assert_type(t.update_counter("hits", 2), int)
    assert_type(t.insert_new("new", 1), bool)
    assert_type(t.take("new"), int)
    assert_type(t.take("new", None), int | None)
    assert_type(t.pop("missing", -1), int)
    assert_type(t.select(lambda k, v: v > 0), list[tuple[str, int]])
    snap = t.snapshot()
    assert_type(snap, FrozenTable[str, int])
    assert_type(t.fetch("loaded", len), int)
    info = t.info()
    assert_type(info["size"], int)
    t.update({"x": 1}, y=2)
    t.setdefault("z", 3)
    assert_type(t.popitem(), tuple[str, int])
    t.clear()
    assert total(snap) == 3 + 1
    assert t == {}


def owner() -> None:
    with OwnerTable({"a": 1}, access="protected") as t:
        assert_type(t, OwnerTable[str, int])
        t.put("b", 2)
        t["c"] = 3
        t.sync()
        assert_type(t.call(lambda table, k: table.get(k), "a"), int | None)
        assert_type(t.call(LockedTable.update_counter, "a", 10), int)
        assert t.info()["access"] == "protected"
        assert total(t) == 16
    try:
        t.get("a")
    except ClosedError:
        pass
    else:
        raise AssertionError("no ClosedError after close")
    counts: OwnerTable[int, list[str]] = OwnerTable()
    assert counts.close(timeout=5.0) is True


def agent() -> None:
    with Agent([1, 2]) as a:
        assert_type(a, "Agent[list[int]]")  # str: the reference Agent is not subscriptable at run time
        assert_type(a.get(len), int)
        a.update(lambda s, x: s + [x], 3)
        assert_type(a.get_and_update(lambda s: (s[0], s[1:])), int)
        a.cast(list.__add__, [4])
        a.sync()
        assert a.get(lambda s: s) == [2, 3, 4]
        assert_type(a.info()["served"], int)
    empty = Agent()
    assert_type(empty, "Agent[None]")
    empty.close()


def dict_parity() -> None:
    t = FrozenTable({"a": 1, "b": 2})
    assert_type(list(reversed(t)), list[str])
    assert_type(list(reversed(t.keys())), list[str])
    assert_type(list(reversed(t.values())), list[int])
    assert_type(list(reversed(t.items())), list[tuple[str, int]])
    assert_type(t | {"c": 3}, FrozenTable[str, int])
    assert_type(t | {1: "one"}, FrozenTable[str | int, int | str])
    assert_type({"z": 0} | t, FrozenTable[str, int])
    alias = t
    t |= {"c": 3}
    t |= [("d", 4)]
    assert_type(t, FrozenTable[str, int])
    assert alias is t and list(reversed(alias)) == ["d", "c", "b", "a"]
    assert_type(FrozenTable.fromkeys(["x", "y"], 0), FrozenTable[str, int])
    assert_type(FrozenTable.fromkeys([1, 2]), FrozenTable[int, Any | None])
    assert_type(copy.deepcopy(t), FrozenTable[str, int])
    assert pickle.loads(pickle.dumps(t)) == t

    locked = LockedTable({"a": 1})
    assert_type(locked | {"b": 2}, LockedTable[str, int])
    assert_type({"b": 2} | locked, LockedTable[str, int])
    locked |= {"b": 2}
    assert_type(LockedTable.fromkeys("ab", 0), LockedTable[str, int])
    assert_type(next(reversed(locked.items())), tuple[str, int])
    assert copy.copy(locked) == {"a": 1, "b": 2}

    with OwnerTable({"a": 1}, access="protected") as owner:
        with owner | {"b": 2} as merged:
            assert_type(merged, OwnerTable[str, int])
            assert merged.info()["access"] == "protected"
        owner |= [("c", 3)]
        owner.sync()
        assert_type(list(reversed(owner)), list[str])
        assert list(reversed(owner)) == ["c", "a"]
    with OwnerTable.fromkeys([1, 2], "v") as keyed:
        assert_type(keyed, OwnerTable[int, str])


def shared() -> None:
    import os

    with SharedTable.create(f"typing-{os.getpid()}", {"a": 1}) as t:
        assert_type(t, SharedTable[str, int])
        assert_type(t["a"], int)
        assert_type(t.get("b"), int | None)
        assert_type(t.get_many(["a", "b"], 0), list[int])
        t.put("b", 2)
        t.put_many([("c", 3)])
        assert_type(t.delete("c"), bool)
        assert_type(t.info()["generation"], int)
        assert_type(t.copy(), dict[str, int])
        assert_type(t | {"d": 4}, dict[str, int])
        assert_type({"d": 4} | t, dict[str, int])
        t |= {"d": 4}
        assert_type(t, SharedTable[str, int])
        t.delete("d")
        with SharedTable.open(t.path) as u:
            assert u.to_dict() == {"a": 1, "b": 2}


def main() -> None:
    shared()
    frozen()
    locked()
    owner()
    agent()
    dict_parity()


if __name__ == "__main__":
    main()
