/* job.h - the job engine: every unit of asynchronous work is a job.
 *
 *   queued -> processing -> done
 *                        -> error -> (backoff) -> processing -> … -> dead
 *   queued | error -> canceled            dead -> queued (re-driven)
 *
 * The store holds each job (the truth); the broker carries a message per
 * pending attempt on queue "jobs.<kind>".  A worker claims a job in the store
 * before running it, so a message delivered twice runs the job once; a job is
 * `done` only in the same transaction as its handler's store effects (when the
 * handler uses es_job_ctx_conn).  A failed attempt goes back to the broker with
 * a delay (exponential backoff with full jitter, per kind base and cap); after
 * max attempts the message goes to the dead-letter queue and the job is `dead`.
 * Every transition is appended to the job's history. */
#ifndef ESTEIRA_JOB_H
#define ESTEIRA_JOB_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "esteira/broker.h"
#include "esteira/cache.h"
#include "esteira/conf.h"
#include "esteira/store.h"
#include "esteira/util.h"

typedef enum es_job_status {
    ES_JOB_QUEUED,
    ES_JOB_PROCESSING,
    ES_JOB_DONE,
    ES_JOB_ERROR,
    ES_JOB_DEAD,
    ES_JOB_CANCELED,
} es_job_status;

const char *es_job_status_name(es_job_status s);
int es_job_status_parse(const char *s); /* -1 when unknown */

#define ES_KIND_MAX   32
#define ES_TENANT_MAX 64

typedef struct es_job {
    char id[ES_UUID_LEN + 1];
    char kind[ES_KIND_MAX + 1];
    char tenant[ES_TENANT_MAX + 1];
    es_job_status status;
    int attempts, max_attempts;
    char *payload; /* JSON text, owned */
    char *result;  /* JSON text or NULL, owned */
    char *error_type;
    char *error_message;
    int64_t created_ms, updated_ms, run_after_ms;
    char *idempotency_key;
    char *trace_id;
} es_job;

void es_job_finish(es_job *j); /* frees the owned strings */
/* The API's view of a job (SPEC.md: id, kind, status, attempts, maxAttempts, …) */
json_t *es_job_json(const es_job *j);

typedef struct es_engine es_engine;
typedef struct es_job_ctx es_job_ctx;

/* A handler runs one attempt.  ES_OK = done.  Anything else = this attempt
 * failed: retried unless es_job_fail(ctx, true, …) marked it permanent. */
typedef int (*es_job_fn)(es_job_ctx *ctx, void *arg);

typedef struct es_job_kind {
    const char *name; /* [a-z_][a-z0-9_]* */
    es_job_fn run;
    void *arg;
    int concurrency;         /* 0 = ESTEIRA_WORKERS */
    int max_attempts;        /* 0 = ESTEIRA_JOB_MAX_ATTEMPTS */
    int64_t backoff_base_ms; /* 0 = ESTEIRA_JOB_BACKOFF_BASE */
    int64_t backoff_cap_ms;  /* 0 = ESTEIRA_JOB_BACKOFF_CAP */
    /* optional: runs inside the transaction that records the job `dead`
     * (its writes commit with it; an error rolls the outcome back) */
    int (*on_dead)(es_job_ctx *ctx, es_store_conn *c, void *arg);
    /* optional: runs after `done` was committed (notifications) */
    void (*after_done)(es_job_ctx *ctx, void *arg);
} es_job_kind;

/* ---- inside a handler */
const es_job *es_job_ctx_job(es_job_ctx *ctx);
es_engine *es_job_ctx_engine(es_job_ctx *ctx);
/* A store connection inside the transaction that will mark the job done:
 * effects written through it commit atomically with `done` (exactly-once). */
int es_job_ctx_conn(es_job_ctx *ctx, es_store_conn **conn);
/* Records the error type/message of this attempt; permanent = no retry. */
void es_job_fail(es_job_ctx *ctx, bool permanent, const char *error_type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Sets the job's result (JSON text, copied). */
int es_job_set_result(es_job_ctx *ctx, const char *json);
const char *es_job_ctx_result(es_job_ctx *ctx); /* NULL when none was set */
/* True when the engine is stopping: long handlers should return ES_ECANCELED. */
bool es_job_ctx_stopping(es_job_ctx *ctx);

/* ---- the engine */
int es_engine_create(const es_config *cfg, es_store *store, es_broker *broker, es_cache *cache,
                     es_engine **out);
void es_engine_destroy(es_engine *e); /* stops the workers first */
/* Registers a kind (copies it).  Per-kind settings in ESTEIRA_JOB_KINDS apply. */
int es_engine_register(es_engine *e, const es_job_kind *kind);
/* Starts the worker threads (concurrency per kind) and the republisher of
 * jobs whose message was never sent (crash between insert and publish). */
int es_engine_start(es_engine *e);
/* Only the republisher (API-only processes, which enqueue but do not run jobs). */
int es_engine_start_republisher(es_engine *e);
/* Stops taking work, waits up to timeout_ms for in-flight attempts; what is
 * still running then is given back to the broker (delivered again later). */
void es_engine_stop(es_engine *e, int64_t timeout_ms);
/* Registered kinds, for metrics and validation. */
int es_engine_kinds(es_engine *e, const char ***names);

typedef struct es_job_req {
    const char *kind;
    const char *tenant;
    const char *payload;         /* JSON text; NULL = {} */
    const char *idempotency_key; /* optional: same key (per tenant) = same job */
    const char *trace_id;        /* optional W3C trace id */
    int max_attempts;            /* 0 = the kind's */
    int64_t delay_ms;
} es_job_req;

/* Creates and enqueues a job.  *existed = true when the idempotency key already
 * named a job (then *out is that job, and nothing new is queued). */
int es_job_submit(es_engine *e, const es_job_req *req, es_job *out, bool *existed);
/* Many jobs created with the caller's other writes: inserts them in the
 * caller's open transaction (ids[i] receives each id); after the commit,
 * es_job_publish_new sends their messages (grouped).  Should the process die
 * in between, the republisher sends them. */
int es_job_insert_tx(es_engine *e, es_store_conn *c, const es_job_req *req,
                     char id[ES_UUID_LEN + 1]);
int es_job_publish_new(es_engine *e, const char *kind, const char (*ids)[ES_UUID_LEN + 1], size_t n,
                       const char *trace_id);
/* A job that is dead from the start, in the caller's transaction: work that
 * failed its last attempt outside the job engine (a flush of events) lands
 * in the dead-letter list this way, and a re-drive runs it as a job. */
int es_job_insert_dead_tx(es_engine *e, es_store_conn *c, const es_job_req *req, int attempts,
                          const char *error_type, const char *error_message,
                          char id[ES_UUID_LEN + 1]);
/* The attempts and backoff a kind runs with (after ESTEIRA_JOB_KINDS). */
int es_engine_kind_policy(es_engine *e, const char *kind, int *max_attempts, int64_t *base_ms,
                          int64_t *cap_ms);

/* tenant NULL = any tenant (admin, workers) */
int es_job_get(es_engine *e, const char *tenant, const char *id, es_job *out);
/* History: [{at, status, attempt, errorType, errorMessage, delayMs}] */
int es_job_history(es_engine *e, const char *id, json_t **out);

typedef struct es_job_filter {
    const char *tenant; /* NULL = any */
    const char *kind;
    int status;         /* -1 = any */
    const char *cursor; /* opaque, from a previous page */
    int limit;
} es_job_filter;
/* *items = JSON array of jobs (newest first); *next = cursor or NULL (malloc'd) */
int es_job_list(es_engine *e, const es_job_filter *f, json_t **items, char **next);
/* error|dead|canceled -> queued with a fresh attempt budget; ES_ECONFLICT otherwise */
int es_job_retry(es_engine *e, const char *tenant, const char *id);
/* queued|error -> canceled; ES_ECONFLICT otherwise */
int es_job_cancel(es_engine *e, const char *tenant, const char *id);
/* Deletes a dead job (DELETE /v1/dlq/{id}); ES_ECONFLICT when not dead */
int es_job_delete_dead(es_engine *e, const char *tenant, const char *id);
/* Counts by kind and status: {"noop":{"done":3,…},…} */
int es_job_counts(es_engine *e, json_t **out);

/* Backoff for the attempt that just failed (1-based): full jitter in
 * [0, min(cap, base * 2^(attempt-1))], at least base/2. r in [0,1). */
int64_t es_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt, double r);

/* The built-in job kinds (src/jobs/kinds.c): noop (payload {"sleepMs":n,
 * "fail":true|"n":k}) for tests and benchmarks. */
int es_jobs_register_builtin(es_engine *e);

#endif
