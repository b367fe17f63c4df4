/*
 * config.c - the INI schema of conf/server.ini, loaded with inih.
 *
 * Every key lives in one table (key_specs) with its type and range; the file
 * loader, -o overrides and ps_config_validate all go through set_key, so
 * a value is judged the same way wherever it comes from.
 *
 * Why inih is fed through our own line reader (ini_parse_stream) instead of
 * ini_parse_file / ini_parse_string — Debian's libinih 55 is built with:
 *  - INI_HANDLER_LINENO 0: the handler is never told its line, and the
 *    parser's return value is only the line of the *first* error (it keeps
 *    parsing after a syntax error). Our reader counts lines, so the handler
 *    knows the line it is called for, and a syntax error inih found on an
 *    earlier line still wins (see finish).
 *  - INI_ALLOW_MULTILINE 1: an indented line after a key is glued to that
 *    key as a continuation ("  queue_capacity = 8" under "workers = 4" calls
 *    the handler with workers="queue_capacity = 8"). The reader strips leading
 *    whitespace, so indented keys simply work.
 *  - INI_MAX_LINE 200 on the stack: a longer line is silently cut into
 *    several "lines", truncating the value and shifting every later line
 *    number. The reader rejects such a line with its real line number.
 *  - no handler call for a [section] line (INI_CALL_HANDLER_ON_NEW_SECTION
 *    0), and text after the ']' ignored: the reader checks section lines.
 *  - inline comments only for ';' after whitespace: " #" comments are
 *    stripped from values here.
 * inih's runtime knobs (ini_max_line, ...) are process-wide globals; we never
 * write them. This file has no mutable global state, so loads may run
 * concurrently.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "poolsrv/config.h"
#include "poolsrv/error.h"
#include "proxy.h"
#include "text.h"
#include "config_diff.h"

#define PS__REASON_MAX 512
#define PS__FILE_MAX (1024 * 1024) /* bytes of a configuration file */

typedef enum key_kind {
    PS__K_UINT,
    PS__K_HOST,
    PS__K_GREETING,
    PS__K_DISPATCH,
    PS__K_BOOL,
    PS__K_LOG_LEVEL,
    PS__K_HANDLER,
    PS__K_PATH,
    PS__K_PROXY,
    PS__K_CIDRS,
    PS__K_TLS_VERIFY,
    PS__K_TLS_VERSION,
} key_kind;

/* C type of a PS__K_UINT field. */
typedef enum field_width { PS__W_NONE, PS__W_U16, PS__W_INT, PS__W_UNSIGNED, PS__W_SIZE } field_width;

typedef struct key_spec {
    const char *section;
    const char *name;
    key_kind kind;
    field_width width;
    unsigned long long min, max;
    size_t offset;
    size_t size;
} key_spec;

#define PS__FIELD(f) offsetof(ps_config, f), sizeof(((ps_config *)0)->f)
#define PS__UINT(sec, name, f, w, lo, hi) {sec, name, PS__K_UINT, w, lo, hi, PS__FIELD(f)}
#define PS__OTHER(sec, name, f, kind) {sec, name, kind, PS__W_NONE, 0, 0, PS__FIELD(f)}

static const key_spec key_specs[] = {
    PS__OTHER("server", "bind", bind, PS__K_HOST),
    PS__UINT("server", "port", port, PS__W_U16, 0, 65535),
    PS__UINT("server", "backlog", backlog, PS__W_INT, 0, 65535),
    PS__OTHER("server", "greeting", greeting, PS__K_GREETING),
    PS__OTHER("server", "dispatch", dispatch, PS__K_DISPATCH),
    PS__OTHER("server", "reuseport", reuseport, PS__K_BOOL),
    PS__OTHER("server", "proxy_protocol", proxy_protocol, PS__K_PROXY),
    PS__OTHER("server", "proxy_trusted", proxy_trusted, PS__K_CIDRS),
    PS__UINT("server", "proxy_timeout", proxy_timeout, PS__W_UNSIGNED, 1, 60),
    PS__UINT("server", "proxy_max_pending", proxy_max_pending, PS__W_UNSIGNED, 1, 1000000),
    PS__UINT("pool", "workers", workers, PS__W_UNSIGNED, 1, 4096),
    PS__UINT("pool", "queue_capacity", queue_capacity, PS__W_SIZE, 1, 1048576),
    PS__UINT("limits", "max_connections", max_connections, PS__W_UNSIGNED, 1, 1000000),
    PS__UINT("limits", "max_connections_wait_ms", max_connections_wait_ms, PS__W_UNSIGNED, 0, 60000),
    PS__UINT("limits", "max_line", max_line, PS__W_SIZE, 16, 16777216),
    PS__UINT("limits", "max_block", max_block, PS__W_SIZE, 1, 1073741824),
    PS__UINT("limits", "max_output", max_output, PS__W_SIZE, 65536, 1073741824),
    PS__UINT("limits", "idle_timeout", idle_timeout, PS__W_UNSIGNED, 0, 86400),
    PS__UINT("limits", "send_timeout", send_timeout, PS__W_UNSIGNED, 1, 3600),
    PS__UINT("limits", "shutdown_timeout", shutdown_timeout, PS__W_UNSIGNED, 1, 3600),
    PS__UINT("limits", "drain_delay", drain_delay, PS__W_UNSIGNED, 0, 3600),
    PS__UINT("limits", "slow_handler_ms", slow_handler_ms, PS__W_UNSIGNED, 0, 3600000),
    PS__OTHER("admin", "enabled", admin_enabled, PS__K_BOOL),
    PS__OTHER("admin", "bind", admin_bind, PS__K_HOST),
    PS__UINT("admin", "port", admin_port, PS__W_U16, 0, 65535),
    PS__OTHER("log", "level", log_level, PS__K_LOG_LEVEL),
    PS__OTHER("handler", "name", handler, PS__K_HANDLER),
    PS__OTHER("handler", "module", handler_module, PS__K_PATH),
    PS__OTHER("tls", "enabled", tls_enabled, PS__K_BOOL),
    PS__OTHER("tls", "cert", tls_cert, PS__K_PATH),
    PS__OTHER("tls", "key", tls_key, PS__K_PATH),
    PS__OTHER("tls", "ca", tls_ca, PS__K_PATH),
    PS__OTHER("tls", "verify_client", tls_verify_client, PS__K_TLS_VERIFY),
    PS__OTHER("tls", "min_version", tls_min_version, PS__K_TLS_VERSION),
    PS__OTHER("tls", "ciphers", tls_ciphers, PS__K_PATH),
    PS__OTHER("tls", "ciphersuites", tls_ciphersuites, PS__K_PATH),
    PS__UINT("tls", "handshake_timeout", tls_handshake_timeout, PS__W_UNSIGNED, 1, 300),
    PS__OTHER("tls", "session_tickets", tls_session_tickets, PS__K_BOOL),
};
#define PS__NKEYS (sizeof(key_specs) / sizeof(key_specs[0]))

static const char *const sections[] = {"server", "pool", "limits", "admin", "log", "handler",
                                       "tls"};
#define PS__NSECTIONS (sizeof(sections) / sizeof(sections[0]))

static const char *const dispatch_names[] = {"connection", "event", "thread"};
static const char *const log_level_names[] = {"error", "warn", "info", "debug"};
static const char *const handler_names[] = {"echo", "sleep"};
static const char *const proxy_names[] = {"off", "v1", "v2", "any"};
static const char *const tls_verify_names[] = {"off", "optional", "require"};
static const char *const tls_version_names[] = {"1.2", "1.3"};

/* ---- small helpers ------------------------------------------------------ */



static void clear_err(char *err, size_t errlen)
{
    if (err && errlen > 0)
        err[0] = '\0';
}


static bool equals(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && memcmp(a, b, alen) == 0;
}

static bool equals_nocase(const char *a, size_t alen, const char *b)
{
    return strlen(b) == alen && strncasecmp(a, b, alen) == 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Trims whitespace on both ends of s[0..*len), returning the new start. */
static const char *trim(const char *s, size_t *len)
{
    while (*len > 0 && is_space(s[0])) {
        s++;
        (*len)--;
    }
    while (*len > 0 && is_space(s[*len - 1]))
        (*len)--;
    return s;
}

/* ---- value checks --------------------------------------------------------- */

/* Strict unsigned decimal: digits only (no sign, space, base prefix or
 * trailing text), not empty, no overflow. */
static bool parse_uint(const char *s, size_t len, unsigned long long *out)
{
    char buf[32];
    if (len == 0 || len >= sizeof(buf))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!is_digit(s[i]))
            return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno == ERANGE || *end != '\0')
        return false;
    *out = v;
    return true;
}

/* A DNS name: dot-separated labels of 1..63 letters, digits, '-' or '_'
 * (no '-' at either end), 253 characters at most, an optional final dot, and
 * a last label that is not all digits (so "256.1.1.1" or a stray "9050" is
 * not taken for a name). */
static bool is_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0 || n > 253)
        return false;
    size_t start = 0;
    bool all_digits = true;
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            size_t label = i - start;
            if (label == 0 || label > 63 || s[start] == '-' || s[i - 1] == '-')
                return false;
            if (i == n && all_digits)
                return false;
            start = i + 1;
            all_digits = true;
            continue;
        }
        if (!is_alnum(s[i]) && s[i] != '-' && s[i] != '_')
            return false;
        if (!is_digit(s[i]))
            all_digits = false;
    }
    return true;
}

/* An IPv4 literal, an IPv6 literal (optionally with a %scope, as
 * getaddrinfo takes), or a host name. Names are not resolved here. */
static bool is_host(const char *s)
{
    unsigned char addr[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, s, addr) == 1 || inet_pton(AF_INET6, s, addr) == 1)
        return true;
    const char *pct = strchr(s, '%');
    if (pct && pct[1] != '\0') {
        char ip[PS_CONFIG_HOST_MAX];
        size_t n = (size_t)(pct - s);
        if (n >= sizeof(ip))
            return false;
        memcpy(ip, s, n);
        ip[n] = '\0';
        for (const char *p = pct + 1; *p; p++)
            if (!is_alnum(*p) && *p != '-' && *p != '_' && *p != '.')
                return false;
        return inet_pton(AF_INET6, ip, addr) == 1;
    }
    return is_hostname(s);
}

static int enum_index(const char *const *names, size_t count, const char *v, size_t len)
{
    for (size_t i = 0; i < count; i++)
        if (equals_nocase(v, len, names[i]))
            return (int)i;
    return -1;
}

static int parse_bool(const char *v, size_t len)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    if (enum_index(yes, 4, v, len) >= 0)
        return 1;
    if (enum_index(no, 4, v, len) >= 0)
        return 0;
    return -1;
}

/* Judges value v[0..len) for key k and stores it in cfg only when valid.
 * Returns 0, or PS_ECONFIG with "section.key: reason" in reason. */
/* The enumerations a key can take: their names (the index is the value)
 * and how an error says what was expected. */
typedef struct enum_kind {
    const char *const *names;
    int count;
    const char *expected;
} enum_kind;

static const enum_kind *enum_of(key_kind kind)
{
    static const enum_kind dispatch = {dispatch_names, 3, "connection, event or thread"};
    static const enum_kind proxy = {proxy_names, 4, "off, v1, v2 or any"};
    static const enum_kind handler = {handler_names, 2, "echo or sleep"};
    static const enum_kind level = {log_level_names, 4, "error, warn, info or debug"};
    static const enum_kind verify = {tls_verify_names, 3, "off, optional or require"};
    static const enum_kind version = {tls_version_names, 2, "1.2 or 1.3"};
    switch (kind) {
    case PS__K_TLS_VERIFY: return &verify;
    case PS__K_TLS_VERSION: return &version;
    case PS__K_DISPATCH: return &dispatch;
    case PS__K_PROXY: return &proxy;
    case PS__K_HANDLER: return &handler;
    case PS__K_LOG_LEVEL: return &level;
    case PS__K_UINT:
    case PS__K_HOST:
    case PS__K_GREETING:
    case PS__K_PATH:
    case PS__K_CIDRS:
    case PS__K_BOOL:
        return NULL;
    }
    return NULL;
}

/* A key's value checked and stored: each kind of key. field is the key's
 * place in the config; shown, the value as an error quotes it. */
static int set_uint(const key_spec *k, char *field, const char *v, size_t len,
                        const char *shown, char *reason, size_t reasonlen)
{
    unsigned long long n;
    if (!parse_uint(v, len, &n) || n < k->min || n > k->max) {
        ps__set_err(reason, reasonlen, "%s.%s: expected an integer from %llu to %llu, got \"%s\"",
                    k->section, k->name, k->min, k->max, shown);
        return PS_ECONFIG;
    }
    switch (k->width) {
    case PS__W_U16: *(uint16_t *)(void *)field = (uint16_t)n; break;
    case PS__W_INT: *(int *)(void *)field = (int)n; break;
    case PS__W_UNSIGNED: *(unsigned *)(void *)field = (unsigned)n; break;
    case PS__W_SIZE: *(size_t *)(void *)field = (size_t)n; break;
    case PS__W_NONE: abort(); /* table bug */
    }
    return 0;
}

static int set_host(const key_spec *k, char *field, const char *v, size_t len,
                        const char *shown, char *reason, size_t reasonlen)
{
    char host[PS_CONFIG_HOST_MAX];
    if (len == 0) {
        ps__set_err(reason, reasonlen, "%s.%s: expected an IPv4 or IPv6 address or a host name, got nothing",
                    k->section, k->name);
        return PS_ECONFIG;
    }
    if (len >= sizeof(host)) {
        ps__set_err(reason, reasonlen, "%s.%s: too long (%zu characters, at most %zu)",
                    k->section, k->name, len, sizeof(host) - 1);
        return PS_ECONFIG;
    }
    memcpy(host, v, len);
    host[len] = '\0';
    if (memchr(v, '\0', len) || !is_host(host)) {
        ps__set_err(reason, reasonlen, "%s.%s: expected an IPv4 or IPv6 address or a host name, got \"%s\"",
                    k->section, k->name, shown);
        return PS_ECONFIG;
    }
    memcpy(field, host, len + 1);
    return 0;
}

/* A greeting or a path: one line of at most the field's size. */
static int set_text(const key_spec *k, char *field, const char *v, size_t len,
                        const char *shown, char *reason, size_t reasonlen)
{
    if (len >= k->size) {
        ps__set_err(reason, reasonlen, "%s.%s: too long (%zu bytes, at most %zu)",
                    k->section, k->name, len, k->size - 1);
        return PS_ECONFIG;
    }
    /* The greeting is sent as one line: a CR or LF would split it; a
     * path with one is no path anyone meant. */
    if (memchr(v, '\r', len) || memchr(v, '\n', len) || memchr(v, '\0', len)) {
        ps__set_err(reason, reasonlen, "%s.%s: must be one line (no CR, LF or NUL), got \"%s\"",
                    k->section, k->name, shown);
        return PS_ECONFIG;
    }
    memcpy(field, v, len);
    field[len] = '\0';
    return 0;
}

static int set_cidrs(const key_spec *k, char *field, const char *v, size_t len,
                         char *reason, size_t reasonlen)
{
    if (len >= k->size || memchr(v, '\0', len)) {
        ps__set_err(reason, reasonlen, "%s.%s: too long (%zu bytes, at most %zu)",
                    k->section, k->name, len, k->size - 1);
        return PS_ECONFIG;
    }
    char text[PS_CONFIG_CIDRS_MAX], why[256];
    memcpy(text, v, len);
    text[len] = '\0';
    ps__cidr_list list;
    if (ps__cidr_parse(text, &list, why, sizeof why) != 0) {
        ps__set_err(reason, reasonlen, "%s.%s: %s", k->section, k->name, why);
        return PS_ECONFIG;
    }
    memcpy(field, text, len + 1);
    return 0;
}

static int set_enum(const key_spec *k, const enum_kind *e, char *field, const char *v,
                        size_t len, const char *shown, char *reason, size_t reasonlen)
{
    int i = enum_index(e->names, (size_t)e->count, v, len);
    if (i < 0) {
        ps__set_err(reason, reasonlen, "%s.%s: expected %s, got \"%s\"", k->section, k->name,
                    e->expected, shown);
        return PS_ECONFIG;
    }
    /* Every enumeration of the schema is a C enum: stored as one. */
    *(ps_dispatch_mode *)(void *)field = (ps_dispatch_mode)i;
    return 0;
}

_Static_assert(sizeof(ps_tls_verify) == sizeof(ps_dispatch_mode) &&
                   sizeof(ps_tls_version) == sizeof(ps_dispatch_mode) &&
                   sizeof(ps_proxy_mode) == sizeof(ps_dispatch_mode) &&
                   sizeof(ps_handler_kind) == sizeof(ps_dispatch_mode) &&
                   sizeof(ps_log_level) == sizeof(ps_dispatch_mode),
               "set_enum stores every enumeration as a ps_dispatch_mode");

static int set_key(ps_config *cfg, const key_spec *k, const char *v, size_t len,
                       char *reason, size_t reasonlen)
{
    char shown[PS__SHOW_BUF];
    char *field = (char *)cfg + k->offset;
    ps__show(shown, v, len);
    const enum_kind *e = enum_of(k->kind);
    if (e != NULL)
        return set_enum(k, e, field, v, len, shown, reason, reasonlen);
    switch (k->kind) {
    case PS__K_UINT:
        return set_uint(k, field, v, len, shown, reason, reasonlen);
    case PS__K_HOST:
        return set_host(k, field, v, len, shown, reason, reasonlen);
    case PS__K_GREETING:
    case PS__K_PATH:
        return set_text(k, field, v, len, shown, reason, reasonlen);
    case PS__K_CIDRS:
        return set_cidrs(k, field, v, len, reason, reasonlen);
    case PS__K_BOOL: {
        int b = parse_bool(v, len);
        if (b < 0) {
            ps__set_err(reason, reasonlen, "%s.%s: expected true or false (or yes/no, on/off, 1/0), got \"%s\"",
                        k->section, k->name, shown);
            return PS_ECONFIG;
        }
        *(bool *)(void *)field = b != 0;
        return 0;
    }
    case PS__K_DISPATCH:
    case PS__K_PROXY:
    case PS__K_HANDLER:
    case PS__K_LOG_LEVEL:
    case PS__K_TLS_VERIFY:
    case PS__K_TLS_VERSION:
        break; /* enumerations: above */
    }
    abort(); /* table bug */
}

static bool section_known(const char *s, size_t len)
{
    for (size_t i = 0; i < PS__NSECTIONS; i++)
        if (equals(s, len, sections[i]))
            return true;
    return false;
}

/* find_key's answer for a [handler] key outside the schema: the
 * handler's own (set_handler_key). */
#define PS__HANDLER_OWN (-2)

/* Finds section.name; returns its index, PS__HANDLER_OWN, or -1 with the
 * reason. */
static int find_key(const char *sec, size_t seclen, const char *name, size_t namelen,
                        char *reason, size_t reasonlen)
{
    char shown_sec[PS__SHOW_BUF], shown_name[PS__SHOW_BUF];
    ps__show(shown_sec, sec, seclen);
    ps__show(shown_name, name, namelen);
    if (!section_known(sec, seclen)) {
        ps__set_err(reason, reasonlen, "unknown section [%s]", shown_sec);
        return -1;
    }
    for (size_t i = 0; i < PS__NKEYS; i++)
        if (equals(sec, seclen, key_specs[i].section) && equals(name, namelen, key_specs[i].name))
            return (int)i;
    if (equals(sec, seclen, "handler"))
        return PS__HANDLER_OWN;
    ps__set_err(reason, reasonlen, "unknown key \"%s\" in [%s]", shown_name, shown_sec);
    return -1;
}

static bool is_key_char(char c)
{
    return is_alnum(c) || c == '_' || c == '-';
}

/* Stores [handler] name = v[0..len) for the handler to judge, replacing an
 * earlier value of the same key; origin says where it was set. Returns its
 * index, or -1 with "handler.KEY: reason". */
static int set_handler_key(ps_config *cfg, const char *name, size_t namelen, const char *v,
                               size_t len, const char *origin, char *reason, size_t reasonlen)
{
    char shown[PS__SHOW_BUF];
    ps__show(shown, name, namelen);
    bool ok = namelen > 0 && namelen < PS_CONFIG_KEY_MAX;
    for (size_t i = 0; ok && i < namelen; i++)
        ok = is_key_char(name[i]);
    if (!ok) {
        ps__set_err(reason, reasonlen,
                    "handler.%s: a key is 1 to %d letters, digits, '_' or '-'", shown,
                    PS_CONFIG_KEY_MAX - 1);
        return -1;
    }
    if (len >= PS_CONFIG_VALUE_MAX) {
        ps__set_err(reason, reasonlen, "handler.%s: too long (%zu bytes, at most %d)", shown, len,
                    PS_CONFIG_VALUE_MAX - 1);
        return -1;
    }
    if (memchr(v, '\r', len) || memchr(v, '\n', len) || memchr(v, '\0', len)) {
        ps__set_err(reason, reasonlen, "handler.%s: must be one line (no CR, LF or NUL)", shown);
        return -1;
    }
    size_t i = 0;
    while (i < cfg->handler_nkeys && !equals(name, namelen, cfg->handler_keys[i].key))
        i++;
    if (i == cfg->handler_nkeys) {
        if (i == PS_CONFIG_HANDLER_KEYS) {
            ps__set_err(reason, reasonlen, "handler.%s: more than %d handler keys", shown,
                        PS_CONFIG_HANDLER_KEYS);
            return -1;
        }
        cfg->handler_nkeys++;
    }
    ps_config_handler_key *k = &cfg->handler_keys[i];
    memcpy(k->key, name, namelen);
    k->key[namelen] = '\0';
    memcpy(k->value, v, len);
    k->value[len] = '\0';
    snprintf(k->origin, sizeof k->origin, "%s", origin);
    return (int)i;
}

/* ---- loading -------------------------------------------------------------- */

typedef struct load {
    ps_config *cfg;
    FILE *fp;           /* the source: a file, or */
    const char *text;   /* a string (advanced as it is read) */
    int line;           /* physical line last handed to inih, from 1 */
    int err_line;       /* line of the first error we found; 0 = none */
    int io_errno;       /* a read error: reported as "path: reason" */
    char reason[PS__REASON_MAX];
    int first_line[PS__NKEYS]; /* where each key was set, 0 = not yet */
    int handler_first_line[PS_CONFIG_HANDLER_KEYS]; /* the same for the handler's keys */
    const char *name;   /* of the source, for origins */
} load;

static void fail(load *ld, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fail(load *ld, const char *fmt, ...)
{
    if (ld->err_line)
        return; /* the first error is the one reported */
    ld->err_line = ld->line;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->reason, sizeof(ld->reason), fmt, ap);
    va_end(ap);
}

static int next_char(load *ld)
{
    if (ld->fp) {
        int c = getc(ld->fp);
        if (c == EOF && ferror(ld->fp))
            ld->io_errno = errno ? errno : EIO;
        return c;
    }
    if (*ld->text == '\0')
        return EOF;
    return (unsigned char)*ld->text++;
}

/* Checks a "[section]" line (already left-trimmed). */
static void check_section_line(load *ld, const char *line)
{
    char shown[PS__SHOW_BUF];
    const char *close = strchr(line + 1, ']');
    if (!close) {
        fail(ld, "syntax error (expected \"[section]\", no closing ']')");
        return;
    }
    size_t namelen = (size_t)(close - line - 1);
    ps__show(shown, line + 1, namelen);
    const char *rest = close + 1;
    while (is_space(*rest))
        rest++;
    if (*rest != '\0' && *rest != ';' && *rest != '#') {
        fail(ld, "syntax error (text after [%s])", shown);
        return;
    }
    if (!section_known(line + 1, namelen))
        fail(ld, "unknown section [%s]", shown);
}

/* inih's fgets-like reader: hands inih one physical line at a time, without
 * its newline and leading whitespace, so inih's line count is ours. */
static char *read_line(char *buf, int num, void *stream)
{
    load *ld = stream;
    if (ld->err_line || ld->io_errno || num < 2)
        return NULL; /* stop at the first error we know of */

    int c = next_char(ld);
    if (c == EOF)
        return NULL;
    ld->line++;

    size_t cap = (size_t)num - 1, len = 0, total = 0;
    bool nul = false;
    for (; c != EOF && c != '\n'; c = next_char(ld), total++) {
        if (c == '\0')
            nul = true;
        if (len < cap)
            buf[len++] = (char)c;
    }
    buf[len] = '\0';
    if (ld->io_errno)
        return NULL;

    if (ld->line == 1 && len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
        memmove(buf, buf + 3, len - 3 + 1); /* UTF-8 byte order mark */
        len -= 3;
        total -= 3;
    }
    size_t skip = 0;
    while (skip < len && is_space(buf[skip]))
        skip++;
    memmove(buf, buf + skip, len - skip + 1);

    if (nul)
        fail(ld, "syntax error (NUL byte: not a text file?)");
    else if (ld->line == 1 && len - skip >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0)
        /* inih would strip this one too, and with it our view of the line. */
        fail(ld, "syntax error (a second byte order mark, or one after blanks)");
    else if (total > cap)
        fail(ld, "line too long (%zu characters, at most %zu)", total, cap);
    else if (buf[0] == '[')
        check_section_line(ld, buf);
    if (ld->err_line)
        buf[0] = '\0'; /* inih sees a blank line; the next read stops it */
    return buf;
}

/* inih's handler: one call per "key = value" line. */
static int on_key(void *user, const char *section, const char *name, const char *value)
{
    load *ld = user;
    char shown[PS__SHOW_BUF];
    if (ld->err_line)
        return 0;
    if (section[0] == '\0') {
        ps__show(shown, name, strlen(name));
        fail(ld, "key \"%s\" before any [section] line", shown);
        return 0;
    }

    char reason[PS__REASON_MAX];
    int i = find_key(section, strlen(section), name, strlen(name), reason, sizeof(reason));
    if (i == -1) {
        fail(ld, "%s", reason);
        return 0;
    }

    /* inih strips " ;" comments; strip " #" ones too, as '#' starts a
     * comment at the beginning of a line. */
    size_t len = strlen(value);
    for (size_t j = 1; j < len; j++) {
        if (value[j] == '#' && is_space(value[j - 1])) {
            len = j;
            break;
        }
    }
    const char *v = trim(value, &len);
    if (i == PS__HANDLER_OWN) {
        char origin[PS_CONFIG_ORIGIN_MAX];
        snprintf(origin, sizeof origin, "%s:%d", ld->name, ld->line);
        size_t before = ld->cfg->handler_nkeys;
        int h = set_handler_key(ld->cfg, name, strlen(name), v, len, origin, reason,
                                    sizeof reason);
        if (h < 0) {
            fail(ld, "%s", reason);
            return 0;
        }
        if (ld->handler_first_line[h] && (size_t)h < before) {
            fail(ld, "handler.%s given twice (first on line %d)", ld->cfg->handler_keys[h].key,
                     ld->handler_first_line[h]);
            return 0;
        }
        ld->handler_first_line[h] = ld->line;
        return 1;
    }
    const key_spec *k = &key_specs[i];
    if (ld->first_line[i]) {
        fail(ld, "%s.%s given twice (first on line %d)", k->section, k->name, ld->first_line[i]);
        return 0;
    }
    ld->first_line[i] = ld->line;
    if (set_key(ld->cfg, k, v, len, reason, sizeof(reason)) != 0) {
        fail(ld, "%s", reason);
        return 0;
    }
    return 1;
}

/* Runs inih over ld's source into a copy of *cfg, committed only when the
 * whole source is valid. */
static int load_run(load *ld, ps_config *cfg, const char *name, char *err, size_t errlen)
{
    ps_config tmp = *cfg;
    ld->cfg = &tmp;
    ld->name = name;
    int rc = ini_parse_stream(read_line, ld, on_key, ld);
    if (ld->io_errno) {
        ps__set_err(err, errlen, "%s: %s", name, ps_strerror(-ld->io_errno));
        return PS_ECONFIG;
    }
    if (rc == -2) {
        ps__set_err(err, errlen, "%s: out of memory", name);
        return -ENOMEM;
    }
    /* inih keeps parsing after a line it cannot parse and returns that line;
     * it wins over any error we found later. A handler error we found is
     * also inih's rc, on the same line. */
    if (rc > 0 && (ld->err_line == 0 || rc < ld->err_line)) {
        ps__set_err(err, errlen, "%s:%d: syntax error (expected \"key = value\" or \"[section]\")",
                    name, rc);
        return PS_ECONFIG;
    }
    if (ld->err_line) {
        ps__set_err(err, errlen, "%s:%d: %s", name, ld->err_line, ld->reason);
        return PS_ECONFIG;
    }
    if (rc < 0) {
        ps__set_err(err, errlen, "%s: cannot parse (inih error %d)", name, rc);
        return PS_ECONFIG;
    }
    *cfg = tmp;
    clear_err(err, errlen);
    return 0;
}

/* ---- public --------------------------------------------------------------- */

void ps_config_defaults(ps_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    snprintf(cfg->bind, sizeof(cfg->bind), "%s", "127.0.0.1");
    cfg->port = 9050;
    cfg->backlog = 0; /* the system's somaxconn, read when listening */
    snprintf(cfg->greeting, sizeof(cfg->greeting), "%s", "Welcome to my server");
    cfg->dispatch = PS_DISPATCH_EVENT;
    cfg->proxy_protocol = PS_PROXY_OFF;
    snprintf(cfg->proxy_trusted, sizeof(cfg->proxy_trusted), "%s", "127.0.0.0/8 ::1/128");
    cfg->proxy_timeout = 3;
    cfg->proxy_max_pending = 1024;
    cfg->tls_verify_client = PS_TLS_VERIFY_OFF;
    cfg->tls_min_version = PS_TLS_1_2;
    cfg->tls_handshake_timeout = 10;
    cfg->tls_session_tickets = true;
    cfg->workers = 25;
    cfg->queue_capacity = 256;
    cfg->max_connections = 10000;
    cfg->max_connections_wait_ms = 100;
    cfg->max_line = 8192;
    cfg->max_block = 2 * 1024 * 1024;
    cfg->max_output = 16 * 1024 * 1024;
    cfg->idle_timeout = 300;
    cfg->send_timeout = 10;
    cfg->shutdown_timeout = 5;
    cfg->slow_handler_ms = 1000;
    cfg->admin_enabled = true;
    snprintf(cfg->admin_bind, sizeof(cfg->admin_bind), "%s", "127.0.0.1");
    cfg->admin_port = 9051;
    cfg->log_level = PS_LOG_INFO;
}

/* True when fp is a regular file of at most PS__FILE_MAX bytes: a device
 * (/dev/zero) or a FIFO never ends, and nothing sane is a megabyte of
 * settings. Otherwise says why in err. */
static bool readable_file(FILE *fp, const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (fstat(fileno(fp), &st) != 0)
        ps__set_err(err, errlen, "%s: %s", path, ps_strerror(-errno));
    else if (S_ISDIR(st.st_mode))
        ps__set_err(err, errlen, "%s: %s", path, ps_strerror(-EISDIR));
    else if (!S_ISREG(st.st_mode))
        ps__set_err(err, errlen, "%s: not a regular file", path);
    else if (st.st_size > PS__FILE_MAX)
        ps__set_err(err, errlen, "%s: too large (%lld bytes, at most %d)", path,
                    (long long)st.st_size, PS__FILE_MAX);
    else
        return true;
    return false;
}

int ps_config_load_file(ps_config *cfg, const char *path, char *err, size_t errlen)
{
    if (!cfg || !path) {
        ps__set_err(err, errlen, "ps_config_load_file: invalid argument");
        return -EINVAL;
    }
    load ld;
    memset(&ld, 0, sizeof(ld));
    ld.fp = fopen(path, "r");
    if (!ld.fp) {
        ps__set_err(err, errlen, "%s: %s", path, ps_strerror(-errno));
        return PS_ECONFIG;
    }
    if (!readable_file(ld.fp, path, err, errlen)) {
        fclose(ld.fp);
        return PS_ECONFIG;
    }
    int rc = load_run(&ld, cfg, path, err, errlen);
    fclose(ld.fp); /* read-only: nothing to lose on close */
    return rc;
}

int ps_config_load_string(ps_config *cfg, const char *name, const char *text,
                          char *err, size_t errlen)
{
    if (!cfg || !text) {
        ps__set_err(err, errlen, "ps_config_load_string: invalid argument");
        return -EINVAL;
    }
    load ld;
    memset(&ld, 0, sizeof(ld));
    ld.text = text;
    return load_run(&ld, cfg, name ? name : "<string>", err, errlen);
}

int ps_config_set(ps_config *cfg, const char *section, const char *key,
                  const char *value, char *err, size_t errlen)
{
    if (!cfg || !section || !key || !value) {
        ps__set_err(err, errlen, "ps_config_set: invalid argument");
        return -EINVAL;
    }
    int i = find_key(section, strlen(section), key, strlen(key), err, errlen);
    if (i == PS__HANDLER_OWN) {
        char origin[PS_CONFIG_ORIGIN_MAX];
        char shown[PS__SHOW_BUF];
        ps__show(shown, key, strlen(key));
        snprintf(origin, sizeof origin, "handler.%.200s", shown);
        if (set_handler_key(cfg, key, strlen(key), value, strlen(value), origin, err,
                                errlen) < 0)
            return PS_ECONFIG;
        clear_err(err, errlen);
        return 0;
    }
    if (i < 0)
        return PS_ECONFIG;
    int rc = set_key(cfg, &key_specs[i], value, strlen(value), err, errlen);
    if (rc == 0)
        clear_err(err, errlen);
    return rc;
}

int ps_config_override(ps_config *cfg, const char *spec, char *err, size_t errlen)
{
    if (!cfg || !spec) {
        ps__set_err(err, errlen, "ps_config_override: invalid argument");
        return -EINVAL;
    }
    char shown[PS__SHOW_BUF];
    ps__show(shown, spec, strlen(spec));

    const char *eq = strchr(spec, '=');
    size_t keylen = eq ? (size_t)(eq - spec) : 0;
    const char *keyspec = trim(spec, &keylen);
    const char *dot = eq ? memchr(keyspec, '.', keylen) : NULL;
    if (!dot || dot == keyspec || dot == keyspec + keylen - 1) {
        ps__set_err(err, errlen, "-o %s: expected section.key=value", shown);
        return PS_ECONFIG;
    }
    size_t seclen = (size_t)(dot - keyspec);
    size_t namelen = keylen - seclen - 1;
    size_t vallen = strlen(eq + 1);
    const char *val = trim(eq + 1, &vallen);

    char reason[PS__REASON_MAX];
    int i = find_key(keyspec, seclen, dot + 1, namelen, reason, sizeof(reason));
    if (i == PS__HANDLER_OWN) {
        char origin[PS_CONFIG_ORIGIN_MAX];
        snprintf(origin, sizeof origin, "-o %.240s", shown);
        if (set_handler_key(cfg, dot + 1, namelen, val, vallen, origin, reason,
                                sizeof reason) < 0) {
            ps__set_err(err, errlen, "-o %s: %s", shown, reason);
            return PS_ECONFIG;
        }
        clear_err(err, errlen);
        return 0;
    }
    if (i < 0 || set_key(cfg, &key_specs[i], val, vallen, reason, sizeof(reason)) != 0) {
        ps__set_err(err, errlen, "-o %s: %s", shown, reason);
        return PS_ECONFIG;
    }
    clear_err(err, errlen);
    return 0;
}

/* Writes key k's current value in cfg as its INI text; false when the field
 * holds something no text can express (unterminated string, bad enum). */
static bool format_key(const ps_config *cfg, const key_spec *k, char *out, size_t outlen)
{
    const char *field = (const char *)cfg + k->offset;
    const enum_kind *e = enum_of(k->kind);
    if (e != NULL) {
        int m = (int)*(const ps_dispatch_mode *)(const void *)field;
        if (m < 0 || m >= e->count)
            return false;
        snprintf(out, outlen, "%s", e->names[m]);
        return true;
    }
    switch (k->kind) {
    case PS__K_UINT:
        switch (k->width) {
        case PS__W_U16: snprintf(out, outlen, "%u", (unsigned)*(const uint16_t *)(const void *)field); break;
        case PS__W_INT: snprintf(out, outlen, "%d", *(const int *)(const void *)field); break;
        case PS__W_UNSIGNED: snprintf(out, outlen, "%u", *(const unsigned *)(const void *)field); break;
        case PS__W_SIZE: snprintf(out, outlen, "%zu", *(const size_t *)(const void *)field); break;
        case PS__W_NONE: abort();
        }
        return true;
    case PS__K_HOST:
    case PS__K_GREETING:
    case PS__K_PATH:
    case PS__K_CIDRS:
        if (!memchr(field, '\0', k->size) || strlen(field) >= outlen)
            return false;
        memcpy(out, field, strlen(field) + 1);
        return true;
    case PS__K_BOOL:
        snprintf(out, outlen, "%s", *(const bool *)(const void *)field ? "true" : "false");
        return true;
    case PS__K_DISPATCH:
    case PS__K_PROXY:
    case PS__K_HANDLER:
    case PS__K_LOG_LEVEL:
    case PS__K_TLS_VERIFY:
    case PS__K_TLS_VERSION:
        break; /* enumerations: above */
    }
    return false;
}

/* True when listeners on a and b with the same port would collide: the
 * same address, or a wildcard covering the other (0.0.0.0 covers IPv4; ::
 * covers everything on a dual-stack socket). Names are compared as text, not
 * resolved: "localhost" vs "127.0.0.1" is left to bind() to catch. */
static bool hosts_overlap(const char *a, const char *b)
{
    static const unsigned char zero[sizeof(struct in6_addr)];
    unsigned char aa[sizeof(struct in6_addr)], ab[sizeof(struct in6_addr)];
    int fa = 0, fb = 0;
    if (strcasecmp(a, b) == 0)
        return true;
    if (inet_pton(AF_INET, a, aa) == 1)
        fa = AF_INET;
    else if (inet_pton(AF_INET6, a, aa) == 1)
        fa = AF_INET6;
    if (inet_pton(AF_INET, b, ab) == 1)
        fb = AF_INET;
    else if (inet_pton(AF_INET6, b, ab) == 1)
        fb = AF_INET6;
    bool any_a = fa && memcmp(aa, zero, fa == AF_INET ? 4 : 16) == 0;
    bool any_b = fb && memcmp(ab, zero, fb == AF_INET ? 4 : 16) == 0;
    if ((any_a && fa == AF_INET6) || (any_b && fb == AF_INET6))
        return true;
    if (any_a)
        return fb != AF_INET6;
    if (any_b)
        return fa != AF_INET6;
    return fa && fa == fb && memcmp(aa, ab, fa == AF_INET ? 4 : 16) == 0;
}

/* The [tls] keys that depend on each other; the files themselves are read
 * when the server starts (ps_server_start says which one is wrong). */
static int validate_tls(const ps_config *cfg, char *err, size_t errlen)
{
    if (cfg->tls_enabled && !PS__HAVE_TLS) {
        ps__set_err(err, errlen, "tls.enabled: this poolsrv was built without OpenSSL "
                                 "(libssl-dev), so TLS is unavailable");
        return PS_ECONFIG;
    }
    if (cfg->tls_enabled && (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0')) {
        ps__set_err(err, errlen, "tls.%s: a file is needed with tls.enabled = true",
                    cfg->tls_cert[0] == '\0' ? "cert" : "key");
        return PS_ECONFIG;
    }
    if (cfg->tls_verify_client != PS_TLS_VERIFY_OFF && cfg->tls_ca[0] == '\0') {
        ps__set_err(err, errlen, "tls.verify_client: %s needs tls.ca (the CAs of client "
                                 "certificates)",
                    tls_verify_names[cfg->tls_verify_client]);
        return PS_ECONFIG;
    }
    return 0;
}

int ps_config_validate(const ps_config *cfg, char *err, size_t errlen)
{
    if (!cfg) {
        ps__set_err(err, errlen, "ps_config_validate: invalid argument");
        return -EINVAL;
    }
    /* Every key again, through the same check as the file: a struct filled
     * in by code rather than loaded gets the same ranges. */
    ps_config scratch = *cfg;
    for (size_t i = 0; i < PS__NKEYS; i++) {
        const key_spec *k = &key_specs[i];
        char text[PS_CONFIG_GREETING_MAX];
        if (!format_key(cfg, k, text, sizeof(text))) {
            ps__set_err(err, errlen, "%s.%s: invalid value in the configuration structure",
                        k->section, k->name);
            return PS_ECONFIG;
        }
        int rc = set_key(&scratch, k, text, strlen(text), err, errlen);
        if (rc != 0)
            return rc;
    }

    if (cfg->handler_nkeys > PS_CONFIG_HANDLER_KEYS) {
        ps__set_err(err, errlen, "handler: more than %d handler keys", PS_CONFIG_HANDLER_KEYS);
        return PS_ECONFIG;
    }
    for (size_t i = 0; i < cfg->handler_nkeys; i++) {
        const ps_config_handler_key *hk = &cfg->handler_keys[i];
        char reason[PS__REASON_MAX];
        if (!memchr(hk->key, '\0', sizeof hk->key) || !memchr(hk->value, '\0', sizeof hk->value) ||
            !memchr(hk->origin, '\0', sizeof hk->origin) ||
            set_handler_key(&scratch, hk->key, strlen(hk->key), hk->value, strlen(hk->value),
                                hk->origin, reason, sizeof reason) < 0) {
            ps__set_err(err, errlen, "handler key %zu: invalid in the configuration structure", i);
            return PS_ECONFIG;
        }
    }

    int rc = validate_tls(cfg, err, errlen);
    if (rc != 0)
        return rc;

    if (cfg->admin_enabled && cfg->admin_port != 0 && cfg->admin_port == cfg->port &&
        hosts_overlap(cfg->bind, cfg->admin_bind)) {
        ps__set_err(err, errlen,
                    "admin.port: admin %s:%u clashes with the data listener %s:%u "
                    "(use another admin.port, 0 for any, or admin.enabled = false)",
                    cfg->admin_bind, (unsigned)cfg->admin_port, cfg->bind, (unsigned)cfg->port);
        return PS_ECONFIG;
    }
    clear_err(err, errlen);
    return 0;
}

void ps__config_copy_section(ps_config *dst, const ps_config *src, const char *section)
{
    for (size_t i = 0; i < PS__NKEYS; i++)
        if (strcmp(key_specs[i].section, section) == 0)
            memcpy((char *)dst + key_specs[i].offset, (const char *)src + key_specs[i].offset,
                   key_specs[i].size);
}

bool ps__config_handler_keys_equal(const ps_config *a, const ps_config *b)
{
    if (a->handler_nkeys != b->handler_nkeys)
        return false;
    for (size_t i = 0; i < a->handler_nkeys; i++)
        if (strcmp(a->handler_keys[i].key, b->handler_keys[i].key) != 0 ||
            strcmp(a->handler_keys[i].value, b->handler_keys[i].value) != 0)
            return false;
    return true;
}

int ps__config_diff(const ps_config *a, const ps_config *b,
                    void (*changed)(const char *key, const char *was, const char *now, void *arg),
                    void *arg)
{
    int n = 0;
    char ta[PS_CONFIG_MODULE_MAX + 1], tb[PS_CONFIG_MODULE_MAX + 1], key[64];
    for (size_t i = 0; i < PS__NKEYS; i++) {
        const key_spec *k = &key_specs[i];
        if (!format_key(a, k, ta, sizeof ta) || !format_key(b, k, tb, sizeof tb) ||
            strcmp(ta, tb) != 0) {
            snprintf(key, sizeof key, "%s.%s", k->section, k->name);
            changed(key, ta, tb, arg);
            n++;
        }
    }
    /* The handler's own keys, as one: any difference is a change. */
    if (!ps__config_handler_keys_equal(a, b)) {
        changed("handler keys", "", "", arg);
        n++;
    }
    return n;
}

const char *ps_handler_name(ps_handler_kind kind)
{
    if ((unsigned)kind < 2)
        return handler_names[kind];
    return "unknown";
}

const char *ps_proxy_mode_name(ps_proxy_mode mode)
{
    if ((unsigned)mode < 4)
        return proxy_names[mode];
    return "unknown";
}

const char *ps_dispatch_name(ps_dispatch_mode mode)
{
    if ((unsigned)mode < 3)
        return dispatch_names[mode];
    return "unknown";
}

const char *ps_log_level_name(ps_log_level level)
{
    if ((unsigned)level < 4)
        return log_level_names[level];
    return "unknown";
}
