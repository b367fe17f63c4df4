/*
 * The Prometheus exposition and the handler-time histogram: pure functions,
 * tested without a server. Threads here only observe; the test thread
 * asserts after joining them. `test_metrics --emit` prints a realistic
 * rendering instead, for tests/metrics/check_prometheus.py (ctest
 * metrics_prometheus_parse) to read with the real Prometheus parser.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"
#include "poolsrv/version.h"

#define BIG 16384

/* Every field of both structs set to a value of its own. Positional on
 * purpose: a field added to either struct leaves one uninitialized, which
 * -Wextra (-Wmissing-field-initializers) with -Werror refuses to build; the
 * new field then needs a value here, and test_render_every_field fails
 * until the metrics table has a row for it. */
static const ps_server_stats distinct_server = {
    1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
    1012, 1013, 1014, 1015, 1016, 1017, 1018, 1019, 1020, 1021, 1022, 1023,
    1024, 1025, 1026, 1027, 1028, 1029, 1030, 1031,
};
#define N_SERVER_VALUES 31
static const ps_pool_stats distinct_pool = {
    2001, 2002, 2003, 2004, 2005, 2006, 2007, 2008, 2009, 2010, 2011,
};
#define N_POOL_VALUES 11

/* The bucket a value belongs in, by the definition (first bound >= v),
 * independently of the library's way of finding it. */
static unsigned ref_bucket(uint64_t v)
{
    for (unsigned i = 0; i < PS__HIST_BOUNDS; i++)
        if (v * 1000 <= ps__hist_bounds_ns[i])
            return i;
    return PS__HIST_BOUNDS;
}

/* The bucket of one observation of v into a fresh histogram; fails the
 * test unless exactly one bucket got it. */
static unsigned observed_bucket(uint64_t v)
{
    ps__hist h;
    ps__hist_init(&h);
    ps__hist_observe(&h, v > UINT64_MAX / 1000 ? v : v * 1000);
    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &h);
    assert_int_equal(s.count, 1);
    unsigned found = PS__HIST_BUCKETS;
    for (unsigned i = 0; i < PS__HIST_BUCKETS; i++) {
        if (s.bucket[i] != 0) {
            assert_int_equal(s.bucket[i], 1);
            assert_int_equal(found, PS__HIST_BUCKETS);
            found = i;
        }
    }
    assert_true(found < PS__HIST_BUCKETS);
    return found;
}

static char *render_big(const ps_server_stats *st, const ps_pool_stats *ps,
                        const ps__hist_snapshot *h)
{
    char *buf = malloc(BIG);
    assert_non_null(buf);
    int n = ps__metrics_render(buf, BIG, st, ps, h);
    assert_true(n > 0 && n < BIG);
    assert_int_equal(strlen(buf), (size_t)n);
    return buf;
}

/* ---- histogram ---------------------------------------------------------- */

static void test_hist_layout(void **state)
{
    (void)state;
    /* As documented in metrics.h: three cache lines, aligned to one. */
    assert_int_equal(sizeof(ps__hist), 192);
    assert_int_equal(alignof(ps__hist), 64);
    for (unsigned i = 1; i < PS__HIST_BOUNDS; i++)
        assert_true(ps__hist_bounds_ns[i - 1] < ps__hist_bounds_ns[i]);
    assert_int_equal(ps__hist_bounds_ns[0], 10000);
    assert_int_equal(ps__hist_bounds_ns[PS__HIST_BOUNDS - 1], 10000000000);
}

static void test_hist_bounds_are_le(void **state)
{
    (void)state;
    for (unsigned i = 0; i < PS__HIST_BOUNDS; i++) {
        uint64_t b = ps__hist_bounds_ns[i] / 1000;
        assert_int_equal(observed_bucket(b), i);         /* on the bound: its bucket */
        assert_int_equal(observed_bucket(b - 1), i);     /* just under it too */
        assert_int_equal(observed_bucket(b + 1), i + 1); /* just over: the next */
    }
}

static void test_hist_zero_and_huge(void **state)
{
    (void)state;
    assert_int_equal(observed_bucket(0), 0);
    assert_int_equal(observed_bucket(1), 0);
    assert_int_equal(observed_bucket(10000001), PS__HIST_BOUNDS);
    assert_int_equal(observed_bucket(UINT64_MAX), PS__HIST_BOUNDS);

    /* A huge value (a clock that stepped back) adds only the cap to the
     * sum, so the sum does not wrap. */
    ps__hist h;
    ps__hist_init(&h);
    ps__hist_observe(&h, UINT64_MAX);
    ps__hist_observe(&h, UINT64_MAX);
    ps__hist_observe(&h, PS__HIST_SUM_MAX_NS - 1);
    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &h);
    assert_int_equal(s.count, 3);
    assert_int_equal(s.bucket[PS__HIST_BOUNDS], 3);
    assert_true(s.sum_ns == 3 * PS__HIST_SUM_MAX_NS - 1);
}

static void test_hist_sum_count_and_stripes(void **state)
{
    (void)state;
    ps__hist a, b;
    ps__hist_init(&a);
    ps__hist_init(&b);
    ps__hist_observe(&a, 5000);       /* bucket 0 */
    ps__hist_observe(&a, 300000);     /* 500 us */
    ps__hist_observe(&b, 300000);     /* 500 us */
    ps__hist_observe(&b, 2000000000); /* 2.5 s */

    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &a);
    assert_int_equal(s.count, 2);
    assert_int_equal(s.sum_ns, 305000);
    ps__hist_add(&s, &b); /* summed into the same snapshot */
    assert_int_equal(s.count, 4);
    assert_int_equal(s.sum_ns, 2000605000);

    /* Calls under a microsecond still add to the sum (a fast handler's
     * mean is not 0), and render to the nanosecond. */
    ps__hist f;
    ps__hist_init(&f);
    for (int i = 0; i < 3; i++)
        ps__hist_observe(&f, 300);
    ps__hist_snapshot fs = {0};
    ps__hist_add(&fs, &f);
    assert_int_equal(fs.sum_ns, 900);
    char *text = render_big(&distinct_server, &distinct_pool, &fs);
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_sum 0.0000009\n"));
    free(text);
    assert_int_equal(s.bucket[0], 1);
    assert_int_equal(s.bucket[ref_bucket(300)], 2);
    assert_int_equal(s.bucket[ref_bucket(2000000)], 1);
    assert_int_equal(ref_bucket(300), 5);
    assert_int_equal(ref_bucket(2000000), 16);
}

#define OBSERVERS 4
#define PER_THREAD 100000

/* Thread t's i-th value: up to 12 s, shifted down by 0 to 23 bits so that
 * every bucket gets some, from 0 us to +Inf. */
static uint64_t value_of(unsigned t, unsigned i)
{
    return (((uint64_t)i * 7919 + (uint64_t)t * 104729) % 12000000) >> (i % 24);
}

typedef struct conc {
    ps__hist *h;
    atomic_bool go; /* every thread is started: observe */
    atomic_bool done;
    atomic_uint bad_snapshots; /* the reader saw a count go down, or one too big */
    atomic_uint snapshots;
} conc;

typedef struct observer {
    conc *c;
    unsigned t;
} observer;

static void *observe_main(void *arg)
{
    observer *o = arg;
    while (!atomic_load(&o->c->go))
        sched_yield();
    for (unsigned i = 0; i < PER_THREAD; i++)
        ps__hist_observe(o->c->h, value_of(o->t, i) * 1000);
    return NULL;
}

/* Snapshots while the observers run: each bucket only grows, so a later
 * snapshot's count is never smaller; nor is it ever above the total. */
static void *snapshot_main(void *arg)
{
    conc *c = arg;
    uint64_t last = 0;
    while (!atomic_load(&c->go))
        sched_yield();
    do {
        ps__hist_snapshot s = {0};
        ps__hist_add(&s, c->h);
        if (s.count < last || s.count > (uint64_t)OBSERVERS * PER_THREAD)
            atomic_fetch_add(&c->bad_snapshots, 1);
        last = s.count;
        atomic_fetch_add(&c->snapshots, 1);
    } while (!atomic_load(&c->done));
    return NULL;
}

static void test_hist_concurrent_exact(void **state)
{
    (void)state;
    ps__hist h;
    ps__hist_init(&h);
    conc c = {.h = &h};
    atomic_init(&c.go, false);
    atomic_init(&c.done, false);
    atomic_init(&c.bad_snapshots, 0);
    atomic_init(&c.snapshots, 0);

    pthread_t reader, th[OBSERVERS];
    observer obs[OBSERVERS];
    int reader_rc = pthread_create(&reader, NULL, snapshot_main, &c);
    unsigned started = 0;
    for (unsigned t = 0; t < OBSERVERS; t++) {
        obs[t] = (observer){.c = &c, .t = t};
        if (pthread_create(&th[started], NULL, observe_main, &obs[t]) == 0)
            started++;
    }
    /* All start at once, so their fetch_adds really contend. */
    atomic_store(&c.go, true);
    for (unsigned t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    atomic_store(&c.done, true);
    if (reader_rc == 0)
        pthread_join(reader, NULL);
    assert_int_equal(reader_rc, 0);
    assert_int_equal(started, OBSERVERS);

    uint64_t want[PS__HIST_BUCKETS] = {0}, want_sum = 0;
    for (unsigned t = 0; t < OBSERVERS; t++) {
        for (unsigned i = 0; i < PER_THREAD; i++) {
            uint64_t v = value_of(t, i);
            want[ref_bucket(v)]++;
            want_sum += v;
        }
    }
    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &h);
    assert_int_equal(s.count, (uint64_t)OBSERVERS * PER_THREAD);
    assert_true(s.sum_ns == want_sum * 1000);
    for (unsigned i = 0; i < PS__HIST_BUCKETS; i++) {
        assert_true(want[i] > 0); /* the values reach every bucket */
        assert_int_equal(s.bucket[i], want[i]);
    }
    assert_int_equal(atomic_load(&c.bad_snapshots), 0);
    assert_true(atomic_load(&c.snapshots) > 0);
}

/* ---- rendering ---------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static void test_render_every_field(void **state)
{
    (void)state;
    size_t n;
    const ps__metrics_field *f = ps__metrics_fields(&n);
    assert_int_equal(n, N_SERVER_VALUES + N_POOL_VALUES);

    /* Each value set above is read by exactly one row: a field without a
     * row leaves its value unseen, a field with two rows sees it twice. */
    unsigned seen_server[N_SERVER_VALUES] = {0}, seen_pool[N_POOL_VALUES] = {0};
    for (size_t i = 0; i < n; i++) {
        assert_true(f[i].size == 4 || f[i].size == 8);
        uint64_t v = ps__metrics_value(&f[i], &distinct_server, &distinct_pool);
        if (f[i].from == PS__FROM_SERVER) {
            assert_true(v >= 1001 && v < 1001 + N_SERVER_VALUES);
            seen_server[v - 1001]++;
        } else {
            assert_true(v >= 2001 && v < 2001 + N_POOL_VALUES);
            seen_pool[v - 2001]++;
        }
    }
    for (unsigned i = 0; i < N_SERVER_VALUES; i++)
        assert_int_equal(seen_server[i], 1);
    for (unsigned i = 0; i < N_POOL_VALUES; i++)
        assert_int_equal(seen_pool[i], 1);

    /* And each appears in the text, under its name, with HELP and TYPE. */
    char *text = render_big(&distinct_server, &distinct_pool, NULL);
    for (size_t i = 0; i < n; i++) {
        char want[256];
        uint64_t v = ps__metrics_value(&f[i], &distinct_server, &distinct_pool);
        assert_true(strncmp(f[i].name, "poolsrv_", 8) == 0);
        assert_true(f[i].help != NULL && f[i].help[0] != '\0');
        assert_null(strpbrk(f[i].help, "\\\n"));
        /* Counters, and only counters, end in _total. */
        assert_int_equal(ends_with(f[i].name, "_total"), f[i].type == PS__COUNTER);
        snprintf(want, sizeof want, "\n%s %llu\n", f[i].name, (unsigned long long)v);
        assert_non_null(strstr(text, want));
        snprintf(want, sizeof want, "# HELP %s %s\n", f[i].name, f[i].help);
        assert_non_null(strstr(text, want));
        snprintf(want, sizeof want, "# TYPE %s %s\n", f[i].name,
                 f[i].type == PS__COUNTER ? "counter" : "gauge");
        assert_non_null(strstr(text, want));
    }
    /* A few by name, so the table's names are pinned too. */
    assert_non_null(strstr(text, "\npoolsrv_proxy_errors_total 1011\n"));
    assert_non_null(strstr(text, "\npoolsrv_curr_connections 1001\n"));
    assert_non_null(strstr(text, "\npoolsrv_output_overflows_total 1012\n"));
    assert_non_null(strstr(text, "\npoolsrv_sends_refused_total 1013\n"));
    assert_non_null(strstr(text, "\npoolsrv_bytes_in_total 1016\n"));
    assert_non_null(strstr(text, "\npoolsrv_admin_refused_total 1023\n"));
    assert_non_null(strstr(text, "\npoolsrv_uptime_seconds 1026\n"));
    assert_non_null(strstr(text, "\npoolsrv_rejected_proxy_pending_total 1028\n"));
    assert_non_null(strstr(text, "\npoolsrv_tls_errors_total 1030\n"));
    assert_non_null(strstr(text, "\npoolsrv_jobs_submitted_total 2001\n"));
    assert_non_null(strstr(text, "\npoolsrv_queue_capacity 2011\n"));
    free(text);
}

static void test_render_histogram(void **state)
{
    (void)state;
    ps__hist h;
    ps__hist_init(&h);
    ps__hist_observe(&h, 10000);         /* le 0.00001 */
    ps__hist_observe(&h, 10001);         /* le 0.000025 */
    ps__hist_observe(&h, 234556000);     /* le 0.25 */
    ps__hist_observe(&h, 1000000000);    /* le 1 */
    ps__hist_observe(&h, 99999999000);   /* +Inf */
    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &h);

    char *text = render_big(&distinct_server, &distinct_pool, &s);
    assert_non_null(strstr(text, "# HELP poolsrv_handler_seconds "));
    assert_non_null(strstr(text, "# TYPE poolsrv_handler_seconds histogram\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"0.00001\"} 1\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"0.000025\"} 2\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"0.1\"} 2\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"0.25\"} 3\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"1\"} 4\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"2.5\"} 4\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"10\"} 4\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"+Inf\"} 5\n"));
    /* 10 + 11 + 234556 + 1000000 + 99999999 us, exactly, in seconds */
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_sum 101.234575001\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_count 5\n"));

    /* Every bucket, in order, each count >= the one before. */
    const char *p = text;
    uint64_t prev = 0;
    for (unsigned i = 0; i < PS__HIST_BUCKETS; i++) {
        p = strstr(p, "poolsrv_handler_seconds_bucket{le=\"");
        assert_non_null(p);
        p = strchr(p, '}');
        unsigned long long c = strtoull(p + 1, NULL, 10);
        assert_true(c >= prev);
        prev = c;
    }
    assert_null(strstr(p, "_bucket"));
    free(text);

    /* Empty: zeros, and a sum of "0". */
    ps__hist_snapshot zero = {0};
    text = render_big(&distinct_server, &distinct_pool, &zero);
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_bucket{le=\"+Inf\"} 0\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_sum 0\n"));
    free(text);
}

static void test_render_without_histogram(void **state)
{
    (void)state;
    char *text = render_big(&distinct_server, &distinct_pool, NULL);
    assert_null(strstr(text, "poolsrv_handler_seconds"));
    char want[128];
    snprintf(want, sizeof want, "\npoolsrv_build_info{version=\"%s\"} 1\n", ps_version());
    assert_non_null(strstr(text, want));
    assert_non_null(strstr(text, "# TYPE poolsrv_build_info gauge\n"));
    free(text);
}

static void test_render_too_small(void **state)
{
    (void)state;
    ps__hist_snapshot s = {0};
    s.bucket[3] = 7;
    s.count = 7;
    int need = ps__metrics_render(NULL, 0, &distinct_server, &distinct_pool, &s);
    assert_true(need > 1000);

    char *full = render_big(&distinct_server, &distinct_pool, &s);
    assert_int_equal(strlen(full), (size_t)need);

    char *buf = malloc((size_t)need + 1);
    assert_non_null(buf);
    /* Room for the text but not its NUL, and much less: "" and the length. */
    size_t caps[] = {(size_t)need, (size_t)need - 1, 100, 1};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) {
        memset(buf, 'x', (size_t)need + 1);
        assert_int_equal(ps__metrics_render(buf, caps[i], &distinct_server, &distinct_pool, &s),
                         need);
        assert_int_equal(buf[0], '\0');
        assert_int_equal(buf[caps[i]], 'x'); /* nothing written past cap */
    }
    /* cap 0 writes nothing at all. */
    memset(buf, 'x', (size_t)need + 1);
    assert_int_equal(ps__metrics_render(buf, 0, &distinct_server, &distinct_pool, &s), need);
    assert_int_equal(buf[0], 'x');
    /* The returned length + 1 is enough, and gives the same text. */
    assert_int_equal(ps__metrics_render(buf, (size_t)need + 1, &distinct_server, &distinct_pool,
                                        &s),
                     need);
    assert_string_equal(buf, full);
    free(buf);
    free(full);
}

static void test_render_einval(void **state)
{
    (void)state;
    char buf[16];
    assert_int_equal(ps__metrics_render(buf, sizeof buf, NULL, &distinct_pool, NULL), -EINVAL);
    assert_int_equal(ps__metrics_render(buf, sizeof buf, &distinct_server, NULL, NULL), -EINVAL);
    assert_int_equal(ps__metrics_render(NULL, 16, &distinct_server, &distinct_pool, NULL),
                     -EINVAL);
}

/* The type of family `name`, from the TYPE lines seen so far. */
typedef struct family {
    char name[128];
    char type[16];
    bool help;
} family;

/* Checks the text line by line against the exposition format: HELP, then
 * TYPE, then samples of that family; no family twice; values are unsigned
 * decimals (no NaN, no Inf outside le="+Inf"). */
static void check_well_formed(const char *text)
{
    family fam[64];
    int nfam = 0;
    const char *line = text;
    assert_true(ends_with(text, "\n"));
    while (*line != '\0') {
        const char *eol = strchr(line, '\n');
        assert_non_null(eol);
        char l[512];
        size_t len = (size_t)(eol - line);
        assert_true(len > 0 && len < sizeof l);
        memcpy(l, line, len);
        l[len] = '\0';
        line = eol + 1;

        char name[128], rest[400];
        if (strncmp(l, "# HELP ", 7) == 0) {
            assert_int_equal(sscanf(l + 7, "%127s %399[^\n]", name, rest), 2);
            for (int i = 0; i < nfam; i++)
                assert_string_not_equal(fam[i].name, name); /* no family twice */
            assert_true(nfam < 64);
            snprintf(fam[nfam].name, sizeof fam[nfam].name, "%s", name);
            fam[nfam].type[0] = '\0';
            fam[nfam].help = true;
            nfam++;
        } else if (strncmp(l, "# TYPE ", 7) == 0) {
            char type[16];
            assert_int_equal(sscanf(l + 7, "%127s %15s", name, type), 2);
            assert_true(nfam > 0);
            assert_string_equal(fam[nfam - 1].name, name); /* right after its HELP */
            assert_string_equal(fam[nfam - 1].type, "");   /* once */
            assert_true(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                        strcmp(type, "histogram") == 0);
            snprintf(fam[nfam - 1].type, sizeof fam[nfam - 1].type, "%s", type);
        } else {
            assert_true(l[0] != '#');
            assert_true(nfam > 0);
            const family *cur = &fam[nfam - 1];
            assert_string_not_equal(cur->type, "");
            size_t nl = strcspn(l, "{ ");
            assert_true(nl < sizeof name);
            memcpy(name, l, nl);
            name[nl] = '\0';
            if (strcmp(cur->type, "histogram") == 0) {
                size_t fl = strlen(cur->name);
                assert_true(strncmp(name, cur->name, fl) == 0);
                assert_true(strcmp(name + fl, "_bucket") == 0 || strcmp(name + fl, "_sum") == 0 ||
                            strcmp(name + fl, "_count") == 0);
            } else {
                assert_string_equal(name, cur->name);
            }
            if (l[nl] == '{') {
                const char *close = strstr(l + nl, "} ");
                assert_non_null(close);
                nl = (size_t)(close - l) + 1;
                /* Inf only as the last bucket's bound */
                assert_true(strstr(l, "Inf") == NULL || strstr(l, "{le=\"+Inf\"}") != NULL);
            }
            const char *value = l + nl;
            assert_int_equal(*value, ' ');
            value++;
            assert_true(*value >= '0' && *value <= '9');
            assert_int_equal(strspn(value, "0123456789."), strlen(value));
            assert_true(strchr(value, '.') == strrchr(value, '.')); /* one dot at most */
        }
    }
    for (int i = 0; i < nfam; i++) {
        assert_true(fam[i].help);
        assert_string_not_equal(fam[i].type, "");
    }
    assert_int_equal(nfam, N_SERVER_VALUES + N_POOL_VALUES + 2);
}

static void test_render_well_formed(void **state)
{
    (void)state;
    ps__hist h;
    ps__hist_init(&h);
    for (uint64_t v = 0; v < 20000000; v = v * 3 + 1)
        ps__hist_observe(&h, v * 1000);
    ps__hist_snapshot s = {0};
    ps__hist_add(&s, &h);
    char *text = render_big(&distinct_server, &distinct_pool, &s);
    check_well_formed(text);
    assert_null(strstr(text, "nan"));
    assert_null(strstr(text, "NaN"));
    free(text);

    /* The largest values too: every field at its type's maximum. */
    ps_server_stats big_server;
    ps_pool_stats big_pool;
    memset(&big_server, 0xff, sizeof big_server);
    memset(&big_pool, 0xff, sizeof big_pool);
    ps__hist_snapshot big_hist;
    memset(&big_hist, 0, sizeof big_hist);
    big_hist.bucket[PS__HIST_BOUNDS] = UINT64_MAX;
    big_hist.count = UINT64_MAX;
    big_hist.sum_ns = UINT64_MAX;
    text = render_big(&big_server, &big_pool, &big_hist);
    check_well_formed(text);
    assert_non_null(strstr(text, "\npoolsrv_lines_total 18446744073709551615\n"));
    assert_non_null(strstr(text, "\npoolsrv_max_threads 4294967295\n"));
    assert_non_null(strstr(text, "\npoolsrv_handler_seconds_sum 18446744073.709551615\n"));
    /* What the admin port must make room for, at the most (its reply
     * buffer holds 16 KiB). */
    assert_true(strlen(text) < 12288);
    free(text);
}

/* ---- --emit ------------------------------------------------------------- */

/* A rendering like a busy server's, for the Python check. */
static int emit(void)
{
    ps_server_stats st = {
        .curr_connections = 12, .total_connections = 48213, .rejected_connections = 7,
        .rejected_busy = 5, .rejected_max = 2, .slot_waits = 31, .replies_deferred = 950,
        .reloads = 2, .reload_errors = 1, .proxy_errors = 4, .lines = 1284091, .blocks = 52011, .bytes_in = 73829011,
        .bytes_out = 80122934, .lines_too_long = 3, .idle_timeouts = 411, .send_timeouts = 1,
        .admin_commands = 64, .slow_handlers = 9, .parked_connections = 8,
        .uptime_seconds = 86400,
    };
    ps_pool_stats ps = {
        .submitted = 1290312, .completed = 1290301, .rejected = 5, .futures_begun = 950,
        .futures_completed = 948, .futures_live = 2, .max_threads = 16, .busy_threads = 11,
        .available_threads = 5, .queue_depth = 3, .queue_capacity = 1024,
    };
    /* Mostly under a millisecond, a tail of seconds, summed over stripes. */
    ps__hist stripes[4];
    ps__hist_snapshot s = {0};
    for (unsigned i = 0; i < 4; i++) {
        ps__hist_init(&stripes[i]);
        for (unsigned j = 0; j < 5000; j++)
            ps__hist_observe(&stripes[i], ((uint64_t)((j * 7919 + i) % 200) << (j % 16)) * 1000);
        ps__hist_add(&s, &stripes[i]);
    }
    int need = ps__metrics_render(NULL, 0, &st, &ps, &s);
    if (need < 0)
        return 1;
    char *buf = malloc((size_t)need + 1);
    if (buf == NULL || ps__metrics_render(buf, (size_t)need + 1, &st, &ps, &s) != need) {
        free(buf);
        return 1;
    }
    int rc = fwrite(buf, 1, (size_t)need, stdout) == (size_t)need && fflush(stdout) == 0 ? 0 : 1;
    free(buf);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--emit") == 0)
        return emit();
    if (argc > 1) {
        fprintf(stderr, "usage: %s [--emit]\n", argv[0]);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hist_layout),
        cmocka_unit_test(test_hist_bounds_are_le),
        cmocka_unit_test(test_hist_zero_and_huge),
        cmocka_unit_test(test_hist_sum_count_and_stripes),
        cmocka_unit_test(test_hist_concurrent_exact),
        cmocka_unit_test(test_render_every_field),
        cmocka_unit_test(test_render_histogram),
        cmocka_unit_test(test_render_without_histogram),
        cmocka_unit_test(test_render_too_small),
        cmocka_unit_test(test_render_einval),
        cmocka_unit_test(test_render_well_formed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
