/* Text for error messages, shared by the files that parse what users give
 * (config.c, proxy.c, module.c): a bad value quoted safely, and a message
 * into a caller's buffer. */
#ifndef POOLSRV_SERVER_TEXT_H
#define POOLSRV_SERVER_TEXT_H

#include <stddef.h>

#define PS__SHOW_MAX 64 /* characters of a bad value quoted in a message */
#define PS__SHOW_BUF (PS__SHOW_MAX * 4 + 8)

/* Writes s[0..len) into out (PS__SHOW_BUF bytes) for a message: printable
 * ASCII as is, anything else as \xNN, so garbage in a file cannot garble
 * the terminal or log; cut after PS__SHOW_MAX characters with "...". */
void ps__show(char *out, const char *s, size_t len);

/* snprintf into err when err is not NULL and errlen not 0. */
void ps__set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
