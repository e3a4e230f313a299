/* events.h - event ingestion (SPEC.md "Events"): user-interaction events in
 * over HTTP, durable before the answer, stored in batches by the workers.
 *
 *   API:    POST /v1/events, /v1/events/batch
 *             validate -> one row per event (COPY text, the columns below)
 *             es_events_submit: the rows of every request accepted meanwhile
 *             form ONE broker message on queue "events" (group commit); each
 *             request is answered 202 once the broker has confirmed that
 *             message (RabbitMQ publisher confirm, or the local queue's
 *             commit), 503 + Retry-After when it cannot be
 *   worker: flushers consume "events" and buffer deliveries; at
 *             ESTEIRA_EVENTS_BATCH_MAX events, or once the oldest is
 *             ESTEIRA_EVENTS_FLUSH_MS old, ONE transaction bulk-loads them
 *             into user_interactions (rows whose id is stored already are
 *             left out: redelivery stores nothing twice) and adds up the
 *             flush in event_flushes; only then are the deliveries acked.
 *
 * A flush that fails because the store is unreachable is held and tried
 * again (backing off) until the store answers: nothing is lost and no
 * attempt is spent on an outage.  A flush that fails otherwise is done again
 * row by row: the good events are stored, and only the failing ones go back
 * to the broker with attempts + 1 and a backoff delay; after the last
 * attempt they become a dead job of kind "events" (GET /v1/dlq), whose
 * re-drive stores them. */
#ifndef ESTEIRA_EVENTS_H
#define ESTEIRA_EVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/conf.h"
#include "esteira/store.h"
#include "esteira/util.h"

struct es_app;

#define ES_EVENTS_QUEUE "events"
#define ES_EVENTS_KIND  "events" /* the job kind of dead-lettered events */
#define ES_EVENTS_TABLE "user_interactions"
/* The columns of a row, in order (PostgreSQL COPY text format). */
#define ES_EVENT_NCOLS 8
extern const char *const es_event_cols[ES_EVENT_NCOLS];
extern const es_copy_type es_event_types[ES_EVENT_NCOLS]; /* their types, for a bulk load */

/* ---- validation (pure; fuzzed) */
typedef struct es_event_rules {
    const char *const *types; /* accepted eventType values */
    size_t ntypes;
    size_t data_max;  /* bytes of eventData as compact JSON */
    size_t field_max; /* characters of userId / sessionId */
} es_event_rules;

/* Checks one event (a JSON value from a client) and, when it is valid,
 * appends its row to row and its id to id_out (the eventId it carried, or a
 * new UUIDv7).  Otherwise appends {field, problem} for every problem to errs
 * (fields by name, e.g. "userId"; errs may be NULL) and returns ES_EINVAL; row is
 * left as it was.  *type_out = the index of its type in rules->types. */
int es_event_check(const es_event_rules *rules, const json_t *ev, const char *tenant,
                   int64_t now_ms, es_buf *row, char id_out[ES_UUID_LEN + 1], size_t *type_out,
                   json_t *errs);

/* ---- the subsystem */
typedef struct es_events es_events;

int es_events_create(struct es_app *app, es_events **out);
/* API role: the publishers; worker role: the flushers (ESTEIRA_EVENTS_FLUSHERS). */
int es_events_start(es_events *ev);
/* Flushers store what they hold (or hand it back); publishers send what was
 * accepted and answer it.  The HTTP server must be stopped first. */
void es_events_stop(es_events *ev);
void es_events_destroy(es_events *ev);
const es_event_rules *es_events_rules(const es_events *ev);

/* Hands rows (n events, each a complete row) to the publishers: done(arg,
 * err) is called exactly once, from a publisher thread, when the broker has
 * them (ES_OK) or could not take them.  ES_EAGAIN at once, with done not
 * called, when ESTEIRA_EVENTS_PENDING_MAX bytes already wait or the
 * subsystem is stopping. */
typedef void (*es_events_done_fn)(void *arg, int err);
int es_events_submit(es_events *ev, const char *rows, size_t len, size_t n, es_events_done_fn done,
                     void *arg);
/* Counts n accepted events of a type (an index into the rules' types; metrics). */
void es_events_count_accepted(es_events *ev, size_t type, size_t n);

/* ---- reading */
typedef struct es_event_query {
    const char *tenant;
    const char *user_id;    /* NULL = any */
    const char *event_type; /* NULL = any */
    int64_t from_ms, to_ms; /* occurredAt in [from, to); INT64_MIN / INT64_MAX = open */
    const char *cursor;     /* opaque, from a previous page */
    int limit;
} es_event_query;
/* Newest first.  *items = JSON array of events; *next = cursor or NULL (malloc'd).
 * ES_EINVAL for a bad cursor. */
int es_events_query(es_events *ev, const es_event_query *q, json_t **items, char **next);
/* {total, byType:{…}, batches:{flushes, events, inserted, avgSize, lastAt},
 *  flushLag:{avgMs, maxMs, lastHourAvgMs, lastHourMaxMs}, pending} */
int es_events_stats(es_events *ev, const char *tenant, json_t **out);

#endif
