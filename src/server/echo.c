#include <strings.h>

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
