#ifndef POOLSRV_SERVER_BLOCKING_H
#define POOLSRV_SERVER_BLOCKING_H

/* Serving one connection on the calling thread (blocking.c). Private to the
 * library. */

#include "poolsrv/server.h"

/* Serves one connection on the calling thread until it closes, then closes
 * it (dispatch = connection on a worker, dispatch = thread on its own). */
void ps__serve_blocking(ps_conn *conn);

#endif
