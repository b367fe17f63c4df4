/*
 * Deferred replies (ps_reply_defer, include/poolsrv/server.h).
 *
 * A connection that defers a reply gets a ps__replies, shared with its
 * replies and freed by the last of them: the connection may close before
 * a reply is done, and a reply may be done after its server is gone. Under
 * its lock: the replies not yet written, in the order they were deferred,
 * each with its bytes (appended by whoever completes it, from any thread)
 * and the bytes the connection sent after it (appended by the connection's
 * owner). Only the owner moves finished replies into the connection's
 * output (ps__conn_promote), the head first, so the output keeps the order
 * of the lines. Finishing the head wakes the owner: event mode hands the
 * connection to a worker (the dispatch's wake); the blocking loop of connection
 * and thread modes polls an eventfd.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"
#include "conn.h"
#include "reply.h"

struct ps__replies {
    pthread_mutex_t lock;
    unsigned refs;       /* the connection's, one per reply not freed, one
                            per ps_conn_ref */
    ps_conn *conn;       /* NULL once the connection has closed */
    ps_reply *head, *tail;
    int wake_fd;         /* connection and thread modes; -1 in event mode */
    char *other;         /* ps_conn_ref_send's bytes, not yet in the output */
    size_t other_len, other_cap;
    size_t held;         /* bytes of every reply's buf and after */
};

/* What ps_conn_ref_send may leave waiting for a connection that does not
 * read (the output's own high-water mark). */
#define PS__OTHER_MAX (256 * 1024)

struct ps_reply {
    ps__replies *rs;
    ps_reply *next;
    bool done, close_after;
    bool overflow;       /* a send passed limits.max_output: the connection
                            closes when this reply's turn comes */
    char *buf;           /* the reply */
    size_t len, cap;
    char *after;         /* what the connection sent after it was deferred */
    size_t after_len, after_cap;
};

static int append(char **buf, size_t *len, size_t *cap, const void *data, size_t n)
{
    if (*len + n > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n)
            c *= 2;
        char *p = realloc(*buf, c);
        if (p == NULL)
            return -ENOMEM;
        *buf = p;
        *cap = c;
    }
    if (n > 0)
        memcpy(*buf + *len, data, n);
    *len += n;
    return 0;
}

static void reply_free(ps_reply *r)
{
    r->rs->held -= r->len + r->after_len;
    free(r->buf);
    free(r->after);
    free(r);
}

/* Drops one reference; the caller holds rs->lock, which this releases. */
static void replies_unref_unlock(ps__replies *rs)
{
    bool last = --rs->refs == 0;
    ps__unlock(&rs->lock);
    if (last) {
        if (rs->wake_fd >= 0)
            close(rs->wake_fd);
        pthread_mutex_destroy(&rs->lock);
        free(rs);
    }
}

/* The connection's replies object, made on first use (by its owner). */
static ps__replies *replies_of(ps_conn *c)
{
    if (c->replies == NULL) {
        ps__replies *rs = calloc(1, sizeof *rs);
        if (rs == NULL)
            return NULL;
        rs->wake_fd = -1;
        if (c->srv->dispatch->wake == NULL) { /* its owner blocks: wake it by fd */
            rs->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            if (rs->wake_fd < 0) {
                free(rs);
                return NULL;
            }
        }
        if (pthread_mutex_init(&rs->lock, NULL) != 0) {
            if (rs->wake_fd >= 0)
                close(rs->wake_fd);
            free(rs);
            return NULL;
        }
        rs->refs = 1;
        rs->conn = c;
        c->replies = rs;
    }
    return c->replies;
}

/* Wakes the connection's owner to write what is ready. Under rs->lock,
 * with rs->conn set. */
static void wake(ps__replies *rs)
{
    if (rs->wake_fd >= 0) {
        uint64_t one = 1;
        (void)!write(rs->wake_fd, &one, sizeof one);
    } else {
        rs->conn->srv->dispatch->wake(rs->conn->srv, rs->conn);
    }
}

ps_reply *ps_reply_defer(ps_conn *c)
{
    ps__replies *rs = replies_of(c);
    if (rs == NULL)
        return NULL;
    ps_reply *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->rs = rs;
    ps__lock(&rs->lock);
    rs->refs++;
    if (rs->tail != NULL)
        rs->tail->next = r;
    else
        rs->head = r;
    rs->tail = r;
    ps__unlock(&rs->lock);
    atomic_fetch_add_explicit(&c->srv->c.replies_deferred, 1, memory_order_relaxed);
    return r;
}

/* Appends n bytes to one of the held buffers (a reply's, or what is sent
 * behind one), within limits.max_output for all of them: 0, -ENOMEM, or
 * -ENOBUFS past the bound (nothing appended). Under rs->lock, with
 * rs->conn set. */
static int hold(ps__replies *rs, char **buf, size_t *len, size_t *cap, const void *data,
                size_t n)
{
    if (rs->held + n > PS__LIMIT(rs->conn->srv, max_output))
        return -ENOBUFS;
    int rc = append(buf, len, cap, data, n);
    if (rc == 0)
        rs->held += n;
    return rc;
}

int ps_reply_send(ps_reply *r, const void *data, size_t len)
{
    ps__replies *rs = r->rs;
    ps__lock(&rs->lock);
    int rc;
    if (rs->conn == NULL) {
        rc = PS_ECLOSED;
    } else {
        rc = r->overflow ? -ENOBUFS : hold(rs, &r->buf, &r->len, &r->cap, data, len);
        if (rc == -ENOBUFS)
            r->overflow = true;
    }
    ps__unlock(&rs->lock);
    return rc;
}

int ps_reply_done(ps_reply *r, int action)
{
    ps__replies *rs = r->rs;
    ps__lock(&rs->lock);
    ps_conn *c = rs->conn;
    if (c == NULL) {
        /* The connection is gone: nobody will write this one. */
        ps_reply **p = &rs->head;
        ps_reply *prev = NULL;
        while (*p != NULL && *p != r) {
            prev = *p;
            p = &(*p)->next;
        }
        if (*p == r) {
            *p = r->next;
            if (rs->tail == r)
                rs->tail = prev;
        }
        reply_free(r);
        replies_unref_unlock(rs);
        return PS_ECLOSED;
    }
    r->done = true;
    r->close_after = action == PS_CLOSE;
    if (rs->head == r)
        wake(rs); /* under the lock: the connection cannot close meanwhile */
    ps__unlock(&rs->lock);
    return 0;
}

ps_conn_ref *ps_conn_ref_new(ps_conn *c)
{
    ps__replies *rs = replies_of(c);
    if (rs == NULL)
        return NULL;
    ps__lock(&rs->lock);
    rs->refs++;
    ps__unlock(&rs->lock);
    return (ps_conn_ref *)rs;
}

int ps_conn_ref_send(ps_conn_ref *ref, const void *data, size_t len)
{
    ps__replies *rs = (ps__replies *)ref;
    ps__lock(&rs->lock);
    int rc;
    if (rs->conn == NULL)
        rc = PS_ECLOSED;
    else if (rs->other_len + len > PS__OTHER_MAX) {
        rc = -ENOBUFS; /* the client is not reading: refuse, do not grow */
        atomic_fetch_add_explicit(&rs->conn->srv->c.sends_refused, 1, memory_order_relaxed);
    } else
        rc = append(&rs->other, &rs->other_len, &rs->other_cap, data, len);
    if (rc == 0 && rs->other_len == len)
        wake(rs); /* the first bytes waiting: the owner comes for them */
    ps__unlock(&rs->lock);
    return rc;
}

void ps_conn_ref_release(ps_conn_ref *ref)
{
    if (ref == NULL)
        return;
    ps__replies *rs = (ps__replies *)ref;
    ps__lock(&rs->lock);
    replies_unref_unlock(rs);
}

int ps__conn_hold(ps_conn *c, const void *data, size_t len)
{
    ps__replies *rs = c->replies;
    ps__lock(&rs->lock);
    int rc = 1;
    if (rs->tail != NULL) { /* behind a reply not written yet */
        ps_reply *t = rs->tail;
        rc = hold(rs, &t->after, &t->after_len, &t->after_cap, data, len);
        if (rc == -ENOBUFS)
            c->overflow = true;
    }
    ps__unlock(&rs->lock);
    return rc;
}

const void *ps__conn_hold_mark(ps_conn *c, size_t *held)
{
    ps__replies *rs = c->replies;
    ps__lock(&rs->lock);
    const ps_reply *tail = rs->tail;
    *held = tail != NULL ? tail->after_len : 0;
    ps__unlock(&rs->lock);
    return tail;
}

int ps__conn_hold_truncate(ps_conn *c, size_t held)
{
    ps__replies *rs = c->replies;
    ps__lock(&rs->lock);
    ps_reply *tail = rs->tail;
    if (tail != NULL && held < tail->after_len) {
        rs->held -= tail->after_len - held;
        tail->after_len = held;
    }
    ps__unlock(&rs->lock);
    return 0;
}

int ps__conn_promote(ps_conn *c)
{
    ps__replies *rs = c->replies;
    if (rs == NULL)
        return 0;
    if (rs->wake_fd >= 0) {
        uint64_t v;
        (void)!read(rs->wake_fd, &v, sizeof v);
    }
    int rc = 0;
    ps__lock(&rs->lock);
    /* Bytes sent from other threads go out as soon as they can: they answer
     * none of this client's lines. Not past the high-water mark: a client
     * that does not read keeps them waiting where ps_conn_ref_send bounds
     * them, instead of the output growing at each wake. */
    if (rs->other_len > 0 && ps__conn_pending_output(c) >= PS__OUT_HIGH_WATER) {
        rc = 1;
    } else if (rs->other_len > 0) {
        if (ps__buf_append(&c->out, rs->other, rs->other_len, PS__OUT_MIN) < 0)
            rc = -ENOMEM;
        rs->other_len = 0;
        if (rs->other_cap > PS__OUT_MIN * 4) { /* one burst keeps no memory */
            free(rs->other);
            rs->other = NULL;
            rs->other_cap = 0;
        }
    }
    while (rs->head != NULL && rs->head->done) {
        ps_reply *r = rs->head;
        if (r->overflow) {
            c->overflow = true; /* nothing of it, nor after it, is written */
            break;
        }
        /* Straight into the output: nothing is held behind it any more. */
        if (ps__buf_append(&c->out, r->buf, r->len, PS__OUT_MIN) < 0 ||
            ps__buf_append(&c->out, r->after, r->after_len, PS__OUT_MIN) < 0)
            rc = -ENOMEM;
        if (r->close_after)
            c->closing = true;
        rs->head = r->next;
        if (rs->tail == r)
            rs->tail = NULL;
        reply_free(r);
        rs->refs--; /* never the last: the connection holds one */
    }
    ps__unlock(&rs->lock);
    return rc;
}

bool ps__conn_replies_pending(const ps_conn *c)
{
    ps__replies *rs = c->replies;
    if (rs == NULL)
        return false;
    ps__lock(&rs->lock);
    bool pending = rs->head != NULL;
    ps__unlock(&rs->lock);
    return pending;
}

int ps__conn_wake_fd(const ps_conn *c)
{
    return c->replies != NULL ? c->replies->wake_fd : -1;
}

void ps__conn_replies_close(ps_conn *c)
{
    ps__replies *rs = c->replies;
    if (rs == NULL)
        return;
    c->replies = NULL;
    ps__lock(&rs->lock);
    rs->conn = NULL;
    free(rs->other);
    rs->other = NULL;
    rs->other_len = rs->other_cap = 0;
    /* What the connection sent behind the pending replies goes nowhere. */
    for (ps_reply *r = rs->head; r != NULL; r = r->next) {
        rs->held -= r->after_len;
        free(r->after);
        r->after = NULL;
        r->after_len = r->after_cap = 0;
    }
    /* Finished replies nobody will write: free them now. */
    ps_reply **p = &rs->head;
    ps_reply *prev = NULL;
    while (*p != NULL) {
        ps_reply *r = *p;
        if (r->done) {
            *p = r->next;
            reply_free(r);
            rs->refs--;
        } else {
            prev = r;
            p = &r->next;
        }
    }
    rs->tail = prev;
    replies_unref_unlock(rs);
}
