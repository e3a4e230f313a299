/* test_cache_redis.c - what the cache contract suite cannot show about the
 * redis:// backend: URL parsing, passwords and databases, surviving a restart
 * of the server (commands and subscriptions), and the Redis-specific corners
 * of its semantics (glob characters in prefixes, exact counters near the
 * limits, no side effect of a refused hset).
 *
 * Each test starts its own redis-server (Debian's package) on a free port, so
 * that it can be stopped and started again; the tests are skipped when there
 * is no redis-server on this machine. */
#include "testutil.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "esteira/cache.h"
#include "esteira/conf.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define REDIS_SERVER "/usr/bin/redis-server"
#define PASSWORD     "s3cr%t pw" /* in URLs: s3cr%25t%20pw */
#define PASSWORD_URL "s3cr%25t%20pw"

typedef struct server {
    pid_t pid;
    int port;
    bool auth;
    char *dir;
} server;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static bool port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return false;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Starts redis-server on s->port (no persistence) and waits until it accepts. */
static void server_start(server *s)
{
    char port[16];
    snprintf(port, sizeof port, "%d", s->port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives the test */
        int null = open("/dev/null", O_RDWR);
        dup2(null, 1);
        dup2(null, 2);
        if (s->auth)
            execl(REDIS_SERVER, "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", s->dir, "--requirepass", PASSWORD, (char *)NULL);
        else
            execl(REDIS_SERVER, "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--dir", s->dir, (char *)NULL);
        _exit(127);
    }
    s->pid = pid;
    for (int i = 0; i < 500 && !port_open(s->port); i++)
        es_sleep_ms(10);
    assert_true(port_open(s->port));
}

static void server_stop(server *s)
{
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL); /* as a crash would: no goodbye to the clients */
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

static int setup(void **state)
{
    if (access(REDIS_SERVER, X_OK) != 0) {
        *state = NULL;
        return 0;
    }
    server *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->dir = test_tmpdir("redis");
    s->port = free_port();
    if (!s->dir || s->port <= 0) return -1;
    *state = s;
    return 0;
}

static int teardown(void **state)
{
    server *s = *state;
    if (!s) return 0;
    server_stop(s);
    test_rmdir(s->dir);
    free(s);
    return 0;
}

#define SERVER(state)                                                                              \
    server *srv = *(state);                                                                        \
    if (!srv) skip()

static void url_of(char *buf, size_t size, const server *s, const char *userinfo, int db)
{
    snprintf(buf, size, "redis://%s%s127.0.0.1:%d/%d", userinfo ? userinfo : "",
             userinfo ? "@" : "", s->port, db);
}

static es_cache *open_ok(const char *url)
{
    es_cache *c = NULL;
    assert_int_equal(es_cache_open(url, NULL, &c), ES_OK);
    assert_non_null(c);
    assert_string_equal(es_cache_name(c), "redis");
    return c;
}

/* ------------------------------------------------------------ URLs */

static void test_bad_urls(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "redis://",
        "redis:///0",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:65536/0",
        "redis://127.0.0.1:12x/0",
        "redis://127.0.0.1:-1/0",
        "redis://127.0.0.1:/0",
        "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/0?timeout=1",
        "redis://user@127.0.0.1:6379/0", /* a user and no password */
        "redis://:%zz@127.0.0.1:6379/0",
        "redis://:pw%2@127.0.0.1:6379/0",
        "redis://:pw%00x@127.0.0.1:6379/0",
        "redis://[::1/0",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        es_cache *c = (es_cache *)1;
        int rc = es_cache_open(bad[i], NULL, &c);
        if (rc != ES_EINVAL) fail_msg("%s: %d, not ES_EINVAL", bad[i], rc);
        assert_null(c);
    }
}

static void test_unreachable(void **state)
{
    (void)state;
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", free_port());
    es_cache *c = (es_cache *)1;
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_cache_open(url, NULL, &c), ES_EBACKEND);
    assert_null(c);
    assert_true(es_mono_ms() - t0 < 3000); /* a few quick retries, not a long hang */
}

/* ------------------------------------------------------------ passwords, databases */

static char *read_all(int fd)
{
    static char buf[65536];
    lseek(fd, 0, SEEK_SET);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    return buf;
}

static void test_password(void **state)
{
    SERVER(state);
    srv->auth = true;
    server_start(srv);
    char url[256];

    /* every message goes to a file, to check that no password is in it */
    char logpath[] = "/tmp/esteira-test-redis-log-XXXXXX";
    int logfd = mkstemp(logpath);
    assert_true(logfd >= 0);
    unlink(logpath);
    es_log_set_fd(logfd);
    es_log_set_level(ES_LOG_DEBUG);

    es_cache *c = (es_cache *)1;
    url_of(url, sizeof url, srv, NULL, 0);
    assert_int_equal(es_cache_open(url, NULL, &c), ES_EAUTH); /* NOAUTH */
    assert_null(c);
    url_of(url, sizeof url, srv, ":wrong-secret", 0);
    assert_int_equal(es_cache_open(url, NULL, &c), ES_EAUTH);
    url_of(url, sizeof url, srv, "nobody:wrong-secret", 0);
    assert_int_equal(es_cache_open(url, NULL, &c), ES_EAUTH);

    /* the password alone, or with the user (Redis 6 ACL); percent-encoded */
    url_of(url, sizeof url, srv, ":" PASSWORD_URL, 0);
    c = open_ok(url);
    assert_int_equal(es_cache_set(c, "k", "v", 1, 0), ES_OK);
    es_cache_close(c);
    url_of(url, sizeof url, srv, "default:" PASSWORD_URL, 0);
    c = open_ok(url);
    char *v = NULL;
    assert_int_equal(es_cache_get(c, "k", &v, NULL), ES_OK);
    assert_string_equal(v, "v");
    free(v);
    es_cache_close(c);

    es_log_set_fd(-1);
    es_log_set_level(ES_LOG_OFF);
    const char *log = read_all(logfd);
    close(logfd);
    assert_non_null(strstr(log, "credentials")); /* the refusals were logged ... */
    assert_null(strstr(log, "wrong-secret"));    /* ... without the password */
    assert_null(strstr(log, "s3cr"));
}

static void test_database(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 2);
    es_cache *c2 = open_ok(url);
    url_of(url, sizeof url, srv, NULL, 0);
    es_cache *c0 = open_ok(url);
    assert_int_equal(es_cache_set(c2, "where", "two", 3, 0), ES_OK);
    char *v = NULL;
    assert_int_equal(es_cache_get(c0, "where", &v, NULL), ES_ENOTFOUND);
    assert_int_equal(es_cache_get(c2, "where", &v, NULL), ES_OK);
    assert_string_equal(v, "two");
    free(v);
    es_cache_close(c0);
    es_cache_close(c2);

    /* a database the server does not have: refused at open */
    es_cache *c = (es_cache *)1;
    url_of(url, sizeof url, srv, NULL, 99);
    assert_int_equal(es_cache_open(url, NULL, &c), ES_EINVAL);
    assert_null(c);
}

/* ------------------------------------------------------------ restarts */

typedef struct inbox {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n;
    char last[64];
} inbox;

static void on_msg(void *arg, const char *channel, const char *msg, size_t len)
{
    (void)channel;
    inbox *b = arg;
    pthread_mutex_lock(&b->mu);
    b->n++;
    snprintf(b->last, sizeof b->last, "%.*s", (int)(len < 63 ? len : 63), msg);
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static int inbox_count(inbox *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->n;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* Publishes msg every 100 ms until the subscriber got it (10 s at most). */
static bool publish_until_heard(es_cache *c, const char *ch, inbox *b, const char *msg)
{
    for (int i = 0; i < 100; i++) {
        es_cache_publish(c, ch, msg, strlen(msg));
        es_sleep_ms(100);
        pthread_mutex_lock(&b->mu);
        bool heard = strcmp(b->last, msg) == 0;
        pthread_mutex_unlock(&b->mu);
        if (heard) return true;
    }
    return false;
}

static void *pinger(void *arg)
{
    for (int i = 0; i < 300; i++)
        if (es_cache_ping(arg) != ES_OK) fail_msg("ping %d failed", i);
    return NULL;
}

static void test_restart(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 1);
    es_cache *c = open_ok(url);
    inbox b = {.n = 0};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    es_subscription *s = NULL, *sp = NULL;
    assert_int_equal(es_cache_subscribe(c, "events", on_msg, &b, &s), ES_OK);
    assert_int_equal(es_cache_subscribe(c, "jobs.*", on_msg, &b, &sp), ES_OK);
    assert_int_equal(es_cache_lock(c, "lk", "me", 60000), ES_OK); /* the script is cached */
    /* several connections in the pool */
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&th[i], NULL, pinger, c), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_true(publish_until_heard(c, "events", &b, "before"));

    /* restarted (empty: no persistence) while every connection sat idle.
     * The very first commands work, even ones that are never retried: dead
     * idle connections are noticed before use.  Scripts are sent again (EVAL
     * after NOSCRIPT). */
    server_stop(srv);
    server_start(srv);
    int64_t out = 0;
    for (int i = 1; i <= 4; i++) {
        assert_int_equal(es_cache_incr(c, "n", 1, 0, &out), ES_OK);
        assert_int_equal(out, i);
    }
    assert_int_equal(es_cache_lock(c, "lk", "me", 60000), ES_OK);
    assert_int_equal(es_cache_lock(c, "lk", "other", 60000), ES_ECONFLICT);
    assert_int_equal(es_cache_unlock(c, "lk", "me"), ES_OK);

    /* down: commands fail, in bounded time */
    server_stop(srv);
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_cache_ping(c), ES_EBACKEND);
    assert_int_equal(es_cache_incr(c, "n", 1, 0, &out), ES_EBACKEND);
    assert_true(es_mono_ms() - t0 < 4000);
    server_start(srv);
    assert_int_equal(es_cache_incr(c, "n", 5, 0, &out), ES_OK);
    assert_int_equal(out, 5);
    assert_int_equal(es_cache_ping(c), ES_OK);

    /* the subscriber reconnected and subscribed again, channel and prefix */
    assert_true(publish_until_heard(c, "events", &b, "after"));
    assert_true(publish_until_heard(c, "jobs.42", &b, "after-prefix"));

    /* twice more, with the subscriber mid-backoff */
    for (int i = 0; i < 2; i++) {
        server_stop(srv);
        es_sleep_ms(300);
        server_start(srv);
        char m[16];
        snprintf(m, sizeof m, "again-%d", i);
        assert_true(publish_until_heard(c, "events", &b, m));
    }
    es_cache_unsubscribe(s);
    es_cache_unsubscribe(sp);
    int n = inbox_count(&b);
    assert_int_equal(es_cache_publish(c, "events", "late", 4), ES_OK);
    es_sleep_ms(100);
    assert_int_equal(inbox_count(&b), n);
    es_cache_close(c);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
}

/* Open while the server is down: refused; subscribe while it is down: the
 * subscription fails in bounded time instead of hanging. */
static void test_subscribe_while_down(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 0);
    es_cache *c = open_ok(url);
    server_stop(srv);
    inbox b = {.n = 0};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    es_subscription *s = (es_subscription *)1;
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_cache_subscribe(c, "x", on_msg, &b, &s), ES_EAGAIN);
    assert_null(s);
    assert_true(es_mono_ms() - t0 < 8000);
    /* and once it is back, subscribing works */
    server_start(srv);
    assert_int_equal(es_cache_subscribe(c, "x", on_msg, &b, &s), ES_OK);
    assert_true(publish_until_heard(c, "x", &b, "hello"));
    es_cache_unsubscribe(s);
    es_cache_close(c);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
}

/* ------------------------------------------------------------ semantics */

/* A prefix is a prefix: glob characters in it match only themselves. */
static void test_prefix_with_glob_characters(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 0);
    es_cache *c = open_ok(url);
    inbox g = {.n = 0}, bs = {.n = 0};
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    pthread_mutex_init(&bs.mu, NULL);
    pthread_cond_init(&bs.cv, NULL);
    es_subscription *sg = NULL, *sb = NULL;
    assert_int_equal(es_cache_subscribe(c, "a?b[x]*", on_msg, &g, &sg), ES_OK);
    assert_int_equal(es_cache_subscribe(c, "p\\q*", on_msg, &bs, &sb), ES_OK);
    assert_int_equal(es_cache_publish(c, "aZbx-1", "globbed", 7), ES_OK); /* not for g */
    assert_int_equal(es_cache_publish(c, "a?b[x]-2", "literal", 7), ES_OK);
    assert_int_equal(es_cache_publish(c, "a?b[x]", "empty-rest", 10), ES_OK);
    assert_int_equal(es_cache_publish(c, "pq1", "no-backslash", 12), ES_OK); /* not for bs */
    assert_int_equal(es_cache_publish(c, "p\\q1", "backslash", 9), ES_OK);
    for (int i = 0; i < 200 && (inbox_count(&g) < 2 || inbox_count(&bs) < 1); i++)
        es_sleep_ms(10);
    es_sleep_ms(100);
    assert_int_equal(inbox_count(&g), 2);
    assert_string_equal(g.last, "empty-rest");
    assert_int_equal(inbox_count(&bs), 1);
    assert_string_equal(bs.last, "backslash");
    es_cache_unsubscribe(sg);
    es_cache_unsubscribe(sb);
    es_cache_close(c);
    pthread_cond_destroy(&g.cv);
    pthread_mutex_destroy(&g.mu);
    pthread_cond_destroy(&bs.cv);
    pthread_mutex_destroy(&bs.mu);
}

static void test_counters_exact(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 0);
    es_cache *c = open_ok(url);
    char max1[32];
    int n = snprintf(max1, sizeof max1, "%lld", (long long)(INT64_MAX - 1));
    int64_t out = 0;
    /* with and without a TTL (two code paths): no rounding through a double */
    assert_int_equal(es_cache_set(c, "big", max1, (size_t)n, 0), ES_OK);
    assert_int_equal(es_cache_incr(c, "big", 1, 60000, &out), ES_OK);
    assert_true(out == INT64_MAX);
    assert_int_equal(es_cache_incr(c, "big", 1, 60000, &out), ES_EINVAL);
    assert_int_equal(es_cache_incr(c, "big", -3, 0, &out), ES_OK);
    assert_true(out == INT64_MAX - 3);
    assert_int_equal(es_cache_incr(c, "small", INT64_MIN, 1000, &out), ES_OK);
    assert_true(out == INT64_MIN);
    assert_int_equal(es_cache_hincr(c, "h", "f", INT64_MAX, &out), ES_OK);
    assert_true(out == INT64_MAX);
    assert_int_equal(es_cache_hincr(c, "h", "f", 1, &out), ES_EINVAL);
    es_cache_close(c);
}

static void test_hash_ttl_edges(void **state)
{
    SERVER(state);
    server_start(srv);
    char url[256];
    url_of(url, sizeof url, srv, NULL, 0);
    es_cache *c = open_ok(url);

    /* many fields with a TTL: past what one Lua unpack() takes */
    enum { N = 5000 };
    es_kv *f = calloc(N, sizeof *f);
    assert_non_null(f);
    for (int i = 0; i < N; i++) {
        char k[16], v[16];
        snprintf(k, sizeof k, "f%d", i);
        snprintf(v, sizeof v, "v%d", i);
        f[i].key = strdup(k);
        f[i].value = strdup(v);
    }
    assert_int_equal(es_cache_hset(c, "wide", f, N, 60000), ES_OK);
    es_kv *got = NULL;
    int n = 0;
    assert_int_equal(es_cache_hgetall(c, "wide", &got, &n), ES_OK);
    assert_int_equal(n, N);
    assert_string_equal(es_kv_get(got, n, "f4999"), "v4999");
    assert_string_equal(es_kv_get(got, n, "f0"), "v0");
    es_kv_free(got, n);
    es_kv_free(f, N);

    /* an hset refused on a string puts no TTL on it */
    es_kv a[] = {{"x", "y"}};
    assert_int_equal(es_cache_set(c, "str", "keep", 4, 0), ES_OK);
    assert_int_equal(es_cache_hset(c, "str", a, 1, 100), ES_EINVAL);
    assert_int_equal(es_cache_lock(c, "str", "keep2", 100), ES_ECONFLICT);
    es_sleep_ms(250);
    char *v = NULL;
    assert_int_equal(es_cache_get(c, "str", &v, NULL), ES_OK);
    assert_string_equal(v, "keep");
    free(v);

    /* a lock re-taken with TTL 0 holds for good */
    assert_int_equal(es_cache_lock(c, "lk", "a", 100), ES_OK);
    assert_int_equal(es_cache_lock(c, "lk", "a", 0), ES_OK);
    es_sleep_ms(250);
    assert_int_equal(es_cache_lock(c, "lk", "b", 100), ES_ECONFLICT);
    /* a lock key holding a hash is held by nobody we know */
    assert_int_equal(es_cache_hset(c, "hl", a, 1, 0), ES_OK);
    assert_int_equal(es_cache_lock(c, "hl", "a", 100), ES_ECONFLICT);
    assert_int_equal(es_cache_unlock(c, "hl", "a"), ES_ECONFLICT);
    es_cache_close(c);
}

int main(void)
{
    es_log_set_level(getenv("ESTEIRA_TEST_VERBOSE") ? ES_LOG_DEBUG : ES_LOG_OFF);
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_urls),
        cmocka_unit_test(test_unreachable),
        T(test_password),
        T(test_database),
        T(test_restart),
        T(test_subscribe_while_down),
        T(test_prefix_with_glob_characters),
        T(test_counters_exact),
        T(test_hash_ttl_edges),
    };
#undef T
    return cmocka_run_group_tests_name("cache redis", tests, NULL, NULL);
}
