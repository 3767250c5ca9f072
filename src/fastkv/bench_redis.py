"""``python -m fastkv bench --redis URL|auto``: RedisTable against plain redis-py.

Run only when a server is given (``--redis redis://host:port/db``) or can be
started here (``--redis auto``: a redis-server on a free loopback port, no
persistence, stopped at the end). Every figure is the best of several
interleaved rounds, and every ratio compares two figures of the same run:

- reads: ``t[k]`` on a RedisTable with the near cache (hits), one without
  (a GET each), a LockedTable, and a plain redis-py loop (``GET`` + decode);
- 90/10: nine reads for one write over the same keys (writes: ``t[k] = v`` /
  redis-py ``SET`` + encode);
- miss: a near-cached RedisTable whose cache holds one entry, read over 1,000
  keys (every read misses: token, GET, decode, cache insert), vs GET + decode;
- get_many: ``get_many`` of 1,000 keys (one MGET) vs 1,000 redis-py GETs;
- invalidation: another process writes a key this process has near-cached,
  1,000 times; the time from just before its SET to the moment the entry has
  left this process's near cache (CLOCK_MONOTONIC is one clock for every
  process of the machine).
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

KEYS = 1000


class LocalRedis:
    """A redis-server on a free loopback port (no persistence), or RuntimeError."""

    def __init__(self):
        binary = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
        if binary is None:
            raise RuntimeError("no redis-server installed (apt-get install redis-server), and no --redis URL given")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="fastkv-bench-redis-")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.close()
        raise RuntimeError("redis-server did not start")

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _best_per_op(fns, n, rounds):
    """{name: best seconds per op} over ``rounds`` interleaved rounds of ``n``
    calls, and {"ratio:" + name: median over the rounds of (name's time / the
    first function's time in the same round)} -- on a loaded machine the
    paired ratio is steadier than a ratio of bests."""
    best = {name: float("inf") for name in fns}
    ratios = {name: [] for name in fns}
    first = next(iter(fns))
    for _ in range(rounds):
        times = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(n)
            times[name] = (time.perf_counter() - t0) / n
            best[name] = min(best[name], times[name])
        for name in fns:
            ratios[name].append(times[name] / times[first])
    for name in fns:
        best["ratio:" + name] = statistics.median(ratios[name])
    return best


_WRITER = r"""
import sys, time
import redis
r = redis.Redis.from_url(sys.argv[1], socket_timeout=5)
key = sys.argv[2].encode()
for line in sys.stdin:
    i = int(line)
    t0 = time.monotonic()
    r.set(key, b"%d" % i)
    print(repr(t0), flush=True)
"""


def _invalidation_latency(url, ns, writes):
    import fastkv

    t = fastkv.RedisTable(url, namespace=ns, timeout=5)
    key = "inv"
    t[key] = -1
    deadline = time.monotonic() + 10
    while not (t._healthy and t._lease > t._near_now()) and time.monotonic() < deadline:
        time.sleep(0.001)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, url, f"{ns}:{key}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    lat = []
    try:
        for i in range(writes):
            for _ in range(1000):  # cache it (a read right after a write may not be cached yet)
                t[key]
                if key in t._near:
                    break
                time.sleep(0.0001)
            writer.stdin.write(f"{i}\n")
            writer.stdin.flush()
            limit = time.monotonic() + 5
            while key in t._near and time.monotonic() < limit:
                time.sleep(0.00005)  # lets the listener thread run
            t1 = time.monotonic()
            t0 = float(writer.stdout.readline())
            lat.append(t1 - t0)
    finally:
        writer.stdin.close()
        writer.wait(10)
        t.clear()
        t.close()
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

    return {"writes": len(lat), "p50_ms": pct(50) * 1e3, "p90_ms": pct(90) * 1e3, "p99_ms": pct(99) * 1e3,
            "max_ms": lat[-1] * 1e3, "mean_ms": statistics.fmean(lat) * 1e3,
            "within_10ms": sum(1 for x in lat if x <= 0.010) / len(lat)}


def run_redis(url, quick=True, smoke=False):
    """Measure; returns a report dict (see format_redis). ``smoke``: a few
    operations of each kind (the CLI test), no meaningful figures."""
    import redis

    import fastkv
    from fastkv.redis import SafeCodec

    started = None
    if url == "auto":
        started = LocalRedis()
        url = started.url
    try:
        ns = f"fastkv-bench-{os.getpid()}"
        codec = SafeCodec()
        near = fastkv.RedisTable(url, namespace=ns, timeout=5)
        plain = fastkv.RedisTable(url, namespace=ns, near_cache=False, timeout=5)
        tiny = fastkv.RedisTable(url, namespace=ns, near_cache_size=1, timeout=5)
        r = redis.Redis.from_url(url, protocol=3, socket_timeout=5)
        keys = [f"key:{i}" for i in range(KEYS)]
        rkeys = [f"{ns}:{k}".encode() for k in keys]
        data = {k: f"value-{i}" for i, k in enumerate(keys)}
        near.put_many(data)
        locked = fastkv.LockedTable(data)
        deadline = time.monotonic() + 10
        while not (near._healthy and near._lease > near._near_now()) and time.monotonic() < deadline:
            time.sleep(0.001)
        for k in keys:  # warm the near cache
            near[k]
        rounds = 9 if quick else 25
        hit_n = 100_000 if quick else 500_000
        net_n = 500 if quick else 2_000
        if smoke:
            rounds, hit_n, net_n = 1, 1_000, 20
        get, decode, encode, setr = r.get, codec.decode, codec.encode, r.set

        def reads_of(table):
            def run(n):
                for k in keys * (n // KEYS) + keys[: n % KEYS]:
                    table[k]
            return run

        def empty_loop(n):
            for k in keys * (n // KEYS) + keys[: n % KEYS]:
                pass

        def redis_reads(n):
            for i in range(n):
                decode(get(rkeys[i % KEYS]))

        def mix_of(table):
            def run(n):
                ks = keys
                for i in range(n):
                    k = ks[i % KEYS]
                    if i % 10 == 9:
                        table[k] = "v"
                    else:
                        table[k]
            return run

        def redis_mix(n):
            for i in range(n):
                rk = rkeys[i % KEYS]
                if i % 10 == 9:
                    setr(rk, encode("v"))
                else:
                    decode(get(rk))

        res = {"url": url if started is None else "auto (local redis-server)", "keys": KEYS}
        res["hit"] = _best_per_op({"locked": reads_of(locked), "near_hit": reads_of(near), "loop": empty_loop},
                                  hit_n, rounds * 3)
        res["reads"] = _best_per_op({"redis_py": redis_reads, "near": reads_of(near), "plain": reads_of(plain),
                                     "near_miss": reads_of(tiny)}, net_n, rounds)
        res["mix"] = _best_per_op({"redis_py": redis_mix, "near": mix_of(near), "plain": mix_of(plain)},
                                  net_n, rounds)
        near.put_many(data)

        def get_many(n):
            for _ in range(n):
                plain.get_many(keys)

        def loop_gets(n):
            for _ in range(n):
                [decode(get(rk)) for rk in rkeys]

        res["get_many"] = _best_per_op({"gets": loop_gets, "get_many": get_many}, 2 if quick else 5, rounds)
        res["invalidation"] = _invalidation_latency(url, ns + "-inv", 20 if smoke else 1000)
        near.clear()
        for t in (near, plain, tiny):
            t.close()
        r.close()
        return res
    finally:
        if started is not None:
            started.close()


def format_redis(res):
    h, rd, mx, gm, inv = res["hit"], res["reads"], res["mix"], res["get_many"], res["invalidation"]

    def us(x):
        return f"{x * 1e6:.2f} us" if x >= 1e-6 else f"{x * 1e9:.1f} ns"

    lines = [
        f"RedisTable vs redis-py ({res['url']}, {res['keys']:,} keys; per op: best of interleaved rounds; "
        "ratios: median of the rounds' paired ratios, same run)",
        "",
        f"  near-cache hit t[k]       {us(h['near_hit']):>10}   {h['ratio:near_hit']:.2f}x a LockedTable read ({us(h['locked'])}); "
        f"net of the loop ({us(h['loop'])}): {(h['near_hit'] - h['loop']) / max(h['locked'] - h['loop'], 1e-12):.2f}x",
        f"  reads: near cache         {us(rd['near']):>10}   {1 / rd['ratio:near']:.0f}x faster than redis-py GET+decode",
        f"  reads: no near cache      {us(rd['plain']):>10}   {rd['ratio:plain']:.2f}x redis-py GET+decode ({us(rd['redis_py'])})",
        f"  reads: near-cache miss    {us(rd['near_miss']):>10}   {rd['ratio:near_miss']:.2f}x redis-py GET+decode",
        f"  90/10 mix: near cache     {us(mx['near']):>10}   {1 / mx['ratio:near']:.1f}x faster than redis-py GET/SET",
        f"  90/10 mix: no near cache  {us(mx['plain']):>10}   {mx['ratio:plain']:.2f}x redis-py GET/SET ({us(mx['redis_py'])})",
        f"  get_many(1,000)           {us(gm['get_many']):>10}   {1 / gm['ratio:get_many']:.1f}x faster than 1,000 GETs+decode ({us(gm['gets'])})",
        f"  invalidation, other process ({inv['writes']} writes): p50 {inv['p50_ms']:.3f} ms, p90 {inv['p90_ms']:.3f} ms, "
        f"p99 {inv['p99_ms']:.3f} ms, max {inv['max_ms']:.3f} ms; {inv['within_10ms'] * 100:.1f}% within 10 ms",
    ]
    return "\n".join(lines)


def main(url="auto", quick=True, smoke=False):
    """Run and print; the report, or None (printed why) when no server could be used."""
    try:
        res = run_redis(url, quick=quick, smoke=smoke)
    except ImportError as exc:
        print(f"RedisTable bench skipped: {exc} (pip install 'fastkv[redis]')", file=sys.stderr)
        return None
    except (RuntimeError, ConnectionError) as exc:
        print(f"RedisTable bench skipped: {exc}", file=sys.stderr)
        return None
    print(format_redis(res))
    return res


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1] if len(sys.argv) > 1 else "auto")
