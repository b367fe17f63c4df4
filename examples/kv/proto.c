/*
 * memcached's ASCII protocol for the kv module: the command-line parser and
 * the reply formatting. The parser is a pure function over the line; the
 * replies go to a kv_buf. Which memcached behaviour each rule copies is
 * said in proto.h and next to the rule.
 */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* --- tokens and numbers ---------------------------------------------------- */

/* The next space-separated token of [*p, end), or false at the end. Only
 * ' ' separates (memcached's tokenize_command): a tab is part of a token. */
static bool next_token(const char **p, const char *end, kv_key *tok)
{
    const char *s = *p;
    while (s < end && *s == ' ')
        s++;
    if (s == end) {
        *p = s;
        return false;
    }
    const char *e = s;
    while (e < end && *e != ' ')
        e++;
    tok->data = s;
    tok->len = (size_t)(e - s);
    *p = e;
    return true;
}

static bool token_is(const kv_key *t, const char *word)
{
    size_t n = strlen(word);
    return t->len == n && memcmp(t->data, word, n) == 0;
}

/* A key memcached's text protocol can carry: 1..250 bytes. protocol.txt
 * asks for no control characters, but memcached takes any byte but the
 * space that ends a token, and clients send them (memcaslap's keys start
 * with eight 0x10 bytes): so only what cannot be in a token of a line is
 * refused, NUL and CR. */
static bool key_ok(const kv_key *k)
{
    if (k->len == 0 || k->len > KV_KEY_MAX)
        return false;
    return memchr(k->data, '\0', k->len) == NULL && memchr(k->data, '\r', k->len) == NULL;
}

/* An unsigned decimal of at most max: an optional '+' (strtoul takes one),
 * then digits only; no '-', no trailing bytes ("12x"). */
static bool parse_u64(const kv_key *t, uint64_t max, uint64_t *out)
{
    size_t i = t->len > 1 && t->data[0] == '+' ? 1 : 0;
    if (i == t->len)
        return false;
    uint64_t v = 0;
    for (; i < t->len; i++) {
        unsigned char c = (unsigned char)t->data[i];
        if (c < '0' || c > '9')
            return false;
        unsigned d = c - '0';
        if (v > (max - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* A signed decimal that fits int64_t. */
static bool parse_i64(const kv_key *t, int64_t *out)
{
    bool neg = t->len > 1 && t->data[0] == '-';
    kv_key digits = *t;
    if (neg) {
        digits.data++;
        digits.len--;
        if (digits.data[0] == '+')
            return false;
    }
    uint64_t v;
    if (!parse_u64(&digits, neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX, &v))
        return false;
    *out = neg ? (int64_t)(0 - v) : (int64_t)v;
    return true;
}

/* An exptime (or flush_all delay) as memcached 1.6 reads it: strtol into a
 * long, then kept in an int32_t, so that only its low 32 bits count, as a
 * signed number. 99999999999 is 1215752191 (an absolute time in 2008:
 * expired at once), 2^63-1 is -1 (expired), 2^31 is -2^31 (expired),
 * 4294967396 is 100 (100 seconds). Copied because a client sees it: the
 * same set is there or gone. Past 64 bits it is refused, as strtol's ERANGE
 * makes memcached refuse it. */
static bool parse_exptime(const kv_key *t, int64_t *out)
{
    int64_t v;
    if (!parse_i64(t, &v))
        return false;
    uint32_t low = (uint32_t)(uint64_t)v;
    *out = low > INT32_MAX ? (int64_t)low - ((int64_t)1 << 32) : (int64_t)low;
    return true;
}

/* --- the parser ------------------------------------------------------------ */

static const struct {
    const char *name;
    kv_cmd_type type;
} commands[] = {
    {"get", KV_CMD_GET},         {"gets", KV_CMD_GETS},       {"gat", KV_CMD_GAT},
    {"gats", KV_CMD_GATS},       {"set", KV_CMD_SET},         {"add", KV_CMD_ADD},
    {"replace", KV_CMD_REPLACE}, {"append", KV_CMD_APPEND},   {"prepend", KV_CMD_PREPEND},
    {"cas", KV_CMD_CAS},         {"delete", KV_CMD_DELETE},   {"incr", KV_CMD_INCR},
    {"decr", KV_CMD_DECR},       {"touch", KV_CMD_TOUCH},     {"flush_all", KV_CMD_FLUSH_ALL},
    {"version", KV_CMD_VERSION}, {"verbosity", KV_CMD_VERBOSITY}, {"stats", KV_CMD_STATS},
    {"quit", KV_CMD_QUIT},
};

static kv_cmd_type command_type(const kv_key *t)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (token_is(t, commands[i].name))
            return commands[i].type;
    return KV_CMD_NONE;
}

static int fail(kv_cmd *cmd, int code)
{
    static const char *const text[] = {
        [-KV_PROTO_EUNKNOWN] = "ERROR\r\n",
        [-KV_PROTO_EFORMAT] = "CLIENT_ERROR bad command line format\r\n",
        [-KV_PROTO_EDELTA] = "CLIENT_ERROR invalid numeric delta argument\r\n",
        [-KV_PROTO_EEXPTIME] = "CLIENT_ERROR invalid exptime argument\r\n",
        [-KV_PROTO_EDELETE] =
            "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n",
    };
    cmd->reply = text[-code];
    cmd->reply_len = strlen(cmd->reply);
    return code;
}

/* get/gets/gat/gats: p is past the command. Every key is checked here, so
 * that a bad one anywhere fails the whole line before anything is looked up
 * (memcached drops the replies of the keys before a bad one). */
static int parse_get(kv_cmd *cmd, const char *p, const char *end)
{
    kv_key t;
    bool touch = cmd->type == KV_CMD_GAT || cmd->type == KV_CMD_GATS;
    if (touch) {
        if (!next_token(&p, end, &t))
            return fail(cmd, KV_PROTO_EUNKNOWN);
        if (!parse_exptime(&t, &cmd->exptime))
            return fail(cmd, KV_PROTO_EEXPTIME);
    }
    cmd->rest = p;
    cmd->rest_len = (size_t)(end - p);
    size_t n = 0;
    while (next_token(&p, end, &t)) {
        if (!key_ok(&t))
            return fail(cmd, KV_PROTO_EFORMAT);
        n++;
    }
    if (n == 0 && !touch) /* "gat 0" with no key is memcached's END */
        return fail(cmd, KV_PROTO_EUNKNOWN);
    cmd->nkeys_total = n;
    kv_proto_next_keys(cmd);
    return 0;
}

/* set/add/replace/append/prepend/cas: <key> <flags> <exptime> <bytes>
 * [<cas>] [noreply]; t[0] is the command, n tokens in all. */
static int parse_storage(kv_cmd *cmd, const kv_key *t, size_t n)
{
    size_t fields = cmd->type == KV_CMD_CAS ? 6 : 5;
    uint64_t flags, bytes;
    if (n != fields && n != fields + 1)
        return fail(cmd, KV_PROTO_EUNKNOWN);
    cmd->noreply = token_is(&t[n - 1], "noreply");
    cmd->keys[0] = t[1];
    cmd->nkeys = cmd->nkeys_total = 1;
    if (!key_ok(&t[1]) || !parse_u64(&t[2], UINT32_MAX, &flags) ||
        !parse_exptime(&t[3], &cmd->exptime) || !parse_u64(&t[4], KV_PROTO_BYTES_MAX, &bytes) ||
        (cmd->type == KV_CMD_CAS && !parse_u64(&t[5], UINT64_MAX, &cmd->cas)))
        return fail(cmd, KV_PROTO_EFORMAT);
    cmd->flags = (uint32_t)flags;
    cmd->bytes = (size_t)bytes;
    return 0;
}

/* delete <key> [0] [noreply]: memcached's rule, word for word. */
static int parse_delete(kv_cmd *cmd, const kv_key *t, size_t n)
{
    if (n < 2 || n > 4)
        return fail(cmd, KV_PROTO_EUNKNOWN);
    if (n > 2) {
        bool zero = token_is(&t[2], "0");
        cmd->noreply = token_is(&t[n - 1], "noreply");
        if (!((n == 3 && (zero || cmd->noreply)) || (n == 4 && zero && cmd->noreply)))
            return fail(cmd, KV_PROTO_EDELETE);
    }
    cmd->keys[0] = t[1];
    cmd->nkeys = cmd->nkeys_total = 1;
    return key_ok(&t[1]) ? 0 : fail(cmd, KV_PROTO_EFORMAT);
}

/* incr/decr <key> <delta> [noreply]; touch <key> <exptime> [noreply]. */
static int parse_key_number(kv_cmd *cmd, const kv_key *t, size_t n)
{
    if (n != 3 && n != 4)
        return fail(cmd, KV_PROTO_EUNKNOWN);
    cmd->noreply = token_is(&t[n - 1], "noreply");
    cmd->keys[0] = t[1];
    cmd->nkeys = cmd->nkeys_total = 1;
    if (!key_ok(&t[1]))
        return fail(cmd, KV_PROTO_EFORMAT);
    if (cmd->type == KV_CMD_TOUCH)
        return parse_exptime(&t[2], &cmd->exptime) ? 0 : fail(cmd, KV_PROTO_EEXPTIME);
    return parse_u64(&t[2], UINT64_MAX, &cmd->delta) ? 0 : fail(cmd, KV_PROTO_EDELTA);
}

/* flush_all [delay] [noreply]; a third token memcached ignores too. */
static int parse_flush(kv_cmd *cmd, const kv_key *t, size_t n)
{
    if (n > 3)
        return fail(cmd, KV_PROTO_EUNKNOWN);
    cmd->noreply = n > 1 && token_is(&t[n - 1], "noreply");
    if (n != (cmd->noreply ? 2u : 1u) && !parse_exptime(&t[1], &cmd->delay))
        return fail(cmd, KV_PROTO_EEXPTIME);
    return 0;
}

int kv_proto_parse(const char *line, size_t len, kv_cmd *cmd)
{
    memset(cmd, 0, offsetof(kv_cmd, keys));
    memset(&cmd->nkeys, 0, sizeof *cmd - offsetof(kv_cmd, nkeys));
    const char *p = line, *end = line + len;
    kv_key t[8];
    if (!next_token(&p, end, &t[0]) || t[0].len < 2)
        return fail(cmd, KV_PROTO_EUNKNOWN);
    cmd->type = command_type(&t[0]);
    switch (cmd->type) {
    case KV_CMD_NONE:
        return fail(cmd, KV_PROTO_EUNKNOWN);
    case KV_CMD_GET:
    case KV_CMD_GETS:
    case KV_CMD_GAT:
    case KV_CMD_GATS:
        return parse_get(cmd, p, end);
    case KV_CMD_STATS: /* its arguments, for the module to judge */
        cmd->rest = p;
        cmd->rest_len = (size_t)(end - p);
        for (kv_key a; next_token(&p, end, &a);)
            cmd->nkeys_total++;
        kv_proto_next_keys(cmd);
        return 0;
    default:
        break;
    }
    /* The rest take a few tokens: keep the first 8, count them all. */
    size_t n = 1;
    for (kv_key a; next_token(&p, end, &a); n++)
        if (n < 8)
            t[n] = a;
    switch (cmd->type) {
    case KV_CMD_SET:
    case KV_CMD_ADD:
    case KV_CMD_REPLACE:
    case KV_CMD_APPEND:
    case KV_CMD_PREPEND:
    case KV_CMD_CAS:
        return parse_storage(cmd, t, n);
    case KV_CMD_DELETE:
        return parse_delete(cmd, t, n);
    case KV_CMD_INCR:
    case KV_CMD_DECR:
    case KV_CMD_TOUCH:
        return parse_key_number(cmd, t, n);
    case KV_CMD_FLUSH_ALL:
        return parse_flush(cmd, t, n);
    case KV_CMD_VERBOSITY: {
        uint64_t level;
        if (n != 2 && n != 3)
            return fail(cmd, KV_PROTO_EUNKNOWN);
        cmd->noreply = token_is(&t[n - 1], "noreply");
        if (!parse_u64(&t[1], UINT32_MAX, &level))
            return fail(cmd, KV_PROTO_EFORMAT);
        cmd->level = (uint32_t)level;
        return 0;
    }
    default: /* version and quit take anything after them */
        return 0;
    }
}

size_t kv_proto_next_keys(kv_cmd *cmd)
{
    const char *p = cmd->rest, *end = cmd->rest + cmd->rest_len;
    size_t n = 0;
    while (n < KV_PROTO_MAX_KEYS && next_token(&p, end, &cmd->keys[n]))
        n++;
    cmd->rest = p;
    cmd->rest_len = (size_t)(end - p);
    cmd->nkeys = n;
    return n;
}

/* --- the binary protocol ----------------------------------------------------- */

size_t kv_proto_binary_error(const unsigned char *req, unsigned char *out)
{
    static const char text[] = "Not supported";
    const size_t n = sizeof text - 1;
    memset(out, 0, KV_PROTO_BINARY_HEADER);
    out[0] = 0x81;   /* a response */
    out[1] = req[1]; /* the request's opcode */
    out[6] = 0x00;   /* status 0x0083, big-endian */
    out[7] = 0x83;
    out[8] = (unsigned char)(n >> 24); /* total body length: the text */
    out[9] = (unsigned char)(n >> 16);
    out[10] = (unsigned char)(n >> 8);
    out[11] = (unsigned char)n;
    memcpy(out + 12, req + 12, 4); /* opaque, as the client gave it */
    memcpy(out + KV_PROTO_BINARY_HEADER, text, n);
    return KV_PROTO_BINARY_HEADER + n;
}

/* --- replies --------------------------------------------------------------- */

const char *kv_proto_result_line(kv_cmd_type type, kv_result r)
{
    bool arith = type == KV_CMD_INCR || type == KV_CMD_DECR;
    switch (r) {
    case KV_OK:
        return type == KV_CMD_DELETE ? KV_REPLY_DELETED
               : type == KV_CMD_TOUCH ? KV_REPLY_TOUCHED
               : arith                ? NULL
                                      : KV_REPLY_STORED;
    case KV_NOT_STORED:
        return KV_REPLY_NOT_STORED;
    case KV_EXISTS:
        return KV_REPLY_EXISTS;
    case KV_NOT_FOUND:
        return KV_REPLY_NOT_FOUND;
    case KV_NON_NUMERIC:
        return "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n";
    case KV_TOO_LARGE:
        return KV_REPLY_TOO_LARGE;
    case KV_NO_MEMORY:
        return arith ? "SERVER_ERROR out of memory\r\n"
                     : "SERVER_ERROR out of memory storing object\r\n";
    }
    return KV_REPLY_ERROR;
}

/* Room for n more bytes. */
static int buf_reserve(kv_buf *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    if (n > SIZE_MAX / 2 - b->len)
        return -ENOMEM;
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL)
        return -ENOMEM;
    b->data = d;
    b->cap = cap;
    return 0;
}

int kv_buf_append(kv_buf *b, const void *p, size_t n)
{
    int rc = buf_reserve(b, n);
    if (rc != 0)
        return rc;
    if (n != 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

void kv_buf_free(kv_buf *b)
{
    free(b->data);
    *b = (kv_buf){0};
}

/* Writes v in decimal at p; returns the end. */
static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

/* "VALUE " key " " flags " " bytes [" " cas] "\r\n": at most this long. */
#define VALUE_LINE_MAX (6 + KV_KEY_MAX + 1 + 10 + 1 + 20 + 1 + 20 + 2)

static char *put_value_line(char *p, const kv_key *key, const kv_item_info *info, bool with_cas)
{
    memcpy(p, "VALUE ", 6);
    memcpy(p + 6, key->data, key->len);
    p += 6 + key->len;
    *p++ = ' ';
    p = put_u64(p, info->flags);
    *p++ = ' ';
    p = put_u64(p, info->nbytes);
    if (with_cas) {
        *p++ = ' ';
        p = put_u64(p, info->cas);
    }
    memcpy(p, "\r\n", 2);
    return p + 2;
}

int kv_proto_append_value_line(kv_buf *out, const kv_key *key, const kv_item_info *info,
                               bool with_cas)
{
    if (key->len > KV_KEY_MAX)
        return -EINVAL;
    int rc = buf_reserve(out, VALUE_LINE_MAX);
    if (rc == 0)
        out->len = (size_t)(put_value_line(out->data + out->len, key, info, with_cas) - out->data);
    return rc;
}

typedef struct get_ctx {
    kv_buf *out;
    const kv_key *key;
    kv_hit *hit;
    bool with_cas;
    bool no_room;
} get_ctx;

/* Under the item's stripe lock: the VALUE line, and the value copied or
 * held, in one reservation so that it is never half written. */
static void append_hit(void *arg, const kv_item_info *info, const char *value)
{
    get_ctx *g = arg;
    bool hold = info->nbytes >= KV_HOLD_MIN;
    if (buf_reserve(g->out, VALUE_LINE_MAX + (hold ? 0 : info->nbytes + 2)) != 0) {
        g->no_room = true;
        return;
    }
    if (hold && !kv_store_hold(info)) { /* held too often: a copy after all */
        hold = false;
        if (buf_reserve(g->out, VALUE_LINE_MAX + info->nbytes + 2) != 0) {
            g->no_room = true;
            return;
        }
    }
    char *p = put_value_line(g->out->data + g->out->len, g->key, info, g->with_cas);
    if (hold) {
        *g->hit = (kv_hit){info->item, value, info->nbytes};
    } else {
        memcpy(p, value, info->nbytes);
        memcpy(p + info->nbytes, "\r\n", 2);
        p += info->nbytes + 2;
    }
    g->out->len = (size_t)(p - g->out->data);
}

kv_result kv_proto_get_key(kv_store *s, const kv_cmd *cmd, const kv_key *key, kv_buf *out,
                           kv_hit *hit)
{
    *hit = (kv_hit){0};
    get_ctx g = {out, key, hit, cmd->type == KV_CMD_GETS || cmd->type == KV_CMD_GATS, false};
    if (key->len == 0 || key->len > KV_KEY_MAX)
        return KV_NOT_FOUND;
    kv_result r = cmd->type == KV_CMD_GAT || cmd->type == KV_CMD_GATS
                      ? kv_store_gat(s, key->data, key->len, cmd->exptime, append_hit, &g)
                      : kv_store_get(s, key->data, key->len, append_hit, &g);
    return g.no_room ? KV_NO_MEMORY : r;
}

int kv_proto_append_number(kv_buf *out, uint64_t value)
{
    char line[24], *p = put_u64(line, value);
    memcpy(p, "\r\n", 2);
    return kv_buf_append(out, line, (size_t)(p + 2 - line));
}

/* The parts, then "\r\n", as one append (all or nothing). */
static int append_line(kv_buf *out, const char *const *parts, size_t n)
{
    size_t total = 2;
    for (size_t i = 0; i < n; i++)
        total += strlen(parts[i]);
    int rc = buf_reserve(out, total);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n; i++)
        kv_buf_append(out, parts[i], strlen(parts[i]));
    return kv_buf_append(out, "\r\n", 2);
}

int kv_proto_append_version(kv_buf *out, const char *version)
{
    const char *parts[] = {"VERSION ", version};
    return append_line(out, parts, 2);
}

int kv_proto_append_stat(kv_buf *out, const char *name, const char *value)
{
    const char *parts[] = {"STAT ", name, " ", value};
    return append_line(out, parts, 4);
}

int kv_proto_append_stat_u64(kv_buf *out, const char *name, uint64_t value)
{
    char text[24];
    *put_u64(text, value) = '\0';
    return kv_proto_append_stat(out, name, text);
}

int kv_proto_append_stats(kv_buf *out, const kv_store_stats *st)
{
    const struct {
        const char *name;
        uint64_t value;
    } lines[] = {
        {"cmd_get", st->cmd_get},
        {"cmd_set", st->cmd_set},
        {"cmd_flush", st->cmd_flush},
        {"cmd_touch", st->cmd_touch},
        {"get_hits", st->get_hits},
        {"get_misses", st->get_misses},
        {"get_expired", st->get_expired},
        {"get_flushed", st->get_flushed},
        {"delete_misses", st->delete_misses},
        {"delete_hits", st->delete_hits},
        {"incr_misses", st->incr_misses},
        {"incr_hits", st->incr_hits},
        {"decr_misses", st->decr_misses},
        {"decr_hits", st->decr_hits},
        {"cas_misses", st->cas_misses},
        {"cas_hits", st->cas_hits},
        {"cas_badval", st->cas_badval},
        {"touch_hits", st->touch_hits},
        {"touch_misses", st->touch_misses},
        {"store_too_large", st->store_too_large},
        {"store_no_memory", st->store_no_memory},
        {"limit_maxbytes", st->limit_maxbytes},
        {"bytes", st->bytes},
        {"curr_items", st->curr_items},
        {"total_items", st->total_items},
        {"expired_unfetched", st->expired_unfetched},
        {"evicted_unfetched", st->evicted_unfetched},
        {"evictions", st->evictions},
        {"reclaimed", st->reclaimed},
        {"kv_lock_waits", st->lock_waits},
        {"kv_hash_buckets", st->hash_buckets},
        {"kv_malloc_trims", st->trims},
        {"kv_malloc_trim_us", st->trim_us},
        {"kv_stripes", st->stripes},
    };
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        int rc = kv_proto_append_stat_u64(out, lines[i].name, lines[i].value);
        if (rc != 0)
            return rc;
    }
    return 0;
}
