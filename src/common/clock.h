#ifndef POOLSRV_CLOCK_H
#define POOLSRV_CLOCK_H

/* Private to the library (pool and server): the monotonic clock every
 * deadline is measured on. Not installed. */

#include <stdint.h>

/* Microseconds and milliseconds on the monotonic clock. */
int64_t ps__now_us(void);
int64_t ps__now_ms(void);

#endif
