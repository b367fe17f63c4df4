/*
 * Future tests. Worker-side code (async functions, callbacks) only records;
 * the test thread asserts. Every wait is bounded. Each test runs in a heap
 * fixture whose teardown (run after a failure too) opens the gate, joins
 * helper threads and destroys the pool, so a failed test leaves no worker
 * touching memory a later test reuses.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include <cmocka.h>

#include "poolsrv/future.h"
#include "poolsrv/pool.h"
#include "gate.h"

#define WAIT_MS 5000

/* ---- helpers ----------------------------------------------------------- */

/* Async fn: arrive, wait for the gate, return the sync as the result. */
static void *gate_fn(void *arg)
{
    t_gate *s = arg;
    pthread_mutex_lock(&s->mu);
    s->entered++;
    pthread_cond_broadcast(&s->cv);
    t_gate_pass_locked(s, 2 * WAIT_MS);
    pthread_mutex_unlock(&s->mu);
    return s;
}

static void *triple_fn(void *arg)
{
    return (void *)((uintptr_t)arg * 3);
}

typedef struct blocked_begin {
    ps_pool *pool;
    t_gate *s;
    ps_future *f;
    int rc;
} blocked_begin_t;

typedef struct end_rec {
    t_gate *s;
    int rc, rc_again;
    void *res;
} end_rec;

/* Per-test state on the heap: it outlives the test function, so workers and
 * helpers still running after a failed assert never touch a dead frame. */
typedef struct fx {
    t_gate s;
    ps_pool *pool;              /* destroyed by teardown unless NULL */
    blocked_begin_t bb;
    end_rec er;
    t_threads threads;          /* helper threads teardown joins */
} fx_t;

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL)
        return -1;
    t_gate_init(&fx->s);
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
    t_gate_open(&fx->s);
    fx_join(fx);
    ps_pool_destroy(fx->pool);  /* also frees futures the test left */
    t_gate_fini(&fx->s);
    free(fx);
    return 0;
}

static void fx_spawn(fx_t *fx, void *(*fn)(void *), void *arg)
{
    assert_true(t_threads_spawn(&fx->threads, fn, arg));
}

static ps_pool *fx_pool(fx_t *fx, unsigned workers, size_t cap)
{
    ps_pool_opts o = { .workers = workers, .queue_capacity = cap };
    assert_null(fx->pool);
    assert_int_equal(ps_pool_create(&fx->pool, &o), 0);
    return fx->pool;
}

/* Starts destroy on a helper thread (which now owns the pool) and returns
 * once it has begun, seen as try_begin turning from PS_EFULL into
 * PS_ESHUTDOWN. The queue must be full and a gate must hold the workers, so
 * the pool outlives these calls. */
static bool fx_start_destroy(fx_t *fx)
{
    ps_pool *pool = fx->pool;
    fx->pool = NULL;
    fx_spawn(fx, t_pool_destroyer, pool);
    struct timespec step = { 0, 1000000L };
    for (int i = 0; i < WAIT_MS; i++) {
        ps_future *f = (ps_future *)&f;
        int rc = ps_future_try_begin(&f, pool, triple_fn, NULL, NULL, NULL);
        if (f != NULL)
            return false; /* the queue was supposed to be full */
        if (rc == PS_ESHUTDOWN)
            return true;
        if (rc != PS_EFULL)
            return false;
        nanosleep(&step, NULL);
    }
    return false;
}

/* ---- tests ------------------------------------------------------------- */

static void test_one_shot_result(void **state)
{
    fx_t *fx = *state;
    ps_pool *pool = fx_pool(fx, 2, 8);
    static int st_obj;
    ps_future *f = NULL;
    void *res = NULL;

    assert_int_equal(ps_future_begin(&f, pool, triple_fn, (void *)14, NULL,
                                     &st_obj), 0);
    assert_non_null(f);
    assert_ptr_equal(ps_future_state(f), &st_obj);
    assert_int_equal(ps_future_wait(f, WAIT_MS), 0);
    assert_true(ps_future_is_completed(f));
    assert_int_equal(ps_future_wait(f, 0), 0);
    ps_pool_stats live;
    ps_pool_get_stats(pool, &live);
    assert_int_equal(live.futures_live, 1); /* the user's reference holds it */
    assert_int_equal(ps_future_end(&f, &res), 0);
    assert_null(f);
    assert_int_equal((uintptr_t)res, 42);
    /* end frees it (once the worker has let go too), not destroy. */
    for (int i = 0; i < WAIT_MS && (ps_pool_get_stats(pool, &live), live.futures_live) != 0; i++) {
        struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
    }
    assert_int_equal(live.futures_live, 0);

    /* end without waiting first, discarding the result. */
    assert_int_equal(ps_future_begin(&f, pool, triple_fn, (void *)1, NULL,
                                     NULL), 0);
    assert_int_equal(ps_future_end(&f, NULL), 0);

    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    for (int i = 0; i < WAIT_MS && st.futures_live != 0; i++) {
        struct timespec ms = {.tv_sec = 0, .tv_nsec = 1000000L};
        nanosleep(&ms, NULL);
        ps_pool_get_stats(pool, &st);
    }
    assert_int_equal(st.futures_begun, 2);
    assert_int_equal(st.futures_completed, 2);
    assert_int_equal(st.futures_live, 0);
}

static void test_bad_arguments(void **state)
{
    fx_t *fx = *state;
    ps_pool *pool = fx_pool(fx, 1, 2);
    ps_future *f = (ps_future *)&f;
    void *res = (void *)&res;

    assert_int_equal(ps_future_begin(NULL, pool, triple_fn, NULL, NULL, NULL),
                     -EINVAL);
    assert_int_equal(ps_future_begin(&f, NULL, triple_fn, NULL, NULL, NULL),
                     -EINVAL);
    assert_null(f);
    f = (ps_future *)&f;
    assert_int_equal(ps_future_try_begin(&f, pool, NULL, NULL, NULL, NULL),
                     -EINVAL);
    assert_null(f);

    /* end(NULL), end of a NULL handle, and a second end are refused. */
    assert_int_equal(ps_future_end(NULL, &res), -EINVAL);
    assert_int_equal(ps_future_end(&f, &res), -EINVAL);
    assert_int_equal(ps_future_begin(&f, pool, triple_fn, (void *)2, NULL,
                                     NULL), 0);
    assert_int_equal(ps_future_end(&f, &res), 0);
    assert_int_equal((uintptr_t)res, 6);
    assert_int_equal(ps_future_end(&f, &res), -EINVAL);
    assert_int_equal((uintptr_t)res, 6);

    assert_int_equal(ps_future_wait(NULL, 0), -EINVAL);
    assert_false(ps_future_is_completed(NULL));
    assert_null(ps_future_state(NULL));

    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.futures_begun, 1);
}

/* ---- many concurrent futures ------------------------------------------- */

#define BEGINNERS 4
#define FUTURES_PER_BEGINNER 2500 /* 10,000 in all */

typedef struct {
    ps_pool *pool;
    uintptr_t base;
    unsigned bad;               /* failed begin/end or wrong result */
    ps_future *fs[FUTURES_PER_BEGINNER];
} beginner_t;

static void *beginner_main(void *arg)
{
    beginner_t *b = arg;
    /* All outstanding at once, then ended in reverse order. */
    for (unsigned i = 0; i < FUTURES_PER_BEGINNER; i++) {
        if (ps_future_begin(&b->fs[i], b->pool, triple_fn,
                            (void *)(b->base + i), NULL, NULL) != 0)
            b->bad++;
    }
    for (unsigned i = FUTURES_PER_BEGINNER; i-- > 0;) {
        void *res = NULL;
        if (b->fs[i] == NULL)
            continue;
        if (ps_future_end(&b->fs[i], &res) != 0 ||
            (uintptr_t)res != (b->base + i) * 3)
            b->bad++;
    }
    return NULL;
}

static void test_many_concurrent_futures(void **state)
{
    fx_t *fx = *state;
    ps_pool *pool = fx_pool(fx, 4, 128);
    static beginner_t bs[BEGINNERS];

    for (int i = 0; i < BEGINNERS; i++) {
        bs[i] = (beginner_t){ .pool = pool, .base = 1000000u * (uintptr_t)(i + 1) };
        fx_spawn(fx, beginner_main, &bs[i]);
    }
    fx_join(fx);
    for (int i = 0; i < BEGINNERS; i++)
        assert_int_equal(bs[i].bad, 0);
    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.futures_begun, BEGINNERS * FUTURES_PER_BEGINNER);
    assert_int_equal(st.futures_completed, BEGINNERS * FUTURES_PER_BEGINNER);
}

static void test_wait_times_out_before_completion(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 4);
    ps_future *f = NULL;
    void *res = NULL;

    assert_int_equal(ps_future_begin(&f, pool, gate_fn, s, NULL, NULL), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));

    assert_int_equal(ps_future_wait(f, 0), -ETIMEDOUT);
    assert_int_equal(ps_future_wait(f, 50), -ETIMEDOUT);
    assert_false(ps_future_is_completed(f));
    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.futures_begun, 1);
    assert_int_equal(st.futures_completed, 0);

    t_gate_open(s);
    assert_int_equal(ps_future_wait(f, WAIT_MS), 0);
    assert_true(ps_future_is_completed(f));
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.futures_completed, 1);
    assert_int_equal(ps_future_end(&f, &res), 0);
    assert_ptr_equal(res, s);
    assert_int_equal(atomic_load(&s->errors), 0);
}

/* ---- callbacks --------------------------------------------------------- */

#define CB_FUTURES 100

typedef struct cb_rec {
    t_gate *s;
    ps_future *handle;          /* as returned by begin (set before the job) */
    unsigned calls;
    bool saw_completed;
    bool saw_handle;            /* cb's f equals the handle from begin */
    void *seen_state;
} cb_rec;

static void record_cb(ps_future *f, void *state)
{
    cb_rec *r = state;
    pthread_mutex_lock(&r->s->mu);
    r->calls++;
    r->seen_state = ps_future_state(f);
    r->saw_completed = ps_future_is_completed(f);
    r->saw_handle = (f == r->handle);
    r->s->done++;
    pthread_cond_broadcast(&r->s->cv);
    pthread_mutex_unlock(&r->s->mu);
}

static void test_callback_runs_once_with_state(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 3, 16);
    static cb_rec recs[CB_FUTURES];

    for (uintptr_t i = 0; i < CB_FUTURES; i++) {
        recs[i] = (cb_rec){ .s = s };
        assert_int_equal(ps_future_begin(&recs[i].handle, pool, triple_fn,
                                         (void *)i, record_cb, &recs[i]), 0);
    }
    assert_true(t_gate_wait(s, &s->done, CB_FUTURES, WAIT_MS));
    for (uintptr_t i = 0; i < CB_FUTURES; i++) {
        void *res = NULL;
        assert_int_equal(ps_future_end(&recs[i].handle, &res), 0);
        assert_int_equal((uintptr_t)res, i * 3);
    }
    ps_pool_destroy(pool); /* every callback has returned now */
    fx->pool = NULL;

    assert_int_equal(s->done, CB_FUTURES);
    for (int i = 0; i < CB_FUTURES; i++) {
        assert_int_equal(recs[i].calls, 1);
        assert_ptr_equal(recs[i].seen_state, &recs[i]);
        assert_true(recs[i].saw_completed);
        assert_true(recs[i].saw_handle);
    }
}

/* .NET's pattern: EndInvoke inside the AsyncCallback. */
static void end_in_cb(ps_future *f, void *state)
{
    end_rec *r = state;
    void *res = NULL;
    int rc = ps_future_end(&f, &res);
    int again = ps_future_end(&f, &res);
    pthread_mutex_lock(&r->s->mu);
    r->rc = rc;
    r->rc_again = again;
    r->res = res;
    r->s->done++;
    pthread_cond_broadcast(&r->s->cv);
    pthread_mutex_unlock(&r->s->mu);
}

static void test_end_from_callback(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 2, 8);
    end_rec *r = &fx->er;
    ps_future *f = NULL;

    *r = (end_rec){ .s = s, .rc = 1, .rc_again = 1 };
    assert_int_equal(ps_future_begin(&f, pool, triple_fn, (void *)5, end_in_cb,
                                     r), 0);
    f = NULL; /* the callback owns the end; the handle is not ours to use */
    assert_true(t_gate_wait(s, &s->done, 1, WAIT_MS));
    ps_pool_destroy(pool);
    fx->pool = NULL;

    assert_int_equal(r->rc, 0);
    assert_int_equal(r->rc_again, -EINVAL);
    assert_int_equal((uintptr_t)r->res, 15);
}

/* The callback blocks after the result is stored; the user ends the future
 * meanwhile; the callback then keeps using f. ASan would flag a free under
 * the callback. */
static void gated_cb(ps_future *f, void *state)
{
    t_gate *s = state;
    pthread_mutex_lock(&s->mu);
    s->entered++;
    pthread_cond_broadcast(&s->cv);
    t_gate_pass_locked(s, 2 * WAIT_MS);
    if (ps_future_state(f) != s || !ps_future_is_completed(f))
        atomic_fetch_add(&s->errors, 1);
    s->done++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void test_end_while_callback_runs(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 4);
    ps_future *f = NULL;
    void *res = NULL;

    assert_int_equal(ps_future_begin(&f, pool, triple_fn, (void *)7, gated_cb,
                                     s), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    assert_true(ps_future_is_completed(f));
    assert_int_equal(ps_future_end(&f, &res), 0); /* callback still running */
    assert_int_equal((uintptr_t)res, 21);

    t_gate_open(s);
    assert_true(t_gate_wait(s, &s->done, 1, WAIT_MS));
    ps_pool_destroy(pool);
    fx->pool = NULL;
    assert_int_equal(atomic_load(&s->errors), 0);
}

/* ---- backpressure and shutdown ----------------------------------------- */

static void test_try_begin_full_queue(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 1);
    ps_future *gated = NULL, *queued = NULL, *refused = (ps_future *)s;

    assert_int_equal(ps_future_begin(&gated, pool, gate_fn, s, NULL, NULL), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    assert_int_equal(ps_future_try_begin(&queued, pool, triple_fn, (void *)3,
                                         NULL, NULL), 0);
    assert_int_equal(ps_future_try_begin(&refused, pool, triple_fn, (void *)4,
                                         NULL, NULL), PS_EFULL);
    assert_null(refused);

    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.rejected, 1);
    assert_int_equal(st.futures_begun, 2); /* the refused one is not begun */

    t_gate_open(s);
    void *res = NULL;
    assert_int_equal(ps_future_end(&queued, &res), 0);
    assert_int_equal((uintptr_t)res, 9);
    assert_int_equal(ps_future_end(&gated, &res), 0);
    assert_ptr_equal(res, s);
    assert_int_equal(atomic_load(&s->errors), 0);
}

static void *blocked_begin_main(void *arg)
{
    blocked_begin_t *b = arg;
    ps_future *f = (ps_future *)b;
    int rc = ps_future_begin(&f, b->pool, triple_fn, NULL, NULL, NULL);
    pthread_mutex_lock(&b->s->mu);
    b->rc = rc;
    b->f = f;
    b->s->done++;
    pthread_cond_broadcast(&b->s->cv);
    pthread_mutex_unlock(&b->s->mu);
    return NULL;
}

static void test_begin_after_shutdown(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    ps_pool *pool = fx_pool(fx, 1, 1);
    ps_future *gated = NULL, *queued = NULL, *late = (ps_future *)s;

    assert_int_equal(ps_future_begin(&gated, pool, gate_fn, s, NULL, NULL), 0);
    assert_true(t_gate_wait(s, &s->entered, 1, WAIT_MS));
    assert_int_equal(ps_future_begin(&queued, pool, triple_fn, (void *)1, NULL,
                                     NULL), 0);

    /* A begin blocked on the full queue is released by destroy. */
    blocked_begin_t *b = &fx->bb;
    *b = (blocked_begin_t){ .pool = pool, .s = s };
    fx_spawn(fx, blocked_begin_main, b);

    assert_true(fx_start_destroy(fx));
    assert_int_equal(ps_future_begin(&late, pool, triple_fn, NULL, NULL, NULL),
                     PS_ESHUTDOWN);
    assert_null(late);
    assert_true(t_gate_wait(s, &s->done, 1, WAIT_MS));
    pthread_mutex_lock(&s->mu);
    int brc = b->rc;
    ps_future *bf = b->f;
    pthread_mutex_unlock(&s->mu);
    assert_int_equal(brc, PS_ESHUTDOWN);
    assert_null(bf);

    /* gated and queued are never ended: destroy runs and frees them. */
    t_gate_open(s);
    fx_join(fx);
    assert_int_equal(atomic_load(&s->errors), 0);
}

/* Records like record_cb, then ends the future from the callback: during
 * destroy's drain this is the one way a handle may still be ended. */
static void record_end_cb(ps_future *f, void *state)
{
    cb_rec *r = state;
    record_cb(f, state);
    if (ps_future_end(&f, NULL) != 0)
        atomic_fetch_add(&r->s->errors, 1);
}

static void test_destroy_with_unended_futures(void **state)
{
    fx_t *fx = *state;
    t_gate *s = &fx->s;
    /* 60 queued exactly fill the ring: fx_start_destroy needs a full queue. */
    ps_pool *pool = fx_pool(fx, 2, 60);
    static cb_rec recs[40];
    static ps_future *gated[2], *plain[20];

    for (int i = 0; i < 2; i++)
        assert_int_equal(ps_future_begin(&gated[i], pool, gate_fn, s, NULL,
                                         NULL), 0);
    assert_true(t_gate_wait(s, &s->entered, 2, WAIT_MS));
    /* Queued behind the gate: with a recording callback, with one that
     * ends the future, and without a callback. None ended by the test. */
    for (uintptr_t i = 0; i < 40; i++) {
        recs[i] = (cb_rec){ .s = s };
        assert_int_equal(ps_future_begin(&recs[i].handle, pool, triple_fn,
                                         (void *)i,
                                         i < 30 ? record_cb : record_end_cb,
                                         &recs[i]), 0);
    }
    for (uintptr_t i = 0; i < 20; i++)
        assert_int_equal(ps_future_begin(&plain[i], pool, triple_fn, (void *)i,
                                         NULL, NULL), 0);

    ps_pool_stats st;
    ps_pool_get_stats(pool, &st);
    assert_int_equal(st.futures_begun, 62);
    assert_int_equal(st.futures_completed, 0);

    /* destroy begins with every future unfinished, then drains them. */
    assert_true(fx_start_destroy(fx));
    t_gate_open(s);
    fx_join(fx);

    /* Every job ran, every callback ran once; the never-ended futures were
     * freed by destroy (LeakSanitizer checks at exit). */
    assert_int_equal(s->done, 40);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(recs[i].calls, 1);
        assert_true(recs[i].saw_completed);
    }
    assert_int_equal(atomic_load(&s->errors), 0);
}

#define FX_TEST(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        FX_TEST(test_one_shot_result),
        FX_TEST(test_bad_arguments),
        FX_TEST(test_many_concurrent_futures),
        FX_TEST(test_wait_times_out_before_completion),
        FX_TEST(test_callback_runs_once_with_state),
        FX_TEST(test_end_from_callback),
        FX_TEST(test_end_while_callback_runs),
        FX_TEST(test_try_begin_full_queue),
        FX_TEST(test_begin_after_shutdown),
        FX_TEST(test_destroy_with_unended_futures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
