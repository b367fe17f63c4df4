/* The echo handler (greeting, each line back, close on an empty line or
 * `exit`) and the built-in echo and sleep modules' greeting, which a
 * reload may change. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "poolsrv/module.h"
#include "poolsrv/server.h"
#include "echo.h"

/* The echo protocol. It never touches the socket: the connection
 * layer frames lines and writes replies, so it runs under any dispatch. */

static int echo_open(ps_conn *conn, void *ud)
{
    const char *greeting = ud;
    if (greeting != NULL && greeting[0] != '\0') {
        size_t n = 0;
        while (greeting[n] != '\0')
            n++;
        if (ps_conn_send(conn, greeting, n) < 0 || ps_conn_send(conn, "\r\n", 2) < 0)
            return PS_CLOSE;
    }
    return PS_CONTINUE;
}

static int echo_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)ud;
    if (line->len == 0)
        return PS_CLOSE;
    if (line->len == 4 && strncasecmp(line->data, "exit", 4) == 0)
        return PS_CLOSE;
    /* The reply keeps the line ending the client used. */
    if (ps_conn_send(conn, line->data, line->len + line->eol_len) < 0)
        return PS_CLOSE;
    return PS_CONTINUE;
}

const ps_handler ps_echo_handler = {
    .on_open = echo_open,
    .on_line = echo_line,
    .on_close = NULL,
};

/*
 * The built-in modules (echo, sleep) keep their greeting in a box that a
 * reload may refill while workers greet clients: the pointer is swapped
 * atomically, and a greeting replaced stays allocated until fini (a worker
 * may be sending it right now), so each change of greeting keeps one more
 * string until the server stops.
 */
typedef struct greeting_text {
    struct greeting_text *older;
    char text[];
} greeting_text;

typedef struct greeting_box {
    _Atomic(const char *) current; /* release by reload, acquire by open */
    greeting_text *texts;          /* every greeting set; main thread only */
} greeting_box;

int ps__module_greeting_open(ps_conn *conn, void *ud)
{
    greeting_box *box = ud;
    const char *greeting = atomic_load_explicit(&box->current, memory_order_acquire);
    return ps_echo_handler.on_open(conn, (void *)greeting);
}

/* The greeting the keys give (server.greeting being its older spelling and
 * its default), or NULL with err and *bad set. */
static const char *greeting_key(const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                                char *err, size_t errlen, size_t *bad)
{
    const char *greeting = cfg->greeting;
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, "greeting") != 0) {
            *bad = i;
            snprintf(err, errlen, "unknown key (this handler takes: greeting)");
            return NULL;
        }
        if (strlen(keys[i].value) >= PS_CONFIG_GREETING_MAX) {
            *bad = i;
            snprintf(err, errlen, "too long (at most %d bytes)", PS_CONFIG_GREETING_MAX - 1);
            return NULL;
        }
        greeting = keys[i].value;
    }
    return greeting;
}

/* Keeps a copy of greeting in the box and makes it the current one. */
static int box_set(greeting_box *box, const char *greeting, char *err, size_t errlen)
{
    size_t len = strlen(greeting);
    greeting_text *t = malloc(sizeof *t + len + 1);
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(t->text, greeting, len + 1);
    t->older = box->texts;
    box->texts = t;
    atomic_store_explicit(&box->current, t->text, memory_order_release);
    return 0;
}

int ps__echo_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                  char *err, size_t errlen, size_t *bad)
{
    const char *greeting = greeting_key(keys, nkeys, cfg, err, errlen, bad);
    if (greeting == NULL)
        return -1;
    greeting_box *box = calloc(1, sizeof *box);
    if (box == NULL || box_set(box, greeting, err, errlen) != 0) {
        free(box);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *ud = box;
    return 0;
}

int ps__echo_reload(void *ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                    char *err, size_t errlen, size_t *bad)
{
    greeting_box *box = ud;
    const char *greeting = greeting_key(keys, nkeys, cfg, err, errlen, bad);
    if (greeting == NULL)
        return -1;
    if (strcmp(greeting, atomic_load_explicit(&box->current, memory_order_relaxed)) == 0)
        return 0;
    return box_set(box, greeting, err, errlen);
}

void ps__echo_fini(void *ud)
{
    greeting_box *box = ud;
    if (box == NULL)
        return;
    for (greeting_text *t = box->texts, *older; t != NULL; t = older) {
        older = t->older;
        free(t);
    }
    free(box);
}

/* The module's callbacks: echo's, greeting from the box. */
static const ps_handler echo_module_handler = {
    .on_open = ps__module_greeting_open,
    .on_line = echo_line,
    .on_close = NULL,
};

const ps_module ps_echo_module = {
    .abi = PS_MODULE_ABI,
    .name = "echo",
    .handler = &echo_module_handler,
    .init = ps__echo_init,
    .fini = ps__echo_fini,
    .reload = ps__echo_reload,
};
