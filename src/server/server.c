/* The server: its life (create, start, drain, stop), the acceptor thread
 * with max_connections and its slot queue, reload; each dispatch
 * mode behind ps__dispatch. */
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "admin.h"
#include "config_diff.h"
#include "conn.h"
#include "linger.h"
#include "net.h"
#include "proxy_stage.h"
#include "tls.h"

/* How long accepting pauses when the process is out of descriptors: long
 * enough not to spin, short enough to resume quickly once some free up. */
#define PS__ACCEPT_PAUSE_MS 100
/* Accepts per wake-up before the acceptor looks at the stop signal again. */
#define PS__ACCEPT_BATCH 64
/* The admin listener's backlog: a burst of probes beyond the admin
 * thread's client slots waits there for one (admin.c), instead of having
 * its handshakes dropped and retried a second later. The kernel caps it
 * at net.core.somaxconn. */
#define PS__ADMIN_BACKLOG 1024

/* The one place that names the modes: no default, so that a mode added to
 * ps_dispatch_mode and not here is a compiler warning. */
static const ps__dispatch *dispatch_of(ps_dispatch_mode mode)
{
    switch (mode) {
    case PS_DISPATCH_CONNECTION:
        return &ps__dispatch_connection;
    case PS_DISPATCH_EVENT:
        return &ps__dispatch_event;
    case PS_DISPATCH_THREAD:
        return &ps__dispatch_thread;
    }
    return &ps__dispatch_event; /* validated: not reached */
}

/* The live copies of cfg's [limits]. */
static void set_limits(ps_server *srv, const ps_config *cfg)
{
    ps__limits *l = &srv->limits;
    atomic_store_explicit(&l->max_connections, cfg->max_connections, memory_order_relaxed);
    atomic_store_explicit(&l->max_connections_wait_ms, cfg->max_connections_wait_ms,
                          memory_order_relaxed);
    atomic_store_explicit(&l->max_line, cfg->max_line, memory_order_relaxed);
    atomic_store_explicit(&l->max_block, cfg->max_block, memory_order_relaxed);
    atomic_store_explicit(&l->max_output, cfg->max_output, memory_order_relaxed);
    atomic_store_explicit(&l->idle_timeout, cfg->idle_timeout, memory_order_relaxed);
    atomic_store_explicit(&l->send_timeout, cfg->send_timeout, memory_order_relaxed);
    atomic_store_explicit(&l->shutdown_timeout, cfg->shutdown_timeout, memory_order_relaxed);
    atomic_store_explicit(&l->slow_handler_ms, cfg->slow_handler_ms, memory_order_relaxed);
}

int ps_server_create(ps_server **out, const ps_config *cfg, const ps_handler *handler, void *ud,
                     char *err, size_t errlen)
{
    char tmp[256];
    if (err == NULL || errlen == 0) {
        err = tmp;
        errlen = sizeof tmp;
    }
    if (out == NULL || cfg == NULL || handler == NULL) {
        snprintf(err, errlen, "ps_server_create: invalid argument");
        return -EINVAL;
    }
    int rc = ps_config_validate(cfg, err, errlen);
    if (rc != 0)
        return rc;
    /* Aligned for the event shards' cache lines (calloc gives only 16). */
    ps_server *srv = aligned_alloc(_Alignof(ps_server), sizeof *srv);
    if (srv == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memset(srv, 0, sizeof *srv);
    srv->cfg = *cfg;
    set_limits(srv, cfg);
    srv->dispatch = dispatch_of(cfg->dispatch);
    srv->handler = handler;
    srv->ud = ud;
    srv->listen_fd = -1;
    srv->admin_fd = -1;
    srv->inherited_fd = -1;
    srv->inherited_admin_fd = -1;
    srv->stop_fd = -1;
    srv->drain_fd = -1;
        srv->start_ms = ps__now_ms();
    for (int i = 0; i < PS__STRIPES; i++) {
        ps__hist_init(&srv->c.handler_time[i]);
        pthread_mutex_init(&srv->registry[i].lock, NULL);
    }
    *out = srv;
    return 0;
}

/* Counts a connection in if max_connections leaves room: the number of
 * connections then active, or 0 (and nothing counted) when it does not. */
static uint64_t count_in(ps_server *srv)
{
    uint64_t active = atomic_fetch_add_explicit(&srv->c.curr_connections, 1,
                                                memory_order_relaxed) + 1;
    if (active <= PS__LIMIT(srv, max_connections))
        return active;
    atomic_fetch_sub_explicit(&srv->c.curr_connections, 1, memory_order_relaxed);
    return 0;
}

/* Tells an accepted socket why it is not served, counts it and closes it. */
static void refuse(ps_server *srv, int fd, atomic_uint_fast64_t *counter, const char *reply)
{
    /* Count first: whoever reads the reply may look at the counters. */
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
    if (srv->tls == NULL) /* a TLS client gets nothing in the clear */
        ps__write_best_effort(fd, reply);
    ps__linger_close(srv, fd); /* so the error is not lost to a reset */
}

static void refuse_max(ps_server *srv, int fd)
{
    refuse(srv, fd, &srv->c.rejected_max, "ERROR too many connections\r\n");
    ps_log_debug("rejected a connection: max_connections (%u) reached",
                 PS__LIMIT(srv, max_connections));
}

/* Hands a counted-in socket to the dispatch without ever blocking the
 * acceptor (or the PROXY stage, which calls it with the header's address). */
static void serve_now(ps_server *srv, int fd, const struct sockaddr *peer, uint64_t active)
{
    ps_conn *c = ps__conn_new(srv, fd, peer);
    if (c != NULL && srv->tls != NULL && ps__tls_attach(srv->tls, c) != 0) {
        ps__conn_close(c); /* never opened: closes fd, counts it out */
        ps_log_error("out of memory for a new TLS session");
        return;
    }
    if (c == NULL) {
        atomic_fetch_sub_explicit(&srv->c.curr_connections, 1, memory_order_relaxed);
        ps_log_error("out of memory for a new connection");
        close(fd);
        return;
    }
    ps_log_debug("connection %llu from %s (%llu active)",
                (unsigned long long)ps_conn_id(c), ps_conn_peer(c),
                (unsigned long long)active);
    int rc = srv->dispatch->take(srv, c);
    if (rc != 0) {
        atomic_fetch_add_explicit(&srv->c.rejected_busy, 1, memory_order_relaxed);
        ps__conn_refuse(c, "ERROR server busy\r\n");
        ps_log_info("connection %llu rejected: %s (%s)", (unsigned long long)ps_conn_id(c),
                    srv->dispatch->busy_why, ps_strerror(rc));
        ps__conn_close(c);
    }
}

/* The PROXY stage's: a connection whose header has been read becomes a
 * client now, if max_connections leaves room. It waits for no slot (the
 * slot queue is the acceptor's alone): a balancer queues and retries. */
static void serve_proxied(ps_server *srv, int fd, const struct sockaddr *peer)
{
    uint64_t active = count_in(srv);
    /* Out of proxy_pending once counted in (a drain watching both never
     * sees it in neither: open_connections) and before it is served (a
     * client that has its greeting is no longer pending). */
    atomic_fetch_sub_explicit(&srv->c.proxy_pending, 1, memory_order_release);
    if (active > 0)
        serve_now(srv, fd, peer, active);
    else
        refuse_max(srv, fd);
}

/*
 * Connections that arrived while max_connections were active. A client that
 * closes is counted out only once the server has read its FIN, and a client
 * that closes one connection and opens another at once would otherwise be
 * refused for a slot that is in fact free: so a connection over the limit
 * waits up to max_connections_wait_ms for a slot, in arrival order, before
 * it is refused. Owned by the acceptor thread alone.
 */
/* Connections waiting at once; past this a new one is refused at once. */
#define PS__SLOT_WAITERS 64
/* How often the waiting connections look for a slot. */
#define PS__SLOT_TICK_MS 1

typedef struct slot_waiter {
    int fd;
    int64_t deadline_ms;
    struct sockaddr_storage peer;
} slot_waiter;

typedef struct slot_queue {
    slot_waiter items[PS__SLOT_WAITERS];
    unsigned head, count;
} slot_queue;

/* Serves the waiting connections that now have a slot and refuses those
 * whose wait is over; oldest first. */
static void slot_queue_run(ps_server *srv, slot_queue *q)
{
    int64_t now = ps__now_ms();
    while (q->count > 0) {
        slot_waiter *w = &q->items[q->head];
        uint64_t active = count_in(srv);
        if (active > 0)
            serve_now(srv, w->fd, (struct sockaddr *)&w->peer, active);
        else if (w->deadline_ms <= now)
            refuse_max(srv, w->fd);
        else
            return;
        q->head = (q->head + 1) % PS__SLOT_WAITERS;
        q->count--;
    }
}

/* Takes one accepted socket: serves it, queues it for a slot, or refuses it. */
static void take_connection(ps_server *srv, slot_queue *q, int fd,
                            const struct sockaddr_storage *peer)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    atomic_fetch_add_explicit(&srv->c.total_connections, 1, memory_order_relaxed);
    if (srv->proxy != NULL) {
        /* Not a client until its header is read: bounded by the stage's
         * proxy_max_pending, counted in at max_connections after. */
        ps__proxy_stage_take(srv, fd, (const struct sockaddr *)peer);
        return;
    }
    uint64_t active = q->count == 0 ? count_in(srv) : 0; /* no overtaking */
    if (active > 0) {
        serve_now(srv, fd, (const struct sockaddr *)peer, active);
        return;
    }
    if (q->count == PS__SLOT_WAITERS || PS__LIMIT(srv, max_connections_wait_ms) == 0) {
        refuse_max(srv, fd);
        return;
    }
    atomic_fetch_add_explicit(&srv->c.slot_waits, 1, memory_order_relaxed);
    slot_waiter *w = &q->items[(q->head + q->count) % PS__SLOT_WAITERS];
    w->fd = fd;
    w->deadline_ms = ps__now_ms() + PS__LIMIT(srv, max_connections_wait_ms);
    w->peer = *peer;
    q->count++;
}

/* At stop, the connections still waiting for a slot are told. */
static void slot_queue_drop(ps_server *srv, slot_queue *q)
{
    for (; q->count > 0; q->count--, q->head = (q->head + 1) % PS__SLOT_WAITERS)
        refuse(srv, q->items[q->head].fd, &srv->c.rejected_shutdown,
               "ERROR server shutting down\r\n");
}

static void *acceptor_main(void *arg)
{
    ps_server *srv = arg;
    int64_t paused_until = 0;
    int64_t last_fd_warning = -1000; /* the first one is always logged */
    slot_queue *slots = calloc(1, sizeof *slots);
    if (slots == NULL) {
        ps_log_error("acceptor: out of memory");
        return NULL;
    }

    while (!atomic_load_explicit(&srv->stopping, memory_order_acquire)) {
        slot_queue_run(srv, slots);
        /* Draining: no more accepts; the clients already waiting for a
         * slot still get theirs (or are refused when their wait ends). */
        bool draining = atomic_load_explicit(&srv->draining, memory_order_acquire);
        if (draining && (slots->count == 0 ||
                         atomic_load_explicit(&srv->drain_cut, memory_order_acquire)))
            break; /* cut short: the waiting ones are told (slot_queue_drop) */
        struct pollfd p[3] = {
            {.fd = srv->stop_fd, .events = POLLIN},
            {.fd = srv->drain_fd, .events = POLLIN},
            {.fd = srv->listen_fd, .events = POLLIN},
        };
        int64_t now = ps__now_ms();
        bool paused = paused_until > now;
        /* While paused, watch only the stop and drain signals: the
         * listening socket would report readable at once and turn the
         * pause into a spin. Draining, the drain signal (readable for
         * good) is left out too. */
        /* The dispatch's periodic work (thread mode joins finished
         * threads once a second). */
        int wait_ms = paused ? (int)(paused_until - now) : srv->dispatch->tick_ms;
        if (slots->count > 0 && (wait_ms < 0 || wait_ms > PS__SLOT_TICK_MS))
            wait_ms = PS__SLOT_TICK_MS;
        int n = poll(p, draining ? 1 : paused ? 2 : 3, wait_ms);
        if (srv->dispatch->tick != NULL)
            srv->dispatch->tick(srv, false);
        if (n < 0 && errno != EINTR) {
            ps_log_error("acceptor poll: %s", ps_strerror(-errno));
            break;
        }
        if (n <= 0 || p[0].revents || p[1].revents || draining)
            continue; /* timeout ends a pause; stop and drain are checked by the loop */

        for (int i = 0; i < PS__ACCEPT_BATCH; i++) {
            struct sockaddr_storage ss;
            int fd = ps__accept(srv->listen_fd, &ss);
            if (fd >= 0) {
                take_connection(srv, slots, fd, &ss);
                continue;
            }
            int e = -fd;
            if (e == EAGAIN)
                break;
            atomic_fetch_add_explicit(&srv->c.accept_errors, 1, memory_order_relaxed);
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays
             * in the backlog; retry after a pause, and log once a second. */
            now = ps__now_ms();
            paused_until = now + PS__ACCEPT_PAUSE_MS;
            if (now - last_fd_warning >= 1000) {
                last_fd_warning = now;
                ps_log_warn("accept: %s; pausing accepts for %d ms (%llu connections active)",
                            ps_strerror(-e), PS__ACCEPT_PAUSE_MS,
                            (unsigned long long)atomic_load(&srv->c.curr_connections));
            }
            break;
        }
    }
    slot_queue_drop(srv, slots);
    free(slots);
    atomic_store_explicit(&srv->acceptor_done, true, memory_order_release);
    return NULL;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* The data and admin listeners: the inherited ones, or bound now. */
static int open_listeners(ps_server *srv, char *err, size_t errlen)
{
    int rc;
    srv->backlog = srv->cfg.backlog > 0 ? srv->cfg.backlog : ps__somaxconn();
    if (srv->inherited_fd >= 0) {
        rc = ps__adopt_listener(srv->inherited_fd, "data", &srv->port, srv->listen_addr,
                                sizeof srv->listen_addr, err, errlen);
        if (rc != 0)
            return rc;
        srv->listen_fd = srv->inherited_fd;
        srv->inherited_fd = -1;
    } else {
        rc = ps__listen(srv->cfg.bind, srv->cfg.port, srv->backlog, srv->cfg.reuseport,
                        &srv->listen_fd, &srv->port, srv->listen_addr, sizeof srv->listen_addr,
                        err, errlen);
        if (rc != 0)
            return rc;
    }
    if (srv->inherited_admin_fd >= 0) {
        rc = ps__adopt_listener(srv->inherited_admin_fd, "admin", &srv->admin_port,
                                srv->admin_addr, sizeof srv->admin_addr, err, errlen);
        if (rc != 0)
            return rc;
        srv->admin_fd = srv->inherited_admin_fd;
        srv->inherited_admin_fd = -1;
    } else if (srv->cfg.admin_enabled) {
        rc = ps__listen(srv->cfg.admin_bind, srv->cfg.admin_port, PS__ADMIN_BACKLOG, false,
                        &srv->admin_fd, &srv->admin_port, srv->admin_addr,
                        sizeof srv->admin_addr, err, errlen);
        if (rc != 0) {
            /* Say which listener failed: prefix the message in place. */
            size_t len = strnlen(err, errlen - 1);
            static const char prefix[] = "admin: ";
            if (len + sizeof prefix <= errlen) {
                memmove(err + sizeof prefix - 1, err, len + 1);
                memcpy(err, prefix, sizeof prefix - 1);
            }
            return rc;
        }
    }
    return 0;
}

/* Every thread, in the order each needs the ones before: linger, the
 * dispatch (its state, the pool, its own threads), the PROXY stage, the
 * admin thread, the acceptor last. */
static int start_threads(ps_server *srv, char *err, size_t errlen)
{
    int rc = ps__linger_start(srv);
    if (rc != 0) {
        snprintf(err, errlen, "linger thread: %s", ps_strerror(rc));
        return rc;
    }
    const ps__dispatch *d = srv->dispatch;
    ps_pool_opts po = {.workers = srv->cfg.workers, .queue_capacity = srv->cfg.queue_capacity};
    if (d->setup != NULL && (rc = d->setup(srv, &po, err, errlen)) != 0)
        return rc;
    if (d->uses_pool && (rc = ps_pool_create(&srv->pool, &po)) != 0) {
        snprintf(err, errlen, "thread pool: %s", ps_strerror(rc));
        return rc;
    }
    if (d->start != NULL && (rc = d->start(srv)) != 0) {
        snprintf(err, errlen, "%s dispatch thread: %s", ps_dispatch_name(srv->cfg.dispatch),
                 ps_strerror(rc));
        return rc;
    }
    if (srv->cfg.proxy_protocol != PS_PROXY_OFF &&
        (rc = ps__proxy_stage_start(srv, serve_proxied, err, errlen)) != 0)
        return rc;
    if (srv->admin_fd >= 0 &&
        (srv->admin = ps__admin_start(srv, srv->admin_fd, srv->stop_fd, srv->drain_fd, &rc)) ==
            NULL) {
        snprintf(err, errlen, "admin thread: %s", ps_strerror(rc));
        return rc;
    }
    rc = -pthread_create(&srv->acceptor, NULL, acceptor_main, srv);
    if (rc != 0) {
        snprintf(err, errlen, "acceptor thread: %s", ps_strerror(rc));
        return rc;
    }
    srv->acceptor_started = true;
    return 0;
}

/* A start that failed: undone in reverse order (the stop signal releases
 * the admin thread), nothing left bound or running. */
static void undo_start(ps_server *srv)
{
    atomic_store(&srv->stopping, true);
    if (srv->stop_fd >= 0) {
        uint64_t one = 1;
        (void)!write(srv->stop_fd, &one, sizeof one);
    }
    ps__admin_join(srv->admin);
    srv->admin = NULL;
    ps__proxy_stage_stop(srv);
    if (srv->dispatch->stop != NULL)
        srv->dispatch->stop(srv);
    ps_pool_destroy(srv->pool);
    srv->pool = NULL;
    if (srv->dispatch->teardown != NULL)
        srv->dispatch->teardown(srv);
    ps__linger_stop(srv);
    close_fd(&srv->listen_fd);
    close_fd(&srv->admin_fd);
    close_fd(&srv->inherited_fd);
    close_fd(&srv->inherited_admin_fd);
    close_fd(&srv->stop_fd);
    close_fd(&srv->drain_fd);
    ps__tls_destroy(srv->tls);
    srv->tls = NULL;
    atomic_store(&srv->stopping, false);
    srv->port = srv->admin_port = 0;
}

static void log_started(const ps_server *srv)
{
    ps_log_always("listening on %s%s%s (dispatch %s, %u workers, queue %zu, backlog %d)",
                  srv->listen_addr, srv->listen_inherited ? " (inherited)" : "",
                  srv->tls != NULL ? " (TLS)" : "",
                  ps_dispatch_name(srv->cfg.dispatch), srv->cfg.workers, srv->cfg.queue_capacity,
                  srv->backlog);
    if (srv->admin_fd < 0)
        return;
    ps_log_always("admin on %s%s", srv->admin_addr, srv->admin_inherited ? " (inherited)" : "");
    if (!ps__is_loopback(srv->admin_fd))
        ps_log_warn("admin on %s is reachable beyond this machine and has no "
                    "authentication: bind it to loopback (admin.bind) or firewall it",
                    srv->admin_addr);
}

int ps_server_start(ps_server *srv, char *err, size_t errlen)
{
    char tmp[256];
    if (err == NULL) {
        err = tmp;
        errlen = sizeof tmp;
    }
    if (srv->started) {
        snprintf(err, errlen, "server already started");
        return -EALREADY;
    }
    int rc = 0;
    srv->start_ms = ps__now_ms(); /* before any thread can read it */
    srv->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    srv->drain_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (srv->stop_fd < 0 || srv->drain_fd < 0) {
        rc = -errno;
        snprintf(err, errlen, "eventfd: %s", ps_strerror(rc));
    }
    if (rc == 0 && srv->cfg.tls_enabled)
        rc = ps__tls_create(&srv->tls, &srv->cfg, err, errlen);
    if (rc == 0)
        rc = open_listeners(srv, err, errlen);
    if (rc == 0)
        rc = start_threads(srv, err, errlen);
    if (rc != 0) {
        undo_start(srv);
        return rc;
    }
    srv->started = true;
    atomic_store_explicit(&srv->serving, true, memory_order_release);
    log_started(srv);
    return 0;
}

int ps_server_use_listeners(ps_server *srv, int data_fd, int admin_fd)
{
    if (srv == NULL || srv->started || data_fd < 0)
        return -EINVAL;
    srv->inherited_fd = data_fd;
    srv->inherited_admin_fd = admin_fd;
    srv->listen_inherited = true;
    srv->admin_inherited = admin_fd >= 0;
    return 0;
}

/* ps_server_reload: a key it cannot apply now ([limits] and log.level it
 * can). */
static void needs_restart(const char *key, const char *was, const char *now, void *arg)
{
    if (strcmp(key, "log.level") == 0 || strncmp(key, "limits.", 7) == 0) {
        ps_log_always("reload: %s %s (was %s)", key, now, was);
        return; /* applied */
    }
    int *n = arg;
    (*n)++;
    if (strcmp(key, "handler keys") == 0)
        ps_log_warn("reload: the handler's keys changed: needs restart (the old ones stay)");
    else
        ps_log_warn("reload: %s needs restart (stays %s)", key, was);
}

/* TLS: the files are read again on every reload (a certificate renewed in
 * place keeps its path), and a new context replaces the old for the next
 * clients. What the context is made of applies with it; tls.enabled and
 * handshake_timeout (read by the workers) need a restart. A file that is
 * broken fails the reload and keeps the context that runs. */
static int reload_tls(ps_server *srv, const ps_config *next, char *err, size_t errlen)
{
    if (srv->tls == NULL || !next->tls_enabled)
        return 0;
    int rc = ps__tls_reload(srv->tls, next, err, errlen);
    if (rc != 0)
        return rc;
    ps_config *cfg = &srv->cfg;
    memcpy(cfg->tls_cert, next->tls_cert, sizeof cfg->tls_cert);
    memcpy(cfg->tls_key, next->tls_key, sizeof cfg->tls_key);
    memcpy(cfg->tls_ca, next->tls_ca, sizeof cfg->tls_ca);
    memcpy(cfg->tls_ciphers, next->tls_ciphers, sizeof cfg->tls_ciphers);
    memcpy(cfg->tls_ciphersuites, next->tls_ciphersuites, sizeof cfg->tls_ciphersuites);
    cfg->tls_verify_client = next->tls_verify_client;
    cfg->tls_min_version = next->tls_min_version;
    cfg->tls_session_tickets = next->tls_session_tickets;
    ps_log_always("reload: TLS certificate %s and settings applied to new clients", cfg->tls_cert);
    return 0;
}

/* Whether the handler's keys (its [handler] keys, or server.greeting) differ. */
static bool handler_keys_changed(const ps_config *a, const ps_config *b)
{
    return strcmp(a->greeting, b->greeting) != 0 || !ps__config_handler_keys_equal(a, b);
}

void ps_server_set_handler_reload(ps_server *srv, ps_handler_reload_fn fn, void *arg)
{
    if (srv == NULL || srv->started)
        return;
    srv->handler_reload = fn;
    srv->handler_reload_arg = arg;
}

int ps_server_reload(ps_server *srv, const ps_config *next, char *err, size_t errlen)
{
    char tmp[256];
    if (err == NULL || errlen == 0) {
        err = tmp;
        errlen = sizeof tmp;
    }
    int rc = next == NULL ? PS_ECONFIG : ps_config_validate(next, err, errlen);
    if (rc != 0) {
        atomic_fetch_add_explicit(&srv->c.reload_errors, 1, memory_order_relaxed);
        return rc;
    }
    if (handler_keys_changed(&srv->cfg, next) && srv->handler_reload != NULL &&
        strcmp(srv->cfg.handler_module, next->handler_module) == 0 &&
        srv->cfg.handler == next->handler) {
        rc = srv->handler_reload(next, srv->handler_reload_arg, err, errlen);
        if (rc < 0) {
            atomic_fetch_add_explicit(&srv->c.reload_errors, 1, memory_order_relaxed);
            return rc;
        }
        if (rc == 0) {
            /* Applied: what runs is the new keys, for the diff below too. */
            memcpy(srv->cfg.greeting, next->greeting, sizeof srv->cfg.greeting);
            srv->cfg.handler_nkeys = next->handler_nkeys;
            memcpy(srv->cfg.handler_keys, next->handler_keys, sizeof srv->cfg.handler_keys);
            ps_log_always("reload: the handler's keys applied");
        }
    }
    rc = reload_tls(srv, next, err, errlen);
    if (rc != 0) {
        atomic_fetch_add_explicit(&srv->c.reload_errors, 1, memory_order_relaxed);
        return rc;
    }
    int restart = 0;
    ps__config_diff(&srv->cfg, next, needs_restart, &restart);
    /* cfg keeps what runs (only this thread reads its limits and level);
     * the limits apply to the next line, connection or wait. */
    ps__config_copy_section(&srv->cfg, next, "limits");
    ps__config_copy_section(&srv->cfg, next, "log");
    set_limits(srv, &srv->cfg);
    ps_log_set_level(srv->cfg.log_level);
    atomic_fetch_add_explicit(&srv->c.reloads, 1, memory_order_relaxed);
    ps_log_always("reloaded: log.level %s and limits applied; %d changed key%s need%s a restart",
                  ps_log_level_name(next->log_level), restart, restart == 1 ? "" : "s",
                  restart == 1 ? "s" : "");
    return 0;
}

bool ps_server_healthy(const ps_server *srv)
{
    return srv->started && !atomic_load_explicit(&srv->stopping, memory_order_acquire) &&
           !atomic_load_explicit(&srv->acceptor_done, memory_order_acquire);
}

uint16_t ps_server_port(const ps_server *srv) { return srv->listen_fd >= 0 ? srv->port : 0; }
uint16_t ps_server_admin_port(const ps_server *srv) { return srv->admin_fd >= 0 ? srv->admin_port : 0; }
int ps_server_listen_fd(const ps_server *srv) { return srv->listen_fd; }
int ps_server_admin_listen_fd(const ps_server *srv) { return srv->admin_fd; }

void ps_server_announce_stop(ps_server *srv)
{
    if (srv != NULL && !atomic_exchange(&srv->stop_announced, true))
        ps_log_always("announcing the stop: ready says NOT READY, agent says drain");
}

void ps_server_handed_over(ps_server *srv)
{
    if (srv != NULL)
        atomic_store_explicit(&srv->handed_over, true, memory_order_release);
}

void ps_server_drain_cut(ps_server *srv)
{
    /* Only a lock-free store: safe in a signal handler. */
    if (srv != NULL)
        atomic_store_explicit(&srv->drain_cut, true, memory_order_release);
}

static bool drain_is_cut(const ps_server *srv)
{
    return atomic_load_explicit(&srv->drain_cut, memory_order_acquire);
}

/* What a drain waits for: the clients, and the connections still sending
 * their PROXY header (they become clients or are closed soon).
 * serve_proxied counts one in as a client before out of proxy_pending, so
 * reading proxy_pending first never misses one that moves between the two. */
static uint64_t open_connections(ps_server *srv)
{
    uint64_t pending = atomic_load_explicit(&srv->c.proxy_pending, memory_order_acquire);
    return pending + atomic_load_explicit(&srv->c.curr_connections, memory_order_relaxed);
}

unsigned ps_server_drain(ps_server *srv)
{
    if (srv == NULL || !srv->started || srv->stopped)
        return 0;
    if (!atomic_exchange_explicit(&srv->draining, true, memory_order_acq_rel)) {
        uint64_t one = 1;
        if (write(srv->drain_fd, &one, sizeof one) < 0)
            ps_log_error("drain signal: %s", ps_strerror(-errno));
        /* The acceptor ends once no client waits for a slot any more. The
         * listener stays open until stop: whoever shares it (a process
         * that inherited it) takes the connections waiting there. */
        if (srv->acceptor_started)
            pthread_join(srv->acceptor, NULL);
        srv->acceptor_started = false;
    }
    unsigned timeout = PS__LIMIT(srv, shutdown_timeout);
    int64_t deadline = ps__now_ms() + (int64_t)timeout * 1000;
    uint64_t left = open_connections(srv);
    ps_log_always("draining: %llu connection%s open; waiting up to %us for them to close",
                  (unsigned long long)left, left == 1 ? "" : "s", timeout);
    /* The connections end on their own, on whichever threads serve them;
     * this thread only watches the count and the cut, a few times per
     * 10 ms. */
    while (left > 0 && ps__now_ms() < deadline && !drain_is_cut(srv)) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 2 * 1000 * 1000};
        nanosleep(&ts, NULL);
        left = open_connections(srv);
    }
    if (left == 0)
        ps_log_always("drained: every connection closed");
    else if (drain_is_cut(srv))
        ps_log_always("drain cut short: %llu connection%s still open; stopping now",
                      (unsigned long long)left, left == 1 ? "" : "s");
    else
        ps_log_warn("drain: %llu connection%s still open after %us; closing them",
                    (unsigned long long)left, left == 1 ? "" : "s", timeout);
    return (unsigned)left;
}

void ps_server_stop(ps_server *srv)
{
    if (srv == NULL || !srv->started || srv->stopped)
        return;
    srv->stopped = true;
    atomic_store_explicit(&srv->stop_deadline_ms,
                          ps__now_ms() + (int64_t)PS__LIMIT(srv, shutdown_timeout) * 1000,
                          memory_order_relaxed);
    atomic_store_explicit(&srv->stopping, true, memory_order_release);
    uint64_t one = 1;
    if (write(srv->stop_fd, &one, sizeof one) < 0)
        ps_log_error("stop signal: %s", ps_strerror(-errno));

    /* First no new connections, then no admin reader of the pool, then the
     * pool (the stop signal already woke its poller): workers answer the
     * lines they hold and close their clients; parked connections last. */
    if (srv->acceptor_started)
        pthread_join(srv->acceptor, NULL);
    srv->acceptor_started = false;
    close_fd(&srv->listen_fd);
    ps__proxy_stage_stop(srv); /* no more from the acceptor; before the pool goes */
    if (srv->dispatch->tick != NULL)
        srv->dispatch->tick(srv, true); /* thread mode: joins every thread */
    ps__admin_join(srv->admin);
    srv->admin = NULL;
    close_fd(&srv->admin_fd);
    const ps__dispatch *d = srv->dispatch;
    if (d->stop != NULL)
        d->stop(srv); /* event mode: its watch thread wakes workers of the pool */
    ps_pool_destroy(srv->pool);
    srv->pool = NULL;
    if (d->close_all != NULL)
        d->close_all(srv);
    if (d->teardown != NULL)
        d->teardown(srv);
    ps__linger_stop(srv); /* last: every connection has handed its socket over */
    ps__tls_destroy(srv->tls);
    srv->tls = NULL;
    close_fd(&srv->stop_fd);
    close_fd(&srv->drain_fd);
    ps_log_info("stopped: %llu connections served",
                (unsigned long long)atomic_load(&srv->c.total_connections));
}

void ps_server_destroy(ps_server *srv)
{
    if (srv == NULL)
        return;
    ps_server_stop(srv);
    close_fd(&srv->inherited_fd); /* given and never started */
    close_fd(&srv->inherited_admin_fd);
    for (int i = 0; i < PS__STRIPES; i++)
        pthread_mutex_destroy(&srv->registry[i].lock);
    free(srv);
}
