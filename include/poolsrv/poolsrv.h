#ifndef POOLSRV_POOLSRV_H
#define POOLSRV_POOLSRV_H

/* Everything of poolsrv's public API in one include. */

#include "poolsrv/config.h"
#include "poolsrv/error.h"
#include "poolsrv/future.h"
#include "poolsrv/lineframe.h"
#include "poolsrv/log.h"
#include "poolsrv/module.h"
#include "poolsrv/pool.h"
#include "poolsrv/server.h"
#include "poolsrv/version.h"

#endif
