"""Agent: any state, changed only on its owner thread (Elixir's Agent).

Every test runs on the compiled and the reference implementation (``impl``).
"""

import logging
import os
import threading

import pytest

from _support import assert_dropping_stops_the_owner, run_script


def block(agent):
    """Keep the agent's owner busy until the returned release() is called."""
    entered, gate = threading.Event(), threading.Event()

    def wait(state):
        entered.set()
        gate.wait()
        return state

    thread = threading.Thread(target=agent.update, args=(wait,), daemon=True)
    thread.start()
    assert entered.wait(10)

    def release():
        gate.set()
        thread.join(10)
        assert not thread.is_alive()

    return release


@pytest.fixture
def agent(impl):
    a = impl.Agent([])
    yield a
    a.close()


def test_default_state_is_none(impl):
    with impl.Agent() as a:
        assert a.get(lambda s: s) is None


def test_get_update_get_and_update(agent):
    assert agent.update(lambda s, x: s + [x], 1) is None
    assert agent.get(lambda s: list(s)) == [1]
    assert agent.get(lambda s, i, d: s[i] + d, 0, 10) == 11
    assert agent.get(len) == 1
    assert agent.get_and_update(lambda s, x: (len(s), s + [x]), 2) == 1
    assert agent.get(list) == [1, 2]


def test_a_callers_cast_then_get_sees_it(agent):
    for i in range(300):
        agent.cast(lambda s, x: s + [x], i)
        assert agent.get(lambda s: s[-1]) == i


def test_functions_run_on_the_owner_thread(agent):
    owner = agent.get(lambda s: threading.get_ident())
    assert owner != threading.get_ident()
    seen = []
    agent.cast(lambda s: seen.append(threading.get_ident()) or s)
    agent.update(lambda s: seen.append(threading.get_ident()) or s)
    assert seen == [owner, owner]


def test_producers_cast_then_sync_nothing_lost(impl):
    agent = impl.Agent(0)
    n_threads, n_casts = 4, 500

    def producer():
        for _ in range(n_casts):
            agent.cast(lambda s: s + 1)
        agent.sync()

    threads = [threading.Thread(target=producer) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert agent.get(lambda s: s) == n_threads * n_casts
    assert agent.info()["errors"] == 0
    assert agent.close() is True


def test_info_queue_counts_waiting_requests_not_the_one_in_service(impl):
    agent = impl.Agent(0)
    release = block(agent)  # an update in service: dequeued, not waiting
    assert agent.info()["queue"] == 0
    for _ in range(3):
        agent.cast(lambda s: s + 1)
    assert agent.info()["queue"] == 3
    release()
    agent.sync()
    assert agent.info()["queue"] == 0
    assert agent.get(lambda s: s) == 3
    assert agent.close() is True


def test_close_applies_queued_casts(impl):
    agent = impl.Agent([])
    box = agent.get(lambda s: s)  # the list itself: mutated in place below
    release = block(agent)
    for i in range(100):
        agent.cast(lambda s, x: s.append(x) or s, i)
    assert agent.info()["queue"] >= 100
    closer = threading.Thread(target=agent.close)
    closer.start()
    release()
    closer.join(10)
    assert not closer.is_alive()
    assert box == list(range(100))


def test_close_timeout_result(impl):
    agent = impl.Agent(0)
    release = block(agent)
    agent.cast(lambda s: s + 1)
    assert agent.close(timeout=0.05) is False
    with pytest.raises(impl.ClosedError):
        agent.cast(lambda s: s + 1)
    release()
    assert agent.close() is True
    assert agent.close(timeout=0) is True


def test_exceptions_reach_the_caller_state_unchanged(agent):
    agent.update(lambda s: s + [1])

    def boom(state, *args):
        raise KeyError("boom")

    with pytest.raises(KeyError):
        agent.get(boom)
    with pytest.raises(KeyError):
        agent.update(boom)
    with pytest.raises(KeyError):
        agent.get_and_update(boom)
    with pytest.raises((TypeError, ValueError)):
        agent.get_and_update(lambda s: "not a pair of reply and state")
    with pytest.raises(TypeError):
        agent.get_and_update(lambda s: None)
    assert agent.get(list) == [1]
    assert agent.info()["errors"] == 0  # errors counts casts only


def test_exception_in_cast_is_logged_counted_and_agent_keeps_serving(agent, caplog):
    with caplog.at_level(logging.ERROR, logger="fastkv"):
        agent.cast(lambda s: 1 / 0)
        agent.sync()
    assert agent.info()["errors"] == 1
    records = [r for r in caplog.records if r.name == "fastkv"]
    assert records and records[0].exc_info[0] is ZeroDivisionError
    assert agent.get(list) == []  # state unchanged
    agent.cast(lambda s: s + ["after"])
    assert agent.get(list) == ["after"]


def test_info(agent):
    info = agent.info()
    assert set(info) == {"queue", "served", "errors"}
    before = info["served"]
    agent.get(len)
    agent.sync()
    assert agent.info()["served"] >= before + 2


def test_every_method_raises_closed_error_after_close(impl):
    agent = impl.Agent(1)
    assert agent.close() is True
    for operation in (
        lambda: agent.get(lambda s: s),
        lambda: agent.update(lambda s: s),
        lambda: agent.get_and_update(lambda s: (s, s)),
        lambda: agent.cast(lambda s: s),
        lambda: agent.sync(),
        lambda: agent.info(),
    ):
        with pytest.raises(impl.ClosedError):
            operation()
    assert agent.close() is True


def test_requests_from_the_owner_thread_do_not_deadlock(agent):
    def on_owner(state):
        agent.cast(lambda s: s + ["cast from owner"])  # queued behind this update
        seen = agent.get(len)  # served inline
        agent.sync()
        return state + [seen]

    agent.update(on_owner)
    assert agent.get(list) == [0, "cast from owner"]


def test_dropped_agent_stops_its_owner(impl):
    assert_dropping_stops_the_owner(lambda: impl.Agent(0),
                                    lambda a: a.get(lambda s: threading.get_ident()))


def test_fork_child_gets_closed_error_and_never_hangs(impl):
    if not hasattr(os, "fork"):
        pytest.skip("no os.fork on this platform")
    result = run_script(
        impl,
        """
        import os
        a = m.Agent(41)
        a.cast(lambda s: s + 1)
        a.sync()
        pid = os.fork()
        if pid == 0:
            failures = 0
            for op in (lambda: a.get(lambda s: s), lambda: a.update(lambda s: s),
                       lambda: a.cast(lambda s: s), lambda: a.sync(),
                       lambda: a.get_and_update(lambda s: (s, s))):
                try:
                    op()
                    failures += 1
                except m.ClosedError:
                    pass
            a.close()
            fresh = m.Agent(7)
            ok = fresh.get(lambda s: s) == 7 and fresh.close()
            os._exit(0 if failures == 0 and ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", a.get(lambda s: s))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["child 0", "parent 42"]


def test_interpreter_exit_applies_pending_casts_without_hanging(impl):
    result = run_script(
        impl,
        """
        import time
        a = m.Agent(0)
        a.cast(lambda s: time.sleep(0.2) or s)
        for _ in range(1000):
            a.cast(lambda s: s + 1)
        a.cast(lambda s: print("last cast applied at", s, flush=True) or s)
        print("queued", a.info()["queue"] > 0, flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["queued True", "last cast applied at 1000"]


def test_interpreter_exit_waits_for_a_closed_agent_still_draining(impl):
    result = run_script(
        impl,
        """
        import time
        a = m.Agent(0)
        a.cast(lambda s: time.sleep(0.2) or s)
        a.cast(lambda s: print("applied after close", flush=True) or s)
        print("finished in time", a.close(timeout=0), flush=True)
        """,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["finished in time False", "applied after close"]
