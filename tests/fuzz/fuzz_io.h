#ifndef POOLSRV_FUZZ_IO_H
#define POOLSRV_FUZZ_IO_H

/* What the socket-driving fuzz targets (fuzz_conn, fuzz_admin) share: a
 * growing byte sink, the chunk format of their input, and the client's
 * non-blocking read. */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "fuzz_target.h"

typedef struct sink {
    char *buf;
    size_t len, cap;
} sink;

static inline void sink_add(sink *s, const void *p, size_t n)
{
    if (s->len + n > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n)
            cap *= 2;
        s->buf = realloc(s->buf, cap);
        if (s->buf == NULL)
            abort();
        s->cap = cap;
    }
    if (n > 0)
        memcpy(s->buf + s->len, p, n);
    s->len += n;
}

/* The next chunk of data[*pos..size): a length byte L, then L bytes when
 * L < 0xf0, otherwise (L - 0xef) * 4096 bytes; cut short by the input's
 * end. Returns its length and sets *chunk; advances *pos past it. */
static inline size_t next_chunk(const uint8_t *data, size_t size, size_t *pos,
                                const uint8_t **chunk)
{
    size_t len = data[*pos] < 0xf0 ? data[*pos] : ((size_t)data[*pos] - 0xef) * 4096;
    (*pos)++;
    if (len > size - *pos)
        len = size - *pos;
    *chunk = data + *pos;
    *pos += len;
    return len;
}

/* Sends what the socket takes of *chunk (advancing it). Returns false when
 * it took nothing: the socket is full. */
static inline bool client_send(int fd, const uint8_t **chunk, size_t *len)
{
    ssize_t w = send(fd, *chunk, *len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w > 0) {
        *chunk += w;
        *len -= (size_t)w;
        return true;
    }
    FUZZ_CHECK(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    return false;
}

/* Reads whatever the server has sent so far. Returns false once the
 * server has closed its side. */
static inline bool client_read(int fd, sink *got)
{
    char buf[65536];
    for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (r > 0) {
            sink_add(got, buf, (size_t)r);
            continue;
        }
        if (r == 0)
            return false;
        FUZZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        return true;
    }
}

#endif
