/*
 * Pool tests. Workers never call cmocka: they record into `sync` fields the
 * test thread checks. Every wait is bounded (WAIT_MS) so a broken pool fails
 * a test instead of hanging ctest. Each test runs in a heap fixture whose
 * teardown (which cmocka runs after a failure too) opens the gate, joins
 * helper threads and destroys the pool, so a failed test cannot leave
 * workers waiting on memory a later test reuses.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "poolsrv/pool.h"
#include "gate.h"

#define WAIT_MS 5000
/* How long a submit must stay blocked to count as "blocked". Only a
 * negative check: a slow machine cannot make the test fail wrongly. */
#define BLOCKED_MS 100

/* ---- helpers ----------------------------------------------------------- */

/* Job: announce arrival, wait for the gate (bounded), count as done. */
static void gate_job(void *arg)
{
    t_gate *s = arg;

    pthread_mutex_lock(&s->mu);
    s->entered++;
    pthread_cond_broadcast(&s->cv);
    t_gate_pass_locked(s, 2 * WAIT_MS);
    s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Job: count as done. */
static void count_job(void *arg)
{
    t_gate *s = arg;
    pthread_mutex_lock(&s->mu);
    s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void noop_job(void *arg)
{
    (void)arg;
}

/* Some counters (busy dropping after a job returns) have no event to wait
 * on; poll them, bounded. */
static bool wait_busy(ps_pool *pool, unsigned want)
{
    struct timespec step = { 0, 1000000L };
    for (int i = 0; i < WAIT_MS; i++) {
        ps_pool_stats st;
        ps_pool_get_stats(pool, &st);
        if (st.busy_threads == want)
            return true;
        nanosleep(&step, NULL);
    }
    return false;
}

/* A thread that calls submit (blocking) and reports when it returned. */
typedef struct submitter {
    ps_pool *pool;
    t_gate *s;                  /* reports through s->mu / s->cv */
    ps_job_fn fn;
    void *arg;
    bool returned;
    int rc;
} submitter_t;

/* Per-test state on the heap: it outlives the test function, so threads
 * still running after a failed assert never touch a dead stack frame. */
typedef struct fx {
    t_gate s;
    ps_pool *pool;              /* destroyed by teardown unless NULL */
    submitter_t sub;
    t_threads threads;          /* helper threads teardown joins */
    atomic_bool stop;           /* tells looping helpers to finish */
} fx_t;

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    t_gate_init(&fx->s);
    atomic_init(&fx->stop, false);
    *state = fx;
    return 0;
}

static void fx_join(fx_t *fx)
{
    t_threads_join(&fx->threads);
}

static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    atomic_store(&fx->stop, true);
    t_gate_open(&fx->s);          /* frees gated workers and, with them, slots */
    fx_join(fx);                /* includes a destroyer thread, if any */
    ps_pool_destroy(fx->pool);  /* releases a submitter still blocked */
    t_gate_fini(&fx->s);
    free(fx);
    return 0;
}

static void fx_spawn(fx_t *fx, void *(*fn)(void *), void *arg)
{
    assert_true(t_threads_spawn(&fx->threads, fn, arg));
}

/* Replaces the fixture's pool with a new one. */
static ps_pool *fx_pool(fx_t *fx, unsigned workers, size_t cap)
{
    ps_pool_destroy(fx->pool);
    fx->pool = NULL;
    ps_pool_opts o = { .workers = workers, .queue_capacity = cap };
    assert_int_equal(ps_pool_create(&fx->pool, &o), 0);
    assert_non_null(fx->pool);
    return fx->pool;
}

/* Starts ps_pool_destroy on a helper thread, which now owns the pool. The
 * returned pointer stays valid while a gate holds a worker. */
static ps_pool *fx_destroy_async(fx_t *fx)
{
    ps_pool *pool = fx->pool;
    fx->pool = NULL;
    fx_spawn(fx, t_pool_destroyer, pool);
    return pool;
}

static void *submitter_main(void *arg)
{
    submitter_t *t = arg;
    int rc = ps_pool_submit(t->pool, t->fn, t->arg);
    pthread_mutex_lock(&t->s->mu);
    t->rc = rc;
    t->returned = true;
    pthread_cond_broadcast(&t->s->cv);
    pthread_mutex_unlock(&t->s->mu);
    return NULL;
}

static submitter_t *fx_submitter(fx_t *fx, ps_job_fn fn, void *arg)
{
    fx->sub = (submitter_t){ .pool = fx->pool, .s = &fx->s, .fn = fn,
                             .arg = arg };
    fx_spawn(fx, submitter_main, &fx->sub);
    return &fx->sub;
}

/* Waits up to ms for the submitter to return; true if it did. */
static bool submitter_wait(submitter_t *t, long ms)
{
    struct timespec dl = t_deadline_in(ms);
    pthread_mutex_lock(&t->s->mu);
    while (!t->returned) {
        if (pthread_cond_timedwait(&t->s->cv, &t->s->mu, &dl) == ETIMEDOUT)
            break;
    }
    bool r = t->returned;
    pthread_mutex_unlock(&t->s->mu);
    return r;
}

/* ---- tests ------------------------------------------------------------- */

static void test_create_bad_opts(void **state)
{
    fx_t *fx = *state;
    ps_pool *pool = (ps_pool *)&pool; /* garbage create must clear */
    ps_pool_opts ok = { .workers = 2, .queue_capacity = 4 };
    ps_pool_opts no_workers = { .workers = 0, .queue_capacity = 4 };
    ps_pool_opts no_queue = { .workers = 2, .queue_capacity = 0 };

    assert_int_equal(ps_pool_create(NULL, &ok), -EINVAL);
    assert_int_equal(ps_pool_create(&pool, NULL), -EINVAL);
    assert_int_equal(ps_pool_create(&pool, &no_workers), -EINVAL);
    assert_int_equal(ps_pool_create(&pool, &no_queue), -EINVAL);
    assert_null(pool);

    ps_pool_destroy(NULL);

    pool = fx_pool(fx, 3, 7);
    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.max_threads, 3);
    assert_int_equal(st.available_threads, 3);
    assert_int_equal(st.busy_threads, 0);
    assert_int_equal(st.queue_capacity, 7);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(st.submitted, 0);
    assert_int_equal(ps_pool_max_threads(pool), 3);
    assert_int_equal(ps_pool_available_threads(pool), 3);
    assert_int_equal(ps_pool_submit(pool, NULL, NULL), -EINVAL);
    assert_int_equal(ps_pool_try_submit(pool, NULL, NULL), -EINVAL);
}

static void test_jobs_run_counters_add_up(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 8);
    ps_pool_stats st;

    /* One worker held at the gate, five jobs queued behind it. */
    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    for (int i = 0; i < 5; i++)
        assert_int_equal(ps_pool_submit(pool, count_job, s), 0);

    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.submitted, 6);
    assert_int_equal(st.completed, 0);
    assert_int_equal(st.busy_threads, 1);
    assert_int_equal(st.queue_depth, 5);
    assert_int_equal(st.submitted, st.completed + st.queue_depth + st.busy_threads);

    t_gate_open(s);
    assert_true(t_gate_wait(s, &s->done, 6, WAIT_MS));
    assert_true(wait_busy(pool, 0));
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.submitted, 6);
    assert_int_equal(st.completed, 6);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(st.rejected, 0);

    /* A larger batch on a wider pool. */
    pool = fx_pool(fx, 4, 16);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(ps_pool_submit(pool, count_job, s), 0);
    assert_true(t_gate_wait(s, &s->done, 1006, WAIT_MS));
    assert_true(wait_busy(pool, 0));
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.submitted, 1000);
    assert_int_equal(st.completed, 1000);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(atomic_load(&s->errors), 0);
}

static void test_try_submit_full_queue(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 2, 4);
    ps_pool_stats st;

    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 2, WAIT_MS));
    for (int i = 0; i < 4; i++)
        assert_int_equal(ps_pool_try_submit(pool, count_job, s), 0);

    assert_int_equal(ps_pool_try_submit(pool, count_job, s), PS_EFULL);
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.rejected, 1);
    assert_int_equal(ps_pool_try_submit(pool, count_job, s), PS_EFULL);
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.rejected, 2);
    assert_int_equal(st.submitted, 6);
    assert_int_equal(st.queue_depth, 4);
    assert_int_equal(st.available_threads, 0);

    t_gate_open(s);
    assert_true(t_gate_wait(s, &s->done, 6, WAIT_MS));
    /* Room again: try_submit accepts. */
    assert_int_equal(ps_pool_try_submit(pool, count_job, s), 0);
    assert_true(t_gate_wait(s, &s->done, 7, WAIT_MS));
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.rejected, 2);
    assert_int_equal(st.submitted, 7);
    assert_int_equal(atomic_load(&s->errors), 0);
}

static void test_submit_blocks_while_full(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 1);

    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    assert_int_equal(ps_pool_submit(pool, count_job, s), 0); /* fills it */

    submitter_t *t = fx_submitter(fx, count_job, s);
    /* The gate is closed, so no slot can free: the submit must not return. */
    assert_false(submitter_wait(t, BLOCKED_MS));

    t_gate_open(s);
    assert_true(submitter_wait(t, WAIT_MS));
    assert_int_equal(t->rc, 0);
    assert_true(t_gate_wait(s, &s->done, 3, WAIT_MS));
    assert_int_equal(atomic_load(&s->errors), 0);
}

static void test_busy_and_available_threads(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 4, 8);
    ps_pool_stats st;

    for (int i = 0; i < 3; i++)
        assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 3, WAIT_MS));

    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.max_threads, 4);
    assert_int_equal(st.busy_threads, 3);
    assert_int_equal(st.available_threads, 1);
    assert_int_equal(ps_pool_available_threads(pool), 1);
    assert_int_equal(ps_pool_max_threads(pool), 4);

    t_gate_open(s);
    assert_true(t_gate_wait(s, &s->done, 3, WAIT_MS));
    assert_true(wait_busy(pool, 0));
    assert_int_equal(ps_pool_available_threads(pool), 4);
    assert_int_equal(atomic_load(&s->errors), 0);
}

/* destroy while jobs are queued: it refuses new ones at once, then runs
 * everything already queued before returning. */
static void test_destroy_drains_and_refuses(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 50);

    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    for (int i = 0; i < 50; i++)
        assert_int_equal(ps_pool_submit(pool, count_job, s), 0);

    pool = fx_destroy_async(fx);

    /* The pool cannot be freed while the gate holds its only worker, so
     * calling into it here is safe. The queue is full: EFULL until destroy
     * has begun, then ESHUTDOWN. */
    int rc = PS_EFULL;
    struct timespec step = { 0, 1000000L };
    for (int i = 0; i < WAIT_MS && rc == PS_EFULL; i++) {
        rc = ps_pool_try_submit(pool, noop_job, NULL);
        if (rc == PS_EFULL)
            nanosleep(&step, NULL);
    }
    assert_int_equal(rc, PS_ESHUTDOWN);
    assert_int_equal(ps_pool_submit(pool, noop_job, NULL), PS_ESHUTDOWN);

    pthread_mutex_lock(&s->mu);
    unsigned done_before = s->done;
    pthread_mutex_unlock(&s->mu);
    assert_int_equal(done_before, 0);

    t_gate_open(s);
    fx_join(fx);
    /* destroy returned: every queued job ran. */
    assert_int_equal(s->done, 51);
    assert_int_equal(atomic_load(&s->errors), 0);
}

static void test_destroy_releases_blocked_submitter(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 1);

    assert_int_equal(ps_pool_submit(pool, gate_job, s), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    assert_int_equal(ps_pool_submit(pool, count_job, s), 0);

    submitter_t *t = fx_submitter(fx, count_job, s);
    assert_false(submitter_wait(t, BLOCKED_MS));

    fx_destroy_async(fx);
    /* Released by destroy itself, while the gate still holds the worker. */
    assert_true(submitter_wait(t, WAIT_MS));
    assert_int_equal(t->rc, PS_ESHUTDOWN);

    t_gate_open(s);
    fx_join(fx);
    assert_int_equal(s->done, 2); /* gate + the queued job; not the refused one */
    assert_int_equal(atomic_load(&s->errors), 0);
}

/* ---- many submitters --------------------------------------------------- */

#define SUBMITTERS 4
#define JOBS_PER_SUBMITTER 50000

static atomic_uint_fast64_t g_sum;

static void add_job(void *arg)
{
    atomic_fetch_add(&g_sum, (uint64_t)(uintptr_t)arg);
}

typedef struct {
    ps_pool *pool;
    unsigned failures;
} load_t;

static void *load_main(void *arg)
{
    load_t *l = arg;
    for (uintptr_t i = 1; i <= JOBS_PER_SUBMITTER; i++) {
        if (ps_pool_submit(l->pool, add_job, (void *)i) != 0)
            l->failures++;
    }
    return NULL;
}

typedef struct {
    ps_pool *pool;
    atomic_bool *stop;
    unsigned violations;
    unsigned reads;
} watcher_t;

/* An "admin thread" reading stats while workers run (TSan checks races),
 * until every job is queued, teardown says stop, or time is up (a failing
 * submitter must not leave the test joining this forever). */
static void *watch_main(void *arg)
{
    watcher_t *w = arg;
    const uint64_t total = (uint64_t)SUBMITTERS * JOBS_PER_SUBMITTER;
    const time_t give_up = t_deadline_in(6 * WAIT_MS).tv_sec;
    while (!atomic_load(w->stop) && t_deadline_in(0).tv_sec < give_up) {
        ps_pool_stats st;
        ps_pool_get_stats(w->pool, &st);
        if (st.busy_threads > st.max_threads ||
            st.available_threads != st.max_threads - st.busy_threads ||
            st.queue_depth > st.queue_capacity ||
            st.completed > st.submitted)
            w->violations++;
        w->reads++;
        if (st.submitted >= total)
            break;
        sched_yield();
    }
    return NULL;
}

static void test_many_submitters(void **state)
{
    fx_t *fx = *state;
    ps_pool *pool = fx_pool(fx, 4, 64);
    /* Static: helper threads may outlive a failed test function. */
    static load_t loads[SUBMITTERS];
    static watcher_t w;
    atomic_store(&g_sum, 0);

    w = (watcher_t){ .pool = pool, .stop = &fx->stop };
    fx_spawn(fx, watch_main, &w);
    for (int i = 0; i < SUBMITTERS; i++) {
        loads[i] = (load_t){ .pool = pool };
        fx_spawn(fx, load_main, &loads[i]);
    }
    fx_join(fx);
    for (int i = 0; i < SUBMITTERS; i++)
        assert_int_equal(loads[i].failures, 0);
    assert_int_equal(w.violations, 0);
    assert_true(w.reads > 0);

    const uint64_t total = (uint64_t)SUBMITTERS * JOBS_PER_SUBMITTER;
    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.submitted, total);
    assert_int_equal(st.rejected, 0);
    assert_true(st.completed <= st.submitted);

    ps_pool_destroy(pool); /* drains */
    fx->pool = NULL;
    const uint64_t per = (uint64_t)JOBS_PER_SUBMITTER * (JOBS_PER_SUBMITTER + 1) / 2;
    assert_int_equal(atomic_load(&g_sum), SUBMITTERS * per);
}

/* ---- idle hook --------------------------------------------------------- */

/* A work source of the owner's, as the event poller is: items to hand out,
 * a stop flag, and a record of how many workers waited on it at once. */
typedef struct source {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned items;             /* waiting to be handed out */
    bool stop;
    atomic_uint inside;         /* workers in source_idle now */
    atomic_uint most_inside;
    atomic_uint done;           /* jobs run (from the source or submitted) */
} source_t;

static void source_job(void *arg)
{
    source_t *src = arg;
    atomic_fetch_add(&src->done, 1);
}

static int source_idle(void *ctx, ps_job_fn *fn, void **arg)
{
    source_t *src = ctx;
    unsigned now = atomic_fetch_add(&src->inside, 1) + 1;
    unsigned most = atomic_load(&src->most_inside);
    while (now > most && !atomic_compare_exchange_weak(&src->most_inside, &most, now))
        ;
    int got = 0;
    pthread_mutex_lock(&src->mu);
    if (src->items == 0 && !src->stop) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_nsec += 20 * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&src->cv, &src->mu, &dl);
    }
    if (src->items > 0 && !src->stop) {
        src->items--;
        *fn = source_job;
        *arg = src;
        got = 1;
    }
    pthread_mutex_unlock(&src->mu);
    atomic_fetch_sub(&src->inside, 1);
    return got;
}

static bool wait_done(source_t *src, unsigned want)
{
    for (int i = 0; i < WAIT_MS && atomic_load(&src->done) < want; i++) {
        struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
    }
    return atomic_load(&src->done) >= want;
}

/* Up to idle_max idle workers wait on the source; jobs they find run and
 * are counted like submitted ones; ordinary submits still work. */
static void test_idle_hook(void **state)
{
    (void)state;
    source_t src = {.items = 0};
    pthread_mutex_init(&src.mu, NULL);
    pthread_cond_init(&src.cv, NULL);
    ps_pool *pool = NULL;
    ps_pool_opts o = {.workers = 4, .queue_capacity = 16, .idle = source_idle,
                      .idle_ctx = &src, .idle_max = 2};
    assert_int_equal(ps_pool_create(&pool, &o), 0);

    pthread_mutex_lock(&src.mu);
    src.items = 1000;
    pthread_cond_broadcast(&src.cv);
    pthread_mutex_unlock(&src.mu);
    assert_true(wait_done(&src, 1000));
    for (int i = 0; i < 100; i++)
        assert_int_equal(ps_pool_submit(pool, source_job, &src), 0);
    assert_true(wait_done(&src, 1100));

    assert_true(atomic_load(&src.most_inside) >= 1);
    assert_true(atomic_load(&src.most_inside) <= 2); /* never more than idle_max */
    /* `completed` counts a job after it returns: give the last ones time. */
    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    for (int i = 0; i < WAIT_MS && (st.completed < 1100 || st.busy_threads > 0); i++) {
        struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
        ps_pool_get_stats(pool, &st);
    }
    assert_int_equal(st.completed, 1100);
    assert_int_equal(st.submitted, 1100);
    assert_int_equal(st.available_threads, 4);

    /* The owner signals the source to return promptly, then destroys. */
    pthread_mutex_lock(&src.mu);
    src.stop = true;
    pthread_cond_broadcast(&src.cv);
    pthread_mutex_unlock(&src.mu);
    ps_pool_destroy(pool);
    assert_int_equal(atomic_load(&src.inside), 0);
    pthread_cond_destroy(&src.cv);
    pthread_mutex_destroy(&src.mu);
}

/* A hook that has nothing and says so: each call is counted, and the
 * worker sleeps until woken. */
static atomic_uint sleepy_calls;

static int sleepy_idle(void *ctx, ps_job_fn *fn, void **arg)
{
    (void)ctx;
    (void)fn;
    (void)arg;
    atomic_fetch_add(&sleepy_calls, 1);
    return PS_POOL_IDLE_SLEEP;
}

static bool wait_calls(unsigned want)
{
    for (int i = 0; i < WAIT_MS && atomic_load(&sleepy_calls) < want; i++) {
        struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
    }
    return atomic_load(&sleepy_calls) >= want;
}

static void add_one_job(void *arg)
{
    atomic_fetch_add((atomic_uint *)arg, 1);
}

/* PS_POOL_IDLE_SLEEP puts a worker to sleep instead of calling the hook
 * again; ps_pool_wake_idle wakes exactly as many as it says, never more
 * than sleep; a job wakes one and the hook is called after it. */
static void test_idle_sleep_and_wake(void **state)
{
    (void)state;
    enum { WORKERS = 4 };
    atomic_store(&sleepy_calls, 0);
    ps_pool *pool = NULL;
    ps_pool_opts o = {.workers = WORKERS, .queue_capacity = 16, .idle = sleepy_idle,
                      .idle_max = WORKERS};
    assert_int_equal(ps_pool_create(&pool, &o), 0);
    assert_true(wait_calls(WORKERS));
    /* All asleep: nobody calls the hook again on its own. */
    struct timespec pause = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&sleepy_calls), WORKERS);

    assert_int_equal(ps_pool_wake_idle(pool, 0), 0);
    assert_int_equal(ps_pool_wake_idle(pool, 2), 2);
    assert_true(wait_calls(WORKERS + 2));
    nanosleep(&pause, NULL);
    assert_int_equal(atomic_load(&sleepy_calls), WORKERS + 2);

    /* More than sleep: only those that do. */
    unsigned woken = ps_pool_wake_idle(pool, 100);
    assert_true(woken >= 1 && woken <= WORKERS);
    assert_true(wait_calls(WORKERS + 2 + woken));

    /* A job runs on a sleeper, which then asks the hook again. */
    atomic_uint ran;
    atomic_init(&ran, 0);
    unsigned before = atomic_load(&sleepy_calls);
    assert_int_equal(ps_pool_submit(pool, add_one_job, &ran), 0);
    assert_true(wait_calls(before + 1));
    assert_int_equal(atomic_load(&ran), 1);

    assert_int_equal(ps_pool_wake_idle(NULL, 1), 0);
    ps_pool_destroy(pool); /* sleepers leave on shutdown */
}

#define FX_TEST(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        FX_TEST(test_create_bad_opts),
        FX_TEST(test_jobs_run_counters_add_up),
        FX_TEST(test_try_submit_full_queue),
        FX_TEST(test_submit_blocks_while_full),
        FX_TEST(test_busy_and_available_threads),
        FX_TEST(test_destroy_drains_and_refuses),
        FX_TEST(test_destroy_releases_blocked_submitter),
        FX_TEST(test_many_submitters),
        cmocka_unit_test(test_idle_hook),
        cmocka_unit_test(test_idle_sleep_and_wake),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
