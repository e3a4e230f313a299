/* registry.c - where datasets come from: the built-in ones (dataset.c), then
 * the definitions stored in the `datasets` table (made over the API or read
 * from ESTEIRA_DATASETS_DIR at start), and how their rows are read back.
 * Definitions never change once created, so a table made once stays right;
 * each process remembers which tables it has made sure of, and asks the store
 * only the first time. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/upload.h"

#define COMP "datasets"

#define ENSURED_MAX 256

static pthread_mutex_t ensured_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const es_store *store;
    char table[ES_IDENT_MAX + 1];
} ensured[ENSURED_MAX];
static int nensured;

static bool is_ensured(const es_store *s, const char *table)
{
    bool yes = false;
    pthread_mutex_lock(&ensured_mu);
    for (int i = 0; i < nensured && !yes; i++)
        yes = ensured[i].store == s && strcmp(ensured[i].table, table) == 0;
    pthread_mutex_unlock(&ensured_mu);
    return yes;
}

static void set_ensured(const es_store *s, const char *table)
{
    pthread_mutex_lock(&ensured_mu);
    if (nensured < ENSURED_MAX) {
        ensured[nensured].store = s;
        es_strlcpy(ensured[nensured].table, table, sizeof ensured[nensured].table);
        nensured++;
    }
    pthread_mutex_unlock(&ensured_mu);
}

int es_datasets_ensure_table(es_store *s, const es_dataset *d)
{
    if (is_ensured(s, d->table)) return ES_OK;
    es_buf ddl;
    es_buf_init(&ddl, 0);
    int rc = es_dataset_ddl(d, es_store_dialect(s), &ddl);
    /* two processes creating it at once: PostgreSQL may refuse the second
     * CREATE … IF NOT EXISTS with a unique violation; once more settles it */
    for (int attempt = 0; rc == ES_OK && attempt < 2; attempt++) {
        es_store_conn *c;
        if ((rc = es_store_acquire(s, &c)) != ES_OK) break;
        rc = es_store_exec_script(c, es_buf_cstr(&ddl));
        es_store_release(c);
        if (rc != ES_ECONFLICT) break;
    }
    es_buf_finish(&ddl);
    if (rc == ES_OK)
        set_ensured(s, d->table);
    else
        es_error(COMP, "cannot create the table of dataset %s: %s", d->name, es_strerror(rc));
    return rc;
}

int es_datasets_get(es_store *s, const char *name, es_dataset *out)
{
    const es_dataset *b = es_dataset_builtin(name);
    if (b) {
        *out = *b;
        return ES_OK;
    }
    if (!name || !es_ident_valid(name)) return ES_ENOTFOUND;
    const char *p[] = {name};
    es_rows *r = NULL;
    int rc = es_store_exec1(s, "SELECT definition FROM datasets WHERE name = $1", 1, p, &r);
    if (rc != ES_OK) return rc;
    if (es_rows_count(r) != 1) {
        es_rows_free(r);
        return ES_ENOTFOUND;
    }
    json_t *def = json_loads(es_rows_get(r, 0, 0), 0, NULL);
    char err[200];
    rc = def ? es_dataset_from_json(def, out, err, sizeof err) : ES_EINVAL;
    if (rc != ES_OK) es_error(COMP, "the stored definition of dataset %s is unusable", name);
    json_decref(def);
    es_rows_free(r);
    return rc;
}

int es_datasets_create(es_store *s, const es_dataset *d)
{
    if (es_dataset_builtin(d->name)) return ES_ECONFLICT;
    json_t *def = es_dataset_to_json(d);
    char *text = def ? json_dumps(def, JSON_COMPACT) : NULL;
    json_decref(def);
    if (!text) return ES_ENOMEM;
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *p[] = {d->name, text, now};
    int rc = es_store_exec1(
        s, "INSERT INTO datasets (name, definition, created_ms) VALUES ($1, $2, $3)", 3, p, NULL);
    free(text);
    if (rc == ES_OK) rc = es_datasets_ensure_table(s, d);
    return rc;
}

int es_datasets_list(es_store *s, json_t **out)
{
    *out = json_array();
    if (!*out) return ES_ENOMEM;
    json_array_append_new(*out, es_dataset_to_json(es_dataset_builtin("debts")));
    es_rows *r = NULL;
    int rc = es_store_exec1(s, "SELECT definition FROM datasets ORDER BY name", 0, NULL, &r);
    for (int i = 0; rc == ES_OK && i < es_rows_count(r); i++) {
        json_t *def = json_loads(es_rows_get(r, i, 0), 0, NULL);
        if (def) json_array_append_new(*out, def);
    }
    es_rows_free(r);
    if (rc != ES_OK) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}

/* ---------------------------------------------------------------- definitions from files */

#define DEF_FILE_MAX  (1 << 20)
#define DEF_MAX_DEPTH 16

static bool same_definition(const es_dataset *a, const es_dataset *b)
{
    json_t *ja = es_dataset_to_json(a), *jb = es_dataset_to_json(b);
    bool same = ja && jb && json_equal(ja, jb);
    json_decref(ja);
    json_decref(jb);
    return same;
}

static int read_small(const char *path, es_buf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f) return ES_EIO;
    char chunk[8192];
    size_t n;
    int rc = ES_OK;
    while (rc == ES_OK && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rc = es_buf_append(out, chunk, n);
    if (rc == ES_OK && ferror(f)) rc = ES_EIO;
    fclose(f);
    return rc;
}

/* One file: a definition that is new is stored, one that is already stored
 * the same is fine (every process of a deployment reads the same directory
 * at start), and one that differs from what is stored is refused: rows were
 * loaded under the stored one, and definitions never change. */
static int load_file(es_store *s, const char *path, bool *created)
{
    es_buf text;
    es_buf_init(&text, DEF_FILE_MAX);
    json_t *def = NULL;
    char err[256];
    int rc = read_small(path, &text);
    if (rc != ES_OK) {
        es_error(COMP, "%s: %s", path, rc == ES_ELIMIT ? "larger than 1 MiB" : "cannot be read");
        goto out_text;
    }
    rc = es_json_parse(text.data ? text.data : "", text.len, DEF_MAX_DEPTH, &def, err, sizeof err);
    if (rc != ES_OK) {
        es_error(COMP, "%s: not JSON: %s", path, err);
        goto out_text;
    }
    es_dataset d;
    if ((rc = es_dataset_from_json(def, &d, err, sizeof err)) != ES_OK) {
        es_error(COMP, "%s: %s", path, err);
        goto out_def;
    }
    if (es_dataset_builtin(d.name)) {
        es_error(COMP, "%s: name: '%s' is a built-in dataset", path, d.name);
        rc = ES_ECONFLICT;
        goto out_def;
    }
    rc = es_datasets_create(s, &d);
    if (rc == ES_OK) {
        *created = true;
        es_info(COMP, "dataset %s defined by %s", d.name, path);
    } else if (rc == ES_ECONFLICT) {
        es_dataset stored;
        if ((rc = es_datasets_get(s, d.name, &stored)) != ES_OK) goto out_def;
        if (!same_definition(&d, &stored)) {
            es_error(COMP,
                     "%s: dataset %s is already defined otherwise; a definition cannot "
                     "change once rows may have been loaded under it: give it a new name",
                     path, d.name);
            rc = ES_ECONFLICT;
            goto out_def;
        }
        rc = es_datasets_ensure_table(s, &stored);
    } else {
        es_error(COMP, "%s: cannot store dataset %s: %s", path, d.name, es_strerror(rc));
    }
out_def:
    json_decref(def);
out_text:
    es_buf_finish(&text);
    return rc;
}

static int json_file(const struct dirent *e)
{
    size_t n = strlen(e->d_name);
    return e->d_name[0] != '.' && n > 5 && strcmp(e->d_name + n - 5, ".json") == 0;
}

int es_datasets_load_dir(es_store *s, const char *dir)
{
    if (!dir || !*dir) return ES_OK;
    struct dirent **names = NULL;
    int n = scandir(dir, &names, json_file, alphasort);
    if (n < 0) {
        es_error(COMP, "cannot read the datasets directory %s: %s", dir, strerror(errno));
        return ES_EIO;
    }
    int rc = ES_OK, created = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        if (rc == ES_OK) {
            bool made = false;
            if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name) >=
                sizeof path) {
                es_error(COMP, "%s/%s: path too long", dir, names[i]->d_name);
                rc = ES_EINVAL;
            } else {
                rc = load_file(s, path, &made);
            }
            created += made;
        }
        free(names[i]);
    }
    free(names);
    if (rc == ES_OK) es_info(COMP, "%d dataset definitions in %s (%d new)", n, dir, created);
    return rc;
}

/* ---------------------------------------------------------------- rows */

/* A page stops early past this many bytes of JSON (rows of long text), so a
 * page stays bounded whatever its limit; the cursor then continues there. */
#define PAGE_SOFT_MAX (16u << 20)

/* The value as the store hands it back, in one spelling on both engines:
 * PostgreSQL's dates and timestamps would follow its DateStyle, and SQLite
 * keeps decimals as numbers (7811.00 reads back 7811), so both are written
 * here in the form the normaliser gives them. */
static int select_expr(es_buf *sql, const es_column *c, es_dialect dialect)
{
    if (dialect == ES_DIALECT_PG) {
        if (c->type == ES_COL_TIMESTAMP)
            return es_buf_printf(sql,
                                 "to_char(%s AT TIME ZONE 'UTC', "
                                 "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                                 c->name);
        if (c->type == ES_COL_DATE) return es_buf_printf(sql, "to_char(%s, 'YYYY-MM-DD')", c->name);
    } else if (c->type == ES_COL_DECIMAL) {
        return es_buf_printf(sql, "CASE WHEN %s IS NULL THEN NULL ELSE printf('%%.%df', %s) END",
                             c->name, c->scale, c->name);
    }
    return es_buf_puts(sql, c->name);
}

static int to_buf(const char *data, size_t n, void *b)
{
    return es_buf_append(b, data, n) == ES_OK ? 0 : -1;
}

/* s as a JSON string (jansson escapes it, straight into b) */
static int put_json_string(es_buf *b, const char *s, size_t n)
{
    json_t *j = json_stringn_nocheck(s, n);
    int rc = j && json_dump_callback(j, to_buf, b, JSON_ENCODE_ANY) == 0 ? ES_OK : ES_ENOMEM;
    json_decref(j);
    return rc;
}

/* JSON's number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool json_number(const char *s)
{
    if (*s == '-') s++;
    if (*s == '0')
        s++;
    else if (*s >= '1' && *s <= '9')
        while (*s >= '0' && *s <= '9')
            s++;
    else
        return false;
    if (*s == '.') {
        if (!(*++s >= '0' && *s <= '9')) return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '+' || *s == '-') s++;
        if (!(*s >= '0' && *s <= '9')) return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == '\0';
}

/* Numbers as they are stored, digit for digit (a decimal(38,10) does not fit
 * a double); anything the store gives back that is not what its type
 * promises is passed on as a string rather than as broken JSON. */
static int put_value(es_buf *b, es_coltype type, const char *v)
{
    if (!v) return es_buf_puts(b, "null");
    switch (type) {
    case ES_COL_INTEGER:
    case ES_COL_BIGINT:
    case ES_COL_DECIMAL:
        if (json_number(v)) return es_buf_puts(b, v);
        break;
    case ES_COL_BOOLEAN: /* PostgreSQL says t/f, SQLite keeps the text loaded */
        return es_buf_puts(b, v[0] == 't' ? "true" : "false");
    case ES_COL_JSON: {
        json_t *j = json_loads(v, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, NULL);
        json_decref(j);
        if (j) return es_buf_puts(b, v);
        break;
    }
    default: break;
    }
    return put_json_string(b, v, strlen(v));
}

static int put_row(es_buf *b, const es_dataset *d, const es_rows *r, int i)
{
    int rc = es_buf_puts(b, "{");
    for (int c = 0; rc == ES_OK && c < d->ncols; c++) {
        if (c) es_buf_puts(b, ",");
        rc = put_json_string(b, d->cols[c].header, strlen(d->cols[c].header));
        if (rc == ES_OK) rc = es_buf_puts(b, ":");
        if (rc == ES_OK) rc = put_value(b, d->cols[c].type, es_rows_get(r, i, c));
    }
    if (rc == ES_OK) rc = es_buf_puts(b, ",\"_upload\":");
    if (rc == ES_OK) rc = put_value(b, ES_COL_TEXT, es_rows_get(r, i, d->ncols));
    if (rc == ES_OK) rc = es_buf_puts(b, ",\"_line\":");
    if (rc == ES_OK) rc = put_value(b, ES_COL_BIGINT, es_rows_get(r, i, d->ncols + 1));
    if (rc == ES_OK) rc = es_buf_puts(b, "}");
    return rc;
}

int es_datasets_rows(es_store *s, const es_dataset *d, const es_dataset_page *q, es_buf *items,
                     char **next)
{
    *next = NULL;
    if (q->nmatch < 0 || q->nmatch > ES_DATASET_MAX_COLS || q->limit < 1 || !q->tenant)
        return ES_EINVAL;
    int rc = es_datasets_ensure_table(s, d);
    if (rc != ES_OK) return rc;
    es_dialect dialect = es_store_dialect(s);
    const char *params[ES_DATASET_MAX_COLS + 2];
    int np = 0;
    es_buf sql;
    es_buf_init(&sql, 0);
    rc = es_buf_puts(&sql, "SELECT ");
    for (int c = 0; rc == ES_OK && c < d->ncols; c++) {
        rc = select_expr(&sql, &d->cols[c], dialect);
        if (rc == ES_OK) rc = es_buf_puts(&sql, ", ");
    }
    params[np++] = q->tenant;
    if (rc == ES_OK)
        rc = es_buf_printf(&sql, "upload_id, line FROM %s WHERE tenant = $1", d->table);
    for (int m = 0; rc == ES_OK && m < q->nmatch; m++) {
        int col = q->match[m].col;
        if (col < 0 || col >= d->ncols) {
            rc = ES_EINVAL;
        } else if (!q->match[m].value) {
            rc = es_buf_printf(&sql, " AND %s IS NULL", d->cols[col].name);
        } else {
            params[np++] = q->match[m].value;
            rc = es_buf_printf(&sql, " AND %s = $%d", d->cols[col].name, np);
        }
    }
    const char *key = d->cols[d->key].name;
    if (rc == ES_OK && q->after) {
        params[np++] = q->after;
        rc = es_buf_printf(&sql, " AND %s > $%d", key, np);
    }
    /* one more than asked: whether a next page exists, without a query for it */
    if (rc == ES_OK) rc = es_buf_printf(&sql, " ORDER BY %s LIMIT %d", key, q->limit + 1);
    es_rows *r = NULL;
    if (rc == ES_OK) rc = es_store_exec1(s, es_buf_cstr(&sql), np, params, &r);
    es_buf_finish(&sql);
    if (rc != ES_OK) return rc;

    int n = es_rows_count(r), last = -1;
    rc = es_buf_puts(items, "[");
    for (int i = 0; rc == ES_OK && i < n && i < q->limit; i++) {
        if (i) rc = es_buf_puts(items, ",");
        if (rc == ES_OK) rc = put_row(items, d, r, i);
        last = i;
        if (items->len >= PAGE_SOFT_MAX) break;
    }
    if (rc == ES_OK) rc = es_buf_puts(items, "]");
    if (rc == ES_OK && last >= 0 && last + 1 < n) {
        *next = es_strdup(es_rows_get(r, last, d->key));
        if (!*next) rc = ES_ENOMEM;
    }
    es_rows_free(r);
    return rc;
}
