"""Instructions per near-cache hit, RedisTable vs LockedTable (load-independent).

The compiled hit path alone: entries are placed in a RedisTable's near cache
and its lease set by hand (no listener, no server contacted), then ``n`` reads
of 1,000 str keys; the same loop over a LockedTable, and an empty loop. Run
each case with n=0 and n=200000 under callgrind and divide the difference::

    for w in empty locked redis locked-get redis-get; do for n in 0 200000; do
      valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/redis_hit_callgrind.py $w $n 2>&1 | grep refs; done; done

(instructions per op = (refs at 200000 - refs at 0) / 200000; subtract the
empty loop's for the read itself.)
"""

import sys

import fastkv

which, n = sys.argv[1], int(sys.argv[2])
keys = [f"key:{i}" for i in range(1000)]
if which.startswith("redis"):
    t = fastkv.RedisTable("redis://127.0.0.1:1/0", namespace="cg", near_cache=False)
    t._near.update({k: "v" for k in keys})
    t._near_set_lease(t._near_now() + 1e6)
else:
    t = fastkv.LockedTable({k: "v" for k in keys})
loop = keys * (n // 1000)
if which == "empty":
    for k in loop:
        pass
elif which.endswith("get"):
    g = t.get
    for k in loop:
        g(k)
else:
    for k in loop:
        t[k]
