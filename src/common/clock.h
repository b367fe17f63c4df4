#ifndef POOLSRV_CLOCK_H
#define POOLSRV_CLOCK_H

/* Private to the library (pool and server): the monotonic clock every
 * deadline is measured on. Not installed. */

#include <stdint.h>

/* Nanoseconds, microseconds and milliseconds on the monotonic clock. */
int64_t ps__now_ns(void);
int64_t ps__now_us(void);
int64_t ps__now_ms(void);

/* A poll() timeout: milliseconds from now until deadline (both on this
 * clock), clamped to [0, INT_MAX]; -1 (no timeout) when deadline is < 0. */
static inline int ps__ms_until(int64_t deadline, int64_t now)
{
    if (deadline < 0)
        return -1;
    if (deadline <= now)
        return 0;
    return deadline - now > 0x7fffffff ? 0x7fffffff : (int)(deadline - now);
}

#endif
