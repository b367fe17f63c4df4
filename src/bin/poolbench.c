/*
 * poolbench: a load generator for line-based request/reply servers.
 *
 * CONNECTIONS sockets are spread over THREADS threads, each with its own
 * epoll set and its own statistics (nothing shared on the hot path but a few
 * relaxed atomic counters the progress line reads). A request is MESSAGE +
 * "\r\n"; a reply is one line ending in "\n". Latency is taken with
 * CLOCK_MONOTONIC from the moment a request is queued to the moment its reply
 * line is read, and recorded in a log-bucketed histogram (about 3% relative
 * precision), so millions of samples cost a fixed 16 KiB per thread and no
 * sorting.
 *
 * The run has two phases. First every connection is opened (paced: at most
 * PB_MAX_CONNECTING connects in flight per thread by default, so 10,000
 * connects do not overflow a small listen backlog; --connect-burst N allows
 * N, enough to connect every client at once) and, with --greeting, its greeting
 * is awaited. Then all threads start together and, for DURATION seconds,
 * every ready connection keeps PIPELINE requests in flight.
 *
 * Self-contained: nothing of the server library is used.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* strerror for the generator's threads: GNU strerror_r into a buffer of the
 * calling thread's own (strerror's may be shared). */
static const char *pb_strerror(int e)
{
    static _Thread_local char buf[96];
    return strerror_r(e, buf, sizeof buf);
}

#define PB_DEFAULT_HOST "127.0.0.1"
#define PB_DEFAULT_PORT "9050"
#define PB_MAX_CONNECTING 128 /* connects in flight per thread */
#define PB_READ_BUF 65536
#define PB_MAX_EVENTS 256
#define PB_HEAD 16 /* bytes of each reply line kept to spot error replies */

/* Histogram: values below 2^PB_SUB_BITS ns are exact; above, each power of
 * two is split into 2^PB_SUB_BITS buckets. */
#define PB_SUB_BITS 5
#define PB_SUB (1u << PB_SUB_BITS)
#define PB_HIST_BUCKETS ((64 - PB_SUB_BITS + 1) * PB_SUB)

typedef struct pb_hist {
    uint64_t count[PB_HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t sum; /* ns; 2^64 ns is 584 years of summed latency */
} pb_hist;

enum pb_state {
    PB_NEW = 0,     /* not yet connecting */
    PB_CONNECTING,  /* non-blocking connect in progress */
    PB_GREETING,    /* connected, waiting for the greeting line */
    PB_READY,       /* connected, sending requests once the run starts */
    PB_DONE,        /* closed after an error (or at the end) */
};

enum pb_err {
    PB_ERR_CONNECT = 0, /* refused, unreachable, timed out, no fd */
    PB_ERR_CLOSED,      /* the server closed the connection */
    PB_ERR_LINE,        /* the server answered with an error line */
    PB_ERR_IO,          /* read/send failed (reset, ...) */
    PB_ERR_KINDS
};

static const char *const pb_err_names[PB_ERR_KINDS] = {
    "connect", "closed by server", "error lines", "i/o"};

typedef struct pb_conn {
    int fd;
    uint8_t state;
    bool want_out;     /* EPOLLOUT armed: unsent bytes wait for buffer space */
    uint8_t head_len;  /* bytes of the current reply line held in head */
    char head[PB_HEAD];
    uint32_t inflight; /* requests queued and not yet answered */
    uint32_t ts_first; /* ring index of the oldest unanswered request */
    uint64_t out_pending; /* request bytes not yet accepted by send() */
    uint64_t out_sent;    /* request bytes sent so far (offset in the message) */
    uint64_t replies;     /* answered inside the measured window */
    int64_t connect_start_ns;
} pb_conn;

typedef struct pb_opts {
    const char *host;
    const char *port;
    long port_num;
    long connections;
    long threads;
    long duration_s;
    long pipeline;
    long connect_timeout_s;
    long max_connecting;  /* connects in flight per thread */
    const char *message;
    bool greeting;
    bool json;
} pb_opts;

typedef struct pb_thread {
    pthread_t tid;
    int index;
    int epfd;
    pb_conn *conns;
    size_t nconns;
    uint64_t *ts;  /* nconns * pipeline request timestamps (ns) */
    char *rep;     /* the request repeated pipeline + 1 times */
    size_t replen; /* length of one request */
    size_t alive;  /* connections not PB_DONE */
    size_t connecting;
    bool running;  /* inside the measured window: send requests */
    int64_t end_ns;
    pb_hist hist;
    uint64_t err[PB_ERR_KINDS];
    uint64_t unsolicited; /* lines received with no request outstanding */
    char first_error[160];
    char *rbuf;
    /* Read by the progress line while the thread runs. */
    _Atomic uint64_t progress_requests;
    _Atomic uint64_t progress_errors;
    _Atomic uint64_t progress_connected;
    _Atomic bool finished;
} pb_thread;

/* Shared, read-only once the threads start (g_start_ns/g_end_ns are written
 * by one thread between two barrier waits, which order them for the rest). */
static pb_opts g_opts;
static struct sockaddr_storage g_addr;
static socklen_t g_addrlen;
static char g_addr_text[NI_MAXHOST + NI_MAXSERV + 4];
static pthread_barrier_t g_barrier;
static int64_t g_launch_ns, g_start_ns, g_end_ns;
/* The run's arrays, static so that every exit path leaves them reachable
 * (no leak reports from an early exit); freed at the end of main. */
static pb_thread *g_threads;
static pb_conn *g_conns;
static uint64_t *g_ts;
static char *g_rep;

static int64_t pb_now_ns(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid pointer; if it did, every
     * latency would be garbage, so stop. */
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        abort();
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- histogram ---------------------------------------------------------- */

static unsigned pb_hist_index(uint64_t v)
{
    if (v < PB_SUB)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* e >= PB_SUB_BITS */
    unsigned m = (unsigned)(v >> (e - PB_SUB_BITS)) & (PB_SUB - 1);
    return (e - PB_SUB_BITS + 1) * PB_SUB + m;
}

/* Highest value that lands in bucket i. */
static uint64_t pb_hist_upper(unsigned i)
{
    if (i < PB_SUB)
        return i;
    unsigned g = i / PB_SUB, m = i % PB_SUB;
    unsigned e = g + PB_SUB_BITS - 1;
    uint64_t width = 1ull << (e - PB_SUB_BITS);
    uint64_t low = (uint64_t)(PB_SUB + m) << (e - PB_SUB_BITS);
    return low + width - 1;
}

static void pb_hist_record(pb_hist *h, uint64_t v)
{
    h->count[pb_hist_index(v)]++;
    h->total++;
    h->sum += v;
    if (v > h->max)
        h->max = v;
}

static void pb_hist_merge(pb_hist *into, const pb_hist *from)
{
    for (unsigned i = 0; i < PB_HIST_BUCKETS; i++)
        into->count[i] += from->count[i];
    into->total += from->total;
    into->sum += from->sum;
    if (from->max > into->max)
        into->max = from->max;
}

/* Value at quantile q (0..1], in ns: the top of the bucket holding the
 * ceil(q * total)-th sample, never above the exact maximum. */
static uint64_t pb_hist_quantile(const pb_hist *h, double q)
{
    if (h->total == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->total + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > h->total)
        rank = h->total;
    uint64_t seen = 0;
    for (unsigned i = 0; i < PB_HIST_BUCKETS; i++) {
        seen += h->count[i];
        if (seen >= rank) {
            uint64_t v = pb_hist_upper(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ---- connections -------------------------------------------------------- */

static void pb_note_error(pb_thread *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void pb_note_error(pb_thread *t, const char *fmt, ...)
{
    if (t->first_error[0] != '\0')
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->first_error, sizeof t->first_error, fmt, ap);
    va_end(ap);
}

/* Stops a connection for good: an error ends it, it is not retried (a
 * retried connection would hide a server that drops clients). */
static void pb_conn_fail(pb_thread *t, pb_conn *c, enum pb_err kind)
{
    if (c->state == PB_CONNECTING)
        t->connecting--;
    if (c->fd >= 0 && close(c->fd) != 0 && errno != EINTR)
        pb_note_error(t, "close: %s", pb_strerror(errno));
    c->fd = -1;
    c->state = PB_DONE;
    t->alive--;
    t->err[kind]++;
    atomic_fetch_add_explicit(&t->progress_errors, 1, memory_order_relaxed);
}

static int pb_epoll_set(pb_thread *t, pb_conn *c, int op, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(t->epfd, op, c->fd, &ev) != 0)
        return -errno;
    return 0;
}

/* Sends what is queued. Returns false when the connection failed. */
static bool pb_conn_flush(pb_thread *t, pb_conn *c)
{
    while (c->out_pending > 0) {
        /* rep holds pipeline + 1 copies of the request and at most pipeline
         * requests are pending, so the bytes from this offset are all in it. */
        const char *p = t->rep + (c->out_sent % t->replen);
        ssize_t n = send(c->fd, p, (size_t)c->out_pending, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->want_out) {
                    int rc = pb_epoll_set(t, c, EPOLL_CTL_MOD, EPOLLIN | EPOLLOUT);
                    if (rc < 0) {
                        pb_note_error(t, "epoll_ctl: %s", pb_strerror(-rc));
                        pb_conn_fail(t, c, PB_ERR_IO);
                        return false;
                    }
                    c->want_out = true;
                }
                return true;
            }
            pb_note_error(t, "send: %s", pb_strerror(errno));
            pb_conn_fail(t, c, PB_ERR_IO);
            return false;
        }
        c->out_pending -= (uint64_t)n;
        c->out_sent += (uint64_t)n;
    }
    if (c->want_out) {
        int rc = pb_epoll_set(t, c, EPOLL_CTL_MOD, EPOLLIN);
        if (rc < 0) {
            pb_note_error(t, "epoll_ctl: %s", pb_strerror(-rc));
            pb_conn_fail(t, c, PB_ERR_IO);
            return false;
        }
        c->want_out = false;
    }
    return true;
}

/* Queues k requests stamped `now` and sends what the socket takes. */
static bool pb_conn_request(pb_thread *t, pb_conn *c, uint32_t k, int64_t now)
{
    uint32_t p = (uint32_t)g_opts.pipeline;
    uint64_t *ts = t->ts + (size_t)(c - t->conns) * p;
    for (uint32_t i = 0; i < k; i++)
        ts[(c->ts_first + c->inflight + i) % p] = (uint64_t)now;
    c->inflight += k;
    c->out_pending += (uint64_t)k * t->replen;
    return pb_conn_flush(t, c);
}

static bool pb_is_error_line(const pb_conn *c)
{
    /* poolsrv and memcached say "ERROR ...", memcached also
     * "SERVER_ERROR" / "CLIENT_ERROR", Redis "-ERR ..." / "-WRONGTYPE". */
    static const char *const prefixes[] = {"ERROR", "SERVER_ERROR", "CLIENT_ERROR", "-"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        size_t n = strlen(prefixes[i]);
        if (c->head_len >= n && memcmp(c->head, prefixes[i], n) == 0)
            return true;
    }
    return false;
}

static void pb_note_line(pb_thread *t, const pb_conn *c, const char *what)
{
    char txt[PB_HEAD + 1];
    size_t n = 0;
    for (size_t i = 0; i < c->head_len; i++)
        if (c->head[i] != '\r' && c->head[i] != '\n')
            txt[n++] = (c->head[i] >= 0x20 && c->head[i] < 0x7f) ? c->head[i] : '?';
    txt[n] = '\0';
    pb_note_error(t, "%s: \"%s%s\"", what, txt, c->head_len == PB_HEAD ? "..." : "");
}

/* One complete line arrived on c at time now. Returns false when c stopped. */
static bool pb_conn_line(pb_thread *t, pb_conn *c, int64_t now)
{
    if (c->state == PB_GREETING) {
        if (pb_is_error_line(c)) {
            pb_note_line(t, c, "greeting");
            pb_conn_fail(t, c, PB_ERR_LINE);
            return false;
        }
        c->state = PB_READY;
        if (t->running && now < t->end_ns)
            return pb_conn_request(t, c, (uint32_t)g_opts.pipeline, now);
        return true;
    }
    if (pb_is_error_line(c)) {
        pb_note_line(t, c, "error reply");
        pb_conn_fail(t, c, PB_ERR_LINE);
        return false;
    }
    if (c->inflight == 0) {
        /* A line nobody asked for: most likely a greeting without
         * --greeting. Not a reply, so not timed. */
        t->unsolicited++;
        return true;
    }
    uint32_t p = (uint32_t)g_opts.pipeline;
    uint64_t sent = t->ts[(size_t)(c - t->conns) * p + c->ts_first];
    c->ts_first = (c->ts_first + 1) % p;
    c->inflight--;
    if (now >= t->end_ns)
        return true; /* after the window: neither counted nor followed up */
    pb_hist_record(&t->hist, (uint64_t)now > sent ? (uint64_t)now - sent : 0);
    c->replies++;
    atomic_fetch_add_explicit(&t->progress_requests, 1, memory_order_relaxed);
    return pb_conn_request(t, c, 1, now);
}

static void pb_conn_readable(pb_thread *t, pb_conn *c)
{
    ssize_t n;
    do {
        n = read(c->fd, t->rbuf, PB_READ_BUF);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        pb_note_error(t, "read: %s", pb_strerror(errno));
        pb_conn_fail(t, c, PB_ERR_IO);
        return;
    }
    if (n == 0) {
        pb_note_error(t, "the server closed a connection");
        pb_conn_fail(t, c, PB_ERR_CLOSED);
        return;
    }
    /* One timestamp per read: replies read together arrived together. */
    int64_t now = pb_now_ns();
    const char *p = t->rbuf, *end = t->rbuf + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *seg_end = nl ? nl : end;
        if (c->head_len < PB_HEAD) {
            size_t take = (size_t)(seg_end - p);
            if (take > (size_t)(PB_HEAD - c->head_len))
                take = (size_t)(PB_HEAD - c->head_len);
            memcpy(c->head + c->head_len, p, take);
            c->head_len = (uint8_t)(c->head_len + take);
        }
        if (!nl)
            break;
        p = nl + 1;
        bool ok = pb_conn_line(t, c, now);
        c->head_len = 0;
        if (!ok)
            return;
    }
}

static void pb_conn_connected(pb_thread *t, pb_conn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0)
        soerr = errno;
    if (soerr != 0) {
        pb_note_error(t, "connect %s: %s", g_addr_text, pb_strerror(soerr));
        pb_conn_fail(t, c, PB_ERR_CONNECT);
        return;
    }
    int rc = pb_epoll_set(t, c, EPOLL_CTL_MOD, EPOLLIN);
    if (rc < 0) {
        pb_note_error(t, "epoll_ctl: %s", pb_strerror(-rc));
        pb_conn_fail(t, c, PB_ERR_IO);
        return;
    }
    t->connecting--;
    c->state = g_opts.greeting ? PB_GREETING : PB_READY;
    atomic_fetch_add_explicit(&t->progress_connected, 1, memory_order_relaxed);
}

static void pb_conn_start(pb_thread *t, pb_conn *c)
{
    c->connect_start_ns = pb_now_ns();
    c->state = PB_CONNECTING;
    t->connecting++;
    c->fd = socket(g_addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        pb_note_error(t, "socket: %s", pb_strerror(errno));
        pb_conn_fail(t, c, PB_ERR_CONNECT);
        return;
    }
    int one = 1;
    /* Small pipelined requests must leave at once, not wait for Nagle. */
    if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        pb_note_error(t, "setsockopt TCP_NODELAY: %s", pb_strerror(errno));
        pb_conn_fail(t, c, PB_ERR_CONNECT);
        return;
    }
    int rc;
    do {
        rc = connect(c->fd, (const struct sockaddr *)&g_addr, g_addrlen);
    } while (rc < 0 && errno == EINTR);
    /* After EINTR the connect goes on in the background and a retry says
     * EALREADY: both mean "in progress", like EINPROGRESS. */
    if (rc < 0 && errno != EINPROGRESS && errno != EALREADY) {
        pb_note_error(t, "connect %s: %s", g_addr_text, pb_strerror(errno));
        pb_conn_fail(t, c, PB_ERR_CONNECT);
        return;
    }
    rc = pb_epoll_set(t, c, EPOLL_CTL_ADD, EPOLLOUT);
    if (rc < 0) {
        pb_note_error(t, "epoll_ctl: %s", pb_strerror(-rc));
        pb_conn_fail(t, c, PB_ERR_CONNECT);
    }
}

static void pb_dispatch(pb_thread *t, struct epoll_event *ev, int n)
{
    for (int i = 0; i < n; i++) {
        pb_conn *c = ev[i].data.ptr;
        if (c->state == PB_DONE)
            continue;
        if (c->state == PB_CONNECTING) {
            pb_conn_connected(t, c);
            continue;
        }
        if (ev[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
            pb_conn_readable(t, c);
        if (c->state != PB_DONE && (ev[i].events & EPOLLOUT))
            pb_conn_flush(t, c);
    }
}

/* Returns false (and notes why) when epoll itself failed. */
static bool pb_poll(pb_thread *t, int timeout_ms, struct epoll_event *ev)
{
    int n = epoll_wait(t->epfd, ev, PB_MAX_EVENTS, timeout_ms);
    if (n < 0) {
        if (errno == EINTR)
            return true;
        pb_note_error(t, "epoll_wait: %s", pb_strerror(errno));
        return false;
    }
    pb_dispatch(t, ev, n);
    return true;
}

/* Phase 1: open every connection, at most max_connecting at a time. Each
 * connect gets connect_timeout_s, and so does the whole phase: whatever is
 * not connected by then (started or not) counts as a connect error. */
static void pb_thread_connect(pb_thread *t, struct epoll_event *ev)
{
    int64_t timeout_ns = (int64_t)g_opts.connect_timeout_s * 1000000000;
    int64_t phase_deadline = pb_now_ns() + timeout_ns;
    size_t next = 0;
    for (;;) {
        while (next < t->nconns && t->connecting < (size_t)g_opts.max_connecting)
            pb_conn_start(t, &t->conns[next++]);
        if (next == t->nconns && t->connecting == 0)
            break;
        if (!pb_poll(t, 50, ev))
            break;
        int64_t now = pb_now_ns();
        /* Scanning all started connections every 50 ms is cheap next to the
         * connects themselves and needs no timer structure. */
        bool phase_over = now >= phase_deadline;
        for (size_t i = 0; i < next; i++) {
            pb_conn *c = &t->conns[i];
            if (c->state == PB_CONNECTING &&
                (phase_over || now - c->connect_start_ns >= timeout_ns)) {
                pb_note_error(t, "connect %s: timed out after %ld s", g_addr_text,
                              g_opts.connect_timeout_s);
                pb_conn_fail(t, c, PB_ERR_CONNECT);
            }
        }
        if (phase_over) {
            /* Connections never started count as failed too. */
            for (; next < t->nconns; next++) {
                pb_conn *c = &t->conns[next];
                c->state = PB_CONNECTING;
                t->connecting++;
                pb_note_error(t, "connect %s: not started within %ld s", g_addr_text,
                              g_opts.connect_timeout_s);
                pb_conn_fail(t, c, PB_ERR_CONNECT);
            }
            break;
        }
    }
}

/* Phase 2: keep requests in flight until the window closes. */
static void pb_thread_run(pb_thread *t, struct epoll_event *ev)
{
    t->end_ns = g_end_ns;
    t->running = true;
    int64_t now = pb_now_ns();
    for (size_t i = 0; i < t->nconns; i++) {
        pb_conn *c = &t->conns[i];
        if (c->state == PB_READY)
            pb_conn_request(t, c, (uint32_t)g_opts.pipeline, now);
    }
    while (t->alive > 0) {
        now = pb_now_ns();
        if (now >= t->end_ns)
            break;
        int64_t left_ms = (t->end_ns - now + 999999) / 1000000;
        if (!pb_poll(t, left_ms > 100 ? 100 : (int)left_ms, ev))
            break;
    }
    t->running = false;
}

static void *pb_thread_main(void *arg)
{
    pb_thread *t = arg;
    struct epoll_event ev[PB_MAX_EVENTS];

    pb_thread_connect(t, ev);

    /* Every thread has finished connecting: one of them fixes the window,
     * the second wait publishes it to the others. */
    int rc = pthread_barrier_wait(&g_barrier);
    if (rc == PTHREAD_BARRIER_SERIAL_THREAD) {
        g_start_ns = pb_now_ns();
        g_end_ns = g_start_ns + (int64_t)g_opts.duration_s * 1000000000;
    } else if (rc != 0) {
        abort();
    }
    rc = pthread_barrier_wait(&g_barrier);
    if (rc != 0 && rc != PTHREAD_BARRIER_SERIAL_THREAD)
        abort();

    pb_thread_run(t, ev);

    for (size_t i = 0; i < t->nconns; i++) {
        pb_conn *c = &t->conns[i];
        if (c->fd >= 0 && close(c->fd) != 0 && errno != EINTR)
            pb_note_error(t, "close: %s", pb_strerror(errno));
        c->fd = -1;
    }
    atomic_store_explicit(&t->finished, true, memory_order_release);
    return NULL;
}

/* ---- main --------------------------------------------------------------- */

static void pb_usage(FILE *f)
{
    fprintf(f,
            "usage: poolbench [-H HOST] [-p PORT] [-c CONNECTIONS] [-t THREADS]\n"
            "                 [-d SECONDS] [-m MESSAGE] [-P PIPELINE] [--greeting]\n"
            "                 [--connect-timeout SECONDS] [--connect-burst N] [--json]\n"
            "  -H HOST         server host or address (default %s)\n"
            "  -p PORT         server port (default %s)\n"
            "  -c CONNECTIONS  connections to open (default 25)\n"
            "  -t THREADS      client threads, one epoll set each (default: CPUs)\n"
            "  -d SECONDS      measured duration (default 5)\n"
            "  -m MESSAGE      request line, sent with \\r\\n (default \"hello\")\n"
            "  -P PIPELINE     requests in flight per connection (default 1)\n"
            "  --greeting      wait for one greeting line on each connection first\n"
            "  --connect-timeout SECONDS  for the connect phase (default 10)\n"
            "  --connect-burst N  connects in flight per thread (default 128)\n"
            "  --json          print one JSON object instead of the report\n"
            "  -V, --version   print the version and exit\n"
            "  -h, --help      this help\n"
            "A reply is one line ending in \\n. A closed connection or an error\n"
            "line (one starting with ERROR, SERVER_ERROR, CLIENT_ERROR or \"-\")\n"
            "counts as an error and stops that connection.\n"
            "Exit status 0 when the run completed, 1 when no connection could be\n"
            "made, 2 on a usage error.\n",
            PB_DEFAULT_HOST, PB_DEFAULT_PORT);
}

enum { OPT_GREETING = 256, OPT_JSON, OPT_CONNECT_TIMEOUT, OPT_CONNECT_BURST };
static const struct option pb_longopts[] = {
    {"greeting", no_argument, NULL, OPT_GREETING},
    {"json", no_argument, NULL, OPT_JSON},
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
    {"connect-burst", required_argument, NULL, OPT_CONNECT_BURST},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

static int pb_bad_value(int opt, const char *val)
{
    const char *name = "?";
    for (const struct option *o = pb_longopts; o->name != NULL; o++)
        if (o->val == opt)
            name = o->name;
    if (opt < 256)
        fprintf(stderr, "poolbench: -%c: bad value: %s\n", opt, val);
    else
        fprintf(stderr, "poolbench: --%s: bad value: %s\n", name, val);
    pb_usage(stderr);
    return 2;
}

static bool pb_parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* True when a connection to ai is accepted within the connect timeout. */
static bool pb_probe(const struct addrinfo *ai)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool ok = false;
    int rc;
    do {
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) {
        ok = true;
    } else if (errno == EINPROGRESS || errno == EALREADY) {
        int64_t deadline = pb_now_ns() + (int64_t)g_opts.connect_timeout_s * 1000000000;
        for (;;) {
            int64_t left_ms = (deadline - pb_now_ns()) / 1000000;
            if (left_ms <= 0)
                break;
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int n = poll(&pfd, 1, left_ms > INT_MAX ? INT_MAX : (int)left_ms);
            if (n < 0 && errno == EINTR)
                continue;
            if (n > 0) {
                int soerr = 0;
                socklen_t sl = sizeof soerr;
                ok = getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0;
            }
            break;
        }
    }
    close(fd);
    return ok;
}

/* Resolves host:port into g_addr; the first address is used for every
 * connection. Returns 0 or prints why not and returns -1. */
static int pb_resolve(void)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: it hides ::1 on hosts without a global IPv6
     * address, and loopback is where benchmarks run. */
    int gai = getaddrinfo(g_opts.host, g_opts.port, &hints, &res);
    if (gai != 0) {
        fprintf(stderr, "poolbench: %s:%s: %s\n", g_opts.host, g_opts.port,
                gai == EAI_SYSTEM ? pb_strerror(errno) : gai_strerror(gai));
        return -1;
    }
    /* A name with several addresses ("localhost": ::1 and 127.0.0.1) may
     * have the server on only one: use the first that accepts a probe
     * connection, or the first of all (the run then reports why not). */
    const struct addrinfo *use = res;
    if (res->ai_next) {
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            if (pb_probe(ai)) {
                use = ai;
                break;
            }
        }
    }
    memcpy(&g_addr, use->ai_addr, use->ai_addrlen);
    g_addrlen = use->ai_addrlen;
    freeaddrinfo(res);
    char h[NI_MAXHOST], s[NI_MAXSERV];
    if (getnameinfo((struct sockaddr *)&g_addr, g_addrlen, h, sizeof h, s, sizeof s,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(h, sizeof h, "%s", g_opts.host);
        snprintf(s, sizeof s, "%s", g_opts.port);
    }
    snprintf(g_addr_text, sizeof g_addr_text, g_addr.ss_family == AF_INET6 ? "[%s]:%s" : "%s:%s",
             h, s);
    return 0;
}

/* Raises the soft descriptor limit to the hard one: 10,000 connections need
 * more than the usual 1,024. Returns 0, or -1 after saying what is missing. */
static int pb_raise_nofile(size_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        fprintf(stderr, "poolbench: getrlimit(RLIMIT_NOFILE): %s\n", pb_strerror(errno));
        return -1;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = rl;
        want.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &want) == 0) {
            rl = want;
        } else if (rl.rlim_max == RLIM_INFINITY) {
            /* An unlimited hard limit still stops at fs.nr_open: ask for
             * what we need instead. */
            want.rlim_cur = need;
            if (setrlimit(RLIMIT_NOFILE, &want) == 0)
                rl = want;
        }
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        fprintf(stderr,
                "poolbench: %ld connections need about %zu file descriptors, but the limit "
                "is %llu (hard limit %llu); raise it (ulimit -n / limits.conf) or use "
                "fewer connections\n",
                g_opts.connections, need, (unsigned long long)rl.rlim_cur,
                rl.rlim_max == RLIM_INFINITY ? 0ull : (unsigned long long)rl.rlim_max);
        return -1;
    }
    return 0;
}

static void pb_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static int pb_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Prints one progress line per second on a terminal until every thread is
 * done. Bounded: the threads themselves are bounded in time. */
static void pb_progress(pb_thread *th, long nthreads, bool show)
{
    uint64_t last_req = 0;
    for (long tick = 0;; tick++) {
        bool all_done = true;
        uint64_t req = 0, err = 0, conn = 0;
        for (long i = 0; i < nthreads; i++) {
            all_done = all_done && atomic_load_explicit(&th[i].finished, memory_order_acquire);
            req += atomic_load_explicit(&th[i].progress_requests, memory_order_relaxed);
            err += atomic_load_explicit(&th[i].progress_errors, memory_order_relaxed);
            conn += atomic_load_explicit(&th[i].progress_connected, memory_order_relaxed);
        }
        if (all_done)
            break;
        if (show && tick > 0 && tick % 10 == 0) {
            fprintf(stderr, "poolbench: %lds connected %" PRIu64 "/%ld requests %" PRIu64
                            " (%" PRIu64 "/s) errors %" PRIu64 "\n",
                    tick / 10, conn, g_opts.connections, req, req - last_req, err);
            last_req = req;
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

/* The command line into g_opts. Returns -1 to go on, or the exit status
 * (-h, -V, a usage error). */
static int pb_parse(int argc, char **argv)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    g_opts = (pb_opts){
        .host = PB_DEFAULT_HOST,
        .port = PB_DEFAULT_PORT,
        .port_num = 9050,
        .connections = 25,
        .threads = ncpu > 0 ? ncpu : 1,
        .duration_s = 5,
        .pipeline = 1,
        .connect_timeout_s = 10,
        .max_connecting = PB_MAX_CONNECTING,
        .message = "hello",
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "H:p:c:t:d:m:P:hV", pb_longopts, NULL)) != -1) {
        switch (opt) {
        case 'H':
            g_opts.host = optarg;
            break;
        case 'p':
            if (!pb_parse_long(optarg, 1, 65535, &g_opts.port_num))
                return pb_bad_value(opt, optarg);
            g_opts.port = optarg;
            break;
        case 'c':
            if (!pb_parse_long(optarg, 1, 1000000, &g_opts.connections))
                return pb_bad_value(opt, optarg);
            break;
        case 't':
            if (!pb_parse_long(optarg, 1, 1024, &g_opts.threads))
                return pb_bad_value(opt, optarg);
            break;
        case 'd':
            if (!pb_parse_long(optarg, 1, 86400, &g_opts.duration_s))
                return pb_bad_value(opt, optarg);
            break;
        case 'm':
            if (strpbrk(optarg, "\r\n")) {
                fprintf(stderr, "poolbench: -m: the message must be one line\n");
                return 2;
            }
            g_opts.message = optarg;
            break;
        case 'P':
            if (!pb_parse_long(optarg, 1, 1024, &g_opts.pipeline))
                return pb_bad_value(opt, optarg);
            break;
        case OPT_GREETING:
            g_opts.greeting = true;
            break;
        case OPT_JSON:
            g_opts.json = true;
            break;
        case OPT_CONNECT_TIMEOUT:
            if (!pb_parse_long(optarg, 1, 3600, &g_opts.connect_timeout_s))
                return pb_bad_value(opt, optarg);
            break;
        case OPT_CONNECT_BURST:
            if (!pb_parse_long(optarg, 1, 1000000, &g_opts.max_connecting))
                return pb_bad_value(opt, optarg);
            break;
        case 'h':
            pb_usage(stdout);
            return 0;
        case 'V':
            printf("poolbench %s\n", POOLSRV_VERSION_BUILT);
            return 0;
        default:
            pb_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "poolbench: unexpected argument: %s\n", argv[optind]);
        pb_usage(stderr);
        return 2;
    }
    if (g_opts.threads > g_opts.connections)
        g_opts.threads = g_opts.connections;
    return -1;
}

/* Every thread's connections, timestamps and reply pattern allocated and
 * its epoll set made. 0, or 1 (said why). */
static int pb_setup(void)
{
    long nthreads = g_opts.threads;
    size_t ncon = (size_t)g_opts.connections;
    size_t plen = (size_t)g_opts.pipeline;
    size_t msglen = strlen(g_opts.message);
    size_t replen = msglen + 2;
    pb_thread *th = g_threads = calloc((size_t)nthreads, sizeof *th);
    pb_conn *conns = g_conns = calloc(ncon, sizeof *conns);
    uint64_t *ts = g_ts = calloc(ncon * plen, sizeof *ts);
    char *rep = g_rep = malloc(replen * (plen + 1));
    if (!th || !conns || !ts || !rep) {
        fprintf(stderr, "poolbench: out of memory for %zu connections\n", ncon);
        return 1;
    }
    for (size_t i = 0; i <= plen; i++) {
        memcpy(rep + i * replen, g_opts.message, msglen);
        memcpy(rep + i * replen + msglen, "\r\n", 2);
    }
    for (size_t i = 0; i < ncon; i++)
        conns[i].fd = -1;
    for (long i = 0; i < nthreads; i++) {
        pb_thread *t = &th[i];
        size_t lo = ncon * (size_t)i / (size_t)nthreads;
        size_t hi = ncon * (size_t)(i + 1) / (size_t)nthreads;
        t->index = (int)i;
        t->conns = conns + lo;
        t->nconns = hi - lo;
        t->alive = t->nconns;
        t->ts = ts + lo * plen;
        t->rep = rep;
        t->replen = replen;
        t->rbuf = malloc(PB_READ_BUF);
        t->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!t->rbuf || t->epfd < 0) {
            fprintf(stderr, "poolbench: %s\n", t->rbuf ? pb_strerror(errno) : "out of memory");
            return 1;
        }
    }
    return 0;
}

/* What a run measured, summed over the threads. */
typedef struct pb_result {
    pb_hist hist;
    uint64_t err[PB_ERR_KINDS];
    uint64_t errors, unsolicited, connected, served;
    const char *first_error;
    uint64_t rmin, rmax; /* replies per connection, failed ones as 0 */
    double rmed;
} pb_result;

/* Starts the threads, shows progress, joins them and sums what they saw.
 * 0, or 1 (said why). */
static int pb_run(pb_result *r)
{
    long nthreads = g_opts.threads;
    pb_thread *th = g_threads;
    int rc = pthread_barrier_init(&g_barrier, NULL, (unsigned)nthreads);
    if (rc != 0) {
        fprintf(stderr, "poolbench: pthread_barrier_init: %s\n", pb_strerror(rc));
        return 1;
    }
    g_launch_ns = pb_now_ns();
    for (long i = 0; i < nthreads; i++) {
        rc = pthread_create(&th[i].tid, NULL, pb_thread_main, &th[i]);
        if (rc != 0) {
            /* The barrier counts on every thread: without them all the
             * started ones would wait forever. */
            fprintf(stderr, "poolbench: pthread_create: %s\n", pb_strerror(rc));
            exit(1);
        }
    }
    pb_progress(th, nthreads, isatty(STDERR_FILENO) == 1);
    memset(r, 0, sizeof *r);
    for (long i = 0; i < nthreads; i++) {
        rc = pthread_join(th[i].tid, NULL);
        if (rc != 0) {
            fprintf(stderr, "poolbench: pthread_join: %s\n", pb_strerror(rc));
            return 1;
        }
        pb_hist_merge(&r->hist, &th[i].hist);
        for (int k = 0; k < PB_ERR_KINDS; k++)
            r->err[k] += th[i].err[k];
        r->unsolicited += th[i].unsolicited;
        r->connected += atomic_load(&th[i].progress_connected);
        if (!r->first_error && th[i].first_error[0])
            r->first_error = th[i].first_error;
        if (close(th[i].epfd) != 0 && errno != EINTR)
            fprintf(stderr, "poolbench: close: %s\n", pb_strerror(errno));
    }
    pthread_barrier_destroy(&g_barrier);
    for (int k = 0; k < PB_ERR_KINDS; k++)
        r->errors += r->err[k];
    /* Fairness over every connection, failed ones included (as 0). Sorting
     * one counter per connection is cheap; it is samples we never sort. */
    size_t ncon = (size_t)g_opts.connections;
    uint64_t *per = malloc(ncon * sizeof *per);
    if (!per) {
        fprintf(stderr, "poolbench: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < ncon; i++) {
        per[i] = g_conns[i].replies;
        r->served += per[i] > 0;
    }
    qsort(per, ncon, sizeof *per, pb_cmp_u64);
    r->rmin = per[0];
    r->rmax = per[ncon - 1];
    r->rmed = ncon % 2 ? (double)per[ncon / 2]
                       : ((double)per[ncon / 2 - 1] + (double)per[ncon / 2]) / 2.0;
    free(per);
    return 0;
}

/* The report: one JSON object (--json) or lines for a person. */
static void pb_report(const pb_result *r)
{
    size_t ncon = (size_t)g_opts.connections;
    long nthreads = g_opts.threads;
    const pb_hist *hist = &r->hist;
    const uint64_t *err = r->err;
    double dur = (double)g_opts.duration_s;
    double connect_s = (double)(g_start_ns - g_launch_ns) / 1e9;
    double rps = (double)hist->total / dur;
    double us = 1000.0;
    double p50 = (double)pb_hist_quantile(hist, 0.50) / us;
    double p90 = (double)pb_hist_quantile(hist, 0.90) / us;
    double p99 = (double)pb_hist_quantile(hist, 0.99) / us;
    double p999 = (double)pb_hist_quantile(hist, 0.999) / us;
    double pmax = (double)hist->max / us;
    double mean = hist->total ? (double)hist->sum / (double)hist->total / us : 0.0;
    if (g_opts.json) {
        printf("{\"host\":");
        pb_json_string(stdout, g_opts.host);
        printf(",\"port\":%ld,\"message\":", g_opts.port_num);
        pb_json_string(stdout, g_opts.message);
        printf(",\"connections\":%zu,\"threads\":%ld,\"pipeline\":%ld,\"duration_s\":%.3f,\"connect_s\":%.3f,"
               "\"requests\":%" PRIu64 ",\"rps\":%.1f,"
               "\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
               "\"max_us\":%.1f,\"mean_us\":%.1f,"
               "\"errors\":%" PRIu64 ",\"connect_errors\":%" PRIu64
               ",\"closed_by_server\":%" PRIu64 ",\"error_lines\":%" PRIu64
               ",\"io_errors\":%" PRIu64 ",\"connections_connected\":%" PRIu64
               ",\"connections_served\":%" PRIu64 ",\"replies_min\":%" PRIu64
               ",\"replies_median\":%.1f,\"replies_max\":%" PRIu64
               ",\"unsolicited_lines\":%" PRIu64 ",\"first_error\":",
               ncon, nthreads, g_opts.pipeline, dur, connect_s, hist->total, rps, p50, p90, p99,
               p999, pmax, mean, r->errors, err[PB_ERR_CONNECT], err[PB_ERR_CLOSED],
               err[PB_ERR_LINE], err[PB_ERR_IO], r->connected, r->served, r->rmin, r->rmed,
               r->rmax, r->unsolicited);
        if (r->first_error)
            pb_json_string(stdout, r->first_error);
        else
            printf("null");
        printf("}\n");
        return;
    }
    printf("poolbench: %s, %zu connections, %ld threads, %ld s, pipeline %ld, "
           "message \"%s\"%s\n",
           g_addr_text, ncon, nthreads, g_opts.duration_s, g_opts.pipeline, g_opts.message,
           g_opts.greeting ? ", greeting awaited" : "");
    printf("  connected    %" PRIu64 " / %zu in %.3f s\n", r->connected, ncon, connect_s);
    printf("  requests     %" PRIu64 " in %.0f s: %.1f per second\n", hist->total, dur, rps);
    printf("  latency us   p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean %.1f\n",
           p50, p90, p99, p999, pmax, mean);
    printf("  errors       %" PRIu64, r->errors);
    if (r->errors) {
        const char *sep = " (";
        for (int k = 0; k < PB_ERR_KINDS; k++) {
            if (err[k]) {
                printf("%s%s %" PRIu64, sep, pb_err_names[k], err[k]);
                sep = ", ";
            }
        }
        printf(")");
    }
    printf("\n");
    printf("  fairness     %" PRIu64 " / %zu connections served; replies per connection "
           "min %" PRIu64 " median %.1f max %" PRIu64 "\n",
           r->served, ncon, r->rmin, r->rmed, r->rmax);
    if (r->first_error)
        printf("  first error  %s\n", r->first_error);
    if (r->unsolicited)
        printf("  note         %" PRIu64 " lines arrived with no request outstanding "
               "(a greeting? try --greeting)\n", r->unsolicited);
}

int main(int argc, char **argv)
{
    int rc = pb_parse(argc, argv);
    if (rc >= 0)
        return rc;
    /* A server closing while we send must give EPIPE, not kill the run. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR) {
        fprintf(stderr, "poolbench: signal: %s\n", pb_strerror(errno));
        return 1;
    }
    if (pb_resolve() != 0)
        return 1;
    /* One fd per connection and epoll set, plus stdio and some slack. */
    if (pb_raise_nofile((size_t)g_opts.connections + (size_t)g_opts.threads + 16) != 0)
        return 1;
    static pb_result result; /* the histogram is large: not on the stack */
    if (pb_setup() != 0 || pb_run(&result) != 0)
        return 1;
    pb_report(&result);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "poolbench: stdout: %s\n", pb_strerror(errno));
        return 1;
    }
    int status = 0;
    if (result.connected == 0) {
        fprintf(stderr, "poolbench: no connection could be made to %s%s%s\n", g_addr_text,
                result.first_error ? ": " : "", result.first_error ? result.first_error : "");
        status = 1;
    }
    for (long i = 0; i < g_opts.threads; i++)
        free(g_threads[i].rbuf);
    free(g_rep);
    free(g_ts);
    free(g_conns);
    free(g_threads);
    return status;
}
