"""RedisTable: the fastkv table API on a Redis (or Valkey) server, with a near cache.

Design note
===========

``RedisTable(url_or_client, namespace=..., near_cache=True, codec=...)`` keeps
its items on a Redis server, through redis-py, so processes on many hosts
share one table; LockedTable's atomic operations map to Redis atomics
(``insert_new`` -> SET NX, ``update_counter`` -> INCRBY, ``take`` -> GETDEL,
``setdefault`` -> SET NX GET, ``get_many`` -> one MGET, ``put_many`` -> one
MSET, iteration -> SCAN over the namespace, never KEYS).

Keys and values. A key lives on the server as ``<namespace>:<key>``: a str key
as its UTF-8 bytes (readable in redis-cli), any other key -- bytes, int, float,
None, tuples of these -- as a NUL byte and the codec's compact encoding. Keys
follow dict equality: ``True``, ``1`` and ``1.0`` are one key (stored as the
int); NaN keys are refused. Values go through a codec: the default
``SafeCodec`` stores ints as their decimal digits (so INCRBY works on them) and
None/bool/float/str/bytes and lists/tuples/dicts of these in a tagged binary
form that decoding can never turn into code. ``codec="pickle"`` stores any
other value with pickle: decoding then runs whatever a writer to the server
put there, so use it only when everyone who can write to the server is
trusted.

The near cache. With ``near_cache=True`` (the default) reads are kept in a
local dict after their first GET (absences too), bounded by
``near_cache_size`` entries (evicted oldest-inserted first, FIFO: a hit writes
nothing, so readers never contend; an evicted hot key is simply read again).
Hits are served by the compiled base class (``fastkv._core._NearReads``,
``_near.pxi``): a dict lookup and a clock read. Coherence uses the server's
client-side caching support in **broadcasting mode**: one dedicated RESP3
connection per table sends ``CLIENT TRACKING ON BCAST PREFIX <namespace>:``
and a listener thread receives an ``invalidate`` push message for every key
of the namespace that anyone changes (writes, deletes, expiry, eviction,
FLUSHDB). BCAST rather than the default mode because:

- in default mode the server tracks the keys each *connection* read, so every
  pooled connection of redis-py would need its own ``CLIENT TRACKING ...
  REDIRECT`` set up (and again after every reconnect); in BCAST mode the data
  connections stay plain and only the listener's connection is special;
- the server keeps no per-key memory for BCAST clients (default mode fills the
  tracking table, and evicting it invalidates keys spuriously);
- the cost, an invalidation for keys this process never read, is bounded by the
  namespace's write rate: RedisTable is for read-mostly data (the same
  trade-off as LockedTable vs OwnerTable), and a namespace keeps it to one
  table's keys.

Races. A GET that misses registers a token for its key before it is sent; an
invalidation of that key (from the listener, or a write by this process)
cancels every token of the key, and the value is cached only if its token
survived -- so a reply that raced with a newer write never enters the cache.
A write by this process invalidates the key locally after the server
acknowledged it, so this process's next read goes to the server and sees the
write (or a newer one). The listener (re)connects with a new epoch; tokens of
an older epoch are never cached.

Faults. Every call has a timeout (``timeout`` seconds, connect and read); a
network fault or a timeout raises ``fastkv.RedisConnectionError`` (a
``ConnectionError``). The near cache serves hits only under a lease the
listener renews each time it hears from the server (an invalidation, or the
reply to the PING it sends after ``timeout / 4`` seconds of silence; the lease
is ``timeout`` long). When the listener's connection drops, or the lease runs
out (a silent network fault, a paused server), the near cache is flushed
before any further local hit, and nothing is cached until the listener has
tracking set up again (it reconnects in the background, with backoff). A
forked child starts with an empty near cache and its own listener.

The guarantee, in plain words: a write by this process is seen by its next
read; a write by anyone else is seen once its invalidation message reaches
this process (on loopback, well under a millisecond); if messages may have
been lost, the local copies are dropped rather than served.

Design differences from the local tables (their shared API otherwise): no
insertion order (SCAN order), no consistent snapshot for iteration (SCAN sees
every key present for the whole scan, possibly others), ``len`` is a SCAN
(O(n)), keys limited to str/bytes/int/float/None/tuples and values to what the
codec encodes, values come back as equal copies (never the same object),
``fetch``'s loader error reaches only its own caller (a waiter elsewhere loads
again), construction takes a server, not data, and ``copy()`` returns a dict.
"""

import collections
import logging
import math
import os
import pickle
import socket
import threading
import time
import weakref
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

import redis as _redis  # redis-py (absolute import: this module is fastkv.redis)
from redis.backoff import NoBackoff as _NoBackoff
from redis.retry import Retry as _Retry

from fastkv import _core
from fastkv import reference as _reference
from fastkv._errors import ClosedError, RedisConnectionError

__all__ = ["PickleCodec", "RedisConnectionError", "RedisTable", "SafeCodec"]

_logger = logging.getLogger("fastkv")
_MISSING = object()
_NETWORK_ERRORS = (_redis.exceptions.ConnectionError, _redis.exceptions.TimeoutError, OSError)
_MAX_DEPTH = 100  # nesting of encoded values

# ---------------------------------------------------------------------------
# Codecs
# ---------------------------------------------------------------------------


class SafeCodec:
    """The default codec: ints as decimal digits (INCRBY works on them), and
    None, bool, float, str, bytes and lists/tuples/dicts of these in a tagged
    binary form. Decoding never runs code; bytes it does not recognise raise
    ValueError. ``encode`` raises TypeError for any other type."""

    name = "safe"

    def encode(self, value):
        """``value`` as bytes."""
        if type(value) is int:
            return b"%d" % value
        if type(value) is str:
            return b"s" + value.encode("utf-8", "surrogatepass")
        return self._encode_other(value)

    def _encode_other(self, value):
        if value is None:
            return b"N"
        if value is True:
            return b"T"
        if value is False:
            return b"F"
        if isinstance(value, int):
            return b"%d" % value
        if isinstance(value, str):
            return b"s" + str.encode(value, "utf-8", "surrogatepass")
        if isinstance(value, bytes):
            return b"b" + bytes(value)
        if isinstance(value, float):
            return b"f" + repr(float(value)).encode()
        if isinstance(value, (list, tuple, dict)):
            out = [b"c"]
            _nested_encode(value, out, 0)
            return b"".join(out)
        return self._fallback(value)

    def _fallback(self, value):
        raise TypeError(
            f"the safe codec cannot store {type(value).__name__!r} values "
            "(None/bool/int/float/str/bytes and lists/tuples/dicts of them); "
            "pass codec='pickle' to store anything picklable"
        )

    def decode(self, data):
        """The value ``data`` encodes (ValueError for foreign bytes)."""
        tag = data[:1]
        if tag == b"s":
            return data[1:].decode("utf-8", "surrogatepass")
        if tag.isdigit() or tag == b"-":
            return int(data)
        if tag == b"N" and len(data) == 1:
            return None
        if tag == b"T" and len(data) == 1:
            return True
        if tag == b"F" and len(data) == 1:
            return False
        if tag == b"b":
            return data[1:]
        if tag == b"f":
            return float(data[1:])
        if tag == b"c":
            value, end = _nested_decode(data, 1, 0)
            if end != len(data):
                raise ValueError("trailing bytes after an encoded value")
            return value
        return self._decode_other(tag, data)

    def _decode_other(self, tag, data):
        if tag == b"p":
            raise ValueError("this value was stored with codec='pickle'; read it with that codec")
        raise ValueError(f"not a value fastkv's codec wrote: {bytes(data[:16])!r}")

    def __repr__(self):
        return f"{type(self).__name__}()"


class PickleCodec(SafeCodec):
    """SafeCodec, plus pickle for every other value. Decoding a pickle runs
    code chosen by whoever wrote it: use this only when everyone who can write
    to the server is trusted."""

    name = "pickle"

    def __init__(self, protocol=pickle.HIGHEST_PROTOCOL):
        self.protocol = protocol

    def encode(self, value):
        """``value`` as bytes (pickled when the safe encoding cannot hold it)."""
        if type(value) is int:
            return b"%d" % value
        if type(value) is str:
            return b"s" + value.encode("utf-8", "surrogatepass")
        try:
            return self._encode_other(value)
        except (TypeError, ValueError):
            return b"p" + pickle.dumps(value, self.protocol)

    def _fallback(self, value):
        raise TypeError("pickled instead")

    def _decode_other(self, tag, data):
        if tag == b"p":
            return pickle.loads(data[1:])
        return SafeCodec._decode_other(self, tag, data)


def _nested_encode(value, out, depth):
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    if value is None:
        out.append(b"N")
    elif value is True:
        out.append(b"T")
    elif value is False:
        out.append(b"F")
    elif isinstance(value, int):
        out.append(b"i%d;" % value)
    elif isinstance(value, float):
        out.append(b"f" + repr(float(value)).encode() + b";")
    elif isinstance(value, str):
        raw = str.encode(value, "utf-8", "surrogatepass")
        out.append(b"s%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, bytes):
        out.append(b"b%d:" % len(value))
        out.append(bytes(value))
    elif isinstance(value, (list, tuple)):
        out.append((b"l%d:" if isinstance(value, list) else b"t%d:") % len(value))
        for item in value:
            _nested_encode(item, out, depth + 1)
    elif isinstance(value, dict):
        items = list(value.items())
        out.append(b"d%d:" % len(items))
        for k, v in items:
            _nested_encode(k, out, depth + 1)
            _nested_encode(v, out, depth + 1)
    else:
        raise TypeError(
            f"the safe codec cannot store {type(value).__name__!r} values "
            "(None/bool/int/float/str/bytes and lists/tuples/dicts of them)"
        )


def _read_until(data, pos, stop):
    end = data.find(stop, pos)
    if end < 0:
        raise ValueError("truncated encoded value")
    return data[pos:end], end + 1


def _nested_decode(data, pos, depth):
    if depth > _MAX_DEPTH:
        raise ValueError(f"value nested deeper than {_MAX_DEPTH} levels")
    tag = data[pos : pos + 1]
    pos += 1
    if tag == b"N":
        return None, pos
    if tag == b"T":
        return True, pos
    if tag == b"F":
        return False, pos
    if tag == b"i":
        text, pos = _read_until(data, pos, b";")
        return int(text), pos
    if tag == b"f":
        text, pos = _read_until(data, pos, b";")
        return float(text), pos
    if tag in (b"s", b"b", b"l", b"t", b"d"):
        text, pos = _read_until(data, pos, b":")
        if not text.isdigit():
            raise ValueError("bad length in an encoded value")
        n = int(text)
        if tag in (b"s", b"b"):
            raw = data[pos : pos + n]
            if len(raw) != n:
                raise ValueError("truncated encoded value")
            return (raw.decode("utf-8", "surrogatepass") if tag == b"s" else bytes(raw)), pos + n
        if tag == b"d":
            result = {}
            for _ in range(n):
                k, pos = _nested_decode(data, pos, depth + 1)
                v, pos = _nested_decode(data, pos, depth + 1)
                try:
                    result[k] = v
                except TypeError:
                    raise ValueError("an encoded dict with an unhashable key") from None
            return result, pos
        items = []
        for _ in range(n):
            item, pos = _nested_decode(data, pos, depth + 1)
            items.append(item)
        return (items if tag == b"l" else tuple(items)), pos
    raise ValueError(f"not a value fastkv's codec wrote (tag {tag!r})")


_CODECS = {"safe": SafeCodec, "pickle": PickleCodec}


def _make_codec(codec):
    if codec is None:
        return SafeCodec()
    if isinstance(codec, str):
        try:
            return _CODECS[codec]()
        except KeyError:
            raise ValueError(f"unknown codec {codec!r}: 'safe', 'pickle' or an object with encode/decode") from None
    if not (callable(getattr(codec, "encode", None)) and callable(getattr(codec, "decode", None))):
        raise TypeError("a codec has encode(value) -> bytes and decode(bytes) -> value")
    return codec


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------

_KEY_TYPES = "str, bytes, int, float, None or tuples of them"


def _canonical_key(key):
    """``key`` as the value its Redis name encodes (True/1.0 -> 1), or TypeError."""
    t = type(key)
    if t is str or t is bytes or t is int or key is None:
        return key
    if t is bool:
        return int(key)
    if isinstance(key, float):
        if key != key:
            raise ValueError("a NaN key cannot be found again (NaN != NaN)")
        if math.isfinite(key) and key == int(key):
            return int(key)
        return float(key)
    if isinstance(key, int):
        return int(key)
    if isinstance(key, str):
        return str(key)
    if isinstance(key, bytes):
        return bytes(key)
    if isinstance(key, tuple):
        return tuple(_canonical_key(k) for k in key)
    hash(key)  # an unhashable key: TypeError as in a dict
    raise TypeError(f"RedisTable keys are {_KEY_TYPES}, not {type(key).__name__!r}")


def _key_suffix(key):
    """The part of a key's Redis name after ``<namespace>:``."""
    if type(key) is str:
        raw = key.encode("utf-8", "surrogatepass")
        if not raw.startswith(b"\x00"):
            return raw
    out = [b"\x00"]
    _nested_encode(_canonical_key(key), out, 0)
    return b"".join(out)


def _key_from_suffix(suffix):
    """The (canonical) key whose Redis name ends with ``suffix``."""
    if not suffix.startswith(b"\x00"):
        return suffix.decode("utf-8", "surrogatepass")
    key, end = _nested_decode(suffix, 1, 0)
    if end != len(suffix):
        raise ValueError("trailing bytes after an encoded key")
    return key


def _check_namespace(namespace):
    if not isinstance(namespace, str) or not namespace:
        raise TypeError("namespace must be a non-empty str")
    bad = set(namespace) & set(":;*?[]\\ \t\r\n")
    if bad:
        raise ValueError(
            f"namespace {namespace!r} contains {''.join(sorted(bad))!r}: use letters, digits, '_', '-', '.', '/'"
        )
    return namespace


# ---------------------------------------------------------------------------
# The invalidation listener
# ---------------------------------------------------------------------------


def _push_marker(response):
    # the parser's handler for push messages: never raises (the parser would
    # log and swallow it); the listener processes the message itself
    kind = response[0] if response else None
    if kind in (b"invalidate", "invalidate"):
        return ("invalidate", response)
    return ("push", response)


def _set_push_handler(parser):
    if hasattr(parser, "set_invalidation_push_handler"):  # redis-py >= 5.1
        parser.set_invalidation_push_handler(_push_marker)
        if hasattr(parser, "set_pubsub_push_handler"):
            parser.set_pubsub_push_handler(_push_marker)
    else:  # redis-py 5.0: one handler for every push
        parser.set_push_handler(_push_marker)


def _resp3_parser():
    try:  # the pure-Python RESP3 parser handles push messages on every redis-py version
        from redis._parsers import _RESP3Parser

        return _RESP3Parser
    except ImportError:  # pragma: no cover - a future redis-py
        return None


class _Listener:
    """One thread holding a RESP3 connection with ``CLIENT TRACKING ON BCAST
    PREFIX <namespace>:``: applies invalidations to the table's near cache,
    renews its lease on every word from the server, PINGs after silence, and
    on any fault flushes the near cache and reconnects with backoff. Refers to
    the table weakly: a dropped table stops its listener."""

    def __init__(self, table):
        self._table = weakref.ref(table)
        self._stop = threading.Event()
        self._conn = None
        self.pid = os.getpid()
        pool = table._client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["protocol"] = 3
        kwargs["socket_timeout"] = table._timeout
        kwargs["socket_connect_timeout"] = table._timeout
        kwargs["health_check_interval"] = 0
        kwargs["retry"] = _Retry(_NoBackoff(), 0)
        kwargs.pop("cache", None)
        kwargs.pop("cache_config", None)
        parser = _resp3_parser()
        if parser is not None:
            kwargs["parser_class"] = parser
        self._make = lambda: pool.connection_class(**kwargs)
        self._prefix = table._prefix
        self._timeout = table._timeout
        self._heartbeat = table._timeout / 4
        self._thread = threading.Thread(target=self._run, name=f"fastkv-redis-listener[{table._namespace}]", daemon=True)
        self._thread.start()

    def stop(self, wait=True):
        self._stop.set()
        sock = getattr(self._conn, "_sock", None)
        if sock is not None:
            try:  # wakes the listener out of its wait for the server
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if wait and self._thread is not threading.current_thread():
            self._thread.join(self._timeout + 1)

    def _connect(self):
        conn = self._make()
        conn.connect()
        _set_push_handler(conn._parser)
        conn.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
        reply = conn.read_response()
        if reply not in (b"OK", "OK"):
            raise _redis.exceptions.ConnectionError(f"CLIENT TRACKING answered {reply!r}")
        return conn

    def _run(self):
        delay = 0.02
        while not self._stop.is_set():
            conn = None
            try:
                conn = self._conn = self._connect()
                if self._stop.is_set():
                    return
                table = self._table()
                if table is None:
                    return
                table._near_connected()
                del table
                delay = 0.02
                self._serve(conn)
            except Exception as exc:  # noqa: BLE001 - every fault means: flush, reconnect
                if not self._stop.is_set():
                    _logger.debug("RedisTable listener: %r; near cache flushed, reconnecting", exc)
            finally:
                table = self._table()
                if table is not None:
                    table._near_disconnected()
                del table
                self._conn = None
                if conn is not None:
                    try:
                        conn.disconnect()
                    except Exception:  # noqa: BLE001 - already broken
                        pass
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 1.0)

    def _serve(self, conn):
        heartbeat = self._heartbeat
        while not self._stop.is_set():
            if self._table() is None:
                return
            if conn.can_read(timeout=heartbeat):
                self._handle(conn.read_response(push_request=True))
                continue
            conn.send_command("PING")
            while True:  # invalidations may come before the PONG
                reply = conn.read_response(push_request=True)
                if self._handle(reply):
                    continue
                break

    def _handle(self, reply):
        """Apply one message; True if it was an invalidation push."""
        table = self._table()
        if table is None:
            return True
        if isinstance(reply, tuple) and reply and reply[0] == "invalidate":
            payload = reply[1]
            keys = payload[1] if len(payload) > 1 else None
            table._near_invalidated(keys)
            return True
        if isinstance(reply, tuple) and reply and reply[0] == "push":
            return True  # another push message: not the PING's answer
        table._near_heard()
        return False


# ---------------------------------------------------------------------------
# RedisTable
# ---------------------------------------------------------------------------

_TABLES = weakref.WeakValueDictionary()  # id -> table (tables are unhashable)


_pid = os.getpid()  # this process's id, updated in a fork child (getpid is a system call)


def _after_fork_in_child():
    global _pid
    _pid = os.getpid()
    for table in list(_TABLES.values()):
        table._near_reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _KeysView(KeysView):
    def __iter__(self):
        return iter(self._mapping)


class _ValuesView(ValuesView):
    def __iter__(self):
        for _, value in self._mapping._scan_items():
            yield value


class _ItemsView(ItemsView):
    def __iter__(self):
        return self._mapping._scan_items()


_fetch_held = threading.local()
_RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_COUNTER_SCRIPT = (
    "if redis.call('exists', KEYS[1]) == 0 then redis.call('set', KEYS[1], ARGV[2]) end "
    "return redis.call('incrby', KEYS[1], ARGV[1])"
)


def _redacted(url):
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class _RedisTableBody(MutableMapping):
    """Everything of RedisTable but its hits (see the module's design note)."""

    def __init__(
        self,
        url_or_client="redis://localhost:6379/0",
        /,
        *,
        namespace="fastkv",
        near_cache=True,
        near_cache_size=100_000,
        codec="safe",
        timeout=1.0,
        fetch_lock_ttl=30.0,
    ):
        self._closed = True  # until fully built (close() and __del__ look at it)
        self._namespace = _check_namespace(namespace)
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError("timeout must be a positive number of seconds")
        if not (isinstance(near_cache_size, int) and near_cache_size > 0):
            raise ValueError("near_cache_size must be a positive int")
        if not (isinstance(fetch_lock_ttl, (int, float)) and fetch_lock_ttl > 0):
            raise ValueError("fetch_lock_ttl must be a positive number of seconds")
        self._timeout = float(timeout)
        self._codec = _make_codec(codec)
        self._prefix = namespace.encode() + b":"
        self._fetch_prefix = namespace.encode() + b";fetch:"
        self._fetch_ttl_ms = max(1, int(fetch_lock_ttl * 1000))
        if isinstance(url_or_client, str):
            self._url = url_or_client
            self._client = _redis.Redis.from_url(
                url_or_client,
                protocol=3,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=_Retry(_NoBackoff(), 0),
                health_check_interval=0,
            )
            self._owns_client = True
        elif isinstance(url_or_client, _redis.Redis):
            if url_or_client.get_encoder().decode_responses:
                raise ValueError("RedisTable needs a client with decode_responses=False (values are bytes)")
            kw = url_or_client.connection_pool.connection_kwargs
            self._url = "redis://{}:{}/{}".format(kw.get("host", "?"), kw.get("port", "?"), kw.get("db", 0))
            self._client = url_or_client
            self._owns_client = False
        else:
            raise TypeError("RedisTable needs a redis:// URL or a redis.Redis client")
        self._release = self._client.register_script(_RELEASE_SCRIPT)
        self._counter = self._client.register_script(_COUNTER_SCRIPT)
        # near cache state, guarded by _mutex (the hit path only reads _near)
        self._mutex = threading.Lock()
        self._near_on = bool(near_cache)
        self._near_size = near_cache_size
        self._order = collections.deque()  # insertion order of _near, for eviction
        self._pending = {}  # key -> [token, ...] of GETs in flight
        self._epoch = 0
        self._healthy = False
        self._lease_span = self._timeout
        self._flushes = 0
        self._invalidations = 0
        self._listener = None
        self._closed = False
        _TABLES[id(self)] = self
        if self._near_on:
            self._listener = _Listener(self)

    # -- plumbing ---------------------------------------------------------------

    def _check_open(self):
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")

    def _network_error(self, exc):
        return RedisConnectionError(f"Redis at {_redacted(self._url)}: {type(exc).__name__}: {exc}")

    def _rkey(self, key):
        return self._prefix + _key_suffix(key)

    def _decode(self, raw):
        return self._near_absent if raw is None else self._codec.decode(raw)

    # -- the near cache (Python side; the hit path is _NearReads) ---------------

    def _near_connected(self):
        """The listener has tracking on: start a new epoch and serve hits."""
        with self._mutex:
            self._epoch += 1
            self._healthy = True
        self._near_heard()

    def _near_heard(self):
        self._near_set_lease(self._near_now() + self._lease_span)

    def _near_disconnected(self):
        with self._mutex:
            self._healthy = False
            self._near_set_lease(0.0)
            self._near_flush_locked()

    def _near_flush_locked(self):
        self._near.clear()
        self._order.clear()
        for tokens in self._pending.values():
            for token in tokens:
                token[0] = False
        self._pending.clear()
        self._epoch += 1
        self._flushes += 1

    def _near_invalidated(self, rkeys):
        """An invalidation push: ``rkeys`` (None: every key, as after FLUSHDB)."""
        with self._mutex:
            self._invalidations += 1
            if rkeys is None:
                self._near_flush_locked()
            else:
                prefix = self._prefix
                n = len(prefix)
                for rkey in rkeys:
                    if isinstance(rkey, str):
                        rkey = rkey.encode("utf-8", "surrogatepass")
                    if not rkey.startswith(prefix):
                        continue
                    try:
                        key = _key_from_suffix(rkey[n:])
                    except Exception:  # noqa: BLE001 - a foreign key under our prefix
                        self._near_flush_locked()
                        break
                    self._near_drop_locked(key)
        self._near_heard()

    def _near_drop_locked(self, key):
        tokens = self._pending.pop(key, None)
        if tokens:
            for token in tokens:
                token[0] = False
        self._near.pop(key, None)

    def _near_forget(self, keys):
        """This process wrote ``keys``: its next reads go to the server."""
        if self._near_on:
            with self._mutex:
                for key in keys:
                    self._near_drop_locked(key)

    def _near_begin(self, key):
        """A token for a GET of ``key`` about to be sent, or None (do not cache)."""
        listener = self._listener
        if listener is None:
            return None
        if listener.pid != _pid:
            self._near_restart_listener()
            return None
        with self._mutex:
            if not self._healthy:
                return None
            if self._lease <= self._near_now():
                # the listener has not heard from the server within the lease:
                # invalidations may have been missed
                self._near_flush_locked()
                return None
            token = [True, self._epoch]
            self._pending.setdefault(key, []).append(token)
            return token

    def _near_end(self, token, key, value):
        """Cache ``value`` (the reply to the GET of ``token``) unless an
        invalidation of ``key`` or a flush came in between; value _MISSING:
        the GET failed."""
        with self._mutex:
            tokens = self._pending.get(key)
            if tokens is not None:
                for i, t in enumerate(tokens):
                    if t is token:
                        del tokens[i]
                        break
                if not tokens:
                    del self._pending[key]
            if value is _MISSING or not token[0] or token[1] != self._epoch or not self._healthy:
                return
            near = self._near
            if key not in near:
                order = self._order
                while len(near) >= self._near_size and order:
                    near.pop(order.popleft(), None)
                order.append(key)
                if len(order) > 2 * self._near_size:  # keys dropped by invalidations
                    self._order = collections.deque(near)
                    self._order.append(key)
            near[key] = value

    def _near_restart_listener(self):
        with self._mutex:
            listener = self._listener
            if listener is None or listener.pid == os.getpid() or self._closed:
                return
            self._listener = _Listener(self)

    def _near_reset_after_fork(self):
        # in the child: the listener thread did not survive the fork, and the
        # parent's threads may have held _mutex
        self._mutex = threading.Lock()
        self._near_set_lease(0.0)
        self._near.clear()
        self._order.clear()
        self._pending.clear()
        self._healthy = False
        self._epoch += 1

    def _near_load(self, key):
        """The value under ``key`` (or ``_near_absent``) from the server, cached
        in the near cache if nothing invalidated it meanwhile."""
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")
        rkey = self._rkey(key)
        token = self._near_begin(key) if self._near_on else None
        try:
            raw = self._client.get(rkey)
        except _NETWORK_ERRORS as exc:
            if token is not None:
                self._near_end(token, key, _MISSING)
            raise self._network_error(exc) from exc
        except BaseException:
            if token is not None:
                self._near_end(token, key, _MISSING)
            raise
        value = self._near_absent if raw is None else self._codec.decode(raw)
        if token is not None:
            self._near_end(token, key, value)
        return value

    # -- reads ------------------------------------------------------------------

    def __len__(self):
        """The number of keys in the namespace: one SCAN over it, O(n)."""
        n = 0
        for _ in self._scan_rkeys():
            n += 1
        return n

    def _scan_rkeys(self):
        self._check_open()
        match = self._prefix + b"*"
        seen = set()
        cursor = 0
        try:
            while True:
                cursor, batch = self._client.scan(cursor, match=match, count=1000)
                for rkey in batch:
                    if rkey not in seen:
                        seen.add(rkey)
                        yield rkey
                if int(cursor) == 0:
                    return
        except _NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc

    def __iter__(self):
        """The keys of the namespace, by SCAN (never KEYS): every key present
        for the whole iteration once, in no particular order; keys written
        meanwhile may or may not appear."""
        n = len(self._prefix)
        for rkey in self._scan_rkeys():
            yield _key_from_suffix(rkey[n:])

    def _scan_items(self):
        n = len(self._prefix)
        batch = []
        for rkey in self._scan_rkeys():
            batch.append(rkey)
            if len(batch) >= 1000:
                yield from self._mget_items(batch, n)
                batch = []
        if batch:
            yield from self._mget_items(batch, n)

    def _mget_items(self, rkeys, n):
        try:
            raws = self._client.mget(rkeys)
        except _NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc
        decode = self._codec.decode
        for rkey, raw in zip(rkeys, raws):
            if raw is not None:  # deleted between SCAN and MGET
                yield _key_from_suffix(rkey[n:]), decode(raw)

    def keys(self):
        """A view of the keys (iterated by SCAN)."""
        return _KeysView(self)

    def values(self):
        """A view of the values (SCAN, then one MGET per 1,000 keys)."""
        return _ValuesView(self)

    def items(self):
        """A view of the items (SCAN, then one MGET per 1,000 keys)."""
        return _ItemsView(self)

    def to_dict(self):
        """The items as a new dict (SCAN + MGET; not one snapshot, see ``__iter__``)."""
        return dict(self._scan_items())

    def copy(self):
        """A local copy of the items: a dict (as ``to_dict()``)."""
        return self.to_dict()

    def snapshot(self):
        """A local, immutable FrozenTable of the items (as ``to_dict()``)."""
        return FrozenTable(self.to_dict())

    def select(self, predicate):
        """``[(k, v), ...]`` for which ``predicate(k, v)`` is true (SCAN + MGET)."""
        return [(k, v) for k, v in self._scan_items() if predicate(k, v)]

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``: near-cache hits locally, all
        misses in one MGET (one round trip)."""
        self._check_open()
        keys = list(keys)
        out = [default] * len(keys)
        miss_i = []
        near = self._near
        use_near = self._near_on and self._lease > self._near_now()
        for i, key in enumerate(keys):
            value = near.get(key, _MISSING) if use_near else _MISSING
            if value is _MISSING:
                miss_i.append(i)
            elif value is not self._near_absent:
                out[i] = value
        if not miss_i:
            return out
        rkeys = [self._rkey(keys[i]) for i in miss_i]
        tokens = [self._near_begin(keys[i]) for i in miss_i] if self._near_on else None
        try:
            raws = self._client.mget(rkeys)
        except BaseException as exc:
            if tokens is not None:
                for i, token in zip(miss_i, tokens):
                    if token is not None:
                        self._near_end(token, keys[i], _MISSING)
            if isinstance(exc, _NETWORK_ERRORS):
                raise self._network_error(exc) from exc
            raise
        decode = self._codec.decode
        absent = self._near_absent
        for j, (i, raw) in enumerate(zip(miss_i, raws)):
            value = absent if raw is None else decode(raw)
            if tokens is not None and tokens[j] is not None:
                self._near_end(tokens[j], keys[i], value)
            if value is not absent:
                out[i] = value
        return out

    def info(self):
        """``{"namespace", "size" (a SCAN, O(n)), "near_cache": {"enabled",
        "size", "max_size", "serving" (the listener is connected and its lease
        holds), "flushes", "invalidations"}}``."""
        size = len(self)
        return {
            "namespace": self._namespace,
            "size": size,
            "near_cache": {
                "enabled": self._near_on,
                "size": len(self._near),
                "max_size": self._near_size,
                "serving": self._near_on and self._healthy and self._lease > self._near_now(),
                "flushes": self._flushes,
                "invalidations": self._invalidations,
            },
        }

    # -- writes -----------------------------------------------------------------

    def _write(self, written, fn, /, *args, **kwargs):
        self._check_open()
        try:
            return fn(*args, **kwargs)
        except _NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc
        finally:
            self._near_forget(written)

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``): one SET."""
        rkey, data = self._rkey(key), self._codec.encode(value)
        self._write((key,), self._client.set, rkey, data)

    __setitem__ = put

    def delete(self, key):
        """Remove ``key``; True if it was there: one DEL."""
        return bool(self._write((key,), self._client.delete, self._rkey(key)))

    def __delitem__(self, key):
        """``del t[key]``: remove ``key``, or ``KeyError(key)``."""
        if not self.delete(key):
            raise KeyError(key)

    def put_many(self, mapping_or_pairs):
        """Store many items with one MSET: atomic on the server (other
        clients see all of them or none), one round trip. The argument is
        read and encoded completely first, so a bad one changes nothing."""
        items = _reference._collect(mapping_or_pairs, None)
        if not items:
            self._check_open()
            return
        encoded = {}
        for key, value in items.items():
            encoded[self._rkey(key)] = self._codec.encode(value)
        self._write(list(items), self._client.mset, encoded)

    def update(self, other=(), /, **kwargs):
        """``dict.update``: ``put_many(dict(other, **kwargs))``, one MSET."""
        self.put_many(_reference._collect(other, kwargs))

    def insert_new(self, key, value):
        """Store ``value`` only if ``key`` is absent; True if stored (SET NX)."""
        rkey, data = self._rkey(key), self._codec.encode(value)
        return bool(self._write((key,), self._client.set, rkey, data, nx=True))

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it
        (one SET NX GET: atomic)."""
        rkey, data = self._rkey(key), self._codec.encode(default)
        old = self._write((key,), self._client.set, rkey, data, nx=True, get=True)
        return default if old is None else self._codec.decode(old)

    def update_counter(self, key, incr=1, default=0):
        """Add ``incr`` to the integer under ``key`` and return the new value;
        a missing key starts from ``default``. One INCRBY (a script when
        ``default`` is not 0), atomic on the server. TypeError, nothing
        changed, when the stored value is not an integer; OverflowError past
        64 bits (Redis counters are signed 64-bit)."""
        if not isinstance(incr, int):
            raise TypeError(f"update_counter increment must be an int, not {type(incr).__name__}")
        if not isinstance(default, int):
            raise TypeError(f"update_counter default must be an int, not {type(default).__name__}")
        if not (-(2**63) <= incr < 2**63 and -(2**63) <= default < 2**63):
            raise OverflowError("update_counter works on Redis's signed 64-bit integers")
        rkey = self._rkey(key)
        try:
            if default == 0:
                return self._write((key,), self._client.incrby, rkey, int(incr))
            return self._write((key,), self._counter, keys=[rkey], args=[int(incr), int(default)])
        except _redis.exceptions.ResponseError as exc:
            text = str(exc)
            if "overflow" in text or ("out of range" in text and self._is_int(rkey)):
                raise OverflowError(f"update_counter on {key!r}: {text}") from None
            raise TypeError(f"update_counter on a non-integer value under key {key!r}") from None

    def _is_int(self, rkey):
        raw = self._client.get(rkey)
        return raw is not None and raw[:1] in b"-0123456789"

    def take(self, key, default=_MISSING):
        """Remove ``key`` and return its value (GETDEL); if absent, return
        ``default``, or raise ``KeyError(key)`` when none is given."""
        raw = self._write((key,), self._client.getdel, self._rkey(key))
        if raw is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._codec.decode(raw)

    def pop(self, key, default=_MISSING):
        """``dict.pop``: ``take`` (one GETDEL)."""
        return self.take(key, default)

    def popitem(self):
        """Remove and return some ``(key, value)`` pair (SCAN, then GETDEL);
        ``KeyError`` when empty."""
        n = len(self._prefix)
        for rkey in self._scan_rkeys():
            key = _key_from_suffix(rkey[n:])
            raw = self._write((key,), self._client.getdel, rkey)
            if raw is not None:
                return key, self._codec.decode(raw)
        raise KeyError("popitem(): table is empty")

    def clear(self):
        """Remove every key of the namespace (SCAN, UNLINK per 1,000 keys):
        not atomic, a key written meanwhile may survive."""
        batch = []
        try:
            for rkey in self._scan_rkeys():
                batch.append(rkey)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
        except _NETWORK_ERRORS as exc:
            raise self._network_error(exc) from exc
        finally:
            if self._near_on:
                with self._mutex:
                    self._near_flush_locked()

    def fetch(self, key, loader):
        """The value for ``key``; if absent, ``loader(key)`` computes it, it is
        stored and returned. Single-flight across processes and hosts: the
        caller that takes the key's lock (SET NX with a TTL of
        ``fetch_lock_ttl`` seconds) runs the loader; the others poll until the
        value appears or the lock goes. The lock is released when the loader
        returns or raises; a loader that raises passes its exception to its
        own caller only (another waiter then takes the lock and loads); a
        process that dies mid-load blocks the others for at most the TTL. A
        loader that fetches its own key gets RuntimeError."""
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        rkey = self._rkey(key)
        lkey = self._fetch_prefix + rkey[len(self._prefix) :]
        held = getattr(_fetch_held, "keys", None)
        if held is None:
            held = _fetch_held.keys = set()
        if (id(self._client), lkey) in held:
            raise RuntimeError(f"fetch({key!r}) called again by its own loader: the load would wait for itself")
        token = os.urandom(16).hex()
        delay = 0.001
        while True:
            self._check_open()
            try:
                won = self._client.set(lkey, token, nx=True, px=self._fetch_ttl_ms)
            except _NETWORK_ERRORS as exc:
                raise self._network_error(exc) from exc
            if won:
                held.add((id(self._client), lkey))
                try:
                    raw = self._client.get(rkey)
                    if raw is not None:
                        return self._fetched(key, raw)
                    value = loader(key)
                    data = self._codec.encode(value)
                    self._write((key,), self._client.set, rkey, data)
                    return value
                except _NETWORK_ERRORS as exc:
                    raise self._network_error(exc) from exc
                finally:
                    held.discard((id(self._client), lkey))
                    try:
                        self._release(keys=[lkey], args=[token])
                    except Exception:  # noqa: BLE001 - the TTL frees it
                        pass
            try:
                raw = self._client.get(rkey)
            except _NETWORK_ERRORS as exc:
                raise self._network_error(exc) from exc
            if raw is not None:
                return self._fetched(key, raw)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _fetched(self, key, raw):
        """A value another caller stored, read by fetch past the near cache:
        the near cache may still hold what this process read before (the
        key's absence, from fetch's first get) until the invalidation of that
        write arrives, so the key is dropped there: this process's next read
        never answers older than what fetch returned."""
        self._near_forget((key,))
        return self._codec.decode(raw)

    # -- the rest -----------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.to_dict() == dict(other.items())

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}({_redacted(self._url)!r}, namespace={self._namespace!r})"

    def __reduce__(self):
        raise TypeError(f"cannot pickle {type(self).__name__}: open a new one on the same server and namespace")

    def close(self):
        """Stop the listener, drop the near cache, close the client this table
        made (one passed in is left open). Idempotent; use after close raises
        ClosedError."""
        if self._closed:
            return
        self._closed = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        with self._mutex:
            self._healthy = False
            self._near_set_lease(0.0)
            self._near_flush_locked()
        if self._owns_client:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001
                pass

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()

    def __del__(self):
        listener = getattr(self, "_listener", None)
        if listener is not None:
            listener.stop(wait=False)


from fastkv import FrozenTable  # noqa: E402  (fastkv is imported by now)


class RedisTable(_core._NearReads, _RedisTableBody):
    __doc__ = """A table on a Redis/Valkey server, shared by processes and hosts.

    ``RedisTable(url_or_client="redis://localhost:6379/0", /, *,
    namespace="fastkv", near_cache=True, near_cache_size=100_000,
    codec="safe", timeout=1.0, fetch_lock_ttl=30.0)``. The shared table API
    and LockedTable's atomic operations, each one Redis command (see the
    module's design note for the mapping). With ``near_cache=True`` reads are
    served locally after the first GET and kept coherent by the server's
    invalidation messages (CLIENT TRACKING, broadcasting mode); a write by
    this process is seen by its next read, a write elsewhere once its
    invalidation arrives; if messages may have been lost the near cache is
    flushed before any further local hit. Every call times out after
    ``timeout`` seconds; network faults raise RedisConnectionError (a
    ConnectionError). ``codec="pickle"`` trusts whoever can write to the
    server. Requires redis-py (``pip install fastkv[redis]``)."""


class _ReferenceRedisTable(_reference._NearReads, _RedisTableBody):
    __doc__ = RedisTable.__doc__


_ReferenceRedisTable.__name__ = _ReferenceRedisTable.__qualname__ = "RedisTable"
