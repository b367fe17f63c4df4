/*
 * The kv store: a hash table of items split into lock stripes, each with its
 * own table, LRU list and counters, under one byte budget.
 *
 * Locks. A key's stripe is picked by bits 32.. of its 64-bit hash (its
 * bucket by the low 32 bits). A stripe's mutex protects everything in the
 * stripe: its bucket array, its LRU list, its items (every field of them)
 * and its counters. No thread waits for a second stripe's mutex while it
 * holds one: evicting from another stripe takes that one with trylock only,
 * and stats and sweeps take one stripe at a time. flush_lock orders
 * flush_all calls and is never held together with a stripe mutex.
 *
 * Memory. `used` is the bytes charged for all items (kv_store_item_cost
 * each); it never exceeds `limit`. A store charges before it links (reserve:
 * a CAS loop, evicting LRU items until the charge fits) and an unlink
 * uncharges, so concurrent stores cannot push it past the limit.
 *
 * Returning memory. glibc keeps what an item's free gives back in the arena
 * it came from, and gives it only to threads that use that arena: with
 * workers spread over several arenas, each grows to its own high-water
 * mark of items, and the process to a multiple of the budget. `freed`
 * counts the bytes of items unlinked since the last kv_store_trim; past
 * trim_step (a sixteenth of the budget, at least KV_TRIM_STEP_MIN) the
 * module is told (kv_store_trim_due) to hand the free pages back
 * (malloc_trim), so resident memory follows the items that live.
 */
#define _GNU_SOURCE /* CLOCK_REALTIME_COARSE */

#include "store.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct kv_item {
    struct kv_item *hnext; /* next in the bucket's chain */
    struct kv_item *newer; /* LRU neighbours; NULL at the ends */
    struct kv_item *older;
    uint64_t cas;
    uint32_t hash;    /* low 32 bits of the key's hash */
    uint32_t exptime; /* absolute unix seconds; 0: never */
    uint32_t stored;  /* when the value was written (delayed flush_all) */
    uint32_t flags;   /* the client's */
    uint32_t nbytes;  /* value length */
    uint8_t nkey;     /* key length, 1..KV_KEY_MAX */
    uint8_t fetched;  /* read since stored (for *_unfetched) */
    /* One for the table while linked, one per kv_store_hold: the last to
     * let go frees it. Taken under the stripe's lock (a hit), dropped from
     * any thread (kv_store_release). Fills what was padding. */
    _Atomic uint16_t refs;
    char data[];      /* key, then value */
} kv_item;

/* Per-stripe counters; summed by kv_store_stats_get. */
typedef struct counters {
    uint64_t total_items;
    uint64_t cmd_get, get_hits, get_misses, get_expired, get_flushed;
    uint64_t cmd_set, cmd_touch, touch_hits, touch_misses;
    uint64_t delete_hits, delete_misses, incr_hits, incr_misses, decr_hits, decr_misses;
    uint64_t cas_hits, cas_misses, cas_badval;
    uint64_t store_too_large, store_no_memory;
    uint64_t evictions, evicted_unfetched, expired_unfetched, reclaimed;
    uint64_t lock_waits;
} counters;

typedef struct stripe {
    _Alignas(64) pthread_mutex_t lock; /* protects all below; own cache lines */
    kv_item **buckets;
    size_t mask;      /* buckets - 1, buckets a power of two */
    size_t count;     /* items linked */
    size_t sweep_pos; /* bucket where the next sweep of this stripe starts */
    kv_item *newest, *oldest;
    uint64_t cas_seq;
    counters c;
} stripe;

struct kv_store {
    stripe *stripes;
    unsigned nstripes;
    unsigned cas_shift; /* log2(nstripes): a cas unique's stripe bits */
    size_t limit;
    size_t item_size_max;
    uint64_t seed;
    kv_clock_fn *clock;
    void *clock_arg;
    _Atomic size_t used;
    /* Bytes of items unlinked since the last trim (relaxed: a hint), how
     * many make a trim due, and whether one was asked for and not yet done
     * (the caller that sets it wakes the trimmer; kv_store_trim clears it). */
    _Atomic size_t freed;
    size_t trim_step;
    _Atomic bool trim_asked;
    _Atomic uint64_t trims;   /* kv_store_trim calls, */
    _Atomic uint64_t trim_us; /* and the microseconds they took */
    /* Flush markers, written under flush_lock, read by every access with
     * relaxed loads (an access racing with flush_all may see either). Items
     * stored before dead_before are invalid; items stored before pending_at
     * are invalid once the clock reaches pending_at (0: none). */
    pthread_mutex_t flush_lock;
    _Atomic int64_t dead_before;
    _Atomic int64_t pending_at;
    _Atomic uint64_t cmd_flush;
    _Atomic unsigned sweep_next; /* stripe the next sweep starts at */
    _Atomic unsigned evict_next; /* stripe cross-stripe eviction tries first */
};

enum { ALIVE, EXPIRED, FLUSHED };

/* --- small helpers ------------------------------------------------------ */

static void lock_or_die(pthread_mutex_t *m)
{
    if (pthread_mutex_lock(m) != 0)
        abort();
}

static void unlock_or_die(pthread_mutex_t *m)
{
    if (pthread_mutex_unlock(m) != 0)
        abort();
}

/* Takes the stripe's lock, counting the times it had to wait for it. */
static void stripe_lock(stripe *st)
{
    int rc = pthread_mutex_trylock(&st->lock);
    if (rc == 0)
        return;
    if (rc != EBUSY)
        abort();
    lock_or_die(&st->lock);
    st->c.lock_waits++;
}

/* MurmurHash64A (Austin Appleby, public domain), seeded per store. */
static uint64_t hash_key(uint64_t seed, const char *key, size_t len)
{
    const uint64_t m = 0xc6a4a7935bd1e995ULL;
    const int r = 47;
    uint64_t h = seed ^ (len * m);
    const unsigned char *p = (const unsigned char *)key;
    for (size_t n = len / 8; n > 0; n--, p += 8) {
        uint64_t k;
        memcpy(&k, p, 8);
        k *= m;
        k ^= k >> r;
        k *= m;
        h ^= k;
        h *= m;
    }
    switch (len & 7) {
    case 7: h ^= (uint64_t)p[6] << 48; /* fall through */
    case 6: h ^= (uint64_t)p[5] << 40; /* fall through */
    case 5: h ^= (uint64_t)p[4] << 32; /* fall through */
    case 4: h ^= (uint64_t)p[3] << 24; /* fall through */
    case 3: h ^= (uint64_t)p[2] << 16; /* fall through */
    case 2: h ^= (uint64_t)p[1] << 8;  /* fall through */
    case 1: h ^= (uint64_t)p[0]; h *= m;
    }
    h ^= h >> r;
    h *= m;
    h ^= h >> r;
    return h;
}

static stripe *stripe_of(const kv_store *s, uint64_t h)
{
    return &s->stripes[(h >> 32) & (s->nstripes - 1)];
}

static int64_t default_clock(void *arg)
{
    (void)arg;
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME_COARSE, &ts) != 0)
        return (int64_t)time(NULL);
    return (int64_t)ts.tv_sec;
}

int64_t kv_store_now(const kv_store *s)
{
    return s->clock(s->clock_arg);
}

/* Items keep times as uint32 unix seconds (good until 2106). */
static uint32_t now32(const kv_store *s)
{
    int64_t t = kv_store_now(s);
    return t < 0 ? 0 : t > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)t;
}

/* A client's exptime as an absolute time in *abs (0: never). False when it
 * is already past: negative, or an absolute time not after now. */
static bool expiry_time(int64_t exptime, uint32_t now, uint32_t *abs)
{
    if (exptime == 0) {
        *abs = 0;
        return true;
    }
    if (exptime < 0)
        return false;
    int64_t t = exptime <= KV_RELATIVE_MAX ? (int64_t)now + exptime : exptime;
    if (t <= (int64_t)now)
        return false;
    *abs = t > (int64_t)UINT32_MAX ? UINT32_MAX : (uint32_t)t;
    return true;
}

size_t kv_store_item_cost(size_t nkey, size_t nbytes)
{
    size_t req = sizeof(kv_item) + nkey + nbytes;
    /* glibc serves large requests with mmap: whole pages and a 16-byte
     * header; smaller ones from a chunk of req + 8 rounded up to 16, at
     * least 32. */
    if (req >= 128 * 1024)
        return (req + 16 + 4095) & ~(size_t)4095;
    size_t chunk = (req + 8 + 15) & ~(size_t)15;
    return chunk < 32 ? 32 : chunk;
}

static size_t cost_of(const kv_item *it)
{
    return kv_store_item_cost(it->nkey, it->nbytes);
}

static bool fits(const kv_store *s, size_t nkey, size_t nbytes)
{
    return nbytes <= s->item_size_max && sizeof(kv_item) + nkey + nbytes <= s->item_size_max;
}

static int item_state(const kv_store *s, const kv_item *it, uint32_t now)
{
    if (it->exptime != 0 && it->exptime <= now)
        return EXPIRED;
    int64_t before = atomic_load_explicit(&s->dead_before, memory_order_relaxed);
    int64_t pending = atomic_load_explicit(&s->pending_at, memory_order_relaxed);
    if ((int64_t)it->stored < before)
        return FLUSHED;
    if (pending != 0 && pending <= (int64_t)now && (int64_t)it->stored < pending)
        return FLUSHED;
    return ALIVE;
}

/* A cas unique no other stripe hands out: the stripe's sequence number
 * with the stripe's index in the low bits. Never 0. */
static uint64_t next_cas(const kv_store *s, stripe *st)
{
    return (++st->cas_seq << s->cas_shift) | (uint64_t)(st - s->stripes);
}

/* --- LRU and table, all under the stripe's lock -------------------------- */

static void lru_link(stripe *st, kv_item *it)
{
    it->newer = NULL;
    it->older = st->newest;
    if (st->newest != NULL)
        st->newest->newer = it;
    st->newest = it;
    if (st->oldest == NULL)
        st->oldest = it;
}

static void lru_unlink(stripe *st, kv_item *it)
{
    if (it->newer != NULL)
        it->newer->older = it->older;
    else
        st->newest = it->older;
    if (it->older != NULL)
        it->older->newer = it->newer;
    else
        st->oldest = it->newer;
}

static void lru_bump(stripe *st, kv_item *it)
{
    if (st->newest != it) {
        lru_unlink(st, it);
        lru_link(st, it);
    }
}

/* The chain slot that points at key's item, or NULL. */
static kv_item **find_slot(stripe *st, uint32_t h, const char *key, size_t nkey)
{
    kv_item **pp = &st->buckets[h & st->mask];
    for (kv_item *it; (it = *pp) != NULL; pp = &it->hnext)
        if (it->hash == h && it->nkey == nkey && memcmp(it->data, key, nkey) == 0)
            return pp;
    return NULL;
}

/* Doubles the stripe's table once it holds more items than buckets. A
 * failed allocation just leaves chains longer. */
static void table_grow(stripe *st)
{
    size_t n = (st->mask + 1) * 2;
    if (st->count <= st->mask + 1 || n - 1 > UINT32_MAX)
        return;
    kv_item **b = calloc(n, sizeof *b);
    if (b == NULL)
        return;
    for (size_t i = 0; i <= st->mask; i++) {
        for (kv_item *it = st->buckets[i], *next; it != NULL; it = next) {
            next = it->hnext;
            it->hnext = b[it->hash & (n - 1)];
            b[it->hash & (n - 1)] = it;
        }
    }
    free(st->buckets);
    st->buckets = b;
    st->mask = n - 1;
    st->sweep_pos = 0;
}

static void link_new(stripe *st, kv_item *it)
{
    kv_item **b = &st->buckets[it->hash & st->mask];
    it->hnext = *b;
    *b = it;
    lru_link(st, it);
    st->count++;
    st->c.total_items++;
    table_grow(st);
}

/* Puts nit where old was (same key): its chain slot and the LRU head. */
static void link_instead(stripe *st, kv_item **slot, kv_item *old, kv_item *nit)
{
    nit->hnext = old->hnext;
    *slot = nit;
    lru_unlink(st, old);
    lru_link(st, nit);
    st->c.total_items++;
}

/* Drops a reference: the table's (once unlinked) or a holder's. acq_rel:
 * the thread that frees sees every other holder done with the value. */
static void item_unref(kv_item *it)
{
    if (atomic_fetch_sub_explicit(&it->refs, 1, memory_order_acq_rel) == 1)
        free(it);
}

/* Counts an unlinked item's bytes toward the next trim. A held item is
 * freed later, by its last holder: counted now all the same. */
static void note_freed(kv_store *s, size_t n)
{
    atomic_fetch_add_explicit(&s->freed, n, memory_order_relaxed);
}

bool kv_store_trim_due(kv_store *s)
{
    if (atomic_load_explicit(&s->freed, memory_order_relaxed) < s->trim_step ||
        atomic_load_explicit(&s->trim_asked, memory_order_relaxed))
        return false;
    return !atomic_exchange_explicit(&s->trim_asked, true, memory_order_relaxed);
}

void kv_store_trim(kv_store *s)
{
    /* Restart the count first: what is freed while malloc_trim runs
     * counts toward the next one. */
    atomic_store_explicit(&s->freed, 0, memory_order_relaxed);
    atomic_store_explicit(&s->trim_asked, false, memory_order_relaxed);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    malloc_trim(0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    int64_t us = (b.tv_sec - a.tv_sec) * 1000000 + (b.tv_nsec - a.tv_nsec) / 1000;
    atomic_fetch_add_explicit(&s->trims, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->trim_us, us > 0 ? (uint64_t)us : 0, memory_order_relaxed);
}

bool kv_store_hold(const kv_item_info *info)
{
    kv_item *it = info->item;
    /* Under the stripe's lock, so no other hold races this check. */
    if (atomic_load_explicit(&it->refs, memory_order_relaxed) == UINT16_MAX)
        return false;
    atomic_fetch_add_explicit(&it->refs, 1, memory_order_relaxed);
    return true;
}

void kv_store_release(void *item)
{
    item_unref(item);
}

/* Unlinks it (found at slot) and uncharges its bytes; it is freed now, or
 * by its last holder. */
static void unlink_free(kv_store *s, stripe *st, kv_item **slot, kv_item *it)
{
    *slot = it->hnext;
    lru_unlink(st, it);
    st->count--;
    atomic_fetch_sub_explicit(&s->used, cost_of(it), memory_order_relaxed);
    note_freed(s, cost_of(it));
    item_unref(it);
}

/* Frees an item found dead (state EXPIRED or FLUSHED), counting why. */
static void reclaim(kv_store *s, stripe *st, kv_item **slot, kv_item *it, int state)
{
    st->c.reclaimed++;
    if (state == EXPIRED && !it->fetched)
        st->c.expired_unfetched++;
    unlink_free(s, st, slot, it);
}

/* The slot of key's live item, or NULL: a dead one found is freed, and why
 * it was dead goes to *dead (ALIVE when none was found). */
static kv_item **find_live(kv_store *s, stripe *st, uint32_t h, const char *key, size_t nkey,
                           uint32_t now, int *dead)
{
    *dead = ALIVE;
    kv_item **slot = find_slot(st, h, key, nkey);
    if (slot == NULL)
        return NULL;
    int state = item_state(s, *slot, now);
    if (state == ALIVE)
        return slot;
    *dead = state;
    reclaim(s, st, slot, *slot, state);
    return NULL;
}

/* Frees the least recently used item of st that is not keep. False when
 * there is none. */
static bool evict_one(kv_store *s, stripe *st, const kv_item *keep, uint32_t now)
{
    kv_item *it = st->oldest;
    if (it == keep && it != NULL)
        it = it->newer;
    if (it == NULL)
        return false;
    kv_item **slot = find_slot(st, it->hash, it->data, it->nkey);
    int state = item_state(s, it, now);
    if (state != ALIVE) {
        reclaim(s, st, slot, it, state);
        return true;
    }
    st->c.evictions++;
    if (!it->fetched)
        st->c.evicted_unfetched++;
    unlink_free(s, st, slot, it);
    return true;
}

/* Evicts one item of another stripe than st, whose lock the caller holds.
 * Only trylock: waiting for a second stripe lock could deadlock with a
 * thread doing the same from that stripe. A few passes, since a busy stripe
 * is soon free again. */
static bool evict_elsewhere(kv_store *s, stripe *st, uint32_t now)
{
    for (int pass = 0; pass < 4; pass++) {
        bool busy = false;
        unsigned start = atomic_fetch_add_explicit(&s->evict_next, 1, memory_order_relaxed);
        for (unsigned i = 0; i < s->nstripes; i++) {
            stripe *o = &s->stripes[(start + i) & (s->nstripes - 1)];
            if (o == st)
                continue;
            int rc = pthread_mutex_trylock(&o->lock);
            if (rc == EBUSY) {
                busy = true;
                continue;
            }
            if (rc != 0)
                abort();
            bool done = evict_one(s, o, NULL, now);
            unlock_or_die(&o->lock);
            if (done)
                return true;
        }
        if (!busy)
            return false;
    }
    return false;
}

/* Charges n bytes to the budget, evicting LRU items (of st first, never
 * keep) until they fit. False when nothing more can be evicted. */
static bool reserve(kv_store *s, stripe *st, size_t n, const kv_item *keep, uint32_t now)
{
    for (;;) {
        size_t used = atomic_load_explicit(&s->used, memory_order_relaxed);
        while (used + n <= s->limit) {
            if (atomic_compare_exchange_weak_explicit(&s->used, &used, used + n,
                                                      memory_order_relaxed, memory_order_relaxed))
                return true;
        }
        if (!evict_one(s, st, keep, now) && !evict_elsewhere(s, st, now))
            return false;
    }
}

static void unreserve(kv_store *s, size_t n)
{
    atomic_fetch_sub_explicit(&s->used, n, memory_order_relaxed);
}

static kv_item *item_new(uint32_t h, const char *key, size_t nkey, size_t nbytes)
{
    kv_item *it = malloc(sizeof *it + nkey + nbytes);
    if (it == NULL)
        return NULL;
    memset(it, 0, sizeof *it);
    atomic_init(&it->refs, 1);
    it->hash = h;
    it->nkey = (uint8_t)nkey;
    it->nbytes = (uint32_t)nbytes;
    memcpy(it->data, key, nkey);
    return it;
}

/* --- create / destroy ---------------------------------------------------- */

int kv_store_create(kv_store **out, const kv_store_opts *opts)
{
    kv_store_opts o = opts != NULL ? *opts : (kv_store_opts){0};
    size_t limit = o.memory_bytes != 0 ? o.memory_bytes
                   : o.memory_mb != 0  ? o.memory_mb << 20
                                       : (size_t)64 << 20;
    size_t item_max = o.item_size_max != 0 ? o.item_size_max : (size_t)1 << 20;
    unsigned n = o.stripes != 0 ? o.stripes : 256;
    if ((o.memory_mb != 0 && o.memory_mb > (SIZE_MAX >> 21)) || item_max < 1024 ||
        item_max > limit || item_max > UINT32_MAX || n > 4096 || (n & (n - 1)) != 0)
        return -EINVAL;
    kv_store *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->stripes = aligned_alloc(_Alignof(stripe), n * sizeof(stripe));
    if (s->stripes == NULL) {
        free(s);
        return -ENOMEM;
    }
    memset(s->stripes, 0, n * sizeof(stripe));
    s->nstripes = n;
    while ((1u << s->cas_shift) < n)
        s->cas_shift++;
    s->limit = limit;
    s->item_size_max = item_max;
    s->trim_step = limit / 16 > KV_TRIM_STEP_MIN ? limit / 16 : KV_TRIM_STEP_MIN;
    s->clock = o.clock != NULL ? o.clock : default_clock;
    s->clock_arg = o.clock_arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    s->seed = hash_key((uint64_t)(uintptr_t)s, (const char *)&ts, sizeof ts);
    if (pthread_mutex_init(&s->flush_lock, NULL) != 0) {
        free(s->stripes);
        free(s);
        return -ENOMEM;
    }
    for (unsigned i = 0; i < n; i++) {
        stripe *st = &s->stripes[i];
        st->mask = 15;
        st->buckets = calloc(st->mask + 1, sizeof *st->buckets);
        if (st->buckets == NULL || pthread_mutex_init(&st->lock, NULL) != 0) {
            free(st->buckets);
            s->nstripes = i; /* destroy what was made */
            kv_store_destroy(s);
            return -ENOMEM;
        }
    }
    *out = s;
    return 0;
}

void kv_store_destroy(kv_store *s)
{
    if (s == NULL)
        return;
    for (unsigned i = 0; i < s->nstripes; i++) {
        stripe *st = &s->stripes[i];
        for (kv_item *it = st->newest, *next; it != NULL; it = next) {
            next = it->older;
            free(it);
        }
        free(st->buckets);
        pthread_mutex_destroy(&st->lock);
    }
    pthread_mutex_destroy(&s->flush_lock);
    free(s->stripes);
    free(s);
}

/* --- reads --------------------------------------------------------------- */

/* get and gat. touch: set the expiry to exptime (gat). */
static kv_result fetch(kv_store *s, const char *key, size_t nkey, bool touch, int64_t exptime,
                       kv_value_fn *fn, void *arg)
{
    if (nkey == 0 || nkey > KV_KEY_MAX)
        return KV_NOT_FOUND;
    uint64_t h = hash_key(s->seed, key, nkey);
    stripe *st = stripe_of(s, h);
    uint32_t now = now32(s), abs = 0;
    bool alive = !touch || expiry_time(exptime, now, &abs);
    int dead;
    stripe_lock(st);
    kv_item **slot = find_live(s, st, (uint32_t)h, key, nkey, now, &dead);
    if (touch)
        st->c.cmd_touch++;
    else
        st->c.cmd_get++;
    if (slot == NULL) {
        if (touch)
            st->c.touch_misses++;
        else {
            st->c.get_misses++;
            st->c.get_expired += dead == EXPIRED;
            st->c.get_flushed += dead == FLUSHED;
        }
        unlock_or_die(&st->lock);
        return KV_NOT_FOUND;
    }
    kv_item *it = *slot;
    if (touch)
        st->c.touch_hits++;
    else
        st->c.get_hits++;
    it->fetched = 1;
    lru_bump(st, it);
    if (fn != NULL) {
        kv_item_info info = {it->flags, it->cas, it->nbytes, it};
        fn(arg, &info, it->data + it->nkey);
    }
    if (touch) {
        if (alive)
            it->exptime = abs;
        else
            unlink_free(s, st, slot, it); /* the client has its value; gone now */
    }
    unlock_or_die(&st->lock);
    return KV_OK;
}

kv_result kv_store_get(kv_store *s, const char *key, size_t nkey, kv_value_fn *fn, void *arg)
{
    return fetch(s, key, nkey, false, 0, fn, arg);
}

kv_result kv_store_gat(kv_store *s, const char *key, size_t nkey, int64_t exptime,
                       kv_value_fn *fn, void *arg)
{
    return fetch(s, key, nkey, true, exptime, fn, arg);
}

/* --- writes -------------------------------------------------------------- */

/* Whether mode may go on with old (NULL: absent). Counts the cas outcome. */
static kv_result check_mode(stripe *st, const kv_put *p, kv_item *old)
{
    switch (p->mode) {
    case KV_SET:
        return KV_OK;
    case KV_ADD:
        if (old != NULL)
            lru_bump(st, old); /* memcached: a failed add still promotes */
        return old == NULL ? KV_OK : KV_NOT_STORED;
    case KV_REPLACE:
    case KV_APPEND:
    case KV_PREPEND:
        return old != NULL ? KV_OK : KV_NOT_STORED;
    case KV_CAS:
        if (old == NULL) {
            st->c.cas_misses++;
            return KV_NOT_FOUND;
        }
        if (old->cas != p->cas) {
            st->c.cas_badval++;
            return KV_EXISTS;
        }
        st->c.cas_hits++;
        return KV_OK;
    }
    return KV_NOT_STORED;
}

/* The failure of a put that could not get its memory or size. */
static kv_result put_refused(kv_store *s, stripe *st, const kv_put *p, kv_item **slot,
                             kv_result why)
{
    if (why == KV_TOO_LARGE)
        st->c.store_too_large++;
    else
        st->c.store_no_memory++;
    if (p->mode == KV_SET && slot != NULL)
        unlink_free(s, st, slot, *slot);
    if (p->mode == KV_APPEND || p->mode == KV_PREPEND)
        return KV_NOT_STORED;
    return why;
}

kv_result kv_store_put(kv_store *s, const kv_put *p, uint64_t *cas_out)
{
    if (p->nkey == 0 || p->nkey > KV_KEY_MAX)
        return KV_NOT_STORED;
    bool concat = p->mode == KV_APPEND || p->mode == KV_PREPEND;
    uint64_t h = hash_key(s->seed, p->key, p->nkey);
    stripe *st = stripe_of(s, h);
    uint32_t now = now32(s), abs = 0;
    bool alive = concat || expiry_time(p->exptime, now, &abs);
    /* Everything but append/prepend builds its item before taking the lock:
     * malloc and the value's copy are the slow part. */
    kv_item *nit = NULL;
    bool big = !fits(s, p->nkey, p->nbytes);
    if (!concat && !big && alive) {
        nit = item_new((uint32_t)h, p->key, p->nkey, p->nbytes);
        if (nit != NULL) {
            memcpy(nit->data + p->nkey, p->value, p->nbytes);
            nit->flags = p->flags;
            nit->exptime = abs;
        }
    }
    int dead;
    stripe_lock(st);
    st->c.cmd_set++;
    kv_item **slot = find_live(s, st, (uint32_t)h, p->key, p->nkey, now, &dead);
    kv_item *old = slot != NULL ? *slot : NULL;
    kv_result r;
    if (big && !concat) { /* memcached refuses at allocation, before anything */
        r = put_refused(s, st, p, slot, KV_TOO_LARGE);
        goto out;
    }
    r = check_mode(st, p, old);
    if (r != KV_OK)
        goto out;
    size_t nbytes = concat ? old->nbytes + p->nbytes : p->nbytes;
    if (!fits(s, p->nkey, nbytes)) {
        r = put_refused(s, st, p, slot, KV_TOO_LARGE);
        goto out;
    }
    uint64_t cas = next_cas(s, st);
    if (!alive) { /* stored and at once expired: nothing to keep */
        if (old != NULL)
            unlink_free(s, st, slot, old);
        st->c.total_items++;
        if (cas_out != NULL)
            *cas_out = cas;
        goto out;
    }
    size_t cost = kv_store_item_cost(p->nkey, nbytes), old_cost = old ? cost_of(old) : 0;
    size_t need = cost > old_cost ? cost - old_cost : 0;
    if (concat) {
        nit = item_new((uint32_t)h, p->key, p->nkey, nbytes);
        if (nit != NULL) {
            const char *ov = old->data + old->nkey;
            char *v = nit->data + p->nkey;
            bool app = p->mode == KV_APPEND;
            memcpy(v + (app ? 0 : p->nbytes), ov, old->nbytes);
            memcpy(v + (app ? old->nbytes : 0), p->value, p->nbytes);
            nit->flags = old->flags;
            nit->exptime = old->exptime;
        }
    }
    bool room = nit != NULL && reserve(s, st, need, old, now);
    /* reserve may have evicted items of this stripe, old's neighbours in its
     * chain among them (slot may point into one): find old's slot again. */
    slot = old != NULL ? find_slot(st, (uint32_t)h, p->key, p->nkey) : NULL;
    if (!room) {
        r = put_refused(s, st, p, slot, KV_NO_MEMORY);
        goto out;
    }
    nit->cas = cas;
    nit->stored = now;
    if (old != NULL) {
        link_instead(st, slot, old, nit);
        unreserve(s, old_cost + need - cost); /* old's charge, less what nit took over */
        note_freed(s, old_cost);
        item_unref(old);
    } else {
        link_new(st, nit);
    }
    nit = NULL;
    if (cas_out != NULL)
        *cas_out = cas;
out:
    unlock_or_die(&st->lock);
    free(nit);
    return r;
}

kv_result kv_store_admit(kv_store *s, kv_put_mode mode, const char *key, size_t nkey,
                         size_t nbytes)
{
    if (fits(s, nkey, nbytes))
        return KV_OK;
    if (nkey == 0 || nkey > KV_KEY_MAX)
        return KV_TOO_LARGE;
    uint64_t h = hash_key(s->seed, key, nkey);
    stripe *st = stripe_of(s, h);
    stripe_lock(st);
    st->c.store_too_large++;
    kv_item **slot = find_slot(st, (uint32_t)h, key, nkey);
    if (mode == KV_SET && slot != NULL)
        unlink_free(s, st, slot, *slot);
    unlock_or_die(&st->lock);
    return KV_TOO_LARGE;
}

kv_result kv_store_delete(kv_store *s, const char *key, size_t nkey)
{
    if (nkey == 0 || nkey > KV_KEY_MAX)
        return KV_NOT_FOUND;
    uint64_t h = hash_key(s->seed, key, nkey);
    stripe *st = stripe_of(s, h);
    uint32_t now = now32(s);
    int dead;
    stripe_lock(st);
    kv_item **slot = find_live(s, st, (uint32_t)h, key, nkey, now, &dead);
    if (slot != NULL) {
        unlink_free(s, st, slot, *slot);
        st->c.delete_hits++;
    } else {
        st->c.delete_misses++;
    }
    unlock_or_die(&st->lock);
    return slot != NULL ? KV_OK : KV_NOT_FOUND;
}

static bool is_space(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

/* The value as memcached's incr reads it (strtoull and its checks): white
 * space, an optional '+', at least one digit, no overflow, then the end,
 * white space or a NUL. */
static bool parse_counter(const char *v, size_t n, uint64_t *out)
{
    size_t i = 0;
    while (i < n && is_space(v[i]))
        i++;
    if (i < n && v[i] == '+')
        i++;
    if (i == n || v[i] < '0' || v[i] > '9')
        return false;
    uint64_t x = 0;
    for (; i < n && v[i] >= '0' && v[i] <= '9'; i++) {
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    if (i < n && !is_space(v[i]) && v[i] != '\0')
        return false;
    *out = x;
    return true;
}

kv_result kv_store_arith(kv_store *s, const char *key, size_t nkey, bool incr, uint64_t delta,
                         uint64_t *value)
{
    if (nkey == 0 || nkey > KV_KEY_MAX)
        return KV_NOT_FOUND;
    uint64_t h = hash_key(s->seed, key, nkey);
    stripe *st = stripe_of(s, h);
    uint32_t now = now32(s);
    int dead;
    kv_result r = KV_OK;
    stripe_lock(st);
    kv_item **slot = find_live(s, st, (uint32_t)h, key, nkey, now, &dead);
    if (slot == NULL) {
        if (incr)
            st->c.incr_misses++;
        else
            st->c.decr_misses++;
        unlock_or_die(&st->lock);
        return KV_NOT_FOUND;
    }
    kv_item *it = *slot;
    uint64_t v;
    if (!parse_counter(it->data + nkey, it->nbytes, &v)) {
        unlock_or_die(&st->lock);
        return KV_NON_NUMERIC;
    }
    if (incr) {
        v += delta; /* wraps at 2^64, as memcached */
        st->c.incr_hits++;
    } else {
        v = delta > v ? 0 : v - delta;
        st->c.decr_hits++;
    }
    char text[24];
    size_t n = 0;
    for (uint64_t x = v; n == 0 || x != 0; x /= 10)
        text[sizeof text - ++n] = (char)('0' + x % 10);
    const char *digits = text + sizeof text - n;
    lru_bump(st, it);
    /* In place only while nobody holds the value to send it. */
    if (n == it->nbytes && atomic_load_explicit(&it->refs, memory_order_acquire) == 1) {
        memcpy(it->data + nkey, digits, n);
        it->cas = next_cas(s, st);
        it->stored = now;
        it->fetched = 1;
    } else {
        size_t cost = kv_store_item_cost(nkey, n), old_cost = cost_of(it);
        size_t need = cost > old_cost ? cost - old_cost : 0;
        kv_item *nit = item_new((uint32_t)h, key, nkey, n);
        if (nit == NULL || !reserve(s, st, need, it, now)) {
            free(nit);
            st->c.store_no_memory++;
            r = KV_NO_MEMORY;
        } else {
            slot = find_slot(st, (uint32_t)h, key, nkey);
            memcpy(nit->data + nkey, digits, n);
            nit->flags = it->flags;
            nit->exptime = it->exptime;
            nit->stored = now;
            nit->fetched = 1;
            nit->cas = next_cas(s, st);
            link_instead(st, slot, it, nit);
            st->c.total_items--; /* not a store of the client's */
            unreserve(s, old_cost + need - cost);
            note_freed(s, old_cost);
            item_unref(it);
        }
    }
    unlock_or_die(&st->lock);
    if (r == KV_OK && value != NULL)
        *value = v;
    return r;
}

kv_result kv_store_touch(kv_store *s, const char *key, size_t nkey, int64_t exptime)
{
    return fetch(s, key, nkey, true, exptime, NULL, NULL);
}

/* --- flush, sweep, stats ------------------------------------------------- */

void kv_store_flush(kv_store *s, int64_t delay)
{
    uint32_t now = now32(s), at = 0;
    bool later = delay > 0 && expiry_time(delay, now, &at);
    lock_or_die(&s->flush_lock);
    atomic_fetch_add_explicit(&s->cmd_flush, 1, memory_order_relaxed);
    /* A delayed flush that has taken effect stays in force when a new one
     * replaces it: fold it into dead_before first. */
    int64_t pending = atomic_load_explicit(&s->pending_at, memory_order_relaxed);
    int64_t before = atomic_load_explicit(&s->dead_before, memory_order_relaxed);
    if (pending != 0 && pending <= (int64_t)now && pending > before)
        atomic_store_explicit(&s->dead_before, pending, memory_order_relaxed);
    atomic_store_explicit(&s->pending_at, later ? (int64_t)at : 0, memory_order_relaxed);
    unlock_or_die(&s->flush_lock);
    if (later)
        return;
    /* Now: free every item, a stripe at a time. A store into a stripe
     * already emptied happened after the flush; that is its order. */
    for (unsigned i = 0; i < s->nstripes; i++) {
        stripe *st = &s->stripes[i];
        stripe_lock(st);
        for (size_t b = 0; b <= st->mask; b++)
            while (st->buckets[b] != NULL)
                unlink_free(s, st, &st->buckets[b], st->buckets[b]);
        unlock_or_die(&st->lock);
    }
}

size_t kv_store_sweep(kv_store *s, size_t max_items)
{
    uint32_t now = now32(s);
    size_t freed = 0, steps = 0;
    for (unsigned n = 0; n < s->nstripes && steps < max_items; n++) {
        unsigned i = atomic_fetch_add_explicit(&s->sweep_next, 1, memory_order_relaxed);
        stripe *st = &s->stripes[i & (s->nstripes - 1)];
        stripe_lock(st);
        size_t b = 0;
        for (; b <= st->mask && steps < max_items; b++, steps++) {
            kv_item **pp = &st->buckets[(st->sweep_pos + b) & st->mask];
            while (*pp != NULL) {
                int state = item_state(s, *pp, now);
                steps++;
                if (state == ALIVE) {
                    pp = &(*pp)->hnext;
                } else {
                    reclaim(s, st, pp, *pp, state);
                    freed++;
                }
            }
        }
        st->sweep_pos = (st->sweep_pos + b) & st->mask;
        unlock_or_die(&st->lock);
    }
    return freed;
}

void kv_store_stats_get(kv_store *s, kv_store_stats *out)
{
    memset(out, 0, sizeof *out);
    for (unsigned i = 0; i < s->nstripes; i++) {
        stripe *st = &s->stripes[i];
        stripe_lock(st);
        const counters *c = &st->c;
        out->curr_items += st->count;
        out->hash_buckets += st->mask + 1;
        out->total_items += c->total_items;
        out->cmd_get += c->cmd_get;
        out->get_hits += c->get_hits;
        out->get_misses += c->get_misses;
        out->get_expired += c->get_expired;
        out->get_flushed += c->get_flushed;
        out->cmd_set += c->cmd_set;
        out->cmd_touch += c->cmd_touch;
        out->touch_hits += c->touch_hits;
        out->touch_misses += c->touch_misses;
        out->delete_hits += c->delete_hits;
        out->delete_misses += c->delete_misses;
        out->incr_hits += c->incr_hits;
        out->incr_misses += c->incr_misses;
        out->decr_hits += c->decr_hits;
        out->decr_misses += c->decr_misses;
        out->cas_hits += c->cas_hits;
        out->cas_misses += c->cas_misses;
        out->cas_badval += c->cas_badval;
        out->store_too_large += c->store_too_large;
        out->store_no_memory += c->store_no_memory;
        out->evictions += c->evictions;
        out->evicted_unfetched += c->evicted_unfetched;
        out->expired_unfetched += c->expired_unfetched;
        out->reclaimed += c->reclaimed;
        out->lock_waits += c->lock_waits;
        unlock_or_die(&st->lock);
    }
    out->bytes = atomic_load_explicit(&s->used, memory_order_relaxed);
    out->limit_maxbytes = s->limit;
    out->cmd_flush = atomic_load_explicit(&s->cmd_flush, memory_order_relaxed);
    out->trims = atomic_load_explicit(&s->trims, memory_order_relaxed);
    out->trim_us = atomic_load_explicit(&s->trim_us, memory_order_relaxed);
    out->stripes = s->nstripes;
    out->item_size_max = s->item_size_max;
}
