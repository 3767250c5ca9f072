"""Atomic read-modify-write instructions per read, under callgrind.

On a free-threaded build a read scales across threads only if it writes no
cache line that the other readers also write; the writes that do are atomic
instructions (``lock``-prefixed on x86: Py_INCREF/Py_DECREF of an object
another thread created, a CAS). Timings on a shared machine cannot show that
(the reader threads rarely run at once); callgrind's per-instruction counts
can. This script runs ``for k in keys: t[k]`` (or ``t.get(k)``) in a reader
thread that did not create the table, under ``valgrind --tool=callgrind
--dump-instr=yes``, disassembles every object that ran (objdump) and counts
the executed ``lock``-prefixed instructions and ``xchg`` with memory per
read: ``rmw`` (on a memory word) and ``fence`` (``lock or $0,(%rsp)``, the
reader's own stack: a full fence, no shared line), with where they ran::

    python benchmarks/callgrind_atomics.py --stores OwnerTable,LockedTable --ops getitem,get

``--python`` names the interpreter command (split like a shell would), e.g.
the .ci/freethread chroot's, run from the host through the chroot's loader::

    R=$(echo /var/cache/fastkv-ci/freethread/python3.13-*/root)
    python3 benchmarks/callgrind_atomics.py --env PYTHONHOME=$R/opt/py-ft \\
        --env PYTHONPATH=$(echo $R/opt/venv-*/lib/python3.13t/site-packages) --python \\
        "$R/lib64/ld-linux-x86-64.so.2 --library-path $R/lib/x86_64-linux-gnu $R/opt/py-ft/bin/python3.13t"

(the venv holds the fastkv that the last ``.ci/freethread`` run built; ``--env``
is set for the measured interpreter only).

Measured so (3.13.5t, 20,000 str keys): LockedTable t[k] and get 3.97 rmw
per read: the interpreter's incref/decref of the table (LOAD_FAST, 3.13t)
and of the returned value, nothing from fastkv's read path but the value's
reference. The protected OwnerTable had 7.95 (t[k]: the _MISSING sentinel
and the value held twice) and 5.97 (get: the table in a typed local), 3.97
for both since. FrozenTable: t[k] 9.92 (the same sentinel, and the value
held twice), get 5.95. A shared dict: t[k] 9.02, d.get(k) 25.85 (a critical
section, a PyMutex that parks: a dict created by another thread, 3.13t).
On 3.14.7t (same command, python3.14t, 20,000 str keys): every table's t[k]
and get 2.00 rmw and 1.00 fence per read, the value's incref (the read) and
decref (the interpreter); the table itself is borrowed from the frame
(LOAD_FAST_BORROW), its refcount untouched. A shared dict: 7.07 and 7.03.
On a GIL build the same loops execute no atomic at all.
Needs valgrind and objdump; x86-64 only.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shlex
import subprocess
import sys
import tempfile

STORES = ("dict", "FrozenTable", "LockedTable", "OwnerTable")
OPS = ("getitem", "get")


def _probe(store: str, op: str, size: int) -> None:
    """The measured program: a reader thread, between two os.getppid()."""
    import threading

    import fastkv

    keys = [f"key:{i:07d}" for i in range(size)]
    data = {k: i for i, k in enumerate(keys)}
    if store == "dict":
        t = data
    elif store == "OwnerTable":
        t = fastkv.OwnerTable(data, access="protected")
    else:
        t = getattr(fastkv, store)(data)

    def reader():
        ks = [(k + ".")[:-1] for k in keys]      # equal, not identical
        tt = t
        for k in ks[:100]:                       # first-use paths (read-section slot)
            tt[k]
            tt.get(k)
        if op == "getitem":
            os.getppid()
            for k in ks:
                tt[k]
            os.getppid()
        else:
            os.getppid()
            for k in ks:
                tt.get(k)
            os.getppid()

    th = threading.Thread(target=reader)
    th.start()
    th.join()
    if hasattr(t, "close"):
        t.close()


_LOCKED = re.compile(r"\block\b|^xchg\s+%\w+,.*\(|^mfence")


def _atomics(path: str) -> dict:
    """{address: (function, instruction)} of the atomic instructions in an
    object file (addresses as callgrind reports them: the file's own)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path],
                         capture_output=True, text=True).stdout
    found, sym = {}, None
    for line in out.splitlines():
        m = re.match(r"^([0-9a-f]+) <(.*)>:", line)
        if m:
            sym = m.group(2)
            continue
        m = re.match(r"^\s+([0-9a-f]+):\s+(.*)$", line)
        if m and _LOCKED.search(m.group(2).strip()):
            found[int(m.group(1), 16)] = (sym, m.group(2).strip())
    return found


def count(dump: str, reads: int) -> tuple:
    """(totals {rmw, fence} per read, [(per read, kind, where, insn)])."""
    counts = collections.Counter()
    ob, skip = None, False
    with open(dump) as f:
        for line in f:
            if line.startswith("ob="):
                ob = line.strip()[3:]
            elif line.startswith("calls="):
                skip = True                       # the next line is a call's inclusive cost
            elif line.startswith("0x"):
                if skip:
                    skip = False
                    continue
                parts = line.split()
                if len(parts) >= 3:
                    counts[(ob, int(parts[0], 16))] += int(parts[2])
    totals, where = collections.Counter(), collections.Counter()
    for obj in {o for o, _ in counts if o and o.startswith("/")}:
        locks = _atomics(obj)
        for (o, addr), n in counts.items():
            if o == obj and addr in locks:
                sym, insn = locks[addr]
                kind = "fence" if "(%rsp)" in insn or insn.startswith("mfence") else "rmw"
                totals[kind] += n
                where[(kind, f"{os.path.basename(obj)}:{sym}", insn)] += n
    rows = sorted(((n / reads, *k) for k, n in where.items() if n >= reads // 10), reverse=True)
    return {k: totals[k] / reads for k in ("rmw", "fence")}, rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter command (shell-split)")
    p.add_argument("--stores", default="LockedTable,OwnerTable")
    p.add_argument("--ops", default="getitem,get")
    p.add_argument("--size", type=int, default=20_000, help="keys, each read once")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="set for the measured interpreter only (repeatable)")
    p.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe:
        _probe(args.probe[0], args.probe[1], args.size)
        return 0
    for store in args.stores.split(","):
        for op in args.ops.split(","):
            if store not in STORES or op not in OPS:
                p.error(f"unknown store/op {store}/{op}")
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "cg.out")
                cmd = ["valgrind", "--tool=callgrind", "--dump-instr=yes", "--compress-strings=no",
                       "--compress-pos=no", "--dump-before=os_getppid",
                       f"--callgrind-out-file={out}", *shlex.split(args.python),
                       os.path.abspath(__file__), "--size", str(args.size), "--probe", store, op]
                env = dict(os.environ)
                env.update(kv.split("=", 1) for kv in args.env)
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                dump = out + ".2"                 # between the two getppid() calls
                if proc.returncode != 0 or not os.path.exists(dump):
                    print(proc.stderr[-2000:], file=sys.stderr)
                    return 1
                totals, rows = count(dump, args.size)
                print(f"{store} {op}: {totals['rmw']:.2f} atomic rmw, {totals['fence']:.2f} fence per read")
                for n, kind, where, insn in rows:
                    print(f"  {n:5.2f}  {kind:<5} {where}  {insn}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
