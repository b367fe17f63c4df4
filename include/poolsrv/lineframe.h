#ifndef POOLSRV_LINEFRAME_H
#define POOLSRV_LINEFRAME_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The line framer: a pure function over a buffer, no I/O. A line ends at
 * '\n'; a '\r' just before it belongs to the line ending. NUL bytes are data.
 */

typedef struct ps_line {
    const char *data;  /* first byte of the line, inside the caller's buffer */
    size_t len;        /* bytes of content, line ending excluded */
    size_t eol_len;    /* 1 for "\n", 2 for "\r\n"; data[len..len+eol_len) */
} ps_line;

/* Looks for one complete line at the start of buf[0..len).
 * Returns the bytes it takes (len + eol_len of *line, > 0) and fills *line;
 * 0 when more input is needed; PS_ELINELONG when the content is already
 * longer than max_line (a line of exactly max_line bytes is accepted). */
ssize_t ps_lineframe_next(const char *buf, size_t len, size_t max_line, ps_line *line);

#ifdef __cplusplus
}
#endif

#endif
