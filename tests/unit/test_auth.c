/* test_auth.c - API keys: create, check, scopes, revoke, open mode. */
#include "testutil.h"

#include "esteira/auth.h"
#include "esteira/err.h"
#include "esteira/http.h"
#include "esteira/log.h"

static void test_scopes(void **state)
{
    (void)state;
    unsigned s;
    const char *bad = NULL;
    assert_int_equal(es_scopes_parse("ingest,read", &s, &bad), ES_OK);
    assert_int_equal(s, ES_SCOPE_INGEST | ES_SCOPE_READ);
    assert_int_equal(es_scopes_parse("all", &s, &bad), ES_OK);
    assert_int_equal(s, ES_SCOPE_ALL);
    assert_int_equal(es_scopes_parse("read,delete", &s, &bad), ES_EINVAL);
    assert_string_equal(bad, "delete");
    assert_int_equal(es_scopes_parse("", &s, &bad), ES_EINVAL);
    char out[64];
    es_scopes_format(ES_SCOPE_READ | ES_SCOPE_FILES, out, sizeof out);
    assert_string_equal(out, "read,files");
}

static void test_keys(void **state)
{
    (void)state;
    es_log_set_level(ES_LOG_ERROR);
    char *dir = test_tmpdir("auth"), url[512];
    snprintf(url, sizeof url, "sqlite:%s/db", dir);
    es_config cfg;
    es_config_defaults(&cfg);
    es_store *s = NULL;
    assert_int_equal(es_store_open(url, &cfg, &s), ES_OK);
    assert_int_equal(es_store_migrate(s, NULL), ES_OK);

    es_principal p;
    int64_t n = -1;
    assert_int_equal(es_keys_count(s, &n), ES_OK);
    assert_int_equal(n, 0);
    /* open mode: no header is tenant "default" with every scope; closed: refused */
    assert_int_equal(es_auth_check(s, NULL, true, &p), ES_OK);
    assert_true(p.anonymous);
    assert_string_equal(p.tenant, ES_DEFAULT_TENANT);
    assert_int_equal(p.scopes, ES_SCOPE_ALL);
    assert_int_equal(es_auth_check(s, NULL, false, &p), ES_EAUTH);

    char *token = NULL, id[40], hdr[256];
    assert_int_equal(es_keys_create(s, "acme", ES_SCOPE_READ, "ci", &token, id), ES_OK);
    assert_int_equal(strncmp(token, "es_", 3), 0);
    snprintf(hdr, sizeof hdr, "Bearer %s", token);
    assert_int_equal(es_auth_check(s, hdr, false, &p), ES_OK);
    assert_string_equal(p.tenant, "acme");
    assert_int_equal(p.scopes, ES_SCOPE_READ);
    assert_false(p.anonymous);

    /* the secret is not stored */
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(s, "SELECT secret_hash FROM api_keys", 0, NULL, &r), ES_OK);
    assert_null(strstr(token, es_rows_get(r, 0, 0)));
    assert_null(strstr(es_rows_get(r, 0, 0), token + 20));
    es_rows_free(r);

    /* a changed secret, a wrong scheme, garbage: refused */
    char bad[256];
    snprintf(bad, sizeof bad, "Bearer %s", token);
    bad[strlen(bad) - 1] ^= 1;
    assert_int_equal(es_auth_check(s, bad, false, &p), ES_EAUTH);
    assert_int_equal(es_auth_check(s, "Basic dXNlcjpwYXNz", false, &p), ES_EAUTH);
    assert_int_equal(es_auth_check(s, "Bearer es_zzzz", false, &p), ES_EAUTH);
    assert_int_equal(es_auth_check(s, "Bearer ", false, &p), ES_EAUTH);
    /* a header is checked even in open mode */
    assert_int_equal(es_auth_check(s, bad, true, &p), ES_EAUTH);

    json_t *list = NULL;
    assert_int_equal(es_keys_list(s, &list), ES_OK);
    char *dump = json_dumps(list, 0);
    assert_null(strstr(dump, token + 20)); /* never the secret */
    assert_non_null(strstr(dump, "acme"));
    free(dump);
    json_decref(list);

    assert_int_equal(es_keys_revoke(s, id), ES_OK);
    assert_int_equal(es_keys_revoke(s, id), ES_ENOTFOUND);
    assert_int_equal(es_auth_check(s, hdr, false, &p), ES_EAUTH);
    assert_int_equal(es_keys_create(s, "Bad Tenant", ES_SCOPE_READ, NULL, &token, id), ES_EINVAL);

    free(token);
    es_store_close(s);
    es_config_finish(&cfg);
    test_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_scopes), cmocka_unit_test(test_keys)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
