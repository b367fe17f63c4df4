/*
 * fuzz_config - libFuzzer target for the INI loader, -o overrides and
 * ps_config_validate.
 *
 * Input: INI text, then optionally a NUL byte and -o specs separated by NUL
 * bytes:   "[pool]\nworkers = 8\n" "\0" "limits.max_line=64" "\0" "log.level=debug"
 *
 * 1. The text goes to ps_config_load_string over the defaults, and the same
 *    bytes as a file (a memfd) to ps_config_load_file: both must agree.
 *    When the input holds NUL bytes, the whole input as a file must be
 *    refused (a NUL byte is never valid in the file).
 * 2. The specs go through ps_config_override in order (over the defaults if
 *    the text was refused), up to the first refused one.
 * 3. ps_config_validate must accept what the loader and the overrides
 *    accepted, except for the one rule between keys (admin and data port
 *    clash).
 * An accepted text must also read as valid to an independent line-by-line
 * check of the documented syntax (check_accepted_text).
 * After each step: every field within the range config.h documents, strings
 * NUL-terminated inside their arrays; on error a non-empty, NUL-terminated,
 * printable message (it goes to a terminal or log) that starts with the
 * file name and ':' for the loaders (with a real line number), or "-o " for
 * an override. Nothing is written past errlen.
 */
#include <errno.h>
#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

#include "poolsrv/config.h"
#include "poolsrv/error.h"

#include "fuzz_target.h"

#define NAME "fuzz.ini"
#define ERRLEN 512
#define CANARY 0xA5
#define MAX_OVERRIDES 64

/* Every field within its documented range. */
static void check_config(const ps_config *cfg)
{
    FUZZ_CHECK(memchr(cfg->bind, '\0', sizeof(cfg->bind)) != NULL);
    FUZZ_CHECK(cfg->bind[0] != '\0');
    FUZZ_CHECK(cfg->backlog >= 0 && cfg->backlog <= 65535);
    FUZZ_CHECK(memchr(cfg->greeting, '\0', sizeof(cfg->greeting)) != NULL);
    FUZZ_CHECK(strpbrk(cfg->greeting, "\r\n") == NULL);
    FUZZ_CHECK((unsigned)cfg->dispatch <= PS_DISPATCH_THREAD);
    FUZZ_CHECK(cfg->workers >= 1 && cfg->workers <= 4096);
    FUZZ_CHECK(cfg->queue_capacity >= 1 && cfg->queue_capacity <= 1048576);
    FUZZ_CHECK(cfg->max_connections >= 1 && cfg->max_connections <= 1000000);
    FUZZ_CHECK(cfg->max_connections_wait_ms <= 60000);
    FUZZ_CHECK(cfg->max_line >= 16 && cfg->max_line <= 16777216);
    FUZZ_CHECK(cfg->idle_timeout <= 86400);
    FUZZ_CHECK(cfg->send_timeout >= 1 && cfg->send_timeout <= 3600);
    FUZZ_CHECK(cfg->shutdown_timeout >= 1 && cfg->shutdown_timeout <= 3600);
    FUZZ_CHECK(cfg->slow_handler_ms <= 3600000);
    FUZZ_CHECK((unsigned)cfg->handler <= PS_HANDLER_SLEEP);
    unsigned char b;
    memcpy(&b, &cfg->admin_enabled, 1);
    FUZZ_CHECK(b <= 1);
    FUZZ_CHECK(memchr(cfg->admin_bind, '\0', sizeof(cfg->admin_bind)) != NULL);
    FUZZ_CHECK(cfg->admin_bind[0] != '\0');
    FUZZ_CHECK((unsigned)cfg->log_level <= PS_LOG_DEBUG);
}

/* The handler's own keys, in order, with their values. */
static bool same_handler_keys(const ps_config *a, const ps_config *b)
{
    if (a->handler_nkeys != b->handler_nkeys)
        return false;
    for (size_t i = 0; i < a->handler_nkeys; i++)
        if (strcmp(a->handler_keys[i].key, b->handler_keys[i].key) != 0 ||
            strcmp(a->handler_keys[i].value, b->handler_keys[i].value) != 0)
            return false;
    return true;
}

/* Field by field: struct assignment need not copy padding. */
static bool config_equal(const ps_config *a, const ps_config *b)
{
    return strcmp(a->bind, b->bind) == 0 && a->port == b->port && a->backlog == b->backlog &&
           strcmp(a->greeting, b->greeting) == 0 && a->dispatch == b->dispatch &&
           a->workers == b->workers && a->queue_capacity == b->queue_capacity &&
           a->max_connections == b->max_connections &&
           a->max_connections_wait_ms == b->max_connections_wait_ms && a->max_line == b->max_line &&
           a->idle_timeout == b->idle_timeout && a->send_timeout == b->send_timeout &&
           a->shutdown_timeout == b->shutdown_timeout && a->admin_enabled == b->admin_enabled &&
           strcmp(a->admin_bind, b->admin_bind) == 0 && a->admin_port == b->admin_port &&
           a->log_level == b->log_level && a->slow_handler_ms == b->slow_handler_ms &&
           a->handler == b->handler && strcmp(a->handler_module, b->handler_module) == 0 &&
           same_handler_keys(a, b);
}

static void err_reset(char *err)
{
    memset(err, CANARY, ERRLEN + 16);
}

/* A refused call left a non-empty, printable, terminated message within
 * errlen, and nothing after it. */
static void check_err(const char *err)
{
    const char *nul = memchr(err, '\0', ERRLEN);
    FUZZ_CHECK(nul != NULL);
    FUZZ_CHECK(nul > err);
    for (const char *p = err; p < nul; p++)
        FUZZ_CHECK(*p >= 0x20 && *p < 0x7f);
    for (size_t i = ERRLEN; i < ERRLEN + 16; i++)
        FUZZ_CHECK((unsigned char)err[i] == CANARY);
}

/* Physical lines as the loader counts them: a last line without '\n' counts. */
static long count_lines(const char *text, size_t len)
{
    long lines = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n')
            lines++;
    if (len > 0 && text[len - 1] != '\n')
        lines++;
    return lines;
}

/* A loader error: "name: reason" or "name:LINE: reason" with LINE a line of
 * the text. Returns the message after the name. */
static const char *check_load_err(const char *err, const char *name, long lines)
{
    size_t nlen = strlen(name);
    check_err(err);
    FUZZ_CHECK(strncmp(err, name, nlen) == 0 && err[nlen] == ':');
    const char *rest = err + nlen + 1;
    if (*rest >= '0' && *rest <= '9') {
        char *end;
        long line = strtol(rest, &end, 10);
        FUZZ_CHECK(*end == ':');
        FUZZ_CHECK(line >= 1 && line <= lines);
    }
    return rest;
}

/* ---- an independent reading of an accepted text ------------------------- */

static const char *const schema[][2] = {
    {"server", "bind"}, {"server", "port"}, {"server", "backlog"}, {"server", "greeting"},
    {"server", "dispatch"}, {"pool", "workers"}, {"pool", "queue_capacity"},
    {"limits", "max_connections"}, {"limits", "max_connections_wait_ms"}, {"limits", "max_line"}, {"limits", "idle_timeout"},
    {"limits", "send_timeout"}, {"limits", "shutdown_timeout"}, {"admin", "enabled"},
    {"limits", "slow_handler_ms"}, {"admin", "bind"}, {"admin", "port"}, {"log", "level"},
    {"handler", "name"}, {"handler", "module"},
};
#define SCHEMA_KEYS (sizeof(schema) / sizeof(schema[0]))

static bool is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static bool span_is(const char *s, size_t len, const char *word)
{
    return strlen(word) == len && memcmp(s, word, len) == 0;
}

/* The file syntax conf/server.ini documents, checked line by line on a text
 * the loader accepted: one UTF-8 BOM at most, lines of at most 199
 * characters, "[section]" lines naming a known section with nothing but a
 * comment after them, and "key = value" (or inih's "key: value") lines
 * naming a known key of the current section, once ([handler] also takes
 * keys of its own, for the handler). */
static void check_accepted_text(const char *text, size_t len)
{
    static const char bom[] = "\xEF\xBB\xBF";
    const char *section = NULL;
    size_t section_len = 0;
    bool seen[SCHEMA_KEYS] = {false};
    size_t pos = 0;
    for (long lineno = 1; pos < len; lineno++) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        const char *s = text + pos;
        size_t n = end - pos;
        pos = end + 1;
        if (lineno == 1 && n >= 3 && memcmp(s, bom, 3) == 0) {
            s += 3;
            n -= 3;
        }
        FUZZ_CHECK(n <= 199);
        while (n > 0 && is_blank(*s)) {
            s++;
            n--;
        }
        if (n == 0 || *s == ';' || *s == '#')
            continue;
        if (*s == '[') {
            const char *close = memchr(s, ']', n);
            FUZZ_CHECK(close != NULL);
            section = s + 1;
            section_len = (size_t)(close - section);
            bool known = false;
            for (size_t i = 0; i < SCHEMA_KEYS; i++)
                known = known || span_is(section, section_len, schema[i][0]);
            FUZZ_CHECK(known);
            const char *rest = close + 1, *stop = s + n;
            while (rest < stop && is_blank(*rest))
                rest++;
            FUZZ_CHECK(rest == stop || *rest == ';' || *rest == '#');
            continue;
        }
        FUZZ_CHECK(section != NULL);
        size_t name_len = strcspn(s, "=:");
        FUZZ_CHECK(name_len < n);
        while (name_len > 0 && is_blank(s[name_len - 1]))
            name_len--;
        size_t i;
        for (i = 0; i < SCHEMA_KEYS; i++)
            if (span_is(section, section_len, schema[i][0]) && span_is(s, name_len, schema[i][1]))
                break;
        if (i == SCHEMA_KEYS && span_is(section, section_len, "handler")) {
            /* The handler's own key: a name of letters, digits, '_', '-'. */
            FUZZ_CHECK(name_len > 0 && name_len < PS_CONFIG_KEY_MAX);
            for (size_t c = 0; c < name_len; c++)
                FUZZ_CHECK(isalnum((unsigned char)s[c]) || s[c] == '_' || s[c] == '-');
            continue;
        }
        FUZZ_CHECK(i < SCHEMA_KEYS);
        FUZZ_CHECK(!seen[i]);
        seen[i] = true;
    }
}

/* A memfd holding the text, opened by path like any config file. Returns the
 * path, or NULL when memfd is unavailable (then the file checks are skipped). */
static const char *as_file(const char *text, size_t len)
{
    static int fd = -2;
    static char path[64];
    if (fd == -2) {
        fd = memfd_create("fuzz_config", MFD_CLOEXEC);
        if (fd >= 0)
            snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (fd < 0)
        return NULL;
    if (ftruncate(fd, 0) != 0)
        abort();
    size_t done = 0;
    while (done < len) {
        ssize_t w = pwrite(fd, text + done, len - done, (off_t)done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            abort();
        done += (size_t)w;
    }
    return path;
}

static int load_file_checked(ps_config *cfg, const char *path, const char *text, size_t len,
                             char *err, const char **reason)
{
    ps_config_defaults(cfg);
    err_reset(err);
    int rc = ps_config_load_file(cfg, path, err, ERRLEN);
    FUZZ_CHECK(rc == 0 || rc == PS_ECONFIG || rc == -ENOMEM);
    if (rc == 0)
        check_config(cfg);
    else
        *reason = check_load_err(err, path, count_lines(text, len));
    return rc;
}

/* Copies src[0..len) into an allocation of len + 1 bytes with a final NUL. */
static char *dup_str(const uint8_t *src, size_t len)
{
    char *p = malloc(len + 1);
    if (!p)
        abort();
    memcpy(p, src, len);
    p[len] = '\0';
    return p;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[ERRLEN + 16];
    ps_config cfg;

    const uint8_t *first_nul = memchr(data, '\0', size);
    size_t text_len = first_nul ? (size_t)(first_nul - data) : size;
    char *text = dup_str(data, text_len);

    /* 1. the text, as a string and as a file */
    ps_config_defaults(&cfg);
    check_config(&cfg);
    err_reset(err);
    int rc = ps_config_load_string(&cfg, NAME, text, err, ERRLEN);
    FUZZ_CHECK(rc == 0 || rc == PS_ECONFIG || rc == -ENOMEM);
    const char *reason = NULL;
    char string_reason[ERRLEN];
    if (rc == 0) {
        check_config(&cfg);
        check_accepted_text(text, text_len);
    } else {
        reason = check_load_err(err, NAME, count_lines(text, text_len));
        snprintf(string_reason, sizeof(string_reason), "%s", reason);
    }

    const char *path = as_file(text, text_len);
    if (path) {
        ps_config fcfg;
        char ferr[ERRLEN + 16];
        const char *freason = NULL;
        int frc = load_file_checked(&fcfg, path, text, text_len, ferr, &freason);
        FUZZ_CHECK(frc == rc);
        if (rc == 0)
            FUZZ_CHECK(config_equal(&cfg, &fcfg));
        else
            FUZZ_CHECK(strcmp(freason, string_reason) == 0);

        if (first_nul) {
            char *whole = dup_str(data, size);
            path = as_file(whole, size);
            frc = load_file_checked(&fcfg, path, whole, size, ferr, &freason);
            FUZZ_CHECK(frc == PS_ECONFIG);
            free(whole);
        }
    }
    free(text);
    if (rc != 0)
        ps_config_defaults(&cfg); /* a refused load is discarded */

    /* 2. the -o specs, in order, up to the first refused one */
    bool all_ok = true;
    const uint8_t *p = first_nul ? first_nul + 1 : data + size;
    const uint8_t *end = data + size;
    for (int i = 0; i < MAX_OVERRIDES && p < end; i++) {
        const uint8_t *q = memchr(p, '\0', (size_t)(end - p));
        size_t len = q ? (size_t)(q - p) : (size_t)(end - p);
        char *spec = dup_str(p, len);
        err_reset(err);
        int orc = ps_config_override(&cfg, spec, err, ERRLEN);
        free(spec);
        FUZZ_CHECK(orc == 0 || orc == PS_ECONFIG);
        if (orc != 0) {
            check_err(err);
            FUZZ_CHECK(strncmp(err, "-o ", 3) == 0);
            all_ok = false; /* poolsrv exits here: cfg is discarded */
            break;
        }
        check_config(&cfg);
        p = q ? q + 1 : end;
    }

    /* 3. the rules between keys */
    if (all_ok) {
        err_reset(err);
        int vrc = ps_config_validate(&cfg, err, ERRLEN);
        bool clash = cfg.admin_enabled && cfg.admin_port != 0 && cfg.admin_port == cfg.port;
        if (vrc != 0) {
            FUZZ_CHECK(vrc == PS_ECONFIG);
            check_err(err);
            /* Anything else refused here was accepted by the loader or an
             * override: the two would disagree on one value. */
            FUZZ_CHECK(clash);
            FUZZ_CHECK(strncmp(err, "admin.port:", 11) == 0);
        } else {
            FUZZ_CHECK(!(clash && strcasecmp(cfg.bind, cfg.admin_bind) == 0));
        }
    }
    return 0;
}
