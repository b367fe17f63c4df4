#ifndef POOLSRV_SERVER_INTERNAL_H
#define POOLSRV_SERVER_INTERNAL_H

/* The server object: struct ps_server, its counters and limits, the
 * dispatch interface every mode implements (dispatch_*.c), and the
 * counters' and readiness functions (stats.c). Private to the library;
 * each other module has a header of its own. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "poolsrv/config.h"
#include "poolsrv/module.h"
#include "poolsrv/pool.h"
#include "poolsrv/server.h"
#include "net.h"
#include "metrics.h"
#include "../common/clock.h"
#include "../common/lock.h"


/* The counters touched on every request, striped: each thread adds to its
 * own stripe (memcached's per-thread stats), so two cores never fight over
 * one cache line; readers sum the stripes. */
#define PS__STRIPES 16
typedef struct ps__stripe {
    _Alignas(64) atomic_uint_fast64_t lines;
    atomic_uint_fast64_t bytes_in;
    atomic_uint_fast64_t bytes_out;
    atomic_int_fast64_t parked; /* event mode: +1 park, -1 wake; sums >= 0 */
    atomic_uint_fast64_t blocks; /* ps_conn_read_bytes blocks given whole */
} ps__stripe;
_Static_assert(sizeof(ps__stripe) == 64 && _Alignof(ps__stripe) == 64,
               "a stripe fills one cache line of its own");

/* Server counters, C11 atomics updated with relaxed fetch_add. */
typedef struct ps__counters {
    ps__stripe stripes[PS__STRIPES];
    atomic_uint_fast64_t curr_connections;
    atomic_uint_fast64_t total_connections;
    atomic_uint_fast64_t rejected_busy;
    atomic_uint_fast64_t rejected_max;
    atomic_uint_fast64_t rejected_shutdown; /* queued when the server stopped */
    atomic_uint_fast64_t slot_waits; /* waited for a slot at max_connections */
    atomic_uint_fast64_t replies_deferred; /* ps_reply_defer calls */
    atomic_uint_fast64_t reloads, reload_errors;
    atomic_uint_fast64_t lines_too_long;
    atomic_uint_fast64_t idle_timeouts;
    atomic_uint_fast64_t send_timeouts;
    atomic_uint_fast64_t accept_errors;
    atomic_uint_fast64_t admin_commands;
    atomic_uint_fast64_t admin_refused; /* admin clients refused: every slot busy */
    atomic_uint_fast64_t slow_handlers; /* handler calls past slow_handler_ms */
    atomic_uint_fast64_t output_overflows; /* closed past limits.max_output */
    atomic_uint_fast64_t tls_handshakes;   /* TLS handshakes done */
    atomic_uint_fast64_t tls_errors;       /* handshakes refused (plaintext, bad hello, cert) */
    atomic_uint_fast64_t tls_timeouts;     /* handshakes not done in tls.handshake_timeout */
    atomic_uint_fast64_t sends_refused; /* ps_conn_ref_send's -ENOBUFS */
    atomic_uint_fast64_t proxy_errors; /* PROXY header missing, bad, late, cut or untrusted */
    /* Connections waiting for their PROXY header (a gauge): added by the
     * acceptor, taken out by the stage (proxy_stage.c) or, once the header
     * is read, by serve_proxied (server.c), whose release pairs with the
     * drain's acquire in open_connections. */
    atomic_uint_fast64_t proxy_pending;
    atomic_uint_fast64_t rejected_proxy_pending; /* evicted at proxy_max_pending */
    /* Handler time per line, one histogram per stripe (as `stripes`):
     * summed on read (metrics). */
    ps__hist handler_time[PS__STRIPES];
} ps__counters;

/* Every live connection, whatever the dispatch, for `stats conns`: a list
 * per stripe (by id), each under its own lock, so connections opening and
 * closing on many threads seldom meet. */
typedef struct ps__registry {
    _Alignas(64) pthread_mutex_t lock; /* guards head and the links */
    struct ps_conn *head;
} ps__registry;
_Static_assert(sizeof(ps__registry) % 64 == 0, "each registry stripe on lines of its own");

typedef struct ps__linger ps__linger;
typedef struct ps__proxy_stage ps__proxy_stage;

/* Receives one counter of a dispatch mode's own (ps__dispatch.add_stats). */
typedef void (*ps__stat_fn)(void *arg, const char *name, unsigned long long value);

/*
 * A dispatch mode, as the server sees it: each mode (dispatch_connection.c,
 * dispatch_event.c, dispatch_thread.c) fills one of these, and the server
 * calls through it, naming no mode. A NULL member is nothing to do.
 */
typedef struct ps__dispatch {
    /* The pool serves its connections (else a thread of their own each). */
    bool uses_pool;
    /* Bytes of the mode's own after each connection (ps_conn.mode). */
    size_t conn_size;
    /* Before the pool: the mode's state; may set the pool's idle hook. */
    int (*setup)(ps_server *srv, ps_pool_opts *po, char *err, size_t errlen);
    /* After the pool exists: the mode's own threads. 0 or -errno. */
    int (*start)(ps_server *srv);
    /* A counted-in connection to serve. 0, or nonzero when it cannot be
     * taken now (the caller tells the client the server is busy, saying
     * busy_why in the log). */
    int (*take)(ps_server *srv, ps_conn *conn);
    const char *busy_why;
    /* The acceptor's periodic work (at least every tick_ms; -1: none);
     * at stop with all set, after the acceptor has ended. */
    void (*tick)(ps_server *srv, bool all);
    int tick_ms;
    /* Before the pool goes (its threads first), after it (what is left),
     * and the mode's state last. */
    void (*stop)(ps_server *srv);
    void (*close_all)(ps_server *srv);
    void (*teardown)(ps_server *srv);
    /* The mode's part of the pool's numbers (ps_server_get_pool_stats):
     * connections ready and not yet served in queue_depth; threads of
     * its own in place of a pool's. */
    void (*pool_stats)(const ps_server *srv, ps_pool_stats *st);
    /* Whether a connection waits with nothing holding it (stats conns). */
    bool (*is_parked)(const ps_conn *conn);
    /* A deferred reply is done (under the replies' lock): hand the
     * connection to a worker. NULL: its owner waits on the reply's eventfd. */
    void (*wake)(ps_server *srv, ps_conn *conn);
    /* Every worker busy is not yet a backlog: only clients queued for one
     * are kept waiting (connection, thread); in event mode a worker held
     * by a handler polls nothing, so a full pool always keeps input waiting. */
    bool full_pool_waits;
    /* The mode's own counters, for the admin port's stats. */
    void (*add_stats)(const ps_server *srv, ps__stat_fn emit, void *arg);
} ps__dispatch;

extern const ps__dispatch ps__dispatch_connection;
extern const ps__dispatch ps__dispatch_event;
extern const ps__dispatch ps__dispatch_thread;

/* The [limits] keys a reload may change while workers read them: atomic
 * copies of cfg's (relaxed; each read takes the value of the moment).
 * Read them with PS__LIMIT(srv, key), never cfg's fields. */
typedef struct ps__limits {
    _Atomic unsigned max_connections, max_connections_wait_ms;
    _Atomic size_t max_line;
    _Atomic size_t max_block;
    _Atomic size_t max_output;
    _Atomic unsigned idle_timeout, send_timeout, shutdown_timeout, slow_handler_ms;
} ps__limits;
#define PS__LIMIT(srv, key) atomic_load_explicit(&(srv)->limits.key, memory_order_relaxed)

struct ps_server {
    ps__limits limits;
    /* The data listener's TLS context (tls.enabled), made at start; its
     * connections hold references of their own. */
    struct ps__tls *tls;
    ps_config cfg;
    const ps_handler *handler;
    void *ud;
    ps_handler_reload_fn handler_reload; /* ps_server_set_handler_reload */
    void *handler_reload_arg;

    ps_pool *pool;
    int listen_fd;
    int admin_fd;
    int inherited_fd, inherited_admin_fd; /* ps_server_use_listeners; -1 = bind */
    bool listen_inherited, admin_inherited;
    uint16_t port;
    uint16_t admin_port;
    int backlog;                 /* the data listener's, as listen() got it */
    char listen_addr[PS__ADDR_MAX];
    char admin_addr[PS__ADDR_MAX];

    /* An eventfd written once by stop and never read: every poll() that
     * includes it wakes and keeps waking, so one write stops every loop. */
    int stop_fd;
    atomic_bool stopping;
    atomic_int_fast64_t stop_deadline_ms; /* monotonic; 0 = not stopping */
    /* ps_server_drain: like stop_fd, written once and never read; it tells
     * the acceptor to take no new client while the connections already in
     * go on being served (and the admin thread, after a hand-over). */
    int drain_fd;
    atomic_bool draining;
    /* ps_server_handed_over: another process accepts on the listeners, so
     * a drain leaves new admin clients to it too. Set by the owning
     * thread, read by the admin thread. */
    atomic_bool handed_over;
    /* ps_server_drain_cut (any thread, a signal handler too): the drain
     * ends now; read by ps_server_drain's wait and the acceptor. */
    atomic_bool drain_cut;
    /* What the admin port's `ready` and `agent` read: set once start is
     * done; set by ps_server_announce_stop; when every worker became busy
     * with clients waiting (0: not so), sampled by the admin thread. */
    atomic_bool serving;
    atomic_bool stop_announced;
    atomic_int_fast64_t saturated_since_ms;

    pthread_t acceptor;
    bool acceptor_started;
    atomic_bool acceptor_done; /* its loop has ended (an error, or stop) */
    struct ps__admin *admin;   /* the admin listener's thread; NULL = none */
    bool started;
    bool stopped;

    ps__linger *linger;          /* closes sockets whose replies are in flight */
    ps__proxy_stage *proxy;      /* reads PROXY headers (proxy_stage.c); NULL = off */
    const ps__dispatch *dispatch; /* the mode's operations (cfg.dispatch) */
    void *mode;                  /* the mode's own state, private to its file */
    ps__registry registry[PS__STRIPES];

    atomic_uint_fast64_t next_conn_id;
    int64_t start_ms;
    ps__counters c;
};

/* The calling thread's stripe of srv's counters. */
ps__stripe *ps__stripe_of(ps_server *srv);

/* How long every worker must stay busy with clients waiting before
 * `ready` says NOT READY. */
#define PS__SATURATED_MS 1000

/* The histogram of handler time per line of the calling thread's stripe. */
ps__hist *ps__handler_time_of(ps_server *srv);

/* Every stripe's handler time summed. Any thread. */
void ps__handler_time_snapshot(ps_server *srv, ps__hist_snapshot *into);

/* What the admin port's `ready` answers. */
typedef enum ps__readiness {
    PS__READY,
    PS__NOT_READY_STARTING,
    PS__NOT_READY_DRAINING, /* draining, stopping, or a stop announced */
    PS__NOT_READY_FULL,     /* every worker busy, clients waiting, for PS__SATURATED_MS */
} ps__readiness;
ps__readiness ps__server_readiness(const ps_server *srv);
/* What the admin port reports of the server beyond ps_server_get_stats and
 * ps_server_get_pool_stats: the dispatch mode's name, its own counters,
 * whether a connection waits with nothing holding it; and the counting of
 * its commands and of the clients it refused. */
const char *ps__server_mode_name(const ps_server *srv);
void ps__server_mode_stats(const ps_server *srv, ps__stat_fn emit, void *arg);
bool ps__server_conn_parked(const ps_server *srv, const ps_conn *conn);
void ps__server_count_admin_command(ps_server *srv);
void ps__server_count_admin_refused(ps_server *srv);

/* Samples whether every worker is busy with clients waiting (the admin
 * thread, a few times a second): the clock PS__NOT_READY_FULL reads. */
void ps__server_watch_saturation(ps_server *srv, int64_t now);

#endif
