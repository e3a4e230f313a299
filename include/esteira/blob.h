/* blob.h - the object storage contract (file:, s3://).
 *
 * Keys are relative paths of [A-Za-z0-9._/-] without "..", "//" or a leading
 * '/', at most 512 bytes (es_blob_key_valid); nor a trailing '/' or a "."
 * segment, which would name a directory or a second spelling of a key.
 * Objects are written by streaming into a writer and appear whole, atomically,
 * on commit.  Reads stream into a sink callback.
 *
 * Signed URLs let a client PUT or GET one object without a token: bound to the
 * method, the key, the content type (for PUT) and an expiry.  S3 signs them
 * with SigV4; the file backend points them at esteira's own /v1/blobs/ route
 * and signs them with es_sign (sign.h). */
#ifndef ESTEIRA_BLOB_H
#define ESTEIRA_BLOB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/conf.h"

typedef struct es_blob es_blob;
typedef struct es_blob_writer es_blob_writer;

typedef struct es_blob_info {
    int64_t size;
    int64_t mtime_ms;
    char content_type[128];
    char etag[80];
} es_blob_info;

/* Receives the object in chunks; a non-zero return stops the read and is returned. */
typedef int (*es_blob_sink)(void *arg, const void *data, size_t len);
/* Called per key under a prefix, in lexical order; a non-zero return stops the
 * listing and is returned.  info->content_type may be empty (use head). */
typedef int (*es_blob_each)(void *arg, const char *key, const es_blob_info *info);

typedef struct es_blob_ops {
    const char *name;
    const char *scheme;
    int (*open)(const char *url, const es_config *cfg, void **ctx);
    void (*close)(void *ctx);
    int (*writer_open)(void *ctx, const char *key, const char *content_type, void **w);
    int (*write)(void *w, const void *data, size_t len);
    int (*commit)(void *w); /* makes the object visible; frees w */
    void (*abort)(void *w); /* discards; frees w */
    /* len < 0: to the end; else at most len bytes (a hint: the sink is cut
     * at len by es_blob_get_range whatever the backend sends) */
    int (*get)(void *ctx, const char *key, int64_t offset, int64_t len, es_blob_sink sink,
               void *arg);
    int (*head)(void *ctx, const char *key, es_blob_info *info);
    int (*del)(void *ctx, const char *key); /* ES_OK also when it did not exist */
    int (*list)(void *ctx, const char *prefix, es_blob_each each, void *arg);
    /* *url is malloc'd.  content_type binds PUTs (may be NULL for GET). */
    int (*presign)(void *ctx, const char *method, const char *key, const char *content_type,
                   int64_t expires_s, char **url);
    int (*ping)(void *ctx);
} es_blob_ops;

extern const es_blob_ops es_blob_fs;
extern const es_blob_ops es_blob_s3;

bool es_blob_key_valid(const char *key);

int es_blob_open(const char *url, const es_config *cfg, es_blob **out);
void es_blob_close(es_blob *b);
const char *es_blob_name(const es_blob *b);
int es_blob_writer_open(es_blob *b, const char *key, const char *content_type,
                        es_blob_writer **out);
int es_blob_write(es_blob_writer *w, const void *data, size_t len);
int es_blob_commit(es_blob_writer *w);
void es_blob_abort(es_blob_writer *w); /* NULL is a no-op */
int es_blob_put(es_blob *b, const char *key, const char *content_type, const void *data,
                size_t len); /* writer_open + write + commit */
int es_blob_get(es_blob *b, const char *key, int64_t offset, es_blob_sink sink, void *arg);
/* Bytes [offset, offset + len) (fewer when the object ends first). */
int es_blob_get_range(es_blob *b, const char *key, int64_t offset, int64_t len, es_blob_sink sink,
                      void *arg);
int es_blob_head(es_blob *b, const char *key, es_blob_info *info);
int es_blob_del(es_blob *b, const char *key);
int es_blob_list(es_blob *b, const char *prefix, es_blob_each each, void *arg);
int es_blob_presign(es_blob *b, const char *method, const char *key, const char *content_type,
                    int64_t expires_s, char **url);
int es_blob_ping(es_blob *b);

#endif
