/*
 * dispatch = thread: the seed's thread-per-connection server, capped by
 * max_connections. Each connection thread runs the same blocking loop as
 * dispatch = connection. Threads are never detached: a finished one is
 * joined by the acceptor, the rest by stop.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"
#include "poolsrv/log.h"

/* Echo needs little stack; 10,000 default 8 MiB stacks would not. */
#define PS__CONN_THREAD_STACK (256 * 1024)

struct ps__conn_thread {
    pthread_t thread;
    ps_server *srv;
    ps_conn *conn;
    atomic_bool done;
    ps__conn_thread *next;
};

static void *conn_thread_main(void *arg)
{
    ps__conn_thread *t = arg;
    ps__serve_blocking(t->conn); /* closes and frees the connection */
    atomic_fetch_sub_explicit(&t->srv->c.conn_threads, 1, memory_order_relaxed);
    atomic_store_explicit(&t->done, true, memory_order_release);
    return NULL;
}

/* Starts a thread serving conn. Returns 0 or a negative errno. */
static int thread_take(ps_server *srv, ps_conn *conn)
{
    ps__conn_thread *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    t->srv = srv;
    t->conn = conn;
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc == 0) {
        pthread_attr_setstacksize(&attr, PS__CONN_THREAD_STACK);
        atomic_fetch_add_explicit(&srv->c.conn_threads, 1, memory_order_relaxed);
        rc = pthread_create(&t->thread, &attr, conn_thread_main, t);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            atomic_fetch_sub_explicit(&srv->c.conn_threads, 1, memory_order_relaxed);
    }
    if (rc != 0) {
        free(t);
        return -rc;
    }
    ps__lock(&srv->threads_lock);
    t->next = srv->threads;
    srv->threads = t;
    ps__unlock(&srv->threads_lock);
    return 0;
}

/* Joins finished connection threads; with `all`, waits for every one. */
static void thread_reap(ps_server *srv, bool all)
{
    ps__lock(&srv->threads_lock);
    ps__conn_thread *list = srv->threads, *keep = NULL, *done = NULL;
    srv->threads = NULL;
    ps__unlock(&srv->threads_lock);

    while (list != NULL) {
        ps__conn_thread *t = list;
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
        ps__conn_thread *t = done;
        done = t->next;
        pthread_join(t->thread, NULL);
        free(t);
    }
    if (keep != NULL) {
        ps__lock(&srv->threads_lock);
        ps__conn_thread *tail = keep;
        while (tail->next != NULL)
            tail = tail->next;
        tail->next = srv->threads;
        srv->threads = keep;
        ps__unlock(&srv->threads_lock);
    }
}

static void thread_add_stats(const ps_server *srv, ps__stat_fn emit, void *arg)
{
    emit(arg, "connection_threads", atomic_load(&srv->c.conn_threads));
}

/* No pool: a thread per connection, joined by the acceptor once a second
 * and by stop for the rest. */
const ps__dispatch ps__dispatch_thread = {
    .uses_pool = false,
    .take = thread_take,
    .busy_why = "no thread could be started",
    .tick = thread_reap,
    .tick_ms = 1000,
    .add_stats = thread_add_stats,
};
