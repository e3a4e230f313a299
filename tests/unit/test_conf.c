/* test_conf.c - the settings table: defaults, .env, environment, flags, errors. */
#include "testutil.h"

#include "esteira/conf.h"
#include "esteira/err.h"

static void clear_env(void)
{
    size_t n;
    const es_conf_entry *t = es_conf_table(&n);
    for (size_t i = 0; i < n; i++) {
        char name[80] = "ESTEIRA_";
        for (size_t k = 0; t[i].name[k]; k++)
            name[8 + k] =
                (char)(t[i].name[k] - (t[i].name[k] >= 'a' && t[i].name[k] <= 'z' ? 32 : 0)),
                     name[9 + k] = 0;
        unsetenv(name);
    }
    unsetenv("ESTEIRA_ENV_FILE");
    /* no stray ./.env: work in an empty directory */
    static char *empty;
    if (!empty) empty = test_tmpdir("conf-cwd");
    assert_int_equal(chdir(empty), 0);
}

static void test_defaults(void **state)
{
    (void)state;
    es_config c;
    assert_int_equal(es_config_defaults(&c), ES_OK);
    assert_string_equal(c.database_url, "sqlite:./esteira-data/esteira.db");
    assert_string_equal(c.broker_url, "local:./esteira-data/queue");
    assert_string_equal(c.host, "127.0.0.1");
    assert_int_equal(c.port, 8080);
    assert_int_equal(c.max_body, 1 << 20);
    assert_int_equal(c.job_backoff_cap_ms, 300000);
    es_config_finish(&c);
}

static void test_precedence(void **state)
{
    (void)state;
    clear_env();
    char *dir = test_tmpdir("conf");
    char path[512];
    snprintf(path, sizeof path, "%s/.env", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "# comment\nexport ESTEIRA_PORT=7000\nESTEIRA_HTTP_THREADS = \"6\"\n"
               "ESTEIRA_DATA_DIR=/srv/data # inline comment\nOTHER_TOOL=ignored\n");
    fclose(f);
    setenv("ESTEIRA_ENV_FILE", path, 1);
    setenv("ESTEIRA_HTTP_THREADS", "8", 1); /* environment beats .env */
    char *argv[] = {"--http-threads=9", "--max-body", "2MB"};
    es_config c;
    char err[256];
    assert_int_equal(es_config_load(&c, 3, argv, err, sizeof err), ES_OK);
    assert_int_equal(c.port, 7000);      /* .env */
    assert_int_equal(c.http_threads, 9); /* flag beats environment */
    assert_int_equal(c.max_body, 2 << 20);
    /* defaults derived from data_dir follow it */
    assert_string_equal(c.database_url, "sqlite:/srv/data/esteira.db");
    assert_string_equal(c.blob_url, "file:/srv/data/blobs");
    es_config_finish(&c);
    unsetenv("ESTEIRA_HTTP_THREADS");
    test_rmdir(dir);
}

static void test_errors_name_the_setting(void **state)
{
    (void)state;
    clear_env();
    es_config c;
    char err[256];
    setenv("ESTEIRA_PORT", "eighty", 1);
    assert_int_equal(es_config_load(&c, 0, NULL, err, sizeof err), ES_EINVAL);
    assert_non_null(strstr(err, "ESTEIRA_PORT"));
    es_config_finish(&c);
    unsetenv("ESTEIRA_PORT");

    /* an env file named explicitly must exist */
    setenv("ESTEIRA_ENV_FILE", "/nonexistent/.env", 1);
    assert_int_equal(es_config_load(&c, 0, NULL, err, sizeof err), ES_EIO);
    assert_non_null(strstr(err, "/nonexistent/.env"));
    es_config_finish(&c);
    unsetenv("ESTEIRA_ENV_FILE");

    char *bad_flag[] = {"--no-such-setting=1"};
    assert_int_equal(es_config_load(&c, 1, bad_flag, err, sizeof err), ES_EINVAL);
    assert_non_null(strstr(err, "no-such-setting"));
    es_config_finish(&c);

    char *bad_enum[] = {"--auth=maybe"};
    assert_int_equal(es_config_load(&c, 1, bad_enum, err, sizeof err), ES_EINVAL);
    assert_non_null(strstr(err, "auth"));
    es_config_finish(&c);

    char *bad_range[] = {"--port=70000"};
    assert_int_equal(es_config_load(&c, 1, bad_range, err, sizeof err), ES_EINVAL);
    es_config_finish(&c);

    /* a bad .env line is reported with its line number */
    char *dir = test_tmpdir("conf");
    char path[512];
    snprintf(path, sizeof path, "%s/.env", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "ESTEIRA_PORT=1\nESTEIRA_MAX_BODY=lots\n");
    fclose(f);
    setenv("ESTEIRA_ENV_FILE", path, 1);
    assert_int_equal(es_config_load(&c, 0, NULL, err, sizeof err), ES_EINVAL);
    assert_non_null(strstr(err, ":2:"));
    assert_non_null(strstr(err, "max_body"));
    es_config_finish(&c);
    test_rmdir(dir);
}

static void test_print_masks_secrets(void **state)
{
    (void)state;
    clear_env();
    es_config c;
    char err[256];
    char *argv[] = {"--database-url=postgres://app:hunter2@db/app", "--secret=s3cr3t",
                    "--token=es_x_y"};
    assert_int_equal(es_config_load(&c, 3, argv, err, sizeof err), ES_OK);
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    es_config_print(&c, f);
    fclose(f);
    assert_null(strstr(out, "hunter2"));
    assert_null(strstr(out, "s3cr3t"));
    assert_null(strstr(out, "es_x_y"));
    assert_non_null(strstr(out, "ESTEIRA_DATABASE_URL=postgres://app:***@db/app"));
    assert_non_null(strstr(out, "ESTEIRA_BROKER_URL=local:")); /* no secret in it: shown */
    assert_non_null(strstr(out, "ESTEIRA_CACHE_URL=local:"));
    free(out);
    es_config_finish(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_errors_name_the_setting),
        cmocka_unit_test(test_print_masks_secrets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
