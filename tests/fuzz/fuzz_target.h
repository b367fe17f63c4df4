#ifndef POOLSRV_FUZZ_TARGET_H
#define POOLSRV_FUZZ_TARGET_H

#include <stddef.h>
#include <stdint.h>

/* The libFuzzer entry point each fuzz_*.c defines; replay_main.c calls it on
 * stored inputs when the target is built without libFuzzer (plain ctest).
 * Returns 0; a violated property abort()s. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with the failed condition, so libFuzzer and ctest both see a crash. */
#define FUZZ_CHECK(cond)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__,         \
                    __LINE__, #cond);                                           \
            abort();                                                            \
        }                                                                       \
    } while (0)

#endif
