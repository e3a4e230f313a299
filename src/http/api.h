/* api.h - the handlers behind the routes of src/http/routes.c, one file per
 * group of endpoints (api_ops.c, api_jobs.c, api_blobs.c). */
#ifndef ESTEIRA_HTTP_API_H
#define ESTEIRA_HTTP_API_H

#include "esteira/http.h"

/* api_ops.c */
int api_healthz(es_req *r);
int api_readyz(es_req *r);
int api_metrics(es_req *r);
int api_openapi(es_req *r);

/* api_jobs.c */
int api_jobs_create(es_req *r);
int api_jobs_list(es_req *r);
int api_jobs_get(es_req *r);
int api_jobs_retry(es_req *r);
int api_jobs_cancel(es_req *r);
int api_dlq_list(es_req *r);
int api_dlq_retry(es_req *r);
int api_dlq_delete(es_req *r);

/* api_uploads.c */
int api_uploads_start(es_req *r);
int api_uploads_chunk(es_req *r, const char *data, size_t len);
int api_uploads_end(es_req *r);
int api_uploads_get(es_req *r);
int api_uploads_list(es_req *r);
int api_uploads_retry(es_req *r);
int api_uploads_rejects(es_req *r);
int api_uploads_presign(es_req *r);
int api_uploads_complete(es_req *r);

/* api_sse.c: Server-Sent Events */
int api_uploads_events(es_req *r);

/* api_events.c */
int api_events_post(es_req *r);
int api_events_batch(es_req *r);
int api_events_list(es_req *r);
int api_events_stats(es_req *r);

/* api_datasets.c */
int api_datasets_create(es_req *r);
int api_datasets_list(es_req *r);
int api_datasets_get(es_req *r);
int api_datasets_rows(es_req *r);

/* api_blobs.c: esteira's own signed-URL endpoint for the file: blob backend */
int api_blob_put_start(es_req *r);
int api_blob_put_chunk(es_req *r, const char *data, size_t len);
int api_blob_put_end(es_req *r);
int api_blob_get(es_req *r);

#endif
