/* log.c - one JSON object per line, written with a single write(2) so lines
 * from concurrent threads never interleave. */
#include "esteira/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

#include "esteira/util.h"

int es_log_min_level = ES_LOG_INFO;
static int log_fd = STDERR_FILENO;

static __thread char ctx_request[72], ctx_job[40], ctx_trace[40];

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

int es_log_parse_level(const char *s)
{
    for (int i = 0; s && i <= ES_LOG_OFF; i++)
        if (strcasecmp(s, level_names[i]) == 0) return i;
    if (s && strcasecmp(s, "warning") == 0) return ES_LOG_WARN;
    return -1;
}

void es_log_set_level(int level)
{
    es_log_min_level = level;
}

void es_log_set_fd(int fd)
{
    log_fd = fd >= 0 ? fd : STDERR_FILENO;
}

void es_log_ctx_set(const char *request_id, const char *job_id, const char *trace_id)
{
    es_strlcpy(ctx_request, request_id ? request_id : "", sizeof ctx_request);
    es_strlcpy(ctx_job, job_id ? job_id : "", sizeof ctx_job);
    es_strlcpy(ctx_trace, trace_id ? trace_id : "", sizeof ctx_trace);
}

void es_log_ctx_clear(void)
{
    ctx_request[0] = ctx_job[0] = ctx_trace[0] = 0;
}

void es_log_write(int level, const char *component, json_t *fields, const char *fmt, ...)
{
    char msg[2048], ts[25];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    es_time_iso(es_now_ms(), ts);

    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(ts));
    json_object_set_new(o, "level", json_string(level_names[level < 0 || level > 3 ? 3 : level]));
    json_object_set_new(o, "component", json_string(component ? component : "esteira"));
    /* a message may carry bytes from a client: keep the line valid JSON */
    json_t *m = json_string(msg);
    json_object_set_new(o, "msg", m ? m : json_string("(message not valid UTF-8)"));
    if (ctx_request[0]) json_object_set_new(o, "requestId", json_string(ctx_request));
    if (ctx_job[0]) json_object_set_new(o, "jobId", json_string(ctx_job));
    if (ctx_trace[0]) json_object_set_new(o, "traceId", json_string(ctx_trace));
    if (fields) json_object_update_missing(o, fields);
    char *line = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    json_decref(fields);
    if (!line) return;
    size_t n = strlen(line);
    line[n] = '\n'; /* replaces the NUL: write exactly n+1 bytes */
    const char *p = line;
    size_t left = n + 1;
    while (left > 0) {
        ssize_t w = write(log_fd, p, left);
        if (w <= 0) break;
        p += w;
        left -= (size_t)w;
    }
    free(line);
}
