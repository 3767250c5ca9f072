"""Stress for the free-threaded build (PEP 703, GIL off), run on every build:
many threads writing one key while others read it, iterating while writing,
closing an owner while calls are in flight, fetch's single flight with 8
threads, FrozenTable snapshots released while readers race with the swap (no
reader may touch freed memory, nothing may leak). On a GIL build these still
pass (the GIL switches threads every 10 us here); without the GIL the threads
really run at once. Outcomes only, no timing assertions; every wait bounded.
"""

import gc
import os
import subprocess
import sys
import sysconfig
import threading
import weakref

import pytest

import fastkv
from _support import JOIN_TIMEOUT, run_threads

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
N = 8


pytestmark = pytest.mark.usefixtures("fast_switching")


class Val:
    """A value whose release is observable (weakref) and whose identity is
    checked by readers (a freed one would not be a Val any more)."""

    __slots__ = ("n", "__weakref__")

    def __init__(self, n):
        self.n = n


@pytest.mark.skipif(not FREE_THREADED, reason="a free-threaded (--disable-gil) build only")
def test_import_keeps_the_gil_off():
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c",
         "import sys, fastkv, fastkv._core; print(sys._is_gil_enabled())"],
        env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("kind", ["locked", "frozen", "owner-private", "owner-protected"])
def test_many_threads_write_one_key(impl, kind):
    if kind == "frozen":
        t = impl.FrozenTable(k=Val(-1))
    elif kind == "locked":
        t = impl.LockedTable(k=Val(-1))
    else:
        t = impl.OwnerTable(k=Val(-1), access=kind.split("-")[1])
    rounds = 300 if kind == "frozen" else 2000
    seen = [set() for _ in range(N)]

    def worker(i):
        for r in range(rounds):
            if i % 2:
                v = Val(i * rounds + r)
                t.put("k", v)
                if kind != "frozen":
                    t["k"] = v
            else:
                v = t["k"]
                assert type(v) is Val
                seen[i].add(v.n // rounds)
                assert t.get("k") is not None

    try:
        run_threads(worker, N)
        if kind.startswith("owner"):
            t.sync()
        last = t["k"]
        assert type(last) is Val and last.n >= 0 and (last.n // rounds) % 2 == 1
        assert len(t) == 1
        ref = weakref.ref(last)
        del last
        t.delete("k")
        if kind.startswith("owner"):
            t.sync()
        gc.collect()
        assert ref() is None, "the last value was not released"
    finally:
        t.close()


def test_frozen_snapshots_released_while_readers_race(impl):
    # Readers hammer the str/int fast path (no reference to the snapshot);
    # the writer replaces every value over and over. Every replaced value and
    # snapshot must be released (none leaked by the deferred release), and no
    # reader may ever see a value of a released snapshot.
    keys = [f"k{i}" for i in range(64)] + list(range(64))
    t = impl.FrozenTable((k, Val(0)) for k in keys)
    refs = []
    stop = threading.Event()

    def worker(i):
        if i == 0:
            try:
                for g in range(1, 120):
                    old = [weakref.ref(t[k]) for k in keys[g % 8::8]]
                    refs.extend(old)
                    t.put_many((k, Val(g)) for k in keys[g % 8::8])
            finally:
                stop.set()
        else:
            while not stop.is_set():
                for k in keys:
                    v = t[k]
                    assert type(v) is Val and v.n >= 0
                    assert k in t
                assert len(t) == len(keys)

    run_threads(worker, N)
    gc.collect()
    # every replaced value is gone; only the ones still in the table live
    current = {id(t[k]) for k in keys}
    assert all(r() is None or id(r()) in current for r in refs)


@pytest.mark.parametrize("kind", ["locked", "frozen", "owner-private", "owner-protected"])
def test_iterate_while_writing(impl, kind):
    n = 50
    if kind == "frozen":
        t = impl.FrozenTable((k, 0) for k in range(n))
    elif kind == "locked":
        t = impl.LockedTable((k, 0) for k in range(n))
    else:
        t = impl.OwnerTable(((k, 0) for k in range(n)), access=kind.split("-")[1])
    stop = threading.Event()

    def worker(i):
        if i == 0:
            try:
                for g in range(1, 80):
                    t.put_many((k, g) for k in range(n))  # one atomic step
                    t.put(("extra", g), g)
                    t.delete(("extra", g))
            finally:
                stop.set()
        else:
            while not stop.is_set():
                items = list(t.items())
                plain = [kv for kv in items if not isinstance(kv[0], tuple)]
                assert [k for k, _ in plain] == list(range(n))
                assert len({v for _, v in plain}) == 1, plain   # one put_many each
                assert len(list(t)) in (n, n + 1)
                assert len(t.to_dict()) in (n, n + 1)

    try:
        run_threads(worker, N // 2)
    finally:
        t.close()


@pytest.mark.parametrize("what", ["owner-private", "owner-protected", "agent"])
def test_close_while_calling(impl, what):
    # Callers never hang and never see garbage: each call answers correctly or
    # raises ClosedError, and after close() every call raises ClosedError.
    if what == "agent":
        t = impl.Agent(7)
        call = lambda: t.get(lambda s: s)  # noqa: E731
        expected = 7
    else:
        t = impl.OwnerTable(k=7, access=what.split("-")[1])
        call = lambda: t["k"]  # noqa: E731
        expected = 7
    closed = threading.Event()
    answered = [0] * N

    def worker(i):
        if i == 0:
            for _ in range(5000):           # every caller under way (bounded)
                if min(answered[1:]) >= 20:
                    break
                threading.Event().wait(0.001)
            assert t.close(JOIN_TIMEOUT) is True
            closed.set()
            return
        while True:
            try:
                assert call() == expected
                if what != "agent":
                    t.put(("c", i), i)
            except impl.ClosedError:
                return
            answered[i] += 1

    run_threads(worker, N)
    with pytest.raises(impl.ClosedError):
        if what == "agent":
            t.get(lambda s: s)
        else:
            t.put("x", 1)


def test_fetch_single_flight_eight_threads(impl):
    # the loader runs once per key although 8 threads ask at the same moment;
    # every thread gets the loader's object itself
    for round_ in range(20):
        t = impl.LockedTable()
        calls = []
        gate = threading.Barrier(N)
        results = [None] * N

        def loader(key):
            calls.append(key)
            return Val(key)

        def worker(i):
            gate.wait(JOIN_TIMEOUT)
            results[i] = t.fetch(round_, loader)

        run_threads(worker, N)
        assert calls == [round_]
        assert all(r is results[0] for r in results) and results[0].n == round_


def test_counters_and_insert_new_many_threads(impl):
    t = impl.LockedTable()
    wins = []

    def worker(i):
        for k in range(500):
            t.update_counter("c")
            if t.insert_new(k % 50, i):
                wins.append(k % 50)

    run_threads(worker, N)
    assert t["c"] == 500 * N
    assert sorted(wins) == list(range(50))


class _RefProbeKey:
    """A key whose __eq__ (run by the table's look-up, in the reading thread)
    records sys.getrefcount of the table being read."""

    table = None
    seen = []

    def __init__(self, name):
        self.name = name

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        if _RefProbeKey.table is not None:
            _RefProbeKey.seen.append(sys.getrefcount(_RefProbeKey.table))
        return isinstance(other, _RefProbeKey) and other.name == self.name


def _refs_during_reads(t):
    """The table's reference count seen from inside t[k], t.get(k), k in t."""
    seen = []
    probe = _RefProbeKey("a")           # equal to the stored key, not it
    _RefProbeKey.seen = seen
    _RefProbeKey.table = t
    try:
        t[probe]
        t.get(probe)
        t.get(probe, None)
        probe in t
    finally:
        _RefProbeKey.table = None
    return seen


def test_protected_owner_reads_take_no_reference_to_the_table():
    # A read that takes a reference to the table (or to any object every
    # reader shares) writes that object's refcount: on a free-threaded build
    # an atomic add on one cache line from every reading thread, which is
    # what kept two threads' protected reads from scaling (OwnerTable.get held
    # the table in a typed local). A LockedTable's own reads take none: the
    # protected OwnerTable's reads must see the same count.
    locked = fastkv.LockedTable({_RefProbeKey("a"): 1})
    owner = fastkv.OwnerTable({_RefProbeKey("a"): 1}, access="protected")
    try:
        want = _refs_during_reads(locked)
        got = _refs_during_reads(owner)
        assert len(want) == len(got) >= 4
        assert got == want
    finally:
        owner.close()
