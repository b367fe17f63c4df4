#ifndef POOLSRV_POOL_H
#define POOLSRV_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "poolsrv/error.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A fixed-size thread pool with a bounded ring of jobs. It knows nothing
 * about sockets: a job is a function and an argument.
 */

typedef struct ps_pool ps_pool;

typedef void (*ps_job_fn)(void *arg);

/* Optional idle hook: instead of sleeping while the queue is empty, up to
 * idle_max idle workers at a time call it to wait on a work source of the
 * owner's (an epoll set, say). It returns 1 with *fn / *arg set to a job for
 * the calling worker (counted like a submitted job), 0 when it has none
 * (the worker calls it again), or PS_POOL_IDLE_SLEEP: the worker sleeps
 * until a job is queued or ps_pool_wake_idle wakes it. It may submit other
 * jobs. It must return promptly once its owner signals it to, before
 * ps_pool_destroy; it is never called after destroy began. */
typedef int (*ps_pool_idle_fn)(void *ctx, ps_job_fn *fn, void **arg);

#define PS_POOL_IDLE_SLEEP (-1)

typedef struct ps_pool_opts {
    unsigned workers;        /* threads created up front; >= 1 */
    size_t queue_capacity;   /* jobs that may wait; >= 1 */
    ps_pool_idle_fn idle;    /* optional, see above */
    void *idle_ctx;
    unsigned idle_max;       /* workers in idle() at once; 0 means 1 */
} ps_pool_opts;

typedef struct ps_pool_stats {
    uint64_t submitted;        /* jobs accepted into the queue */
    uint64_t completed;        /* jobs whose function has returned */
    uint64_t rejected;         /* try_submit calls refused (queue full) */
    uint64_t futures_begun;    /* async invocations begun */
    uint64_t futures_completed;/* async invocations whose result is stored */
    uint64_t futures_live;     /* futures begun and not freed yet (ended, or
                                  freed by ps_pool_destroy) */
    unsigned max_threads;      /* the pool size */
    unsigned busy_threads;     /* workers running a job now */
    unsigned available_threads;/* max_threads - busy_threads */
    size_t queue_depth;        /* jobs waiting for a worker */
    size_t queue_capacity;
} ps_pool_stats;

/* Creates a pool and starts its workers. Returns 0 and sets *out, or
 * -EINVAL for bad options, -ENOMEM, or the pthread_create error. */
int ps_pool_create(ps_pool **out, const ps_pool_opts *opts);

/* Stops taking jobs, runs every job already queued, joins every worker and
 * frees the pool. A submit blocked on a full queue returns PS_ESHUTDOWN.
 * NULL is a no-op. Must not be called from a worker. */
void ps_pool_destroy(ps_pool *pool);

/* Queues fn(arg); blocks while the queue is full. Returns 0, or
 * PS_ESHUTDOWN once destroy has begun. */
int ps_pool_submit(ps_pool *pool, ps_job_fn fn, void *arg);

/* Queues fn(arg) without blocking. Returns 0, PS_EFULL when the queue is
 * full (counted in `rejected`), or PS_ESHUTDOWN. */
int ps_pool_try_submit(ps_pool *pool, ps_job_fn fn, void *arg);

/* Wakes up to n workers that sleep after their idle hook said
 * PS_POOL_IDLE_SLEEP, so that they call it again (one wake-up each, never
 * more than there are such sleepers). Returns how many it woke. Callable
 * from any thread, workers included. */
unsigned ps_pool_wake_idle(ps_pool *pool, unsigned n);

/* A consistent-enough snapshot of the counters (each read atomically). */
void ps_pool_get_stats(const ps_pool *pool, ps_pool_stats *st);

/* The pool size (.NET's GetMaxThreads). */
unsigned ps_pool_max_threads(const ps_pool *pool);

/* Workers not running a job now: max - busy (.NET's GetAvailableThreads). */
unsigned ps_pool_available_threads(const ps_pool *pool);

#ifdef __cplusplus
}
#endif

#endif
