/*
 * dispatch = event: an asynchronous server, done with epoll.
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
 * it moves when its packets move (see place() and
 * move_to_its_cpu_shard()). That saves a thread hand-off per request, the
 * largest cost of a separate poller thread; the pool's queue carries no
 * jobs in this mode (the epoll ready lists play its part). A connection
 * that used up its read budget gets its next turn from the same worker,
 * after what that worker holds and what its shard has ready.
 *
 * A handler may block (a database call). Then the connections its worker
 * claimed and has not served yet, and its shard, must not wait for it:
 * the watch, a thread that looks every PS__WATCH_US while workers run,
 * sees a handler call that has run PS__STALL_US and wakes a sleeping
 * worker in its place. A worker that comes to the idle hook takes first a
 * connection waiting behind such a call (a steal: the victim's batch is
 * guarded by its lock), then polls a free shard, and sleeps when there is
 * neither. So with H handlers blocked, the other workers keep serving,
 * while quick handlers keep the fast path: no wake-up, no hand-off, and
 * as many workers in play as there are shards.
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
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "conn.h"
#include "reply.h"

enum { CONN_PARKED = 0, CONN_RUNNING = 1, CONN_AGAIN = 2 };

#define PS__SHARDS_MAX 64 /* fits event_conn.shard */
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
/* A handler call running this long holds its worker: the watch wakes
 * another, and the connections waiting behind it may be taken. A call
 * that blocks D ms leaves the rest of its batch waiting about this long
 * first: at 1 ms (D = 1, 25 clients) that cost a third of the pool's
 * throughput. An echo call runs far below it, preempted or not (no
 * wake-up in the echo benchmark). */
#define PS__STALL_US 250
/* How often the watch looks while any worker runs a job: every
 * PS__WATCH_US while handler calls hold workers, backing off to
 * PS__WATCH_MAX_US while none does. A look costs a timer and a wake-up:
 * looking every millisecond all the time measured 6-11% of the echo
 * throughput at 1,000 connections on 2 CPUs. While it backs off, the
 * workers still in play take what waits behind a held one (steal()); only
 * when every one of them is held at once does the first wake-up come late. */
#define PS__WATCH_US 250
#define PS__WATCH_MAX_US 16000

/* A worker's connections to serve, in order (a ring). */
typedef struct event_batch {
    unsigned head, count;
    struct {
        ps_conn *conn;
        bool turn; /* back after its read budget */
    } at[PS__RING];
} event_batch;

/* A pool worker as event mode sees it. */
typedef struct event_worker {
    /* Guards batch. Taken by the worker and by a thief (steal()); a leaf:
     * nothing else is locked or waited for while it is held. */
    _Alignas(64) pthread_mutex_t lock;
    event_batch batch;
    atomic_uint waiting;      /* batch.count: written under lock, read without */
    /* When the worker's current handler call began (us), 0 between calls:
     * written by the worker (conn.c), read by the watch and by thieves. */
    _Atomic int64_t handler_since_us;
    int64_t woken_for;        /* the watch's own: the call it woke a worker for */
    ps_server *srv;
} event_worker;

/* One epoll set and what belongs to it; a cache line of its own, since
 * each is polled from another CPU. */
typedef struct epoll_shard {
    _Alignas(64) int epfd;
    atomic_bool taken;       /* a worker polls it */
    atomic_uint conns;       /* connections placed on it and not closed */
    atomic_int_fast64_t released_us; /* when its last poller let go of it */
    int64_t last_sweep_ms;   /* used by the taker only */
    /* Closed connections a poller of the shard may still hold a pointer
     * to; freed by the shard's next poller (see reap()). */
    _Atomic(ps_conn *) graves;
} epoll_shard;
_Static_assert(sizeof(epoll_shard) % 64 == 0 && _Alignof(epoll_shard) == 64,
               "each shard on cache lines of its own");

/* What event mode keeps per connection, in the connection's mode bytes. */
typedef struct event_conn {
    atomic_int state;       /* who owns it now (CONN_*) */
    bool open_pending;      /* on_open not run yet */
    bool read_to_end;       /* an end of stream may be waiting: read on */
    uint8_t shard;          /* which epoll set it is registered in (below
                               PS__SHARDS_MAX); changed by its owner under
                               conns_lock */
    uint8_t serves;         /* jobs since its CPU was last looked at */
    atomic_bool want_write; /* waits for room for output, not for input */
    _Atomic int64_t write_wait_ms; /* when output last stopped moving */
    ps_conn *prev, *next;   /* the list of every connection (conns) */
    ps_conn *woken_next;    /* in the list a reply woke */
} event_conn;

static inline event_conn *ec(const ps_conn *c)
{
    return (event_conn *)(void *)c->mode;
}

/* Event mode's state (the server's mode pointer). */
typedef struct event_state {
    /* Connections are spread over shards, one epoll set each, so that as
     * many workers as there are CPUs can wait at once. */
    epoll_shard shards[PS__SHARDS_MAX];
    unsigned nshards;
    atomic_uint shard_next;   /* where the next poller starts looking */
    pthread_mutex_t conns_lock; /* guards conns and the links */
    ps_conn *conns;           /* every connection */
    /* Counted for stats: "has input" jobs run, connections moved to
     * another shard, ready connections taken from a worker held in a
     * handler, workers woken for a held one. */
    atomic_uint_fast64_t jobs, moves, steals, wakes;

    unsigned nworkers;
    atomic_uint joined;       /* workers that have taken their slot */
    pthread_t watch;
    bool watch_started;
    pthread_mutex_t watch_lock; /* guards watch_stop; the watch waits on it */
    pthread_cond_t watch_cond;
    bool watch_stop;
    /* The watch sleeps untimed while no worker runs a job; a worker that
     * starts one and finds this set wakes it (see watch_wake()). */
    atomic_bool watch_asleep;
    /* An eventfd in every epoll set, edge-triggered: the watch writes it
     * to send the pollers back to the idle hook when no worker sleeps that
     * it could wake for a held one (see watch_look()). */
    int nudge_fd;
    event_worker *w;          /* nworkers slots */
    /* Connections a finished deferred reply woke: claimed, waiting for a
     * worker (wake_for_reply); the idle hook takes them first. */
    pthread_mutex_t woken_lock;
    ps_conn *woken_head, *woken_tail;
    atomic_bool any_woken;
} event_state;

static inline event_state *ev_of(const ps_server *srv)
{
    return srv->mode;
}

static void list_add(ps_server *srv, ps_conn *c)
{
    event_state *ev = ev_of(srv);
    ps__lock(&ev->conns_lock);
    ec(c)->prev = NULL;
    ec(c)->next = ev->conns;
    if (ev->conns)
        ec(ev->conns)->prev = c;
    ev->conns = c;
    ps__unlock(&ev->conns_lock);
}

/* Caller holds conns_lock. */
static void list_unlink(ps_server *srv, ps_conn *c)
{
    if (ec(c)->prev)
        ec(ec(c)->prev)->next = ec(c)->next;
    else
        ev_of(srv)->conns = ec(c)->next;
    if (ec(c)->next)
        ec(ec(c)->next)->prev = ec(c)->prev;
    ec(c)->prev = ec(c)->next = NULL;
}

/* An event for c: takes it when it is parked (true), or else tells its
 * owner to look again. The acquire pairs with let_go's release, so the
 * new owner sees everything the last one wrote. */
static bool claim(ps_server *srv, ps_conn *c)
{
    int s = atomic_load_explicit(&ec(c)->state, memory_order_relaxed);
    for (;;) {
        int next = s == CONN_PARKED ? CONN_RUNNING : (s | CONN_AGAIN);
        if (next == s)
            return false; /* the owner has been told already */
        if (atomic_compare_exchange_weak_explicit(&ec(c)->state, &s, next, memory_order_acquire,
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
    if (!atomic_compare_exchange_strong_explicit(&ec(c)->state, &s, CONN_RUNNING,
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
    if (atomic_compare_exchange_strong_explicit(&ec(c)->state, &s, CONN_PARKED,
                                                memory_order_release, memory_order_relaxed))
        return true;
    atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    /* Only the owner changes RUNNING|AGAIN. */
    atomic_store_explicit(&ec(c)->state, CONN_RUNNING, memory_order_relaxed);
    /* Whatever raised that event (maybe an end of stream behind the input
     * just read) raises no other: read until the socket says so. */
    ec(c)->read_to_end = true;
    return false;
}

/* Frees the connections closed on a shard. The caller holds the shard. */
static void reap(epoll_shard *sh)
{
    ps_conn *c = atomic_exchange_explicit(&sh->graves, NULL, memory_order_acquire);
    while (c != NULL) {
        ps_conn *next = ec(c)->next;
        free(c);
        c = next;
    }
}

/* Closes a connection its caller owns. */
static void event_close(ps_server *srv, ps_conn *c)
{
    event_state *ev = ev_of(srv);
    /* Out of epoll first: the socket itself may stay open a while (it
     * lingers until the client has every reply). */
    epoll_ctl(ev->shards[ec(c)->shard].epfd, EPOLL_CTL_DEL, c->fd, NULL);
    atomic_fetch_sub_explicit(&ev->shards[ec(c)->shard].conns, 1, memory_order_relaxed);
    ps__lock(&ev->conns_lock);
    list_unlink(srv, c);
    ps__unlock(&ev->conns_lock);
    ps__conn_end(c);
    /* A poller of the shard may still hold a pointer from epoll_wait: the
     * shard's next poller frees the object. */
    _Atomic(ps_conn *) *grave = &ev->shards[ec(c)->shard].graves;
    ps_conn *head = atomic_load_explicit(grave, memory_order_relaxed);
    do
        ec(c)->next = head;
    while (!atomic_compare_exchange_weak_explicit(grave, &head, c, memory_order_release,
                                                  memory_order_relaxed));
}

/* True when the connection waiting for what it wants (input, or room for
 * output) has waited past its deadline. Reads only atomics: the sweep
 * calls it on connections it does not own. */
static bool deadline_passed(const ps_server *srv, const ps_conn *c, int64_t now)
{
    if (ps__conn_handshaking(c))
        return now >= ps__conn_handshake_deadline(c);
    if (atomic_load_explicit(&ec(c)->want_write, memory_order_relaxed))
        return now - atomic_load_explicit(&ec(c)->write_wait_ms, memory_order_relaxed) >=
               (int64_t)PS__LIMIT(srv, send_timeout) * 1000;
    return PS__LIMIT(srv, idle_timeout) > 0 &&
           now - ps__conn_last_line(c) >= (int64_t)PS__LIMIT(srv, idle_timeout) * 1000;
}

/* Counts, logs and closes a connection found past its deadline. */
static void close_timed_out(ps_server *srv, ps_conn *c)
{
    ps__conn_timed_out(c, atomic_load_explicit(&ec(c)->want_write, memory_order_relaxed));
    event_close(srv, c);
}

static bool take_shard(ps_server *srv, unsigned shard)
{
    bool expected = false;
    return atomic_compare_exchange_strong(&ev_of(srv)->shards[shard].taken, &expected, true);
}

static void release_shard(ps_server *srv, unsigned shard)
{
    atomic_store(&ev_of(srv)->shards[shard].taken, false);
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
    event_state *ev = ev_of(srv);
    unsigned n = ev->nshards;
    int cpu = -1;
    socklen_t len = sizeof cpu;
    if (getsockopt(fd, SOL_SOCKET, SO_INCOMING_CPU, &cpu, &len) != 0 || cpu < 0)
        return now < n ? now : (unsigned)(id % n);
    unsigned shard = (unsigned)cpu % n;
    if (shard == now)
        return now;
    unsigned least = shard;
    unsigned least_conns = atomic_load_explicit(&ev->shards[shard].conns, memory_order_relaxed);
    unsigned conns = least_conns;
    for (unsigned i = 0; i < n; i++) {
        unsigned k = atomic_load_explicit(&ev->shards[i].conns, memory_order_relaxed);
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
static void move_to_its_cpu_shard(ps_server *srv, ps_conn *c)
{
    if (ev_of(srv)->nshards < 2 || ++ec(c)->serves < PS__PLACE_EVERY)
        return;
    ec(c)->serves = 0;
    unsigned from = ec(c)->shard, to = place(srv, c->fd, from, c->id);
    if (to == from || !take_shard(srv, from))
        return; /* here, or looked again later */
    /* Reports what is ready already, as an event: input that came in
     * while it moved is not lost. A poller of the new shard that gets it
     * finds it running and only tells its owner to look again. */
    struct epoll_event ev = {.events = PS__EVENTS, .data.ptr = c};
    if (epoll_ctl(ev_of(srv)->shards[to].epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        release_shard(srv, from);
        return;
    }
    ps__lock(&ev_of(srv)->conns_lock); /* the sweep reads ec(c)->shard */
    ec(c)->shard = (uint8_t)to;
    ps__unlock(&ev_of(srv)->conns_lock);
    if (epoll_ctl(ev_of(srv)->shards[from].epfd, EPOLL_CTL_DEL, c->fd, NULL) != 0)
        ps_log_error("connection %llu from %s: epoll_ctl: %s", (unsigned long long)c->id,
                     c->peer, ps_strerror(-errno));
    release_shard(srv, from);
    atomic_fetch_sub_explicit(&ev_of(srv)->shards[from].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ev_of(srv)->shards[to].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ev_of(srv)->moves, 1, memory_order_relaxed);
}

enum { SERVE_READ, SERVE_WRITE, SERVE_BUDGET, SERVE_CLOSE, SERVE_REPLY };

/* Serves what the connection has now. Returns what it waits for next:
 * input, room for output, its turn (read budget used up), its close, or
 * (closing) the replies it deferred: a finished one wakes it
 * (wake_for_reply). */
static int serve(ps_server *srv, ps_conn *c)
{
    if (ec(c)->open_pending) {
        /* The transport's handshake first (TLS): a step at a time, parked
         * between steps like a read, so no worker waits for the client. */
        int h = ps__conn_handshake(c);
        if (h == -EAGAIN)
            return SERVE_READ;
        if (h < 0)
            return SERVE_CLOSE;
        ec(c)->open_pending = false;
        if (ps__conn_open(c) != PS_CONTINUE)
            c->closing = true;
    }
    for (int reads = 0;;) {
        size_t before = ps__conn_pending_output(c);
        int f = ps__conn_flush(c);
        if (f == -EAGAIN) {
            /* Backpressure: no input is read until the client takes its
             * replies. The send deadline restarts when bytes move. */
            if (!atomic_load_explicit(&ec(c)->want_write, memory_order_relaxed) ||
                ps__conn_pending_output(c) < before)
                atomic_store_explicit(&ec(c)->write_wait_ms, ps__now_ms(), memory_order_relaxed);
            atomic_store_explicit(&ec(c)->want_write, true, memory_order_relaxed);
            return SERVE_WRITE; /* when stopping, close_all flushes it */
        }
        atomic_store_explicit(&ec(c)->want_write, false, memory_order_relaxed);
        if (f < 0)
            return SERVE_CLOSE;
        if (c->closing)
            return ps__conn_replies_pending(c) ? SERVE_REPLY : SERVE_CLOSE;
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
        if (reads > 0 && c->drained && !ec(c)->read_to_end)
            return SERVE_READ;
        if (reads == PS__READ_BUDGET)
            return SERVE_BUDGET;
        reads++;
        ssize_t r = ps__conn_read(c);
        if (r == -EAGAIN)
            return SERVE_READ;
        if (r < 0)
            return SERVE_CLOSE;
        if (r == 0 || ps__conn_process(c) != PS_CONTINUE)
            c->closing = true; /* after the replies it still owes */
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
            move_to_its_cpu_shard(srv, c);
        if (let_go(srv, c))
            return false;
    }
    event_close(srv, c);
    return false;
}

/* Registers an accepted connection; the poller queues its opening job.
 * Returns 0 (a failure closes the connection itself). */
static int event_take(ps_server *srv, ps_conn *c)
{
    /* The new socket is writable at once: registering it raises the event
     * that runs its opening job on a poller, like any other. */
    ec(c)->open_pending = true;
    c->borrow = true;
    atomic_store_explicit(&ec(c)->want_write, true, memory_order_relaxed);
    atomic_store_explicit(&ec(c)->write_wait_ms, ps__now_ms(), memory_order_relaxed);
    unsigned shard = place(srv, c->fd, ev_of(srv)->nshards, c->id);
    uint64_t id = c->id;
    ec(c)->shard = (uint8_t)shard;
    atomic_fetch_add_explicit(&ev_of(srv)->shards[shard].conns, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
    atomic_store_explicit(&ec(c)->state, CONN_PARKED, memory_order_release);
    list_add(srv, c);
    /* From here on c is the sweep's to take too: touched again only once
     * claimed. */
    struct epoll_event ev = {.events = PS__EVENTS, .data.ptr = c};
    if (epoll_ctl(ev_of(srv)->shards[shard].epfd, EPOLL_CTL_ADD, c->fd, &ev) == 0)
        return 0;
    int e = errno;
    ps_log_error("connection %llu: epoll_ctl: %s", (unsigned long long)id, ps_strerror(-e));
    /* Never in epoll: unless the sweep took it (and will close it), it is
     * the caller's to reject. The sweep claims under conns_lock. */
    ps__lock(&ev_of(srv)->conns_lock);
    bool mine = claim_parked(srv, c);
    if (mine)
        list_unlink(srv, c);
    ps__unlock(&ev_of(srv)->conns_lock);
    if (!mine)
        return 0;
    atomic_fetch_sub_explicit(&ev_of(srv)->shards[shard].conns, 1, memory_order_relaxed);
    return -e;
}

/* Closes the shard's parked connections past their idle or send deadline.
 * The caller holds the shard. */
static void sweep(ps_server *srv, unsigned shard, int64_t now)
{
    event_state *ev = ev_of(srv);
    ps_conn *mine[PS__BATCH];
    int n = 0;

    ps__lock(&ev->conns_lock);
    for (ps_conn *c = ev->conns; c != NULL && n < PS__BATCH; c = ec(c)->next) {
        if (ec(c)->shard == shard &&
            atomic_load_explicit(&ec(c)->state, memory_order_relaxed) == CONN_PARKED &&
            deadline_passed(srv, c, now) && claim_parked(srv, c))
            mine[n++] = c;
    }
    ps__unlock(&ev->conns_lock);

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

/* The epoll data of the nudge eventfd. */
static char nudge_marker;

/* Adds c to the worker's batch; false when it is full. */
static bool batch_add(event_worker *w, ps_conn *c, bool turn)
{
    ps__lock(&w->lock);
    event_batch *b = &w->batch;
    bool room = b->count < PS__RING;
    if (room) {
        unsigned i = (b->head + b->count++) % PS__RING;
        b->at[i].conn = c;
        b->at[i].turn = turn;
        atomic_store_explicit(&w->waiting, b->count, memory_order_relaxed);
    }
    ps__unlock(&w->lock);
    return room;
}

/* Takes the first connection of the worker's batch; false when empty. */
static bool batch_take(event_worker *w, ps_conn **c, bool *turn)
{
    ps__lock(&w->lock);
    event_batch *b = &w->batch;
    bool got = b->count > 0;
    if (got) {
        *c = b->at[b->head].conn;
        *turn = b->at[b->head].turn;
        b->head = (b->head + 1) % PS__RING;
        b->count--;
        atomic_store_explicit(&w->waiting, b->count, memory_order_relaxed);
    }
    ps__unlock(&w->lock);
    return got;
}

/* Polls a shard the caller holds: claims what epoll_wait reports into the
 * worker's batch. Only the worker adds to it, so the room seen before
 * epoll_wait is there after. */
static void poll_shard(ps_server *srv, unsigned shard, event_worker *me, int timeout_ms)
{
    event_state *ev = ev_of(srv);
    epoll_shard *sh = &ev->shards[shard];
    struct epoll_event evs[PS__BATCH];
    int room = (int)(PS__RING - atomic_load_explicit(&me->waiting, memory_order_relaxed));

    reap(sh);
    if (room > PS__BATCH)
        room = PS__BATCH;
    if (room <= 0)
        return;
    int n = epoll_wait(sh->epfd, evs, room, timeout_ms);
    if (n < 0 && errno != EINTR)
        ps_log_error("epoll_wait: %s", ps_strerror(-errno));
    unsigned got = 0;
    for (int i = 0; i < n; i++) {
        if (evs[i].data.ptr == &nudge_marker) {
            uint64_t v;
            (void)!read(ev->nudge_fd, &v, sizeof v); /* rearms it */
            continue;
        }
        ps_conn *c = evs[i].data.ptr;
        if (c == NULL || !claim(srv, c)) /* NULL: the stop signal */
            continue;
        /* An end of stream behind the input raises no edge of its own. */
        ec(c)->read_to_end = (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
        batch_add(me, c, false);
        got++;
    }
    if (got > 0)
        atomic_fetch_add_explicit(&ev->jobs, got, memory_order_relaxed);
}

/* Takes, for the idle worker `me`, the first connection waiting behind a
 * handler call that has run PS__STALL_US on another worker. */
static bool steal(ps_server *srv, event_worker *me)
{
    event_state *ev = ev_of(srv);
    unsigned n = ev->nworkers, start = (unsigned)(me - ev->w);
    int64_t now = 0;
    for (unsigned i = 1; i < n; i++) {
        event_worker *w = &ev->w[(start + i) % n];
        if (atomic_load_explicit(&w->waiting, memory_order_relaxed) == 0)
            continue;
        int64_t since = atomic_load_explicit(&w->handler_since_us, memory_order_relaxed);
        if (since == 0)
            continue;
        if (now == 0)
            now = ps__now_us();
        if (now - since < PS__STALL_US)
            continue;
        ps_conn *c;
        bool turn;
        if (!batch_take(w, &c, &turn))
            continue;
        batch_add(me, c, turn); /* me's batch is empty: the hook runs it */
        atomic_fetch_add_explicit(&ev_of(srv)->steals, 1, memory_order_relaxed);
        return true;
    }
    return false;
}

/* Takes a shard for a poller: the one of its CPU, where its connections'
 * packets arrive (see place()), unless another has gone unpolled for
 * PS__UNPOLLED_US: the worker that polls a shard of its own CPU whenever it
 * comes back must not leave another shard to a worker that waits for a CPU
 * (then the longest unpolled one). Then any free one. Returns nshards when
 * every shard has its poller: the caller has nothing to do. *others_late
 * says whether another shard has gone unpolled that long: fewer workers
 * are free than there are shards (the others are held in handlers), and
 * the caller must not wait long on its own while another has input. */
static unsigned take_any_shard(ps_server *srv, bool *others_late)
{
    event_state *ev = ev_of(srv);
    int cpu = sched_getcpu();
    unsigned n = ev->nshards;
    /* Without a CPU number, start at a rotating shard: always trying
     * shard 0 first would starve the others. */
    unsigned shard = cpu >= 0 ? (unsigned)cpu % n
                              : atomic_fetch_add_explicit(&ev->shard_next, 1,
                                                          memory_order_relaxed) % n;
    int64_t now = ps__now_us(), oldest = now - PS__UNPOLLED_US, before = oldest;
    unsigned late = n;
    uint64_t lates = 0; /* n <= PS__SHARDS_MAX = 64 */
    for (unsigned i = 0; i < n; i++) {
        epoll_shard *sh = &ev->shards[i];
        int64_t at = atomic_load_explicit(&sh->released_us, memory_order_relaxed);
        if (at < before && !atomic_load_explicit(&sh->taken, memory_order_relaxed)) {
            lates |= (uint64_t)1 << i;
            if (at < oldest) {
                late = i;
                oldest = at;
            }
        }
    }
    unsigned got = n;
    if (late < n && take_shard(srv, late))
        got = late;
    for (unsigned tries = 0; got == n && tries < n; tries++, shard = (shard + 1) % n)
        if (take_shard(srv, shard))
            got = shard;
    *others_late = got < n && (lates & ~((uint64_t)1 << got)) != 0;
    return got;
}

/* A worker starts a job: wakes the watch if it sleeps. The watch sets
 * watch_asleep before it looks at the pool's busy count, and the pool
 * counts the job busy before it runs it: one of the two sees the other. */
static void watch_wake(event_state *ev)
{
    if (!atomic_load(&ev->watch_asleep))
        return;
    ps__lock(&ev->watch_lock);
    atomic_store(&ev->watch_asleep, false);
    pthread_cond_signal(&ev->watch_cond);
    ps__unlock(&ev->watch_lock);
}

static void event_batch_job(void *arg)
{
    event_worker *me = arg;
    ps_server *srv = me->srv;
    ps_conn *c;
    bool turn;

    watch_wake(ev_of(srv));
    while (batch_take(me, &c, &turn)) {
        if (turn) {
            /* Behind the others: those this worker holds, and those its
             * shard has ready now, unless another worker polls it. */
            if (take_shard(srv, ec(c)->shard)) {
                poll_shard(srv, ec(c)->shard, me, 0);
                release_shard(srv, ec(c)->shard);
            }
            if (atomic_load_explicit(&me->waiting, memory_order_relaxed) > 0 &&
                batch_add(me, c, false))
                continue;
        }
        if (event_serve(srv, c) && !batch_add(me, c, true))
            while (event_serve(srv, c)) /* no room: serve on */
                ;
    }
}

/* The calling worker's slot, taken on its first call. */
static event_worker *worker_of(ps_server *srv)
{
    static _Thread_local ps_server *mine_srv;
    static _Thread_local event_worker *mine;
    if (mine_srv == srv)
        return mine;
    event_state *ev = ev_of(srv);
    unsigned i = atomic_fetch_add_explicit(&ev->joined, 1, memory_order_relaxed);
    if (i >= ev->nworkers)
        return NULL; /* more workers than the pool was made with: a bug */
    mine_srv = srv;
    mine = &ev->w[i];
    ps__conn_watch_handlers(&mine->handler_since_us);
    return mine;
}

/* A reply at the head of a parked connection is done: hand the connection
 * to a worker. Called under the replies' lock. */
static void wake_for_reply(ps_server *srv, ps_conn *c)
{
    if (!claim(srv, c))
        return; /* its owner serves it again */
    event_state *ev = ev_of(srv);
    ps__lock(&ev->woken_lock);
    ec(c)->woken_next = NULL;
    if (ev->woken_tail != NULL)
        ec(ev->woken_tail)->woken_next = c;
    else
        ev->woken_head = c;
    ev->woken_tail = c;
    atomic_store_explicit(&ev->any_woken, true, memory_order_release);
    ps__unlock(&ev->woken_lock);
    /* The pollers in epoll_wait go back to the idle hook, which takes it.
     * (Workers sleep only while every shard has a poller.) The pool is not
     * touched: a reply may be finished while the server stops, after the
     * pool is gone; the nudge fd lasts until every connection is closed,
     * and this one cannot close while its replies' lock is held. */
    if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
        return; /* close_all takes it */
    uint64_t one = 1;
    (void)!write(ev->nudge_fd, &one, sizeof one);
}

/* Moves the woken connections into the worker's batch, as many as fit.
 * True when it took any. */
static bool take_woken(ps_server *srv, event_worker *me)
{
    event_state *ev = ev_of(srv);
    if (!atomic_load_explicit(&ev->any_woken, memory_order_acquire))
        return false;
    bool took = false;
    ps__lock(&ev->woken_lock);
    while (ev->woken_head != NULL) {
        ps_conn *c = ev->woken_head;
        if (!batch_add(me, c, false))
            break;
        took = true;
        ev->woken_head = ec(c)->woken_next;
        if (ev->woken_head == NULL)
            ev->woken_tail = NULL;
    }
    atomic_store_explicit(&ev->any_woken, ev->woken_head != NULL, memory_order_relaxed);
    ps__unlock(&ev->woken_lock);
    return took;
}

/* The pool's idle hook: waits for ready connections (see above). */
static int idle_poll(void *ctx, ps_job_fn *fn, void **arg)
{
    ps_server *srv = ctx;
    event_state *ev = ev_of(srv);

    if (atomic_load_explicit(&srv->stopping, memory_order_acquire))
        return PS_POOL_IDLE_SLEEP; /* until the pool's shutdown */
    event_worker *me = worker_of(srv);
    if (me == NULL)
        return PS_POOL_IDLE_SLEEP;
    *fn = event_batch_job;
    *arg = me;
    if (take_woken(srv, me) || steal(srv, me))
        return 1;
    bool others_late;
    unsigned shard = take_any_shard(srv, &others_late);
    if (shard == ev->nshards)
        return PS_POOL_IDLE_SLEEP; /* every shard has its poller */
    /* With other shards left unpolled, wait 1 ms: the next poll goes to the
     * one that waited longest. */
    poll_shard(srv, shard, me, others_late ? 1 : PS__SWEEP_MS);
    epoll_shard *sh = &ev->shards[shard];
    int64_t now_us = ps__now_us(), now = now_us / 1000;
    if (now - sh->last_sweep_ms >= PS__SWEEP_MS) {
        sh->last_sweep_ms = now;
        sweep(srv, shard, now);
    }
    /* Another worker may wait on this shard while this one serves. */
    atomic_store_explicit(&sh->released_us, now_us, memory_order_relaxed);
    release_shard(srv, shard);
    return atomic_load_explicit(&me->waiting, memory_order_relaxed) > 0;
}

enum { WATCH_IDLE, WATCH_BUSY, WATCH_HELD };

/* One look of the watch: wakes a sleeping worker for each handler call
 * that has held its worker PS__STALL_US (once per call). Returns
 * WATCH_HELD when some call holds its worker, else WATCH_BUSY when any
 * worker runs a job, else WATCH_IDLE. */
static int watch_look(ps_server *srv)
{
    event_state *ev = ev_of(srv);
    int64_t now = ps__now_us();
    unsigned held = 0, fresh = 0;
    for (unsigned i = 0; i < ev->nworkers; i++) {
        event_worker *w = &ev->w[i];
        int64_t since = atomic_load_explicit(&w->handler_since_us, memory_order_relaxed);
        if (since == 0 || now - since < PS__STALL_US)
            continue;
        held++;
        if (w->woken_for != since) {
            w->woken_for = since;
            fresh++;
        }
    }
    if (fresh > 0) {
        unsigned woken = ps_pool_wake_idle(srv->pool, fresh);
        atomic_fetch_add_explicit(&ev_of(srv)->wakes, woken, memory_order_relaxed);
        /* Nobody asleep to wake: the workers in epoll_wait come back to
         * take what waits behind the held calls. */
        uint64_t one = 1;
        if (woken < fresh && write(ev->nudge_fd, &one, sizeof one) < 0 && errno != EAGAIN)
            ps_log_error("event watch: nudge: %s", ps_strerror(-errno));
    }
    if (held > 0)
        return WATCH_HELD;
    return ps_pool_available_threads(srv->pool) < ps_pool_max_threads(srv->pool) ? WATCH_BUSY
                                                                                  : WATCH_IDLE;
}

static void *watch_main(void *arg)
{
    ps_server *srv = arg;
    event_state *ev = ev_of(srv);
    int64_t tick_us = PS__WATCH_US;

    ps__lock(&ev->watch_lock);
    while (!ev->watch_stop) {
        ps__unlock(&ev->watch_lock);
        int seen = watch_look(srv);
        ps__lock(&ev->watch_lock);
        if (ev->watch_stop)
            break;
        if (seen == WATCH_HELD)
            tick_us = PS__WATCH_US;
        else if (tick_us < PS__WATCH_MAX_US)
            tick_us *= 2;
        if (seen == WATCH_IDLE) {
            /* Nothing runs: sleep until a job starts (watch_wake). */
            atomic_store(&ev->watch_asleep, true);
            if (ps_pool_available_threads(srv->pool) == ps_pool_max_threads(srv->pool))
                while (atomic_load(&ev->watch_asleep) && !ev->watch_stop)
                    ps__wait(&ev->watch_cond, &ev->watch_lock);
            atomic_store(&ev->watch_asleep, false);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += tick_us * 1000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        int rc = pthread_cond_timedwait(&ev->watch_cond, &ev->watch_lock, &ts);
        if (rc != 0 && rc != ETIMEDOUT)
            abort();
    }
    ps__unlock(&ev->watch_lock);
    return NULL;
}

/* Starts the thread that watches for workers held in a handler and wakes
 * others in their place (after the pool exists). Returns 0 or -errno. */
static int watch_start(ps_server *srv)
{
    event_state *ev = ev_of(srv);
    int rc = pthread_create(&ev->watch, NULL, watch_main, srv);
    if (rc != 0)
        return -rc;
    ev->watch_started = true;
    return 0;
}

/* Stops and joins that thread (before the pool is destroyed). */
static void watch_end(ps_server *srv)
{
    event_state *ev = ev_of(srv);
    if (ev == NULL || !ev->watch_started)
        return;
    ps__lock(&ev->watch_lock);
    ev->watch_stop = true;
    pthread_cond_signal(&ev->watch_cond);
    ps__unlock(&ev->watch_lock);
    pthread_join(ev->watch, NULL);
    ev->watch_started = false;
}

/* The pool's queue stays empty: what waits is ready connections claimed
 * by a worker that has not come to them yet. */
static void event_pool_stats(const ps_server *srv, ps_pool_stats *st)
{
    const event_state *ev = ev_of(srv);
    if (ev == NULL)
        return;
    for (unsigned i = 0; i < ev->nworkers; i++)
        st->queue_depth += atomic_load_explicit(&ev->w[i].waiting, memory_order_relaxed);
}

/* The workers' slots and the watch's lock; NULL on ENOMEM. */
static event_state *event_new(ps_server *srv)
{
    event_state *ev = aligned_alloc(_Alignof(event_state), sizeof *ev);
    if (ev == NULL)
        return NULL;
    memset(ev, 0, sizeof *ev);
    ev->nworkers = srv->cfg.workers;
    ev->w = aligned_alloc(_Alignof(event_worker), ev->nworkers * sizeof *ev->w);
    if (ev->w == NULL) {
        free(ev);
        return NULL;
    }
    memset(ev->w, 0, ev->nworkers * sizeof *ev->w);
    ev->nudge_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ev->nudge_fd < 0) {
        free(ev->w);
        free(ev);
        return NULL;
    }
    pthread_condattr_t ca;
    if (pthread_mutex_init(&ev->conns_lock, NULL) != 0 ||
        pthread_mutex_init(&ev->watch_lock, NULL) != 0 ||
        pthread_mutex_init(&ev->woken_lock, NULL) != 0 || pthread_condattr_init(&ca) != 0 ||
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&ev->watch_cond, &ca) != 0)
        abort(); /* default attributes: cannot fail on Linux but for ENOMEM */
    pthread_condattr_destroy(&ca);
    atomic_init(&ev->joined, 0);
    atomic_init(&ev->watch_asleep, false);
    atomic_init(&ev->any_woken, false);
    for (unsigned i = 0; i < ev->nworkers; i++) {
        event_worker *w = &ev->w[i];
        if (pthread_mutex_init(&w->lock, NULL) != 0)
            abort();
        atomic_init(&w->waiting, 0);
        atomic_init(&w->handler_since_us, 0);
        w->srv = srv;
    }
    return ev;
}

static void event_free(event_state *ev)
{
    if (ev == NULL)
        return;
    for (unsigned i = 0; i < ev->nworkers; i++)
        pthread_mutex_destroy(&ev->w[i].lock);
    pthread_cond_destroy(&ev->watch_cond);
    pthread_mutex_destroy(&ev->watch_lock);
    pthread_mutex_destroy(&ev->woken_lock);
    pthread_mutex_destroy(&ev->conns_lock);
    close(ev->nudge_fd);
    free(ev->w);
    free(ev);
}

static void shards_teardown(ps_server *srv);

/* Creates the epoll sets and the workers' batches (before the pool, whose
 * idle hook uses them). */
static int shards_setup(ps_server *srv, char *err, size_t errlen)
{
    /* As many shards as CPUs: that many workers wait for input at once,
     * each serving what its epoll set reports without a hand-off. */
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned n = cpus > 0 ? (unsigned)cpus : 1;
    if (n > srv->cfg.workers)
        n = srv->cfg.workers;
    if (n > PS__SHARDS_MAX)
        n = PS__SHARDS_MAX;
    srv->mode = event_new(srv);
    if (srv->mode == NULL) {
        snprintf(err, errlen, "event dispatch: %s", ps_strerror(-errno));
        return -errno;
    }
    for (unsigned i = 0; i < n; i++) {
        int fd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        struct epoll_event nudge = {.events = EPOLLIN | EPOLLET, .data.ptr = &nudge_marker};
        if (fd < 0 || epoll_ctl(fd, EPOLL_CTL_ADD, srv->stop_fd, &ev) < 0 ||
            epoll_ctl(fd, EPOLL_CTL_ADD, ev_of(srv)->nudge_fd, &nudge) < 0) {
            int e = errno;
            snprintf(err, errlen, "epoll: %s", ps_strerror(-e));
            if (fd >= 0)
                close(fd);
            shards_teardown(srv);
            return -e;
        }
        epoll_shard *sh = &ev_of(srv)->shards[ev_of(srv)->nshards++];
        sh->epfd = fd;
        sh->last_sweep_ms = ps__now_ms();
        atomic_init(&sh->taken, false);
        atomic_init(&sh->conns, 0);
        atomic_init(&sh->released_us, ps__now_us());
        atomic_init(&sh->graves, NULL);
    }
    return 0;
}

/* Closes the epoll sets and frees the batches. */
static void shards_teardown(ps_server *srv)
{
    if (ev_of(srv) == NULL)
        return;
    for (unsigned i = 0; i < ev_of(srv)->nshards; i++) {
        reap(&ev_of(srv)->shards[i]);
        close(ev_of(srv)->shards[i].epfd);
    }
    event_free(ev_of(srv));
    srv->mode = NULL;
}

/* After the pool is gone: flushes (bounded) and closes what is parked. */
static void close_all(ps_server *srv)
{
    event_state *ev = ev_of(srv);
    /* Single-threaded now: every worker is gone, every connection parked
     * (or claimed by a finished reply and not served: on the list too). */
    ps__lock(&ev->woken_lock);
    ev->woken_head = ev->woken_tail = NULL;
    ps__unlock(&ev->woken_lock);
    while (ev->conns != NULL) {
        ps_conn *c = ev->conns;
        list_unlink(srv, c);
        (void)ps__conn_flush_all(c); /* bounded by the stop deadline */
        if (atomic_load(&ec(c)->state) == CONN_PARKED)
            atomic_fetch_sub_explicit(&ps__stripe_of(srv)->parked, 1, memory_order_relaxed);
        epoll_ctl(ev->shards[ec(c)->shard].epfd, EPOLL_CTL_DEL, c->fd, NULL);
        atomic_fetch_sub_explicit(&ev->shards[ec(c)->shard].conns, 1, memory_order_relaxed);
        ps__conn_close(c);
    }
    for (unsigned i = 0; i < ev->nshards; i++)
        reap(&ev->shards[i]);
}

/* Whether a connection waits in epoll (no worker holds it). */
static bool is_parked(const ps_conn *c)
{
    return atomic_load_explicit(&ec(c)->state, memory_order_relaxed) == CONN_PARKED;
}

/* The epoll sets, then the pool's idle hook: every idle worker may look
 * for work (the hook itself keeps one poller per shard and puts the rest
 * to sleep). */
static int event_setup(ps_server *srv, ps_pool_opts *po, char *err, size_t errlen)
{
    int rc = shards_setup(srv, err, errlen);
    if (rc != 0)
        return rc;
    po->idle = idle_poll;
    po->idle_ctx = srv;
    po->idle_max = srv->cfg.workers;
    return 0;
}

/* Event mode's counters: jobs, shards and their connections, moves,
 * steals and wakes (zero before start and after stop). */
static void event_add_stats(const ps_server *srv, ps__stat_fn emit, void *arg)
{
    const event_state *ev = ev_of(srv);
    emit(arg, "event_jobs", ev != NULL ? atomic_load(&ev->jobs) : 0);
    emit(arg, "event_shards", ev != NULL ? ev->nshards : 0);
    emit(arg, "event_moves", ev != NULL ? atomic_load(&ev->moves) : 0);
    emit(arg, "event_steals", ev != NULL ? atomic_load(&ev->steals) : 0);
    emit(arg, "event_wakes", ev != NULL ? atomic_load(&ev->wakes) : 0);
    for (unsigned i = 0; ev != NULL && i < ev->nshards; i++) {
        char name[32];
        snprintf(name, sizeof name, "shard%u_connections", i);
        emit(arg, name, atomic_load(&ev->shards[i].conns));
    }
}

const ps__dispatch ps__dispatch_event = {
    .uses_pool = true,
    .conn_size = sizeof(event_conn),
    .setup = event_setup,
    .start = watch_start,
    .take = event_take,
    .busy_why = "epoll_ctl failed",
    .tick_ms = -1,
    .stop = watch_end,
    .close_all = close_all,
    .teardown = shards_teardown,
    .pool_stats = event_pool_stats,
    .is_parked = is_parked,
    .wake = wake_for_reply,
    .full_pool_waits = true,
    .add_stats = event_add_stats,
};
