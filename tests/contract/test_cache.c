/* test_cache.c - the cache contract, run against every URL in
 * ESTEIRA_TEST_CACHE_URLS (space-separated; default "local:").
 *
 * Only the public API is used, and every key and channel starts with a
 * prefix unique to this run, so the suite can share a real server with other
 * runs.  Sleeps for TTLs leave at least 150 ms of slack for slow machines and
 * sanitizer builds. */
#include "testutil.h"

#include <pthread.h>
#include <stdbool.h>

#include "esteira/cache.h"
#include "esteira/conf.h"
#include "esteira/err.h"
#include "esteira/util.h"

static const char *g_url;
static char g_run[64]; /* "esteira-test:<uuid>" */

typedef struct fixture {
    es_config cfg;
    es_cache *c;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    if (es_config_defaults(&f->cfg) != ES_OK || es_cache_open(g_url, &f->cfg, &f->c) != ES_OK) {
        es_config_finish(&f->cfg);
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    es_cache_close(f->c);
    es_config_finish(&f->cfg);
    free(f);
    return 0;
}

/* A key or channel name unique to this run. */
static const char *name(char *buf, size_t size, const char *what)
{
    snprintf(buf, size, "%s:%s", g_run, what);
    return buf;
}
#define NAME(var, what)                                                                            \
    char var[160];                                                                                 \
    name(var, sizeof var, what)

static void assert_value(es_cache *c, const char *key, const char *want)
{
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(es_cache_get(c, key, &v, &len), ES_OK);
    assert_non_null(v);
    assert_int_equal(len, strlen(want));
    assert_string_equal(v, want);
    free(v);
}

static void assert_absent(es_cache *c, const char *key)
{
    char *v = (char *)"sentinel";
    size_t len = 99;
    assert_int_equal(es_cache_get(c, key, &v, &len), ES_ENOTFOUND);
    assert_null(v);
    assert_int_equal(len, 0);
}

/* ------------------------------------------------------------ strings */

static void test_set_get_del(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "basic");
    assert_int_equal(es_cache_ping(c), ES_OK);
    assert_non_null(es_cache_name(c));
    assert_absent(c, k);
    assert_int_equal(es_cache_set(c, k, "hello", 5, 0), ES_OK);
    assert_value(c, k, "hello");
    assert_int_equal(es_cache_set(c, k, "bye", 3, 0), ES_OK); /* overwrite, shorter */
    assert_value(c, k, "bye");
    assert_int_equal(es_cache_del(c, k), ES_OK);
    assert_absent(c, k);
    assert_int_equal(es_cache_del(c, k), ES_OK); /* deleting an absent key is fine */
}

static void test_binary_values(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "binary");
    char in[512];
    for (size_t i = 0; i < sizeof in; i++)
        in[i] = (char)(i * 7);
    in[0] = 0; /* starts with NUL, contains every byte value */
    assert_int_equal(es_cache_set(c, k, in, sizeof in, 0), ES_OK);
    char *v = NULL;
    size_t len = 0;
    assert_int_equal(es_cache_get(c, k, &v, &len), ES_OK);
    assert_int_equal(len, sizeof in);
    assert_memory_equal(v, in, sizeof in);
    assert_int_equal(v[len], 0); /* NUL-terminated past the value */
    free(v);

    /* empty value: present, zero length */
    assert_int_equal(es_cache_set(c, k, "", 0, 0), ES_OK);
    assert_value(c, k, "");

    /* a large value round-trips */
    size_t big = 1 << 20;
    char *b = malloc(big);
    assert_non_null(b);
    for (size_t i = 0; i < big; i++)
        b[i] = (char)(i % 251);
    assert_int_equal(es_cache_set(c, k, b, big, 0), ES_OK);
    assert_int_equal(es_cache_get(c, k, &v, &len), ES_OK);
    assert_int_equal(len, big);
    assert_memory_equal(v, b, big);
    free(v);
    free(b);
    assert_int_equal(es_cache_del(c, k), ES_OK);
}

static void test_ttl(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "ttl");
    NAME(k2, "ttl-cleared");
    assert_int_equal(es_cache_set(c, k, "v", 1, 100), ES_OK);
    assert_value(c, k, "v");
    /* a set without TTL replaces the value and drops the TTL */
    assert_int_equal(es_cache_set(c, k2, "a", 1, 100), ES_OK);
    assert_int_equal(es_cache_set(c, k2, "b", 1, 0), ES_OK);
    es_sleep_ms(250);
    assert_absent(c, k);
    assert_value(c, k2, "b");
    assert_int_equal(es_cache_del(c, k2), ES_OK);
}

static void test_many_keys(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    enum { N = 5000 };
    char k[160], v[32], what[32];
    for (int i = 0; i < N; i++) {
        snprintf(what, sizeof what, "many-%d", i);
        int n = snprintf(v, sizeof v, "value-%d", i);
        assert_int_equal(es_cache_set(c, name(k, sizeof k, what), v, (size_t)n, 60000), ES_OK);
    }
    for (int i = 0; i < N; i++) {
        snprintf(what, sizeof what, "many-%d", i);
        snprintf(v, sizeof v, "value-%d", i);
        assert_value(c, name(k, sizeof k, what), v);
    }
    for (int i = 0; i < N; i++) {
        snprintf(what, sizeof what, "many-%d", i);
        assert_int_equal(es_cache_del(c, name(k, sizeof k, what)), ES_OK);
    }
    snprintf(what, sizeof what, "many-%d", N / 2);
    assert_absent(c, name(k, sizeof k, what));
}

/* ------------------------------------------------------------ counters */

static void test_incr(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "incr");
    NAME(kn, "incr-neg");
    NAME(ks, "incr-str");
    int64_t out = 0;
    assert_int_equal(es_cache_incr(c, k, 1, 0, &out), ES_OK); /* created at 0 */
    assert_int_equal(out, 1);
    assert_int_equal(es_cache_incr(c, k, 5, 0, &out), ES_OK);
    assert_int_equal(out, 6);
    assert_value(c, k, "6"); /* reads back as decimal text */

    assert_int_equal(es_cache_incr(c, kn, -3, 0, &out), ES_OK);
    assert_int_equal(out, -3);
    assert_int_equal(es_cache_incr(c, kn, -2, 0, &out), ES_OK);
    assert_int_equal(out, -5);
    assert_int_equal(es_cache_incr(c, kn, 10, 0, &out), ES_OK);
    assert_int_equal(out, 5);

    /* a string holding an integer counts on from it; anything else is refused */
    assert_int_equal(es_cache_set(c, ks, "41", 2, 0), ES_OK);
    assert_int_equal(es_cache_incr(c, ks, 1, 0, &out), ES_OK);
    assert_int_equal(out, 42);
    assert_int_equal(es_cache_set(c, ks, "forty", 5, 0), ES_OK);
    assert_int_equal(es_cache_incr(c, ks, 1, 0, &out), ES_EINVAL);
    assert_value(c, ks, "forty"); /* untouched */
    assert_int_equal(es_cache_set(c, ks, "4\0002", 3, 0), ES_OK);
    assert_int_equal(es_cache_incr(c, ks, 1, 0, &out), ES_EINVAL);

    /* overflow is refused, the value kept */
    char max[32];
    int n = snprintf(max, sizeof max, "%lld", (long long)INT64_MAX);
    assert_int_equal(es_cache_set(c, ks, max, (size_t)n, 0), ES_OK);
    assert_int_equal(es_cache_incr(c, ks, 1, 0, &out), ES_EINVAL);
    assert_value(c, ks, max);

    assert_int_equal(es_cache_del(c, k), ES_OK);
    assert_int_equal(es_cache_del(c, kn), ES_OK);
    assert_int_equal(es_cache_del(c, ks), ES_OK);
}

static void test_incr_ttl_on_create_only(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "incr-ttl");
    int64_t out = 0;
    assert_int_equal(es_cache_incr(c, k, 1, 200, &out), ES_OK);
    es_sleep_ms(50);
    /* a later TTL does not extend the counter's life */
    assert_int_equal(es_cache_incr(c, k, 1, 60000, &out), ES_OK);
    assert_int_equal(out, 2);
    es_sleep_ms(350);
    assert_absent(c, k);
    /* and after expiry it starts again from 0 */
    assert_int_equal(es_cache_incr(c, k, 1, 0, &out), ES_OK);
    assert_int_equal(out, 1);
    assert_int_equal(es_cache_del(c, k), ES_OK);
}

typedef struct incr_job {
    es_cache *c;
    const char *key;
    const char *field; /* hincr when set */
    int n;
    int failures;
} incr_job;

static void *incr_thread(void *arg)
{
    incr_job *j = arg;
    for (int i = 0; i < j->n; i++) {
        int64_t out;
        int rc = j->field ? es_cache_hincr(j->c, j->key, j->field, 1, &out)
                          : es_cache_incr(j->c, j->key, 1, 0, &out);
        if (rc != ES_OK) j->failures++;
    }
    return NULL;
}

static void run_concurrent(es_cache *c, const char *key, const char *field)
{
    enum { THREADS = 8, EACH = 1000 };
    pthread_t th[THREADS];
    incr_job jobs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (incr_job){.c = c, .key = key, .field = field, .n = EACH};
        assert_int_equal(pthread_create(&th[i], NULL, incr_thread, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].failures, 0);
    }
}

static void test_incr_concurrent(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "incr-concurrent");
    run_concurrent(c, k, NULL);
    int64_t out = 0;
    assert_int_equal(es_cache_incr(c, k, 0, 0, &out), ES_OK);
    assert_int_equal(out, 8000);
    assert_value(c, k, "8000");
    assert_int_equal(es_cache_del(c, k), ES_OK);
}

/* ------------------------------------------------------------ hashes */

static void test_hash(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "hash");
    NAME(ks, "hash-str");
    es_kv *f = NULL;
    int n = -1;
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_ENOTFOUND);
    assert_null(f);
    assert_int_equal(n, 0);

    es_kv a[] = {{"status", "queued"}, {"rows", "0"}};
    assert_int_equal(es_cache_hset(c, k, a, 2, 0), ES_OK);
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    assert_int_equal(n, 2);
    assert_string_equal(es_kv_get(f, n, "status"), "queued");
    assert_string_equal(es_kv_get(f, n, "rows"), "0");
    es_kv_free(f, n);

    /* hset updates some fields, adds others, keeps the rest */
    es_kv b[] = {{"status", "processing"}, {"error", ""}};
    assert_int_equal(es_cache_hset(c, k, b, 2, 0), ES_OK);
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    assert_int_equal(n, 3);
    assert_string_equal(es_kv_get(f, n, "status"), "processing");
    assert_string_equal(es_kv_get(f, n, "rows"), "0");
    assert_string_equal(es_kv_get(f, n, "error"), "");
    es_kv_free(f, n);

    int64_t out = 0;
    assert_int_equal(es_cache_hincr(c, k, "rows", 1000, &out), ES_OK);
    assert_int_equal(out, 1000);
    assert_int_equal(es_cache_hincr(c, k, "rows", -1, &out), ES_OK);
    assert_int_equal(out, 999);
    assert_int_equal(es_cache_hincr(c, k, "failed", 2, &out), ES_OK); /* new field from 0 */
    assert_int_equal(out, 2);
    assert_int_equal(es_cache_hincr(c, k, "status", 1, &out), ES_EINVAL); /* not an integer */
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    assert_int_equal(n, 4);
    assert_string_equal(es_kv_get(f, n, "rows"), "999");
    assert_string_equal(es_kv_get(f, n, "failed"), "2");
    assert_string_equal(es_kv_get(f, n, "status"), "processing");
    es_kv_free(f, n);

    /* kinds don't mix */
    char *v = NULL;
    size_t len;
    assert_int_equal(es_cache_get(c, k, &v, &len), ES_EINVAL);
    assert_null(v);
    assert_int_equal(es_cache_incr(c, k, 1, 0, &out), ES_EINVAL);
    assert_int_equal(es_cache_set(c, ks, "x", 1, 0), ES_OK);
    assert_int_equal(es_cache_hgetall(c, ks, &f, &n), ES_EINVAL);
    assert_null(f);
    assert_int_equal(es_cache_hset(c, ks, a, 2, 0), ES_EINVAL);
    assert_int_equal(es_cache_hincr(c, ks, "rows", 1, &out), ES_EINVAL);
    assert_value(c, ks, "x");

    /* a hash with no fields is not a thing */
    assert_int_equal(es_cache_hset(c, k, a, 0, 0), ES_EINVAL);

    assert_int_equal(es_cache_del(c, k), ES_OK);
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_ENOTFOUND);
    assert_int_equal(es_cache_del(c, ks), ES_OK);
}

static void test_hincr_creates_hash(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "hincr-new");
    int64_t out = 0;
    assert_int_equal(es_cache_hincr(c, k, "n", -7, &out), ES_OK);
    assert_int_equal(out, -7);
    es_kv *f = NULL;
    int n = 0;
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    assert_int_equal(n, 1);
    assert_string_equal(f[0].key, "n");
    assert_string_equal(f[0].value, "-7");
    es_kv_free(f, n);
    assert_int_equal(es_cache_del(c, k), ES_OK);
}

static void test_hincr_concurrent(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "hincr-concurrent");
    run_concurrent(c, k, "done");
    es_kv *f = NULL;
    int n = 0;
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    assert_string_equal(es_kv_get(f, n, "done"), "8000");
    es_kv_free(f, n);
    assert_int_equal(es_cache_del(c, k), ES_OK);
}

static void test_hash_ttl(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "hash-ttl");
    NAME(kk, "hash-ttl-kept");
    NAME(kr, "hash-ttl-reset");
    es_kv a[] = {{"status", "done"}};
    es_kv b[] = {{"rows", "5"}};
    es_kv *f = NULL;
    int n = 0;

    assert_int_equal(es_cache_hset(c, k, a, 1, 100), ES_OK);
    /* ttl 0 on a later hset keeps the hash's TTL */
    assert_int_equal(es_cache_hset(c, kk, a, 1, 200), ES_OK);
    assert_int_equal(es_cache_hset(c, kk, b, 1, 0), ES_OK);
    /* ttl > 0 on a later hset sets a new one */
    assert_int_equal(es_cache_hset(c, kr, a, 1, 200), ES_OK);
    es_sleep_ms(50);
    assert_int_equal(es_cache_hset(c, kr, b, 1, 60000), ES_OK);

    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_OK);
    es_kv_free(f, n);
    es_sleep_ms(350);
    assert_int_equal(es_cache_hgetall(c, k, &f, &n), ES_ENOTFOUND);
    assert_int_equal(es_cache_hgetall(c, kk, &f, &n), ES_ENOTFOUND);
    assert_int_equal(es_cache_hgetall(c, kr, &f, &n), ES_OK);
    assert_int_equal(n, 2);
    es_kv_free(f, n);
    assert_int_equal(es_cache_del(c, kr), ES_OK);
}

/* ------------------------------------------------------------ locks */

static void test_lock(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "lock");
    assert_int_equal(es_cache_lock(c, k, "owner-a", 60000), ES_OK);
    assert_int_equal(es_cache_lock(c, k, "owner-b", 60000), ES_ECONFLICT);
    assert_int_equal(es_cache_lock(c, k, "owner-a", 60000), ES_OK); /* re-lock by the owner */
    assert_int_equal(es_cache_unlock(c, k, "owner-b"), ES_ECONFLICT);
    assert_int_equal(es_cache_lock(c, k, "owner-b", 60000), ES_ECONFLICT); /* still held */
    assert_int_equal(es_cache_unlock(c, k, "owner-a"), ES_OK);
    assert_int_equal(es_cache_unlock(c, k, "owner-a"), ES_ECONFLICT); /* no longer held */
    assert_int_equal(es_cache_lock(c, k, "owner-b", 60000), ES_OK);
    assert_int_equal(es_cache_unlock(c, k, "owner-b"), ES_OK);
}

static void test_lock_expiry(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(k, "lock-expiry");
    NAME(ke, "lock-extend");
    assert_int_equal(es_cache_lock(c, k, "owner-a", 100), ES_OK);
    /* re-locking extends: this one would have expired without it */
    assert_int_equal(es_cache_lock(c, ke, "owner-a", 200), ES_OK);
    es_sleep_ms(50);
    assert_int_equal(es_cache_lock(c, ke, "owner-a", 60000), ES_OK);
    es_sleep_ms(350);
    /* the expired lock is free for another owner; its old owner cannot unlock it */
    assert_int_equal(es_cache_lock(c, k, "owner-b", 60000), ES_OK);
    assert_int_equal(es_cache_unlock(c, k, "owner-a"), ES_ECONFLICT);
    assert_int_equal(es_cache_lock(c, k, "owner-a", 60000), ES_ECONFLICT);
    assert_int_equal(es_cache_unlock(c, k, "owner-b"), ES_OK);
    /* the extended one is still held */
    assert_int_equal(es_cache_lock(c, ke, "owner-b", 60000), ES_ECONFLICT);
    assert_int_equal(es_cache_unlock(c, ke, "owner-a"), ES_OK);
}

/* ------------------------------------------------------------ publish/subscribe */

#define MAX_MSGS 256

typedef struct collector {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    char *chan[MAX_MSGS];
    char *msg[MAX_MSGS];
    size_t len[MAX_MSGS];
    int delay_ms;              /* a slow subscriber */
    bool unsubscribed;         /* set by the test once unsubscribe returned */
    int late;                  /* callbacks running after that: must stay 0 */
    es_subscription *self_sub; /* unsubscribe from the callback after self_after messages */
    int self_after;
} collector;

static void collector_init(collector *col)
{
    memset(col, 0, sizeof *col);
    pthread_mutex_init(&col->mu, NULL);
    pthread_cond_init(&col->cv, NULL);
}

static void collector_finish(collector *col)
{
    for (int i = 0; i < col->n && i < MAX_MSGS; i++) {
        free(col->chan[i]);
        free(col->msg[i]);
    }
    pthread_cond_destroy(&col->cv);
    pthread_mutex_destroy(&col->mu);
}

static void collect(void *arg, const char *channel, const char *msg, size_t len)
{
    collector *col = arg;
    pthread_mutex_lock(&col->mu);
    if (col->unsubscribed) col->late++;
    int i = col->n++;
    if (i < MAX_MSGS) {
        col->chan[i] = strdup(channel);
        col->msg[i] = malloc(len + 1);
        if (col->msg[i]) {
            memcpy(col->msg[i], msg, len);
            col->msg[i][len] = 0;
        }
        col->len[i] = len;
    }
    es_subscription *self = col->self_sub && col->n >= col->self_after ? col->self_sub : NULL;
    if (self) col->self_sub = NULL;
    pthread_cond_broadcast(&col->cv);
    int delay = col->delay_ms;
    pthread_mutex_unlock(&col->mu);

    if (delay) es_sleep_ms(delay);
    if (self) es_cache_unsubscribe(self);

    pthread_mutex_lock(&col->mu);
    if (col->unsubscribed) col->late++;
    pthread_mutex_unlock(&col->mu);
}

/* Waits until at least n messages arrived (5 s at most); returns the count. */
static int wait_for(collector *col, int n)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    pthread_mutex_lock(&col->mu);
    while (col->n < n)
        if (pthread_cond_timedwait(&col->cv, &col->mu, &until) != 0) break;
    int got = col->n;
    pthread_mutex_unlock(&col->mu);
    return got;
}

static int count(collector *col)
{
    pthread_mutex_lock(&col->mu);
    int n = col->n;
    pthread_mutex_unlock(&col->mu);
    return n;
}

static void publish_str(es_cache *c, const char *channel, const char *msg)
{
    assert_int_equal(es_cache_publish(c, channel, msg, strlen(msg)), ES_OK);
}

static void test_pubsub_order(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.order");
    enum { N = 200 };
    collector col;
    collector_init(&col);
    es_subscription *s = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &col, &s), ES_OK);
    assert_non_null(s);
    char m[32];
    for (int i = 0; i < N; i++) {
        snprintf(m, sizeof m, "msg-%d", i);
        publish_str(c, ch, m);
    }
    assert_int_equal(wait_for(&col, N), N);
    for (int i = 0; i < N; i++) {
        snprintf(m, sizeof m, "msg-%d", i);
        assert_string_equal(col.msg[i], m);
        assert_string_equal(col.chan[i], ch);
    }
    /* binary payloads arrive whole */
    assert_int_equal(es_cache_publish(c, ch, "a\0b", 3), ES_OK);
    assert_int_equal(wait_for(&col, N + 1), N + 1);
    assert_int_equal(col.len[N], 3);
    assert_memory_equal(col.msg[N], "a\0b", 3);
    es_cache_unsubscribe(s);
    collector_finish(&col);
}

static void test_pubsub_prefix(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(pat, "pfx.*");
    NAME(a, "pfx.a");
    NAME(b, "pfx.b.c");
    NAME(other, "pfy.a");
    NAME(exact, "exact");
    collector col, ex;
    collector_init(&col);
    collector_init(&ex);
    es_subscription *s = NULL, *se = NULL;
    assert_int_equal(es_cache_subscribe(c, pat, collect, &col, &s), ES_OK);
    assert_int_equal(es_cache_subscribe(c, exact, collect, &ex, &se), ES_OK);
    publish_str(c, a, "1");
    publish_str(c, other, "no");
    publish_str(c, b, "2");
    publish_str(c, exact, "3");
    assert_int_equal(wait_for(&col, 2), 2);
    assert_int_equal(wait_for(&ex, 1), 1);
    es_sleep_ms(100); /* nothing else trickles in */
    assert_int_equal(count(&col), 2);
    assert_int_equal(count(&ex), 1);
    /* the callback gets the channel published to, not the pattern */
    assert_string_equal(col.chan[0], a);
    assert_string_equal(col.msg[0], "1");
    assert_string_equal(col.chan[1], b);
    assert_string_equal(col.msg[1], "2");
    assert_string_equal(ex.msg[0], "3");
    es_cache_unsubscribe(s);
    es_cache_unsubscribe(se);
    collector_finish(&col);
    collector_finish(&ex);
}

static void test_pubsub_two_subscribers(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.two");
    collector a, b;
    collector_init(&a);
    collector_init(&b);
    es_subscription *sa = NULL, *sb = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &a, &sa), ES_OK);
    assert_int_equal(es_cache_subscribe(c, ch, collect, &b, &sb), ES_OK);
    publish_str(c, ch, "x");
    publish_str(c, ch, "y");
    assert_int_equal(wait_for(&a, 2), 2);
    assert_int_equal(wait_for(&b, 2), 2);
    assert_string_equal(a.msg[0], "x");
    assert_string_equal(a.msg[1], "y");
    assert_string_equal(b.msg[0], "x");
    assert_string_equal(b.msg[1], "y");
    es_cache_unsubscribe(sa);
    es_cache_unsubscribe(sb);
    collector_finish(&a);
    collector_finish(&b);
}

static void test_pubsub_unsubscribe(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.unsub");
    collector gone, stays;
    collector_init(&gone);
    collector_init(&stays);
    es_subscription *sg = NULL, *ss = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &gone, &sg), ES_OK);
    assert_int_equal(es_cache_subscribe(c, ch, collect, &stays, &ss), ES_OK);
    publish_str(c, ch, "before");
    assert_int_equal(wait_for(&gone, 1), 1);
    assert_int_equal(wait_for(&stays, 1), 1);
    es_cache_unsubscribe(sg);
    pthread_mutex_lock(&gone.mu);
    gone.unsubscribed = true;
    pthread_mutex_unlock(&gone.mu);
    publish_str(c, ch, "after-1");
    publish_str(c, ch, "after-2");
    /* the remaining subscriber proves the messages went out */
    assert_int_equal(wait_for(&stays, 3), 3);
    es_sleep_ms(100);
    assert_int_equal(count(&gone), 1);
    assert_int_equal(gone.late, 0);
    es_cache_unsubscribe(ss);
    es_cache_unsubscribe(NULL); /* a no-op */
    collector_finish(&gone);
    collector_finish(&stays);
}

/* Unsubscribing while a callback of that subscription is running: it
 * finishes before unsubscribe returns, and no other starts. */
static void test_pubsub_unsubscribe_during_callback(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.slow");
    collector col;
    collector_init(&col);
    col.delay_ms = 40;
    es_subscription *s = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &col, &s), ES_OK);
    for (int i = 0; i < 10; i++)
        publish_str(c, ch, "m");
    assert_true(wait_for(&col, 1) >= 1); /* a callback has started (and sleeps) */
    es_cache_unsubscribe(s);
    pthread_mutex_lock(&col.mu);
    col.unsubscribed = true;
    pthread_mutex_unlock(&col.mu);
    es_sleep_ms(200);
    assert_int_equal(col.late, 0);
    assert_true(count(&col) < 10);
    collector_finish(&col);
}

/* A subscription may end itself from its own callback (a one-shot waiter). */
static void test_pubsub_unsubscribe_from_callback(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.self");
    collector col, witness;
    collector_init(&col);
    collector_init(&witness);
    es_subscription *s = NULL, *sw = NULL;
    pthread_mutex_lock(&col.mu); /* no callback before self_sub is set */
    assert_int_equal(es_cache_subscribe(c, ch, collect, &col, &s), ES_OK);
    col.self_sub = s;
    col.self_after = 1;
    pthread_mutex_unlock(&col.mu);
    assert_int_equal(es_cache_subscribe(c, ch, collect, &witness, &sw), ES_OK);
    publish_str(c, ch, "one");
    publish_str(c, ch, "two");
    publish_str(c, ch, "three");
    assert_int_equal(wait_for(&witness, 3), 3);
    es_sleep_ms(100);
    assert_int_equal(count(&col), 1);
    assert_string_equal(col.msg[0], "one");
    es_cache_unsubscribe(sw);
    collector_finish(&col);
    collector_finish(&witness);
}

static void test_pubsub_no_subscribers(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.nobody");
    publish_str(c, ch, "into the void");
    /* a later subscriber does not get what was published before it */
    collector col;
    collector_init(&col);
    es_subscription *s = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &col, &s), ES_OK);
    publish_str(c, ch, "heard");
    assert_int_equal(wait_for(&col, 1), 1);
    es_sleep_ms(100);
    assert_int_equal(count(&col), 1);
    assert_string_equal(col.msg[0], "heard");
    es_cache_unsubscribe(s);
    collector_finish(&col);
}

/* Messages still on their way to a slow subscriber when another subscribes
 * were published before it: it must not get them. */
static void test_pubsub_only_after_subscribe(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.after");
    collector slow, late;
    collector_init(&slow);
    collector_init(&late);
    slow.delay_ms = 30;
    es_subscription *ss = NULL, *sl = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, collect, &slow, &ss), ES_OK);
    for (int i = 0; i < 5; i++)
        publish_str(c, ch, "early");
    assert_int_equal(es_cache_subscribe(c, ch, collect, &late, &sl), ES_OK);
    publish_str(c, ch, "late");
    assert_int_equal(wait_for(&slow, 6), 6);
    assert_int_equal(wait_for(&late, 1), 1);
    es_sleep_ms(100);
    assert_int_equal(count(&late), 1);
    assert_string_equal(late.msg[0], "late");
    assert_string_equal(slow.msg[5], "late");
    es_cache_unsubscribe(ss);
    es_cache_unsubscribe(sl);
    collector_finish(&slow);
    collector_finish(&late);
}

typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool open;
    int n;
    char last[32];
} gate;

static void gated(void *arg, const char *channel, const char *msg, size_t len)
{
    (void)channel;
    gate *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->open)
        pthread_cond_wait(&g->cv, &g->mu);
    g->n++;
    snprintf(g->last, sizeof g->last, "%.*s", (int)(len < 31 ? len : 31), msg);
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* A subscriber stuck in its callback never holds up publishers; when the
 * backlog overflows, the oldest messages go and the newest arrive. */
static void test_pubsub_slow_subscriber(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    NAME(ch, "ch.stuck");
    enum { N = 30000 };
    gate g = {.open = false};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    es_subscription *s = NULL;
    assert_int_equal(es_cache_subscribe(c, ch, gated, &g, &s), ES_OK);
    int64_t t0 = es_mono_ms();
    char m[32];
    for (int i = 0; i < N; i++) {
        snprintf(m, sizeof m, "m%d", i);
        publish_str(c, ch, m);
    }
    assert_true(es_mono_ms() - t0 < 20000);
    pthread_mutex_lock(&g.mu);
    g.open = true;
    pthread_cond_broadcast(&g.cv);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    snprintf(m, sizeof m, "m%d", N - 1);
    while (strcmp(g.last, m) != 0)
        if (pthread_cond_timedwait(&g.cv, &g.mu, &until) != 0) break;
    assert_string_equal(g.last, m);
    assert_true(g.n >= 1 && g.n <= N);
    pthread_mutex_unlock(&g.mu);
    es_cache_unsubscribe(s);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
}

/* ------------------------------------------------------------ arguments */

static void test_bad_arguments(void **state)
{
    es_cache *c = ((fixture *)*state)->c;
    es_cache *other = (es_cache *)1;
    assert_int_equal(es_cache_open("nosuch://x", NULL, &other), ES_EINVAL);
    assert_null(other);
    es_cache_close(NULL); /* a no-op */
    char *v;
    size_t len;
    int64_t out;
    assert_int_equal(es_cache_get(c, "", &v, &len), ES_EINVAL);
    assert_int_equal(es_cache_set(c, NULL, "x", 1, 0), ES_EINVAL);
    NAME(k, "bad-args");
    assert_int_equal(es_cache_set(c, k, "x", 1, -1), ES_EINVAL);
    assert_int_equal(es_cache_incr(c, "", 1, 0, &out), ES_EINVAL);
    assert_int_equal(es_cache_lock(c, k, "", 1000), ES_EINVAL);
    assert_int_equal(es_cache_subscribe(c, k, NULL, NULL, &(es_subscription *){NULL}), ES_EINVAL);
    assert_absent(c, k);
}

int main(void)
{
    char urls[8][512];
    int n = test_urls("ESTEIRA_TEST_CACHE_URLS", "local:", urls, 8);
    char id[ES_UUID_LEN + 1];
    es_uuid7(id);
    snprintf(g_run, sizeof g_run, "esteira-test:%s", id);

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_set_get_del),
        T(test_binary_values),
        T(test_ttl),
        T(test_many_keys),
        T(test_incr),
        T(test_incr_ttl_on_create_only),
        T(test_incr_concurrent),
        T(test_hash),
        T(test_hincr_creates_hash),
        T(test_hincr_concurrent),
        T(test_hash_ttl),
        T(test_lock),
        T(test_lock_expiry),
        T(test_pubsub_order),
        T(test_pubsub_prefix),
        T(test_pubsub_two_subscribers),
        T(test_pubsub_unsubscribe),
        T(test_pubsub_unsubscribe_during_callback),
        T(test_pubsub_unsubscribe_from_callback),
        T(test_pubsub_no_subscribers),
        T(test_pubsub_only_after_subscribe),
        T(test_pubsub_slow_subscriber),
        T(test_bad_arguments),
    };
#undef T
    int failed = 0;
    for (int i = 0; i < n; i++) {
        g_url = urls[i];
        char group[600];
        snprintf(group, sizeof group, "cache contract (%.400s)", g_url);
        failed += cmocka_run_group_tests_name(group, tests, NULL, NULL);
    }
    return failed ? 1 : 0;
}
