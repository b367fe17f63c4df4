#ifndef POOLSRV_SERVER_REPLY_H
#define POOLSRV_SERVER_REPLY_H

/* A connection's deferred replies, as the connection layer uses them
 * (reply.c). Private to the library. */

#include <stdbool.h>
#include <stddef.h>
#include "poolsrv/server.h"

typedef struct ps__replies ps__replies;
/* ps_conn_send while replies are pending: holds the bytes behind the last
 * one. Returns 0, -ENOMEM, -ENOBUFS (past limits.max_output: sets
 * conn->overflow), or 1 when nothing is pending (send them). */
int ps__conn_hold(ps_conn *conn, const void *data, size_t len);
/* The reply the connection's sends are held behind now (NULL: none), and
 * in *held how many bytes it holds after it: a mark for ps_conn_unsend. */
const void *ps__conn_hold_mark(ps_conn *conn, size_t *held);
/* Keeps only the first held bytes behind the last reply. 0. */
int ps__conn_hold_truncate(ps_conn *conn, size_t held);
/* The owner moves the finished replies at the head into the output (and
 * sets conn->closing for one finished with PS_CLOSE, conn->overflow for
 * one that passed max_output), and the bytes sent from other threads
 * while the output is under its high-water mark. Returns 1 when such
 * bytes wait for room, 0, or -ENOMEM. */
int ps__conn_promote(ps_conn *conn);
bool ps__conn_replies_pending(const ps_conn *conn);
/* Connection and thread modes: the eventfd a finished reply writes, or -1. */
int ps__conn_wake_fd(const ps_conn *conn);
/* At close: replies not done yet will find the connection gone. */
void ps__conn_replies_close(ps_conn *conn);

#endif
