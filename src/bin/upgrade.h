#ifndef POOLSRV_BIN_UPGRADE_H
#define POOLSRV_BIN_UPGRADE_H

/* A hand-over to a new poolsrv without closing the listeners (SIGUSR2, as
 * nginx's binary upgrade): the running process starts the program anew
 * with its listening sockets passed as a service manager passes them
 * (LISTEN_FDS), waits for the new process to say it is ready, and then
 * drains and exits; the new one serves from then on. */

#include <stddef.h>
#include <sys/types.h>

/* Remembers the program's path (/proc/self/exe, as a name: a binary
 * replaced on disk under that name is the one the hand-over starts) and its
 * arguments. Call first in main. */
void upgrade_init(char **argv);

/* Starts the new process with data_fd and admin_fd (-1: none) and waits up
 * to timeout_ms for it to be ready. Returns its pid; or -1 with the reason
 * in err, the new process (if it started) stopped and reaped, and nothing
 * of this one changed. */
pid_t upgrade_start(int data_fd, int admin_fd, int timeout_ms, char *err, size_t errlen);

/* In a process started by upgrade_start: tells the old one that this one
 * serves (once its listeners accept and its threads run). Otherwise does
 * nothing. */
void upgrade_ready(void);

#endif
