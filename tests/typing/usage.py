"""Typed use of the fastkv tables, checked by ``mypy --strict`` (see
tests/test_typing.py) and also run by that test, so the stubs and the
runtime agree on what the example does.

``assert_type`` checks the inferred types statically; at run time it returns
its argument unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from typing_extensions import assert_type

from fastkv import Agent, ClosedError, FrozenTable, LockedTable, OwnerTable


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


def main() -> None:
    frozen()
    locked()
    owner()
    agent()


if __name__ == "__main__":
    main()
