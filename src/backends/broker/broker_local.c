/* broker_local.c - the embedded broker (local:DIR): a durable queue in SQLite.
 *
 * Every message is a row of DIR/queue.db (WAL).  A consumer *leases* rows by
 * writing its owner (this process: pid, start time, boot) and its consumer id
 * into them; a leased row is invisible to every other consumer until it is
 * acked (deleted), retried (lease cleared, attempts + 1, visible later),
 * dead-lettered (moved to "Q.dead") or released (consumer closed, or its
 * process died).  Leases never expire by time: a slow handler in a live
 * process keeps its message.  Instead every process checks, at open and about
 * once a second, whether the owners of leases are still alive, and releases
 * the leases of dead ones (marked redelivered).
 *
 * Order: a queue is served by due time, then by id.  A new message is due at
 * its publish time, so one publisher's messages come out in order (unless
 * the wall clock steps back), and a retried message rejoins the line at the
 * time its delay ends - one index range scan finds the next message however
 * many delayed ones wait.
 *
 * One connection per broker, guarded by db_lock: every statement is short,
 * and SQLite serialises writers anyway.  publish() is the hot path of event
 * ingestion, so concurrent publishers are group-committed: each appends its
 * request to a list, one of them (the leader) writes everything pending in
 * one transaction, and wakes the others with the shared result.
 *
 * Consumers wait on their own condition variable, signalled by publish,
 * retry and release in this process; other processes' messages and delayed
 * ones becoming due are found by polling every POLL_MS.
 *
 * Checkpoints of queue.db run on a thread of their own (sqlite_ckpt.h): in
 * a publisher's commit, with their fsync, they made an event's 202 wait up
 * to 60 ms.
 *
 * Locks: db_lock may be held while taking wake_lock, never the reverse;
 * gc_lock is never held with either.
 *
 * Limits: the directory must be on a local file system (WAL needs shared
 * memory).  Leases of a process in another pid namespace are never taken
 * back from here (we cannot tell whether it lives): processes sharing a
 * queue should share a pid namespace.  A process that forks must not use its
 * broker in the child. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "backends/sqlite_ckpt.h"
#include "esteira/broker.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "broker"

#define POLL_MS         100  /* how often a waiting consumer looks for others' messages */
#define RECLAIM_MS      1000 /* how often dead owners' leases are looked for */
#define LEASE_BATCH_MAX 64   /* rows leased by one transaction when prefetch allows */
#define BUSY_TIMEOUT_MS 10000
#define CKPT_PAGES      16384 /* WAL pages (64 MB) that wake the checkpointer */
#define CKPT_EVERY_MS   10000 /* and checkpoint at least this often */
#define OWNERS_MAX      1024  /* distinct lease owners examined per round */
#define SCHEMA_VERSION  1

enum {
    ST_BEGIN,
    ST_BEGIN_READ,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_INSERT,
    ST_READY,
    ST_LEASE,
    ST_ACK,
    ST_RETRY,
    ST_DEAD,
    ST_RELEASE_ONE,
    ST_RELEASE_CONSUMER,
    ST_OWNERS,
    ST_RELEASE_OWNER,
    ST_DEPTH,
    ST_PURGE,
    ST_PING,
    ST_SYNC_FULL,
    ST_SYNC_NORMAL,
    ST_COUNT
};

static const char *const sql_text[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_INSERT] = "INSERT INTO messages (queue, body, headers, attempts, published_ms, "
                  "visible_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    /* Walks messages_ready in (visible_at_ms, id) order. */
    [ST_READY] = "SELECT id, body, headers, attempts, redelivered, published_ms FROM messages "
                 "WHERE queue = ?1 AND lease_owner IS NULL AND visible_at_ms <= ?2 "
                 "ORDER BY visible_at_ms, id LIMIT ?3",
    [ST_LEASE] = "UPDATE messages SET lease_owner = ?2, lease_cid = ?3 "
                 "WHERE id = ?1 AND lease_owner IS NULL",
    [ST_ACK] = "DELETE FROM messages WHERE id = ?1 AND lease_owner = ?2 AND lease_cid = ?3",
    [ST_RETRY] = "UPDATE messages SET attempts = attempts + 1, visible_at_ms = ?4, "
                 "redelivered = 0, lease_owner = NULL, lease_cid = NULL "
                 "WHERE id = ?1 AND lease_owner = ?2 AND lease_cid = ?3",
    [ST_DEAD] = "UPDATE messages SET queue = ?4, headers = ?5, dead_reason = ?6, "
                "visible_at_ms = ?7, redelivered = 0, lease_owner = NULL, lease_cid = NULL "
                "WHERE id = ?1 AND lease_owner = ?2 AND lease_cid = ?3",
    /* Leased but never handed out: back as it was. */
    [ST_RELEASE_ONE] = "UPDATE messages SET lease_owner = NULL, lease_cid = NULL "
                       "WHERE id = ?1 AND lease_owner = ?2 AND lease_cid = ?3",
    [ST_RELEASE_CONSUMER] = "UPDATE messages SET lease_owner = NULL, lease_cid = NULL, "
                            "redelivered = 1 WHERE lease_owner = ?1 AND lease_cid = ?2",
    [ST_OWNERS] = "SELECT DISTINCT lease_owner FROM messages WHERE lease_owner IS NOT NULL",
    [ST_RELEASE_OWNER] = "UPDATE messages SET lease_owner = NULL, lease_cid = NULL, "
                         "redelivered = 1 WHERE lease_owner = ?1",
    [ST_DEPTH] = "SELECT (SELECT count(*) FROM messages WHERE queue = ?1 AND lease_owner IS NULL), "
                 "(SELECT count(*) FROM messages WHERE queue = ?1 AND lease_owner IS NOT NULL)",
    [ST_PURGE] = "DELETE FROM messages WHERE queue = ?1 AND lease_owner IS NULL",
    [ST_PING] = "SELECT count(*) FROM sqlite_schema",
    [ST_SYNC_FULL] = "PRAGMA synchronous=FULL",
    [ST_SYNC_NORMAL] = "PRAGMA synchronous=NORMAL",
};

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS messages ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT," /* never reused: ids are delivery tags */
    " queue TEXT NOT NULL,"
    " body BLOB NOT NULL,"
    " headers BLOB," /* key NUL value NUL …, NULL when none */
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " published_ms INTEGER NOT NULL,"
    " visible_at_ms INTEGER NOT NULL,"
    " lease_owner TEXT,"  /* the leasing process, see self_identity() */
    " lease_cid INTEGER," /* the consumer within it */
    " redelivered INTEGER NOT NULL DEFAULT 0,"
    " dead_reason TEXT);"
    "CREATE INDEX IF NOT EXISTS messages_ready ON messages (queue, visible_at_ms)"
    " WHERE lease_owner IS NULL;"
    "CREATE INDEX IF NOT EXISTS messages_leased ON messages (lease_owner, lease_cid, queue)"
    " WHERE lease_owner IS NOT NULL;";

typedef struct lq_consumer lq_consumer;

/* One publish() call waiting for the group commit. */
typedef struct pub_req {
    const es_msg *msgs;
    size_t n;
    int rc;
    bool done;
    struct pub_req *next;
} pub_req;

typedef struct lq {
    char *dir;
    char owner[160]; /* "pid:starttime:boot_id:pidns", see self_identity */
    char boot[40], pidns[24];
    bool sync_full;

    pthread_mutex_t db_lock; /* the connection, its statements, hdr */
    sqlite3 *db;
    sqlite3_stmt *st[ST_COUNT];
    es_buf hdr; /* header encoding scratch */

    pthread_mutex_t gc_lock; /* group commit */
    pthread_cond_t gc_cond;
    pub_req *gc_head, *gc_tail;
    bool gc_leader;

    pthread_mutex_t wake_lock; /* the consumers list and their wait state */
    lq_consumer *consumers;

    es_ckpt *ckpt; /* checkpoints queue.db off the publishers' commits */

    pthread_mutex_t keeper_lock; /* the reclaimer thread */
    pthread_cond_t keeper_cond;
    pthread_t keeper;
    bool keeper_started, stopping;
} lq;

struct lq_consumer {
    lq *q;
    char *queue;
    int64_t cid;
    int prefetch;
    /* Rows this consumer holds a lease on: buffered plus handed out and not
     * yet settled.  Atomic so that a settle from another thread is safe. */
    atomic_int held;
    es_delivery *buf; /* leased, not yet handed out, in delivery order */
    int head, nbuf, cap;
    /* under q->wake_lock */
    pthread_cond_t cond;
    bool waiting, woken;
    lq_consumer *prev, *next;
};

/* Consumer ids are unique per process, whatever number of brokers it opens. */
static atomic_llong next_cid = 1;

/* ------------------------------------------------------------ small things */

static int sqlite_to_err(int code)
{
    switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return ES_EAGAIN;
    case SQLITE_NOMEM: return ES_ENOMEM;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
    case SQLITE_PERM: return ES_EIO;
    default: return ES_EBACKEND;
    }
}

/* Logs SQLite's own message; call with db_lock held, right after the failure. */
static int db_fail(lq *q, int code, const char *what)
{
    es_error(COMP, "local queue %s: %s: %s", q->dir, what, sqlite3_errmsg(q->db));
    return sqlite_to_err(code);
}

/* Steps a statement that returns no rows, and resets it. */
static int step_done(lq *q, int which, const char *what)
{
    sqlite3_stmt *st = q->st[which];
    int rc = sqlite3_step(st);
    int err = rc == SQLITE_DONE ? ES_OK : db_fail(q, rc, what);
    sqlite3_reset(st);
    return err;
}

static void rollback_if_open(lq *q)
{
    if (!sqlite3_get_autocommit(q->db)) (void)step_done(q, ST_ROLLBACK, "rollback");
}

static int mkdir_p(const char *dir)
{
    char path[PATH_MAX];
    if (es_strlcpy(path, dir, sizeof path) >= sizeof path) return ES_EINVAL;
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            es_error(COMP, "cannot create %s: %s", path, strerror(errno));
            return ES_EIO;
        }
        *p = c;
        if (c == '\0') break;
    }
    return ES_OK;
}

/* ------------------------------------------------ who owns a lease, alive? */

/* State and start time (clock ticks after boot, field 22) from
 * /proc/<pid>/stat.  The command name (field 2) may hold spaces and
 * parentheses, so fields are counted from the last ')'. */
static bool proc_stat(const char *pid, char *state, unsigned long long *start)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    FILE *f = fopen(path, "re");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return false;
    p += 2; /* field 3, the state */
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return false;
        p++;
    }
    char *end;
    errno = 0;
    *start = strtoull(p, &end, 10);
    return errno == 0 && end != p;
}

/* The first line of a small /proc file, without its newline; "" if unreadable. */
static void read_line(const char *path, char *out, size_t size)
{
    out[0] = '\0';
    FILE *f = fopen(path, "re");
    if (!f) return;
    if (!fgets(out, (int)size, f)) out[0] = '\0';
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

/* "pid:starttime:boot_id:pidns".  The start time tells a reused pid apart;
 * the boot id, a pid that merely looks the same after a reboot; the pid
 * namespace, pids we cannot see (another container sharing the directory). */
static int self_identity(lq *q)
{
    char state;
    unsigned long long start;
    if (!proc_stat("self", &state, &start)) {
        es_error(COMP, "cannot read /proc/self/stat: the local queue needs /proc");
        return ES_EIO;
    }
    char boot[64], ns[64] = "";
    read_line("/proc/sys/kernel/random/boot_id", boot, sizeof boot);
    ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof ns - 1); /* "pid:[4026531836]" */
    ns[n > 0 ? n : 0] = '\0';
    const char *digits = ns + strcspn(ns, "0123456789");
    int ndigits = (int)strspn(digits, "0123456789");
    snprintf(q->boot, sizeof q->boot, "%s", boot[0] ? boot : "-");
    snprintf(q->pidns, sizeof q->pidns, "%.*s", ndigits, digits);
    if (!q->pidns[0]) snprintf(q->pidns, sizeof q->pidns, "-");
    snprintf(q->owner, sizeof q->owner, "%ld:%llu:%s:%s", (long)getpid(), start, q->boot, q->pidns);
    return ES_OK;
}

/* A lease owner is dead when it ran before the last boot, or when its pid
 * is gone, is a zombie, or now belongs to a process started at another time
 * (the pid was reused).  When we cannot tell (another pid namespace, /proc
 * hidden), it is alive: stealing a live handler's message is the worse
 * error. */
static bool owner_alive(const lq *q, const char *owner)
{
    char copy[160], *save = NULL;
    if (es_strlcpy(copy, owner, sizeof copy) >= sizeof copy) return false;
    const char *f_pid = strtok_r(copy, ":", &save), *f_start = strtok_r(NULL, ":", &save),
               *f_boot = strtok_r(NULL, ":", &save), *f_ns = strtok_r(NULL, ":", &save);
    int64_t pid;
    if (!f_pid || !f_start || !f_boot || !f_ns || es_parse_i64(f_pid, 1, INT_MAX, &pid) != ES_OK)
        return false; /* not written by this code: nobody holds it */
    if (strcmp(f_boot, q->boot) != 0) return false;
    if (strcmp(f_ns, q->pidns) != 0) return true;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH) return false;
    char pidtext[24], state;
    unsigned long long start;
    snprintf(pidtext, sizeof pidtext, "%lld", (long long)pid);
    if (!proc_stat(pidtext, &state, &start)) return true;
    if (state == 'Z' || state == 'X' || state == 'x') return false;
    char want[32];
    snprintf(want, sizeof want, "%llu", start);
    return strcmp(want, f_start) == 0;
}

/* ------------------------------------------------------------------ wakeups */

/* Wakes up to max consumers of queue that wait in next() and may lease. */
static void wake_queue(lq *q, const char *queue, size_t max)
{
    pthread_mutex_lock(&q->wake_lock);
    for (lq_consumer *c = q->consumers; c && max > 0; c = c->next) {
        if (!c->waiting || c->woken || atomic_load(&c->held) >= c->prefetch) continue;
        if (queue && strcmp(c->queue, queue) != 0) continue;
        c->woken = true;
        pthread_cond_signal(&c->cond);
        max--;
    }
    pthread_mutex_unlock(&q->wake_lock);
}

static void wake_one(lq_consumer *c)
{
    pthread_mutex_lock(&c->q->wake_lock);
    if (c->waiting && !c->woken) {
        c->woken = true;
        pthread_cond_signal(&c->cond);
    }
    pthread_mutex_unlock(&c->q->wake_lock);
}

/* ------------------------------------------------------------- reclaiming */

/* Releases the leases of dead processes; returns how many rows came back. */
static int64_t reclaim(lq *q)
{
    char *owners[OWNERS_MAX];
    int n = 0;
    int64_t released = 0;

    pthread_mutex_lock(&q->db_lock);
    sqlite3_stmt *st = q->st[ST_OWNERS];
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW && n < OWNERS_MAX) {
        const char *o = (const char *)sqlite3_column_text(st, 0);
        if (o && strcmp(o, q->owner) != 0 && (owners[n] = strdup(o))) n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) db_fail(q, rc, "listing lease owners");
    sqlite3_reset(st);
    pthread_mutex_unlock(&q->db_lock);

    /* /proc is read without the lock: a dead owner cannot come back. */
    for (int i = 0; i < n; i++) {
        if (owner_alive(q, owners[i])) continue;
        pthread_mutex_lock(&q->db_lock);
        sqlite3_bind_text(q->st[ST_RELEASE_OWNER], 1, owners[i], -1, SQLITE_STATIC);
        if (step_done(q, ST_RELEASE_OWNER, "releasing leases of a dead process") == ES_OK) {
            int64_t k = sqlite3_changes64(q->db);
            released += k;
            if (k > 0)
                es_warn(COMP, "released %lld message(s) leased by dead process %s", (long long)k,
                        owners[i]);
        }
        pthread_mutex_unlock(&q->db_lock);
    }
    for (int i = 0; i < n; i++)
        free(owners[i]);
    if (released > 0) wake_queue(q, NULL, SIZE_MAX);
    return released;
}

static void *keeper_main(void *arg)
{
    lq *q = arg;
    pthread_mutex_lock(&q->keeper_lock);
    while (!q->stopping) {
        struct timespec ts;
        es_deadline(&ts, RECLAIM_MS);
        pthread_cond_timedwait(&q->keeper_cond, &q->keeper_lock, &ts);
        if (q->stopping) break;
        pthread_mutex_unlock(&q->keeper_lock);
        reclaim(q);
        pthread_mutex_lock(&q->keeper_lock);
    }
    pthread_mutex_unlock(&q->keeper_lock);
    return NULL;
}

/* ---------------------------------------------------------- open / close */

static int exec_sql(lq *q, const char *sql, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(q->db, sql, NULL, NULL, &msg);
    if (rc == SQLITE_OK) return ES_OK;
    es_error(COMP, "local queue %s: %s: %s", q->dir, what, msg ? msg : sqlite3_errstr(rc));
    sqlite3_free(msg);
    return sqlite_to_err(rc);
}

static int wal_check(void *arg, int ncol, char **vals, char **names)
{
    (void)names;
    *(bool *)arg = ncol == 1 && vals[0] && strcmp(vals[0], "wal") == 0;
    return 0;
}

static int version_read(void *arg, int ncol, char **vals, char **names)
{
    (void)names;
    if (ncol == 1 && vals[0]) *(int *)arg = (int)strtol(vals[0], NULL, 10);
    return 0;
}

static int db_setup(lq *q, const char *path)
{
    int rc = sqlite3_open_v2(
        path, &q->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        es_error(COMP, "cannot open %s: %s", path,
                 q->db ? sqlite3_errmsg(q->db) : sqlite3_errstr(rc));
        return sqlite_to_err(rc);
    }
    sqlite3_busy_timeout(q->db, BUSY_TIMEOUT_MS);

    bool wal = false;
    char *msg = NULL;
    rc = sqlite3_exec(q->db, "PRAGMA journal_mode=WAL", wal_check, &wal, &msg);
    if (rc != SQLITE_OK || !wal) {
        es_error(COMP, "local queue %s: cannot switch to WAL: %s", q->dir,
                 msg ? msg : "another journal mode is in force");
        sqlite3_free(msg);
        return rc != SQLITE_OK ? sqlite_to_err(rc) : ES_EIO;
    }
    /* NORMAL in WAL mode syncs at checkpoints only: a committed transaction
     * survives the process being killed, not a power loss.  With queue_sync
     * the publishes alone switch to FULL (see insert_batch). */
    int err = exec_sql(q, "PRAGMA synchronous=NORMAL", "setting synchronous");
    if (!err) err = exec_sql(q, "PRAGMA journal_size_limit=67108864", "setting WAL limit");
    if (err) return err;

    int version = 0;
    rc = sqlite3_exec(q->db, "PRAGMA user_version", version_read, &version, NULL);
    if (rc == SQLITE_OK && version > SCHEMA_VERSION) {
        es_error(COMP, "local queue %s has format %d, newer than this esteira's (%d)", q->dir,
                 version, SCHEMA_VERSION);
        return ES_EINVAL;
    }
    err = exec_sql(q, "BEGIN IMMEDIATE", "creating the schema");
    if (!err) err = exec_sql(q, schema_sql, "creating the schema");
    if (!err) err = exec_sql(q, "PRAGMA user_version=1", "creating the schema");
    if (!err) err = exec_sql(q, "COMMIT", "creating the schema");
    if (err) {
        rollback_if_open(q);
        return err;
    }

    for (int i = 0; i < ST_COUNT; i++) {
        rc = sqlite3_prepare_v3(q->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &q->st[i], NULL);
        if (rc != SQLITE_OK) return db_fail(q, rc, "preparing a statement");
    }
    return ES_OK;
}

static void lq_close(void *ctx);

static int lq_open(const char *url, const es_config *cfg, void **ctx)
{
    char dir[PATH_MAX];
    if (strncmp(url, "local:", 6) != 0) return ES_EINVAL;
    const char *p = url + 6;
    if (strncmp(p, "//", 2) == 0) p += 2; /* local:///abs/dir */
    if (*p) {
        if (es_strlcpy(dir, p, sizeof dir) >= sizeof dir) return ES_EINVAL;
    } else if (cfg && cfg->data_dir && *cfg->data_dir) {
        if ((size_t)snprintf(dir, sizeof dir, "%s/queue", cfg->data_dir) >= sizeof dir)
            return ES_EINVAL;
    } else {
        es_error(COMP, "broker URL local: names no directory");
        return ES_EINVAL;
    }

    lq *q = calloc(1, sizeof *q);
    if (!q) return ES_ENOMEM;
    pthread_mutex_init(&q->db_lock, NULL);
    pthread_mutex_init(&q->gc_lock, NULL);
    pthread_cond_init(&q->gc_cond, NULL);
    pthread_mutex_init(&q->wake_lock, NULL);
    pthread_mutex_init(&q->keeper_lock, NULL);
    int err = es_cond_init(&q->keeper_cond);
    if (err) goto fail_locks;
    es_buf_init(&q->hdr, 0);
    q->sync_full = cfg && cfg->queue_sync != 0;

    if (!(q->dir = strdup(dir))) {
        err = ES_ENOMEM;
        goto fail;
    }
    if ((err = self_identity(q)) || (err = mkdir_p(dir))) goto fail;
    char path[PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/queue.db", dir);
    pthread_mutex_lock(&q->db_lock);
    err = db_setup(q, path);
    if (!err) {
        q->ckpt = es_ckpt_start(path, CKPT_PAGES, CKPT_EVERY_MS, BUSY_TIMEOUT_MS);
        es_ckpt_attach(q->ckpt, q->db);
    }
    pthread_mutex_unlock(&q->db_lock);
    if (err) goto fail;

    /* Whatever a killed predecessor held comes back before we start. */
    reclaim(q);
    if (pthread_create(&q->keeper, NULL, keeper_main, q) != 0) {
        es_error(COMP, "cannot start the lease reclaimer thread");
        err = ES_ENOMEM;
        goto fail;
    }
    q->keeper_started = true;
    es_debug(COMP, "local queue %s open (owner %s, sync %s)", dir, q->owner,
             q->sync_full ? "full" : "normal");
    *ctx = q;
    return ES_OK;

fail:
    lq_close(q);
    return err;
fail_locks:
    pthread_mutex_destroy(&q->db_lock);
    pthread_mutex_destroy(&q->gc_lock);
    pthread_cond_destroy(&q->gc_cond);
    pthread_mutex_destroy(&q->wake_lock);
    pthread_mutex_destroy(&q->keeper_lock);
    free(q);
    return err;
}

static void lq_close(void *ctx)
{
    lq *q = ctx;
    if (!q) return;
    if (q->keeper_started) {
        pthread_mutex_lock(&q->keeper_lock);
        q->stopping = true;
        pthread_cond_signal(&q->keeper_cond);
        pthread_mutex_unlock(&q->keeper_lock);
        pthread_join(q->keeper, NULL);
    }
    if (q->consumers)
        es_warn(COMP, "local queue %s closed with consumers still open", q->dir ? q->dir : "");
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(q->st[i]);
    if (q->db) sqlite3_close(q->db);
    es_ckpt_stop(q->ckpt); /* after the connection, whose hook points at it */
    es_buf_finish(&q->hdr);
    pthread_mutex_destroy(&q->db_lock);
    pthread_mutex_destroy(&q->gc_lock);
    pthread_cond_destroy(&q->gc_cond);
    pthread_mutex_destroy(&q->wake_lock);
    pthread_mutex_destroy(&q->keeper_lock);
    pthread_cond_destroy(&q->keeper_cond);
    free(q->dir);
    free(q);
}

/* Nothing to create: a queue is the rows that name it. */
static int lq_declare(void *ctx, const char *queue)
{
    (void)ctx;
    (void)queue;
    return ES_OK;
}

/* ---------------------------------------------------------------- headers */

/* key NUL value NUL …, appended to q->hdr (reset first); skip = a key left out. */
static int headers_encode(lq *q, const es_kv *kv, int n, const char *skip)
{
    es_buf_reset(&q->hdr);
    for (int i = 0; i < n; i++) {
        if (skip && strcmp(kv[i].key, skip) == 0) continue;
        if (es_buf_append(&q->hdr, kv[i].key, strlen(kv[i].key) + 1) ||
            es_buf_append(&q->hdr, kv[i].value, strlen(kv[i].value) + 1))
            return ES_ENOMEM;
    }
    return ES_OK;
}

static void bind_headers(sqlite3_stmt *st, int idx, const es_buf *b)
{
    if (b->len == 0)
        sqlite3_bind_null(st, idx);
    else
        sqlite3_bind_blob(st, idx, b->data, (int)b->len, SQLITE_STATIC);
}

static int headers_decode(const unsigned char *p, size_t len, es_kv **out, int *count)
{
    *out = NULL;
    *count = 0;
    if (len == 0) return ES_OK;
    size_t nul = 0;
    for (size_t i = 0; i < len; i++)
        nul += p[i] == '\0';
    if (nul % 2 != 0 || p[len - 1] != '\0' || nul / 2 > INT_MAX) return ES_EBACKEND;
    int n = (int)(nul / 2);
    es_kv *kv = calloc((size_t)n, sizeof *kv);
    if (!kv) return ES_ENOMEM;
    const char *s = (const char *)p;
    for (int i = 0; i < n; i++) {
        kv[i].key = strdup(s);
        s += strlen(s) + 1;
        kv[i].value = strdup(s);
        s += strlen(s) + 1;
        if (!kv[i].key || !kv[i].value) {
            es_kv_free(kv, i + 1);
            return ES_ENOMEM;
        }
    }
    *out = kv;
    *count = n;
    return ES_OK;
}

/* ---------------------------------------------------------------- publish */

/* With queue_sync, only the commits of publishes sync the WAL (FULL): a lost
 * lease, ack, retry or dead-letter after a power loss means a redelivery,
 * which at-least-once allows, and the next synced commit makes every earlier
 * frame of the WAL durable anyway. */
static int insert_batch(lq *q, pub_req *batch)
{
    sqlite3_stmt *ins = q->st[ST_INSERT];
    int64_t now = es_now_ms();
    if (q->sync_full && step_done(q, ST_SYNC_FULL, "setting synchronous") != ES_OK)
        return ES_EBACKEND;
    int err = step_done(q, ST_BEGIN, "beginning a publish");
    for (pub_req *r = batch; r && !err; r = r->next) {
        for (size_t i = 0; i < r->n && !err; i++) {
            const es_msg *m = &r->msgs[i];
            if ((err = headers_encode(q, m->headers, m->nheaders, NULL))) break;
            sqlite3_bind_text(ins, 1, m->queue, -1, SQLITE_STATIC);
            if (m->len > 0)
                sqlite3_bind_blob64(ins, 2, m->body, m->len, SQLITE_STATIC);
            else
                sqlite3_bind_zeroblob(ins, 2, 0);
            bind_headers(ins, 3, &q->hdr);
            sqlite3_bind_int(ins, 4, m->attempts);
            sqlite3_bind_int64(ins, 5, now);
            sqlite3_bind_int64(ins, 6, now + m->delay_ms);
            err = step_done(q, ST_INSERT, "storing a message");
        }
    }
    if (!err) err = step_done(q, ST_COMMIT, "committing a publish");
    if (err) rollback_if_open(q);
    if (q->sync_full) (void)step_done(q, ST_SYNC_NORMAL, "setting synchronous");
    return err;
}

/* Group commit: whoever finds no leader at work becomes it, takes everything
 * pending and commits it in one transaction; the others sleep until their
 * request is marked done.  While a leader commits, newcomers pile up for the
 * next one, so the batch grows exactly when commits are the bottleneck. */
static int lq_publish(void *ctx, const es_msg *msgs, size_t n)
{
    lq *q = ctx;
    pub_req req = {.msgs = msgs, .n = n};

    pthread_mutex_lock(&q->gc_lock);
    if (q->gc_tail)
        q->gc_tail->next = &req;
    else
        q->gc_head = &req;
    q->gc_tail = &req;
    while (!req.done) {
        if (q->gc_leader) {
            pthread_cond_wait(&q->gc_cond, &q->gc_lock);
            continue;
        }
        q->gc_leader = true;
        pub_req *batch = q->gc_head;
        q->gc_head = q->gc_tail = NULL;
        pthread_mutex_unlock(&q->gc_lock);

        pthread_mutex_lock(&q->db_lock);
        int err = insert_batch(q, batch);
        pthread_mutex_unlock(&q->db_lock);

        pthread_mutex_lock(&q->gc_lock);
        for (pub_req *r = batch, *next; r; r = next) {
            next = r->next; /* r may be gone once done is seen */
            r->rc = err;
            r->done = true;
        }
        q->gc_leader = false;
        pthread_cond_broadcast(&q->gc_cond);
    }
    pthread_mutex_unlock(&q->gc_lock);

    if (req.rc == ES_OK) {
        for (size_t i = 0; i < n;) {
            size_t j = i + 1;
            while (j < n && strcmp(msgs[j].queue, msgs[i].queue) == 0)
                j++;
            wake_queue(q, msgs[i].queue, j - i);
            i = j;
        }
    }
    return req.rc;
}

/* ---------------------------------------------------------------- consume */

static int lq_consumer_open(void *ctx, const char *queue, int prefetch, void **out)
{
    lq *q = ctx;
    lq_consumer *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    if (!(c->queue = strdup(queue)) || es_cond_init(&c->cond) != ES_OK) {
        free(c->queue);
        free(c);
        return ES_ENOMEM;
    }
    c->q = q;
    c->prefetch = prefetch;
    c->cid = atomic_fetch_add(&next_cid, 1);
    atomic_init(&c->held, 0);
    pthread_mutex_lock(&q->wake_lock);
    c->next = q->consumers;
    if (q->consumers) q->consumers->prev = c;
    q->consumers = c;
    pthread_mutex_unlock(&q->wake_lock);
    *out = c;
    return ES_OK;
}

static int buf_reserve(lq_consumer *c, int extra)
{
    if (c->head > 0 && c->head + c->nbuf + extra > c->cap) {
        memmove(c->buf, c->buf + c->head, (size_t)c->nbuf * sizeof *c->buf);
        c->head = 0;
    }
    if (c->nbuf + extra <= c->cap) return ES_OK;
    int cap = c->cap ? c->cap : 8;
    while (cap < c->nbuf + extra)
        cap *= 2;
    es_delivery *nb = realloc(c->buf, (size_t)cap * sizeof *nb);
    if (!nb) return ES_ENOMEM;
    c->buf = nb;
    c->cap = cap;
    return ES_OK;
}

static int row_to_delivery(lq_consumer *c, sqlite3_stmt *st, es_delivery *d)
{
    memset(d, 0, sizeof *d);
    d->tag = (uint64_t)sqlite3_column_int64(st, 0);
    const void *body = sqlite3_column_blob(st, 1);
    size_t len = (size_t)sqlite3_column_bytes(st, 1);
    const unsigned char *hdr = sqlite3_column_blob(st, 2);
    size_t hlen = (size_t)sqlite3_column_bytes(st, 2);
    d->attempts = sqlite3_column_int(st, 3);
    d->redelivered = sqlite3_column_int(st, 4) != 0;
    d->published_ms = sqlite3_column_int64(st, 5);
    d->queue = strdup(c->queue);
    d->body = malloc(len + 1);
    if (!d->queue || !d->body) goto fail;
    if (len) memcpy(d->body, body, len);
    d->body[len] = '\0';
    d->len = len;
    int err = headers_decode(hdr, hlen, &d->headers, &d->nheaders);
    if (err == ES_ENOMEM) goto fail;
    if (err)
        es_warn(COMP, "local queue %s: message %llu has malformed headers; dropped them", c->q->dir,
                (unsigned long long)d->tag);
    return ES_OK;
fail:
    free(d->queue);
    free(d->body);
    memset(d, 0, sizeof *d);
    return ES_ENOMEM;
}

/* One try at leasing up to want rows into dst: read them, then mark each.
 * The transaction starts as a read, so an idle consumer's polls take no
 * write lock; *busy says another process wrote in between (try again). */
static int lease_try(lq_consumer *c, es_delivery *dst, int want, int *got, bool *busy)
{
    lq *q = c->q;
    sqlite3_stmt *sel = q->st[ST_READY], *upd = q->st[ST_LEASE];
    int err = step_done(q, ST_BEGIN_READ, "beginning a lease");
    if (err) return err;

    sqlite3_bind_text(sel, 1, c->queue, -1, SQLITE_STATIC);
    sqlite3_bind_int64(sel, 2, es_now_ms());
    sqlite3_bind_int(sel, 3, want);
    int rc = SQLITE_DONE;
    while (*got < want && (rc = sqlite3_step(sel)) == SQLITE_ROW) {
        if ((err = row_to_delivery(c, sel, &dst[*got]))) break;
        (*got)++;
    }
    if (!err && *got < want && rc != SQLITE_DONE) err = db_fail(q, rc, "reading ready messages");
    sqlite3_reset(sel);

    for (int i = 0; i < *got && !err; i++) {
        sqlite3_bind_int64(upd, 1, (sqlite3_int64)dst[i].tag);
        sqlite3_bind_text(upd, 2, q->owner, -1, SQLITE_STATIC);
        sqlite3_bind_int64(upd, 3, c->cid);
        rc = sqlite3_step(upd);
        if (rc != SQLITE_DONE) {
            if ((rc & 0xff) == SQLITE_BUSY)
                *busy = true;
            else
                err = db_fail(q, rc, "leasing a message");
        }
        sqlite3_reset(upd);
        if (*busy) break;
    }
    if (!err && !*busy) {
        rc = sqlite3_step(q->st[ST_COMMIT]);
        if (rc != SQLITE_DONE) {
            if ((rc & 0xff) == SQLITE_BUSY)
                *busy = true;
            else
                err = db_fail(q, rc, "committing a lease");
        }
        sqlite3_reset(q->st[ST_COMMIT]);
    }
    if (err || *busy) {
        rollback_if_open(q);
        for (int i = 0; i < *got; i++)
            es_delivery_finish(&dst[i]);
        *got = 0;
    }
    return err;
}

/* Leases up to want ready rows into the buffer, in one transaction. */
static int lease_batch(lq_consumer *c, int want)
{
    lq *q = c->q;
    int err = buf_reserve(c, want);
    if (err) return err;
    es_delivery *dst = c->buf + c->head + c->nbuf;
    int got = 0;

    pthread_mutex_lock(&q->db_lock);
    /* A read transaction cannot become a write one once another process has
     * committed since it began (SQLITE_BUSY_SNAPSHOT): start again. */
    for (int attempt = 0; attempt < 5; attempt++) {
        bool busy = false;
        err = lease_try(c, dst, want, &got, &busy);
        if (err || !busy) break;
        err = ES_EAGAIN;
    }
    pthread_mutex_unlock(&q->db_lock);
    if (err == ES_EAGAIN) es_warn(COMP, "local queue %s: leasing lost to other writers", q->dir);

    c->nbuf += got;
    atomic_fetch_add(&c->held, got);
    return err;
}

static int lq_next(void *consumer, int timeout_ms, es_delivery *out)
{
    lq_consumer *c = consumer;
    lq *q = c->q;
    int64_t deadline = timeout_ms < 0 ? INT64_MAX : es_mono_ms() + timeout_ms;
    int err;

    /* Registered as waiting before looking, so that a publish between our
     * look and our sleep is not missed. */
    pthread_mutex_lock(&q->wake_lock);
    c->waiting = true;
    c->woken = false;
    pthread_mutex_unlock(&q->wake_lock);
    for (;;) {
        if (c->nbuf > 0) {
            *out = c->buf[c->head];
            c->head++;
            if (--c->nbuf == 0) c->head = 0;
            err = ES_OK;
            break;
        }
        int room = c->prefetch - atomic_load(&c->held);
        if (room > 0) {
            if ((err = lease_batch(c, room < LEASE_BATCH_MAX ? room : LEASE_BATCH_MAX))) break;
            if (c->nbuf > 0) continue;
        }
        int64_t now = es_mono_ms();
        if (now >= deadline) {
            err = ES_ETIMEDOUT;
            break;
        }
        struct timespec ts;
        es_deadline(&ts, deadline - now < POLL_MS ? deadline - now : POLL_MS);
        pthread_mutex_lock(&q->wake_lock);
        if (!c->woken) pthread_cond_timedwait(&c->cond, &q->wake_lock, &ts);
        c->woken = false;
        pthread_mutex_unlock(&q->wake_lock);
    }
    pthread_mutex_lock(&q->wake_lock);
    c->waiting = false;
    pthread_mutex_unlock(&q->wake_lock);
    return err;
}

/* A settled message frees a prefetch slot; a next() waiting for one (when
 * another thread settles) must hear of it. */
static void settled(lq_consumer *c)
{
    if (atomic_fetch_sub(&c->held, 1) == c->prefetch) wake_one(c);
}

static int settle_result(lq_consumer *c, const es_delivery *d, int err, const char *what)
{
    if (err) return err;
    if (sqlite3_changes64(c->q->db) == 0) {
        es_warn(COMP, "local queue %s: %s of message %llu, which this consumer does not hold",
                c->q->dir, what, (unsigned long long)d->tag);
        return ES_ENOTFOUND;
    }
    settled(c);
    return ES_OK;
}

static void bind_lease(lq_consumer *c, sqlite3_stmt *st, uint64_t id)
{
    sqlite3_bind_int64(st, 1, (sqlite3_int64)id);
    sqlite3_bind_text(st, 2, c->q->owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, c->cid);
}

static int lq_ack(void *consumer, const es_delivery *d)
{
    lq_consumer *c = consumer;
    lq *q = c->q;
    pthread_mutex_lock(&q->db_lock);
    bind_lease(c, q->st[ST_ACK], d->tag);
    int err = step_done(q, ST_ACK, "acknowledging a message");
    err = settle_result(c, d, err, "ack");
    pthread_mutex_unlock(&q->db_lock);
    return err;
}

/* One transaction for all: each ack alone would write its pages to the WAL. */
static int lq_ack_many(void *consumer, const es_delivery *ds, size_t n)
{
    lq_consumer *c = consumer;
    lq *q = c->q;
    pthread_mutex_lock(&q->db_lock);
    int err = step_done(q, ST_BEGIN, "beginning acks");
    size_t done = 0;
    for (size_t i = 0; i < n && !err; i++) {
        bind_lease(c, q->st[ST_ACK], ds[i].tag);
        err = step_done(q, ST_ACK, "acknowledging a message");
        if (!err && sqlite3_changes64(q->db) == 0) {
            es_warn(COMP, "local queue %s: ack of message %llu, which this consumer does not hold",
                    q->dir, (unsigned long long)ds[i].tag);
            err = ES_ENOTFOUND;
        }
        done += !err;
    }
    if (!err) err = step_done(q, ST_COMMIT, "committing acks");
    if (err) {
        rollback_if_open(q);
        done = 0;
    }
    for (size_t i = 0; i < done; i++)
        settled(c);
    pthread_mutex_unlock(&q->db_lock);
    return err;
}

static int lq_retry(void *consumer, const es_delivery *d, int64_t delay_ms)
{
    lq_consumer *c = consumer;
    lq *q = c->q;
    pthread_mutex_lock(&q->db_lock);
    sqlite3_stmt *st = q->st[ST_RETRY];
    bind_lease(c, st, d->tag);
    sqlite3_bind_int64(st, 4, es_now_ms() + delay_ms);
    int err = step_done(q, ST_RETRY, "retrying a message");
    err = settle_result(c, d, err, "retry");
    pthread_mutex_unlock(&q->db_lock);
    if (!err && delay_ms == 0) wake_queue(q, c->queue, 1);
    return err;
}

static int lq_dead(void *consumer, const es_delivery *d, const char *reason)
{
    lq_consumer *c = consumer;
    lq *q = c->q;
    char dq[256];
    if ((size_t)snprintf(dq, sizeof dq, "%s.dead", c->queue) >= sizeof dq) return ES_EINVAL;

    pthread_mutex_lock(&q->db_lock);
    sqlite3_stmt *st = q->st[ST_DEAD];
    /* The headers as delivered, with the reason replacing any earlier one. */
    int err = headers_encode(q, d->headers, d->nheaders, ES_BROKER_DEAD_REASON_HEADER);
    if (!err && (es_buf_append(&q->hdr, ES_BROKER_DEAD_REASON_HEADER,
                               sizeof ES_BROKER_DEAD_REASON_HEADER) ||
                 es_buf_append(&q->hdr, reason, strlen(reason) + 1)))
        err = ES_ENOMEM;
    if (!err) {
        bind_lease(c, st, d->tag);
        sqlite3_bind_text(st, 4, dq, -1, SQLITE_STATIC);
        bind_headers(st, 5, &q->hdr);
        sqlite3_bind_text(st, 6, reason, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 7, es_now_ms());
        err = step_done(q, ST_DEAD, "dead-lettering a message");
        err = settle_result(c, d, err, "dead-letter");
    }
    pthread_mutex_unlock(&q->db_lock);
    if (!err) wake_queue(q, dq, 1);
    return err;
}

/* Hands back what the consumer holds: buffered rows as they were, rows it
 * handed out (and nobody settled) marked redelivered. */
static void lq_consumer_close(void *consumer)
{
    lq_consumer *c = consumer;
    if (!c) return;
    lq *q = c->q;
    int64_t released = 0;

    pthread_mutex_lock(&q->wake_lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        q->consumers = c->next;
    if (c->next) c->next->prev = c->prev;
    pthread_mutex_unlock(&q->wake_lock);

    if (atomic_load(&c->held) > 0) {
        pthread_mutex_lock(&q->db_lock);
        int err = step_done(q, ST_BEGIN, "releasing a consumer's messages");
        for (int i = 0; i < c->nbuf && !err; i++) {
            bind_lease(c, q->st[ST_RELEASE_ONE], c->buf[c->head + i].tag);
            err = step_done(q, ST_RELEASE_ONE, "releasing a message");
            released += sqlite3_changes64(q->db);
        }
        if (!err) {
            sqlite3_bind_text(q->st[ST_RELEASE_CONSUMER], 1, q->owner, -1, SQLITE_STATIC);
            sqlite3_bind_int64(q->st[ST_RELEASE_CONSUMER], 2, c->cid);
            err = step_done(q, ST_RELEASE_CONSUMER, "releasing a consumer's messages");
            released += sqlite3_changes64(q->db);
        }
        if (!err) err = step_done(q, ST_COMMIT, "releasing a consumer's messages");
        if (err) {
            rollback_if_open(q);
            released = 0;
            /* They stay leased to this process: back when it exits. */
            es_error(COMP, "local queue %s: messages of a closed consumer stay held", q->dir);
        }
        pthread_mutex_unlock(&q->db_lock);
    }
    if (released > 0) wake_queue(q, c->queue, (size_t)released);

    for (int i = 0; i < c->nbuf; i++)
        es_delivery_finish(&c->buf[c->head + i]);
    free(c->buf);
    pthread_cond_destroy(&c->cond);
    free(c->queue);
    free(c);
}

/* ------------------------------------------------------------ inspection */

static int lq_depth(void *ctx, const char *queue, int64_t *ready, int64_t *unacked)
{
    lq *q = ctx;
    pthread_mutex_lock(&q->db_lock);
    sqlite3_stmt *st = q->st[ST_DEPTH];
    sqlite3_bind_text(st, 1, queue, -1, SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int err = ES_OK;
    if (rc == SQLITE_ROW) {
        *ready = sqlite3_column_int64(st, 0);
        *unacked = sqlite3_column_int64(st, 1);
    } else {
        err = db_fail(q, rc, "counting messages");
    }
    sqlite3_reset(st);
    pthread_mutex_unlock(&q->db_lock);
    return err;
}

static int lq_purge(void *ctx, const char *queue)
{
    lq *q = ctx;
    pthread_mutex_lock(&q->db_lock);
    sqlite3_bind_text(q->st[ST_PURGE], 1, queue, -1, SQLITE_STATIC);
    int err = step_done(q, ST_PURGE, "purging a queue");
    if (!err)
        es_info(COMP, "purged %lld message(s) from %s", (long long)sqlite3_changes64(q->db), queue);
    pthread_mutex_unlock(&q->db_lock);
    return err;
}

static int lq_ping(void *ctx)
{
    lq *q = ctx;
    pthread_mutex_lock(&q->db_lock);
    sqlite3_stmt *st = q->st[ST_PING];
    int rc = sqlite3_step(st);
    int err = rc == SQLITE_ROW ? ES_OK : db_fail(q, rc, "ping");
    sqlite3_reset(st);
    pthread_mutex_unlock(&q->db_lock);
    return err;
}

const es_broker_ops es_broker_local = {
    .name = "local",
    .scheme = "local",
    .open = lq_open,
    .close = lq_close,
    .declare = lq_declare,
    .publish = lq_publish,
    .consumer_open = lq_consumer_open,
    .next = lq_next,
    .ack = lq_ack,
    .ack_many = lq_ack_many,
    .retry = lq_retry,
    .dead = lq_dead,
    .consumer_close = lq_consumer_close,
    .depth = lq_depth,
    .purge = lq_purge,
    .ping = lq_ping,
};
