#ifndef KV_STORE_H
#define KV_STORE_H

/*
 * The kv module's item store: a memcached-compatible hash table of items
 * (key, binary-safe value, 32-bit client flags, expiry time, 64-bit cas
 * unique) bounded by a byte budget with LRU eviction. Pure: no sockets, no
 * protocol text. Safe to call from any number of threads at once.
 *
 * Keys are 1..KV_KEY_MAX bytes; the store does not look at their bytes
 * (the protocol parser refuses spaces and control characters).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KV_KEY_MAX 250
/* Expiry times up to this many seconds are relative to now; larger ones are
 * absolute unix times (memcached's REALTIME_MAXDELTA, 30 days). */
#define KV_RELATIVE_MAX 2592000

typedef struct kv_store kv_store;

/* What an operation did. KV_OK is the success of each (STORED, DELETED,
 * TOUCHED, a hit); the others are memcached's other answers. */
typedef enum kv_result {
    KV_OK = 0,
    KV_NOT_STORED,  /* add of a present key; replace/append/prepend of an absent one */
    KV_EXISTS,      /* cas: the item changed since the client read it */
    KV_NOT_FOUND,   /* absent (or expired, or flushed) */
    KV_NON_NUMERIC, /* incr/decr of a value that is not a decimal uint64 */
    KV_TOO_LARGE,   /* key + value + item header > item_size_max */
    KV_NO_MEMORY,   /* nothing could be evicted to make room */
} kv_result;

/* The clock: unix seconds. Tests pass their own to move time by hand. */
typedef int64_t kv_clock_fn(void *arg);

typedef struct kv_store_opts {
    size_t memory_mb;     /* byte budget in MiB for items (their header, key,
                           * value and malloc's overhead); 0: 64 */
    size_t item_size_max; /* largest item in bytes (header + key + value);
                           * 0: 1 MiB. At least 1024, at most the budget. */
    unsigned stripes;     /* lock stripes, a power of two 1..4096; 0: 256 */
    kv_clock_fn *clock;   /* NULL: CLOCK_REALTIME_COARSE */
    void *clock_arg;
    size_t memory_bytes;  /* for tests: a budget in bytes, overrides memory_mb */
} kv_store_opts;

/* Makes a store. opts may be NULL (all defaults). Returns 0 with *out set,
 * -EINVAL for options out of range, or -ENOMEM. */
int kv_store_create(kv_store **out, const kv_store_opts *opts);

/* Frees the store and every item. NULL is ignored. No other call may run. */
void kv_store_destroy(kv_store *s);

/* The store's clock, now (unix seconds). */
int64_t kv_store_now(const kv_store *s);

/* The bytes one item of this key and value length is charged against the
 * budget: its header, key and value, rounded as glibc's malloc rounds, plus
 * malloc's own header. */
size_t kv_store_item_cost(size_t nkey, size_t nbytes);

/* Freed item bytes that make a trim due: a sixteenth of the budget, at
 * least this (a trim walks the allocator's free lists: not for every few
 * items of a small store). */
#define KV_TRIM_STEP_MIN ((size_t)2 << 20)

/* True, to one caller, once the items freed since the last kv_store_trim
 * add up to a sixteenth of the budget (at least KV_TRIM_STEP_MIN): that
 * caller wakes whoever trims. False again until kv_store_trim has run.
 * Cheap: two relaxed loads when no trim is due. */
bool kv_store_trim_due(kv_store *s);

/* Hands the allocator's free pages back to the system (glibc's
 * malloc_trim(0): every arena's free chunks, a page at a time) and starts
 * the count of freed bytes again. malloc's arenas keep what items free for
 * the threads of that arena only: without this the process grew to 2 to
 * 2.6 times the budget (kv README). It walks the free lists, so call it from a
 * thread of the module's own, not a worker. Any thread, no store lock. */
void kv_store_trim(kv_store *s);

/* What a hit reports about the item. */
typedef struct kv_item_info {
    uint32_t flags;
    uint64_t cas;
    size_t nbytes; /* value length */
    void *item;    /* the item, for kv_store_hold during the callback */
} kv_item_info;

/* Called on a hit with the item's value, while the store holds the lock of
 * the item's stripe: copy what you need, or hold the item, and return. It
 * must not call into the store but for kv_store_hold (anything else would
 * deadlock) and should not block. */
typedef void kv_value_fn(void *arg, const kv_item_info *info, const char *value);

/* From a kv_value_fn: keeps the item, and so the value fn was given,
 * valid and unchanged after the callback, until kv_store_release(item) —
 * to send a value by reference instead of copying it. An item replaced or
 * deleted meanwhile is unlinked and uncharged at once and freed at its
 * release: held items are outside the budget. Returns false when the item
 * is held 65,535 times already (copy the value then). */
bool kv_store_hold(const kv_item_info *info);

/* Lets go of an item kv_store_hold kept; any thread, no lock. */
void kv_store_release(void *item);

/* get: KV_OK after fn (may be NULL) has seen the value; KV_NOT_FOUND. A hit
 * makes the item the most recently used one. */
kv_result kv_store_get(kv_store *s, const char *key, size_t nkey, kv_value_fn *fn, void *arg);

/* gat: as get, and sets the item's expiry to exptime (as touch does). */
kv_result kv_store_gat(kv_store *s, const char *key, size_t nkey, int64_t exptime,
                       kv_value_fn *fn, void *arg);

typedef enum kv_put_mode {
    KV_SET,     /* store */
    KV_ADD,     /* only when absent; else KV_NOT_STORED */
    KV_REPLACE, /* only when present; else KV_NOT_STORED */
    KV_APPEND,  /* after the present value, keeping its flags and exptime */
    KV_PREPEND, /* before it, likewise */
    KV_CAS,     /* only when the item's cas is still `cas`: else KV_EXISTS,
                 * or KV_NOT_FOUND when absent */
} kv_put_mode;

/* One storage command. The store copies key and value. */
typedef struct kv_put {
    kv_put_mode mode;
    const char *key;
    size_t nkey;
    const void *value;
    size_t nbytes;
    uint32_t flags;  /* ignored by append/prepend */
    int64_t exptime; /* 0 never; 1..KV_RELATIVE_MAX seconds from now; larger:
                      * unix time; negative: already expired. Ignored by
                      * append/prepend. */
    uint64_t cas;    /* KV_CAS only */
} kv_put;

/* Stores as p says. Returns KV_OK (STORED) and the item's new cas in *cas_out
 * (may be NULL), or another result. A set that fails with KV_TOO_LARGE or
 * KV_NO_MEMORY also drops the key's old value (memcached does: a failed set
 * must not leave stale data); append/prepend that cannot fit answer
 * KV_NOT_STORED, as memcached does. */
kv_result kv_store_put(kv_store *s, const kv_put *p, uint64_t *cas_out);

/* Decides, before the module reads a storage command's data block, whether
 * an item of nkey + nbytes can be stored at all: KV_OK, or KV_TOO_LARGE
 * (then the module swallows the block and sends SERVER_ERROR object too
 * large for cache). For KV_SET a refusal drops the key's old value, as
 * kv_store_put does. Counts store_too_large. */
kv_result kv_store_admit(kv_store *s, kv_put_mode mode, const char *key, size_t nkey,
                         size_t nbytes);

/* delete: KV_OK (DELETED) or KV_NOT_FOUND. */
kv_result kv_store_delete(kv_store *s, const char *key, size_t nkey);

/* incr (incr true) or decr by delta. The value must hold a decimal uint64
 * as memcached's strtoull reads it: white space, an optional '+', digits,
 * then the end, white space or a NUL.
 * incr wraps at 2^64; decr stops at 0. The new value is stored as its
 * decimal text (so "99" incr 1 is the 3-byte "100", "100" decr 1 is "99"),
 * with a new cas, flags and exptime kept. Returns KV_OK with the new value
 * in *value, KV_NOT_FOUND, KV_NON_NUMERIC, or KV_NO_MEMORY. */
kv_result kv_store_arith(kv_store *s, const char *key, size_t nkey, bool incr, uint64_t delta,
                         uint64_t *value);

/* touch: sets the expiry (as kv_put's exptime). KV_OK (TOUCHED) or
 * KV_NOT_FOUND. The cas does not change (memcached). */
kv_result kv_store_touch(kv_store *s, const char *key, size_t nkey, int64_t exptime);

/* flush_all: with delay <= 0 every item goes now (and its memory is freed
 * now); else every item stored before the time delay names (as an exptime:
 * relative up to 30 days, else absolute) becomes invalid at that time. A
 * new flush_all replaces a pending delayed one. */
void kv_store_flush(kv_store *s, int64_t delay);

/* Frees expired and flushed items, looking at up to about max_items items
 * and table slots from where the last sweep stopped (one stripe locked at
 * a time). Returns how many it freed. For a timer of the module's (items
 * are also freed lazily when accessed or reached by eviction). */
size_t kv_store_sweep(kv_store *s, size_t max_items);

/* Counters, summed over the stripes when read (names as memcached's STAT). */
typedef struct kv_store_stats {
    uint64_t curr_items, total_items, bytes, limit_maxbytes;
    uint64_t cmd_get, get_hits, get_misses, get_expired, get_flushed;
    uint64_t cmd_set, cmd_touch, touch_hits, touch_misses, cmd_flush;
    uint64_t delete_hits, delete_misses, incr_hits, incr_misses, decr_hits, decr_misses;
    uint64_t cas_hits, cas_misses, cas_badval;
    uint64_t store_too_large, store_no_memory;
    uint64_t evictions, evicted_unfetched, expired_unfetched, reclaimed;
    /* Not memcached's: lock acquisitions of a stripe that found it held. */
    uint64_t lock_waits;
    uint64_t hash_buckets; /* bucket slots of all stripes' tables */
    uint64_t trims;        /* kv_store_trim calls */
    uint64_t trim_us;      /* microseconds they took */
    uint64_t stripes, item_size_max;
} kv_store_stats;

/* Fills *st. Takes each stripe's lock in turn: a consistent sum per stripe,
 * not a snapshot of the whole store. */
void kv_store_stats_get(kv_store *s, kv_store_stats *st);

#ifdef __cplusplus
}
#endif

#endif
