/*
 * The kv item store: memcached's semantics for every command, expiry with a
 * clock the test sets, LRU eviction and the byte bound, and use from several
 * threads at once. `test_kv_store bench` instead measures throughput and
 * lock waits for several stripe counts (not run by ctest).
 */
#define _GNU_SOURCE /* malloc_usable_size, mallinfo2 */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store.h"

/* --- helpers --------------------------------------------------------------- */

static _Atomic int64_t fake_now = 1000000;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return atomic_load(&fake_now);
}

static void set_clock(int64_t t)
{
    atomic_store(&fake_now, t);
}

static kv_store *make_store(size_t memory_bytes, size_t item_max, unsigned stripes)
{
    kv_store_opts o = {.memory_bytes = memory_bytes, .item_size_max = item_max,
                       .stripes = stripes, .clock = fake_clock};
    kv_store *s = NULL;
    assert_int_equal(kv_store_create(&s, &o), 0);
    return s;
}

typedef struct got {
    char data[4096];
    size_t len;
    kv_item_info info;
} got;

static void copy_value(void *arg, const kv_item_info *info, const char *value)
{
    got *g = arg;
    g->info = *info;
    g->len = info->nbytes < sizeof g->data ? info->nbytes : sizeof g->data;
    memcpy(g->data, value, g->len);
}

static kv_result get(kv_store *s, const char *key, got *g)
{
    memset(g, 0, sizeof *g);
    return kv_store_get(s, key, strlen(key), copy_value, g);
}

static kv_result put(kv_store *s, kv_put_mode mode, const char *key, const char *value,
                     uint32_t flags, int64_t exptime, uint64_t cas, uint64_t *cas_out)
{
    kv_put p = {mode, key, strlen(key), value, strlen(value), flags, exptime, cas};
    return kv_store_put(s, &p, cas_out);
}

static kv_result set(kv_store *s, const char *key, const char *value, int64_t exptime)
{
    return put(s, KV_SET, key, value, 0, exptime, 0, NULL);
}

/* The key's value is text (NUL-terminated in g). */
static void assert_value(kv_store *s, const char *key, const char *want)
{
    got g;
    assert_int_equal(get(s, key, &g), KV_OK);
    g.data[g.len] = '\0';
    assert_string_equal(g.data, want);
    assert_int_equal(g.len, strlen(want));
}

static void assert_absent(kv_store *s, const char *key)
{
    got g;
    assert_int_equal(get(s, key, &g), KV_NOT_FOUND);
}

static kv_store_stats stats(kv_store *s)
{
    kv_store_stats st;
    kv_store_stats_get(s, &st);
    return st;
}

/* --- options --------------------------------------------------------------- */

static void test_create_options(void **state)
{
    (void)state;
    kv_store *s = NULL;
    kv_store_opts bad_stripes = {.stripes = 3};
    assert_int_equal(kv_store_create(&s, &bad_stripes), -EINVAL);
    kv_store_opts too_many = {.stripes = 8192};
    assert_int_equal(kv_store_create(&s, &too_many), -EINVAL);
    kv_store_opts item_over_budget = {.memory_bytes = 4096, .item_size_max = 8192};
    assert_int_equal(kv_store_create(&s, &item_over_budget), -EINVAL);
    kv_store_opts tiny_item = {.item_size_max = 100};
    assert_int_equal(kv_store_create(&s, &tiny_item), -EINVAL);
    assert_null(s);
    assert_int_equal(kv_store_create(&s, NULL), 0);
    kv_store_stats st = stats(s);
    assert_int_equal(st.limit_maxbytes, 64u << 20);
    assert_int_equal(st.item_size_max, 1u << 20);
    assert_int_equal(st.stripes, 256);
    kv_store_destroy(s);
    kv_store_destroy(NULL);
}

/* --- storage commands ------------------------------------------------------ */

static void test_set_get(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    uint64_t cas = 0;
    assert_int_equal(put(s, KV_SET, "k", "hello", 42, 0, 0, &cas), KV_OK);
    assert_true(cas != 0);
    got g;
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(g.info.flags, 42);
    assert_int_equal(g.info.cas, cas);
    assert_int_equal(g.info.nbytes, 5);
    assert_memory_equal(g.data, "hello", 5);
    /* set again: new value, new cas */
    uint64_t cas2 = 0;
    assert_int_equal(put(s, KV_SET, "k", "bye", 7, 0, 0, &cas2), KV_OK);
    assert_true(cas2 != cas);
    assert_value(s, "k", "bye");
    assert_absent(s, "K"); /* keys are case-sensitive bytes */
    assert_int_equal(kv_store_get(s, "k", 1, NULL, NULL), KV_OK);
    /* an empty value is a value */
    assert_int_equal(set(s, "empty", "", 0), KV_OK);
    assert_value(s, "empty", "");
    kv_store_stats st = stats(s);
    assert_int_equal(st.curr_items, 2);
    assert_int_equal(st.total_items, 3);
    assert_int_equal(st.cmd_set, 3);
    assert_int_equal(st.get_hits, 4);
    assert_int_equal(st.get_misses, 1);
    assert_int_equal(st.cmd_get, 5);
    assert_int_equal(st.bytes, kv_store_item_cost(1, 3) + kv_store_item_cost(5, 0));
    kv_store_destroy(s);
}

static void test_binary_value(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    const char value[] = "a\0b\r\nc\r\n\0";
    kv_put p = {KV_SET, "bin", 3, value, sizeof value, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    got g;
    assert_int_equal(get(s, "bin", &g), KV_OK);
    assert_int_equal(g.len, sizeof value);
    assert_memory_equal(g.data, value, sizeof value);
    /* a key with arbitrary bytes (the parser decides what keys may hold) */
    const char key[] = {'x', '\0', 'y'};
    kv_put pk = {KV_SET, key, sizeof key, "v", 1, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &pk, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, key, sizeof key, copy_value, &g), KV_OK);
    assert_int_equal(kv_store_get(s, "x", 1, NULL, NULL), KV_NOT_FOUND);
    kv_store_destroy(s);
}

static void test_key_length(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    char key[252];
    memset(key, 'k', sizeof key);
    kv_put p = {KV_SET, key, 250, "v", 1, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, key, 250, NULL, NULL), KV_OK);
    p.nkey = 251;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_NOT_STORED);
    assert_int_equal(kv_store_get(s, key, 251, NULL, NULL), KV_NOT_FOUND);
    p.nkey = 0;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_NOT_STORED);
    assert_int_equal(stats(s).curr_items, 1);
    kv_store_destroy(s);
}

static void test_add(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    assert_int_equal(put(s, KV_ADD, "k", "first", 0, 0, 0, NULL), KV_OK);
    assert_int_equal(put(s, KV_ADD, "k", "second", 0, 0, 0, NULL), KV_NOT_STORED);
    assert_value(s, "k", "first");
    /* an expired item is absent: add succeeds */
    assert_int_equal(set(s, "e", "old", 5), KV_OK);
    set_clock(atomic_load(&fake_now) + 5);
    assert_int_equal(put(s, KV_ADD, "e", "new", 0, 0, 0, NULL), KV_OK);
    assert_value(s, "e", "new");
    kv_store_destroy(s);
}

static void test_replace(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    assert_int_equal(put(s, KV_REPLACE, "k", "v", 0, 0, 0, NULL), KV_NOT_STORED);
    assert_absent(s, "k");
    assert_int_equal(set(s, "k", "v1", 0), KV_OK);
    assert_int_equal(put(s, KV_REPLACE, "k", "v2", 9, 0, 0, NULL), KV_OK);
    got g;
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(g.info.flags, 9);
    assert_memory_equal(g.data, "v2", 2);
    kv_store_destroy(s);
}

static void test_append_prepend(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    int64_t t0 = atomic_load(&fake_now);
    assert_int_equal(put(s, KV_APPEND, "k", "x", 0, 0, 0, NULL), KV_NOT_STORED);
    assert_int_equal(put(s, KV_PREPEND, "k", "x", 0, 0, 0, NULL), KV_NOT_STORED);
    assert_absent(s, "k");
    uint64_t cas1 = 0, cas2 = 0;
    assert_int_equal(put(s, KV_SET, "k", "mid", 5, 100, 0, &cas1), KV_OK);
    /* flags and exptime of append/prepend are ignored: the item keeps its own */
    assert_int_equal(put(s, KV_APPEND, "k", "_end", 77, 0, 0, &cas2), KV_OK);
    assert_true(cas2 != cas1);
    assert_int_equal(put(s, KV_PREPEND, "k", "start_", 88, 5000, 0, NULL), KV_OK);
    got g;
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(g.info.flags, 5);
    g.data[g.len] = '\0';
    assert_string_equal(g.data, "start_mid_end");
    set_clock(t0 + 99);
    assert_value(s, "k", "start_mid_end");
    set_clock(t0 + 100); /* the set's exptime still holds */
    assert_absent(s, "k");
    /* binary data keeps its bytes */
    kv_put p = {KV_SET, "b", 1, "\0\r\n", 3, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    p.mode = KV_APPEND;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    assert_int_equal(get(s, "b", &g), KV_OK);
    assert_int_equal(g.len, 6);
    assert_memory_equal(g.data, "\0\r\n\0\r\n", 6);
    kv_store_destroy(s);
}

static void test_cas(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    assert_int_equal(put(s, KV_CAS, "k", "v", 0, 0, 1, NULL), KV_NOT_FOUND);
    uint64_t cas = 0, cas2 = 0;
    assert_int_equal(put(s, KV_SET, "k", "v1", 0, 0, 0, &cas), KV_OK);
    assert_int_equal(put(s, KV_CAS, "k", "v2", 3, 0, cas + 1000, NULL), KV_EXISTS);
    assert_value(s, "k", "v1");
    assert_int_equal(put(s, KV_CAS, "k", "v2", 3, 0, cas, &cas2), KV_OK);
    assert_value(s, "k", "v2");
    /* the same cas again: the item changed since */
    assert_int_equal(put(s, KV_CAS, "k", "v3", 0, 0, cas, NULL), KV_EXISTS);
    /* an intervening set changes the cas */
    got g;
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(g.info.cas, cas2);
    assert_int_equal(set(s, "k", "other", 0), KV_OK);
    assert_int_equal(put(s, KV_CAS, "k", "mine", 0, 0, g.info.cas, NULL), KV_EXISTS);
    assert_value(s, "k", "other");
    /* touch keeps the cas; a deleted item's cas is NOT_FOUND */
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(kv_store_touch(s, "k", 1, 100), KV_OK);
    assert_int_equal(put(s, KV_CAS, "k", "after-touch", 0, 0, g.info.cas, NULL), KV_OK);
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_int_equal(kv_store_delete(s, "k", 1), KV_OK);
    assert_int_equal(put(s, KV_CAS, "k", "gone", 0, 0, g.info.cas, NULL), KV_NOT_FOUND);
    kv_store_stats st = stats(s);
    assert_int_equal(st.cas_misses, 2);
    assert_int_equal(st.cas_hits, 2);
    assert_int_equal(st.cas_badval, 3);
    kv_store_destroy(s);
}

static void test_cas_unique(void **state)
{
    (void)state;
    kv_store *s = make_store(4 << 20, 0, 16);
    enum { N = 2000 };
    static uint64_t seen[N];
    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(put(s, KV_SET, key, "v", 0, 0, 0, &seen[i]), KV_OK);
        assert_true(seen[i] != 0);
        for (int j = 0; j < i; j++)
            assert_true(seen[j] != seen[i]);
    }
    kv_store_destroy(s);
}

static void test_delete(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    assert_int_equal(kv_store_delete(s, "k", 1), KV_NOT_FOUND);
    assert_int_equal(set(s, "k", "v", 0), KV_OK);
    assert_int_equal(kv_store_delete(s, "k", 1), KV_OK);
    assert_absent(s, "k");
    assert_int_equal(kv_store_delete(s, "k", 1), KV_NOT_FOUND);
    /* an expired item is not found, and its memory goes */
    assert_int_equal(set(s, "e", "v", 1), KV_OK);
    set_clock(atomic_load(&fake_now) + 1);
    assert_int_equal(kv_store_delete(s, "e", 1), KV_NOT_FOUND);
    kv_store_stats st = stats(s);
    assert_int_equal(st.delete_hits, 1);
    assert_int_equal(st.delete_misses, 3);
    assert_int_equal(st.curr_items, 0);
    assert_int_equal(st.bytes, 0);
    kv_store_destroy(s);
}

static void test_incr_decr(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    uint64_t v = 12345;
    assert_int_equal(kv_store_arith(s, "n", 1, true, 1, &v), KV_NOT_FOUND);
    assert_int_equal(kv_store_arith(s, "n", 1, false, 1, &v), KV_NOT_FOUND);
    assert_int_equal(v, 12345);
    /* "99" + 1 grows to "100"; flags and cas */
    uint64_t cas = 0;
    assert_int_equal(put(s, KV_SET, "n", "99", 6, 0, 0, &cas), KV_OK);
    assert_int_equal(kv_store_arith(s, "n", 1, true, 1, &v), KV_OK);
    assert_int_equal(v, 100);
    got g;
    assert_int_equal(get(s, "n", &g), KV_OK);
    assert_int_equal(g.len, 3);
    assert_memory_equal(g.data, "100", 3);
    assert_int_equal(g.info.flags, 6);
    assert_true(g.info.cas != cas);
    /* shrinks back: "100" - 1 is "99", two bytes (memcached pads in place) */
    assert_int_equal(kv_store_arith(s, "n", 1, false, 1, &v), KV_OK);
    assert_int_equal(v, 99);
    assert_value(s, "n", "99");
    /* same length: in place, still a new cas */
    assert_int_equal(get(s, "n", &g), KV_OK);
    assert_int_equal(kv_store_arith(s, "n", 1, false, 9, &v), KV_OK);
    assert_int_equal(v, 90);
    uint64_t before = g.info.cas;
    assert_int_equal(get(s, "n", &g), KV_OK);
    assert_true(g.info.cas != before);
    /* decr stops at 0 */
    assert_int_equal(kv_store_arith(s, "n", 1, false, 1000, &v), KV_OK);
    assert_int_equal(v, 0);
    assert_value(s, "n", "0");
    /* incr wraps at 2^64 */
    assert_int_equal(set(s, "w", "18446744073709551615", 0), KV_OK);
    assert_int_equal(kv_store_arith(s, "w", 1, true, 1, &v), KV_OK);
    assert_int_equal(v, 0);
    assert_value(s, "w", "0");
    assert_int_equal(set(s, "w", "18446744073709551610", 0), KV_OK);
    assert_int_equal(kv_store_arith(s, "w", 1, true, 10, &v), KV_OK);
    assert_int_equal(v, 4);
    assert_int_equal(kv_store_arith(s, "w", 1, true, UINT64_MAX, &v), KV_OK);
    assert_int_equal(v, 3);
    /* not a number */
    const char *bad[] = {"abc", "", "12ab", "-12", "18446744073709551616", " ", "1.5", "0x10"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(set(s, "x", bad[i], 0), KV_OK);
        assert_int_equal(kv_store_arith(s, "x", 1, true, 1, &v), KV_NON_NUMERIC);
        assert_int_equal(kv_store_arith(s, "x", 1, false, 1, &v), KV_NON_NUMERIC);
        assert_value(s, "x", bad[i]);
    }
    /* what memcached's strtoull accepts: spaces around, its own padding */
    const char *good[] = {" 12", "12 ", "+12", "0000000000000000000000012", "12\r\n"};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        assert_int_equal(set(s, "y", good[i], 0), KV_OK);
        assert_int_equal(kv_store_arith(s, "y", 1, true, 1, &v), KV_OK);
        assert_int_equal(v, 13);
        assert_value(s, "y", "13");
    }
    kv_store_stats st = stats(s);
    assert_int_equal(st.incr_misses, 1);
    assert_int_equal(st.decr_misses, 1);
    assert_int_equal(st.incr_hits, 4 + 5);
    assert_int_equal(st.decr_hits, 3);
    assert_int_equal(st.bytes, kv_store_item_cost(1, 1) * 2 + kv_store_item_cost(1, 2) +
                                   kv_store_item_cost(1, strlen(bad[7])));
    kv_store_destroy(s);
}

/* --- expiry, touch, flush --------------------------------------------------- */

static void test_expiry_relative(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    set_clock(1000000);
    assert_int_equal(set(s, "r", "v", 10), KV_OK);
    assert_int_equal(set(s, "max", "v", KV_RELATIVE_MAX), KV_OK); /* still relative */
    set_clock(1000009);
    assert_value(s, "r", "v");
    set_clock(1000010);
    assert_absent(s, "r");
    set_clock(1000000 + KV_RELATIVE_MAX - 1);
    assert_value(s, "max", "v");
    set_clock(1000000 + KV_RELATIVE_MAX);
    assert_absent(s, "max");
    kv_store_stats st = stats(s);
    assert_int_equal(st.get_expired, 2);
    assert_int_equal(st.expired_unfetched, 0);
    assert_int_equal(st.reclaimed, 2);
    assert_int_equal(st.curr_items, 0);
    kv_store_destroy(s);
}

static void test_expiry_absolute(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    int64_t now = 1700000000;
    set_clock(now);
    assert_int_equal(set(s, "a", "v", now + 100), KV_OK);
    /* just over 30 days is an absolute time, long past: expired at once */
    assert_int_equal(set(s, "past", "v", KV_RELATIVE_MAX + 1), KV_OK);
    assert_absent(s, "past");
    assert_int_equal(set(s, "now", "v", now), KV_OK); /* absolute now: past */
    assert_absent(s, "now");
    set_clock(now + 99);
    assert_value(s, "a", "v");
    set_clock(now + 100);
    assert_absent(s, "a");
    kv_store_destroy(s);
}

static void test_expiry_negative_and_zero(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    set_clock(1000000);
    assert_int_equal(set(s, "k", "old", 0), KV_OK);
    /* negative: STORED, and gone at once (the old value with it) */
    assert_int_equal(set(s, "k", "new", -1), KV_OK);
    assert_absent(s, "k");
    assert_int_equal(put(s, KV_ADD, "k", "x", 0, -1, 0, NULL), KV_OK);
    assert_absent(s, "k");
    assert_int_equal(put(s, KV_ADD, "k", "y", 0, 0, 0, NULL), KV_OK);
    assert_value(s, "k", "y");
    /* 0: never, even years later */
    assert_int_equal(set(s, "forever", "v", 0), KV_OK);
    set_clock(1000000 + 20LL * 365 * 86400);
    assert_value(s, "forever", "v");
    kv_store_stats st = stats(s);
    assert_int_equal(st.curr_items, 2);
    kv_store_destroy(s);
}

static void test_touch_and_gat(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    set_clock(1000000);
    assert_int_equal(kv_store_touch(s, "k", 1, 10), KV_NOT_FOUND);
    assert_int_equal(set(s, "k", "v", 10), KV_OK);
    assert_int_equal(kv_store_touch(s, "k", 1, 100), KV_OK);
    set_clock(1000050);
    assert_value(s, "k", "v");
    /* touch to 0: never expires */
    assert_int_equal(kv_store_touch(s, "k", 1, 0), KV_OK);
    set_clock(1000000 + 10LL * 86400 * 365);
    assert_value(s, "k", "v");
    /* gat: the value, and the new expiry */
    got g;
    memset(&g, 0, sizeof g);
    assert_int_equal(kv_store_gat(s, "k", 1, 5, copy_value, &g), KV_OK);
    assert_memory_equal(g.data, "v", 1);
    set_clock(atomic_load(&fake_now) + 5);
    assert_absent(s, "k");
    assert_int_equal(kv_store_gat(s, "k", 1, 5, copy_value, &g), KV_NOT_FOUND);
    /* touch with a negative time: TOUCHED, then gone */
    assert_int_equal(set(s, "t", "v", 0), KV_OK);
    assert_int_equal(kv_store_touch(s, "t", 1, -1), KV_OK);
    assert_absent(s, "t");
    kv_store_stats st = stats(s);
    assert_int_equal(st.cmd_touch, 6);
    assert_int_equal(st.touch_hits, 4);
    assert_int_equal(st.touch_misses, 2);
    assert_int_equal(st.curr_items, 0);
    kv_store_destroy(s);
}

static void test_flush_now(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 8);
    for (int i = 0; i < 100; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(set(s, key, "value", 0), KV_OK);
    }
    assert_int_equal(stats(s).curr_items, 100);
    kv_store_flush(s, 0);
    kv_store_stats st = stats(s);
    assert_int_equal(st.curr_items, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.cmd_flush, 1);
    assert_absent(s, "k0");
    assert_absent(s, "k99");
    /* a negative delay is now too; and stores after it stay */
    assert_int_equal(set(s, "after", "v", 0), KV_OK);
    assert_value(s, "after", "v");
    kv_store_flush(s, -5);
    assert_absent(s, "after");
    assert_int_equal(set(s, "after", "v", 0), KV_OK);
    assert_value(s, "after", "v");
    kv_store_destroy(s);
}

static void test_flush_delayed(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 8);
    set_clock(1000000);
    assert_int_equal(set(s, "old", "v", 0), KV_OK);
    kv_store_flush(s, 10);
    set_clock(1000005);
    assert_int_equal(set(s, "mid", "v", 0), KV_OK);
    assert_value(s, "old", "v"); /* not yet */
    assert_value(s, "mid", "v");
    set_clock(1000010);
    assert_int_equal(set(s, "new", "v", 0), KV_OK);
    assert_absent(s, "old"); /* stored before the flush time: gone */
    assert_absent(s, "mid");
    assert_value(s, "new", "v");
    kv_store_stats st = stats(s);
    assert_int_equal(st.get_flushed, 2);

    /* a flush that has taken effect stays when a later one is pending */
    assert_int_equal(set(s, "a", "v", 0), KV_OK);
    set_clock(1000011);
    kv_store_flush(s, 100); /* pending: 1000111 */
    set_clock(1000020);
    assert_value(s, "a", "v");
    kv_store_flush(s, 1000); /* replaces the pending one */
    set_clock(1000111);
    assert_value(s, "a", "v"); /* the replaced flush never happens */
    set_clock(1001020);
    assert_absent(s, "a");
    assert_absent(s, "new");
    /* the flush at 1001020 is in force; a new delayed one must not revive
     * the items it killed that were never looked at */
    set_clock(1000000);
    assert_int_equal(set(s, "early", "v", 0), KV_OK);
    set_clock(1002000);
    kv_store_flush(s, 500);
    assert_absent(s, "early");
    kv_store_destroy(s);

    /* A delayed flush that has passed, whose items were never looked at,
     * stays in force when another delayed flush replaces it. */
    s = make_store(1 << 20, 0, 8);
    set_clock(2000000);
    assert_int_equal(set(s, "unread", "v", 0), KV_OK);
    kv_store_flush(s, 10);
    set_clock(2000020);
    kv_store_flush(s, 100);
    assert_absent(s, "unread");
    /* an absolute delay: a unix time */
    set_clock(1700000000);
    assert_int_equal(set(s, "abs", "v", 0), KV_OK);
    kv_store_flush(s, 1700000100);
    set_clock(1700000099);
    assert_value(s, "abs", "v");
    set_clock(1700000100);
    assert_absent(s, "abs");
    kv_store_destroy(s);
}

static void test_sweep(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 4);
    set_clock(1000000);
    for (int i = 0; i < 200; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        assert_int_equal(set(s, key, "v", i % 2 == 0 ? 10 : 0), KV_OK);
    }
    assert_int_equal(kv_store_sweep(s, 100000), 0); /* none expired yet */
    set_clock(1000010);
    size_t freed = 0;
    for (int i = 0; i < 100 && freed < 100; i++)
        freed += kv_store_sweep(s, 16); /* bounded steps, resumes */
    assert_int_equal(freed, 100);
    size_t bytes = 0;
    for (int i = 1; i < 200; i += 2) {
        char key[16];
        bytes += kv_store_item_cost((size_t)snprintf(key, sizeof key, "k%d", i), 1);
    }
    kv_store_stats st = stats(s);
    assert_int_equal(st.curr_items, 100);
    assert_int_equal(st.bytes, bytes);
    assert_int_equal(st.expired_unfetched, 100);
    assert_int_equal(st.reclaimed, 100);
    assert_value(s, "k1", "v");
    assert_absent(s, "k0");
    /* a delayed flush's items too */
    kv_store_flush(s, 5);
    set_clock(1000015);
    assert_int_equal(kv_store_sweep(s, 100000), 100); /* read or not, all were stored before */
    assert_int_equal(stats(s).bytes, 0);
    kv_store_destroy(s);
}

/* --- memory ----------------------------------------------------------------- */

/* The charge per item follows what malloc really gives, within a few
 * bytes: glibc leaves a chunk unsplit when the rest would be under its
 * 32-byte minimum (up to 16 bytes more than asked), and ASan's allocator
 * gives exactly what was asked. */
static void test_item_cost_tracks_malloc(void **state)
{
    (void)state;
    const size_t keys[] = {1, 10, 64, 250};
    const size_t values[] = {0, 1, 7, 32, 100, 1000, 4000, 100000, 1 << 20};
    size_t header = kv_store_item_cost(0, 0) - 8; /* the struct, 56 bytes */
    assert_int_equal(header, 56);
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        for (size_t j = 0; j < sizeof values / sizeof values[0]; j++) {
            size_t req = header + keys[i] + values[j];
            size_t cost = kv_store_item_cost(keys[i], values[j]);
            void *p = malloc(req);
            assert_non_null(p);
            size_t usable = malloc_usable_size(p);
            free(p);
            assert_true(usable >= req);
            assert_true(usable <= cost + 8);
            assert_true(cost <= usable + (req < 128 * 1024 ? 24 : 16 + 4096));
        }
    }
}

static void fill_value(char *v, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        v[i] = (char)('a' + (seed + i) % 26);
}

/* Least recently used goes first; a read makes an item recent. */
static void test_lru_order(void **state)
{
    (void)state;
    enum { VAL = 1000 };
    size_t cost = kv_store_item_cost(3, VAL);
    size_t budget = cost * 50;
    kv_store *s = make_store(budget, 2048, 1);
    char v[VAL], key[8];
    fill_value(v, VAL, 0);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        kv_put p = {KV_SET, key, 3, v, VAL, 0, 0, 0};
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    }
    assert_int_equal(stats(s).evictions, 0);
    assert_int_equal(stats(s).bytes, budget);
    for (int i = 0; i < 10; i++) { /* read the 10 oldest */
        snprintf(key, sizeof key, "k%02d", i);
        assert_int_equal(kv_store_get(s, key, 3, NULL, NULL), KV_OK);
    }
    for (int i = 50; i < 70; i++) { /* 20 more: 20 must go */
        snprintf(key, sizeof key, "k%02d", i);
        kv_put p = {KV_SET, key, 3, v, VAL, 0, 0, 0};
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    }
    kv_store_stats st = stats(s);
    assert_int_equal(st.evictions, 20);
    assert_int_equal(st.evicted_unfetched, 20);
    assert_int_equal(st.curr_items, 50);
    for (int i = 0; i < 70; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        kv_result want = i < 10 || i >= 30 ? KV_OK : KV_NOT_FOUND;
        assert_int_equal(kv_store_get(s, key, 3, NULL, NULL), want);
    }
    /* the reads above left k00 the least recent; a failed add promotes it
     * (memcached), so the next store evicts k01 instead */
    kv_put a = {KV_ADD, "k00", 3, v, VAL, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &a, NULL), KV_NOT_STORED);
    kv_put q = {KV_SET, "x00", 3, v, VAL, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &q, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, "k00", 3, NULL, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, "k01", 3, NULL, NULL), KV_NOT_FOUND);
    /* an expired tail item is reclaimed, not counted as an eviction */
    kv_store_destroy(s);
    s = make_store(budget, 2048, 1);
    set_clock(1000000);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof key, "k%02d", i);
        kv_put p = {KV_SET, key, 3, v, VAL, 0, i == 0 ? 5 : 0, 0};
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    }
    set_clock(1000005);
    kv_put p = {KV_SET, "new", 3, v, VAL, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    st = stats(s);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.reclaimed, 1);
    assert_int_equal(st.expired_unfetched, 1);
    kv_store_destroy(s);
}

/* A set-only flood of ten times the budget: the bound holds after every
 * set, whatever the stripes. */
static void test_memory_bound_flood(void **state)
{
    (void)state;
    const unsigned stripe_counts[] = {1, 4, 64};
    for (size_t c = 0; c < sizeof stripe_counts / sizeof stripe_counts[0]; c++) {
        size_t budget = 1 << 20;
        kv_store *s = make_store(budget, 64 * 1024, stripe_counts[c]);
        static char v[60000];
        fill_value(v, sizeof v, 1);
        size_t written = 0;
        unsigned rnd = 12345;
        for (int i = 0; written < 10 * budget; i++) {
            rnd = rnd * 1103515245 + 12345;
            size_t n = (rnd >> 8) % 2000;
            if (i % 50 == 0)
                n = 30000 + (rnd >> 4) % 30000; /* now and then a big one */
            char key[24];
            snprintf(key, sizeof key, "flood%d", i);
            kv_put p = {KV_SET, key, strlen(key), v, n, 0, 0, 0};
            assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
            written += kv_store_item_cost(strlen(key), n);
            kv_store_stats st = stats(s);
            assert_true(st.bytes <= st.limit_maxbytes);
        }
        kv_store_stats st = stats(s);
        assert_true(st.evictions > 0);
        assert_true(st.bytes > budget / 2); /* and it is used, not wasted */
        assert_int_equal(st.store_no_memory, 0);
        kv_store_destroy(s);
    }
}

static void test_too_large(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 4096, 4);
    static char v[5000];
    fill_value(v, sizeof v, 2);
    size_t max_value = 4096 - 56 - 1; /* key "k": header + key + value */
    kv_put p = {KV_SET, "k", 1, v, max_value, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    p.nbytes = max_value + 1;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_TOO_LARGE);
    assert_absent(s, "k"); /* a failed set drops the stale value */
    /* add/replace/cas refuse too, before looking at the key */
    assert_int_equal(set(s, "k", "small", 0), KV_OK);
    p.mode = KV_REPLACE;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_TOO_LARGE);
    p.mode = KV_ADD;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_TOO_LARGE);
    assert_value(s, "k", "small"); /* only set drops it */
    /* append past the limit: NOT_STORED (memcached), value kept */
    p.mode = KV_APPEND;
    p.nbytes = max_value - 2;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_NOT_STORED);
    assert_value(s, "k", "small");
    /* admit: the module's check before reading the data block */
    assert_int_equal(kv_store_admit(s, KV_ADD, "k", 1, max_value), KV_OK);
    assert_int_equal(kv_store_admit(s, KV_ADD, "k", 1, max_value + 1), KV_TOO_LARGE);
    assert_value(s, "k", "small");
    assert_int_equal(kv_store_admit(s, KV_SET, "k", 1, (size_t)1 << 31), KV_TOO_LARGE);
    assert_absent(s, "k");
    kv_store_stats st = stats(s);
    assert_int_equal(st.store_too_large, 6);
    kv_store_destroy(s);
}

static void test_no_memory(void **state)
{
    (void)state;
    /* An item may fit item_size_max (= the budget) and still cost more
     * than the budget once malloc's rounding is counted: nothing to evict
     * can make room. */
    kv_store *s = make_store(4096, 4096, 1);
    static char v[4096];
    assert_int_equal(set(s, "k", "small", 0), KV_OK);
    kv_put p = {KV_SET, "k", 1, v, 4096 - 56 - 1, 0, 0, 0};
    assert_true(kv_store_item_cost(1, p.nbytes) > 4096);
    assert_int_equal(kv_store_put(s, &p, NULL), KV_NO_MEMORY);
    assert_absent(s, "k"); /* a failed set drops the stale value */
    assert_int_equal(set(s, "k", "small", 0), KV_OK);
    p.mode = KV_REPLACE;
    assert_int_equal(kv_store_put(s, &p, NULL), KV_NO_MEMORY);
    assert_value(s, "k", "small"); /* other modes keep it */
    kv_store_stats st = stats(s);
    assert_int_equal(st.store_no_memory, 2);
    assert_int_equal(st.bytes, kv_store_item_cost(1, 5));
    kv_store_destroy(s);
}

/* A set that evicts everything else and still cannot fit must drop its key
 * cleanly, though the items evicted may have shared the key's hash chain
 * (50 fresh stores, each with its own hash seed, to meet that case). */
static void test_failed_set_after_evictions(void **state)
{
    (void)state;
    static char v[4096];
    for (int round = 0; round < 50; round++) {
        kv_store *s = make_store(4096, 4096, 1);
        assert_int_equal(set(s, "k", "old", 0), KV_OK);
        for (int i = 0; i < 40; i++) {
            char key[8];
            snprintf(key, sizeof key, "o%02d", i);
            assert_int_equal(set(s, key, "v", 0), KV_OK);
        }
        assert_int_equal(stats(s).evictions, 0);
        kv_put p = {KV_SET, "k", 1, v, 4096 - 56 - 1, 0, 0, 0};
        assert_int_equal(kv_store_put(s, &p, NULL), KV_NO_MEMORY);
        kv_store_stats st = stats(s);
        assert_int_equal(st.evictions, 40);
        assert_int_equal(st.curr_items, 0);
        assert_int_equal(st.bytes, 0);
        assert_absent(s, "k");
        assert_int_equal(set(s, "k", "new", 0), KV_OK);
        assert_value(s, "k", "new");
        kv_store_destroy(s);
    }
}

/* --- threads ---------------------------------------------------------------- */

enum { THREADS = 4, OPS = 20000, KEYS_PER_THREAD = 200 };

typedef struct worker {
    pthread_t thread;
    kv_store *s;
    int id;
    unsigned errors;     /* checks that failed; the test thread asserts */
    uint64_t gets, hits, sets; /* what this thread did */
    unsigned own_incrs;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char key[32], val[64], own[32];
    snprintf(own, sizeof own, "counter-%d", w->id);
    kv_put c = {KV_SET, own, strlen(own), "0", 1, 0, 0, 0};
    if (kv_store_put(w->s, &c, NULL) != KV_OK)
        w->errors++;
    w->sets++;
    for (int i = 0; i < OPS; i++) {
        if (i % 10 == 0) { /* 1 in 10: a set of a value naming its writer */
            int k = (i / 10) % KEYS_PER_THREAD; /* key k is first set at i = 10k */
            snprintf(key, sizeof key, "t%d-k%d", w->id, k);
            int n = snprintf(val, sizeof val, "t%d-v%d", w->id, i);
            kv_put p = {KV_SET, key, strlen(key), val, (size_t)n, (uint32_t)w->id, 0, 0};
            if (kv_store_put(w->s, &p, NULL) != KV_OK)
                w->errors++;
            w->sets++;
        } else {
            int k = i % KEYS_PER_THREAD;
            snprintf(key, sizeof key, "t%d-k%d", w->id, k);
            got g;
            memset(&g, 0, sizeof g);
            kv_result r = kv_store_get(w->s, key, strlen(key), copy_value, &g);
            w->gets++;
            w->hits += r == KV_OK;
            char want[16];
            int n = snprintf(want, sizeof want, "t%d-v", w->id);
            if (r == KV_OK && (g.info.flags != (uint32_t)w->id || g.len < (size_t)n ||
                               memcmp(g.data, want, (size_t)n) != 0))
                w->errors++; /* someone else's value under my key */
            if (r != KV_OK && 10 * k < i)
                w->errors++; /* it was set before and nothing evicts */
        }
        if (i % 7 == 0) {
            uint64_t v;
            if (kv_store_arith(w->s, "shared", 6, true, 1, &v) != KV_OK)
                w->errors++;
            if (kv_store_arith(w->s, own, strlen(own), true, 1, &v) != KV_OK ||
                v != ++w->own_incrs)
                w->errors++;
        }
    }
    return NULL;
}

static void test_threads_consistent(void **state)
{
    (void)state;
    kv_store *s = make_store(16 << 20, 0, 16);
    assert_int_equal(set(s, "shared", "0", 0), KV_OK);
    worker w[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.s = s, .id = i};
        assert_int_equal(pthread_create(&w[i].thread, NULL, work, &w[i]), 0);
    }
    uint64_t gets = 0, hits = 0, sets = 1, incrs = 0;
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(w[i].thread, NULL), 0);
        assert_int_equal(w[i].errors, 0);
        gets += w[i].gets;
        hits += w[i].hits;
        sets += w[i].sets;
        incrs += w[i].own_incrs;
        char own[32];
        snprintf(own, sizeof own, "counter-%d", i);
        uint64_t v;
        assert_int_equal(kv_store_arith(s, own, strlen(own), true, 0, &v), KV_OK);
        assert_int_equal(v, w[i].own_incrs);
    }
    uint64_t shared;
    assert_int_equal(kv_store_arith(s, "shared", 6, true, 0, &shared), KV_OK);
    assert_int_equal(shared, incrs); /* every incr counted once */
    kv_store_stats st = stats(s);
    assert_int_equal(st.cmd_get, gets);
    assert_int_equal(st.get_hits, hits);
    assert_int_equal(st.get_misses, gets - hits);
    assert_true(hits > gets / 2);
    assert_int_equal(st.cmd_set, sets);
    assert_int_equal(st.incr_hits, 2 * incrs + THREADS + 1);
    assert_int_equal(st.curr_items, 1 + THREADS + THREADS * KEYS_PER_THREAD);
    assert_int_equal(st.evictions, 0);
    kv_store_destroy(s);
}

typedef struct flooder {
    pthread_t thread;
    kv_store *s;
    int id;
    unsigned errors;
} flooder;

/* Sets only, into a small budget, checking the bound as it goes. */
static void *flood(void *arg)
{
    flooder *f = arg;
    static const char v[8000];
    for (int i = 0; i < 3000; i++) {
        char key[32];
        snprintf(key, sizeof key, "f%d-%d", f->id, i);
        size_t n = (size_t)(i * 37 + f->id * 101) % sizeof v;
        kv_put p = {KV_SET, key, strlen(key), v, n, 0, 0, 0};
        kv_result r = kv_store_put(f->s, &p, NULL);
        if (r != KV_OK && r != KV_NO_MEMORY)
            f->errors++;
        if (i % 64 == 0) {
            kv_store_stats st;
            kv_store_stats_get(f->s, &st);
            if (st.bytes > st.limit_maxbytes)
                f->errors++;
        }
        if (i % 5 == 0)
            kv_store_get(f->s, key, strlen(key), NULL, NULL);
    }
    return NULL;
}

/* 64 stripes over a budget of ~60 items: a stripe is often empty, so
 * stores keep evicting from other stripes (trylock) while those are busy. */
static void test_threads_memory_bound(void **state)
{
    (void)state;
    kv_store *s = make_store(256 * 1024, 16 * 1024, 64);
    flooder f[THREADS];
    for (int i = 0; i < THREADS; i++) {
        f[i] = (flooder){.s = s, .id = i};
        assert_int_equal(pthread_create(&f[i].thread, NULL, flood, &f[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(f[i].thread, NULL), 0);
        assert_int_equal(f[i].errors, 0);
    }
    kv_store_stats st = stats(s);
    assert_true(st.bytes <= st.limit_maxbytes);
    assert_true(st.evictions > 0);
    /* bytes agrees with what is there: flush frees all, down to 0 */
    kv_store_flush(s, 0);
    st = stats(s);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.curr_items, 0);
    kv_store_destroy(s);
}

/* A value callback runs under the stripe's lock: while one holds it, a
 * second get of a key of that stripe must wait, and is counted. */
typedef struct holder {
    pthread_t thread;
    kv_store *s;
    _Atomic int phase; /* 1: holder inside the lock; 2: waiter about to call */
} holder;

/* --- holding items (values sent by reference) ----------------------------- */

typedef struct held {
    void *item;
    const char *value;
    bool ok;
} held;

static void hold_value(void *arg, const kv_item_info *info, const char *value)
{
    held *h = arg;
    h->ok = kv_store_hold(info);
    h->item = info->item;
    h->value = value;
}

static void *release_elsewhere(void *item)
{
    kv_store_release(item);
    return NULL;
}

static void test_hold_outlives_unlink(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 1);
    assert_int_equal(put(s, KV_SET, "k", "1234", 0, 0, 0, NULL), KV_OK);
    held h;
    assert_int_equal(kv_store_get(s, "k", 1, hold_value, &h), KV_OK);
    assert_true(h.ok);
    /* incr of a held value of the same length builds a new item: the
     * holder's bytes do not change under it */
    uint64_t v;
    assert_int_equal(kv_store_arith(s, "k", 1, true, 1, &v), KV_OK);
    assert_int_equal(v, 1235);
    assert_memory_equal(h.value, "1234", 4);
    got g;
    assert_int_equal(get(s, "k", &g), KV_OK);
    assert_memory_equal(g.data, "1235", 4);
    /* replaced, deleted, evicted by flush: still readable until released,
     * and uncharged at once */
    held h2;
    assert_int_equal(kv_store_get(s, "k", 1, hold_value, &h2), KV_OK);
    assert_int_equal(put(s, KV_SET, "k", "other", 0, 0, 0, NULL), KV_OK);
    kv_store_flush(s, 0);
    kv_store_stats st;
    kv_store_stats_get(s, &st);
    assert_int_equal(st.bytes, 0);
    assert_memory_equal(h2.value, "1235", 4);
    /* released from another thread, as a connection's writer does */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_elsewhere, h2.item), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    kv_store_release(h.item);
    kv_store_destroy(s);
}

static void test_hold_saturates(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 1);
    assert_int_equal(put(s, KV_SET, "k", "v", 0, 0, 0, NULL), KV_OK);
    held h = {0};
    unsigned n = 0;
    while (n < 70000) {
        assert_int_equal(kv_store_get(s, "k", 1, hold_value, &h), KV_OK);
        if (!h.ok)
            break;
        n++;
    }
    assert_int_equal(n, 65534); /* the table holds one of 65,535 */
    kv_store_release(h.item);
    assert_int_equal(kv_store_get(s, "k", 1, hold_value, &h), KV_OK);
    assert_true(h.ok);
    for (unsigned i = 0; i < n; i++)
        kv_store_release(h.item);
    assert_int_equal(kv_store_delete(s, "k", 1), KV_OK); /* the last: freed (ASan: no leak) */
    kv_store_destroy(s);
}

static void hold_lock(void *arg, const kv_item_info *info, const char *value)
{
    (void)info;
    (void)value;
    holder *h = arg;
    atomic_store(&h->phase, 1);
    while (atomic_load(&h->phase) != 2)
        ;
    /* The waiter is on its way into the lock; it cannot tell us when it
     * blocks, so give it a moment (bounded; the test repeats if it was
     * not enough). */
    struct timespec nap = {0, 20 * 1000 * 1000};
    nanosleep(&nap, NULL);
}

static void *holder_thread(void *arg)
{
    holder *h = arg;
    kv_store_get(h->s, "k", 1, hold_lock, h);
    return NULL;
}

static void test_lock_waits_counted(void **state)
{
    (void)state;
    kv_store *s = make_store(1 << 20, 0, 1);
    assert_int_equal(set(s, "k", "v", 0), KV_OK);
    assert_int_equal(stats(s).lock_waits, 0);
    for (int round = 0; round < 20 && stats(s).lock_waits == 0; round++) {
        holder h = {.s = s};
        assert_int_equal(pthread_create(&h.thread, NULL, holder_thread, &h), 0);
        while (atomic_load(&h.phase) != 1)
            ;
        atomic_store(&h.phase, 2);
        assert_int_equal(kv_store_get(s, "k", 1, NULL, NULL), KV_OK);
        assert_int_equal(pthread_join(h.thread, NULL), 0);
    }
    assert_true(stats(s).lock_waits >= 1);
    kv_store_destroy(s);
}

/* --- bench (not a test) ------------------------------------------------------ */

typedef struct bench_thread {
    pthread_t thread;
    kv_store *s;
    unsigned seed;
    _Atomic bool *stop;
    uint64_t ops;
} bench_thread;

static void *bench_work(void *arg)
{
    bench_thread *b = arg;
    char key[32], v[32] = "0123456789abcdef0123456789abcdef";
    unsigned rnd = b->seed;
    while (!atomic_load_explicit(b->stop, memory_order_relaxed)) {
        for (int i = 0; i < 100; i++) {
            rnd = rnd * 1103515245 + 12345;
            int n = snprintf(key, sizeof key, "key:%u", (rnd >> 8) % 100000);
            if (rnd % 10 == 0) {
                kv_put p = {KV_SET, key, (size_t)n, v, sizeof v, 0, 0, 0};
                kv_store_put(b->s, &p, NULL);
            } else {
                kv_store_get(b->s, key, (size_t)n, NULL, NULL);
            }
        }
        b->ops += 100;
    }
    return NULL;
}

static double elapsed(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
}

static int bench(double seconds)
{
    const unsigned stripes[] = {1, 16, 64, 256, 1024};
    const int threads[] = {2, 4, 25};
    printf("9:1 get:set, 100k keys, 32-byte values, %.1f s each\n", seconds);
    printf("%8s %8s %12s %14s\n", "threads", "stripes", "Mops/s", "waits/1k ops");
    for (size_t t = 0; t < sizeof threads / sizeof threads[0]; t++) {
        for (size_t k = 0; k < sizeof stripes / sizeof stripes[0]; k++) {
            kv_store_opts o = {.memory_mb = 64, .stripes = stripes[k]};
            kv_store *s;
            if (kv_store_create(&s, &o) != 0)
                return 1;
            char key[32];
            for (unsigned i = 0; i < 100000; i++) { /* warm: all keys present */
                int n = snprintf(key, sizeof key, "key:%u", i);
                kv_put p = {KV_SET, key, (size_t)n, "x", 1, 0, 0, 0};
                kv_store_put(s, &p, NULL);
            }
            kv_store_stats before;
            kv_store_stats_get(s, &before);
            _Atomic bool stop = false;
            bench_thread b[25];
            struct timespec start;
            clock_gettime(CLOCK_MONOTONIC, &start);
            for (int i = 0; i < threads[t]; i++) {
                b[i] = (bench_thread){.s = s, .seed = (unsigned)i * 7919u + 1, .stop = &stop};
                if (pthread_create(&b[i].thread, NULL, bench_work, &b[i]) != 0)
                    return 1;
            }
            struct timespec nap = {0, 10 * 1000 * 1000};
            while (elapsed(&start) < seconds)
                nanosleep(&nap, NULL);
            atomic_store(&stop, true);
            uint64_t ops = 0;
            for (int i = 0; i < threads[t]; i++) {
                pthread_join(b[i].thread, NULL);
                ops += b[i].ops;
            }
            double secs = elapsed(&start);
            kv_store_stats st;
            kv_store_stats_get(s, &st);
            printf("%8d %8u %12.2f %14.3f\n", threads[t], stripes[k], (double)ops / secs / 1e6,
                   (double)(st.lock_waits - before.lock_waits) * 1000.0 / (double)ops);
            kv_store_destroy(s);
        }
    }
    /* Memory per item: heap growth over N items (key 10 bytes, value 32),
     * table buckets included. */
    enum { N = 200000 };
    struct mallinfo2 m0 = mallinfo2();
    kv_store *s;
    kv_store_opts o = {.memory_mb = 256};
    if (kv_store_create(&s, &o) != 0)
        return 1;
    for (unsigned i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof key, "key:%06u", i);
        kv_put p = {KV_SET, key, 10, "0123456789abcdef0123456789abcdef", 32, 0, 0, 0};
        kv_store_put(s, &p, NULL);
    }
    struct mallinfo2 m1 = mallinfo2();
    kv_store_stats st;
    kv_store_stats_get(s, &st);
    size_t heap = (m1.uordblks + m1.hblkhd) - (m0.uordblks + m0.hblkhd);
    printf("memory per item (key 10 B, value 32 B): charged %zu B (item_cost), heap %.1f B "
           "with buckets (%llu buckets for %d items)\n",
           kv_store_item_cost(10, 32), (double)heap / N, (unsigned long long)st.hash_buckets, N);
    void *p = malloc(56 + 10 + 32);
    printf("malloc_usable_size(56 + 10 + 32) = %zu\n", malloc_usable_size(p));
    free(p);
    kv_store_destroy(s);
    return 0;
}

/* --- giving memory back --------------------------------------------------- */

/* Replacements, deletes, flushes and evictions count the bytes they free;
 * a trim becomes due at a sixteenth of the budget (at least 2 MiB), once. */
static void test_trim_due_counts_freed_bytes(void **state)
{
    (void)state;
    enum { VAL = 100000 };
    static char v[VAL];
    fill_value(v, VAL, 3);
    size_t cost = kv_store_item_cost(1, VAL);
    const size_t budgets[] = {(size_t)8 << 20, (size_t)32 << 20, (size_t)64 << 20};
    for (size_t b = 0; b < sizeof budgets / sizeof budgets[0]; b++) {
        size_t step = budgets[b] / 16 > KV_TRIM_STEP_MIN ? budgets[b] / 16 : KV_TRIM_STEP_MIN;
        size_t n = (step + cost - 1) / cost; /* replacements that reach it */
        kv_store *s = make_store(budgets[b], 0, 4);
        kv_put p = {KV_SET, "k", 1, v, VAL, 0, 0, 0};
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
        for (size_t i = 0; i + 1 < n; i++)
            assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
        assert_false(kv_store_trim_due(s)); /* n - 1 old values freed: not yet */
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
        assert_true(kv_store_trim_due(s));
        assert_false(kv_store_trim_due(s)); /* told once, until the trim */
        assert_int_equal(stats(s).trims, 0);
        kv_store_trim(s);
        assert_int_equal(stats(s).trims, 1);
        assert_false(kv_store_trim_due(s)); /* the count starts again */
        /* deletes */
        char key[16];
        for (size_t i = 0; i < n; i++) {
            kv_put q = {KV_SET, key, (size_t)snprintf(key, sizeof key, "d%zu", i), v, VAL,
                        0, 0, 0};
            assert_int_equal(kv_store_put(s, &q, NULL), KV_OK);
        }
        assert_false(kv_store_trim_due(s));
        for (size_t i = 0; i < n; i++) {
            assert_false(kv_store_trim_due(s));
            assert_int_equal(kv_store_delete(s, key, (size_t)snprintf(key, sizeof key, "d%zu", i)),
                             KV_OK);
        }
        assert_true(kv_store_trim_due(s));
        kv_store_trim(s);
        /* a flush frees everything */
        for (size_t i = 0; i < n; i++) {
            kv_put q = {KV_SET, key, (size_t)snprintf(key, sizeof key, "f%zu", i), v, VAL,
                        0, 0, 0};
            assert_int_equal(kv_store_put(s, &q, NULL), KV_OK);
        }
        assert_false(kv_store_trim_due(s));
        kv_store_flush(s, 0);
        assert_true(kv_store_trim_due(s));
        kv_store_trim(s);
        /* evictions: new keys past the budget */
        size_t evicted_before = stats(s).evictions;
        for (size_t i = 0; !kv_store_trim_due(s); i++) {
            assert_true(i < 2 * (budgets[b] + step) / cost);
            kv_put q = {KV_SET, key, (size_t)snprintf(key, sizeof key, "e%zu", i), v, VAL,
                        0, 0, 0};
            assert_int_equal(kv_store_put(s, &q, NULL), KV_OK);
        }
        assert_true(stats(s).evictions - evicted_before >= n);
        assert_int_equal(stats(s).trims, 3);
        kv_store_destroy(s);
    }
}

typedef struct trim_race {
    kv_store *s;
    atomic_int go;
    atomic_int yes;
} trim_race;

static void *ask_trim(void *arg)
{
    trim_race *r = arg;
    while (atomic_load(&r->go) == 0)
        ;
    for (int i = 0; i < 1000; i++)
        if (kv_store_trim_due(r->s))
            atomic_fetch_add(&r->yes, 1);
    return NULL;
}

/* Of many threads asking at once, one is told (and wakes the trimmer). */
static void test_trim_due_once_across_threads(void **state)
{
    (void)state;
    kv_store *s = make_store((size_t)8 << 20, 0, 4);
    static char v[64 * 1024];
    kv_put p = {KV_SET, "k", 1, v, sizeof v, 0, 0, 0};
    for (int i = 0; i < 64; i++) /* 63 replacements of 64 KiB: 4 MiB freed */
        assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    trim_race r = {.s = s};
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, ask_trim, &r), 0);
    atomic_store(&r.go, 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(atomic_load(&r.yes), 1);
    kv_store_destroy(s);
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
static long resident_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void *fill_items(void *arg)
{
    kv_store *s = arg;
    static char v[20000];
    char key[16];
    for (int i = 0; i < 1600; i++) { /* about 32 MB, in this thread's arena */
        kv_put p = {KV_SET, key, (size_t)snprintf(key, sizeof key, "r%d", i), v, sizeof v,
                    0, 0, 0};
        if (kv_store_put(s, &p, NULL) != KV_OK)
            return s;
    }
    return NULL;
}
#endif

/* What the store frees stays in malloc's arena (here a second thread's,
 * whose free chunks between live ones glibc never hands back by itself):
 * kv_store_trim gives it back. Not under a sanitizer, whose allocator is
 * not glibc's. */
static void test_trim_gives_pages_back(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    skip();
#else
    kv_store *s = make_store((size_t)64 << 20, 0, 16);
    kv_store_trim(s); /* start from a trimmed heap */
    pthread_t t;
    void *failed = s;
    assert_int_equal(pthread_create(&t, NULL, fill_items, s), 0);
    assert_int_equal(pthread_join(t, &failed), 0);
    assert_null(failed);
    char key[16];
    for (int i = 0; i < 1600; i += 2) /* every other one: holes, not a free top */
        assert_int_equal(kv_store_delete(s, key, (size_t)snprintf(key, sizeof key, "r%d", i)),
                         KV_OK);
    long before = resident_kb();
    kv_store_trim(s);
    long after = resident_kb();
    assert_true(before > 0 && after > 0);
    printf("resident %ld kB -> %ld kB after freeing 800 items of 20 kB\n", before, after);
    assert_true(before - after > 10 * 1024); /* most of the ~16 MB freed */
    kv_store_destroy(s);
#endif
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "bench") == 0)
        return bench(argc > 2 ? atof(argv[2]) : 1.0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_options),
        cmocka_unit_test(test_set_get),
        cmocka_unit_test(test_binary_value),
        cmocka_unit_test(test_key_length),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_replace),
        cmocka_unit_test(test_append_prepend),
        cmocka_unit_test(test_cas),
        cmocka_unit_test(test_cas_unique),
        cmocka_unit_test(test_delete),
        cmocka_unit_test(test_incr_decr),
        cmocka_unit_test(test_expiry_relative),
        cmocka_unit_test(test_expiry_absolute),
        cmocka_unit_test(test_expiry_negative_and_zero),
        cmocka_unit_test(test_touch_and_gat),
        cmocka_unit_test(test_flush_now),
        cmocka_unit_test(test_flush_delayed),
        cmocka_unit_test(test_sweep),
        cmocka_unit_test(test_item_cost_tracks_malloc),
        cmocka_unit_test(test_lru_order),
        cmocka_unit_test(test_memory_bound_flood),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_no_memory),
        cmocka_unit_test(test_failed_set_after_evictions),
        cmocka_unit_test(test_threads_consistent),
        cmocka_unit_test(test_threads_memory_bound),
        cmocka_unit_test(test_lock_waits_counted),
        cmocka_unit_test(test_hold_outlives_unlink),
        cmocka_unit_test(test_hold_saturates),
        cmocka_unit_test(test_trim_due_counts_freed_bytes),
        cmocka_unit_test(test_trim_due_once_across_threads),
        cmocka_unit_test(test_trim_gives_pages_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
