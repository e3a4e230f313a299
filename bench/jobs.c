/* bench/jobs.c - no-op jobs per second through the broker and the worker pool,
 * with enqueue-to-start latency, on the backends named by the usual settings
 * (embedded defaults in a fresh temporary data directory unless set).
 *
 *   build/bench/jobs [--jobs N] [--producers P] [--workers W] [--effect] [--rate R]
 *
 * P threads submit N jobs in total (each a store insert + a durable publish);
 * W worker threads run them.  A job's handler records now - (submit time
 * carried in its payload): the time from enqueue to start.  --effect makes
 * each job write its effect row in the transaction that marks it done.
 * --rate R paces the producers to R jobs/s in total: below capacity, the
 * latency is the engine's own, not time spent behind a backlog. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"

static int64_t *lat_us;
static atomic_long started, finished;
static long total_jobs;
static bool with_effect;

static int bench_run(es_job_ctx *ctx, void *arg)
{
    (void)arg;
    int64_t now =
        es_now_ms() * 1000 + es_mono_us() % 1000; /* ms clock, us resolution is cosmetic */
    const es_job *j = es_job_ctx_job(ctx);
    json_t *p = json_loads(j->payload, 0, NULL);
    int64_t t0 = es_json_int(p, "t", now);
    json_decref(p);
    long i = atomic_fetch_add(&started, 1);
    if (i < total_jobs) lat_us[i] = now - t0;
    int rc = ES_OK;
    if (with_effect) {
        es_store_conn *c;
        if (!(rc = es_job_ctx_conn(ctx, &c))) {
            char at[24];
            snprintf(at, sizeof at, "%lld", (long long)es_now_ms());
            const char *prm[] = {j->id, at};
            rc = es_store_exec(c, "INSERT INTO noop_effects (job_id, at_ms) VALUES ($1, $2)", 2,
                               prm, NULL);
        }
    }
    atomic_fetch_add(&finished, 1);
    return rc;
}

typedef struct producer {
    es_engine *engine;
    long n;
    double rate; /* jobs/s for this producer; 0 = as fast as possible */
    int failures;
} producer;

static void *produce(void *arg)
{
    producer *p = arg;
    int64_t start = es_mono_us();
    for (long i = 0; i < p->n; i++) {
        if (p->rate > 0) {
            int64_t due = start + (int64_t)((double)i * 1e6 / p->rate);
            int64_t now = es_mono_us();
            if (due > now) es_sleep_ms((due - now + 999) / 1000);
        }
        char payload[64];
        /* wall clock in us: comparable across threads */
        snprintf(payload, sizeof payload, "{\"t\":%lld}",
                 (long long)(es_now_ms() * 1000 + es_mono_us() % 1000));
        es_job_req req = {.kind = "bench", .tenant = "bench", .payload = payload};
        if (es_job_submit(p->engine, &req, NULL, NULL) != ES_OK) p->failures++;
    }
    return NULL;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void machine(void)
{
    char model[256] = "unknown", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *c = strchr(line, ':');
            if (c) snprintf(model, sizeof model, "%s", c + 2);
            model[strcspn(model, "\n")] = 0;
            break;
        }
    }
    if (f) fclose(f);
    printf("machine: nproc=%ld model=\"%s\"\n", sysconf(_SC_NPROCESSORS_ONLN), model);
}

int main(int argc, char **argv)
{
    long jobs = 20000;
    int producers = 4, workers = 4;
    double rate = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--jobs") && i + 1 < argc)
            jobs = strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--producers") && i + 1 < argc)
            producers = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--workers") && i + 1 < argc)
            workers = (int)strtol(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--effect"))
            with_effect = true;
        else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
            rate = strtod(argv[++i], NULL);
        else {
            fprintf(stderr,
                    "usage: %s [--jobs N] [--producers P] [--workers W] [--effect] [--rate R]\n",
                    argv[0]);
            return 2;
        }
    }
    total_jobs = jobs;
    lat_us = calloc((size_t)jobs, sizeof *lat_us);
    char tmpl[] = "/tmp/esteira-bench-XXXXXX";
    if (!getenv("ESTEIRA_DATA_DIR")) setenv("ESTEIRA_DATA_DIR", mkdtemp(tmpl), 1);
    if (!getenv("ESTEIRA_LOG_LEVEL")) setenv("ESTEIRA_LOG_LEVEL", "warn", 1);
    es_config cfg;
    char err[256];
    if (es_config_load(&cfg, 0, NULL, err, sizeof err)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    es_app *app;
    if (es_app_create(&cfg, ES_ROLE_WORKER, &app)) return 1;
    es_job_kind k = {.name = "bench", .run = bench_run, .concurrency = workers};
    if (es_engine_register(app->engine, &k)) return 1;

    machine();
    printf("backends: store=%s broker=%s  jobs=%ld producers=%d workers=%d effect=%s rate=%s\n",
           es_store_name(app->store), es_broker_name(app->broker), jobs, producers, workers,
           with_effect ? "yes" : "no", rate > 0 ? "paced" : "max");
    int64_t t0 = es_mono_us();
    if (es_app_start(app)) return 1;
    pthread_t th[64];
    producer pr[64];
    if (producers > 64) producers = 64;
    for (int i = 0; i < producers; i++) {
        pr[i] = (producer){.engine = app->engine,
                           .n = jobs / producers + (i < jobs % producers),
                           .rate = rate / producers};
        pthread_create(&th[i], NULL, produce, &pr[i]);
    }
    int failures = 0;
    for (int i = 0; i < producers; i++)
        pthread_join(th[i], NULL), failures += pr[i].failures;
    int64_t t_submit = es_mono_us();
    while (atomic_load(&finished) < jobs - failures)
        es_sleep_ms(2);
    int64_t t_end = es_mono_us();
    es_app_stop(app);

    long n = atomic_load(&started) < jobs ? atomic_load(&started) : jobs;
    qsort(lat_us, (size_t)n, sizeof *lat_us, cmp64);
    double secs = (double)(t_end - t0) / 1e6;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("submitted: %.0f jobs/s (%.2f s)\n", (double)jobs / ((double)(t_submit - t0) / 1e6),
           (double)(t_submit - t0) / 1e6);
    printf("completed: %.0f jobs/s (%ld jobs in %.2f s, %d submit failures)\n", (double)n / secs, n,
           secs, failures);
    printf("enqueue-to-start latency: p50 %.2f ms  p95 %.2f ms  p99 %.2f ms\n",
           (double)lat_us[n / 2] / 1000, (double)lat_us[n * 95 / 100] / 1000,
           (double)lat_us[n * 99 / 100] / 1000);
    printf("peak RSS: %.1f MB\n", (double)ru.ru_maxrss / 1024);
    printf("RESULT jobs_per_s=%.0f p50_ms=%.2f p95_ms=%.2f rss_mb=%.1f\n", (double)n / secs,
           (double)lat_us[n / 2] / 1000, (double)lat_us[n * 95 / 100] / 1000,
           (double)ru.ru_maxrss / 1024);
    es_app_destroy(app);
    es_config_finish(&cfg);
    free(lat_us);
    return failures ? 1 : 0;
}
