/* Sockets: binding and listening, adopting inherited listeners, accepting,
 * address text, writes that never block. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "net.h"

int ps__somaxconn(void)
{
    int v = 0;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "re");
    if (f != NULL) {
        if (fscanf(f, "%d", &v) != 1)
            v = 0;
        fclose(f);
    }
    return v > 0 ? (v > 65535 ? 65535 : v) : 4096;
}

/* True when the socket is bound to a loopback address (127.0.0.0/8, ::1,
 * or ::ffff:127.0.0.0/104). */
bool ps__is_loopback(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return false;
    if (ss.ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)&ss;
        return (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    }
    if (ss.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
        return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
    }
    return false;
}

void ps__format_addr(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port = ntohs(in->sin_port);
        snprintf(buf, len, "%s:%u", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port = ntohs(in6->sin6_port);
        snprintf(buf, len, "[%s]:%u", host, port);
    } else {
        snprintf(buf, len, "unknown");
    }
}

/* A listener's address as text, and its port. */
static void describe_bound(const struct sockaddr_storage *ss, char *addr, size_t addrlen,
                           uint16_t *port)
{
    ps__format_addr((const struct sockaddr *)ss, addr, addrlen);
    *port = ntohs(ss->ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)ss)->sin6_port
                                            : ((const struct sockaddr_in *)ss)->sin_port);
}

int ps__listen(const char *host, uint16_t port, int backlog, bool reuseport, int *fd_out,
               uint16_t *bound_port, char *addr, size_t addrlen,
               char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    int gai = getaddrinfo(host, portstr, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "resolve %s: %s", host, gai_strerror(gai));
        return -EINVAL;
    }

    int rc = -EADDRNOTAVAIL;
    snprintf(err, errlen, "bind %s:%u: no usable address", host, (unsigned)port);
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                        ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            snprintf(err, errlen, "socket for %s: %s", host, ps_strerror(-errno));
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
            (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) ||
            (ai->ai_family == AF_INET6 &&
             setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)) {
            rc = -errno;
            snprintf(err, errlen, "setsockopt on %s: %s", host, ps_strerror(-errno));
            close(fd);
            continue;
        }
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, backlog) < 0) {
            rc = -errno;
            char a[PS__ADDR_MAX];
            ps__format_addr(ai->ai_addr, a, sizeof a);
            snprintf(err, errlen, "bind %s: %s", a, ps_strerror(-errno));
            close(fd);
            continue;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
            rc = -errno;
            snprintf(err, errlen, "getsockname: %s", ps_strerror(-errno));
            close(fd);
            continue;
        }
        describe_bound(&ss, addr, addrlen, bound_port);
        *fd_out = fd;
        rc = 0;
        break;
    }
    freeaddrinfo(res);
    return rc;
}

int ps__adopt_listener(int fd, const char *what, uint16_t *bound_port, char *addr,
                       size_t addrlen, char *err, size_t errlen)
{
    int type = 0, accepting = 0, domain = 0, proto = 0;
    socklen_t l1 = sizeof type, l2 = sizeof accepting, l3 = sizeof domain, l4 = sizeof proto;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &l1) < 0) {
        int e = errno;
        snprintf(err, errlen, "inherited %s listener (fd %d): not a socket: %s", what, fd,
                 ps_strerror(-e));
        return -e;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &l3) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &l4) < 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &l2) < 0) {
        int e = errno;
        snprintf(err, errlen, "inherited %s listener (fd %d): %s", what, fd, ps_strerror(-e));
        return -e;
    }
    if (type != SOCK_STREAM || proto != IPPROTO_TCP ||
        (domain != AF_INET && domain != AF_INET6)) {
        snprintf(err, errlen, "inherited %s listener (fd %d): not a TCP socket over IPv4 or IPv6",
                 what, fd);
        return -EINVAL;
    }
    if (!accepting) {
        snprintf(err, errlen, "inherited %s listener (fd %d): not listening", what, fd);
        return -EINVAL;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) {
        int e = errno;
        snprintf(err, errlen, "inherited %s listener (fd %d): getsockname: %s", what, fd,
                 ps_strerror(-e));
        return -e;
    }
    /* Ours from now on: non-blocking, not leaked into programs we run. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ||
        fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
        int e = errno;
        snprintf(err, errlen, "inherited %s listener (fd %d): fcntl: %s", what, fd, ps_strerror(-e));
        return -e;
    }
    describe_bound(&ss, addr, addrlen, bound_port);
    return 0;
}

ssize_t ps__write_some(int fd, const void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        /* MSG_NOSIGNAL: a vanished client is an error code, never SIGPIPE. */
        ssize_t w = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -errno;
        }
        done += (size_t)w;
    }
    return (ssize_t)done;
}

void ps__write_best_effort(int fd, const char *msg)
{
    (void)ps__write_some(fd, msg, strlen(msg));
}

int ps__accept(int listen_fd, struct sockaddr_storage *peer)
{
    for (;;) {
        socklen_t sl = sizeof *peer;
        int fd = accept4(listen_fd, (struct sockaddr *)peer, peer != NULL ? &sl : NULL,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            return fd;
        int e = errno;
        if (e == EINTR || e == ECONNABORTED || e == EPROTO)
            continue;
        return e == EWOULDBLOCK ? -EAGAIN : -e;
    }
}
