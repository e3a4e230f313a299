/* test_jobs.c - the job engine on the embedded backends: done exactly once,
 * retries with backoff, dead letters, idempotency, cancel, redelivered and
 * orphaned messages, tenants, pagination. */
#include "testutil.h"

#include "esteira/app.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"

typedef struct fixture {
    char *dir;
    es_config cfg;
    es_app *app;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = test_tmpdir("jobs");
    char err[256];
    es_config_defaults(&f->cfg);
    es_config_set(&f->cfg, "data_dir", f->dir, err, sizeof err);
    char url[600];
    snprintf(url, sizeof url, "sqlite:%s/esteira.db", f->dir);
    es_config_set(&f->cfg, "database_url", url, err, sizeof err);
    snprintf(url, sizeof url, "local:%s/queue", f->dir);
    es_config_set(&f->cfg, "broker_url", url, err, sizeof err);
    snprintf(url, sizeof url, "file:%s/blobs", f->dir);
    es_config_set(&f->cfg, "blob_url", url, err, sizeof err);
    es_config_set(&f->cfg, "job_kinds", "noop:concurrency=2,attempts=3,base=40ms,cap=100ms", err,
                  sizeof err);
    es_log_set_level(ES_LOG_ERROR);
    assert_int_equal(es_app_create(&f->cfg, ES_ROLE_WORKER, &f->app), ES_OK);
    assert_int_equal(es_app_start(f->app), ES_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    es_app_stop(f->app);
    es_app_destroy(f->app);
    es_config_finish(&f->cfg);
    test_rmdir(f->dir);
    free(f);
    return 0;
}

static es_job submit(fixture *f, const char *tenant, const char *payload, const char *idem)
{
    es_job_req req = {
        .kind = "noop", .tenant = tenant, .payload = payload, .idempotency_key = idem};
    es_job j;
    assert_int_equal(es_job_submit(f->app->engine, &req, &j, NULL), ES_OK);
    return j;
}

static es_job_status wait_for(fixture *f, const char *id, es_job_status want, int64_t timeout_ms)
{
    int64_t end = es_mono_ms() + timeout_ms;
    es_job_status st = ES_JOB_QUEUED;
    while (es_mono_ms() < end) {
        es_job j;
        assert_int_equal(es_job_get(f->app->engine, NULL, id, &j), ES_OK);
        st = j.status;
        es_job_finish(&j);
        if (st == want) return st;
        es_sleep_ms(10);
    }
    return st;
}

static int64_t count(fixture *f, const char *sql, const char *arg)
{
    es_rows *r = NULL;
    const char *p[] = {arg};
    assert_int_equal(es_store_exec1(f->app->store, sql, arg ? 1 : 0, p, &r), ES_OK);
    int64_t n = es_rows_int(r, 0, 0, -1);
    es_rows_free(r);
    return n;
}

static void test_done_exactly_once(void **state)
{
    fixture *f = *state;
    es_job j = submit(f, "t1", "{\"sleepMs\":5}", NULL);
    assert_int_equal(j.status, ES_JOB_QUEUED);
    assert_int_equal(wait_for(f, j.id, ES_JOB_DONE, 5000), ES_JOB_DONE);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects WHERE job_id = $1", j.id), 1);
    json_t *h = NULL;
    assert_int_equal(es_job_history(f->app->engine, j.id, &h), ES_OK);
    assert_int_equal(json_array_size(h), 3);
    assert_string_equal(es_json_str(json_array_get(h, 0), "status"), "queued");
    assert_string_equal(es_json_str(json_array_get(h, 1), "status"), "processing");
    assert_string_equal(es_json_str(json_array_get(h, 2), "status"), "done");
    json_decref(h);

    /* a stale duplicate of its message changes nothing */
    es_kv hd[] = {{"jobId", j.id}};
    es_msg m = {
        .queue = "jobs.noop", .body = j.id, .len = strlen(j.id), .headers = hd, .nheaders = 1};
    assert_int_equal(es_broker_publish(f->app->broker, &m, 1), ES_OK);
    es_sleep_ms(300);
    es_job after;
    assert_int_equal(es_job_get(f->app->engine, NULL, j.id, &after), ES_OK);
    assert_int_equal(after.status, ES_JOB_DONE);
    assert_int_equal(after.attempts, 1);
    es_job_finish(&after);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects WHERE job_id = $1", j.id), 1);
    es_job_finish(&j);
}

static void test_many_jobs_each_once(void **state)
{
    fixture *f = *state;
    enum { N = 300 };
    char ids[N][ES_UUID_LEN + 1];
    for (int i = 0; i < N; i++) {
        es_job j = submit(f, "t1", NULL, NULL);
        es_strlcpy(ids[i], j.id, sizeof ids[i]);
        es_job_finish(&j);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(wait_for(f, ids[i], ES_JOB_DONE, 20000), ES_JOB_DONE);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects", NULL), N);
    assert_int_equal(
        count(f, "SELECT COUNT(*) FROM jobs WHERE status = 'done' AND attempts = 1", NULL), N);
}

static void test_retries_then_dead_then_redriven(void **state)
{
    fixture *f = *state;
    /* failTimes 3 = the whole budget of 3 attempts; after a re-drive the
     * attempts restart at 1 and it fails again... so use "fail" and check the
     * DLQ, then a second job with failTimes 2 that succeeds on attempt 3 */
    es_job dead = submit(f, "t1", "{\"fail\":true}", NULL);
    assert_int_equal(wait_for(f, dead.id, ES_JOB_DEAD, 5000), ES_JOB_DEAD);
    es_job d;
    assert_int_equal(es_job_get(f->app->engine, NULL, dead.id, &d), ES_OK);
    assert_int_equal(d.attempts, 3);
    assert_string_equal(d.error_type, "noop_failure");
    es_job_finish(&d);
    json_t *h = NULL;
    assert_int_equal(es_job_history(f->app->engine, dead.id, &h), ES_OK);
    /* queued, (processing, error) x2, processing, dead */
    assert_int_equal(json_array_size(h), 7);
    int64_t d1 = es_json_int(json_array_get(h, 2), "delayMs", -1);
    int64_t d2 = es_json_int(json_array_get(h, 4), "delayMs", -1);
    assert_true(d1 >= 20 && d1 <= 40); /* base 40: [20, 40] */
    assert_true(d2 >= 40 && d2 <= 80); /* 80: [40, 80] */
    assert_string_equal(es_json_str(json_array_get(h, 6), "status"), "dead");
    json_decref(h);
    int64_t ready = -1, unacked = -1;
    assert_int_equal(es_broker_depth(f->app->broker, "jobs.noop.dead", &ready, &unacked), ES_OK);
    assert_true(ready >= 1);

    /* listed as dead, re-driven, dead again (it always fails) with a fresh budget */
    es_job_filter flt = {.tenant = "t1", .status = ES_JOB_DEAD, .limit = 10};
    json_t *items = NULL;
    char *next = NULL;
    assert_int_equal(es_job_list(f->app->engine, &flt, &items, &next), ES_OK);
    assert_int_equal(json_array_size(items), 1);
    json_decref(items);
    free(next);
    assert_int_equal(es_job_retry(f->app->engine, "t1", dead.id), ES_OK);
    assert_int_equal(wait_for(f, dead.id, ES_JOB_DEAD, 5000), ES_JOB_DEAD);
    assert_int_equal(
        count(f, "SELECT COUNT(*) FROM job_events WHERE job_id = $1 AND status = 'dead'", dead.id),
        2);
    assert_int_equal(es_job_delete_dead(f->app->engine, "t1", dead.id), ES_OK);
    assert_int_equal(es_job_get(f->app->engine, NULL, dead.id, &d), ES_ENOTFOUND);
    es_job_finish(&dead);

    es_job flaky = submit(f, "t1", "{\"failTimes\":2}", NULL);
    assert_int_equal(wait_for(f, flaky.id, ES_JOB_DONE, 5000), ES_JOB_DONE);
    assert_int_equal(es_job_get(f->app->engine, NULL, flaky.id, &d), ES_OK);
    assert_int_equal(d.attempts, 3);
    es_job_finish(&d);
    es_job_finish(&flaky);

    es_job perm = submit(f, "t1", "{\"fail\":true,\"permanent\":true}", NULL);
    assert_int_equal(wait_for(f, perm.id, ES_JOB_DEAD, 5000), ES_JOB_DEAD);
    assert_int_equal(es_job_get(f->app->engine, NULL, perm.id, &d), ES_OK);
    assert_int_equal(d.attempts, 1); /* not retried */
    es_job_finish(&d);
    es_job_finish(&perm);
}

static void test_backoff(void **state)
{
    (void)state;
    for (int a = 1; a <= 20; a++) {
        int64_t d = 1000;
        for (int i = 1; i < a && d < 300000; i++)
            d *= 2;
        if (d > 300000) d = 300000;
        assert_int_equal(es_backoff_ms(1000, 300000, a, 0.0), d / 2);
        assert_true(es_backoff_ms(1000, 300000, a, 0.999999) <= d);
        assert_true(es_backoff_ms(1000, 300000, a, 0.999999) >= d - 1);
    }
}

static void test_idempotency(void **state)
{
    fixture *f = *state;
    es_job_req req = {.kind = "noop", .tenant = "t1", .idempotency_key = "order-42"};
    es_job a, b, c;
    bool existed = true;
    assert_int_equal(es_job_submit(f->app->engine, &req, &a, &existed), ES_OK);
    assert_false(existed);
    assert_int_equal(es_job_submit(f->app->engine, &req, &b, &existed), ES_OK);
    assert_true(existed);
    assert_string_equal(a.id, b.id);
    /* the same key in another tenant is another job */
    req.tenant = "t2";
    assert_int_equal(es_job_submit(f->app->engine, &req, &c, &existed), ES_OK);
    assert_false(existed);
    assert_string_not_equal(a.id, c.id);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM jobs WHERE idempotency_key = $1", "order-42"),
                     2);
    es_job_finish(&a);
    es_job_finish(&b);
    es_job_finish(&c);
}

static void test_cancel_and_tenants(void **state)
{
    fixture *f = *state;
    es_job_req req = {.kind = "noop", .tenant = "t1", .delay_ms = 60000};
    es_job j;
    assert_int_equal(es_job_submit(f->app->engine, &req, &j, NULL), ES_OK);
    es_job other;
    assert_int_equal(es_job_get(f->app->engine, "t2", j.id, &other), ES_ENOTFOUND);
    assert_int_equal(es_job_cancel(f->app->engine, "t2", j.id), ES_ENOTFOUND);
    assert_int_equal(es_job_cancel(f->app->engine, "t1", j.id), ES_OK);
    assert_int_equal(es_job_cancel(f->app->engine, "t1", j.id), ES_ECONFLICT);
    es_job done = submit(f, "t1", NULL, NULL);
    assert_int_equal(wait_for(f, done.id, ES_JOB_DONE, 5000), ES_JOB_DONE);
    assert_int_equal(es_job_cancel(f->app->engine, "t1", done.id), ES_ECONFLICT);
    assert_int_equal(es_job_retry(f->app->engine, "t1", done.id), ES_ECONFLICT);
    es_job_finish(&j);
    es_job_finish(&done);
}

static void test_orphan_is_republished(void **state)
{
    fixture *f = *state;
    /* as if the submitter died between INSERT and publish */
    char id[ES_UUID_LEN + 1], old[24];
    es_uuid7(id);
    snprintf(old, sizeof old, "%lld", (long long)(es_now_ms() - 60000));
    const char *p[] = {id, old};
    assert_int_equal(
        es_store_exec1(f->app->store,
                       "INSERT INTO jobs (id, tenant, kind, status, attempts, max_attempts,"
                       " payload, published, created_ms, updated_ms) VALUES"
                       " ($1, 't1', 'noop', 'queued', 0, 3, '{}', 0, $2, $2)",
                       2, p, NULL),
        ES_OK);
    assert_int_equal(wait_for(f, id, ES_JOB_DONE, 8000), ES_JOB_DONE);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects WHERE job_id = $1", id), 1);
}

static void test_crash_looping_job_ends_dead(void **state)
{
    fixture *f = *state;
    /* as if every worker that took it died: attempts used up, still processing,
     * and its message comes back redelivered */
    char id[ES_UUID_LEN + 1], now[24];
    es_uuid7(id);
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *p[] = {id, now};
    assert_int_equal(
        es_store_exec1(f->app->store,
                       "INSERT INTO jobs (id, tenant, kind, status, attempts, max_attempts,"
                       " payload, published, lease_until, created_ms, updated_ms) VALUES"
                       " ($1, 't1', 'noop', 'processing', 3, 3, '{}', 1, 0, $2, $2)",
                       2, p, NULL),
        ES_OK);
    es_msg m = {.queue = "jobs.noop", .body = id, .len = strlen(id), .attempts = 3};
    assert_int_equal(es_broker_publish(f->app->broker, &m, 1), ES_OK);
    assert_int_equal(wait_for(f, id, ES_JOB_DEAD, 5000), ES_JOB_DEAD);
    es_job j;
    assert_int_equal(es_job_get(f->app->engine, NULL, id, &j), ES_OK);
    assert_string_equal(j.error_type, "attempts_exhausted");
    es_job_finish(&j);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects WHERE job_id = $1", id), 0);
}

/* A job left `processing` under a live lease by a worker that gave its claim
 * up: a message naming that claim's token ("reclaim") takes it over at once;
 * one naming another token does not. */
static void test_abandoned_attempt_is_reclaimed(void **state)
{
    fixture *f = *state;
    char ids[2][ES_UUID_LEN + 1], now[24], lease[24];
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    snprintf(lease, sizeof lease, "%lld", (long long)(es_now_ms() + 3600 * 1000));
    const char *owner[2] = {"claim-a", "claim-b"}, *reclaim[2] = {"claim-a", "claim-x"};
    for (int i = 0; i < 2; i++) {
        es_uuid7(ids[i]);
        const char *p[] = {ids[i], now, lease, owner[i]};
        assert_int_equal(
            es_store_exec1(f->app->store,
                           "INSERT INTO jobs (id, tenant, kind, status, attempts,"
                           " max_attempts, payload, published, lease_until, lease_owner,"
                           " created_ms, updated_ms) VALUES ($1, 't1', 'noop', 'processing',"
                           " 2, 5, '{}', 1, $3, $4, $2, $2)",
                           4, p, NULL),
            ES_OK);
        es_kv h[] = {{"jobId", ids[i]}, {"reclaim", (char *)reclaim[i]}};
        es_msg m = {.queue = "jobs.noop",
                    .body = ids[i],
                    .len = strlen(ids[i]),
                    .headers = h,
                    .nheaders = 2,
                    .attempts = 2};
        assert_int_equal(es_broker_publish(f->app->broker, &m, 1), ES_OK);
    }
    assert_int_equal(wait_for(f, ids[0], ES_JOB_DONE, 5000), ES_JOB_DONE);
    es_job j;
    assert_int_equal(es_job_get(f->app->engine, NULL, ids[0], &j), ES_OK);
    assert_int_equal(j.attempts, 3);
    es_job_finish(&j);
    es_sleep_ms(300);
    assert_int_equal(es_job_get(f->app->engine, NULL, ids[1], &j), ES_OK);
    assert_int_equal(j.status, ES_JOB_PROCESSING); /* its lease still runs */
    assert_int_equal(j.attempts, 2);
    es_job_finish(&j);
    assert_int_equal(count(f, "SELECT COUNT(*) FROM noop_effects WHERE job_id = $1", ids[1]), 0);
}

static void test_list_pagination(void **state)
{
    fixture *f = *state;
    enum { N = 25 };
    for (int i = 0; i < N; i++) {
        es_job j = submit(f, "pager", NULL, NULL);
        es_job_finish(&j);
    }
    int seen = 0, pages = 0;
    char *cursor = NULL;
    char last[ES_UUID_LEN + 1] = "ffffffff-ffff-7fff-bfff-ffffffffffff";
    do {
        es_job_filter flt = {.tenant = "pager", .status = -1, .cursor = cursor, .limit = 10};
        json_t *items = NULL;
        char *next = NULL;
        assert_int_equal(es_job_list(f->app->engine, &flt, &items, &next), ES_OK);
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
        {
            assert_true(strcmp(es_json_str(it, "id"), last) < 0); /* newest first, no repeats */
            es_strlcpy(last, es_json_str(it, "id"), sizeof last);
            seen++;
        }
        json_decref(items);
        free(cursor);
        cursor = next;
        pages++;
    } while (cursor);
    assert_int_equal(seen, N);
    assert_int_equal(pages, 3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_done_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_jobs_each_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retries_then_dead_then_redriven, setup, teardown),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test_setup_teardown(test_idempotency, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_and_tenants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphan_is_republished, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_looping_job_ends_dead, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abandoned_attempt_is_reclaimed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_pagination, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
