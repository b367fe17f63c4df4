/*
 * The PROXY protocol stage, between accept and dispatch (proxy_protocol on).
 *
 * Behind a load balancer every connection comes from the balancer; the
 * client's own address arrives first, in a PROXY header. Reading it must
 * block neither the acceptor nor a worker (a balancer may be slow, or
 * something else may connect and send nothing), so a thread of its own
 * waits for the headers: the acceptor hands it each counted-in connection
 * from a trusted peer (an untrusted one is closed at once), it peeks at the
 * bytes as they come (edge-triggered epoll: each arrival is one wake-up),
 * and once a whole valid header is there it consumes exactly the header and
 * passes the connection on with the address the header carries; the bytes
 * after the header stay in the socket for the dispatch. A header that is
 * malformed, missing after proxy_timeout seconds, or cut by a close ends
 * the connection, counted in proxy_errors.
 *
 * The lock guards the list of waiting connections, which the acceptor adds
 * to and this thread takes from; each entry is touched by one thread at a
 * time: the acceptor until it is in epoll, this thread afterwards.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/log.h"
#include "proxy.h"
#include "conn.h"
#include "net.h"
#include "proxy_stage.h"

typedef struct waiting {
    struct waiting *prev, *next;
    int fd;
    int64_t deadline_ms;
    uint64_t active; /* connections counted when it was accepted */
    struct sockaddr_storage peer;
} waiting;

struct ps__proxy_stage {
    ps_server *srv;
    ps__serve_fn serve;
    ps__cidr_list trusted;
    unsigned versions; /* PS__PROXY_V1 | PS__PROXY_V2 */
    unsigned timeout_s;
    int epfd;
    int wake_fd; /* written once at stop; never read */
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t lock;
    waiting *head;
};

/* Counted in proxy_errors, logged, closed, counted out. */
static void fail(ps__proxy_stage *st, int fd, const struct sockaddr_storage *peer, const char *why)
{
    ps_server *srv = st->srv;
    atomic_fetch_add_explicit(&srv->c.proxy_errors, 1, memory_order_relaxed);
    char addr[PS__ADDR_MAX];
    ps__format_addr((const struct sockaddr *)peer, addr, sizeof addr);
    ps_log_info("connection from %s: %s; closing", addr, why);
    close(fd);
    atomic_fetch_sub_explicit(&srv->c.curr_connections, 1, memory_order_relaxed);
}

static void unlink_waiting(ps__proxy_stage *st, waiting *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        st->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
}

/* Leaves the stage: out of epoll and the list. */
static void take_out(ps__proxy_stage *st, waiting *w)
{
    epoll_ctl(st->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    ps__lock(&st->lock);
    unlink_waiting(st, w);
    ps__unlock(&st->lock);
}

/* New bytes (or an end) on a waiting connection. */
static void on_input(ps__proxy_stage *st, waiting *w)
{
    char buf[PS__PROXY_MAX];
    ssize_t n;
    do
        n = recv(w->fd, buf, sizeof buf, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    const char *why = NULL;
    ps__proxy_info info;
    ssize_t len = 0;
    if (n < 0) {
        why = ps_strerror(-errno);
    } else if (n == 0) {
        why = "closed before its PROXY header was complete";
    } else {
        len = ps__proxy_parse(buf, (size_t)n, st->versions, &info);
        if (len < 0)
            why = "not a valid PROXY header";
        else if (len == 0 && (size_t)n == sizeof buf)
            why = "PROXY header too long";
        else if (len == 0)
            return; /* more to come: the next arrival wakes this again */
    }
    take_out(st, w);
    if (why == NULL) {
        /* Consume the header alone; what follows is the client's. */
        ssize_t r;
        do
            r = recv(w->fd, buf, (size_t)len, 0);
        while (r < 0 && errno == EINTR);
        if (r != len)
            why = "PROXY header could not be read again";
    }
    if (why != NULL) {
        fail(st, w->fd, &w->peer, why);
    } else {
        const struct sockaddr *client =
            info.local ? (const struct sockaddr *)&w->peer : (const struct sockaddr *)&info.src;
        st->serve(st->srv, w->fd, client, w->active);
    }
    free(w);
}

/* Ends the connections whose header is overdue. */
static void expire(ps__proxy_stage *st, int64_t now)
{
    waiting *late = NULL;
    ps__lock(&st->lock);
    for (waiting *w = st->head, *next; w != NULL; w = next) {
        next = w->next;
        if (w->deadline_ms <= now) {
            unlink_waiting(st, w);
            w->next = late;
            late = w;
        }
    }
    ps__unlock(&st->lock);
    while (late != NULL) {
        waiting *w = late;
        late = w->next;
        epoll_ctl(st->epfd, EPOLL_CTL_DEL, w->fd, NULL);
        fail(st, w->fd, &w->peer, "no PROXY header in time (proxy_timeout)");
        free(w);
    }
}

static void *stage_main(void *arg)
{
    ps__proxy_stage *st = arg;
    struct epoll_event evs[64];
    while (!atomic_load_explicit(&st->stop, memory_order_acquire)) {
        /* A tenth of a second: the timeouts are whole seconds. */
        int n = epoll_wait(st->epfd, evs, 64, 100);
        if (n < 0 && errno != EINTR) {
            ps_log_error("proxy stage: epoll_wait: %s", ps_strerror(-errno));
            break;
        }
        for (int i = 0; i < n; i++)
            if (evs[i].data.ptr != NULL)
                on_input(st, evs[i].data.ptr);
        expire(st, ps__now_ms());
    }
    return NULL;
}

int ps__proxy_stage_start(ps_server *srv, ps__serve_fn serve, char *err, size_t errlen)
{
    ps__proxy_stage *st = calloc(1, sizeof *st);
    if (st == NULL) {
        snprintf(err, errlen, "proxy stage: out of memory");
        return -ENOMEM;
    }
    st->srv = srv;
    st->serve = serve;
    st->versions = (unsigned)srv->cfg.proxy_protocol;
    st->timeout_s = srv->cfg.proxy_timeout;
    st->epfd = epoll_create1(EPOLL_CLOEXEC);
    st->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    atomic_init(&st->stop, false);
    int rc = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ps__cidr_parse(srv->cfg.proxy_trusted, &st->trusted, err, errlen) != 0)
        rc = PS_ECONFIG; /* validated already; kept for a caller that did not */
    else if (st->epfd < 0 || st->wake_fd < 0 ||
             epoll_ctl(st->epfd, EPOLL_CTL_ADD, st->wake_fd, &ev) < 0) {
        rc = -errno;
        snprintf(err, errlen, "proxy stage: %s", ps_strerror(rc));
    } else if (pthread_mutex_init(&st->lock, NULL) != 0) {
        rc = -ENOMEM;
        snprintf(err, errlen, "proxy stage: out of memory");
    } else if ((rc = -pthread_create(&st->thread, NULL, stage_main, st)) != 0) {
        pthread_mutex_destroy(&st->lock);
        snprintf(err, errlen, "proxy stage thread: %s", ps_strerror(rc));
    }
    if (rc != 0) {
        if (st->epfd >= 0)
            close(st->epfd);
        if (st->wake_fd >= 0)
            close(st->wake_fd);
        free(st);
        return rc;
    }
    st->started = true;
    srv->proxy = st;
    return 0;
}

void ps__proxy_stage_take(ps_server *srv, int fd, const struct sockaddr *peer, uint64_t active)
{
    ps__proxy_stage *st = srv->proxy;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, peer,
           peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    if (!ps__cidr_match(&st->trusted, peer)) {
        fail(st, fd, &ss, "not in proxy_trusted, and PROXY headers are required");
        return;
    }
    waiting *w = calloc(1, sizeof *w);
    if (w == NULL) {
        fail(st, fd, &ss, "out of memory");
        return;
    }
    w->fd = fd;
    w->peer = ss;
    w->active = active;
    w->deadline_ms = ps__now_ms() + (int64_t)st->timeout_s * 1000;
    ps__lock(&st->lock);
    w->next = st->head;
    if (st->head != NULL)
        st->head->prev = w;
    st->head = w;
    ps__unlock(&st->lock);
    /* From here on the stage's thread may take it. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = w};
    if (epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
        return;
    int e = errno;
    ps__lock(&st->lock);
    unlink_waiting(st, w);
    ps__unlock(&st->lock);
    fail(st, fd, &ss, ps_strerror(-e));
    free(w);
}

void ps__proxy_stage_stop(ps_server *srv)
{
    ps__proxy_stage *st = srv->proxy;
    if (st == NULL)
        return;
    atomic_store_explicit(&st->stop, true, memory_order_release);
    uint64_t one = 1;
    (void)!write(st->wake_fd, &one, sizeof one);
    pthread_join(st->thread, NULL);
    /* Still waiting for a header: never served, so owed nothing. */
    for (waiting *w = st->head, *next; w != NULL; w = next) {
        next = w->next;
        close(w->fd);
        atomic_fetch_sub_explicit(&srv->c.curr_connections, 1, memory_order_relaxed);
        free(w);
    }
    pthread_mutex_destroy(&st->lock);
    close(st->epfd);
    close(st->wake_fd);
    free(st);
    srv->proxy = NULL;
}
