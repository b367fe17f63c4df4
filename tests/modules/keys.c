/* A module with keys of its own: prefix (a string) and repeat (1..5): each
 * line comes back as PREFIX + line, repeat times. Its init refuses unknown
 * keys and bad values; fini frees what init made. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <poolsrv/module.h>

typedef struct keys_state {
    char prefix[64];
    int repeat;
} keys_state;

static int keys_line(ps_conn *conn, const ps_line *line, void *ud)
{
    const keys_state *st = ud;
    for (int i = 0; i < st->repeat; i++)
        if (ps_conn_send(conn, st->prefix, strlen(st->prefix)) != 0 ||
            ps_conn_send(conn, line->data, line->len + line->eol_len) != 0)
            return PS_CLOSE;
    return PS_CONTINUE;
}

static int keys_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                     char *err, size_t errlen, size_t *bad)
{
    (void)cfg;
    keys_state *st = calloc(1, sizeof *st);
    if (st == NULL)
        return -1;
    st->repeat = 1;
    for (size_t i = 0; i < nkeys; i++) {
        if (strcmp(keys[i].key, "prefix") == 0 && strlen(keys[i].value) < sizeof st->prefix) {
            strcpy(st->prefix, keys[i].value);
        } else if (strcmp(keys[i].key, "repeat") == 0 && strlen(keys[i].value) == 1 &&
                   keys[i].value[0] >= '1' && keys[i].value[0] <= '5') {
            st->repeat = keys[i].value[0] - '0';
        } else {
            snprintf(err, errlen, strcmp(keys[i].key, "repeat") == 0 ? "expected 1 to 5, got \"%s\""
                                  : strcmp(keys[i].key, "prefix") == 0 ? "too long: \"%s\""
                                                                         : "unknown key (%s)",
                     keys[i].value);
            *bad = i;
            free(st);
            return -1;
        }
    }
    *ud = st;
    return 0;
}

static void keys_fini(void *ud)
{
    free(ud);
}

static const ps_handler keys_handler = {.on_line = keys_line};

PS_MODULE_DEFINE("keys", &keys_handler, keys_init, keys_fini);
