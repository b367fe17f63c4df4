/* poolctl: sends one admin command to a running poolsrv and prints the reply. */
#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "poolsrv/error.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: poolctl [-H HOST] [-p PORT] [-t TIMEOUT_MS] COMMAND\n"
            "  COMMAND   threads | stats | \"stats conns\" | metrics | ready | agent | help\n"
            "            (ready: exit 1 unless the server answers READY)\n"
            "  -H HOST   admin address (default 127.0.0.1)\n"
            "  -p PORT   admin port (default 9051)\n"
            "  -t MS     give up after this long (default 5000)\n"
            "  -V        print the version and exit\n"
            "  -h        this help\n");
}

static int connect_to(const char *host, const char *port, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "%s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    snprintf(err, errlen, "connect %s:%s: no address", host, port);
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0)
            continue;
        int e = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            e = errno;
            if (e == EINPROGRESS) {
                struct pollfd p = {.fd = fd, .events = POLLOUT};
                int n = poll(&p, 1, timeout_ms);
                socklen_t sl = sizeof e;
                if (n == 0)
                    e = ETIMEDOUT;
                else if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &sl) < 0)
                    e = errno;
            }
        }
        if (e != 0) {
            snprintf(err, errlen, "connect %s:%s: %s", host, port, ps_strerror(-e));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    return fd;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *port = "9051";
    int timeout_ms = 5000;
    int opt;
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    while ((opt = getopt_long(argc, argv, "H:p:t:hV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'H': host = optarg; break;
        case 'p': port = optarg; break;
        case 't': timeout_ms = atoi(optarg); break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("poolctl %s\n", POOLSRV_VERSION_BUILT); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1 || timeout_ms <= 0) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[optind];
    char err[256];
    int fd = connect_to(host, port, timeout_ms, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "poolctl: %s\n", err);
        return 1;
    }
    char req[256];
    int n = snprintf(req, sizeof req, "%s\r\nquit\r\n", cmd);
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "poolctl: cannot send the command\n");
        close(fd);
        return 1;
    }
    /* The server closes after "quit": read until then, bounded by time. */
    int status = 0;
    char buf[4096];
    char first[8] = ""; /* the reply's first bytes, for `ready` */
    size_t nfirst = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r == 0) {
            fprintf(stderr, "poolctl: no reply within %d ms\n", timeout_ms);
            status = 1;
            break;
        }
        if (r < 0 && errno == EINTR)
            continue;
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got <= 0) {
            if (got < 0) {
                fprintf(stderr, "poolctl: %s\n", ps_strerror(-errno));
                status = 1;
            }
            break;
        }
        fwrite(buf, 1, (size_t)got, stdout);
        for (ssize_t i = 0; i < got && nfirst < sizeof first - 1; i++)
            first[nfirst++] = buf[i];
        if (memmem(buf, (size_t)got, "ERROR", 5) != NULL)
            status = 1;
    }
    close(fd);
    /* A probe (Kubernetes exec, a script) reads the exit status. */
    if (strcasecmp(cmd, "ready") == 0 && strcmp(first, "READY\r\n") != 0)
        status = 1;
    return status;
}
