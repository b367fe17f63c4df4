#ifndef POOLSRV_MODULE_H
#define POOLSRV_MODULE_H

#include <stddef.h>

#include "poolsrv/config.h"
#include "poolsrv/server.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Handler modules: a handler that the poolsrv program loads from a shared
 * object named in the INI ([handler] module = /path/to/handler.so, or a
 * bare name, module = kv, for kv.so in the module directory), or one of
 * the built-in ones ([handler] name = echo | sleep).
 *
 * A module defines one symbol, `poolsrv_module`, a ps_module whose `abi` is
 * PS_MODULE_ABI as its headers define it (PS_MODULE_DEFINE does both). It
 * links nothing of poolsrv (CMake: poolsrv::module; pkg-config:
 * poolsrv-module): its calls (ps_conn_send, ps_pool_submit, ...) are
 * resolved in the poolsrv process that loads it. A module built for
 * another ABI, or carrying a copy of the library, is refused at load.
 */

/* Raised whenever ps_module, ps_handler or what a module may call changes
 * incompatibly. ABI 2 added `reload`; poolsrv still loads ABI 1 modules
 * (their keys then need a restart to change). */
#define PS_MODULE_ABI 2
#define PS_MODULE_ABI_OLDEST 1
#define PS_MODULE_SYMBOL "poolsrv_module"

/* A [handler] key of the module's own: every key of the section but name
 * and module, in file order (an -o override of a key replaces its value). */
typedef struct ps_module_key {
    const char *key;
    const char *value;
} ps_module_key;

typedef struct ps_module {
    unsigned abi;              /* PS_MODULE_ABI */
    const char *name;          /* for logs and messages */
    const ps_handler *handler; /* its callbacks get the ud init made */
    /*
     * Judges the module's keys and makes its state, once, before the
     * server starts (also for `poolsrv -t`), on the main thread. cfg is the
     * whole configuration (read only, valid for this call). Returns 0 with
     * *ud set, or -1 with a reason in err and *bad the index of the key at
     * fault (it stays (size_t)-1 when no one key is): the program reports
     * "FILE:LINE: handler.KEY: reason" and does not start. An unknown key
     * is such an error. May be NULL: then the module takes no keys.
     */
    int (*init)(void **ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                char *err, size_t errlen, size_t *bad);
    /* Frees what init made, after the server has stopped. May be NULL. */
    void (*fini)(void *ud);
    /*
     * Applies changed keys to the running module (SIGHUP), on the main
     * thread while workers run its callbacks with the same ud: the module
     * makes the change safe for them. Same arguments and errors as init;
     * on an error nothing changes. May be NULL: then a change of its keys
     * needs a restart.
     */
    int (*reload)(void *ud, const ps_module_key *keys, size_t nkeys, const ps_config *cfg,
                  char *err, size_t errlen, size_t *bad);
} ps_module;

/* Defines the module's entry point: PS_MODULE_DEFINE("upper", &handler,
 * init_or_NULL, fini_or_NULL), or with a reload callback
 * PS_MODULE_DEFINE_RELOAD("upper", &handler, init, fini, reload). */
#ifdef __cplusplus
#define PS__MODULE_LINKAGE extern "C"
#else
#define PS__MODULE_LINKAGE
#endif
#define PS_MODULE_DEFINE(name_, handler_, init_, fini_)                                  \
    PS__MODULE_LINKAGE __attribute__((visibility("default"))) const ps_module            \
        poolsrv_module = {PS_MODULE_ABI, (name_), (handler_), (init_), (fini_), NULL}
#define PS_MODULE_DEFINE_RELOAD(name_, handler_, init_, fini_, reload_)                  \
    PS__MODULE_LINKAGE __attribute__((visibility("default"))) const ps_module            \
        poolsrv_module = {PS_MODULE_ABI, (name_), (handler_), (init_), (fini_), (reload_)}

/* The built-in modules: echo (greeting key: the greeting line, "" for none;
 * by default server.greeting) and sleep (echo, and "sleep N" blocks N ms). */
extern const ps_module ps_echo_module;
extern const ps_module ps_sleep_module;

/* The environment variable that names another module directory. */
#define PS_MODULE_DIR_ENV "POOLSRV_MODULE_DIR"

/* The module directory, where `[handler] module = NAME` (a name without a
 * slash) finds NAME.so: $POOLSRV_MODULE_DIR when set and not empty, else
 * the one of the installation the running program belongs to (for
 * /usr/local/bin/poolsrv, /usr/local/lib/poolsrv/modules; the modules
 * poolsrv ships are installed there). Writes it into buf; returns 0, or
 * -ENAMETOOLONG when it does not fit. */
int ps_module_dir(char *buf, size_t len);

/* A module loaded and initialised from a configuration. */
typedef struct ps_module_instance ps_module_instance;

/* Picks the module cfg names (handler.module, else the built-in
 * handler.name), loads it (dlopen) when it is a file (a path, or a name
 * in ps_module_dir), checks its ABI and that it carries no copy of the
 * library of its own, and runs its init on the configuration's handler
 * keys. Returns 0, or a negative code with the reason in err: "PATH: ..."
 * for a module that is missing, not a module, built for another ABI or
 * linked with the library; "ORIGIN: handler.KEY: ..." (ORIGIN being
 * FILE:LINE or the -o option) for a key its init refused. */
int ps_module_open(const ps_config *cfg, ps_module_instance **out, char *err, size_t errlen);

const ps_handler *ps_module_handler(const ps_module_instance *m);
void *ps_module_ud(const ps_module_instance *m);
const char *ps_module_name(const ps_module_instance *m);
/* The file the module was loaded from; "" for a built-in one. */
const char *ps_module_file(const ps_module_instance *m);

/* Applies cfg's handler keys to the running module (its reload). Returns
 * 0 when applied; 1 when they cannot change while running (the module has
 * no reload, or cfg names another module); PS_ECONFIG with the reason in
 * err, as ps_module_open words it, when the module refuses them (nothing
 * changed). From the main thread. */
int ps_module_reload(ps_module_instance *m, const ps_config *cfg, char *err, size_t errlen);

/* Runs the module's fini and unloads it. Call after the server is
 * destroyed. NULL is ignored. */
void ps_module_close(ps_module_instance *m);

#ifdef __cplusplus
}
#endif

#endif
