/*
 * The server's counters as Prometheus text (exposition format 0.0.4), for
 * the admin port's `metrics` command and `GET /metrics`, and the lock-free
 * histogram of handler times it shows. Pure code: it formats the snapshots
 * it is given and reads no clock, no socket and no server.
 */
#include "metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "poolsrv/version.h"

/* 1-2.5-5 steps: a handler's usual microseconds to a stuck one's seconds. */
const uint64_t ps__hist_bounds_ns[PS__HIST_BOUNDS] = {
    10000,      25000,      50000,      100000,     250000,     500000,     1000000,
    2500000,    5000000,    10000000,   25000000,   50000000,   100000000,  250000000,
    500000000,  1000000000, 2500000000, 5000000000, 10000000000,
};

_Static_assert(sizeof(ps__hist) % 64 == 0 && _Alignof(ps__hist) == 64,
               "histograms side by side never share a cache line");

void ps__hist_init(ps__hist *h)
{
    for (int i = 0; i < PS__HIST_BUCKETS; i++)
        atomic_init(&h->bucket[i], 0);
    atomic_init(&h->sum_ns, 0);
}

/* The index of the first bound >= nsec, PS__HIST_BOUNDS for +Inf: the
 * number of bounds below nsec. 19 compares without a branch, which the
 * compiler unrolls or vectorizes; cheaper than a mispredicted search. */
static unsigned bucket_of(uint64_t nsec)
{
    unsigned idx = 0;
    for (unsigned i = 0; i < PS__HIST_BOUNDS; i++)
        idx += nsec > ps__hist_bounds_ns[i];
    return idx;
}

void ps__hist_observe(ps__hist *h, uint64_t nsec)
{
    /* Relaxed: each counter only ever grows and is read on its own; no
     * other memory is published through them. */
    atomic_fetch_add_explicit(&h->bucket[bucket_of(nsec)], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, nsec < PS__HIST_SUM_MAX_NS ? nsec : PS__HIST_SUM_MAX_NS,
                              memory_order_relaxed);
}

void ps__hist_add(ps__hist_snapshot *into, const ps__hist *h)
{
    for (int i = 0; i < PS__HIST_BUCKETS; i++) {
        uint64_t n = atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        into->bucket[i] += n;
        into->count += n;
    }
    into->sum_ns += atomic_load_explicit(&h->sum_ns, memory_order_relaxed);
}

/* One row per field of ps_server_stats and ps_pool_stats: a field added to
 * either struct is one line here (test_metrics fails until it is). Names
 * follow the admin `stats` command's; counters end in _total. Uptime is a
 * gauge of seconds rather than a start timestamp: it is what the server
 * measures (a monotonic clock); `time() - poolsrv_uptime_seconds` gives the
 * start in PromQL, and a drop in it a restart. */
#define SRV(field, name, type, help)                                                  \
    {"poolsrv_" name, help, type, PS__FROM_SERVER, offsetof(ps_server_stats, field), \
     sizeof(((ps_server_stats *)0)->field)}
#define POOL(field, name, type, help)                                             \
    {"poolsrv_" name, help, type, PS__FROM_POOL, offsetof(ps_pool_stats, field), \
     sizeof(((ps_pool_stats *)0)->field)}

static const ps__metrics_field fields[] = {
    SRV(curr_connections, "curr_connections", PS__GAUGE, "Client connections open now."),
    SRV(total_connections, "connections_total", PS__COUNTER,
        "Client connections accepted, those refused after accept included."),
    SRV(rejected_connections, "rejected_connections_total", PS__COUNTER,
        "Connections refused: busy, max_connections and shutdown together."),
    SRV(rejected_busy, "rejected_busy_total", PS__COUNTER,
        "Connections refused because the queue was full."),
    SRV(rejected_max, "rejected_max_connections_total", PS__COUNTER,
        "Connections refused at max_connections."),
    SRV(rejected_shutdown, "rejected_shutdown_total", PS__COUNTER,
        "Connections still queued when the server stopped."),
    SRV(slot_waits, "slot_waits_total", PS__COUNTER,
        "Connections that waited for a slot at max_connections."),
    SRV(replies_deferred, "replies_deferred_total", PS__COUNTER, "Calls to ps_reply_defer."),
    SRV(reloads, "reloads_total", PS__COUNTER, "Configuration reloads applied."),
    SRV(reload_errors, "reload_errors_total", PS__COUNTER,
        "Configuration reloads refused because the configuration was broken."),
    SRV(proxy_errors, "proxy_errors_total", PS__COUNTER,
        "Connections closed for a PROXY header missing, malformed, late, cut or from an untrusted peer."),
    SRV(output_overflows, "output_overflows_total", PS__COUNTER,
        "Connections closed because their queued output passed limits.max_output."),
    SRV(sends_refused, "sends_refused_total", PS__COUNTER,
        "ps_conn_ref_send calls refused because 256 KiB already waited for a client not reading."),
    SRV(tls_handshakes, "tls_handshakes_total", PS__COUNTER, "TLS handshakes done."),
    SRV(tls_errors, "tls_errors_total", PS__COUNTER,
        "TLS handshakes that failed: a plaintext client, a bad hello, a refused certificate."),
    SRV(tls_timeouts, "tls_timeouts_total", PS__COUNTER,
        "TLS handshakes not done within tls.handshake_timeout."),
    SRV(lines, "lines_total", PS__COUNTER, "Lines received and passed to the handler."),
    SRV(blocks, "blocks_total", PS__COUNTER,
        "Length-delimited blocks (ps_conn_read_bytes) received and passed to the handler."),
    SRV(bytes_in, "bytes_in_total", PS__COUNTER, "Bytes read from clients."),
    SRV(bytes_out, "bytes_out_total", PS__COUNTER, "Bytes written to clients."),
    SRV(lines_too_long, "lines_too_long_total", PS__COUNTER, "Lines longer than max_line."),
    SRV(idle_timeouts, "idle_timeouts_total", PS__COUNTER,
        "Connections closed for being idle too long."),
    SRV(send_timeouts, "send_timeouts_total", PS__COUNTER,
        "Connections closed because a client did not read its replies in time."),
    SRV(accept_errors, "accept_errors_total", PS__COUNTER, "Failed accept calls."),
    SRV(admin_commands, "admin_commands_total", PS__COUNTER, "Commands on the admin port."),
    SRV(admin_refused, "admin_refused_total", PS__COUNTER,
        "Admin clients refused because every admin slot stayed busy."),
    SRV(slow_handlers, "slow_handlers_total", PS__COUNTER,
        "Handler calls that took longer than slow_handler_ms."),
    SRV(parked_connections, "parked_connections", PS__GAUGE,
        "Event dispatch: connections waiting for input in epoll."),
    SRV(uptime_seconds, "uptime_seconds", PS__GAUGE, "Seconds since the server started."),
    SRV(proxy_pending, "proxy_pending", PS__GAUGE,
        "Connections waiting for their PROXY header now."),
    SRV(rejected_proxy_pending, "rejected_proxy_pending_total", PS__COUNTER,
        "Connections closed still without a PROXY header to make room at proxy_max_pending."),
    POOL(submitted, "jobs_submitted_total", PS__COUNTER, "Jobs accepted into the pool's queue."),
    POOL(completed, "jobs_completed_total", PS__COUNTER, "Jobs whose function has returned."),
    POOL(rejected, "jobs_rejected_total", PS__COUNTER,
        "Jobs refused because the pool's queue was full."),
    POOL(futures_begun, "futures_begun_total", PS__COUNTER, "Asynchronous invocations begun."),
    POOL(futures_completed, "futures_completed_total", PS__COUNTER,
        "Asynchronous invocations whose result is stored."),
    POOL(futures_live, "futures_live", PS__GAUGE, "Futures begun and not freed yet."),
    POOL(max_threads, "max_threads", PS__GAUGE, "Worker threads: the pool size."),
    POOL(busy_threads, "busy_threads", PS__GAUGE, "Workers running a job now."),
    POOL(available_threads, "available_threads", PS__GAUGE, "Workers not running a job now."),
    POOL(queue_depth, "queue_depth", PS__GAUGE, "Jobs waiting for a worker."),
    POOL(queue_capacity, "queue_capacity", PS__GAUGE, "Jobs that may wait for a worker."),
};

const ps__metrics_field *ps__metrics_fields(size_t *n)
{
    *n = sizeof fields / sizeof fields[0];
    return fields;
}

uint64_t ps__metrics_value(const ps__metrics_field *f, const ps_server_stats *st,
                           const ps_pool_stats *ps)
{
    const char *base = f->from == PS__FROM_SERVER ? (const char *)st : (const char *)ps;
    if (f->size == sizeof(uint32_t)) {
        uint32_t v;
        memcpy(&v, base + f->offset, sizeof v);
        return v;
    }
    uint64_t v;
    memcpy(&v, base + f->offset, sizeof v);
    return v;
}

/* Text into a caller's buffer, counting what does not fit (snprintf's
 * way): once a piece does not fit, none after it is written, and len keeps
 * growing to the whole text's length. */
typedef struct out {
    char *buf;
    size_t cap, len;
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->len < o->cap && n < o->cap - o->len) /* room for the NUL too */
        memcpy(o->buf + o->len, s, n);
    o->len += n;
}

static void put_str(out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(out *o, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64, v);
    put(o, tmp, (size_t)n);
}

/* Nanoseconds as decimal seconds, exactly, without trailing zeros:
 * 10000 -> "0.00001", 2500000000 -> "2.5", 0 -> "0". No float, so no NaN and no
 * rounding. */
static void put_seconds(out *o, uint64_t ns)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%" PRIu64 ".%09" PRIu64, ns / 1000000000, ns % 1000000000);
    while (tmp[n - 1] == '0')
        n--;
    if (tmp[n - 1] == '.')
        n--;
    put(o, tmp, (size_t)n);
}

/* A label value, escaped as the text format asks: \\, \" and \n. */
static void put_label_value(out *o, const char *s)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            put_str(o, "\\\\");
        else if (*s == '"')
            put_str(o, "\\\"");
        else if (*s == '\n')
            put_str(o, "\\n");
        else
            put(o, s, 1);
    }
}

static void put_family(out *o, const char *name, const char *type, const char *help)
{
    put_str(o, "# HELP ");
    put_str(o, name);
    put_str(o, " ");
    put_str(o, help);
    put_str(o, "\n# TYPE ");
    put_str(o, name);
    put_str(o, " ");
    put_str(o, type);
    put_str(o, "\n");
}

static void put_histogram(out *o, const char *name, const char *help, const ps__hist_snapshot *h)
{
    put_family(o, name, "histogram", help);
    uint64_t below = 0; /* Prometheus buckets are cumulative */
    for (int i = 0; i < PS__HIST_BUCKETS; i++) {
        below += h->bucket[i];
        put_str(o, name);
        put_str(o, "_bucket{le=\"");
        if (i < PS__HIST_BOUNDS)
            put_seconds(o, ps__hist_bounds_ns[i]);
        else
            put_str(o, "+Inf");
        put_str(o, "\"} ");
        put_u64(o, below);
        put_str(o, "\n");
    }
    put_str(o, name);
    put_str(o, "_sum ");
    put_seconds(o, h->sum_ns);
    put_str(o, "\n");
    put_str(o, name);
    put_str(o, "_count ");
    put_u64(o, h->count);
    put_str(o, "\n");
}

int ps__metrics_render(char *buf, size_t cap, const ps_server_stats *st, const ps_pool_stats *ps,
                       const ps__hist_snapshot *handler_time)
{
    if (st == NULL || ps == NULL || (buf == NULL && cap != 0))
        return -EINVAL;
    out o = {.buf = buf, .cap = cap, .len = 0};

    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const ps__metrics_field *f = &fields[i];
        put_family(&o, f->name, f->type == PS__COUNTER ? "counter" : "gauge", f->help);
        put_str(&o, f->name);
        put_str(&o, " ");
        put_u64(&o, ps__metrics_value(f, st, ps));
        put_str(&o, "\n");
    }
    if (handler_time != NULL)
        put_histogram(&o, "poolsrv_handler_seconds",
                      "Time each handler call for a line took, in seconds.", handler_time);
    put_family(&o, "poolsrv_build_info", "gauge", "The library's version; the value is always 1.");
    put_str(&o, "poolsrv_build_info{version=\"");
    put_label_value(&o, ps_version());
    put_str(&o, "\"} 1\n");

    if (o.len >= cap) {
        if (cap > 0)
            buf[0] = '\0';
    } else {
        buf[o.len] = '\0';
    }
    return o.len > INT_MAX ? -EOVERFLOW : (int)o.len;
}
