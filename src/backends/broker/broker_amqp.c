/* broker_amqp.c - the RabbitMQ broker (amqp://user:pw@host:port/vhost?options),
 * on rabbitmq-c 0.11.
 *
 * Topology, declared by esteira (durable, idempotently):
 *   Q             the queue
 *   Q.dead        dead letters: dead() publishes there with x-dead-reason
 *   Q.delay.<ms>  delay queues: x-message-ttl <ms>, and x-dead-letter-exchange ""
 *                 + x-dead-letter-routing-key Q send a message back to Q when
 *                 its time is up; x-expires drops the ones nobody uses.
 * A delay is rounded up to one of 114 buckets 15 % apart, from 10 ms to
 * 24 h, so a queue has few delay queues.  Every message of a delay queue has
 * the same TTL, so RabbitMQ (which expires only at the head) lets each go in
 * time.  x-expires is the TTL + 30 min and a delay queue in use is declared
 * again every 10 min, so it cannot expire under a message.  A delay over
 * 24 h waits in the 24 h queue with x-not-before, and a consumer that
 * receives it early puts it back for the rest.  (RabbitMQ moves a message
 * out of a classic delay queue without confirms inside the server: a crash
 * of the server at that moment can lose it.)
 *
 * Messages are persistent.  Headers are an AMQP table: the caller's as
 * strings, plus x-attempts and x-published-ms (the timestamp property holds
 * only seconds).
 *
 * Publishing: every message is confirmed (confirm.select).  A rabbitmq-c
 * connection is not thread-safe and 0.11 cannot wait for confirms, so there
 * are a few publisher connections ("lanes") and group commit: a caller
 * queues its request; whoever finds a lane free becomes the leader, sends
 * everything queued, reads basic.ack / nack / return frames until all of it
 * is settled and hands every caller its result.  While one lane waits for
 * confirms, the next batch goes out on another.  Messages are mandatory: a
 * queue that vanished makes them come back (basic.return) instead of being
 * dropped, and they are sent again after a re-declare.  Requests whose
 * confirms were lost with a connection are sent again on a new one
 * (duplicates rather than loss) until publish_timeout.
 *
 * Consumers: a connection each, basic.qos prefetch, manual ack.  retry() and
 * dead() publish through the lanes and ack the original only once that is
 * confirmed: a crash in between duplicates, never loses.  A lost connection
 * is not hidden: next() fails and the caller reopens; RabbitMQ redelivers
 * what the dead connection held.
 *
 * Heartbeats: rabbitmq-c sends and checks them only inside its calls, and a
 * consumer's thread may spend minutes in a job.  A keeper thread therefore
 * visits idle connections every second (never one in use); what it reads
 * from a consumer's is kept for that consumer's next().
 *
 * depth(): ready is what RabbitMQ counts as ready in Q and its delay queues,
 * plus what its consumers here received but did not hand out yet.  AMQP
 * 0-9-1 does not report unacknowledged messages, so unacked counts only the
 * deliveries handed out by this broker's own consumers and not yet settled.
 *
 * URL options: heartbeat=30 (seconds, 0 = off), connect_timeout=5s,
 * publish_timeout=10s (a publish gives up after it, reconnects included),
 * publishers=2 (connections), queue_expires= (x-expires for Q and Q.dead:
 * for tests and throwaway setups; none by default).
 *
 * Locks: gc_lock (the request queue and lane ownership), admin_lock,
 * cons_lock (the consumer list), then a consumer's lock, then decl_lock;
 * keeper_lock is never held with another.  A lane belongs to whoever marked
 * it busy under gc_lock. */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "esteira/broker.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "broker"
#define CH   1 /* every connection uses one channel */

#define BUCKET_MIN_MS     10LL
#define BUCKET_MAX_MS     (24LL * 3600 * 1000)
#define BUCKETS_MAX       128
#define DELAY_EXPIRES_MS  (30LL * 60 * 1000) /* a delay queue outlives its TTL by this */
#define DELAY_REDECLARE   (10LL * 60 * 1000) /* and is re-declared this often while used */
#define SCAN_EVERY_MS     30000              /* depth() looks for others' delay queues this often */
#define BATCH_MAX_MSGS    4096               /* messages one leader sends in one round */
#define HEADERS_MAX_BYTES 65536 /* a message's headers, encoded (frame_max is 128 KiB) */
#define FRAME_MAX         131072
#define KEEP_EVERY_MS     1000
#define CLOSE_TIMEOUT_MS  2000
#define QINFO_BUCKETS     64

#define H_ATTEMPTS   "x-attempts"
#define H_PUBLISHED  "x-published-ms"
#define H_NOT_BEFORE "x-not-before"

/* ------------------------------------------------------------ structures */

typedef struct settings {
    char host[256];
    int port;
    char user[256];
    char pass[256];
    char vhost[256];
    char shown[600]; /* the URL without its password, for logs */
    int heartbeat;   /* seconds, 0 = off */
    int64_t connect_timeout_ms;
    int64_t publish_timeout_ms;
    int64_t queue_expires_ms; /* x-expires of Q and Q.dead, 0 = none */
    int publishers;
} settings;

typedef struct aconn {
    amqp_connection_state_t st; /* NULL: not connected */
    bool chan_open;
    bool confirm; /* a lane: the channel is in confirm mode */
    uint64_t seq; /* publish sequence number of the last message sent */
} aconn;

/* What this broker knows of a queue name's declarations. */
typedef struct qinfo {
    char *name;
    int64_t declared_until;                /* the queue itself (mono ms; 0 = unknown) */
    int64_t delay_until[BUCKETS_MAX];      /* its delay queues, declared by us */
    uint64_t delay_seen[BUCKETS_MAX / 64]; /* its delay queues known to exist */
    int64_t scanned_ms;                    /* last look for delay queues (mono), 0 = never */
    struct qinfo *next;
} qinfo;

/* One publish() call waiting for the group commit. */
typedef struct pub_req {
    const es_msg *msgs;
    size_t n;
    int64_t published_ms; /* 0: now */
    int rc;
    bool taken, finished, done;
    /* the leader's bookkeeping */
    size_t unconfirmed;
    bool nacked, returned;
    int return_resends;
    pthread_cond_t cond; /* its caller sleeps on it */
    struct pub_req *next;
} pub_req;

typedef struct lane {
    aconn c;
    bool busy; /* under gc_lock */
    int64_t used_ms;
    /* one round: message k has sequence number first + k */
    pub_req **owner;
    const es_msg **sent;
    unsigned char *settled;
    size_t cap;
    amqp_table_entry_t *hdr;
    size_t hcap;
} lane;

typedef struct ab ab;

typedef struct stashed {
    es_delivery d;
    int64_t not_before;
} stashed;

typedef struct acons {
    ab *b;
    char *queue;
    int prefetch;
    pthread_mutex_t lock; /* the connection and everything below */
    aconn c;
    int err;        /* sticky: the connection failed, next() says so */
    stashed *stash; /* read by the keeper, not yet handed out */
    int shead, slen, scap;
    uint64_t *tags; /* handed out or stashed, not yet settled */
    int ntags, tcap;
    atomic_int held;   /* ntags, for depth() */
    atomic_int nstash; /* slen, for depth() */
    int64_t used_ms;
    struct acons *prev, *next; /* under b->cons_lock */
} acons;

struct ab {
    settings s;

    pthread_mutex_t gc_lock;
    pub_req *gc_head, *gc_tail;
    lane *lanes;
    int nlanes;

    pthread_mutex_t admin_lock; /* declare, depth, purge, ping */
    aconn admin;
    bool scan_open[BUCKETS_MAX]; /* its channel 2 + bucket is open */
    int64_t admin_used_ms;

    pthread_mutex_t decl_lock;
    qinfo *qtab[QINFO_BUCKETS];

    pthread_mutex_t cons_lock;
    acons *consumers;

    pthread_mutex_t keeper_lock;
    pthread_cond_t keeper_cond;
    pthread_t keeper;
    bool keeper_started, stopping;
};

/* ---------------------------------------------------------- delay buckets */

static int64_t buckets[BUCKETS_MAX];
static int nbuckets;
static pthread_once_t buckets_once = PTHREAD_ONCE_INIT;

/* Integer steps, so that every process computes the same queue names. */
static void buckets_init(void)
{
    int64_t v = BUCKET_MIN_MS;
    while (nbuckets < BUCKETS_MAX) {
        buckets[nbuckets++] = v;
        if (v >= BUCKET_MAX_MS) break;
        v += (v * 15 + 99) / 100;
        if (v > BUCKET_MAX_MS) v = BUCKET_MAX_MS;
    }
}

/* The smallest bucket not shorter than delay_ms (the longest when none is). */
static int bucket_for(int64_t delay_ms)
{
    int lo = 0, hi = nbuckets - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (buckets[mid] >= delay_ms)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}

static void delay_name(char *out, size_t size, const char *queue, int bi)
{
    snprintf(out, size, "%s.delay.%lld", queue, (long long)buckets[bi]);
}

/* Where a message goes: its queue, or the delay queue (*bi >= 0) for it. */
static void target_of(const es_msg *m, char *out, size_t size, int *bi)
{
    if (m->delay_ms <= 0) {
        *bi = -1;
        snprintf(out, size, "%s", m->queue);
    } else {
        *bi = bucket_for(m->delay_ms);
        delay_name(out, size, m->queue, *bi);
    }
}

/* ------------------------------------------------------------ small things */

static struct timeval ms_tv(int64_t ms)
{
    if (ms < 0) ms = 0;
    return (struct timeval){.tv_sec = (time_t)(ms / 1000),
                            .tv_usec = (suseconds_t)(ms % 1000) * 1000};
}

static int reply_code_err(int code)
{
    switch (code) {
    case AMQP_NOT_FOUND: return ES_ENOTFOUND;
    case AMQP_PRECONDITION_FAILED:
    case AMQP_RESOURCE_LOCKED: return ES_ECONFLICT;
    case AMQP_ACCESS_REFUSED: return ES_EAUTH;
    case AMQP_NOT_ALLOWED: return ES_EFORBIDDEN;
    case AMQP_CONNECTION_FORCED: return ES_EAGAIN;
    default: return ES_EBACKEND;
    }
}

/* Errors that trying again will not cure. */
static bool permanent(int err)
{
    return err == ES_EAUTH || err == ES_EFORBIDDEN || err == ES_EINVAL || err == ES_ENOMEM;
}

static bool bytes_eq(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && memcmp(b.bytes, s, n) == 0;
}

static bool bytes_prefix(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len >= n && memcmp(b.bytes, s, n) == 0;
}

static char *bytes_dup(amqp_bytes_t b)
{
    /* Header strings may hold a NUL: the C string ends there. */
    const char *p = b.bytes;
    size_t n = b.len && p ? strnlen(p, b.len) : 0;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    if (n) memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* ---------------------------------------------------------------- the URL */

static int parse_option(settings *s, const char *key, const char *val)
{
    int64_t v;
    if (strcmp(key, "heartbeat") == 0) {
        /* seconds, as in AMQP; a unit ("30s", "1m") is accepted too */
        if (es_parse_i64(val, 0, 3600, &v) == ES_OK) {
            s->heartbeat = (int)v;
            return ES_OK;
        }
        if (es_parse_duration_ms(val, &v) != ES_OK || v < 0 || v > 3600000) return ES_EINVAL;
        s->heartbeat = (int)((v + 999) / 1000);
        return ES_OK;
    }
    if (strcmp(key, "publishers") == 0) {
        if (es_parse_i64(val, 1, 64, &v) != ES_OK) return ES_EINVAL;
        s->publishers = (int)v;
        return ES_OK;
    }
    int64_t *dst = strcmp(key, "connect_timeout") == 0   ? &s->connect_timeout_ms
                   : strcmp(key, "publish_timeout") == 0 ? &s->publish_timeout_ms
                   : strcmp(key, "queue_expires") == 0   ? &s->queue_expires_ms
                                                         : NULL;
    if (!dst || es_parse_duration_ms(val, &v) != ES_OK || v < 1 || v > INT32_MAX) return ES_EINVAL;
    *dst = v;
    return ES_OK;
}

/* The URL shown in logs: as given, without the password (everything from
 * the first ':' to the last '@' of the authority). */
static void url_shown(const char *url, char *out, size_t size)
{
    const char *auth = strstr(url, "://");
    auth = auth ? auth + 3 : url;
    size_t alen = strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < auth + alen; p++)
        if (*p == '@') at = p;
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon)
        snprintf(out, size, "%.*s%s", (int)(colon - url), url, at);
    else
        snprintf(out, size, "%s", url);
}

static int parse_url(const char *url, settings *s)
{
    memset(s, 0, sizeof *s);
    s->heartbeat = 30;
    s->connect_timeout_ms = 5000;
    s->publish_timeout_ms = 10000;
    s->publishers = 2;
    url_shown(url, s->shown, sizeof s->shown);

    int err = ES_EINVAL;
    char copy[2048];
    if (es_strlcpy(copy, url, sizeof copy) >= sizeof copy || strncmp(copy, "amqp://", 7) != 0) {
        es_error(COMP, "bad broker URL %s: expected amqp://user:pw@host:port/vhost", s->shown);
        goto done;
    }
    char *query = strchr(copy, '?');
    if (query) {
        *query++ = '\0';
        char *save = NULL;
        for (char *kv = strtok_r(query, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
            char *eq = strchr(kv, '=');
            if (eq) *eq = '\0';
            if (!eq || parse_option(s, kv, eq + 1) != ES_OK) {
                es_error(COMP,
                         "bad broker URL option \"%s\" in %s (known: heartbeat=<s>, "
                         "connect_timeout=<dur>, publish_timeout=<dur>, publishers=<n>, "
                         "queue_expires=<dur>)",
                         kv, s->shown);
                goto done;
            }
        }
    }
    struct amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK || ci.ssl || !ci.host || !*ci.host) {
        es_error(COMP, "bad broker URL %s: expected amqp://user:pw@host:port/vhost", s->shown);
        goto done;
    }
    if (es_strlcpy(s->host, ci.host, sizeof s->host) >= sizeof s->host ||
        es_strlcpy(s->user, ci.user, sizeof s->user) >= sizeof s->user ||
        es_strlcpy(s->pass, ci.password, sizeof s->pass) >= sizeof s->pass ||
        es_strlcpy(s->vhost, ci.vhost, sizeof s->vhost) >= sizeof s->vhost) {
        es_error(COMP, "bad broker URL %s: a part is too long", s->shown);
        goto done;
    }
    s->port = ci.port;
    err = ES_OK;
done:
    explicit_bzero(copy, sizeof copy); /* it held the password */
    return err;
}

static void entry_i64(amqp_table_entry_t *e, const char *key, int64_t v)
{
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_I64;
    e->value.value.i64 = v;
}

static void entry_str(amqp_table_entry_t *e, const char *key, const char *v)
{
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = amqp_cstring_bytes(v);
}

/* ------------------------------------------------------------ connections */

static void conn_drop(aconn *c)
{
    if (c->st) amqp_destroy_connection(c->st);
    c->st = NULL;
    c->chan_open = false;
}

/* Politely, so that RabbitMQ requeues what the channel held at once. */
static void conn_close(aconn *c)
{
    if (!c->st) return;
    struct timeval tv = ms_tv(CLOSE_TIMEOUT_MS);
    amqp_set_rpc_timeout(c->st, &tv);
    if (c->chan_open) amqp_channel_close(c->st, CH, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
    conn_drop(c);
}

/* The server closed the channel or the connection: answer it, log its
 * reason, and say what it means.  After a channel close the connection stays
 * usable (chan_ensure opens the channel again). */
static int server_close(ab *b, aconn *c, const amqp_method_t *m, const char *what, const char *name)
{
    bool chan = m->id == AMQP_CHANNEL_CLOSE_METHOD;
    int code;
    amqp_bytes_t text;
    if (chan) {
        const amqp_channel_close_t *cc = m->decoded;
        code = cc->reply_code;
        text = cc->reply_text;
    } else {
        const amqp_connection_close_t *cc = m->decoded;
        code = cc->reply_code;
        text = cc->reply_text;
    }
    /* logged first: the text lives in the connection's memory */
    int err = reply_code_err(code);
    if (err == ES_ENOTFOUND)
        es_debug(COMP, "%s %s: %d %.*s", what, name, code, (int)text.len, (const char *)text.bytes);
    else
        es_warn(COMP, "%s %s on %s: %s closed by the server: %d %.*s", what, name, b->s.shown,
                chan ? "channel" : "connection", code, (int)text.len, (const char *)text.bytes);
    if (chan) {
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c->st, CH, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        c->chan_open = false;
    } else {
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        conn_drop(c);
    }
    return err;
}

/* Translates an RPC reply; on a lost connection, drops it. */
static int rpc_result(ab *b, aconn *c, amqp_rpc_reply_t r, const char *what, const char *name)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return ES_OK;
    case AMQP_RESPONSE_SERVER_EXCEPTION: return server_close(b, c, &r.reply, what, name);
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        es_warn(COMP, "%s %s on %s: %s", what, name, b->s.shown,
                amqp_error_string2(r.library_error));
        conn_drop(c);
        return r.library_error == AMQP_STATUS_NO_MEMORY ? ES_ENOMEM : ES_EAGAIN;
    default:
        es_error(COMP, "%s %s on %s: no reply", what, name, b->s.shown);
        conn_drop(c);
        return ES_EBACKEND;
    }
}

/* Frames queued by rabbitmq-c for a channel that is gone would be taken
 * for the new one's. */
static void drain_queued(aconn *c)
{
    struct timeval zero = {0, 0};
    amqp_frame_t f;
    while (c->st && amqp_frames_enqueued(c->st))
        if (amqp_simple_wait_frame_noblock(c->st, &f, &zero) != AMQP_STATUS_OK) break;
}

static int chan_ensure(ab *b, aconn *c)
{
    if (!c->st) return ES_EAGAIN;
    if (c->chan_open) return ES_OK;
    drain_queued(c);
    amqp_channel_open(c->st, CH);
    int err = rpc_result(b, c, amqp_get_rpc_reply(c->st), "opening a channel", "");
    if (err) return err;
    c->chan_open = true;
    c->seq = 0;
    if (c->confirm) {
        amqp_confirm_select(c->st, CH);
        err = rpc_result(b, c, amqp_get_rpc_reply(c->st), "enabling publisher confirms", "");
    }
    return err;
}

/* Dead peers are found by heartbeats; keepalive covers heartbeat=0. */
static void set_keepalive(int fd)
{
    if (fd < 0) return;
    int on = 1, idle = 30, intvl = 10, cnt = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
}

static int conn_open(ab *b, aconn *c, const char *role)
{
    conn_drop(c);
    amqp_connection_state_t st = amqp_new_connection();
    if (!st) return ES_ENOMEM;
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    if (!sock) {
        amqp_destroy_connection(st);
        return ES_ENOMEM;
    }
    struct timeval ctv = ms_tv(b->s.connect_timeout_ms), rtv = ms_tv(b->s.publish_timeout_ms);
    int rc = amqp_socket_open_noblock(sock, b->s.host, b->s.port, &ctv);
    if (rc != AMQP_STATUS_OK) {
        es_warn(COMP, "%s: cannot connect to %s: %s", role, b->s.shown, amqp_error_string2(rc));
        amqp_destroy_connection(st);
        return rc == AMQP_STATUS_NO_MEMORY ? ES_ENOMEM : ES_EAGAIN;
    }
    amqp_set_handshake_timeout(st, &ctv);
    amqp_set_rpc_timeout(st, &rtv);
    /* Without consumer_cancel_notify a consumer whose queue is deleted is
     * silently dropped; without connection.blocked a resource alarm looks
     * like a slow server.  rabbitmq-c merges these into its defaults. */
    amqp_table_entry_t caps[3];
    const char *cap_names[3] = {"consumer_cancel_notify", "connection.blocked", "basic.nack"};
    for (int i = 0; i < 3; i++) {
        caps[i].key = amqp_cstring_bytes(cap_names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    char cname[64];
    snprintf(cname, sizeof cname, "esteira %s", role);
    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table = (amqp_table_t){3, caps};
    entry_str(&props[1], "connection_name", cname);
    amqp_table_t client = {2, props};
    amqp_rpc_reply_t r =
        amqp_login_with_properties(st, b->s.vhost, 0, FRAME_MAX, b->s.heartbeat, &client,
                                   AMQP_SASL_METHOD_PLAIN, b->s.user, b->s.pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        int err;
        if (r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
            r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *cc = r.reply.decoded;
            err = reply_code_err(cc->reply_code);
            es_error(COMP, "%s: %s refused the login: %d %.*s", role, b->s.shown, cc->reply_code,
                     (int)cc->reply_text.len, (const char *)cc->reply_text.bytes);
        } else {
            err = ES_EAGAIN;
            es_warn(COMP, "%s: login to %s failed: %s", role, b->s.shown,
                    r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                        ? amqp_error_string2(r.library_error)
                        : "unexpected reply");
        }
        amqp_destroy_connection(st);
        return err;
    }
    set_keepalive(amqp_get_sockfd(st));
    c->st = st;
    c->chan_open = false;
    return chan_ensure(b, c);
}

/* Reads what arrived on an idle connection (rabbitmq-c sends a heartbeat
 * when one is due); a close from the server is answered. */
static void pump_idle(ab *b, aconn *c, const char *role)
{
    struct timeval zero = {0, 0};
    while (c->st) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT) break;
        if (rc != AMQP_STATUS_OK) {
            es_warn(COMP, "%s: connection to %s lost: %s", role, b->s.shown,
                    amqp_error_string2(rc));
            conn_drop(c);
            break;
        }
        if (f.frame_type == AMQP_FRAME_METHOD &&
            (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
             f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD))
            server_close(b, c, &f.payload.method, role, "(idle)");
    }
    if (c->st) amqp_maybe_release_buffers(c->st);
}

/* ---------------------------------------------------------- declarations */

static unsigned hash_name(const char *s)
{
    unsigned h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h % QINFO_BUCKETS;
}

/* Call with decl_lock held; NULL only when out of memory. */
static qinfo *qinfo_get(ab *b, const char *name)
{
    unsigned h = hash_name(name);
    for (qinfo *q = b->qtab[h]; q; q = q->next)
        if (strcmp(q->name, name) == 0) return q;
    qinfo *q = calloc(1, sizeof *q);
    if (!q || !(q->name = strdup(name))) {
        free(q);
        return NULL;
    }
    q->next = b->qtab[h];
    b->qtab[h] = q;
    return q;
}

/* After a reconnect the server may be a new one: declare everything again. */
static void decl_forget_all(ab *b)
{
    pthread_mutex_lock(&b->decl_lock);
    for (int i = 0; i < QINFO_BUCKETS; i++)
        for (qinfo *q = b->qtab[i]; q; q = q->next) {
            q->declared_until = 0;
            memset(q->delay_until, 0, sizeof q->delay_until);
        }
    pthread_mutex_unlock(&b->decl_lock);
}

static void decl_forget(ab *b, const char *queue, int bi)
{
    pthread_mutex_lock(&b->decl_lock);
    qinfo *q = qinfo_get(b, queue);
    if (q && bi < 0) q->declared_until = 0;
    if (q && bi >= 0) q->delay_until[bi] = 0;
    pthread_mutex_unlock(&b->decl_lock);
}

static int queue_declare(ab *b, aconn *c, const char *name, bool passive, amqp_table_t args,
                         uint32_t *count)
{
    int err = chan_ensure(b, c);
    if (err) return err;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c->st, CH, amqp_cstring_bytes(name), passive, 1, 0, 0, args);
    err = rpc_result(b, c, amqp_get_rpc_reply(c->st),
                     passive ? "looking up queue" : "declaring queue", name);
    if (!err && count) *count = ok ? ok->message_count : 0;
    return err;
}

/* Q or Q.dead: durable.  A queue that exists with other arguments (a quorum
 * queue set up by an operator, say) is taken as it is. */
static int declare_plain(ab *b, aconn *c, const char *name)
{
    amqp_table_entry_t e[1];
    amqp_table_t args = {0, e};
    if (b->s.queue_expires_ms > 0) {
        entry_i64(&e[0], "x-expires", b->s.queue_expires_ms);
        args.num_entries = 1;
    }
    int err = queue_declare(b, c, name, false, args, NULL);
    if (err == ES_ECONFLICT) {
        err = queue_declare(b, c, name, true, amqp_empty_table, NULL);
        if (!err)
            es_warn(COMP, "queue %s exists with other arguments than esteira's; using it as it is",
                    name);
    }
    return err;
}

static int declare_delay(ab *b, aconn *c, const char *queue, int bi)
{
    char name[300];
    delay_name(name, sizeof name, queue, bi);
    amqp_table_entry_t e[4];
    entry_i64(&e[0], "x-message-ttl", buckets[bi]);
    entry_str(&e[1], "x-dead-letter-exchange", "");
    entry_str(&e[2], "x-dead-letter-routing-key", queue);
    entry_i64(&e[3], "x-expires", buckets[bi] + DELAY_EXPIRES_MS);
    amqp_table_t args = {4, e};
    return queue_declare(b, c, name, false, args, NULL);
}

/* Declares queue (bi < 0) or its delay queue bi unless known to be there. */
static int ensure_declared(ab *b, aconn *c, const char *queue, int bi)
{
    int64_t now = es_mono_ms();
    pthread_mutex_lock(&b->decl_lock);
    qinfo *q = qinfo_get(b, queue);
    bool known = q && (bi < 0 ? q->declared_until : q->delay_until[bi]) > now;
    pthread_mutex_unlock(&b->decl_lock);
    if (!q) return ES_ENOMEM;
    if (known) return ES_OK;
    int err = bi < 0 ? declare_plain(b, c, queue) : declare_delay(b, c, queue, bi);
    if (err) return err;
    pthread_mutex_lock(&b->decl_lock);
    if (bi < 0) {
        q->declared_until = INT64_MAX;
    } else {
        /* re-declared before the x-expires clock could run out under a message */
        q->delay_until[bi] = now + DELAY_REDECLARE;
        q->delay_seen[bi / 64] |= 1ULL << (bi % 64);
    }
    pthread_mutex_unlock(&b->decl_lock);
    return ES_OK;
}

/* ------------------------------------------------------------- publishing */

static int lane_reserve(lane *l, size_t n)
{
    if (n <= l->cap) return ES_OK;
    size_t cap = l->cap ? l->cap : 64;
    while (cap < n)
        cap *= 2;
    pub_req **o = realloc(l->owner, cap * sizeof *o);
    if (!o) return ES_ENOMEM;
    l->owner = o;
    const es_msg **s = realloc(l->sent, cap * sizeof *s);
    if (!s) return ES_ENOMEM;
    l->sent = s;
    unsigned char *st = realloc(l->settled, cap);
    if (!st) return ES_ENOMEM;
    l->settled = st;
    l->cap = cap;
    return ES_OK;
}

static bool reserved_header(const char *k)
{
    return strcmp(k, H_ATTEMPTS) == 0 || strcmp(k, H_PUBLISHED) == 0 ||
           strcmp(k, H_NOT_BEFORE) == 0;
}

static int send_one(ab *b, lane *l, const es_msg *m, int64_t published_ms)
{
    size_t need = (size_t)m->nheaders + 3;
    if (need > l->hcap) {
        amqp_table_entry_t *h = realloc(l->hdr, need * sizeof *h);
        if (!h) return ES_ENOMEM;
        l->hdr = h;
        l->hcap = need;
    }
    int nh = 0;
    for (int i = 0; i < m->nheaders; i++)
        if (!reserved_header(m->headers[i].key))
            entry_str(&l->hdr[nh++], m->headers[i].key, m->headers[i].value);
    entry_i64(&l->hdr[nh++], H_ATTEMPTS, m->attempts);
    entry_i64(&l->hdr[nh++], H_PUBLISHED, published_ms);
    if (m->delay_ms > BUCKET_MAX_MS)
        entry_i64(&l->hdr[nh++], H_NOT_BEFORE, es_now_ms() + m->delay_ms);

    amqp_basic_properties_t p;
    memset(&p, 0, sizeof p);
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
    p.delivery_mode = 2;
    p.timestamp = (uint64_t)(published_ms / 1000);
    p.headers.num_entries = nh;
    p.headers.entries = l->hdr;

    char rk[300];
    int bi;
    target_of(m, rk, sizeof rk, &bi);
    amqp_bytes_t body = {m->len, (void *)m->body};
    int rc =
        amqp_basic_publish(l->c.st, CH, amqp_empty_bytes, amqp_cstring_bytes(rk), 1, 0, &p, body);
    if (rc != AMQP_STATUS_OK) {
        es_warn(COMP, "publisher: sending to %s on %s failed: %s", rk, b->s.shown,
                amqp_error_string2(rc));
        conn_drop(&l->c);
        return rc == AMQP_STATUS_NO_MEMORY ? ES_ENOMEM : ES_EAGAIN;
    }
    return ES_OK;
}

static void finish_req(pub_req *r, int rc)
{
    r->rc = rc;
    r->finished = true;
}

typedef struct round {
    uint64_t first; /* sequence number of message 0 */
    size_t n;
    size_t left; /* not yet settled */
    size_t lo;   /* every message before it is settled */
} round;

/* Marks sequence numbers settled: tag alone, or everything up to it. */
static void settle(lane *l, round *rd, uint64_t tag, bool multiple, bool ok)
{
    if (tag < rd->first) return; /* from an earlier round */
    size_t k = (size_t)(tag - rd->first);
    if (k >= rd->n) return;
    for (size_t i = multiple ? rd->lo : k; i <= k; i++) {
        if (l->settled[i]) continue;
        l->settled[i] = 1;
        l->owner[i]->unconfirmed--;
        if (!ok) l->owner[i]->nacked = true;
        rd->left--;
    }
    while (rd->lo < rd->n && l->settled[rd->lo])
        rd->lo++;
}

/* A basic.return: the messages of the round sent to that queue name failed
 * (their queue is gone); forget its declaration so it is made again. */
static void returned(ab *b, lane *l, size_t n, const amqp_basic_return_t *rt)
{
    es_warn(COMP, "publisher: a message to %.*s came back: %d %.*s; declaring it again",
            (int)rt->routing_key.len, (const char *)rt->routing_key.bytes, rt->reply_code,
            (int)rt->reply_text.len, (const char *)rt->reply_text.bytes);
    for (size_t i = 0; i < n; i++) {
        char rk[300];
        int bi;
        target_of(l->sent[i], rk, sizeof rk, &bi);
        if (!bytes_eq(rt->routing_key, rk)) continue;
        l->owner[i]->returned = true;
        decl_forget(b, l->sent[i]->queue, bi);
    }
}

/* Waits for the confirms of sequence numbers first .. first+n-1. */
static int await_confirms(ab *b, lane *l, uint64_t first, size_t n, int64_t deadline)
{
    round rd = {.first = first, .n = n, .left = n};
    while (rd.left > 0) {
        int64_t wait = deadline - es_mono_ms();
        if (wait <= 0) {
            es_warn(COMP, "publisher: %zu message(s) not confirmed by %s within %lld ms", rd.left,
                    b->s.shown, (long long)b->s.publish_timeout_ms);
            conn_drop(&l->c); /* late confirms would confuse the next round */
            return ES_ETIMEDOUT;
        }
        struct timeval tv = ms_tv(wait);
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(l->c.st, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT) continue;
        if (rc != AMQP_STATUS_OK) {
            es_warn(COMP, "publisher: connection to %s lost waiting for confirms: %s", b->s.shown,
                    amqp_error_string2(rc));
            conn_drop(&l->c);
            return ES_EAGAIN;
        }
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            settle(l, &rd, a->delivery_tag, a->multiple, true);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            settle(l, &rd, a->delivery_tag, a->multiple, false);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD: {
            /* the returned message's content follows: read it off the wire */
            returned(b, l, n, f.payload.method.decoded);
            amqp_message_t msg;
            amqp_rpc_reply_t r = amqp_read_message(l->c.st, CH, &msg, 0);
            if (r.reply_type != AMQP_RESPONSE_NORMAL) {
                conn_drop(&l->c);
                return ES_EAGAIN;
            }
            amqp_destroy_message(&msg);
            break;
        }
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            return server_close(b, &l->c, &f.payload.method, "publishing", "");
        case AMQP_CONNECTION_BLOCKED_METHOD:
            es_warn(COMP, "publisher: %s blocks publishing (a resource alarm)", b->s.shown);
            break;
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            es_info(COMP, "publisher: %s accepts messages again", b->s.shown);
            break;
        default: break;
        }
    }
    return ES_OK;
}

/* One round on a connected lane: declare what is missing, send every
 * unfinished request, wait for the confirms, finish what settled. */
static int send_round(ab *b, lane *l, pub_req *batch, int64_t deadline)
{
    size_t n = 0;
    int err = ES_OK;
    for (pub_req *r = batch; r; r = r->next) {
        if (r->finished) continue;
        for (size_t i = 0; i < r->n && !r->finished; i++) {
            const es_msg *m = &r->msgs[i];
            int bi = m->delay_ms > 0 ? bucket_for(m->delay_ms) : -1;
            err = ensure_declared(b, &l->c, m->queue, bi);
            if (err == ES_EAGAIN || err == ES_ENOMEM) return err; /* the connection, or memory */
            if (err) finish_req(r, err); /* this queue cannot be used; the others can */
        }
        if (!r->finished) n += r->n;
    }
    if (n == 0) return ES_OK;
    if ((err = lane_reserve(l, n))) return err;
    if ((err = chan_ensure(b, &l->c))) return err;

    uint64_t first = l->c.seq + 1;
    size_t k = 0;
    int64_t now = es_now_ms();
    for (pub_req *r = batch; r; r = r->next) {
        if (r->finished) continue;
        r->unconfirmed = r->n;
        r->nacked = r->returned = false;
        for (size_t i = 0; i < r->n; i++) {
            if ((err = send_one(b, l, &r->msgs[i], r->published_ms ? r->published_ms : now)))
                return err;
            l->c.seq++;
            l->owner[k] = r;
            l->sent[k] = &r->msgs[i];
            l->settled[k] = 0;
            k++;
        }
    }
    err = await_confirms(b, l, first, k, deadline);
    for (pub_req *r = batch; r; r = r->next) {
        if (r->finished) continue;
        if (r->unconfirmed > 0) {
            /* lost with the connection: sent again, unless time is up */
            if (err == ES_ETIMEDOUT)
                finish_req(r, ES_EAGAIN);
            else if (err && err != ES_EAGAIN)
                finish_req(r, err);
        } else if (r->nacked) {
            es_error(COMP, "publisher: %s refused a message (basic.nack)", b->s.shown);
            finish_req(r, ES_EBACKEND);
        } else if (r->returned) {
            if (r->return_resends++ >= 2) finish_req(r, ES_EBACKEND);
        } else {
            finish_req(r, ES_OK);
        }
    }
    if (l->c.st) amqp_maybe_release_buffers(l->c.st);
    return err == ES_ETIMEDOUT ? ES_OK : err;
}

/* The leader's work: get batch confirmed on lane l, reconnecting with
 * backoff as needed, within publish_timeout. */
static void run_batch(ab *b, lane *l, pub_req *batch)
{
    int64_t deadline = es_mono_ms() + b->s.publish_timeout_ms;
    int64_t backoff = 50;
    int err = ES_OK, last = ES_EAGAIN;
    for (;;) {
        bool pending = false;
        for (pub_req *r = batch; r; r = r->next)
            pending |= !r->finished;
        if (!pending) break;
        int64_t now = es_mono_ms();
        if (now >= deadline) {
            err = last;
            break;
        }
        if (!l->c.st) {
            err = conn_open(b, &l->c, "publisher");
            if (!err) {
                decl_forget_all(b); /* it may be a new server */
                continue;
            }
        } else {
            err = send_round(b, l, batch, deadline);
            if (!err) continue;
        }
        if (permanent(err)) break;
        last = err;
        if (!l->c.st) {
            es_sleep_ms(backoff < deadline - now ? backoff : deadline - now);
            backoff = backoff < 1000 ? backoff * 2 : 1000;
        }
    }
    for (pub_req *r = batch; r; r = r->next)
        if (!r->finished) finish_req(r, err ? err : last);
    l->used_ms = es_mono_ms();
}

static lane *free_lane(ab *b)
{
    for (int i = 0; i < b->nlanes; i++)
        if (!b->lanes[i].busy) return &b->lanes[i];
    return NULL;
}

/* A lane came free (gc_lock held): the oldest waiting request leads next. */
static void lane_released(ab *b, lane *l)
{
    l->busy = false;
    if (b->gc_head) pthread_cond_signal(&b->gc_head->cond);
}

/* Group commit, see the top of the file.  Each caller sleeps on its own
 * condition variable, so a round wakes only the callers it served and the
 * next leader. */
static int pub_submit(ab *b, const es_msg *msgs, size_t n, int64_t published_ms)
{
    pub_req req = {.msgs = msgs, .n = n, .published_ms = published_ms};
    if (pthread_cond_init(&req.cond, NULL) != 0) return ES_ENOMEM;
    pthread_mutex_lock(&b->gc_lock);
    if (b->gc_tail)
        b->gc_tail->next = &req;
    else
        b->gc_head = &req;
    b->gc_tail = &req;
    while (!req.done) {
        lane *l = req.taken ? NULL : free_lane(b);
        if (!l) {
            pthread_cond_wait(&req.cond, &b->gc_lock);
            continue;
        }
        /* lead: take the queue's head, up to BATCH_MAX_MSGS messages */
        l->busy = true;
        pub_req *batch = b->gc_head, *last = batch;
        size_t total = 0;
        for (pub_req *r = batch; r; r = r->next) {
            if (r != batch && total + r->n > BATCH_MAX_MSGS) break;
            r->taken = true;
            total += r->n;
            last = r;
        }
        b->gc_head = last->next;
        if (!b->gc_head) b->gc_tail = NULL;
        last->next = NULL;
        /* more waiting and another lane free: they need not wait for us */
        if (b->gc_head && free_lane(b)) pthread_cond_signal(&b->gc_head->cond);
        pthread_mutex_unlock(&b->gc_lock);

        run_batch(b, l, batch);

        pthread_mutex_lock(&b->gc_lock);
        for (pub_req *r = batch, *next; r; r = next) {
            next = r->next; /* r may be gone once done is seen */
            r->done = true;
            if (r != &req) pthread_cond_signal(&r->cond);
        }
        lane_released(b, l);
    }
    pthread_mutex_unlock(&b->gc_lock);
    pthread_cond_destroy(&req.cond);
    return req.rc;
}

static int ab_publish(void *ctx, const es_msg *msgs, size_t n)
{
    ab *b = ctx;
    /* Bad headers must be refused before anything is sent: rabbitmq-c
     * finds them only after the method frame went out. */
    for (size_t i = 0; i < n; i++) {
        size_t bytes = 0;
        for (int h = 0; h < msgs[i].nheaders; h++) {
            size_t kl = strlen(msgs[i].headers[h].key);
            if (kl > 255) return ES_EINVAL;
            bytes += kl + strlen(msgs[i].headers[h].value) + 6;
        }
        if (bytes > HEADERS_MAX_BYTES) return ES_EINVAL;
    }
    return pub_submit(b, msgs, n, 0);
}

/* ------------------------------------------------------------- consuming */

static int tag_add(acons *c, uint64_t tag)
{
    if (c->ntags == c->tcap) {
        int cap = c->tcap ? c->tcap * 2 : 16;
        uint64_t *t = realloc(c->tags, (size_t)cap * sizeof *t);
        if (!t) return ES_ENOMEM;
        c->tags = t;
        c->tcap = cap;
    }
    c->tags[c->ntags++] = tag;
    atomic_store(&c->held, c->ntags);
    return ES_OK;
}

/* Oldest first: acks mostly come in delivery order. */
static int tag_index(const acons *c, uint64_t tag)
{
    for (int i = 0; i < c->ntags; i++)
        if (c->tags[i] == tag) return i;
    return -1;
}

static void tag_remove(acons *c, int i)
{
    memmove(c->tags + i, c->tags + i + 1, (size_t)(c->ntags - i - 1) * sizeof *c->tags);
    c->ntags--;
    atomic_store(&c->held, c->ntags);
}

static int64_t field_int(const amqp_field_value_t *v, bool *ok)
{
    *ok = true;
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: return v->value.i8;
    case AMQP_FIELD_KIND_U8: return v->value.u8;
    case AMQP_FIELD_KIND_I16: return v->value.i16;
    case AMQP_FIELD_KIND_U16: return v->value.u16;
    case AMQP_FIELD_KIND_I32: return v->value.i32;
    case AMQP_FIELD_KIND_U32: return v->value.u32;
    case AMQP_FIELD_KIND_I64: return v->value.i64;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
        return v->value.u64 > INT64_MAX ? INT64_MAX : (int64_t)v->value.u64;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: {
        char tmp[32];
        int64_t out;
        size_t len = v->value.bytes.len < sizeof tmp - 1 ? v->value.bytes.len : sizeof tmp - 1;
        if (len) memcpy(tmp, v->value.bytes.bytes, len);
        tmp[len] = '\0';
        if (es_parse_i64(tmp, INT64_MIN, INT64_MAX, &out) == ES_OK) return out;
        break;
    }
    default: break;
    }
    *ok = false;
    return 0;
}

/* RabbitMQ's own dead-lettering (out of a delay queue) adds these. */
static bool rabbit_header(amqp_bytes_t k)
{
    return bytes_eq(k, "x-death") || bytes_prefix(k, "x-first-death-") ||
           bytes_prefix(k, "x-last-death-");
}

static int envelope_to_delivery(const acons *c, const amqp_envelope_t *env, es_delivery *d,
                                int64_t *not_before)
{
    memset(d, 0, sizeof *d);
    *not_before = 0;
    d->tag = env->delivery_tag;
    d->redelivered = env->redelivered != 0;
    const amqp_message_t *m = &env->message;
    const amqp_basic_properties_t *p = &m->properties;
    d->queue = strdup(c->queue);
    d->body = malloc(m->body.len + 1);
    if (!d->queue || !d->body) goto fail;
    if (m->body.len) memcpy(d->body, m->body.bytes, m->body.len);
    d->body[m->body.len] = '\0';
    d->len = m->body.len;
    if (p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) d->published_ms = (int64_t)p->timestamp * 1000;

    if (p->_flags & AMQP_BASIC_HEADERS_FLAG && p->headers.num_entries > 0) {
        d->headers = calloc((size_t)p->headers.num_entries, sizeof *d->headers);
        if (!d->headers) goto fail;
        for (int i = 0; i < p->headers.num_entries; i++) {
            const amqp_table_entry_t *e = &p->headers.entries[i];
            bool ok;
            if (bytes_eq(e->key, H_ATTEMPTS)) {
                int64_t v = field_int(&e->value, &ok);
                if (ok) d->attempts = v < 0 ? 0 : v > INT_MAX ? INT_MAX : (int)v;
                continue;
            }
            if (bytes_eq(e->key, H_PUBLISHED)) {
                int64_t v = field_int(&e->value, &ok);
                if (ok && v > 0) d->published_ms = v;
                continue;
            }
            if (bytes_eq(e->key, H_NOT_BEFORE)) {
                int64_t v = field_int(&e->value, &ok);
                if (ok) *not_before = v;
                continue;
            }
            if (rabbit_header(e->key)) continue;
            /* strings as they are; other publishers' numbers as text */
            char num[32];
            char *val;
            if (e->value.kind == AMQP_FIELD_KIND_UTF8 || e->value.kind == AMQP_FIELD_KIND_BYTES) {
                val = bytes_dup(e->value.value.bytes);
            } else if (e->value.kind == AMQP_FIELD_KIND_BOOLEAN) {
                val = strdup(e->value.value.boolean ? "true" : "false");
            } else {
                int64_t v = field_int(&e->value, &ok);
                if (!ok) continue; /* tables, arrays, floats: not for us */
                snprintf(num, sizeof num, "%lld", (long long)v);
                val = strdup(num);
            }
            char *key = bytes_dup(e->key);
            if (!key || !val) {
                free(key);
                free(val);
                goto fail;
            }
            d->headers[d->nheaders].key = key;
            d->headers[d->nheaders].value = val;
            d->nheaders++;
        }
        if (d->nheaders == 0) {
            free(d->headers);
            d->headers = NULL;
        }
    }
    if (d->published_ms <= 0) d->published_ms = es_now_ms();
    return ES_OK;
fail:
    es_delivery_finish(d);
    return ES_ENOMEM;
}

/* The consumer's connection failed: remember why, drop it. */
static int consumer_failed(acons *c, int err)
{
    if (!c->err) c->err = err;
    conn_drop(&c->c);
    return c->err;
}

/* Reads one delivery (or nothing, ES_ETIMEDOUT) from the connection, under
 * c->lock.  Other frames are handled here. */
static int read_delivery(acons *c, struct timeval *tv, es_delivery *d, int64_t *not_before)
{
    ab *b = c->b;
    for (;;) {
        amqp_envelope_t env;
        amqp_maybe_release_buffers(c->c.st);
        amqp_rpc_reply_t r = amqp_consume_message(c->c.st, &env, tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            int err = envelope_to_delivery(c, &env, d, not_before);
            amqp_destroy_envelope(&env);
            if (err) return err; /* the message stays unacked: back when we close */
            if ((err = tag_add(c, d->tag))) {
                es_delivery_finish(d);
                return err;
            }
            return ES_OK;
        }
        if (r.reply_type != AMQP_RESPONSE_LIBRARY_EXCEPTION) {
            es_error(COMP, "consumer of %s: unexpected reply from %s", c->queue, b->s.shown);
            return consumer_failed(c, ES_EBACKEND);
        }
        if (r.library_error == AMQP_STATUS_TIMEOUT) return ES_ETIMEDOUT;
        if (r.library_error != AMQP_STATUS_UNEXPECTED_STATE) {
            es_warn(COMP, "consumer of %s: connection to %s lost: %s", c->queue, b->s.shown,
                    amqp_error_string2(r.library_error));
            return consumer_failed(c, ES_EAGAIN);
        }
        /* not a delivery: it waits, put back, as the next frame */
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame(c->c.st, &f);
        if (rc != AMQP_STATUS_OK) {
            es_warn(COMP, "consumer of %s: connection to %s lost: %s", c->queue, b->s.shown,
                    amqp_error_string2(rc));
            return consumer_failed(c, ES_EAGAIN);
        }
        if (f.frame_type != AMQP_FRAME_METHOD) continue;
        switch (f.payload.method.id) {
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
            int err = server_close(b, &c->c, &f.payload.method, "consumer of", c->queue);
            return consumer_failed(c, err == ES_ENOTFOUND ? ES_EAGAIN : err);
        }
        case AMQP_BASIC_CANCEL_METHOD:
            es_warn(COMP, "consumer of %s: cancelled by %s (queue deleted?)", c->queue, b->s.shown);
            return consumer_failed(c, ES_EAGAIN);
        default: break; /* connection.blocked and the like */
        }
    }
}

static int stash_push(acons *c, es_delivery *d, int64_t not_before)
{
    if (c->shead > 0 && c->shead + c->slen == c->scap) {
        memmove(c->stash, c->stash + c->shead, (size_t)c->slen * sizeof *c->stash);
        c->shead = 0;
    }
    if (c->shead + c->slen == c->scap) {
        int cap = c->scap ? c->scap * 2 : 8;
        stashed *s = realloc(c->stash, (size_t)cap * sizeof *s);
        if (!s) return ES_ENOMEM;
        c->stash = s;
        c->scap = cap;
    }
    c->stash[c->shead + c->slen++] = (stashed){*d, not_before};
    atomic_store(&c->nstash, c->slen);
    return ES_OK;
}

/* Reads what waits on an idle consumer's connection into its stash
 * (c->lock held): the keeper's visit, and depth()'s. */
static void pump_consumer(acons *c)
{
    if (c->err || !c->c.st) return;
    for (int i = 0; i < 1000; i++) {
        struct timeval zero = {0, 0};
        es_delivery d;
        int64_t nb;
        int err = read_delivery(c, &zero, &d, &nb);
        if (err) break;
        if (stash_push(c, &d, nb) != ES_OK) {
            /* unacked, it comes back when the consumer closes */
            tag_remove(c, tag_index(c, d.tag));
            es_delivery_finish(&d);
            break;
        }
    }
}

static int settle_ack(acons *c, const es_delivery *d, const char *what)
{
    pthread_mutex_lock(&c->lock);
    int i = tag_index(c, d->tag);
    int err = ES_OK;
    if (i < 0) {
        es_warn(COMP, "consumer of %s: %s of message %llu, which this consumer does not hold",
                c->queue, what, (unsigned long long)d->tag);
        err = ES_ENOTFOUND;
    } else {
        tag_remove(c, i);
        if (c->err || !c->c.st) {
            /* the dead connection's messages are redelivered by RabbitMQ */
            err = c->err ? c->err : ES_EAGAIN;
        } else {
            int rc = amqp_basic_ack(c->c.st, CH, d->tag, 0);
            if (rc != AMQP_STATUS_OK) {
                es_warn(COMP, "consumer of %s: ack on %s failed: %s", c->queue, c->b->s.shown,
                        amqp_error_string2(rc));
                err = consumer_failed(c, ES_EAGAIN);
            }
        }
    }
    c->used_ms = es_mono_ms();
    pthread_mutex_unlock(&c->lock);
    return err;
}

static bool holds(acons *c, const es_delivery *d, const char *what)
{
    pthread_mutex_lock(&c->lock);
    bool ok = tag_index(c, d->tag) >= 0;
    pthread_mutex_unlock(&c->lock);
    if (!ok)
        es_warn(COMP, "consumer of %s: %s of message %llu, which this consumer does not hold",
                c->queue, what, (unsigned long long)d->tag);
    return ok;
}

static int ab_consumer_open(void *ctx, const char *queue, int prefetch, void **out)
{
    ab *b = ctx;
    acons *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    int err = ES_ENOMEM;
    if (!(c->queue = strdup(queue))) goto fail_alloc;
    if (pthread_mutex_init(&c->lock, NULL) != 0) goto fail_alloc;
    c->b = b;
    c->prefetch = prefetch;
    atomic_init(&c->held, 0);
    atomic_init(&c->nstash, 0);

    if ((err = conn_open(b, &c->c, "consumer"))) goto fail_conn;
    amqp_basic_qos(c->c.st, CH, 0, (uint16_t)(prefetch > 65535 ? 65535 : prefetch), 0);
    if ((err = rpc_result(b, &c->c, amqp_get_rpc_reply(c->c.st), "setting prefetch for", queue)))
        goto fail_conn;
    for (int attempt = 0;; attempt++) {
        if ((err = ensure_declared(b, &c->c, queue, -1))) goto fail_conn;
        if ((err = chan_ensure(b, &c->c))) goto fail_conn;
        amqp_basic_consume(c->c.st, CH, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0,
                           amqp_empty_table);
        err = rpc_result(b, &c->c, amqp_get_rpc_reply(c->c.st), "consuming from", queue);
        if (err != ES_ENOTFOUND || attempt > 0) break;
        /* deleted since we declared it: once more, declared again (the
         * channel was closed, and with it the prefetch setting) */
        decl_forget(b, queue, -1);
        if ((err = chan_ensure(b, &c->c))) goto fail_conn;
        amqp_basic_qos(c->c.st, CH, 0, (uint16_t)(prefetch > 65535 ? 65535 : prefetch), 0);
        err = rpc_result(b, &c->c, amqp_get_rpc_reply(c->c.st), "setting prefetch for", queue);
        if (err) goto fail_conn;
    }
    if (err) goto fail_conn;
    c->used_ms = es_mono_ms();

    pthread_mutex_lock(&b->cons_lock);
    c->next = b->consumers;
    if (b->consumers) b->consumers->prev = c;
    b->consumers = c;
    pthread_mutex_unlock(&b->cons_lock);
    *out = c;
    return ES_OK;

fail_conn:
    conn_drop(&c->c);
    pthread_mutex_destroy(&c->lock);
fail_alloc:
    free(c->queue);
    free(c);
    return err;
}

static int republish_then_ack(acons *c, const es_delivery *d, const char *queue,
                              const es_kv *headers, int nheaders, int attempts, int64_t delay_ms,
                              const char *what);

static int ab_next(void *consumer, int timeout_ms, es_delivery *out)
{
    acons *c = consumer;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : es_mono_ms() + timeout_ms;
    for (;;) {
        int64_t not_before = 0;
        int err;
        pthread_mutex_lock(&c->lock);
        if (c->slen > 0) {
            *out = c->stash[c->shead].d;
            not_before = c->stash[c->shead].not_before;
            c->shead++;
            if (--c->slen == 0) c->shead = 0;
            atomic_store(&c->nstash, c->slen);
            err = ES_OK;
        } else if (c->err || !c->c.st) {
            err = c->err ? c->err : ES_EAGAIN;
        } else {
            struct timeval tv, *tvp = NULL;
            if (deadline != INT64_MAX) {
                tv = ms_tv(deadline - es_mono_ms());
                tvp = &tv;
            }
            err = read_delivery(c, tvp, out, &not_before);
        }
        c->used_ms = es_mono_ms();
        pthread_mutex_unlock(&c->lock);
        if (err || not_before <= es_now_ms()) return err;

        /* Came out of the 24 h delay queue early: back for the rest. */
        err = republish_then_ack(c, out, c->queue, out->headers, out->nheaders, out->attempts,
                                 not_before - es_now_ms(), "delay");
        es_delivery_finish(out);
        if (err) return err;
        if (es_mono_ms() >= deadline) return ES_ETIMEDOUT;
    }
}

static int ab_ack(void *consumer, const es_delivery *d)
{
    return settle_ack(consumer, d, "ack");
}

/* Publishes d again (to queue, attempts and delay as given), confirmed, then
 * acks the original. */
static int republish_then_ack(acons *c, const es_delivery *d, const char *queue,
                              const es_kv *headers, int nheaders, int attempts, int64_t delay_ms,
                              const char *what)
{
    if (!holds(c, d, what)) return ES_ENOTFOUND;
    es_msg m = {.queue = queue,
                .body = d->body,
                .len = d->len,
                .headers = headers,
                .nheaders = nheaders,
                .attempts = attempts,
                .delay_ms = delay_ms};
    int err = pub_submit(c->b, &m, 1, d->published_ms);
    if (err) return err; /* still held: delivered again after the consumer closes */
    return settle_ack(c, d, what);
}

static int ab_retry(void *consumer, const es_delivery *d, int64_t delay_ms)
{
    acons *c = consumer;
    int attempts = d->attempts < INT_MAX ? d->attempts + 1 : INT_MAX;
    /* an earlier dead reason does not travel on */
    return republish_then_ack(c, d, c->queue, d->headers, d->nheaders, attempts, delay_ms, "retry");
}

static int ab_dead(void *consumer, const es_delivery *d, const char *reason)
{
    acons *c = consumer;
    char dq[300];
    if ((size_t)snprintf(dq, sizeof dq, "%s.dead", c->queue) >= sizeof dq) return ES_EINVAL;
    /* the headers as delivered, with the reason replacing any earlier one */
    es_kv *h = calloc((size_t)d->nheaders + 1, sizeof *h);
    if (!h) return ES_ENOMEM;
    int n = 0;
    for (int i = 0; i < d->nheaders; i++)
        if (strcmp(d->headers[i].key, ES_BROKER_DEAD_REASON_HEADER) != 0) h[n++] = d->headers[i];
    h[n].key = (char *)ES_BROKER_DEAD_REASON_HEADER;
    h[n].value = (char *)reason;
    n++;
    int err = republish_then_ack(c, d, dq, h, n, d->attempts, 0, "dead-letter");
    free(h);
    return err;
}

static void ab_consumer_close(void *consumer)
{
    acons *c = consumer;
    if (!c) return;
    ab *b = c->b;
    pthread_mutex_lock(&b->cons_lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        b->consumers = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&b->cons_lock);

    /* RabbitMQ requeues what the channel held (marked redelivered) */
    conn_close(&c->c);
    for (int i = 0; i < c->slen; i++)
        es_delivery_finish(&c->stash[c->shead + i].d);
    free(c->stash);
    free(c->tags);
    pthread_mutex_destroy(&c->lock);
    free(c->queue);
    free(c);
}

/* ---------------------------------------------------------- administration */

/* Runs op on the admin connection, connecting first when needed, and once
 * more on a new connection when the old one turned out to be dead. */
typedef int (*admin_fn)(ab *b, aconn *c, void *arg);

static int admin_run(ab *b, admin_fn fn, void *arg)
{
    pthread_mutex_lock(&b->admin_lock);
    int err = ES_EAGAIN;
    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh = false;
        if (!b->admin.st) {
            memset(b->scan_open, 0, sizeof b->scan_open);
            if ((err = conn_open(b, &b->admin, "broker"))) break;
            decl_forget_all(b);
            fresh = true;
        }
        err = fn(b, &b->admin, arg);
        if (b->admin.st) amqp_maybe_release_buffers(b->admin.st);
        if (err != ES_EAGAIN || b->admin.st || fresh) break;
    }
    b->admin_used_ms = es_mono_ms();
    pthread_mutex_unlock(&b->admin_lock);
    return err;
}

static int op_declare(ab *b, aconn *c, void *arg)
{
    const char *queue = arg;
    char dq[300];
    snprintf(dq, sizeof dq, "%s.dead", queue);
    int err = ensure_declared(b, c, queue, -1);
    if (!err) err = ensure_declared(b, c, dq, -1);
    return err;
}

static int ab_declare(void *ctx, const char *queue)
{
    ab *b = ctx;
    char dq[300];
    snprintf(dq, sizeof dq, "%s.dead", queue);
    /* The job engine declares before every publish: known ones cost nothing. */
    int64_t now = es_mono_ms();
    pthread_mutex_lock(&b->decl_lock);
    qinfo *q = qinfo_get(b, queue), *d = qinfo_get(b, dq);
    bool known = q && d && q->declared_until > now && d->declared_until > now;
    pthread_mutex_unlock(&b->decl_lock);
    if (known) return ES_OK;
    return admin_run(b, op_declare, (void *)queue);
}

typedef struct depth_arg {
    const char *queue;
    int64_t ready;
    bool purge;
    int64_t purged;
} depth_arg;

/* Counts (or purges) one queue; a missing one is empty. */
static int count_one(ab *b, aconn *c, const char *name, bool purge, int64_t *n)
{
    uint32_t count = 0;
    int err;
    if (purge) {
        if ((err = chan_ensure(b, c))) return err;
        amqp_queue_purge_ok_t *ok = amqp_queue_purge(c->st, CH, amqp_cstring_bytes(name));
        err = rpc_result(b, c, amqp_get_rpc_reply(c->st), "purging queue", name);
        if (!err && ok) count = ok->message_count;
    } else {
        err = queue_declare(b, c, name, true, amqp_empty_table, &count);
    }
    if (err == ES_ENOTFOUND) return ES_ENOTFOUND;
    if (!err) *n += count;
    return err;
}

/* Asks about (or purges) many delay queues of one queue at once, on a
 * channel each (2, 3, …): two round trips instead of two per queue (a
 * missing queue closes its channel).  Channels stay open between calls.
 * want[] says which buckets; on return seen[] says which exist, and their
 * message counts are added to *sum. */
static int scan_delays(ab *b, aconn *c, const char *queue, bool purge, const uint64_t *want,
                       uint64_t *seen, int64_t *sum)
{
    int64_t deadline = es_mono_ms() + b->s.publish_timeout_ms;
    int err = ES_OK, opening = 0, asking = 0;
#define WANTED(bi) (want[(bi) / 64] >> ((bi) % 64) & 1)
    for (int bi = 0; bi < nbuckets && !err; bi++) {
        if (!WANTED(bi) || b->scan_open[bi]) continue;
        amqp_channel_open_t m = {amqp_empty_bytes};
        if (amqp_send_method(c->st, (amqp_channel_t)(2 + bi), AMQP_CHANNEL_OPEN_METHOD, &m))
            err = ES_EAGAIN;
        opening++;
    }
    /* phase 0 waits for channel.open-ok, phase 1 for the answers */
    for (int phase = 0; phase < 2 && !err; phase++) {
        if (phase == 1) {
            for (int bi = 0; bi < nbuckets && !err; bi++) {
                if (!WANTED(bi) || !b->scan_open[bi]) continue;
                char name[300];
                delay_name(name, sizeof name, queue, bi);
                amqp_queue_declare_t qd = {
                    .queue = amqp_cstring_bytes(name), .passive = 1, .arguments = amqp_empty_table};
                amqp_queue_purge_t qp = {.queue = amqp_cstring_bytes(name)};
                int rc = purge ? amqp_send_method(c->st, (amqp_channel_t)(2 + bi),
                                                  AMQP_QUEUE_PURGE_METHOD, &qp)
                               : amqp_send_method(c->st, (amqp_channel_t)(2 + bi),
                                                  AMQP_QUEUE_DECLARE_METHOD, &qd);
                if (rc) err = ES_EAGAIN;
                asking++;
            }
        }
        int *left = phase == 0 ? &opening : &asking;
        while (*left > 0 && !err) {
            int64_t wait = deadline - es_mono_ms();
            struct timeval tv = ms_tv(wait);
            amqp_frame_t f;
            int rc =
                wait > 0 ? amqp_simple_wait_frame_noblock(c->st, &f, &tv) : AMQP_STATUS_TIMEOUT;
            if (rc != AMQP_STATUS_OK) {
                es_warn(COMP, "looking up the delay queues of %s on %s: %s", queue, b->s.shown,
                        amqp_error_string2(rc));
                err = ES_EAGAIN;
                break;
            }
            int bi = (int)f.channel - 2;
            if (f.frame_type != AMQP_FRAME_METHOD || bi < 0 || bi >= nbuckets) {
                if (f.frame_type == AMQP_FRAME_METHOD &&
                    f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
                    server_close(b, c, &f.payload.method, "looking up delay queues of", queue);
                    err = ES_EAGAIN;
                }
                continue;
            }
            switch (f.payload.method.id) {
            case AMQP_CHANNEL_OPEN_OK_METHOD:
                b->scan_open[bi] = true;
                (*left)--;
                break;
            case AMQP_QUEUE_DECLARE_OK_METHOD:
            case AMQP_QUEUE_PURGE_OK_METHOD: {
                uint32_t n =
                    f.payload.method.id == AMQP_QUEUE_DECLARE_OK_METHOD
                        ? ((amqp_queue_declare_ok_t *)f.payload.method.decoded)->message_count
                        : ((amqp_queue_purge_ok_t *)f.payload.method.decoded)->message_count;
                *sum += n;
                seen[bi / 64] |= 1ULL << (bi % 64);
                (*left)--;
                break;
            }
            case AMQP_CHANNEL_CLOSE_METHOD: {
                const amqp_channel_close_t *cc = f.payload.method.decoded;
                if (cc->reply_code != AMQP_NOT_FOUND) {
                    es_warn(COMP, "looking up a delay queue of %s on %s: %d %.*s", queue,
                            b->s.shown, cc->reply_code, (int)cc->reply_text.len,
                            (const char *)cc->reply_text.bytes);
                    err = reply_code_err(cc->reply_code);
                }
                amqp_channel_close_ok_t ok = {0};
                if (amqp_send_method(c->st, f.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok))
                    err = ES_EAGAIN;
                b->scan_open[bi] = false;
                seen[bi / 64] &= ~(1ULL << (bi % 64));
                (*left)--;
                break;
            }
            default: break;
            }
        }
    }
#undef WANTED
    if (c->st) amqp_maybe_release_buffers(c->st);
    if (err == ES_EAGAIN) conn_drop(c); /* the channels' state is unknown now */
    return err;
}

/* The queue and its delay queues: those known to exist, and now and then
 * (always for a purge) every other possible one, made by other processes. */
static int op_depth(ab *b, aconn *c, void *arg)
{
    depth_arg *a = arg;
    int64_t *sum = a->purge ? &a->purged : &a->ready;
    *sum = 0;
    int err = count_one(b, c, a->queue, a->purge, sum);
    if (err && err != ES_ENOTFOUND) return err;

    int64_t now = es_mono_ms();
    uint64_t seen[BUCKETS_MAX / 64], want[BUCKETS_MAX / 64];
    pthread_mutex_lock(&b->decl_lock);
    qinfo *q = qinfo_get(b, a->queue);
    bool full = !q || a->purge || q->scanned_ms == 0 || now - q->scanned_ms >= SCAN_EVERY_MS;
    if (q) memcpy(seen, q->delay_seen, sizeof seen);
    pthread_mutex_unlock(&b->decl_lock);
    if (!q) return ES_ENOMEM;
    memcpy(want, seen, sizeof want);
    if (full) memset(want, 0xff, sizeof want);

    if ((err = scan_delays(b, c, a->queue, a->purge, want, seen, sum))) return err;
    pthread_mutex_lock(&b->decl_lock);
    memcpy(q->delay_seen, seen, sizeof seen);
    if (full) q->scanned_ms = now;
    pthread_mutex_unlock(&b->decl_lock);
    return ES_OK;
}

static int ab_depth(void *ctx, const char *queue, int64_t *ready, int64_t *unacked)
{
    ab *b = ctx;
    /* RabbitMQ refills a consumer's prefetch window at once, so messages
     * sent to our consumers but not yet handed to their callers count as
     * ready (as they would in the local queue): read them in first, where
     * a consumer is not busy, then ask the server. */
    int64_t waiting = 0, held = 0;
    pthread_mutex_lock(&b->cons_lock);
    for (acons *c = b->consumers; c; c = c->next) {
        if (strcmp(c->queue, queue) != 0) continue;
        if (pthread_mutex_trylock(&c->lock) == 0) {
            pump_consumer(c);
            pthread_mutex_unlock(&c->lock);
        }
        int read_ahead = atomic_load(&c->nstash);
        waiting += read_ahead;
        held += atomic_load(&c->held) - read_ahead;
    }
    pthread_mutex_unlock(&b->cons_lock);

    depth_arg a = {.queue = queue};
    int err = admin_run(b, op_depth, &a);
    if (err) return err;
    *ready = a.ready + waiting;
    *unacked = held;
    return ES_OK;
}

static int ab_purge(void *ctx, const char *queue)
{
    ab *b = ctx;
    depth_arg a = {.queue = queue, .purge = true};
    int err = admin_run(b, op_depth, &a);
    if (!err) es_info(COMP, "purged %lld message(s) from %s", (long long)a.purged, queue);
    return err;
}

static int op_ping(ab *b, aconn *c, void *arg)
{
    (void)arg;
    int err = chan_ensure(b, c);
    if (err) return err;
    amqp_exchange_declare(c->st, CH, amqp_cstring_bytes("amq.direct"), amqp_cstring_bytes("direct"),
                          1, 0, 0, 0, amqp_empty_table);
    return rpc_result(b, c, amqp_get_rpc_reply(c->st), "ping", "amq.direct");
}

static int ab_ping(void *ctx)
{
    return admin_run(ctx, op_ping, NULL);
}

/* ----------------------------------------------------------------- keeper */

static void keep_lanes(ab *b)
{
    int64_t now = es_mono_ms();
    for (int i = 0; i < b->nlanes; i++) {
        lane *l = &b->lanes[i];
        pthread_mutex_lock(&b->gc_lock);
        bool mine = !l->busy && l->c.st && now - l->used_ms >= KEEP_EVERY_MS;
        if (mine) l->busy = true;
        pthread_mutex_unlock(&b->gc_lock);
        if (!mine) continue;
        pump_idle(b, &l->c, "publisher");
        pthread_mutex_lock(&b->gc_lock);
        lane_released(b, l);
        pthread_mutex_unlock(&b->gc_lock);
    }
}

static void keep_others(ab *b)
{
    int64_t now = es_mono_ms();
    if (pthread_mutex_trylock(&b->admin_lock) == 0) {
        if (b->admin.st && now - b->admin_used_ms >= KEEP_EVERY_MS)
            pump_idle(b, &b->admin, "broker");
        pthread_mutex_unlock(&b->admin_lock);
    }
    pthread_mutex_lock(&b->cons_lock);
    for (acons *c = b->consumers; c; c = c->next) {
        if (pthread_mutex_trylock(&c->lock) != 0) continue; /* in use: rabbitmq-c beats */
        if (now - c->used_ms >= KEEP_EVERY_MS) pump_consumer(c);
        pthread_mutex_unlock(&c->lock);
    }
    pthread_mutex_unlock(&b->cons_lock);
}

static void *keeper_main(void *arg)
{
    ab *b = arg;
    pthread_mutex_lock(&b->keeper_lock);
    while (!b->stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += KEEP_EVERY_MS / 1000;
        pthread_cond_timedwait(&b->keeper_cond, &b->keeper_lock, &ts);
        if (b->stopping) break;
        pthread_mutex_unlock(&b->keeper_lock);
        keep_lanes(b);
        keep_others(b);
        pthread_mutex_lock(&b->keeper_lock);
    }
    pthread_mutex_unlock(&b->keeper_lock);
    return NULL;
}

/* ------------------------------------------------------------ open, close */

static void ab_close(void *ctx)
{
    ab *b = ctx;
    if (!b) return;
    if (b->keeper_started) {
        pthread_mutex_lock(&b->keeper_lock);
        b->stopping = true;
        pthread_cond_signal(&b->keeper_cond);
        pthread_mutex_unlock(&b->keeper_lock);
        pthread_join(b->keeper, NULL);
    }
    if (b->consumers) es_warn(COMP, "closing the broker with consumers still open");
    for (int i = 0; i < b->nlanes; i++) {
        lane *l = &b->lanes[i];
        conn_close(&l->c);
        free(l->owner);
        free(l->sent);
        free(l->settled);
        free(l->hdr);
    }
    free(b->lanes);
    conn_close(&b->admin);
    for (int i = 0; i < QINFO_BUCKETS; i++)
        for (qinfo *q = b->qtab[i], *next; q; q = next) {
            next = q->next;
            free(q->name);
            free(q);
        }
    pthread_cond_destroy(&b->keeper_cond);
    pthread_mutex_destroy(&b->keeper_lock);
    pthread_mutex_destroy(&b->cons_lock);
    pthread_mutex_destroy(&b->decl_lock);
    pthread_mutex_destroy(&b->admin_lock);
    pthread_mutex_destroy(&b->gc_lock);
    explicit_bzero(&b->s, sizeof b->s);
    free(b);
}

static int ab_open(const char *url, const es_config *cfg, void **out)
{
    (void)cfg;
    pthread_once(&buckets_once, buckets_init);
    ab *b = calloc(1, sizeof *b);
    if (!b) return ES_ENOMEM;
    int err = parse_url(url, &b->s);
    if (err) {
        explicit_bzero(&b->s, sizeof b->s);
        free(b);
        return err;
    }
    pthread_mutex_init(&b->gc_lock, NULL);
    pthread_mutex_init(&b->admin_lock, NULL);
    pthread_mutex_init(&b->decl_lock, NULL);
    pthread_mutex_init(&b->cons_lock, NULL);
    pthread_mutex_init(&b->keeper_lock, NULL);
    if ((err = es_cond_init(&b->keeper_cond))) {
        pthread_cond_init(&b->keeper_cond, NULL); /* so that close can destroy it */
        goto fail;
    }
    b->lanes = calloc((size_t)b->s.publishers, sizeof *b->lanes);
    if (!b->lanes) {
        err = ES_ENOMEM;
        goto fail;
    }
    b->nlanes = b->s.publishers;
    for (int i = 0; i < b->nlanes; i++)
        b->lanes[i].c.confirm = true;

    /* Fail now, with the server's reason, rather than at the first use. */
    if ((err = admin_run(b, op_ping, NULL))) {
        es_error(COMP, "cannot use the broker at %s: %s", b->s.shown, es_strerror(err));
        goto fail;
    }
    if (b->s.heartbeat > 0) {
        if (pthread_create(&b->keeper, NULL, keeper_main, b) != 0) {
            err = ES_ENOMEM;
            goto fail;
        }
        b->keeper_started = true;
    }
    es_info(COMP, "broker %s: %d publisher connection(s), heartbeat %d s", b->s.shown, b->nlanes,
            b->s.heartbeat);
    *out = b;
    return ES_OK;
fail:
    ab_close(b);
    return err;
}

const es_broker_ops es_broker_amqp = {
    .name = "amqp",
    .scheme = "amqp",
    .open = ab_open,
    .close = ab_close,
    .declare = ab_declare,
    .publish = ab_publish,
    .consumer_open = ab_consumer_open,
    .next = ab_next,
    .ack = ab_ack,
    .retry = ab_retry,
    .dead = ab_dead,
    .consumer_close = ab_consumer_close,
    .depth = ab_depth,
    .purge = ab_purge,
    .ping = ab_ping,
};
