/* The line framer: a pure function over a buffer that finds the next line
 * (LF or CRLF), says "need more", or refuses a line over the limit. */
#include <stdint.h>
#include <string.h>

#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"

ssize_t ps_lineframe_next(const char *buf, size_t len, size_t max_line, ps_line *line)
{
    /* A line of max_line bytes plus "\r\n" spans max_line + 2 bytes; no need
     * to look further for its '\n'. */
    if (max_line > SIZE_MAX - 2)
        max_line = SIZE_MAX - 2; /* keep max_line + 2 from wrapping */
    size_t scan = len < max_line + 2 ? len : max_line + 2;
    const char *nl = memchr(buf, '\n', scan);
    if (nl == NULL) {
        if (len >= max_line + 2)
            return PS_ELINELONG;
        /* max_line + 1 bytes without '\n' is already too long unless the
         * last one is the '\r' of a "\r\n" still on its way. */
        if (len == max_line + 1 && buf[max_line] != '\r')
            return PS_ELINELONG;
        return 0;
    }
    size_t end = (size_t)(nl - buf); /* index of '\n' */
    size_t content = end;
    size_t eol = 1;
    if (end > 0 && buf[end - 1] == '\r') {
        content--;
        eol = 2;
    }
    if (content > max_line)
        return PS_ELINELONG;
    line->data = buf;
    line->len = content;
    line->eol_len = eol;
    return (ssize_t)(end + 1);
}
