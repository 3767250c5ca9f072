"""OwnerTable: the owner thread, its FIFO, casts and calls, close, fork, exit.

The generic mapping API is tested elsewhere; these tests are about what only
the owner-serialized table does. Every test runs on the compiled and the
reference implementation (``impl``).
"""

import logging
import os
import threading


import pytest

from _support import assert_dropping_stops_the_owner, run_script


class Blocker:
    """Keeps an owner busy: ``hold(table)`` queues a call that waits until
    ``release()``; requests queued meanwhile stay queued."""

    def __init__(self):
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.thread = None
        self.result = None

    def _fn(self, *_):
        self.entered.set()
        self.gate.wait()
        return "released"

    def hold(self, call):
        def run():
            self.result = call(self._fn)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.entered.wait(10)

    def release(self):
        self.gate.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


class CollidingKey:
    """A key with a chosen hash whose ``__eq__`` can raise: makes an insert on
    the owner thread fail while hashing at the call site succeeds."""

    def __init__(self, h, fail=False):
        self.h = h
        self.fail = fail

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        if self.fail or getattr(other, "fail", False):
            raise ValueError("eq failed on purpose")
        return self is other


@pytest.fixture
def table(impl):
    t = impl.OwnerTable({"a": 1})
    yield t
    t.close()


def test_a_callers_cast_then_call_sees_it(table):
    for i in range(300):
        table.put(i, i * 2)
        assert table[i] == i * 2
        assert table.get(i) == i * 2
        assert i in table
    table.put_many({"x": 1, "y": 2})
    assert table.get_many(["x", "y", "z"], 0) == [1, 2, 0]
    assert table.delete("x") is None  # a cast: it cannot know
    assert "x" not in table
    table.clear()
    assert len(table) == 0


def test_producers_cast_then_sync_nothing_lost(impl):
    table = impl.OwnerTable()
    n_threads, n_puts = 4, 400

    def producer(tid):
        for i in range(n_puts):
            table.put((tid, i), i)
            table.put(("last", tid), i)  # per-producer FIFO: the last write wins
        table.sync()

    threads = [threading.Thread(target=producer, args=(tid,)) for tid in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    data = table.to_dict()
    assert len(data) == n_threads * (n_puts + 1)
    for tid in range(n_threads):
        assert data[("last", tid)] == n_puts - 1
        assert all(data[(tid, i)] == i for i in range(n_puts))
    assert table.info()["errors"] == 0
    assert table.close() is True


def test_info_queue_counts_waiting_requests_not_the_one_in_service(impl):
    table = impl.OwnerTable()
    blocker = Blocker()
    blocker.hold(table.call)  # a call in service: dequeued, not waiting
    assert table.info()["queue"] == 0
    table.put("a", 1)
    table.delete("b")
    assert table.info()["queue"] == 2
    blocker.release()
    table.sync()
    assert table.info()["queue"] == 0
    assert table.to_dict() == {"a": 1}
    assert table.close() is True


def test_info_never_waits_for_the_owner_inside_a_keys_eq(impl):
    # Regression: info() read the size with len() on the storage, which waits
    # for its lock; the owner holds that lock while a key's __eq__ runs, so
    # info() returned only after the queue had drained and reported "queue" 0
    # with every cast below still waiting (seen on the free-threaded build).
    entered, gate = threading.Event(), threading.Event()

    class GatedKey:
        def __hash__(self):
            return 1

        def __eq__(self, other):
            entered.set()
            gate.wait(10)  # bounded: an info() that waits fails below, never hangs
            return self is other

    table = impl.OwnerTable()
    table.put(GatedKey(), 1)
    table.put(GatedKey(), 2)  # the owner compares it with the first one
    assert entered.wait(10)
    for i in range(100):
        table.put(i, i)
    info = table.info()
    gate.set()
    assert info["queue"] >= 100
    assert info["size"] in (1, 2)
    table.sync()
    assert table.info()["size"] == 102
    assert table.info()["queue"] == 0
    assert table.close() is True


def test_close_applies_queued_casts(impl):
    table = impl.OwnerTable()
    storage = table.call(lambda s: s)
    blocker = Blocker()
    blocker.hold(table.call)
    for i in range(100):
        table.put(i, i)
    assert table.info()["queue"] >= 100
    closer = threading.Thread(target=table.close)
    closer.start()
    blocker.release()
    closer.join(10)
    assert not closer.is_alive()
    assert blocker.result == "released"
    assert storage.to_dict() == {i: i for i in range(100)}


def test_close_timeout_result(impl):
    table = impl.OwnerTable()
    blocker = Blocker()
    blocker.hold(table.call)
    table.put("queued", 1)
    assert table.close(timeout=0.05) is False  # the owner is still busy
    with pytest.raises(impl.ClosedError):
        table.put("late", 1)
    blocker.release()
    assert table.close() is True  # idempotent: now it has finished
    assert table.close(timeout=0) is True


def test_close_is_idempotent_and_context_manager(impl):
    with impl.OwnerTable(a=1) as table:
        assert table["a"] == 1
    assert table.close() is True
    with pytest.raises(impl.ClosedError):
        table.get("a")


def test_access_levels(impl):
    with pytest.raises(ValueError):
        impl.OwnerTable(access="public")
    private = impl.OwnerTable({"a": 1})
    protected = impl.OwnerTable({"a": 1}, access="protected")
    assert private.info()["access"] == "private"
    assert protected.info()["access"] == "protected"
    assert protected.copy().info()["access"] == "protected"
    assert private.copy().info()["access"] == "private"

    # protected: reads go straight to the table, even while the owner is busy
    blocker = Blocker()
    blocker.hold(protected.call)
    assert protected["a"] == 1
    assert protected.get("a") == 1 and "a" in protected and len(protected) == 1
    assert protected.to_dict() == {"a": 1}
    # writes still go through the owner: another thread's is not applied yet,
    # and this thread, with nothing queued, reads at once
    writer = threading.Thread(target=protected.put, args=("a", 2))
    writer.start()
    writer.join(10)
    assert protected["a"] == 1
    # read-your-writes: the writing thread's own read waits for its write
    seen = []

    def write_then_read():
        protected.put("a", 3)
        seen.append(protected["a"])

    own = threading.Thread(target=write_then_read)
    own.start()
    own.join(0.2)
    assert own.is_alive() and seen == []
    blocker.release()
    own.join(10)
    assert seen == [3]
    assert protected["a"] == 3

    # private: a read waits for the owner
    blocker = Blocker()
    blocker.hold(private.call)
    got = []
    reader = threading.Thread(target=lambda: got.append(private["a"]))
    reader.start()
    reader.join(0.2)
    assert reader.is_alive() and got == []
    blocker.release()
    reader.join(10)
    assert got == [1]
    private.close()
    protected.close()


def test_call_gets_the_locked_table_storage(impl, table):
    storage = table.call(lambda s: s)
    assert type(storage) is impl.LockedTable
    assert table.call(lambda s, k, d: s.get(k, d), "a", None) == 1
    assert table.call(lambda s: s.insert_new("b", 2)) is True
    assert table.call(lambda s: s.update_counter("n", 5)) == 5
    assert table.to_dict() == {"a": 1, "b": 2, "n": 5}


def test_call_runs_on_the_owner_thread(table):
    me = threading.get_ident()
    owner = table.call(lambda s: threading.get_ident())
    assert owner != me
    assert table.call(lambda s: threading.get_ident()) == owner
    assert threading.current_thread().ident == me


def test_exception_in_call_reaches_caller_state_unchanged(table):
    def fails(storage, key):
        storage.get(key)
        raise LookupError(key)

    with pytest.raises(LookupError, match="a"):
        table.call(fails, "a")
    assert table.to_dict() == {"a": 1}
    assert table.info()["errors"] == 0  # errors counts casts only
    table.put("b", 2)
    assert table["b"] == 2  # the owner keeps serving


def test_exception_in_cast_is_logged_counted_and_owner_keeps_serving(table, caplog):
    table.put(CollidingKey(7), "first")
    table.sync()
    with caplog.at_level(logging.ERROR, logger="fastkv"):
        table.put(CollidingKey(7, fail=True), "second")  # hashes fine here, fails on the owner
        table.sync()
    assert table.info()["errors"] == 1
    records = [r for r in caplog.records if r.name == "fastkv"]
    assert records and records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    table.put("after", 1)
    assert table["after"] == 1
    assert len(table) == 3  # "a", the first colliding key, "after"


def test_unhashable_key_raises_at_call_site_before_queueing(table):
    table.sync()
    served = table.info()["served"]
    for operation in (
        lambda: table.put([], 1),
        lambda: table.__setitem__({}, 1),
        lambda: table.put_many([("ok", 1), ([], 2)]),
        lambda: table.update([("ok", 1), ({}, 2)]),
        lambda: table.delete([]),
        lambda: table.get([]),
        lambda: table[[]],
        lambda: [] in table,
        lambda: table.get_many(["a", []]),
        lambda: table.pop([]),
        lambda: table.setdefault([], 1),
    ):
        with pytest.raises(TypeError):
            operation()
    info = table.info()
    assert info["served"] == served and info["queue"] == 0 and info["errors"] == 0
    assert table.to_dict() == {"a": 1}


def test_every_method_raises_closed_error_after_close(impl):
    table = impl.OwnerTable({"a": 1})
    keys_view, items_view = table.keys(), table.items()
    assert table.close() is True
    operations = [
        lambda: table["a"],
        lambda: table.get("a"),
        lambda: "a" in table,
        lambda: len(table),
        lambda: iter(table),
        lambda: list(keys_view),
        lambda: list(items_view),
        lambda: table.to_dict(),
        lambda: table.get_many(["a"]),
        lambda: table.copy(),
        lambda: table == {"a": 1},
        lambda: table.put("b", 1),
        lambda: table.__setitem__("b", 1),
        lambda: table.put_many({"b": 1}),
        lambda: table.update(b=1),
        lambda: table.delete("a"),
        lambda: table.__delitem__("a"),
        lambda: table.pop("a"),
        lambda: table.pop("a", None),
        lambda: table.popitem(),
        lambda: table.setdefault("a"),
        lambda: table.clear(),
        lambda: table.call(len),
        lambda: table.sync(),
        lambda: table.info(),
    ]
    for operation in operations:
        with pytest.raises(impl.ClosedError):
            operation()
    assert table.close() is True
    assert table.close(timeout=0) is True


def test_protected_table_raises_closed_error_after_close(impl):
    table = impl.OwnerTable({"a": 1}, access="protected")
    table.close()
    for operation in (lambda: table["a"], lambda: table.get("a"), lambda: len(table), lambda: list(table)):
        with pytest.raises(impl.ClosedError):
            operation()


def test_requests_from_the_owner_thread_do_not_deadlock(table):
    def on_owner(storage):
        table.put("b", 2)  # cast from the owner: queued behind this call
        value = table.get("a")  # call from the owner: served inline
        table.sync()
        nested = table.call(lambda s: s.get("a"))
        return value, nested, len(table), "a" in table

    assert table.call(on_owner) == (1, 1, 1, True)
    assert table["b"] == 2


def test_dropped_table_stops_its_owner(impl):
    assert_dropping_stops_the_owner(lambda: impl.OwnerTable({"a": 1}),
                                    lambda t: t.call(lambda s: threading.get_ident()))


def test_fork_child_gets_closed_error_and_never_hangs(impl):
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    result = run_script(
        impl,
        """
        import os
        t = m.OwnerTable({"a": 1})
        p = m.OwnerTable({"a": 1}, access="protected")
        t.put("b", 2)
        t.sync()
        pid = os.fork()
        if pid == 0:
            failures = 0
            for op in (lambda: t.get("a"), lambda: t["a"], lambda: t.put("c", 3),
                       lambda: t.sync(), lambda: t.call(len), lambda: len(t),
                       lambda: p["a"], lambda: p.put("c", 3)):
                try:
                    op()
                    failures += 1
                except m.ClosedError:
                    pass
            t.close()
            p.close()
            fresh = m.OwnerTable({"z": 26})  # a table made in the child works
            ok = fresh["z"] == 26 and fresh.close()
            os._exit(0 if failures == 0 and ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", t["b"], p["a"])
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["child 0", "parent 2 1"]


def test_interpreter_exit_applies_pending_casts_without_hanging(impl):
    result = run_script(
        impl,
        """
        import time

        class SlowKey:
            # inserting a second one makes the owner compare them, slowly
            def __hash__(self):
                return 1
            def __eq__(self, other):
                time.sleep(1.0)   # 0.2 s let a loaded machine drain the queue first
                return self is other

        t = m.OwnerTable()
        storage = t.call(lambda s: s)
        AT_EXIT.append(lambda: print("last =", storage.get("last"), "size =", len(storage)))
        t.put(SlowKey(), 1)
        t.put(SlowKey(), 2)
        for i in range(2, 1002):
            t.put(i, i)
        t.put("last", "applied")
        print("queued", t.info()["queue"] > 0, flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")[:2]
    assert lines[1] == "last = applied size = 1003"
    assert lines[0] == "queued True"

