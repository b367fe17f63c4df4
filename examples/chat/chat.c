/*
 * chat: a handler module where every line goes to every other connected
 * client, as "ID: line" (ID: the sender's connection id); joins and leaves
 * are announced ("* ID joined", "* ID left"). Lines come in on any worker,
 * so the sends cross connections: each client is reached through a
 * ps_conn_ref, from whichever worker runs the sender's callback.
 *
 *   [handler]
 *   module = chat
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <poolsrv/module.h>

typedef struct member {
    uint64_t id;
    ps_conn_ref *ref;
    struct member *next;
} member;

typedef struct room {
    pthread_mutex_t lock;
    member *members; /* guarded by lock */
} room;

/* Sends text to every member but `from` (0: everyone). Caller holds the lock. */
static void broadcast(room *r, uint64_t from, const char *text, size_t len)
{
    for (member *m = r->members; m != NULL; m = m->next)
        if (m->id != from)
            ps_conn_ref_send(m->ref, text, len); /* a full client misses it */
}

static int chat_open(ps_conn *conn, void *ud)
{
    room *r = ud;
    member *m = calloc(1, sizeof *m);
    if (m == NULL || (m->ref = ps_conn_ref_new(conn)) == NULL) {
        free(m);
        return PS_CLOSE;
    }
    m->id = ps_conn_id(conn);
    ps_conn_set_data(conn, m);
    char text[64];
    int n = snprintf(text, sizeof text, "* %llu joined\r\n", (unsigned long long)m->id);
    pthread_mutex_lock(&r->lock);
    broadcast(r, m->id, text, (size_t)n);
    m->next = r->members;
    r->members = m;
    pthread_mutex_unlock(&r->lock);
    n = snprintf(text, sizeof text, "* you are %llu\r\n", (unsigned long long)m->id);
    return ps_conn_send(conn, text, (size_t)n) == 0 ? PS_CONTINUE : PS_CLOSE;
}

static int chat_line(ps_conn *conn, const ps_line *line, void *ud)
{
    room *r = ud;
    const member *m = ps_conn_get_data(conn);
    if (line->len == 0)
        return PS_CLOSE;
    char *text = malloc(line->len + 32);
    if (text == NULL)
        return PS_CONTINUE;
    int n = snprintf(text, 32, "%llu: ", (unsigned long long)m->id);
    memcpy(text + n, line->data, line->len);
    memcpy(text + n + line->len, "\r\n", 2);
    pthread_mutex_lock(&r->lock);
    broadcast(r, m->id, text, (size_t)n + line->len + 2);
    pthread_mutex_unlock(&r->lock);
    free(text);
    return PS_CONTINUE;
}

static void chat_close(ps_conn *conn, void *ud)
{
    room *r = ud;
    member *m = ps_conn_get_data(conn);
    if (m == NULL)
        return;
    char text[64];
    int n = snprintf(text, sizeof text, "* %llu left\r\n", (unsigned long long)m->id);
    pthread_mutex_lock(&r->lock);
    for (member **p = &r->members; *p != NULL; p = &(*p)->next)
        if (*p == m) {
            *p = m->next;
            break;
        }
    broadcast(r, m->id, text, (size_t)n);
    pthread_mutex_unlock(&r->lock);
    ps_conn_ref_release(m->ref);
    free(m);
}

static int chat_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                     char *err, size_t errlen, size_t *bad)
{
    (void)cfg;
    (void)keys;
    if (nkeys > 0) {
        snprintf(err, errlen, "unknown key (chat takes none)");
        *bad = 0;
        return -1;
    }
    room *r = calloc(1, sizeof *r);
    if (r == NULL || pthread_mutex_init(&r->lock, NULL) != 0) {
        free(r);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    *ud = r;
    return 0;
}

static void chat_fini(void *ud)
{
    room *r = ud;
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static const ps_handler chat_handler = {
    .on_open = chat_open, .on_line = chat_line, .on_close = chat_close};

PS_MODULE_DEFINE("chat", &chat_handler, chat_init, chat_fini);
