#ifndef POOLSRV_CONFIG_H
#define POOLSRV_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The server's configuration: the INI schema of conf/server.ini, loaded with
 * inih. Every key is range-checked; a bad one is reported as "file:line:
 * reason" in the caller's buffer.
 */

typedef enum ps_dispatch_mode {
    PS_DISPATCH_CONNECTION = 0, /* a worker owns a connection until it closes */
    PS_DISPATCH_EVENT = 1,      /* epoll parks idle connections; a job is "has input" */
    PS_DISPATCH_THREAD = 2,     /* a thread per connection */
} ps_dispatch_mode;

typedef enum ps_log_level {
    PS_LOG_ERROR = 0,
    PS_LOG_WARN = 1,
    PS_LOG_INFO = 2,
    PS_LOG_DEBUG = 3,
} ps_log_level;

/* [server] proxy_protocol: whether connections from proxy_trusted must
 * start with a PROXY protocol header, and which versions (a bit each). */
typedef enum ps_proxy_mode {
    PS_PROXY_OFF = 0,
    PS_PROXY_V1 = 1,
    PS_PROXY_V2 = 2,
    PS_PROXY_ANY = 3,
} ps_proxy_mode;

/* The handlers poolsrv itself runs ([handler] name). */
typedef enum ps_handler_kind {
    PS_HANDLER_ECHO = 0,  /* the echo protocol */
    PS_HANDLER_SLEEP = 1, /* echo, and "sleep N" blocks its worker N ms first:
                             a stand-in for slow work, for tests and benchmarks */
} ps_handler_kind;

/* [tls] verify_client: whether a client must show a certificate from ca. */
typedef enum ps_tls_verify {
    PS_TLS_VERIFY_OFF = 0,      /* no certificate asked for */
    PS_TLS_VERIFY_OPTIONAL = 1, /* asked for; one that does not verify is refused */
    PS_TLS_VERIFY_REQUIRE = 2,  /* a client without a verified one is refused */
} ps_tls_verify;

/* [tls] min_version. */
typedef enum ps_tls_version {
    PS_TLS_1_2 = 0,
    PS_TLS_1_3 = 1,
} ps_tls_version;

#define PS_CONFIG_HOST_MAX 256
#define PS_CONFIG_GREETING_MAX 1024
#define PS_CONFIG_MODULE_MAX 1024      /* [handler] module: a path */
#define PS_CONFIG_HANDLER_KEYS 16      /* other [handler] keys, for the handler */
#define PS_CONFIG_KEY_MAX 64
#define PS_CONFIG_VALUE_MAX 1024
#define PS_CONFIG_ORIGIN_MAX 256
#define PS_CONFIG_CIDRS_MAX 1024       /* [server] proxy_trusted: a list of ranges */

/* A [handler] key other than name and module: kept as text for the
 * handler's init to judge (ps_module.init). */
typedef struct ps_config_handler_key {
    char key[PS_CONFIG_KEY_MAX];     /* letters, digits, '_' and '-' */
    char value[PS_CONFIG_VALUE_MAX]; /* trimmed; one line */
    /* Where it was set, to prefix a message about it: "FILE:LINE",
     * "-o handler.KEY=VALUE" or "handler.KEY" (ps_config_set). */
    char origin[PS_CONFIG_ORIGIN_MAX];
} ps_config_handler_key;

typedef struct ps_config {
    /* [server] */
    char bind[PS_CONFIG_HOST_MAX];
    uint16_t port;                /* 0 = pick a free port */
    int backlog;                  /* 1..65535; 0 = the system's somaxconn */
    char greeting[PS_CONFIG_GREETING_MAX]; /* "" = no greeting */
    ps_dispatch_mode dispatch;
    bool reuseport;               /* SO_REUSEPORT: several processes on one port */
    ps_proxy_mode proxy_protocol; /* off | v1 | v2 | any */
    char proxy_trusted[PS_CONFIG_CIDRS_MAX]; /* CIDR ranges allowed to send a header */
    unsigned proxy_timeout;       /* seconds for the whole header, 1..60 */
    unsigned proxy_max_pending;   /* connections waiting for a header at once, 1..1000000 */
    /* [pool] */
    unsigned workers;             /* 1..4096 */
    size_t queue_capacity;        /* 1..1048576 */
    /* [limits] */
    unsigned max_connections;     /* 1..1000000 */
    unsigned max_connections_wait_ms; /* a client over the limit waits this long for a slot */
    size_t max_line;              /* 16..16777216 bytes, line ending excluded */
    size_t max_block;             /* ps_conn_read_bytes: 1..1073741824 bytes */
    size_t max_output;            /* copied bytes queued for one client: 65536..1073741824 */
    unsigned idle_timeout;        /* seconds, 0 = never; <= 86400 */
    unsigned send_timeout;        /* seconds, 1..3600 */
    unsigned shutdown_timeout;    /* seconds to finish on SIGTERM, 1..3600 */
    unsigned drain_delay;         /* seconds NOT READY, still serving, before a stop; 0..3600 */
    unsigned slow_handler_ms;     /* handler calls this long are logged; 0 = off */
    /* [admin] */
    bool admin_enabled;
    char admin_bind[PS_CONFIG_HOST_MAX];
    uint16_t admin_port;          /* 0 = pick a free port */
    /* [log] */
    ps_log_level log_level;
    /* [handler] */
    ps_handler_kind handler;      /* the built-in handler, unless module is set */
    char handler_module[PS_CONFIG_MODULE_MAX]; /* "" = none; else a module's path */
    size_t handler_nkeys;
    ps_config_handler_key handler_keys[PS_CONFIG_HANDLER_KEYS];
    /* [tls] (last: the fields before keep their places for modules built
     * before them). With enabled, the data listener speaks TLS only. */
    bool tls_enabled;
    char tls_cert[PS_CONFIG_MODULE_MAX];    /* PEM: the certificate, then its chain */
    char tls_key[PS_CONFIG_MODULE_MAX];     /* PEM: its private key */
    char tls_ca[PS_CONFIG_MODULE_MAX];      /* PEM: CAs of client certificates; "" = none */
    ps_tls_verify tls_verify_client;        /* off | optional | require (needs ca) */
    ps_tls_version tls_min_version;         /* 1.2 | 1.3 */
    char tls_ciphers[PS_CONFIG_MODULE_MAX];      /* TLS 1.2 cipher list; "" = OpenSSL's */
    char tls_ciphersuites[PS_CONFIG_MODULE_MAX]; /* TLS 1.3 suites; "" = OpenSSL's */
    unsigned tls_handshake_timeout;         /* seconds for the handshake, 1..300 */
    bool tls_session_tickets;               /* resumption by tickets (stateless) */
} ps_config;

/* Fills *cfg with the documented defaults (those of conf/server.ini). */
void ps_config_defaults(ps_config *cfg);

/* Reads an INI file over *cfg (keys not in the file keep their value).
 * Returns 0, or PS_ECONFIG with "path:line: reason" in err (a missing or
 * unreadable file: "path: reason"). A key given twice is an error. On error
 * *cfg may be partly updated: callers discard it. */
int ps_config_load_file(ps_config *cfg, const char *path, char *err, size_t errlen);

/* Same as ps_config_load_file over an in-memory INI text; `name` stands for
 * the file name in messages. */
int ps_config_load_string(ps_config *cfg, const char *name, const char *text,
                          char *err, size_t errlen);

/* Sets one key through the same validation as the file. Returns 0 or
 * PS_ECONFIG with the reason (no file:line prefix) in err. */
int ps_config_set(ps_config *cfg, const char *section, const char *key,
                  const char *value, char *err, size_t errlen);

/* Applies "section.key=value" (the -o option). Returns 0 or PS_ECONFIG with
 * "-o section.key=value: reason" in err. */
int ps_config_override(ps_config *cfg, const char *spec, char *err, size_t errlen);

/* Checks rules between keys (e.g. admin and data port clash). Returns 0 or
 * PS_ECONFIG with the reason in err. */
int ps_config_validate(const ps_config *cfg, char *err, size_t errlen);

/* Names for enums, as written in the INI file. */
const char *ps_dispatch_name(ps_dispatch_mode mode);
const char *ps_proxy_mode_name(ps_proxy_mode mode);
const char *ps_log_level_name(ps_log_level level);
const char *ps_handler_name(ps_handler_kind kind);

#ifdef __cplusplus
}
#endif

#endif
