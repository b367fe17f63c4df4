#include "gate.h"

#include <errno.h>

#include "poolsrv/pool.h"

void t_gate_init(t_gate *g)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, &a);
    pthread_condattr_destroy(&a);
    g->open = false;
    g->entered = 0;
    g->done = 0;
    atomic_init(&g->errors, 0);
}

void t_gate_fini(t_gate *g)
{
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
}

struct timespec t_deadline_in(long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_sec += ms / 1000;
    t.tv_nsec += (ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
        t.tv_sec++;
        t.tv_nsec -= 1000000000L;
    }
    return t;
}

bool t_gate_wait(t_gate *g, const unsigned *field, unsigned want, long ms)
{
    struct timespec dl = t_deadline_in(ms);
    pthread_mutex_lock(&g->mu);
    while (*field < want) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT)
            break;
    }
    bool ok = *field >= want;
    pthread_mutex_unlock(&g->mu);
    return ok;
}

void t_gate_open(t_gate *g)
{
    pthread_mutex_lock(&g->mu);
    g->open = true;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

void t_gate_pass_locked(t_gate *g, long ms)
{
    struct timespec dl = t_deadline_in(ms);
    while (!g->open) {
        if (pthread_cond_timedwait(&g->cv, &g->mu, &dl) == ETIMEDOUT) {
            atomic_fetch_add(&g->errors, 1);
            return;
        }
    }
}

bool t_threads_spawn(t_threads *ts, void *(*fn)(void *), void *arg)
{
    if (ts->n == sizeof ts->t / sizeof ts->t[0])
        return false;
    if (pthread_create(&ts->t[ts->n], NULL, fn, arg) != 0)
        return false;
    ts->n++;
    return true;
}

void t_threads_join(t_threads *ts)
{
    for (unsigned i = 0; i < ts->n; i++)
        pthread_join(ts->t[i], NULL);
    ts->n = 0;
}

void *t_pool_destroyer(void *pool)
{
    ps_pool_destroy(pool);
    return NULL;
}
