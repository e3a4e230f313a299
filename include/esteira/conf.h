/* conf.h - every setting of esteira, in one table.
 *
 * Each entry of the table (src/core/conf.c) names a field of es_config by
 * offset, with its type, default, bounds and help.  From it come the
 * command-line flags (--database-url=…), the environment (ESTEIRA_DATABASE_URL),
 * `.env` files, `esteira --help`, `esteira config` and validation.
 * Precedence: flags > environment > .env > defaults. */
#ifndef ESTEIRA_CONF_H
#define ESTEIRA_CONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct es_config {
    /* where things live */
    char *data_dir;
    char *database_url;
    char *broker_url;
    char *cache_url;
    char *blob_url;
    char *datasets_dir;
    /* HTTP server */
    char *host;
    int64_t port;
    char *public_url; /* how clients reach us (signed URLs); derived when empty */
    int64_t http_threads;
    int64_t max_body;   /* bytes, JSON bodies */
    int64_t max_upload; /* bytes, streamed bodies (CSV, blobs) */
    int64_t max_header; /* bytes, request line + headers */
    int64_t max_connections;
    int64_t max_event_streams;  /* responses waiting for events at once (Server-Sent Events) */
    int64_t conn_timeout_ms;    /* idle connection */
    int64_t request_timeout_ms; /* a buffered request body must arrive within it */
    int64_t json_max_depth;
    char *auth;   /* auto | required */
    char *secret; /* signs URLs; generated under data_dir when empty */
    int64_t signed_url_ttl_ms;
    /* jobs */
    int64_t workers; /* default concurrency per job kind */
    int64_t job_max_attempts;
    int64_t job_backoff_base_ms;
    int64_t job_backoff_cap_ms;
    int64_t job_timeout_ms; /* a claimed job's lease; a dead worker's job is retaken after it */
    char *job_kinds; /* per-kind overrides: "noop:concurrency=4,attempts=3,base=100ms,cap=5s;…" */
    int64_t shutdown_timeout_ms;
    int64_t queue_sync; /* local broker: 1 = fsync each commit (power-loss safe), 0 = OS cache
                           (crash safe) */
    int64_t prefetch;
    /* uploads */
    int64_t batch_rows;         /* rows per batch */
    int64_t batch_bytes;        /* a batch is also cut at this many source bytes */
    int64_t batches_per_job;    /* consecutive batches one job loads in one transaction; 0 = auto */
    int64_t csv_max_field;      /* bytes in one CSV field */
    int64_t csv_max_line;       /* bytes in one CSV record */
    int64_t reject_max_percent; /* an upload with more rejected rows fails (100 = never) */
    /* events */
    char *events_types;         /* accepted event types, comma-separated */
    int64_t events_data_max;    /* bytes of one eventData (compact JSON) */
    int64_t events_field_max;   /* characters of userId / sessionId */
    int64_t events_request_max; /* events in one batch request */
    int64_t events_group_max;   /* bytes of events in one broker message */
    int64_t events_pending_max; /* bytes accepted, not yet confirmed (503 beyond) */
    int64_t events_publishers;  /* publishes in flight at once */
    int64_t events_batch_max;   /* a flush when this many are buffered … */
    int64_t events_flush_ms;    /* … or the oldest is this old */
    int64_t events_flushers;    /* flush threads per worker process */
    /* logs */
    char *log_level;
    /* client commands */
    char *url;
    char *token;
} es_config;

typedef enum {
    ES_CONF_STR,
    ES_CONF_INT,
    ES_CONF_SIZE,
    ES_CONF_DURATION,
    ES_CONF_BOOL
} es_conf_type;

enum {
    ES_CONF_SECRET = 1 << 0, /* masked by `esteira config` */
    ES_CONF_CLIENT = 1 << 1  /* used by client commands */
};

typedef struct es_conf_entry {
    const char *name; /* "database_url" -> --database-url, ESTEIRA_DATABASE_URL */
    es_conf_type type;
    size_t offset;
    const char *def;     /* default as text; "{data_dir}" expands */
    int64_t min, max;    /* for numbers */
    const char *choices; /* "auto|required" for enumerated strings, else NULL */
    unsigned flags;
    const char *help;
} es_conf_entry;

const es_conf_entry *es_conf_table(size_t *n);
/* The entry for a flag name ("database-url" or "database_url"), or NULL. */
const es_conf_entry *es_conf_find(const char *name);

/* Loads defaults, then `.env` (in the working directory, or ESTEIRA_ENV_FILE),
 * then the environment, then the flags argv[0..argc) of the form --name=value
 * or --name value.  Unknown flags and invalid values fail with a message that
 * names the setting, written to err. */
int es_config_load(es_config *cfg, int argc, char **argv, char *err, size_t errlen);
/* Just the defaults (tests). */
int es_config_defaults(es_config *cfg);
/* Sets one setting by name from text, validating it. */
int es_config_set(es_config *cfg, const char *name, const char *value, char *err, size_t errlen);
void es_config_finish(es_config *cfg);

/* `esteira --help` settings section and `esteira config` (secrets masked). */
void es_config_print_help(FILE *out);
void es_config_print(const es_config *cfg, FILE *out);

#endif
