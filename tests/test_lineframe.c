/* The line framer: a pure function, tested without a socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "poolsrv/error.h"
#include "poolsrv/lineframe.h"

#define S(lit) (lit), (sizeof(lit) - 1)

static void test_lf_line(void **state)
{
    (void)state;
    ps_line l;
    assert_int_equal(ps_lineframe_next(S("hello\n"), 100, &l), 6);
    assert_int_equal(l.len, 5);
    assert_int_equal(l.eol_len, 1);
    assert_memory_equal(l.data, "hello", 5);
}

static void test_crlf_line(void **state)
{
    (void)state;
    ps_line l;
    assert_int_equal(ps_lineframe_next(S("hello\r\n"), 100, &l), 7);
    assert_int_equal(l.len, 5);
    assert_int_equal(l.eol_len, 2);
    assert_memory_equal(l.data + l.len, "\r\n", 2);
}

static void test_empty_lines(void **state)
{
    (void)state;
    ps_line l;
    assert_int_equal(ps_lineframe_next(S("\n"), 100, &l), 1);
    assert_int_equal(l.len, 0);
    assert_int_equal(ps_lineframe_next(S("\r\n"), 100, &l), 2);
    assert_int_equal(l.len, 0);
    assert_int_equal(l.eol_len, 2);
}

static void test_partial_needs_more(void **state)
{
    (void)state;
    ps_line l = {0};
    assert_int_equal(ps_lineframe_next(S(""), 100, &l), 0);
    assert_int_equal(ps_lineframe_next(S("hel"), 100, &l), 0);
    assert_int_equal(ps_lineframe_next(S("hello\r"), 100, &l), 0);
    assert_null(l.data); /* untouched when nothing is complete */
}

static void test_lone_cr_is_data(void **state)
{
    (void)state;
    ps_line l;
    assert_int_equal(ps_lineframe_next(S("a\rb\n"), 100, &l), 4);
    assert_int_equal(l.len, 3);
    assert_int_equal(l.eol_len, 1);
    assert_memory_equal(l.data, "a\rb", 3);
}

static void test_several_lines_in_one_buffer(void **state)
{
    (void)state;
    const char buf[] = "one\ntwo\r\n\nthree\r\npartial";
    size_t len = sizeof buf - 1, off = 0;
    const char *want[] = {"one", "two", "", "three"};
    const size_t want_eol[] = {1, 2, 1, 2};
    for (int i = 0; i < 4; i++) {
        ps_line l;
        ssize_t n = ps_lineframe_next(buf + off, len - off, 100, &l);
        assert_true(n > 0);
        assert_int_equal(l.len, strlen(want[i]));
        assert_memory_equal(l.data, want[i], l.len);
        assert_int_equal(l.eol_len, want_eol[i]);
        off += (size_t)n;
    }
    ps_line l;
    assert_int_equal(ps_lineframe_next(buf + off, len - off, 100, &l), 0);
    assert_string_equal(buf + off, "partial");
}

static void test_nul_bytes_are_data(void **state)
{
    (void)state;
    const char buf[] = {'a', '\0', 'b', '\0', '\r', '\n'};
    ps_line l;
    assert_int_equal(ps_lineframe_next(buf, sizeof buf, 100, &l), 6);
    assert_int_equal(l.len, 4);
    assert_memory_equal(l.data, buf, 4);
}

/* Builds n bytes of 'x' followed by `eol`. */
static char *make_line(size_t n, const char *eol, size_t *len)
{
    size_t e = strlen(eol);
    char *p = malloc(n + e + 1);
    assert_non_null(p);
    memset(p, 'x', n);
    memcpy(p + n, eol, e + 1);
    *len = n + e;
    return p;
}

static void test_exactly_max_line(void **state)
{
    (void)state;
    const size_t max = 64;
    const char *eols[] = {"\n", "\r\n"};
    for (int i = 0; i < 2; i++) {
        size_t len;
        char *p = make_line(max, eols[i], &len);
        ps_line l;
        assert_int_equal(ps_lineframe_next(p, len, max, &l), (ssize_t)len);
        assert_int_equal(l.len, max);
        /* Every prefix short of the newline is "need more", never an error. */
        for (size_t k = 0; k < len; k++)
            assert_int_equal(ps_lineframe_next(p, k, max, &l), 0);
        free(p);
    }
}

static void test_max_line_plus_one(void **state)
{
    (void)state;
    const size_t max = 64;
    const char *eols[] = {"\n", "\r\n", ""};
    for (int i = 0; i < 3; i++) {
        size_t len;
        char *p = make_line(max + 1, eols[i], &len);
        ps_line l;
        assert_int_equal(ps_lineframe_next(p, len, max, &l), PS_ELINELONG);
        free(p);
    }
}

static void test_too_long_detected_without_newline(void **state)
{
    (void)state;
    /* A huge line with no newline is refused once max_line is passed, so
     * a caller never has to buffer more than max_line + 2 bytes. */
    size_t len;
    char *p = make_line(100000, "", &len);
    ps_line l;
    assert_int_equal(ps_lineframe_next(p, 66, 64, &l), PS_ELINELONG);
    assert_int_equal(ps_lineframe_next(p, len, 64, &l), PS_ELINELONG);
    /* max + 1 bytes ending in '\r' may still be a max-length CRLF line. */
    p[64] = '\r';
    assert_int_equal(ps_lineframe_next(p, 65, 64, &l), 0);
    free(p);
}

static void test_later_long_line_does_not_hide_short_one(void **state)
{
    (void)state;
    size_t len;
    char *p = make_line(1000, "\n", &len);
    memcpy(p, "hi\n", 3);
    ps_line l;
    assert_int_equal(ps_lineframe_next(p, len, 64, &l), 3);
    assert_int_equal(l.len, 2);
    assert_int_equal(ps_lineframe_next(p + 3, len - 3, 64, &l), PS_ELINELONG);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lf_line),
        cmocka_unit_test(test_crlf_line),
        cmocka_unit_test(test_empty_lines),
        cmocka_unit_test(test_partial_needs_more),
        cmocka_unit_test(test_lone_cr_is_data),
        cmocka_unit_test(test_several_lines_in_one_buffer),
        cmocka_unit_test(test_nul_bytes_are_data),
        cmocka_unit_test(test_exactly_max_line),
        cmocka_unit_test(test_max_line_plus_one),
        cmocka_unit_test(test_too_long_detected_without_newline),
        cmocka_unit_test(test_later_long_line_does_not_hide_short_one),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
