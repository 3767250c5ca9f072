"""FrozenTable against a plain dict and the reference FrozenTable.

Run: ``pytest benchmarks/test_frozen.py`` (add ``--benchmark-json=out.json``
to keep the numbers). Each group holds the dict baseline, the compiled table
and the reference, measured in the same run: compare within a group.

Reads time 1,000 lookups per round (equal-but-not-identical str keys with
their hashes cached, or int keys), spread over the whole table. The 1M-key
data is built once per module. Memory per entry is recorded in ``extra_info``
of the build benchmarks (``bytes_per_entry``, keys and values excluded).
"""

import random
import sys

import pytest

import fastkv
import fastkv.reference

PROBES = 1000


def _str_case(n):
    keys = [f"key-{i:08d}" for i in range(n)]
    data = dict(zip(keys, range(n)))
    rng = random.Random(n)
    probe = ["".join(list(k)) for k in rng.sample(keys, min(PROBES, n))]  # equal, not identical
    for k in probe:
        hash(k)
    return data, probe


def _int_case(n):
    data = {i * 7919: i for i in range(n)}
    rng = random.Random(n)
    probe = rng.sample(list(data), PROBES)
    return data, probe


CASES = {"str-1k": lambda: _str_case(1_000), "str-1M": lambda: _str_case(1_000_000),
         "int-100k": lambda: _int_case(100_000)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    data, probe = CASES[request.param]()
    tables = {
        "dict": data,
        "FrozenTable": fastkv.FrozenTable(data),
        "reference": fastkv.reference.FrozenTable(data),
    }
    return request.param, data, probe, tables


IMPLS = ["dict", "FrozenTable", "reference"]


def _group(benchmark, op, name, impl):
    benchmark.group = f"{op} {name}"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["per_round"] = PROBES


@pytest.mark.parametrize("impl", IMPLS)
def test_getitem(benchmark, case, impl):
    name, _, probe, tables = case
    t = tables[impl]
    _group(benchmark, "t[k]", name, impl)

    def run():
        for k in probe:
            t[k]

    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
def test_get(benchmark, case, impl):
    name, _, probe, tables = case
    t = tables[impl]
    _group(benchmark, "t.get(k)", name, impl)

    def run():
        for k in probe:
            t.get(k)

    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
def test_contains(benchmark, case, impl):
    name, _, probe, tables = case
    t = tables[impl]
    _group(benchmark, "k in t", name, impl)

    def run():
        for k in probe:
            k in t  # noqa: B015

    benchmark(run)


@pytest.mark.parametrize("impl", IMPLS)
def test_get_many(benchmark, case, impl):
    name, _, probe, tables = case
    t = tables[impl]
    _group(benchmark, "get_many", name, impl)
    if impl == "dict":
        # the baseline the target is stated against: [d.get(k) for k in keys]
        benchmark(lambda: [t.get(k) for k in probe])
    else:
        benchmark(t.get_many, probe)


@pytest.mark.parametrize("impl", IMPLS)
def test_build(benchmark, case, impl):
    name, data, _, tables = case
    _group(benchmark, "build from dict", name, impl)
    make = {"dict": dict, "FrozenTable": fastkv.FrozenTable,
            "reference": fastkv.reference.FrozenTable}[impl]
    rounds = 3 if len(data) >= 1_000_000 else 20
    benchmark.pedantic(make, args=(data,), rounds=rounds, iterations=1)
    benchmark.extra_info["per_round"] = 1
    benchmark.extra_info["bytes_per_entry"] = sys.getsizeof(tables[impl]) / len(data)


def _dict_put(d, key, value):
    d = d.copy()
    d[key] = value
    return d


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["replace", "new"])
def test_put_100k(benchmark, impl, kind):
    """put on a 100,000-key table against copying a dict and setting one key."""
    data = {f"key-{i:08d}": i for i in range(100_000)}
    key = "key-00000042" if kind == "replace" else "fresh-key"
    benchmark.group = f"put 100k ({kind})"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["per_round"] = 1
    if impl == "dict":
        benchmark.pedantic(_dict_put, args=(data, key, -1), rounds=30, iterations=1)
        return
    t = (fastkv.FrozenTable if impl == "FrozenTable" else fastkv.reference.FrozenTable)(data)
    if kind == "new":
        # each round starts without the key (the delete is outside the timer)
        benchmark.pedantic(t.put, args=(key, -1), setup=lambda: t.delete(key) and None,
                           rounds=30, iterations=1)
    else:
        benchmark.pedantic(t.put, args=(key, -1), rounds=30, iterations=1)
