#ifndef POOLSRV_SERVER_CONN_H
#define POOLSRV_SERVER_CONN_H

/* One client connection: its buffers, framing of lines and blocks, handler
 * calls, flushing, the registry of live connections (conn.c). Private to
 * the library. */

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include "poolsrv/server.h"
#include "buf.h"
#include "net.h"
#include "outref.h"
#include "transport.h"

#define PS__OUT_MIN 4096 /* the least a connection's output buffer grows to */
/* Output waiting (copies and references) past which a connection answers
 * no more lines, and takes no bytes sent from other threads, until its
 * client reads: the client is paced, not buffered for. */
#define PS__OUT_HIGH_WATER (256 * 1024)

/* One client connection. Fields are owned by the thread serving it. */
struct ps_conn {
    ps_server *srv;
    int fd;                   /* readiness only: bytes move through tp */
    const ps__transport *tp;  /* set before it is served, never changed */
    void *tp_state;           /* the transport's own (TLS: its session) */
    short tp_want;            /* POLLIN or POLLOUT: what tp waits for */
    /* Its handshake is done: set with release once what it settled is
     * written (ps__conn_tls_info); read by the event sweep (relaxed, for
     * the deadline) and the admin thread without owning the connection. */
    atomic_bool tp_ready;
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
    ps__outrefs refs; /* ... and spans of the handler's memory among it */
    /* Its queued output would have passed limits.max_output: nothing more
     * is written, the connection closes (told: logged and counted once). */
    bool overflow, overflow_told;
    /* Where the current handler call's output began (ps_conn_unsend). */
    struct {
        size_t out, refs, held;
        const void *tail;
    } mark;

    /* Deferred replies (reply.c); NULL until the first ps_reply_defer. */
    struct ps__replies *replies;

    /* The dispatch mode's own: ps__dispatch.conn_size bytes. */
    _Alignas(max_align_t) unsigned char mode[];
};


/* Creates the connection object for an accepted socket, which owns fd from
 * then on. Returns NULL on ENOMEM: fd is still the caller's to close (one
 * close only: a second could hit a descriptor another thread just got). */
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

/* The transport's handshake, a step without blocking: 0 once done (at
 * once for plain TCP), -EAGAIN while it waits for the socket (tp_want),
 * or a negative errno (counted in tls_errors, logged at debug): close.
 * Its CPU counts as handler time for the watch. */
int ps__conn_handshake(ps_conn *conn);

/* Whether the connection's handshake is still to finish by its deadline
 * (created_ms + tls.handshake_timeout) rather than the idle one; any
 * thread. */
static inline bool ps__conn_handshaking(const ps_conn *c)
{
    return !atomic_load_explicit(&c->tp_ready, memory_order_relaxed);
}

/* A TLS connection's settled handshake, from any thread that keeps the
 * connection alive (its owner; the admin thread under its registry
 * stripe's lock): true with *info once the handshake is done. The acquire
 * pairs with the release that marks it done. */
static inline bool ps__conn_tls_info(const ps_conn *c, ps_conn_tls_info *info)
{
    /* Ready first: the transport itself is set (TLS attached) before the
     * connection is served, which the admin thread may not see yet. */
    if (!atomic_load_explicit(&c->tp_ready, memory_order_acquire) || c->tp->describe == NULL)
        return false;
    c->tp->describe(c, info);
    return true;
}

/* Monotonic ms by which the handshake must be done. */
int64_t ps__conn_handshake_deadline(const ps_conn *conn);

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

/* True when the transport holds input no readiness event will announce
 * (a blocking loop reads instead of waiting in poll). */
bool ps__conn_input_pending(const ps_conn *conn);

/* Writes msg to a connection the server cannot serve (server busy,
 * shutting down), once and without waiting; through the transport, so a
 * transport that cannot say it yet says nothing. */
void ps__conn_refuse(ps_conn *conn, const char *msg);

/* Writes queued output without blocking. Returns 0 when all is written,
 * -EAGAIN when some remains, or -errno when the socket failed. */
int ps__conn_flush(ps_conn *conn);

/* Writes all queued output, waiting in poll() while the client reads:
 * until send_timeout passes with no byte taken (counted and logged as a
 * send timeout), or the stop deadline once the server stops. 0, or a
 * negative errno (-ETIMEDOUT) when not all of it went. */
int ps__conn_flush_all(ps_conn *conn);

/* Bytes queued for the client and not yet written, copied or referenced
 * (not those held behind deferred replies). */
static inline size_t ps__conn_pending_output(const ps_conn *c)
{
    return ps__buf_size(&c->out) + c->refs.bytes;
}


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

#endif
