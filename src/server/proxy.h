#ifndef POOLSRV_SERVER_PROXY_H
#define POOLSRV_SERVER_PROXY_H

/*
 * The PROXY protocol header a trusted load balancer sends before the client's
 * bytes (HAProxy's proxy-protocol.txt, versions 1 and 2), and the CIDR list
 * saying which peers are trusted to send one. Pure functions over buffers: no
 * I/O, no allocation, no static state. Shared between the server's files; not
 * part of the public API.
 */

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* Which versions ps__proxy_parse accepts (bits, combined with |). */
enum { PS__PROXY_V1 = 1, PS__PROXY_V2 = 2 };

/* The longest v1 header, CRLF included ("PROXY UNKNOWN <v6> <v6> 65535
 * 65535\r\n"). The spec's own limit: no CRLF in 107 bytes is an error. */
#define PS__PROXY_V1_MAX 107
/* The longest v2 header accepted, the 16 fixed bytes included: room for the
 * largest address block (AF_UNIX, 216 bytes) and the TLVs load balancers send
 * (SSL details, unique ID up to 128 bytes, AWS/Azure IDs) with a wide margin.
 * The format allows 16 + 65535; a longer header is refused. */
#define PS__PROXY_V2_MAX (16 + 2048)
/* The most bytes a caller buffers before ps__proxy_parse decides. */
#define PS__PROXY_MAX PS__PROXY_V2_MAX

typedef struct ps__proxy_info {
    int version; /* 1 or 2 */
    /* No client address was sent (v1 UNKNOWN, v2 LOCAL, v2 PROXY over
     * UNSPEC or UNIX): keep the connection's own addresses. src and dst are
     * then zero (ss_family AF_UNSPEC). */
    bool local;
    struct sockaddr_storage src; /* the client: sockaddr_in or sockaddr_in6 */
    struct sockaddr_storage dst; /* the address the client connected to */
} ps__proxy_info;

/* Parses a PROXY header at the start of buf[0..len) of a version in `accept`.
 * Returns the header's length (> 0, bytes after it are not looked at) and
 * fills *info when a whole valid header is there; 0 when the bytes so far
 * could still start one (more are needed; never past PS__PROXY_MAX bytes);
 * -EPROTO as soon as they cannot, *info untouched but for success; -EINVAL
 * when accept holds no version. */
ssize_t ps__proxy_parse(const void *buf, size_t len, unsigned accept, ps__proxy_info *info);

/* One range of addresses: the first `bits` bits of addr. */
#define PS__CIDR_MAX 32
typedef struct ps__cidr {
    int family;             /* AF_INET or AF_INET6 */
    unsigned bits;          /* prefix length: 0..32 or 0..128 */
    unsigned char addr[16]; /* network byte order, bits past the prefix 0;
                             * AF_INET uses the first 4 */
} ps__cidr;

typedef struct ps__cidr_list {
    size_t count;
    ps__cidr entries[PS__CIDR_MAX];
} ps__cidr_list;

/* Parses "10.0.0.0/8, 127.0.0.1 ::1/128" (entries separated by commas and/or
 * white space; a bare address is one host) into *out; "" gives an empty list.
 * Returns 0, or PS_ECONFIG with a message naming the bad entry in err (when
 * err is not NULL) and out->count 0, so a failed list matches nothing. */
int ps__cidr_parse(const char *text, ps__cidr_list *out, char *err, size_t errlen);

/* Whether addr (AF_INET or AF_INET6) lies in one of list's ranges. An IPv4
 * address is the same whether it comes as AF_INET or IPv4-mapped IPv6
 * (::ffff:a.b.c.d): it matches IPv4 ranges and the IPv6 ranges holding its
 * mapped form. Other families match nothing. */
bool ps__cidr_match(const ps__cidr_list *list, const struct sockaddr *addr);

#endif
