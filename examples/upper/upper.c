/*
 * upper: a handler module that replies to each line with the line in upper
 * case. The smallest useful handler: build it as a shared object and name
 * it in the INI:
 *
 *   cc -shared $(pkg-config --cflags poolsrv-module) upper.c -o upper.so
 *   [handler]
 *   module = /path/to/upper.so   ; or upper, installed in the module directory
 */
#include <ctype.h>
#include <stdlib.h>

#include <poolsrv/module.h>

static int upper_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)ud;
    if (line->len == 0)
        return PS_CLOSE; /* an empty line ends the session, as in echo */
    char *out = malloc(line->len + line->eol_len);
    if (out == NULL)
        return PS_CLOSE;
    for (size_t i = 0; i < line->len; i++)
        out[i] = (char)toupper((unsigned char)line->data[i]);
    for (size_t i = 0; i < line->eol_len; i++)
        out[line->len + i] = line->data[line->len + i];
    int rc = ps_conn_send(conn, out, line->len + line->eol_len);
    free(out);
    return rc == 0 ? PS_CONTINUE : PS_CLOSE;
}

static const ps_handler upper = {.on_line = upper_line};

PS_MODULE_DEFINE("upper", &upper, NULL, NULL);
