#ifndef POOLSRV_LOG_H
#define POOLSRV_LOG_H

#include "poolsrv/config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Process-wide log to stderr: "2026-01-02T03:04:05.678Z LEVEL message".
 * Thread-safe; one write(2) per line so lines never interleave. */
void ps_log_set_level(ps_log_level level);
ps_log_level ps_log_get_level(void);
void ps_log(ps_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Logs at INFO whatever the level: the lines a user must always see
 * (the real listening addresses). */
void ps_log_always(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Where an embedding program wants poolsrv's log lines instead of stderr:
 * called with each line's level and message (no timestamp, no newline;
 * valid during the call only), from any thread, possibly from several at
 * once, so it must be thread-safe and must not call ps_log. Lines below the
 * level set with ps_log_set_level are not passed. Set it before starting a
 * server and do not change it while one runs; NULL sends lines to stderr
 * again. */
typedef void (*ps_log_sink)(ps_log_level level, const char *message, void *arg);
void ps_log_set_sink(ps_log_sink sink, void *arg);

#define ps_log_error(...) ps_log(PS_LOG_ERROR, __VA_ARGS__)
#define ps_log_warn(...) ps_log(PS_LOG_WARN, __VA_ARGS__)
#define ps_log_info(...) ps_log(PS_LOG_INFO, __VA_ARGS__)
#define ps_log_debug(...) ps_log(PS_LOG_DEBUG, __VA_ARGS__)

#ifdef __cplusplus
}
#endif

#endif
