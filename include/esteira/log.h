/* log.h - structured logs: one JSON object per line on stderr.
 *
 *   {"ts":"2026-11-22T10:00:00.123Z","level":"info","component":"http",
 *    "msg":"listening","requestId":"…","jobId":"…","traceId":"…", …}
 *
 * The level is checked before anything is formatted.  Request, job and trace
 * ids come from a thread-local context set by the HTTP layer and the workers. */
#ifndef ESTEIRA_LOG_H
#define ESTEIRA_LOG_H

#include <jansson.h>

enum es_log_level { ES_LOG_DEBUG = 0, ES_LOG_INFO, ES_LOG_WARN, ES_LOG_ERROR, ES_LOG_OFF };

extern int es_log_min_level;

int es_log_parse_level(const char *s); /* -1 when unknown */
void es_log_set_level(int level);
/* Redirect output (tests); NULL restores stderr. */
void es_log_set_fd(int fd);

void es_log_write(int level, const char *component, json_t *fields, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Thread-local context, copied into every line this thread writes. */
void es_log_ctx_set(const char *request_id, const char *job_id, const char *trace_id);
void es_log_ctx_clear(void);

#define ES_LOG(level, comp, ...)                                                                   \
    do {                                                                                           \
        if ((level) >= es_log_min_level) es_log_write((level), (comp), NULL, __VA_ARGS__);         \
    } while (0)
/* Extra fields: a jansson object, stolen (freed even when the level is off). */
#define ES_LOGF(level, comp, fields, ...)                                                          \
    do {                                                                                           \
        json_t *es_log_f_ = (fields);                                                              \
        if ((level) >= es_log_min_level)                                                           \
            es_log_write((level), (comp), es_log_f_, __VA_ARGS__);                                 \
        else                                                                                       \
            json_decref(es_log_f_);                                                                \
    } while (0)

#define es_debug(comp, ...) ES_LOG(ES_LOG_DEBUG, comp, __VA_ARGS__)
#define es_info(comp, ...)  ES_LOG(ES_LOG_INFO, comp, __VA_ARGS__)
#define es_warn(comp, ...)  ES_LOG(ES_LOG_WARN, comp, __VA_ARGS__)
#define es_error(comp, ...) ES_LOG(ES_LOG_ERROR, comp, __VA_ARGS__)

#endif
