/*
 * dispatch = event: the seed's asynchronous server, done with epoll.
 *
 * A connection is in one of two hands. PARKED: registered in epoll with
 * EPOLLONESHOT, owned by nobody, costing no thread. RUNNING: a job in the
 * pool's queue or on a worker, owned by that worker alone. The poller turns
 * a readiness event into a job; the worker reads, runs the handler over the
 * complete lines, writes the replies and parks the connection again.
 *
 * The poller is not a thread of its own but the pool's idle hook: an idle
 * worker waits in epoll_wait and serves the ready connections it gets
 * itself (leader/followers). Connections are spread over one epoll set per
 * CPU, so that many workers poll at once. That saves a thread hand-off per
 * request, the largest cost of a separate poller thread; the pool's queue
 * carries no jobs in this mode (the epoll ready lists play its part).
 *
 * Timeouts are found by a sweep in the poller, which may close only PARKED
 * connections of the shard it holds. A worker parks under the connection's
 * lock and the sweep checks under it too, so a connection is never closed by
 * the sweep while a worker is still re-arming it. Events from a shard become
 * jobs while its poller still holds it, before its sweep, so the two never
 * race either.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"

enum { CONN_RUNNING = 0, CONN_PARKED = 1 };

/* Ready connections one poller call takes and serves itself. Anything
 * else stays in the epoll set for the next poller: handing connections to
 * other workers through the queue costs a wake-up each, which measured
 * slower than serving the batch here on every machine size we tried. */
#define PS__BATCH 64
#define PS__SWEEP_MS 250
/* Reads one job may do before the connection goes back behind the others:
 * a client that floods cannot keep a worker. */
#define PS__READ_BUDGET 8

static void list_add(ps_server *srv, ps_conn *c)
{
    ps__lock(&srv->conns_lock);
    c->prev = NULL;
    c->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = c;
    srv->conns = c;
    ps__unlock(&srv->conns_lock);
}

/* Caller holds conns_lock. */
static void list_unlink(ps_server *srv, ps_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Closes a connection its caller owns (RUNNING, or unlinked by the sweep). */
static void event_close(ps_server *srv, ps_conn *c, bool linked)
{
    if (linked) {
        ps__lock(&srv->conns_lock);
        list_unlink(srv, c);
        ps__unlock(&srv->conns_lock);
    }
    /* The worker that parked this connection may still be inside park()'s
     * unlock when the event it armed hands the connection to us: wait for
     * it to leave before the lock is destroyed with the connection. */
    ps__lock(&c->lock);
    ps__unlock(&c->lock);
    ps__conn_close(c); /* closing the fd also removes it from epoll */
}

/* Hands the connection back to epoll. After this the caller must not touch
 * it: another worker may already own it. */
static void park(ps_server *srv, ps_conn *c, bool want_write)
{
    ps__lock(&c->lock);
    c->want_write = want_write;
    struct epoll_event ev = {.events = (want_write ? EPOLLOUT : EPOLLIN) | EPOLLONESHOT,
                             .data.ptr = c};
    atomic_fetch_add_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    atomic_store_explicit(&c->state, CONN_PARKED, memory_order_release);
    int epfd = srv->epfds[c->shard];
    int rc = epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    if (rc < 0 && errno == ENOENT)
        rc = epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (rc < 0) {
        int e = errno;
        atomic_store_explicit(&c->state, CONN_RUNNING, memory_order_relaxed);
        atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
        ps__unlock(&c->lock);
        ps_log_error("connection %llu: epoll_ctl: %s", (unsigned long long)c->id, strerror(e));
        event_close(srv, c, true);
        return;
    }
    ps__unlock(&c->lock);
}

/* True when the connection waiting for what it wants (input, or room for
 * output) has waited past its deadline. */
static bool deadline_passed(const ps_server *srv, const ps_conn *c, int64_t now)
{
    if (c->want_write)
        return now - c->write_wait_ms >= (int64_t)srv->cfg.send_timeout * 1000;
    return srv->cfg.idle_timeout > 0 &&
           now - c->last_line_ms >= (int64_t)srv->cfg.idle_timeout * 1000;
}

/* Counts, logs and closes a connection found past its deadline. */
static void close_timed_out(ps_server *srv, ps_conn *c, bool linked)
{
    if (c->want_write) {
        atomic_fetch_add_explicit(&srv->c.send_timeouts, 1, memory_order_relaxed);
        ps_log_info("connection %llu from %s: not reading for %us, closing",
                    (unsigned long long)c->id, c->peer, srv->cfg.send_timeout);
    } else {
        atomic_fetch_add_explicit(&srv->c.idle_timeouts, 1, memory_order_relaxed);
        ps_log_info("connection %llu from %s: idle for %us, closing",
                    (unsigned long long)c->id, c->peer, srv->cfg.idle_timeout);
    }
    event_close(srv, c, linked);
}

/* Parks the connection, unless its deadline has passed: a client that
 * keeps the connection busy (trickling bytes, taking one byte of output at
 * a time) is seldom parked when the sweep looks, so the job checks too. */
static void park_or_expire(ps_server *srv, ps_conn *c, bool want_write)
{
    c->want_write = want_write;
    if (deadline_passed(srv, c, ps__now_ms())) {
        close_timed_out(srv, c, true);
        return;
    }
    park(srv, c, want_write);
}

/* The job: serve what the connection has now, then park it. */
static void event_job(void *arg)
{
    ps_conn *c = arg;
    ps_server *srv = c->srv;
    bool close_after_flush = false;

    if (c->open_pending) {
        c->open_pending = false;
        close_after_flush = ps__conn_open(c) != PS_CONTINUE;
    }
    for (int reads = 0;;) {
        size_t before = ps__conn_pending_output(c);
        int f = ps__conn_flush(c);
        if (f == -EAGAIN) {
            /* Backpressure: no input is read until the client takes its
             * replies. The send deadline restarts when bytes move. */
            if (!c->want_write || ps__conn_pending_output(c) < before)
                c->write_wait_ms = ps__now_ms();
            park_or_expire(srv, c, true); /* when stopping, close_all flushes it */
            return;
        }
        c->want_write = false;
        if (f < 0 || close_after_flush)
            break;
        if (ps__conn_has_line(c)) {
            close_after_flush = ps__conn_process(c) != PS_CONTINUE;
            continue;
        }
        if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
            break; /* every line in hand is answered */
        /* After a short read the socket is empty: skip the read that would
         * only say EAGAIN. After the budget, the connection goes back
         * behind the others. Either way level-triggered epoll reports any
         * input still waiting, so the poller queues it again at once. */
        if ((reads > 0 && c->drained) || reads == PS__READ_BUDGET) {
            ps__conn_shrink(c); /* an idle connection holds no buffers */
            park_or_expire(srv, c, false);
            return;
        }
        reads++;
        ssize_t r = ps__conn_read(c);
        if (r == -EAGAIN) {
            ps__conn_shrink(c);
            park_or_expire(srv, c, false);
            return;
        }
        if (r <= 0)
            break;
        close_after_flush = ps__conn_process(c) != PS_CONTINUE;
    }
    event_close(srv, c, true);
}

int ps__event_take(ps_server *srv, ps_conn *c)
{
    /* The new connection is parked for "writable", which it is at once:
     * the poller queues its opening job like any other, waiting for room
     * in the queue instead of turning the client away when it is full. */
    c->open_pending = true;
    c->write_wait_ms = ps__now_ms();
    c->shard = (unsigned)(c->id % srv->nshards);
    list_add(srv, c);
    park(srv, c, true);
    return 0;
}

/* Closes the shard's parked connections past their idle or send deadline.
 * The caller holds the shard: no other worker is between epoll_wait on it
 * and taking what it returned, so no event can hand a connection found
 * PARKED here to a worker while the sweep decides. */
static void sweep(ps_server *srv, unsigned shard, int64_t now)
{
    ps_conn *expired = NULL;

    ps__lock(&srv->conns_lock);
    for (ps_conn *c = srv->conns, *next; c != NULL; c = next) {
        next = c->next;
        if (c->shard != shard ||
            atomic_load_explicit(&c->state, memory_order_acquire) != CONN_PARKED)
            continue;
        ps__lock(&c->lock);
        bool expire = false;
        if (atomic_load_explicit(&c->state, memory_order_relaxed) == CONN_PARKED)
            expire = deadline_passed(srv, c, now);
        if (expire) {
            /* Out of epoll first: no event can hand it to a worker now. */
            epoll_ctl(srv->epfds[c->shard], EPOLL_CTL_DEL, c->fd, NULL);
            atomic_store_explicit(&c->state, CONN_RUNNING, memory_order_relaxed);
            atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
        }
        ps__unlock(&c->lock);
        if (expire) {
            list_unlink(srv, c);
            c->next = expired;
            expired = c;
        }
    }
    ps__unlock(&srv->conns_lock);

    while (expired != NULL) {
        ps_conn *c = expired;
        expired = c->next;
        close_timed_out(srv, c, false);
    }
}

/* The connections one poller call keeps for its own worker. */
typedef struct event_batch {
    int n;
    ps_conn *conns[PS__BATCH];
} event_batch;

static void event_batch_job(void *arg)
{
    event_batch *b = arg;
    for (int i = 0; i < b->n; i++)
        event_job(b->conns[i]);
}

int ps__event_idle(void *ctx, ps_job_fn *fn, void **arg)
{
    /* Filled and run by the same worker, one batch at a time. */
    static _Thread_local event_batch batch;
    ps_server *srv = ctx;
    struct epoll_event evs[PS__BATCH];

    if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
        return 0; /* the stop signal would wake epoll_wait at once */
    /* The pool lets at most nshards workers in here: one shard is free.
     * Start the search at a rotating shard: always trying shard 0 first
     * would serve it whenever it is free and starve the others. */
    unsigned shard = (unsigned)(atomic_fetch_add_explicit(&srv->shard_next, 1,
                                                          memory_order_relaxed) %
                                srv->nshards);
    for (;; shard = (shard + 1) % srv->nshards) {
        bool expected = false;
        if (atomic_compare_exchange_weak(&srv->shard_taken[shard], &expected, true))
            break;
    }
    int n = epoll_wait(srv->epfds[shard], evs, PS__BATCH, PS__SWEEP_MS);
    if (n < 0 && errno != EINTR)
        ps_log_error("epoll_wait: %s", strerror(errno));
    batch.n = 0;
    for (int i = 0; i < n; i++) {
        ps_conn *c = evs[i].data.ptr;
        if (c == NULL)
            continue; /* the stop signal */
        /* The exchange pairs with park()'s release store, so the worker
         * that runs this job sees everything the last one wrote. */
        atomic_exchange_explicit(&c->state, CONN_RUNNING, memory_order_acq_rel);
        atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
        batch.conns[batch.n++] = c;
    }
    int64_t now = ps__now_ms();
    if (now - srv->last_sweep_ms[shard] >= PS__SWEEP_MS) {
        srv->last_sweep_ms[shard] = now;
        sweep(srv, shard, now);
    }
    /* Another worker may wait on this shard while this one serves. */
    atomic_store(&srv->shard_taken[shard], false);
    if (batch.n == 0)
        return 0;
    atomic_fetch_add_explicit(&srv->c.event_jobs, (uint64_t)batch.n, memory_order_relaxed);
    *fn = event_batch_job;
    *arg = &batch;
    return 1;
}

int ps__event_setup(ps_server *srv, char *err, size_t errlen)
{
    /* As many shards as CPUs: that many workers wait for input at once,
     * each serving what its epoll set reports without a hand-off. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cpus > 0 ? (unsigned)cpus : 1;
    if (n > srv->cfg.workers)
        n = srv->cfg.workers;
    if (n > PS__SHARDS_MAX)
        n = PS__SHARDS_MAX;
    srv->nshards = 0;
    for (unsigned i = 0; i < n; i++) {
        int fd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        if (fd < 0 || epoll_ctl(fd, EPOLL_CTL_ADD, srv->stop_fd, &ev) < 0) {
            int e = errno;
            snprintf(err, errlen, "epoll: %s", strerror(e));
            if (fd >= 0)
                close(fd);
            ps__event_teardown(srv);
            return -e;
        }
        srv->last_sweep_ms[srv->nshards] = ps__now_ms();
        srv->epfds[srv->nshards++] = fd;
    }
    return 0;
}

void ps__event_teardown(ps_server *srv)
{
    for (unsigned i = 0; i < srv->nshards; i++)
        close(srv->epfds[i]);
    srv->nshards = 0;
}

void ps__event_close_all(ps_server *srv)
{
    /* Single-threaded now: every worker is gone. */
    int64_t deadline = atomic_load(&srv->stop_deadline_ms);
    while (srv->conns != NULL) {
        ps_conn *c = srv->conns;
        list_unlink(srv, c);
        while (ps__conn_pending_output(c) > 0) {
            int f = ps__conn_flush(c);
            int64_t left = deadline - ps__now_ms();
            if (f != -EAGAIN || left <= 0)
                break;
            struct pollfd p = {.fd = c->fd, .events = POLLOUT};
            poll(&p, 1, (int)(left > 100 ? 100 : left));
        }
        if (atomic_load(&c->state) == CONN_PARKED)
            atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
        ps__conn_close(c);
    }
}
