/*
 * Fixed-size thread pool over a bounded ring of jobs (zstd pool.c shape):
 * one mutex guards the ring and the shutdown flag; `not_empty` wakes one
 * worker per queued job, `not_full` wakes one blocked submitter per freed
 * slot. Workers the idle hook sent to sleep wait on `idle_wake`, so that
 * ps_pool_wake_idle wakes exactly those it counts. Counters are atomics so
 * ps_pool_get_stats never takes the lock.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "pool_internal.h"
#include "poolsrv/pool.h"

typedef struct queued_job {
    ps_job_fn fn;
    void *arg;
} queued_job;

struct ps_pool {
    pthread_mutex_t lock;
    pthread_cond_t not_empty;   /* a job was queued, or shutdown */
    pthread_cond_t idle_wake;   /* ps_pool_wake_idle, a job for a sleeper, or shutdown */
    pthread_cond_t not_full;    /* a slot was freed, or shutdown */
    pthread_cond_t submit_left; /* a blocked submitter left (destroy waits) */

    /* Guarded by lock. */
    queued_job *ring;
    size_t capacity;
    size_t head;                /* next job to run */
    size_t count;               /* jobs in the ring */
    unsigned blocked_submitters;
    bool shutdown;
    unsigned idle_running;      /* workers inside idle() */
    unsigned job_waiters;       /* workers waiting on not_empty */
    unsigned idle_sleepers;     /* workers asleep on idle_wake after PS_POOL_IDLE_SLEEP */
    unsigned idle_wakes;        /* of those, how many ps_pool_wake_idle woke */
    ps__pool_link futures;      /* live futures (circular, sentinel) */

    ps_pool_idle_fn idle;
    void *idle_ctx;
    unsigned idle_max;

    pthread_t *threads;
    unsigned nthreads;          /* workers started */
    unsigned max_threads;

    atomic_uint_fast64_t submitted, completed, rejected;
    atomic_uint_fast64_t futures_begun, futures_completed, futures_freed;
    atomic_uint busy;
    atomic_size_t depth;
};

static void *worker_main(void *opaque)
{
    ps_pool *pool = opaque;
    /* False once the idle hook said PS_POOL_IDLE_SLEEP: then only a job, a
     * wake-up or shutdown gets this worker going again. */
    bool may_idle = true;

    ps__lock(&pool->lock);
    for (;;) {
        while (pool->count == 0 && !pool->shutdown) {
            if (!may_idle) {
                /* Whatever woke it, a sleeper takes a pending wake-up with
                 * it: idle_wakes never exceeds idle_sleepers. */
                pool->idle_sleepers++;
                ps__wait(&pool->idle_wake, &pool->lock);
                pool->idle_sleepers--;
                if (pool->idle_wakes > 0) {
                    pool->idle_wakes--;
                    may_idle = true;
                }
                continue;
            }
            if (pool->idle == NULL || pool->idle_running == pool->idle_max) {
                pool->job_waiters++;
                ps__wait(&pool->not_empty, &pool->lock);
                pool->job_waiters--;
                continue;
            }
            /* Leader/followers: up to idle_max workers wait on the owner's
             * source while the others sleep. A job found there runs right
             * here, with no hand-off to another thread and no wake-up. */
            pool->idle_running++;
            ps__unlock(&pool->lock);
            ps_job_fn fn = NULL;
            void *arg = NULL;
            int got = pool->idle(pool->idle_ctx, &fn, &arg);
            ps__lock(&pool->lock);
            pool->idle_running--;
            if (got == PS_POOL_IDLE_SLEEP)
                may_idle = false;
            if (got <= 0 || fn == NULL)
                continue;
            atomic_fetch_add(&pool->submitted, 1);
            atomic_fetch_add(&pool->busy, 1);
            ps__unlock(&pool->lock);
            fn(arg);
            atomic_fetch_add(&pool->completed, 1);
            atomic_fetch_sub(&pool->busy, 1);
            ps__lock(&pool->lock);
        }
        /* Shutdown with an empty ring: everything queued has been run. */
        if (pool->count == 0)
            break;

        queued_job job = pool->ring[pool->head];
        pool->head = (pool->head + 1) % pool->capacity;
        pool->count--;
        atomic_fetch_sub(&pool->depth, 1);
        atomic_fetch_add(&pool->busy, 1);
        pthread_cond_signal(&pool->not_full);
        ps__unlock(&pool->lock);

        job.fn(job.arg);

        /* completed before busy drops, so submitted == completed + depth +
         * busy never undercounts a job that is finishing. */
        atomic_fetch_add(&pool->completed, 1);
        atomic_fetch_sub(&pool->busy, 1);
        /* A job may have been the reason the hook had nothing: look again. */
        may_idle = true;
        ps__lock(&pool->lock);
    }
    ps__unlock(&pool->lock);
    return NULL;
}

unsigned ps_pool_wake_idle(ps_pool *pool, unsigned n)
{
    if (pool == NULL || n == 0)
        return 0;
    ps__lock(&pool->lock);
    unsigned asleep = pool->idle_sleepers - pool->idle_wakes;
    if (n > asleep)
        n = asleep;
    pool->idle_wakes += n;
    for (unsigned i = 0; i < n; i++)
        pthread_cond_signal(&pool->idle_wake);
    ps__unlock(&pool->lock);
    return n;
}

/* Stops and joins the workers started so far. */
static void stop_workers(ps_pool *pool)
{
    ps__lock(&pool->lock);
    pool->shutdown = true;
    pthread_cond_broadcast(&pool->not_empty);
    pthread_cond_broadcast(&pool->idle_wake);
    pthread_cond_broadcast(&pool->not_full);
    /* A submitter woken above still has to reacquire and release the lock;
     * freeing the pool under it would be a use after free. */
    while (pool->blocked_submitters > 0)
        ps__wait(&pool->submit_left, &pool->lock);
    ps__unlock(&pool->lock);

    for (unsigned i = 0; i < pool->nthreads; i++)
        pthread_join(pool->threads[i], NULL);
    pool->nthreads = 0;
}

static void free_pool(ps_pool *pool)
{
    pthread_cond_destroy(&pool->submit_left);
    pthread_cond_destroy(&pool->not_full);
    pthread_cond_destroy(&pool->idle_wake);
    pthread_cond_destroy(&pool->not_empty);
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool->ring);
    free(pool);
}

int ps_pool_create(ps_pool **out, const ps_pool_opts *opts)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (opts == NULL || opts->workers == 0 || opts->queue_capacity == 0)
        return -EINVAL;

    ps_pool *pool = calloc(1, sizeof(*pool));
    if (pool == NULL)
        return -ENOMEM;
    pool->ring = calloc(opts->queue_capacity, sizeof(*pool->ring));
    pool->threads = calloc(opts->workers, sizeof(*pool->threads));
    if (pool->ring == NULL || pool->threads == NULL) {
        free(pool->ring);
        free(pool->threads);
        free(pool);
        return -ENOMEM;
    }
    pool->capacity = opts->queue_capacity;
    pool->max_threads = opts->workers;
    pool->idle = opts->idle;
    pool->idle_ctx = opts->idle_ctx;
    pool->idle_max = opts->idle_max ? opts->idle_max : 1;
    pool->futures.prev = pool->futures.next = &pool->futures;
    atomic_init(&pool->submitted, 0);
    atomic_init(&pool->completed, 0);
    atomic_init(&pool->rejected, 0);
    atomic_init(&pool->futures_begun, 0);
    atomic_init(&pool->futures_completed, 0);
    atomic_init(&pool->futures_freed, 0);
    atomic_init(&pool->busy, 0);
    atomic_init(&pool->depth, 0);

    /* Default attributes: init cannot fail on Linux except for ENOMEM. */
    if (pthread_mutex_init(&pool->lock, NULL) != 0 ||
        pthread_cond_init(&pool->not_empty, NULL) != 0 ||
        pthread_cond_init(&pool->idle_wake, NULL) != 0 ||
        pthread_cond_init(&pool->not_full, NULL) != 0 ||
        pthread_cond_init(&pool->submit_left, NULL) != 0)
        abort();

    for (unsigned i = 0; i < opts->workers; i++) {
        int rc = pthread_create(&pool->threads[i], NULL, worker_main, pool);
        if (rc != 0) {
            stop_workers(pool);
            free_pool(pool);
            return -rc;
        }
        pool->nthreads++;
    }
    *out = pool;
    return 0;
}

void ps_pool_destroy(ps_pool *pool)
{
    if (pool == NULL)
        return;
    stop_workers(pool);

    /* Every job has run and every worker is joined, so the futures left
     * hold only the user's reference: nobody else can touch them now. */
    ps__pool_link *l = pool->futures.next;
    while (l != &pool->futures) {
        ps__pool_link *next = l->next;
        l->reap(l);
        l = next;
    }
    free_pool(pool);
}

int ps__pool_enqueue(ps_pool *pool, ps_job_fn fn, void *arg, bool block,
                     ps__pool_link *link)
{
    if (pool == NULL || fn == NULL)
        return -EINVAL;

    ps__lock(&pool->lock);
    if (block && pool->count == pool->capacity && !pool->shutdown) {
        pool->blocked_submitters++;
        while (pool->count == pool->capacity && !pool->shutdown)
            ps__wait(&pool->not_full, &pool->lock);
        pool->blocked_submitters--;
        if (pool->shutdown && pool->blocked_submitters == 0)
            pthread_cond_signal(&pool->submit_left);
    }
    if (pool->shutdown) {
        ps__unlock(&pool->lock);
        return PS_ESHUTDOWN;
    }
    if (pool->count == pool->capacity) {
        ps__unlock(&pool->lock);
        atomic_fetch_add(&pool->rejected, 1);
        return PS_EFULL;
    }

    pool->ring[(pool->head + pool->count) % pool->capacity] =
        (queued_job){ .fn = fn, .arg = arg };
    pool->count++;
    atomic_fetch_add(&pool->submitted, 1);
    atomic_fetch_add(&pool->depth, 1);
    if (link != NULL) {
        link->next = pool->futures.next;
        link->prev = &pool->futures;
        pool->futures.next->prev = link;
        pool->futures.next = link;
        atomic_fetch_add(&pool->futures_begun, 1);
    }
    /* One worker for one job: one waiting for jobs, or else a sleeper
     * (which runs the job, then asks the idle hook again). */
    if (pool->job_waiters > 0 || pool->idle_sleepers == 0)
        pthread_cond_signal(&pool->not_empty);
    else
        pthread_cond_signal(&pool->idle_wake);
    ps__unlock(&pool->lock);
    return 0;
}

void ps__pool_unlink(ps_pool *pool, ps__pool_link *link)
{
    ps__lock(&pool->lock);
    link->prev->next = link->next;
    link->next->prev = link->prev;
    ps__unlock(&pool->lock);
    atomic_fetch_add(&pool->futures_freed, 1);
}

void ps__pool_future_done(ps_pool *pool)
{
    atomic_fetch_add(&pool->futures_completed, 1);
}

int ps_pool_submit(ps_pool *pool, ps_job_fn fn, void *arg)
{
    return ps__pool_enqueue(pool, fn, arg, true, NULL);
}

int ps_pool_try_submit(ps_pool *pool, ps_job_fn fn, void *arg)
{
    return ps__pool_enqueue(pool, fn, arg, false, NULL);
}

void ps_pool_get_stats(const ps_pool *pool, ps_pool_stats *st)
{
    /* Atomics only: callable from an admin thread while workers run, and
     * never blocks behind a submitter holding the lock. Each "done" counter
     * is read before its "started" counter: both only grow, and a job is
     * counted started before done, so the snapshot never shows more
     * completed than submitted. */
    unsigned busy = atomic_load(&pool->busy);

    st->completed = atomic_load(&pool->completed);
    st->submitted = atomic_load(&pool->submitted);
    st->rejected = atomic_load(&pool->rejected);
    uint64_t freed = atomic_load(&pool->futures_freed);
    st->futures_completed = atomic_load(&pool->futures_completed);
    st->futures_begun = atomic_load(&pool->futures_begun);
    st->futures_live = st->futures_begun - freed; /* freed is read first: never negative */
    st->max_threads = pool->max_threads;
    st->busy_threads = busy;
    st->available_threads = pool->max_threads - busy;
    st->queue_depth = atomic_load(&pool->depth);
    st->queue_capacity = pool->capacity;
}

unsigned ps_pool_max_threads(const ps_pool *pool)
{
    return pool->max_threads;
}

unsigned ps_pool_available_threads(const ps_pool *pool)
{
    return pool->max_threads - atomic_load(&pool->busy);
}
