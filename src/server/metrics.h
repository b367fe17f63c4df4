#ifndef POOLSRV_SERVER_METRICS_H
#define POOLSRV_SERVER_METRICS_H

/* The Prometheus text exposition of the server's counters, and the handler
 * latency histogram it includes. Shared inside the library; not public. */

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "poolsrv/pool.h"
#include "poolsrv/server.h"

/* Bucket upper bounds, in nanoseconds: 10 us to 10 s in 1-2.5-5 steps
 * (ps__hist_bounds_ns), then +Inf. A value equal to a bound counts in that
 * bound's bucket (Prometheus `le`). */
#define PS__HIST_BOUNDS 19
#define PS__HIST_BUCKETS (PS__HIST_BOUNDS + 1) /* the last one is +Inf */
extern const uint64_t ps__hist_bounds_ns[PS__HIST_BOUNDS];

/* A value above this (about 11.6 days: no handler call, but what a clock
 * stepping back gives as a difference) counts in +Inf and adds only this
 * much to the sum, so one bad reading cannot wrap it. Nanoseconds. */
#define PS__HIST_SUM_MAX_NS UINT64_C(1000000000000000)

/* A histogram that many threads observe at once, without a lock: each
 * observation is two relaxed fetch_adds, one on its (non-cumulative) bucket
 * and one on the sum. The count is not stored: it is the sum of the buckets,
 * so a snapshot's +Inf bucket always equals its count. 21 counters of 8
 * bytes, aligned to a cache line: 192 bytes (3 lines), so that histograms
 * kept side by side (one per stripe of the counters) never share a line.
 * Zeroed memory is not enough for C11 atomics: start with ps__hist_init. */
typedef struct ps__hist {
    _Alignas(64) atomic_uint_fast64_t bucket[PS__HIST_BUCKETS];
    atomic_uint_fast64_t sum_ns; /* nanoseconds: a fast handler's call adds more than 0 */
} ps__hist;

/* A plain copy of one or more histograms, summed; start from {0}. */
typedef struct ps__hist_snapshot {
    uint64_t bucket[PS__HIST_BUCKETS]; /* non-cumulative, as in ps__hist */
    uint64_t sum_ns;
    uint64_t count; /* the sum of bucket[] */
} ps__hist_snapshot;

/* Sets every counter of h to 0. Not concurrent with anything on h. */
void ps__hist_init(ps__hist *h);

/* Counts one value of nsec nanoseconds. Any thread, any number at once;
 * relaxed atomics, no lock, no allocation. */
void ps__hist_observe(ps__hist *h, uint64_t nsec);

/* Adds a snapshot of h to *into (sum the stripes by calling it for each).
 * Any thread, while others observe h: each counter is read atomically, but
 * an observation in flight may be in the buckets and not yet in the sum. */
void ps__hist_add(ps__hist_snapshot *into, const ps__hist *h);

/* How the exposition reads a struct's field; one row per field of
 * ps_server_stats and ps_pool_stats (ps__metrics_fields). */
typedef enum ps__metric_type { PS__COUNTER, PS__GAUGE } ps__metric_type;
typedef enum ps__metric_source { PS__FROM_SERVER, PS__FROM_POOL } ps__metric_source;
typedef struct ps__metrics_field {
    const char *name;   /* the family name, "poolsrv_..._total" for counters */
    const char *help;
    ps__metric_type type;
    ps__metric_source from;
    size_t offset;      /* offsetof the field in its struct */
    size_t size;        /* sizeof the field: 4 or 8 */
} ps__metrics_field;

/* The table the renderer walks; sets *n to its length. Static storage. */
const ps__metrics_field *ps__metrics_fields(size_t *n);

/* The value of f in st or ps (whichever f->from names). */
uint64_t ps__metrics_value(const ps__metrics_field *f, const ps_server_stats *st,
                           const ps_pool_stats *ps);

/* What an HTTP reply with ps__metrics_render's text says it is. */
#define PS__METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/*
 * Writes the Prometheus text exposition (format 0.0.4) of st, ps, the
 * handler times (a histogram "poolsrv_handler_seconds"; NULL leaves it out)
 * and poolsrv_build_info into buf, NUL-terminated. Returns the length of the
 * whole text, without the NUL, like snprintf: when that is >= cap the text
 * did not fit, buf holds "" (never part of an exposition; nothing when cap
 * is 0) and a buffer of the returned length + 1 will do. Returns -EINVAL
 * when st or ps is NULL, or buf is NULL and cap is not 0. The caller owns
 * buf. The text is about 6 KiB, 6.8 KiB with every value at its maximum:
 * more than the admin port's 4 KiB replies, under 8 KiB.
 */
int ps__metrics_render(char *buf, size_t cap, const ps_server_stats *st, const ps_pool_stats *ps,
                       const ps__hist_snapshot *handler_time);

#endif
