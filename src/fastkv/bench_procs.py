"""The ``processes`` scenario of ``python -m fastkv bench``: N worker
processes (``--procs``, default 4), started with fork and with spawn, read one
table at once.

Stores: ``SharedTable`` (the parent creates it, each worker opens it by name:
one copy in shared memory), a per-worker ``FrozenTable`` (each worker builds
its own copy, as a worker that loads its cache itself does), a
``multiprocessing.Manager().dict()`` (one server process; every read is a
round trip), and, when installed, ``lmdb`` (values pickled, bytes keys),
``UltraDict`` and ``shared-memory-dict``.

Each worker opens (or builds) its store, reads every key once (what a warm
worker holds), notes its memory from ``/proc/self/smaps_rollup``, waits for
the others at a barrier, then reads random present keys (equal copies of the
stored ones) for a fixed time. Reported per store and start method: the
aggregate reads/s of all workers, and per worker the USS (private memory:
what each worker adds) and PSS (its share of shared pages) added by the store
(measured against the worker's own figure before opening it), and the added
USS as a fraction of one private FrozenTable copy's.

Values are 12-field records of short strings, a distinct record per key (a
private copy costs what a worker's own decoded data costs). The Manager and
the peers hold at most 100,000 keys (their reads do not depend on the size;
their build would dominate the run).

Then, in the parent, the single-process figures of SharedTable's targets, each
against its baseline in the same run: a hot read ``t[k]`` against a dict's, a
cold read (value cache off) against a Manager dict read, ``SharedTable.open``
against ``pickle.loads`` of an equal dict, and a publish of one key against
``FrozenTable.put`` on the same data.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

PEER_CAP = 100_000
SEED = 1234


def make_record(i: int) -> Dict[str, str]:
    """A distinct 12-field record of short strings for key i."""
    return {
        "id": str(i), "name": f"user {i}", "email": f"user{i}@example.com", "city": "Lisbon",
        "country": "PT", "plan": "free" if i % 3 else "pro", "status": "active",
        "created": "2021-01-01", "updated": "2023-01-01", "locale": "en",
        "team": f"team-{i % 100}", "role": "admin" if i % 10 == 0 else "member",
    }


def make_data(n: int) -> Dict[str, Dict[str, str]]:
    return {f"key:{i}": make_record(i) for i in range(n)}


def memory() -> Dict[str, int]:
    """This process's USS, PSS and RSS in bytes (/proc/self/smaps_rollup)."""
    fields: Dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return {"uss": 0, "pss": 0, "rss": 0}
    return {"uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "pss": fields.get("Pss", 0), "rss": fields.get("Rss", 0)}


# -- stores: (parent side) setup -> handle; (worker side) open(handle) -> (get, keys, close) --


def _available(store: str) -> Optional[str]:
    mods = {"lmdb": "lmdb", "ultradict": "UltraDict", "shm-dict": "shared_memory_dict"}
    if store in mods:
        try:
            __import__(mods[store])
        except ImportError:
            return f"{mods[store]} not installed"
    return None


STORES = ("shared", "frozen-copy", "manager", "lmdb", "ultradict", "shm-dict")
LABELS = {"shared": "SharedTable", "frozen-copy": "FrozenTable per worker", "manager": "Manager().dict()",
          "lmdb": "lmdb (pickled values)", "ultradict": "UltraDict", "shm-dict": "shared-memory-dict"}


def _setup(store: str, size: int, tag: str, cleanup: List[Any]):
    import fastkv
    n = size if store in ("shared", "frozen-copy") else min(size, PEER_CAP)
    if store == "shared":
        t = fastkv.SharedTable.create(f"bench-{os.getpid()}-{tag}", make_data(n))
        cleanup.append(t.close)
        return (t.path, n)
    if store == "frozen-copy":
        return (None, n)
    if store == "manager":
        mgr = multiprocessing.get_context("spawn").Manager()
        cleanup.append(mgr.shutdown)
        d = mgr.dict()
        data = make_data(n)
        keys = list(data)
        for i in range(0, n, 10_000):
            d.update({k: data[k] for k in keys[i:i + 10_000]})
        return (d, n)
    if store == "lmdb":
        import lmdb
        path = tempfile.mkdtemp(prefix=f"fastkv-bench-lmdb-{os.getpid()}-", dir="/dev/shm")
        cleanup.append(lambda: shutil.rmtree(path, ignore_errors=True))
        env = lmdb.open(path, map_size=1 << 33, max_readers=256)
        with env.begin(write=True) as txn:
            for k, v in make_data(n).items():
                txn.put(k.encode(), pickle.dumps(v))
        env.close()
        return (path, n)
    if store == "ultradict":
        from UltraDict import UltraDict
        name = f"fkvbench{os.getpid()}{tag}"
        u = UltraDict(make_data(n), name=name, buffer_size=1 << 27, auto_unlink=True)
        cleanup.append(u.unlink)   # its segments: control, stream and full dump
        return (name, n)
    if store == "shm-dict":
        from shared_memory_dict import SharedMemoryDict
        n = min(n, 1_000)  # it unpickles the whole dict on every read
        name = f"fkvbench{os.getpid()}{tag}"
        data = make_data(n)
        s = SharedMemoryDict(name=name, size=len(pickle.dumps(data)) * 2 + 4096)
        s.update(data)
        block = s._memory_block   # it never unlinks its segment itself
        cleanup.append(lambda: (block.close(), block.unlink()))
        return (name, n)
    raise ValueError(store)


def _open(store: str, handle, n: int):
    """(get, close) in a worker."""
    if store == "shared":
        import fastkv
        t = fastkv.SharedTable.open(handle)
        return t.get, t.close
    if store == "frozen-copy":
        import fastkv
        t = fastkv.FrozenTable(make_data(n))
        return t.get, (lambda: None)
    if store == "manager":
        return handle.get, (lambda: None)
    if store == "lmdb":
        import lmdb
        env = lmdb.open(handle, readonly=True, lock=True, max_readers=256)
        txn = env.begin(buffers=False)

        def get(k, _get=txn.get, _loads=pickle.loads):
            raw = _get(k.encode())
            return None if raw is None else _loads(raw)

        return get, (lambda: (txn.abort(), env.close()))
    if store == "ultradict":
        from UltraDict import UltraDict
        u = UltraDict(name=handle)
        return u.get, (lambda: None)
    if store == "shm-dict":
        from shared_memory_dict import SharedMemoryDict
        with _untracked_attach():
            s = SharedMemoryDict(name=handle, size=0)
        return s.get, (lambda: None)
    raise ValueError(store)


class _untracked_attach:
    """A worker that attaches to a SharedMemory registers it with the
    resource tracker (before Python 3.13), which would unlink it, and warn,
    when the worker exits: the parent owns the segment and unlinks it. The
    attach therefore skips the registration. (Unregistering it afterwards
    raced: the tracker keeps one entry per name for every process, so two
    workers' register/unregister pairs interleaved into a second unregister,
    and the tracker printed a KeyError traceback.)"""

    def __enter__(self):
        self.saved = None
        if sys.version_info < (3, 13):
            from multiprocessing import resource_tracker
            self.saved = resource_tracker.register

            def register(name, rtype, _register=self.saved):
                if rtype != "shared_memory":
                    _register(name, rtype)

            resource_tracker.register = register
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            from multiprocessing import resource_tracker
            resource_tracker.register = self.saved


def _worker(store, handle, n, duration, touch_all, barrier, q, index):
    try:
        gc.collect()
        before = memory()
        get, close = _open(store, handle, n)
        gc.collect()
        keys = [f"key:{i}" for i in range(n)]
        if touch_all:
            for k in keys:
                get(k)
        else:
            for k in keys[:2000]:
                get(k)
        after = memory()
        rnd = random.Random(SEED + index)
        sample = ["".join(list(f"key:{rnd.randrange(n)}")) for _ in range(4096)]
        barrier.wait(timeout=600)
        count = 0
        start = time.perf_counter()
        deadline = start + duration
        while True:
            for k in sample:
                get(k)
            count += len(sample)
            now = time.perf_counter()
            if now >= deadline:
                break
        q.put({"index": index, "reads": count, "seconds": now - start, "before": before, "after": after})
        close()
    except BaseException as e:  # reported, never hangs the parent
        q.put({"index": index, "error": f"{type(e).__name__}: {e}"})


def _run_group(store, method, handle, n, procs, duration, timeout):
    ctx = multiprocessing.get_context(method)
    barrier = ctx.Barrier(procs)
    q = ctx.Queue()
    touch_all = store in ("shared", "frozen-copy")
    ps = [ctx.Process(target=_worker, args=(store, handle, n, duration, touch_all, barrier, q, i))
          for i in range(procs)]
    for p in ps:
        p.start()
    results = []
    try:
        for _ in ps:
            results.append(q.get(timeout=timeout))
    except Exception as e:
        results.append({"error": f"timed out waiting for the workers ({type(e).__name__})"})
    for p in ps:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(5)
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"store": store, "method": method, "status": "error", "error": errors[0]}
    reads = sum(r["reads"] for r in results)
    seconds = max(r["seconds"] for r in results)
    added_uss = [r["after"]["uss"] - r["before"]["uss"] for r in results]
    added_pss = [r["after"]["pss"] - r["before"]["pss"] for r in results]
    return {"store": store, "method": method, "status": "ok", "keys": n, "procs": procs,
            "reads_per_s": reads / seconds, "added_uss": sum(added_uss) / len(added_uss),
            "added_pss": sum(added_pss) / len(added_pss), "uss": sum(r["after"]["uss"] for r in results) / procs}


def _best(fn, repeat=5, number=1):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def targets(size: int, quick: bool) -> Dict[str, Any]:
    """SharedTable's target figures, each with its baseline, in this process."""
    import fastkv
    out: Dict[str, Any] = {"keys": size}
    data = make_data(size)
    name = f"bench-targets-{os.getpid()}"
    t = fastkv.SharedTable.create(name, data)
    try:
        keys = ["".join(list(k)) for k in random.Random(SEED).sample(list(data), min(1000, size))]
        for k in keys:
            t[k]

        def loop(m):
            def run():
                for k in keys:
                    m[k]
            return run

        rep = 7 if quick else 21
        hot_t, hot_d = float("inf"), float("inf")
        for _ in range(rep):  # interleaved rounds: load changes reach both
            hot_t = min(hot_t, _best(loop(t), 1, 20) / len(keys))
            hot_d = min(hot_d, _best(loop(data), 1, 20) / len(keys))
        out["hot_read_ns"], out["dict_read_ns"] = hot_t * 1e9, hot_d * 1e9
        cold = fastkv.SharedTable.open(name, cache_size=0)
        cold_keys = ["".join(list(k)) for k in random.Random(SEED + 1).sample(list(data), min(20_000, size))]

        def cold_run():
            for k in cold_keys:
                cold[k]

        mgr = multiprocessing.get_context("spawn").Manager()
        try:
            md = mgr.dict({k: data[k] for k in cold_keys[:2000]})
            mk = cold_keys[:2000]

            def mgr_run():
                for k in mk:
                    md[k]

            c, m = float("inf"), float("inf")
            for _ in range(3):
                c = min(c, _best(cold_run, 1) / len(cold_keys))
                m = min(m, _best(mgr_run, 1) / len(mk))
        finally:
            mgr.shutdown()
        cold.close()
        out["cold_read_us"], out["manager_read_us"] = c * 1e6, m * 1e6
        blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)

        def open_run():
            fastkv.SharedTable.open(name).close()

        out["open_ms"] = _best(open_run, 5) * 1e3
        out["unpickle_ms"] = _best(lambda: pickle.loads(blob), 1 if size >= 500_000 else 3) * 1e3
        del blob
        frozen = fastkv.FrozenTable(data)
        i = iter(range(10**9))
        put_t, put_f = float("inf"), float("inf")
        for _ in range(3 if size >= 500_000 else 5):
            put_t = min(put_t, _best(lambda: t.put("key:1", make_record(next(i))), 1))
            put_f = min(put_f, _best(lambda: frozen.put("key:1", make_record(next(i))), 1))
        out["publish_ms"], out["frozen_put_ms"] = put_t * 1e3, put_f * 1e3
        info = t.info()
        out["file_mb"] = (info["index_size"] + info["data_size"]) / 1e6
    finally:
        t.close()
    return out


def run_processes(size: int, procs: int = 4, quick: bool = True, stores=STORES,
                  methods=("fork", "spawn"), progress=None, with_targets: bool = True) -> Dict[str, Any]:
    """Each store of ``stores`` (a peer that is not installed is a "skipped"
    row) read by ``procs`` workers per start method, then SharedTable's
    target figures (unless ``with_targets`` is false)."""
    duration = 0.5 if quick else 2.0
    results = []
    for store in stores:
        why = _available(store)
        if why:
            results.append({"store": store, "status": "skipped", "reason": why})
            continue
        for method in methods:
            if progress:
                progress(f"processes: {LABELS[store]} ({method}, {procs} workers)")
            cleanup: List[Any] = []
            try:
                handle, n = _setup(store, size, method, cleanup)
                gc.collect()
                results.append(_run_group(store, method, handle, n, procs, duration,
                                          timeout=600 if not quick else 240))
            except Exception as e:
                results.append({"store": store, "method": method, "status": "error",
                                "error": f"{type(e).__name__}: {e}"})
            finally:
                for fn in reversed(cleanup):
                    try:
                        fn()
                    except Exception:
                        pass
    if not with_targets:
        return {"size": size, "procs": procs, "results": results}
    if progress:
        progress("processes: SharedTable targets")
    return {"size": size, "procs": procs, "results": results, "targets": targets(size, quick)}


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def format_processes(rep: Dict[str, Any]) -> str:
    lines = [f"processes: {rep['procs']} worker processes read one {rep['size']:,}-key table at once "
             f"(aggregate reads/s; memory each worker adds, from /proc/self/smaps_rollup)"]
    private = {r["method"]: r["added_uss"] for r in rep["results"]
               if r.get("store") == "frozen-copy" and r["status"] == "ok"}
    lines.append(f"  {'store':<24} {'start':<6} {'keys':>10} {'reads/s':>12} {'USS added':>12} "
                 f"{'PSS added':>12} {'USS vs copy':>12}")
    for r in rep["results"]:
        label = LABELS.get(r["store"], r["store"])
        if r["status"] == "skipped":
            lines.append(f"  {label:<24} skipped: {r['reason']}")
            continue
        if r["status"] == "error":
            lines.append(f"  {label:<24} {r['method']:<6} error: {r['error']}")
            continue
        base = private.get(r["method"])
        frac = f"{r['added_uss'] / base:.1%}" if base else "-"
        lines.append(f"  {label:<24} {r['method']:<6} {r['keys']:>10,} {r['reads_per_s']:>12,.0f} "
                     f"{_mb(r['added_uss']):>12} {_mb(r['added_pss']):>12} {frac:>12}")
    t = rep["targets"]
    lines.append(f"  SharedTable targets at {t['keys']:,} keys ({t['file_mb']:,.1f} MB of files), same run:")
    lines.append(f"    hot read t[k]: {t['hot_read_ns']:.1f} ns, dict {t['dict_read_ns']:.1f} ns: "
                 f"{t['hot_read_ns'] / t['dict_read_ns']:.2f}x a dict's (target <= 1.5x)")
    lines.append(f"    cold read of a 12-field record (cache off): {t['cold_read_us']:.2f} us; "
                 f"Manager().dict() read {t['manager_read_us']:.1f} us: "
                 f"{t['manager_read_us'] / t['cold_read_us']:.1f}x faster (targets <= 2 us, >= 20x)")
    lines.append(f"    open: {t['open_ms']:.3f} ms; pickle.loads of the dict {t['unpickle_ms']:,.1f} ms: "
                 f"{t['unpickle_ms'] / t['open_ms']:,.0f}x faster (target >= 100x)")
    lines.append(f"    publish one key: {t['publish_ms']:.2f} ms; FrozenTable.put {t['frozen_put_ms']:.2f} ms: "
                 f"{t['publish_ms'] / t['frozen_put_ms']:.2f}x (target <= 2x)")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m fastkv.bench_procs [size] [procs]
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    procs = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    print(format_processes(run_processes(size, procs, quick=size < 1_000_000,
                                         progress=lambda s: print(s, file=sys.stderr))))
