#ifndef POOLSRV_ERROR_H
#define POOLSRV_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Error codes. Every poolsrv function that can fail returns 0 on success or a
 * negative errno value (-EAGAIN, -EINVAL, ...). A few conditions have no
 * errno of their own; they get codes below -4000, out of errno's range.
 */

#define PS_ESHUTDOWN  (-4001) /* the pool or server is shutting down */
#define PS_EFULL      (-4002) /* the queue is full (try_submit) */
#define PS_ELINELONG  (-4003) /* a line is longer than max_line */
#define PS_ECONFIG    (-4004) /* a configuration value is invalid */
#define PS_ECLOSED    (-4005) /* the connection has closed */

/* Text for a code returned by any ps_ function; never NULL, thread-safe. */
const char *ps_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif
