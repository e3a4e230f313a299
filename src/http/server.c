/* server.c - the HTTP server: libmicrohttpd glue, request life cycle, replies.
 *
 * libmicrohttpd runs its own threads (epoll, or poll where epoll is missing,
 * and a pool of ESTEIRA_HTTP_THREADS); handlers run on them.  One request goes
 * through the access handler several times:
 *
 *   uri_log()      the request line arrived: the es_req is born here, so the
 *                  raw (undecoded) path and query are kept exactly as sent
 *   first call     headers complete: request id, trace id, header size, route,
 *                  auth, Content-Length against the bound, start() of a
 *                  streaming route.  A reply made here goes out at once and the
 *                  body is never read (libmicrohttpd shuts the read side).
 *   data calls     body pieces: buffered into an es_buf or handed to chunk()
 *   last call      handle(), then the reply is queued
 *   completed()    metrics, the debug log line, and the es_req is freed
 *
 * libmicrohttpd 0.9.75 accepts a response only after the headers or after the
 * whole body, never in between.  So a reply decided while the body is still
 * arriving (chunk() refusing a CSV header, a chunked body crossing the bound)
 * is built at once, kept pending, and queued when the body ends; the rest of
 * the body is read and dropped meanwhile, which lets the client see the answer
 * instead of a reset.  Reading and dropping is bounded: past ES_HTTP_DRAIN_MAX
 * bytes after the decision (or past the route's bound), the connection is
 * closed without an answer.  A body announced by Content-Length above the
 * bound is refused before a byte of it is read.
 *
 * Headers: libmicrohttpd's per-connection memory pool is sized to the header
 * bound plus room for body buffers, so a request whose headers are far beyond
 * ESTEIRA_MAX_HEADER is refused by libmicrohttpd itself (431, its own short
 * HTML body, no X-Request-Id); one that fits the pool but exceeds the bound is
 * refused here with a JSON 431. */
#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "esteira/app.h"
#include "esteira/auth.h"
#include "esteira/err.h"
#include "esteira/http.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/metrics.h"

#define COMP "http"

/* body bytes read and dropped after a reply was decided mid-body */
#define ES_HTTP_DRAIN_MAX (64ull * 1024 * 1024)
#define ES_HTTP_PART_BUF  (64 * 1024) /* post processor buffer: one part header fits */
/* libmicrohttpd's pool: the headers plus its read buffer and our reply headers */
#define ES_HTTP_POOL_EXTRA (32u * 1024)

#define M_REQUESTS "esteira_http_requests_total"
#define M_DURATION "esteira_http_request_duration_seconds"

struct es_http {
    es_app *app;
    const es_route *routes;
    size_t nroutes;
    struct MHD_Daemon *d;
    uint16_t port;
    atomic_int inflight;
    atomic_bool stopping; /* set before draining: later requests do nothing */
    /* waiting streams (es_reply_waiting): parking, waking and the timer */
    pthread_mutex_t wmu;
    pthread_cond_t wcond; /* the timer: a deadline was set, or stop */
    es_stream *waiting;   /* every live one */
    int64_t nwaiting;
    pthread_t timer;
    bool timer_running, timer_stop;
    es_defer *deferred; /* requests answered later (es_req_defer), under wmu */
};

/* A response whose read() may say "later".  Parked = suspended by
 * libmicrohttpd: out of its event loop until resumed.  Three owners hold a
 * reference: the response (dropped after free_fn), the request (dropped when
 * it completes, which may come before or after the response is destroyed)
 * and whoever took es_stream_ref.  conn is cleared by the first of the two
 * ends, under wmu, so a late wake never touches a finished connection. */
struct es_stream {
    es_http *h;
    atomic_int refs;
    struct MHD_Connection *conn; /* NULL once the stream or its request ended */
    bool parked;                 /* suspended by us: only we may resume it */
    bool woken;                  /* woken while not parked: read again at once */
    bool hup;                    /* the client went away while it was parked */
    int fd;                      /* the connection's socket (-1: unknown) */
    int64_t due_ms;              /* the timer resumes it then (0 = only a wake does) */
    es_stream *prev, *next;      /* h->waiting */
    es_reply_read_fn read;
    void *arg;
    void (*free_fn)(void *);
};

/* A request whose reply comes from another thread (es_req_defer).  Two
 * references: the request's (dropped when it completes) and the answerer's
 * (dropped by es_defer_reply_*).  mu guards r, answered and parked: the
 * answerer sets the reply and resumes the connection if libmicrohttpd's
 * thread has parked it already; that thread parks it only if no answer has
 * come yet.  Lock order: wmu, then mu. */
struct es_defer {
    es_http *h;
    atomic_int refs;
    pthread_mutex_t mu;
    es_req *r;     /* NULL once the request has completed */
    bool answered; /* a reply was set */
    bool parked;   /* suspended by on_request, not yet resumed */
    es_defer *prev, *next;
};

typedef struct hdr {
    struct hdr *next;
    char *name, *value;
} hdr;

/* memory handed to a handler for the request's life (decoded query values) */
typedef struct owned {
    struct owned *next;
    char data[];
} owned;

enum { PH_NEW, PH_BODY, PH_DONE };

struct es_req {
    es_http *h;
    struct MHD_Connection *conn;
    char *uri;         /* raw path, NUL-terminated where the query began */
    const char *query; /* raw query, "" when none */
    const char *method;
    char id[72];
    char trace_id[40];
    es_route_match match;
    const es_route *route;
    es_principal principal;
    bool authed;
    int64_t t0_us;
    int phase;
    bool streaming;
    es_buf body;
    uint64_t seen, limit, drain_from;
    /* the reply */
    struct MHD_Response *resp; /* built, not yet queued */
    unsigned status;
    bool replied, queued;
    hdr *hdrs;
    owned *owned;
    void *state;
    void (*state_free)(void *);
    /* multipart/form-data bodies, decoded by libmicrohttpd's post processor */
    struct MHD_PostProcessor *pp;
    es_part_fn part_fn;
    es_stream *wait; /* a waiting stream's handle (one reference) */
    es_defer *defer; /* the reply comes from another thread (one reference) */
};

/* ------------------------------------------------------------------ helpers */

/* A JSON string from text that may hold client bytes: jansson refuses invalid
 * UTF-8, so those bytes become '?' rather than losing the whole message. */
static json_t *safe_string(const char *s)
{
    json_t *v = json_string(s ? s : "");
    if (v) return v;
    char *c = strdup(s);
    if (!c) return json_string("");
    for (char *p = c; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    v = json_string(c);
    free(c);
    return v ? v : json_string("");
}

static bool request_id_valid(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (n >= 64 || !(isalnum(c) || c == '.' || c == '_' || c == '-')) return false;
    }
    return n > 0;
}

static bool lowhex(const char *s, size_t n, bool *allzero)
{
    *allzero = true;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
        if (c != '0') *allzero = false;
    }
    return true;
}

/* W3C traceparent "vv-<32 hex trace id>-<16 hex parent id>-ff"; version ff
 * and all-zero ids are invalid; version 00 has exactly 55 characters, later
 * versions may append "-…". */
static bool parse_traceparent(const char *v, char out[33])
{
    bool z;
    if (!v || strlen(v) < 55) return false;
    if (!lowhex(v, 2, &z) || (v[0] == 'f' && v[1] == 'f')) return false;
    if (v[2] != '-' || v[35] != '-' || v[52] != '-') return false;
    if (!lowhex(v + 3, 32, &z) || z) return false;
    if (!lowhex(v + 36, 16, &z) || z) return false;
    if (!lowhex(v + 53, 2, &z)) return false;
    if (v[0] == '0' && v[1] == '0' && v[55] != '\0') return false;
    if (v[55] != '\0' && v[55] != '-') return false;
    memcpy(out, v + 3, 32);
    out[32] = '\0';
    return true;
}

static const char *route_label(const es_req *r)
{
    if (!r->route) return "unmatched";
    return r->route->name ? r->route->name : r->route->pattern;
}

/* Methods outside the known set share one label: they come from clients. */
static const char *method_label(const char *m)
{
    static const char *known[] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; m && i < ES_ARRAY_LEN(known); i++)
        if (strcmp(m, known[i]) == 0) return known[i];
    return "OTHER";
}

static void set_log_ctx(const es_req *r)
{
    es_log_ctx_set(r->id[0] ? r->id : NULL, NULL, r->trace_id[0] ? r->trace_id : NULL);
}

/* ------------------------------------------------------------------ replies */

static bool has_reply_header(const es_req *r, const char *name)
{
    for (const hdr *x = r->hdrs; x; x = x->next)
        if (strcasecmp(x->name, name) == 0) return true;
    return false;
}

/* Takes resp: adds the headers every reply carries and keeps it until the
 * access handler can queue it. */
static int set_reply(es_req *r, unsigned status, const char *ctype, struct MHD_Response *resp)
{
    if (!resp) {
        es_error(COMP, "could not build a response (out of memory)");
        return ES_ENOMEM;
    }
    if (r->replied) {
        es_error(COMP, "a second reply (%u) to %s %s was dropped", status, r->method, r->uri);
        MHD_destroy_response(resp);
        return ES_ECONFLICT;
    }
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            ctype ? ctype : "application/octet-stream");
    for (const hdr *x = r->hdrs; x; x = x->next)
        MHD_add_response_header(resp, x->name, x->value);
    if (status == 401 && !has_reply_header(r, "WWW-Authenticate"))
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer");
    if (status == 503 && !has_reply_header(r, "Retry-After"))
        MHD_add_response_header(resp, "Retry-After", "1");
    r->resp = resp;
    r->status = status;
    r->replied = true;
    if (r->phase == PH_BODY) r->drain_from = r->seen;
    return ES_OK;
}

void es_reply_header(es_req *r, const char *name, const char *value)
{
    if (!name || !value) return;
    if (r->replied) {
        es_warn(COMP, "header %s set after the reply was made; ignored", name);
        return;
    }
    hdr *x = calloc(1, sizeof *x);
    if (!x || !(x->name = strdup(name)) || !(x->value = strdup(value))) {
        if (x) free(x->name);
        free(x);
        es_error(COMP, "out of memory adding header %s", name);
        return;
    }
    /* appended, so headers go out in the order they were set */
    hdr **tail = &r->hdrs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = x;
}

int es_reply_data(es_req *r, unsigned status, const char *content_type, const void *data,
                  size_t len)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)(uintptr_t)(data ? data : ""), MHD_RESPMEM_MUST_COPY);
    return set_reply(r, status, content_type, resp);
}

int es_reply_json(es_req *r, unsigned status, json_t *body)
{
    char *s = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(body);
    if (!s) {
        es_error(COMP, "could not serialise a reply");
        if (!r->replied) {
            static const char oom[] =
                "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
            es_reply_data(r, 500, "application/json", oom, sizeof oom - 1);
        }
        return ES_ENOMEM;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(s), s, MHD_RESPMEM_MUST_FREE);
    if (!resp) free(s);
    return set_reply(r, status, "application/json", resp);
}

int es_reply_error(es_req *r, unsigned status, const char *code, const char *message,
                   json_t *details)
{
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code ? code : "internal"));
    json_object_set_new(err, "message", safe_string(message ? message : ""));
    if (details) json_object_set_new(err, "details", details);
    json_t *body = json_object();
    json_object_set_new(body, "error", err);
    json_object_set_new(body, "requestId", json_string(r->id));
    return es_reply_json(r, status, body);
}

unsigned es_http_status_of(int err)
{
    switch (err) {
    case ES_OK: return 200;
    case ES_ENOTFOUND: return 404;
    case ES_EINVAL: return 400;
    case ES_ECONFLICT: return 409;
    case ES_EAUTH: return 401;
    case ES_EFORBIDDEN: return 403;
    case ES_ELIMIT: return 413;
    case ES_EAGAIN:
    case ES_EBACKEND:
    case ES_ETIMEDOUT: return 503;
    default: return 500;
    }
}

static const char *code_of_status(unsigned status)
{
    switch (status) {
    case 400: return "validation_failed";
    case 401: return "unauthorized";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 503: return "unavailable";
    default: return "internal";
    }
}

int es_reply_err(es_req *r, int err, const char *message)
{
    unsigned status = es_http_status_of(err);
    if (status == 200) status = 500; /* ES_OK is not an error to answer with */
    return es_reply_error(r, status, code_of_status(status), message ? message : es_strerror(err),
                          NULL);
}

typedef struct stream_ctx {
    es_reply_read_fn read;
    void *arg;
    void (*free_fn)(void *);
} stream_ctx;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    stream_ctx *sc = cls;
    long n = sc->read(sc->arg, pos, buf, max);
    if (n < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    /* 0 would mean "nothing yet" to libmicrohttpd and spin its thread */
    if (n == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    return (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream_ctx *sc = cls;
    if (sc->free_fn) sc->free_fn(sc->arg);
    free(sc);
}

int es_reply_stream(es_req *r, unsigned status, const char *content_type, int64_t size,
                    es_reply_read_fn read, void *arg, void (*free_fn)(void *))
{
    stream_ctx *sc = calloc(1, sizeof *sc);
    if (!sc || !read) {
        free(sc);
        if (free_fn) free_fn(arg);
        return read ? ES_ENOMEM : ES_EINVAL;
    }
    sc->read = read;
    sc->arg = arg;
    sc->free_fn = free_fn;
    struct MHD_Response *resp = MHD_create_response_from_callback(
        size < 0 ? MHD_SIZE_UNKNOWN : (uint64_t)size, 64 * 1024, stream_read, sc, stream_free);
    if (!resp) {
        stream_free(sc);
        return set_reply(r, status, content_type, NULL);
    }
    /* set_reply destroys resp on failure, which frees sc through stream_free */
    return set_reply(r, status, content_type, resp);
}

/* ------------------------------------------------------------------ waiting streams
 *
 * read() runs on a libmicrohttpd thread.  When it has nothing, the
 * connection is suspended (libmicrohttpd allows this only from its own
 * callbacks) and 0 is returned, which libmicrohttpd takes as "not yet".
 * Resuming may come from any thread: es_stream_wake, the timer, or the stop.
 * Everything that parks or resumes holds wmu, so a stream is resumed exactly
 * once per parking, never after its connection ended, and none stays parked
 * once stopping is set (libmicrohttpd must not be stopped with a suspended
 * connection).  Lock order: wmu, then libmicrohttpd's own locks. */

es_stream *es_stream_ref(es_stream *s)
{
    if (s) atomic_fetch_add(&s->refs, 1);
    return s;
}

void es_stream_unref(es_stream *s)
{
    if (s && atomic_fetch_sub(&s->refs, 1) == 1) free(s);
}

/* Under wmu. */
static void stream_resume(es_stream *s)
{
    s->parked = false;
    s->due_ms = 0;
    MHD_resume_connection(s->conn);
}

void es_stream_wake(es_stream *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->h->wmu);
    if (s->conn && s->parked)
        stream_resume(s);
    else if (s->conn)
        s->woken = true;
    pthread_mutex_unlock(&s->h->wmu);
}

void es_stream_wake_in(es_stream *s, int64_t ms)
{
    if (!s) return;
    int64_t due = es_mono_ms() + (ms > 0 ? ms : 0);
    pthread_mutex_lock(&s->h->wmu);
    if (!s->due_ms || due < s->due_ms) s->due_ms = due;
    pthread_mutex_unlock(&s->h->wmu);
}

static ssize_t waiting_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    es_stream *s = cls;
    es_http *h = s->h;
    pthread_mutex_lock(&h->wmu);
    s->woken = false;
    s->due_ms = 0;
    bool hup = s->hup;
    pthread_mutex_unlock(&h->wmu);
    if (hup) return MHD_CONTENT_READER_END_WITH_ERROR; /* closes the connection */
    if (atomic_load(&h->stopping)) return MHD_CONTENT_READER_END_OF_STREAM;

    long n = s->read(s->arg, pos, buf, max);
    if (n > 0) return (ssize_t)n;
    if (n == 0) return MHD_CONTENT_READER_END_OF_STREAM;
    if (n != ES_REPLY_LATER) return MHD_CONTENT_READER_END_WITH_ERROR;

    ssize_t ret = 0;
    pthread_mutex_lock(&h->wmu);
    if (atomic_load(&h->stopping) || !s->conn) {
        ret = MHD_CONTENT_READER_END_OF_STREAM;
    } else {
        MHD_suspend_connection(s->conn);
        s->parked = true;
        /* A wake that came while read() ran finds the connection not yet
         * parked: go round again (on libmicrohttpd's next turn, so other
         * connections of this thread are served in between). */
        if (s->woken)
            stream_resume(s);
        else if (s->due_ms)
            pthread_cond_signal(&h->wcond);
    }
    pthread_mutex_unlock(&h->wmu);
    return ret;
}

/* Runs when libmicrohttpd destroys the response: the stream ended (whole,
 * closed by the client, or by the stop).  It is never parked here. */
static void waiting_free(void *cls)
{
    es_stream *s = cls;
    es_http *h = s->h;
    pthread_mutex_lock(&h->wmu);
    s->conn = NULL;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->waiting = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    h->nwaiting--;
    pthread_mutex_unlock(&h->wmu);
    if (s->free_fn) s->free_fn(s->arg);
    es_stream_unref(s);
}

int es_reply_waiting(es_req *r, unsigned status, const char *content_type, es_reply_read_fn read,
                     void *arg, void (*free_fn)(void *), es_stream **out)
{
    es_http *h = r->h;
    if (out) *out = NULL;
    es_stream *s = read && !r->wait ? calloc(1, sizeof *s) : NULL;
    if (!s) {
        if (free_fn) free_fn(arg);
        return read && !r->wait ? ES_ENOMEM : ES_EINVAL;
    }
    s->h = h;
    atomic_init(&s->refs, 2); /* the response's and the request's */
    s->conn = r->conn;
    s->read = read;
    s->arg = arg;
    s->free_fn = free_fn;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    s->fd = ci ? (int)ci->connect_fd : -1;
    pthread_mutex_lock(&h->wmu);
    if (h->nwaiting >= h->app->cfg->max_event_streams) {
        pthread_mutex_unlock(&h->wmu);
        free(s);
        if (free_fn) free_fn(arg);
        es_warn(COMP, "refusing an event stream: %lld are open (ESTEIRA_MAX_EVENT_STREAMS)",
                (long long)h->app->cfg->max_event_streams);
        return ES_EAGAIN;
    }
    s->next = h->waiting;
    if (h->waiting) h->waiting->prev = s;
    h->waiting = s;
    h->nwaiting++;
    pthread_mutex_unlock(&h->wmu);
    r->wait = s;
    if (out) *out = s;

    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                  waiting_read, s, waiting_free);
    if (!resp) {
        waiting_free(s);
        return set_reply(r, status, content_type, NULL);
    }
    /* set_reply destroys resp on failure, which runs waiting_free */
    return set_reply(r, status, content_type, resp);
}

/* libmicrohttpd does not watch a suspended connection's socket, so a client
 * that leaves a parked stream would keep its place until the stream next
 * writes.  Under wmu: parked streams whose peer hung up are resumed and end. */
static void reap_hangups(es_http *h)
{
    struct pollfd pfd[64];
    es_stream *who[64];
    es_stream *s = h->waiting;
    while (s) {
        int n = 0;
        for (; s && n < (int)ES_ARRAY_LEN(pfd); s = s->next) {
            if (!s->parked || !s->conn || s->fd < 0) continue;
            pfd[n] = (struct pollfd){.fd = s->fd, .events = POLLRDHUP};
            who[n++] = s;
        }
        if (n == 0 || poll(pfd, (nfds_t)n, 0) <= 0) continue;
        for (int i = 0; i < n; i++)
            if (pfd[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
                who[i]->hup = true;
                stream_resume(who[i]);
            }
    }
}

/* Resumes parked streams whose delay has passed, and those whose client
 * left (checked every HANGUP_CHECK_MS while any is parked). */
#define HANGUP_CHECK_MS 1000
static void *timer_main(void *arg)
{
    es_http *h = arg;
    int64_t checked = 0;
    pthread_mutex_lock(&h->wmu);
    while (!h->timer_stop) {
        int64_t now = es_mono_ms(), next = 0;
        bool parked = false;
        for (es_stream *s = h->waiting; s; s = s->next) {
            if (!s->parked || !s->conn) continue;
            parked = true;
            if (!s->due_ms) continue;
            if (s->due_ms <= now)
                stream_resume(s);
            else if (!next || s->due_ms < next)
                next = s->due_ms;
        }
        if (parked && now - checked >= HANGUP_CHECK_MS) {
            reap_hangups(h);
            checked = now;
        }
        if (parked && (!next || next > checked + HANGUP_CHECK_MS)) next = checked + HANGUP_CHECK_MS;
        if (!next) {
            pthread_cond_wait(&h->wcond, &h->wmu);
        } else {
            struct timespec ts;
            es_deadline(&ts, next - now);
            pthread_cond_timedwait(&h->wcond, &h->wmu, &ts);
        }
    }
    pthread_mutex_unlock(&h->wmu);
    return NULL;
}

/* ------------------------------------------------------------------ deferred replies */

es_defer *es_req_defer(es_req *r)
{
    if (r->defer || r->replied || r->phase != PH_DONE) return NULL;
    es_defer *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    if (pthread_mutex_init(&d->mu, NULL) != 0) {
        free(d);
        return NULL;
    }
    d->h = r->h;
    atomic_init(&d->refs, 2); /* the request's and the answerer's */
    d->r = r;
    pthread_mutex_lock(&r->h->wmu);
    d->next = r->h->deferred;
    if (d->next) d->next->prev = d;
    r->h->deferred = d;
    pthread_mutex_unlock(&r->h->wmu);
    r->defer = d;
    return d;
}

static void defer_unref(es_defer *d)
{
    if (d && atomic_fetch_sub(&d->refs, 1) == 1) {
        pthread_mutex_destroy(&d->mu);
        free(d);
    }
}

/* Under d->mu, with d->r set and no answer yet: the reply is in place. */
static void defer_answered(es_defer *d)
{
    d->answered = true;
    if (d->parked) {
        d->parked = false;
        MHD_resume_connection(d->r->conn);
    }
}

void es_defer_reply_data(es_defer *d, unsigned status, const char *content_type, const void *data,
                         size_t len)
{
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    if (d->r && !d->answered) {
        es_reply_data(d->r, status, content_type, data, len);
        defer_answered(d);
    }
    pthread_mutex_unlock(&d->mu);
    defer_unref(d);
}

void es_defer_reply_err(es_defer *d, int err, const char *message)
{
    if (!d) return;
    pthread_mutex_lock(&d->mu);
    if (d->r && !d->answered) {
        es_reply_err(d->r, err, message);
        defer_answered(d);
    }
    pthread_mutex_unlock(&d->mu);
    defer_unref(d);
}

/* On libmicrohttpd's thread, once the handler has returned: true = parked
 * (nothing to queue yet). */
static bool defer_park(es_req *r)
{
    es_defer *d = r->defer;
    pthread_mutex_lock(&d->mu);
    bool park = !d->answered;
    if (park) {
        MHD_suspend_connection(r->conn);
        d->parked = true;
    }
    pthread_mutex_unlock(&d->mu);
    return park;
}

/* The request completed: a late answer must not touch it. */
static void defer_detach(es_req *r)
{
    es_defer *d = r->defer;
    es_http *h = r->h;
    pthread_mutex_lock(&h->wmu);
    if (d->prev)
        d->prev->next = d->next;
    else
        h->deferred = d->next;
    if (d->next) d->next->prev = d->prev;
    d->prev = d->next = NULL;
    pthread_mutex_lock(&d->mu);
    d->r = NULL;
    pthread_mutex_unlock(&d->mu);
    pthread_mutex_unlock(&h->wmu);
    r->defer = NULL;
    defer_unref(d);
}

/* The server stops: every request still waiting for its answer gets 503
 * (libmicrohttpd must not be stopped with a connection suspended). */
static void defer_give_up(es_http *h)
{
    pthread_mutex_lock(&h->wmu);
    for (es_defer *d = h->deferred; d; d = d->next) {
        pthread_mutex_lock(&d->mu);
        if (d->r && !d->answered) {
            es_reply_error(d->r, 503, "unavailable", "the server is stopping", NULL);
            defer_answered(d);
        }
        pthread_mutex_unlock(&d->mu);
    }
    pthread_mutex_unlock(&h->wmu);
}

bool es_req_replied(es_req *r)
{
    return r->replied;
}

/* ------------------------------------------------------------------ what a handler sees */

struct es_app *es_req_app(es_req *r)
{
    return r->h->app;
}

const char *es_req_method(es_req *r)
{
    return r->method;
}

const char *es_req_path(es_req *r)
{
    return r->uri;
}

const char *es_req_id(es_req *r)
{
    return r->id;
}

const char *es_req_param(es_req *r, const char *name)
{
    if (!name) return NULL;
    size_t n = strlen(name);
    for (int i = 0; i < r->match.nparams; i++)
        if (r->match.params[i].name_len == n && memcmp(r->match.params[i].name, name, n) == 0)
            return r->match.params[i].value;
    return NULL;
}

const char *es_req_header(es_req *r, const char *name)
{
    if (!r->conn || !name) return NULL;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *es_req_raw_query(es_req *r)
{
    return r->query;
}

const char *es_req_query(es_req *r, const char *name)
{
    size_t n = strlen(r->query) + 1; /* decoding never grows */
    owned *o = malloc(sizeof *o + n);
    if (!o) return NULL;
    if (es_query_get(r->query, name, o->data, n) != ES_OK) {
        free(o);
        return NULL;
    }
    o->next = r->owned;
    r->owned = o;
    return o->data;
}

const char *es_req_body(es_req *r, size_t *len)
{
    if (r->streaming) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = r->body.len;
    return es_buf_cstr(&r->body);
}

bool es_req_media_is(es_req *r, const char *type)
{
    const char *ct = es_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (!ct) return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strlen(type);
    return strncasecmp(ct, type, n) == 0 &&
           (ct[n] == 0 || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t');
}

/* application/json, or any application/…+json, parameters allowed */
static bool content_type_json(const char *ct)
{
    if (!ct) return false;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strcspn(ct, "; \t");
    if (n == 16 && strncasecmp(ct, "application/json", 16) == 0) return true;
    return n > 17 && strncasecmp(ct, "application/", 12) == 0 &&
           strncasecmp(ct + n - 5, "+json", 5) == 0;
}

int es_req_json(es_req *r, json_t **out)
{
    *out = NULL;
    if (!content_type_json(es_req_header(r, MHD_HTTP_HEADER_CONTENT_TYPE))) {
        es_reply_error(r, 415, "unsupported_media_type", "the body must be application/json", NULL);
        return ES_EINVAL;
    }
    size_t len;
    const char *body = es_req_body(r, &len);
    char err[256];
    json_t *v;
    int rc = es_json_parse(body, len, (int)r->h->app->cfg->json_max_depth, &v, err, sizeof err);
    if (rc == ES_OK && !json_is_object(v) && !json_is_array(v)) {
        json_decref(v);
        snprintf(err, sizeof err, "expected a JSON object or array");
        rc = ES_EINVAL;
    }
    if (rc != ES_OK) {
        es_reply_error(r, 400, "invalid_json", err, NULL);
        return rc;
    }
    *out = v;
    return ES_OK;
}

const char *es_req_tenant(es_req *r)
{
    return r->authed ? r->principal.tenant : NULL;
}

unsigned es_req_scopes(es_req *r)
{
    return r->authed ? r->principal.scopes : 0;
}

void es_req_set_state(es_req *r, void *state, void (*free_fn)(void *))
{
    if (r->state_free && r->state && r->state != state) r->state_free(r->state);
    r->state = state;
    r->state_free = free_fn;
}

void *es_req_state(es_req *r)
{
    return r->state;
}

int es_reply_page(es_req *r, int rc, json_t *items, char *next)
{
    if (rc) {
        json_decref(items);
        free(next);
        if (rc == ES_EINVAL)
            return es_reply_error(r, 400, "validation_failed", "bad cursor",
                                  json_pack("[{s:s, s:s}]", "field", "cursor", "problem",
                                            "not a cursor from a previous page"));
        return es_reply_err(r, rc, NULL);
    }
    json_t *o = json_pack("{s:o, s:o}", "items", items ? items : json_array(), "nextCursor",
                          next ? json_string(next) : json_null());
    free(next);
    return es_reply_json(r, 200, o);
}

int es_req_limit(es_req *r, int def, int max, int *out)
{
    *out = def;
    size_t n = strlen(r->query) + 1;
    char *v = malloc(n);
    if (!v) return ES_ENOMEM;
    int rc = es_query_get(r->query, "limit", v, n);
    if (rc == ES_ENOTFOUND) {
        free(v);
        return ES_OK;
    }
    int64_t x = 0;
    if (rc == ES_OK) rc = es_parse_i64(v, 1, max, &x);
    free(v);
    if (rc != ES_OK) {
        char problem[80];
        snprintf(problem, sizeof problem, "must be an integer from 1 to %d", max);
        json_t *d = json_pack("[{s:s,s:s}]", "field", "limit", "problem", problem);
        es_reply_error(r, 400, "validation_failed", "invalid limit", d);
        return ES_EINVAL;
    }
    *out = (int)x;
    return ES_OK;
}

/* ------------------------------------------------------------------ request life cycle */

static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    es_http *h = cls;
    es_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->uri = strdup(uri ? uri : "");
    if (!r->uri) {
        free(r);
        return NULL;
    }
    char *q = strchr(r->uri, '?');
    if (q) *q++ = '\0';
    r->query = q ? q : "";
    r->h = h;
    r->conn = conn;
    r->t0_us = es_mono_us();
    r->phase = PH_NEW;
    atomic_fetch_add(&h->inflight, 1);
    return r;
}

static enum MHD_Result add_header_size(void *cls, enum MHD_ValueKind kind, const char *key,
                                       const char *value)
{
    (void)kind;
    size_t *total = cls;
    *total += strlen(key) + (value ? strlen(value) : 0) + 4; /* ": " and CRLF */
    return MHD_YES;
}

/* The Allow header of a 405: every method whose route matches the path. */
static void allowed_methods(const es_http *h, const char *path, char *out, size_t len)
{
    es_route_match tmp;
    out[0] = '\0';
    for (size_t i = 0; i < h->nroutes; i++) {
        const char *m = h->routes[i].method;
        if (!m || strstr(out, m)) continue; /* no method name is a part of another */
        if (es_route_find(&h->routes[i], 1, m, path, &tmp) != ES_OK) continue;
        size_t used = strlen(out);
        snprintf(out + used, len - used, "%s%s", used ? ", " : "", m);
    }
}

/* Everything decided once the headers are in.  Any reply made here is queued
 * before the body is read. */
static void on_headers(es_req *r, const char *version)
{
    es_http *h = r->h;
    const es_config *cfg = h->app->cfg;

    const char *rid = es_req_header(r, "X-Request-Id");
    if (rid && request_id_valid(rid))
        es_strlcpy(r->id, rid, sizeof r->id);
    else
        es_uuid7(r->id);
    if (!parse_traceparent(es_req_header(r, "traceparent"), r->trace_id)) r->trace_id[0] = '\0';
    set_log_ctx(r);

    /* A request that arrives (on a kept-alive connection) after the drain
     * began must not start work whose answer could be cut off: inflight was
     * counted in on_uri before this check, so es_http_stop either waits for
     * this request or this request sees the flag. */
    if (atomic_load(&h->stopping)) {
        es_reply_header(r, "Connection", "close");
        es_reply_error(r, 503, "unavailable", "the server is shutting down", NULL);
        return;
    }

    size_t hsize = strlen(r->method) + strlen(r->uri) + (r->query[0] ? strlen(r->query) + 1 : 0) +
                   (version ? strlen(version) : 0) + 4;
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, add_header_size, &hsize);
    if (cfg->max_header > 0 && hsize > (uint64_t)cfg->max_header) {
        char msg[96];
        snprintf(msg, sizeof msg, "request headers larger than %lld bytes",
                 (long long)cfg->max_header);
        es_reply_error(r, 431, "headers_too_large", msg, NULL);
        return;
    }

    int rc = es_route_find(h->routes, h->nroutes, r->method, r->uri, &r->match);
    if (rc == ES_EINVAL) {
        es_reply_error(r, 400, "validation_failed", "malformed request path", NULL);
        return;
    }
    if (rc != ES_OK) {
        if (r->match.method_mismatch) {
            char allow[128];
            allowed_methods(h, r->uri, allow, sizeof allow);
            es_reply_header(r, "Allow", allow);
            es_reply_error(r, 405, "method_not_allowed", "method not allowed on this resource",
                           NULL);
        } else {
            es_reply_error(r, 404, "not_found", "no such resource", NULL);
        }
        return;
    }
    r->route = r->match.route;

    if (!(r->route->scope & ES_SCOPE_PUBLIC)) {
        rc = es_auth_check(h->app->store, es_req_header(r, MHD_HTTP_HEADER_AUTHORIZATION),
                           es_app_open_mode(h->app), &r->principal);
        if (rc == ES_EAUTH) {
            es_reply_error(r, 401, "unauthorized", "a valid API token is required", NULL);
            return;
        }
        if (rc != ES_OK) { /* the store cannot be asked: try again later */
            es_reply_error(r, 503, "unavailable", "could not check the token now", NULL);
            return;
        }
        r->authed = true;
        unsigned s = r->principal.scopes;
        if (!(s & ES_SCOPE_ADMIN) && !(s & r->route->scope)) {
            es_reply_error(r, 403, "forbidden", "the token lacks the scope this needs", NULL);
            return;
        }
    }

    r->streaming = r->route->chunk != NULL;
    r->limit = (uint64_t)(r->streaming ? cfg->max_upload : cfg->max_body);
    const char *cl = es_req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
    int64_t clen;
    if (cl && es_parse_i64(cl, 0, INT64_MAX, &clen) == ES_OK && (uint64_t)clen > r->limit) {
        char msg[96];
        snprintf(msg, sizeof msg, "body larger than %llu bytes", (unsigned long long)r->limit);
        es_reply_error(r, 413, "payload_too_large", msg, NULL);
        return;
    }
    if (!r->streaming) es_buf_init(&r->body, r->limit);
    r->phase = PH_BODY;
    if (r->streaming && r->route->start) {
        rc = r->route->start(r);
        if (rc < 0 && !r->replied) es_reply_err(r, rc, NULL);
    }
}

/* false = close the connection */
static bool on_body(es_req *r, const char *data, size_t n)
{
    r->seen += n;
    if (r->replied) {
        /* a reply is pending: drop the rest, within bounds */
        if (r->seen - r->drain_from > ES_HTTP_DRAIN_MAX || r->seen > r->limit + ES_HTTP_DRAIN_MAX) {
            es_info(COMP, "closing %s %s: body goes on after the reply was decided", r->method,
                    r->uri);
            return false;
        }
        return true;
    }
    /* The idle timeout does not stop a client that trickles a byte at a time:
     * a buffered body must arrive whole within request_timeout_ms.  A reply
     * cannot be sent before the body ends, so the connection is closed. */
    int64_t took = (es_mono_us() - r->t0_us) / 1000;
    if (!r->streaming && took > r->h->app->cfg->request_timeout_ms) {
        es_warn(COMP, "closing %s %s: body still arriving after %lld ms (%llu bytes)", r->method,
                r->uri, (long long)took, (unsigned long long)r->seen);
        return false;
    }
    if (r->seen > r->limit) {
        char msg[96];
        snprintf(msg, sizeof msg, "body larger than %llu bytes", (unsigned long long)r->limit);
        es_reply_error(r, 413, "payload_too_large", msg, NULL);
        return true;
    }
    if (r->streaming && r->pp) {
        if (MHD_post_process(r->pp, data, n) != MHD_YES && !r->replied)
            es_reply_error(r, 400, "malformed_body", "the multipart body is malformed", NULL);
        return true;
    }
    if (r->streaming) {
        int rc = r->route->chunk(r, data, n);
        if (rc < 0 && !r->replied) es_reply_err(r, rc, NULL);
        return true;
    }
    int rc = es_buf_append(&r->body, data, n);
    if (rc != ES_OK) es_reply_err(r, rc == ES_ELIMIT ? ES_ELIMIT : ES_ENOMEM, NULL);
    return true;
}

static void on_end(es_req *r)
{
    r->phase = PH_DONE;
    if (r->pp && !r->replied) {
        /* MHD_NO: the closing boundary never came */
        bool whole = MHD_destroy_post_processor(r->pp) == MHD_YES;
        r->pp = NULL;
        if (!whole && !r->replied)
            es_reply_error(r, 400, "malformed_body",
                           "the multipart body ends before its closing boundary", NULL);
    }
    if (r->replied) return;
    if (r->route->handle) {
        int rc = r->route->handle(r);
        if (r->defer) return; /* answered from elsewhere: r->replied is not ours to read */
        if (r->replied) return;
        es_error(COMP, "handler of %s %s returned %d without answering", r->method,
                 r->route->pattern, rc);
    } else {
        es_error(COMP, "route %s %s has no handler", r->method, r->route->pattern);
    }
    es_reply_error(r, 500, "internal", "the request was not answered", NULL);
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size)
{
    (void)kind;
    (void)transfer_encoding;
    es_req *r = cls;
    if (r->replied) return MHD_YES; /* drained */
    int rc = r->part_fn(r, key ? key : "", filename, content_type, data, size, off);
    if (rc < 0 && !r->replied) es_reply_err(r, rc, NULL);
    return MHD_YES;
}

int es_req_multipart(es_req *r, es_part_fn fn)
{
    if (!r->streaming || r->pp || !fn) return ES_EINVAL;
    r->pp = MHD_create_post_processor(r->conn, ES_HTTP_PART_BUF, on_part, r);
    if (!r->pp) return ES_EINVAL;
    r->part_fn = fn;
    return ES_OK;
}

static enum MHD_Result queue_pending(es_req *r)
{
    if (!r->resp) return MHD_YES;
    enum MHD_Result q = MHD_queue_response(r->conn, r->status, r->resp);
    MHD_destroy_response(r->resp);
    r->resp = NULL;
    if (q != MHD_YES) {
        es_error(COMP, "could not queue the %u reply to %s %s", r->status, r->method, r->uri);
        return MHD_NO;
    }
    r->queued = true;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)cls;
    (void)url; /* already decoded by libmicrohttpd; the raw one came to on_uri */
    es_req *r = *con_cls;
    if (!r) return MHD_NO; /* on_uri ran out of memory */
    r->conn = conn;
    enum MHD_Result ret = MHD_YES;

    if (r->phase == PH_NEW) {
        r->method = method;
        on_headers(r, version);
        ret = queue_pending(r); /* a reply made with the headers goes now */
        es_log_ctx_clear();
        return ret;
    }
    if (r->queued) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    set_log_ctx(r);
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (!on_body(r, upload_data, n)) ret = MHD_NO;
    } else if (r->phase == PH_DONE && r->defer) {
        ret = queue_pending(r); /* resumed: the answer is in */
    } else {
        on_end(r);
        if (!r->defer || !defer_park(r)) ret = queue_pending(r);
    }
    es_log_ctx_clear();
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    es_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    set_log_ctx(r);
    double secs = (double)(es_mono_us() - r->t0_us) / 1e6;
    if (r->queued) {
        char route[256], labels[400];
        es_metric_label_escape(route_label(r), route, sizeof route);
        snprintf(labels, sizeof labels, "route=\"%s\",method=\"%s\",status=\"%u\"", route,
                 method_label(r->method), r->status);
        es_metric_add(M_REQUESTS, labels, 1);
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
        es_metric_observe(M_DURATION, labels, secs);
    }
    if (ES_LOG_DEBUG >= es_log_min_level && r->method) {
        json_t *f =
            json_pack("{s:s,s:s,s:i,s:f}", "method", r->method, "route", route_label(r), "status",
                      (int)(r->queued ? r->status : 0), "durationMs", secs * 1000.0);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && f)
            json_object_set_new(f, "aborted", json_true());
        ES_LOGF(ES_LOG_DEBUG, COMP, f, "request");
    }
    es_log_ctx_clear();

    if (r->pp) MHD_destroy_post_processor(r->pp);
    if (r->defer) defer_detach(r);
    if (r->wait) {
        pthread_mutex_lock(&r->h->wmu);
        r->wait->conn = NULL;
        pthread_mutex_unlock(&r->h->wmu);
        es_stream_unref(r->wait);
    }
    if (r->state_free && r->state) r->state_free(r->state);
    if (r->resp) MHD_destroy_response(r->resp);
    es_buf_finish(&r->body);
    while (r->hdrs) {
        hdr *x = r->hdrs;
        r->hdrs = x->next;
        free(x->name);
        free(x->value);
        free(x);
    }
    while (r->owned) {
        owned *o = r->owned;
        r->owned = o->next;
        free(o);
    }
    atomic_fetch_sub(&r->h->inflight, 1);
    free(r->uri);
    free(r);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    es_warn(COMP, "libmicrohttpd: %s", msg);
}

/* ------------------------------------------------------------------ the server */

int es_http_create(struct es_app *app, const es_route *routes, size_t nroutes, es_http **out)
{
    *out = NULL;
    if (!app || !app->cfg || (!routes && nroutes)) return ES_EINVAL;
    es_http *h = calloc(1, sizeof *h);
    if (!h) return ES_ENOMEM;
    h->app = app;
    h->routes = routes;
    h->nroutes = nroutes;
    atomic_init(&h->inflight, 0);
    atomic_init(&h->stopping, false);
    pthread_mutex_init(&h->wmu, NULL);
    if (es_cond_init(&h->wcond) != ES_OK) {
        pthread_mutex_destroy(&h->wmu);
        free(h);
        return ES_ENOMEM;
    }
    static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    es_metric_define(M_REQUESTS, ES_METRIC_COUNTER, "HTTP requests answered", NULL, 0);
    es_metric_define(M_DURATION, ES_METRIC_HISTOGRAM, "HTTP request duration in seconds", buckets,
                     (int)ES_ARRAY_LEN(buckets));
    *out = h;
    return ES_OK;
}

/* cfg->host (an IPv4 or IPv6 literal, or a name) and port into a socket address */
static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss)
{
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int g = getaddrinfo(host && *host ? host : NULL, portstr, &hints, &ai);
    if (g != 0 || !ai) {
        es_error(COMP, "cannot resolve host %s: %s", host ? host : "", gai_strerror(g));
        return ES_EINVAL;
    }
    memset(ss, 0, sizeof *ss);
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    freeaddrinfo(ai);
    return ES_OK;
}

int es_http_start(es_http *h)
{
    if (!h) return ES_EINVAL;
    if (h->d) return ES_OK;
    const es_config *cfg = h->app->cfg;
    struct sockaddr_storage ss;
    int rc = resolve(cfg->host, (uint16_t)cfg->port, &ss);
    if (rc != ES_OK) return rc;

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG |
                     MHD_ALLOW_SUSPEND_RESUME;
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES)
        flags |= MHD_USE_EPOLL;
    else
        flags |= MHD_USE_POLL;
    if (ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&ss;
        /* "::" also takes IPv4, as people who write it expect */
        flags |= IN6_IS_ADDR_UNSPECIFIED(&s6->sin6_addr) ? MHD_USE_DUAL_STACK : MHD_USE_IPv6;
    }

    unsigned timeout_s = (unsigned)((cfg->conn_timeout_ms + 999) / 1000);
    size_t pool = (size_t)cfg->max_header + ES_HTTP_POOL_EXTRA;
    struct MHD_OptionItem opts[] = {
        /* first: libmicrohttpd warns (on stderr) about a logger set later */
        {MHD_OPTION_EXTERNAL_LOGGER, (intptr_t)on_mhd_log, h},
        {MHD_OPTION_SOCK_ADDR, 0, &ss},
        {MHD_OPTION_URI_LOG_CALLBACK, (intptr_t)on_uri, h},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)on_completed, h},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)cfg->max_connections, NULL},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)(timeout_s ? timeout_s : 1), NULL},
        {MHD_OPTION_CONNECTION_MEMORY_LIMIT, (intptr_t)pool, NULL},
        {cfg->http_threads > 1 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
         (intptr_t)cfg->http_threads, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h, MHD_OPTION_ARRAY,
                            opts, MHD_OPTION_END);
    if (!h->d) {
        es_error(COMP, "cannot listen on %s:%lld (address in use, or not allowed)", cfg->host,
                 (long long)cfg->port);
        return ES_EIO;
    }
    h->timer_stop = false;
    int err = pthread_create(&h->timer, NULL, timer_main, h);
    if (err) {
        es_error(COMP, "cannot start the event streams' timer: %s", strerror(err));
        MHD_stop_daemon(h->d);
        h->d = NULL;
        return ES_ENOMEM;
    }
    h->timer_running = true;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : (uint16_t)cfg->port;
    es_info(COMP, "listening on %s port %u (%lld threads, %s)", cfg->host, h->port,
            (long long)cfg->http_threads, (flags & MHD_USE_EPOLL) ? "epoll" : "poll");
    return ES_OK;
}

uint16_t es_http_port(const es_http *h)
{
    return h ? h->port : 0;
}

void es_http_stop(es_http *h)
{
    if (!h || !h->d) return;
    /* Stop accepting first; requests already in flight finish within the
     * shutdown timeout, then the daemon closes what is left (idle
     * keep-alive connections, streams that never end). */
    atomic_store(&h->stopping, true);
    /* Waiting streams end now: resumed, their next read sees stopping. */
    pthread_mutex_lock(&h->wmu);
    for (es_stream *s = h->waiting; s; s = s->next)
        if (s->parked && s->conn) stream_resume(s);
    pthread_mutex_unlock(&h->wmu);
    MHD_socket lfd = MHD_quiesce_daemon(h->d);
    int64_t deadline = es_mono_ms() + h->app->cfg->shutdown_timeout_ms;
    while (atomic_load(&h->inflight) > 0 && es_mono_ms() < deadline)
        es_sleep_ms(10);
    defer_give_up(h);
    for (int i = 0; i < 100 && atomic_load(&h->inflight) > 0; i++)
        es_sleep_ms(10); /* the 503s go out */
    if (atomic_load(&h->inflight) > 0)
        es_warn(COMP, "stopping with %d requests still in flight", atomic_load(&h->inflight));
    MHD_stop_daemon(h->d);
    h->d = NULL;
    if (h->timer_running) {
        pthread_mutex_lock(&h->wmu);
        h->timer_stop = true;
        pthread_cond_signal(&h->wcond);
        pthread_mutex_unlock(&h->wmu);
        pthread_join(h->timer, NULL);
        h->timer_running = false;
    }
    /* libmicrohttpd hands the listening socket over on quiesce */
    if (lfd != MHD_INVALID_SOCKET) close(lfd);
    es_info(COMP, "stopped");
}

void es_http_destroy(es_http *h)
{
    if (!h) return;
    es_http_stop(h);
    pthread_cond_destroy(&h->wcond);
    pthread_mutex_destroy(&h->wmu);
    free(h);
}
