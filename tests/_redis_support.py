"""Test support for RedisTable: a real redis-server started on a free loopback
port (no persistence, in a temporary directory), and RedisTable as a ``kind``
/ ``impl`` of the shared behaviour suite.

- ``RedisServer``: start / stop / kill (SIGKILL) / restart on the same port /
  pause (SIGSTOP) and resume; ``url``.
- ``server_unavailable()``: why no server can be started here (None if one can).
- ``RedisKind``: a ``_support.Kind`` whose ``make(data, **kwargs)`` opens a
  RedisTable on a fresh namespace and stores ``dict(data, **kwargs)`` in it;
  ``RedisImpl``: an ``impl`` namespace whose ``LockedTable`` does the same.
"""

import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import types

import fastkv
import fastkv.reference
from _support import IMPLS, Kind

START_TIMEOUT = 10.0  # seconds for a redis-server to answer PING

_UNAVAILABLE = []  # reasons, filled by the fixtures, reported by pytest_terminal_summary


def redis_server_binary():
    return shutil.which("redis-server") or (os.path.exists("/usr/bin/redis-server") and "/usr/bin/redis-server") or None


def redis_py_missing():
    try:
        import redis  # noqa: F401
    except ImportError as exc:
        return f"redis-py is not installed ({exc}); pip install 'fastkv[redis]'"
    return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server process on 127.0.0.1:<port>, no persistence."""

    def __init__(self, port=None):
        self.binary = redis_server_binary()
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="fastkv-redis-")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace")
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err.strip()[:500]}")
            if _ping(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {START_TIMEOUT}s")

    def kill(self):
        """SIGKILL: the server dies at once (its clients see their sockets close)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()

    def restart(self):
        """Kill, then start again on the same port (empty: no persistence)."""
        self.kill()
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # the port may take a moment to be free again
            try:
                return self.start()
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_namespaces = itertools.count(1)


def fresh_namespace(tag="t"):
    return f"test-{os.getpid()}-{tag}-{next(_namespaces)}"


def redis_table_classes():
    """{"compiled": RedisTable (compiled near-cache hits), "reference": its Python twin}."""
    import fastkv.redis

    return {"compiled": fastkv.redis.RedisTable, "reference": fastkv.redis._ReferenceRedisTable}


class RedisKind(Kind):
    """RedisTable (near cache on or off, compiled or reference hit path) as a
    kind of the shared suite: ``make(data, **kwargs)`` opens a table on a new
    namespace of ``url`` and stores ``dict(data, **kwargs)``."""

    def __init__(self, url, impl_name, near):
        self.url = url
        self.impl_name = impl_name
        self.impl = IMPLS[impl_name]
        self.name = "redis-near" if near else "redis"
        self.id = f"{impl_name}-{self.name}"
        self.near = near
        self.cls = redis_table_classes()[impl_name]
        self.owner = False
        self.access = None
        self.mutable = True
        self.copy_on_write = False
        self._made = []
        import threading

        self._lock = threading.Lock()

    def make_as(self, cls, /, *args, **kwargs):
        data = fastkv.reference._collect(args[0] if args else (), kwargs)
        if len(args) > 1:
            raise TypeError(f"expected at most 1 argument, got {len(args)}")
        table = cls(self.url, namespace=fresh_namespace(), near_cache=self.near, timeout=5.0)
        self.track(table)
        table.put_many(data)
        return table

    def close_all(self):
        with self._lock:
            made, self._made = self._made, []
        for table in made:
            if not isinstance(table, self.cls):
                continue
            try:
                table.clear()
            except Exception:  # noqa: BLE001 - a test may have closed it or killed the server
                pass
            table.close()


def redis_impl(kind):
    """An ``impl`` namespace for LockedTable tests: ``LockedTable(...)`` makes
    a RedisTable of ``kind``; the other names are the implementation's."""
    impl = kind.impl
    return types.SimpleNamespace(
        LockedTable=kind.make,
        FrozenTable=impl.FrozenTable,
        OwnerTable=impl.OwnerTable,
        Agent=impl.Agent,
        ClosedError=impl.ClosedError,
    )
