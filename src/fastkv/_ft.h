/* fastkv/_ft.h: what the free-threaded build (Py_GIL_DISABLED) needs in place
 * of the GIL: a small mutex, and read sections with deferred reclamation. On a
 * GIL build every macro here is empty (zero instructions): the GIL already
 * serializes what these protect, and that build's figures stay as they were.
 *
 * Read sections (FrozenTable's snapshot pointer)
 * ----------------------------------------------
 * A reader that looks at a published snapshot without taking a reference to it
 * (the str/int fast path, which must not write the snapshot's refcount: that
 * would be a shared cache line written by every reader) brackets the look-up
 * with fk_rd_enter() / fk_rd_exit(). A section never runs Python code, never
 * blocks and never nests. Each thread has its own slot (a counter on its own
 * cache line, found through one thread-local pointer): entering makes the
 * counter odd and issues a full fence, leaving makes it even again (a release
 * store). No read-modify-write, no shared line written: readers do not slow
 * each other down.
 *
 * A writer that unpublishes a snapshot (swaps the pointer) calls
 * fk_rd_synchronize() before it drops its reference: a full fence, then for
 * every thread slot whose counter is odd, a wait until it changes. A reader
 * that entered before the swap may still see the old snapshot; it has left
 * when its counter moves. A reader that enters after the fence sees the new
 * pointer (store-fence-load on both sides: at least one of the two sees the
 * other's store). So the old snapshot (and the values only it holds) is freed
 * once no reader can hold a pointer into it: reclamation is deferred by the
 * length of the read sections in flight, nanoseconds, and then happens at
 * once -- the same moment a GIL build frees it. Sections are short and cannot
 * wait for the writer, so the wait cannot deadlock; it yields the CPU after a
 * few spins (a reader may have been preempted inside its section).
 *
 * Slots are allocated on a thread's first read, linked into one global list
 * (a writer walks it without a lock: slots are never freed, only marked free
 * by the thread-exit destructor and reused by the next thread). In a fork
 * child every slot but the forking thread's is reset (their threads are gone).
 */
#ifndef FASTKV_FT_H
#define FASTKV_FT_H

#include <Python.h>

#ifdef Py_GIL_DISABLED

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#  define FK_FT_PAUSE() __builtin_ia32_pause()
#else
#  define FK_FT_PAUSE() __asm__ __volatile__("" ::: "memory")
#endif

/* ---- a mutex where the GIL used to serialize: PyMutex (parks detached) ---- */
typedef PyMutex fk_mutex;
#define FK_MUTEX_LOCK(m)   PyMutex_Lock(m)
#define FK_MUTEX_UNLOCK(m) PyMutex_Unlock(m)
#define FASTKV_FREE_THREADED 1

/* ---- read sections -------------------------------------------------------- */
typedef struct fk_rd {
    uint64_t ctr;              /* odd while the thread is inside a section */
    struct fk_rd *next;        /* the global list (never unlinked) */
    int in_use;                /* a live thread owns this slot */
    char pad[128 - sizeof(uint64_t) - sizeof(void *) - sizeof(int)];
} fk_rd;

static fk_rd *fk_rd_head = NULL;
static PyMutex fk_rd_mutex = {0};          /* registration only */
static pthread_key_t fk_rd_key;
static int fk_rd_key_ok = 0;
static __thread fk_rd *fk_rd_me __attribute__((tls_model("initial-exec"))) = NULL;

static void fk_rd_thread_exit(void *p) {
    fk_rd *s = (fk_rd *)p;
    __atomic_store_n(&s->ctr, (s->ctr + 1) & ~(uint64_t)1, __ATOMIC_RELEASE);
    __atomic_store_n(&s->in_use, 0, __ATOMIC_RELEASE);
}

static void fk_rd_after_fork_child(void) {
    fk_rd *s;
    for (s = fk_rd_head; s != NULL; s = s->next) {
        if (s != fk_rd_me) {
            s->ctr = 0;
            s->in_use = 0;
        }
    }
}

/* Once, at module import: 0, or -1 with an exception set. */
static int fk_rd_init(void) {
    if (fk_rd_key_ok)
        return 0;
    if (pthread_key_create(&fk_rd_key, fk_rd_thread_exit) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "fastkv: pthread_key_create failed");
        return -1;
    }
    pthread_atfork(NULL, NULL, fk_rd_after_fork_child);
    fk_rd_key_ok = 1;
    return 0;
}

/* The calling thread's slot, allocated on first use; aborts only if no memory
   is left for 128 bytes (a read section cannot fail). */
static fk_rd *fk_rd_register(void) {
    fk_rd *s;
    PyMutex_Lock(&fk_rd_mutex);
    for (s = fk_rd_head; s != NULL; s = s->next) {
        if (!__atomic_load_n(&s->in_use, __ATOMIC_ACQUIRE))
            break;
    }
    if (s == NULL) {
        void *mem = NULL;
        if (posix_memalign(&mem, 128, sizeof(fk_rd)) != 0 || mem == NULL)
            Py_FatalError("fastkv: no memory for a read-section slot");
        s = (fk_rd *)mem;
        s->ctr = 0;
        s->next = fk_rd_head;
        s->in_use = 1;
        __atomic_store_n(&fk_rd_head, s, __ATOMIC_RELEASE);
    } else {
        __atomic_store_n(&s->in_use, 1, __ATOMIC_RELEASE);
    }
    PyMutex_Unlock(&fk_rd_mutex);
    if (fk_rd_key_ok)
        pthread_setspecific(fk_rd_key, s);
    fk_rd_me = s;
    return s;
}

static inline void fk_rd_enter(void) {
    fk_rd *s = fk_rd_me;
    if (s == NULL)
        s = fk_rd_register();
    __atomic_store_n(&s->ctr, s->ctr + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

static inline void fk_rd_exit(void) {
    fk_rd *s = fk_rd_me;
    __atomic_store_n(&s->ctr, s->ctr + 1, __ATOMIC_RELEASE);
}

/* Wait until every read section that may have seen what was unpublished
   before this call has ended. Never called inside a section. */
static void fk_rd_synchronize(void) {
    fk_rd *s;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (s = __atomic_load_n(&fk_rd_head, __ATOMIC_ACQUIRE); s != NULL; s = s->next) {
        uint64_t c = __atomic_load_n(&s->ctr, __ATOMIC_ACQUIRE);
        int spins = 0;
        if (!(c & 1) || s == fk_rd_me)
            continue;
        while (__atomic_load_n(&s->ctr, __ATOMIC_ACQUIRE) == c) {
            if (++spins < 64)
                FK_FT_PAUSE();
            else
                sched_yield();
        }
    }
}

/* A pointer published in *slot, loaded inside a section (acquire). */
#define FK_LOAD_PTR(slot)        __atomic_load_n((slot), __ATOMIC_ACQUIRE)
#define FK_LOAD_RELAXED(p)       __atomic_load_n((p), __ATOMIC_RELAXED)
/* A word another thread reads without a lock (a counter, a timestamp): its
   writer stores it relaxed, an acquire load pairs with a release store. */
#define FK_STORE_RELAXED(p, v)   __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define FK_LOAD_ACQUIRE(p)       __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define FK_STORE_RELEASE(p, v)   __atomic_store_n((p), (v), __ATOMIC_RELEASE)
/* A double another thread reads without a lock (the near cache's lease). */
static inline double fk_double_load_relaxed(double *p) {
    double v;
    __atomic_load(p, &v, __ATOMIC_RELAXED);
    return v;
}
static inline void fk_double_store_relaxed(double *p, double v) {
    __atomic_store(p, &v, __ATOMIC_RELAXED);
}
/* Publish p in *slot (release): the caller gives its reference to the slot and
   gets the slot's old one back, to drop after fk_rd_synchronize(). */
#define FK_SWAP_PTR(slot, p)     __atomic_exchange_n((slot), (p), __ATOMIC_ACQ_REL)

#else  /* GIL build: nothing here costs anything */

typedef char fk_mutex;
#define FK_MUTEX_LOCK(m)   ((void)(m))
#define FK_MUTEX_UNLOCK(m) ((void)(m))
#define FASTKV_FREE_THREADED 0
static inline int fk_rd_init(void) { return 0; }
#define fk_rd_enter()        ((void)0)
#define fk_rd_exit()         ((void)0)
#define fk_rd_synchronize()  ((void)0)
#define FK_LOAD_PTR(slot)    (*(slot))
#define FK_LOAD_RELAXED(p)   (*(p))
#define FK_STORE_RELAXED(p, v) ((void)(*(p) = (v)))
#define FK_LOAD_ACQUIRE(p)   (*(p))
#define FK_STORE_RELEASE(p, v) ((void)(*(p) = (v)))
#define fk_double_load_relaxed(p)     (*(p))
#define fk_double_store_relaxed(p, v) ((void)(*(p) = (v)))
#define FK_SWAP_PTR(slot, p) \
    __extension__ ({ __typeof__(*(slot)) fk_old_ = *(slot); *(slot) = (p); fk_old_; })

#endif

#endif /* FASTKV_FT_H */
