#ifndef POOLSRV_LOCK_H
#define POOLSRV_LOCK_H

/* Private to the library (pool and server): mutex helpers. Not installed. */

#include <pthread.h>
#include <stdlib.h>

/* A failed lock/unlock/wait means a corrupted or misused mutex: a bug, not an
 * error a caller could handle. */
static inline void ps__lock(pthread_mutex_t *m)
{
    if (pthread_mutex_lock(m) != 0)
        abort();
}

static inline void ps__unlock(pthread_mutex_t *m)
{
    if (pthread_mutex_unlock(m) != 0)
        abort();
}

static inline void ps__wait(pthread_cond_t *c, pthread_mutex_t *m)
{
    if (pthread_cond_wait(c, m) != 0)
        abort();
}

#endif
