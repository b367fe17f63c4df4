/* The poolsrv and poolctl programs: command line, config errors, signals,
 * running out of descriptors. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <arpa/inet.h>
#include <unistd.h>

#include <cmocka.h>

#include "support.h"

#define T_MS 5000

static char conf_path[] = PS_SOURCE_DIR "/conf/server.ini";

/* argv for poolsrv with the default file, free ports and the given extras. */
#define POOLSRV(...)                                                                  \
    (char *[]) { POOLSRV_BIN, "-c", conf_path, "-o", "server.port=0", "-o",            \
                 "admin.port=0", __VA_ARGS__, NULL }

/* Stops the server with sig and expects exit status 0, showing its log
 * otherwise (a sanitizer report lands there). */
static void stop_ok(t_proc *p, int sig, int timeout_ms)
{
    int rc = t_proc_stop(p, sig, timeout_ms);
    if (rc != 0)
        print_message("poolsrv exited with %d; its log:\n%s\n", rc, p->log);
    assert_int_equal(rc, 0);
}

static void expect_line(int fd, const char *want)
{
    char line[1024];
    assert_true(t_read_line(fd, line, sizeof line, T_MS) > 0);
    assert_string_equal(line, want);
}

static char *write_temp(const char *text)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/poolsrv-test-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_check_only(void **state)
{
    (void)state;
    char out[4096];
    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "-c", conf_path, "-t", NULL}, out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "valid"));

    char *bad = write_temp("[server]\nport = 9050\n[pool]\nworkers = 0\n");
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-c", bad, "-t", NULL}, out, sizeof out, T_MS), 0);
    char where[96];
    snprintf(where, sizeof where, "%s:4:", bad);
    assert_non_null(strstr(out, where));
    unlink(bad);

    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-c", "/nonexistent/x.ini", "-t", NULL},
                               out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "/nonexistent/x.ini"));
}

/* The shipped configuration loads every module poolsrv ships, unedited:
 * none of its [handler] keys is one handler's own. */
static void test_shipped_conf_loads_every_module(void **state)
{
    (void)state;
    const char *modules[] = {UPPER_MODULE, LOOKUP_MODULE, CHAT_MODULE, KV_MODULE};
    for (size_t i = 0; i < sizeof modules / sizeof modules[0]; i++) {
        char out[4096], opt[1024];
        snprintf(opt, sizeof opt, "handler.module=%s", modules[i]);
        int rc = t_run((char *[]){POOLSRV_BIN, "-c", conf_path, "-o", opt, "-t", NULL}, out,
                       sizeof out, T_MS);
        if (rc != 0)
            print_message("%s with conf/server.ini: %d\n%s\n", modules[i], rc, out);
        assert_int_equal(rc, 0);
    }
}

static void test_overrides_are_validated(void **state)
{
    (void)state;
    char out[4096];
    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "-c", conf_path, "-o", "pool.workers=4", "-t", NULL},
                           out, sizeof out, T_MS), 0);
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-c", conf_path, "-o", "pool.workers=abc", "-t", NULL},
                               out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "pool.workers"));
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-o", "nosuch.key=1", "-t", NULL},
                               out, sizeof out, T_MS), 0);
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-x", NULL}, out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "usage"));
}

static void test_config_error_binds_nothing(void **state)
{
    (void)state;
    /* Find a free port, then start with it and a bad key: nothing listens. */
    uint16_t free_port = t_free_port();
    assert_int_not_equal(free_port, 0);
    char port[32];
    snprintf(port, sizeof port, "server.port=%u", (unsigned)free_port);
    char out[4096];
    int rc = t_run((char *[]){POOLSRV_BIN, "-c", conf_path, "-o", port, "-o", "limits.max_line=1",
                              NULL}, out, sizeof out, T_MS);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "limits.max_line"));
    assert_true(t_connect(free_port) < 0);
}

static void test_serves_and_poolctl(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=debug", "-o", "server.dispatch=connection"),
                                  0, true, T_MS), 0);
    int fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "Welcome to my server\r\n");
    assert_int_equal(t_send_str(fd, "hello\r\n"), 0);
    expect_line(fd, "hello\r\n");

    char aport[16], out[8192];
    snprintf(aport, sizeof aport, "%u", (unsigned)p.admin_port);
    assert_int_equal(t_run((char *[]){POOLCTL_BIN, "-p", aport, "threads", NULL}, out, sizeof out, T_MS), 0);
    assert_int_equal(t_stat(out, "max_threads"), 25);
    assert_int_equal(t_stat(out, "available_threads"), 24);
    assert_non_null(strstr(out, "END"));
    assert_int_equal(t_run((char *[]){POOLCTL_BIN, "-p", aport, "stats", NULL}, out, sizeof out, T_MS), 0);
    assert_int_equal(t_stat(out, "curr_connections"), 1);
    assert_int_not_equal(t_run((char *[]){POOLCTL_BIN, "-p", aport, "nonsense", NULL}, out, sizeof out, T_MS), 0);

    /* The connection log line says how many are active. */
    t_proc_drain(&p);
    assert_non_null(strstr(p.log, "(1 active)"));
    close(fd);
    stop_ok(&p, SIGINT, T_MS);
}

/* The dispatch modes, as -o options, for the module tests. */
static const char *const dispatch_modes[] = {"server.dispatch=connection", "server.dispatch=event",
                                             "server.dispatch=thread"};

/* Starts poolsrv with built-in defaults (not conf/server.ini: its [handler]
 * greeting is a key for echo, which a module would refuse), free ports,
 * log level info, the module at path, dispatch mode m and one more -o
 * option (or NULL). */
static void start_module(t_proc *p, const char *path, size_t m, const char *extra)
{
    char module[1200];
    snprintf(module, sizeof module, "handler.module=%s", path);
    char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0", "-o",
                    "log.level=info", "-o", module, "-o", (char *)dispatch_modes[m],
                    extra ? "-o" : NULL, (char *)extra, NULL};
    int rc = t_proc_start(p, argv, 0, false, T_MS);
    if (rc != 0)
        print_message("poolsrv did not start (%d); its log:\n%s\n", rc, p->log);
    assert_int_equal(rc, 0);
}

/* A handler module named in the INI (or with -o) is loaded and serves:
 * upper (examples/upper) in every dispatch mode. */
static void test_module_serves(void **state)
{
    (void)state;
    for (size_t m = 0; m < 3; m++) {
        t_proc p;
        start_module(&p, UPPER_MODULE, m, NULL);
        assert_true(t_proc_wait_log(&p, "handler upper from " UPPER_MODULE, T_MS));
        int fd = t_connect(p.port);
        assert_true(fd >= 0);
        assert_int_equal(t_send_str(fd, "Hello, Module\r\nmixed Case\n"), 0);
        expect_line(fd, "HELLO, MODULE\r\n"); /* no greeting: the module sends none */
        expect_line(fd, "MIXED CASE\n");
        assert_int_equal(t_send_str(fd, "\n"), 0); /* an empty line ends it */
        assert_true(t_wait_eof(fd, T_MS) >= 0);
        close(fd);
        stop_ok(&p, SIGTERM, T_MS);
    }
}

/* examples/lookup: getaddrinfo on the module's own resolver pool, replies
 * sent from the futures' callbacks, in the order of the lines, in every
 * mode; its key is checked. Names from /etc/hosts and numbers only: no DNS. */
static void test_module_lookup(void **state)
{
    (void)state;
    for (size_t m = 0; m < 3; m++) {
        t_proc p;
        start_module(&p, LOOKUP_MODULE, m, "handler.resolvers=2");
        int fd = t_connect(p.port);
        assert_true(fd >= 0);
        assert_int_equal(t_send_str(fd, "localhost\n127.0.0.1\n::1\n10.1.2.3\n"), 0);
        char line[1024];
        assert_true(t_read_line(fd, line, sizeof line, T_MS) > 0);
        if (strncmp(line, "localhost ", 10) != 0 ||
            (strstr(line, "127.0.0.1") == NULL && strstr(line, "::1") == NULL))
            fail_msg("localhost: got \"%s\"", line);
        expect_line(fd, "127.0.0.1 127.0.0.1\r\n");
        expect_line(fd, "::1 ::1\r\n");
        expect_line(fd, "10.1.2.3 10.1.2.3\r\n");
        close(fd);
        stop_ok(&p, SIGTERM, T_MS);
    }
    char out[4096];
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=" LOOKUP_MODULE, "-o",
                                          "handler.resolvers=0", "-t", NULL},
                               out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "-o handler.resolvers=0: handler.resolvers: expected 1 to 256"));
}

/* examples/chat: a line reaches every other client, joins and leaves are
 * announced; the sends cross connections and workers, in every mode. */
static void test_module_chat(void **state)
{
    (void)state;
    for (size_t m = 0; m < 3; m++) {
        t_proc p;
        start_module(&p, CHAT_MODULE, m, NULL);
        int fd[3];
        unsigned long long id[3];
        char line[256], want[256];
        for (int i = 0; i < 3; i++) {
            fd[i] = t_connect(p.port);
            assert_true(fd[i] >= 0);
            assert_true(t_read_line(fd[i], line, sizeof line, T_MS) > 0);
            assert_int_equal(sscanf(line, "* you are %llu", &id[i]), 1);
            /* Those already in hear of it. */
            snprintf(want, sizeof want, "* %llu joined\r\n", id[i]);
            for (int k = 0; k < i; k++)
                expect_line(fd[k], want);
        }
        assert_int_equal(t_send_str(fd[1], "hello room\n"), 0);
        snprintf(want, sizeof want, "%llu: hello room\r\n", id[1]);
        expect_line(fd[0], want);
        expect_line(fd[2], want);
        assert_false(t_readable(fd[1], 50)); /* not back to the sender */
        /* Many lines from two clients at once: each reaches the third, in
         * the order each was sent. */
        for (int k = 0; k < 50; k++) {
            char msg[64];
            snprintf(msg, sizeof msg, "a%d\n", k);
            assert_int_equal(t_send_str(fd[0], msg), 0);
            snprintf(msg, sizeof msg, "b%d\n", k);
            assert_int_equal(t_send_str(fd[1], msg), 0);
        }
        int next_a = 0, next_b = 0;
        for (int k = 0; k < 100; k++) {
            assert_true(t_read_line(fd[2], line, sizeof line, T_MS) > 0);
            unsigned long long from;
            char tag;
            int num;
            assert_int_equal(sscanf(line, "%llu: %c%d", &from, &tag, &num), 3);
            if (from == id[0]) {
                assert_int_equal(tag, 'a');
                assert_int_equal(num, next_a++);
            } else {
                assert_true(from == id[1] && tag == 'b');
                assert_int_equal(num, next_b++);
            }
        }
        close(fd[2]);
        snprintf(want, sizeof want, "* %llu left\r\n", id[2]);
        /* fd[0] and fd[1] also get each other's 50 lines first. */
        for (int i = 0; i < 2; i++) {
            int seen = 0;
            while (seen == 0) {
                assert_true(t_read_line(fd[i], line, sizeof line, T_MS) > 0);
                seen = strcmp(line, want) == 0;
            }
        }
        close(fd[0]);
        close(fd[1]);
        stop_ok(&p, SIGTERM, T_MS);
    }
}

/* A module's own [handler] keys reach its init; a bad one is FILE:LINE, an
 * -o one names the option; -t reports it too; nothing is bound. */
static void test_module_keys(void **state)
{
    (void)state;
    char text[512], out[4096];
    snprintf(text, sizeof text, "[handler]\nmodule = %s\nprefix = >> \nrepeat = 2\n", KEYS_MODULE);
    char *ini = write_temp(text);
    char ini_path[64];
    snprintf(ini_path, sizeof ini_path, "%s", ini);
    t_proc p;
    assert_int_equal(t_proc_start(&p, (char *[]){POOLSRV_BIN, "-c", ini_path, "-o", "server.port=0",
                                                 "-o", "admin.enabled=false", NULL},
                                  0, false, T_MS), 0);
    int fd = t_connect(p.port);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "hi\n"), 0);
    expect_line(fd, ">>hi\n"); /* the value is trimmed */
    expect_line(fd, ">>hi\n");
    close(fd);
    stop_ok(&p, SIGTERM, T_MS);

    /* A bad value in the file: its line. */
    snprintf(text, sizeof text, "[handler]\nmodule = %s\nprefix = x\nrepeat = 9\n", KEYS_MODULE);
    ini = write_temp(text);
    snprintf(ini_path, sizeof ini_path, "%s", ini);
    uint16_t port = t_free_port();
    char port_opt[32];
    snprintf(port_opt, sizeof port_opt, "server.port=%u", (unsigned)port);
    for (int check = 0; check < 2; check++) {
        int rc = t_run((char *[]){POOLSRV_BIN, "-c", ini_path, "-o", port_opt, check ? "-t" : "-o",
                                  check ? NULL : "admin.enabled=false", NULL},
                       out, sizeof out, T_MS);
        assert_int_not_equal(rc, 0);
        char want[160];
        snprintf(want, sizeof want, "%s:4: handler.repeat: expected 1 to 5, got \"9\"", ini_path);
        if (strstr(out, want) == NULL)
            fail_msg("want \"%s\" in:\n%s", want, out);
        assert_true(t_connect(port) < 0);
    }
    unlink(ini_path);
    /* An unknown key given with -o, for a built-in handler and a module. */
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-o", "handler.colour=red", "-t", NULL}, out,
                               sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "-o handler.colour=red: handler.colour: unknown key"));
    assert_int_not_equal(t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=" KEYS_MODULE, "-o",
                                          "handler.colour=red", "-t", NULL},
                               out, sizeof out, T_MS), 0);
    assert_non_null(strstr(out, "-o handler.colour=red: handler.colour: unknown key (red)"));
}

/* The build's module directory as /proc/self/exe-based lookup sees it. */
static void build_module_dir(char *out, size_t len)
{
    char real[PATH_MAX];
    assert_non_null(realpath(BUILD_MODULE_DIR, real));
    snprintf(out, len, "%s", real);
}

/* [handler] module = NAME (no slash) loads NAME.so from the module
 * directory: the build's (src/lib/poolsrv/modules beside src/bin, as in
 * an install), or POOLSRV_MODULE_DIR's; --help says which; conf/kv.ini
 * loads kv by name and serves. */
static void test_module_by_name(void **state)
{
    (void)state;
    unsetenv("POOLSRV_MODULE_DIR");
    char dir[PATH_MAX], want[PATH_MAX + 64], out[8192];
    build_module_dir(dir, sizeof dir);

    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "--help", NULL}, out, sizeof out, T_MS), 0);
    snprintf(want, sizeof want, "  %s\n", dir);
    if (strstr(out, want) == NULL || strstr(out, "POOLSRV_MODULE_DIR") == NULL)
        fail_msg("want the module directory %s and POOLSRV_MODULE_DIR in --help:\n%s", dir, out);

    static const char *const names[] = {"upper", "upper.so", "lookup", "chat", "kv"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char opt[64];
        snprintf(opt, sizeof opt, "handler.module=%s", names[i]);
        int rc = t_run((char *[]){POOLSRV_BIN, "-o", opt, "-t", NULL}, out, sizeof out, T_MS);
        if (rc != 0 || strstr(out, "is valid") == NULL)
            fail_msg("-o %s -t: exit %d:\n%s", opt, rc, out);
    }

    /* Serving, and the log names the file. */
    t_proc p;
    start_module(&p, "upper", 1, NULL);
    snprintf(want, sizeof want, "handler upper from %s/upper.so", dir);
    assert_true(t_proc_wait_log(&p, want, T_MS));
    int fd = t_connect(p.port);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "by name\n"), 0);
    expect_line(fd, "BY NAME\n");
    close(fd);
    stop_ok(&p, SIGTERM, T_MS);

    /* A missing name: the file looked for, and how to look elsewhere. */
    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=nosuch", "-t", NULL}, out,
                           sizeof out, T_MS), 2);
    snprintf(want, sizeof want, "nosuch: handler module: %s/nosuch.so: No such file", dir);
    if (strstr(out, want) == NULL || strstr(out, "POOLSRV_MODULE_DIR") == NULL)
        fail_msg("want \"%s\" and POOLSRV_MODULE_DIR in:\n%s", want, out);
    /* A name is never looked up in the working directory or the library
     * path: ./upper.so is not `upper`. */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof cwd));
    char tmp[] = "/tmp/poolsrv-moddir-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char link_path[PATH_MAX];
    snprintf(link_path, sizeof link_path, "%s/shout.so", tmp);
    assert_int_equal(symlink(UPPER_MODULE, link_path), 0);
    assert_int_equal(chdir(tmp), 0);
    int rc = t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=shout", "-t", NULL}, out,
                   sizeof out, T_MS);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 2);

    /* POOLSRV_MODULE_DIR: another directory, for names only. */
    assert_int_equal(setenv("POOLSRV_MODULE_DIR", tmp, 1), 0);
    rc = t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=shout", "-t", NULL}, out, sizeof out,
               T_MS);
    if (rc != 0 || strstr(out, "(handler upper)") == NULL)
        fail_msg("POOLSRV_MODULE_DIR=%s -o handler.module=shout -t: exit %d:\n%s", tmp, rc, out);
    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "--help", NULL}, out, sizeof out, T_MS), 0);
    snprintf(want, sizeof want, "  %s\n", tmp);
    assert_non_null(strstr(out, want));
    rc = t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=upper", "-t", NULL}, out, sizeof out,
               T_MS);
    snprintf(want, sizeof want, "%s/upper.so: No such file", tmp);
    if (rc != 2 || strstr(out, want) == NULL)
        fail_msg("want \"%s\" in:\n%s", want, out);
    /* A path keeps loading that path. */
    assert_int_equal(t_run((char *[]){POOLSRV_BIN, "-o", "handler.module=" CHAT_MODULE, "-t",
                                      NULL}, out, sizeof out, T_MS), 0);
    unsetenv("POOLSRV_MODULE_DIR");
    unlink(link_path);
    rmdir(tmp);

    /* conf/kv.ini as shipped: kv by name, max_line as kv asks (no warning). */
    char kv_ini[] = PS_SOURCE_DIR "/conf/kv.ini";
    assert_int_equal(t_proc_start(&p, (char *[]){POOLSRV_BIN, "-c", kv_ini, "-o", "server.port=0",
                                                 "-o", "admin.port=0", NULL},
                                  0, true, T_MS), 0);
    fd = t_connect(p.port);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "set greeting 0 0 5\r\nhello\r\nget greeting\r\n"), 0);
    expect_line(fd, "STORED\r\n");
    expect_line(fd, "VALUE greeting 0 5\r\n");
    expect_line(fd, "hello\r\n");
    expect_line(fd, "END\r\n");
    close(fd);
    t_proc_drain(&p);
    if (strstr(p.log, "max_line") != NULL || strstr(p.log, "WARN") != NULL)
        fail_msg("conf/kv.ini: a warning at start:\n%s", p.log);
    stop_ok(&p, SIGTERM, T_MS);
}

/* A module that is missing, not a module, or built for another ABI is an
 * error naming the file, with -t too; nothing is bound. */
static void test_module_errors(void **state)
{
    (void)state;
    static const struct {
        const char *path, *says;
    } bad[] = {
        {"/nonexistent/handler.so", "/nonexistent/handler.so: handler module: No such file"},
        {PS_SOURCE_DIR "/README.md", PS_SOURCE_DIR "/README.md: not a loadable handler module"},
        {PS_SOURCE_DIR "/conf", PS_SOURCE_DIR "/conf: handler module: not a regular file"},
        {NO_ENTRY_MODULE, NO_ENTRY_MODULE ": not a poolsrv handler module (no symbol poolsrv_module)"},
        {WRONG_ABI_MODULE, WRONG_ABI_MODULE ": handler module built for module ABI 3; this poolsrv takes ABI 1 to 2"},
        /* Linked with the library: a second copy of it, refused, naming the fix. */
        {OWN_COPY_MODULE, OWN_COPY_MODULE ": handler module carries its own copy of the poolsrv "
                          "library (it defines ps_"},
        {OWN_COPY_MODULE, "build it with poolsrv::module (CMake) or `pkg-config --cflags "
                          "poolsrv-module`"},
        {OWN_PART_MODULE, OWN_PART_MODULE ": handler module carries its own copy of the poolsrv "
                          "library (it defines ps_strerror)"},
    };
    uint16_t port = t_free_port();
    char port_opt[32];
    snprintf(port_opt, sizeof port_opt, "server.port=%u", (unsigned)port);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char opt[1200], out[4096];
        snprintf(opt, sizeof opt, "handler.module=%s", bad[i].path);
        for (int check = 0; check < 2; check++) {
            int rc = t_run((char *[]){POOLSRV_BIN, "-o", opt, "-o", port_opt, "-o",
                                      "admin.enabled=false", check ? "-t" : NULL, NULL},
                           out, sizeof out, T_MS);
            if (rc == 0 || strstr(out, bad[i].says) == NULL)
                fail_msg("%s%s: exit %d, want \"%s\" in:\n%s", bad[i].path, check ? " -t" : "",
                         rc, bad[i].says, out);
            assert_true(t_connect(port) < 0);
        }
    }
}

/* The greeting moved under [handler]; server.greeting still works and is
 * its default; [handler] greeting wins. (Built-in defaults: conf/server.ini
 * sets [handler] greeting.) */
static void test_handler_greeting(void **state)
{
    (void)state;
    const char *opts[][2] = {
        {"server.greeting=Old spelling", "Old spelling\r\n"},
        {"handler.greeting=New spelling", "New spelling\r\n"},
    };
    for (int i = 0; i < 3; i++) {
        t_proc p;
#define DEFAULTS(...) \
    (char *[]) { POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.port=0", __VA_ARGS__, NULL }
        char **argv = i == 0   ? DEFAULTS("-o", (char *)opts[0][0])
                      : i == 1 ? DEFAULTS("-o", (char *)opts[0][0], "-o", (char *)opts[1][0])
                               : DEFAULTS("-o", (char *)opts[1][0]);
#undef DEFAULTS
        assert_int_equal(t_proc_start(&p, argv, 0, false, T_MS), 0);
        int fd = t_connect(p.port);
        assert_true(fd >= 0);
        expect_line(fd, i == 0 ? opts[0][1] : opts[1][1]);
        close(fd);
        stop_ok(&p, SIGTERM, T_MS);
    }
}

/* ---- service manager protocols ---- */

/* A listening (or not) TCP socket on a free loopback port; its port in *port. */
static int tcp_socket(bool listening, int type, uint16_t *port)
{
    int fd = socket(AF_INET, type, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    if (listening)
        assert_int_equal(listen(fd, 64), 0);
    socklen_t sl = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &sl), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

/* Socket activation: poolsrv serves on the sockets it is given (data and
 * admin, by name or by order), binds nothing, and says "(inherited)". */
static void test_socket_activation(void **state)
{
    (void)state;
    for (int named = 0; named < 2; named++) {
        uint16_t dport, aport;
        int fds[2] = {tcp_socket(true, SOCK_STREAM, &dport), tcp_socket(true, SOCK_STREAM, &aport)};
        t_proc p;
        /* server.port names a port the inherited socket overrides. */
        t_child_opts o = {.listen_fds = fds, .nlisten = 2,
                          .listen_names = named ? "data:admin" : NULL};
        char *argv[] = {POOLSRV_BIN, "-o", "server.port=1", "-o", "admin.port=2", NULL};
        int rc = t_proc_start_with(&p, argv, &o, true, T_MS);
        if (rc != 0)
            print_message("poolsrv did not start (%d):\n%s\n", rc, p.log);
        assert_int_equal(rc, 0);
        close(fds[0]);
        close(fds[1]);
        assert_int_equal(p.port, dport);
        assert_int_equal(p.admin_port, aport);
        char want[64];
        snprintf(want, sizeof want, "listening on 127.0.0.1:%u (inherited)", (unsigned)dport);
        assert_non_null(strstr(p.log, want));
        int fd = t_connect(dport);
        assert_true(fd >= 0);
        expect_line(fd, "Welcome to my server\r\n");
        close(fd);
        char reply[4096];
        assert_true(t_admin(aport, "threads", reply, sizeof reply) > 0);
        assert_non_null(strstr(reply, "END"));
        stop_ok(&p, SIGTERM, T_MS);
    }
}

/* Inherited sockets that are not listening TCP sockets, or names that are
 * not data and admin: a clear error, no start. */
static void test_socket_activation_refused(void **state)
{
    (void)state;
    static const struct {
        int type;
        bool listening;
        const char *names, *says;
    } bad[] = {
        {SOCK_DGRAM, false, NULL, "not a TCP socket over IPv4 or IPv6"},
        {SOCK_STREAM, false, NULL, "not listening"},
        {SOCK_STREAM, true, "web", "socket 1 is named \"web\""},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        uint16_t port;
        int fd = tcp_socket(bad[i].listening, bad[i].type, &port);
        t_child_opts o = {.listen_fds = &fd, .nlisten = 1, .listen_names = bad[i].names};
        char *argv[] = {POOLSRV_BIN, "-o", "server.port=0", "-o", "admin.enabled=false", NULL};
        t_proc p;
        int rc = t_proc_start_with(&p, argv, &o, false, T_MS);
        close(fd);
        assert_int_not_equal(rc, 0);
        if (strstr(p.log, bad[i].says) == NULL)
            fail_msg("want \"%s\" in:\n%s", bad[i].says, p.log);
    }
}

/* systemd's notify protocol on a test socket: READY=1 with a status once
 * serving, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 on SIGTERM. */
static void test_notify(void **state)
{
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "/tmp/poolsrv-notify-%d", (int)getpid());
    unlink(path);
    int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(sock >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", path);
    assert_int_equal(bind(sock, (struct sockaddr *)&sa, sizeof sa), 0);
    char notify[96];
    snprintf(notify, sizeof notify, "NOTIFY_SOCKET=%s", path);
    const char *env[] = {notify, "WATCHDOG_USEC=200000", NULL};
    t_child_opts o = {.env = env};
    t_proc p;
    assert_int_equal(t_proc_start_with(&p, POOLSRV("-o", "log.level=warn"), &o, true, T_MS), 0);
    char msg[512];
    bool ready = false, watchdog = false, status = false;
    for (int64_t until = t_now_ms() + T_MS; !(ready && watchdog && status) && t_now_ms() < until;) {
        if (!t_readable(sock, 100))
            continue;
        ssize_t n = recv(sock, msg, sizeof msg - 1, 0);
        assert_true(n > 0);
        msg[n] = '\0';
        static const char ready_msg[] = "READY=1\nSTATUS=serving on port ";
        if (strncmp(msg, ready_msg, sizeof ready_msg - 1) == 0)
            ready = true;
        if (strcmp(msg, "WATCHDOG=1") == 0) {
            assert_true(ready); /* never before it is ready */
            watchdog = true;
        }
        if (strstr(msg, "STATUS=0 connections") != NULL)
            status = true;
    }
    assert_true(ready);
    assert_true(watchdog);
    assert_true(status);
    assert_int_equal(t_proc_stop(&p, SIGTERM, T_MS), 0);
    bool stopping = false;
    while (!stopping && t_readable(sock, 1000)) {
        ssize_t n = recv(sock, msg, sizeof msg - 1, 0);
        assert_true(n > 0);
        msg[n] = '\0';
        stopping = strcmp(msg, "STOPPING=1") == 0;
    }
    assert_true(stopping);
    close(sock);
    unlink(path);
}

/* SIGHUP reads the file again: log.level and the limits apply at once,
 * other changed keys are logged as needing a restart and keep their value, a broken file
 * is logged with its line and changes nothing; all counted; it serves on. */
static void test_sighup_reload(void **state)
{
    (void)state;
    char *ini = write_temp("[log]\nlevel = warn\n[pool]\nworkers = 4\n");
    char ini_path[64];
    snprintf(ini_path, sizeof ini_path, "%s", ini);
    t_proc p;
    assert_int_equal(t_proc_start(&p, (char *[]){POOLSRV_BIN, "-c", ini_path, "-o", "server.port=0",
                                                 "-o", "admin.port=0", NULL},
                                  0, true, T_MS), 0);
    int fd = t_connect_greeted(p.port, T_MS);
    assert_true(fd >= 0);
    close(fd);
    t_proc_drain(&p);
    assert_null(strstr(p.log, "connection 1 from")); /* debug: not logged at warn */

    FILE *f = fopen(ini_path, "w");
    assert_non_null(f);
    fputs("[log]\nlevel = debug\n[pool]\nworkers = 8\n[limits]\nmax_line = 16\n", f);
    fclose(f);
    kill(p.pid, SIGHUP);
    assert_true(t_proc_wait_log(
        &p, "reloaded: log.level debug and limits applied; 1 changed key needs a restart", T_MS));
    assert_non_null(strstr(p.log, "reload: pool.workers needs restart (stays 4)"));
    assert_non_null(strstr(p.log, "reload: limits.max_line 16 (was 8192)"));
    fd = t_connect_greeted(p.port, T_MS);
    assert_true(fd >= 0);
    assert_true(t_proc_wait_log(&p, "connection 2 from", T_MS)); /* debug now */
    /* The new max_line holds for the next line. */
    assert_int_equal(t_send_str(fd, "sixteen bytes ok\nseventeen bytes!!\n"), 0);
    expect_line(fd, "sixteen bytes ok\n");
    expect_line(fd, "ERROR line too long\r\n");
    close(fd);
    char reply[8192];
    assert_true(t_admin(p.admin_port, "threads", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "max_threads"), 4);

    f = fopen(ini_path, "w");
    assert_non_null(f);
    fputs("[log]\nlevel = warn\n[pool]\nworkers = zero\n", f);
    fclose(f);
    kill(p.pid, SIGHUP);
    char want[128];
    snprintf(want, sizeof want, "reload: %s:4: pool.workers", ini_path);
    assert_true(t_proc_wait_log(&p, want, T_MS));
    assert_non_null(strstr(p.log, "the running configuration stays"));
    assert_true(t_admin(p.admin_port, "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "reloads"), 1);
    assert_int_equal(t_stat(reply, "reload_errors"), 1);
    fd = t_connect_greeted(p.port, T_MS); /* serving on, still at info */
    assert_true(fd >= 0);
    assert_true(t_proc_wait_log(&p, "connection 3 from", T_MS));
    close(fd);
    stop_ok(&p, SIGTERM, T_MS);
    unlink(ini_path);
}

/* Rewrites the file at path with text. */
static void rewrite(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_true(fputs(text, f) >= 0);
    assert_int_equal(fclose(f), 0);
}

/* SIGHUP and the handler's keys: the built-in modules take a new greeting
 * for the next client (a client already in is served on); a key the
 * module refuses fails the reload with FILE:LINE and changes nothing. */
static void test_sighup_reload_handler_keys(void **state)
{
    (void)state;
    char ini_path[64];
    snprintf(ini_path, sizeof ini_path, "%s",
             write_temp("[log]\nlevel = warn\n[handler]\ngreeting = Hello one\n"));
    t_proc p;
    assert_int_equal(t_proc_start(&p, (char *[]){POOLSRV_BIN, "-c", ini_path, "-o", "server.port=0",
                                                 "-o", "admin.port=0", NULL},
                                  0, true, T_MS), 0);
    int before = t_connect(p.port);
    assert_true(before >= 0);
    expect_line(before, "Hello one\r\n");

    rewrite(ini_path, "[log]\nlevel = warn\n[handler]\ngreeting = Hello two\n");
    kill(p.pid, SIGHUP);
    assert_true(t_proc_wait_log(&p, "reload: the handler's keys applied", T_MS));
    assert_null(strstr(p.log, "needs restart"));
    int fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "Hello two\r\n");
    close(fd);
    assert_int_equal(t_send_str(before, "still served\n"), 0);
    expect_line(before, "still served\n");

    rewrite(ini_path, "[log]\nlevel = warn\n[handler]\ngreeting = Hello three\ncolour = blue\n");
    kill(p.pid, SIGHUP);
    char want[128];
    snprintf(want, sizeof want, "reload: %s:5: handler.colour: unknown key", ini_path);
    assert_true(t_proc_wait_log(&p, want, T_MS));
    fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "Hello two\r\n"); /* nothing changed */
    close(fd);

    /* server.greeting, the older spelling, reloads too. */
    rewrite(ini_path, "[log]\nlevel = warn\n[server]\ngreeting = Old style\n");
    kill(p.pid, SIGHUP);
    assert_non_null(t_proc_wait_log_nth(&p, "reload: the handler's keys applied", 2, T_MS));
    fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "Old style\r\n");
    close(fd);
    char reply[8192];
    assert_true(t_admin(p.admin_port, "stats", reply, sizeof reply) > 0);
    assert_int_equal(t_stat(reply, "reloads"), 2);
    assert_int_equal(t_stat(reply, "reload_errors"), 1);
    close(before);
    stop_ok(&p, SIGTERM, T_MS);
    unlink(ini_path);

    /* A module without reload (here one built for ABI 1, whose struct has
     * no reload at all): loaded and served; a change to what its keys
     * would be needs a restart. */
    snprintf(ini_path, sizeof ini_path, "%s",
             write_temp("[log]\nlevel = warn\n[handler]\nmodule = " ABI1_MODULE "\n"));
    assert_int_equal(t_proc_start(&p, (char *[]){POOLSRV_BIN, "-c", ini_path, "-o", "server.port=0",
                                                 "-o", "admin.port=0", NULL},
                                  0, true, T_MS), 0);
    fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "abi 1 here\r\n");
    close(fd);
    rewrite(ini_path, "[log]\nlevel = warn\n[server]\ngreeting = x\n[handler]\nmodule = " ABI1_MODULE
                      "\n");
    kill(p.pid, SIGHUP);
    assert_true(t_proc_wait_log(&p, "reload: server.greeting needs restart", T_MS));
    assert_null(strstr(p.log, "keys applied"));
    stop_ok(&p, SIGTERM, T_MS);
    unlink(ini_path);
}

/* drain_delay: SIGTERM first turns `ready` to NOT READY and `agent` to
 * drain for that long while clients are still served, then stops. */
static void test_drain_delay(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn", "-o", "limits.drain_delay=1"), 0,
                                  true, T_MS), 0);
    char buf[256];
    assert_true(t_admin_raw(p.admin_port, "ready\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "READY\r\n");
    char aport[16], out[1024];
    snprintf(aport, sizeof aport, "%u", (unsigned)p.admin_port);
    char *probe[] = {POOLCTL_BIN, "-p", aport, "ready", NULL};
    assert_int_equal(t_run(probe, out, sizeof out, T_MS), 0);
    int64_t t0 = t_now_ms();
    assert_int_equal(kill(p.pid, SIGTERM), 0);
    assert_true(t_proc_wait_log(&p, "drain_delay: serving 1 s more before the stop", T_MS));
    assert_true(t_admin_raw(p.admin_port, "ready\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "NOT READY draining\r\n");
    assert_true(t_admin_raw(p.admin_port, "agent\r\n", true, buf, sizeof buf) > 0);
    assert_string_equal(buf, "drain\n");
    assert_int_equal(t_run(probe, out, sizeof out, T_MS), 1); /* a probe fails now */
    assert_non_null(strstr(out, "NOT READY draining"));
    int fd = t_connect_greeted(p.port, T_MS); /* still accepting */
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "still served\n"), 0);
    expect_line(fd, "still served\n");
    close(fd);
    stop_ok(&p, 0, T_MS); /* signal 0: waits for the exit SIGTERM brings */
    int64_t ms = t_now_ms() - t0;
    assert_true(ms >= 1000);
    assert_true(strstr(p.log, "stopping on SIGTERM") > strstr(p.log, "drain_delay: serving"));
}

/* The metrics of a live poolsrv parse with Prometheus' own parser
 * (python3-prometheus-client), through tests/metrics/check_prometheus.py. */
static void test_metrics_parse(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn"), 0, true, T_MS), 0);
    int fd = t_connect_greeted(p.port, T_MS);
    assert_true(fd >= 0);
    assert_int_equal(t_send_str(fd, "a line\n"), 0);
    expect_line(fd, "a line\n");
    close(fd);
    char body[32768];
    ssize_t n = t_admin_raw(p.admin_port, "GET /metrics HTTP/1.0\r\n\r\n", false, body, sizeof body);
    stop_ok(&p, SIGTERM, T_MS);
    assert_true(n > 0);
    const char *text = strstr(body, "\r\n\r\n");
    assert_non_null(text);
    char *path = write_temp(text + 4);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s/tests/metrics/check_prometheus.py < %s",
             PS_SOURCE_DIR, path);
    char out[4096];
    int rc = t_run((char *[]){"/bin/sh", "-c", cmd, NULL}, out, sizeof out, 20000);
    unlink(path);
    if (rc == 77 && getenv("POOLSRV_REQUIRE_TOOLS") == NULL) {
        print_message("SKIP: %s", out);
        skip();
    }
    if (rc != 0)
        fail_msg("check_prometheus.py exited %d:\n%s", rc, out);
}

/* The default backlog is the system's somaxconn, and the start log says
 * so; a configured one is used as it is. */
static void test_backlog_defaults_to_somaxconn(void **state)
{
    (void)state;
    int somaxconn = 0;
    FILE *f = fopen("/proc/sys/net/core/somaxconn", "r");
    if (f == NULL || fscanf(f, "%d", &somaxconn) != 1)
        somaxconn = 4096;
    if (f != NULL)
        fclose(f);
    if (somaxconn > 65535)
        somaxconn = 65535;
    char want[32];
    snprintf(want, sizeof want, "backlog %d)", somaxconn);
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn"), 0, true, T_MS), 0);
    assert_non_null(strstr(p.log, want));
    stop_ok(&p, SIGTERM, T_MS);

    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "server.backlog=7"), 0, true, T_MS), 0);
    assert_non_null(strstr(p.log, "backlog 7)"));
    stop_ok(&p, SIGTERM, T_MS);
}

/* [handler] name = sleep: "sleep N" holds a worker N ms, then is echoed;
 * a call past slow_handler_ms is logged at warn with the connection's id
 * and peer and its duration, once, and counted. */
static void test_sleep_handler_and_slow_log(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "handler.name=sleep", "-o",
                                              "limits.slow_handler_ms=50", "-o", "log.level=warn"),
                                  0, true, T_MS), 0);
    int fd = t_connect(p.port);
    assert_true(fd >= 0);
    expect_line(fd, "Welcome to my server\r\n");
    int64_t t0 = t_now_ms();
    assert_int_equal(t_send_str(fd, "sleep 80\r\n"), 0);
    expect_line(fd, "sleep 80\r\n");
    assert_true(t_now_ms() - t0 >= 80);
    assert_int_equal(t_send_str(fd, "sleep 1x\r\nhello\r\n"), 0); /* not a number: echoed */
    expect_line(fd, "sleep 1x\r\n");
    expect_line(fd, "hello\r\n");

    char aport[16], out[8192];
    snprintf(aport, sizeof aport, "%u", (unsigned)p.admin_port);
    assert_int_equal(t_run((char *[]){POOLCTL_BIN, "-p", aport, "stats", NULL}, out, sizeof out, T_MS), 0);
    assert_int_equal(t_stat(out, "slow_handlers"), 1);
    t_proc_drain(&p);
    const char *warn = strstr(p.log, "WARN  connection 1 from 127.0.0.1:");
    assert_non_null(warn);
    const char *ran = strstr(warn, ": handler on_line ran ");
    assert_non_null(ran);
    assert_non_null(strstr(ran, " ms (slow_handler_ms 50)"));
    assert_null(strstr(ran + 3, "handler on_line ran")); /* once */
    close(fd);
    stop_ok(&p, SIGTERM, T_MS);
}

/* An admin listener beyond loopback starts, with a warning naming it (the
 * admin port has no authentication); on loopback, no warning. */
static void test_admin_beyond_loopback_warns(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn"), 0, true, T_MS), 0);
    stop_ok(&p, SIGTERM, T_MS);
    assert_null(strstr(p.log, "no authentication"));

    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn", "-o", "admin.bind=0.0.0.0"),
                                  0, true, T_MS), 0);
    /* Logged right after "admin on": wait for it (bounded). */
    const char *warn = NULL;
    for (int64_t until = t_now_ms() + T_MS; warn == NULL && t_now_ms() < until;) {
        t_proc_drain(&p);
        warn = strstr(p.log, "WARN  admin on 0.0.0.0:");
        if (warn == NULL)
            usleep(10 * 1000);
    }
    if (warn == NULL)
        t_proc_stop(&p, SIGKILL, T_MS); /* leave no child behind */
    assert_non_null(warn);
    assert_non_null(strstr(warn, "no authentication"));
    stop_ok(&p, SIGTERM, T_MS);
}

static void test_poolctl_cannot_connect(void **state)
{
    (void)state;
    char port[16], out[1024];
    snprintf(port, sizeof port, "%u", (unsigned)t_free_port());
    int rc = t_run((char *[]){POOLCTL_BIN, "-p", port, "threads", NULL}, out, sizeof out, T_MS);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(out, "poolctl: connect"));
}

/* SIGTERM mid-conversation: lines already sent are answered, the client
 * sees an orderly end of stream, the process exits 0 promptly. */
static void test_sigterm_is_graceful(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "log.level=warn"), 0, true, T_MS), 0);
    int fds[5];
    for (int i = 0; i < 5; i++) {
        fds[i] = t_connect_greeted(p.port, T_MS);
        assert_true(fds[i] >= 0);
        assert_int_equal(t_send_str(fds[i], "answered\r\n"), 0);
        expect_line(fds[i], "answered\r\n");
        /* May or may not be read before the signal: if it is, it is
         * answered; either way the stream ends cleanly. */
        assert_int_equal(t_send_str(fds[i], "in flight\r\n"), 0);
    }
    int64_t t0 = t_now_ms();
    stop_ok(&p, SIGTERM, 10000);
    assert_true(t_now_ms() - t0 < 6000);
    for (int i = 0; i < 5; i++) {
        char line[64];
        ssize_t r = t_read_line(fds[i], line, sizeof line, T_MS);
        if (r > 0) {
            assert_string_equal(line, "in flight\r\n");
            r = t_read_line(fds[i], line, sizeof line, T_MS);
        }
        assert_int_equal(r, 0); /* FIN: recv() == 0, not a reset */
        close(fds[i]);
    }
    assert_non_null(strstr(p.log, "stopping on SIGTERM"));
    assert_null(strstr(p.log, "ERROR"));
}

/* Out of descriptors: accepting pauses (no spin, no log flood), served
 * clients keep being served, and accepting resumes once descriptors free. */
static void test_out_of_descriptors(void **state)
{
    (void)state;
    t_proc p;
    assert_int_equal(t_proc_start(&p, POOLSRV("-o", "pool.workers=4", "-o", "log.level=warn"),
                                  48, false, T_MS), 0);
    enum { N = 80 };
    int fds[N];
    fds[0] = t_connect_greeted(p.port, T_MS);
    assert_true(fds[0] >= 0);
    for (int i = 1; i < N; i++) {
        fds[i] = t_connect(p.port); /* completes in the kernel's backlog */
        assert_true(fds[i] >= 0);
    }
    /* Once the acceptor has hit EMFILE, measure its CPU over a second. */
    assert_true(t_proc_wait_log(&p, "accept: Too many open files", T_MS));
    char statpath[64], buf[1024];
    snprintf(statpath, sizeof statpath, "/proc/%d/stat", p.pid);
    long long ticks[2];
    for (int k = 0; k < 2; k++) {
        FILE *f = fopen(statpath, "r");
        assert_non_null(f);
        assert_non_null(fgets(buf, sizeof buf, f));
        fclose(f);
        const char *s = strrchr(buf, ')');
        unsigned long long ut, st;
        assert_int_equal(sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st), 2);
        ticks[k] = (long long)(ut + st);
        if (k == 0) {
            /* The served client is answered throughout. */
            for (int j = 0; j < 10; j++) {
                assert_int_equal(t_send_str(fds[0], "still served\n"), 0);
                expect_line(fds[0], "still served\n");
                usleep(100 * 1000);
            }
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    print_message("server CPU while out of descriptors: %lld ticks of %ld/s\n",
                  ticks[1] - ticks[0], hz);
    assert_true(ticks[1] - ticks[0] < hz / 4); /* well below one core */
    t_proc_drain(&p);
    int warnings = 0;
    for (const char *s = p.log; (s = strstr(s, "accept: ")) != NULL; s++)
        warnings++;
    assert_true(warnings >= 1);
    assert_true(warnings <= 4); /* about one a second, not one per retry */

    /* Free everything but the last client: it is accepted and served. */
    for (int i = 0; i < N - 1; i++)
        close(fds[i]);
    int last = fds[N - 1];
    char line[256];
    assert_true(t_read_line(last, line, sizeof line, T_MS) > 0);
    assert_string_equal(line, "Welcome to my server\r\n");
    assert_int_equal(t_send_str(last, "back\n"), 0);
    expect_line(last, "back\n");
    close(last);
    stop_ok(&p, SIGTERM, 10000);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_only),
        cmocka_unit_test(test_shipped_conf_loads_every_module),
        cmocka_unit_test(test_overrides_are_validated),
        cmocka_unit_test(test_config_error_binds_nothing),
        cmocka_unit_test(test_serves_and_poolctl),
        cmocka_unit_test(test_module_serves),
        cmocka_unit_test(test_module_lookup),
        cmocka_unit_test(test_module_chat),
        cmocka_unit_test(test_socket_activation),
        cmocka_unit_test(test_socket_activation_refused),
        cmocka_unit_test(test_notify),
        cmocka_unit_test(test_sighup_reload),
        cmocka_unit_test(test_sighup_reload_handler_keys),
        cmocka_unit_test(test_drain_delay),
        cmocka_unit_test(test_metrics_parse),
        cmocka_unit_test(test_module_keys),
        cmocka_unit_test(test_module_errors),
        cmocka_unit_test(test_module_by_name),
        cmocka_unit_test(test_handler_greeting),
        cmocka_unit_test(test_poolctl_cannot_connect),
        cmocka_unit_test(test_backlog_defaults_to_somaxconn),
        cmocka_unit_test(test_admin_beyond_loopback_warns),
        cmocka_unit_test(test_sleep_handler_and_slow_log),
        cmocka_unit_test(test_sigterm_is_graceful),
        cmocka_unit_test(test_out_of_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
