/*
 * dispatch = event: the seed's asynchronous server, done with epoll.
 *
 * Every connection is registered once, edge-triggered, for input and for
 * room to write, and never re-armed. Its `state` says who owns it:
 *   PARKED         nobody: the next event hands it to the poller that gets
 *                  it. An idle connection costs no worker and no thread.
 *   RUNNING        one worker, alone: it reads, runs the handler over the
 *                  complete lines, writes the replies.
 *   RUNNING|AGAIN  an event came while it was being served.
 * The owner lets go with a compare-and-swap RUNNING -> PARKED, which fails
 * when AGAIN is set: the owner then serves it again, so no edge is lost and
 * no epoll_ctl is needed per request.
 *
 * The poller is not a thread of its own but the pool's idle hook: an idle
 * worker waits in epoll_wait and serves the ready connections it gets
 * itself (leader/followers). Connections are spread over one epoll set per
 * CPU, so that many workers poll at once, each connection on the set of
 * the CPU its packets arrive on, which a worker on that CPU polls first;
 * it moves when its packets move (see place() and replace()). That saves
 * a thread hand-off per request, the largest cost of a separate poller
 * thread; the pool's queue carries no jobs in this mode (the epoll ready
 * lists play its part). A connection that used up its read budget gets its
 * next turn from the same worker, after what that worker holds and what
 * its shard has ready.
 *
 * A poller may hold a pointer from epoll_wait to a connection that its
 * owner is closing. So a closed connection leaves epoll first and its
 * object is freed later, by the shard's next poller: pollers of a shard
 * hold its flag from epoll_wait until they have claimed what it returned,
 * so whoever takes the flag next knows nobody holds such a pointer. For
 * the same reason a connection leaves a shard for another only while its
 * owner holds the flag of the shard it leaves.
 *
 * Timeouts are found by a sweep in the poller: it claims a PARKED
 * connection past its deadline the way an event would, and closes it.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"

enum { CONN_PARKED = 0, CONN_RUNNING = 1, CONN_AGAIN = 2 };

#define PS__EVENTS (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)
/* Ready connections one poller call takes and serves itself. Anything
 * else stays in the epoll set for the next poller: handing connections to
 * other workers through the queue costs a wake-up each, which measured
 * slower than serving the batch here on every machine size we tried. */
#define PS__BATCH 64
/* A worker's batch: what it polled, and connections waiting their turn
 * again after their read budget. */
#define PS__RING (2 * PS__BATCH)
#define PS__SWEEP_MS 250
/* Reads one job may do before the connection goes back behind the others:
 * a client that floods cannot keep a worker. */
#define PS__READ_BUDGET 8
/* How far a shard may outgrow the emptiest one before new connections go
 * elsewhere than their CPU's shard (see place()). */
#define PS__PLACE_SLACK 64
/* Jobs between two looks at the CPU a connection's packets arrive on. */
#define PS__PLACE_EVERY 16
/* How long a shard may go without a poller before an idle worker takes it
 * rather than the shard of its own CPU (see take_any_shard()). */
#define PS__UNPOLLED_US 1000

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

/* An event for c: takes it when it is parked (true), or else tells its
 * owner to look again. The acquire pairs with let_go's release, so the
 * new owner sees everything the last one wrote. */
static bool claim(ps_server *srv, ps_conn *c)
{
    int s = atomic_load_explicit(&c->state, memory_order_relaxed);
    for (;;) {
        int next = s == CONN_PARKED ? CONN_RUNNING : (s | CONN_AGAIN);
        if (next == s)
            return false; /* the owner has been told already */
        if (atomic_compare_exchange_weak_explicit(&c->state, &s, next, memory_order_acquire,
                                                  memory_order_relaxed))
            break;
    }
    if (s != CONN_PARKED)
        return false;
    atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    return true;
}

/* Takes a parked connection without an event (the sweep). */
static bool claim_parked(ps_server *srv, ps_conn *c)
{
    int s = CONN_PARKED;
    if (!atomic_compare_exchange_strong_explicit(&c->state, &s, CONN_RUNNING,
                                                 memory_order_acquire, memory_order_relaxed))
        return false;
    atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    return true;
}

/* Lets go of c. False when an event came while it was served: the caller
 * still owns it and serves it again. After true it must not touch c:
 * another worker may already own it. */
static bool let_go(ps_server *srv, ps_conn *c)
{
    /* Counted first, so the parked sum never dips below zero. */
    atomic_fetch_add_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    int s = CONN_RUNNING;
    if (atomic_compare_exchange_strong_explicit(&c->state, &s, CONN_PARKED,
                                                memory_order_release, memory_order_relaxed))
        return true;
    atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    /* Only the owner changes RUNNING|AGAIN. */
    atomic_store_explicit(&c->state, CONN_RUNNING, memory_order_relaxed);
    /* Whatever raised that event (maybe an end of stream behind the input
     * just read) raises no other: read until the socket says so. */
    c->read_to_end = true;
    return false;
}

/* Frees the connections closed on a shard. The caller holds the shard. */
static void reap(ps__shard *sh)
{
    ps_conn *c = atomic_exchange_explicit(&sh->graves, NULL, memory_order_acquire);
    while (c != NULL) {
        ps_conn *next = c->next;
        free(c);
        c = next;
    }
}

/* Closes a connection its caller owns. */
static void event_close(ps_server *srv, ps_conn *c)
{
    /* Out of epoll first: the socket itself may stay open a while (it
     * lingers until the client has every reply). */
    epoll_ctl(srv->shards[c->shard].epfd, EPOLL_CTL_DEL, c->fd, NULL);
    atomic_fetch_sub_explicit(&srv->shards[c->shard].conns, 1, memory_order_relaxed);
    ps__lock(&srv->conns_lock);
    list_unlink(srv, c);
    ps__unlock(&srv->conns_lock);
    ps__conn_end(c);
    /* A poller of the shard may still hold a pointer from epoll_wait: the
     * shard's next poller frees the object. */
    _Atomic(ps_conn *) *grave = &srv->shards[c->shard].graves;
    ps_conn *head = atomic_load_explicit(grave, memory_order_relaxed);
    do
        c->next = head;
    while (!atomic_compare_exchange_weak_explicit(grave, &head, c, memory_order_release,
                                                  memory_order_relaxed));
}

/* True when the connection waiting for what it wants (input, or room for
 * output) has waited past its deadline. Reads only atomics: the sweep
 * calls it on connections it does not own. */
static bool deadline_passed(const ps_server *srv, const ps_conn *c, int64_t now)
{
    if (atomic_load_explicit(&c->want_write, memory_order_relaxed))
        return now - atomic_load_explicit(&c->write_wait_ms, memory_order_relaxed) >=
               (int64_t)srv->cfg.send_timeout * 1000;
    return srv->cfg.idle_timeout > 0 &&
           now - ps__conn_last_line(c) >= (int64_t)srv->cfg.idle_timeout * 1000;
}

/* Counts, logs and closes a connection found past its deadline. */
static void close_timed_out(ps_server *srv, ps_conn *c)
{
    if (atomic_load_explicit(&c->want_write, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&srv->c.send_timeouts, 1, memory_order_relaxed);
        ps_log_info("connection %llu from %s: not reading for %us, closing",
                    (unsigned long long)c->id, c->peer, srv->cfg.send_timeout);
    } else {
        atomic_fetch_add_explicit(&srv->c.idle_timeouts, 1, memory_order_relaxed);
        ps_log_info("connection %llu from %s: idle for %us, closing",
                    (unsigned long long)c->id, c->peer, srv->cfg.idle_timeout);
    }
    event_close(srv, c);
}

static bool take_shard(ps_server *srv, unsigned shard)
{
    bool expected = false;
    return atomic_compare_exchange_strong(&srv->shards[shard].taken, &expected, true);
}

static void release_shard(ps_server *srv, unsigned shard)
{
    atomic_store(&srv->shards[shard].taken, false);
}

/* Where a connection belongs: on the shard of the CPU its packets arrive
 * on (SO_INCOMING_CPU: the CPU of the receive queue, or on loopback the
 * sender's), since pollers start with the shard of the CPU they run on.
 * The connection is then served on the CPU that already handles its
 * packets, next to its client on loopback: a poller and the clients it
 * serves take turns on one CPU instead of waking each other across two.
 * Unless that shard holds a sixteenth more than the emptiest one (plus
 * PS__PLACE_SLACK): one client process, on one CPU when it connects, must
 * not leave the other shards empty, and a connection on a fuller shard
 * gets fewer turns (a quarter more measured a 10,000-connection p99 1.3-2x
 * higher than with an even spread). `now` is its shard, or nshards for a
 * new connection: that one goes to the emptiest shard when its CPU's is
 * too full, and by its id when the CPU is unknown. */
static unsigned place(ps_server *srv, int fd, unsigned now, uint64_t id)
{
    unsigned n = srv->nshards;
    int cpu = -1;
    socklen_t len = sizeof cpu;
    if (getsockopt(fd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, &len) != 0 || cpu < 0)
        return now < n ? now : (unsigned)(id % n);
    unsigned shard = (unsigned)cpu % n;
    if (shard == now)
        return now;
    unsigned least = shard;
    unsigned least_conns = atomic_load_explicit(&srv->shards[shard].conns, memory_order_relaxed);
    unsigned conns = least_conns;
    for (unsigned i = 0; i < n; i++) {
        unsigned k = atomic_load_explicit(&srv->shards[i].conns, memory_order_relaxed);
        if (k < least_conns) {
            least = i;
            least_conns = k;
        }
    }
    if (conns <= least_conns + least_conns / 16 + PS__PLACE_SLACK)
        return shard;
    return now < n ? now : least; /* a placed connection stays put */
}

/* Moves a connection its caller owns to the shard of the CPU its packets
 * arrive on now (its client may have moved), looking every
 * PS__PLACE_EVERY jobs. Only while its shard's flag is held: a poller of
 * that shard holds the flag from epoll_wait until it has claimed what it
 * got, so once it is out of that epoll set nobody there holds a pointer to
 * it, and closing it later may leave it on the new shard's graves alone.
 * It joins the new epoll set before it leaves the old one: when it cannot
 * join, it stays where it is. */
static void replace(ps_server *srv, ps_conn *c)
{
    if (srv->nshards < 2 || ++c->serves < PS__PLACE_EVERY)
        return;
    c->serves = 0;
    unsigned from = c->shard, to = place(srv, c->fd, from, c->id);
    if (to == from || !take_shard(srv, from))
        return; /* here, or looked again later */
    /* Reports what is ready already, as an event: input that came in
     * while it moved is not lost. A poller of the new shard that gets it
     * finds it running and only tells its owner to look again. */
    struct epoll_event ev = {.events = PS__EVENTS, .data.ptr = c};
    if (epoll_ctl(srv->shards[to].epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        release_shard(srv, from);
        return;
    }
    ps__lock(&srv->conns_lock); /* the sweep reads c->shard */
    c->shard = (uint8_t)to;
    ps__unlock(&srv->conns_lock);
    if (epoll_ctl(srv->shards[from].epfd, EPOLL_CTL_DEL, c->fd, NULL) != 0)
        ps_log_error("connection %llu from %s: epoll_ctl: %s", (unsigned long long)c->id,
                     c->peer, strerror(errno));
    release_shard(srv, from);
    atomic_fetch_sub_explicit(&srv->shards[from].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&srv->shards[to].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&srv->c.event_moves, 1, memory_order_relaxed);
}

enum { SERVE_READ, SERVE_WRITE, SERVE_BUDGET, SERVE_CLOSE };

/* Serves what the connection has now. Returns what it waits for next:
 * input, room for output, its turn (read budget used up), or its close. */
static int serve(ps_server *srv, ps_conn *c)
{
    if (c->open_pending) {
        c->open_pending = false;
        if (ps__conn_open(c) != PS_CONTINUE)
            c->closing = true;
    }
    for (int reads = 0;;) {
        size_t before = ps__conn_pending_output(c);
        int f = ps__conn_flush(c);
        if (f == -EAGAIN) {
            /* Backpressure: no input is read until the client takes its
             * replies. The send deadline restarts when bytes move. */
            if (!atomic_load_explicit(&c->want_write, memory_order_relaxed) ||
                ps__conn_pending_output(c) < before)
                atomic_store_explicit(&c->write_wait_ms, ps__now_ms(), memory_order_relaxed);
            atomic_store_explicit(&c->want_write, true, memory_order_relaxed);
            return SERVE_WRITE; /* when stopping, close_all flushes it */
        }
        atomic_store_explicit(&c->want_write, false, memory_order_relaxed);
        if (f < 0 || c->closing)
            return SERVE_CLOSE;
        if (ps__conn_has_line(c)) {
            if (ps__conn_process(c) != PS_CONTINUE)
                c->closing = true;
            continue;
        }
        if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
            return SERVE_CLOSE; /* every line in hand is answered */
        /* After a short read the socket is empty: skip the read that would
         * only say EAGAIN (input arriving after it raises a new edge). Not
         * when the event said the stream ended: that end, read after the
         * last bytes, raises no edge of its own. */
        if (reads > 0 && c->drained && !c->read_to_end)
            return SERVE_READ;
        if (reads == PS__READ_BUDGET)
            return SERVE_BUDGET;
        reads++;
        ssize_t r = ps__conn_read(c);
        if (r == -EAGAIN)
            return SERVE_READ;
        if (r <= 0)
            return SERVE_CLOSE;
        if (ps__conn_process(c) != PS_CONTINUE)
            c->closing = true;
    }
}

/* Serves the connection until it waits, then lets go of it. Returns true
 * when it used up its read budget: the caller still owns it and gives it
 * another turn after the others. */
static bool event_serve(ps_server *srv, ps_conn *c)
{
    for (;;) {
        int r = serve(srv, c);
        if (r == SERVE_CLOSE)
            break;
        /* An idle connection holds no buffers, and none of the worker's. */
        if (ps__conn_shrink(c) < 0) {
            ps_log_error("connection %llu from %s: out of memory, closing",
                         (unsigned long long)c->id, c->peer);
            break;
        }
        if (r == SERVE_BUDGET)
            return true;
        /* A client that keeps the connection busy (trickling bytes, taking
         * one byte of output at a time) is seldom parked when the sweep
         * looks, so the job checks the deadline too. */
        if (deadline_passed(srv, c, ps__now_ms())) {
            close_timed_out(srv, c);
            return false;
        }
        if (r == SERVE_READ)
            replace(srv, c);
        if (let_go(srv, c))
            return false;
    }
    event_close(srv, c);
    return false;
}

int ps__event_take(ps_server *srv, ps_conn *c)
{
    /* The new socket is writable at once: registering it raises the event
     * that runs its opening job on a poller, like any other. */
    c->open_pending = true;
    c->borrow = true;
    atomic_store_explicit(&c->want_write, true, memory_order_relaxed);
    atomic_store_explicit(&c->write_wait_ms, ps__now_ms(), memory_order_relaxed);
    unsigned shard = place(srv, c->fd, srv->nshards, c->id);
    uint64_t id = c->id;
    c->shard = (uint8_t)shard;
    atomic_fetch_add_explicit(&srv->shards[shard].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    atomic_store_explicit(&c->state, CONN_PARKED, memory_order_release);
    list_add(srv, c);
    /* From here on c is the sweep's to take too: touched again only once
     * claimed. */
    struct epoll_event ev = {.events = PS__EVENTS, .data.ptr = c};
    if (epoll_ctl(srv->shards[shard].epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0)
        return 0;
    int e = errno;
    ps_log_error("connection %llu: epoll_ctl: %s", (unsigned long long)id, strerror(e));
    /* Never in epoll: unless the sweep took it (and will close it), it is
     * the caller's to reject. The sweep claims under conns_lock. */
    ps__lock(&srv->conns_lock);
    bool mine = claim_parked(srv, c);
    if (mine)
        list_unlink(srv, c);
    ps__unlock(&srv->conns_lock);
    if (!mine)
        return 0;
    atomic_fetch_sub_explicit(&srv->shards[shard].conns, 1, memory_order_relaxed);
    return -e;
}

/* Closes the shard's parked connections past their idle or send deadline.
 * The caller holds the shard. */
static void sweep(ps_server *srv, unsigned shard, int64_t now)
{
    ps_conn *mine[PS__BATCH];
    int n = 0;

    ps__lock(&srv->conns_lock);
    for (ps_conn *c = srv->conns; c != NULL && n < PS__BATCH; c = c->next) {
        if (c->shard == shard &&
            atomic_load_explicit(&c->state, memory_order_relaxed) == CONN_PARKED &&
            deadline_passed(srv, c, now) && claim_parked(srv, c))
            mine[n++] = c;
    }
    ps__unlock(&srv->conns_lock);

    for (int i = 0; i < n; i++) {
        ps_conn *c = mine[i];
        /* Owned now: the last owner's writes are visible, look again. */
        if (deadline_passed(srv, c, now))
            close_timed_out(srv, c);
        else if (!let_go(srv, c))
            while (event_serve(srv, c)) /* an event came in between */
                ;
    }
}

/* A worker's connections to serve, in order (a ring). */
typedef struct event_batch {
    ps_server *srv;
    unsigned head, count;
    struct {
        ps_conn *conn;
        bool turn; /* back after its read budget */
    } at[PS__RING];
} event_batch;

static void batch_push(event_batch *b, ps_conn *c, bool turn)
{
    unsigned i = (b->head + b->count++) % PS__RING;
    b->at[i].conn = c;
    b->at[i].turn = turn;
}

/* Polls a shard the caller holds: claims what epoll_wait reports into b. */
static void poll_shard(ps_server *srv, unsigned shard, event_batch *b, int timeout_ms)
{
    ps__shard *sh = &srv->shards[shard];
    struct epoll_event evs[PS__BATCH];
    int room = (int)(PS__RING - b->count);

    reap(sh);
    if (room > PS__BATCH)
        room = PS__BATCH;
    if (room == 0)
        return;
    int n = epoll_wait(sh->epfd, evs, room, timeout_ms);
    if (n < 0 && errno != EINTR)
        ps_log_error("epoll_wait: %s", strerror(errno));
    unsigned before = b->count;
    for (int i = 0; i < n; i++) {
        ps_conn *c = evs[i].data.ptr;
        if (c == NULL || !claim(srv, c)) /* NULL: the stop signal */
            continue;
        /* An end of stream behind the input raises no edge of its own. */
        c->read_to_end = (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
        batch_push(b, c, false);
    }
    if (b->count > before)
        atomic_fetch_add_explicit(&srv->c.event_jobs, b->count - before, memory_order_relaxed);
}

/* Takes a shard for a poller: the one of its CPU, where its connections'
 * packets arrive (see place()), unless another has gone unpolled for
 * PS__UNPOLLED_US: the worker that polls a shard of its own CPU whenever it
 * comes back must not leave another shard to a worker that waits for a CPU
 * (then the longest unpolled one). The pool lets at most nshards workers
 * in here, but a worker outside may hold a flag for a moment (a turn,
 * replace()): after a pass with none free, let it run. */
static unsigned take_any_shard(ps_server *srv)
{
    int cpu = sched_getcpu();
    unsigned n = srv->nshards;
    /* Without a CPU number, start at a rotating shard: always trying
     * shard 0 first would starve the others. */
    unsigned shard = cpu >= 0 ? (unsigned)cpu % n
                              : atomic_fetch_add_explicit(&srv->shard_next, 1,
                                                          memory_order_relaxed) % n;
    int64_t now = ps__now_us(), oldest = now - PS__UNPOLLED_US;
    unsigned late = n;
    for (unsigned i = 0; i < n; i++) {
        ps__shard *sh = &srv->shards[i];
        int64_t at = atomic_load_explicit(&sh->released_us, memory_order_relaxed);
        if (at < oldest && !atomic_load_explicit(&sh->taken, memory_order_relaxed)) {
            late = i;
            oldest = at;
        }
    }
    if (late < n && take_shard(srv, late))
        return late;
    for (unsigned tries = 1; !take_shard(srv, shard); tries++) {
        shard = (shard + 1) % n;
        if (tries % n == 0)
            sched_yield();
    }
    return shard;
}

static void event_batch_job(void *arg)
{
    event_batch *b = arg;
    ps_server *srv = b->srv;
    while (b->count > 0) {
        ps_conn *c = b->at[b->head].conn;
        bool turn = b->at[b->head].turn;
        b->head = (b->head + 1) % PS__RING;
        b->count--;
        if (turn) {
            /* Behind the others: those this worker holds, and those its
             * shard has ready now, unless another worker polls it. */
            if (take_shard(srv, c->shard)) {
                poll_shard(srv, c->shard, b, 0);
                release_shard(srv, c->shard);
            }
            if (b->count > 0) {
                batch_push(b, c, false);
                continue;
            }
        }
        if (event_serve(srv, c)) {
            if (b->count < PS__RING)
                batch_push(b, c, true);
            else
                while (event_serve(srv, c)) /* no room: serve on */
                    ;
        }
    }
}

int ps__event_idle(void *ctx, ps_job_fn *fn, void **arg)
{
    /* Filled and run by the same worker, one batch at a time. */
    static _Thread_local event_batch batch;
    ps_server *srv = ctx;

    if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
        return 0; /* the stop signal would wake epoll_wait at once */
    unsigned shard = take_any_shard(srv);
    batch.srv = srv;
    batch.head = batch.count = 0;
    poll_shard(srv, shard, &batch, PS__SWEEP_MS);
    ps__shard *sh = &srv->shards[shard];
    int64_t now_us = ps__now_us(), now = now_us / 1000;
    if (now - sh->last_sweep_ms >= PS__SWEEP_MS) {
        sh->last_sweep_ms = now;
        sweep(srv, shard, now);
    }
    /* Another worker may wait on this shard while this one serves. */
    atomic_store_explicit(&sh->released_us, now_us, memory_order_relaxed);
    release_shard(srv, shard);
    if (batch.count == 0)
        return 0;
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
        ps__shard *sh = &srv->shards[srv->nshards++];
        sh->epfd = fd;
        sh->last_sweep_ms = ps__now_ms();
        atomic_init(&sh->taken, false);
        atomic_init(&sh->conns, 0);
        atomic_init(&sh->released_us, ps__now_us());
        atomic_init(&sh->graves, NULL);
    }
    return 0;
}

void ps__event_teardown(ps_server *srv)
{
    for (unsigned i = 0; i < srv->nshards; i++) {
        reap(&srv->shards[i]);
        close(srv->shards[i].epfd);
    }
    srv->nshards = 0;
}

void ps__event_close_all(ps_server *srv)
{
    /* Single-threaded now: every worker is gone, every connection parked. */
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
        epoll_ctl(srv->shards[c->shard].epfd, EPOLL_CTL_DEL, c->fd, NULL);
        atomic_fetch_sub_explicit(&srv->shards[c->shard].conns, 1, memory_order_relaxed);
        ps__conn_close(c);
    }
    for (unsigned i = 0; i < srv->nshards; i++)
        reap(&srv->shards[i]);
}
