/*
 * Handler modules: the built-in ones, and shared objects loaded with dlopen
 * through their one entry point, `poolsrv_module` (include/poolsrv/module.h).
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "poolsrv/module.h"
#include "module_copy.h"
#include "text.h"

struct ps_module_instance {
    const ps_module *module;
    void *ud;
    void *dl; /* dlopen's handle; NULL for a built-in module */
    char path[PS_CONFIG_MODULE_MAX]; /* handler.module as loaded; "" = built-in */
    char file[PATH_MAX];             /* the file it was loaded from; "" = built-in */
};



/* dir/rel with rel's leading "../" taken off dir's end (dir has no
 * symbolic links: it comes from /proc/self/exe). */
static int join_up(char *out, size_t outlen, char *dir, const char *rel)
{
    while (strncmp(rel, "../", 3) == 0) {
        char *slash = strrchr(dir, '/');
        if (slash == NULL || slash == dir)
            break;
        *slash = '\0';
        rel += 3;
    }
    int n = snprintf(out, outlen, "%s/%s", dir, rel);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

int ps_module_dir(char *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return -EINVAL;
    const char *env = getenv(PS_MODULE_DIR_ENV);
    int n;
    if (env != NULL && env[0] != '\0') {
        n = snprintf(buf, len, "%s", env);
        return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
    }
    /* The installation's own directory, found from where the program lies,
     * so that an installed tree moved to another prefix finds its modules. */
    const char *rel = PS_MODULE_DIR_FROM_BIN;
    char exe[PATH_MAX];
    ssize_t got = rel[0] != '/' ? readlink("/proc/self/exe", exe, sizeof exe - 1) : -1;
    if (got > 0) {
        exe[got] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL && slash != exe) {
            *slash = '\0';
            return join_up(buf, len, exe, rel);
        }
    }
    n = snprintf(buf, len, "%s", PS_MODULE_DIR_FULL);
    return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* The file handler.module names: a path (it has a slash) as it is, a bare
 * name in the module directory, with ".so" added when it has none. */
static int module_file(const char *name, char *out, size_t outlen, char *err, size_t errlen)
{
    int n;
    if (strchr(name, '/') != NULL) {
        n = snprintf(out, outlen, "%s", name);
    } else {
        char dir[PATH_MAX];
        if (ps_module_dir(dir, sizeof dir) != 0) {
            ps__set_err(err, errlen, "%s: handler module: the module directory's path is too long",
                    name);
            return -ENAMETOOLONG;
        }
        size_t len = strlen(name);
        bool has_so = len > 3 && strcmp(name + len - 3, ".so") == 0;
        n = snprintf(out, outlen, "%s/%s%s", dir, name, has_so ? "" : ".so");
    }
    if (n < 0 || (size_t)n >= outlen) {
        ps__set_err(err, errlen, "%s: handler module: path too long", name);
        return -ENAMETOOLONG;
    }
    return 0;
}

/* Loads the module handler.module names (name); path is its file. */
static int load(const char *name, const char *path, const ps_module **mod, void **dl, char *err,
                size_t errlen)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        int e = errno;
        if (strchr(name, '/') == NULL)
            ps__set_err(err, errlen,
                    "%s: handler module: %s: %s (a name without a slash is looked up in the "
                    "module directory; " PS_MODULE_DIR_ENV " names another)",
                    name, path, ps_strerror(-e));
        else
            ps__set_err(err, errlen, "%s: handler module: %s", path, ps_strerror(-e));
        return -ENOENT;
    }
    if (!S_ISREG(st.st_mode)) {
        ps__set_err(err, errlen, "%s: handler module: not a regular file", path);
        return -EINVAL;
    }
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (*dl == NULL) {
        const char *why = dlerror();
        ps__set_err(err, errlen, "%s: not a loadable handler module: %s",
                path, why ? why : "dlopen failed");
        return -EINVAL;
    }
    dlerror();
    const ps_module *m = dlsym(*dl, PS_MODULE_SYMBOL);
    if (m == NULL) {
        ps__set_err(err, errlen, "%s: not a poolsrv handler module (no symbol %s)",
                path, PS_MODULE_SYMBOL);
        dlclose(*dl);
        return -EINVAL;
    }
    if (m->abi < PS_MODULE_ABI_OLDEST || m->abi > PS_MODULE_ABI) {
        ps__set_err(err, errlen,
                "%s: handler module built for module ABI %u; this poolsrv takes ABI %d to %d: "
                "rebuild it against these headers",
                path, m->abi, PS_MODULE_ABI_OLDEST, PS_MODULE_ABI);
        dlclose(*dl);
        return -EINVAL;
    }
    if (m->handler == NULL) {
        ps__set_err(err, errlen, "%s: handler module has no handler", path);
        dlclose(*dl);
        return -EINVAL;
    }
    char sym[128];
    if (ps__module_own_copy(*dl, path, sym, sizeof sym)) {
        ps__set_err(err, errlen,
                "%s: handler module carries its own copy of the poolsrv library (it defines %s): "
                "build it with poolsrv::module (CMake) or `pkg-config --cflags poolsrv-module`, "
                "linking nothing of poolsrv (docs/handlers.md)",
                path, sym);
        dlclose(*dl);
        return -EINVAL;
    }
    *mod = m;
    return 0;
}

/* Unloads a module whose init did not run or failed: no fini. */
static void discard(ps_module_instance *mi)
{
    if (mi->dl != NULL)
        dlclose(mi->dl);
    free(mi);
}

/* cfg's handler keys as a module sees them. */
static void module_keys(const ps_config *cfg, ps_module_key *keys)
{
    for (size_t i = 0; i < cfg->handler_nkeys && i < PS_CONFIG_HANDLER_KEYS; i++)
        keys[i] = (ps_module_key){cfg->handler_keys[i].key, cfg->handler_keys[i].value};
}

/* An init or reload that refused: "ORIGIN: handler.KEY: reason" for the
 * key at fault, else "WHAT: handler NAME: reason". */
static void key_error(const ps_config *cfg, const ps_module *mod, const char *what,
                      const char *fallback, const char *reason, size_t bad, char *err,
                      size_t errlen)
{
    if (bad < cfg->handler_nkeys)
        ps__set_err(err, errlen, "%s: handler.%s: %s", cfg->handler_keys[bad].origin,
                cfg->handler_keys[bad].key, reason[0] ? reason : "refused");
    else
        ps__set_err(err, errlen, "%s: handler %s: %s", what, mod->name,
                reason[0] ? reason : fallback);
}

int ps_module_open(const ps_config *cfg, ps_module_instance **out, char *err, size_t errlen)
{
    if (cfg == NULL || out == NULL)
        return -EINVAL;
    *out = NULL;
    ps_module_instance *mi = calloc(1, sizeof *mi);
    if (mi == NULL)
        return -ENOMEM;
    const char *what;
    if (cfg->handler_module[0] != '\0') {
        int rc = module_file(cfg->handler_module, mi->file, sizeof mi->file, err, errlen);
        if (rc == 0)
            rc = load(cfg->handler_module, mi->file, &mi->module, &mi->dl, err, errlen);
        if (rc != 0) {
            free(mi);
            return rc;
        }
        what = mi->file;
    } else {
        mi->module = cfg->handler == PS_HANDLER_SLEEP ? &ps_sleep_module : &ps_echo_module;
        what = mi->module->name;
    }

    snprintf(mi->path, sizeof mi->path, "%s", cfg->handler_module);
    size_t n = cfg->handler_nkeys;
    ps_module_key keys[PS_CONFIG_HANDLER_KEYS];
    module_keys(cfg, keys);
    if (mi->module->init == NULL) {
        if (n > 0) {
            ps__set_err(err, errlen, "%s: handler.%s: unknown key (handler %s takes no keys)",
                    cfg->handler_keys[0].origin, cfg->handler_keys[0].key, mi->module->name);
            discard(mi);
            return PS_ECONFIG;
        }
    } else {
        char reason[512] = "";
        size_t bad = (size_t)-1;
        if (mi->module->init(&mi->ud, keys, n, cfg, reason, sizeof reason, &bad) != 0) {
            key_error(cfg, mi->module, what, "init failed", reason, bad, err, errlen);
            discard(mi);
            return PS_ECONFIG;
        }
    }
    *out = mi;
    return 0;
}

const ps_handler *ps_module_handler(const ps_module_instance *m) { return m->module->handler; }
void *ps_module_ud(const ps_module_instance *m) { return m->ud; }
const char *ps_module_name(const ps_module_instance *m) { return m->module->name; }
const char *ps_module_file(const ps_module_instance *m) { return m->file; }

int ps_module_reload(ps_module_instance *m, const ps_config *cfg, char *err, size_t errlen)
{
    if (m == NULL || cfg == NULL)
        return -EINVAL;
    bool same_module = cfg->handler_module[0] != '\0'
                           ? strcmp(cfg->handler_module, m->path) == 0
                           : m->path[0] == '\0' &&
                                 m->module == (cfg->handler == PS_HANDLER_SLEEP ? &ps_sleep_module
                                                                                : &ps_echo_module);
    /* An ABI 1 module's struct ends before `reload`. */
    if (!same_module || m->module->abi < 2 || m->module->reload == NULL)
        return 1;
    ps_module_key keys[PS_CONFIG_HANDLER_KEYS];
    module_keys(cfg, keys);
    char reason[512] = "";
    size_t bad = (size_t)-1;
    if (m->module->reload(m->ud, keys, cfg->handler_nkeys, cfg, reason, sizeof reason, &bad) != 0) {
        key_error(cfg, m->module, m->file[0] ? m->file : m->module->name, "reload failed", reason,
                  bad, err, errlen);
        return PS_ECONFIG;
    }
    return 0;
}

void ps_module_close(ps_module_instance *m)
{
    if (m == NULL)
        return;
    if (m->module != NULL && m->module->fini != NULL)
        m->module->fini(m->ud);
    if (m->dl != NULL)
        dlclose(m->dl);
    free(m);
}
