/*
 * kv: a memcached-compatible cache as a poolsrv handler module: memcached's
 * ASCII protocol (proto.c) over a striped item store (store.c).
 *
 *   [handler]
 *   module = kv             ; kv.so in the module directory (conf/kv.ini)
 *   memory_mb = 64          ; the items' byte budget; LRU eviction past it
 *   item_size_max = 1048576 ; the largest item (header + key + value)
 *   stripes = 256           ; lock stripes of the store
 *   [limits]
 *   max_line = 1048576      ; get lines of thousands of keys (warned if less)
 *
 * A storage command is a line and then a data block of `bytes` + 2 bytes:
 * the line asks the connection layer for the block (ps_conn_read_bytes)
 * and the block's callback stores it. Everything else answers at once.
 * Expired items go when touched, and a sweeper thread of the module's own
 * takes them out a batch a second; the same thread hands freed memory back
 * to the system when the store says enough has been freed (kv_store_trim).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <poolsrv/log.h>
#include <poolsrv/module.h>
#include <poolsrv/version.h>

#include "proto.h"
#include "store.h"

/* Items looked at per sweep, once a second. */
#define KV_SWEEP_BATCH 10000

/* The limits.max_line kv asks for (a warning at start when it is less):
 * room for a get of about 4,000 keys of 250 bytes. */
#define KV_GET_LINE_SUGGESTED (1024 * 1024)

typedef struct kv_module {
    kv_store *store;
    time_t started;
    pthread_t sweeper;
    pthread_mutex_t lock; /* guards stop and trim, for the sweeper's wait */
    pthread_cond_t wake;
    bool stop;
    bool trim; /* kv_store_trim_due said so: the sweeper trims */
} kv_module;

/* Wakes the sweeper to trim when the store has freed enough since the last
 * trim: after anything that may free items. Two relaxed loads when not. */
static void maybe_trim(kv_module *m)
{
    if (!kv_store_trim_due(m->store))
        return;
    pthread_mutex_lock(&m->lock);
    m->trim = true;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
}

/* A connection's state: the storage command whose block is awaited (its
 * key copied: the line it came in is gone by then), and a reply buffer
 * kept between commands. */
typedef struct kv_conn {
    kv_cmd_type type;
    char key[KV_KEY_MAX];
    size_t nkey;
    uint32_t flags;
    int64_t exptime;
    uint64_t cas;
    bool noreply;
    kv_buf out;
    bool first_held; /* first: the connection's first byte, not yet */
    char first;      /* put back in front of its first line */
} kv_conn;

static int send_text(ps_conn *conn, const char *text, size_t len)
{
    return ps_conn_send(conn, text, len) < 0 ? PS_CLOSE : PS_CONTINUE;
}

static int send_str(ps_conn *conn, const char *text)
{
    return send_text(conn, text, strlen(text));
}

/* The most the reply buffer keeps between commands (a 4,000-key get of
 * short values grows it to a few MiB once). */
#define KV_OUT_KEEP 65536

/* Sends and empties the connection's reply buffer: 0 or ps_conn_send's
 * error. */
static int flush_out(ps_conn *conn, kv_conn *kc)
{
    int rc = kc->out.len > 0 ? ps_conn_send(conn, kc->out.data, kc->out.len) : 0;
    kc->out.len = 0;
    if (kc->out.cap > KV_OUT_KEEP)
        kv_buf_free(&kc->out);
    return rc;
}

/* As flush_out, for a whole reply: PS_CONTINUE, or PS_CLOSE when it could
 * not be queued. */
static int send_out(ps_conn *conn, kv_conn *kc)
{
    return flush_out(conn, kc) == 0 ? PS_CONTINUE : PS_CLOSE;
}

static kv_conn *conn_state(ps_conn *conn)
{
    kv_conn *kc = ps_conn_get_data(conn);
    if (kc == NULL) {
        kc = calloc(1, sizeof *kc);
        ps_conn_set_data(conn, kc);
    }
    return kc;
}

static kv_put_mode put_mode(kv_cmd_type t)
{
    switch (t) {
    case KV_CMD_ADD: return KV_ADD;
    case KV_CMD_REPLACE: return KV_REPLACE;
    case KV_CMD_APPEND: return KV_APPEND;
    case KV_CMD_PREPEND: return KV_PREPEND;
    case KV_CMD_CAS: return KV_CAS;
    default: return KV_SET;
    }
}

/* The data block of a storage command: its value and "\r\n". */
static int on_block(ps_conn *conn, const void *data, size_t len, void *ud)
{
    kv_module *m = ud;
    kv_conn *kc = ps_conn_get_data(conn);
    const char *bytes = data;
    if (len < 2 || bytes[len - 2] != '\r' || bytes[len - 1] != '\n')
        return kc->noreply ? PS_CONTINUE : send_str(conn, KV_REPLY_BAD_CHUNK);
    kv_put p = {.mode = put_mode(kc->type), .key = kc->key, .nkey = kc->nkey,
                .value = data, .nbytes = len - 2, .flags = kc->flags,
                .exptime = kc->exptime, .cas = kc->cas};
    uint64_t cas;
    kv_result r = kv_store_put(m->store, &p, &cas);
    maybe_trim(m);
    if (kc->noreply)
        return PS_CONTINUE;
    return send_str(conn, kv_proto_result_line(kc->type, r));
}

/* set/add/replace/append/prepend/cas: checks the size first (a block the
 * store would refuse is discarded, not held), then asks for the block. */
static int storage(ps_conn *conn, kv_module *m, kv_conn *kc, const kv_cmd *cmd)
{
    kv_result a = kv_store_admit(m->store, put_mode(cmd->type), cmd->keys[0].data,
                                 cmd->keys[0].len, cmd->bytes);
    if (a == KV_OK) {
        kc->type = cmd->type;
        memcpy(kc->key, cmd->keys[0].data, cmd->keys[0].len);
        kc->nkey = cmd->keys[0].len;
        kc->flags = cmd->flags;
        kc->exptime = cmd->exptime;
        kc->cas = cmd->cas;
        kc->noreply = cmd->noreply;
        if (ps_conn_read_bytes(conn, cmd->bytes + 2, on_block) == 0)
            return PS_CONTINUE;
        a = KV_TOO_LARGE; /* beyond the server's limits.max_block */
    }
    if (ps_conn_read_bytes(conn, cmd->bytes + 2, NULL) != 0)
        return PS_CLOSE;
    if (cmd->noreply)
        return PS_CONTINUE;
    return send_str(conn, kv_proto_result_line(cmd->type, a));
}

/* One batch of a retrieval's keys into the reply: short values copied,
 * long ones sent by reference (the item held until they are written, as
 * memcached does), so that a reply of many large values costs the server
 * its VALUE lines, not copies. 0 or a negative errno. */
static int retrieve_keys(ps_conn *conn, kv_module *m, kv_conn *kc, const kv_cmd *cmd)
{
    for (size_t i = 0; i < cmd->nkeys; i++) {
        kv_hit hit;
        if (kv_proto_get_key(m->store, cmd, &cmd->keys[i], &kc->out, &hit) == KV_NO_MEMORY)
            return -ENOMEM;
        if (hit.item == NULL)
            continue;
        int rc = flush_out(conn, kc);
        if (rc == 0)
            rc = ps_conn_send_ref(conn, hit.value, hit.nbytes, kv_store_release, hit.item);
        else
            kv_store_release(hit.item);
        if (rc == 0)
            rc = kv_buf_append(&kc->out, "\r\n", 2);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* get/gets/gat/gats: every key, batch after batch, then END. A reply that
 * fails halfway is taken back whole and replaced by memcached's error:
 * the client never reads part of it, nor its rest as the next reply. */
static int retrieval(ps_conn *conn, kv_module *m, kv_conn *kc, kv_cmd *cmd)
{
    int rc;
    do
        rc = retrieve_keys(conn, m, kc, cmd);
    while (rc == 0 && kv_proto_next_keys(cmd) > 0);
    if (rc == 0)
        rc = kv_buf_append(&kc->out, KV_REPLY_END, sizeof KV_REPLY_END - 1);
    if (rc == 0)
        rc = flush_out(conn, kc);
    if (rc == 0)
        return PS_CONTINUE;
    kc->out.len = 0;
    if (rc == -ENOBUFS || ps_conn_unsend(conn) != 0)
        return PS_CLOSE; /* past limits.max_output: the connection closes */
    return send_str(conn, "SERVER_ERROR out of memory writing get response\r\n");
}

static int stats(ps_conn *conn, kv_module *m, kv_conn *kc, const kv_cmd *cmd)
{
    if (cmd->nkeys > 0)
        return send_str(conn, KV_REPLY_ERROR); /* stats items, slabs, ...: not kept */
    time_t now = time(NULL);
    kv_store_stats st;
    kv_store_stats_get(m->store, &st);
    kv_buf *o = &kc->out;
    int e = kv_proto_append_stat_u64(o, "pid", (uint64_t)getpid());
    e |= kv_proto_append_stat_u64(o, "uptime", (uint64_t)(now - m->started));
    e |= kv_proto_append_stat_u64(o, "time", (uint64_t)now);
    e |= kv_proto_append_stat(o, "version", KV_PROTOCOL_VERSION);
    e |= kv_proto_append_stat(o, "kv_poolsrv_version", ps_version());
    e |= kv_proto_append_stat_u64(o, "pointer_size", 8 * sizeof(void *));
    e |= kv_proto_append_stats(o, &st);
    e |= kv_buf_append(o, KV_REPLY_END, sizeof KV_REPLY_END - 1);
    if (e != 0) {
        kc->out.len = 0;
        return PS_CLOSE;
    }
    return send_out(conn, kc);
}

static int kv_line(ps_conn *conn, const ps_line *line, void *ud)
{
    kv_module *m = ud;
    kv_conn *kc = conn_state(conn);
    if (kc == NULL) {
        send_str(conn, "SERVER_ERROR out of memory\r\n");
        return PS_CLOSE;
    }
    kv_cmd cmd;
    if (kv_proto_parse(line->data, line->len, &cmd) < 0)
        return cmd.noreply ? PS_CONTINUE : send_text(conn, cmd.reply, cmd.reply_len);
    kv_result r;
    uint64_t value;
    switch (cmd.type) {
    case KV_CMD_SET:
    case KV_CMD_ADD:
    case KV_CMD_REPLACE:
    case KV_CMD_APPEND:
    case KV_CMD_PREPEND:
    case KV_CMD_CAS:
        return storage(conn, m, kc, &cmd);
    case KV_CMD_GET:
    case KV_CMD_GETS:
    case KV_CMD_GAT:
    case KV_CMD_GATS:
        return retrieval(conn, m, kc, &cmd);
    case KV_CMD_DELETE:
        r = kv_store_delete(m->store, cmd.keys[0].data, cmd.keys[0].len);
        maybe_trim(m);
        break;
    case KV_CMD_TOUCH:
        r = kv_store_touch(m->store, cmd.keys[0].data, cmd.keys[0].len, cmd.exptime);
        break;
    case KV_CMD_INCR:
    case KV_CMD_DECR:
        r = kv_store_arith(m->store, cmd.keys[0].data, cmd.keys[0].len, cmd.type == KV_CMD_INCR,
                           cmd.delta, &value);
        maybe_trim(m);
        if (r == KV_OK && !cmd.noreply) {
            if (kv_proto_append_number(&kc->out, value) != 0)
                return PS_CLOSE;
            return send_out(conn, kc);
        }
        break;
    case KV_CMD_FLUSH_ALL:
        /* A delay naming an absolute time from before the server started
         * (99999999999 is read as 2008): memcached 1.6's realtime() makes
         * it 1, which switches its flush off, every item kept. So here: any
         * pending flush is replaced by one at the latest time the store
         * keeps (2106). A flush already in force stays (see the README). */
        if (cmd.delay > KV_RELATIVE_MAX && cmd.delay <= (int64_t)m->started)
            cmd.delay = INT64_MAX;
        kv_store_flush(m->store, cmd.delay);
        maybe_trim(m);
        return cmd.noreply ? PS_CONTINUE : send_str(conn, KV_REPLY_OK);
    case KV_CMD_VERBOSITY:
        return cmd.noreply ? PS_CONTINUE : send_str(conn, KV_REPLY_OK);
    case KV_CMD_VERSION:
        if (kv_proto_append_version(&kc->out, KV_PROTOCOL_VERSION) != 0)
            return PS_CLOSE;
        return send_out(conn, kc);
    case KV_CMD_STATS:
        return stats(conn, m, kc, &cmd);
    case KV_CMD_QUIT:
        return PS_CLOSE;
    case KV_CMD_NONE:
    default:
        return send_str(conn, KV_REPLY_ERROR);
    }
    if (cmd.noreply)
        return PS_CONTINUE;
    return send_str(conn, kv_proto_result_line(cmd.type, r));
}

/* --- memcached's protocol negotiation ---------------------------------------
 * memcached tells a binary client from a text one by the connection's first
 * byte (0x80: binary). The connection layer frames lines, and a binary
 * header has no line ending to wait for: so the first byte is asked for on
 * its own, a binary request is answered with the binary protocol's "Not
 * supported" and closed, and any other first byte is put back in front of
 * the first line. */

static int on_binary_header(ps_conn *conn, const void *data, size_t len, void *ud)
{
    (void)ud;
    unsigned char req[KV_PROTO_BINARY_HEADER], reply[KV_PROTO_BINARY_ERROR_MAX];
    req[0] = KV_PROTO_BINARY_MAGIC;
    memcpy(req + 1, data, len < sizeof req - 1 ? len : sizeof req - 1);
    send_text(conn, (const char *)reply, kv_proto_binary_error(req, reply));
    return PS_CLOSE;
}

static int on_first_byte(ps_conn *conn, const void *data, size_t len, void *ud)
{
    (void)len;
    kv_conn *kc = ps_conn_get_data(conn);
    char b = *(const char *)data;
    if ((unsigned char)b == KV_PROTO_BINARY_MAGIC)
        return ps_conn_read_bytes(conn, KV_PROTO_BINARY_HEADER - 1, on_binary_header) == 0
                   ? PS_CONTINUE
                   : PS_CLOSE;
    if (b == '\n') { /* the first line was empty */
        ps_line empty = {"\n", 0, 1};
        return kv_line(conn, &empty, ud);
    }
    kc->first = b;
    kc->first_held = true;
    return PS_CONTINUE;
}

static int kv_open(ps_conn *conn, void *ud)
{
    (void)ud;
    if (conn_state(conn) == NULL)
        return PS_CONTINUE; /* the first line answers out of memory */
    return ps_conn_read_bytes(conn, 1, on_first_byte) == 0 ? PS_CONTINUE : PS_CLOSE;
}

/* Every line; the first with the connection's first byte in front. */
static int kv_on_line(ps_conn *conn, const ps_line *line, void *ud)
{
    kv_conn *kc = ps_conn_get_data(conn);
    if (kc == NULL || !kc->first_held)
        return kv_line(conn, line, ud);
    kc->first_held = false;
    if (kc->first == '\r' && line->len == 0) { /* "\r\n": an empty line */
        ps_line empty = {"\r\n", 0, 2};
        return kv_line(conn, &empty, ud);
    }
    char small[256], *buf = small;
    size_t n = 1 + line->len + line->eol_len;
    if (n > sizeof small && (buf = malloc(n)) == NULL) {
        send_str(conn, "SERVER_ERROR out of memory\r\n");
        return PS_CLOSE;
    }
    buf[0] = kc->first;
    memcpy(buf + 1, line->data, line->len + line->eol_len);
    ps_line whole = {buf, 1 + line->len, line->eol_len};
    int rc = kv_line(conn, &whole, ud);
    if (buf != small)
        free(buf);
    return rc;
}

static void kv_close(ps_conn *conn, void *ud)
{
    (void)ud;
    kv_conn *kc = ps_conn_get_data(conn);
    if (kc != NULL) {
        kv_buf_free(&kc->out);
        free(kc);
    }
}

static const ps_handler kv_handler = {
    .on_open = kv_open, /* greets nobody, as memcached: looks at the first byte */
    .on_line = kv_on_line,
    .on_close = kv_close,
};

/* Takes expired items out a batch at a time, once a second, and trims
 * when woken for it (or when the store says a trim is due), until fini. */
static void *sweeper_main(void *arg)
{
    kv_module *m = arg;
    struct timespec next;
    clock_gettime(CLOCK_REALTIME, &next);
    next.tv_sec += 1;
    pthread_mutex_lock(&m->lock);
    while (!m->stop) {
        if (!m->trim)
            pthread_cond_timedwait(&m->wake, &m->lock, &next);
        if (m->stop)
            break;
        bool trim = m->trim;
        m->trim = false;
        pthread_mutex_unlock(&m->lock);
        /* A sweep a second, however often a trim wakes us; the wait's
         * clock is the wall clock, so a step back in it starts over. */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        bool sweep = now.tv_sec > next.tv_sec ||
                     (now.tv_sec == next.tv_sec && now.tv_nsec >= next.tv_nsec);
        if (sweep || next.tv_sec - now.tv_sec > 1) {
            next = now;
            next.tv_sec += 1;
        }
        if (sweep) {
            kv_store_sweep(m->store, KV_SWEEP_BATCH);
            trim |= kv_store_trim_due(m->store); /* what the sweep freed */
        }
        if (trim)
            kv_store_trim(m->store);
        pthread_mutex_lock(&m->lock);
    }
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

/* A key's value as a size: 0 with *out set, or -1 with err. */
static int key_size(const char *value, size_t lo, size_t hi, size_t *out, char *err,
                    size_t errlen)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno != 0 || end == value || *end != '\0' || value[0] == '-' || v < lo || v > hi) {
        snprintf(err, errlen, "expected an integer from %zu to %zu, got \"%s\"", lo, hi, value);
        return -1;
    }
    *out = (size_t)v;
    return 0;
}

static int kv_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                   char *err, size_t errlen, size_t *bad)
{
    kv_store_opts o = {.memory_mb = 64, .item_size_max = 1024 * 1024, .stripes = 256};
    size_t v;
    for (size_t i = 0; i < nkeys; i++) {
        *bad = i;
        if (strcmp(keys[i].key, "memory_mb") == 0) {
            if (key_size(keys[i].value, 1, 1024 * 1024, &v, err, errlen) != 0)
                return -1;
            o.memory_mb = v;
        } else if (strcmp(keys[i].key, "item_size_max") == 0) {
            if (key_size(keys[i].value, 1024, 1024 * 1024 * 1024, &v, err, errlen) != 0)
                return -1;
            o.item_size_max = v;
        } else if (strcmp(keys[i].key, "stripes") == 0) {
            if (key_size(keys[i].value, 1, 4096, &v, err, errlen) != 0 || (v & (v - 1)) != 0) {
                snprintf(err, errlen, "expected a power of two from 1 to 4096, got \"%s\"",
                         keys[i].value);
                return -1;
            }
            o.stripes = (unsigned)v;
        } else {
            snprintf(err, errlen, "unknown key (kv takes: memory_mb, item_size_max, stripes)");
            return -1;
        }
    }
    *bad = (size_t)-1;
    if (o.item_size_max > o.memory_mb * 1024 * 1024) {
        snprintf(err, errlen, "item_size_max %zu is larger than memory_mb %zu MiB",
                 o.item_size_max, o.memory_mb);
        return -1;
    }
    /* A value's block (with its \r\n) must fit what the server reads. */
    if (o.item_size_max + 2 > cfg->max_block) {
        snprintf(err, errlen, "item_size_max %zu needs limits.max_block of at least %zu (it is %zu)",
                 o.item_size_max, o.item_size_max + 2, cfg->max_block);
        return -1;
    }
    /* memcached takes a get line of any length (multi-gets of thousands of
     * keys); the server closes a connection whose line passes max_line.
     * Up to the size of a value, a longer line holds no more of a
     * connection's memory than a storage command's block already may. */
    size_t line_ok = o.item_size_max < KV_GET_LINE_SUGGESTED ? o.item_size_max
                                                             : KV_GET_LINE_SUGGESTED;
    if (cfg->max_line < line_ok)
        ps_log_warn("kv: limits.max_line is %zu: a get line longer than that closes the "
                    "connection (memcached takes any length); %zu holds no more per "
                    "connection than a value does", cfg->max_line, line_ok);
    kv_module *m = calloc(1, sizeof *m);
    if (m == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    m->started = time(NULL);
    int rc = kv_store_create(&m->store, &o);
    if (rc != 0) {
        snprintf(err, errlen, "item store: %s", strerror(-rc));
        free(m);
        return -1;
    }
    pthread_mutex_init(&m->lock, NULL);
    pthread_cond_init(&m->wake, NULL);
    if (pthread_create(&m->sweeper, NULL, sweeper_main, m) != 0) {
        snprintf(err, errlen, "sweeper thread: cannot start");
        pthread_cond_destroy(&m->wake);
        pthread_mutex_destroy(&m->lock);
        kv_store_destroy(m->store);
        free(m);
        return -1;
    }
    *ud = m;
    return 0;
}

static void kv_fini(void *ud)
{
    kv_module *m = ud;
    pthread_mutex_lock(&m->lock);
    m->stop = true;
    pthread_cond_signal(&m->wake);
    pthread_mutex_unlock(&m->lock);
    pthread_join(m->sweeper, NULL);
    pthread_cond_destroy(&m->wake);
    pthread_mutex_destroy(&m->lock);
    kv_store_destroy(m->store);
    free(m);
}

PS_MODULE_DEFINE("kv", &kv_handler, kv_init, kv_fini);
