# fastkv/_locked.pxi: the compiled LockedTable (included by _core.pyx).
#
# Design
# ======
#
# A LockedTable is one engine ``Table`` (held inline in the object, no
# indirection) behind one lock, ``_lk`` (``_locked.h``). Every operation takes
# the lock, reads or changes the table, and releases it. The GIL alone cannot
# make an operation atomic: it is released in the middle of one whenever Python
# code runs under it (a key's ``__eq__`` can sleep, wait, or simply be
# preempted), and a free-threaded build has no GIL at all. The lock is what
# keeps each operation whole, on both builds.
#
# The lock. One word, ``holder``: 0 when free, else the id of the holding
# thread (the thread pointer, read without a call). Taking it is a test-and-set
# of that word:
#
# - free-threaded build (``Py_GIL_DISABLED``): a compare-and-swap 0 -> id;
# - GIL build: a plain load and store. There the word is only ever written by
#   the thread holding the GIL, which does not release it between the test and
#   the set, so the two cannot interleave with another thread's (the GIL's own
#   hand-off is the memory fence) -- the same reasoning that makes CPython's
#   own critical sections no-ops on that build. A locked instruction on every
#   read would drain the store buffer each time: on a 100,000-int table t[k]
#   cost 1.67x a dict with it, 1.06x without (same run). ``-DFASTKV_LOCK_CAS``
#   builds the compare-and-swap on a GIL build too (the suite passes both
#   ways; ``fastkv._core._LOCKED_CAS`` says which one was built).
#
# Release is a store-release of 0 plus a load of the waiter count -- no atomic
# read-modify-write, which would cost as much as the lookup itself. A thread
# that finds the lock held:
#
# - raises RuntimeError if the holder is itself: a key's ``__eq__``/``__hash__``
#   or a destructor touching the table while this thread holds its lock
#   (waiting would deadlock on ourselves);
# - otherwise releases the GIL (``with nogil``) and waits in C: spin, yield,
#   then park on a shared condition variable until the lock has been seen free;
#   then it takes the GIL back and tries again. The main thread also comes
#   back every ~50 ms to run signal handlers: Ctrl-C ends its wait with
#   KeyboardInterrupt (nothing taken, nothing changed). The holder may be running
#   Python under the lock, so it must be able to get the GIL while we wait: we
#   never hold the GIL while waiting for the lock, and never hold the lock while
#   waiting for the GIL.
#
# What runs under the lock. For exact ``str``/``int`` keys the hash is read
# or computed in C and ``table_lookup_fast`` decides equality in C, so the
# common path is: hash -> lock -> C lookup -> INCREF the value -> unlock. Any
# other key is hashed *before* the lock (``__hash__`` never runs under it);
# its ``__eq__`` runs under the lock (``table_lookup``), where the recorded
# holder turns re-entrant use into RuntimeError. Nothing is ever DECREF'd
# under the lock: a replaced or removed value (and a removed key) is released
# after the unlock, so destructors run outside it; ``clear`` swaps the whole
# table out in O(1) and drops the old one after the unlock. No object that the
# cyclic GC tracks is allocated under the lock (results, snapshots and flights
# are allocated before it), so a collection -- which runs finalizers -- cannot
# start inside it, except through a MemoryError raised under it, and then the
# recorded holder still turns re-entry into RuntimeError, not a deadlock.
#
# Iteration, views, ``to_dict``, ``==``, ``repr`` and ``select`` first take an
# atomic snapshot: the table is copied into a private ``_Snapshot`` (the
# FrozenTable's immutable engine table) under the lock -- INCREFs and memcpy,
# no Python -- and everything else (building a dict, calling the predicate,
# repr of values) runs on that copy without the lock. ``snapshot()`` publishes
# such a copy as a FrozenTable.
#
# Lock-free reads on a free-threaded build. A CAS on the lock word per read
# is a shared cache line written by every reader (two threads reading one
# table got 0.6-1.06x one thread's throughput). There, ``t[k]``, ``get`` and
# ``in`` for an exact str/int key first try a read that writes nothing
# shared: a seqlock validated look-up inside a read section (``_ft.h``).
# The lock carries a sequence count, odd while held (every acquire and
# release bumps it). The reader enters its section, loads the count (even,
# else it gives up), copies the Table header (arrays, mask, layout), checks
# the count again (a consistent header), probes the arrays with a look-up
# that tolerates in-place writes (a NULL key is skipped, an entry past the
# header's nentries or an over-long probe gives up), loads the value pointer,
# checks the count a third time, INCREFs the value and leaves the section.
# Any doubt falls back to the locked path. Nothing it reads can be freed
# under it: an engine array is freed only after ``fk_rd_synchronize`` (every
# section open then has ended), and the lock release runs the same wait
# before the caller drops what it unlinked under the lock (replaced values,
# removed keys). So readers pay a fence on their own line and writers pay
# the wait; compound operations, iteration and writes still take the lock.
# On a GIL build none of this is compiled (``fastkv_seq_begin`` says "held").
#
# fetch (single flight). A second engine table, ``_flights``, maps a key being
# loaded to its ``_Flight``. The first caller to miss a key registers a flight
# (under the lock) and runs ``loader(key)`` without the lock; callers that miss
# the same key meanwhile find the flight and wait on its gate (a PyThread lock
# held by the leader, waited for without the GIL, interruptible by signals).
# When the load ends the leader stores the value (or nothing, on an exception)
# and removes the flight in one lock hold, then opens the gate: waiters get the
# value or re-raise the exception. Other keys are never blocked. A loader that
# fetches its own key (same thread) gets RuntimeError.
#
# C-level API (for OwnerTable, which stores its data in a LockedTable)
# ===================================================================
#
# ``@cython.final`` cdef methods, callable directly (no vtable) from any
# thread holding the GIL; each takes and releases the lock itself (never call
# them with the lock held) and behaves as the Python method of the same name:
#
#   _get(key, default) -> object          value or ``default``
#   _find_ref(key, &v) except -1 -> int   1 and a NEW reference in v, or 0 if
#                                         absent (no sentinel, no default)
#   _contains(key) except -1 -> int       1 present, 0 absent
#   _len() except -1 -> Py_ssize_t       number of keys
#   _put(key, value) except -1            t[key] = value
#   _delete(key) except -1 -> int         1 removed, 0 absent
#   _take(key, default) -> object         remove and return the value; absent:
#                                         ``default`` (pass ``_MISSING`` to get
#                                         KeyError(key) instead)
#   _put_many(staged) except -1           apply a ``_Snapshot`` built by
#                                         ``_locked_stage(data, kwargs)`` (read and
#                                         hashed before the lock) in one hold
#   _clear() except -1                    remove everything (O(1) under the lock)
#   _snapshot() -> _Snapshot              an atomic private copy of the table
#                                         (walk it with table_next, or wrap it)
#   _items_list() -> list                 the items as one flat list (pickle's
#                                         state), copied atomically without a
#                                         snapshot
#   _held() noexcept -> bint              the calling thread holds the lock (it
#                                         is inside an operation on this table:
#                                         a call that would wait for the lock's
#                                         holder must raise instead)
#
# ``_locked_stage(data, kwargs)`` reads a constructor/``update`` argument into a
# private ``_Snapshot`` without the lock (dict's argument rules).

from collections.abc import MutableMapping
from libc.stdint cimport uintptr_t, uint64_t

cdef extern from "_locked.h":
    ctypedef struct fastkv_lock:
        uintptr_t holder
        int waiters
    uintptr_t fastkv_thread_id() noexcept nogil
    bint fastkv_lock_try(fastkv_lock* l, uintptr_t me) noexcept     # GIL held
    uintptr_t fastkv_lock_holder(fastkv_lock* l) noexcept nogil
    bint fastkv_lock_orphaned(fastkv_lock* l) noexcept              # GIL held
    void fastkv_lock_reset(fastkv_lock* l) noexcept                 # GIL held
    void fastkv_lock_release(fastkv_lock* l) noexcept               # GIL held
    int fastkv_lock_wait(fastkv_lock* l, int signals, long* park_us) noexcept nogil
    int fastkv_lock_module_init() noexcept
    int FASTKV_LOCK_CAS
    uint64_t fastkv_seq_begin(fastkv_lock* l) noexcept nogil
    bint fastkv_seq_ok(fastkv_lock* l, uint64_t s) noexcept nogil

cdef extern from *:
    """
    /* Hand a reference we own to Cython (which takes it as a new reference). */
    static CYTHON_INLINE PyObject *fastkv_steal(PyObject *o) { return o; }
    /* int.__add__ on two ints (subclasses included): exact int, C only. */
    #define fastkv_long_add(a, b) (PyLong_Type.tp_as_number->nb_add((a), (b)))
    """
    object fastkv_steal(PyObject* o)
    object fastkv_long_add(PyObject* a, PyObject* b)

cdef extern from "Python.h":
    bint _is_long "PyLong_Check"(PyObject* o) noexcept
    object PySequence_Tuple(object o)

if fastkv_lock_module_init() != 0:
    raise ImportError("fastkv: cannot initialise the LockedTable parking lot")
import threading as _lt_threading
fastkv_main_ident = _lt_threading.main_thread().ident

# True when the lock is acquired with a compare-and-swap (free-threaded builds,
# or a build with -DFASTKV_LOCK_CAS); False: GIL-serialized test-and-set.
_LOCKED_CAS = bool(FASTKV_LOCK_CAS)


# --- entry access -------------------------------------------------------------

cdef inline Entry* _lt_entry(const Table* t, Py_ssize_t ix) noexcept:
    return table_entry(t, ix)


cdef inline Py_hash_t _lt_entry_hash(const Table* t, Py_ssize_t ix) noexcept:
    return table_entry_hash(t, ix)


# --- lock-free reads (free-threaded build only) ----------------------------------

cdef Py_ssize_t _lt_probe_racy(const Table* t, PyObject* key, Py_hash_t hash) noexcept:
    """table_lookup_fast over a header copy whose arrays a writer may be
    changing in place: a deleted entry (NULL key) is skipped, an entry past
    the copy's nentries or a probe longer than the index answers IX_SLOW.
    The caller validates the answer with the sequence count."""
    cdef size_t mask = t.mask
    cdef size_t perturb = <size_t>hash
    cdef size_t i = <size_t>hash & mask
    cdef size_t steps = 0
    cdef Py_ssize_t ix
    cdef const Entry* ep
    cdef PyObject* k
    cdef bint is_str = _is_str(key)
    if not is_str and (t.unicode or not _is_int(key)):
        return IX_EMPTY if t.unicode and _is_int(key) else IX_SLOW
    cdef Py_ssize_t tag = _tag(t, hash)
    while steps <= mask:
        steps += 1
        ix = _ix_get(t, i)
        if ix >= 0 and (ix >> t.log2) == tag:        # tagged slots: _engine.pxi
            ix &= <Py_ssize_t>mask
            if ix >= t.nentries:
                return IX_SLOW
            ep = table_entry(t, ix)
            k = FK_LOAD_RELAXED(<PyObject**>&ep.key)
            if k == key:
                return ix
            if k != NULL and _entry_hash(t, ep) == hash:
                if is_str and _is_str(k):
                    if _str_eq(k, key):
                        return ix
                elif not is_str and _is_int(k):
                    if _int_eq(k, key):
                        return ix
                elif not (_is_str(k) or _is_int(k)):
                    return IX_SLOW
        elif ix == IX_EMPTY:
            return IX_EMPTY
        perturb >>= 5
        i = (i * 5 + perturb + 1) & mask
    return IX_SLOW


cdef int _lt_read_lockfree(Table* tab, fastkv_lock* lk, PyObject* k, Py_hash_t h,
                           PyObject** out) noexcept:
    """Free-threaded build: t[k] for an exact str/int key without taking the
    lock (see the design note): 1 and a NEW reference in *out, 0 if absent,
    -1 if undecided (a writer was active: take the lock). No Python. On a GIL
    build fastkv_seq_begin says "held" and this is never called."""
    cdef Table hdr
    cdef uint64_t s
    cdef Py_ssize_t ix
    cdef PyObject* v = NULL
    fk_rd_enter()
    s = fastkv_seq_begin(lk)
    if s & 1:
        fk_rd_exit()
        return -1
    memcpy(&hdr, tab, sizeof(Table))
    if not fastkv_seq_ok(lk, s):
        fk_rd_exit()
        return -1
    ix = _lt_probe_racy(&hdr, k, h)
    if ix >= 0:
        v = FK_LOAD_RELAXED(&table_entry(&hdr, ix).value)
    if ix == IX_SLOW or not fastkv_seq_ok(lk, s) or (ix >= 0 and v == NULL):
        fk_rd_exit()
        return -1
    if ix < 0:
        fk_rd_exit()
        return 0
    _incref(v)              # alive: its release waits for this section
    fk_rd_exit()
    out[0] = v
    return 1


cdef inline PyObject* _lt_swap_value(Table* t, Py_ssize_t ix, PyObject* value) noexcept:
    """Store ``value`` (INCREF'd) in live entry ix; return the old value, a
    reference the caller DECREFs after releasing the lock. No Python."""
    cdef Entry* ep = _lt_entry(t, ix)
    cdef PyObject* old = ep.value
    _incref(value)
    ep.value = value
    t.version += 1
    return old


cdef inline Py_ssize_t _lt_find(Table* t, PyObject* key, Py_hash_t h) except -2:
    """Index of ``key`` in t or IX_EMPTY; C only for exact str/int keys, else
    the key's __eq__ may run (the caller holds the lock)."""
    cdef Py_ssize_t ix = table_lookup_fast(t, key, h)
    if ix != IX_SLOW:
        return ix
    return table_lookup(t, key, h)


cdef inline void _xdecref(PyObject* o) noexcept:
    if o != NULL:
        _decref(o)


# --- fetch: loads in flight ----------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class _Flight:
    """One ``fetch`` load in flight: its leader thread runs the loader; the
    other callers for the key wait on ``gate``, a lock the leader holds until
    the load has ended (value stored, or ``error`` set)."""
    cdef PyThread_type_lock gate
    cdef bint open
    cdef uintptr_t leader
    cdef object value
    cdef object error

    def __dealloc__(self):
        if self.gate != NULL:
            if not self.open:
                PyThread_release_lock(self.gate)
            PyThread_free_lock(self.gate)


cdef _Flight _flight_new(uintptr_t leader):
    cdef _Flight f = _Flight.__new__(_Flight)
    f.gate = PyThread_allocate_lock()
    if f.gate == NULL:
        raise MemoryError()
    PyThread_acquire_lock(f.gate, NOWAIT_LOCK)      # a fresh lock: always taken
    f.open = False
    f.leader = leader
    return f


cdef void _flight_open(_Flight f) noexcept:
    """The load ended: let every waiter through."""
    f.open = True
    PyThread_release_lock(f.gate)


cdef int _flight_wait(_Flight f) except -1:
    """Wait, without the GIL, until the flight's leader opens the gate; then
    pass it on. Signals are handled while waiting (KeyboardInterrupt stops
    the wait, not the load)."""
    cdef PyLockStatus r
    while True:
        with nogil:
            r = PyThread_acquire_lock_timed(f.gate, -1, 1)
        if r == PY_LOCK_ACQUIRED:
            break
        PyErr_CheckSignals()
    PyThread_release_lock(f.gate)
    return 0


# --- input, views --------------------------------------------------------------

cdef _Snapshot _locked_stage(object data, dict kwargs):
    """``dict(data, **kwargs)`` read into a new private snapshot, without any
    lock (a LockedTable argument is copied atomically first)."""
    cdef _Snapshot st
    if isinstance(data, LockedTable):
        st = (<LockedTable>data)._snapshot()
        if kwargs:
            for key, value in kwargs.items():
                table_insert(&st.tab, <PyObject*>key, table_hash(key), <PyObject*>value)
        return st
    return _stage(data, kwargs, True)     # (a dict: with dict's growth room)


class _LockedValuesView(_FrozenValuesView):
    """ValuesView whose every iteration walks an atomic snapshot of the table."""
    __slots__ = ()

    def __iter__(self):
        return _iterate((<LockedTable?>self._mapping)._snapshot(), ITER_VALUES)

    def __reversed__(self):
        return _iterate_reversed((<LockedTable?>self._mapping)._snapshot(), ITER_VALUES)


class _LockedItemsView(_FrozenItemsView):
    """ItemsView whose every iteration walks an atomic snapshot of the table."""
    __slots__ = ()

    def __iter__(self):
        return _iterate((<LockedTable?>self._mapping)._snapshot(), ITER_ITEMS)

    def __reversed__(self):
        return _iterate_reversed((<LockedTable?>self._mapping)._snapshot(), ITER_ITEMS)


cdef object _locked_missing(object self, object key):
    """A miss in self[key], after the lock is released: a subclass's
    ``__missing__`` (as dict: looked up on the type, subclasses only), else
    ``KeyError(key)``. Shared by OwnerTable."""
    if type(self) is not LockedTable:
        missing = getattr(type(self), "__missing__", None)
        if missing is not None:
            return missing(self, key)
    raise KeyError(key)


# --- the table -------------------------------------------------------------------

@cython.trashcan(True)
cdef class LockedTable:
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
    cdef fastkv_lock _lk
    cdef Table _tab
    cdef Table _flights      # key -> _Flight: the fetch loads in flight
    cdef object _gc          # an object field makes the type GC-tracked; its
                             # traverse/clear are replaced by ours below
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._lk.holder = 0
        self._lk.waiters = 0
        table_init(&self._tab, 0)
        table_init(&self._flights, 0)

    def __init__(self, data=(), /, **kwargs):
        if kwargs or not (type(data) is tuple and len(<tuple>data) == 0):
            self._put_many(_locked_stage(data, kwargs))

    def __dealloc__(self):
        table_clear(&self._flights)
        table_clear(&self._tab)

    # --- the lock ------------------------------------------------------------------

    @cython.final
    cdef inline int _acquire(self) except -1:
        cdef uintptr_t me = fastkv_thread_id()
        if fastkv_lock_try(&self._lk, me):
            return 0
        return self._acquire_slow(me)

    @cython.final
    cdef int _acquire_slow(self, uintptr_t me) except -1:
        cdef int main = -1, polled
        cdef long park_us = 0
        while True:
            if fastkv_lock_orphaned(&self._lk):
                fastkv_lock_reset(&self._lk)    # its holder is in the parent process
                if fastkv_lock_try(&self._lk, me):
                    return 0
                continue
            if fastkv_lock_holder(&self._lk) == me:
                raise RuntimeError(
                    f"re-entrant use of a {type(self).__name__} from the thread "
                    "holding its lock (a key's __eq__/__hash__ or a destructor "
                    "used the table during an operation on it)")
            if main < 0:
                main = PyThread_get_thread_ident() == fastkv_main_ident
            with nogil:
                polled = fastkv_lock_wait(&self._lk, main, &park_us)
            if polled:
                PyErr_CheckSignals()        # KeyboardInterrupt: nothing taken
            elif fastkv_lock_try(&self._lk, me):
                return 0

    @cython.final
    cdef inline void _release(self) noexcept:
        fastkv_lock_release(&self._lk)

    @cython.final
    cdef bint _held(self) noexcept:
        """True if the calling thread holds the lock (it is inside an
        operation on this table: a key's __eq__ or a destructor is running)."""
        return fastkv_lock_holder(&self._lk) == fastkv_thread_id()

    # --- C-level operations (see the design note) ------------------------------

    @cython.final
    cdef inline int _find_ref(self, object key, PyObject** out) except -1:
        """1 and a NEW reference to key's value in *out, or 0 if absent."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        cdef PyObject* v
        if _is_str(k):
            h = FASTKV_STR_HASH(k)
            if h == -1:
                h = _object_hash(k)          # str hashing runs no Python
        elif _is_int(k):
            h = fastkv_int_hash(k)
        else:
            return self._find_ref_slow(key, out)
        if FASTKV_FREE_THREADED:
            ix = _lt_read_lockfree(&self._tab, &self._lk, k, h, out)
            if ix >= 0:
                return <int>ix
        self._acquire()
        ix = table_lookup_fast(&self._tab, k, h)
        if ix >= 0:
            v = _lt_entry(&self._tab, ix).value
            _incref(v)                        # ours before the unlock
            self._release()
            out[0] = v
            return 1
        self._release()
        if ix == IX_EMPTY:
            return 0
        return self._find_ref_slow(key, out)

    @cython.final
    cdef int _find_ref_slow(self, object key, PyObject** out) except -1:
        return self._find_ref_h(key, table_hash(key), out)  # Python, before the lock

    # The _h variants take key's hash already computed by the caller (as
    # table_hash gives it): an OwnerTable's owner reuses the hash its caller
    # computed before queueing, instead of hashing the key a second time.

    @cython.final
    cdef int _find_ref_h(self, object key, Py_hash_t h, PyObject** out) except -1:
        """_find_ref with key's hash h given."""
        cdef Py_ssize_t ix
        cdef PyObject* v
        self._acquire()
        try:
            ix = table_lookup(&self._tab, <PyObject*>key, h)
            if ix < 0:
                return 0
            v = _lt_entry(&self._tab, ix).value
            _incref(v)
            out[0] = v
            return 1
        finally:
            self._release()

    @cython.final
    cdef inline object _get(self, object key, object default):
        cdef PyObject* v
        if self._find_ref(key, &v):
            return fastkv_steal(v)
        return default

    @cython.final
    cdef object _get_h(self, object key, Py_hash_t h, object default):
        cdef PyObject* v
        if self._find_ref_h(key, h, &v):
            return fastkv_steal(v)
        return default

    @cython.final
    cdef int _contains_h(self, object key, Py_hash_t h) except -1:
        self._acquire()
        try:
            return table_lookup(&self._tab, <PyObject*>key, h) >= 0
        finally:
            self._release()

    @cython.final
    cdef int _contains(self, object key) except -1:
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        if _is_str(k):
            h = FASTKV_STR_HASH(k)
            if h == -1:
                h = _object_hash(k)
        elif _is_int(k):
            h = fastkv_int_hash(k)
        else:
            h = table_hash(key)
        cdef PyObject* v
        if FASTKV_FREE_THREADED and (_is_str(k) or _is_int(k)):
            ix = _lt_read_lockfree(&self._tab, &self._lk, k, h, &v)
            if ix >= 0:
                if ix:
                    _decref(v)
                return <int>ix
        self._acquire()
        ix = table_lookup_fast(&self._tab, k, h)
        if ix != IX_SLOW:
            self._release()
            return ix >= 0
        try:
            return table_lookup(&self._tab, k, h) >= 0
        finally:
            self._release()

    @cython.final
    cdef Py_ssize_t _len(self) except -1:
        cdef Py_ssize_t n
        self._acquire()
        n = self._tab.used
        self._release()
        return n

    @cython.final
    cdef Py_ssize_t _len_nowait(self) noexcept:
        """Number of keys without waiting for the lock (OwnerTable.info(),
        while the owner may sit in a key's __eq__ holding it for as long as
        that takes): the count as of the holder's last completed insert or
        delete, or whole-table swap (put_many, clear, a rebuild). One relaxed
        load: every store to ``used`` is relaxed (table_move for whole tables)."""
        return fk_ssize_load(&self._tab.used)

    @cython.final
    cdef int _put(self, object key, object value) except -1:
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h
        if _is_str(k):
            h = FASTKV_STR_HASH(k)
            if h == -1:
                h = _object_hash(k)
        elif _is_int(k):
            h = fastkv_int_hash(k)
        else:
            h = table_hash(key)
        return self._put_h(key, h, value)

    @cython.final
    cdef inline int _put_h(self, object key, Py_hash_t h, object value) except -1:
        cdef PyObject* k = <PyObject*>key
        cdef Py_ssize_t ix
        cdef PyObject* old
        self._acquire()
        ix = table_lookup_fast(&self._tab, k, h)
        if ix >= 0:
            old = _lt_swap_value(&self._tab, ix, <PyObject*>value)
            self._release()
            _decref(old)                      # its destructor runs unlocked
            return 0
        return self._put_locked(k, h, value, ix)

    @cython.final
    cdef int _put_locked(self, PyObject* k, Py_hash_t h, object value, Py_ssize_t ix) except -1:
        """The rest of _put, entered with the lock held and ix the fast lookup's
        answer (IX_EMPTY or IX_SLOW); releases the lock."""
        cdef PyObject* old = NULL
        try:
            if ix == IX_SLOW:
                ix = table_lookup(&self._tab, k, h)
            if ix >= 0:
                old = _lt_swap_value(&self._tab, ix, <PyObject*>value)
            else:
                table_append(&self._tab, k, h, <PyObject*>value)
        finally:
            self._release()
        _xdecref(old)
        return 0

    @cython.final
    cdef int _delete(self, object key) except -1:
        return self._delete_h(key, table_hash(key))

    @cython.final
    cdef int _delete_h(self, object key, Py_hash_t h) except -1:
        cdef PyObject* k = <PyObject*>key
        cdef Py_ssize_t ix
        cdef PyObject* dk
        cdef PyObject* dv
        self._acquire()
        try:
            ix = _lt_find(&self._tab, k, h)
            if ix < 0:
                return 0
            table_detach_at(&self._tab, ix, &dk, &dv)
        finally:
            self._release()
        _decref(dk)
        _decref(dv)
        return 1

    @cython.final
    cdef object _take(self, object key, object default):
        return self._take_h(key, table_hash(key), default)

    @cython.final
    cdef object _take_h(self, object key, Py_hash_t h, object default):
        cdef PyObject* k = <PyObject*>key
        cdef Py_ssize_t ix
        cdef PyObject* dk = NULL
        cdef PyObject* dv = NULL
        self._acquire()
        try:
            ix = _lt_find(&self._tab, k, h)
            if ix >= 0:
                table_detach_at(&self._tab, ix, &dk, &dv)
        finally:
            self._release()
        if dv == NULL:
            if default is _MISSING:
                raise KeyError(key)
            return default
        _decref(dk)
        return fastkv_steal(dv)

    @cython.final
    cdef int _put_many(self, _Snapshot staged) except -1:
        cdef Py_ssize_t n = staged.tab.used, nold = 0, j, ix
        cdef PyObject** olds
        cdef Entry* ep
        cdef Table tmp
        cdef Py_hash_t h
        if n == 0:
            return 0
        olds = <PyObject**>PyMem_Malloc(<size_t>n * sizeof(PyObject*))
        if olds == NULL:
            raise MemoryError()
        try:
            self._acquire()
            try:
                if self._tab.used == 0:
                    # Empty: adopt the staged arrays whole (staged is private;
                    # it takes our empty table and frees it later).
                    # A sized table has no spare entry slot: give it the
                    # room its index allows (dict's), or the first insert
                    # would rebuild the whole table under the lock.
                    table_reserve(&staged.tab)
                    tmp = self._tab
                    table_move(&self._tab, &staged.tab)
                    staged.tab = tmp
                    self._tab.version = tmp.version + 1
                else:
                    for j in range(staged.tab.nentries):
                        ep = _lt_entry(&staged.tab, j)
                        if ep.key == NULL:
                            continue
                        h = _lt_entry_hash(&staged.tab, j)
                        ix = _lt_find(&self._tab, ep.key, h)
                        ep = _lt_entry(&staged.tab, j)    # (staged never changes)
                        if ix >= 0:
                            olds[nold] = _lt_swap_value(&self._tab, ix, ep.value)
                            nold += 1
                        else:
                            table_append(&self._tab, ep.key, h, ep.value)
            finally:
                self._release()
        finally:
            for j in range(nold):
                _decref(olds[j])
            PyMem_Free(olds)
        return 0

    @cython.final
    cdef int _clear(self) except -1:
        cdef Table old
        self._acquire()
        old = self._tab
        table_init(&self._tab, 0)             # no allocation: cannot fail
        self._tab.version = old.version + 1
        self._release()
        table_clear(&old)                     # destructors run unlocked
        return 0

    @cython.final
    cdef list _items_list(self):
        """The items as ``_flat_items`` of an atomic copy gives them, copied
        under the lock straight into a list allocated before it (allocation
        may run the garbage collector, hence Python: never under the lock).
        No snapshot in between: its copy of the index and entries, an INCREF
        and later a DECREF of every key and value made pickling a 1M-key
        table 1.4x slower than pickling a dict. If the table's size changed
        between the allocation and the lock, it takes a snapshot after all."""
        cdef Py_ssize_t n = fk_ssize_load(&self._tab.used)
        cdef list out = PyList_New(1 + 2 * n)
        cdef _Snapshot snap
        self._acquire()
        if self._tab.used == n:
            _flat_fill(out, &self._tab)
            self._release()
            return out
        self._release()
        out = None
        snap = self._snapshot()
        return _flat_items(&snap.tab)

    @cython.final
    cdef _Snapshot _snapshot(self):
        cdef _Snapshot snap = _snapshot_new()   # allocated before the lock
        self._acquire()
        try:
            if self._tab.used:
                table_copy(&snap.tab, &self._tab, self._tab.used, -1)
        finally:
            self._release()
        return snap

    # --- reads ---------------------------------------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), atomic."""
        cdef PyObject* v
        if self._find_ref(key, &v):
            return fastkv_steal(v)
        return fastkv_cold_call2(_locked_missing, self, key)

    # get(key, default=None): hand-written METH_FASTCALL, installed below.

    def __contains__(self, key):
        """``key in t``. O(1), atomic."""
        return self._contains(key) == 1

    def __len__(self):
        """Number of keys. O(1)."""
        return self._len()

    def __iter__(self):
        """Iterate the keys of a snapshot taken atomically when iteration
        starts (O(n) copy of the keys); never raises "changed size"."""
        return _iterate(self._snapshot(), ITER_KEYS)

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over a
        snapshot taken atomically when iteration starts (as ``iter``); never
        raises "changed size"."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return _iterate_reversed(self._snapshot(), ITER_KEYS)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, read atomically under one
        lock hold. ``keys`` is read completely before the lock is taken."""
        cdef tuple seq
        cdef Py_ssize_t n, i, ix
        cdef list result
        cdef Py_hash_t* hashes
        cdef PyObject* k
        cdef PyObject* v
        cdef PyObject* d = <PyObject*>default
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        seq = PySequence_Tuple(keys)
        n = len(seq)
        result = PyList_New(n)
        if n == 0:
            return result
        hashes = <Py_hash_t*>PyMem_Malloc(<size_t>n * sizeof(Py_hash_t))
        if hashes == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                hashes[i] = table_hash(<object>_seq_item(seq, i))
            self._acquire()
            try:
                for i in range(n):
                    k = _seq_item(seq, i)
                    ix = _lt_find(&self._tab, k, hashes[i])
                    v = _lt_entry(&self._tab, ix).value if ix >= 0 else d
                    _incref(v)
                    _list_set(result, i, v)
            finally:
                self._release()
        finally:
            PyMem_Free(hashes)
        return result

    def to_dict(self):
        """A new ``dict`` with the items, copied atomically. O(n)."""
        cdef _Snapshot snap
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        snap = self._snapshot()
        return table_to_dict(&snap.tab)

    def keys(self):
        """A live, set-like view of the keys (``collections.abc.KeysView``);
        each iteration walks a snapshot taken when it starts."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return _TableKeysView(self)

    def values(self):
        """A live view of the values (``collections.abc.ValuesView``); each
        iteration walks a snapshot taken when it starts (O(n) copy)."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return _LockedValuesView(self)

    def items(self):
        """A live, set-like view of the ``(key, value)`` pairs
        (``collections.abc.ItemsView``); each iteration walks a snapshot taken
        when it starts (O(n) copy)."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return _LockedItemsView(self)

    def __sizeof__(self):
        """Bytes of the table's own structure: the object and its hash table
        (not the keys and values)."""
        cdef Py_ssize_t n
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._acquire()
        n = table_sizeof(&self._tab) + table_sizeof(&self._flights)
        self._release()
        return object.__sizeof__(self) + n

    def copy(self):
        """An independent ``LockedTable`` (never a subclass, as dict.copy)
        with the same items. O(n)."""
        cdef LockedTable new = LockedTable.__new__(LockedTable)
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._acquire()
        try:
            if self._tab.used:
                table_copy(&new._tab, &self._tab, self._tab.used, -1)
        finally:
            self._release()
        return new

    def __copy__(self):
        """``copy.copy(t)``: an independent table of t's own class (as for a
        dict subclass: a subclass's instance ``__dict__`` is copied shallowly).
        O(n)."""
        cdef LockedTable new
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        if type(self) is LockedTable:
            return self.copy()
        new = type(self).__new__(type(self))   # as dict: no subclass __init__
        LockedTable.put_many(new, self.to_dict())
        state = getattr(self, "__dict__", None)
        if state:
            new.__dict__.update(state)
        return new

    def snapshot(self):
        """An immutable ``FrozenTable`` (of this implementation) holding the
        items at one instant. O(n) copy."""
        cdef _Snapshot snap
        cdef FrozenTable frozen = FrozenTable.__new__(FrozenTable)
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        snap = self._snapshot()
        if snap.tab.used:
            frozen._snap = snap
        return frozen

    def select(self, predicate):
        """``[(k, v), ...]`` for which ``predicate(k, v)`` is true, in
        insertion order. The items are copied atomically (O(n)) and the
        predicate runs over that snapshot, never under the lock, so it may use
        the table."""
        cdef _Snapshot snap
        cdef list result = []
        cdef Py_ssize_t pos = 0
        cdef PyObject* k
        cdef PyObject* v
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        snap = self._snapshot()
        while table_next(&snap.tab, &pos, &k, &v):   # snap is private: stable
            key = <object>k
            value = <object>v
            if predicate(key, value):
                result.append((key, value))
        return result

    def info(self):
        """``{"size": number of keys, "memory": bytes of the table's own
        structure (not counting the keys and values it refers to)}``."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return {"size": self._len(), "memory": _sys_getsizeof(self)}

    # --- writes --------------------------------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``). O(1), atomic;
        a replaced value is released after the lock."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._put(key, value)

    def __setitem__(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``). O(1), atomic;
        a replaced value is released after the lock."""
        self._put(key, value)

    def delete(self, key):
        """Remove ``key``; True if it was there. O(1), atomic."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return self._delete(key) == 1

    def __delitem__(self, key):
        """``del t[key]``: remove ``key``, or ``KeyError(key)``. O(1), atomic."""
        if self._delete(key) == 0:
            raise KeyError(key)

    def put_many(self, mapping_or_pairs):
        """Store many items under one lock hold: other threads see all of them
        or none. The argument (a mapping or an iterable of pairs) is read
        completely before the lock is taken, so a bad argument changes
        nothing. O(m)."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._put_many(_locked_stage(mapping_or_pairs, None))

    def update(self, other=(), /, **kwargs):
        """``dict.update``: like ``put_many(dict(other, **kwargs))``, atomic."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._put_many(_locked_stage(other, kwargs))

    def insert_new(self, key, value):
        """Store ``value`` only if ``key`` is absent; True if it was stored.
        O(1), atomic (ETS ``insert_new``)."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h = table_hash(key)
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._acquire()
        try:
            if _lt_find(&self._tab, k, h) >= 0:
                return False
            table_append(&self._tab, k, h, <PyObject*>value)
            return True
        finally:
            self._release()

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it.
        O(1), atomic."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h = table_hash(key)
        cdef Py_ssize_t ix
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._acquire()
        try:
            ix = _lt_find(&self._tab, k, h)
            if ix >= 0:
                return <object>_lt_entry(&self._tab, ix).value
            table_append(&self._tab, k, h, <PyObject*>default)
            return default
        finally:
            self._release()

    def update_counter(self, key, incr=1, default=0):
        """Add ``incr`` to the integer under ``key`` and return the new value;
        a missing key starts from ``default`` (so it stores ``default + incr``).
        O(1), atomic (ETS ``update_counter``). ``TypeError``, table unchanged,
        when the stored value, ``default`` or ``incr`` is not an ``int``
        (``bool``, an ``int`` subclass, counts as one)."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h
        cdef Py_ssize_t ix
        cdef PyObject* old = NULL
        cdef PyObject* cur
        cdef object new = None
        cdef object current = None
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        if not _is_long(<PyObject*>incr):
            raise TypeError(
                f"update_counter increment must be an int, not {type(incr).__name__}")
        h = table_hash(key)
        self._acquire()
        try:
            ix = _lt_find(&self._tab, k, h)
            if ix >= 0:
                cur = _lt_entry(&self._tab, ix).value
                if _is_long(cur):
                    new = fastkv_long_add(cur, <PyObject*>incr)
                    old = _lt_swap_value(&self._tab, ix, <PyObject*>new)
                else:
                    current = <object>cur
            elif _is_long(<PyObject*>default):
                new = fastkv_long_add(<PyObject*>default, <PyObject*>incr)
                table_append(&self._tab, k, h, <PyObject*>new)
        finally:
            self._release()
        _xdecref(old)
        if new is None:
            if current is None:
                raise TypeError(
                    f"update_counter default must be an int, not {type(default).__name__}")
            raise TypeError(
                f"update_counter on a non-integer value ({type(current).__name__}) "
                f"under key {key!r}")
        return new

    def take(self, key, default=_MISSING):
        """Remove ``key`` and return its value (ETS ``take``); if absent,
        return ``default``, or raise ``KeyError(key)`` when none is given.
        O(1), atomic."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return self._take(key, default)

    def pop(self, key, default=_MISSING):
        """``dict.pop``: remove ``key`` and return its value, else ``default``,
        else ``KeyError(key)``. O(1), atomic."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return self._take(key, default)

    def popitem(self):
        """Remove and return the last inserted ``(key, value)`` pair (LIFO);
        ``KeyError`` when empty. O(1), atomic."""
        cdef PyObject* k
        cdef PyObject* v
        cdef int r
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._acquire()
        r = table_popitem(&self._tab, &k, &v)
        self._release()
        if not r:
            raise KeyError("popitem(): table is empty")
        return (fastkv_steal(k), fastkv_steal(v))

    def clear(self):
        """Remove every item, atomically. O(1) under the lock: the old
        contents are released after it."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self._clear()

    def fetch(self, key, loader):
        """The value for ``key``; if absent, ``loader(key)`` computes it, it is
        stored and returned. Single-flight: while one caller runs the loader
        for a key, concurrent callers for that key wait for its result instead
        of loading again; other keys are not blocked, and the loader runs
        without the lock. If the loader raises, every waiter gets that
        exception and nothing is stored. A loader that fetches its own key
        (same thread) gets ``RuntimeError``. O(1) when present."""
        cdef PyObject* k = <PyObject*>key
        cdef Py_hash_t h = table_hash(key)
        cdef uintptr_t me = fastkv_thread_id()
        cdef Py_ssize_t ix
        cdef _Flight fresh = None
        cdef _Flight flight = None
        cdef bint leader = False
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        value = _MISSING
        while True:
            self._acquire()
            try:
                ix = _lt_find(&self._tab, k, h)
                if ix >= 0:
                    value = <object>_lt_entry(&self._tab, ix).value
                else:
                    ix = _lt_find(&self._flights, k, h)
                    if ix >= 0:
                        flight = <_Flight>_lt_entry(&self._flights, ix).value
                    elif fresh is not None:
                        table_append(&self._flights, k, h, <PyObject*>fresh)
                        flight = fresh
                        leader = True
            finally:
                self._release()
            if value is not _MISSING:
                return value
            if flight is not None:
                break
            fresh = _flight_new(me)           # allocated unlocked, then retry
        if not leader:
            if flight.leader == me:
                raise RuntimeError(
                    f"fetch({key!r}) called again by its own loader: the load "
                    "would wait for itself")
            _flight_wait(flight)
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            value = loader(key)
            self._land(k, h, value, flight)
        except BaseException as exc:
            flight.error = exc
            try:
                self._land(NULL, 0, None, flight)
            finally:
                _flight_open(flight)
            raise
        flight.value = value
        _flight_open(flight)
        return value

    @cython.final
    cdef int _land(self, PyObject* k, Py_hash_t h, object value, _Flight flight) except -1:
        """End ``flight`` in one lock hold: store ``value`` under k (unless k
        is NULL), then remove the flight (found by identity: no Python)."""
        cdef PyObject* old = NULL
        cdef PyObject* fk = NULL
        cdef PyObject* fv = NULL
        cdef Py_ssize_t ix, j
        self._acquire()
        try:
            if k != NULL:
                ix = _lt_find(&self._tab, k, h)
                if ix >= 0:
                    old = _lt_swap_value(&self._tab, ix, <PyObject*>value)
                else:
                    table_append(&self._tab, k, h, <PyObject*>value)
            for j in range(self._flights.nentries):
                if _lt_entry(&self._flights, j).value == <PyObject*>flight:
                    table_detach_at(&self._flights, j, &fk, &fv)
                    break
        finally:
            self._release()
        _xdecref(old)
        _xdecref(fk)
        _xdecref(fv)
        return 0

    # --- the rest of the shared API -----------------------------------------------

    def close(self):
        """Nothing to stop: a no-op, the table stays usable. Idempotent."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)

    def __enter__(self):
        """``with table:`` returns the table itself."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return self

    def __exit__(self, exc_type, exc, tb):
        """Leaving the ``with`` block calls ``close()``; exceptions propagate."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        self.close()
        return None

    def __eq__(self, other):
        """Equal to any ``collections.abc.Mapping`` with equal items, as dict
        compares; ``NotImplemented`` for anything else. O(n)."""
        if not isinstance(other, (FrozenTable, dict, Mapping)):
            return NotImplemented
        return _equals(self._snapshot(), other)

    def __ne__(self, other):
        cdef object eq = self.__eq__(other)
        if eq is NotImplemented:
            return eq
        return not eq

    __hash__ = None

    def __repr__(self):
        """``TypeName({...items...})``; a table that contains itself prints
        ``...`` there, as dict does. O(n)."""
        return _snapshot_repr(self, self._snapshot())

    def __reduce__(self):
        """Pickle (and ``copy.deepcopy``) as a dict is: ``cls.__new__(cls)``
        made empty first (a subclass's ``__init__`` is not called), then filled by ``__setstate__`` from the state
        ``(items, attrs)`` (``items``: the flat list ``["fastkv.items", k0,
        v0, k1, v1, ...]`` of an atomic copy, no dict built; ``attrs``: a
        subclass instance's ``__dict__``), so an item that refers back to the
        table -- the table itself included -- loads as the new table. O(n)."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        return (_fk_newobj, (type(self),), fk_reduce_state(self, self._items_list()))

    def __setstate__(self, state):
        """Load a pickled ``(items, attrs)`` state: ``attrs`` into a
        subclass instance's ``__dict__``, then the items (the flat list
        ``__reduce__`` makes, or a dict or pairs) in one ``put_many`` (one
        lock hold), never a subclass's override. On a table already in use
        it only adds: keys the state does not name are kept."""
        if not isinstance(self, LockedTable):
            fk_wrong_self(self, LockedTable)
        items = fk_setstate_attrs(self, state)
        if items:
            self._put_many(_state_stage(items))

    # --- dict's operators and fromkeys -------------------------------------------

    def __or__(self, other):
        """``t | other``: a new ``LockedTable`` (never a subclass, as
        ``copy()``) with t's items (copied atomically), then those of
        ``other``, a ``collections.abc.Mapping`` whose values win. O(n + m);
        t is unchanged. ``NotImplemented`` for anything but a mapping."""
        cdef _Snapshot mine
        if not isinstance(other, (dict, FrozenTable, Mapping)):
            return NotImplemented
        mine = self._snapshot()
        _absorb(mine, _locked_stage(other, None))
        return _locked_adopt(mine)

    def __ror__(self, other):
        """``other | t`` for a ``collections.abc.Mapping`` ``other`` that does
        not handle it (a dict): a new ``LockedTable`` with other's items, then
        t's (copied atomically; t's values win). O(n + m)."""
        cdef _Snapshot staged
        if not isinstance(other, (dict, FrozenTable, Mapping)):
            return NotImplemented
        staged = _locked_stage(other, None)
        _absorb(staged, self._snapshot())
        return _locked_adopt(staged)

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs), atomic, and t itself is the result."""
        self._put_many(_locked_stage(other, None))
        return self

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """A new table of class ``cls`` (a subclass gets its own, as
        ``dict.fromkeys``) mapping every key of ``iterable`` to ``value`` (the
        same object for all). O(n)."""
        if cls is LockedTable:
            return LockedTable(dict.fromkeys(iterable, value))
        new = cls()     # as dict.fromkeys: cls() with no arguments, then
        for key in iterable:    # new[key] = value (a subclass's __setitem__)
            new[key] = value
        return new

    __class_getitem__ = classmethod(GenericAlias)


cdef LockedTable _locked_adopt(_Snapshot snap):
    """A new LockedTable taking over the arrays of the private snapshot
    ``snap`` (left empty). O(1), no Python."""
    cdef LockedTable new = LockedTable.__new__(LockedTable)
    cdef Table tmp = new._tab            # empty: nothing allocated
    new._tab = snap.tab
    snap.tab = tmp
    return new


cdef extern from *:
    """
    /* LockedTable.get as a METH_FASTCALL|METH_KEYWORDS method written by hand
       (the method descriptor checks the type of self). */
    static PyMethodDef fastkv_locked_get_def = {
        "get", NULL, METH_FASTCALL | METH_KEYWORDS,
        "get($self, key, default=None)\\n--\\n\\n"
        "The value for ``key``, else ``default``. O(1), atomic."};
    """
    PyMethodDef fastkv_locked_get_def


cdef object _locked_get_fastcall(object self, PyObject** args, Py_ssize_t nargs,
                                 PyObject* kwnames):
    """LockedTable.get(key, default=None), vectorcall convention."""
    cdef PyObject* key
    cdef PyObject* default
    if kwnames == NULL:
        if nargs == 1:
            return (<LockedTable>self)._get(<object>args[0], None)
        if nargs == 2:
            return (<LockedTable>self)._get(<object>args[0], <object>args[1])
    _parse_key_default(args, nargs, kwnames, &key, &default)
    return (<LockedTable>self)._get(<object>key, <object>default)


fastkv_install_method(LockedTable, &fastkv_locked_get_def, <void*>_locked_get_fastcall)
MutableMapping.register(LockedTable)


# --- GC support: the tables hold references the cyclic GC must see ----------

cdef Py_ssize_t _LOCKED_TAB_OFFSET
cdef Py_ssize_t _LOCKED_FLIGHTS_OFFSET


cdef int _locked_traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    cdef int r = table_traverse(<Table*>(<char*>o + _LOCKED_TAB_OFFSET), visit, arg)
    if r:
        return r
    return table_traverse(<Table*>(<char*>o + _LOCKED_FLIGHTS_OFFSET), visit, arg)


cdef int _locked_clear(PyObject* o) noexcept:
    # Only the cyclic GC calls this, on an unreachable table: no thread is in a
    # method of it (a method holds a reference), so the lock is free.
    table_clear(<Table*>(<char*>o + _LOCKED_FLIGHTS_OFFSET))
    table_clear(<Table*>(<char*>o + _LOCKED_TAB_OFFSET))
    return 0


cdef LockedTable _offsets_probe = LockedTable.__new__(LockedTable)
_LOCKED_TAB_OFFSET = <char*>&_offsets_probe._tab - <char*><void*>_offsets_probe
_LOCKED_FLIGHTS_OFFSET = <char*>&_offsets_probe._flights - <char*><void*>_offsets_probe
_offsets_probe = None
fastkv_set_gc_hooks(LockedTable, <void*>_locked_traverse, <void*>_locked_clear)
