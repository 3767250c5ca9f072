# fastkv/_owner.pxi: the owner-thread engine, OwnerTable and Agent.
# Included by _core.pyx. C primitives (atomics, queue, parkers) in _owner.h.
#
# Design note: the owner-thread engine
# ====================================
#
# One owner thread per OwnerTable/Agent performs every request in arrival
# order. A request is a C struct (fk_req, _owner.h): an op code, owned
# references to up to three arguments, and for a call a result slot, a state
# word and a lock to park on. Requests come from a free list (GIL-protected,
# a PyMutex on a free-threaded build; a stack of pointers: taking one does not
# touch the request, whose cache line the owner's CPU most likely holds).
#
# The queue (fk_queue) is a lock-free Treiber stack: a caller pushes with one
# CAS, with or without the GIL; the owner takes the whole stack with one CAS
# and reverses it, so every wake-up drains every queued request, in arrival
# order. Bit 0 of the head is the closed bit: once set, no push succeeds, so
# what the owner finds in the queue after it sees the bit is all there will
# ever be -- closing needs no lock and cannot strand a request. The owner
# sets it itself, when close() asked and no counted call is still on its way
# (see close below).
#
# Who holds the GIL when, who waits where, what wakes whom:
#
# 1. A caller making a call (get, t[k], call, update, sync...) fills a request
#    with the GIL (hashing the key first; pushing the unpushed casts, see
#    below), releases the GIL, and only then pushes it: the owner, when it
#    sees the request, finds the GIL free.
# 2. The caller then waits, still without the GIL, in fk_wait: it spins on the
#    request's state for an adaptive budget (<= 50 us), then moves the state
#    PENDING -> PARKED by CAS and sleeps on the request's lock.
# 3. The owner waits for requests in fk_wait_requests, without the GIL: it
#    spins on the queue head for its own adaptive budget (<= 50 us), then
#    announces `parked` and sleeps on its `wake` lock. The caller whose push
#    turned the queue from empty to non-empty checks `parked` and, if it wins
#    the exchange on it, releases `wake` (one futex wake-up).
#    Announce-then-recheck (owner) against push-then-check (caller), both
#    sequentially consistent, means no wake-up is lost; an owner that cancels
#    its park after a pusher claimed it consumes that pusher's release, so
#    `wake` stays armed.
# 4. The owner takes the batch, takes the GIL, serves every request of the
#    batch in order (storing each call's result or exception in its request,
#    applying and freeing each cast), drops the GIL, and only then completes
#    the calls: exchange the state to DONE, and release the request's lock if
#    the caller had PARKED. Completing after dropping the GIL is the point: a
#    spinning caller that sees DONE takes a free GIL instead of sleeping on the
#    GIL's condition variable until the owner lets go of it.
# 5. The caller takes the GIL back, takes the result (or raises the
#    exception) and recycles the request.
#
# So a busy round trip touches no futex: the GIL changes hands twice, each time
# to a thread that is spinning for it to be free. A spin is pause-based while
# the other side runs on another CPU; when it last ran on our CPU (each side
# publishes sched_getcpu()), or after 2 us, the spin yields the CPU instead, so
# two threads sharing one CPU hand over at once instead of burning a time slice
# each. An idle owner spins once (bounded) and sleeps, so an idle table costs
# no CPU; the budgets adapt (_owner.h): a wait a spin would have caught grows
# the spin, a long sleep halves it. A sleeper learns when the event it slept
# through happened (the waker stamps it), so a slow wake-up does not teach it
# to keep sleeping.
#
# Casts (put, delete, Agent.cast...) are made with the GIL held and nobody
# waits for them, so they take no atomic operation each: a cast is linked into
# the engine's chain of unpushed casts (GIL-protected), and the chain is pushed
# onto the queue with one CAS every 64 casts, by the next call of any thread
# (before that call's own push: one FIFO), or by close. The first cast of a
# chain raises the queue's `pending` flag, which wakes a parked owner; an owner
# that finds only casts (queued or pending) does not ask for the GIL at once --
# it would sleep on the GIL's condition variable until the caster lets go and
# be woken by a futex (an inter-processor interrupt when the two threads run on
# two CPUs) -- but keeps gathering without the GIL, pulling the pushed requests
# and their arguments into its cache while the caster goes on, until a call
# arrives (sync(), a read: its caller has just released the GIL, so the GIL is
# free), or nothing was pushed for 20 us, or 2 ms passed (fk_take_batch). Then
# it takes the GIL, takes what was pushed since and then the unpushed chain
# (in that order: a chain holds only casts made after every push), and serves
# it all under one GIL hold. Casts made while it serves (by a request's fn, or
# by a thread that ran while a fn let go of the GIL) are pushed as the batch
# ends.
#
# OwnerTable and Agent: an Agent's state is any object, replaced by update and
# cast (held by an _AgentBox). An OwnerTable's state is a compiled LockedTable
# (what call(fn) receives); the owner runs table requests through the LockedTable's C-level
# methods (_get, _put, _take...), and runs a batch's put casts without the
# request dispatch. Under access="protected" the reading thread calls those
# same methods itself: the LockedTable's lock makes the read atomic against
# the owner's writes, and a call made while that thread holds the lock (a
# key's __eq__ during the read) raises RuntimeError instead of waiting for an
# owner that waits for the lock. OwnerTable.get is a hand-written FASTCALL
# method, so a protected get costs a LockedTable lookup and little more.
#
# Read-your-writes (access="protected"). The guarantee, exactly:
#
# - The writing thread: a direct read (get, t[k], in, len, iteration, the
#   views, to_dict, get_many, copy, ==, repr, |) sees every write (a cast:
#   put, t[k] = v, delete, put_many, update, clear, |=) that the same thread
#   queued before it. If one of its casts is still unapplied, the read first
#   waits for the owner to apply it (one sync round trip), then reads
#   directly; a thread with nothing unapplied reads directly, at dict speed.
# - Every thread: a direct read sees the casts the owner has applied so far,
#   which is always a prefix of the queue order (one FIFO, one owner; each
#   cast, put_many included, applied atomically under the storage lock), so
#   a reader never sees a write without the writes queued before it, and
#   what it sees never goes back. Another thread's write becomes visible
#   when the owner applies it: unprompted within milliseconds (the first
#   cast wakes a parked owner), and at the latest when a call or sync() of
#   the writing thread, or one of its reads that waited, returns. To hand a
#   value to another thread, sync() (or read it back) before signalling.
# - Exceptions: on the owner thread (inside call(fn), a cast's fn, a key's
#   __eq__ run by the owner) its own casts queue behind the request being
#   served and its reads never wait for them; a read that would have to wait
#   while its thread holds the storage lock (a key's __eq__ during a direct
#   read) raises RuntimeError, as any re-entrant call; info() reads its
#   counters without waiting.
# - A private table needs none of this: its reads are calls, served after
#   every cast queued before them.
#
# How: casts are numbered in queue order (`pushed`, GIL) and the owner counts
# the casts it has applied or seen fail (`casts_done`, after the store). A
# read compares the two (two loads): equal, nothing is unapplied and it goes
# direct. Otherwise it asks whether the calling thread's newest cast (noted
# by cast() in an 8-slot table of (thread ident, number); a slot is reusable
# once its cast is applied; a 9th thread with unapplied casts raises an
# overflow watermark that every such reader waits for) is above casts_done,
# and if so syncs. Costs (callgrind, same build): protected t[k] +5
# instructions per read, t.get unchanged within 1%; a protected cast +31 of
# ~580 (caller and owner together). (Since then the protected read lost its
# shared references, below: t[k] 401 -> 370 Ir, get 450 -> 433 Ir at 100k
# str keys; LockedTable's own 355 and 424.) Free-threaded build: the slots and
# `pushed` change under the engine's mutex (cast) and own_casts_pending
# reads them under it; the read path's two loads are atomic: `pushed`
# relaxed (a thread's own casts are in what it loads: program order), and
# `casts_done`, which the owner stores with release after the apply, with
# acquire, so equal counts mean the thread sees its applied writes. On x86
# both loads are the plain moves they were, and on a GIL build the macros
# are plain accesses (same instructions).
#
# Hashing once: a table request's key is hashed by the caller before it is
# queued (an unhashable key is a TypeError at the call site), and the
# request carries that hash (fk_req.hash; -1 for none) to the owner, which
# runs the LockedTable's _h methods (_get_h, _put_h, _contains_h, _delete_h,
# _take_h) with it instead of hashing the key again: one __hash__ per
# operation, as a dict does, and a key whose __hash__ breaks after its cast
# was queued is still stored. Direct (protected) reads hash once anyway.
#
# A request holds None as NULL: every argument is read back through fk_arg.
#
# Who keeps what alive. The owner thread holds the engine (its target), so
# the engine must not hold the state: a table whose values refer back to it
# (``t["self"] = t``), or an agent whose state does, would be reachable from
# the running thread and never collected (its thread never ending). The
# table/agent holds its state box (the storage LockedTable, or an _AgentBox)
# and the engine; the engine keeps only a borrowed pointer to the box
# (``box``, set by the table/agent, cleared by its __dealloc__), and every
# request holds its own reference to the box until served. So queued casts
# are still applied after the table is dropped, and an unreachable table --
# in a cycle or not -- is collected: its __dealloc__ closes the engine, whose
# owner serves what is queued and exits. OwnerTable and Agent are
# no_gc_clear: Cython's tp_clear would set ``_eng`` to None before
# __dealloc__ (which must close it); their cycles are broken by clearing the
# other members (the storage's entries, the box's state, a subclass's
# __dict__).
#
# References: a request owns references to its arguments from the moment it is
# filled until the owner has served it (the owner drops them, with the GIL);
# a call's result or exception is owned by the request until the caller takes
# it; a cast's request is freed by the owner once applied. Queue counters
# (info()["queue"]): casts are counted with a plain integer under the GIL when
# linked into the chain; a call with a plain store (calls_counted, in the head
# line the push's CAS takes next) under the GIL, right after the open check
# and before the GIL-free push. The owner counts the calls it takes off the
# queue (calls_taken, owner only). A request leaves the count when the owner
# starts serving it (the one in service is not waiting, as with the
# reference's queue.qsize()). No atomic instruction is added to a round trip:
# an atomic add after the push, on any line, cost 10-60% of a two-CPU round
# trip (same run).
#
# Faults and lifecycle:
#
# - An exception in a call is stored in the request and raised in the caller;
#   in a cast it is logged on the `fastkv` logger and counted; the owner goes on.
# - A call made on the owner thread itself (inside call(fn), a cast's fn, a
#   key's __eq__...) is served inline, never queued: no self-deadlock; sync()
#   there is a no-op. A cast made there is queued behind the running request
#   (FIFO, as GenServer.cast to self).
# - close(timeout), with the GIL, marks the engine closed (a call or cast
#   that starts after it raises ClosedError at its call site), pushes the
#   unpushed casts and raises the queue's `closing` flag (waking the owner).
#   The owner sets the closed bit itself, once it has taken as many calls as
#   were counted: a call that passed the open check before close() is served
#   even if its push lands after close() (a caller preempted between count
#   and push), so every call either raises ClosedError at once or is served.
#   The owner then serves everything queued and exits; close joins the thread
#   up to timeout.
#   Callers already waiting get their answers. Dropping the last reference to
#   a table/agent closes it without waiting (the owner thread holds only the
#   engine object, never the table or agent).
# - A signal while a caller is parked: the handlers run; if one raises, the
#   caller abandons the request (state PARKED -> ABANDONED by CAS) and the
#   owner frees it when served.
# - If the owner loop ever died of an unexpected error, it closes the queue and
#   fails every request still in it with ClosedError: nobody waits forever.
# - fork(): an at-fork hook marks every engine closed in the child (ClosedError
#   on every method; close() returns True). The child never touches an
#   engine's queue, locks or requests (a parent thread may have left a lock
#   taken or a push half done) and leaks them instead of freeing. A fork made
#   inside a request on the owner thread stops the child's copy of the loop.
# - Interpreter exit: the owner threads are daemon threads. An atexit hook
#   (registered after logging's, so it runs before logging shuts down) closes
#   every running engine -- open ones and closed ones still draining --, which
#   applies every queued cast, and waits for each while it makes progress (it
#   gives up on one that served nothing for 5 s, rather than hang).
#
# Free-threaded build (no GIL): the queue and the hand-off never relied on
# the GIL (atomics). What did -- the request free list, and per engine the
# status flag, the chain of unpushed casts with its counters, and counting a
# call after its open check -- is guarded by a PyMutex there (``_ft.h``: the
# global ``_fk_free_mu``, the engine's ``mu``), held only around pointer and
# counter updates (never while Python code runs, so re-entry cannot deadlock;
# a contended PyMutex parks detached, so it cannot block a stop-the-world).
# Status set and call counted under one ``mu`` keep close()'s rule: a call
# that was counted is served. The owner-only counters (served, taken, errors)
# have one writer; info() reads them, and `pushed`, without a lock: relaxed
# atomic stores and loads (``FK_STORE_RELAXED``/``FK_LOAD_RELAXED``, plain
# accesses on a GIL build). info() reads the counters first and the size
# without waiting for the storage's lock: the owner holds that lock while a
# key's __eq__ runs, and a len() that waited there read the counters only
# after the queue had drained ("queue" 0 with 1000 casts waiting, seen on
# the free-threaded build; possible on a GIL build too). On a GIL build the
# mutex macros are empty: the figures there are unchanged.
#
# Protected reads on a free-threaded build write nothing other readers share
# (as the README's "Free-threaded CPython" section says): the check is
# loads only -- ``_protected`` and the engine pointer in the table object,
# ``status`` (relaxed: it is stored, relaxed, under the engine's mutex),
# ``pushed`` (relaxed) and ``casts_done`` (acquire), none written while no
# cast is made -- and the look-up is the storage LockedTable's lock-free
# read (``_locked.pxi``), whose only write is the reader's own read-section
# counter and the reference to the value it returns. No reference is taken
# to the table, the engine, the storage or a sentinel: each is one object
# every reader shares, and Py_INCREF of an object another thread created is
# an atomic add on its refcount line. Before this was so,
# t[k] did an incref/decref pair on the ``_MISSING`` default it passed and
# get one on the table (held in a typed local): the only differences found
# from LockedTable's own read path, whose two threads read 1.69-1.98x one
# thread's where the protected OwnerTable's read 1.16-1.70x (3.13t). So
# t[k] asks the storage for the value itself (``_find_ref``: found, or
# absent -> KeyError/__missing__), and the hand-written get only casts self.
# tests/test_freethreading.py checks that the table's refcount seen during
# a protected read equals a LockedTable's.

cimport cython
from libc.stdint cimport int64_t, uintptr_t
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

import atexit as _fk_atexit_mod
import logging as _fk_logging
import os as _fk_os
import threading as _fk_threading
import weakref as _fk_weakref
from types import GenericAlias as _fk_GenericAlias

cdef extern from "Python.h":
    void *fk_raw_calloc "PyMem_RawCalloc" (size_t n, size_t size) nogil
    void fk_raw_free "PyMem_RawFree" (void *p) nogil
    int fk_check_signals "PyErr_CheckSignals" () except -1
    int fk_repr_enter "Py_ReprEnter" (object o) except -1
    void fk_repr_leave "Py_ReprLeave" (object o)
    Py_hash_t fk_hash "PyObject_Hash" (object o) except? -1

cdef extern from "pythread.h":
    ctypedef void *fk_lock_t "PyThread_type_lock"
    unsigned long fk_thread_ident "PyThread_get_thread_ident" () nogil
    fk_lock_t fk_lock_new "PyThread_allocate_lock" ()
    void fk_lock_free "PyThread_free_lock" (fk_lock_t lock)
    int fk_lock_acquire "PyThread_acquire_lock" (fk_lock_t lock, int wait) nogil
    void fk_lock_release "PyThread_release_lock" (fk_lock_t lock) nogil

cdef extern from "_owner.h" nogil:
    ctypedef struct fk_req:
        fk_req *next
        int op
        int cast
        int failed
        int state
        Py_hash_t hash
        PyObject *box
        PyObject *fn
        PyObject *a
        PyObject *b
        PyObject *result
        fk_lock_t lock

    ctypedef struct fk_queue:
        pass

    int fk_queue_init(fk_queue *q)
    void fk_queue_free(fk_queue *q)
    void fk_count_call(fk_queue *q)
    int fk_push_call(fk_queue *q, fk_req *r)
    void fk_begin_close(fk_queue *q)
    int fk_debug_set_push_delay(int us)
    int64_t fk_calls_in(fk_queue *q)
    int fk_push_chain(fk_queue *q, fk_req *first, fk_req *last)
    void fk_pending_start(fk_queue *q)
    void fk_pending_clear(fk_queue *q)
    int fk_close(fk_queue *q)
    fk_req *fk_take(fk_queue *q, int *closed)
    void fk_take_batch(fk_queue *q, fk_req **head, fk_req **tail, int *closed)
    int fk_grab_into(fk_queue *q, fk_req **head, fk_req **tail, int *closed)
    int fk_complete(fk_req *r)
    int fk_wait(fk_queue *q, fk_req *r)
    int fk_wait_again(fk_req *r)
    int fk_abandon(fk_req *r)
    int FK_PENDING

cdef extern from "_ft.h":
    # where the GIL serialized the engine's own state, a free-threaded build
    # takes a PyMutex (parks detached); on a GIL build these are empty
    ctypedef int fk_mutex
    void FK_MUTEX_LOCK(fk_mutex *m) noexcept nogil
    void FK_MUTEX_UNLOCK(fk_mutex *m) noexcept nogil
    # the engine's status: written under its mutex, read without it by every
    # call's and cast's first check and by a protected read (relaxed atomics
    # on a free-threaded build, plain accesses on a GIL build)
    int fk_status_load "FK_LOAD_RELAXED" (int *p) noexcept nogil
    void fk_status_store "FK_STORE_RELAXED" (int *p, int v) noexcept nogil

cdef extern from "_owner.h":
    PyMethodDef fk_owner_get_def     # installed by the engine's fastkv_install_method


# ---- requests: a GIL-protected free list -------------------------------------

cdef enum:
    FK_FREE_MAX = 1024
    FK_CHAIN_MAX = 64       # casts kept unpushed at most (one CAS per chain)
    FK_WRITERS = 8          # threads with unapplied casts told apart (more:
                            # every reader waits for the overflow watermark)

    # op codes: what the owner runs against its state (an Agent's state, or an
    # OwnerTable's LockedTable); fn, a, b are the request's three arguments
    FK_OP_SYNC = 0          # nothing: done once everything before it is
    FK_OP_CALL = 1          # fn(state, *a)
    FK_OP_UPDATE = 2        # state = fn(state, *a)
    FK_OP_GET_AND_UPDATE = 3  # reply, state = fn(state, *a)
    FK_OP_GET = 10          # table.get(a, b)
    FK_OP_GETITEM = 11      # table[a]
    FK_OP_CONTAINS = 12     # a in table
    FK_OP_LEN = 13          # len(table)
    FK_OP_KEYS = 14         # list(table)
    FK_OP_GET_MANY = 15     # table.get_many(a, b)
    FK_OP_TO_DICT = 16      # table.to_dict()
    FK_OP_SNAPSHOT = 17     # table._snapshot() (a private _Snapshot)
    FK_OP_PUT = 20          # table.put(a, b)
    FK_OP_PUT_MANY = 21     # table.put_many(a)
    FK_OP_DELETE = 22       # table.delete(a)
    FK_OP_CLEAR = 23        # table.clear()
    FK_OP_DELITEM = 24      # del table[a]
    FK_OP_TAKE = 25         # table.take(a, b)
    FK_OP_POPITEM = 26      # table.popitem()
    FK_OP_SETDEFAULT = 27   # table.setdefault(a, b)

    # engine status (with the GIL)
    FK_OPEN = 0
    FK_CLOSED = 1
    FK_FORKED = 2

cdef fk_req *_fk_free_reqs[FK_FREE_MAX]   # a stack of pointers: popping one
cdef int _fk_nfree = 0                    # does not read the request (its line
                                          # is likely in the owner's cache)
cdef fk_mutex _fk_free_mu                 # free-threaded build: guards the two


cdef fk_req *fk_req_new() except NULL:
    """A clean request (from the free list or new). GIL. NULL + MemoryError."""
    global _fk_nfree
    cdef fk_req *r = NULL
    FK_MUTEX_LOCK(&_fk_free_mu)
    if _fk_nfree:
        _fk_nfree -= 1
        r = _fk_free_reqs[_fk_nfree]
    FK_MUTEX_UNLOCK(&_fk_free_mu)
    if r is not NULL:
        return r
    r = <fk_req *>fk_raw_calloc(1, sizeof(fk_req))
    if r is NULL:
        raise MemoryError()
    return r


cdef inline int fk_req_lockable(fk_req *r) except -1:
    """Give a call request the lock its caller may park on (casts have
    none). GIL. -1 + MemoryError."""
    if r.lock is NULL:
        r.lock = fk_lock_new()
        if r.lock is NULL:
            raise MemoryError()
        fk_lock_acquire(r.lock, 1)      # a request's lock is held while idle
    return 0


cdef inline void fk_req_clear(fk_req *r) noexcept:
    """Drop the request's references (may run any __del__). GIL."""
    cdef PyObject *box = r.box
    cdef PyObject *fn = r.fn
    cdef PyObject *a = r.a
    cdef PyObject *b = r.b
    cdef PyObject *res = r.result
    r.box = r.fn = r.a = r.b = r.result = NULL
    Py_XDECREF(box)
    Py_XDECREF(fn)
    Py_XDECREF(a)
    Py_XDECREF(b)
    Py_XDECREF(res)


cdef void fk_req_release(fk_req *r) noexcept:
    """Clear a request, then back to the free list (or freed). GIL."""
    global _fk_nfree
    fk_req_clear(r)
    r.next = NULL
    r.op = 0
    r.cast = 0
    r.failed = 0
    r.state = FK_PENDING
    r.hash = 0
    FK_MUTEX_LOCK(&_fk_free_mu)
    if _fk_nfree < FK_FREE_MAX:
        _fk_free_reqs[_fk_nfree] = r
        _fk_nfree += 1
        r = NULL
    FK_MUTEX_UNLOCK(&_fk_free_mu)
    if r is not NULL:
        if r.lock is not NULL:
            fk_lock_release(r.lock)
            fk_lock_free(r.lock)
        fk_raw_free(r)


cdef inline fk_req *fk_req_make(PyObject *box, int op, object fn, object a,
                                object b) except NULL:
    """A request holding references to the state box and its arguments
    (None: no reference). GIL."""
    cdef fk_req *r = fk_req_new()
    r.op = op
    Py_INCREF(<object>box)
    r.box = box
    if fn is not None:
        Py_INCREF(fn)
        r.fn = <PyObject *>fn
    if a is not None:
        Py_INCREF(a)
        r.a = <PyObject *>a
    if b is not None:
        Py_INCREF(b)
        r.b = <PyObject *>b
    return r


cdef inline object fk_arg(PyObject *p):
    return <object>p if p is not NULL else None


# ---- the engine --------------------------------------------------------------

_fk_log = _fk_logging.getLogger("fastkv")
_fk_engines = _fk_weakref.WeakSet()     # engines whose owner thread runs
_fk_nthreads = 0


cdef class _Owner:
    """The owner-thread engine: a C request queue and the thread serving it.

    Held by one OwnerTable or Agent; the owner thread holds the engine (its
    target), never the table or agent, so dropping those closes the engine.
    """
    cdef fk_queue q
    cdef bint q_ready
    cdef int status
    cdef unsigned long ident
    cdef PyObject *box          # BORROWED: the state box of the table/agent
                                # (alive while it is); NULL once it is gone
    cdef bint agent             # box is an _AgentBox (else a LockedTable)
    cdef object thread
    cdef object kind
    cdef Py_ssize_t served      # requests served by the owner loop
    cdef Py_ssize_t errors      # casts that raised
    cdef Py_ssize_t pushed      # casts queued (GIL); calls: q.calls_counted
    cdef Py_ssize_t taken       # queued requests served or dropped
    cdef fk_req *pend_head      # casts not pushed yet, newest first (GIL)
    cdef fk_req *pend_tail      # ... the oldest of them
    cdef int npend
    cdef fk_mutex mu            # free-threaded build: guards status, the chain
                                # and its counters, and counting a call
    # read-your-writes (protected OwnerTable, see "Read-your-writes" above):
    # casts are numbered 1, 2, ... by `pushed` in queue order; the owner
    # counts the casts it has applied (served or failed) in `casts_done`, so
    # pushed == casts_done means no cast is unapplied. With `writers` on, a
    # cast also notes (thread ident, its number) in a small table, so a
    # reader can tell whether one of ITS casts is unapplied. GIL.
    cdef Py_ssize_t casts_done
    cdef bint writers
    cdef unsigned long w_ident[FK_WRITERS]
    cdef Py_ssize_t w_seq[FK_WRITERS]
    cdef Py_ssize_t w_overflow  # newest cast of a thread that found no slot
    cdef object __weakref__

    def __cinit__(self):
        if fk_queue_init(&self.q) != 0:
            raise MemoryError()
        self.q_ready = True
        fk_status_store(&self.status, FK_OPEN)

    def __dealloc__(self):
        # The owner thread held a reference while it ran, so it is gone. A
        # forked child leaks the queue: its lock is in the parent's state.
        if self.q_ready and fk_status_load(&self.status) != FK_FORKED:
            fk_queue_free(&self.q)
        self.q_ready = False

    cdef int start(self, object kind, object box) except -1:
        """Start the owner thread, serving requests against ``box`` (which
        the caller holds, and un-borrows with ``self.box = NULL`` in its
        __dealloc__)."""
        global _fk_nthreads
        self.kind = kind
        self.agent = isinstance(box, _AgentBox)
        self.box = <PyObject *>box
        _fk_nthreads += 1
        self.thread = _fk_threading.Thread(
            target=self._run, name="fastkv-%s-owner-%d" % (kind, _fk_nthreads), daemon=True)
        _fk_engines.add(self)
        try:
            self.thread.start()
        except BaseException:
            _fk_engines.discard(self)
            fk_status_store(&self.status, FK_CLOSED)
            fk_close(&self.q)
            raise
        return 0

    # -- the owner thread ------------------------------------------------------

    def _run(self):
        """The owner thread's loop (the thread's target): take every queued
        request, serve them with the GIL, complete the calls without it."""
        if not isinstance(self, _Owner):
            fk_wrong_self(self, _Owner)
        cdef fk_req *batch
        cdef fk_req *tail
        cdef fk_req *r
        cdef fk_req *nxt
        cdef fk_req *done
        cdef fk_req **dtail
        cdef fk_req *orphans
        cdef int closed = 0
        self.ident = fk_thread_ident()
        try:
            while not closed:
                with nogil:
                    fk_take_batch(&self.q, &batch, &tail, &closed)
                if self.pend_head is not NULL:
                    # casts not pushed yet: after everything pushed so far
                    FK_MUTEX_LOCK(&self.mu)
                    fk_grab_into(&self.q, &batch, &tail, &closed)
                    self._take_pending(&batch, &tail)
                    FK_MUTEX_UNLOCK(&self.mu)
                done = NULL
                dtail = &done
                r = batch
                while r is not NULL:
                    nxt = r.next
                    if r.op == FK_OP_PUT and r.cast:
                        self._serve_put(r)      # the hot cast, no dispatch
                        fk_req_release(r)
                        r = nxt
                        continue
                    self._serve(r)
                    if fk_status_load(&self.status) == FK_FORKED:
                        return      # a fn forked and this is the child: stop here
                    if r.cast:
                        fk_req_release(r)
                    else:
                        r.next = NULL
                        dtail[0] = r
                        dtail = &r.next
                    r = nxt
                if self.pend_head is not NULL:
                    FK_MUTEX_LOCK(&self.mu)
                    self._flush()           # casts made meanwhile: next batch
                    FK_MUTEX_UNLOCK(&self.mu)
                orphans = NULL
                with nogil:
                    r = done
                    while r is not NULL:
                        nxt = r.next        # r is the caller's once completed
                        if fk_complete(r):
                            r.next = orphans
                            orphans = r
                        r = nxt
                while orphans is not NULL:
                    r = orphans
                    orphans = r.next
                    fk_req_release(r)
        finally:
            if fk_status_load(&self.status) != FK_FORKED:
                self._fail_pending()
                self.ident = 0      # idents are reused once the thread is gone
                try:
                    _fk_engines.discard(self)
                except BaseException:
                    pass            # interpreter teardown: the registry is gone

    cdef void _flush(self) noexcept:
        """Push the chain of unpushed casts with one CAS (GIL; self.mu on a
        free-threaded build). The queue is still open: everything that
        closes it flushes first."""
        cdef fk_req *first = self.pend_head
        cdef fk_req *last = self.pend_tail
        cdef fk_req *nxt
        if first is NULL:
            return
        self.pend_head = self.pend_tail = NULL
        self.npend = 0
        fk_pending_clear(&self.q)
        if fk_push_chain(&self.q, first, last) != 0:
            while first is not NULL:        # unreachable; never leak them
                nxt = first.next
                fk_req_release(first)
                first = nxt

    cdef void _take_pending(self, fk_req **head, fk_req **tail) noexcept:
        """The owner, with the GIL (and self.mu): append the unpushed casts,
        oldest first, to the batch head..tail."""
        cdef fk_req *r = self.pend_head
        cdef fk_req *fifo = NULL
        cdef fk_req *last = NULL
        cdef fk_req *nxt
        self.pend_head = self.pend_tail = NULL
        self.npend = 0
        fk_pending_clear(&self.q)
        while r is not NULL:
            nxt = r.next
            if last is NULL:
                last = r
            r.next = fifo
            fifo = r
            r = nxt
        if fifo is not NULL:
            if tail[0] is not NULL:
                tail[0].next = fifo
            else:
                head[0] = fifo
            tail[0] = last

    cdef void _fail_pending(self) noexcept:
        """After the loop: leave nobody waiting. The normal exit leaves the
        queue closed and empty; this matters only if the loop died of an
        unexpected error (every request still queued gets ClosedError)."""
        cdef fk_req *r
        cdef fk_req *nxt
        cdef int closed = 0
        cdef object err
        FK_MUTEX_LOCK(&self.mu)
        fk_status_store(&self.status, FK_CLOSED)
        self._flush()
        fk_close(&self.q)
        FK_MUTEX_UNLOCK(&self.mu)
        r = fk_take(&self.q, &closed)
        while r is not NULL:
            nxt = r.next
            fk_ssize_store(&self.taken, self.taken + 1)
            if r.cast:
                fk_req_release(r)
            else:
                fk_req_clear(r)
                try:
                    err = ClosedError("the %s's owner thread stopped" % self.kind)
                except BaseException:
                    err = None
                Py_INCREF(err)
                r.result = <PyObject *>err
                r.failed = err is not None
                if fk_complete(r):
                    fk_req_release(r)
            r = nxt

    cdef object _apply(self, object box, int op, object fn, object a, object b,
                       Py_hash_t h):
        """Run one request against the state in ``box`` (owner thread, GIL);
        returns its answer or raises what it raises. Table ops go straight to
        the LockedTable's C-level methods; h is the key's hash as the caller
        computed it (-1: none), reused rather than hashing the key again."""
        cdef LockedTable table = None
        cdef _AgentBox abox = None
        cdef object state
        if self.agent:
            abox = <_AgentBox>box
        else:
            table = <LockedTable>box
        if op == FK_OP_GET:
            return table._get_h(a, h, b) if h != -1 else table._get(a, b)
        if op == FK_OP_PUT:
            if h != -1:
                table._put_h(a, h, b)
            else:
                table._put(a, b)
            return None
        if op == FK_OP_CALL:
            state = abox.state if self.agent else table
            return fn(state, *a) if a else fn(state)
        if op == FK_OP_GETITEM:
            state = table._get_h(a, h, _MISSING) if h != -1 else table._get(a, _MISSING)
            if state is _MISSING:
                raise KeyError(a)
            return state
        if op == FK_OP_CONTAINS:
            return (table._contains_h(a, h) if h != -1 else table._contains(a)) == 1
        if op == FK_OP_UPDATE:
            state = abox.state
            abox.state = fn(state, *a) if a else fn(state)
            return None
        if op == FK_OP_GET_AND_UPDATE:
            state = abox.state
            res = fn(state, *a) if a else fn(state)
            reply, new_state = res
            abox.state = new_state
            return reply
        if op == FK_OP_SYNC:
            return None
        if op == FK_OP_LEN:
            return table._len()
        if op == FK_OP_KEYS:
            return iter(table)          # walks a private snapshot: any thread may
        if op == FK_OP_GET_MANY:
            return table.get_many(a, b)
        if op == FK_OP_TO_DICT:
            return table.to_dict()
        if op == FK_OP_PUT_MANY:
            table._put_many(<_Snapshot>a)
            return None
        if op == FK_OP_DELETE:
            if h != -1:
                table._delete_h(a, h)
            else:
                table._delete(a)
            return None
        if op == FK_OP_CLEAR:
            table._clear()
            return None
        if op == FK_OP_DELITEM:
            if (table._delete_h(a, h) if h != -1 else table._delete(a)) == 0:
                raise KeyError(a)
            return None
        if op == FK_OP_TAKE:
            return table._take_h(a, h, b) if h != -1 else table._take(a, b)
        if op == FK_OP_POPITEM:
            return table.popitem()
        if op == FK_OP_SETDEFAULT:
            return table.setdefault(a, b)
        if op == FK_OP_SNAPSHOT:
            return table._snapshot()
        raise SystemError("fastkv: unknown owner request %d" % op)

    cdef void _serve(self, fk_req *r) noexcept:
        """Serve a queued request (owner thread, GIL): a call gets its result or
        exception stored; a cast's exception is logged and counted. The
        argument references are dropped here, before the call completes."""
        cdef object out = None
        fk_ssize_store(&self.taken, self.taken + 1)   # out of the queue: no longer waiting
        try:
            out = self._apply(<object>r.box, r.op, fk_arg(r.fn), fk_arg(r.a), fk_arg(r.b),
                              r.hash)
        except BaseException as exc:
            if r.cast:
                self._cast_failed()
            else:
                out = exc
                r.failed = 1
        fk_ssize_store(&self.served, self.served + 1)
        if r.cast:
            # after the store (release): a reader that loads it (acquire) sees it
            fk_ssize_store_release(&self.casts_done, self.casts_done + 1)
        fk_req_clear(r)
        if not r.cast:
            Py_INCREF(out)
            r.result = <PyObject *>out

    cdef void _serve_put(self, fk_req *r) noexcept:
        """Serve a put cast (owner thread, GIL): _serve without the dispatch."""
        fk_ssize_store(&self.taken, self.taken + 1)
        try:
            if r.hash != -1:        # the caller's hash of the key
                (<LockedTable>r.box)._put_h(fk_arg(r.a), r.hash, fk_arg(r.b))   # None travels as NULL
            else:
                (<LockedTable>r.box)._put(fk_arg(r.a), fk_arg(r.b))
        except BaseException:
            self._cast_failed()
        fk_ssize_store(&self.served, self.served + 1)
        fk_ssize_store_release(&self.casts_done, self.casts_done + 1)

    cdef void _cast_failed(self) noexcept:
        """In an except clause on the owner thread: log and count."""
        fk_ssize_store(&self.errors, self.errors + 1)
        try:
            _fk_log.exception("a cast on %s raised", self.thread.name)
        except BaseException:
            pass

    # -- the caller's side -----------------------------------------------------

    cdef int check_open(self) except -1:
        if fk_status_load(&self.status) != FK_OPEN:
            raise self.closed_error()
        return 0

    cdef object closed_error(self):
        if fk_status_load(&self.status) == FK_FORKED:
            return ClosedError(
                "this %s was created before os.fork(): its owner thread "
                "does not exist in the child process" % self.kind)
        return ClosedError("this %s is closed" % self.kind)

    cdef object call(self, int op, object fn, object a, object b, Py_hash_t h=-1):
        """Queue a call and wait for its answer without the GIL (served
        inline on the owner thread itself). Returns or raises its result."""
        cdef fk_req *r
        cdef int pushed
        cdef int waited = 0
        if fk_status_load(&self.status) != FK_OPEN:
            raise self.closed_error()
        if fk_thread_ident() == self.ident:
            return self._apply(<object>self.box, op, fn, a, b, h)
        r = fk_req_make(self.box, op, fn, a, b)
        r.hash = h                  # the key's hash (-1: none), for the owner
        if r.lock is NULL:
            try:
                fk_req_lockable(r)
            except MemoryError:
                fk_req_release(r)
                raise
        FK_MUTEX_LOCK(&self.mu)
        if self.pend_head is not NULL:
            self._flush()           # this caller's casts go first (FIFO)
        if fk_status_load(&self.status) != FK_OPEN:  # (nothing above runs Python code; cheap to be sure)
            FK_MUTEX_UNLOCK(&self.mu)
            fk_req_release(r)
            raise self.closed_error()
        fk_count_call(&self.q)      # with the GIL: from here on it will be served
        FK_MUTEX_UNLOCK(&self.mu)
        with nogil:
            pushed = fk_push_call(&self.q, r)   # fails only if the owner loop died
            if pushed == 0:
                waited = fk_wait(&self.q, r)
        if pushed != 0:
            fk_req_release(r)
            raise self.closed_error()
        while waited:
            self._interrupted(r)     # raises (request abandoned), or wait again
            with nogil:
                waited = fk_wait_again(r)
        return fk_take_result(r)

    cdef int _interrupted(self, fk_req *r) except -1:
        """A signal interrupted a parked caller: run the handlers; if one
        raises, abandon the request and let the exception go."""
        cdef int abandoned
        try:
            fk_check_signals()
        except BaseException:
            with nogil:
                abandoned = fk_abandon(r)
            if not abandoned:
                fk_req_release(r)
            raise
        return 0

    cdef int cast(self, int op, object fn, object a, object b, Py_hash_t h=-1) except -1:
        """Queue a request nobody waits for. From the owner thread too: it
        runs after the request being served (FIFO)."""
        cdef fk_req *r
        if fk_status_load(&self.status) != FK_OPEN:
            raise self.closed_error()
        r = fk_req_make(self.box, op, fn, a, b)
        r.cast = 1
        r.hash = h                  # the key's hash (-1: none), for the owner
        FK_MUTEX_LOCK(&self.mu)
        if fk_status_load(&self.status) != FK_OPEN:  # closed meanwhile (free-threaded build)
            FK_MUTEX_UNLOCK(&self.mu)
            fk_req_release(r)
            raise self.closed_error()
        r.next = self.pend_head     # the unpushed chain: no atomic per cast
        self.pend_head = r
        if self.pend_tail is NULL:
            self.pend_tail = r
        self.npend += 1
        fk_ssize_store(&self.pushed, self.pushed + 1)   # info() reads it
        if self.writers:
            self._note_writer()
        if self.npend == 1:
            fk_pending_start(&self.q)   # the owner may take it (with the GIL)
        elif self.npend >= FK_CHAIN_MAX:
            self._flush()
        FK_MUTEX_UNLOCK(&self.mu)
        return 0

    cdef void _note_writer(self) noexcept:
        """Remember that the calling thread's newest cast is number
        `pushed` (GIL; the engine's mutex on a free-threaded build, held by
        cast): in its own slot, else in a slot whose cast is
        applied (or never used), else in the overflow watermark. The owner
        thread's own casts are not noted (its reads never wait, see
        own_casts_pending)."""
        cdef unsigned long me = fk_thread_ident()
        cdef int i
        cdef int free = -1
        if me == self.ident:
            return
        for i in range(FK_WRITERS):
            if self.w_ident[i] == me:
                self.w_seq[i] = self.pushed
                return
            if free < 0 and self.w_seq[i] <= fk_ssize_load(&self.casts_done):
                free = i
        if free >= 0:
            self.w_ident[free] = me
            self.w_seq[free] = self.pushed
        else:
            self.w_overflow = self.pushed

    cdef bint own_casts_pending(self) noexcept:
        """True if a cast the calling thread queued is not applied yet
        (GIL; call it only when pushed != casts_done). Conservative once
        more than FK_WRITERS threads had unapplied casts at once (the
        overflow watermark holds for every reader until it is applied).
        False on the owner thread: its casts queue behind the request it is
        serving, so it could never wait for them."""
        cdef unsigned long me = fk_thread_ident()
        cdef int i
        cdef bint pending = False
        cdef Py_ssize_t done
        if me == self.ident:
            return False
        FK_MUTEX_LOCK(&self.mu)
        done = fk_ssize_load_acquire(&self.casts_done)
        if self.w_overflow > done:
            pending = True
        else:
            for i in range(FK_WRITERS):
                if self.w_ident[i] == me:
                    pending = self.w_seq[i] > done
                    break
        FK_MUTEX_UNLOCK(&self.mu)
        return pending

    cdef int sync(self) except -1:
        if fk_status_load(&self.status) != FK_OPEN:
            raise self.closed_error()
        if fk_thread_ident() != self.ident:
            self.call(FK_OP_SYNC, None, None, None)
        return 0

    cdef int shutdown(self) noexcept:
        """Stop accepting requests; the owner serves every call that passed
        the open check and everything queued, closes the queue and exits (no
        wait). 1 if this call closed it."""
        FK_MUTEX_LOCK(&self.mu)
        if fk_status_load(&self.status) != FK_OPEN:
            FK_MUTEX_UNLOCK(&self.mu)
            return 0
        fk_status_store(&self.status, FK_CLOSED)     # no call or cast passes the check any more
        self._flush()
        fk_begin_close(&self.q)     # the owner sets the closed bit when due
        FK_MUTEX_UNLOCK(&self.mu)
        return 1

    cdef object close(self, object timeout):
        """shutdown(), then wait up to timeout for the owner to finish."""
        cdef object thread = self.thread
        if fk_status_load(&self.status) == FK_FORKED:
            return True         # no owner in this process: nothing left to run
        self.shutdown()
        if thread is None:
            return True
        if self.ident != 0 and fk_thread_ident() == self.ident:
            return False        # the owner cannot wait for itself to finish
        thread.join(timeout)
        return not thread.is_alive()

    cdef dict counters(self):
        """info()'s counters, read without a lock and without waiting (relaxed
        loads: the owner and the casters update them meanwhile)."""
        cdef Py_ssize_t taken = fk_ssize_load(&self.taken)
        cdef Py_ssize_t queued = fk_ssize_load(&self.pushed) + <Py_ssize_t>fk_calls_in(&self.q)
        return {"queue": max(queued - taken, 0), "served": fk_ssize_load(&self.served),
                "errors": fk_ssize_load(&self.errors)}


cdef object fk_take_result(fk_req *r):
    """The caller's side of a completed call: return or raise its result and
    recycle the request."""
    cdef object res = <object>r.result
    cdef int failed = r.failed
    fk_req_release(r)
    if failed:
        raise res
    return res


def _fk_after_fork_in_child():
    """os.fork() child: the owner threads did not survive; every OwnerTable
    and Agent created before the fork raises ClosedError from now on."""
    for eng in list(_fk_engines):
        if isinstance(eng, _Owner):     # the registry is reachable by any code
            fk_status_store(&(<_Owner>eng).status, FK_FORKED)
            (<_Owner>eng).ident = 0
    _fk_engines.clear()


def _fk_close_at_exit():
    """atexit: close every running owner (open ones, and closed ones still
    draining their queue), applying its queued casts first. Never hangs: the
    wait for an owner goes on while it makes progress and is abandoned after 5
    seconds without any request served."""
    cdef _Owner eng
    engines = [e for e in list(_fk_engines) if isinstance(e, _Owner)]
    for eng in engines:
        eng.shutdown()
    for eng in engines:
        if fk_status_load(&eng.status) == FK_FORKED or eng.ident == fk_thread_ident():
            continue
        served = fk_ssize_load(&eng.served)
        while not eng.close(5.0):
            if fk_ssize_load(&eng.served) == served:
                break   # stuck for 5 s: give up, the thread is a daemon
            served = fk_ssize_load(&eng.served)


def _owner_debug_push_delay(int us):
    """Test hook: make every call sleep ``us`` microseconds between releasing
    the GIL and pushing its request (0: off). True on a FASTKV_DEBUG build,
    False (and no effect) otherwise."""
    return fk_debug_set_push_delay(us) == 0


_fk_os.register_at_fork(after_in_child=_fk_after_fork_in_child)
_fk_atexit_mod.register(_fk_close_at_exit)   # after logging's: runs before it


# ---- Agent -------------------------------------------------------------------

def _fk_identity(x):
    return x


def _fk_replaced(state, new):
    return new


@cython.final
@cython.auto_pickle(False)
cdef class _AgentBox:
    """An Agent's state, held by the Agent and by each of its queued
    requests -- never by the owner thread's engine."""
    cdef object state


@cython.no_gc_clear
cdef class Agent:
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
    cdef _Owner _eng
    cdef _AgentBox _box
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._box = _AgentBox.__new__(_AgentBox)
        self._eng = _Owner()
        self._eng.start("Agent", self._box)

    def __init__(self, state=None):
        self._eng.check_open()
        self._box.state = state  # no request can be queued yet

    def __dealloc__(self):
        if self._eng is not None:
            self._eng.box = NULL  # the queued requests hold the box
            self._eng.shutdown()  # the owner applies what is queued, then exits

    def get(self, fn, /, *args):
        """Return ``fn(state, *args)``, run on the owner. A call."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        return self._eng.call(FK_OP_CALL, fn, args, None)

    def update(self, fn, /, *args):
        """``state = fn(state, *args)`` on the owner; waits until it is done.
        Returns None. If ``fn`` raises, the caller gets it, state unchanged."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        self._eng.call(FK_OP_UPDATE, fn, args, None)

    def get_and_update(self, fn, /, *args):
        """``fn(state, *args)`` returns ``(reply, new_state)``: the state
        becomes ``new_state`` and ``reply`` is returned. A call; if ``fn``
        raises or does not return a pair, the caller gets the error and the
        state is unchanged."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        return self._eng.call(FK_OP_GET_AND_UPDATE, fn, args, None)

    def cast(self, fn, /, *args):
        """Queue ``state = fn(state, *args)``; the caller does not wait. An
        exception is logged on the ``fastkv`` logger and counted in
        ``info()["errors"]``; the state stays as it was."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        self._eng.cast(FK_OP_UPDATE, fn, args, None)

    def sync(self):
        """Wait until every request queued before this one has been applied.
        A no-op on the owner thread itself."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        self._eng.sync()

    def close(self, timeout=None):
        """Stop accepting requests, let the owner apply everything already
        queued, then stop it. Waits up to ``timeout`` seconds (None: until
        done); True if the owner finished in time. Idempotent; afterwards
        every method raises ``ClosedError``."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        return self._eng.close(timeout)

    def info(self):
        """``{"queue": requests waiting, "served": requests served,
        "errors": casts that raised}``. Read without a round trip."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        self._eng.check_open()
        return self._eng.counters()

    def __enter__(self):
        """``with agent:`` returns the agent itself."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        return self

    def __exit__(self, exc_type, exc, tb):
        """Leaving the ``with`` block calls ``close()`` (queued casts are
        applied first); exceptions propagate."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        self.close()
        return None

    def __repr__(self):
        """``<Agent (open)>`` or ``<Agent (closed)>``: no round trip, the
        state itself is not shown."""
        return "<%s (%s)>" % (type(self).__name__,
                              "open" if fk_status_load(&self._eng.status) == FK_OPEN else "closed")

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as the state (read by
        one call to the owner): loading starts a new Agent with its own owner
        thread, then gives it the state (``__setstate__``), so a state that
        refers back to the agent loads referring to the new one. ``ClosedError``
        once closed."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        state = self._eng.call(FK_OP_CALL, _fk_identity, (), None)
        return (_fk_newobj, (type(self),), fk_reduce_state(self, state))

    def __setstate__(self, state):
        """Load a pickled ``(state, attrs)`` state: ``attrs`` into a
        subclass instance's ``__dict__``, then the agent's state becomes
        ``state`` (one update, waited for: it replaces whatever the agent
        held)."""
        if not isinstance(self, Agent):
            fk_wrong_self(self, Agent)
        value = fk_setstate_attrs(self, state)
        self._eng.call(FK_OP_UPDATE, _fk_replaced, (value,), None)

    __class_getitem__ = classmethod(_fk_GenericAlias)


# ---- OwnerTable --------------------------------------------------------------

import collections.abc as _fk_abc

cdef inline bint fk_storage_held(LockedTable storage):
    """True if the calling thread holds the storage's lock (it is inside an
    operation on it: a key's __eq__/__hash__ or a destructor running)."""
    return storage._held()


class _OwnerValuesView(_fk_abc.ValuesView):
    """``ValuesView`` whose iteration walks one snapshot of the table (one
    call to the owner)."""

    __slots__ = ()

    def __iter__(self):
        return iter(self._mapping.to_dict().values())

    def __reversed__(self):
        return reversed(self._mapping.to_dict().values())


class _OwnerItemsView(_fk_abc.ItemsView):
    """``ItemsView`` whose iteration walks one snapshot of the table."""

    __slots__ = ()

    def __contains__(self, item):
        """As dict's items view (see ``_items_contain``)."""
        return _items_contain(self._mapping, item)

    def __iter__(self):
        return iter(self._mapping.to_dict().items())

    def __reversed__(self):
        return reversed(self._mapping.to_dict().items())


@cython.no_gc_clear
cdef class OwnerTable:
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
    cdef _Owner _eng
    cdef LockedTable _storage
    cdef bint _protected
    cdef object __weakref__

    def __cinit__(self, *args, **kwargs):
        self._storage = LockedTable()
        self._protected = False
        self._eng = _Owner()
        self._eng.start("OwnerTable", self._storage)

    def __init__(self, data=(), /, access="private", **kwargs):
        if access != "private" and access != "protected":
            raise ValueError(f'access must be "private" or "protected", not {access!r}')
        staged = _locked_stage(data, kwargs)
        self._eng.check_open()
        self._protected = access == "protected"
        if self._protected:
            self._eng.writers = True    # casts note their thread from now on
        self._storage._put_many(staged)  # no request can be queued yet

    def __dealloc__(self):
        if self._eng is not None:
            self._eng.box = NULL  # the queued requests hold the storage
            self._eng.shutdown()  # the owner applies what is queued, then exits

    # -- reads: calls, or direct under access="protected" ---------------------

    cdef object _call(self, int op, object fn, object a, object b, Py_hash_t h=-1):
        """A call to the owner, refused (RuntimeError) when the calling thread
        holds the storage lock: under ``access="protected"`` a key's
        ``__eq__``/``__hash__`` or a destructor running during a direct read
        would otherwise wait for an owner that waits for that lock."""
        if fk_storage_held(self._storage):
            raise RuntimeError(
                f"re-entrant call to an {type(self).__name__} from a thread that "
                "is reading it directly (a key's __eq__/__hash__ or a destructor "
                "made a request during a protected read)")
        return self._eng.call(op, fn, a, b, h)

    cdef inline int _direct(self) except -1:
        """1 if reads go straight to the storage (protected; ClosedError once
        closed), 0 if they are calls. Read-your-writes: if a cast of the
        calling thread is still unapplied, first wait for the owner to apply
        it (a sync; RuntimeError when the thread holds the storage lock, as
        for any call). With no cast unapplied at all, two loads decide."""
        if self._protected:
            if fk_status_load(&self._eng.status) != FK_OPEN:
                raise self._eng.closed_error()
            if fk_ssize_load(&self._eng.pushed) != fk_ssize_load_acquire(&self._eng.casts_done):
                self._catch_up()
            return 1
        return 0

    cdef int _catch_up(self) except -1:
        """_direct's slow path (some cast is unapplied): sync if one of them
        is the calling thread's."""
        if self._eng.own_casts_pending():
            self._call(FK_OP_SYNC, None, None, None)
        return 0

    def __getitem__(self, key):
        """``t[key]``: the value, or ``KeyError(key)``. A call (round trip to
        the owner); a direct O(1) read under ``access="protected"``."""
        cdef PyObject *v
        if self._direct():
            # no sentinel default: passing one took a reference to a shared
            # object, a cache line every reading thread wrote twice per read
            if self._storage._find_ref(key, &v):
                return fastkv_steal(v)
            return fastkv_cold_call2(_owner_missing, self, key)
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        if type(self) is not OwnerTable:    # a subclass may have __missing__
            value = self._call(FK_OP_GET, None, key, _MISSING, h)
            if value is _MISSING:
                return _owner_missing(self, key)
            return value
        return self._call(FK_OP_GETITEM, None, key, None, h)

    def get(self, key, default=None):
        """The value for ``key``, else ``default``. A call; a direct O(1) read
        under ``access="protected"``."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return self._get(key, default)   # replaced by fk_owner_get_fastcall

    cdef object _get(self, object key, object default):
        if self._direct():
            return self._storage._get(key, default)
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        return self._call(FK_OP_GET, None, key, default, h)

    def __contains__(self, key):
        """``key in t``. A call; direct under ``access="protected"``."""
        if self._direct():
            return self._storage._contains(key) == 1
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        return self._call(FK_OP_CONTAINS, None, key, None, h)

    def __len__(self):
        """Number of keys. A call; direct under ``access="protected"``."""
        if self._direct():
            return self._storage._len()
        return self._call(FK_OP_LEN, None, None, None)

    def __iter__(self):
        """Iterate the keys of a snapshot taken (by the owner, or directly
        under ``access="protected"``) when iteration starts. O(n) copy."""
        if self._direct():
            return iter(self._storage)
        return iter(self._call(FK_OP_KEYS, None, None, None))

    def __reversed__(self):
        """``reversed(t)``: the keys in reverse insertion order, over a
        snapshot taken (by the owner, or directly under
        ``access="protected"``) when iteration starts, as ``iter``. O(n) copy."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return _iterate_reversed(self._snapshot(), ITER_KEYS)

    cdef _Snapshot _snapshot(self):
        """A private copy of the items, made atomically by the owner (one
        call), or directly under ``access="protected"``."""
        if self._direct():
            return self._storage._snapshot()
        return <_Snapshot?>self._call(FK_OP_SNAPSHOT, None, None, None)

    def get_many(self, keys, default=None):
        """``[t.get(k, default) for k in keys]``, all read in one request (one
        round trip). Keys are hashed before it is queued."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        keys = list(keys)
        for key in keys:
            fk_hash(key)
        if self._direct():
            return self._storage.get_many(keys, default)
        return self._call(FK_OP_GET_MANY, None, keys, default)

    def to_dict(self):
        """A new ``dict`` with the items. One call (round trip), O(n) copy."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        if self._direct():
            return self._storage.to_dict()
        return self._call(FK_OP_TO_DICT, None, None, None)

    def copy(self):
        """An independent ``OwnerTable`` (never a subclass) with the same items
        and access level, and its own owner thread. O(n)."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        access = "protected" if self._protected else "private"
        return OwnerTable(self.to_dict(), access=access)

    def keys(self):
        """A live, set-like view of the keys (``collections.abc.KeysView``);
        each iteration walks a snapshot taken when it starts."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return _TableKeysView(self)

    def values(self):
        """A live view of the values (``collections.abc.ValuesView``); each
        iteration walks a snapshot taken when it starts (O(n) copy)."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return _OwnerValuesView(self)

    def items(self):
        """A live, set-like view of the ``(key, value)`` pairs
        (``collections.abc.ItemsView``); each iteration walks a snapshot taken
        when it starts (O(n) copy)."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return _OwnerItemsView(self)

    def __eq__(self, other):
        """Equal to any ``collections.abc.Mapping`` with equal items, as dict
        compares; ``NotImplemented`` for anything else. O(n)."""
        if not isinstance(other, _fk_abc.Mapping):
            return NotImplemented
        mine = self.to_dict()
        if isinstance(other, dict):
            return mine == other
        if len(mine) != len(other):
            return False
        return mine == dict(other.items())

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None

    def __repr__(self):
        """``OwnerTable({...})`` (one call to the owner), or
        ``OwnerTable(<closed>)`` once closed: repr never raises ClosedError."""
        name = type(self).__name__
        if fk_status_load(&self._eng.status) != FK_OPEN:
            return f"{name}(<closed>)"
        if fk_repr_enter(self):
            return "..."
        try:
            return f"{name}({self.to_dict()!r})"
        finally:
            fk_repr_leave(self)

    # -- writes: casts -------------------------------------------------------

    def put(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``): a cast, queued
        for the owner; the caller does not wait. ``key`` is hashed first."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        self._eng.cast(FK_OP_PUT, None, key, value, h)

    def __setitem__(self, key, value):
        """Store ``value`` under ``key`` (``t[key] = value``): a cast, queued
        for the owner; the caller does not wait. ``key`` is hashed first."""
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        self._eng.cast(FK_OP_PUT, None, key, value, h)

    def put_many(self, mapping_or_pairs):
        """Store many items in one cast, applied atomically by the owner. The
        argument is read (and every key hashed) before it is queued."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        staged = _locked_stage(mapping_or_pairs, None)
        self._eng.cast(FK_OP_PUT_MANY, None, staged, None)

    def update(self, other=(), /, **kwargs):
        """``dict.update`` as one cast (see ``put_many``)."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        self._eng.cast(FK_OP_PUT_MANY, None, _locked_stage(other, kwargs), None)

    def clear(self):
        """Remove every item: a cast."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        self._eng.cast(FK_OP_CLEAR, None, None, None)

    def delete(self, key):
        """Remove ``key``: a cast, queued for the owner; the caller does not
        wait, so it cannot learn whether the key was there and gets None
        (``pop(key, None)`` and ``del t[key]`` are calls that tell). ``key``
        is hashed first."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        self._eng.cast(FK_OP_DELETE, None, key, None, h)

    # -- writes that answer: calls -------------------------------------------

    def __delitem__(self, key):
        """``del t[key]``: remove ``key`` or raise ``KeyError(key)``. A call."""
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        self._call(FK_OP_DELITEM, None, key, None, h)

    def pop(self, key, default=_MISSING):
        """``dict.pop``: remove ``key`` and return its value, else ``default``,
        else ``KeyError(key)``. A call."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        cdef Py_hash_t h = fk_hash(key)   # hashed once: the owner reuses h
        return self._call(FK_OP_TAKE, None, key, default, h)

    def popitem(self):
        """Remove and return the last inserted ``(key, value)`` pair;
        ``KeyError`` when empty. A call."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return self._call(FK_OP_POPITEM, None, None, None)

    def setdefault(self, key, default=None):
        """The value for ``key``; if absent, store ``default`` and return it.
        A call."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        fk_hash(key)
        return self._call(FK_OP_SETDEFAULT, None, key, default)

    # -- the owner -------------------------------------------------------------

    def call(self, fn, /, *args):
        """Run ``fn(table, *args)`` on the owner thread, after everything
        queued before it, and return its result; ``table`` is the
        ``LockedTable`` holding the data. An exception reaches the caller and
        the owner keeps serving (whatever ``fn`` changed before raising stays
        changed)."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return self._call(FK_OP_CALL, fn, args, None)

    def sync(self):
        """Wait until every request queued before this one has been applied.
        A no-op on the owner thread itself."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        if fk_storage_held(self._storage):
            self._call(FK_OP_SYNC, None, None, None)  # raises RuntimeError
        self._eng.sync()

    def close(self, timeout=None):
        """Stop accepting requests, let the owner apply everything already
        queued, then stop it. Waits up to ``timeout`` seconds (None: until
        done); True if the owner finished in time. Idempotent; afterwards
        every method raises ``ClosedError``. Called during a direct read of
        this table by the same thread (a key's ``__eq__``/``__hash__`` or a
        destructor under ``access="protected"``), it closes without waiting
        -- the owner needs that read to end first -- and returns False unless
        the owner had already finished."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        if fk_storage_held(self._storage):
            return self._eng.close(0)   # waiting would deadlock: the owner
                                        # waits for the lock this thread holds
        return self._eng.close(timeout)

    def info(self):
        """``{"size": keys, "queue": requests waiting, "served": requests
        served, "errors": casts that raised, "access": "private" or
        "protected"}``. Read without a round trip."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        self._eng.check_open()
        info = {"size": 0}
        info.update(self._eng.counters())
        # never waits: the storage's lock may be held by the owner for as long
        # as a key's __eq__ runs (len() waiting there, the counters would be
        # read only once the queue had drained)
        info["size"] = self._storage._len_nowait()
        info["access"] = "protected" if self._protected else "private"
        return info

    def __enter__(self):
        """``with table:`` returns the table itself."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        return self

    def __exit__(self, exc_type, exc, tb):
        """Leaving the ``with`` block calls ``close()``; exceptions propagate."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        self.close()
        return None

    def __reduce__(self):
        """Pickle (and ``copy.copy``/``copy.deepcopy``) as the items (the
        flat list ``["fastkv.items", k0, v0, ...]`` of a copy the owner makes
        in one call) and the access level: loading starts a new, empty
        OwnerTable with its own owner thread (``cls.__new__(cls)``, as for a
        dict subclass: a subclass's ``__init__`` is not called), then fills
        it (``__setstate__``), so an item that refers back to the table -- the
        table itself included -- loads as the new table, as in a dict.
        ``ClosedError`` once closed."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        access = "protected" if self._protected else "private"
        cdef _Snapshot snap = self._snapshot()
        return (_fk_newobj, (type(self),),
                fk_reduce_state(self, _flat_items(&snap.tab)) + (access,))

    def __setstate__(self, state):
        """Load a pickled ``(items, attrs, access)`` state (``access`` may be
        absent: the table keeps its own): the access level, ``attrs`` into a
        subclass instance's ``__dict__``, then the items in one ``put_many``
        cast, never a subclass's override, waited for (the table holds them
        when this returns, under either access). On a table already in use
        it only adds: keys the state does not name are kept."""
        if not isinstance(self, OwnerTable):
            fk_wrong_self(self, OwnerTable)
        if isinstance(state, tuple) and len(state) == 3:   # (items, attrs, access)
            access = state[2]
            if access != "private" and access != "protected":
                raise ValueError(f"bad access level in a pickled OwnerTable: {access!r}")
            state = state[:2]
            if access == "protected":
                self._eng.writers = True
            self._protected = access == "protected"
        items = fk_setstate_attrs(self, state)
        if items:
            self._eng.cast(FK_OP_PUT_MANY, None, _state_stage(items), None)
            OwnerTable.sync(self)

    # -- dict's operators and fromkeys ---------------------------------------

    def __or__(self, other):
        """``t | other``: a new ``OwnerTable`` (never a subclass, as
        ``copy()``; same access level, its own owner thread) with t's items
        (one call), then those of ``other``, a ``collections.abc.Mapping``
        whose values win. O(n + m); t is unchanged. ``NotImplemented`` for
        anything but a mapping."""
        cdef _Snapshot mine
        if not isinstance(other, (dict, FrozenTable, _fk_abc.Mapping)):
            return NotImplemented
        mine = self._snapshot()
        _absorb(mine, _locked_stage(other, None))
        return fk_owner_adopt(mine, self._protected)

    def __ror__(self, other):
        """``other | t`` for a ``collections.abc.Mapping`` ``other`` that does
        not handle it (a dict): a new ``OwnerTable`` (t's access level) with
        other's items, then t's (one call; t's values win). O(n + m)."""
        cdef _Snapshot staged
        if not isinstance(other, (dict, FrozenTable, _fk_abc.Mapping)):
            return NotImplemented
        staged = _locked_stage(other, None)
        _absorb(staged, self._snapshot())
        return fk_owner_adopt(staged, self._protected)

    def __ior__(self, other):
        """``t |= other``: ``t.put_many(other)`` (a mapping or an iterable of
        pairs, read and hashed first), one cast as ``update``; t itself is
        the result."""
        staged = _locked_stage(other, None)
        self._eng.cast(FK_OP_PUT_MANY, None, staged, None)
        return self

    @classmethod
    def fromkeys(cls, iterable, value=None, /):
        """A new table of class ``cls`` (a subclass gets its own, as
        ``dict.fromkeys``; default access) mapping every key of ``iterable``
        to ``value`` (the same object for all). O(n)."""
        if cls is OwnerTable:
            return OwnerTable(dict.fromkeys(iterable, value))
        new = cls()     # as dict.fromkeys: cls() with no arguments, then
        for key in iterable:    # new[key] = value (a subclass's __setitem__)
            new[key] = value
        return new

    __class_getitem__ = classmethod(_fk_GenericAlias)


cdef object _owner_missing(object self, object key):
    """A miss in self[key]: a subclass's ``__missing__`` (as dict: looked up
    on the type, subclasses only; run by the caller, not the owner), else
    ``KeyError(key)``."""
    if type(self) is not OwnerTable:
        missing = getattr(type(self), "__missing__", None)
        if missing is not None:
            return missing(self, key)
    raise KeyError(key)


cdef OwnerTable fk_owner_adopt(_Snapshot snap, bint protected):
    """A new OwnerTable (its own owner thread) whose storage takes over the
    private snapshot ``snap``'s arrays."""
    cdef OwnerTable new = OwnerTable.__new__(OwnerTable)
    new._protected = protected
    if protected:
        new._eng.writers = True
    new._storage._put_many(snap)        # no request can be queued yet
    return new


cdef inline bint fk_owner_reads_direct(OwnerTable t) noexcept:
    """True if a read of ``t`` may go straight to its storage with nothing
    else to do: protected, open, and no cast unapplied (loads only, as
    _direct's fast path; anything else takes _direct's slow path)."""
    return (t._protected and fk_status_load(&t._eng.status) == FK_OPEN
            and fk_ssize_load(&t._eng.pushed) == fk_ssize_load_acquire(&t._eng.casts_done))


cdef object fk_owner_get_fastcall(object self, PyObject **args, Py_ssize_t nargs,
                                  PyObject *kwnames):
    """OwnerTable.get(key, default=None), vectorcall convention: a protected
    read goes straight to the storage. ``self`` is only cast, never assigned
    to a typed local: that would take a reference to the table, a shared
    cache line written by every reading thread (free-threaded build)."""
    cdef PyObject *key
    cdef PyObject *default = <PyObject *>None
    if kwnames is NULL and (nargs == 1 or nargs == 2):
        key = args[0]
        if nargs == 2:
            default = args[1]
    else:
        _parse_key_default(args, nargs, kwnames, &key, &default)
    if fk_owner_reads_direct(<OwnerTable>self):
        return (<OwnerTable>self)._storage._get(<object>key, <object>default)
    return (<OwnerTable>self)._get(<object>key, <object>default)


fastkv_install_method(OwnerTable, &fk_owner_get_def, <void *>fk_owner_get_fastcall)

_fk_abc.MutableMapping.register(OwnerTable)
