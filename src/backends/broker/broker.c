/* broker.c - the broker backends, chosen by the scheme of ESTEIRA_BROKER_URL,
 * and the thin wrappers everyone else calls.
 *
 * The wrappers validate what every backend would otherwise check again
 * (queue names, message shape, prefetch) so a backend sees only sane input. */
#include <stdlib.h>
#include <string.h>

#include "esteira/broker.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "broker"

/* Longest queue name accepted: AMQP allows 255 bytes, and ".dead" is added. */
#define QUEUE_NAME_MAX 200

struct es_broker {
    const es_broker_ops *ops;
    void *ctx;
};

struct es_consumer {
    const es_broker_ops *ops;
    void *ctx;
};

static const es_broker_ops *const backends[] = {
    &es_broker_local,
    &es_broker_amqp,
};

static const es_broker_ops *find_backend(const char *url)
{
    const char *colon = strchr(url, ':');
    if (!colon) return NULL;
    size_t n = (size_t)(colon - url);
    for (size_t i = 0; i < ES_ARRAY_LEN(backends); i++)
        if (strlen(backends[i]->scheme) == n && strncmp(backends[i]->scheme, url, n) == 0)
            return backends[i];
    return NULL;
}

/* Names travel into SQL, AMQP frames and log lines: keep them plain. */
static bool queue_name_valid(const char *q)
{
    if (!q || !*q) return false;
    size_t n = 0;
    for (const char *p = q; *p; p++, n++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-' || c == ':';
        if (!ok || n >= QUEUE_NAME_MAX) return false;
    }
    return true;
}

int es_broker_open(const char *url, const es_config *cfg, es_broker **out)
{
    if (!url || !out) return ES_EINVAL;
    *out = NULL;
    const es_broker_ops *ops = find_backend(url);
    if (!ops) {
        /* Only the scheme is logged: the rest may hold credentials. */
        const char *colon = strchr(url, ':');
        es_error(COMP, "unknown broker URL scheme \"%.*s\" (expected local: or amqp://)",
                 colon ? (int)(colon - url) : 0, url);
        return ES_EINVAL;
    }
    es_broker *b = calloc(1, sizeof *b);
    if (!b) return ES_ENOMEM;
    b->ops = ops;
    int rc = ops->open(url, cfg, &b->ctx);
    if (rc != ES_OK) {
        free(b);
        return rc;
    }
    *out = b;
    return ES_OK;
}

void es_broker_close(es_broker *b)
{
    if (!b) return;
    b->ops->close(b->ctx);
    free(b);
}

const char *es_broker_name(const es_broker *b)
{
    return b ? b->ops->name : "none";
}

int es_broker_declare(es_broker *b, const char *queue)
{
    if (!b || !queue_name_valid(queue)) return ES_EINVAL;
    return b->ops->declare(b->ctx, queue);
}

int es_broker_publish(es_broker *b, const es_msg *msgs, size_t n)
{
    if (!b || (n > 0 && !msgs)) return ES_EINVAL;
    for (size_t i = 0; i < n; i++) {
        const es_msg *m = &msgs[i];
        if (!queue_name_valid(m->queue) || (!m->body && m->len > 0) || m->nheaders < 0 ||
            (m->nheaders > 0 && !m->headers) || m->attempts < 0 || m->delay_ms < 0)
            return ES_EINVAL;
        for (int h = 0; h < m->nheaders; h++)
            if (!m->headers[h].key || !*m->headers[h].key || !m->headers[h].value) return ES_EINVAL;
    }
    if (n == 0) return ES_OK;
    return b->ops->publish(b->ctx, msgs, n);
}

int es_broker_depth(es_broker *b, const char *queue, int64_t *ready, int64_t *unacked)
{
    int64_t r = 0, u = 0;
    if (!b || !queue_name_valid(queue)) return ES_EINVAL;
    int rc = b->ops->depth(b->ctx, queue, &r, &u);
    if (ready) *ready = r;
    if (unacked) *unacked = u;
    return rc;
}

int es_broker_purge(es_broker *b, const char *queue)
{
    if (!b || !queue_name_valid(queue)) return ES_EINVAL;
    return b->ops->purge(b->ctx, queue);
}

int es_broker_ping(es_broker *b)
{
    if (!b) return ES_EINVAL;
    return b->ops->ping(b->ctx);
}

int es_consumer_open(es_broker *b, const char *queue, int prefetch, es_consumer **out)
{
    if (!out) return ES_EINVAL;
    *out = NULL;
    /* AMQP reads prefetch 0 as "unlimited"; nothing in esteira wants that. */
    if (!b || !queue_name_valid(queue) || prefetch < 1) return ES_EINVAL;
    es_consumer *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    c->ops = b->ops;
    int rc = b->ops->consumer_open(b->ctx, queue, prefetch, &c->ctx);
    if (rc != ES_OK) {
        free(c);
        return rc;
    }
    *out = c;
    return ES_OK;
}

void es_consumer_close(es_consumer *c)
{
    if (!c) return;
    c->ops->consumer_close(c->ctx);
    free(c);
}

int es_consumer_next(es_consumer *c, int timeout_ms, es_delivery *out)
{
    if (!c || !out) return ES_EINVAL;
    memset(out, 0, sizeof *out);
    return c->ops->next(c->ctx, timeout_ms, out);
}

int es_consumer_ack(es_consumer *c, const es_delivery *d)
{
    if (!c || !d) return ES_EINVAL;
    return c->ops->ack(c->ctx, d);
}

int es_consumer_ack_many(es_consumer *c, const es_delivery *ds, size_t n)
{
    if (!c || (!ds && n)) return ES_EINVAL;
    if (c->ops->ack_many) return c->ops->ack_many(c->ctx, ds, n);
    int rc = ES_OK;
    for (size_t i = 0; i < n; i++) {
        int r = c->ops->ack(c->ctx, &ds[i]);
        if (r && !rc) rc = r;
    }
    return rc;
}

int es_consumer_retry(es_consumer *c, const es_delivery *d, int64_t delay_ms)
{
    if (!c || !d || delay_ms < 0) return ES_EINVAL;
    return c->ops->retry(c->ctx, d, delay_ms);
}

int es_consumer_dead(es_consumer *c, const es_delivery *d, const char *reason)
{
    if (!c || !d) return ES_EINVAL;
    return c->ops->dead(c->ctx, d, reason ? reason : "");
}

void es_delivery_finish(es_delivery *d)
{
    if (!d) return;
    free(d->queue);
    free(d->body);
    if (d->headers) es_kv_free(d->headers, d->nheaders);
    memset(d, 0, sizeof *d);
}

const char *es_delivery_header(const es_delivery *d, const char *key)
{
    if (!d || !key) return NULL;
    return es_kv_get(d->headers, d->nheaders, key);
}
