"""fastkv.persistent: the process-wide registry (``:persistent_term``).

The registry exists once, built on ``fastkv.FrozenTable``; these tests take no
``impl``. Each test uses its own names and erases them afterwards.
"""

import threading

import pytest

import fastkv
from fastkv import persistent


@pytest.fixture
def names():
    used = []

    def name(suffix):
        key = ("fastkv-test", suffix)
        used.append(key)
        return key

    yield name
    for key in used:
        persistent.erase(key)


def test_put_get_erase(names):
    a = names("a")
    value = {"nested": [1, 2]}
    assert persistent.put(a, value) is None
    assert persistent.get(a) is value  # stored as is, no copy
    persistent.put(a, "replaced")
    assert persistent.get(a) == "replaced"
    assert persistent.erase(a) is True
    assert persistent.erase(a) is False


def test_missing_name_keyerror_or_default(names):
    missing = names("missing")
    with pytest.raises(KeyError) as info:
        persistent.get(missing)
    assert info.value.args == (missing,)
    assert persistent.get(missing, None) is None
    assert persistent.get(missing, default=0) == 0
    sentinel = object()
    assert persistent.get(missing, sentinel) is sentinel


def test_unhashable_name_is_a_type_error():
    for operation in (
        lambda: persistent.put([], 1),
        lambda: persistent.get([]),
        lambda: persistent.get([], None),
        lambda: persistent.erase({}),
    ):
        with pytest.raises(TypeError):
            operation()


def test_items_in_insertion_order(names):
    mine = [names(i) for i in range(5)]
    for i, name in enumerate(mine):
        persistent.put(name, i)
    items = persistent.items()
    assert isinstance(items, list) and all(type(pair) is tuple for pair in items)
    assert [pair for pair in items if pair[0] in mine] == [(name, i) for i, name in enumerate(mine)]


def test_info_counts_and_measures(names):
    before = persistent.info()
    assert set(before) == {"count", "memory"}
    assert isinstance(before["count"], int) and isinstance(before["memory"], int)
    assert before["memory"] > 0
    for i in range(200):
        persistent.put(names(i), i)
    after = persistent.info()
    assert after["count"] == before["count"] + 200
    assert after["memory"] > before["memory"]  # the hash table grew


def test_built_on_fastkv_frozen_table():
    registry = persistent._table()
    assert type(registry) is fastkv.FrozenTable  # the compiled one once it is built


def test_readers_always_see_a_complete_registry(names):
    mine = [names(i) for i in range(150)]
    position = {name: i for i, name in enumerate(mine)}
    stop = threading.Event()
    problems = []

    def reader():
        while not stop.is_set():
            seen = [position[name] for name, _ in persistent.items() if name in position]
            if seen != list(range(len(seen))):  # always a prefix of the writes
                problems.append(seen)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for r in readers:
        r.start()
    for name in mine:
        persistent.put(name, True)
    stop.set()
    for r in readers:
        r.join()
    assert problems == []
    assert all(persistent.get(name) is True for name in mine)


def test_concurrent_writers_lose_nothing(names):
    def writer(tid):
        for i in range(50):
            persistent.put(names((tid, i)), i)

    threads = [threading.Thread(target=writer, args=(tid,)) for tid in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(persistent.get(names((tid, i))) == i for tid in range(4) for i in range(50))
