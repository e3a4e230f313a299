/* store_sqlite.c - the embedded store: SQLite in WAL mode behind a small pool.
 *
 * URLs: sqlite:./rel/path.db, sqlite:/abs/path.db, sqlite:///abs/path.db, with
 * optional ?pool=N (connections, default 8) and ?busy_timeout=MS (default
 * 5000).  Parent directories are created.
 *
 * Three things shape this file:
 *
 * - The pool.  SQLite connections are cheap but not free (each re-reads the
 *   schema and keeps its own page cache and prepared statements), so they are
 *   opened on demand up to a bound and reused.  A connection is used by one
 *   thread at a time, which is why it is opened with SQLITE_OPEN_NOMUTEX.
 *
 * - Writers.  SQLite has one writer at a time.  Between processes, the
 *   others wait in its busy handler up to busy_timeout, then fail with
 *   ES_EAGAIN; es_store_begin uses BEGIN IMMEDIATE so that the wait happens
 *   at BEGIN, where it is safe.  Within a process, writers first queue on a
 *   mutex (held from a write statement or BEGIN until the connection is back
 *   in autocommit): the busy handler sleeps in growing steps and wakes late,
 *   which on the job engine's mix of short transactions halved throughput.
 *
 * - The statement cache.  The job engine runs the same few statements
 *   thousands of times a second; each connection keeps its prepared
 *   statements keyed by SQL text, so a hit costs a hash and a strcmp. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/pool.h"
#include "backends/sqlite_ckpt.h"
#include "esteira/store.h"
#include "esteira/util.h"

#define COMP "store"

#define POOL_DEFAULT    8
#define POOL_MAX        64
#define BUSY_MS_DEFAULT 5000
#define ACQUIRE_WAIT_MS 30000 /* waiting for a free pooled connection */
#define STMT_CACHE      64    /* prepared statements kept per connection */
#define LOG_SQL_MAX     200   /* bytes of SQL quoted in a log line */

typedef struct sq_store sq_store;

typedef struct stmt_entry {
    uint64_t hash;
    char *sql; /* as the caller wrote it, $n placeholders */
    sqlite3_stmt *st;
    uint64_t used; /* for least-recently-used eviction */
} stmt_entry;

typedef struct sq_conn {
    sq_store *s;
    bool writer; /* holds s->writer_mu */
    sqlite3 *db;
    stmt_entry cache[STMT_CACHE];
    int ncached;
    uint64_t tick;
    /* a row being read out (values, lengths) and copy_in's current line */
    const char **vals;
    size_t *lens;
    int vcap;
    es_buf line;
} sq_conn;

struct sq_store {
    char *path;
    int pool_max;
    int busy_ms;
    pthread_mutex_t mu;        /* the pool */
    pthread_mutex_t writer_mu; /* one writing transaction at a time in this process */
    pthread_t writer_thread;   /* valid while writer_held */
    bool writer_held;
    es_ckpt *ckpt;  /* copies the WAL back into the database off the commit path */
    int ckpt_pages; /* the WAL size that wakes it */
    es_pool pool;
};

/* ---- errors */

static int map_err(int rc)
{
    switch (rc) {
    case SQLITE_CONSTRAINT_UNIQUE:
    case SQLITE_CONSTRAINT_PRIMARYKEY: return ES_ECONFLICT;
    default: break;
    }
    switch (rc & 0xff) {
    /* NOT NULL, CHECK, FOREIGN KEY: the data was wrong, retrying won't help */
    case SQLITE_CONSTRAINT: return ES_EINVAL;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return ES_EAGAIN;
    /* SQLITE_ERROR is what a syntax error, an unknown table or column and a
     * failed runtime check (integer overflow, datatype mismatch) return */
    case SQLITE_ERROR:
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG: return ES_EINVAL;
    case SQLITE_NOMEM: return ES_ENOMEM;
    default: return ES_EBACKEND;
    }
}

/* Logs SQLite's own message with the statement (never its parameters, which
 * may hold secrets) and returns the es_err for rc.  A unique violation is an
 * answer, not a failure: idempotent inserts rely on it, so it stays quiet. */
static int fail(sqlite3 *db, int rc, const char *what, const char *sql)
{
    int err = map_err(rc);
    int level = err == ES_ECONFLICT ? ES_LOG_DEBUG
                : err == ES_EAGAIN  ? ES_LOG_WARN
                : err == ES_EINVAL  ? ES_LOG_WARN
                                    : ES_LOG_ERROR;
    ES_LOG(level, COMP, "sqlite %s: %s (%d)%s%.*s", what, db ? sqlite3_errmsg(db) : "?", rc,
           sql ? " in: " : "", sql ? LOG_SQL_MAX : 0, sql ? sql : "");
    return err;
}

/* ---- SQL text */

/* $1..$n -> ?1..?n, same length, outside string literals, quoted identifiers
 * and comments.  SQLite would read "$1" as a named parameter numbered by
 * first appearance, so "$2 ... $1" would bind backwards without this. */
static void rewrite_params(const char *in, char *out, size_t n)
{
    memcpy(out, in, n + 1);
    size_t i = 0;
    while (i < n) {
        char ch = out[i];
        if (ch == '\'' || ch == '"' || ch == '`') {
            /* a doubled quote inside closes and reopens: same scan */
            char *end = memchr(out + i + 1, ch, n - i - 1);
            i = end ? (size_t)(end - out) + 1 : n;
        } else if (ch == '-' && out[i + 1] == '-') {
            char *end = memchr(out + i, '\n', n - i);
            i = end ? (size_t)(end - out) + 1 : n;
        } else if (ch == '/' && out[i + 1] == '*') {
            char *end = strstr(out + i + 2, "*/");
            i = end ? (size_t)(end - out) + 2 : n;
        } else if (ch == '$' && out[i + 1] >= '0' && out[i + 1] <= '9') {
            /* not inside an identifier such as a$1 */
            char prev = i ? out[i - 1] : ' ';
            bool ident = (prev >= 'a' && prev <= 'z') || (prev >= 'A' && prev <= 'Z') ||
                         (prev >= '0' && prev <= '9') || prev == '_' || prev == '$';
            if (!ident) out[i] = '?';
            i++;
        } else {
            i++;
        }
    }
}

/* True when nothing but blanks, semicolons and comments is left. */
static bool only_trailer(const char *p)
{
    for (;;) {
        p += strspn(p, " \t\r\n;");
        if (p[0] == '-' && p[1] == '-') {
            p = strchr(p, '\n');
            if (!p) return true;
        } else if (p[0] == '/' && p[1] == '*') {
            p = strstr(p + 2, "*/");
            if (!p) return true;
            p += 2;
        } else {
            return *p == '\0';
        }
    }
}

static uint64_t hash_sql(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The prepared statement for sql, from the cache or freshly prepared.  The
 * statement is reset and ready to bind. */
static int stmt_get(sq_conn *c, const char *sql, sqlite3_stmt **out)
{
    uint64_t h = hash_sql(sql);
    for (int i = 0; i < c->ncached; i++) {
        stmt_entry *e = &c->cache[i];
        if (e->hash == h && strcmp(e->sql, sql) == 0) {
            e->used = ++c->tick;
            *out = e->st;
            return ES_OK;
        }
    }
    size_t n = strlen(sql);
    if (n >= INT_MAX) return ES_EINVAL;
    char *q = malloc(n + 1);
    char *copy = strdup(sql);
    if (!q || !copy) {
        free(q);
        free(copy);
        return ES_ENOMEM;
    }
    rewrite_params(sql, q, n);
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v3(c->db, q, (int)n + 1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    int err = ES_OK;
    if (rc != SQLITE_OK) {
        err = fail(c->db, rc, "prepare", sql);
    } else if (!st) {
        es_warn(COMP, "sqlite: empty statement");
        err = ES_EINVAL;
    } else if (tail && !only_trailer(tail)) {
        es_warn(COMP, "sqlite: exec takes one statement (use exec_script): %.*s", LOG_SQL_MAX, sql);
        err = ES_EINVAL;
    }
    free(q);
    if (err != ES_OK) {
        sqlite3_finalize(st);
        free(copy);
        return err;
    }
    stmt_entry *e;
    if (c->ncached < STMT_CACHE) {
        e = &c->cache[c->ncached++];
    } else {
        e = &c->cache[0];
        for (int i = 1; i < c->ncached; i++)
            if (c->cache[i].used < e->used) e = &c->cache[i];
        sqlite3_finalize(e->st);
        free(e->sql);
    }
    e->hash = h;
    e->sql = copy;
    e->st = st;
    e->used = ++c->tick;
    *out = st;
    return ES_OK;
}

static void stmt_cache_clear(sq_conn *c)
{
    for (int i = 0; i < c->ncached; i++) {
        sqlite3_finalize(c->cache[i].st);
        free(c->cache[i].sql);
    }
    c->ncached = 0;
}

/* ---- connections */

/* Takes the in-process writer lock for c, unless c has it already or this
 * thread holds it through another connection (then SQLite's own lock and
 * busy timeout decide, as between processes). */
static void writer_enter(sq_conn *c)
{
    sq_store *s = c->s;
    if (c->writer) return;
    if (__atomic_load_n(&s->writer_held, __ATOMIC_ACQUIRE) &&
        pthread_equal(s->writer_thread, pthread_self()))
        return;
    pthread_mutex_lock(&s->writer_mu);
    s->writer_thread = pthread_self();
    __atomic_store_n(&s->writer_held, true, __ATOMIC_RELEASE);
    c->writer = true;
}

/* Gives the writer lock back once c is out of any transaction. */
static void writer_leave(sq_conn *c, bool force)
{
    if (!c->writer || (!force && !sqlite3_get_autocommit(c->db))) return;
    c->writer = false;
    __atomic_store_n(&c->s->writer_held, false, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&c->s->writer_mu);
}

static bool starts_write_tx(const char *sql)
{
    while (*sql == ' ' || *sql == '\n' || *sql == '\t')
        sql++;
    return strncasecmp(sql, "BEGIN", 5) == 0 &&
           (strcasestr(sql, "IMMEDIATE") || strcasestr(sql, "EXCLUSIVE"));
}

static void conn_close(sq_conn *c)
{
    if (!c) return;
    writer_leave(c, true);
    stmt_cache_clear(c);
    if (c->db && sqlite3_close(c->db) != SQLITE_OK)
        es_error(COMP, "sqlite: close: %s", sqlite3_errmsg(c->db));
    free(c->vals);
    free(c->lens);
    es_buf_finish(&c->line);
    free(c);
}

static int journal_cb(void *arg, int n, char **vals, char **names)
{
    (void)names;
    if (n > 0 && vals[0]) es_strlcpy(arg, vals[0], 16);
    return 0;
}

#define CKPT_PAGES    16384 /* wake the checkpointer at this WAL size (64 MB) */
#define CKPT_EVERY_MS 10000 /* and checkpoint at least this often */

static int conn_open(sq_store *s, sq_conn **out)
{
    *out = NULL;
    sq_conn *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    c->s = s;
    es_buf_init(&c->line, 0);
    int rc = sqlite3_open_v2(
        s->path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        es_error(COMP, "sqlite: cannot open %s: %s", s->path,
                 c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        goto fail_conn;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_busy_timeout(c->db, s->busy_ms);
    char mode[16] = "";
    /* Switching a new database to WAL needs an exclusive lock, and SQLite
     * answers BUSY at once instead of calling the busy handler: processes
     * starting together on a fresh file retry within the busy timeout. */
    int64_t give_up = es_mono_ms() + s->busy_ms;
    while (((rc = sqlite3_exec(c->db, "PRAGMA journal_mode=WAL", journal_cb, mode, NULL)) & 0xff) ==
               SQLITE_BUSY &&
           es_mono_ms() < give_up)
        es_sleep_ms(5 + (int64_t)es_random_below(20));
    if (rc != SQLITE_OK) {
        fail(c->db, rc, "journal_mode", NULL);
        goto fail_conn;
    }
    if (strcasecmp(mode, "wal") != 0)
        es_warn(COMP, "sqlite: %s is in journal mode '%s', not WAL: writers block readers", s->path,
                mode);
    /* Checkpoints run off the commit path (src/backends/sqlite_ckpt.h).
     * Letting the WAL grow to CKPT_PAGES between them also lets a page
     * written by many transactions be copied back once.  journal_size_limit
     * trims the WAL file after a reset. */
    rc = sqlite3_exec(c->db,
                      "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                      " PRAGMA journal_size_limit=67108864",
                      NULL, NULL, NULL);
    if (rc != SQLITE_OK) {
        fail(c->db, rc, "pragma", NULL);
        goto fail_conn;
    }
    es_ckpt_attach(s->ckpt, c->db);
    *out = c;
    return ES_OK;

fail_conn:
    conn_close(c);
    return map_err(rc) == ES_EAGAIN ? ES_EAGAIN : ES_EBACKEND;
}

/* ---- the URL */

static int mkdir_parents(const char *path)
{
    char *p = strdup(path);
    if (!p) return ES_ENOMEM;
    for (char *q = p + 1; (q = strchr(q, '/')) != NULL; q++) {
        *q = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            es_error(COMP, "sqlite: cannot create directory %s: %s", p, strerror(errno));
            free(p);
            return ES_EIO;
        }
        *q = '/';
    }
    free(p);
    return ES_OK;
}

static int parse_query(sq_store *s, char *q)
{
    for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
        char *v = strchr(kv, '=');
        int64_t n;
        if (!v) goto bad;
        *v++ = '\0';
        if (strcmp(kv, "pool") == 0) {
            if (es_parse_i64(v, 1, POOL_MAX, &n) != ES_OK) goto bad;
            s->pool_max = (int)n;
        } else if (strcmp(kv, "busy_timeout") == 0) {
            if (es_parse_i64(v, 0, 600000, &n) != ES_OK) goto bad;
            s->busy_ms = (int)n;
        } else if (strcmp(kv, "checkpoint_pages") == 0) {
            if (es_parse_i64(v, 1, 1 << 24, &n) != ES_OK) goto bad;
            s->ckpt_pages = (int)n;
        } else {
            goto bad;
        }
        continue;
    bad:
        es_error(COMP,
                 "sqlite: bad URL option '%s' (known: pool=1..%d, busy_timeout=ms, "
                 "checkpoint_pages=N)",
                 kv, POOL_MAX);
        return ES_EINVAL;
    }
    return ES_OK;
}

static int parse_url(sq_store *s, const char *url)
{
    const char *p = url + strlen("sqlite:");
    if (strncmp(p, "//", 2) == 0) p += 2; /* sqlite:///abs -> /abs */
    size_t n = strcspn(p, "?");
    if (n == 0) {
        es_error(COMP, "sqlite: no database path in the URL");
        return ES_EINVAL;
    }
    s->path = strndup(p, n);
    if (!s->path) return ES_ENOMEM;
    if (p[n] == '?') {
        char *q = strdup(p + n + 1);
        if (!q) return ES_ENOMEM;
        int rc = parse_query(s, q);
        free(q);
        if (rc != ES_OK) return rc;
    }
    return ES_OK;
}

/* ---- the store */

static void sq_close(void *ctx)
{
    sq_store *s = ctx;
    if (!s) return;
    if (s->pool.idle) {
        int busy = es_pool_in_use(&s->pool);
        if (busy) es_error(COMP, "sqlite: closing with %d connection(s) still in use", busy);
        sq_conn *c;
        while ((c = es_pool_pop_idle(&s->pool)))
            conn_close(c);
        es_pool_finish(&s->pool);
    }
    es_ckpt_stop(s->ckpt); /* after the connections, whose hook points at it */
    pthread_mutex_destroy(&s->writer_mu);
    free(s->path);
    free(s);
}

static int sq_open(const char *url, const es_config *cfg, void **ctx)
{
    (void)cfg;
    *ctx = NULL;
    sq_store *s = calloc(1, sizeof *s);
    if (!s) return ES_ENOMEM;
    s->pool_max = POOL_DEFAULT;
    s->busy_ms = BUSY_MS_DEFAULT;
    s->ckpt_pages = CKPT_PAGES;
    pthread_mutex_init(&s->writer_mu, NULL);

    int rc = parse_url(s, url);
    if (rc != ES_OK) goto fail_store;
    rc = mkdir_parents(s->path);
    if (rc != ES_OK) goto fail_store;
    /* One connection now: a bad path or a file that is not a database fails
     * here rather than at the first query, and WAL is switched on before
     * several connections race to do it. */
    rc = es_pool_init(&s->pool, s->pool_max);
    if (rc != ES_OK) goto fail_store;
    void *slot;
    es_pool_take(&s->pool, 0, &slot); /* an empty pool has room */
    sq_conn *c;
    rc = conn_open(s, &c);
    if (rc != ES_OK) {
        es_pool_drop(&s->pool);
        goto fail_store;
    }
    /* started once the file exists: the checkpointer opens, never creates */
    s->ckpt = es_ckpt_start(s->path, s->ckpt_pages, CKPT_EVERY_MS, s->busy_ms);
    es_ckpt_attach(s->ckpt, c->db);
    es_pool_put(&s->pool, c);
    *ctx = s;
    return ES_OK;

fail_store:
    sq_close(s);
    return rc;
}

static int sq_acquire(void *ctx, void **out)
{
    sq_store *s = ctx;
    void *idle;
    *out = NULL;
    if (es_pool_take(&s->pool, ACQUIRE_WAIT_MS, &idle) != ES_OK) {
        es_warn(COMP, "sqlite: no free connection after %d ms (pool of %d)", ACQUIRE_WAIT_MS,
                s->pool_max);
        return ES_EAGAIN;
    }
    if (idle) {
        *out = idle;
        return ES_OK;
    }
    sq_conn *c;
    int rc = conn_open(s, &c);
    if (rc != ES_OK) {
        es_pool_drop(&s->pool);
        return rc;
    }
    *out = c;
    return ES_OK;
}

static void sq_release(void *ctx, void *conn, bool broken)
{
    sq_store *s = ctx;
    sq_conn *c = conn;
    if (!c) return;
    if (!broken && !sqlite3_get_autocommit(c->db)) {
        es_warn(COMP, "sqlite: connection released inside a transaction: rolling back");
        if (sqlite3_exec(c->db, "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK) broken = true;
    }
    writer_leave(c, false);
    if (!broken && c->writer) {
        /* still in a transaction after the rollback: do not pool it */
        broken = true;
    }
    if (broken) {
        conn_close(c); /* closing rolls back whatever was open */
        es_pool_drop(&s->pool);
        return;
    }
    es_pool_put(&s->pool, c);
}

/* ---- statements */

static int ensure_row_room(sq_conn *c, int ncols)
{
    if (ncols <= c->vcap) return ES_OK;
    const char **vals = realloc(c->vals, (size_t)ncols * sizeof *vals);
    if (!vals) return ES_ENOMEM;
    c->vals = vals;
    size_t *lens = realloc(c->lens, (size_t)ncols * sizeof *lens);
    if (!lens) return ES_ENOMEM;
    c->lens = lens;
    c->vcap = ncols;
    return ES_OK;
}

/* Steps st to the end, collecting rows into *out when out is set. */
static int run(sq_conn *c, sqlite3_stmt *st, const char *sql, es_rows **out)
{
    int ncols = sqlite3_column_count(st);
    bool reads = sqlite3_stmt_readonly(st);
    es_rows *r = NULL;
    int err = ES_OK;
    if (out) {
        r = es_rows_new(ncols);
        if (!r || ensure_row_room(c, ncols) != ES_OK) {
            err = ES_ENOMEM;
            goto done;
        }
        for (int i = 0; i < ncols; i++) {
            const char *name = sqlite3_column_name(st, i);
            if (es_rows_set_colname(r, i, name ? name : "?") != ES_OK) {
                err = ES_ENOMEM;
                goto done;
            }
        }
    }
    /* Total changes before and after, rather than sqlite3_changes(), which
     * still reports the last INSERT/UPDATE/DELETE after a CREATE TABLE. */
    if (!reads || starts_write_tx(sql)) writer_enter(c);
    sqlite3_int64 before = sqlite3_total_changes64(c->db);
    int64_t nrows = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        nrows++;
        if (!r) continue;
        for (int i = 0; i < ncols; i++) {
            if (sqlite3_column_type(st, i) == SQLITE_NULL) {
                c->vals[i] = NULL;
                continue;
            }
            c->vals[i] = (const char *)sqlite3_column_text(st, i);
            c->lens[i] = (size_t)sqlite3_column_bytes(st, i);
            if (!c->vals[i]) {
                err = ES_ENOMEM;
                goto done;
            }
        }
        if (es_rows_add(r, c->vals, c->lens) != ES_OK) {
            err = ES_ENOMEM;
            goto done;
        }
    }
    if (rc != SQLITE_DONE) {
        err = fail(c->db, rc, "exec", sql);
        goto done;
    }
    if (r) es_rows_set_affected(r, reads ? nrows : sqlite3_total_changes64(c->db) - before);

done:
    sqlite3_reset(st);
    writer_leave(c, false);
    if (err != ES_OK) {
        es_rows_free(r);
        r = NULL;
    }
    if (out) *out = r;
    return err;
}

static int sq_exec(void *conn, const char *sql, int nparams, const char *const *params,
                   es_rows **out)
{
    sq_conn *c = conn;
    if (out) *out = NULL;
    sqlite3_stmt *st;
    int rc = stmt_get(c, sql, &st);
    if (rc != ES_OK) return rc;
    int want = sqlite3_bind_parameter_count(st);
    if (want != nparams) {
        es_warn(COMP, "sqlite: statement takes %d parameter(s), %d given: %.*s", want, nparams,
                LOG_SQL_MAX, sql);
        return ES_EINVAL;
    }
    for (int i = 0; i < nparams; i++) {
        /* STATIC: the caller's strings outlive the statement's run, and the
         * next run binds every parameter again. */
        int brc = params[i] ? sqlite3_bind_text(st, i + 1, params[i], -1, SQLITE_STATIC)
                            : sqlite3_bind_null(st, i + 1);
        if (brc != SQLITE_OK) return fail(c->db, brc, "bind", sql);
    }
    return run(c, st, sql, out);
}

static int sq_exec_script(void *conn, const char *sql)
{
    sq_conn *c = conn;
    int rc = ES_OK;
    char *msg = NULL;
    writer_enter(c);
    int src = sqlite3_exec(c->db, sql, NULL, NULL, &msg);
    writer_leave(c, false);
    if (src != SQLITE_OK) {
        rc = map_err(src);
        es_error(COMP, "sqlite script: %s (%d)", msg ? msg : sqlite3_errstr(src), src);
    }
    sqlite3_free(msg);
    return rc;
}

/* ---- copy_in */

static int quick(sq_conn *c, const char *sql)
{
    writer_enter(c);
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, NULL);
    writer_leave(c, false);
    return rc == SQLITE_OK ? ES_OK : fail(c->db, rc, "copy", sql);
}

/* INSERT INTO table (c1, …) VALUES ($1, …), with checked identifiers. */
static int copy_sql(es_buf *b, const char *table, const char *const *cols, int ncols, bool merge)
{
    if (!es_ident_valid(table)) {
        es_warn(COMP, "copy_in: bad table name");
        return ES_EINVAL;
    }
    int rc = es_buf_printf(b, "INSERT INTO %s (", table);
    for (int i = 0; rc == ES_OK && i < ncols; i++) {
        if (!es_ident_valid(cols[i])) {
            es_warn(COMP, "copy_in: bad column name");
            return ES_EINVAL;
        }
        rc = es_buf_printf(b, "%s%s", i ? ", " : "", cols[i]);
    }
    if (rc == ES_OK) rc = es_buf_puts(b, ") VALUES (");
    for (int i = 0; rc == ES_OK && i < ncols; i++)
        rc = es_buf_printf(b, "%s$%d", i ? ", " : "", i + 1);
    if (rc == ES_OK) rc = es_buf_puts(b, merge ? ") ON CONFLICT DO NOTHING" : ")");
    return rc;
}

/* Inserts each line of data through st.  Lines end with \n (a \r before it
 * is dropped; the last \n may be missing); a line holding \. alone ends the
 * data, as in PostgreSQL. */
static int copy_rows(sq_conn *c, sqlite3_stmt *st, int ncols, const char *data, size_t len,
                     int64_t *inserted)
{
    size_t pos = 0;
    int64_t lineno = 0;
    while (pos < len) {
        const char *start = data + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - start) : len - pos;
        pos += n + (nl ? 1 : 0);
        lineno++;
        if (n && start[n - 1] == '\r') n--;
        if (n == 2 && start[0] == '\\' && start[1] == '.') break;

        es_buf_reset(&c->line);
        int rc = es_buf_append(&c->line, start, n);
        if (rc != ES_OK) return rc;
        char *p = (char *)es_buf_cstr(&c->line);
        char *end = p + n;
        int f = 0;
        for (;;) {
            char *tab = memchr(p, '\t', (size_t)(end - p));
            char *fe = tab ? tab : end;
            if (f == ncols) {
                f++;
                break;
            }
            size_t flen = (size_t)(fe - p);
            int brc;
            if (flen == 2 && p[0] == '\\' && p[1] == 'N') {
                brc = sqlite3_bind_null(st, f + 1);
            } else {
                flen = es_copy_unescape(p, flen);
                brc = sqlite3_bind_text(st, f + 1, p, (int)flen, SQLITE_STATIC);
            }
            if (brc != SQLITE_OK) return fail(c->db, brc, "copy bind", NULL);
            f++;
            if (!tab) break;
            p = tab + 1;
        }
        if (f != ncols) {
            es_warn(COMP, "copy_in: line %lld has %s fields than the %d columns", (long long)lineno,
                    f > ncols ? "more" : "fewer", ncols);
            return ES_EINVAL;
        }
        rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc == SQLITE_DONE) *inserted += sqlite3_changes(c->db);
        if (rc != SQLITE_DONE) {
            es_warn(COMP, "copy_in: line %lld rejected", (long long)lineno);
            return fail(c->db, rc, "copy", NULL);
        }
    }
    return ES_OK;
}

static int copy_load(sq_conn *c, const char *table, const char *const *cols, int ncols,
                     const char *data, size_t len, bool merge, int64_t *inserted)
{
    es_buf sql;
    es_buf_init(&sql, 0);
    int rc = copy_sql(&sql, table, cols, ncols, merge);
    if (rc != ES_OK) goto out_sql;
    sqlite3_stmt *st;
    rc = stmt_get(c, es_buf_cstr(&sql), &st);
    if (rc != ES_OK) goto out_sql;
    if (sqlite3_bind_parameter_count(st) != ncols) {
        rc = ES_EINVAL;
        goto out_sql;
    }
    /* All rows or none: our own transaction, or a savepoint inside the
     * caller's (PostgreSQL's COPY is all-or-nothing too). */
    bool own = sqlite3_get_autocommit(c->db);
    rc = quick(c, own ? "BEGIN IMMEDIATE" : "SAVEPOINT es_copy_in");
    if (rc != ES_OK) goto out_sql;
    rc = copy_rows(c, st, ncols, data, len, inserted);
    if (rc == ES_OK) {
        rc = quick(c, own ? "COMMIT" : "RELEASE es_copy_in");
        if (rc == ES_OK) goto out_sql;
    }
    if (own) {
        if (!sqlite3_get_autocommit(c->db)) quick(c, "ROLLBACK");
    } else {
        quick(c, "ROLLBACK TO es_copy_in");
        quick(c, "RELEASE es_copy_in");
    }
out_sql:
    es_buf_finish(&sql);
    return rc;
}

/* SQLite keeps what it is given: the types change nothing here. */
static int sq_copy_in(void *conn, const char *table, const char *const *cols,
                      const es_copy_type *types, int ncols, const char *data, size_t len)
{
    (void)types;
    int64_t n = 0;
    return copy_load(conn, table, cols, ncols, data, len, false, &n);
}

/* INSERT … ON CONFLICT DO NOTHING per row: sqlite3_changes() tells which went in. */
static int sq_copy_merge(void *conn, const char *table, const char *const *cols,
                         const es_copy_type *types, int ncols, const char *data, size_t len,
                         int64_t *inserted)
{
    (void)types;
    int64_t n = 0;
    int rc = copy_load(conn, table, cols, ncols, data, len, true, &n);
    *inserted = rc == ES_OK ? n : 0;
    return rc;
}

static int sq_ping(void *ctx)
{
    void *conn;
    int rc = sq_acquire(ctx, &conn);
    if (rc != ES_OK) return rc;
    rc = sq_exec(conn, "SELECT 1", 0, NULL, NULL);
    sq_release(ctx, conn, rc == ES_EBACKEND);
    return rc;
}

const es_store_ops es_store_sqlite = {
    .name = "sqlite",
    .scheme = "sqlite:",
    .dialect = ES_DIALECT_SQLITE,
    .open = sq_open,
    .close = sq_close,
    .acquire = sq_acquire,
    .release = sq_release,
    .exec = sq_exec,
    .exec_script = sq_exec_script,
    .copy_in = sq_copy_in,
    .copy_merge = sq_copy_merge,
    .ping = sq_ping,
};
