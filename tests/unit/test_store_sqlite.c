/* test_store_sqlite.c - what only the SQLite store has: its URL options and
 * the background checkpointer, which must copy the WAL back into the
 * database file well before a committer would have to (8x the threshold). */
#include "testutil.h"

#include <sys/stat.h>

#include "esteira/conf.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static void test_url_options(void **state)
{
    (void)state;
    es_log_set_level(ES_LOG_OFF);
    char *dir = test_tmpdir("squrl"), url[600];
    es_config cfg;
    es_config_defaults(&cfg);
    es_store *s = NULL;
    const char *bad[] = {"checkpoint_pages=0", "checkpoint_pages=x", "pool=0", "nosuch=1", "pool"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(url, sizeof url, "sqlite:%s/db?%s", dir, bad[i]);
        assert_int_equal(es_store_open(url, &cfg, &s), ES_EINVAL);
    }
    snprintf(url, sizeof url, "sqlite:%s/db?pool=2&busy_timeout=100&checkpoint_pages=32", dir);
    assert_int_equal(es_store_open(url, &cfg, &s), ES_OK);
    assert_int_equal(es_store_exec1(s, "SELECT 1", 0, NULL, NULL), ES_OK);
    es_store_close(s);
    es_config_finish(&cfg);
    test_rmdir(dir);
}

/* ~80 pages of WAL in 6 commits, with the checkpointer woken at 16 and
 * commits helping only at 128: the database file grows only if the
 * checkpointer's own connection really checkpoints. */
static void test_checkpointer(void **state)
{
    (void)state;
    es_log_set_level(ES_LOG_ERROR);
    char *dir = test_tmpdir("sqckpt"), url[700], db[600];
    snprintf(db, sizeof db, "%s/db", dir);
    snprintf(url, sizeof url, "sqlite:%s?checkpoint_pages=16", db);
    es_config cfg;
    es_config_defaults(&cfg);
    es_store *s = NULL;
    assert_int_equal(es_store_open(url, &cfg, &s), ES_OK);
    assert_int_equal(es_store_exec1(s, "CREATE TABLE t (a INTEGER, b BLOB)", 0, NULL, NULL), ES_OK);
    off_t before = file_size(db);
    for (int i = 0; i < 6; i++)
        assert_int_equal(es_store_exec1(s,
                                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1"
                                        " FROM c WHERE x < 50)"
                                        " INSERT INTO t SELECT x, randomblob(1000) FROM c",
                                        0, NULL, NULL),
                         ES_OK);
    off_t after = before;
    for (int waited = 0; waited < 5000 && after < 200 * 1024; waited += 20) {
        es_sleep_ms(20);
        after = file_size(db);
    }
    if (after < 200 * 1024)
        fail_msg("the database file is %lld bytes (%lld before): the WAL was not checkpointed",
                 (long long)after, (long long)before);
    es_store_close(s);
    es_config_finish(&cfg);
    test_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_url_options),
                                       cmocka_unit_test(test_checkpointer)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
