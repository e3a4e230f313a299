/* api_uploads.c - /v1/uploads (and the seeds' POST /upload): CSV files
 * streamed in as text/csv or as the file part of multipart/form-data, their
 * status, rejects, and retry.  The pipeline itself is src/pipeline/upload.c. */
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/upload.h"
#include "http/api.h"

#define REJECTS_PAGE 1000

typedef struct rx_state {
    es_upload_rx *rx;
    bool multipart;
    bool in_file; /* the current multipart part is the file */
    bool had_file;
} rx_state;

static void state_free(void *p)
{
    rx_state *s = p;
    if (s->rx) es_upload_abort(s->rx, "the request ended before the whole file was received");
    free(s);
}

/* Refused: answered here, the upload marked failed. */
static int refuse(es_req *r, rx_state *s)
{
    es_upload_rx *rx = s->rx;
    int rc;
    json_t *problems = es_upload_rx_problems(rx);
    if (problems)
        rc = es_reply_error(r, 422, "validation_failed", es_upload_rx_error(rx),
                            json_deep_copy(problems));
    else
        rc = es_reply_error(r, 422, "csv_malformed", es_upload_rx_error(rx), NULL);
    s->rx = NULL;
    es_upload_abort(rx, es_upload_rx_error(rx));
    return rc;
}

static int feed(es_req *r, rx_state *s, const char *data, size_t len)
{
    if (!s->rx || !len) return ES_OK;
    int rc = es_upload_feed(s->rx, data, len);
    if (rc == ES_EINVAL) return refuse(r, s);
    if (rc) {
        es_upload_rx *rx = s->rx;
        s->rx = NULL;
        int arc = es_reply_err(r, rc, es_upload_rx_error(rx));
        es_upload_abort(rx, es_upload_rx_error(rx));
        return arc;
    }
    return ES_OK;
}

/* The file is the part named csv or file, or else the first part with a
 * filename; other fields are ignored. */
static int on_part(es_req *r, const char *name, const char *filename, const char *content_type,
                   const char *data, size_t len, uint64_t off)
{
    (void)content_type;
    rx_state *s = es_req_state(r);
    if (!s) return ES_OK;
    if (off == 0) {
        bool file = !strcmp(name, "csv") || !strcmp(name, "file") || (filename && *filename);
        s->in_file = file && !s->had_file;
        if (s->in_file) s->had_file = true;
    }
    return s->in_file ? feed(r, s, data, len) : ES_OK;
}

int api_uploads_start(es_req *r)
{
    es_app *app = es_req_app(r);
    const char *dataset = es_req_query(r, "dataset");
    bool multipart = es_req_media_is(r, "multipart/form-data");
    if (!multipart && !es_req_media_is(r, "text/csv") && !es_req_media_is(r, "application/csv") &&
        !es_req_media_is(r, "text/plain") && !es_req_media_is(r, "application/octet-stream"))
        return es_reply_error(r, 415, "unsupported_media_type",
                              "send the file as text/csv or as a multipart/form-data part", NULL);
    if (!dataset) {
        /* the seeds' POST /upload has no dataset: their file is the debts one */
        if (strcmp(es_req_path(r), "/upload") != 0)
            return es_reply_error(r, 400, "validation_failed", "which dataset?",
                                  json_pack("[{s:s, s:s}]", "field", "dataset", "problem",
                                            "required query parameter"));
        dataset = "debts";
    }
    es_upload_req req = {.tenant = es_req_tenant(r),
                         .dataset = dataset,
                         .filename = es_req_query(r, "filename"),
                         .idempotency_key = es_req_header(r, "Idempotency-Key")};
    es_upload_rx *rx = NULL;
    json_t *existing = NULL;
    int rc = es_upload_begin(app, &req, &rx, &existing);
    if (rc == ES_ENOTFOUND) {
        char msg[160];
        snprintf(msg, sizeof msg, "no dataset named '%.100s'", dataset);
        return es_reply_error(r, 404, "not_found", msg, NULL);
    }
    if (rc) return es_reply_err(r, rc, "cannot start the upload");
    if (existing) return es_reply_json(r, 202, existing);
    rx_state *s = calloc(1, sizeof *s);
    if (!s) {
        es_upload_abort(rx, "out of memory");
        return es_reply_err(r, ES_ENOMEM, NULL);
    }
    s->rx = rx;
    s->multipart = multipart;
    es_req_set_state(r, s, state_free);
    if (multipart && es_req_multipart(r, on_part) != ES_OK)
        return es_reply_error(r, 400, "malformed_body", "multipart body without a boundary", NULL);
    return ES_OK;
}

int api_uploads_chunk(es_req *r, const char *data, size_t len)
{
    rx_state *s = es_req_state(r);
    return s ? feed(r, s, data, len) : ES_OK;
}

int api_uploads_end(es_req *r)
{
    rx_state *s = es_req_state(r);
    if (!s || !s->rx) return es_reply_err(r, ES_EIO, "the upload was not started");
    if (s->multipart && !s->had_file)
        return es_reply_error(r, 400, "validation_failed", "no file in the form",
                              json_pack("[{s:s, s:s}]", "field", "csv", "problem",
                                        "a part named csv or file is required"));
    es_upload_rx *rx = s->rx;
    s->rx = NULL;
    json_t *status = NULL;
    int rc = es_upload_end(rx, &status);
    if (rc == ES_OK) {
        es_req_set_state(r, s, free); /* nothing left to abort */
        return es_reply_json(r, 202, status);
    }
    s->rx = rx;
    if (rc == ES_EINVAL) return refuse(r, s);
    s->rx = NULL;
    int arc = es_reply_err(r, rc, es_upload_rx_error(rx));
    es_upload_abort(rx, es_upload_rx_error(rx));
    return arc;
}

int api_uploads_get(es_req *r)
{
    json_t *u = NULL;
    int rc = es_upload_get(es_req_app(r), es_req_tenant(r), es_req_param(r, "id"), &u);
    if (rc) return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such upload" : NULL);
    return es_reply_json(r, 200, u);
}

int api_uploads_list(es_req *r)
{
    int limit;
    if (es_req_limit(r, 50, 500, &limit)) return ES_OK;
    es_upload_filter f = {.tenant = es_req_tenant(r),
                          .dataset = es_req_query(r, "dataset"),
                          .status = es_req_query(r, "status"),
                          .cursor = es_req_query(r, "cursor"),
                          .limit = limit};
    json_t *items = NULL;
    char *next = NULL;
    int rc = es_upload_list(es_req_app(r), &f, &items, &next);
    return es_reply_page(r, rc, items, next);
}

int api_uploads_retry(es_req *r)
{
    es_app *app = es_req_app(r);
    const char *id = es_req_param(r, "id");
    int rc = es_upload_retry(app, es_req_tenant(r), id);
    if (rc == ES_ECONFLICT)
        return es_reply_error(r, 409, "conflict",
                              "only a failed upload whose file arrived whole can be retried", NULL);
    if (rc) return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such upload" : NULL);
    json_t *u = NULL;
    if ((rc = es_upload_get(app, es_req_tenant(r), id, &u))) return es_reply_err(r, rc, NULL);
    return es_reply_json(r, 202, u);
}

/* ---- GET /v1/uploads/{id}/rejects: CSV, a page of the store at a time */

typedef struct rejects_stream {
    es_app *app;
    char id[64];
    char *after; /* the last line sent */
    es_buf buf;
    size_t sent; /* of buf */
    bool header, end;
} rejects_stream;

static long rejects_read(void *arg, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    rejects_stream *s = arg;
    while (s->sent == s->buf.len) {
        if (s->end) return 0;
        es_buf_reset(&s->buf);
        s->sent = 0;
        if (!s->header) {
            s->header = true;
            es_buf_puts(&s->buf, "line,column,reason,raw\n");
            continue;
        }
        char *next = NULL;
        if (es_upload_rejects_page(s->app, s->id, s->after, REJECTS_PAGE, &s->buf, &next))
            return -1;
        if (!next) s->end = true;
        free(s->after);
        s->after = next;
    }
    size_t n = s->buf.len - s->sent < max ? s->buf.len - s->sent : max;
    memcpy(out, s->buf.data + s->sent, n);
    s->sent += n;
    return (long)n;
}

static void rejects_free(void *arg)
{
    rejects_stream *s = arg;
    es_buf_finish(&s->buf);
    free(s->after);
    free(s);
}

int api_uploads_rejects(es_req *r)
{
    es_app *app = es_req_app(r);
    json_t *u = NULL;
    int rc = es_upload_get(app, es_req_tenant(r), es_req_param(r, "id"), &u);
    if (rc) return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such upload" : NULL);
    json_decref(u);
    rejects_stream *s = calloc(1, sizeof *s);
    if (!s) return es_reply_err(r, ES_ENOMEM, NULL);
    s->app = app;
    es_strlcpy(s->id, es_req_param(r, "id"), sizeof s->id);
    es_buf_init(&s->buf, 0);
    return es_reply_stream(r, 200, "text/csv", -1, rejects_read, s, rejects_free);
}

/* ---- presigned: POST /v1/uploads/presign, then PUT, then …/complete */

int api_uploads_presign(es_req *r)
{
    json_t *body = NULL;
    if (es_req_json(r, &body)) return ES_OK; /* answered */
    json_t *details = json_array();
    const char *dataset = json_string_value(json_object_get(body, "dataset"));
    json_t *filename = json_object_get(body, "filename"), *size = json_object_get(body, "size");
    if (!json_is_object(body))
        json_array_append_new(
            details, json_pack("{s:s, s:s}", "field", "", "problem", "must be a JSON object"));
    else if (!dataset)
        json_array_append_new(
            details, json_pack("{s:s, s:s}", "field", "dataset", "problem", "required string"));
    if (filename && !json_is_string(filename))
        json_array_append_new(details,
                              json_pack("{s:s, s:s}", "field", "filename", "problem", "a string"));
    if (size && (!json_is_integer(size) || json_integer_value(size) < 0))
        json_array_append_new(details, json_pack("{s:s, s:s}", "field", "size", "problem",
                                                 "a non-negative integer (bytes)"));
    if (json_array_size(details)) {
        json_decref(body);
        return es_reply_error(r, 400, "validation_failed", "invalid presign request", details);
    }
    json_decref(details);
    es_upload_req req = {.tenant = es_req_tenant(r),
                         .dataset = dataset,
                         .filename = json_string_value(filename),
                         .idempotency_key = es_req_header(r, "Idempotency-Key")};
    json_t *out = NULL;
    int rc = es_upload_presign(es_req_app(r), &req, size ? json_integer_value(size) : 0, &out);
    json_decref(body);
    if (rc == ES_ENOTFOUND) return es_reply_error(r, 404, "not_found", "no such dataset", NULL);
    if (rc == ES_ELIMIT)
        return es_reply_error(r, 413, "payload_too_large", "size is over the upload limit", NULL);
    if (rc) return es_reply_err(r, rc, "cannot presign the upload");
    return es_reply_json(r, 201, out);
}

int api_uploads_complete(es_req *r)
{
    json_t *out = NULL;
    int rc = es_upload_complete(es_req_app(r), es_req_tenant(r), es_req_param(r, "id"), &out);
    if (rc == ES_ECONFLICT)
        return es_reply_error(r, 409, "conflict", "the file has not been uploaded to its URL yet",
                              NULL);
    if (rc == ES_EINVAL)
        return es_reply_error(r, 409, "conflict", "this upload was not made with a presigned URL",
                              NULL);
    if (rc) return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such upload" : NULL);
    return es_reply_json(r, 202, out);
}
