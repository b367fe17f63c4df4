#ifndef POOLSRV_SERVER_OUTREF_H
#define POOLSRV_SERVER_OUTREF_H

/* A connection's output as it goes out: its bytes, and the bytes it sends
 * by reference (ps_conn_send_ref), a queue of spans of the handler's memory,
 * each standing at a place in the stream of the output bytes, written with
 * them by one gathered write and given back (its release) once written or
 * dropped. A reply of large values then costs the server the spans, not
 * copies of the values. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "buf.h"

typedef struct ps__outref {
    uint64_t at;           /* the output byte it follows (see out_done) */
    const char *data;
    size_t len, off;       /* off: bytes of it already written */
    void (*release)(void *arg);
    void *arg;
} ps__outref;

typedef struct ps__outrefs {
    ps__outref *q;         /* a ring of cap spans, n of them from head */
    size_t head, n, cap;
    size_t bytes;          /* not yet written, of all the spans */
    uint64_t out_done;     /* output bytes written so far: a span's `at`
                              counts from the first */
} ps__outrefs;

/* Queues a span after the output bytes held in out now. 0, or -ENOMEM
 * (nothing queued; release is the caller's). */
int ps__outrefs_add(ps__outrefs *r, const ps__buf *out, const void *data, size_t len,
                    void (*release)(void *arg), void *arg);

/* A gathered write without blocking: the bytes taken (> 0), -EAGAIN when
 * none could be, or -errno (a connection's transport). */
typedef ssize_t ps__writev_fn(void *ctx, const struct iovec *iov, int iovcnt);

/* Writes out's bytes and the spans in stream order through wv, consuming
 * what went and releasing the spans written. Returns the bytes written
 * (maybe 0), or a negative errno other than EAGAIN. */
ssize_t ps__outrefs_write(ps__outrefs *r, ps__buf *out, ps__writev_fn *wv, void *ctx);

/* Drops (releases) the spans queued after the first `keep`. */
void ps__outrefs_truncate(ps__outrefs *r, size_t keep);

/* Releases every span and frees the queue. */
void ps__outrefs_free(ps__outrefs *r);

#endif
