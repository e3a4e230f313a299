/* fuzz_router.c - es_route_find and es_query_get on arbitrary bytes.
 *
 * Input: "METHOD PATH[?QUERY]" (no space: the whole input is the path of a
 * GET).  Besides not crashing, these properties are checked:
 *   - the answer is OK, ENOTFOUND or EINVAL, with route set exactly on OK and
 *     method_mismatch only on ENOTFOUND;
 *   - a matched route's method is the request's (or GET for HEAD), its
 *     parameter names come from its pattern and their values are
 *     NUL-terminated inside their slot;
 *   - no accepted path has a "." or ".." segment, raw or decoded;
 *   - es_query_get answers OK, ENOTFOUND, ELIMIT or EINVAL, and on OK writes a
 *     NUL-terminated value that fits. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int h(es_req *r)
{
    (void)r;
    return 0;
}

static const es_route routes[] = {
    {.method = "GET", .pattern = "/healthz", .scope = ES_SCOPE_PUBLIC, .handle = h},
    {.method = "GET", .pattern = "/v1/jobs", .scope = ES_SCOPE_READ, .handle = h},
    {.method = "GET", .pattern = "/v1/jobs/{id}", .scope = ES_SCOPE_READ, .handle = h},
    {.method = "POST", .pattern = "/v1/jobs/{id}/retry", .scope = ES_SCOPE_ADMIN, .handle = h},
    {.method = "POST", .pattern = "/v1/uploads/presign", .scope = ES_SCOPE_INGEST, .handle = h},
    {.method = "GET", .pattern = "/v1/uploads/{id}", .scope = ES_SCOPE_READ, .handle = h},
    {.method = "GET",
     .pattern = "/v1/datasets/{name}/rows/{key}",
     .scope = ES_SCOPE_READ,
     .handle = h},
    {.method = "GET", .pattern = "/a/{b}/{c}/{d}/{e}", .scope = ES_SCOPE_READ, .handle = h},
    {.method = "PUT", .pattern = "/blobs/{rest*}", .scope = ES_SCOPE_PUBLIC, .handle = h},
    {.method = "GET", .pattern = "/files/{id}/raw/{rest*}", .scope = ES_SCOPE_PUBLIC, .handle = h},
    {.method = "DELETE", .pattern = "/v1/dlq/{id}", .scope = ES_SCOPE_ADMIN, .handle = h},
};

static int hexv(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* An independent check: decode the whole path and look for a dot segment. */
static bool has_dot_segment(const char *path)
{
    size_t n = strlen(path);
    char *d = malloc(n + 1);
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '%' && i + 2 < n && hexv(path[i + 1]) >= 0 && hexv(path[i + 2]) >= 0) {
            d[o++] = (char)(hexv(path[i + 1]) << 4 | hexv(path[i + 2]));
            i += 2;
        } else {
            d[o++] = path[i];
        }
    }
    d[o] = '\0';
    bool found = false;
    for (const char *s = d; *s;) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) found = true;
        if (!e) break;
        s = e + 1;
    }
    free(d);
    return found;
}

static void check_match(const es_route_match *m, const char *method, const char *path)
{
    const es_route *rt = m->route;
    if (!rt || m->method_mismatch) abort();
    if (strcmp(rt->method, method) != 0 &&
        !(strcmp(method, "HEAD") == 0 && strcmp(rt->method, "GET") == 0))
        abort();
    if (m->nparams < 0 || m->nparams > ES_ROUTE_MAX_PARAMS) abort();
    for (int i = 0; i < m->nparams; i++) {
        const char *name = m->params[i].name;
        if (name < rt->pattern || name + m->params[i].name_len > rt->pattern + strlen(rt->pattern))
            abort();
        if (memchr(m->params[i].value, '\0', sizeof m->params[i].value) == NULL) abort();
    }
    if (has_dot_segment(path)) abort();
}

static void check_query(const char *query, const char *name, size_t outlen)
{
    char out[64];
    memset(out, 'Z', sizeof out);
    int rc = es_query_get(query, name, out, outlen);
    if (rc == ES_OK) {
        if (memchr(out, '\0', outlen) == NULL) abort();
    } else if (rc != ES_ENOTFOUND && rc != ES_ELIMIT && rc != ES_EINVAL) {
        abort();
    }
    for (size_t i = outlen; i < sizeof out; i++)
        if (out[i] != 'Z') abort(); /* nothing written past outlen */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = malloc(size + 1);
    if (!in) return 0;
    memcpy(in, data, size);
    in[size] = '\0';

    const char *method = "GET";
    char *path = in;
    char *sp = strchr(in, ' ');
    if (sp) {
        *sp = '\0';
        method = in;
        path = sp + 1;
    }
    const char *query = "";
    char *q = strchr(path, '?');
    if (q) {
        *q = '\0';
        query = q + 1;
    }

    es_route_match m;
    int rc = es_route_find(routes, sizeof routes / sizeof routes[0], method, path, &m);
    if (rc == ES_OK)
        check_match(&m, method, path);
    else if (rc == ES_ENOTFOUND || rc == ES_EINVAL) {
        if (m.route || (rc == ES_EINVAL && m.method_mismatch)) abort();
    } else {
        abort();
    }

    static const char *names[] = {"limit", "dataset", "a b", "q", "x&y"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        check_query(query, names[i], 64);
        check_query(query, names[i], 4);
        check_query(query, names[i], 1);
    }
    free(in);
    return 0;
}
