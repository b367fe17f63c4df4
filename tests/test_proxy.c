/* The PROXY protocol header parser and the CIDR allow-list: pure functions,
 * tested without a socket. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include <cmocka.h>

#include "poolsrv/error.h"
#include "proxy.h"

#define S(lit) (lit), (sizeof(lit) - 1)
#define BOTH (PS__PROXY_V1 | PS__PROXY_V2)

/* ---- helpers ---------------------------------------------------------------- */

/* The longest input a test builds: a v2 header at its maximum and a few
 * bytes after it. Lengths are checked against it where they are used
 * (abort: no test goes on past a broken helper), which also tells the
 * compiler their range: gcc at -O3 otherwise reasons about lengths near
 * SIZE_MAX that no test makes, and warns. */
#define T_LEN_MAX (PS__PROXY_V2_MAX + 64)

static void check_len(size_t len)
{
    if (len > T_LEN_MAX) {
        fprintf(stderr, "test helper given %zu bytes (at most %d)\n", len, T_LEN_MAX);
        abort();
    }
}

/* Parses a copy of buf[0..len) in an allocation of exactly len bytes, so
 * ASan sees a read past the end. */
static ssize_t parse(const void *buf, size_t len, unsigned accept, ps__proxy_info *info)
{
    check_len(len);
    unsigned char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, buf, len);
    ssize_t r = ps__proxy_parse(copy, len, accept, info);
    free(copy);
    return r;
}

/* Parses a whole header of `len` bytes the way it may arrive: each shorter
 * prefix needs more (and leaves info alone), the whole gives len, and bytes
 * after it are not taken. */
static void parse_every_way(const void *hdr, size_t len, unsigned accept, ps__proxy_info *info)
{
    ps__proxy_info untouched;
    memset(&untouched, 0xA5, sizeof(untouched));
    for (size_t k = 0; k < len; k++) {
        ps__proxy_info scratch = untouched;
        if (parse(hdr, k, accept, &scratch) != 0)
            fail_msg("prefix of %zu of %zu bytes did not ask for more", k, len);
        assert_memory_equal(&scratch, &untouched, sizeof(scratch));
    }
    static const char after[] = "EHLO x\r\n\r\n\x0d\x0a";
    unsigned char *more = malloc(len + sizeof(after));
    assert_non_null(more);
    memcpy(more, hdr, len);
    memcpy(more + len, after, sizeof(after));
    ps__proxy_info with_more;
    assert_int_equal(parse(more, len + sizeof(after), accept, &with_more), (ssize_t)len);
    free(more);
    assert_int_equal(parse(hdr, len, accept, info), (ssize_t)len);
    assert_memory_equal(info, &with_more, sizeof(*info));
}

static void parse_every_way_text(const char *hdr, unsigned accept, ps__proxy_info *info)
{
    parse_every_way(hdr, strlen(hdr), accept, info);
}

static void assert_addr(const struct sockaddr_storage *ss, const char *text, unsigned port)
{
    unsigned char want[16];
    if (strchr(text, ':')) {
        struct sockaddr_in6 sin6;
        assert_int_equal(ss->ss_family, AF_INET6);
        memcpy(&sin6, ss, sizeof(sin6));
        assert_int_equal(inet_pton(AF_INET6, text, want), 1);
        assert_memory_equal(&sin6.sin6_addr, want, 16);
        assert_int_equal(ntohs(sin6.sin6_port), port);
    } else {
        struct sockaddr_in sin;
        assert_int_equal(ss->ss_family, AF_INET);
        memcpy(&sin, ss, sizeof(sin));
        assert_int_equal(inet_pton(AF_INET, text, want), 1);
        assert_memory_equal(&sin.sin_addr, want, 4);
        assert_int_equal(ntohs(sin.sin_port), port);
    }
}

static void assert_local(const ps__proxy_info *info, int version)
{
    assert_int_equal(info->version, version);
    assert_true(info->local);
    assert_int_equal(info->src.ss_family, AF_UNSPEC);
    assert_int_equal(info->dst.ss_family, AF_UNSPEC);
}

static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                      0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Writes a v2 header into out: the signature, ver_cmd, fam, the length field
 * `declared`, then body[0..body_len). Returns the bytes written. */
static size_t v2_raw(unsigned char *out, unsigned ver_cmd, unsigned fam, size_t declared,
                     const void *body, size_t body_len)
{
    check_len(body_len);
    memcpy(out, sig, 12);
    out[12] = (unsigned char)ver_cmd;
    out[13] = (unsigned char)fam;
    out[14] = (unsigned char)(declared >> 8);
    out[15] = (unsigned char)declared;
    if (body_len)
        memcpy(out + 16, body, body_len);
    return 16 + body_len;
}

/* A v2 header whose length field matches its body. */
static size_t v2(unsigned char *out, unsigned ver_cmd, unsigned fam, const void *body,
                 size_t body_len)
{
    return v2_raw(out, ver_cmd, fam, body_len, body, body_len);
}

/* The address block of TCP over IPv4 or IPv6, then extra[0..extra_len). */
static size_t v2_body(unsigned char *out, const char *src, unsigned sport, const char *dst,
                      unsigned dport, const void *extra, size_t extra_len)
{
    int fam = strchr(src, ':') ? AF_INET6 : AF_INET;
    size_t a = fam == AF_INET ? 4 : 16;
    assert_int_equal(inet_pton(fam, src, out), 1);
    assert_int_equal(inet_pton(fam, dst, out + a), 1);
    out[2 * a] = (unsigned char)(sport >> 8);
    out[2 * a + 1] = (unsigned char)sport;
    out[2 * a + 2] = (unsigned char)(dport >> 8);
    out[2 * a + 3] = (unsigned char)dport;
    if (extra_len)
        memcpy(out + 2 * a + 4, extra, extra_len);
    return 2 * a + 4 + extra_len;
}

/* ---- version 1: valid -------------------------------------------------------- */

static void test_v1_tcp4(void **state)
{
    (void)state;
    ps__proxy_info info;
    parse_every_way_text("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", BOTH, &info);
    assert_int_equal(info.version, 1);
    assert_false(info.local);
    assert_addr(&info.src, "192.168.0.1", 56324);
    assert_addr(&info.dst, "192.168.0.11", 443);

    /* The spec's longest TCP4 line, and the smallest values. */
    const char *longest = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
    assert_int_equal(strlen(longest), 56);
    parse_every_way_text(longest, PS__PROXY_V1, &info);
    assert_addr(&info.src, "255.255.255.255", 65535);
    assert_addr(&info.dst, "255.255.255.255", 65535);
    parse_every_way_text("PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", BOTH, &info);
    assert_addr(&info.src, "0.0.0.0", 0);
    assert_addr(&info.dst, "0.0.0.0", 0);
}

static void test_v1_tcp6(void **state)
{
    (void)state;
    ps__proxy_info info;
    parse_every_way_text("PROXY TCP6 2001:db8::1 ::1 40000 8080\r\n", BOTH, &info);
    assert_int_equal(info.version, 1);
    assert_false(info.local);
    assert_addr(&info.src, "2001:db8::1", 40000);
    assert_addr(&info.dst, "::1", 8080);

    const char *longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                          "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n";
    assert_int_equal(strlen(longest), 104);
    parse_every_way_text(longest, PS__PROXY_V1, &info);
    assert_addr(&info.src, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);
    assert_addr(&info.dst, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535);

    /* IPv4-mapped, as a dual-stack proxy may write it: inet_pton takes it. */
    parse_every_way_text("PROXY TCP6 ::ffff:10.0.0.1 ::ffff:10.0.0.2 1 2\r\n", BOTH, &info);
    assert_addr(&info.src, "::ffff:10.0.0.1", 1);
    assert_addr(&info.dst, "::ffff:10.0.0.2", 2);
}

static void test_v1_unknown(void **state)
{
    (void)state;
    ps__proxy_info info;
    parse_every_way_text("PROXY UNKNOWN\r\n", BOTH, &info);
    assert_local(&info, 1);
    parse_every_way_text("PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n", BOTH, &info);
    assert_local(&info, 1);
    /* Whatever follows UNKNOWN is ignored, even what is no address. */
    parse_every_way_text("PROXY UNKNOWN garbage\tand \x01 more\r\n", BOTH, &info);
    assert_local(&info, 1);
    /* The spec's worst case is exactly the 107-byte limit. */
    const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_int_equal(strlen(worst), PS__PROXY_V1_MAX);
    parse_every_way_text(worst, PS__PROXY_V1, &info);
    assert_local(&info, 1);
}

static void test_v1_header_then_data(void **state)
{
    (void)state;
    /* Two headers back to back: only the first is taken. */
    const char buf[] = "PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r\nPROXY TCP4 3.3.3.3 4.4.4.4 3 4\r\n";
    ps__proxy_info info;
    assert_int_equal(parse(S(buf), PS__PROXY_V1, &info), 32);
    assert_addr(&info.src, "1.1.1.1", 1);
    assert_int_equal(parse(buf + 32, sizeof(buf) - 1 - 32, PS__PROXY_V1, &info), 32);
    assert_addr(&info.src, "3.3.3.3", 3);
}

/* ---- version 1: malformed ---------------------------------------------------- */

static void test_v1_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\n",
        "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY\r\n",
        "PROXY \r\n",
        "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",     /* double spaces */
        "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",     /* trailing space */
        "PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",        /* line endings */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n",
        "PROXY UNKNOWN\rX\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",        /* field count */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8\r\n",
        "PROXY TCP4\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",  /* ports */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1a 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 0x2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",    /* heading zero */
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",              /* addresses */
        "PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP6 ::1 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
        "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 localhost 5.6.7.8 1 2\r\n",
        "PROXY TCP6 2001:db8:::1 ::1 1 2\r\n",
        "PROXY TCP6 12345::1 ::1 1 2\r\n",
        "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
        "PROXY TCP6 [::1] ::1 1 2\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ps__proxy_info info;
        memset(&info, 0xA5, sizeof(info));
        const ps__proxy_info untouched = info;
        ssize_t r = parse(bad[i], strlen(bad[i]), BOTH, &info);
        if (r != -EPROTO)
            fail_msg("\"%s\": got %zd, want -EPROTO", bad[i], r);
        assert_memory_equal(&info, &untouched, sizeof(info));
    }
}

static void test_v1_nul_byte(void **state)
{
    (void)state;
    const char hdr[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
    ps__proxy_info info;
    assert_int_equal(parse(S(hdr), BOTH, &info), -EPROTO);
    const char port[] = "PROXY TCP4 1.2.3.4 5.6.7.8 1\0 2\r\n";
    assert_int_equal(parse(S(port), BOTH, &info), -EPROTO);
}

/* A byte no header can hold fails as soon as it is in, before any CRLF;
 * what only the whole field can judge waits for the space after it. */
static void test_v1_fails_early(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        ssize_t want;
    } cases[] = {
        {"X", -EPROTO},
        {"G", -EPROTO},
        {"PROXY", 0},
        {"PROXZ", -EPROTO},
        {"PROXY ", 0},
        {"PROXY  ", -EPROTO},
        {"PROXY T", 0},
        {"PROXY TCP", 0},
        {"PROXY TCP7", -EPROTO},
        {"PROXY U", 0},
        {"PROXY UNKNOWN", 0},
        {"PROXY UNKNOWN whatever", 0},
        {"PROXY UNKNOWN\n", 0}, /* an LF is one more ignored byte */
        {"PROXY UNKNOWN\r", 0},
        {"PROXY UNKNOWN\rX", -EPROTO},
        {"PROXY TCP4 ", 0},
        {"PROXY TCP4 1.2.3", 0},
        {"PROXY TCP4 1.2.3.999", 0}, /* judged when the space arrives */
        {"PROXY TCP4 1.2.3.999 ", -EPROTO},
        {"PROXY TCP4 1.2.3.4:", -EPROTO},
        {"PROXY TCP4 1.2.3.4\r", -EPROTO},
        {"PROXY TCP4 1111111111111111", -EPROTO}, /* longer than any IPv4 */
        {"PROXY TCP4 ::", -EPROTO},
        {"PROXY TCP6 ::g", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1a", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 -", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 6553", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 65536", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 00", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r", 0},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", -EPROTO},
        {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", -EPROTO},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ps__proxy_info info;
        ssize_t r = parse(cases[i].text, strlen(cases[i].text), BOTH, &info);
        if (r != cases[i].want)
            fail_msg("\"%s\": got %zd, want %zd", cases[i].text, r, cases[i].want);
    }
}

/* Fills buf with "PROXY UNKNOWN " and then 'x' up to n bytes. */
static void unknown_filler(char *buf, size_t n)
{
    memset(buf, 'x', n);
    memcpy(buf, "PROXY UNKNOWN ", 14);
}

static void test_v1_length_limit(void **state)
{
    (void)state;
    char buf[PS__PROXY_V1_MAX + 16];
    ps__proxy_info info;

    /* 105 bytes and a CRLF: the longest line there may be. */
    unknown_filler(buf, sizeof(buf));
    memcpy(buf + 105, "\r\n", 2);
    assert_int_equal(parse(buf, 107, PS__PROXY_V1, &info), 107);
    assert_local(&info, 1);

    /* No CRLF in 106 bytes may still be a line; in 107 it cannot. */
    unknown_filler(buf, sizeof(buf));
    assert_int_equal(parse(buf, 106, PS__PROXY_V1, &info), 0);
    assert_int_equal(parse(buf, 107, PS__PROXY_V1, &info), -EPROTO);
    assert_int_equal(parse(buf, sizeof(buf), PS__PROXY_V1, &info), -EPROTO);

    /* A CR as the 107th byte: its LF would be the 108th. */
    buf[106] = '\r';
    assert_int_equal(parse(buf, 107, PS__PROXY_V1, &info), -EPROTO);
    buf[107] = '\n';
    assert_int_equal(parse(buf, 108, PS__PROXY_V1, &info), -EPROTO);

    /* The same for an unfinished TCP line: "PROXY TCP4 1.2.3" needs more,
     * but not once 107 bytes are in. */
    const char *partial = "PROXY TCP4 1.2.3";
    assert_int_equal(parse(partial, strlen(partial), PS__PROXY_V1, &info), 0);

    /* A TCP6 line of valid fields that is too long as a whole. */
    const char *too_long = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
                           "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n";
    assert_true(strlen(too_long) > PS__PROXY_V1_MAX);
    assert_int_equal(parse(too_long, 106, PS__PROXY_V1, &info), 0);
    assert_int_equal(parse(too_long, 107, PS__PROXY_V1, &info), -EPROTO);
    assert_int_equal(parse(too_long, strlen(too_long), PS__PROXY_V1, &info), -EPROTO);
}

/* ---- version 2: valid -------------------------------------------------------- */

static void test_v2_proxy_tcp4(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    size_t blen = v2_body(body, "10.1.2.3", 1234, "192.168.1.1", 443, NULL, 0);
    size_t len = v2(hdr, 0x21, 0x11, body, blen);
    assert_int_equal(len, 28);
    ps__proxy_info info;
    parse_every_way(hdr, len, BOTH, &info);
    assert_int_equal(info.version, 2);
    assert_false(info.local);
    assert_addr(&info.src, "10.1.2.3", 1234);
    assert_addr(&info.dst, "192.168.1.1", 443);

    blen = v2_body(body, "255.255.255.255", 65535, "0.0.0.0", 0, NULL, 0);
    len = v2(hdr, 0x21, 0x11, body, blen);
    parse_every_way(hdr, len, PS__PROXY_V2, &info);
    assert_addr(&info.src, "255.255.255.255", 65535);
    assert_addr(&info.dst, "0.0.0.0", 0);
}

static void test_v2_proxy_tcp6(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    size_t blen = v2_body(body, "2001:db8::1", 50000, "2001:db8:ffff::2", 25, NULL, 0);
    size_t len = v2(hdr, 0x21, 0x21, body, blen);
    assert_int_equal(len, 52);
    ps__proxy_info info;
    parse_every_way(hdr, len, BOTH, &info);
    assert_int_equal(info.version, 2);
    assert_false(info.local);
    assert_addr(&info.src, "2001:db8::1", 50000);
    assert_addr(&info.dst, "2001:db8:ffff::2", 25);
}

static void test_v2_local(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    ps__proxy_info info;
    /* A health check: LOCAL, UNSPEC, no address. */
    size_t len = v2(hdr, 0x20, 0x00, NULL, 0);
    assert_int_equal(len, 16);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);

    /* LOCAL with an address block: skipped by its length, not read. */
    size_t blen = v2_body(body, "10.1.2.3", 1234, "192.168.1.1", 443, NULL, 0);
    len = v2(hdr, 0x20, 0x11, body, blen);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);

    /* The spec: for LOCAL the family byte is ignored, and so is a block
     * too short for it. */
    len = v2(hdr, 0x20, 0x12, "abc", 3);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);
    len = v2(hdr, 0x20, 0x21, "abc", 3);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);
}

static void test_v2_unspec_and_unix(void **state)
{
    (void)state;
    unsigned char body[512], hdr[600];
    ps__proxy_info info;
    /* PROXY over UNSPEC: no usable address, whatever the block holds. */
    size_t len = v2(hdr, 0x21, 0x00, NULL, 0);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);
    len = v2(hdr, 0x21, 0x00, "\x01\x02", 2);
    parse_every_way(hdr, len, BOTH, &info);
    assert_local(&info, 2);

    /* UNIX stream and datagram: two 108-byte paths, kept as local. */
    memset(body, 0, sizeof(body));
    memcpy(body, "/run/lb.sock", 12);
    memcpy(body + 108, "/run/srv.sock", 13);
    for (unsigned fam = 0x31; fam <= 0x32; fam++) {
        len = v2(hdr, 0x21, fam, body, 216);
        parse_every_way(hdr, len, BOTH, &info);
        assert_local(&info, 2);
        /* Followed by a TLV. */
        memcpy(body + 216, "\x04\x00\x01z", 4);
        len = v2(hdr, 0x21, fam, body, 220);
        parse_every_way(hdr, len, BOTH, &info);
        assert_local(&info, 2);
        /* Too short for the two paths. */
        len = v2(hdr, 0x21, fam, body, 215);
        assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
        assert_int_equal(parse(hdr, 16, BOTH, &info), -EPROTO);
    }
}

static void test_v2_tlvs(void **state)
{
    (void)state;
    unsigned char body[256], hdr[300];
    ps__proxy_info info;
    /* ALPN "h2", AUTHORITY "example.com", an empty NOOP, SSL with a
     * sub-TLV (not looked into). */
    static const unsigned char tlvs[] = {
        0x01, 0x00, 0x02, 'h', '2',
        0x02, 0x00, 0x0b, 'e', 'x', 'a', 'm', 'p', 'l', 'e', '.', 'c', 'o', 'm',
        0x04, 0x00, 0x00,
        0x20, 0x00, 0x0b, 0x01, 0x00, 0x00, 0x00, 0x00, 0x21, 0x00, 0x03, 'T', 'L', 'S',
    };
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, tlvs, sizeof(tlvs));
    size_t len = v2(hdr, 0x21, 0x11, body, blen);
    assert_int_equal(len, 28 + sizeof(tlvs));
    parse_every_way(hdr, len, BOTH, &info);
    assert_addr(&info.src, "10.0.0.1", 1);
    assert_addr(&info.dst, "10.0.0.2", 2);

    blen = v2_body(body, "::1", 1, "::2", 2, tlvs, sizeof(tlvs));
    len = v2(hdr, 0x21, 0x21, body, blen);
    parse_every_way(hdr, len, BOTH, &info);
    assert_addr(&info.src, "::1", 1);
}

static void test_v2_bad_tlvs(void **state)
{
    (void)state;
    unsigned char body[256], hdr[300];
    ps__proxy_info info;
    static const struct {
        const char *tlvs;
        size_t len;
    } bad[] = {
        {"\x01", 1},                    /* a TLV header cut short */
        {"\x01\x00", 2},
        {"\x01\x00\x03" "ab", 5},       /* value longer than what is left */
        {"\x01\x00\x00\x04", 4},        /* a good TLV, then one byte */
        {"\x01\xff\xff", 3},
        {"\x04\x00\x00\x02\x00\x05xyz", 9},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, bad[i].tlvs, bad[i].len);
        size_t len = v2(hdr, 0x21, 0x11, body, blen);
        if (parse(hdr, len, BOTH, &info) != -EPROTO)
            fail_msg("bad TLVs #%zu accepted", i);
    }

    /* A TLV seen to run past the header fails before the rest arrives: the
     * length field says 28 + 3 + 100 bytes follow, the TLV claims 200. */
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, "\x05\x00\xc8", 3);
    size_t len = v2_raw(hdr, 0x21, 0x11, 12 + 3 + 100, body, blen);
    assert_int_equal(parse(hdr, len - 1, BOTH, &info), 0);
    assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
}

static void test_v2_max_length(void **state)
{
    (void)state;
    const size_t tlv = PS__PROXY_V2_MAX - 16 - 12 - 3; /* a NOOP filling the rest */
    unsigned char *extra = calloc(1, tlv + 3);
    unsigned char *body = calloc(1, PS__PROXY_V2_MAX);
    unsigned char *hdr = calloc(1, PS__PROXY_V2_MAX + 16);
    assert_non_null(extra);
    assert_non_null(body);
    assert_non_null(hdr);
    ps__proxy_info info;

    extra[0] = 0x04;
    extra[1] = (unsigned char)(tlv >> 8);
    extra[2] = (unsigned char)tlv;
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, extra, tlv + 3);
    size_t len = v2(hdr, 0x21, 0x11, body, blen);
    assert_int_equal(len, PS__PROXY_V2_MAX);
    assert_int_equal(parse(hdr, len, BOTH, &info), PS__PROXY_V2_MAX);
    assert_int_equal(parse(hdr, len - 1, BOTH, &info), 0);
    assert_addr(&info.src, "10.0.0.1", 1);

    /* One byte more is refused as soon as the length field is in. */
    v2_raw(hdr, 0x21, 0x11, PS__PROXY_V2_MAX - 16 + 1, NULL, 0);
    assert_int_equal(parse(hdr, 15, BOTH, &info), 0);
    assert_int_equal(parse(hdr, 16, BOTH, &info), -EPROTO);
    v2_raw(hdr, 0x20, 0x00, 0xffff, NULL, 0); /* LOCAL too */
    assert_int_equal(parse(hdr, 16, BOTH, &info), -EPROTO);
    free(extra);
    free(body);
    free(hdr);
}

/* ---- version 2: malformed ---------------------------------------------------- */

static void test_v2_bad_signature(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, NULL, 0);
    size_t len = v2(hdr, 0x21, 0x11, body, blen);
    ps__proxy_info info;
    /* Each signature byte wrong fails as soon as that byte is in. */
    for (size_t i = 0; i < 12; i++) {
        hdr[i] ^= 0x20;
        assert_int_equal(parse(hdr, i + 1, BOTH, &info), -EPROTO);
        assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
        if (i > 0)
            assert_int_equal(parse(hdr, i, BOTH, &info), 0);
        hdr[i] ^= 0x20;
    }
    assert_int_equal(parse(hdr, len, BOTH, &info), (ssize_t)len);
}

static void test_v2_bad_version_command_family(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, NULL, 0);
    ps__proxy_info info;
    /* The version nibble must be 2: fails at byte 13. */
    static const unsigned versions[] = {0x01, 0x11, 0x31, 0xf1, 0x00};
    for (size_t i = 0; i < sizeof(versions) / sizeof(versions[0]); i++) {
        size_t len = v2(hdr, versions[i], 0x11, body, blen);
        assert_int_equal(parse(hdr, 13, BOTH, &info), -EPROTO);
        assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
    }
    /* Commands other than LOCAL and PROXY. */
    static const unsigned commands[] = {0x22, 0x23, 0x2f};
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        size_t len = v2(hdr, commands[i], 0x11, body, blen);
        assert_int_equal(parse(hdr, 12, BOTH, &info), 0);
        assert_int_equal(parse(hdr, 13, BOTH, &info), -EPROTO);
        assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
    }
    /* UDP, and families or protocols the spec does not define, with
     * PROXY: fail at byte 14. */
    static const unsigned families[] = {0x12, 0x22, 0x13, 0x01, 0x10, 0x20, 0x30, 0x41, 0xff};
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++) {
        size_t len = v2(hdr, 0x21, families[i], body, blen);
        assert_int_equal(parse(hdr, 13, BOTH, &info), 0);
        if (parse(hdr, 14, BOTH, &info) != -EPROTO)
            fail_msg("family 0x%02x accepted", families[i]);
        assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
    }
}

static void test_v2_length_short_of_addresses(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    ps__proxy_info info;
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, NULL, 0);
    /* 11 of the 12 address bytes declared: refused once the length is in,
     * even with more bytes present. */
    size_t len = v2_raw(hdr, 0x21, 0x11, 11, body, blen);
    assert_int_equal(parse(hdr, 16, BOTH, &info), -EPROTO);
    assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
    len = v2_raw(hdr, 0x21, 0x11, 0, NULL, 0);
    assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);

    blen = v2_body(body, "::1", 1, "::2", 2, NULL, 0);
    len = v2_raw(hdr, 0x21, 0x21, 35, body, blen);
    assert_int_equal(parse(hdr, 16, BOTH, &info), -EPROTO);
    assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);
    /* An IPv6 family with an IPv4-sized block. */
    len = v2_raw(hdr, 0x21, 0x21, 12, body, 12);
    assert_int_equal(parse(hdr, len, BOTH, &info), -EPROTO);

    /* The whole header must be there: 16 + length bytes. */
    len = v2_raw(hdr, 0x21, 0x21, 36, body, blen);
    assert_int_equal(parse(hdr, len - 1, BOTH, &info), 0);
    assert_int_equal(parse(hdr, len, BOTH, &info), (ssize_t)len);
}

/* ---- both versions ------------------------------------------------------------- */

static void test_accept_mask(void **state)
{
    (void)state;
    unsigned char body[64], hdr[128];
    size_t blen = v2_body(body, "10.0.0.1", 1, "10.0.0.2", 2, NULL, 0);
    size_t v2len = v2(hdr, 0x21, 0x11, body, blen);
    const char *v1 = "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
    ps__proxy_info info;

    /* A version not accepted fails at its first byte. */
    assert_int_equal(parse(hdr, 1, PS__PROXY_V1, &info), -EPROTO);
    assert_int_equal(parse(hdr, v2len, PS__PROXY_V1, &info), -EPROTO);
    assert_int_equal(parse(v1, 1, PS__PROXY_V2, &info), -EPROTO);
    assert_int_equal(parse(v1, strlen(v1), PS__PROXY_V2, &info), -EPROTO);

    assert_int_equal(parse(hdr, v2len, PS__PROXY_V2, &info), (ssize_t)v2len);
    assert_int_equal(info.version, 2);
    assert_int_equal(parse(v1, strlen(v1), PS__PROXY_V1, &info), (ssize_t)strlen(v1));
    assert_int_equal(info.version, 1);

    /* No version at all is the caller's mistake. */
    assert_int_equal(parse(v1, strlen(v1), 0, &info), -EINVAL);
    assert_int_equal(parse(v1, strlen(v1), 4, &info), -EINVAL);
    /* Bits besides the versions are ignored. */
    assert_int_equal(parse(v1, strlen(v1), PS__PROXY_V1 | 4, &info), (ssize_t)strlen(v1));
}

static void test_empty_and_first_byte(void **state)
{
    (void)state;
    ps__proxy_info info;
    assert_int_equal(ps__proxy_parse(NULL, 0, BOTH, &info), 0);
    for (int c = 0; c < 256; c++) {
        unsigned char b = (unsigned char)c;
        ssize_t want = c == 'P' || c == '\r' ? 0 : -EPROTO;
        if (parse(&b, 1, BOTH, &info) != want)
            fail_msg("first byte 0x%02x", c);
    }
}

/* ---- CIDR list ----------------------------------------------------------------- */

static struct sockaddr_storage sa(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(9)};
        assert_int_equal(inet_pton(AF_INET6, text, &sin6.sin6_addr), 1);
        memcpy(&ss, &sin6, sizeof(sin6));
    } else {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(9)};
        assert_int_equal(inet_pton(AF_INET, text, &sin.sin_addr), 1);
        memcpy(&ss, &sin, sizeof(sin));
    }
    return ss;
}

static bool match(const ps__cidr_list *list, const char *text)
{
    struct sockaddr_storage ss = sa(text);
    return ps__cidr_match(list, (const struct sockaddr *)&ss);
}

static void parse_list(const char *text, ps__cidr_list *list)
{
    char err[256];
    if (ps__cidr_parse(text, list, err, sizeof(err)) != 0)
        fail_msg("\"%s\": %s", text, err);
    assert_string_equal(err, "");
}

static void test_cidr_parse_good(void **state)
{
    (void)state;
    ps__cidr_list list;
    parse_list("127.0.0.1/32, 10.0.0.0/8 ::1/128", &list);
    assert_int_equal(list.count, 3);
    assert_int_equal(list.entries[0].family, AF_INET);
    assert_int_equal(list.entries[0].bits, 32);
    assert_memory_equal(list.entries[0].addr, "\x7f\x00\x00\x01", 4);
    assert_int_equal(list.entries[1].family, AF_INET);
    assert_int_equal(list.entries[1].bits, 8);
    assert_memory_equal(list.entries[1].addr, "\x0a\x00\x00\x00", 4);
    assert_int_equal(list.entries[2].family, AF_INET6);
    assert_int_equal(list.entries[2].bits, 128);

    /* Bare addresses are hosts; any run of commas and white space parts. */
    parse_list(" 192.168.1.5,,\t2001:db8::/32 ,\n::1 ", &list);
    assert_int_equal(list.count, 3);
    assert_int_equal(list.entries[0].bits, 32);
    assert_int_equal(list.entries[1].bits, 32);
    assert_int_equal(list.entries[1].family, AF_INET6);
    assert_int_equal(list.entries[2].bits, 128);

    parse_list("0.0.0.0/0 ::/0 10.0.0.0/08", &list);
    assert_int_equal(list.count, 3);
    assert_int_equal(list.entries[0].bits, 0);
    assert_int_equal(list.entries[1].bits, 0);
    assert_int_equal(list.entries[2].bits, 8);

    /* Empty: a list that matches nothing. */
    parse_list("", &list);
    assert_int_equal(list.count, 0);
    parse_list(" , ", &list);
    assert_int_equal(list.count, 0);

    /* Exactly PS__CIDR_MAX entries. */
    char text[PS__CIDR_MAX * 16];
    size_t o = 0;
    for (int i = 0; i < PS__CIDR_MAX; i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "10.0.0.%d ", i);
    parse_list(text, &list);
    assert_int_equal(list.count, PS__CIDR_MAX);
}

/* ps__cidr_parse fails on text with a message holding each of the
 * fragments (NULL-terminated), and leaves an empty list. */
static void expect_cidr_error(const char *text, ...)
{
    ps__cidr_list list;
    char err[256];
    list.count = 7;
    int r = ps__cidr_parse(text, &list, err, sizeof(err));
    if (r != PS_ECONFIG)
        fail_msg("\"%s\": got %d, want PS_ECONFIG", text, r);
    assert_int_equal(list.count, 0);
    va_list ap;
    va_start(ap, text);
    for (const char *want; (want = va_arg(ap, const char *)) != NULL;)
        if (strstr(err, want) == NULL)
            fail_msg("\"%s\": message \"%s\" lacks \"%s\"", text, err, want);
    va_end(ap);
}

static void test_cidr_parse_bad(void **state)
{
    (void)state;
    expect_cidr_error("10.0.0.0/33", "\"10.0.0.0/33\"", "0 to 32", "IPv4", NULL);
    expect_cidr_error("::/129", "\"::/129\"", "0 to 128", "IPv6", NULL);
    expect_cidr_error("10.0.0.0/", "\"10.0.0.0/\"", "0 to 32", NULL);
    expect_cidr_error("10.0.0.0/-1", "\"10.0.0.0/-1\"", NULL);
    expect_cidr_error("10.0.0.0/+8", "\"10.0.0.0/+8\"", NULL);
    expect_cidr_error("10.0.0.0/8/8", "\"10.0.0.0/8/8\"", NULL);
    expect_cidr_error("10.0.0.0/8x", "\"10.0.0.0/8x\"", NULL);
    expect_cidr_error("10.0.0.0/0008", "\"10.0.0.0/0008\"", NULL);
    expect_cidr_error("junk", "\"junk\"", "IPv4 or IPv6 address", NULL);
    expect_cidr_error("localhost", "\"localhost\"", NULL);
    expect_cidr_error("1.2.3.4.5", "\"1.2.3.4.5\"", NULL);
    expect_cidr_error("1.2.3", "\"1.2.3\"", NULL);
    expect_cidr_error("/8", "\"/8\"", NULL);
    expect_cidr_error("2001:db8:::/48", "\"2001:db8:::/48\"", NULL);
    expect_cidr_error("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255:1", NULL);
    /* The bad entry is named, not the good ones around it. */
    expect_cidr_error("10.0.0.0/8, 300.0.0.0/8 ::1", "\"300.0.0.0/8\"", NULL);
    /* Bits past the prefix: the network is suggested. */
    expect_cidr_error("10.1.2.3/8", "\"10.1.2.3/8\"", "10.0.0.0/8", NULL);
    expect_cidr_error("2001:db8:4000::/33", "2001:db8::/33", NULL);
    expect_cidr_error("::1/127", "\"::1/127\"", "network is ::/127", NULL);
    expect_cidr_error("192.168.0.1/31", "192.168.0.0/31", NULL);
    /* Bytes that are not printable are escaped in the message. */
    expect_cidr_error("10.0.0.0/8 1.2.3.\x01", "\"1.2.3.\\x01\"", NULL);
    /* A huge entry is cut in the message. */
    char huge[400];
    memset(huge, '1', sizeof(huge) - 1);
    huge[sizeof(huge) - 1] = '\0';
    expect_cidr_error(huge, "...\"", NULL);

    /* One entry too many. */
    char text[(PS__CIDR_MAX + 1) * 16];
    size_t o = 0;
    for (int i = 0; i <= PS__CIDR_MAX; i++)
        o += (size_t)snprintf(text + o, sizeof(text) - o, "10.0.0.%d,", i);
    expect_cidr_error(text, "more than 32 entries", "\"10.0.0.32\"", NULL);

    /* Without a message buffer it still fails. */
    ps__cidr_list list;
    assert_int_equal(ps__cidr_parse("10.0.0.0/33", &list, NULL, 0), PS_ECONFIG);
    assert_int_equal(list.count, 0);
}

static void test_cidr_match_v4(void **state)
{
    (void)state;
    ps__cidr_list list;
    parse_list("10.0.0.0/8", &list);
    assert_true(match(&list, "10.0.0.0"));
    assert_true(match(&list, "10.255.255.255"));
    assert_false(match(&list, "11.0.0.0"));
    assert_false(match(&list, "9.255.255.255"));
    assert_false(match(&list, "::1"));
    assert_false(match(&list, "::a00:1")); /* IPv4-compatible is not mapped */
    assert_false(match(&list, "2001:db8::10.0.0.1"));

    parse_list("192.168.0.0/31 172.16.0.0/12", &list);
    assert_true(match(&list, "192.168.0.0"));
    assert_true(match(&list, "192.168.0.1"));
    assert_false(match(&list, "192.168.0.2"));
    assert_true(match(&list, "172.31.255.255"));
    assert_false(match(&list, "172.32.0.0"));
    assert_false(match(&list, "172.15.255.255"));

    parse_list("127.0.0.1", &list);
    assert_true(match(&list, "127.0.0.1"));
    assert_false(match(&list, "127.0.0.2"));

    parse_list("0.0.0.0/0", &list);
    assert_true(match(&list, "0.0.0.0"));
    assert_true(match(&list, "255.255.255.255"));
    assert_true(match(&list, "::ffff:1.2.3.4"));
    assert_false(match(&list, "::1"));
}

static void test_cidr_match_v6(void **state)
{
    (void)state;
    ps__cidr_list list;
    /* A prefix off a byte boundary: the 33rd bit decides. */
    parse_list("2001:db8::/33", &list);
    assert_true(match(&list, "2001:db8::"));
    assert_true(match(&list, "2001:db8::1"));
    assert_true(match(&list, "2001:db8:7fff:ffff:ffff:ffff:ffff:ffff"));
    assert_false(match(&list, "2001:db8:8000::"));
    assert_false(match(&list, "2001:db9::"));
    assert_false(match(&list, "10.0.0.1"));

    parse_list("::1/128 fe80::/10", &list);
    assert_true(match(&list, "::1"));
    assert_false(match(&list, "::2"));
    assert_true(match(&list, "febf:ffff::1"));
    assert_false(match(&list, "fec0::"));
    assert_false(match(&list, "fe7f::"));

    parse_list("::/0", &list);
    assert_true(match(&list, "::"));
    assert_true(match(&list, "ffff::1"));
}

/* An IPv4 client is the same whether the socket shows it as AF_INET or as
 * IPv4-mapped IPv6 (a dual-stack listener). */
static void test_cidr_match_mapped(void **state)
{
    (void)state;
    ps__cidr_list list;
    parse_list("127.0.0.0/8", &list);
    assert_true(match(&list, "::ffff:127.0.0.1"));
    assert_true(match(&list, "127.0.0.1"));
    assert_false(match(&list, "::ffff:128.0.0.1"));
    assert_false(match(&list, "::127.0.0.1"));

    parse_list("::ffff:10.0.0.0/104", &list);
    assert_true(match(&list, "10.1.2.3"));
    assert_true(match(&list, "::ffff:10.1.2.3"));
    assert_false(match(&list, "11.1.2.3"));

    /* ::/0 holds every IPv6 address, mapped IPv4 included. */
    parse_list("::/0", &list);
    assert_true(match(&list, "10.1.2.3"));
}

static void test_cidr_match_other(void **state)
{
    (void)state;
    ps__cidr_list list;
    parse_list("", &list);
    assert_false(match(&list, "127.0.0.1"));
    assert_false(match(&list, "::1"));

    parse_list("0.0.0.0/0 ::/0", &list);
    struct sockaddr_un sun = {.sun_family = AF_UNIX, .sun_path = "/tmp/x"};
    assert_false(ps__cidr_match(&list, (const struct sockaddr *)&sun));
    assert_false(ps__cidr_match(&list, NULL));
    struct sockaddr_storage unspec;
    memset(&unspec, 0, sizeof(unspec));
    assert_false(ps__cidr_match(&list, (const struct sockaddr *)&unspec));

    /* A failed parse leaves a list that matches nothing. */
    assert_int_equal(ps__cidr_parse("0.0.0.0/0 bad", &list, NULL, 0), PS_ECONFIG);
    assert_false(match(&list, "1.2.3.4"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v1_tcp4),
        cmocka_unit_test(test_v1_tcp6),
        cmocka_unit_test(test_v1_unknown),
        cmocka_unit_test(test_v1_header_then_data),
        cmocka_unit_test(test_v1_malformed),
        cmocka_unit_test(test_v1_nul_byte),
        cmocka_unit_test(test_v1_fails_early),
        cmocka_unit_test(test_v1_length_limit),
        cmocka_unit_test(test_v2_proxy_tcp4),
        cmocka_unit_test(test_v2_proxy_tcp6),
        cmocka_unit_test(test_v2_local),
        cmocka_unit_test(test_v2_unspec_and_unix),
        cmocka_unit_test(test_v2_tlvs),
        cmocka_unit_test(test_v2_bad_tlvs),
        cmocka_unit_test(test_v2_max_length),
        cmocka_unit_test(test_v2_bad_signature),
        cmocka_unit_test(test_v2_bad_version_command_family),
        cmocka_unit_test(test_v2_length_short_of_addresses),
        cmocka_unit_test(test_accept_mask),
        cmocka_unit_test(test_empty_and_first_byte),
        cmocka_unit_test(test_cidr_parse_good),
        cmocka_unit_test(test_cidr_parse_bad),
        cmocka_unit_test(test_cidr_match_v4),
        cmocka_unit_test(test_cidr_match_v6),
        cmocka_unit_test(test_cidr_match_mapped),
        cmocka_unit_test(test_cidr_match_other),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
