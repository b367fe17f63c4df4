/* The server over loopback: echo protocol, limits, admin, lifecycle. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "gate.h"
#include "poolsrv/log.h"
#include "poolsrv/server.h"
#include "support.h"

#define T_MS 5000 /* generous bound for any single wait */
/* Admin clients served at once (README, Admin commands). */
#define ADMIN_SLOTS 64

static const char greeting[] = "Welcome to my server\r\n";

/* Polls the admin `threads` reply until STAT name == want or T_MS passes;
 * returns the last value seen. */
static long long wait_stat(ps_server *srv, const char *cmd, const char *name, long long want)
{
    char reply[4096];
    long long v = -1;
    int64_t deadline = t_now_ms() + T_MS;
    do {
        if (t_admin(ps_server_admin_port(srv), cmd, reply, sizeof reply) > 0)
            v = t_stat(reply, name);
        if (v == want)
            break;
        usleep(10 * 1000);
    } while (t_now_ms() < deadline);
    return v;
}

static void expect_line(int fd, const char *want)
{
    char line[1024];
    ssize_t r = t_read_line(fd, line, sizeof line, T_MS);
    assert_true(r > 0);
    assert_string_equal(line, want);
}

static void test_greeting_and_echo(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    assert_int_not_equal(ps_server_port(srv), 0);

    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    expect_line(fd, greeting);
    assert_int_equal(t_send_str(fd, "hello\r\n"), 0);
    expect_line(fd, "hello\r\n");
    /* The reply keeps the ending the client used. */
    assert_int_equal(t_send_str(fd, "bare newline\n"), 0);
    expect_line(fd, "bare newline\n");
    /* Binary safe: NUL bytes come back. */
    const char bin[] = {'a', '\0', 'b', '\r', '\n'};
    assert_int_equal(t_write_all(fd, bin, sizeof bin), 0);
    char got[sizeof bin];
    assert_int_equal(t_read_exact(fd, got, sizeof got, T_MS), 0);
    assert_memory_equal(got, bin, sizeof bin);
    /* A line split across writes is one line. */
    char reply[4096];
    assert_true(t_admin(ps_server_admin_port(srv), "stats", reply, sizeof reply) > 0);
    long long in = t_stat(reply, "bytes_in");
    assert_int_equal(t_send_str(fd, "spl"), 0);
    /* The server has read the first part alone before the rest is sent. */
    assert_int_equal(wait_stat(srv, "stats", "bytes_in", in + 3), in + 3);
    assert_int_equal(t_send_str(fd, "it\r\n"), 0);
    expect_line(fd, "split\r\n");
    close(fd);
    ps_server_destroy(srv);
}

static void test_close_commands(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    const char *closers[] = {"exit\r\n", "EXIT\r\n", "Exit\n", "\r\n", "\n"};
    for (size_t i = 0; i < sizeof closers / sizeof closers[0]; i++) {
        int fd = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fd >= 0);
        assert_int_equal(t_send_str(fd, "before\r\n"), 0);
        expect_line(fd, "before\r\n");
        assert_int_equal(t_send_str(fd, closers[i]), 0);
        /* Closed with nothing more sent: not echoed. */
        assert_int_equal(t_wait_eof(fd, T_MS), 0);
        close(fd);
    }
    /* "exit" inside a longer line is just a line. */
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "exit now\r\n"), 0);
    expect_line(fd, "exit now\r\n");
    close(fd);
    ps_server_destroy(srv);
}

static void test_no_greeting_when_empty(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.greeting[0] = '\0';
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "first\n"), 0);
    expect_line(fd, "first\n");
    close(fd);
    ps_server_destroy(srv);
}

static void test_line_too_long(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_line = 64;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);

    char line[80];
    /* Exactly max_line is accepted. */
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    memset(line, 'x', 64);
    memcpy(line + 64, "\r\n", 3);
    assert_int_equal(t_send_str(fd, line), 0);
    expect_line(fd, line);
    /* max_line + 1 is refused and the connection closed. */
    memset(line, 'y', 65);
    memcpy(line + 65, "\r\n", 3);
    assert_int_equal(t_send_str(fd, line), 0);
    expect_line(fd, "ERROR line too long\r\n");
    assert_true(t_wait_eof(fd, T_MS) >= 0);
    close(fd);

    /* A long line with no newline at all is cut off too. */
    fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    char big[10000];
    memset(big, 'z', sizeof big);
    assert_int_equal(t_write_all(fd, big, sizeof big), 0);
    expect_line(fd, "ERROR line too long\r\n");
    close(fd);

    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.lines_too_long, 2);
    ps_server_destroy(srv);
}

static void test_pipelined_lines_in_order(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    enum { N = 1000 };
    char *req = malloc(N * 16);
    assert_non_null(req);
    size_t len = 0;
    for (int i = 0; i < N; i++)
        len += (size_t)sprintf(req + len, "line %d\r\n", i);
    assert_int_equal(t_write_all(fd, req, len), 0);
    char *resp = malloc(len);
    assert_non_null(resp);
    assert_int_equal(t_read_exact(fd, resp, len, T_MS), 0);
    assert_memory_equal(resp, req, len);
    free(req);
    free(resp);
    close(fd);
    ps_server_destroy(srv);
}

/* A partial line stays the client's own while the worker that read it
 * serves someone else: in event mode a worker lends its scratch buffers
 * to the connection it serves and must copy what is left out of them
 * before it lets go. One worker in event mode, so the same scratch buffer
 * serves both clients; two in the others, where a worker holds its client. */
static void test_partial_line_survives_other_clients(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = t_dispatch == PS_DISPATCH_EVENT ? 1 : 2;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int a = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(a >= 0);
    assert_int_equal(t_send_str(a, "hel"), 0);
    /* Until the server has read the three bytes (then, in event mode, the
     * connection waits in epoll with them). */
    ps_server_stats st;
    int64_t end = t_now_ms() + T_MS;
    do {
        ps_server_get_stats(srv, &st);
        if (st.bytes_in >= 3)
            break;
        poll(NULL, 0, 5);
    } while (t_now_ms() < end);
    assert_true(st.bytes_in >= 3);

    int b = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(b >= 0);
    static const char other[] = "0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    assert_int_equal(t_send_str(b, other), 0);
    char buf[128];
    assert_true(t_read_line(b, buf, sizeof buf, T_MS) > 0);
    assert_string_equal(buf, other);

    assert_int_equal(t_send_str(a, "lo\r\n"), 0);
    assert_true(t_read_line(a, buf, sizeof buf, T_MS) > 0);
    assert_string_equal(buf, "hello\r\n");
    close(a);
    close(b);
    ps_server_destroy(srv);
}

static void test_half_close_gets_every_reply(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "a\nb\r\nc\n"), 0);
    assert_int_equal(shutdown(fd, SHUT_WR), 0);
    expect_line(fd, "a\n");
    expect_line(fd, "b\r\n");
    expect_line(fd, "c\n");
    assert_int_equal(t_wait_eof(fd, T_MS), 0);
    close(fd);
    ps_server_destroy(srv);
}

/* A handler whose "big" reply (4 MiB, more than the socket buffers take)
 * closes the connection: it counts the lines it is given. */
enum { BIG_REPLY = 4 * 1024 * 1024 };

static atomic_int big_lines;

static int big_on_line(ps_conn *c, const ps_line *line, void *ud)
{
    (void)ud;
    atomic_fetch_add(&big_lines, 1);
    if (line->len == 3 && memcmp(line->data, "big", 3) == 0) {
        static char reply[BIG_REPLY];
        memset(reply, 'x', sizeof reply - 1);
        reply[sizeof reply - 1] = '\n';
        ps_conn_send(c, reply, sizeof reply);
        return PS_CLOSE;
    }
    ps_conn_send(c, "?\n", 2);
    return PS_CONTINUE;
}

/* The handler asks to close with a reply the client is slow to take: the
 * reply is written in full, then the connection closes, and the line sent
 * after the closing one never reaches the handler (even though the reply
 * had to wait for room while that line was already in hand). */
static void test_close_after_a_reply_that_waits(void **state)
{
    (void)state;
    static const ps_handler big = {.on_line = big_on_line};
    ps_config cfg;
    t_config(&cfg);
    atomic_store(&big_lines, 0);
    ps_server *srv = NULL;
    assert_int_equal(ps_server_create(&srv, &cfg, &big, NULL, NULL, 0), 0);
    char err[256];
    assert_int_equal(ps_server_start(srv, err, sizeof err), 0);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "big\nafter\n"), 0);
    /* The handler has run: its reply fills the socket buffers and waits. */
    for (int64_t until = t_now_ms() + T_MS; atomic_load(&big_lines) < 1 && t_now_ms() < until;)
        usleep(1000);
    assert_int_equal(atomic_load(&big_lines), 1);
    static char in[BIG_REPLY + 64];
    size_t got = 0;
    int end = -ETIMEDOUT;
    int64_t deadline = t_now_ms() + T_MS;
    while (got < sizeof in && t_now_ms() < deadline) {
        if (!t_readable(fd, T_MS))
            break;
        ssize_t r = recv(fd, in + got, sizeof in - got, 0);
        if (r <= 0) {
            end = r == 0 ? 0 : -errno;
            break;
        }
        got += (size_t)r;
    }
    assert_int_equal(end, 0);
    assert_int_equal(got, BIG_REPLY);
    assert_int_equal(in[BIG_REPLY - 1], '\n');
    assert_int_equal(atomic_load(&big_lines), 1);
    close(fd);
    ps_server_destroy(srv);
}

/* 30 clients, 25 workers: 25 are greeted at once, 5 wait in the queue, and
 * one of those is served as soon as a served client leaves. */
static void test_clients_wait_for_a_worker(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_CONNECTION)
        skip(); /* only there does a client hold a worker */
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 25;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);

    int served[25], waiting[5];
    for (int i = 0; i < 25; i++) {
        served[i] = t_connect_greeted(port, T_MS);
        assert_true(served[i] >= 0);
    }
    for (int i = 0; i < 5; i++) {
        waiting[i] = t_connect(port);
        assert_true(waiting[i] >= 0);
    }
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 5), 5);
    assert_int_equal(wait_stat(srv, "threads", "available_threads", 0), 0);
    for (int i = 0; i < 5; i++)
        assert_false(t_readable(waiting[i], 50)); /* no worker: no greeting */

    /* A served client leaves; a waiting one gets a worker. */
    assert_int_equal(t_send_str(served[0], "exit\r\n"), 0);
    close(served[0]);
    int greeted = -1;
    int64_t deadline = t_now_ms() + T_MS;
    while (greeted < 0 && t_now_ms() < deadline) {
        for (int i = 0; i < 5 && greeted < 0; i++) {
            if (t_readable(waiting[i], 10)) {
                expect_line(waiting[i], greeting);
                greeted = i;
            }
        }
    }
    assert_true(greeted >= 0);
    assert_int_equal(t_send_str(waiting[greeted], "late\r\n"), 0);
    expect_line(waiting[greeted], "late\r\n");
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 4), 4);

    for (int i = 1; i < 25; i++)
        close(served[i]);
    for (int i = 0; i < 5; i++)
        close(waiting[i]);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    assert_int_equal(wait_stat(srv, "threads", "available_threads", 25), 25);
    ps_server_destroy(srv);
}

static void test_queue_full_rejects_busy(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_CONNECTION)
        skip(); /* there the queue holds connections, not ready input */
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 2;
    cfg.queue_capacity = 2;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    int fds[4];
    for (int i = 0; i < 2; i++) {
        fds[i] = t_connect_greeted(port, T_MS);
        assert_true(fds[i] >= 0);
    }
    for (int i = 2; i < 4; i++) {
        fds[i] = t_connect(port);
        assert_true(fds[i] >= 0);
    }
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 2), 2);
    int extra = t_connect(port);
    assert_true(extra >= 0);
    expect_line(extra, "ERROR server busy\r\n");
    assert_true(t_wait_eof(extra, T_MS) >= 0);
    close(extra);

    char reply[4096];
    assert_true(t_admin(ps_server_admin_port(srv), "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "rejected_busy"), 1);
    assert_int_equal(t_stat(reply, "rejected_connections"), 1);
    assert_int_equal(t_stat(reply, "jobs_rejected"), 1);
    /* The clients already in are unaffected. */
    assert_int_equal(t_send_str(fds[0], "still here\n"), 0);
    expect_line(fds[0], "still here\n");
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    ps_server_destroy(srv);
}

static void test_max_connections(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_connections = 3;
    cfg.max_connections_wait_ms = 0; /* refused at once */
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
    }
    int extra = t_connect(ps_server_port(srv));
    assert_true(extra >= 0);
    expect_line(extra, "ERROR too many connections\r\n");
    close(extra);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.rejected_max, 1);
    assert_int_equal(st.slot_waits, 0);
    assert_int_equal(st.curr_connections, 3);
    /* A slot frees: the next client is served. */
    close(fds[0]);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 2), 2);
    fds[0] = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fds[0] >= 0);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    ps_server_destroy(srv);
}

/* A client that closes a connection and at once opens another is served:
 * the new one waits (max_connections_wait_ms) until the server has counted
 * the closed one out, instead of being refused for a slot already free. */
static void test_max_connections_close_then_connect(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_connections = 4;
    cfg.max_connections_wait_ms = 2000;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int fds[4];
    for (int i = 0; i < 4; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
    }
    for (int round = 0; round < 100; round++) {
        int i = round % 4;
        close(fds[i]);
        fds[i] = t_connect(ps_server_port(srv));
        assert_true(fds[i] >= 0);
        char line[256];
        assert_true(t_read_line(fds[i], line, sizeof line, T_MS) > 0);
        if (strcmp(line, greeting) != 0)
            fail_msg("round %d: got \"%s\" instead of the greeting", round, line);
    }
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.rejected_max, 0);
    assert_int_equal(st.total_connections, 104);
    for (int i = 0; i < 4; i++)
        close(fds[i]);
    ps_server_destroy(srv);
}

/* Clients over max_connections wait in arrival order: the first is served
 * when a slot frees, one past PS__SLOT_WAITERS (64) waiting is refused at
 * once, one whose wait runs out is refused, and those still waiting when
 * the server stops are told it is shutting down. */
static void test_max_connections_waiters(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_connections = 1;
    cfg.max_connections_wait_ms = 60000;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    int first = t_connect_greeted(port, T_MS);
    assert_true(first >= 0);
    int waiting[65];
    for (int i = 0; i < 65; i++) {
        waiting[i] = t_connect(port);
        assert_true(waiting[i] >= 0);
        if (i < 64)
            assert_int_equal(wait_stat(srv, "stats", "slot_waits", i + 1), i + 1);
    }
    /* The 65th finds the waiting room full. */
    expect_line(waiting[64], "ERROR too many connections\r\n");
    close(waiting[64]);
    for (int i = 0; i < 64; i++)
        assert_false(t_readable(waiting[i], 0));
    /* A slot frees: the oldest waiter gets it, the others keep waiting. */
    close(first);
    expect_line(waiting[0], greeting);
    assert_int_equal(t_send_str(waiting[0], "served\n"), 0);
    expect_line(waiting[0], "served\n");
    assert_false(t_readable(waiting[1], 50));

    ps_server_stop(srv);
    for (int i = 1; i < 64; i++)
        expect_line(waiting[i], "ERROR server shutting down\r\n");
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.slot_waits, 64);
    assert_int_equal(st.rejected_max, 1);
    assert_int_equal(st.rejected_shutdown, 63);
    assert_int_equal(st.total_connections, 66);
    for (int i = 0; i < 64; i++)
        close(waiting[i]);
    ps_server_destroy(srv);
}

/* A waiter whose max_connections_wait_ms runs out is refused. */
static void test_max_connections_wait_ends(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_connections = 1;
    cfg.max_connections_wait_ms = 200;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int first = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(first >= 0);
    int64_t began = t_now_ms();
    int extra = t_connect(ps_server_port(srv));
    assert_true(extra >= 0);
    expect_line(extra, "ERROR too many connections\r\n");
    int64_t waited = t_now_ms() - began;
    if (waited < 190)
        fail_msg("refused after %lld ms, before its 200 ms wait", (long long)waited);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.slot_waits, 1);
    assert_int_equal(st.rejected_max, 1);
    assert_int_equal(st.curr_connections, 1);
    close(extra);
    close(first);
    ps_server_destroy(srv);
}

/* ---- deferred replies ---- */

/* The "later" handler: "later MS TEXT" defers its reply and has a job on
 * the test's own pool send TEXT after MS ms ("close" as TEXT: the reply
 * closes the connection); "now TEXT" replies at once. */
static ps_pool *later_pool;
static atomic_int later_calls, later_closed, later_done;

typedef struct later_job {
    ps_reply *reply;
    int ms;
    char text[64];
} later_job;

static void later_run(void *arg)
{
    later_job *j = arg;
    usleep((useconds_t)j->ms * 1000);
    bool close_it = strcmp(j->text, "close") == 0;
    int rc = ps_reply_send(j->reply, j->text, strlen(j->text));
    if (rc == 0)
        rc = ps_reply_send(j->reply, "\n", 1);
    int done = ps_reply_done(j->reply, close_it ? PS_CLOSE : PS_CONTINUE);
    if (rc == PS_ECLOSED && done == PS_ECLOSED)
        atomic_fetch_add(&later_closed, 1);
    else
        assert_true(rc == 0 && done == 0);
    free(j);
    atomic_fetch_add(&later_done, 1);
}

static int later_line(ps_conn *c, const ps_line *line, void *ud)
{
    (void)ud;
    atomic_fetch_add(&later_calls, 1);
    char text[128];
    size_t n = line->len < sizeof text - 1 ? line->len : sizeof text - 1;
    memcpy(text, line->data, n);
    text[n] = '\0';
    if (strncmp(text, "now ", 4) == 0) {
        ps_conn_send(c, text + 4, n - 4);
        return ps_conn_send(c, "\n", 1) == 0 ? PS_CONTINUE : PS_CLOSE;
    }
    later_job *j = calloc(1, sizeof *j);
    assert_non_null(j);
    if (sscanf(text, "later %d %63s", &j->ms, j->text) != 2) {
        free(j);
        return PS_CLOSE;
    }
    j->reply = ps_reply_defer(c);
    assert_non_null(j->reply);
    assert_int_equal(ps_pool_submit(later_pool, later_run, j), 0);
    return PS_CONTINUE;
}

static const ps_handler later_handler = {.on_line = later_line};

static ps_server *start_later(unsigned workers)
{
    ps_pool_opts po = {.workers = 8, .queue_capacity = 256};
    assert_int_equal(ps_pool_create(&later_pool, &po), 0);
    atomic_store(&later_calls, 0);
    atomic_store(&later_closed, 0);
    atomic_store(&later_done, 0);
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = workers;
    return t_start(&cfg, &later_handler);
}

/* Waits (bounded) until n jobs of the later pool have finished. */
static void wait_later_done(int n)
{
    for (int64_t until = t_now_ms() + T_MS; atomic_load(&later_done) < n && t_now_ms() < until;)
        usleep(1000);
    assert_int_equal(atomic_load(&later_done), n);
}

/* Replies finished later, by another thread, go out in the order of the
 * lines, interleaved with immediate ones, whatever order they finish in. */
static void test_deferred_replies_in_order(void **state)
{
    (void)state;
    ps_server *srv = start_later(2);
    assert_non_null(srv);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "later 80 A\nnow B\nlater 10 C\nlater 40 D\nnow E\n"), 0);
    const char *want[] = {"A\n", "B\n", "C\n", "D\n", "E\n"};
    for (int i = 0; i < 5; i++)
        expect_line(fd, want[i]);
    /* Many at once, finishing in reverse order. */
    char batch[2048];
    size_t len = 0;
    for (int i = 0; i < 20; i++)
        len += (size_t)snprintf(batch + len, sizeof batch - len, "later %d r%d\n", (20 - i) * 3, i);
    assert_int_equal(t_write_all(fd, batch, len), 0);
    for (int i = 0; i < 20; i++) {
        char w[16];
        snprintf(w, sizeof w, "r%d\n", i);
        expect_line(fd, w);
    }
    wait_later_done(23);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.replies_deferred, 23);
    close(fd);
    ps_server_destroy(srv);
    ps_pool_destroy(later_pool);
}

/* A deferred reply holds no worker: with one worker, another client is
 * served while the reply is pending (event mode), and a client's later
 * lines reach the handler meanwhile (every mode). */
static void test_deferred_reply_frees_the_worker(void **state)
{
    (void)state;
    ps_server *srv = start_later(1);
    assert_non_null(srv);
    int a = t_connect(ps_server_port(srv));
    assert_true(a >= 0);
    assert_int_equal(t_send_str(a, "later 400 slow\nnow after\n"), 0);
    /* Both lines reach the handler before the first reply is done. */
    for (int64_t until = t_now_ms() + T_MS; atomic_load(&later_calls) < 2 && t_now_ms() < until;)
        usleep(1000);
    assert_int_equal(atomic_load(&later_calls), 2);
    assert_int_equal(atomic_load(&later_done), 0);
    if (t_dispatch == PS_DISPATCH_EVENT) {
        int b = t_connect(ps_server_port(srv));
        assert_true(b >= 0);
        assert_int_equal(t_send_str(b, "now quick\n"), 0);
        expect_line(b, "quick\n");
        assert_int_equal(atomic_load(&later_done), 0); /* served before it */
        close(b);
    }
    expect_line(a, "slow\n");
    expect_line(a, "after\n");
    wait_later_done(1);
    close(a);
    ps_server_destroy(srv);
    ps_pool_destroy(later_pool);
}

/* The client's end of stream, or a handler's close, waits for the replies
 * still owed; a reply finished with PS_CLOSE closes after it; a client that
 * leaves first makes ps_reply_send / _done return PS_ECLOSED, and nothing
 * leaks. */
static void test_deferred_reply_close_paths(void **state)
{
    (void)state;
    ps_server *srv = start_later(2);
    assert_non_null(srv);
    /* Half-close with a reply owed: the reply, then EOF. */
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "later 100 owed\n"), 0);
    shutdown(fd, SHUT_WR);
    expect_line(fd, "owed\n");
    assert_true(t_wait_eof(fd, T_MS) >= 0);
    close(fd);
    /* A reply that closes. */
    fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "later 20 close\n"), 0);
    expect_line(fd, "close\n");
    assert_true(t_wait_eof(fd, T_MS) >= 0);
    close(fd);
    /* The client leaves before its reply. */
    fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "later 300 lost\n"), 0);
    for (int64_t until = t_now_ms() + T_MS; atomic_load(&later_calls) < 3 && t_now_ms() < until;)
        usleep(1000);
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg); /* RST */
    close(fd);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    wait_later_done(3);
    assert_int_equal(atomic_load(&later_closed), 1);
    ps_server_destroy(srv);
    ps_pool_destroy(later_pool);
}

/* What `threads` says as clients come and go: in connection mode each
 * client holds a worker; in event mode an idle client holds none; in thread
 * mode each client is a thread. */
static void test_admin_threads_follow_clients(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 4;
    cfg.max_connections = 100;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    long long max = t_dispatch == PS_DISPATCH_THREAD ? 100 : 4;
    char reply[4096];
    assert_true(t_admin(ps_server_admin_port(srv), "threads", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "max_threads"), max);
    assert_int_equal(t_stat(reply, "available_threads"), max);
    assert_int_equal(t_stat(reply, "busy_threads"), 0);
    assert_non_null(strstr(reply, "END\r\n"));

    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
        long long want = t_dispatch == PS_DISPATCH_EVENT ? max : max - 1 - i;
        assert_int_equal(wait_stat(srv, "threads", "available_threads", want), want);
    }
    if (t_dispatch == PS_DISPATCH_EVENT)
        assert_int_equal(wait_stat(srv, "stats", "parked_connections", 3), 3);
    else
        assert_int_equal(wait_stat(srv, "threads", "busy_threads", 3), 3);
    for (int i = 0; i < 3; i++) {
        close(fds[i]);
        long long want = t_dispatch == PS_DISPATCH_EVENT ? max : max - 2 + i;
        assert_int_equal(wait_stat(srv, "threads", "available_threads", want), want);
    }
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    ps_server_destroy(srv);
}

/* ---- handlers that block (a database call, say) ---- */

/* "block" lines wait behind this gate (bounded), counting in `entered` the
 * calls that reached it and in `done` those that went on; every other line
 * is echoed at once. */
static t_gate held;
static atomic_uint held_now, held_most; /* calls at the gate now, at most */

static int holding_open(ps_conn *c, void *ud)
{
    return ps_echo_handler.on_open(c, ud);
}

static t_gate first_gate; /* "first" lines wait here */

static int holding_line(ps_conn *c, const ps_line *line, void *ud)
{
    if (line->len == 5 && memcmp(line->data, "first", 5) == 0) {
        pthread_mutex_lock(&first_gate.mu);
        first_gate.entered++;
        pthread_cond_broadcast(&first_gate.cv);
        t_gate_pass_locked(&first_gate, 4 * T_MS);
        pthread_mutex_unlock(&first_gate.mu);
    }
    if (line->len == 5 && memcmp(line->data, "block", 5) == 0) {
        unsigned now = atomic_fetch_add(&held_now, 1) + 1;
        unsigned most = atomic_load(&held_most);
        while (now > most && !atomic_compare_exchange_weak(&held_most, &most, now))
            ;
        pthread_mutex_lock(&held.mu);
        held.entered++;
        pthread_cond_broadcast(&held.cv);
        t_gate_pass_locked(&held, 4 * T_MS);
        held.done++;
        pthread_cond_broadcast(&held.cv);
        pthread_mutex_unlock(&held.mu);
        atomic_fetch_sub(&held_now, 1);
    }
    return ps_echo_handler.on_line(c, line, ud);
}

static const ps_handler holding_handler = {.on_open = holding_open, .on_line = holding_line};

static ps_server *start_holding(const ps_config *cfg)
{
    t_gate_init(&held);
    atomic_store(&held_now, 0);
    atomic_store(&held_most, 0);
    return t_start(cfg, &holding_handler);
}

/* Opens the gate, then stops the server and checks that no call at the
 * gate timed out. */
static void finish_holding(ps_server *srv)
{
    t_gate_open(&held);
    ps_server_destroy(srv);
    assert_int_equal(atomic_load(&held.errors), 0);
    t_gate_fini(&held);
}

/* More clients than workers, each sending a line whose handler blocks:
 * every worker ends up running one (event mode too: a blocked handler
 * does not keep the connections its worker had claimed from the others),
 * never more, `threads` counts them busy and answers meanwhile, and every
 * line is answered once the handlers return. */
static void test_blocked_handlers_fill_the_pool(void **state)
{
    (void)state;
    enum { WORKERS = 4, CLIENTS = 7 };
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = WORKERS;
    ps_server *srv = start_holding(&cfg);
    assert_non_null(srv);
    unsigned want = t_dispatch == PS_DISPATCH_THREAD ? CLIENTS : WORKERS;

    int fds[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        fds[i] = t_connect(ps_server_port(srv));
        assert_true(fds[i] >= 0);
        assert_int_equal(t_send_str(fds[i], "block\r\n"), 0);
    }
    assert_true(t_gate_wait(&held, &held.entered, want, T_MS));
    assert_int_equal(wait_stat(srv, "threads", "busy_threads", want), want);
    if (t_dispatch != PS_DISPATCH_THREAD) {
        assert_int_equal(wait_stat(srv, "threads", "available_threads", 0), 0);
        /* The rest wait for a worker, and nothing else runs them. */
        assert_false(t_gate_wait(&held, &held.entered, want + 1, 50));
    }
    assert_int_equal(atomic_load(&held_most), want);

    /* In the order they came: in connection mode a client keeps its
     * worker until it leaves, and the next one in the queue gets it. */
    t_gate_open(&held);
    for (int i = 0; i < CLIENTS; i++) {
        expect_line(fds[i], greeting);
        expect_line(fds[i], "block\r\n");
        close(fds[i]);
    }
    assert_true(t_gate_wait(&held, &held.done, CLIENTS, T_MS));
    assert_int_equal(atomic_load(&held_most), want);
    finish_holding(srv);
}

/* With all workers but one held in a handler, a quick client is still
 * answered: it waits for none of them, whichever worker had claimed it. */
static void test_quick_client_beside_held_handlers(void **state)
{
    (void)state;
    for (unsigned workers = 2; workers <= 4; workers += 2) {
        ps_config cfg;
        t_config(&cfg);
        cfg.workers = workers;
        ps_server *srv = start_holding(&cfg);
        assert_non_null(srv);
        uint16_t port = ps_server_port(srv);

        int quick = t_connect_greeted(port, T_MS); /* holds a worker in connection mode */
        assert_true(quick >= 0);
        int slow[3];
        for (unsigned i = 0; i < workers - 1; i++) {
            slow[i] = t_connect(port);
            assert_true(slow[i] >= 0);
            assert_int_equal(t_send_str(slow[i], "block\r\n"), 0);
        }
        assert_true(t_gate_wait(&held, &held.entered, workers - 1, T_MS));
        for (int round = 0; round < 20; round++) {
            assert_int_equal(t_send_str(quick, "quick\r\n"), 0);
            expect_line(quick, "quick\r\n");
        }
        pthread_mutex_lock(&held.mu);
        unsigned done = held.done;
        pthread_mutex_unlock(&held.mu);
        assert_int_equal(done, 0); /* every reply came while they were held */

        t_gate_open(&held);
        for (unsigned i = 0; i < workers - 1; i++) {
            expect_line(slow[i], greeting);
            expect_line(slow[i], "block\r\n");
            close(slow[i]);
        }
        close(quick);
        finish_holding(srv);
    }
}

/* Event mode's queue_depth: connections a worker has claimed and not come
 * to yet. One worker, held on a first gate while three clients send (one
 * a line that blocks, two quick ones): once let go, it claims all three
 * in one poll and is held on the first of them; the two behind it are the
 * queue (no other worker exists to take them). */
static void test_event_queue_depth_counts_claimed_connections(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_EVENT)
        skip();
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 1;
    t_gate_init(&first_gate);
    ps_server *srv = start_holding(&cfg);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    int d = t_connect_greeted(port, T_MS);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = t_connect_greeted(port, T_MS);
        assert_true(fds[i] >= 0);
    }
    assert_true(d >= 0);
    assert_int_equal(t_send_str(d, "first\r\n"), 0);
    assert_true(t_gate_wait(&first_gate, &first_gate.entered, 1, T_MS));
    assert_int_equal(t_send_str(fds[0], "block\r\n"), 0);
    assert_int_equal(t_send_str(fds[1], "quick\r\n"), 0);
    assert_int_equal(t_send_str(fds[2], "quick\r\n"), 0);
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 0), 0); /* not claimed yet */
    t_gate_open(&first_gate);
    expect_line(d, "first\r\n");
    assert_true(t_gate_wait(&held, &held.entered, 1, T_MS));
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 2), 2);
    assert_int_equal(wait_stat(srv, "threads", "busy_threads", 1), 1);

    t_gate_open(&held);
    expect_line(fds[0], "block\r\n");
    expect_line(fds[1], "quick\r\n");
    expect_line(fds[2], "quick\r\n");
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 0), 0);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    close(d);
    finish_holding(srv);
    assert_int_equal(atomic_load(&first_gate.errors), 0);
    t_gate_fini(&first_gate);
}

/* A handler call longer than slow_handler_ms is counted once; quick ones
 * are not, nor anything when the check is off. */
static void test_slow_handlers_counted(void **state)
{
    (void)state;
    for (unsigned limit = 0; limit <= 100; limit += 100) {
        ps_config cfg;
        t_config(&cfg);
        cfg.slow_handler_ms = limit;
        ps_server *srv = t_start(&cfg, &ps_sleep_handler);
        assert_non_null(srv);
        int fd = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fd >= 0);
        for (int i = 0; i < 5; i++) {
            assert_int_equal(t_send_str(fd, "quick\r\n"), 0);
            expect_line(fd, "quick\r\n");
        }
        assert_int_equal(t_send_str(fd, "sleep 120\r\n"), 0);
        expect_line(fd, "sleep 120\r\n");
        assert_int_equal(t_send_str(fd, "sleep 0\r\n"), 0); /* no wait: echoed */
        expect_line(fd, "sleep 0\r\n");
        char reply[8192];
        assert_true(t_admin(ps_server_admin_port(srv), "stats", reply, sizeof reply) > 0);
        assert_int_equal(t_stat(reply, "slow_handlers"), limit > 0 ? 1 : 0);
        close(fd);
        ps_server_destroy(srv);
    }
}

/* Many clients at once, each greeted and echoed (not connection mode,
 * where only `workers` are served at a time). */
static void test_many_clients(void **state)
{
    (void)state;
    if (t_dispatch == PS_DISPATCH_CONNECTION)
        skip();
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    enum { N = 1000 };
    int *fds = calloc(N, sizeof *fds);
    assert_non_null(fds);
    for (int i = 0; i < N; i++) {
        fds[i] = t_connect(ps_server_port(srv));
        assert_true(fds[i] >= 0);
    }
    char line[64], want[64];
    for (int i = 0; i < N; i++) {
        snprintf(want, sizeof want, "client %d\r\n", i);
        assert_int_equal(t_send_str(fds[i], want), 0);
    }
    for (int i = 0; i < N; i++) {
        snprintf(want, sizeof want, "client %d\r\n", i);
        assert_true(t_read_line(fds[i], line, sizeof line, T_MS) > 0);
        assert_string_equal(line, greeting);
        assert_true(t_read_line(fds[i], line, sizeof line, T_MS) > 0);
        assert_string_equal(line, want);
    }
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", N), N);
    for (int i = 0; i < N; i++)
        close(fds[i]);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    free(fds);
    ps_server_destroy(srv);
}

/* Event mode: 200 silent clients hold no worker; 10 active ones are served
 * by a pool of 4 as if the silent ones were not there. */
static void test_silent_clients_cost_no_worker(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_EVENT)
        skip();
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 4;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int silent[200], active[10];
    for (int i = 0; i < 200; i++) {
        silent[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(silent[i] >= 0);
    }
    assert_int_equal(wait_stat(srv, "threads", "available_threads", 4), 4);
    for (int i = 0; i < 10; i++) {
        active[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(active[i] >= 0);
    }
    char line[64], want[64];
    for (int round = 0; round < 100; round++) {
        for (int i = 0; i < 10; i++) {
            snprintf(want, sizeof want, "r%d c%d\n", round, i);
            assert_int_equal(t_send_str(active[i], want), 0);
        }
        for (int i = 0; i < 10; i++) {
            snprintf(want, sizeof want, "r%d c%d\n", round, i);
            assert_true(t_read_line(active[i], line, sizeof line, T_MS) > 0);
            assert_string_equal(line, want);
        }
    }
    char reply[4096];
    assert_true(t_admin(ps_server_admin_port(srv), "stats", reply, sizeof reply) > 0);
    assert_true(t_stat(reply, "parked_connections") >= 200);
    assert_true(t_stat(reply, "event_jobs") >= 10 * 100); /* one per echo at least */
    assert_int_equal(t_stat(reply, "curr_connections"), 210);
    for (int i = 0; i < 200; i++)
        close(silent[i]);
    for (int i = 0; i < 10; i++)
        close(active[i]);
    ps_server_destroy(srv);
}

/* Connections on each event shard, from a `stats` reply; returns how many
 * shards it reports (0 when the reply has no event_shards). */
static unsigned shard_conns(ps_server *srv, long long *conns, unsigned cap)
{
    char reply[8192];
    assert_true(t_admin(ps_server_admin_port(srv), "stats", reply, sizeof reply) > 0);
    long long n = t_stat(reply, "event_shards");
    if (n <= 0)
        return 0;
    assert_true(n <= cap);
    for (unsigned i = 0; i < (unsigned)n; i++) {
        char name[64];
        snprintf(name, sizeof name, "shard%u_connections", i);
        conns[i] = t_stat(reply, name);
        assert_true(conns[i] >= 0);
    }
    return (unsigned)n;
}

/* Pins the calling thread to one CPU. */
static void pin_to(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof one, &one), 0);
}

/* Event mode places a connection on the shard of the CPU its packets
 * arrive on (on loopback, the client's CPU), unless that shard would hold
 * more than a sixteenth (plus 64) above the emptiest one, and moves it when
 * its client moves; closing a connection takes it off its shard's count. */
static void test_event_shards_follow_the_client_cpu(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_EVENT)
        skip();
    cpu_set_t allowed;
    assert_int_equal(pthread_getaffinity_np(pthread_self(), sizeof allowed, &allowed), 0);
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    long long conns[64];
    unsigned n = shard_conns(srv, conns, 64);
    assert_true(n >= 1);
    /* Two CPUs this thread may use whose shards differ; the second is the
     * last one, not CPU 0, where an accident could also put connections. */
    int first = -1, cpu = -1;
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (CPU_ISSET(i, &allowed)) {
            if (first < 0)
                first = i;
            else if ((unsigned)i % n != (unsigned)first % n)
                cpu = i;
        }
    }
    if (n < 2 || cpu < 0) {
        ps_server_destroy(srv); /* one shard: nothing to choose */
        skip();
    }
    pin_to(cpu);

    enum { FEW = 20, MANY = 320, CLOSED = 100, ROUNDS = 64 };
    int fds[MANY];
    for (int i = 0; i < FEW; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
    }
    /* Few enough that balance does not come into it. */
    assert_int_equal(shard_conns(srv, conns, 64), n);
    assert_int_equal(conns[(unsigned)cpu % n], FEW);

    /* The client moves to another CPU: its connections follow it once
     * they have been served a few times from there. */
    pin_to(first);
    char line[64], want[64];
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < FEW; i++) {
            snprintf(want, sizeof want, "r%d c%d\r\n", round, i);
            assert_int_equal(t_send_str(fds[i], want), 0);
            assert_true(t_read_line(fds[i], line, sizeof line, T_MS) > 0);
            assert_string_equal(line, want);
        }
    }
    assert_int_equal(shard_conns(srv, conns, 64), n);
    assert_int_equal(conns[(unsigned)first % n], FEW);
    assert_true(wait_stat(srv, "stats", "event_moves", FEW) >= FEW);

    pin_to(cpu);
    for (int i = FEW; i < MANY; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
    }
    assert_int_equal(pthread_setaffinity_np(pthread_self(), sizeof allowed, &allowed), 0);

    /* Most from one CPU, yet no shard left far behind. */
    assert_int_equal(shard_conns(srv, conns, 64), n);
    long long sum = 0, least = MANY, most = 0;
    for (unsigned i = 0; i < n; i++) {
        sum += conns[i];
        least = conns[i] < least ? conns[i] : least;
        most = conns[i] > most ? conns[i] : most;
    }
    assert_int_equal(sum, MANY);
    assert_true(most <= least + least / 16 + 64 + 1);
    assert_true(least > 0);

    for (int i = 0; i < CLOSED; i++)
        close(fds[i]);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", MANY - CLOSED), MANY - CLOSED);
    assert_int_equal(shard_conns(srv, conns, 64), n);
    sum = 0;
    for (unsigned i = 0; i < n; i++)
        sum += conns[i];
    assert_int_equal(sum, MANY - CLOSED);
    for (int i = CLOSED; i < MANY; i++)
        close(fds[i]);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    ps_server_destroy(srv);
}

static void test_admin_answers_while_saturated(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_CONNECTION)
        skip();
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 25;
    cfg.queue_capacity = 8;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    int fds[25 + 8];
    for (int i = 0; i < 25; i++) {
        fds[i] = t_connect_greeted(port, T_MS);
        assert_true(fds[i] >= 0);
    }
    for (int i = 25; i < 33; i++) {
        fds[i] = t_connect(port);
        assert_true(fds[i] >= 0);
    }
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 8), 8);
    /* Every worker busy, queue full: the admin thread still answers. The
     * best of a few tries is compared, so one scheduling hiccup on a shared
     * machine does not decide it. */
    int64_t best = INT64_MAX;
    char reply[4096];
    for (int i = 0; i < 5; i++) {
        int64_t t0 = t_now_ms();
        assert_true(t_admin(ps_server_admin_port(srv), "threads", reply, sizeof reply) > 0);
        int64_t dt = t_now_ms() - t0;
        best = dt < best ? dt : best;
        assert_int_equal(t_stat(reply, "available_threads"), 0);
        assert_int_equal(t_stat(reply, "queue_depth"), 8);
    }
    print_message("admin reply while saturated: %lld ms\n", (long long)best);
    assert_true(best < 100);
    for (int i = 0; i < 33; i++)
        close(fds[i]);
    ps_server_destroy(srv);
}

typedef struct flooder {
    int fd;
    atomic_bool stop;
    int64_t sent, received;
    atomic_llong echoed; /* received, for the test thread to watch */
    int error;
} flooder;

/* Writes lines as fast as the server takes them and reads the echoes. */
static void *flood_main(void *arg)
{
    flooder *f = arg;
    char out[16384], in[65536];
    for (size_t i = 0; i < sizeof out; i += 64) {
        memset(out + i, 'f', 63);
        out[i + 63] = '\n';
    }
    int64_t deadline = t_now_ms() + 20000;
    while (!atomic_load(&f->stop) && t_now_ms() < deadline) {
        ssize_t w = send(f->fd, out, sizeof out, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0)
            f->sent += w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            f->error = errno;
            break;
        }
        ssize_t r = recv(f->fd, in, sizeof in, MSG_DONTWAIT);
        if (r > 0) {
            f->received += r;
            atomic_store(&f->echoed, f->received);
        } else if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
            f->error = r == 0 ? EPIPE : errno;
            break;
        }
        if (w <= 0 && r <= 0) {
            struct pollfd p = {.fd = f->fd, .events = POLLIN | POLLOUT};
            poll(&p, 1, 10);
        }
    }
    return NULL;
}

/* Event mode, one worker: a client that floods does not keep the worker;
 * another client is answered promptly all along. */
static void test_flooding_client_does_not_starve_others(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_EVENT)
        skip();
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 1;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int other = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(other >= 0);
    flooder f = {.fd = t_connect_greeted(ps_server_port(srv), T_MS)};
    assert_true(f.fd >= 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, flood_main, &f), 0);
    /* The flood is under way: a megabyte has come back. */
    for (int64_t until = t_now_ms() + T_MS;
         atomic_load(&f.echoed) < 1024 * 1024 && t_now_ms() < until;)
        usleep(1000);
    assert_true(atomic_load(&f.echoed) >= 1024 * 1024);
    int64_t worst = 0;
    for (int i = 0; i < 50; i++) {
        int64_t t0 = t_now_ms();
        assert_int_equal(t_send_str(other, "between the floods\n"), 0);
        char line[64];
        ssize_t r = t_read_line(other, line, sizeof line, T_MS);
        int64_t dt = t_now_ms() - t0;
        worst = dt > worst ? dt : worst;
        assert_true(r > 0);
        assert_string_equal(line, "between the floods\n");
    }
    atomic_store(&f.stop, true);
    pthread_join(t, NULL);
    print_message("flooder moved %lld bytes; slowest other reply %lld ms\n",
                  (long long)f.received, (long long)worst);
    assert_int_equal(f.error, 0);
    assert_true(f.received > 1024 * 1024); /* it really was flooding */
    assert_true(worst < 300); /* without the read budget: ~750 ms */
    close(other);
    close(f.fd);
    ps_server_destroy(srv);
}

static void test_admin_commands(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t ap = ps_server_admin_port(srv);
    char reply[4096];
    assert_true(t_admin(ap, "help", reply, sizeof reply) > 0);
    assert_non_null(strstr(reply, "threads"));
    assert_non_null(strstr(reply, "quit"));
    assert_true(t_admin(ap, "bogus", reply, sizeof reply) > 0);
    assert_string_equal(reply, "ERROR unknown command\r\n");
    assert_true(t_admin(ap, "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "total_connections"), 0);
    assert_int_equal(t_stat(reply, "bytes_out"), 0);
    long long max = t_dispatch == PS_DISPATCH_THREAD ? cfg.max_connections : cfg.workers;
    assert_int_equal(t_stat(reply, "max_threads"), max);

    /* One client's conversation, counted exactly. */
    int client = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(client >= 0);
    assert_int_equal(t_send_str(client, "hello\r\n"), 0);
    expect_line(client, "hello\r\n");
    assert_int_equal(t_send_str(client, "exit\r\n"), 0);
    assert_true(t_wait_eof(client, T_MS) >= 0);
    close(client);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    assert_true(t_admin(ap, "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "total_connections"), 1);
    assert_int_equal(t_stat(reply, "lines"), 2);
    assert_int_equal(t_stat(reply, "bytes_in"), 13);                     /* hello, exit */
    assert_int_equal(t_stat(reply, "bytes_out"), (long long)strlen(greeting) + 7);

    /* quit closes the admin connection. */
    int fd = t_connect(ap);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "quit\r\n"), 0);
    assert_int_equal(t_wait_eof(fd, T_MS), 0);
    close(fd);

    /* An oversized admin line is an error, not a crash. */
    fd = t_connect(ap);
    assert_true(fd >= 0);
    char big[4096];
    memset(big, 'a', sizeof big);
    assert_int_equal(t_write_all(fd, big, sizeof big), 0);
    expect_line(fd, "ERROR line too long\r\n");
    close(fd);
    assert_true(t_admin(ap, "threads", reply, sizeof reply) > 0);

    /* Idle admin connections beyond the limit (ADMIN_SLOTS) cannot lock
     * the operator out: once every slot is taken, the one silent the
     * longest makes room. */
    int idle[ADMIN_SLOTS + 6];
    for (int i = 0; i < ADMIN_SLOTS + 6; i++) {
        idle[i] = t_connect(ap);
        assert_true(idle[i] >= 0);
        /* Taken in by the admin thread (or it has made room for it). */
        assert_int_equal(t_send_str(idle[i], "help\n"), 0);
        char line[256];
        assert_true(t_read_line(idle[i], line, sizeof line, T_MS) > 0);
    }
    assert_true(t_admin(ap, "threads", reply, sizeof reply) > 0);
    assert_non_null(strstr(reply, "END\r\n"));
    for (int i = 0; i < ADMIN_SLOTS + 6; i++)
        close(idle[i]);

    /* Admin words on the data port are echoed, not answered. */
    fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "stats\r\n"), 0);
    expect_line(fd, "stats\r\n");
    close(fd);
    ps_server_destroy(srv);
}

static void test_idle_timeout(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.idle_timeout = 1;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int silent = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(silent >= 0);
    /* A trickler sends bytes but never a newline: it does not get to push
     * its deadline forward. */
    int trickler = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(trickler >= 0);
    int64_t t0 = t_now_ms();
    bool trickler_open = true;
    for (int i = 0; i < 40 && trickler_open; i++) {
        if (t_send_str(trickler, "x") != 0 || t_readable(trickler, 100))
            trickler_open = false;
    }
    assert_false(trickler_open);
    /* Closed after the timeout, not before it: the greeting came at most
     * a few ms before t0, and the deadline is one second after it. */
    int64_t trickler_closed = t_now_ms() - t0;
    assert_true(trickler_closed >= 900 && trickler_closed < 3500);
    assert_true(t_wait_eof(silent, T_MS) >= 0);
    assert_true(t_now_ms() - t0 >= 900);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.idle_timeouts, 2);
    close(silent);
    close(trickler);
    ps_server_destroy(srv);
}

static void test_send_timeout_never_reading_client(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.send_timeout = 1;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int hog = t_connect(ps_server_port(srv));
    assert_true(hog >= 0);
    int small = 4096;
    setsockopt(hog, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    int other = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(other >= 0);

    /* Send lines, never read: the server's replies pile up until it gives
     * up on this client. Bounded by count and time. */
    char chunk[8192];
    for (size_t i = 0; i < sizeof chunk; i += 64) {
        memset(chunk + i, 'q', 63);
        chunk[i + 63] = '\n';
    }
    struct timeval tv = {.tv_sec = 0, .tv_usec = 200 * 1000};
    setsockopt(hog, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    long rss_before = t_proc_rss_kb(getpid());
    long rss_max = rss_before;
    size_t sent = 0;
    int64_t deadline = t_now_ms() + 15000;
    bool closed = false;
    while (!closed && t_now_ms() < deadline) {
        ssize_t w = send(hog, chunk, sizeof chunk, MSG_NOSIGNAL);
        if (w > 0)
            sent += (size_t)w;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            closed = true;
        long rss = t_proc_rss_kb(getpid());
        rss_max = rss > rss_max ? rss : rss_max;
        ps_server_stats st;
        ps_server_get_stats(srv, &st);
        if (st.send_timeouts > 0)
            closed = true;
        /* The other client is served all along. */
        assert_int_equal(t_send_str(other, "ping\n"), 0);
        expect_line(other, "ping\n");
    }
    assert_true(closed);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.send_timeouts, 1);
    /* Backpressure: the server stopped reading once its replies piled up,
     * so what the client got in is what the sockets hold, and the server's
     * memory for it is its output bound (256 KiB) and one read. */
    print_message("%s: the client got %zu KiB in; RSS %ld -> at most %ld KiB\n",
                  ps_dispatch_name(t_dispatch), sent / 1024, rss_before, rss_max);
    assert_true(sent < 64u * 1024 * 1024);
    assert_true(rss_max - rss_before < 8 * 1024);
    close(hog);
    close(other);
    ps_server_destroy(srv);
}

static void test_vanishing_clients(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 4;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    char lines[4096];
    for (size_t i = 0; i < sizeof lines; i += 8)
        memcpy(lines + i, "vanish\r\n", 8);
    for (int i = 0; i < 200; i++) {
        int fd = t_connect(ps_server_port(srv));
        assert_true(fd >= 0);
        assert_int_equal(t_write_all(fd, lines, sizeof lines), 0);
        if (i % 2) {
            /* Reset instead of FIN: the server's writes fail mid-reply. */
            struct linger lg = {.l_onoff = 1, .l_linger = 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(fd);
    }
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    long long max = t_dispatch == PS_DISPATCH_THREAD ? cfg.max_connections : 4;
    assert_int_equal(wait_stat(srv, "threads", "available_threads", max), max);
    /* And the server still serves. */
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "alive\n"), 0);
    expect_line(fd, "alive\n");
    close(fd);
    ps_server_destroy(srv);
}

static void test_stop_closes_clients(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 2;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int a = t_connect_greeted(ps_server_port(srv), T_MS);
    int b = t_connect_greeted(ps_server_port(srv), T_MS);
    int queued = t_connect(ps_server_port(srv));
    assert_true(a >= 0 && b >= 0 && queued >= 0);
    assert_int_equal(t_send_str(a, "one\n"), 0);
    expect_line(a, "one\n");
    int64_t t0 = t_now_ms();
    ps_server_stop(srv);
    assert_true(t_now_ms() - t0 < 3000);
    /* Every client sees an orderly end of stream. */
    assert_int_equal(t_wait_eof(a, T_MS), 0);
    assert_int_equal(t_wait_eof(b, T_MS), 0);
    assert_true(t_wait_eof(queued, T_MS) >= 0);
    assert_int_equal(ps_server_port(srv), 0);
    /* Nothing listens any more. */
    assert_true(t_connect(ps_server_port(srv)) < 0);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.curr_connections, 0);
    close(a);
    close(b);
    close(queued);
    ps_server_destroy(srv);
    ps_server_destroy(NULL);
}

/* The clients of a draining server, driven from a thread while the test
 * thread waits in ps_server_drain: each says a line, checks its echo and
 * leaves; `queued` (connection mode: waiting for a worker) is greeted once
 * one is free; a client arriving meanwhile is greeted by nobody. */
typedef struct drain_clients {
    int fds[3];         /* a, b: greeted; queued: connected */
    uint16_t port;
    int late;           /* connected during the drain */
    bool late_greeted;  /* must stay false */
    int failed_step;    /* 0 = all went well */
} drain_clients;

static bool say_and_leave(int fd, bool greet_first)
{
    char line[64];
    if (greet_first && (t_read_line(fd, line, sizeof line, T_MS) <= 0 ||
                        strcmp(line, "Welcome to my server\r\n") != 0))
        return false;
    if (t_send_str(fd, "before I go\n") != 0 || t_read_line(fd, line, sizeof line, T_MS) <= 0 ||
        strcmp(line, "before I go\n") != 0)
        return false;
    return t_send_str(fd, "exit\n") == 0 && t_wait_eof(fd, T_MS) >= 0;
}

static void *drain_clients_main(void *arg)
{
    drain_clients *d = arg;
    /* Give the drain a moment to begin: these clients must be served by a
     * draining server, not by one that has not started to. */
    struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    d->late = t_connect(d->port);
    d->late_greeted = d->late >= 0 && t_readable(d->late, 200);
    for (int i = 0; i < 3 && d->failed_step == 0; i++)
        if (!say_and_leave(d->fds[i], i == 2))
            d->failed_step = i + 1;
    return NULL;
}

/* ps_server_drain: no new client is taken, the connected ones (and one
 * still queued for a worker) are served until they leave; then it returns
 * 0 and the server stops. A client that never leaves is waited for
 * shutdown_timeout, and counted in the return value. */
static void test_drain_serves_then_stops(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 2;
    cfg.shutdown_timeout = 20;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    drain_clients d = {.port = ps_server_port(srv), .late = -1};
    d.fds[0] = t_connect_greeted(d.port, T_MS);
    d.fds[1] = t_connect_greeted(d.port, T_MS);
    d.fds[2] = t_connect(d.port);
    assert_true(d.fds[0] >= 0 && d.fds[1] >= 0 && d.fds[2] >= 0);
    ps_server_stats st;
    for (int i = 0; i < 500; i++) { /* the third is accepted (bounded wait) */
        ps_server_get_stats(srv, &st);
        if (st.total_connections == 3)
            break;
        t_readable(d.fds[2], 10);
    }
    assert_int_equal(st.total_connections, 3);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, drain_clients_main, &d), 0);
    int64_t t0 = t_now_ms();
    unsigned left = ps_server_drain(srv);
    int64_t ms = t_now_ms() - t0;
    pthread_join(th, NULL);
    assert_int_equal(left, 0);
    assert_int_equal(d.failed_step, 0);
    assert_true(d.late >= 0);
    assert_false(d.late_greeted);
    assert_true(ms < 10000);
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.total_connections, 3); /* the late one was not taken */
    assert_false(ps_server_healthy(srv));
    ps_server_stop(srv);
    char line[64];
    assert_true(t_read_line(d.late, line, sizeof line, T_MS) <= 0); /* never greeted */
    for (int i = 0; i < 3; i++)
        close(d.fds[i]);
    close(d.late);
    ps_server_destroy(srv);

    /* A client that stays: the drain ends after shutdown_timeout. */
    cfg.shutdown_timeout = 1;
    srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int stays = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(stays >= 0);
    t0 = t_now_ms();
    assert_int_equal(ps_server_drain(srv), 1);
    assert_true(t_now_ms() - t0 >= 1000);
    assert_int_equal(t_send_str(stays, "still here\n"), 0);
    expect_line(stays, "still here\n"); /* served until stop */
    ps_server_stop(srv);
    assert_true(t_wait_eof(stays, T_MS) >= 0);
    close(stays);
    ps_server_destroy(srv);
}

/* The other thread of test_drain_cut: probes the admin port with new
 * connections until one hears that the server drains, then cuts the
 * drain. */
typedef struct drain_cutter {
    ps_server *srv;
    uint16_t admin_port;
    bool heard;  /* a new admin client was told NOT READY draining */
    int failure; /* a probe's error (no reply): 0 = none */
} drain_cutter;

static void *drain_cutter_main(void *arg)
{
    drain_cutter *c = arg;
    int64_t end = t_now_ms() + T_MS;
    while (!c->heard && c->failure == 0 && t_now_ms() < end) {
        char got[64] = "";
        ssize_t n = t_admin_raw(c->admin_port, "ready\r\n", true, got, sizeof got);
        if (n <= 0)
            c->failure = n < 0 ? (int)n : -EPIPE;
        c->heard = strcmp(got, "NOT READY draining\r\n") == 0;
    }
    ps_server_drain_cut(c->srv); /* in every case: the test must not wait 30 s */
    return NULL;
}

/* ps_server_drain_cut: a drain with a client that stays and 30 s to wait
 * returns at once when cut (meanwhile a new admin client hears that the
 * server drains), and the stop closes the client; a cut before the drain
 * makes the drain return at once. And ps_server_handed_over. */
static void test_drain_cut(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.shutdown_timeout = 30;
    for (int before = 0; before < 2; before++) {
        ps_server *srv = t_start_echo(&cfg);
        assert_non_null(srv);
        int stays = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(stays >= 0);
        drain_cutter c = {.srv = srv, .admin_port = ps_server_admin_port(srv)};
        pthread_t th;
        if (before)
            ps_server_drain_cut(srv);
        else
            assert_int_equal(pthread_create(&th, NULL, drain_cutter_main, &c), 0);
        int64_t t0 = t_now_ms();
        assert_int_equal(ps_server_drain(srv), 1);
        int64_t ms = t_now_ms() - t0;
        if (!before) {
            pthread_join(th, NULL);
            assert_int_equal(c.failure, 0);
            assert_true(c.heard);
        }
        assert_true(ms < 2 * T_MS);
        ps_server_stop(srv);
        assert_true(t_wait_eof(stays, T_MS) >= 0);
        close(stays);
        ps_server_destroy(srv);
    }

    /* After a hand-over (ps_server_handed_over) the process that took the
     * listeners answers new admin clients: a draining server leaves them
     * in the backlog, for it. */
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    ps_server_handed_over(srv);
    ps_server_drain_cut(srv);
    assert_int_equal(ps_server_drain(srv), 0);
    int probe = t_connect(ps_server_admin_port(srv));
    assert_true(probe >= 0);
    assert_int_equal(t_send_str(probe, "ready\r\n"), 0);
    assert_false(t_readable(probe, 300));
    ps_server_stop(srv);
    close(probe);
    ps_server_destroy(srv);
}

/* Connection mode: a client still in the queue when the server stops is
 * told so, and counted, instead of getting a bare FIN. */
static void test_stop_tells_queued_clients(void **state)
{
    (void)state;
    if (t_dispatch != PS_DISPATCH_CONNECTION)
        skip(); /* only there do clients wait in the queue */
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 1;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    int served = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(served >= 0);
    int queued = t_connect(ps_server_port(srv));
    assert_true(queued >= 0);
    assert_int_equal(wait_stat(srv, "threads", "queue_depth", 1), 1);

    ps_server_stop(srv);
    char line[256];
    assert_true(t_read_line(queued, line, sizeof line, T_MS) > 0);
    assert_string_equal(line, "ERROR server shutting down\r\n");
    assert_true(t_wait_eof(queued, T_MS) >= 0);
    assert_true(t_wait_eof(served, T_MS) >= 0); /* the served one: FIN */
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.rejected_shutdown, 1);
    assert_int_equal(st.rejected_connections, 1);
    close(queued);
    close(served);
    ps_server_destroy(srv);
}

/* The value of a sample line "name value" in Prometheus text, or -1. */
static long long metric(const char *text, const char *name)
{
    size_t len = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p += len)
        if ((p == text || p[-1] == '\n') && p[len] == ' ')
            return strtoll(p + len + 1, NULL, 10);
    return -1;
}

/* For load balancers and monitoring: `ready` (READY, NOT READY once a stop
 * is announced or every worker stays busy with clients waiting), `agent`
 * (ready up N%, drain), `metrics` and GET /metrics with the handler-time
 * histogram counting each line. */
static void test_admin_ready_agent_metrics(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 2;
    ps_server *srv = t_start(&cfg, &ps_sleep_handler);
    assert_non_null(srv);
    uint16_t ap = ps_server_admin_port(srv);
    char buf[32768];
    assert_true(t_admin_raw(ap, "ready\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "READY\r\n");
    assert_true(t_admin_raw(ap, "agent\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "ready up 100%\n");

    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "one\ntwo\nsleep 30\n"), 0);
    expect_line(fd, "one\n");
    expect_line(fd, "two\n");
    expect_line(fd, "sleep 30\n");
    assert_true(t_admin(ap, "metrics", buf, sizeof buf) > 0);
    assert_int_equal(metric(buf, "poolsrv_lines_total"), 3);
    assert_int_equal(metric(buf, "poolsrv_handler_seconds_count"), 3);
    assert_int_equal(metric(buf, "poolsrv_handler_seconds_bucket{le=\"+Inf\"}"), 3);
    /* The sleep of 30 ms is above 25 ms, the quick two at most 10 ms
     * apart from scheduling: at most 2 at or below 25 ms. */
    assert_true(metric(buf, "poolsrv_handler_seconds_bucket{le=\"0.025\"}") <= 2);
    assert_non_null(strstr(buf, "# TYPE poolsrv_handler_seconds histogram"));
    assert_non_null(strstr(buf, "END\r\n"));

    /* A scrape: HTTP/1.0 and 1.1, the body's length as announced, then
     * the connection closes. */
    static const char *const gets[] = {"GET /metrics HTTP/1.0\r\n\r\n",
                                       "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"};
    for (int i = 0; i < 2; i++) {
        ssize_t n = t_admin_raw(ap, gets[i], false, buf, sizeof buf);
        assert_true(n > 0);
        assert_true(strncmp(buf, "HTTP/1.0 200 OK\r\n", 17) == 0);
        const char *cl = strstr(buf, "Content-Length: ");
        const char *body = strstr(buf, "\r\n\r\n");
        assert_non_null(cl);
        assert_non_null(body);
        body += 4;
        assert_int_equal(strtol(cl + 16, NULL, 10), (long)(buf + n - body));
        assert_int_equal(metric(body, "poolsrv_lines_total"), 3);
        assert_null(strstr(body, "END"));
    }
    assert_true(t_admin_raw(ap, "GET /other HTTP/1.0\r\n\r\n", false, buf, sizeof buf) > 0);
    assert_true(strncmp(buf, "HTTP/1.0 404 Not Found\r\n", 24) == 0);

    /* Every worker held, a client waiting: NOT READY within a moment. */
    int busy[2];
    for (int i = 0; i < 2; i++) {
        busy[i] = t_connect(ps_server_port(srv));
        assert_true(busy[i] >= 0);
    }
    assert_int_equal(t_send_str(fd, "sleep 4000\n"), 0);
    int waiting = -1;
    if (t_dispatch != PS_DISPATCH_THREAD) { /* thread mode has no pool to fill */
        char line[64];
        assert_true(t_read_line(busy[0], line, sizeof line, T_MS) > 0);
        assert_int_equal(t_send_str(busy[0], "sleep 4000\n"), 0);
        waiting = busy[1];
        assert_int_equal(t_send_str(waiting, "hello\n"), 0);
        bool not_ready = false;
        for (int i = 0; i < 40 && !not_ready; i++) {
            assert_true(t_admin_raw(ap, "ready\r\n", true, buf, sizeof buf) > 0);
            not_ready = strcmp(buf, "NOT READY no worker free\r\n") == 0;
            if (!not_ready) { /* the admin thread samples 4 times a second */
                struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
        }
        if (!not_ready) {
            t_admin(ap, "threads", buf, sizeof buf);
            fail_msg("ready stayed READY with every worker held; threads:\n%s", buf);
        }
        assert_true(t_admin_raw(ap, "agent\r\n", true, buf, sizeof buf) > 0);
        assert_string_equal(buf, "ready up 1%\n");
    }
    for (int i = 0; i < 2; i++)
        close(busy[i]);
    close(fd);

    /* A stop announced: NOT READY and drain, and still serving. */
    ps_server_announce_stop(srv);
    assert_true(t_admin_raw(ap, "ready\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "NOT READY draining\r\n");
    assert_true(t_admin_raw(ap, "agent\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "drain\n");
    int late = t_connect_greeted(ps_server_port(srv), 10000);
    assert_true(late >= 0);
    close(late);
    ps_server_destroy(srv);
}

/* Admin commands sent together each get their reply, in order: four in one
 * write; 1,000 then a half-close; 100 `help`s. */
static void test_admin_commands_sent_together(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    static const struct {
        const char *cmd;
        int count;
        bool half_close;
    } cases[] = {{"stats\r\n", 4, false}, {"threads\n", 1000, true}, {"help\n", 100, true}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int fd = t_connect(ps_server_admin_port(srv));
        assert_true(fd >= 0);
        size_t one = strlen(cases[k].cmd), len = one * (size_t)cases[k].count;
        char *all = malloc(len);
        assert_non_null(all);
        for (int i = 0; i < cases[k].count; i++)
            memcpy(all + (size_t)i * one, cases[k].cmd, one);
        assert_int_equal(t_write_all(fd, all, len), 0);
        free(all);
        if (cases[k].half_close)
            assert_int_equal(shutdown(fd, SHUT_WR), 0);
        int ends = 0;
        char line[512];
        while (ends < cases[k].count) {
            ssize_t r = t_read_line(fd, line, sizeof line, T_MS);
            if (r <= 0)
                break;
            assert_null(strstr(line, "ERROR"));
            if (strcmp(line, "END\r\n") == 0)
                ends++;
        }
        assert_int_equal(ends, cases[k].count);
        if (cases[k].half_close)
            assert_int_equal(t_wait_eof(fd, T_MS), 0); /* then closed, nothing more */
        close(fd);
    }
    ps_server_destroy(srv);
}

/* A burst of admin clients: every one connects, then every one sends
 * `stats`, then each reads its reply and closes. All are answered: those
 * beyond the admin slots wait in the backlog, none is taken in and closed
 * unanswered (EOF before any byte: 135 of 200 were, when a full table
 * closed the client silent the longest to make room). */
static void test_admin_burst_all_answered(void **state)
{
    (void)state;
    enum { N = 200 };
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    static int fd[N];
    static char got[N][8192];
    static size_t len[N];
    struct pollfd p[N];
    for (int i = 0; i < N; i++) {
        len[i] = 0;
        fd[i] = t_connect(ps_server_admin_port(srv));
        assert_true(fd[i] >= 0);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(t_send_str(fd[i], "stats\r\n"), 0);
    int answered = 0, unanswered = 0;
    int64_t end = t_now_ms() + 4 * T_MS;
    while (answered + unanswered < N && t_now_ms() < end) {
        for (int i = 0; i < N; i++)
            p[i] = (struct pollfd){.fd = fd[i], .events = POLLIN};
        if (poll(p, N, 100) <= 0)
            continue;
        for (int i = 0; i < N; i++) {
            if (fd[i] < 0 || p[i].revents == 0)
                continue;
            ssize_t r = read(fd[i], got[i] + len[i], sizeof got[i] - 1 - len[i]);
            if (r > 0) {
                len[i] += (size_t)r;
                got[i][len[i]] = '\0';
                if (strstr(got[i], "END\r\n") == NULL)
                    continue;
                answered++;
            } else {
                unanswered++;
            }
            close(fd[i]);
            fd[i] = -1;
        }
    }
    for (int i = 0; i < N; i++)
        if (fd[i] >= 0)
            close(fd[i]);
    print_message("%d admin clients at once: %d answered, %d closed unanswered\n", N, answered,
                  unanswered);
    assert_int_equal(unanswered, 0);
    assert_int_equal(answered, N);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.admin_refused, 0);
    ps_server_destroy(srv);
}

/* Every admin slot held by a client that keeps talking: a new one waits,
 * then is told `ERROR too many admin clients` (counted in admin_refused),
 * neither left hanging nor closed without a word. */
static void test_admin_full_refuses(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t ap = ps_server_admin_port(srv);
    int busy[ADMIN_SLOTS];
    char line[256];
    for (int i = 0; i < ADMIN_SLOTS; i++) {
        busy[i] = t_connect(ap);
        assert_true(busy[i] >= 0);
        assert_int_equal(t_send_str(busy[i], "ready\r\n"), 0);
        assert_true(t_read_line(busy[i], line, sizeof line, T_MS) > 0);
    }
    int late = t_connect(ap);
    assert_true(late >= 0);
    int64_t t0 = t_now_ms();
    /* The busy clients talk more often than a slot's idle limit (1 s) allows. */
    bool told = false;
    while (!told && t_now_ms() - t0 < T_MS) {
        for (int i = 0; i < ADMIN_SLOTS; i++) {
            assert_int_equal(t_send_str(busy[i], "ready\r\n"), 0);
            assert_true(t_read_line(busy[i], line, sizeof line, T_MS) > 0);
        }
        told = t_readable(late, 100);
    }
    assert_true(told);
    assert_true(t_read_line(late, line, sizeof line, T_MS) > 0);
    assert_string_equal(line, "ERROR too many admin clients\r\n");
    assert_true(t_now_ms() - t0 >= 900); /* it waited for a slot first */
    assert_int_equal(t_wait_eof(late, T_MS), 0);
    close(late);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.admin_refused, 1);
    char reply[8192];
    close(busy[0]); /* a slot frees: the next client is served */
    assert_true(t_admin(ap, "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "admin_refused"), 1);
    for (int i = 1; i < ADMIN_SLOTS; i++)
        close(busy[i]);
    ps_server_destroy(srv);
}

static void test_start_failures(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *first = t_start_echo(&cfg);
    assert_non_null(first);

    /* The data port is taken: start fails, says why, holds nothing. */
    ps_config clash;
    t_config(&clash);
    clash.port = ps_server_port(first);
    ps_server *srv = NULL;
    assert_int_equal(ps_server_create(&srv, &clash, &ps_echo_handler, NULL, NULL, 0), 0);
    char err[256] = "";
    assert_int_equal(ps_server_start(srv, err, sizeof err), -EADDRINUSE);
    assert_non_null(strstr(err, "bind"));
    ps_server_destroy(srv);

    /* The admin port is taken: the data port is released again. */
    t_config(&clash);
    clash.admin_port = ps_server_admin_port(first);
    assert_int_equal(ps_server_create(&srv, &clash, &ps_echo_handler, NULL, NULL, 0), 0);
    assert_int_equal(ps_server_start(srv, err, sizeof err), -EADDRINUSE);
    assert_non_null(strstr(err, "admin"));
    assert_int_equal(ps_server_port(srv), 0);
    ps_server_destroy(srv);

    /* An address that is not ours. */
    t_config(&clash);
    snprintf(clash.bind, sizeof clash.bind, "192.0.2.1");
    assert_int_equal(ps_server_create(&srv, &clash, &ps_echo_handler, NULL, NULL, 0), 0);
    assert_true(ps_server_start(srv, err, sizeof err) < 0);
    ps_server_destroy(srv);

    assert_int_equal(ps_server_create(&srv, NULL, &ps_echo_handler, NULL, NULL, 0), -EINVAL);
    assert_int_equal(ps_server_create(&srv, NULL, &ps_echo_handler, NULL, err, sizeof err), -EINVAL);
    assert_string_equal(err, "ps_server_create: invalid argument");
    ps_server_destroy(first);
}

/* An invalid configuration is refused by ps_server_create with the reason,
 * as the file loader would give it (without file:line). */
static void test_create_says_why(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.workers = 0;
    ps_server *srv = NULL;
    char err[256] = "";
    assert_int_equal(ps_server_create(&srv, &cfg, &ps_echo_handler, NULL, err, sizeof err),
                     PS_ECONFIG);
    assert_null(srv);
    assert_string_equal(err, "pool.workers: expected an integer from 1 to 4096, got \"0\"");
    t_config(&cfg);
    cfg.port = 7000;
    cfg.admin_port = 7000;
    assert_int_equal(ps_server_create(&srv, &cfg, &ps_echo_handler, NULL, err, sizeof err),
                     PS_ECONFIG);
    assert_non_null(strstr(err, "admin.port: admin 127.0.0.1:7000 clashes"));
    /* A NULL err is allowed. */
    assert_int_equal(ps_server_create(&srv, &cfg, &ps_echo_handler, NULL, NULL, 0), PS_ECONFIG);
}

/* A log sink set by an embedding program gets every line at or above the
 * level, with its level and without a timestamp, from the server's threads;
 * NULL restores stderr. */
typedef struct log_capture {
    pthread_mutex_t lock;
    int lines, warns;
    char listening[256];
} log_capture;

static void capture_line(ps_log_level level, const char *message, void *arg)
{
    log_capture *c = arg;
    pthread_mutex_lock(&c->lock);
    c->lines++;
    if (level == PS_LOG_WARN)
        c->warns++;
    if (strncmp(message, "listening on ", 13) == 0)
        snprintf(c->listening, sizeof c->listening, "%s", message);
    pthread_mutex_unlock(&c->lock);
}

static void test_log_sink(void **state)
{
    (void)state;
    log_capture cap = {.lock = PTHREAD_MUTEX_INITIALIZER};
    ps_log_level old = ps_log_get_level();
    ps_config cfg;
    t_config(&cfg); /* sets the level to error */
    ps_log_set_level(PS_LOG_WARN);
    ps_log_set_sink(capture_line, &cap);
    cfg.max_line = 16;
    cfg.slow_handler_ms = 0;
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    /* A line too long is logged at info: below the level, not passed. */
    int fd = t_connect_greeted(ps_server_port(srv), T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "this line is longer than sixteen bytes\n"), 0);
    expect_line(fd, "ERROR line too long\r\n");
    close(fd);
    ps_log_warn("a warning from the test");
    ps_server_destroy(srv);
    ps_log_set_sink(NULL, NULL);
    ps_log_set_level(old);
    pthread_mutex_lock(&cap.lock);
    char want[64];
    snprintf(want, sizeof want, "listening on %s:", "127.0.0.1");
    assert_non_null(strstr(cap.listening, want)); /* ps_log_always, whatever the level */
    assert_int_equal(cap.warns, 1);
    assert_true(cap.lines >= 2);
    pthread_mutex_unlock(&cap.lock);
}

/* A handler of blocks: "put N" asks for N bytes and answers "got N HASH"
 * (FNV-1a of the block); "skip N" discards N bytes; "twice" asks twice; any
 * other line is echoed. */
static int block_got(ps_conn *conn, const void *data, size_t len, void *ud)
{
    (void)ud;
    char reply[64];
    int n = snprintf(reply, sizeof reply, "got %zu %016llx\r\n", len,
                     (unsigned long long)t_fnv1a64(T_FNV1A64_INIT, data, len));
    return ps_conn_send(conn, reply, (size_t)n) < 0 ? PS_CLOSE : PS_CONTINUE;
}

static int block_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)ud;
    char text[64];
    snprintf(text, sizeof text, "%.*s", (int)(line->len < 63 ? line->len : 63), line->data);
    unsigned long long n = 0;
    int rc = 0;
    bool answered = true;
    if (sscanf(text, "put %llu", &n) == 1)
        rc = ps_conn_read_bytes(conn, (size_t)n, block_got);
    else if (sscanf(text, "skip %llu", &n) == 1)
        rc = ps_conn_read_bytes(conn, (size_t)n, NULL);
    else if (strcmp(text, "twice") == 0)
        rc = ps_conn_read_bytes(conn, 1, block_got) == 0 ? ps_conn_read_bytes(conn, 1, block_got)
                                                         : -1;
    else
        answered = false;
    if (!answered)
        return ps_conn_send(conn, line->data, line->len + line->eol_len) < 0 ? PS_CLOSE
                                                                             : PS_CONTINUE;
    if (rc != 0 || strncmp(text, "skip", 4) == 0) {
        char reply[32];
        int k = snprintf(reply, sizeof reply, rc != 0 ? "ERR %d\r\n" : "skipping\r\n", rc);
        return ps_conn_send(conn, reply, (size_t)k) < 0 ? PS_CLOSE : PS_CONTINUE;
    }
    return PS_CONTINUE;
}

static const ps_handler block_handler = {.on_line = block_line};

static void expect_block(int fd, const void *data, size_t len)
{
    char want[64];
    snprintf(want, sizeof want, "got %zu %016llx\r\n", len,
             (unsigned long long)t_fnv1a64(T_FNV1A64_INIT, data, len));
    expect_line(fd, want);
}

/* ps_conn_read_bytes: blocks given whole and binary safe, however the
 * bytes arrive (with the next line in the same write, byte by byte, back
 * to back, 1 MiB); over max_block refused and the stream goes on; skipped
 * bytes never reach the framer; a client gone mid-block is closed. */
static void test_read_bytes_blocks(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_block = 1100000;
    cfg.greeting[0] = '\0';
    ps_server *srv = t_start(&cfg, &block_handler);
    assert_non_null(srv);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);

    static const char bin[] = "a\nb\0c\r\nd";
    char req[64];
    int n = snprintf(req, sizeof req, "put %zu\n", sizeof bin - 1);
    assert_int_equal(t_write_all(fd, req, (size_t)n), 0);
    assert_int_equal(t_write_all(fd, bin, sizeof bin - 1), 0);
    assert_int_equal(t_send_str(fd, "next\n"), 0);
    expect_block(fd, bin, sizeof bin - 1);
    expect_line(fd, "next\n");

    /* Byte by byte. */
    unsigned char slow[100];
    for (size_t i = 0; i < sizeof slow; i++)
        slow[i] = (unsigned char)(i * 37 + 1);
    assert_int_equal(t_send_str(fd, "put 100\n"), 0);
    for (size_t i = 0; i < sizeof slow; i++)
        assert_int_equal(t_write_all(fd, slow + i, 1), 0);
    expect_block(fd, slow, sizeof slow);

    /* Back to back in one write, and two asks from one callback. */
    assert_int_equal(t_send_str(fd, "put 3\nabcput 3\ndeftwice\n"), 0);
    expect_block(fd, "abc", 3);
    expect_block(fd, "def", 3);
    expect_line(fd, "ERR -16\r\n"); /* -EBUSY: one request at a time */
    assert_int_equal(t_send_str(fd, "x"), 0);
    expect_block(fd, "x", 1);

    /* 1 MiB. */
    size_t big = 1024 * 1024;
    unsigned char *blob = malloc(big);
    assert_non_null(blob);
    for (size_t i = 0; i < big; i++)
        blob[i] = (unsigned char)((i * 2654435761u) >> 13);
    n = snprintf(req, sizeof req, "put %zu\n", big);
    assert_int_equal(t_write_all(fd, req, (size_t)n), 0);
    assert_int_equal(t_write_all(fd, blob, big), 0);
    expect_block(fd, blob, big);

    /* Over max_block: refused, nothing asked; the next line is a line. */
    assert_int_equal(t_send_str(fd, "put 1100001\nstill lines\n"), 0);
    expect_line(fd, "ERR -90\r\n"); /* -EMSGSIZE */
    expect_line(fd, "still lines\n");
    assert_int_equal(t_send_str(fd, "put 0\n"), 0);
    expect_line(fd, "ERR -22\r\n"); /* -EINVAL */

    /* Skipped: past max_block too, never framed. */
    assert_int_equal(t_send_str(fd, "skip 2000000\n"), 0);
    expect_line(fd, "skipping\r\n");
    memset(blob, '\n', big); /* lines, were they framed */
    assert_int_equal(t_write_all(fd, blob, big), 0);
    assert_int_equal(t_write_all(fd, blob, 2000000 - big), 0);
    assert_int_equal(t_send_str(fd, "after\n"), 0);
    expect_line(fd, "after\n");
    free(blob);
    close(fd);

    /* Gone mid-block: closed, counted out, fn never called. */
    fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "put 100\nonly part of it"), 0);
    close(fd);
    ps_server_stats st;
    for (int i = 0; i < 200; i++) {
        ps_server_get_stats(srv, &st);
        if (st.curr_connections == 0)
            break;
        t_readable(-1, 10);
    }
    assert_int_equal(st.curr_connections, 0);
    assert_int_equal(st.blocks, 6);
    ps_server_destroy(srv);
}

/* The local port of a client socket, as the server sees its peer. */
static unsigned local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    return ntohs(a.sin_port);
}

/* stats conns: a line per connection with its client address and lines,
 * gone once it closes; with more connections than fit one reply, the rest
 * are counted, not lost, and the reply stays whole. */
static void test_admin_stats_conns(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = t_start_echo(&cfg);
    assert_non_null(srv);
    uint16_t ap = ps_server_admin_port(srv);
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = t_connect_greeted(ps_server_port(srv), T_MS);
        assert_true(fds[i] >= 0);
    }
    assert_int_equal(t_send_str(fds[1], "a\nb\n"), 0);
    expect_line(fds[1], "a\n");
    expect_line(fds[1], "b\n");
    static char reply[65536];
    assert_true(t_admin(ap, "stats conns", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "conns_listed"), 3);
    assert_int_equal(t_stat(reply, "conns_omitted"), 0);
    for (int i = 0; i < 3; i++) {
        char want[64];
        snprintf(want, sizeof want, " 127.0.0.1:%u age=", local_port(fds[i]));
        const char *at = strstr(reply, want);
        if (at == NULL)
            fail_msg("no line for client %d in:\n%s", i, reply);
        const char *eol = strstr(at, "\r\n");
        assert_non_null(eol);
        char line[256];
        snprintf(line, sizeof line, "%.*s", (int)(eol - at), at);
        assert_non_null(strstr(line, i == 1 ? " lines=2" : " lines=0"));
        assert_non_null(strstr(line, " idle="));
        assert_non_null(strstr(line, " state="));
    }
    close(fds[0]);
    for (int i = 0; i < 200; i++) { /* until the server has seen the close */
        assert_true(t_admin(ap, "stats conns", reply, sizeof reply) > 0);
        if (t_stat(reply, "conns_listed") == 2)
            break;
        t_readable(-1, 10);
    }
    assert_int_equal(t_stat(reply, "conns_listed"), 2);
    close(fds[1]);
    close(fds[2]);

    /* Many: the reply is bounded, listed + omitted = connected (connection
     * mode holds 25 and queues the rest, all of them counted). */
    enum { MANY = 250 };
    static int many[MANY];
    for (int i = 0; i < MANY; i++) {
        many[i] = t_connect(ps_server_port(srv));
        assert_true(many[i] >= 0);
    }
    for (int i = 0; i < 200; i++) {
        assert_true(t_admin(ap, "stats conns", reply, sizeof reply) > 0);
        if (t_stat(reply, "conns_listed") + t_stat(reply, "conns_omitted") == MANY)
            break;
        t_readable(-1, 10);
    }
    assert_int_equal(t_stat(reply, "conns_listed") + t_stat(reply, "conns_omitted"), MANY);
    assert_int_equal(t_stat(reply, "conns_listed"), 200); /* the most listed */
    assert_int_equal(t_stat(reply, "conns_omitted"), MANY - 200);
    assert_non_null(strstr(reply, "END\r\n"));
    for (int i = 0; i < MANY; i++)
        close(many[i]);
    ps_server_destroy(srv);
}

/* Greets with the client's address as the connection layer has it. */
static int peer_open(ps_conn *conn, void *ud)
{
    (void)ud;
    char line[128];
    int n = snprintf(line, sizeof line, "peer %s\r\n", ps_conn_peer(conn));
    return ps_conn_send(conn, line, (size_t)n) < 0 ? PS_CLOSE : PS_CONTINUE;
}

static const ps_handler peer_handler = {.on_open = peer_open, .on_line = NULL};

/* Sends bytes and expects the peer greeting `want` (NULL: expects the
 * connection closed without a byte). Returns the socket (or -1). */
static int proxied(uint16_t port, const void *hdr, size_t len, size_t split, const char *want)
{
    int fd = t_connect(port);
    assert_true(fd >= 0);
    if (split > 0 && split < len) {
        assert_int_equal(t_write_all(fd, hdr, split), 0);
        assert_false(t_readable(fd, 50)); /* half a header: nothing yet */
        assert_int_equal(t_write_all(fd, (const char *)hdr + split, len - split), 0);
    } else if (len > 0) {
        assert_int_equal(t_write_all(fd, hdr, len), 0);
    }
    char line[256];
    ssize_t n = t_read_line(fd, line, sizeof line, T_MS);
    if (want == NULL) {
        assert_true(n <= 0);
        close(fd);
        return -1;
    }
    assert_true(n > 0);
    assert_string_equal(line, want);
    return fd;
}

/* PROXY protocol: a trusted peer's header gives the client's address to
 * the connection (v1, v2 in pieces, v2 LOCAL keeping the real one); the
 * bytes after the header are the client's; a bad, missing or untrusted
 * header closes the connection, counted in proxy_errors. */
static void test_proxy_protocol(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.proxy_protocol = PS_PROXY_ANY;
    cfg.proxy_timeout = 1;
    ps_server *srv = t_start(&cfg, &peer_handler);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);

    static const char v1[] = "PROXY TCP4 203.0.113.7 192.0.2.1 40000 9050\r\n";
    int fd = proxied(port, v1, sizeof v1 - 1, 0, "peer 203.0.113.7:40000\r\n");
    close(fd);
    /* v2 over IPv6, in two writes. */
    static const unsigned char v2[] = {
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x21, 0x00, 36,
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, /* 2001:db8::1 */
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, /* 2001:db8::2 */
        0x15, 0xb3, 0x23, 0x82};                                    /* 5555, 9090 */
    fd = proxied(port, v2, sizeof v2, 7, "peer [2001:db8::1]:5555\r\n");
    close(fd);
    /* LOCAL (a balancer's own health check): the real address stays. */
    static const unsigned char local[] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51,
                                          0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0x00, 0x00};
    int lfd = t_connect(port);
    assert_true(lfd >= 0);
    assert_int_equal(t_write_all(lfd, local, sizeof local), 0);
    char line[256];
    assert_true(t_read_line(lfd, line, sizeof line, T_MS) > 0);
    assert_true(strncmp(line, "peer 127.0.0.1:", 15) == 0);
    close(lfd);

    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.proxy_errors, 0);
    /* Not a header; a header cut by a close; no header in time. */
    proxied(port, "GET / HTTP/1.0\r\n\r\n", 18, 0, NULL);
    proxied(port, v1, 20, 0, NULL); /* half, then nothing: the timeout */
    fd = t_connect(port);
    assert_true(fd >= 0);
    assert_int_equal(t_write_all(fd, v1, 10), 0);
    shutdown(fd, SHUT_WR);
    assert_true(t_read_line(fd, line, sizeof line, T_MS) <= 0);
    close(fd);
    for (int i = 0; i < 100; i++) { /* counted before the close is seen, mostly */
        ps_server_get_stats(srv, &st);
        if (st.proxy_errors == 3 && st.curr_connections == 0)
            break;
        t_readable(-1, 10);
    }
    assert_int_equal(st.proxy_errors, 3);
    assert_int_equal(st.curr_connections, 0);
    ps_server_destroy(srv);

    /* A peer outside proxy_trusted: closed at once, header or not. */
    snprintf(cfg.proxy_trusted, sizeof cfg.proxy_trusted, "10.0.0.0/8, 192.168.0.0/16");
    srv = t_start(&cfg, &peer_handler);
    assert_non_null(srv);
    int64_t t0 = t_now_ms();
    proxied(ps_server_port(srv), v1, sizeof v1 - 1, 0, NULL);
    assert_true(t_now_ms() - t0 < 900); /* not the header timeout */
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.proxy_errors, 1);
    ps_server_destroy(srv);
}

/* A PROXY header cut by the peer's close ends the connection at once (not
 * at proxy_timeout, holding a descriptor till then), counted in
 * proxy_errors: bytes and FIN together, and the FIN after the bytes. */
static void test_proxy_cut_header(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.proxy_protocol = PS_PROXY_ANY;
    cfg.proxy_timeout = 30;
    ps_server *srv = t_start(&cfg, &peer_handler);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    static const char cut[] = "PROXY TCP4 1.2.";
    int64_t t0 = t_now_ms();
    for (int i = 0; i < 2; i++) {
        int fd = t_connect(port);
        assert_true(fd >= 0);
        assert_int_equal(t_write_all(fd, cut, sizeof cut - 1), 0);
        if (i == 1) /* the bytes seen alone first: "need more" */
            assert_false(t_readable(fd, 50));
        assert_int_equal(shutdown(fd, SHUT_WR), 0);
        assert_true(t_wait_eof(fd, T_MS) >= 0);
        close(fd);
    }
    assert_true(t_now_ms() - t0 < T_MS); /* far from proxy_timeout's 30 s */
    assert_int_equal(wait_stat(srv, "stats", "proxy_errors", 2), 2);
    assert_int_equal(wait_stat(srv, "stats", "proxy_pending", 0), 0);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.curr_connections, 0);
    ps_server_destroy(srv);
}

/* Connections still without a PROXY header are bounded by
 * proxy_max_pending, not max_connections: while as many wait as may,
 * clients whose header comes are served up to max_connections (and the one
 * past it refused once its header is read); a connection arriving at the
 * bound closes the oldest waiting one, counted in rejected_proxy_pending. */
static void test_proxy_pending_bound(void **state)
{
    (void)state;
    enum { MAXC = 3, PENDING = 6 };
    ps_config cfg;
    t_config(&cfg);
    cfg.proxy_protocol = PS_PROXY_V1;
    cfg.proxy_timeout = 30;
    cfg.proxy_max_pending = PENDING;
    cfg.max_connections = MAXC;
    cfg.max_connections_wait_ms = 0;
    ps_server *srv = t_start(&cfg, &peer_handler);
    assert_non_null(srv);
    uint16_t port = ps_server_port(srv);
    int idle[PENDING + 2];
    for (int i = 0; i < PENDING; i++) {
        idle[i] = t_connect(port);
        assert_true(idle[i] >= 0);
        /* One at a time, so that idle[0] is the oldest. */
        assert_int_equal(wait_stat(srv, "stats", "proxy_pending", i + 1), i + 1);
    }
    /* The first client's arrival makes room: idle[0] goes. */
    static const char v1[] = "PROXY TCP4 203.0.113.7 192.0.2.1 40000 9050\r\n";
    int served[MAXC];
    for (int i = 0; i < MAXC; i++)
        served[i] = proxied(port, v1, sizeof v1 - 1, 0, "peer 203.0.113.7:40000\r\n");
    assert_true(t_wait_eof(idle[0], T_MS) >= 0);
    int over = t_connect(port);
    assert_true(over >= 0);
    assert_int_equal(t_write_all(over, v1, sizeof v1 - 1), 0);
    expect_line(over, "ERROR too many connections\r\n");
    close(over);
    assert_int_equal(wait_stat(srv, "stats", "rejected_max_connections", 1), 1);
    assert_int_equal(wait_stat(srv, "stats", "proxy_pending", PENDING - 1), PENDING - 1);
    assert_int_equal(wait_stat(srv, "stats", "rejected_proxy_pending", 1), 1);

    /* Up to the bound again; one more closes the oldest left, idle[1]. */
    idle[PENDING] = t_connect(port);
    assert_true(idle[PENDING] >= 0);
    assert_int_equal(wait_stat(srv, "stats", "proxy_pending", PENDING), PENDING);
    idle[PENDING + 1] = t_connect(port);
    assert_true(idle[PENDING + 1] >= 0);
    assert_true(t_wait_eof(idle[1], T_MS) >= 0);
    assert_int_equal(wait_stat(srv, "stats", "rejected_proxy_pending", 2), 2);
    assert_int_equal(wait_stat(srv, "stats", "proxy_pending", PENDING), PENDING);
    for (int i = 2; i < PENDING + 2; i++)
        assert_false(t_readable(idle[i], 0));
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.curr_connections, MAXC);
    assert_int_equal(st.proxy_errors, 0);
    for (int i = 0; i < PENDING + 2; i++)
        close(idle[i]);
    for (int i = 0; i < MAXC; i++)
        close(served[i]);
    assert_int_equal(wait_stat(srv, "stats", "proxy_pending", 0), 0);
    assert_int_equal(wait_stat(srv, "stats", "curr_connections", 0), 0);
    ps_server_destroy(srv);
}

static void test_ipv6_loopback(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    snprintf(cfg.bind, sizeof cfg.bind, "::1");
    ps_server *srv = NULL;
    assert_int_equal(ps_server_create(&srv, &cfg, &ps_echo_handler, cfg.greeting, NULL, 0), 0);
    char err[256];
    if (ps_server_start(srv, err, sizeof err) != 0) {
        ps_server_destroy(srv);
        skip(); /* no IPv6 on this machine */
    }
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons(ps_server_port(srv))};
    sa.sin6_addr = in6addr_loopback;
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    expect_line(fd, greeting);
    assert_int_equal(t_send_str(fd, "six\n"), 0);
    expect_line(fd, "six\n");
    close(fd);
    ps_server_destroy(srv);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || !t_set_dispatch(argv[1])) {
        fprintf(stderr, "usage: test_server connection|event|thread [TEST_PATTERN]\n");
        return 2;
    }
    if (argc == 3)
        cmocka_set_test_filter(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greeting_and_echo),
        cmocka_unit_test(test_close_commands),
        cmocka_unit_test(test_no_greeting_when_empty),
        cmocka_unit_test(test_line_too_long),
        cmocka_unit_test(test_pipelined_lines_in_order),
        cmocka_unit_test(test_partial_line_survives_other_clients),
        cmocka_unit_test(test_half_close_gets_every_reply),
        cmocka_unit_test(test_close_after_a_reply_that_waits),
        cmocka_unit_test(test_clients_wait_for_a_worker),
        cmocka_unit_test(test_queue_full_rejects_busy),
        cmocka_unit_test(test_max_connections),
        cmocka_unit_test(test_max_connections_close_then_connect),
        cmocka_unit_test(test_max_connections_waiters),
        cmocka_unit_test(test_max_connections_wait_ends),
        cmocka_unit_test(test_deferred_replies_in_order),
        cmocka_unit_test(test_deferred_reply_frees_the_worker),
        cmocka_unit_test(test_deferred_reply_close_paths),
        cmocka_unit_test(test_admin_threads_follow_clients),
        cmocka_unit_test(test_admin_answers_while_saturated),
        cmocka_unit_test(test_blocked_handlers_fill_the_pool),
        cmocka_unit_test(test_quick_client_beside_held_handlers),
        cmocka_unit_test(test_event_queue_depth_counts_claimed_connections),
        cmocka_unit_test(test_slow_handlers_counted),
        cmocka_unit_test(test_many_clients),
        cmocka_unit_test(test_silent_clients_cost_no_worker),
        cmocka_unit_test(test_event_shards_follow_the_client_cpu),
        cmocka_unit_test(test_flooding_client_does_not_starve_others),
        cmocka_unit_test(test_admin_commands),
        cmocka_unit_test(test_idle_timeout),
        cmocka_unit_test(test_send_timeout_never_reading_client),
        cmocka_unit_test(test_vanishing_clients),
        cmocka_unit_test(test_stop_closes_clients),
        cmocka_unit_test(test_drain_serves_then_stops),
        cmocka_unit_test(test_drain_cut),
        cmocka_unit_test(test_stop_tells_queued_clients),
        cmocka_unit_test(test_admin_commands_sent_together),
        cmocka_unit_test(test_admin_burst_all_answered),
        cmocka_unit_test(test_admin_full_refuses),
        cmocka_unit_test(test_admin_ready_agent_metrics),
        cmocka_unit_test(test_start_failures),
        cmocka_unit_test(test_create_says_why),
        cmocka_unit_test(test_log_sink),
        cmocka_unit_test(test_ipv6_loopback),
        cmocka_unit_test(test_proxy_protocol),
        cmocka_unit_test(test_proxy_cut_header),
        cmocka_unit_test(test_proxy_pending_bound),
        cmocka_unit_test(test_admin_stats_conns),
        cmocka_unit_test(test_read_bytes_blocks),
    };
    return cmocka_run_group_tests_name(argv[1], tests, NULL, NULL);
}
