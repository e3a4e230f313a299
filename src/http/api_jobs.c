/* api_jobs.c - /v1/jobs and /v1/dlq: the job engine over HTTP, per tenant. */
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "http/api.h"

static json_t *job_with_history(es_app *app, const es_job *j)
{
    json_t *o = es_job_json(j), *h = NULL;
    if (es_job_history(app->engine, j->id, &h) == ES_OK) json_object_set_new(o, "history", h);
    return o;
}

static json_t *field_problem(const char *field, const char *problem)
{
    return json_pack("{s:s, s:s}", "field", field, "problem", problem);
}

int api_jobs_create(es_req *r)
{
    es_app *app = es_req_app(r);
    json_t *body = NULL;
    if (es_req_json(r, &body)) return ES_OK; /* answered */
    json_t *details = json_array();
    const char *kind = es_json_str(body, "kind");
    const char **kinds;
    int nk = es_engine_kinds(app->engine, &kinds);
    bool known = false;
    for (int i = 0; kind && i < nk; i++)
        known = known || strcmp(kinds[i], kind) == 0;
    if (!json_is_object(body))
        json_array_append_new(details, field_problem("", "must be a JSON object"));
    else if (!kind)
        json_array_append_new(details, field_problem("kind", "required string"));
    else if (!known)
        json_array_append_new(details, field_problem("kind", "unknown job kind"));
    json_t *payload = json_object_get(body, "payload");
    if (payload && !json_is_object(payload))
        json_array_append_new(details, field_problem("payload", "must be an object"));
    json_t *ma = json_object_get(body, "maxAttempts"), *dl = json_object_get(body, "delayMs");
    if (ma && (!json_is_integer(ma) || json_integer_value(ma) < 1 || json_integer_value(ma) > 100))
        json_array_append_new(details, field_problem("maxAttempts", "integer from 1 to 100"));
    if (dl && (!json_is_integer(dl) || json_integer_value(dl) < 0 ||
               json_integer_value(dl) > 7LL * 24 * 3600 * 1000))
        json_array_append_new(details, field_problem("delayMs", "integer from 0 to 604800000"));
    const char *idem = es_req_header(r, "Idempotency-Key");
    if (idem && (strlen(idem) == 0 || strlen(idem) > 200))
        json_array_append_new(details, field_problem("Idempotency-Key", "1 to 200 characters"));
    if (json_array_size(details)) {
        json_decref(body);
        return es_reply_error(r, 400, "validation_failed", "the job request is not valid", details);
    }
    json_decref(details);
    char *payload_s = payload ? es_json_dump(payload) : NULL;
    const char *traceparent = es_req_header(r, "traceparent");
    char trace[33] = {0};
    if (traceparent && strlen(traceparent) >= 55) memcpy(trace, traceparent + 3, 32);
    es_job_req req = {.kind = kind,
                      .tenant = es_req_tenant(r),
                      .payload = payload_s,
                      .idempotency_key = idem,
                      .trace_id = trace[0] ? trace : NULL,
                      .max_attempts = ma ? (int)json_integer_value(ma) : 0,
                      .delay_ms = dl ? json_integer_value(dl) : 0};
    es_job j;
    bool existed = false;
    int rc = es_job_submit(app->engine, &req, &j, &existed);
    free(payload_s);
    json_decref(body);
    if (rc == ES_EAGAIN)
        return es_reply_err(r, rc, "the job could not be stored and queued now; retry later");
    if (rc) return es_reply_err(r, rc, "could not create the job");
    if (existed) es_reply_header(r, "Idempotent-Replayed", "true");
    rc = es_reply_json(r, existed ? 200 : 201, es_job_json(&j));
    es_job_finish(&j);
    return rc;
}

static int list(es_req *r, int forced_status)
{
    es_app *app = es_req_app(r);
    int limit;
    if (es_req_limit(r, 50, 500, &limit)) return ES_OK;
    es_job_filter f = {.tenant = es_req_tenant(r),
                       .kind = es_req_query(r, "kind"),
                       .status = forced_status,
                       .cursor = es_req_query(r, "cursor"),
                       .limit = limit};
    const char *st = es_req_query(r, "status");
    if (forced_status < 0 && st) {
        f.status = es_job_status_parse(st);
        if (f.status < 0)
            return es_reply_error(
                r, 400, "validation_failed", "unknown status",
                json_pack("[{s:s, s:s}]", "field", "status", "problem",
                          "one of queued, processing, done, error, dead, canceled"));
    }
    json_t *items = NULL;
    char *next = NULL;
    int rc = es_job_list(app->engine, &f, &items, &next);
    return es_reply_page(r, rc, items, next);
}

int api_jobs_list(es_req *r)
{
    return list(r, -1);
}

int api_dlq_list(es_req *r)
{
    return list(r, ES_JOB_DEAD);
}

int api_jobs_get(es_req *r)
{
    es_app *app = es_req_app(r);
    es_job j;
    int rc = es_job_get(app->engine, es_req_tenant(r), es_req_param(r, "id"), &j);
    if (rc)
        return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such job" : "could not read the job");
    rc = es_reply_json(r, 200, job_with_history(app, &j));
    es_job_finish(&j);
    return rc;
}

/* Runs an action, then answers with the job as it is now. */
static int act(es_req *r, int (*fn)(es_engine *, const char *, const char *), unsigned ok_status,
               const char *conflict)
{
    es_app *app = es_req_app(r);
    const char *id = es_req_param(r, "id");
    int rc = fn(app->engine, es_req_tenant(r), id);
    if (rc == ES_ECONFLICT) return es_reply_error(r, 409, "conflict", conflict, NULL);
    if (rc)
        return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such job" : "could not change the job");
    es_job j;
    if ((rc = es_job_get(app->engine, es_req_tenant(r), id, &j)))
        return es_reply_err(r, rc, "could not read the job");
    rc = es_reply_json(r, ok_status, job_with_history(app, &j));
    es_job_finish(&j);
    return rc;
}

int api_jobs_retry(es_req *r)
{
    return act(r, es_job_retry, 202, "only a job in error, dead or canceled can be retried");
}

int api_jobs_cancel(es_req *r)
{
    return act(r, es_job_cancel, 200,
               "only a queued job or one waiting for a retry can be canceled");
}

int api_dlq_retry(es_req *r)
{
    es_app *app = es_req_app(r);
    es_job j;
    int rc = es_job_get(app->engine, es_req_tenant(r), es_req_param(r, "id"), &j);
    if (rc) return es_reply_err(r, rc, "no such dead job");
    bool dead = j.status == ES_JOB_DEAD;
    es_job_finish(&j);
    if (!dead) return es_reply_error(r, 409, "conflict", "the job is not dead", NULL);
    return act(r, es_job_retry, 202, "the job is not dead");
}

int api_dlq_delete(es_req *r)
{
    es_app *app = es_req_app(r);
    int rc = es_job_delete_dead(app->engine, es_req_tenant(r), es_req_param(r, "id"));
    if (rc == ES_ECONFLICT) return es_reply_error(r, 409, "conflict", "the job is not dead", NULL);
    if (rc)
        return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such dead job" : "could not delete");
    return es_reply_data(r, 204, "application/json", "", 0);
}
