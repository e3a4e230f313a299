/* upload.h - CSV uploads: a file streamed in over HTTP becomes rows in a
 * dataset's table, in batches carried by the broker.
 *
 *   API process                               worker processes
 *   ----------------------------------------  ------------------------------------
 *   body -> uploads/{id}/source.csv (blob)    job upload_batch {upload, seq, offset,
 *        -> CSV parser: header checked,          length, line, rows}
 *           batches cut at record starts      -> ranged read of source.csv -> parser
 *           (every batch_rows rows)           -> values validated, normalised
 *   end: source committed; in ONE store       -> uploads/{id}/batch-NNNNNN.json
 *        transaction the batch ledger, the    -> ONE transaction: rows (copy_merge:
 *        batch jobs and status `queued`;         existing keys = duplicates), rejects,
 *        then the jobs' messages go out          ledger row, upload counters, `done`
 *
 * A batch is applied once: its ledger row is marked done in the transaction
 * that inserts its rows, so a redelivered or retried batch changes nothing.
 * The last batch to finish settles the upload (done, or failed when a batch
 * is dead or too many rows were rejected); a dead batch settles it too, and
 * es_upload_retry re-drives the dead batches. */
#ifndef ESTEIRA_UPLOAD_H
#define ESTEIRA_UPLOAD_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/dataset.h"
#include "esteira/store.h"
#include "esteira/util.h"

struct es_app;

#define ES_UPLOAD_KIND "upload_batch"

/* ---- datasets (src/pipeline/registry.c): the built-in ones, then those
 * defined with es_datasets_create (table `datasets`) */
int es_datasets_get(es_store *s, const char *name, es_dataset *out); /* ES_ENOTFOUND */
/* Creates the dataset's table when this process has not yet made sure it exists. */
int es_datasets_ensure_table(es_store *s, const es_dataset *d);
/* Stores a new definition and creates its table.  ES_ECONFLICT when the name exists. */
int es_datasets_create(es_store *s, const es_dataset *d);
/* [{definition}, …], built-in first, then by name */
int es_datasets_list(es_store *s, json_t **out);
/* Defines the datasets of the *.json files in dir (one definition each), at
 * start: a stored one must be the same, or ES_ECONFLICT.  Errors name the file
 * and the field.  NULL or "" is a no-op. */
int es_datasets_load_dir(es_store *s, const char *dir);
/* A page of one tenant's rows of d, in key order, as a JSON array of objects
 * named by the CSV headers (numbers, booleans and json as such), each with
 * "_upload" and "_line".  Values are compared as es_value_normalize writes
 * them (unescaped).  *next = the key of the page's last row when more follow
 * (malloc'd; pass it back as after), else NULL. */
typedef struct es_dataset_match {
    int col;           /* index in d->cols */
    const char *value; /* NULL: the column is NULL */
} es_dataset_match;
typedef struct es_dataset_page {
    const char *tenant;
    const es_dataset_match *match;
    int nmatch;
    const char *after; /* NULL: from the first row */
    int limit;
} es_dataset_page;
int es_datasets_rows(es_store *s, const es_dataset *d, const es_dataset_page *q, es_buf *items,
                     char **next);

/* ---- receiving (the API side) */
typedef struct es_upload_rx es_upload_rx;

typedef struct es_upload_req {
    const char *tenant;
    const char *dataset;
    const char *filename;        /* optional */
    const char *idempotency_key; /* optional */
    const char *trace_id;        /* optional */
} es_upload_req;

/* ES_ENOTFOUND: no such dataset.  When the idempotency key names an accepted
 * upload, *existing receives its status (and *out is NULL): answer with it. */
int es_upload_begin(struct es_app *app, const es_upload_req *req, es_upload_rx **out,
                    json_t **existing);
/* The file's bytes, in pieces of any size.  ES_EINVAL: the header does not fit
 * the dataset (es_upload_rx_problems) or the CSV cannot be parsed on
 * (es_upload_rx_error names the line); the upload is then failed. */
int es_upload_feed(es_upload_rx *rx, const char *data, size_t len);
/* The end of the file: commits the source, queues the batches.  *status = the
 * upload as the API shows it, and rx is freed.  On an error rx stays: answer
 * (es_upload_rx_error, es_upload_rx_problems), then es_upload_abort. */
int es_upload_end(es_upload_rx *rx, json_t **status);
/* The client went away or the upload was refused: marked failed, source
 * dropped, rx freed.  NULL is a no-op. */
void es_upload_abort(es_upload_rx *rx, const char *why);
const char *es_upload_rx_id(const es_upload_rx *rx);
json_t *es_upload_rx_problems(const es_upload_rx *rx); /* borrowed; NULL when none */
const char *es_upload_rx_error(const es_upload_rx *rx);

/* ---- presigned: the client PUTs the file straight to storage */
/* {id, dataset, status, url, method, headers, expiresAt}; ES_ELIMIT when size
 * is over ESTEIRA_MAX_UPLOAD. */
int es_upload_presign(struct es_app *app, const es_upload_req *req, int64_t size, json_t **out);
/* The PUT is done: a worker (job upload_scan) reads the object through the
 * same receiver.  ES_ECONFLICT when the object is not there; ES_EINVAL when
 * the upload is not a presigned one.  Idempotent. */
int es_upload_complete(struct es_app *app, const char *tenant, const char *id, json_t **out);

/* ---- reading */
/* SPEC.md's view: {id, dataset, status, bytes, rows:{…}, batches:{…}, …} */
int es_upload_get(struct es_app *app, const char *tenant, const char *id, json_t **out);
typedef struct es_upload_filter {
    const char *tenant;
    const char *dataset; /* NULL = any */
    const char *status;  /* NULL = any */
    const char *cursor;  /* from a previous page */
    int limit;
} es_upload_filter;
int es_upload_list(struct es_app *app, const es_upload_filter *f, json_t **items, char **next);
/* One page of rejects after (line, column) `after` (NULL = from the start),
 * as CSV lines "line,column,reason,raw\n" appended to out; *more = another
 * page follows; *next_after receives the cursor for it (malloc'd). */
int es_upload_rejects_page(struct es_app *app, const char *id, const char *after, int limit,
                           es_buf *out, char **next_after);
/* failed -> processing: the dead batches run again.  ES_ECONFLICT when the
 * upload is not failed or its file never arrived whole. */
int es_upload_retry(struct es_app *app, const char *tenant, const char *id);

/* Registers the upload_batch job kind (workers). */
int es_uploads_register(struct es_app *app);

#endif
