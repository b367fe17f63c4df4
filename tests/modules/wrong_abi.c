/* A module built for another module ABI: poolsrv must refuse to load it. */
#include <poolsrv/module.h>

static const ps_handler none = {0};

__attribute__((visibility("default"))) const ps_module poolsrv_module = {
    PS_MODULE_ABI + 1, "wrong_abi", &none, NULL, NULL, NULL};
