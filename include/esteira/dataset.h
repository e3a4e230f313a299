/* dataset.h - a dataset is a named, typed table that CSV uploads load into:
 * its columns (CSV header -> column name, type, required, normalisation) and a
 * key.  Values are validated and normalised one by one into the text form the
 * store loads (PostgreSQL COPY text format, see store.h). */
#ifndef ESTEIRA_DATASET_H
#define ESTEIRA_DATASET_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "esteira/store.h"
#include "esteira/util.h"

#define ES_DATASET_MAX_COLS 64
#define ES_IDENT_MAX        63

typedef enum es_coltype {
    ES_COL_TEXT,
    ES_COL_INTEGER,   /* 32-bit */
    ES_COL_BIGINT,    /* 64-bit */
    ES_COL_DECIMAL,   /* decimal(precision, scale) */
    ES_COL_BOOLEAN,   /* true/false, t/f, yes/no, 1/0 (any case) -> "true"/"false" */
    ES_COL_DATE,      /* YYYY-MM-DD, a real date (2023-02-30 is invalid) */
    ES_COL_TIMESTAMP, /* RFC 3339 / ISO 8601 with a zone -> UTC "YYYY-MM-DDTHH:MM:SS.mmmZ" */
    ES_COL_UUID,      /* -> lower case */
    ES_COL_EMAIL,     /* local@domain syntax -> domain lower-cased */
    ES_COL_JSON,      /* any JSON value -> compact */
} es_coltype;

const char *es_coltype_name(es_coltype t);
/* How a bulk load carries the type (its PostgreSQL column is es_dataset_ddl's). */
es_copy_type es_coltype_copy(es_coltype t);
int es_coltype_parse(const char *s); /* -1 when unknown */

typedef struct es_column {
    char name[ES_IDENT_MAX + 1]; /* column in the table: [a-z_][a-z0-9_]* */
    char header[128];            /* CSV header that feeds it */
    es_coltype type;
    int precision, scale; /* decimal */
    bool required;        /* empty -> rejected (else NULL) */
    bool trim;            /* strip surrounding spaces (default true) */
    int max_len;          /* text: characters, 0 = unbounded */
    bool nonneg;          /* integer, bigint, decimal: negatives rejected */
} es_column;

typedef struct es_dataset {
    char name[ES_IDENT_MAX + 1];
    char table[ES_IDENT_MAX + 1]; /* "ds_<name>" */
    es_column cols[ES_DATASET_MAX_COLS];
    int ncols;
    int key; /* index of the key column */
} es_dataset;

/* The built-in "debts" (Kanastra): name, governmentId, email, debtAmount
 * decimal(14,2), debtDueDate date, debtId uuid (key). */
const es_dataset *es_dataset_builtin(const char *name);
/* From a definition {"name","columns":[{"name","header"?,"type","required"?,
 * "precision"?,"scale"?,"maxLength"?,"trim"?,"nonNegative"?}],"key"}; err names
 * the field at fault. */
int es_dataset_from_json(const json_t *def, es_dataset *out, char *err, size_t errlen);
json_t *es_dataset_to_json(const es_dataset *d);
/* CREATE TABLE IF NOT EXISTS for the dialect, the key UNIQUE. */
int es_dataset_ddl(const es_dataset *d, es_dialect dialect, es_buf *out);

/* Maps a CSV header onto the columns: col_of[i] = the column of field i, or -1
 * for a field no column wants.  ES_EINVAL when a column is missing or a header
 * is unknown or repeated; *problems then lists them ([{field, problem}]). */
typedef struct es_header_map {
    int col_of[ES_DATASET_MAX_COLS * 2];
    int nfields;
} es_header_map;
int es_dataset_map_header(const es_dataset *d, const char *const *fields, const size_t *lens,
                          int nfields, es_header_map *m, json_t **problems);

/* Validates and normalises one value; on success appends it to out in COPY
 * text format (escaped; \N for an empty optional value), without a separator.
 * On failure returns ES_EINVAL and sets *problem to a short static reason
 * ("not a valid date"); ES_ELIMIT (nothing appended) when out is full. */
int es_value_normalize(const es_column *c, const char *in, size_t len, es_buf *out,
                       const char **problem);

#endif
