"""RedisTable against a real redis-server (started by the ``redis_server``
fixture; see conftest.py): codec and keys, the shared API's content without
insertion order, the atomic operations under contention, the near cache's
coherence (own writes, another client's writes, another process's writes,
FLUSHDB, a server restart, a paused server), network errors that raise
fastkv.RedisConnectionError instead of hanging, and fetch's single flight
across processes (including a loader that crashes). Both hit paths run: the
compiled one (fastkv.redis.RedisTable) and its Python twin."""

import os
import textwrap
import threading
import time

import pytest

import fastkv
from _redis_support import RedisServer, free_port, fresh_namespace, redis_table_classes
from _support import JOIN_TIMEOUT, run_python

redis = pytest.importorskip("redis") if os.environ.get("CI") != "true" else __import__("redis")

WAIT = 10.0  # seconds: only reached when something is broken


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout}s")
        time.sleep(0.005)


@pytest.fixture(params=["compiled", "reference"])
def cls(request):
    return redis_table_classes()[request.param]


@pytest.fixture
def make(cls, redis_server):
    """make(url=None, **kwargs): a RedisTable on a fresh namespace (closed and
    cleared at the end of the test)."""
    made = []

    def make(url=None, **kwargs):
        kwargs.setdefault("namespace", fresh_namespace())
        kwargs.setdefault("timeout", 2.0)
        t = cls(url or redis_server.url, **kwargs)
        made.append(t)
        return t

    yield make
    for t in made:
        try:
            if not t._closed:
                t.clear()
        except Exception:  # noqa: BLE001 - the server may be gone
            pass
        t.close()


@pytest.fixture
def raw(redis_server):
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    yield client
    client.close()


def serving(t):
    """The near cache serves hits (info()'s "serving", without its SCAN)."""
    return t._healthy and t._lease > t._near_now()


def near_has(t, key):
    return key in t._near


# -- codec and keys ------------------------------------------------------------------------


VALUES = [None, True, False, 0, -5, 2**62, 2**100, 1.5, -0.0, float("inf"), "", "héllo\udcff", b"\x00\xff",
          [], (), {}, [1, "a", (b"b", None)], {"k": [1, {2: (3.5,)}], (1, "t"): None}]


@pytest.mark.parametrize("codec_name", ["safe", "pickle"])
def test_codec_round_trips(codec_name):
    import fastkv.redis as fr

    codec = fr._make_codec(codec_name)
    for value in VALUES:
        out = codec.decode(codec.encode(value))
        assert out == value and type(out) is type(value), value
    assert codec.encode(42) == b"42"  # INCRBY works on stored ints
    assert codec.encode(-7) == b"-7"


def test_safe_codec_refuses_what_it_cannot_hold():
    import fastkv.redis as fr

    safe, pick = fr.SafeCodec(), fr.PickleCodec()
    with pytest.raises(TypeError, match="pickle"):
        safe.encode(object())
    with pytest.raises(TypeError):
        safe.encode([1, {3}])
    data = pick.encode({3})
    assert pick.decode(data) == {3}
    with pytest.raises(ValueError, match="pickle"):
        safe.decode(data)  # never unpickled unless asked
    for junk in (b"", b"\x80abc", b"c l5:", b"ci12", b"cd1:l0:N", b"c" + b"l1:" * 500 + b"N"):
        with pytest.raises(ValueError):
            safe.decode(junk)
    nested = []
    for _ in range(200):
        nested = [nested]
    with pytest.raises(ValueError):
        safe.encode(nested)


def test_values_round_trip_through_the_server(make):
    t = make()
    for i, value in enumerate(VALUES):
        t[i] = value
    for i, value in enumerate(VALUES):
        out = t[i]
        assert out == value and type(out) is type(value)
    p = make(codec="pickle")
    p["set"] = {1, 2}
    assert p["set"] == {1, 2}
    with pytest.raises(TypeError):
        t["set"] = {1, 2}


def test_keys_are_canonical_and_namespaced(make, raw):
    t = make(namespace=fresh_namespace("keys"))
    t[1] = "one"
    assert t[True] == "one" and t[1.0] == "one"
    t[(1, "a", b"b", None, 2.5)] = "tuple"
    assert t[(True, "a", b"b", None, 2.5)] == "tuple"
    t["alice"] = 1
    t["\x00odd"] = 2
    assert raw.get(f"{t._namespace}:alice".encode()) == b"1"  # a str key is readable in redis-cli
    assert set(t) == {1, (1, "a", b"b", None, 2.5), "alice", "\x00odd"}
    with pytest.raises(TypeError):
        t[[1]]
    with pytest.raises(TypeError):
        t.put([1], 1)
    with pytest.raises(TypeError):
        t[frozenset()] = 1
    with pytest.raises(ValueError):
        t[float("nan")] = 1
    other = make()
    assert "alice" not in other
    other["alice"] = 5
    assert t["alice"] == 1
    for bad in ("a:b", "a b", "x*", ""):
        with pytest.raises((ValueError, TypeError)):
            make(namespace=bad)


# -- the shared API's content (without insertion order) -----------------------------------


def test_iteration_views_and_bulk(make):
    t = make()
    data = {f"k{i}": i for i in range(2500)}  # more than one SCAN / MGET batch
    t.put_many(data)
    assert len(t) == 2500
    assert set(t) == set(data)
    assert set(t.keys()) == set(data)
    assert sorted(t.values()) == sorted(data.values())
    assert dict(t.items()) == data
    assert t.to_dict() == data and t.copy() == data
    assert t == data and t != {"k0": 0}
    assert t.get_many(["k1", "nope", "k2"], -1) == [1, -1, 2]
    assert sorted(t.select(lambda k, v: v < 3)) == [("k0", 0), ("k1", 1), ("k2", 2)]
    snap = t.snapshot()
    assert type(snap) is fastkv.FrozenTable and snap == data
    key, value = t.popitem()
    assert data[key] == value and key not in t
    assert t.pop("k7") == 7 and t.pop("k7", None) is None
    with pytest.raises(KeyError):
        t.pop("k7")
    t.clear()
    assert len(t) == 0 and list(t) == [] and not t
    with pytest.raises(KeyError):
        t.popitem()


def test_get_many_one_round_trip_mixes_hits_and_misses(make):
    t = make()
    t.put_many({"a": 1, "b": 2})
    wait_until(lambda: serving(t), what="listener up")
    assert t["a"] == 1  # near-cached now
    assert t.get_many(["a", "b", "c", "a"]) == [1, 2, None, 1]


def test_put_many_is_atomic_and_bad_input_changes_nothing(make):
    t = make()
    with pytest.raises(TypeError):
        t.put_many([("a", 1), ("b", object())])
    with pytest.raises(TypeError):
        t.put_many([("a", 1), ([1], 2)])
    assert len(t) == 0


# -- atomic operations ----------------------------------------------------------------------


def test_update_counter_under_contention(make):
    t = make()

    def worker():
        for _ in range(200):
            t.update_counter("n")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_TIMEOUT)
    assert t["n"] == 800
    assert t.update_counter("n", -801) == -1
    assert t.update_counter("fresh", 5, 100) == 105
    assert t.update_counter("fresh", 1, 0) == 106
    t["s"] = "text"
    with pytest.raises(TypeError):
        t.update_counter("s")
    assert t["s"] == "text"
    t["f"] = 1.5
    with pytest.raises(TypeError):
        t.update_counter("f")
    t["big"] = 2**63 - 1
    with pytest.raises(OverflowError):
        t.update_counter("big")
    assert t["big"] == 2**63 - 1
    with pytest.raises(TypeError):
        t.update_counter("n", 1.5)
    with pytest.raises(OverflowError):
        t.update_counter("absent", 2**63)
    with pytest.raises(OverflowError):
        t.update_counter("absent", 1, -(2**63) - 1)
    assert "absent" not in t


def test_insert_new_has_one_winner(make):
    t = make()
    wins = []

    def worker(i):
        if t.insert_new("lock", i):
            wins.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(JOIN_TIMEOUT)
    assert len(wins) == 1 and t["lock"] == wins[0]


def test_take_setdefault_delete(make):
    t = make()
    assert t.setdefault("a", [1]) == [1]
    assert t.setdefault("a", [2]) == [1]
    assert t.take("a") == [1]
    assert t.take("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        t.take("a")
    t["b"] = 2
    assert t.delete("b") is True and t.delete("b") is False
    with pytest.raises(KeyError):
        del t["b"]


# -- the near cache -------------------------------------------------------------------------


def test_own_writes_are_seen_by_the_next_read(make):
    t = make()
    wait_until(lambda: serving(t), what="listener up")
    for i in range(50):
        t["k"] = i
        assert t["k"] == i  # cached by this read...
        assert t["k"] == i  # ...and served locally
    t.update_counter("k", 10)
    assert t["k"] == 59
    t.delete("k")
    assert "k" not in t
    t.put_many({"k": "many"})
    assert t["k"] == "many"
    assert t.take("k") == "many"
    assert t.get("k") is None
    t.setdefault("k", 1)
    assert t["k"] == 1


def test_another_clients_write_invalidates(make):
    ns = fresh_namespace("inv")
    a, b = make(namespace=ns), make(namespace=ns, near_cache=False)
    wait_until(lambda: serving(a), what="listener up")
    b["k"] = "old"
    assert a["k"] == "old"
    wait_until(lambda: a["k"] == "old" and near_has(a, "k"), what="cached")
    for i in range(20):
        b["k"] = i
        wait_until(lambda: a["k"] == i, what="invalidation")
    b.delete("k")
    wait_until(lambda: "k" not in a, what="invalidation of a delete")
    assert a.get("absent") is None  # cached absence...
    b["absent"] = 1
    wait_until(lambda: a.get("absent") == 1, what="invalidation of a cached absence")


def test_flushdb_flushes_the_near_cache(make, raw):
    t = make()
    wait_until(lambda: serving(t), what="listener up")
    t["k"] = 1
    assert t["k"] == 1
    raw.flushdb()
    wait_until(lambda: "k" not in t, what="flush on FLUSHDB")


def test_near_cache_is_bounded(make):
    t = make(near_cache_size=10)
    wait_until(lambda: serving(t), what="listener up")
    t.put_many({i: i for i in range(100)})
    for _ in range(3):
        for i in range(100):
            assert t[i] == i
            assert len(t._near) <= 10
    assert t.info()["near_cache"]["size"] <= 10


def test_write_in_another_process_invalidates(make, redis_server):
    ns = fresh_namespace("proc")
    t = make(namespace=ns)
    wait_until(lambda: serving(t), what="listener up")
    t["k"] = "parent"
    assert t["k"] == "parent"
    res = run_python(f"""
        import fastkv
        t = fastkv.RedisTable({redis_server.url!r}, namespace={ns!r}, timeout=5)
        assert t["k"] == "parent"
        t["k"] = "child"
        t["from_child"] = [1, 2]
        print(t.update_counter("n", 5))
        t.close()
    """)
    assert res.returncode == 0, res.stderr
    wait_until(lambda: t["k"] == "child", what="invalidation from another process")
    assert t["from_child"] == [1, 2]
    assert t["n"] == 5


def test_two_processes_share_a_counter(make, redis_server):
    # the README's LockedTable example, with RedisTable, across two processes
    ns = fresh_namespace("readme")
    t = make(namespace=ns)
    script = f"""
        import threading
        import fastkv
        hits = fastkv.RedisTable({redis_server.url!r}, namespace={ns!r}, timeout=5)
        def worker():
            for _ in range(100):
                hits.update_counter("page", 1)
        threads = [threading.Thread(target=worker) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        hits.insert_new("owner", "me")
        user = hits.fetch("user:42", lambda key: {{"id": 42}})
        assert user == {{"id": 42}} and hits["user:42"] == user
        hits.close()
    """
    import subprocess
    import sys
    import textwrap

    from _support import FASTKV_ROOT

    env = dict(os.environ, PYTHONPATH=FASTKV_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=FASTKV_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert t["page"] == 800
    assert t["owner"] == "me"
    assert t["user:42"] == {"id": 42}


# -- faults -----------------------------------------------------------------------------------


def test_server_restart_never_serves_a_stale_entry(cls, own_redis_server):
    server = own_redis_server
    ns = fresh_namespace("restart")
    t = cls(server.url, namespace=ns, timeout=1.0)
    try:
        wait_until(lambda: serving(t), what="listener up")
        t["k"] = "before"
        t["gone"] = "before"
        # (under load the listener's lease can lapse between a read and the
        # check, which drops the entry: read until both are near-cached)
        wait_until(lambda: t["k"] == "before" and t["gone"] == "before" and near_has(t, "k") and near_has(t, "gone"),
                   what="both entries near-cached")
        server.restart()  # no persistence: the new server is empty
        writer = redis.Redis.from_url(server.url, socket_timeout=5)
        writer.set(f"{ns}:k".encode(), b"safter")
        seen = []

        def read():
            try:
                seen.append((t.get("k"), t.get("gone")))
            except fastkv.RedisConnectionError:
                return False
            return True

        wait_until(read, what="a read after the restart")
        assert seen == [("after", None)]  # never the near-cached "before"
        # the listener tracks the new server: a write there invalidates again
        wait_until(lambda: serving(t), what="listener back")
        assert t["k"] == "after"
        writer.set(f"{ns}:k".encode(), b"sagain")
        wait_until(lambda: t["k"] == "again", what="invalidation after the restart")
        writer.close()
    finally:
        t.close()


def test_paused_server_raises_instead_of_hanging(cls, own_redis_server):
    server = own_redis_server
    t = cls(server.url, namespace=fresh_namespace("pause"), timeout=0.5)
    try:
        wait_until(lambda: serving(t), what="listener up")
        t["cached"] = 1
        assert t["cached"] == 1
        server.pause()
        try:
            start = time.monotonic()
            with pytest.raises(fastkv.RedisConnectionError) as exc:
                t["other"]
            assert isinstance(exc.value, ConnectionError)
            assert time.monotonic() - start < WAIT  # a timeout, not a hang
            with pytest.raises(fastkv.RedisConnectionError):
                t["x"] = 1
            # the near cache stops serving once the lease (timeout) ran out
            # without word from the server: the entry may be stale by now
            wait_until(lambda: not serving(t), what="lease expiry")
            with pytest.raises(fastkv.RedisConnectionError):
                t["cached"]
        finally:
            server.resume()
        wait_until(lambda: serving(t), what="listener back")
        assert t["cached"] == 1
    finally:
        t.close()


def test_nothing_listening_raises_connection_error(cls):
    port = free_port()
    t = cls(f"redis://127.0.0.1:{port}/0", namespace=fresh_namespace("none"), timeout=0.5)
    try:
        for op in (lambda: t["a"], lambda: t.put("a", 1), lambda: len(t), lambda: t.get_many(["a"]),
                   lambda: t.update_counter("a"), lambda: t.fetch("a", str), lambda: list(t)):
            with pytest.raises(fastkv.RedisConnectionError):
                op()
        assert not serving(t)
    finally:
        t.close()


def test_closed_table_raises_closed_error(make):
    t = make()
    t["a"] = 1
    assert t["a"] == 1
    with t as entered:
        assert entered is t
    t.close()
    for op in (lambda: t["a"], lambda: t.get("a"), lambda: "a" in t, lambda: t.put("a", 2), lambda: len(t)):
        with pytest.raises(fastkv.ClosedError):
            op()


# -- fetch: single flight across processes -----------------------------------------------------


FETCHER = """
    import os, sys, time
    import fastkv
    t = fastkv.RedisTable({url!r}, namespace={ns!r}, timeout=5, fetch_lock_ttl={ttl})
    def loader(key):
        t.update_counter("calls", 1)
        {body}
        return "loaded by %d" % os.getpid()
    print(t.fetch("k", loader))
    t.close()
"""


def _spawn(code):
    import subprocess
    import sys
    import textwrap

    from _support import FASTKV_ROOT

    env = dict(os.environ, PYTHONPATH=FASTKV_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=FASTKV_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_fetch_single_flight_across_processes(make, redis_server):
    ns = fresh_namespace("fetch")
    t = make(namespace=ns)
    procs = [_spawn(FETCHER.format(url=redis_server.url, ns=ns, ttl=30, body="time.sleep(0.5)")) for _ in range(4)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(out.strip())
    assert t["calls"] == 1  # one loader ran
    assert len(set(outs)) == 1 and outs[0].startswith("loaded by")
    assert t["k"] == outs[0]


def test_fetch_then_read_never_goes_back_in_time(make, redis_server):
    """Regression (CI, debug step): a process whose fetch found the value
    another process had stored then read the key and got KeyError: fetch's
    first get had near-cached the key's absence, and the invalidation of the
    other process's write had not arrived yet. Here the listener delivers no
    invalidation at all: what fetch returned must still be what the next
    reads see."""
    t = make()
    wait_until(lambda: serving(t), what="listener up")
    assert t.get("user:42") is None and near_has(t, "user:42")  # its absence, near-cached
    t._near_invalidated = lambda rkeys: None  # the other process's invalidation is late
    writer = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        writer.set(t._rkey("user:42"), t._codec.encode({"id": 42}))
        assert t.fetch("user:42", lambda key: pytest.fail("loader ran: the value was there")) == {"id": 42}
        assert t["user:42"] == {"id": 42} and t.get("user:42") == {"id": 42} and "user:42" in t
    finally:
        writer.close()


def test_fetch_crashed_loader_blocks_others_at_most_the_ttl(make, redis_server):
    ns = fresh_namespace("crash")
    t = make(namespace=ns, fetch_lock_ttl=1.0)
    crasher = _spawn(FETCHER.format(url=redis_server.url, ns=ns, ttl=1.0, body="os._exit(3)"))
    crasher.communicate(timeout=60)
    assert crasher.returncode == 3
    assert t["calls"] == 1 and "k" not in t  # it died holding the lock
    assert t.fetch("k", lambda key: "mine") == "mine"  # waits for the TTL, then loads
    assert t["calls"] == 1 and t["k"] == "mine"


def test_fetch_loader_error_releases_the_lock_at_once(make):
    t = make(fetch_lock_ttl=60.0)

    def failing(key):
        raise LookupError(key)

    with pytest.raises(LookupError):
        t.fetch("k", failing)
    assert "k" not in t
    start = time.monotonic()
    assert t.fetch("k", lambda key: 5) == 5  # no wait for the 60 s TTL
    assert time.monotonic() - start < 30
    assert t.fetch("k", failing) == 5
    with pytest.raises(RuntimeError):
        t.fetch("r", lambda key: t.fetch("r", str))


# -- packaging ---------------------------------------------------------------------------------


def test_import_fastkv_without_redis_py():
    res = run_python("""
        import sys
        sys.modules["redis"] = None  # as if redis-py were not installed
        import fastkv
        from fastkv import *
        assert fastkv.LockedTable({"a": 1})["a"] == 1
        assert issubclass(fastkv.RedisConnectionError, ConnectionError)
        try:
            fastkv.RedisTable
        except ImportError as exc:
            print("ImportError:", exc)
    """)
    assert res.returncode == 0, res.stderr
    assert "fastkv[redis]" in res.stdout


def test_fork_child_gets_its_own_near_cache(make, redis_server):
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    res = run_python(f"""
        import os, time
        import fastkv
        t = fastkv.RedisTable({redis_server.url!r}, namespace={fresh_namespace("fork")!r}, timeout=5)
        t["k"] = 1
        deadline = time.monotonic() + 10
        while not t.info()["near_cache"]["serving"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t["k"] == 1
        pid = os.fork()
        if pid == 0:
            t["k"] = 2  # the child's write: seen by the parent's listener
            ok = t["k"] == 2
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        while t["k"] != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert t["k"] == 2
        t.clear()
        t.close()
        print("ok")
    """)
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


@pytest.mark.once
def test_bench_cli_redis_scenario(redis_server):
    res = run_python(f"""
        import sys
        from fastkv.bench import main
        sys.exit(main(["bench", "--redis", {redis_server.url!r}, "--redis-only", "--redis-smoke", "--no-progress"]))
    """, timeout=120)
    assert res.returncode == 0, res.stderr
    for line in ("near-cache hit t[k]", "near-cache miss", "90/10 mix", "get_many(1,000)", "invalidation"):
        assert line in res.stdout, res.stdout


# -- differential: RedisTable against a dict, with a second client writing ---------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_DKEYS = st.sampled_from(["a", "b", "c", 1, (1, "x"), b"k"])
_DVALUES = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.lists(st.integers(0, 3), max_size=2))
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _DKEYS, _DVALUES),
        st.tuples(st.just("foreign_put"), _DKEYS, _DVALUES),
        st.tuples(st.just("foreign_delete"), _DKEYS, st.none()),
        st.tuples(st.just("delete"), _DKEYS, st.none()),
        st.tuples(st.just("counter"), _DKEYS, st.integers(-3, 3)),
        st.tuples(st.just("insert_new"), _DKEYS, _DVALUES),
        st.tuples(st.just("take"), _DKEYS, st.none()),
        st.tuples(st.just("setdefault"), _DKEYS, _DVALUES),
        st.tuples(st.just("put_many"), _DKEYS, _DVALUES),
        st.tuples(st.just("read"), _DKEYS, st.none()),
    ),
    max_size=25,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=_OPS)
def test_differential_against_a_dict(make, ops):
    ns = fresh_namespace("diff")
    t = make(namespace=ns)
    other = make(namespace=ns, near_cache=False)
    try:
        _run_differential(t, other, ops)
    finally:
        t.clear()
        t.close()
        other.close()


def _run_differential(t, other, ops):
    oracle = {}
    for op, key, arg in ops:
        foreign = op.startswith("foreign")
        if op == "put" or op == "foreign_put":
            (other if foreign else t)[key] = arg
            oracle[key] = arg
        elif op == "delete" or op == "foreign_delete":
            assert (other if foreign else t).delete(key) is (key in oracle)
            oracle.pop(key, None)
        elif op == "counter":
            current = oracle.get(key, 0)
            if type(current) is int:
                assert t.update_counter(key, arg) == current + arg
                oracle[key] = current + arg
            else:
                with pytest.raises(TypeError):
                    t.update_counter(key, arg)
        elif op == "insert_new":
            assert t.insert_new(key, arg) is (key not in oracle)
            oracle.setdefault(key, arg)
        elif op == "take":
            assert t.take(key, "none") == oracle.pop(key, "none")
        elif op == "setdefault":
            assert t.setdefault(key, arg) == oracle.setdefault(key, arg)
        elif op == "put_many":
            t.put_many([(key, arg), ("a", arg)])
            oracle[key] = oracle["a"] = arg
        # this process's own writes: seen by the next read, at once; another
        # client's: once the invalidation arrived (never stale for good)
        if foreign:
            wait_until(lambda: t.get(key, "none") == oracle.get(key, "none"), what="invalidation")
        assert t.get(key, "none") == oracle.get(key, "none")
        assert (key in t) == (key in oracle)
    assert t.to_dict() == oracle
    assert t.get_many(["a", "b", "c", 1, (1, "x"), b"k"], "none") == [
        oracle.get(k, "none") for k in ["a", "b", "c", 1, (1, "x"), b"k"]]


def test_a_reply_that_raced_a_write_is_not_cached(make):
    # The race the pending tokens close: this process's GET is answered with
    # the old value, then another client writes and its invalidation is
    # applied, and only then does the GET's caller get to cache the reply. The
    # old value must not enter the near cache (it would be served forever).
    ns = fresh_namespace("race")
    t, other = make(namespace=ns), make(namespace=ns, near_cache=False)
    wait_until(lambda: serving(t), what="listener up")
    other["k"] = "old"
    wait_until(lambda: t._invalidations >= 1, what="the first invalidation")
    real_get = t._client.get

    def get_then_race(rkey):
        reply = real_get(rkey)
        seen = t._invalidations
        other["k"] = "new"
        wait_until(lambda: t._invalidations > seen, what="the racing write's invalidation")
        return reply

    t._client.get = get_then_race
    try:
        assert t["k"] == "old"  # the reply as it was read
    finally:
        del t._client.get
    assert not near_has(t, "k")
    assert t["k"] == "new"


# -- types (fastkv/redis.pyi) -------------------------------------------------------------------

from test_typing import run_mypy, typed_copy  # noqa: E402,F401  (typed_copy: the fixture)

REDIS_TYPED = '''
import fastkv
from fastkv.redis import RedisTable

t: RedisTable[str, int] = fastkv.RedisTable("redis://localhost:6379/0", namespace="x", timeout=0.5)
n: int = t.update_counter("a")
v: int | None = t.get("a")
many: list[int | None] = t.get_many(["a"])
ok: bool = t.insert_new("b", 1)
x: int = t.fetch("c", lambda k: len(k))
t.update_counter("a", 1.5)  # E: incr is an int
t.fetch("c", lambda k: k)  # E: loader returns the value type
t.put(1, 2)  # E: key type
fastkv.RedisTable("redis://localhost:6379/0", codec="json")  # E: codec
'''


@pytest.mark.once
def test_mypy_types_redis_table(tmp_path, typed_copy):  # noqa: F811
    source = textwrap.dedent(REDIS_TYPED).lstrip()
    path = tmp_path / "redis_usage.py"
    path.write_text(source)
    result = run_mypy(typed_copy, path)
    expected = {n for n, line in enumerate(source.splitlines(), 1) if "# E:" in line}
    reported = {int(line.split(":")[1]) for line in result.stdout.splitlines()
                if line.split(":")[0].endswith("redis_usage.py") and " error:" in line}
    assert reported == expected, result.stdout + result.stderr
    assert RedisTable_alias_ok()


def RedisTable_alias_ok():
    import fastkv.redis

    return fastkv.redis.RedisTable[str, int].__origin__ is fastkv.redis.RedisTable
