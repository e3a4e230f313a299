/* test_http.c - the HTTP server booted on a free port with a small route
 * table, talked to with libcurl. */
#include <curl/curl.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "testutil.h"

#include "esteira/app.h"
#include "esteira/auth.h"
#include "esteira/err.h"
#include "esteira/http.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/metrics.h"

/* ------------------------------------------------------------------ handlers */

static int h_hello(es_req *r)
{
    return es_reply_json(r, 200, json_pack("{s:s}", "hello", "world"));
}

static int h_item(es_req *r)
{
    int limit;
    if (es_req_limit(r, 10, 100, &limit) != ES_OK) return ES_EINVAL;
    const char *q = es_req_query(r, "q");
    return es_reply_json(r, 200,
                         json_pack("{s:s,s:s?,s:i,s:s,s:s}", "id", es_req_param(r, "id"), "q", q,
                                   "limit", limit, "raw", es_req_raw_query(r), "path",
                                   es_req_path(r)));
}

static int h_echo(es_req *r)
{
    json_t *v;
    int rc = es_req_json(r, &v);
    if (rc != ES_OK) return rc;
    return es_reply_json(r, 200, v);
}

static int h_silent(es_req *r)
{
    (void)r;
    return ES_OK;
}

static int h_unavailable(es_req *r)
{
    return es_reply_err(r, ES_EAGAIN, "backend down");
}

static int h_slow(es_req *r)
{
    const char *ms = es_req_query(r, "ms");
    es_sleep_ms(ms ? strtol(ms, NULL, 10) : 300);
    return es_reply_data(r, 200, "text/plain", "slow\n", 5);
}

/* handlers run on the server's threads: they record, the tests assert */
static atomic_int twice_rc, late_chunks;

static int h_twice(es_req *r)
{
    es_reply_header(r, "X-Extra", "1");
    es_reply_data(r, 201, "text/plain", "first", 5);
    atomic_store(&twice_rc, es_reply_data(r, 200, "text/plain", "second", 6));
    return es_req_replied(r) ? ES_OK : ES_EINVAL;
}

static atomic_int states_freed;

typedef struct upload_state {
    uint64_t bytes, chunks, sum;
    size_t max_chunk;
} upload_state;

static void upload_free(void *p)
{
    free(p);
    atomic_fetch_add(&states_freed, 1);
}

static int up_start(es_req *r)
{
    upload_state *u = calloc(1, sizeof *u);
    if (!u) return ES_ENOMEM;
    es_req_set_state(r, u, upload_free);
    return ES_OK;
}

static int up_chunk(es_req *r, const char *data, size_t len)
{
    upload_state *u = es_req_state(r);
    u->bytes += len;
    u->chunks++;
    if (len > u->max_chunk) u->max_chunk = len;
    for (size_t i = 0; i < len; i++)
        u->sum += (unsigned char)data[i];
    return ES_OK;
}

static int up_end(es_req *r)
{
    upload_state *u = es_req_state(r);
    size_t blen = 1;
    bool nobody = es_req_body(r, &blen) == NULL && blen == 0;
    return es_reply_json(r, 200,
                         json_pack("{s:I,s:I,s:I,s:I,s:b}", "bytes", (json_int_t)u->bytes, "chunks",
                                   (json_int_t)u->chunks, "sum", (json_int_t)u->sum, "maxChunk",
                                   (json_int_t)u->max_chunk, "noBody", nobody));
}

static int reject_start(es_req *r)
{
    json_t *d = json_pack("[{s:s,s:s}]", "field", "header", "problem", "missing debtId");
    return es_reply_error(r, 422, "validation_failed", "bad CSV header", d);
}

static int badhead_chunk(es_req *r, const char *data, size_t len)
{
    (void)data;
    (void)len;
    upload_state *u = es_req_state(r);
    u->chunks++;
    if (u->chunks == 1) return es_reply_error(r, 422, "validation_failed", "bad CSV header", NULL);
    atomic_fetch_add(&late_chunks, 1); /* must not happen: the reply was made */
    return ES_OK;
}

static atomic_int stream_freed;

typedef struct gen {
    uint64_t total;
} gen;

static long gen_read(void *arg, uint64_t pos, char *buf, size_t max)
{
    gen *g = arg;
    if (pos >= g->total) return 0;
    size_t n = max;
    if (n > g->total - pos) n = (size_t)(g->total - pos);
    for (size_t i = 0; i < n; i++)
        buf[i] = (char)('a' + (pos + i) % 26);
    return (long)n;
}

static void gen_free(void *arg)
{
    free(arg);
    atomic_fetch_add(&stream_freed, 1);
}

static int h_stream(es_req *r)
{
    gen *g = malloc(sizeof *g);
    g->total = 1000003;
    const char *known = es_req_query(r, "known");
    return es_reply_stream(r, 200, "text/plain", known ? (int64_t)g->total : -1, gen_read, g,
                           gen_free);
}

static int h_whoami(es_req *r)
{
    return es_reply_json(
        r, 200,
        json_pack("{s:s?,s:i}", "tenant", es_req_tenant(r), "scopes", (int)es_req_scopes(r)));
}

static const es_route routes[] = {
    {.method = "GET", .pattern = "/hello", .scope = ES_SCOPE_PUBLIC, .handle = h_hello},
    {.method = "GET",
     .pattern = "/items/{id}",
     .scope = ES_SCOPE_PUBLIC,
     .handle = h_item,
     .name = "items"},
    {.method = "POST", .pattern = "/echo", .scope = ES_SCOPE_PUBLIC, .handle = h_echo},
    {.method = "GET", .pattern = "/silent", .scope = ES_SCOPE_PUBLIC, .handle = h_silent},
    {.method = "GET", .pattern = "/unavailable", .scope = ES_SCOPE_PUBLIC, .handle = h_unavailable},
    {.method = "GET", .pattern = "/slow", .scope = ES_SCOPE_PUBLIC, .handle = h_slow},
    {.method = "GET", .pattern = "/twice", .scope = ES_SCOPE_PUBLIC, .handle = h_twice},
    {.method = "POST",
     .pattern = "/upload",
     .scope = ES_SCOPE_PUBLIC,
     .handle = up_end,
     .start = up_start,
     .chunk = up_chunk},
    {.method = "POST",
     .pattern = "/reject",
     .scope = ES_SCOPE_PUBLIC,
     .handle = up_end,
     .start = reject_start,
     .chunk = up_chunk},
    {.method = "POST",
     .pattern = "/badheader",
     .scope = ES_SCOPE_PUBLIC,
     .handle = up_end,
     .start = up_start,
     .chunk = badhead_chunk},
    {.method = "GET", .pattern = "/stream", .scope = ES_SCOPE_PUBLIC, .handle = h_stream},
    {.method = "GET", .pattern = "/private", .scope = ES_SCOPE_READ, .handle = h_hello},
    {.method = "GET",
     .pattern = "/whoami",
     .scope = ES_SCOPE_READ | ES_SCOPE_REPORTS,
     .handle = h_whoami},
};

/* ------------------------------------------------------------------ a client */

typedef struct resp {
    long status;
    es_buf body, headers;
} resp;

static size_t on_data(char *p, size_t sz, size_t n, void *ud)
{
    es_buf_append(ud, p, sz * n);
    return sz * n;
}

typedef struct src {
    const char *data;
    size_t len, pos;
} src;

static size_t on_read(char *buf, size_t sz, size_t n, void *ud)
{
    src *s = ud;
    size_t k = sz * n;
    if (k > s->len - s->pos) k = s->len - s->pos;
    memcpy(buf, s->data + s->pos, k);
    s->pos += k;
    return k;
}

/* body: sent with Content-Length, or chunked when chunked is set */
static void request(const char *method, const char *url, const char *const *hdrs, const char *body,
                    size_t blen, bool chunked, resp *out)
{
    CURL *c = curl_easy_init();
    assert_non_null(c);
    memset(out, 0, sizeof *out);
    es_buf_init(&out->body, 0);
    es_buf_init(&out->headers, 0);
    struct curl_slist *sl = NULL;
    for (int i = 0; hdrs && hdrs[i]; i++)
        sl = curl_slist_append(sl, hdrs[i]);
    src s = {body, blen, 0};
    if (body && chunked) {
        sl = curl_slist_append(sl, "Transfer-Encoding: chunked");
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
        curl_easy_setopt(c, CURLOPT_READDATA, &s);
    } else if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    }
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "HEAD") == 0) curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, sl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &out->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &out->headers);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    CURLcode cc = curl_easy_perform(c);
    if (cc != CURLE_OK) fprintf(stderr, "curl: %s %s: %s\n", method, url, curl_easy_strerror(cc));
    assert_int_equal(cc, CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(sl);
    curl_easy_cleanup(c);
}

static void resp_free(resp *r)
{
    es_buf_finish(&r->body);
    es_buf_finish(&r->headers);
}

/* A response header's value (the last of that name), copied into out. */
static bool header(resp *r, const char *name, char *out, size_t len)
{
    const char *h = es_buf_cstr(&r->headers);
    bool found = false;
    size_t nl = strlen(name);
    for (const char *line = h; line && *line;) {
        const char *eol = strstr(line, "\r\n");
        if (!eol) break;
        if ((size_t)(eol - line) > nl && strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            size_t vn = (size_t)(eol - v);
            if (vn >= len) vn = len - 1;
            memcpy(out, v, vn);
            out[vn] = '\0';
            found = true;
        }
        line = eol + 2;
    }
    return found;
}

static json_t *body_json(resp *r)
{
    json_error_t je;
    json_t *v = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &je);
    if (!v) fprintf(stderr, "not JSON (%s): %.*s\n", je.text, (int)r->body.len, r->body.data);
    assert_non_null(v);
    return v;
}

/* An error reply: SPEC.md's shape, with the request id of the header. */
static void assert_error(resp *r, long status, const char *code)
{
    assert_int_equal(r->status, status);
    char ct[128], rid[128];
    assert_true(header(r, "Content-Type", ct, sizeof ct));
    assert_string_equal(ct, "application/json");
    assert_true(header(r, "X-Request-Id", rid, sizeof rid));
    json_t *v = body_json(r);
    assert_string_equal(json_string_value(json_object_get(json_object_get(v, "error"), "code")),
                        code);
    assert_true(json_is_string(json_object_get(json_object_get(v, "error"), "message")));
    assert_string_equal(json_string_value(json_object_get(v, "requestId")), rid);
    json_decref(v);
}

/* ------------------------------------------------------------------ the server under test */

static es_config cfg;
static es_app app;
static es_http *srv;
static char base[64];
static char *logpath;

static int boot(void **st)
{
    (void)st;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    assert_int_equal(es_config_defaults(&cfg), ES_OK);
    cfg.port = 0;
    cfg.http_threads = 4;
    cfg.max_body = 1 << 20;
    cfg.max_upload = 8 << 20;
    cfg.shutdown_timeout_ms = 5000;
    app.cfg = &cfg;
    /* the debug lines go to a file the tests read */
    char *dir = test_tmpdir("http");
    assert_non_null(dir);
    char p[512];
    snprintf(p, sizeof p, "%s/log", dir);
    logpath = strdup(p);
    free(dir);
    int fd = open(logpath, O_WRONLY | O_CREAT | O_APPEND, 0600);
    assert_true(fd >= 0);
    es_log_set_fd(fd);
    es_log_set_level(ES_LOG_DEBUG);
    assert_int_equal(es_http_create(&app, routes, ES_ARRAY_LEN(routes), &srv), ES_OK);
    assert_int_equal(es_http_start(srv), ES_OK);
    assert_true(es_http_port(srv) > 0);
    snprintf(base, sizeof base, "http://127.0.0.1:%u", es_http_port(srv));
    return 0;
}

static int shutdown_srv(void **st)
{
    (void)st;
    es_http_destroy(srv);
    es_log_set_fd(-1);
    es_config_finish(&cfg);
    es_metrics_reset();
    if (logpath) {
        char *slash = strrchr(logpath, '/');
        unlink(logpath);
        *slash = '\0';
        rmdir(logpath);
        free(logpath);
    }
    curl_global_cleanup();
    return 0;
}

static void url(char *out, size_t len, const char *path)
{
    snprintf(out, len, "%s%s", base, path);
}

/* ------------------------------------------------------------------ tests */

static void test_request_id(void **st)
{
    (void)st;
    char u[256], v[128];
    resp r;
    url(u, sizeof u, "/hello");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    assert_true(header(&r, "X-Request-Id", v, sizeof v));
    assert_true(es_uuid_valid(v));
    assert_true(header(&r, "Content-Type", v, sizeof v));
    assert_string_equal(v, "application/json");
    assert_string_equal(es_buf_cstr(&r.body), "{\"hello\":\"world\"}");
    resp_free(&r);

    const char *mine[] = {"X-Request-Id: abc.DEF_1-2", NULL};
    request("GET", u, mine, NULL, 0, false, &r);
    assert_true(header(&r, "X-Request-Id", v, sizeof v));
    assert_string_equal(v, "abc.DEF_1-2");
    resp_free(&r);

    char longid[100] = "X-Request-Id: ";
    memset(longid + strlen(longid), 'a', 65);
    const char *bad[][2] = {{"X-Request-Id: bad id!", NULL}, {longid, NULL}};
    for (size_t i = 0; i < 2; i++) {
        request("GET", u, bad[i], NULL, 0, false, &r);
        assert_true(header(&r, "X-Request-Id", v, sizeof v));
        assert_true(es_uuid_valid(v)); /* replaced by a fresh one */
        resp_free(&r);
    }
    /* HEAD is answered by the GET route, without a body */
    request("HEAD", u, NULL, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.body.len, 0);
    assert_true(header(&r, "X-Request-Id", v, sizeof v));
    resp_free(&r);
}

static void test_not_found_and_method(void **st)
{
    (void)st;
    char u[256], v[128];
    resp r;
    url(u, sizeof u, "/nope");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 404, "not_found");
    resp_free(&r);

    url(u, sizeof u, "/hello");
    request("DELETE", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 405, "method_not_allowed");
    assert_true(header(&r, "Allow", v, sizeof v));
    assert_string_equal(v, "GET");
    resp_free(&r);

    url(u, sizeof u, "/items/%zz");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 400, "validation_failed");
    resp_free(&r);

    url(u, sizeof u, "/items/a/..%2F..%2Fetc");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 400, "validation_failed");
    resp_free(&r);
}

static void test_params_and_query(void **st)
{
    (void)st;
    char u[256];
    resp r;
    url(u, sizeof u, "/items/a%20b%2Fc?q=x%2By+z&limit=5");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    json_t *v = body_json(&r);
    assert_string_equal(es_json_str(v, "id"), "a b/c");
    assert_string_equal(es_json_str(v, "q"), "x+y z");
    assert_int_equal(es_json_int(v, "limit", 0), 5);
    assert_string_equal(es_json_str(v, "raw"), "q=x%2By+z&limit=5");
    assert_string_equal(es_json_str(v, "path"), "/items/a%20b%2Fc");
    json_decref(v);
    resp_free(&r);

    url(u, sizeof u, "/items/x");
    request("GET", u, NULL, NULL, 0, false, &r);
    v = body_json(&r);
    assert_int_equal(es_json_int(v, "limit", 0), 10); /* the default */
    assert_true(json_is_null(json_object_get(v, "q")));
    assert_string_equal(es_json_str(v, "raw"), "");
    json_decref(v);
    resp_free(&r);

    const char *bad[] = {"/items/x?limit=0", "/items/x?limit=101", "/items/x?limit=abc",
                         "/items/x?limit=", "/items/x?limit=%zz"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        url(u, sizeof u, bad[i]);
        request("GET", u, NULL, NULL, 0, false, &r);
        assert_error(&r, 400, "validation_failed");
        v = body_json(&r);
        json_t *d = json_array_get(json_object_get(json_object_get(v, "error"), "details"), 0);
        assert_string_equal(es_json_str(d, "field"), "limit");
        json_decref(v);
        resp_free(&r);
    }
}

static void test_json_bodies(void **st)
{
    (void)st;
    char u[256];
    resp r;
    url(u, sizeof u, "/echo");
    const char *json[] = {"Content-Type: application/json", NULL};
    const char *vnd[] = {"Content-Type: application/vnd.esteira+json; charset=utf-8", NULL};
    const char *text[] = {"Content-Type: text/plain", NULL};

    request("POST", u, json, "{\"a\":[1,2]}", 11, false, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(es_buf_cstr(&r.body), "{\"a\":[1,2]}");
    resp_free(&r);

    request("POST", u, vnd, "[true]", 6, false, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    request("POST", u, text, "{}", 2, false, &r);
    assert_error(&r, 415, "unsupported_media_type");
    resp_free(&r);

    request("POST", u, json, "{\"a\":1,}", 8, false, &r);
    assert_error(&r, 400, "invalid_json");
    json_t *v = body_json(&r);
    assert_true(strncmp(json_string_value(json_object_get(json_object_get(v, "error"), "message")),
                        "line 1 column", 13) == 0);
    json_decref(v);
    resp_free(&r);

    /* deeper than json_max_depth (32 by default) */
    char deep[200];
    memset(deep, '[', 40);
    memset(deep + 40, ']', 40);
    request("POST", u, json, deep, 80, false, &r);
    assert_error(&r, 400, "invalid_json");
    resp_free(&r);

    request("POST", u, json, "12", 2, false, &r); /* a scalar is not a body */
    assert_error(&r, 400, "invalid_json");
    resp_free(&r);

    /* chunked, within the bound */
    request("POST", u, json, "{\"chunked\":true}", 16, true, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(es_buf_cstr(&r.body), "{\"chunked\":true}");
    resp_free(&r);
}

static void test_body_too_large(void **st)
{
    (void)st;
    char u[256];
    resp r;
    size_t n = 2u << 20;
    char *big = malloc(n);
    memset(big, ' ', n);
    big[0] = '[';
    big[n - 1] = ']';
    url(u, sizeof u, "/echo");
    const char *json[] = {"Content-Type: application/json", NULL};
    /* Content-Length beyond max_body: refused before the body is read */
    int64_t t0 = es_mono_ms();
    request("POST", u, json, big, n, false, &r);
    assert_error(&r, 413, "payload_too_large");
    assert_true(es_mono_ms() - t0 < 900); /* curl did not wait out its Expect timeout */
    resp_free(&r);
    /* chunked: refused once the bound is crossed */
    request("POST", u, json, big, n, true, &r);
    assert_error(&r, 413, "payload_too_large");
    resp_free(&r);
    /* exactly at the bound is fine */
    request("POST", u, json, big + n - (1u << 20), 1u << 20, false, &r);
    assert_int_equal(r.status, 400); /* reaches the parser (the slice is not valid JSON) */
    resp_free(&r);
    free(big);
}

static void test_streaming_upload(void **st)
{
    (void)st;
    char u[256];
    resp r;
    size_t n = 5u << 20;
    char *data = malloc(n);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        data[i] = (char)(i * 7 + (i >> 10));
        sum += (unsigned char)data[i];
    }
    url(u, sizeof u, "/upload");
    for (int chunked = 0; chunked <= 1; chunked++) {
        int freed = atomic_load(&states_freed);
        request("POST", u, NULL, data, n, chunked, &r);
        assert_int_equal(r.status, 200);
        json_t *v = body_json(&r);
        assert_int_equal(es_json_int(v, "bytes", 0), (int64_t)n);
        assert_int_equal(es_json_int(v, "sum", 0), (int64_t)sum);
        assert_true(es_json_int(v, "chunks", 0) > 10); /* pieces, never the whole body */
        assert_true(es_json_int(v, "maxChunk", 0) <= 256 * 1024);
        assert_true(json_is_true(json_object_get(v, "noBody")));
        json_decref(v);
        resp_free(&r);
        for (int i = 0; i < 100 && atomic_load(&states_freed) == freed; i++)
            es_sleep_ms(10);
        assert_int_equal(atomic_load(&states_freed), freed + 1);
    }
    /* beyond max_upload (8 MB) */
    size_t big = 9u << 20;
    char *more = calloc(1, big);
    request("POST", u, NULL, more, big, false, &r);
    assert_error(&r, 413, "payload_too_large");
    resp_free(&r);
    free(more);
    free(data);
}

static void test_streaming_early_replies(void **st)
{
    (void)st;
    char u[256];
    resp r;
    size_t n = 3u << 20;
    char *data = calloc(1, n);
    /* start() answers: the body is never read */
    url(u, sizeof u, "/reject");
    request("POST", u, NULL, data, n, false, &r);
    assert_error(&r, 422, "validation_failed");
    json_t *v = body_json(&r);
    json_t *d = json_array_get(json_object_get(json_object_get(v, "error"), "details"), 0);
    assert_string_equal(es_json_str(d, "problem"), "missing debtId");
    json_decref(v);
    resp_free(&r);
    /* chunk() answers on the first piece: the rest is dropped, the answer arrives */
    url(u, sizeof u, "/badheader");
    for (int chunked = 0; chunked <= 1; chunked++) {
        request("POST", u, NULL, data, n, chunked, &r);
        assert_error(&r, 422, "validation_failed");
        resp_free(&r);
    }
    assert_int_equal(atomic_load(&late_chunks), 0);
    free(data);
}

static void test_reply_stream(void **st)
{
    (void)st;
    char u[256], v[64];
    resp r;
    for (int known = 0; known <= 1; known++) {
        int freed = atomic_load(&stream_freed);
        url(u, sizeof u, known ? "/stream?known=1" : "/stream");
        request("GET", u, NULL, NULL, 0, false, &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body.len, 1000003);
        for (size_t i = 0; i < r.body.len; i += 997)
            assert_int_equal(r.body.data[i], 'a' + (int)(i % 26));
        assert_true(header(&r, "Content-Type", v, sizeof v));
        assert_string_equal(v, "text/plain");
        assert_true(header(&r, "X-Request-Id", v, sizeof v));
        assert_int_equal(header(&r, "Content-Length", v, sizeof v), known == 1);
        resp_free(&r);
        for (int i = 0; i < 100 && atomic_load(&stream_freed) == freed; i++)
            es_sleep_ms(10);
        assert_int_equal(atomic_load(&stream_freed), freed + 1);
    }
}

static void test_handler_mistakes(void **st)
{
    (void)st;
    char u[256], v[64];
    resp r;
    url(u, sizeof u, "/silent");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 500, "internal");
    resp_free(&r);

    url(u, sizeof u, "/twice");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_int_equal(r.status, 201);
    assert_string_equal(es_buf_cstr(&r.body), "first");
    assert_true(header(&r, "X-Extra", v, sizeof v));
    assert_int_equal(atomic_load(&twice_rc), ES_ECONFLICT);
    resp_free(&r);

    url(u, sizeof u, "/unavailable");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 503, "unavailable");
    assert_true(header(&r, "Retry-After", v, sizeof v));
    assert_string_equal(v, "1");
    resp_free(&r);
}

static void test_auth_required(void **st)
{
    (void)st;
    char u[256], v[64];
    resp r;
    url(u, sizeof u, "/private");
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_error(&r, 401, "unauthorized");
    assert_true(header(&r, "WWW-Authenticate", v, sizeof v));
    assert_string_equal(v, "Bearer");
    resp_free(&r);
    const char *basic[] = {"Authorization: Basic dXNlcjpwdw==", NULL};
    request("GET", u, basic, NULL, 0, false, &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);
}

/* Tokens against a real (embedded) store: 401, 403 and who the handler sees. */
static void test_scopes(void **st)
{
    (void)st;
    char *dir = test_tmpdir("http-auth");
    char dburl[600];
    snprintf(dburl, sizeof dburl, "sqlite:%s/esteira.db", dir);
    es_config ca;
    assert_int_equal(es_config_defaults(&ca), ES_OK);
    ca.port = 0;
    es_store *store = NULL;
    assert_int_equal(es_store_open(dburl, &ca, &store), ES_OK);
    assert_int_equal(es_store_migrate(store, NULL), ES_OK);
    char *ingest = NULL, *reports = NULL, *admin = NULL, kid[40];
    assert_int_equal(es_keys_create(store, "acme", ES_SCOPE_INGEST, "i", &ingest, kid), ES_OK);
    assert_int_equal(es_keys_create(store, "acme", ES_SCOPE_REPORTS, "r", &reports, kid), ES_OK);
    assert_int_equal(es_keys_create(store, "root", ES_SCOPE_ADMIN, "a", &admin, kid), ES_OK);

    es_app aa = {.cfg = &ca, .store = store};
    es_http *ha;
    assert_int_equal(es_http_create(&aa, routes, ES_ARRAY_LEN(routes), &ha), ES_OK);
    assert_int_equal(es_http_start(ha), ES_OK);
    char u[128], hdr[300];
    snprintf(u, sizeof u, "http://127.0.0.1:%u/whoami", es_http_port(ha));
    const char *hdrs[] = {hdr, NULL};
    resp r;

    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", ingest);
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_error(&r, 403, "forbidden"); /* neither read nor reports */
    resp_free(&r);

    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", reports); /* any one scope will do */
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    json_t *v = body_json(&r);
    assert_string_equal(es_json_str(v, "tenant"), "acme");
    assert_int_equal(es_json_int(v, "scopes", 0), ES_SCOPE_REPORTS);
    json_decref(v);
    resp_free(&r);

    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s", admin); /* admin grants all */
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);

    snprintf(hdr, sizeof hdr, "Authorization: Bearer %.*sx", (int)strlen(admin) - 1, admin);
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_error(&r, 401, "unauthorized");
    resp_free(&r);

    es_http_destroy(ha);
    free(ingest);
    free(reports);
    free(admin);
    es_store_close(store);
    es_config_finish(&ca);
    test_rmdir(dir);
}

static void test_header_limit(void **st)
{
    (void)st;
    char u[256];
    resp r;
    url(u, sizeof u, "/hello");
    /* over max_header (16 KB) but within libmicrohttpd's pool: our JSON 431 */
    size_t n = 20 * 1024;
    char *h = malloc(n + 16);
    snprintf(h, 16, "X-Big: ");
    memset(h + 7, 'x', n);
    h[7 + n] = '\0';
    const char *hdrs[] = {h, NULL};
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_error(&r, 431, "headers_too_large");
    resp_free(&r);
    free(h);
    /* far over: libmicrohttpd refuses it itself */
    n = 200 * 1024;
    h = malloc(n + 16);
    snprintf(h, 16, "X-Big: ");
    memset(h + 7, 'x', n);
    h[7 + n] = '\0';
    hdrs[0] = h;
    request("GET", u, hdrs, NULL, 0, false, &r);
    assert_true(r.status == 431 || r.status == 413);
    resp_free(&r);
    free(h);
}

static void test_trace_and_log_line(void **st)
{
    (void)st;
    char u[256];
    resp r;
    url(u, sizeof u, "/items/traced");
    const char *tp[] = {"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "X-Request-Id: trace-req-1", NULL};
    request("GET", u, tp, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    const char *badtp[] = {"traceparent: 00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                           "X-Request-Id: trace-req-2", NULL};
    request("GET", u, badtp, NULL, 0, false, &r);
    resp_free(&r);
    /* the line is written once the response is done: look for a while */
    bool seen1 = false, seen2 = false;
    for (int tries = 0; tries < 100 && !(seen1 && seen2); tries++) {
        es_sleep_ms(20);
        FILE *f = fopen(logpath, "r");
        assert_non_null(f);
        char line[4096];
        while (fgets(line, sizeof line, f)) {
            json_t *v = json_loads(line, 0, NULL);
            if (!v) continue;
            const char *rid = es_json_str(v, "requestId");
            const char *msg = es_json_str(v, "msg");
            if (rid && msg && strcmp(msg, "request") == 0) {
                if (strcmp(rid, "trace-req-1") == 0) {
                    seen1 = true;
                    assert_string_equal(es_json_str(v, "level"), "debug");
                    assert_string_equal(es_json_str(v, "traceId"),
                                        "4bf92f3577b34da6a3ce929d0e0e4736");
                    assert_string_equal(es_json_str(v, "method"), "GET");
                    assert_string_equal(es_json_str(v, "route"), "items");
                    assert_int_equal(es_json_int(v, "status", 0), 200);
                    assert_true(json_is_number(json_object_get(v, "durationMs")));
                } else if (strcmp(rid, "trace-req-2") == 0) {
                    seen2 = true;
                    assert_null(es_json_str(v, "traceId")); /* an all-zero id is invalid */
                }
            }
            json_decref(v);
        }
        fclose(f);
    }
    assert_true(seen1);
    assert_true(seen2);
}

typedef struct worker_arg {
    int n;
    int ok;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    for (int i = 0; i < 10; i++) {
        char u[256], want[64];
        snprintf(u, sizeof u, "%s/items/w%d-%d", base, a->n, i);
        resp r;
        request("GET", u, NULL, NULL, 0, false, &r);
        snprintf(want, sizeof want, "\"id\":\"w%d-%d\"", a->n, i);
        if (r.status == 200 && strstr(es_buf_cstr(&r.body), want)) a->ok++;
        resp_free(&r);
    }
    return NULL;
}

static void *slow_worker(void *p)
{
    char u[256];
    snprintf(u, sizeof u, "%s/slow?ms=%ld", base, *(long *)p);
    resp r;
    request("GET", u, NULL, NULL, 0, false, &r);
    *(long *)p = r.status;
    resp_free(&r);
    return NULL;
}

static void test_concurrent(void **st)
{
    (void)st;
    pthread_t t[8];
    worker_arg a[8];
    for (int i = 0; i < 8; i++) {
        a[i] = (worker_arg){i, 0};
        pthread_create(&t[i], NULL, worker, &a[i]);
    }
    for (int i = 0; i < 8; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 8; i++)
        assert_int_equal(a[i].ok, 10);

    /* A handler that blocks holds its own thread only: with two slow
     * requests in flight, a third request is served by a free thread. */
    long status[2] = {1000, 1000};
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, slow_worker, &status[i]);
    es_sleep_ms(100);
    char u[256];
    url(u, sizeof u, "/hello");
    int64_t t0 = es_mono_ms();
    resp r;
    request("GET", u, NULL, NULL, 0, false, &r);
    int64_t took = es_mono_ms() - t0;
    assert_int_equal(r.status, 200);
    resp_free(&r);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++)
        assert_int_equal(status[i], 200);
    assert_true(took < 800); /* well before the 1000 ms handlers end */
}

static void test_metrics_recorded(void **st)
{
    (void)st;
    char u[256];
    resp r;
    url(u, sizeof u, "/hello");
    request("GET", u, NULL, NULL, 0, false, &r);
    resp_free(&r);
    url(u, sizeof u, "/nope");
    request("GET", u, NULL, NULL, 0, false, &r);
    resp_free(&r);
    es_sleep_ms(50);
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_metrics_render(&b), ES_OK);
    const char *s = es_buf_cstr(&b);
    assert_non_null(strstr(s, "# TYPE esteira_http_requests_total counter\n"));
    assert_non_null(
        strstr(s, "esteira_http_requests_total{route=\"/hello\",method=\"GET\",status=\"200\"} "));
    assert_non_null(strstr(
        s, "esteira_http_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} "));
    assert_non_null(strstr(s, "esteira_http_request_duration_seconds_bucket{route=\"/hello\","
                              "le=\"0.0005\"} "));
    assert_non_null(
        strstr(s, "esteira_http_request_duration_seconds_bucket{route=\"/hello\",le=\"10\"} "));
    assert_non_null(strstr(s, "esteira_http_request_duration_seconds_count{route=\"items\"} "));
    es_buf_finish(&b);
}

/* Runs last: stop lets an in-flight request finish, then refuses new ones. */
static void test_graceful_stop(void **st)
{
    (void)st;
    long status = 300; /* in: how long the handler takes; out: the status */
    pthread_t t;
    pthread_create(&t, NULL, slow_worker, &status);
    es_sleep_ms(100);
    int64_t t0 = es_mono_ms();
    es_http_stop(srv);
    assert_true(es_mono_ms() - t0 < 3000);
    pthread_join(t, NULL);
    assert_int_equal(status, 200);

    CURL *c = curl_easy_init();
    char u[256];
    url(u, sizeof u, "/hello");
    curl_easy_setopt(c, CURLOPT_URL, u);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 2L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    assert_int_not_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_cleanup(c);
    es_http_stop(srv); /* twice is harmless */
}

static void test_ipv6(void **st)
{
    (void)st;
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have6 = fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
    if (fd >= 0) close(fd);
    if (!have6) skip();

    es_config c6;
    char err[256];
    assert_int_equal(es_config_defaults(&c6), ES_OK);
    assert_int_equal(es_config_set(&c6, "host", "::1", err, sizeof err), ES_OK);
    c6.port = 0;
    es_app a6 = {.cfg = &c6};
    es_http *h6;
    assert_int_equal(es_http_create(&a6, routes, ES_ARRAY_LEN(routes), &h6), ES_OK);
    assert_int_equal(es_http_start(h6), ES_OK);
    char u[128];
    snprintf(u, sizeof u, "http://[::1]:%u/hello", es_http_port(h6));
    resp r;
    request("GET", u, NULL, NULL, 0, false, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
    es_http_destroy(h6);
    es_config_finish(&c6);
}

static void test_bind_errors(void **st)
{
    (void)st;
    es_config cb;
    char err[256];
    assert_int_equal(es_config_defaults(&cb), ES_OK);
    assert_int_equal(es_config_set(&cb, "host", "no-such-host.invalid", err, sizeof err), ES_OK);
    cb.port = 0;
    es_app ab = {.cfg = &cb};
    es_http *hb;
    assert_int_equal(es_http_create(&ab, routes, ES_ARRAY_LEN(routes), &hb), ES_OK);
    assert_int_not_equal(es_http_start(hb), ES_OK);
    es_http_destroy(hb);
    es_http_destroy(NULL);
    es_config_finish(&cb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_id),
        cmocka_unit_test(test_not_found_and_method),
        cmocka_unit_test(test_params_and_query),
        cmocka_unit_test(test_json_bodies),
        cmocka_unit_test(test_body_too_large),
        cmocka_unit_test(test_streaming_upload),
        cmocka_unit_test(test_streaming_early_replies),
        cmocka_unit_test(test_reply_stream),
        cmocka_unit_test(test_handler_mistakes),
        cmocka_unit_test(test_auth_required),
        cmocka_unit_test(test_scopes),
        cmocka_unit_test(test_header_limit),
        cmocka_unit_test(test_trace_and_log_line),
        cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_metrics_recorded),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_bind_errors),
        cmocka_unit_test(test_graceful_stop),
    };
    return cmocka_run_group_tests(tests, boot, shutdown_srv);
}
