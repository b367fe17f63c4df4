/*
 * poolcli: an interactive line client for poolsrv (and any line server).
 *
 * An asynchronous client (as .NET's BeginConnect / BeginSend /
 * BeginReceive) done with a non-blocking connect and one poll() loop: stdin and the socket
 * are watched together, so a reply is printed the moment it arrives even
 * while the user is typing, and typed lines are sent even while the server is
 * quiet. Self-contained: nothing of the server library is used.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PS_CLI_DEFAULT_HOST "127.0.0.1"
#define PS_CLI_DEFAULT_PORT "9050"
#define PS_CLI_DEFAULT_TIMEOUT_MS 5000
#define PS_CLI_IOBUF 16384
/* Stop reading stdin while this much is waiting for the socket: a server that
 * does not read must not make us buffer a whole pasted file. */
#define PS_CLI_OUT_HIGH 65536

typedef struct ps_cli_buf {
    char *data;
    size_t len; /* bytes queued */
    size_t off; /* bytes of data already written */
    size_t cap;
} ps_cli_buf;

static void ps_cli_die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void ps_cli_die(const char *fmt, ...)
{
    va_list ap;
    fputs("poolcli: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static void ps_cli_usage(FILE *f)
{
    fprintf(f,
            "usage: poolcli [-H HOST] [-p PORT] [-e LINE]... [-t TIMEOUT_MS]\n"
            "  -H HOST        server host or address (default %s)\n"
            "  -p PORT        server port (default %s)\n"
            "  -e LINE        send LINE (repeatable) instead of reading stdin,\n"
            "                 then send \"exit\" and print replies until the\n"
            "                 server closes\n"
            "  -t TIMEOUT_MS  connect timeout, and how long the server has to\n"
            "                 close once we have sent everything (default %d)\n"
            "  -V             print the version and exit\n"
            "  -h             this help\n"
            "Lines are sent with \\r\\n endings; replies are printed as they\n"
            "arrive. Exit status 0 when the server closes or stdin ends; 1 when\n"
            "the connection fails, or with -e when the server does not close in\n"
            "time; 2 on a usage error.\n",
            PS_CLI_DEFAULT_HOST, PS_CLI_DEFAULT_PORT, PS_CLI_DEFAULT_TIMEOUT_MS);
}

static int64_t ps_cli_now_ms(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        ps_cli_die("clock_gettime: %s", strerror(errno));
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ps_cli_buf_append(ps_cli_buf *b, const char *p, size_t n)
{
    if (b->off > 0 && b->off == b->len) {
        b->off = 0;
        b->len = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d)
            ps_cli_die("out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static size_t ps_cli_buf_pending(const ps_cli_buf *b)
{
    return b->len - b->off;
}

/* Writes all of p to fd (stdout): a terminal or pipe may take it in pieces. */
static int ps_cli_write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* stdout was left non-blocking by someone else: wait for it. */
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
                    return -errno;
                continue;
            }
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/*
 * Prints received bytes with "\r\n" shown as "\n", so output can be compared
 * with ordinary text tools. A '\r' at the end of one read may be the first
 * half of a "\r\n" split across reads, so it is held back until the next
 * read (or EOF) says what follows it.
 */
typedef struct ps_cli_printer {
    bool held_cr;
} ps_cli_printer;

static void ps_cli_print(ps_cli_printer *pr, const char *p, size_t n, bool eof)
{
    char out[PS_CLI_IOBUF + 2];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (pr->held_cr) {
            pr->held_cr = false;
            if (p[i] != '\n')
                out[o++] = '\r';
        }
        if (p[i] == '\r') {
            pr->held_cr = true;
            continue;
        }
        out[o++] = p[i];
    }
    if (eof && pr->held_cr) {
        pr->held_cr = false;
        out[o++] = '\r';
    }
    int rc = ps_cli_write_all(STDOUT_FILENO, out, o);
    if (rc < 0)
        ps_cli_die("stdout: %s", strerror(-rc));
}

/* "127.0.0.1:9050" or "[::1]:9050" for messages. */
static void ps_cli_addr_text(const struct sockaddr *sa, socklen_t salen, const char *host,
                             const char *port, char *out, size_t outlen)
{
    char h[NI_MAXHOST], s[NI_MAXSERV];
    if (sa && getnameinfo(sa, salen, h, sizeof h, s, sizeof s, NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
        if (sa->sa_family == AF_INET6)
            snprintf(out, outlen, "[%s]:%s", h, s);
        else
            snprintf(out, outlen, "%s:%s", h, s);
        return;
    }
    if (strchr(host, ':'))
        snprintf(out, outlen, "[%s]:%s", host, port);
    else
        snprintf(out, outlen, "%s:%s", host, port);
}

/*
 * Connects to one address without blocking past deadline_ms. Returns the
 * connected (non-blocking) socket, or -errno.
 */
static int ps_cli_connect_one(const struct addrinfo *ai, int64_t deadline_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -errno;
    int rc;
    do {
        rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    } while (rc < 0 && errno == EINTR);
    /* A connect interrupted by a signal goes on in the background (EINTR
     * then EALREADY); both mean "wait for it" like EINPROGRESS. */
    if (rc < 0 && errno != EINPROGRESS && errno != EALREADY) {
        int err = errno;
        close(fd);
        return -err;
    }
    while (rc < 0) {
        int64_t left = deadline_ms - ps_cli_now_ms();
        if (left <= 0) {
            close(fd);
            return -ETIMEDOUT;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            close(fd);
            return -err;
        }
        if (n == 0)
            continue; /* the deadline check above ends it */
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
            int err = errno;
            close(fd);
            return -err;
        }
        if (soerr != 0) {
            close(fd);
            return -soerr;
        }
        rc = 0;
    }
    int one = 1;
    /* Interactive lines are small: send each at once rather than wait for
     * Nagle to coalesce them with the next one. */
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* Tries every address of host:port within timeout_ms; dies with a message
 * naming the address when none accepts. */
static int ps_cli_connect(const char *host, const char *port, int timeout_ms)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: it hides ::1 on hosts without a global IPv6
     * address, and loopback is where this client is used most. An address
     * family the host lacks simply fails and the next address is tried. */
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        char txt[NI_MAXHOST + NI_MAXSERV + 4];
        ps_cli_addr_text(NULL, 0, host, port, txt, sizeof txt);
        ps_cli_die("connect %s: %s", txt, gai == EAI_SYSTEM ? strerror(errno) : gai_strerror(gai));
    }
    int64_t deadline = ps_cli_now_ms() + timeout_ms;
    int fd = -ETIMEDOUT;
    char txt[NI_MAXHOST + NI_MAXSERV + 4] = "";
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        ps_cli_addr_text(ai->ai_addr, ai->ai_addrlen, host, port, txt, sizeof txt);
        fd = ps_cli_connect_one(ai, deadline);
        if (fd >= 0)
            break;
    }
    freeaddrinfo(res);
    if (fd < 0)
        ps_cli_die("connect %s: %s", txt, strerror(-fd));
    return fd;
}

/*
 * Converts typed text to wire lines: every "\n" not already preceded by "\r"
 * becomes "\r\n". prev_cr carries the last byte's state across reads.
 */
static void ps_cli_queue_text(ps_cli_buf *out, const char *p, size_t n, bool *prev_cr)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n' && !*prev_cr) {
            ps_cli_buf_append(out, p + start, i - start);
            ps_cli_buf_append(out, "\r", 1);
            start = i;
        }
        *prev_cr = (p[i] == '\r');
    }
    ps_cli_buf_append(out, p + start, n - start);
}

static bool ps_cli_parse_int(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

/* The -e lines and the send queue live for the whole run; every exit path
 * (ps_cli_die included) frees them at exit. */
static const char **ps_cli_lines;
static ps_cli_buf ps_cli_out;

static void ps_cli_free_all(void)
{
    free(ps_cli_lines);
    free(ps_cli_out.data);
}

/* What the command line asks for. */
typedef struct ps_cli_args {
    const char *host, *port;
    long timeout_ms;
    const char **lines; /* -e lines, in order (a script); else stdin */
    size_t nlines;
    bool script;
} ps_cli_args;

/* Parses argv into *a. Returns -1 to go on, or the exit status (-h, -V, a
 * usage error). */
static int ps_cli_parse(int argc, char **argv, ps_cli_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "H:p:e:t:hV", longopts, NULL)) != -1) {
        long v;
        switch (opt) {
        case 'H':
            a->host = optarg;
            break;
        case 'p':
            if (!ps_cli_parse_int(optarg, 1, 65535, &v)) {
                fprintf(stderr, "poolcli: -p: not a port number: %s\n", optarg);
                return 2;
            }
            a->port = optarg;
            break;
        case 'e':
            a->lines[a->nlines++] = optarg;
            a->script = true;
            break;
        case 't':
            if (!ps_cli_parse_int(optarg, 1, INT_MAX, &v)) {
                fprintf(stderr, "poolcli: -t: not a timeout in ms: %s\n", optarg);
                return 2;
            }
            a->timeout_ms = v;
            break;
        case 'h':
            ps_cli_usage(stdout);
            return 0;
        case 'V':
            printf("poolcli %s\n", POOLSRV_VERSION_BUILT);
            return 0;
        default:
            ps_cli_usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "poolcli: unexpected argument: %s\n", argv[optind]);
        ps_cli_usage(stderr);
        return 2;
    }
    return -1;
}

/* One conversation: what there is to send (the script, or stdin as it
 * comes) goes out, every reply is printed, until the server closes. */
typedef struct ps_cli_session {
    int fd;
    long timeout_ms;
    bool script;
    ps_cli_printer pr;
    bool stdin_open;
    bool prev_cr, sent_any, last_nl;
    bool wr_shut;
    /* Set once nothing more will be sent: from then on the server has
     * timeout_ms to finish replying and close (a fixed deadline, so a
     * server that never stops talking cannot keep us forever). */
    int64_t idle_deadline;
} ps_cli_session;

/* Reads from the server and prints it. Returns 1 when the server closed
 * (its last bytes printed), else 0. */
static int ps_cli_from_server(ps_cli_session *s, char *buf, size_t cap)
{
    ssize_t r = read(s->fd, buf, cap);
    if (r < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            ps_cli_print(&s->pr, "", 0, true);
            ps_cli_die("read: %s", strerror(errno));
        }
        return 0;
    }
    ps_cli_print(&s->pr, buf, (size_t)r, r == 0);
    return r == 0;
}

/* Sends what is queued, as far as the socket takes it. */
static void ps_cli_to_server(ps_cli_session *s, ps_cli_buf *out)
{
    ssize_t w = send(s->fd, out->data + out->off, ps_cli_buf_pending(out), MSG_NOSIGNAL);
    if (w >= 0) {
        out->off += (size_t)w;
    } else if (errno == EPIPE) {
        /* The server closed its side (after "exit", say): what is left
         * unsent is moot, but its last replies may still be waiting to be
         * read and printed. */
        out->off = out->len;
        s->stdin_open = false;
        s->wr_shut = true;
        s->idle_deadline = ps_cli_now_ms() + s->timeout_ms;
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
        ps_cli_die("send: %s", strerror(errno));
    }
}

/* Queues what stdin gives, line endings made CRLF. */
static void ps_cli_from_stdin(ps_cli_session *s, ps_cli_buf *out, char *buf, size_t cap)
{
    ssize_t r = read(STDIN_FILENO, buf, cap);
    if (r < 0) {
        if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK)
            ps_cli_die("stdin: %s", strerror(errno));
    } else if (r == 0) {
        /* A last line without a newline is still a line. */
        if (s->sent_any && !s->last_nl)
            ps_cli_buf_append(out, s->prev_cr ? "\n" : "\r\n", s->prev_cr ? 1 : 2);
        s->stdin_open = false;
    } else {
        ps_cli_queue_text(out, buf, (size_t)r, &s->prev_cr);
        s->sent_any = true;
        s->last_nl = (buf[r - 1] == '\n');
    }
}

/* The conversation until the server closes (0), or the exit status when
 * it does not close within timeout_ms of our last byte. */
static int ps_cli_run(ps_cli_session *s, ps_cli_buf *out)
{
    char buf[PS_CLI_IOBUF];
    for (;;) {
        /* Nothing more to send: half-close so the server sees EOF, then
         * wait for it to finish replying and close. */
        if (!s->stdin_open && ps_cli_buf_pending(out) == 0 && !s->wr_shut) {
            if (shutdown(s->fd, SHUT_WR) != 0 && errno != ENOTCONN)
                ps_cli_die("shutdown: %s", strerror(errno));
            s->wr_shut = true;
            s->idle_deadline = ps_cli_now_ms() + s->timeout_ms;
        }
        struct pollfd pfd[2] = {
            {.fd = s->fd, .events = POLLIN | (ps_cli_buf_pending(out) ? POLLOUT : 0)},
            {.fd = -1, .events = POLLIN},
        };
        if (s->stdin_open && ps_cli_buf_pending(out) < PS_CLI_OUT_HIGH)
            pfd[1].fd = STDIN_FILENO;
        int wait_ms = -1;
        if (s->idle_deadline >= 0) {
            int64_t left = s->idle_deadline - ps_cli_now_ms();
            if (left <= 0) {
                fprintf(stderr, "poolcli: server did not close the connection within %ld ms\n",
                        s->timeout_ms);
                return s->script ? 1 : 0;
            }
            wait_ms = left > INT_MAX ? INT_MAX : (int)left;
        }
        int rc = poll(pfd, 2, wait_ms);
        if (rc < 0 && errno != EINTR)
            ps_cli_die("poll: %s", strerror(errno));
        if (rc <= 0)
            continue; /* the deadline check above decides */
        if ((pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) &&
            ps_cli_from_server(s, buf, sizeof buf))
            return 0;
        if ((pfd[0].revents & POLLOUT) && ps_cli_buf_pending(out) > 0)
            ps_cli_to_server(s, out);
        if (pfd[1].fd >= 0 && (pfd[1].revents & (POLLIN | POLLHUP | POLLERR)))
            ps_cli_from_stdin(s, out, buf, sizeof buf);
    }
}

int main(int argc, char **argv)
{
    ps_cli_args a = {.host = PS_CLI_DEFAULT_HOST, .port = PS_CLI_DEFAULT_PORT,
                     .timeout_ms = PS_CLI_DEFAULT_TIMEOUT_MS};
    a.lines = ps_cli_lines = calloc((size_t)argc, sizeof *a.lines);
    if (!a.lines)
        ps_cli_die("out of memory");
    if (atexit(ps_cli_free_all) != 0)
        ps_cli_die("atexit failed");
    int rc = ps_cli_parse(argc, argv, &a);
    if (rc >= 0)
        return rc;

    /* A server that closes while we write must give us EPIPE, not kill us. */
    if (signal(SIGPIPE, SIG_IGN) == SIG_ERR)
        ps_cli_die("signal: %s", strerror(errno));

    ps_cli_session s = {.fd = ps_cli_connect(a.host, a.port, (int)a.timeout_ms),
                        .timeout_ms = a.timeout_ms, .script = a.script,
                        .stdin_open = !a.script, .last_nl = true, .idle_deadline = -1};
    ps_cli_buf *const out = &ps_cli_out;
    if (a.script) {
        for (size_t i = 0; i < a.nlines; i++) {
            ps_cli_buf_append(out, a.lines[i], strlen(a.lines[i]));
            ps_cli_buf_append(out, "\r\n", 2);
        }
        ps_cli_buf_append(out, "exit\r\n", 6);
    }
    rc = ps_cli_run(&s, out);
    close(s.fd);
    return rc;
}
