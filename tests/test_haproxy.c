/* The deployment of conf/haproxy.cfg, run for real: HAProxy from Debian in
 * front of two poolsrv instances on loopback (PROXY protocol v2, the
 * admin port's `ready` as the health check and `agent` as the agent
 * check). Checked, with clients looping through HAProxy all along:
 *   - each instance sees the client's own address (stats conns);
 *   - kill -9 of one instance: HAProxy marks it down within about a
 *     second, new clients reach the other, and only sessions the killed
 *     instance held fail;
 *   - SIGTERM of the other with drain_delay (after the first came back):
 *     HAProxy stops sending it clients before it stops accepting, and no
 *     session through HAProxy fails.
 * Skipped, saying so, without haproxy (never under POOLSRV_REQUIRE_TOOLS).
 * Every wait is bounded. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "support.h"

#define HAPROXY_BIN "/usr/sbin/haproxy"
#define START_MS 20000
#define SESSION_MS 10000
#define LOOPERS 2

static t_proc g_s1, g_s2, g_hp; /* stopped by the teardown if a test fails */
static t_loop *g_loop;

static int teardown_all(void **state)
{
    (void)state;
    if (g_loop != NULL) {
        t_loop_stats s;
        t_loop_stop(g_loop, &s);
        g_loop = NULL;
    }
    t_proc *ps[] = {&g_hp, &g_s1, &g_s2};
    for (int i = 0; i < 3; i++)
        if (ps[i]->pid > 0)
            t_proc_stop(ps[i], SIGKILL, 5000);
    return 0;
}

/* Starts a poolsrv for HAProxy: PROXY v2, drain_delay 2 s (HAProxy's
 * checks need 2 x 200 ms to see NOT READY), on the ports given (0: any). */
static void start_instance(t_proc *p, uint16_t port, uint16_t admin_port)
{
    char po[32], ao[32];
    snprintf(po, sizeof po, "server.port=%u", (unsigned)port);
    snprintf(ao, sizeof ao, "admin.port=%u", (unsigned)admin_port);
    char *argv[] = {POOLSRV_BIN, "-o", po, "-o", ao, "-o", "server.proxy_protocol=v2",
                    "-o", "limits.drain_delay=2", "-o", "log.level=warn", NULL};
    int rc = t_proc_start(p, argv, 0, true, START_MS);
    if (rc != 0)
        fail_msg("poolsrv did not start (%d):\n%s", rc, p->log);
}

/* conf/haproxy.cfg with the ports of this run in place of 9000, 9050/9051
 * and 9060/9061; written to a temporary file whose path is returned. */
static char *haproxy_config(uint16_t front, const t_proc *s1, const t_proc *s2)
{
    static char path[64];
    FILE *in = fopen(PS_SOURCE_DIR "/conf/haproxy.cfg", "r");
    assert_non_null(in);
    static char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, in);
    fclose(in);
    text[n] = '\0';
    char from[6][48], to[6][48];
    snprintf(from[0], sizeof from[0], "127.0.0.1:9000");
    snprintf(to[0], sizeof to[0], "127.0.0.1:%u", (unsigned)front);
    snprintf(from[1], sizeof from[1], "127.0.0.1:9050");
    snprintf(to[1], sizeof to[1], "127.0.0.1:%u", (unsigned)s1->port);
    snprintf(from[2], sizeof from[2], "port 9051 agent-port 9051");
    snprintf(to[2], sizeof to[2], "port %u agent-port %u", (unsigned)s1->admin_port,
             (unsigned)s1->admin_port);
    snprintf(from[3], sizeof from[3], "127.0.0.1:9060");
    snprintf(to[3], sizeof to[3], "127.0.0.1:%u", (unsigned)s2->port);
    snprintf(from[4], sizeof from[4], "port 9061 agent-port 9061");
    snprintf(to[4], sizeof to[4], "port %u agent-port %u", (unsigned)s2->admin_port,
             (unsigned)s2->admin_port);
    static char out[16384];
    size_t o = 0;
    for (const char *p = text; *p != '\0';) {
        int hit = -1;
        for (int i = 0; i < 5 && hit < 0; i++)
            if (strncmp(p, from[i], strlen(from[i])) == 0)
                hit = i;
        const char *piece = hit >= 0 ? to[hit] : p;
        size_t len = hit >= 0 ? strlen(to[hit]) : 1;
        assert_true(o + len < sizeof out);
        memcpy(out + o, piece, len);
        o += len;
        p += hit >= 0 ? strlen(from[hit]) : 1;
    }
    out[o] = '\0';
    for (int i = 0; i < 5; i++)
        if (strstr(out, to[i]) == NULL)
            fail_msg("conf/haproxy.cfg no longer has \"%s\"", from[i]);
    snprintf(path, sizeof path, "/tmp/poolsrv-haproxy-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, out, o), (ssize_t)o);
    close(fd);
    return path;
}

/* When HAProxy logged the n-th line containing `what` (waits, bounded). */
static int64_t wait_haproxy_says(const char *what, int n, int timeout_ms)
{
    if (t_proc_wait_log_nth(&g_hp, what, n, timeout_ms) == NULL)
        fail_msg("HAProxy never said \"%s\"; its log:\n%s", what, g_hp.log);
    return t_now_ms();
}

/* Waits for `more` sessions through HAProxy, or fails showing why. */
static void expect_served(long more, const char *when)
{
    if (t_loop_wait_served(g_loop, more, SESSION_MS))
        return;
    t_loop_stats s;
    t_loop_read(g_loop, &s);
    t_proc_drain(&g_hp);
    char reply[4096] = "";
    if (g_s1.pid > 0)
        t_admin(g_s1.admin_port, "threads", reply, sizeof reply);
    fail_msg("%s: not %ld sessions in %d ms (%ld failed, first: %s); s1 threads:\n%s\n"
             "HAProxy's log:\n%s",
             when, more, SESSION_MS, t_loop_failed(&s), s.problem, reply, g_hp.log);
}

/* A session through HAProxy kept open while both instances are asked for
 * their connections: one of them lists the client's own port. */
static void expect_real_address(uint16_t front)
{
    int fd = t_connect_greeted(front, SESSION_MS);
    assert_true(fd >= 0);
    struct sockaddr_in a;
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    char want[64];
    snprintf(want, sizeof want, " 127.0.0.1:%u age=", (unsigned)ntohs(a.sin_port));
    static char reply[65536];
    int found = 0;
    const t_proc *ps[] = {&g_s1, &g_s2};
    for (int i = 0; i < 2; i++) {
        assert_true(t_admin(ps[i]->admin_port, "stats conns", reply, sizeof reply) > 0);
        if (strstr(reply, want) != NULL)
            found++;
    }
    if (found != 1)
        fail_msg("the client's address (%s) in %d instances' stats conns", want, found);
    close(fd);
}

static void test_haproxy_deploy(void **state)
{
    (void)state;
    if (access(HAPROXY_BIN, X_OK) != 0) {
        if (getenv("POOLSRV_REQUIRE_TOOLS") != NULL)
            fail_msg("%s is missing (Debian package haproxy), and POOLSRV_REQUIRE_TOOLS is set",
                     HAPROXY_BIN);
        print_message("SKIP: %s is missing (Debian package haproxy)\n", HAPROXY_BIN);
        skip();
    }
    start_instance(&g_s1, 0, 0);
    start_instance(&g_s2, 0, 0);
    uint16_t front = t_free_port();
    char *cfg = haproxy_config(front, &g_s1, &g_s2);
    t_child_opts o = {.no_wait = true};
    assert_int_equal(t_proc_start_with(&g_hp, (char *[]){HAPROXY_BIN, "-db", "-f", cfg, NULL}, &o,
                                       false, START_MS), 0);
    /* Up once a session goes through. */
    int fd = -1;
    for (int i = 0; i < 100 && fd < 0; i++) {
        fd = t_connect_greeted(front, 1000);
        if (fd < 0)
            t_readable(-1, 50);
    }
    if (fd < 0)
        fail_msg("nothing through HAProxy; its log:\n%s", g_hp.log);
    close(fd);
    expect_real_address(front);

    g_loop = t_loop_start(front, LOOPERS, SESSION_MS);
    assert_non_null(g_loop);
    expect_served(200, "both up");

    /* kill -9 one instance. */
    t_loop_stats before, at_down, after;
    t_loop_read(g_loop, &before);
    int64_t t_kill = t_now_ms();
    assert_int_equal(t_proc_stop(&g_s1, SIGKILL, START_MS), 128 + SIGKILL);
    int64_t t_down = wait_haproxy_says("poolsrv/s1 is DOWN", 1, START_MS);
    t_loop_read(g_loop, &at_down);
    expect_served(300, "s1 killed");
    t_loop_read(g_loop, &after);
    long failed_kill = t_loop_failed(&at_down) - t_loop_failed(&before);
    long failed_after_down = t_loop_failed(&after) - t_loop_failed(&at_down);
    print_message("kill -9: marked down after %lld ms; sessions until then %ld, failed %ld (%s); "
                  "after: %ld sessions, %ld failed\n",
                  (long long)(t_down - t_kill), at_down.attempts - before.attempts, failed_kill,
                  at_down.problem[0] ? at_down.problem : "none", after.attempts - at_down.attempts,
                  failed_after_down);
    /* Only the sessions the killed instance held: one per looper at most. */
    assert_true(failed_kill <= LOOPERS);
    assert_int_equal(failed_after_down, 0);
    assert_true(t_down - t_kill < 3000);

    /* The killed one comes back on its ports; HAProxy takes it again. */
    uint16_t p1 = g_s1.port, a1 = g_s1.admin_port;
    start_instance(&g_s1, p1, a1);
    wait_haproxy_says("poolsrv/s1 is UP", 1, START_MS);

    /* SIGTERM the other with drain_delay: out of HAProxy's rotation first,
     * no session fails. */
    t_loop_stats term_before, term_after;
    t_loop_read(g_loop, &term_before);
    int64_t t_term = t_now_ms();
    assert_int_equal(kill(g_s2.pid, SIGTERM), 0);
    int64_t t_out = wait_haproxy_says("poolsrv/s2 is DOWN", 1, START_MS);
    int rc = t_proc_stop(&g_s2, 0, START_MS); /* signal 0: waits for the exit */
    int64_t t_exit = t_now_ms();
    if (rc != 0)
        fail_msg("s2 exited with %d:\n%s", rc, g_s2.log);
    expect_served(200, "s2 stopped");
    t_loop_read(g_loop, &term_after);
    long failed_term = t_loop_failed(&term_after) - t_loop_failed(&term_before);
    print_message("SIGTERM with drain_delay 2 s: out of rotation after %lld ms, exit after %lld ms; "
                  "%ld sessions, %ld failed%s%s\n",
                  (long long)(t_out - t_term), (long long)(t_exit - t_term),
                  term_after.attempts - term_before.attempts, failed_term,
                  failed_term ? ": " : "", failed_term ? term_after.problem : "");
    if (failed_term != 0) {
        t_proc_drain(&g_s1);
        t_proc_drain(&g_hp);
        fail_msg("sessions failed while s2 drained; s1's log:\n%s\nHAProxy's log:\n%s", g_s1.log,
                 g_hp.log);
    }
    assert_true(t_out < t_exit);
    assert_true(t_exit - t_term >= 2000);

    t_loop_stats total;
    t_loop_stop(g_loop, &total);
    g_loop = NULL;
    print_message("through HAProxy: %ld sessions, %ld failed; worst session %lld ms\n",
                  total.attempts, t_loop_failed(&total), total.worst_ms);
    assert_true(strstr(g_s2.log, "drain_delay: serving 2 s more") != NULL);
    t_proc_stop(&g_hp, SIGTERM, START_MS);
    rc = t_proc_stop(&g_s1, SIGTERM, START_MS);
    assert_int_equal(rc, 0);
    unlink(cfg);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_haproxy_deploy, teardown_all),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
