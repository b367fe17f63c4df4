#ifndef POOLSRV_BIN_SERVICE_H
#define POOLSRV_BIN_SERVICE_H

/* What poolsrv speaks to a service manager (systemd's protocols, without
 * libsystemd): readiness and status notifications, the watchdog, and
 * listening sockets passed at start (socket activation). */

#include <stddef.h>
#include <stdint.h>

/* Sends one notification ("READY=1", "STATUS=...", lines joined by '\n')
 * when NOTIFY_SOCKET is set; else does nothing. Returns 0, or -errno. */
int svc_notify(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The watchdog interval the manager asked for (WATCHDOG_USEC, for this
 * process per WATCHDOG_PID), in microseconds; 0 when none. */
uint64_t svc_watchdog_usec(void);

/* Sockets passed by the manager (LISTEN_PID, LISTEN_FDS from fd 3,
 * LISTEN_FDNAMES "data" and "admin"; without names the first is data, the
 * second admin). Returns 0 when none were passed, 1 with *data_fd and
 * *admin_fd (-1: none) set, or -1 with the reason in err. Unsets the
 * variables so that no child takes them for its own. */
int svc_listen_fds(int *data_fd, int *admin_fd, char *err, size_t errlen);

#endif
