/* benchmarks/handoff_floor.c: what a round trip between two threads costs
 * when they share one CPU, with no Python and no work at all -- the floor
 * under benchmarks/test_owner.py's "one-cpu" placement, where every hand-off
 * is a context switch (the scheduler has to run the other thread).
 *
 *     cc -O2 -pthread benchmarks/handoff_floor.c -o /tmp/handoff_floor
 *     /tmp/handoff_floor            # pins itself to the first CPU it may use
 *
 * Two threads bounce a flag; the waiting side calls sched_yield(), which is
 * the cheapest way to hand a shared CPU to the other thread (a futex
 * wait/wake pair costs more). The owner engine's round trip on one CPU is
 * this plus the Python call, the request and two GIL hand-overs. Linux only.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#define ROUND_TRIPS 200000

static atomic_int turn;   /* 1: the owner's turn, 0: the caller's */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *owner(void *arg) {
    (void)arg;
    for (int i = 0; i < ROUND_TRIPS; i++) {
        while (atomic_load(&turn) != 1) sched_yield();
        atomic_store(&turn, 0);
    }
    return NULL;
}

int main(void) {
    cpu_set_t allowed, one;
    pthread_t thread;
    double t0;
    int cpu = 0;
    sched_getaffinity(0, sizeof allowed, &allowed);
    while (!CPU_ISSET(cpu, &allowed)) cpu++;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);     /* inherited by the owner */
    pthread_create(&thread, NULL, owner, NULL);
    t0 = now();
    for (int i = 0; i < ROUND_TRIPS; i++) {
        atomic_store(&turn, 1);
        while (atomic_load(&turn) != 0) sched_yield();
    }
    printf("one CPU, sched_yield hand-off: %.0f ns per round trip\n",
           (now() - t0) / ROUND_TRIPS * 1e9);
    pthread_join(thread, NULL);
    return 0;
}
