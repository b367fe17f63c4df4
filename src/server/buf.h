#ifndef POOLSRV_SERVER_BUF_H
#define POOLSRV_SERVER_BUF_H

/* One byte buffer, for a connection's input and output and the admin
 * port's: bytes [off, len) of data are held, cap bytes in all. Its memory
 * is its own (malloc) or lent (a worker's scratch buffer, an admin
 * client's fixed array), which it never frees and copies out of before it
 * grows. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct ps__buf {
    char *data;
    size_t off, len, cap;
    bool lent;
} ps__buf;

/* Bytes held. */
static inline size_t ps__buf_size(const ps__buf *b) { return b->len - b->off; }
/* The first byte held. */
static inline char *ps__buf_head(const ps__buf *b) { return b->data + b->off; }
/* Room after the bytes held (ps__buf_compact first for all of it). */
static inline size_t ps__buf_room(const ps__buf *b) { return b->cap - b->len; }

/* Gives an empty buffer that holds no memory cap bytes of mem to use (not
 * its own: never freed). No-op when it already has memory. */
void ps__buf_lend(ps__buf *b, char *mem, size_t cap);

/* Moves the bytes held to the start of the memory. */
void ps__buf_compact(ps__buf *b);

/* Makes the memory cap bytes (at least the bytes held), compacted; lent
 * memory is left for memory of its own. 0 or -ENOMEM (unchanged). */
int ps__buf_resize(ps__buf *b, size_t cap);

/* Appends n bytes, compacting first, then doubling the memory from
 * at least min_cap bytes. 0 or -ENOMEM (unchanged). */
int ps__buf_append(ps__buf *b, const void *p, size_t n, size_t min_cap);

/* n bytes at the head are used up; an emptied buffer starts over at 0. */
void ps__buf_consume(ps__buf *b, size_t n);

/* Writes the bytes held to fd without blocking and consumes what went.
 * Returns the bytes written (maybe 0), or a negative errno other than
 * EAGAIN. */
ssize_t ps__buf_write(ps__buf *b, int fd);

/* Lets go of lent memory and of empty memory: an empty buffer is freed; a
 * lent one's bytes move into memory of its own, just their size. 0 or
 * -ENOMEM (the buffer still uses the lent memory). */
int ps__buf_keep(ps__buf *b);

/* An empty buffer whose own memory is over most bytes frees it, so that
 * one large block or reply does not keep its memory for the rest of a
 * session. */
void ps__buf_shed(ps__buf *b, size_t most);

/* Keeps only the first size bytes held (a reply taken back). */
static inline void ps__buf_truncate(ps__buf *b, size_t size)
{
    if (size < ps__buf_size(b))
        b->len = b->off + size;
}

/* Frees the buffer's own memory and empties it. */
void ps__buf_free(ps__buf *b);

#endif
