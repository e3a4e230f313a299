/* blob.c - the object storage front: picks a backend by the scheme of the URL
 * and forwards every call to it.
 *
 * Keys and prefixes are checked here, once, so that every backend sees the
 * same well-formed names and answers bad ones the same way (ES_EINVAL).  The
 * backends check again: a key is a path on disk for file:, and a second look
 * costs nothing next to a system call. */
#include <stdlib.h>
#include <string.h>

#include "esteira/blob.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define COMP         "blob"
#define BLOB_KEY_MAX 512

struct es_blob {
    const es_blob_ops *ops;
    void *ctx;
};

struct es_blob_writer {
    const es_blob_ops *ops;
    void *w;
};

/* The registered backends; ops->scheme is the URL prefix that selects one
 * ("file:", later "s3://"). */
static const es_blob_ops *const backends[] = {
    &es_blob_fs,
    &es_blob_s3,
};

static const es_blob_ops *find_backend(const char *url)
{
    for (size_t i = 0; i < ES_ARRAY_LEN(backends); i++) {
        const char *scheme = backends[i]->scheme;
        if (strncmp(url, scheme, strlen(scheme)) == 0) return backends[i];
    }
    return NULL;
}

static bool key_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '/' || c == '-';
}

/* Beyond the rules of blob.h, a key may not end with '/' nor hold a "."
 * segment: "a/" names a directory on disk and "a/./b" is a second spelling of
 * "a/b", and either would let two backends disagree about what a key means. */
bool es_blob_key_valid(const char *key)
{
    if (!key || !*key || *key == '/') return false;
    size_t n = 0;
    for (const char *p = key; *p; p++, n++) {
        if (n >= BLOB_KEY_MAX || !key_char(*p)) return false;
        if (p[0] == '/' && p[1] == '/') return false;
        if (p[0] == '.' && p[1] == '.') return false;
    }
    if (key[n - 1] == '/') return false;
    for (const char *seg = key;;) {
        if (seg[0] == '.' && (seg[1] == '/' || seg[1] == '\0')) return false;
        const char *slash = strchr(seg, '/');
        if (!slash) return true;
        seg = slash + 1;
    }
}

/* A prefix is the start of a key: the same characters and rules, except that
 * it may be empty and may end anywhere, '/' included. */
static bool prefix_valid(const char *prefix)
{
    if (!prefix) return false;
    if (!*prefix) return true;
    if (*prefix == '/') return false;
    size_t n = 0;
    for (const char *p = prefix; *p; p++, n++) {
        if (n >= BLOB_KEY_MAX || !key_char(*p)) return false;
        if (p[0] == '/' && p[1] == '/') return false;
        if (p[0] == '.' && p[1] == '.') return false;
    }
    return true;
}

static int bad_key(const char *what, const char *key)
{
    es_warn(COMP, "invalid blob %s '%.80s'", what, key ? key : "(null)");
    return ES_EINVAL;
}

int es_blob_open(const char *url, const es_config *cfg, es_blob **out)
{
    if (!out) return ES_EINVAL;
    *out = NULL;
    if (!url || !*url) {
        es_error(COMP, "no blob URL given");
        return ES_EINVAL;
    }
    const es_blob_ops *ops = find_backend(url);
    if (!ops) {
        /* The URL may hold credentials: name only its scheme. */
        size_t n = strcspn(url, ":");
        es_error(COMP, "no blob backend for scheme '%.*s' (known: file:, s3://)",
                 (int)(n > 32 ? 32 : n), url);
        return ES_EINVAL;
    }
    es_blob *b = calloc(1, sizeof *b);
    if (!b) return ES_ENOMEM;
    b->ops = ops;
    int rc = ops->open(url, cfg, &b->ctx);
    if (rc != ES_OK) goto free_blob;
    *out = b;
    return ES_OK;

free_blob:
    free(b);
    return rc;
}

void es_blob_close(es_blob *b)
{
    if (!b) return;
    b->ops->close(b->ctx);
    free(b);
}

const char *es_blob_name(const es_blob *b)
{
    return b ? b->ops->name : NULL;
}

int es_blob_writer_open(es_blob *b, const char *key, const char *content_type, es_blob_writer **out)
{
    if (!out) return ES_EINVAL;
    *out = NULL;
    if (!b) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    es_blob_writer *w = calloc(1, sizeof *w);
    if (!w) return ES_ENOMEM;
    w->ops = b->ops;
    int rc = b->ops->writer_open(b->ctx, key, content_type, &w->w);
    if (rc != ES_OK) {
        free(w);
        return rc;
    }
    *out = w;
    return ES_OK;
}

int es_blob_write(es_blob_writer *w, const void *data, size_t len)
{
    if (!w || (!data && len)) return ES_EINVAL;
    if (len == 0) return ES_OK;
    return w->ops->write(w->w, data, len);
}

int es_blob_commit(es_blob_writer *w)
{
    if (!w) return ES_EINVAL;
    int rc = w->ops->commit(w->w);
    free(w);
    return rc;
}

void es_blob_abort(es_blob_writer *w)
{
    if (!w) return;
    w->ops->abort(w->w);
    free(w);
}

int es_blob_put(es_blob *b, const char *key, const char *content_type, const void *data, size_t len)
{
    es_blob_writer *w;
    int rc = es_blob_writer_open(b, key, content_type, &w);
    if (rc != ES_OK) return rc;
    rc = es_blob_write(w, data, len);
    if (rc != ES_OK) {
        es_blob_abort(w);
        return rc;
    }
    return es_blob_commit(w);
}

int es_blob_get(es_blob *b, const char *key, int64_t offset, es_blob_sink sink, void *arg)
{
    if (!b || !sink || offset < 0) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    return b->ops->get(b->ctx, key, offset, -1, sink, arg);
}

typedef struct range_sink {
    es_blob_sink sink;
    void *arg;
    int64_t left;
} range_sink;

#define RANGE_FULL 0x52414e47 /* "RANG": the range is complete (not an error) */

static int range_cut(void *arg, const void *data, size_t len)
{
    range_sink *r = arg;
    if ((uint64_t)len > (uint64_t)r->left) len = (size_t)r->left;
    int rc = len ? r->sink(r->arg, data, len) : 0;
    r->left -= (int64_t)len;
    if (rc) return rc;
    return r->left == 0 ? RANGE_FULL : 0;
}

int es_blob_get_range(es_blob *b, const char *key, int64_t offset, int64_t len, es_blob_sink sink,
                      void *arg)
{
    if (!b || !sink || offset < 0 || len < 0) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    if (len == 0) return ES_OK;
    range_sink r = {sink, arg, len};
    int rc = b->ops->get(b->ctx, key, offset, len, range_cut, &r);
    return rc == RANGE_FULL ? ES_OK : rc;
}

int es_blob_head(es_blob *b, const char *key, es_blob_info *info)
{
    if (!b || !info) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    memset(info, 0, sizeof *info);
    return b->ops->head(b->ctx, key, info);
}

int es_blob_del(es_blob *b, const char *key)
{
    if (!b) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    return b->ops->del(b->ctx, key);
}

int es_blob_list(es_blob *b, const char *prefix, es_blob_each each, void *arg)
{
    if (!b || !each) return ES_EINVAL;
    if (!prefix) prefix = "";
    if (!prefix_valid(prefix)) return bad_key("prefix", prefix);
    return b->ops->list(b->ctx, prefix, each, arg);
}

int es_blob_presign(es_blob *b, const char *method, const char *key, const char *content_type,
                    int64_t expires_s, char **url)
{
    if (!url) return ES_EINVAL;
    *url = NULL;
    if (!b || !method || expires_s <= 0) return ES_EINVAL;
    if (!es_blob_key_valid(key)) return bad_key("key", key);
    return b->ops->presign(b->ctx, method, key, content_type, expires_s, url);
}

int es_blob_ping(es_blob *b)
{
    if (!b) return ES_EINVAL;
    return b->ops->ping(b->ctx);
}
