/* test_sign.c - esteira's signed URLs and percent-encoding. */
#include "testutil.h"

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/sign.h"
#include "esteira/util.h"

#define SECRET "s3cr3t-for-tests"
#define KEY    "uploads/0192/source.csv"
#define CT     "text/csv; charset=utf-8"
#define NOW    1800000000
#define EXP    (NOW + 600)

/* Replaces the value of one parameter in a query (the first occurrence). */
static char *with_param(const char *query, const char *name, const char *value)
{
    char pat[32];
    snprintf(pat, sizeof pat, "%s=", name);
    const char *p = query;
    while ((p = strstr(p, pat)) && p != query && p[-1] != '&')
        p++;
    assert_non_null(p);
    const char *end = strchr(p, '&');
    if (!end) end = p + strlen(p);
    size_t n = (size_t)(p - query) + strlen(pat) + strlen(value) + strlen(end) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s%s", (int)(p - query), query, pat, value, end);
    return out;
}

/* Removes one parameter (and its '&') from a query. */
static char *without_param(const char *query, const char *name)
{
    char pat[32];
    snprintf(pat, sizeof pat, "%s=", name);
    const char *p = strstr(query, pat);
    assert_non_null(p);
    const char *end = strchr(p, '&');
    char *out = malloc(strlen(query) + 1);
    if (end)
        snprintf(out, strlen(query) + 1, "%.*s%s", (int)(p - query), query, end + 1);
    else
        snprintf(out, strlen(query) + 1, "%.*s", (int)(p - query - (p > query)), query);
    return out;
}

static int verify(const char *q, const char *method, const char *key, const char *ct, int64_t now,
                  const char **why)
{
    return es_sign_verify(SECRET, q, method, key, ct, now, why);
}

static void test_valid_put_and_get(void **state)
{
    (void)state;
    char *q = es_sign_query(SECRET, "PUT", KEY, CT, EXP);
    assert_non_null(q);
    /* the documented shape */
    assert_non_null(strstr(q, "method=PUT"));
    assert_non_null(strstr(q, "ct=text%2Fcsv%3B%20charset%3Dutf-8"));
    assert_non_null(strstr(q, "exp=1800000600"));
    assert_non_null(strstr(q, "sig="));
    const char *why = NULL;
    assert_int_equal(verify(q, "PUT", KEY, CT, NOW, &why), ES_OK);
    assert_int_equal(verify(q, "PUT", KEY, CT, EXP - 1, NULL), ES_OK);
    free(q);

    /* GET: the request's Content-Type is not checked */
    q = es_sign_query(SECRET, "GET", KEY, NULL, EXP);
    assert_non_null(q);
    assert_int_equal(verify(q, "GET", KEY, NULL, NOW, &why), ES_OK);
    assert_int_equal(verify(q, "GET", KEY, "application/json", NOW, &why), ES_OK);
    free(q);

    /* the signature is HMAC-SHA256 of the documented string */
    q = es_sign_query(SECRET, "PUT", "a/b", "image/png", 42);
    unsigned char mac[32];
    char hex[65], want[128];
    const char *msg = "v1\nPUT\na/b\nimage/png\n42";
    es_hmac_sha256(SECRET, strlen(SECRET), msg, strlen(msg), mac);
    es_hex(mac, sizeof mac, hex);
    snprintf(want, sizeof want, "sig=%s", hex);
    assert_non_null(strstr(q, want));
    free(q);
}

static void test_parameters_in_any_order_and_encoding(void **state)
{
    (void)state;
    char *q = es_sign_query(SECRET, "PUT", KEY, "image/png", EXP);
    const char *sig = strstr(q, "sig=") + 4;
    char re[256];
    /* reordered, '/' spelled raw, names percent-encoded */
    snprintf(re, sizeof re, "sig=%s&exp=%d&%%63t=image/png&method=PUT", sig, EXP);
    assert_int_equal(verify(re, "PUT", KEY, "image/png", NOW, NULL), ES_OK);
    /* an empty segment (a trailing '&') is nothing */
    snprintf(re, sizeof re, "method=PUT&&ct=image%%2Fpng&exp=%d&sig=%s&", EXP, sig);
    assert_int_equal(verify(re, "PUT", KEY, "image/png", NOW, NULL), ES_OK);
    free(q);
}

static void test_expired(void **state)
{
    (void)state;
    char *q = es_sign_query(SECRET, "PUT", KEY, CT, EXP);
    const char *why = NULL;
    assert_int_equal(verify(q, "PUT", KEY, CT, EXP, &why), ES_ETIMEDOUT);
    assert_string_equal(why, "expired");
    assert_int_equal(verify(q, "PUT", KEY, CT, EXP + 3600, &why), ES_ETIMEDOUT);
    free(q);
}

static void test_tampered(void **state)
{
    (void)state;
    char *q = es_sign_query(SECRET, "PUT", KEY, CT, EXP);
    const char *why = NULL;
    char *t;

    /* one flipped hex digit of the signature */
    t = strdup(q);
    char *s = strstr(t, "sig=") + 4;
    s[10] = s[10] == '0' ? '1' : '0';
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "signature mismatch");
    free(t);

    /* a later expiry */
    t = with_param(q, "exp", "1900000000");
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "signature mismatch");
    free(t);
    /* the same expiry spelled differently is not the signed one */
    t = with_param(q, "exp", "01800000600");
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    free(t);
    t = with_param(q, "exp", "-5");
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    free(t);

    /* another content type, in the URL and in the request */
    t = with_param(q, "ct", "text%2Fhtml");
    assert_int_equal(verify(t, "PUT", KEY, "text/html", NOW, &why), ES_EAUTH);
    assert_string_equal(why, "signature mismatch");
    free(t);
    /* the right URL, but the request sends another content type */
    assert_int_equal(verify(q, "PUT", KEY, "text/html", NOW, &why), ES_EAUTH);
    assert_non_null(strstr(why, "content type"));
    assert_int_equal(verify(q, "PUT", KEY, NULL, NOW, &why), ES_EAUTH);

    /* another key */
    assert_int_equal(verify(q, "PUT", "uploads/0192/other.csv", CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "signature mismatch");

    /* another method: used as it is, or with the URL's method changed */
    assert_int_equal(verify(q, "GET", KEY, CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "method not allowed by this URL");
    assert_int_equal(verify(q, "DELETE", KEY, CT, NOW, &why), ES_EAUTH);
    t = with_param(q, "method", "GET");
    assert_int_equal(verify(t, "GET", KEY, CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "signature mismatch");
    free(t);

    /* another secret */
    assert_int_equal(es_sign_verify("other", q, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_int_equal(es_sign_verify("", q, "PUT", KEY, CT, NOW, &why), ES_EAUTH);

    /* an expired URL that was also tampered with says nothing about expiry */
    t = with_param(q, "exp", "1000");
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    free(t);

    /* a malformed signature */
    t = with_param(q, "sig", "abc");
    assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_string_equal(why, "malformed signature");
    free(t);
    free(q);
}

static void test_missing_and_duplicated(void **state)
{
    (void)state;
    char *q = es_sign_query(SECRET, "PUT", KEY, CT, EXP);
    const char *why = NULL;
    static const char *const names[] = {"method", "ct", "exp", "sig"};
    for (size_t i = 0; i < ES_ARRAY_LEN(names); i++) {
        char *t = without_param(q, names[i]);
        assert_null(strstr(t, names[i]));
        assert_int_equal(verify(t, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
        assert_non_null(strstr(why, "missing"));
        free(t);

        /* the same parameter twice, even with the same value */
        const char *p = strstr(q, names[i]);
        const char *end = strchr(p, '&');
        int len = end ? (int)(end - p) : (int)strlen(p);
        char dup[1024];
        snprintf(dup, sizeof dup, "%s&%.*s", q, len, p);
        assert_int_equal(verify(dup, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
        assert_string_equal(why, "duplicated parameter");
    }
    assert_int_equal(verify("", "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_int_equal(verify(NULL, "PUT", KEY, CT, NOW, &why), ES_EAUTH);

    /* unknown parameters are refused, not ignored */
    char extra[1024];
    snprintf(extra, sizeof extra, "%s&x=1", q);
    assert_int_equal(verify(extra, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    assert_non_null(strstr(why, "unknown"));
    /* a parameter without '=' */
    snprintf(extra, sizeof extra, "%s&sig", q);
    assert_int_equal(verify(extra, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    /* a bad escape */
    snprintf(extra, sizeof extra, "%s&ct%%zz=1", q);
    assert_int_equal(verify(extra, "PUT", KEY, CT, NOW, &why), ES_EAUTH);
    free(q);
}

static void test_sign_refuses_bad_input(void **state)
{
    (void)state;
    assert_null(es_sign_query("", "PUT", KEY, CT, EXP));
    assert_null(es_sign_query(NULL, "PUT", KEY, CT, EXP));
    assert_null(es_sign_query(SECRET, "PUT", "a\nb", CT, EXP));
    assert_null(es_sign_query(SECRET, "PUT", KEY, "text/plain\r\nX: y", EXP));
    assert_null(es_sign_query(SECRET, "PUT", KEY, CT, -1));
}

static void roundtrip(const char *s, int keep_slash)
{
    char *e = es_urlencode(s, keep_slash);
    assert_non_null(e);
    for (const char *p = e; *p; p++)
        assert_non_null(
            strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%/", *p));
    if (!keep_slash) assert_null(strchr(e, '/'));
    char *d = es_urldecode(e, strlen(e), 1);
    assert_non_null(d);
    assert_string_equal(d, s);
    free(e);
    free(d);
}

static void test_urlencode(void **state)
{
    (void)state;
    char *e = es_urlencode("a b/c+d~e.f_g-h%é", 0);
    assert_string_equal(e, "a%20b%2Fc%2Bd~e.f_g-h%25%C3%A9");
    free(e);
    e = es_urlencode("uploads/x y/1.csv", 1);
    assert_string_equal(e, "uploads/x%20y/1.csv");
    free(e);
    e = es_urlencode("", 0);
    assert_string_equal(e, "");
    free(e);
    assert_null(es_urlencode(NULL, 0));

    roundtrip("", 0);
    roundtrip("plain", 0);
    roundtrip("a b&c=d/e?f#g+h", 0);
    roundtrip("a b&c=d/e?f#g+h", 1);
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    roundtrip(all, 0);
    roundtrip(all, 1);
}

static void test_urldecode(void **state)
{
    (void)state;
    char *d = es_urldecode("a%20b+c%2b%2F", 13, 1);
    assert_string_equal(d, "a b c+/");
    free(d);
    d = es_urldecode("a+b", 3, 0);
    assert_string_equal(d, "a+b");
    free(d);
    /* only len bytes are read */
    d = es_urldecode("abc%41xyz", 6, 0);
    assert_string_equal(d, "abcA");
    free(d);
    d = es_urldecode("%e9%C3%a9", 9, 0);
    assert_string_equal(d, "\xe9\xc3\xa9");
    free(d);
    d = es_urldecode("", 0, 1);
    assert_string_equal(d, "");
    free(d);

    /* bad escapes */
    assert_null(es_urldecode("%", 1, 0));
    assert_null(es_urldecode("a%2", 3, 0));
    assert_null(es_urldecode("%zz", 3, 0));
    assert_null(es_urldecode("%2g", 3, 0));
    assert_null(es_urldecode("%g2", 3, 0));
    assert_null(es_urldecode("abc%41", 5, 0)); /* the escape cut by len */
    /* a NUL cannot be held by the result */
    assert_null(es_urldecode("a%00b", 5, 0));
    assert_null(es_urldecode("a\0b", 3, 0));
    assert_null(es_urldecode(NULL, 0, 0));
}

int main(void)
{
    es_log_set_level(ES_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_put_and_get),
        cmocka_unit_test(test_parameters_in_any_order_and_encoding),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_missing_and_duplicated),
        cmocka_unit_test(test_sign_refuses_bad_input),
        cmocka_unit_test(test_urlencode),
        cmocka_unit_test(test_urldecode),
    };
    return cmocka_run_group_tests_name("sign", tests, NULL, NULL);
}
