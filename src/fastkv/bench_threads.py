"""The thread-scaling part of ``python -m fastkv bench`` (issue 12).

1 and 2 threads read (``t[k]``) one shared table of str keys, each thread
its own shuffled copy of the keys (equal ``str`` objects, not the stored
ones), for a fixed number of reads per thread. The figure is the aggregate reads/s of all
threads, and the ratio to 1 thread of the same store in the same run: 2
threads doing twice the work in the same wall time is 2.0x. Stores: a shared
``dict``; ``dict`` copies, one per thread, made by that thread (nothing shared: the
interpreter's ceiling); a ``dict`` behind a ``threading.Lock``; ``FrozenTable``;
``LockedTable``; ``OwnerTable(access="protected")`` read directly.

It means something only on a free-threaded build with the GIL off
(python3.13t/3.14t); ``python -m fastkv bench`` runs it there by default
(``--scaling`` forces it elsewhere, where the threads take turns: ~1.0x).
Every row reports how many CPUs its threads really got: the CPU time of the
reader threads (``time.thread_time()`` in each) over the wall time of the
round. A shared or busy machine gives less than the thread count, and then a
2-thread figure measures time-slicing, not scaling. The header names the
interpreter, whether the GIL is on, and the CPUs this process may run on
(``os.sched_getaffinity``).

Rounds are interleaved (one round of each figure per pass, order rotated).
Each figure reports its best round (the headline reads/s and ratio) and the
spread of its rounds: the median and the slowest round's reads/s, the ratio
of the medians, and the median of the CPUs the threads got. A shared machine
shows itself there (a best ratio far from the median one is a lucky round).
``--full`` makes every round last at least ``SCALING_MIN_SECONDS`` per thread:
a one-thread calibration round per store sets that store's reads per thread
(at least ``SCALING_READS``); ``--quick`` and the tests read a fixed, small
count. Everything is built before the clock starts, and the collector is off
during a round (on the free-threaded build a collection stops every thread).
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

SCALING_SIZE = 100_000
SCALING_READS = 200_000        # per thread per round, at least (--quick reads a quarter)
SCALING_MIN_SECONDS = 0.5      # --full: a round lasts at least this long per thread
SCALING_MAX_READS = 50_000_000  # ... but reads at most this many per thread
SCALING_THREADS = (1, 2)
SCALING_STORES = ("dict", "dict copies", "dict+Lock", "FrozenTable", "LockedTable",
                  "OwnerTable protected")


def interpreter_info() -> Dict[str, Any]:
    """The interpreter and the CPUs the threads may get."""
    import sysconfig

    gil = getattr(sys, "_is_gil_enabled", None)
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    return {
        "python": sys.version.split()[0],
        "version": sys.version.replace("\n", " "),
        "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "gil_enabled": True if gil is None else bool(gil()),
        "affinity_cpus": affinity,
        "cpu_count": os.cpu_count(),
    }


def runs_by_default() -> bool:
    """True on a free-threaded build running with the GIL off."""
    info = interpreter_info()
    return info["free_threaded_build"] and not info["gil_enabled"]


class _LockedDict:
    def __init__(self, data):
        self._d = dict(data)
        self._lock = threading.Lock()

    def __getitem__(self, key):
        with self._lock:
            return self._d[key]


def _build(name: str, data: Dict[str, int]):
    """(shared store or None, per-thread factory or None, close)"""
    import fastkv

    if name == "dict":
        return data, None, lambda: None
    if name == "dict copies":
        return None, lambda: dict(data), lambda: None
    if name == "dict+Lock":
        return _LockedDict(data), None, lambda: None
    if name == "FrozenTable":
        t = fastkv.FrozenTable(data)
    elif name == "LockedTable":
        t = fastkv.LockedTable(data)
    elif name == "OwnerTable protected":
        t = fastkv.OwnerTable(data, access="protected")
    else:
        raise ValueError(f"unknown store {name!r}")
    return t, None, t.close


def _round(shared: Any, factory: Optional[Callable[[], Any]], n: int,
           keys: List[List[str]], reads: int) -> Dict[str, float]:
    """One round: n threads, thread i reads ``reads`` keys (``t[k]``), going
    through keys[i] as many times as that takes, from the
    shared store, or from its own ``factory()`` made in that thread before
    the clock starts (on 3.13t a dict is several times slower to read from a
    thread other than the one that made it); wall seconds from the first
    reader's start to the last reader's end, each taken by the reader itself
    (a main thread that takes the clock after the barrier may be scheduled
    late, with the readers already running on both CPUs: a 2-thread round
    then measured 3.98 CPUs and 3.3x on 2 CPUs), and the threads' CPU seconds."""
    start = threading.Barrier(n + 1)
    cpu = [0.0] * n
    began = [0.0] * n
    ended = [0.0] * n
    errors: List[BaseException] = []

    def reader(i):
        try:
            t = factory() if factory is not None else shared
        except BaseException as exc:
            errors.append(exc)
            t = None
        ks = keys[i] if t is not None else [None]
        passes, rest = divmod(reads, len(ks)) if t is not None else (0, 0)
        tail = ks[:rest]
        start.wait()
        began[i] = time.perf_counter()
        c0 = time.thread_time()
        try:
            for _ in range(passes):
                for k in ks:
                    t[k]
            for k in tail:
                t[k]
        except BaseException as exc:  # reported, never hangs the round
            errors.append(exc)
        cpu[i] = time.thread_time() - c0
        ended[i] = time.perf_counter()

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    wall = max(ended) - min(began)
    if errors:
        raise errors[0]
    return {"wall": wall, "cpu": sum(cpu)}


def _median(xs: Sequence[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _reader_keys(keys_all: List[str], tid: int) -> List[str]:
    """Thread tid's keys: equal to the stored ones (not them), in its own
    random order."""
    ks = [(k + ".")[:-1] for k in keys_all]     # equal, not identical
    random.Random(tid).shuffle(ks)
    return ks


def run_scaling(size: int = SCALING_SIZE, reads: int = SCALING_READS, rounds: int = 5,
                threads: Sequence[int] = SCALING_THREADS,
                stores: Sequence[str] = SCALING_STORES,
                progress: Optional[Callable[[str], None]] = None,
                min_seconds: float = 0.0) -> Dict[str, Any]:
    """Measure; returns ``{"interpreter", "size", "reads", "min_seconds",
    "rounds", "rows"}``, one row per (store, threads): ``reads`` (per thread
    per round: ``reads``, or more if ``min_seconds`` asked for longer rounds),
    ``ops_per_sec`` (aggregate, best round), ``wall_seconds``,
    ``cpu_seconds`` and ``cpus`` (CPU over wall: the CPUs the threads really
    got) of that round, ``ratio`` to 1 thread (best against best); and the
    spread: ``ops_per_sec_median``, ``ops_per_sec_min`` (the slowest round),
    ``ratio_median`` (median against median), ``cpus_median``, and
    ``rounds_ops_per_sec`` (every round, in the order run).

    ``min_seconds`` > 0: before the rounds, the fastest of three 1-thread
    rounds of ``reads`` per store measures its rate, and that store then
    reads enough per thread for a 1-thread round to last ``min_seconds``
    (x2: on a busy machine a round of the measurement can run faster than
    the fastest calibration round; x1.5 gave best rounds of 0.38-0.45 s on
    3.13t at load 3; at most
    ``SCALING_MAX_READS``)."""
    keys_all = [f"key:{i:07d}" for i in range(size)]
    data = {k: i for i, k in enumerate(keys_all)}
    per_thread = [_reader_keys(keys_all, tid) for tid in range(max(threads))]
    built = {}
    try:
        for name in stores:
            built[name] = _build(name, data)
        want = {name: reads for name in stores}
        gc.collect()    # no collection (a stop-the-world pause there) inside a round
        if min_seconds > 0:
            for name in stores:
                if progress:
                    progress(f"thread scaling: calibrating {name}")
                shared, factory, _ = built[name]
                fastest = float("inf")
                for _ in range(3):
                    gc.disable()
                    try:
                        fastest = min(fastest, _round(shared, factory, 1, per_thread[:1], reads)["wall"])
                    finally:
                        gc.enable()
                if 0 < fastest < float("inf"):
                    need = int(reads * min_seconds * 2 / fastest) + 1
                    want[name] = max(reads, min(need, SCALING_MAX_READS))
        figures = [(name, n) for name in stores for n in threads]
        runs: Dict[tuple, List[Dict[str, float]]] = {f: [] for f in figures}
        for rnd in range(rounds):
            if progress:
                progress(f"thread scaling: round {rnd + 1}/{rounds}")
            shift = rnd % len(figures)
            for name, n in figures[shift:] + figures[:shift]:
                shared, factory, _ = built[name]
                gc.disable()
                try:
                    r = _round(shared, factory, n, per_thread[:n], want[name])
                finally:
                    gc.enable()
                r["ops"] = n * want[name] / r["wall"] if r["wall"] > 0 else float("inf")
                runs[(name, n)].append(r)
    finally:
        for _, _, close in built.values():
            close()
    rows = []
    for name in stores:
        base = base_median = None
        for n in threads:
            rs = runs[(name, n)]
            best = max(rs, key=lambda r: r["ops"])
            ops = [r["ops"] for r in rs]
            median = _median(ops)
            if n == 1:
                base, base_median = best["ops"], median
            rows.append({"store": name, "threads": n, "reads": want[name],
                         "ops_per_sec": best["ops"],
                         "wall_seconds": best["wall"], "cpu_seconds": best["cpu"],
                         "cpus": best["cpu"] / best["wall"] if best["wall"] > 0 else 0.0,
                         "ratio": best["ops"] / base if base else None,
                         "ops_per_sec_median": median, "ops_per_sec_min": min(ops),
                         "ratio_median": median / base_median if base_median else None,
                         "cpus_median": _median([r["cpu"] / r["wall"] if r["wall"] > 0 else 0.0
                                                 for r in rs]),
                         "rounds_ops_per_sec": ops})
    return {"interpreter": interpreter_info(), "size": size, "reads": reads,
            "min_seconds": min_seconds, "rounds": rounds, "rows": rows}


def format_scaling(result: Dict[str, Any]) -> str:
    """The table ``python -m fastkv bench`` prints."""
    i = result["interpreter"]
    rows = result["rows"]
    counts = sorted({r.get("reads", result["reads"]) for r in rows})
    if len(counts) <= 1:
        reads = f"{counts[0] if counts else result['reads']:,} reads per thread"
    else:
        reads = (f"{counts[0]:,}-{counts[-1]:,} reads per thread (rounds of at least "
                 f"{result.get('min_seconds', 0):g} s; column 'reads')")
    lines = [
        f"thread scaling: {result['size']:,} str keys, {reads}, "
        f"best of {result['rounds']} rounds",
        f"interpreter: Python {i['python']}, "
        f"{'free-threaded build' if i['free_threaded_build'] else 'GIL build'}, "
        f"GIL {'on' if i['gil_enabled'] else 'off'}; this process may run on "
        f"{i['affinity_cpus'] if i['affinity_cpus'] is not None else '?'} of "
        f"{i['cpu_count']} CPUs (sched_getaffinity)",
        f"{'store':<22}{'threads':>8}{'reads':>11}{'reads/s':>13}{'median':>13}{'min':>13}"
        f"{'x 1 thread':>12}{'median':>8}{'CPUs got':>10}{'median':>8}{'wall s':>9}",
    ]

    def ratio(x):
        return f"{x:.2f}x" if x is not None else "-"

    for r in rows:
        lines.append(
            f"{r['store']:<22}{r['threads']:>8}{r.get('reads', result['reads']):>11,}"
            f"{r['ops_per_sec']:>13,.0f}{r['ops_per_sec_median']:>13,.0f}{r['ops_per_sec_min']:>13,.0f}"
            f"{ratio(r['ratio']):>12}{ratio(r['ratio_median']):>8}"
            f"{r['cpus']:>10.2f}{r['cpus_median']:>8.2f}{r['wall_seconds']:>9.3f}")
    lines.append("reads/s, x 1 thread, CPUs got, wall s: the best round; median, min: of all rounds "
                 "(x 1 thread: median against median). CPUs got = the reader threads' CPU time / "
                 "wall time: below the thread count, the threads shared CPUs and the ratio "
                 "measures time-slicing, not scaling.")
    return "\n".join(lines)
