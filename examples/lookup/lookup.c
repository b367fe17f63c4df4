/*
 * lookup: a handler module that resolves each line as a host name and
 * replies with its addresses, "NAME ADDR ADDR ..." (or "NAME ERROR reason").
 *
 * getaddrinfo blocks, so each lookup runs as a future on a pool of the
 * module's own ([handler] resolvers = N, default 4): the worker that read
 * the line defers its reply and goes on at once; the future's completion
 * callback sends the reply, on the resolver's thread. Replies keep the
 * order of the lines even when lookups finish out of order.
 *
 * The lookups waiting for a resolver are bounded ([handler] queue = N,
 * default 1024). At the bound a line is answered at once with
 * "NAME ERROR resolver queue full": the worker never waits for room (it
 * begins with ps_future_try_begin), so slow lookups cannot take every
 * worker of the server, and a client can tell a busy resolver from a name
 * that does not resolve.
 *
 *   [handler]
 *   module = lookup
 *   resolvers = 4
 *   queue = 1024
 */
#define _POSIX_C_SOURCE 200809L /* getaddrinfo */

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <poolsrv/future.h>
#include <poolsrv/module.h>

typedef struct lookup {
    ps_reply *reply;
    char name[256];
    char answer[1024];
} lookup;

/* True when the space-separated list holds word. */
static int has_word(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p++)
        if (p[-1] == ' ' && (p[n] == ' ' || p[n] == '\0'))
            return 1;
    return 0;
}

/* On a resolver: the blocking part. */
static void *resolve(void *arg)
{
    lookup *l = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(l->name, NULL, &hints, &res);
    size_t n = (size_t)snprintf(l->answer, sizeof l->answer, "%s", l->name);
    const char *addrs = l->answer + n; /* " ADDR" each, each address once */
    if (rc != 0)
        snprintf(l->answer + n, sizeof l->answer - n, " ERROR %s", gai_strerror(rc));
    for (struct addrinfo *a = res; a != NULL && n < sizeof l->answer - 48; a = a->ai_next) {
        char text[INET6_ADDRSTRLEN];
        const void *addr = a->ai_family == AF_INET
                               ? (const void *)&((struct sockaddr_in *)a->ai_addr)->sin_addr
                               : (const void *)&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        if (inet_ntop(a->ai_family, addr, text, sizeof text) != NULL && !has_word(addrs, text))
            n += (size_t)snprintf(l->answer + n, sizeof l->answer - n, " %s", text);
    }
    if (res != NULL)
        freeaddrinfo(res);
    return l;
}

/* On the same resolver, once resolve has returned: the reply. */
static void resolved(ps_future *f, void *state)
{
    lookup *l = state;
    ps_reply_send(l->reply, l->answer, strlen(l->answer));
    ps_reply_send(l->reply, "\r\n", 2);
    ps_reply_done(l->reply, PS_CONTINUE); /* PS_ECLOSED if the client left */
    ps_future_end(&f, NULL);
    free(l);
}

static int lookup_line(ps_conn *conn, const ps_line *line, void *ud)
{
    ps_pool *resolvers = ud;
    if (line->len == 0)
        return PS_CLOSE;
    lookup *l = calloc(1, sizeof *l);
    if (l == NULL)
        return PS_CLOSE;
    size_t n = line->len < sizeof l->name - 1 ? line->len : sizeof l->name - 1;
    memcpy(l->name, line->data, n);
    l->reply = ps_reply_defer(conn);
    ps_future *f;
    if (l->reply == NULL) {
        free(l);
        return PS_CLOSE;
    }
    int rc = ps_future_try_begin(&f, resolvers, resolve, l, resolved, l);
    if (rc != 0) {
        /* Answered now, in its turn among the deferred replies. */
        int len = snprintf(l->answer, sizeof l->answer, "%s ERROR %s\r\n", l->name,
                           rc == PS_EFULL ? "resolver queue full" : "resolver unavailable");
        ps_reply_send(l->reply, l->answer, (size_t)len);
        ps_reply_done(l->reply, PS_CONTINUE);
        free(l);
    }
    return PS_CONTINUE;
}

/* One [handler] key into *resolvers or *queue; -1 with the reason in err. */
static int parse_key(const ps_module_key *k, unsigned *resolvers, unsigned *queue, char *err,
                     size_t errlen)
{
    unsigned *to = strcmp(k->key, "resolvers") == 0 ? resolvers
                   : strcmp(k->key, "queue") == 0   ? queue
                                                    : NULL;
    unsigned long max = to == queue ? 1048576 : 256;
    char *end;
    errno = 0;
    unsigned long v = strtoul(k->value, &end, 10);
    if (to == NULL) {
        snprintf(err, errlen, "unknown key (this handler takes: resolvers, queue)");
        return -1;
    }
    if (errno != 0 || end == k->value || *end != '\0' || v < 1 || v > max) {
        snprintf(err, errlen, "expected 1 to %lu", max);
        return -1;
    }
    *to = (unsigned)v;
    return 0;
}

static int lookup_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                       char *err, size_t errlen, size_t *bad)
{
    (void)cfg;
    unsigned resolvers = 4, queue = 1024;
    for (size_t i = 0; i < nkeys; i++) {
        if (parse_key(&keys[i], &resolvers, &queue, err, errlen) != 0) {
            *bad = i;
            return -1;
        }
    }
    ps_pool_opts opts = {.workers = resolvers, .queue_capacity = queue};
    ps_pool *pool;
    int rc = ps_pool_create(&pool, &opts);
    if (rc != 0) {
        snprintf(err, errlen, "resolver pool: %s", ps_strerror(rc));
        return -1;
    }
    *ud = pool;
    return 0;
}

static void lookup_fini(void *ud)
{
    ps_pool_destroy(ud); /* runs what is queued first */
}

static const ps_handler lookup_handler = {.on_line = lookup_line};

PS_MODULE_DEFINE("lookup", &lookup_handler, lookup_init, lookup_fini);
