/*
 * dispatch = connection: a thread pool of connections. A worker owns one
 * connection from greeting to close (ps__serve_blocking); at most
 * `workers` clients are served at once and the others wait in the pool's
 * queue.
 */
#include "internal.h"
#include "blocking.h"
#include "conn.h"

/* Job: ps__serve_blocking on a pool worker. */
static void connection_job(void *arg)
{
    ps_conn *c = arg;
    /* The worker serves this connection alone until it closes: it lends
     * the connection its scratch buffers, so a short session allocates no
     * buffer of its own (thread mode does not: each thread would keep its
     * own pair for one connection). */
    c->borrow = true;
    ps__serve_blocking(c);
}

/* A worker of the pool serves the connection until it closes. */
static int connection_take(ps_server *srv, ps_conn *c)
{
    return ps_pool_try_submit(srv->pool, connection_job, c);
}

const ps__dispatch ps__dispatch_connection = {
    .uses_pool = true,
    .take = connection_take,
    .busy_why = "queue full",
    .tick_ms = -1,
};
