"""LockedTable's ETS operations (insert_new, update_counter, take, select,
snapshot, clear, info, single-flight fetch) and re-entrancy: keys whose
__eq__/__hash__ and values whose __del__ touch the same table never deadlock
or corrupt it (a RuntimeError is acceptable). Deadlocks are detected with a
thread joined with a timeout."""

import gc
import os
import sys
import threading
import time

import pytest

from _support import JOIN_TIMEOUT, Key, assert_same, run_fork_while_held, run_python



def run_in_thread(fn, *args, timeout=JOIN_TIMEOUT, on_deadlock=None):
    """Run fn(*args) in a daemon thread; return ("ok", result) or ("error",
    exception); fail the test if it does not finish in ``timeout`` seconds (a
    deadlock), after calling ``on_deadlock()``."""
    out = []

    def target():
        try:
            out.append(("ok", fn(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out.append(("error", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if on_deadlock is not None:
            on_deadlock()
        pytest.fail(f"deadlock: {fn} did not return within {timeout}s")
    return out[0]


# -- insert_new -------------------------------------------------------------


def test_insert_new(impl):
    t = impl.LockedTable({"a": 1})
    assert t.insert_new("b", 2) is True
    assert t.insert_new("a", 3) is False
    assert t.insert_new("b", 4) is False
    assert t.insert_new(1, "int") is True
    assert t.insert_new(1.0, "float") is False
    assert t.insert_new(True, "bool") is False
    assert_same(t, {"a": 1, "b": 2, 1: "int"})
    assert type(list(t)[-1]) is int


# -- update_counter ---------------------------------------------------------


def test_update_counter(impl):
    t = impl.LockedTable({"n": 10})
    assert t.update_counter("n") == 11
    assert t.update_counter("n", 5) == 16
    assert t.update_counter("n", -20) == -4
    assert t.update_counter("n", incr=0) == -4
    assert t["n"] == -4
    assert t.update_counter("new") == 1  # default 0 + incr 1
    assert t.update_counter("other", 3, 100) == 103
    assert t.update_counter("neg", -1, default=0) == -1
    assert t.update_counter("other", 1, default=-5) == 104  # default unused
    assert t.update_counter("big", 2**70, 2**70) == 2**71
    assert list(t.items()) == [("n", -4), ("new", 1), ("other", 104), ("neg", -1), ("big", 2**71)]
    assert type(t.update_counter("n")) is int


def test_update_counter_keeps_position(impl):
    t = impl.LockedTable([("a", 0), ("b", 0)])
    t.update_counter("a")
    assert list(t) == ["a", "b"]


# -- take -------------------------------------------------------------------


def test_take(impl):
    value = object()
    t = impl.LockedTable([("a", value), ("b", 2)])
    assert t.take("a") is value
    assert "a" not in t
    assert t.take("a", "dflt") == "dflt"
    assert t.take("b", None) == 2
    assert len(t) == 0
    assert t.take("x", default=7) == 7


# -- select -----------------------------------------------------------------


def test_select(impl):
    t = impl.LockedTable({i: i * i for i in range(10)})
    calls = []

    def pred(k, v):
        calls.append((k, v))
        return k % 2 == 0 and v > 10

    result = t.select(pred)
    assert result == [(4, 16), (6, 36), (8, 64)]
    assert type(result) is list
    assert all(type(item) is tuple for item in result)
    assert calls == [(i, i * i) for i in range(10)]
    assert t.select(lambda k, v: True) == list(t.items())
    assert t.select(lambda k, v: False) == []
    assert impl.LockedTable().select(lambda k, v: True) == []
    # truthiness, not identity with True
    assert t.select(lambda k, v: k if k < 3 else None) == [(1, 1), (2, 4)]


def test_select_predicate_exception_reaches_caller(impl):
    t = impl.LockedTable({"a": 1, "b": 2})

    def pred(k, v):
        if k == "b":
            raise ValueError("pred")
        return True

    with pytest.raises(ValueError, match="pred"):
        t.select(pred)
    assert_same(t, {"a": 1, "b": 2})
    t["c"] = 3  # the lock was released
    assert t.select(lambda k, v: True) == [("a", 1), ("b", 2), ("c", 3)]


def test_select_predicate_runs_outside_the_lock(impl):
    # the predicate writes to the table itself: it runs over a snapshot, never
    # under the lock, so this neither deadlocks nor sees its own writes
    t = impl.LockedTable({i: i for i in range(5)})

    def pred(k, v):
        t[k + 100] = v
        t.delete(k)
        return t.get(k + 100) == v

    status, result = run_in_thread(t.select, pred)
    assert status == "ok", result
    assert result == [(i, i) for i in range(5)]
    assert_same(t, {i + 100: i for i in range(5)})


def test_select_from_another_thread_while_predicate_runs(impl):
    t = impl.LockedTable({"a": 1, "b": 2})
    entered, release = threading.Event(), threading.Event()

    def pred(k, v):
        entered.set()
        release.wait(JOIN_TIMEOUT)
        return True

    selector = threading.Thread(target=t.select, args=(pred,), daemon=True)
    selector.start()
    assert entered.wait(JOIN_TIMEOUT)
    # the predicate is blocked: the table must still serve other threads
    status, _ = run_in_thread(lambda: (t.put("c", 3), t.get("a"), len(t)))
    release.set()
    selector.join(JOIN_TIMEOUT)
    assert status == "ok"
    assert not selector.is_alive()


# -- snapshot ---------------------------------------------------------------


def test_snapshot(impl):
    t = impl.LockedTable([("a", 1), ("b", [2])])
    snap = t.snapshot()
    # the FrozenTable of the LockedTable's own implementation
    frozen_cls = sys.modules[impl.LockedTable.__module__].FrozenTable
    assert type(snap) is frozen_cls
    assert_same(snap, {"a": 1, "b": t["b"]})
    t["c"] = 3
    t.delete("a")
    t["b"] = "changed"
    assert_same(snap, {"a": 1, "b": snap["b"]})
    assert snap["b"] == [2]
    snap.put("z", 0)
    assert "z" not in t
    assert t.to_dict() == {"b": "changed", "c": 3}
    assert type(impl.LockedTable().snapshot()) is frozen_cls
    assert len(impl.LockedTable().snapshot()) == 0


# -- clear, info ------------------------------------------------------------


def test_clear(impl):
    t = impl.LockedTable({i: i for i in range(100)})
    assert t.clear() is None
    assert len(t) == 0
    assert list(t) == []
    t[1] = 1
    assert t.to_dict() == {1: 1}


def test_info(impl):
    t = impl.LockedTable()
    info = t.info()
    assert set(info) == {"size", "memory"}
    assert info["size"] == 0
    assert isinstance(info["memory"], int) and info["memory"] >= 0
    empty_memory = info["memory"]
    for i in range(1000):
        t[i] = i
    info = t.info()
    assert info["size"] == 1000
    assert info["memory"] > empty_memory
    t.clear()
    assert t.info()["size"] == 0


# -- fetch: single flight ---------------------------------------------------


def test_fetch_present_and_missing(impl):
    t = impl.LockedTable({"a": 1})
    calls = []

    def loader(key):
        calls.append(key)
        return key * 2

    assert t.fetch("a", loader) == 1
    assert calls == []
    assert t.fetch("b", loader) == "bb"
    assert calls == ["b"]
    assert t["b"] == "bb"
    assert t.fetch("b", loader) == "bb"
    assert calls == ["b"]
    t["n"] = None  # a stored None is a value, not a miss
    assert t.fetch("n", loader) is None
    assert calls == ["b"]


def test_fetch_loader_exception(impl):
    t = impl.LockedTable()

    def loader(key):
        raise LookupError(key)

    with pytest.raises(LookupError):
        t.fetch("k", loader)
    assert "k" not in t
    assert t.fetch("k", lambda key: 5) == 5


def _start_fetchers(t, key, loader, n):
    results = [None] * n

    def fetcher(i):
        try:
            results[i] = ("ok", t.fetch(key, loader))
        except BaseException as exc:  # noqa: BLE001
            results[i] = ("error", exc)

    threads = [threading.Thread(target=fetcher, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    return threads, results


def _join_all(threads):
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "fetch waiters deadlocked"


def test_fetch_single_flight(impl):
    t = impl.LockedTable()
    calls = []
    entered, release = threading.Event(), threading.Event()
    value = object()

    def loader(key):
        calls.append(key)
        entered.set()
        release.wait(JOIN_TIMEOUT)
        return value

    threads, results = _start_fetchers(t, "k", loader, 6)
    assert entered.wait(JOIN_TIMEOUT)
    time.sleep(0.05)  # let the other fetchers reach fetch and wait (order only, no timing assertion)
    release.set()
    _join_all(threads)
    assert calls == ["k"]  # exactly one loader call: waiters or latecomers see the stored value
    assert results == [("ok", value)] * 6
    assert t["k"] is value


def test_fetch_single_flight_exception_reaches_every_waiter(impl):
    t = impl.LockedTable()
    calls = []
    entered, release = threading.Event(), threading.Event()

    class LoadError(Exception):
        pass

    def loader(key):
        calls.append(key)
        entered.set()
        release.wait(JOIN_TIMEOUT)
        raise LoadError(key)

    threads, results = _start_fetchers(t, "k", loader, 6)
    assert entered.wait(JOIN_TIMEOUT)
    time.sleep(0.05)
    release.set()
    _join_all(threads)
    # every caller gets the exception (as a waiter, or from its own load: nothing is cached)
    assert [status for status, _ in results] == ["error"] * 6
    assert all(isinstance(exc, LoadError) for _, exc in results)
    assert 1 <= len(calls) <= 6
    assert "k" not in t
    assert len(t) == 0
    assert t.fetch("k", lambda key: 1) == 1


def test_fetch_does_not_block_other_keys(impl):
    t = impl.LockedTable({"present": 0})
    entered, release = threading.Event(), threading.Event()

    def slow(key):
        entered.set()
        release.wait(JOIN_TIMEOUT)
        return "slow"

    threads, results = _start_fetchers(t, "slow", slow, 2)
    try:
        assert entered.wait(JOIN_TIMEOUT)

        def others():
            return (
                t.fetch("fast", lambda key: "fast"),
                t.fetch("present", lambda key: "never"),
                t.get("slow", "absent"),
                t.put("x", 1),
                len(t),
            )

        status, result = run_in_thread(others)
        assert status == "ok", result
        assert result == ("fast", 0, "absent", None, 3)
    finally:
        release.set()
    _join_all(threads)
    assert results == [("ok", "slow")] * 2


def test_fetch_loader_uses_the_table(impl):
    # the loader runs outside the lock: it may read and write the table
    t = impl.LockedTable({"base": 10})

    def loader(key):
        t["side"] = "effect"
        return t["base"] + t.fetch("inner", lambda k: 1)

    status, result = run_in_thread(t.fetch, "k", loader)
    assert status == "ok", result
    assert result == 11
    assert t.to_dict() == {"base": 10, "side": "effect", "inner": 1, "k": 11}


def test_fetch_reentrant_same_key_does_not_deadlock(impl):
    t = impl.LockedTable()

    def loader(key):
        return t.fetch(key, loader)

    status, result = run_in_thread(t.fetch, "k", loader)
    assert status == "error"
    assert isinstance(result, RuntimeError)  # RecursionError is one too
    assert "k" not in t
    assert t.fetch("k", lambda key: 2) == 2


# -- re-entrancy: __eq__, __hash__, __del__ touching the table ----------------


class Arm:
    """A one-shot action shared by the keys of one test."""

    def __init__(self, action):
        self.action = action
        self.outcomes = []

    def fire(self):
        action, self.action = self.action, None  # once: no infinite recursion
        if action is not None:
            try:
                action()
                self.outcomes.append("ok")
            except RuntimeError as exc:
                self.outcomes.append(exc)
                raise


class Toucher:
    """A key equal by name, with a fixed hash, whose __eq__ (or __hash__)
    fires its Arm: an action on the very table it is being used with."""

    def __init__(self, name, arm=None, on_hash=False):
        self.name = name
        self.arm = arm
        self.on_hash = on_hash

    def __hash__(self):
        if self.on_hash and self.arm is not None:
            self.arm.fire()
        return 7

    def __eq__(self, other):
        if not self.on_hash and self.arm is not None:
            self.arm.fire()
        if not isinstance(other, Toucher):
            return NotImplemented
        return self.name == other.name

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __repr__(self):
        return f"Toucher({self.name!r})"


def assert_consistent(t):
    """Internal consistency after a re-entrant call (every Arm spent)."""
    items = list(t.items())
    assert len(items) == len(t) == len(t.to_dict()) == len(list(t))
    for k, v in items:
        assert k in t
        assert t[k] is v
    return dict(items)


def _delete_all(t):
    for k in list(t):
        t.delete(k)


ACTIONS = {
    "read": lambda t, stored: (t.get("other"), len(t), list(t)),
    "write": lambda t, stored: t.put("other", "written"),
    "delete-stored": lambda t, stored: t.delete(stored),
    "grow": lambda t, stored: t.put_many((("g", i), i) for i in range(200)),
    "delete-all": lambda t, stored: _delete_all(t),
}


def _abandon(kind, t):
    """After a deadlock: stop the owner without waiting and forget the table,
    so neither the fixture nor the atexit hook waits for it."""
    if kind.owner:
        t.close(timeout=0)
    kind.untrack(t)


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("where", ["eq", "hash"])
@pytest.mark.parametrize("op", ["get", "put", "contains", "delete"])
def test_reentrant_key_never_deadlocks(kind, action, where, op):
    # the stored key and the probe share a hash and differ: a lookup of the
    # probe runs __eq__ (on one of them), which acts on the same table
    stored = Toucher("stored")
    t = kind.make([(stored, "stored-value"), ("other", 1)])
    arm = Arm(None)
    probe = Toucher("probe", arm, on_hash=where == "hash")
    stored.arm, stored.on_hash = arm, where == "hash"
    arm.action = lambda: ACTIONS[action](t, stored)
    ops = {
        "get": lambda: t.get(probe),
        "put": lambda: t.put(probe, "probe-value"),
        "contains": lambda: probe in t,
        "delete": lambda: t.delete(probe),
    }
    status, result = run_in_thread(ops[op], on_deadlock=lambda: _abandon(kind, t))
    if status == "error":
        assert isinstance(result, RuntimeError), repr(result)
    if kind.owner:
        assert run_in_thread(t.sync, on_deadlock=lambda: _abandon(kind, t))[0] == "ok"
    arm.action = None
    assert len(arm.outcomes) <= 1
    assert all(o == "ok" or isinstance(o, RuntimeError) for o in arm.outcomes)
    stored.arm = probe.arm = None
    assert_consistent(t)
    if status == "ok" and op == "get" and action == "read":
        assert result is None  # the probe is not in the table


class Haunted:
    """A value whose __del__ runs ``action`` (on the table that held it)."""

    def __init__(self, action):
        self.action = action
        self.outcome = []

    def __del__(self):
        try:
            self.action()
            self.outcome.append("ok")
        except RuntimeError as exc:
            self.outcome.append(exc)


DEL_ACTIONS = {
    "read": lambda t: (t.get("k"), len(t), list(t.items())),
    "write": lambda t: t.put("from-del", 1),
    "delete": lambda t: t.delete("other"),
}


@pytest.mark.parametrize("action", sorted(DEL_ACTIONS))
@pytest.mark.parametrize("drop", ["put", "delete", "put_many"])
def test_value_del_touching_table_never_deadlocks(kind, action, drop):
    t = kind.make([("other", 0)])
    outcomes = []

    def haunt():
        value = Haunted(lambda: DEL_ACTIONS[action](t))
        value.outcome = outcomes
        return value

    t.put("k", haunt())
    kind.settle(t)
    drops = {
        "put": lambda: t.put("k", "replaced"),
        "delete": lambda: t.delete("k"),
        "put_many": lambda: t.put_many([("k", "replaced")]),
    }
    status, result = run_in_thread(drops[drop])
    assert status == "ok", result
    if kind.owner:
        status, _ = run_in_thread(t.sync)
        assert status == "ok"
    gc.collect()
    assert_consistent(t)
    assert len(outcomes) <= 1
    assert all(o == "ok" or isinstance(o, RuntimeError) for o in outcomes)


@pytest.mark.parametrize("drop", ["setitem", "delitem", "pop", "popitem", "take", "clear"])
def test_locked_value_del_touching_table(impl, drop):
    t = impl.LockedTable()
    outcomes = []

    def action():
        t.put("from-del", len(t))

    value = Haunted(action)
    value.outcome = outcomes
    t["k"] = value
    del value
    drops = {  # the result is dropped in the thread: the value dies there
        "setitem": lambda: t.__setitem__("k", 1),
        "delitem": lambda: t.__delitem__("k"),
        "pop": lambda: [t.pop("k")] and None,
        "popitem": lambda: [t.popitem()] and None,
        "take": lambda: [t.take("k")] and None,
        "clear": lambda: t.clear(),
    }
    status, result = run_in_thread(drops[drop])
    assert status == "ok", result
    gc.collect()
    assert_consistent(t)
    assert len(outcomes) == 1
    assert outcomes[0] == "ok" or isinstance(outcomes[0], RuntimeError)


def test_locked_table_dealloc_with_haunted_values(impl):
    # values whose __del__ reads a second table, while the first is freed
    other = impl.LockedTable({"x": 1})
    seen = []
    t = impl.LockedTable({i: Haunted(lambda: seen.append(other.get("x"))) for i in range(50)})
    del t
    gc.collect()
    assert seen == [1] * 50


LOCKED_OPS = {
    "getitem": lambda t, k: t[k],
    "get_many": lambda t, k: t.get_many(["other", k]),
    "setitem": lambda t, k: t.__setitem__(k, "v"),
    "delitem": lambda t, k: t.__delitem__(k),
    "insert_new": lambda t, k: t.insert_new(k, "v"),
    "update_counter": lambda t, k: t.update_counter(k),
    "take": lambda t, k: t.take(k, None),
    "pop": lambda t, k: t.pop(k, None),
    "setdefault": lambda t, k: t.setdefault(k, 0),
    "fetch": lambda t, k: t.fetch(k, lambda key: 0),
    "put_many": lambda t, k: t.put_many([(k, 0)]),
    "update": lambda t, k: t.update({k: 0}),
}


@pytest.mark.parametrize("action", sorted(ACTIONS))
@pytest.mark.parametrize("op", sorted(LOCKED_OPS))
def test_reentrant_key_locked_operations(impl, op, action):
    # every LockedTable operation that looks a key up, with a key whose __eq__
    # uses the same table: no deadlock, a RuntimeError at most, a consistent table
    stored = Toucher("stored")
    t = impl.LockedTable([(stored, 1), ("other", 1)])
    arm = Arm(None)
    probe = Toucher("probe", arm)
    stored.arm = arm
    arm.action = lambda: ACTIONS[action](t, stored)
    status, result = run_in_thread(LOCKED_OPS[op], t, probe)
    if status == "error":
        assert isinstance(result, (RuntimeError, KeyError)), repr(result)
        if isinstance(result, KeyError):
            assert op == "delitem"
    stored.arm = probe.arm = None
    assert len(arm.outcomes) <= 1
    assert_consistent(t)
    # the table still works normally from any thread
    t["after"] = 1
    assert t.get("after") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("table", [
    "fastkv.LockedTable", "fastkv.reference.LockedTable",
    "fastkv.FrozenTable", "fastkv.reference.FrozenTable", "fastkv.ModuleTable",
])
def test_fork_while_another_thread_holds_the_lock(table):
    # thread A is inside an operation (a key's __eq__, run under the table's
    # lock -- the writer lock for FrozenTable/ModuleTable) when the main
    # thread forks: in the child A does not exist, and the table must still
    # be usable -- the child takes the orphaned lock over instead of waiting
    # forever for A
    proc = run_fork_while_held(table, 't.get(Slow()) if hasattr(t, "insert_new") else t.put(Slow(), 0)', """
        pid = os.fork()
        if pid == 0:
            try:
                t.put("child", 2)
                ok = t.get("child") == 2 and t.get("k") == 1 and len(t) == 2
                os._exit(0 if ok else 3)
            except BaseException:
                os._exit(4)
        go.set()
        a.join()
        _, status = os.waitpid(pid, 0)
        t.put("parent", 3)
        print(os.waitstatus_to_exitcode(status), t.get("parent"), t.get("k"))
    """, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 3 1", proc.stdout




class _SlowEqKey(Key):
    """A key whose __eq__ says so (``holding``) and sleeps (GIL released)."""

    holding = None

    def __eq__(self, other):
        if self.holding is not None:
            self.holding.set()
            time.sleep(0.3)
        return super().__eq__(other)

    __hash__ = Key.__hash__


def test_pickle_state_taken_after_a_writer_that_held_the_lock(impl):
    # The compiled __reduce__ sizes the state's list before taking the lock;
    # a writer holding the lock meanwhile (here: a key's slow __eq__ during
    # an insert) changes the size, and the state must then be taken whole
    # after that write (the snapshot fallback), never a stale or torn list.
    import pickle

    Slow = _SlowEqKey
    holding = Slow.holding = threading.Event()
    t = impl.LockedTable({Slow("a", h=1): 0, "x": 1})
    th = threading.Thread(target=t.__setitem__, args=(Slow("b", h=1), 2))
    th.start()
    try:
        assert holding.wait(JOIN_TIMEOUT)
        blob = pickle.dumps(t, 5)
    finally:
        th.join(JOIN_TIMEOUT)
    assert not th.is_alive()
    back = pickle.loads(blob)
    assert [(getattr(k, "name", k), v) for k, v in back.items()] == [("a", 0), ("x", 1), ("b", 2)]


def test_pickle_state_is_one_moment_when_a_finalizer_writes_meanwhile(impl):
    # The compiled __reduce__ allocates the state's list before taking the
    # lock and fills it under the lock (no snapshot copy); the allocation can
    # run the garbage collector, whose finalizers may write to the table.
    # The state must still be the table at one moment: here, with only
    # appends happening, a prefix of the table as it is afterwards.
    import pickle

    t = impl.LockedTable({i: i for i in range(200)})
    wrote = []

    class Writer:
        def __del__(self):
            k = 10_000 + len(wrote)
            wrote.append(k)
            t[k] = "late"

    old = gc.get_threshold()
    try:
        for _ in range(30):
            w = Writer()
            w.me = w  # cyclic garbage: freed only by a collection
            del w
            gc.set_threshold(1)
            blob = pickle.dumps(t, 5)
            gc.set_threshold(*old)
            back = pickle.loads(blob)
            items = list(back.items())
            now = list(t.items())
            assert items == now[: len(items)]
            assert len(items) >= 200
    finally:
        gc.set_threshold(*old)
        gc.collect()
    assert wrote  # the finalizers did run
