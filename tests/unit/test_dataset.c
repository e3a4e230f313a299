/* test_dataset.c - typed datasets: every column type's accept/reject table,
 * the built-in debts dataset against the kinds of bad rows the debts
 * generator writes, header mapping, definitions from JSON, DDL for both
 * dialects, a real load through the store (the embedded SQLite always, and
 * each URL of ESTEIRA_TEST_STORE_URLS: PostgreSQL when named), and a printed
 * throughput of es_value_normalize on a million generated debts rows
 * (ESTEIRA_TEST_DATASET_ROWS changes the count). */
#include "testutil.h"

#include "esteira/conf.h"
#include "esteira/dataset.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

/* ---------------------------------------------------------------- helpers */

static es_column column(es_coltype t)
{
    es_column c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "v");
    snprintf(c.header, sizeof c.header, "v");
    c.type = t;
    c.trim = true;
    return c;
}

static es_column decimal(int p, int s)
{
    es_column c = column(ES_COL_DECIMAL);
    c.precision = p;
    c.scale = s;
    return c;
}

/* in (of length len) normalises to want (COPY-escaped) */
static void ok_n(const es_column *c, const char *in, size_t len, const char *want, int line)
{
    es_buf b;
    es_buf_init(&b, 0);
    const char *problem = NULL;
    int rc = es_value_normalize(c, in, len, &b, &problem);
    if (rc != ES_OK)
        fail_msg("line %d: %s '%.*s' rejected: %s", line, es_coltype_name(c->type), (int)len, in,
                 problem ? problem : es_strerror(rc));
    if (strcmp(es_buf_cstr(&b), want) != 0)
        fail_msg("line %d: %s '%.*s' -> '%s', want '%s'", line, es_coltype_name(c->type), (int)len,
                 in, es_buf_cstr(&b), want);
    assert_int_equal(b.len, strlen(want));
    es_buf_finish(&b);
}

static void bad_n(const es_column *c, const char *in, size_t len, const char *why, int line)
{
    es_buf b;
    es_buf_init(&b, 0);
    es_buf_puts(&b, "kept");
    const char *problem = NULL;
    int rc = es_value_normalize(c, in, len, &b, &problem);
    if (rc != ES_EINVAL)
        fail_msg("line %d: %s '%.*s' accepted as '%s'", line, es_coltype_name(c->type), (int)len,
                 in, es_buf_cstr(&b));
    if (!problem || strcmp(problem, why) != 0)
        fail_msg("line %d: %s '%.*s': problem '%s', want '%s'", line, es_coltype_name(c->type),
                 (int)len, in, problem ? problem : "(none)", why);
    /* a rejected value leaves the buffer as it was */
    assert_string_equal(es_buf_cstr(&b), "kept");
    es_buf_finish(&b);
}

#define OK(c, in, want) ok_n((c), (in), strlen(in), (want), __LINE__)
#define BAD(c, in, why) bad_n((c), (in), strlen(in), (why), __LINE__)

/* ---------------------------------------------------------------- text */

static void test_text(void **state)
{
    (void)state;
    es_column c = column(ES_COL_TEXT);
    OK(&c, "Elijah Santos", "Elijah Santos");
    OK(&c, "  Conceição Araújo\t", "Conceição Araújo");
    OK(&c, "emoji \xF0\x9F\x98\x80 ok", "emoji \xF0\x9F\x98\x80 ok");
    OK(&c, "\xEF\xBF\xBF\xF4\x8F\xBF\xBF", "\xEF\xBF\xBF\xF4\x8F\xBF\xBF"); /* U+FFFF, U+10FFFF */
    OK(&c, "", "\\N");
    OK(&c, "   \t ", "\\N");
    ok_n(&c, NULL, 0, "\\N", __LINE__);
    c.required = true;
    BAD(&c, "", "required");
    BAD(&c, " \t ", "required");
    c.trim = false;
    OK(&c, "  a b  ", "  a b  ");
    OK(&c, " ", " "); /* untrimmed, a space is a value */
    c.trim = true;

    /* invalid UTF-8: overlong forms, surrogates, past U+10FFFF, truncated */
    static const char *const invalid[] = {
        "\xC0\xAF",
        "\xC1\xBF",
        "\xE0\x80\xAF",
        "\xE0\x9F\xBF",
        "\xF0\x80\x80\xAF",
        "\xF0\x8F\xBF\xBF",
        "\xED\xA0\x80",
        "\xED\xBF\xBF",
        "\xF4\x90\x80\x80",
        "\xF5\x80\x80\x80",
        "\xFF",
        "\xFE",
        "\x80",
        "\xBF",
        "\xC3",
        "\xE2\x82",
        "\xF0\x9F\x98",
        "a\xC3(b",
        "abc\xE2\x82(",
        "\xF0\x9F\x98\x80\x80",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(invalid); i++)
        BAD(&c, invalid[i], "not valid UTF-8");
    /* a bad byte anywhere in a long ASCII run (the 8-byte fast path) */
    for (size_t at = 0; at < 40; at++) {
        char s[41];
        memset(s, 'x', 40);
        s[40] = '\0';
        s[at] = (char)0xC3;
        bad_n(&c, s, 40, "not valid UTF-8", __LINE__);
        s[at] = '\0';
        bad_n(&c, s, 40, "contains a NUL byte", __LINE__);
        s[at] = 'y';
        ok_n(&c, s, 40, s, __LINE__);
    }

    /* max_len counts characters, not bytes */
    c.max_len = 4;
    OK(&c, "çããé", "çããé");
    OK(&c, "  abcd  ", "abcd");
    BAD(&c, "çããéx", "too long");
    BAD(&c, "abcde", "too long");
}

static void test_copy_escaping(void **state)
{
    (void)state;
    es_column c = column(ES_COL_TEXT);
    c.trim = false;
    /* tabs, newlines, carriage returns and backslashes are escaped; the
     * separator is the caller's */
    OK(&c, "a\tb\nc\\d\re", "a\\tb\\nc\\\\d\\re");
    OK(&c, "\\N", "\\\\N"); /* the text \N is not NULL */
    es_buf b;
    es_buf_init(&b, 0);
    const char *problem;
    es_buf_puts(&b, "x\t");
    assert_int_equal(es_value_normalize(&c, "p\tq", 3, &b, &problem), ES_OK);
    assert_int_equal(b.len, 6);
    assert_string_equal(es_buf_cstr(&b), "x\tp\\tq");
    /* and the escaped field decodes back to the value */
    char *dec = strdup(es_buf_cstr(&b) + 2);
    size_t n = es_copy_unescape(dec, strlen(dec));
    assert_int_equal(n, 3);
    assert_memory_equal(dec, "p\tq", 3);
    free(dec);
    es_buf_finish(&b);

    /* a full bounded buffer: ES_ELIMIT, nothing appended */
    es_buf_init(&b, 8);
    es_buf_puts(&b, "1234567");
    assert_int_equal(es_value_normalize(&c, "abc", 3, &b, &problem), ES_ELIMIT);
    assert_string_equal(es_buf_cstr(&b), "1234567");
    es_column d = decimal(14, 2);
    assert_int_equal(es_value_normalize(&d, "7811", 4, &b, &problem), ES_ELIMIT);
    assert_string_equal(es_buf_cstr(&b), "1234567");
    es_buf_finish(&b);
}

/* ---------------------------------------------------------------- numbers */

static void test_integer(void **state)
{
    (void)state;
    es_column c = column(ES_COL_INTEGER);
    OK(&c, "42", "42");
    OK(&c, "+42", "42");
    OK(&c, " -17 ", "-17");
    OK(&c, "007", "7");
    OK(&c, "-0", "0");
    OK(&c, "0000", "0");
    OK(&c, "2147483647", "2147483647");
    OK(&c, "-2147483648", "-2147483648");
    OK(&c, "000000000002147483647", "2147483647");
    BAD(&c, "2147483648", "out of range");
    BAD(&c, "-2147483649", "out of range");
    BAD(&c, "99999999999999999999999", "out of range");
    BAD(&c, "99999999999999999999x", "not an integer");
    static const char *const not_int[] = {"-",   "+",   "1.0", "1e3", "12a",  "0x10",
                                          "--1", "+-1", "1 2", "١٢",  "1,000"};
    for (size_t i = 0; i < ES_ARRAY_LEN(not_int); i++)
        BAD(&c, not_int[i], "not an integer");
    c.nonneg = true;
    BAD(&c, "-1", "must not be negative");
    OK(&c, "-0", "0");
    OK(&c, "5", "5");

    es_column b = column(ES_COL_BIGINT);
    OK(&b, "9223372036854775807", "9223372036854775807");
    OK(&b, "-9223372036854775808", "-9223372036854775808");
    OK(&b, "+00012345678901", "12345678901");
    BAD(&b, "9223372036854775808", "out of range");
    BAD(&b, "-9223372036854775809", "out of range");
    BAD(&b, "18446744073709551616", "out of range");
    BAD(&b, "1.5", "not an integer");
}

static void test_decimal(void **state)
{
    (void)state;
    es_column c = decimal(14, 2);
    /* the debts amounts: integers and two-decimal forms, padded to the scale */
    OK(&c, "7811", "7811.00");
    OK(&c, "1000000.00", "1000000.00");
    OK(&c, "1000000.5", "1000000.50");
    OK(&c, "1234.56", "1234.56");
    OK(&c, " 7811 ", "7811.00");
    OK(&c, ".5", "0.50");
    OK(&c, "0", "0.00");
    OK(&c, "-0.00", "0.00");
    OK(&c, "+3.1", "3.10");
    OK(&c, "00012.30", "12.30");
    OK(&c, "-12.3", "-12.30");
    OK(&c, "1.230", "1.23"); /* extra zeros only: nothing is rounded */
    OK(&c, "1.0000000", "1.00");
    OK(&c, "999999999999.99", "999999999999.99"); /* 12 integer digits: p - s */
    OK(&c, "000999999999999.99", "999999999999.99");
    BAD(&c, "1000000000000", "too many digits");
    BAD(&c, "1000000000000.00", "too many digits");
    BAD(&c, "1.234", "too many decimal places");
    BAD(&c, "0.001", "too many decimal places");
    static const char *const not_dec[] = {"1.",     ".",   "-",     "+",   "-.",    "1,00", "1e5",
                                          "12.3.4", "--1", "1 000", "0x1", "R$ 10", "10-",  "1.2a"};
    for (size_t i = 0; i < ES_ARRAY_LEN(not_dec); i++)
        BAD(&c, not_dec[i], "not a decimal number");
    c.nonneg = true;
    BAD(&c, "-100.00", "must not be negative");
    BAD(&c, "-0.01", "must not be negative");
    OK(&c, "-0", "0.00");
    OK(&c, "-0.000", "0.00");

    es_column z = decimal(5, 0);
    OK(&z, "12345", "12345");
    OK(&z, "1.0", "1");
    OK(&z, "-1", "-1");
    BAD(&z, "123456", "too many digits");
    BAD(&z, "1.5", "too many decimal places");

    es_column w = decimal(38, 10);
    OK(&w, "1234567890123456789012345678", "1234567890123456789012345678.0000000000");
    OK(&w, "-0.0000000001", "-0.0000000001");
    BAD(&w, "12345678901234567890123456789", "too many digits");

    es_column f = decimal(3, 3);
    OK(&f, "0.123", "0.123");
    OK(&f, ".5", "0.500");
    BAD(&f, "1.5", "too many digits");
}

/* ---------------------------------------------------------------- others */

static void test_boolean(void **state)
{
    (void)state;
    es_column c = column(ES_COL_BOOLEAN);
    static const char *const yes[] = {"true", "TRUE", "True", "t", "T", "yes", "YES", "1", " Yes "};
    static const char *const no[] = {"false", "FALSE", "f", "F", "no", "No", "0"};
    for (size_t i = 0; i < ES_ARRAY_LEN(yes); i++)
        OK(&c, yes[i], "true");
    for (size_t i = 0; i < ES_ARRAY_LEN(no); i++)
        OK(&c, no[i], "false");
    static const char *const bad[] = {"y",     "n",  "2",   "-1", "tru",
                                      "truee", "on", "off", "01", "nope"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not a boolean");
    OK(&c, "", "\\N");
}

static void test_date(void **state)
{
    (void)state;
    es_column c = column(ES_COL_DATE);
    OK(&c, "2024-02-29", "2024-02-29"); /* leap year */
    OK(&c, "2000-02-29", "2000-02-29"); /* divisible by 400 */
    OK(&c, "2023-12-31", "2023-12-31");
    OK(&c, "0001-01-01", "0001-01-01");
    OK(&c, "9999-12-31", "9999-12-31");
    OK(&c, " 2022-01-01\t", "2022-01-01");
    static const char *const bad[] = {
        "2023-02-30", /* the generator's bad date */
        "2023-02-29", "1900-02-29", "2100-02-29", "2023-04-31", "2023-06-31",
        "2023-13-01", "2023-00-10", "2023-01-00", "2023-01-32", "0000-01-01",
        "2023-1-01",  "2023/01/01", "20230101",   "01-02-2023", "2023-01-01T00:00:00Z",
        "2023-01-0a", "+023-01-01", "2023-01-01x"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not a valid date");
    c.required = true;
    BAD(&c, "", "required");
}

static void test_timestamp(void **state)
{
    (void)state;
    es_column c = column(ES_COL_TIMESTAMP);
    OK(&c, "2024-01-01T12:00:00Z", "2024-01-01T12:00:00.000Z");
    OK(&c, "2024-01-01T12:00:00+03:00", "2024-01-01T09:00:00.000Z");
    OK(&c, "2024-01-01T01:30:00-03:00", "2024-01-01T04:30:00.000Z");
    OK(&c, "2024-01-01T12:00:00+0530", "2024-01-01T06:30:00.000Z");
    OK(&c, "2024-03-01T01:00:00+02:00", "2024-02-29T23:00:00.000Z"); /* back over a leap day */
    OK(&c, "2023-12-31T22:00:00-03:00", "2024-01-01T01:00:00.000Z"); /* into a new year */
    OK(&c, "2024-01-01 12:00:00.123456Z", "2024-01-01T12:00:00.123Z");
    OK(&c, "2024-01-01t12:00:00.5z", "2024-01-01T12:00:00.500Z");
    OK(&c, "2024-01-01T12:00Z", "2024-01-01T12:00:00.000Z");
    OK(&c, "1969-12-31T23:59:59.5Z", "1969-12-31T23:59:59.500Z");
    OK(&c, "1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000Z");
    OK(&c, "0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000Z");
    OK(&c, "1600-02-29T10:00:00Z", "1600-02-29T10:00:00.000Z");
    OK(&c, "9999-12-31T23:59:59.999Z", "9999-12-31T23:59:59.999Z");
    OK(&c, "2024-01-01T12:00:00.000Z", "2024-01-01T12:00:00.000Z");
    BAD(&c, "9999-12-31T23:59:59-01:00", "timestamp out of range");
    BAD(&c, "0001-01-01T00:30:00+01:00", "timestamp out of range");
    static const char *const bad[] = {"2024-01-01",
                                      "2024-01-01T12:00:00",
                                      "2023-02-29T00:00:00Z",
                                      "2024-01-01T24:00:00Z",
                                      "2024-01-01T12:60:00Z",
                                      "2024-01-01T12:00:00+24:00",
                                      "yesterday",
                                      "1704110400",
                                      "2024-01-01T12:00:00Zjunk",
                                      "2024-01-01T12:00:00.Z"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not a valid timestamp");
    char nul[] = "2024-01-01T12:00:00Z\0junk";
    bad_n(&c, nul, sizeof nul - 1, "not a valid timestamp", __LINE__);
    char lng[80];
    memset(lng, '0', sizeof lng);
    memcpy(lng, "2024-01-01T12:00:00.", 20);
    lng[78] = 'Z';
    lng[79] = '\0';
    BAD(&c, lng, "not a valid timestamp");
}

static void test_uuid(void **state)
{
    (void)state;
    es_column c = column(ES_COL_UUID);
    OK(&c, "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21", "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21");
    OK(&c, "0B4D0F4E-9D0F-4A41-8B0E-2B0F3A6C6F21", "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21");
    /* the generator's trailing space after the debtId */
    OK(&c, "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21 ", "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21");
    static const char *const bad[] = {
        "not-a-uuid",
        "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f2",
        "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f211",
        "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6g21",
        "0b4d0f4e9d0f-4a41-8b0e-2b0f3a6c6f21-",
        "{0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21}",
        "0b4d0f4e9d0f4a418b0e2b0f3a6c6f21",
        "0b4d0f4e-9d0f-4a41-8b0e_2b0f3a6c6f21",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not a valid UUID");
    char nul[] = "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f2\0";
    bad_n(&c, nul, 36, "not a valid UUID", __LINE__);
    c.trim = false;
    BAD(&c, "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21 ", "not a valid UUID");
}

static void test_email(void **state)
{
    (void)state;
    es_column c = column(ES_COL_EMAIL);
    OK(&c, "elijah.santos12@example.com", "elijah.santos12@example.com");
    OK(&c, "Ann.Lee+Tag@Example.COM", "Ann.Lee+Tag@example.com"); /* only the domain folds */
    OK(&c, "  joao@kanastra.com.br ", "joao@kanastra.com.br");
    OK(&c, "conceição@exämple.com.br", "conceição@exämple.com.br");
    OK(&c, "a@b-c.io", "a@b-c.io");
    OK(&c, "o'brien!#$%&*/=?^_`{|}~@x.org", "o'brien!#$%&*/=?^_`{|}~@x.org");
    static const char *const bad[] = {
        "no-at-sign.example.com", /* the generator's at-less e-mail */
        "@example.com",
        "a@",
        "a@b",
        "a@b@c.com",
        "a b@c.com",
        "a@c .com",
        "a@.com",
        "a@com.",
        "a@b..com",
        "Ann <a@b.com>",
        "a,b@c.com",
        "a;b@c.com",
        "\"a\"@b.com",
        "a\x01@b.com",
        "a@b.com\x7f",
        "a\xC3@b.com",
        "a@b_c.com",
        "a@[127.0.0.1]",
        "a@b.c/d",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not a valid e-mail address");
    char addr[300];
    memset(addr, 'a', sizeof addr);
    memcpy(addr + 254 - 6, "@x.org", 7); /* 254 bytes */
    OK(&c, addr, addr);
    memset(addr, 'a', sizeof addr);
    memcpy(addr + 255 - 6, "@x.org", 7);
    BAD(&c, addr, "e-mail address too long");
    c.required = true;
    BAD(&c, "", "required"); /* the generator's empty e-mail */
}

static void test_json(void **state)
{
    (void)state;
    es_column c = column(ES_COL_JSON);
    OK(&c, "{\"a\": 1, \"b\": [1, 2 ,3],\n \"c\": {\"d\" : null}}",
       "{\"a\":1,\"b\":[1,2,3],\"c\":{\"d\":null}}");
    OK(&c, " \"x y\" ", "\"x y\"");
    OK(&c, "0.1", "0.1"); /* numbers keep their spelling */
    OK(&c, "[1.10, 1e3, -0]", "[1.10,1e3,-0]");
    OK(&c, "true", "true");
    OK(&c, "\"caf\xC3\xA9\"", "\"caf\xC3\xA9\"");
    /* backslashes inside strings are doubled for COPY, and an escaped quote
     * does not end the string */
    OK(&c, "{\"k\": \"a\\\" b\\\\\"}", "{\"k\":\"a\\\\\" b\\\\\\\\\"}");
    OK(&c, "[\"tab\\t\"]", "[\"tab\\\\t\"]");
    static const char *const bad[] = {"{",           "[1,]", "{'a':1}",          "\"\\u0000\"",
                                      "{\"a\":1} x", "nul",  "\"caf\xC3\"",      "\"\\ud800\"",
                                      "[\"a\tb\"]",  "01",   "{\"a\":1,\"a\":2}"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        BAD(&c, bad[i], "not valid JSON");
    char deep[200];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    bad_n(&c, deep, 200, "JSON nested too deeply", __LINE__);
    char depth64[129];
    memcpy(depth64, deep + 36, 128); /* 64 levels: the bound */
    depth64[128] = '\0';
    ok_n(&c, depth64, 128, depth64, __LINE__);
}

/* ---------------------------------------------------------------- debts */

static const char *const debts_headers[] = {"name",       "governmentId", "email",
                                            "debtAmount", "debtDueDate",  "debtId"};

/* Normalises a row of debts into a COPY line; ES_OK, or the column and
 * problem of the first rejected value. */
static int debts_row(const es_dataset *d, const char *const *v, es_buf *out, int *bad_col,
                     const char **problem)
{
    for (int i = 0; i < d->ncols; i++) {
        if (i) es_buf_append(out, "\t", 1);
        int rc = es_value_normalize(&d->cols[i], v[i], strlen(v[i]), out, problem);
        if (rc != ES_OK) {
            *bad_col = i;
            return rc;
        }
    }
    return es_buf_append(out, "\n", 1);
}

static void test_debts(void **state)
{
    (void)state;
    const es_dataset *d = es_dataset_builtin("debts");
    assert_non_null(d);
    assert_null(es_dataset_builtin("nope"));
    assert_null(es_dataset_builtin(NULL));
    assert_string_equal(d->name, "debts");
    assert_string_equal(d->table, "ds_debts");
    assert_int_equal(d->ncols, 6);
    static const char *const names[] = {"name",        "government_id", "email",
                                        "debt_amount", "debt_due_date", "debt_id"};
    static const es_coltype types[] = {ES_COL_TEXT,    ES_COL_TEXT, ES_COL_EMAIL,
                                       ES_COL_DECIMAL, ES_COL_DATE, ES_COL_UUID};
    for (int i = 0; i < 6; i++) {
        assert_string_equal(d->cols[i].name, names[i]);
        assert_string_equal(d->cols[i].header, debts_headers[i]);
        assert_int_equal(d->cols[i].type, types[i]);
        assert_true(d->cols[i].required);
        assert_true(d->cols[i].trim);
    }
    assert_int_equal(d->cols[3].precision, 14);
    assert_int_equal(d->cols[3].scale, 2);
    assert_true(d->cols[3].nonneg);
    assert_int_equal(d->key, 5);

    es_buf b;
    es_buf_init(&b, 0);
    int col = -1;
    const char *problem = NULL;
    const char *good[] = {"Elijah Santos", "38472910233", "elijah.santos0@Example.com",
                          "7811",          "2023-05-17",  "9A4E5C2B-1D3F-4E5A-8B6C-7D8E9F0A1B2C "};
    assert_int_equal(debts_row(d, good, &b, &col, &problem), ES_OK);
    assert_string_equal(es_buf_cstr(&b), "Elijah Santos\t38472910233\telijah.santos0@example.com\t"
                                         "7811.00\t2023-05-17\t"
                                         "9a4e5c2b-1d3f-4e5a-8b6c-7d8e9f0a1b2c\n");

    /* each kind of bad row the generator writes, with the column it names */
    static const struct {
        int col;
        const char *value, *problem;
    } bad[] = {
        {4, "2023-02-30", "not a valid date"},
        {3, "-7811", "must not be negative"},
        {3, "-1000000.00", "must not be negative"},
        {2, "", "required"},
        {5, "not-a-uuid", "not a valid UUID"},
        {2, "no-at-sign.example.com", "not a valid e-mail address"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        const char *row[6];
        memcpy(row, good, sizeof row);
        row[bad[i].col] = bad[i].value;
        es_buf_reset(&b);
        col = -1;
        problem = NULL;
        assert_int_equal(debts_row(d, row, &b, &col, &problem), ES_EINVAL);
        assert_int_equal(col, bad[i].col);
        assert_string_equal(problem, bad[i].problem);
    }
    es_buf_finish(&b);
}

/* ---------------------------------------------------------------- headers */

static int map(const es_dataset *d, const char *const *f, int n, es_header_map *m, json_t **p)
{
    size_t lens[256];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(f[i]);
    return es_dataset_map_header(d, f, lens, n, m, p);
}

/* the problems as "field:problem;..." */
static void problems_are(json_t *p, const char *want)
{
    char got[1024] = "";
    size_t i;
    json_t *e;
    json_array_foreach(p, i, e)
    {
        size_t l = strlen(got);
        snprintf(got + l, sizeof got - l, "%s%s:%s", i ? ";" : "",
                 json_string_value(json_object_get(e, "field")),
                 json_string_value(json_object_get(e, "problem")));
    }
    assert_string_equal(got, want);
}

static void test_header_map(void **state)
{
    (void)state;
    const es_dataset *d = es_dataset_builtin("debts");
    es_header_map m;
    json_t *p = (json_t *)1;
    assert_int_equal(map(d, debts_headers, 6, &m, &p), ES_OK);
    assert_null(p);
    assert_int_equal(m.nfields, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(m.col_of[i], i);

    /* any order, surrounding spaces */
    const char *shuffled[] = {" debtId",     "email ",       "name",
                              "debtDueDate", "\tdebtAmount", "governmentId"};
    assert_int_equal(map(d, shuffled, 6, &m, &p), ES_OK);
    static const int want[] = {5, 2, 0, 4, 3, 1};
    for (int i = 0; i < 6; i++)
        assert_int_equal(m.col_of[i], want[i]);

    const char *missing[] = {"name", "governmentId", "email", "debtAmount", "debtId"};
    assert_int_equal(map(d, missing, 5, &m, &p), ES_EINVAL);
    problems_are(p, "debtDueDate:missing column");
    json_decref(p);

    /* exact: a different case is another header */
    const char *wrong[] = {"name",  "governmentId", "email", "debtAmount", "debtDueDate", "DebtId",
                           "extra", "name",         ""};
    assert_int_equal(map(d, wrong, 9, &m, &p), ES_EINVAL);
    problems_are(p, "DebtId:unknown column;extra:unknown column;name:repeated column;"
                    ":empty header (field 9);debtId:missing column");
    json_decref(p);
    assert_int_equal(m.nfields, 9);
    assert_int_equal(m.col_of[0], 0);
    assert_int_equal(m.col_of[5], -1);
    assert_int_equal(m.col_of[6], -1);
    assert_int_equal(m.col_of[7], -1);

    /* problems may be NULL; a header that is not UTF-8 is quoted as such */
    assert_int_equal(map(d, wrong, 9, &m, NULL), ES_EINVAL);
    const char *odd[] = {"name",        "governmentId", "email",  "debtAmount",
                         "debtDueDate", "debtId",       "caf\xC3"};
    assert_int_equal(map(d, odd, 7, &m, &p), ES_EINVAL);
    problems_are(p, "(not valid UTF-8):unknown column");
    json_decref(p);

    const char *many[200];
    for (int i = 0; i < 200; i++)
        many[i] = "x";
    assert_int_equal(map(d, many, 200, &m, &p), ES_EINVAL);
    assert_string_equal(json_string_value(json_object_get(json_array_get(p, 0), "problem")),
                        "too many columns (at most 128)");
    json_decref(p);
}

/* ---------------------------------------------------------------- definitions */

static int from_text(const char *text, es_dataset *d, char *err, size_t n)
{
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j) fail_msg("bad test JSON: %s: %s", text, je.text);
    int rc = es_dataset_from_json(j, d, err, n);
    json_decref(j);
    return rc;
}

#define COLS_OK "\"columns\":[{\"name\":\"id\",\"type\":\"uuid\",\"required\":true}]"

static void test_from_json_errors(void **state)
{
    (void)state;
    static const struct {
        const char *def, *err;
    } cases[] = {
        {"[]", "definition: must be a JSON object"},
        {"{\"name\":\"x\"," COLS_OK ",\"key\":\"id\",\"extra\":1}", "extra: unknown field"},
        {"{" COLS_OK ",\"key\":\"id\"}", "name: required, a string"},
        {"{\"name\":\"Bad\"," COLS_OK ",\"key\":\"id\"}",
         "name: must match [a-z_][a-z0-9_]*, at most 60 characters"},
        {"{\"name\":\"a234567890123456789012345678901234567890123456789012345678901\"," COLS_OK
         ",\"key\":\"id\"}",
         "name: must match [a-z_][a-z0-9_]*, at most 60 characters"},
        {"{\"name\":\"x\",\"table\":\"other\"," COLS_OK ",\"key\":\"id\"}",
         "table: must be \"ds_x\" (it follows the name)"},
        {"{\"name\":\"x\",\"key\":\"id\"}", "columns: required, a non-empty array"},
        {"{\"name\":\"x\",\"columns\":[],\"key\":\"id\"}", "columns: required, a non-empty array"},
        {"{\"name\":\"x\",\"columns\":[1],\"key\":\"id\"}", "columns[0]: must be an object"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\"},{\"name\":\"b\","
         "\"type\":\"text\"},{\"name\":\"c\",\"type\":\"money\"}],\"key\":\"a\"}",
         "columns[2].type: unknown type 'money'"},
        {"{\"name\":\"x\",\"columns\":[{\"type\":\"text\"}],\"key\":\"a\"}",
         "columns[0].name: required, a string"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"A b\",\"type\":\"text\"}],\"key\":\"a\"}",
         "columns[0].name: must match [a-z_][a-z0-9_]*, at most 63 characters"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"order\",\"type\":\"text\"}],\"key\":\"a\"}",
         "columns[0].name: 'order' is reserved"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"line\",\"type\":\"text\"}],\"key\":\"a\"}",
         "columns[0].name: 'line' is reserved"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"color\":1}],\"key\":"
         "\"a\"}",
         "columns[0].color: unknown field"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\"}],\"key\":\"a\"}",
         "columns[0].type: required, a string"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"required\":1}],"
         "\"key\":\"a\"}",
         "columns[0].required: must be true or false"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"header\":\" a\"}],"
         "\"key\":\"a\"}",
         "columns[0].header: surrounding spaces"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"header\":\"\"}],"
         "\"key\":\"a\"}",
         "columns[0].header: 1 to 127 bytes"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"decimal\"}],\"key\":\"a\"}",
         "columns[0].precision: required for decimal"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"decimal\",\"precision\":39}],"
         "\"key\":\"a\"}",
         "columns[0].precision: an integer from 1 to 38"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"decimal\",\"precision\":4,"
         "\"scale\":5}],\"key\":\"a\"}",
         "columns[0].scale: an integer from 0 to the precision (4)"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"scale\":2}],"
         "\"key\":\"a\"}",
         "columns[0].scale: only for decimal"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"uuid\",\"maxLength\":2}],"
         "\"key\":\"a\"}",
         "columns[0].maxLength: only for text"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\",\"maxLength\":-1}],"
         "\"key\":\"a\"}",
         "columns[0].maxLength: an integer from 0 to 1073741824"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"date\",\"nonNegative\":true}],"
         "\"key\":\"a\"}",
         "columns[0].nonNegative: only for integer, bigint and decimal"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\"},{\"name\":\"a\","
         "\"type\":\"text\",\"header\":\"b\"}],\"key\":\"a\"}",
         "columns[1].name: repeated column 'a'"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\"},{\"name\":\"b\","
         "\"type\":\"text\",\"header\":\"a\"}],\"key\":\"a\"}",
         "columns[1].header: repeated header 'a'"},
        {"{\"name\":\"x\"," COLS_OK "}", "key: required, the name of a column"},
        {"{\"name\":\"x\"," COLS_OK ",\"key\":\"nope\"}", "key: no column 'nope'"},
        {"{\"name\":\"x\",\"columns\":[{\"name\":\"a\",\"type\":\"text\"}],\"key\":\"a\"}",
         "key: column 'a' must be required"},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        es_dataset d;
        char err[256] = "";
        int rc = from_text(cases[i].def, &d, err, sizeof err);
        if (rc != ES_EINVAL) fail_msg("case %zu accepted: %s", i, cases[i].def);
        if (strcmp(err, cases[i].err) != 0)
            fail_msg("case %zu: '%s', want '%s'", i, err, cases[i].err);
    }
    /* 65 columns */
    json_t *def = json_pack("{s:s,s:[],s:s}", "name", "wide", "columns", "key", "c0");
    for (int i = 0; i < 65; i++) {
        char n[8];
        snprintf(n, sizeof n, "c%d", i);
        json_array_append_new(json_object_get(def, "columns"),
                              json_pack("{s:s,s:s,s:b}", "name", n, "type", "text", "required", 1));
    }
    es_dataset d;
    char err[256];
    assert_int_equal(es_dataset_from_json(def, &d, err, sizeof err), ES_EINVAL);
    assert_string_equal(err, "columns: at most 64");
    json_array_remove(json_object_get(def, "columns"), 64);
    assert_int_equal(es_dataset_from_json(def, &d, err, sizeof err), ES_OK);
    assert_int_equal(d.ncols, 64);
    json_decref(def);
}

static void assert_same_dataset(const es_dataset *a, const es_dataset *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->table, b->table);
    assert_int_equal(a->ncols, b->ncols);
    assert_int_equal(a->key, b->key);
    for (int i = 0; i < a->ncols; i++) {
        const es_column *x = &a->cols[i], *y = &b->cols[i];
        assert_string_equal(x->name, y->name);
        assert_string_equal(x->header, y->header);
        assert_int_equal(x->type, y->type);
        assert_int_equal(x->precision, y->precision);
        assert_int_equal(x->scale, y->scale);
        assert_int_equal(x->required, y->required);
        assert_int_equal(x->trim, y->trim);
        assert_int_equal(x->max_len, y->max_len);
        assert_int_equal(x->nonneg, y->nonneg);
    }
}

static const char *all_types_def =
    "{\"name\":\"everything\",\"key\":\"ref\",\"columns\":["
    "{\"name\":\"label\",\"type\":\"text\",\"maxLength\":40,\"trim\":false},"
    "{\"name\":\"qty\",\"type\":\"integer\",\"nonNegative\":true},"
    "{\"name\":\"big\",\"header\":\"Big Number\",\"type\":\"bigint\"},"
    "{\"name\":\"price\",\"type\":\"decimal\",\"precision\":10,\"scale\":3},"
    "{\"name\":\"active\",\"type\":\"boolean\"},"
    "{\"name\":\"day\",\"type\":\"date\"},"
    "{\"name\":\"at\",\"type\":\"timestamp\"},"
    "{\"name\":\"ref\",\"header\":\"refId\",\"type\":\"uuid\",\"required\":true},"
    "{\"name\":\"mail\",\"type\":\"email\"},"
    "{\"name\":\"extra\",\"type\":\"json\"}]}";

static void test_round_trip(void **state)
{
    (void)state;
    /* the built-in, through JSON and back */
    const es_dataset *debts = es_dataset_builtin("debts");
    json_t *j = es_dataset_to_json(debts);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "key")), "debt_id");
    json_t *amount = json_array_get(json_object_get(j, "columns"), 3);
    assert_string_equal(json_string_value(json_object_get(amount, "header")), "debtAmount");
    assert_int_equal(json_integer_value(json_object_get(amount, "precision")), 14);
    assert_true(json_is_true(json_object_get(amount, "nonNegative")));
    es_dataset d;
    char err[256];
    assert_int_equal(es_dataset_from_json(j, &d, err, sizeof err), ES_OK);
    assert_same_dataset(&d, debts);
    json_decref(j);

    /* every type and option; the key named by its header */
    es_dataset e;
    assert_int_equal(from_text(all_types_def, &e, err, sizeof err), ES_OK);
    assert_string_equal(e.table, "ds_everything");
    assert_int_equal(e.ncols, 10);
    assert_int_equal(e.key, 7);
    assert_string_equal(e.cols[0].header, "label"); /* defaults to the name */
    assert_false(e.cols[0].trim);
    assert_true(e.cols[1].trim);
    assert_false(e.cols[2].required);
    assert_string_equal(e.cols[2].header, "Big Number");
    assert_int_equal(e.cols[0].max_len, 40);
    assert_true(e.cols[1].nonneg);
    j = es_dataset_to_json(&e);
    es_dataset f;
    assert_int_equal(es_dataset_from_json(j, &f, err, sizeof err), ES_OK);
    assert_same_dataset(&f, &e);
    json_t *j2 = es_dataset_to_json(&f);
    assert_true(json_equal(j, j2));
    json_decref(j);
    json_decref(j2);

    json_t *bykey = json_loads(all_types_def, 0, NULL);
    json_object_set_new(bykey, "key", json_string("refId"));
    assert_int_equal(es_dataset_from_json(bykey, &f, err, sizeof err), ES_OK);
    assert_int_equal(f.key, 7);
    json_decref(bykey);

    for (int t = 0; t <= ES_COL_JSON; t++)
        assert_int_equal(es_coltype_parse(es_coltype_name((es_coltype)t)), t);
    assert_int_equal(es_coltype_parse("money"), -1);
    assert_int_equal(es_coltype_parse(NULL), -1);
}

/* ---------------------------------------------------------------- DDL */

static void test_ddl(void **state)
{
    (void)state;
    const es_dataset *d = es_dataset_builtin("debts");
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_dataset_ddl(d, ES_DIALECT_PG, &b), ES_OK);
    assert_string_equal(
        es_buf_cstr(&b),
        "CREATE TABLE IF NOT EXISTS ds_debts (tenant text NOT NULL DEFAULT 'default', "
        "name text NOT NULL, "
        "government_id text NOT NULL, email text NOT NULL, "
        "debt_amount numeric(14,2) NOT NULL, debt_due_date date NOT NULL, "
        "debt_id uuid NOT NULL, upload_id text, line bigint, "
        "PRIMARY KEY (tenant, debt_id))");
    es_buf_reset(&b);
    assert_int_equal(es_dataset_ddl(d, ES_DIALECT_SQLITE, &b), ES_OK);
    assert_string_equal(
        es_buf_cstr(&b),
        "CREATE TABLE IF NOT EXISTS ds_debts (tenant TEXT NOT NULL DEFAULT 'default', "
        "name TEXT NOT NULL, "
        "government_id TEXT NOT NULL, email TEXT NOT NULL, "
        "debt_amount NUMERIC NOT NULL, debt_due_date TEXT NOT NULL, "
        "debt_id TEXT NOT NULL, upload_id TEXT, line INTEGER, "
        "PRIMARY KEY (tenant, debt_id))");

    es_dataset e;
    char err[256];
    assert_int_equal(from_text(all_types_def, &e, err, sizeof err), ES_OK);
    es_buf_reset(&b);
    assert_int_equal(es_dataset_ddl(&e, ES_DIALECT_PG, &b), ES_OK);
    assert_string_equal(es_buf_cstr(&b),
                        "CREATE TABLE IF NOT EXISTS ds_everything (tenant text NOT NULL DEFAULT "
                        "'default', label text, qty integer, "
                        "big bigint, price numeric(10,3), active boolean, day date, "
                        "at timestamptz, ref uuid NOT NULL, mail text, extra jsonb, "
                        "upload_id text, line bigint, PRIMARY KEY (tenant, ref))");
    es_buf_reset(&b);
    assert_int_equal(es_dataset_ddl(&e, ES_DIALECT_SQLITE, &b), ES_OK);
    assert_string_equal(es_buf_cstr(&b),
                        "CREATE TABLE IF NOT EXISTS ds_everything (tenant TEXT NOT NULL DEFAULT "
                        "'default', label TEXT, qty INTEGER, "
                        "big INTEGER, price NUMERIC, active TEXT, day TEXT, at TEXT, "
                        "ref TEXT NOT NULL, mail TEXT, extra TEXT, "
                        "upload_id TEXT, line INTEGER, PRIMARY KEY (tenant, ref))");

    e.key = 10; /* not a column */
    es_buf_reset(&b);
    assert_int_equal(es_dataset_ddl(&e, ES_DIALECT_PG, &b), ES_EINVAL);
    es_buf_finish(&b);
}

/* ---------------------------------------------------------------- a real load */

static es_config g_cfg;
static char *g_tmp;

/* DDL, COPY of normalised rows (escapes, NULLs, every type), read back, and
 * the key refusing a duplicate - on one store. */
static void load_into(const char *url)
{
    es_store *s = NULL;
    if (es_store_open(url, &g_cfg, &s) != ES_OK) fail_msg("cannot open %s", url);
    es_dialect dl = es_store_dialect(s);

    char def[2048];
    char name[40];
    snprintf(name, sizeof name, "tds_%d_%u", (int)getpid(), (unsigned)(es_now_ms() % 100000));
    json_t *j = json_loads(all_types_def, 0, NULL);
    json_object_set_new(j, "name", json_string(name));
    es_dataset d;
    assert_int_equal(es_dataset_from_json(j, &d, def, sizeof def), ES_OK);
    json_decref(j);

    es_buf sql;
    es_buf_init(&sql, 0);
    assert_int_equal(es_dataset_ddl(&d, dl, &sql), ES_OK);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    /* IF NOT EXISTS: twice is fine */
    assert_int_equal(es_store_exec_script(c, es_buf_cstr(&sql)), ES_OK);
    assert_int_equal(es_store_exec_script(c, es_buf_cstr(&sql)), ES_OK);

    const char *rows[2][10] = {
        {"tab\there\\ \"quoted\"\nnext", "+007", "-9223372036854775808", "12.5", "YES",
         "2024-02-29", "2024-03-01T01:00:00+02:00", "0B4D0F4E-9D0F-4A41-8B0E-2B0F3A6C6F21 ",
         "Ann@Example.COM", "{\"a\": [1, 2.50], \"b\": \"x\\\\y\"}"},
        {"", "", "", "", "", "", "", "1b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21", "", ""},
    };
    es_buf data;
    es_buf_init(&data, 0);
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < d.ncols; i++) {
            const char *problem = NULL;
            int rc =
                es_value_normalize(&d.cols[i], rows[r][i], strlen(rows[r][i]), &data, &problem);
            if (rc != ES_OK) fail_msg("row %d col %d: %s", r, i, problem);
            es_buf_append(&data, "\t", 1);
        }
        es_buf_printf(&data, "upload-1\t%d\n", r + 2);
    }
    const char *cols[12];
    for (int i = 0; i < d.ncols; i++)
        cols[i] = d.cols[i].name;
    cols[10] = "upload_id";
    cols[11] = "line";
    int rc = es_store_copy_in(c, d.table, cols, NULL, 12, data.data, data.len);
    if (rc != ES_OK) fail_msg("copy into %s on %s: %s", d.table, url, es_strerror(rc));

    es_buf_reset(&sql);
    if (dl == ES_DIALECT_PG)
        es_buf_printf(&sql,
                      "SELECT label, qty::text, big::text, price::text, active::text, day::text, "
                      "to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
                      "ref::text, mail, extra::text, upload_id, line::text FROM %s ORDER BY line",
                      d.table);
    else
        es_buf_printf(&sql,
                      "SELECT label, qty, big, price, active, day, at, ref, mail, extra, "
                      "upload_id, line FROM %s ORDER BY line",
                      d.table);
    es_rows *res = NULL;
    assert_int_equal(es_store_exec(c, es_buf_cstr(&sql), 0, NULL, &res), ES_OK);
    assert_int_equal(es_rows_count(res), 2);
    assert_string_equal(es_rows_get(res, 0, 0), "tab\there\\ \"quoted\"\nnext");
    assert_string_equal(es_rows_get(res, 0, 1), "7");
    assert_string_equal(es_rows_get(res, 0, 2), "-9223372036854775808");
    /* PostgreSQL keeps the scale; SQLite's NUMERIC keeps the number */
    assert_string_equal(es_rows_get(res, 0, 3), dl == ES_DIALECT_PG ? "12.500" : "12.5");
    assert_string_equal(es_rows_get(res, 0, 4), "true");
    assert_string_equal(es_rows_get(res, 0, 5), "2024-02-29");
    assert_string_equal(es_rows_get(res, 0, 6), "2024-02-29T23:00:00.000Z");
    assert_string_equal(es_rows_get(res, 0, 7), "0b4d0f4e-9d0f-4a41-8b0e-2b0f3a6c6f21");
    assert_string_equal(es_rows_get(res, 0, 8), "Ann@example.com");
    assert_string_equal(es_rows_get(res, 0, 9), dl == ES_DIALECT_PG
                                                    ? "{\"a\": [1, 2.50], \"b\": \"x\\\\y\"}"
                                                    : "{\"a\":[1,2.50],\"b\":\"x\\\\y\"}");
    assert_string_equal(es_rows_get(res, 0, 10), "upload-1");
    assert_string_equal(es_rows_get(res, 0, 11), "2");
    for (int i = 0; i < 10; i++)
        if (i != 7) assert_null(es_rows_get(res, 1, i));
    es_rows_free(res);

    /* the key is unique */
    es_buf_reset(&data);
    const char *problem;
    es_buf_puts(&data, "\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t");
    es_value_normalize(&d.cols[7], rows[0][7], strlen(rows[0][7]), &data, &problem);
    es_buf_puts(&data, "\t\\N\t\\N\tupload-2\t2\n");
    assert_int_equal(es_store_copy_in(c, d.table, cols, NULL, 12, data.data, data.len),
                     ES_ECONFLICT);

    es_buf_reset(&sql);
    es_buf_printf(&sql, "DROP TABLE %s", d.table);
    assert_int_equal(es_store_exec(c, es_buf_cstr(&sql), 0, NULL, NULL), ES_OK);
    es_store_release(c);
    es_store_close(s);
    es_buf_finish(&sql);
    es_buf_finish(&data);
}

static void test_store_load(void **state)
{
    (void)state;
    char def[600], urls[8][512];
    snprintf(def, sizeof def, "sqlite:%s/load.db", g_tmp);
    int n = test_urls("ESTEIRA_TEST_STORE_URLS", def, urls, 8);
    for (int i = 0; i < n; i++) {
        printf("# load through %s\n", urls[i]);
        load_into(urls[i]);
    }
}

/* ---------------------------------------------------------------- throughput */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

#define CHUNK 10000

/* One chunk of debts rows as the generator writes them: 30% of amounts with
 * decimals, 1% of ids with a trailing space. */
static void gen_chunk(char *arena, const char *(*f)[6], size_t (*l)[6], int64_t first)
{
    static const char *const firsts[] = {"Elijah", "Samuel", "Maria", "Conceição", "Ana", "Joao"};
    static const char *const lasts[] = {"Santos", "Orr", "Silva", "Araújo", "Costa", "Rocha"};
    static const char *const domains[] = {"example.com", "example.net", "kanastra.com.br"};
    static const char hx[] = "0123456789abcdef";
    char *w = arena;
    for (int r = 0; r < CHUNK; r++) {
        const char *fn = firsts[rnd() % 6], *ln = lasts[rnd() % 6];
        int len[6];
        char *start[6];
        start[0] = w;
        len[0] = snprintf(w, 100, "%s %s", fn, ln);
        w += len[0] + 1;
        start[1] = w;
        len[1] =
            snprintf(w, 100, "%llu", (unsigned long long)(10000000000ull + rnd() % 90000000000ull));
        w += len[1] + 1;
        start[2] = w;
        len[2] =
            snprintf(w, 100, "%s.%s%lld@%s", fn, ln, (long long)(first + r), domains[rnd() % 3]);
        w += len[2] + 1;
        start[3] = w;
        unsigned long long cents = 100000 + rnd() % 900000;
        len[3] = rnd() % 10 < 3 ? snprintf(w, 100, "%llu.%02llu", cents / 100, cents % 100)
                                : snprintf(w, 100, "%llu", cents / 100);
        w += len[3] + 1;
        start[4] = w;
        len[4] = snprintf(w, 100, "%04d-%02d-%02d", 2022 + (int)(rnd() % 3), 1 + (int)(rnd() % 12),
                          1 + (int)(rnd() % 28));
        w += len[4] + 1;
        start[5] = w;
        for (int i = 0; i < 36; i++)
            w[i] = (i == 8 || i == 13 || i == 18 || i == 23) ? '-' : hx[rnd() % 16];
        w[14] = '4';
        len[5] = 36;
        if (rnd() % 100 == 0) w[len[5]++] = ' ';
        w += len[5] + 1;
        for (int i = 0; i < 6; i++) {
            f[r][i] = start[i];
            l[r][i] = (size_t)len[i];
        }
    }
}

static void test_throughput(void **state)
{
    (void)state;
    const char *env = getenv("ESTEIRA_TEST_DATASET_ROWS");
    int64_t rows = env ? strtoll(env, NULL, 10) : 1000000;
    const es_dataset *d = es_dataset_builtin("debts");
    char *arena = malloc((size_t)CHUNK * 200);
    const char *(*f)[6] = malloc(sizeof *f * CHUNK);
    size_t(*l)[6] = malloc(sizeof *l * CHUNK);
    assert_non_null(arena);
    es_buf out;
    es_buf_init(&out, 4u << 20);
    int64_t us = 0, done = 0, bytes = 0;
    while (done < rows) {
        gen_chunk(arena, f, l, done);
        int n = rows - done < CHUNK ? (int)(rows - done) : CHUNK;
        int64_t t0 = es_mono_us();
        for (int r = 0; r < n; r++) {
            /* one batch of 1000 rows per buffer, as the loader makes them */
            if (r % 1000 == 0) {
                bytes += (int64_t)out.len;
                es_buf_reset(&out);
            }
            for (int i = 0; i < 6; i++) {
                const char *problem;
                if (es_value_normalize(&d->cols[i], f[r][i], l[r][i], &out, &problem) != ES_OK)
                    fail_msg("row %lld col %d '%.*s': %s", (long long)(done + r), i, (int)l[r][i],
                             f[r][i], problem);
                es_buf_append(&out, i == 5 ? "\n" : "\t", 1);
            }
        }
        us += es_mono_us() - t0;
        done += n;
    }
    bytes += (int64_t)out.len;
    printf(
        "# normalise: %lld debts rows x 6 columns in %.3f s: %.0f rows/s, %.1f MB of COPY text\n",
        (long long)rows, (double)us / 1e6, us ? (double)rows * 1e6 / (double)us : 0.0,
        (double)bytes / 1e6);
    assert_true(bytes > rows * 60);
    es_buf_finish(&out);
    free(arena);
    free(f);
    free(l);
}

int main(void)
{
    if (!getenv("ESTEIRA_TEST_LOG")) es_log_set_level(ES_LOG_ERROR);
    if (es_config_defaults(&g_cfg) != ES_OK) return 1;
    g_tmp = test_tmpdir("dataset");
    if (!g_tmp) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_text),
        cmocka_unit_test(test_copy_escaping),
        cmocka_unit_test(test_integer),
        cmocka_unit_test(test_decimal),
        cmocka_unit_test(test_boolean),
        cmocka_unit_test(test_date),
        cmocka_unit_test(test_timestamp),
        cmocka_unit_test(test_uuid),
        cmocka_unit_test(test_email),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_debts),
        cmocka_unit_test(test_header_map),
        cmocka_unit_test(test_from_json_errors),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_ddl),
        cmocka_unit_test(test_store_load),
        cmocka_unit_test(test_throughput),
    };
    int failed = cmocka_run_group_tests_name("dataset", tests, NULL, NULL);
    test_rmdir(g_tmp);
    es_config_finish(&g_cfg);
    return failed ? 1 : 0;
}
