#ifndef POOLSRV_POOL_INTERNAL_H
#define POOLSRV_POOL_INTERNAL_H

/*
 * Private glue between pool.c and future.c. Not installed, not public: the
 * pool owns the list of live futures so that ps_pool_destroy can free the
 * ones the user never ended.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "poolsrv/pool.h"

#include "../common/lock.h"

/* Intrusive node the pool keeps for every live future. `reap` frees the
 * owner without touching the pool (called by destroy after all workers are
 * joined). */
typedef struct ps__pool_link {
    struct ps__pool_link *prev, *next;
    void (*reap)(struct ps__pool_link *link);
} ps__pool_link;

/* Queues fn(arg) like submit (block = true) or try_submit (block = false).
 * When link is not NULL it is added to the live-future list and
 * futures_begun is counted, under the same lock hold as the enqueue, so a
 * future is tracked exactly when its job is queued. */
int ps__pool_enqueue(ps_pool *pool, ps_job_fn fn, void *arg, bool block,
                     ps__pool_link *link);

/* Removes a future from the live list (its last reference is gone). */
void ps__pool_unlink(ps_pool *pool, ps__pool_link *link);

/* Counts one future whose result is stored. */
void ps__pool_future_done(ps_pool *pool);

#endif
