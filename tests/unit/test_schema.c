/* test_schema.c - migrations: idempotent, and safe when processes race. */
#include "testutil.h"

#include <sys/wait.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

static void test_concurrent_migrations(void **state)
{
    (void)state;
    es_log_set_level(getenv("ESTEIRA_TEST_LOG") ? ES_LOG_DEBUG : ES_LOG_OFF);
    char *dir = test_tmpdir("schema"), url[512];
    snprintf(url, sizeof url, "sqlite:%s/db", dir);
    enum { PROCS = 8 };
    pid_t pids[PROCS];
    int gate[2];
    assert_int_equal(pipe(gate), 0);
    for (int i = 0; i < PROCS; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            close(gate[1]);
            es_config cfg;
            es_config_defaults(&cfg);
            es_store *s = NULL;
            int rc = es_store_open(url, &cfg, &s);
            char c;
            if (read(gate[0], &c, 1) < 0) _exit(2); /* everyone starts together: EOF */
            if (!rc) rc = es_store_migrate(s, NULL);
            es_store_close(s);
            _exit(rc == ES_OK ? 0 : 1);
        }
    }
    es_sleep_ms(200); /* let every child open the store */
    close(gate[0]);
    close(gate[1]);
    for (int i = 0; i < PROCS; i++) {
        int st = 0;
        assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    es_config cfg;
    es_config_defaults(&cfg);
    es_store *s = NULL;
    assert_int_equal(es_store_open(url, &cfg, &s), ES_OK);
    int applied = -1;
    assert_int_equal(es_store_migrate(s, &applied), ES_OK);
    assert_int_equal(applied, 0); /* nothing left to do */
    es_rows *r = NULL;
    assert_int_equal(
        es_store_exec1(s, "SELECT COUNT(*), MIN(version) FROM schema_migrations", 0, NULL, &r),
        ES_OK);
    assert_true(es_rows_int(r, 0, 0, 0) >= 2);
    assert_int_equal(es_rows_int(r, 0, 1, 0), 1);
    es_rows_free(r);
    es_store_close(s);
    es_config_finish(&cfg);
    test_rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_concurrent_migrations)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
