"""Instructions per cold SharedTable read (load-independent), against a dict.

The table of ``--size`` 12-field records (fastkv.bench_procs.make_record) is
built natively by this script; each case then runs in a fresh
``valgrind --tool=callgrind`` process that opens it by name and reads
``--probes`` random present keys (equal copies of the stored ones)::

    python benchmarks/shared_cold_callgrind.py --size 1000000 --probes 2000

Cases: ``none`` (the bare loop, subtracted in the ``net`` column),
``shared`` (``t[k]`` with the value cache off, ``cache_size=0``: every read
encodes, hashes, probes the mapping and decodes the record), ``dict`` (``d[k]``
on a dict of the same records: the floor) and ``pickle`` (``pickle.loads`` of
each record's pickle: what decoding the record costs in the stdlib). The
measured window is delimited by two ``os.getppid()`` calls
(``--dump-before=os_getppid``). ``--cache-sim`` adds simulated D1 and
last-level misses (32 KiB D1, 32 MiB LL). Run with the interpreter that has
fastkv (or PYTHONPATH=src after an in-place build).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile

from callgrind_ops import _events  # (run as a script: benchmarks/ is on sys.path)

CASES = ("none", "shared", "dict", "pickle")


def _child(case, name, size, probes):
    import pickle
    import random

    import fastkv
    from fastkv.bench_procs import make_record

    rng = random.Random(size)
    picks = [rng.randrange(size) for _ in range(probes)]
    probe = ["".join(list(f"key:{i}")) for i in picks]
    for k in probe:
        hash(k)
    t = fastkv.SharedTable.open(name, cache_size=0)
    d = {f"key:{i}": make_record(i) for i in picks}
    blobs = [pickle.dumps(make_record(i), pickle.HIGHEST_PROTOCOL) for i in picks]
    loads = pickle.loads
    t[probe[0]]   # first-read setup (the short-string cache) out of the window
    os.getppid()
    if case == "shared":
        for k in probe:
            t[k]
    elif case == "dict":
        for k in probe:
            d[k]
    elif case == "pickle":
        for b in blobs:
            loads(b)
    else:
        for k in probe:
            pass
    os.getppid()
    t.close()


def measure(case, name, size, probes, cache_sim, python=sys.executable):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
               "--dump-before=os_getppid", "--dump-instr=no"]
        if cache_sim:
            cmd += ["--cache-sim=yes", "--D1=32768,8,64", "--I1=32768,8,64", "--LL=33554432,16,64"]
        cmd += [python, __file__, "--child", case, name, str(size), str(probes)]
        subprocess.run(cmd, check=True, env=dict(os.environ, PYTHONHASHSEED="0"),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dumps = sorted(glob.glob(out + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
        return _events(dumps[1])   # dump 1: up to the first getppid; dump 2: the loop


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--probes", type=int, default=2_000)
    p.add_argument("--cases", default="shared,dict,pickle")
    p.add_argument("--cache-sim", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        case, name, size, probes = args.child
        _child(case, name, int(size), int(probes))
        return 0
    import fastkv
    from fastkv.bench_procs import make_data

    n = args.probes
    with fastkv.SharedTable.create(f"cg-cold-{os.getpid()}", make_data(args.size)) as t:
        name = t.path
        base = measure("none", name, args.size, n, args.cache_sim)
        print(f"{args.size:,} records, {n:,} random present keys; bare loop {base['Ir'] / n:.1f} Ir/op")
        cols = ["Ir"] + (["D1mr", "DLmr"] if args.cache_sim else [])
        print(f"{'case':8} " + " ".join(f"{c + '/op':>9}" for c in cols) + f" {'net Ir':>8}")
        for case in args.cases.split(","):
            ev = measure(case, name, args.size, n, args.cache_sim)
            net = (ev["Ir"] - base["Ir"]) / n
            print(f"{case:8} " + " ".join(f"{ev[c] / n:9.1f}" for c in cols) + f" {net:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
