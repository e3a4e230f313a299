/* conf.c - the settings table and its sources (defaults, .env, environment, flags). */
#include "esteira/conf.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define F(field) offsetof(es_config, field)
#define KB       1024LL
#define MB       (1024LL * 1024)
#define GB       (1024LL * MB)
#define SEC      1000LL
#define MIN      (60 * SEC)

static const es_conf_entry table[] = {
    /* where things live */
    {"data_dir", ES_CONF_STR, F(data_dir), "./esteira-data", 0, 0, NULL, 0,
     "directory of the embedded backends' data"},
    {"database_url", ES_CONF_STR, F(database_url), "sqlite:{data_dir}/esteira.db", 0, 0, NULL,
     ES_CONF_SECRET, "the store: sqlite:PATH or postgres://user:pw@host/db"},
    {"broker_url", ES_CONF_STR, F(broker_url), "local:{data_dir}/queue", 0, 0, NULL, ES_CONF_SECRET,
     "the broker: local:DIR or amqp://user:pw@host:5672/vhost"},
    {"cache_url", ES_CONF_STR, F(cache_url), "local:", 0, 0, NULL, ES_CONF_SECRET,
     "the cache: local: or redis://host:6379/0"},
    {"blob_url", ES_CONF_STR, F(blob_url), "file:{data_dir}/blobs", 0, 0, NULL, 0,
     "object storage: file:DIR or s3://bucket?endpoint=URL&region=R"},
    {"datasets_dir", ES_CONF_STR, F(datasets_dir), "", 0, 0, NULL, 0,
     "directory of dataset definitions (JSON files)"},
    /* HTTP server */
    {"host", ES_CONF_STR, F(host), "127.0.0.1", 0, 0, NULL, 0,
     "address the API binds to (other than loopback requires API keys)"},
    {"port", ES_CONF_INT, F(port), "8080", 0, 65535, NULL, 0,
     "port of the API (0 = any free port)"},
    {"public_url", ES_CONF_STR, F(public_url), "", 0, 0, NULL, 0,
     "URL clients reach the API at, for signed URLs (default http://HOST:PORT)"},
    {"http_threads", ES_CONF_INT, F(http_threads), "4", 1, 256, NULL, 0, "HTTP worker threads"},
    {"max_body", ES_CONF_SIZE, F(max_body), "1MB", 1 * KB, 1 * GB, NULL, 0,
     "largest JSON request body"},
    {"max_upload", ES_CONF_SIZE, F(max_upload), "10GB", 1 * KB, 1024 * GB, NULL, 0,
     "largest streamed request body (CSV uploads, blobs)"},
    {"max_header", ES_CONF_SIZE, F(max_header), "16KB", 1 * KB, 1 * MB, NULL, 0,
     "largest request line plus headers"},
    {"max_connections", ES_CONF_INT, F(max_connections), "1024", 1, 100000, NULL, 0,
     "concurrent HTTP connections"},
    {"max_event_streams", ES_CONF_INT, F(max_event_streams), "256", 1, 100000, NULL, 0,
     "event streams (Server-Sent Events) open at once; more are refused with 503"},
    {"conn_timeout_ms", ES_CONF_DURATION, F(conn_timeout_ms), "30s", 1 * SEC, 3600 * SEC, NULL, 0,
     "idle or stalled connections are closed after this"},
    {"request_timeout_ms", ES_CONF_DURATION, F(request_timeout_ms), "60s", 1 * SEC, 3600 * SEC,
     NULL, 0, "a JSON request body must arrive whole within this (slow clients are disconnected)"},
    {"json_max_depth", ES_CONF_INT, F(json_max_depth), "32", 2, 1000, NULL, 0,
     "deepest nesting accepted in a JSON body"},
    {"auth", ES_CONF_STR, F(auth), "auto", 0, 0, "auto|required", 0,
     "auto: no token needed on loopback until a key exists; required: always"},
    {"secret", ES_CONF_STR, F(secret), "", 0, 0, NULL, ES_CONF_SECRET,
     "key that signs URLs (default: generated once into DATA_DIR/secret)"},
    {"signed_url_ttl_ms", ES_CONF_DURATION, F(signed_url_ttl_ms), "15m", 1 * SEC, 7 * 24 * 60 * MIN,
     NULL, 0, "lifetime of signed upload/download URLs"},
    /* jobs */
    {"workers", ES_CONF_INT, F(workers), "4", 0, 1024, NULL, 0,
     "worker threads per job kind (0 = this process runs no workers)"},
    {"job_max_attempts", ES_CONF_INT, F(job_max_attempts), "5", 1, 100, NULL, 0,
     "attempts before a job is dead-lettered"},
    {"job_backoff_base_ms", ES_CONF_DURATION, F(job_backoff_base_ms), "1s", 1, 3600 * SEC, NULL, 0,
     "retry delay after the first failure (doubles each attempt, with jitter)"},
    {"job_backoff_cap_ms", ES_CONF_DURATION, F(job_backoff_cap_ms), "5m", 1, 24 * 60 * MIN, NULL, 0,
     "longest retry delay"},
    {"job_timeout_ms", ES_CONF_DURATION, F(job_timeout_ms), "5m", 1 * SEC, 24 * 60 * MIN, NULL, 0,
     "lease of a running job: after it, a job whose worker vanished is run again"},
    {"job_kinds", ES_CONF_STR, F(job_kinds), "", 0, 0, NULL, 0,
     "per-kind overrides, e.g. noop:concurrency=8,attempts=3,base=100ms,cap=10s;report:..."},
    {"shutdown_timeout_ms", ES_CONF_DURATION, F(shutdown_timeout_ms), "30s", 0, 3600 * SEC, NULL, 0,
     "on SIGTERM, how long in-flight work may take before it is handed back"},
    {"queue_sync", ES_CONF_BOOL, F(queue_sync), "false", 0, 1, NULL, 0,
     "local broker: fsync every commit (survives power loss; kill -9 is survived either way)"},
    {"prefetch", ES_CONF_INT, F(prefetch), "16", 1, 10000, NULL, 0,
     "messages a worker holds unacknowledged"},
    /* uploads */
    {"batch_rows", ES_CONF_INT, F(batch_rows), "1000", 1, 1000000, NULL, 0,
     "rows per batch of a CSV upload"},
    {"batch_bytes", ES_CONF_SIZE, F(batch_bytes), "4MB", 4 * KB, 1 * GB, NULL, 0,
     "a batch is also cut when its rows reach this many bytes of the file"},
    {"batches_per_job", ES_CONF_INT, F(batches_per_job), "0", 0, 1000, NULL, 0,
     "consecutive batches one job loads in one transaction (0 = auto: 1000 on sqlite:, 8 "
     "elsewhere; SQLite pays per commit for every index page a batch touches)"},
    {"csv_max_field", ES_CONF_SIZE, F(csv_max_field), "64KB", 16, 64 * MB, NULL, 0,
     "longest CSV field (a longer one fails the upload, naming its line)"},
    {"csv_max_line", ES_CONF_SIZE, F(csv_max_line), "1MB", 64, 256 * MB, NULL, 0,
     "longest CSV record"},
    {"reject_max_percent", ES_CONF_INT, F(reject_max_percent), "100", 0, 100, NULL, 0,
     "an upload whose rejected rows exceed this percentage ends failed (100 = never)"},
    /* events */
    {"events_types", ES_CONF_STR, F(events_types),
     "view,purchase,add_to_cart,remove_from_cart,login,logout,search", 0, 0, NULL, 0,
     "event types accepted (comma-separated)"},
    {"events_data_max", ES_CONF_SIZE, F(events_data_max), "16KB", 16, 16 * MB, NULL, 0,
     "largest eventData of one event (as compact JSON)"},
    {"events_field_max", ES_CONF_INT, F(events_field_max), "256", 1, 65536, NULL, 0,
     "longest userId or sessionId"},
    {"events_request_max", ES_CONF_INT, F(events_request_max), "5000", 1, 1000000, NULL, 0,
     "events in one POST /v1/events/batch"},
    {"events_group_max", ES_CONF_SIZE, F(events_group_max), "256KB", 4 * KB, 64 * MB, NULL, 0,
     "events accepted at the same time travel in one broker message of up to this size"},
    {"events_pending_max", ES_CONF_SIZE, F(events_pending_max), "32MB", 64 * KB, 4 * GB, NULL, 0,
     "events waiting for the broker's confirmation; beyond it requests get 503"},
    {"events_publishers", ES_CONF_INT, F(events_publishers), "2", 1, 64, NULL, 0,
     "broker publishes of accepted events in flight at once (API)"},
    {"events_batch_max", ES_CONF_INT, F(events_batch_max), "1000", 1, 1000000, NULL, 0,
     "a worker stores its buffered events when they reach this many"},
    {"events_flush_ms", ES_CONF_DURATION, F(events_flush_ms), "1s", 1, 3600 * SEC, NULL, 0,
     "… or when the oldest of them is this old"},
    {"events_flushers", ES_CONF_INT, F(events_flushers), "1", 0, 64, NULL, 0,
     "event-storing threads per worker process (0 = this process stores no events)"},
    /* logs */
    {"log_level", ES_CONF_STR, F(log_level), "info", 0, 0, "debug|info|warn|error|off", 0,
     "least severe level logged"},
    /* client commands */
    {"url", ES_CONF_STR, F(url), "http://127.0.0.1:8080", 0, 0, NULL, ES_CONF_CLIENT,
     "the server client commands talk to"},
    {"token", ES_CONF_STR, F(token), "", 0, 0, NULL, ES_CONF_SECRET | ES_CONF_CLIENT,
     "API key client commands send"},
};

#define NSETTINGS ES_ARRAY_LEN(table)

const es_conf_entry *es_conf_table(size_t *n)
{
    *n = NSETTINGS;
    return table;
}

const es_conf_entry *es_conf_find(const char *name)
{
    char norm[64];
    size_t i = 0;
    for (; name[i] && i < sizeof norm - 1; i++)
        norm[i] = name[i] == '-' ? '_' : name[i];
    norm[i] = 0;
    for (size_t k = 0; k < NSETTINGS; k++)
        if (strcmp(table[k].name, norm) == 0) return &table[k];
    return NULL;
}

static void env_name(const es_conf_entry *e, char *out, size_t len)
{
    size_t o = (size_t)snprintf(out, len, "ESTEIRA_");
    for (const char *p = e->name; *p && o < len - 1; p++)
        out[o++] = (char)toupper((unsigned char)*p);
    out[o] = 0;
}

static void fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int set_entry(es_config *cfg, const es_conf_entry *e, const char *v, char *err,
                     size_t errlen)
{
    char *base = (char *)cfg + e->offset;
    int64_t n = 0;
    switch (e->type) {
    case ES_CONF_STR:
        if (e->choices) {
            bool ok = false;
            size_t vl = strlen(v);
            for (const char *c = e->choices; *c;) {
                const char *bar = strchr(c, '|');
                size_t cl = bar ? (size_t)(bar - c) : strlen(c);
                if (cl == vl && strncmp(c, v, cl) == 0) ok = true;
                c += cl + (bar ? 1 : 0);
                if (!bar) break;
            }
            if (!ok) {
                fail(err, errlen, "%s: '%s' is not one of %s", e->name, v, e->choices);
                return ES_EINVAL;
            }
        }
        {
            char *copy = strdup(v);
            if (!copy) return ES_ENOMEM;
            free(*(char **)base);
            *(char **)base = copy;
        }
        return ES_OK;
    case ES_CONF_INT:
        if (es_parse_i64(v, e->min, e->max, &n)) {
            fail(err, errlen, "%s: '%s' is not an integer in [%lld, %lld]", e->name, v,
                 (long long)e->min, (long long)e->max);
            return ES_EINVAL;
        }
        break;
    case ES_CONF_SIZE: {
        uint64_t u;
        if (es_parse_size(v, &u) || u < (uint64_t)e->min || u > (uint64_t)e->max) {
            fail(err, errlen, "%s: '%s' is not a size in [%lld, %lld] bytes (e.g. 64KB, 10MB)",
                 e->name, v, (long long)e->min, (long long)e->max);
            return ES_EINVAL;
        }
        n = (int64_t)u;
        break;
    }
    case ES_CONF_DURATION:
        if (es_parse_duration_ms(v, &n) || n < e->min || n > e->max) {
            fail(err, errlen, "%s: '%s' is not a duration in [%lld, %lld] ms (e.g. 500ms, 2s, 5m)",
                 e->name, v, (long long)e->min, (long long)e->max);
            return ES_EINVAL;
        }
        break;
    case ES_CONF_BOOL: {
        bool b;
        if (es_parse_bool(v, &b)) {
            fail(err, errlen, "%s: '%s' is not a boolean (true/false)", e->name, v);
            return ES_EINVAL;
        }
        n = b;
        break;
    }
    }
    *(int64_t *)base = n;
    return ES_OK;
}

int es_config_set(es_config *cfg, const char *name, const char *value, char *err, size_t errlen)
{
    const es_conf_entry *e = es_conf_find(name);
    if (!e) {
        fail(err, errlen, "unknown setting '%s' (see esteira --help)", name);
        return ES_EINVAL;
    }
    return set_entry(cfg, e, value, err, errlen);
}

/* Expands "{data_dir}" in a default. */
static int set_default(es_config *cfg, const es_conf_entry *e)
{
    const char *d = e->def;
    const char *at = strstr(d, "{data_dir}");
    if (!at) return set_entry(cfg, e, d, NULL, 0);
    char buf[1024];
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(at - d), d, cfg->data_dir ? cfg->data_dir : "",
             at + strlen("{data_dir}"));
    return set_entry(cfg, e, buf, NULL, 0);
}

int es_config_defaults(es_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < NSETTINGS; i++) {
        int rc = set_default(cfg, &table[i]);
        if (rc) return rc;
    }
    return ES_OK;
}

void es_config_finish(es_config *cfg)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        if (table[i].type != ES_CONF_STR) continue;
        char **p = (char **)((char *)cfg + table[i].offset);
        free(*p);
        *p = NULL;
    }
}

/* Strips surrounding whitespace and one level of matching quotes, in place. */
static char *dotenv_value(char *v)
{
    while (isspace((unsigned char)*v))
        v++;
    size_t n = strlen(v);
    while (n && isspace((unsigned char)v[n - 1]))
        v[--n] = 0;
    if (n >= 2 && (v[0] == '"' || v[0] == '\'') && v[n - 1] == v[0]) {
        v[n - 1] = 0;
        return v + 1;
    }
    char *hash = strstr(v, " #"); /* an inline comment after an unquoted value */
    if (hash) {
        *hash = 0;
        n = strlen(v);
        while (n && isspace((unsigned char)v[n - 1]))
            v[--n] = 0;
    }
    return v;
}

static int load_dotenv(es_config *cfg, const char *path, bool required, uint64_t *seen, char *err,
                       size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        if (!required && errno == ENOENT) return ES_OK;
        fail(err, errlen, "%s: %s", path, strerror(errno));
        return ES_EIO;
    }
    char line[4096];
    int lineno = 0, rc = ES_OK;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p || *p == '#') continue;
        if (strncmp(p, "export ", 7) == 0) p += 7;
        char *eq = strchr(p, '=');
        if (!eq) {
            fail(err, errlen, "%s:%d: expected NAME=value", path, lineno);
            rc = ES_EINVAL;
            break;
        }
        *eq = 0;
        char *name = p;
        size_t nl = strlen(name);
        while (nl && isspace((unsigned char)name[nl - 1]))
            name[--nl] = 0;
        if (strncmp(name, "ESTEIRA_", 8) != 0) continue; /* other programs' settings */
        char lower[64];
        size_t i = 0;
        for (const char *q = name + 8; *q && i < sizeof lower - 1; q++)
            lower[i++] = (char)tolower((unsigned char)*q);
        lower[i] = 0;
        if (strcmp(lower, "env_file") == 0) continue;
        const es_conf_entry *e = es_conf_find(lower);
        if (!e) {
            fail(err, errlen, "%s:%d: unknown setting %s", path, lineno, name);
            rc = ES_EINVAL;
            break;
        }
        char msg[300];
        if (set_entry(cfg, e, dotenv_value(eq + 1), msg, sizeof msg)) {
            fail(err, errlen, "%s:%d: %s", path, lineno, msg);
            rc = ES_EINVAL;
            break;
        }
        *seen |= 1ULL << (e - table);
    }
    fclose(f);
    return rc;
}

int es_config_load(es_config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    _Static_assert(NSETTINGS <= 64, "the 'seen' mask holds 64 settings");
    uint64_t seen = 0;
    int rc = es_config_defaults(cfg);
    if (rc) return rc;

    const char *envfile = getenv("ESTEIRA_ENV_FILE");
    rc = load_dotenv(cfg, envfile && *envfile ? envfile : ".env", envfile && *envfile, &seen, err,
                     errlen);
    if (rc) return rc;

    for (size_t i = 0; i < NSETTINGS; i++) {
        char name[80];
        env_name(&table[i], name, sizeof name);
        const char *v = getenv(name);
        if (!v) continue;
        char msg[300];
        if (set_entry(cfg, &table[i], v, msg, sizeof msg)) {
            fail(err, errlen, "%s: %s", name, msg);
            return ES_EINVAL;
        }
        seen |= 1ULL << i;
    }

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) {
            fail(err, errlen, "unexpected argument '%s'", a);
            return ES_EINVAL;
        }
        char name[80];
        const char *eq = strchr(a, '='), *val;
        snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a - 2) : (int)strlen(a + 2), a + 2);
        const es_conf_entry *e = es_conf_find(name);
        if (!e) {
            fail(err, errlen, "unknown option --%s (see esteira --help)", name);
            return ES_EINVAL;
        }
        if (eq) {
            val = eq + 1;
        } else if (e->type == ES_CONF_BOOL &&
                   (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0)) {
            val = "true";
        } else if (i + 1 < argc) {
            val = argv[++i];
        } else {
            fail(err, errlen, "option --%s needs a value", name);
            return ES_EINVAL;
        }
        char msg[300];
        if (set_entry(cfg, e, val, msg, sizeof msg)) {
            fail(err, errlen, "--%s", msg);
            return ES_EINVAL;
        }
        seen |= 1ULL << (e - table);
    }

    /* defaults that derive from data_dir follow its final value */
    for (size_t i = 0; i < NSETTINGS; i++)
        if (!(seen & (1ULL << i)) && strstr(table[i].def, "{data_dir}"))
            set_default(cfg, &table[i]);

    int lvl = es_log_parse_level(cfg->log_level);
    es_log_set_level(lvl < 0 ? ES_LOG_INFO : lvl);
    return ES_OK;
}

static const char *type_hint(es_conf_type t)
{
    switch (t) {
    case ES_CONF_INT: return "int";
    case ES_CONF_SIZE: return "size";
    case ES_CONF_DURATION: return "duration";
    case ES_CONF_BOOL: return "bool";
    default: return "string";
    }
}

void es_config_print_help(FILE *out)
{
    fprintf(out, "Settings (flag / environment variable, default):\n");
    for (size_t i = 0; i < NSETTINGS; i++) {
        const es_conf_entry *e = &table[i];
        char env[80], flag[80];
        env_name(e, env, sizeof env);
        size_t k = 0;
        for (const char *p = e->name; *p && k < sizeof flag - 1; p++)
            flag[k++] = *p == '_' ? '-' : *p;
        flag[k] = 0;
        fprintf(out, "  --%s=<%s>  %s\n      %s", flag,
                e->choices ? e->choices : type_hint(e->type), env, e->help);
        fprintf(out, " (default: %s)\n", *e->def ? e->def : "none");
    }
}

/* postgres://user:secret@host -> postgres://user:***@host; a URL without a
 * password (local:dir, file:dir) as it is; a bare secret -> *** */
static void mask(const es_conf_entry *e, const char *v, char *out, size_t len)
{
    const char *scheme = strstr(v, "://"), *at = scheme ? strchr(scheme + 3, '@') : NULL;
    const char *colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
    bool is_url = strstr(e->name, "_url") != NULL;
    if (colon)
        snprintf(out, len, "%.*s:***%s", (int)(colon - v), v, at);
    else if (scheme || (is_url && strchr(v, ':')))
        snprintf(out, len, "%s", v);
    else if (*v)
        snprintf(out, len, "***");
    else
        snprintf(out, len, "%s", "");
}

void es_config_print(const es_config *cfg, FILE *out)
{
    for (size_t i = 0; i < NSETTINGS; i++) {
        const es_conf_entry *e = &table[i];
        const char *base = (const char *)cfg + e->offset;
        char env[80];
        env_name(e, env, sizeof env);
        if (e->type == ES_CONF_STR) {
            const char *v = *(char *const *)base;
            char m[1024];
            if (e->flags & ES_CONF_SECRET)
                mask(e, v ? v : "", m, sizeof m);
            else
                snprintf(m, sizeof m, "%s", v ? v : "");
            fprintf(out, "%s=%s\n", env, m);
        } else if (e->type == ES_CONF_BOOL) {
            fprintf(out, "%s=%s\n", env, *(const int64_t *)base ? "true" : "false");
        } else {
            fprintf(out, "%s=%lld\n", env, (long long)*(const int64_t *)base);
        }
    }
}
