/* api_datasets.c - /v1/datasets: the typed tables CSV uploads load into,
 * their definitions (shared by every tenant) and their rows (each tenant sees
 * only its own).  Definitions and rows live in src/pipeline/registry.c. */
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/upload.h"
#include "http/api.h"

#define ROWS_DEFAULT 50
#define ROWS_MAX     1000

static json_t *problem(const char *field, const char *why)
{
    return json_pack("{s:s, s:s}", "field", field, "problem", why);
}

static int no_dataset(es_req *r, const char *name)
{
    char msg[160];
    snprintf(msg, sizeof msg, "no dataset named '%.100s'", name);
    return es_reply_error(r, 404, "not_found", msg, NULL);
}

/* ---- definitions */

static int created(es_req *r, unsigned status, const es_dataset *d, json_t *def)
{
    char loc[ES_IDENT_MAX + 16];
    snprintf(loc, sizeof loc, "/v1/datasets/%s", d->name);
    es_reply_header(r, "Location", loc);
    return es_reply_json(r, status, def);
}

/* Names are global and definitions never change: a name that exists is 409,
 * unless the request carries an Idempotency-Key and defines exactly what is
 * stored - a client repeating its own POST gets the dataset back. */
int api_datasets_create(es_req *r)
{
    es_app *app = es_req_app(r);
    json_t *body = NULL;
    if (es_req_json(r, &body)) return ES_OK; /* answered */
    es_dataset d;
    char err[256];
    int rc = es_dataset_from_json(body, &d, err, sizeof err);
    json_decref(body);
    if (rc != ES_OK) {
        /* "columns[2].type: unknown type 'x'" -> field and problem */
        char *sep = strstr(err, ": ");
        const char *why = sep ? sep + 2 : err;
        if (sep) *sep = '\0';
        return es_reply_error(r, 400, "validation_failed", "the dataset definition is not valid",
                              json_pack("[o]", problem(sep ? err : "", why)));
    }
    char msg[160];
    if (es_dataset_builtin(d.name)) {
        snprintf(msg, sizeof msg, "'%s' is a built-in dataset", d.name);
        return es_reply_error(r, 409, "conflict", msg, NULL);
    }
    rc = es_datasets_create(app->store, &d);
    if (rc && rc != ES_ECONFLICT) return es_reply_err(r, rc, "could not create the dataset");
    json_t *def = es_dataset_to_json(&d);
    if (!def) return es_reply_err(r, ES_ENOMEM, NULL);
    if (rc == ES_OK) return created(r, 201, &d, def);
    es_dataset stored;
    json_t *have = NULL;
    if (es_req_header(r, "Idempotency-Key") &&
        es_datasets_get(app->store, d.name, &stored) == ES_OK)
        have = es_dataset_to_json(&stored);
    bool same = have && json_equal(have, def);
    json_decref(have);
    if (same) {
        es_reply_header(r, "Idempotent-Replayed", "true");
        return created(r, 200, &d, def);
    }
    json_decref(def);
    snprintf(msg, sizeof msg, "a dataset named '%s' exists already", d.name);
    return es_reply_error(r, 409, "conflict", msg, NULL);
}

int api_datasets_list(es_req *r)
{
    json_t *items = NULL;
    int rc = es_datasets_list(es_req_app(r)->store, &items);
    if (rc) return es_reply_err(r, rc, "could not list the datasets");
    return es_reply_json(r, 200, json_pack("{s:o}", "items", items));
}

int api_datasets_get(es_req *r)
{
    const char *name = es_req_param(r, "name");
    es_dataset d;
    int rc = es_datasets_get(es_req_app(r)->store, name, &d);
    if (rc == ES_ENOTFOUND) return no_dataset(r, name);
    if (rc) return es_reply_err(r, rc, "could not read the dataset");
    json_t *o = es_dataset_to_json(&d);
    return o ? es_reply_json(r, 200, o) : es_reply_err(r, ES_ENOMEM, NULL);
}

/* ---- rows */

static int b64url_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '-') return 62;
    if (ch == '_') return 63;
    return -1;
}

/* base64url without padding (es_b64url's form) -> a malloc'd string; NULL
 * when s is not one, or decodes to something with a NUL in it. */
static char *b64url_decode(const char *s)
{
    size_t n = strlen(s);
    if (n % 4 == 1) return NULL;
    char *out = malloc(n * 3 / 4 + 1);
    if (!out) return NULL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_value((unsigned char)s[i]);
        if (v < 0) goto fail_decode;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            char c = (char)(acc >> bits & 0xff);
            if (c == '\0') goto fail_decode;
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return out;

fail_decode:
    free(out);
    return NULL;
}

/* A value as it is stored: normalised for its column (an e-mail's domain
 * lower-cased, 10.5 as 10.50, …) and unescaped from COPY text.  *out = NULL
 * for an empty optional value (which is stored as NULL). */
static int stored_form(const es_column *c, const char *in, char **out, const char **why)
{
    *out = NULL;
    es_buf b;
    es_buf_init(&b, 0);
    int rc = es_value_normalize(c, in, strlen(in), &b, why);
    if (rc == ES_OK && !(b.len == 2 && memcmp(b.data, "\\N", 2) == 0)) {
        b.len = es_copy_unescape(b.data, b.len);
        *out = es_buf_steal(&b);
        if (!*out) rc = ES_ENOMEM;
    }
    es_buf_finish(&b);
    return rc;
}

static int column_named(const es_dataset *d, const char *name)
{
    for (int c = 0; c < d->ncols; c++)
        if (strcmp(d->cols[c].header, name) == 0 || strcmp(d->cols[c].name, name) == 0) return c;
    return -1;
}

/* Percent-decodes n bytes of a query (either side of an '='): es_query_get
 * does it for the value of "k=<them>". */
static int query_decode(const char *raw, size_t n, char *tmp, char *out, size_t outlen)
{
    memcpy(tmp, "k=", 2);
    memcpy(tmp + 2, raw, n);
    tmp[n + 2] = '\0';
    return es_query_get(tmp, "k", out, outlen);
}

typedef struct row_filter {
    es_dataset_match match[ES_DATASET_MAX_COLS];
    char *values[ES_DATASET_MAX_COLS];
    int n;
} row_filter;

static void filter_finish(row_filter *f)
{
    for (int i = 0; i < f->n; i++)
        free(f->values[i]);
    f->n = 0;
}

/* Every name=value of the query other than limit and cursor is an equality
 * filter on a column, named by its CSV header or its column name; a name
 * that is neither is refused, so a misspelt filter cannot quietly answer
 * every row.  Problems go to *details (a JSON array). */
static int parse_filters(const es_dataset *d, const char *query, row_filter *f, json_t *details)
{
    size_t cap = strlen(query) + 4;
    char *tmp = malloc(cap), *key = malloc(cap), *val = malloc(cap);
    int rc = tmp && key && val ? ES_OK : ES_ENOMEM;
    const char *p = query[0] == '?' ? query + 1 : query;
    while (rc == ES_OK && *p) {
        size_t n = strcspn(p, "&");
        const char *seg = p;
        p += n + (p[n] == '&');
        if (n == 0) continue;
        const char *eq = memchr(seg, '=', n);
        size_t klen = eq ? (size_t)(eq - seg) : n;
        const char *why = NULL;
        int col = -1;
        if (query_decode(seg, klen, tmp, key, cap) != ES_OK) {
            es_strlcpy(key, "?", cap);
            why = "bad percent-encoding";
        } else if (!strcmp(key, "limit") || !strcmp(key, "cursor")) {
            continue;
        } else if ((col = column_named(d, key)) < 0) {
            why = "not a column of this dataset (use its CSV header or its column name)";
        } else if (query_decode(eq ? eq + 1 : seg + n, eq ? n - klen - 1 : 0, tmp, val, cap) !=
                   ES_OK) {
            why = "bad percent-encoding";
        }
        for (int i = 0; !why && i < f->n; i++)
            if (f->match[i].col == col) why = "this column is filtered twice";
        if (!why) {
            char *stored = NULL;
            int nrc = stored_form(&d->cols[col], val, &stored, &why);
            if (nrc == ES_OK) {
                f->values[f->n] = stored;
                f->match[f->n].col = col;
                f->match[f->n].value = stored;
                f->n++;
            } else if (nrc != ES_EINVAL) {
                rc = nrc;
            }
        }
        if (why) {
            char field[160];
            es_strlcpy(field, key, sizeof field);
            json_array_append_new(details, problem(field, why));
        }
    }
    free(tmp);
    free(key);
    free(val);
    return rc;
}

/* The cursor is the last key of the previous page, base64url-encoded: the
 * next page starts after it, in key order, so rows loaded meanwhile appear
 * in their place and none is skipped or repeated. */
static int parse_cursor(const es_dataset *d, const char *cursor, char **after)
{
    *after = NULL;
    if (!cursor) return ES_OK;
    char *key = b64url_decode(cursor);
    if (!key) return ES_EINVAL;
    const char *why;
    int rc = stored_form(&d->cols[d->key], key, after, &why);
    free(key);
    if (rc == ES_OK && !*after) rc = ES_EINVAL;
    return rc;
}

int api_datasets_rows(es_req *r)
{
    es_app *app = es_req_app(r);
    const char *name = es_req_param(r, "name");
    es_dataset d;
    int rc = es_datasets_get(app->store, name, &d);
    if (rc == ES_ENOTFOUND) return no_dataset(r, name);
    if (rc) return es_reply_err(r, rc, "could not read the dataset");
    int limit;
    if (es_req_limit(r, ROWS_DEFAULT, ROWS_MAX, &limit)) return ES_OK; /* answered */

    row_filter f = {.n = 0};
    char *after = NULL, *next = NULL;
    es_buf items, out;
    es_buf_init(&items, 0);
    es_buf_init(&out, 0);
    json_t *details = json_array();
    if (!details) {
        rc = es_reply_err(r, ES_ENOMEM, NULL);
        goto out;
    }
    if ((rc = parse_filters(&d, es_req_raw_query(r), &f, details))) {
        rc = es_reply_err(r, rc, NULL);
        goto out;
    }
    rc = parse_cursor(&d, es_req_query(r, "cursor"), &after);
    if (rc == ES_EINVAL)
        json_array_append_new(details, problem("cursor", "not a cursor from a previous page"));
    else if (rc) {
        rc = es_reply_err(r, rc, NULL);
        goto out;
    }
    if (json_array_size(details)) {
        rc = es_reply_error(r, 400, "validation_failed", "bad query", details);
        details = NULL;
        goto out;
    }
    es_dataset_page q = {.tenant = es_req_tenant(r),
                         .match = f.match,
                         .nmatch = f.n,
                         .after = after,
                         .limit = limit};
    if ((rc = es_datasets_rows(app->store, &d, &q, &items, &next))) {
        rc = es_reply_err(r, rc, "could not read the rows");
        goto out;
    }
    rc = es_buf_puts(&out, "{\"items\":");
    if (rc == ES_OK) rc = es_buf_append(&out, items.data, items.len);
    if (rc == ES_OK && next) {
        size_t n = strlen(next);
        char *enc = malloc(4 * ((n + 2) / 3) + 1);
        if (!enc) rc = ES_ENOMEM;
        if (enc) es_b64url((const unsigned char *)next, n, enc);
        if (enc) rc = es_buf_printf(&out, ",\"nextCursor\":\"%s\"}", enc);
        free(enc);
    } else if (rc == ES_OK) {
        rc = es_buf_puts(&out, ",\"nextCursor\":null}");
    }
    rc = rc ? es_reply_err(r, rc, NULL)
            : es_reply_data(r, 200, "application/json", out.data, out.len);

out:
    json_decref(details);
    filter_finish(&f);
    free(after);
    free(next);
    es_buf_finish(&items);
    es_buf_finish(&out);
    return rc;
}
