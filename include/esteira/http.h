/* http.h - the HTTP server (libmicrohttpd, epoll + thread pool), its router
 * and what a handler sees.
 *
 * A route names a method, a pattern ("/v1/jobs/{id}/retry"), a scope and a
 * handler.  By default the body is buffered up to ESTEIRA_MAX_BODY (413
 * beyond) and the handler runs once it is complete.  A streaming route
 * (start/chunk set) sees the body as it arrives, in bounded chunks, up to
 * ESTEIRA_MAX_UPLOAD: start() runs after the headers (and may answer at once,
 * e.g. 422), chunk() per piece, handle() at the end.  Every response carries
 * X-Request-Id; errors have the JSON shape of SPEC.md. */
#ifndef ESTEIRA_HTTP_H
#define ESTEIRA_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "esteira/util.h"

struct es_app;
typedef struct es_req es_req;
typedef struct es_http es_http;

typedef int (*es_handler)(es_req *r);
typedef int (*es_chunk_fn)(es_req *r, const char *data, size_t len);

enum {
    ES_SCOPE_INGEST = 1 << 0,
    ES_SCOPE_READ = 1 << 1,
    ES_SCOPE_REPORTS = 1 << 2,
    ES_SCOPE_FILES = 1 << 3,
    ES_SCOPE_ADMIN = 1 << 4,
    ES_SCOPE_ALL = 0x1f,
    ES_SCOPE_PUBLIC = 1 << 30, /* no token needed (health, metrics, signed URLs) */
};

typedef struct es_route {
    const char *method;  /* "GET", "POST", … */
    const char *pattern; /* "/v1/jobs/{id}"; a final "{rest*}" matches the remaining path */
    unsigned scope;      /* ES_SCOPE_* needed (any one of them), or ES_SCOPE_PUBLIC */
    es_handler handle;
    es_handler start;    /* streaming routes: after the headers */
    es_chunk_fn chunk;   /* streaming routes: per body chunk */
    const char *name;    /* the route's label in metrics (defaults to the pattern) */
    const char *summary; /* one line for /openapi.json */
} es_route;

/* ---- the router (pure: used by the server and fuzzed alone) */
#define ES_ROUTE_MAX_PARAMS 4
typedef struct es_route_match {
    const es_route *route;
    int nparams;
    struct {
        const char *name;
        size_t name_len;
        char value[256]; /* percent-decoded */
    } params[ES_ROUTE_MAX_PARAMS];
    bool method_mismatch; /* the path exists with another method (405) */
} es_route_match;

/* ES_OK, ES_ENOTFOUND (404 or, with method_mismatch, 405), ES_EINVAL (bad escape / too long) */
int es_route_find(const es_route *routes, size_t n, const char *method, const char *path,
                  es_route_match *m);

/* Query strings: looks up name in a raw query ("a=1&b=x%20y"), decoding into out.
 * ES_ENOTFOUND when absent, ES_ELIMIT when the value does not fit, ES_EINVAL on a bad escape. */
int es_query_get(const char *query, const char *name, char *out, size_t outlen);

/* ---- the server */
int es_http_create(struct es_app *app, const es_route *routes, size_t nroutes, es_http **out);
int es_http_start(es_http *h);           /* binds ESTEIRA_HOST:ESTEIRA_PORT */
uint16_t es_http_port(const es_http *h); /* the bound port (after start; port 0 = any free one) */
void es_http_stop(es_http *h);           /* stops accepting; waits for in-flight requests */
void es_http_destroy(es_http *h);

/* ---- what a handler sees */
struct es_app *es_req_app(es_req *r);
const char *es_req_method(es_req *r);
const char *es_req_path(es_req *r);
const char *es_req_id(es_req *r);
const char *es_req_param(es_req *r, const char *name); /* path parameter */
const char *es_req_header(es_req *r, const char *name);
const char *es_req_raw_query(es_req *r); /* "" when none */
/* Decoded query value, or NULL; valid for the request's life. */
const char *es_req_query(es_req *r, const char *name);
/* The buffered body (buffered routes). */
const char *es_req_body(es_req *r, size_t *len);
/* The request's Content-Type is this media type (case aside; parameters
 * such as "; charset=utf-8" allowed). */
bool es_req_media_is(es_req *r, const char *type);
/* Parses the body as a JSON object/array (depth-bounded).  On failure it has
 * already answered 400 (malformed) or 415 (not JSON) and returns an error. */
int es_req_json(es_req *r, json_t **out);
/* Who is calling (after auth). */
const char *es_req_tenant(es_req *r);
unsigned es_req_scopes(es_req *r);
/* A per-request slot for streaming handlers; free_fn runs when the request ends.
 * Setting a different state runs the previous free_fn on the previous state;
 * setting the same pointer only replaces free_fn (NULL disarms it). */
void es_req_set_state(es_req *r, void *state, void (*free_fn)(void *));
void *es_req_state(es_req *r);
/* Streaming routes with a multipart/form-data body: called from start(), it
 * has the parts decoded as they arrive; fn then receives each part's content
 * piece by piece (off = where the piece lies in the part; 0 starts a new part)
 * instead of chunk() seeing the raw body.  ES_EINVAL when the body is not
 * multipart.  A malformed body is answered 400. */
typedef int (*es_part_fn)(es_req *r, const char *name, const char *filename,
                          const char *content_type, const char *data, size_t len, uint64_t off);
int es_req_multipart(es_req *r, es_part_fn fn);
/* A page of a list: rc from the lister (ES_EINVAL = a bad cursor, 400);
 * {items, nextCursor}.  Takes items and next. */
int es_reply_page(es_req *r, int rc, json_t *items, char *next);
/* Parses "limit" (1..max, default def); answers 400 itself on a bad value. */
int es_req_limit(es_req *r, int def, int max, int *out);

/* ---- answering (exactly one reply per request) */
void es_reply_header(es_req *r, const char *name, const char *value);
int es_reply_json(es_req *r, unsigned status, json_t *body); /* steals body */
int es_reply_data(es_req *r, unsigned status, const char *content_type, const void *data,
                  size_t len);
/* The SPEC.md error body.  details: JSON array of {field, problem} or NULL (stolen). */
int es_reply_error(es_req *r, unsigned status, const char *code, const char *message,
                   json_t *details);
/* Maps an es_err to a status and code (ES_ENOTFOUND -> 404 not_found, …). */
int es_reply_err(es_req *r, int err, const char *message);
/* A streamed body: read() fills buf and returns bytes, 0 at the end, <0 on error.
 * size -1 = unknown (chunked).  free_fn(arg) runs when the response is done. */
typedef long (*es_reply_read_fn)(void *arg, uint64_t pos, char *buf, size_t max);
int es_reply_stream(es_req *r, unsigned status, const char *content_type, int64_t size,
                    es_reply_read_fn read, void *arg, void (*free_fn)(void *));

/* A streamed body that may have nothing to send for a while (Server-Sent
 * Events, long polls).  Its read() returns ES_REPLY_LATER when it has nothing
 * now: the connection is then parked - it holds no thread - until
 * es_stream_wake() (from any thread) or the delay read() set with
 * es_stream_wake_in() has passed; then read() runs again.  The body is
 * chunked.  Waiting streams are bounded by ESTEIRA_MAX_EVENT_STREAMS: beyond
 * it ES_EAGAIN, nothing is answered and free_fn(arg) has run (answer 503).
 * On any failure free_fn(arg) has run.  When the server stops, every waiting
 * stream ends (read() is not called again).
 *
 * *out is the stream's handle, set before the reply is made: it stays valid
 * until free_fn(arg) has returned, so free_fn must end whatever may still
 * call es_stream_wake (e.g. a cache subscription); es_stream_ref keeps it
 * longer.  Once the stream has ended, waking it does nothing. */
#define ES_REPLY_LATER (-1000L)
typedef struct es_stream es_stream;
int es_reply_waiting(es_req *r, unsigned status, const char *content_type, es_reply_read_fn read,
                     void *arg, void (*free_fn)(void *), es_stream **out);
void es_stream_wake(es_stream *s);
/* From read(), before it returns ES_REPLY_LATER: run again within ms even if
 * nothing wakes the stream (keep-alives, periodic checks).  Each call of
 * read() starts without such a delay. */
void es_stream_wake_in(es_stream *s, int64_t ms);
es_stream *es_stream_ref(es_stream *s);
void es_stream_unref(es_stream *s); /* NULL is a no-op */
/* A reply that another thread makes (group commits: the answer waits for a
 * broker confirmation shared by many requests).  The handler calls
 * es_req_defer, hands the handle over and returns without replying; the
 * connection is then parked - it holds no thread - until the handle is
 * answered, from any thread, by exactly one es_defer_reply_* (which also
 * releases the handle).  The handler must not touch r once the handle is
 * handed over.  Should the server stop first, the request is answered 503
 * and a later es_defer_reply_* only releases the handle. */
typedef struct es_defer es_defer;
es_defer *es_req_defer(es_req *r); /* NULL: out of memory (then answer at once) */
void es_defer_reply_data(es_defer *d, unsigned status, const char *content_type, const void *data,
                         size_t len);
void es_defer_reply_err(es_defer *d, int err, const char *message);

bool es_req_replied(es_req *r);
unsigned es_http_status_of(int err);

#endif
