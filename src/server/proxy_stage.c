/*
 * The PROXY protocol stage, between accept and dispatch (proxy_protocol on).
 *
 * Behind a load balancer every connection comes from the balancer; the
 * client's own address arrives first, in a PROXY header. Reading it must
 * block neither the acceptor nor a worker (a balancer may be slow, or
 * something else may connect and send nothing), so a thread of its own
 * waits for the headers: the acceptor hands it each connection from a
 * trusted peer (an untrusted one is closed at once), it peeks at the bytes
 * as they come (edge-triggered epoll: each arrival is one wake-up), and once
 * a whole valid header is there it consumes exactly the header and passes
 * the connection on with the address the header carries; the bytes after
 * the header stay in the socket for the dispatch. A header that is
 * malformed, missing after proxy_timeout seconds, or cut by a close ends
 * the connection at once, counted in proxy_errors.
 *
 * A connection waiting here is not yet a client: it counts in proxy_pending,
 * not in curr_connections, so header-less connections never take the slots
 * of max_connections (the server passes it on only if one is free once its
 * header is read). proxy_pending has its own bound, proxy_max_pending: a
 * new connection at the bound evicts the oldest waiting one (closed, counted
 * in rejected_proxy_pending). A balancer's header arrives in its first
 * packet, so the oldest is the likeliest to be one that never sends; a
 * flood of header-less connections then only churns among itself, where
 * refusing the new one would lock every real client out until the flood's
 * proxy_timeout.
 *
 * The lock guards the list of waiting connections (oldest at the tail),
 * which the acceptor adds to and this thread takes from, and the list of
 * evicted ones. Each entry is freed by this thread alone: the acceptor only
 * moves an entry from one list to the other (under the lock), and this
 * thread, before it serves or fails an entry, checks under the lock that it
 * was not evicted meanwhile.
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
    bool evicted; /* moved to the evicted list by the acceptor; under lock */
    int64_t deadline_ms;
    struct sockaddr_storage peer;
} waiting;

struct ps__proxy_stage {
    ps_server *srv;
    ps__serve_fn serve;
    ps__cidr_list trusted;
    unsigned versions; /* PS__PROXY_V1 | PS__PROXY_V2 */
    unsigned timeout_s;
    unsigned max_pending;
    int epfd;
    /* Written at stop (never read then: every later wait wakes at once)
     * and by the acceptor after an eviction (read back by this thread). */
    int wake_fd;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    pthread_mutex_t lock;
    waiting *head, *tail; /* guarded by lock: newest at head, oldest at tail */
    waiting *evicted;     /* guarded by lock: singly linked through next */
};

/* Closes a connection that leaves the stage unserved and counts it out of
 * proxy_pending (pairs with the acceptor's add in ps__proxy_stage_take). */
static void drop(ps_server *srv, int fd)
{
    close(fd);
    atomic_fetch_sub_explicit(&srv->c.proxy_pending, 1, memory_order_relaxed);
}

/* Counted in proxy_errors, logged, closed, counted out. */
static void fail(ps__proxy_stage *st, int fd, const struct sockaddr_storage *peer, const char *why)
{
    ps_server *srv = st->srv;
    atomic_fetch_add_explicit(&srv->c.proxy_errors, 1, memory_order_relaxed);
    char addr[PS__ADDR_MAX];
    ps__format_addr((const struct sockaddr *)peer, addr, sizeof addr);
    ps_log_info("connection from %s: %s; closing", addr, why);
    drop(srv, fd);
}

static void unlink_waiting(ps__proxy_stage *st, waiting *w)
{
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        st->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        st->tail = w->prev;
    w->prev = w->next = NULL;
}

/* Leaves the stage: out of epoll and the list. False when the acceptor has
 * evicted it meanwhile: then the eviction sweep closes and frees it. */
static bool take_out(ps__proxy_stage *st, waiting *w)
{
    ps__lock(&st->lock);
    bool mine = !w->evicted;
    if (mine)
        unlink_waiting(st, w);
    ps__unlock(&st->lock);
    if (mine)
        epoll_ctl(st->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    return mine;
}

/* What the bytes peeked so far (n, or -errno) and the events say: NULL
 * and the header's length in *len once a whole header is there; "" when
 * more must come; else why the connection ends. A peer that has shut down
 * its side (EPOLLRDHUP) sends nothing more: a header still incomplete then
 * is cut, and waiting for proxy_timeout would only hold its slot. */
static const char *judge(ps__proxy_stage *st, const char *buf, ssize_t n, uint32_t events,
                         ps__proxy_info *info, ssize_t *len)
{
    if (n < 0)
        return ps_strerror((int)n);
    if (n == 0)
        return "closed before sending a PROXY header";
    *len = ps__proxy_parse(buf, (size_t)n, st->versions, info);
    if (*len < 0)
        return "not a valid PROXY header";
    if (*len > 0)
        return NULL;
    if ((size_t)n == PS__PROXY_MAX)
        return "PROXY header too long";
    if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        return "PROXY header cut by the peer's close";
    return ""; /* more to come: the next arrival wakes this again */
}

/* New bytes (or an end) on a waiting connection. */
static void on_input(ps__proxy_stage *st, waiting *w, uint32_t events)
{
    char buf[PS__PROXY_MAX];
    ssize_t n;
    do
        n = recv(w->fd, buf, sizeof buf, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n < 0)
        n = -errno;
    ps__proxy_info info;
    ssize_t len = 0;
    const char *why = judge(st, buf, n, events, &info, &len);
    if ((why != NULL && why[0] == '\0') || !take_out(st, w))
        return;
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
        st->serve(st->srv, w->fd, client); /* counts it out of proxy_pending */
    }
    free(w);
}

/* Ends the connections whose header is overdue. */
static void expire(ps__proxy_stage *st, int64_t now)
{
    waiting *late = NULL;
    ps__lock(&st->lock);
    /* From the oldest: the deadlines rise toward the head. */
    while (st->tail != NULL && st->tail->deadline_ms <= now) {
        waiting *w = st->tail;
        unlink_waiting(st, w);
        w->next = late;
        late = w;
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

/* Closes the connections the acceptor evicted (already counted). */
static void sweep_evicted(ps__proxy_stage *st)
{
    ps__lock(&st->lock);
    waiting *list = st->evicted;
    st->evicted = NULL;
    ps__unlock(&st->lock);
    while (list != NULL) {
        waiting *w = list;
        list = w->next;
        epoll_ctl(st->epfd, EPOLL_CTL_DEL, w->fd, NULL);
        close(w->fd);
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
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr != NULL) {
                on_input(st, evs[i].data.ptr, evs[i].events);
            } else if (!atomic_load_explicit(&st->stop, memory_order_acquire)) {
                uint64_t v;
                (void)!read(st->wake_fd, &v, sizeof v); /* an eviction */
            }
        }
        /* After the events: an entry freed here is in no later batch. */
        sweep_evicted(st);
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
    st->max_pending = srv->cfg.proxy_max_pending;
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

/* Makes room at proxy_max_pending: moves the oldest waiting connection to
 * the evicted list (the stage's thread closes it) and counts it. The
 * acceptor's thread, under the lock; false when there is none to evict. */
static bool evict_oldest(ps__proxy_stage *st)
{
    waiting *old = st->tail;
    if (old == NULL)
        return false;
    unlink_waiting(st, old);
    old->evicted = true;
    old->next = st->evicted;
    st->evicted = old;
    ps_server *srv = st->srv;
    atomic_fetch_add_explicit(&srv->c.rejected_proxy_pending, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&srv->c.proxy_pending, 1, memory_order_relaxed);
    char addr[PS__ADDR_MAX];
    ps__format_addr((const struct sockaddr *)&old->peer, addr, sizeof addr);
    ps_log_info("connection from %s: still no PROXY header and proxy_max_pending (%u) "
                "reached; closing it for a newer one", addr, st->max_pending);
    return true;
}

void ps__proxy_stage_take(ps_server *srv, int fd, const struct sockaddr *peer)
{
    ps__proxy_stage *st = srv->proxy;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, peer,
           peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    /* Counted first, so every path out (fail, drop) counts it out. */
    atomic_fetch_add_explicit(&srv->c.proxy_pending, 1, memory_order_relaxed);
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
    w->deadline_ms = ps__now_ms() + (int64_t)st->timeout_s * 1000;
    bool evicted = false;
    ps__lock(&st->lock);
    /* Only this thread adds, so the count read here can only have fallen. */
    if (atomic_load_explicit(&srv->c.proxy_pending, memory_order_relaxed) > st->max_pending)
        evicted = evict_oldest(st);
    w->next = st->head;
    if (st->head != NULL)
        st->head->prev = w;
    else
        st->tail = w;
    st->head = w;
    /* Added to epoll under the lock: once it is in, the stage's thread may
     * take it; if the add fails, nothing but this thread has seen it. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.ptr = w};
    int e = epoll_ctl(st->epfd, EPOLL_CTL_ADD, fd, &ev) == 0 ? 0 : errno;
    if (e != 0)
        unlink_waiting(st, w);
    ps__unlock(&st->lock);
    if (evicted) {
        uint64_t one = 1;
        (void)!write(st->wake_fd, &one, sizeof one);
    }
    if (e != 0) {
        fail(st, fd, &ss, ps_strerror(-e));
        free(w);
    }
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
    sweep_evicted(st);
    /* Still waiting for a header: never served, so owed nothing. */
    for (waiting *w = st->head, *next; w != NULL; w = next) {
        next = w->next;
        drop(srv, w->fd);
        free(w);
    }
    pthread_mutex_destroy(&st->lock);
    close(st->epfd);
    close(st->wake_fd);
    free(st);
    srv->proxy = NULL;
}
