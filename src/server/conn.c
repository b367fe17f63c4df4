/* The connection layer: a connection's input and output buffers (a
 * worker's scratch buffers lent while it serves), framing lines and
 * length-delimited blocks for the handler's callbacks, flushing replies,
 * and the registry of every live connection. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"

#define PS__READ_CHUNK 16384
#define PS__OUT_HIGH_WATER (256 * 1024)
#define PS__OUT_MIN 4096

/* A worker's scratch buffers (event mode), lent to the connection it
 * serves. Allocated on a thread's first use and freed when it exits. */
typedef struct ps__scratch {
    char in[PS__READ_CHUNK];
    char out[PS__READ_CHUNK];
} ps__scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static bool scratch_ok;

static void scratch_key_init(void)
{
    scratch_ok = pthread_key_create(&scratch_key, free) == 0;
}

/* The calling thread's scratch buffers, or NULL (then nothing is lent). */
static ps__scratch *scratch(void)
{
    static _Thread_local ps__scratch *mine;
    if (mine != NULL)
        return mine;
    pthread_once(&scratch_once, scratch_key_init);
    if (!scratch_ok)
        return NULL;
    ps__scratch *s = malloc(sizeof *s);
    if (s != NULL && pthread_setspecific(scratch_key, s) != 0) {
        free(s);
        s = NULL;
    }
    mine = s;
    return s;
}

/* Moves a buffer's bytes [off, len) to the start of a new buffer of cap
 * bytes (cap >= len - off). The old one is freed unless borrowed. */
static char *move_to_own(char *buf, size_t off, size_t len, size_t cap, bool borrowed)
{
    char *p = malloc(cap);
    if (p == NULL)
        return NULL;
    memcpy(p, buf + off, len - off);
    if (!borrowed)
        free(buf);
    return p;
}

/* Lends the calling worker's scratch buffer (the connection's input or its
 * output) to a connection that may borrow and holds no buffer there. */
static void borrow(const ps_conn *c, char **buf, size_t *cap, bool *borrowed, bool input)
{
    if (*buf != NULL || !c->borrow)
        return;
    ps__scratch *s = scratch();
    if (s == NULL)
        return;
    *buf = input ? s->in : s->out;
    *cap = PS__READ_CHUNK;
    *borrowed = true;
}

/* Gives a buffer holding len bytes room for cap: realloc, or a copy into a
 * buffer of the connection's own when it is borrowed. */
static int grow(char **buf, size_t len, size_t *cap, size_t want, bool *borrowed)
{
    char *p = *borrowed ? move_to_own(*buf, 0, len, want, true) : realloc(*buf, want);
    if (p == NULL)
        return -ENOMEM;
    *buf = p;
    *cap = want;
    *borrowed = false;
    return 0;
}


/* See ps__conn_watch_handlers; NULL on threads nobody watches. */
static _Thread_local _Atomic int64_t *handler_watch;

void ps__conn_watch_handlers(_Atomic int64_t *since)
{
    handler_watch = since;
}

/* Marks the start of a handler call at `now` (us) for the watch. */
static void handler_started(int64_t now)
{
    if (handler_watch != NULL)
        atomic_store_explicit(handler_watch, now, memory_order_relaxed);
}

/* After a handler call that began at `began`: no call in progress for the
 * watch; a call past slow_handler_ms is logged and counted, once. Returns
 * the time it ended. */
static int64_t handler_ended(ps_conn *c, int64_t began, const char *what)
{
    int64_t now = ps__now_us();
    if (handler_watch != NULL)
        atomic_store_explicit(handler_watch, 0, memory_order_relaxed);
    unsigned slow_ms = PS__LIMIT(c->srv, slow_handler_ms);
    if (slow_ms > 0 && now - began >= (int64_t)slow_ms * 1000) {
        atomic_fetch_add_explicit(&c->srv->c.slow_handlers, 1, memory_order_relaxed);
        ps_log_warn("connection %llu from %s: handler %s ran %lld ms (slow_handler_ms %u)",
                    (unsigned long long)c->id, c->peer, what,
                    (long long)((now - began) / 1000), slow_ms);
    }
    return now;
}

ps_conn *ps__conn_new(ps_server *srv, int fd, const struct sockaddr *peer)
{
    ps_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->srv = srv;
    c->fd = fd;
    c->id = atomic_fetch_add_explicit(&srv->next_conn_id, 1, memory_order_relaxed) + 1;
    atomic_init(&c->last_line_ms, ps__now_ms());
    atomic_init(&c->state, 0);
    atomic_init(&c->want_write, false);
    atomic_init(&c->write_wait_ms, 0);
    ps__format_addr(peer, c->peer, sizeof c->peer);
    c->created_ms = ps__now_ms();
    atomic_init(&c->lines, 0);
    ps__registry *r = &srv->registry[c->id % PS__STRIPES];
    ps__lock(&r->lock);
    c->reg_next = r->head;
    if (r->head != NULL)
        r->head->reg_prev = c;
    r->head = c;
    ps__unlock(&r->lock);
    return c;
}

int ps__conn_open(ps_conn *c)
{
    c->opened = true;
    atomic_store_explicit(&c->last_line_ms, ps__now_ms(), memory_order_relaxed);
    const ps_handler *h = c->srv->handler;
    if (h->on_open == NULL)
        return PS_CONTINUE;
    int64_t began = ps__now_us();
    handler_started(began);
    int rc = h->on_open(c, c->srv->ud);
    handler_ended(c, began, "on_open");
    return rc;
}

void ps__conn_timed_out(ps_conn *c, bool send)
{
    ps_server *srv = c->srv;
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
        int64_t began = ps__now_us();
        handler_started(began);
        srv->handler->on_close(c, srv->ud);
        handler_ended(c, began, "on_close");
    }

    ps__conn_replies_close(c);
    ps__linger_close(srv, c->fd);

    uint64_t left = atomic_fetch_sub_explicit(&srv->c.curr_connections, 1,
                                              memory_order_relaxed) - 1;
    ps_log_info("connection %llu from %s closed (%llu active)",
                (unsigned long long)c->id, c->peer, (unsigned long long)left);
    if (!c->in_borrowed)
        free(c->in);
    if (!c->out_borrowed)
        free(c->out);
    c->in = c->out = NULL;
    c->in_borrowed = c->out_borrowed = false;
}

void ps__conn_close(ps_conn *c)
{
    ps__conn_end(c);
    free(c);
}

int ps_conn_send(ps_conn *c, const void *data, size_t len)
{
    if (c->replies != NULL) {
        int rc = ps__conn_hold(c, data, len);
        if (rc <= 0)
            return rc;
    }
    return ps__conn_out_append(c, data, len);
}

int ps__conn_out_append(ps_conn *c, const void *data, size_t len)
{
    if (len == 0)
        return 0;
    borrow(c, &c->out, &c->out_cap, &c->out_borrowed, false);
    if (c->out_len + len > c->out_cap) {
        /* Reuse the space in front of the unwritten bytes first. */
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + len > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : PS__OUT_MIN;
            while (cap < c->out_len + len)
                cap *= 2;
            if (grow(&c->out, c->out_len, &c->out_cap, cap, &c->out_borrowed) < 0)
                return -ENOMEM;
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
    borrow(c, &c->in, &c->in_cap, &c->in_borrowed, true);
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    if (c->in_cap - c->in_len < PS__READ_CHUNK / 4) {
        /* Grow only as far as one maximal partial line (or the block asked
         * for, ps_conn_read_bytes) plus a read: the framer rejects anything
         * longer, so this bounds memory. */
        size_t most = PS__LIMIT(c->srv, max_line) + 2;
        if (c->block_want > most && !c->block_discard)
            most = c->block_want;
        size_t limit = most + PS__READ_CHUNK;
        size_t cap = c->in_cap * 2;
        if (cap < PS__READ_CHUNK)
            cap = PS__READ_CHUNK;
        if (cap > limit)
            cap = limit;
        if (cap <= c->in_len)
            return -ENOBUFS;
        if (grow(&c->in, c->in_len, &c->in_cap, cap, &c->in_borrowed) < 0)
            return -ENOMEM;
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
    if (c->block_want > 0) /* a whole block (or bytes to discard) is as good */
        return c->in_len > c->in_off &&
               (c->block_discard || c->in_len - c->in_off >= c->block_want);
    return c->in_len > c->in_off &&
           memchr(c->in + c->in_off, '\n', c->in_len - c->in_off) != NULL;
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
    size_t have = c->in_len - c->in_off;
    if (c->block_discard) {
        size_t n = have < c->block_want ? have : c->block_want;
        c->in_off += n;
        c->block_want -= n;
        return c->block_want == 0 ? 1 : 0;
    }
    if (have < c->block_want)
        return 0;
    size_t n = c->block_want;
    ps_bytes_fn fn = c->block_fn;
    c->block_want = 0; /* fn may ask for the next block */
    c->block_fn = NULL;
    const char *data = c->in + c->in_off;
    c->in_off += n;
    atomic_fetch_add_explicit(&ps__stripe_of(c->srv)->blocks, 1, memory_order_relaxed);
    if (*began == 0)
        *began = ps__now_us();
    handler_started(*began);
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

    while (c->out_len - c->out_off < PS__OUT_HIGH_WATER) {
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
        ssize_t n = ps_lineframe_next(c->in + c->in_off, c->in_len - c->in_off,
                                      PS__LIMIT(srv, max_line), &line);
        if (n == 0)
            break;
        if (n < 0) {
            atomic_fetch_add_explicit(&srv->c.lines_too_long, 1, memory_order_relaxed);
            ps_log_info("connection %llu from %s: line longer than %zu bytes",
                        (unsigned long long)c->id, c->peer, PS__LIMIT(srv, max_line));
            static const char msg[] = "ERROR line too long\r\n";
            ps_conn_send(c, msg, sizeof msg - 1);
            c->in_off = c->in_len; /* the rest of that line is discarded */
            rc = PS_CLOSE;
            break;
        }
        c->in_off += (size_t)n;
        lines++;
        if (h->on_line == NULL)
            continue;
        if (began == 0)
            began = ps__now_us();
        handler_started(began);
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
        int64_t now_ms = began != 0 ? began / 1000 : ps__now_ms();
        atomic_store_explicit(&c->last_line_ms, now_ms, memory_order_relaxed);
    }
    if (lines > 0) {
        atomic_fetch_add_explicit(&ps__stripe_of(srv)->lines, lines, memory_order_relaxed);
        atomic_fetch_add_explicit(&c->lines, lines, memory_order_relaxed);
    }
    if (c->in_off == c->in_len)
        c->in_off = c->in_len = 0;
    return rc;
}

int ps__conn_flush(ps_conn *c)
{
    if (c->replies != NULL && ps__conn_promote(c) < 0)
        return -ENOMEM;
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

/* One buffer of ps__conn_shrink: freed when empty; what is left in a
 * borrowed one moves into a buffer of the connection's own. */
static int shrink_buffer(char **buf, size_t *off, size_t *len, size_t *cap, bool *borrowed)
{
    if (*len == *off) {
        if (!*borrowed)
            free(*buf);
        *buf = NULL;
        *off = *len = *cap = 0;
    } else if (*borrowed) {
        size_t keep = *len - *off;
        char *p = move_to_own(*buf, *off, *len, keep, true);
        if (p == NULL)
            return -ENOMEM;
        *buf = p;
        *off = 0;
        *len = *cap = keep;
    }
    *borrowed = false;
    return 0;
}

int ps__conn_shrink(ps_conn *c)
{
    /* A partial line, or replies waiting for room, stay. */
    int rc = shrink_buffer(&c->in, &c->in_off, &c->in_len, &c->in_cap, &c->in_borrowed);
    if (rc == 0)
        rc = shrink_buffer(&c->out, &c->out_off, &c->out_len, &c->out_cap, &c->out_borrowed);
    return rc;
}
