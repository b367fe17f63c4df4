/* ps_version: the library's version, as built. */
#include "poolsrv/version.h"

const char *ps_version(void)
{
    return POOLSRV_VERSION_BUILT;
}
