#ifndef POOLSRV_SERVER_H
#define POOLSRV_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "poolsrv/config.h"
#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"
#include "poolsrv/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A line-based TCP server: an acceptor, a bounded queue, a fixed pool of
 * workers, and a handler called for each line. The connection layer does all
 * reading, framing and writing, so a handler never touches the socket.
 */

typedef struct ps_server ps_server;
typedef struct ps_conn ps_conn;

/* What a handler callback tells the connection layer. */
enum {
    PS_CONTINUE = 0, /* keep the connection */
    PS_CLOSE = 1,    /* flush what was sent, then close */
};

/* A handler: callbacks run on the thread that serves the connection at that
 * moment; calls for one connection never overlap. `ud` is the user pointer
 * given to ps_server_create. Any callback may be NULL. */
typedef struct ps_handler {
    /* A connection is being served: send a greeting, set state. */
    int (*on_open)(ps_conn *conn, void *ud);
    /* One complete line; line->data[len..len+eol_len) is its ending. */
    int (*on_line)(ps_conn *conn, const ps_line *line, void *ud);
    /* The connection is closing (for any reason); free its state. */
    void (*on_close)(ps_conn *conn, void *ud);
} ps_handler;

/* Queues bytes for the client (copied). Returns 0, -ENOMEM, or -ENOBUFS
 * when the copies queued for the client would pass limits.max_output:
 * then nothing more is written to it, not even what was queued before,
 * and the connection closes once the callback returns (counted in
 * output_overflows), so that the client never reads a reply cut short as
 * whole. A connection whose queued output (copies and references) passes
 * 256 KiB answers no more lines until its client reads. */
int ps_conn_send(ps_conn *conn, const void *data, size_t len);

/* Queues len bytes at data for the client without copying them (a cache's
 * values): data must stay valid and unchanged until release(arg) is
 * called, exactly once, by the thread that wrote them or let them go (the
 * connection closed), or before this returns when it fails. Referenced
 * bytes are not copies: they count toward the 256 KiB that pauses reading,
 * not toward limits.max_output. Behind a deferred reply not yet written
 * they are copied (as ps_conn_send). Returns 0, -ENOMEM or -ENOBUFS (as
 * ps_conn_send). */
int ps_conn_send_ref(ps_conn *conn, const void *data, size_t len, void (*release)(void *arg),
                     void *arg);

/* Takes back everything the running callback of conn has sent so far
 * (copies and references), so that a reply that fails halfway can be
 * replaced by an error: a client must never read a reply cut short.
 * Returns 0, or -EBUSY when the callback deferred a reply meanwhile
 * (nothing taken back: close the connection). */
int ps_conn_unsend(ps_conn *conn);

/* A number unique to the connection for the life of the server. */
uint64_t ps_conn_id(const ps_conn *conn);

/* "host:port" of the client. */
const char *ps_conn_peer(const ps_conn *conn);

/* What a TLS connection's handshake settled: strings owned by the
 * connection, valid until it closes. peer is the client's verified
 * identity (its certificate's subject CN, else its first DNS name), ""
 * when it showed none (tls.verify_client off or optional). */
typedef struct ps_conn_tls_info {
    const char *version; /* "TLSv1.3" */
    const char *cipher;  /* "TLS_AES_256_GCM_SHA384" */
    const char *peer;
} ps_conn_tls_info;

/* From a callback of conn: 0 with *info for a TLS connection, -ENOTSUP for
 * one that is not (plain TCP). */
int ps_conn_tls(const ps_conn *conn, ps_conn_tls_info *info);

/* Handler's per-connection pointer; NULL until set. */
void ps_conn_set_data(ps_conn *conn, void *data);
void *ps_conn_get_data(const ps_conn *conn);

/*
 * Length-delimited input (a memcached "set": a line, then a block of N
 * bytes): from a callback of conn (on_open, on_line, or a block's own fn),
 * ps_conn_read_bytes asks that the next n bytes the client sends be given
 * whole to fn (with the handler's ud), binary safe, instead of being framed
 * as lines; lines resume after them. fn == NULL discards the n bytes as
 * they arrive, without holding them (a block refused as too large).
 * Returns 0; -EMSGSIZE when n exceeds limits.max_block (nothing changes;
 * fn NULL has no bound); -EBUSY when a request is already pending; -EINVAL
 * for n == 0. fn's data is valid during the call only; fn returns
 * PS_CONTINUE or PS_CLOSE, as on_line does. A client that closes before
 * the block is whole never reaches fn.
 */
typedef int (*ps_bytes_fn)(ps_conn *conn, const void *data, size_t len, void *ud);
int ps_conn_read_bytes(ps_conn *conn, size_t n, ps_bytes_fn fn);

/*
 * Replies finished later, from any thread (.NET's EndInvoke, for a
 * connection): a callback that starts slow work (a future on the pool, a
 * request to another service) defers its reply, returns, and so frees its
 * worker; whoever completes the work sends the reply.
 *
 * ps_reply_defer reserves the reply's place in the connection's output:
 * whatever the connection sends after it (replies to later lines, other
 * deferred replies) goes out only after it is done, so replies keep the
 * order of the lines. Call it from a callback of conn, on its thread.
 * Returns NULL when out of memory. Every reply must be finished with
 * ps_reply_done, exactly once.
 *
 * ps_reply_send appends to the reply and ps_reply_done finishes it; both
 * may be called from any thread at any time: also after the connection
 * has closed, while the server stops and after it is destroyed (then they
 * return PS_ECLOSED and send nothing). ps_reply_send returns -ENOBUFS when
 * the bytes of the connection's deferred replies would pass
 * limits.max_output: the connection then closes when this reply's turn
 * comes, writing nothing of it (counted in output_overflows). ps_reply_done frees the reply: do
 * not use it after. With action PS_CLOSE the connection closes after the
 * reply. A connection that is closing (its client's stream ended, or a
 * callback returned PS_CLOSE) stays until its deferred replies are done and
 * written; ps_server_stop does not wait for them.
 */
typedef struct ps_reply ps_reply;
ps_reply *ps_reply_defer(ps_conn *conn);
int ps_reply_send(ps_reply *reply, const void *data, size_t len);
int ps_reply_done(ps_reply *reply, int action);

/*
 * Sending to a connection from elsewhere (another connection's callback, a
 * timer thread): what a chat's broadcast needs. ps_conn_ref_new, from a
 * callback of conn, returns a handle on it (NULL when out of memory);
 * ps_conn_ref_send queues bytes for the client from any thread and returns
 * 0, PS_ECLOSED once the connection has closed, or -ENOBUFS while 256 KiB
 * sent this way still wait for a client that does not read (the bytes are
 * refused, counted in sends_refused; the sender decides: drop, retry or
 * evict). They wait there while the client has 256 KiB of output unread
 * (in every dispatch mode), so memory stays bounded. They go out as soon as the connection's owner gets to them,
 * between its own replies, never inside one. ps_conn_ref_release, from any
 * thread, gives the handle back; every handle must be released once.
 */
typedef struct ps_conn_ref ps_conn_ref;
ps_conn_ref *ps_conn_ref_new(ps_conn *conn);
int ps_conn_ref_send(ps_conn_ref *ref, const void *data, size_t len);
void ps_conn_ref_release(ps_conn_ref *ref);

typedef struct ps_server_stats {
    uint64_t curr_connections;
    uint64_t total_connections;
    uint64_t rejected_connections; /* busy + too many + shutdown */
    uint64_t rejected_busy;        /* queue full */
    uint64_t rejected_max;         /* max_connections reached */
    uint64_t rejected_shutdown;    /* still queued when the server stopped */
    uint64_t slot_waits;           /* waited for a slot at max_connections */
    uint64_t replies_deferred;     /* ps_reply_defer calls */
    uint64_t reloads;              /* ps_server_reload that applied */
    uint64_t reload_errors;        /* ... that found the configuration broken */
    uint64_t proxy_errors;         /* PROXY header missing, malformed, late, cut or untrusted */
    uint64_t output_overflows;     /* closed: queued output passed limits.max_output */
    uint64_t sends_refused;        /* ps_conn_ref_send refused: 256 KiB already waiting */
    uint64_t lines;
    uint64_t blocks;               /* ps_conn_read_bytes blocks given whole */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t lines_too_long;
    uint64_t idle_timeouts;
    uint64_t send_timeouts;
    uint64_t accept_errors;
    uint64_t admin_commands;
    uint64_t admin_refused;        /* admin clients told the admin port was full */
    uint64_t slow_handlers;        /* handler calls longer than slow_handler_ms */
    uint64_t parked_connections;   /* event mode: waiting in epoll */
    uint64_t uptime_seconds;
    uint64_t proxy_pending;        /* connections waiting for their PROXY header now */
    uint64_t rejected_proxy_pending; /* closed still header-less at proxy_max_pending */
    uint64_t tls_handshakes;       /* TLS handshakes done */
    uint64_t tls_errors;           /* TLS handshakes failed: plaintext, bad hello, certificate */
    uint64_t tls_timeouts;         /* TLS handshakes not done within tls.handshake_timeout */
} ps_server_stats;

/*
 * Creates a server for cfg (copied) that calls `handler` with `ud`. Nothing
 * is bound yet. Returns 0; PS_ECONFIG with the reason in err (when err is
 * not NULL) for an invalid configuration, e.g. "pool.workers: expected an
 * integer from 1 to 4096, got \"0\""; -EINVAL for a NULL argument; -ENOMEM.
 *
 * Lifetimes and threads: `handler` and `ud` must stay valid until
 * ps_server_destroy returns. ps_server_start, _stop and _destroy are called
 * by the thread that owns the server, never from a handler callback (stop
 * waits for the workers that run them). ps_server_port, _admin_port,
 * _get_stats and _get_pool_stats may be called from any thread while the
 * server exists. The ps_conn_* functions belong to the callbacks of their
 * connection, on the thread running them.
 */
int ps_server_create(ps_server **out, const ps_config *cfg, const ps_handler *handler, void *ud,
                     char *err, size_t errlen);

/* Socket activation: ps_server_start takes these listening sockets (the
 * data one, and the admin one or -1) instead of binding; it checks that
 * each is a listening TCP socket over IPv4 or IPv6 and fails, saying so,
 * otherwise. With an admin fd the admin listener runs whatever
 * admin.enabled says. The server owns them from start on (it closes them
 * at stop, or when start fails). Call before ps_server_start: 0 or
 * -EINVAL. */
int ps_server_use_listeners(ps_server *srv, int data_fd, int admin_fd);

/* Binds the data and admin listeners and starts every thread. Returns 0,
 * or a negative errno with a message in err (e.g. "bind 127.0.0.1:9050:
 * Address in use"); on failure nothing stays bound or running. */
int ps_server_start(ps_server *srv, char *err, size_t errlen);

/* Applies a new configuration to a running server (SIGHUP): log.level and
 * the [limits] keys take effect at once (for the next line, connection or
 * wait), the handler's keys when its reload (ps_server_set_handler_reload)
 * takes them; every other changed key is logged as needing a restart and
 * keeps its running value. next == NULL means the new
 * configuration could not be read. An invalid one changes nothing.
 * Returns 0 (counted in reloads) or PS_ECONFIG with the reason in err
 * (counted in reload_errors). From the thread that owns the server. */
int ps_server_reload(ps_server *srv, const ps_config *next, char *err, size_t errlen);

/* What ps_server_reload asks when the handler's keys ([handler] keys other
 * than name and module, or server.greeting) changed and the handler is
 * the same: apply them and return 0; return 1 when they need a restart; or
 * return a negative code with the reason in err, which fails the reload
 * (nothing changes). Runs on the thread that calls ps_server_reload. */
typedef int (*ps_handler_reload_fn)(const ps_config *next, void *arg, char *err, size_t errlen);

/* Sets (fn NULL: clears) the handler's reload; before ps_server_start. */
void ps_server_set_handler_reload(ps_server *srv, ps_handler_reload_fn fn, void *arg);

/* True while the server is started, not stopping, and its acceptor runs
 * (a watchdog's question). Any thread. */
bool ps_server_healthy(const ps_server *srv);

/* The real bound ports (useful with port 0); 0 when not listening. */
uint16_t ps_server_port(const ps_server *srv);
uint16_t ps_server_admin_port(const ps_server *srv);

/* The listening sockets, data and admin (-1: none), still the server's: to
 * pass to a process that takes over (SIGUSR2 in poolsrv). From the thread
 * that owns the server. */
int ps_server_listen_fd(const ps_server *srv);
int ps_server_admin_listen_fd(const ps_server *srv);

/* From now on the admin port's `ready` answers NOT READY and `agent`
 * drain, while the server goes on accepting and serving: a load balancer
 * stops sending it new clients before it stops accepting (drain_delay).
 * Any thread; idempotent. */
void ps_server_announce_stop(ps_server *srv);

/* Says that another process now accepts on this server's listeners (they
 * were handed over, as poolsrv does on SIGUSR2): a drain then leaves new
 * admin clients to it, as it leaves new data clients. From the thread that
 * owns the server, before ps_server_drain. */
void ps_server_handed_over(ps_server *srv);

/* A graceful end, before ps_server_stop: takes no new data client (the
 * listening sockets stay open until stop, so a process that shares them
 * takes the connections waiting there), serves the connected clients
 * until they leave, for at most cfg.shutdown_timeout seconds, or until
 * ps_server_drain_cut. The admin port goes on answering new clients
 * (`ready`: NOT READY draining, `agent`: drain), unless
 * ps_server_handed_over said another process takes them. Returns how many
 * connections are still open (0: all left). From the thread that owns the
 * server; the server is still to be stopped. */
unsigned ps_server_drain(ps_server *srv);

/* Ends a drain now, the one under way or one still to come: ps_server_drain
 * returns within a few milliseconds (clients waiting for a slot at
 * max_connections are told the server is shutting down), and the
 * ps_server_stop that follows ends the connections within its own
 * shutdown_timeout. What an operator's second, harsher signal asks for
 * (SIGTERM after SIGQUIT). Any thread, also a signal handler. */
void ps_server_drain_cut(ps_server *srv);

/* Stops accepting, lets connections finish the lines they already read,
 * closes them, joins every thread. Waits at most cfg.shutdown_timeout
 * seconds for connections, then closes the rest. Idempotent. */
void ps_server_stop(ps_server *srv);

/* Stops (if needed) and frees. NULL is a no-op. */
void ps_server_destroy(ps_server *srv);

void ps_server_get_stats(const ps_server *srv, ps_server_stats *st);
void ps_server_get_pool_stats(const ps_server *srv, ps_pool_stats *st);

/* The echo handler: greeting, echo each line with its ending, close on an
 * empty line or "exit" (any case). `ud` is the greeting (const char *). */
extern const ps_handler ps_echo_handler;

/* The echo handler, except that a line "sleep N" (N = 0..60000) first
 * blocks the calling worker N ms, then is echoed: slow work for tests and
 * benchmarks. `ud` is the greeting, as for echo. */
extern const ps_handler ps_sleep_handler;

#ifdef __cplusplus
}
#endif

#endif
