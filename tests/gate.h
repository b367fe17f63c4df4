#ifndef POOLSRV_TESTS_GATE_H
#define POOLSRV_TESTS_GATE_H

/* For the pool and future tests: a gate that test jobs wait behind, the
 * counters a test waits on (one mutex and one CLOCK_MONOTONIC condition,
 * broadcast on every change), and the helper threads a test starts. Every
 * wait is bounded, so a broken pool fails a test instead of hanging. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <time.h>

typedef struct t_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    unsigned entered;   /* jobs that reached the gate */
    unsigned done;      /* jobs (or callbacks) finished */
    atomic_uint errors; /* a wait on the workers' side timed out */
} t_gate;

void t_gate_init(t_gate *g);
void t_gate_fini(t_gate *g);

/* CLOCK_MONOTONIC now + ms, for pthread_cond_timedwait on g->cv. */
struct timespec t_deadline_in(long ms);

/* Waits up to ms for *field (a counter of g) >= want; true if reached. */
bool t_gate_wait(t_gate *g, const unsigned *field, unsigned want, long ms);

/* Opens the gate for every job behind it, now and later. */
void t_gate_open(t_gate *g);

/* With g->mu held: waits up to ms for the gate to open; counts an error in
 * g->errors when it does not. */
void t_gate_pass_locked(t_gate *g, long ms);

/* Helper threads a test starts and its teardown joins. */
typedef struct t_threads {
    pthread_t t[8];
    unsigned n;
} t_threads;

/* Starts fn(arg) on a new helper thread; false when all 8 are taken or the
 * thread could not be created. */
bool t_threads_spawn(t_threads *ts, void *(*fn)(void *), void *arg);

/* Joins every helper thread started so far. */
void t_threads_join(t_threads *ts);

/* A helper thread's body: ps_pool_destroy(pool), which may block. */
void *t_pool_destroyer(void *pool);

#endif
