"""The pure-Python reference tables: the executable specification of fastkv.

Every class here has a compiled twin in ``fastkv._core`` with the same name,
signature, docstrings, errors and behaviour. The reference is written for
clarity, not speed, and it mirrors the control flow of the compiled code so a
failure in the compiled table can be stepped through here:

- ``FrozenTable`` holds one immutable snapshot (a ``dict`` that is never
  mutated after it is published). Readers read whichever snapshot is current,
  without any lock. Writers take a writer lock, build a new snapshot, and swap
  it in with one reference assignment.
- ``LockedTable`` is one ``dict`` behind one (non re-entrant) lock, taken by
  every operation. The lock records its holder thread, so a re-entrant use of
  the table from that thread (a key's ``__eq__``/``__hash__`` or a destructor
  touching the table while it is locked) raises ``RuntimeError`` instead of
  deadlocking. Values removed or replaced are dropped after the lock is
  released, so their destructors run outside it.
- ``OwnerTable`` and ``Agent`` share one owner engine (``_OwnerCore``): a
  ``queue.SimpleQueue`` of requests drained in order by one daemon owner
  thread; a caller that needs an answer waits on a per-request
  ``threading.Event``. The compiled engine replaces both with C primitives.

All four are registered with ``collections.abc`` (the compiled classes are
``cdef class``es and cannot inherit the ABCs, so the reference does not
either): FrozenTable is a ``Mapping``, LockedTable and OwnerTable are
``MutableMapping``s.
"""

import atexit
import itertools
import logging
import os
import queue
import reprlib
import sys
import threading
import types
import weakref
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

from fastkv._errors import ClosedError

__all__ = ["Agent", "ClosedError", "FrozenTable", "LockedTable", "OwnerTable"]

_logger = logging.getLogger("fastkv")
_get_ident = threading.get_ident


class _Missing:
    """Sentinel for "no default given" / "no such key"."""

    __slots__ = ()

    def __repr__(self):
        return "<missing>"


_MISSING = _Missing()


# ---------------------------------------------------------------------------
# Views and the parts of the API every table shares
# ---------------------------------------------------------------------------


class _SnapshotValuesView(ValuesView):
    """``ValuesView`` whose iteration walks one snapshot of the table (the
    abc's own iterates the keys and looks each one up again, which can miss a
    key deleted meanwhile)."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping.to_dict().values())


class _SnapshotItemsView(ItemsView):
    """``ItemsView`` whose iteration walks one snapshot of the table."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping.to_dict().items())


class _TableAPI:
    """The shared API that every table derives from its own ``to_dict``,
    ``__len__``, ``__iter__`` and ``__contains__``."""

    __slots__ = ()

    __hash__ = None  # type: ignore[assignment]  # mutable (or replaceable) content

    __class_getitem__ = classmethod(types.GenericAlias)

    def keys(self):
        """A live, set-like view of the keys (``collections.abc.KeysView``);
        each iteration walks a snapshot taken when it starts."""
        return KeysView(self)

    def values(self):
        """A live view of the values (``collections.abc.ValuesView``); each
        iteration walks a snapshot taken when it starts (O(n) copy)."""
        return _SnapshotValuesView(self)

    def items(self):
        """A live, set-like view of the ``(key, value)`` pairs
        (``collections.abc.ItemsView``); each iteration walks a snapshot taken
        when it starts (O(n) copy)."""
        return _SnapshotItemsView(self)

    def __eq__(self, other):
        """Equal to any ``collections.abc.Mapping`` with equal items, as dict
        compares; ``NotImplemented`` for anything else. O(n)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        mine = self.to_dict()
        if isinstance(other, dict):
            return mine == other
        if len(mine) != len(other):
            return False
        return mine == dict(other.items())

    @reprlib.recursive_repr()
    def __repr__(self):
        return f"{type(self).__name__}({self.to_dict()!r})"

    def close(self):
        """Nothing to stop: a no-op, the table stays usable. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return None


def _collect(data, kwargs):
    """``dict(data, **kwargs)``: the constructor/``update`` argument rules of
    dict (a mapping is anything with ``keys()``, else an iterable of pairs),
    evaluated before any lock is taken so a bad argument changes nothing."""
    if kwargs:
        return dict(data, **kwargs)
    return dict(data)


# ---------------------------------------------------------------------------
# FrozenTable
# ---------------------------------------------------------------------------


class FrozenTable(_TableAPI):
    """A read-optimized table replaced whole on every write (the BEAM's
    ``:persistent_term`` holding a map).

    ``FrozenTable(data=(), /, **kwargs)`` is built like ``dict(...)``.
    Reads never block and always see one complete snapshot; writes copy the
    whole table (O(n)) and swap the new snapshot in atomically, so readers in
    flight keep the snapshot they started with. Writers are serialized by a
    writer lock; a key whose ``__eq__`` writes to the same table while it is
    being written raises ``RuntimeError``. It is a ``collections.abc.Mapping``:
    there is no ``t[k] = v``, writes are spelled ``put`` / ``delete`` /
    ``put_many``. Key semantics are exactly dict's.
    """

    __slots__ = ("_snap", "_write_lock", "_writer", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._snap = {}  # the published snapshot: never mutated once published
        self._write_lock = threading.Lock()
        self._writer = 0  # ident of the thread holding _write_lock, 0 if none
        return self

    def __init__(self, data=(), /, **kwargs):
        self.put_many(_collect(data, kwargs))

    # -- the writer lock -----------------------------------------------------

    def _write_enter(self):
        me = _get_ident()
        if self._writer == me:
            raise RuntimeError(
                f"re-entrant write to a {type(self).__name__} from the thread "
                "that is writing it (a key's __eq__/__hash__ or a destructor "
                "wrote to the table during a write)"
            )
        self._write_lock.acquire()
        self._writer = me

    def _write_leave(self):
        self._writer = 0
        self._write_lock.release()

    def _publish(self, snap):
        """Swap in ``snap`` (the caller holds the writer lock); returns the old
        snapshot, which the caller drops after releasing the lock."""
        old = self._snap
        self._snap = snap
        return old

    # -- reads: no lock, one snapshot -----------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), never blocks."""
        return self._snap[key]

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. O(1), never blocks."""
        return self._snap.get(key, default)

    def __contains__(self, key):
        """``key in t``. O(1), never blocks."""
        return key in self._snap

    def __len__(self):
        """Number of keys in the current snapshot. O(1)."""
        return len(self._snap)

    def __iter__(self):
        """Iterate the keys of the snapshot current when iteration starts
        (insertion order). O(1) to start; never raises "changed size"."""
        return iter(self._snap)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, all read from one snapshot.
        O(len(keys)), never blocks."""
        snap = self._snap
        return [snap.get(key, default) for key in keys]

    def to_dict(self):
        """A new ``dict`` with the current snapshot's items. O(n) copy."""
        return dict(self._snap)

    def copy(self):
        """An independent ``FrozenTable`` (never a subclass, as dict.copy)
        with the same items. O(1): it shares the immutable snapshot."""
        new = FrozenTable()
        new._snap = self._snap
        return new

    # -- writes: copy, then swap ----------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key``: copies the table (O(n)) and swaps
        the new snapshot in atomically. Returns None."""
        self._write_enter()
        try:
            snap = dict(self._snap)
            snap[key] = value
            old = self._publish(snap)
        finally:
            self._write_leave()
        del old  # the previous snapshot is dropped outside the writer lock

    def delete(self, key):
        """Remove ``key``; True if it was there. O(n) copy when it was, O(1)
        when it was not (nothing is published then)."""
        self._write_enter()
        try:
            if key not in self._snap:
                return False
            snap = dict(self._snap)
            del snap[key]
            old = self._publish(snap)
        finally:
            self._write_leave()
        del old
        return True

    def put_many(self, mapping_or_pairs):
        """Store many items at the cost of one copy (O(n + m)), published as
        one snapshot: readers see all of them or none. The argument is a
        mapping or an iterable of pairs, read completely before the table is
        touched (a bad argument changes nothing)."""
        items = _collect(mapping_or_pairs, None)
        self._write_enter()
        try:
            snap = dict(self._snap)
            snap.update(items)
            old = self._publish(snap)
        finally:
            self._write_leave()
        del old


def _frozen_from_dict(snap):
    """A reference FrozenTable publishing ``snap`` (a dict nobody else holds)."""
    table = FrozenTable()
    table._snap = snap
    return table


# ---------------------------------------------------------------------------
# LockedTable
# ---------------------------------------------------------------------------


class _Flight:
    """One in-flight ``fetch`` load: the leader thread runs the loader, the
    waiters wait on ``done``."""

    __slots__ = ("done", "value", "error", "leader")

    def __init__(self, leader):
        self.done = threading.Event()
        self.value = None
        self.error = None
        self.leader = leader


class LockedTable(_TableAPI):
    """A table shared by threads, every operation atomic (the BEAM's public
    ``:ets`` set, read and written directly).

    ``LockedTable(data=(), /, **kwargs)`` is built like ``dict(...)``. Every
    operation, compound ones included (``insert_new``, ``update_counter``,
    ``take``, ``setdefault``, ``pop``, ``put_many``), takes the table's one
    lock, so it is atomic across threads; reads and writes are O(1). The lock is
    not re-entrant: a key's ``__eq__``/``__hash__`` (or a destructor) that uses
    the same table while the calling thread holds its lock gets
    ``RuntimeError`` instead of a deadlock. Values that a write removes or
    replaces are released after the lock is, so their destructors never run
    under it. It is a full ``collections.abc.MutableMapping``; key semantics
    are exactly dict's.
    """

    __slots__ = ("_data", "_lock", "_holder", "_flights", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._data = {}
        self._lock = threading.Lock()
        self._holder = 0  # ident of the thread holding _lock, 0 if none
        self._flights = {}  # key -> _Flight, for fetch single-flight
        return self

    def __init__(self, data=(), /, **kwargs):
        self.put_many(_collect(data, kwargs))

    # -- the lock ---------------------------------------------------------------

    def _enter(self):
        me = _get_ident()
        if self._holder == me:
            raise RuntimeError(
                f"re-entrant use of a {type(self).__name__} from the thread "
                "holding its lock (a key's __eq__/__hash__ or a destructor used "
                "the table during an operation on it)"
            )
        self._lock.acquire()
        self._holder = me

    def _leave(self):
        self._holder = 0
        self._lock.release()

    # -- reads ----------------------------------------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), atomic."""
        self._enter()
        try:
            return self._data[key]
        finally:
            self._leave()

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. O(1), atomic."""
        self._enter()
        try:
            return self._data.get(key, default)
        finally:
            self._leave()

    def __contains__(self, key):
        """``key in t``. O(1), atomic."""
        self._enter()
        try:
            return key in self._data
        finally:
            self._leave()

    def __len__(self):
        """Number of keys. O(1)."""
        self._enter()
        try:
            return len(self._data)
        finally:
            self._leave()

    def __iter__(self):
        """Iterate the keys of a snapshot taken atomically when iteration
        starts (O(n) copy of the keys); never raises "changed size"."""
        self._enter()
        try:
            keys = list(self._data)
        finally:
            self._leave()
        return iter(keys)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, read atomically under one
        lock hold. ``keys`` is read completely before the lock is taken."""
        keys = list(keys)
        self._enter()
        try:
            data = self._data
            return [data.get(key, default) for key in keys]
        finally:
            self._leave()

    def to_dict(self):
        """A new ``dict`` with the items, copied atomically. O(n)."""
        self._enter()
        try:
            return dict(self._data)
        finally:
            self._leave()

    def copy(self):
        """An independent ``LockedTable`` (never a subclass, as dict.copy)
        with the same items. O(n)."""
        new = LockedTable()
        new._data = self.to_dict()
        return new

    def snapshot(self):
        """An immutable ``FrozenTable`` (of this implementation) holding the
        items at one instant. O(n) copy."""
        return _frozen_from_dict(self.to_dict())

    def select(self, predicate):
        """``[(k, v), ...]`` for which ``predicate(k, v)`` is true, in
        insertion order. The items are copied atomically (O(n)) and the
        predicate runs over that snapshot, never under the lock, so it may use
        the table."""
        self._enter()
        try:
            items = list(self._data.items())
        finally:
            self._leave()
        return [(key, value) for key, value in items if predicate(key, value)]

    def info(self):
        """``{"size": number of keys, "memory": bytes of the table's own
        structure (not counting the keys and values it refers to)}``."""
        self._enter()
        try:
            size = len(self._data)
            memory = sys.getsizeof(self._data)
        finally:
            self._leave()
        return {"size": size, "memory": memory + sys.getsizeof(self)}

    # -- writes -----------------------------------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``). O(1), atomic;
        a replaced value is released after the lock."""
        self._enter()
        try:
            data = self._data
            old = data.get(key, _MISSING)
            data[key] = value
        finally:
            self._leave()
        del old

    __setitem__ = put

    def delete(self, key):
        """Remove ``key``; True if it was there. O(1), atomic."""
        self._enter()
        try:
            old = self._data.pop(key, _MISSING)
        finally:
            self._leave()
        return old is not _MISSING

    def __delitem__(self, key):
        """``del t[key]``: remove ``key``, or ``KeyError(key)``. O(1), atomic."""
        self._enter()
        try:
            old = self._data.pop(key, _MISSING)
        finally:
            self._leave()
        if old is _MISSING:
            raise KeyError(key)

    def put_many(self, mapping_or_pairs):
        """Store many items under one lock hold: other threads see all of them
        or none. The argument (a mapping or an iterable of pairs) is read
        completely before the lock is taken, so a bad argument changes
        nothing. O(m)."""
        items = _collect(mapping_or_pairs, None)
        self._enter()
        try:
            data = self._data
            old = [data[key] for key in items if key in data]
            data.update(items)
        finally:
            self._leave()
        del old

    def update(self, other=(), /, **kwargs):
        """``dict.update``: like ``put_many(dict(other, **kwargs))``, atomic."""
        self.put_many(_collect(other, kwargs))

    def insert_new(self, key, value):
        """Store ``value`` only if ``key`` is absent; True if it was stored.
        O(1), atomic (ETS ``insert_new``)."""
        self._enter()
        try:
            data = self._data
            if key in data:
                return False
            data[key] = value
            return True
        finally:
            self._leave()

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it.
        O(1), atomic."""
        self._enter()
        try:
            return self._data.setdefault(key, default)
        finally:
            self._leave()

    def update_counter(self, key, incr=1, default=0):
        """Add ``incr`` to the integer under ``key`` and return the new value;
        a missing key starts from ``default`` (so it stores ``default + incr``).
        O(1), atomic (ETS ``update_counter``). ``TypeError``, table unchanged,
        when the stored value, ``default`` or ``incr`` is not an ``int``
        (``bool``, an ``int`` subclass, counts as one)."""
        if not isinstance(incr, int):
            raise TypeError(f"update_counter increment must be an int, not {type(incr).__name__}")
        self._enter()
        try:
            data = self._data
            current = data.get(key, _MISSING)
            if current is _MISSING:
                current = default
                if not isinstance(current, int):
                    raise TypeError(
                        f"update_counter default must be an int, not {type(current).__name__}"
                    )
            elif not isinstance(current, int):
                raise TypeError(
                    f"update_counter on a non-integer value ({type(current).__name__}) "
                    f"under key {key!r}"
                )
            new = int.__add__(current, incr)  # exact int arithmetic, no user code
            data[key] = new
            return new
        finally:
            self._leave()

    def take(self, key, default=_MISSING):
        """Remove ``key`` and return its value (ETS ``take``); if absent,
        return ``default``, or raise ``KeyError(key)`` when none is given.
        O(1), atomic."""
        self._enter()
        try:
            value = self._data.pop(key, _MISSING)
        finally:
            self._leave()
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def pop(self, key, default=_MISSING):
        """``dict.pop``: remove ``key`` and return its value, else ``default``,
        else ``KeyError(key)``. O(1), atomic."""
        return self.take(key, default)

    def popitem(self):
        """Remove and return the last inserted ``(key, value)`` pair (LIFO);
        ``KeyError`` when empty. O(1), atomic."""
        self._enter()
        try:
            if not self._data:
                raise KeyError("popitem(): table is empty")
            return self._data.popitem()
        finally:
            self._leave()

    def clear(self):
        """Remove every item, atomically. O(1) under the lock: the old
        contents are released after it."""
        self._enter()
        try:
            old = self._data
            self._data = {}
        finally:
            self._leave()
        del old

    def fetch(self, key, loader):
        """The value for ``key``; if absent, ``loader(key)`` computes it, it is
        stored and returned. Single-flight: while one caller runs the loader
        for a key, concurrent callers for that key wait for its result instead
        of loading again; other keys are not blocked, and the loader runs
        without the lock. If the loader raises, every waiter gets that
        exception and nothing is stored. A loader that fetches its own key
        (same thread) gets ``RuntimeError``. O(1) when present."""
        hash(key)  # unhashable: TypeError before anything else
        me = _get_ident()
        self._enter()
        try:
            value = self._data.get(key, _MISSING)
            if value is not _MISSING:
                return value
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = _Flight(me)
                self._flights[key] = flight
        finally:
            self._leave()
        if not leader:
            if flight.leader == me:
                raise RuntimeError(
                    f"fetch({key!r}) called again by its own loader: the load would wait for itself"
                )
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            value = loader(key)
        except BaseException as exc:
            flight.error = exc
            self._enter()
            try:
                self._flights.pop(key, None)
            finally:
                self._leave()
            flight.done.set()
            raise
        self._enter()
        try:
            old = self._data.get(key, _MISSING)
            self._data[key] = value
            self._flights.pop(key, None)
        finally:
            self._leave()
        del old
        flight.value = value
        flight.done.set()
        return value


# ---------------------------------------------------------------------------
# OwnerTable and Agent (being written)
# ---------------------------------------------------------------------------


class OwnerTable:
    pass


class Agent:
    pass


Mapping.register(FrozenTable)
MutableMapping.register(LockedTable)
