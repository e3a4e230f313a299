/* events.c - events in: validation, group commit to the broker, reading back.
 *
 * The hot path is one small JSON object per request.  A request's rows go
 * into the group at the tail of a list; a publisher takes the group at the
 * head, publishes it as one message and answers every request in it.  While
 * it waits for the broker's confirmation the next group fills, so under load
 * a message carries as many events as arrived during one confirmation round
 * trip, and with ESTEIRA_EVENTS_PUBLISHERS publishers several rounds overlap.
 * A group stops taking rows at ESTEIRA_EVENTS_GROUP_MAX bytes; all groups
 * together are bounded by ESTEIRA_EVENTS_PENDING_MAX (503 beyond). */
#include "esteira/events.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/job.h"
#include "esteira/log.h"
#include "esteira/metrics.h"
#include "esteira/store.h"
#include "pipeline/events_priv.h"

const char *const es_event_cols[ES_EVENT_NCOLS] = {"tenant",      "id",         "user_id",
                                                   "event_type",  "event_data", "session_id",
                                                   "occurred_at", "received_at"};
/* user_interactions on PostgreSQL (schema.c): event_data is json, whose
 * binary form is its text */
const es_copy_type es_event_types[ES_EVENT_NCOLS] = {ES_COPY_TEXT, ES_COPY_UUID, ES_COPY_TEXT,
                                                     ES_COPY_TEXT, ES_COPY_TEXT, ES_COPY_TEXT,
                                                     ES_COPY_INT8, ES_COPY_INT8};

#define FUTURE_MAX_MS (24LL * 3600 * 1000) /* occurredAt may run this far ahead (clock skew) */

#define M_ACCEPTED "esteira_events_accepted_total"
#define M_REJECTED "esteira_events_rejected_total"
#define M_GROUP    "esteira_events_publish_events"
#define M_PUBLISH  "esteira_events_publish_seconds"

/* ------------------------------------------------------------------ validation */

static void problem(json_t *errs, const char *field, const char *what)
{
    if (errs) json_array_append_new(errs, json_pack("{s:s, s:s}", "field", field, "problem", what));
}

static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        if (((unsigned char)*s & 0xC0) != 0x80) n++;
    return n;
}

/* A required or optional short string: userId, sessionId. */
static const char *check_text(const json_t *ev, const char *key, bool required, size_t max,
                              json_t *errs, bool *bad)
{
    const json_t *v = json_object_get(ev, key);
    if (!v || json_is_null(v)) {
        if (required) {
            problem(errs, key, "required");
            *bad = true;
        }
        return NULL;
    }
    if (!json_is_string(v)) {
        problem(errs, key, "must be a string");
        *bad = true;
        return NULL;
    }
    const char *s = json_string_value(v);
    if (!*s) {
        problem(errs, key, "must not be empty");
        *bad = true;
        return NULL;
    }
    if (strlen(s) != json_string_length(v)) { /* an embedded NUL */
        problem(errs, key, "must not contain NUL");
        *bad = true;
        return NULL;
    }
    if (utf8_chars(s) > max) {
        char msg[64];
        snprintf(msg, sizeof msg, "longer than %zu characters", max);
        problem(errs, key, msg);
        *bad = true;
        return NULL;
    }
    return s;
}

static const char *const known_fields[] = {"userId",    "eventType", "eventData",
                                           "sessionId", "eventId",   "occurredAt"};

int es_event_check(const es_event_rules *rules, const json_t *ev, const char *tenant,
                   int64_t now_ms, es_buf *row, char id_out[ES_UUID_LEN + 1], size_t *type_out,
                   json_t *errs)
{
    if (!json_is_object(ev)) {
        problem(errs, "", "an event must be a JSON object");
        return ES_EINVAL;
    }
    /* problems are named with their field only; the caller adds an index */
    bool bad = false;
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)ev, key, val)
    {
        (void)val;
        bool known = false;
        for (size_t i = 0; i < ES_ARRAY_LEN(known_fields) && !known; i++)
            known = strcmp(key, known_fields[i]) == 0;
        if (!known) {
            problem(errs, key, "unknown field");
            bad = true;
        }
    }
    const char *user = check_text(ev, "userId", true, rules->field_max, errs, &bad);
    const char *session = check_text(ev, "sessionId", true, rules->field_max, errs, &bad);

    size_t type = rules->ntypes;
    const json_t *t = json_object_get(ev, "eventType");
    if (!t || json_is_null(t)) {
        problem(errs, "eventType", "required");
        bad = true;
    } else if (!json_is_string(t)) {
        problem(errs, "eventType", "must be a string");
        bad = true;
    } else {
        for (size_t i = 0; i < rules->ntypes && type == rules->ntypes; i++)
            if (strcmp(json_string_value(t), rules->types[i]) == 0) type = i;
        if (type == rules->ntypes) {
            char msg[512];
            size_t o = (size_t)snprintf(msg, sizeof msg, "unknown event type (one of:");
            for (size_t i = 0; i < rules->ntypes && o < sizeof msg; i++)
                o += (size_t)snprintf(msg + o, sizeof msg - o, "%s %s", i ? "," : "",
                                      rules->types[i]);
            if (o < sizeof msg) snprintf(msg + o, sizeof msg - o, ")");
            problem(errs, "eventType", msg);
            bad = true;
        }
    }

    char *data = NULL;
    const json_t *d = json_object_get(ev, "eventData");
    if (d && !json_is_null(d)) {
        if (!json_is_object(d)) {
            problem(errs, "eventData", "must be an object");
            bad = true;
        } else {
            data = json_dumps(d, JSON_COMPACT | JSON_PRESERVE_ORDER);
            if (!data) return ES_ENOMEM;
            if (strlen(data) > rules->data_max) {
                char msg[64];
                snprintf(msg, sizeof msg, "larger than %zu bytes", rules->data_max);
                problem(errs, "eventData", msg);
                bad = true;
            }
        }
    }

    char id[ES_UUID_LEN + 1] = "";
    const json_t *e = json_object_get(ev, "eventId");
    if (e && !json_is_null(e)) {
        if (!json_is_string(e) || !es_uuid_valid(json_string_value(e))) {
            problem(errs, "eventId", "must be a UUID");
            bad = true;
        } else {
            for (size_t i = 0; i < ES_UUID_LEN; i++)
                id[i] = (char)tolower((unsigned char)json_string_value(e)[i]);
            id[ES_UUID_LEN] = '\0';
        }
    }

    int64_t occurred = now_ms;
    const json_t *o = json_object_get(ev, "occurredAt");
    if (o && !json_is_null(o)) {
        bool ok = false;
        if (json_is_string(o))
            ok = es_time_parse_iso(json_string_value(o), &occurred) == ES_OK;
        else if (json_is_integer(o))
            ok = (occurred = json_integer_value(o)) >= 0;
        if (!ok) {
            problem(errs, "occurredAt",
                    "must be an RFC 3339 time (2026-11-22T10:00:00Z) or milliseconds since 1970");
            bad = true;
        } else if (occurred < 0 || occurred > now_ms + FUTURE_MAX_MS) {
            problem(errs, "occurredAt", "more than 24 hours ahead, or before 1970");
            bad = true;
        }
    }
    if (bad) {
        free(data);
        return ES_EINVAL;
    }
    if (!id[0]) es_uuid7(id);

    size_t start = row->len;
    char occ[24], rec[24];
    int nocc = snprintf(occ, sizeof occ, "%lld", (long long)occurred);
    int nrec = snprintf(rec, sizeof rec, "%lld", (long long)now_ms);
    int rc = es_copy_field(row, tenant, strlen(tenant), false);
    if (!rc) rc = es_copy_field(row, id, ES_UUID_LEN, false);
    if (!rc) rc = es_copy_field(row, user, strlen(user), false);
    if (!rc) rc = es_copy_field(row, rules->types[type], strlen(rules->types[type]), false);
    if (!rc) rc = data ? es_copy_field(row, data, strlen(data), false) : es_copy_null(row, false);
    if (!rc) rc = es_copy_field(row, session, strlen(session), false);
    if (!rc) rc = es_copy_field(row, occ, (size_t)nocc, false);
    if (!rc) rc = es_copy_field(row, rec, (size_t)nrec, true);
    free(data);
    if (rc) {
        row->len = start;
        if (row->data) row->data[start] = '\0';
        return rc;
    }
    memcpy(id_out, id, ES_UUID_LEN + 1);
    if (type_out) *type_out = type;
    return ES_OK;
}

/* ------------------------------------------------------------------ metrics */

void ev_metrics_define(void)
{
    static const double sizes[] = {1, 10, 100, 1000, 10000, 100000};
    static const double secs[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};
    es_metric_define(M_ACCEPTED, ES_METRIC_COUNTER, "Events accepted (answered 202), by type", NULL,
                     0);
    es_metric_define(M_REJECTED, ES_METRIC_COUNTER, "Events refused as invalid", NULL, 0);
    es_metric_define(M_GROUP, ES_METRIC_HISTOGRAM, "Events per broker message (group commit)",
                     sizes, (int)ES_ARRAY_LEN(sizes));
    es_metric_define(M_PUBLISH, ES_METRIC_HISTOGRAM,
                     "Time from a group's first event to the broker's confirmation", secs,
                     (int)ES_ARRAY_LEN(secs));
}

void es_events_count_accepted(es_events *ev, size_t type, size_t n)
{
    if (type < ev->ntypes && n) es_metric_add(M_ACCEPTED, ev->accepted_labels[type], (double)n);
}

/* ------------------------------------------------------------------ group commit */

typedef struct ev_waiter {
    es_events_done_fn fn;
    void *arg;
} ev_waiter;

struct ev_group {
    ev_group *next;
    es_buf rows;
    size_t events;
    ev_waiter *w;
    size_t nw, capw;
    int64_t first_ms; /* when its first rows came (wall clock) */
    int64_t first_us; /* the same, monotonic */
};

static void group_free(ev_group *g)
{
    if (!g) return;
    es_buf_finish(&g->rows);
    free(g->w);
    free(g);
}

int es_events_submit(es_events *ev, const char *rows, size_t len, size_t n, es_events_done_fn done,
                     void *arg)
{
    size_t group_max = (size_t)ev->cfg->events_group_max;
    pthread_mutex_lock(&ev->mu);
    int rc = ES_OK;
    if (ev->closing || ev->npubs == 0) {
        rc = ES_EAGAIN;
        goto unlock;
    }
    if (ev->pending_bytes + len > (size_t)ev->cfg->events_pending_max) {
        es_warn(EV_COMP,
                "refusing events: %zu bytes wait for the broker (ESTEIRA_EVENTS_PENDING_MAX)",
                ev->pending_bytes);
        rc = ES_EAGAIN;
        goto unlock;
    }
    ev_group *g = ev->tail;
    if (!g || (g->rows.len && g->rows.len + len > group_max)) {
        g = calloc(1, sizeof *g);
        if (!g) {
            rc = ES_ENOMEM;
            goto unlock;
        }
        es_buf_init(&g->rows, 0);
        g->first_ms = es_now_ms();
        g->first_us = es_mono_us();
        if (ev->tail)
            ev->tail->next = g;
        else
            ev->head = g;
        ev->tail = g;
    }
    if (g->nw == g->capw) {
        size_t cap = g->capw ? g->capw * 2 : 16;
        ev_waiter *w = realloc(g->w, cap * sizeof *w);
        if (!w) {
            rc = ES_ENOMEM;
            goto unlock;
        }
        g->w = w;
        g->capw = cap;
    }
    if ((rc = es_buf_append(&g->rows, rows, len))) goto unlock;
    g->w[g->nw++] = (ev_waiter){done, arg};
    g->events += n;
    ev->pending_bytes += len;
    pthread_cond_signal(&ev->cv);
unlock:
    pthread_mutex_unlock(&ev->mu);
    return rc;
}

static int publish_group(es_events *ev, ev_group *g)
{
    char count[24], first[24];
    es_kv h[2] = {{"count", ES_I64(count, g->events)}, {"receivedMs", ES_I64(first, g->first_ms)}};
    es_msg m = {.queue = ES_EVENTS_QUEUE,
                .body = g->rows.data,
                .len = g->rows.len,
                .headers = h,
                .nheaders = 2};
    return es_broker_publish(ev->app->broker, &m, 1);
}

static void *publisher_main(void *arg)
{
    es_events *ev = arg;
    pthread_mutex_lock(&ev->mu);
    for (;;) {
        while (!ev->head && !ev->closing)
            pthread_cond_wait(&ev->cv, &ev->mu);
        ev_group *g = ev->head;
        if (!g) break; /* closing, and everything was sent */
        ev->head = g->next;
        if (!ev->head) ev->tail = NULL;
        pthread_mutex_unlock(&ev->mu);

        int rc = publish_group(ev, g);
        if (rc)
            es_warn(EV_COMP, "could not hand %zu events to the broker: %s (answered 503)",
                    g->events, es_strerror(rc));
        es_metric_observe(M_GROUP, "", (double)g->events);
        es_metric_observe(M_PUBLISH, "", (double)(es_mono_us() - g->first_us) / 1e6);
        for (size_t i = 0; i < g->nw; i++)
            g->w[i].fn(g->w[i].arg, rc);

        pthread_mutex_lock(&ev->mu);
        ev->pending_bytes -= g->rows.len;
        group_free(g);
    }
    pthread_mutex_unlock(&ev->mu);
    return NULL;
}

/* ------------------------------------------------------------------ life cycle */

const es_event_rules *es_events_rules(const es_events *ev)
{
    return &ev->rules;
}

static int parse_types(es_events *ev)
{
    const char *s = ev->cfg->events_types ? ev->cfg->events_types : "";
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        if (*p == ',') cap++;
    ev->types = calloc(cap, sizeof *ev->types);
    ev->accepted_labels = calloc(cap, sizeof *ev->accepted_labels);
    if (!ev->types || !ev->accepted_labels) return ES_ENOMEM;
    for (const char *p = s; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && isspace((unsigned char)*p))
            p++, len--;
        while (len && isspace((unsigned char)p[len - 1]))
            len--;
        if (len) {
            char *t = strndup(p, len);
            if (!t) return ES_ENOMEM;
            if (!es_ident_valid(t)) {
                es_error(
                    EV_COMP,
                    "ESTEIRA_EVENTS_TYPES: \"%s\" is not a valid event type ([a-z_][a-z0-9_]*)", t);
                free(t);
                return ES_EINVAL;
            }
            char label[128];
            snprintf(label, sizeof label, "type=\"%s\"", t);
            ev->types[ev->ntypes] = t;
            ev->accepted_labels[ev->ntypes] = strdup(label);
            if (!ev->accepted_labels[ev->ntypes++]) return ES_ENOMEM;
        }
        if (!end) break;
        p = end + 1;
    }
    if (ev->ntypes == 0) {
        es_error(EV_COMP, "ESTEIRA_EVENTS_TYPES names no event type");
        return ES_EINVAL;
    }
    return ES_OK;
}

int es_events_create(es_app *app, es_events **out)
{
    *out = NULL;
    es_events *ev = calloc(1, sizeof *ev);
    if (!ev) return ES_ENOMEM;
    ev->app = app;
    ev->cfg = app->cfg;
    pthread_mutex_init(&ev->mu, NULL);
    pthread_cond_init(&ev->cv, NULL);
    atomic_init(&ev->flush_stop, false);
    int rc = parse_types(ev);
    if (rc) goto fail;
    ev->rules = (es_event_rules){.types = (const char *const *)ev->types,
                                 .ntypes = ev->ntypes,
                                 .data_max = (size_t)app->cfg->events_data_max,
                                 .field_max = (size_t)app->cfg->events_field_max};
    ev_metrics_define();
    if ((rc = ev_store_register(ev))) goto fail;
    *out = ev;
    return ES_OK;
fail:
    es_events_destroy(ev);
    return rc;
}

int es_events_start(es_events *ev)
{
    int rc = es_broker_declare(ev->app->broker, ES_EVENTS_QUEUE);
    if (rc) {
        es_error(EV_COMP, "cannot declare queue %s: %s", ES_EVENTS_QUEUE, es_strerror(rc));
        return rc;
    }
    if (ev->app->roles & ES_ROLE_API) {
        int n = (int)ev->cfg->events_publishers;
        ev->pubs = calloc((size_t)n, sizeof *ev->pubs);
        if (!ev->pubs) return ES_ENOMEM;
        for (; ev->npubs < n; ev->npubs++)
            if (pthread_create(&ev->pubs[ev->npubs], NULL, publisher_main, ev) != 0) {
                es_error(EV_COMP, "cannot start a publisher thread");
                return ES_ENOMEM;
            }
    }
    if (ev->app->roles & ES_ROLE_WORKER) return ev_store_start(ev);
    return ES_OK;
}

void es_events_stop(es_events *ev)
{
    if (!ev) return;
    pthread_mutex_lock(&ev->mu);
    ev->closing = true;
    pthread_cond_broadcast(&ev->cv);
    pthread_mutex_unlock(&ev->mu);
    for (int i = 0; i < ev->npubs; i++)
        pthread_join(ev->pubs[i], NULL);
    ev->npubs = 0;
    ev_store_stop(ev);
}

void es_events_destroy(es_events *ev)
{
    if (!ev) return;
    es_events_stop(ev);
    for (size_t i = 0; i < ev->ntypes; i++) {
        free(ev->types[i]);
        free(ev->accepted_labels[i]);
    }
    free(ev->types);
    free(ev->accepted_labels);
    free(ev->pubs);
    free(ev->flushers);
    pthread_cond_destroy(&ev->cv);
    pthread_mutex_destroy(&ev->mu);
    free(ev);
}

/* ------------------------------------------------------------------ reading */

static json_t *iso_or_null(const char *ms)
{
    int64_t v;
    if (!ms || es_parse_i64(ms, INT64_MIN, INT64_MAX, &v)) return json_null();
    char buf[25];
    es_time_iso(v, buf);
    return json_string(buf);
}

/* cursor = "<occurred_at>.<id>" of the last item shown */
int es_events_query(es_events *ev, const es_event_query *q, json_t **items, char **next)
{
    *items = NULL;
    *next = NULL;
    char cur_at[24] = "", cur_id[ES_UUID_LEN + 1] = "";
    if (q->cursor && *q->cursor) {
        const char *dot = strchr(q->cursor, '.');
        int64_t at;
        if (!dot || (size_t)(dot - q->cursor) >= sizeof cur_at) return ES_EINVAL;
        memcpy(cur_at, q->cursor, (size_t)(dot - q->cursor));
        cur_at[dot - q->cursor] = '\0';
        if (es_parse_i64(cur_at, INT64_MIN, INT64_MAX, &at) || !es_uuid_valid(dot + 1))
            return ES_EINVAL;
        es_strlcpy(cur_id, dot + 1, sizeof cur_id);
    }
    es_buf sql;
    es_buf_init(&sql, 0);
    const char *p[8];
    int np = 0;
    char from[24], to[24], lim[16];
    p[np++] = q->tenant;
    es_buf_puts(&sql, "SELECT id, user_id, event_type, event_data, session_id, occurred_at,"
                      " received_at, processed FROM " ES_EVENTS_TABLE " WHERE tenant = $1");
    if (q->user_id) {
        p[np++] = q->user_id;
        es_buf_printf(&sql, " AND user_id = $%d", np);
    }
    if (q->event_type) {
        p[np++] = q->event_type;
        es_buf_printf(&sql, " AND event_type = $%d", np);
    }
    if (q->from_ms != INT64_MIN) {
        p[np++] = ES_I64(from, q->from_ms);
        es_buf_printf(&sql, " AND occurred_at >= $%d", np);
    }
    if (q->to_ms != INT64_MAX) {
        p[np++] = ES_I64(to, q->to_ms);
        es_buf_printf(&sql, " AND occurred_at < $%d", np);
    }
    if (cur_at[0]) {
        p[np++] = cur_at;
        p[np++] = cur_id;
        /* (occurred_at, id) < (cursor) in the order shown, newest first */
        es_buf_printf(&sql, " AND (occurred_at < $%d OR (occurred_at = $%d AND id < $%d))", np - 1,
                      np - 1, np);
    }
    p[np++] = ES_I64(lim, q->limit + 1);
    es_buf_printf(&sql, " ORDER BY occurred_at DESC, id DESC LIMIT $%d", np);

    es_rows *r = NULL;
    int rc = es_store_exec1(ev->app->store, es_buf_cstr(&sql), np, p, &r);
    es_buf_finish(&sql);
    if (rc) return rc;
    json_t *arr = json_array();
    int n = es_rows_count(r);
    for (int i = 0; i < n && i < q->limit; i++) {
        json_t *data = NULL;
        const char *d = es_rows_get(r, i, 3);
        if (d) data = json_loads(d, 0, NULL);
        const char *processed = es_rows_get(r, i, 7);
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:o, s:s, s:o, s:o, s:b}", "id", es_rows_get(r, i, 0), "userId",
            es_rows_get(r, i, 1), "eventType", es_rows_get(r, i, 2), "eventData",
            data ? data : json_null(), "sessionId", es_rows_get(r, i, 4), "occurredAt",
            iso_or_null(es_rows_get(r, i, 5)), "receivedAt", iso_or_null(es_rows_get(r, i, 6)),
            "processed", processed && (processed[0] == 't' || processed[0] == '1'));
        if (o) json_array_append_new(arr, o);
    }
    if (n > q->limit) {
        char buf[24 + ES_UUID_LEN + 2];
        snprintf(buf, sizeof buf, "%s.%s", es_rows_get(r, q->limit - 1, 5),
                 es_rows_get(r, q->limit - 1, 0));
        *next = strdup(buf);
    }
    es_rows_free(r);
    *items = arr;
    return ES_OK;
}

int es_events_stats(es_events *ev, const char *tenant, json_t **out)
{
    *out = NULL;
    es_rows *r = NULL;
    const char *p[] = {tenant};
    int rc = es_store_exec1(ev->app->store,
                            "SELECT event_type, n FROM event_counts WHERE tenant = $1"
                            " ORDER BY event_type",
                            1, p, &r);
    if (rc) return rc;
    json_t *by = json_object();
    int64_t total = 0;
    for (int i = 0; i < es_rows_count(r); i++) {
        int64_t n = es_rows_int(r, i, 1, 0);
        total += n;
        json_object_set_new(by, es_rows_get(r, i, 0), json_integer(n));
    }
    es_rows_free(r);
    r = NULL;

    int64_t hour = es_now_ms() / 3600000 * 3600000;
    char h[24];
    const char *hp[] = {ES_I64(h, hour - 3600000)};
    rc = es_store_exec1(ev->app->store,
                        "SELECT COALESCE(SUM(flushes), 0), COALESCE(SUM(events), 0),"
                        " COALESCE(SUM(inserted), 0), COALESCE(SUM(age_sum_ms), 0),"
                        " COALESCE(MAX(age_max_ms), 0), MAX(last_ms),"
                        " COALESCE(SUM(CASE WHEN hour_ms >= $1 THEN flushes ELSE 0 END), 0),"
                        " COALESCE(SUM(CASE WHEN hour_ms >= $1 THEN age_sum_ms ELSE 0 END), 0),"
                        " COALESCE(MAX(CASE WHEN hour_ms >= $1 THEN age_max_ms ELSE 0 END), 0),"
                        " COALESCE(SUM(duration_sum_ms), 0), COALESCE(MAX(duration_max_ms), 0)"
                        " FROM event_flushes",
                        1, hp, &r);
    if (rc) {
        json_decref(by);
        return rc;
    }
    int64_t flushes = es_rows_int(r, 0, 0, 0), events = es_rows_int(r, 0, 1, 0);
    int64_t recent = es_rows_int(r, 0, 6, 0);
    json_t *batches =
        json_pack("{s:I, s:I, s:I, s:f, s:o, s:f, s:I}", "flushes", (json_int_t)flushes, "events",
                  (json_int_t)events, "inserted", (json_int_t)es_rows_int(r, 0, 2, 0), "avgSize",
                  flushes ? (double)events / (double)flushes : 0.0, "lastAt",
                  iso_or_null(es_rows_get(r, 0, 5)), "avgDurationMs",
                  flushes ? (double)es_rows_int(r, 0, 9, 0) / (double)flushes : 0.0,
                  "maxDurationMs", (json_int_t)es_rows_int(r, 0, 10, 0));
    json_t *lag = json_pack("{s:f, s:I, s:f, s:I}", "avgMs",
                            flushes ? (double)es_rows_int(r, 0, 3, 0) / (double)flushes : 0.0,
                            "maxMs", (json_int_t)es_rows_int(r, 0, 4, 0), "lastHourAvgMs",
                            recent ? (double)es_rows_int(r, 0, 7, 0) / (double)recent : 0.0,
                            "lastHourMaxMs", (json_int_t)es_rows_int(r, 0, 8, 0));
    es_rows_free(r);

    json_t *o = json_pack("{s:I, s:o, s:o, s:o}", "total", (json_int_t)total, "byType", by,
                          "batches", batches, "flushLag", lag);
    int64_t ready = 0, unacked = 0;
    if (es_broker_depth(ev->app->broker, ES_EVENTS_QUEUE, &ready, &unacked) == ES_OK)
        json_object_set_new(o, "pending",
                            json_pack("{s:I, s:I}", "messages", (json_int_t)ready, "inFlight",
                                      (json_int_t)unacked));
    *out = o;
    return ES_OK;
}
