/* metrics.c - the process-wide metrics registry, rendered as Prometheus text
 * (exposition format 0.0.4).
 *
 * A metric (name, type, help, buckets) owns its series in first-seen order,
 * so the rendered text groups each metric's samples under its HELP and TYPE
 * lines and reads the same from one scrape to the next.  Lookups go through a
 * hash of name + labels.  One mutex guards everything: an update is a hash
 * lookup and an addition, far cheaper than the request it counts.
 *
 * A metric used before es_metric_define() is defined on the spot from the
 * call (add -> counter, set -> gauge, observe -> histogram with Prometheus'
 * default buckets), so a forgotten define loses the help text, not data.
 * Label sets come from request data (routes, statuses), so each metric keeps
 * at most ES_METRIC_MAX_SERIES series; the rest are dropped with one warning. */
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/metrics.h"

#define ES_METRIC_MAX_BUCKETS 32
#define ES_METRIC_MAX_SERIES  10000

typedef struct series {
    struct series *hnext; /* hash chain */
    struct series *next;  /* the metric's series, in first-seen order */
    struct metric *metric;
    uint64_t hash;
    char *labels;
    double value; /* counter, gauge; histogram: the sum */
    uint64_t count;
    uint64_t *buckets; /* histogram: per-bucket (not cumulative) counts */
} series;

typedef struct metric {
    struct metric *next; /* definition order */
    char *name;
    char *help;
    es_metric_type type;
    double bounds[ES_METRIC_MAX_BUCKETS];
    int nbounds;
    series *first, *last;
    int nseries;
    bool warned_full;
} metric;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static metric *metrics_head, *metrics_tail;
static series **table;
static size_t table_size, table_count;

static const double default_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static uint64_t fnv1a(const char *name, const char *labels)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL; /* separator: ("ab","c") != ("a","bc") */
    for (const char *p = labels; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

static metric *metric_find(const char *name)
{
    for (metric *m = metrics_head; m; m = m->next)
        if (strcmp(m->name, name) == 0) return m;
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static metric *metric_new(const char *name, es_metric_type type, const char *help,
                          const double *buckets, int nbuckets)
{
    metric *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->name = strdup(name);
    m->help = strdup(help ? help : "");
    if (!m->name || !m->help) {
        free(m->name);
        free(m->help);
        free(m);
        return NULL;
    }
    m->type = type;
    if (type == ES_METRIC_HISTOGRAM) {
        if (!buckets || nbuckets <= 0) {
            buckets = default_buckets;
            nbuckets = (int)ES_ARRAY_LEN(default_buckets);
        }
        if (nbuckets > ES_METRIC_MAX_BUCKETS) nbuckets = ES_METRIC_MAX_BUCKETS;
        for (int i = 0; i < nbuckets; i++)
            if (isfinite(buckets[i])) m->bounds[m->nbounds++] = buckets[i];
        qsort(m->bounds, (size_t)m->nbounds, sizeof m->bounds[0], cmp_double);
    }
    if (metrics_tail)
        metrics_tail->next = m;
    else
        metrics_head = m;
    metrics_tail = m;
    return m;
}

void es_metric_define(const char *name, es_metric_type type, const char *help,
                      const double *buckets, int nbuckets)
{
    if (!name || !*name) return;
    pthread_mutex_lock(&reg_lock);
    metric *m = metric_find(name);
    if (!m) {
        if (!metric_new(name, type, help, buckets, nbuckets))
            es_error("metrics", "out of memory defining %s", name);
    } else if (m->type != type) {
        es_warn("metrics", "%s redefined with another type; keeping the first", name);
    }
    pthread_mutex_unlock(&reg_lock);
}

static int table_grow(void)
{
    size_t nsize = table_size ? table_size * 2 : 256;
    series **nt = calloc(nsize, sizeof *nt);
    if (!nt) return ES_ENOMEM;
    for (size_t i = 0; i < table_size; i++) {
        series *s = table[i];
        while (s) {
            series *nx = s->hnext;
            size_t b = (size_t)(s->hash & (nsize - 1));
            s->hnext = nt[b];
            nt[b] = s;
            s = nx;
        }
    }
    free(table);
    table = nt;
    table_size = nsize;
    return ES_OK;
}

/* The series of (name, labels), created when new; NULL when it cannot be
 * (out of memory, too many series).  Called with reg_lock held. */
static series *series_get(const char *name, const char *labels, es_metric_type implied)
{
    if (!name || !*name) return NULL;
    if (!labels) labels = "";
    uint64_t h = fnv1a(name, labels);
    if (table_size) {
        for (series *s = table[h & (table_size - 1)]; s; s = s->hnext)
            if (s->hash == h && strcmp(s->labels, labels) == 0 &&
                strcmp(s->metric->name, name) == 0)
                return s;
    }
    metric *m = metric_find(name);
    if (!m && !(m = metric_new(name, implied, "", NULL, 0))) return NULL;
    if (m->nseries >= ES_METRIC_MAX_SERIES) {
        if (!m->warned_full) {
            m->warned_full = true;
            es_warn("metrics", "%s has %d series; dropping new label sets", name, m->nseries);
        }
        return NULL;
    }
    if (table_count + 1 > table_size && table_grow() != ES_OK) return NULL;
    series *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->labels = strdup(labels);
    if (m->type == ES_METRIC_HISTOGRAM && m->nbounds > 0)
        s->buckets = calloc((size_t)m->nbounds, sizeof *s->buckets);
    if (!s->labels || (m->type == ES_METRIC_HISTOGRAM && m->nbounds > 0 && !s->buckets)) {
        free(s->labels);
        free(s->buckets);
        free(s);
        return NULL;
    }
    s->metric = m;
    s->hash = h;
    size_t b = (size_t)(h & (table_size - 1));
    s->hnext = table[b];
    table[b] = s;
    table_count++;
    if (m->last)
        m->last->next = s;
    else
        m->first = s;
    m->last = s;
    m->nseries++;
    return s;
}

void es_metric_add(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&reg_lock);
    series *s = series_get(name, labels, ES_METRIC_COUNTER);
    if (s && s->metric->type != ES_METRIC_HISTOGRAM) s->value += v;
    pthread_mutex_unlock(&reg_lock);
}

void es_metric_set(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&reg_lock);
    series *s = series_get(name, labels, ES_METRIC_GAUGE);
    if (s && s->metric->type != ES_METRIC_HISTOGRAM) s->value = v;
    pthread_mutex_unlock(&reg_lock);
}

void es_metric_observe(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&reg_lock);
    series *s = series_get(name, labels, ES_METRIC_HISTOGRAM);
    if (s && s->metric->type == ES_METRIC_HISTOGRAM) {
        metric *m = s->metric;
        for (int i = 0; i < m->nbounds; i++) {
            if (v <= m->bounds[i]) {
                s->buckets[i]++;
                break;
            }
        }
        s->count++;
        s->value += v;
    }
    pthread_mutex_unlock(&reg_lock);
}

/* Prometheus wants integers without a fraction, and its own spellings of the
 * special values. */
static void fmt_value(double v, char *out, size_t len)
{
    if (isnan(v))
        snprintf(out, len, "NaN");
    else if (isinf(v))
        snprintf(out, len, "%s", v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        snprintf(out, len, "%.0f", v);
    else
        snprintf(out, len, "%.15g", v);
}

static int render_help(es_buf *out, const metric *m)
{
    int rc = es_buf_printf(out, "# HELP %s ", m->name);
    for (const char *p = m->help; rc == ES_OK && *p; p++) {
        if (*p == '\\')
            rc = es_buf_puts(out, "\\\\");
        else if (*p == '\n')
            rc = es_buf_puts(out, "\\n");
        else
            rc = es_buf_append(out, p, 1);
    }
    if (rc == ES_OK) rc = es_buf_puts(out, "\n");
    return rc;
}

static const char *type_name(es_metric_type t)
{
    switch (t) {
    case ES_METRIC_COUNTER: return "counter";
    case ES_METRIC_GAUGE: return "gauge";
    case ES_METRIC_HISTOGRAM: return "histogram";
    }
    return "untyped";
}

/* name{labels} value, or name value without labels. */
static int render_sample(es_buf *out, const char *name, const char *suffix, const char *labels,
                         const char *extra, const char *value)
{
    bool has_l = labels && *labels, has_x = extra && *extra;
    if (!has_l && !has_x) return es_buf_printf(out, "%s%s %s\n", name, suffix, value);
    return es_buf_printf(out, "%s%s{%s%s%s} %s\n", name, suffix, has_l ? labels : "",
                         has_l && has_x ? "," : "", has_x ? extra : "", value);
}

static int render_metric(es_buf *out, const metric *m)
{
    int rc = render_help(out, m);
    if (rc == ES_OK) rc = es_buf_printf(out, "# TYPE %s %s\n", m->name, type_name(m->type));
    char v[64], le[80];
    for (const series *s = m->first; s && rc == ES_OK; s = s->next) {
        if (m->type != ES_METRIC_HISTOGRAM) {
            fmt_value(s->value, v, sizeof v);
            rc = render_sample(out, m->name, "", s->labels, NULL, v);
            continue;
        }
        uint64_t cum = 0;
        for (int i = 0; i < m->nbounds && rc == ES_OK; i++) {
            cum += s->buckets[i];
            char b[64];
            fmt_value(m->bounds[i], b, sizeof b);
            snprintf(le, sizeof le, "le=\"%s\"", b);
            snprintf(v, sizeof v, "%llu", (unsigned long long)cum);
            rc = render_sample(out, m->name, "_bucket", s->labels, le, v);
        }
        snprintf(v, sizeof v, "%llu", (unsigned long long)s->count);
        if (rc == ES_OK) rc = render_sample(out, m->name, "_bucket", s->labels, "le=\"+Inf\"", v);
        char sum[64];
        fmt_value(s->value, sum, sizeof sum);
        if (rc == ES_OK) rc = render_sample(out, m->name, "_sum", s->labels, NULL, sum);
        if (rc == ES_OK) rc = render_sample(out, m->name, "_count", s->labels, NULL, v);
    }
    return rc;
}

int es_metrics_render(es_buf *out)
{
    int rc = ES_OK;
    pthread_mutex_lock(&reg_lock);
    for (const metric *m = metrics_head; m && rc == ES_OK; m = m->next)
        rc = render_metric(out, m);
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

void es_metrics_reset(void)
{
    pthread_mutex_lock(&reg_lock);
    metric *m = metrics_head;
    while (m) {
        metric *mn = m->next;
        series *s = m->first;
        while (s) {
            series *sn = s->next;
            free(s->labels);
            free(s->buckets);
            free(s);
            s = sn;
        }
        free(m->name);
        free(m->help);
        free(m);
        m = mn;
    }
    metrics_head = metrics_tail = NULL;
    free(table);
    table = NULL;
    table_size = table_count = 0;
    pthread_mutex_unlock(&reg_lock);
}

void es_metric_label_escape(const char *v, char *out, size_t len)
{
    if (!out || len == 0) return;
    size_t o = 0;
    for (const char *p = v ? v : ""; *p; p++) {
        const char *rep = NULL;
        if (*p == '"')
            rep = "\\\"";
        else if (*p == '\\')
            rep = "\\\\";
        else if (*p == '\n')
            rep = "\\n";
        size_t need = rep ? 2 : 1;
        if (o + need >= len) break; /* never split an escape in two */
        if (rep) {
            out[o++] = rep[0];
            out[o++] = rep[1];
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}
