/* test_util.c - time, ids, buffers, parsing helpers. */
#include "testutil.h"

#include "esteira/err.h"
#include "esteira/util.h"

static void test_uuid7(void **state)
{
    (void)state;
    char a[ES_UUID_LEN + 1], b[ES_UUID_LEN + 1];
    es_uuid7(a);
    es_sleep_ms(2);
    es_uuid7(b);
    assert_true(es_uuid_valid(a));
    assert_int_equal(a[14], '7');               /* version */
    assert_true(strchr("89ab", a[19]) != NULL); /* variant */
    assert_true(strcmp(a, b) < 0);              /* time-ordered */
    assert_false(es_uuid_valid("not-a-uuid"));
    assert_false(es_uuid_valid("0192f1f0-0000-7000-8000-00000000000g"));
}

static void test_time(void **state)
{
    (void)state;
    char s[25];
    es_time_iso(0, s);
    assert_string_equal(s, "1970-01-01T00:00:00.000Z");
    es_time_iso(1700000000123, s);
    assert_string_equal(s, "2023-11-14T22:13:20.123Z");
    int64_t ms;
    assert_int_equal(es_time_parse_iso("2023-11-14T22:13:20.123Z", &ms), ES_OK);
    assert_int_equal(ms, 1700000000123);
    assert_int_equal(es_time_parse_iso("2023-11-14T19:13:20-03:00", &ms), ES_OK);
    assert_int_equal(ms, 1700000000000);
    assert_int_equal(es_time_parse_iso("2024-02-29", &ms), ES_OK);
    assert_int_equal(es_time_parse_iso("2023-02-29", &ms), ES_EINVAL); /* not a leap year */
    assert_int_equal(es_time_parse_iso("2023-02-30", &ms), ES_EINVAL);
    assert_int_equal(es_time_parse_iso("2023-11-14T22:13:20", &ms), ES_EINVAL); /* no zone */
    assert_int_equal(es_time_parse_iso("2023-11-14x", &ms), ES_EINVAL);
}

static void test_buf_bounded(void **state)
{
    (void)state;
    es_buf b;
    es_buf_init(&b, 10);
    assert_int_equal(es_buf_append(&b, "12345", 5), ES_OK);
    assert_int_equal(es_buf_printf(&b, "%d", 6789), ES_OK);
    assert_int_equal(es_buf_append(&b, "01", 2), ES_ELIMIT); /* would be 11 */
    assert_int_equal(b.len, 9);
    assert_int_equal(es_buf_append(&b, "0", 1), ES_OK);
    assert_string_equal(es_buf_cstr(&b), "1234567890");
    char *s = es_buf_steal(&b);
    assert_string_equal(s, "1234567890");
    free(s);
    assert_int_equal(b.len, 0);
    es_buf_init(&b, 0);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(es_buf_printf(&b, "%04d", i % 10000), ES_OK);
    assert_int_equal(b.len, 40000);
    es_buf_finish(&b);
}

static void test_parse(void **state)
{
    (void)state;
    int64_t v;
    uint64_t u;
    bool bo;
    assert_int_equal(es_parse_i64("42", 0, 100, &v), ES_OK);
    assert_int_equal(v, 42);
    assert_int_equal(es_parse_i64("101", 0, 100, &v), ES_EINVAL);
    assert_int_equal(es_parse_i64("4x", 0, 100, &v), ES_EINVAL);
    assert_int_equal(es_parse_i64("", 0, 100, &v), ES_EINVAL);
    assert_int_equal(es_parse_i64(" 4", 0, 100, &v), ES_EINVAL);
    assert_int_equal(es_parse_size("64MB", &u), ES_OK);
    assert_int_equal(u, 64u << 20);
    assert_int_equal(es_parse_size("1.5k", &u), ES_OK);
    assert_int_equal(u, 1536);
    assert_int_equal(es_parse_size("-1", &u), ES_EINVAL);
    assert_int_equal(es_parse_size("10 parsecs", &u), ES_EINVAL);
    assert_int_equal(es_parse_duration_ms("2s", &v), ES_OK);
    assert_int_equal(v, 2000);
    assert_int_equal(es_parse_duration_ms("5m", &v), ES_OK);
    assert_int_equal(v, 300000);
    assert_int_equal(es_parse_duration_ms("250", &v), ES_OK);
    assert_int_equal(v, 250);
    assert_int_equal(es_parse_duration_ms("2 weeks", &v), ES_EINVAL);
    assert_int_equal(es_parse_bool("on", &bo), ES_OK);
    assert_true(bo);
    assert_int_equal(es_parse_bool("nope", &bo), ES_EINVAL);
    assert_true(es_ident_valid("user_interactions"));
    assert_true(es_ident_valid("_x9"));
    assert_false(es_ident_valid("9x"));
    assert_false(es_ident_valid("Users"));
    assert_false(es_ident_valid("a;drop"));
    assert_false(es_ident_valid(""));
    char long_ident[70];
    memset(long_ident, 'a', 64);
    long_ident[64] = 0;
    assert_false(es_ident_valid(long_ident));
    long_ident[63] = 0;
    assert_true(es_ident_valid(long_ident));
}

static void test_hashing(void **state)
{
    (void)state;
    char hex[65];
    es_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    unsigned char mac[32];
    /* RFC 4231 test case 2 */
    es_hmac_sha256("Jefe", 4, "what do ya want for nothing?", 28, mac);
    es_hex(mac, 32, hex);
    assert_string_equal(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    char b64[8];
    es_b64url((const unsigned char *)"\xfb\xff", 2, b64);
    assert_string_equal(b64, "-_8");
    assert_true(es_ct_equal("abc", "abc", 3));
    assert_false(es_ct_equal("abc", "abd", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uuid7),       cmocka_unit_test(test_time),
        cmocka_unit_test(test_buf_bounded), cmocka_unit_test(test_parse),
        cmocka_unit_test(test_hashing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
