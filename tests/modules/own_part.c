/* A module linked with the library that takes one object of it only
 * (error.c, for ps_strerror): no ps_version of its own, so the loader
 * finds the copy in the module's symbol table. */
#include <poolsrv/error.h>
#include <poolsrv/module.h>

static int own_part_line(ps_conn *conn, const ps_line *line, void *ud)
{
    (void)conn;
    (void)line;
    (void)ud;
    /* Never loaded: it only has to take error.c in. */
    return ps_strerror(PS_ECLOSED)[0] != '\0' ? PS_CLOSE : PS_CONTINUE;
}

static const ps_handler own_part = {.on_line = own_part_line};

PS_MODULE_DEFINE("own_part", &own_part, NULL, NULL);
