#ifndef POOLSRV_SERVER_ECHO_H
#define POOLSRV_SERVER_ECHO_H

/* The built-in modules' shared parts: the greeting key and its reload
 * (echo.c). Private to the library. */

#include <stddef.h>
#include "poolsrv/config.h"
#include "poolsrv/module.h"
#include "poolsrv/server.h"

/* The built-in modules' init, reload and fini (echo and sleep): the
 * greeting key, kept in a box whose greeting a reload replaces. */
int ps__echo_init(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                  char *err, size_t errlen, size_t *bad);
int ps__echo_reload(void *ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                    char *err, size_t errlen, size_t *bad);
void ps__echo_fini(void *ud);
/* on_open of the built-in modules: the greeting in the box `ud`. */
int ps__module_greeting_open(ps_conn *conn, void *ud);

#endif
