#ifndef POOLSRV_SERVER_TLS_H
#define POOLSRV_SERVER_TLS_H

/* TLS as a transport (tls.c, OpenSSL 3): a server's context, made from the
 * [tls] files, and the transport its connections read and write through.
 * The handshake is the transport's, run by the connection layer before
 * on_open without ever blocking; the dispatch modes and handlers never
 * branch on TLS. Built only with PS__HAVE_TLS; private to the library. */

#include <stddef.h>

#include "poolsrv/config.h"
#include "poolsrv/server.h"

typedef struct ps__tls ps__tls;

/* Builds the context from cfg's [tls] keys (certificate, key, CAs,
 * versions, ciphers, tickets). Returns 0, or PS_ECONFIG with "tls.KEY:
 * FILE: reason" in err; -ENOTSUP when built without TLS. */
int ps__tls_create(ps__tls **out, const ps_config *cfg, char *err, size_t errlen);

/* Builds a new context from cfg's [tls] files and settings and puts it in
 * place of the old for the connections to come; connected clients keep
 * their sessions (each holds its context). A file that is missing, broken
 * or a key that does not match its certificate changes nothing: PS_ECONFIG
 * with "tls.KEY: FILE: reason" in err. From the thread that owns the
 * server. */
int ps__tls_reload(ps__tls *tls, const ps_config *cfg, char *err, size_t errlen);

/* Frees the context (connections keep their own reference). NULL: no-op. */
void ps__tls_destroy(ps__tls *tls);

/* Makes conn speak TLS over its socket: a session of tls's context,
 * handshake still to come. 0 or -ENOMEM (conn unchanged). */
int ps__tls_attach(ps__tls *tls, ps_conn *conn);

#endif
