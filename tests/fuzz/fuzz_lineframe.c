/*
 * fuzz_lineframe - libFuzzer target for ps_lineframe_next.
 *
 * Input: a 4-byte header, then the byte stream to frame.
 *   byte 0 (and 1): max_line. Below 0x80: 16 + byte 0 (16..143), so short
 *     inputs reach the limit; otherwise 16 + (15-bit value % 4081) (16..4096).
 *   bytes 2..3: where the stream is cut in two for the chunked run.
 *
 * The stream is framed the way conn.c does it (line after line until "need
 * more" or "too long"), checking every result against the header's contract
 * and an obviously-correct reference. Then it is framed again as a server
 * with a growing buffer sees it: first only the bytes before the cut, then
 * the unconsumed tail plus the rest; both runs must give the same lines and
 * end the same way. Each buffer handed to the framer is its own allocation of
 * exactly its length, so ASan catches a read past the end.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"

#include "fuzz_target.h"

#define HEADER 4

typedef struct frame_line {
    size_t off;     /* of the line's first byte in the whole stream */
    size_t len;
    size_t eol_len;
} frame_line;

typedef struct frame_run {
    frame_line *lines; /* room for one line per byte */
    size_t count;
    size_t pos;        /* stream bytes consumed */
    ssize_t last;      /* the result that stopped it: 0 or PS_ELINELONG */
} frame_run;

/* What ps_lineframe_next must return, written the obvious way: the first
 * '\n' anywhere decides; without one, "too long" as soon as max_line bytes
 * of content plus a byte that cannot be the '\r' of "\r\n" are in. */
static ssize_t reference_next(const char *b, size_t len, size_t max_line, size_t *content,
                              size_t *eol)
{
    const char *nl = memchr(b, '\n', len);
    if (nl) {
        size_t end = (size_t)(nl - b);
        *eol = end > 0 && b[end - 1] == '\r' ? 2 : 1;
        *content = end + 1 - *eol;
        return *content > max_line ? PS_ELINELONG : (ssize_t)(end + 1);
    }
    if (len > max_line + 1 || (len == max_line + 1 && b[max_line] != '\r'))
        return PS_ELINELONG;
    return 0;
}

/* Frames buf[0..len) (stream bytes from `base` on) until it needs more input
 * or meets a line that is too long, appending lines to run. */
static void frame_buffer(const char *buf, size_t len, size_t base, size_t max_line,
                         frame_run *run)
{
    size_t pos = 0;
    for (;;) {
        const char *b = buf + pos;
        size_t rem = len - pos;
        ps_line line;
        memset(&line, 0xA5, sizeof(line));
        const ps_line untouched = line;
        ssize_t n = ps_lineframe_next(b, rem, max_line, &line);

        size_t ref_content = 0, ref_eol = 0;
        ssize_t ref = reference_next(b, rem, max_line, &ref_content, &ref_eol);
        FUZZ_CHECK(n == ref);

        if (n > 0) {
            FUZZ_CHECK((size_t)n <= rem);
            FUZZ_CHECK(line.data == b);
            FUZZ_CHECK(line.len <= max_line);
            FUZZ_CHECK(line.eol_len == 1 || line.eol_len == 2);
            FUZZ_CHECK((size_t)n == line.len + line.eol_len);
            if (line.eol_len == 1)
                FUZZ_CHECK(b[line.len] == '\n');
            else
                FUZZ_CHECK(b[line.len] == '\r' && b[line.len + 1] == '\n');
            FUZZ_CHECK(memchr(b, '\n', line.len) == NULL);
            /* A '\r' just before the '\n' belongs to the line ending. */
            if (line.eol_len == 1)
                FUZZ_CHECK(line.len == 0 || b[line.len - 1] != '\r');
            FUZZ_CHECK(line.len == ref_content && line.eol_len == ref_eol);

            run->lines[run->count++] = (frame_line){base + pos, line.len, line.eol_len};
            pos += (size_t)n;
            continue;
        }

        /* Nothing complete: *line is left alone. */
        FUZZ_CHECK(memcmp(&line, &untouched, sizeof(line)) == 0);
        if (n == 0) {
            size_t scan = rem < max_line + 2 ? rem : max_line + 2;
            FUZZ_CHECK(memchr(b, '\n', scan) == NULL);
            FUZZ_CHECK(rem < max_line + 2);
        } else {
            FUZZ_CHECK(n == PS_ELINELONG);
            /* Really longer than max_line: the content up to the first '\n',
             * or, without one, all of it but a possible final '\r'. */
            const char *nl = memchr(b, '\n', rem);
            size_t content;
            if (nl) {
                content = (size_t)(nl - b);
                if (content > 0 && b[content - 1] == '\r')
                    content--;
            } else {
                content = rem;
                if (content > 0 && b[content - 1] == '\r')
                    content--;
            }
            FUZZ_CHECK(content > max_line);
        }
        run->pos = base + pos;
        run->last = n;
        return;
    }
}

/* Copies src[0..len) into a buffer of exactly len bytes. */
static char *dup_exact(const uint8_t *src, size_t len)
{
    char *p = malloc(len ? len : 1);
    if (!p)
        abort();
    if (len)
        memcpy(p, src, len);
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER)
        return 0;
    size_t max_line;
    if (data[0] < 0x80)
        max_line = 16 + (size_t)data[0];
    else
        max_line = 16 + ((((size_t)data[0] & 0x7f) << 8) | data[1]) % 4081;
    const uint8_t *stream = data + HEADER;
    size_t n = size - HEADER;
    size_t cut = ((size_t)data[2] | (size_t)data[3] << 8) % (n + 1);

    frame_run whole = {calloc(n + 1, sizeof(frame_line)), 0, 0, 0};
    frame_run chunked = {calloc(n + 1, sizeof(frame_line)), 0, 0, 0};
    if (!whole.lines || !chunked.lines)
        abort();

    char *buf = dup_exact(stream, n);
    frame_buffer(buf, n, 0, max_line, &whole);
    free(buf);

    /* The first read brings the bytes before the cut; the server keeps what
     * it did not consume and appends the next read to it. */
    buf = dup_exact(stream, cut);
    frame_buffer(buf, cut, 0, max_line, &chunked);
    free(buf);
    if (chunked.last == 0) {
        size_t tail = chunked.pos;
        buf = dup_exact(stream + tail, n - tail);
        frame_buffer(buf, n - tail, tail, max_line, &chunked);
        free(buf);
    }

    FUZZ_CHECK(whole.count == chunked.count);
    FUZZ_CHECK(whole.count == 0 ||
               memcmp(whole.lines, chunked.lines, whole.count * sizeof(frame_line)) == 0);
    FUZZ_CHECK(whole.last == chunked.last);
    FUZZ_CHECK(whole.pos == chunked.pos);

    free(whole.lines);
    free(chunked.lines);
    return 0;
}
