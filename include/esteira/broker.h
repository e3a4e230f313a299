/* broker.h - the message broker contract (local:, amqp://).
 *
 * Queues are named by esteira ("jobs.noop", "events").  Each queue Q has a
 * dead-letter queue "Q.dead".  Messages are durable once publish() returns
 * ES_OK (confirmed by RabbitMQ, or committed to the local queue).
 *
 * Delivery is at least once: a message is delivered to one consumer at a time
 * and delivered again if that consumer dies (or its connection drops) before
 * ack.  retry() hands it back to be delivered after a delay with attempts + 1;
 * dead() moves it to Q.dead.  The attempt count and headers travel with the
 * message.
 *
 * publish is thread-safe.  A consumer belongs to the thread that opened it. */
#ifndef ESTEIRA_BROKER_H
#define ESTEIRA_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/conf.h"
#include "esteira/util.h"

/* dead() adds the reason to the message's headers under this key. */
#define ES_BROKER_DEAD_REASON_HEADER "x-dead-reason"

typedef struct es_broker es_broker;
typedef struct es_consumer es_consumer;

typedef struct es_msg {
    const char *queue;
    const void *body;
    size_t len;
    const es_kv *headers; /* small string headers (jobId, traceparent, …) */
    int nheaders;
    int attempts;     /* attempts already made; 0 for a new message */
    int64_t delay_ms; /* deliver no sooner than this from now */
} es_msg;

typedef struct es_delivery {
    char *queue;
    char *body; /* NUL-terminated for convenience; len excludes it */
    size_t len;
    es_kv *headers;
    int nheaders;
    int attempts;
    bool redelivered;     /* a previous delivery of it was not acknowledged */
    int64_t published_ms; /* when first published (wall clock) */
    uint64_t tag;         /* the backend's handle for ack/retry/dead */
} es_delivery;

typedef struct es_broker_ops {
    const char *name;
    const char *scheme;
    int (*open)(const char *url, const es_config *cfg, void **ctx);
    void (*close)(void *ctx);
    int (*declare)(void *ctx, const char *queue); /* Q and Q.dead; idempotent */
    /* All n or an error; on error none or some may have been stored - the
     * caller treats the whole call as not accepted. */
    int (*publish)(void *ctx, const es_msg *msgs, size_t n);
    int (*consumer_open)(void *ctx, const char *queue, int prefetch, void **consumer);
    /* ES_ETIMEDOUT when nothing arrived within timeout_ms. */
    int (*next)(void *consumer, int timeout_ms, es_delivery *out);
    int (*ack)(void *consumer, const es_delivery *d);
    /* optional: n deliveries at once (NULL = ack one by one) */
    int (*ack_many)(void *consumer, const es_delivery *ds, size_t n);
    int (*retry)(void *consumer, const es_delivery *d, int64_t delay_ms);
    int (*dead)(void *consumer, const es_delivery *d, const char *reason);
    void (*consumer_close)(void *consumer);
    /* ready = deliverable now or later; unacked = delivered, not yet acked */
    int (*depth)(void *ctx, const char *queue, int64_t *ready, int64_t *unacked);
    int (*purge)(void *ctx, const char *queue);
    int (*ping)(void *ctx);
} es_broker_ops;

extern const es_broker_ops es_broker_local;
extern const es_broker_ops es_broker_amqp;

int es_broker_open(const char *url, const es_config *cfg, es_broker **out);
void es_broker_close(es_broker *b);
const char *es_broker_name(const es_broker *b);
int es_broker_declare(es_broker *b, const char *queue);
int es_broker_publish(es_broker *b, const es_msg *msgs, size_t n);
int es_broker_depth(es_broker *b, const char *queue, int64_t *ready, int64_t *unacked);
int es_broker_purge(es_broker *b, const char *queue);
int es_broker_ping(es_broker *b);

int es_consumer_open(es_broker *b, const char *queue, int prefetch, es_consumer **out);
void es_consumer_close(es_consumer *c);
int es_consumer_next(es_consumer *c, int timeout_ms, es_delivery *out);
int es_consumer_ack(es_consumer *c, const es_delivery *d);
/* Acks n deliveries (one transaction on the local queue).  On an error some
 * may have been acked: the others are delivered again. */
int es_consumer_ack_many(es_consumer *c, const es_delivery *ds, size_t n);
int es_consumer_retry(es_consumer *c, const es_delivery *d, int64_t delay_ms);
int es_consumer_dead(es_consumer *c, const es_delivery *d, const char *reason);

void es_delivery_finish(es_delivery *d); /* frees the fields, zeroes d */
const char *es_delivery_header(const es_delivery *d, const char *key);

#endif
