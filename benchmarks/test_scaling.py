"""Read scaling across threads (issue 12): 1 and 2 threads reading one shared
table of str keys, each thread in its own random order, as pytest-benchmark
groups ``scaling-1`` and ``scaling-2``. Meaningful on a free-threaded build
(python3.13t/3.14t, GIL off): there a round's time with 2 threads against 1
thread's is the scaling ratio (2 threads doing 2x the work in the same time =
2.0x). On a GIL build the threads take turns (expect ~1.0x).

    pytest benchmarks/test_scaling.py --benchmark-only
    FASTKV_BENCH_SIZE=100000 pytest benchmarks/test_scaling.py --benchmark-only

Each benchmark records ``cpus``: CPU time of the reader threads / wall time,
i.e. how many CPUs the threads really got (a shared or busy machine gives
less than 2: then the 2-thread figure measures time-slicing, not scaling),
and its spread over the rounds (``cpus_min``, ``cpus_median``: a round whose
threads got less is a round to distrust; pytest-benchmark reports the spread
of the times itself: min, median, max). ``FASTKV_BENCH_SCALING_READS`` sets
the reads per thread per round (default 20,000: quick; 500,000 or more gives
rounds of a few tenths of a second, which a busy machine disturbs less).
Strategies: a dict (shared), per-thread dict copies (the no-sharing ceiling),
dict + threading.Lock, FrozenTable, LockedTable, OwnerTable(access=
"protected").
"""

import os
import random
import sys
import threading
import time

import pytest

import fastkv
from fastkv.bench_threads import _LockedDict  # dict + threading.Lock, the same row as the bench's

SIZE = int(os.environ.get("FASTKV_BENCH_SIZE", "10000"))
READS = int(os.environ.get("FASTKV_BENCH_SCALING_READS", "20000"))  # per thread per round

KEYS = [f"key:{i:07d}" for i in range(SIZE)]
DATA = {k: i for i, k in enumerate(KEYS)}


def _reader_keys(tid):
    ks = [(k + ".")[:-1] for k in KEYS]     # fresh, equal str objects
    for k in ks:
        hash(k)
    random.Random(tid).shuffle(ks)
    reps = -(-READS // len(ks))
    return (ks * reps)[:READS]


def _make(name):
    if name == "dict":
        return DATA, None
    if name == "dict-copies":
        return DATA, dict
    if name == "dict+Lock":
        return _LockedDict(DATA), None
    if name == "FrozenTable":
        return fastkv.FrozenTable(DATA), None
    if name == "LockedTable":
        return fastkv.LockedTable(DATA), None
    if name == "OwnerTable-protected":
        return fastkv.OwnerTable(DATA, access="protected"), None
    raise ValueError(name)


STRATEGIES = ["dict", "dict-copies", "dict+Lock", "FrozenTable", "LockedTable",
              "OwnerTable-protected"]


class _Readers:
    """n threads that, per round, each read their READS keys once."""

    def __init__(self, table, prep, n):
        self.n = n
        self.keys = [_reader_keys(i) for i in range(n)]
        self.tables = [prep(table) if prep else table for _ in range(n)]
        self.start = threading.Barrier(n + 1)
        self.done = threading.Barrier(n + 1)
        self.cpu = [0.0] * n
        self.rounds = []        # (wall seconds, reader CPU seconds) of each round
        self.stop = False
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(n)]
        for th in self.threads:
            th.start()

    def _run(self, i):
        get = self.tables[i].__getitem__
        ks = self.keys[i]
        while True:
            self.start.wait(60)
            if self.stop:
                return
            c0 = time.thread_time()
            for k in ks:
                get(k)
            self.cpu[i] += time.thread_time() - c0
            self.done.wait(60)

    def round(self):
        cpu0 = sum(self.cpu)
        t0 = time.perf_counter()
        self.start.wait(60)
        self.done.wait(60)
        self.rounds.append((time.perf_counter() - t0, sum(self.cpu) - cpu0))

    def close(self):
        self.stop = True
        self.start.wait(60)
        for th in self.threads:
            th.join(60)


def _bench(benchmark, name, nthreads):
    table, prep = _make(name)
    readers = _Readers(table, prep, nthreads)
    try:
        t0 = time.perf_counter()
        benchmark(readers.round)
        wall = time.perf_counter() - t0
    finally:
        readers.close()
        if hasattr(table, "close"):
            table.close()
    gil = sys._is_gil_enabled() if hasattr(sys, "_is_gil_enabled") else True
    per_round = sorted(c / w for w, c in readers.rounds if w > 0)
    benchmark.extra_info.update(size=SIZE, threads=nthreads, reads_per_round=nthreads * READS,
                                cpus=round(sum(readers.cpu) / wall, 2) if wall else None,
                                cpus_min=round(per_round[0], 2) if per_round else None,
                                cpus_median=round(per_round[len(per_round) // 2], 2)
                                if per_round else None,
                                rounds=len(readers.rounds), gil=gil)
    assert readers.rounds and benchmark.extra_info["cpus_min"] <= benchmark.extra_info["cpus_median"]


@pytest.mark.benchmark(group="scaling-1")
@pytest.mark.parametrize("name", STRATEGIES)
def test_one_thread(benchmark, name):
    _bench(benchmark, name, 1)


@pytest.mark.benchmark(group="scaling-2")
@pytest.mark.parametrize("name", STRATEGIES)
def test_two_threads(benchmark, name):
    _bench(benchmark, name, 2)
