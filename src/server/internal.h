#ifndef POOLSRV_SERVER_INTERNAL_H
#define POOLSRV_SERVER_INTERNAL_H

/* Shared between the server's modules; not part of the public API. */

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
#include "buf.h"
#include "metrics.h"
#include "../common/clock.h"
#include "../common/lock.h"

#define PS__ADDR_MAX 64 /* "[v6 address]:port" */
#define PS__OUT_MIN 4096 /* the least a connection's output buffer grows to */

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
    atomic_uint_fast64_t slow_handlers; /* handler calls past slow_handler_ms */
    atomic_uint_fast64_t proxy_errors; /* PROXY header missing, bad, late or untrusted */
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
    _Atomic unsigned idle_timeout, send_timeout, shutdown_timeout, slow_handler_ms;
} ps__limits;
#define PS__LIMIT(srv, key) atomic_load_explicit(&(srv)->limits.key, memory_order_relaxed)

struct ps_server {
    ps__limits limits;
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
     * the acceptor and the admin thread to take no new client while the
     * connections already in go on being served. */
    int drain_fd;
    atomic_bool draining;
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
/* Samples whether every worker is busy with clients waiting (the admin
 * thread, a few times a second): the clock PS__NOT_READY_FULL reads. */
void ps__server_watch_saturation(ps_server *srv, int64_t now);

/* ---- net.c ---- */

/* Binds and listens on host:port (non-blocking, close-on-exec, SO_REUSEADDR;
 * SO_REUSEPORT too with reuseport).
 * Returns 0 with *fd and the bound address text, or a negative errno with a
 * message in err. */
/* Takes an inherited socket (socket activation) as the `what` listener:
 * checks it is a listening TCP socket over IPv4 or IPv6, makes it
 * non-blocking and close-on-exec, and says its address. 0 or -errno with
 * the reason in err. */
int ps__adopt_listener(int fd, const char *what, uint16_t *bound_port, char *addr,
                       size_t addrlen, char *err, size_t errlen);
/* accept4 on a listener, non-blocking and close-on-exec, past EINTR and
 * the connections that died in the backlog (ECONNABORTED, EPROTO): the
 * new socket, or -errno (-EAGAIN: none waiting). peer may be NULL. */
int ps__accept(int listen_fd, struct sockaddr_storage *peer);
int ps__listen(const char *host, uint16_t port, int backlog, bool reuseport, int *fd,
               uint16_t *bound_port, char *addr, size_t addrlen,
               char *err, size_t errlen);

/* True when the socket is bound to a loopback address (127.0.0.0/8, ::1,
 * or ::ffff:127.0.0.0/104). */
bool ps__is_loopback(int fd);

/* "1.2.3.4:5" or "[::1]:5". */
void ps__format_addr(const struct sockaddr *sa, char *buf, size_t len);

/* Writes as much of buf as the socket takes now, without blocking. Returns
 * bytes written (maybe 0), or a negative errno other than EAGAIN. */
ssize_t ps__write_some(int fd, const void *buf, size_t len);

/* Best effort one-shot write of a short message (rejections); never blocks. */
void ps__write_best_effort(int fd, const char *msg);

/* The kernel's cap on listen backlogs (net.core.somaxconn), or 4096 when
 * it cannot be read: the backlog used when the configuration says 0. */
int ps__somaxconn(void);



/* ---- conn.c ---- */

/* One client connection. Fields are owned by the thread serving it. */
struct ps_conn {
    ps_server *srv;
    int fd;
    bool opened;
    uint64_t id;
    void *data;
    /* Monotonic time of the last complete line (or of the open): the idle
     * deadline counts from it, so a client trickling bytes without a
     * newline does not push its deadline forward. Atomic (relaxed) because
     * the event sweep reads it without owning the connection. */
    _Atomic int64_t last_line_ms;
    char peer[PS__ADDR_MAX];
    int64_t created_ms;          /* monotonic; set before it is registered */
    /* ps_conn_read_bytes: the next block_want bytes go to block_fn (or are
     * discarded, block_discard) instead of the framer; 0 = lines. */
    size_t block_want;
    ps_bytes_fn block_fn;
    bool block_discard;
    atomic_uint_fast64_t lines;  /* lines framed; read by `stats conns` */
    struct ps_conn *reg_prev, *reg_next; /* its stripe of the registry */

    bool closing;           /* closes once its output is written */
    bool drained;           /* the last read took less than it asked for */

    /* The serving worker lends its scratch buffers to the connection, so
     * that a request and its reply allocate nothing; what is left in them
     * when the worker lets go is copied out (ps__conn_shrink). */
    bool borrow;
    ps__buf in;  /* unframed input */
    ps__buf out; /* output queued for the client */

    /* Deferred replies (reply.c); NULL until the first ps_reply_defer. */
    struct ps__replies *replies;

    /* The dispatch mode's own: ps__dispatch.conn_size bytes. */
    _Alignas(max_align_t) unsigned char mode[];
};


/* Creates the connection object for an accepted socket (owns fd from now
 * on, closing it on failure). Returns NULL on ENOMEM. */
ps_conn *ps__conn_new(ps_server *srv, int fd, const struct sockaddr *peer);

/* A connection closed for a timeout: counted in idle_timeouts or
 * send_timeouts (send: it stopped reading replies) and logged; the one
 * place both dispatches report one. */
void ps__conn_timed_out(ps_conn *conn, bool send);

/* Calls fn for every live connection (under its stripe's lock: fn must not
 * block or touch the registry), until fn returns false. */
void ps__conn_each(ps_server *srv, bool (*fn)(const ps_conn *c, void *arg), void *arg);


/* Runs on_close (if opened), closes the socket through ps__linger_close
 * (FIN, never RST over undelivered replies), updates counters and frees. */
void ps__conn_close(ps_conn *conn);

/* ps__conn_close without freeing the object itself, for callers that must
 * keep it readable a while longer (event mode; free() it later). */
void ps__conn_end(ps_conn *conn);

/* Makes the calling thread publish, in *since, the monotonic time (us) at
 * which its current handler call began, and 0 between calls, so that
 * another thread can tell a handler that blocks (event mode's watch). NULL
 * stops it. */
void ps__conn_watch_handlers(_Atomic int64_t *since);

/* Calls the handler's on_open. Returns PS_CONTINUE or PS_CLOSE. */
int ps__conn_open(ps_conn *conn);

/* Reads what the socket has now into the input buffer. Returns bytes read
 * (> 0), 0 at end of stream, -EAGAIN when nothing is there, or -errno. */
ssize_t ps__conn_read(ps_conn *conn);

/* Frames the complete lines in the input buffer and calls on_line for each,
 * stopping early once more than a high-water mark of output is queued (so
 * the caller flushes before producing more). Returns PS_CONTINUE or PS_CLOSE
 * (handler asked, or a too-long line was answered with an error). */
int ps__conn_process(ps_conn *conn);

/* True when a complete line is already buffered (process stopped early). */
bool ps__conn_has_line(const ps_conn *conn);

/* Writes queued output without blocking. Returns 0 when all is written,
 * -EAGAIN when some remains, or -errno when the socket failed. */
int ps__conn_flush(ps_conn *conn);

/* Writes all queued output, waiting in poll() while the client reads:
 * until send_timeout passes with no byte taken (counted and logged as a
 * send timeout), or the stop deadline once the server stops. 0, or a
 * negative errno (-ETIMEDOUT) when not all of it went. */
int ps__conn_flush_all(ps_conn *conn);

/* Bytes queued for the client and not yet written. */
size_t ps__conn_pending_output(const ps_conn *conn);


/* Called before the serving thread lets go of the connection: frees the
 * buffers that hold nothing and moves what is left in borrowed scratch
 * buffers into buffers of the connection's own. Returns 0, or -ENOMEM
 * (the connection still holds the borrowed buffers: close it). */
int ps__conn_shrink(ps_conn *conn);

/* Last idle-deadline reference (ms); see last_line_ms. */
static inline int64_t ps__conn_last_line(const ps_conn *c)
{
    return atomic_load_explicit(&c->last_line_ms, memory_order_relaxed);
}

/* ---- proxy_stage.c ---- */

/* What the stage hands a connection to once its header is read: the
 * server's dispatch, with the client's address from the header. */
typedef void (*ps__serve_fn)(ps_server *srv, int fd, const struct sockaddr *peer, uint64_t active);

/* Starts the thread that reads PROXY headers (cfg.proxy_protocol on). 0, or
 * a negative code with the reason in err. */
int ps__proxy_stage_start(ps_server *srv, ps__serve_fn serve, char *err, size_t errlen);
/* Takes a counted-in connection from the acceptor: closes it at once when
 * its peer is not in proxy_trusted, else waits for its header. */
void ps__proxy_stage_take(ps_server *srv, int fd, const struct sockaddr *peer, uint64_t active);
/* Ends the thread; connections still waiting for a header are closed.
 * After the acceptor has stopped; no-op when never started. */
void ps__proxy_stage_stop(ps_server *srv);

/* ---- linger.c ---- */

/* Starts the thread that finishes closing sockets (see linger.c). */
int ps__linger_start(ps_server *srv);
/* Sends FIN and closes fd once every reply is delivered (or the client is
 * gone, or send_timeout passes), without making the caller wait. Owns fd. */
void ps__linger_close(ps_server *srv, int fd);
/* Waits for lingering sockets up to the stop deadline, then ends the thread. */
void ps__linger_stop(ps_server *srv);

/* ---- blocking.c ---- */

/* Serves one connection on the calling thread until it closes, then closes
 * it (dispatch = connection on a worker, dispatch = thread on its own). */
void ps__serve_blocking(ps_conn *conn);

/* ---- admin.c ---- */

/* Starts the thread that serves the admin listener until stop_fd becomes
 * readable (new clients until drain_fd does): NULL with -errno in *err
 * when it cannot. Join ends it and frees it; NULL is a no-op. */
typedef struct ps__admin ps__admin;
ps__admin *ps__admin_start(ps_server *srv, int listen_fd, int stop_fd, int drain_fd, int *err);
void ps__admin_join(ps__admin *admin);

/* Writes the reply to one admin command line into buf (NUL-terminated).
 * Returns PS_CONTINUE, or PS_CLOSE for quit. */
int ps__admin_command(ps_server *srv, const char *line, size_t len,
                      char *buf, size_t buflen);

/* One admin client: its framing, replies and backpressure, apart from the
 * listener's poll loop (fuzz_admin drives them over a socket pair). */
typedef struct ps__admin_client ps__admin_client;
ps__admin_client *ps__admin_client_new(int fd, int64_t now_ms);
/* True while a reply waits for the socket to take it (poll for POLLOUT;
 * the client's next commands wait meanwhile). */
bool ps__admin_client_wants_write(const ps__admin_client *ac);
/* On readable: reads, answers every complete command (as far as the reply
 * buffer allows) and writes. False when the client must be closed. */
bool ps__admin_client_read(ps_server *srv, ps__admin_client *ac);
/* On writable: writes, then answers commands held back. False when the
 * client must be closed. */
bool ps__admin_client_flush(ps_server *srv, ps__admin_client *ac);
/* Closes the client's socket (lingering, as a data connection's) and
 * frees it. */
void ps__admin_client_close(ps_server *srv, ps__admin_client *ac);

/* ---- echo.c ---- */

/* The built-in modules' init, reload and fini (echo and sleep): the
 * greeting key, kept in a box whose greeting a reload replaces. */
int ps__echo_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                  char *err, size_t errlen, size_t *bad);
int ps__echo_reload(void *ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                    char *err, size_t errlen, size_t *bad);
void ps__echo_fini(void *ud);
/* on_open of the built-in modules: the greeting in the box `ud`. */
int ps__module_greeting_open(ps_conn *conn, void *ud);

/* ---- config.c ---- */

/* Copies the keys of one section from src to dst. */
void ps__config_copy_section(ps_config *dst, const ps_config *src, const char *section);

/* Whether a's and b's [handler] keys (other than name and module) are the
 * same, in the same order. */
bool ps__config_handler_keys_equal(const ps_config *a, const ps_config *b);

/* Calls changed(key, was, now) for each key whose value differs between a
 * and b ("handler keys" once for the handler's own); returns how many. */
int ps__config_diff(const ps_config *a, const ps_config *b,
                    void (*changed)(const char *key, const char *was, const char *now, void *arg),
                    void *arg);

/* ---- reply.c ---- */

typedef struct ps__replies ps__replies;
/* ps_conn_send while replies are pending: holds the bytes behind the last
 * one. Returns 0, -ENOMEM, or 1 when nothing is pending (send them). */
int ps__conn_hold(ps_conn *conn, const void *data, size_t len);
/* The owner moves the finished replies at the head into the output (and
 * sets conn->closing for one finished with PS_CLOSE). 0 or -ENOMEM. */
int ps__conn_promote(ps_conn *conn);
bool ps__conn_replies_pending(const ps_conn *conn);
/* Connection and thread modes: the eventfd a finished reply writes, or -1. */
int ps__conn_wake_fd(const ps_conn *conn);
/* At close: replies not done yet will find the connection gone. */
void ps__conn_replies_close(ps_conn *conn);

#endif
