/* Restarts that lose no client, against the poolsrv program in one
 * dispatch mode (argv[1]): clients connect in a loop (greeting, one line,
 * its echo, "exit", the close) across five SIGUSR2 hand-overs and across
 * five restarts under socket activation, where a launcher holds the
 * sockets as systemd does and each poolsrv drains on SIGQUIT before the
 * next one starts. Also: SIGQUIT's drain itself, a hand-over whose new
 * process fails, and poolsrv started by systemd's systemd-socket-activate.
 * Every wait is bounded. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "support.h"

#define ROUNDS 5        /* restarts per test */
#define LOOPERS 2       /* client threads */
#define START_MS 20000  /* a start, a stop, a hand-over (sanitizer builds are slow) */
#define SESSION_MS 15000 /* one client session, restart included */
#define PROGRESS 50     /* sessions that show a process serves */
#define SSA_BIN "/usr/bin/systemd-socket-activate"

static const char *mode_name;
static char dispatch_opt[64]; /* "server.dispatch=MODE" */
static int g_pid;             /* the poolsrv a failed test leaves, for teardown */

static int teardown_kill(void **state)
{
    (void)state;
    if (g_pid > 0) {
        kill(g_pid, SIGKILL);
        t_wait_exit(g_pid, 5000);
    }
    g_pid = 0;
    prctl(PR_SET_CHILD_SUBREAPER, 0);
    return 0;
}

/* ---- the client loop (support.c) ---- */

static void report_and_check(const char *what, const t_loop_stats *s)
{
    print_message("%s (%s): %ld attempts, %ld served, %ld refused, %ld reset, %ld ended early, "
                  "%ld wrong, %ld timed out, %ld other; worst session %lld ms%s%s\n",
                  what, mode_name, s->attempts, s->ok, s->refused, s->reset, s->early_eof, s->wrong,
                  s->timeouts, s->other, s->worst_ms, s->problem[0] ? "; first: " : "",
                  s->problem);
    assert_int_equal(s->refused, 0);
    assert_int_equal(s->reset, 0);
    assert_int_equal(s->early_eof, 0);
    assert_int_equal(s->wrong, 0);
    assert_int_equal(s->timeouts, 0);
    assert_int_equal(s->other, 0);
    assert_int_equal(s->ok, s->attempts);
    assert_true(s->ok >= (ROUNDS + 1) * PROGRESS);
}

/* ---- log helpers ---- */

static int count_in_log(const char *log, const char *needle)
{
    int n = 0;
    for (const char *at = log; (at = strstr(at, needle)) != NULL; at += strlen(needle))
        n++;
    return n;
}

static void expect_clean_log(const t_proc *p, const char *allow)
{
    const char *bad = t_log_problem(p->log, allow);
    if (bad != NULL)
        fail_msg("poolsrv log has a problem: %.200s\nlog:\n%s", bad, p->log);
}

/* A listening TCP socket on a free loopback port, as a launcher holds it. */
static int listener(uint16_t *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(fd, 4096), 0);
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* ---- the tests ---- */

/* SIGUSR2 five times under a client loop: each time a new poolsrv takes
 * the listeners, the old one drains and exits 0; no session fails. The
 * test is the subreaper of the orphaned new processes, so it can reap
 * them. */
static void test_handover_loop(void **state)
{
    (void)state;
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0",
                    "-o", dispatch_opt, "-o", "log.level=warn", NULL};
    t_proc p;
    assert_int_equal(t_proc_start(&p, argv, 0, true, START_MS), 0);
    g_pid = p.pid;
    t_loop *loop = t_loop_start(p.port, LOOPERS, SESSION_MS);
    assert_non_null(loop);
    assert_true(t_loop_wait_served(loop, PROGRESS, SESSION_MS));
    for (int r = 1; r <= ROUNDS; r++) {
        int old = p.pid;
        assert_int_equal(kill(old, SIGUSR2), 0);
        const char *said = t_proc_wait_log_nth(&p, "hand-over: pid ", r, START_MS);
        if (said == NULL)
            fail_msg("hand-over %d not logged; log:\n%s", r, p.log);
        int next = atoi(said + strlen("hand-over: pid "));
        assert_true(next > 0 && next != old);
        g_pid = next;
        int rc = t_wait_exit(old, START_MS);
        if (rc != 0)
            fail_msg("old poolsrv %d exited with %d; log:\n%s", old, rc, p.log);
        p.pid = next;
        assert_true(t_loop_wait_served(loop, PROGRESS, SESSION_MS)); /* the new one alone serves */
    }
    t_loop_stats s;
    t_loop_stop(loop, &s);
    /* The admin listener went over too. */
    char reply[4096];
    assert_true(t_admin(p.admin_port, "threads", reply, sizeof reply) > 0);
    assert_non_null(strstr(reply, "END"));
    int rc = t_proc_stop(&p, SIGTERM, START_MS);
    g_pid = 0;
    if (rc != 0)
        fail_msg("last poolsrv exited with %d; log:\n%s", rc, p.log);
    report_and_check("hand-over", &s);
    assert_int_equal(count_in_log(p.log, "(inherited)"), 2 * ROUNDS);
    assert_int_equal(count_in_log(p.log, "drained: every connection closed"), ROUNDS);
    expect_clean_log(&p, NULL);
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

/* A new process that cannot start (its configuration broke since): the
 * hand-over fails, says why, and the old process goes on serving; a later
 * one with the file fixed succeeds. */
static void test_handover_fails_then_succeeds(void **state)
{
    (void)state;
    assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    char path[] = "/tmp/poolsrv-restart-XXXXXX";
    int cfd = mkstemp(path);
    assert_true(cfd >= 0);
    static const char good[] = "[server]\nport = 0\n[admin]\nport = 0\n[log]\nlevel = warn\n";
    assert_int_equal(write(cfd, good, sizeof good - 1), (ssize_t)(sizeof good - 1));
    close(cfd);
    char *argv[] = {POOLSRV_BIN, "-c", path, "-o", dispatch_opt, NULL};
    t_proc p;
    assert_int_equal(t_proc_start(&p, argv, 0, true, START_MS), 0);
    g_pid = p.pid;

    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("[pool]\nworkers = many\n", f);
    fclose(f);
    assert_int_equal(kill(p.pid, SIGUSR2), 0);
    if (!t_proc_wait_log(&p, "hand-over failed: pid ", START_MS))
        fail_msg("no failure logged:\n%s", p.log);
    assert_true(t_proc_wait_log(&p, "ended before it was ready: exit status 2", START_MS));
    assert_non_null(strstr(p.log, "workers")); /* the new process said what is wrong */
    int fd = t_connect_greeted(p.port, SESSION_MS);
    assert_true(fd >= 0); /* the old one serves on */
    close(fd);

    f = fopen(path, "w");
    assert_non_null(f);
    fputs(good, f);
    fclose(f);
    int old = p.pid;
    assert_int_equal(kill(old, SIGUSR2), 0);
    const char *said = t_proc_wait_log_nth(&p, "hand-over: pid ", 1, START_MS);
    if (said == NULL)
        fail_msg("second hand-over not logged:\n%s", p.log);
    p.pid = g_pid = atoi(said + strlen("hand-over: pid "));
    assert_int_equal(t_wait_exit(old, START_MS), 0);
    fd = t_connect_greeted(p.port, SESSION_MS);
    assert_true(fd >= 0);
    close(fd);
    int rc = t_proc_stop(&p, SIGTERM, START_MS);
    g_pid = 0;
    unlink(path);
    assert_int_equal(rc, 0);
    expect_clean_log(&p, "hand-over failed");
    prctl(PR_SET_CHILD_SUBREAPER, 0);
}

/* Restarts as systemd does them with poolsrv.socket: the sockets stay
 * with the launcher (this test); each poolsrv is stopped with SIGQUIT
 * (KillSignal in poolsrv.service), drains, exits, and then the next one
 * starts on the same sockets. Clients arriving in between wait in the
 * backlog: none is refused, none loses a reply. */
static void test_socket_activated_restarts(void **state)
{
    (void)state;
    uint16_t dport, aport;
    int fds[2] = {listener(&dport), listener(&aport)};
    char *argv[] = {POOLSRV_BIN, "-o", dispatch_opt, "-o", "log.level=warn", NULL};
    t_child_opts o = {.listen_fds = fds, .nlisten = 2, .listen_names = "data:admin"};
    t_loop *loop = t_loop_start(dport, LOOPERS, SESSION_MS);
    assert_non_null(loop);
    t_loop_stats s;
    int64_t worst_gap = 0;
    for (int r = 0; r <= ROUNDS; r++) {
        t_proc p;
        int rc = t_proc_start_with(&p, argv, &o, true, START_MS);
        if (rc != 0)
            fail_msg("poolsrv %d did not start (%d):\n%s", r, rc, p.log);
        g_pid = p.pid;
        assert_int_equal(p.port, dport);
        assert_true(t_loop_wait_served(loop, PROGRESS, SESSION_MS));
        if (r == ROUNDS) {
            t_loop_stop(loop, &s); /* before the last stop: nobody would take them */
            rc = t_proc_stop(&p, SIGTERM, START_MS);
        } else {
            int64_t t1 = t_now_ms();
            rc = t_proc_stop(&p, SIGQUIT, START_MS);
            if (t_now_ms() - t1 > worst_gap)
                worst_gap = t_now_ms() - t1;
            if (rc == 0 && strstr(p.log, "drained: every connection closed") == NULL)
                fail_msg("poolsrv %d did not drain; log:\n%s", r, p.log);
        }
        g_pid = 0;
        if (rc != 0)
            fail_msg("poolsrv %d exited with %d; log:\n%s", r, rc, p.log);
        expect_clean_log(&p, NULL);
    }
    close(fds[0]);
    close(fds[1]);
    print_message("socket activation (%s): longest SIGQUIT to exit %lld ms\n", mode_name,
                  (long long)worst_gap);
    report_and_check("socket-activated restarts", &s);
}

/* SIGQUIT with a client mid-conversation: the process takes no new client
 * but answers this one until it leaves, then exits 0. A client that never
 * leaves is closed after shutdown_timeout. */
static void test_sigquit_drains(void **state)
{
    (void)state;
    for (int stays = 0; stays < 2; stays++) {
        char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0",
                        "-o", dispatch_opt, "-o", "log.level=warn",
                        "-o", "limits.shutdown_timeout=1", NULL};
        t_proc p;
        assert_int_equal(t_proc_start(&p, argv, 0, true, START_MS), 0);
        g_pid = p.pid;
        int fd = t_connect_greeted(p.port, SESSION_MS);
        assert_true(fd >= 0);
        int64_t t0 = t_now_ms();
        assert_int_equal(kill(p.pid, SIGQUIT), 0);
        assert_true(t_proc_wait_log(&p, "draining: 1 connection open", START_MS));
        /* Served while draining, more than once. */
        for (int i = 0; i < 3; i++) {
            char want[32], got[64];
            snprintf(want, sizeof want, "during drain %d\r\n", i);
            assert_int_equal(t_send_str(fd, want), 0);
            assert_true(t_read_line(fd, got, sizeof got, SESSION_MS) > 0);
            assert_string_equal(got, want);
        }
        /* Nobody takes a new client: it waits in the backlog, greeted by
         * no one, and is dropped when the process ends. */
        int late = t_connect(p.port);
        assert_true(late >= 0);
        assert_false(t_readable(late, 200));
        if (!stays)
            assert_int_equal(t_send_str(fd, "exit\r\n"), 0);
        int rc = t_proc_stop(&p, 0, START_MS); /* signal 0: only waits */
        g_pid = 0;
        int64_t ms = t_now_ms() - t0;
        if (rc != 0)
            fail_msg("exit %d; log:\n%s", rc, p.log);
        if (stays) {
            assert_non_null(strstr(p.log, "drain: 1 connection still open after 1s"));
            assert_true(ms >= 1000);
        } else {
            assert_non_null(strstr(p.log, "drained: every connection closed"));
        }
        assert_true(ms < 2000 + 1000 * stays + START_MS / 4);
        assert_true(t_wait_eof(fd, SESSION_MS) >= 0);
        close(fd);
        char buf[64];
        ssize_t n = t_read_line(late, buf, sizeof buf, SESSION_MS);
        assert_true(n <= 0); /* never greeted */
        close(late);
        assert_non_null(strstr(p.log, "stopping on SIGQUIT: draining first"));
        expect_clean_log(&p, NULL);
    }
}

/* Probes during a SIGQUIT drain: every new admin connection, for the whole
 * drain, is answered within a second, `ready` with NOT READY draining and
 * `agent` with drain, so that a balancer sees the drain instead of a probe
 * that hangs (before: `ready` got no reply in 5 s). */
static void test_sigquit_drain_answers_probes(void **state)
{
    (void)state;
    char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0",
                    "-o", dispatch_opt, "-o", "log.level=warn",
                    "-o", "limits.shutdown_timeout=3", NULL};
    t_proc p;
    assert_int_equal(t_proc_start(&p, argv, 0, true, START_MS), 0);
    g_pid = p.pid;
    int stays = t_connect_greeted(p.port, SESSION_MS); /* keeps the drain going */
    assert_true(stays >= 0);
    int64_t t0 = t_now_ms();
    assert_int_equal(kill(p.pid, SIGQUIT), 0);
    assert_true(t_proc_wait_log(&p, "draining: 1 connection open", START_MS));
    /* Until half a second before the drain's end (3 s): the stop that
     * follows may meet a probe on its way. */
    int probes = 0;
    long long worst = 0;
    while (t_now_ms() - t0 < 2500) {
        static const struct {
            const char *request, *reply;
        } probe[] = {{"ready\r\n", "NOT READY draining\r\n"}, {"agent\r\n", "drain\n"}};
        char got[128] = "";
        int64_t start = t_now_ms();
        ssize_t n = t_admin_raw(p.admin_port, probe[probes % 2].request, true, got, sizeof got);
        long long ms = t_now_ms() - start;
        if (n <= 0)
            fail_msg("probe %d (%.5s) got no reply (%zd) after %lld ms", probes,
                     probe[probes % 2].request, n, ms);
        assert_string_equal(got, probe[probes % 2].reply);
        assert_true(ms < 1000);
        worst = ms > worst ? ms : worst;
        probes++;
        /* A probe every 100 ms or so, while the staying client hears
         * nothing: the drain leaves it be. */
        assert_false(t_readable(stays, 100));
    }
    print_message("%s: %d probes during the drain, slowest %lld ms\n", mode_name, probes, worst);
    assert_true(probes >= 10);
    int rc = t_proc_stop(&p, 0, START_MS); /* signal 0: only waits */
    g_pid = 0;
    if (rc != 0)
        fail_msg("exit %d; log:\n%s", rc, p.log);
    assert_non_null(strstr(p.log, "drain: 1 connection still open after 3s"));
    close(stays);
    expect_clean_log(&p, NULL);
}

/* An operator's harsher signal after SIGQUIT (SIGTERM or SIGINT, as
 * nginx's TERM after QUIT) ends the drain now: the ordinary stop follows,
 * and the process exits within its bound, not at the drain's 20 s (before:
 * 20.1 s). The same during the drain_delay before a drain. */
static void test_signal_cuts_drain(void **state)
{
    (void)state;
    static const struct {
        int sig;
        const char *delay, *wait_for, *said;
    } cases[] = {
        {SIGTERM, "limits.drain_delay=0", "draining: 1 connection open",
         "SIGTERM during the drain: stopping now"},
        {SIGINT, "limits.drain_delay=0", "draining: 1 connection open",
         "SIGINT during the drain: stopping now"},
        {SIGTERM, "limits.drain_delay=20", "drain_delay: serving 20 s more",
         "drain_delay cut short by SIGTERM"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0",
                        "-o", dispatch_opt, "-o", "log.level=info",
                        "-o", "limits.shutdown_timeout=20", "-o", (char *)cases[k].delay, NULL};
        t_proc p;
        assert_int_equal(t_proc_start(&p, argv, 0, true, START_MS), 0);
        g_pid = p.pid;
        int stays = t_connect_greeted(p.port, SESSION_MS); /* would hold the drain 20 s */
        assert_true(stays >= 0);
        assert_int_equal(kill(p.pid, SIGQUIT), 0);
        assert_true(t_proc_wait_log(&p, cases[k].wait_for, START_MS));
        int64_t t0 = t_now_ms();
        assert_int_equal(kill(p.pid, cases[k].sig), 0);
        int rc = t_proc_stop(&p, 0, 5000); /* signal 0: only waits */
        g_pid = 0;
        long long ms = t_now_ms() - t0;
        print_message("%s: \"%s\": exit %d %lld ms after the second signal\n", mode_name,
                      cases[k].said, rc, ms);
        if (rc != 0)
            fail_msg("exit %d; log:\n%s", rc, p.log);
        assert_true(ms < 5000);
        assert_non_null(strstr(p.log, cases[k].said));
        if (k < 2)
            assert_non_null(strstr(p.log, "drain cut short: 1 connection still open"));
        else
            assert_null(strstr(p.log, "draining: ")); /* no drain after the delay */
        assert_true(t_wait_eof(stays, SESSION_MS) >= 0); /* closed by the stop */
        close(stays);
        expect_clean_log(&p, NULL);
    }
}

/* poolsrv under systemd's own launcher: systemd-socket-activate binds the
 * two sockets, starts poolsrv on the first connection with LISTEN_FDS and
 * LISTEN_FDNAMES, and poolsrv serves on them. */
static void test_systemd_socket_activate(void **state)
{
    (void)state;
    if (access(SSA_BIN, X_OK) != 0) {
        if (getenv("POOLSRV_REQUIRE_TOOLS") != NULL)
            fail_msg("%s is missing (Debian package systemd), and POOLSRV_REQUIRE_TOOLS is set",
                     SSA_BIN);
        print_message("SKIP: %s is missing (Debian package systemd)\n", SSA_BIN);
        skip();
    }
    t_proc p;
    uint16_t dport = 0, aport = 0;
    /* The launcher binds ports named in advance: free a moment ago, taken
     * by something else now and then; then try again. */
    for (int attempt = 0; attempt < 5; attempt++) {
        dport = t_free_port();
        aport = t_free_port();
        if (dport == aport)
            continue;
        char l1[32], l2[32];
        snprintf(l1, sizeof l1, "127.0.0.1:%u", (unsigned)dport);
        snprintf(l2, sizeof l2, "127.0.0.1:%u", (unsigned)aport);
        char *argv[] = {SSA_BIN, "-l", l1, "-l", l2, "--fdname=data:admin",
                        POOLSRV_BIN, "-o", dispatch_opt, "-o", "log.level=info", NULL};
        t_child_opts o = {.no_wait = true};
        assert_int_equal(t_proc_start_with(&p, argv, &o, false, START_MS), 0);
        g_pid = p.pid;
        char want[64];
        snprintf(want, sizeof want, "Listening on %s", l2);
        if (t_proc_wait_log(&p, want, START_MS))
            break;
        t_proc_stop(&p, SIGKILL, START_MS);
        g_pid = 0;
        print_message("systemd-socket-activate did not listen:\n%s\n", p.log);
    }
    assert_true(g_pid > 0);
    /* The first client starts poolsrv, and is served by it. */
    int fd = t_connect_greeted(dport, START_MS);
    if (fd < 0)
        fail_msg("not served (%d); log:\n%s", fd, p.log);
    assert_int_equal(t_send_str(fd, "through systemd\r\n"), 0);
    char got[64];
    assert_true(t_read_line(fd, got, sizeof got, SESSION_MS) > 0);
    assert_string_equal(got, "through systemd\r\n");
    close(fd);
    char want[64];
    snprintf(want, sizeof want, "listening on 127.0.0.1:%u (inherited)", (unsigned)dport);
    assert_true(t_proc_wait_log(&p, want, START_MS));
    snprintf(want, sizeof want, "admin on 127.0.0.1:%u (inherited)", (unsigned)aport);
    assert_true(t_proc_wait_log(&p, want, START_MS));
    char reply[4096];
    assert_true(t_admin(aport, "threads", reply, sizeof reply) > 0);
    assert_non_null(strstr(reply, "END"));
    int rc = t_proc_stop(&p, SIGTERM, START_MS);
    g_pid = 0;
    if (rc != 0)
        fail_msg("exit %d; log:\n%s", rc, p.log);
    expect_clean_log(&p, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || !t_set_dispatch(argv[1])) {
        fprintf(stderr, "usage: test_restart connection|event|thread [TEST_PATTERN]\n");
        return 2;
    }
    mode_name = argv[1];
    snprintf(dispatch_opt, sizeof dispatch_opt, "server.dispatch=%s", argv[1]);
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3)
        cmocka_set_test_filter(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_sigquit_drains, teardown_kill),
        cmocka_unit_test_teardown(test_sigquit_drain_answers_probes, teardown_kill),
        cmocka_unit_test_teardown(test_signal_cuts_drain, teardown_kill),
        cmocka_unit_test_teardown(test_handover_loop, teardown_kill),
        cmocka_unit_test_teardown(test_handover_fails_then_succeeds, teardown_kill),
        cmocka_unit_test_teardown(test_socket_activated_restarts, teardown_kill),
        cmocka_unit_test_teardown(test_systemd_socket_activate, teardown_kill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
