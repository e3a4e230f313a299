/* api_ops.c - /healthz, /readyz, /metrics, /openapi.json */
#include <stdio.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/metrics.h"
#include "http/api.h"

int api_healthz(es_req *r)
{
    return es_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

int api_readyz(es_req *r)
{
    es_app *app = es_req_app(r);
    struct {
        const char *name;
        int rc;
    } checks[] = {
        {"store", es_store_ping(app->store)},
        {"broker", es_broker_ping(app->broker)},
        {"cache", es_cache_ping(app->cache)},
        {"blob", app->blob ? es_blob_ping(app->blob) : ES_EAGAIN},
    };
    json_t *c = json_object();
    bool ok = true;
    for (size_t i = 0; i < ES_ARRAY_LEN(checks); i++) {
        json_object_set_new(c, checks[i].name,
                            json_string(checks[i].rc ? es_strerror(checks[i].rc) : "ok"));
        ok = ok && checks[i].rc == ES_OK;
    }
    if (!ok) es_reply_header(r, "Retry-After", "1");
    return es_reply_json(
        r, ok ? 200 : 503,
        json_pack("{s:s, s:o}", "status", ok ? "ready" : "unavailable", "checks", c));
}

/* Gauges that are read at scrape time: jobs by kind and status, queue depths. */
static void refresh_gauges(es_app *app)
{
    static const double none[] = {0};
    es_metric_define("esteira_jobs", ES_METRIC_GAUGE, "Jobs by kind and status", none, 0);
    es_metric_define("esteira_queue_messages", ES_METRIC_GAUGE,
                     "Broker messages by queue and state (ready includes delayed retries)", none,
                     0);
    json_t *counts = NULL;
    if (es_job_counts(app->engine, &counts) == ES_OK) {
        const char *kind;
        json_t *by;
        json_object_foreach(counts, kind, by)
        {
            const char *st;
            json_t *n;
            json_object_foreach(by, st, n)
            {
                char labels[160];
                snprintf(labels, sizeof labels, "kind=\"%s\",status=\"%s\"", kind, st);
                es_metric_set("esteira_jobs", labels, (double)json_integer_value(n));
            }
        }
        json_decref(counts);
    }
    const char **kinds;
    int nk = es_engine_kinds(app->engine, &kinds);
    for (int i = 0; i < nk; i++) {
        for (int dead = 0; dead < 2; dead++) {
            char q[80], labels[160];
            snprintf(q, sizeof q, "jobs.%s%s", kinds[i], dead ? ".dead" : "");
            int64_t ready = 0, unacked = 0;
            if (es_broker_depth(app->broker, q, &ready, &unacked) != ES_OK) continue;
            snprintf(labels, sizeof labels, "queue=\"%s\",state=\"ready\"", q);
            es_metric_set("esteira_queue_messages", labels, (double)ready);
            snprintf(labels, sizeof labels, "queue=\"%s\",state=\"unacked\"", q);
            es_metric_set("esteira_queue_messages", labels, (double)unacked);
        }
    }
}

int api_metrics(es_req *r)
{
    refresh_gauges(es_req_app(r));
    es_buf b;
    es_buf_init(&b, 0);
    int rc = es_metrics_render(&b);
    if (rc) {
        es_buf_finish(&b);
        return es_reply_err(r, rc, "could not render metrics");
    }
    rc = es_reply_data(r, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
    es_buf_finish(&b);
    return rc;
}

/* "/v1/jobs/{id}" -> OpenAPI path "/v1/jobs/{id}" with its parameters; "{key*}" -> "{key}" */
static json_t *path_params(const char *pattern, char *oapath, size_t len)
{
    json_t *params = json_array();
    size_t o = 0;
    for (const char *p = pattern; *p && o + 1 < len; p++) {
        if (*p == '{') {
            const char *end = strchr(p, '}');
            if (!end) break;
            size_t n = (size_t)(end - p - 1);
            if (n && p[n] == '*') n--;
            char name[64];
            snprintf(name, sizeof name, "%.*s", (int)n, p + 1);
            json_array_append_new(params,
                                  json_pack("{s:s, s:s, s:b, s:{s:s}}", "name", name, "in", "path",
                                            "required", 1, "schema", "type", "string"));
            o += (size_t)snprintf(oapath + o, len - o, "{%s}", name);
            p = end;
        } else {
            oapath[o++] = *p;
        }
    }
    oapath[o < len ? o : len - 1] = 0;
    return params;
}

int api_openapi(es_req *r)
{
    size_t n;
    const es_route *routes = es_api_routes(&n);
    json_t *paths = json_object();
    for (size_t i = 0; i < n; i++) {
        char path[256], method[16];
        json_t *params = path_params(routes[i].pattern, path, sizeof path);
        size_t k = 0;
        for (; routes[i].method[k] && k < sizeof method - 1; k++)
            method[k] = (char)(routes[i].method[k] | 0x20);
        method[k] = 0;
        json_t *item = json_object_get(paths, path);
        if (!item) json_object_set_new(paths, path, item = json_object());
        json_t *op = json_pack("{s:s, s:o, s:{s:{s:s}}}", "summary",
                               routes[i].summary ? routes[i].summary : "", "parameters", params,
                               "responses", "default", "description",
                               "JSON; errors as {error:{code,message,details},requestId}");
        if (!(routes[i].scope & ES_SCOPE_PUBLIC)) {
            json_object_set_new(op, "security", json_pack("[{s:[]}]", "bearer"));
        } else {
            json_object_set_new(op, "security", json_array());
        }
        json_object_set_new(item, method, op);
    }
    json_t *doc =
        json_pack("{s:s, s:{s:s, s:s, s:s}, s:o, s:{s:{s:{s:s, s:s}}}, s:[{s:[]}]}", "openapi",
                  "3.0.3", "info", "title", "esteira", "version", "0.1.0", "description",
                  "Moves large CSV files and event streams into a database and object storage, "
                  "asynchronously, without losing or duplicating a row.",
                  "paths", paths, "components", "securitySchemes", "bearer", "type", "http",
                  "scheme", "bearer", "security", "bearer");
    return es_reply_json(r, 200, doc);
}
