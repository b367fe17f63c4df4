/* The plain transport (transport.h): a stream socket read with recv and
 * written with sendmsg, never blocking, never raising SIGPIPE. */
#include <errno.h>
#include <sys/socket.h>

#include "conn.h"
#include "transport.h"

static ssize_t tcp_read(ps_conn *c, void *buf, size_t len, bool *more)
{
    for (;;) {
        ssize_t r = recv(c->fd, buf, len, 0);
        if (r >= 0) {
            /* A short read emptied the socket: the next bytes raise an
             * edge of their own. */
            *more = r > 0 && (size_t)r == len;
            return r;
        }
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

static ssize_t tcp_writev(ps_conn *c, const struct iovec *iov, int iovcnt)
{
    struct msghdr m = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)iovcnt};
    for (;;) {
        /* MSG_NOSIGNAL: a vanished client is an error code, never SIGPIPE.
         * One span (a reply with no reference in it, the usual case) goes
         * by send: sendmsg copies and checks the message header and its
         * vector first, a cost on every reply. */
        ssize_t w = iovcnt == 1
                        ? send(c->fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL | MSG_DONTWAIT)
                        : sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0)
            return w > 0 ? w : -EAGAIN;
        if (errno == EINTR)
            continue;
        return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }
}

const ps__transport ps__transport_tcp = {
    .name = "tcp",
    .read = tcp_read,
    .writev = tcp_writev,
};
