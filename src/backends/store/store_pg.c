/* store_pg.c - the store on PostgreSQL, through libpq.
 *
 * URLs: postgres://user[:password]@host[:port]/db[?options], or postgresql://.
 * Two options are esteira's and are taken out before libpq sees the URL:
 * pool=N (connections, default 8) and connect_retry=DURATION (how long
 * opening a connection keeps retrying while the server is down or starting,
 * default 5s).  Everything else (sslmode, connect_timeout, application_name,
 * …) is libpq's and goes through untouched.
 *
 * Three things shape this file:
 *
 * - The pool survives a server restart.  A connection that saw a
 *   connection-level failure is dropped when it is given back, and the next
 *   acquire opens a fresh one, retrying with a growing pause while the server
 *   refuses connections (shut down, starting up).  An idle pooled connection
 *   whose socket became readable while nobody used it has heard the server's
 *   goodbye (a shutdown sends one to every session): acquire notices and
 *   replaces it, so a restart between two requests costs the caller nothing.
 *
 * - Prepared statements.  The job engine repeats the same few statements
 *   thousands of times a second; each connection prepares a statement with
 *   parameters once (named es_<n>) and keeps it, keyed by SQL text, in a
 *   bounded least-recently-used cache.  Statements without parameters are
 *   mostly BEGIN/COMMIT and DDL, where planning costs nothing: they go
 *   through the unnamed statement instead of filling the cache.
 *
 * - Errors are classified by SQLSTATE (see map_state), and anything that
 *   means the session is gone marks the connection broken. */
#include <errno.h>
#include <libpq-fe.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/pool.h"
#include "esteira/store.h"
#include "esteira/util.h"

#include "backends/store/pg_binary.h"

#define COMP "store"

#define POOL_DEFAULT      8
#define POOL_MAX          256
#define CONNECT_RETRY_MS  5000    /* default of ?connect_retry= */
#define CONNECT_PAUSE_MIN 50      /* first pause between connection attempts, ms */
#define CONNECT_PAUSE_MAX 1000    /* the pause doubles up to this */
#define CONNECT_TIMEOUT_S "5"     /* libpq connect_timeout unless the URL sets one */
#define ACQUIRE_WAIT_MS   30000   /* waiting for a free pooled connection */
#define STMT_CACHE        64      /* prepared statements kept per connection */
#define COPY_CHUNK        1048576 /* bytes handed to PQputCopyData at a time */
#define LOG_SQL_MAX       200     /* bytes of SQL quoted in a log line */
#define LOG_MSG_MAX       512     /* bytes of a server message in a log line */
#define STMT_NAME_MAX     24

typedef struct pg_store pg_store;

typedef struct stmt_entry {
    uint64_t hash;
    char *sql; /* as the caller wrote it */
    char name[STMT_NAME_MAX];
    int nparams; /* as the server counted them */
    uint64_t used;
} stmt_entry;

typedef struct pg_conn {
    pg_store *s;
    PGconn *db;
    bool broken; /* saw a connection-level failure: drop on release */
    stmt_entry cache[STMT_CACHE];
    int ncached;
    uint64_t tick;
    uint64_t seq; /* for statement names */
    /* a row being read out */
    const char **vals;
    size_t *lens;
    int vcap;
} pg_conn;

struct pg_store {
    char *conninfo; /* the URL without esteira's options: libpq's */
    char *shown;    /* the URL for logs: no password, no options */
    int pool_max;
    int64_t retry_ms;
    es_pool pool;
};

/* ---- messages */

/* libpq's messages span lines ("server closed the connection
 * unexpectedly\n\tThis probably means…"): a log line is one line. */
static const char *one_line(const char *msg, char *out, size_t size)
{
    size_t w = 0;
    bool space = false;
    for (const char *p = msg ? msg : ""; *p && w + 1 < size; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t' || *p == ' ') {
            space = w > 0;
            continue;
        }
        if (space && w + 2 < size) out[w++] = ' ';
        space = false;
        out[w++] = *p;
    }
    out[w] = '\0';
    return out;
}

/* Notices (DROP TABLE IF EXISTS on a missing table, the FATAL a session
 * hears when the server shuts down while it is idle) go to our log, not to
 * libpq's default of raw stderr.  arg is the pg_conn: a FATAL means its
 * session is over. */
static void notice_cb(void *arg, const PGresult *res)
{
    const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    char msg[LOG_MSG_MAX];
    one_line(PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), msg, sizeof msg);
    bool quiet = sev && (strcmp(sev, "NOTICE") == 0 || strcmp(sev, "INFO") == 0 ||
                         strcmp(sev, "DEBUG") == 0 || strcmp(sev, "LOG") == 0);
    bool fatal = sev && (strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
    if (fatal) ((pg_conn *)arg)->broken = true;
    ES_LOG(quiet ? ES_LOG_DEBUG : ES_LOG_WARN, COMP, "postgres %s: %s (%s)", sev ? sev : "notice",
           msg, state ? state : "-");
}

/* ---- errors */

static bool state_is(const char *state, const char *want)
{
    return state && strcmp(state, want) == 0;
}

static bool class_is(const char *state, const char *cls)
{
    return state && strncmp(state, cls, 2) == 0;
}

/* SQLSTATEs after which the session is gone (or going): the server shut
 * down or crashed, or the connection broke.  08P01 (protocol violation) is
 * the exception of class 08: the server reports it for a statement given the
 * wrong number of parameters and carries on. */
static bool state_lost(const char *state)
{
    if (!state) return false;
    if (state_is(state, "08P01")) return false;
    return class_is(state, "08") || state_is(state, "57P01") || state_is(state, "57P02") ||
           state_is(state, "57P03");
}

static int map_state(const char *state)
{
    if (!state) return ES_EBACKEND; /* libpq's own failure: no server answer */
    if (state_is(state, "23505")) return ES_ECONFLICT;
    /* NOT NULL, CHECK, FOREIGN KEY: the data was wrong, retrying won't help */
    if (class_is(state, "23")) return ES_EINVAL;
    /* serialization failure, deadlock: the transaction may simply be run again */
    if (class_is(state, "40") || state_is(state, "55P03")) return ES_EAGAIN;
    if (state_is(state, "57014")) return ES_ETIMEDOUT; /* statement_timeout, cancel */
    if (state_is(state, "53300")) return ES_EAGAIN;    /* too many connections */
    if (state_lost(state)) return ES_EBACKEND;
    /* syntax, undefined objects, bad values, wrong transaction state, feature
     * not supported, raised by a function, wrong parameter count */
    if (class_is(state, "42") || class_is(state, "22") || class_is(state, "25") ||
        class_is(state, "0A") || class_is(state, "26") || class_is(state, "21") ||
        class_is(state, "2B") || class_is(state, "34") || class_is(state, "3F") ||
        class_is(state, "44") || class_is(state, "P0") || state_is(state, "08P01"))
        return ES_EINVAL;
    return ES_EBACKEND;
}

/* Logs the server's (or libpq's) message with the statement, never its
 * parameters (they may hold secrets), marks the connection broken when the
 * session is gone, and returns the es_err.  res may be NULL.  A unique
 * violation is an answer, not a failure: idempotent inserts rely on it, so
 * it stays quiet. */
static int fail(pg_conn *c, const PGresult *res, const char *what, const char *sql)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    bool lost = PQstatus(c->db) != CONNECTION_OK || state_lost(state);
    int err = lost ? ES_EBACKEND : map_state(state);
    if (err == ES_EBACKEND) c->broken = true;
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m) m = res ? PQresultErrorMessage(res) : NULL;
    if (!m || !*m) m = PQerrorMessage(c->db);
    char msg[LOG_MSG_MAX];
    one_line(m, msg, sizeof msg);
    int level = err == ES_ECONFLICT                    ? ES_LOG_DEBUG
                : err == ES_EINVAL || err == ES_EAGAIN ? ES_LOG_WARN
                : err == ES_ETIMEDOUT                  ? ES_LOG_WARN
                                                       : ES_LOG_ERROR;
    ES_LOG(level, COMP, "postgres %s: %s (%s)%s%s%.*s", what, msg, state ? state : "no sqlstate",
           lost ? ", connection lost" : "", sql ? " in: " : "", sql ? LOG_SQL_MAX : 0,
           sql ? sql : "");
    return err;
}

static bool res_ok(const PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    return res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK);
}

/* ---- the URL */

static int parse_option(pg_store *s, const char *kv, bool *mine)
{
    int64_t n;
    *mine = true;
    if (strncmp(kv, "pool=", 5) == 0) {
        if (es_parse_i64(kv + 5, 1, POOL_MAX, &n) != ES_OK) goto bad;
        s->pool_max = (int)n;
    } else if (strncmp(kv, "connect_retry=", 14) == 0) {
        if (es_parse_duration_ms(kv + 14, &n) != ES_OK || n < 0 || n > 600000) goto bad;
        s->retry_ms = n;
    } else {
        *mine = false;
    }
    return ES_OK;
bad:
    es_error(COMP, "postgres: bad URL option '%.64s' (esteira's: pool=1..%d, connect_retry=0..10m)",
             kv, POOL_MAX);
    return ES_EINVAL;
}

/* scheme://[user[:password]@]host… -> scheme://user@host…/db, for logs. */
static int shown_url(pg_store *s, const char *url, size_t n)
{
    es_buf b;
    es_buf_init(&b, 0);
    const char *p = strstr(url, "://");
    const char *rest = p ? p + 3 : url;
    size_t auth = strcspn(rest, "@/?");
    int rc = es_buf_append(&b, url, (size_t)(rest - url));
    if (rc == ES_OK && rest[auth] == '@') {
        size_t user = strcspn(rest, ":@");
        rc = es_buf_append(&b, rest, user);
        if (rc == ES_OK) rc = es_buf_puts(&b, "@");
        rest += auth + 1;
    }
    if (rc == ES_OK && url + n > rest) rc = es_buf_append(&b, rest, (size_t)(url + n - rest));
    if (rc != ES_OK) {
        es_buf_finish(&b);
        return rc;
    }
    s->shown = es_buf_steal(&b);
    return s->shown ? ES_OK : ES_ENOMEM;
}

static int parse_url(pg_store *s, const char *url)
{
    if (strncmp(url, "postgres://", 11) != 0 && strncmp(url, "postgresql://", 13) != 0) {
        es_error(COMP, "postgres: the URL must start with postgres:// or postgresql://");
        return ES_EINVAL;
    }
    size_t n = strcspn(url, "?");
    int rc = shown_url(s, url, n);
    if (rc != ES_OK) return rc;
    es_buf b;
    es_buf_init(&b, 0);
    rc = es_buf_append(&b, url, n);
    if (rc == ES_OK && url[n] == '?') {
        char *q = strdup(url + n + 1);
        if (!q) rc = ES_ENOMEM;
        int kept = 0;
        for (char *save = NULL, *kv = q ? strtok_r(q, "&", &save) : NULL; kv && rc == ES_OK;
             kv = strtok_r(NULL, "&", &save)) {
            bool mine;
            rc = parse_option(s, kv, &mine);
            if (rc == ES_OK && !mine) rc = es_buf_printf(&b, "%c%s", kept++ ? '&' : '?', kv);
        }
        free(q);
    }
    if (rc != ES_OK) {
        es_buf_finish(&b);
        return rc;
    }
    s->conninfo = es_buf_steal(&b);
    if (!s->conninfo) return ES_ENOMEM;
    /* libpq's own check, once, so that a typo is a clear error at startup
     * rather than a connection that fails on every acquire */
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(s->conninfo, &perr);
    if (!opts) {
        char msg[LOG_MSG_MAX];
        es_error(COMP, "postgres %s: bad URL: %s", s->shown,
                 one_line(perr ? perr : "out of memory", msg, sizeof msg));
        PQfreemem(perr);
        return perr ? ES_EINVAL : ES_ENOMEM;
    }
    PQconninfoFree(opts);
    return ES_OK;
}

/* ---- connections */

static void conn_close(pg_conn *c)
{
    if (!c) return;
    for (int i = 0; i < c->ncached; i++)
        free(c->cache[i].sql);
    PQfinish(c->db); /* the server ends the session and whatever it had open */
    free(c->vals);
    free(c->lens);
    free(c);
}

/* One connection, retried with a growing pause while the server does not
 * take connections (down, starting, shutting down), up to retry_ms.  A
 * server that answers and refuses us (password, unknown database) is not
 * waited for.  ES_EAGAIN when the time ran out, ES_EBACKEND when refused. */
static int conn_open(pg_store *s, int64_t retry_ms, pg_conn **out)
{
    *out = NULL;
    /* connect_timeout comes first, so that the URL may override it;
     * client_encoding last, so that it may not (values are UTF-8 text) */
    static const char *const kw[] = {"connect_timeout", "dbname", "client_encoding",
                                     "fallback_application_name", NULL};
    const char *const vals[] = {CONNECT_TIMEOUT_S, s->conninfo, "UTF8", "esteira", NULL};
    int64_t deadline = es_mono_ms() + retry_ms;
    int64_t pause = CONNECT_PAUSE_MIN;
    char msg[LOG_MSG_MAX];
    for (int attempt = 1;; attempt++) {
        PGconn *db = PQconnectdbParams(kw, vals, 1);
        if (!db) return ES_ENOMEM;
        if (PQstatus(db) == CONNECTION_OK) {
            pg_conn *c = calloc(1, sizeof *c);
            if (!c) {
                PQfinish(db);
                return ES_ENOMEM;
            }
            c->s = s;
            c->db = db;
            PQsetNoticeReceiver(db, notice_cb, c);
            if (attempt > 1) es_info(COMP, "postgres %s: connected again", s->shown);
            *out = c;
            return ES_OK;
        }
        one_line(PQerrorMessage(db), msg, sizeof msg);
        PQfinish(db);
        /* Did the server answer?  PQPING_OK: it is up and accepts
         * connections, so the refusal was about us. */
        PGPing ping = PQpingParams(kw, vals, 1);
        if (ping == PQPING_OK || ping == PQPING_NO_ATTEMPT) {
            es_error(COMP, "postgres %s: cannot connect: %s", s->shown, msg);
            return ES_EBACKEND;
        }
        if (es_mono_ms() + pause > deadline) {
            es_error(COMP, "postgres %s: cannot connect after %d attempt(s) in %lld ms: %s",
                     s->shown, attempt, (long long)retry_ms, msg);
            return ES_EAGAIN;
        }
        if (attempt == 1)
            es_warn(COMP, "postgres %s: cannot connect (%s); retrying for up to %lld ms", s->shown,
                    msg, (long long)retry_ms);
        es_sleep_ms(pause);
        pause = pause * 2 > CONNECT_PAUSE_MAX ? CONNECT_PAUSE_MAX : pause * 2;
    }
}

/* Whether an idle connection still looks usable, without a round trip.  An
 * idle session gets no traffic unless the server has something to say: a
 * readable socket means a notice, a parameter change or, usually, its
 * goodbye before closing (shutdown, restart, pg_terminate_backend). */
static bool conn_alive(pg_conn *c)
{
    if (c->broken || PQstatus(c->db) != CONNECTION_OK) return false;
    if (PQtransactionStatus(c->db) != PQTRANS_IDLE) return false;
    /* The goodbye (a FATAL, which notice_cb turns into c->broken) and the
     * end of the stream may arrive in separate reads: read while there is
     * something to read, a few times at most. */
    for (int i = 0; i < 4; i++) {
        struct pollfd p = {.fd = PQsocket(c->db), .events = POLLIN};
        int n = poll(&p, 1, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) break;
        if (n < 0 || !PQconsumeInput(c->db) || c->broken) return false;
        PGnotify *note;
        while ((note = PQnotifies(c->db)))
            PQfreemem(note);
    }
    return !c->broken && PQstatus(c->db) == CONNECTION_OK;
}

/* ---- the statement cache */

static uint64_t hash_sql(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Drops entry i (its server-side statement too, which takes a round trip
 * and works in any state but an aborted transaction). */
static int stmt_evict(pg_conn *c, int i)
{
    stmt_entry *e = &c->cache[i];
    int rc = ES_OK;
    if (PQtransactionStatus(c->db) != PQTRANS_INERROR) {
        char sql[STMT_NAME_MAX + 16];
        snprintf(sql, sizeof sql, "DEALLOCATE %s", e->name);
        PGresult *res = PQexec(c->db, sql);
        if (!res_ok(res)) rc = fail(c, res, "deallocate", NULL);
        PQclear(res);
    } else {
        /* the name stays taken on the server until the session ends;
         * names are never reused, so that is harmless */
    }
    free(e->sql);
    *e = c->cache[--c->ncached];
    return rc;
}

/* The prepared statement for sql, from the cache or prepared now. */
static int stmt_get(pg_conn *c, const char *sql, stmt_entry **out)
{
    *out = NULL;
    uint64_t h = hash_sql(sql);
    for (int i = 0; i < c->ncached; i++) {
        stmt_entry *e = &c->cache[i];
        if (e->hash == h && strcmp(e->sql, sql) == 0) {
            e->used = ++c->tick;
            *out = e;
            return ES_OK;
        }
    }
    char name[STMT_NAME_MAX];
    snprintf(name, sizeof name, "es_%llu", (unsigned long long)++c->seq);
    PGresult *res = PQprepare(c->db, name, sql, 0, NULL);
    if (!res_ok(res)) {
        int rc = fail(c, res, "prepare", sql);
        PQclear(res);
        return rc;
    }
    PQclear(res);
    /* how many parameters the server found, so that a call giving another
     * number is refused here, with a clear message */
    res = PQdescribePrepared(c->db, name);
    if (!res_ok(res)) {
        int rc = fail(c, res, "describe", sql);
        PQclear(res);
        return rc;
    }
    int nparams = PQnparams(res);
    PQclear(res);
    char *copy = strdup(sql);
    if (!copy) return ES_ENOMEM;
    if (c->ncached == STMT_CACHE) {
        int victim = 0;
        for (int i = 1; i < c->ncached; i++)
            if (c->cache[i].used < c->cache[victim].used) victim = i;
        int rc = stmt_evict(c, victim);
        if (rc != ES_OK) {
            free(copy);
            return rc;
        }
    }
    stmt_entry *e = &c->cache[c->ncached++];
    e->hash = h;
    e->sql = copy;
    es_strlcpy(e->name, name, sizeof e->name);
    e->nparams = nparams;
    e->used = ++c->tick;
    *out = e;
    return ES_OK;
}

/* ---- the store */

static void pg_close(void *ctx)
{
    pg_store *s = ctx;
    if (!s) return;
    if (s->pool.idle) {
        int busy = es_pool_in_use(&s->pool);
        if (busy) es_error(COMP, "postgres: closing with %d connection(s) still in use", busy);
        pg_conn *c;
        while ((c = es_pool_pop_idle(&s->pool)))
            conn_close(c);
        es_pool_finish(&s->pool);
    }
    free(s->conninfo);
    free(s->shown);
    free(s);
}

static int pg_open(const char *url, const es_config *cfg, void **ctx)
{
    (void)cfg;
    *ctx = NULL;
    pg_store *s = calloc(1, sizeof *s);
    if (!s) return ES_ENOMEM;
    s->pool_max = POOL_DEFAULT;
    s->retry_ms = CONNECT_RETRY_MS;

    int rc = parse_url(s, url);
    if (rc != ES_OK) goto fail_store;
    /* One connection now: a wrong password or database fails here rather
     * than at the first query. */
    rc = es_pool_init(&s->pool, s->pool_max);
    if (rc != ES_OK) goto fail_store;
    void *slot;
    es_pool_take(&s->pool, 0, &slot); /* an empty pool has room */
    pg_conn *c;
    rc = conn_open(s, s->retry_ms, &c);
    if (rc != ES_OK) {
        es_pool_drop(&s->pool);
        goto fail_store;
    }
    es_pool_put(&s->pool, c);
    es_debug(COMP, "postgres %s: open, pool of %d", s->shown, s->pool_max);
    *ctx = s;
    return ES_OK;

fail_store:
    pg_close(s);
    return rc;
}

/* A pooled connection, or a new one (retried up to retry_ms) when the pool
 * has room. */
static int acquire(pg_store *s, int64_t retry_ms, void **out)
{
    *out = NULL;
    void *idle;
    if (es_pool_take(&s->pool, ACQUIRE_WAIT_MS, &idle) != ES_OK) {
        es_warn(COMP, "postgres: no free connection after %d ms (pool of %d)", ACQUIRE_WAIT_MS,
                s->pool_max);
        return ES_EAGAIN;
    }
    pg_conn *c = idle; /* the most recently used: its caches are warm */
    if (c && !conn_alive(c)) {
        es_info(COMP, "postgres %s: a pooled connection was closed by the server; reconnecting",
                s->shown);
        conn_close(c); /* its slot goes to the new one */
        c = NULL;
    }
    if (!c) {
        int rc = conn_open(s, retry_ms, &c);
        if (rc != ES_OK) {
            es_pool_drop(&s->pool);
            return rc;
        }
    }
    *out = c;
    return ES_OK;
}

static int pg_acquire(void *ctx, void **out)
{
    pg_store *s = ctx;
    return acquire(s, s->retry_ms, out);
}

static void pg_release(void *ctx, void *conn, bool broken)
{
    pg_store *s = ctx;
    pg_conn *c = conn;
    if (!c) return;
    broken = broken || c->broken || PQstatus(c->db) != CONNECTION_OK;
    if (!broken) {
        PGTransactionStatusType ts = PQtransactionStatus(c->db);
        if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
            /* locks held by an open transaction would outlive its user */
            es_warn(COMP, "postgres: connection released inside a transaction: rolling back");
            PGresult *res = PQexec(c->db, "ROLLBACK");
            if (!res_ok(res)) broken = true;
            PQclear(res);
        } else if (ts != PQTRANS_IDLE) {
            broken = true; /* a command still running, or the state is unknown */
        }
    }
    if (broken) {
        conn_close(c);
        es_pool_drop(&s->pool);
        return;
    }
    es_pool_put(&s->pool, c);
}

/* ---- statements */

static int ensure_row_room(pg_conn *c, int ncols)
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

/* Copies a successful result into an es_rows. */
static int collect(pg_conn *c, const PGresult *res, es_rows **out)
{
    int ncols = PQnfields(res), nrows = PQntuples(res);
    es_rows *r = es_rows_new(ncols);
    if (!r || ensure_row_room(c, ncols) != ES_OK) goto fail_rows;
    for (int i = 0; i < ncols; i++)
        if (es_rows_set_colname(r, i, PQfname(res, i)) != ES_OK) goto fail_rows;
    for (int row = 0; row < nrows; row++) {
        for (int i = 0; i < ncols; i++) {
            if (PQgetisnull(res, row, i)) {
                c->vals[i] = NULL;
                continue;
            }
            c->vals[i] = PQgetvalue(res, row, i);
            c->lens[i] = (size_t)PQgetlength(res, row, i);
        }
        if (es_rows_add(r, c->vals, c->lens) != ES_OK) goto fail_rows;
    }
    /* "INSERT 0 3", "UPDATE 6", "SELECT 4": the count; "" for DDL */
    int64_t affected = 0;
    const char *n = PQcmdTuples((PGresult *)res);
    if (n && *n && es_parse_i64(n, 0, INT64_MAX, &affected) != ES_OK) affected = 0;
    es_rows_set_affected(r, affected);
    *out = r;
    return ES_OK;

fail_rows:
    es_rows_free(r);
    return ES_ENOMEM;
}

/* Ends a COPY the server started when the caller did not expect one, so
 * that the connection is back to taking statements (or marked broken). */
static void refuse_copy(pg_conn *c, PGresult *res)
{
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_COPY_IN) {
        if (PQputCopyEnd(c->db, "not accepted here") != 1) c->broken = true;
    } else if (st == PGRES_COPY_OUT) {
        char *buf;
        while (PQgetCopyData(c->db, &buf, 0) > 0)
            PQfreemem(buf);
    } else if (st == PGRES_COPY_BOTH) {
        c->broken = true; /* replication: nothing to do with us */
        return;
    } else {
        return;
    }
    PGresult *r;
    while ((r = PQgetResult(c->db))) {
        ExecStatusType rst = PQresultStatus(r);
        PQclear(r);
        if (rst == PGRES_COPY_IN || rst == PGRES_COPY_OUT || rst == PGRES_COPY_BOTH) {
            c->broken = true;
            return;
        }
    }
}

/* The outcome of one statement: rows into *out, or the mapped error. */
static int finish(pg_conn *c, PGresult *res, const char *what, const char *sql, es_rows **out)
{
    int rc;
    ExecStatusType st = PQresultStatus(res);
    if (res && (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)) {
        rc = out ? collect(c, res, out) : ES_OK;
    } else if (res && st == PGRES_EMPTY_QUERY) {
        es_warn(COMP, "postgres: empty statement");
        rc = ES_EINVAL;
    } else if (res && (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH)) {
        es_warn(COMP, "postgres: COPY goes through copy_in, not exec: %.*s", LOG_SQL_MAX, sql);
        refuse_copy(c, res);
        rc = ES_EINVAL;
    } else {
        rc = fail(c, res, what, sql);
    }
    PQclear(res);
    return rc;
}

/* A cached statement that fails this way is stale, not wrong: a table it
 * reads changed shape (0A000 "cached plan must not change result type"), or
 * the session lost it (26000, e.g. DISCARD ALL). */
static bool stale_stmt(const PGresult *res)
{
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    return state_is(state, "0A000") || state_is(state, "26000");
}

static int pg_exec(void *conn, const char *sql, int nparams, const char *const *params,
                   es_rows **out)
{
    pg_conn *c = conn;
    if (out) *out = NULL;
    if (nparams < 0) return ES_EINVAL;
    if (nparams == 0) {
        /* the unnamed statement: still one statement only, and $n refused */
        PGresult *res = PQexecParams(c->db, sql, 0, NULL, NULL, NULL, NULL, 0);
        return finish(c, res, "exec", sql, out);
    }
    for (int attempt = 0;; attempt++) {
        stmt_entry *e;
        int rc = stmt_get(c, sql, &e);
        if (rc != ES_OK) return rc;
        if (e->nparams != nparams) {
            es_warn(COMP, "postgres: statement takes %d parameter(s), %d given: %.*s", e->nparams,
                    nparams, LOG_SQL_MAX, sql);
            return ES_EINVAL;
        }
        PGresult *res = PQexecPrepared(c->db, e->name, nparams, params, NULL, NULL, 0);
        if (attempt == 0 && PQresultStatus(res) == PGRES_FATAL_ERROR && stale_stmt(res)) {
            int idx = (int)(e - c->cache);
            if (stmt_evict(c, idx) != ES_OK) return finish(c, res, "exec", sql, out);
            /* outside a transaction nothing was lost: prepare it again and
             * run it; inside one, the transaction is aborted anyway */
            if (PQtransactionStatus(c->db) == PQTRANS_IDLE) {
                es_debug(COMP, "postgres: statement re-prepared: %.*s", LOG_SQL_MAX, sql);
                PQclear(res);
                continue;
            }
        }
        return finish(c, res, "exec", sql, out);
    }
}

static int pg_exec_script(void *conn, const char *sql)
{
    pg_conn *c = conn;
    /* the simple protocol runs several statements; outside a transaction
     * block they commit or fail together */
    PGresult *res = PQexec(c->db, sql);
    ExecStatusType st = PQresultStatus(res);
    if (res && st == PGRES_EMPTY_QUERY) {
        PQclear(res);
        return ES_OK;
    }
    return finish(c, res, "script", sql, NULL);
}

/* ---- copy_in */

static int copy_sql(es_buf *b, const char *table, const char *const *cols, int ncols, bool binary)
{
    if (!es_ident_valid(table)) {
        es_warn(COMP, "copy_in: bad table name");
        return ES_EINVAL;
    }
    int rc = es_buf_printf(b, "COPY %s (", table);
    for (int i = 0; rc == ES_OK && i < ncols; i++) {
        if (!es_ident_valid(cols[i])) {
            es_warn(COMP, "copy_in: bad column name");
            return ES_EINVAL;
        }
        rc = es_buf_printf(b, "%s%s", i ? ", " : "", cols[i]);
    }
    if (rc == ES_OK) rc = es_buf_puts(b, binary ? ") FROM STDIN (FORMAT binary)" : ") FROM STDIN");
    return rc;
}

/* Blocking mode: each call sends what it can and waits for the socket. */
static int put_copy(void *arg, const char *data, size_t len)
{
    pg_conn *c = arg;
    for (size_t off = 0; off < len;) {
        size_t n = len - off > COPY_CHUNK ? COPY_CHUNK : len - off;
        if (PQputCopyData(c->db, data + off, (int)n) != 1) return ES_EBACKEND;
        off += n;
    }
    return ES_OK;
}

/* COPY … FROM STDIN: in the binary format when the caller typed the columns,
 * encoded as it goes, else the text as it is.  A value without a binary form
 * ends the COPY with an error of our own: ES_EUNSUPPORTED, and the caller
 * rolls back to before it and sends the text (pg_copy_in checks first).
 * Inside the caller's transaction when one is open (the connection's state);
 * otherwise COPY is its own transaction: all rows or none, either way. */
static int copy_load(pg_conn *c, const char *table, const char *const *cols,
                     const es_copy_type *types, int ncols, const char *data, size_t len,
                     int64_t *rows)
{
    bool binary = types && len;
    es_buf sql;
    es_buf_init(&sql, 0);
    int rc = copy_sql(&sql, table, cols, ncols, binary);
    if (rc != ES_OK) goto out_sql;
    PGresult *res = PQexec(c->db, es_buf_cstr(&sql));
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        rc = res_ok(res) ? ES_EINVAL : fail(c, res, "copy", es_buf_cstr(&sql));
        refuse_copy(c, res);
        PQclear(res);
        goto out_sql;
    }
    PQclear(res);
    /* A row the server rejects shows only in the final result; a stream cut
     * short here is ended with an error, so the server keeps none of it. */
    size_t bad = 0;
    int sent = binary ? es_pgbin_encode(types, ncols, data, len, put_copy, c, &bad)
                      : put_copy(c, data, len);
    if (PQputCopyEnd(c->db, sent == ES_OK ? NULL : "esteira: the rows could not be sent") != 1)
        sent = ES_EBACKEND;
    /* the first result is the COPY's outcome; the loop only drains */
    res = PQgetResult(c->db);
    if (binary && sent == ES_EINVAL) {
        es_debug(COMP, "copy into %s: row %zu has a value without a binary form", table, bad);
        rc = ES_EUNSUPPORTED;
    } else if (!res_ok(res)) {
        rc = fail(c, res, "copy", es_buf_cstr(&sql));
    } else if (sent != ES_OK) {
        rc = fail(c, NULL, "copy", es_buf_cstr(&sql));
    } else {
        *rows = strtoll(PQcmdTuples(res), NULL, 10);
    }
    PQclear(res);
    while ((res = PQgetResult(c->db)))
        PQclear(res);
out_sql:
    es_buf_finish(&sql);
    return rc;
}

/* Without a savepoint to go back to, the rows are checked before the COPY:
 * one that has no binary form sends them all as text. */
static int pg_copy_in(void *conn, const char *table, const char *const *cols,
                      const es_copy_type *types, int ncols, const char *data, size_t len)
{
    int64_t n = 0;
    if (types && es_pgbin_encode(types, ncols, data, len, NULL, NULL, NULL) != ES_OK) types = NULL;
    return copy_load(conn, table, cols, types, ncols, data, len, &n);
}

static int run(pg_conn *c, const char *sql)
{
    return pg_exec(c, sql, 0, NULL, NULL);
}

/* Back to the start of pg_copy_merge's transaction or savepoint. */
static int restart(pg_conn *c, bool own)
{
    int rc = run(c, own ? "ROLLBACK" : "ROLLBACK TO es_merge");
    return rc == ES_OK && own ? run(c, "BEGIN") : rc;
}

/* COPY straight into the table first, in a savepoint: when no key is there
 * yet (the usual case: a new file) that is all the work there is.  Only when a
 * key exists already does it go round through a temporary table and INSERT …
 * ON CONFLICT DO NOTHING, which costs about twice as much. */
static int pg_copy_merge(void *conn, const char *table, const char *const *cols,
                         const es_copy_type *types, int ncols, const char *data, size_t len,
                         int64_t *inserted)
{
    pg_conn *c = conn;
    if (!es_ident_valid(table)) return ES_EINVAL;
    bool own = PQtransactionStatus(c->db) == PQTRANS_IDLE;
    int rc = run(c, own ? "BEGIN" : "SAVEPOINT es_merge");
    if (rc != ES_OK) return rc;
    int64_t n = 0;
    rc = copy_load(c, table, cols, types, ncols, data, len, &n);
    if (rc == ES_EUNSUPPORTED) { /* a value without a binary form: the text instead */
        types = NULL;
        rc = restart(c, own);
        if (rc == ES_OK) rc = copy_load(c, table, cols, NULL, ncols, data, len, &n);
    }
    if (rc == ES_OK) {
        *inserted = n;
        return run(c, own ? "COMMIT" : "RELEASE es_merge");
    }
    if (rc != ES_ECONFLICT) goto undo;
    if ((rc = restart(c, own)) != ES_OK) goto undo;

    char stage[64]; /* a PostgreSQL identifier: at most 63 bytes */
    snprintf(stage, sizeof stage, "es_merge_%.54s", table);
    es_buf sql;
    es_buf_init(&sql, 0);
    rc = es_buf_printf(&sql,
                       "CREATE TEMP TABLE IF NOT EXISTS %s (LIKE %s INCLUDING DEFAULTS)"
                       " ON COMMIT DELETE ROWS; DELETE FROM %s",
                       stage, table, stage);
    if (rc == ES_OK) rc = pg_exec_script(c, es_buf_cstr(&sql));
    if (rc == ES_OK) rc = copy_load(c, stage, cols, types, ncols, data, len, &n);
    es_buf_reset(&sql);
    if (rc == ES_OK) rc = es_buf_printf(&sql, "INSERT INTO %s (", table);
    for (int pass = 0; pass < 2 && rc == ES_OK; pass++) {
        for (int i = 0; rc == ES_OK && i < ncols; i++)
            rc = es_buf_printf(&sql, "%s%s", i ? ", " : "", cols[i]);
        if (rc == ES_OK) rc = es_buf_puts(&sql, pass ? " FROM " : ") SELECT ");
    }
    if (rc == ES_OK) rc = es_buf_printf(&sql, "%s ON CONFLICT DO NOTHING", stage);
    es_rows *res = NULL;
    if (rc == ES_OK) rc = pg_exec(c, es_buf_cstr(&sql), 0, NULL, &res);
    if (rc == ES_OK) *inserted = es_rows_affected(res);
    es_rows_free(res);
    es_buf_finish(&sql);
    if (rc == ES_OK) return run(c, own ? "COMMIT" : "RELEASE es_merge");
undo:
    if (own)
        run(c, "ROLLBACK");
    else if (run(c, "ROLLBACK TO es_merge") == ES_OK)
        run(c, "RELEASE es_merge");
    return rc;
}

static int pg_ping(void *ctx)
{
    /* one connection attempt, no waiting: a readiness probe wants to know
     * how things are now */
    void *conn;
    int rc = acquire(ctx, 0, &conn);
    if (rc != ES_OK) return rc;
    rc = pg_exec(conn, "SELECT 1", 0, NULL, NULL);
    pg_release(ctx, conn, rc == ES_EBACKEND);
    return rc;
}

/* "postgres" matches postgres:// and postgresql:// (open checks which). */
const es_store_ops es_store_pg = {
    .name = "postgres",
    .scheme = "postgres",
    .dialect = ES_DIALECT_PG,
    .open = pg_open,
    .close = pg_close,
    .acquire = pg_acquire,
    .release = pg_release,
    .exec = pg_exec,
    .exec_script = pg_exec_script,
    .copy_in = pg_copy_in,
    .copy_merge = pg_copy_merge,
    .ping = pg_ping,
};
