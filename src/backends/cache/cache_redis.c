/* cache_redis.c - the cache on a Redis server (URL
 * redis://[[user]:password@]host[:port][/db], hiredis 0.14).
 *
 * Commands go over a small pool of blocking connections (POOL_MAX): a caller
 * takes an idle one, or opens a new one while there are fewer than POOL_MAX,
 * or waits for one to come back.  A connection that failed (c->err set) is
 * never returned to the pool: it is closed, and the next caller opens a fresh
 * one, retrying a few times with a short backoff.  An idle connection whose
 * socket became readable was closed by the server (a restart, a timeout): it
 * is dropped before use instead of failing the command sent on it.  A command
 * that is safe to repeat (GET, SET, DEL, HSET, HGETALL, lock, PING) is retried
 * once on a fresh connection when the first one broke under it; INCR, HINCRBY,
 * PUBLISH and unlock are not, as the server may have run them already.
 *
 * Semantics follow the local backend (cache_local.c), so that code written
 * against one runs on the other:
 *  - incr with a TTL runs MULTI / SET key 0 PX ttl NX / INCRBY / EXEC in one
 *    round trip: the TTL is set only when the key is created, and the result
 *    is exact (a Lua script would pass it through a double);
 *  - hset with a TTL is a Lua script (HSET then PEXPIRE, one round trip): in a
 *    MULTI, a PEXPIRE after an HSET refused with WRONGTYPE would still run and
 *    put a TTL on some other kind of key;
 *  - locks are plain strings holding the owner (SET NX PX); re-locking by the
 *    owner extends and unlocking compares and deletes, both in Lua so that the
 *    check and the change are one step;
 *  - WRONGTYPE, "not an integer" and overflow answers become ES_EINVAL.
 * Scripts go by EVALSHA, falling back to EVAL (which caches them again) when
 * the server does not know them, as after a restart.
 *
 * Publish/subscribe uses one more connection per cache, owned by a reader
 * thread, and a dispatcher thread that calls the callbacks.  The reader sends
 * a SUBSCRIBE (PSUBSCRIBE for a channel ending in '*') for every new
 * subscription, even when the channel is already subscribed, and the
 * subscription starts receiving at the server's confirmation: Redis answers
 * on a connection in order, so every message read before the confirmation was
 * published before the subscription existed.  Messages go through a bounded
 * queue (QUEUE_MAX): a slow callback delays notifications, and when the queue
 * is full the oldest messages are dropped, but the reader keeps draining the
 * socket so that Redis never disconnects us for a full output buffer.  When the
 * connection breaks the reader reconnects (with backoff) and subscribes again;
 * messages published in between are lost, as they are for any Redis client.
 * Unsubscribing waits for a running callback of that subscription; a callback
 * may unsubscribe its own subscription.  Subscriptions must be ended before the
 * cache is closed. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/evp.h>

#include "esteira/cache.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "cache"

/* Bounds and timings.  The cache holds small things (status records,
 * counters, locks, notifications): these are far above normal use. */
#define REDIS_DEFAULT_PORT   6379
#define POOL_MAX             16    /* command connections per cache */
#define POOL_WAIT_MS         10000 /* a caller waits this long for a busy pool */
#define CONNECT_TIMEOUT_MS   2000
#define COMMAND_TIMEOUT_MS   5000 /* a reply slower than this breaks the connection */
#define CONNECT_ATTEMPTS     4    /* per command; backoff 50, 100, 200 ms in between */
#define BACKOFF_FIRST_MS     50
#define SUB_BACKOFF_MAX_MS   1000  /* the subscriber retries forever, at most this far apart */
#define SUBSCRIBE_TIMEOUT_MS 5000  /* for the server to confirm a subscription */
#define PING_INTERVAL_MS     15000 /* an idle subscriber connection is checked this often */
#define QUEUE_MAX            10000 /* messages waiting for the dispatcher */
#define QUEUE_MAX_BYTES      ((size_t)16 << 20)
#define WARN_INTERVAL_MS     10000 /* repeated warnings at most this often */
#define URL_MAX              1024

/* ------------------------------------------------------------ scripts */

typedef struct script {
    const char *src;
    char sha[41];
} script;

/* KEYS[1] lock key; ARGV owner, ttl ms (0 = none).  1 when held by owner. */
static const char LOCK_LUA[] =
    "local ok\n"
    "if ARGV[2] == '0' then ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')\n"
    "else ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) end\n"
    "if ok then return 1 end\n"
    "if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return 0 end\n"
    "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
    "if ARGV[2] == '0' then redis.call('PERSIST', KEYS[1])\n"
    "else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end\n"
    "return 1\n";

/* KEYS[1] lock key; ARGV owner.  1 when it was held by owner (and is gone). */
static const char UNLOCK_LUA[] =
    "if redis.call('TYPE', KEYS[1]).ok == 'string' and redis.call('GET', KEYS[1]) == ARGV[1] then\n"
    "  redis.call('DEL', KEYS[1])\n"
    "  return 1\n"
    "end\n"
    "return 0\n";

/* KEYS[1] hash; ARGV ttl ms, then field, value pairs.  HSET goes in chunks
 * of 100 pairs: unpack() of thousands of values would overflow Lua's stack.
 * The first HSET fails with WRONGTYPE before anything changed. */
static const char HSET_TTL_LUA[] =
    "for i = 2, #ARGV, 200 do\n"
    "  redis.call('HSET', KEYS[1], unpack(ARGV, i, math.min(i + 199, #ARGV)))\n"
    "end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "return 1\n";

/* ------------------------------------------------------------ pub/sub state */

enum sub_state {
    SUB_SENDING, /* its SUBSCRIBE is still to be sent */
    SUB_WAITING, /* sent, confirmation not read yet */
    SUB_ACTIVE
};

struct rcache;

typedef struct rsub {
    struct rsub *next;
    struct rcache *r;
    uint64_t id;
    es_cache_msg_fn fn;
    void *arg;
    uint64_t since; /* the last message sequence read before its confirmation */
    enum sub_state state;
    bool resend;     /* active, on a new connection: subscribe again */
    bool dead;       /* unsubscribed: no further callback */
    bool self_freed; /* unsubscribed from its own callback: the dispatcher frees it */
    bool pattern;    /* PSUBSCRIBE with a glob (the channel ended in '*') */
    char rkey[];     /* the channel, or the glob sent to Redis */
} rsub;

/* A channel or pattern nobody may listen to any more: UNSUBSCRIBE it unless a
 * subscription for it came up in the meantime. */
typedef struct unsub {
    struct unsub *next;
    bool pattern;
    char rkey[];
} unsub;

typedef struct event {
    struct event *next;
    uint64_t seq;
    bool pattern; /* from a pmessage */
    size_t len;   /* of the message */
    size_t size;  /* accounted against QUEUE_MAX_BYTES */
    char *key;    /* the channel (message) or the pattern (pmessage) */
    char *channel;
    char data[]; /* message NUL, then channel NUL, then pattern NUL */
} event;

typedef struct pubsub {
    pthread_mutex_t mu;
    pthread_cond_t wake;  /* dispatcher: a message, or stop */
    pthread_cond_t idle;  /* unsubscribers: a callback returned */
    pthread_cond_t ready; /* subscribers: a confirmation arrived */
    bool started, stopping;
    pthread_t reader, dispatcher;
    int efd; /* wakes the reader out of poll() */

    rsub *subs; /* in subscription order */
    rsub *running;
    uint64_t next_id;
    unsub *unsubs;

    /* ids of the subscriptions whose (P)SUBSCRIBE was sent, in order (0 for a
     * resubscription after reconnecting): confirmations come back in order. */
    uint64_t *await;
    size_t await_head, await_len, await_cap;

    event *head, *tail;
    size_t qlen, qbytes;
    uint64_t seq;
    uint64_t drops;
    int64_t drop_warned_ms;
} pubsub;

/* ------------------------------------------------------------ the cache */

typedef struct pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    redisContext *idle[POOL_MAX];
    int nidle;
    int total; /* idle + in use + being opened */
} pool;

typedef struct rcache {
    char *host;
    int port;
    int db;
    char *user;      /* NULL: AUTH with the password alone */
    char *password;  /* NULL: no AUTH */
    char where[300]; /* host:port/db for messages: never the password */

    pool pool;
    pubsub ps;
    script lock_s, unlock_s, hset_s;

    pthread_mutex_t log_mu; /* for the two fields below */
    bool down;
    int64_t down_warned_ms;
} rcache;

/* ------------------------------------------------------------ helpers */

static struct timeval tv_ms(int64_t ms)
{
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static char *dup_bytes(const char *s, size_t len)
{
    char *d = malloc(len + 1);
    if (!d) return NULL;
    memcpy(d, s, len);
    d[len] = 0;
    return d;
}

/* Connection failures come in bursts (every thread sees the server go away at
 * once): one warning, repeated at most every WARN_INTERVAL_MS while it lasts,
 * and one line when the server is back. */
static void note_down(rcache *r, const char *what, const char *why)
{
    pthread_mutex_lock(&r->log_mu);
    int64_t now = es_mono_ms();
    bool say = !r->down || now - r->down_warned_ms >= WARN_INTERVAL_MS;
    r->down = true;
    if (say) r->down_warned_ms = now;
    pthread_mutex_unlock(&r->log_mu);
    if (say) es_warn(COMP, "redis at %s: %s: %s", r->where, what, why);
}

static void note_up(rcache *r)
{
    pthread_mutex_lock(&r->log_mu);
    bool was = r->down;
    r->down = false;
    pthread_mutex_unlock(&r->log_mu);
    if (was) es_info(COMP, "redis at %s is reachable again", r->where);
}

/* Redis' error answers, as ours.  Type and number errors are the caller's
 * (the local backend answers them ES_EINVAL too): logged at debug only. */
static int reply_error(rcache *r, const redisReply *rep, const char *what)
{
    const char *m = rep->str ? rep->str : "";
    if (strncmp(m, "WRONGTYPE", 9) == 0 || strstr(m, "not an integer") ||
        strstr(m, "would overflow")) {
        es_debug(COMP, "redis at %s refused %s: %s", r->where, what, m);
        return ES_EINVAL;
    }
    int rc = ES_EBACKEND;
    if (strncmp(m, "NOAUTH", 6) == 0 || strncmp(m, "WRONGPASS", 9) == 0 ||
        strncmp(m, "NOPERM", 6) == 0 || strstr(m, "password"))
        rc = ES_EAUTH;
    else if (strncmp(m, "OOM", 3) == 0)
        rc = ES_ELIMIT;
    else if (strncmp(m, "LOADING", 7) == 0 || strncmp(m, "BUSY", 4) == 0 ||
             strncmp(m, "TRYAGAIN", 8) == 0 || strncmp(m, "MASTERDOWN", 10) == 0 ||
             strncmp(m, "READONLY", 8) == 0)
        rc = ES_EAGAIN;
    es_warn(COMP, "redis at %s refused %s: %s", r->where, what, m);
    return rc;
}

/* ES_OK when rep is of the wanted type (NIL is accepted when nil_ok). */
static int reply_want(rcache *r, const redisReply *rep, int type, bool nil_ok, const char *what)
{
    if (rep->type == type || (nil_ok && rep->type == REDIS_REPLY_NIL)) return ES_OK;
    if (rep->type == REDIS_REPLY_ERROR) return reply_error(r, rep, what);
    es_error(COMP, "redis at %s: unexpected reply of type %d to %s", r->where, rep->type, what);
    return ES_EBACKEND;
}

/* ------------------------------------------------------------ URL */

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..n) into a new string; NULL when malformed or out of
 * memory (*bad tells which). */
static char *url_decode(const char *s, size_t n, bool *bad)
{
    char *out = malloc(n + 1);
    if (!out) return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[j++] = s[i];
            continue;
        }
        if (i + 2 >= n) { /* fewer than two hex digits follow */
            free(out);
            *bad = true;
            return NULL;
        }
        int h = hexval(s[i + 1]), l = hexval(s[i + 2]);
        if (h < 0 || l < 0 || (h == 0 && l == 0)) {
            free(out);
            *bad = true;
            return NULL;
        }
        out[j++] = (char)(h * 16 + l);
        i += 2;
    }
    out[j] = 0;
    return out;
}

static int parse_url(rcache *r, const char *url)
{
    static const char scheme[] = "redis://";
    const char *p = url + strlen(scheme);
    bool bad = false;
    if (strlen(url) > URL_MAX) goto invalid;
    size_t alen = strcspn(p, "/?#");
    const char *auth_end = p + alen;
    if (*auth_end == '?' || *auth_end == '#') goto invalid; /* no options are known */

    /* userinfo: the part of the authority before its last '@' */
    const char *at = NULL;
    for (const char *q = p; q < auth_end; q++)
        if (*q == '@') at = q;
    const char *hp = p;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (!colon) {
            es_error(COMP, "redis URL: a user without a password; write "
                           "redis://:password@host or redis://user:password@host");
            return ES_EINVAL;
        }
        if (colon > p) {
            r->user = url_decode(p, (size_t)(colon - p), &bad);
            if (!r->user) goto decode_failed;
        }
        r->password = url_decode(colon + 1, (size_t)(at - colon - 1), &bad);
        if (!r->password) goto decode_failed;
        hp = at + 1;
    }

    /* host, [v6] or a name, then :port */
    const char *host_end, *port_at;
    if (*hp == '[') {
        const char *close = memchr(hp, ']', (size_t)(auth_end - hp));
        if (!close) goto invalid;
        r->host = dup_bytes(hp + 1, (size_t)(close - hp - 1));
        host_end = close + 1;
        port_at = host_end;
    } else {
        const char *colon = memchr(hp, ':', (size_t)(auth_end - hp));
        host_end = colon ? colon : auth_end;
        r->host = dup_bytes(hp, (size_t)(host_end - hp));
        port_at = host_end;
    }
    if (!r->host) return ES_ENOMEM;
    if (!*r->host) goto invalid;
    r->port = REDIS_DEFAULT_PORT;
    if (port_at < auth_end) {
        if (*port_at != ':') goto invalid;
        char num[8];
        size_t n = (size_t)(auth_end - port_at - 1);
        if (n == 0 || n >= sizeof num) goto invalid;
        memcpy(num, port_at + 1, n);
        num[n] = 0;
        int64_t port;
        if (es_parse_i64(num, 1, 65535, &port) != ES_OK || num[0] == '+' || num[0] == '-')
            goto invalid;
        r->port = (int)port;
    }

    /* /db */
    r->db = 0;
    if (*auth_end == '/' && auth_end[1]) {
        int64_t db;
        const char *d = auth_end + 1;
        if (*d < '0' || *d > '9' || es_parse_i64(d, 0, 1 << 20, &db) != ES_OK) goto invalid;
        r->db = (int)db;
    }
    snprintf(r->where, sizeof r->where, "%s%s%s:%d/%d", strchr(r->host, ':') ? "[" : "", r->host,
             strchr(r->host, ':') ? "]" : "", r->port, r->db);
    return ES_OK;

decode_failed:
    if (!bad) return ES_ENOMEM;
invalid:
    /* The URL may hold a password: say what is expected, not what was given. */
    es_error(COMP, "invalid redis URL: expected redis://[[user]:password@]host[:port][/db]");
    return ES_EINVAL;
}

/* ------------------------------------------------------------ connections */

/* One attempt: connect, AUTH, SELECT.  The password is never logged. */
static int conn_open(rcache *r, bool select_db, redisContext **out)
{
    *out = NULL;
    redisContext *c = redisConnectWithTimeout(r->host, r->port, tv_ms(CONNECT_TIMEOUT_MS));
    if (!c) return ES_ENOMEM;
    if (c->err) {
        note_down(r, "cannot connect", c->errstr);
        redisFree(c);
        return ES_EBACKEND;
    }
    if (redisSetTimeout(c, tv_ms(COMMAND_TIMEOUT_MS)) != REDIS_OK ||
        redisEnableKeepAlive(c) != REDIS_OK) {
        note_down(r, "cannot set socket options", c->errstr);
        redisFree(c);
        return ES_EBACKEND;
    }
    int rc = ES_OK;
    redisReply *rep = NULL;
    if (r->password) {
        const char *argv[3] = {"AUTH"};
        size_t lens[3] = {4};
        int argc = 1;
        if (r->user) {
            argv[argc] = r->user;
            lens[argc++] = strlen(r->user);
        }
        argv[argc] = r->password;
        lens[argc++] = strlen(r->password);
        rep = redisCommandArgv(c, argc, argv, lens);
        if (!rep) goto io_failed;
        if (rep->type == REDIS_REPLY_ERROR) {
            es_error(COMP, "redis at %s refused the credentials: %s", r->where, rep->str);
            rc = ES_EAUTH;
            goto free_reply;
        }
        freeReplyObject(rep);
        rep = NULL;
    }
    if (select_db && r->db != 0) {
        rep = redisCommand(c, "SELECT %d", r->db);
        if (!rep) goto io_failed;
        if (rep->type == REDIS_REPLY_ERROR) {
            es_error(COMP, "redis at %s: cannot select database %d: %s", r->where, r->db, rep->str);
            rc = ES_EINVAL;
            goto free_reply;
        }
        freeReplyObject(rep);
    }
    note_up(r);
    *out = c;
    return ES_OK;

io_failed:
    note_down(r, "connection failed during setup", c->errstr);
    rc = ES_EBACKEND;
free_reply:
    if (rep) freeReplyObject(rep);
    redisFree(c);
    return rc;
}

/* A few attempts with a short backoff: long enough to ride over a restart of
 * the server, short enough that a caller is not held up for long when it is
 * really down. */
static int conn_dial(rcache *r, redisContext **out)
{
    int64_t backoff = BACKOFF_FIRST_MS;
    int rc = ES_EBACKEND;
    for (int i = 0; i < CONNECT_ATTEMPTS; i++) {
        if (i > 0) {
            es_sleep_ms(backoff);
            backoff *= 2;
        }
        rc = conn_open(r, true, out);
        if (rc != ES_EBACKEND) break; /* done, or refused for a reason a retry won't change */
    }
    return rc;
}

/* An idle connection has nothing to read: when its socket is readable, the
 * server closed it (or sent something nobody asked for). */
static bool conn_alive(redisContext *c)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    return poll(&pfd, 1, 0) == 0;
}

static int pool_get(rcache *r, redisContext **out)
{
    pool *p = &r->pool;
    struct timespec until;
    es_deadline(&until, POOL_WAIT_MS);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->nidle > 0) {
            redisContext *c = p->idle[--p->nidle];
            pthread_mutex_unlock(&p->mu);
            if (conn_alive(c)) {
                *out = c;
                return ES_OK;
            }
            redisFree(c);
            es_debug(COMP, "redis at %s closed an idle connection", r->where);
            pthread_mutex_lock(&p->mu);
            p->total--;
            continue;
        }
        if (p->total < POOL_MAX) {
            p->total++;
            pthread_mutex_unlock(&p->mu);
            int rc = conn_dial(r, out);
            if (rc != ES_OK) {
                pthread_mutex_lock(&p->mu);
                p->total--;
                pthread_cond_signal(&p->cv);
                pthread_mutex_unlock(&p->mu);
            }
            return rc;
        }
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT) {
            pthread_mutex_unlock(&p->mu);
            es_warn(COMP, "redis at %s: all %d connections busy for %d ms", r->where, POOL_MAX,
                    POOL_WAIT_MS);
            return ES_ETIMEDOUT;
        }
    }
}

/* Back to the pool, or closed when it failed (its stream is out of step). */
static void pool_put(rcache *r, redisContext *c, bool broken)
{
    pool *p = &r->pool;
    if (broken || c->err) {
        redisFree(c);
        c = NULL;
    }
    pthread_mutex_lock(&p->mu);
    if (c)
        p->idle[p->nidle++] = c;
    else
        p->total--;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ------------------------------------------------------------ commands */

typedef struct cmd {
    int argc;
    const char **argv;
    const size_t *lens;
} cmd;

/* Sends n commands in one write and reads their n replies.  On ES_OK every
 * replies[i] is set (error replies included: check them); on failure none is.
 * retry: the commands may run twice (see the top of the file). */
static int run(rcache *r, const cmd *cmds, int n, redisReply **replies, bool retry,
               const char *what)
{
    for (int attempt = 0;; attempt++) {
        redisContext *c;
        int rc = pool_get(r, &c);
        if (rc != ES_OK) return rc;
        int i = 0, got = 0;
        while (i < n &&
               redisAppendCommandArgv(c, cmds[i].argc, cmds[i].argv, cmds[i].lens) == REDIS_OK)
            i++;
        if (i == n) {
            void *rep;
            while (got < n && redisGetReply(c, &rep) == REDIS_OK)
                replies[got++] = rep;
        }
        if (got == n) {
            pool_put(r, c, false);
            return ES_OK;
        }
        for (int j = 0; j < got; j++)
            freeReplyObject(replies[j]);
        rc = c->err == REDIS_ERR_OOM ? ES_ENOMEM : ES_EBACKEND;
        char why[128];
        snprintf(why, sizeof why, "%s", c->err ? c->errstr : "failed");
        pool_put(r, c, true);
        if (rc == ES_ENOMEM || !retry || attempt > 0) {
            note_down(r, what, why);
            return rc;
        }
        es_debug(COMP, "redis at %s: %s: %s; retrying on a new connection", r->where, what, why);
    }
}

static int run1(rcache *r, int argc, const char **argv, const size_t *lens, bool retry,
                redisReply **rep, const char *what)
{
    cmd c = {argc, argv, lens};
    return run(r, &c, 1, rep, retry, what);
}

/* EVALSHA, or EVAL when the server does not have the script (yet, or any
 * more).  argv[0] and argv[1] are filled in here. */
static int eval(rcache *r, const script *s, int argc, const char **argv, size_t *lens, bool retry,
                redisReply **rep, const char *what)
{
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = s->sha;
    lens[1] = 40;
    int rc = run1(r, argc, argv, lens, retry, rep, what);
    if (rc != ES_OK) return rc;
    if ((*rep)->type != REDIS_REPLY_ERROR || strncmp((*rep)->str, "NOSCRIPT", 8) != 0) return ES_OK;
    freeReplyObject(*rep);
    *rep = NULL;
    argv[0] = "EVAL";
    lens[0] = 4;
    argv[1] = s->src;
    lens[1] = strlen(s->src);
    return run1(r, argc, argv, lens, retry, rep, what);
}

static void script_init(script *s, const char *src)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    s->src = src;
    if (EVP_Digest(src, strlen(src), md, &n, EVP_sha1(), NULL) != 1 || n != 20) {
        /* No SHA-1: EVALSHA of this will fail with NOSCRIPT and fall back to EVAL. */
        memset(s->sha, '0', 40);
        s->sha[40] = 0;
        return;
    }
    es_hex(md, 20, s->sha);
}

/* ------------------------------------------------------------ strings, counters */

static int redis_get(void *ctx, const char *key, char **val, size_t *len)
{
    rcache *r = ctx;
    const char *argv[] = {"GET", key};
    size_t lens[] = {3, strlen(key)};
    redisReply *rep;
    int rc = run1(r, 2, argv, lens, true, &rep, "GET");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_STRING, true, "GET");
    if (rc != ES_OK) goto free_reply;
    if (rep->type == REDIS_REPLY_NIL) {
        rc = ES_ENOTFOUND;
        goto free_reply;
    }
    *val = dup_bytes(rep->str, rep->len);
    if (!*val) {
        rc = ES_ENOMEM;
        goto free_reply;
    }
    *len = rep->len;
free_reply:
    freeReplyObject(rep);
    return rc;
}

static int redis_set(void *ctx, const char *key, const char *val, size_t len, int64_t ttl_ms)
{
    rcache *r = ctx;
    char ttl[24];
    int tn = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    /* Without PX, SET drops any TTL the key had: the same as the local backend. */
    const char *argv[] = {"SET", key, val, "PX", ttl};
    size_t lens[] = {3, strlen(key), len, 2, (size_t)tn};
    redisReply *rep;
    int rc = run1(r, ttl_ms > 0 ? 5 : 3, argv, lens, true, &rep, "SET");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_STATUS, false, "SET");
    freeReplyObject(rep);
    return rc;
}

/* Deleting an absent key is not an error: the caller wanted it gone. */
static int redis_del(void *ctx, const char *key)
{
    rcache *r = ctx;
    const char *argv[] = {"DEL", key};
    size_t lens[] = {3, strlen(key)};
    redisReply *rep;
    int rc = run1(r, 2, argv, lens, true, &rep, "DEL");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_INTEGER, false, "DEL");
    freeReplyObject(rep);
    return rc;
}

static int redis_incr(void *ctx, const char *key, int64_t by, int64_t ttl_ms, int64_t *out)
{
    rcache *r = ctx;
    char num[24], ttl[24];
    size_t klen = strlen(key);
    int nn = snprintf(num, sizeof num, "%lld", (long long)by);
    const char *incr_argv[] = {"INCRBY", key, num};
    size_t incr_lens[] = {6, klen, (size_t)nn};
    redisReply *rep[4] = {NULL};
    const redisReply *res; /* INCRBY's answer */
    int rc;
    if (ttl_ms == 0) {
        rc = run1(r, 3, incr_argv, incr_lens, false, &rep[0], "INCRBY");
        if (rc != ES_OK) return rc;
        res = rep[0];
    } else {
        /* Created at 0 with the TTL when absent (NX), then counted: one
         * round trip, and an existing key keeps its TTL. */
        int tn = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
        const char *multi_argv[] = {"MULTI"}, *exec_argv[] = {"EXEC"};
        size_t multi_lens[] = {5}, exec_lens[] = {4};
        const char *set_argv[] = {"SET", key, "0", "PX", ttl, "NX"};
        size_t set_lens[] = {3, klen, 1, 2, (size_t)tn, 2};
        cmd cmds[] = {
            {1, multi_argv, multi_lens},
            {6, set_argv, set_lens},
            {3, incr_argv, incr_lens},
            {1, exec_argv, exec_lens},
        };
        rc = run(r, cmds, 4, rep, false, "INCRBY");
        if (rc != ES_OK) return rc;
        rc = reply_want(r, rep[3], REDIS_REPLY_ARRAY, false, "EXEC");
        if (rc != ES_OK) goto free_replies;
        if (rep[3]->elements != 2) {
            es_error(COMP, "redis at %s: EXEC answered %zu replies, not 2", r->where,
                     rep[3]->elements);
            rc = ES_EBACKEND;
            goto free_replies;
        }
        res = rep[3]->element[1];
    }
    rc = reply_want(r, res, REDIS_REPLY_INTEGER, false, "INCRBY");
    if (rc == ES_OK) *out = res->integer;
free_replies:
    for (int i = 0; i < 4; i++)
        if (rep[i]) freeReplyObject(rep[i]);
    return rc;
}

/* ------------------------------------------------------------ hashes */

static int redis_hset(void *ctx, const char *key, const es_kv *fields, int n, int64_t ttl_ms)
{
    rcache *r = ctx;
    /* HSET key f v ...  or  EVALSHA sha 1 key ttl f v ... */
    int head = ttl_ms > 0 ? 5 : 2;
    int argc = head + 2 * n;
    const char **argv = malloc((size_t)argc * sizeof *argv);
    size_t *lens = malloc((size_t)argc * sizeof *lens);
    int rc = ES_ENOMEM;
    if (!argv || !lens) goto free_args;
    for (int i = 0; i < n; i++) {
        argv[head + 2 * i] = fields[i].key;
        lens[head + 2 * i] = strlen(fields[i].key);
        argv[head + 2 * i + 1] = fields[i].value;
        lens[head + 2 * i + 1] = strlen(fields[i].value);
    }
    redisReply *rep;
    if (ttl_ms > 0) {
        char ttl[24];
        int tn = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
        argv[2] = "1";
        lens[2] = 1;
        argv[3] = key;
        lens[3] = strlen(key);
        argv[4] = ttl;
        lens[4] = (size_t)tn;
        rc = eval(r, &r->hset_s, argc, argv, lens, true, &rep, "HSET");
    } else {
        argv[0] = "HSET";
        lens[0] = 4;
        argv[1] = key;
        lens[1] = strlen(key);
        rc = run1(r, argc, argv, lens, true, &rep, "HSET");
    }
    if (rc != ES_OK) goto free_args;
    rc = reply_want(r, rep, REDIS_REPLY_INTEGER, false, "HSET");
    freeReplyObject(rep);
free_args:
    free(argv);
    free(lens);
    return rc;
}

static int redis_hgetall(void *ctx, const char *key, es_kv **fields, int *n)
{
    rcache *r = ctx;
    const char *argv[] = {"HGETALL", key};
    size_t lens[] = {7, strlen(key)};
    redisReply *rep;
    int rc = run1(r, 2, argv, lens, true, &rep, "HGETALL");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_ARRAY, false, "HGETALL");
    if (rc != ES_OK) goto free_reply;
    if (rep->elements == 0) { /* no hash has no fields: it is absent */
        rc = ES_ENOTFOUND;
        goto free_reply;
    }
    if (rep->elements % 2 != 0 || rep->elements / 2 > (size_t)INT32_MAX) {
        es_error(COMP, "redis at %s: HGETALL answered %zu elements", r->where, rep->elements);
        rc = ES_EBACKEND;
        goto free_reply;
    }
    int cnt = (int)(rep->elements / 2);
    es_kv *kv = calloc((size_t)cnt, sizeof *kv);
    rc = ES_ENOMEM;
    if (!kv) goto free_reply;
    for (int i = 0; i < cnt; i++) {
        const redisReply *k = rep->element[2 * i], *v = rep->element[2 * i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) {
            es_error(COMP, "redis at %s: HGETALL answered a field of type %d", r->where,
                     k->type != REDIS_REPLY_STRING ? k->type : v->type);
            rc = ES_EBACKEND;
            goto free_kv;
        }
        kv[i].key = dup_bytes(k->str, k->len);
        kv[i].value = dup_bytes(v->str, v->len);
        if (!kv[i].key || !kv[i].value) goto free_kv;
    }
    *fields = kv;
    *n = cnt;
    rc = ES_OK;
    goto free_reply;

free_kv:
    es_kv_free(kv, cnt);
free_reply:
    freeReplyObject(rep);
    return rc;
}

static int redis_hincr(void *ctx, const char *key, const char *field, int64_t by, int64_t *out)
{
    rcache *r = ctx;
    char num[24];
    int nn = snprintf(num, sizeof num, "%lld", (long long)by);
    const char *argv[] = {"HINCRBY", key, field, num};
    size_t lens[] = {7, strlen(key), strlen(field), (size_t)nn};
    redisReply *rep;
    int rc = run1(r, 4, argv, lens, false, &rep, "HINCRBY");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_INTEGER, false, "HINCRBY");
    if (rc == ES_OK) *out = rep->integer;
    freeReplyObject(rep);
    return rc;
}

/* ------------------------------------------------------------ locks */

/* Runs a lock script; its answer 1 is ES_OK, 0 ES_ECONFLICT. */
static int lock_script(rcache *r, const script *s, int argc, const char **argv, size_t *lens,
                       bool retry, const char *what)
{
    redisReply *rep;
    int rc = eval(r, s, argc, argv, lens, retry, &rep, what);
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_INTEGER, false, what);
    if (rc == ES_OK && rep->integer != 1) rc = ES_ECONFLICT;
    freeReplyObject(rep);
    return rc;
}

static int redis_lock(void *ctx, const char *key, const char *owner, int64_t ttl_ms)
{
    rcache *r = ctx;
    char ttl[24];
    int tn = snprintf(ttl, sizeof ttl, "%lld", (long long)ttl_ms);
    const char *argv[] = {NULL, NULL, "1", key, owner, ttl};
    size_t lens[] = {0, 0, 1, strlen(key), strlen(owner), (size_t)tn};
    /* Repeating it is harmless: the second run finds the lock ours and extends it. */
    return lock_script(r, &r->lock_s, 6, argv, lens, true, "lock");
}

static int redis_unlock(void *ctx, const char *key, const char *owner)
{
    rcache *r = ctx;
    const char *argv[] = {NULL, NULL, "1", key, owner};
    size_t lens[] = {0, 0, 1, strlen(key), strlen(owner)};
    return lock_script(r, &r->unlock_s, 5, argv, lens, false, "unlock");
}

/* ------------------------------------------------------------ publish */

static int redis_publish(void *ctx, const char *channel, const char *msg, size_t len)
{
    rcache *r = ctx;
    const char *argv[] = {"PUBLISH", channel, msg};
    size_t lens[] = {7, strlen(channel), len};
    redisReply *rep;
    int rc = run1(r, 3, argv, lens, false, &rep, "PUBLISH");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_INTEGER, false, "PUBLISH");
    freeReplyObject(rep);
    return rc;
}

static int redis_ping(void *ctx)
{
    rcache *r = ctx;
    const char *argv[] = {"PING"};
    size_t lens[] = {4};
    redisReply *rep;
    int rc = run1(r, 1, argv, lens, true, &rep, "PING");
    if (rc != ES_OK) return rc;
    rc = reply_want(r, rep, REDIS_REPLY_STATUS, false, "PING");
    freeReplyObject(rep);
    return rc;
}

/* ------------------------------------------------------------ subscriber: queue
 * These run with ps->mu held. */

static void kick(pubsub *ps)
{
    uint64_t one = 1;
    /* Non-blocking; a full counter (never in practice) is already a wake-up. */
    if (write(ps->efd, &one, sizeof one) < 0) {
    }
}

static bool sub_live(const rsub *s)
{
    return !s->dead;
}

static event *queue_pop(pubsub *ps)
{
    event *ev = ps->head;
    if (!ev) return NULL;
    ps->head = ev->next;
    if (!ps->head) ps->tail = NULL;
    ps->qlen--;
    ps->qbytes -= ev->size;
    return ev;
}

static void queue_message(rcache *r, bool pattern, const redisReply *key, const redisReply *channel,
                          const redisReply *msg)
{
    pubsub *ps = &r->ps;
    if (key->type != REDIS_REPLY_STRING || channel->type != REDIS_REPLY_STRING ||
        msg->type != REDIS_REPLY_STRING)
        return;
    /* Nobody (any more) listening: Redis may still send until our UNSUBSCRIBE lands. */
    bool any = false;
    for (rsub *s = ps->subs; s && !any; s = s->next)
        any = sub_live(s) && s->state == SUB_ACTIVE && s->pattern == pattern &&
              strcmp(s->rkey, key->str) == 0;
    if (!any) return;
    size_t size = sizeof(event) + msg->len + channel->len + key->len + 3;
    if (size > QUEUE_MAX_BYTES) {
        es_warn(COMP, "a message of %zu bytes on '%s' exceeds the queue bound (%zu bytes): dropped",
                msg->len, channel->str, QUEUE_MAX_BYTES);
        return;
    }
    event *ev = malloc(size);
    if (!ev) {
        es_warn(COMP, "out of memory: a message on '%s' dropped", channel->str);
        return;
    }
    ev->next = NULL;
    ev->pattern = pattern;
    ev->len = msg->len;
    ev->size = size;
    memcpy(ev->data, msg->str, msg->len);
    ev->data[msg->len] = 0;
    ev->channel = ev->data + msg->len + 1;
    memcpy(ev->channel, channel->str, channel->len + 1);
    ev->key = ev->channel + channel->len + 1;
    memcpy(ev->key, key->str, key->len + 1);

    uint64_t dropped = 0;
    while (ps->head && (ps->qlen >= QUEUE_MAX || ps->qbytes + size > QUEUE_MAX_BYTES)) {
        free(queue_pop(ps));
        dropped++;
    }
    if (dropped) {
        ps->drops += dropped;
        int64_t now = es_mono_ms();
        if (ps->drop_warned_ms == 0 || now - ps->drop_warned_ms >= WARN_INTERVAL_MS) {
            ps->drop_warned_ms = now;
            es_warn(COMP,
                    "notification queue full (%d messages): dropped the oldest, %llu dropped so "
                    "far; a subscriber is too slow",
                    QUEUE_MAX, (unsigned long long)ps->drops);
        }
    }
    ev->seq = ++ps->seq;
    if (ps->tail)
        ps->tail->next = ev;
    else
        ps->head = ev;
    ps->tail = ev;
    ps->qlen++;
    ps->qbytes += size;
    pthread_cond_signal(&ps->wake);
}

static int await_push(pubsub *ps, uint64_t id)
{
    if (ps->await_head + ps->await_len == ps->await_cap) {
        if (ps->await_head > 0) {
            memmove(ps->await, ps->await + ps->await_head, ps->await_len * sizeof *ps->await);
            ps->await_head = 0;
        } else {
            size_t cap = ps->await_cap ? ps->await_cap * 2 : 16;
            uint64_t *a = realloc(ps->await, cap * sizeof *a);
            if (!a) return ES_ENOMEM;
            ps->await = a;
            ps->await_cap = cap;
        }
    }
    ps->await[ps->await_head + ps->await_len++] = id;
    return ES_OK;
}

static uint64_t await_pop(pubsub *ps)
{
    if (ps->await_len == 0) return 0;
    uint64_t id = ps->await[ps->await_head++];
    if (--ps->await_len == 0) ps->await_head = 0;
    return id;
}

/* A confirmation of the next (P)SUBSCRIBE we sent: its subscription starts
 * here, after every message read so far. */
static void confirmed(pubsub *ps)
{
    uint64_t id = await_pop(ps);
    if (id == 0) return;
    for (rsub *s = ps->subs; s; s = s->next) {
        if (s->id != id) continue;
        if (s->state == SUB_WAITING) {
            s->state = SUB_ACTIVE;
            s->since = ps->seq;
            pthread_cond_broadcast(&ps->ready);
        }
        return;
    }
}

/* One reply on the subscriber connection.  ES_OK, or a failure that calls
 * for a new connection. */
static int handle_push(rcache *r, const redisReply *rep)
{
    pubsub *ps = &r->ps;
    if (rep->type == REDIS_REPLY_ERROR) {
        es_error(COMP, "redis at %s: subscriber connection: %s", r->where, rep->str);
        return ES_EBACKEND;
    }
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
        rep->element[0]->type != REDIS_REPLY_STRING)
        return ES_OK; /* +PONG outside subscribe mode */
    const char *kind = rep->element[0]->str;
    redisReply **e = rep->element;
    if (strcmp(kind, "message") == 0 && rep->elements == 3)
        queue_message(r, false, e[1], e[1], e[2]);
    else if (strcmp(kind, "pmessage") == 0 && rep->elements == 4)
        queue_message(r, true, e[1], e[2], e[3]);
    else if (strcmp(kind, "subscribe") == 0 || strcmp(kind, "psubscribe") == 0)
        confirmed(ps);
    /* unsubscribe, punsubscribe, pong: nothing to do */
    return ES_OK;
}

/* Appends what the subscriptions need to the connection's output buffer. */
static int queue_commands(rcache *r, redisContext *c)
{
    pubsub *ps = &r->ps;
    for (rsub *s = ps->subs; s; s = s->next) {
        if (!sub_live(s) || (s->state != SUB_SENDING && !s->resend)) continue;
        const char *argv[] = {s->pattern ? "PSUBSCRIBE" : "SUBSCRIBE", s->rkey};
        size_t lens[] = {strlen(argv[0]), strlen(s->rkey)};
        if (redisAppendCommandArgv(c, 2, argv, lens) != REDIS_OK) return ES_ENOMEM;
        if (await_push(ps, s->resend ? 0 : s->id) != ES_OK) return ES_ENOMEM;
        if (s->state == SUB_SENDING) s->state = SUB_WAITING;
        s->resend = false;
    }
    while (ps->unsubs) {
        unsub *u = ps->unsubs;
        bool wanted = false;
        for (rsub *s = ps->subs; s && !wanted; s = s->next)
            wanted = sub_live(s) && s->pattern == u->pattern && strcmp(s->rkey, u->rkey) == 0;
        if (!wanted) {
            const char *argv[] = {u->pattern ? "PUNSUBSCRIBE" : "UNSUBSCRIBE", u->rkey};
            size_t lens[] = {strlen(argv[0]), strlen(u->rkey)};
            if (redisAppendCommandArgv(c, 2, argv, lens) != REDIS_OK) return ES_ENOMEM;
        }
        ps->unsubs = u->next;
        free(u);
    }
    return ES_OK;
}

/* A new connection knows of no subscription: every live one is sent again.
 * The ones not confirmed yet wait for the new confirmation. */
static void reset_for_connection(pubsub *ps)
{
    ps->await_len = 0;
    ps->await_head = 0;
    while (ps->unsubs) {
        unsub *u = ps->unsubs;
        ps->unsubs = u->next;
        free(u);
    }
    for (rsub *s = ps->subs; s; s = s->next) {
        if (!sub_live(s)) continue;
        if (s->state == SUB_ACTIVE)
            s->resend = true;
        else
            s->state = SUB_SENDING;
    }
}

static void drain_efd(int efd)
{
    uint64_t v;
    if (read(efd, &v, sizeof v) < 0) {
    }
}

/* Waits up to ms for a kick (close, or a subscription to send). */
static void wait_kick(pubsub *ps, int64_t ms)
{
    struct pollfd pfd = {.fd = ps->efd, .events = POLLIN};
    if (poll(&pfd, 1, (int)ms) > 0) drain_efd(ps->efd);
}

static int flush_output(redisContext *c)
{
    int done = 0;
    while (!done)
        if (redisBufferWrite(c, &done) != REDIS_OK) return ES_EBACKEND;
    return ES_OK;
}

/* The subscriber connection: reads messages into the queue, sends
 * (un)subscriptions, reconnects. */
static void *reader_main(void *arg)
{
    rcache *r = arg;
    pubsub *ps = &r->ps;
    redisContext *c = NULL;
    int64_t backoff = BACKOFF_FIRST_MS, last_rx = 0;
    bool pinged = false, lost = false;

    pthread_mutex_lock(&ps->mu);
    while (!ps->stopping) {
        if (!c) {
            pthread_mutex_unlock(&ps->mu);
            int rc = conn_open(r, false, &c);
            if (rc != ES_OK) {
                wait_kick(ps, backoff);
                backoff = backoff * 2 > SUB_BACKOFF_MAX_MS ? SUB_BACKOFF_MAX_MS : backoff * 2;
                pthread_mutex_lock(&ps->mu);
                continue;
            }
            backoff = BACKOFF_FIRST_MS;
            last_rx = es_mono_ms();
            pinged = false;
            pthread_mutex_lock(&ps->mu);
            reset_for_connection(ps);
            if (lost) es_info(COMP, "subscriber connection to redis at %s is back", r->where);
        }
        int rc = queue_commands(r, c);
        pthread_mutex_unlock(&ps->mu);

        const char *why = "out of memory";
        if (rc != ES_OK) goto broken;
        why = "write failed";
        if (flush_output(c) != ES_OK) goto broken;
        struct pollfd pfd[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = ps->efd, .events = POLLIN}};
        int n = poll(pfd, 2, PING_INTERVAL_MS);
        if (n < 0 && errno != EINTR) {
            why = "poll failed";
            goto broken;
        }
        if (pfd[1].revents) drain_efd(ps->efd);
        if (n == 0) {
            /* Quiet for a while: make sure the server is still there. */
            why = "no answer to PING";
            if (pinged && es_mono_ms() - last_rx >= 2 * PING_INTERVAL_MS) goto broken;
            if (redisAppendCommand(c, "PING") != REDIS_OK) goto broken;
            pinged = true;
        }
        if (pfd[0].revents) {
            why = "read failed";
            if (redisBufferRead(c) != REDIS_OK) goto broken;
            last_rx = es_mono_ms();
            pinged = false;
            pthread_mutex_lock(&ps->mu);
            void *rep = NULL;
            int prc = ES_OK;
            while (prc == ES_OK && redisGetReplyFromReader(c, &rep) == REDIS_OK && rep) {
                prc = handle_push(r, rep);
                freeReplyObject(rep);
                rep = NULL;
            }
            pthread_mutex_unlock(&ps->mu);
            why = "protocol error";
            if (prc != ES_OK || c->err) goto broken;
        }
        pthread_mutex_lock(&ps->mu);
        continue;

    broken:
        pthread_mutex_lock(&ps->mu);
        if (!ps->stopping) {
            note_down(r, "subscriber connection lost", c->err ? c->errstr : why);
            lost = true;
        }
        redisFree(c);
        c = NULL;
    }
    pthread_mutex_unlock(&ps->mu);
    if (c) redisFree(c);
    return NULL;
}

/* ------------------------------------------------------------ subscriber: dispatch */

static void subs_unlink(pubsub *ps, rsub *s)
{
    for (rsub **p = &ps->subs; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            return;
        }
    }
}

/* Calls every subscriber of ev.  Runs with ps->mu held; drops it around each
 * callback, during which `running` keeps that subscription (and so our place
 * in the list) from being unlinked. */
static void dispatch(pubsub *ps, const event *ev)
{
    rsub *s = ps->subs;
    while (s) {
        if (s->dead || s->state != SUB_ACTIVE || ev->seq <= s->since || s->pattern != ev->pattern ||
            strcmp(s->rkey, ev->key) != 0) {
            s = s->next;
            continue;
        }
        ps->running = s;
        pthread_mutex_unlock(&ps->mu);
        s->fn(s->arg, ev->channel, ev->data, ev->len);
        pthread_mutex_lock(&ps->mu);
        ps->running = NULL;
        rsub *next = s->next;
        if (s->self_freed) {
            subs_unlink(ps, s);
            free(s);
        }
        pthread_cond_broadcast(&ps->idle);
        s = next;
    }
}

static void *dispatcher_main(void *arg)
{
    pubsub *ps = arg;
    pthread_mutex_lock(&ps->mu);
    while (!ps->stopping) {
        event *ev = queue_pop(ps);
        if (!ev) {
            pthread_cond_wait(&ps->wake, &ps->mu);
            continue;
        }
        dispatch(ps, ev);
        free(ev);
    }
    pthread_mutex_unlock(&ps->mu);
    return NULL;
}

/* Started with the first subscription: a cache that never subscribes holds no
 * extra connection or thread.  Runs with ps->mu held. */
static int pubsub_start(rcache *r)
{
    pubsub *ps = &r->ps;
    ps->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ps->efd < 0) {
        es_error(COMP, "eventfd: %s", strerror(errno));
        return ES_EIO;
    }
    int err = pthread_create(&ps->dispatcher, NULL, dispatcher_main, ps);
    if (err != 0) goto close_efd;
    err = pthread_create(&ps->reader, NULL, reader_main, r);
    if (err != 0) goto stop_dispatcher;
    pthread_setname_np(ps->dispatcher, "es-redis-disp");
    pthread_setname_np(ps->reader, "es-redis-sub");
    ps->started = true;
    return ES_OK;

stop_dispatcher:
    ps->stopping = true;
    pthread_cond_broadcast(&ps->wake);
    pthread_mutex_unlock(&ps->mu);
    pthread_join(ps->dispatcher, NULL);
    pthread_mutex_lock(&ps->mu);
    ps->stopping = false;
close_efd:
    es_error(COMP, "cannot start the redis subscriber threads: %s", strerror(err));
    close(ps->efd);
    ps->efd = -1;
    return ES_EAGAIN;
}

/* Asks the reader to UNSUBSCRIBE what s listened to, unless someone else
 * still does by then.  Runs with ps->mu held. */
static void queue_unsub(pubsub *ps, const rsub *s)
{
    size_t n = strlen(s->rkey);
    unsub *u = malloc(sizeof *u + n + 1);
    if (!u) return; /* stays subscribed: its messages are dropped unread */
    u->pattern = s->pattern;
    memcpy(u->rkey, s->rkey, n + 1);
    u->next = ps->unsubs;
    ps->unsubs = u;
    kick(ps);
}

static int redis_subscribe(void *ctx, const char *channel, es_cache_msg_fn fn, void *arg,
                           void **out)
{
    rcache *r = ctx;
    pubsub *ps = &r->ps;
    size_t clen = strlen(channel);
    bool pattern = channel[clen - 1] == '*';
    /* A prefix becomes a glob: its own glob characters are escaped. */
    rsub *s = calloc(1, sizeof *s + (pattern ? 2 * clen + 1 : clen + 1));
    if (!s) return ES_ENOMEM;
    s->r = r;
    s->fn = fn;
    s->arg = arg;
    s->pattern = pattern;
    if (pattern) {
        size_t j = 0;
        for (size_t i = 0; i + 1 < clen; i++) {
            if (strchr("*?[]\\", channel[i])) s->rkey[j++] = '\\';
            s->rkey[j++] = channel[i];
        }
        s->rkey[j++] = '*';
        s->rkey[j] = 0;
    } else {
        memcpy(s->rkey, channel, clen + 1);
    }

    pthread_mutex_lock(&ps->mu);
    int rc = ES_OK;
    if (!ps->started && (rc = pubsub_start(r)) != ES_OK) goto unlock;
    s->id = ++ps->next_id;
    s->state = SUB_SENDING;
    rsub **p = &ps->subs;
    while (*p)
        p = &(*p)->next;
    *p = s;
    kick(ps);
    struct timespec until;
    es_deadline(&until, SUBSCRIBE_TIMEOUT_MS);
    while (s->state != SUB_ACTIVE && !ps->stopping)
        if (pthread_cond_timedwait(&ps->ready, &ps->mu, &until) == ETIMEDOUT) break;
    if (s->state != SUB_ACTIVE) {
        subs_unlink(ps, s);
        if (s->state == SUB_WAITING) queue_unsub(ps, s);
        es_warn(COMP, "redis at %s did not confirm a subscription within %d ms", r->where,
                SUBSCRIBE_TIMEOUT_MS);
        rc = ES_EAGAIN;
    }
unlock:
    pthread_mutex_unlock(&ps->mu);
    if (rc != ES_OK) {
        free(s);
        return rc;
    }
    *out = s;
    return ES_OK;
}

static void redis_unsubscribe(void *sub)
{
    rsub *s = sub;
    pubsub *ps = &s->r->ps;
    pthread_mutex_lock(&ps->mu);
    s->dead = true;
    queue_unsub(ps, s);
    if (ps->running == s && pthread_equal(pthread_self(), ps->dispatcher)) {
        /* From inside its own callback: waiting would wait for ourselves.
         * The dispatcher frees it once the callback returns. */
        s->self_freed = true;
        pthread_mutex_unlock(&ps->mu);
        return;
    }
    /* A callback in progress finishes before we return; `dead` keeps the
     * dispatcher from starting another. */
    while (ps->running == s)
        pthread_cond_wait(&ps->idle, &ps->mu);
    subs_unlink(ps, s);
    pthread_mutex_unlock(&ps->mu);
    free(s);
}

/* ------------------------------------------------------------ lifecycle */

static void redis_close(void *ctx)
{
    rcache *r = ctx;
    if (!r) return;
    pubsub *ps = &r->ps;
    pool *p = &r->pool;

    if (ps->started) {
        pthread_mutex_lock(&ps->mu);
        ps->stopping = true;
        pthread_cond_broadcast(&ps->wake);
        pthread_cond_broadcast(&ps->ready);
        kick(ps);
        pthread_mutex_unlock(&ps->mu);
        pthread_join(ps->reader, NULL);
        pthread_join(ps->dispatcher, NULL);
        close(ps->efd);
    }
    for (event *ev = queue_pop(ps); ev; ev = queue_pop(ps))
        free(ev);
    int left = 0;
    while (ps->subs) {
        rsub *s = ps->subs;
        ps->subs = s->next;
        left += !s->dead;
        free(s);
    }
    if (left) es_warn(COMP, "closing the redis cache with %d subscriptions still open", left);
    while (ps->unsubs) {
        unsub *u = ps->unsubs;
        ps->unsubs = u->next;
        free(u);
    }
    free(ps->await);

    for (int i = 0; i < p->nidle; i++)
        redisFree(p->idle[i]);
    if (p->total != p->nidle)
        es_warn(COMP, "closing the redis cache with %d connections in use", p->total - p->nidle);

    pthread_cond_destroy(&ps->ready);
    pthread_cond_destroy(&ps->idle);
    pthread_cond_destroy(&ps->wake);
    pthread_mutex_destroy(&ps->mu);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&r->log_mu);
    free(r->host);
    free(r->user);
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    free(r);
}

static int redis_open(const char *url, const es_config *cfg, void **ctx)
{
    (void)cfg; /* everything is in the URL */
    rcache *r = calloc(1, sizeof *r);
    if (!r) return ES_ENOMEM;
    int rc = parse_url(r, url);
    if (rc != ES_OK) goto free_strings;
    pthread_mutex_init(&r->log_mu, NULL);
    pthread_mutex_init(&r->pool.mu, NULL);
    es_cond_init(&r->pool.cv);
    pthread_mutex_init(&r->ps.mu, NULL);
    pthread_cond_init(&r->ps.wake, NULL);
    pthread_cond_init(&r->ps.idle, NULL);
    es_cond_init(&r->ps.ready);
    r->ps.efd = -1;
    script_init(&r->lock_s, LOCK_LUA);
    script_init(&r->unlock_s, UNLOCK_LUA);
    script_init(&r->hset_s, HSET_TTL_LUA);

    /* Connect and PING now: a wrong address, password or database shows at
     * startup, not at the first use (a server that wants a password we did
     * not give answers the PING with NOAUTH). */
    redisContext *c;
    r->pool.total = 1;
    rc = conn_dial(r, &c);
    if (rc != ES_OK) {
        r->pool.total = 0;
        redis_close(r);
        return rc;
    }
    pool_put(r, c, false);
    rc = redis_ping(r);
    if (rc != ES_OK) {
        redis_close(r);
        return rc;
    }
    es_debug(COMP, "cache on redis at %s", r->where);
    *ctx = r;
    return ES_OK;

free_strings:
    free(r->host);
    free(r->user);
    free(r->password);
    free(r);
    return rc;
}

const es_cache_ops es_cache_redis = {
    .name = "redis",
    .scheme = "redis://",
    .open = redis_open,
    .close = redis_close,
    .get = redis_get,
    .set = redis_set,
    .del = redis_del,
    .incr = redis_incr,
    .hset = redis_hset,
    .hgetall = redis_hgetall,
    .hincr = redis_hincr,
    .lock = redis_lock,
    .unlock = redis_unlock,
    .publish = redis_publish,
    .subscribe = redis_subscribe,
    .unsubscribe = redis_unsubscribe,
    .ping = redis_ping,
};
