/* examples/lookup in-process, with its resolvers held on purpose: a full
 * resolver queue is answered at once and never holds a server worker.
 *
 * The module calls getaddrinfo; this executable defines (and exports, see
 * tests/CMakeLists.txt) its own, which the loaded module binds to before
 * libc's. A name ending in ".gate" waits there until the test opens the
 * gate (bounded, so a failing test never hangs), then resolves as
 * 127.0.0.1; any other name goes to the real one. Slow lookups without DNS
 * and without sleeps. */
/* RTLD_NEXT needs _GNU_SOURCE, which the build defines. */
#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "poolsrv/module.h"
#include "poolsrv/server.h"
#include "support.h"

#define T_MS 5000

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered; /* lookups waiting at the gate, ever */
    bool open;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false};

static gai_fn real_gai;
static pthread_once_t real_once = PTHREAD_ONCE_INIT;

static void find_real(void)
{
    real_gai = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
}

static bool gated(const char *node)
{
    size_t n = node != NULL ? strlen(node) : 0;
    return n > 5 && strcmp(node + n - 5, ".gate") == 0;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    pthread_once(&real_once, find_real);
    if (gated(node)) {
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 10; /* a bound, never reached by a passing test */
        pthread_mutex_lock(&gate.mu);
        gate.entered++;
        pthread_cond_broadcast(&gate.cv);
        while (!gate.open && pthread_cond_timedwait(&gate.cv, &gate.mu, &dl) == 0)
            ;
        pthread_mutex_unlock(&gate.mu);
        node = "127.0.0.1";
    }
    return real_gai != NULL ? real_gai(node, service, hints, res) : EAI_FAIL;
}

/* Waits (bounded) until n lookups have reached the gate. */
static bool gate_wait_entered(int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += T_MS / 1000;
    pthread_mutex_lock(&gate.mu);
    int rc = 0;
    while (gate.entered < n && rc == 0)
        rc = pthread_cond_timedwait(&gate.cv, &gate.mu, &dl);
    bool ok = gate.entered >= n;
    pthread_mutex_unlock(&gate.mu);
    return ok;
}

static void gate_set(bool open)
{
    pthread_mutex_lock(&gate.mu);
    gate.open = open;
    if (!open)
        gate.entered = 0;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
}

/* Of fds b and c, the one that has a line within ms (-1: neither). */
static int first_answer(int b, int c, int ms)
{
    int64_t deadline = t_now_ms() + ms;
    while (t_now_ms() < deadline) {
        if (t_readable(b, 10))
            return b;
        if (t_readable(c, 10))
            return c;
    }
    return -1;
}

/* One resolver, a queue of one: lookup A holds the resolver at the gate,
 * B and C arrive on two other connections; one of them is queued and the
 * other, finding the queue full, is answered at once with an error while
 * the gate is still closed (a worker waiting for room would answer only
 * after the gate opens). Once the gate opens, A and the queued one get
 * their addresses. In every dispatch mode. */
static void test_lookup_queue_full(void **state)
{
    (void)state;
    static const ps_dispatch_mode modes[] = {PS_DISPATCH_EVENT, PS_DISPATCH_CONNECTION,
                                             PS_DISPATCH_THREAD};
    for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
        ps_config cfg;
        t_config(&cfg);
        cfg.dispatch = modes[m];
        cfg.workers = 4;
        char err[512];
        assert_int_equal(ps_config_set(&cfg, "handler", "module", LOOKUP_MODULE, err, sizeof err), 0);
        assert_int_equal(ps_config_set(&cfg, "handler", "resolvers", "1", err, sizeof err), 0);
        assert_int_equal(ps_config_set(&cfg, "handler", "queue", "1", err, sizeof err), 0);
        ps_module_instance *mod = NULL;
        if (ps_module_open(&cfg, &mod, err, sizeof err) != 0)
            fail_msg("lookup module: %s", err);
        ps_server *srv = NULL;
        assert_int_equal(ps_server_create(&srv, &cfg, ps_module_handler(mod), ps_module_ud(mod),
                                          err, sizeof err),
                         0);
        assert_int_equal(ps_server_start(srv, err, sizeof err), 0);
        uint16_t port = ps_server_port(srv);
        gate_set(false);

        int a = t_connect(port), b = t_connect(port), c = t_connect(port);
        assert_true(a >= 0 && b >= 0 && c >= 0);
        assert_int_equal(t_send_str(a, "a.gate\n"), 0);
        assert_true(gate_wait_entered(1)); /* the resolver is held */
        assert_int_equal(t_send_str(b, "b.gate\n"), 0);
        assert_int_equal(t_send_str(c, "c.gate\n"), 0);
        int refused = first_answer(b, c, T_MS);
        char line[256] = "";
        if (refused >= 0)
            t_read_line(refused, line, sizeof line, T_MS);
        gate_set(true); /* before any assert: the server must be able to stop */
        assert_true(refused >= 0);
        assert_string_equal(line, refused == b ? "b.gate ERROR resolver queue full\r\n"
                                               : "c.gate ERROR resolver queue full\r\n");

        int queued = refused == b ? c : b;
        assert_true(t_read_line(a, line, sizeof line, T_MS) > 0);
        assert_string_equal(line, "a.gate 127.0.0.1\r\n");
        assert_true(t_read_line(queued, line, sizeof line, T_MS) > 0);
        assert_string_equal(line, queued == b ? "b.gate 127.0.0.1\r\n" : "c.gate 127.0.0.1\r\n");
        /* The refused connection goes on being served. */
        assert_int_equal(t_send_str(refused, "127.0.0.1\n"), 0);
        assert_true(t_read_line(refused, line, sizeof line, T_MS) > 0);
        assert_string_equal(line, "127.0.0.1 127.0.0.1\r\n");
        close(a);
        close(b);
        close(c);
        ps_server_destroy(srv);
        ps_module_close(mod);
    }
}

/* The new key is checked like the old one. */
static void test_lookup_queue_key(void **state)
{
    (void)state;
    static const char *const bad[] = {"0", "1048577", "-1", "x", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ps_config cfg;
        t_config(&cfg);
        char err[512];
        assert_int_equal(ps_config_set(&cfg, "handler", "module", LOOKUP_MODULE, err, sizeof err), 0);
        assert_int_equal(ps_config_set(&cfg, "handler", "queue", bad[i], err, sizeof err), 0);
        ps_module_instance *mod = NULL;
        assert_int_not_equal(ps_module_open(&cfg, &mod, err, sizeof err), 0);
        assert_non_null(strstr(err, "handler.queue: expected 1 to 1048576"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_queue_full),
        cmocka_unit_test(test_lookup_queue_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
