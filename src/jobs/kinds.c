/* kinds.c - the built-in job kinds.
 *
 * noop: does nothing but record its effect, once, in the same transaction
 * that marks it done - so tests and benchmarks can count effects and prove
 * "exactly once".  Payload (all optional):
 *   {"sleepMs": 20, "fail": true, "failTimes": 2, "permanent": true}
 * fail: every attempt fails; failTimes: the first n attempts fail;
 * permanent: a failure is not retried. */
#include <stdio.h>

#include "esteira/err.h"
#include "esteira/job.h"
#include "esteira/json.h"
#include "esteira/log.h"

static int noop_run(es_job_ctx *ctx, void *arg)
{
    (void)arg;
    const es_job *j = es_job_ctx_job(ctx);
    json_t *p = json_loads(j->payload ? j->payload : "{}", 0, NULL);
    int64_t sleep_ms = es_json_int(p, "sleepMs", 0);
    int64_t fail_times = es_json_int(p, "failTimes", 0);
    bool fail = json_is_true(json_object_get(p, "fail"));
    bool permanent = json_is_true(json_object_get(p, "permanent"));
    json_decref(p);

    /* sleep in slices so a shutdown is not held up by a long no-op */
    for (int64_t left = sleep_ms; left > 0; left -= 50) {
        if (es_job_ctx_stopping(ctx)) return ES_ECANCELED;
        es_sleep_ms(left < 50 ? left : 50);
    }
    if (fail || j->attempts <= fail_times) {
        es_job_fail(ctx, permanent, "noop_failure", "failing as asked (attempt %d)", j->attempts);
        return ES_EINVAL;
    }
    es_store_conn *c;
    int rc = es_job_ctx_conn(ctx, &c);
    if (rc) return rc;
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *params[] = {j->id, now};
    return es_store_exec(c, "INSERT INTO noop_effects (job_id, at_ms) VALUES ($1, $2)", 2, params,
                         NULL);
}

int es_jobs_register_builtin(es_engine *e)
{
    static const es_job_kind noop = {.name = "noop", .run = noop_run};
    return es_engine_register(e, &noop);
}
