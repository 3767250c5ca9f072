"""The scale part of ``python -m fastkv bench`` (issue 15).

Run by ``--full`` (1,000,000 and 10,000,000 keys) or ``--scale`` (any mode;
``--scale-sizes`` picks the sizes). One process, the same timing rules as the
rest of the bench: everything built before the clock starts, figures timed in
interleaved rounds (one run of each per round, order rotated), best run kept,
loop overhead included for everyone. Stores: ``dict``, ``FrozenTable``,
``LockedTable``, ``OwnerTable`` read directly (``access="protected"``) and
``cachebox.Cache`` when installed.

- ``t[k] int shuffled`` / ``t[k] int sequential``: subscription with int keys
  (``i * 7919``), equal copies of stored keys, in random or insertion order;
- ``get miss int``: ``get`` of absent int keys;
- ``t[k] str shuffled``: str keys (``"key-%08d"``), 1,000,000 keys only;
- ``build``: the table from the dict, against ``dict(d)``; ``pickle``:
  ``pickle.dumps(t, 5)`` against the dict's (best of 3, 1 at 10M);
- ``sustained threads``: 4 threads read a 1,000-key store without pause for
  0.25 s each round (many GIL switch intervals), aggregate ops/s. A dict
  behind a ``threading.Lock`` convoys there: a thread loses the GIL while it
  holds the lock, the others queue on the lock, and each hand-off costs an
  OS wake-up.
"""

from __future__ import annotations

import gc
import pickle
import random
import threading
import time
from typing import Any, Dict, List, Optional

from fastkv.bench import _fmt_rate

SCALE_SIZES = (1_000_000, 10_000_000)
PROBES = 100_000  # probe keys per list (runs walk it cyclically)
SUSTAIN_SECONDS = 0.25
SUSTAIN_THREADS = 4
SUSTAIN_KEYS = 1_000


def _stores(data):
    import fastkv

    out = {"dict": data, "FrozenTable": fastkv.FrozenTable(data),
           "LockedTable": fastkv.LockedTable(data),
           "OwnerTable protected": fastkv.OwnerTable(data, access="protected")}
    try:
        import cachebox
    except ImportError:
        pass
    else:
        cb = cachebox.Cache(0)
        cb.update(data)
        out["cachebox.Cache"] = cb
    return out


def _close(stores):
    for s in stores.values():
        close = getattr(s, "close", None)
        if close is not None and not isinstance(s, dict):
            try:
                close()
            except Exception:
                pass


class _Cycle:
    """A probe list walked on from where the last run stopped."""

    def __init__(self, keys):
        self.keys = keys
        self.pos = 0

    def take(self, n):
        out = []
        while n > 0:
            chunk = self.keys[self.pos:self.pos + n]
            out += chunk
            n -= len(chunk)
            self.pos = (self.pos + len(chunk)) % len(self.keys)
        return out


def _getitem_run(t, cyc):
    def run(n):
        keys = cyc.take(n)
        t0 = time.perf_counter()
        for k in keys:
            t[k]
        return time.perf_counter() - t0
    return run


def _get_run(t, cyc):
    get = t.get

    def run(n):
        keys = cyc.take(n)
        t0 = time.perf_counter()
        for k in keys:
            get(k)
        return time.perf_counter() - t0
    return run


def _measure(figures, repeat, min_time, progress=None):
    """figures: {key: run(n) -> seconds}. Calibrate n per figure, then time
    ``repeat`` rounds, interleaved; returns {key: (n, best_seconds)}."""
    ns = {}
    for key, run in figures.items():
        n = 100
        while True:
            s = run(n)
            if s >= min_time / 10 or n >= 10_000_000:
                break
            n *= 10
        ns[key] = max(1, int(n * min_time / max(s, 1e-9)))
    best = {key: float("inf") for key in figures}
    keys = list(figures)
    for rnd in range(repeat):
        k = rnd % len(keys)
        for key in keys[k:] + keys[:k]:
            best[key] = min(best[key], figures[key](ns[key]))
        if progress:
            progress(f"round {rnd + 1}/{repeat}")
    return {key: (ns[key], best[key]) for key in figures}


def _int_case(size, rng):
    keys = [i * 7919 for i in range(size)]
    shuffled = [int(str(keys[rng.randrange(size)])) for _ in range(PROBES)]
    start = rng.randrange(max(1, size - PROBES))
    sequential = [int(str(k)) for k in keys[start:start + PROBES]]
    absent = [rng.randrange(size) * 7919 + 1 for _ in range(PROBES)]
    return keys, {"shuffled": shuffled, "sequential": sequential, "miss": absent}


def _str_case(size, rng):
    keys = [f"key-{i:08d}" for i in range(size)]
    shuffled = ["".join(list(keys[rng.randrange(size)])) for _ in range(PROBES)]
    for k in shuffled:
        hash(k)
    return keys, {"shuffled": shuffled}


def _best_of(fn, rounds):
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        x = fn()
        best = min(best, time.perf_counter() - t0)
        del x
    return best


def _sustained(repeat, progress=None):
    import fastkv

    keys = [f"key:{i}" for i in range(SUSTAIN_KEYS)]
    data = {k: i for i, k in enumerate(keys)}
    lock = threading.Lock()

    def locked_get(k, _d=data, _lock=lock):
        with _lock:
            return _d.get(k)

    stores = {"dict": data.get, "dict+Lock": locked_get,
              "FrozenTable": fastkv.FrozenTable(data).get,
              "LockedTable": fastkv.LockedTable(data).get}
    probe = ["".join(list(k)) for k in keys]
    rng = random.Random(7)
    rng.shuffle(probe)

    def run(read):
        stop = threading.Event()
        counts = [0] * SUSTAIN_THREADS
        start = threading.Barrier(SUSTAIN_THREADS + 1)

        def worker(i):
            n = 0
            start.wait()
            while not stop.is_set():
                for k in probe:
                    read(k)
                n += len(probe)
            counts[i] = n

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(SUSTAIN_THREADS)]
        for t in ts:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        time.sleep(SUSTAIN_SECONDS)
        stop.set()
        for t in ts:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)

    best = {k: 0.0 for k in stores}
    names = list(stores)
    for rnd in range(repeat):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            best[name] = max(best[name], run(stores[name]))
        if progress:
            progress(f"sustained threads: round {rnd + 1}/{repeat}")
    return [{"strategy": name, "ops_per_sec": ops, "vs_dict": best["dict"] / ops}
            for name, ops in best.items()]


def run_scale(sizes=SCALE_SIZES, repeat=20, min_time=0.01, progress=None) -> Dict[str, Any]:
    """Measure; returns the report's ``scale`` section."""
    say = progress or (lambda text: None)
    rows: List[Dict[str, Any]] = []
    builds: List[Dict[str, Any]] = []
    for size in sizes:
        rng = random.Random(size)
        cases = [("int",) + _int_case(size, rng)]
        if size <= 1_000_000:
            cases.append(("str",) + _str_case(size, rng))
        for kind, keys, probes in cases:
            say(f"scale {size:,} {kind} keys: building")
            values = [object() for _ in range(1024)]
            data = {k: values[i % 1024] for i, k in enumerate(keys)}
            del keys
            stores = _stores(data)
            try:
                figures = {}
                for name, t in stores.items():
                    for order, probe in probes.items():
                        if order == "miss":
                            figures[(f"get miss {kind}", name)] = _get_run(t, _Cycle(probe))
                        else:
                            figures[(f"t[k] {kind} {order}", name)] = _getitem_run(t, _Cycle(probe))
                gc.collect()
                res = _measure(figures, repeat, min_time,
                               lambda text: say(f"scale {size:,} {kind} keys: {text}"))
                for (op, name), (n, sec) in res.items():
                    base = res[(op, "dict")]
                    rows.append({"op": op, "size": size, "strategy": name, "ops": n,
                                 "best_seconds": sec, "ops_per_sec": n / sec,
                                 "vs_dict": sec / n / (base[1] / base[0])})
                rounds = 3 if size <= 1_000_000 else 1
                say(f"scale {size:,} {kind} keys: builds and pickling")
                import fastkv

                b = {"dict(d)": _best_of(lambda: dict(data), rounds),
                     "FrozenTable(d)": _best_of(lambda: fastkv.FrozenTable(data), rounds),
                     "LockedTable(d)": _best_of(lambda: fastkv.LockedTable(data), rounds)}
                for name in ("dict", "FrozenTable", "LockedTable"):
                    b[f"pickle {name}"] = _best_of(lambda: pickle.dumps(stores[name], 5), rounds)
                for name, sec in b.items():
                    ref = b["pickle dict"] if name.startswith("pickle") else b["dict(d)"]
                    builds.append({"op": name, "size": size, "keys": kind, "seconds": sec,
                                   "vs_dict": sec / ref})
            finally:
                _close(stores)
                del stores, data
                gc.collect()
    say("sustained threads")
    sustained = _sustained(max(3, repeat // 4), progress=say)
    return {"sizes": list(sizes), "probes": PROBES, "repeat": repeat, "min_time": min_time,
            "rows": rows, "builds": builds,
            "sustained": {"threads": SUSTAIN_THREADS, "keys": SUSTAIN_KEYS,
                          "seconds": SUSTAIN_SECONDS, "rows": sustained}}


def _rate(x):
    return _fmt_rate(x) + "/s"


def format_scale_markdown(scale: Optional[Dict[str, Any]]) -> str:
    """The scale section as Markdown tables (ratios to dict, same run)."""
    if not scale:
        return ""
    out = ["**At scale** (ratio to `dict` in the same run; below 1.00x is faster than dict)", ""]
    sizes = scale["sizes"]
    ops = []
    for r in scale["rows"]:
        if r["op"] not in ops:
            ops.append(r["op"])
    names = []
    for r in scale["rows"]:
        if r["strategy"] not in names:
            names.append(r["strategy"])
    cols = [(op, size) for op in ops for size in sizes
            if any(r["op"] == op and r["size"] == size for r in scale["rows"])]
    out.append("| strategy | " + " | ".join(f"{op}, {size:,}" for op, size in cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    idx = {(r["op"], r["size"], r["strategy"]): r for r in scale["rows"]}
    for name in names:
        cells = []
        for op, size in cols:
            r = idx.get((op, size, name))
            cells.append(f"{_rate(r['ops_per_sec'])} ({r['vs_dict']:.2f}x)" if r else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += ["", "| build / pickle | keys | " + " | ".join(f"{s:,}" for s in sizes) + " |",
            "|---|---|" + "---:|" * len(sizes)]
    bidx = {(b["op"], b["keys"], b["size"]): b for b in scale["builds"]}
    seen = []
    for b in scale["builds"]:
        if (b["op"], b["keys"]) not in seen:
            seen.append((b["op"], b["keys"]))
    for op, kind in seen:
        cells = []
        for size in sizes:
            b = bidx.get((op, kind, size))
            ms = b["seconds"] * 1e3 if b else 0
            text = f"{ms:,.0f} ms" if ms >= 100 else f"{ms:.3g} ms"
            cells.append(f"{text} ({b['vs_dict']:.2f}x)" if b else "")
        out.append(f"| {op} | {kind} | " + " | ".join(cells) + " |")
    su = scale["sustained"]
    out += ["", f"**Sustained reads, {su['threads']} threads** ({su['keys']:,} keys, "
            f"{su['seconds']:g} s without pause per round, aggregate)", "",
            "| strategy | ops/s | x dict |", "|---|---:|---:|"]
    for r in su["rows"]:
        out.append(f"| {r['strategy']} | {_rate(r['ops_per_sec'])} | {r['vs_dict']:.2f}x |")
    return "\n".join(out)
