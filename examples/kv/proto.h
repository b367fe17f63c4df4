#ifndef KV_PROTO_H
#define KV_PROTO_H

/*
 * The kv module's side of memcached's ASCII protocol, without I/O: a parser
 * for one command line (a pure function: no allocation, no state) and the
 * replies as memcached words them, appended to a growable buffer.
 *
 * The parser follows memcached 1.6 (proto_text.c), checked against a
 * running memcached 1.6.18: tokens are split on spaces only; a wrong count
 * of tokens is "ERROR", a bad number or key "CLIENT_ERROR ...". A trailing
 * token where `noreply` may stand that is not "noreply" is ignored, as
 * memcached ignores it ("set k 0 0 5 noreplyx" is a set that replies).
 * Numbers are read as memcached reads them (an exptime's low 32 bits),
 * except where that would misread the client: flags above 2^32-1 and a
 * bytes field of 2^32 or more (which memcached truncates) are refused, as
 * is a NUL or CR in a key. The README's "Differences from memcached" lists
 * every known difference and why.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kv_cmd_type {
    KV_CMD_NONE = 0, /* not a command this module knows: reply ERROR */
    KV_CMD_GET,
    KV_CMD_GETS,
    KV_CMD_GAT,
    KV_CMD_GATS,
    KV_CMD_SET,
    KV_CMD_ADD,
    KV_CMD_REPLACE,
    KV_CMD_APPEND,
    KV_CMD_PREPEND,
    KV_CMD_CAS,
    KV_CMD_DELETE,
    KV_CMD_INCR,
    KV_CMD_DECR,
    KV_CMD_TOUCH,
    KV_CMD_FLUSH_ALL,
    KV_CMD_VERSION,
    KV_CMD_VERBOSITY,
    KV_CMD_STATS,
    KV_CMD_QUIT,
} kv_cmd_type;

/* A byte range inside the parsed line. */
typedef struct kv_key {
    const char *data;
    size_t len;
} kv_key;

/* Keys held per batch. memcached has no bound on a get's keys (it reads
 * them 23 at a time); neither has this parser: a get with more keys gives
 * them in further batches (kv_proto_next_keys). The only bound is the
 * line length the caller's framer allows. */
#define KV_PROTO_MAX_KEYS 24

/* The longest data block a storage command may announce (memcached's
 * INT_MAX - 2; larger is CLIENT_ERROR bad command line format). */
#define KV_PROTO_BYTES_MAX 2147483645

typedef struct kv_cmd {
    kv_cmd_type type;
    /* get/gets/gat/gats: the first batch of keys (more: kv_proto_next_keys);
     * keys[0]: the key of set/add/replace/append/prepend/cas, delete,
     * incr/decr, touch; stats: its arguments ("stats items": "items"). */
    kv_key keys[KV_PROTO_MAX_KEYS];
    size_t nkeys;
    size_t nkeys_total; /* of the whole line, every batch */
    uint32_t flags;     /* storage commands */
    int64_t exptime;    /* storage commands, touch, gat/gats: as memcached
                         * reads it, the low 32 bits as a signed number */
    size_t bytes;       /* storage commands: the data block's length */
    uint64_t cas;       /* cas */
    uint64_t delta;     /* incr/decr */
    int64_t delay;      /* flush_all; 0 when none given; 32 bits as exptime */
    uint32_t level;     /* verbosity */
    bool noreply;       /* send nothing back, errors included (memcached) */
    /* On an error: the whole reply line (with its \r\n) to send unless
     * noreply; NULL after success. */
    const char *reply;
    size_t reply_len;
    const char *rest; /* internal: the keys after this batch */
    size_t rest_len;
} kv_cmd;

/* Parser errors, each with its reply in cmd->reply. */
#define KV_PROTO_EUNKNOWN (-1) /* "ERROR": unknown command, wrong token count */
#define KV_PROTO_EFORMAT  (-2) /* "CLIENT_ERROR bad command line format" */
#define KV_PROTO_EDELTA   (-3) /* "CLIENT_ERROR invalid numeric delta argument" */
#define KV_PROTO_EEXPTIME (-4) /* "CLIENT_ERROR invalid exptime argument" */
#define KV_PROTO_EDELETE  (-5) /* "CLIENT_ERROR bad command line format.  Usage:
                                * delete <key> [noreply]" */

/* Parses one command line: line[0..len), without its line ending (the
 * caller frames lines; NUL bytes are data). Returns 0 with *cmd filled, its
 * keys pointing into line; or a KV_PROTO_E* code with cmd->reply set and
 * cmd->type the command when it was known. After an error on a storage
 * command nothing is swallowed: memcached then reads its data block as a
 * command line, and so should the module. */
int kv_proto_parse(const char *line, size_t len, kv_cmd *cmd);

/* Loads the next batch of a get/gets/gat/gats into cmd->keys. Returns how
 * many keys it holds now, 0 when all were given. The keys were all checked
 * by kv_proto_parse. */
size_t kv_proto_next_keys(kv_cmd *cmd);

/* --- the binary protocol ----------------------------------------------------- */

/* memcached tells its two protocols apart by a connection's first byte: a
 * binary request begins with this magic (no text command can), then the
 * rest of its 24-byte header. The module does not serve the binary
 * protocol; it answers the first request in it with an error and closes. */
#define KV_PROTO_BINARY_MAGIC  0x80
#define KV_PROTO_BINARY_HEADER 24
#define KV_PROTO_BINARY_ERROR_MAX (KV_PROTO_BINARY_HEADER + 16)

/* The binary reply to the request whose header is req[0..24): magic 0x81,
 * the request's opcode and opaque, status 0x0083 ("Not supported"), and
 * that text as its value, which is what a binary client shows. Writes it
 * to out (KV_PROTO_BINARY_ERROR_MAX bytes) and returns its length. */
size_t kv_proto_binary_error(const unsigned char *req, unsigned char *out);

/* --- replies --------------------------------------------------------------- */

#define KV_REPLY_STORED     "STORED\r\n"
#define KV_REPLY_NOT_STORED "NOT_STORED\r\n"
#define KV_REPLY_EXISTS     "EXISTS\r\n"
#define KV_REPLY_NOT_FOUND  "NOT_FOUND\r\n"
#define KV_REPLY_DELETED    "DELETED\r\n"
#define KV_REPLY_TOUCHED    "TOUCHED\r\n"
#define KV_REPLY_END        "END\r\n"
#define KV_REPLY_OK         "OK\r\n"
#define KV_REPLY_ERROR      "ERROR\r\n"
#define KV_REPLY_BAD_CHUNK  "CLIENT_ERROR bad data chunk\r\n"
#define KV_REPLY_TOO_LARGE  "SERVER_ERROR object too large for cache\r\n"

/* The reply line for a store result of a command of this type: STORED or
 * DELETED or TOUCHED for KV_OK (incr/decr: NULL, the reply is the number,
 * kv_proto_append_number), NOT_STORED, EXISTS, NOT_FOUND, "CLIENT_ERROR
 * cannot increment or decrement non-numeric value", "SERVER_ERROR object
 * too large for cache", "SERVER_ERROR out of memory storing object" (for
 * incr/decr "SERVER_ERROR out of memory"). Static, NUL-terminated. */
const char *kv_proto_result_line(kv_cmd_type type, kv_result r);

/* A growable byte buffer for replies. Zero-initialise; kv_buf_free. */
typedef struct kv_buf {
    char *data;
    size_t len;
    size_t cap;
} kv_buf;

/* Appends n bytes. Returns 0 or -ENOMEM (b unchanged). */
int kv_buf_append(kv_buf *b, const void *p, size_t n);
/* Frees b's memory and empties it. */
void kv_buf_free(kv_buf *b);

/* "VALUE <key> <flags> <bytes>[ <cas>]\r\n". 0 or -ENOMEM. */
int kv_proto_append_value_line(kv_buf *out, const kv_key *key, const kv_item_info *info,
                               bool with_cas);

/* Values at least this long are sent by reference (the item held), shorter
 * ones copied: a copy of a few hundred bytes costs less than a hold and an
 * iovec, and copies stay within 4 MiB for the longest get line. */
#define KV_HOLD_MIN 1024

/* A hit whose value goes by reference: item NULL when there is none. */
typedef struct kv_hit {
    void *item;        /* held: kv_store_release it once the value is sent */
    const char *value;
    size_t nbytes;
} kv_hit;

/* Runs one key of cmd (get, gets, gat or gats) against the store and, on a
 * hit, appends the VALUE line to out; a short value (under KV_HOLD_MIN) and
 * its \r\n follow it there, copied under the item's lock, while a long one
 * is held and given in *hit: send out, then the value, then \r\n. Returns
 * the store's result (KV_OK on a hit), or KV_NO_MEMORY when out could not
 * grow (nothing held). The module ends the reply with
 * KV_REPLY_END after the last key. */
kv_result kv_proto_get_key(kv_store *s, const kv_cmd *cmd, const kv_key *key, kv_buf *out,
                           kv_hit *hit);

/* "<value>\r\n", the reply of incr/decr. 0 or -ENOMEM. */
int kv_proto_append_number(kv_buf *out, uint64_t value);

/* The memcached release whose text protocol kv follows, reply for reply:
 * what `version` and `stats` report as the version, so that clients that
 * read it (libmemcached parses major.minor.patch; some enable features by
 * it) take kv for that memcached. poolsrv's own version is in `stats` as
 * kv_poolsrv_version. */
#define KV_PROTOCOL_VERSION "1.6.18"

/* "VERSION <version>\r\n". 0 or -ENOMEM. */
int kv_proto_append_version(kv_buf *out, const char *version);

/* "STAT <name> <value>\r\n". 0 or -ENOMEM. */
int kv_proto_append_stat(kv_buf *out, const char *name, const char *value);
int kv_proto_append_stat_u64(kv_buf *out, const char *name, uint64_t value);

/* The store's STAT lines, in memcached's order and names (cmd_get ...
 * reclaimed), then kv_lock_waits, kv_hash_buckets, kv_malloc_trims,
 * kv_malloc_trim_us and kv_stripes; no END: the module puts its own
 * lines (pid, uptime, time, version, curr_connections, threads, ...)
 * before them and KV_REPLY_END after. 0 or -ENOMEM. */
int kv_proto_append_stats(kv_buf *out, const kv_store_stats *st);

#ifdef __cplusplus
}
#endif

#endif
