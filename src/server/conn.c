/* The connection layer: a connection's input and output buffers (a
 * worker's scratch buffers lent while it serves), framing lines and
 * length-delimited blocks for the handler's callbacks, flushing replies,
 * and the registry of every live connection. */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "conn.h"
#include "linger.h"
#include "net.h"
#include "reply.h"

#define PS__READ_CHUNK 16384
/* An emptied buffer over this size is freed (a large block or reply). */
#define PS__BUF_IDLE_MAX (4 * PS__READ_CHUNK)

/* A worker's scratch buffers (event mode), lent to the connection it
 * serves. Allocated on a thread's first use and freed when it exits. */
typedef struct scratch_bufs {
    char in[PS__READ_CHUNK];
    char out[PS__READ_CHUNK];
} scratch_bufs;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_ok;

static void scratch_key_init(void)
{
    scratch_ok = pthread_key_create(&scratch_key, free) == 0;
}

/* The calling thread's scratch buffers, or NULL (then nothing is lent). */
static scratch_bufs *scratch(void)
{
    static _Thread_local scratch_bufs *mine;
    if (mine != NULL)
        return mine;
    pthread_once(&scratch_once, scratch_key_init);
    if (!scratch_ok)
        return NULL;
    scratch_bufs *s = malloc(sizeof *s);
    if (s != NULL && pthread_setspecific(scratch_key, s) != 0) {
        free(s);
        s = NULL;
    }
    mine = s;
    return s;
}

/* Lends the calling worker's scratch buffer (for the connection's input or
 * its output) to a connection that may borrow and holds no memory there. */
static void borrow(const ps_conn *c, ps__buf *buf, bool input)
{
    if (buf->data != NULL || !c->borrow)
        return;
    scratch_bufs *s = scratch();
    if (s != NULL)
        ps__buf_lend(buf, input ? s->in : s->out, PS__READ_CHUNK);
}

/* See ps__conn_watch_handlers; NULL on threads nobody watches. */
static _Thread_local _Atomic int64_t *handler_watch;

void ps__conn_watch_handlers(_Atomic int64_t *since)
{
    handler_watch = since;
}

/* Marks the start of a handler call at `now` (ns) for the watch (us). */
static void handler_started(int64_t now)
{
    if (handler_watch != NULL)
        atomic_store_explicit(handler_watch, now / 1000, memory_order_relaxed);
}

/* After a handler call that began at `began` (ns): no call in progress for
 * the watch; a call past slow_handler_ms is logged and counted, once.
 * Returns the time it ended (ns). */
static int64_t handler_ended(ps_conn *c, int64_t began, const char *what)
{
    int64_t now = ps__now_ns();
    if (handler_watch != NULL)
        atomic_store_explicit(handler_watch, 0, memory_order_relaxed);
    unsigned slow_ms = PS__LIMIT(c->srv, slow_handler_ms);
    if (slow_ms > 0 && now - began >= (int64_t)slow_ms * 1000000) {
        atomic_fetch_add_explicit(&c->srv->c.slow_handlers, 1, memory_order_relaxed);
        ps_log_warn("connection %llu from %s: handler %s ran %lld ms (slow_handler_ms %u)",
                    (unsigned long long)c->id, c->peer, what,
                    (long long)((now - began) / 1000000), slow_ms);
    }
    return now;
}

/* Notes where the output of the handler call about to begin starts. */
static void mark_call(ps_conn *c)
{
    c->mark.out = ps__buf_size(&c->out);
    c->mark.refs = c->refs.n;
    c->mark.tail = NULL;
    if (c->replies != NULL)
        c->mark.tail = ps__conn_hold_mark(c, &c->mark.held);
}

ps_conn *ps__conn_new(ps_server *srv, int fd, const struct sockaddr *peer)
{
    ps_conn *c = calloc(1, sizeof *c + srv->dispatch->conn_size);
    if (c == NULL)
        return NULL; /* fd stays the caller's */
    c->srv = srv;
    c->fd = fd;
    c->tp = &ps__transport_tcp;
    c->id = atomic_fetch_add_explicit(&srv->next_conn_id, 1, memory_order_relaxed) + 1;
    atomic_init(&c->last_line_ms, ps__now_ms());
    ps__format_addr(peer, c->peer, sizeof c->peer);
    c->created_ms = ps__now_ms();
    atomic_init(&c->lines, 0);
    atomic_init(&c->tp_ready, false);
    ps__registry *r = &srv->registry[c->id % PS__STRIPES];
    ps__lock(&r->lock);
    c->reg_next = r->head;
    if (r->head != NULL)
        r->head->reg_prev = c;
    r->head = c;
    ps__unlock(&r->lock);
    return c;
}

int ps__conn_handshake(ps_conn *c)
{
    if (!ps__conn_handshaking(c))
        return 0;
    if (c->tp->handshake == NULL) {
        atomic_store_explicit(&c->tp_ready, true, memory_order_release);
        return 0;
    }
    int64_t began = ps__now_ns();
    handler_started(began);
    int rc = c->tp->handshake(c);
    if (handler_watch != NULL)
        atomic_store_explicit(handler_watch, 0, memory_order_relaxed);
    if (rc == 0) {
        atomic_store_explicit(&c->tp_ready, true, memory_order_release);
        atomic_fetch_add_explicit(&c->srv->c.tls_handshakes, 1, memory_order_relaxed);
        ps_conn_tls_info info;
        if (ps__conn_tls_info(c, &info))
            ps_log_debug("connection %llu from %s: %s %s%s%s", (unsigned long long)c->id,
                         c->peer, info.version, info.cipher, info.peer[0] ? " peer " : "",
                         info.peer);
    } else if (rc != -EAGAIN) {
        atomic_fetch_add_explicit(&c->srv->c.tls_errors, 1, memory_order_relaxed);
        ps_log_debug("connection %llu from %s: %s handshake failed", (unsigned long long)c->id,
                     c->peer, c->tp->name);
    }
    return rc;
}

int64_t ps__conn_handshake_deadline(const ps_conn *c)
{
    return c->created_ms + (int64_t)c->srv->cfg.tls_handshake_timeout * 1000;
}

int ps__conn_open(ps_conn *c)
{
    c->opened = true;
    atomic_store_explicit(&c->last_line_ms, ps__now_ms(), memory_order_relaxed);
    const ps_handler *h = c->srv->handler;
    if (h->on_open == NULL)
        return PS_CONTINUE;
    int64_t began = ps__now_ns();
    handler_started(began);
    mark_call(c);
    int rc = h->on_open(c, c->srv->ud);
    handler_ended(c, began, "on_open");
    return rc;
}

void ps__conn_timed_out(ps_conn *c, bool send)
{
    ps_server *srv = c->srv;
    if (ps__conn_handshaking(c)) {
        atomic_fetch_add_explicit(&srv->c.tls_timeouts, 1, memory_order_relaxed);
        ps_log_info("connection %llu from %s: no %s handshake in %us, closing",
                    (unsigned long long)c->id, c->peer, c->tp->name,
                    srv->cfg.tls_handshake_timeout);
        return;
    }
    atomic_fetch_add_explicit(send ? &srv->c.send_timeouts : &srv->c.idle_timeouts, 1,
                              memory_order_relaxed);
    ps_log_info("connection %llu from %s: %s for %us, closing", (unsigned long long)c->id,
                c->peer, send ? "not reading" : "idle",
                send ? PS__LIMIT(srv, send_timeout) : PS__LIMIT(srv, idle_timeout));
}

void ps__conn_each(ps_server *srv, bool (*fn)(const ps_conn *c, void *arg), void *arg)
{
    for (int i = 0; i < PS__STRIPES; i++) {
        ps__registry *r = &srv->registry[i];
        bool more = true;
        ps__lock(&r->lock);
        for (ps_conn *c = r->head; c != NULL && more; c = c->reg_next)
            more = fn(c, arg);
        ps__unlock(&r->lock);
        if (!more)
            return;
    }
}

void ps__conn_end(ps_conn *c)
{
    ps_server *srv = c->srv;
    ps__registry *r = &srv->registry[c->id % PS__STRIPES];
    ps__lock(&r->lock);
    if (c->reg_prev != NULL)
        c->reg_prev->reg_next = c->reg_next;
    else
        r->head = c->reg_next;
    if (c->reg_next != NULL)
        c->reg_next->reg_prev = c->reg_prev;
    ps__unlock(&r->lock);
    if (c->opened && srv->handler->on_close) {
        int64_t began = ps__now_ns();
        handler_started(began);
        srv->handler->on_close(c, srv->ud);
        handler_ended(c, began, "on_close");
    }

    ps__conn_replies_close(c);
    ps__outrefs_free(&c->refs); /* the spans not written go back now */
    if (c->tp->shutdown != NULL)
        c->tp->shutdown(c);
    if (c->tp->free != NULL)
        c->tp->free(c);
    ps__linger_close(srv, c->fd);

    uint64_t left = atomic_fetch_sub_explicit(&srv->c.curr_connections, 1,
                                              memory_order_relaxed) - 1;
    ps_log_debug("connection %llu from %s closed (%llu active)",
                (unsigned long long)c->id, c->peer, (unsigned long long)left);
    ps__buf_free(&c->in);
    ps__buf_free(&c->out);
}

void ps__conn_close(ps_conn *c)
{
    ps__conn_end(c);
    free(c);
}

/* Appends to the output (lent a scratch buffer when it has none), within
 * limits.max_output. */
static int out_append(ps_conn *c, const void *data, size_t len)
{
    if (ps__buf_size(&c->out) + len > PS__LIMIT(c->srv, max_output)) {
        c->overflow = true;
        return -ENOBUFS;
    }
    borrow(c, &c->out, false);
    return ps__buf_append(&c->out, data, len, PS__OUT_MIN);
}

int ps_conn_send(ps_conn *c, const void *data, size_t len)
{
    if (c->overflow)
        return -ENOBUFS;
    if (c->replies != NULL) {
        int rc = ps__conn_hold(c, data, len);
        if (rc <= 0)
            return rc;
    }
    return out_append(c, data, len);
}

int ps_conn_send_ref(ps_conn *c, const void *data, size_t len, void (*release)(void *arg),
                     void *arg)
{
    int rc = 0;
    if (c->overflow)
        rc = -ENOBUFS;
    else if (len == 0)
        rc = 0;
    else if (c->replies != NULL && ps__conn_replies_pending(c))
        rc = ps_conn_send(c, data, len); /* held behind a reply: a copy */
    else if (ps__outrefs_add(&c->refs, &c->out, data, len, release, arg) == 0)
        return 0;
    else
        rc = -ENOMEM;
    if (release != NULL)
        release(arg);
    return rc;
}

int ps_conn_unsend(ps_conn *c)
{
    if (c->replies != NULL) {
        size_t held;
        if (ps__conn_hold_mark(c, &held) != c->mark.tail)
            return -EBUSY; /* a reply was deferred meanwhile */
        if (c->mark.tail != NULL)
            return ps__conn_hold_truncate(c, c->mark.held);
    }
    ps__buf_truncate(&c->out, c->mark.out);
    ps__outrefs_truncate(&c->refs, c->mark.refs);
    return 0;
}

int ps_conn_tls(const ps_conn *c, ps_conn_tls_info *info)
{
    return ps__conn_tls_info(c, info) ? 0 : -ENOTSUP;
}

uint64_t ps_conn_id(const ps_conn *c) { return c->id; }
const char *ps_conn_peer(const ps_conn *c) { return c->peer; }
void ps_conn_set_data(ps_conn *c, void *data) { c->data = data; }
void *ps_conn_get_data(const ps_conn *c) { return c->data; }

ssize_t ps__conn_read(ps_conn *c)
{
    ps__buf *in = &c->in;
    borrow(c, in, true);
    ps__buf_compact(in);
    if (ps__buf_room(in) < PS__READ_CHUNK / 4) {
        /* Grow only as far as one maximal partial line (or the block asked
         * for, ps_conn_read_bytes) plus a read: the framer rejects anything
         * longer, so this bounds memory. */
        size_t most = PS__LIMIT(c->srv, max_line) + 2;
        if (c->block_want > most && !c->block_discard)
            most = c->block_want;
        size_t limit = most + PS__READ_CHUNK;
        size_t cap = in->cap * 2;
        if (cap < PS__READ_CHUNK)
            cap = PS__READ_CHUNK;
        if (cap > limit)
            cap = limit;
        if (cap <= in->len)
            return -ENOBUFS;
        if (ps__buf_resize(in, cap) < 0)
            return -ENOMEM;
    }
    bool more = false;
    ssize_t r = c->tp->read(c, in->data + in->len, ps__buf_room(in), &more);
    if (r > 0) {
        in->len += (size_t)r;
        c->drained = !more;
        atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->bytes_in, (uint64_t)r,
                                  memory_order_relaxed);
    }
    return r;
}

bool ps__conn_input_pending(const ps_conn *c)
{
    return c->tp->pending != NULL && c->tp->pending(c);
}

/* The transport's gathered write, for the output queue. */
static ssize_t conn_writev(void *ctx, const struct iovec *iov, int iovcnt)
{
    ps_conn *c = ctx;
    return c->tp->writev(c, iov, iovcnt);
}

void ps__conn_refuse(ps_conn *c, const char *msg)
{
    struct iovec iov = {.iov_base = (void *)msg, .iov_len = strlen(msg)};
    (void)c->tp->writev(c, &iov, 1);
}

bool ps__conn_has_line(const ps_conn *c)
{
    size_t have = ps__buf_size(&c->in);
    if (c->block_want > 0) /* a whole block (or bytes to discard) is as good */
        return have > 0 && (c->block_discard || have >= c->block_want);
    return have > 0 && memchr(ps__buf_head(&c->in), '\n', have) != NULL;
}

int ps_conn_read_bytes(ps_conn *c, size_t n, ps_bytes_fn fn)
{
    if (n == 0)
        return -EINVAL;
    if (c->block_want > 0)
        return -EBUSY;
    if (fn != NULL && n > PS__LIMIT(c->srv, max_block))
        return -EMSGSIZE;
    c->block_want = n;
    c->block_fn = fn;
    c->block_discard = fn == NULL;
    return 0;
}

/* The pending block's part of the input: 1 when a whole block went to its
 * fn (*rc its answer; *began as for a line's handler call) or discarded
 * bytes finished one, 0 when more bytes are needed (discarded ones
 * consumed meanwhile). */
static int take_block(ps_conn *c, int *rc, int64_t *began)
{
    size_t have = ps__buf_size(&c->in);
    if (c->block_discard) {
        size_t n = have < c->block_want ? have : c->block_want;
        ps__buf_consume(&c->in, n);
        c->block_want -= n;
        return c->block_want == 0 ? 1 : 0;
    }
    if (have < c->block_want)
        return 0;
    size_t n = c->block_want;
    ps_bytes_fn fn = c->block_fn;
    c->block_want = 0; /* fn may ask for the next block */
    c->block_fn = NULL;
    const char *data = ps__buf_head(&c->in); /* stays put until fn returns */
    ps__buf_consume(&c->in, n);
    atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->blocks, 1, memory_order_relaxed);
    if (*began == 0)
        *began = ps__now_ns();
    handler_started(*began);
    mark_call(c);
    *rc = fn(c, data, n, c->srv->ud);
    *began = handler_ended(c, *began, "on_bytes");
    return 1;
}

int ps__conn_process(ps_conn *c)
{
    ps_server *srv = c->srv;
    const ps_handler *h = srv->handler;
    uint64_t lines = 0, blocks = 0;
    int rc = PS_CONTINUE;
    int64_t began = 0; /* of the next handler call; one clock read per call */
    ps__hist *hist = NULL; /* this thread's handler time, found once */

    while (ps__conn_pending_output(c) < PS__OUT_HIGH_WATER && !c->overflow) {
        if (c->block_want > 0) {
            int r = PS_CONTINUE;
            if (!take_block(c, &r, &began))
                break;
            blocks++;
            if (r != PS_CONTINUE) {
                rc = PS_CLOSE;
                break;
            }
            continue;
        }
        ps_line line;
        ssize_t n = ps_lineframe_next(ps__buf_head(&c->in), ps__buf_size(&c->in),
                                      PS__LIMIT(srv, max_line), &line);
        if (n == 0)
            break;
        if (n < 0) {
            atomic_fetch_add_explicit(&srv->c.lines_too_long, 1, memory_order_relaxed);
            ps_log_info("connection %llu from %s: line longer than %zu bytes",
                        (unsigned long long)c->id, c->peer, PS__LIMIT(srv, max_line));
            static const char msg[] = "ERROR line too long\r\n";
            ps_conn_send(c, msg, sizeof msg - 1);
            ps__buf_consume(&c->in, ps__buf_size(&c->in)); /* the rest of that line goes */
            rc = PS_CLOSE;
            break;
        }
        ps__buf_consume(&c->in, (size_t)n);
        lines++;
        if (h->on_line == NULL)
            continue;
        if (began == 0)
            began = ps__now_ns();
        handler_started(began);
        mark_call(c);
        int r = h->on_line(c, &line, srv->ud);
        int64_t ended = handler_ended(c, began, "on_line");
        if (hist == NULL)
            hist = ps__handler_time_of(srv);
        ps__hist_observe(hist, ended > began ? (uint64_t)(ended - began) : 0);
        began = ended;
        if (r != PS_CONTINUE) {
            rc = PS_CLOSE;
            break;
        }
    }
    if (lines > 0 || blocks > 0) {
        /* The last handler call's end, when there was one: no clock read.
         * A whole block restarts the idle clock as a line does. */
        int64_t now_ms = began != 0 ? began / 1000000 : ps__now_ms();
        atomic_store_explicit(&c->last_line_ms, now_ms, memory_order_relaxed);
    }
    if (lines > 0) {
        atomic_fetch_add_explicit(&ps__stripe_of(srv)->lines, lines, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->lines, lines, memory_order_relaxed);
    }
    ps__buf_shed(&c->in, PS__BUF_IDLE_MAX);
    return rc;
}

/* A connection past limits.max_output: counted and logged once; nothing
 * more of its output is written (a reply cut short must never be read as
 * whole, nor a later one as its answer). */
static int overflowed(ps_conn *c)
{
    if (!c->overflow_told) {
        c->overflow_told = true;
        atomic_fetch_add_explicit(&c->srv->c.output_overflows, 1, memory_order_relaxed);
        ps_log_warn("connection %llu from %s: output over limits.max_output (%zu bytes), "
                    "closing", (unsigned long long)c->id, c->peer,
                    PS__LIMIT(c->srv, max_output));
    }
    return -ENOBUFS;
}

int ps__conn_flush(ps_conn *c)
{
    for (;;) {
        int waiting = 0;
        if (c->replies != NULL) {
            borrow(c, &c->out, false);
            waiting = ps__conn_promote(c);
            if (waiting < 0)
                return -ENOMEM;
        }
        if (c->overflow)
            return overflowed(c);
        c->tp_want = POLLOUT;
        ssize_t w = ps__outrefs_write(&c->refs, &c->out, conn_writev, c);
        if (w < 0)
            return (int)w;
        if (w > 0)
            atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->bytes_out, (uint64_t)w,
                                      memory_order_relaxed);
        if (ps__conn_pending_output(c) > 0)
            return -EAGAIN;
        /* All written: bytes from other threads that waited for room go
         * now (a second round at most: the output is empty). */
        if (waiting == 0)
            break;
    }
    ps__buf_shed(&c->out, PS__BUF_IDLE_MAX);
    return 0;
}

/* The earlier of two deadlines; -1 is none. */
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
int ps__conn_flush_all(ps_conn *c)
{
    ps_server *srv = c->srv;
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
            {.fd = c->fd, .events = c->tp_want}, /* TLS may want to read first */
            {.fd = srv->stop_fd, .events = POLLIN},
        };
        int n = poll(p, stop_deadline > 0 ? 1 : 2, ps__ms_until(until, now));
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

int ps__conn_shrink(ps_conn *c)
{
    /* A partial line, or replies waiting for room, stay. */
    int rc = ps__buf_keep(&c->in);
    if (rc == 0)
        rc = ps__buf_keep(&c->out);
    return rc;
}
