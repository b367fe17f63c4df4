/* The monotonic clock every deadline is measured on (clock.h). */
#include <time.h>

#include "clock.h"

int64_t ps__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t ps__now_us(void)
{
    return ps__now_ns() / 1000;
}

int64_t ps__now_ms(void)
{
    return ps__now_us() / 1000;
}
