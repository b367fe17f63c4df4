#ifndef POOLSRV_SERVER_CONFIG_DIFF_H
#define POOLSRV_SERVER_CONFIG_DIFF_H

/* Comparing and copying configurations, for a reload (config.c). Private to
 * the library. */

#include <stdbool.h>
#include "poolsrv/config.h"

/* Copies the keys of one section from src to dst. */
void ps__config_copy_section(ps_config *dst, const ps_config *src, const char *section);

/* Whether a's and b's [handler] keys (other than name and module) are the
 * same, in the same order. */
bool ps__config_handler_keys_equal(const ps_config *a, const ps_config *b);

/* Calls changed(key, was, now) for each key whose value differs between a
 * and b ("handler keys" once for the handler's own); returns how many. */
int ps__config_diff(const ps_config *a, const ps_config *b,
                    void (*changed)(const char *key, const char *was, const char *now, void *arg),
                    void *arg);

#endif
