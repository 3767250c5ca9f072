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
import copyreg
import itertools
import logging
import os
import queue
import reprlib
import sys
import threading
import time
import types
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

from fastkv._errors import ClosedError

__all__ = ["Agent", "ClosedError", "FrozenTable", "LockedTable", "OwnerTable", "SharedTable"]

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


class _TableKeysView(KeysView):
    """``KeysView`` that ``reversed()`` also walks, as it does a dict's keys
    (the table's own ``__reversed__``: one snapshot, last inserted first)."""

    __slots__ = ()

    def __reversed__(self):
        return reversed(self._mapping)


class _SnapshotValuesView(ValuesView):
    """``ValuesView`` whose iteration walks one snapshot of the table (the
    abc's own iterates the keys and looks each one up again, which can miss a
    key deleted meanwhile)."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping.to_dict().values())

    def __reversed__(self):
        return reversed(self._mapping.to_dict().values())


class _SnapshotItemsView(ItemsView):
    """``ItemsView`` whose iteration walks one snapshot of the table."""

    __slots__ = ()

    def __contains__(self, item):
        """As dict's items view: anything but a 2-tuple is not an item
        (False, where the abc's unpacking raised), and the key is looked up
        without a subclass's ``__missing__``."""
        return _items_contain(self._mapping, item)

    def __iter__(self):
        return iter(self._mapping.to_dict().items())

    def __reversed__(self):
        return reversed(self._mapping.to_dict().items())


def _items_contain(mapping, item):
    """``item in mapping.items()`` as dict answers it, for every table's
    items view: False unless ``item`` is a 2-tuple whose key is present
    (looked up through the table's own fastkv class, never a subclass's
    ``__getitem__``/``__missing__``) with an identical or equal value."""
    if not isinstance(item, tuple) or len(item) != 2:
        return False
    key, value = item
    for cls in (FrozenTable, LockedTable, OwnerTable):
        if isinstance(mapping, cls):
            v = cls.get(mapping, key, _MISSING)
            break
    else:
        v = mapping.get(key, _MISSING)
    if v is _MISSING:
        return False
    return v is value or v == value


def _missing(table, key):
    """A miss in ``table[key]``: a subclass's ``__missing__`` (as dict:
    looked up on the type; the fastkv classes have none), else
    ``KeyError(key)``."""
    missing = getattr(type(table), "__missing__", None)
    if missing is None:
        raise KeyError(key)
    return missing(table, key)


class _TableAPI:
    """The shared API that every table derives from its own ``to_dict``,
    ``__len__``, ``__iter__`` and ``__contains__``."""

    __slots__ = ()

    __hash__ = None  # type: ignore[assignment]  # mutable (or replaceable) content

    __class_getitem__ = classmethod(types.GenericAlias)

    def keys(self):
        """A live, set-like view of the keys (``collections.abc.KeysView``);
        each iteration walks a snapshot taken when it starts."""
        return _TableKeysView(self)

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
        """``TypeName({...items...})``; a table that contains itself prints
        ``...`` there, as dict does. O(n)."""
        return f"{type(self).__name__}({self.to_dict()!r})"

    def close(self):
        """Nothing to stop: a no-op, the table stays usable. Idempotent."""

    def __enter__(self):
        """``with table:`` returns the table itself."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """Leaving the ``with`` block calls ``close()``; exceptions propagate."""
        self.close()
        return None

    # -- pickle, copy.copy, copy.deepcopy -------------------------------------------

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as a dict is:
        ``cls.__new__(cls)`` made empty first (a subclass's ``__init__`` is
        not called), then filled by ``__setstate__`` from
        the state ``(items, attrs)`` (``items``: the flat list
        ``["fastkv.items", k0, v0, k1, v1, ...]``, no dict built; ``attrs``:
        a subclass instance's ``__dict__``), so an item that refers back to
        the table -- the table itself included -- loads as the new table. O(n)."""
        return (copyreg.__newobj__, (type(self),), _reduce_state(self, _flat_items(self.to_dict())))

    def __setstate__(self, state):
        """Load a pickled ``(items, attrs)`` state: ``attrs`` into a
        subclass instance's ``__dict__``, then the items (the flat list
        ``__reduce__`` makes, or a dict or pairs) in one ``put_many`` of the
        table's fastkv class (``_load_items``), never a subclass's override.
        On a table already in use it only adds: keys the state does not name
        are kept."""
        items = _setstate_attrs(self, state)
        if items:
            self._load_items(_state_items(items))

    # -- dict's operators and fromkeys -----------------------------------------------
    # Each table says how a new table of its own fastkv class adopts a dict
    # nobody else holds (``_adopt``) and applies ``put_many`` (``__ior__``).

    def __or__(self, other):
        """``t | other``: a new table of t's fastkv class (never a subclass,
        as ``copy()``) with t's items, then those of ``other``, a
        ``collections.abc.Mapping`` whose values win. O(n + m); t is
        unchanged. ``NotImplemented`` for anything but a mapping."""
        if not isinstance(other, Mapping):
            return NotImplemented
        items = self.to_dict()
        items.update(_collect(other, None))
        return self._adopt(items)

    def __ror__(self, other):
        """``other | t`` for a ``collections.abc.Mapping`` ``other`` that does
        not handle it (a dict): a new table of t's fastkv class with other's
        items, then t's (t's values win). O(n + m)."""
        if not isinstance(other, Mapping):
            return NotImplemented
        items = _collect(other, None)
        items.update(self.to_dict())
        return self._adopt(items)

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """A new table of class ``cls`` (a subclass gets its own, as
        ``dict.fromkeys``) mapping every key of ``iterable`` to ``value`` (the
        same object for all). O(n)."""
        new = cls()  # as dict.fromkeys: cls() with no arguments, then the items
        if isinstance(new, MutableMapping):
            for key in iterable:
                new[key] = value  # a subclass's __setitem__, as dict
        else:
            new._load_items(dict.fromkeys(iterable, value))  # one copy
        return new


def _reduce_state(obj, data):
    """The state every ``__reduce__`` hands pickle and ``copy``: ``(data,
    attrs)``, ``data`` being the items (a table) or the state (an Agent) and
    ``attrs`` a subclass instance's ``__dict__`` (None when absent or empty).
    The object itself is rebuilt empty by the reduce's constructor call, then
    memoized, then given this state by ``__setstate__``: as for a dict, items
    that refer back to it find it in the memo."""
    return (data, getattr(obj, "__dict__", None) or None)


# The items of a pickled table (the state every table's __reduce__ gives,
# see _reduce_state): one flat list ``[_ITEMS_MARK, k0, v0, k1, v1, ...]``,
# which pickle writes and loads without a dict to build. The mark (a str that
# is not a pair) tells it from the states older pickles hold, a dict or a list
# of pairs, which still load as such. Same list in the compiled core.
_ITEMS_MARK = "fastkv.items"


def _flat_items(items):
    """A dict's items as ``[_ITEMS_MARK, k0, v0, ...]``, in order."""
    out = [_ITEMS_MARK]
    for item in items.items():
        out += item
    return out


def _state_items(items):
    """A pickled state's items as what ``put_many`` takes: the marked flat
    list as a dict (later keys winning), anything else (older pickles: a dict
    or pairs) as it is. A marked list of even length (a key without its
    value) is ValueError; an unhashable key TypeError."""
    if type(items) is not list or not items:
        return items
    mark = items[0]
    if not (type(mark) is str and mark == _ITEMS_MARK):
        return items
    n = len(items)
    if n % 2 == 0:
        raise ValueError(
            f"a pickled table's items have a key without a value ({n - 1} after the mark)")
    return dict(zip(items[1::2], items[2::2]))


def _setstate_attrs(obj, state):
    """The first half of every ``__setstate__``: unpack a ``(data, attrs)``
    state (see _reduce_state), update ``obj.__dict__`` with ``attrs``, and
    return ``data`` for the caller to store. A state of another shape raises
    TypeError or ValueError."""
    data, attrs = state
    if attrs:
        obj.__dict__.update(attrs)
    return data


def _collect(data, kwargs):
    """``dict(data, **kwargs)``: the constructor/``update`` argument rules of
    dict (a mapping is anything with ``keys()``, else an iterable of pairs),
    evaluated before any lock is taken so a bad argument changes nothing."""
    if kwargs:
        return dict(data, **kwargs)
    return dict(data)


class _Forks:
    """Forks this process descends from (counted in each child) and the
    thread that made the last one: the only thread a child has."""

    gen = 0
    thread = 0


def _count_fork_in_child():
    _Forks.gen += 1
    _Forks.thread = _get_ident()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_count_fork_in_child)


class _HolderLock:
    """A non re-entrant lock that records the thread holding it, so that the
    holder taking it again raises ``RuntimeError`` instead of deadlocking (a
    key's ``__eq__``/``__hash__`` or a destructor using a table while that
    table's lock is held). ``reentry`` is the error message, with ``{name}``
    standing for the table's type name.

    A lock that another thread held when the process forked (it was inside
    a key's ``__eq__``) is held, in the child, by a thread that does not
    exist there: the first thread that wants it takes it over (a fresh lock),
    as the compiled LockedTable does."""

    __slots__ = ("_lock", "_holder", "_gen", "_reentry")

    def __init__(self, reentry):
        self._lock = threading.Lock()
        self._holder = 0  # ident of the thread holding _lock, 0 if none
        self._gen = 0  # _Forks.gen when it was taken
        self._reentry = reentry

    def acquire(self, table):
        """Take the lock, waiting for another holder; ``RuntimeError`` naming
        ``type(table)`` if the calling thread holds it already."""
        me = _get_ident()
        if not self._lock.acquire(blocking=False):
            holder = self._holder
            if holder and self._gen != _Forks.gen and holder != _Forks.thread:
                self._lock = threading.Lock()  # its holder is in the parent process
                self._lock.acquire()
            elif holder == me:
                raise RuntimeError(self._reentry.format(name=type(table).__name__))
            else:
                self._lock.acquire()
        self._holder = me
        self._gen = _Forks.gen

    def release(self):
        self._holder = 0
        self._lock.release()

    def held(self):
        """True if the calling thread holds the lock."""
        return self._holder == _get_ident()


# ---------------------------------------------------------------------------
# FrozenTable
# ---------------------------------------------------------------------------


_FROZEN_REENTRY = (
    "re-entrant write to a {name} from the thread that is writing it (a key's "
    "__eq__/__hash__ or a destructor wrote to the table during a write)"
)


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

    __slots__ = ("_snap", "_write_lock", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._snap = {}  # the published snapshot: never mutated once published
        self._write_lock = _HolderLock(_FROZEN_REENTRY)
        return self

    def __init__(self, data=(), /, **kwargs):
        FrozenTable.put_many(self, _collect(data, kwargs))  # not a subclass's override

    # -- the writer lock -----------------------------------------------------

    def _publish(self, snap):
        """Swap in ``snap`` (the caller holds the writer lock); returns the old
        snapshot, which the caller drops after releasing the lock."""
        old = self._snap
        self._snap = snap
        return old

    # -- reads: no lock, one snapshot -----------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), never blocks."""
        value = self._snap.get(key, _MISSING)
        if value is _MISSING:
            missing = getattr(type(self), "__missing__", None)  # as dict: subclasses only
            if missing is None:
                raise KeyError(key)
            return missing(self, key)
        return value

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

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over the
        snapshot current when iteration starts (as ``iter``). O(1) to start;
        never raises "changed size"."""
        return reversed(self._snap)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, all read from one snapshot.
        O(len(keys)), never blocks."""
        snap = self._snap
        return [snap.get(key, default) for key in keys]

    def to_dict(self):
        """A new ``dict`` with the current snapshot's items. O(n) copy."""
        return dict(self._snap)

    def __sizeof__(self):
        """Bytes of the table's own structure: the object and its current
        snapshot's hash table (not the keys and values)."""
        return object.__sizeof__(self) + self._snap.__sizeof__()

    def copy(self):
        """An independent ``FrozenTable`` (never a subclass, as dict.copy)
        with the same items. O(1): it shares the immutable snapshot."""
        new = FrozenTable()
        new._snap = self._snap
        return new

    def _adopt(self, items):
        return _frozen_from_dict(items)

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs) -- one copy, one snapshot swap, seen by everyone holding t --
        and t itself is the result (the name is not rebound to a new table)."""
        FrozenTable.put_many(self, other)
        return self

    # -- writes: copy, then swap ----------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key``: copies the table (O(n)) and swaps
        the new snapshot in atomically. Returns None."""
        self._write_lock.acquire(self)
        try:
            snap = dict(self._snap)
            snap[key] = value
            old = self._publish(snap)
        finally:
            self._write_lock.release()
        del old  # the previous snapshot is dropped outside the writer lock

    def delete(self, key):
        """Remove ``key``; True if it was there. O(n) copy when it was, O(1)
        when it was not (nothing is published then)."""
        self._write_lock.acquire(self)
        try:
            if key not in self._snap:
                return False
            snap = dict(self._snap)
            del snap[key]
            old = self._publish(snap)
        finally:
            self._write_lock.release()
        del old
        return True

    def put_many(self, mapping_or_pairs):
        """Store many items at the cost of one copy (O(n + m)), published as
        one snapshot: readers see all of them or none. The argument is a
        mapping or an iterable of pairs, read completely before the table is
        touched (a bad argument changes nothing)."""
        items = _collect(mapping_or_pairs, None)
        self._write_lock.acquire(self)
        try:
            snap = dict(self._snap)
            snap.update(items)
            old = self._publish(snap)
        finally:
            self._write_lock.release()
        del old

    _load_items = put_many  # __setstate__'s one snapshot swap


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


_LOCKED_REENTRY = (
    "re-entrant use of a {name} from the thread holding its lock (a key's "
    "__eq__/__hash__ or a destructor used the table during an operation on it)"
)


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

    __slots__ = ("_data", "_lock", "_flights", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._data = {}
        self._lock = _HolderLock(_LOCKED_REENTRY)
        self._flights = {}  # key -> _Flight, for fetch single-flight
        return self

    def __init__(self, data=(), /, **kwargs):
        LockedTable.put_many(self, _collect(data, kwargs))  # not a subclass's override

    # -- reads ----------------------------------------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), atomic."""
        self._lock.acquire(self)
        try:
            value = self._data.get(key, _MISSING)
        finally:
            self._lock.release()
        if value is _MISSING:
            return _missing(self, key)  # a subclass's __missing__, unlocked
        return value

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. O(1), atomic."""
        self._lock.acquire(self)
        try:
            return self._data.get(key, default)
        finally:
            self._lock.release()

    def __contains__(self, key):
        """``key in t``. O(1), atomic."""
        self._lock.acquire(self)
        try:
            return key in self._data
        finally:
            self._lock.release()

    def __len__(self):
        """Number of keys. O(1)."""
        self._lock.acquire(self)
        try:
            return len(self._data)
        finally:
            self._lock.release()

    def __iter__(self):
        """Iterate the keys of a snapshot taken atomically when iteration
        starts (O(n) copy of the keys); never raises "changed size"."""
        self._lock.acquire(self)
        try:
            keys = list(self._data)
        finally:
            self._lock.release()
        return iter(keys)

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over a
        snapshot taken atomically when iteration starts (as ``iter``); never
        raises "changed size"."""
        self._lock.acquire(self)
        try:
            keys = list(self._data)
        finally:
            self._lock.release()
        return reversed(keys)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, read atomically under one
        lock hold. ``keys`` is read completely before the lock is taken."""
        keys = list(keys)
        self._lock.acquire(self)
        try:
            data = self._data
            return [data.get(key, default) for key in keys]
        finally:
            self._lock.release()

    def to_dict(self):
        """A new ``dict`` with the items, copied atomically. O(n)."""
        self._lock.acquire(self)
        try:
            return dict(self._data)
        finally:
            self._lock.release()

    def __sizeof__(self):
        """Bytes of the table's own structure: the object and its hash table
        (not the keys and values)."""
        return object.__sizeof__(self) + self._data.__sizeof__()

    def copy(self):
        """An independent ``LockedTable`` (never a subclass, as dict.copy)
        with the same items. O(n)."""
        new = LockedTable()
        new._data = self.to_dict()
        return new

    def __copy__(self):
        """``copy.copy(t)``: an independent table of t's own class (as for a
        dict subclass: a subclass's instance ``__dict__`` is copied shallowly).
        O(n)."""
        if type(self) is LockedTable:
            return self.copy()
        new = type(self).__new__(type(self))  # as dict: no subclass __init__
        LockedTable.put_many(new, self.to_dict())
        state = getattr(self, "__dict__", None)
        if state:
            new.__dict__.update(state)
        return new

    def _adopt(self, items):
        new = LockedTable()
        new._data = items
        return new

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs), atomic, and t itself is the result."""
        LockedTable.put_many(self, other)
        return self

    def snapshot(self):
        """An immutable ``FrozenTable`` (of this implementation) holding the
        items at one instant. O(n) copy."""
        return _frozen_from_dict(self.to_dict())

    def select(self, predicate):
        """``[(k, v), ...]`` for which ``predicate(k, v)`` is true, in
        insertion order. The items are copied atomically (O(n)) and the
        predicate runs over that snapshot, never under the lock, so it may use
        the table."""
        self._lock.acquire(self)
        try:
            items = list(self._data.items())
        finally:
            self._lock.release()
        return [(key, value) for key, value in items if predicate(key, value)]

    def info(self):
        """``{"size": number of keys, "memory": bytes of the table's own
        structure (not counting the keys and values it refers to)}``."""
        self._lock.acquire(self)
        try:
            size = len(self._data)
            memory = sys.getsizeof(self)
        finally:
            self._lock.release()
        return {"size": size, "memory": memory}

    # -- writes -----------------------------------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``). O(1), atomic;
        a replaced value is released after the lock."""
        self._lock.acquire(self)
        try:
            data = self._data
            old = data.get(key, _MISSING)
            data[key] = value
        finally:
            self._lock.release()
        del old

    __setitem__ = put

    def delete(self, key):
        """Remove ``key``; True if it was there. O(1), atomic."""
        hash(key)  # TypeError even on an empty table (dict.pop skips the hash)
        self._lock.acquire(self)
        try:
            old = self._data.pop(key, _MISSING)
        finally:
            self._lock.release()
        return old is not _MISSING

    def __delitem__(self, key):
        """``del t[key]``: remove ``key``, or ``KeyError(key)``. O(1), atomic."""
        hash(key)  # TypeError even on an empty table (dict.pop skips the hash)
        self._lock.acquire(self)
        try:
            old = self._data.pop(key, _MISSING)
        finally:
            self._lock.release()
        if old is _MISSING:
            raise KeyError(key)

    def put_many(self, mapping_or_pairs):
        """Store many items under one lock hold: other threads see all of them
        or none. The argument (a mapping or an iterable of pairs) is read
        completely before the lock is taken, so a bad argument changes
        nothing. O(m)."""
        items = _collect(mapping_or_pairs, None)
        self._lock.acquire(self)
        try:
            data = self._data
            # the replaced values die after the release (destructors run
            # unlocked); into an empty table nothing is replaced, and a dict
            # argument's stored hashes are reused by update: no key is hashed
            old = [data[key] for key in items if key in data] if data else None
            data.update(items)
        finally:
            self._lock.release()
        del old

    _load_items = put_many  # __setstate__'s one lock hold

    def update(self, other=(), /, **kwargs):
        """``dict.update``: like ``put_many(dict(other, **kwargs))``, atomic."""
        LockedTable.put_many(self, _collect(other, kwargs))

    def insert_new(self, key, value):
        """Store ``value`` only if ``key`` is absent; True if it was stored.
        O(1), atomic (ETS ``insert_new``)."""
        self._lock.acquire(self)
        try:
            data = self._data
            if key in data:
                return False
            data[key] = value
            return True
        finally:
            self._lock.release()

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it.
        O(1), atomic."""
        self._lock.acquire(self)
        try:
            return self._data.setdefault(key, default)
        finally:
            self._lock.release()

    def update_counter(self, key, incr=1, default=0):
        """Add ``incr`` to the integer under ``key`` and return the new value;
        a missing key starts from ``default`` (so it stores ``default + incr``).
        O(1), atomic (ETS ``update_counter``). ``TypeError``, table unchanged,
        when the stored value, ``default`` or ``incr`` is not an ``int``
        (``bool``, an ``int`` subclass, counts as one)."""
        if not isinstance(incr, int):
            raise TypeError(f"update_counter increment must be an int, not {type(incr).__name__}")
        self._lock.acquire(self)
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
            self._lock.release()

    def take(self, key, default=_MISSING):
        """Remove ``key`` and return its value (ETS ``take``); if absent,
        return ``default``, or raise ``KeyError(key)`` when none is given.
        O(1), atomic."""
        hash(key)  # TypeError even on an empty table (dict.pop skips the hash)
        self._lock.acquire(self)
        try:
            value = self._data.pop(key, _MISSING)
        finally:
            self._lock.release()
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def pop(self, key, default=_MISSING):
        """``dict.pop``: remove ``key`` and return its value, else ``default``,
        else ``KeyError(key)``. O(1), atomic."""
        return LockedTable.take(self, key, default)

    def popitem(self):
        """Remove and return the last inserted ``(key, value)`` pair (LIFO);
        ``KeyError`` when empty. O(1), atomic."""
        self._lock.acquire(self)
        try:
            if not self._data:
                raise KeyError("popitem(): table is empty")
            return self._data.popitem()
        finally:
            self._lock.release()

    def clear(self):
        """Remove every item, atomically. O(1) under the lock: the old
        contents are released after it."""
        self._lock.acquire(self)
        try:
            old = self._data
            self._data = {}
        finally:
            self._lock.release()
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
        self._lock.acquire(self)
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
            self._lock.release()
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
            self._lock.acquire(self)
            try:
                self._flights.pop(key, None)
            finally:
                self._lock.release()
            flight.done.set()
            raise
        self._lock.acquire(self)
        try:
            old = self._data.get(key, _MISSING)
            self._data[key] = value
            self._flights.pop(key, None)
        finally:
            self._lock.release()
        del old
        flight.value = value
        flight.done.set()
        return value


# ---------------------------------------------------------------------------
# The owner engine shared by OwnerTable and Agent
# ---------------------------------------------------------------------------
#
# A request is a tuple ``(fn, args, reply)``: the owner thread runs
# ``fn(*args)``; ``reply`` is a ``_Reply`` the caller waits on (a call), or
# None (a cast: an exception is logged and counted). ``_STOP``, queued by
# close(), ends the owner loop after every request queued before it.
#
# The core never refers to the public table or agent object, so a table that
# is dropped without close() is collected; its ``__del__`` closes the core.
# Open cores are kept in ``_OPEN_CORES`` for the atexit hook and the fork
# handler.

_STOP = object()
_OPEN_CORES = set()  # every core whose owner thread is running
_OPEN_CORES_LOCK = threading.Lock()
_owner_names = itertools.count(1)


class _Reply:
    """The completion of one call: the owner sets ``value`` or ``error``, then
    ``done``; the caller waits on ``done``."""

    __slots__ = ("done", "value", "error")

    def __init__(self):
        self.done = threading.Event()
        self.value = None
        self.error = None


class _OwnerCore:
    """One owner thread and its FIFO request queue.

    ``lock`` guards ``closed`` together with enqueueing: a request is either
    queued before ``_STOP`` (and served) or refused with ClosedError, never
    left waiting behind a stopped owner.
    """

    __slots__ = (
        "kind", "queue", "lock", "closed", "forked", "served", "errors", "thread", "ident",
        "casts_queued", "casts_done", "writers",
    )

    def __init__(self, kind):
        self.kind = kind  # "OwnerTable" or "Agent", for messages
        self.queue = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.closed = False
        self.forked = False
        self.served = 0
        self.errors = 0
        self.ident = 0
        # read-your-writes (protected OwnerTable): casts are numbered 1, 2, ...
        # in queue order (casts_queued, under lock); the owner counts those it
        # applied (casts_done); ``writers`` (None: not tracked) maps a thread
        # ident to the number of its newest cast, set by cast().
        self.casts_queued = 0
        self.casts_done = 0
        self.writers = None
        self.thread = threading.Thread(
            target=_owner_loop,
            args=(self,),
            name=f"fastkv-{kind}-owner-{next(_owner_names)}",
            daemon=True,
        )
        with _OPEN_CORES_LOCK:
            _OPEN_CORES.add(self)
        try:
            self.thread.start()
        except BaseException:
            # no owner (e.g. "can't start new thread"): not registered, closed,
            # as the compiled engine does; the exit hook must not join it
            with _OPEN_CORES_LOCK:
                _OPEN_CORES.discard(self)
            self.closed = True
            raise

    def closed_error(self):
        if self.forked:
            return ClosedError(
                f"this {self.kind} was created before os.fork(): its owner thread "
                "does not exist in the child process"
            )
        return ClosedError(f"this {self.kind} is closed")

    def check_open(self):
        """Raise ClosedError if the owner no longer accepts requests."""
        if self.closed:
            raise self.closed_error()

    def on_owner(self):
        """True when the calling thread is the owner thread itself."""
        return self.ident == _get_ident()

    def cast(self, fn, args):
        """Queue ``fn(*args)`` for the owner; do not wait. O(1). With
        ``writers`` tracked, note it as the calling thread's newest cast
        (not on the owner thread: its reads never wait, see
        own_casts_pending)."""
        with self.lock:
            if self.closed:
                raise self.closed_error()
            self.queue.put((fn, args, None))
            self.casts_queued += 1
            writers = self.writers
            if writers is not None and self.ident != _get_ident():
                if len(writers) >= 8:  # forget threads whose casts are applied
                    done = self.casts_done
                    for ident in [i for i, seq in writers.items() if seq <= done]:
                        del writers[ident]
                writers[_get_ident()] = self.casts_queued

    def own_casts_pending(self):
        """True if a cast the calling thread queued is not applied yet.
        False on the owner thread: its casts queue behind the request it is
        serving, so it could never wait for them."""
        if self.casts_done == self.casts_queued or self.ident == _get_ident():
            return False
        writers = self.writers
        return writers is not None and writers.get(_get_ident(), 0) > self.casts_done

    def call(self, fn, args):
        """Run ``fn(*args)`` on the owner after everything queued before it,
        wait for it, return its result or raise its exception. Served inline
        when the caller is the owner thread itself (it cannot wait for
        itself)."""
        if self.ident == _get_ident():
            if self.forked:
                raise self.closed_error()
            return fn(*args)
        reply = _Reply()
        with self.lock:
            if self.closed:
                raise self.closed_error()
            self.queue.put((fn, args, reply))
        reply.done.wait()
        if reply.error is not None:
            error = reply.error
            reply.error = None
            raise error
        return reply.value

    def stop(self):
        """Stop accepting requests and queue ``_STOP`` behind the queued ones.
        True if this call did it (False: already closed)."""
        with self.lock:
            if self.closed:
                return False
            self.closed = True
            self.queue.put(_STOP)
        return True

    def close(self, timeout=None):
        """stop(), then wait up to ``timeout`` seconds (None: no limit) for the
        owner to apply every queued request and exit. True if it has."""
        self.stop()
        if self.forked:
            return True  # no owner in this process: nothing left to run
        if self.ident == _get_ident():
            return False  # the owner cannot wait for itself to finish
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _owner_loop(core):
    """The owner thread: serve requests in arrival order until ``_STOP``."""
    core.ident = _get_ident()
    get = core.queue.get
    while True:
        request = get()
        if request is _STOP:
            break
        fn, args, reply = request
        request = None
        try:
            result = fn(*args)
        except BaseException as exc:
            if reply is None:
                core.errors += 1
                _logger.exception("a cast on %s raised", core.thread.name)
            else:
                reply.error = exc
            exc = None
        else:
            if reply is not None:
                reply.value = result
            result = None
        core.served += 1
        if reply is not None:
            reply.done.set()
        else:
            core.casts_done += 1  # after the cast's store: readers may go direct
        fn = args = reply = None  # drop references before waiting again
    core.ident = 0  # no thread is this owner any more (idents are reused)
    with _OPEN_CORES_LOCK:
        _OPEN_CORES.discard(core)


def _close_open_owners_at_exit():
    """atexit: close every running owner (open ones, and closed ones still
    draining their queue), applying its queued casts first.

    Never hangs: the wait for an owner goes on while it makes progress and is
    abandoned after 5 seconds without any request served."""
    with _OPEN_CORES_LOCK:
        cores = list(_OPEN_CORES)
    for core in cores:
        core.stop()
    for core in cores:
        if core.forked or core.on_owner():
            continue
        served = core.served
        while not core.close(timeout=5.0):
            if core.served == served:
                break  # stuck for 5 s: give up, the thread is a daemon
            served = core.served


def _after_fork_in_child():
    """os.fork() child: the owner threads did not survive; every OwnerTable
    and Agent created before the fork raises ClosedError from now on."""
    global _OPEN_CORES_LOCK
    _OPEN_CORES_LOCK = threading.Lock()  # may have been held by a parent thread
    cores = list(_OPEN_CORES)
    _OPEN_CORES.clear()
    for core in cores:
        core.lock = threading.Lock()
        core.closed = True
        core.forked = True


atexit.register(_close_open_owners_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------
# OwnerTable
# ---------------------------------------------------------------------------

_ACCESS_LEVELS = ("private", "protected")


class OwnerTable(_TableAPI):
    """A table owned by one thread, which performs every operation in arrival
    order (the BEAM's private/protected ``:ets`` behind a GenServer).

    ``OwnerTable(data=(), /, access="private", **kwargs)`` is built like
    ``dict(...)`` and starts a daemon owner thread. The data lives in a
    ``LockedTable`` of the same implementation, touched only by the owner
    (``access="private"``) or read directly by any thread while writes stay
    serialized through the owner (``access="protected"``). A protected
    table reads its own writes: a thread's direct read sees every write that
    thread queued before it (waiting, only then, for the owner to apply
    them); other threads see a write once the owner has applied it, always
    in queue order.

    Reads (``get``, ``t[k]``, ``in``, ``len``, iteration, ``to_dict``, ...)
    are calls: the caller waits for the owner's answer, a cross-thread round
    trip. ``put`` / ``t[k] = v`` / ``delete`` / ``put_many`` / ``update`` /
    ``clear`` are casts: queued, the caller does not wait (so ``delete``
    returns None). ``del t[k]``, ``pop``, ``popitem`` and ``setdefault``
    answer something, so they are calls. Requests form one FIFO: one caller's cast followed by its call
    always sees the cast. Keys are hashed by the caller before queueing
    (unhashable: ``TypeError`` at the call site, casts included). A request
    made on the owner thread itself is served inline. After ``close()``, or in
    the child of an ``os.fork()``, every method raises ``ClosedError``.
    """

    __slots__ = ("_core", "_storage", "_protected", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._storage = LockedTable()
        self._protected = False
        self._core = _OwnerCore("OwnerTable")
        return self

    def __init__(self, data=(), /, access="private", **kwargs):
        if access not in _ACCESS_LEVELS:
            raise ValueError(f'access must be "private" or "protected", not {access!r}')
        items = _collect(data, kwargs)
        self._core.check_open()
        self._protected = access == "protected"
        if self._protected and self._core.writers is None:
            self._core.writers = {}  # casts note their thread from now on
        self._storage.put_many(items)  # no request can be queued yet

    def __del__(self):
        core = getattr(self, "_core", None)
        if core is not None:
            core.stop()  # the owner applies what is queued, then exits

    # -- reads: calls, or direct under access="protected" ---------------------

    def _call(self, fn, args):
        """A call to the owner, refused (RuntimeError) when the calling thread
        holds the storage lock: under ``access="protected"`` a key's
        ``__eq__``/``__hash__`` or a destructor running during a direct read
        would otherwise wait for an owner that waits for that lock."""
        if self._storage._lock.held():
            raise RuntimeError(
                f"re-entrant call to an {type(self).__name__} from a thread that "
                "is reading it directly (a key's __eq__/__hash__ or a destructor "
                "made a request during a protected read)"
            )
        return self._core.call(fn, args)

    def _read(self, fn, *args):
        """``fn(*args)`` read directly under ``access="protected"`` (after
        waiting, read-your-writes, for the owner to apply the calling
        thread's unapplied casts: a sync), else a call to the owner."""
        if self._protected:
            core = self._core
            core.check_open()
            if core.own_casts_pending():
                self._call(_noop, ())
            return fn(*args)
        return self._call(fn, args)

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. A call (round trip to
        the owner); a direct O(1) read under ``access="protected"``."""
        hash(key)
        value = self._read(self._storage.get, key, _MISSING)
        if value is _MISSING:
            return _missing(self, key)  # a subclass's __missing__, on the caller
        return value

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. A call; a direct O(1) read
        under ``access="protected"``."""
        hash(key)
        return self._read(self._storage.get, key, default)

    def __contains__(self, key):
        """``key in t``. A call; direct under ``access="protected"``."""
        hash(key)
        return self._read(self._storage.__contains__, key)

    def __len__(self):
        """Number of keys. A call; direct under ``access="protected"``."""
        return self._read(self._storage.__len__)

    def __iter__(self):
        """Iterate the keys of a snapshot taken (by the owner, or directly
        under ``access="protected"``) when iteration starts. O(n) copy."""
        return iter(self._read(_keys_list, self._storage))

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over a
        snapshot taken (by the owner, or directly under
        ``access="protected"``) when iteration starts, as ``iter``. O(n) copy."""
        return reversed(self._read(_keys_list, self._storage))

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, all read in one request (one
        round trip). Keys are hashed before it is queued."""
        keys = list(keys)
        for key in keys:
            hash(key)
        return self._read(self._storage.get_many, keys, default)

    def to_dict(self):
        """A new ``dict`` with the items. One call (round trip), O(n) copy."""
        return self._read(self._storage.to_dict)

    def copy(self):
        """An independent ``OwnerTable`` (never a subclass) with the same items
        and access level, and its own owner thread. O(n)."""
        access = "protected" if self._protected else "private"
        return OwnerTable(self.to_dict(), access=access)

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as the items (the
        flat list ``["fastkv.items", k0, v0, ...]`` of a copy the owner makes
        in one call) and the access level: loading starts a new, empty
        OwnerTable with its own owner thread (``cls.__new__(cls)``, as for a
        dict subclass: a subclass's ``__init__`` is not called), then fills
        it (``__setstate__``), so an item that refers back to the table -- the
        table itself included -- loads as the new table, as in a dict.
        ``ClosedError`` once closed."""
        access = "protected" if self._protected else "private"
        return (copyreg.__newobj__, (type(self),),
                _reduce_state(self, _flat_items(self.to_dict())) + (access,))

    def __setstate__(self, state):
        """Load a pickled ``(items, attrs, access)`` state (``access`` may be
        absent: the table keeps its own): the access level, ``attrs`` into a
        subclass instance's ``__dict__``, then the items in one ``put_many``
        cast, never a subclass's override, waited for (the table holds them
        when this returns, under either access). On a table already in use
        it only adds: keys the state does not name are kept."""
        if isinstance(state, tuple) and len(state) == 3:
            access = state[2]
            if access not in _ACCESS_LEVELS:
                raise ValueError(f"bad access level in a pickled OwnerTable: {access!r}")
            state = state[:2]
            if access == "protected" and self._core.writers is None:
                self._core.writers = {}
            self._protected = access == "protected"
        _TableAPI.__setstate__(self, state)

    def _load_items(self, items):
        """``__setstate__``'s store: one ``put_many`` cast, waited for (the
        table holds the items when it returns, under either access)."""
        OwnerTable.put_many(self, items)
        OwnerTable.sync(self)

    def _adopt(self, items):
        return OwnerTable(items, access="protected" if self._protected else "private")

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs, read and hashed first), one cast as ``update``; t itself is
        the result."""
        OwnerTable.put_many(self, other)
        return self

    def __repr__(self):
        """``OwnerTable({...})`` (one call to the owner), or
        ``OwnerTable(<closed>)`` once closed: repr never raises ClosedError."""
        if self._core.closed:
            return f"{type(self).__name__}(<closed>)"
        return _TableAPI.__repr__(self)

    # -- writes: casts ------------------------------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``): a cast, queued
        for the owner; the caller does not wait. ``key`` is hashed first."""
        hash(key)
        self._core.cast(self._storage.put, (key, value))

    __setitem__ = put

    def put_many(self, mapping_or_pairs):
        """Store many items in one cast, applied atomically by the owner. The
        argument is read (and every key hashed) before it is queued."""
        items = _collect(mapping_or_pairs, None)
        self._core.cast(self._storage.put_many, (items,))

    def update(self, other=(), /, **kwargs):
        """``dict.update`` as one cast (see ``put_many``)."""
        OwnerTable.put_many(self, _collect(other, kwargs))

    def clear(self):
        """Remove every item: a cast."""
        self._core.cast(self._storage.clear, ())

    def delete(self, key):
        """Remove ``key``: a cast, queued for the owner; the caller does not
        wait, so it cannot learn whether the key was there and gets None
        (``pop(key, None)`` and ``del t[key]`` are calls that tell). ``key``
        is hashed first."""
        hash(key)
        self._core.cast(self._storage.delete, (key,))

    # -- writes that answer: calls --------------------------------------------

    def __delitem__(self, key):
        """``del t[key]``: remove ``key`` or raise ``KeyError(key)``. A call."""
        hash(key)
        self._call(self._storage.__delitem__, (key,))

    def pop(self, key, default=_MISSING):
        """``dict.pop``: remove ``key`` and return its value, else ``default``,
        else ``KeyError(key)``. A call."""
        hash(key)
        return self._call(self._storage.take, (key, default))

    def popitem(self):
        """Remove and return the last inserted ``(key, value)`` pair;
        ``KeyError`` when empty. A call."""
        return self._call(self._storage.popitem, ())

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it.
        A call."""
        hash(key)
        return self._call(self._storage.setdefault, (key, default))

    # -- the owner ------------------------------------------------------------------

    def call(self, fn, /, *args):
        """Run ``fn(table, *args)`` on the owner thread, after everything
        queued before it, and return its result; ``table`` is the
        ``LockedTable`` holding the data. An exception reaches the caller and
        the owner keeps serving (whatever ``fn`` changed before raising stays
        changed)."""
        return self._call(fn, (self._storage,) + args)

    def sync(self):
        """Wait until every request queued before this one has been applied.
        A no-op on the owner thread itself."""
        self._call(_noop, ())

    def close(self, timeout=None):
        """Stop accepting requests, let the owner apply everything already
        queued, then stop it. Waits up to ``timeout`` seconds (None: until
        done); True if the owner finished in time. Idempotent; afterwards
        every method raises ``ClosedError``. Called during a direct read of
        this table by the same thread (a key's ``__eq__``/``__hash__`` or a
        destructor under ``access="protected"``), it closes without waiting
        -- the owner needs that read to end first -- and returns False unless
        the owner had already finished."""
        if self._storage._lock.held():
            return self._core.close(timeout=0)  # waiting would deadlock: the owner
            # waits for the storage lock this thread holds
        return self._core.close(timeout)

    def info(self):
        """``{"size": keys, "queue": requests waiting, "served": requests
        served, "errors": casts that raised, "access": "private" or
        "protected"}``. Read without a round trip."""
        core = self._core
        core.check_open()
        info = {"size": 0, "queue": core.queue.qsize(), "served": core.served,
                "errors": core.errors}
        # never waits for the storage's lock (the owner may hold it while a
        # key's __eq__ runs): the count as of the last completed change
        info["size"] = len(self._storage._data)
        info["access"] = "protected" if self._protected else "private"
        return info


def _keys_list(table):
    return list(table)


def _noop():
    return None


def _identity(x):
    return x


def _replaced(state, new):
    return new


# ---------------------------------------------------------------------------
# Agent
# ---------------------------------------------------------------------------


class _AgentState:
    """The box holding an Agent's state, touched only on its owner thread."""

    __slots__ = ("state",)

    def __init__(self, state):
        self.state = state


def _agent_get(box, fn, args):
    return fn(box.state, *args)


def _agent_update(box, fn, args):
    box.state = fn(box.state, *args)


def _agent_get_and_update(box, fn, args):
    reply, new_state = fn(box.state, *args)
    box.state = new_state
    return reply


class Agent:
    """Any state, changed only by functions run on its owner thread (Elixir's
    ``Agent``: a GenServer holding a value).

    ``Agent(state=None)`` starts a daemon owner thread. Every request runs on
    that thread in arrival order: ``get``, ``update`` and ``get_and_update``
    wait for the answer (a cross-thread round trip), ``cast`` does not. An
    exception in a waited-for function reaches the caller and leaves the state
    unchanged; an exception in a cast is logged on the ``fastkv`` logger and
    counted in ``info()["errors"]``. A request made on the owner thread itself
    is served inline. After ``close()``, or in the child of an ``os.fork()``,
    every method raises ``ClosedError``.
    """

    __slots__ = ("_core", "_box", "__weakref__")

    __class_getitem__ = classmethod(types.GenericAlias)

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._box = _AgentState(None)
        self._core = _OwnerCore("Agent")
        return self

    def __init__(self, state=None):
        self._core.check_open()
        self._box.state = state  # no request can be queued yet

    def __del__(self):
        core = getattr(self, "_core", None)
        if core is not None:
            core.stop()

    def get(self, fn, /, *args):
        """Return ``fn(state, *args)``, run on the owner. A call."""
        return self._core.call(_agent_get, (self._box, fn, args))

    def update(self, fn, /, *args):
        """``state = fn(state, *args)`` on the owner; waits until it is done.
        Returns None. If ``fn`` raises, the caller gets it, state unchanged."""
        self._core.call(_agent_update, (self._box, fn, args))

    def get_and_update(self, fn, /, *args):
        """``fn(state, *args)`` returns ``(reply, new_state)``: the state
        becomes ``new_state`` and ``reply`` is returned. A call; if ``fn``
        raises or does not return a pair, the caller gets the error and the
        state is unchanged."""
        return self._core.call(_agent_get_and_update, (self._box, fn, args))

    def cast(self, fn, /, *args):
        """Queue ``state = fn(state, *args)``; the caller does not wait. An
        exception is logged on the ``fastkv`` logger and counted in
        ``info()["errors"]``; the state stays as it was."""
        self._core.cast(_agent_update, (self._box, fn, args))

    def sync(self):
        """Wait until every request queued before this one has been applied.
        A no-op on the owner thread itself."""
        self._core.call(_noop, ())

    def close(self, timeout=None):
        """Stop accepting requests, let the owner apply everything already
        queued, then stop it. Waits up to ``timeout`` seconds (None: until
        done); True if the owner finished in time. Idempotent; afterwards
        every method raises ``ClosedError``."""
        return self._core.close(timeout)

    def info(self):
        """``{"queue": requests waiting, "served": requests served,
        "errors": casts that raised}``. Read without a round trip."""
        core = self._core
        core.check_open()
        return {"queue": core.queue.qsize(), "served": core.served, "errors": core.errors}

    def __enter__(self):
        """``with agent:`` returns the agent itself."""
        return self

    def __exit__(self, exc_type, exc, tb):
        """Leaving the ``with`` block calls ``close()`` (queued casts are
        applied first); exceptions propagate."""
        self.close()
        return None

    def __repr__(self):
        """``<Agent (open)>`` or ``<Agent (closed)>``: no round trip, the
        state itself is not shown."""
        state = "closed" if self._core.closed else "open"
        return f"<{type(self).__name__} ({state})>"

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as the state (read by
        one call to the owner): loading starts a new Agent with its own owner
        thread, then gives it the state (``__setstate__``), so a state that
        refers back to the agent loads referring to the new one. ``ClosedError``
        once closed."""
        state = self._core.call(_agent_get, (self._box, _identity, ()))
        return (copyreg.__newobj__, (type(self),), _reduce_state(self, state))

    def __setstate__(self, state):
        """Load a pickled ``(state, attrs)`` state: ``attrs`` into a
        subclass instance's ``__dict__``, then the agent's state becomes
        ``state`` (one update, waited for: it replaces whatever the agent
        held)."""
        value = _setstate_attrs(self, state)
        self._core.call(_agent_update, (self._box, _replaced, (value,)))


Mapping.register(FrozenTable)
MutableMapping.register(LockedTable)
MutableMapping.register(OwnerTable)


# ---------------------------------------------------------------------------
# SharedTable: one snapshot file in shared memory for every process. The file
# protocol (control file, locks, publish, reclamation) is fastkv._shm, shared
# with the compiled table; here is the format's Python side, mirroring
# _shared.pxi: the same hash, checksum, encoding and bounds-checked decoding.
# ---------------------------------------------------------------------------

import mmap as _mmap
import pickle as _pickle
import struct as _struct

from fastkv import _shm

_M64 = 2**64 - 1
_K1 = 0x9E3779B97F4A7C15
_K2 = 0xC2B2AE3D27D4EB4F
_SH_MAX_DEPTH = 100
(_T_NONE, _T_FALSE, _T_TRUE, _T_INT, _T_BIGINT, _T_FLOAT, _T_ASCII, _T_UTF8, _T_BYTES,
 _T_LIST, _T_TUPLE, _T_DICT, _T_PICKLE) = range(13)
_U64 = _struct.Struct("<Q")
_F64 = _struct.Struct("<d")


def _sh_hash(seed, kb):
    """fastkv's seeded 64-bit hash of canonical key bytes (fk_sh_hash)."""
    n = len(kb)
    h = (seed ^ (n * _K1)) & _M64
    if n % 8:
        kb = bytes(kb) + b"\0" * (8 - n % 8)
    for (w,) in _struct.iter_unpack("<Q", kb):
        h = ((h ^ w) * _K2) & _M64
        h ^= h >> 31
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    h ^= h >> 33
    return h


def _sh_corrupt(what):
    raise ValueError("corrupt SharedTable snapshot: " + what)


def _sh_varint(out, v):
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _sh_lenbytes(out, tag, raw):
    out.append(tag)
    _sh_varint(out, len(raw))
    out += raw


def _sh_encode_str(out, s):
    if s.isascii():
        _sh_lenbytes(out, _T_ASCII, str.encode(s, "ascii"))
    else:
        _sh_lenbytes(out, _T_UTF8, str.encode(s, "utf-8", "surrogatepass"))


def _sh_encode_int(out, x):
    x = int(x)
    if -(2**63) <= x < 2**63:
        out.append(_T_INT)
        _sh_varint(out, ((x << 1) ^ (x >> 63)) & _M64)
    else:
        _sh_lenbytes(out, _T_BIGINT, x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True))


def _sh_encode_key(out, k, strict, depth):
    """Append ``k``'s canonical bytes: False done, True not a possible key
    (``strict``: TypeError instead)."""
    if isinstance(k, str):
        _sh_encode_str(out, k)
        return False
    if isinstance(k, int):
        _sh_encode_int(out, k)
        return False
    if isinstance(k, bytes):
        _sh_lenbytes(out, _T_BYTES, bytes(k))
        return False
    if isinstance(k, tuple):
        if depth >= _SH_MAX_DEPTH:
            raise ValueError(f"SharedTable: key nested deeper than {_SH_MAX_DEPTH}")
        out.append(_T_TUPLE)
        _sh_varint(out, len(k))
        return any(_sh_encode_key(out, item, strict, depth + 1) for item in tuple.__iter__(k))
    if isinstance(k, float) and not strict:
        if k == k and k - k == 0 and k == int(k):
            _sh_encode_int(out, int(k))
            return False
        return True
    if strict:
        raise TypeError(f"SharedTable keys are str, bytes, int or tuples of them, not {type(k).__name__!r}")
    hash(k)
    return True


def _sh_encode_value(out, v, allow_pickle, depth):
    t = type(v)
    if v is None:
        out.append(_T_NONE)
    elif v is True:
        out.append(_T_TRUE)
    elif v is False:
        out.append(_T_FALSE)
    elif t is int:
        _sh_encode_int(out, v)
    elif t is str:
        _sh_encode_str(out, v)
    elif t is float:
        out.append(_T_FLOAT)
        out += _F64.pack(v)
    elif t is bytes:
        _sh_lenbytes(out, _T_BYTES, v)
    elif t is list or t is tuple or t is dict:
        if depth >= _SH_MAX_DEPTH:
            raise ValueError(f"SharedTable: value nested deeper than {_SH_MAX_DEPTH} (or cyclic)")
        if t is dict:
            out.append(_T_DICT)
            _sh_varint(out, len(v))
            for key, item in v.items():
                _sh_encode_value(out, key, allow_pickle, depth + 1)
                _sh_encode_value(out, item, allow_pickle, depth + 1)
        else:
            out.append(_T_LIST if t is list else _T_TUPLE)
            _sh_varint(out, len(v))
            for item in v:
                _sh_encode_value(out, item, allow_pickle, depth + 1)
    elif allow_pickle:
        _sh_lenbytes(out, _T_PICKLE, _pickle.dumps(v, protocol=_pickle.HIGHEST_PROTOCOL))
    else:
        raise TypeError(
            f"SharedTable values are None, bool, int, float, str, bytes and lists, tuples, "
            f"dicts of them, not {type(v).__name__!r} (create the table with pickle=True to pickle others)")


def _sh_key_bytes(key):
    out = bytearray()
    _sh_encode_key(out, key, True, 0)
    return bytes(out)


def _sh_value_bytes(value, allow_pickle):
    out = bytearray()
    _sh_encode_value(out, value, allow_pickle, 0)
    return bytes(out)


def _sh_read_varint(buf, p, end):
    v = shift = 0
    while True:
        if p >= end:
            _sh_corrupt("truncated length")
        c = buf[p]
        p += 1
        if shift == 63 and c > 1:
            _sh_corrupt("length overflows 64 bits")
        v |= (c & 0x7F) << shift
        if c < 0x80:
            return v, p
        shift += 7
        if shift > 63:
            _sh_corrupt("length overflows 64 bits")


def _sh_decode(buf, p, end, allow_pickle, depth):
    """(item, position after it) decoded from buf[p:end], never reading at or
    past ``end``; ValueError for anything malformed."""
    if p >= end:
        _sh_corrupt("truncated item")
    tag = buf[p]
    p += 1
    if tag == _T_NONE:
        return None, p
    if tag == _T_TRUE:
        return True, p
    if tag == _T_FALSE:
        return False, p
    if tag == _T_INT:
        z, p = _sh_read_varint(buf, p, end)
        return (z >> 1) ^ -(z & 1), p
    if tag in (_T_ASCII, _T_UTF8, _T_BYTES, _T_BIGINT, _T_PICKLE):
        n, p = _sh_read_varint(buf, p, end)
        if n > end - p:
            _sh_corrupt("an item runs past its entry")
        raw = bytes(buf[p:p + n])
        p += n
        if tag == _T_ASCII:
            try:
                return raw.decode("ascii"), p
            except UnicodeDecodeError:
                _sh_corrupt("non-ASCII bytes in an ASCII string")
        if tag == _T_UTF8:
            try:
                return raw.decode("utf-8", "surrogatepass"), p
            except UnicodeDecodeError:
                _sh_corrupt("invalid UTF-8")
        if tag == _T_BYTES:
            return raw, p
        if tag == _T_BIGINT:
            return int.from_bytes(raw, "little", signed=True), p
        if not allow_pickle:
            _sh_corrupt("a pickled value in a table opened without pickle=True")
        return _pickle.loads(raw), p
    if tag == _T_FLOAT:
        if 8 > end - p:
            _sh_corrupt("an item runs past its entry")
        return _F64.unpack_from(buf, p)[0], p + 8
    if tag in (_T_LIST, _T_TUPLE, _T_DICT):
        if depth >= _SH_MAX_DEPTH:
            _sh_corrupt("nesting too deep")
        n, p = _sh_read_varint(buf, p, end)
        if (n * 2 if tag == _T_DICT else n) > end - p:
            _sh_corrupt("an item runs past its entry")
        if tag == _T_DICT:
            out = {}
            for _ in range(n):
                k, p = _sh_decode(buf, p, end, allow_pickle, depth + 1)
                v, p = _sh_decode(buf, p, end, allow_pickle, depth + 1)
                try:
                    out[k] = v
                except TypeError:
                    _sh_corrupt("an unhashable dict key")
            return out, p
        items = []
        for _ in range(n):
            v, p = _sh_decode(buf, p, end, allow_pickle, depth + 1)
            items.append(v)
        return (items if tag == _T_LIST else tuple(items)), p
    _sh_corrupt(f"unknown tag {tag}")


class _SharedMap:
    """One mapped snapshot (its index and data files), its header validated."""

    __slots__ = ("mm", "dmm", "hdr", "gen", "allow_pickle", "data_len", "cache")

    def __init__(self, mm, dmm, dsize, gen, allow_pickle, verify):
        hdr = _shm.Header(mm, len(mm), dsize, _sh_checksum)
        if dmm is not None:
            if len(dmm) < hdr.data_len:
                _sh_corrupt("the data mapping is shorter than the header says")
        elif hdr.data_len:
            _sh_corrupt("no data file for a table with data")
        if verify:
            if _sh_checksum(mm[_shm.HEADER_SIZE:]) != hdr.index_sum:
                raise ValueError("corrupt SharedTable snapshot: index checksum mismatch")
            if _shm.fletcher(0, 0, dmm[:hdr.data_len] if dmm is not None else b"") != (hdr.data_a, hdr.data_b):
                raise ValueError("corrupt SharedTable snapshot: data checksum mismatch")
        if hdr.flags & _shm.FLAG_PICKLE and not allow_pickle:
            raise ValueError(
                "this SharedTable was created with pickle=True: open it with pickle=True "
                "(unpickling executes code from whoever can write the file)")
        self.mm, self.dmm, self.hdr, self.gen, self.allow_pickle = mm, dmm, hdr, gen, allow_pickle
        self.data_len = hdr.data_len
        # the decoded values of this snapshot: a cache that belongs to its map
        # cannot be filled with another snapshot's values by a slow thread
        self.cache = {}

    def entry(self, idx):
        """(data offset, key length, value length) of entry idx, bounds-checked."""
        _, off, kl, vl = _shm.ENTRY.unpack_from(self.mm, self.hdr.entries_off + _shm.ENTRY_SIZE * idx)
        if off > self.data_len or kl + vl > self.data_len - off:
            _sh_corrupt("an entry points outside the data")
        return off, kl, vl

    def probe(self, kb, h):
        hdr = self.hdr
        if hdr.count == 0:
            return -1
        mask = hdr.nslots - 1
        i = h & mask
        for _ in range(hdr.nslots):
            (s,) = _shm.SLOT.unpack_from(self.mm, _shm.HEADER_SIZE + 4 * i)
            if s == 0:
                return -1
            if s > hdr.count:
                _sh_corrupt("a slot points past the entries")
            eh, _, kl, _ = _shm.ENTRY.unpack_from(self.mm, hdr.entries_off + _shm.ENTRY_SIZE * (s - 1))
            if eh == h and kl == len(kb):
                off, kl, _ = self.entry(s - 1)
                if self.dmm[off:off + kl] == kb:
                    return s - 1
            i = (i + 1) & mask
        return -1

    def find(self, key):
        out = bytearray()
        if _sh_encode_key(out, key, False, 0):
            return -1
        return self.probe(bytes(out), _sh_hash(self.hdr.seed, out))

    def value_at(self, idx):
        off, kl, vl = self.entry(idx)
        v, p = _sh_decode(self.dmm, off + kl, off + kl + vl, self.allow_pickle, 0)
        if p != off + kl + vl:
            _sh_corrupt("trailing bytes after a value")
        return v

    def key_at(self, idx):
        off, kl, _ = self.entry(idx)
        k, p = _sh_decode(self.dmm, off, off + kl, False, 0)
        if p != off + kl:
            _sh_corrupt("trailing bytes after a key")
        return k


def _sh_checksum(data):
    return _shm.checksum(data)


def _sh_lookup(m, kb, h):
    return m.probe(kb, h)


def _sh_rebuild_slots(mv, nslots, entries_off, count):
    mask = nslots - 1
    if count >= nslots or entries_off + _shm.ENTRY_SIZE * count > len(mv) or _shm.HEADER_SIZE + 4 * nslots > entries_off:
        raise ValueError("SharedTable: slots do not fit")
    mv[_shm.HEADER_SIZE:_shm.HEADER_SIZE + 4 * nslots] = bytes(4 * nslots)
    for j in range(count):
        (h,) = _U64.unpack_from(mv, entries_off + _shm.ENTRY_SIZE * j)
        i = h & mask
        while _shm.SLOT.unpack_from(mv, _shm.HEADER_SIZE + 4 * i)[0]:
            i = (i + 1) & mask
        _shm.SLOT.pack_into(mv, _shm.HEADER_SIZE + 4 * i, j + 1)


def _sh_compact(mv, entries_off, count, old, out):
    old_len = len(old) if old is not None else 0
    room, cursor = len(out), 0
    for j in range(count):
        at = entries_off + _shm.ENTRY_SIZE * j
        h, o, kl, vl = _shm.ENTRY.unpack_from(mv, at)
        n = kl + vl
        if o > old_len or n > old_len - o or n > room - cursor:
            _sh_corrupt("an entry points outside the data")
        out[cursor:cursor + n] = old[o:o + n]
        _shm.ENTRY.pack_into(mv, at, h, cursor, kl, vl)
        cursor += n
    return cursor


def _sh_fletcher(a, b, data):
    if len(data) % 8:
        raise ValueError("SharedTable: data appended in multiples of 8 bytes")
    return _shm.fletcher(a, b, data)


_SH_CODEC = types.SimpleNamespace(
    hash=_sh_hash, checksum=_sh_checksum, lookup=_sh_lookup,
    rebuild_slots=_sh_rebuild_slots, compact=_sh_compact, fletcher=_sh_fletcher)

def _sh_changes(data, kwargs, allow_pickle):
    out = {}
    if isinstance(data, (dict, Mapping)) or hasattr(data, "keys"):
        for key in data.keys():
            out[_sh_key_bytes(key)] = _sh_value_bytes(data[key], allow_pickle)
    else:
        for n, item in enumerate(data):
            try:
                pair = tuple(item)
            except TypeError:
                raise TypeError(f"cannot convert update sequence element #{n} to a sequence") from None
            if len(pair) != 2:
                raise ValueError(f"update sequence element #{n} has length {len(pair)}; 2 is required")
            out[_sh_key_bytes(pair[0])] = _sh_value_bytes(pair[1], allow_pickle)
    for key, value in kwargs.items():
        out[_sh_key_bytes(key)] = _sh_value_bytes(value, allow_pickle)
    return out


def _sh_reopen(path, pickle, cache_size):
    return SharedTable.open(path, pickle=pickle, cache_size=cache_size)


class SharedTable:
    """A read-mostly table shared by every process on the machine: its
    snapshot is an immutable file in shared memory (``/dev/shm`` by default),
    mapped read-only by each process that opens it.

    Made with ``SharedTable.create(name, data)`` and opened elsewhere with
    ``SharedTable.open(name)``. Reads (``t[k]``, ``get``, ``in``, ``len``,
    iteration, ``keys/values/items``, ``get_many``, ``to_dict``) never block
    and see one complete snapshot; a read notices a newer snapshot with one
    shared-memory load. ``put``, ``delete`` and ``put_many`` publish a new
    snapshot file (O(n) copy, as FrozenTable's writes) under a cross-process
    file lock: writers from any process serialize and lose nothing.

    Keys: str, bytes, int (bool and integral floats are the int) and tuples of
    them. Values: None, bool, int, float, str, bytes and lists, tuples, dicts
    of these; anything else is a TypeError, unless the table was created with
    ``pickle=True``, which pickles it: opening such a table executes code from
    whoever can write its file. Values come back as new objects per process,
    and stay the same object while cached (treat them as read-only).

    Each process keeps a bounded cache of decoded values (``cache_size``
    entries, cleared when a new snapshot arrives). The last process to close
    the table removes its files. Files are created with mode 0600 unless
    ``mode`` says otherwise.
    """

    __slots__ = ("_seg", "_map", "_cache_max", "_pickle", "_verify", "__weakref__")

    def __init__(self, *args, **kwargs):
        raise TypeError("use SharedTable.create(name, data) or SharedTable.open(name)")

    @classmethod
    def create(cls, name, data=(), *, pickle=False, mode=0o600, cache_size=65536):
        """Create the table ``name`` (a bare name lives in /dev/shm; a path is
        used as given) holding ``data`` (a mapping or pairs). FileExistsError
        if a table of this name is open somewhere; the files of one whose
        users all exited without closing are swept first."""
        changes = _sh_changes(data, {}, pickle)
        flags = _shm.FLAG_PICKLE if pickle else 0

        def write_first(path):
            _shm.write_snapshot(path, mode, _SH_CODEC, None, changes, flags)

        seg = _shm.Segment.create(name, mode, write_first)
        return _sh_attach(cls, seg, pickle, False, cache_size)

    @classmethod
    def open(cls, name, *, pickle=False, verify=False, cache_size=65536):
        """Open the table ``name`` created by any process. ``verify=True``
        also checks the whole file's checksum (O(size)); the header is always
        checked, and every read is bounds-checked. ValueError for a corrupt or
        foreign file, FileNotFoundError if there is no such table."""
        seg = _shm.Segment.open(name)
        return _sh_attach(cls, seg, pickle, verify, cache_size)

    @staticmethod
    def unlink(name):
        """Remove the files of table ``name`` if no process has it open
        (after all its users were killed). True if nothing is left."""
        return _shm.sweep_if_dead(_shm.control_path(name))

    # -- the read path ---------------------------------------------------------

    def _generation(self):
        seg = self._seg
        if seg is None:
            raise ClosedError("SharedTable is closed")
        return seg.generation()

    def _refresh(self, seg=None):
        if seg is None:
            seg = self._seg
            if seg is None:
                raise ClosedError("SharedTable is closed")
        try:
            gen, mm, dmm, dsize = seg.load(seg.generation)
        except (OSError, ValueError):
            if seg.closed:  # closed by another thread meanwhile: its files may be gone
                raise ClosedError("SharedTable is closed") from None
            raise
        m = self._map = _SharedMap(mm, dmm, dsize, gen, self._pickle, self._verify)
        if self._seg is not seg:  # closed meanwhile: a closed table keeps nothing mapped
            self._map = None
            raise ClosedError("SharedTable is closed")
        return m

    def _current(self):
        # One attribute holds the mapped snapshot, its generation and its
        # cache: threads that refresh at once each install a whole map (an
        # older one only makes the next read refresh again), never a map with
        # another snapshot's generation (a writer that trusted such a pair
        # would publish over a live snapshot). The segment is read once: a
        # close by another thread makes this a ClosedError, never a read
        # through None.
        seg = self._seg
        m = self._map
        if seg is None:
            raise ClosedError("SharedTable is closed")
        if m is None or seg.generation() != m.gen:
            m = self._refresh(seg)
        return m

    def _lookup(self, key, default, raise_missing):
        m = self._current()
        cache = m.cache
        t = type(key)
        cacheable = t is str or t is int or t is bytes or t is tuple
        if cacheable:
            try:
                return cache[key]
            except KeyError:
                pass
        idx = m.find(key)
        if idx < 0:
            if raise_missing:
                raise KeyError(key)
            return default
        value = m.value_at(idx)
        if cacheable and self._cache_max:
            if len(cache) >= self._cache_max:
                cache.clear()
            cache[key] = value
        return value

    def __getitem__(self, key):
        return self._lookup(key, None, True)

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. O(1); never blocks."""
        return self._lookup(key, default, False)

    def __contains__(self, key):
        m = self._current()
        if type(key) in (str, int, bytes) and key in m.cache:
            return True
        return m.find(key) >= 0

    def __len__(self):
        return self._current().hdr.count

    def __iter__(self):
        return self._iter_snapshot(0)

    def __reversed__(self):
        """``reversed(t)``: the keys of one snapshot, last inserted first."""
        return self._iter_snapshot(3)

    def _iter_snapshot(self, what):
        if what < 0 or what > 5:
            raise ValueError(f"SharedTable: no iteration {what}")
        m = self._current()
        return _sh_iterate(m, what)

    def keys(self):
        """A view of the keys (iteration walks one snapshot)."""
        return _shm.SharedKeysView(self)

    def values(self):
        """A view of the values (iteration walks one snapshot)."""
        return _shm.SharedValuesView(self)

    def items(self):
        """A view of the (key, value) pairs (iteration walks one snapshot)."""
        return _shm.SharedItemsView(self)

    def get_many(self, keys, default=None):
        """[self.get(k, default) for k in keys], all from one snapshot."""
        m = self._current()
        out = []
        for key in keys:
            idx = m.find(key)
            out.append(default if idx < 0 else m.value_at(idx))
        return out

    def to_dict(self):
        """A dict copy of one snapshot (O(n) decode)."""
        m = self._current()
        return {m.key_at(i): m.value_at(i) for i in range(m.hdr.count)}

    def __eq__(self, other):
        if isinstance(other, (SharedTable, Mapping)):
            return self.to_dict() == (other.to_dict() if isinstance(other, SharedTable) else dict(other.items()))
        return NotImplemented

    def copy(self):
        """A ``dict`` with one snapshot's items (O(n) decode). A SharedTable
        is named by its files: ``SharedTable.create(name, t)`` makes another."""
        return self.to_dict()

    def __or__(self, other):
        """``t | other``: a new ``dict`` with one snapshot's items, then those
        of ``other`` (a mapping; its values win). O(n + m); t is unchanged.
        ``NotImplemented`` for anything but a mapping."""
        if not isinstance(other, (dict, SharedTable, Mapping)):
            return NotImplemented
        out = self.to_dict()
        out.update(other)
        return out

    def __ror__(self, other):
        """``other | t`` for a mapping ``other`` that does not handle it (a
        dict): a new ``dict`` with other's items, then t's (t's values win)."""
        if not isinstance(other, (dict, SharedTable, Mapping)):
            return NotImplemented
        out = dict(other)
        out.update(self.to_dict())
        return out

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or pairs): one
        publish, seen by every process; t itself is the result (the name is
        not rebound to a dict)."""
        self.put_many(other)
        return self

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """Not supported: a SharedTable is created with a name. TypeError;
        use ``SharedTable.create(name, dict.fromkeys(iterable, value))``."""
        raise TypeError(
            "SharedTable.fromkeys: a SharedTable needs a name; use "
            "SharedTable.create(name, dict.fromkeys(iterable, value))")

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None
    __class_getitem__ = classmethod(types.GenericAlias)

    def __repr__(self):
        if self._seg is None:
            return "<SharedTable (closed)>"
        m = self._map  # what this process has mapped: repr never remaps
        return f"<SharedTable {self._seg.path!r} generation={m.gen} len={m.hdr.count}>"

    @property
    def path(self):
        """The control file's path."""
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        return self._seg.path

    def info(self):
        """{"path", "generation", "count", "index_size", "data_size", "garbage", "cached"}."""
        m = self._current()
        return {"path": self._seg.path, "generation": m.gen, "count": m.hdr.count, "index_size": m.hdr.size,
                "data_size": m.data_len, "garbage": m.hdr.garbage, "cached": len(m.cache)}

    # -- writes ----------------------------------------------------------------

    def put(self, key, value):
        """Publish a snapshot with ``key`` set to ``value``. O(n) copy, under
        the cross-process writers' lock."""
        self._publish({_sh_key_bytes(key): _sh_value_bytes(value, self._pickle)})

    def put_many(self, data=(), /, **kwargs):
        """Publish one snapshot with every pair of ``data`` (a mapping or
        pairs) and ``kwargs`` set: one copy for many keys."""
        self._publish(_sh_changes(data, kwargs, self._pickle))

    def delete(self, key):
        """Publish a snapshot without ``key``; True if it was there."""
        out = bytearray()
        if _sh_encode_key(out, key, False, 0):
            self._current()
            return False
        return self._publish({bytes(out): None}) > 0

    def _publish(self, changes):
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        seg = self._seg
        fd = seg.lock()  # ClosedError if closed meanwhile; holds seg open until unlock
        try:
            m = self._current()
            if not seg.writable:
                raise PermissionError("SharedTable opened read-only")
            result = [0]

            def write(path):
                r = _shm.write_snapshot(path, seg.mode, _SH_CODEC, m, changes, m.hdr.flags)
                result[0] = r[0]
                return r

            seg.publish(m.gen, write, self._store_gen)
            return result[0]
        finally:
            seg.unlock(fd)  # a close() meanwhile: the cleanup runs here

    def _store_gen(self, gen):
        seg = self._seg
        if seg is None:  # closed by another thread during the publish (unlock cleans up)
            raise ClosedError("SharedTable is closed")
        seg.store_generation(gen)  # one 8-byte store (pack_into zeroes first)

    # -- lifetime --------------------------------------------------------------

    def close(self):
        """Unmap and drop this process's hold; the last process to close
        removes the table's files. Idempotent."""
        seg = self._seg
        if seg is None:
            return
        self._seg = None
        self._map = None
        seg.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __reduce__(self):
        if self._seg is None:
            raise ClosedError("SharedTable is closed")
        return (_sh_reopen, (self._seg.path, self._pickle, self._cache_max))


def _sh_iterate(m, what):
    """keys (0), values (1), items (2) of m; 3-5 the same in reverse order."""
    count = m.hdr.count
    indexes = range(count - 1, -1, -1) if what >= 3 else range(count)
    what %= 3
    for i in indexes:
        if what == 0:
            yield m.key_at(i)
        elif what == 1:
            yield m.value_at(i)
        else:
            yield (m.key_at(i), m.value_at(i))


def _sh_attach(cls, seg, allow_pickle, verify, cache_size):
    if cache_size < 0:
        seg.close()
        raise ValueError("cache_size must be >= 0")
    t = object.__new__(cls)
    t._seg, t._map = seg, None
    t._cache_max, t._pickle, t._verify = cache_size, allow_pickle, verify
    try:
        t._refresh()
    except BaseException:
        t.close()
        raise
    return t


Mapping.register(SharedTable)


# ---------------------------------------------------------------------------
# The near-cache read path of fastkv.redis.RedisTable (twin of _near.pxi)
# ---------------------------------------------------------------------------

_NEAR_ABSENT = object()


def _near_now():
    """The clock of the near cache's lease (seconds)."""
    return time.monotonic()


class _NearReads:
    """The near-cache read path of RedisTable (see fastkv.redis): ``_near`` is
    a dict (user key -> value or ``_near_absent``) written only by
    fastkv.redis under its lock; a read is served from it while the lease
    (``_near_set_lease``) holds, else by ``self._near_load(key)``."""

    __slots__ = ("_near", "_near_absent", "_lease", "__weakref__")

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self._near = {}
        self._near_absent = _NEAR_ABSENT
        self._lease = 0.0
        return self

    def _near_set_lease(self, until):
        """Serve near-cache hits until ``until`` (``_near_now()`` seconds); 0 stops them."""
        self._lease = until

    def _near_now(self):
        """The lease's clock."""
        return time.monotonic()

    def __getitem__(self, key):
        value = _MISSING
        if self._lease > time.monotonic():
            value = self._near.get(key, _MISSING)
        if value is _MISSING:
            value = self._near_load(key)
        if value is self._near_absent:
            raise KeyError(key)
        return value

    def get(self, key, default=None):
        """The value for ``key``, or ``default``; served from the near cache
        when it holds the key (a local dict read), else one GET."""
        value = _MISSING
        if self._lease > time.monotonic():
            value = self._near.get(key, _MISSING)
        if value is _MISSING:
            value = self._near_load(key)
        if value is self._near_absent:
            return default
        return value

    def __contains__(self, key):
        value = _MISSING
        if self._lease > time.monotonic():
            value = self._near.get(key, _MISSING)
        if value is _MISSING:
            value = self._near_load(key)
        return value is not self._near_absent
