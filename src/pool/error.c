/* ps_strerror: text for every code a ps_ function returns, errno's and
 * poolsrv's own (PS_E*), thread-safe. */
#include <string.h>

#include "poolsrv/error.h"

const char *ps_strerror(int code)
{
    switch (code) {
    case 0: return "success";
    case PS_ESHUTDOWN: return "shutting down";
    case PS_EFULL: return "queue full";
    case PS_ELINELONG: return "line too long";
    case PS_ECONFIG: return "invalid configuration";
    case PS_ECLOSED: return "connection closed";
    default: break;
    }
    if (code < 0) {
        /* strerrordesc_np returns a static string: thread-safe, unlike strerror. */
        const char *s = strerrordesc_np(-code);
        if (s)
            return s;
    }
    return "unknown error";
}
