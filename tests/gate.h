#ifndef POOLSRV_TESTS_GATE_H
#define POOLSRV_TESTS_GATE_H

/* A gate that test jobs wait behind, and the counters a test waits on: one
 * mutex and one CLOCK_MONOTONIC condition, broadcast on every change.
 * Every wait is bounded, so a broken pool fails a test instead of hanging. */

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

#endif
