/* api_sse.c - Server-Sent Events: GET /v1/uploads/{id}/events.
 *
 * A stream holds no thread while it waits (es_reply_waiting).  Workers
 * publish on the cache channel upload.{id} after every batch group commits;
 * the subscription callback only raises a flag and wakes the stream, and the
 * stream's read() - on an HTTP thread - reads the authoritative status
 * (es_upload_get) and writes the event.  So a burst of notifications becomes
 * one event per MIN_GAP_MS, and a lost notification (Redis pub/sub does not
 * keep messages for a reconnecting subscriber) is caught by the re-check
 * every RECHECK_MS.
 *
 *   event: status      the upload when the stream opens
 *   event: progress    the upload after it changed
 *   event: completed   the final upload (done), then the stream ends
 *   event: failed      the final upload (failed), then the stream ends
 *   : keepalive        a comment when nothing was written for KEEPALIVE_MS */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/app.h"
#include "esteira/cache.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/upload.h"
#include "http/api.h"

#define COMP "http"

#define MIN_GAP_MS   100           /* at most ~10 progress events a second */
#define RECHECK_MS   3000          /* the status is read at least this often */
#define KEEPALIVE_MS 15000         /* a comment when the stream was silent this long */
#define EVENT_MAX    (1024 * 1024) /* pending bytes of one stream: far above an upload's JSON */

typedef struct sse {
    es_app *app;
    char *tenant; /* NULL = any (as es_upload_get takes it) */
    char id[64];
    es_stream *stream;
    es_subscription *sub;
    atomic_bool notified; /* set by the subscription, taken by read() */
    es_buf out;           /* formatted, not yet handed to the connection */
    size_t off;
    char *last;       /* the JSON last sent, to send progress only on a change */
    bool started;     /* the status event is written */
    bool finished;    /* the final event is written: end once out is drained */
    int64_t check_ms; /* the last status read */
    int64_t write_ms; /* the last bytes (event or comment) */
} sse;

static void sse_free(void *p)
{
    sse *s = p;
    /* After this no callback runs, so nothing wakes the stream any more. */
    es_cache_unsubscribe(s->sub);
    es_buf_finish(&s->out);
    free(s->last);
    free(s->tenant);
    free(s);
}

/* On a thread of the cache backend: keep it short. */
static void on_notify(void *arg, const char *channel, const char *msg, size_t len)
{
    (void)channel;
    (void)msg;
    (void)len;
    sse *s = arg;
    atomic_store(&s->notified, true);
    es_stream_wake(s->stream);
}

static int emit(sse *s, const char *event, const char *data)
{
    if (s->off == s->out.len) {
        es_buf_reset(&s->out);
        s->off = 0;
    }
    int rc = es_buf_printf(&s->out, "event: %s\ndata: %s\n\n", event, data);
    if (rc) es_warn(COMP, "upload %s: event %s dropped (%s)", s->id, event, es_strerror(rc));
    return rc;
}

static long drain(sse *s, char *buf, size_t max)
{
    size_t n = s->out.len - s->off;
    if (n > max) n = max;
    memcpy(buf, s->out.data + s->off, n);
    s->off += n;
    s->write_ms = es_mono_ms();
    return (long)n;
}

/* Reads the status and writes the event it calls for.  false = the stream
 * is over (the upload is gone, or out of memory). */
static bool check(sse *s, int64_t now)
{
    s->check_ms = now;
    json_t *u = NULL;
    int rc = es_upload_get(s->app, s->tenant, s->id, &u);
    if (rc == ES_ENOTFOUND) {
        es_info(COMP, "upload %s: gone while its events were followed", s->id);
        return false;
    }
    if (rc) return true; /* a backend hiccup: the next re-check tries again */
    char *text = json_dumps(u, JSON_COMPACT);
    const char *status = json_string_value(json_object_get(u, "status"));
    bool done = status && !strcmp(status, "done");
    bool final = done || (status && !strcmp(status, "failed"));
    json_decref(u);
    if (!text) return false;
    bool ok = true;
    if (!s->started) {
        ok = emit(s, "status", text) == ES_OK;
        s->started = true;
    } else if (!final && (!s->last || strcmp(s->last, text) != 0)) {
        ok = emit(s, "progress", text) == ES_OK;
    }
    if (ok && final) {
        ok = emit(s, done ? "completed" : "failed", text) == ES_OK;
        s->finished = true;
    }
    free(s->last);
    s->last = text;
    return ok;
}

static long sse_read(void *arg, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    sse *s = arg;
    if (s->off < s->out.len) return drain(s, buf, max);
    if (s->finished) return 0;

    int64_t now = es_mono_ms();
    bool notified = atomic_exchange(&s->notified, false);
    if (!s->started || (notified && now - s->check_ms >= MIN_GAP_MS) ||
        now - s->check_ms >= RECHECK_MS) {
        if (!check(s, now)) return 0;
    } else if (notified) {
        /* too soon after the last read: the notifications of a burst wait
         * for the gap and are served by one read */
        atomic_store(&s->notified, true);
        es_stream_wake_in(s->stream, MIN_GAP_MS - (now - s->check_ms));
        return ES_REPLY_LATER;
    }
    if (s->off == s->out.len && now - s->write_ms >= KEEPALIVE_MS) {
        /* a comment, which clients ignore: it keeps proxies from closing an
         * idle stream and shows us a client that went away */
        es_buf_reset(&s->out);
        s->off = 0;
        if (es_buf_puts(&s->out, ": keepalive\n\n")) return ES_ENOMEM;
    }
    if (s->off < s->out.len) return drain(s, buf, max);
    if (s->finished) return 0;
    int64_t next = RECHECK_MS - (now - s->check_ms);
    int64_t ka = KEEPALIVE_MS - (now - s->write_ms);
    es_stream_wake_in(s->stream, ka < next ? ka : next);
    return ES_REPLY_LATER;
}

int api_uploads_events(es_req *r)
{
    es_app *app = es_req_app(r);
    const char *id = es_req_param(r, "id");
    const char *tenant = es_req_tenant(r);
    /* the 404 (another tenant's upload too) is answered before the stream opens */
    json_t *u = NULL;
    int rc = es_upload_get(app, tenant, id, &u);
    if (rc) return es_reply_err(r, rc, rc == ES_ENOTFOUND ? "no such upload" : NULL);
    json_decref(u);

    sse *s = calloc(1, sizeof *s);
    if (!s || strlen(id) >= sizeof s->id || (tenant && !(s->tenant = strdup(tenant)))) {
        if (s) free(s->tenant);
        free(s);
        return es_reply_err(r, ES_ENOMEM, NULL);
    }
    s->app = app;
    es_strlcpy(s->id, id, sizeof s->id);
    atomic_init(&s->notified, false);
    es_buf_init(&s->out, EVENT_MAX);
    s->write_ms = es_mono_ms();

    es_reply_header(r, "Cache-Control", "no-cache");
    es_reply_header(r, "X-Accel-Buffering", "no"); /* proxies: pass events on at once */
    rc = es_reply_waiting(r, 200, "text/event-stream", sse_read, s, sse_free, &s->stream);
    if (rc == ES_EAGAIN)
        return es_reply_error(r, 503, "unavailable", "too many event streams are open", NULL);
    if (rc) return rc;

    /* After the reply: the first read() comes once this handler returned, and
     * reads the status after the subscription exists, so nothing is missed
     * in between.  Without a subscription the re-checks still follow it. */
    char channel[96];
    snprintf(channel, sizeof channel, "upload.%s", s->id);
    if (es_cache_subscribe(app->cache, channel, on_notify, s, &s->sub) != ES_OK)
        es_warn(COMP, "upload %s: no notifications; its events follow the status every %d ms",
                s->id, RECHECK_MS);
    return ES_OK;
}
