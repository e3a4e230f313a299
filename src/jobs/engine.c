/* engine.c - jobs: submit, claim, run, retry with backoff, dead-letter.
 *
 * The store is the truth about a job; the broker only says "look at job X".
 * So a message delivered twice, a message left over from a crash, or one
 * published again by the republisher is harmless: a worker first *claims* the
 * job with one conditional UPDATE, and only a successful claim runs it.
 *
 * The order of writes makes every crash recoverable:
 *   submit:  INSERT job (published=0) -> publish -> published=1
 *            (a crash before publish: the republisher sends it later)
 *   run:     claim -> handler -> UPDATE done (+ handler effects, one tx) -> ack
 *            (a crash before ack: the message comes back; the claim or the
 *             `done` status tells the next worker what to do)
 *   failure: UPDATE error/dead -> broker retry/dead (atomic in the broker) */
#include "esteira/job.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/metrics.h"

#define MAX_KINDS          32
#define REPUBLISH_AGE_MS   5000
#define REPUBLISH_EVERY_MS 2000
#define REPUBLISH_BATCH    500
#define POLL_MS            250
#define MARK_BATCH         256 /* ids per "published = 1" statement */
#define MARK_PENDING_MAX   65536

#define JOB_COLS                                                                                   \
    "id, tenant, kind, status, attempts, max_attempts, payload, result, error_type,"               \
    " error_message, idempotency_key, trace_id, created_ms, updated_ms, run_after"

typedef struct kind_rt {
    char name[ES_KIND_MAX + 1];
    char queue[ES_KIND_MAX + 8];
    es_job_fn run;
    void *arg;
    int concurrency, max_attempts;
    int64_t base_ms, cap_ms;
    int (*on_dead)(es_job_ctx *ctx, es_store_conn *c, void *arg);
    void (*after_done)(es_job_ctx *ctx, void *arg);
} kind_rt;

struct es_engine {
    const es_config *cfg;
    es_store *store;
    es_broker *broker;
    es_cache *cache;
    kind_rt kinds[MAX_KINDS];
    const char *kind_names[MAX_KINDS + 1];
    int nkinds;
    pthread_t *threads;
    int nthreads;
    pthread_t republisher;
    bool started;
    atomic_bool stopping;
    atomic_int alive; /* worker threads not yet exited */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    /* ids published but not yet marked so in the store (see mark_published) */
    char (*pending)[ES_UUID_LEN + 1];
    int npending;
};

struct es_job_ctx {
    es_engine *e;
    kind_rt *kind;
    es_job job;
    es_store_conn *conn; /* the handler's transaction, when it asked for one */
    bool permanent;
    char *error_type, *error_message, *result;
};

typedef struct worker_arg {
    es_engine *e;
    kind_rt *kind;
} worker_arg;

/* ---------------------------------------------------------------- names */

static const char *status_names[] = {"queued", "processing", "done", "error", "dead", "canceled"};

const char *es_job_status_name(es_job_status s)
{
    return (unsigned)s < ES_ARRAY_LEN(status_names) ? status_names[s] : "unknown";
}

int es_job_status_parse(const char *s)
{
    for (size_t i = 0; s && i < ES_ARRAY_LEN(status_names); i++)
        if (strcmp(s, status_names[i]) == 0) return (int)i;
    return -1;
}

/* ---------------------------------------------------------------- helpers */

static kind_rt *find_kind(es_engine *e, const char *name)
{
    for (int i = 0; i < e->nkinds; i++)
        if (strcmp(e->kinds[i].name, name) == 0) return &e->kinds[i];
    return NULL;
}

static void count_transition(const char *kind, const char *status)
{
    char labels[160];
    snprintf(labels, sizeof labels, "kind=\"%s\",status=\"%s\"", kind, status);
    es_metric_add("esteira_jobs_total", labels, 1);
}

void es_job_finish(es_job *j)
{
    if (!j) return;
    free(j->payload);
    free(j->result);
    free(j->error_type);
    free(j->error_message);
    free(j->idempotency_key);
    free(j->trace_id);
    memset(j, 0, sizeof *j);
}

static void row_to_job(const es_rows *r, int i, es_job *j)
{
    memset(j, 0, sizeof *j);
    es_strlcpy(j->id, es_rows_get(r, i, 0), sizeof j->id);
    es_strlcpy(j->tenant, es_rows_get(r, i, 1), sizeof j->tenant);
    es_strlcpy(j->kind, es_rows_get(r, i, 2), sizeof j->kind);
    int st = es_job_status_parse(es_rows_get(r, i, 3));
    j->status = st < 0 ? ES_JOB_ERROR : (es_job_status)st;
    j->attempts = (int)es_rows_int(r, i, 4, 0);
    j->max_attempts = (int)es_rows_int(r, i, 5, 0);
    j->payload = es_strdup(es_rows_get(r, i, 6));
    j->result = es_strdup(es_rows_get(r, i, 7));
    j->error_type = es_strdup(es_rows_get(r, i, 8));
    j->error_message = es_strdup(es_rows_get(r, i, 9));
    j->idempotency_key = es_strdup(es_rows_get(r, i, 10));
    j->trace_id = es_strdup(es_rows_get(r, i, 11));
    j->created_ms = es_rows_int(r, i, 12, 0);
    j->updated_ms = es_rows_int(r, i, 13, 0);
    j->run_after_ms = es_rows_int(r, i, 14, 0);
}

static json_t *json_text_or_null(const char *s)
{
    if (!s) return json_null();
    json_t *v = json_loads(s, JSON_DECODE_ANY, NULL);
    return v ? v : json_string(s);
}

static json_t *iso(int64_t ms)
{
    char b[25];
    es_time_iso(ms, b);
    return json_string(b);
}

json_t *es_job_json(const es_job *j)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(j->id));
    json_object_set_new(o, "kind", json_string(j->kind));
    json_object_set_new(o, "tenant", json_string(j->tenant));
    json_object_set_new(o, "status", json_string(es_job_status_name(j->status)));
    json_object_set_new(o, "attempts", json_integer(j->attempts));
    json_object_set_new(o, "maxAttempts", json_integer(j->max_attempts));
    json_object_set_new(o, "payload", json_text_or_null(j->payload));
    json_object_set_new(o, "result", json_text_or_null(j->result));
    json_object_set_new(o, "errorType", j->error_type ? json_string(j->error_type) : json_null());
    json_object_set_new(o, "errorMessage",
                        j->error_message ? json_string(j->error_message) : json_null());
    if (j->idempotency_key)
        json_object_set_new(o, "idempotencyKey", json_string(j->idempotency_key));
    json_object_set_new(o, "createdAt", iso(j->created_ms));
    json_object_set_new(o, "updatedAt", iso(j->updated_ms));
    json_object_set_new(o, "runAfter", j->run_after_ms ? iso(j->run_after_ms) : json_null());
    return o;
}

int64_t es_backoff_ms(int64_t base_ms, int64_t cap_ms, int attempt, double r)
{
    if (attempt < 1) attempt = 1;
    int64_t d = base_ms;
    for (int i = 1; i < attempt && d < cap_ms; i++)
        d *= 2;
    if (d > cap_ms) d = cap_ms;
    /* "equal jitter": half fixed, half random, so delays visibly grow and
     * failed jobs of one burst still spread out */
    return d / 2 + (int64_t)(r * (double)(d - d / 2));
}

static double rand01(void)
{
    return (double)es_random_below(1u << 30) / (double)(1u << 30);
}

static int add_event(es_store_conn *c, const char *id, const char *status, int attempt,
                     const char *etype, const char *emsg, int64_t delay_ms, int64_t now)
{
    char at[24], att[16], dl[24];
    const char *p[] = {id,
                       ES_I64(at, now),
                       status,
                       ES_I64(att, attempt),
                       etype,
                       emsg,
                       delay_ms >= 0 ? ES_I64(dl, delay_ms) : NULL};
    return es_store_exec(c,
                         "INSERT INTO job_events (job_id, at_ms, status, attempt, error_type,"
                         " error_message, delay_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                         7, p, NULL);
}

static int publish_job(es_engine *e, const char *kind, const char *id, int attempts,
                       int64_t delay_ms, const char *trace_id)
{
    char queue[ES_KIND_MAX + 8], enq[24];
    snprintf(queue, sizeof queue, "jobs.%s", kind);
    es_kv h[3] = {{"jobId", (char *)id},
                  {"enqueuedMs", ES_I64(enq, es_now_ms())},
                  {"traceId", (char *)(trace_id ? trace_id : "")}};
    es_msg m = {.queue = queue,
                .body = id,
                .len = strlen(id),
                .headers = h,
                .nheaders = trace_id ? 3 : 2,
                .attempts = attempts,
                .delay_ms = delay_ms};
    int rc = es_broker_declare(e->broker, queue);
    if (!rc) rc = es_broker_publish(e->broker, &m, 1);
    return rc;
}

/* Remembers that a job's message went out.  The flag only tells the
 * republisher what to leave alone, so it is written in batches by the
 * republisher thread rather than in a transaction per job; if the process dies
 * first, the job is published once more and the claim makes that harmless. */
static void mark_published(es_engine *e, const char *id)
{
    pthread_mutex_lock(&e->mu);
    if (e->npending < MARK_PENDING_MAX) es_strlcpy(e->pending[e->npending++], id, ES_UUID_LEN + 1);
    if (e->npending == MARK_BATCH) pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void flush_published(es_engine *e)
{
    char batch[MARK_BATCH][ES_UUID_LEN + 1];
    for (;;) {
        pthread_mutex_lock(&e->mu);
        int n = e->npending < MARK_BATCH ? e->npending : MARK_BATCH;
        memcpy(batch, e->pending[e->npending - n], sizeof *batch * (size_t)n);
        e->npending -= n;
        pthread_mutex_unlock(&e->mu);
        if (n == 0) return;
        es_buf sql;
        es_buf_init(&sql, 0);
        const char *p[MARK_BATCH];
        es_buf_puts(&sql, "UPDATE jobs SET published = 1 WHERE id IN (");
        for (int i = 0; i < n; i++) {
            p[i] = batch[i];
            es_buf_printf(&sql, "%s$%d", i ? ", " : "", i + 1);
        }
        es_buf_puts(&sql, ")");
        int rc = es_store_exec1(e->store, es_buf_cstr(&sql), n, p, NULL);
        es_buf_finish(&sql);
        if (rc) return; /* the store is down: those jobs will be published again */
    }
}

/* ---------------------------------------------------------------- create */

/* ESTEIRA_JOB_KINDS: "noop:concurrency=4,attempts=3,base=100ms,cap=5s;report:…" */
static int apply_overrides(const char *spec, kind_rt *k, bool check_only, char *err, size_t errlen)
{
    if (!spec || !*spec) return ES_OK;
    char *copy = strdup(spec), *save1 = NULL;
    if (!copy) return ES_ENOMEM;
    int rc = ES_OK;
    for (char *sec = strtok_r(copy, ";", &save1); sec && !rc; sec = strtok_r(NULL, ";", &save1)) {
        char *colon = strchr(sec, ':');
        if (!colon) {
            snprintf(err, errlen, "job_kinds: '%s' lacks 'kind:'", sec);
            rc = ES_EINVAL;
            break;
        }
        *colon = 0;
        bool mine = k && strcmp(sec, k->name) == 0;
        char *save2 = NULL;
        for (char *kv = strtok_r(colon + 1, ",", &save2); kv; kv = strtok_r(NULL, ",", &save2)) {
            char *eq = strchr(kv, '=');
            int64_t v = 0;
            int bad = !eq;
            if (eq) {
                *eq = 0;
                const char *val = eq + 1;
                if (!strcmp(kv, "concurrency"))
                    bad = es_parse_i64(val, 0, 1024, &v) != ES_OK;
                else if (!strcmp(kv, "attempts"))
                    bad = es_parse_i64(val, 1, 100, &v) != ES_OK;
                else if (!strcmp(kv, "base") || !strcmp(kv, "cap"))
                    bad = es_parse_duration_ms(val, &v) != ES_OK || v < 1;
                else
                    bad = 1;
            }
            if (bad) {
                snprintf(err, errlen, "job_kinds: bad setting '%s' for kind '%s'", kv, sec);
                rc = ES_EINVAL;
                break;
            }
            if (!mine || check_only) continue;
            if (!strcmp(kv, "concurrency"))
                k->concurrency = (int)v;
            else if (!strcmp(kv, "attempts"))
                k->max_attempts = (int)v;
            else if (!strcmp(kv, "base"))
                k->base_ms = v;
            else
                k->cap_ms = v;
        }
    }
    free(copy);
    return rc;
}

int es_engine_create(const es_config *cfg, es_store *store, es_broker *broker, es_cache *cache,
                     es_engine **out)
{
    char err[256];
    if (apply_overrides(cfg->job_kinds, NULL, true, err, sizeof err)) {
        es_error("jobs", "%s", err);
        return ES_EINVAL;
    }
    es_engine *e = calloc(1, sizeof *e);
    if (!e) return ES_ENOMEM;
    e->cfg = cfg;
    e->store = store;
    e->broker = broker;
    e->cache = cache;
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    e->pending = malloc(sizeof *e->pending * MARK_PENDING_MAX);
    if (!e->pending) {
        free(e);
        return ES_ENOMEM;
    }
    static const double wait_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,   0.5,   1,      2.5,   5,    10,    60};
    es_metric_define("esteira_jobs_total", ES_METRIC_COUNTER, "Job status transitions", NULL, 0);
    es_metric_define("esteira_job_wait_seconds", ES_METRIC_HISTOGRAM,
                     "Time from enqueue to the start of a job's first attempt", wait_buckets,
                     (int)ES_ARRAY_LEN(wait_buckets));
    es_metric_define("esteira_job_run_seconds", ES_METRIC_HISTOGRAM, "Duration of job attempts",
                     wait_buckets, (int)ES_ARRAY_LEN(wait_buckets));
    *out = e;
    return ES_OK;
}

int es_engine_register(es_engine *e, const es_job_kind *kind)
{
    if (e->nkinds >= MAX_KINDS || !kind->run || !es_ident_valid(kind->name) ||
        strlen(kind->name) > ES_KIND_MAX)
        return ES_EINVAL;
    if (find_kind(e, kind->name)) return ES_ECONFLICT;
    kind_rt *k = &e->kinds[e->nkinds];
    memset(k, 0, sizeof *k);
    es_strlcpy(k->name, kind->name, sizeof k->name);
    snprintf(k->queue, sizeof k->queue, "jobs.%s", kind->name);
    k->run = kind->run;
    k->arg = kind->arg;
    k->on_dead = kind->on_dead;
    k->after_done = kind->after_done;
    k->concurrency = kind->concurrency ? kind->concurrency : (int)e->cfg->workers;
    k->max_attempts = kind->max_attempts ? kind->max_attempts : (int)e->cfg->job_max_attempts;
    k->base_ms = kind->backoff_base_ms ? kind->backoff_base_ms : e->cfg->job_backoff_base_ms;
    k->cap_ms = kind->backoff_cap_ms ? kind->backoff_cap_ms : e->cfg->job_backoff_cap_ms;
    char err[256];
    if (apply_overrides(e->cfg->job_kinds, k, false, err, sizeof err)) return ES_EINVAL;
    if (k->cap_ms < k->base_ms) k->cap_ms = k->base_ms;
    int rc = es_broker_declare(e->broker, k->queue);
    if (rc) return rc;
    e->kind_names[e->nkinds] = k->name;
    e->nkinds++;
    e->kind_names[e->nkinds] = NULL;
    return ES_OK;
}

int es_engine_kind_policy(es_engine *e, const char *kind, int *max_attempts, int64_t *base_ms,
                          int64_t *cap_ms)
{
    kind_rt *k = find_kind(e, kind ? kind : "");
    if (!k) return ES_ENOTFOUND;
    if (max_attempts) *max_attempts = k->max_attempts;
    if (base_ms) *base_ms = k->base_ms;
    if (cap_ms) *cap_ms = k->cap_ms;
    return ES_OK;
}

int es_engine_kinds(es_engine *e, const char ***names)
{
    *names = e->kind_names;
    return e->nkinds;
}

/* ---------------------------------------------------------------- submit */

static int get_by_idem(es_engine *e, const char *tenant, const char *key, es_job *out)
{
    const char *p[] = {tenant, key};
    es_rows *r = NULL;
    int rc = es_store_exec1(
        e->store, "SELECT " JOB_COLS " FROM jobs WHERE tenant = $1 AND idempotency_key = $2", 2, p,
        &r);
    if (rc) return rc;
    rc = es_rows_count(r) == 1 ? ES_OK : ES_ENOTFOUND;
    if (!rc) row_to_job(r, 0, out);
    es_rows_free(r);
    return rc;
}

int es_job_submit(es_engine *e, const es_job_req *req, es_job *out, bool *existed)
{
    if (existed) *existed = false;
    kind_rt *k = find_kind(e, req->kind ? req->kind : "");
    if (!k || !req->tenant) return ES_EINVAL;
    const char *payload = req->payload ? req->payload : "{}";
    if (req->idempotency_key) {
        es_job prior;
        if (get_by_idem(e, req->tenant, req->idempotency_key, &prior) == ES_OK) {
            if (existed) *existed = true;
            if (out)
                *out = prior;
            else
                es_job_finish(&prior);
            return ES_OK;
        }
    }
    char id[ES_UUID_LEN + 1];
    int64_t now = es_now_ms();
    int max_attempts = req->max_attempts > 0 ? req->max_attempts : k->max_attempts;
    es_store_conn *c = NULL;
    int rc = es_store_acquire(e->store, &c);
    if (rc) return rc;
    if ((rc = es_store_begin(c))) goto release;
    rc = es_job_insert_tx(e, c, req, id);
    if (rc) {
        es_store_rollback(c);
        es_store_release(c);
        /* a concurrent request with the same key won the race */
        if (rc == ES_ECONFLICT && req->idempotency_key) {
            es_job prior;
            rc = get_by_idem(e, req->tenant, req->idempotency_key, &prior);
            if (!rc) {
                if (existed) *existed = true;
                if (out)
                    *out = prior;
                else
                    es_job_finish(&prior);
            }
        }
        return rc;
    }
    if ((rc = es_store_commit(c))) goto release;
    es_store_release(c);
    c = NULL;

    rc = publish_job(e, k->name, id, 0, req->delay_ms, req->trace_id);
    if (rc) {
        /* not accepted: take the job back so a client's retry makes no twin
         * (if even that fails, the republisher sends it later) */
        const char *d[] = {id};
        es_store_exec1(e->store, "DELETE FROM job_events WHERE job_id = $1", 1, d, NULL);
        es_store_exec1(e->store, "DELETE FROM jobs WHERE id = $1 AND published = 0", 1, d, NULL);
        es_warn("jobs", "could not enqueue job %s: %s", id, es_strerror(rc));
        return ES_EAGAIN;
    }
    mark_published(e, id); /* best effort: the republisher covers a failure here */
    count_transition(k->name, "queued");
    if (out) {
        memset(out, 0, sizeof *out);
        es_strlcpy(out->id, id, sizeof out->id);
        es_strlcpy(out->tenant, req->tenant, sizeof out->tenant);
        es_strlcpy(out->kind, k->name, sizeof out->kind);
        out->status = ES_JOB_QUEUED;
        out->max_attempts = max_attempts;
        out->payload = strdup(payload);
        out->idempotency_key = es_strdup(req->idempotency_key);
        out->trace_id = es_strdup(req->trace_id);
        out->created_ms = out->updated_ms = now;
        out->run_after_ms = req->delay_ms > 0 ? now + req->delay_ms : 0;
    }
    return ES_OK;
release:
    es_store_release(c);
    return rc;
}

/* One job row and its first history entry, in the caller's transaction:
 * queued (its message is sent after the commit), or dead from the start
 * (published = 1: nothing to send until it is re-driven). */
static int insert_job(es_engine *e, es_store_conn *c, const es_job_req *req, bool dead,
                      int attempts, const char *error_type, const char *error_message,
                      char id[ES_UUID_LEN + 1])
{
    kind_rt *k = find_kind(e, req->kind ? req->kind : "");
    if (!k || !req->tenant) return ES_EINVAL;
    char now_s[24], max_s[16], att[16], ra[24];
    es_uuid7(id);
    int64_t now = es_now_ms();
    const char *status = dead ? "dead" : "queued";
    const char *p[] = {id,
                       req->tenant,
                       k->name,
                       status,
                       ES_I64(att, attempts),
                       ES_I64(max_s, req->max_attempts > 0 ? req->max_attempts : k->max_attempts),
                       req->payload ? req->payload : "{}",
                       req->idempotency_key,
                       req->trace_id,
                       !dead && req->delay_ms > 0 ? ES_I64(ra, now + req->delay_ms) : NULL,
                       error_type,
                       error_message,
                       dead ? "1" : "0",
                       ES_I64(now_s, now)};
    int rc = es_store_exec(c,
                           "INSERT INTO jobs (id, tenant, kind, status, attempts, max_attempts,"
                           " payload, idempotency_key, trace_id, run_after, error_type,"
                           " error_message, published, created_ms, updated_ms) VALUES ($1, $2,"
                           " $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
                           14, p, NULL);
    if (!rc) rc = add_event(c, id, status, attempts, error_type, error_message, -1, now);
    if (!rc && dead) count_transition(k->name, "dead");
    return rc;
}

int es_job_insert_tx(es_engine *e, es_store_conn *c, const es_job_req *req,
                     char id[ES_UUID_LEN + 1])
{
    return insert_job(e, c, req, false, 0, NULL, NULL, id);
}

int es_job_insert_dead_tx(es_engine *e, es_store_conn *c, const es_job_req *req, int attempts,
                          const char *error_type, const char *error_message,
                          char id[ES_UUID_LEN + 1])
{
    return insert_job(e, c, req, true, attempts, error_type, error_message, id);
}

#define PUBLISH_GROUP 256

int es_job_publish_new(es_engine *e, const char *kind, const char (*ids)[ES_UUID_LEN + 1], size_t n,
                       const char *trace_id)
{
    kind_rt *k = find_kind(e, kind ? kind : "");
    if (!k) return ES_EINVAL;
    es_msg *m = calloc(PUBLISH_GROUP, sizeof *m);
    es_kv(*h)[3] = calloc(PUBLISH_GROUP, sizeof *h);
    int rc = m && h ? es_broker_declare(e->broker, k->queue) : ES_ENOMEM;
    char enq[24];
    ES_I64(enq, es_now_ms());
    for (size_t at = 0; at < n && rc == ES_OK; at += PUBLISH_GROUP) {
        size_t g = n - at < PUBLISH_GROUP ? n - at : PUBLISH_GROUP;
        for (size_t i = 0; i < g; i++) {
            const char *id = ids[at + i];
            h[i][0] = (es_kv){"jobId", (char *)id};
            h[i][1] = (es_kv){"enqueuedMs", enq};
            h[i][2] = (es_kv){"traceId", (char *)(trace_id ? trace_id : "")};
            m[i] = (es_msg){.queue = k->queue,
                            .body = id,
                            .len = strlen(id),
                            .headers = h[i],
                            .nheaders = trace_id ? 3 : 2};
        }
        rc = es_broker_publish(e->broker, m, g);
        for (size_t i = 0; i < g && rc == ES_OK; i++)
            mark_published(e, ids[at + i]);
    }
    if (rc == ES_OK) {
        for (size_t i = 0; i < n; i++)
            count_transition(k->name, "queued");
    } else {
        es_warn("jobs", "could not enqueue %zu %s jobs now (the republisher will): %s", n, kind,
                es_strerror(rc));
    }
    free(m);
    free(h);
    return rc;
}

/* ---------------------------------------------------------------- queries */

int es_job_get(es_engine *e, const char *tenant, const char *id, es_job *out)
{
    if (!es_uuid_valid(id)) return ES_ENOTFOUND;
    const char *p[] = {id, tenant};
    es_rows *r = NULL;
    int rc = es_store_exec1(e->store,
                            tenant ? "SELECT " JOB_COLS " FROM jobs WHERE id = $1 AND tenant = $2"
                                   : "SELECT " JOB_COLS " FROM jobs WHERE id = $1",
                            tenant ? 2 : 1, p, &r);
    if (rc) return rc;
    rc = es_rows_count(r) == 1 ? ES_OK : ES_ENOTFOUND;
    if (!rc) row_to_job(r, 0, out);
    es_rows_free(r);
    return rc;
}

int es_job_history(es_engine *e, const char *id, json_t **out)
{
    const char *p[] = {id};
    es_rows *r = NULL;
    int rc = es_store_exec1(e->store,
                            "SELECT at_ms, status, attempt, error_type, error_message, delay_ms"
                            " FROM job_events WHERE job_id = $1 ORDER BY at_ms, attempt",
                            1, p, &r);
    if (rc) return rc;
    json_t *a = json_array();
    for (int i = 0; i < es_rows_count(r); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "at", iso(es_rows_int(r, i, 0, 0)));
        json_object_set_new(o, "status", json_string(es_rows_get(r, i, 1)));
        json_object_set_new(o, "attempt", json_integer(es_rows_int(r, i, 2, 0)));
        if (es_rows_get(r, i, 3))
            json_object_set_new(o, "errorType", json_string(es_rows_get(r, i, 3)));
        if (es_rows_get(r, i, 4))
            json_object_set_new(o, "errorMessage", json_string(es_rows_get(r, i, 4)));
        if (es_rows_get(r, i, 5))
            json_object_set_new(o, "delayMs", json_integer(es_rows_int(r, i, 5, 0)));
        json_array_append_new(a, o);
    }
    es_rows_free(r);
    *out = a;
    return ES_OK;
}

int es_job_list(es_engine *e, const es_job_filter *f, json_t **items, char **next)
{
    es_buf sql;
    es_buf_init(&sql, 0);
    const char *p[5];
    int n = 0;
    char status_s[16];
    es_buf_puts(&sql, "SELECT " JOB_COLS " FROM jobs WHERE 1 = 1");
    if (f->tenant) p[n++] = f->tenant, es_buf_printf(&sql, " AND tenant = $%d", n);
    if (f->kind) p[n++] = f->kind, es_buf_printf(&sql, " AND kind = $%d", n);
    if (f->status >= 0) {
        es_strlcpy(status_s, es_job_status_name((es_job_status)f->status), sizeof status_s);
        p[n++] = status_s, es_buf_printf(&sql, " AND status = $%d", n);
    }
    if (f->cursor) {
        if (!es_uuid_valid(f->cursor)) {
            es_buf_finish(&sql);
            return ES_EINVAL;
        }
        p[n++] = f->cursor, es_buf_printf(&sql, " AND id < $%d", n);
    }
    int limit = f->limit > 0 ? f->limit : 50;
    es_buf_printf(&sql, " ORDER BY id DESC LIMIT %d", limit + 1);
    es_rows *r = NULL;
    int rc = es_store_exec1(e->store, es_buf_cstr(&sql), n, p, &r);
    es_buf_finish(&sql);
    if (rc) return rc;
    json_t *a = json_array();
    int count = es_rows_count(r);
    for (int i = 0; i < count && i < limit; i++) {
        es_job j;
        row_to_job(r, i, &j);
        json_array_append_new(a, es_job_json(&j));
        es_job_finish(&j);
    }
    *next = count > limit ? strdup(es_rows_get(r, limit - 1, 0)) : NULL;
    es_rows_free(r);
    *items = a;
    return ES_OK;
}

int es_job_counts(es_engine *e, json_t **out)
{
    es_rows *r = NULL;
    int rc = es_store_exec1(
        e->store, "SELECT kind, status, COUNT(*) FROM jobs GROUP BY kind, status", 0, NULL, &r);
    if (rc) return rc;
    json_t *o = json_object();
    for (int i = 0; i < es_rows_count(r); i++) {
        json_t *k = json_object_get(o, es_rows_get(r, i, 0));
        if (!k) json_object_set_new(o, es_rows_get(r, i, 0), k = json_object());
        json_object_set_new(k, es_rows_get(r, i, 1), json_integer(es_rows_int(r, i, 2, 0)));
    }
    es_rows_free(r);
    *out = o;
    return ES_OK;
}

/* Moves a job from one of the states in `from` (SQL list) to another with
 * `set` (SQL assignments), appending `status` to its history, in one
 * transaction.  *out gets kind, attempts, trace_id.  ES_ECONFLICT when the job
 * is in another state, ES_ENOTFOUND when there is no such job (for tenant). */
static int transition(es_engine *e, const char *tenant, const char *id, const char *set,
                      const char *from, const char *status, const char *why, es_rows **out)
{
    *out = NULL;
    if (!es_uuid_valid(id)) return ES_ENOTFOUND;
    char now_s[24], sql[640];
    int64_t now = es_now_ms();
    snprintf(sql, sizeof sql,
             "UPDATE jobs SET %s, updated_ms = $2 WHERE id = $1 AND status IN (%s)%s"
             " RETURNING kind, attempts, trace_id",
             set, from, tenant ? " AND tenant = $3" : "");
    const char *p[] = {id, ES_I64(now_s, now), tenant};
    es_store_conn *c = NULL;
    es_rows *r = NULL;
    int rc = es_store_acquire(e->store, &c);
    if (rc) return rc;
    if ((rc = es_store_begin(c))) goto release;
    rc = es_store_exec(c, sql, tenant ? 3 : 2, p, &r);
    if (!rc && es_rows_count(r) == 1)
        rc = add_event(c, id, status, (int)es_rows_int(r, 0, 1, 0), why, NULL, -1, now);
    if (rc) {
        es_store_rollback(c);
        goto release;
    }
    if ((rc = es_store_commit(c))) goto release;
    if (es_rows_count(r) != 1) {
        es_job j;
        rc = es_job_get(e, tenant, id, &j) == ES_OK ? ES_ECONFLICT : ES_ENOTFOUND;
        if (rc == ES_ECONFLICT) es_job_finish(&j);
        goto release;
    }
    count_transition(es_rows_get(r, 0, 0), status);
    *out = r;
    r = NULL;
release:
    es_rows_free(r);
    es_store_release(c);
    return rc;
}

int es_job_retry(es_engine *e, const char *tenant, const char *id)
{
    es_rows *r = NULL;
    int rc = transition(e, tenant, id,
                        "status = 'queued', attempts = 0, error_type = NULL, error_message = NULL,"
                        " run_after = NULL, lease_until = NULL, published = 0",
                        "'error', 'dead', 'canceled'", "queued", "retried", &r);
    if (rc) return rc;
    if (publish_job(e, es_rows_get(r, 0, 0), id, 0, 0, es_rows_get(r, 0, 2)) == ES_OK)
        mark_published(e, id);
    es_rows_free(r);
    return ES_OK;
}

int es_job_cancel(es_engine *e, const char *tenant, const char *id)
{
    es_rows *r = NULL;
    int rc =
        transition(e, tenant, id, "status = 'canceled'", "'queued', 'error'", "canceled", NULL, &r);
    es_rows_free(r);
    return rc;
}

int es_job_delete_dead(es_engine *e, const char *tenant, const char *id)
{
    es_job j;
    int rc = es_job_get(e, tenant, id, &j);
    if (rc) return rc;
    bool dead = j.status == ES_JOB_DEAD;
    es_job_finish(&j);
    if (!dead) return ES_ECONFLICT;
    const char *p[] = {id};
    es_store_conn *c = NULL;
    if ((rc = es_store_acquire(e->store, &c))) return rc;
    if (!(rc = es_store_begin(c))) {
        rc = es_store_exec(c, "DELETE FROM job_events WHERE job_id = $1", 1, p, NULL);
        if (!rc)
            rc = es_store_exec(c, "DELETE FROM jobs WHERE id = $1 AND status = 'dead'", 1, p, NULL);
        rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
    }
    es_store_release(c);
    return rc;
}

/* ---------------------------------------------------------------- handler context */

const es_job *es_job_ctx_job(es_job_ctx *ctx)
{
    return &ctx->job;
}

es_engine *es_job_ctx_engine(es_job_ctx *ctx)
{
    return ctx->e;
}

bool es_job_ctx_stopping(es_job_ctx *ctx)
{
    return atomic_load(&ctx->e->stopping);
}

int es_job_ctx_conn(es_job_ctx *ctx, es_store_conn **conn)
{
    if (!ctx->conn) {
        int rc = es_store_acquire(ctx->e->store, &ctx->conn);
        if (rc) return rc;
        if ((rc = es_store_begin(ctx->conn))) {
            es_store_release(ctx->conn);
            ctx->conn = NULL;
            return rc;
        }
    }
    *conn = ctx->conn;
    return ES_OK;
}

void es_job_fail(es_job_ctx *ctx, bool permanent, const char *error_type, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    free(ctx->error_type);
    free(ctx->error_message);
    ctx->error_type = strdup(error_type ? error_type : "error");
    ctx->error_message = strdup(msg);
    ctx->permanent = permanent;
}

const char *es_job_ctx_result(es_job_ctx *ctx)
{
    return ctx->result;
}

int es_job_set_result(es_job_ctx *ctx, const char *json)
{
    free(ctx->result);
    ctx->result = es_strdup(json);
    return json && !ctx->result ? ES_ENOMEM : ES_OK;
}

/* ---------------------------------------------------------------- workers */

/* Ends a transaction the handler opened; commit only on the success path. */
static int end_handler_tx(es_job_ctx *ctx, bool commit)
{
    if (!ctx->conn) return ES_OK;
    int rc = commit ? es_store_commit(ctx->conn) : es_store_rollback(ctx->conn);
    return rc;
}

static es_store_conn *outcome_conn(es_job_ctx *ctx, bool *own)
{
    *own = false;
    if (ctx->conn) return ctx->conn;
    es_store_conn *c = NULL;
    if (es_store_acquire(ctx->e->store, &c) != ES_OK) return NULL;
    if (es_store_begin(c) != ES_OK) {
        es_store_conn_broken(c);
        es_store_release(c);
        return NULL;
    }
    *own = true;
    return c;
}

/* Writes `done` (with the handler's effects, in its transaction).  ES_OK, or
 * ES_ECONFLICT when the job is no longer ours (lease expired and retaken). */
static int record_done(es_job_ctx *ctx)
{
    bool own;
    es_store_conn *c = outcome_conn(ctx, &own);
    if (!c) return ES_EBACKEND;
    char now_s[24], att[16];
    int64_t now = es_now_ms();
    const char *p[] = {ctx->job.id, ctx->result, ES_I64(now_s, now),
                       ES_I64(att, ctx->job.attempts)};
    es_rows *r = NULL;
    int rc = es_store_exec(c,
                           "UPDATE jobs SET status = 'done', result = $2, lease_until = NULL,"
                           " error_type = NULL, error_message = NULL, updated_ms = $3"
                           " WHERE id = $1 AND status = 'processing' AND attempts = $4",
                           4, p, &r);
    if (!rc && es_rows_affected(r) != 1) rc = ES_ECONFLICT;
    es_rows_free(r);
    if (!rc) rc = add_event(c, ctx->job.id, "done", ctx->job.attempts, NULL, NULL, -1, now);
    if (!rc)
        rc = es_store_commit(c);
    else
        es_store_rollback(c);
    if (rc && rc != ES_ECONFLICT) es_store_conn_broken(c);
    if (own) es_store_release(c);
    return rc;
}

/* Writes error (to be retried after delay_ms) or dead. */
static int record_failure(es_job_ctx *ctx, bool dead, int64_t delay_ms)
{
    if (ctx->conn) es_store_rollback(ctx->conn); /* the handler's effects go */
    bool own;
    es_store_conn *c = outcome_conn(ctx, &own);
    if (!c) return ES_EBACKEND;
    if (!own && es_store_begin(c) != ES_OK) return ES_EBACKEND;
    char now_s[24], att[16], ra[24];
    int64_t now = es_now_ms();
    const char *status = dead ? "dead" : "error";
    const char *p[] = {ctx->job.id,
                       status,
                       ctx->error_type,
                       ctx->error_message,
                       ES_I64(now_s, now),
                       ES_I64(att, ctx->job.attempts),
                       dead ? NULL : ES_I64(ra, now + delay_ms)};
    int rc = es_store_exec(c,
                           "UPDATE jobs SET status = $2, error_type = $3, error_message = $4,"
                           " lease_until = NULL, updated_ms = $5, run_after = $7"
                           " WHERE id = $1 AND status = 'processing' AND attempts = $6",
                           7, p, NULL);
    if (!rc)
        rc = add_event(c, ctx->job.id, status, ctx->job.attempts, ctx->error_type,
                       ctx->error_message, dead ? -1 : delay_ms, now);
    if (!rc && dead && ctx->kind->on_dead) rc = ctx->kind->on_dead(ctx, c, ctx->kind->arg);
    if (!rc)
        rc = es_store_commit(c);
    else
        es_store_rollback(c);
    if (rc) es_store_conn_broken(c);
    if (own) es_store_release(c);
    return rc;
}

/* Puts a claimed job back to queued (shutdown while it ran). */
static void give_back(es_engine *e, const es_job *j)
{
    char att[16];
    const char *p[] = {j->id, ES_I64(att, j->attempts)};
    es_store_exec1(e->store,
                   "UPDATE jobs SET status = 'queued', attempts = attempts - 1, lease_until = NULL"
                   " WHERE id = $1 AND status = 'processing' AND attempts = $2",
                   2, p, NULL);
}

typedef enum { CLAIMED, SKIP_ACK, SKIP_LATER, CLAIM_FAILED } claim_result;

/* Claims the job of d under a fresh token (written as lease_owner). */
static claim_result claim(es_engine *e, kind_rt *k, const es_delivery *d, es_job *j,
                          const char *token, int64_t *later_ms)
{
    char now_s[24], lease_s[24];
    int64_t now = es_now_ms();
    /* a "reclaim" header names a claim its worker gave up (see abandon()):
     * that claim may be taken over at once */
    const char *reclaim = es_delivery_header(d, "reclaim");
    const char *p[] = {d->body,
                       ES_I64(lease_s, now + e->cfg->job_timeout_ms),
                       ES_I64(now_s, now),
                       d->redelivered ? "1" : "0",
                       reclaim ? reclaim : "",
                       token};
    es_store_conn *c = NULL;
    es_rows *r = NULL;
    if (es_store_acquire(e->store, &c)) return CLAIM_FAILED;
    int rc = es_store_begin(c);
    if (!rc)
        rc = es_store_exec(
            c,
            "UPDATE jobs SET status = 'processing', attempts = attempts + 1,"
            " lease_until = $2, lease_owner = $6, updated_ms = $3 WHERE id = $1 AND"
            " (status IN ('queued', 'error') OR (status = 'processing' AND"
            " (lease_until < $3 OR $4 = '1' OR lease_owner = $5))) RETURNING " JOB_COLS,
            6, p, &r);
    if (!rc && es_rows_count(r) == 1) {
        row_to_job(r, 0, j);
        rc = add_event(c, j->id, "processing", j->attempts, NULL, NULL, -1, now);
    }
    if (rc) {
        es_store_rollback(c);
        es_store_conn_broken(c);
        es_store_release(c);
        es_rows_free(r);
        if (j->payload) es_job_finish(j);
        return CLAIM_FAILED;
    }
    bool claimed = es_rows_count(r) == 1;
    es_rows_free(r);
    r = NULL;
    if (es_store_commit(c)) {
        es_store_conn_broken(c);
        es_store_release(c);
        if (claimed) es_job_finish(j);
        return CLAIM_FAILED;
    }
    es_store_release(c);
    if (claimed) return CLAIMED;

    /* Why not?  Done/dead/canceled/gone: the message is stale.  Processing
     * under a live lease: another delivery is running it - look again when the
     * lease ends, in case that worker never records an outcome. */
    const char *q[] = {d->body};
    if (es_store_exec1(e->store, "SELECT status, lease_until FROM jobs WHERE id = $1", 1, q, &r))
        return CLAIM_FAILED;
    claim_result res = SKIP_ACK;
    if (es_rows_count(r) == 1 && strcmp(es_rows_get(r, 0, 0), "processing") == 0) {
        *later_ms = es_rows_int(r, 0, 1, now) - now + 1000;
        if (*later_ms < 1000) *later_ms = 1000;
        res = SKIP_LATER;
    }
    es_rows_free(r);
    (void)k;
    return res;
}

static void observe(const char *metric, const char *kind, double seconds)
{
    char labels[80];
    snprintf(labels, sizeof labels, "kind=\"%s\"", kind);
    es_metric_observe(metric, labels, seconds);
}

/* This worker gives up a claim it made (or may have made: a claim whose
 * COMMIT failed is unknown), because the store went away - before the handler
 * ran, or after it, when its outcome could not be written.  Rather than let the
 * next delivery wait for the claim's lease to end, send a new message naming
 * the claim's token ("reclaim"), which a claim may take over at once, and ack
 * this one.  Without the broker either, hand the message back: the lease then
 * ends the wait. */
static void abandon(es_engine *e, kind_rt *k, es_consumer *cons, const es_delivery *d,
                    const char *token)
{
    char enq[24];
    es_kv h[] = {{"jobId", (char *)d->body},
                 {"reclaim", (char *)token},
                 {"enqueuedMs", ES_I64(enq, es_now_ms())}};
    es_msg m = {.queue = k->queue,
                .body = d->body,
                .len = d->len,
                .headers = h,
                .nheaders = (int)ES_ARRAY_LEN(h),
                .attempts = d->attempts,
                .delay_ms = k->base_ms};
    if (es_broker_publish(e->broker, &m, 1) == ES_OK)
        es_consumer_ack(cons, d);
    else
        es_consumer_retry(cons, d, k->base_ms);
}

static void process(es_engine *e, kind_rt *k, es_consumer *cons, const es_delivery *d)
{
    if (!es_uuid_valid(d->body)) {
        es_warn("jobs", "dropping a malformed message on %s", k->queue);
        es_consumer_dead(cons, d, "malformed job message");
        return;
    }
    es_job_ctx ctx = {.e = e, .kind = k};
    int64_t later = 0;
    char token[ES_UUID_LEN + 1];
    es_uuid7(token);
    switch (claim(e, k, d, &ctx.job, token, &later)) {
    case CLAIM_FAILED:
        /* the store is unreachable, and the claim may or may not have been
         * committed: hand it over by its token */
        abandon(e, k, cons, d, token);
        es_sleep_ms(100);
        return;
    case SKIP_ACK: es_consumer_ack(cons, d); return;
    case SKIP_LATER: es_consumer_retry(cons, d, later); return;
    case CLAIMED: break;
    }
    es_log_ctx_set(NULL, ctx.job.id, ctx.job.trace_id);
    count_transition(k->name, "processing");
    const char *enq = es_delivery_header(d, "enqueuedMs");
    int64_t enq_ms;
    if (ctx.job.attempts == 1 && enq && es_parse_i64(enq, 0, INT64_MAX, &enq_ms) == ES_OK)
        observe("esteira_job_wait_seconds", k->name, (double)(es_now_ms() - enq_ms) / 1000.0);

    int64_t t0 = es_mono_us();
    int rc;
    if (ctx.job.attempts > ctx.job.max_attempts) {
        /* every earlier attempt died with its worker: do not feed it another */
        es_job_fail(&ctx, true, "attempts_exhausted",
                    "the worker running this job stopped %d times", ctx.job.attempts - 1);
        rc = ES_ECANCELED;
    } else {
        rc = k->run(&ctx, k->arg);
    }
    observe("esteira_job_run_seconds", k->name, (double)(es_mono_us() - t0) / 1e6);

    if (rc == ES_OK) {
        rc = record_done(&ctx);
        if (rc == ES_OK) {
            count_transition(k->name, "done");
            es_consumer_ack(cons, d);
            if (k->after_done) k->after_done(&ctx, k->arg);
        } else if (rc == ES_ECONFLICT) {
            es_warn("jobs", "job %s was taken over after its lease ended; outcome discarded",
                    ctx.job.id);
            es_consumer_ack(cons, d);
        } else {
            es_warn("jobs", "could not record job %s as done: %s", ctx.job.id, es_strerror(rc));
            abandon(e, k, cons, d, token);
        }
    } else if (rc == ES_ECANCELED && atomic_load(&e->stopping) && !ctx.error_type) {
        end_handler_tx(&ctx, false);
        give_back(e, &ctx.job);
        es_consumer_retry(cons, d, 0);
    } else {
        if (!ctx.error_type) es_job_fail(&ctx, false, es_errname(rc), "%s", es_strerror(rc));
        bool dead = ctx.permanent || ctx.job.attempts >= ctx.job.max_attempts;
        int64_t delay = dead ? 0 : es_backoff_ms(k->base_ms, k->cap_ms, ctx.job.attempts, rand01());
        int wrc = record_failure(&ctx, dead, delay);
        if (wrc) {
            es_warn("jobs", "could not record the failure of job %s: %s", ctx.job.id,
                    es_strerror(wrc));
            abandon(e, k, cons, d, token);
        } else if (dead) {
            es_warn("jobs", "job %s is dead after %d attempts: %s: %s", ctx.job.id,
                    ctx.job.attempts, ctx.error_type, ctx.error_message);
            count_transition(k->name, "dead");
            es_consumer_dead(cons, d, ctx.error_message);
        } else {
            es_info("jobs", "job %s attempt %d failed (%s: %s); retry in %lld ms", ctx.job.id,
                    ctx.job.attempts, ctx.error_type, ctx.error_message, (long long)delay);
            count_transition(k->name, "error");
            es_consumer_retry(cons, d, delay);
        }
    }
    if (ctx.conn) es_store_release(ctx.conn);
    es_log_ctx_clear();
    free(ctx.error_type);
    free(ctx.error_message);
    free(ctx.result);
    es_job_finish(&ctx.job);
}

static void *worker_main(void *argp)
{
    worker_arg *a = argp;
    es_engine *e = a->e;
    kind_rt *k = a->kind;
    free(a);
    es_consumer *cons = NULL;
    int64_t backoff = 100;
    while (!atomic_load(&e->stopping)) {
        if (!cons) {
            if (es_consumer_open(e->broker, k->queue, (int)e->cfg->prefetch, &cons) != ES_OK) {
                es_sleep_ms(backoff);
                backoff = backoff < 5000 ? backoff * 2 : 5000;
                continue;
            }
            backoff = 100;
        }
        es_delivery d;
        int rc = es_consumer_next(cons, POLL_MS, &d);
        if (rc == ES_ETIMEDOUT) continue;
        if (rc) {
            es_warn("jobs", "consumer of %s failed: %s; reopening", k->queue, es_strerror(rc));
            es_consumer_close(cons);
            cons = NULL;
            continue;
        }
        process(e, k, cons, &d);
        es_delivery_finish(&d);
    }
    es_consumer_close(cons); /* unacknowledged prefetched messages go back */
    pthread_mutex_lock(&e->mu);
    atomic_fetch_sub(&e->alive, 1);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* Sends the message of jobs whose submitter died between INSERT and publish. */
static void republish_once(es_engine *e)
{
    char before[24];
    const char *p[] = {ES_I64(before, es_now_ms() - REPUBLISH_AGE_MS)};
    es_rows *r = NULL;
    if (es_store_exec1(e->store,
                       "SELECT id, kind, run_after, trace_id FROM jobs WHERE published = 0 AND"
                       " updated_ms < $1 AND status = 'queued' ORDER BY updated_ms LIMIT 500",
                       1, p, &r))
        return;
    for (int i = 0; i < es_rows_count(r) && !atomic_load(&e->stopping); i++) {
        int64_t delay = es_rows_int(r, i, 2, 0) - es_now_ms();
        if (publish_job(e, es_rows_get(r, i, 1), es_rows_get(r, i, 0), 0, delay > 0 ? delay : 0,
                        es_rows_get(r, i, 3)) == ES_OK) {
            mark_published(e, es_rows_get(r, i, 0));
            es_info("jobs", "republished job %s", es_rows_get(r, i, 0));
        }
    }
    es_rows_free(r);
}

static void *republisher_main(void *arg)
{
    es_engine *e = arg;
    int64_t last_scan = 0;
    while (!atomic_load(&e->stopping)) {
        flush_published(e);
        if (es_mono_ms() - last_scan >= REPUBLISH_EVERY_MS) {
            republish_once(e);
            last_scan = es_mono_ms();
        }
        pthread_mutex_lock(&e->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000;
        if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
        if (!atomic_load(&e->stopping) && e->npending < MARK_BATCH)
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
        pthread_mutex_unlock(&e->mu);
    }
    flush_published(e);
    return NULL;
}

int es_engine_start_republisher(es_engine *e)
{
    atomic_store(&e->stopping, false);
    if (pthread_create(&e->republisher, NULL, republisher_main, e)) return ES_ENOMEM;
    e->started = true;
    return ES_OK;
}

int es_engine_start(es_engine *e)
{
    int total = 0;
    for (int i = 0; i < e->nkinds; i++)
        total += e->kinds[i].concurrency;
    e->threads = calloc((size_t)total + 1, sizeof *e->threads);
    if (!e->threads) return ES_ENOMEM;
    atomic_store(&e->stopping, false);
    for (int i = 0; i < e->nkinds; i++) {
        for (int t = 0; t < e->kinds[i].concurrency; t++) {
            worker_arg *a = malloc(sizeof *a);
            if (!a) return ES_ENOMEM;
            a->e = e;
            a->kind = &e->kinds[i];
            atomic_fetch_add(&e->alive, 1);
            if (pthread_create(&e->threads[e->nthreads], NULL, worker_main, a)) {
                atomic_fetch_sub(&e->alive, 1);
                free(a);
                return ES_ENOMEM;
            }
            e->nthreads++;
        }
        if (e->kinds[i].concurrency)
            es_info("jobs", "%d workers for kind %s (attempts %d, backoff %lld..%lld ms)",
                    e->kinds[i].concurrency, e->kinds[i].name, e->kinds[i].max_attempts,
                    (long long)e->kinds[i].base_ms, (long long)e->kinds[i].cap_ms);
    }
    if (pthread_create(&e->republisher, NULL, republisher_main, e)) return ES_ENOMEM;
    e->started = true;
    return ES_OK;
}

void es_engine_stop(es_engine *e, int64_t timeout_ms)
{
    if (!e || !e->started) return;
    pthread_mutex_lock(&e->mu);
    atomic_store(&e->stopping, true);
    pthread_cond_broadcast(&e->cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (timeout_ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
    while (atomic_load(&e->alive) > 0)
        if (pthread_cond_timedwait(&e->cv, &e->mu, &ts)) break;
    int left = atomic_load(&e->alive);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->republisher, NULL);
    if (left > 0) {
        /* still running: their messages stay unacknowledged, so the broker
         * delivers them again after this process exits */
        es_warn("jobs", "%d jobs still running after %lld ms; leaving them to be run again", left,
                (long long)timeout_ms);
        for (int i = 0; i < e->nthreads; i++)
            pthread_detach(e->threads[i]);
        e->nthreads = 0;
    } else {
        for (int i = 0; i < e->nthreads; i++)
            pthread_join(e->threads[i], NULL);
        e->nthreads = 0;
    }
    e->started = false;
}

void es_engine_destroy(es_engine *e)
{
    if (!e) return;
    es_engine_stop(e, e->cfg->shutdown_timeout_ms);
    if (atomic_load(&e->alive) > 0)
        return; /* detached workers still use it; the process is ending */
    flush_published(e);
    free(e->pending);
    free(e->threads);
    pthread_mutex_destroy(&e->mu);
    pthread_cond_destroy(&e->cv);
    free(e);
}
