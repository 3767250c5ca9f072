"""Tables at scale (issue 15): 1,000,000 keys against a plain dict.

Run: ``pytest benchmarks/test_scale.py`` (``--benchmark-json=out.json`` to
keep the numbers; 10,000,000 keys only in ``python -m fastkv bench --full``).
Compare within a group: every group holds the dict baseline and the compiled
tables (``OwnerTable`` read directly, ``access="protected"``), measured in the
same run. ``cachebox.Cache`` joins the read groups when installed.

- ``t[k]``/``get`` hits: 1,000 probe keys per round, equal copies of stored
  keys (not the same objects), in random (``shuffled``) or insertion
  (``sequential``) order, int keys (``i * 7919``) or str keys;
- ``miss``: ``get`` of 1,000 absent keys;
- ``build``: the table from the 1M-entry dict, against ``dict(d)``;
- ``pickle``: ``pickle.dumps(t, 5)`` against the dict's.

For load-independent figures see ``benchmarks/callgrind_ops.py`` (callgrind
instruction counts and simulated cache misses of the same loops). CI runs this
file with ``--benchmark-disable`` (each body once, on 100,000 keys: ~10 s), so
it stays correct without costing CI its budget.
"""

import pickle
import random

import pytest

import fastkv

N = 1_000_000
PROBES = 1_000

try:
    import cachebox
except ImportError:  # the [bench] extra is optional
    cachebox = None


def _keys(kind, n):
    if kind == "int":
        return [i * 7919 for i in range(n)]
    return [f"key-{i:08d}" for i in range(n)]


def _copy(k):
    """An equal key that is not the same object (str hash cached)."""
    if isinstance(k, int):
        return int(str(k))
    c = "".join(list(k))
    hash(c)
    return c


@pytest.fixture(scope="module", params=["int", "str"])
def scale(request):
    kind = request.param
    # CI runs the suite with --benchmark-disable (each body once, nothing
    # timed): 100,000 keys there keep it fast and still exercise every path
    n = 100_000 if request.config.getoption("benchmark_disable", False) else N
    keys = _keys(kind, n)
    values = [object() for _ in range(1024)]
    data = {k: values[i % 1024] for i, k in enumerate(keys)}
    rng = random.Random(n)
    shuffled = [_copy(keys[rng.randrange(n)]) for _ in range(PROBES)]
    start = rng.randrange(n - PROBES)
    sequential = [_copy(k) for k in keys[start:start + PROBES]]
    if kind == "int":
        absent = [rng.randrange(n) * 7919 + 1 for _ in range(PROBES)]
    else:
        absent = [f"kez-{rng.randrange(n):08d}" for _ in range(PROBES)]
    tables = {
        "dict": data,
        "FrozenTable": fastkv.FrozenTable(data),
        "LockedTable": fastkv.LockedTable(data),
        "OwnerTable": fastkv.OwnerTable(data, access="protected"),
    }
    if cachebox is not None:
        cb = cachebox.Cache(0)
        cb.update(data)
        tables["cachebox"] = cb
    probes = {"shuffled": shuffled, "sequential": sequential, "miss": absent}
    yield kind, data, probes, tables, n
    tables["OwnerTable"].close()


READERS = ["dict", "FrozenTable", "LockedTable", "OwnerTable", "cachebox"]


def _table(tables, impl):
    if impl not in tables:
        pytest.skip(f"{impl} not installed")
    return tables[impl]


def _group(benchmark, op, kind, impl, per_round=PROBES):
    benchmark.group = f"{op} {kind} 1M"
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["per_round"] = per_round


@pytest.mark.parametrize("impl", READERS)
@pytest.mark.parametrize("order", ["shuffled", "sequential"])
def test_getitem(benchmark, scale, impl, order):
    kind, _, probes, tables, _ = scale
    t = _table(tables, impl)
    probe = probes[order]
    _group(benchmark, f"t[k] {order}", kind, impl)

    def run():
        for k in probe:
            t[k]

    benchmark(run)


@pytest.mark.parametrize("impl", READERS)
@pytest.mark.parametrize("probe_name", ["shuffled", "miss"])
def test_get(benchmark, scale, impl, probe_name):
    kind, _, probes, tables, _ = scale
    get = _table(tables, impl).get
    probe = probes[probe_name]
    if probe_name == "miss":  # checked once, outside the timed loop
        assert all(get(k) is None for k in probe)
    _group(benchmark, f"get {probe_name}", kind, impl)

    def run():
        for k in probe:
            get(k)

    benchmark(run)


@pytest.mark.parametrize("impl", ["dict", "FrozenTable", "LockedTable"])
def test_get_many(benchmark, scale, impl):
    kind, _, probes, tables, _ = scale
    t = tables[impl]
    probe = probes["shuffled"]
    _group(benchmark, "get_many", kind, impl)
    if impl == "dict":
        get = t.get
        benchmark(lambda: list(map(get, probe)))
    else:
        benchmark(t.get_many, probe)


@pytest.mark.parametrize("impl", ["dict", "FrozenTable", "LockedTable"])
def test_build(benchmark, scale, impl):
    kind, data, _, _, _ = scale
    make = {"dict": dict, "FrozenTable": fastkv.FrozenTable, "LockedTable": fastkv.LockedTable}[impl]
    _group(benchmark, "build from dict", kind, impl, per_round=1)
    benchmark.pedantic(make, args=(data,), rounds=3, iterations=1)


@pytest.mark.parametrize("impl", ["dict", "FrozenTable", "LockedTable"])
def test_pickle(benchmark, scale, impl):
    kind, _, _, tables, n = scale
    t = tables[impl]
    _group(benchmark, "pickle.dumps", kind, impl, per_round=1)
    out = benchmark.pedantic(pickle.dumps, args=(t, 5), rounds=3, iterations=1)
    assert len(out) > n


def test_locked_first_insert_after_build_keeps_the_arrays(scale):
    # a LockedTable built from data has dict's growth room: no rebuild on the
    # first insert (checked by size, not time)
    kind, data, _, _, _ = scale
    t = fastkv.LockedTable(data)
    size = t.info()["memory"]
    t[-7 if kind == "int" else "new"] = 1  # a key of the same kind: no layout change
    assert t.info()["memory"] == size
