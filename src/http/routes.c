/* routes.c - every endpoint of the API, in one table. /openapi.json is
 * generated from it, so it cannot fall out of date. */
#include "esteira/app.h"
#include "http/api.h"

#define PUB    ES_SCOPE_PUBLIC
#define READ   (ES_SCOPE_READ | ES_SCOPE_ADMIN)
#define ADMIN  ES_SCOPE_ADMIN
#define INGEST (ES_SCOPE_INGEST | ES_SCOPE_ADMIN)

static const es_route routes[] = {
    /* operations */
    {"GET", "/healthz", PUB, api_healthz, NULL, NULL, NULL, "Liveness: the process answers"},
    {"GET", "/readyz", PUB, api_readyz, NULL, NULL, NULL, "Readiness: every backend is reachable"},
    {"GET", "/metrics", PUB, api_metrics, NULL, NULL, NULL, "Prometheus metrics"},
    {"GET", "/openapi.json", PUB, api_openapi, NULL, NULL, NULL, "This API description"},
    /* jobs and dead letters */
    {"POST", "/v1/jobs", ADMIN, api_jobs_create, NULL, NULL, NULL,
     "Create a job of a registered kind {kind, payload?, maxAttempts?, delayMs?}"},
    {"GET", "/v1/jobs", READ, api_jobs_list, NULL, NULL, NULL,
     "List jobs (?kind=&status=&limit=&cursor=), newest first"},
    {"GET", "/v1/jobs/{id}", READ, api_jobs_get, NULL, NULL, NULL, "A job with its history"},
    {"POST", "/v1/jobs/{id}/retry", ADMIN, api_jobs_retry, NULL, NULL, NULL,
     "Run a failed, dead or canceled job again"},
    {"POST", "/v1/jobs/{id}/cancel", ADMIN, api_jobs_cancel, NULL, NULL, NULL,
     "Cancel a queued or failed job"},
    {"GET", "/v1/dlq", READ, api_dlq_list, NULL, NULL, NULL,
     "Dead-lettered jobs (?kind=&limit=&cursor=)"},
    {"POST", "/v1/dlq/{id}/retry", ADMIN, api_dlq_retry, NULL, NULL, NULL, "Re-drive a dead job"},
    {"DELETE", "/v1/dlq/{id}", ADMIN, api_dlq_delete, NULL, NULL, NULL, "Discard a dead job"},
    /* CSV uploads */
    {"POST", "/v1/uploads", INGEST, api_uploads_end, api_uploads_start, api_uploads_chunk, NULL,
     "Upload a CSV file (?dataset=) as text/csv or a multipart/form-data part; 202 once received"},
    {"POST", "/upload", INGEST, api_uploads_end, api_uploads_start, api_uploads_chunk, NULL,
     "Alias of POST /v1/uploads (multipart field csv; dataset defaults to debts)"},
    {"GET", "/v1/uploads", READ, api_uploads_list, NULL, NULL, NULL,
     "List uploads (?dataset=&status=&limit=&cursor=), newest first"},
    {"GET", "/v1/uploads/{id}", READ, api_uploads_get, NULL, NULL, NULL,
     "An upload: status, bytes, rows (total, inserted, duplicate, rejected), batches"},
    {"GET", "/v1/uploads/{id}/rejects", READ, api_uploads_rejects, NULL, NULL, NULL,
     "The rejected values of an upload, as CSV line,column,reason,raw"},
    {"GET", "/v1/uploads/{id}/events", READ, api_uploads_events, NULL, NULL, NULL,
     "Server-Sent Events of an upload: status, progress, then completed or failed"},
    {"POST", "/v1/uploads/{id}/retry", INGEST, api_uploads_retry, NULL, NULL, NULL,
     "Run the failed batches of a failed upload again"},
    {"POST", "/v1/uploads/presign", INGEST, api_uploads_presign, NULL, NULL, NULL,
     "A signed URL to PUT a CSV straight to storage {dataset, filename?, size?}"},
    {"POST", "/v1/uploads/{id}/complete", INGEST, api_uploads_complete, NULL, NULL, NULL,
     "The presigned PUT is done: a worker reads the file from storage"},
    /* events: 202 once durable (confirmed by the broker), stored in batches */
    {"POST", "/v1/events", INGEST, api_events_post, NULL, NULL, NULL,
     "Send an event {userId, eventType, eventData?, sessionId, eventId?, occurredAt?}; 202 once "
     "durable"},
    {"POST", "/events", INGEST, api_events_post, NULL, NULL, NULL, "Alias of POST /v1/events"},
    {"POST", "/v1/events/batch", INGEST, api_events_batch, NULL, NULL, NULL,
     "Send events as a JSON array or NDJSON; 202 {accepted, rejected:[{index, errors}]}"},
    {"GET", "/v1/events", READ, api_events_list, NULL, NULL, NULL,
     "Stored events, newest first (?userId=&eventType=&from=&to=&limit=&cursor=)"},
    {"GET", "/v1/events/stats", READ, api_events_stats, NULL, NULL, NULL,
     "Event totals by type, flushes (batches) and flush lag"},
    /* datasets: definitions shared by every tenant, rows per tenant */
    {"POST", "/v1/datasets", ADMIN, api_datasets_create, NULL, NULL, NULL,
     "Define a dataset {name, columns:[{name, header?, type, required?, …}], key}"},
    {"GET", "/v1/datasets", READ, api_datasets_list, NULL, NULL, NULL,
     "Every dataset's definition, built-in first"},
    {"GET", "/v1/datasets/{name}", READ, api_datasets_get, NULL, NULL, NULL,
     "A dataset's definition"},
    {"GET", "/v1/datasets/{name}/rows", READ, api_datasets_rows, NULL, NULL, NULL,
     "The caller's rows of a dataset in key order (?limit=&cursor=, ?<column>=<value> filters)"},
    /* signed URLs of the file: blob backend */
    {"PUT", "/v1/blobs/{key*}", PUB, api_blob_put_end, api_blob_put_start, api_blob_put_chunk,
     "/v1/blobs", "Upload an object with a signed URL"},
    {"GET", "/v1/blobs/{key*}", PUB, api_blob_get, NULL, NULL, "/v1/blobs",
     "Download an object with a signed URL"},
};

const es_route *es_api_routes(size_t *n)
{
    *n = sizeof routes / sizeof routes[0];
    return routes;
}
