/* The server's counters: the calling thread's stripe, the handler-time
 * histograms, and the sums that ps_server_get_stats and
 * ps_server_get_pool_stats report. Below the server, the connections and
 * the dispatch modes, which all count here; calls nothing of theirs. Also
 * the readiness that the admin port's `ready` and `agent` report. */
#include <limits.h>
#include <string.h>

#include "internal.h"

static atomic_uint stripe_next;

ps__stripe *ps__stripe_of(ps_server *srv)
{
    /* Threads take stripes in turn, once: workers spread over them. */
    static _Thread_local unsigned idx = UINT_MAX;
    if (idx == UINT_MAX)
        idx = atomic_fetch_add_explicit(&stripe_next, 1, memory_order_relaxed) % PS__STRIPES;
    return &srv->c.stripes[idx];
}

ps__hist *ps__handler_time_of(ps_server *srv)
{
    return &srv->c.handler_time[ps__stripe_of(srv) - srv->c.stripes];
}

void ps__handler_time_snapshot(ps_server *srv, ps__hist_snapshot *into)
{
    for (int i = 0; i < PS__STRIPES; i++)
        ps__hist_add(into, &srv->c.handler_time[i]);
}

void ps_server_get_stats(const ps_server *srv, ps_server_stats *st)
{
    const ps__counters *c = &srv->c;
    int64_t parked = 0;
    memset(st, 0, sizeof *st);
    st->curr_connections = atomic_load_explicit(&c->curr_connections, memory_order_relaxed);
    st->total_connections = atomic_load_explicit(&c->total_connections, memory_order_relaxed);
    st->rejected_busy = atomic_load_explicit(&c->rejected_busy, memory_order_relaxed);
    st->rejected_max = atomic_load_explicit(&c->rejected_max, memory_order_relaxed);
    st->rejected_shutdown = atomic_load_explicit(&c->rejected_shutdown, memory_order_relaxed);
    st->slot_waits = atomic_load_explicit(&c->slot_waits, memory_order_relaxed);
    st->replies_deferred = atomic_load_explicit(&c->replies_deferred, memory_order_relaxed);
    st->reloads = atomic_load_explicit(&c->reloads, memory_order_relaxed);
    st->reload_errors = atomic_load_explicit(&c->reload_errors, memory_order_relaxed);
    st->proxy_errors = atomic_load_explicit(&c->proxy_errors, memory_order_relaxed);
    st->output_overflows = atomic_load_explicit(&c->output_overflows, memory_order_relaxed);
    st->sends_refused = atomic_load_explicit(&c->sends_refused, memory_order_relaxed);
    st->tls_handshakes = atomic_load_explicit(&c->tls_handshakes, memory_order_relaxed);
    st->tls_errors = atomic_load_explicit(&c->tls_errors, memory_order_relaxed);
    st->tls_timeouts = atomic_load_explicit(&c->tls_timeouts, memory_order_relaxed);
    st->proxy_pending = atomic_load_explicit(&c->proxy_pending, memory_order_relaxed);
    st->rejected_proxy_pending =
        atomic_load_explicit(&c->rejected_proxy_pending, memory_order_relaxed);
    st->rejected_connections = st->rejected_busy + st->rejected_max + st->rejected_shutdown;
    for (int i = 0; i < PS__STRIPES; i++) {
        st->lines += atomic_load_explicit(&c->stripes[i].lines, memory_order_relaxed);
        st->blocks += atomic_load_explicit(&c->stripes[i].blocks, memory_order_relaxed);
        st->bytes_in += atomic_load_explicit(&c->stripes[i].bytes_in, memory_order_relaxed);
        st->bytes_out += atomic_load_explicit(&c->stripes[i].bytes_out, memory_order_relaxed);
        parked += atomic_load_explicit(&c->stripes[i].parked, memory_order_relaxed);
    }
    st->parked_connections = parked > 0 ? (uint64_t)parked : 0;
    st->lines_too_long = atomic_load_explicit(&c->lines_too_long, memory_order_relaxed);
    st->idle_timeouts = atomic_load_explicit(&c->idle_timeouts, memory_order_relaxed);
    st->send_timeouts = atomic_load_explicit(&c->send_timeouts, memory_order_relaxed);
    st->accept_errors = atomic_load_explicit(&c->accept_errors, memory_order_relaxed);
    st->admin_commands = atomic_load_explicit(&c->admin_commands, memory_order_relaxed);
    st->admin_refused = atomic_load_explicit(&c->admin_refused, memory_order_relaxed);
    st->slow_handlers = atomic_load_explicit(&c->slow_handlers, memory_order_relaxed);
    st->uptime_seconds = (uint64_t)(ps__now_ms() - srv->start_ms) / 1000;
}

void ps_server_get_pool_stats(const ps_server *srv, ps_pool_stats *st)
{
    memset(st, 0, sizeof *st);
    if (srv->pool != NULL)
        ps_pool_get_stats(srv->pool, st);
    if (srv->dispatch->pool_stats != NULL)
        srv->dispatch->pool_stats(srv, st);
}

ps__readiness ps__server_readiness(const ps_server *srv)
{
    if (!atomic_load_explicit(&srv->serving, memory_order_acquire))
        return PS__NOT_READY_STARTING;
    if (atomic_load_explicit(&srv->stop_announced, memory_order_acquire) ||
        atomic_load_explicit(&srv->draining, memory_order_acquire) ||
        atomic_load_explicit(&srv->stopping, memory_order_acquire))
        return PS__NOT_READY_DRAINING;
    int64_t since = atomic_load_explicit(&srv->saturated_since_ms, memory_order_relaxed);
    if (since != 0 && ps__now_ms() - since >= PS__SATURATED_MS)
        return PS__NOT_READY_FULL;
    return PS__READY;
}

void ps__server_watch_saturation(ps_server *srv, int64_t now)
{
    ps_pool_stats ps;
    ps_server_get_pool_stats(srv, &ps);
    /* See full_pool_waits (internal.h). */
    bool waiting = ps.queue_depth > 0 || srv->dispatch->full_pool_waits;
    bool full = ps.max_threads > 0 && ps.available_threads == 0 && waiting;
    int64_t since = atomic_load_explicit(&srv->saturated_since_ms, memory_order_relaxed);
    if (full && since == 0)
        atomic_store_explicit(&srv->saturated_since_ms, now, memory_order_relaxed);
    else if (!full && since != 0)
        atomic_store_explicit(&srv->saturated_since_ms, 0, memory_order_relaxed);
}

const char *ps__server_mode_name(const ps_server *srv)
{
    return ps_dispatch_name(srv->cfg.dispatch);
}

void ps__server_mode_stats(const ps_server *srv, ps__stat_fn emit, void *arg)
{
    if (srv->dispatch->add_stats != NULL)
        srv->dispatch->add_stats(srv, emit, arg);
}

bool ps__server_conn_parked(const ps_server *srv, const ps_conn *conn)
{
    return srv->dispatch->is_parked != NULL && srv->dispatch->is_parked(conn);
}

void ps__server_count_admin_command(ps_server *srv)
{
    atomic_fetch_add_explicit(&srv->c.admin_commands, 1, memory_order_relaxed);
}

void ps__server_count_admin_refused(ps_server *srv)
{
    atomic_fetch_add_explicit(&srv->c.admin_refused, 1, memory_order_relaxed);
}
