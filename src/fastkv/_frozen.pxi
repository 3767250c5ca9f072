# fastkv/_frozen.pxi: the compiled FrozenTable (included by _core.pyx).
#
# A FrozenTable points at one immutable ``_Snapshot`` (an engine Table that is
# never changed once published). Reads go straight to the current snapshot;
# ``put``/``delete``/``put_many`` build a new snapshot (an O(n) copy, the
# ``:persistent_term`` cost model) and swap the pointer. A reader in flight
# keeps the snapshot it started with:
#
# - for an exact str/int key the lookup runs no Python code and takes no
#   reference to the snapshot (a refcount written by every reader would be one
#   cache line shared by all of them). Under the GIL nothing can swap (and
#   free) the snapshot during it. On a free-threaded build the look-up is a
#   read section (``_ft.h``): the thread's own counter goes odd, a fence, the
#   snapshot pointer is loaded (acquire), the value INCREF'd, the counter goes
#   even. A writer publishes a new snapshot with an atomic exchange, then
#   waits (``fk_rd_synchronize``) until every section that was open has
#   closed, and only then drops the old snapshot: no reader can hold freed
#   memory, and the old snapshot and its values are released as promptly as
#   on a GIL build. Readers write nothing shared; only writers pay. That
#   includes references: t[k] and get take one reference, to the value they
#   return, and none to a sentinel (``_lookup_ref``: found or absent), the
#   table or the snapshot -- each a refcount line every reader would write
#   (benchmarks/callgrind_atomics.py counts them);
# - any other lookup (a key's ``__eq__`` may run Python, may even write to
#   this table) holds its own reference to the snapshot for its duration;
# - iterators, views and get_many hold theirs; every reference to the
#   current snapshot is taken inside a read section (``_snap_ref``), every
#   swap goes through ``_snap_swap``. The writers' lock is allocated once even
#   when two first writers race (a critical section on the table).
#
# Writers serialize on a per-table lock (allocated on the first write, waited
# for without the GIL; the main thread's wait wakes for signals, so Ctrl-C
# stops it, nothing written), so no write is lost. A write that re-enters the same
# table from its own thread (a key's ``__eq__`` calling ``put``) raises
# RuntimeError instead of deadlocking. Input is read and hashed before the lock
# is taken; the old snapshot is released after the lock is, so destructors
# never run under the lock.
#
# LockedTable.snapshot() wraps the _Snapshot its lock-held copy produced in a
# FrozenTable directly (no second copy).

cimport cython
from cpython.pythread cimport (
    PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
    PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK)
cdef extern from "_locked.h":
    unsigned fastkv_fork_gen            # forks this process descends from
    unsigned long fastkv_fork_ident     # the thread that made the last one
    unsigned long fastkv_main_ident     # the thread signal handlers run in
    long long FK_SIGNAL_POLL_US         # how often a main-thread wait looks
                                        # for signals at the latest

cdef extern from "Python.h":
    ctypedef enum PyLockStatus:
        PY_LOCK_FAILURE
        PY_LOCK_ACQUIRED
        PY_LOCK_INTR
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock lock, long long us,
                                             int intr_flag) nogil
    int PyErr_CheckSignals() except -1
from cpython.dict cimport PyDict_Next
from cpython.list cimport PyList_New
from cpython.object cimport PyObject_RichCompareBool, PyObject_LengthHint

from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from types import GenericAlias

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident() noexcept
    int Py_ReprEnter(object o) except -1
    void Py_ReprLeave(object o)
    void _list_set "PyList_SET_ITEM"(object l, Py_ssize_t i, PyObject* o) noexcept
    object PySequence_Fast(object o, const char* m)
    Py_ssize_t _seq_size "PySequence_Fast_GET_SIZE"(object o) noexcept
    PyObject* _seq_item "PySequence_Fast_GET_ITEM"(object o, Py_ssize_t i) noexcept
    PyObject* _dict_getitem "PyDict_GetItemWithError"(object d, PyObject* key) except? NULL
    object PyTuple_Pack(Py_ssize_t n, ...)

cdef extern from *:
    """
    /* Give the snapshot type our own GC hooks (see _snapshot_traverse). */
    #define fastkv_set_gc_hooks(type, trav, clear) \\
        (((PyTypeObject *)(type))->tp_traverse = (traverseproc)(trav), \\
         ((PyTypeObject *)(type))->tp_clear = (inquiry)(clear))
    """
    void fastkv_set_gc_hooks(object type, void* trav, void* clear)

cdef extern from *:
    """
    /* FrozenTable's snapshot field as a C slot, and its current snapshot's
       engine table read in C, with no reference taken (inside a read
       section on a free-threaded build). */
    #define FK_FROZEN_SNAPP(o) \
        (&((struct __pyx_obj_6fastkv_5_core_FrozenTable *)(o))->_snap)
    #define FK_FROZEN_TAB(o) (&FK_LOAD_PTR(FK_FROZEN_SNAPP(o))->tab)
    #define FK_FROZEN_LOAD(o) ((PyObject *)FK_LOAD_PTR(FK_FROZEN_SNAPP(o)))
    #define FK_FROZEN_SWAP(o, p) ((PyObject *)FK_SWAP_PTR(FK_FROZEN_SNAPP(o), \
        (struct __pyx_obj_6fastkv_5_core__Snapshot *)(p)))
    """
    PyObject* FK_FROZEN_LOAD(object o) noexcept
    PyObject* FK_FROZEN_SWAP(object o, PyObject* p) noexcept
    Table* FK_FROZEN_TAB(object o) noexcept

cdef extern from *:
    """
    /* FrozenTable.get as a METH_FASTCALL|METH_KEYWORDS method written by hand:
       Cython's generic argument parsing costs ~10% of a dict-speed get(). */
    static PyMethodDef fastkv_frozen_get_def = {
        "get", NULL, METH_FASTCALL | METH_KEYWORDS,
        "get($self, key, default=None)\\n--\\n\\n"
        "The value for ``key``, else ``default``. O(1), never blocks."};
    """
    PyMethodDef fastkv_frozen_get_def
    Py_ssize_t _tuple_size "PyTuple_GET_SIZE"(PyObject* t) noexcept
    PyObject* _tuple_item "PyTuple_GET_ITEM"(PyObject* t, Py_ssize_t i) noexcept


cdef object _MISSING = object()


cdef int fk_wait_pylock(PyThread_type_lock lock) except -1:
    """Acquire ``lock`` (a PyThread lock another thread holds), waiting
    without the GIL. The main thread wakes for signals (a lock wait is
    interrupted by one, and anyway every FK_SIGNAL_POLL_US) and runs their
    handlers: one that raises (KeyboardInterrupt) ends the wait with that
    exception, the lock not taken. Other threads, which handlers never run
    in, just wait."""
    cdef PyLockStatus r
    if PyThread_get_thread_ident() != fastkv_main_ident:
        with nogil:
            PyThread_acquire_lock(lock, WAIT_LOCK)
        return 0
    while True:
        with nogil:
            r = PyThread_acquire_lock_timed(lock, FK_SIGNAL_POLL_US, 1)
        if r == PY_LOCK_ACQUIRED:
            return 0
        PyErr_CheckSignals()

# What PyThread_allocate_lock allocates for a writers' lock: a sem_t (32 bytes
# on 64-bit Linux and macOS); counted by __sizeof__ once the lock exists.
cdef Py_ssize_t _LOCK_SIZE = 32


@cython.final
@cython.auto_pickle(False)
@cython.trashcan(True)
@cython.no_gc_clear
cdef class _Snapshot:
    """One immutable state of a FrozenTable: an engine table that is never
    changed once published (only filled while still private to a writer)."""
    cdef Table tab
    cdef object _gc      # an object field makes the type GC-tracked; its
                         # traverse/clear are replaced by ours below

    def __cinit__(self):
        table_init(&self.tab, 0)

    def __dealloc__(self):
        table_clear(&self.tab)

    def __sizeof__(self):
        if not isinstance(self, _Snapshot):
            fk_wrong_self(self, _Snapshot)
        return object.__sizeof__(self) + table_sizeof(&self.tab)


cdef Py_ssize_t _SNAPSHOT_TAB_OFFSET


cdef int _snapshot_traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    return table_traverse(<Table*>(<char*>o + _SNAPSHOT_TAB_OFFSET), visit, arg)


cdef int _snapshot_clear(PyObject* o) noexcept:
    # Only the cyclic GC calls this, on an unreachable snapshot.
    table_clear(<Table*>(<char*>o + _SNAPSHOT_TAB_OFFSET))
    return 0


cdef _Snapshot _EMPTY_SNAPSHOT = _Snapshot.__new__(_Snapshot)
_SNAPSHOT_TAB_OFFSET = <char*>&_EMPTY_SNAPSHOT.tab - <char*><void*>_EMPTY_SNAPSHOT
fastkv_set_gc_hooks(_Snapshot, <void*>_snapshot_traverse, <void*>_snapshot_clear)


cdef inline _Snapshot _snapshot_new():
    return _Snapshot.__new__(_Snapshot)


fk_rd_init()
fastkv_dict_walk_verify()     # (see _engine.pxi: reading dicts directly)
_DICT_WALK = bool(fastkv_dict_walk_ok)   # builds from a dict read its entries directly


def _build_checked(dict data, bint room=False, int fault=0, bint simd=True):
    """Tests only: build from ``data`` as FrozenTable(data) (``room``: as
    LockedTable(data)) and return the table as an ``_EngineTable`` (whose
    ``check()`` and ``info()`` see the engine's invariants and counters).
    ``fault``: 1 stops the derived-index build halfway (as at a key that
    needs Python), 2 makes it find the dict's index corrupt; both must
    still build a correct table. ``simd=False``: the derived index is made
    by the scalar loop even where the CPU has AVX2. Returns ``(table,
    path)``, path saying how the index was made: "derived", "stopped"
    (fault 1), "rebuilt" (fault 2) or None (not by _fill_derived)."""
    global _build_fault, _build_path, fastkv_derive_avx2
    cdef _Snapshot st
    cdef _EngineTable out = _EngineTable()
    cdef Table tmp
    cdef int avx2 = fastkv_derive_avx2
    _build_fault = fault
    _build_path = 0
    if not simd:
        fastkv_derive_avx2 = 0
    try:
        st = _stage(data, None, room)
    finally:
        _build_fault = 0
        fastkv_derive_avx2 = avx2
    tmp = out.tab
    table_move(&out.tab, &st.tab)
    table_move(&st.tab, &tmp)
    if room:
        table_reserve(&out.tab)     # as LockedTable._put_many does
    return out, (None, "derived", "stopped", "rebuilt")[_build_path]


cdef inline _Snapshot _snap_ref(FrozenTable self):
    """The table's current snapshot as a new reference: what a reader that
    may run Python (or keeps it: iterators, views) holds. No Python."""
    cdef _Snapshot snap
    fk_rd_enter()
    snap = <_Snapshot>FK_FROZEN_LOAD(self)
    fk_rd_exit()
    return snap


cdef _Snapshot _snap_swap(FrozenTable self, _Snapshot new):
    """Publish ``new`` (writers' lock held, or a table nobody else can see)
    and return the snapshot it replaced, once no read section can still be
    inside it: the caller drops it after its lock. No Python."""
    cdef PyObject* old
    _incref(<PyObject*>new)
    old = FK_FROZEN_SWAP(self, <PyObject*>new)
    fk_rd_synchronize()
    cdef _Snapshot res = <_Snapshot>old
    _decref(old)            # the reference the slot held is now res's
    return res


cdef int _stage_pair(_Snapshot st, object item, Py_ssize_t n) except -1:
    cdef object pair
    try:
        pair = PySequence_Fast(item, "")
    except TypeError:
        raise TypeError(
            f"cannot convert update sequence element #{n} to a sequence") from None
    if _seq_size(pair) != 2:
        raise ValueError(
            f"update sequence element #{n} has length {_seq_size(pair)}; 2 is required")
    key = <object>_seq_item(pair, 0)
    value = <object>_seq_item(pair, 1)
    table_insert(&st.tab, <PyObject*>key, table_hash(key), <PyObject*>value)
    return 0


cdef _Snapshot _stage(object data, dict kwargs, bint room=False):
    """Read ``data`` (a mapping, anything with keys(), or an iterable of pairs)
    then ``kwargs`` into a new private snapshot, later keys winning. Runs
    Python (iteration, hashing, __eq__); takes no lock. ``room``: a dict is
    read into a table with every entry slot its index allows (what a
    LockedTable built from it keeps, see table_reserve), instead of exactly
    its size."""
    cdef _Snapshot st = _snapshot_new()
    cdef _Snapshot src
    cdef Py_ssize_t pos = 0, n = 0, extra = len(kwargs) if kwargs else 0
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_hash_t h
    if type(data) is dict:
        # While every key is an exact str or int, no Python code runs (so the
        # dict cannot change) and its keys are distinct: table_fill_from_dict
        # copies them in one pass. The first key that needs Python (or an int
        # in a str-only table) ends it; the rest goes through table_insert,
        # with the hash the dict stored for it where fk_dict_next gives it.
        pos = 0
        if PyDict_Next(data, &pos, &k, &v) and not _is_str(k):
            _set_empty(&st.tab, False)      # general layout from the start
        n = len(<dict>data) + extra
        _alloc(&st.tab, _usable(_log2_for(n)) if room and n > 0 else n)
        n = 0
        pos = 0
        if not table_fill_from_dict(&st.tab, data, &pos):
            while fk_dict_next(data, &pos, &k, &v, &h):
                key = <object>k          # own references: hashing may run Python
                value = <object>v
                table_insert(&st.tab, k, h if h != -1 else table_hash(key), v)
    elif isinstance(data, FrozenTable):
        src = _snap_ref(<FrozenTable>data)
        table_copy(&st.tab, &src.tab, src.tab.used + extra, -1)
    elif hasattr(data, "keys"):
        table_init(&st.tab, table_size_hint(PyObject_LengthHint(data, 0), extra))
        for key in data.keys():
            value = data[key]
            table_insert(&st.tab, <PyObject*>key, table_hash(key), <PyObject*>value)
    else:
        for item in data:
            _stage_pair(st, item, n)
            n += 1
    if kwargs:
        for key, value in kwargs.items():
            table_insert(&st.tab, <PyObject*>key, table_hash(key), <PyObject*>value)
    return st


# The items of a pickled table (the state every table's __reduce__ gives,
# see fk_reduce_state): one flat list ``[_ITEMS_MARK, k0, v0, k1, v1, ...]``.
# A list is written by pickle without a dict to build first (to_dict was a
# third of the cost of pickle.dumps at 1M keys: a hash insert per key) and
# loads without one either. The mark (a str that is not a pair) tells it from
# the states older pickles hold, a dict or a list of pairs, which still load
# through _stage. Same list in fastkv.reference.
_ITEMS_MARK = "fastkv.items"


cdef list _flat_items(const Table* t):
    """t's live items as a new ``[_ITEMS_MARK, k0, v0, ...]`` list, in
    insertion order. t must not change meanwhile (a snapshot or a private
    table). No Python (but allocation)."""
    cdef list out = PyList_New(1 + 2 * t.used)
    _flat_fill(out, t)
    return out


cdef void _flat_fill(list out, const Table* t) noexcept:
    """Fill ``out``, a new list of exactly ``1 + 2 * t.used`` empty (NULL)
    slots, with ``_ITEMS_MARK`` and t's live items (new references). No
    Python, no allocation: LockedTable runs it under its lock."""
    cdef Py_ssize_t j, k = 1
    cdef const Entry* ep
    _incref(<PyObject*>_ITEMS_MARK)
    _list_set(out, 0, <PyObject*>_ITEMS_MARK)
    for j in range(t.nentries):
        ep = table_entry(t, j)
        if ep.key != NULL:
            _incref(ep.key)
            _list_set(out, k, ep.key)
            _incref(ep.value)
            _list_set(out, k + 1, ep.value)
            k += 2


cdef _Snapshot _state_stage(object items):
    """A pickled state's items (see _ITEMS_MARK; older pickles: a dict or
    pairs, read by _stage) as a new private snapshot, later keys winning.
    A marked list of even length (a key without its value) is ValueError;
    an unhashable key TypeError. Runs Python (hashing, __eq__)."""
    cdef _Snapshot st
    cdef Py_ssize_t n, j
    if type(items) is not list or len(<list>items) == 0:
        return _stage(items, None)
    mark = (<list>items)[0]
    if not (type(mark) is str and mark == _ITEMS_MARK):   # (no Python: exact str)
        return _stage(items, None)
    n = len(<list>items)
    if n % 2 == 0:
        raise ValueError(
            f"a pickled table's items have a key without a value ({n - 1} after the mark)")
    st = _snapshot_new()
    if n > 1 and not _is_str(<PyObject*>(<list>items)[1]):
        _set_empty(&st.tab, False)          # general layout from the start
    _alloc(&st.tab, n // 2)    # the list holds them all: an honest size
    j = 1
    while j + 1 < len(<list>items):         # (a key's __hash__ may shrink it)
        key = (<list>items)[j]
        value = (<list>items)[j + 1]
        table_insert(&st.tab, <PyObject*>key, table_hash(key), <PyObject*>value)
        j += 2
    return st


cdef _Snapshot _merge(_Snapshot old, _Snapshot staged):
    """old updated with staged's items, as a new snapshot (or one of the two
    when the other is empty). Runs Python (__eq__); called under the lock."""
    cdef _Snapshot new
    cdef Py_ssize_t j
    cdef Entry* ep
    if staged.tab.used == 0:
        return old
    if old.tab.used == 0:
        table_trim(&staged.tab)
        return staged
    new = _snapshot_new()
    table_copy(&new.tab, &old.tab, old.tab.used + staged.tab.used, -1)
    for j in range(staged.tab.nentries):   # staged is private: nothing changes it
        ep = table_entry(&staged.tab, j)
        if ep.key != NULL:
            table_insert(&new.tab, ep.key, table_entry_hash(&staged.tab, j), ep.value)
    table_trim(&new.tab)
    return new


cdef int _absorb(_Snapshot dst, _Snapshot src) except -1:
    """dst.update(src) for a private ``dst`` (nobody else sees it) and a
    ``src`` that never changes (private or published): room for both is made
    once, then src's items are inserted in order (an equal key keeps dst's
    key object and takes src's value). Runs Python (__eq__)."""
    cdef Py_ssize_t j
    cdef Entry* ep
    if src.tab.used == 0:
        return 0
    table_resize(&dst.tab, dst.tab.used + src.tab.used)
    for j in range(src.tab.nentries):
        ep = table_entry(&src.tab, j)
        if ep.key != NULL:
            table_insert(&dst.tab, ep.key, table_entry_hash(&src.tab, j), ep.value)
    return 0


cdef int _lookup_slow_ref(FrozenTable self, object key, PyObject** out) except -1:
    """_lookup_ref for a key whose hash or equality may run Python."""
    cdef _Snapshot snap
    cdef Py_hash_t h = table_hash(key)     # may run Python
    cdef Py_ssize_t ix
    cdef PyObject* v
    snap = _snap_ref(self)                  # held for the whole lookup
    ix = table_lookup(&snap.tab, <PyObject*>key, h)
    if ix >= 0:
        v = table_entry(&snap.tab, ix).value
        _incref(v)
        out[0] = v
        return 1
    return 0


cdef inline int _lookup_ref(FrozenTable self, object key, PyObject** out) except -1:
    """1 and a NEW reference to self[key] in *out, or 0 if absent. No
    sentinel and no second reference to the value: on a free-threaded build
    a reference to an object other threads created is an atomic add on its
    refcount (t[k] passed the shared ``_MISSING`` and held the value twice:
    9.92 atomic instructions per read against 3.97, callgrind_atomics.py)."""
    cdef PyObject* k = <PyObject*>key
    cdef const Table* t
    cdef Py_hash_t h
    cdef Py_ssize_t ix
    cdef PyObject* v
    if _is_str(k):
        h = FASTKV_STR_HASH(k)
        if h == -1:
            h = _object_hash(k)        # str hashing runs no Python
    elif _is_int(k):
        h = fastkv_int_hash(k)
    else:
        return _lookup_slow_ref(self, key, out)
    fk_rd_enter()
    t = FK_FROZEN_TAB(self)              # no Python runs until we return
    ix = table_lookup_fast(t, k, h)
    if ix >= 0:
        v = table_entry(t, ix).value
        _incref(v)                       # ours before the section ends
        fk_rd_exit()
        out[0] = v
        return 1
    fk_rd_exit()
    if ix == IX_EMPTY:
        return 0
    return _lookup_slow_ref(self, key, out)


cdef inline object _lookup(FrozenTable self, object key, object missing):
    """self[key] as a new reference, or ``missing``."""
    cdef PyObject* v
    if _lookup_ref(self, key, &v):
        return fastkv_steal(v)
    return missing


cdef int _contains_slow(FrozenTable self, object key) except -1:
    cdef _Snapshot snap
    cdef Py_hash_t h = table_hash(key)     # may run Python
    snap = _snap_ref(self)                  # held for the whole lookup
    return table_lookup(&snap.tab, <PyObject*>key, h) >= 0


cdef inline int _contains(FrozenTable self, object key) except -1:
    """key in self, never touching the value (one cache miss less)."""
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
        return _contains_slow(self, key)
    fk_rd_enter()
    ix = table_lookup_fast(FK_FROZEN_TAB(self), k, h)
    fk_rd_exit()
    if ix == IX_SLOW:
        return _contains_slow(self, key)
    return ix >= 0


cdef enum:
    PIPELINE_BYTES = 1 << 23   # get_many prefetches past this table size (8 MB:
                               # below it the pipeline costs more than it saves)
    AHEAD = 16                 # get_many pipeline: keys hashed ahead
    RING = 32                  # ring of hashes (a power of two > AHEAD)


cdef inline Py_ssize_t _get_fast_ix(const Table* t, PyObject* k) noexcept:
    """table_lookup_fast for any key: IX_SLOW unless exact str/int."""
    cdef Py_hash_t h
    if _is_str(k):
        h = FASTKV_STR_HASH(k)
        if h == -1:
            h = _object_hash(k)        # str hashing: no Python, no error
        return table_lookup_fast(t, k, h)
    if _is_int(k):
        return table_lookup_fast(t, k, fastkv_int_hash(k))
    return IX_SLOW


cdef int _get_many_one_slow(Table* t, object seq, Py_ssize_t i, Py_ssize_t n,
                            list result, PyObject* default) except -1:
    """result[i] for seq[i] on the slow path. Python may run, and may even
    change ``seq`` when that is the caller's own list: then the rest is done
    by _get_many_tail, as iterating that list would (1 is returned)."""
    cdef PyObject* v
    key = <object>_seq_item(seq, i)
    ix = table_lookup(t, <PyObject*>key, table_hash(key))
    v = table_entry(t, ix).value if ix >= 0 else default
    _incref(v)
    _list_set(result, i, v)
    if _seq_size(seq) != n:
        _get_many_tail(t, seq, i + 1, result, default)
        return 1
    return 0


cdef int _get_many_tail(Table* t, object seq, Py_ssize_t start, list result,
                        PyObject* default) except -1:
    """The keys list changed size under get_many: drop the slots not filled
    yet and go on like a for loop over the live list."""
    cdef Py_ssize_t j = start
    del result[start:]
    while j < _seq_size(seq):
        key = <object>_seq_item(seq, j)
        ix = table_lookup(t, <PyObject*>key, table_hash(key))
        result.append(<object>table_entry(t, ix).value if ix >= 0 else <object>default)
        j += 1
    return 0


cdef int _get_many_simple(Table* t, object seq, Py_ssize_t start, Py_ssize_t n,
                          list result, PyObject* default) except -1:
    cdef Py_ssize_t i, ix
    cdef PyObject* v
    for i in range(start, n):
        ix = _get_fast_ix(t, _seq_item(seq, i))
        if ix == IX_SLOW:
            if _get_many_one_slow(t, seq, i, n, result, default):
                return 0
            continue
        v = table_entry(t, ix).value if ix >= 0 else default
        _incref(v)
        _list_set(result, i, v)
    return 0


cdef inline Py_hash_t _fast_hash(PyObject* k) noexcept:
    """hash of an exact str/int key (no Python), or -1 for any other key."""
    cdef Py_hash_t h
    if _is_str(k):
        h = FASTKV_STR_HASH(k)
        if h == -1:
            h = _object_hash(k)
        return h
    if _is_int(k):
        return fastkv_int_hash(k)
    return -1


cdef int _get_many_pipelined(Table* t, object seq, Py_ssize_t n, list result,
                             PyObject* default) except -1:
    """get_many over a table bigger than the caches, as a software pipeline:
    key i+AHEAD is hashed and its index slot prefetched, key i+AHEAD/2 has
    its entry prefetched, key i is looked up -- so cache misses of several
    keys overlap instead of coming one after the other. Any key needing
    Python ends the pipeline (seq may change): the rest goes the plain way."""
    cdef Py_hash_t ring[RING]
    cdef Py_ssize_t i, j, ix
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_hash_t h
    cdef size_t mask = t.mask
    for j in range(min(<Py_ssize_t>AHEAD, n)):
        h = _fast_hash(_seq_item(seq, j))
        ring[j & (RING - 1)] = h
        if h != -1:
            FASTKV_PREFETCH(<char*>t.indices + ((<size_t>h & mask) << t.ixshift))
    for i in range(n):
        j = i + AHEAD
        if j < n:
            h = _fast_hash(_seq_item(seq, j))
            ring[j & (RING - 1)] = h
            if h != -1:
                FASTKV_PREFETCH(<char*>t.indices + ((<size_t>h & mask) << t.ixshift))
        j = i + AHEAD // 2
        if j < n:
            h = ring[j & (RING - 1)]
            if h != -1:
                ix = _ix_get(t, <size_t>h & mask)
                if ix >= 0:
                    FASTKV_PREFETCH(table_entry(t, ix & <Py_ssize_t>mask))
        j = i + AHEAD // 4
        if j < n:
            h = ring[j & (RING - 1)]
            if h != -1:
                ix = _ix_get(t, <size_t>h & mask)
                if ix >= 0:
                    ix &= <Py_ssize_t>mask
                    FASTKV_PREFETCH(table_entry(t, ix).key)
                    FASTKV_PREFETCH(table_entry(t, ix).value)
        h = ring[i & (RING - 1)]
        k = _seq_item(seq, i)
        ix = table_lookup_fast(t, k, h) if h != -1 else IX_SLOW
        if ix == IX_SLOW:
            if _get_many_one_slow(t, seq, i, n, result, default):
                return 0
            return _get_many_simple(t, seq, i + 1, n, result, default)
        v = table_entry(t, ix).value if ix >= 0 else default
        _incref(v)
        _list_set(result, i, v)
    return 0


def _items_contain(mapping, item):
    """``item in mapping.items()`` as dict answers it, for every table's
    items view: False unless ``item`` is a 2-tuple whose key is present
    (looked up through the table's own fastkv class, never a subclass's
    ``__getitem__``/``__missing__``) with an identical or equal value."""
    if not isinstance(item, tuple) or len(item) != 2:
        return False
    key, value = item
    if isinstance(mapping, FrozenTable):
        v = FrozenTable.get(mapping, key, _MISSING)
    elif isinstance(mapping, LockedTable):
        v = LockedTable.get(mapping, key, _MISSING)
    elif isinstance(mapping, OwnerTable):
        v = OwnerTable.get(mapping, key, _MISSING)
    else:
        v = mapping.get(key, _MISSING)
    if v is _MISSING:
        return False
    return v is value or v == value


cdef object _missing_key(object self, object key):
    """A miss in self[key]: a subclass's __missing__, else KeyError(key)."""
    if type(self) is not FrozenTable:
        missing = getattr(type(self), "__missing__", None)
        if missing is not None:
            return missing(self, key)
    raise KeyError(key)


cdef enum:
    ITER_KEYS = 0
    ITER_VALUES = 1
    ITER_ITEMS = 2


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class _FrozenIterator:
    """Iterates one snapshot of a FrozenTable (keys, values or items)."""
    cdef _Snapshot snap
    cdef Py_ssize_t pos
    cdef int kind

    def __iter__(self):
        return self

    def __next__(self):
        cdef PyObject* k
        cdef PyObject* v
        if self.snap is None or not table_next(&self.snap.tab, &self.pos, &k, &v):
            raise StopIteration
        if self.kind == ITER_KEYS:
            return <object>k
        if self.kind == ITER_VALUES:
            return <object>v
        return (<object>k, <object>v)

    def __length_hint__(self):
        if not isinstance(self, _FrozenIterator):
            fk_wrong_self(self, _FrozenIterator)
        if self.snap is None:
            return 0
        return max(self.snap.tab.nentries - self.pos, 0)   # snapshots have no holes


cdef _FrozenIterator _iterate(_Snapshot snap, int kind):
    cdef _FrozenIterator it = _FrozenIterator.__new__(_FrozenIterator)
    it.snap = snap
    it.pos = 0
    it.kind = kind
    return it


@cython.final
@cython.auto_pickle(False)
@cython.no_gc_clear
cdef class _FrozenReverseIterator:
    """Iterates one snapshot of a table backwards, last inserted first (keys,
    values or items): what ``reversed()`` walks."""
    cdef _Snapshot snap
    cdef Py_ssize_t pos       # entries [0, pos) are still to visit
    cdef int kind

    def __iter__(self):
        return self

    def __next__(self):
        cdef PyObject* k
        cdef PyObject* v
        if self.snap is None or not table_prev(&self.snap.tab, &self.pos, &k, &v):
            raise StopIteration
        if self.kind == ITER_KEYS:
            return <object>k
        if self.kind == ITER_VALUES:
            return <object>v
        return (<object>k, <object>v)

    def __length_hint__(self):
        if not isinstance(self, _FrozenReverseIterator):
            fk_wrong_self(self, _FrozenReverseIterator)
        if self.snap is None:
            return 0
        return self.pos          # no holes in a snapshot (at most this many)


cdef _FrozenReverseIterator _iterate_reversed(_Snapshot snap, int kind):
    cdef _FrozenReverseIterator it = _FrozenReverseIterator.__new__(_FrozenReverseIterator)
    it.snap = snap
    it.pos = snap.tab.nentries
    it.kind = kind
    return it


class _TableKeysView(KeysView):
    """KeysView that ``reversed()`` also walks, as it does a dict's keys
    (the table's own ``__reversed__``: one snapshot, last inserted first)."""
    __slots__ = ()

    def __reversed__(self):
        return reversed(self._mapping)


class _FrozenValuesView(ValuesView):
    """ValuesView whose every iteration walks one snapshot of the table."""
    __slots__ = ()

    def __iter__(self):
        return _iterate(_snap_ref(<FrozenTable?>self._mapping), ITER_VALUES)

    def __reversed__(self):
        return _iterate_reversed(_snap_ref(<FrozenTable?>self._mapping), ITER_VALUES)

    def __contains__(self, value):
        for v in self:
            if v is value or v == value:
                return True
        return False


class _FrozenItemsView(ItemsView):
    """ItemsView whose every iteration walks one snapshot of the table."""
    __slots__ = ()

    def __contains__(self, item):
        """As dict's items view: anything but a 2-tuple is not an item
        (False, where the abc's unpacking raised), and the key is looked up
        without a subclass's ``__missing__``."""
        return _items_contain(self._mapping, item)

    def __iter__(self):
        return _iterate(_snap_ref(<FrozenTable?>self._mapping), ITER_ITEMS)

    def __reversed__(self):
        return _iterate_reversed(_snap_ref(<FrozenTable?>self._mapping), ITER_ITEMS)


cdef object _snapshot_repr(object table, _Snapshot snap):
    """``TypeName({...})`` of ``table`` showing snap's items; ``...`` for a
    table already being repr'd up the stack (shared with LockedTable)."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    name = type(table).__name__
    if snap.tab.used == 0:
        return name + "({})"
    if Py_ReprEnter(table):
        return "..."
    try:
        parts = []
        while table_next(&snap.tab, &pos, &k, &v):
            key = <object>k
            value = <object>v
            parts.append(repr(key) + ": " + repr(value))
        return name + "({" + ", ".join(parts) + "})"
    finally:
        Py_ReprLeave(table)


cdef object _equals(_Snapshot snap, object other):
    """True if the mapping ``other`` has exactly snap's items (dict's rules)."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef PyObject* found
    cdef bint is_dict = type(other) is dict
    cdef bint is_frozen = isinstance(other, FrozenTable)
    if len(other) != snap.tab.used:
        return False
    while table_next(&snap.tab, &pos, &k, &v):
        key = <object>k           # own references: comparing runs Python
        value = <object>v
        if is_dict:
            found = _dict_getitem(other, k)
            if found == NULL:
                return False
            ovalue = <object>found
        elif is_frozen:
            ovalue = _lookup(<FrozenTable>other, key, _MISSING)
            if ovalue is _MISSING:
                return False
        else:
            try:
                ovalue = other[key]
            except KeyError:
                return False
        if not PyObject_RichCompareBool(value, ovalue, Py_EQ):
            return False
    return True


@cython.trashcan(True)
@cython.no_gc_clear
cdef class FrozenTable:
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
    cdef _Snapshot _snap
    cdef PyThread_type_lock _wlock      # writers' lock, allocated on first write
    cdef unsigned long _writer          # thread holding _wlock, 0 if none
    cdef unsigned _wgen                 # fastkv_fork_gen when it was taken
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._snap = _EMPTY_SNAPSHOT
        self._wlock = NULL
        self._writer = 0

    def __init__(self, data=(), /, **kwargs):
        if kwargs or not (type(data) is tuple and len(<tuple>data) == 0):
            self._update(_stage(data, kwargs))

    def __dealloc__(self):
        if self._wlock != NULL:
            PyThread_free_lock(self._wlock)
            self._wlock = NULL

    # --- writers -------------------------------------------------------------

    cdef inline bint _orphaned(self) noexcept:
        """The writers' lock was held when the process forked, by a thread
        that does not exist in this child (it was inside a key's __eq__)."""
        return (self._writer != 0 and self._wgen != fastkv_fork_gen
                and self._writer != fastkv_fork_ident)

    cdef int _lock(self) except -1:
        cdef unsigned long me = PyThread_get_thread_ident()
        cdef PyThread_type_lock lk
        if self._wlock == NULL:
            # two first writers racing (free-threaded build) make one lock
            with cython.critical_section(self):
                if self._wlock == NULL:
                    lk = PyThread_allocate_lock()
                    if lk == NULL:
                        raise MemoryError()
                    self._wlock = lk
        elif self._writer == me and not self._orphaned():
            # (an orphaned holder is a parent's thread whose id a thread of
            # this child may have been given again: not a re-entry)
            raise RuntimeError(
                f"re-entrant write to a {type(self).__name__} from the thread that "
                "is writing it (a key's __eq__/__hash__ or a destructor wrote to "
                "the table during a write)")
        if not PyThread_acquire_lock(self._wlock, NOWAIT_LOCK):
            if self._orphaned():
                # take it over: nobody in this process will ever release it
                PyThread_free_lock(self._wlock)
                self._wlock = PyThread_allocate_lock()
                if self._wlock == NULL:
                    raise MemoryError()
                PyThread_acquire_lock(self._wlock, WAIT_LOCK)
            else:
                fk_wait_pylock(self._wlock)
        self._writer = me
        self._wgen = fastkv_fork_gen
        return 0

    cdef void _unlock(self) noexcept:
        self._writer = 0
        PyThread_release_lock(self._wlock)

    cdef int _update(self, _Snapshot staged) except -1:
        cdef _Snapshot old
        cdef _Snapshot new
        if self._wlock == NULL and self._snap.tab.used == 0:
            # Never written (a constructor): no writer can be in flight, and
            # from this check to the swap no Python code runs.
            table_trim(&staged.tab)
            if staged.tab.used:
                _snap_swap(self, staged)
            return 0
        self._lock()
        try:
            old = self._snap                # writers' lock: nobody else swaps
            new = _merge(old, staged)
            old = _snap_swap(self, new)
        finally:
            self._unlock()
        return 0          # old is released after the lock

    def put(self, key, value):
        """Store ``value`` under ``key``: copies the table (O(n)) and swaps
        the new snapshot in atomically. Returns None."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef Py_hash_t h = table_hash(key)
        cdef _Snapshot old
        cdef _Snapshot new = _snapshot_new()
        self._lock()
        try:
            old = self._snap
            table_copy(&new.tab, &old.tab, old.tab.used + 1, -1)
            if table_insert(&new.tab, <PyObject*>key, h, <PyObject*>value) == 0:
                table_trim(&new.tab)
            old = _snap_swap(self, new)
        finally:
            self._unlock()

    def delete(self, key):
        """Remove ``key``; True if it was there. O(n) copy when it was, O(1)
        when it was not (nothing is published then)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef Py_hash_t h = table_hash(key)
        cdef _Snapshot old
        cdef _Snapshot new
        cdef Py_ssize_t ix
        self._lock()
        try:
            old = self._snap
            ix = table_lookup(&old.tab, <PyObject*>key, h)
            if ix < 0:
                return False
            if old.tab.used == 1:
                new = _EMPTY_SNAPSHOT
            else:
                new = _snapshot_new()
                table_copy(&new.tab, &old.tab, old.tab.used - 1, ix)
            old = _snap_swap(self, new)
            return True
        finally:
            self._unlock()

    def put_many(self, mapping_or_pairs):
        """Store many items at the cost of one copy (O(n + m)), published as
        one snapshot: readers see all of them or none. The argument is a
        mapping or an iterable of pairs, read completely before the table is
        touched (a bad argument changes nothing)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        self._update(_stage(mapping_or_pairs, None))

    # --- readers -------------------------------------------------------------

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. O(1), never blocks."""
        cdef PyObject* v
        if _lookup_ref(self, key, &v):
            return fastkv_steal(v)
        return fastkv_cold_call2(_missing_key, self, key)

    def get(self, key, default=None, /):
        """The value for ``key``, else ``default``. O(1), never blocks."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return _lookup(self, key, default)

    def __contains__(self, key):
        """``key in t``. O(1), never blocks."""
        return _contains(self, key)

    def __len__(self):
        """Number of keys in the current snapshot. O(1)."""
        cdef Py_ssize_t n
        fk_rd_enter()
        n = FK_FROZEN_TAB(self).used
        fk_rd_exit()
        return n

    def __iter__(self):
        """Iterate the keys of the snapshot current when iteration starts
        (insertion order). O(1) to start; never raises "changed size"."""
        return _iterate(_snap_ref(self), ITER_KEYS)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, all read from one snapshot.
        O(len(keys)), never blocks."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef _Snapshot snap = _snap_ref(self)   # held: slow lookups may run Python
        cdef object seq = PySequence_Fast(keys, "get_many() argument must be iterable")
        cdef Py_ssize_t n = _seq_size(seq)
        cdef list result = PyList_New(n)
        if table_sizeof(&snap.tab) > PIPELINE_BYTES and n >= 8:
            _get_many_pipelined(&snap.tab, seq, n, result, <PyObject*>default)
        else:
            _get_many_simple(&snap.tab, seq, 0, n, result, <PyObject*>default)
        return result

    def to_dict(self):
        """A new ``dict`` with the current snapshot's items. O(n) copy."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef _Snapshot snap = _snap_ref(self)
        return table_to_dict(&snap.tab)

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over the
        snapshot current when iteration starts (as ``iter``). O(1) to start;
        never raises "changed size"."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return _iterate_reversed(_snap_ref(self), ITER_KEYS)

    def keys(self):
        """A live, set-like view of the keys (``collections.abc.KeysView``);
        each iteration walks a snapshot taken when it starts."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return _TableKeysView(self)

    def values(self):
        """A live view of the values (``collections.abc.ValuesView``); each
        iteration walks a snapshot taken when it starts (O(1) to start)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return _FrozenValuesView(self)

    def items(self):
        """A live, set-like view of the ``(key, value)`` pairs
        (``collections.abc.ItemsView``); each iteration walks a snapshot taken
        when it starts (O(1) to start)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return _FrozenItemsView(self)

    # --- the rest of the shared API -------------------------------------------

    def copy(self):
        """An independent ``FrozenTable`` (never a subclass, as dict.copy)
        with the same items. O(1): it shares the immutable snapshot."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef FrozenTable t = FrozenTable.__new__(FrozenTable)
        t._snap = _snap_ref(self)
        return t

    def close(self):
        """Nothing to stop: a no-op, the table stays usable. Idempotent."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)

    def __enter__(self):
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        return self

    def __exit__(self, *exc_info):
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        self.close()
        return None

    def __eq__(self, other):
        """Equal to any ``collections.abc.Mapping`` with equal items, as dict
        compares; ``NotImplemented`` for anything else. O(n)."""
        if not isinstance(other, (FrozenTable, dict, Mapping)):
            return NotImplemented
        return _equals(_snap_ref(self), other)

    def __ne__(self, other):
        cdef object eq = self.__eq__(other)
        if eq is NotImplemented:
            return eq
        return not eq

    __hash__ = None

    def __repr__(self):
        return _snapshot_repr(self, _snap_ref(self))

    def __sizeof__(self):
        """Bytes of the table's own structure: the object, its writer lock
        once a write made one, and its current snapshot's hash table (not the
        keys and values)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef Py_ssize_t size = object.__sizeof__(self)
        cdef _Snapshot snap = _snap_ref(self)
        if self._wlock != NULL:
            size += _LOCK_SIZE
        if snap is not _EMPTY_SNAPSHOT:
            size += _sys_getsizeof(snap)
        return size

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as a dict is:
        ``cls.__new__(cls)`` made empty first (a subclass's ``__init__`` is
        not called), then filled by ``__setstate__`` from
        the state ``(items, attrs)`` (``items``: the flat list
        ``["fastkv.items", k0, v0, k1, v1, ...]``, no dict built; ``attrs``:
        a subclass instance's ``__dict__``), so an item that refers back to
        the table -- the table itself included -- loads as the new table. O(n)."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        cdef _Snapshot snap = _snap_ref(self)
        return (_fk_newobj, (type(self),), fk_reduce_state(self, _flat_items(&snap.tab)))

    def __setstate__(self, state):
        """Load a pickled ``(items, attrs)`` state: ``attrs`` into a
        subclass instance's ``__dict__``, then the items (the flat list
        ``__reduce__`` makes, or a dict or pairs) in one ``put_many`` (one
        snapshot swap), never a subclass's override. On a table already in
        use it only adds: keys the state does not name are kept."""
        if not isinstance(self, FrozenTable):
            fk_wrong_self(self, FrozenTable)
        items = fk_setstate_attrs(self, state)
        if items:
            self._update(_state_stage(items))

    # --- dict's operators and fromkeys -------------------------------------------

    def __or__(self, other):
        """``t | other``: a new ``FrozenTable`` (never a subclass, as
        ``copy()``) with t's items, then those of ``other``, a
        ``collections.abc.Mapping`` whose values win. One O(n + m) copy; t is
        unchanged. ``NotImplemented`` for anything but a mapping."""
        cdef _Snapshot mine
        cdef _Snapshot staged
        cdef FrozenTable new
        if not isinstance(other, (dict, FrozenTable, Mapping)):
            return NotImplemented
        mine = _snap_ref(self)              # held: merging may run Python
        staged = _stage(other, None)
        new = FrozenTable.__new__(FrozenTable)
        new._snap = _merge(mine, staged)
        return new

    def __ror__(self, other):
        """``other | t`` for a ``collections.abc.Mapping`` ``other`` that does
        not handle it (a dict): a new ``FrozenTable`` with other's items, then
        t's (t's values win). One O(n + m) copy."""
        cdef _Snapshot mine
        cdef _Snapshot staged
        cdef FrozenTable new
        if not isinstance(other, (dict, FrozenTable, Mapping)):
            return NotImplemented
        staged = _stage(other, None)
        mine = _snap_ref(self)
        new = FrozenTable.__new__(FrozenTable)
        if staged.tab.used == 0:
            new._snap = mine                # immutable: shared, as copy()
        else:
            _absorb(staged, mine)
            table_trim(&staged.tab)
            new._snap = staged
        return new

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs) -- one copy, one snapshot swap, seen by everyone holding t --
        and t itself is the result (the name is not rebound to a new table)."""
        self._update(_stage(other, None))
        return self

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """A new table of class ``cls`` (a subclass gets its own, as
        ``dict.fromkeys``) mapping every key of ``iterable`` to ``value`` (the
        same object for all). O(n)."""
        cdef FrozenTable new
        if cls is FrozenTable:
            return FrozenTable(dict.fromkeys(iterable, value))
        new = cls()     # as dict.fromkeys: cls() with no arguments, then the items
        FrozenTable.put_many(new, dict.fromkeys(iterable, value))   # one copy
        return new

    __class_getitem__ = classmethod(GenericAlias)


from sys import getsizeof as _sys_getsizeof


cdef int _parse_key_default(PyObject** args, Py_ssize_t nargs, PyObject* kwnames,
                            PyObject** key, PyObject** default) except -1:
    """``get(key, default=None)`` arguments in the vectorcall convention, the
    general case (keywords, errors); *key and *default are borrowed. Shared
    by the hand-written ``get`` of FrozenTable and LockedTable."""
    cdef Py_ssize_t nkw, i
    key[0] = NULL
    default[0] = <PyObject*>None
    if nargs > 2:
        raise TypeError(f"get() takes at most 2 arguments ({nargs} given)")
    if nargs >= 1:
        key[0] = args[0]
    if nargs == 2:
        default[0] = args[1]
    nkw = _tuple_size(kwnames) if kwnames != NULL else 0
    for i in range(nkw):
        name = <object>_tuple_item(kwnames, i)
        if name == "key" and key[0] == NULL:
            key[0] = args[nargs + i]
        elif name == "default" and nargs < 2:
            default[0] = args[nargs + i]
        elif name in ("key", "default"):
            raise TypeError(f"get() got multiple values for argument '{name}'")
        else:
            raise TypeError(f"get() got an unexpected keyword argument '{name}'")
    if key[0] == NULL:
        raise TypeError("get() missing required argument 'key' (pos 1)")
    return 0


cdef object _frozen_get_fastcall(object self, PyObject** args, Py_ssize_t nargs,
                                 PyObject* kwnames):
    """FrozenTable.get(key, default=None), vectorcall convention."""
    cdef PyObject* key
    cdef PyObject* default
    if kwnames == NULL:
        if nargs == 1:
            return _lookup(<FrozenTable>self, <object>args[0], None)
        if nargs == 2:
            return _lookup(<FrozenTable>self, <object>args[0], <object>args[1])
    _parse_key_default(args, nargs, kwnames, &key, &default)
    return _lookup(<FrozenTable>self, <object>key, <object>default)


fastkv_install_method(FrozenTable, &fastkv_frozen_get_def, <void*>_frozen_get_fastcall)

Mapping.register(FrozenTable)
