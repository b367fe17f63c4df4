/*
 * poolcli and poolbench against a real poolsrv.
 *
 * The group setup starts poolsrv as a child process on port 0 and reads the
 * real port from its "listening on 127.0.0.1:PORT" log line; each test runs
 * a client program as another child with its output captured, and the group
 * teardown stops the server with SIGTERM. Every wait is bounded.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h> /* cmocka.h needs these first */
#include <cmocka.h>

#include "poolsrv/version.h"

#ifndef POOLSRV_BIN
#error "POOLSRV_BIN must name the poolsrv binary"
#endif
#ifndef POOLCLI_BIN
#error "POOLCLI_BIN must name the poolcli binary"
#endif
#ifndef POOLBENCH_BIN
#error "POOLBENCH_BIN must name the poolbench binary"
#endif
#ifndef PS_SOURCE_DIR
#error "PS_SOURCE_DIR must name the source tree (for conf/server.ini)"
#endif

#define SERVER_START_MS 10000
#define SERVER_STOP_MS 10000
#define RUN_MS 30000 /* any one client run */

typedef struct srv_state {
    pid_t pid;
    int err_fd; /* read end of the server's stderr */
    int port;
    pthread_t drain;
    bool drain_started;
    /* Last part of the server's log, for diagnostics; written by the drain
     * thread only until it is joined. */
    char tail[8192];
    size_t tail_len;
} srv_state;

static srv_state g_srv = {.pid = -1, .err_fd = -1};
static bool g_stop_failed; /* poolsrv did not exit 0 on SIGTERM */

typedef struct run_result {
    int status; /* exit status, or 128 + signal */
    char out[65536];
    size_t out_len;
    char err[16384];
    size_t err_len;
} run_result;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void tail_append(srv_state *s, const char *p, size_t n)
{
    if (n >= sizeof s->tail - 1) {
        p += n - (sizeof s->tail - 1);
        n = sizeof s->tail - 1;
    }
    if (s->tail_len + n >= sizeof s->tail) {
        size_t drop = s->tail_len + n - (sizeof s->tail - 1);
        memmove(s->tail, s->tail + drop, s->tail_len - drop);
        s->tail_len -= drop;
    }
    memcpy(s->tail + s->tail_len, p, n);
    s->tail_len += n;
    s->tail[s->tail_len] = '\0';
}

/* Keeps reading the server's stderr so a chatty log never fills the pipe and
 * blocks the server; ends at EOF, when the server has exited. */
static void *drain_main(void *arg)
{
    srv_state *s = arg;
    char buf[4096];
    for (;;) {
        ssize_t n = read(s->err_fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        tail_append(s, buf, (size_t)n);
    }
    return NULL;
}

/* Waits up to ms for pid to exit; returns its wait status or -1. */
static int wait_bounded(pid_t pid, int ms)
{
    int64_t deadline = now_ms() + ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return st;
        if (r < 0 && errno != EINTR)
            return -1;
        if (now_ms() >= deadline)
            return -1;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* A loopback port with nothing listening: bound, read back, closed. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &sl) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sa.sin_port);
}

/*
 * Runs argv with stdin fed from `input` (NULL: /dev/null) and stdout/stderr
 * captured, killing it after RUN_MS. Returns 0, or -1 when it could not be
 * run or did not finish in time.
 */
static int run_prog(char *const argv[], const char *input, run_result *r)
{
    memset(r, 0, sizeof *r);
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) != 0)
        return -1;
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* Only async-signal-safe calls until exec. */
        if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0 ||
            dup2(err[1], STDERR_FILENO) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (input) {
        /* Small inputs fit the pipe buffer: written at once, no deadlock. */
        size_t len = strlen(input);
        while (len > 0) {
            ssize_t w = write(in[1], input, len);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                break;
            input += w;
            len -= (size_t)w;
        }
    }
    close(in[1]);

    int64_t deadline = now_ms() + RUN_MS;
    bool out_open = true, err_open = true, timed_out = false;
    while (out_open || err_open) {
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pfd[2] = {{.fd = out_open ? out[0] : -1, .events = POLLIN},
                                {.fd = err_open ? err[0] : -1, .events = POLLIN}};
        int n = poll(pfd, 2, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        if (pfd[0].revents) {
            size_t room = sizeof r->out - 1 - r->out_len;
            char sink[4096];
            ssize_t k = read(out[0], room ? r->out + r->out_len : sink, room ? room : sizeof sink);
            if (k > 0 && room)
                r->out_len += (size_t)k;
            else if (k == 0 || (k < 0 && errno != EINTR))
                out_open = false;
        }
        if (pfd[1].revents) {
            size_t room = sizeof r->err - 1 - r->err_len;
            char sink[4096];
            ssize_t k = read(err[0], room ? r->err + r->err_len : sink, room ? room : sizeof sink);
            if (k > 0 && room)
                r->err_len += (size_t)k;
            else if (k == 0 || (k < 0 && errno != EINTR))
                err_open = false;
        }
    }
    close(out[0]);
    close(err[0]);
    r->out[r->out_len] = '\0';
    r->err[r->err_len] = '\0';
    if (timed_out)
        kill(pid, SIGKILL);
    int st = wait_bounded(pid, timed_out ? 5000 : RUN_MS);
    if (st < 0) {
        kill(pid, SIGKILL);
        wait_bounded(pid, 5000);
        return -1;
    }
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    if (timed_out) {
        print_message("%s did not finish within %d ms\n", argv[0], RUN_MS);
        return -1;
    }
    return 0;
}

static void dump(const char *what, const run_result *r)
{
    print_message("%s: status %d\n--- stdout ---\n%s\n--- stderr ---\n%s\n", what, r->status,
                  r->out, r->err);
}

/* ---- the server --------------------------------------------------------- */

static int server_start(void **state)
{
    (void)state;
    int errp[2];
    if (pipe2(errp, O_CLOEXEC) != 0)
        return -1;
    char *const argv[] = {POOLSRV_BIN, "-c", PS_SOURCE_DIR "/conf/server.ini", "-o",
                          "server.port=0", "-o", "admin.port=0", NULL};
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (dup2(devnull, STDIN_FILENO) < 0 || dup2(devnull, STDOUT_FILENO) < 0 ||
            dup2(errp[1], STDERR_FILENO) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    close(devnull);
    close(errp[1]);
    g_srv.pid = pid;
    g_srv.err_fd = errp[0];

    /* Read the log until the listening line, at most SERVER_START_MS. */
    int64_t deadline = now_ms() + SERVER_START_MS;
    while (g_srv.port == 0) {
        int64_t left = deadline - now_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {.fd = g_srv.err_fd, .events = POLLIN};
        int n = poll(&pfd, 1, (int)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        char buf[1024];
        ssize_t k = read(g_srv.err_fd, buf, sizeof buf);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* the server exited */
        tail_append(&g_srv, buf, (size_t)k);
        const char *p = strstr(g_srv.tail, "listening on 127.0.0.1:");
        if (p && strchr(p, '\n'))
            g_srv.port = atoi(p + strlen("listening on 127.0.0.1:"));
    }
    if (g_srv.port <= 0) {
        print_message("poolsrv did not report its port within %d ms; its log:\n%s\n",
                      SERVER_START_MS, g_srv.tail);
        return -1;
    }
    if (pthread_create(&g_srv.drain, NULL, drain_main, &g_srv) != 0)
        return -1;
    g_srv.drain_started = true;
    return 0;
}

static int server_stop(void **state)
{
    (void)state;
    int rc = 0;
    if (g_srv.pid > 0) {
        kill(g_srv.pid, SIGTERM);
        int st = wait_bounded(g_srv.pid, SERVER_STOP_MS);
        if (st < 0) {
            print_message("poolsrv ignored SIGTERM for %d ms; killing it\n", SERVER_STOP_MS);
            kill(g_srv.pid, SIGKILL);
            wait_bounded(g_srv.pid, 5000);
            rc = -1;
            g_stop_failed = true;
        } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            /* A group teardown that fails fails the run: a crash or a
             * sanitizer exit at stop is a defect like any other. */
            print_message("poolsrv exited with status 0x%x after SIGTERM\n", st);
            rc = -1;
            g_stop_failed = true;
        }
        g_srv.pid = -1;
    }
    if (g_srv.drain_started) {
        pthread_join(g_srv.drain, NULL);
        g_srv.drain_started = false;
    }
    if (g_srv.err_fd >= 0)
        close(g_srv.err_fd);
    g_srv.err_fd = -1;
    return rc;
}

/* ---- helpers for the tests ---------------------------------------------- */

/* The number after "name": in a flat JSON object; fails the test if absent. */
static double json_num(const char *json, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "\"%s\":", name);
    const char *p = strstr(json, key);
    if (!p)
        fail_msg("no field %s in %s", name, json);
    char *end;
    double v = strtod(p + strlen(key), &end);
    if (end == p + strlen(key))
        fail_msg("field %s is not a number in %s", name, json);
    return v;
}

static void port_text(char *buf, size_t len, int port)
{
    snprintf(buf, len, "%d", port);
}

/* ---- poolcli ------------------------------------------------------------ */

static void test_cli_script_lines(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    char *const argv[] = {POOLCLI_BIN, "-p", port, "-e", "hello", "-e", "world", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status != 0 || !strstr(r.out, "Welcome to my server\n") || !strstr(r.out, "\nhello\n") ||
        !strstr(r.out, "\nworld\n"))
        dump("poolcli -e hello -e world", &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "Welcome to my server\n"));
    /* Replies in order, after the greeting; "\r\n" shown as "\n". */
    const char *h = strstr(r.out, "\nhello\n");
    assert_non_null(h);
    assert_non_null(strstr(h, "\nworld\n"));
    assert_null(strchr(r.out, '\r'));
}

static void test_cli_connect_refused(void **state)
{
    (void)state;
    int dead = dead_port();
    assert_true(dead > 0);
    char port[16];
    port_text(port, sizeof port, dead);
    char *const argv[] = {POOLCLI_BIN, "-p", port, "-t", "3000", "-e", "hello", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    char want[64];
    snprintf(want, sizeof want, "poolcli: connect 127.0.0.1:%d: ", dead);
    if (r.status == 0 || !strstr(r.err, want))
        dump("poolcli to a dead port", &r);
    assert_int_not_equal(r.status, 0);
    assert_non_null(strstr(r.err, want));
    assert_non_null(strstr(r.err, "refused"));
    assert_int_equal(r.out_len, 0);
}

static void test_cli_stdin_lines(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    char *const argv[] = {POOLCLI_BIN, "-p", port, NULL};
    run_result r;
    assert_int_equal(run_prog(argv, "a\nb\n", &r), 0);
    if (r.status != 0 || !strstr(r.out, "\na\nb\n"))
        dump("poolcli < a b", &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "Welcome to my server\n"));
    assert_non_null(strstr(r.out, "\na\nb\n"));
}

/* A name resolving to ::1 and 127.0.0.1 (in some order) still reaches a
 * server on 127.0.0.1 only: every address is tried. */
static void test_cli_localhost_name(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    char *const argv[] = {POOLCLI_BIN, "-H", "localhost", "-p", port, "-e", "hi", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status != 0 || !strstr(r.out, "\nhi\n"))
        dump("poolcli -H localhost", &r);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "\nhi\n"));
}

static void test_cli_bad_option(void **state)
{
    (void)state;
    char *const argv[] = {POOLCLI_BIN, "-p", "notaport", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "-p"));
}

/* --help and -h print the usage on stdout and exit 0, for every program;
 * an unknown option is a usage error (2) with the usage on stderr. */
static void test_help_option(void **state)
{
    (void)state;
    const char *progs[] = {POOLCLI_BIN, POOLBENCH_BIN, POOLSRV_BIN, POOLCTL_BIN};
    for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
        for (int form = 0; form < 2; form++) {
            char *const argv[] = {(char *)progs[i], form ? "--help" : "-h", NULL};
            run_result r;
            assert_int_equal(run_prog(argv, NULL, &r), 0);
            if (r.status != 0 || !strstr(r.out, "usage:"))
                dump(progs[i], &r);
            assert_int_equal(r.status, 0);
            assert_non_null(strstr(r.out, "usage:"));
        }
        char *const bad[] = {(char *)progs[i], "--no-such-option", NULL};
        run_result r;
        assert_int_equal(run_prog(bad, NULL, &r), 0);
        assert_int_equal(r.status, 2);
        assert_non_null(strstr(r.err, "usage:"));
    }
}

/* --version and -V print "NAME VERSION" (the library's version) on stdout
 * and exit 0, for every program. */
static void test_version_option(void **state)
{
    (void)state;
    const char *progs[] = {POOLCLI_BIN, POOLBENCH_BIN, POOLSRV_BIN, POOLCTL_BIN};
    for (size_t i = 0; i < sizeof progs / sizeof progs[0]; i++) {
        const char *name = strrchr(progs[i], '/') ? strrchr(progs[i], '/') + 1 : progs[i];
        char want[64];
        snprintf(want, sizeof want, "%s %s\n", name, ps_version());
        for (int form = 0; form < 2; form++) {
            char *const argv[] = {(char *)progs[i], form ? "--version" : "-V", NULL};
            run_result r;
            assert_int_equal(run_prog(argv, NULL, &r), 0);
            if (r.status != 0 || strcmp(r.out, want) != 0)
                dump(progs[i], &r);
            assert_int_equal(r.status, 0);
            assert_string_equal(r.out, want);
        }
    }
    assert_string_equal(ps_version(), POOLSRV_VERSION_STRING);
}

/* ---- poolbench ---------------------------------------------------------- */

static void test_bench_json(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    char *const argv[] = {POOLBENCH_BIN, "-p", port, "--json", "-c", "20", "-t", "2",
                          "-d", "1", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status != 0 || !strstr(r.out, "\"errors\":0,"))
        dump("poolbench --json -c 20 -t 2 -d 1", &r);
    assert_int_equal(r.status, 0);
    assert_true(r.out[0] == '{');
    assert_non_null(strstr(r.out, "}\n"));
    assert_true(json_num(r.out, "connections") == 20);
    assert_true(json_num(r.out, "connections_served") == 20);
    assert_true(json_num(r.out, "errors") == 0);
    assert_true(json_num(r.out, "rps") > 0);
    assert_true(json_num(r.out, "requests") > 0);
    assert_true(json_num(r.out, "duration_s") == 1);
    double p50 = json_num(r.out, "p50_us"), p90 = json_num(r.out, "p90_us");
    double p99 = json_num(r.out, "p99_us"), p999 = json_num(r.out, "p999_us");
    double max = json_num(r.out, "max_us");
    assert_true(p50 > 0);
    assert_true(p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max);
    assert_true(json_num(r.out, "replies_min") >= 1);
}

/* With --greeting the greeting is read before timing starts: no line
 * arrives unasked, so every timed reply is an echo. */
static void test_bench_greeting(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    char *const argv[] = {POOLBENCH_BIN, "-p", port, "--json", "--greeting", "-c", "8",
                          "-t", "1", "-d", "1", "-P", "4", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status != 0)
        dump("poolbench --greeting -P 4", &r);
    assert_int_equal(r.status, 0);
    assert_true(json_num(r.out, "connections_served") == 8);
    assert_true(json_num(r.out, "errors") == 0);
    assert_true(json_num(r.out, "unsolicited_lines") == 0);
    assert_true(json_num(r.out, "pipeline") == 4);
}

/* A request longer than max_line gets "ERROR line too long" and a close:
 * each connection ends with an error, the run itself still completes. */
static void test_bench_error_reply(void **state)
{
    (void)state;
    char port[16];
    port_text(port, sizeof port, g_srv.port);
    static char msg[20001];
    memset(msg, 'x', sizeof msg - 1);
    char *const argv[] = {POOLBENCH_BIN, "-p", port, "--json", "--greeting", "-c", "4",
                          "-t", "1", "-d", "1", "-m", msg, NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status != 0 || !strstr(r.out, "\"errors\":4,"))
        dump("poolbench with a too-long line", &r);
    assert_int_equal(r.status, 0);
    assert_true(json_num(r.out, "connections_connected") == 4);
    assert_true(json_num(r.out, "errors") == 4);
    assert_true(json_num(r.out, "connections_served") == 0);
    assert_true(json_num(r.out, "requests") == 0);
}

static void test_bench_connect_refused(void **state)
{
    (void)state;
    int dead = dead_port();
    assert_true(dead > 0);
    char port[16];
    port_text(port, sizeof port, dead);
    char *const argv[] = {POOLBENCH_BIN, "-p", port, "-c", "5", "-t", "1", "-d", "1", NULL};
    run_result r;
    assert_int_equal(run_prog(argv, NULL, &r), 0);
    if (r.status == 0 || !strstr(r.err, "no connection could be made"))
        dump("poolbench to a dead port", &r);
    assert_int_not_equal(r.status, 0);
    assert_non_null(strstr(r.err, "no connection could be made"));
    assert_non_null(strstr(r.err, "refused"));
}

int main(void)
{
    /* A client killed by SIGPIPE would show as a failed run, not our crash. */
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli_script_lines),
        cmocka_unit_test(test_cli_connect_refused),
        cmocka_unit_test(test_cli_stdin_lines),
        cmocka_unit_test(test_cli_localhost_name),
        cmocka_unit_test(test_cli_bad_option),
        cmocka_unit_test(test_help_option),
        cmocka_unit_test(test_version_option),
        cmocka_unit_test(test_bench_json),
        cmocka_unit_test(test_bench_greeting),
        cmocka_unit_test(test_bench_error_reply),
        cmocka_unit_test(test_bench_connect_refused),
    };
    int failed = cmocka_run_group_tests(tests, server_start, server_stop);
    /* cmocka reports a failed group teardown but does not count it. */
    return failed != 0 || g_stop_failed ? 1 : 0;
}
