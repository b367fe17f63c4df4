/* The byte buffer (src/server/buf.c): lent memory stays the lender's,
 * growth keeps the bytes, consumption and compaction, writes to a socket,
 * and letting go of lent or empty memory. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "buf.h"

static void assert_holds(const ps__buf *b, const char *text)
{
    assert_int_equal(ps__buf_size(b), strlen(text));
    assert_memory_equal(ps__buf_head(b), text, strlen(text));
}

static void test_append_grows_from_nothing(void **state)
{
    (void)state;
    ps__buf b = {0};
    assert_int_equal(ps__buf_append(&b, "abc", 3, 4), 0);
    assert_int_equal(b.cap, 4);
    assert_false(b.lent);
    /* Doubling from the current size until the bytes fit. */
    assert_int_equal(ps__buf_append(&b, "defghij", 7, 4), 0);
    assert_int_equal(b.cap, 16);
    assert_holds(&b, "abcdefghij");
    assert_int_equal(ps__buf_append(&b, "", 0, 4), 0); /* nothing: no change */
    assert_int_equal(b.cap, 16);
    ps__buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
}

static void test_consume_and_compact(void **state)
{
    (void)state;
    ps__buf b = {0};
    assert_int_equal(ps__buf_append(&b, "0123456789", 10, 16), 0);
    ps__buf_consume(&b, 4);
    assert_holds(&b, "456789");
    assert_int_equal(b.off, 4);
    /* Appending what fits only after the consumed bytes are reclaimed
     * compacts instead of growing. */
    assert_int_equal(ps__buf_append(&b, "abcdefghij", 10, 16), 0);
    assert_int_equal(b.cap, 16);
    assert_int_equal(b.off, 0);
    assert_holds(&b, "456789abcdefghij");
    /* Emptied: offsets start over, memory kept. */
    ps__buf_consume(&b, ps__buf_size(&b));
    assert_int_equal(b.off, 0);
    assert_int_equal(b.len, 0);
    assert_non_null(b.data);
    ps__buf_free(&b);
}

static void test_lent_memory_is_left_when_growing(void **state)
{
    (void)state;
    char mem[8];
    memset(mem, 'x', sizeof mem);
    ps__buf b = {0};
    ps__buf_lend(&b, mem, sizeof mem);
    assert_true(b.lent);
    assert_ptr_equal(b.data, mem);
    assert_int_equal(ps__buf_append(&b, "abcdef", 6, 4), 0);
    assert_ptr_equal(b.data, mem); /* fits: written in place */
    assert_int_equal(ps__buf_append(&b, "ghijkl", 6, 4), 0);
    assert_ptr_not_equal(b.data, mem); /* grew: memory of its own */
    assert_false(b.lent);
    assert_holds(&b, "abcdefghijkl");
    assert_memory_equal(mem, "abcdefxx", 8); /* the lender's bytes untouched since */
    /* A buffer with memory is not lent more. */
    char other[4];
    ps__buf_lend(&b, other, sizeof other);
    assert_ptr_not_equal(b.data, other);
    ps__buf_free(&b);
}

static void test_keep_lets_go_of_lent_memory(void **state)
{
    (void)state;
    char mem[32];
    ps__buf b = {0};
    ps__buf_lend(&b, mem, sizeof mem);
    assert_int_equal(ps__buf_append(&b, "partial line", 12, 4), 0);
    ps__buf_consume(&b, 8);
    assert_int_equal(ps__buf_keep(&b), 0);
    assert_false(b.lent);
    assert_ptr_not_equal(b.data, mem);
    assert_int_equal(b.cap, 4); /* just what it holds */
    assert_holds(&b, "line");
    memset(mem, 0, sizeof mem); /* the lender reuses its memory */
    assert_holds(&b, "line");
    /* Empty: freed, whatever it was. */
    ps__buf_consume(&b, 4);
    assert_int_equal(ps__buf_keep(&b), 0);
    assert_null(b.data);
    ps__buf_lend(&b, mem, sizeof mem);
    assert_int_equal(ps__buf_keep(&b), 0);
    assert_null(b.data);
    assert_false(b.lent);
    /* Own memory holding bytes stays as it is. */
    assert_int_equal(ps__buf_append(&b, "kept", 4, 64), 0);
    char *own = b.data;
    assert_int_equal(ps__buf_keep(&b), 0);
    assert_ptr_equal(b.data, own);
    ps__buf_free(&b);
}

static void test_shed_frees_large_empty_memory(void **state)
{
    (void)state;
    ps__buf b = {0};
    assert_int_equal(ps__buf_append(&b, "x", 1, 1024), 0);
    ps__buf_shed(&b, 512); /* holds a byte: kept */
    assert_non_null(b.data);
    ps__buf_consume(&b, 1);
    ps__buf_shed(&b, 1024); /* not over the bound: kept */
    assert_non_null(b.data);
    ps__buf_shed(&b, 512);
    assert_null(b.data);
    assert_int_equal(b.cap, 0);
    char mem[2048];
    ps__buf_lend(&b, mem, sizeof mem);
    ps__buf_shed(&b, 512); /* lent: not its own to free */
    assert_ptr_equal(b.data, mem);
}

static void test_resize_keeps_the_bytes(void **state)
{
    (void)state;
    ps__buf b = {0};
    assert_int_equal(ps__buf_append(&b, "0123456789", 10, 16), 0);
    ps__buf_consume(&b, 2);
    assert_int_equal(ps__buf_resize(&b, 64), 0);
    assert_int_equal(b.cap, 64);
    assert_int_equal(b.off, 0);
    assert_holds(&b, "23456789");
    /* Never below what it holds. */
    assert_int_equal(ps__buf_resize(&b, 1), 0);
    assert_int_equal(b.cap, 8);
    assert_holds(&b, "23456789");
    ps__buf_free(&b);
}

static void test_write_to_a_socket(void **state)
{
    (void)state;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
    ps__buf b = {0};
    assert_int_equal(ps__buf_write(&b, sv[0]), 0); /* nothing held */
    assert_int_equal(ps__buf_append(&b, "hello\r\n", 7, 16), 0);
    assert_int_equal(ps__buf_write(&b, sv[0]), 7);
    assert_int_equal(ps__buf_size(&b), 0);
    char got[8];
    assert_int_equal(read(sv[1], got, sizeof got), 7);
    assert_memory_equal(got, "hello\r\n", 7);

    /* A peer that reads nothing: what the socket does not take stays. */
    size_t big = 4 << 20;
    char *data = malloc(big);
    assert_non_null(data);
    memset(data, 'z', big);
    assert_int_equal(ps__buf_append(&b, data, big, 16), 0);
    ssize_t w = ps__buf_write(&b, sv[0]);
    assert_true(w > 0 && (size_t)w < big);
    assert_int_equal(ps__buf_size(&b), big - (size_t)w);
    assert_int_equal(ps__buf_write(&b, sv[0]), 0); /* full: 0, not an error */

    /* The peer gone: an error, the bytes still held. */
    close(sv[1]);
    size_t held = ps__buf_size(&b);
    w = ps__buf_write(&b, sv[0]);
    assert_int_equal(w, -EPIPE);
    assert_int_equal(ps__buf_size(&b), held);
    free(data);
    ps__buf_free(&b);
    close(sv[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_grows_from_nothing),
        cmocka_unit_test(test_consume_and_compact),
        cmocka_unit_test(test_lent_memory_is_left_when_growing),
        cmocka_unit_test(test_keep_lets_go_of_lent_memory),
        cmocka_unit_test(test_shed_frees_large_empty_memory),
        cmocka_unit_test(test_resize_keeps_the_bytes),
        cmocka_unit_test(test_write_to_a_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
