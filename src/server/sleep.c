/* The sleep handler: the echo protocol, where a line "sleep N" first holds
 * its worker N milliseconds (0..60000), as a database call or a call to
 * another service would. It lets tests and benchmarks put blocking work on
 * the pool without writing C ([handler] name = sleep). */
#include <errno.h>
#include <time.h>

#include "internal.h"
#include "poolsrv/module.h"
#include "poolsrv/server.h"
#include "echo.h"

#define PS__SLEEP_MAX_MS 60000

/* The N of "sleep N", or -1 when the line is something else. */
static long sleep_ms(const ps_line *line)
{
    static const char word[] = "sleep ";
    size_t n = sizeof word - 1;
    if (line->len <= n || line->len > n + 5)
        return -1;
    for (size_t i = 0; i < n; i++)
        if (line->data[i] != word[i])
            return -1;
    long ms = 0;
    for (size_t i = n; i < line->len; i++) {
        if (line->data[i] < '0' || line->data[i] > '9')
            return -1;
        ms = ms * 10 + (line->data[i] - '0');
    }
    return ms <= PS__SLEEP_MAX_MS ? ms : -1;
}

static int sleep_open(ps_conn *conn, void *ud)
{
    return ps_echo_handler.on_open(conn, ud); /* the greeting */
}

static int sleep_line(ps_conn *conn, const ps_line *line, void *ud)
{
    long ms = sleep_ms(line);
    if (ms > 0) {
        struct timespec left = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) != 0 && errno == EINTR)
            ;
    }
    return ps_echo_handler.on_line(conn, line, ud);
}

const ps_handler ps_sleep_handler = {
    .on_open = sleep_open,
    .on_line = sleep_line,
    .on_close = NULL,
};

/* The module's callbacks: sleep's, greeting from the reloadable box. */
static const ps_handler sleep_module_handler = {
    .on_open = ps__module_greeting_open,
    .on_line = sleep_line,
    .on_close = NULL,
};

const ps_module ps_sleep_module = {
    .abi = PS_MODULE_ABI,
    .name = "sleep",
    .handler = &sleep_module_handler,
    .init = ps__echo_init,
    .fini = ps__echo_fini,
    .reload = ps__echo_reload,
};
