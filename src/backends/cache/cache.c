/* cache.c - the cache front: picks a backend by the scheme of the URL and
 * forwards every call to it.
 *
 * Arguments are checked here, once, so that every backend sees the same
 * well-formed calls and answers bad ones the same way (ES_EINVAL). */
#include <stdlib.h>
#include <string.h>

#include "esteira/cache.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "cache"

struct es_cache {
    const es_cache_ops *ops;
    void *ctx;
};

struct es_subscription {
    const es_cache_ops *ops;
    void *sub;
};

/* The registered backends; ops->scheme is the URL prefix that selects one
 * ("local:", "redis://"). */
static const es_cache_ops *const backends[] = {
    &es_cache_local,
    &es_cache_redis,
};

static const es_cache_ops *find_backend(const char *url)
{
    for (size_t i = 0; i < ES_ARRAY_LEN(backends); i++) {
        const char *scheme = backends[i]->scheme;
        if (strncmp(url, scheme, strlen(scheme)) == 0) return backends[i];
    }
    return NULL;
}

int es_cache_open(const char *url, const es_config *cfg, es_cache **out)
{
    if (!out) return ES_EINVAL;
    *out = NULL;
    if (!url || !*url) {
        es_error(COMP, "no cache URL given");
        return ES_EINVAL;
    }
    const es_cache_ops *ops = find_backend(url);
    if (!ops) {
        /* The URL may hold a password: name only its scheme. */
        size_t n = strcspn(url, ":");
        es_error(COMP, "no cache backend for scheme '%.*s' (known: local:, redis://)",
                 (int)(n > 32 ? 32 : n), url);
        return ES_EINVAL;
    }
    es_cache *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    c->ops = ops;
    int rc = ops->open(url, cfg, &c->ctx);
    if (rc != ES_OK) goto free_cache;
    *out = c;
    return ES_OK;

free_cache:
    free(c);
    return rc;
}

void es_cache_close(es_cache *c)
{
    if (!c) return;
    c->ops->close(c->ctx);
    free(c);
}

const char *es_cache_name(const es_cache *c)
{
    return c ? c->ops->name : NULL;
}

static bool key_ok(const char *key)
{
    return key && *key;
}

int es_cache_get(es_cache *c, const char *key, char **val, size_t *len)
{
    if (val) *val = NULL;
    if (len) *len = 0;
    if (!c || !key_ok(key) || !val) return ES_EINVAL;
    size_t ignored;
    return c->ops->get(c->ctx, key, val, len ? len : &ignored);
}

int es_cache_set(es_cache *c, const char *key, const char *val, size_t len, int64_t ttl_ms)
{
    if (!c || !key_ok(key) || (!val && len) || ttl_ms < 0) return ES_EINVAL;
    return c->ops->set(c->ctx, key, val ? val : "", len, ttl_ms);
}

int es_cache_del(es_cache *c, const char *key)
{
    if (!c || !key_ok(key)) return ES_EINVAL;
    return c->ops->del(c->ctx, key);
}

int es_cache_incr(es_cache *c, const char *key, int64_t by, int64_t ttl_ms, int64_t *out)
{
    if (!c || !key_ok(key) || ttl_ms < 0) return ES_EINVAL;
    int64_t ignored;
    return c->ops->incr(c->ctx, key, by, ttl_ms, out ? out : &ignored);
}

int es_cache_hset(es_cache *c, const char *key, const es_kv *fields, int n, int64_t ttl_ms)
{
    /* A hash with no fields does not exist (as in Redis): at least one. */
    if (!c || !key_ok(key) || !fields || n < 1 || ttl_ms < 0) return ES_EINVAL;
    for (int i = 0; i < n; i++)
        if (!fields[i].key || !fields[i].value) return ES_EINVAL;
    return c->ops->hset(c->ctx, key, fields, n, ttl_ms);
}

int es_cache_hgetall(es_cache *c, const char *key, es_kv **fields, int *n)
{
    if (fields) *fields = NULL;
    if (n) *n = 0;
    if (!c || !key_ok(key) || !fields || !n) return ES_EINVAL;
    return c->ops->hgetall(c->ctx, key, fields, n);
}

int es_cache_hincr(es_cache *c, const char *key, const char *field, int64_t by, int64_t *out)
{
    if (!c || !key_ok(key) || !field) return ES_EINVAL;
    int64_t ignored;
    return c->ops->hincr(c->ctx, key, field, by, out ? out : &ignored);
}

int es_cache_lock(es_cache *c, const char *key, const char *owner, int64_t ttl_ms)
{
    if (!c || !key_ok(key) || !owner || !*owner || ttl_ms < 0) return ES_EINVAL;
    return c->ops->lock(c->ctx, key, owner, ttl_ms);
}

int es_cache_unlock(es_cache *c, const char *key, const char *owner)
{
    if (!c || !key_ok(key) || !owner || !*owner) return ES_EINVAL;
    return c->ops->unlock(c->ctx, key, owner);
}

int es_cache_publish(es_cache *c, const char *channel, const char *msg, size_t len)
{
    if (!c || !key_ok(channel) || (!msg && len)) return ES_EINVAL;
    return c->ops->publish(c->ctx, channel, msg ? msg : "", len);
}

int es_cache_subscribe(es_cache *c, const char *channel, es_cache_msg_fn fn, void *arg,
                       es_subscription **out)
{
    if (out) *out = NULL;
    if (!c || !key_ok(channel) || !fn || !out) return ES_EINVAL;
    es_subscription *s = calloc(1, sizeof *s);
    if (!s) return ES_ENOMEM;
    s->ops = c->ops;
    int rc = c->ops->subscribe(c->ctx, channel, fn, arg, &s->sub);
    if (rc != ES_OK) goto free_sub;
    *out = s;
    return ES_OK;

free_sub:
    free(s);
    return rc;
}

void es_cache_unsubscribe(es_subscription *s)
{
    if (!s) return;
    s->ops->unsubscribe(s->sub);
    free(s);
}

int es_cache_ping(es_cache *c)
{
    if (!c) return ES_EINVAL;
    return c->ops->ping(c->ctx);
}
