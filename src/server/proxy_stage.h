#ifndef POOLSRV_SERVER_PROXY_STAGE_H
#define POOLSRV_SERVER_PROXY_STAGE_H

/* The thread that reads PROXY protocol headers before a connection is
 * served (proxy_stage.c). Private to the library. */

#include <stdint.h>
#include <sys/socket.h>
#include "poolsrv/server.h"

/* What the stage hands a connection to once its header is read: the
 * server, which counts it in at max_connections (or refuses it), counts it
 * out of proxy_pending and dispatches it with the client's address from
 * the header. */
typedef void (*ps__serve_fn)(ps_server *srv, int fd, const struct sockaddr *peer);

/* Starts the thread that reads PROXY headers (cfg.proxy_protocol on). 0, or
 * a negative code with the reason in err. */
int ps__proxy_stage_start(ps_server *srv, ps__serve_fn serve, char *err, size_t errlen);
/* Takes an accepted connection from the acceptor, not yet counted in
 * curr_connections: counts it in proxy_pending and closes it at once when
 * its peer is not in proxy_trusted, else waits for its header; at
 * proxy_max_pending the oldest waiting one is closed to make room. Called
 * by the acceptor's thread only. */
void ps__proxy_stage_take(ps_server *srv, int fd, const struct sockaddr *peer);
/* Ends the thread; connections still waiting for a header are closed.
 * After the acceptor has stopped; no-op when never started. */
void ps__proxy_stage_stop(ps_server *srv);

#endif
