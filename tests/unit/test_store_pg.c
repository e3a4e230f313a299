/* test_store_pg.c - what only the PostgreSQL store has: its URLs and their
 * options, the bounded pool, the prepared-statement cache, the mapping of
 * SQLSTATEs, surviving sessions killed under it and a server restart, and
 * two timings (concurrent single-row inserts, a COPY of many rows).
 *
 * It runs against the first postgres:// or postgresql:// URL in
 * ESTEIRA_TEST_STORE_URLS and skips without one.  The restart test needs a
 * PostgreSQL of its own, which it stops and starts:
 *   ESTEIRA_TEST_PG_PRIVATE_URL=postgres://postgres@127.0.0.1:54339/app
 *   ESTEIRA_TEST_PG_PRIVATE_CTL="env SERVICES_DIR=/tmp/priv SERVICES_ONLY=postgres \
 *       SERVICES_PG_PORT=54339 scripts/services"      (run with start / stop appended)
 * ESTEIRA_TEST_PG_COPY_ROWS sets the size of the COPY timing (default 200000). */
#include "testutil.h"

#include <fcntl.h>
#include <pthread.h>

#include "backends/store/pg_binary.h"
#include "esteira/conf.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

static es_config g_cfg;
static char g_url[512]; /* the server under test */
static es_store *g_obs; /* an observer: kills sessions, counts them */
static char g_app[64];  /* application_name of this run's stores */

static const char *tbl(const char *suffix)
{
    static char name[4][64];
    static int next;
    char *n = name[next++ % 4];
    snprintf(n, sizeof name[0], "tpg_%d_%s", (int)getpid(), suffix);
    return n;
}

/* g_url with extra options appended */
static int open_with(const char *opts, es_store **s)
{
    char url[700];
    snprintf(url, sizeof url, "%s%s%s", g_url, strchr(g_url, '?') ? "&" : "?", opts);
    return es_store_open(url, &g_cfg, s);
}

static void exec_ok(es_store *s, const char *sql, int n, const char *const *p)
{
    int rc = es_store_exec1(s, sql, n, p, NULL);
    if (rc != ES_OK) fail_msg("%s: %s", sql, es_strerror(rc));
}

static void sqlf(es_store *s, const char *fmt, const char *table)
{
    char sql[512];
    snprintf(sql, sizeof sql, fmt, table, table);
    exec_ok(s, sql, 0, NULL);
}

static int64_t query_int(es_store *s, es_store_conn *c, const char *sql, int n,
                         const char *const *p)
{
    es_rows *r = NULL;
    int rc = c ? es_store_exec(c, sql, n, p, &r) : es_store_exec1(s, sql, n, p, &r);
    if (rc != ES_OK) fail_msg("%s: %s", sql, es_strerror(rc));
    assert_int_equal(es_rows_count(r), 1);
    int64_t v = es_rows_int(r, 0, 0, -1);
    es_rows_free(r);
    return v;
}

static int64_t backend_pid(es_store *s, es_store_conn *c)
{
    return query_int(s, c, "SELECT pg_backend_pid()", 0, NULL);
}

/* Ends a session from outside, and waits until it is really gone. */
static void terminate(int64_t pid)
{
    char p[24];
    snprintf(p, sizeof p, "%lld", (long long)pid);
    const char *params[] = {p};
    assert_int_equal(
        query_int(g_obs, NULL, "SELECT CAST(pg_terminate_backend($1) AS int)", 1, params), 1);
    for (int i = 0; i < 200; i++) {
        if (query_int(g_obs, NULL, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", 1,
                      params) == 0)
            return;
        es_sleep_ms(10);
    }
    fail_msg("session %s still there", p);
}

static int64_t sessions_named(const char *app)
{
    const char *p[] = {app};
    return query_int(g_obs, NULL,
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", 1, p);
}

/* Sessions end asynchronously after their client leaves: wait for the count. */
static void wait_sessions(const char *app, int64_t want)
{
    int64_t n = -1;
    for (int i = 0; i < 300 && n != want; i++) {
        if (i) es_sleep_ms(10);
        n = sessions_named(app);
    }
    assert_int_equal(n, want);
}

/* ---- URLs */

static int g_logfd = -1;
static char g_logpath[256];

static void log_capture(void)
{
    snprintf(g_logpath, sizeof g_logpath, "/tmp/esteira-test-pg-log-%d", (int)getpid());
    g_logfd = open(g_logpath, O_CREAT | O_TRUNC | O_RDWR, 0600);
    assert_true(g_logfd >= 0);
    es_log_set_fd(g_logfd);
}

/* Stops capturing; returns what was logged (caller frees). */
static char *log_captured(void)
{
    es_log_set_fd(-1); /* back to stderr */
    off_t n = lseek(g_logfd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(pread(g_logfd, buf, (size_t)n, 0), n);
    close(g_logfd);
    unlink(g_logpath);
    g_logfd = -1;
    return buf;
}

/* host:port/db of g_url, to build URLs with other credentials */
static const char *url_hostpart(void)
{
    const char *p = strstr(g_url, "://") + 3;
    const char *at = strchr(p, '@');
    return at ? at + 1 : p;
}

static void test_pg_urls(void **state)
{
    (void)state;
    es_store *s = NULL;
    /* both schemes */
    char url[700];
    const char *rest = strstr(g_url, "://");
    snprintf(url, sizeof url, "postgresql%s", rest);
    assert_int_equal(es_store_open(url, &g_cfg, &s), ES_OK);
    assert_string_equal(es_store_name(s), "postgres");
    assert_int_equal(es_store_dialect(s), ES_DIALECT_PG);
    assert_int_equal(es_store_ping(s), ES_OK);
    es_store_close(s);
    snprintf(url, sizeof url, "postgres%s", rest);
    /* esteira's options are taken out; libpq's stay */
    char opts[128];
    snprintf(opts, sizeof opts, "pool=2&application_name=%s_urls&connect_retry=2s", g_app);
    assert_int_equal(open_with(opts, &s), ES_OK);
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(s, "SHOW application_name", 0, NULL, &r), ES_OK);
    char want[80];
    snprintf(want, sizeof want, "%s_urls", g_app);
    assert_string_equal(es_rows_get(r, 0, 0), want);
    es_rows_free(r);
    /* values travel as UTF-8 whatever the URL says */
    assert_int_equal(es_store_exec1(s, "SHOW client_encoding", 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "UTF8");
    es_rows_free(r);
    es_store_close(s);

    /* refused at once */
    s = (es_store *)&s;
    assert_int_equal(open_with("pool=0", &s), ES_EINVAL);
    assert_null(s);
    assert_int_equal(open_with("pool=lots", &s), ES_EINVAL);
    assert_int_equal(open_with("connect_retry=soon", &s), ES_EINVAL);
    assert_int_equal(open_with("colour=red", &s), ES_EINVAL); /* libpq does not know it */
    assert_int_equal(es_store_open("postgresx://localhost/db", &g_cfg, &s), ES_EINVAL);

    /* a server that answers and refuses is not waited for, and the password
     * never reaches the log */
    log_capture();
    snprintf(url, sizeof url, "postgres://postgres:hunter2secret@%s", url_hostpart());
    char *q = strchr(url, '?');
    if (q) *q = '\0';
    char *slash = strrchr(url, '/');
    snprintf(slash, sizeof url - (size_t)(slash - url), "/no_such_db_%d", (int)getpid());
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_store_open(url, &g_cfg, &s), ES_EBACKEND);
    assert_true(es_mono_ms() - t0 < 2000);
    char *logged = log_captured();
    assert_non_null(strstr(logged, "no_such_db_"));
    assert_non_null(strstr(logged, "postgres://postgres@"));
    assert_null(strstr(logged, "hunter2secret"));
    free(logged);

    /* nobody listening: retried for connect_retry, then ES_EAGAIN */
    t0 = es_mono_ms();
    assert_int_equal(
        es_store_open("postgres://postgres@127.0.0.1:9/app?connect_retry=400ms", &g_cfg, &s),
        ES_EAGAIN);
    int64_t took = es_mono_ms() - t0;
    assert_true(took >= 300 && took < 3000);
}

/* ---- the pool */

typedef struct waiter {
    es_store *s;
    es_store_conn *got;
    int rc;
    int64_t waited_ms;
} waiter;

static void *acquire_waiter(void *p)
{
    waiter *w = p;
    int64_t t0 = es_mono_ms();
    w->rc = es_store_acquire(w->s, &w->got);
    w->waited_ms = es_mono_ms() - t0;
    return NULL;
}

static void test_pool_bound(void **state)
{
    (void)state;
    char app[80], opts[128];
    snprintf(app, sizeof app, "%s_pool", g_app);
    snprintf(opts, sizeof opts, "pool=2&application_name=%s", app);
    es_store *s = NULL;
    assert_int_equal(open_with(opts, &s), ES_OK);
    wait_sessions(app, 1); /* opened with one, to check the URL */
    es_store_conn *a, *b;
    assert_int_equal(es_store_acquire(s, &a), ES_OK);
    assert_int_equal(es_store_acquire(s, &b), ES_OK);
    assert_int_not_equal(backend_pid(s, a), backend_pid(s, b));
    wait_sessions(app, 2);

    /* a third user waits for one of the two */
    waiter w = {.s = s};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, acquire_waiter, &w), 0);
    es_sleep_ms(300);
    assert_null(w.got);
    int64_t pid_b = backend_pid(s, b);
    es_store_release(b);
    pthread_join(th, NULL);
    assert_int_equal(w.rc, ES_OK);
    assert_true(w.waited_ms >= 250);
    assert_int_equal(backend_pid(s, w.got), pid_b); /* the same session, reused */
    wait_sessions(app, 2);

    /* a broken connection's slot is freed: the next acquire opens anew */
    es_store_conn_broken(w.got);
    es_store_release(w.got);
    wait_sessions(app, 1);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    assert_int_not_equal(backend_pid(s, c), pid_b);
    es_store_release(c);
    es_store_release(a);
    es_store_close(s);
    wait_sessions(app, 0);
}

/* ---- statements */

static void test_stmt_cache(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=1", &s), ES_OK);
    /* more distinct statements than the cache holds, twice: the evicted ones
     * are prepared again and still answer right */
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 150; i++) {
            char sql[64], want[16], p[8];
            snprintf(sql, sizeof sql, "SELECT %d + CAST($1 AS bigint)", i);
            snprintf(want, sizeof want, "%d", i + round);
            snprintf(p, sizeof p, "%d", round);
            const char *params[] = {p};
            es_rows *r = NULL;
            assert_int_equal(es_store_exec1(s, sql, 1, params, &r), ES_OK);
            assert_string_equal(es_rows_get(r, 0, 0), want);
            es_rows_free(r);
        }
    /* evicted statements are deallocated on the server: the cache's bound
     * is the session's bound */
    int64_t n = query_int(s, NULL, "SELECT count(*) FROM pg_prepared_statements", 0, NULL);
    assert_true(n > 0 && n <= 64);

    /* a repeated statement is prepared once */
    const char *one[] = {"1"};
    int64_t before = query_int(s, NULL, "SELECT count(*) FROM pg_prepared_statements", 0, NULL);
    for (int i = 0; i < 3; i++)
        exec_ok(s, "SELECT CAST($1 AS int) + 100", 1, one);
    int64_t after = query_int(s, NULL, "SELECT count(*) FROM pg_prepared_statements", 0, NULL);
    assert_true(after == before + 1 || (before == 64 && after == 64));

    /* one statement per exec; the parameters given must be the ones used */
    assert_int_equal(es_store_exec1(s, "SELECT 1; SELECT 2", 0, NULL, NULL), ES_EINVAL);
    assert_int_equal(es_store_exec1(s, "SELECT CAST($1 AS int); SELECT 2", 1, one, NULL),
                     ES_EINVAL);
    assert_int_equal(es_store_exec1(s, "SELECT 1", 1, one, NULL), ES_EINVAL);
    assert_int_equal(es_store_exec1(s, "SELECT CAST($1 AS int)", 0, NULL, NULL), ES_EINVAL);
    assert_int_equal(es_store_exec1(s, "  ", 0, NULL, NULL), ES_EINVAL);
    /* COPY is copy_in's */
    assert_int_equal(es_store_exec1(s, "COPY (SELECT 1) TO STDOUT", 0, NULL, NULL), ES_EINVAL);
    /* and after all that, the one connection is fine */
    assert_int_equal(query_int(s, NULL, "SELECT CAST($1 AS int) + 1", 1, one), 2);
    es_store_close(s);
}

/* A table changing shape under a cached statement: re-prepared, not an
 * error, outside a transaction. */
static void test_stale_statement(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=1", &s), ES_OK);
    const char *t = tbl("stale");
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    sqlf(s, "CREATE TABLE %s (id bigint PRIMARY KEY, a text)", t);
    sqlf(s, "INSERT INTO %s (id, a) VALUES (1, 'x')", t);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT * FROM %s WHERE id = $1", t);
    const char *id[] = {"1"};
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(s, sql, 1, id, &r), ES_OK);
    assert_int_equal(es_rows_ncols(r), 2);
    es_rows_free(r);
    sqlf(s, "ALTER TABLE %s ADD COLUMN b text DEFAULT 'new'", t);
    assert_int_equal(es_store_exec1(s, sql, 1, id, &r), ES_OK);
    assert_int_equal(es_rows_ncols(r), 3);
    assert_string_equal(es_rows_get(r, 0, 2), "new");
    es_rows_free(r);

    /* inside a transaction the first run fails (the transaction is lost
     * anyway), and the statement works again afterwards */
    sqlf(s, "ALTER TABLE %s ADD COLUMN c text DEFAULT 'newer'", t);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_not_equal(es_store_exec(c, sql, 1, id, NULL), ES_OK);
    assert_int_equal(es_store_rollback(c), ES_OK);
    assert_int_equal(es_store_exec(c, sql, 1, id, &r), ES_OK);
    assert_int_equal(es_rows_ncols(r), 4);
    es_rows_free(r);
    es_store_release(c);
    sqlf(s, "DROP TABLE %s", t);
    es_store_close(s);
}

static void test_error_mapping(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=3", &s), ES_OK);
    const char *p = tbl("par"), *ch = tbl("chi");
    char sql[512];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s; DROP TABLE IF EXISTS %s;", ch, p);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    assert_int_equal(es_store_exec_script(c, sql), ES_OK);
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (id bigint PRIMARY KEY, n bigint NOT NULL CHECK (n >= 0));"
             "CREATE TABLE %s (pid bigint REFERENCES %s (id));"
             "INSERT INTO %s (id, n) VALUES (1, 1);",
             p, ch, p, p);
    assert_int_equal(es_store_exec_script(c, sql), ES_OK);
    es_store_release(c);

    const char *dup[] = {"1", "5"}, *neg[] = {"2", "-1"}, *null[] = {"3", NULL},
               *word[] = {"x", "1"}, *orphan[] = {"99"};
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, n) VALUES ($1, $2)", p);
    assert_int_equal(es_store_exec1(s, sql, 2, dup, NULL), ES_ECONFLICT); /* 23505 */
    assert_int_equal(es_store_exec1(s, sql, 2, neg, NULL), ES_EINVAL);    /* 23514 */
    assert_int_equal(es_store_exec1(s, sql, 2, null, NULL), ES_EINVAL);   /* 23502 */
    assert_int_equal(es_store_exec1(s, sql, 2, word, NULL), ES_EINVAL);   /* 22P02 */
    snprintf(sql, sizeof sql, "INSERT INTO %s (pid) VALUES ($1)", ch);
    assert_int_equal(es_store_exec1(s, sql, 1, orphan, NULL), ES_EINVAL);          /* 23503 */
    assert_int_equal(es_store_exec1(s, "SELECT 1 / 0", 0, NULL, NULL), ES_EINVAL); /* 22012 */
    assert_int_equal(es_store_exec1(s, "SELECT * FROM nowhere_at_all", 0, NULL, NULL),
                     ES_EINVAL); /* 42P01 */

    /* a serialization failure may be retried: ES_EAGAIN */
    es_store_conn *a, *b;
    assert_int_equal(es_store_acquire(s, &a), ES_OK);
    assert_int_equal(es_store_acquire(s, &b), ES_OK);
    assert_int_equal(es_store_begin(a), ES_OK);
    assert_int_equal(
        es_store_exec(a, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", 0, NULL, NULL), ES_OK);
    snprintf(sql, sizeof sql, "SELECT n FROM %s WHERE id = 1", p);
    assert_int_equal(query_int(s, a, sql, 0, NULL), 1); /* the snapshot is taken */
    snprintf(sql, sizeof sql, "UPDATE %s SET n = n + 1 WHERE id = $1", p);
    const char *one[] = {"1"};
    assert_int_equal(es_store_exec(b, sql, 1, one, NULL), ES_OK);
    assert_int_equal(es_store_exec(a, sql, 1, one, NULL), ES_EAGAIN); /* 40001 */
    assert_int_equal(es_store_rollback(a), ES_OK);
    /* neither connection was dropped for it */
    int64_t pa = backend_pid(s, a), pb = backend_pid(s, b);
    es_store_release(a);
    es_store_release(b);
    assert_int_equal(es_store_acquire(s, &a), ES_OK);
    assert_int_equal(es_store_acquire(s, &b), ES_OK);
    int64_t qa = backend_pid(s, a), qb = backend_pid(s, b);
    assert_true((qa == pa && qb == pb) || (qa == pb && qb == pa));
    es_store_release(a);
    es_store_release(b);

    snprintf(sql, sizeof sql, "DROP TABLE %s; DROP TABLE %s;", ch, p);
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    assert_int_equal(es_store_exec_script(c, sql), ES_OK);
    es_store_release(c);
    es_store_close(s);
}

/* ---- sessions that die */

static void test_killed_sessions(void **state)
{
    (void)state;
    char app[80], opts[128];
    snprintf(app, sizeof app, "%s_kill", g_app);
    snprintf(opts, sizeof opts, "pool=1&application_name=%s", app);
    es_store *s = NULL;
    assert_int_equal(open_with(opts, &s), ES_OK);

    /* an idle pooled session killed: the next user does not notice */
    int64_t pid1 = backend_pid(s, NULL);
    terminate(pid1);
    int64_t pid2 = backend_pid(s, NULL);
    assert_int_not_equal(pid1, pid2);

    /* killed while in use: that statement fails as a backend error, the
     * connection is dropped, the next acquire has a fresh one */
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(backend_pid(s, c), pid2);
    terminate(pid2);
    assert_int_equal(es_store_exec(c, "SELECT 1", 0, NULL, NULL), ES_EBACKEND);
    es_store_release(c);
    int64_t pid3 = backend_pid(s, NULL);
    assert_int_not_equal(pid3, pid2);

    /* a session ending itself (57P01) */
    assert_int_equal(
        es_store_exec1(s, "SELECT pg_terminate_backend(pg_backend_pid())", 0, NULL, NULL),
        ES_EBACKEND);
    assert_int_not_equal(backend_pid(s, NULL), pid3);
    assert_int_equal(es_store_ping(s), ES_OK);
    wait_sessions(app, 1);
    es_store_close(s);
}

/* ---- copy_in */

static void test_copy_in_tx(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=2", &s), ES_OK);
    const char *t = tbl("copytx");
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    sqlf(s, "CREATE TABLE %s (id bigint PRIMARY KEY, v text)", t);
    const char *cols[] = {"id", "v"};
    const char *data = "1\ta\n2\tb\n3\tno newline at the end";
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    /* in the caller's transaction: gone with its rollback */
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 2, data, strlen(data)), ES_OK);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", t);
    assert_int_equal(query_int(s, c, sql, 0, NULL), 3);
    assert_int_equal(query_int(s, NULL, sql, 0, NULL), 0); /* not visible outside yet */
    assert_int_equal(es_store_rollback(c), ES_OK);
    assert_int_equal(query_int(s, c, sql, 0, NULL), 0);
    /* bad names are refused before anything is sent */
    const char *bad[] = {"id", "v; DROP TABLE x"};
    assert_int_equal(es_store_copy_in(c, t, bad, NULL, 2, data, strlen(data)), ES_EINVAL);
    assert_int_equal(es_store_copy_in(c, "Robert'); --", cols, NULL, 2, data, strlen(data)),
                     ES_EINVAL);
    /* an unknown table */
    assert_int_equal(es_store_copy_in(c, "no_such_table_here", cols, NULL, 2, data, strlen(data)),
                     ES_EINVAL);
    /* empty input is fine */
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 2, "", 0), ES_OK);
    /* on its own: committed */
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 2, data, strlen(data)), ES_OK);
    es_store_release(c);
    snprintf(sql, sizeof sql, "SELECT v FROM %s WHERE id = 3", t);
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(s, sql, 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "no newline at the end");
    es_rows_free(r);
    sqlf(s, "DROP TABLE %s", t);
    es_store_close(s);
}

/* Typed columns go in PostgreSQL's binary format: every value must come out
 * exactly as the same rows sent as text make it, NULLs and escapes included.
 * Values without a binary form here (a zone offset, a braced UUID) make the
 * load go as text, and still load. */
static const char *const typed_rows =
    "1\t-2147483648\t-9223372036854775808\t0\ttrue\t0001-01-01\t"
    "0001-01-01T00:00:00.000Z\t00000000-0000-0000-0000-000000000000\tnull\ta\\tb\\nc\\\\d\n"
    "2\t2147483647\t9223372036854775807\t-0.00\tfalse\t9999-12-31\t"
    "9999-12-31T23:59:59.999Z\tFFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF\t{\"a\":[1,2.50,\"\\\\t\"]}"
    "\t\xc3\xa9t\xc3\xa9 \xe2\x82\xac\n"
    "3\t0\t0\t1000000.00\tt\t2000-01-01\t2000-01-01T00:00:00Z\t"
    "8b9d2434e4654150bd9c66b3ad3c2d6d\t\"text\"\t\n"
    "4\t-1\t-1\t-7811\tf\t1999-12-31\t1999-12-31T23:59:59.5Z\t"
    "386ecbe0-6b65-46a4-8b81-48f6b38a088c\t[]\t\\N\n"
    "5\t\\N\t\\N\t0.0001\t\\N\t2024-02-29\t1970-01-01T00:00:00.000001Z\t\\N\t\\N\tx\n"
    "6\t42\t42\t123456789012345678901234567890.123456789\tfalse\t1969-07-20\t"
    "2023-03-01 12:34:56.789Z\t386ECBE0-6B65-46A4-8B81-48F6B38A088C\t1.5e10\t\\x41\\101\n"
    "7\t7\t7\t-0.5\ttrue\t2023-02-28\t2023-02-28T23:00:00.120Z\t"
    "00000000-0000-4000-8000-000000000001\t{}\t\n";

static const es_copy_type typed_types[] = {
    ES_COPY_INT8, ES_COPY_INT4,        ES_COPY_INT8, ES_COPY_NUMERIC, ES_COPY_BOOL,
    ES_COPY_DATE, ES_COPY_TIMESTAMPTZ, ES_COPY_UUID, ES_COPY_JSONB,   ES_COPY_TEXT,
};

static const char *const typed_cols[] = {"id", "i4", "i8", "num", "b", "d", "ts", "u", "j", "t"};

static void make_typed(es_store *s, const char *t)
{
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    sqlf(s,
         "CREATE TABLE %s (id bigint PRIMARY KEY, i4 integer, i8 bigint, num numeric, b boolean,"
         " d date, ts timestamptz, u uuid, j jsonb, t text)",
         t);
}

/* Every row of a, as text, the same in b (the server's own spelling of
 * each value, in the session's zone) */
static void assert_same_rows(es_store *s, const char *a, const char *b, int want)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM %s x FULL JOIN %s y ON x.id = y.id"
             " WHERE CAST(x.* AS text) IS DISTINCT FROM CAST(y.* AS text)",
             a, b);
    assert_int_equal(query_int(s, NULL, sql, 0, NULL), 0);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", b);
    assert_int_equal(query_int(s, NULL, sql, 0, NULL), want);
}

static void test_copy_binary(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=2", &s), ES_OK);
    const char *text = tbl("bintext"), *bin = tbl("binbin");
    make_typed(s, text);
    make_typed(s, bin);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    size_t len = strlen(typed_rows);
    assert_int_equal(es_store_copy_in(c, text, typed_cols, NULL, 10, typed_rows, len), ES_OK);
    /* the binary form exists for every value here: the load goes binary */
    assert_int_equal(es_pgbin_encode(typed_types, 10, typed_rows, len, NULL, NULL, NULL), ES_OK);
    assert_int_equal(es_store_copy_in(c, bin, typed_cols, typed_types, 10, typed_rows, len), ES_OK);
    assert_same_rows(s, text, bin, 7);
    /* a few spot checks, so the comparison above compares something */
    es_rows *r = NULL;
    char sql[256];
    snprintf(
        sql, sizeof sql,
        "SELECT num::text, d::text, to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'),"
        " u::text, j::text, t FROM %s ORDER BY id",
        bin);
    assert_int_equal(es_store_exec1(s, sql, 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "0");
    assert_string_equal(es_rows_get(r, 1, 0), "0.00");
    assert_string_equal(es_rows_get(r, 2, 0), "1000000.00");
    assert_string_equal(es_rows_get(r, 3, 0), "-7811");
    assert_string_equal(es_rows_get(r, 5, 0), "123456789012345678901234567890.123456789");
    assert_string_equal(es_rows_get(r, 6, 0), "-0.5");
    assert_string_equal(es_rows_get(r, 4, 1), "2024-02-29");
    assert_string_equal(es_rows_get(r, 3, 2), "1999-12-31 23:59:59.500000");
    assert_string_equal(es_rows_get(r, 4, 2), "1970-01-01 00:00:00.000001");
    assert_string_equal(es_rows_get(r, 5, 3), "386ecbe0-6b65-46a4-8b81-48f6b38a088c");
    assert_string_equal(es_rows_get(r, 1, 4), "{\"a\": [1, 2.50, \"\\t\"]}");
    assert_string_equal(es_rows_get(r, 0, 5), "a\tb\nc\\d");
    assert_string_equal(es_rows_get(r, 1, 5), "\xc3\xa9t\xc3\xa9 \xe2\x82\xac");
    assert_null(es_rows_get(r, 3, 5));
    assert_string_equal(es_rows_get(r, 5, 5), "AA");
    es_rows_free(r);

    /* merge: the same rows again insert nothing, new ones go in */
    int64_t n = -1;
    assert_int_equal(es_store_copy_merge(c, bin, typed_cols, typed_types, 10, typed_rows, len, &n),
                     ES_OK);
    assert_int_equal(n, 0);
    const char *more = "8\t1\t1\t1.25\tt\t2020-01-01\t2020-01-01T00:00:00.000Z\t\\N\t1\tnew\n"
                       "1\t1\t1\t1\tt\t2020-01-01\t2020-01-01T00:00:00.000Z\t\\N\t1\tdup\n";
    assert_int_equal(
        es_store_copy_merge(c, bin, typed_cols, typed_types, 10, more, strlen(more), &n), ES_OK);
    assert_int_equal(n, 1);

    /* no binary form (a zone offset, a braced UUID): sent as text, loaded */
    const char *odd = "9\t1\t1\t1\tt\t2020-01-01\t2020-01-01T02:00:00+02:00\t"
                      "{386ecbe0-6b65-46a4-8b81-48f6b38a088c}\t1\todd\n";
    size_t bad = 0;
    assert_int_equal(es_pgbin_encode(typed_types, 10, odd, strlen(odd), NULL, NULL, &bad),
                     ES_EINVAL);
    assert_int_equal(bad, 1);
    assert_int_equal(es_store_copy_in(c, bin, typed_cols, typed_types, 10, odd, strlen(odd)),
                     ES_OK);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE ts = '2020-01-01T00:00:00Z'", bin);
    assert_int_equal(query_int(s, c, sql, 0, NULL), 2);
    /* a merge finds out while sending: it starts again in text, on its own
     * and inside the caller's transaction */
    const char *odd2 = "11\t1\t1\t1\tt\t2020-01-01\t2020-01-01T02:00:00+02:00\t\\N\t1\todd\n"
                       "9\t1\t1\t1\tt\t2020-01-01\t2020-01-01T00:00:00.000Z\t\\N\t1\tdup\n";
    assert_int_equal(
        es_store_copy_merge(c, bin, typed_cols, typed_types, 10, odd2, strlen(odd2), &n), ES_OK);
    assert_int_equal(n, 1);
    const char *odd3 = "12\t1\t1\t1\tt\t2020-01-01\t2020-01-01T00:00:00.000Z\t\\N\t1\tx\n"
                       "13\t1\t1\t1\tt\t2020-01-01\t2020-01-01T03:00:00+03:00\t\\N\t1\ty\n";
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(
        es_store_copy_merge(c, bin, typed_cols, typed_types, 10, odd3, strlen(odd3), &n), ES_OK);
    assert_int_equal(n, 2);
    assert_int_equal(es_store_commit(c), ES_OK);
    assert_int_equal(query_int(s, c, sql, 0, NULL), 5);
    /* a value the server refuses fails the load, as in text */
    const char *wrong = "10\t99999999999\t1\t1\tt\t2020-01-01\t2020-01-01T00:00:00Z\t\\N\t1\tx\n";
    assert_int_not_equal(
        es_store_copy_in(c, bin, typed_cols, typed_types, 10, wrong, strlen(wrong)), ES_OK);
    es_store_release(c);
    sqlf(s, "DROP TABLE %s", text);
    sqlf(s, "DROP TABLE %s", bin);
    es_store_close(s);
}

/* ---- timings (printed, not bounds: machines differ) */

#define THREADS 4

typedef struct ins_arg {
    es_store *s;
    const char *sql;
    int from, n, failures;
} ins_arg;

static void *insert_rows(void *p)
{
    ins_arg *a = p;
    for (int i = a->from; i < a->from + a->n; i++) {
        char id[24];
        snprintf(id, sizeof id, "%d", i);
        const char *params[] = {id, "some value"};
        if (es_store_exec1(a->s, a->sql, 2, params, NULL) != ES_OK) a->failures++;
    }
    return NULL;
}

static void test_timing_inserts(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_with("pool=4", &s), ES_OK);
    const char *t = tbl("ins");
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    sqlf(s, "CREATE TABLE %s (id bigint PRIMARY KEY, v text)", t);
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2)", t);
    enum { N = 10000 };
    pthread_t th[THREADS];
    ins_arg args[THREADS];
    int64_t t0 = es_mono_us();
    for (int i = 0; i < THREADS; i++) {
        args[i] = (ins_arg){.s = s, .sql = sql, .from = i * (N / THREADS), .n = N / THREADS};
        assert_int_equal(pthread_create(&th[i], NULL, insert_rows, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    int64_t us = es_mono_us() - t0;
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(args[i].failures, 0);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", t);
    assert_int_equal(query_int(s, NULL, sql, 0, NULL), N);
    printf("# postgres: %d single-row INSERT+commit via es_store_exec1, %d threads: %.0f ms "
           "(%.0f/s)\n",
           N, THREADS, us / 1000.0, N * 1e6 / (double)(us ? us : 1));
    sqlf(s, "DROP TABLE %s", t);
    es_store_close(s);
}

static void test_timing_copy(void **state)
{
    (void)state;
    int64_t rows = 200000;
    const char *env = getenv("ESTEIRA_TEST_PG_COPY_ROWS");
    if (env && *env) assert_int_equal(es_parse_i64(env, 1, 100000000, &rows), ES_OK);
    es_store *s = NULL;
    assert_int_equal(open_with("pool=2", &s), ES_OK);
    const char *t = tbl("copy6");
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (id uuid PRIMARY KEY, name text, email text, amount numeric(12,2),"
             " due bigint, note text)",
             t);
    exec_ok(s, sql, 0, NULL);
    const char *cols[] = {"id", "name", "email", "amount", "due", "note"};
    es_store_conn *c;
    assert_int_equal(es_store_acquire(s, &c), ES_OK);
    /* batches of at most 1 MB, as an importer fills a bounded buffer, all
     * in one transaction */
    es_buf b;
    es_buf_init(&b, 1 << 20);
    char line[512];
    int64_t bytes = 0, batches = 0, gen_us = 0;
    int64_t t0 = es_mono_us();
    assert_int_equal(es_store_begin(c), ES_OK);
    for (int64_t i = 0; i < rows; i++) {
        int64_t g0 = es_mono_us();
        char id[ES_UUID_LEN + 1];
        es_uuid7(id);
        int n = snprintf(line, sizeof line,
                         "%s\tcustomer %lld\tc%lld@example.com\t%lld.%02lld\t%lld\t%s\n", id,
                         (long long)i, (long long)i, (long long)(i % 100000), (long long)(i % 100),
                         (long long)(1700000000000LL + i), i % 7 ? "tab\\there" : "\\N");
        gen_us += es_mono_us() - g0;
        if (es_buf_append(&b, line, (size_t)n) == ES_ELIMIT) {
            assert_int_equal(es_store_copy_in(c, t, cols, NULL, 6, b.data, b.len), ES_OK);
            bytes += (int64_t)b.len;
            batches++;
            es_buf_reset(&b);
            assert_int_equal(es_buf_append(&b, line, (size_t)n), ES_OK);
        }
    }
    if (b.len) {
        assert_int_equal(es_store_copy_in(c, t, cols, NULL, 6, b.data, b.len), ES_OK);
        bytes += (int64_t)b.len;
        batches++;
    }
    assert_int_equal(es_store_commit(c), ES_OK);
    int64_t us = es_mono_us() - t0;
    es_buf_finish(&b);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", t);
    assert_int_equal(query_int(s, c, sql, 0, NULL), rows);
    snprintf(sql, sizeof sql, "SELECT count(*) FROM %s WHERE note = 'tab' || chr(9) || 'here'", t);
    assert_int_equal(query_int(s, c, sql, 0, NULL), rows - (rows + 6) / 7);
    es_store_release(c);
    printf("# postgres: copy_in %lld rows x 6 columns (%.1f MB, %lld batches of <= 1 MB, one "
           "transaction): %.0f ms (%.0f rows/s; generating the rows took %.0f ms of it)\n",
           (long long)rows, bytes / 1048576.0, (long long)batches, us / 1000.0,
           rows * 1e6 / (double)(us ? us : 1), gen_us / 1000.0);
    sqlf(s, "DROP TABLE %s", t);
    es_store_close(s);
}

/* ---- a server restart (a private server: this stops it) */

static char g_ctl[1024];

static int ctl(const char *what)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>&1", g_ctl, what);
    return system(cmd);
}

static void *start_later(void *p)
{
    (void)p;
    es_sleep_ms(1000);
    int rc = ctl("start");
    return (void *)(intptr_t)rc;
}

static void test_restart(void **state)
{
    (void)state;
    const char *url = getenv("ESTEIRA_TEST_PG_PRIVATE_URL");
    char full[700];
    snprintf(full, sizeof full, "%s%spool=4&connect_retry=5s", url, strchr(url, '?') ? "&" : "?");
    es_store *s = NULL;
    assert_int_equal(ctl("start"), 0);
    assert_int_equal(es_store_open(full, &g_cfg, &s), ES_OK);
    const char *t = tbl("restart");
    sqlf(s, "DROP TABLE IF EXISTS %s", t);
    sqlf(s, "CREATE TABLE %s (id bigint PRIMARY KEY)", t);
    char ins[128], cnt[128];
    snprintf(ins, sizeof ins, "INSERT INTO %s (id) VALUES ($1)", t);
    snprintf(cnt, sizeof cnt, "SELECT count(*) FROM %s", t);
    const char *one[] = {"1"}, *two[] = {"2"}, *three[] = {"3"};
    exec_ok(s, ins, 1, one);
    /* four sessions in the pool, one of them held across the restart */
    es_store_conn *cs[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(es_store_acquire(s, &cs[i]), ES_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(query_int(s, cs[i], cnt, 0, NULL), 1);
    for (int i = 1; i < 4; i++)
        es_store_release(cs[i]);

    assert_int_equal(ctl("stop"), 0);
    /* the held connection fails as a backend error and is dropped */
    assert_int_equal(es_store_exec(cs[0], cnt, 0, NULL, NULL), ES_EBACKEND);
    es_store_release(cs[0]);
    /* while the server is down: retried for connect_retry, then ES_EAGAIN */
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_store_exec1(s, ins, 1, two, NULL), ES_EAGAIN);
    int64_t waited = es_mono_ms() - t0;
    printf("# postgres down: es_store_exec1 gave up after %lld ms\n", (long long)waited);
    assert_true(waited >= 4000 && waited < 9000);
    /* a readiness probe is answered now, not after connect_retry */
    t0 = es_mono_ms();
    assert_int_equal(es_store_ping(s), ES_EAGAIN);
    assert_true(es_mono_ms() - t0 < 1000);

    /* the server comes back a second later, while this call is waiting */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, start_later, NULL), 0);
    t0 = es_mono_ms();
    int rc = es_store_exec1(s, ins, 1, three, NULL);
    int64_t back = es_mono_ms() - t0;
    void *started;
    pthread_join(th, &started);
    assert_int_equal((int)(intptr_t)started, 0);
    assert_int_equal(rc, ES_OK);
    printf("# postgres restarted: es_store_exec1 waited %lld ms and succeeded\n", (long long)back);
    /* every pooled connection works again; the data is there */
    for (int i = 0; i < 4; i++)
        assert_int_equal(es_store_acquire(s, &cs[i]), ES_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(query_int(s, cs[i], cnt, 0, NULL), 2);
    for (int i = 0; i < 4; i++)
        es_store_release(cs[i]);
    assert_int_equal(es_store_ping(s), ES_OK);

    /* and a restart between two requests costs the caller nothing: the
     * idle sessions heard the shutdown and are replaced on acquire */
    assert_int_equal(ctl("stop"), 0);
    assert_int_equal(ctl("start"), 0);
    for (int i = 0; i < 4; i++)
        assert_int_equal(es_store_acquire(s, &cs[i]), ES_OK);
    for (int i = 0; i < 4; i++)
        assert_int_equal(query_int(s, cs[i], cnt, 0, NULL), 2);
    for (int i = 0; i < 4; i++)
        es_store_release(cs[i]);
    sqlf(s, "DROP TABLE %s", t);
    es_store_close(s);
}

int main(void)
{
    if (!getenv("ESTEIRA_TEST_LOG")) es_log_set_level(ES_LOG_ERROR);
    char urls[8][512];
    int n = test_urls("ESTEIRA_TEST_STORE_URLS", "", urls, 8);
    for (int i = 0; i < n && !g_url[0]; i++)
        if (strncmp(urls[i], "postgres://", 11) == 0 || strncmp(urls[i], "postgresql://", 13) == 0)
            es_strlcpy(g_url, urls[i], sizeof g_url);
    if (!g_url[0]) {
        printf("# test_store_pg: skipped (no postgres:// URL in ESTEIRA_TEST_STORE_URLS)\n");
        return 0;
    }
    if (es_config_defaults(&g_cfg) != ES_OK) return 1;
    snprintf(g_app, sizeof g_app, "esteira_test_%d", (int)getpid());
    if (es_store_open(g_url, &g_cfg, &g_obs) != ES_OK) {
        fprintf(stderr, "cannot open the store\n");
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pg_urls),        cmocka_unit_test(test_pool_bound),
        cmocka_unit_test(test_stmt_cache),     cmocka_unit_test(test_stale_statement),
        cmocka_unit_test(test_error_mapping),  cmocka_unit_test(test_killed_sessions),
        cmocka_unit_test(test_copy_in_tx),     cmocka_unit_test(test_copy_binary),
        cmocka_unit_test(test_timing_inserts), cmocka_unit_test(test_timing_copy),
    };
    int failed = cmocka_run_group_tests_name("store postgres", tests, NULL, NULL);
    const char *priv = getenv("ESTEIRA_TEST_PG_PRIVATE_URL");
    const char *pctl = getenv("ESTEIRA_TEST_PG_PRIVATE_CTL");
    if (priv && *priv && pctl && *pctl) {
        snprintf(g_ctl, sizeof g_ctl, "%s", pctl);
        const struct CMUnitTest restart[] = {cmocka_unit_test(test_restart)};
        failed += cmocka_run_group_tests_name("store postgres restart", restart, NULL, NULL);
    } else {
        printf("# test_store_pg: restart test skipped (set ESTEIRA_TEST_PG_PRIVATE_URL and "
               "ESTEIRA_TEST_PG_PRIVATE_CTL)\n");
    }
    es_store_close(g_obs);
    es_config_finish(&g_cfg);
    return failed ? 1 : 0;
}
