/* fastkv/_owner.h: the lock-free request queue and the parkers of the
 * owner-thread engine (see the design note at the top of _owner.pxi).
 *
 * Everything here is plain C that runs without the GIL: atomics, a bounded
 * spin and a park on a PyThread lock (a semaphore on POSIX; parking is a futex
 * wait on Linux). Python objects are only carried as pointers; references are
 * taken and dropped by the Cython code, with the GIL.
 *
 * Return conventions: fk_push_call 0 = queued, -1 = queue closed; fk_take returns the
 * batch (FIFO, may be NULL) and sets *closed; fk_complete 0 = completed, 1 =
 * the caller abandoned the request (the owner must free it); fk_wait 0 = done,
 * 1 = the park was interrupted by a signal (check signals, then wait again or
 * abandon); fk_abandon 1 = abandoned (the owner frees it), 0 = completed after
 * all (the result is the caller's).
 */
#ifndef FASTKV_OWNER_H
#define FASTKV_OWNER_H

#include <Python.h>
#include <pythread.h>

#if defined(_MSC_VER)
#  define FK_INLINE __inline
#else
#  define FK_INLINE inline
#endif
#include <stdint.h>
#include <string.h>

#if defined(_WIN32)
#  include <windows.h>
#  define FK_YIELD() SwitchToThread()
#else
#  include <time.h>
#  include <sched.h>
#  define FK_YIELD() sched_yield()
#endif

/* The CPU the calling thread runs on, -1 if unknown. */
static FK_INLINE int fk_cpu(void) {
#if defined(__linux__) && defined(_GNU_SOURCE)
    return sched_getcpu();
#elif defined(_WIN32)
    return (int)GetCurrentProcessorNumber();
#else
    return -1;
#endif
}

/* ---- atomics ----------------------------------------------------------------
 * Typed helpers, sequentially consistent unless named _relaxed/_acquire:
 * GCC/Clang __atomic builtins, or MSVC Interlocked intrinsics (full barriers;
 * plain volatile accesses for the relaxed ones, atomic for aligned words on
 * x86/x64/ARM64). The MSVC branch is not exercised by the test suite. */

#if defined(_MSC_VER) && !defined(__clang__)
#  include <intrin.h>
static __forceinline uintptr_t fk_ptr_load(uintptr_t *p) {
    return (uintptr_t)InterlockedCompareExchangePointer((PVOID volatile *)p, NULL, NULL);
}
static __forceinline uintptr_t fk_ptr_load_relaxed(uintptr_t *p) {
    return *(volatile uintptr_t *)p;
}
static __forceinline int fk_ptr_cas(uintptr_t *p, uintptr_t *expected, uintptr_t desired) {
    PVOID old = InterlockedCompareExchangePointer((PVOID volatile *)p, (PVOID)desired,
                                                  (PVOID)*expected);
    if ((uintptr_t)old == *expected) return 1;
    *expected = (uintptr_t)old;
    return 0;
}
static __forceinline int fk_int_load(int *p) {
    return (int)InterlockedCompareExchange((volatile LONG *)p, 0, 0);
}
static __forceinline int fk_int_load_acquire(int *p) { return fk_int_load(p); }
static __forceinline int fk_int_load_relaxed(int *p) { return *(volatile int *)p; }
static __forceinline void fk_int_store(int *p, int v) {
    InterlockedExchange((volatile LONG *)p, (LONG)v);
}
static __forceinline void fk_int_store_relaxed(int *p, int v) { *(volatile int *)p = v; }
static __forceinline int fk_int_xchg(int *p, int v) {
    return (int)InterlockedExchange((volatile LONG *)p, (LONG)v);
}
static __forceinline int fk_int_cas(int *p, int *expected, int desired) {
    LONG old = InterlockedCompareExchange((volatile LONG *)p, (LONG)desired, (LONG)*expected);
    if ((int)old == *expected) return 1;
    *expected = (int)old;
    return 0;
}
static __forceinline int64_t fk_i64_load_relaxed(int64_t *p) { return *(volatile int64_t *)p; }
static __forceinline void fk_i64_store_relaxed(int64_t *p, int64_t v) { *(volatile int64_t *)p = v; }
#  define FK_RELAX() YieldProcessor()
#elif defined(__GNUC__) || defined(__clang__)
static FK_INLINE uintptr_t fk_ptr_load(uintptr_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static FK_INLINE uintptr_t fk_ptr_load_relaxed(uintptr_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static FK_INLINE int fk_ptr_cas(uintptr_t *p, uintptr_t *expected, uintptr_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static FK_INLINE int fk_int_load(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static FK_INLINE int fk_int_load_acquire(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static FK_INLINE int fk_int_load_relaxed(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static FK_INLINE void fk_int_store(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static FK_INLINE void fk_int_store_relaxed(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static FK_INLINE int fk_int_xchg(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
static FK_INLINE int fk_int_cas(int *p, int *expected, int desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static FK_INLINE int64_t fk_i64_load_relaxed(int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static FK_INLINE void fk_i64_store_relaxed(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
#  if defined(__x86_64__) || defined(__i386__)
#    define FK_RELAX()          __builtin_ia32_pause()
#  elif defined(__aarch64__) || defined(__arm__)
#    define FK_RELAX()          __asm__ __volatile__("yield" ::: "memory")
#  else
#    define FK_RELAX()          __asm__ __volatile__("" ::: "memory")
#  endif
#else
#  error "fastkv's owner engine needs GCC/Clang atomic builtins or MSVC intrinsics"
#endif

#if defined(__GNUC__) || defined(__clang__)
#  define fk_prefetch_w(p) __builtin_prefetch((const void *)(p), 1, 3)
#else
#  define fk_prefetch_w(p) ((void)0)
#endif

/* ---- clock ---------------------------------------------------------------- */

static FK_INLINE int64_t fk_now_ns(void) {
#if defined(_WIN32)
    static LARGE_INTEGER freq;
    LARGE_INTEGER c;
    if (freq.QuadPart == 0) QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&c);
    return (int64_t)((double)c.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* ---- spin budgets (nanoseconds), adapted per queue -------------------------
 * A waiter spins at most `budget` ns before it parks. The budget follows what
 * spinning would have needed: after a park, the side that woke us stamped
 * when the event happened (done_ns, wake_ns), d ns after the wait began:
 * budget = 2d if d < MAX/2 (a spin that long would have caught it), else it
 * halves -- the wake-up latency itself is not counted, or a slow wake-up (an
 * IPI) would keep us parking; after a spin that caught the event at e ns, the
 * budget moves up towards 2e. It never exceeds
 * FK_SPIN_MAX_NS, so an idle table costs one bounded spin and then sleeps.
 *
 * A spin is a pause loop for its first FK_SPIN_PURE_NS, then a yield loop: when
 * the thread we wait for shares our CPU (the scheduler put them together, or
 * the machine is busy), a pause loop would only delay it until we park, while
 * sched_yield() lets it run at once. When we know the other thread last ran
 * on our CPU (each side publishes its CPU: callers when they push, the owner
 * when it goes back to waiting) the spin starts in the yield phase: pausing
 * there would only keep the other thread off the CPU.
 *
 * The clock is read only every FK_SPIN_CHECK pauses or every 4th yield, and
 * the spin starts counting at the first reading (*t0 == 0 until then): a
 * wait that one yield or a few pauses satisfy reads no clock at all.
 *
 * fk_spin_step does one step: 1 = the budget is spent, park now; *t gets the
 * clock when it was read. Start with *i = 0, or FK_SPIN_YIELDING. */

#define FK_SPIN_YIELDING 0x80000000u

static FK_INLINE unsigned fk_spin_start(int other_cpu) {
    int me = fk_cpu();
    return (me >= 0 && me == other_cpu) ? FK_SPIN_YIELDING : 0;
}

#define FK_SPIN_MIN_NS   1000
#define FK_SPIN_INIT_NS  20000
#define FK_SPIN_MAX_NS   50000
#define FK_SPIN_CHECK    16      /* spin iterations between clock reads */
#define FK_SPIN_PURE_NS  2000    /* then yield the CPU between checks */

static FK_INLINE int fk_spin_step(unsigned *i, int64_t *t0, int64_t budget, int64_t *t) {
    unsigned n = ++*i;
    if ((n & FK_SPIN_YIELDING) == 0) {
        FK_RELAX();                            /* pause phase */
        if (n % FK_SPIN_CHECK) return 0;
    } else {
        FK_YIELD();                            /* yield phase */
        if (n & 3) return 0;
    }
    *t = fk_now_ns();
    if (*t0 == 0) {
        *t0 = *t;
        return 0;
    }
    if (*t - *t0 > budget) return 1;
    if (*t - *t0 > FK_SPIN_PURE_NS) *i |= FK_SPIN_YIELDING;
    return 0;
}

static FK_INLINE int64_t fk_budget_after_spin(int64_t budget, int64_t elapsed) {
    int64_t want = 2 * elapsed + FK_SPIN_MIN_NS;
    if (want > budget) budget = budget + (want - budget) / 2;
    if (budget > FK_SPIN_MAX_NS) budget = FK_SPIN_MAX_NS;
    return budget;
}

static FK_INLINE int64_t fk_budget_after_park(int64_t budget, int64_t waited) {
    if (waited < FK_SPIN_MAX_NS / 2) budget = 2 * waited + FK_SPIN_MIN_NS;
    else budget /= 2;
    if (budget < FK_SPIN_MIN_NS) budget = FK_SPIN_MIN_NS;
    if (budget > FK_SPIN_MAX_NS) budget = FK_SPIN_MAX_NS;
    return budget;
}

/* ---- requests ------------------------------------------------------------- */

/* request state (atomic) */
#define FK_PENDING   0   /* queued or being served */
#define FK_DONE      1   /* the owner stored the result; the caller may take it */
#define FK_PARKED    2   /* the caller sleeps on `lock`; the owner must release it */
#define FK_ABANDONED 3   /* the caller left (a signal); the owner frees the request */

typedef struct fk_req {
    struct fk_req *next;       /* queue link (then: batch link, done link, free link) */
    int op;                    /* what to do (FK_OP_* in _owner.pxi) */
    int cast;                  /* 1: nobody waits; the owner frees it when served */
    int failed;                /* result is an exception instance */
    int state;                 /* FK_PENDING/DONE/PARKED/ABANDONED, atomic */
    int64_t done_ns;           /* when the owner completed it, if the caller PARKED */
    Py_hash_t hash;            /* the key's hash, computed by the caller */
    PyObject *box;             /* owned: the state it runs against (an
                                  OwnerTable's storage, an Agent's box) */
    PyObject *fn;              /* owned references (or NULL) held until served */
    PyObject *a;
    PyObject *b;
    PyObject *result;          /* owned: the reply or the exception */
    PyThread_type_lock lock;   /* a caller parks here; acquired while idle;
                                  allocated for the first call, kept */
} fk_req;

/* ---- the queue -------------------------------------------------------------
 * `head` is a Treiber stack of pending requests (newest first), tagged: bit 0
 * set means closed (no push succeeds any more). The owner takes the whole
 * stack with one CAS and reverses it into arrival order. */

#define FK_CLOSED_BIT ((uintptr_t)1)

typedef struct fk_queue {
    uintptr_t head;            /* fk_req* | FK_CLOSED_BIT, atomic */
    int pending;               /* 1: casts wait in the engine's unpushed chain */
    int caller_cpu;            /* CPU of the last pusher onto an empty queue */
    int closing;               /* 1: close() asked; the owner sets the closed
                                  bit once it took every counted call, atomic */
    int64_t calls_counted;     /* calls that passed the open check (callers,
                                  with the GIL; plain stores the owner reads) */
    char pad1[64];
    int parked;                /* 1 while the owner sleeps on `wake`, atomic */
    int owner_cpu;             /* CPU the owner waits on, relaxed atomic */
    int64_t owner_budget;      /* owner's spin budget (ns), owner-only */
    int64_t caller_budget;     /* callers' spin budget (ns), relaxed atomic */
    PyThread_type_lock wake;   /* the owner parks here; acquired while idle */
    int64_t wake_ns;           /* when a pusher woke the parked owner */
    int64_t calls_taken;       /* calls the owner took off the queue (owner) */
    char pad2[64];
} fk_queue;

/* 0 ok, -1 no memory (nothing allocated). Needs the GIL (allocates a lock). */
static int fk_queue_init(fk_queue *q) {
    memset(q, 0, sizeof(*q));
    q->caller_cpu = q->owner_cpu = -1;
    q->owner_budget = FK_SPIN_INIT_NS;
    q->caller_budget = FK_SPIN_INIT_NS;
    q->wake = PyThread_allocate_lock();
    if (q->wake == NULL) return -1;
    PyThread_acquire_lock(q->wake, WAIT_LOCK);
    return 0;
}

static void fk_queue_free(fk_queue *q) {
    if (q->wake != NULL) {
        PyThread_release_lock(q->wake);
        PyThread_free_lock(q->wake);
        q->wake = NULL;
    }
}

/* Wake the owner if it is parked (or about to park). Called after a push or a
 * close made the queue non-empty/closed. Exactly one waker releases `wake`. */
static FK_INLINE void fk_wake_owner(fk_queue *q) {
    if (fk_int_load(&q->parked) && fk_int_xchg(&q->parked, 0) == 1) {
        q->wake_ns = fk_now_ns();          /* read by the owner after the lock */
        PyThread_release_lock(q->wake);
    }
}

/* Push a chain of requests linked newest first (first -> ... -> last) with
 * one CAS: 0 = queued, -1 = closed. No GIL needed. */
static FK_INLINE int fk_push_chain(fk_queue *q, fk_req *first, fk_req *last) {
    uintptr_t old = fk_ptr_load_relaxed(&q->head);
    do {
        if (old & FK_CLOSED_BIT) return -1;
        last->next = (fk_req *)old;
    } while (!fk_ptr_cas(&q->head, &old, (uintptr_t)first));
    if (old == 0) {                  /* empty -> non-empty: the pusher wakes */
        fk_int_store_relaxed(&q->caller_cpu, fk_cpu());
        fk_wake_owner(q);
    }
    return 0;
}

/* Test hook, FASTKV_DEBUG builds only (compiled out otherwise): sleep
 * between a caller's GIL release and its push, to make that window wide. */
#if defined(FASTKV_DEBUG) && !defined(_WIN32)
#  include <unistd.h>
static int fk_debug_push_delay_us = 0;
#  define FK_DEBUG_PUSH_DELAY() do { \
        int fk_us_ = fk_int_load_relaxed(&fk_debug_push_delay_us); \
        if (fk_us_ > 0) usleep((useconds_t)fk_us_); } while (0)
static int fk_debug_set_push_delay(int us) {
    fk_int_store(&fk_debug_push_delay_us, us);
    return 0;
}
#else
#  define FK_DEBUG_PUSH_DELAY() ((void)0)
static int fk_debug_set_push_delay(int us) { (void)us; return -1; }
#endif

/* A caller, with the GIL, after the engine's open check and before it lets
 * go of the GIL to push: count the call. close() (with the GIL) cannot come
 * between the check and the count, and the owner closes the queue only once
 * it has taken as many calls as were counted: a call that passed the check
 * is served, whenever its push lands. A plain store (the GIL serializes the
 * callers), in the line the push's CAS takes next anyway. */
static FK_INLINE void fk_count_call(fk_queue *q) {
    fk_i64_store_relaxed(&q->calls_counted, q->calls_counted + 1);
}

/* Push a counted call (no GIL needed). 0 = queued, -1 = closed (only once
 * the owner loop died: see fk_close_if_drained). */
static FK_INLINE int fk_push_call(fk_queue *q, fk_req *r) {
    FK_DEBUG_PUSH_DELAY();
    return fk_push_chain(q, r, r);
}

/* Calls counted so far (with the GIL, for info()). */
static FK_INLINE int64_t fk_calls_in(fk_queue *q) {
    return fk_i64_load_relaxed(&q->calls_counted);
}

/* The first cast of a new unpushed chain (with the GIL): tell the owner, and
 * wake it if it sleeps (the store is sequentially consistent: it pairs with
 * the owner's announce-then-recheck as a push does). */
static FK_INLINE void fk_pending_start(fk_queue *q) {
    fk_int_store(&q->pending, 1);
    fk_int_store_relaxed(&q->caller_cpu, fk_cpu());
    fk_wake_owner(q);
}

static FK_INLINE void fk_pending_clear(fk_queue *q) {
    fk_int_store_relaxed(&q->pending, 0);
}

/* close() asked and every counted call has been taken: time to set the
 * closed bit (owner). */
static FK_INLINE int fk_close_due(fk_queue *q) {
    return fk_int_load_acquire(&q->closing)     /* then the final count */
        && q->calls_taken == fk_i64_load_relaxed(&q->calls_counted);
}

static FK_INLINE int fk_has_work(fk_queue *q) {
    return fk_ptr_load_relaxed(&q->head) != 0 || fk_int_load_relaxed(&q->pending)
        || fk_close_due(q);
}

/* Close the queue: no push succeeds afterwards; the owner drains what is in it
 * and then sees the bit. Returns 1 if this call closed it, 0 if already closed. */
static FK_INLINE int fk_close(fk_queue *q) {
    uintptr_t old = fk_ptr_load(&q->head);
    do {
        if (old & FK_CLOSED_BIT) return 0;
    } while (!fk_ptr_cas(&q->head, &old, old | FK_CLOSED_BIT));
    fk_wake_owner(q);
    return 1;
}

/* close(), with the GIL, after the engine stopped counting calls (its status
 * is closed): ask the owner to close the queue once it has taken every call
 * counted before, and wake it. A call that passed the open check is served
 * even if its push lands after this. (The sequentially consistent store
 * pairs with the owner's announce-then-recheck, as a push does.) */
static FK_INLINE void fk_begin_close(fk_queue *q) {
    fk_int_store(&q->closing, 1);
    fk_wake_owner(q);
}

/* The owner: set the closed bit if close() asked and no counted call is still
 * on its way. */
static FK_INLINE void fk_close_if_due(fk_queue *q) {
    if (fk_close_due(q)) fk_close(q);
}

/* Take every queued request and append them, in arrival order, to the list
 * *head..*tail, prefetching each one's arguments (the pusher's CPU wrote
 * them); *closed = 1 once the queue is closed, after which nothing more will
 * ever be queued. Returns 1 if one of them is a call (somebody waits). */
static int fk_grab_into(fk_queue *q, fk_req **head, fk_req **tail, int *closed) {
    uintptr_t old = fk_ptr_load(&q->head);
    fk_req *r, *fifo = NULL, *last = NULL, *nxt;
    int has_call = 0;
    while (!fk_ptr_cas(&q->head, &old, old & FK_CLOSED_BIT)) {}
    *closed = (old & FK_CLOSED_BIT) != 0;
    for (r = (fk_req *)(old & ~FK_CLOSED_BIT); r != NULL; r = nxt) {
        nxt = r->next;
        fk_prefetch_w(r->a);
        fk_prefetch_w(r->b);
        if (!r->cast) {
            has_call = 1;
            q->calls_taken++;          /* owner only */
        }
        if (last == NULL) last = r;
        r->next = fifo;
        fifo = r;
    }
    if (fifo != NULL) {
        if (*tail != NULL) (*tail)->next = fifo; else *head = fifo;
        *tail = last;
    }
    return has_call;
}

/* The owner waits (without the GIL) until requests are queued, casts are
 * pending in the engine's chain, or the queue is closed: spin up to the
 * adaptive budget, then park on `wake`. */
static void fk_wait_requests(fk_queue *q) {
    int64_t t0 = 0, t = 0, budget = q->owner_budget;
    unsigned i;
    int cpu;
    if (fk_has_work(q)) return;
    cpu = fk_cpu();
    if (cpu != fk_int_load_relaxed(&q->owner_cpu))      /* a shared line: */
        fk_int_store_relaxed(&q->owner_cpu, cpu);       /* write only changes */
    i = fk_spin_start(fk_int_load_relaxed(&q->caller_cpu));
    for (;;) {
        if (fk_has_work(q)) {
            q->owner_budget = fk_budget_after_spin(budget, t - t0);
            return;
        }
        if (fk_spin_step(&i, &t0, budget, &t)) break;
    }
    /* park: announce, re-check, sleep */
    fk_int_store(&q->parked, 1);
    if (fk_ptr_load(&q->head) != 0 || fk_int_load(&q->pending)
            || (fk_int_load(&q->closing)
                && q->calls_taken == fk_i64_load_relaxed(&q->calls_counted))) {
        if (fk_int_xchg(&q->parked, 0) == 1) {       /* cancelled our own park */
            q->owner_budget = fk_budget_after_spin(budget, t - t0);
            return;
        }
        /* a pusher is waking us: consume its release */
    }
    PyThread_acquire_lock(q->wake, WAIT_LOCK);
    q->owner_budget = fk_budget_after_park(budget, q->wake_ns - t0);
}

/* Wait for requests, then take them all (arrival order). */
static fk_req *fk_take(fk_queue *q, int *closed) {
    fk_req *head = NULL, *tail = NULL;
    fk_wait_requests(q);
    fk_grab_into(q, &head, &tail, closed);
    return head;
}

#define FK_GATHER_QUIET_NS 20000    /* casts only: gather while they keep coming */
#define FK_GATHER_MAX_NS 2000000    /* and no longer than this */
#define FK_GATHER_POLL 64           /* pauses between two looks at the queue */

/* The owner loop's wait for a batch (without the GIL), into *head..*tail
 * (maybe empty: casts may be pending in the engine's unpushed chain, which the
 * owner takes with the GIL). Once requests are queued (or casts pending), if
 * they are all casts the owner keeps gathering instead of asking
 * for the GIL at once: casts are pushed by a thread that holds the GIL, so
 * asking now would only put the owner to sleep on the GIL's condition
 * variable, to be woken (a futex wake-up; an inter-processor interrupt when
 * the threads run on two CPUs) when the caster lets go. Meanwhile it pulls
 * the requests and their arguments into its own cache. A call (a read,
 * sync()) ends the gathering at once: its caller released the GIL before
 * pushing it, so the GIL is free now. So do FK_GATHER_QUIET_NS without a new
 * request (the caster stopped, and may have let go of the GIL some other way),
 * FK_GATHER_MAX_NS in all, and the close of the queue. */
static void fk_take_batch(fk_queue *q, fk_req **head, fk_req **tail, int *closed) {
    int64_t t0, last, now;
    int k, same;
    *head = *tail = NULL;
    fk_wait_requests(q);
    fk_close_if_due(q);
    if (fk_grab_into(q, head, tail, closed) || *closed) return;
    same = fk_cpu() == fk_int_load_relaxed(&q->caller_cpu);
    t0 = last = fk_now_ns();
    for (;;) {
        if (same) FK_YIELD();                /* let the caster run */
        else for (k = 0; k < FK_GATHER_POLL; k++) FK_RELAX();
        now = fk_now_ns();
        if (fk_ptr_load_relaxed(&q->head) != 0) {
            if (fk_grab_into(q, head, tail, closed) || *closed) break;
            last = now;
        }
        if (now - last > FK_GATHER_QUIET_NS || now - t0 > FK_GATHER_MAX_NS) break;
    }
}

/* The owner hands the result to the caller (after it stored r->result and let
 * go of the GIL). 0 = completed (never touch r again), 1 = abandoned by the
 * caller: the owner frees it (with the GIL). */
static FK_INLINE int fk_complete(fk_req *r) {
    int old = fk_int_xchg(&r->state, FK_DONE);
    if (old == FK_PARKED) {
        r->done_ns = fk_now_ns();          /* read by the caller after the lock */
        PyThread_release_lock(r->lock);
    }
    return old == FK_ABANDONED;
}

/* The caller waits (without the GIL) for its request: spin up to the adaptive
 * budget, then park on r->lock. 0 = done; 1 = a signal interrupted the park
 * (the state is still FK_PARKED: call fk_wait_again or fk_abandon). */
static int fk_wait(fk_queue *q, fk_req *r) {
    int64_t t0 = 0, t = 0, nb, budget = fk_i64_load_relaxed(&q->caller_budget);
    unsigned i;
    int expect;
    if (fk_int_load_acquire(&r->state) == FK_DONE) return 0;
    i = fk_spin_start(fk_int_load_relaxed(&q->owner_cpu));
    for (;;) {
        if (fk_int_load_acquire(&r->state) == FK_DONE) {
            nb = fk_budget_after_spin(budget, t - t0);
            if (nb != budget)                  /* a shared line: write only changes */
                fk_i64_store_relaxed(&q->caller_budget, nb);
            return 0;
        }
        if (fk_spin_step(&i, &t0, budget, &t)) break;
    }
    expect = FK_PENDING;
    if (!fk_int_cas(&r->state, &expect, FK_PARKED)) return 0;   /* completed meanwhile */
    if (PyThread_acquire_lock_timed(r->lock, -1, 1) == PY_LOCK_INTR) return 1;
    fk_i64_store_relaxed(&q->caller_budget, fk_budget_after_park(budget, r->done_ns - t0));
    return 0;
}

/* Park again after an interrupted park (state FK_PARKED). Same returns. */
static int fk_wait_again(fk_req *r) {
    if (PyThread_acquire_lock_timed(r->lock, -1, 1) == PY_LOCK_INTR) return 1;
    return 0;
}

/* The caller gives up on a parked request (a signal handler raised). 1 = the
 * owner now owns r and frees it; 0 = the owner completed it first (the lock
 * release was consumed here; the result is the caller's to drop). */
static int fk_abandon(fk_req *r) {
    int expect = FK_PARKED;
    if (fk_int_cas(&r->state, &expect, FK_ABANDONED)) return 1;
    PyThread_acquire_lock(r->lock, WAIT_LOCK);   /* the owner released it, or will */
    return 0;
}

/* ---- OwnerTable.get as a hand-written METH_FASTCALL|METH_KEYWORDS method ----
 * (Cython's generic argument parsing costs a tenth of a protected read). As
 * for dict.get and FrozenTable.get, inspect shows self positional-only. */

static PyMethodDef fk_owner_get_def = {
    "get", NULL, METH_FASTCALL | METH_KEYWORDS,
    "get($self, key, default=None)\n--\n\n"
    "The value for ``key``, else ``default``. A call; a direct O(1) read\n"
    "under ``access=\"protected\"``."};

#endif /* FASTKV_OWNER_H */
