/* upload.c - CSV uploads: receiving a file, cutting it into batches, and the
 * upload_batch job that loads one batch.  The data flow is in upload.h.
 *
 * Batches are byte ranges of the stored source, cut where a record begins
 * (es_csv_on_line), not copies of the rows: the broker carries a few hundred
 * bytes per batch, each worker reads its range back and parses it, and the
 * parsing and validation of a file spread over every worker. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "esteira/app.h"
#include "esteira/csv.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/upload.h"

#define COMP "uploads"

#define BATCHES_MAX          (4 * 1024 * 1024) /* per upload: 4M batches of 1000 rows = 4G rows */
#define TOUCH_EVERY_MS       2000              /* a receiving upload shows its bytes this often */
#define REJECT_RAW_MAX       200               /* bytes of a rejected value kept */
#define PRESIGN_GRACE_MS     (60 * 1000)       /* a PUT begun just before expiry may still finish */
#define SCAN_KIND            "upload_scan"
#define GROUP_MAX            1000   /* batches per job (the batches_per_job bound) */
#define PARSE_PARTS          2      /* readers of a big group, side by side */
#define SPLIT_MIN            64     /* batches of a group worth a second reader */
#define PUT_SLOTS            4      /* batch objects being written at once */
#define SQLITE_LOAD_CACHE_KB "8192" /* page cache of the connection loading a group */

#define SOURCE_KEY_MAX 80

/* uploads/{id}/source.csv: the file as it was sent */
static const char *source_key(const char *id, char key[SOURCE_KEY_MAX])
{
    snprintf(key, SOURCE_KEY_MAX, "uploads/%s/source.csv", id);
    return key;
}

/* ================================================================ receiving */

typedef struct batch_ref {
    int64_t offset, length, line, rows;
} batch_ref;

struct es_upload_rx {
    es_app *app;
    char id[ES_UUID_LEN + 1];
    char tenant[ES_TENANT_MAX + 1];
    char *idem, *trace;
    es_dataset ds;
    es_blob_writer *w;
    es_csv *csv;
    bool header_done;
    json_t *header; /* the header's fields, as sent */
    json_t *problems;
    char err[256];
    int rc;
    int64_t rows, last_touch;
    batch_ref *batches;
    size_t nbatches, cap;
    batch_ref cur; /* the batch being cut; cur.rows < 0 = none open */
};

const char *es_upload_rx_id(const es_upload_rx *rx)
{
    return rx->id;
}

json_t *es_upload_rx_problems(const es_upload_rx *rx)
{
    return rx->problems;
}

const char *es_upload_rx_error(const es_upload_rx *rx)
{
    return rx->err;
}

static void rx_fail(es_upload_rx *rx, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rx_fail(es_upload_rx *rx, int rc, const char *fmt, ...)
{
    if (rx->rc) return;
    rx->rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rx->err, sizeof rx->err, fmt, ap);
    va_end(ap);
}

static int close_batch(es_upload_rx *rx, int64_t end)
{
    if (rx->cur.rows <= 0) { /* nothing but empty lines since the last cut */
        rx->cur.rows = -1;
        return ES_OK;
    }
    if (rx->nbatches == rx->cap) {
        size_t ncap = rx->cap ? rx->cap * 2 : 256;
        if (ncap > BATCHES_MAX) return ES_ELIMIT;
        batch_ref *nb = realloc(rx->batches, ncap * sizeof *nb);
        if (!nb) return ES_ENOMEM;
        rx->batches = nb;
        rx->cap = ncap;
    }
    rx->cur.length = end - rx->cur.offset;
    rx->batches[rx->nbatches++] = rx->cur;
    rx->cur.rows = -1;
    return ES_OK;
}

/* A line starts between records: a batch may end here. */
static void on_line(void *arg, int64_t offset, int64_t line)
{
    es_upload_rx *rx = arg;
    if (!rx->header_done || rx->rc) return;
    const es_config *cfg = rx->app->cfg;
    if (rx->cur.rows >= 0 &&
        (rx->cur.rows >= cfg->batch_rows || offset - rx->cur.offset >= cfg->batch_bytes)) {
        int rc = close_batch(rx, offset);
        if (rc) rx_fail(rx, rc, "too many batches (%d at most)", BATCHES_MAX);
    }
    if (rx->cur.rows < 0) rx->cur = (batch_ref){.offset = offset, .line = line, .rows = 0};
}

static int on_record(void *arg, int64_t line, const char *const *fields, const size_t *lens,
                     int nfields)
{
    es_upload_rx *rx = arg;
    if (rx->header_done) {
        rx->rows++;
        rx->cur.rows++;
        return rx->rc ? 1 : 0;
    }
    es_header_map map;
    json_t *problems = NULL;
    int rc = es_dataset_map_header(&rx->ds, fields, lens, nfields, &map, &problems);
    if (rc != ES_OK) {
        rx->problems = problems;
        rx_fail(rx, ES_EINVAL, "line %" PRId64 ": the header does not fit dataset %s", line,
                rx->ds.name);
        return 1;
    }
    json_decref(problems);
    rx->header = json_array();
    for (int i = 0; i < nfields && rx->header; i++)
        json_array_append_new(rx->header, json_stringn(fields[i], lens[i]));
    rx->header_done = true;
    return 0;
}

static int exec_upload(es_app *app, const char *sql, int n, const char *const *p)
{
    return es_store_exec1(app->store, sql, n, p, NULL);
}

static void rx_free(es_upload_rx *rx);

/* A receiver for upload `id` (NULL = a new id): with a writer of the
 * source when the bytes come through us, without when they are in storage
 * already (presigned uploads). */
static int rx_new(es_app *app, const es_dataset *ds, const char *tenant, const char *id,
                  bool write_source, es_upload_rx **out)
{
    es_upload_rx *rx = calloc(1, sizeof *rx);
    if (!rx) return ES_ENOMEM;
    rx->app = app;
    rx->ds = *ds;
    rx->cur.rows = -1;
    if (id)
        es_strlcpy(rx->id, id, sizeof rx->id);
    else
        es_uuid7(rx->id);
    es_strlcpy(rx->tenant, tenant, sizeof rx->tenant);
    rx->last_touch = es_mono_ms();
    es_csv_limits lim = {.max_field = (size_t)app->cfg->csv_max_field,
                         .max_record = (size_t)app->cfg->csv_max_line,
                         .max_fields = ES_DATASET_MAX_COLS * 2};
    char key[SOURCE_KEY_MAX];
    source_key(rx->id, key);
    int rc = es_csv_create(&lim, on_record, rx, &rx->csv);
    if (!rc) es_csv_on_line(rx->csv, on_line);
    if (!rc && write_source) rc = es_blob_writer_open(app->blob, key, "text/csv", &rx->w);
    if (rc) {
        es_csv_destroy(rx->csv);
        free(rx);
        return rc;
    }
    *out = rx;
    return ES_OK;
}

static int find_idem(es_app *app, const char *tenant, const char *key, json_t **existing)
{
    const char *p[] = {tenant, key};
    es_rows *r = NULL;
    int rc = es_store_exec1(
        app->store, "SELECT id FROM uploads WHERE tenant = $1 AND idempotency_key = $2", 2, p, &r);
    if (rc == ES_OK && es_rows_count(r) == 1)
        rc = es_upload_get(app, tenant, es_rows_get(r, 0, 0), existing);
    es_rows_free(r);
    return rc;
}

int es_upload_begin(es_app *app, const es_upload_req *req, es_upload_rx **out, json_t **existing)
{
    *out = NULL;
    *existing = NULL;
    es_dataset ds;
    int rc = es_datasets_get(app->store, req->dataset, &ds);
    if (rc) return rc;
    if (req->idempotency_key &&
        ((rc = find_idem(app, req->tenant, req->idempotency_key, existing)) || *existing))
        return rc;
    if ((rc = es_datasets_ensure_table(app->store, &ds))) return rc;
    es_upload_rx *rx;
    if ((rc = rx_new(app, &ds, req->tenant, NULL, true, &rx))) return rc;
    rx->idem = es_strdup(req->idempotency_key);
    rx->trace = es_strdup(req->trace_id);
    char now[24];
    const char *p[] = {rx->id, rx->tenant, ds.name, req->filename, ES_I64(now, es_now_ms())};
    rc = exec_upload(app,
                     "INSERT INTO uploads (id, tenant, dataset, status, filename, created_ms,"
                     " updated_ms) VALUES ($1, $2, $3, 'receiving', $4, $5, $5)",
                     5, p);
    if (rc) {
        rx_free(rx);
        return rc;
    }
    es_info(COMP, "upload %s: receiving a file for dataset %s", rx->id, ds.name);
    *out = rx;
    return ES_OK;
}

static void rx_free(es_upload_rx *rx)
{
    es_blob_abort(rx->w);
    es_csv_destroy(rx->csv);
    json_decref(rx->header);
    json_decref(rx->problems);
    free(rx->batches);
    free(rx->idem);
    free(rx->trace);
    free(rx);
}

static void mark_failed(es_app *app, const char *id, const char *why)
{
    char now[24];
    const char *p[] = {id, why, ES_I64(now, es_now_ms())};
    if (exec_upload(app,
                    "UPDATE uploads SET status = 'failed', error = $2, finished_ms = $3,"
                    " updated_ms = $3 WHERE id = $1",
                    3, p))
        es_warn(COMP, "upload %s: could not record its failure", id);
}

void es_upload_abort(es_upload_rx *rx, const char *why)
{
    if (!rx) return;
    es_warn(COMP, "upload %s failed while receiving: %s", rx->id, why);
    mark_failed(rx->app, rx->id, why);
    rx_free(rx);
}

int es_upload_feed(es_upload_rx *rx, const char *data, size_t len)
{
    if (rx->rc) return rx->rc;
    int rc = rx->w ? es_blob_write(rx->w, data, len) : ES_OK;
    if (rc) {
        rx_fail(rx, rc, "cannot store the file: %s", es_strerror(rc));
        return rc;
    }
    rc = es_csv_feed(rx->csv, data, len);
    if (rc && !rx->rc) rx_fail(rx, ES_EINVAL, "%s", es_csv_error(rx->csv));
    if (rx->rc) return rx->rc;
    int64_t now = es_mono_ms();
    if (now - rx->last_touch >= TOUCH_EVERY_MS) {
        rx->last_touch = now;
        char b[24], t[24];
        const char *p[] = {rx->id, ES_I64(b, es_csv_bytes(rx->csv)), ES_I64(t, es_now_ms())};
        exec_upload(rx->app, "UPDATE uploads SET bytes = $2, updated_ms = $3 WHERE id = $1", 3, p);
    }
    return ES_OK;
}

/* The batch ledger, the batch jobs and the upload's new status, in one
 * transaction: either the upload is queued with all its batches, or not. */
static size_t group_size(const es_app *app)
{
    if (app->cfg->batches_per_job > 0) return (size_t)app->cfg->batches_per_job;
    /* SQLite pays per commit for every index page a batch touches; elsewhere a
     * job per few batches keeps the per-job costs (claim, done, object reads)
     * small next to the rows */
    return es_store_dialect(app->store) == ES_DIALECT_SQLITE ? GROUP_MAX : 8;
}

static int queue_batches(es_upload_rx *rx, char (*ids)[ES_UUID_LEN + 1], size_t *njobs_out,
                         bool *idem_taken)
{
    es_app *app = rx->app;
    es_store_conn *c;
    int rc = es_store_acquire(app->store, &c);
    if (rc) return rc;
    if ((rc = es_store_begin(c))) goto release;
    char *header = json_dumps(rx->header, JSON_COMPACT);
    char seq[24], rows[24], now[24], bytes[24], nb[24], total[24];
    es_buf payload;
    es_buf_init(&payload, 0);
    size_t per = group_size(app), njobs = 0;
    for (size_t first = 0; first < rx->nbatches && !rc; first += per, njobs++) {
        size_t n = rx->nbatches - first < per ? rx->nbatches - first : per;
        const batch_ref *a = &rx->batches[first], *z = &rx->batches[first + n - 1];
        es_buf_reset(&payload);
        es_buf_printf(&payload,
                      "{\"upload\":\"%s\",\"seq\":%zu,\"count\":%zu,\"offset\":%" PRId64
                      ",\"length\":%" PRId64 ",\"line\":%" PRId64 ",\"cuts\":[",
                      rx->id, first + 1, n, a->offset, z->offset + z->length - a->offset, a->line);
        for (size_t k = 1; k < n; k++)
            es_buf_printf(&payload, "%s%" PRId64, k > 1 ? "," : "", a[k].line);
        es_buf_puts(&payload, "]");
        if (n >= SPLIT_MIN) /* where a second reader of the group begins */
            es_buf_printf(&payload, ",\"split\":[%zu,%" PRId64 "]", n / 2, a[n / 2].offset);
        es_buf_puts(&payload, "}");
        es_job_req jr = {.kind = ES_UPLOAD_KIND,
                         .tenant = rx->tenant,
                         .payload = es_buf_cstr(&payload),
                         .trace_id = rx->trace};
        rc = es_job_insert_tx(app->engine, c, &jr, ids[njobs]);
        for (size_t k = 0; k < n && !rc; k++) {
            const char *p[] = {rx->id, ES_I64(seq, (int64_t)(first + k + 1)), ids[njobs],
                               ES_I64(rows, a[k].rows)};
            rc = es_store_exec(c,
                               "INSERT INTO upload_batches (upload_id, seq, job_id, rows)"
                               " VALUES ($1, $2, $3, $4)",
                               4, p, NULL);
        }
    }
    es_buf_finish(&payload);
    *njobs_out = njobs;
    int64_t t = es_now_ms();
    const char *p[] = {rx->id,
                       rx->nbatches ? "queued" : "done",
                       header,
                       ES_I64(bytes, es_csv_bytes(rx->csv)),
                       ES_I64(total, rx->rows),
                       ES_I64(nb, (int64_t)rx->nbatches),
                       ES_I64(now, t),
                       rx->idem,
                       rx->nbatches ? NULL : now};
    if (!rc)
        rc = es_store_exec(
            c,
            "UPDATE uploads SET status = $2, header = $3, bytes = $4, rows_total = $5,"
            " batches_total = $6, updated_ms = $7,"
            " idempotency_key = COALESCE($8, idempotency_key), finished_ms = $9"
            " WHERE id = $1 AND status = 'receiving'",
            9, p, NULL);
    free(header);
    if (rc == ES_ECONFLICT && rx->idem) *idem_taken = true;
    rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
release:
    es_store_release(c);
    return rc;
}

int es_upload_end(es_upload_rx *rx, json_t **status)
{
    *status = NULL;
    es_app *app = rx->app;
    int rc = rx->rc;
    if (!rc && es_csv_finish(rx->csv) != ES_OK && !rx->rc)
        rx_fail(rx, ES_EINVAL, "%s", es_csv_error(rx->csv));
    if (!rx->rc && !rx->header_done) rx_fail(rx, ES_EINVAL, "the file is empty: no header line");
    if (!rx->rc) {
        rc = close_batch(rx, es_csv_bytes(rx->csv));
        if (rc) rx_fail(rx, rc, "too many batches (%d at most)", BATCHES_MAX);
    }
    if ((rc = rx->rc)) return rc; /* the caller answers, then aborts */
    es_blob_writer *w = rx->w;
    rx->w = NULL;
    if (w && (rc = es_blob_commit(w))) {
        rx_fail(rx, rc, "cannot store the file: %s", es_strerror(rc));
        return rc;
    }
    char(*ids)[ES_UUID_LEN + 1] = calloc(rx->nbatches ? rx->nbatches : 1, sizeof *ids);
    if (!ids) return rx->rc = ES_ENOMEM;
    bool idem_taken = false;
    size_t njobs = 0;
    rc = queue_batches(rx, ids, &njobs, &idem_taken);
    if (rc == ES_OK) {
        es_info(COMP, "upload %s: %" PRId64 " bytes, %" PRId64 " rows in %zu batches, %zu jobs",
                rx->id, es_csv_bytes(rx->csv), rx->rows, rx->nbatches, njobs);
        if (njobs) es_job_publish_new(app->engine, ES_UPLOAD_KIND, ids, njobs, rx->trace);
        rc = es_upload_get(app, rx->tenant, rx->id, status);
    } else if (idem_taken) {
        /* the same file was sent twice at once, and the other one got there first */
        rc = find_idem(app, rx->tenant, rx->idem, status);
        const char *d[] = {rx->id};
        exec_upload(app, "DELETE FROM uploads WHERE id = $1", 1, d);
        char key[SOURCE_KEY_MAX];
        es_blob_del(app->blob, source_key(rx->id, key));
    } else {
        rx_fail(rx, rc, "cannot queue the upload: %s", es_strerror(rc));
    }
    free(ids);
    if (rc == ES_OK) rx_free(rx);
    return rc;
}

/* ================================================================ status */

static json_t *iso_or_null(const char *ms)
{
    if (!ms) return json_null();
    char buf[25];
    es_time_iso(strtoll(ms, NULL, 10), buf);
    return json_string(buf);
}

#define UPLOAD_COLS                                                                                \
    "id, dataset, status, filename, error, bytes, rows_total, rows_inserted, rows_duplicate,"      \
    " rows_rejected, batches_total, batches_done, created_ms, started_ms, finished_ms,"            \
    " updated_ms, tenant, origin, expires_ms, batches_failed"

/* A receiving upload whose connection ended with its process (kill -9 of the
 * API) stays `receiving`; one not touched for a while is shown as failed. */
static const char *shown_status(es_app *app, const es_rows *r, int i)
{
    const char *st = es_rows_get(r, i, 2);
    if (strcmp(st, "receiving") != 0) return st;
    int64_t now = es_now_ms(), idle = now - es_rows_int(r, i, 15, 0);
    if (!strcmp(es_rows_get(r, i, 17), "presigned"))
        return now > es_rows_int(r, i, 18, INT64_MAX) + PRESIGN_GRACE_MS ? "failed" : st;
    return idle > 2 * app->cfg->conn_timeout_ms + TOUCH_EVERY_MS ? "failed" : st;
}

static json_t *upload_json(es_app *app, const es_rows *r, int i)
{
    const char *status = shown_status(app, r, i);
    const char *error = es_rows_get(r, i, 4);
    if (strcmp(status, es_rows_get(r, i, 2)) != 0)
        error = strcmp(es_rows_get(r, i, 17), "presigned")
                    ? "the connection ended before the whole file was received"
                    : "the upload was not completed before its URL expired";
    int64_t failed = es_rows_int(r, i, 19, 0);
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:o, s:I, s:{s:I, s:I, s:I, s:I}, s:{s:I, s:I, s:I}, s:{}, s:o, "
        "s:o, s:o, s:o, s:o}",
        "id", es_rows_get(r, i, 0), "dataset", es_rows_get(r, i, 1), "tenant",
        es_rows_get(r, i, 16), "status", status, "filename",
        es_rows_get(r, i, 3) ? json_string(es_rows_get(r, i, 3)) : json_null(), "bytes",
        (json_int_t)es_rows_int(r, i, 5, 0), "rows", "total", (json_int_t)es_rows_int(r, i, 6, 0),
        "inserted", (json_int_t)es_rows_int(r, i, 7, 0), "duplicate",
        (json_int_t)es_rows_int(r, i, 8, 0), "rejected", (json_int_t)es_rows_int(r, i, 9, 0),
        "batches", "total", (json_int_t)es_rows_int(r, i, 10, 0), "done",
        (json_int_t)es_rows_int(r, i, 11, 0), "failed", (json_int_t)failed, "stages", "error",
        error ? json_string(error) : json_null(), "createdAt", iso_or_null(es_rows_get(r, i, 12)),
        "startedAt", iso_or_null(es_rows_get(r, i, 13)), "finishedAt",
        iso_or_null(es_rows_get(r, i, 14)), "updatedAt", iso_or_null(es_rows_get(r, i, 15)));
}

int es_upload_get(es_app *app, const char *tenant, const char *id, json_t **out)
{
    *out = NULL;
    if (!es_uuid_valid(id)) return ES_ENOTFOUND;
    const char *p[] = {id, tenant};
    es_rows *r = NULL;
    int rc =
        es_store_exec1(app->store,
                       tenant ? "SELECT " UPLOAD_COLS " FROM uploads WHERE id = $1 AND tenant = $2"
                              : "SELECT " UPLOAD_COLS " FROM uploads WHERE id = $1",
                       tenant ? 2 : 1, p, &r);
    if (rc) return rc;
    if (es_rows_count(r) != 1) rc = ES_ENOTFOUND;
    if (!rc && !(*out = upload_json(app, r, 0))) rc = ES_ENOMEM;
    es_rows_free(r);
    return rc;
}

int es_upload_list(es_app *app, const es_upload_filter *f, json_t **items, char **next)
{
    *items = NULL;
    *next = NULL;
    if (f->cursor && !es_uuid_valid(f->cursor)) return ES_EINVAL;
    char lim[24];
    const char *p[] = {f->tenant, f->dataset, f->status, f->cursor, ES_I64(lim, f->limit + 1)};
    es_rows *r = NULL;
    int rc = es_store_exec1(app->store,
                            "SELECT " UPLOAD_COLS " FROM uploads WHERE tenant = $1"
                            " AND (CAST($2 AS text) IS NULL OR dataset = $2)"
                            " AND (CAST($3 AS text) IS NULL OR status = $3)"
                            " AND (CAST($4 AS text) IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
                            5, p, &r);
    if (rc) return rc;
    *items = json_array();
    int n = es_rows_count(r);
    for (int i = 0; i < n && i < f->limit; i++)
        json_array_append_new(*items, upload_json(app, r, i));
    if (n > f->limit) *next = strdup(es_rows_get(r, f->limit - 1, 0));
    es_rows_free(r);
    return ES_OK;
}

/* A CSV field: quoted when it must be. */
static void csv_field(es_buf *b, const char *s, bool last)
{
    if (!s) s = "";
    if (strpbrk(s, ",\"\r\n")) {
        es_buf_puts(b, "\"");
        for (const char *q = s; *q; q++) {
            if (*q == '"') es_buf_puts(b, "\"");
            es_buf_append(b, q, 1);
        }
        es_buf_puts(b, "\"");
    } else {
        es_buf_puts(b, s);
    }
    es_buf_puts(b, last ? "\n" : ",");
}

int es_upload_rejects_page(es_app *app, const char *id, const char *after, int limit, es_buf *out,
                           char **next_after)
{
    *next_after = NULL;
    char lim[24];
    const char *p[] = {id, after ? after : "0", ES_I64(lim, limit)};
    es_rows *r = NULL;
    /* ordered by line; within a line by column (the rows of one line are
     * written in one batch, so a page never splits a line across a cursor
     * that could skip some of it: the cursor is the last line, whole) */
    int rc = es_store_exec1(app->store,
                            "SELECT line, col, reason, raw FROM upload_rejects WHERE upload_id = $1"
                            " AND line > $2 AND line <= (SELECT COALESCE(MAX(line), 0) FROM"
                            " (SELECT DISTINCT line FROM upload_rejects WHERE upload_id = $1"
                            " AND line > $2 ORDER BY line LIMIT $3) AS l)"
                            " ORDER BY line, col",
                            3, p, &r);
    if (rc) return rc;
    int n = es_rows_count(r);
    for (int i = 0; i < n; i++) {
        csv_field(out, es_rows_get(r, i, 0), false);
        csv_field(out, es_rows_get(r, i, 1), false);
        csv_field(out, es_rows_get(r, i, 2), false);
        csv_field(out, es_rows_get(r, i, 3), true);
    }
    if (n > 0) *next_after = strdup(es_rows_get(r, n - 1, 0));
    es_rows_free(r);
    return ES_OK;
}

int es_upload_retry(es_app *app, const char *tenant, const char *id)
{
    json_t *u = NULL;
    int rc = es_upload_get(app, tenant, id, &u);
    if (rc) return rc;
    const char *st = json_string_value(json_object_get(u, "status"));
    bool received = json_integer_value(json_object_get(json_object_get(u, "batches"), "total")) > 0;
    bool failed = st && !strcmp(st, "failed");
    json_decref(u);
    if (!failed || !received) return ES_ECONFLICT;
    const char *p[] = {id};
    es_rows *r = NULL;
    rc = es_store_exec1(
        app->store,
        "SELECT DISTINCT b.job_id FROM upload_batches b JOIN jobs j ON j.id = b.job_id"
        " WHERE b.upload_id = $1 AND b.done_ms IS NULL"
        " AND j.status IN ('dead', 'canceled', 'error')",
        1, p, &r);
    if (rc) return rc;
    char now[24];
    const char *q[] = {id, ES_I64(now, es_now_ms())};
    rc = exec_upload(app,
                     "UPDATE uploads SET status = 'processing', error = NULL, finished_ms = NULL,"
                     " batches_failed = 0, updated_ms = $2 WHERE id = $1 AND status = 'failed'",
                     2, q);
    for (int i = 0; !rc && i < es_rows_count(r); i++) {
        int jrc = es_job_retry(app->engine, NULL, es_rows_get(r, i, 0));
        if (jrc && jrc != ES_ECONFLICT) rc = jrc;
    }
    es_rows_free(r);
    if (!rc) es_info(COMP, "upload %s: retried", id);
    return rc;
}

/* ================================================================ one batch */

#define SPOOL_BUCKETS 64                /* key ranges of a group on SQLite (at most 256) */
#define LOAD_CHUNK    (2 * 1024 * 1024) /* bytes of rows per copy_merge of a whole group */

typedef struct batch_msg {
    char upload[ES_UUID_LEN + 1];
    int64_t seq, count, offset, length, line;
    int64_t cuts[GROUP_MAX];  /* the first line of each batch after the first */
    int64_t split, split_off; /* batch `split` begins at byte split_off (0 = no split) */
} batch_msg;

static int parse_msg(const char *payload, batch_msg *m)
{
    json_t *j = json_loads(payload ? payload : "", 0, NULL);
    const char *u = json_string_value(json_object_get(j, "upload"));
    json_t *cuts = json_object_get(j, "cuts");
    int rc = u && es_uuid_valid(u) ? ES_OK : ES_EINVAL;
    if (!rc) {
        es_strlcpy(m->upload, u, sizeof m->upload);
        m->seq = es_json_int(j, "seq", -1);
        m->count = es_json_int(j, "count", 1);
        m->offset = es_json_int(j, "offset", -1);
        m->length = es_json_int(j, "length", -1);
        m->line = es_json_int(j, "line", -1);
        if (m->seq < 1 || m->offset < 0 || m->length < 0 || m->line < 1 || m->count < 1 ||
            m->count > GROUP_MAX || (int64_t)json_array_size(cuts) != m->count - 1)
            rc = ES_EINVAL;
        for (size_t k = 0; !rc && k + 1 < (size_t)m->count; k++)
            m->cuts[k] = json_integer_value(json_array_get(cuts, k));
        json_t *split = json_object_get(j, "split");
        m->split = json_integer_value(json_array_get(split, 0));
        m->split_off = json_integer_value(json_array_get(split, 1));
        if (m->split <= 0 || m->split >= m->count || m->split_off <= m->offset ||
            m->split_off >= m->offset + m->length)
            m->split = m->split_off = 0; /* read in one piece */
    }
    json_decref(j);
    return rc;
}

typedef struct spool_seg {
    int64_t off, len;
} spool_seg;

/* Batch objects are written by a few threads of the job while its parts read
 * on: a write waits on storage (a file's fsync, an S3 request) far longer
 * than it costs, and waiting in the reader left a core idle. */
typedef enum { SLOT_FREE, SLOT_QUEUED, SLOT_WRITING } slot_state;

typedef struct put_slot {
    slot_state state;
    char key[128];
    es_buf json;
} put_slot;

typedef struct object_writer {
    es_blob *blob;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    put_slot slots[PUT_SLOTS];
    pthread_t threads[PUT_SLOTS];
    int nthreads, max_threads;
    bool started, closing;
    int rc;               /* the first write that failed */
    char failed_key[128]; /* and its object */
} object_writer;

static void *writer_main(void *arg)
{
    object_writer *ow = arg;
    pthread_mutex_lock(&ow->mu);
    for (;;) {
        put_slot *s = NULL;
        for (int i = 0; i < PUT_SLOTS && !s; i++)
            if (ow->slots[i].state == SLOT_QUEUED) s = &ow->slots[i];
        if (!s) {
            if (ow->closing) break;
            pthread_cond_wait(&ow->cv, &ow->mu);
            continue;
        }
        s->state = SLOT_WRITING;
        pthread_mutex_unlock(&ow->mu);
        int rc = es_blob_put(ow->blob, s->key, "application/json", s->json.data, s->json.len);
        if (rc) es_warn(COMP, "cannot store %s: %s", s->key, es_strerror(rc));
        pthread_mutex_lock(&ow->mu);
        if (rc && !ow->rc) {
            ow->rc = rc;
            es_strlcpy(ow->failed_key, s->key, sizeof ow->failed_key);
        }
        es_buf_reset(&s->json);
        s->state = SLOT_FREE;
        pthread_cond_broadcast(&ow->cv);
    }
    pthread_mutex_unlock(&ow->mu);
    return NULL;
}

static void writer_init(object_writer *ow, es_blob *blob, int threads)
{
    memset(ow, 0, sizeof *ow);
    ow->blob = blob;
    ow->max_threads = threads < PUT_SLOTS ? threads : PUT_SLOTS;
    pthread_mutex_init(&ow->mu, NULL);
    pthread_cond_init(&ow->cv, NULL);
    for (int i = 0; i < PUT_SLOTS; i++)
        es_buf_init(&ow->slots[i].json, 0);
}

/* Queues an object: *json is taken (an empty buffer is left in its place).
 * Without a thread to write it, it is written here and now. */
static int writer_put(object_writer *ow, const char *key, es_buf *json)
{
    pthread_mutex_lock(&ow->mu);
    if (!ow->started) {
        ow->started = true;
        while (ow->nthreads < ow->max_threads &&
               pthread_create(&ow->threads[ow->nthreads], NULL, writer_main, ow) == 0)
            ow->nthreads++;
    }
    put_slot *s = NULL;
    while (!ow->rc && ow->nthreads && !s) {
        for (int i = 0; i < PUT_SLOTS && !s; i++)
            if (ow->slots[i].state == SLOT_FREE) s = &ow->slots[i];
        if (!s) pthread_cond_wait(&ow->cv, &ow->mu);
    }
    int rc = ow->rc;
    if (!rc && s) {
        es_buf t = s->json;
        s->json = *json;
        *json = t;
        es_strlcpy(s->key, key, sizeof s->key);
        s->state = SLOT_QUEUED;
        pthread_cond_broadcast(&ow->cv);
    }
    pthread_mutex_unlock(&ow->mu);
    if (!rc && !s) { /* no thread could be started */
        rc = es_blob_put(ow->blob, key, "application/json", json->data, json->len);
        if (rc) es_warn(COMP, "cannot store %s: %s", key, es_strerror(rc));
    }
    es_buf_reset(json);
    return rc;
}

/* Waits for every queued object; the first failure, with its key. */
static int writer_finish(object_writer *ow)
{
    pthread_mutex_lock(&ow->mu);
    ow->closing = true;
    pthread_cond_broadcast(&ow->cv);
    pthread_mutex_unlock(&ow->mu);
    for (int i = 0; i < ow->nthreads; i++)
        pthread_join(ow->threads[i], NULL);
    ow->nthreads = 0;
    return ow->rc;
}

static void writer_destroy(object_writer *ow)
{
    writer_finish(ow);
    for (int i = 0; i < PUT_SLOTS; i++)
        es_buf_finish(&ow->slots[i].json);
    pthread_cond_destroy(&ow->cv);
    pthread_mutex_destroy(&ow->mu);
}

typedef struct batch_work batch_work;

/* A reader of consecutive batches of the group, with its own parser,
 * buffers and temporary file: a big group is read by two side by side. */
typedef struct batch_part {
    batch_work *w;
    int64_t first, end;           /* its batches, [first, end) of the group */
    int64_t offset, length, line; /* its bytes of the source, and their first line */
    es_csv *csv;
    es_buf copy;    /* the accepted rows of the batch being read, COPY text */
    es_buf json;    /* the batch object: a JSON array of row objects */
    es_buf rejects; /* upload_rejects rows, COPY text */
    es_buf scratch;
    es_buf sorted; /* a batch's rows, bucket after bucket */
    size_t vstart[ES_DATASET_MAX_COLS * 2], vlen[ES_DATASET_MAX_COLS * 2];
    int64_t cur; /* the batch being read */
    FILE *spool;
    int64_t spooled;
    int rc;
    const char *failure; /* error type when rc: read_failed, blob_failed */
    char why[320];
} batch_part;

struct batch_work {
    es_app *app;
    const es_dataset *ds;
    const char *upload_id;
    es_header_map map;
    json_t *header;
    int nfields;
    const char *cols[ES_DATASET_MAX_COLS + 3]; /* tenant, mapped columns…, upload_id, line */
    es_copy_type types[ES_DATASET_MAX_COLS + 3];
    int ncols;
    char row_head[ES_TENANT_MAX * 2 + 4]; /* tenant, escaped, and a tab */
    const batch_msg *m;
    batch_part parts[PARSE_PARTS];
    int nparts;
    es_buf copy; /* rows on their way into the store */
    object_writer objects;
    /* per batch of the group: what became of its rows */
    int64_t accepted[GROUP_MAX], rejected[GROUP_MAX];
    int64_t ins_all, acc_all, rej_all; /* the group's */
    es_job_ctx *ctx;
    bool big_cache;
    int64_t spool_off[GROUP_MAX], spool_len[GROUP_MAX];
    int key_field;   /* the key's field in a COPY row */
    int nbuckets;    /* key ranges the spool is cut into (1 = none) */
    spool_seg *segs; /* [batch * nbuckets + bucket]: where its rows are spooled */
};

/* The raw value of a rejected field: bounded, valid UTF-8 (anything else
 * becomes '?'), so it can be stored and shown. */
static void clean_raw(es_buf *out, const char *s, size_t n)
{
    es_buf_reset(out);
    if (n > REJECT_RAW_MAX) n = REJECT_RAW_MAX;
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        bool ok = len > 0 && i + len <= n && !(len == 2 && c < 0xC2);
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)s[i + k] & 0xC0) == 0x80;
        if (ok) {
            es_buf_append(out, s + i, len);
            i += len;
        } else {
            es_buf_puts(out, "?");
            i++;
        }
    }
}

static void add_reject(batch_part *p, int64_t line, const char *col, const char *reason,
                       const char *raw, size_t rawlen)
{
    char l[24];
    const char *id = p->w->upload_id;
    clean_raw(&p->scratch, raw, rawlen);
    es_copy_field(&p->rejects, id, strlen(id), false);
    es_copy_field(&p->rejects, l, (size_t)snprintf(l, sizeof l, "%lld", (long long)line), false);
    es_copy_field(&p->rejects, col, strlen(col), false);
    es_copy_field(&p->rejects, reason, strlen(reason), false);
    es_copy_field(&p->rejects, p->scratch.data ? p->scratch.data : "", p->scratch.len, true);
}

static void json_str(es_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    es_buf_puts(b, "\"");
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        es_buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', (char)c, 0};
        if (c == '\n')
            esc[1] = 'n';
        else if (c == '\r')
            esc[1] = 'r';
        else if (c == '\t')
            esc[1] = 't';
        else if (c < 0x20)
            snprintf(esc, sizeof esc, "\\u00%c%c", hex[c >> 4], hex[c & 15]);
        es_buf_puts(b, esc);
    }
    es_buf_append(b, s + run, n - run);
    es_buf_puts(b, "\"");
}

/* The row just written to p->copy, as a JSON object of the CSV's names. */
static void row_json(batch_part *p)
{
    const batch_work *w = p->w;
    es_buf_puts(&p->json, w->accepted[p->cur] > 1 ? ",\n{" : "{");
    bool first = true;
    for (int i = 0; i < w->nfields; i++) {
        int col = w->map.col_of[i];
        if (col < 0) continue;
        const es_column *c = &w->ds->cols[col];
        if (!first) es_buf_puts(&p->json, ",");
        first = false;
        json_str(&p->json, c->header, strlen(c->header));
        es_buf_puts(&p->json, ":");
        const char *v = p->copy.data + p->vstart[i];
        size_t n = p->vlen[i];
        if (n == 2 && v[0] == '\\' && v[1] == 'N') {
            es_buf_puts(&p->json, "null");
            continue;
        }
        switch (c->type) {
        case ES_COL_INTEGER:
        case ES_COL_BIGINT:
        case ES_COL_DECIMAL:
        case ES_COL_BOOLEAN: es_buf_append(&p->json, v, n); break;
        default:
            es_buf_reset(&p->scratch);
            es_buf_append(&p->scratch, v, n);
            n = es_copy_unescape(p->scratch.data, n);
            if (c->type == ES_COL_JSON)
                es_buf_append(&p->json, p->scratch.data, n);
            else
                json_str(&p->json, p->scratch.data, n);
        }
    }
    es_buf_puts(&p->json, "}");
}

/* The bucket of a spooled row: the key's range (its first two hex digits,
 * the order of SQLite's index on the normalised text), or 0. */
static int row_bucket(const batch_work *w, const char *row, size_t n)
{
    const char *p = row, *end = row + n;
    for (int f = 0; f < w->key_field; f++) {
        const char *tab = memchr(p, '\t', (size_t)(end - p));
        if (!tab) return 0;
        p = tab + 1;
    }
    int v = 0;
    for (int i = 0; i < 2; i++) {
        char ch = p + i < end ? p[i] : 0;
        int d = ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
        if (d < 0) return 0;
        v = v * 16 + d;
    }
    return v * w->nbuckets / 256;
}

/* p->copy's rows into p->sorted, grouped by bucket (stable: rows of a bucket
 * keep their order, so the first of two equal keys stays first), and the
 * spool segment of each bucket. */
static int partition(batch_part *p, spool_seg *seg)
{
    const batch_work *w = p->w;
    int64_t pos[SPOOL_BUCKETS] = {0};
    const char *data = p->copy.data, *end = data + p->copy.len;
    for (const char *r = data; r < end;) {
        const char *nl = memchr(r, '\n', (size_t)(end - r));
        size_t n = nl ? (size_t)(nl - r) + 1 : (size_t)(end - r);
        seg[row_bucket(w, r, n)].len += (int64_t)n;
        r += n;
    }
    for (int b = 0, at = 0; b < w->nbuckets; at += (int)seg[b].len, b++) {
        pos[b] = at;
        seg[b].off = p->spooled + at;
    }
    es_buf_reset(&p->sorted);
    int rc = es_buf_reserve(&p->sorted, p->copy.len + 1);
    if (rc) return rc;
    for (const char *r = data; r < end;) {
        const char *nl = memchr(r, '\n', (size_t)(end - r));
        size_t n = nl ? (size_t)(nl - r) + 1 : (size_t)(end - r);
        int b = row_bucket(w, r, n);
        memcpy(p->sorted.data + pos[b], r, n);
        pos[b] += (int64_t)n;
        r += n;
    }
    p->sorted.len = p->copy.len;
    return ES_OK;
}

/* A batch's rows wait in a temporary file until the group is read: the
 * reading, checking and object writing of many jobs then run side by side,
 * and the transaction (on SQLite, the one writer) only loads.  Memory holds
 * one batch whatever the group's size.  With buckets, a batch's rows are
 * written bucket after bucket: still one range per batch, and a segment per
 * bucket within it. */
static int spool_batch(batch_part *p)
{
    batch_work *w = p->w;
    if (!p->spool && !(p->spool = tmpfile())) {
        es_error(COMP, "cannot make a temporary file: %s", strerror(errno));
        return ES_EIO;
    }
    spool_seg *seg = &w->segs[p->cur * w->nbuckets];
    const es_buf *rows = &p->copy;
    if (w->nbuckets > 1) {
        int rc = partition(p, seg);
        if (rc) return rc;
        rows = &p->sorted;
    } else {
        seg[0] = (spool_seg){p->spooled, (int64_t)p->copy.len};
    }
    w->spool_off[p->cur] = p->spooled;
    w->spool_len[p->cur] = (int64_t)rows->len;
    if (rows->len && fwrite(rows->data, 1, rows->len, p->spool) != rows->len) {
        es_error(COMP, "cannot write a temporary file: %s", strerror(errno));
        return ES_EIO;
    }
    p->spooled += (int64_t)rows->len;
    es_buf_reset(&p->copy);
    return ES_OK;
}

/* Appends len bytes at off of the temporary file of batch k to w->copy. */
static int read_spool(batch_work *w, int64_t k, int64_t off, int64_t len)
{
    const batch_part *p = &w->parts[0];
    while (p < &w->parts[w->nparts - 1] && k >= p->end)
        p++;
    size_t n = (size_t)len;
    int rc = es_buf_reserve(&w->copy, n + 1);
    if (rc) return rc;
    for (size_t got = 0; got < n;) {
        ssize_t r = p->spool ? pread(fileno(p->spool), w->copy.data + w->copy.len + got, n - got,
                                     (off_t)(off + (int64_t)got))
                             : 0;
        if (r <= 0) {
            if (r < 0 && errno == EINTR) continue;
            es_error(COMP, "cannot read a temporary file back: %s",
                     r < 0 ? strerror(errno) : "short file");
            return ES_EIO;
        }
        got += (size_t)r;
    }
    w->copy.len += n;
    return ES_OK;
}

/* Batch k of the group is loaded with `inserted` new rows: its ledger row is
 * done.  Zero rows changed = done meanwhile (a redelivery that overtook
 * this one): the job's transaction is rolled back. */
static int batch_loaded(batch_work *w, es_store_conn *c, int64_t k, int64_t inserted)
{
    char seq[24], ins[24], dup[24], rej[24], now[24];
    const char *p[] = {w->upload_id,
                       ES_I64(seq, w->m->seq + k),
                       ES_I64(ins, inserted),
                       ES_I64(dup, w->accepted[k] - inserted),
                       ES_I64(rej, w->rejected[k]),
                       ES_I64(now, es_now_ms())};
    es_rows *r = NULL;
    int rc = es_store_exec(c,
                           "UPDATE upload_batches SET inserted = $3, duplicate = $4,"
                           " rejected = $5, done_ms = $6"
                           " WHERE upload_id = $1 AND seq = $2 AND done_ms IS NULL",
                           6, p, &r);
    if (!rc && es_rows_affected(r) != 1) rc = ES_ECONFLICT;
    es_rows_free(r);
    w->ins_all += inserted;
    w->acc_all += w->accepted[k];
    w->rej_all += w->rejected[k];
    return rc;
}

static int merge_chunk(batch_work *w, es_store_conn *c, int64_t *inserted)
{
    int64_t n = 0;
    int rc = es_store_copy_merge(c, w->ds->table, w->cols, w->types, w->ncols, w->copy.data,
                                 w->copy.len, &n);
    *inserted += n;
    es_buf_reset(&w->copy);
    return rc;
}

/* Every row of the group at once, key range after key range, in chunks of
 * LOAD_CHUNK bytes: few COPYs on PostgreSQL, and on SQLite the index pages
 * of one range stay in the page cache while its rows go in.  Per batch counts
 * follow when every row went in, or none did (a file sent again); otherwise
 * *exact is false and nothing of it stays. */
static int load_together(batch_work *w, es_store_conn *c, bool *exact)
{
    *exact = false;
    int64_t accepted = 0, inserted = 0;
    for (int64_t k = 0; k < w->m->count; k++)
        accepted += w->accepted[k];
    int rc = es_store_exec(c, "SAVEPOINT es_group", 0, NULL, NULL);
    if (rc) return rc;
    es_buf_reset(&w->copy);
    for (int b = 0; b < w->nbuckets && !rc; b++) {
        for (int64_t k = 0; k < w->m->count && !rc; k++) {
            const spool_seg *s = &w->segs[k * w->nbuckets + b];
            if (!s->len) continue;
            if (w->copy.len && w->copy.len + (size_t)s->len > LOAD_CHUNK)
                rc = merge_chunk(w, c, &inserted);
            if (!rc) rc = read_spool(w, k, s->off, s->len);
        }
    }
    if (!rc && w->copy.len) rc = merge_chunk(w, c, &inserted);
    if (rc) return rc; /* the job's transaction goes */
    if (inserted != accepted && inserted != 0) {
        es_debug(COMP, "upload %s: %lld of %lld rows of a group are new: batch by batch",
                 w->upload_id, (long long)inserted, (long long)accepted);
        rc = es_store_exec(c, "ROLLBACK TO es_group", 0, NULL, NULL);
        if (!rc) rc = es_store_exec(c, "RELEASE es_group", 0, NULL, NULL);
        return rc;
    }
    *exact = true;
    for (int64_t k = 0; k < w->m->count && !rc; k++)
        rc = batch_loaded(w, c, k, inserted ? w->accepted[k] : 0);
    if (!rc) rc = es_store_exec(c, "RELEASE es_group", 0, NULL, NULL);
    return rc;
}

/* The group into the job's transaction: every batch's rows (existing keys
 * left out) and ledger row.  A retry of the job redoes them all (nothing was
 * committed). */
static int load_spooled(batch_work *w)
{
    es_store_conn *c;
    int rc = es_job_ctx_conn(w->ctx, &c);
    if (rc) return rc;
    for (int i = 0; i < w->nparts; i++)
        if (w->parts[i].spool && fflush(w->parts[i].spool) != 0) return ES_EIO;
    if (es_store_dialect(w->app->store) == ES_DIALECT_SQLITE) {
        /* A key range's index pages (1 MB of a million-row table, in 64
         * ranges) and the table pages being filled fit in 8 MB, more than
         * SQLite's default 2 MB; a bigger cache only made the process bigger
         * (32 MB: the same load time, 58 MB instead of 30 MB peak).  One
         * writer at a time holds this, for the length of its job (see
         * batch_run). */
        w->big_cache =
            es_store_exec(c, "PRAGMA cache_size = -" SQLITE_LOAD_CACHE_KB, 0, NULL, NULL) == ES_OK;
    }
    bool exact = false;
    if ((rc = load_together(w, c, &exact))) return rc;
    for (int64_t k = 0; k < w->m->count && !exact && !rc; k++) {
        int64_t inserted = 0;
        es_buf_reset(&w->copy);
        if (w->spool_len[k] && !(rc = read_spool(w, k, w->spool_off[k], w->spool_len[k])))
            rc = merge_chunk(w, c, &inserted);
        if (!rc) rc = batch_loaded(w, c, k, inserted);
    }
    return rc;
}

/* The current batch is read whole: its object is written (a deterministic
 * name, so a retry overwrites it), its rows spooled. */
static int end_batch(batch_part *p)
{
    char key[128];
    snprintf(key, sizeof key, "uploads/%s/batch-%06lld.json", p->w->upload_id,
             (long long)(p->w->m->seq + p->cur));
    es_buf_puts(&p->json, "]\n");
    int rc = writer_put(&p->w->objects, key, &p->json);
    es_buf_puts(&p->json, "[");
    if (!rc) rc = spool_batch(p);
    p->cur++;
    return rc;
}

static int batch_record(void *arg, int64_t line, const char *const *fields, const size_t *lens,
                        int nfields)
{
    batch_part *p = arg;
    batch_work *w = p->w;
    while (p->cur + 1 < p->end && line >= w->m->cuts[p->cur])
        if ((p->rc = end_batch(p))) return 1;
    if (nfields != w->nfields) {
        char why[80];
        snprintf(why, sizeof why, "expected %d fields, found %d", w->nfields, nfields);
        add_reject(p, line, "", why, fields[0], lens[0]);
        w->rejected[p->cur]++;
        return 0;
    }
    size_t start = p->copy.len;
    es_buf_puts(&p->copy, w->row_head);
    bool bad = false;
    for (int i = 0; i < nfields; i++) {
        int col = w->map.col_of[i];
        if (col < 0) continue;
        const char *problem = NULL;
        size_t at = p->copy.len;
        int rc = es_value_normalize(&w->ds->cols[col], fields[i], lens[i], &p->copy, &problem);
        if (rc == ES_EINVAL) {
            add_reject(p, line, w->ds->cols[col].header, problem ? problem : "invalid", fields[i],
                       lens[i]);
            bad = true;
            p->copy.len = at;
        } else if (rc) {
            p->rc = rc;
            return 1;
        }
        p->vstart[i] = at;
        p->vlen[i] = p->copy.len - at;
        es_buf_puts(&p->copy, "\t");
    }
    if (bad) {
        p->copy.len = start;
        w->rejected[p->cur]++;
        return 0;
    }
    char tail[80];
    snprintf(tail, sizeof tail, "%s\t%lld\n", w->upload_id, (long long)line);
    es_buf_puts(&p->copy, tail);
    w->accepted[p->cur]++;
    row_json(p);
    return 0;
}

static int feed_sink(void *arg, const void *data, size_t len)
{
    return es_csv_feed(arg, data, len);
}

/* Reads a part's bytes of the source: every one of its batches checked,
 * its object written and its rows spooled.  Runs on a thread of its own for
 * the second part of a big group. */
static void *read_part(void *arg)
{
    batch_part *p = arg;
    batch_work *w = p->w;
    const es_config *cfg = w->app->cfg;
    es_csv_limits lim = {.max_field = (size_t)cfg->csv_max_field,
                         .max_record = (size_t)cfg->csv_max_line,
                         .max_fields = ES_DATASET_MAX_COLS * 2};
    p->failure = "read_failed";
    int rc = es_csv_create(&lim, batch_record, p, &p->csv);
    if (rc) {
        snprintf(p->why, sizeof p->why, "%s", es_strerror(rc));
        p->rc = rc;
        return NULL;
    }
    es_csv_start_at(p->csv, p->line);
    char key[SOURCE_KEY_MAX];
    source_key(w->upload_id, key);
    es_buf_puts(&p->json, "[");
    rc = es_blob_get_range(w->app->blob, key, p->offset, p->length, feed_sink, p->csv);
    if (!rc) rc = es_csv_finish(p->csv);
    if (p->rc) rc = p->rc;
    if (rc) {
        snprintf(p->why, sizeof p->why, "upload %s batch %lld: %s", w->upload_id,
                 (long long)(w->m->seq + p->first),
                 es_csv_error(p->csv)[0] ? es_csv_error(p->csv) : es_strerror(rc));
        p->rc = rc;
        return NULL;
    }
    while (!rc && p->cur < p->end)
        rc = end_batch(p);
    if (rc) {
        p->failure = "blob_failed";
        snprintf(p->why, sizeof p->why, "upload %s batch %lld: cannot store its object (%s)",
                 w->upload_id, (long long)(w->m->seq + p->cur - 1), es_strerror(rc));
        p->rc = rc;
    }
    return NULL;
}

/* Decides the upload's outcome once every batch is accounted for: done when
 * all are done (failed when too many rows were rejected), failed when the rest
 * are dead.  Runs inside a transaction that has just updated the upload's row,
 * which serialises it with every other batch's. */
static int settle(es_app *app, es_store_conn *c, const char *id, const char **final)
{
    *final = NULL;
    const char *p[] = {id};
    es_rows *r = NULL;
    int rc = es_store_exec(c,
                           "SELECT status, batches_done, batches_total, rows_total, rows_rejected,"
                           " batches_failed FROM uploads WHERE id = $1",
                           1, p, &r);
    if (rc || es_rows_count(r) != 1) goto out;
    const char *st = es_rows_get(r, 0, 0);
    int64_t done = es_rows_int(r, 0, 1, 0), total = es_rows_int(r, 0, 2, 0);
    int64_t rows = es_rows_int(r, 0, 3, 0), rejected = es_rows_int(r, 0, 4, 0);
    int64_t dead = es_rows_int(r, 0, 5, 0);
    /* failed -> done too: a dead batch re-driven on its own (/v1/dlq) may
     * complete an upload that was settled as failed */
    if (strcmp(st, "queued") && strcmp(st, "processing") && strcmp(st, "failed")) goto out;
    char why[160] = "";
    if (done >= total) {
        int64_t maxp = app->cfg->reject_max_percent;
        if (maxp < 100 && rows > 0 && rejected * 100 > maxp * rows)
            snprintf(why, sizeof why, "%lld of %lld rows rejected, more than %lld%%",
                     (long long)rejected, (long long)rows, (long long)maxp);
        *final = why[0] ? "failed" : "done";
    } else if (done + dead >= total && strcmp(st, "failed") != 0) {
        snprintf(why, sizeof why,
                 "%lld of %lld batches failed (POST /v1/uploads/%s/retry runs them again)",
                 (long long)dead, (long long)total, id);
        *final = "failed";
    } else {
        goto out;
    }
    char now[24];
    const char *q[] = {id, *final, why[0] ? why : NULL, ES_I64(now, es_now_ms())};
    rc = es_store_exec(c,
                       "UPDATE uploads SET status = $2, error = $3, finished_ms = $4,"
                       " updated_ms = $4 WHERE id = $1",
                       4, q, NULL);
out:
    es_rows_free(r);
    return rc;
}

static int load_batch(es_job_ctx *ctx, batch_work *w, const batch_msg *m)
{
    es_app *app = w->app;
    es_store_conn *c;
    int rc = es_job_ctx_conn(ctx, &c);
    if (rc) return rc;
    if ((rc = load_spooled(w))) return rc;
    int64_t ins_all = w->ins_all, acc_all = w->acc_all, rej_all = w->rej_all, t = es_now_ms();
    static const char *const rcols[] = {"upload_id", "line", "col", "reason", "raw"};
    for (int i = 0; i < w->nparts && !rc; i++)
        if (w->parts[i].rejects.len)
            rc = es_store_copy_in(c, "upload_rejects", rcols, NULL, 5, w->parts[i].rejects.data,
                                  w->parts[i].rejects.len);
    char ins[24], dup[24], rej[24], now[24], cnt[24];
    const char *p[] = {
        m->upload,      ES_I64(ins, ins_all), ES_I64(dup, acc_all - ins_all), ES_I64(rej, rej_all),
        ES_I64(now, t), ES_I64(cnt, m->count)};
    if (!rc)
        rc = es_store_exec(
            c,
            "UPDATE uploads SET batches_done = batches_done + $6,"
            " rows_inserted = rows_inserted + $2, rows_duplicate = rows_duplicate + $3,"
            " rows_rejected = rows_rejected + $4,"
            " status = CASE WHEN status = 'queued' THEN 'processing' ELSE status END,"
            " started_ms = COALESCE(started_ms, $5), updated_ms = $5 WHERE id = $1",
            6, p, NULL);
    const char *final = NULL;
    if (!rc) rc = settle(app, c, m->upload, &final);
    if (!rc) {
        char res[240];
        snprintf(res, sizeof res,
                 "{\"upload\":\"%s\",\"seq\":%lld,\"count\":%lld,\"inserted\":%lld,"
                 "\"duplicate\":%lld,\"rejected\":%lld,\"final\":%s%s%s}",
                 m->upload, (long long)m->seq, (long long)m->count, (long long)ins_all,
                 (long long)(acc_all - ins_all), (long long)rej_all, final ? "\"" : "",
                 final ? final : "null", final ? "\"" : "");
        es_job_set_result(ctx, res);
    }
    return rc;
}

static int batch_run(es_job_ctx *ctx, void *arg)
{
    es_app *app = arg;
    const es_job *job = es_job_ctx_job(ctx);
    batch_msg m;
    if (parse_msg(job->payload, &m)) {
        es_job_fail(ctx, true, "bad_payload", "not an upload batch: %.200s", job->payload);
        return ES_EINVAL;
    }
    char seqs[24];
    const char *q[] = {m.upload, ES_I64(seqs, m.seq)};
    es_rows *r = NULL;
    int rc = es_store_exec1(app->store,
                            "SELECT u.tenant, u.dataset, u.header, b.done_ms FROM uploads u"
                            " JOIN upload_batches b ON b.upload_id = u.id AND b.seq = $2"
                            " WHERE u.id = $1",
                            2, q, &r);
    if (rc) return rc;
    if (es_rows_count(r) != 1) {
        es_rows_free(r);
        es_job_fail(ctx, true, "not_found", "upload %s has no batch %lld", m.upload,
                    (long long)m.seq);
        return ES_ENOTFOUND;
    }
    if (es_rows_get(r, 0, 3)) { /* applied already: a redelivery */
        es_rows_free(r);
        return ES_OK;
    }
    es_dataset ds;
    batch_work *w = calloc(1, sizeof *w); /* per-batch arrays: too big for a stack */
    if (!w) {
        es_rows_free(r);
        return ES_ENOMEM;
    }
    *w = (batch_work){.app = app, .ds = &ds, .upload_id = m.upload, .m = &m, .ctx = ctx};
    es_buf_init(&w->copy, 0);
    /* a small group (PostgreSQL's 8 batches) runs beside other jobs, whose
     * waits already overlap: its objects are written in turn (threads of
     * its own cost more than they saved there, new S3 connections each) */
    writer_init(&w->objects, app->blob, m.split ? PUT_SLOTS : 0);
    for (int i = 0; i < PARSE_PARTS; i++) {
        batch_part *p = &w->parts[i];
        p->w = w;
        es_buf_init(&p->copy, 0);
        es_buf_init(&p->json, 0);
        es_buf_init(&p->rejects, 0);
        es_buf_init(&p->scratch, 0);
        es_buf_init(&p->sorted, 0);
    }
    rc = es_datasets_get(app->store, es_rows_get(r, 0, 1), &ds);
    if (!rc) rc = es_datasets_ensure_table(app->store, &ds);
    if (!rc) {
        size_t tl = 0;
        const char *tenant = es_rows_get(r, 0, 0);
        es_buf head;
        es_buf_init(&head, sizeof w->row_head - 1);
        if (es_copy_field(&head, tenant, strlen(tenant), false) == ES_OK) tl = head.len;
        memcpy(w->row_head, head.data, tl);
        w->row_head[tl] = 0;
        es_buf_finish(&head);
        w->header = json_loads(es_rows_get(r, 0, 2) ? es_rows_get(r, 0, 2) : "", 0, NULL);
        w->nfields = (int)json_array_size(w->header);
        const char *f[ES_DATASET_MAX_COLS * 2];
        size_t fl[ES_DATASET_MAX_COLS * 2];
        for (int i = 0; i < w->nfields && i < ES_DATASET_MAX_COLS * 2; i++) {
            f[i] = json_string_value(json_array_get(w->header, (size_t)i));
            fl[i] = strlen(f[i] ? f[i] : "");
        }
        rc = w->nfields > 0 && w->nfields <= ES_DATASET_MAX_COLS * 2
                 ? es_dataset_map_header(&ds, f, fl, w->nfields, &w->map, NULL)
                 : ES_EINVAL;
    }
    es_rows_free(r);
    if (rc) {
        es_job_fail(ctx, rc == ES_EINVAL || rc == ES_ENOTFOUND, "bad_upload",
                    "upload %s: its dataset or header is unusable (%s)", m.upload, es_strerror(rc));
        goto out;
    }
    w->types[w->ncols] = ES_COPY_TEXT;
    w->cols[w->ncols++] = "tenant";
    for (int i = 0; i < w->nfields; i++) {
        if (w->map.col_of[i] == ds.key) w->key_field = w->ncols;
        if (w->map.col_of[i] < 0) continue;
        const es_column *col = &ds.cols[w->map.col_of[i]];
        w->types[w->ncols] = es_coltype_copy(col->type);
        w->cols[w->ncols++] = col->name;
    }
    w->types[w->ncols] = ES_COPY_TEXT;
    w->cols[w->ncols++] = "upload_id";
    w->types[w->ncols] = ES_COPY_INT8;
    w->cols[w->ncols++] = "line";
    /* SQLite inserts into its key index wherever each key falls: a group's
     * random keys (UUIDs) touch every page of it, more than a page cache
     * holds.  Spooled by key range and loaded range after range, the pages
     * of one range stay cached while its rows go in. */
    w->nbuckets = es_store_dialect(app->store) == ES_DIALECT_SQLITE &&
                          ds.cols[ds.key].type == ES_COL_UUID && w->key_field > 0
                      ? SPOOL_BUCKETS
                      : 1;
    if (!(w->segs = calloc((size_t)(m.count * w->nbuckets), sizeof *w->segs))) {
        rc = ES_ENOMEM;
        goto out;
    }

    /* a big group is read by two parts side by side (the message says where
     * the second begins), each with its own parser, objects and spool */
    w->nparts = m.split ? 2 : 1;
    w->parts[0].end = m.split ? m.split : m.count;
    w->parts[0].offset = m.offset;
    w->parts[0].length = m.split ? m.split_off - m.offset : m.length;
    w->parts[0].line = m.line;
    if (m.split) {
        batch_part *p = &w->parts[1];
        p->first = p->cur = m.split;
        p->end = m.count;
        p->offset = m.split_off;
        p->length = m.offset + m.length - m.split_off;
        p->line = m.cuts[m.split - 1];
    }
    pthread_t helper;
    bool threaded = w->nparts > 1 && pthread_create(&helper, NULL, read_part, &w->parts[1]) == 0;
    read_part(&w->parts[0]);
    if (threaded)
        pthread_join(helper, NULL);
    else if (w->nparts > 1)
        read_part(&w->parts[1]);
    for (int i = 0; i < w->nparts; i++) {
        const batch_part *p = &w->parts[i];
        if (p->rc) {
            es_job_fail(ctx, false, p->failure, "%s", p->why);
            rc = p->rc;
            goto out;
        }
    }
    if ((rc = writer_finish(&w->objects))) {
        es_job_fail(ctx, false, "blob_failed", "upload %s: cannot store %s (%s)", m.upload,
                    w->objects.failed_key, es_strerror(rc));
        goto out;
    }
    rc = load_batch(ctx, w, &m);
    if (w->big_cache) { /* back to the default: the pooled connection lives on */
        es_store_conn *c;
        if (es_job_ctx_conn(ctx, &c) == ES_OK)
            es_store_exec(c, "PRAGMA cache_size = -2000", 0, NULL, NULL);
    }
out:
    for (int i = 0; i < PARSE_PARTS; i++) {
        batch_part *p = &w->parts[i];
        es_csv_destroy(p->csv);
        if (p->spool) fclose(p->spool);
        es_buf_finish(&p->copy);
        es_buf_finish(&p->json);
        es_buf_finish(&p->rejects);
        es_buf_finish(&p->scratch);
        es_buf_finish(&p->sorted);
    }
    writer_destroy(&w->objects);
    json_decref(w->header);
    es_buf_finish(&w->copy);
    free(w->segs);
    free(w);
    return rc;
}

/* A dead batch may be the last one the upload waited for. */
static int batch_dead(es_job_ctx *ctx, es_store_conn *c, void *arg)
{
    batch_msg m;
    if (parse_msg(es_job_ctx_job(ctx)->payload, &m)) return ES_OK;
    char now[24], n[24];
    const char *p[] = {m.upload, ES_I64(now, es_now_ms()), ES_I64(n, m.count)};
    int rc =
        es_store_exec(c,
                      "UPDATE uploads SET batches_failed = batches_failed + $3, updated_ms = $2"
                      " WHERE id = $1",
                      3, p, NULL);
    const char *final = NULL;
    if (!rc) rc = settle(arg, c, m.upload, &final);
    if (!rc && final) es_warn(COMP, "upload %s is %s: a batch is dead", m.upload, final);
    return rc;
}

/* Progress for whoever follows the upload (SSE), and upload.completed. */
static void batch_done(es_job_ctx *ctx, void *arg)
{
    es_app *app = arg;
    json_t *res = json_loads(es_job_ctx_result(ctx) ? es_job_ctx_result(ctx) : "", 0, NULL);
    const char *id = json_string_value(json_object_get(res, "upload"));
    const char *final = json_string_value(json_object_get(res, "final"));
    if (id) {
        char channel[64];
        snprintf(channel, sizeof channel, "upload.%s", id);
        char *text = json_dumps(res, JSON_COMPACT);
        if (text) es_cache_publish(app->cache, channel, text, strlen(text));
        free(text);
    }
    if (id && final) {
        json_t *st = NULL;
        if (es_upload_get(app, NULL, id, &st) == ES_OK) {
            json_t *ev = json_pack("{s:s, s:O}", "type", "upload.completed", "upload", st);
            char *text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
            if (text) {
                es_cache_publish(app->cache, "events", text, strlen(text));
                es_msg msg = {
                    .queue = "events.upload.completed", .body = text, .len = strlen(text)};
                if (es_broker_declare(app->broker, msg.queue) != ES_OK ||
                    es_broker_publish(app->broker, &msg, 1) != ES_OK)
                    es_warn(COMP, "upload %s: could not publish upload.completed", id);
                es_info(COMP, "upload %s is %s", id, final);
            }
            free(text);
            json_decref(ev);
            json_decref(st);
        }
    }
    json_decref(res);
}

/* ================================================================ presigned uploads */

static int scan_sink(void *arg, const void *data, size_t len)
{
    int rc = es_upload_feed(arg, data, len);
    return rc == ES_EINVAL ? ES_EINVAL : rc;
}

int es_upload_presign(es_app *app, const es_upload_req *req, int64_t size, json_t **out)
{
    *out = NULL;
    es_dataset ds;
    int rc = es_datasets_get(app->store, req->dataset, &ds);
    if (rc) return rc;
    if (size > app->cfg->max_upload) return ES_ELIMIT;
    if ((rc = es_datasets_ensure_table(app->store, &ds))) return rc;
    char id[ES_UUID_LEN + 1], key[SOURCE_KEY_MAX], now[24], exp[24];
    es_uuid7(id);
    source_key(id, key);
    int64_t ttl_s = app->cfg->signed_url_ttl_ms / 1000, t = es_now_ms();
    char *url = NULL;
    if ((rc = es_blob_presign(app->blob, "PUT", key, "text/csv", ttl_s, &url))) return rc;
    const char *p[] = {id,
                       req->tenant,
                       ds.name,
                       req->filename,
                       ES_I64(now, t),
                       ES_I64(exp, t + ttl_s * 1000),
                       req->idempotency_key};
    rc = exec_upload(app,
                     "INSERT INTO uploads (id, tenant, dataset, status, filename, origin,"
                     " expires_ms, idempotency_key, created_ms, updated_ms)"
                     " VALUES ($1, $2, $3, 'receiving', $4, 'presigned', $6, $7, $5, $5)",
                     7, p);
    if (rc == ES_ECONFLICT && req->idempotency_key) {
        free(url);
        json_t *existing = NULL;
        rc = find_idem(app, req->tenant, req->idempotency_key, &existing);
        if (!rc && !existing) rc = ES_ENOTFOUND;
        *out = existing;
        return rc;
    }
    if (rc) {
        free(url);
        return rc;
    }
    char at[25];
    es_time_iso(t + ttl_s * 1000, at);
    *out = json_pack("{s:s, s:s, s:s, s:s, s:{s:s}, s:s, s:s}", "id", id, "dataset", ds.name,
                     "status", "receiving", "url", url, "headers", "Content-Type", "text/csv",
                     "method", "PUT", "expiresAt", at);
    free(url);
    es_info(COMP, "upload %s: presigned for dataset %s", id, ds.name);
    return *out ? ES_OK : ES_ENOMEM;
}

int es_upload_complete(es_app *app, const char *tenant, const char *id, json_t **out)
{
    *out = NULL;
    if (!es_uuid_valid(id)) return ES_ENOTFOUND;
    const char *p[] = {id, tenant};
    es_rows *r = NULL;
    int rc = es_store_exec1(
        app->store, "SELECT status, origin FROM uploads WHERE id = $1 AND tenant = $2", 2, p, &r);
    if (rc) return rc;
    if (es_rows_count(r) != 1) rc = ES_ENOTFOUND;
    bool presigned = !rc && !strcmp(es_rows_get(r, 0, 1), "presigned");
    bool receiving = !rc && !strcmp(es_rows_get(r, 0, 0), "receiving");
    es_rows_free(r);
    if (rc) return rc;
    if (!presigned) return ES_EINVAL;
    if (receiving) {
        char key[SOURCE_KEY_MAX];
        source_key(id, key);
        es_blob_info info;
        if ((rc = es_blob_head(app->blob, key, &info)))
            return rc == ES_ENOTFOUND ? ES_ECONFLICT : rc;
        char payload[80], idem[80];
        snprintf(payload, sizeof payload, "{\"upload\":\"%s\"}", id);
        snprintf(idem, sizeof idem, "scan:%s", id);
        es_job_req jr = {
            .kind = SCAN_KIND, .tenant = tenant, .payload = payload, .idempotency_key = idem};
        if ((rc = es_job_submit(app->engine, &jr, NULL, NULL))) return rc;
    }
    return es_upload_get(app, tenant, id, out);
}

/* The presigned file, read from storage through the same receiver as an
 * HTTP body (without storing it again). */
static int scan_run(es_job_ctx *ctx, void *arg)
{
    es_app *app = arg;
    json_t *j = json_loads(es_job_ctx_job(ctx)->payload, 0, NULL);
    char id[ES_UUID_LEN + 1] = "";
    const char *u = json_string_value(json_object_get(j, "upload"));
    if (u && es_uuid_valid(u)) es_strlcpy(id, u, sizeof id);
    json_decref(j);
    if (!id[0]) {
        es_job_fail(ctx, true, "bad_payload", "no upload id");
        return ES_EINVAL;
    }
    const char *p[] = {id};
    es_rows *r = NULL;
    int rc = es_store_exec1(app->store, "SELECT tenant, dataset, status FROM uploads WHERE id = $1",
                            1, p, &r);
    if (rc) return rc;
    if (es_rows_count(r) != 1 || strcmp(es_rows_get(r, 0, 2), "receiving") != 0) {
        es_rows_free(r); /* gone, or scanned already */
        return ES_OK;
    }
    es_dataset ds;
    es_upload_rx *rx = NULL;
    rc = es_datasets_get(app->store, es_rows_get(r, 0, 1), &ds);
    if (!rc) rc = rx_new(app, &ds, es_rows_get(r, 0, 0), id, false, &rx);
    es_rows_free(r);
    if (rc) return rc;
    char key[SOURCE_KEY_MAX];
    rc = es_blob_get(app->blob, source_key(id, key), 0, scan_sink, rx);
    if (rc == ES_OK || rc == ES_EINVAL) {
        json_t *st = NULL;
        if (rc == ES_OK) rc = es_upload_end(rx, &st);
        json_decref(st);
        if (rc == ES_OK) return ES_OK; /* rx freed */
    }
    if (rx->rc == ES_EINVAL) { /* the file is the problem: the upload fails, the job is done */
        char why[512];
        snprintf(why, sizeof why, "%s", es_upload_rx_error(rx));
        json_t *pr = es_upload_rx_problems(rx);
        for (size_t i = 0; pr && i < json_array_size(pr); i++) {
            size_t n = strlen(why);
            snprintf(why + n, sizeof why - n, "%s%s: %s", i ? "; " : ": ",
                     json_string_value(json_object_get(json_array_get(pr, i), "field")),
                     json_string_value(json_object_get(json_array_get(pr, i), "problem")));
        }
        es_upload_abort(rx, why);
        return ES_OK;
    }
    rx_free(rx); /* storage or store trouble: try again later */
    return rc ? rc : ES_EIO;
}

int es_uploads_register(es_app *app)
{
    es_job_kind scan = {.name = SCAN_KIND, .run = scan_run, .arg = app, .concurrency = 1};
    int rc = es_engine_register(app->engine, &scan);
    if (rc) return rc;
    es_job_kind k = {.name = ES_UPLOAD_KIND,
                     .run = batch_run,
                     .arg = app,
                     .on_dead = batch_dead,
                     .after_done = batch_done};
    return es_engine_register(app->engine, &k);
}
