/* test_copy.c - the COPY text format helpers of store.h, and the binary
 * COPY encoder of the PostgreSQL store (pg_binary.h). */
#include "testutil.h"

#include "backends/store/pg_binary.h"
#include "esteira/err.h"
#include "esteira/store.h"
#include "esteira/util.h"

/* Splits one encoded row (ending in \n) back into fields: each is decoded in
 * place, NULL for \N.  Returns the field count. */
static int split_row(char *row, size_t len, char **fields, size_t *lens, int max)
{
    assert_true(len > 0);
    assert_int_equal(row[len - 1], '\n');
    int n = 0;
    char *p = row, *end = row + len - 1;
    for (;;) {
        char *tab = memchr(p, '\t', (size_t)(end - p));
        char *fe = tab ? tab : end;
        assert_true(n < max);
        size_t flen = (size_t)(fe - p);
        if (flen == 2 && p[0] == '\\' && p[1] == 'N') {
            fields[n] = NULL;
            lens[n] = 0;
        } else {
            fields[n] = p;
            lens[n] = es_copy_unescape(p, flen);
        }
        n++;
        if (!tab) break;
        p = tab + 1;
    }
    return n;
}

static void test_field_escapes(void **state)
{
    (void)state;
    es_buf b;
    es_buf_init(&b, 0);
    const char *s = "a\tb\nc\rd\\e";
    assert_int_equal(es_copy_field(&b, s, strlen(s), false), ES_OK);
    assert_int_equal(es_copy_null(&b, false), ES_OK);
    assert_int_equal(es_copy_field(&b, "", 0, true), ES_OK);
    assert_string_equal(es_buf_cstr(&b), "a\\tb\\nc\\rd\\\\e\t\\N\t\n");
    es_buf_finish(&b);
}

static void test_roundtrip_tricky(void **state)
{
    (void)state;
    static const char *const vals[] = {
        "plain",
        "",
        "\\N", /* the text \N, not NULL */
        "\\",
        "trailing backslash\\",
        "\t\t",
        "\n",
        "\r\n",
        "ação, café, 日本語, 🚀",
        "mixed\\t literal and \t real tab",
        "\\.",
        "\x01\x02\b\f\v",
        "ends with tab\t",
    };
    enum { N = sizeof vals / sizeof vals[0] };
    es_buf b;
    es_buf_init(&b, 0);
    for (int i = 0; i < N; i++)
        assert_int_equal(es_copy_field(&b, vals[i], strlen(vals[i]), false), ES_OK);
    assert_int_equal(es_copy_null(&b, true), ES_OK);

    /* one row: exactly one newline, at the end */
    assert_ptr_equal(memchr(b.data, '\n', b.len), b.data + b.len - 1);

    char *fields[N + 1];
    size_t lens[N + 1];
    assert_int_equal(split_row(b.data, b.len, fields, lens, N + 1), N + 1);
    for (int i = 0; i < N; i++) {
        assert_non_null(fields[i]);
        assert_int_equal(lens[i], strlen(vals[i]));
        assert_memory_equal(fields[i], vals[i], lens[i]);
    }
    assert_null(fields[N]);
    es_buf_finish(&b);
}

static void test_binary_bytes_roundtrip(void **state)
{
    (void)state;
    char all[255];
    for (int i = 0; i < 255; i++)
        all[i] = (char)(i + 1); /* every byte but NUL */
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_copy_field(&b, all, sizeof all, true), ES_OK);
    char *fields[1];
    size_t lens[1];
    assert_int_equal(split_row(b.data, b.len, fields, lens, 1), 1);
    assert_int_equal(lens[0], sizeof all);
    assert_memory_equal(fields[0], all, sizeof all);
    es_buf_finish(&b);
}

static void test_null_pointer_is_null(void **state)
{
    (void)state;
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_copy_field(&b, NULL, 0, true), ES_OK);
    assert_string_equal(es_buf_cstr(&b), "\\N\n");
    es_buf_finish(&b);
}

/* What PostgreSQL's COPY FROM accepts beyond what es_copy_field writes. */
static void test_unescape_pg_forms(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        const char *out;
        size_t outlen;
    } cases[] = {
        {"a\\bb", "a\bb", 3},
        {"\\f\\v", "\f\v", 2},
        {"\\101\\102", "AB", 2}, /* octal */
        {"\\7x", "\7x", 2},      /* one octal digit */
        {"\\0", "\0", 1},        /* octal zero is a NUL byte */
        {"\\1011", "A1", 2},     /* at most three octal digits */
        {"\\x41\\x4a", "AJ", 2}, /* hex */
        {"\\x4", "\4", 1},       /* one hex digit */
        {"\\x414", "A4", 2},     /* at most two hex digits */
        {"\\xz", "xz", 2},       /* \x without a digit is x */
        {"\\q\\'", "q'", 2},     /* anything else stands for itself */
        {"abc\\", "abc\\", 4},   /* a lone trailing backslash is kept */
        {"no escapes", "no escapes", 10},
        {"", "", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        size_t n = strlen(cases[i].in);
        memcpy(buf, cases[i].in, n + 1);
        size_t got = es_copy_unescape(buf, n);
        assert_int_equal(got, cases[i].outlen);
        assert_memory_equal(buf, cases[i].out, got);
    }
}

/* A bounded buffer refuses a field that does not fit whole, leaving what is
 * there intact, so a batcher can flush and write the field again. */
static void test_bounded_is_atomic(void **state)
{
    (void)state;
    es_buf b;
    es_buf_init(&b, 12);
    assert_int_equal(es_copy_field(&b, "abcd", 4, false), ES_OK); /* "abcd\t" = 5 */
    /* 5 raw bytes with the separator would fit in the 7 left; escaped they are 8 */
    assert_int_equal(es_copy_field(&b, "x\ty\nz", 5, true), ES_ELIMIT);
    assert_int_equal(b.len, 5);
    assert_string_equal(es_buf_cstr(&b), "abcd\t");
    assert_int_equal(es_copy_null(&b, false), ES_OK); /* 8 */
    assert_int_equal(es_copy_null(&b, true), ES_OK);  /* 11 */
    assert_int_equal(es_copy_null(&b, true), ES_ELIMIT);
    assert_int_equal(es_copy_field(&b, "", 0, true), ES_OK); /* 12: exactly full */
    assert_int_equal(es_copy_field(&b, "", 0, true), ES_ELIMIT);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "abcd\t\\N\t\\N\n\n"); /* still NUL-terminated */
    es_buf_finish(&b);
}

static int collect(void *arg, const char *data, size_t len)
{
    return es_buf_append(arg, data, len);
}

/* The stream, byte for byte: signature, flags, extension length, then per
 * row a field count and length-prefixed big-endian values, then -1. */
static void test_binary_stream(void **state)
{
    (void)state;
    const es_copy_type types[] = {ES_COPY_INT4, ES_COPY_DATE, ES_COPY_NUMERIC, ES_COPY_TEXT};
    const char *rows = "-2\t2000-01-02\t-12345.60\ta\\tb\n7\t1999-12-31\t0.00\t\\N";
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_pgbin_encode(types, 4, rows, strlen(rows), collect, &b, NULL), ES_OK);
    static const unsigned char want[] = {
        'P', 'G', 'C', 'O', 'P', 'Y', '\n', 0xff, '\r', '\n', 0, /* signature */
        0, 0, 0, 0, 0, 0, 0, 0,                                  /* flags, extension */
        0, 4,                                                    /* row 1: 4 fields */
        0, 0, 0, 4, 0xff, 0xff, 0xff, 0xfe,                      /* -2 */
        0, 0, 0, 4, 0, 0, 0, 1,                                  /* 2000-01-02: day 1 */
        /* -12345.60 = -(1 * 10000^1 + 2345 + 6000 * 10000^-1), scale 2 */
        0, 0, 0, 14, 0, 3, 0, 1, 0x40, 0, 0, 2, 0, 1, 0x09, 0x29, 0x17, 0x70, 0, 0, 0, 3, 'a', '\t',
        'b',                                /* the escape undone */
        0, 4,                               /* row 2 (no final newline) */
        0, 0, 0, 4, 0, 0, 0, 7,             /* 7 */
        0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff, /* 1999-12-31: day -1 */
        0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 2, /* zero: no digits, scale 2 */
        0xff, 0xff, 0xff, 0xff,             /* NULL */
        0xff, 0xff,                         /* the end */
    };
    assert_int_equal(b.len, sizeof want);
    assert_memory_equal(b.data, want, sizeof want);
    es_buf_finish(&b);
}

/* Only the forms the normalisers write have a binary form; the row that has
 * none is named, and a check (no sink) writes nothing. */
static void test_binary_refusals(void **state)
{
    (void)state;
    static const struct {
        es_copy_type type;
        const char *value;
    } bad[] = {
        {ES_COPY_INT4, "2147483648"},
        {ES_COPY_INT4, "1.0"},
        {ES_COPY_INT8, "99999999999999999999"},
        {ES_COPY_INT8, ""},
        {ES_COPY_NUMERIC, "1e5"},
        {ES_COPY_NUMERIC, "."},
        {ES_COPY_NUMERIC, "NaN"},
        {ES_COPY_BOOL, "yes"},
        {ES_COPY_DATE, "2023-02-30"},
        {ES_COPY_DATE, "0000-01-01"},
        {ES_COPY_DATE, "2023-1-01"},
        {ES_COPY_TIMESTAMPTZ, "2023-01-01T00:00:00+02:00"},
        {ES_COPY_TIMESTAMPTZ, "2023-01-01T24:00:00Z"},
        {ES_COPY_TIMESTAMPTZ, "2023-01-01T00:00:00.1234567Z"},
        {ES_COPY_UUID, "{8b9d2434-e465-4150-bd9c-66b3ad3c2d6d}"},
        {ES_COPY_UUID, "8b9d2434-e465-4150-bd9c-66b3ad3c2d6g"},
    };
    char row[128];
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        const es_copy_type types[] = {ES_COPY_TEXT, bad[i].type};
        int n = snprintf(row, sizeof row, "ok\t\\N\nok\t%s\n", bad[i].value);
        size_t at = 0;
        int rc = es_pgbin_encode(types, 2, row, (size_t)n, NULL, NULL, &at);
        if (rc != ES_EINVAL || at != 2)
            fail_msg("%s accepted (rc %d, row %zu)", bad[i].value, rc, at);
    }
    /* too few and too many fields */
    const es_copy_type two[] = {ES_COPY_TEXT, ES_COPY_TEXT};
    size_t at = 0;
    assert_int_equal(es_pgbin_encode(two, 2, "a\tb\nc\n", 6, NULL, NULL, &at), ES_EINVAL);
    assert_int_equal(at, 2);
    assert_int_equal(es_pgbin_encode(two, 2, "a\tb\tc\n", 6, NULL, NULL, &at), ES_EINVAL);
    assert_int_equal(at, 1);
    assert_int_equal(es_pgbin_encode(two, 2, "a\tb\n", 4, NULL, NULL, &at), ES_OK);
    assert_int_equal(at, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_field_escapes),          cmocka_unit_test(test_roundtrip_tricky),
        cmocka_unit_test(test_binary_bytes_roundtrip), cmocka_unit_test(test_null_pointer_is_null),
        cmocka_unit_test(test_unescape_pg_forms),      cmocka_unit_test(test_bounded_is_atomic),
        cmocka_unit_test(test_binary_stream),          cmocka_unit_test(test_binary_refusals),
    };
    return cmocka_run_group_tests_name("copy", tests, NULL, NULL);
}
