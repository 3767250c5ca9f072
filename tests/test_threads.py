"""Thread stress (4+ threads, bounded sizes): LockedTable's compound
operations are atomic (exact counter totals, one insert_new winner per key,
put/delete/iteration never raise or show a torn state), FrozenTable readers
always see one complete snapshot while a writer replaces it, OwnerTable loses
nothing cast by several producers. No timing assertions: only outcomes."""

import threading

import pytest

from _support import JOIN_TIMEOUT, run_threads

N_THREADS = 4


# switch threads often so that the interleavings actually happen
pytestmark = pytest.mark.usefixtures("fast_switching")


# -- LockedTable ----------------------------------------------------------------


def test_update_counter_exact_totals(impl):
    t = impl.LockedTable()
    n_keys, rounds = 8, 1600

    def worker(i):
        for r in range(rounds):
            t.update_counter(r % n_keys)
            t.update_counter("total", 2)
            t.update_counter("down", -1, default=1000)

    run_threads(worker, N_THREADS)
    assert t["total"] == 2 * N_THREADS * rounds
    assert t["down"] == 1000 - N_THREADS * rounds
    assert [t[k] for k in range(n_keys)] == [N_THREADS * rounds // n_keys] * n_keys


def test_insert_new_one_winner_per_key(impl):
    t = impl.LockedTable()
    n_keys = 1500
    wins = [[] for _ in range(N_THREADS)]

    def worker(i):
        order = range(n_keys) if i % 2 == 0 else range(n_keys - 1, -1, -1)
        for k in order:
            if t.insert_new(k, i):
                wins[i].append(k)

    run_threads(worker, N_THREADS)
    all_wins = sorted(k for w in wins for k in w)
    assert all_wins == list(range(n_keys))  # exactly one winner per key
    for i, won in enumerate(wins):
        assert all(t[k] == i for k in won)  # and its value is the one stored


def test_setdefault_and_pop_are_atomic(impl):
    t = impl.LockedTable()
    n_keys = 500
    got = [[] for _ in range(N_THREADS)]
    between = threading.Barrier(N_THREADS)
    first = {}

    def worker(i):
        for k in range(n_keys):
            if t.setdefault(k, i) == i:
                first.setdefault(k, []).append(i)
        between.wait(JOIN_TIMEOUT)
        for k in range(n_keys):
            v = t.pop(k, None)
            if v is not None:
                got[i].append(k)

    run_threads(worker, N_THREADS)
    # setdefault stored each key once (whoever stored it got its own value back;
    # another thread with the same value may also see it: only count unique keys)
    assert sorted(first) == list(range(n_keys))
    assert all(len(winners) == 1 for winners in first.values())
    assert sorted(k for g in got for k in g) == list(range(n_keys))  # each popped once
    assert len(t) == 0


def test_put_delete_iterate_never_torn(impl):
    # writers keep two invariants: ("pair", i) keys are always written together
    # with equal values by put_many (atomic), and a ("churn", j) key, when
    # present, maps to j. Readers iterate, copy, select and snapshot
    # concurrently: nothing raises, no copy shows a torn pair.
    t = impl.LockedTable({("pair", i): 0 for i in range(20)})
    rounds = 300
    stop = threading.Event()
    reads = [0] * N_THREADS

    def check(items):
        seen = {}
        for k, v in items:
            assert k not in seen, "a key twice in one iteration"
            seen[k] = v
            if k[0] == "churn":
                assert v == k[1]
        pairs = [seen[("pair", i)] for i in range(20)]
        assert pairs[0::2] == pairs[1::2], f"torn put_many: {pairs}"

    def worker(i):
        if i < 2:  # writers: at least `rounds`, and until every reader checked 20 times
            r = 0
            while r < rounds or (min(reads[2:]) < 20 and r < 100 * rounds):
                r += 1
                if i == 0:
                    t.put_many({("pair", 2 * j): r for j in range(10)} | {("pair", 2 * j + 1): r for j in range(10)})
                else:
                    j = r % 17
                    t.put(("churn", j), j)
                    t.delete(("churn", (j * 7) % 17))
                    t[("churn", (j * 3) % 17)] = (j * 3) % 17
                    t.pop(("churn", (j * 5) % 17), None)
            if i == 0:
                stop.set()
        else:  # readers
            while not stop.is_set():
                check(t.items())
                check(t.to_dict().items())
                check(t.snapshot().items())
                check(t.select(lambda k, v: True))
                for k in t:  # keys of a snapshot, then one lookup each
                    if k[0] == "churn":
                        assert t.get(k, k[1]) == k[1]
                assert len(list(t)) <= 20 + 17
                reads[i] += 1

    run_threads(worker, N_THREADS)
    check(t.items())
    assert min(reads[2:]) > 0


def test_fetch_many_threads_many_keys(impl):
    t = impl.LockedTable()
    calls = []
    lock = threading.Lock()

    def loader(key):
        with lock:
            calls.append(key)
        return key * 10

    def worker(i):
        for k in range(200):
            assert t.fetch(k, loader) == k * 10

    run_threads(worker, N_THREADS)
    assert sorted(calls) == list(range(200))  # one load per key across all threads


# -- FrozenTable ----------------------------------------------------------------


def test_frozen_readers_see_complete_snapshots(impl):
    # one writer replaces all N values generation by generation with put_many
    # (one snapshot per generation) and then key by key with put (each put a
    # snapshot: the values along the keys' order are a prefix of generation
    # g+1 followed by generation g). Readers iterating always see one complete
    # snapshot of that shape.
    n = 100
    t = impl.FrozenTable((k, 0) for k in range(n))
    generations = 60
    stop = threading.Event()
    reads = [0] * N_THREADS
    last = [0]

    def check(values):
        assert len(values) == n
        # non-increasing, and spanning at most two consecutive generations
        assert all(a >= b for a, b in zip(values, values[1:])), values
        assert values[0] - values[-1] <= 1, values

    def worker(i):
        if i == 0:  # at least `generations`, and until every reader checked 10 times
            g = 0
            while g < generations or (min(reads[1:]) < 10 and g < 50 * generations):
                g += 1
                last[0] = g
                if g % 2:
                    t.put_many((k, g) for k in range(n))
                else:
                    for k in range(n):
                        t.put(k, g)
            stop.set()
        else:
            while not stop.is_set():
                check(list(t.values()))
                check([v for _, v in t.items()])
                check(list(t.to_dict().values()))
                check(t.get_many(range(n)))
                snapshot = t.copy()
                check([snapshot[k] for k in snapshot])
                reads[i] += 1

    run_threads(worker, N_THREADS)
    assert list(t.values()) == [last[0]] * n
    assert min(reads[1:]) > 0


def test_frozen_concurrent_writers_lose_nothing(impl):
    t = impl.FrozenTable()

    def worker(i):
        for k in range(150):
            t.put((i, k), k)
        t.put_many(((i, "many", k), k) for k in range(50))
        for k in range(0, 150, 3):
            t.delete((i, k))

    run_threads(worker, N_THREADS)
    expected = {}
    for i in range(N_THREADS):
        expected.update(((i, k), k) for k in range(150) if k % 3)
        expected.update(((i, "many", k), k) for k in range(50))
    assert t.to_dict() == expected


# -- OwnerTable ---------------------------------------------------------------


@pytest.mark.parametrize("access", ["private", "protected"])
def test_owner_producers_lose_nothing(impl, access):
    t = impl.OwnerTable(access=access)
    try:
        n = 400

        def producer(i):
            for k in range(n):
                t.put((i, k), k)
                t[(i, "last")] = k  # one producer per key: FIFO keeps its last write
            t.put_many(((i, "many", k), -k) for k in range(50))
            t.sync()
            # after sync, everything this producer cast is applied
            assert t[(i, "last")] == n - 1
            assert t.get((i, n - 1)) == n - 1
            assert t.get((i, "many", 49)) == -49

        run_threads(producer, N_THREADS)
        t.sync()
        assert len(t) == N_THREADS * (n + 1 + 50)
        for i in range(N_THREADS):
            assert t[(i, "last")] == n - 1
            assert t.get_many([(i, k) for k in range(n)]) == list(range(n))
        assert t.info()["errors"] == 0
    finally:
        assert t.close(timeout=JOIN_TIMEOUT) is True


def test_owner_calls_from_many_threads(impl):
    t = impl.OwnerTable({"n": 0})
    try:
        rounds = 150

        def worker(i):
            for _ in range(rounds):
                t.call(lambda table: table.update_counter("n"))
                t.call(lambda table, k: table.put(k, table.get(k, 0) + 1), ("per", i))
                assert t[("per", i)] >= 1

        run_threads(worker, N_THREADS)
        assert t["n"] == N_THREADS * rounds
        assert [t[("per", i)] for i in range(N_THREADS)] == [rounds] * N_THREADS
    finally:
        assert t.close(timeout=JOIN_TIMEOUT) is True


def test_owner_close_while_producers_cast(impl):
    # close() races with producers: every cast is either applied or refused
    # with ClosedError, never lost silently or left hanging
    t = impl.OwnerTable()
    inner = t.call(lambda table: table)
    accepted = [[] for _ in range(N_THREADS)]

    def worker(i):
        if i == 0:
            t.sync()
            assert t.close(timeout=JOIN_TIMEOUT) is True
            return
        for k in range(2000):
            try:
                t.put((i, k), k)
            except impl.ClosedError:
                return
            accepted[i].append(k)

    run_threads(worker, N_THREADS)
    for i in range(1, N_THREADS):
        for k in accepted[i]:
            assert inner[(i, k)] == k
    assert len(inner) == sum(len(a) for a in accepted)
