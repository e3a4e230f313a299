/* api_blobs.c - PUT/GET /v1/blobs/{key} with esteira's own signed URLs: the
 * file: blob backend's equivalent of a presigned S3 URL.  No token: the
 * signature (method, key, content type, expiry) is the credential. */
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/sign.h"
#include "http/api.h"

static int verify(es_req *r, const char *method, const char *ctype)
{
    es_app *app = es_req_app(r);
    const char *key = es_req_param(r, "key"), *why = "bad signature";
    if (!es_blob_key_valid(key))
        return es_reply_error(r, 400, "validation_failed", "invalid key", NULL);
    int rc = es_sign_verify(app->secret, es_req_raw_query(r), method, key, ctype,
                            es_now_ms() / 1000, &why);
    if (rc == ES_ETIMEDOUT) return es_reply_error(r, 403, "url_expired", why, NULL);
    if (rc) return es_reply_error(r, 403, "forbidden", why, NULL);
    return ES_OK;
}

int api_blob_put_start(es_req *r)
{
    es_app *app = es_req_app(r);
    const char *ctype = es_req_header(r, "Content-Type");
    if (verify(r, "PUT", ctype ? ctype : "")) return ES_OK;
    es_blob_writer *w = NULL;
    int rc = es_blob_writer_open(app->blob, es_req_param(r, "key"),
                                 ctype && *ctype ? ctype : "application/octet-stream", &w);
    if (rc) return es_reply_err(r, rc, "cannot store the object");
    es_req_set_state(r, w, (void (*)(void *))es_blob_abort);
    return ES_OK;
}

int api_blob_put_chunk(es_req *r, const char *data, size_t len)
{
    es_blob_writer *w = es_req_state(r);
    if (!w) return ES_OK;
    int rc = es_blob_write(w, data, len);
    if (rc) {
        es_req_set_state(r, NULL, NULL); /* aborts the writer */
        return es_reply_err(r, rc, "cannot store the object");
    }
    return ES_OK;
}

int api_blob_put_end(es_req *r)
{
    es_blob_writer *w = es_req_state(r);
    if (!w) return es_reply_err(r, ES_EIO, "cannot store the object");
    /* commit frees the writer: disarm the slot's abort (same pointer, no free
     * function), then empty it */
    es_req_set_state(r, w, NULL);
    es_req_set_state(r, NULL, NULL);
    int rc = es_blob_commit(w);
    if (rc) return es_reply_err(r, rc, "cannot store the object");
    es_blob_info info;
    es_app *app = es_req_app(r);
    const char *key = es_req_param(r, "key");
    if (es_blob_head(app->blob, key, &info)) info.size = -1;
    return es_reply_json(r, 201,
                         json_pack("{s:s, s:I}", "key", key, "size", (json_int_t)info.size));
}

typedef struct get_state {
    es_blob *blob;
    char *key;
    char *buf; /* where the sink copies to */
    size_t max, got;
} get_state;

static int copy_sink(void *arg, const void *data, size_t len)
{
    get_state *g = arg;
    size_t n = len < g->max - g->got ? len : g->max - g->got;
    memcpy(g->buf + g->got, data, n);
    g->got += n;
    return g->got == g->max ? 1 : 0; /* full: stop this read */
}

/* Pulls one piece at pos (the blob API pushes; the HTTP response pulls). */
static long get_read(void *arg, uint64_t pos, char *buf, size_t max)
{
    get_state *g = arg;
    g->buf = buf;
    g->max = max;
    g->got = 0;
    int rc = es_blob_get(g->blob, g->key, (int64_t)pos, copy_sink, g);
    if (rc < 0) return -1;
    return (long)g->got;
}

static void get_free(void *arg)
{
    get_state *g = arg;
    free(g->key);
    free(g);
}

int api_blob_get(es_req *r)
{
    if (verify(r, "GET", NULL)) return ES_OK;
    es_app *app = es_req_app(r);
    const char *key = es_req_param(r, "key");
    es_blob_info info;
    int rc = es_blob_head(app->blob, key, &info);
    if (rc)
        return es_reply_err(r, rc,
                            rc == ES_ENOTFOUND ? "no such object" : "cannot read the object");
    get_state *g = calloc(1, sizeof *g);
    if (!g || !(g->key = strdup(key))) {
        free(g);
        return es_reply_err(r, ES_ENOMEM, "out of memory");
    }
    g->blob = app->blob;
    return es_reply_stream(r, 200,
                           info.content_type[0] ? info.content_type : "application/octet-stream",
                           info.size, get_read, g, get_free);
}
