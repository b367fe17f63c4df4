/*
 * .NET's async delegate pattern, in C on a poolsrv pool.
 *
 * 1. BeginInvoke a LongOperation, poll IsCompleted while doing other work
 *    (printing dots), then EndInvoke for the result.
 * 2. BeginInvoke with an AsyncCallback and AsyncState: the callback reads
 *    its state and calls EndInvoke itself.
 *
 * Exits 0 only when both results are right (ctest runs it as a check).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, clock_gettime */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "poolsrv/future.h"
#include "poolsrv/pool.h"

typedef struct long_op_args {
    uint64_t n;                 /* sum the squares 1..n */
    unsigned steps;             /* split into this many slow steps */
    long step_ms;
} long_op_args;

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* The slow computation: a sum of squares, paced to look "long". The result
 * fits in a pointer on 64-bit targets for the n used here. */
static void *long_operation(void *arg)
{
    const long_op_args *a = arg;
    uint64_t sum = 0;
    for (unsigned s = 0; s < a->steps; s++) {
        uint64_t lo = a->n * s / a->steps + 1, hi = a->n * (s + 1) / a->steps;
        for (uint64_t i = lo; i <= hi; i++)
            sum += i * i;
        sleep_ms(a->step_ms);
    }
    return (void *)(uintptr_t)sum;
}

static uint64_t expected_sum(uint64_t n)
{
    return n * (n + 1) * (2 * n + 1) / 6;
}

/* AsyncState for the callback run: what it needs and what it reports. */
typedef struct demo_state {
    const char *label;
    uint64_t expected;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;                   /* guarded by mu */
    int ok;                     /* guarded by mu */
} demo_state;

static void on_done(ps_future *f, void *state)
{
    demo_state *ds = state;
    void *res = NULL;
    /* EndInvoke inside the AsyncCallback: f is ours to end here. */
    int rc = ps_future_end(&f, &res);
    uint64_t sum = (uint64_t)(uintptr_t)res;

    printf("callback: state \"%s\", result %" PRIu64 "\n", ds->label, sum);
    pthread_mutex_lock(&ds->mu);
    ds->ok = rc == 0 && sum == ds->expected;
    ds->done = 1;
    pthread_cond_signal(&ds->cv);
    pthread_mutex_unlock(&ds->mu);
}

/* Job arguments and callback state are static: if a bounded wait below
 * gives up, the job may still run until ps_pool_destroy, so they must not
 * live on a stack frame that has returned. */
static long_op_args g_poll_args = { .n = 100000, .steps = 10, .step_ms = 25 };
static long_op_args g_cb_args = { .n = 50000, .steps = 10, .step_ms = 25 };
static demo_state g_state = {
    .label = "sum of squares to 50000",
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv = PTHREAD_COND_INITIALIZER,
};

static int run_polling(ps_pool *pool)
{
    const long_op_args *a = &g_poll_args;
    ps_future *f = NULL;
    int rc = ps_future_begin(&f, pool, long_operation, &g_poll_args, NULL,
                             NULL);
    if (rc != 0) {
        fprintf(stderr, "begin: %s\n", ps_strerror(rc));
        return -1;
    }

    /* The caller's "other work" while the pool computes; bounded. */
    printf("polling");
    for (int i = 0; i < 100 && !ps_future_is_completed(f); i++) {
        putchar('.');
        fflush(stdout);
        sleep_ms(20);
    }
    putchar('\n');
    if (ps_future_wait(f, 2000) != 0) {
        fprintf(stderr, "long operation did not finish in time\n");
        return -1; /* the pool's destroy still frees f */
    }

    void *res = NULL;
    ps_future_end(&f, &res);
    uint64_t sum = (uint64_t)(uintptr_t)res;
    printf("polling: result %" PRIu64 " (expected %" PRIu64 ")\n", sum,
           expected_sum(a->n));
    return sum == expected_sum(a->n) ? 0 : -1;
}

static int run_callback(ps_pool *pool)
{
    demo_state *ds = &g_state;
    ds->expected = expected_sum(g_cb_args.n);

    ps_future *f = NULL;
    int rc = ps_future_begin(&f, pool, long_operation, &g_cb_args, on_done,
                             ds);
    if (rc != 0) {
        fprintf(stderr, "begin: %s\n", ps_strerror(rc));
        return -1;
    }
    f = NULL; /* the callback ends it */

    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 2;
    pthread_mutex_lock(&ds->mu);
    while (!ds->done) {
        if (pthread_cond_timedwait(&ds->cv, &ds->mu, &dl) == ETIMEDOUT)
            break;
    }
    int done = ds->done, ok = ds->ok;
    pthread_mutex_unlock(&ds->mu);
    if (!done)
        fprintf(stderr, "callback did not run in time\n");
    return done && ok ? 0 : -1;
}

int main(void)
{
    ps_pool *pool = NULL;
    ps_pool_opts opts = { .workers = 2, .queue_capacity = 8 };
    int rc = ps_pool_create(&pool, &opts);
    if (rc != 0) {
        fprintf(stderr, "pool: %s\n", ps_strerror(rc));
        return 1;
    }

    int failed = run_polling(pool) != 0;
    if (!failed)
        failed = run_callback(pool) != 0;

    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    printf("futures begun %" PRIu64 ", completed %" PRIu64 "\n",
           st.futures_begun, st.futures_completed);
    ps_pool_destroy(pool);
    printf("%s\n", failed ? "FAIL" : "OK");
    return failed ? 1 : 0;
}
