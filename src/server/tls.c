/* TLS as a transport (tls.h), over OpenSSL 3.
 *
 * A connection's session reads and writes its socket without blocking;
 * whichever direction OpenSSL waits for goes to conn->tp_want, so that a
 * blocking loop polls for it (event mode waits for both edges anyway).
 * What the traps of TLS in an event loop ask for:
 * - read is drained only on SSL_ERROR_WANT_READ: decrypted bytes kept in
 *   OpenSSL raise no edge (pending);
 * - writes may move and grow between retries (the output queue compacts
 *   and the gathered bytes are copied into a per-thread record buffer):
 *   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER and ENABLE_PARTIAL_WRITE;
 * - OpenSSL's error queue is per thread and connections move between
 *   workers: cleared before each call, drained after a failure;
 * - a peer's EOF without close_notify is an EOF for a line protocol
 *   (SSL_OP_IGNORE_UNEXPECTED_EOF);
 * - close_notify only after a finished handshake; renegotiation off.
 * The context is built whole and never changed while sessions use it. */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "conn.h"
#include "text.h"
#include "tls.h"
#include "transport.h"

#if PS__HAVE_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>

#define PS__TLS_RECORD 16384 /* the most plaintext one record carries */

/* The context new sessions are made from. A reload builds a whole new
 * one and swaps it in under lock, never changing one in use: SSL_new takes
 * a reference under the same lock, and the old context lives on in the
 * sessions made from it. */
struct ps__tls {
    pthread_mutex_t lock;
    SSL_CTX *ctx; /* guarded by lock */
};

typedef struct tls_conn {
    SSL *ssl;
    bool handshaken;
    /* What the handshake settled, written before it is marked done and
     * never after (read by other threads through ps__conn_tls_info). */
    char version[16], cipher[64], peer[256];
} tls_conn;

static SSL *ssl_of(const ps_conn *c) { return ((const tls_conn *)c->tp_state)->ssl; }

/* "FILE: reason" from OpenSSL's queue (then empty) into err. */
static int ctx_error(char *err, size_t errlen, const char *key, const char *file)
{
    char why[256] = "unknown error";
    unsigned long e = ERR_get_error();
    if (e != 0)
        ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    if (file != NULL && file[0] != '\0')
        ps__set_err(err, errlen, "tls.%s: %s: %s", key, file, why);
    else
        ps__set_err(err, errlen, "tls.%s: %s", key, why);
    return PS_ECONFIG;
}

/* Who may connect: the CAs of client certificates and whether one is
 * asked for or required. */
static int set_verify(SSL_CTX *ctx, const ps_config *cfg, char *err, size_t errlen)
{
    if (cfg->tls_ca[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1)
            return ctx_error(err, errlen, "ca", cfg->tls_ca);
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_ca);
        if (names == NULL)
            return ctx_error(err, errlen, "ca", cfg->tls_ca);
        SSL_CTX_set_client_CA_list(ctx, names);
    }
    int mode = SSL_VERIFY_NONE;
    if (cfg->tls_verify_client == PS_TLS_VERIFY_OPTIONAL)
        mode = SSL_VERIFY_PEER;
    else if (cfg->tls_verify_client == PS_TLS_VERIFY_REQUIRE)
        mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    SSL_CTX_set_verify(ctx, mode, NULL);
    return 0;
}

static int configure(SSL_CTX *ctx, const ps_config *cfg, char *err, size_t errlen)
{
    int version = cfg->tls_min_version == PS_TLS_1_3 ? TLS1_3_VERSION : TLS1_2_VERSION;
    if (SSL_CTX_set_min_proto_version(ctx, version) != 1)
        return ctx_error(err, errlen, "min_version", NULL);
    uint64_t opts = SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                    SSL_OP_CIPHER_SERVER_PREFERENCE;
    if (!cfg->tls_session_tickets)
        opts |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(ctx, opts);
    SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_RELEASE_BUFFERS);
    /* Resumed sessions must not cross contexts of other servers. */
    static const unsigned char sid[] = "poolsrv";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof sid - 1);
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1)
        return ctx_error(err, errlen, "cert", cfg->tls_cert);
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1)
        return ctx_error(err, errlen, "key", cfg->tls_key);
    /* The two files are replaced one after the other: a pair caught
     * between the two does not match. */
    if (SSL_CTX_check_private_key(ctx) != 1)
        return ctx_error(err, errlen, "key", cfg->tls_key);
    if (cfg->tls_ciphers[0] != '\0' && SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1)
        return ctx_error(err, errlen, "ciphers", NULL);
    if (cfg->tls_ciphersuites[0] != '\0' &&
        SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1)
        return ctx_error(err, errlen, "ciphersuites", NULL);
    return set_verify(ctx, cfg, err, errlen);
}

/* A whole context from cfg, or NULL with err set. */
static SSL_CTX *context_new(const ps_config *cfg, char *err, size_t errlen, int *rc)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        *rc = ctx_error(err, errlen, "enabled", NULL);
        return NULL;
    }
    *rc = configure(ctx, cfg, err, errlen);
    if (*rc != 0) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

int ps__tls_create(ps__tls **out, const ps_config *cfg, char *err, size_t errlen)
{
    *out = NULL;
    ps__tls *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    int rc;
    t->ctx = context_new(cfg, err, errlen, &rc);
    if (t->ctx == NULL || pthread_mutex_init(&t->lock, NULL) != 0) {
        if (t->ctx != NULL)
            rc = -ENOMEM;
        SSL_CTX_free(t->ctx);
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int ps__tls_reload(ps__tls *t, const ps_config *cfg, char *err, size_t errlen)
{
    int rc;
    SSL_CTX *ctx = context_new(cfg, err, errlen, &rc);
    if (ctx == NULL)
        return rc;
    ps__lock(&t->lock);
    SSL_CTX *old = t->ctx;
    t->ctx = ctx;
    ps__unlock(&t->lock);
    SSL_CTX_free(old); /* its sessions keep it until they end */
    return 0;
}

void ps__tls_destroy(ps__tls *t)
{
    if (t == NULL)
        return;
    SSL_CTX_free(t->ctx); /* sessions hold references of their own */
    pthread_mutex_destroy(&t->lock);
    free(t);
}

/* A failed call: forget why (the next call on this thread starts clean). */
static int failed(void)
{
    ERR_clear_error();
    return -EPROTO;
}

/* The client's verified identity: its certificate's subject CN, else its
 * first DNS name; "" without a verified certificate. */
static void verified_peer(SSL *ssl, char *out, size_t outlen)
{
    out[0] = '\0';
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cert == NULL || SSL_get_verify_result(ssl) != X509_V_OK)
        return;
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out,
                                  (int)outlen) > 0)
        return;
    out[0] = '\0';
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *n = sk_GENERAL_NAME_value(names, i);
        if (n->type == GEN_DNS) {
            snprintf(out, outlen, "%.*s", ASN1_STRING_length(n->d.dNSName),
                     (const char *)ASN1_STRING_get0_data(n->d.dNSName));
            break;
        }
    }
    GENERAL_NAMES_free(names);
}

static void settled(tls_conn *t)
{
    snprintf(t->version, sizeof t->version, "%s", SSL_get_version(t->ssl));
    snprintf(t->cipher, sizeof t->cipher, "%s", SSL_get_cipher_name(t->ssl));
    verified_peer(t->ssl, t->peer, sizeof t->peer);
    ERR_clear_error();
}

static void tls_describe(const ps_conn *c, ps_conn_tls_info *info)
{
    const tls_conn *t = c->tp_state;
    *info = (ps_conn_tls_info){t->version, t->cipher, t->peer};
}

static int tls_handshake(ps_conn *c)
{
    tls_conn *t = c->tp_state;
    if (t->handshaken)
        return 0;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1) {
        t->handshaken = true;
        settled(t);
        return 0;
    }
    switch (SSL_get_error(t->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        c->tp_want = POLLIN;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        c->tp_want = POLLOUT;
        return -EAGAIN;
    default:
        return failed();
    }
}

/* Reads until the buffer is full or OpenSSL wants more from the socket:
 * only then is the connection drained. */
static ssize_t tls_read(ps_conn *c, void *buf, size_t len, bool *more)
{
    SSL *ssl = ssl_of(c);
    size_t got = 0;
    *more = false;
    while (got < len) {
        size_t n = 0;
        ERR_clear_error();
        if (SSL_read_ex(ssl, (char *)buf + got, len - got, &n) == 1) {
            got += n;
            continue;
        }
        int e = SSL_get_error(ssl, 0);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            c->tp_want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
            return got > 0 ? (ssize_t)got : -EAGAIN;
        }
        if (e == SSL_ERROR_ZERO_RETURN) { /* close_notify, or EOF without it */
            *more = got > 0; /* the end comes at the next read */
            return (ssize_t)got;
        }
        if (got > 0) {
            *more = true; /* the next read reports the failure */
            return (ssize_t)got;
        }
        return failed();
    }
    *more = true;
    return (ssize_t)got;
}

/* One record's worth of the gathered bytes: the first span alone when it
 * is large or alone, else copied into a per-thread buffer. */
static ssize_t tls_writev(ps_conn *c, const struct iovec *iov, int iovcnt)
{
    tls_conn *t = c->tp_state;
    if (!t->handshaken)
        return -ENOTCONN; /* nothing in the clear before or instead of it */
    static _Thread_local char record[PS__TLS_RECORD];
    const void *data = iov[0].iov_base;
    size_t len = iov[0].iov_len;
    if (iovcnt > 1 && len < PS__TLS_RECORD) {
        len = 0;
        for (int i = 0; i < iovcnt && len < PS__TLS_RECORD; i++) {
            size_t n = iov[i].iov_len < PS__TLS_RECORD - len ? iov[i].iov_len
                                                              : PS__TLS_RECORD - len;
            memcpy(record + len, iov[i].iov_base, n);
            len += n;
        }
        data = record;
    }
    size_t n = 0;
    ERR_clear_error();
    if (SSL_write_ex(t->ssl, data, len, &n) == 1)
        return (ssize_t)n;
    int e = SSL_get_error(t->ssl, 0);
    if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
        c->tp_want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return -EAGAIN;
    }
    failed();
    return -EPIPE;
}

static bool tls_pending(const ps_conn *c)
{
    return SSL_pending(ssl_of(c)) > 0;
}

/* close_notify, once, without waiting for the peer's: only after a
 * finished handshake (never in the middle of one). */
static void tls_shutdown(ps_conn *c)
{
    tls_conn *t = c->tp_state;
    if (t->handshaken && !SSL_in_init(t->ssl)) {
        ERR_clear_error();
        if (SSL_shutdown(t->ssl) < 0)
            ERR_clear_error();
    }
}

static void tls_free(ps_conn *c)
{
    tls_conn *t = c->tp_state;
    SSL_free(t->ssl);
    free(t);
    c->tp_state = NULL;
}

static const ps__transport transport_tls = {
    .name = "tls",
    .handshake = tls_handshake,
    .read = tls_read,
    .writev = tls_writev,
    .pending = tls_pending,
    .shutdown = tls_shutdown,
    .free = tls_free,
    .describe = tls_describe,
};

int ps__tls_attach(ps__tls *tls, ps_conn *c)
{
    tls_conn *t = calloc(1, sizeof *t);
    if (t == NULL)
        return -ENOMEM;
    ps__lock(&tls->lock);
    t->ssl = SSL_new(tls->ctx);
    ps__unlock(&tls->lock);
    if (t->ssl == NULL || SSL_set_fd(t->ssl, c->fd) != 1) {
        SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        return -ENOMEM;
    }
    SSL_set_accept_state(t->ssl);
    c->tp = &transport_tls;
    c->tp_state = t;
    return 0;
}

#else /* without OpenSSL: the configuration refuses tls.enabled first */

int ps__tls_create(ps__tls **out, const ps_config *cfg, char *err, size_t errlen)
{
    (void)cfg;
    *out = NULL;
    ps__set_err(err, errlen, "tls.enabled: built without OpenSSL");
    return -ENOTSUP;
}

int ps__tls_reload(ps__tls *tls, const ps_config *cfg, char *err, size_t errlen)
{
    (void)tls;
    (void)cfg;
    ps__set_err(err, errlen, "tls.enabled: built without OpenSSL");
    return -ENOTSUP;
}

void ps__tls_destroy(ps__tls *tls) { (void)tls; }

int ps__tls_attach(ps__tls *tls, ps_conn *conn)
{
    (void)tls;
    (void)conn;
    return -ENOTSUP;
}

#endif
