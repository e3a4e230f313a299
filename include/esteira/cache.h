/* cache.h - the cache contract (local:, redis://): values with a TTL, atomic
 * counters, hashes (job and upload status), locks with owner tokens, and
 * publish/subscribe for notifications.
 *
 * A TTL of 0 means "no expiry".  Every call is thread-safe.  Subscription
 * callbacks run on a thread of the backend: keep them short. */
#ifndef ESTEIRA_CACHE_H
#define ESTEIRA_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/conf.h"
#include "esteira/util.h"

typedef struct es_cache es_cache;
typedef struct es_subscription es_subscription;

typedef void (*es_cache_msg_fn)(void *arg, const char *channel, const char *msg, size_t len);

typedef struct es_cache_ops {
    const char *name;
    const char *scheme;
    int (*open)(const char *url, const es_config *cfg, void **ctx);
    void (*close)(void *ctx);
    /* *val is malloc'd and NUL-terminated; ES_ENOTFOUND when absent or expired */
    int (*get)(void *ctx, const char *key, char **val, size_t *len);
    int (*set)(void *ctx, const char *key, const char *val, size_t len, int64_t ttl_ms);
    int (*del)(void *ctx, const char *key);
    /* creates the counter at 0; the TTL is set only when the key is created */
    int (*incr)(void *ctx, const char *key, int64_t by, int64_t ttl_ms, int64_t *out);
    /* sets fields of a hash; the hash's TTL is (re)set when ttl_ms > 0 */
    int (*hset)(void *ctx, const char *key, const es_kv *fields, int n, int64_t ttl_ms);
    /* *fields malloc'd (es_kv_free); ES_ENOTFOUND when the hash is absent */
    int (*hgetall)(void *ctx, const char *key, es_kv **fields, int *n);
    int (*hincr)(void *ctx, const char *key, const char *field, int64_t by, int64_t *out);
    /* ES_ECONFLICT when held by another owner; re-locking by the same owner extends */
    int (*lock)(void *ctx, const char *key, const char *owner, int64_t ttl_ms);
    /* ES_ECONFLICT when not held by this owner (expired, or taken over) */
    int (*unlock)(void *ctx, const char *key, const char *owner);
    int (*publish)(void *ctx, const char *channel, const char *msg, size_t len);
    /* channel may end in '*' to match a prefix */
    int (*subscribe)(void *ctx, const char *channel, es_cache_msg_fn fn, void *arg, void **sub);
    void (*unsubscribe)(void *sub);
    int (*ping)(void *ctx);
} es_cache_ops;

extern const es_cache_ops es_cache_local;
extern const es_cache_ops es_cache_redis;

int es_cache_open(const char *url, const es_config *cfg, es_cache **out);
void es_cache_close(es_cache *c);
const char *es_cache_name(const es_cache *c);
int es_cache_get(es_cache *c, const char *key, char **val, size_t *len);
int es_cache_set(es_cache *c, const char *key, const char *val, size_t len, int64_t ttl_ms);
int es_cache_del(es_cache *c, const char *key);
int es_cache_incr(es_cache *c, const char *key, int64_t by, int64_t ttl_ms, int64_t *out);
int es_cache_hset(es_cache *c, const char *key, const es_kv *fields, int n, int64_t ttl_ms);
int es_cache_hgetall(es_cache *c, const char *key, es_kv **fields, int *n);
int es_cache_hincr(es_cache *c, const char *key, const char *field, int64_t by, int64_t *out);
int es_cache_lock(es_cache *c, const char *key, const char *owner, int64_t ttl_ms);
int es_cache_unlock(es_cache *c, const char *key, const char *owner);
int es_cache_publish(es_cache *c, const char *channel, const char *msg, size_t len);
int es_cache_subscribe(es_cache *c, const char *channel, es_cache_msg_fn fn, void *arg,
                       es_subscription **out);
void es_cache_unsubscribe(es_subscription *s); /* NULL is a no-op; no callback runs after it */
int es_cache_ping(es_cache *c);

#endif
