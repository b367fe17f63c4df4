// Every public header compiles as C++ and links with C linkage.
#include <poolsrv/poolsrv.h>

#include <cstdio>
#include <cstring>

int main()
{
    static_assert(POOLSRV_VERSION_NUMBER >= 100, "a version number");
    ps_config cfg;
    ps_config_defaults(&cfg);
    std::printf("C++: poolsrv %s, %u workers by default\n", ps_version(), cfg.workers);
    return std::strcmp(ps_version(), POOLSRV_VERSION_STRING) == 0 ? 0 : 1;
}
