#ifndef POOLSRV_SERVER_NET_H
#define POOLSRV_SERVER_NET_H

/* Addresses and sockets: binding and adopting listeners, accepting, non-
 * blocking writes (net.c). Private to the library. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define PS__ADDR_MAX 64 /* "[v6 address]:port" */

/* Binds and listens on host:port (non-blocking, close-on-exec, SO_REUSEADDR;
 * SO_REUSEPORT too with reuseport).
 * Returns 0 with *fd and the bound address text, or a negative errno with a
 * message in err. */
int ps__listen(const char *host, uint16_t port, int backlog, bool reuseport, int *fd,
               uint16_t *bound_port, char *addr, size_t addrlen,
               char *err, size_t errlen);

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

#endif
