"""LockedTable on the compiled engine and its C lock: references (nothing
leaks, nothing is freed early, on hits, misses, writes and every error path),
the lock under contention (a key's __eq__ that sleeps or releases the GIL while
other threads want the lock; waiters never deadlock and never get in), exact
counts under 4-thread stress, memory, and the cyclic GC.

Behaviour is shared with the reference through ``impl``; checks of the
compiled object's own promises (__sizeof__ vs tracemalloc) use
``fastkv._core`` directly (a method called on a foreign object: test_foreign_self).
"""

import gc
import sys
import threading
import time
import tracemalloc
import weakref

import pytest

import fastkv
import fastkv._core
from _support import JOIN_TIMEOUT, Key, run_threads



class Boom(Exception):
    pass


def refcounts(*objs):
    return [sys.getrefcount(o) for o in objs]


KEY_MAKERS = {
    "str": lambda i: f"k{i}",
    "int": lambda i: 10**30 + i,
    "pykey": lambda i: Key(f"k{i}"),
    "collide": lambda i: Key(f"k{i}", h=7),
}


# --- references: nothing leaks, nothing is freed early --------------------------


@pytest.mark.parametrize("make_key", list(KEY_MAKERS.values()), ids=list(KEY_MAKERS))
def test_refcounts_reads(impl, make_key):
    keys = [make_key(i) for i in range(50)]
    values = [object() for _ in keys]
    t = impl.LockedTable(zip(keys, values))
    miss = make_key(1000)
    default = object()
    before = refcounts(*keys, *values, miss, default)

    def reads():
        for k, v in zip(keys, values):
            assert t[k] is v
            assert t.get(k) is v
            assert t.get(k, default) is v
            assert k in t
            assert t.fetch(k, lambda key: pytest.fail("loader called for a present key")) is v
        assert t.get(miss, default) is default
        assert t.get(miss) is None
        assert miss not in t
        with pytest.raises(KeyError):
            t[miss]
        assert t.get_many(keys + [miss], default) == values + [default]
        assert list(t) == keys
        assert list(t.keys()) == keys
        assert list(t.values()) == values
        assert list(t.items()) == list(zip(keys, values))
        assert t.to_dict() == dict(zip(keys, values))
        assert t.select(lambda k, v: True) == list(zip(keys, values))
        assert t.snapshot() == dict(zip(keys, values))
        assert t == dict(zip(keys, values))
        assert len(t) == len(keys)
        repr(t)

    for _ in range(3):
        reads()
    gc.collect()
    assert refcounts(*keys, *values, miss, default) == before


@pytest.mark.parametrize("make_key", list(KEY_MAKERS.values()), ids=list(KEY_MAKERS))
def test_refcounts_writes(impl, make_key):
    keys = [make_key(i) for i in range(20)]
    values = [object() for _ in keys]
    new = object()
    other = make_key(999)
    before = refcounts(*keys, *values, new, other)
    t = impl.LockedTable(zip(keys, values))
    t.put(keys[0], new)                      # replace
    t[other] = new                           # add
    t[keys[1]] = new
    assert t.delete(keys[2]) is True
    assert t.delete(make_key(12345)) is False
    del t[keys[3]]
    assert t.take(keys[4]) is values[4]
    assert t.take(keys[4], new) is new
    assert t.pop(keys[5]) is values[5]
    assert t.pop(keys[5], None) is None
    assert t.setdefault(keys[6], new) is values[6]
    assert t.insert_new(keys[7], new) is False
    t.put_many([(keys[8], new), (keys[9], new)])
    t.update({keys[10]: new})
    k, v = t.popitem()
    assert k is other and v is new
    del k, v
    c = t.copy()
    c[keys[11]] = new
    t.clear()
    t.update(zip(keys, values))
    del t, c
    gc.collect()
    assert refcounts(*keys, *values, new, other) == before


def test_replaced_and_removed_values_are_released_at_once(impl):
    t = impl.LockedTable()
    value = object()
    base = sys.getrefcount(value)
    for write in (lambda: t.put("k", value), lambda: t.__setitem__(1, value),
                  lambda: t.put(Key("k"), value), lambda: t.setdefault("s", value),
                  lambda: t.insert_new("n", value), lambda: t.put_many({"m": value})):
        write()
    assert sys.getrefcount(value) == base + 6
    t.put("k", 0)
    t[1] = 0
    t[Key("k")] = 0
    assert sys.getrefcount(value) == base + 3
    t.delete("s")
    assert t.take("n") is value
    assert sys.getrefcount(value) == base + 1
    t.clear()
    assert sys.getrefcount(value) == base


def test_refcounts_counters_and_fetch(impl):
    t = impl.LockedTable()
    key = "counter-" + "x" * 20
    big = 2**80
    before = refcounts(key, big)
    for _ in range(100):
        t.update_counter(key, big)
    assert t[key] == 100 * big
    loaded = object()
    fkey = Key("fetched")
    fbefore = refcounts(loaded, fkey)
    assert t.fetch(fkey, lambda k: loaded) is loaded
    assert t.fetch(fkey, lambda k: None) is loaded
    assert refcounts(loaded, fkey) == [n + 1 for n in fbefore]   # held by the table only
    t.clear()
    gc.collect()
    assert refcounts(key, big) == before
    assert refcounts(loaded, fkey) == fbefore


def test_refcounts_error_paths(impl):
    class BadEq(Key):
        def __eq__(self, other):
            raise Boom

        __hash__ = Key.__hash__

    class BadHash:
        def __hash__(self):
            raise Boom

    keys = [Key(f"k{i}", h=7) for i in range(5)]   # all collide with `bad`
    values = [object() for _ in keys]
    t = impl.LockedTable(zip(keys, values))
    t["n"] = "not an int"
    bad = BadEq("x", h=7)
    badh = BadHash()
    value = object()
    before = refcounts(*keys, *values, bad, badh, value)

    def loader_raising(key):
        raise Boom

    raising = [
        lambda: t[bad], lambda: t.get(bad), lambda: bad in t, lambda: t.get_many([keys[0], bad]),
        lambda: t.put(bad, value), lambda: t.__setitem__(bad, value), lambda: t.delete(bad),
        lambda: t.__delitem__(bad), lambda: t.take(bad), lambda: t.pop(bad, value),
        lambda: t.setdefault(bad, value), lambda: t.insert_new(bad, value),
        lambda: t.update_counter(bad), lambda: t.fetch(bad, lambda k: value),
        lambda: t.put_many([(keys[0], value), (bad, value)]),
        lambda: t[badh], lambda: t.get(badh), lambda: badh in t, lambda: t.put(badh, value),
        lambda: t.delete(badh), lambda: t.get_many([badh]), lambda: t.put_many([(badh, value)]),
        lambda: t.take(badh), lambda: t.insert_new(badh, value), lambda: t.update_counter(badh),
        lambda: t.fetch(badh, lambda k: value), lambda: t.fetch("f", loader_raising),
        lambda: t.select(lambda k, v: 1 / 0 if k == keys[2] else True),
    ]
    for _ in range(3):
        for op in raising:
            with pytest.raises((Boom, ZeroDivisionError)):
                op()
        with pytest.raises(TypeError):
            t.put([], value)
        with pytest.raises(TypeError):
            t.update_counter("n")
        with pytest.raises(TypeError):
            t.update_counter("absent", 1, default=value)
        with pytest.raises(TypeError):
            t.update_counter("absent", value)
        with pytest.raises(KeyError):
            t.take("absent")
        with pytest.raises(KeyError):
            del t["absent"]
        with pytest.raises(ValueError):
            t.put_many([(keys[0], value, value)])
        # the lock was released on every path: a leak would make this
        # thread's next call a "re-entrant" RuntimeError
        assert len(t) == 6
    expected = dict(zip(keys, values))
    expected["n"] = "not an int"
    assert t.to_dict() == expected   # unchanged by every failure
    assert "f" not in t
    op = raising = expected = None
    gc.collect()
    assert refcounts(*keys, *values, bad, badh, value) == before


# --- the lock under contention -----------------------------------------------------


class SlowKey(Key):
    """A key whose __eq__ runs Python for a while under the table's lock:
    sleeps (releasing the GIL) or spins (the GIL is handed over meanwhile)."""

    def __init__(self, name, h, state, mode):
        super().__init__(name, h)
        self.state = state
        self.mode = mode

    def __eq__(self, other):
        state = self.state
        if state.get("armed"):
            state["inside"] = True
            state["entered"].set()
            if self.mode == "sleep":
                time.sleep(0.2)
            elif self.mode == "wait":
                state["release"].wait(JOIN_TIMEOUT)
            else:
                end = time.perf_counter() + 0.2
                while time.perf_counter() < end:
                    pass
            state["inside"] = False
        return isinstance(other, Key) and other.name == self.name

    __hash__ = Key.__hash__


@pytest.mark.parametrize("mode", ["sleep", "spin", "wait"])
def test_eq_holding_the_lock_while_others_wait(impl, mode):
    # One thread holds the lock inside a key's __eq__ that sleeps (GIL
    # released) or spins (GIL handed over); 3 others want the lock for fast
    # str keys. None of them gets in before the __eq__ is done, none
    # deadlocks, and the holder gets the GIL back to finish.
    state = {"armed": False, "inside": False, "entered": threading.Event(), "release": threading.Event()}
    stored = SlowKey("stored", 7, state, mode)
    t = impl.LockedTable({stored: "v", "a": 0})
    observed = []

    def holder():
        state["armed"] = True
        try:
            return t.get(Key("probe", h=7))
        finally:
            state["armed"] = False

    def other(i):
        assert state["entered"].wait(JOIN_TIMEOUT)
        if mode == "wait":
            time.sleep(0.05)  # let the others reach the lock (order only)
            state["release"].set()
        ops = (lambda: t["a"], lambda: t.put(f"w{i}", i), lambda: t.update_counter("a"))
        ops[i % 3]()
        observed.append(state["inside"])

    result = []
    h = threading.Thread(target=lambda: result.append(holder()), daemon=True)
    h.start()
    run_threads(other, 3)
    h.join(JOIN_TIMEOUT)
    assert not h.is_alive(), "holder deadlocked"
    assert result == [None]
    assert observed == [False] * 3   # nobody got in while __eq__ ran under the lock
    assert t["a"] == 1
    assert {t.get(f"w{i}") for i in range(3)} >= {1}


def test_reentrant_use_from_eq_while_another_thread_waits(impl):
    # __eq__ under the lock first waits for another thread to be blocked on the
    # lock, then re-enters the table from the holding thread: RuntimeError for
    # the re-entry, the waiter still gets in afterwards.
    state = {"armed": False}
    errors = []
    started = threading.Event()

    class Reenter(Key):
        def __eq__(self, other):
            if state["armed"]:
                state["armed"] = False
                started.set()
                time.sleep(0.05)
                try:
                    t.put("from-eq", 1)
                except RuntimeError as exc:
                    errors.append(exc)
            return isinstance(other, Key) and other.name == self.name

        __hash__ = Key.__hash__

    t = impl.LockedTable({Reenter("stored", 7): 1})
    waiter_done = []

    def waiter():
        assert started.wait(JOIN_TIMEOUT)
        t["w"] = 1
        waiter_done.append(True)

    w = threading.Thread(target=waiter, daemon=True)
    w.start()
    state["armed"] = True
    assert t.get(Reenter("probe", 7)) is None
    w.join(JOIN_TIMEOUT)
    assert not w.is_alive()
    assert waiter_done == [True]
    assert len(errors) == 1 and "re-entrant" in str(errors[0])
    assert "from-eq" not in t and t["w"] == 1


@pytest.mark.usefixtures("fast_switching")
def test_contended_slow_keys_lose_nothing(impl):
    # Every key collides and compares in Python: every operation runs Python
    # under the lock while the GIL is handed over every 10 us, so threads
    # really do wait for the lock (parked, without the GIL).
    t = impl.LockedTable()
    keys = [Key(f"k{i}", h=i % 4) for i in range(16)]
    per_thread = 300

    def work(i):
        for n in range(per_thread):
            key = keys[(n + i) % len(keys)]
            t.update_counter(key)
            if n % 7 == 0:
                assert t.get(key, 0) >= 1

    run_threads(work, 4)
    assert sum(t.values()) == 4 * per_thread
    assert len(t) == len(keys)


# --- stress: 4 threads, exact counts ----------------------------------------------


@pytest.mark.usefixtures("fast_switching")
def test_stress_four_threads_exact_counts(impl):
    t = impl.LockedTable()
    n_threads, rounds = 4, 400
    winners = []
    loads = []
    loads_lock = threading.Lock()

    def loader(key):
        with loads_lock:
            loads.append(key)
        return ("loaded", key)

    def work(i):
        mine = []
        for n in range(rounds):
            t.update_counter("hits")                 # one shared counter
            t.update_counter(("per", n % 10), 2)     # tuple keys: the slow path
            if t.insert_new(("once", n), i):         # exactly one winner per key
                mine.append(n)
            t.put(f"t{i}-{n}", n)                    # each thread's own keys
            if n % 2:
                assert t.delete(f"t{i}-{n - 1}") is True
            assert t.fetch(("f", n % 25), loader) == ("loaded", ("f", n % 25))
            if n % 50 == 0:
                for k in t:                          # iteration never raises
                    pass
                items = t.items()
                assert len(list(items)) >= 1
        winners.append(mine)

    run_threads(work, n_threads)
    assert t["hits"] == n_threads * rounds
    assert sum(t[("per", d)] for d in range(10)) == 2 * n_threads * rounds
    won = sorted(n for mine in winners for n in mine)
    assert won == list(range(rounds))                # one winner per insert_new key
    assert all(t[("once", n)] in range(n_threads) for n in range(rounds))
    assert sorted(loads) == sorted(("f", d) for d in range(25))  # one loader call per key
    for i in range(n_threads):
        for n in range(rounds):
            assert (f"t{i}-{n}" in t) is (n % 2 == 1)
    assert len(t) == len(t.to_dict()) == len(list(t))


def test_iteration_sees_atomic_snapshots_while_writing(impl):
    # Writers move a token between two keys in one put_many; any snapshot
    # (iteration, items, to_dict, select, copy, snapshot) holds exactly one.
    t = impl.LockedTable({"a": 1, "b": 0})
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            t.put_many({"a": n % 2, "b": 1 - n % 2, f"x{n % 50}": n})
            n += 1

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    try:
        for _ in range(300):
            for snap in (dict(t.items()), t.to_dict(), dict(t.select(lambda k, v: True)),
                         t.copy().to_dict(), t.snapshot().to_dict()):
                assert snap["a"] + snap["b"] == 1
            assert sum(1 for _ in t) >= 2
    finally:
        stop.set()
        w.join(JOIN_TIMEOUT)
    assert not w.is_alive()


# --- memory, GC, misuse --------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 10, 1000, 50_000])
def test_sizeof_is_honest(n):
    keys = [f"key{i}" for i in range(n)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t = fastkv._core.LockedTable()
        for k in keys:
            t[k] = None
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    size = sys.getsizeof(t)
    allocated = after - before
    assert abs(size - allocated) <= 64 + allocated // 100, (size, allocated)
    assert t.info() == {"size": n, "memory": size}


@pytest.mark.parametrize("data", [{i * 7919: i for i in range(5000)},
                                  {f"k{i}": i for i in range(5000)}, [(i, i) for i in range(5000)]],
                         ids=["int-dict", "str-dict", "pairs"])
def test_built_from_data_keeps_growth_room(data):
    # issue 15: a LockedTable built from data had no spare entry slot, so its
    # first insert rebuilt the whole table under the lock (readers blocked).
    # Now it gets the room its index allows, as dict(d) has: the next inserts
    # reuse the arrays (the size does not change) until the index is 2/3 full.
    t = fastkv._core.LockedTable(data)
    size = sys.getsizeof(t)
    d = dict(data)
    assert size <= sys.getsizeof(d) + 256
    for i in range(300):  # 5,000 keys: an index of 8,192 slots, room for 5,461
        t[f"new{i}"] = i
        d[f"new{i}"] = i
    assert sys.getsizeof(t) == size
    assert t.to_dict() == d and list(t) == list(d)
    # the memory promise holds with the room
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        t2 = fastkv._core.LockedTable(data)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert abs(sys.getsizeof(t2) - allocated) <= 64 + allocated // 100


def test_to_dict_keeps_order_key_objects_and_colliding_keys():
    keys = [10**30 + 1, "a", 7, Key("x", h=7), Key("y", h=7), 7.5, True, ("t", 1)]
    t = fastkv._core.LockedTable(zip(keys, range(len(keys))))
    d = t.to_dict()
    expect = dict(zip(keys, range(len(keys))))
    assert d == expect and [type(k) for k in d] == [type(k) for k in expect]
    assert all(a is b for a, b in zip(d, expect))
    f = fastkv._core.FrozenTable(t)
    assert f.to_dict() == expect and all(a is b for a, b in zip(f.to_dict(), expect))


def test_self_cycle_is_collected(impl):
    class Obj:
        pass

    t = impl.LockedTable()
    o = Obj()
    t["self"] = t
    t["o"] = o
    t[o] = [t]
    r = weakref.ref(o)
    rt = weakref.ref(t)
    del t, o
    gc.collect()
    assert r() is None
    assert rt() is None


def test_subclass_instance_cycle_is_collected(impl):
    class Sub(impl.LockedTable):
        pass

    class Obj:
        pass

    t = Sub()
    t.attr = t
    o = Obj()
    t["o"] = (o, t)
    r = weakref.ref(o)
    del t, o
    gc.collect()
    assert r() is None


def test_snapshot_is_the_compiled_frozen_table_and_independent():
    t = fastkv._core.LockedTable({"a": [1]})
    snap = t.snapshot()
    assert type(snap) is fastkv._core.FrozenTable
    t["a"].append(2)        # values are shared (as dict.copy), the tables are not
    t["b"] = 2
    assert snap.to_dict() == {"a": [1, 2]}
    assert type(t.copy()) is fastkv._core.LockedTable


def test_fetch_waiters_get_the_leaders_exception_object(impl):
    t = impl.LockedTable()
    entered, release = threading.Event(), threading.Event()
    error = LookupError("boom")
    calls = []

    def loader(key):
        calls.append(key)
        entered.set()
        release.wait(JOIN_TIMEOUT)
        raise error

    got = []

    def fetcher(i):
        if i:
            assert entered.wait(JOIN_TIMEOUT)
        try:
            t.fetch("k", loader)
        except LookupError as exc:
            got.append(exc)

    threads = [threading.Thread(target=fetcher, args=(i,), daemon=True) for i in range(4)]
    threads[0].start()
    assert entered.wait(JOIN_TIMEOUT)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.05)  # let the waiters reach the flight (order only, not a timing assertion)
    release.set()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads)
    assert len(got) == 4 and all(exc is error for exc in got)
    assert 1 <= len(calls) <= 4
    assert "k" not in t


@pytest.mark.parametrize("make_key", list(KEY_MAKERS.values())[:3], ids=list(KEY_MAKERS)[:3])
def test_churn_at_the_end_does_not_fill_the_index(impl, make_key):
    # Regression (engine): deleting the last entry trims it, and the next
    # append reused its entry slot but took a fresh index slot, leaving a
    # dummy behind each time; once no index slot was empty, a lookup of an
    # absent key probed forever. Appends now count against `usable` (dict's
    # dk_usable), which trimming does not give back, so the table rebuilds.
    t = impl.LockedTable({make_key(-1): "kept"})
    for i in range(2000):
        t[make_key(i)] = i
        assert t.get(make_key(10**6)) is None
        if i % 3 == 0:
            assert t.popitem() == (make_key(i), i)
        else:
            del t[make_key(i)]
    assert t.to_dict() == {make_key(-1): "kept"}
    assert make_key(5) not in t


def test_get_arguments(impl):
    t = impl.LockedTable({"a": 1})
    assert t.get("a") == 1 and t.get("b") is None and t.get("b", 2) == 2
    assert t.get(key="a") == 1 and t.get("b", default=3) == 3 and t.get(default=4, key="b") == 4
    for bad in (lambda: t.get(), lambda: t.get("a", 1, 2), lambda: t.get("a", key="a"),
                lambda: t.get("a", 1, default=2), lambda: t.get("a", other=1), lambda: t.get(default=1)):
        with pytest.raises(TypeError):
            bad()
    with pytest.raises(TypeError):
        t.get([])   # unhashable
