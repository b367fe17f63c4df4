/* The log: leveled lines with a timestamp to stderr, or to a sink the
 * embedding program sets. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "poolsrv/log.h"

static atomic_int log_level = PS_LOG_INFO;
static _Atomic(ps_log_sink) log_sink;
static _Atomic(void *) log_sink_arg;

void ps_log_set_sink(ps_log_sink sink, void *arg)
{
    atomic_store_explicit(&log_sink_arg, arg, memory_order_relaxed);
    atomic_store_explicit(&log_sink, sink, memory_order_release);
}

void ps_log_set_level(ps_log_level level)
{
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
}

ps_log_level ps_log_get_level(void)
{
    return (ps_log_level)atomic_load_explicit(&log_level, memory_order_relaxed);
}

static void log_v(ps_log_level level, const char *fmt, va_list ap)
{
    static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

    char line[1024];
    ps_log_sink sink = atomic_load_explicit(&log_sink, memory_order_acquire);
    if (sink != NULL) {
        vsnprintf(line, sizeof line, fmt, ap);
        sink(level, line, atomic_load_explicit(&log_sink_arg, memory_order_relaxed));
        return;
    }
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                     names[level <= PS_LOG_DEBUG ? level : PS_LOG_DEBUG]);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof line - 2)
        len = sizeof line - 2; /* truncated: keep one line */
    line[len++] = '\n';

    /* One write per line: lines from many threads never interleave. */
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(STDERR_FILENO, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere to report a failed log write */
        }
        p += w;
        len -= (size_t)w;
    }
}

void ps_log(ps_log_level level, const char *fmt, ...)
{
    if ((int)level > atomic_load_explicit(&log_level, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_v(level, fmt, ap);
    va_end(ap);
}

void ps_log_always(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_v(PS_LOG_INFO, fmt, ap);
    va_end(ap);
}
