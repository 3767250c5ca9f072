"""Instructions (and simulated cache misses) per lookup, under callgrind.

Timings are noise on a shared machine; callgrind's counts are not. This
script runs one measured loop per (store, operation) in a fresh
``valgrind --tool=callgrind`` process and prints instructions per operation,
and the ratio to a plain ``dict`` measured the same way::

    python benchmarks/callgrind_ops.py --size 1000000 --ops getitem,get,miss
    python benchmarks/callgrind_ops.py --size 100000 --keys str --cache-sim

The loop is ``for k in probe: t[k]`` (``getitem``), ``t.get(k)`` (``get``,
pre-bound), ``t.get(k)`` of absent keys (``miss``), ``k in t``
(``contains``); ``build`` is one ``type(t)(data)`` from the dict and
``pickle`` one ``pickle.dumps(t, 5)``, ``unpickle`` one ``pickle.loads`` of
it (all three per key, not per probe); ``setitem`` is ``t[k] = v`` over
stored keys (a replace), ``insert`` ``t[k] = v`` of distinct keys into an
empty table of the store's type (growth included), both with a ``sync()``
inside the window for the OwnerTable (its casts are applied by the owner
thread, whose instructions callgrind counts too) and not measured for
FrozenTable (a write copies the table); ``none`` is
the bare loop, subtracted in the ``net`` column.
Probe keys are equal copies of the stored keys (not the same objects), in
random (``--order shuffled``, default) or insertion (``sequential``) order.
Int keys are ``i * 7919`` (as benchmarks/test_frozen.py); str keys
``"key-%08d"``. The measured window is delimited by two ``os.getppid()``
calls (``--dump-before=os_getppid``): setup and teardown are not counted.
With ``--cache-sim`` the counts include simulated D1 and last-level misses
(fixed cache geometry: 32 KiB D1, 32 MiB LL, whatever the host has), the cost
that dominates at 1M+ keys. Needs valgrind; run with the interpreter that has
fastkv installed (or PYTHONPATH=src after an in-place build).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

STORES = ("dict", "FrozenTable", "LockedTable", "OwnerTable", "none")
OPS = ("getitem", "get", "miss", "contains", "build", "pickle", "unpickle", "setitem", "insert")
WRITES = ("setitem", "insert")


def _child(store, op, size, keys, order, probes):
    import random

    rng = random.Random(size)
    if keys == "int":
        stored = [i * 7919 for i in range(size)]
        copy = int
        absent = [i * 7919 + 1 for i in range(size)]
    else:
        stored = [f"key-{i:08d}" for i in range(size)]
        copy = "".join  # equal, not identical
        absent = [f"kez-{i:08d}" for i in range(size)]
    values = [object() for _ in range(1024)]
    data = {k: values[i % 1024] for i, k in enumerate(stored)}
    src = absent if op == "miss" else stored
    if op == "insert":
        picks = rng.sample(src, probes) if order == "shuffled" else src[:probes]
    elif order == "shuffled":
        picks = [src[rng.randrange(size)] for _ in range(probes)]
    else:
        picks = [src[i % size] for i in range(probes)]
    if keys == "int":
        probe = [int(str(k)) for k in picks]
    else:
        probe = [copy(list(k)) for k in picks]
        for k in probe:
            hash(k)
    import fastkv

    if store == "dict" or store == "none":
        t = data
    elif store == "OwnerTable":
        t = fastkv.OwnerTable(data, access="protected")
    else:
        t = getattr(fastkv, store)(data)
    get = t.get
    if op == "build":
        cls = dict if store in ("dict", "none") else type(t)
        t2 = None
        os.getppid()
        if store != "none":
            t2 = cls(data)
        os.getppid()
        del t2
    elif op == "pickle":
        import pickle

        os.getppid()
        if store != "none":
            pickle.dumps(t, 5)
        os.getppid()
    elif op == "unpickle":
        import pickle

        blob = pickle.dumps(t, 5)
        t2 = None
        os.getppid()
        if store != "none":
            t2 = pickle.loads(blob)
            if store == "OwnerTable":
                t2.sync()
        os.getppid()
        if store == "OwnerTable":
            t2.close()
        del t2
    elif store == "none":
        os.getppid()
        for k in probe:
            pass
        os.getppid()
    elif op in WRITES:
        v = values[0]
        if op == "insert":
            if store == "OwnerTable":
                t.close()
            t = ({} if store == "dict" else
                 fastkv.OwnerTable(access="protected") if store == "OwnerTable" else
                 getattr(fastkv, store)())
        os.getppid()
        for k in probe:
            t[k] = v
        if store == "OwnerTable":
            t.sync()
        os.getppid()
    elif op == "getitem":
        os.getppid()
        for k in probe:
            t[k]
        os.getppid()
    elif op in ("get", "miss"):
        os.getppid()
        for k in probe:
            get(k)
        os.getppid()
    else:
        os.getppid()
        for k in probe:
            k in t
        os.getppid()
    if store == "OwnerTable":
        t.close()


def _events(path):
    names = None
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                names = line.split()[1:]
            elif line.startswith("summary:") or line.startswith("totals:"):
                vals = [int(x) for x in line.split()[1:]]
                return dict(zip(names, vals))
    raise RuntimeError(f"no totals in {path}")


def measure(store, op, size, keys, order, probes, cache_sim, python=sys.executable):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--dump-before=os_getppid", "--dump-instr=no"]
        if cache_sim:
            cmd += ["--cache-sim=yes", "--D1=32768,8,64", "--I1=32768,8,64",
                    "--LL=33554432,16,64"]
        cmd += [python, __file__, "--child", store, op, str(size), keys, order, str(probes)]
        env = dict(os.environ, PYTHONHASHSEED="0")
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        # dump 1: up to the first getpid; dump 2: the measured loop
        return _events(dumps[1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--probes", type=int, default=200_000)
    p.add_argument("--keys", choices=("int", "str"), default="int")
    p.add_argument("--order", choices=("shuffled", "sequential"), default="shuffled")
    p.add_argument("--ops", default="getitem,get,miss")
    p.add_argument("--stores", default="dict,FrozenTable,LockedTable,OwnerTable")
    p.add_argument("--cache-sim", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        store, op, size, keys, order, probes = args.child
        _child(store, op, int(size), keys, order, int(probes))
        return 0
    n = args.probes
    base = measure("none", "get", args.size, args.keys, args.order, n, args.cache_sim)
    print(f"{args.size:,} {args.keys} keys, {args.order}, {n:,} probes; bare loop "
          f"{base['Ir'] / n:.1f} Ir/op")
    cols = ["Ir"] + (["D1mr", "DLmr"] if args.cache_sim else [])
    print(f"{'op':9} {'store':12} " + " ".join(f"{c + '/op':>9}" for c in cols)
          + f" {'net Ir':>8} {'x dict':>7}" + (f" {'DLmr x':>7}" if args.cache_sim else ""))
    for op in args.ops.split(","):
        ref = None
        for store in args.stores.split(","):
            if op in WRITES and store == "FrozenTable":
                continue
            ev = measure(store, op, args.size, args.keys, args.order, n, args.cache_sim)
            bulk = op in ("build", "pickle", "unpickle")
            per = args.size if bulk else n
            if bulk:
                ev = {c: v * n / per for c, v in ev.items()}
            net = (ev["Ir"] - (0 if bulk else base["Ir"])) / n
            if ref is None:
                ref = ev
                ref_net = net
            line = f"{op:9} {store:12} " + " ".join(f"{ev[c] / n:9.2f}" for c in cols)
            line += f" {net:8.1f} {net / ref_net:7.2f}"
            if args.cache_sim:
                line += f" {ev['DLmr'] / max(ref['DLmr'], 1):7.2f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
