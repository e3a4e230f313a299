/* store.c - the store front: backend registry, connection wrappers, results
 * and the COPY text format.
 *
 * Callers never touch es_store_ops directly: they go through the small
 * wrappers below, which add what every backend would otherwise repeat -
 * remembering whether a transaction is open (so a connection given back in
 * the middle of one is rolled back instead of leaking its locks into the next
 * user) and whether the connection failed (so the pool drops it). */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

#define COMP "store"

/* Backends chosen by the prefix of the URL. */
static const es_store_ops *const backends[] = {
    &es_store_sqlite,
    &es_store_pg,
};

struct es_store {
    const es_store_ops *ops;
    void *ctx;
};

struct es_store_conn {
    es_store *store;
    void *conn;
    bool broken; /* drop it on release */
    bool in_tx;  /* es_store_begin without commit/rollback yet */
};

/* ---- the store */

static const es_store_ops *find_backend(const char *url)
{
    for (size_t i = 0; i < ES_ARRAY_LEN(backends); i++) {
        const char *scheme = backends[i]->scheme;
        if (strncmp(url, scheme, strlen(scheme)) == 0) return backends[i];
    }
    return NULL;
}

int es_store_open(const char *url, const es_config *cfg, es_store **out)
{
    *out = NULL;
    if (!url || !*url) {
        es_error(COMP, "no database URL");
        return ES_EINVAL;
    }
    const es_store_ops *ops = find_backend(url);
    if (!ops) {
        /* Only the scheme is logged: the rest may hold a password. */
        size_t n = strcspn(url, ":");
        es_error(COMP, "no store backend for scheme '%.*s'", (int)(n > 32 ? 32 : n), url);
        return ES_EINVAL;
    }
    es_store *s = calloc(1, sizeof *s);
    if (!s) return ES_ENOMEM;
    s->ops = ops;
    int rc = ops->open(url, cfg, &s->ctx);
    if (rc != ES_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return ES_OK;
}

void es_store_close(es_store *s)
{
    if (!s) return;
    s->ops->close(s->ctx);
    free(s);
}

es_dialect es_store_dialect(const es_store *s)
{
    return s->ops->dialect;
}

const char *es_store_name(const es_store *s)
{
    return s->ops->name;
}

int es_store_ping(es_store *s)
{
    return s->ops->ping(s->ctx);
}

/* ---- connections */

int es_store_acquire(es_store *s, es_store_conn **out)
{
    *out = NULL;
    es_store_conn *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    int rc = s->ops->acquire(s->ctx, &c->conn);
    if (rc != ES_OK) {
        free(c);
        return rc;
    }
    c->store = s;
    *out = c;
    return ES_OK;
}

void es_store_release(es_store_conn *c)
{
    if (!c) return;
    const es_store_ops *ops = c->store->ops;
    if (c->in_tx && !c->broken) {
        /* A transaction left open would hold its locks (and, on SQLite, the
         * only write lock) until the next user of the connection ends it. */
        es_warn(COMP, "connection released inside a transaction: rolling back");
        if (ops->exec(c->conn, "ROLLBACK", 0, NULL, NULL) != ES_OK) c->broken = true;
    }
    ops->release(c->store->ctx, c->conn, c->broken);
    free(c);
}

void es_store_conn_broken(es_store_conn *c)
{
    c->broken = true;
}

/* A backend error (as opposed to a bad statement or a conflict) may mean the
 * connection itself is gone: it is not worth keeping. */
static int note(es_store_conn *c, int rc)
{
    if (rc == ES_EBACKEND) c->broken = true;
    return rc;
}

int es_store_exec(es_store_conn *c, const char *sql, int nparams, const char *const *params,
                  es_rows **out)
{
    if (out) *out = NULL;
    return note(c, c->store->ops->exec(c->conn, sql, nparams, params, out));
}

int es_store_exec_script(es_store_conn *c, const char *sql)
{
    return note(c, c->store->ops->exec_script(c->conn, sql));
}

int es_store_begin(es_store_conn *c)
{
    if (c->in_tx) {
        es_error(COMP, "begin inside an open transaction");
        return ES_EINVAL;
    }
    /* SQLite: take the write lock up front.  A deferred transaction that
     * reads and then writes cannot wait for the lock (its snapshot would be
     * stale) and fails at once with SQLITE_BUSY when another writer got in
     * between; IMMEDIATE waits at BEGIN instead, where waiting is safe. */
    const char *sql = c->store->ops->dialect == ES_DIALECT_SQLITE ? "BEGIN IMMEDIATE" : "BEGIN";
    int rc = es_store_exec(c, sql, 0, NULL, NULL);
    if (rc == ES_OK) c->in_tx = true;
    return rc;
}

int es_store_commit(es_store_conn *c)
{
    if (!c->in_tx) {
        es_error(COMP, "commit without a transaction");
        return ES_EINVAL;
    }
    int rc = es_store_exec(c, "COMMIT", 0, NULL, NULL);
    if (rc != ES_OK && !c->broken) {
        /* SQLite keeps the transaction open when COMMIT fails; end it so
         * the connection goes back clean and the caller sees one outcome. */
        if (c->store->ops->exec(c->conn, "ROLLBACK", 0, NULL, NULL) != ES_OK) c->broken = true;
    }
    c->in_tx = false;
    return rc;
}

int es_store_rollback(es_store_conn *c)
{
    if (!c->in_tx) {
        es_error(COMP, "rollback without a transaction");
        return ES_EINVAL;
    }
    c->in_tx = false;
    return es_store_exec(c, "ROLLBACK", 0, NULL, NULL);
}

int es_store_copy_in(es_store_conn *c, const char *table, const char *const *cols,
                     const es_copy_type *types, int ncols, const char *data, size_t len)
{
    if (ncols <= 0) return ES_EINVAL;
    return note(c, c->store->ops->copy_in(c->conn, table, cols, types, ncols, data, len));
}

int es_store_copy_merge(es_store_conn *c, const char *table, const char *const *cols,
                        const es_copy_type *types, int ncols, const char *data, size_t len,
                        int64_t *inserted)
{
    *inserted = 0;
    if (ncols <= 0) return ES_EINVAL;
    return note(c,
                c->store->ops->copy_merge(c->conn, table, cols, types, ncols, data, len, inserted));
}

int es_store_exec1(es_store *s, const char *sql, int nparams, const char *const *params,
                   es_rows **out)
{
    if (out) *out = NULL;
    es_store_conn *c;
    int rc = es_store_acquire(s, &c);
    if (rc != ES_OK) return rc;
    rc = es_store_exec(c, sql, nparams, params, out);
    es_store_release(c);
    return rc;
}

/* ---- results
 *
 * Every value and column name lives in one arena, NUL-terminated; the table
 * of cells holds offsets into it (the arena moves while it grows), with
 * NULL_OFF standing for SQL NULL so that NULL and "" stay distinct. */

#define NULL_OFF SIZE_MAX

struct es_rows {
    int ncols, nrows, cap; /* cap = rows the cell table has room for */
    int64_t affected;
    size_t *names; /* ncols offsets */
    size_t *cells; /* nrows * ncols offsets */
    es_buf arena;
};

es_rows *es_rows_new(int ncols)
{
    if (ncols < 0) return NULL;
    es_rows *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->ncols = ncols;
    if (ncols > 0) {
        r->names = malloc((size_t)ncols * sizeof *r->names);
        if (!r->names) {
            free(r);
            return NULL;
        }
        for (int i = 0; i < ncols; i++)
            r->names[i] = NULL_OFF;
    }
    es_buf_init(&r->arena, 0);
    return r;
}

void es_rows_free(es_rows *r)
{
    if (!r) return;
    es_buf_finish(&r->arena);
    free(r->cells);
    free(r->names);
    free(r);
}

/* Appends s[0..len) and a NUL to the arena; *off receives where it starts. */
static int arena_put(es_rows *r, const char *s, size_t len, size_t *off)
{
    size_t at = r->arena.len;
    int rc = es_buf_reserve(&r->arena, len + 1);
    if (rc != ES_OK) return rc;
    if (len) memcpy(r->arena.data + at, s, len);
    r->arena.data[at + len] = '\0';
    r->arena.len = at + len + 1;
    *off = at;
    return ES_OK;
}

int es_rows_set_colname(es_rows *r, int col, const char *name)
{
    if (col < 0 || col >= r->ncols || !name) return ES_EINVAL;
    return arena_put(r, name, strlen(name), &r->names[col]);
}

int es_rows_add(es_rows *r, const char *const *values, const size_t *lens)
{
    if (r->nrows == r->cap) {
        int cap = r->cap ? r->cap * 2 : 16;
        if (cap <= r->cap || (size_t)cap > SIZE_MAX / sizeof *r->cells / (size_t)(r->ncols + 1))
            return ES_ENOMEM;
        if (r->ncols > 0) {
            size_t *cells = realloc(r->cells, (size_t)cap * (size_t)r->ncols * sizeof *cells);
            if (!cells) return ES_ENOMEM;
            r->cells = cells;
        }
        r->cap = cap;
    }
    size_t mark = r->arena.len;
    size_t *row = r->cells ? r->cells + (size_t)r->nrows * (size_t)r->ncols : NULL;
    for (int i = 0; i < r->ncols; i++) {
        if (!values[i]) {
            row[i] = NULL_OFF;
            continue;
        }
        size_t len = lens ? lens[i] : strlen(values[i]);
        int rc = arena_put(r, values[i], len, &row[i]);
        if (rc != ES_OK) {
            r->arena.len = mark; /* the row is not added at all */
            return rc;
        }
    }
    r->nrows++;
    return ES_OK;
}

void es_rows_set_affected(es_rows *r, int64_t n)
{
    r->affected = n;
}

int es_rows_count(const es_rows *r)
{
    return r ? r->nrows : 0;
}

int es_rows_ncols(const es_rows *r)
{
    return r ? r->ncols : 0;
}

int64_t es_rows_affected(const es_rows *r)
{
    return r ? r->affected : 0;
}

const char *es_rows_colname(const es_rows *r, int col)
{
    if (!r || col < 0 || col >= r->ncols || r->names[col] == NULL_OFF) return NULL;
    return r->arena.data + r->names[col];
}

const char *es_rows_get(const es_rows *r, int row, int col)
{
    if (!r || row < 0 || row >= r->nrows || col < 0 || col >= r->ncols) return NULL;
    size_t off = r->cells[(size_t)row * (size_t)r->ncols + (size_t)col];
    return off == NULL_OFF ? NULL : r->arena.data + off;
}

int64_t es_rows_int(const es_rows *r, int row, int col, int64_t def)
{
    const char *v = es_rows_get(r, row, col);
    int64_t n;
    if (!v || es_parse_i64(v, INT64_MIN, INT64_MAX, &n) != ES_OK) return def;
    return n;
}

/* ---- COPY text format (PostgreSQL's "text" COPY: rows end with \n, fields
 * are separated by \t, \N is NULL, and a backslash escapes the rest). */

/* What a byte becomes after the backslash, or 0 when it is written as is.
 * Backslash, tab, newline and carriage return are all the format needs;
 * other control bytes may travel raw. */
static char copy_escape(unsigned char ch)
{
    switch (ch) {
    case '\\': return '\\';
    case '\t': return 't';
    case '\n': return 'n';
    case '\r': return 'r';
    default: return 0;
    }
}

/* Room for `need` more bytes, or ES_ELIMIT with the buffer untouched, so a
 * caller filling a bounded batch can flush it and write the field again. */
static int copy_room(es_buf *b, size_t need)
{
    if (b->max && (b->len > b->max || need > b->max - b->len)) return ES_ELIMIT;
    return es_buf_reserve(b, need);
}

int es_copy_field(es_buf *b, const char *s, size_t len, bool last)
{
    if (!s) return es_copy_null(b, last);
    size_t need = len + 1;
    for (size_t i = 0; i < len; i++)
        if (copy_escape((unsigned char)s[i])) need++;
    int rc = copy_room(b, need);
    if (rc != ES_OK) return rc;
    char *w = b->data + b->len;
    for (size_t i = 0; i < len; i++) {
        char e = copy_escape((unsigned char)s[i]);
        if (e) {
            *w++ = '\\';
            *w++ = e;
        } else {
            *w++ = s[i];
        }
    }
    *w++ = last ? '\n' : '\t';
    *w = '\0'; /* es_buf keeps its contents terminated; reserve made room */
    b->len += need;
    return ES_OK;
}

int es_copy_null(es_buf *b, bool last)
{
    int rc = copy_room(b, 3);
    if (rc != ES_OK) return rc;
    memcpy(b->data + b->len, last ? "\\N\n" : "\\N\t", 4);
    b->len += 3;
    return ES_OK;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decoding follows PostgreSQL's COPY FROM: \b \f \n \r \t \v, \digits (1-3
 * octal), \xhh (1-2 hex), and any other escaped byte stands for itself.  The
 * output is never longer than the input, so it is done in place.  The \N
 * of NULL is the caller's to recognise, before decoding. */
size_t es_copy_unescape(char *s, size_t len)
{
    size_t r = 0, w = 0;
    while (r < len) {
        char *esc = memchr(s + r, '\\', len - r);
        size_t plain = esc ? (size_t)(esc - (s + r)) : len - r;
        if (plain) {
            if (w != r) memmove(s + w, s + r, plain);
            w += plain;
            r += plain;
        }
        if (!esc) break;
        r++; /* the backslash */
        if (r == len) {
            s[w++] = '\\'; /* a lone trailing backslash is kept as is */
            break;
        }
        unsigned char c = (unsigned char)s[r++];
        switch (c) {
        case 'b': s[w++] = '\b'; break;
        case 'f': s[w++] = '\f'; break;
        case 'n': s[w++] = '\n'; break;
        case 'r': s[w++] = '\r'; break;
        case 't': s[w++] = '\t'; break;
        case 'v': s[w++] = '\v'; break;
        case 'x':
            if (r < len && hexval((unsigned char)s[r]) >= 0) {
                int v = hexval((unsigned char)s[r++]);
                if (r < len && hexval((unsigned char)s[r]) >= 0)
                    v = v * 16 + hexval((unsigned char)s[r++]);
                s[w++] = (char)v;
            } else {
                s[w++] = 'x';
            }
            break;
        default:
            if (c >= '0' && c <= '7') {
                int v = c - '0';
                for (int k = 0; k < 2 && r < len && s[r] >= '0' && s[r] <= '7'; k++)
                    v = v * 8 + (s[r++] - '0');
                s[w++] = (char)(v & 0xff);
            } else {
                s[w++] = (char)c;
            }
        }
    }
    return w;
}
