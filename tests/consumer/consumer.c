/*
 * A program built against an installed poolsrv, as another project would
 * build it (tests/consumer/run): it serves an upper-casing handler on a free
 * loopback port, talks to it, and checks the reply and the version.
 */
#define _POSIX_C_SOURCE 200809L /* getaddrinfo and friends */

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <poolsrv/poolsrv.h>

static int upper_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)ud;
    char out[256];
    size_t n = line->len < sizeof out - 2 ? line->len : sizeof out - 2;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)toupper((unsigned char)line->data[i]);
    out[n++] = '\r';
    out[n++] = '\n';
    return ps_conn_send(conn, out, n) == 0 ? PS_CONTINUE : PS_CLOSE;
}

static const ps_handler upper = {.on_line = upper_line};

/* Reads until the reply holds want or the peer closes (bounded by the
 * socket's receive timeout). */
static int read_until(int fd, char *buf, size_t cap, const char *want)
{
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t r = recv(fd, buf + len, cap - 1 - len, 0);
        if (r <= 0)
            break;
        len += (size_t)r;
        buf[len] = '\0';
        if (strstr(buf, want) != NULL)
            return 0;
    }
    buf[len] = '\0';
    return -1;
}

int main(void)
{
    if (strcmp(ps_version(), POOLSRV_VERSION_STRING) != 0) {
        fprintf(stderr, "library %s, headers %s\n", ps_version(), POOLSRV_VERSION_STRING);
        return 1;
    }
    ps_log_set_level(PS_LOG_WARN);
    ps_config cfg;
    ps_config_defaults(&cfg);
    char err[256];
    if (ps_config_set(&cfg, "server", "port", "0", err, sizeof err) != 0 ||
        ps_config_set(&cfg, "admin", "enabled", "false", err, sizeof err) != 0 ||
        ps_config_set(&cfg, "pool", "workers", "2", err, sizeof err) != 0) {
        fprintf(stderr, "config: %s\n", err);
        return 1;
    }
    ps_server *srv;
    if (ps_server_create(&srv, &cfg, &upper, NULL, err, sizeof err) != 0 ||
        ps_server_start(srv, err, sizeof err) != 0) {
        fprintf(stderr, "server: %s\n", err);
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(ps_server_port(srv))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[1024];
    /* This handler sends no greeting: the first line is the reply. */
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
             send(fd, "hello, poolsrv\n", 15, 0) == 15 &&
             read_until(fd, buf, sizeof buf, "HELLO, POOLSRV\r\n") == 0;
    if (fd >= 0)
        close(fd);
    ps_server_destroy(srv);
    if (!ok) {
        fprintf(stderr, "no upper-cased reply; got \"%s\"\n", buf);
        return 1;
    }
    printf("poolsrv %s: HELLO, POOLSRV\n", ps_version());
    return 0;
}
