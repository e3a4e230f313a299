/* test_router.c - es_route_find and es_query_get. */
#include "testutil.h"

#include "esteira/err.h"
#include "esteira/http.h"

static int h_dummy(es_req *r)
{
    (void)r;
    return 0;
}

static const es_route routes[] = {
    {.method = "GET", .pattern = "/healthz", .scope = ES_SCOPE_PUBLIC, .handle = h_dummy},
    {.method = "GET", .pattern = "/v1/jobs", .scope = ES_SCOPE_READ, .handle = h_dummy},
    {.method = "GET", .pattern = "/v1/jobs/{id}", .scope = ES_SCOPE_READ, .handle = h_dummy},
    {.method = "POST",
     .pattern = "/v1/jobs/{id}/retry",
     .scope = ES_SCOPE_ADMIN,
     .handle = h_dummy},
    {.method = "DELETE", .pattern = "/v1/dlq/{id}", .scope = ES_SCOPE_ADMIN, .handle = h_dummy},
    {.method = "POST", .pattern = "/v1/uploads/{id}", .scope = ES_SCOPE_INGEST, .handle = h_dummy},
    {.method = "POST",
     .pattern = "/v1/uploads/presign",
     .scope = ES_SCOPE_INGEST,
     .handle = h_dummy},
    {.method = "GET",
     .pattern = "/v1/datasets/{name}/rows/{key}",
     .scope = ES_SCOPE_READ,
     .handle = h_dummy},
    {.method = "PUT", .pattern = "/blobs/{rest*}", .scope = ES_SCOPE_PUBLIC, .handle = h_dummy},
    {.method = "GET",
     .pattern = "/files/{id}/raw/{rest*}",
     .scope = ES_SCOPE_PUBLIC,
     .handle = h_dummy},
};
#define NROUTES (sizeof routes / sizeof routes[0])

static const char *param(const es_route_match *m, const char *name)
{
    for (int i = 0; i < m->nparams; i++)
        if (m->params[i].name_len == strlen(name) &&
            memcmp(m->params[i].name, name, m->params[i].name_len) == 0)
            return m->params[i].value;
    return NULL;
}

static void test_exact(void **st)
{
    (void)st;
    es_route_match m;
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/healthz", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[0]);
    assert_int_equal(m.nparams, 0);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[1]);
    /* no prefix or trailing-slash matches */
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs/", &m), ES_ENOTFOUND);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1", &m), ES_ENOTFOUND);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/healthzz", &m), ES_ENOTFOUND);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1//jobs", &m), ES_ENOTFOUND);
    assert_null(m.route);
    assert_false(m.method_mismatch);
}

static void test_params(void **st)
{
    (void)st;
    es_route_match m;
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs/abc-123", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[2]);
    assert_int_equal(m.nparams, 1);
    assert_string_equal(param(&m, "id"), "abc-123");

    assert_int_equal(es_route_find(routes, NROUTES, "POST", "/v1/jobs/j1/retry", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[3]);
    assert_string_equal(param(&m, "id"), "j1");

    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/datasets/debts/rows/k%2F1", &m),
                     ES_OK);
    assert_int_equal(m.nparams, 2);
    assert_string_equal(param(&m, "name"), "debts");
    assert_string_equal(param(&m, "key"), "k/1"); /* decoded, and one segment */
}

static void test_decoding(void **st)
{
    (void)st;
    es_route_match m;
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs/a%20b%C3%A9", &m), ES_OK);
    assert_string_equal(param(&m, "id"), "a b\xc3\xa9");
    /* '+' is a plus in a path */
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs/a+b", &m), ES_OK);
    assert_string_equal(param(&m, "id"), "a+b");
    /* encoded literal segments match their decoded form */
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/j%6Fbs", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[1]);
    /* a parameter that does not fit its 256-byte slot */
    char path[600] = "/v1/jobs/";
    memset(path + strlen(path), 'x', 300);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", path, &m), ES_EINVAL);
}

static void test_specific_wins(void **st)
{
    (void)st;
    es_route_match m;
    /* "/v1/uploads/{id}" comes first in the table, but the literal wins */
    assert_int_equal(es_route_find(routes, NROUTES, "POST", "/v1/uploads/presign", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[6]);
    assert_int_equal(m.nparams, 0);
    assert_int_equal(es_route_find(routes, NROUTES, "POST", "/v1/uploads/u1", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[5]);
}

static void test_rest(void **st)
{
    (void)st;
    es_route_match m;
    assert_int_equal(es_route_find(routes, NROUTES, "PUT", "/blobs/uploads/u1/source.csv", &m),
                     ES_OK);
    assert_ptr_equal(m.route, &routes[8]);
    assert_int_equal(m.nparams, 1);
    assert_int_equal(m.params[0].name_len, 4);
    assert_memory_equal(m.params[0].name, "rest", 4);
    assert_string_equal(m.params[0].value, "uploads/u1/source.csv");

    assert_int_equal(es_route_find(routes, NROUTES, "PUT", "/blobs/a%20b/c", &m), ES_OK);
    assert_string_equal(param(&m, "rest"), "a b/c");

    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/files/f1/raw/x/y/z", &m), ES_OK);
    assert_string_equal(param(&m, "id"), "f1");
    assert_string_equal(param(&m, "rest"), "x/y/z");

    /* {rest*} needs something to match */
    assert_int_equal(es_route_find(routes, NROUTES, "PUT", "/blobs/", &m), ES_ENOTFOUND);
    assert_int_equal(es_route_find(routes, NROUTES, "PUT", "/blobs", &m), ES_ENOTFOUND);
}

static void test_404_vs_405(void **st)
{
    (void)st;
    es_route_match m;
    assert_int_equal(es_route_find(routes, NROUTES, "POST", "/healthz", &m), ES_ENOTFOUND);
    assert_true(m.method_mismatch);
    assert_null(m.route);
    assert_int_equal(es_route_find(routes, NROUTES, "DELETE", "/v1/jobs/x", &m), ES_ENOTFOUND);
    assert_true(m.method_mismatch);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/nope", &m), ES_ENOTFOUND);
    assert_false(m.method_mismatch);
    assert_int_equal(es_route_find(routes, NROUTES, "GET", "/v1/jobs/x/retry", &m), ES_ENOTFOUND);
    assert_true(m.method_mismatch);
    /* HEAD is served by GET routes */
    assert_int_equal(es_route_find(routes, NROUTES, "HEAD", "/v1/jobs/x", &m), ES_OK);
    assert_ptr_equal(m.route, &routes[2]);
}

static void test_bad_paths(void **st)
{
    (void)st;
    es_route_match m;
    const char *bad[] = {
        "",
        "healthz",
        "/v1/jobs/%",
        "/v1/jobs/%4",
        "/v1/jobs/%zz",
        "/v1/jobs/a%00b",
        "/v1/jobs/..",
        "/v1/../healthz",
        "/blobs/a/../b",
        "/blobs/%2e%2e/secret",
        "/blobs/a%2F..%2Fb",
        "/blobs/./x",
        "/..",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m.method_mismatch = true;
        assert_int_equal(es_route_find(routes, NROUTES, "PUT", bad[i], &m), ES_EINVAL);
        assert_null(m.route);
    }
    /* dots inside a name are fine */
    assert_int_equal(es_route_find(routes, NROUTES, "PUT", "/blobs/a..b/.hidden/x.", &m), ES_OK);
    assert_string_equal(param(&m, "rest"), "a..b/.hidden/x.");

    /* 2048 bytes is the limit */
    /* exactly at the limit and unmatched: 404, not EINVAL */
    char edge[2049];
    edge[0] = '/';
    memset(edge + 1, 'b', 2047);
    edge[2048] = '\0';
    assert_int_equal(es_route_find(routes, NROUTES, "GET", edge, &m), ES_ENOTFOUND);
    char over[2050];
    over[0] = '/';
    memset(over + 1, 'b', 2048);
    over[2049] = '\0';
    assert_int_equal(es_route_find(routes, NROUTES, "GET", over, &m), ES_EINVAL);
}

static void test_query(void **st)
{
    (void)st;
    char out[16];
    const char *q = "dataset=debts&status=&flag&name=a%20b+c&x=%zz&limit=20&dataset=other";
    assert_int_equal(es_query_get(q, "dataset", out, sizeof out), ES_OK);
    assert_string_equal(out, "debts"); /* the first one wins */
    assert_int_equal(es_query_get(q, "status", out, sizeof out), ES_OK);
    assert_string_equal(out, "");
    assert_int_equal(es_query_get(q, "flag", out, sizeof out), ES_OK);
    assert_string_equal(out, "");
    assert_int_equal(es_query_get(q, "name", out, sizeof out), ES_OK);
    assert_string_equal(out, "a b c");
    assert_int_equal(es_query_get(q, "limit", out, sizeof out), ES_OK);
    assert_string_equal(out, "20");
    assert_int_equal(es_query_get(q, "x", out, sizeof out), ES_EINVAL);
    assert_int_equal(es_query_get(q, "missing", out, sizeof out), ES_ENOTFOUND);
    assert_int_equal(es_query_get(q, "data", out, sizeof out), ES_ENOTFOUND);
    assert_int_equal(es_query_get("", "a", out, sizeof out), ES_ENOTFOUND);
    assert_int_equal(es_query_get(NULL, "a", out, sizeof out), ES_ENOTFOUND);
    assert_int_equal(es_query_get("a=1", "", out, sizeof out), ES_ENOTFOUND);
    /* encoded keys, and an encoded '&' or '=' inside a value */
    assert_int_equal(es_query_get("user%5Fid=u%261%3D2", "user_id", out, sizeof out), ES_OK);
    assert_string_equal(out, "u&1=2");
    /* an encoded NUL is refused */
    assert_int_equal(es_query_get("a=x%00y", "a", out, sizeof out), ES_EINVAL);
    /* the value must fit, NUL included */
    assert_int_equal(es_query_get("a=0123456789abcde", "a", out, sizeof out), ES_OK);
    assert_string_equal(out, "0123456789abcde");
    assert_int_equal(es_query_get("a=0123456789abcdef", "a", out, sizeof out), ES_ELIMIT);
    assert_int_equal(es_query_get("a=%41%41", "a", out, 3), ES_OK);
    assert_string_equal(out, "AA");
    assert_int_equal(es_query_get("a=%41%41", "a", out, 2), ES_ELIMIT);
    assert_int_equal(es_query_get("a=1", "a", out, 0), ES_ELIMIT);
    /* a bad escape in another key does not hide the one asked for */
    assert_int_equal(es_query_get("b%zz=1&a=2", "a", out, sizeof out), ES_OK);
    assert_string_equal(out, "2");
    /* empty pairs */
    assert_int_equal(es_query_get("&&a=3&", "a", out, sizeof out), ES_OK);
    assert_string_equal(out, "3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exact),     cmocka_unit_test(test_params),
        cmocka_unit_test(test_decoding),  cmocka_unit_test(test_specific_wins),
        cmocka_unit_test(test_rest),      cmocka_unit_test(test_404_vs_405),
        cmocka_unit_test(test_bad_paths), cmocka_unit_test(test_query),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
