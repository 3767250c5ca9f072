"""``python -m fastkv bench``: the article's comparison of in-memory stores, redone in Python.

Every strategy fastkv offers is measured in one process, beside a plain
``dict``, the pure-Python reference tables, and the peers a Python user would
otherwise pick (when installed): ``immutables.Map``, ``frozendict``,
``cachetools.LRUCache``, ``cachebox.Cache``, a dict behind a ``threading.Lock``,
and a hand-rolled owner thread serving a dict from a ``queue.SimpleQueue``.

Scenarios (each at every size; sizes default to 10 / 1,000 / 100,000 keys in
``--quick`` mode and add 1,000,000 in ``--full`` mode):

- ``read``    one thread reads present keys, the store never written;
- ``write``   one thread overwrites present keys (size stays constant);
- ``mix``     one thread, 9 reads then 1 write, repeated (90/10);
- ``threads`` N threads (``--threads``, default 4) read at once; the figure is
  the aggregate ops/s of all threads.
- ``processes`` N worker processes (``--procs``, default 4; fork and spawn) read
  one table at the largest size: SharedTable, a per-worker FrozenTable copy, a
  ``multiprocessing.Manager().dict()`` and the installed peers; aggregate
  reads/s and the memory each worker adds, then SharedTable's target ratios
  (see ``fastkv.bench_procs``).

Keys are strings ``"key:<i>"``; the keys looked up are equal copies of the
stored ones, not the same objects, as keys parsed from a request would be (so
every hit compares the string, not only its identity). Values are shaped like
the article's: a record
of a dozen short string fields per key. They are built cheaply from a pool of
1,024 distinct records (key i holds record i % 1024): every store here holds
references, so a lookup costs the same whatever record it returns.

Timing method (timeit-style, nothing clever):

- Everything a timed loop needs is built before the clock starts: the store,
  the bound method it calls (``read = table.get``), and a list of keys drawn at
  random (fixed seed) from the store's keys.
- A timed run is a plain Python ``for`` loop over that key list calling the
  operation, timed with ``time.perf_counter``. It is a call for every store
  (``dict.get(k)``, ``operator.setitem(d, k, v)``; the ``d[k]`` syntax, which
  calls nothing, would be faster for a dict). For writes that are queued to an
  owner thread, the run ends with the store's ``sync()`` so every queued write
  is counted as done (such runs cover at least 1,000 operations, so the one
  round trip of ``sync()`` is amortized). The loop's own overhead is included
  for every strategy alike; nothing is subtracted.
- All the stores of one size are built first and measured together. The
  number of operations per run is calibrated for each like
  ``timeit.autorange`` (x10 until a run lasts a tenth of ``--min-time``, then
  scaled up to last ``--min-time``; a timed run under a quarter of it shows
  a calibration slowed by a stall, and n is scaled again from that run, once);
  then the timed runs are taken in rounds,
  one run of every store per round (the order rotated each round), so a
  change in the machine's load during the run reaches every strategy alike.
  The figure reported is the best (fastest) of ``--repeat`` runs, as timeit
  recommends. Runs are short (3 ms quick, 10 ms full) and
  many (15 quick, 40 full) on purpose: on a shared machine, the best of many
  short runs is the one least disturbed by other processes. Each run goes on
  through the key list where the previous run stopped, so no run rereads
  keys the previous one left in the CPU cache. Operations that
  take longer than the per-figure time budget on their own (a module rebuild
  at 100,000 keys) are timed once.
- A store whose build is expected (from a smaller size or a 1,000-key trial
  build, scaled linearly) to exceed the build budget (2 s quick, 30 s full) is
  skipped at that size and the reason printed.
  Stores whose write is a whole rebuild are not timed on writes when one build
  exceeds the per-figure budget.
- The garbage collector stays enabled (as in a real program); ``gc.collect()``
  runs before each figure.
- ops/s = operations / best run time (the JSON also keeps the median run's
  ops/s: owner-thread round trips are bimodal on a busy machine, fast when the
  two threads' handoff finds a free core, several times slower when not).
  Each scenario's table gives, per size, ops/s and how many times slower than
  the fastest strategy at that size.

- A figure's best run must be confirmed: another of its runs within
  ``CONFIRM`` (1.25x) of it. A best run that stands alone (a one-off, e.g. an
  owner-thread handoff that happened to find a free core once) gets the figure
  re-measured with as many runs again; if the best still stands alone it is
  dropped, the next run is reported and the figure is marked ``~`` (unstable).

The output ends with a verdict computed from this run: for read-mostly data,
data read and written by many threads, and work serialized on one owner
thread, the table to pick and how many times faster it ran than the
hand-rolled alternative (a dict behind a ``threading.Lock``; an owner thread
serving a dict from a ``queue.SimpleQueue``). The pure-Python reference tables
are measured only with ``--with-reference`` (or when named in
``--strategies``): they are fastkv's test oracles, not a choice.

Ctrl-C stops the run: the tables measured so far are printed (and the
``--json``/``--markdown`` files written, marked interrupted), then the command
exits with status 130.

Absolute figures depend on the machine and on what else runs on it; only the
ratios inside one run mean something.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import gc
import importlib
import itertools
import json
import math
import operator
import os
import platform
import queue
import random
import shutil
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = [
    "SCENARIOS",
    "STRATEGIES",
    "QueueOwner",
    "LockedDict",
    "Store",
    "Strategy",
    "main",
    "make_data",
    "make_record",
    "run",
    "scenario_runner",
    "workload",
]

SCENARIOS = ("read", "write", "mix", "threads")

_EXEC_ORDER = ("read", "threads", "write", "mix")

SCENARIO_TITLES = {
    "read": "read: one thread, get() of a present key, store never written",
    "write": "write: one thread, put() overwriting a present key (queued writes: until sync)",
    "mix": "mix: one thread, 9 reads then 1 write, repeated (90/10)",
    "threads": "threads: {threads} threads reading at once, aggregate ops/s",
}

QUICK_SIZES = (10, 1_000, 100_000)
FULL_SIZES = (10, 1_000, 100_000, 1_000_000)

# Per mode: seconds a timed run lasts at least, runs per figure (best taken),
# seconds one figure may take (a single slow operation is then timed once),
# and seconds a store's build may be expected to take before larger sizes of
# that strategy are skipped.
MODES = {
    "quick": {"min_time": 0.003, "repeat": 15, "budget": 1.0, "build_budget": 2.0},
    "full": {"min_time": 0.01, "repeat": 40, "budget": 8.0, "build_budget": 30.0},
}

KEY_LIST_LEN = 100_000  # length of the random key list a run cycles over
CHUNK = 1_000  # keys per inner-loop chunk
MAX_OPS = 20_000_000  # upper bound on operations per run
PROBE_SIZE = 1_000  # size of the trial build that estimates a large build's time
SETTLED_MIN_OPS = 1_000  # least operations in a run that ends with sync()
CONFIRM = 1.25  # a best run needs another run within this factor of it
RECALIBRATE = 0.25  # a timed run this much shorter than min_time: n is re-scaled once
SEED = 20240611
RECORD_POOL = 1_024
FIELDS = (
    "id", "name", "email", "city", "country", "plan",
    "status", "created", "updated", "locale", "team", "role",
)


# --------------------------------------------------------------------------
# data


def make_record(i: int) -> Dict[str, str]:
    """A record like the article's: a dict of a dozen short string fields."""
    return {
        "id": str(i),
        "name": f"user {i}",
        "email": f"user{i}@example.com",
        "city": ("Lisbon", "Oslo", "Lima", "Kyoto")[i % 4],
        "country": ("PT", "NO", "PE", "JP")[i % 4],
        "plan": ("free", "pro", "team")[i % 3],
        "status": ("active", "paused")[i % 2],
        "created": f"2021-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "updated": f"2023-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "locale": ("en", "pt", "no", "ja")[i % 4],
        "team": f"team-{i % 97}",
        "role": ("admin", "member", "viewer")[i % 3],
    }


@functools.lru_cache(maxsize=1)
def _record_pool() -> List[Dict[str, str]]:
    return [make_record(i) for i in range(RECORD_POOL)]


def make_data(size: int) -> Dict[str, Dict[str, str]]:
    """``size`` keys ``"key:<i>"``, each holding a record from a shared pool."""
    pool = _record_pool()
    n = len(pool)
    return {f"key:{i}": pool[i % n] for i in range(size)}


# --------------------------------------------------------------------------
# peers written here


class LockedDict:
    """The hand-rolled thread-safe cache: a dict behind one ``threading.Lock``."""

    def __init__(self, data=()):
        self._data = dict(data)
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            return self._data.get(key, default)

    def put(self, key, value):
        with self._lock:
            self._data[key] = value


_GET, _PUT, _SYNC, _STOP = range(4)


class QueueOwner:
    """The hand-rolled owner thread: one thread owns a dict and serves requests
    taken from a ``queue.SimpleQueue``; a read (call) waits for its answer on the
    calling thread's own reply ``SimpleQueue``; a write (cast) does not wait.
    This is what a Python user writes for "a GenServer holding a map"."""

    def __init__(self, data=()):
        self._requests = queue.SimpleQueue()
        self._local = threading.local()
        self._thread = threading.Thread(
            target=self._serve, args=(dict(data),), name="fastkv-bench-queue-owner", daemon=True
        )
        self._thread.start()

    def _serve(self, table):
        get = self._requests.get
        while True:
            op, key, value, reply = get()
            try:
                if op == _GET:
                    reply.put((True, table.get(key)))
                elif op == _PUT:
                    table[key] = value
                elif op == _SYNC:
                    reply.put((True, None))
                else:
                    reply.put((True, None))
                    return
            except BaseException as exc:  # the caller must never wait forever
                if reply is not None:
                    reply.put((False, exc))

    def _box(self):
        try:
            return self._local.box
        except AttributeError:
            box = self._local.box = queue.SimpleQueue()
            return box

    def _call(self, op, key=None):
        box = self._box()
        self._requests.put((op, key, None, box))
        ok, result = box.get()
        if not ok:
            raise result
        return result

    def get(self, key):
        return self._call(_GET, key)

    def put(self, key, value):
        self._requests.put((_PUT, key, value, None))

    def sync(self):
        self._call(_SYNC)

    def close(self):
        if self._thread.is_alive():
            self._call(_STOP)
            self._thread.join()


class _Holder:
    """Holds an immutable map that writes replace (``m = m.set(k, v)``); reads
    go through the holder so they see the latest map."""

    __slots__ = ("map",)

    def __init__(self, m):
        self.map = m

    def get(self, key):
        return self.map.get(key)

    def put(self, key, value):
        self.map = self.map.set(key, value)


def _agent_put(state, key, value):
    state[key] = value
    return state


def _nothing():
    return None


# --------------------------------------------------------------------------
# strategies


@dataclass
class Store:
    """A built store, adapted to the four operations the scenarios use.

    ``read`` is the hot-path call of a store that is never written (read and
    threads scenarios); ``mix_read`` the read that must see writes (mix);
    ``settle`` waits until queued writes are applied; ``close`` releases it."""

    read: Callable[[Any], Any]
    write: Callable[[Any, Any], Any]
    settle: Callable[[], Any] = _nothing
    close: Callable[[], Any] = _nothing
    mix_read: Optional[Callable[[Any], Any]] = None
    obj: Any = None


@dataclass
class Strategy:
    id: str
    label: str
    kind: str  # "baseline", "fastkv", "reference" or "peer"
    summary: str
    thread_safe: bool
    build: Callable[[dict], Store]
    requires: Sequence[str] = ()
    # a write costs a whole rebuild (ModuleTable): write and mix are skipped at
    # sizes whose build alone exceeds the per-figure budget
    write_rebuilds: bool = False
    # (set at run time) why it is skipped whole, e.g. a peer not installed
    skip_reason: Optional[str] = field(default=None, repr=False)


def _table_store(t, owner=False):
    if owner:
        return Store(read=t.get, write=t.put, settle=t.sync, close=t.close, obj=t)
    return Store(read=t.get, write=t.put, close=t.close, obj=t)


def _fastkv(name):
    import fastkv

    return getattr(fastkv, name)


def _reference(name):
    import fastkv.reference

    return getattr(fastkv.reference, name)


def _build_dict(data):
    d = dict(data)
    # the fastest call that stores into a dict (d.__setitem__ is a slow slot wrapper)
    return Store(read=d.get, write=functools.partial(operator.setitem, d), obj=d)


def _build_frozen(get_cls):
    def build(data):
        return _table_store(get_cls("FrozenTable")(data))

    return build


def _build_module(data):
    import fastkv

    return _table_store(fastkv.ModuleTable(data))


def _build_module_state(data):
    """The article's read: a call of the generated module's ``state(key)``.
    A write replaces the module, so the mix reads it from the table each time."""
    import fastkv

    t = fastkv.ModuleTable(data)
    return Store(read=t.module.state, write=t.put, close=t.close,
                 mix_read=lambda key: t.module.state(key), obj=t)


def _build_locked(get_cls):
    def build(data):
        return _table_store(get_cls("LockedTable")(data))

    return build


def _build_owner(get_cls, access):
    def build(data):
        return _table_store(get_cls("OwnerTable")(data, access=access), owner=True)

    return build


def _build_agent(get_cls):
    def build(data):
        agent = get_cls("Agent")(dict(data))
        return Store(
            read=functools.partial(agent.get, dict.get),
            write=functools.partial(agent.cast, _agent_put),
            settle=agent.sync,
            close=agent.close,
            obj=agent,
        )

    return build


def _build_immutables(data):
    import immutables

    m = immutables.Map(data)
    holder = _Holder(m)
    return Store(read=m.get, write=holder.put, mix_read=holder.get, obj=holder)


def _build_frozendict(data):
    from frozendict import frozendict

    m = frozendict(data)
    holder = _Holder(m)
    return Store(read=m.get, write=holder.put, mix_read=holder.get, obj=holder)


def _build_cachetools(data):
    import cachetools

    c = cachetools.LRUCache(maxsize=2 * len(data) + 16)
    c.update(data)
    return Store(read=c.get, write=c.__setitem__, obj=c)


def _build_cachebox(data):
    import cachebox

    c = cachebox.Cache(0, data)
    return Store(read=c.get, write=c.insert, obj=c)


def _build_locked_dict(data):
    d = LockedDict(data)
    return Store(read=d.get, write=d.put, obj=d)


def _build_queue_owner(data):
    o = QueueOwner(data)
    return Store(read=o.get, write=o.put, settle=o.sync, close=o.close, obj=o)


def _strategies() -> List[Strategy]:
    S = Strategy
    out = [
        S("dict", "dict", "baseline",
          "plain dict: d.get(k), operator.setitem(d, k, v) (the baseline; compound updates not atomic)",
          False, _build_dict),
        S("frozen", "FrozenTable", "fastkv",
          "snapshot read lock-free; a write copies the table, O(n), and swaps it in",
          True, _build_frozen(_fastkv)),
        S("module", "ModuleTable", "fastkv",
          "data compiled into a generated module; a write regenerates the module",
          True, _build_module, write_rebuilds=True),
        S("module-state", "ModuleTable module.state", "fastkv",
          "the same table read as the article does: state(key) of the generated module",
          True, _build_module_state, write_rebuilds=True),
        S("locked", "LockedTable", "fastkv",
          "one lock around every operation, compound ones atomic",
          True, _build_locked(_fastkv)),
        S("owner-private", "OwnerTable private", "fastkv",
          "every read is a call to the owner thread, writes are casts",
          True, _build_owner(_fastkv, "private")),
        S("owner-protected", "OwnerTable protected", "fastkv",
          "reads go to the table directly, writes are casts to the owner",
          True, _build_owner(_fastkv, "protected")),
        S("agent", "Agent(dict)", "fastkv",
          "a dict as Agent state: reads agent.get(dict.get, k), writes agent.cast",
          True, _build_agent(_fastkv)),
    ]
    for sid, label, build in (
        ("frozen", "FrozenTable", _build_frozen(_reference)),
        ("locked", "LockedTable", _build_locked(_reference)),
        ("owner-private", "OwnerTable private", _build_owner(_reference, "private")),
        ("owner-protected", "OwnerTable protected", _build_owner(_reference, "protected")),
        ("agent", "Agent(dict)", _build_agent(_reference)),
    ):
        out.append(S("ref-" + sid, "ref " + label, "reference",
                     "fastkv.reference (pure Python) " + label, True, build))
    out += [
        S("immutables", "immutables.Map", "peer",
          "HAMT mapping; a write is m = m.set(k, v), O(log n), through a holder",
          True, _build_immutables, requires=("immutables",)),
        S("frozendict", "frozendict", "peer",
          "immutable dict; a write is d = d.set(k, v), an O(n) copy, through a holder",
          True, _build_frozendict, requires=("frozendict",)),
        S("cachetools", "cachetools.LRUCache", "peer",
          "pure-Python LRU cache (maxsize 2x the keys: never evicts here); needs a lock across threads",
          False, _build_cachetools, requires=("cachetools",)),
        S("cachebox", "cachebox.Cache", "peer",
          "Rust hash map without eviction policy, locked inside; c.get(k), c.insert(k, v)",
          True, _build_cachebox, requires=("cachebox",)),
        S("dict-lock", "dict+Lock", "peer",
          "dict behind a threading.Lock, `with lock:` around every operation",
          True, _build_locked_dict),
        S("queue-owner", "SimpleQueue owner", "peer",
          "owner thread serving a dict from a queue.SimpleQueue (reply on a per-thread SimpleQueue)",
          True, _build_queue_owner),
    ]
    return out


STRATEGIES: Dict[str, Strategy] = {s.id: s for s in _strategies()}


def _check_available(strategy: Strategy) -> Optional[str]:
    """Why ``strategy`` cannot run here (None when it can)."""
    for mod in strategy.requires:
        try:
            importlib.import_module(mod)
        except ImportError:
            return f"{mod} not installed (pip install {mod}, or fastkv[bench])"
    if strategy.kind == "reference":
        import fastkv
        import fastkv.reference

        name = strategy.label.split()[1].split("(")[0]
        if getattr(fastkv, name) is getattr(fastkv.reference, name):
            return f"fastkv.{name} is the reference class (not compiled yet): same as {name}"
    return None


# --------------------------------------------------------------------------
# timing


class _KeyStream:
    """A pre-built list of items, cut into chunks, handed out cyclically: each
    take() goes on where the previous one stopped, so successive timed runs
    walk the whole (random) list instead of rereading its cache-warm start."""

    def __init__(self, items, chunk=CHUNK):
        self.chunks = [items[i:i + chunk] for i in range(0, len(items), chunk)]
        self.next = 0

    def take(self, n):
        out = []
        i = self.next
        nchunks = len(self.chunks)
        while n > 0:
            c = self.chunks[i % nchunks]
            if len(c) > n:
                c = c[:n]
            out.append(c)
            n -= len(c)
            i += 1
        self.next = i % nchunks
        return out


def _run_read(read, chunks):
    t0 = time.perf_counter()
    for chunk in chunks:
        for k in chunk:
            read(k)
    return time.perf_counter() - t0


def _run_write(write, settle, chunks, value):
    t0 = time.perf_counter()
    for chunk in chunks:
        for k in chunk:
            write(k, value)
    settle()
    return time.perf_counter() - t0


def _run_mix(read, write, settle, chunks, value):
    t0 = time.perf_counter()
    for chunk in chunks:
        for k0, k1, k2, k3, k4, k5, k6, k7, k8, k9 in chunk:
            read(k0)
            read(k1)
            read(k2)
            read(k3)
            read(k4)
            read(k5)
            read(k6)
            read(k7)
            read(k8)
            write(k9, value)
    settle()
    return time.perf_counter() - t0


def _run_threads(read, per_thread_chunks):
    """Seconds from the first reader's start to the last reader's end, each
    taken by the reader itself: a main thread that takes the clock after the
    barrier may be scheduled late, with the readers already running, and
    would then time less than they did."""
    errors = []
    n = len(per_thread_chunks)
    barrier = threading.Barrier(n + 1)
    began = [0.0] * n
    ended = [0.0] * n

    def worker(i, chunks):
        try:
            barrier.wait()
            began[i] = time.perf_counter()
            for chunk in chunks:
                for k in chunk:
                    read(k)
        except BaseException as exc:  # reported by the measuring thread
            errors.append(exc)
        ended[i] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True)
               for i, c in enumerate(per_thread_chunks)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return max(ended) - min(began)


class _Timing:
    """One figure being measured: its run function, the calibrated number of
    units per run, and the seconds of each timed run so far."""

    __slots__ = ("strategy", "run", "unit_ops", "n", "samples", "spent", "error", "remeasured",
                 "unstable", "min_time", "recalibrated")

    def __init__(self, strategy, run, unit_ops):
        self.strategy = strategy
        self.run = run
        self.unit_ops = unit_ops
        self.n = 1
        self.samples = []
        self.spent = 0.0
        self.error = None
        self.remeasured = False  # its best run stood alone: more runs were taken
        self.unstable = False  # and it still stood alone: dropped, figure marked
        self.min_time = 0.0    # what calibrate() aimed a run at
        self.recalibrated = False  # a timed run showed the calibration was disturbed

    def confirmed(self):
        """Whether the best run is backed by another run within CONFIRM of it
        (a figure of fewer than 3 runs is not judged)."""
        if len(self.samples) < 3:
            return True
        first, second = sorted(self.samples)[:2]
        return second <= first * CONFIRM

    def best(self):
        """The seconds reported: the best run, or the second best when the
        best stood alone even after re-measuring."""
        ordered = sorted(self.samples)
        return ordered[1] if self.unstable else ordered[0]

    def calibrate(self, min_time, budget, min_n=1):
        """n grows x10 from ``min_n`` until a run lasts min_time/10, then is
        scaled to last min_time (a run already that long is kept as a sample)."""
        n = max(1, min_n)
        self.min_time = min_time
        while True:
            t = self.run(n)
            self.spent += t
            if t >= min_time / 10 or n >= MAX_OPS or self.spent >= budget:
                break
            n = min(MAX_OPS, n * 10)
        if t >= min_time or n >= MAX_OPS or self.spent >= budget:
            self.samples.append(t)
        else:
            n = min(MAX_OPS, max(n, math.ceil(n * min_time / max(t, 1e-9))))
        self.n = n

    def wants(self, repeat, budget):
        return self.error is None and len(self.samples) < repeat and (not self.samples or self.spent < budget)

    def once(self):
        t = self.run(self.n)
        self.spent += t
        if (not self.recalibrated and t < self.min_time * RECALIBRATE
                and self.n < MAX_OPS):
            # A calibration run the machine stalled came out slow, so n came
            # out small: every run would then time mostly a run's fixed cost
            # (the threads scenario's thread starts: FrozenTable at 183x dict
            # once). Scale n from this undisturbed run, drop what was timed.
            self.n = min(MAX_OPS, max(self.n + 1, math.ceil(self.n * self.min_time / max(t, 1e-9))))
            self.samples.clear()
            self.recalibrated = True
            return
        self.samples.append(t)


def _measure_interleaved(timings, min_time, repeat, budget, min_n_of, on_round=None):
    """Calibrate every figure, then take the timed runs in rounds: one run of
    each figure per round, the order rotated every round, so that a change in
    the machine's load during the measurement reaches every strategy alike.
    A figure stops at ``repeat`` runs, or once its runs exceed ``budget``
    seconds (a run longer than the budget is timed once)."""
    for tm in timings:
        try:
            tm.calibrate(min_time, budget, min_n_of(tm))
        except Exception as exc:
            tm.error = exc
    rnd = _rounds(timings, repeat, budget, 0, on_round)
    # a best run that no other run comes near is a one-off (a lucky scheduling,
    # a timer hiccup): take as many runs again for those figures, interleaved
    again = [tm for tm in timings if tm.error is None and not tm.confirmed()]
    if again:
        for tm in again:
            tm.remeasured = True
            tm.spent = 0.0
        _rounds(again, 2 * repeat, budget, rnd, on_round)
        for tm in again:
            tm.unstable = tm.error is None and not tm.confirmed()


def _rounds(timings, repeat, budget, rnd, on_round):
    """Timed runs in rounds until every figure has ``repeat`` runs (or spent
    its budget); returns the round count."""
    while True:
        todo = [tm for tm in timings if tm.wants(repeat, budget)]
        if not todo:
            return rnd
        k = rnd % len(todo)
        for tm in todo[k:] + todo[:k]:
            try:
                tm.once()
            except Exception as exc:
                tm.error = exc
        rnd += 1
        if on_round is not None:
            on_round(rnd)


@dataclass
class _Workload:
    """Everything a size's timed loops need, built before any clock starts."""

    size: int
    data: dict
    keys: _KeyStream
    groups: _KeyStream
    thread_keys: List[_KeyStream]
    value: dict


def _copy_key(key):
    """An equal str that is not the stored object, as a key parsed from a
    request would be: a lookup must compare the string, not just its identity."""
    return key.encode().decode()


def workload(size, threads=4, key_list_len=KEY_LIST_LEN):
    """The data (``size`` records) and the key lists every scenario reads."""
    data = make_data(size)
    rng = random.Random(SEED + size)
    key_list = list(data)
    n = max(key_list_len, 10 * CHUNK)
    sample = [_copy_key(k) for k in rng.choices(key_list, k=n)]
    groups = [tuple(sample[i:i + 10]) for i in range(0, n - 9, 10)]
    thread_keys = [_KeyStream([_copy_key(k) for k in rng.choices(key_list, k=n // 2)])
                   for _ in range(threads)]
    value = make_record(RECORD_POOL + 1)
    return _Workload(size, data, _KeyStream(sample), _KeyStream(groups, CHUNK // 10), thread_keys, value)


def scenario_runner(scenario, store: Store, w: _Workload):
    """(run, unit_ops) for one scenario: ``run(n)`` performs n units of
    ``unit_ops`` operations each on ``store`` and returns the seconds taken."""
    if scenario == "read":
        read = store.read
        return (lambda n: _run_read(read, w.keys.take(n))), 1
    if scenario == "write":
        write, settle, value = store.write, store.settle, w.value
        return (lambda n: _run_write(write, settle, w.keys.take(n), value)), 1
    if scenario == "mix":
        read = store.mix_read or store.read
        write, settle, value = store.write, store.settle, w.value
        return (lambda n: _run_mix(read, write, settle, w.groups.take(n), value)), 10
    if scenario == "threads":
        read = store.read
        ts = w.thread_keys
        return (lambda n: _run_threads(read, [t.take(n) for t in ts])), len(ts)
    raise ValueError(f"unknown scenario {scenario!r}")


# --------------------------------------------------------------------------
# the run


class _Progress:
    """One line on stderr, rewritten in place on a terminal; a line per store
    elsewhere (logs)."""

    def __init__(self, total, enabled=True, stream=None):
        self.total = total
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self.width = 0

    def _elapsed(self):
        s = int(time.perf_counter() - self.start)
        return f"{s // 60}:{s % 60:02d}"

    def step(self, text, final=False):
        if not self.enabled:
            return
        line = f"[{self.done:>4}/{self.total}  {self._elapsed()}] {text}"
        if self.tty:
            line = line[: max(20, shutil.get_terminal_size().columns - 1)]
            pad = max(0, self.width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self.width = len(line)
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, interrupted=False):
        if not self.enabled:
            return
        line = f"{'interrupted' if interrupted else 'done'}: {self.done} figures in {self._elapsed()}"
        if self.tty:
            self.stream.write("\r" + line + " " * max(0, self.width - len(line)) + "\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def machine_info() -> Dict[str, Any]:
    import fastkv

    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "fastkv_version": getattr(fastkv, "__version__", "?"),
        "loadavg": _loadavg(),
        "compiled": list(fastkv.COMPILED),
        "not_compiled": list(getattr(fastkv, "NOT_COMPILED", ())),
    }


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def run(
    sizes: Sequence[int],
    scenarios: Sequence[str],
    strategies: Sequence[Strategy],
    *,
    mode: str = "quick",
    threads: int = 4,
    min_time: Optional[float] = None,
    repeat: Optional[int] = None,
    budget: Optional[float] = None,
    build_budget: Optional[float] = None,
    progress: bool = True,
) -> Dict[str, Any]:
    """Measure; returns the report (what ``--json`` writes)."""
    cfg = dict(MODES[mode])
    for key, val in (("min_time", min_time), ("repeat", repeat), ("budget", budget),
                     ("build_budget", build_budget)):
        if val is not None:
            cfg[key] = val
    scenarios = [s for s in SCENARIOS if s in scenarios]
    sizes = sorted(set(sizes))
    strategies = list(strategies)
    for s in strategies:
        s.skip_reason = _check_available(s)

    load_start = _loadavg()
    results: Dict[tuple, Dict[str, Any]] = {}
    builds: Dict[tuple, Dict[str, Any]] = {}
    last_build: Dict[str, tuple] = {}  # strategy id -> (size, seconds)
    prog = _Progress(len(sizes) * len(strategies) * len(scenarios), enabled=progress)  # figures

    def record(scn, size, s, **fields):
        results[(scn, size, s.id)] = {"scenario": scn, "size": size, "strategy": s.id, **fields}

    interrupted = False
    try:
        for size in sizes:
            prog.step(f"{size:,} keys: building the data")
            w = workload(size, threads)
            stores = {}  # strategy id -> built Store, all alive while this size is measured
            build_seconds = {}
            try:
                for s in strategies:
                    reason = s.skip_reason
                    if reason is None and size > PROBE_SIZE and last_build.get(s.id, (0, 0))[0] < PROBE_SIZE:
                        # no build of a fair size yet: time a trial build to extrapolate from
                        try:
                            t0 = time.perf_counter()
                            probe = s.build(make_data(PROBE_SIZE))
                            last_build[s.id] = (PROBE_SIZE, time.perf_counter() - t0)
                            probe.close()
                            del probe
                        except Exception:
                            pass  # the real build below reports the error
                    if reason is None and size > PROBE_SIZE and s.id in last_build:
                        psize, psec = last_build[s.id]
                        estimate = psec * size / max(psize, 1)
                        if estimate > cfg["build_budget"]:
                            reason = (f"build estimated at {estimate:.0f} s (took {psec:.1f} s at {psize:,} keys)"
                                      f" > budget {cfg['build_budget']:.0f} s")
                    if reason is not None:
                        builds[(size, s.id)] = {"size": size, "strategy": s.id, "status": "skipped",
                                                "reason": reason}
                        for scn in scenarios:
                            record(scn, size, s, status="skipped", reason=reason)
                        prog.step(f"{size:,} keys  {s.label}: skipped ({reason})", final=True)
                        continue
                    prog.step(f"{size:,} keys  {s.label}: building")
                    gc.collect()
                    try:
                        t0 = time.perf_counter()
                        stores[s.id] = s.build(w.data)
                        build_s = build_seconds[s.id] = time.perf_counter() - t0
                    except Exception as exc:
                        msg = f"{type(exc).__name__}: {exc}"
                        builds[(size, s.id)] = {"size": size, "strategy": s.id, "status": "error", "reason": msg}
                        for scn in scenarios:
                            record(scn, size, s, status="error", reason=msg)
                        prog.step(f"{size:,} keys  {s.label}: build error ({msg})", final=True)
                        continue
                    last_build[s.id] = (size, build_s)
                    builds[(size, s.id)] = {"size": size, "strategy": s.id, "status": "ok", "seconds": build_s}
                    prog.step(f"{size:,} keys  {s.label}: built in {build_s:.3f} s", final=True)

                # the read-only scenarios first, while every store is as built
                for scn in sorted(scenarios, key=_EXEC_ORDER.index):
                    timings = []
                    for s in strategies:
                        if s.id not in stores:
                            continue
                        build_s = build_seconds[s.id]
                        if s.write_rebuilds and scn in ("write", "mix") and build_s > cfg["budget"]:
                            record(scn, size, s, status="skipped",
                                   reason=(f"a write rebuilds it: ~{build_s:.1f} s per write at {size:,} keys"
                                           f" > budget {cfg['budget']:g} s per figure"))
                            continue
                        runner, unit_ops = scenario_runner(scn, stores[s.id], w)
                        timings.append(_Timing(s, runner, unit_ops))

                    def min_n_of(tm, scn=scn):
                        if scn in ("write", "mix") and stores[tm.strategy.id].settle is not _nothing:
                            # one sync() round trip ends the run: amortize it
                            return SETTLED_MIN_OPS // tm.unit_ops
                        return 1

                    def on_round(rnd, scn=scn):
                        prog.step(f"{size:,} keys  {scn}: round {rnd}/{cfg['repeat']} over {len(timings)} stores")

                    prog.step(f"{size:,} keys  {scn}: calibrating {len(timings)} stores")
                    gc.collect()
                    _measure_interleaved(timings, cfg["min_time"], cfg["repeat"], cfg["budget"],
                                         min_n_of, on_round)
                    for tm in timings:
                        if tm.error is not None:
                            record(scn, size, tm.strategy, status="error",
                                   reason=f"{type(tm.error).__name__}: {tm.error}")
                            continue
                        ops = tm.n * tm.unit_ops
                        best = tm.best()
                        median = statistics.median(tm.samples)
                        record(scn, size, tm.strategy, status="ok", ops=ops, best_seconds=best,
                               runs=len(tm.samples),
                               ops_per_sec=ops / best if best > 0 else float("inf"),
                               median_ops_per_sec=ops / median if median > 0 else float("inf"),
                               remeasured=tm.remeasured, unstable=tm.unstable)
                    prog.done += len(strategies)
                    prog.step(f"{size:,} keys  {scn}: done", final=True)
            finally:
                for store in stores.values():
                    try:
                        store.close()
                    except Exception:
                        pass
                stores.clear()
            del w
    except KeyboardInterrupt:  # Ctrl-C: report what was measured before it
        interrupted = True
    prog.finish(interrupted)
    load_end = _loadavg()

    if interrupted:
        # keep the sizes and scenarios that have a figure; the rest of their
        # cells say they were not measured
        sizes = [n for n in sizes if any(k[1] == n for k in results)]
        scenarios = [c for c in scenarios if any(k[0] == c for k in results)]
        for scn in scenarios:
            for size in sizes:
                for s in strategies:
                    if (scn, size, s.id) not in results:
                        record(scn, size, s, status="interrupted", reason="interrupted (Ctrl-C) before it")
        builds = {k: b for k, b in builds.items() if k[0] in sizes}

    # ratios, per scenario and size, against this run's fastest and its dict
    for scn in scenarios:
        for size in sizes:
            row = [results[(scn, size, s.id)] for s in strategies]
            ok = [r for r in row if r["status"] == "ok"]
            if not ok:
                continue
            fastest = max(r["ops_per_sec"] for r in ok)
            base = results.get((scn, size, "dict"))
            for r in ok:
                r["slower_than_fastest"] = fastest / r["ops_per_sec"]
                if base is not None and base["status"] == "ok":
                    r["vs_dict"] = base["ops_per_sec"] / r["ops_per_sec"]

    machine = machine_info()
    machine["loadavg_start"] = load_start
    machine["loadavg_end"] = load_end
    del machine["loadavg"]
    return {
        "tool": "fastkv bench",
        "note": ("absolute ops/s are bound to this machine and its load; only ratios "
                 "within one run mean something"),
        "machine": machine,
        "mode": mode,
        "method": {
            "min_time": cfg["min_time"],
            "repeat": cfg["repeat"],
            "budget": cfg["budget"],
            "build_budget": cfg["build_budget"],
            "threads": threads,
            "timer": "time.perf_counter, best of runs, loop overhead included",
        },
        "sizes": sizes,
        "scenarios": scenarios,
        "strategies": [
            {"id": s.id, "label": s.label, "kind": s.kind, "summary": s.summary,
             "thread_safe": s.thread_safe, "skipped": s.skip_reason}
            for s in strategies
        ],
        "builds": [builds[(size, s.id)] for size in sizes for s in strategies if (size, s.id) in builds],
        "results": [results[(scn, size, s.id)] for scn in scenarios for size in sizes for s in strategies],
        "interrupted": interrupted,
        "verdict": verdict(results, sizes, scenarios, [s.id for s in strategies]),
    }


# --------------------------------------------------------------------------
# verdict

# (workload, what it means, scenarios to judge it by (first run one wins),
#  candidate fastkv tables (an earlier one wins a near tie: its guarantees fit
#  the workload best), the hand-rolled alternative it replaces)
VERDICTS = (
    ("read-mostly", "read-mostly data (configuration, reference data), rarely written",
     ("read", "threads"), ("frozen", "locked"), "dict-lock"),
    ("read/write", "data read and written by many threads",
     ("mix", "write"), ("locked", "owner-protected"), "dict-lock"),
    # (Agent serves any state at the same round trip: for a key-value table
    # the table is OwnerTable)
    ("serialized", "every operation serialized on one owner thread, in order",
     ("mix", "read"), ("owner-private",), "queue-owner"),
)
TIE = 0.9  # a candidate within 10% of the fastest one counts as a tie

_WORKLOAD_WORDS = {"read": "reads", "threads": "reads from several threads", "mix": "90/10 read/write mix",
                   "write": "writes"}
_ALTERNATIVE_WORDS = {"dict-lock": "a dict behind a threading.Lock",
                      "queue-owner": "a hand-rolled owner thread on queue.SimpleQueue"}


def _geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def verdict(results: Dict[tuple, Dict[str, Any]], sizes: Sequence[int], scenarios: Sequence[str],
            strategy_ids: Sequence[str]) -> List[Dict[str, Any]]:
    """For each workload of VERDICTS: the fastkv table to pick, from this
    run's figures, and how many times faster than the hand-rolled
    alternative it ran at each size (``results`` as ``run`` collects them:
    (scenario, size, strategy id) -> figure)."""

    def rate(scn, size, sid):
        r = results.get((scn, size, sid))
        return r["ops_per_sec"] if r is not None and r["status"] == "ok" else None

    out = []
    for workload, meaning, scns, candidates, alternative in VERDICTS:
        entry = {"workload": workload, "meaning": meaning, "alternative": alternative}
        best = None
        for scn in scns:
            if scn not in scenarios or alternative not in strategy_ids:
                continue
            scored = []
            for sid in candidates:
                if sid not in strategy_ids:
                    continue
                both = [n for n in sizes if rate(scn, n, sid) and rate(scn, n, alternative)]
                if both:
                    scored.append((sid, both, _geomean([rate(scn, n, sid) for n in both])))
            if scored:
                top = max(score for _, _, score in scored)
                sid, both, _ = next(c for c in scored if c[2] >= TIE * top)
                best = {"scenario": scn, "pick": sid, "runner_up": [c[0] for c in scored if c[0] != sid],
                        "sizes": both, "speedup": [rate(scn, n, sid) / rate(scn, n, alternative) for n in both]}
                break
        if best is None:
            entry["pick"] = None
            entry["reason"] = (f"not measured in this run: needs the {' or '.join(scns)} scenario, "
                               f"{' or '.join(candidates)} and {alternative}")
        else:
            entry.update(best)
        out.append(entry)
    return out


def format_verdict(report: Dict[str, Any]) -> List[str]:
    labels = {s["id"]: s["label"] for s in report["strategies"]}
    out = ["verdict, from this run (the README's \"Choosing a table\" is the long form):"]
    for v in report.get("verdict", ()):
        if v["pick"] is None:
            out.append(f"  {v['workload']}: {v['reason']}")
            continue
        label = labels[v["pick"]]
        if v["pick"].startswith("owner-"):
            label = f"OwnerTable(access=\"{v['pick'][6:]}\")"
        ratios = " / ".join(f"{x:.2g}x" if x < 10 else f"{x:,.0f}x" for x in v["speedup"])
        at = " / ".join(f"{n:,}" for n in v["sizes"])
        faster = min(v["speedup"]) >= 1
        out.append(f"  {v['meaning']}: use {label}.")
        out.append(f"      {_WORKLOAD_WORDS[v['scenario']].capitalize()} ran {ratios} as fast as with "
                   f"{_ALTERNATIVE_WORDS[v['alternative']]}, at {at} keys"
                   + ("." if faster else " (below 1x: slower there)."))
    return out


# --------------------------------------------------------------------------
# output


def _sig(x, digits=3):
    """x to ``digits`` significant figures, as text (1.2, 12, 650, 1,200)."""
    if x == 0:
        return "0"
    s = f"{x:.{digits}g}"
    if "e" in s:
        s = f"{float(s):.0f}"
    if "." not in s and abs(float(s)) >= 1000:
        s = f"{int(float(s)):,}"
    return s


def _fmt_rate(x, digits=3, sep=""):
    """A rate with an SI prefix: 950, 12.3k, 1.2M (``sep`` before the prefix).
    The one formatter of ops/s: bench_scale and benchmarks/readme_bench.py
    use it too."""
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{_sig(x / div, digits)}{sep}{prefix}"
    return _sig(x, digits)


def _fmt_ratio(x):
    if x < 10:
        return f"{x:.2f}x"
    return f"{x:.3g}x" if x < 1000 else f"{x:,.0f}x"


def _size_label(n):
    return f"{n:,} keys"


def format_report(report: Dict[str, Any], verdict: bool = True) -> str:
    m = report["machine"]
    strategies = report["strategies"]
    sizes = report["sizes"]
    res = {(r["scenario"], r["size"], r["strategy"]): r for r in report["results"]}
    out = []
    compiled = ", ".join(m["compiled"]) or "none"
    out.append(f"fastkv {m['fastkv_version']} bench ({report['mode']} mode)")
    out.append(f"machine: {m['platform']}, {m['cpu_count']} CPUs ({m['processor'] or m['machine']})")
    out.append(f"python:  {m['python_implementation']} {m['python_version']}")
    if m.get("loadavg_start") and m.get("loadavg_end"):
        out.append(f"load:    1-min load average {m['loadavg_start'][0]:g} at start, {m['loadavg_end'][0]:g} at end"
                   " (other work on the machine skews owner-thread figures most)")
    line = f"compiled: {compiled}"
    if m["not_compiled"]:
        line += f"; not compiled yet (reference stands in): {', '.join(m['not_compiled'])}"
    out.append(line)
    meth = report["method"]
    out.append(
        f"method:  best of {meth['repeat']} timed loops of >= {meth['min_time']:g} s each over a "
        "pre-built random key list; loop overhead included, nothing subtracted;"
    )
    out.append("         reads and writes are each store's get(key) / put(key, value) (see strategies), pre-bound")
    out.append("Absolute ops/s are bound to this machine and its load: only the ratios within this run mean something.")
    labels = {s["id"]: s["label"] for s in strategies}
    lw = max(len("strategy"), *(len(s["label"]) for s in strategies))
    notes = {}
    unstable = False
    for scn in report["scenarios"]:
        out.append("")
        out.append(SCENARIO_TITLES[scn].format(threads=meth["threads"]))
        rows = sorted(strategies, key=lambda s: _rank(res, scn, sizes, s["id"]))
        head1 = " " * lw + "".join(f" | {_size_label(n):>18}" for n in sizes)
        head2 = f"{'strategy':<{lw}}" + "".join(f" | {'ops/s':>8} {'slower':>9}" for _ in sizes)
        out.append(head1)
        out.append(head2)
        out.append("-" * len(head2))
        for s in rows:
            cells = []
            for size in sizes:
                r = res[(scn, size, s["id"])]
                if r["status"] == "ok":
                    mark = "~" if r.get("unstable") else ""
                    cells.append(f" | {mark + _fmt_rate(r['ops_per_sec']):>8} {_fmt_ratio(r['slower_than_fastest']):>9}")
                    unstable = unstable or bool(mark)
                elif r["status"] == "interrupted":
                    cells.append(f" | {'-':>18}")
                else:
                    mark = r["status"]
                    note = f"{labels[s['id']]}: {r['reason']}"
                    idx = notes.setdefault(note, len(notes) + 1)
                    cells.append(f" | {mark + ' [' + str(idx) + ']':>18}")
            out.append(f"{s['label']:<{lw}}" + "".join(cells))
    builds = [b for b in report.get("builds", ())]
    if builds:
        out.append("")
        out.append("build: seconds to construct the store from a dict of the records")
        bres = {(b["size"], b["strategy"]): b for b in builds}
        out.append(f"{'strategy':<{lw}}" + "".join(f" | {_size_label(n):>14}" for n in sizes))
        for s in strategies:
            cells = []
            for size in sizes:
                b = bres.get((size, s["id"]))
                if b is None or b["status"] != "ok":
                    cells.append(f" | {'-':>14}")
                else:
                    cells.append(f" | {b['seconds']:>14.4f}")
            out.append(f"{s['label']:<{lw}}" + "".join(cells))
    out.append("")
    out.append("strategies:")
    for s in strategies:
        safe = "" if s["thread_safe"] else " [not thread-safe as measured]"
        out.append(f"  {s['id']:<{max(len(x['id']) for x in strategies)}}  {s['label']}: {s['summary']}{safe}")
    if notes:
        out.append("")
        out.append("not measured:")
        for note, idx in sorted(notes.items(), key=lambda kv: kv[1]):
            out.append(f"  [{idx}] {note}")
    if not any(s["kind"] == "reference" for s in strategies):
        out.append("(the pure-Python reference tables are not shown: --with-reference measures them)")
    if unstable:
        out.append("")
        out.append(f"~ unstable: the best run stood alone (no other run within {CONFIRM:g}x of it), even after "
                   "re-measuring; it was dropped and the next run reported. Rerun, or use --full.")
    if report.get("interrupted"):
        out.append("")
        out.append("interrupted (Ctrl-C): '-' marks figures not measured; the verdict uses what was.")
    if verdict:
        out.append("")
        out.extend(format_verdict(report))
    if report.get("scale"):
        from fastkv.bench_scale import format_scale_markdown

        out.append("")
        out.append(format_scale_markdown(report["scale"]))
    return "\n".join(out)


def format_markdown(report: Dict[str, Any]) -> str:
    """The scenario tables as Markdown (for a README): per size, ops/s and
    "x slower than the fastest"; rows ranked as in the text output."""
    strategies = report["strategies"]
    sizes = report["sizes"]
    res = {(r["scenario"], r["size"], r["strategy"]): r for r in report["results"]}
    meth = report["method"]
    out = []
    for scn in report["scenarios"]:
        rows = sorted(strategies, key=lambda s: _rank(res, scn, sizes, s["id"]))
        out.append(f"**{SCENARIO_TITLES[scn].format(threads=meth['threads'])}**")
        out.append("")
        out.append("| strategy | " + " | ".join(_size_label(n) for n in sizes) + " |")
        out.append("|---|" + "---:|" * len(sizes))
        for s in rows:
            cells = []
            for size in sizes:
                r = res[(scn, size, s["id"])]
                if r["status"] == "ok":
                    mark = "~" if r.get("unstable") else ""
                    cells.append(f"{mark}{_fmt_rate(r['ops_per_sec'])}/s ({_fmt_ratio(r['slower_than_fastest'])})")
                else:
                    cells.append("-" if r["status"] == "interrupted" else r["status"])
            out.append(f"| {s['label']} | " + " | ".join(cells) + " |")
        out.append("")
    if report.get("scale"):
        from fastkv.bench_scale import format_scale_markdown

        out.append(format_scale_markdown(report["scale"]))
        out.append("")
    return "\n".join(out)


def _rank(res, scn, sizes, sid):
    """Sort key: rows measured at the largest size first, fastest first."""
    for size in reversed(sizes):
        r = res[(scn, size, sid)]
        if r["status"] == "ok":
            return (-sizes.index(size), -r["ops_per_sec"])
    return (1, 0)


# Bar styles: one colour per family (a fastkv table with its variants and its
# pure-Python twin; each peer; the two hand-rolled peers share grey), one
# hatch per member of a family; reference twins are also drawn lighter. No
# two strategies share a (colour, hatch), so 15+ bars per group stay apart.
_BLUE, _CYAN, _GREEN, _RED, _PURPLE = "#1f77b4", "#17becf", "#2ca02c", "#d62728", "#9467bd"
_STYLES = {
    "dict": ("#222222", ""),
    "frozen": (_BLUE, ""),
    "ref-frozen": (_BLUE, "///"),
    "module": (_CYAN, ""),
    "module-state": (_CYAN, "..."),
    "locked": (_GREEN, ""),
    "ref-locked": (_GREEN, "///"),
    "owner-private": (_RED, ""),
    "owner-protected": (_RED, "..."),
    "ref-owner-private": (_RED, "///"),
    "ref-owner-protected": (_RED, "//.."),
    "agent": (_PURPLE, ""),
    "ref-agent": (_PURPLE, "///"),
    "immutables": ("#8c564b", ""),
    "frozendict": ("#e377c2", ""),
    "cachetools": ("#bcbd22", ""),
    "cachebox": ("#ff7f0e", ""),
    "dict-lock": ("#8a8a8a", "\\\\\\"),
    "queue-owner": ("#8a8a8a", "xxx"),
}
# bars of one family side by side, in this order
_FAMILY_ORDER = ("dict", "frozen", "module", "locked", "owner", "agent",
                 "immutables", "frozendict", "cachetools", "cachebox", "hand-rolled")


def _family(sid):
    """The family a strategy's bar is coloured by: frozen, module, locked,
    owner, agent (fastkv, reference twins included), dict, each peer, and
    hand-rolled (dict+Lock, SimpleQueue owner)."""
    base = sid[4:] if sid.startswith("ref-") else sid
    if base in ("dict-lock", "queue-owner"):
        return "hand-rolled"
    return base.split("-")[0]


def _style(sid):
    """(colour, hatch) of a strategy's bars."""
    return _STYLES.get(sid, ("#bbbbbb", "++"))


def plot(report: Dict[str, Any], path: str) -> None:
    """A bar chart: one panel per scenario, one group of bars per size, one bar
    per strategy measured, ops/s on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    scenarios = report["scenarios"]
    res = {(r["scenario"], r["size"], r["strategy"]): r for r in report["results"]}
    shown = [s for s in report["strategies"]
             if any(res[(scn, size, s["id"])]["status"] == "ok" for scn in scenarios for size in sizes)]
    order = {f: i for i, f in enumerate(_FAMILY_ORDER)}
    shown.sort(key=lambda s: order.get(_family(s["id"]), len(order)))  # stable: families together
    nbar = max(len(shown), 1)
    width = 0.84 / nbar
    fig, axes = plt.subplots(len(scenarios), 1, squeeze=False,
                             figsize=(max(8.0, 1.0 + len(sizes) * (0.75 + 0.14 * nbar)),
                                      1.2 + 3.0 * len(scenarios)))
    meth = report["method"]
    for ax, scn in zip(axes[:, 0], scenarios):
        for j, s in enumerate(shown):
            xs, ys = [], []
            for i, size in enumerate(sizes):
                r = res[(scn, size, s["id"])]
                if r["status"] == "ok":
                    xs.append(i - 0.42 + width * (j + 0.5))
                    ys.append(r["ops_per_sec"])
            ref = s["kind"] == "reference"
            color, hatch = _style(s["id"])
            ax.bar(xs, ys, width=width, color=color, label=s["label"],
                   hatch=hatch or None, alpha=0.55 if ref else 1.0,
                   edgecolor="white", linewidth=0.4)
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)))
        ax.set_xticklabels([_size_label(n) for n in sizes])
        ax.set_xlim(-0.5, len(sizes) - 0.5)
        ax.set_ylabel("ops/s (log scale)")
        ax.set_title(SCENARIO_TITLES[scn].format(threads=meth["threads"]), fontsize=10, loc="left")
        ax.grid(axis="y", which="major", alpha=0.3)
        ax.set_axisbelow(True)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    ncol = min(len(labels), 6) or 1
    nrow = -(-len(labels) // ncol)
    m = report["machine"]
    h = fig.get_figheight()
    fig.suptitle(
        f"fastkv bench ({report['mode']} mode): ops/s, log scale. Ratios, same run; absolute figures are machine-bound.\n"
        f"{m['python_implementation']} {m['python_version']}, {m['platform']}, {m['cpu_count']} CPUs",
        fontsize=9, y=1 - 0.08 / h, va="top",
    )
    legend_top = 1 - 0.5 / h
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, legend_top))
    fig.tight_layout(rect=(0, 0, 1, legend_top - 0.15 * nrow / h))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------
# command line


def _parse_sizes(text):
    out = []
    for part in text.split(","):
        part = part.strip().replace("_", "")
        if not part:
            continue
        mult = 1
        if part[-1] in "kK":
            mult, part = 1_000, part[:-1]
        elif part[-1] in "mM":
            mult, part = 1_000_000, part[:-1]
        try:
            n = int(float(part) * mult)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {part!r}") from None
        if n < 1:
            raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {n}")
        out.append(n)
    if not out:
        raise argparse.ArgumentTypeError("no sizes given")
    return out


def _parse_names(known, what):
    def parse(text):
        out = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            hits = [k for k in known if fnmatch.fnmatchcase(k, part)]
            if not hits:
                raise argparse.ArgumentTypeError(
                    f"unknown {what} {part!r} (choose from: {', '.join(known)})")
            out += [h for h in hits if h not in out]
        if not out:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return out

    return parse


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m fastkv bench",
        description="Measure every fastkv strategy, the reference tables and the usual peers "
                    "in one process; print ops/s and the ratios to the fastest.",
        epilog="Absolute figures are machine-bound; compare ratios within one run.",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick",
                   help="short runs, sizes 10/1,000/100,000 (the default; under a minute)")
    g.add_argument("--full", dest="mode", action="store_const", const="full",
                   help="longer runs, sizes up to 1,000,000 (several minutes)")
    p.set_defaults(mode="quick")
    p.add_argument("--sizes", type=_parse_sizes, metavar="N,N,...",
                   help="key counts to measure, e.g. 10,1000 or 100k,1M")
    p.add_argument("--scenarios", type=_parse_names(list(SCENARIOS) + ["processes"], "scenario"),
                   metavar="S,S,...",
                   help=f"scenarios to run (from {', '.join(SCENARIOS)}, processes)")
    p.add_argument("--procs", type=int, default=4, metavar="N",
                   help="worker processes in the processes scenario (default 4; see fastkv.bench_procs)")
    p.add_argument("--strategies", type=_parse_names(list(STRATEGIES), "strategy"), metavar="ID,ID,...",
                   help="strategies to measure, by id; shell-style patterns work (ref-*); see --list")
    p.add_argument("--with-reference", action="store_true",
                   help="also measure the pure-Python reference tables (fastkv's test oracles, "
                        "hidden by default: not a choice)")
    p.add_argument("--threads", type=int, default=4, metavar="N",
                   help="reader threads in the threads scenario (default 4)")
    p.add_argument("--repeat", type=int, metavar="N", help="timed runs per figure, best kept")
    p.add_argument("--min-time", type=float, metavar="SECONDS", help="minimum duration of a timed run")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    p.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart (needs matplotlib)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress display on stderr")
    p.add_argument("--list", action="store_true", help="list the strategies and scenarios, then exit")
    p.add_argument("--redis", metavar="URL|auto",
                   help="also measure RedisTable (near cache on/off) against plain redis-py on the server "
                        "at URL, or on a local redis-server started for the run ('auto'); needs redis-py")
    p.add_argument("--redis-only", action="store_true", help="with --redis: only the RedisTable measurements")
    p.add_argument("--redis-smoke", action="store_true", help=argparse.SUPPRESS)  # tests: a few ops each
    p.add_argument("--scale", dest="scale", action="store_true", default=None,
                   help="also measure at scale (int keys, misses, builds, pickling, sustained "
                        "threads; see fastkv.bench_scale); on by default with --full")
    p.add_argument("--no-scale", dest="scale", action="store_false", help="skip the scale part")
    p.add_argument("--scale-sizes", type=_parse_sizes, metavar="N,N,...",
                   help="key counts of the scale part (default 1M,10M)")
    p.add_argument("--scaling", dest="scaling", action="store_true", default=None,
                   help="also measure thread scaling (1 and 2 threads reading one shared table; "
                        "see fastkv.bench_threads); on by default on a free-threaded build with the GIL off")
    p.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the thread-scaling part")
    p.add_argument("--scaling-size", type=int, metavar="N", help=argparse.SUPPRESS)   # tests: a tiny run
    p.add_argument("--scaling-reads", type=int, metavar="N", help=argparse.SUPPRESS)
    return p


def _check_output(p, option, path, suffixes=None):
    """Fail in the first second, not after the measurement: the file must be
    creatable (its directory exists and is writable, it is no directory)."""
    if os.path.isdir(path):
        p.error(f"{option} {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        p.error(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        p.error(f"{option} {path}: not writable")
    if suffixes is not None:
        ext = os.path.splitext(path)[1].lstrip(".").lower()
        if ext not in suffixes:
            p.error(f"{option} {path}: unknown image format {ext!r} (use one of: {', '.join(sorted(suffixes))})")


def _list(with_reference):
    """The strategies, one a line, in aligned columns."""
    rows = []
    for s in STRATEGIES.values():
        notes = []
        if s.kind == "reference" and not with_reference:
            notes.append("only with --with-reference")
        why = _check_available(s)
        if why:
            notes.append(f"skipped: {why}")
        rows.append((s.id, s.label, s.kind, s.summary + (f"  [{'; '.join(notes)}]" if notes else "")))
    head = ("id", "strategy", "kind", "what it is")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(3)]
    for r in [head] + rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(r, widths)) + "  " + r[3])
    print("scenarios: " + ", ".join(SCENARIOS) + ", processes")


def _silence_stdout():
    """After a broken pipe (``--list | head``): send what is still buffered
    to /dev/null, so the interpreter's last flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (130 after Ctrl-C, 141
    when stdout is a pipe closed early, as for a process ended by SIGPIPE)."""
    try:
        status = _main(argv)
        sys.stdout.flush()
        return status
    except KeyboardInterrupt:  # outside the measurement (which handles its own)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return 141


def _main(argv):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        argv = argv[1:]
    p = _parser()
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    if args.procs < 1:
        p.error("--procs must be >= 1")
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be >= 1")
    if args.min_time is not None and args.min_time <= 0:
        p.error("--min-time must be > 0")
    if args.list:
        _list(args.with_reference)
        return 0
    if args.redis_only and not args.redis:
        p.error("--redis-only needs --redis URL|auto")
    if args.redis_only:  # fastkv/bench_redis.py
        from fastkv import bench_redis

        return 0 if bench_redis.main(args.redis, quick=args.mode == "quick", smoke=args.redis_smoke) else 1
    if args.json:
        _check_output(p, "--json", args.json)
    if args.markdown:
        _check_output(p, "--markdown", args.markdown)
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            from matplotlib.figure import Figure
        except ImportError:
            p.error("--plot needs matplotlib (pip install matplotlib, or fastkv[bench])")
        _check_output(p, "--plot", args.plot, set(Figure().canvas.get_supported_filetypes()))
    sizes = args.sizes or list(QUICK_SIZES if args.mode == "quick" else FULL_SIZES)
    scenarios = args.scenarios or list(SCENARIOS) + ["processes"]
    if args.strategies:  # named ones are measured, reference ones included
        ids = args.strategies
    else:
        ids = [i for i, s in STRATEGIES.items() if args.with_reference or s.kind != "reference"]
    strategies = [STRATEGIES[i] for i in STRATEGIES if i in ids]
    scale = None
    if args.scale if args.scale is not None else args.mode == "full":
        # first, so that a run stopped with Ctrl-C in the tables keeps it
        from fastkv import bench_scale

        say = (lambda text: print(f"[scale] {text}", file=sys.stderr, flush=True)) if args.progress else None
        cfg = MODES[args.mode]
        scale_load = _loadavg()
        scale = bench_scale.run_scale(
            args.scale_sizes or bench_scale.SCALE_SIZES, repeat=args.repeat or cfg["repeat"] // 2,
            min_time=args.min_time or cfg["min_time"], progress=say)
    report = run(sizes, [s for s in scenarios if s != "processes"], strategies, mode=args.mode,
                 threads=args.threads, min_time=args.min_time, repeat=args.repeat, progress=args.progress)
    if scale is not None:
        report["scale"] = scale
        report["machine"]["loadavg_start"] = scale_load
    print(format_report(report, verdict=False))
    sys.stdout.flush()
    from fastkv import bench_threads

    if (args.scaling if args.scaling is not None else bench_threads.runs_by_default()) \
            and not report["interrupted"]:
        # thread scaling (issue 12): meaningful with the GIL off
        say = (lambda text: print(f"[scaling] {text}", file=sys.stderr, flush=True)) if args.progress else None
        try:
            report["scaling"] = bench_threads.run_scaling(
                size=args.scaling_size or bench_threads.SCALING_SIZE,
                reads=args.scaling_reads or (bench_threads.SCALING_READS // (4 if args.mode == "quick" else 1)),
                rounds=args.repeat or (3 if args.mode == "quick" else 7), progress=say,
                # --full: rounds of >= 0.5 s per thread (a 0.1 s round was mostly noise)
                min_seconds=bench_threads.SCALING_MIN_SECONDS
                if args.mode == "full" and not args.scaling_reads else 0.0)
        except KeyboardInterrupt:
            report["interrupted"] = True
            print("\nthread scaling: interrupted (Ctrl-C)")
        else:
            print("\n" + bench_threads.format_scaling(report["scaling"]))
        sys.stdout.flush()
    if "processes" in scenarios and not report["interrupted"]:
        # SharedTable across worker processes: fastkv.bench_procs
        from fastkv import bench_procs

        def note(msg):
            if args.progress:
                print(msg, file=sys.stderr, flush=True)

        try:
            report["processes"] = bench_procs.run_processes(
                max(sizes), max(1, args.procs), quick=args.mode == "quick", progress=note)
        except KeyboardInterrupt:
            report["interrupted"] = True
            print("\nprocesses: interrupted (Ctrl-C)")
        else:
            print("\n" + bench_procs.format_processes(report["processes"]))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(report) + "\n")
            if "processes" in report:
                f.write("\n```\n" + bench_procs.format_processes(report["processes"]) + "\n```\n")
    if report["interrupted"]:
        print("\n" + "\n".join(format_verdict(report)))
        if args.plot:
            print(f"interrupted: no chart drawn ({args.plot})", file=sys.stderr)
        return 130
    if args.plot:
        plot(report, args.plot)
    if args.redis:
        from fastkv import bench_redis

        print()
        if bench_redis.main(args.redis, quick=args.mode == "quick", smoke=args.redis_smoke) is None:
            return 1
    print("\n" + "\n".join(format_verdict(report)))  # last: what a newcomer acts on
    errors = [r for r in report["results"] if r["status"] == "error"]
    errors += [r for r in report.get("processes", {}).get("results", []) if r["status"] == "error"]
    if errors:
        print(f"\n{len(errors)} figure(s) failed: see 'error' above.", file=sys.stderr)
        return 1
    return 0
