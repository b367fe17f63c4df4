/*
 * fuzz_conn - libFuzzer target for the connection layer's input and output
 * buffering (src/server/conn.c): ps__conn_read, ps__conn_process,
 * ps__conn_flush and ps__conn_shrink over a real socket pair, the way the
 * dispatch modes drive them.
 *
 * Input: a 2-byte header, then chunks.
 *   byte 0: max_line. Below 0x80: 16 + byte 0 (16..143); otherwise
 *     16 + (byte 0 & 0x7f) * 256 (16..32528), past the 16 KiB first buffer.
 *   byte 1: bit 0: the connection borrows the worker's scratch buffers (event
 *     mode); bit 1: the worker lets go after each chunk (ps__conn_shrink);
 *     bit 2: the client reads replies only when it cannot send any more, so
 *     output piles up to the high-water mark and backpressure holds input.
 *   then chunks, each a length byte L and the bytes: L < 0xf0 is L bytes,
 *     otherwise (L - 0xef) * 4096 bytes (cut short by the input's end).
 * Each chunk is written to the client's end of the pair and served the way
 * event mode's serve() does it; at the end the client half-closes. Every line
 * is echoed by a handler that records it.
 *
 * Properties: the bytes the client gets back are exactly the complete lines
 * of the whole stream, each with its ending, in order, up to the first line
 * longer than max_line, which instead gets "ERROR line too long\r\n" and
 * ends the connection; a partial last line gets nothing. The input buffer
 * never grows past max_line + 2 + one read, reads never report ENOBUFS, and
 * the handler sees the lines ps_lineframe_next finds in the whole stream
 * (that framer is checked against a reference by fuzz_lineframe).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"
#include "poolsrv/log.h"

#include "fuzz_io.h"
#include "conn.h"

#define HEADER 2
#define READ_CHUNK 16384 /* conn.c's PS__READ_CHUNK */

static sink lines_seen; /* every line the handler got, with its ending */

static int echo_line(ps_conn *c, const ps_line *line, void *ud)
{
    (void)ud;
    sink_add(&lines_seen, line->data, line->len + line->eol_len);
    FUZZ_CHECK(ps_conn_send(c, line->data, line->len + line->eol_len) == 0);
    return PS_CONTINUE;
}

static const ps_handler handler = {.on_line = echo_line};

/* What the client must get back for the whole stream, and whether the
 * server must close (a line too long). */
static bool expected(const uint8_t *s, size_t n, size_t max_line, sink *out)
{
    size_t pos = 0;
    for (;;) {
        ps_line line;
        ssize_t r = ps_lineframe_next((const char *)s + pos, n - pos, max_line, &line);
        if (r == 0)
            return false;
        if (r < 0) {
            sink_add(out, "ERROR line too long\r\n", 21);
            return true;
        }
        sink_add(out, s + pos, (size_t)r);
        pos += (size_t)r;
    }
}

enum { WAIT_READ, WAIT_WRITE, CLOSED };

/* Serves the connection until it waits, as event mode's serve() does:
 * replies go out before anything else; complete lines are answered before
 * more input is read; input is read until the socket is empty. */
static int serve(ps_conn *c, size_t max_line, bool *closing)
{
    for (;;) {
        int f = ps__conn_flush(c);
        if (f == -EAGAIN)
            return WAIT_WRITE;
        FUZZ_CHECK(f == 0);
        if (*closing)
            return CLOSED;
        if (ps__conn_has_line(c)) {
            if (ps__conn_process(c) != PS_CONTINUE)
                *closing = true;
            continue;
        }
        ssize_t r = ps__conn_read(c);
        FUZZ_CHECK(r != -ENOBUFS);
        FUZZ_CHECK(c->in.cap <= READ_CHUNK || c->in.cap <= max_line + 2 + READ_CHUNK);
        if (r == -EAGAIN)
            return WAIT_READ;
        if (r == 0)
            return CLOSED;
        FUZZ_CHECK(r > 0);
        if (ps__conn_process(c) != PS_CONTINUE)
            *closing = true;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER)
        return 0;
    size_t max_line = data[0] < 0x80 ? 16 + (size_t)data[0] : 16 + ((size_t)data[0] & 0x7f) * 256;
    bool borrow = data[1] & 1, shrink = data[1] & 2, late_reader = data[1] & 4;

    /* The stream the chunks make, in one piece, for the expected reply. */
    uint8_t *stream = malloc(size);
    size_t slen = 0;
    if (stream == NULL)
        abort();
    for (size_t p = HEADER; p < size;) {
        const uint8_t *chunk;
        size_t len = next_chunk(data, size, &p, &chunk);
        memcpy(stream + slen, chunk, len);
        slen += len;
    }
    sink want = {0};
    bool closes = expected(stream, slen, max_line, &want);

    ps_log_set_level(PS_LOG_ERROR); /* each input closes a connection */
    ps_config cfg;
    ps_config_defaults(&cfg);
    cfg.max_line = max_line;
    cfg.admin_enabled = false;
    ps_server *srv = NULL;
    FUZZ_CHECK(ps_server_create(&srv, &cfg, &handler, NULL, NULL, 0) == 0);
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    struct sockaddr_storage peer = {.ss_family = AF_UNIX};
    atomic_fetch_add(&srv->c.curr_connections, 1);
    ps_conn *c = ps__conn_new(srv, sv[0], (struct sockaddr *)&peer);
    FUZZ_CHECK(c != NULL);
    c->borrow = borrow;
    lines_seen.len = 0;

    sink got = {0};
    bool closing = false;
    int state = WAIT_READ;
    for (size_t p = HEADER; p < size && state != CLOSED;) {
        const uint8_t *chunk;
        size_t len = next_chunk(data, size, &p, &chunk);
        /* A chunk larger than the socket buffer goes in several writes. */
        for (int rounds = 0; len > 0 && state != CLOSED; rounds++) {
            FUZZ_CHECK(rounds < 100000);
            if (!client_send(sv[1], &chunk, &len)) {
                FUZZ_CHECK(state == WAIT_WRITE); /* else the server read it all */
                (void)client_read(sv[1], &got); /* both ways full: the client gives in */
            }
            state = serve(c, max_line, &closing);
            if (!late_reader)
                (void)client_read(sv[1], &got);
        }
        if (state != CLOSED && shrink)
            FUZZ_CHECK(ps__conn_shrink(c) == 0);
    }
    /* The client has sent everything: it half-closes and reads the rest. */
    shutdown(sv[1], SHUT_WR);
    for (int rounds = 0; state != CLOSED; rounds++) {
        FUZZ_CHECK(rounds < 100000);
        (void)client_read(sv[1], &got);
        state = serve(c, max_line, &closing);
    }
    FUZZ_CHECK(ps__conn_pending_output(c) == 0);
    (void)client_read(sv[1], &got);

    FUZZ_CHECK(closing == closes);
    FUZZ_CHECK(got.len == want.len);
    FUZZ_CHECK(got.len == 0 || memcmp(got.buf, want.buf, got.len) == 0);
    /* The handler saw exactly the lines echoed (all but the error). */
    size_t echoed = closes ? want.len - 21 : want.len;
    FUZZ_CHECK(lines_seen.len == echoed);
    FUZZ_CHECK(echoed == 0 || memcmp(lines_seen.buf, want.buf, echoed) == 0);

    ps__conn_close(c);
    close(sv[1]);
    ps_server_destroy(srv);
    free(got.buf);
    free(want.buf);
    free(stream);
    return 0;
}
