/* The byte buffer of buf.h: compaction, growth (out of lent memory into
 * memory of its own), writes to a socket, and letting go of lent memory. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "net.h"

void ps__buf_lend(ps__buf *b, char *mem, size_t cap)
{
    if (b->data != NULL)
        return;
    b->data = mem;
    b->cap = cap;
    b->off = b->len = 0;
    b->lent = true;
}

void ps__buf_compact(ps__buf *b)
{
    if (b->off == 0)
        return;
    memmove(b->data, b->data + b->off, b->len - b->off);
    b->len -= b->off;
    b->off = 0;
}

int ps__buf_resize(ps__buf *b, size_t cap)
{
    size_t held = ps__buf_size(b);
    if (cap < held)
        cap = held;
    char *p;
    if (b->lent) {
        p = malloc(cap);
        if (p == NULL)
            return -ENOMEM;
        memcpy(p, ps__buf_head(b), held);
    } else {
        ps__buf_compact(b);
        p = realloc(b->data, cap);
        if (p == NULL && cap > 0)
            return -ENOMEM;
    }
    b->data = p;
    b->off = 0;
    b->len = held;
    b->cap = cap;
    b->lent = false;
    return 0;
}

int ps__buf_append(ps__buf *b, const void *p, size_t n, size_t min_cap)
{
    if (n == 0)
        return 0;
    if (n > ps__buf_room(b)) {
        /* The space in front of the bytes held first. */
        ps__buf_compact(b);
        if (n > ps__buf_room(b)) {
            size_t cap = b->cap > min_cap ? b->cap : min_cap;
            while (cap < b->len + n)
                cap *= 2;
            if (ps__buf_resize(b, cap) < 0)
                return -ENOMEM;
        }
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void ps__buf_consume(ps__buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

ssize_t ps__buf_write(ps__buf *b, int fd)
{
    size_t held = ps__buf_size(b);
    if (held == 0)
        return 0;
    ssize_t w = ps__write_some(fd, ps__buf_head(b), held);
    if (w > 0)
        ps__buf_consume(b, (size_t)w);
    return w;
}

int ps__buf_keep(ps__buf *b)
{
    if (ps__buf_size(b) == 0) {
        ps__buf_free(b);
        return 0;
    }
    return b->lent ? ps__buf_resize(b, ps__buf_size(b)) : 0;
}

void ps__buf_shed(ps__buf *b, size_t most)
{
    if (ps__buf_size(b) == 0 && !b->lent && b->cap > most)
        ps__buf_free(b);
}

void ps__buf_free(ps__buf *b)
{
    if (!b->lent)
        free(b->data);
    *b = (ps__buf){0};
}
