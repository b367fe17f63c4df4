/*
 * fuzz_admin - libFuzzer target for the admin port's framing, replies and
 * backpressure (src/server/admin.c: ps__admin_client_read / _flush) over a
 * real socket pair, driven as the admin thread's poll loop drives them.
 *
 * Input: a 1-byte header, then chunks (fuzz_io.h: a length byte L, then L
 * bytes, or (L - 0xef) * 4096 bytes when L >= 0xf0).
 *   byte 0: bit 0: the client reads replies only when it cannot send any
 *     more (commands sent together pile up behind unread replies);
 *     bit 1: the client half-closes after its last chunk (else it waits for
 *     its replies and then closes).
 *
 * Properties: every complete command line before the first `quit` or the
 * first line longer than 256 bytes gets exactly one reply, in order:
 * `help`'s text, `STAT` lines and `END` for `threads` / `stats`, or
 * `ERROR unknown command` (commands are matched without surrounding blanks
 * and in any letter case). A line too long gets `ERROR line too long` and
 * the connection ends; so does `quit`, and the client's half-close once every
 * command before it is answered. Nothing else is ever sent, and a reply is
 * never cut short.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"
#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"
#include "poolsrv/log.h"

#include "fuzz_io.h"
#include "admin.h"

#define HEADER 1
#define LINE_MAX_ADMIN 256 /* admin.c's PS__ADMIN_LINE_MAX */

enum kind { HELP, LIST, UNKNOWN, QUIT, TOO_LONG };

/* What the server must make of one command line. */
static enum kind classify(const char *s, size_t len)
{
    while (len > 0 && (s[0] == ' ' || s[0] == '\t')) {
        s++;
        len--;
    }
    while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    if (len == 4 && strncasecmp(s, "help", 4) == 0)
        return HELP;
    if (len == 4 && strncasecmp(s, "quit", 4) == 0)
        return QUIT;
    if ((len == 5 && strncasecmp(s, "stats", 5) == 0) ||
        (len == 7 && strncasecmp(s, "threads", 7) == 0))
        return LIST;
    return UNKNOWN;
}

/* The replies the whole stream must get, as kinds, up to the one that
 * ends the connection (QUIT / TOO_LONG), if any. */
static size_t expected(const uint8_t *s, size_t n, enum kind *out)
{
    size_t pos = 0, count = 0;
    for (;;) {
        ps_line line;
        ssize_t r = ps_lineframe_next((const char *)s + pos, n - pos, LINE_MAX_ADMIN, &line);
        if (r == 0)
            return count;
        if (r < 0) {
            out[count++] = TOO_LONG;
            return count;
        }
        pos += (size_t)r;
        out[count] = classify(line.data, line.len);
        if (out[count++] == QUIT)
            return count;
    }
}

/* Checks that got holds exactly the replies the kinds call for. */
static void check_replies(const sink *got, const enum kind *kinds, size_t count,
                          const char *help)
{
    static const char unknown[] = "ERROR unknown command\r\n";
    static const char too_long[] = "ERROR line too long\r\n";
    size_t pos = 0;
    for (size_t i = 0; i < count; i++) {
        const char *at = got->buf + pos;
        size_t rem = got->len - pos;
        switch (kinds[i]) {
        case HELP:
            FUZZ_CHECK(rem >= strlen(help) && memcmp(at, help, strlen(help)) == 0);
            pos += strlen(help);
            break;
        case UNKNOWN:
            FUZZ_CHECK(rem >= sizeof unknown - 1 && memcmp(at, unknown, sizeof unknown - 1) == 0);
            pos += sizeof unknown - 1;
            break;
        case TOO_LONG:
            FUZZ_CHECK(rem >= sizeof too_long - 1 &&
                       memcmp(at, too_long, sizeof too_long - 1) == 0);
            pos += sizeof too_long - 1;
            break;
        case QUIT:
            break; /* no reply */
        case LIST:
            /* STAT lines, then END. */
            for (;;) {
                at = got->buf + pos;
                rem = got->len - pos;
                const char *nl = memchr(at, '\n', rem);
                FUZZ_CHECK(nl != NULL);
                size_t l = (size_t)(nl - at) + 1;
                pos += l;
                if (l == 5 && memcmp(at, "END\r\n", 5) == 0)
                    break;
                FUZZ_CHECK(l > 7 && memcmp(at, "STAT ", 5) == 0 && at[l - 2] == '\r');
            }
            break;
        }
    }
    FUZZ_CHECK(pos == got->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < HEADER)
        return 0;
    bool late_reader = data[0] & 1, half_close = data[0] & 2;

    uint8_t *stream = malloc(size);
    enum kind *kinds = malloc(size * sizeof *kinds);
    size_t slen = 0;
    if (stream == NULL || kinds == NULL)
        abort();
    for (size_t p = HEADER; p < size;) {
        const uint8_t *chunk;
        size_t len = next_chunk(data, size, &p, &chunk);
        memcpy(stream + slen, chunk, len);
        slen += len;
    }
    size_t count = expected(stream, slen, kinds);
    bool ends = count > 0 && (kinds[count - 1] == QUIT || kinds[count - 1] == TOO_LONG);

    ps_log_set_level(PS_LOG_ERROR);
    ps_config cfg;
    ps_config_defaults(&cfg);
    ps_server *srv = NULL;
    static const ps_handler none = {0};
    FUZZ_CHECK(ps_server_create(&srv, &cfg, &none, NULL, NULL, 0) == 0);
    char help[4096];
    FUZZ_CHECK(ps__admin_command(srv, "help", 4, help, sizeof help) == PS_CONTINUE);
    int sv[2];
    FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    ps__admin_client *ac = ps__admin_client_new(sv[0], 0);
    FUZZ_CHECK(ac != NULL);

    /* One poll-loop turn: the admin thread writes when a reply waits, and
     * reads otherwise. */
#define STEP() (ps__admin_client_wants_write(ac) ? ps__admin_client_flush(srv, ac) \
                                                 : ps__admin_client_read(srv, ac))
    sink got = {0};
    bool alive = true;
    for (size_t p = HEADER; p < size && alive;) {
        const uint8_t *chunk;
        size_t len = next_chunk(data, size, &p, &chunk);
        for (int rounds = 0; len > 0 && alive; rounds++) {
            FUZZ_CHECK(rounds < 100000);
            if (!client_send(sv[1], &chunk, &len)) {
                /* The server reads a line's worth at a time; when it waits
                 * for the client to read, the client gives in. */
                if (ps__admin_client_wants_write(ac))
                    (void)client_read(sv[1], &got);
            }
            alive = STEP();
            if (!late_reader)
                (void)client_read(sv[1], &got);
        }
    }
    if (half_close)
        shutdown(sv[1], SHUT_WR);
    /* The client reads its replies; the server reads and answers the rest.
     * Without a half-close it then waits for more: the loop ends there. */
    for (int rounds = 0; alive; rounds++) {
        FUZZ_CHECK(rounds < 100000);
        (void)client_read(sv[1], &got);
        int unread = 0;
        FUZZ_CHECK(ioctl(sv[0], FIONREAD, &unread) == 0);
        if (!half_close && !ps__admin_client_wants_write(ac) && unread == 0)
            break;
        alive = STEP();
    }
#undef STEP
    /* Half-closed or ended by the server: the server is done. Otherwise
     * it would still be waiting for the client's next command. */
    FUZZ_CHECK(alive == (!half_close && !ends));
    FUZZ_CHECK(!ps__admin_client_wants_write(ac) || !alive);
    ps__admin_client_close(srv, ac);
    while (client_read(sv[1], &got))
        ;
    close(sv[1]);

    check_replies(&got, kinds, count, help);

    ps_server_destroy(srv);
    free(got.buf);
    free(kinds);
    free(stream);
    return 0;
}
