/*
 * Serves one connection on the calling thread, blocking in poll() until
 * it closes: the loop of dispatch = connection (on a pool worker) and of
 * dispatch = thread (on a thread of the connection's own).
 */
#include <errno.h>
#include <poll.h>

#include "internal.h"
#include "blocking.h"
#include "conn.h"
#include "net.h"
#include "reply.h"

/* Waits for input (when `input`) or a finished deferred reply. Returns 1
 * when the socket is readable (or failed: the read says how), 2 when a
 * reply is ready to go, 0 on idle timeout, -1 when the server is stopping. */
static int wait_input(ps_conn *c, ps_server *srv, bool input)
{
    if (input && ps__conn_input_pending(c))
        return 1; /* held by the transport: no event will come for it */
    int64_t deadline = PS__LIMIT(srv, idle_timeout) > 0
                           ? ps__conn_last_line(c) + (int64_t)PS__LIMIT(srv, idle_timeout) * 1000
                           : -1;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = srv->stop_fd, .events = POLLIN},
            {.fd = input ? c->fd : -1, .events = POLLIN},
            {.fd = ps__conn_wake_fd(c), .events = POLLIN},
        };
        int n = poll(p, 3, ps__ms_until(deadline, ps__now_ms()));
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

/* The transport's handshake (TLS), waiting in poll for the direction it
 * asks, until tls.handshake_timeout or the stop. True once done. */
static bool handshake(ps_conn *c, ps_server *srv)
{
    int64_t deadline = ps__conn_handshake_deadline(c);
    for (;;) {
        int h = ps__conn_handshake(c);
        if (h != -EAGAIN)
            return h == 0;
        struct pollfd p[2] = {
            {.fd = srv->stop_fd, .events = POLLIN},
            {.fd = c->fd, .events = c->tp_want},
        };
        int n = poll(p, 2, ps__ms_until(deadline, ps__now_ms()));
        if (n < 0 && errno != EINTR)
            return false;
        if (n > 0 && p[0].revents)
            return false; /* stopping: owed nothing yet */
        if (n == 0) {
            ps__conn_timed_out(c, false);
            return false;
        }
    }
}

void ps__serve_blocking(ps_conn *c)
{
    ps_server *srv = c->srv;

    /* Queued connections not yet greeted when the server stops are closed
     * without being opened (they are owed no reply), but told why, so that
     * a client can tell a stop from a crash. */
    if (atomic_load_explicit(&srv->stopping, memory_order_acquire)) {
        atomic_fetch_add_explicit(&srv->c.rejected_shutdown, 1, memory_order_relaxed);
        ps__conn_refuse(c, "ERROR server shutting down\r\n");
        ps__conn_close(c);
        return;
    }

    /* `ended`: no more lines will be read (the handler closed, or the
     * client's stream ended); the connection stays until the replies it
     * deferred have gone out. */
    if (!handshake(c, srv)) {
        ps__conn_close(c);
        return;
    }
    bool ended = ps__conn_open(c) == PS_CLOSE;
    for (;;) {
        if (ps__conn_flush_all(c) < 0)
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

