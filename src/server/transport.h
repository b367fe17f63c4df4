#ifndef POOLSRV_SERVER_TRANSPORT_H
#define POOLSRV_SERVER_TRANSPORT_H

/* How a connection's bytes move (transport.c): the connection layer reads,
 * writes and shuts a connection down through its transport only, so that
 * TLS or another transport is one table beneath conn.c, never a branch in
 * the dispatch modes or the handlers. The dispatch modes use the socket
 * for readiness alone, and ask the connection whether its transport holds
 * bytes already (ps__conn_input_pending). Private to the library. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "poolsrv/server.h"

typedef struct ps__transport {
    const char *name; /* "tcp", "tls" */
    /* Before anything is read or written: 0 once done (NULL: nothing to
     * do), -EAGAIN while it waits for the socket (conn->tp_want says which
     * way), or another negative errno: the client is refused. */
    int (*handshake)(ps_conn *conn);
    /* Reads up to len bytes: > 0, 0 at the end of the stream, -EAGAIN, or
     * -errno. *more: bytes may be there at once that no readiness event
     * will announce (the read filled buf, or the transport holds some). */
    ssize_t (*read)(ps_conn *conn, void *buf, size_t len, bool *more);
    /* Writes from iov without blocking: the bytes taken (> 0), -EAGAIN
     * when none could be, or -errno. */
    ssize_t (*writev)(ps_conn *conn, const struct iovec *iov, int iovcnt);
    /* Bytes read from the socket and held inside the transport, not yet
     * given by read (NULL: never any). */
    bool (*pending)(const ps_conn *conn);
    /* Before the socket's lingering close: the transport's own goodbye
     * (NULL: none). Never blocks. */
    void (*shutdown)(ps_conn *conn);
    /* Frees the transport's state (NULL: none). */
    void (*free)(ps_conn *conn);
    /* What the handshake settled (NULL: a transport without one); called
     * only once it is done, and then from any thread: what it reads was
     * written before the handshake was marked done. */
    void (*describe)(const ps_conn *conn, ps_conn_tls_info *info);
} ps__transport;

/* Plain TCP (and any stream socket): recv and sendmsg. */
extern const ps__transport ps__transport_tcp;

#endif
