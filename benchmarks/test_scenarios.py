"""The cross-strategy scenarios of `python -m fastkv bench`, as pytest-benchmark
groups: one group per scenario (read, write, mix, threads), one benchmark per
strategy in it, all on the same data.

    pytest benchmarks/test_scenarios.py --benchmark-only
    pytest benchmarks/ --benchmark-only --benchmark-json out.json   # for `pytest-benchmark compare`
    pytest benchmarks/ --benchmark-disable                           # CI: each once, quick

One round is ``OPS[scenario]`` operations (a Python loop over a pre-built key
list, the same loops the bench command times; 1,000 reads, 100 writes), so a
round's time / ops_per_round (in extra_info) is the time per operation. The size defaults to 1,000 keys; set FASTKV_BENCH_SIZE (e.g. 100000)
to measure another. Peers that are not installed are skipped.
"""

import os

import pytest

from fastkv import bench

SIZE = int(os.environ.get("FASTKV_BENCH_SIZE", "1000"))
THREADS = 2
# operations per round: reads (per thread for threads) and writes; a round of
# a scenario is the same work for every strategy of its group
OPS = {"read": 1_000, "threads": 1_000, "write": 100, "mix": 100}


@pytest.fixture(scope="module")
def work():
    return bench.workload(SIZE, THREADS, key_list_len=10 * max(OPS.values()))


@pytest.fixture(params=list(bench.STRATEGIES))
def store(request, work):
    strategy = bench.STRATEGIES[request.param]
    reason = bench._check_available(strategy)
    if reason:
        pytest.skip(reason)
    built = strategy.build(work.data)
    yield built
    built.close()


@pytest.mark.parametrize("scenario", ["read", "write", "mix", "threads"])
def test_scenario(benchmark, scenario, store, work):
    run, unit_ops = bench.scenario_runner(scenario, store, work)
    n = OPS[scenario] if scenario == "threads" else max(1, OPS[scenario] // unit_ops)
    benchmark.group = scenario
    benchmark.extra_info.update(size=SIZE, ops_per_round=n * unit_ops)
    benchmark(run, n)
