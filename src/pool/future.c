/*
 * Futures: a job that stores fn's result, wakes waiters, then runs the
 * completion callback. Two references (worker + user) decide who frees; the
 * pool keeps every live future on a list so destroy can free those the user
 * never ended.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "pool_internal.h"
#include "poolsrv/future.h"

struct ps_future {
    ps__pool_link link;         /* first: a link pointer is a future pointer */
    ps_pool *pool;
    ps_async_fn fn;
    void *arg;
    ps_future_cb cb;
    void *state;

    pthread_mutex_t mu;
    pthread_cond_t cv;          /* CLOCK_MONOTONIC, broadcast on completion */
    void *result;               /* written once, before `done` is set */
    atomic_bool done;
    atomic_uint refs;           /* worker's + user's */
};

/* Timed waits use the monotonic clock so a wall-clock jump neither cuts a
 * wait short nor stretches it. */
static pthread_condattr_t g_cvattr;
static pthread_once_t g_cvattr_once = PTHREAD_ONCE_INIT;

static void cvattr_init(void)
{
    if (pthread_condattr_init(&g_cvattr) != 0 ||
        pthread_condattr_setclock(&g_cvattr, CLOCK_MONOTONIC) != 0)
        abort();
}

static void future_free(ps_future *f)
{
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* Called by ps_pool_destroy after its workers are joined: only the user's
 * reference is left and the pool is tearing down its list itself. */
static void future_reap(ps__pool_link *link)
{
    future_free((ps_future *)link);
}

static void future_release(ps_future *f)
{
    if (atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) == 1) {
        ps__pool_unlink(f->pool, &f->link);
        future_free(f);
    }
}

static void future_run(void *arg)
{
    ps_future *f = arg;
    void *r = f->fn(f->arg);

    ps__lock(&f->mu);
    f->result = r;
    /* Counted before `done` is published, so whoever sees the future
     * complete also sees it counted. */
    ps__pool_future_done(f->pool);
    atomic_store_explicit(&f->done, true, memory_order_release);
    pthread_cond_broadcast(&f->cv);
    ps__unlock(&f->mu);

    /* Our reference keeps f alive even if the callback ends it. */
    if (f->cb != NULL)
        f->cb(f, f->state);
    future_release(f);
}

static int begin(ps_future **out, ps_pool *pool, ps_async_fn fn, void *arg,
                 ps_future_cb cb, void *state, bool block)
{
    if (out == NULL)
        return -EINVAL;
    *out = NULL;
    if (pool == NULL || fn == NULL)
        return -EINVAL;

    ps_future *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -ENOMEM;
    pthread_once(&g_cvattr_once, cvattr_init);
    if (pthread_mutex_init(&f->mu, NULL) != 0 ||
        pthread_cond_init(&f->cv, &g_cvattr) != 0)
        abort();
    f->pool = pool;
    f->fn = fn;
    f->arg = arg;
    f->cb = cb;
    f->state = state;
    f->link.reap = future_reap;
    atomic_init(&f->done, false);
    atomic_init(&f->refs, 2);

    /* Publish before enqueueing: the pool lock orders this store before the
     * worker runs, so the callback may read the handle through `out`. */
    *out = f;
    int rc = ps__pool_enqueue(pool, future_run, f, block, &f->link);
    if (rc != 0) {
        *out = NULL;
        future_free(f);     /* never queued, never linked */
    }
    return rc;
}

int ps_future_begin(ps_future **out, ps_pool *pool, ps_async_fn fn, void *arg,
                    ps_future_cb cb, void *state)
{
    return begin(out, pool, fn, arg, cb, state, true);
}

int ps_future_try_begin(ps_future **out, ps_pool *pool, ps_async_fn fn,
                        void *arg, ps_future_cb cb, void *state)
{
    return begin(out, pool, fn, arg, cb, state, false);
}

bool ps_future_is_completed(const ps_future *f)
{
    return f != NULL && atomic_load_explicit(&f->done, memory_order_acquire);
}

void *ps_future_state(const ps_future *f)
{
    return f != NULL ? f->state : NULL;
}

int ps_future_wait(ps_future *f, long timeout_ms)
{
    if (f == NULL)
        return -EINVAL;
    if (atomic_load_explicit(&f->done, memory_order_acquire))
        return 0;
    if (timeout_ms == 0)
        return -ETIMEDOUT;

    struct timespec dl;
    if (timeout_ms > 0) {
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }

    int rc = 0;
    ps__lock(&f->mu);
    while (!atomic_load_explicit(&f->done, memory_order_relaxed)) {
        if (timeout_ms < 0) {
            ps__wait(&f->cv, &f->mu);
            continue;
        }
        int w = pthread_cond_timedwait(&f->cv, &f->mu, &dl);
        if (w == ETIMEDOUT) {
            /* Completion may have raced the timeout: report what is true. */
            rc = atomic_load_explicit(&f->done, memory_order_relaxed)
                     ? 0 : -ETIMEDOUT;
            break;
        }
        if (w != 0)
            abort();
    }
    ps__unlock(&f->mu);
    return rc;
}

int ps_future_end(ps_future **fp, void **result)
{
    if (fp == NULL || *fp == NULL)
        return -EINVAL;
    ps_future *f = *fp;
    *fp = NULL;

    ps_future_wait(f, -1);
    if (result != NULL)
        *result = f->result;
    future_release(f);
    return 0;
}
