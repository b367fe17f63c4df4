#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"

#define PS__READ_CHUNK 16384
#define PS__OUT_HIGH_WATER (256 * 1024)


ps_conn *ps__conn_new(ps_server *srv, int fd, const struct sockaddr *peer)
{
    ps_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        close(fd);
        return NULL;
    }
    c->srv = srv;
    c->fd = fd;
    c->id = atomic_fetch_add_explicit(&srv->next_conn_id, 1, memory_order_relaxed) + 1;
    c->last_line_ms = ps__now_ms();
    ps__format_addr(peer, c->peer, sizeof c->peer);
    return c;
}

int ps__conn_open(ps_conn *c)
{
    c->opened = true;
    c->last_line_ms = ps__now_ms();
    const ps_handler *h = c->srv->handler;
    return h->on_open ? h->on_open(c, c->srv->ud) : PS_CONTINUE;
}

void ps__conn_close(ps_conn *c)
{
    ps_server *srv = c->srv;
    if (c->opened && srv->handler->on_close)
        srv->handler->on_close(c, srv->ud);

    ps__linger_close(srv, c->fd);

    uint64_t left = atomic_fetch_sub_explicit(&srv->c.curr_connections, 1,
                                              memory_order_relaxed) - 1;
    ps_log_info("connection %llu from %s closed (%llu active)",
                (unsigned long long)c->id, c->peer, (unsigned long long)left);
    pthread_mutex_destroy(&c->lock);
    free(c->in);
    free(c->out);
    free(c);
}

int ps_conn_send(ps_conn *c, const void *data, size_t len)
{
    if (c->out_len + len > c->out_cap) {
        /* Reuse the space in front of the unwritten bytes first. */
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 4096;
            while (cap < c->out_len + len)
                cap *= 2;
            char *p = realloc(c->out, cap);
            if (p == NULL)
                return -ENOMEM;
            c->out = p;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    return 0;
}

uint64_t ps_conn_id(const ps_conn *c) { return c->id; }
const char *ps_conn_peer(const ps_conn *c) { return c->peer; }
void ps_conn_set_data(ps_conn *c, void *data) { c->data = data; }
void *ps_conn_get_data(const ps_conn *c) { return c->data; }
size_t ps__conn_pending_output(const ps_conn *c) { return c->out_len - c->out_off; }

ssize_t ps__conn_read(ps_conn *c)
{
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_cap - c->in_len < PS__READ_CHUNK / 4) {
        /* Grow only as far as one maximal partial line plus a read: the
         * framer rejects anything longer, so this bounds memory. */
        size_t limit = c->srv->cfg.max_line + 2 + PS__READ_CHUNK;
        size_t cap = c->in_cap ? c->in_cap * 2 : PS__READ_CHUNK;
        if (cap > limit)
            cap = limit;
        if (cap <= c->in_len)
            return -ENOBUFS;
        char *p = realloc(c->in, cap);
        if (p == NULL)
            return -ENOMEM;
        c->in = p;
        c->in_cap = cap;
    }
    for (;;) {
        size_t room = c->in_cap - c->in_len;
        ssize_t r = recv(c->fd, c->in + c->in_len, room, 0);
        if (r > 0) {
            c->in_len += (size_t)r;
            c->drained = (size_t)r < room;
            atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->bytes_in, (uint64_t)r,
                                      memory_order_relaxed);
            return r;
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return -EAGAIN;
        return -errno;
    }
}

bool ps__conn_has_line(const ps_conn *c)
{
    return c->in_len > c->in_off &&
           memchr(c->in + c->in_off, '\n', c->in_len - c->in_off) != NULL;
}

int ps__conn_process(ps_conn *c)
{
    ps_server *srv = c->srv;
    const ps_handler *h = srv->handler;
    uint64_t lines = 0;
    int rc = PS_CONTINUE;

    while (c->out_len - c->out_off < PS__OUT_HIGH_WATER) {
        ps_line line;
        ssize_t n = ps_lineframe_next(c->in + c->in_off, c->in_len - c->in_off,
                                      srv->cfg.max_line, &line);
        if (n == 0)
            break;
        if (n < 0) {
            atomic_fetch_add_explicit(&srv->c.lines_too_long, 1, memory_order_relaxed);
            ps_log_info("connection %llu from %s: line longer than %zu bytes",
                        (unsigned long long)c->id, c->peer, srv->cfg.max_line);
            static const char msg[] = "ERROR line too long\r\n";
            ps_conn_send(c, msg, sizeof msg - 1);
            c->in_off = c->in_len; /* the rest of that line is discarded */
            rc = PS_CLOSE;
            break;
        }
        c->in_off += (size_t)n;
        lines++;
        if (h->on_line && h->on_line(c, &line, srv->ud) != PS_CONTINUE) {
            rc = PS_CLOSE;
            break;
        }
    }
    if (lines > 0) {
        c->last_line_ms = ps__now_ms();
        atomic_fetch_add_explicit(&ps__stripe_of(srv)->lines, lines, memory_order_relaxed);
    }
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    return rc;
}

int ps__conn_flush(ps_conn *c)
{
    size_t pending = c->out_len - c->out_off;
    if (pending == 0)
        return 0;
    ssize_t w = ps__write_some(c->fd, c->out + c->out_off, pending);
    if (w < 0)
        return (int)w;
    c->out_off += (size_t)w;
    atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->bytes_out, (uint64_t)w,
                              memory_order_relaxed);
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        return 0;
    }
    return -EAGAIN;
}

void ps__conn_shrink(ps_conn *c)
{
    if (c->in_len == c->in_off) {
        free(c->in);
        c->in = NULL;
        c->in_off = c->in_len = c->in_cap = 0;
    }
    if (c->out_len == c->out_off) {
        free(c->out);
        c->out = NULL;
        c->out_off = c->out_len = c->out_cap = 0;
    }
}
