"""LockedTable against a plain dict, a dict guarded by ``threading.Lock`` and the
reference LockedTable, reads and writes, from 1 thread and from 2 and 4.

Run: ``pytest benchmarks/test_locked.py`` (add ``--benchmark-json=out.json``
to keep the numbers). Each group holds the four contenders measured in the same
run: compare within a group (the issue's targets are ratios: LockedTable reads
at most 1.3x dict, writes at most 1.5x dict, reads at least 4x faster than
dict+Lock).

A round is ``PROBES`` operations per thread over keys spread across the table
(equal-but-not-identical str keys with their hashes cached, or int keys),
written inline as users write them: ``d[k]``, ``with lock: d[k]``, ``t[k]``.
Threaded rounds run on a pool of worker threads started once per module (a
barrier starts them together; the round ends when the last one is done), so a
round's time is the wall time of ``threads * THREAD_REPEAT * PROBES``
operations (``ops_per_round`` in extra_info). The plain
dict is there as the speed of light, not as a thread-safe alternative.
"""

import random
import threading

import pytest

import fastkv
import fastkv.reference

PROBES = 2000
THREAD_REPEAT = 10   # a threaded round runs the loop this many times per thread
IMPLS = ["dict", "LockedTable", "dict+Lock", "reference"]


def _str_case(n):
    keys = [f"key-{i:08d}" for i in range(n)]
    data = dict(zip(keys, range(n)))
    rng = random.Random(n)
    probe = ["".join(list(k)) for k in rng.choices(keys, k=PROBES)]  # equal, not identical
    for k in probe:
        hash(k)
    return data, probe


def _int_case(n):
    data = {i * 7919: i for i in range(n)}
    probe = random.Random(n).choices(list(data), k=PROBES)
    return data, probe


CASES = {"str-1k": lambda: _str_case(1_000), "int-100k": lambda: _int_case(100_000)}


# --- the loops, one per contender, as a user writes them ---------------------------

def _reads(impl, table, lock):
    if impl == "dict+Lock":
        def run(probe):
            for k in probe:
                with lock:
                    table[k]
    else:
        def run(probe):
            for k in probe:
                table[k]
    return run


def _gets(impl, table, lock):
    if impl == "dict+Lock":
        def run(probe):
            for k in probe:
                with lock:
                    table.get(k)
    else:
        def run(probe):
            get = table.get
            for k in probe:
                get(k)
    return run


def _writes(impl, table, lock):
    if impl == "dict+Lock":
        def run(probe):
            for k in probe:
                with lock:
                    table[k] = k
    else:
        def run(probe):
            for k in probe:
                table[k] = k
    return run


OPS = {"t[k]": _reads, "t.get(k)": _gets, "t[k] = v": _writes}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    data, probe = CASES[request.param]()
    return request.param, data, probe


def _table(impl, data):
    if impl in ("dict", "dict+Lock"):
        return dict(data)
    if impl == "LockedTable":
        return fastkv.LockedTable(data)
    return fastkv.reference.LockedTable(data)


# --- threads --------------------------------------------------------------------------

class Pool:
    """``n`` daemon threads that run one job together per round."""

    def __init__(self, n):
        self.n = n
        self.job = None
        self.start = threading.Barrier(n + 1)
        self.done = threading.Barrier(n + 1)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(n)]
        for thread in self.threads:
            thread.start()

    def _loop(self):
        while True:
            self.start.wait()
            job = self.job
            if job is None:
                return
            job()
            self.done.wait()

    def run(self, job):
        self.job = job
        self.start.wait()
        self.done.wait()

    def close(self):
        self.job = None
        self.start.wait()
        for thread in self.threads:
            thread.join()


@pytest.fixture(scope="module", params=[2, 4])
def pool(request):
    p = Pool(request.param)
    yield p
    p.close()


# --- benchmarks --------------------------------------------------------------------

def _setup(benchmark, case, op, impl, threads):
    name, data, probe = case
    table = _table(impl, data)
    run = OPS[op](impl, table, threading.Lock())
    repeat = THREAD_REPEAT if threads > 1 else 1
    benchmark.group = f"LockedTable {op} {name}, {threads} thread{'s' if threads > 1 else ''}"
    benchmark.extra_info.update(impl=impl, ops_per_round=PROBES * threads * repeat, threads=threads)
    return run, probe


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", list(OPS))
def test_one_thread(benchmark, case, op, impl):
    run, probe = _setup(benchmark, case, op, impl, 1)
    benchmark(run, probe)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", ["t[k]", "t[k] = v"])
def test_threads(benchmark, case, pool, op, impl):
    run, probe = _setup(benchmark, case, op, impl, pool.n)

    def job():
        for _ in range(THREAD_REPEAT):
            run(probe)

    benchmark(pool.run, job)
