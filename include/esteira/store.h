/* store.h - the database contract (sqlite:, postgres://).
 *
 * SQL is written once, in the subset both engines share, with $1..$n
 * placeholders (the SQLite backend maps them to ?1..?n).  Values travel as
 * text, NULL as a NULL pointer; timestamps are integers (ms since the epoch),
 * so no date arithmetic depends on the engine.  Where the dialects differ
 * (types in migrations, upserts that need special syntax), the caller asks
 * es_store_dialect() - and such differences live in src/core/schema.c.
 *
 * A connection is taken from the store's pool, used by one thread, and given
 * back.  Bulk loads go through copy_in, whose input is PostgreSQL's COPY text
 * format (tab-separated, \N for NULL, backslash escapes): a flat encoding that
 * PostgreSQL takes natively and SQLite's backend turns into prepared inserts.
 * The caller may say what each column holds (es_copy_type): PostgreSQL's
 * backend then sends the rows in the binary format, which spares the server
 * parsing every value. */
#ifndef ESTEIRA_STORE_H
#define ESTEIRA_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/conf.h"

typedef enum es_dialect { ES_DIALECT_SQLITE, ES_DIALECT_PG } es_dialect;

typedef struct es_store es_store;           /* an instance: ops + ctx */
typedef struct es_store_conn es_store_conn; /* one pooled connection */
typedef struct es_rows es_rows;             /* a result, all values as text */

/* What a column of a bulk load holds, for PostgreSQL's binary COPY: each is
 * the table's own column type, in the text form esteira's normalisers write.
 * ES_COPY_TEXT is text (and e-mail).  Types NULL: every value as text. */
typedef enum es_copy_type {
    ES_COPY_TEXT,
    ES_COPY_INT4,        /* integer */
    ES_COPY_INT8,        /* bigint */
    ES_COPY_NUMERIC,     /* numeric: [-]digits[.digits] */
    ES_COPY_BOOL,        /* boolean: true / false */
    ES_COPY_DATE,        /* date: YYYY-MM-DD */
    ES_COPY_TIMESTAMPTZ, /* timestamptz: YYYY-MM-DDTHH:MM:SS[.ffffff]Z */
    ES_COPY_UUID,        /* uuid */
    ES_COPY_JSONB,       /* jsonb */
} es_copy_type;

typedef struct es_store_ops {
    const char *name;   /* "sqlite" */
    const char *scheme; /* "sqlite:" or "postgres://" prefix matched against the URL */
    es_dialect dialect;
    int (*open)(const char *url, const es_config *cfg, void **ctx);
    void (*close)(void *ctx);
    int (*acquire)(void *ctx, void **conn);
    /* broken = the caller saw a connection-level failure: drop, don't reuse */
    void (*release)(void *ctx, void *conn, bool broken);
    /* out may be NULL; else *out receives the rows (SELECT / RETURNING) and the
     * count of changed rows. */
    int (*exec)(void *conn, const char *sql, int nparams, const char *const *params, es_rows **out);
    /* Several statements separated by ';', no parameters (migrations). */
    int (*exec_script)(void *conn, const char *sql);
    int (*copy_in)(void *conn, const char *table, const char *const *cols,
                   const es_copy_type *types, int ncols, const char *data, size_t len);
    /* copy_in that leaves out rows whose unique key exists already (or comes
     * twice in data), counting the rows it inserted */
    int (*copy_merge)(void *conn, const char *table, const char *const *cols,
                      const es_copy_type *types, int ncols, const char *data, size_t len,
                      int64_t *inserted);
    int (*ping)(void *ctx);
} es_store_ops;

/* The registered backends, chosen by URL scheme. */
extern const es_store_ops es_store_sqlite;
extern const es_store_ops es_store_pg; /* defined once the PostgreSQL backend exists */

int es_store_open(const char *url, const es_config *cfg, es_store **out);
void es_store_close(es_store *s); /* NULL is a no-op */
es_dialect es_store_dialect(const es_store *s);
const char *es_store_name(const es_store *s);
int es_store_ping(es_store *s);

int es_store_acquire(es_store *s, es_store_conn **out);
void es_store_release(es_store_conn *c);
/* Marks the connection as unusable: release() will drop it. */
void es_store_conn_broken(es_store_conn *c);

int es_store_exec(es_store_conn *c, const char *sql, int nparams, const char *const *params,
                  es_rows **out);
int es_store_exec_script(es_store_conn *c, const char *sql);
int es_store_begin(es_store_conn *c);
int es_store_commit(es_store_conn *c);
int es_store_rollback(es_store_conn *c);
/* types: one per column, or NULL (see es_copy_type) */
int es_store_copy_in(es_store_conn *c, const char *table, const char *const *cols,
                     const es_copy_type *types, int ncols, const char *data, size_t len);
/* As copy_in, but a row whose unique key is already in the table (or earlier
 * in data) is left out rather than failing the load; *inserted = the rows that
 * went in.  All rows or none, inside the caller's transaction if one is open. */
int es_store_copy_merge(es_store_conn *c, const char *table, const char *const *cols,
                        const es_copy_type *types, int ncols, const char *data, size_t len,
                        int64_t *inserted);
/* acquire + exec + release, for one-statement work */
int es_store_exec1(es_store *s, const char *sql, int nparams, const char *const *params,
                   es_rows **out);

/* Schema migrations (src/core/schema.c): applies what is missing, in order, each
 * in its own transaction, recorded in schema_migrations. */
int es_store_migrate(es_store *s, int *applied);

/* ---- results */
int es_rows_count(const es_rows *r);
int es_rows_ncols(const es_rows *r);
int64_t es_rows_affected(const es_rows *r);
const char *es_rows_colname(const es_rows *r, int col);
/* NULL for SQL NULL */
const char *es_rows_get(const es_rows *r, int row, int col);
int64_t es_rows_int(const es_rows *r, int row, int col, int64_t def);
void es_rows_free(es_rows *r); /* NULL is a no-op */

/* For backends: build a result. */
es_rows *es_rows_new(int ncols);
int es_rows_set_colname(es_rows *r, int col, const char *name);
/* values[i] NULL = SQL NULL; lens may be NULL (strlen is used) */
int es_rows_add(es_rows *r, const char *const *values, const size_t *lens);
void es_rows_set_affected(es_rows *r, int64_t n);

/* COPY text format helpers: append a field (escaping \t \n \r \\), a NULL, an
 * end of row.  decode turns one escaped field back in place. */
struct es_buf;
int es_copy_field(struct es_buf *b, const char *s, size_t len, bool last);
int es_copy_null(struct es_buf *b, bool last);
size_t es_copy_unescape(char *s, size_t len);

#endif
