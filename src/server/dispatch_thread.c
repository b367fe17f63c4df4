/*
 * dispatch = thread: a thread per connection, capped by max_connections.
 * Each connection thread runs the same blocking loop as dispatch =
 * connection. Threads are never detached: a finished one is
 * joined by the acceptor, the rest by stop.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "blocking.h"

/* Echo needs little stack; 10,000 default 8 MiB stacks would not. */
#define PS__CONN_THREAD_STACK (256 * 1024)

typedef struct conn_thread conn_thread;
struct conn_thread {
    pthread_t thread;
    struct thread_state *ts;
    ps_conn *conn;
    atomic_bool done;
    conn_thread *next;
};

/* Thread mode's state (the server's mode pointer). */
typedef struct thread_state {
    pthread_mutex_t lock; /* guards threads */
    conn_thread *threads;
    atomic_uint live;     /* threads serving a connection now */
} thread_state;

static inline thread_state *ts_of(const ps_server *srv)
{
    return srv->mode;
}

static void *conn_thread_main(void *arg)
{
    conn_thread *t = arg;
    ps__serve_blocking(t->conn); /* closes and frees the connection */
    atomic_fetch_sub_explicit(&t->ts->live, 1, memory_order_relaxed);
    atomic_store_explicit(&t->done, true, memory_order_release);
    return NULL;
}

/* Starts a thread serving conn. Returns 0 or a negative errno. */
static int thread_take(ps_server *srv, ps_conn *conn)
{
    conn_thread *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    thread_state *ts = ts_of(srv);
    t->ts = ts;
    t->conn = conn;
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setstacksize(&attr, PS__CONN_THREAD_STACK);
        atomic_fetch_add_explicit(&ts->live, 1, memory_order_relaxed);
        rc = pthread_create(&t->thread, &attr, conn_thread_main, t);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            atomic_fetch_sub_explicit(&ts->live, 1, memory_order_relaxed);
    }
    if (rc != 0) {
        free(t);
        return -rc;
    }
    ps__lock(&ts->lock);
    t->next = ts->threads;
    ts->threads = t;
    ps__unlock(&ts->lock);
    return 0;
}

/* Joins finished connection threads; with `all`, waits for every one. */
static void thread_reap(ps_server *srv, bool all)
{
    thread_state *ts = ts_of(srv);
    ps__lock(&ts->lock);
    conn_thread *list = ts->threads, *keep = NULL, *done = NULL;
    ts->threads = NULL;
    ps__unlock(&ts->lock);

    while (list != NULL) {
        conn_thread *t = list;
        list = t->next;
        if (all || atomic_load_explicit(&t->done, memory_order_acquire)) {
            t->next = done;
            done = t;
        } else {
            t->next = keep;
            keep = t;
        }
    }
    /* Join outside the lock: joining a running thread waits for it. */
    while (done != NULL) {
        conn_thread *t = done;
        done = t->next;
        pthread_join(t->thread, NULL);
        free(t);
    }
    if (keep != NULL) {
        ps__lock(&ts->lock);
        conn_thread *tail = keep;
        while (tail->next != NULL)
            tail = tail->next;
        tail->next = ts->threads;
        ts->threads = keep;
        ps__unlock(&ts->lock);
    }
}

static int thread_setup(ps_server *srv, ps_pool_opts *po, char *err, size_t errlen)
{
    (void)po;
    thread_state *ts = calloc(1, sizeof *ts);
    if (ts == NULL || pthread_mutex_init(&ts->lock, NULL) != 0) {
        free(ts);
        snprintf(err, errlen, "thread dispatch: %s", ps_strerror(-ENOMEM));
        return -ENOMEM;
    }
    srv->mode = ts;
    return 0;
}

/* After stop has joined every thread (tick with all). */
static void thread_teardown(ps_server *srv)
{
    thread_state *ts = ts_of(srv);
    if (ts == NULL)
        return;
    pthread_mutex_destroy(&ts->lock);
    free(ts);
    srv->mode = NULL;
}

/* Threads serving a connection now (0 before start and after stop). */
static unsigned live_threads(const ps_server *srv)
{
    return ts_of(srv) != NULL ? atomic_load(&ts_of(srv)->live) : 0;
}

/* No pool: a thread per connection, up to max_connections. */
static void thread_pool_stats(const ps_server *srv, ps_pool_stats *st)
{
    unsigned busy = live_threads(srv);
    st->max_threads = PS__LIMIT(srv, max_connections);
    st->busy_threads = busy;
    st->available_threads = st->max_threads > busy ? st->max_threads - busy : 0;
}

static void thread_add_stats(const ps_server *srv, ps__stat_fn emit, void *arg)
{
    emit(arg, "connection_threads", live_threads(srv));
}

/* No pool: a thread per connection, joined by the acceptor once a second
 * and by stop for the rest. */
const ps__dispatch ps__dispatch_thread = {
    .uses_pool = false,
    .setup = thread_setup,
    .take = thread_take,
    .busy_why = "no thread could be started",
    .tick = thread_reap,
    .tick_ms = 1000,
    .teardown = thread_teardown,
    .pool_stats = thread_pool_stats,
    .add_stats = thread_add_stats,
};
