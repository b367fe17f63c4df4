/*
 * Lingering close. close() on a TCP socket that still has unread input makes
 * the kernel answer with RST and drop whatever is still in the send queue:
 * a client that sent more after `exit`, or was still sending at shutdown,
 * would lose replies to lines the server had already read. So a closing
 * connection first sends FIN (shutdown SHUT_WR), and when replies are still
 * in flight its socket is handed to this thread, which discards the input
 * that keeps arriving and closes the socket once the client has acknowledged
 * every reply (SIOCOUTQ is 0), has closed its side, or a deadline passes.
 * No worker waits for any of that.
 */
#include <errno.h>
#include <linux/sockios.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "linger.h"

/* Sockets lingering at once; past this a closing socket is closed at once
 * (its client may then see a reset): descriptors stay bounded. */
#define PS__LINGER_MAX 1024
/* How often the send queues are looked at. */
#define PS__LINGER_TICK_MS 50

typedef struct lingering_socket {
    int fd;
    int64_t deadline_ms;
} lingering_socket;

struct ps__linger {
    pthread_mutex_t lock;
    lingering_socket items[PS__LINGER_MAX]; /* guarded by lock */
    int count;
    bool stopping;
    int wake_fd;
    pthread_t thread;
};

/* True once the socket may be closed without losing anything we sent:
 * everything is acknowledged, or the client is gone. Discards input. */
static bool drained(int fd)
{
    char sink[16384];
    for (int i = 0; i < 64; i++) {
        ssize_t r = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (r == 0)
            return true; /* the client closed its side: it reads no more */
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return true; /* reset or error: nothing left to save */
            break;
        }
    }
    int outq = 0;
    return ioctl(fd, SIOCOUTQ, &outq) != 0 || outq == 0;
}

static void *linger_main(void *arg)
{
    ps_server *srv = arg;
    ps__linger *l = srv->linger;
    struct pollfd *p = calloc(PS__LINGER_MAX + 1, sizeof *p);
    if (p == NULL)
        abort(); /* a few KiB at start-up */

    for (;;) {
        ps__lock(&l->lock);
        int n = l->count;
        bool stopping = l->stopping;
        for (int i = 0; i < n; i++)
            p[i + 1] = (struct pollfd){.fd = l->items[i].fd, .events = POLLIN};
        ps__unlock(&l->lock);
        if (stopping && n == 0)
            break;

        p[0] = (struct pollfd){.fd = l->wake_fd, .events = POLLIN};
        if (poll(p, (nfds_t)n + 1, n > 0 ? PS__LINGER_TICK_MS : -1) < 0 && errno != EINTR) {
            ps_log_error("linger poll: %s", ps_strerror(-errno));
            break;
        }
        if (p[0].revents) {
            uint64_t v;
            (void)!read(l->wake_fd, &v, sizeof v);
        }

        /* Only this thread removes items, so the first n are still the
         * ones polled; new ones were appended after them. */
        int64_t now = ps__now_ms();
        int64_t stop_deadline = atomic_load(&srv->stop_deadline_ms);
        ps__lock(&l->lock);
        for (int i = n - 1; i >= 0; i--) {
            lingering_socket *it = &l->items[i];
            bool late = now >= it->deadline_ms || (l->stopping && now >= stop_deadline);
            if (late || drained(it->fd)) {
                close(it->fd);
                *it = l->items[--l->count];
            }
        }
        ps__unlock(&l->lock);
    }
    free(p);
    return NULL;
}

int ps__linger_start(ps_server *srv)
{
    ps__linger *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake_fd < 0 || pthread_mutex_init(&l->lock, NULL) != 0) {
        int e = l->wake_fd < 0 ? errno : ENOMEM;
        if (l->wake_fd >= 0)
            close(l->wake_fd);
        free(l);
        return -e;
    }
    srv->linger = l;
    int rc = pthread_create(&l->thread, NULL, linger_main, srv);
    if (rc != 0) {
        pthread_mutex_destroy(&l->lock);
        close(l->wake_fd);
        free(l);
        srv->linger = NULL;
        return -rc;
    }
    return 0;
}

void ps__linger_close(ps_server *srv, int fd)
{
    shutdown(fd, SHUT_WR);
    ps__linger *l = srv->linger;
    /* Input already here is discarded even without the thread: closing on
     * unread input would reset the connection. */
    if (drained(fd) || l == NULL) {
        close(fd);
        return;
    }
    ps__lock(&l->lock);
    if (l->count < PS__LINGER_MAX) {
        l->items[l->count++] = (lingering_socket){
            .fd = fd,
            .deadline_ms = ps__now_ms() + (int64_t)PS__LIMIT(srv, send_timeout) * 1000,
        };
        fd = -1;
    }
    ps__unlock(&l->lock);
    if (fd >= 0) {
        close(fd); /* too many lingering already */
        return;
    }
    uint64_t one = 1;
    (void)!write(l->wake_fd, &one, sizeof one);
}

void ps__linger_stop(ps_server *srv)
{
    ps__linger *l = srv->linger;
    if (l == NULL)
        return;
    ps__lock(&l->lock);
    l->stopping = true;
    ps__unlock(&l->lock);
    uint64_t one = 1;
    (void)!write(l->wake_fd, &one, sizeof one);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->lock);
    close(l->wake_fd);
    free(l);
    srv->linger = NULL;
}
