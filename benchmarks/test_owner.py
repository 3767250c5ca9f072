"""OwnerTable and Agent against the reference and a plain queue.SimpleQueue
owner thread, all measured in the same run: compare within a group.

Run: ``pytest benchmarks/test_owner.py`` (add ``--benchmark-json=out.json``
to keep the numbers). Groups:

- ``round trip get``: ROUND_TRIPS reads per round, each a call to the owner
  thread and back (OwnerTable(access="private").get, Agent.get, the
  reference's, and the baseline: a request SimpleQueue plus a per-call reply
  SimpleQueue, the naive hand-rolled owner thread);
- ``casts then sync``: CASTS puts queued, then one sync() (the baseline: puts
  on the request queue, then a request answered through a reply queue);
- ``protected read``: PROBES reads straight from the calling thread under
  access="protected", against the same reads on a plain dict; and the same
  reads while another thread's cast waits unapplied (read-your-writes: the
  reader, with nothing of its own queued, still reads directly).

The round-trip and cast groups run in three placements (``placement`` in
the test id), since a hand-off between two threads costs what the scheduler
makes it cost:

- ``any``: the scheduler places the caller and the owner thread;
- ``one-cpu``: both pinned to the same CPU (every hand-off is a context
  switch: ``benchmarks/handoff_floor.c`` measures the floor of such a round
  trip, two C threads and nothing else);
- ``two-cpus``: caller and owner pinned to two different CPUs (every hand-off
  crosses cores).

Pinning uses ``os.sched_setaffinity`` (Linux); the owner thread pins itself
inside ``call(fn)``. Placements this machine cannot make are skipped.

The issue's targets: round trip <= 0.2x and casts+sync <= 0.5x of the
SimpleQueue baseline, protected reads within 1.3x of the dict.
"""

import os
import queue
import threading

import pytest

import fastkv
import fastkv._core
import fastkv.reference

ROUND_TRIPS = 200
CASTS = 1000
PROBES = 1000
KEYS = [f"key-{i:05d}" for i in range(1000)]
DATA = {k: i for i, k in enumerate(KEYS)}


class SimpleQueueOwner:
    """The baseline: an owner thread serving a dict through a
    queue.SimpleQueue of requests; a call waits on its own reply queue."""

    def __init__(self, data):
        self.data = dict(data)
        self.requests = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        get, data = self.requests.get, self.data
        while True:
            op, key, value, reply = get()
            if op == "get":
                reply.put(data.get(key))
            elif op == "put":
                data[key] = value
            elif op == "sync":
                reply.put(None)
            elif op == "call":
                reply.put(key(data))
            else:
                break

    def get(self, key):
        reply = queue.SimpleQueue()
        self.requests.put(("get", key, None, reply))
        return reply.get()

    def call(self, fn):
        reply = queue.SimpleQueue()
        self.requests.put(("call", fn, None, reply))
        return reply.get()

    def put(self, key, value):
        self.requests.put(("put", key, value, None))

    def sync(self):
        reply = queue.SimpleQueue()
        self.requests.put(("sync", None, None, reply))
        reply.get()

    def close(self):
        self.requests.put(("stop", None, None, None))
        self.thread.join()


PLACEMENTS = ["any", "one-cpu", "two-cpus"]


def _cpus():
    if not hasattr(os, "sched_setaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


@pytest.fixture(params=PLACEMENTS)
def place(request):
    """Returns a function placing (caller, owner) as the placement says; the
    caller's affinity is restored afterwards."""
    placement = request.param
    if placement == "any":
        nothing = lambda owner: None  # noqa: E731
        nothing.placement = placement
        yield nothing
        return
    cpus = _cpus()
    if cpus is None:
        pytest.skip("os.sched_setaffinity is not available")
    if placement == "two-cpus" and len(cpus) < 2:
        pytest.skip("needs two CPUs")
    caller_cpu = cpus[0]
    owner_cpu = cpus[0] if placement == "one-cpu" else cpus[1]

    def pin(owner):
        def pin_owner(_state):
            os.sched_setaffinity(0, {owner_cpu})

        if hasattr(owner, "call"):
            owner.call(pin_owner)
        else:  # an Agent
            owner.get(pin_owner)
        os.sched_setaffinity(0, {caller_cpu})

    pin.placement = placement
    yield pin
    os.sched_setaffinity(0, cpus)


def _make(impl, access="private"):
    if impl == "SimpleQueue":
        return SimpleQueueOwner(DATA)
    module = fastkv._core if impl == "compiled" else fastkv.reference
    return module.OwnerTable(DATA, access=access)


def _group(benchmark, group, impl, per_round):
    benchmark.group = group
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["per_round"] = per_round


@pytest.fixture
def closing():
    made = []
    yield made.append
    for obj in made:
        obj.close()


@pytest.mark.parametrize("impl", ["compiled", "reference", "SimpleQueue"])
def test_round_trip_get(benchmark, closing, place, impl):
    t = _make(impl)
    closing(t)
    place(t)
    keys = KEYS[:ROUND_TRIPS]
    _group(benchmark, f"round trip get, {place.placement}", impl, ROUND_TRIPS)

    def run():
        get = t.get
        for k in keys:
            get(k)

    benchmark(run)
    assert t.get(KEYS[5]) == 5


@pytest.mark.parametrize("impl", ["compiled", "reference", "SimpleQueue"])
def test_round_trip_agent_get(benchmark, closing, place, impl):
    if impl == "SimpleQueue":
        a = SimpleQueueOwner(DATA)
        get = a.call
    else:
        module = fastkv._core if impl == "compiled" else fastkv.reference
        a = module.Agent(DATA)
        get = a.get
    closing(a)
    place(a)
    fn = len
    _group(benchmark, f"round trip Agent.get(fn), {place.placement}", impl, ROUND_TRIPS)

    def run():
        for _ in range(ROUND_TRIPS):
            get(fn)

    benchmark(run)


@pytest.mark.parametrize("impl", ["compiled", "reference", "SimpleQueue"])
def test_casts_then_sync(benchmark, closing, place, impl):
    t = _make(impl)
    closing(t)
    place(t)
    items = [(k, i) for i, k in enumerate(KEYS[:CASTS])]
    _group(benchmark, f"casts then sync, {place.placement}", impl, CASTS)

    def run():
        put = t.put
        for k, v in items:
            put(k, v)
        t.sync()

    benchmark(run)


@pytest.mark.parametrize("impl", ["dict", "compiled", "reference"])
def test_protected_get(benchmark, closing, impl):
    if impl == "dict":
        t = dict(DATA)
    else:
        t = _make(impl, access="protected")
        closing(t)
    probe = ["".join(list(k)) for k in KEYS[:PROBES]]  # equal, not identical
    for k in probe:
        hash(k)
    _group(benchmark, "protected read t.get(k)", impl, PROBES)

    def run():
        get = t.get
        for k in probe:
            get(k)

    benchmark(run)


@pytest.mark.parametrize("impl", ["dict", "compiled", "reference"])
def test_protected_getitem(benchmark, closing, impl):
    if impl == "dict":
        t = dict(DATA)
    else:
        t = _make(impl, access="protected")
        closing(t)
    probe = ["".join(list(k)) for k in KEYS[:PROBES]]
    for k in probe:
        hash(k)
    _group(benchmark, "protected read t[k]", impl, PROBES)

    def run():
        for k in probe:
            t[k]

    benchmark(run)


@pytest.mark.parametrize("impl", ["dict", "compiled", "reference"])
def test_protected_get_while_another_thread_has_casts_queued(benchmark, closing, impl):
    # read-your-writes costs a reader with nothing of its own unapplied only a
    # look at the writer slots: the owner is held inside a call while another
    # thread's cast waits behind it, so every read here takes that path
    probe = ["".join(list(k)) for k in KEYS[:PROBES]]
    for k in probe:
        hash(k)
    release = threading.Event()
    if impl == "dict":
        t = dict(DATA)
    else:
        t = _make(impl, access="protected")
        closing(t)
        entered = threading.Event()

        def hold(table):
            entered.set()
            release.wait(60)

        holder = threading.Thread(target=t.call, args=(hold,), daemon=True)
        holder.start()
        assert entered.wait(10)
        writer = threading.Thread(target=t.put, args=("other", 1))
        writer.start()
        writer.join(10)
        assert t.info()["queue"] >= 1
    _group(benchmark, "protected read t.get(k), another thread's cast unapplied", impl, PROBES)

    def run():
        get = t.get
        for k in probe:
            get(k)

    try:
        benchmark(run)
    finally:
        release.set()
