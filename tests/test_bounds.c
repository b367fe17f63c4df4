/* What a connection may hold, in-process, once per dispatch mode (argv[1]):
 * sends by reference (ps_conn_send_ref) written whole and released once,
 * also when the client leaves; ps_conn_unsend taking back a failed reply;
 * limits.max_output closing a connection with nothing of the reply
 * written; a connection object that cannot be allocated closes its
 * descriptor once.
 *
 * The library's calloc and close are wrapped (-Wl,--wrap): a test can make
 * the next connection's allocation fail, and every close that finds its
 * descriptor already closed (EBADF: a double close) is counted. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "poolsrv/server.h"
#include "support.h"
#include "conn.h"

#define T_MS 5000

/* ---- the wrapped calls ---- */

void *__real_calloc(size_t n, size_t size);
int __real_close(int fd);

static atomic_bool fail_next_conn;   /* the next connection object's calloc fails */
static atomic_int conn_allocs_failed;
static atomic_int double_closes;

void *__wrap_calloc(size_t n, size_t size)
{
    /* Only a connection object is this large (and called for with n 1). */
    if (n == 1 && size >= sizeof(ps_conn) && atomic_exchange(&fail_next_conn, false)) {
        atomic_fetch_add(&conn_allocs_failed, 1);
        errno = ENOMEM;
        return NULL;
    }
    return __real_calloc(n, size);
}

int __wrap_close(int fd)
{
    int rc = __real_close(fd);
    if (rc < 0 && errno == EBADF)
        atomic_fetch_add(&double_closes, 1);
    return rc;
}

/* ---- a handler that sends by reference ---- */

#define BIG (1 << 20)
static char big[BIG];
static atomic_int refs_sent, refs_released;

static void release_big(void *arg)
{
    (void)arg;
    atomic_fetch_add(&refs_released, 1);
}

static int send_big(ps_conn *conn, long n)
{
    for (long i = 0; i < n; i++) {
        atomic_fetch_add(&refs_sent, 1);
        if (ps_conn_send_ref(conn, big, BIG, release_big, NULL) != 0)
            return PS_CLOSE;
        if (ps_conn_send(conn, "\r\n", 2) != 0)
            return PS_CLOSE;
    }
    return ps_conn_send(conn, "END\r\n", 5) == 0 ? PS_CONTINUE : PS_CLOSE;
}

/* "big N": N references to the 1 MiB buffer, each then \r\n, then END.
 * "fail": a reply begun (a copy, a reference), taken back, an error
 * instead. "flood": 64 KiB copies until the output refuses them.
 * Anything else: echoed. */
static int on_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)ud;
    char text[64];
    size_t n = line->len < sizeof text - 1 ? line->len : sizeof text - 1;
    memcpy(text, line->data, n);
    text[n] = '\0';
    if (strncmp(text, "big ", 4) == 0)
        return send_big(conn, strtol(text + 4, NULL, 10));
    if (strcmp(text, "fail") == 0) {
        atomic_fetch_add(&refs_sent, 1);
        if (ps_conn_send(conn, "VALUE partial\r\n", 15) != 0 ||
            ps_conn_send_ref(conn, big, 100, release_big, NULL) != 0)
            return PS_CLOSE;
        if (ps_conn_unsend(conn) != 0)
            return PS_CLOSE;
        return ps_conn_send(conn, "ERROR failed\r\n", 14) == 0 ? PS_CONTINUE : PS_CLOSE;
    }
    if (strcmp(text, "flood") == 0) {
        static char chunk[65536];
        for (int i = 0; i < 1024; i++) {
            int rc = ps_conn_send(conn, chunk, sizeof chunk);
            if (rc == -ENOBUFS)
                return PS_CONTINUE; /* the layer closes it */
            if (rc != 0)
                return PS_CLOSE;
        }
        return PS_CONTINUE;
    }
    if (ps_conn_send(conn, line->data, line->len + line->eol_len) != 0)
        return PS_CLOSE;
    return PS_CONTINUE;
}

static const ps_handler handler = {.on_line = on_line};

static ps_server *start(ps_config *cfg)
{
    cfg->greeting[0] = '\0';
    ps_server *srv = t_start(cfg, &handler);
    assert_non_null(srv);
    return srv;
}

static void expect_line(int fd, const char *want)
{
    char line[256];
    ssize_t r = t_read_line(fd, line, sizeof line, T_MS);
    if (r <= 0 || strcmp(line, want) != 0)
        print_message("expected \"%s\", got %zd \"%s\"\n", want, r, r > 0 ? line : "");
    assert_true(r > 0);
    assert_string_equal(line, want);
}

static void stop(ps_server *srv)
{
    ps_server_destroy(srv);
    /* Every reference given is released by the time the server is gone. */
    assert_int_equal(atomic_load(&refs_released), atomic_load(&refs_sent));
    assert_int_equal(atomic_load(&double_closes), 0);
}

/* 40 MiB by reference, read whole: each byte as sent, each span released. */
static void test_send_ref_written_whole(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = start(&cfg);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "big 40\n"), 0);
    char *got = malloc(BIG + 2);
    assert_non_null(got);
    for (int i = 0; i < 40; i++) {
        assert_int_equal(t_read_exact(fd, got, BIG + 2, T_MS), 0);
        assert_memory_equal(got, big, BIG);
        assert_memory_equal(got + BIG, "\r\n", 2);
    }
    free(got);
    expect_line(fd, "END\r\n");
    assert_int_equal(t_send_str(fd, "after\n"), 0);
    expect_line(fd, "after\n");
    close(fd);
    stop(srv);
}

/* 200 MiB asked for by a client that leaves unread: the spans go back
 * when the connection closes. */
static void test_send_ref_released_when_client_leaves(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = start(&cfg);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "big 200\n"), 0);
    char some[4096];
    assert_int_equal(t_read_exact(fd, some, sizeof some, T_MS), 0);
    close(fd);
    /* Another client is served meanwhile. */
    int other = t_connect(ps_server_port(srv));
    assert_true(other >= 0);
    assert_int_equal(t_send_str(other, "hello\n"), 0);
    expect_line(other, "hello\n");
    close(other);
    stop(srv);
}

/* A reply taken back is never read: the client gets the error in its
 * place, then the next reply. */
static void test_unsend_takes_back_a_failed_reply(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = start(&cfg);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "one\nfail\ntwo\n"), 0);
    expect_line(fd, "one\n");
    expect_line(fd, "ERROR failed\r\n");
    expect_line(fd, "two\n");
    close(fd);
    stop(srv);
}

/* Past limits.max_output: nothing more is written (not even the replies
 * queued before in the same read), the connection closes, counted; other
 * clients are served. */
static void test_max_output_closes_without_a_cut_reply(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    cfg.max_output = 1 << 20;
    ps_server *srv = start(&cfg);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "flood\n"), 0);
    assert_int_equal(t_wait_eof(fd, T_MS), 0); /* EOF, with no byte before it */
    close(fd);
    ps_server_stats st;
    ps_server_get_stats(srv, &st);
    assert_int_equal(st.output_overflows, 1);
    int other = t_connect(ps_server_port(srv));
    assert_int_equal(t_send_str(other, "still\n"), 0);
    expect_line(other, "still\n");
    close(other);
    stop(srv);
}

/* A connection object that cannot be allocated: the client is closed, its
 * descriptor once (a second close could hit one another thread just got),
 * and the server goes on. */
static void test_conn_alloc_failure_closes_once(void **state)
{
    (void)state;
    ps_config cfg;
    t_config(&cfg);
    ps_server *srv = start(&cfg);
    /* A client served first: the acceptor's own allocations are behind it. */
    int first = t_connect(ps_server_port(srv));
    assert_int_equal(t_send_str(first, "first\n"), 0);
    expect_line(first, "first\n");
    atomic_store(&fail_next_conn, true);
    int fd = t_connect(ps_server_port(srv));
    assert_true(fd >= 0);
    ssize_t r = t_wait_eof(fd, T_MS);
    if (r != 0)
        print_message("t_wait_eof: %zd\n", r);
    assert_int_equal(r, 0);
    close(fd);
    assert_int_equal(atomic_load(&conn_allocs_failed), 1);
    int other = t_connect(ps_server_port(srv));
    assert_int_equal(t_send_str(other, "next\n"), 0);
    expect_line(other, "next\n");
    close(other);
    close(first);
    stop(srv);
}

int main(int argc, char **argv)
{
    if (argc != 2 || !t_set_dispatch(argv[1])) {
        fprintf(stderr, "usage: test_bounds connection|event|thread\n");
        return 2;
    }
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)(i * 31 + (i >> 12));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_send_ref_written_whole),
        cmocka_unit_test(test_send_ref_released_when_client_leaves),
        cmocka_unit_test(test_unsend_takes_back_a_failed_reply),
        cmocka_unit_test(test_max_output_closes_without_a_cut_reply),
        cmocka_unit_test(test_conn_alloc_failure_closes_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
