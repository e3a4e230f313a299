/* test_broker_amqp.c - what the amqp:// broker does beyond the contract suite:
 * URL handling (no server needed), and, against the RabbitMQ named by
 * ESTEIRA_TEST_AMQP_URL (skipped when unset): the delay-queue topology,
 * queues that vanish under a publisher, other publishers' messages, long
 * delays, heartbeats during a long job, throughput with many publishers, and
 * (when ESTEIRA_TEST_AMQP_RESTART_CMD restarts that server) no confirmed
 * message lost across a restart.
 *
 * The checks of the server's state use rabbitmq-c directly. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "testutil.h"

#include "esteira/broker.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

static const char *g_url; /* NULL: no server */
static es_config g_cfg;

static void need_server(void)
{
    if (!g_url) skip();
}

/* g_url with extra options appended. */
static void url_with(char *out, size_t size, const char *opts)
{
    snprintf(out, size, "%s%s%s", g_url, strchr(g_url, '?') ? "&" : "?", opts);
}

static void make_queue(char *out, size_t size, const char *tag)
{
    static atomic_int seq;
    snprintf(out, size, "u%ld-%lld-%d.%s", (long)getpid(), (long long)es_now_ms(),
             atomic_fetch_add(&seq, 1), tag);
}

/* ------------------------------------------------ raw rabbitmq-c helpers */

static amqp_connection_state_t raw_open(void)
{
    char url[512];
    snprintf(url, sizeof url, "%s", g_url);
    url[strcspn(url, "?")] = '\0';
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    assert_int_equal(amqp_parse_url(url, &ci), AMQP_STATUS_OK);
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    assert_non_null(sock);
    assert_int_equal(amqp_socket_open(sock, ci.host, ci.port), AMQP_STATUS_OK);
    amqp_rpc_reply_t r =
        amqp_login(st, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, ci.user, ci.password);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(st, 1);
    assert_int_equal(amqp_get_rpc_reply(st).reply_type, AMQP_RESPONSE_NORMAL);
    return st;
}

static void raw_close(amqp_connection_state_t st)
{
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
}

/* After a channel error the server closes the channel: answer, reopen. */
static void raw_recover(amqp_connection_state_t st)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(st);
    assert_int_equal(r.reply_type, AMQP_RESPONSE_SERVER_EXCEPTION);
    assert_int_equal(r.reply.id, AMQP_CHANNEL_CLOSE_METHOD);
    amqp_channel_close_ok_t ok = {0};
    amqp_send_method(st, 1, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    amqp_channel_open(st, 1);
    assert_int_equal(amqp_get_rpc_reply(st).reply_type, AMQP_RESPONSE_NORMAL);
}

/* Ready messages of a queue, -1 when it does not exist. */
static int64_t raw_count(amqp_connection_state_t st, const char *q)
{
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(st, 1, amqp_cstring_bytes(q), 1, 0, 0, 0, amqp_empty_table);
    if (ok) return ok->message_count;
    raw_recover(st);
    return -1;
}

static void raw_delete(amqp_connection_state_t st, const char *q)
{
    amqp_queue_delete(st, 1, amqp_cstring_bytes(q), 0, 0);
    if (amqp_get_rpc_reply(st).reply_type != AMQP_RESPONSE_NORMAL) raw_recover(st);
}

/* Deletes the delay queues of q with a TTL in [lo, hi] ms. */
static void raw_delete_delays(amqp_connection_state_t st, const char *q, int lo, int hi)
{
    for (int ms = lo; ms <= hi; ms++) {
        char name[200];
        snprintf(name, sizeof name, "%s.delay.%d", q, ms);
        if (raw_count(st, name) >= 0) raw_delete(st, name);
    }
}

static void publish_one(es_broker *b, const char *q, const char *body, int64_t delay_ms)
{
    es_msg m = {.queue = q, .body = body, .len = strlen(body), .delay_ms = delay_ms};
    assert_int_equal(es_broker_publish(b, &m, 1), ES_OK);
}

static es_broker *open_broker(const char *url)
{
    es_broker *b = NULL;
    assert_int_equal(es_broker_open(url, &g_cfg, &b), ES_OK);
    return b;
}

static void expect_empty(es_consumer *c, int ms)
{
    es_delivery d;
    int rc = es_consumer_next(c, ms, &d);
    if (rc == ES_OK) es_delivery_finish(&d);
    assert_int_equal(rc, ES_ETIMEDOUT);
}

/* ----------------------------------------------------- without a server */

static void test_bad_urls(void **state)
{
    (void)state;
    const char *bad[] = {
        "amqp://h:99999/",
        "amqp://h/?heartbeat=soon",
        "amqp://h/?nosuch=1",
        "amqp://h/?publishers=0",
        "amqp://h/?publish_timeout=-1",
        "amqp://h/?heartbeat",
        "amqps://h/",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        es_broker *b = (es_broker *)1;
        assert_int_equal(es_broker_open(bad[i], &g_cfg, &b), ES_EINVAL);
        assert_null(b);
    }
}

/* Nothing listens on port 1: open fails fast, and the log names the
 * server without the password. */
static void test_unreachable_and_no_password_in_logs(void **state)
{
    (void)state;
    char path[] = "/tmp/esteira-amqp-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    int level = es_log_min_level;
    es_log_set_level(ES_LOG_DEBUG);
    es_log_set_fd(fd);
    es_broker *b = NULL;
    int64_t t0 = es_mono_ms();
    int rc =
        es_broker_open("amqp://someone:s3cr3t-pw@127.0.0.1:1/%2F?connect_timeout=1s", &g_cfg, &b);
    es_log_set_fd(-1);
    es_log_set_level(level);
    assert_int_equal(rc, ES_EAGAIN);
    assert_null(b);
    assert_true(es_mono_ms() - t0 < 3000);

    char text[8192];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    close(fd);
    assert_true(n > 0);
    text[n] = '\0';
    assert_null(strstr(text, "s3cr3t"));
    assert_non_null(strstr(text, "amqp://someone@127.0.0.1:1/%2F"));
}

/* -------------------------------------------------------- with a server */

/* The server's refusals keep their meaning: bad credentials, no such vhost. */
static void test_login_refused(void **state)
{
    (void)state;
    need_server();
    char url[600];
    snprintf(url, sizeof url, "%s", g_url);
    char *at = strchr(url, '@'), *slash = at ? strchr(at, '/') : NULL;
    assert_non_null(slash);
    char hostport[200];
    snprintf(hostport, sizeof hostport, "%.*s", (int)(slash - at - 1), at + 1);

    char bad[700];
    es_broker *b = NULL;
    snprintf(bad, sizeof bad, "amqp://guest:wrong-password@%s/%%2F", hostport);
    assert_int_equal(es_broker_open(bad, &g_cfg, &b), ES_EAUTH);
    assert_null(b);
    snprintf(bad, sizeof bad, "amqp://guest:guest@%s/no-such-vhost-here", hostport);
    assert_int_equal(es_broker_open(bad, &g_cfg, &b), ES_EFORBIDDEN);
    assert_null(b);
}

/* A delay is rounded up to a bucket at most 15 % longer; the delay queue
 * has exactly the arguments described in broker_amqp.c (a redeclaration
 * with them is accepted, any difference would be refused); the message
 * comes back to Q when it ends. */
static void test_delay_topology(void **state)
{
    (void)state;
    need_server();
    char q[160];
    make_queue(q, sizeof q, "delay");
    es_broker *b = open_broker(g_url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    amqp_connection_state_t st = raw_open();
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, 4, &c), ES_OK);

    const int64_t delays[] = {150, 400, 1000};
    for (size_t i = 0; i < ES_ARRAY_LEN(delays); i++) {
        int64_t delay = delays[i];
        int64_t t0 = es_mono_ms();
        publish_one(b, q, "later", delay);

        /* exactly one delay queue in [delay, delay * 1.15], holding it */
        int64_t found = -1;
        for (int64_t ms = delay; ms <= delay + (delay * 15 + 99) / 100; ms++) {
            char name[200];
            snprintf(name, sizeof name, "%s.delay.%lld", q, (long long)ms);
            int64_t n = raw_count(st, name);
            if (n < 0) continue;
            assert_int_equal(found, -1);
            found = ms;
            if (es_mono_ms() - t0 < delay - 50) assert_int_equal(n, 1);
        }
        assert_true(found >= delay);
        char name[200];
        snprintf(name, sizeof name, "%s.delay.%lld", q, (long long)found);
        amqp_table_entry_t e[4] = {
            {amqp_cstring_bytes("x-message-ttl"), {AMQP_FIELD_KIND_I64, {.i64 = found}}},
            {amqp_cstring_bytes("x-dead-letter-exchange"),
             {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("")}}},
            {amqp_cstring_bytes("x-dead-letter-routing-key"),
             {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes(q)}}},
            {amqp_cstring_bytes("x-expires"),
             {AMQP_FIELD_KIND_I64, {.i64 = found + 30LL * 60 * 1000}}},
        };
        amqp_table_t args = {4, e};
        assert_non_null(amqp_queue_declare(st, 1, amqp_cstring_bytes(name), 0, 1, 0, 0, args));

        es_delivery d;
        assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
        int64_t took = es_mono_ms() - t0;
        assert_true(took >= delay - 5);
        assert_true(took <= found + 400);
        assert_string_equal(d.body, "later");
        assert_int_equal(d.nheaders, 0); /* RabbitMQ's x-death & co. stay hidden */
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
        raw_delete(st, name);
    }
    es_consumer_close(c);
    raw_delete(st, q);
    char dq[200];
    snprintf(dq, sizeof dq, "%s.dead", q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* The queue is deleted behind the broker's back: the next publish comes
 * back (mandatory), is declared again and sent again - not silently lost. */
static void test_vanished_queue(void **state)
{
    (void)state;
    need_server();
    char q[160], dq[200];
    make_queue(q, sizeof q, "gone");
    snprintf(dq, sizeof dq, "%s.dead", q);
    es_broker *b = open_broker(g_url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    publish_one(b, q, "first", 0);
    amqp_connection_state_t st = raw_open();
    assert_int_equal(raw_count(st, q), 1);
    raw_delete(st, q);
    assert_int_equal(raw_count(st, q), -1);

    publish_one(b, q, "second", 0);
    assert_int_equal(raw_count(st, q), 1);
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, 1, &c), ES_OK);
    es_delivery d;
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "second");
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);

    /* deleted under a consumer: next() says so (not a timeout), and a
     * consumer opened again declares it again */
    raw_delete(st, q);
    int rc;
    int64_t until = es_mono_ms() + 3000;
    while ((rc = es_consumer_next(c, 100, &d)) == ES_ETIMEDOUT && es_mono_ms() < until) {
    }
    assert_int_not_equal(rc, ES_OK);
    assert_int_not_equal(rc, ES_ETIMEDOUT);
    es_consumer_close(c);
    assert_int_equal(es_consumer_open(b, q, 1, &c), ES_OK);
    assert_int_equal(raw_count(st, q), 0);
    publish_one(b, q, "third", 0);
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "third");
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    es_consumer_close(c);
    raw_delete(st, q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* Another client's message: numbers and booleans as text, no x-attempts
 * means 0, the timestamp property gives published_ms; and a not-before
 * still ahead keeps the message away until then, attempts unchanged. */
static void test_foreign_message_and_not_before(void **state)
{
    (void)state;
    need_server();
    char q[160], dq[200];
    make_queue(q, sizeof q, "foreign");
    snprintf(dq, sizeof dq, "%s.dead", q);
    es_broker *b = open_broker(g_url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    amqp_connection_state_t st = raw_open();

    amqp_table_entry_t e[3] = {
        {amqp_cstring_bytes("n"), {AMQP_FIELD_KIND_I32, {.i32 = 42}}},
        {amqp_cstring_bytes("ok"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        {amqp_cstring_bytes("s"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("v")}}},
    };
    amqp_basic_properties_t p = {0};
    p._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.headers = (amqp_table_t){3, e};
    p.timestamp = 1700000000;
    assert_int_equal(amqp_basic_publish(st, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0, &p,
                                        amqp_cstring_bytes("hi")),
                     AMQP_STATUS_OK);

    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, 2, &c), ES_OK);
    es_delivery d;
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "hi");
    assert_int_equal(d.attempts, 0);
    assert_int_equal(d.published_ms, 1700000000000LL);
    assert_int_equal(d.nheaders, 3);
    assert_string_equal(es_delivery_header(&d, "n"), "42");
    assert_string_equal(es_delivery_header(&d, "ok"), "true");
    assert_string_equal(es_delivery_header(&d, "s"), "v");
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);

    /* as if it had come out of the 24 h queue too early */
    amqp_table_entry_t nb[2] = {
        {amqp_cstring_bytes("x-not-before"), {AMQP_FIELD_KIND_I64, {.i64 = es_now_ms() + 700}}},
        {amqp_cstring_bytes("x-attempts"), {AMQP_FIELD_KIND_I64, {.i64 = 2}}},
    };
    p._flags = AMQP_BASIC_HEADERS_FLAG;
    p.headers = (amqp_table_t){2, nb};
    int64_t t0 = es_mono_ms();
    assert_int_equal(amqp_basic_publish(st, 1, amqp_empty_bytes, amqp_cstring_bytes(q), 0, 0, &p,
                                        amqp_cstring_bytes("wait")),
                     AMQP_STATUS_OK);
    expect_empty(c, 400);
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_true(es_mono_ms() - t0 >= 690);
    assert_string_equal(d.body, "wait");
    assert_int_equal(d.attempts, 2);
    assert_int_equal(d.nheaders, 0);
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    es_consumer_close(c);

    raw_delete_delays(st, q, 10, 1000); /* where it waited for the rest */
    raw_delete(st, q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* Over 24 h: it waits in the 24 h queue (with x-not-before), counts as
 * ready, and a purge of the queue takes it too. */
static void test_long_delay(void **state)
{
    (void)state;
    need_server();
    char q[160], dq[200], lq[200];
    make_queue(q, sizeof q, "long");
    snprintf(dq, sizeof dq, "%s.dead", q);
    snprintf(lq, sizeof lq, "%s.delay.86400000", q);
    es_broker *b = open_broker(g_url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    publish_one(b, q, "tomorrow+1h", 25LL * 3600 * 1000);
    amqp_connection_state_t st = raw_open();
    assert_int_equal(raw_count(st, lq), 1);
    int64_t ready = -1, unacked = -1;
    assert_int_equal(es_broker_depth(b, q, &ready, &unacked), ES_OK);
    assert_int_equal(ready, 1);
    assert_int_equal(unacked, 0);

    /* another broker (another process, say) finds it too */
    es_broker *other = open_broker(g_url);
    assert_int_equal(es_broker_depth(other, q, &ready, &unacked), ES_OK);
    assert_int_equal(ready, 1);
    assert_int_equal(es_broker_purge(other, q), ES_OK);
    assert_int_equal(raw_count(st, lq), 0);
    assert_int_equal(es_broker_depth(b, q, &ready, &unacked), ES_OK);
    assert_int_equal(ready, 0);
    es_broker_close(other);

    raw_delete(st, lq);
    raw_delete(st, q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* A handler busier than two heartbeat intervals keeps its delivery: the
 * keeper answers heartbeats, so the connection lives and the ack counts. */
static void test_long_job_keeps_connection(void **state)
{
    (void)state;
    need_server();
    char url[600], q[160], dq[200];
    url_with(url, sizeof url, "heartbeat=1");
    make_queue(q, sizeof q, "slow");
    snprintf(dq, sizeof dq, "%s.dead", q);
    es_broker *b = open_broker(url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    publish_one(b, q, "job", 0);
    publish_one(b, q, "next", 0);
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, 1, &c), ES_OK);
    es_delivery d;
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "job");
    es_sleep_ms(6000); /* the job; RabbitMQ gives up on a silent peer after ~2 s */
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "next");
    assert_false(d.redelivered);
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    expect_empty(c, 500);
    es_consumer_close(c);

    amqp_connection_state_t st = raw_open();
    assert_int_equal(raw_count(st, q), 0); /* "job" did not come back */
    raw_delete(st, q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* ---- many publishers: every message exactly once, rates printed */

#define MANY_THREADS 50

typedef struct many {
    es_broker *b;
    const char *q;
    int per_thread;
    int index;
    atomic_int *errors;
} many;

static void *many_publisher(void *p)
{
    many *m = p;
    for (int i = 0; i < m->per_thread; i++) {
        char body[24];
        snprintf(body, sizeof body, "%d", m->index * m->per_thread + i);
        es_msg msg = {.queue = m->q, .body = body, .len = strlen(body)};
        if (es_broker_publish(m->b, &msg, 1) != ES_OK) atomic_fetch_add(m->errors, 1);
    }
    return NULL;
}

static double drain_count(es_broker *b, const char *q, int n, int prefetch, int *seen, int range)
{
    es_consumer *c;
    assert_int_equal(es_consumer_open(b, q, prefetch, &c), ES_OK);
    int64_t t0 = es_mono_us();
    for (int i = 0; i < n; i++) {
        es_delivery d;
        assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
        int64_t v = -1;
        if (seen && es_parse_i64(d.body, 0, range - 1, &v) == ES_OK) seen[v]++;
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    double rate = n / ((double)(es_mono_us() - t0) / 1e6);
    expect_empty(c, 300);
    es_consumer_close(c);
    return rate;
}

static void test_many_publishers(void **state)
{
    (void)state;
    need_server();
    int64_t per = 200;
    const char *env = getenv("ESTEIRA_TEST_AMQP_BENCH_PER_THREAD");
    if (env) assert_int_equal(es_parse_i64(env, 1, 100000, &per), ES_OK);
    int total = MANY_THREADS * (int)per;
    char q[160], dq[200];
    make_queue(q, sizeof q, "many");
    snprintf(dq, sizeof dq, "%s.dead", q);
    es_broker *b = open_broker(g_url);
    assert_int_equal(es_broker_declare(b, q), ES_OK);
    atomic_int errors = 0;

    /* one thread, one message per call */
    many one = {.b = b, .q = q, .per_thread = total / 5, .index = 0, .errors = &errors};
    int64_t t0 = es_mono_us();
    many_publisher(&one);
    double pub1 = one.per_thread / ((double)(es_mono_us() - t0) / 1e6);
    drain_count(b, q, one.per_thread, 200, NULL, 0);

    /* 50 threads, one message per call */
    many args[MANY_THREADS];
    pthread_t th[MANY_THREADS];
    t0 = es_mono_us();
    for (int i = 0; i < MANY_THREADS; i++) {
        args[i] = (many){.b = b, .q = q, .per_thread = (int)per, .index = i, .errors = &errors};
        assert_int_equal(pthread_create(&th[i], NULL, many_publisher, &args[i]), 0);
    }
    for (int i = 0; i < MANY_THREADS; i++)
        pthread_join(th[i], NULL);
    double pub50 = total / ((double)(es_mono_us() - t0) / 1e6);
    assert_int_equal(atomic_load(&errors), 0);

    int *seen = calloc((size_t)total, sizeof *seen);
    assert_non_null(seen);
    double cons = drain_count(b, q, total, 200, seen, total);
    for (int i = 0; i < total; i++)
        if (seen[i] != 1) fail_msg("message %d seen %d times", i, seen[i]);
    free(seen);
    printf("amqp: publish 1 thread %.0f msg/s; %d threads x 1 msg/call %.0f msg/s; "
           "consume+ack prefetch 200 %.0f msg/s (%d msgs)\n",
           pub1, MANY_THREADS, pub50, cons, total);

    amqp_connection_state_t st = raw_open();
    raw_delete(st, q);
    raw_delete(st, dq);
    raw_close(st);
    es_broker_close(b);
}

/* ---- a server restart under load */

#define RS_THREADS 8
#define RS_MAX     200000

typedef struct rs {
    es_broker *b;
    const char *q;
    atomic_bool stop;
    atomic_int next_id;
    atomic_int ok, failed;
    unsigned char *confirmed; /* by id */
} rs;

static void *rs_publisher(void *p)
{
    rs *r = p;
    while (!atomic_load(&r->stop)) {
        int id = atomic_fetch_add(&r->next_id, 1);
        if (id >= RS_MAX) break;
        char body[24];
        snprintf(body, sizeof body, "%d", id);
        es_msg m = {.queue = r->q, .body = body, .len = strlen(body)};
        if (es_broker_publish(r->b, &m, 1) == ES_OK) {
            r->confirmed[id] = 1;
            atomic_fetch_add(&r->ok, 1);
        } else {
            atomic_fetch_add(&r->failed, 1);
        }
    }
    return NULL;
}

static void test_restart_loses_nothing(void **state)
{
    (void)state;
    need_server();
    const char *cmd = getenv("ESTEIRA_TEST_AMQP_RESTART_CMD");
    if (!cmd) skip();
    char q[160], cq[160];
    make_queue(q, sizeof q, "restart");
    make_queue(cq, sizeof cq, "restart-consumer");
    rs *r = calloc(1, sizeof *r);
    assert_non_null(r);
    r->confirmed = calloc(RS_MAX, 1);
    assert_non_null(r->confirmed);
    r->q = q;
    r->b = open_broker(g_url);
    assert_int_equal(es_broker_declare(r->b, q), ES_OK);
    assert_int_equal(es_broker_declare(r->b, cq), ES_OK);
    es_consumer *c;
    assert_int_equal(es_consumer_open(r->b, cq, 4, &c), ES_OK);

    pthread_t th[RS_THREADS];
    for (int i = 0; i < RS_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, rs_publisher, r), 0);
    es_sleep_ms(1500);
    int before = atomic_load(&r->ok);
    int64_t t0 = es_mono_ms();
    fprintf(stderr, "restarting the server: %s\n", cmd);
    assert_int_equal(system(cmd), 0);
    int64_t restart_ms = es_mono_ms() - t0;
    int at_restart = atomic_load(&r->ok);
    es_sleep_ms(3000);
    atomic_store(&r->stop, true);
    for (int i = 0; i < RS_THREADS; i++)
        pthread_join(th[i], NULL);
    int after = atomic_load(&r->ok) - at_restart;
    fprintf(stderr,
            "restart took %lld ms; confirmed %d before it, %d in all, %d after it; "
            "%d publish calls failed\n",
            (long long)restart_ms, before, atomic_load(&r->ok), after, atomic_load(&r->failed));
    assert_true(before > 0);
    assert_true(after > 0); /* publishing resumed by itself */

    /* the old consumer learns its connection is gone; a new one works */
    int rc;
    es_delivery d;
    int64_t until = es_mono_ms() + 5000;
    while ((rc = es_consumer_next(c, 200, &d)) == ES_ETIMEDOUT && es_mono_ms() < until) {
    }
    assert_int_not_equal(rc, ES_OK);
    assert_int_not_equal(rc, ES_ETIMEDOUT);
    es_consumer_close(c);
    assert_int_equal(es_consumer_open(r->b, cq, 4, &c), ES_OK);
    publish_one(r->b, cq, "after", 0);
    assert_int_equal(es_consumer_next(c, 5000, &d), ES_OK);
    assert_string_equal(d.body, "after");
    assert_int_equal(es_consumer_ack(c, &d), ES_OK);
    es_delivery_finish(&d);
    es_consumer_close(c);

    /* every confirmed message is there (a resent one may be there twice) */
    int n = atomic_load(&r->next_id);
    int *seen = calloc(RS_MAX, sizeof *seen);
    assert_non_null(seen);
    assert_int_equal(es_consumer_open(r->b, q, 200, &c), ES_OK);
    int got = 0, dups = 0;
    while (es_consumer_next(c, 2000, &d) == ES_OK) {
        int64_t v;
        assert_int_equal(es_parse_i64(d.body, 0, RS_MAX - 1, &v), ES_OK);
        if (seen[v]++) dups++;
        got++;
        assert_int_equal(es_consumer_ack(c, &d), ES_OK);
        es_delivery_finish(&d);
    }
    es_consumer_close(c);
    int lost = 0;
    for (int i = 0; i < n && i < RS_MAX; i++)
        if (r->confirmed[i] && !seen[i]) lost++;
    fprintf(stderr, "drained %d messages (%d duplicates); confirmed but lost: %d\n", got, dups,
            lost);
    assert_int_equal(lost, 0);

    amqp_connection_state_t st = raw_open();
    const char *names[] = {q, cq};
    for (int i = 0; i < 2; i++) {
        char dq[200];
        snprintf(dq, sizeof dq, "%s.dead", names[i]);
        raw_delete(st, names[i]);
        raw_delete(st, dq);
    }
    raw_close(st);
    es_broker_close(r->b);
    free(seen);
    free(r->confirmed);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_unreachable_and_no_password_in_logs),
        cmocka_unit_test(test_login_refused),
        cmocka_unit_test(test_delay_topology),
        cmocka_unit_test(test_vanished_queue),
        cmocka_unit_test(test_foreign_message_and_not_before),
        cmocka_unit_test(test_long_delay),
        cmocka_unit_test(test_long_job_keeps_connection),
        cmocka_unit_test(test_many_publishers),
        cmocka_unit_test(test_restart_loses_nothing),
    };
    const char *lvl = getenv("ESTEIRA_LOG_LEVEL");
    es_log_set_level(lvl && es_log_parse_level(lvl) >= 0 ? es_log_parse_level(lvl) : ES_LOG_OFF);
    const char *url = getenv("ESTEIRA_TEST_AMQP_URL");
    g_url = url && *url ? url : NULL;
    g_cfg.prefetch = 16;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
