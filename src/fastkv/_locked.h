/* fastkv/_locked.h: the lock of a LockedTable (included by _locked.pxi).
 *
 * One word, ``holder``: 0 when free, else the id of the holding thread
 * (``fastkv_thread_id``: the thread pointer, read without a call where the
 * compiler offers it). Acquire is a test-and-set of that word: a
 * compare-and-swap 0 -> id where threads run C code in parallel (the
 * free-threaded build, or -DFASTKV_LOCK_CAS), a plain load and store on a GIL
 * build, where only the GIL holder writes the word and does not release the
 * GIL in between (see fastkv_lock_try). Release is a plain store-release of 0
 * followed by a plain load of ``waiters`` (no read-modify-write on the release
 * path: on x86 one costs as much as a dict lookup). Recording the holder is
 * what lets a thread that already holds the lock get RuntimeError instead of
 * deadlocking on itself.
 *
 * A thread that finds the lock held calls ``fastkv_lock_wait`` WITHOUT the
 * GIL (the holder may need the GIL to finish: a key's __eq__ runs Python
 * under the lock). It spins briefly, yields, then parks on one of a few
 * shared condition variables (a "parking lot" hashed by lock address), after
 * counting itself in ``waiters``. It returns once it has seen the lock free;
 * the caller then takes the GIL back and tries again, so a thread never holds
 * this lock while it waits for the GIL.
 *
 * Lost wake-ups: the releaser's store of 0 and its load of ``waiters`` may be
 * reordered (store -> load, allowed on x86 and ARM), so a waiter registering at
 * that very instant can be missed. Parked waiters therefore sleep with a
 * timeout (FASTKV_PARK_MIN_US, doubling up to FASTKV_PARK_MAX_US) and look at
 * the lock again: a missed wake-up costs latency, never a deadlock. Only the
 * first park of a wait can miss one in practice (by the next release the
 * waiter's registration is long visible).
 *
 * Every function is C only (no Python). fastkv_lock_try and
 * fastkv_lock_release are called with the GIL held (on a GIL build the
 * test-and-set relies on it); fastkv_lock_wait is called without it.
 */
#ifndef FASTKV_LOCKED_H
#define FASTKV_LOCKED_H

#include <stdint.h>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#else
#  include <pthread.h>
#  include <sched.h>
#  include <time.h>
#  include <errno.h>
#endif

/* Acquire with a compare-and-swap where threads run C code in parallel (the
   free-threaded build), or when asked to (-DFASTKV_LOCK_CAS, to exercise that
   path on a GIL build). On a GIL build the lock word is only ever written by
   the thread holding the GIL, without releasing it in between, so a plain
   load and store acquire it; see fastkv_lock_try. */
#if defined(Py_GIL_DISABLED) || defined(FASTKV_LOCK_CAS)
#  undef FASTKV_LOCK_CAS
#  define FASTKV_LOCK_CAS 1
#else
#  define FASTKV_LOCK_CAS 0
#endif

typedef struct {
    uintptr_t holder;   /* 0: free; else fastkv_thread_id() of the holder */
    int waiters;        /* threads inside fastkv_lock_wait for this lock */
    unsigned gen;       /* fastkv_fork_gen when it was taken (see below) */
#ifdef Py_GIL_DISABLED
    uint64_t seq;       /* odd while held: lock-free readers validate with it */
#endif
} fastkv_lock;

#include "_ft.h"

/* Free-threaded build: a sequence count for LockedTable's lock-free reads
   (_locked.pxi's design note). Every acquire makes it odd, every release
   even again; a reader that saw the same even count before and after its
   look-up saw no change. On a GIL build a read always takes the lock
   (fastkv_seq_begin reports "held"). */
#ifdef Py_GIL_DISABLED
#  define fastkv_seq_begin(l) __atomic_load_n(&(l)->seq, __ATOMIC_ACQUIRE)
static inline int fastkv_seq_ok(fastkv_lock *l, uint64_t s) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(&l->seq, __ATOMIC_RELAXED) == s;
}
#else
#  define fastkv_seq_begin(l) ((uint64_t)1)
#  define fastkv_seq_ok(l, s) 0
#endif

/* Fork: a lock held by another thread when the process forked (only possible
   while a key's __eq__/__hash__ runs Python under it) is held, in the child,
   by a thread that does not exist there: nobody would ever release it. The
   child's handler counts forks (fastkv_fork_gen) and notes the thread that
   forked, the only one the child has; a lock taken before the last fork by
   another thread is orphaned, and a thread that finds it held takes it over
   (fastkv_lock_orphaned / fastkv_lock_reset, with the GIL). The table is
   whole at such a point: the holder was inside a key's Python method, where
   no operation is half-applied. */
static unsigned fastkv_fork_gen = 0;
static uintptr_t fastkv_fork_thread = 0;      /* its fastkv_thread_id() */
static unsigned long fastkv_fork_ident = 0;   /* its PyThread_get_thread_ident()
                                                 (FrozenTable's writer lock) */

/* Signals: their Python handlers run only in the main thread (the thread that
   forked, in a fork child), so only a wait there must wake for them. Such a
   wait returns to its caller at least every FK_SIGNAL_POLL_US (and when a
   signal interrupts it), which takes the GIL and runs the handlers
   (PyErr_CheckSignals): Ctrl-C reaches a thread waiting for a lock whose
   holder never lets go. Set at import (threading.main_thread()). */
static unsigned long fastkv_main_ident = 0;
#define FK_SIGNAL_POLL_US 50000LL

/* --- atomics -------------------------------------------------------------- */

#if defined(_MSC_VER) && !defined(__clang__)
#  include <intrin.h>
static __forceinline int fastkv_cas_acquire(uintptr_t *p, uintptr_t desired) {
    return (uintptr_t)InterlockedCompareExchangePointer(
        (PVOID volatile *)p, (PVOID)desired, NULL) == 0;
}
/* x86/x64 MSVC volatile accesses are acquire/release (/volatile:ms). */
static __forceinline uintptr_t fastkv_load_relaxed(uintptr_t *p) {
    return *(volatile uintptr_t *)p;
}
static __forceinline void fastkv_store_release(uintptr_t *p, uintptr_t v) {
    _ReadWriteBarrier();
    *(volatile uintptr_t *)p = v;
}
static __forceinline void fastkv_store_relaxed(uintptr_t *p, uintptr_t v) {
    *(volatile uintptr_t *)p = v;
}
static __forceinline int fastkv_waiters(int *p) { return *(volatile int *)p; }
static __forceinline void fastkv_waiters_add(int *p, int d) {
    InterlockedExchangeAdd((volatile LONG *)p, d);
}
#  define FASTKV_CPU_RELAX() YieldProcessor()
#else
static inline int fastkv_cas_acquire(uintptr_t *p, uintptr_t desired) {
    uintptr_t expected = 0;
    return __atomic_compare_exchange_n(p, &expected, desired, 0,
                                       __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline uintptr_t fastkv_load_relaxed(uintptr_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void fastkv_store_release(uintptr_t *p, uintptr_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline void fastkv_store_relaxed(uintptr_t *p, uintptr_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline int fastkv_waiters(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void fastkv_waiters_add(int *p, int d) {
    __atomic_fetch_add(p, d, __ATOMIC_SEQ_CST);
}
#  if defined(__x86_64__) || defined(__i386__)
#    define FASTKV_CPU_RELAX() __builtin_ia32_pause()
#  elif defined(__aarch64__)
#    define FASTKV_CPU_RELAX() __asm__ __volatile__("yield")
#  else
#    define FASTKV_CPU_RELAX() ((void)0)
#  endif
#endif

/* --- thread ids ------------------------------------------------------------ */

#ifndef __has_builtin
#  define __has_builtin(x) 0
#endif

/* A non-zero id, unique among live threads, cheap to read (the holder is
   recorded on every acquire). */
static inline uintptr_t fastkv_thread_id(void) {
#if (defined(__x86_64__) || defined(__aarch64__)) && __has_builtin(__builtin_thread_pointer) \
    && !defined(_WIN32)
    return (uintptr_t)__builtin_thread_pointer();   /* %fs base / TPIDR_EL0 */
#elif defined(_WIN32)
    return (uintptr_t)GetCurrentThreadId() + 1;     /* never 0 */
#else
    return (uintptr_t)pthread_self();
#endif
}

/* --- the parking lot ---------------------------------------------------------- */

#define FASTKV_PARK_BUCKETS 16
#define FASTKV_SPINS 64
#define FASTKV_YIELDS 8
#define FASTKV_PARK_MIN_US 200
#define FASTKV_PARK_MAX_US 20000

#if defined(_WIN32)
typedef struct { SRWLOCK m; CONDITION_VARIABLE c; } fastkv_bucket;
static fastkv_bucket fastkv_buckets[FASTKV_PARK_BUCKETS];
static int fastkv_lock_module_init(void) {
    int i;
    for (i = 0; i < FASTKV_PARK_BUCKETS; i++) {
        InitializeSRWLock(&fastkv_buckets[i].m);
        InitializeConditionVariable(&fastkv_buckets[i].c);
    }
    return 0;
}
#  define FASTKV_BUCKET_LOCK(b) AcquireSRWLockExclusive(&(b)->m)
#  define FASTKV_BUCKET_UNLOCK(b) ReleaseSRWLockExclusive(&(b)->m)
#  define FASTKV_BUCKET_WAKE(b) WakeAllConditionVariable(&(b)->c)
static void fastkv_bucket_wait(fastkv_bucket *b, long us) {
    SleepConditionVariableSRW(&b->c, &b->m, (DWORD)((us + 999) / 1000), 0);
}
#  define FASTKV_YIELD() SwitchToThread()
#else
typedef struct { pthread_mutex_t m; pthread_cond_t c; } fastkv_bucket;
static fastkv_bucket fastkv_buckets[FASTKV_PARK_BUCKETS];
static void fastkv_buckets_reset(void) {
    /* Also the fork child's handler: a bucket mutex held by a thread of the
       parent (which does not exist in the child) must not stay locked. */
    int i;
    for (i = 0; i < FASTKV_PARK_BUCKETS; i++) {
        pthread_mutex_init(&fastkv_buckets[i].m, NULL);
        pthread_cond_init(&fastkv_buckets[i].c, NULL);
    }
}
static void fastkv_after_fork_child(void) {
    fastkv_buckets_reset();
    fastkv_fork_gen++;
    fastkv_fork_thread = fastkv_thread_id();
    fastkv_fork_ident = PyThread_get_thread_ident();
    fastkv_main_ident = fastkv_fork_ident;   /* CPython's view too */
}
static int fastkv_lock_module_init(void) {
    fastkv_buckets_reset();
    return pthread_atfork(NULL, NULL, fastkv_after_fork_child) == 0 ? 0 : -1;
}
#  define FASTKV_BUCKET_LOCK(b) pthread_mutex_lock(&(b)->m)
#  define FASTKV_BUCKET_UNLOCK(b) pthread_mutex_unlock(&(b)->m)
#  define FASTKV_BUCKET_WAKE(b) pthread_cond_broadcast(&(b)->c)
static void fastkv_bucket_wait(fastkv_bucket *b, long us) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (us % 1000000) * 1000;
    ts.tv_sec += us / 1000000 + ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    pthread_cond_timedwait(&b->c, &b->m, &ts);
}
#  define FASTKV_YIELD() sched_yield()
#endif

static inline fastkv_bucket *fastkv_bucket_of(fastkv_lock *l) {
    uintptr_t a = (uintptr_t)l;
    return &fastkv_buckets[((a >> 4) ^ (a >> 10)) % FASTKV_PARK_BUCKETS];
}

/* --- the lock ----------------------------------------------------------------- */

/* Take the lock if it is free: 1 (now held by ``me``) or 0. */
static inline int fastkv_lock_try(fastkv_lock *l, uintptr_t me) {
#if FASTKV_LOCK_CAS
    if (!fastkv_cas_acquire(&l->holder, me))
        return 0;
#  ifdef Py_GIL_DISABLED
    __atomic_store_n(&l->seq, l->seq + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);    /* odd before any change */
#  endif
#else
    /* GIL build: only the GIL holder ever writes ``holder`` and nothing here
       releases the GIL, so the test-and-set cannot interleave (the GIL's own
       hand-off is the fence). No locked instruction: it would drain the
       store buffer on every read. */
    if (fastkv_load_relaxed(&l->holder) != 0)
        return 0;
    fastkv_store_relaxed(&l->holder, me);
#endif
    l->gen = fastkv_fork_gen;   /* the holder's line; read only after a fork */
    return 1;
}

/* Held by a thread of the parent process (see fastkv_fork_gen). GIL. */
static inline int fastkv_lock_orphaned(fastkv_lock *l) {
    uintptr_t h = fastkv_load_relaxed(&l->holder);
    return h != 0 && l->gen != fastkv_fork_gen && h != fastkv_fork_thread;
}

/* Free an orphaned lock; its waiters were threads of the parent too. GIL. */
static inline void fastkv_lock_reset(fastkv_lock *l) {
    l->waiters = 0;
#ifdef Py_GIL_DISABLED
    l->seq = (l->seq + 1) & ~(uint64_t)1;      /* even: not held */
#endif
    fastkv_store_release(&l->holder, 0);
}

/* The holder's id, 0 if free (a hint, except that it equals fastkv_thread_id()
   exactly when the calling thread holds the lock). */
static inline uintptr_t fastkv_lock_holder(fastkv_lock *l) {
    return fastkv_load_relaxed(&l->holder);
}

static void fastkv_lock_wake(fastkv_lock *l) {
    fastkv_bucket *b = fastkv_bucket_of(l);
    FASTKV_BUCKET_LOCK(b);
    FASTKV_BUCKET_WAKE(b);
    FASTKV_BUCKET_UNLOCK(b);
}

/* Release the lock (the caller holds it). Free-threaded build: the count
   goes even, and before the caller drops what it unlinked under the lock
   (replaced values, removed keys: always after the release), every read
   section that may have seen them has ended. */
static inline void fastkv_lock_release(fastkv_lock *l) {
#ifdef Py_GIL_DISABLED
    __atomic_store_n(&l->seq, l->seq + 1, __ATOMIC_RELEASE);
#endif
    fastkv_store_release(&l->holder, 0);
    if (fastkv_waiters(&l->waiters))
        fastkv_lock_wake(l);
#ifdef Py_GIL_DISABLED
    fk_rd_synchronize();
#endif
}

/* Called WITHOUT the GIL after a failed fastkv_lock_try: return 0 once the
   lock has been seen free (the caller retries; someone else may win). With
   ``signals`` (the main thread), return 1 instead once the wait has lasted
   about FK_SIGNAL_POLL_US without seeing it free: the caller takes the GIL,
   runs the signal handlers and calls again, passing back ``*park_us`` (the
   current park length, 0 on the first call). */
static int fastkv_lock_wait(fastkv_lock *l, int signals, long *park_us) {
    fastkv_bucket *b;
    long us = *park_us, waited = 0;
    int i, r = 0;
    if (us == 0) {
        for (i = 0; i < FASTKV_SPINS; i++) {
            if (fastkv_load_relaxed(&l->holder) == 0)
                return 0;
            FASTKV_CPU_RELAX();
        }
        for (i = 0; i < FASTKV_YIELDS; i++) {
            FASTKV_YIELD();
            if (fastkv_load_relaxed(&l->holder) == 0)
                return 0;
        }
        us = FASTKV_PARK_MIN_US;
    }
    b = fastkv_bucket_of(l);
    FASTKV_BUCKET_LOCK(b);
    fastkv_waiters_add(&l->waiters, 1);
    while (fastkv_load_relaxed(&l->holder) != 0) {
        if (signals && waited >= FK_SIGNAL_POLL_US) {
            r = 1;
            break;
        }
        fastkv_bucket_wait(b, us);
        waited += us;
        if (us < FASTKV_PARK_MAX_US)
            us *= 2;
    }
    fastkv_waiters_add(&l->waiters, -1);
    FASTKV_BUCKET_UNLOCK(b);
    *park_us = us;
    return r;
}

#endif /* FASTKV_LOCKED_H */
