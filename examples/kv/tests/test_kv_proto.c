/*
 * memcached's ASCII protocol for the kv module: the command-line parser
 * (every command, every error form) and the reply helpers. The expected
 * replies were recorded from memcached 1.6.18; where this parser is
 * deliberately stricter the test says so.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

#define BAD_FORMAT "CLIENT_ERROR bad command line format\r\n"
#define DELETE_USAGE "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"

static int parse(const char *line, kv_cmd *cmd)
{
    return kv_proto_parse(line, strlen(line), cmd);
}

static void assert_key(const kv_key *k, const char *want)
{
    assert_int_equal(k->len, strlen(want));
    assert_memory_equal(k->data, want, k->len);
}

/* line fails with code and memcached's reply text. */
static void assert_fails(const char *line, int code, const char *reply)
{
    kv_cmd cmd;
    int rc = parse(line, &cmd);
    if (rc != code)
        print_error("line \"%s\": %d, expected %d\n", line, rc, code);
    assert_int_equal(rc, code);
    assert_non_null(cmd.reply);
    assert_string_equal(cmd.reply, reply);
    assert_int_equal(cmd.reply_len, strlen(reply));
}

/* --- each command ----------------------------------------------------------- */

static void test_get_forms(void **state)
{
    (void)state;
    kv_cmd cmd;
    assert_int_equal(parse("get k", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_GET);
    assert_int_equal(cmd.nkeys, 1);
    assert_int_equal(cmd.nkeys_total, 1);
    assert_key(&cmd.keys[0], "k");
    assert_null(cmd.reply);
    assert_int_equal(kv_proto_next_keys(&cmd), 0);

    assert_int_equal(parse("  gets  a   bb ccc ", &cmd), 0); /* runs of spaces */
    assert_int_equal(cmd.type, KV_CMD_GETS);
    assert_int_equal(cmd.nkeys, 3);
    assert_key(&cmd.keys[0], "a");
    assert_key(&cmd.keys[1], "bb");
    assert_key(&cmd.keys[2], "ccc");

    assert_int_equal(parse("gat 100 a b", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_GAT);
    assert_int_equal(cmd.exptime, 100);
    assert_int_equal(cmd.nkeys, 2);
    assert_key(&cmd.keys[1], "b");
    assert_int_equal(parse("gats -1 a", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_GATS);
    assert_int_equal(cmd.exptime, -1);
    /* memcached answers "gat 0" with no key: END */
    assert_int_equal(parse("gat 0", &cmd), 0);
    assert_int_equal(cmd.nkeys, 0);

    /* a key of 250 bytes, and bytes >= 0x80 (UTF-8) */
    char line[300];
    snprintf(line, sizeof line, "get %0250d", 7);
    assert_int_equal(parse(line, &cmd), 0);
    assert_int_equal(cmd.keys[0].len, 250);
    assert_int_equal(parse("get caf\xc3\xa9", &cmd), 0);
    assert_int_equal(cmd.keys[0].len, 5);
}

/* memcached has no bound on a get's keys; the parser gives them in batches
 * of KV_PROTO_MAX_KEYS, in order, and checks them all first. */
static void test_get_many_keys(void **state)
{
    (void)state;
    enum { N = 100 };
    char line[N * 8 + 8];
    size_t n = (size_t)snprintf(line, sizeof line, "get");
    for (int i = 0; i < N; i++)
        n += (size_t)snprintf(line + n, sizeof line - n, " key%d", i);
    kv_cmd cmd;
    assert_int_equal(parse(line, &cmd), 0);
    assert_int_equal(cmd.nkeys_total, N);
    assert_int_equal(cmd.nkeys, KV_PROTO_MAX_KEYS);
    int seen = 0;
    size_t batches = 0;
    do {
        for (size_t i = 0; i < cmd.nkeys; i++, seen++) {
            char want[16];
            snprintf(want, sizeof want, "key%d", seen);
            assert_key(&cmd.keys[i], want);
        }
        batches++;
    } while (kv_proto_next_keys(&cmd) > 0);
    assert_int_equal(seen, N);
    assert_int_equal(batches, (N + KV_PROTO_MAX_KEYS - 1) / KV_PROTO_MAX_KEYS);
    assert_int_equal(kv_proto_next_keys(&cmd), 0); /* stays done */

    /* a bad key anywhere fails the whole line, before any lookup */
    char bad[N * 8 + 300];
    snprintf(bad, sizeof bad, "%s %0251d", line, 1);
    assert_fails(bad, KV_PROTO_EFORMAT, BAD_FORMAT);
    snprintf(bad, sizeof bad, "get %0251d %s", 1, line + 4);
    assert_fails(bad, KV_PROTO_EFORMAT, BAD_FORMAT);
}

static void test_storage_commands(void **state)
{
    (void)state;
    const struct {
        const char *line;
        kv_cmd_type type;
    } cases[] = {
        {"set k 5 100 10", KV_CMD_SET},     {"add k 5 100 10", KV_CMD_ADD},
        {"replace k 5 100 10", KV_CMD_REPLACE}, {"append k 5 100 10", KV_CMD_APPEND},
        {"prepend k 5 100 10", KV_CMD_PREPEND},
    };
    kv_cmd cmd;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(parse(cases[i].line, &cmd), 0);
        assert_int_equal(cmd.type, cases[i].type);
        assert_key(&cmd.keys[0], "k");
        assert_int_equal(cmd.nkeys, 1);
        assert_int_equal(cmd.flags, 5);
        assert_int_equal(cmd.exptime, 100);
        assert_int_equal(cmd.bytes, 10);
        assert_false(cmd.noreply);
    }
    assert_int_equal(parse("set key 4294967295 -1 0 noreply", &cmd), 0);
    assert_int_equal(cmd.flags, UINT32_MAX);
    assert_int_equal(cmd.exptime, -1);
    assert_int_equal(cmd.bytes, 0);
    assert_true(cmd.noreply);
    assert_int_equal(parse("set k 0 1700000000 2147483645", &cmd), 0);
    assert_int_equal(cmd.bytes, KV_PROTO_BYTES_MAX);
    assert_int_equal(cmd.exptime, 1700000000);
    /* what strtol/strtoul accept, memcached accepts: a '+', leading zeros */
    assert_int_equal(parse("set k +1 00 01", &cmd), 0);
    assert_int_equal(cmd.flags, 1);
    assert_int_equal(cmd.bytes, 1);

    assert_int_equal(parse("cas k 1 2 3 18446744073709551615", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_CAS);
    assert_int_equal(cmd.cas, UINT64_MAX);
    assert_int_equal(cmd.bytes, 3);
    assert_false(cmd.noreply);
    assert_int_equal(parse("cas k 1 2 3 99 noreply", &cmd), 0);
    assert_int_equal(cmd.cas, 99);
    assert_true(cmd.noreply);
}

/* memcached reads only the last token as noreply and ignores another word
 * there: "set k 0 0 5 noreplyx" stores and replies STORED (memcached
 * 1.6.18 does). The same for touch, incr, decr, verbosity, flush_all. */
static void test_noreply_token(void **state)
{
    (void)state;
    kv_cmd cmd;
    assert_int_equal(parse("set k 0 0 5 noreplyx", &cmd), 0);
    assert_false(cmd.noreply);
    assert_int_equal(cmd.bytes, 5);
    assert_int_equal(parse("set k 0 0 5 NOREPLY", &cmd), 0);
    assert_false(cmd.noreply);
    assert_int_equal(parse("touch k 10 noreplyx", &cmd), 0);
    assert_false(cmd.noreply);
    assert_int_equal(parse("incr k 1 whatever", &cmd), 0);
    assert_false(cmd.noreply);
    assert_int_equal(parse("flush_all 0 noreplyx", &cmd), 0);
    assert_false(cmd.noreply);
    /* noreply also silences the error of its own line (memcached) */
    assert_fails("set k 0 x 1 noreply", KV_PROTO_EFORMAT, BAD_FORMAT);
    assert_true((parse("set k 0 x 1 noreply", &cmd), cmd.noreply));
    assert_true((parse("set k 0 0 noreply", &cmd), cmd.noreply)); /* bytes = "noreply" */
    assert_true((parse("incr k x noreply", &cmd), cmd.noreply));
    assert_true((parse("touch k x noreply", &cmd), cmd.noreply));
    assert_true((parse("delete k 1 noreply", &cmd), cmd.noreply));
    /* but not an ERROR for a wrong count of tokens */
    assert_fails("set k 0 0 5 noreply extra", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    parse("set k 0 0 5 noreply extra", &cmd);
    assert_false(cmd.noreply);
}

static void test_delete_forms(void **state)
{
    (void)state;
    const char *usage = DELETE_USAGE;
    kv_cmd cmd;
    assert_int_equal(parse("delete k", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_DELETE);
    assert_key(&cmd.keys[0], "k");
    assert_false(cmd.noreply);
    assert_int_equal(parse("delete k 0", &cmd), 0); /* the old hold time, 0 only */
    assert_false(cmd.noreply);
    assert_int_equal(parse("delete k noreply", &cmd), 0);
    assert_true(cmd.noreply);
    assert_int_equal(parse("delete k 0 noreply", &cmd), 0);
    assert_true(cmd.noreply);
    assert_fails("delete k 1", KV_PROTO_EDELETE, usage);
    assert_fails("delete k x", KV_PROTO_EDELETE, usage);
    assert_fails("delete k a b", KV_PROTO_EDELETE, usage);
    assert_fails("delete k 1 noreply", KV_PROTO_EDELETE, usage);
    assert_fails("delete", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("delete k 0 noreply x", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    char line[300];
    snprintf(line, sizeof line, "delete %0251d", 1);
    assert_fails(line, KV_PROTO_EFORMAT, BAD_FORMAT);
}

static void test_incr_decr_touch(void **state)
{
    (void)state;
    kv_cmd cmd;
    assert_int_equal(parse("incr k 18446744073709551615", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_INCR);
    assert_int_equal(cmd.delta, UINT64_MAX);
    assert_key(&cmd.keys[0], "k");
    assert_int_equal(parse("decr k 0 noreply", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_DECR);
    assert_int_equal(cmd.delta, 0);
    assert_true(cmd.noreply);
    assert_int_equal(parse("touch k -5", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_TOUCH);
    assert_int_equal(cmd.exptime, -5);
    assert_int_equal(parse("touch k 100 noreply", &cmd), 0);
    assert_int_equal(cmd.exptime, 100);
    assert_true(cmd.noreply);

    const char *delta = "CLIENT_ERROR invalid numeric delta argument\r\n";
    const char *exptime = "CLIENT_ERROR invalid exptime argument\r\n";
    assert_fails("incr k", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("incr k 1 2 3", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("incr k x", KV_PROTO_EDELTA, delta);
    assert_fails("incr k -1", KV_PROTO_EDELTA, delta);
    assert_fails("decr k 18446744073709551616", KV_PROTO_EDELTA, delta);
    assert_fails("incr k 1x", KV_PROTO_EDELTA, delta);
    assert_fails("touch k", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("touch k x", KV_PROTO_EEXPTIME, exptime);
    assert_fails("touch k 9223372036854775808", KV_PROTO_EEXPTIME, exptime);
    assert_fails("gat x k", KV_PROTO_EEXPTIME, exptime);
    char line[300];
    snprintf(line, sizeof line, "incr %0251d 1", 1); /* the key is judged first */
    assert_fails(line, KV_PROTO_EFORMAT, BAD_FORMAT);
    snprintf(line, sizeof line, "touch %0251d x", 1);
    assert_fails(line, KV_PROTO_EFORMAT, BAD_FORMAT);
}

/* memcached 1.6.18 reads an exptime with strtol into an int32_t: only the
 * low 32 bits count, as a signed number. Each line's outcome was checked
 * against it (a set, then a get: the item there or gone). */
static void test_exptime_as_memcached(void **state)
{
    (void)state;
    const struct {
        const char *token;
        int64_t exptime; /* what memcached goes on with */
    } cases[] = {
        {"99999999999", 1215752191},          /* an absolute time in 2008: gone */
        {"9223372036854775807", -1},          /* 2^63-1: gone */
        {"2147483648", -2147483647 - 1},      /* 2^31: gone */
        {"4294967295", -1},                   /* gone */
        {"4294967296", 0},                    /* 2^32: never expires */
        {"4294967396", 100},                  /* 2^32+100: 100 seconds */
        {"-2147483649", 2147483647},          /* there (until 2038) */
        {"-9223372036854775808", 0},          /* -2^63: never expires */
        {"2147483647", 2147483647},           /* in range: as given */
        {"-1", -1},
        {"2592000", 2592000},
    };
    const char *forms[] = {"set k 0 %s 1", "cas k 0 %s 1 1", "touch k %s", "gat %s k",
                           "gats %s k", "flush_all %s"};
    char line[96];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t f = 0; f < sizeof forms / sizeof forms[0]; f++) {
            snprintf(line, sizeof line, forms[f], cases[i].token);
            kv_cmd cmd;
            assert_int_equal(parse(line, &cmd), 0);
            int64_t got = cmd.type == KV_CMD_FLUSH_ALL ? cmd.delay : cmd.exptime;
            if (got != cases[i].exptime) {
                print_error("\"%s\": exptime %lld, memcached reads %lld\n", line, (long long)got,
                            (long long)cases[i].exptime);
                fail();
            }
        }
    }
    /* past 64 bits strtol fails, and memcached refuses the line */
    assert_fails("set k 0 9223372036854775808 1", KV_PROTO_EFORMAT, BAD_FORMAT);
    assert_fails("touch k 18446744073709551616", KV_PROTO_EEXPTIME,
                 "CLIENT_ERROR invalid exptime argument\r\n");
}

static void test_other_commands(void **state)
{
    (void)state;
    kv_cmd cmd;
    assert_int_equal(parse("flush_all", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_FLUSH_ALL);
    assert_int_equal(cmd.delay, 0);
    assert_false(cmd.noreply);
    assert_int_equal(parse("flush_all 30", &cmd), 0);
    assert_int_equal(cmd.delay, 30);
    assert_int_equal(parse("flush_all noreply", &cmd), 0);
    assert_true(cmd.noreply);
    assert_int_equal(cmd.delay, 0);
    assert_int_equal(parse("flush_all 10 noreply", &cmd), 0);
    assert_int_equal(cmd.delay, 10);
    assert_true(cmd.noreply);
    assert_int_equal(parse("flush_all -1", &cmd), 0); /* now */
    assert_int_equal(cmd.delay, -1);
    assert_int_equal(parse("flush_all 1 2", &cmd), 0); /* memcached ignores the 2 */
    assert_int_equal(cmd.delay, 1);
    assert_fails("flush_all x", KV_PROTO_EEXPTIME, "CLIENT_ERROR invalid exptime argument\r\n");
    assert_fails("flush_all 1 2 3", KV_PROTO_EUNKNOWN, "ERROR\r\n");

    assert_int_equal(parse("version", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_VERSION);
    assert_int_equal(parse("version x y", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_VERSION);
    assert_int_equal(parse("quit", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_QUIT);
    assert_int_equal(parse("quit now", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_QUIT);

    assert_int_equal(parse("verbosity 1", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_VERBOSITY);
    assert_int_equal(cmd.level, 1);
    assert_int_equal(parse("verbosity 2 noreply", &cmd), 0);
    assert_int_equal(cmd.level, 2);
    assert_true(cmd.noreply);
    assert_int_equal(parse("verbosity 1 2", &cmd), 0);
    assert_fails("verbosity", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("verbosity 1 2 3", KV_PROTO_EUNKNOWN, "ERROR\r\n");
    assert_fails("verbosity x", KV_PROTO_EFORMAT, BAD_FORMAT);

    assert_int_equal(parse("stats", &cmd), 0);
    assert_int_equal(cmd.type, KV_CMD_STATS);
    assert_int_equal(cmd.nkeys, 0);
    assert_int_equal(parse("stats detail on", &cmd), 0);
    assert_int_equal(cmd.nkeys, 2);
    assert_key(&cmd.keys[0], "detail");
    assert_key(&cmd.keys[1], "on");
}

/* --- error forms -------------------------------------------------------------- */

static void test_unknown_and_token_counts(void **state)
{
    (void)state;
    const char *error_lines[] = {
        "",          /* no command */
        "    ",      /* only spaces */
        "g",         /* shorter than any command */
        "foo",       "GET k", "Set k 0 0 1", "get",   "gets",  "gat",
        "set\tk 0 0 1", /* a tab does not separate */
        "set k 0 0", "set k 0 0 5 noreply extra", "add k", "replace k 0 0",
        "cas k 0 0 1", "cas k 0 0 1 2 noreply x", "mg k v", "ms k 1", "bget k",
        "shutdown",  "cache_memlimit 100", "slabs automove 1", "lru_crawler crawl all",
        "watch",     "getx k", "sets k 0 0 1",
    };
    for (size_t i = 0; i < sizeof error_lines / sizeof error_lines[0]; i++)
        assert_fails(error_lines[i], KV_PROTO_EUNKNOWN, "ERROR\r\n");
    kv_cmd cmd;
    parse("foo", &cmd);
    assert_int_equal(cmd.type, KV_CMD_NONE);
    parse("set k 0 0", &cmd);
    assert_int_equal(cmd.type, KV_CMD_SET); /* known, but malformed */
}

static void test_bad_format(void **state)
{
    (void)state;
    char line[400];
    const char *bad[] = {
        "set k 0 0 -1",                    /* negative bytes */
        "set k 0 0 2147483646",            /* past INT_MAX - 2 */
        "set k 0 0 2147483648",            /* 2 GB */
        "set k 0 0 99999999999999999999999", /* past any integer */
        /* memcached reads bytes into 32 bits: 4294967296 as 0, 4294967301
         * as 5 (and stores the next 5 bytes). Refused here, as memcached
         * refuses 2147483646..4294967295 (README, Differences). */
        "set k 0 0 4294967296", "set k 0 0 4294967301",
        "set k 0 0 12x",                   /* trailing garbage */
        "set k 0 0 0x10",   "set k 0 0 +",  "set k 0 0 1.5",
        "set k x 0 1",      "set k -1 0 1", "set k 4294967296 0 1", /* flags past 32 bits */
        "set k 0 1x 1",     "set k 0 9223372036854775808 1",        /* exptime past 64 bits */
        "set k 0 -- 1",     "set k 0 -+1 1",
        "cas k 0 0 1 x",    "cas k 0 0 1 -1", "cas k 0 0 1 18446744073709551616",
        "get ok a\rz", /* a CR inside a key */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_fails(bad[i], KV_PROTO_EFORMAT, BAD_FORMAT);
    /* Other control characters are a key's, as memcached takes them
     * (memcaslap sends keys starting with 0x10 bytes). */
    const char *ctl[] = {"get a\x01z", "get a\x7fz", "get a\tz", "set \x10\x10k 0 0 1"};
    for (size_t i = 0; i < sizeof ctl / sizeof ctl[0]; i++) {
        kv_cmd cmd;
        assert_int_equal(parse(ctl[i], &cmd), 0);
        assert_int_equal(cmd.nkeys, 1);
    }
    /* keys of 251 bytes, in every command that takes keys */
    const char *forms[] = {"get %s", "gets a %s", "gat 1 %s", "set %s 0 0 1", "add %s 0 0 1",
                           "cas %s 0 0 1 1", "append %s 0 0 1", "delete %s"};
    char key[252];
    memset(key, 'k', 251);
    key[251] = '\0';
    for (size_t i = 0; i < sizeof forms / sizeof forms[0]; i++) {
        snprintf(line, sizeof line, forms[i], key);
        assert_fails(line, KV_PROTO_EFORMAT, BAD_FORMAT);
        key[250] = '\0'; /* 250 is fine */
        snprintf(line, sizeof line, forms[i], key);
        kv_cmd cmd;
        assert_int_equal(parse(line, &cmd), 0);
        key[250] = 'k';
    }
    /* a NUL byte is data to the framer; in a key or number it is refused */
    kv_cmd cmd;
    assert_int_equal(kv_proto_parse("get a\0b", 7, &cmd), KV_PROTO_EFORMAT);
    assert_int_equal(kv_proto_parse("set k 0 0 1\0", 12, &cmd), KV_PROTO_EFORMAT);
    assert_int_equal(kv_proto_parse("get\0 k", 6, &cmd), KV_PROTO_EUNKNOWN);
}

/* The first reply memcached 1.6.18 sent for each line (recorded from it),
 * against what the module will send on this parser's result. */
static void test_replies_as_memcached(void **state)
{
    (void)state;
    const struct {
        const char *line;
        const char *memcached; /* NULL: parsed (memcached went on to do it) */
    } cases[] = {
        {"get", "ERROR\r\n"},
        {"gets", "ERROR\r\n"},
        {"set k 0 0", "ERROR\r\n"},
        {"set k 0 0 5 noreplyx", NULL},
        {"set k 0 0 5 noreply extra", "ERROR\r\n"},
        {"set k 0 0 -1", BAD_FORMAT},
        {"set k 0 0 2147483647", BAD_FORMAT},
        {"set k 0 0 2147483646", BAD_FORMAT},
        {"set k 0 0 12x", BAD_FORMAT},
        {"set k x 0 1", BAD_FORMAT},
        {"set k 18446744073709551616 0 1", BAD_FORMAT},
        {"set k -1 0 1", BAD_FORMAT},
        {"set k 0 -1 1", NULL},
        {"set k 0 99999999999 1", NULL},
        {"set k 0 0 +1", NULL},
        {"set k  0  0  1", NULL},
        {"set k 0 0 1 ", NULL},
        {" set k 0 0 1", NULL},
        {"set\tk 0 0 1", "ERROR\r\n"},
        {"foo", "ERROR\r\n"},
        {"", "ERROR\r\n"},
        {"GET k", "ERROR\r\n"},
        {"cas k 0 0 1", "ERROR\r\n"},
        {"cas k 0 0 1 x", BAD_FORMAT},
        {"cas k 0 0 1 -1", BAD_FORMAT},
        {"incr k", "ERROR\r\n"},
        {"incr k x", "CLIENT_ERROR invalid numeric delta argument\r\n"},
        {"incr k -1", "CLIENT_ERROR invalid numeric delta argument\r\n"},
        {"incr k 18446744073709551616", "CLIENT_ERROR invalid numeric delta argument\r\n"},
        {"incr k 1 2 3", "ERROR\r\n"},
        {"delete k 0", NULL},
        {"delete k 1", DELETE_USAGE},
        {"delete k x", DELETE_USAGE},
        {"delete", "ERROR\r\n"},
        {"delete k a b", DELETE_USAGE},
        {"delete k 0 noreply x", "ERROR\r\n"},
        {"touch k", "ERROR\r\n"},
        {"touch k x", "CLIENT_ERROR invalid exptime argument\r\n"},
        {"flush_all x", "CLIENT_ERROR invalid exptime argument\r\n"},
        {"flush_all -1", NULL},
        {"flush_all 1 2", NULL},
        {"flush_all 1 2 3", "ERROR\r\n"},
        {"verbosity", "ERROR\r\n"},
        {"verbosity x", BAD_FORMAT},
        {"verbosity 1 2", NULL},
        {"verbosity 1 2 3", "ERROR\r\n"},
        {"version x", NULL},
        {"quit x", NULL},
        {"gat", "ERROR\r\n"},
        {"gat 0", NULL},
        {"gat x k", "CLIENT_ERROR invalid exptime argument\r\n"},
        {"gets  k   k ", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        kv_cmd cmd;
        int rc = parse(cases[i].line, &cmd);
        if ((rc == 0) != (cases[i].memcached == NULL) ||
            (rc != 0 && strcmp(cmd.reply, cases[i].memcached) != 0)) {
            print_error("\"%s\": got %s, memcached said %s", cases[i].line,
                        rc == 0 ? "(parsed)\n" : cmd.reply,
                        cases[i].memcached != NULL ? cases[i].memcached : "(parsed)\n");
            fail();
        }
    }
}

/* --- replies ------------------------------------------------------------------ */

static void test_result_lines(void **state)
{
    (void)state;
    assert_string_equal(kv_proto_result_line(KV_CMD_SET, KV_OK), "STORED\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_CAS, KV_OK), "STORED\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_DELETE, KV_OK), "DELETED\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_TOUCH, KV_OK), "TOUCHED\r\n");
    assert_null(kv_proto_result_line(KV_CMD_INCR, KV_OK));
    assert_string_equal(kv_proto_result_line(KV_CMD_ADD, KV_NOT_STORED), "NOT_STORED\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_CAS, KV_EXISTS), "EXISTS\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_CAS, KV_NOT_FOUND), "NOT_FOUND\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_DELETE, KV_NOT_FOUND), "NOT_FOUND\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_INCR, KV_NON_NUMERIC),
                        "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_SET, KV_TOO_LARGE),
                        "SERVER_ERROR object too large for cache\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_SET, KV_NO_MEMORY),
                        "SERVER_ERROR out of memory storing object\r\n");
    assert_string_equal(kv_proto_result_line(KV_CMD_DECR, KV_NO_MEMORY),
                        "SERVER_ERROR out of memory\r\n");
}

static void test_value_and_simple_lines(void **state)
{
    (void)state;
    kv_buf b = {0};
    kv_key k = {"key", 3};
    kv_item_info info = {4294967295u, 18446744073709551615ull, 12, NULL};
    assert_int_equal(kv_proto_append_value_line(&b, &k, &info, false), 0);
    assert_int_equal(kv_proto_append_value_line(&b, &k, &info, true), 0);
    assert_int_equal(kv_proto_append_number(&b, 0), 0);
    assert_int_equal(kv_proto_append_number(&b, UINT64_MAX), 0);
    assert_int_equal(kv_proto_append_version(&b, "1.6.18-kv"), 0);
    assert_int_equal(kv_proto_append_stat(&b, "pid", "42"), 0);
    assert_int_equal(kv_proto_append_stat_u64(&b, "uptime", 7), 0);
    assert_int_equal(kv_buf_append(&b, KV_REPLY_END, strlen(KV_REPLY_END)), 0);
    const char *want = "VALUE key 4294967295 12\r\n"
                       "VALUE key 4294967295 12 18446744073709551615\r\n"
                       "0\r\n"
                       "18446744073709551615\r\n"
                       "VERSION 1.6.18-kv\r\n"
                       "STAT pid 42\r\n"
                       "STAT uptime 7\r\n"
                       "END\r\n";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    kv_key long_key = {"x", KV_KEY_MAX + 1};
    assert_true(kv_proto_append_value_line(&b, &long_key, &info, false) < 0);
    assert_int_equal(b.len, strlen(want)); /* nothing half written */
    kv_buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    kv_buf_free(&b); /* twice is fine */
}

/* kv_proto_get_key as the module uses it, for a whole reply in one
 * buffer: a held value is appended (and released) after its VALUE line. */
static kv_result get_key(kv_store *s, const kv_cmd *cmd, const kv_key *key, kv_buf *out)
{
    kv_hit hit;
    kv_result r = kv_proto_get_key(s, cmd, key, out, &hit);
    if (hit.item != NULL) {
        kv_buf_append(out, hit.value, hit.nbytes);
        kv_buf_append(out, "\r\n", 2);
        kv_store_release(hit.item);
    }
    return r;
}

static void test_get_key_into_buffer(void **state)
{
    (void)state;
    kv_store *s;
    assert_int_equal(kv_store_create(&s, NULL), 0);
    const char value[] = "a\r\nb\0c";
    kv_put p = {KV_SET, "k", 1, value, sizeof value - 1, 9, 0, 0};
    uint64_t cas;
    assert_int_equal(kv_store_put(s, &p, &cas), KV_OK);
    kv_cmd cmd;
    assert_int_equal(parse("gets k missing k", &cmd), 0);
    kv_buf b = {0};
    kv_result r[3];
    for (size_t i = 0; i < cmd.nkeys; i++)
        r[i] = get_key(s, &cmd, &cmd.keys[i], &b);
    assert_int_equal(r[0], KV_OK);
    assert_int_equal(r[1], KV_NOT_FOUND);
    assert_int_equal(r[2], KV_OK);
    kv_buf_append(&b, KV_REPLY_END, 5);
    char want[200];
    int n = snprintf(want, sizeof want, "VALUE k 9 6 %llu\r\na\r\nb", (unsigned long long)cas);
    memcpy(want + n, "\0c\r\n", 4);
    n += 4;
    memcpy(want + n, want, (size_t)n); /* the same block twice */
    memcpy(want + 2 * n, "END\r\n", 5);
    assert_int_equal(b.len, (size_t)(2 * n + 5));
    assert_memory_equal(b.data, want, b.len);

    /* get: no cas; gat: the new expiry holds */
    b.len = 0;
    assert_int_equal(parse("get k", &cmd), 0);
    assert_int_equal(get_key(s, &cmd, &cmd.keys[0], &b), KV_OK);
    assert_memory_equal(b.data, "VALUE k 9 6\r\n", 13);
    assert_int_equal(parse("gat -1 k", &cmd), 0);
    assert_int_equal(get_key(s, &cmd, &cmd.keys[0], &b), KV_OK);
    assert_int_equal(get_key(s, &cmd, &cmd.keys[0], &b), KV_NOT_FOUND);

    /* a large value is held, not copied: the buffer gets its VALUE line
     * only, and the value outlives its replacement until released */
    static char big[1000000];
    memset(big, 'z', sizeof big);
    kv_put pb = {KV_SET, "big", 3, big, sizeof big, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &pb, NULL), KV_OK);
    assert_int_equal(parse("get big", &cmd), 0);
    b.len = 0;
    kv_hit hit;
    assert_int_equal(kv_proto_get_key(s, &cmd, &cmd.keys[0], &b, &hit), KV_OK);
    assert_int_equal(b.len, strlen("VALUE big 0 1000000\r\n"));
    assert_non_null(hit.item);
    assert_int_equal(hit.nbytes, sizeof big);
    memset(big, 'y', sizeof big);
    assert_int_equal(kv_store_put(s, &pb, NULL), KV_OK); /* replaced while held */
    assert_int_equal(kv_store_delete(s, "big", 3), KV_OK);
    assert_int_equal(hit.value[0], 'z');
    assert_int_equal(hit.value[sizeof big - 1], 'z');
    kv_store_release(hit.item);
    /* just under KV_HOLD_MIN: copied */
    kv_put pm = {KV_SET, "mid", 3, big, KV_HOLD_MIN - 1, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &pm, NULL), KV_OK);
    assert_int_equal(parse("get mid", &cmd), 0);
    b.len = 0;
    assert_int_equal(kv_proto_get_key(s, &cmd, &cmd.keys[0], &b, &hit), KV_OK);
    assert_null(hit.item);
    assert_int_equal(b.len, strlen("VALUE mid 0 1023\r\n") + KV_HOLD_MIN - 1 + 2);
    kv_buf_free(&b);
    kv_store_destroy(s);
}

/* A binary request gets the binary protocol's error: the layout memcached
 * 1.6.18 answers an opcode it does not know with (0x81, opcode, opaque
 * echoed), with status 0x0083 "Not supported". */
static void test_binary_error(void **state)
{
    (void)state;
    /* get "foo": magic, opcode 0x00, key length 3, body 3, opaque */
    const unsigned char req[KV_PROTO_BINARY_HEADER] = {
        0x80, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03,
        0xde, 0xad, 0xbe, 0xef, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
    };
    const unsigned char want[] = {
        0x81, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x83, 0x00, 0x00, 0x00, 0x0d,
        0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        'N', 'o', 't', ' ', 's', 'u', 'p', 'p', 'o', 'r', 't', 'e', 'd',
    };
    unsigned char out[KV_PROTO_BINARY_ERROR_MAX];
    memset(out, 0xff, sizeof out);
    assert_int_equal(kv_proto_binary_error(req, out), sizeof want);
    assert_memory_equal(out, want, sizeof want);
    unsigned char version[KV_PROTO_BINARY_HEADER] = {0x80, 0x0b};
    kv_proto_binary_error(version, out);
    assert_int_equal(out[1], 0x0b); /* the request's opcode */
}

static void test_stats_lines(void **state)
{
    (void)state;
    kv_store *s;
    kv_store_opts o = {.memory_mb = 8};
    assert_int_equal(kv_store_create(&s, &o), 0);
    kv_put p = {KV_SET, "k", 1, "v", 1, 0, 0, 0};
    assert_int_equal(kv_store_put(s, &p, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, "k", 1, NULL, NULL), KV_OK);
    assert_int_equal(kv_store_get(s, "nope", 4, NULL, NULL), KV_NOT_FOUND);
    kv_store_stats st;
    kv_store_stats_get(s, &st);
    kv_buf b = {0};
    assert_int_equal(kv_proto_append_stats(&b, &st), 0);
    assert_int_equal(kv_buf_append(&b, "", 1), 0); /* a C string to search */
    assert_true(strncmp(b.data, "STAT cmd_get 2\r\nSTAT cmd_set 1\r\n", 32) == 0);
    const char *lines[] = {"STAT get_hits 1\r\n", "STAT get_misses 1\r\n",
                           "STAT curr_items 1\r\n", "STAT total_items 1\r\n",
                           "STAT limit_maxbytes 8388608\r\n", "STAT evictions 0\r\n",
                           "STAT kv_malloc_trims 0\r\nSTAT kv_malloc_trim_us 0\r\n",
                           "STAT kv_stripes 256\r\n"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++)
        assert_non_null(strstr(b.data, lines[i]));
    char bytes[64];
    snprintf(bytes, sizeof bytes, "STAT bytes %zu\r\n", kv_store_item_cost(1, 1));
    assert_non_null(strstr(b.data, bytes));
    kv_buf_free(&b);
    kv_store_destroy(s);
}

/* --- a transcript ------------------------------------------------------------ */

/* What the module will do for one request, minus the socket: parse the
 * line, take a storage command's data block (bytes + "\r\n") from the
 * input, run it, append the reply. Returns the input consumed. */
static size_t serve(kv_store *s, const char *in, size_t len, kv_buf *out)
{
    const char *eol = memchr(in, '\n', len);
    size_t line_len = (size_t)(eol - in), used = line_len + 1;
    if (line_len > 0 && in[line_len - 1] == '\r')
        line_len--;
    kv_cmd cmd;
    if (kv_proto_parse(in, line_len, &cmd) != 0) {
        if (!cmd.noreply)
            kv_buf_append(out, cmd.reply, cmd.reply_len);
        return used;
    }
    const char *reply = NULL;
    kv_result r;
    switch (cmd.type) {
    case KV_CMD_GET: case KV_CMD_GETS: case KV_CMD_GAT: case KV_CMD_GATS:
        do
            for (size_t i = 0; i < cmd.nkeys; i++)
                get_key(s, &cmd, &cmd.keys[i], out);
        while (kv_proto_next_keys(&cmd) > 0);
        reply = KV_REPLY_END;
        break;
    case KV_CMD_SET: case KV_CMD_ADD: case KV_CMD_REPLACE: case KV_CMD_APPEND:
    case KV_CMD_PREPEND: case KV_CMD_CAS: {
        const char *data = in + used;
        used += cmd.bytes + 2;
        if (memcmp(data + cmd.bytes, "\r\n", 2) != 0) {
            reply = KV_REPLY_BAD_CHUNK;
            break;
        }
        kv_put p = {(kv_put_mode)(cmd.type - KV_CMD_SET), cmd.keys[0].data, cmd.keys[0].len,
                    data, cmd.bytes, cmd.flags, cmd.exptime, cmd.cas};
        reply = kv_proto_result_line(cmd.type, kv_store_put(s, &p, NULL));
        break;
    }
    case KV_CMD_DELETE:
        r = kv_store_delete(s, cmd.keys[0].data, cmd.keys[0].len);
        reply = kv_proto_result_line(cmd.type, r);
        break;
    case KV_CMD_INCR: case KV_CMD_DECR: {
        uint64_t v;
        r = kv_store_arith(s, cmd.keys[0].data, cmd.keys[0].len, cmd.type == KV_CMD_INCR,
                           cmd.delta, &v);
        if (r == KV_OK && !cmd.noreply)
            kv_proto_append_number(out, v);
        reply = kv_proto_result_line(cmd.type, r);
        break;
    }
    case KV_CMD_TOUCH:
        reply = kv_proto_result_line(
            cmd.type, kv_store_touch(s, cmd.keys[0].data, cmd.keys[0].len, cmd.exptime));
        break;
    case KV_CMD_FLUSH_ALL:
        kv_store_flush(s, cmd.delay);
        reply = KV_REPLY_OK;
        break;
    case KV_CMD_VERSION:
        kv_proto_append_version(out, "1.6.18");
        break;
    default:
        break;
    }
    if (reply != NULL && !cmd.noreply)
        kv_buf_append(out, reply, strlen(reply));
    return used;
}

/* A session sent to memcached 1.6.18, and its answer (cas uniques aside:
 * gets is left out of the transcript). */
static void test_transcript(void **state)
{
    (void)state;
    const char *in = "set k 0 0 5\r\nhello\r\n"
                     "get k k2 k\r\n"
                     "append k 0 0 1\r\n!\r\n"
                     "get k\r\n"
                     "cas k 0 0 1 1\r\nx\r\n"
                     "incr k 1\r\n"
                     "set n 0 0 2\r\n99\r\n"
                     "incr n 1\r\n"
                     "decr n 200\r\n"
                     "touch n 100\r\n"
                     "delete n\r\n"
                     "delete n\r\n"
                     "add k 0 0 1 noreply\r\nz\r\n"
                     "append nope 0 0 1\r\na\r\n"
                     "cas nope 0 0 1 1\r\na\r\n"
                     "set k 0 0 1\r\nab\r\n" /* bad data chunk */
                     "set k 0 0 -1\r\n"
                     "flush_all\r\n"
                     "get k\r\n"
                     "version\r\n";
    const char *memcached = "STORED\r\n"
                            "VALUE k 0 5\r\nhello\r\nVALUE k 0 5\r\nhello\r\nEND\r\n"
                            "STORED\r\n"
                            "VALUE k 0 6\r\nhello!\r\nEND\r\n"
                            "EXISTS\r\n"
                            "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
                            "STORED\r\n"
                            "100\r\n"
                            "0\r\n"
                            "TOUCHED\r\n"
                            "DELETED\r\n"
                            "NOT_FOUND\r\n"
                            "NOT_STORED\r\n"
                            "NOT_FOUND\r\n"
                            "CLIENT_ERROR bad data chunk\r\n"
                            "ERROR\r\n" /* its "\n" left over, read as a line */
                            "CLIENT_ERROR bad command line format\r\n"
                            "OK\r\n"
                            "END\r\n"
                            "VERSION 1.6.18\r\n";
    kv_store *s;
    assert_int_equal(kv_store_create(&s, NULL), 0);
    kv_buf out = {0};
    for (size_t off = 0, len = strlen(in); off < len;)
        off += serve(s, in + off, len - off, &out);
    assert_int_equal(kv_buf_append(&out, "", 1), 0);
    assert_string_equal(out.data, memcached);
    kv_buf_free(&out);
    kv_store_destroy(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_forms),
        cmocka_unit_test(test_get_many_keys),
        cmocka_unit_test(test_storage_commands),
        cmocka_unit_test(test_noreply_token),
        cmocka_unit_test(test_delete_forms),
        cmocka_unit_test(test_incr_decr_touch),
        cmocka_unit_test(test_exptime_as_memcached),
        cmocka_unit_test(test_other_commands),
        cmocka_unit_test(test_unknown_and_token_counts),
        cmocka_unit_test(test_bad_format),
        cmocka_unit_test(test_replies_as_memcached),
        cmocka_unit_test(test_result_lines),
        cmocka_unit_test(test_value_and_simple_lines),
        cmocka_unit_test(test_get_key_into_buffer),
        cmocka_unit_test(test_binary_error),
        cmocka_unit_test(test_stats_lines),
        cmocka_unit_test(test_transcript),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
