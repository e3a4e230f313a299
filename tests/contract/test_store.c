/* test_store.c - the store contract, run against every URL in
 * ESTEIRA_TEST_STORE_URLS (space-separated; default: SQLite in a fresh
 * temporary directory), then the parts only the embedded backend has (its
 * URLs, its write gate, its statement cache) and the result type itself.
 *
 * Only SQL that SQLite and PostgreSQL both accept is used, tables are named
 * after the process id so runs never meet, and every test drops its tables. */
#include "testutil.h"

#include <pthread.h>
#include <sys/stat.h>

#include "esteira/conf.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

static es_config g_cfg;
static es_store *g_store;
static const char *g_url;
static int g_url_idx;

/* "t_<pid>_<url>_<suffix>": unique per run and per backend */
static const char *tbl(const char *suffix)
{
    static char name[4][64];
    static int next;
    char *n = name[next++ % 4];
    snprintf(n, sizeof name[0], "t_%d_%d_%s", (int)getpid(), g_url_idx, suffix);
    return n;
}

static void exec_ok(es_store_conn *c, const char *sql, int n, const char *const *params)
{
    int rc = es_store_exec(c, sql, n, params, NULL);
    if (rc != ES_OK) fail_msg("%s: %s", sql, es_strerror(rc));
}

static void exec1_ok(const char *sql, int n, const char *const *params)
{
    int rc = es_store_exec1(g_store, sql, n, params, NULL);
    if (rc != ES_OK) fail_msg("%s: %s", sql, es_strerror(rc));
}

static void sqlf_exec1(const char *fmt, const char *table)
{
    char sql[512];
    snprintf(sql, sizeof sql, fmt, table);
    exec1_ok(sql, 0, NULL);
}

static void create(const char *table, const char *cols)
{
    char sql[512];
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", table);
    exec1_ok(sql, 0, NULL);
    snprintf(sql, sizeof sql, "CREATE TABLE %s (%s)", table, cols);
    exec1_ok(sql, 0, NULL);
}

static void drop(const char *table)
{
    sqlf_exec1("DROP TABLE IF EXISTS %s", table);
}

static int64_t count_rows(es_store_conn *c, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT CAST(count(*) AS bigint) AS n FROM %s", table);
    es_rows *r = NULL;
    int rc = c ? es_store_exec(c, sql, 0, NULL, &r) : es_store_exec1(g_store, sql, 0, NULL, &r);
    assert_int_equal(rc, ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    int64_t n = es_rows_int(r, 0, 0, -1);
    es_rows_free(r);
    return n;
}

/* ---- per-URL group */

static int group_setup(void **state)
{
    (void)state;
    if (es_store_open(g_url, &g_cfg, &g_store) != ES_OK) {
        fprintf(stderr, "cannot open store %s\n", g_url);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    es_store_close(g_store);
    g_store = NULL;
    return 0;
}

static void test_ping_and_name(void **state)
{
    (void)state;
    assert_int_equal(es_store_ping(g_store), ES_OK);
    const char *name = es_store_name(g_store);
    assert_non_null(name);
    if (strncmp(g_url, "sqlite:", 7) == 0) {
        assert_string_equal(name, "sqlite");
        assert_int_equal(es_store_dialect(g_store), ES_DIALECT_SQLITE);
    } else {
        assert_int_equal(es_store_dialect(g_store), ES_DIALECT_PG);
    }
}

static void test_roundtrip_values(void **state)
{
    (void)state;
    const char *t = tbl("vals");
    create(t, "id bigint PRIMARY KEY, name text, note text, n bigint");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, name, note, n) VALUES ($1, $2, $3, $4)", t);
    const char *rows[][4] = {
        {"1", "plain", "", "42"},                               /* empty string, not NULL */
        {"2", "ação café 日本語 🚀", NULL, "-9007199254740993"}, /* NULL, beyond double */
        {"3", "tab\there\nnewline 'quote' \"dq\" \\", "x", NULL},
        {"4", "$1 and ?1 are text", "9223372036854775807", "9223372036854775807"},
    };
    es_rows *r = NULL;
    for (size_t i = 0; i < ES_ARRAY_LEN(rows); i++) {
        assert_int_equal(es_store_exec1(g_store, sql, 4, rows[i], &r), ES_OK);
        assert_int_equal(es_rows_affected(r), 1);
        assert_int_equal(es_rows_count(r), 0);
        es_rows_free(r);
    }

    snprintf(sql, sizeof sql, "SELECT id, name, note, n FROM %s ORDER BY id", t);
    assert_int_equal(es_store_exec1(g_store, sql, 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 4);
    assert_int_equal(es_rows_ncols(r), 4);
    assert_string_equal(es_rows_colname(r, 0), "id");
    assert_string_equal(es_rows_colname(r, 3), "n");
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            const char *want = rows[i][j], *got = es_rows_get(r, i, j);
            if (!want) {
                assert_null(got);
            } else {
                assert_non_null(got);
                assert_string_equal(got, want);
            }
        }
    assert_int_equal(es_rows_int(r, 0, 3, -1), 42);
    assert_int_equal(es_rows_int(r, 1, 3, 0), -9007199254740993LL);
    assert_int_equal(es_rows_int(r, 3, 3, 0), INT64_MAX);
    assert_int_equal(es_rows_int(r, 2, 3, 7), 7); /* NULL -> default */
    assert_int_equal(es_rows_int(r, 0, 1, 7), 7); /* not a number -> default */
    assert_int_equal(es_rows_int(r, 9, 0, 7), 7); /* out of range -> default */
    assert_null(es_rows_get(r, 4, 0));
    assert_null(es_rows_get(r, 0, 4));
    es_rows_free(r);

    /* a parameter compared with a column, and NULL compared with IS NULL */
    snprintf(sql, sizeof sql, "SELECT name FROM %s WHERE id = $1", t);
    const char *two[] = {"2"};
    assert_int_equal(es_store_exec1(g_store, sql, 1, two, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    assert_string_equal(es_rows_get(r, 0, 0), "ação café 日本語 🚀");
    es_rows_free(r);
    snprintf(sql, sizeof sql, "SELECT id FROM %s WHERE note IS NULL OR n IS NULL ORDER BY id", t);
    assert_int_equal(es_store_exec1(g_store, sql, 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 2);
    assert_string_equal(es_rows_get(r, 0, 0), "2");
    assert_string_equal(es_rows_get(r, 1, 0), "3");
    es_rows_free(r);
    drop(t);
}

static void test_affected_counts(void **state)
{
    (void)state;
    const char *t = tbl("aff");
    create(t, "id bigint PRIMARY KEY, grp text");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, grp) VALUES ($1, $2)", t);
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", i);
        const char *p[] = {id, i < 6 ? "a" : "b"};
        exec1_ok(sql, 2, p);
    }
    es_rows *r = NULL;
    snprintf(sql, sizeof sql, "UPDATE %s SET grp = $1 WHERE grp = $2", t);
    const char *ab[] = {"c", "a"};
    assert_int_equal(es_store_exec1(g_store, sql, 2, ab, &r), ES_OK);
    assert_int_equal(es_rows_affected(r), 6);
    es_rows_free(r);
    /* nothing matches */
    assert_int_equal(es_store_exec1(g_store, sql, 2, ab, &r), ES_OK);
    assert_int_equal(es_rows_affected(r), 0);
    es_rows_free(r);
    snprintf(sql, sizeof sql, "DELETE FROM %s WHERE id >= CAST($1 AS bigint)", t);
    const char *seven[] = {"7"};
    assert_int_equal(es_store_exec1(g_store, sql, 1, seven, &r), ES_OK);
    assert_int_equal(es_rows_affected(r), 3);
    es_rows_free(r);
    /* DDL after DML reports no rows, not the last DML's count */
    char sql2[256];
    snprintf(sql2, sizeof sql2, "CREATE INDEX %s_grp ON %s (grp)", t, t);
    assert_int_equal(es_store_exec1(g_store, sql2, 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_affected(r), 0);
    es_rows_free(r);
    assert_int_equal(count_rows(NULL, t), 7);
    drop(t);
}

static void test_returning(void **state)
{
    (void)state;
    const char *t = tbl("ret");
    create(t, "id bigint PRIMARY KEY, name text, attempts bigint NOT NULL DEFAULT 0");
    char sql[256];
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (id, name) VALUES ($1, $2) RETURNING id, name, attempts", t);
    const char *p[] = {"10", "ten"};
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(g_store, sql, 2, p, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    assert_int_equal(es_rows_ncols(r), 3);
    assert_int_equal(es_rows_affected(r), 1);
    assert_string_equal(es_rows_get(r, 0, 0), "10");
    assert_string_equal(es_rows_get(r, 0, 1), "ten");
    assert_int_equal(es_rows_int(r, 0, 2, -1), 0);
    es_rows_free(r);

    snprintf(sql, sizeof sql,
             "UPDATE %s SET attempts = attempts + 1 WHERE id = $1 RETURNING attempts", t);
    const char *id[] = {"10"};
    for (int i = 1; i <= 3; i++) {
        assert_int_equal(es_store_exec1(g_store, sql, 1, id, &r), ES_OK);
        assert_int_equal(es_rows_count(r), 1);
        assert_int_equal(es_rows_int(r, 0, 0, -1), i);
        es_rows_free(r);
    }
    const char *none[] = {"11"};
    assert_int_equal(es_store_exec1(g_store, sql, 1, none, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 0);
    assert_int_equal(es_rows_affected(r), 0);
    es_rows_free(r);
    drop(t);
}

static void test_tx_commit_visible(void **state)
{
    (void)state;
    const char *t = tbl("txc");
    create(t, "id bigint PRIMARY KEY");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id) VALUES ($1)", t);
    es_store_conn *a, *b;
    assert_int_equal(es_store_acquire(g_store, &a), ES_OK);
    assert_int_equal(es_store_acquire(g_store, &b), ES_OK);
    assert_int_equal(es_store_begin(a), ES_OK);
    const char *p1[] = {"1"}, *p2[] = {"2"};
    exec_ok(a, sql, 1, p1);
    exec_ok(a, sql, 1, p2);
    assert_int_equal(count_rows(a, t), 2); /* its own writes */
    assert_int_equal(count_rows(b, t), 0); /* not yet anyone else's */
    assert_int_equal(es_store_commit(a), ES_OK);
    assert_int_equal(count_rows(b, t), 2);
    /* commit without a transaction is refused */
    assert_int_not_equal(es_store_commit(a), ES_OK);
    es_store_release(b);
    es_store_release(a);
    assert_int_equal(count_rows(NULL, t), 2);
    drop(t);
}

static void test_tx_rollback_discarded(void **state)
{
    (void)state;
    const char *t = tbl("txr");
    create(t, "id bigint PRIMARY KEY");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id) VALUES ($1)", t);
    const char *p1[] = {"1"}, *p2[] = {"2"};
    exec1_ok(sql, 1, p1);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_equal(es_store_begin(c), ES_OK);
    exec_ok(c, sql, 1, p2);
    char del[256];
    snprintf(del, sizeof del, "DELETE FROM %s WHERE id = $1", t);
    exec_ok(c, del, 1, p1);
    assert_int_equal(count_rows(c, t), 1);
    assert_int_equal(es_store_rollback(c), ES_OK);
    es_rows *r = NULL;
    char sel[256];
    snprintf(sel, sizeof sel, "SELECT id FROM %s", t);
    assert_int_equal(es_store_exec(c, sel, 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    assert_string_equal(es_rows_get(r, 0, 0), "1");
    es_rows_free(r);
    es_store_release(c);
    drop(t);
}

/* A connection given back mid-transaction must not carry it (or its locks)
 * to the next user: the work is rolled back. */
static void test_release_in_tx_rolls_back(void **state)
{
    (void)state;
    const char *t = tbl("txl");
    create(t, "id bigint PRIMARY KEY");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id) VALUES ($1)", t);
    const char *p1[] = {"1"}, *p2[] = {"2"};
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_equal(es_store_begin(c), ES_OK);
    exec_ok(c, sql, 1, p1);
    es_store_release(c);
    assert_int_equal(count_rows(NULL, t), 0);
    /* and every connection of the pool can still write */
    es_store_conn *cs[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(es_store_acquire(g_store, &cs[i]), ES_OK);
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof id, "%d", 10 + i);
        const char *p[] = {id};
        exec_ok(cs[i], sql, 1, p);
    }
    for (int i = 0; i < 4; i++)
        es_store_release(cs[i]);
    exec1_ok(sql, 1, p2);
    assert_int_equal(count_rows(NULL, t), 5);
    drop(t);
}

static void test_unique_conflict(void **state)
{
    (void)state;
    const char *t = tbl("uniq");
    create(t, "id bigint PRIMARY KEY, email text UNIQUE");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, email) VALUES ($1, $2)", t);
    const char *a[] = {"1", "a@x"}, *same_id[] = {"1", "b@x"}, *same_email[] = {"2", "a@x"};
    exec1_ok(sql, 2, a);
    assert_int_equal(es_store_exec1(g_store, sql, 2, same_id, NULL), ES_ECONFLICT);
    assert_int_equal(es_store_exec1(g_store, sql, 2, same_email, NULL), ES_ECONFLICT);
    /* inside a transaction too, and the transaction can still be rolled back */
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(es_store_exec(c, sql, 2, same_id, NULL), ES_ECONFLICT);
    assert_int_equal(es_store_rollback(c), ES_OK);
    es_store_release(c);
    assert_int_equal(count_rows(NULL, t), 1);
    drop(t);
}

static void test_bad_sql(void **state)
{
    (void)state;
    es_rows *r = (es_rows *)&r; /* must be reset to NULL on failure */
    assert_int_equal(es_store_exec1(g_store, "SELEC 1", 0, NULL, &r), ES_EINVAL);
    assert_null(r);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT * FROM %s", tbl("does_not_exist"));
    assert_int_equal(es_store_exec1(g_store, sql, 0, NULL, NULL), ES_EINVAL);
    /* a failed statement leaves the connection usable */
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_not_equal(es_store_exec(c, "SELECT nope FROM", 0, NULL, NULL), ES_OK);
    assert_int_equal(es_store_exec(c, "SELECT 1", 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "1");
    es_rows_free(r);
    es_store_release(c);
    /* a parameter referenced but not given */
    const char *one[] = {"1"};
    assert_int_not_equal(
        es_store_exec1(g_store, "SELECT CAST($1 AS text), CAST($2 AS text)", 1, one, NULL), ES_OK);
}

static void test_params_out_of_order(void **state)
{
    (void)state;
    es_rows *r = NULL;
    const char *p[] = {"first", "second"};
    assert_int_equal(
        es_store_exec1(g_store, "SELECT CAST($2 AS text) AS b, CAST($1 AS text) AS a", 2, p, &r),
        ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    assert_string_equal(es_rows_get(r, 0, 0), "second");
    assert_string_equal(es_rows_get(r, 0, 1), "first");
    es_rows_free(r);

    /* used twice, and with $1 last */
    assert_int_equal(
        es_store_exec1(g_store, "SELECT CAST($2 AS text) || CAST($2 AS text) || CAST($1 AS text)",
                       2, p, &r),
        ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "secondsecondfirst");
    es_rows_free(r);

    const char *t = tbl("ooo");
    create(t, "id bigint PRIMARY KEY, name text");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (name, id) VALUES ($2, $1)", t);
    const char *q[] = {"5", "five"};
    exec1_ok(sql, 2, q);
    snprintf(sql, sizeof sql, "SELECT id, name FROM %s", t);
    assert_int_equal(es_store_exec1(g_store, sql, 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "5");
    assert_string_equal(es_rows_get(r, 0, 1), "five");
    es_rows_free(r);
    drop(t);
}

/* $n inside literals, quoted identifiers and comments is not a parameter. */
static void test_placeholder_like_text(void **state)
{
    (void)state;
    es_rows *r = NULL;
    const char *p[] = {"v"};
    assert_int_equal(es_store_exec1(g_store,
                                    "SELECT '$1' AS \"$2\", /* $3 */ CAST($1 AS text) AS p, "
                                    "'it''s $2' AS q -- $4\n",
                                    1, p, &r),
                     ES_OK);
    assert_int_equal(es_rows_count(r), 1);
    assert_string_equal(es_rows_colname(r, 0), "$2");
    assert_string_equal(es_rows_get(r, 0, 0), "$1");
    assert_string_equal(es_rows_get(r, 0, 1), "v");
    assert_string_equal(es_rows_get(r, 0, 2), "it's $2");
    es_rows_free(r);
}

static void test_exec_script(void **state)
{
    (void)state;
    const char *t = tbl("scr");
    drop(t);
    char sql[512];
    snprintf(sql, sizeof sql,
             "CREATE TABLE %s (id bigint PRIMARY KEY, v text);\n"
             "-- a comment; with a semicolon\n"
             "INSERT INTO %s (id, v) VALUES (1, 'a;b');\n"
             "INSERT INTO %s (id, v) VALUES (2, 'c');\n",
             t, t, t);
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_equal(es_store_exec_script(c, sql), ES_OK);
    assert_int_equal(count_rows(c, t), 2);
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES (3, 'x'); SELEC broken;", t);
    assert_int_not_equal(es_store_exec_script(c, sql), ES_OK);
    es_store_release(c);
    drop(t);
}

static const char *const copy_vals[] = {
    "plain",
    "",
    "tab\tin the middle",
    "new\nline",
    "carriage\rreturn",
    "back\\slash",
    "\\N",
    "\\.",
    "ação 日本語 🚀",
    "trailing backslash\\",
};

static void test_copy_in_roundtrip(void **state)
{
    (void)state;
    const char *t = tbl("copy");
    create(t, "id bigint PRIMARY KEY, a text, b text");
    enum { N = ES_ARRAY_LEN(copy_vals) };
    es_buf b;
    es_buf_init(&b, 0);
    for (int i = 0; i < N; i++) {
        char id[16];
        int idn = snprintf(id, sizeof id, "%d", i);
        assert_int_equal(es_copy_field(&b, id, (size_t)idn, false), ES_OK);
        assert_int_equal(es_copy_field(&b, copy_vals[i], strlen(copy_vals[i]), false), ES_OK);
        if (i % 3 == 0)
            assert_int_equal(es_copy_null(&b, true), ES_OK);
        else
            assert_int_equal(
                es_copy_field(&b, copy_vals[N - 1 - i], strlen(copy_vals[N - 1 - i]), true), ES_OK);
    }
    const char *cols[] = {"id", "a", "b"};
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 3, b.data, b.len), ES_OK);
    /* and inside a transaction, committed */
    assert_int_equal(es_store_begin(c), ES_OK);
    const char *more = "100\tx\t\\N\n101\t\\\\N\ty\n";
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 3, more, strlen(more)), ES_OK);
    assert_int_equal(es_store_commit(c), ES_OK);
    es_store_release(c);
    es_buf_finish(&b);

    es_rows *r = NULL;
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT id, a, b FROM %s ORDER BY id", t);
    assert_int_equal(es_store_exec1(g_store, sql, 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_count(r), N + 2);
    for (int i = 0; i < N; i++) {
        assert_int_equal(es_rows_int(r, i, 0, -1), i);
        assert_string_equal(es_rows_get(r, i, 1), copy_vals[i]);
        if (i % 3 == 0)
            assert_null(es_rows_get(r, i, 2));
        else
            assert_string_equal(es_rows_get(r, i, 2), copy_vals[N - 1 - i]);
    }
    assert_string_equal(es_rows_get(r, N, 1), "x");
    assert_null(es_rows_get(r, N, 2));
    assert_string_equal(es_rows_get(r, N + 1, 1), "\\N");
    assert_string_equal(es_rows_get(r, N + 1, 2), "y");
    es_rows_free(r);
    drop(t);
}

static void test_copy_in_bad_row(void **state)
{
    (void)state;
    const char *t = tbl("copybad");
    create(t, "id bigint PRIMARY KEY, a text");
    const char *cols[] = {"id", "a"};
    const char *good = "1\tone\n2\ttwo\n";
    const char *fewer = "3\tthree\n4\n5\tfive\n";
    const char *more = "6\tsix\n7\tseven\textra\n";
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);

    /* on its own, a bad row loads nothing */
    assert_int_not_equal(es_store_copy_in(c, t, cols, NULL, 2, fewer, strlen(fewer)), ES_OK);
    assert_int_not_equal(es_store_copy_in(c, t, cols, NULL, 2, more, strlen(more)), ES_OK);
    assert_int_equal(count_rows(c, t), 0);

    /* in a transaction rolled back after the error, nothing at all */
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 2, good, strlen(good)), ES_OK);
    assert_int_not_equal(es_store_copy_in(c, t, cols, NULL, 2, fewer, strlen(fewer)), ES_OK);
    assert_int_equal(es_store_rollback(c), ES_OK);
    assert_int_equal(count_rows(c, t), 0);

    /* a duplicate key fails the copy too */
    assert_int_equal(es_store_copy_in(c, t, cols, NULL, 2, good, strlen(good)), ES_OK);
    const char *dup = "8\teight\n1\tagain\n";
    assert_int_not_equal(es_store_copy_in(c, t, cols, NULL, 2, dup, strlen(dup)), ES_OK);
    assert_int_equal(count_rows(c, t), 2);
    es_store_release(c);
    drop(t);
}

/* copy_merge: existing keys and keys repeated in the data are left out and
 * counted; the rest goes in, also inside a transaction that then rolls back. */
static void test_copy_merge(void **state)
{
    (void)state;
    const char *t = tbl("merge");
    create(t, "id bigint PRIMARY KEY, a text");
    const char *cols[] = {"id", "a"};
    es_store_conn *c;
    assert_int_equal(es_store_acquire(g_store, &c), ES_OK);
    int64_t n = -1;
    const char *first = "1\tone\n2\ttwo\n3\tthree\n";
    assert_int_equal(es_store_copy_merge(c, t, cols, NULL, 2, first, strlen(first), &n), ES_OK);
    assert_int_equal(n, 3);
    /* 2 and 3 exist, 4 twice, 5 new */
    const char *second = "2\tdeux\n4\tfour\n3\ttrois\n4\tfour again\n5\tfive\n";
    assert_int_equal(es_store_begin(c), ES_OK);
    assert_int_equal(es_store_copy_merge(c, t, cols, NULL, 2, second, strlen(second), &n), ES_OK);
    assert_int_equal(n, 2);
    assert_int_equal(es_store_commit(c), ES_OK);
    assert_int_equal(count_rows(c, t), 5);
    es_rows *r = NULL;
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT a FROM %s WHERE id IN (2, 4) ORDER BY id", t);
    assert_int_equal(es_store_exec(c, sql, 0, NULL, &r), ES_OK);
    assert_string_equal(es_rows_get(r, 0, 0), "two"); /* not overwritten */
    assert_string_equal(es_rows_get(r, 1, 0), "four");
    es_rows_free(r);
    /* everything there already: nothing inserted, no error */
    assert_int_equal(es_store_copy_merge(c, t, cols, NULL, 2, first, strlen(first), &n), ES_OK);
    assert_int_equal(n, 0);
    /* rolled back with its transaction, and usable again after that */
    assert_int_equal(es_store_begin(c), ES_OK);
    const char *third = "6\tsix\n1\tagain\n";
    assert_int_equal(es_store_copy_merge(c, t, cols, NULL, 2, third, strlen(third), &n), ES_OK);
    assert_int_equal(n, 1);
    assert_int_equal(es_store_rollback(c), ES_OK);
    assert_int_equal(count_rows(c, t), 5);
    /* a malformed row still fails the whole load */
    const char *bad = "7\tseven\n8\n";
    assert_int_not_equal(es_store_copy_merge(c, t, cols, NULL, 2, bad, strlen(bad), &n), ES_OK);
    assert_int_equal(count_rows(c, t), 5);
    es_store_release(c);
    drop(t);
}

#define THREADS    4
#define PER_THREAD 500

typedef struct worker_arg {
    const char *sql;
    int id;
    int failures;
} worker_arg;

static void *insert_worker(void *p)
{
    worker_arg *w = p;
    for (int i = 0; i < PER_THREAD; i++) {
        char id[32];
        snprintf(id, sizeof id, "%d", w->id * 100000 + i);
        const char *params[] = {id, "w"};
        es_store_conn *c;
        if (es_store_acquire(g_store, &c) != ES_OK) {
            w->failures++;
            continue;
        }
        if (es_store_exec(c, w->sql, 2, params, NULL) != ES_OK) w->failures++;
        es_store_release(c);
    }
    return NULL;
}

static void test_concurrent_inserts(void **state)
{
    (void)state;
    const char *t = tbl("conc");
    create(t, "id bigint PRIMARY KEY, who text");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, who) VALUES ($1, $2)", t);
    pthread_t th[THREADS];
    worker_arg args[THREADS];
    int64_t t0 = es_mono_us();
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg){.sql = sql, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, insert_worker, &args[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    int64_t us = es_mono_us() - t0;
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(args[i].failures, 0);
    assert_int_equal(count_rows(NULL, t), THREADS * PER_THREAD);
    printf("# %s: %d threads x %d inserts in %.0f ms (%.0f/s)\n", es_store_name(g_store), THREADS,
           PER_THREAD, us / 1000.0, THREADS * PER_THREAD * 1e6 / (double)(us ? us : 1));
    drop(t);
}

/* Not a pass/fail bound (machines differ): the figure is printed so that a
 * regression shows in the test log. */
static void test_timing_exec1(void **state)
{
    (void)state;
    const char *t = tbl("timing");
    create(t, "id bigint PRIMARY KEY, v text");
    char sql[256];
    snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2)", t);
    int n = 10000;
    const char *env = getenv("ESTEIRA_TEST_STORE_TIMING_N");
    if (env && *env) n = (int)strtol(env, NULL, 10);
    int64_t t0 = es_mono_us();
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "%d", i);
        const char *p[] = {id, "some value"};
        assert_int_equal(es_store_exec1(g_store, sql, 2, p, NULL), ES_OK);
    }
    int64_t us = es_mono_us() - t0;
    assert_int_equal(count_rows(NULL, t), n);
    printf("# %s: %d single-row INSERT+commit via es_store_exec1 in %.0f ms (%.0f/s)\n",
           es_store_name(g_store), n, us / 1000.0, n * 1e6 / (double)(us ? us : 1));
    drop(t);
}

/* ---- SQLite only */

static char *g_tmp;

static int open_url(const char *fmt, const char *arg, es_store **s)
{
    char url[600];
    snprintf(url, sizeof url, fmt, arg);
    return es_store_open(url, &g_cfg, s);
}

static bool is_file(const char *dir, const char *rel)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, rel);
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static void test_sqlite_urls(void **state)
{
    (void)state;
    es_store *s = NULL;
    /* absolute, in both spellings, with parents created */
    assert_int_equal(open_url("sqlite:%s/a/b/one.db", g_tmp, &s), ES_OK);
    assert_int_equal(es_store_exec1(s, "CREATE TABLE x (id bigint)", 0, NULL, NULL), ES_OK);
    es_store_close(s);
    assert_true(is_file(g_tmp, "a/b/one.db"));
    assert_int_equal(open_url("sqlite://%s/c/two.db?pool=2&busy_timeout=100", g_tmp, &s), ES_OK);
    es_store_close(s);
    assert_true(is_file(g_tmp, "c/two.db"));
    /* the same file again: what was written is there */
    assert_int_equal(open_url("sqlite:%s/a/b/one.db", g_tmp, &s), ES_OK);
    assert_int_equal(es_store_exec1(s, "INSERT INTO x (id) VALUES (1)", 0, NULL, NULL), ES_OK);
    es_store_close(s);

    /* relative to the working directory */
    char cwd[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    assert_int_equal(chdir(g_tmp), 0);
    int rc = es_store_open("sqlite:./rel/three.db", &g_cfg, &s);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, ES_OK);
    es_store_close(s);
    assert_true(is_file(g_tmp, "rel/three.db"));

    /* refused */
    assert_int_equal(es_store_open("sqlite:", &g_cfg, &s), ES_EINVAL);
    assert_null(s);
    assert_int_equal(open_url("sqlite:%s/x.db?pool=0", g_tmp, &s), ES_EINVAL);
    assert_int_equal(open_url("sqlite:%s/x.db?color=red", g_tmp, &s), ES_EINVAL);
    assert_int_not_equal(es_store_open("mysql://localhost/db", &g_cfg, &s), ES_OK);
    assert_null(s);
    assert_int_not_equal(es_store_open("", &g_cfg, &s), ES_OK);
    /* not a database */
    char p[600];
    snprintf(p, sizeof p, "%s/junk.db", g_tmp);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("this is not an SQLite file, not even close; padding padding padding padding\n", f);
    fclose(f);
    assert_int_not_equal(open_url("sqlite:%s/junk.db", g_tmp, &s), ES_OK);
    assert_null(s);
}

static void test_sqlite_pragmas(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_url("sqlite:%s/pragmas.db", g_tmp, &s), ES_OK);
    es_store_conn *c[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(es_store_acquire(s, &c[i]), ES_OK);
    for (int i = 0; i < 3; i++) {
        es_rows *r = NULL;
        assert_int_equal(es_store_exec(c[i], "PRAGMA journal_mode", 0, NULL, &r), ES_OK);
        assert_string_equal(es_rows_get(r, 0, 0), "wal");
        es_rows_free(r);
        assert_int_equal(es_store_exec(c[i], "PRAGMA foreign_keys", 0, NULL, &r), ES_OK);
        assert_string_equal(es_rows_get(r, 0, 0), "1");
        es_rows_free(r);
        assert_int_equal(es_store_exec(c[i], "PRAGMA synchronous", 0, NULL, &r), ES_OK);
        assert_string_equal(es_rows_get(r, 0, 0), "1"); /* NORMAL */
        es_rows_free(r);
        assert_int_equal(es_store_exec(c[i], "PRAGMA busy_timeout", 0, NULL, &r), ES_OK);
        assert_string_equal(es_rows_get(r, 0, 0), "5000");
        es_rows_free(r);
    }
    for (int i = 0; i < 3; i++)
        es_store_release(c[i]);
    /* foreign keys are enforced, and a violation is bad input */
    assert_int_equal(es_store_exec1(s, "CREATE TABLE p (id bigint PRIMARY KEY)", 0, NULL, NULL),
                     ES_OK);
    assert_int_equal(
        es_store_exec1(s, "CREATE TABLE ch (pid bigint REFERENCES p (id))", 0, NULL, NULL), ES_OK);
    assert_int_equal(es_store_exec1(s, "INSERT INTO ch (pid) VALUES (1)", 0, NULL, NULL),
                     ES_EINVAL);
    es_store_close(s);
}

/* A writer that cannot get the lock gives up with ES_EAGAIN after the busy
 * timeout, while readers go on (WAL). */
static void test_sqlite_busy(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_url("sqlite:%s/busy.db?busy_timeout=200", g_tmp, &s), ES_OK);
    assert_int_equal(es_store_exec1(s, "CREATE TABLE b (id bigint)", 0, NULL, NULL), ES_OK);
    es_store_conn *w;
    assert_int_equal(es_store_acquire(s, &w), ES_OK);
    assert_int_equal(es_store_begin(w), ES_OK);
    assert_int_equal(es_store_exec(w, "INSERT INTO b (id) VALUES (1)", 0, NULL, NULL), ES_OK);

    int64_t t0 = es_mono_ms();
    assert_int_equal(es_store_exec1(s, "INSERT INTO b (id) VALUES (2)", 0, NULL, NULL), ES_EAGAIN);
    int64_t waited = es_mono_ms() - t0;
    assert_true(waited >= 150 && waited < 2000);
    es_store_conn *other;
    assert_int_equal(es_store_acquire(s, &other), ES_OK);
    assert_int_equal(es_store_begin(other), ES_EAGAIN);
    assert_int_equal(count_rows(other, "b"), 0); /* reads are not blocked */
    es_store_release(other);

    assert_int_equal(es_store_commit(w), ES_OK);
    es_store_release(w);
    assert_int_equal(es_store_exec1(s, "INSERT INTO b (id) VALUES (3)", 0, NULL, NULL), ES_OK);
    es_rows *r = NULL;
    assert_int_equal(es_store_exec1(s, "SELECT count(*) FROM b", 0, NULL, &r), ES_OK);
    assert_int_equal(es_rows_int(r, 0, 0, -1), 2);
    es_rows_free(r);
    es_store_close(s);
}

/* More distinct statements than the per-connection cache holds, twice: the
 * evicted ones are prepared again and still give the right answers. */
static void test_sqlite_stmt_cache(void **state)
{
    (void)state;
    es_store *s = NULL;
    assert_int_equal(open_url("sqlite:%s/cache.db?pool=1", g_tmp, &s), ES_OK);
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 150; i++) {
            char sql[64], want[16];
            snprintf(sql, sizeof sql, "SELECT %d + CAST($1 AS bigint)", i);
            snprintf(want, sizeof want, "%d", i + round);
            char p[8];
            snprintf(p, sizeof p, "%d", round);
            const char *params[] = {p};
            es_rows *r = NULL;
            assert_int_equal(es_store_exec1(s, sql, 1, params, &r), ES_OK);
            assert_string_equal(es_rows_get(r, 0, 0), want);
            es_rows_free(r);
        }
    /* one statement per exec */
    assert_int_equal(es_store_exec1(s, "SELECT 1; SELECT 2", 0, NULL, NULL), ES_EINVAL);
    assert_int_equal(es_store_exec1(s, "SELECT 1; -- done\n", 0, NULL, NULL), ES_OK);
    assert_int_equal(es_store_exec1(s, "  ", 0, NULL, NULL), ES_EINVAL);
    /* parameters given but not used */
    const char *one[] = {"1"};
    assert_int_equal(es_store_exec1(s, "SELECT 1", 1, one, NULL), ES_EINVAL);
    es_store_close(s);
}

/* ---- es_rows on its own */

static void test_rows_builder(void **state)
{
    (void)state;
    es_rows *r = es_rows_new(3);
    assert_non_null(r);
    assert_int_equal(es_rows_set_colname(r, 0, "a"), ES_OK);
    assert_int_equal(es_rows_set_colname(r, 2, "c"), ES_OK);
    assert_int_not_equal(es_rows_set_colname(r, 3, "d"), ES_OK);
    for (int i = 0; i < 1000; i++) { /* enough to move the arena several times */
        char n[16];
        snprintf(n, sizeof n, "%d", i);
        const char *v[] = {n, i % 2 ? NULL : "", "x\0y"};
        size_t lens[] = {strlen(n), 0, 3};
        assert_int_equal(es_rows_add(r, v, lens), ES_OK);
    }
    es_rows_set_affected(r, 1000);
    assert_int_equal(es_rows_count(r), 1000);
    assert_int_equal(es_rows_ncols(r), 3);
    assert_int_equal(es_rows_affected(r), 1000);
    assert_string_equal(es_rows_colname(r, 0), "a");
    assert_null(es_rows_colname(r, 1));
    assert_string_equal(es_rows_colname(r, 2), "c");
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(es_rows_int(r, i, 0, -1), i);
        if (i % 2)
            assert_null(es_rows_get(r, i, 1));
        else
            assert_string_equal(es_rows_get(r, i, 1), "");
        assert_memory_equal(es_rows_get(r, i, 2), "x\0y", 4); /* length kept, NUL-terminated */
    }
    /* strlen when no lengths are given */
    const char *v[] = {"-12", "b", "c"};
    assert_int_equal(es_rows_add(r, v, NULL), ES_OK);
    assert_int_equal(es_rows_int(r, 1000, 0, 0), -12);
    assert_int_equal(es_rows_int(r, 1000, 1, 99), 99);
    es_rows_free(r);

    es_rows *empty = es_rows_new(0);
    assert_non_null(empty);
    assert_int_equal(es_rows_add(empty, NULL, NULL), ES_OK);
    assert_int_equal(es_rows_count(empty), 1);
    assert_null(es_rows_get(empty, 0, 0));
    es_rows_free(empty);
    es_rows_free(NULL);
    assert_int_equal(es_rows_count(NULL), 0);
}

int main(void)
{
    if (!getenv("ESTEIRA_TEST_LOG")) es_log_set_level(ES_LOG_ERROR);
    if (es_config_defaults(&g_cfg) != ES_OK) return 1;
    g_tmp = test_tmpdir("store");
    if (!g_tmp) return 1;
    char def[512];
    snprintf(def, sizeof def, "sqlite:%s/contract/store.db", g_tmp);

    const struct CMUnitTest contract[] = {
        cmocka_unit_test(test_ping_and_name),
        cmocka_unit_test(test_roundtrip_values),
        cmocka_unit_test(test_affected_counts),
        cmocka_unit_test(test_returning),
        cmocka_unit_test(test_tx_commit_visible),
        cmocka_unit_test(test_tx_rollback_discarded),
        cmocka_unit_test(test_release_in_tx_rolls_back),
        cmocka_unit_test(test_unique_conflict),
        cmocka_unit_test(test_bad_sql),
        cmocka_unit_test(test_params_out_of_order),
        cmocka_unit_test(test_placeholder_like_text),
        cmocka_unit_test(test_exec_script),
        cmocka_unit_test(test_copy_in_roundtrip),
        cmocka_unit_test(test_copy_in_bad_row),
        cmocka_unit_test(test_copy_merge),
        cmocka_unit_test(test_concurrent_inserts),
        cmocka_unit_test(test_timing_exec1),
    };
    const struct CMUnitTest sqlite_only[] = {
        cmocka_unit_test(test_sqlite_urls),
        cmocka_unit_test(test_sqlite_pragmas),
        cmocka_unit_test(test_sqlite_busy),
        cmocka_unit_test(test_sqlite_stmt_cache),
    };
    const struct CMUnitTest rows[] = {
        cmocka_unit_test(test_rows_builder),
    };

    int failed = 0;
    char urls[8][512];
    int n = test_urls("ESTEIRA_TEST_STORE_URLS", def, urls, 8);
    for (int i = 0; i < n; i++) {
        g_url = urls[i];
        g_url_idx = i;
        char name[600];
        /* the scheme only: the rest of a URL may hold a password */
        snprintf(name, sizeof name, "store #%d %.*s", i, (int)strcspn(urls[i], ":"), urls[i]);
        failed += _cmocka_run_group_tests(name, contract, ES_ARRAY_LEN(contract), group_setup,
                                          group_teardown);
    }
    failed += cmocka_run_group_tests_name("store sqlite", sqlite_only, NULL, NULL);
    failed += cmocka_run_group_tests_name("store rows", rows, NULL, NULL);
    test_rmdir(g_tmp);
    es_config_finish(&g_cfg);
    return failed ? 1 : 0;
}
