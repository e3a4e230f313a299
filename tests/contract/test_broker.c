/* test_broker.c - the broker contract (broker.h), run against every URL in
 * ESTEIRA_TEST_BROKER_URLS (space-separated); by default the local: backend
 * in a fresh temporary directory.
 *
 * Every test uses queues of its own (named after the pid, the clock and a
 * counter) and purges them at the end, so the suite can run against a shared
 * server.  The crash tests fork a child that publishes, takes deliveries
 * without acknowledging them and SIGKILLs itself. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>

#include "testutil.h"

#include "esteira/broker.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define MAX_URLS 8

static char g_url[512];
static es_config g_cfg;

typedef struct fx {
    es_broker *b;
    char q[160];
    char dq[170]; /* q.dead */
    pid_t child;  /* a forked helper still to be killed when a test fails */
} fx;

static void make_queue_name(char *out, size_t size, const char *tag)
{
    static atomic_int seq;
    snprintf(out, size, "t%ld-%lld-%d.%s", (long)getpid(), (long long)es_now_ms(),
             atomic_fetch_add(&seq, 1), tag);
}

static es_broker *open_broker(void)
{
    es_broker *b = NULL;
    int rc = es_broker_open(g_url, &g_cfg, &b);
    assert_int_equal(rc, ES_OK);
    assert_non_null(b);
    return b;
}

static int setup_named(void **state, bool open)
{
    fx *f = calloc(1, sizeof *f);
    if (!f) return -1;
    make_queue_name(f->q, sizeof f->q, "q");
    snprintf(f->dq, sizeof f->dq, "%s.dead", f->q);
    if (open) {
        if (es_broker_open(g_url, &g_cfg, &f->b) != ES_OK ||
            es_broker_declare(f->b, f->q) != ES_OK) {
            es_broker_close(f->b);
            free(f);
            return -1;
        }
    }
    *state = f;
    return 0;
}

static int setup(void **state)
{
    return setup_named(state, true);
}

static int setup_closed(void **state)
{
    return setup_named(state, false);
}

/* Purges what a test left behind (a failed one may leave anything). */
static int teardown(void **state)
{
    fx *f = *state;
    if (f->child > 0) {
        kill(f->child, SIGKILL);
        waitpid(f->child, NULL, 0);
    }
    if (!f->b && es_broker_open(g_url, &g_cfg, &f->b) != ES_OK) f->b = NULL;
    if (f->b) {
        es_broker_purge(f->b, f->q);
        es_broker_purge(f->b, f->dq);
        es_broker_close(f->b);
    }
    free(f);
    return 0;
}

static void publish_one(es_broker *b, const char *q, const char *body, const es_kv *h, int nh,
                        int attempts, int64_t delay_ms)
{
    es_msg m = {.queue = q,
                .body = body,
                .len = strlen(body),
                .headers = h,
                .nheaders = nh,
                .attempts = attempts,
                .delay_ms = delay_ms};
    assert_int_equal(es_broker_publish(b, &m, 1), ES_OK);
}

/* Publishes bodies "0", "1", … "n-1" in one call. */
static void publish_numbered(es_broker *b, const char *q, int from, int n)
{
    es_msg *m = calloc((size_t)n, sizeof *m);
    char(*bodies)[16] = calloc((size_t)n, sizeof *bodies);
    assert_non_null(m);
    assert_non_null(bodies);
    for (int i = 0; i < n; i++) {
        snprintf(bodies[i], sizeof bodies[i], "%d", from + i);
        m[i] = (es_msg){.queue = q, .body = bodies[i], .len = strlen(bodies[i])};
    }
    assert_int_equal(es_broker_publish(b, m, (size_t)n), ES_OK);
    free(m);
    free(bodies);
}

static int body_int(const es_delivery *d)
{
    int64_t v = -1;
    if (es_parse_i64(d->body, 0, 1000000000, &v) != ES_OK) return -1;
    return (int)v;
}

static void take(es_consumer *c, int timeout_ms, es_delivery *d)
{
    int rc = es_consumer_next(c, timeout_ms, d);
    assert_int_equal(rc, ES_OK);
}

static void expect_empty(es_consumer *c, int timeout_ms)
{
    es_delivery d;
    int rc = es_consumer_next(c, timeout_ms, &d);
    if (rc == ES_OK) es_delivery_finish(&d);
    assert_int_equal(rc, ES_ETIMEDOUT);
}

/* Depth, polled for a while: a remote broker may count acks a moment late. */
static void expect_depth(es_broker *b, const char *q, int64_t ready, int64_t unacked)
{
    int64_t r = -1, u = -1;
    int64_t until = es_mono_ms() + 3000;
    do {
        assert_int_equal(es_broker_depth(b, q, &r, &u), ES_OK);
        if (r == ready && u == unacked) return;
        es_sleep_ms(50);
    } while (es_mono_ms() < until);
    fprintf(stderr, "depth of %s: ready %lld (want %lld), unacked %lld (want %lld)\n", q,
            (long long)r, (long long)ready, (long long)u, (long long)unacked);
    fail();
}

/* ------------------------------------------------------------------ tests */

static void test_publish_next_ack(void **state)
{
    fx *f = *state;
    int64_t before = es_now_ms();
    publish_one(f->b, f->q, "hello", NULL, 0, 0, 0);

    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 1, &c), ES_OK);
    es_delivery d;
    take(c, 5000, &d);
    assert_string_equal(d.queue, f->q);
    assert_int_equal(d.len, 5);
    assert_memory_equal(d.body, "hello", 6); /* NUL-terminated */
    assert_int_equal(d.attempts, 0);
    assert_false(d.redelivered);
    assert_int_equal(d.nheaders, 0);
    assert_true(d.published_ms >= before - 1000 && d.published_ms <= es_now_ms() + 1000);
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    assert_null(d.body);
    es_delivery_finish(NULL);

    expect_empty(c, 200);
    expect_depth(f->b, f->q, 0, 0);
    es_consumer_close(c);
    es_consumer_close(NULL);
    assert_int_equal(es_broker_ping(f->b), ES_OK);
    assert_string_not_equal(es_broker_name(f->b), "");
}

static void test_body_headers_attempts(void **state)
{
    fx *f = *state;
    const char body[] = {'a', '\0', 'b', '\0', '\0', (char)0xff, 'z'};
    const es_kv h[] = {
        {"jobId", "0190a5f2-1234-7000-8000-00000000abcd"},
        {"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
        {"note", "ação: 1=2; x"},
        {"empty", ""},
    };
    es_msg m[2] = {
        {.queue = f->q,
         .body = body,
         .len = sizeof body,
         .headers = h,
         .nheaders = 4,
         .attempts = 3},
        {.queue = f->q, .body = "", .len = 0}, /* an empty body is a message too */
    };
    assert_int_equal(es_broker_publish(f->b, m, 2), ES_OK);

    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 2, &c), ES_OK);
    es_delivery d;
    take(c, 5000, &d);
    assert_int_equal(d.len, sizeof body);
    assert_memory_equal(d.body, body, sizeof body);
    assert_int_equal(d.body[d.len], '\0');
    assert_int_equal(d.attempts, 3);
    assert_int_equal(d.nheaders, 4);
    for (int i = 0; i < 4; i++) {
        const char *v = es_delivery_header(&d, h[i].key);
        assert_non_null(v);
        assert_string_equal(v, h[i].value);
    }
    assert_null(es_delivery_header(&d, "missing"));
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);

    take(c, 5000, &d);
    assert_int_equal(d.len, 0);
    assert_non_null(d.body);
    assert_int_equal(d.body[0], '\0');
    assert_int_equal(d.nheaders, 0);
    assert_int_equal(d.attempts, 0);
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    es_consumer_close(c);
}

static void test_invalid_arguments(void **state)
{
    fx *f = *state;
    es_broker *b = NULL;
    assert_int_equal(es_broker_open("nosuch://x", &g_cfg, &b), ES_EINVAL);
    assert_null(b);
    es_msg bad[] = {
        {.queue = "", .body = "x", .len = 1},
        {.queue = "has space", .body = "x", .len = 1},
        {.queue = f->q, .body = NULL, .len = 3},
        {.queue = f->q, .body = "x", .len = 1, .delay_ms = -1},
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++)
        assert_int_equal(es_broker_publish(f->b, &bad[i], 1), ES_EINVAL);
    assert_int_equal(es_broker_publish(f->b, NULL, 0), ES_OK);
    es_consumer *c = NULL;
    assert_int_equal(es_consumer_open(f->b, f->q, 0, &c), ES_EINVAL);
    assert_null(c);
    expect_depth(f->b, f->q, 0, 0);
}

static void test_fifo(void **state)
{
    fx *f = *state;
    for (int i = 0; i < 100; i++) {
        char body[16];
        snprintf(body, sizeof body, "%d", i);
        publish_one(f->b, f->q, body, NULL, 0, 0, 0);
    }
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 7, &c), ES_OK);
    for (int i = 0; i < 100; i++) {
        es_delivery d;
        take(c, 5000, &d);
        assert_int_equal(body_int(&d), i);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 100);
    es_consumer_close(c);
}

static void test_next_times_out(void **state)
{
    fx *f = *state;
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 4, &c), ES_OK);
    int64_t t0 = es_mono_ms();
    expect_empty(c, 300);
    int64_t took = es_mono_ms() - t0;
    assert_true(took >= 290);
    assert_true(took < 3000);
    t0 = es_mono_ms();
    expect_empty(c, 0); /* a poll */
    assert_true(es_mono_ms() - t0 < 1000);
    es_consumer_close(c);
}

static void test_retry_delay(void **state)
{
    fx *f = *state;
    const es_kv h[] = {{"jobId", "j-retry"}};
    publish_one(f->b, f->q, "again", h, 1, 0, 0);
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 1, &c), ES_OK);
    es_delivery d;
    take(c, 5000, &d);
    assert_int_equal(d.attempts, 0);
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_consumer_retry(c, &d, 700), ES_OK);
    es_delivery_finish(&d);

    expect_empty(c, 300); /* not before the delay */
    expect_depth(f->b, f->q, 1, 0);
    take(c, 5000, &d);
    assert_true(es_mono_ms() - t0 >= 680);
    assert_int_equal(d.attempts, 1);
    assert_false(d.redelivered);
    assert_string_equal(d.body, "again");
    assert_string_equal(es_delivery_header(&d, "jobId"), "j-retry");

    /* no delay: straight back, one more attempt */
    assert_int_equal(es_consumer_retry(c, &d, 0), ES_OK);
    es_delivery_finish(&d);
    take(c, 2000, &d);
    assert_int_equal(d.attempts, 2);
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    expect_empty(c, 100);
    expect_depth(f->b, f->q, 0, 0);
    es_consumer_close(c);
}

static void test_dead_letter(void **state)
{
    fx *f = *state;
    const es_kv h[] = {{"jobId", "j-dead"}, {"traceparent", "00-aa-bb-01"}};
    publish_one(f->b, f->q, "poison", h, 2, 4, 0);
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 1, &c), ES_OK);
    es_delivery d;
    take(c, 5000, &d);
    assert_int_equal(es_consumer_dead(c, &d, "bad input: no field x"), ES_OK);
    es_delivery_finish(&d);
    expect_empty(c, 200);
    expect_depth(f->b, f->q, 0, 0);
    expect_depth(f->b, f->dq, 1, 0);
    es_consumer_close(c);

    es_consumer *dc;
    assert_int_equal(es_consumer_open(f->b, f->dq, 1, &dc), ES_OK);
    take(dc, 5000, &d);
    assert_string_equal(d.queue, f->dq);
    assert_string_equal(d.body, "poison");
    assert_int_equal(d.attempts, 4);
    assert_string_equal(es_delivery_header(&d, "jobId"), "j-dead");
    assert_string_equal(es_delivery_header(&d, "traceparent"), "00-aa-bb-01");
    assert_string_equal(es_delivery_header(&d, ES_BROKER_DEAD_REASON_HEADER),
                        "bad input: no field x");
    assert_int_equal(es_consumer_ack(dc, &d), ES_OK);
    es_delivery_finish(&d);
    expect_depth(f->b, f->dq, 0, 0);
    es_consumer_close(dc);
}

static void test_depth(void **state)
{
    fx *f = *state;
    expect_depth(f->b, f->q, 0, 0);
    publish_numbered(f->b, f->q, 0, 5);
    publish_one(f->b, f->q, "later", NULL, 0, 0, 60000); /* delayed counts as ready */
    expect_depth(f->b, f->q, 6, 0);

    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 2, &c), ES_OK);
    es_delivery d1, d2;
    take(c, 5000, &d1);
    take(c, 5000, &d2);
    expect_depth(f->b, f->q, 4, 2);
    assert_int_equal(es_consumer_ack(c, &d1), ES_OK);
    expect_depth(f->b, f->q, 4, 1);
    es_delivery_finish(&d1);
    es_delivery_finish(&d2);
    es_consumer_close(c); /* d2 goes back */
    expect_depth(f->b, f->q, 5, 0);
}

static void test_purge(void **state)
{
    fx *f = *state;
    publish_numbered(f->b, f->q, 0, 10);
    expect_depth(f->b, f->q, 10, 0);
    assert_int_equal(es_broker_purge(f->b, f->q), ES_OK);
    expect_depth(f->b, f->q, 0, 0);
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 1, &c), ES_OK);
    expect_empty(c, 200);
    /* the queue still works */
    publish_one(f->b, f->q, "after", NULL, 0, 0, 0);
    es_delivery d;
    take(c, 5000, &d);
    assert_string_equal(d.body, "after");
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    es_consumer_close(c);
}

static void test_close_returns_unacked(void **state)
{
    fx *f = *state;
    publish_numbered(f->b, f->q, 0, 3);
    es_consumer *a;
    assert_int_equal(es_consumer_open(f->b, f->q, 2, &a), ES_OK);
    es_delivery d;
    for (int i = 0; i < 2; i++) {
        take(a, 5000, &d);
        assert_int_equal(body_int(&d), i);
        es_delivery_finish(&d); /* never acked */
    }
    es_consumer_close(a);

    es_consumer *b;
    assert_int_equal(es_consumer_open(f->b, f->q, 10, &b), ES_OK);
    bool seen[3] = {false};
    for (int i = 0; i < 3; i++) {
        take(b, 5000, &d);
        int n = body_int(&d);
        assert_true(n >= 0 && n < 3);
        assert_false(seen[n]);
        seen[n] = true;
        assert_int_equal(d.redelivered, n < 2); /* the two A had */
        assert_int_equal(es_consumer_ack(b, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(b, 200);
    es_consumer_close(b);
}

static void test_prefetch_limit(void **state)
{
    fx *f = *state;
    publish_numbered(f->b, f->q, 0, 5);
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 2, &c), ES_OK);
    es_delivery d1, d2, d3;
    take(c, 5000, &d1);
    take(c, 5000, &d2);
    expect_empty(c, 300); /* two unacked: no third */
    assert_int_equal(es_consumer_ack(c, &d1), ES_OK);
    take(c, 5000, &d3);
    assert_int_equal(body_int(&d3), 2);
    expect_empty(c, 200);
    expect_depth(f->b, f->q, 2, 2);
    assert_int_equal(es_consumer_ack(c, &d2), ES_OK);
    assert_int_equal(es_consumer_ack(c, &d3), ES_OK);
    es_delivery_finish(&d1);
    es_delivery_finish(&d2);
    es_delivery_finish(&d3);
    es_consumer_close(c);
}

static void test_publish_batch(void **state)
{
    fx *f = *state;
    enum { N = 500 };
    publish_numbered(f->b, f->q, 0, N);
    expect_depth(f->b, f->q, N, 0);
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 50, &c), ES_OK);
    for (int i = 0; i < N; i++) {
        es_delivery d;
        take(c, 5000, &d);
        assert_int_equal(body_int(&d), i);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 100);
    expect_depth(f->b, f->q, 0, 0);
    es_consumer_close(c);
}

static void test_reopen_keeps_messages(void **state)
{
    fx *f = *state;
    publish_numbered(f->b, f->q, 0, 10);
    es_broker_close(f->b);
    f->b = open_broker();
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 4, &c), ES_OK);
    for (int i = 0; i < 10; i++) {
        es_delivery d;
        take(c, 5000, &d);
        assert_int_equal(body_int(&d), i);
        assert_false(d.redelivered);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 100);
    es_consumer_close(c);
}

/* ---- a waiting consumer hears of a publish at once, not at its next poll */

#define WAKE_ROUNDS 7

typedef struct wake {
    es_broker *b;
    const char *q;
    pthread_barrier_t ready;
    int64_t got_us[WAKE_ROUNDS];
    atomic_int errors;
} wake;

static void *wake_waiter(void *p)
{
    wake *w = p;
    es_consumer *c = NULL;
    if (es_consumer_open(w->b, w->q, 1, &c) != ES_OK) atomic_fetch_add(&w->errors, 1);
    for (int i = 0; i < WAKE_ROUNDS; i++) {
        pthread_barrier_wait(&w->ready);
        es_delivery d;
        if (!c || es_consumer_next(c, 5000, &d) != ES_OK) {
            atomic_fetch_add(&w->errors, 1);
            continue;
        }
        w->got_us[i] = es_mono_us();
        if (es_consumer_ack(c, &d) != ES_OK) atomic_fetch_add(&w->errors, 1);
        es_delivery_finish(&d);
    }
    es_consumer_close(c);
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void test_publish_wakes_waiter(void **state)
{
    fx *f = *state;
    wake w = {.b = f->b, .q = f->q};
    pthread_barrier_init(&w.ready, NULL, 2);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wake_waiter, &w), 0);
    int64_t sent[WAKE_ROUNDS], lat[WAKE_ROUNDS];
    for (int i = 0; i < WAKE_ROUNDS; i++) {
        pthread_barrier_wait(&w.ready);
        es_sleep_ms(30); /* let it go to sleep in next() */
        sent[i] = es_mono_us();
        publish_one(f->b, f->q, "ping", NULL, 0, 0, 0);
        es_sleep_ms(150);
    }
    pthread_join(th, NULL);
    pthread_barrier_destroy(&w.ready);
    assert_int_equal(atomic_load(&w.errors), 0);
    for (int i = 0; i < WAKE_ROUNDS; i++)
        lat[i] = w.got_us[i] - sent[i];
    qsort(lat, WAKE_ROUNDS, sizeof lat[0], cmp_i64);
    /* A consumer that only polled (every 100 ms) would show about 50 ms. */
    if (lat[WAKE_ROUNDS / 2] > 30000)
        fail_msg("median publish-to-delivery %lld us", (long long)lat[WAKE_ROUNDS / 2]);
}

/* ---- two consumers, four publishers, one queue: each message once */

#define MT_PUBLISHERS 4
#define MT_PER_PUB    500
#define MT_TOTAL      (MT_PUBLISHERS * MT_PER_PUB)

typedef struct mt {
    es_broker *b;
    const char *q;
    atomic_int seen[MT_TOTAL];
    atomic_int received;
    atomic_int errors;
    atomic_int per_consumer[2];
    pthread_barrier_t start;
} mt;

typedef struct mt_arg {
    mt *m;
    int index;
} mt_arg;

static void *mt_publisher(void *p)
{
    mt_arg *a = p;
    pthread_barrier_wait(&a->m->start);
    for (int i = 0; i < MT_PER_PUB; i++) {
        char body[16];
        snprintf(body, sizeof body, "%d", a->index * MT_PER_PUB + i);
        es_msg msg = {.queue = a->m->q, .body = body, .len = strlen(body)};
        if (es_broker_publish(a->m->b, &msg, 1) != ES_OK) atomic_fetch_add(&a->m->errors, 1);
    }
    return NULL;
}

static void *mt_consumer(void *p)
{
    mt_arg *a = p;
    mt *m = a->m;
    es_consumer *c;
    if (es_consumer_open(m->b, m->q, 8, &c) != ES_OK) {
        atomic_fetch_add(&m->errors, 1);
        pthread_barrier_wait(&m->start);
        return NULL;
    }
    pthread_barrier_wait(&m->start);
    int64_t until = es_mono_ms() + 60000;
    while (atomic_load(&m->received) < MT_TOTAL && es_mono_ms() < until) {
        es_delivery d;
        int rc = es_consumer_next(c, 200, &d);
        if (rc == ES_ETIMEDOUT) continue;
        if (rc != ES_OK) {
            atomic_fetch_add(&m->errors, 1);
            break;
        }
        int n = body_int(&d);
        if (n < 0 || n >= MT_TOTAL)
            atomic_fetch_add(&m->errors, 1);
        else
            atomic_fetch_add(&m->seen[n], 1);
        if (es_consumer_ack(c, &d) != ES_OK) atomic_fetch_add(&m->errors, 1);
        es_delivery_finish(&d);
        atomic_fetch_add(&m->received, 1);
        atomic_fetch_add(&m->per_consumer[a->index], 1);
    }
    es_consumer_close(c);
    return NULL;
}

static void test_two_consumers_exactly_once(void **state)
{
    fx *f = *state;
    mt *m = calloc(1, sizeof *m);
    assert_non_null(m);
    m->b = f->b;
    m->q = f->q;
    pthread_barrier_init(&m->start, NULL, MT_PUBLISHERS + 2);
    pthread_t th[MT_PUBLISHERS + 2];
    mt_arg args[MT_PUBLISHERS + 2];
    for (int i = 0; i < 2; i++) {
        args[i] = (mt_arg){m, i};
        assert_int_equal(pthread_create(&th[i], NULL, mt_consumer, &args[i]), 0);
    }
    for (int i = 0; i < MT_PUBLISHERS; i++) {
        args[2 + i] = (mt_arg){m, i};
        assert_int_equal(pthread_create(&th[2 + i], NULL, mt_publisher, &args[2 + i]), 0);
    }
    for (int i = 0; i < MT_PUBLISHERS + 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&m->start);

    assert_int_equal(atomic_load(&m->errors), 0);
    assert_int_equal(atomic_load(&m->received), MT_TOTAL);
    for (int i = 0; i < MT_TOTAL; i++)
        if (atomic_load(&m->seen[i]) != 1) fail_msg("message %d seen %d times", i, m->seen[i]);
    assert_int_equal(m->per_consumer[0] + m->per_consumer[1], MT_TOTAL);
    expect_depth(f->b, f->q, 0, 0);
    free(m);
}

/* ---- crash durability */

#define CRASH_N 300
#define CRASH_K 5

/* The child: publish n, take k without ack, die by SIGKILL.  Exit codes
 * other than the signal say which step failed. */
static void crash_child(const char *q, int gofd)
{
    if (gofd >= 0) {
        char ch;
        if (read(gofd, &ch, 1) != 1) _exit(20);
    }
    es_broker *b;
    if (es_broker_open(g_url, &g_cfg, &b) != ES_OK) _exit(21);
    if (es_broker_declare(b, q) != ES_OK) _exit(22);
    for (int i = 0; i < CRASH_N; i += 50) {
        es_msg m[50];
        char bodies[50][16];
        for (int j = 0; j < 50; j++) {
            snprintf(bodies[j], sizeof bodies[j], "%d", i + j);
            m[j] = (es_msg){.queue = q, .body = bodies[j], .len = strlen(bodies[j])};
        }
        if (es_broker_publish(b, m, 50) != ES_OK) _exit(23);
    }
    es_consumer *c;
    if (es_consumer_open(b, q, CRASH_K, &c) != ES_OK) _exit(24);
    for (int i = 0; i < CRASH_K; i++) {
        es_delivery d;
        if (es_consumer_next(c, 5000, &d) != ES_OK) _exit(25);
    }
    kill(getpid(), SIGKILL);
    _exit(26);
}

static void wait_killed(pid_t pid)
{
    int status = 0;
    pid_t r;
    while ((r = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    assert_int_equal(r, pid);
    if (!WIFSIGNALED(status))
        fail_msg("crash child exited with %d instead of dying", WEXITSTATUS(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
}

/* All CRASH_N exactly once, the CRASH_K the child held marked redelivered. */
static void drain_after_crash(es_broker *b, const char *q, int first_timeout_ms)
{
    int seen[CRASH_N] = {0};
    int redelivered = 0;
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, 16, &c), ES_OK);
    for (int i = 0; i < CRASH_N; i++) {
        es_delivery d;
        take(c, i == 0 ? first_timeout_ms : 5000, &d);
        int n = body_int(&d);
        assert_true(n >= 0 && n < CRASH_N);
        seen[n]++;
        redelivered += d.redelivered;
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 500);
    es_consumer_close(c);
    for (int i = 0; i < CRASH_N; i++)
        if (seen[i] != 1) fail_msg("message %d seen %d times", i, seen[i]);
    assert_int_equal(redelivered, CRASH_K);
    expect_depth(b, q, 0, 0);
}

/* The child dies; a process opening the broker afterwards gets everything. */
static void test_crash_then_reopen(void **state)
{
    fx *f = *state;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) crash_child(f->q, -1);
    wait_killed(pid);
    f->b = open_broker();
    drain_after_crash(f->b, f->q, 5000);
}

/* The child dies while this process has the broker open: its leases come
 * back without anyone reopening (a periodic check, or the connection drop). */
static void test_crash_while_open(void **state)
{
    fx *f = *state;
    int go[2];
    assert_int_equal(pipe(go), 0);
    fflush(NULL);
    pid_t pid = fork(); /* before this process starts any broker thread */
    assert_true(pid >= 0);
    if (pid == 0) {
        close(go[1]);
        crash_child(f->q, go[0]);
    }
    close(go[0]);
    f->b = open_broker();
    assert_int_equal(write(go[1], "g", 1), 1);
    close(go[1]);
    wait_killed(pid);
    drain_after_crash(f->b, f->q, 10000);
}

/* A live process holding deliveries keeps them, however long it takes (no
 * time-based expiry); they come back only when it dies. */
static void test_live_holder_keeps_messages(void **state)
{
    enum { N = 20, K = 3 };
    fx *f = *state;
    int ready[2], hold[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(hold), 0);
    fflush(NULL);
    pid_t pid = fork(); /* before this process starts any broker thread */
    assert_true(pid >= 0);
    if (pid == 0) {
        close(ready[0]);
        close(hold[1]);
        es_broker *b;
        if (es_broker_open(g_url, &g_cfg, &b) != ES_OK || es_broker_declare(b, f->q) != ES_OK)
            _exit(21);
        for (int i = 0; i < N; i++) {
            char body[16];
            snprintf(body, sizeof body, "%d", i);
            es_msg m = {.queue = f->q, .body = body, .len = strlen(body)};
            if (es_broker_publish(b, &m, 1) != ES_OK) _exit(22);
        }
        es_consumer *c;
        if (es_consumer_open(b, f->q, K, &c) != ES_OK) _exit(23);
        for (int i = 0; i < K; i++) {
            es_delivery d;
            if (es_consumer_next(c, 5000, &d) != ES_OK) _exit(24);
        }
        if (write(ready[1], "r", 1) != 1) _exit(25);
        char ch;
        (void)!read(hold[0], &ch, 1); /* a very slow handler: until killed */
        _exit(26);
    }
    f->child = pid;
    close(ready[1]);
    close(hold[0]);
    char ch;
    assert_int_equal(read(ready[0], &ch, 1), 1);
    close(ready[0]);

    f->b = open_broker();
    es_sleep_ms(2500); /* more than one round of the dead-owner check */
    es_consumer *c;
    assert_int_equal(es_consumer_open(f->b, f->q, 32, &c), ES_OK);
    int seen[N] = {0};
    for (int i = 0; i < N - K; i++) {
        es_delivery d;
        take(c, 5000, &d);
        int n = body_int(&d);
        assert_true(n >= K && n < N); /* the child took the first K */
        seen[n]++;
        assert_false(d.redelivered);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 1500);
    /* AMQP 0-9-1 reports ready messages only: amqp:// counts as unacked just
     * what its own consumers hold, so the child's K are not seen from here. */
    expect_depth(f->b, f->q, 0, strncmp(g_url, "amqp:", 5) == 0 ? 0 : K);

    kill(pid, SIGKILL);
    close(hold[1]);
    wait_killed(pid);
    f->child = 0;
    for (int i = 0; i < K; i++) {
        es_delivery d;
        take(c, 10000, &d);
        int n = body_int(&d);
        assert_true(n >= 0 && n < K);
        seen[n]++;
        assert_true(d.redelivered);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    expect_empty(c, 300);
    es_consumer_close(c);
    for (int i = 0; i < N; i++)
        assert_int_equal(seen[i], 1);
}

/* ---- throughput (reported, not asserted) */

typedef struct tp {
    es_broker *b;
    const char *q;
    int per_thread;
    atomic_int errors;
} tp;

static void *tp_publisher(void *p)
{
    tp *t = p;
    for (int i = 0; i < t->per_thread; i++) {
        es_msg m = {.queue = t->q, .body = "{\"eventType\":\"view\",\"userId\":\"u1\"}", .len = 35};
        if (es_broker_publish(t->b, &m, 1) != ES_OK) atomic_fetch_add(&t->errors, 1);
    }
    return NULL;
}

static double consume_all(es_broker *b, const char *q, int n, int prefetch)
{
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, prefetch, &c), ES_OK);
    int64_t t0 = es_mono_us();
    for (int i = 0; i < n; i++) {
        es_delivery d;
        take(c, 5000, &d);
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    double rate = n / ((double)(es_mono_us() - t0) / 1e6);
    es_consumer_close(c);
    return rate;
}

static void test_throughput(void **state)
{
    fx *f = *state;
    int64_t want = 10000;
    const char *env = getenv("ESTEIRA_TEST_BROKER_BENCH_N");
    if (env) assert_int_equal(es_parse_i64(env, 8, 10000000, &want), ES_OK);
    int n = (int)want;
    n -= n % 8;

    tp t = {.b = f->b, .q = f->q, .per_thread = n};
    int64_t t0 = es_mono_us();
    tp_publisher(&t);
    double pub1 = n / ((double)(es_mono_us() - t0) / 1e6);
    double cons1 = consume_all(f->b, f->q, n, 1);

    t.per_thread = n / 8;
    pthread_t th[8];
    t0 = es_mono_us();
    for (int i = 0; i < 8; i++)
        assert_int_equal(pthread_create(&th[i], NULL, tp_publisher, &t), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    double pub8 = n / ((double)(es_mono_us() - t0) / 1e6);
    double cons64 = consume_all(f->b, f->q, n, 64);

    assert_int_equal(atomic_load(&t.errors), 0);
    expect_depth(f->b, f->q, 0, 0);
    printf("broker %s, %d msgs: publish 1 thread %.0f/s, 8 threads %.0f/s; "
           "consume+ack prefetch 1 %.0f/s, prefetch 64 %.0f/s\n",
           es_broker_name(f->b), n, pub1, pub8, cons1, cons64);
}

/* ------------------------------------------------------------------- main */

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_publish_next_ack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_body_headers_attempts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_next_times_out, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_depth, setup, teardown),
        cmocka_unit_test_setup_teardown(test_purge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_returns_unacked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefetch_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_keeps_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_publish_wakes_waiter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_consumers_exactly_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_then_reopen, setup_closed, teardown),
        cmocka_unit_test_setup_teardown(test_crash_while_open, setup_closed, teardown),
        cmocka_unit_test_setup_teardown(test_live_holder_keeps_messages, setup_closed, teardown),
        cmocka_unit_test_setup_teardown(test_throughput, setup, teardown),
    };

    /* Expected warnings (released leases of the killed child) stay quiet. */
    const char *lvl = getenv("ESTEIRA_LOG_LEVEL");
    es_log_set_level(lvl && es_log_parse_level(lvl) >= 0 ? es_log_parse_level(lvl) : ES_LOG_ERROR);
    g_cfg.queue_sync = 0;
    g_cfg.prefetch = 16;

    char *tmp = test_tmpdir("broker");
    if (!tmp) return 1;
    char def[600];
    snprintf(def, sizeof def, "local:%s/queue", tmp);
    char urls[MAX_URLS][512];
    int n = test_urls("ESTEIRA_TEST_BROKER_URLS", def, urls, MAX_URLS);
    int failed = 0;
    for (int i = 0; i < n; i++) {
        es_strlcpy(g_url, urls[i], sizeof g_url);
        /* The group is named by scheme only: URLs may carry passwords. */
        char name[64];
        snprintf(name, sizeof name, "broker %.*s", (int)strcspn(g_url, ":"), g_url);
        failed += _cmocka_run_group_tests(name, tests, ES_ARRAY_LEN(tests), NULL, NULL);
    }
    test_rmdir(tmp);
    return failed ? 1 : 0;
}
