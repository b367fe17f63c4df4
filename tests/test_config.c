/*
 * test_config - the INI schema: defaults, conf/server.ini, every error kind
 * with its exact file:line message, -o overrides and cross-key validation.
 *
 * Usage: test_config [path/to/conf/server.ini]
 * (without an argument the file is found next to this source file).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "poolsrv/config.h"
#include "poolsrv/error.h"

static const char *server_ini_path;
static char server_ini_buf[4096];

/* ---- helpers -------------------------------------------------------------- */

/* A configuration where every field differs from the defaults, so a load
 * that should set every key shows any key it missed. */
static void config_all_changed(ps_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    strcpy(cfg->bind, "10.9.9.9");
    cfg->port = 1;
    cfg->backlog = 2;
    strcpy(cfg->greeting, "changed");
    cfg->dispatch = PS_DISPATCH_CONNECTION;
    cfg->workers = 3;
    cfg->queue_capacity = 4;
    cfg->max_connections = 5;
    cfg->max_connections_wait_ms = 11;
    cfg->max_line = 17;
    cfg->idle_timeout = 6;
    cfg->send_timeout = 7;
    cfg->shutdown_timeout = 8;
    cfg->slow_handler_ms = 10;
    cfg->admin_enabled = false;
    strcpy(cfg->admin_bind, "10.8.8.8");
    cfg->admin_port = 9;
    cfg->log_level = PS_LOG_DEBUG;
    cfg->handler = PS_HANDLER_SLEEP;
    strcpy(cfg->handler_module, "/changed.so");
    cfg->tls_enabled = true;
    strcpy(cfg->tls_cert, "/changed.crt");
    strcpy(cfg->tls_key, "/changed.key");
    strcpy(cfg->tls_ca, "/changed-ca.crt");
    cfg->tls_verify_client = PS_TLS_VERIFY_REQUIRE;
    cfg->tls_min_version = PS_TLS_1_3;
    strcpy(cfg->tls_ciphers, "changed");
    strcpy(cfg->tls_ciphersuites, "changed");
    cfg->tls_handshake_timeout = 12;
    cfg->tls_session_tickets = false;
}

static void assert_config_equal(const ps_config *a, const ps_config *b)
{
    assert_string_equal(a->bind, b->bind);
    assert_int_equal(a->port, b->port);
    assert_int_equal(a->backlog, b->backlog);
    assert_string_equal(a->greeting, b->greeting);
    assert_int_equal(a->dispatch, b->dispatch);
    assert_int_equal(a->workers, b->workers);
    assert_int_equal(a->queue_capacity, b->queue_capacity);
    assert_int_equal(a->max_connections, b->max_connections);
    assert_int_equal(a->max_connections_wait_ms, b->max_connections_wait_ms);
    assert_int_equal(a->max_line, b->max_line);
    assert_int_equal(a->idle_timeout, b->idle_timeout);
    assert_int_equal(a->send_timeout, b->send_timeout);
    assert_int_equal(a->shutdown_timeout, b->shutdown_timeout);
    assert_int_equal(a->slow_handler_ms, b->slow_handler_ms);
    assert_int_equal(a->admin_enabled, b->admin_enabled);
    assert_string_equal(a->admin_bind, b->admin_bind);
    assert_int_equal(a->admin_port, b->admin_port);
    assert_int_equal(a->log_level, b->log_level);
    assert_int_equal(a->handler, b->handler);
    assert_string_equal(a->handler_module, b->handler_module);
    assert_int_equal(a->tls_enabled, b->tls_enabled);
    assert_string_equal(a->tls_cert, b->tls_cert);
    assert_string_equal(a->tls_key, b->tls_key);
    assert_string_equal(a->tls_ca, b->tls_ca);
    assert_int_equal(a->tls_verify_client, b->tls_verify_client);
    assert_int_equal(a->tls_min_version, b->tls_min_version);
    assert_string_equal(a->tls_ciphers, b->tls_ciphers);
    assert_string_equal(a->tls_ciphersuites, b->tls_ciphersuites);
    assert_int_equal(a->tls_handshake_timeout, b->tls_handshake_timeout);
    assert_int_equal(a->tls_session_tickets, b->tls_session_tickets);
    assert_int_equal(a->handler_nkeys, b->handler_nkeys);
    for (size_t i = 0; i < a->handler_nkeys; i++) {
        assert_string_equal(a->handler_keys[i].key, b->handler_keys[i].key);
        assert_string_equal(a->handler_keys[i].value, b->handler_keys[i].value);
    }
}

/* Writes len bytes to a new temporary file; the caller unlinks path. */
static void write_temp(char path[static 32], const char *data, size_t len)
{
    strcpy(path, "/tmp/test_config_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        assert_true(n > 0);
        off += (size_t)n;
    }
    assert_int_equal(close(fd), 0);
}

/* Loads text (as "t.ini") over the defaults and expects exactly msg. */
static void expect_error(const char *text, const char *msg)
{
    ps_config cfg;
    char err[512] = "";
    ps_config_defaults(&cfg);
    int rc = ps_config_load_string(&cfg, "t.ini", text, err, sizeof(err));
    assert_int_equal(rc, PS_ECONFIG);
    assert_string_equal(err, msg);
}

static void load_ok(ps_config *cfg, const char *text)
{
    char err[512] = "";
    ps_config_defaults(cfg);
    int rc = ps_config_load_string(cfg, "t.ini", text, err, sizeof(err));
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    assert_string_equal(err, "");
}

/* ---- defaults and good files ---------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    ps_config cfg;
    memset(&cfg, 0xa5, sizeof(cfg));
    ps_config_defaults(&cfg);
    assert_string_equal(cfg.bind, "127.0.0.1");
    assert_int_equal(cfg.port, 9050);
    assert_int_equal(cfg.backlog, 0); /* the system's somaxconn */
    assert_string_equal(cfg.greeting, "Welcome to my server");
    assert_int_equal(cfg.dispatch, PS_DISPATCH_EVENT);
    assert_int_equal(cfg.workers, 25);
    assert_int_equal(cfg.queue_capacity, 256);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.max_connections_wait_ms, 100);
    assert_int_equal(cfg.max_line, 8192);
    assert_int_equal(cfg.idle_timeout, 300);
    assert_int_equal(cfg.send_timeout, 10);
    assert_int_equal(cfg.shutdown_timeout, 5);
    assert_int_equal(cfg.slow_handler_ms, 1000);
    assert_true(cfg.admin_enabled);
    assert_string_equal(cfg.admin_bind, "127.0.0.1");
    assert_int_equal(cfg.admin_port, 9051);
    assert_int_equal(cfg.log_level, PS_LOG_INFO);
    assert_int_equal(cfg.handler, PS_HANDLER_ECHO);

    char err[256] = "x";
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
    assert_string_equal(err, "");
}

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(ps_dispatch_name(PS_DISPATCH_CONNECTION), "connection");
    assert_string_equal(ps_dispatch_name(PS_DISPATCH_EVENT), "event");
    assert_string_equal(ps_dispatch_name(PS_DISPATCH_THREAD), "thread");
    assert_string_equal(ps_dispatch_name((ps_dispatch_mode)7), "unknown");
    assert_string_equal(ps_log_level_name(PS_LOG_ERROR), "error");
    assert_string_equal(ps_log_level_name(PS_LOG_WARN), "warn");
    assert_string_equal(ps_log_level_name(PS_LOG_INFO), "info");
    assert_string_equal(ps_log_level_name(PS_LOG_DEBUG), "debug");
    assert_string_equal(ps_log_level_name((ps_log_level)-1), "unknown");
    assert_string_equal(ps_handler_name(PS_HANDLER_ECHO), "echo");
    assert_string_equal(ps_handler_name(PS_HANDLER_SLEEP), "sleep");
    assert_string_equal(ps_handler_name((ps_handler_kind)2), "unknown");
}

static const char every_key[] =
    "; every key, none at its default\n"
    "[server]\n"
    "bind = ::1\n"
    "port = 0\n"
    "backlog = 65535\n"
    "greeting = Hello there, friend\n"
    "dispatch = thread\n"
    "[pool]\n"
    "workers = 4096\n"
    "queue_capacity = 1048576\n"
    "[limits]\n"
    "max_connections = 1000000\n"
    "max_connections_wait_ms = 60000\n"
    "max_line = 16\n"
    "idle_timeout = 0\n"
    "send_timeout = 3600\n"
    "shutdown_timeout = 1\n"
    "slow_handler_ms = 0\n"
    "[admin]\n"
    "enabled = off\n"
    "bind = localhost\n"
    "port = 65535\n"
    "[log]\n"
    "level = debug\n"
    "[handler]\n"
    "name = sleep\n"
    "[tls]\n"
    "enabled = false\n"
    "cert = /etc/poolsrv/server.crt\n"
    "key = /etc/poolsrv/server.key\n"
    "ca = /etc/poolsrv/clients-ca.crt\n"
    "verify_client = require\n"
    "min_version = 1.3\n"
    "ciphers = ECDHE+AESGCM\n"
    "ciphersuites = TLS_AES_256_GCM_SHA384\n"
    "handshake_timeout = 300\n"
    "session_tickets = off\n";

static void check_every_key(const ps_config *cfg)
{
    assert_string_equal(cfg->bind, "::1");
    assert_int_equal(cfg->port, 0);
    assert_int_equal(cfg->backlog, 65535);
    assert_string_equal(cfg->greeting, "Hello there, friend");
    assert_int_equal(cfg->dispatch, PS_DISPATCH_THREAD);
    assert_int_equal(cfg->workers, 4096);
    assert_int_equal(cfg->queue_capacity, 1048576);
    assert_int_equal(cfg->max_connections, 1000000);
    assert_int_equal(cfg->max_connections_wait_ms, 60000);
    assert_int_equal(cfg->max_line, 16);
    assert_int_equal(cfg->idle_timeout, 0);
    assert_int_equal(cfg->send_timeout, 3600);
    assert_int_equal(cfg->shutdown_timeout, 1);
    assert_int_equal(cfg->slow_handler_ms, 0);
    assert_false(cfg->admin_enabled);
    assert_string_equal(cfg->admin_bind, "localhost");
    assert_int_equal(cfg->admin_port, 65535);
    assert_int_equal(cfg->log_level, PS_LOG_DEBUG);
    assert_int_equal(cfg->handler, PS_HANDLER_SLEEP);
    assert_false(cfg->tls_enabled);
    assert_string_equal(cfg->tls_cert, "/etc/poolsrv/server.crt");
    assert_string_equal(cfg->tls_key, "/etc/poolsrv/server.key");
    assert_string_equal(cfg->tls_ca, "/etc/poolsrv/clients-ca.crt");
    assert_int_equal(cfg->tls_verify_client, PS_TLS_VERIFY_REQUIRE);
    assert_int_equal(cfg->tls_min_version, PS_TLS_1_3);
    assert_string_equal(cfg->tls_ciphers, "ECDHE+AESGCM");
    assert_string_equal(cfg->tls_ciphersuites, "TLS_AES_256_GCM_SHA384");
    assert_int_equal(cfg->tls_handshake_timeout, 300);
    assert_false(cfg->tls_session_tickets);
}

static void test_file_every_key(void **state)
{
    (void)state;
    char path[32];
    char err[512] = "x";
    ps_config cfg;
    write_temp(path, every_key, strlen(every_key));
    ps_config_defaults(&cfg);
    int rc = ps_config_load_file(&cfg, path, err, sizeof(err));
    unlink(path);
    if (rc != 0)
        fail_msg("unexpected error: %s", err);
    assert_string_equal(err, "");
    check_every_key(&cfg);
}

static void test_string_every_key(void **state)
{
    (void)state;
    ps_config cfg;
    load_ok(&cfg, every_key);
    check_every_key(&cfg);
}

/* The shipped file sets every key, each to its documented default. */
static void test_server_ini_is_defaults(void **state)
{
    (void)state;
    ps_config cfg, def;
    char err[512] = "x";
    config_all_changed(&cfg);
    int rc = ps_config_load_file(&cfg, server_ini_path, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s: %s", server_ini_path, err);
    ps_config_defaults(&def);
    /* No handler key is set: one handler's key is another's error, and the
     * file must load any module. Echo's greeting is shown, commented, with
     * its default; the older server.greeting is left out. */
    assert_int_equal(cfg.handler_nkeys, 0);
    assert_string_equal(cfg.greeting, "changed");
    strcpy(cfg.greeting, def.greeting);
    FILE *f = fopen(server_ini_path, "r");
    assert_non_null(f);
    char text[16384];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char shown[PS_CONFIG_GREETING_MAX + 32];
    snprintf(shown, sizeof shown, "\n;greeting = %s\n", def.greeting);
    assert_non_null(strstr(text, shown));
    assert_config_equal(&cfg, &def);
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
}

/* Keys absent from the file keep the caller's values. */
static void test_partial_file_keeps_rest(void **state)
{
    (void)state;
    ps_config cfg, expect;
    char err[256];
    config_all_changed(&cfg);
    expect = cfg;
    expect.workers = 8;
    assert_int_equal(ps_config_load_string(&cfg, "t.ini", "[pool]\nworkers = 8\n", err, sizeof(err)), 0);
    assert_config_equal(&cfg, &expect);
}

static void test_empty_and_comment_only(void **state)
{
    (void)state;
    ps_config cfg, def;
    ps_config_defaults(&def);
    load_ok(&cfg, "");
    assert_config_equal(&cfg, &def);
    load_ok(&cfg, "; nothing\n# at all\n\n   \n[server]\n[log]\n");
    assert_config_equal(&cfg, &def);

    char path[32], err[256] = "x";
    write_temp(path, "", 0);
    config_all_changed(&cfg);
    ps_config before = cfg;
    int rc = ps_config_load_file(&cfg, path, err, sizeof(err));
    unlink(path);
    assert_int_equal(rc, 0);
    assert_config_equal(&cfg, &before);
}

static void test_syntax_variants(void **state)
{
    (void)state;
    ps_config cfg;
    /* inline comments: inih strips " ;", we strip " #" */
    load_ok(&cfg, "[server]\nport = 9060 ; comment\nbacklog = 12 # comment\n"
                  "[pool] ; a section comment\nworkers = 3\n");
    assert_int_equal(cfg.port, 9060);
    assert_int_equal(cfg.backlog, 12);
    assert_int_equal(cfg.workers, 3);
    /* indented lines are keys, not inih "continuations" of the previous key */
    load_ok(&cfg, "[pool]\n  workers = 4\n\tqueue_capacity = 8\n  [log]\n  level = warn\n");
    assert_int_equal(cfg.workers, 4);
    assert_int_equal(cfg.queue_capacity, 8);
    assert_int_equal(cfg.log_level, PS_LOG_WARN);
    /* CRLF line endings, a UTF-8 BOM, ':' as separator, no spaces */
    load_ok(&cfg, "\xEF\xBB\xBF[server]\r\nport:1234\r\nbind=0.0.0.0\r\n");
    assert_int_equal(cfg.port, 1234);
    assert_string_equal(cfg.bind, "0.0.0.0");
    /* values are case-insensitive, leading zeros are decimal */
    load_ok(&cfg, "[server]\ndispatch = Thread\n[admin]\nenabled = NO\nport = 0099\n[log]\nlevel = ERROR\n");
    assert_int_equal(cfg.dispatch, PS_DISPATCH_THREAD);
    assert_false(cfg.admin_enabled);
    assert_int_equal(cfg.admin_port, 99);
    assert_int_equal(cfg.log_level, PS_LOG_ERROR);
}

static void test_bools(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "yes", "on", "1", "TRUE", "On"};
    static const char *const no[] = {"false", "no", "off", "0", "False", "OFF"};
    char text[128], err[256];
    ps_config cfg;
    for (size_t i = 0; i < 6; i++) {
        snprintf(text, sizeof(text), "[admin]\nenabled = %s\n", yes[i]);
        ps_config_defaults(&cfg);
        cfg.admin_enabled = false; /* the default is true: start from false */
        assert_int_equal(ps_config_load_string(&cfg, "t.ini", text, err, sizeof(err)), 0);
        assert_true(cfg.admin_enabled);
        snprintf(text, sizeof(text), "[admin]\nenabled = %s\n", no[i]);
        load_ok(&cfg, text);
        assert_false(cfg.admin_enabled);
    }
}

static void test_hosts(void **state)
{
    (void)state;
    static const char *const good[] = {"0.0.0.0", "::", "fe80::1%lo", "localhost",
                                       "db-1.example.com", "example.com.", "my_host"};
    static const char *const bad[] = {"256.1.1.1", "9050", "[::1]", "a..b", "-x.com",
                                      "x-.com", "host name", "a/b", "1.2.3"};
    char err[512];
    ps_config cfg;
    ps_config_defaults(&cfg);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (ps_config_set(&cfg, "server", "bind", good[i], err, sizeof(err)) != 0)
            fail_msg("%s: %s", good[i], err);
        assert_string_equal(cfg.bind, good[i]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char expect[512];
        snprintf(expect, sizeof(expect),
                 "admin.bind: expected an IPv4 or IPv6 address or a host name, got \"%s\"", bad[i]);
        assert_int_equal(ps_config_set(&cfg, "admin", "bind", bad[i], err, sizeof(err)), PS_ECONFIG);
        assert_string_equal(err, expect);
        assert_string_equal(cfg.admin_bind, "127.0.0.1"); /* unchanged */
    }
    assert_int_equal(ps_config_set(&cfg, "server", "bind", "", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.bind: expected an IPv4 or IPv6 address or a host name, got nothing");
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(ps_config_set(&cfg, "server", "bind", longname, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.bind: too long (299 characters, at most 255)");
}

static void test_greeting(void **state)
{
    (void)state;
    ps_config cfg;
    char err[512];
    /* no value: no greeting */
    load_ok(&cfg, "[server]\ngreeting =\n");
    assert_string_equal(cfg.greeting, "");
    load_ok(&cfg, "[server]\ngreeting = Hi: you = \"me\"\n");
    assert_string_equal(cfg.greeting, "Hi: you = \"me\"");

    ps_config_defaults(&cfg);
    assert_int_equal(ps_config_set(&cfg, "server", "greeting", "a\r\nb", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.greeting: must be one line (no CR, LF or NUL), got \"a\\x0d\\x0ab\"");
    assert_string_equal(cfg.greeting, "Welcome to my server");

    char big[PS_CONFIG_GREETING_MAX + 1];
    memset(big, 'g', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ps_config_set(&cfg, "server", "greeting", big, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.greeting: too long (1024 bytes, at most 1023)");
    big[sizeof(big) - 2] = '\0'; /* 1023 bytes: the longest allowed */
    assert_int_equal(ps_config_set(&cfg, "server", "greeting", big, err, sizeof(err)), 0);
    assert_int_equal(strlen(cfg.greeting), PS_CONFIG_GREETING_MAX - 1);
}

/* ---- file errors: exact message and line ---------------------------------- */

static void test_err_unknown_section(void **state)
{
    (void)state;
    expect_error("[server]\nport = 1\n\n[foo]\nx = 1\n", "t.ini:4: unknown section [foo]");
    /* reported at the header even with no key under it */
    expect_error("[pool]\n[Pool]\n", "t.ini:2: unknown section [Pool]");
}

static void test_err_unknown_key(void **state)
{
    (void)state;
    expect_error("[pool]\nworkers = 2\nbar = 1\n", "t.ini:3: unknown key \"bar\" in [pool]");
    /* a key from another section */
    expect_error("[log]\n\nport = 1\n", "t.ini:3: unknown key \"port\" in [log]");
}

static void test_err_bad_number(void **state)
{
    (void)state;
    expect_error("; comment\n\n[server]\nport = 1\n\n[pool]\nworkers = abc\n",
                 "t.ini:7: pool.workers: expected an integer from 1 to 4096, got \"abc\"");
    expect_error("[pool]\nworkers = 12abc\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"12abc\"");
    expect_error("[pool]\nworkers =\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"\"");
    expect_error("[pool]\nworkers = 0x10\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"0x10\"");
    expect_error("[pool]\nworkers = 1 2\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"1 2\"");
    expect_error("[limits]\nmax_line = 1.5\n",
                 "t.ini:2: limits.max_line: expected an integer from 16 to 16777216, got \"1.5\"");
}

static void test_err_negative(void **state)
{
    (void)state;
    expect_error("[server]\nbacklog = -5\n",
                 "t.ini:2: server.backlog: expected an integer from 0 to 65535, got \"-5\"");
    expect_error("[pool]\nworkers = +5\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"+5\"");
    /* strtoull alone would wrap "-1" to ULLONG_MAX */
    expect_error("[limits]\nidle_timeout = -1\n",
                 "t.ini:2: limits.idle_timeout: expected an integer from 0 to 86400, got \"-1\"");
}

static void test_err_range(void **state)
{
    (void)state;
    expect_error("[pool]\nworkers = 0\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"0\"");
    expect_error("[pool]\nworkers = 4097\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"4097\"");
    expect_error("[server]\n\nport = 65536\n",
                 "t.ini:3: server.port: expected an integer from 0 to 65535, got \"65536\"");
    expect_error("[limits]\nmax_line = 15\n",
                 "t.ini:2: limits.max_line: expected an integer from 16 to 16777216, got \"15\"");
    expect_error("[limits]\nsend_timeout = 0\n",
                 "t.ini:2: limits.send_timeout: expected an integer from 1 to 3600, got \"0\"");
    expect_error("[limits]\nshutdown_timeout = 3601\n",
                 "t.ini:2: limits.shutdown_timeout: expected an integer from 1 to 3600, got \"3601\"");
    expect_error("[limits]\nmax_connections = 1000001\n",
                 "t.ini:2: limits.max_connections: expected an integer from 1 to 1000000, got \"1000001\"");
    expect_error("[limits]\nslow_handler_ms = 3600001\n",
                 "t.ini:2: limits.slow_handler_ms: expected an integer from 0 to 3600000, got \"3600001\"");
    expect_error("[handler]\nname = upper\n",
                 "t.ini:2: handler.name: expected echo or sleep, got \"upper\"");
    expect_error("[pool]\nqueue_capacity = 1048577\n",
                 "t.ini:2: pool.queue_capacity: expected an integer from 1 to 1048576, got \"1048577\"");
}

static void test_err_overflow(void **state)
{
    (void)state;
    expect_error("[server]\nport = 99999999999999999999\n",
                 "t.ini:2: server.port: expected an integer from 0 to 65535, got \"99999999999999999999\"");
    /* fits in unsigned long long, but not in the uint16_t field */
    expect_error("[admin]\nport = 18446744073709551615\n",
                 "t.ini:2: admin.port: expected an integer from 0 to 65535, got \"18446744073709551615\"");
    /* 2^32 + 8: would be 8 once truncated to unsigned */
    expect_error("[pool]\nworkers = 4294967304\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"4294967304\"");
}

static void test_err_bad_enum_and_bool(void **state)
{
    (void)state;
    expect_error("[server]\ndispatch = fast\n",
                 "t.ini:2: server.dispatch: expected connection, event or thread, got \"fast\"");
    expect_error("[log]\nlevel = verbose\n",
                 "t.ini:2: log.level: expected error, warn, info or debug, got \"verbose\"");
    expect_error("[admin]\n\n\nenabled = maybe\n",
                 "t.ini:4: admin.enabled: expected true or false (or yes/no, on/off, 1/0), got \"maybe\"");
    expect_error("[admin]\nenabled = 2\n",
                 "t.ini:2: admin.enabled: expected true or false (or yes/no, on/off, 1/0), got \"2\"");
    expect_error("[server]\nbind = not a host\n",
                 "t.ini:2: server.bind: expected an IPv4 or IPv6 address or a host name, got \"not a host\"");
}

static void test_err_duplicate(void **state)
{
    (void)state;
    expect_error("[pool]\n; x\nworkers = 3\nqueue_capacity = 9\nworkers = 3\n",
                 "t.ini:5: pool.workers given twice (first on line 3)");
    /* across two [pool] headers too */
    expect_error("[pool]\nworkers = 3\n[log]\nlevel = info\n[pool]\nworkers = 4\n",
                 "t.ini:6: pool.workers given twice (first on line 2)");
    /* same name in different sections is fine */
    ps_config cfg;
    load_ok(&cfg, "[server]\nport = 1\n[admin]\nport = 2\n");
    assert_int_equal(cfg.port, 1);
    assert_int_equal(cfg.admin_port, 2);
}

static void test_err_key_before_section(void **state)
{
    (void)state;
    expect_error("; top\nport = 9050\n[server]\n", "t.ini:2: key \"port\" before any [section] line");
}

static void test_err_syntax(void **state)
{
    (void)state;
    expect_error("[server]\nport = 1\nthis is not a key\n",
                 "t.ini:3: syntax error (expected \"key = value\" or \"[section]\")");
    expect_error("[server\nport = 1\n",
                 "t.ini:1: syntax error (expected \"[section]\", no closing ']')");
    expect_error("[server] port = 1\n", "t.ini:1: syntax error (text after [server])");
    /* inih keeps going after a syntax error; the first error is reported */
    expect_error("[pool]\nworkers 3\nworkers = abc\nbogus = 1\n",
                 "t.ini:2: syntax error (expected \"key = value\" or \"[section]\")");
    expect_error("[pool]\nworkers = abc\nno equals here\n",
                 "t.ini:2: pool.workers: expected an integer from 1 to 4096, got \"abc\"");
}

/* inih (INI_MAX_LINE 200) would split a long line and shift later line
 * numbers; it is rejected at its own line instead. */
static void test_err_long_line(void **state)
{
    (void)state;
    char text[600];
    char greet[300];
    memset(greet, 'x', sizeof(greet) - 1);
    greet[sizeof(greet) - 1] = '\0';
    snprintf(text, sizeof(text), "[server]\nport = 1\ngreeting = %s\nport = 2\n", greet);
    expect_error(text, "t.ini:3: line too long (310 characters, at most 199)");

    /* 199 characters is still one line */
    memset(greet, 'y', 188);
    greet[188] = '\0';
    snprintf(text, sizeof(text), "[server]\ngreeting = %s\n", greet);
    ps_config cfg;
    load_ok(&cfg, text);
    assert_string_equal(cfg.greeting, greet);
}

static void test_err_binary_garbage(void **state)
{
    (void)state;
    static const char garbage[] = "\x89PNG\r\n\x1a\n\x7f\xfe\xff\x01\x02\x03\x04\xc3\x28";
    char path[32], err[512], expect[128];
    ps_config cfg;
    ps_config_defaults(&cfg);
    write_temp(path, garbage, sizeof(garbage) - 1);
    int rc = ps_config_load_file(&cfg, path, err, sizeof(err));
    snprintf(expect, sizeof(expect), "%s:1: syntax error (expected \"key = value\" or \"[section]\")", path);
    unlink(path);
    assert_int_equal(rc, PS_ECONFIG);
    assert_string_equal(err, expect);

    /* a NUL byte would silently cut the line short in inih */
    static const char nul[] = "[pool]\nworkers = 4\0 garbage\n";
    write_temp(path, nul, sizeof(nul) - 1);
    rc = ps_config_load_file(&cfg, path, err, sizeof(err));
    snprintf(expect, sizeof(expect), "%s:2: syntax error (NUL byte: not a text file?)", path);
    unlink(path);
    assert_int_equal(rc, PS_ECONFIG);
    assert_string_equal(err, expect);
}

static void test_err_missing_file(void **state)
{
    (void)state;
    char err[512] = "";
    ps_config cfg;
    ps_config_defaults(&cfg);
    assert_int_equal(ps_config_load_file(&cfg, "/nonexistent/poolsrv.ini", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "/nonexistent/poolsrv.ini: No such file or directory");
    /* a directory opens, but cannot be read */
    assert_int_equal(ps_config_load_file(&cfg, "/tmp", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "/tmp: Is a directory");
    /* a device never ends: refused before a byte is read */
    assert_int_equal(ps_config_load_file(&cfg, "/dev/zero", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "/dev/zero: not a regular file");
    assert_int_equal(ps_config_load_file(&cfg, "/dev/null", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "/dev/null: not a regular file");
    /* nor is a file over a megabyte read */
    char path[32];
    static char big[1024 * 1024 + 1];
    memset(big, ';', sizeof big);
    for (size_t i = 79; i < sizeof big; i += 80)
        big[i] = '\n';
    write_temp(path, big, sizeof big);
    assert_int_equal(ps_config_load_file(&cfg, path, err, sizeof(err)), PS_ECONFIG);
    char want[128];
    snprintf(want, sizeof want, "%s: too large (1048577 bytes, at most 1048576)", path);
    assert_string_equal(err, want);
    unlink(path);
    big[sizeof big - 1] = '\n'; /* one byte less: read, and valid (comments) */
    write_temp(path, big, sizeof big - 1);
    assert_int_equal(ps_config_load_file(&cfg, path, err, sizeof(err)), 0);
    unlink(path);
}

static void test_err_file_line_numbers(void **state)
{
    (void)state;
    static const char text[] = "[server]\r\nport = 1\r\n\r\n[pool]\r\nworkers = 99999\r\n";
    char path[32], err[512], expect[160];
    ps_config cfg;
    ps_config_defaults(&cfg);
    write_temp(path, text, sizeof(text) - 1);
    int rc = ps_config_load_file(&cfg, path, err, sizeof(err));
    snprintf(expect, sizeof(expect),
             "%s:5: pool.workers: expected an integer from 1 to 4096, got \"99999\"", path);
    unlink(path);
    assert_int_equal(rc, PS_ECONFIG);
    assert_string_equal(err, expect);
}

/* A failed load leaves *cfg as it was, and messages are cut to fit err. */
static void test_err_no_partial_update(void **state)
{
    (void)state;
    ps_config cfg, before;
    char err[512];
    ps_config_defaults(&cfg);
    before = cfg;
    assert_int_equal(ps_config_load_string(&cfg, "t.ini", "[pool]\nworkers = 7\nqueue_capacity = 0\n",
                                           err, sizeof(err)), PS_ECONFIG);
    assert_config_equal(&cfg, &before);

    char small[8];
    assert_int_equal(ps_config_load_string(&cfg, "t.ini", "[nope]\n", small, sizeof(small)), PS_ECONFIG);
    assert_string_equal(small, "t.ini:1");
    assert_int_equal(ps_config_load_string(&cfg, "t.ini", "[nope]\n", NULL, 0), PS_ECONFIG);
}

static void test_err_quotes_garbage_safely(void **state)
{
    (void)state;
    char text[256];
    snprintf(text, sizeof(text), "[pool]\nworkers = \x1b[31m\"%s\n",
             "0123456789012345678901234567890123456789012345678901234567890123456789");
    expect_error(text, "t.ini:2: pool.workers: expected an integer from 1 to 4096, got "
                       "\"\\x1b[31m\\x220123456789012345678901234567890123456789012345678901234567...\"");
}

/* ---- set / override ------------------------------------------------------- */

static void test_set(void **state)
{
    (void)state;
    ps_config cfg;
    char err[512] = "x";
    ps_config_defaults(&cfg);
    assert_int_equal(ps_config_set(&cfg, "limits", "idle_timeout", "0", err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(cfg.idle_timeout, 0);
    assert_int_equal(ps_config_set(&cfg, "limits", "idle_timeout", "86401", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "limits.idle_timeout: expected an integer from 0 to 86400, got \"86401\"");
    assert_int_equal(cfg.idle_timeout, 0);
    assert_int_equal(ps_config_set(&cfg, "nope", "x", "1", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "unknown section [nope]");
    assert_int_equal(ps_config_set(&cfg, "pool", "threads", "1", err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "unknown key \"threads\" in [pool]");
    assert_int_equal(ps_config_set(NULL, "pool", "workers", "1", err, sizeof(err)), -EINVAL);
}

static void test_override_good(void **state)
{
    (void)state;
    ps_config cfg;
    char err[512] = "x";
    ps_config_defaults(&cfg);
    assert_int_equal(ps_config_override(&cfg, "pool.workers=8", err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(cfg.workers, 8);
    assert_int_equal(ps_config_override(&cfg, "server.greeting=", err, sizeof(err)), 0);
    assert_string_equal(cfg.greeting, "");
    assert_int_equal(ps_config_override(&cfg, "server.greeting=a=b", err, sizeof(err)), 0);
    assert_string_equal(cfg.greeting, "a=b");
    assert_int_equal(ps_config_override(&cfg, "server.bind=::", err, sizeof(err)), 0);
    assert_string_equal(cfg.bind, "::");
    assert_int_equal(ps_config_override(&cfg, "server.dispatch=thread", err, sizeof(err)), 0);
    assert_int_equal(cfg.dispatch, PS_DISPATCH_THREAD);
    assert_int_equal(ps_config_override(&cfg, "admin.enabled=no", err, sizeof(err)), 0);
    assert_false(cfg.admin_enabled);
    assert_int_equal(ps_config_override(&cfg, " log.level = debug ", err, sizeof(err)), 0);
    assert_int_equal(cfg.log_level, PS_LOG_DEBUG);
}

static void test_override_bad(void **state)
{
    (void)state;
    ps_config cfg, before;
    char err[512];
    ps_config_defaults(&cfg);
    before = cfg;
    static const char *const specs[][2] = {
        {"foo", "-o foo: expected section.key=value"},
        {"pool.workers", "-o pool.workers: expected section.key=value"},
        {"workers=8", "-o workers=8: expected section.key=value"},
        {".workers=8", "-o .workers=8: expected section.key=value"},
        {"pool.=8", "-o pool.=8: expected section.key=value"},
        {"=8", "-o =8: expected section.key=value"},
        {"", "-o : expected section.key=value"},
        {"pool.bar=1", "-o pool.bar=1: unknown key \"bar\" in [pool]"},
        {"foo.bar=1", "-o foo.bar=1: unknown section [foo]"},
        {"pool.workers=abc",
         "-o pool.workers=abc: pool.workers: expected an integer from 1 to 4096, got \"abc\""},
        {"server.port=-1", "-o server.port=-1: server.port: expected an integer from 0 to 65535, got \"-1\""},
        {"server.dispatch=", "-o server.dispatch=: server.dispatch: expected connection, event or thread, got \"\""},
    };
    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        assert_int_equal(ps_config_override(&cfg, specs[i][0], err, sizeof(err)), PS_ECONFIG);
        assert_string_equal(err, specs[i][1]);
    }
    assert_config_equal(&cfg, &before);
}

/* ---- validate ------------------------------------------------------------- */

static void test_validate_port_clash(void **state)
{
    (void)state;
    ps_config cfg;
    char err[512];
    ps_config_defaults(&cfg);
    cfg.admin_port = cfg.port;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "admin.port: admin 127.0.0.1:9050 clashes with the data listener 127.0.0.1:9050 "
                             "(use another admin.port, 0 for any, or admin.enabled = false)");

    /* a wildcard data address covers the admin one */
    strcpy(cfg.bind, "0.0.0.0");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    strcpy(cfg.bind, "::");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    strcpy(cfg.bind, "127.0.0.1");
    strcpy(cfg.admin_bind, "0:0::0");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    strcpy(cfg.bind, "::1"); /* :: covers IPv6 addresses too */
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    strcpy(cfg.bind, "::");
    strcpy(cfg.admin_bind, "::1");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    strcpy(cfg.bind, "LocalHost"); /* names compare as text, any case */
    strcpy(cfg.admin_bind, "localhost");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    /* 0.0.0.0 takes IPv4 only: [::1] on the same port is free */
    strcpy(cfg.bind, "0.0.0.0");
    strcpy(cfg.admin_bind, "::1");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);

    /* no clash: different address, admin off, or both ports picked freely */
    strcpy(cfg.bind, "127.0.0.1");
    strcpy(cfg.admin_bind, "127.0.0.2");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
    strcpy(cfg.admin_bind, "::1");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
    strcpy(cfg.admin_bind, "127.0.0.1");
    cfg.admin_enabled = false;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
    cfg.admin_enabled = true;
    cfg.port = cfg.admin_port = 0;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), 0);
}

/* A struct filled in by code gets the same range checks as a file. */
/* Every integer key at min - 1, min, max and max + 1, from one table, both
 * through ps_config_set and a file: the bounds are checked at both ends,
 * and the value stored is the one given (a key stored in an int or a
 * uint16_t must not wrap). */
static void test_integer_key_bounds(void **state)
{
    (void)state;
    static const struct {
        const char *section, *key;
        unsigned long long min, max;
        size_t offset, size;
    } keys[] = {
#define K(sec, name, field, lo, hi) {sec, name, lo, hi, offsetof(ps_config, field), sizeof(((ps_config *)0)->field)}
        K("server", "port", port, 0, 65535),
        K("server", "backlog", backlog, 0, 65535),
        K("pool", "workers", workers, 1, 4096),
        K("pool", "queue_capacity", queue_capacity, 1, 1048576),
        K("limits", "max_connections", max_connections, 1, 1000000),
        K("limits", "max_connections_wait_ms", max_connections_wait_ms, 0, 60000),
        K("limits", "max_line", max_line, 16, 16777216),
        K("limits", "idle_timeout", idle_timeout, 0, 86400),
        K("limits", "send_timeout", send_timeout, 1, 3600),
        K("limits", "shutdown_timeout", shutdown_timeout, 1, 3600),
        K("limits", "slow_handler_ms", slow_handler_ms, 0, 3600000),
        K("admin", "port", admin_port, 0, 65535),
#undef K
    };
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        unsigned long long tries[4] = {keys[i].min - 1, keys[i].min, keys[i].max, keys[i].max + 1};
        for (int t = keys[i].min == 0 ? 1 : 0; t < 4; t++) {
            bool ok = t == 1 || t == 2;
            char value[32], err[512], text[128];
            snprintf(value, sizeof value, "%llu", tries[t]);
            ps_config cfg;
            ps_config_defaults(&cfg);
            int rc = ps_config_set(&cfg, keys[i].section, keys[i].key, value, err, sizeof err);
            if ((rc == 0) != ok)
                fail_msg("%s.%s = %s: %s", keys[i].section, keys[i].key, value,
                         rc == 0 ? "accepted" : err);
            snprintf(text, sizeof text, "[%s]\n%s = %s\n", keys[i].section, keys[i].key, value);
            ps_config from_file;
            ps_config_defaults(&from_file);
            int frc = ps_config_load_string(&from_file, "t.ini", text, err, sizeof err);
            assert_int_equal(frc == 0, ok);
            if (!ok) {
                char want[160];
                snprintf(want, sizeof want, "t.ini:2: %s.%s: expected an integer from %llu to %llu",
                         keys[i].section, keys[i].key, keys[i].min, keys[i].max);
                assert_non_null(strstr(err, want));
                continue;
            }
            unsigned long long stored = 0;
            const char *field = (const char *)&cfg + keys[i].offset;
            switch (keys[i].size) {
            case 2: stored = *(const uint16_t *)(const void *)field; break;
            case 4: stored = *(const unsigned *)(const void *)field; break;
            case 8: stored = *(const uint64_t *)(const void *)field; break;
            default: fail_msg("%s.%s: unexpected field size", keys[i].section, keys[i].key);
            }
            assert_int_equal(stored, tries[t]);
            assert_int_equal(memcmp(field, (const char *)&from_file + keys[i].offset, keys[i].size), 0);
            assert_int_equal(ps_config_validate(&cfg, err, sizeof err) == 0 ||
                                 strstr(err, "clashes") != NULL, 1);
        }
    }
}

static void test_validate_ranges(void **state)
{
    (void)state;
    ps_config cfg;
    char err[512];

    ps_config_defaults(&cfg);
    cfg.workers = 0;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "pool.workers: expected an integer from 1 to 4096, got \"0\"");

    ps_config_defaults(&cfg);
    cfg.backlog = -1;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.backlog: expected an integer from 0 to 65535, got \"-1\"");

    ps_config_defaults(&cfg);
    cfg.max_line = (size_t)1 << 40;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "limits.max_line: expected an integer from 16 to 16777216, got \"1099511627776\"");

    ps_config_defaults(&cfg);
    cfg.dispatch = (ps_dispatch_mode)9;
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.dispatch: invalid value in the configuration structure");

    ps_config_defaults(&cfg);
    memset(cfg.admin_bind, 'a', sizeof(cfg.admin_bind)); /* no terminator */
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "admin.bind: invalid value in the configuration structure");

    ps_config_defaults(&cfg);
    strcpy(cfg.greeting, "two\nlines");
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.greeting: must be one line (no CR, LF or NUL), got \"two\\x0alines\"");

    ps_config_defaults(&cfg);
    cfg.bind[0] = '\0';
    assert_int_equal(ps_config_validate(&cfg, err, sizeof(err)), PS_ECONFIG);
    assert_string_equal(err, "server.bind: expected an IPv4 or IPv6 address or a host name, got nothing");
}

/* ---- concurrency ---------------------------------------------------------- */

#define LOADERS 8
#define LOADS 200

typedef struct loader {
    int id;
    int failures; /* checked by the test thread: cmocka asserts only there */
} loader;

static void *loader_main(void *arg)
{
    loader *l = arg;
    char text[128], bad[128], err[256], expect[256];
    snprintf(text, sizeof(text), "[pool]\nworkers = %d\n[server]\nport = %d\n", l->id + 1, 9100 + l->id);
    snprintf(bad, sizeof(bad), "[pool]\n\nworkers = %d\n", 5000 + l->id);
    snprintf(expect, sizeof(expect), "b%d:3: pool.workers: expected an integer from 1 to 4096, got \"%d\"",
             l->id, 5000 + l->id);
    char name[16];
    snprintf(name, sizeof(name), "b%d", l->id);
    for (int i = 0; i < LOADS; i++) {
        ps_config cfg;
        ps_config_defaults(&cfg);
        if (ps_config_load_string(&cfg, "g", text, err, sizeof(err)) != 0 ||
            cfg.workers != (unsigned)l->id + 1 || cfg.port != 9100 + l->id)
            l->failures++;
        if (ps_config_load_string(&cfg, name, bad, err, sizeof(err)) != PS_ECONFIG ||
            strcmp(err, expect) != 0)
            l->failures++;
    }
    return NULL;
}

static void test_concurrent_loads(void **state)
{
    (void)state;
    pthread_t tids[LOADERS];
    loader loaders[LOADERS];
    for (int i = 0; i < LOADERS; i++) {
        loaders[i] = (loader){.id = i, .failures = 0};
        assert_int_equal(pthread_create(&tids[i], NULL, loader_main, &loaders[i]), 0);
    }
    for (int i = 0; i < LOADERS; i++) {
        assert_int_equal(pthread_join(tids[i], NULL), 0);
        assert_int_equal(loaders[i].failures, 0);
    }
}

int main(int argc, char **argv)
{
    if (argc > 1) {
        server_ini_path = argv[1];
    } else {
        /* tests/test_config.c -> conf/server.ini */
        snprintf(server_ini_buf, sizeof(server_ini_buf), "%s", __FILE__);
        char *slash = strrchr(server_ini_buf, '/');
        if (slash)
            *slash = '\0';
        else
            strcpy(server_ini_buf, ".");
        size_t n = strlen(server_ini_buf);
        snprintf(server_ini_buf + n, sizeof(server_ini_buf) - n, "/../conf/server.ini");
        server_ini_path = server_ini_buf;
    }

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_file_every_key),
        cmocka_unit_test(test_string_every_key),
        cmocka_unit_test(test_server_ini_is_defaults),
        cmocka_unit_test(test_partial_file_keeps_rest),
        cmocka_unit_test(test_empty_and_comment_only),
        cmocka_unit_test(test_syntax_variants),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_hosts),
        cmocka_unit_test(test_greeting),
        cmocka_unit_test(test_err_unknown_section),
        cmocka_unit_test(test_err_unknown_key),
        cmocka_unit_test(test_err_bad_number),
        cmocka_unit_test(test_err_negative),
        cmocka_unit_test(test_err_range),
        cmocka_unit_test(test_err_overflow),
        cmocka_unit_test(test_err_bad_enum_and_bool),
        cmocka_unit_test(test_err_duplicate),
        cmocka_unit_test(test_err_key_before_section),
        cmocka_unit_test(test_err_syntax),
        cmocka_unit_test(test_err_long_line),
        cmocka_unit_test(test_err_binary_garbage),
        cmocka_unit_test(test_err_missing_file),
        cmocka_unit_test(test_err_file_line_numbers),
        cmocka_unit_test(test_err_no_partial_update),
        cmocka_unit_test(test_err_quotes_garbage_safely),
        cmocka_unit_test(test_set),
        cmocka_unit_test(test_override_good),
        cmocka_unit_test(test_override_bad),
        cmocka_unit_test(test_validate_port_clash),
        cmocka_unit_test(test_validate_ranges),
        cmocka_unit_test(test_integer_key_bounds),
        cmocka_unit_test(test_concurrent_loads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
