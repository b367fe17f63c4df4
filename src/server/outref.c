/* A connection's output as it goes out (outref.h): its bytes and the spans
 * of a handler's memory it sends by reference, written in stream order by
 * gathered writes, the spans released once written or dropped. */
#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

#include "outref.h"

#define PS__OUTREF_IOV 64 /* spans and byte runs written by one sendmsg */

static ps__outref *nth(ps__outrefs *r, size_t i) { return &r->q[(r->head + i) % r->cap]; }

static int grow(ps__outrefs *r)
{
    size_t cap = r->cap ? r->cap * 2 : 8;
    ps__outref *q = malloc(cap * sizeof *q);
    if (q == NULL)
        return -ENOMEM;
    for (size_t i = 0; i < r->n; i++)
        q[i] = *nth(r, i);
    free(r->q);
    r->q = q;
    r->cap = cap;
    r->head = 0;
    return 0;
}

int ps__outrefs_add(ps__outrefs *r, const ps__buf *out, const void *data, size_t len,
                    void (*release)(void *arg), void *arg)
{
    if (r->n == r->cap && grow(r) < 0)
        return -ENOMEM;
    *nth(r, r->n) = (ps__outref){
        .at = r->out_done + ps__buf_size(out),
        .data = data,
        .len = len,
        .release = release,
        .arg = arg,
    };
    r->n++;
    r->bytes += len;
    return 0;
}

static void release_head(ps__outrefs *r)
{
    ps__outref *s = nth(r, 0);
    r->bytes -= s->len - s->off;
    r->head = (r->head + 1) % r->cap;
    r->n--;
    if (s->release != NULL)
        s->release(s->arg);
}

/* The stream from the first byte not written: out's bytes up to each
 * span's place, the span, and so on. Returns the iovecs filled. */
static int gather(ps__outrefs *r, const ps__buf *out, struct iovec *iov)
{
    int k = 0;
    uint64_t pos = r->out_done;
    const char *bytes = ps__buf_head(out);
    size_t left = ps__buf_size(out), i;
    for (i = 0; i < r->n && k + 2 <= PS__OUTREF_IOV; i++) {
        const ps__outref *s = nth(r, i);
        size_t run = (size_t)(s->at - pos);
        if (run > 0) {
            iov[k++] = (struct iovec){.iov_base = (void *)bytes, .iov_len = run};
            bytes += run;
            left -= run;
            pos += run;
        }
        iov[k++] = (struct iovec){.iov_base = (void *)(s->data + s->off),
                                  .iov_len = s->len - s->off};
    }
    if (i == r->n && left > 0)
        iov[k++] = (struct iovec){.iov_base = (void *)bytes, .iov_len = left};
    return k;
}

/* Consumes w bytes written, in the order gather laid them out. */
static void consume(ps__outrefs *r, ps__buf *out, size_t w)
{
    while (w > 0) {
        if (r->n > 0 && nth(r, 0)->at == r->out_done) {
            ps__outref *s = nth(r, 0);
            size_t take = s->len - s->off < w ? s->len - s->off : w;
            s->off += take;
            r->bytes -= take;
            w -= take;
            if (s->off == s->len)
                release_head(r);
            continue;
        }
        size_t run = r->n > 0 ? (size_t)(nth(r, 0)->at - r->out_done) : ps__buf_size(out);
        size_t take = run < w ? run : w;
        ps__buf_consume(out, take);
        r->out_done += take;
        w -= take;
    }
}

ssize_t ps__outrefs_write(ps__outrefs *r, ps__buf *out, ps__writev_fn *wv, void *ctx)
{
    size_t done = 0;
    for (;;) {
        struct iovec iov[PS__OUTREF_IOV];
        int k = gather(r, out, iov);
        if (k == 0)
            return (ssize_t)done;
        ssize_t w = wv(ctx, iov, k);
        if (w == -EAGAIN)
            return (ssize_t)done;
        if (w < 0)
            return w;
        consume(r, out, (size_t)w);
        done += (size_t)w;
    }
}

void ps__outrefs_truncate(ps__outrefs *r, size_t keep)
{
    while (r->n > keep) {
        ps__outref *s = nth(r, r->n - 1);
        r->bytes -= s->len - s->off;
        r->n--;
        if (s->release != NULL)
            s->release(s->arg);
    }
}

void ps__outrefs_free(ps__outrefs *r)
{
    while (r->n > 0)
        release_head(r);
    free(r->q);
    *r = (ps__outrefs){0};
}
