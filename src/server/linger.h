#ifndef POOLSRV_SERVER_LINGER_H
#define POOLSRV_SERVER_LINGER_H

/* Closing sockets whose replies are still in flight, without making anyone
 * wait (linger.c). Private to the library. */

#include "poolsrv/server.h"

/* Starts the thread that finishes closing sockets (see linger.c). */
int ps__linger_start(ps_server *srv);
/* Sends FIN and closes fd once every reply is delivered (or the client is
 * gone, or send_timeout passes), without making the caller wait. Owns fd. */
void ps__linger_close(ps_server *srv, int fd);
/* Waits for lingering sockets up to the stop deadline, then ends the thread. */
void ps__linger_stop(ps_server *srv);

#endif
