/*
 * fuzz_proxy - libFuzzer target for ps__proxy_parse (src/server/proxy.h).
 *
 * Input: byte 0 chooses the versions accepted (low two bits: 1 v1, 2 v2, 0
 * or 3 both); the rest is the start of a connection's byte stream.
 *
 * Checked on every input:
 * - the result is a header length no longer than the input, 0 ("need more")
 *   or -EPROTO, and *info is written only for a header;
 * - it agrees with a reference judge written the obvious way over the whole
 *   line (v1: split at the first CRLF into single-space fields, inet_pton,
 *   ports by hand) or the whole block (v2); where the reference cannot tell
 *   yet (the header is not all there), either "need more" or an early error;
 * - the result over every prefix of the input: once a prefix is decided (a
 *   header or an error), every longer one gives the same, so a header's
 *   prefixes all need more; and PS__PROXY_MAX bytes are always decided;
 * - a header followed by other bytes gives the same length and info;
 * - a v1 header's fields printed back give a line parsing to the same info,
 *   and for TCP4 (one canonical text) the very same bytes; a v2 header
 *   rebuilt from its info has the same address block.
 * Each buffer handed to the parser is its own allocation of exactly its
 * length, so ASan catches a read past the end.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "poolsrv/error.h"
#include "proxy.h"

#include "fuzz_target.h"

/* What the reference says the parser must return, besides a length > 0. */
#define REF_MORE 0            /* need more: exactly 0 */
#define REF_BAD (-EPROTO)     /* can never be a header: -EPROTO */
#define REF_EITHER (-1000000) /* not all there: 0, or -EPROTO judged early */

static const uint8_t v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                   0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Copies src[0..len) into a buffer of exactly len bytes. */
static uint8_t *dup_exact(const uint8_t *src, size_t len)
{
    uint8_t *p = malloc(len ? len : 1);
    if (!p)
        abort();
    if (len)
        memcpy(p, src, len);
    return p;
}

static ssize_t parse_exact(const uint8_t *b, size_t len, unsigned accept, ps__proxy_info *info)
{
    uint8_t *copy = dup_exact(b, len);
    ssize_t r = ps__proxy_parse(copy, len, accept, info);
    free(copy);
    return r;
}

static void ref_addr(struct sockaddr_storage *ss, int family, const void *addr, unsigned port)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)ss;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        memcpy(&sin->sin_addr, addr, 4);
    } else {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        memcpy(&sin6->sin6_addr, addr, 16);
    }
}

static void ref_local(ps__proxy_info *info, int version)
{
    memset(info, 0, sizeof(*info));
    info->version = version;
    info->local = true;
}

/* A port the spec allows: 1 to 5 digits, no heading zero, at most 65535. */
static bool ref_port(const char *s, unsigned *port)
{
    size_t n = strlen(s);
    if (n < 1 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    unsigned long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *port = (unsigned)v;
    return v <= 65535;
}

/* The v1 judge: the line ends at its first CR, which must be followed by LF
 * within the first 107 bytes. */
static ssize_t reference_v1(const uint8_t *b, size_t len, ps__proxy_info *info)
{
    size_t lim = len < PS__PROXY_V1_MAX ? len : PS__PROXY_V1_MAX;
    const uint8_t *cr = memchr(b, '\r', lim);
    if (cr == NULL || (size_t)(cr - b) + 1 >= lim)
        return len >= PS__PROXY_V1_MAX ? REF_BAD : REF_EITHER;
    if (cr[1] != '\n')
        return REF_BAD;
    size_t line_len = (size_t)(cr - b);
    ssize_t total = (ssize_t)line_len + 2;
    if (line_len >= 13 && memcmp(b, "PROXY UNKNOWN", 13) == 0) {
        ref_local(info, 1);
        return total;
    }
    if (memchr(b, '\0', line_len))
        return REF_BAD;
    char line[PS__PROXY_V1_MAX];
    memcpy(line, b, line_len);
    line[line_len] = '\0';

    /* Fields separated by exactly one space: an empty one is an error. */
    char *field[7];
    int count = 0;
    char *s = line;
    for (;;) {
        if (count == 7)
            return REF_BAD;
        field[count++] = s;
        char *sp = strchr(s, ' ');
        if (!sp)
            break;
        *sp = '\0';
        s = sp + 1;
    }
    for (int i = 0; i < count; i++)
        if (field[i][0] == '\0')
            return REF_BAD;
    if (count != 6 || strcmp(field[0], "PROXY") != 0)
        return REF_BAD;
    int family;
    if (strcmp(field[1], "TCP4") == 0)
        family = AF_INET;
    else if (strcmp(field[1], "TCP6") == 0)
        family = AF_INET6;
    else
        return REF_BAD;
    unsigned char src[16], dst[16];
    unsigned sport, dport;
    if (inet_pton(family, field[2], src) != 1 || inet_pton(family, field[3], dst) != 1 ||
        !ref_port(field[4], &sport) || !ref_port(field[5], &dport))
        return REF_BAD;
    memset(info, 0, sizeof(*info));
    info->version = 1;
    ref_addr(&info->src, family, src, sport);
    ref_addr(&info->dst, family, dst, dport);
    return total;
}

/* The v2 judge, over the whole header once it is all there. */
static ssize_t reference_v2(const uint8_t *b, size_t len, ps__proxy_info *info)
{
    if (len < 16)
        return REF_EITHER;
    if (memcmp(b, v2_sig, 12) != 0 || (b[12] & 0xf0) != 0x20 || (b[12] & 0x0f) > 1)
        return REF_BAD;
    bool proxy = (b[12] & 0x0f) == 1;
    size_t body = (size_t)b[14] << 8 | b[15];
    size_t total = 16 + body;
    int family = AF_UNSPEC;
    size_t addrs = 0;
    bool tlvs = false;
    if (proxy) {
        if (b[13] == 0x11)
            family = AF_INET, addrs = 12, tlvs = true;
        else if (b[13] == 0x21)
            family = AF_INET6, addrs = 36, tlvs = true;
        else if (b[13] == 0x31 || b[13] == 0x32)
            addrs = 216, tlvs = true;
        else if (b[13] != 0x00)
            return REF_BAD;
    }
    if (total > PS__PROXY_V2_MAX || body < addrs)
        return REF_BAD;
    if (len < total)
        return REF_EITHER;
    if (tlvs) {
        size_t pos = 16 + addrs;
        while (pos < total) {
            if (pos + 3 > total)
                return REF_BAD;
            pos += 3 + ((size_t)b[pos + 1] << 8 | b[pos + 2]);
        }
        if (pos != total)
            return REF_BAD;
    }
    if (family == AF_UNSPEC) {
        ref_local(info, 2);
    } else {
        size_t a = family == AF_INET ? 4 : 16;
        const uint8_t *ports = b + 16 + 2 * a;
        memset(info, 0, sizeof(*info));
        info->version = 2;
        ref_addr(&info->src, family, b + 16, (unsigned)ports[0] << 8 | ports[1]);
        ref_addr(&info->dst, family, b + 16 + a, (unsigned)ports[2] << 8 | ports[3]);
    }
    return (ssize_t)total;
}

static ssize_t reference(const uint8_t *b, size_t len, unsigned accept, ps__proxy_info *info)
{
    if (len == 0)
        return REF_MORE;
    if (b[0] == 'P' && (accept & PS__PROXY_V1))
        return reference_v1(b, len, info);
    if (b[0] == '\r' && (accept & PS__PROXY_V2))
        return reference_v2(b, len, info);
    return REF_BAD;
}

static bool same_info(const ps__proxy_info *a, const ps__proxy_info *b)
{
    return a->version == b->version && a->local == b->local &&
           memcmp(&a->src, &b->src, sizeof(a->src)) == 0 &&
           memcmp(&a->dst, &b->dst, sizeof(a->dst)) == 0;
}

/* The address and port of ss as text and number. */
static unsigned addr_text(const struct sockaddr_storage *ss, char *text, size_t len)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        FUZZ_CHECK(inet_ntop(AF_INET, &sin->sin_addr, text, (socklen_t)len) != NULL);
        return ntohs(sin->sin_port);
    }
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    FUZZ_CHECK(inet_ntop(AF_INET6, &sin6->sin6_addr, text, (socklen_t)len) != NULL);
    return ntohs(sin6->sin6_port);
}

/* Prints a v1 header back from its info and parses that. */
static void check_v1_reprint(const uint8_t *hdr, size_t len, const ps__proxy_info *info)
{
    char src[INET6_ADDRSTRLEN], dst[INET6_ADDRSTRLEN], line[256];
    unsigned sport = addr_text(&info->src, src, sizeof(src));
    unsigned dport = addr_text(&info->dst, dst, sizeof(dst));
    bool v4 = info->src.ss_family == AF_INET;
    int n = snprintf(line, sizeof(line), "PROXY %s %s %s %u %u\r\n", v4 ? "TCP4" : "TCP6", src,
                     dst, sport, dport);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof(line));
    if (v4) /* dotted quads and ports without heading zeros: one way to write them */
        FUZZ_CHECK((size_t)n == len && memcmp(line, hdr, len) == 0);
    else
        FUZZ_CHECK(memcmp(line, hdr, 11) == 0); /* "PROXY TCP6 " */
    ps__proxy_info again;
    if ((size_t)n <= PS__PROXY_V1_MAX) {
        FUZZ_CHECK(parse_exact((const uint8_t *)line, (size_t)n, PS__PROXY_V1, &again) == n);
        FUZZ_CHECK(same_info(&again, info));
    }
}

/* Rebuilds a v2 PROXY header without TLVs from its info and parses that. */
static void check_v2_rebuild(const uint8_t *hdr, const ps__proxy_info *info)
{
    uint8_t out[16 + 36];
    bool v4 = info->src.ss_family == AF_INET;
    size_t a = v4 ? 4 : 16;
    memcpy(out, v2_sig, 12);
    out[12] = 0x21;
    out[13] = v4 ? 0x11 : 0x21;
    out[14] = 0;
    out[15] = (uint8_t)(2 * a + 4);
    uint16_t sport, dport;
    if (v4) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&info->src;
        const struct sockaddr_in *d = (const struct sockaddr_in *)&info->dst;
        memcpy(out + 16, &s->sin_addr, 4);
        memcpy(out + 20, &d->sin_addr, 4);
        sport = s->sin_port;
        dport = d->sin_port;
    } else {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&info->src;
        const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&info->dst;
        memcpy(out + 16, &s->sin6_addr, 16);
        memcpy(out + 32, &d->sin6_addr, 16);
        sport = s->sin6_port;
        dport = d->sin6_port;
    }
    memcpy(out + 16 + 2 * a, &sport, 2); /* already network order */
    memcpy(out + 18 + 2 * a, &dport, 2);
    size_t len = 16 + 2 * a + 4;
    FUZZ_CHECK(memcmp(out, hdr, 14) == 0);
    FUZZ_CHECK(memcmp(out + 16, hdr + 16, 2 * a + 4) == 0);
    ps__proxy_info again;
    FUZZ_CHECK(parse_exact(out, len, PS__PROXY_V2, &again) == (ssize_t)len);
    FUZZ_CHECK(same_info(&again, info));
}

/* The checks on one whole header of `len` bytes at the start of b. */
static void check_header(const uint8_t *b, size_t len, unsigned accept, const ps__proxy_info *info)
{
    FUZZ_CHECK(info->version == (b[0] == 'P' ? 1 : 2));
    FUZZ_CHECK(accept & (info->version == 1 ? PS__PROXY_V1 : PS__PROXY_V2));
    FUZZ_CHECK(len <= (info->version == 1 ? PS__PROXY_V1_MAX : PS__PROXY_V2_MAX));
    if (info->local) {
        FUZZ_CHECK(info->src.ss_family == AF_UNSPEC && info->dst.ss_family == AF_UNSPEC);
    } else {
        FUZZ_CHECK(info->src.ss_family == AF_INET || info->src.ss_family == AF_INET6);
        FUZZ_CHECK(info->dst.ss_family == info->src.ss_family);
    }

    /* Other bytes after it change nothing. */
    static const uint8_t tail[] = "\r\nPROXY TCP4 \x0d\x0a\x00";
    uint8_t *more = malloc(len + sizeof(tail));
    if (!more)
        abort();
    memcpy(more, b, len);
    memcpy(more + len, tail, sizeof(tail));
    ps__proxy_info with_tail;
    FUZZ_CHECK(parse_exact(more, len + sizeof(tail), accept, &with_tail) == (ssize_t)len);
    FUZZ_CHECK(same_info(&with_tail, info));
    free(more);

    if (!info->local && info->version == 1)
        check_v1_reprint(b, len, info);
    if (!info->local && info->version == 2)
        check_v2_rebuild(b, info);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned accept = data[0] & 3;
    if (accept == 0)
        accept = PS__PROXY_V1 | PS__PROXY_V2;
    const uint8_t *stream = data + 1;
    size_t n = size - 1;

    /* Every prefix, the whole stream last: the answer only ever goes from
     * "need more" to a final one, which then stays. Past PS__PROXY_MAX
     * bytes it is final, so longer prefixes need not be tried. */
    size_t last = n < PS__PROXY_MAX + 1 ? n : PS__PROXY_MAX + 1;
    ssize_t settled = 0;
    ps__proxy_info settled_info;
    for (size_t k = 0; k <= last; k++) {
        ps__proxy_info info;
        memset(&info, 0xA5, sizeof(info));
        const ps__proxy_info untouched = info;
        ssize_t r = parse_exact(stream, k, accept, &info);

        FUZZ_CHECK(r == 0 || r == -EPROTO || (r > 0 && (size_t)r <= k));
        if (r <= 0)
            FUZZ_CHECK(memcmp(&info, &untouched, sizeof(info)) == 0);

        ps__proxy_info ref_info;
        ssize_t ref = reference(stream, k, accept, &ref_info);
        if (ref == REF_EITHER)
            FUZZ_CHECK(r == 0 || r == -EPROTO);
        else
            FUZZ_CHECK(r == ref);
        if (r > 0)
            FUZZ_CHECK(same_info(&info, &ref_info));

        if (settled != 0) {
            FUZZ_CHECK(r == settled);
            if (r > 0)
                FUZZ_CHECK(same_info(&info, &settled_info));
        } else if (r != 0) {
            settled = r;
            settled_info = info;
            if (r > 0)
                check_header(stream, (size_t)r, accept, &info);
        }
        if (k >= PS__PROXY_MAX || (k >= PS__PROXY_V1_MAX && stream[0] == 'P'))
            FUZZ_CHECK(r != 0);
    }
    if (n > last) {
        ps__proxy_info info;
        FUZZ_CHECK(parse_exact(stream, n, accept, &info) == settled);
    }
    return 0;
}
