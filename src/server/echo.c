#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"
#include "poolsrv/module.h"
#include "poolsrv/server.h"

/* The seed's echo protocol. It never touches the socket: the connection
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

/* The built-in modules' keys: greeting (the greeting line; "" = none),
 * server.greeting being its older spelling and its default. */
int ps__echo_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                  char *err, size_t errlen, size_t *bad)
{
    const char *greeting = cfg->greeting;
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, "greeting") != 0) {
            *bad = i;
            snprintf(err, errlen, "unknown key (this handler takes: greeting)");
            return -1;
        }
        if (strlen(keys[i].value) >= PS_CONFIG_GREETING_MAX) {
            *bad = i;
            snprintf(err, errlen, "too long (at most %d bytes)", PS_CONFIG_GREETING_MAX - 1);
            return -1;
        }
        greeting = keys[i].value;
    }
    *ud = strdup(greeting);
    if (*ud == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void ps__echo_fini(void *ud)
{
    free(ud);
}

const ps_module ps_echo_module = {
    .abi = PS_MODULE_ABI,
    .name = "echo",
    .handler = &ps_echo_handler,
    .init = ps__echo_init,
    .fini = ps__echo_fini,
};
