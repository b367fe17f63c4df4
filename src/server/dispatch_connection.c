/*
 * dispatch = connection: the seed's ThreadPool server. A worker owns one
 * connection from greeting to close; at most `workers` clients are served
 * at once and the others wait in the pool's queue. The same blocking loop
 * serves dispatch = thread, on a thread of the connection's own.
 */
#include <errno.h>
#include <poll.h>

#include "internal.h"
#include "poolsrv/log.h"

/* Milliseconds until `deadline`, clamped to [0, INT_MAX]; -1 for none. */
static int ms_until(int64_t deadline, int64_t now)
{
    if (deadline < 0)
        return -1;
    if (deadline <= now)
        return 0;
    return deadline - now > 0x7fffffff ? 0x7fffffff : (int)(deadline - now);
}

static int64_t earliest(int64_t a, int64_t b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* Writes all queued output, waiting for the socket while the client reads.
 * The send deadline restarts whenever the client takes bytes, so only a
 * client that stops reading for send_timeout seconds is dropped. */
static int flush_all(ps_conn *c, ps_server *srv)
{
    int64_t deadline = ps__now_ms() + (int64_t)PS__LIMIT(srv, send_timeout) * 1000;
    size_t pending = ps__conn_pending_output(c);
    for (;;) {
        int rc = ps__conn_flush(c);
        if (rc != -EAGAIN)
            return rc;
        int64_t now = ps__now_ms();
        size_t left = ps__conn_pending_output(c);
        if (left < pending) {
            pending = left;
            deadline = now + (int64_t)PS__LIMIT(srv, send_timeout) * 1000;
        }
        int64_t stop_deadline = atomic_load_explicit(&srv->stop_deadline_ms, memory_order_relaxed);
        int64_t until = earliest(deadline, stop_deadline > 0 ? stop_deadline : -1);
        /* Until the server stops, its stop signal ends the wait too: the
         * stop deadline then bounds it (the signal stays readable, so it is
         * watched only before). */
        struct pollfd p[2] = {
            {.fd = c->fd, .events = POLLOUT},
            {.fd = srv->stop_fd, .events = POLLIN},
        };
        int n = poll(p, stop_deadline > 0 ? 1 : 2, ms_until(until, now));
        if (n < 0 && errno != EINTR)
            return -errno;
        if (n > 0 && stop_deadline <= 0 && p[1].revents)
            continue; /* stopping: wait again, bounded by its deadline */
        if (n == 0) {
            if (until == deadline)
                ps__conn_timed_out(c, true);
            return -ETIMEDOUT;
        }
    }
}

/* Waits for input (when `input`) or a finished deferred reply. Returns 1
 * when the socket is readable (or failed: the read says how), 2 when a
 * reply is ready to go, 0 on idle timeout, -1 when the server is stopping. */
static int wait_input(ps_conn *c, ps_server *srv, bool input)
{
    int64_t deadline = PS__LIMIT(srv, idle_timeout) > 0
                           ? ps__conn_last_line(c) + (int64_t)PS__LIMIT(srv, idle_timeout) * 1000
                           : -1;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = srv->stop_fd, .events = POLLIN},
            {.fd = input ? c->fd : -1, .events = POLLIN},
            {.fd = ps__conn_wake_fd(c), .events = POLLIN},
        };
        int n = poll(p, 3, ms_until(deadline, ps__now_ms()));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return 1; /* let the read report it */
        }
        if (p[0].revents)
            return -1;
        if (p[2].revents)
            return 2;
        if (p[1].revents)
            return 1;
        if (n == 0) {
            ps__conn_timed_out(c, false);
            return 0;
        }
    }
}

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

void ps__serve_blocking(ps_conn *c)
{
    ps_server *srv = c->srv;

    /* Queued connections not yet greeted when the server stops are closed
     * without being opened (they are owed no reply), but told why, so that
     * a client can tell a stop from a crash. */
    if (atomic_load_explicit(&srv->stopping, memory_order_acquire)) {
        atomic_fetch_add_explicit(&srv->c.rejected_shutdown, 1, memory_order_relaxed);
        ps__write_best_effort(c->fd, "ERROR server shutting down\r\n");
        ps__conn_close(c);
        return;
    }

    /* `ended`: no more lines will be read (the handler closed, or the
     * client's stream ended); the connection stays until the replies it
     * deferred have gone out. */
    bool ended = ps__conn_open(c) == PS_CLOSE;
    for (;;) {
        if (flush_all(c, srv) < 0)
            break;
        if (c->closing)
            ended = true; /* a deferred reply was finished with PS_CLOSE */
        if (ended) {
            if (!ps__conn_replies_pending(c) || wait_input(c, srv, false) <= 0)
                break;
            continue;
        }
        if (ps__conn_has_line(c)) {
            /* process stopped at its output high-water mark: more lines in
             * hand, answer them before reading anything new. */
            ended = ps__conn_process(c) == PS_CLOSE;
            continue;
        }
        int w = wait_input(c, srv, true);
        if (w <= 0)
            break;
        if (w == 2)
            continue; /* a deferred reply is done: write it */
        ssize_t r = ps__conn_read(c);
        if (r == -EAGAIN)
            continue;
        if (r < 0)
            break; /* a reset or an error: nothing more to answer */
        ended = r == 0 || ps__conn_process(c) == PS_CLOSE;
    }
    ps__conn_close(c);
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
