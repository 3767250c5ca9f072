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

Rounds are interleaved (one round of each figure per pass, order rotated);
the best round is kept. Everything is built before the clock starts, and the
collector is off during a round (on the free-threaded build a collection
stops every thread).
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
SCALING_READS = 200_000        # per thread per round (--full; --quick reads a quarter)
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
           keys: List[List[str]]) -> Dict[str, float]:
    """One round: n threads, thread i reads keys[i] (``t[k]``) from the
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
        ks = keys[i] if t is not None else ()
        start.wait()
        began[i] = time.perf_counter()
        c0 = time.thread_time()
        try:
            for k in ks:
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


def run_scaling(size: int = SCALING_SIZE, reads: int = SCALING_READS, rounds: int = 5,
                threads: Sequence[int] = SCALING_THREADS,
                stores: Sequence[str] = SCALING_STORES,
                progress: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Measure; returns ``{"interpreter", "size", "reads", "rounds", "rows"}``,
    one row per (store, threads): ``ops_per_sec`` (aggregate, best round),
    ``wall_seconds``, ``cpu_seconds`` and ``cpus`` (CPU over wall: the CPUs
    the threads really got) of that round, and ``ratio`` to 1 thread."""
    keys_all = [f"key:{i:07d}" for i in range(size)]
    data = {k: i for i, k in enumerate(keys_all)}
    per_thread = []
    for tid in range(max(threads)):
        ks = [(k + ".")[:-1] for k in keys_all]     # equal, not identical
        random.Random(tid).shuffle(ks)
        reps = -(-reads // len(ks))
        per_thread.append((ks * reps)[:reads])
    built = {}
    try:
        for name in stores:
            built[name] = _build(name, data)
        figures = [(name, n) for name in stores for n in threads]
        best: Dict[tuple, Dict[str, float]] = {}
        gc.collect()    # no collection (a stop-the-world pause there) inside a round
        for rnd in range(rounds):
            if progress:
                progress(f"thread scaling: round {rnd + 1}/{rounds}")
            shift = rnd % len(figures)
            for name, n in figures[shift:] + figures[:shift]:
                shared, factory, _ = built[name]
                gc.disable()
                try:
                    r = _round(shared, factory, n, per_thread[:n])
                finally:
                    gc.enable()
                if (name, n) not in best or r["wall"] < best[(name, n)]["wall"]:
                    best[(name, n)] = r
    finally:
        for _, _, close in built.values():
            close()
    rows = []
    for name in stores:
        base = None
        for n in threads:
            r = best[(name, n)]
            ops = n * reads / r["wall"] if r["wall"] > 0 else float("inf")
            if n == 1:
                base = ops
            rows.append({"store": name, "threads": n, "ops_per_sec": ops,
                         "wall_seconds": r["wall"], "cpu_seconds": r["cpu"],
                         "cpus": r["cpu"] / r["wall"] if r["wall"] > 0 else 0.0,
                         "ratio": ops / base if base else None})
    return {"interpreter": interpreter_info(), "size": size, "reads": reads, "rounds": rounds,
            "rows": rows}


def format_scaling(result: Dict[str, Any]) -> str:
    """The table ``python -m fastkv bench`` prints."""
    i = result["interpreter"]
    lines = [
        f"thread scaling: {result['size']:,} str keys, {result['reads']:,} reads per thread, "
        f"best of {result['rounds']} rounds",
        f"interpreter: Python {i['python']}, "
        f"{'free-threaded build' if i['free_threaded_build'] else 'GIL build'}, "
        f"GIL {'on' if i['gil_enabled'] else 'off'}; this process may run on "
        f"{i['affinity_cpus'] if i['affinity_cpus'] is not None else '?'} of "
        f"{i['cpu_count']} CPUs (sched_getaffinity)",
        f"{'store':<22}{'threads':>8}{'reads/s':>14}{'x 1 thread':>12}{'CPUs got':>10}"
        f"{'cpu s':>9}{'wall s':>9}",
    ]
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        lines.append(f"{r['store']:<22}{r['threads']:>8}{r['ops_per_sec']:>14,.0f}{ratio:>12}"
                     f"{r['cpus']:>10.2f}{r['cpu_seconds']:>9.3f}{r['wall_seconds']:>9.3f}")
    lines.append("CPUs got = the reader threads' CPU time / wall time: below the thread count, "
                 "the threads shared CPUs and the ratio measures time-slicing, not scaling.")
    return "\n".join(lines)
