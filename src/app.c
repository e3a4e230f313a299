/* app.c - assembles one esteira process: settings -> backends -> job engine ->
 * HTTP server, started in the roles asked for, stopped gracefully. */
#include "esteira/app.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "esteira/auth.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/events.h"
#include "esteira/upload.h"

static int mkdir_p(const char *path)
{
    char buf[1024];
    if (es_strlcpy(buf, path, sizeof buf) >= sizeof buf) return ES_EINVAL;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST) return ES_EIO;
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST) return ES_EIO;
    return ES_OK;
}

/* The URL-signing key: the setting, or one generated once into DATA_DIR/secret. */
static int load_secret(es_app *app)
{
    if (app->cfg->secret && *app->cfg->secret) {
        app->secret = strdup(app->cfg->secret);
        return app->secret ? ES_OK : ES_ENOMEM;
    }
    char path[1100], buf[65] = {0};
    snprintf(path, sizeof path, "%s/secret", app->cfg->data_dir);
    for (int tries = 0; tries < 2; tries++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, 64);
            close(fd);
            if (n == 64) break;
            es_error("app", "%s is damaged: remove it or set ESTEIRA_SECRET", path);
            return ES_EIO;
        }
        unsigned char raw[32];
        if (es_random(raw, sizeof raw)) return ES_EIO;
        es_hex(raw, sizeof raw, buf);
        char tmp[1200];
        snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || write(fd, buf, 64) != 64 || fsync(fd)) {
            if (fd >= 0) close(fd);
            es_error("app", "cannot write %s: %s", tmp, strerror(errno));
            return ES_EIO;
        }
        close(fd);
        /* link() fails if another process made one first: then use theirs */
        int lrc = link(tmp, path);
        unlink(tmp);
        if (lrc == 0) break;
    }
    app->secret = strdup(buf);
    return app->secret ? ES_OK : ES_ENOMEM;
}

static bool is_loopback(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strcmp(host, "::1") || !strcmp(host, "localhost") ||
           !strncmp(host, "127.", 4);
}

static _Atomic int64_t open_checked_ms;
static atomic_bool open_cached;

bool es_app_open_mode(es_app *app)
{
    if (!app->open_mode_allowed) return false;
    int64_t now = es_mono_ms();
    if (now - atomic_load(&open_checked_ms) >= 1000) {
        int64_t n = 1;
        /* the store away: the last answer stands (at start, unknown = closed) */
        if (es_keys_count(app->store, &n) == ES_OK) atomic_store(&open_cached, n == 0);
        atomic_store(&open_checked_ms, now);
    }
    return atomic_load(&open_cached);
}

int es_app_create(es_config *cfg, unsigned roles, es_app **out)
{
    es_app *app = calloc(1, sizeof *app);
    if (!app) return ES_ENOMEM;
    app->cfg = cfg;
    app->roles = roles;
    int rc;
    if (mkdir_p(cfg->data_dir)) {
        es_error("app", "cannot create data directory %s: %s", cfg->data_dir, strerror(errno));
        rc = ES_EIO;
        goto fail;
    }
    if ((rc = load_secret(app))) goto fail;
    if (!cfg->public_url || !*cfg->public_url) {
        char url[300];
        snprintf(url, sizeof url, strchr(cfg->host, ':') ? "http://[%s]:%lld" : "http://%s:%lld",
                 cfg->host, (long long)cfg->port);
        free(cfg->public_url);
        cfg->public_url = strdup(url);
    }
    if (!cfg->secret || !*cfg->secret) {
        free(cfg->secret);
        cfg->secret = strdup(app->secret); /* backends that sign read it from the settings */
    }
    if ((rc = es_store_open(cfg->database_url, cfg, &app->store))) goto fail;
    int applied = 0;
    if ((rc = es_store_migrate(app->store, &applied))) goto fail;
    if ((rc = es_datasets_load_dir(app->store, cfg->datasets_dir))) goto fail;
    if ((rc = es_broker_open(cfg->broker_url, cfg, &app->broker))) goto fail;
    if ((rc = es_cache_open(cfg->cache_url, cfg, &app->cache))) goto fail;
    if ((rc = es_engine_create(cfg, app->store, app->broker, app->cache, &app->engine))) goto fail;
    if ((rc = es_jobs_register_builtin(app->engine))) goto fail;
    if ((rc = es_uploads_register(app))) goto fail;
    if ((rc = es_events_create(app, &app->events))) goto fail;

    if (roles & ES_ROLE_API) {
        bool loop = is_loopback(cfg->host);
        app->open_mode_allowed = loop && strcmp(cfg->auth, "auto") == 0;
        int64_t keys = 0;
        if ((rc = es_keys_count(app->store, &keys))) goto fail;
        if (!loop && keys == 0) {
            es_error("app",
                     "refusing to listen on %s without API keys: create one with "
                     "`esteira keys create --tenant NAME --scopes all`, or bind to 127.0.0.1",
                     cfg->host);
            rc = ES_EFORBIDDEN;
            goto fail;
        }
        if (app->open_mode_allowed && keys == 0)
            es_warn("auth",
                    "no API keys exist: requests without a token are accepted on %s as "
                    "tenant '%s' until the first key is created",
                    cfg->host, ES_DEFAULT_TENANT);
        size_t nroutes;
        const es_route *routes = es_api_routes(&nroutes);
        if ((rc = es_http_create(app, routes, nroutes, &app->http))) goto fail;
    }
    *out = app;
    return ES_OK;
fail:
    es_error("app", "could not start: %s", es_strerror(rc));
    es_app_destroy(app);
    return rc;
}

int es_app_start(es_app *app)
{
    int rc;
    if (app->http) {
        if ((rc = es_http_start(app->http))) return rc;
        if (app->cfg->port == 0) {
            /* a free port was asked for: signed URLs must name the real one */
            char url[300];
            snprintf(url, sizeof url, "http://%s:%u", app->cfg->host, es_http_port(app->http));
            free(app->cfg->public_url);
            app->cfg->public_url = strdup(url);
        }
    }
    if ((rc = es_blob_open(app->cfg->blob_url, app->cfg, &app->blob))) return rc;
    if ((rc = es_events_start(app->events))) return rc;
    if ((app->roles & ES_ROLE_WORKER) && app->cfg->workers > 0) {
        if ((rc = es_engine_start(app->engine))) return rc;
    } else if ((rc = es_engine_start_republisher(app->engine))) {
        return rc;
    }
    json_t *f = json_pack("{s:s, s:s, s:s, s:s, s:s}", "store", es_store_name(app->store), "broker",
                          es_broker_name(app->broker), "cache", es_cache_name(app->cache), "blob",
                          es_blob_name(app->blob), "roles",
                          app->roles == (ES_ROLE_API | ES_ROLE_WORKER) ? "api+workers"
                          : app->roles & ES_ROLE_API                   ? "api"
                                                                       : "workers");
    if (app->http) json_object_set_new(f, "port", json_integer(es_http_port(app->http)));
    ES_LOGF(ES_LOG_INFO, "app", f, "esteira started");
    return ES_OK;
}

void es_app_stop(es_app *app)
{
    if (!app) return;
    if (app->http) es_http_stop(app->http);
    es_events_stop(app->events); /* after HTTP: its deferred answers need the publishers */
    es_engine_stop(app->engine, app->cfg->shutdown_timeout_ms);
}

void es_app_destroy(es_app *app)
{
    if (!app) return;
    es_http_destroy(app->http);
    es_events_destroy(app->events);
    es_engine_destroy(app->engine);
    es_blob_close(app->blob);
    es_cache_close(app->cache);
    es_broker_close(app->broker);
    es_store_close(app->store);
    free(app->secret);
    free(app);
}

int es_app_main(es_config *cfg, unsigned roles)
{
    /* signals go to the waiting main thread only; threads created later inherit the mask */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    es_app *app = NULL;
    if (es_app_create(cfg, roles, &app)) return 1;
    if (es_app_start(app)) {
        es_error("app", "could not start");
        es_app_stop(app);
        es_app_destroy(app);
        return 1;
    }
    int sig = 0;
    sigwait(&set, &sig);
    es_info("app", "received %s: stopping (in-flight work may take up to %lld ms)",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", (long long)cfg->shutdown_timeout_ms);
    es_app_stop(app);
    es_app_destroy(app);
    es_info("app", "stopped");
    return 0;
}
