#ifndef POOLSRV_SERVER_MODULE_COPY_H
#define POOLSRV_SERVER_MODULE_COPY_H

/* Finding a handler module that carries a copy of the library of its own
 * (module_copy.c). Private to the library. */

#include <stddef.h>

/* Whether the module dlopen loaded from path as dl carries its own copy of
 * poolsrv: a public ps_ symbol that the module, or a library it needs (a
 * libpoolsrv.so of its own), defines at another address than the one
 * the process resolves. Returns 1 with that symbol's name in sym, else 0. */
int ps__module_own_copy(void *dl, const char *path, char *sym, size_t symlen);

#endif
