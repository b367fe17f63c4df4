/*
 * The PROXY protocol header (HAProxy's proxy-protocol.txt: v1 text, v2
 * binary) a trusted load balancer sends before the client's bytes, and the
 * CIDR list of peers trusted to send one. The header arrives like any bytes
 * on a socket, possibly in pieces, so the parser is a pure function over what
 * has arrived so far: the header's length, "need more", or an error decided
 * at the first byte that can never belong to a valid header.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "poolsrv/error.h"
#include "proxy.h"
#include "text.h"

/* ---- version 1: "PROXY TCP4 1.2.3.4 5.6.7.8 1234 80\r\n" ------------------ */

typedef enum field_kind { FIELD_ADDR4, FIELD_ADDR6, FIELD_PORT } field_kind;

/* Matches the literal lit against p[*pos..n). Returns 1 and moves *pos past
 * it when all of it is there, 0 when the bytes there are a proper prefix of
 * it, -1 when they differ. */
static int match_literal(const unsigned char *p, size_t n, size_t *pos, const char *lit)
{
    size_t l = strlen(lit);
    size_t have = n - *pos < l ? n - *pos : l;
    if (memcmp(p + *pos, lit, have) != 0)
        return -1;
    if (have < l)
        return 0;
    *pos += l;
    return 1;
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Whether s[0..len), a whole field or the part of it that has arrived, can
 * begin a valid field of kind k: only the characters it may hold, no longer
 * than the longest, and for a port no heading zero and at most 65535. What
 * only inet_pton can judge waits for the whole field. */
static bool field_prefix_ok(field_kind k, const unsigned char *s, size_t len)
{
    switch (k) {
    case FIELD_ADDR4:
        if (len > INET_ADDRSTRLEN - 1)
            return false;
        for (size_t i = 0; i < len; i++)
            if (!is_digit(s[i]) && s[i] != '.')
                return false;
        return true;
    case FIELD_ADDR6:
        if (len > INET6_ADDRSTRLEN - 1)
            return false;
        for (size_t i = 0; i < len; i++)
            if (!is_hex(s[i]) && s[i] != ':' && s[i] != '.')
                return false;
        return true;
    case FIELD_PORT: {
        if (len > 5 || (len > 1 && s[0] == '0'))
            return false;
        unsigned long v = 0;
        for (size_t i = 0; i < len; i++) {
            if (!is_digit(s[i]))
                return false;
            v = v * 10 + (unsigned long)(s[i] - '0');
        }
        return v <= 65535;
    }
    }
    return false;
}

/* Decodes the whole field s[0..len) of kind k into out: 4 or 16 address
 * bytes in network order, or a uint16_t port. Returns whether it is valid. */
static bool field_decode(field_kind k, const unsigned char *s, size_t len, void *out)
{
    if (len == 0 || !field_prefix_ok(k, s, len))
        return false;
    if (k == FIELD_PORT) {
        uint16_t v = 0;
        for (size_t i = 0; i < len; i++)
            v = (uint16_t)(v * 10 + (s[i] - '0'));
        memcpy(out, &v, sizeof(v));
        return true;
    }
    char text[INET6_ADDRSTRLEN]; /* field_prefix_ok bounded len */
    memcpy(text, s, len);
    text[len] = '\0';
    return inet_pton(k == FIELD_ADDR4 ? AF_INET : AF_INET6, text, out) == 1;
}

/* Writes family's address a (network order) and port (host order) into ss. */
static void set_addr(struct sockaddr_storage *ss, int family, const unsigned char *a,
                     uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    if (family == AF_INET) {
        struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
        memcpy(&sin.sin_addr, a, 4);
        memcpy(ss, &sin, sizeof(sin));
    } else {
        struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
        memcpy(&sin6.sin6_addr, a, 16);
        memcpy(ss, &sin6, sizeof(sin6));
    }
}

static void set_local(ps__proxy_info *info, int version)
{
    memset(info, 0, sizeof(*info));
    info->version = version;
    info->local = true;
}

/* Parses a v1 header (p[0] is 'P'). Every byte is judged as it arrives: a
 * character a field cannot hold fails at once; an address fails when the
 * space after it arrives; no CRLF in the first 107 bytes fails. */
static ssize_t parse_v1(const unsigned char *p, size_t len, ps__proxy_info *info)
{
    static const char *const protos[] = {"TCP4 ", "TCP6 ", "UNKNOWN"};
    /* Bytes past the 107th are never part of a v1 header: once 107 are in,
     * what still needs more is an error. */
    size_t n = len < PS__PROXY_V1_MAX ? len : PS__PROXY_V1_MAX;
    const ssize_t more = len < PS__PROXY_V1_MAX ? 0 : -EPROTO;
    size_t pos = 0;

    int r = match_literal(p, n, &pos, "PROXY ");
    if (r <= 0)
        return r < 0 ? -EPROTO : more;
    int proto = -1;
    bool partial = false;
    for (int i = 0; i < 3 && proto < 0; i++) {
        size_t at = pos;
        r = match_literal(p, n, &at, protos[i]);
        if (r == 1) {
            proto = i;
            pos = at;
        } else if (r == 0) {
            partial = true;
        }
    }
    if (proto < 0)
        return partial ? more : -EPROTO;

    size_t cr; /* index of the CR of the final CRLF */
    unsigned char addr[2][16];
    uint16_t port[2];
    if (proto == 2) {
        /* UNKNOWN: whatever follows up to the CRLF is ignored (the spec);
         * the line ends at its first CR, as in HAProxy. */
        const unsigned char *c = memchr(p + pos, '\r', n - pos);
        if (c == NULL)
            return more;
        cr = (size_t)(c - p);
    } else {
        const field_kind ak = proto == 0 ? FIELD_ADDR4 : FIELD_ADDR6;
        const field_kind kinds[4] = {ak, ak, FIELD_PORT, FIELD_PORT};
        void *const outs[4] = {addr[0], addr[1], &port[0], &port[1]};
        for (int f = 0; f < 4; f++) {
            /* Exactly one space after each field but the last, which ends
             * at the CR: an empty field is an error like any bad one. */
            const unsigned char *end = memchr(p + pos, f < 3 ? ' ' : '\r', n - pos);
            size_t flen = end ? (size_t)(end - (p + pos)) : n - pos;
            if (!field_prefix_ok(kinds[f], p + pos, flen))
                return -EPROTO;
            if (end == NULL)
                return more;
            if (!field_decode(kinds[f], p + pos, flen, outs[f]))
                return -EPROTO;
            pos += flen + 1;
        }
        cr = pos - 1;
    }
    if (cr + 1 >= n)
        return more;
    if (p[cr + 1] != '\n')
        return -EPROTO;

    if (proto == 2) {
        set_local(info, 1);
    } else {
        memset(info, 0, sizeof(*info));
        info->version = 1;
        int family = proto == 0 ? AF_INET : AF_INET6;
        set_addr(&info->src, family, addr[0], port[0]);
        set_addr(&info->dst, family, addr[1], port[1]);
    }
    return (ssize_t)(cr + 2);
}

/* ---- version 2: a 16-byte binary header, addresses, TLVs --------------------- */

static const unsigned char v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                         0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

/* Walks the TLVs in p[pos..total), of which p[0..len) has arrived: each is a
 * type byte, a 16-bit big-endian length and that many bytes, and the last
 * must end exactly at total. Returns -EPROTO as soon as one is seen to run
 * past total, else 0 (which is final only when len >= total). */
static int check_tlvs(const unsigned char *p, size_t len, size_t pos, size_t total)
{
    while (pos < total) {
        if (total - pos < 3)
            return -EPROTO;
        if (len < pos + 3)
            return 0;
        size_t vlen = (size_t)p[pos + 1] << 8 | p[pos + 2];
        if (vlen > total - pos - 3)
            return -EPROTO;
        pos += 3 + vlen;
    }
    return 0;
}

static uint16_t be16(const unsigned char *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

/* Parses a v2 header (p[0] is '\r'). */
static ssize_t parse_v2(const unsigned char *p, size_t len, ps__proxy_info *info)
{
    size_t have = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
    if (memcmp(p, v2_sig, have) != 0)
        return -EPROTO;
    if (len < 13)
        return 0;
    if (p[12] >> 4 != 2)
        return -EPROTO;
    unsigned cmd = p[12] & 0x0f; /* 0 LOCAL, 1 PROXY */
    if (cmd > 1)
        return -EPROTO;
    if (len < 14)
        return 0;

    int family = AF_UNSPEC;
    size_t addrs = 0;  /* bytes of the address block */
    bool tlvs = false; /* whether TLVs follow it where we know */
    if (cmd == 1) {
        switch (p[13]) {
        case 0x11: /* TCP over IPv4 */
            family = AF_INET;
            addrs = 12;
            tlvs = true;
            break;
        case 0x21: /* TCP over IPv6 */
            family = AF_INET6;
            addrs = 36;
            tlvs = true;
            break;
        case 0x31: /* UNIX stream */
        case 0x32: /* UNIX datagram */
            addrs = 216;
            tlvs = true;
            break;
        case 0x00: /* UNSPEC: the block's layout is unknown */
            break;
        default: /* UDP, or a value the spec does not define */
            return -EPROTO;
        }
    }
    /* LOCAL (a health check from the proxy itself): the spec says to discard
     * the block, the family byte included, so neither is looked at. */

    if (len < 16)
        return 0;
    size_t total = 16 + (size_t)be16(p + 14);
    if (total > PS__PROXY_V2_MAX || total - 16 < addrs)
        return -EPROTO;
    if (tlvs && check_tlvs(p, len, 16 + addrs, total) != 0)
        return -EPROTO;
    if (len < total)
        return 0;

    if (family == AF_UNSPEC) {
        set_local(info, 2);
    } else {
        memset(info, 0, sizeof(*info));
        info->version = 2;
        size_t a = family == AF_INET ? 4 : 16; /* one address */
        const unsigned char *ports = p + 16 + 2 * a;
        set_addr(&info->src, family, p + 16, be16(ports));
        set_addr(&info->dst, family, p + 16 + a, be16(ports + 2));
    }
    return (ssize_t)total;
}

ssize_t ps__proxy_parse(const void *buf, size_t len, unsigned accept, ps__proxy_info *info)
{
    const unsigned char *p = buf;
    if ((accept & (PS__PROXY_V1 | PS__PROXY_V2)) == 0)
        return -EINVAL;
    if (len == 0)
        return 0;
    /* The first byte tells the versions apart: 'P' or the signature's CR. */
    if (p[0] == 'P' && (accept & PS__PROXY_V1))
        return parse_v1(p, len, info);
    if (p[0] == v2_sig[0] && (accept & PS__PROXY_V2))
        return parse_v2(p, len, info);
    return -EPROTO;
}

/* ---- the CIDR list ---------------------------------------------------------- */

static bool is_sep(char c)
{
    return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Whether a and b (network order) agree on their first `bits` bits. */
static bool prefix_equal(const unsigned char *a, const unsigned char *b, unsigned bits)
{
    size_t whole = bits / 8;
    if (memcmp(a, b, whole) != 0)
        return false;
    unsigned rest = bits % 8;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return ((a[whole] ^ b[whole]) & mask) == 0;
}

/* Parses one entry s[0..len), "address" or "address/bits", into *e.
 * Returns 0, or PS_ECONFIG with the reason in err. */
static int parse_entry(const char *s, size_t len, ps__cidr *e, char *err, size_t errlen)
{
    char shown[PS__SHOW_BUF];
    ps__show(shown, s, len);
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    char text[INET6_ADDRSTRLEN];

    memset(e, 0, sizeof(*e));
    e->family = memchr(s, ':', alen) ? AF_INET6 : AF_INET;
    if (alen >= sizeof(text)) {
        ps__set_err(err, errlen, "\"%s\": expected an IPv4 or IPv6 address, with an optional /prefix-length",
                shown);
        return PS_ECONFIG;
    }
    memcpy(text, s, alen);
    text[alen] = '\0';
    if (inet_pton(e->family, text, e->addr) != 1) {
        ps__set_err(err, errlen, "\"%s\": expected an IPv4 or IPv6 address, with an optional /prefix-length",
                shown);
        return PS_ECONFIG;
    }

    const unsigned max = e->family == AF_INET ? 32 : 128;
    const char *fam = e->family == AF_INET ? "IPv4" : "IPv6";
    e->bits = max;
    if (slash) {
        const char *b = slash + 1;
        size_t blen = len - alen - 1;
        bool ok = blen >= 1 && blen <= 3;
        unsigned v = 0;
        for (size_t i = 0; ok && i < blen; i++) {
            ok = is_digit((unsigned char)b[i]);
            if (ok)
                v = v * 10 + (unsigned)(b[i] - '0');
        }
        if (!ok || v > max) {
            ps__set_err(err, errlen, "\"%s\": the prefix length after '/' must be a number from 0 to %u for an %s address",
                    shown, max, fam);
            return PS_ECONFIG;
        }
        e->bits = v;
    }

    /* "10.1.2.3/8" is most likely a typo for a host or for 10.0.0.0/8: say
     * which network it would be rather than guess. */
    unsigned char net[16] = {0};
    memcpy(net, e->addr, e->bits / 8);
    if (e->bits % 8)
        net[e->bits / 8] = (unsigned char)(e->addr[e->bits / 8] & (0xff << (8 - e->bits % 8)));
    if (memcmp(net, e->addr, sizeof(net)) != 0) {
        char net_text[INET6_ADDRSTRLEN];
        inet_ntop(e->family, net, net_text, sizeof(net_text));
        ps__set_err(err, errlen, "\"%s\": address bits are set past the /%u prefix (the %s network is %s/%u)",
                shown, e->bits, fam, net_text, e->bits);
        return PS_ECONFIG;
    }
    return 0;
}

int ps__cidr_parse(const char *text, ps__cidr_list *out, char *err, size_t errlen)
{
    out->count = 0;
    ps__set_err(err, errlen, "%s", "");
    const char *s = text ? text : "";
    while (*s) {
        if (is_sep(*s)) {
            s++;
            continue;
        }
        size_t len = 0;
        while (s[len] && !is_sep(s[len]))
            len++;
        if (out->count == PS__CIDR_MAX) {
            char shown[PS__SHOW_BUF];
            ps__show(shown, s, len);
            ps__set_err(err, errlen, "more than %d entries (the one past them is \"%s\")", PS__CIDR_MAX,
                    shown);
            out->count = 0;
            return PS_ECONFIG;
        }
        if (parse_entry(s, len, &out->entries[out->count], err, errlen) != 0) {
            out->count = 0;
            return PS_ECONFIG;
        }
        out->count++;
        s += len;
    }
    return 0;
}

bool ps__cidr_match(const ps__cidr_list *list, const struct sockaddr *addr)
{
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    /* The address as IPv6 (an IPv4 one mapped), and as IPv4 when it is one. */
    unsigned char v6[16];
    bool is_v4;
    if (addr == NULL)
        return false;
    if (addr->sa_family == AF_INET) {
        struct sockaddr_in sin;
        memcpy(&sin, addr, sizeof(sin));
        memcpy(v6, mapped, 12);
        memcpy(v6 + 12, &sin.sin_addr, 4);
        is_v4 = true;
    } else if (addr->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;
        memcpy(&sin6, addr, sizeof(sin6));
        memcpy(v6, &sin6.sin6_addr, 16);
        is_v4 = memcmp(v6, mapped, 12) == 0;
    } else {
        return false;
    }
    for (size_t i = 0; i < list->count; i++) {
        const ps__cidr *e = &list->entries[i];
        if (e->family == AF_INET ? is_v4 && prefix_equal(e->addr, v6 + 12, e->bits)
                                 : prefix_equal(e->addr, v6, e->bits))
            return true;
    }
    return false;
}
