/* api_events.c - /v1/events (and the seed's POST /events): events in, one at
 * a time or in batches, answered 202 only once durable; events and their
 * statistics out.  The pipeline is src/pipeline/events.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/events.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/metrics.h"
#include "http/api.h"

#define M_REJECTED "esteira_events_rejected_total"

static const char busy_msg[] = "the events could not be made durable now; send them again";

/* ------------------------------------------------------------------ one event */

typedef struct one_answer {
    es_defer *d;
    es_events *ev;
    size_t type;
    char id[ES_UUID_LEN + 1];
} one_answer;

static void one_done(void *arg, int err)
{
    one_answer *a = arg;
    if (err == ES_OK) {
        char body[128];
        int n = snprintf(body, sizeof body,
                         "{\"id\":\"%s\",\"status\":\"accepted\","
                         "\"message\":\"Event sent to processing\"}",
                         a->id);
        es_events_count_accepted(a->ev, a->type, 1);
        es_defer_reply_data(a->d, 202, "application/json", body, (size_t)n);
    } else {
        es_defer_reply_err(a->d, ES_EAGAIN, busy_msg);
    }
    free(a);
}

/* Hands rows to the publishers; the reply comes from done(answer).  On an
 * error the request is answered here and answer is still the caller's. */
static int submit(es_req *r, es_events *ev, es_buf *rows, size_t n, es_events_done_fn done,
                  void *answer, es_defer **slot)
{
    es_defer *d = es_req_defer(r);
    if (!d) {
        es_reply_err(r, ES_ENOMEM, NULL);
        return ES_ENOMEM;
    }
    *slot = d;
    int rc = es_events_submit(ev, rows->data, rows->len, n, done, answer);
    if (rc) es_defer_reply_err(d, ES_EAGAIN, busy_msg); /* through the handle, which it frees */
    return rc;
}

int api_events_post(es_req *r)
{
    es_app *app = es_req_app(r);
    json_t *v;
    if (es_req_json(r, &v)) return ES_EINVAL;
    json_t *errs = json_array();
    es_buf row;
    es_buf_init(&row, 0);
    one_answer *a = calloc(1, sizeof *a);
    if (!a || !errs) {
        json_decref(v);
        json_decref(errs);
        free(a);
        return es_reply_err(r, ES_ENOMEM, NULL);
    }
    a->ev = app->events;
    int rc = es_event_check(es_events_rules(app->events), v, es_req_tenant(r), es_now_ms(), &row,
                            a->id, &a->type, errs);
    json_decref(v);
    if (rc) {
        free(a);
        es_buf_finish(&row);
        if (rc != ES_EINVAL) {
            json_decref(errs);
            return es_reply_err(r, rc, NULL);
        }
        es_metric_add(M_REJECTED, "", 1);
        return es_reply_error(r, 400, "validation_failed", "the event is not valid", errs);
    }
    json_decref(errs);
    rc = submit(r, app->events, &row, 1, one_done, a, &a->d);
    if (rc) free(a);
    es_buf_finish(&row);
    return rc;
}

/* ------------------------------------------------------------------ batches */

typedef struct batch_answer {
    es_defer *d;
    es_events *ev;
    size_t accepted;
    char *body; /* the 202 body, made before the events were handed over */
    size_t *by_type;
} batch_answer;

static void batch_done(void *arg, int err)
{
    batch_answer *a = arg;
    if (err == ES_OK) {
        for (size_t i = 0; i < es_events_rules(a->ev)->ntypes; i++)
            if (a->by_type[i]) es_events_count_accepted(a->ev, i, a->by_type[i]);
        es_defer_reply_data(a->d, 202, "application/json", a->body, strlen(a->body));
    } else {
        es_defer_reply_err(a->d, ES_EAGAIN, busy_msg);
    }
    free(a->body);
    free(a->by_type);
    free(a);
}

typedef struct batch_ctx {
    const es_event_rules *rules;
    const char *tenant;
    int64_t now;
    es_buf rows;
    size_t accepted, seen;
    size_t *by_type;
    json_t *rejected;
    json_t *errs; /* one event's problems (reused: most events have none) */
} batch_ctx;

static int take(batch_ctx *b, const json_t *v, const char *parse_error)
{
    size_t index = b->seen++;
    json_t *errs = b->errs;
    json_array_clear(errs);
    int rc = ES_EINVAL;
    if (parse_error) {
        json_array_append_new(errs, json_pack("{s:s, s:s}", "field", "", "problem", parse_error));
    } else {
        char id[ES_UUID_LEN + 1];
        size_t type = 0;
        rc = es_event_check(b->rules, v, b->tenant, b->now, &b->rows, id, &type, errs);
        if (rc == ES_OK) {
            b->accepted++;
            b->by_type[type]++;
        }
    }
    if (rc == ES_EINVAL)
        json_array_append_new(b->rejected, json_pack("{s:I, s:o}", "index", (json_int_t)index,
                                                     "errors", json_deep_copy(errs)));
    return rc == ES_EINVAL ? ES_OK : rc;
}

int api_events_batch(es_req *r)
{
    es_app *app = es_req_app(r);
    const es_config *cfg = app->cfg;
    bool ndjson =
        es_req_media_is(r, "application/x-ndjson") || es_req_media_is(r, "application/ndjson") ||
        es_req_media_is(r, "application/jsonl") || es_req_media_is(r, "application/json-seq");
    json_t *arr = NULL;
    if (!ndjson) {
        if (es_req_json(r, &arr)) return ES_EINVAL;
        if (!json_is_array(arr)) {
            json_decref(arr);
            return es_reply_error(
                r, 400, "validation_failed", "a batch is a JSON array of events (or NDJSON)",
                json_pack("[{s:s, s:s}]", "field", "", "problem", "must be an array"));
        }
    }
    batch_ctx b = {.rules = es_events_rules(app->events),
                   .tenant = es_req_tenant(r),
                   .now = es_now_ms(),
                   .rejected = json_array(),
                   .errs = json_array()};
    b.by_type = calloc(b.rules->ntypes, sizeof *b.by_type);
    es_buf_init(&b.rows, 0);
    size_t body_len = 0;
    es_req_body(r, &body_len);
    /* a row is about the event's JSON plus its id and times: one allocation */
    int rc = b.by_type && b.rejected && b.errs ? es_buf_reserve(&b.rows, body_len + body_len / 2)
                                               : ES_ENOMEM;
    size_t count = 0;

    if (!rc && arr) {
        count = json_array_size(arr);
        if (count > (size_t)cfg->events_request_max) goto too_many;
        for (size_t i = 0; i < count && !rc; i++)
            rc = take(&b, json_array_get(arr, i), NULL);
    } else if (!rc) {
        size_t len;
        const char *body = es_req_body(r, &len);
        const char *end = body + len;
        for (const char *p = body; p < end && !rc;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *eol = nl ? nl : end;
            const char *s = p, *e = eol;
            while (s < e && (*s == ' ' || *s == '\t' || *s == '\r' || *s == 0x1e))
                s++; /* 0x1e: RFC 7464 record separator */
            while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
                e--;
            p = nl ? nl + 1 : end;
            if (s == e) continue;
            if (++count > (size_t)cfg->events_request_max) goto too_many;
            json_t *v = NULL;
            char err[256];
            if (es_json_parse(s, (size_t)(e - s), (int)cfg->json_max_depth, &v, err, sizeof err)) {
                char msg[300];
                snprintf(msg, sizeof msg, "not JSON: %s", err);
                rc = take(&b, NULL, msg);
            } else {
                rc = take(&b, v, NULL);
                json_decref(v);
            }
        }
    }
    json_decref(arr);
    arr = NULL;
    if (rc) goto fail;
    if (count == 0) {
        rc = es_reply_error(r, 400, "validation_failed", "the batch holds no events",
                            json_pack("[{s:s, s:s}]", "field", "", "problem", "empty"));
        goto done;
    }
    es_metric_add(M_REJECTED, "", (double)json_array_size(b.rejected));
    if (b.accepted == 0) {
        json_t *details = json_array();
        size_t i;
        json_t *rej;
        json_array_foreach(b.rejected, i, rej)
        {
            size_t k;
            json_t *e;
            json_array_foreach(json_object_get(rej, "errors"), k, e)
            {
                char field[128];
                snprintf(field, sizeof field, "[%lld].%s",
                         (long long)json_integer_value(json_object_get(rej, "index")),
                         json_string_value(json_object_get(e, "field")));
                json_array_append_new(details, json_pack("{s:s, s:O}", "field", field, "problem",
                                                         json_object_get(e, "problem")));
            }
        }
        rc = es_reply_error(r, 400, "validation_failed", "no event of the batch is valid", details);
        goto done;
    }
    batch_answer *a = calloc(1, sizeof *a);
    json_t *ok =
        json_pack("{s:I, s:O}", "accepted", (json_int_t)b.accepted, "rejected", b.rejected);
    if (!a || !ok || !(a->body = json_dumps(ok, JSON_COMPACT))) {
        json_decref(ok);
        if (a) free(a->body);
        free(a);
        rc = ES_ENOMEM;
        goto fail;
    }
    json_decref(ok);
    a->ev = app->events;
    a->accepted = b.accepted;
    a->by_type = b.by_type;
    b.by_type = NULL;
    rc = submit(r, app->events, &b.rows, b.accepted, batch_done, a, &a->d);
    if (rc) {
        free(a->by_type);
        free(a->body);
        free(a);
    }
    goto done;

too_many:
    json_decref(arr);
    {
        char msg[96];
        snprintf(msg, sizeof msg, "a batch holds at most %lld events (ESTEIRA_EVENTS_REQUEST_MAX)",
                 (long long)cfg->events_request_max);
        rc = es_reply_error(r, 413, "payload_too_large", msg, NULL);
    }
    goto done;
fail:
    rc = es_reply_err(r, rc, NULL);
done:
    json_decref(b.errs);
    json_decref(b.rejected);
    free(b.by_type);
    es_buf_finish(&b.rows);
    return rc;
}

/* ------------------------------------------------------------------ reading */

static int time_param(es_req *r, const char *name, int64_t *out)
{
    const char *v = es_req_query(r, name);
    if (!v || !*v) return ES_OK;
    if (es_time_parse_iso(v, out) == ES_OK || es_parse_i64(v, 0, INT64_MAX, out) == ES_OK)
        return ES_OK;
    es_reply_error(r, 400, "validation_failed", "bad time",
                   json_pack("[{s:s, s:s}]", "field", name, "problem",
                             "an RFC 3339 time or milliseconds since 1970"));
    return ES_EINVAL;
}

int api_events_list(es_req *r)
{
    es_app *app = es_req_app(r);
    int limit;
    if (es_req_limit(r, 100, 1000, &limit)) return ES_OK;
    es_event_query q = {.tenant = es_req_tenant(r),
                        .user_id = es_req_query(r, "userId"),
                        .event_type = es_req_query(r, "eventType"),
                        .from_ms = INT64_MIN,
                        .to_ms = INT64_MAX,
                        .cursor = es_req_query(r, "cursor"),
                        .limit = limit};
    if (time_param(r, "from", &q.from_ms) || time_param(r, "to", &q.to_ms)) return ES_OK;
    json_t *items = NULL;
    char *next = NULL;
    int rc = es_events_query(app->events, &q, &items, &next);
    return es_reply_page(r, rc, items, next);
}

int api_events_stats(es_req *r)
{
    json_t *o = NULL;
    int rc = es_events_stats(es_req_app(r)->events, es_req_tenant(r), &o);
    if (rc) return es_reply_err(r, rc, NULL);
    return es_reply_json(r, 200, o);
}
