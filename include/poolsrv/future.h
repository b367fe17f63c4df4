#ifndef POOLSRV_FUTURE_H
#define POOLSRV_FUTURE_H

#include <stdbool.h>

#include "poolsrv/pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Async invocation on a pool (.NET's delegate BeginInvoke / EndInvoke):
 * run fn(arg) on a worker, get a future for its result.
 *
 *   begin        -> BeginInvoke(args, callback, state) returning IAsyncResult
 *   is_completed -> IAsyncResult.IsCompleted
 *   wait         -> IAsyncResult.AsyncWaitHandle.WaitOne(timeout)
 *   state        -> IAsyncResult.AsyncState
 *   end          -> EndInvoke(ar)
 *
 * Lifetime: the caller owns one reference from a successful begin and gives
 * it back with exactly one ps_future_end. The worker holds its own reference
 * until the job and its callback have returned, so end may be called from
 * any thread, including from the callback. A future never ended is freed by
 * ps_pool_destroy (which first runs its job and callback). Once destroy has
 * been called, only callbacks (running during its drain) may still use their
 * future; other threads must not touch any handle from that pool, and after
 * destroy returns every handle is invalid. Do not wait on a future from a
 * worker of the
 * same pool unless it is already complete (the pool may have no other
 * worker to run it).
 */

typedef struct ps_future ps_future;

/* The work: returns the result handed to ps_future_end. */
typedef void *(*ps_async_fn)(void *arg);

/* Runs once on the worker after the result is stored (is_completed is
 * already true); `state` is the begin's user state. It may call
 * ps_future_end(&f, ...). */
typedef void (*ps_future_cb)(ps_future *f, void *state);

/* Queues fn(arg) on the pool, blocking while the queue is full. cb may be
 * NULL. Returns 0 and sets *out, or -EINVAL, -ENOMEM, PS_ESHUTDOWN (destroy
 * has begun); *out is NULL on error. *out is set before the job can start,
 * so cb may read a handle stored through out. A server's handler should
 * use ps_future_try_begin instead: blocking here holds the server's worker
 * for as long as the other pool stays full. */
int ps_future_begin(ps_future **out, ps_pool *pool, ps_async_fn fn, void *arg,
                    ps_future_cb cb, void *state);

/* Like ps_future_begin but never blocks: returns PS_EFULL at once when the
 * queue is full (counted in the pool's `rejected`; nothing begun, *out
 * NULL, fn and cb never called), else as ps_future_begin. For a handler
 * that defers its reply (ps_reply_defer): on PS_EFULL it answers an error
 * at once (examples/lookup) instead of holding its worker. */
int ps_future_try_begin(ps_future **out, ps_pool *pool, ps_async_fn fn,
                        void *arg, ps_future_cb cb, void *state);

/* True once fn has returned and its result is stored (the callback may
 * still be running). Never blocks; safe from any thread. */
bool ps_future_is_completed(const ps_future *f);

/* Waits until the future completes or timeout_ms pass (< 0: no limit,
 * 0: just check). Returns 0 when complete, -ETIMEDOUT, or -EINVAL for NULL.
 * Does not release the future. */
int ps_future_wait(ps_future *f, long timeout_ms);

/* The user state given to begin. */
void *ps_future_state(const ps_future *f);

/* Waits for completion (no limit), stores fn's result in *result (result
 * may be NULL), releases the caller's reference and sets *fp to NULL.
 * Returns 0, or -EINVAL when fp or *fp is NULL (so a second end through the
 * same variable is refused). Ending one future twice through two copies of
 * the handle is undefined. */
int ps_future_end(ps_future **fp, void **result);

#ifdef __cplusplus
}
#endif

#endif
