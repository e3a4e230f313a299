/* app.h - one running esteira: its settings, its four backends, the job
 * engine and the HTTP server, started in the roles asked for
 * (`up` = API + workers, `serve` = API, `work` = workers). */
#ifndef ESTEIRA_APP_H
#define ESTEIRA_APP_H

#include <stdbool.h>

#include "esteira/blob.h"
#include "esteira/broker.h"
#include "esteira/cache.h"
#include "esteira/conf.h"
#include "esteira/http.h"
#include "esteira/job.h"
#include "esteira/store.h"

enum { ES_ROLE_API = 1 << 0, ES_ROLE_WORKER = 1 << 1 };

typedef struct es_app {
    es_config *cfg;
    unsigned roles;
    es_store *store;
    es_broker *broker;
    es_cache *cache;
    es_blob *blob;
    es_engine *engine;
    es_http *http;
    struct es_events *events; /* event ingestion (src/pipeline/events.c) */
    char *secret;             /* signs URLs */
    bool open_mode_allowed;   /* loopback and ESTEIRA_AUTH=auto */
} es_app;

/* Opens the backends (creating the data directory), migrates the store and
 * registers the job kinds.  Nothing is started yet. */
int es_app_create(es_config *cfg, unsigned roles, es_app **out);
/* Starts the roles' threads (HTTP server, workers). */
int es_app_start(es_app *app);
/* Graceful stop: HTTP stops accepting, workers finish or give back their work. */
void es_app_stop(es_app *app);
void es_app_destroy(es_app *app);
/* create + start + wait for SIGINT/SIGTERM + stop + destroy; the exit status */
int es_app_main(es_config *cfg, unsigned roles);

/* True when a request without a token is accepted (ESTEIRA_AUTH=auto, bound to
 * loopback, no API key exists yet; re-checked at most once a second). */
bool es_app_open_mode(es_app *app);

/* The routes of the API (src/http/routes.c). */
const es_route *es_api_routes(size_t *n);

#endif
