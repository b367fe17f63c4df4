/*
 * The admin listener: its own thread with its own poll loop, never a pool
 * worker, so it answers while every worker is busy and the queue is full.
 * Read-only commands, memcached's "STAT name value" replies; `metrics` in
 * Prometheus text, also as the reply to an HTTP GET /metrics; `ready` and
 * `agent` for a load balancer's health and agent checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "admin.h"
#include "conn.h"
#include "linger.h"
#include "net.h"

/* Admin clients served at once; more wait in the listen backlog for a
 * slot (admin_main), each slot costs about 25 KiB while in use. */
#define PS__ADMIN_MAX_CLIENTS 64
/* All slots taken: a client silent this long with nothing left to answer
 * or send gives its slot to a connection waiting in the backlog. */
#define PS__ADMIN_EVICT_MS 1000
/* All slots taken by clients still talking, for this long: the waiting
 * connections get `ERROR too many admin clients` (admin_refused). */
#define PS__ADMIN_FULL_WAIT_MS 1000
#define PS__ADMIN_LINE_MAX 256
#define PS__ADMIN_REPLY_MAX 16384 /* metrics: about 7 KiB */
#define PS__ADMIN_IDLE_MS 60000

struct ps__admin_client {
    int fd;
    bool closing;      /* close once the reply is written */
    bool http;         /* an HTTP request line came: headers until a blank line */
    bool http_metrics; /* ... for /metrics */
    bool eof;          /* the client sent all it will: answer, then close */
    int64_t last_ms;
    ps__buf in, out; /* lent the arrays below: they never grow */
    char in_mem[PS__ADMIN_LINE_MAX + 2];
    /* Room for one whole reply on top of the most a client may leave
     * unread before its next command waits (half a reply). */
    char out_mem[PS__ADMIN_REPLY_MAX + PS__ADMIN_REPLY_MAX / 2];
};
typedef struct ps__admin_client admin_client;

/* The admin listener's thread and what it owns. */
struct ps__admin {
    ps_server *srv;
    int listen_fd;
    int stop_fd;  /* readable once the server stops: the thread ends */
    int drain_fd; /* readable once it drains: no new client after a hand-over */
    /* A descriptor given up to accept when none is left (accept_admin);
     * opened before the server says it is up, this thread's from then. */
    int reserve;
    pthread_t thread;
};

typedef struct reply {
    char *buf;
    size_t cap, len;
} reply;

static void add(reply *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(reply *r, const char *fmt, ...)
{
    if (r->len >= r->cap)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->len, r->cap - r->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->len += (size_t)n < r->cap - r->len ? (size_t)n : r->cap - r->len - 1;
}

static void add_threads(ps_server *srv, reply *r)
{
    ps_pool_stats ps;
    ps_server_get_pool_stats(srv, &ps);
    add(r, "STAT max_threads %u\r\n", ps.max_threads);
    add(r, "STAT available_threads %u\r\n", ps.available_threads);
    add(r, "STAT busy_threads %u\r\n", ps.busy_threads);
    add(r, "STAT queue_depth %zu\r\n", ps.queue_depth);
    add(r, "STAT queue_capacity %zu\r\n", ps.queue_capacity);
}

/* One of a dispatch mode's own counters (ps__stat_fn). */
static void add_stat(void *arg, const char *name, unsigned long long value)
{
    add(arg, "STAT %s %llu\r\n", name, value);
}

static void add_stats(ps_server *srv, reply *r)
{
    ps_server_stats s;
    ps_pool_stats ps;
    ps_server_get_stats(srv, &s);
    ps_server_get_pool_stats(srv, &ps);
    add(r, "STAT pid %ld\r\n", (long)getpid());
    add(r, "STAT uptime %llu\r\n", (unsigned long long)s.uptime_seconds);
    add(r, "STAT dispatch %s\r\n", ps__server_mode_name(srv));
    add(r, "STAT curr_connections %llu\r\n", (unsigned long long)s.curr_connections);
    add(r, "STAT total_connections %llu\r\n", (unsigned long long)s.total_connections);
    add(r, "STAT rejected_connections %llu\r\n", (unsigned long long)s.rejected_connections);
    add(r, "STAT rejected_busy %llu\r\n", (unsigned long long)s.rejected_busy);
    add(r, "STAT rejected_max_connections %llu\r\n", (unsigned long long)s.rejected_max);
    add(r, "STAT rejected_shutdown %llu\r\n", (unsigned long long)s.rejected_shutdown);
    add(r, "STAT slot_waits %llu\r\n", (unsigned long long)s.slot_waits);
    add(r, "STAT replies_deferred %llu\r\n", (unsigned long long)s.replies_deferred);
    add(r, "STAT reloads %llu\r\n", (unsigned long long)s.reloads);
    add(r, "STAT reload_errors %llu\r\n", (unsigned long long)s.reload_errors);
    add(r, "STAT proxy_errors %llu\r\n", (unsigned long long)s.proxy_errors);
    add(r, "STAT output_overflows %llu\r\n", (unsigned long long)s.output_overflows);
    add(r, "STAT sends_refused %llu\r\n", (unsigned long long)s.sends_refused);
    add(r, "STAT tls_handshakes %llu\r\n", (unsigned long long)s.tls_handshakes);
    add(r, "STAT tls_errors %llu\r\n", (unsigned long long)s.tls_errors);
    add(r, "STAT tls_timeouts %llu\r\n", (unsigned long long)s.tls_timeouts);
    add(r, "STAT proxy_pending %llu\r\n", (unsigned long long)s.proxy_pending);
    add(r, "STAT rejected_proxy_pending %llu\r\n", (unsigned long long)s.rejected_proxy_pending);
    add(r, "STAT lines %llu\r\n", (unsigned long long)s.lines);
    add(r, "STAT blocks %llu\r\n", (unsigned long long)s.blocks);
    add(r, "STAT bytes_in %llu\r\n", (unsigned long long)s.bytes_in);
    add(r, "STAT bytes_out %llu\r\n", (unsigned long long)s.bytes_out);
    add(r, "STAT lines_too_long %llu\r\n", (unsigned long long)s.lines_too_long);
    add(r, "STAT idle_timeouts %llu\r\n", (unsigned long long)s.idle_timeouts);
    add(r, "STAT send_timeouts %llu\r\n", (unsigned long long)s.send_timeouts);
    add(r, "STAT accept_errors %llu\r\n", (unsigned long long)s.accept_errors);
    add(r, "STAT admin_commands %llu\r\n", (unsigned long long)s.admin_commands);
    add(r, "STAT admin_refused %llu\r\n", (unsigned long long)s.admin_refused);
    add(r, "STAT slow_handlers %llu\r\n", (unsigned long long)s.slow_handlers);
    add(r, "STAT parked_connections %llu\r\n",
        (unsigned long long)s.parked_connections);
    ps__server_mode_stats(srv, add_stat, r);
    add(r, "STAT jobs_submitted %llu\r\n", (unsigned long long)ps.submitted);
    add(r, "STAT jobs_completed %llu\r\n", (unsigned long long)ps.completed);
    add(r, "STAT jobs_rejected %llu\r\n", (unsigned long long)ps.rejected);
    add(r, "STAT futures_begun %llu\r\n", (unsigned long long)ps.futures_begun);
    add(r, "STAT futures_completed %llu\r\n", (unsigned long long)ps.futures_completed);
    add(r, "STAT futures_live %llu\r\n", (unsigned long long)ps.futures_live);
    add_threads(srv, r);
}

/* The whole exposition (Prometheus text), or a line saying it did not fit. */
static void add_metrics(ps_server *srv, reply *r)
{
    ps_server_stats st;
    ps_pool_stats ps;
    ps_server_get_stats(srv, &st);
    ps_server_get_pool_stats(srv, &ps);
    ps__hist_snapshot h = {0};
    ps__handler_time_snapshot(srv, &h);
    int n = ps__metrics_render(r->buf + r->len, r->cap - r->len, &st, &ps, &h);
    if (n >= 0 && (size_t)n < r->cap - r->len)
        r->len += (size_t)n;
    else
        add(r, "# metrics did not fit the reply buffer\n");
}

/* Whether a balancer should send this server new clients (`ready`). */
static const char *const readiness_text[] = {
    [PS__READY] = "READY",
    [PS__NOT_READY_STARTING] = "NOT READY starting",
    [PS__NOT_READY_DRAINING] = "NOT READY draining",
    [PS__NOT_READY_FULL] = "NOT READY no worker free",
};

/* agent: HAProxy's agent-check reply: drain while starting or stopping,
 * else "ready up" with a weight from the free workers (at least 1%, so that
 * a busy server is not taken for a draining one). "ready" matters: HAProxy
 * keeps a server it was told to drain in that state until an agent says
 * ready, whatever else it says. */
static void add_agent(ps_server *srv, reply *r)
{
    ps__readiness state = ps__server_readiness(srv);
    if (state == PS__NOT_READY_STARTING || state == PS__NOT_READY_DRAINING) {
        add(r, "drain\n");
        return;
    }
    ps_pool_stats ps;
    ps_server_get_pool_stats(srv, &ps);
    unsigned pct = ps.max_threads > 0 ? (unsigned)(100ULL * ps.available_threads / ps.max_threads) : 0;
    add(r, "ready up %u%%\n", pct > 0 ? pct : 1);
}

/* stats conns: a line per connection, at most PS__CONNS_LISTED of them
 * (and only while the reply has room: the counts and END always fit); the
 * others are counted. */
typedef struct conns_walk {
    reply *r;
    ps_server *srv;
    int64_t now;
    size_t listed, omitted;
} conns_walk;

#define PS__CONN_LINE_MAX 160
#define PS__CONNS_LISTED 200

static bool add_conn(const ps_conn *c, void *arg)
{
    conns_walk *w = arg;
    if (w->listed == PS__CONNS_LISTED || w->r->len + 2 * PS__CONN_LINE_MAX >= w->r->cap) {
        w->omitted++;
        return true;
    }
    const char *state = ps__server_conn_parked(w->srv, c) ? "parked" : "serving";
    int64_t last = atomic_load_explicit(&c->last_line_ms, memory_order_relaxed);
    add(w->r, "CONN %llu %s age=%lld idle=%lld state=%s lines=%llu",
        (unsigned long long)c->id, c->peer, (long long)(w->now - c->created_ms) / 1000,
        (long long)(w->now > last ? w->now - last : 0) / 1000, state,
        (unsigned long long)atomic_load_explicit(&c->lines, memory_order_relaxed));
    ps_conn_tls_info tls;
    if (ps__conn_tls_info(c, &tls))
        add(w->r, " tls=%s peer=%s", tls.version, tls.peer[0] ? tls.peer : "-");
    add(w->r, "\r\n");
    w->listed++;
    return true;
}

static void add_conns(ps_server *srv, reply *r)
{
    conns_walk w = {.r = r, .srv = srv, .now = ps__now_ms()};
    ps__conn_each(srv, add_conn, &w);
    add(r, "STAT conns_listed %zu\r\nSTAT conns_omitted %zu\r\n", w.listed, w.omitted);
}

static bool is_command(const char *line, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(line, name, len) == 0;
}

/* The admin commands, in the order `help` lists them: the one list that
 * the dispatch below, `help`, and the docs check (tests/docs/check.py)
 * read. */
enum { CMD_THREADS, CMD_STATS, CMD_STATS_CONNS, CMD_METRICS, CMD_READY, CMD_AGENT, CMD_HELP,
       CMD_QUIT, CMD_NONE };
static const struct {
    const char *name, *help;
} commands[CMD_NONE] = {
    [CMD_THREADS] = {"threads", "max, available and busy workers; queue depth and capacity"},
    [CMD_STATS] = {"stats", "every server and pool counter"},
    [CMD_STATS_CONNS] = {"stats conns", "a line per connection: id, client, age, idle, state, lines"},
    [CMD_METRICS] = {"metrics", "the counters in Prometheus text (also: GET /metrics HTTP/1.x)"},
    [CMD_READY] = {"ready", "READY, or NOT READY and why (starting, draining, no worker free)"},
    [CMD_AGENT] = {"agent", "an HAProxy agent-check reply, then the close: ready up N% (free "
                            "workers), or drain"},
    [CMD_HELP] = {"help", "this list"},
    [CMD_QUIT] = {"quit", "close this connection"},
};

static int command_of(const char *line, size_t len)
{
    int i = 0;
    while (i < CMD_NONE && !is_command(line, len, commands[i].name))
        i++;
    return i;
}

int ps__admin_command(ps_server *srv, const char *line, size_t len, char *buf, size_t buflen)
{
    reply r = {.buf = buf, .cap = buflen, .len = 0};
    buf[0] = '\0';
    /* Surrounding blanks are not part of the command. */
    while (len > 0 && (line[0] == ' ' || line[0] == '\t')) {
        line++;
        len--;
    }
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t'))
        len--;

    ps__server_count_admin_command(srv);
    switch (command_of(line, len)) {
    case CMD_THREADS:
        add_threads(srv, &r);
        break;
    case CMD_STATS:
        add_stats(srv, &r);
        break;
    case CMD_STATS_CONNS:
        add_conns(srv, &r);
        break;
    case CMD_METRICS:
        add_metrics(srv, &r);
        break;
    case CMD_READY:
        add(&r, "%s\r\n", readiness_text[ps__server_readiness(srv)]);
        return PS_CONTINUE;
    case CMD_AGENT:
        add_agent(srv, &r);
        return PS_CLOSE; /* the agent protocol: one reply, then the close */
    case CMD_HELP:
        for (int i = 0; i < CMD_NONE; i++)
            add(&r, "%-9s %s\r\n", commands[i].name, commands[i].help);
        break;
    case CMD_QUIT:
        return PS_CLOSE;
    default:
        add(&r, "ERROR unknown command\r\n");
        return PS_CONTINUE;
    }
    add(&r, "END\r\n");
    return PS_CONTINUE;
}

static void client_reply(admin_client *ac, const char *text, size_t len)
{
    ps__buf_compact(&ac->out);
    size_t room = ps__buf_room(&ac->out);
    (void)ps__buf_append(&ac->out, text, len < room ? len : room, 0); /* fits: no error */
}

/* An HTTP request (a Prometheus scrape): the request line, headers up to
 * a blank line, then one response, and the connection closes. Returns
 * false for a line that is an admin command. */
static bool http_line(ps_server *srv, admin_client *ac, const ps_line *line, char *buf,
                      size_t cap)
{
    if (!ac->http) {
        static const char get[] = "GET ";
        if (line->len < sizeof get - 1 || memcmp(line->data, get, sizeof get - 1) != 0)
            return false;
        const char *path = line->data + 4;
        const char *end = memchr(path, ' ', line->len - 4);
        size_t plen = end != NULL ? (size_t)(end - path) : line->len - 4;
        ac->http = true;
        ac->http_metrics = plen == 8 && memcmp(path, "/metrics", 8) == 0;
        ps__server_count_admin_command(srv);
        return true;
    }
    if (line->len > 0)
        return true; /* a header: none matters */
    reply body = {.buf = buf, .cap = cap, .len = 0};
    buf[0] = '\0';
    if (ac->http_metrics)
        add_metrics(srv, &body);
    else
        add(&body, "not found: this server answers GET /metrics\n");
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Connection: close\r\n\r\n",
                      ac->http_metrics ? "200 OK" : "404 Not Found",
                      ac->http_metrics ? PS__METRICS_CONTENT_TYPE : "text/plain; charset=utf-8",
                      body.len);
    client_reply(ac, head, (size_t)hn);
    client_reply(ac, buf, body.len);
    ac->closing = true;
    return true;
}

/* Frames the lines the client sent and answers each. */
static void client_process(ps_server *srv, admin_client *ac)
{
    while (!ac->closing) {
        ps_line line;
        ssize_t n = ps_lineframe_next(ps__buf_head(&ac->in), ps__buf_size(&ac->in),
                                      PS__ADMIN_LINE_MAX, &line);
        if (n == 0)
            break;
        if (n < 0) {
            static const char msg[] = "ERROR line too long\r\n";
            client_reply(ac, msg, sizeof msg - 1);
            ac->closing = true;
            ps__buf_consume(&ac->in, ps__buf_size(&ac->in));
            break;
        }
        ps__buf_consume(&ac->in, (size_t)n); /* line stays put until the next read */
        char buf[PS__ADMIN_REPLY_MAX];
        if (http_line(srv, ac, &line, buf, sizeof buf))
            continue;
        int rc = ps__admin_command(srv, line.data, line.len, buf, sizeof buf);
        client_reply(ac, buf, strlen(buf)); /* "" after quit */
        if (rc == PS_CLOSE)
            ac->closing = true;
        /* The reply buffer is fixed: with half a reply unsent, the next
         * commands wait in `in` until the client has read (client_flush). */
        if (ps__buf_size(&ac->out) > PS__ADMIN_REPLY_MAX / 2)
            break;
    }
}

/* Writes what is queued; once it is all out, answers the next commands
 * already read (client_process stops while half a reply is unsent, so the
 * reply buffer is bounded by the client reading, never by dropping a
 * command). Returns false when the client is done and must be closed. */
bool ps__admin_client_flush(ps_server *srv, admin_client *ac)
{
    for (;;) {
        if (ps__buf_write(&ac->out, ac->fd) < 0)
            return false;
        if (ps__buf_size(&ac->out) > 0)
            return true; /* the rest when the socket has room */
        if (ac->closing)
            return false;
        if (memchr(ps__buf_head(&ac->in), '\n', ps__buf_size(&ac->in)) == NULL)
            return !ac->eof; /* a partial line at the end is no command */
        client_process(srv, ac);
    }
}

/* Returns false when the client is done and must be closed. */
bool ps__admin_client_read(ps_server *srv, admin_client *ac)
{
    ps__buf_compact(&ac->in);
    ssize_t r = recv(ac->fd, ac->in.data + ac->in.len, ps__buf_room(&ac->in), 0);
    if (r < 0)
        return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK;
    if (r == 0)
        ac->eof = true; /* half-close: every command before it is answered */
    ac->in.len += (size_t)r;
    ac->last_ms = ps__now_ms();
    client_process(srv, ac);
    return ps__admin_client_flush(srv, ac);
}

admin_client *ps__admin_client_new(int fd, int64_t now_ms)
{
    admin_client *ac = calloc(1, sizeof *ac);
    if (ac != NULL) {
        ac->fd = fd;
        ac->last_ms = now_ms;
        ps__buf_lend(&ac->in, ac->in_mem, sizeof ac->in_mem);
        ps__buf_lend(&ac->out, ac->out_mem, sizeof ac->out_mem);
    }
    return ac;
}

bool ps__admin_client_wants_write(const admin_client *ac)
{
    return ps__buf_size(&ac->out) > 0;
}

void ps__admin_client_close(ps_server *srv, admin_client *ac)
{
    /* Lingering: bytes sent after `quit` must not turn the close into a
     * reset that destroys the replies before it. */
    ps__linger_close(srv, ac->fd);
    free(ac);
}

/* The admin thread's clients. */
typedef struct admin_clients {
    admin_client *list[PS__ADMIN_MAX_CLIENTS];
    int n;
    int64_t full_since;   /* every slot taken since then; -1 = a slot is free */
    int64_t last_warning; /* of a failed accept, logged once a second */
    int64_t last_refusal; /* of a refusal, logged once a second */
} admin_clients;

/* Whether the client may give its slot up: it has been silent a while and
 * has no reply unsent and no command unanswered, so closing it loses
 * nothing it asked for. */
static bool client_evictable(const admin_client *ac, int64_t now)
{
    return now - ac->last_ms >= PS__ADMIN_EVICT_MS && ps__buf_size(&ac->out) == 0 &&
           memchr(ps__buf_head(&ac->in), '\n', ps__buf_size(&ac->in)) == NULL;
}

/* The evictable client silent the longest, or -1. */
static int idlest_client(const admin_clients *cs, int64_t now)
{
    int found = -1;
    for (int i = 0; i < cs->n; i++)
        if (client_evictable(cs->list[i], now) &&
            (found < 0 || cs->list[i]->last_ms < cs->list[found]->last_ms))
            found = i;
    return found;
}

/* Whether a connection waiting in the backlog may be accepted now: a slot
 * is free, a silent client can make room, or every slot has been busy for
 * PS__ADMIN_FULL_WAIT_MS (the connection is then refused, not left to
 * wait on clients that may talk for an hour). Until then the connection
 * waits in the backlog: accepting it only to close it unanswered is what
 * a burst of probes must never see. */
static bool may_take_client(admin_clients *cs, int64_t now)
{
    if (cs->n < PS__ADMIN_MAX_CLIENTS) {
        cs->full_since = -1;
        return true;
    }
    if (cs->full_since < 0)
        cs->full_since = now;
    return now - cs->full_since >= PS__ADMIN_FULL_WAIT_MS || idlest_client(cs, now) >= 0;
}

/* Answers, flushes or drops each client by what poll saw (rev[i]). */
static void serve_clients(ps_server *srv, admin_clients *cs, const struct pollfd *rev, int64_t now)
{
    for (int i = cs->n - 1; i >= 0; i--) {
        admin_client *ac = cs->list[i];
        bool keep = true;
        short r = rev[i].revents;
        if (r & POLLOUT)
            keep = ps__admin_client_flush(srv, ac);
        else if (r & (POLLIN | POLLHUP | POLLERR))
            keep = ps__admin_client_read(srv, ac);
        else if (now - ac->last_ms > PS__ADMIN_IDLE_MS)
            keep = false;
        if (!keep) {
            ps__admin_client_close(srv, ac);
            cs->list[i] = cs->list[--cs->n];
        }
    }
}

/* ps__accept on the admin listener (the new socket or -errno); out of
 * descriptors, the one held in
 * reserve (nginx and memcached keep one too) is given up for it, so the
 * operator can still ask what is going on. */
static int accept_admin(ps__admin *a)
{
    int *reserve = &a->reserve;
    int fd = ps__accept(a->listen_fd, NULL);
    if ((fd == -EMFILE || fd == -ENFILE) && *reserve >= 0) {
        close(*reserve);
        *reserve = -1;
        fd = ps__accept(a->listen_fd, NULL);
        if (fd >= 0)
            ps_log_warn("admin accept: out of descriptors; this admin client "
                        "takes the one held in reserve");
    }
    return fd;
}

/* Tells a connection that every admin slot stays busy, counts it and
 * closes it. */
static void refuse_admin(ps__admin *a, admin_clients *cs, int fd, int64_t now)
{
    /* Count first: whoever reads the refusal may look at the counter. */
    ps__server_count_admin_refused(a->srv);
    ps__write_best_effort(fd, "ERROR too many admin clients\r\n");
    ps__linger_close(a->srv, fd); /* so the line is not lost to a reset */
    if (now - cs->last_refusal >= 1000) {
        cs->last_refusal = now;
        ps_log_warn("admin: all %d client slots busy for %d ms: refusing new admin clients",
                    PS__ADMIN_MAX_CLIENTS, PS__ADMIN_FULL_WAIT_MS);
    }
}

/* A new admin client, when may_take_client allows one. Full: the silent
 * client of idlest_client makes room, so idle connections can never lock
 * the operator out; with none, the new one is refused. A failed accept
 * (EMFILE and the like) is logged once a second, and pauses so the pending
 * connection does not make the loop spin (the stop fd still wakes it). */
static void take_admin_client(ps__admin *a, admin_clients *cs, int64_t now)
{
    if (!may_take_client(cs, now))
        return; /* it waits in the backlog */
    int fd = accept_admin(a);
    if (fd < 0) {
        int e = -fd;
        if (e == EAGAIN)
            return;
        if (now - cs->last_warning >= 1000) {
            cs->last_warning = now;
            ps_log_warn("admin accept: %s", ps_strerror(-e));
        }
        struct pollfd stop = {.fd = a->stop_fd, .events = POLLIN};
        poll(&stop, 1, 100);
        return;
    }
    if (cs->n == PS__ADMIN_MAX_CLIENTS) {
        int idle = idlest_client(cs, now);
        if (idle < 0) {
            refuse_admin(a, cs, fd, now);
            return;
        }
        ps__admin_client_close(a->srv, cs->list[idle]);
        cs->list[idle] = cs->list[--cs->n];
        cs->full_since = -1; /* a slot changed hands: the table is not stuck */
    }
    admin_client *ac = ps__admin_client_new(fd, now);
    if (ac == NULL)
        close(fd);
    else
        cs->list[cs->n++] = ac;
}

static void *admin_main(void *arg)
{
    ps__admin *a = arg;
    ps_server *srv = a->srv;
    admin_clients cs = {.n = 0, .full_since = -1, .last_warning = -1000, .last_refusal = -1000};
    /* Draining, new clients still get their answer (`ready`: NOT READY
     * draining), since a balancer's probes must see the drain, unless the
     * listener went over to another process (ps_server_handed_over): then
     * the listener is no longer polled (a negative fd is left out by poll),
     * the new process answers, and the clients connected here go on being
     * answered. */
    bool draining = false, listening = true;
    for (;;) {
        struct pollfd p[3 + PS__ADMIN_MAX_CLIENTS];
        p[0] = (struct pollfd){.fd = a->stop_fd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = draining ? -1 : a->drain_fd, .events = POLLIN};
        /* Every slot taken: the listener is left out (its connections
         * wait in the backlog) until take_admin_client may take one. */
        bool take = listening && may_take_client(&cs, ps__now_ms());
        p[2] = (struct pollfd){.fd = take ? a->listen_fd : -1, .events = POLLIN};
        for (int i = 0; i < cs.n; i++) {
            /* A client with a reply pending is not read until it takes it. */
            short ev = ps__admin_client_wants_write(cs.list[i]) ? POLLOUT : POLLIN;
            p[3 + i] = (struct pollfd){.fd = cs.list[i]->fd, .events = ev};
        }
        /* A quarter second: `ready` sees a saturated pool soon enough. */
        int n = poll(p, 3 + (nfds_t)cs.n, 250);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            ps_log_error("admin poll: %s", ps_strerror(-errno));
            break;
        }
        if (p[0].revents)
            break;
        if (p[1].revents)
            draining = true; /* readable for good: no longer polled */
        if (draining && atomic_load_explicit(&srv->handed_over, memory_order_acquire)) {
            listening = false;
            p[2].revents = 0;
        }
        int64_t now = ps__now_ms();
        ps__server_watch_saturation(srv, now);
        serve_clients(srv, &cs, p + 3, now);
        /* The reserve descriptor, opened by ps__admin_start before the
         * server says it is up and this thread's alone from then on, is
         * taken back once a descriptor is free again. */
        if (a->reserve < 0)
            a->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (p[2].revents & POLLIN)
            take_admin_client(a, &cs, now);
    }
    for (int i = 0; i < cs.n; i++)
        ps__admin_client_close(srv, cs.list[i]);
    return NULL;
}

ps__admin *ps__admin_start(ps_server *srv, int listen_fd, int stop_fd, int drain_fd, int *err)
{
    ps__admin *a = calloc(1, sizeof *a);
    if (a == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    *a = (ps__admin){.srv = srv, .listen_fd = listen_fd, .stop_fd = stop_fd,
                     .drain_fd = drain_fd};
    a->reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    int rc = pthread_create(&a->thread, NULL, admin_main, a);
    if (rc != 0) {
        if (a->reserve >= 0)
            close(a->reserve);
        free(a);
        *err = -rc;
        return NULL;
    }
    return a;
}

void ps__admin_join(ps__admin *a)
{
    if (a == NULL)
        return;
    pthread_join(a->thread, NULL);
    if (a->reserve >= 0)
        close(a->reserve);
    free(a);
}
