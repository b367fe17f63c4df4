/* A module as built against ABI 1 headers (before ps_module had `reload`):
 * its struct ends after fini. poolsrv loads it and never reads past it. */
#include <poolsrv/module.h>

typedef struct abi1_module {
    unsigned abi;
    const char *name;
    const ps_handler *handler;
    void *init;
    void *fini;
} abi1_module;

static int abi1_open(ps_conn *conn, void *ud)
{
    (void)ud;
    return ps_conn_send(conn, "abi 1 here\r\n", 12) < 0 ? PS_CLOSE : PS_CONTINUE;
}

static const ps_handler abi1_handler = {.on_open = abi1_open};

__attribute__((visibility("default"))) const abi1_module poolsrv_module = {
    1, "abi1", &abi1_handler, NULL, NULL};
