/* event_store.c - events out of the broker into user_interactions.
 *
 * Each flusher thread has its own consumer of queue "events" and a buffer of
 * deliveries (each a group of rows, see events.c).  It flushes when the
 * buffer holds ESTEIRA_EVENTS_BATCH_MAX events, when its oldest event is
 * ESTEIRA_EVENTS_FLUSH_MS old, or when it is stopping.  A flush is one
 * transaction: es_store_copy_merge (COPY on PostgreSQL; ids stored already
 * are left out, so a redelivered message stores nothing twice) and the
 * hour's row of event_flushes; the deliveries are acked after the commit.
 *
 * Failures are told apart by what they mean (see events.h): a store that is
 * unreachable holds the flush (no attempt spent).  Any other failure is
 * about some rows: the flush is done again row by row (a savepoint each, one
 * transaction), the good rows go in, and the failed ones go back to the
 * broker as a new message with attempts + 1 after the kind's backoff; after
 * the last attempt they become dead jobs of kind "events" (one per tenant),
 * which a re-drive stores through es_job_ctx_conn, exactly once like any job
 * effect.  Only then are the deliveries acked. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/events.h"
#include "esteira/job.h"
#include "esteira/json.h"
#include "esteira/log.h"
#include "esteira/metrics.h"
#include "esteira/store.h"
#include "pipeline/events_priv.h"

#define M_FLUSH_SIZE  "esteira_events_flush_size"
#define M_FLUSH_AGE   "esteira_events_flush_age_seconds"
#define M_FLUSH_TIME  "esteira_events_flush_duration_seconds"
#define M_STORED      "esteira_events_stored_total"
#define M_DUPLICATE   "esteira_events_duplicate_total"
#define M_FLUSH_FAILS "esteira_events_flush_failures_total"
#define M_DEAD        "esteira_events_dead_total"

#define IDLE_WAIT_MS          200  /* an empty buffer looks at the stop flag this often */
#define HOLD_MAX_MS           5000 /* longest pause between flush attempts while the store is away */
#define BUFFER_BYTES          (8u * 1024 * 1024) /* a flush also starts at this many buffered bytes */
#define PREFETCH_MAX          256                /* deliveries a flusher holds unacknowledged */
#define SQLITE_FLUSH_CACHE_KB "16384"            /* page cache of a connection that flushes (KiB) */

static void define_metrics(void)
{
    static const double sizes[] = {1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000};
    static const double secs[] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                  0.5,   1,     2.5,  5,     10,   30,  60};
    es_metric_define(M_FLUSH_SIZE, ES_METRIC_HISTOGRAM, "Events per flush to the store", sizes,
                     (int)ES_ARRAY_LEN(sizes));
    es_metric_define(M_FLUSH_AGE, ES_METRIC_HISTOGRAM,
                     "Age of a flush's oldest event when it was stored (flush lag)", secs,
                     (int)ES_ARRAY_LEN(secs));
    es_metric_define(M_FLUSH_TIME, ES_METRIC_HISTOGRAM, "Duration of a flush's transaction", secs,
                     (int)ES_ARRAY_LEN(secs));
    es_metric_define(M_STORED, ES_METRIC_COUNTER, "Events stored", NULL, 0);
    es_metric_define(M_DUPLICATE, ES_METRIC_COUNTER,
                     "Events delivered again whose id was stored already", NULL, 0);
    es_metric_define(M_FLUSH_FAILS, ES_METRIC_COUNTER, "Flushes that failed, by reason", NULL, 0);
    es_metric_define(M_DEAD, ES_METRIC_COUNTER, "Events dead-lettered after their last attempt",
                     NULL, 0);
}

/* ------------------------------------------------------------------ one flush */

/* The hour's row of event_flushes: counts, sums and maxima. */
static int add_flush_stats(es_store_conn *c, size_t events, int64_t inserted, int64_t age_ms,
                           int64_t took_ms)
{
    int64_t now = es_now_ms();
    char hour[24], ev[24], ins[24], age[24], took[24], last[24];
    const char *p[] = {ES_I64(hour, now / 3600000 * 3600000),
                       ES_I64(ev, events),
                       ES_I64(ins, inserted),
                       ES_I64(age, age_ms),
                       ES_I64(took, took_ms),
                       ES_I64(last, now)};
    return es_store_exec(
        c,
        "INSERT INTO event_flushes (hour_ms, flushes, events, inserted, age_sum_ms, age_max_ms,"
        " duration_sum_ms, duration_max_ms, last_ms) VALUES ($1, 1, $2, $3, $4, $4, $5, $5, $6)"
        " ON CONFLICT (hour_ms) DO UPDATE SET flushes = event_flushes.flushes + 1,"
        " events = event_flushes.events + excluded.events,"
        " inserted = event_flushes.inserted + excluded.inserted,"
        " age_sum_ms = event_flushes.age_sum_ms + excluded.age_sum_ms,"
        " age_max_ms = CASE WHEN excluded.age_max_ms > event_flushes.age_max_ms"
        " THEN excluded.age_max_ms ELSE event_flushes.age_max_ms END,"
        " duration_sum_ms = event_flushes.duration_sum_ms + excluded.duration_sum_ms,"
        " duration_max_ms = CASE WHEN excluded.duration_max_ms > event_flushes.duration_max_ms"
        " THEN excluded.duration_max_ms ELSE event_flushes.duration_max_ms END,"
        " last_ms = excluded.last_ms",
        6, p, NULL);
}

/* Rows (COPY text) into user_interactions, ids stored already left out,
 * inside the caller's transaction, with event_counts kept exact.  On
 * PostgreSQL a statement trigger counts the rows a statement inserted.
 * SQLite has only row triggers, and one per row made each insert a
 * statement transaction of its own (two thirds of a flush's time): here the
 * rows this call inserted - rowids above the largest before it, as the
 * writer lock is held - are counted by type in one statement. */
static int insert_events(const es_store *s, es_store_conn *c, const char *rows, size_t len,
                         int64_t *inserted)
{
    *inserted = 0;
    bool sqlite = es_store_dialect(s) == ES_DIALECT_SQLITE;
    char since[24] = "";
    if (sqlite) {
        es_rows *r = NULL;
        int rc =
            es_store_exec(c, "SELECT COALESCE(MAX(rowid), 0) FROM " ES_EVENTS_TABLE, 0, NULL, &r);
        if (rc) return rc;
        ES_I64(since, es_rows_int(r, 0, 0, 0));
        es_rows_free(r);
    }
    int rc = es_store_copy_merge(c, ES_EVENTS_TABLE, es_event_cols, es_event_types, ES_EVENT_NCOLS,
                                 rows, len, inserted);
    if (rc || !sqlite || !*inserted) return rc;
    const char *p[] = {since};
    /* NOT INDEXED: the planner would rather scan the whole (tenant, user_id,
     * event_type, …) index for its order than seek the new rowids */
    return es_store_exec(c,
                         "INSERT INTO event_counts (tenant, event_type, n)"
                         " SELECT tenant, event_type, count(*) FROM " ES_EVENTS_TABLE
                         " NOT INDEXED WHERE rowid > $1 GROUP BY tenant, event_type"
                         " ON CONFLICT (tenant, event_type) DO UPDATE SET n = n + excluded.n",
                         1, p, NULL);
}

/* Stores rows in one transaction.  ES_OK or the store's error (rolled back). */
static int store_rows(es_events *ev, const char *rows, size_t len, size_t events, int64_t oldest_ms,
                      int64_t *inserted)
{
    int64_t t0 = es_mono_us();
    es_store_conn *c = NULL;
    int rc = es_store_acquire(ev->app->store, &c);
    if (rc) return rc;
    /* SQLite: the (tenant, user_id, …) index takes rows at random places, and
     * with the default 2 MB page cache a flush reads and rewrites pages it
     * just evicted (60k events stored in 11-13 s; with 16 MB, 4.2-4.8 s).
     * A connection that flushed keeps the larger cache. */
    if (es_store_dialect(ev->app->store) == ES_DIALECT_SQLITE)
        es_store_exec(c, "PRAGMA cache_size = -" SQLITE_FLUSH_CACHE_KB, 0, NULL, NULL);
    if ((rc = es_store_begin(c))) goto release;
    rc = insert_events(ev->app->store, c, rows, len, inserted);
    int64_t took_ms = (es_mono_us() - t0) / 1000;
    int64_t age_ms = oldest_ms ? es_now_ms() - oldest_ms : 0;
    if (!rc) rc = add_flush_stats(c, events, *inserted, age_ms, took_ms);
    rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
release:
    es_store_release(c);
    return rc;
}

/* Failures that say nothing about the events: the store is away or busy. */
static bool transient(int rc)
{
    return rc == ES_EBACKEND || rc == ES_EAGAIN || rc == ES_ETIMEDOUT || rc == ES_EIO;
}

typedef struct fbatch {
    es_delivery *d;
    size_t n, cap;
    es_buf rows;
    size_t events;
    int64_t oldest_ms; /* wall clock: when the oldest buffered event was accepted */
} fbatch;

static void batch_reset(fbatch *b)
{
    for (size_t i = 0; i < b->n; i++)
        es_delivery_finish(&b->d[i]);
    b->n = 0;
    b->events = 0;
    b->oldest_ms = 0;
    es_buf_reset(&b->rows);
}

static int64_t delivery_received_ms(const es_delivery *d)
{
    int64_t v;
    const char *s = es_delivery_header(d, "receivedMs");
    if (s && es_parse_i64(s, 0, INT64_MAX, &v) == ES_OK) return v;
    return d->published_ms;
}

static size_t delivery_events(const es_delivery *d)
{
    int64_t v;
    const char *s = es_delivery_header(d, "count");
    if (s && es_parse_i64(s, 0, INT64_MAX, &v) == ES_OK) return (size_t)v;
    size_t n = 0; /* no header: count the rows */
    for (size_t i = 0; i < d->len; i++)
        n += d->body[i] == '\n';
    return n;
}

/* Takes d over (its fields move into the batch). */
static int batch_add(fbatch *b, es_delivery *d)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        es_delivery *nd = realloc(b->d, cap * sizeof *nd);
        if (!nd) return ES_ENOMEM;
        b->d = nd;
        b->cap = cap;
    }
    int rc = es_buf_append(&b->rows, d->body, d->len);
    if (rc) return rc;
    int64_t at = delivery_received_ms(d);
    if (!b->oldest_ms || at < b->oldest_ms) b->oldest_ms = at;
    b->events += delivery_events(d);
    b->d[b->n++] = *d;
    memset(d, 0, sizeof *d);
    return ES_OK;
}

/* Rows that failed their last attempt, split by tenant (the first column),
 * each part recorded as a dead job of kind "events", in one transaction. */
static int bury(es_events *ev, const char *rows, size_t len, int attempts, const char *why)
{
    typedef struct part {
        char tenant[ES_TENANT_MAX + 1];
        es_buf rows;
        size_t n;
    } part;
    part parts[16];
    size_t nparts = 0;
    int rc = ES_OK;
    for (const char *p = rows, *end = rows + len; p < end && !rc;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl + 1 : end;
        const char *tab = memchr(p, '\t', (size_t)(eol - p));
        size_t tl = tab ? (size_t)(tab - p) : 0;
        char tenant[ES_TENANT_MAX + 1];
        if (!tab || tl > ES_TENANT_MAX) {
            p = eol;
            continue;
        }
        memcpy(tenant, p, tl);
        tenant[es_copy_unescape(tenant, tl)] = '\0';
        size_t i = 0;
        while (i < nparts && strcmp(parts[i].tenant, tenant) != 0)
            i++;
        if (i == nparts) {
            if (nparts == ES_ARRAY_LEN(parts)) {
                rc = ES_ELIMIT; /* the caller keeps the rows in the broker instead */
                break;
            }
            es_strlcpy(parts[i].tenant, tenant, sizeof parts[i].tenant);
            es_buf_init(&parts[i].rows, 0);
            parts[i].n = 0;
            nparts++;
        }
        rc = es_buf_append(&parts[i].rows, p, (size_t)(eol - p));
        parts[i].n++;
        p = eol;
    }
    es_store_conn *c = NULL;
    if (!rc) rc = es_store_acquire(ev->app->store, &c);
    if (!rc && !(rc = es_store_begin(c))) {
        for (size_t i = 0; i < nparts && !rc; i++) {
            json_t *payload =
                json_pack("{s:s, s:I, s:s%}", "format", "copy", "count", (json_int_t)parts[i].n,
                          "rows", parts[i].rows.data, parts[i].rows.len);
            char *text = payload ? json_dumps(payload, JSON_COMPACT) : NULL;
            json_decref(payload);
            if (!text) {
                rc = ES_ENOMEM;
                break;
            }
            char id[ES_UUID_LEN + 1];
            es_job_req req = {.kind = ES_EVENTS_KIND, .tenant = parts[i].tenant, .payload = text};
            rc = es_job_insert_dead_tx(ev->app->engine, c, &req, attempts, "store", why, id);
            free(text);
            if (!rc) {
                es_warn(EV_COMP, "%zu events of tenant %s are dead after %d attempts (job %s): %s",
                        parts[i].n, parts[i].tenant, attempts, id, why);
                es_metric_add(M_DEAD, "", (double)parts[i].n);
            }
        }
        rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
    }
    es_store_release(c);
    for (size_t i = 0; i < nparts; i++)
        es_buf_finish(&parts[i].rows);
    return rc;
}

/* The rows that failed in a salvage, by the attempt they failed. */
typedef struct failed_rows {
    int attempt; /* 1-based: the attempt that just failed */
    es_buf rows;
    size_t n;
} failed_rows;

/* Rows of one attempt that failed: back to the broker for the next attempt
 * after the kind's backoff, or after the last one into the dead-letter list. */
static int send_back(es_events *ev, failed_rows *f, int err)
{
    int max = 0;
    int64_t base = 0, cap = 0;
    es_engine_kind_policy(ev->app->engine, ES_EVENTS_KIND, &max, &base, &cap);
    char why[160];
    snprintf(why, sizeof why, "storing the events failed: %s (the flush's log line has the cause)",
             es_strerror(err));
    if (f->attempt >= max) return bury(ev, f->rows.data, f->rows.len, f->attempt, why);
    double r = (double)es_random_below(1u << 30) / (double)(1u << 30);
    int64_t delay = es_backoff_ms(base, cap, f->attempt, r);
    char count[24], at[24];
    es_kv h[2] = {{"count", ES_I64(count, f->n)}, {"receivedMs", ES_I64(at, es_now_ms())}};
    es_msg m = {.queue = ES_EVENTS_QUEUE,
                .body = f->rows.data,
                .len = f->rows.len,
                .headers = h,
                .nheaders = 2,
                .attempts = f->attempt,
                .delay_ms = delay};
    es_warn(EV_COMP, "%zu events go back for attempt %d of %d in %lld ms: %s", f->n, f->attempt + 1,
            max, (long long)delay, es_strerror(err));
    return es_broker_publish(ev->app->broker, &m, 1);
}

/* A flush failed because of some of its rows.  Each row is stored on its own
 * (a savepoint each, one transaction for all), so the good ones go in now and
 * only the bad ones are sent back.  ES_OK = every delivery may be acked. */
static int salvage(es_events *ev, fbatch *b, int err, int64_t *inserted)
{
    failed_rows f[4] = {0}; /* by attempt; a batch rarely mixes more */
    size_t nf = 0;
    es_store_conn *c = NULL;
    int rc = es_store_acquire(ev->app->store, &c);
    if (rc) return rc;
    if ((rc = es_store_begin(c))) goto release;
    for (size_t i = 0; i < b->n && !rc; i++) {
        const es_delivery *d = &b->d[i];
        for (const char *p = d->body, *end = d->body + d->len; p < end && !rc;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            const char *eol = nl ? nl + 1 : end;
            int64_t one = 0;
            rc = es_store_exec(c, "SAVEPOINT ev_row", 0, NULL, NULL);
            int row_rc = rc ? rc : insert_events(ev->app->store, c, p, (size_t)(eol - p), &one);
            if (rc || transient(row_rc)) {
                rc = rc ? rc : row_rc;
                break;
            }
            if (row_rc == ES_OK) {
                *inserted += one;
                rc = es_store_exec(c, "RELEASE SAVEPOINT ev_row", 0, NULL, NULL);
            } else {
                rc = es_store_exec(c, "ROLLBACK TO SAVEPOINT ev_row", 0, NULL, NULL);
                if (!rc) rc = es_store_exec(c, "RELEASE SAVEPOINT ev_row", 0, NULL, NULL);
                size_t k = 0;
                while (k < nf && f[k].attempt != d->attempts + 1)
                    k++;
                if (k == nf && nf == ES_ARRAY_LEN(f)) k = nf - 1; /* folded into the last one */
                if (k == nf) {
                    f[nf].attempt = d->attempts + 1;
                    es_buf_init(&f[nf++].rows, 0);
                }
                if (!rc) rc = es_buf_append(&f[k].rows, p, (size_t)(eol - p));
                f[k].n++;
            }
            p = eol;
        }
    }
    int64_t age = b->oldest_ms ? es_now_ms() - b->oldest_ms : 0;
    if (!rc) rc = add_flush_stats(c, b->events, *inserted, age, 0);
    rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
    /* stored; now the failed rows go back (a crash in between: the deliveries
     * come again, the stored rows count as duplicates, the bad ones fail again) */
    for (size_t k = 0; k < nf && !rc; k++)
        rc = send_back(ev, &f[k], err);
release:
    es_store_release(c);
    for (size_t k = 0; k < nf; k++)
        es_buf_finish(&f[k].rows);
    return rc;
}

static void flushed(const fbatch *b, int64_t inserted, int64_t t0_us, bool salvaged)
{
    double took = (double)(es_mono_us() - t0_us) / 1e6;
    double age = b->oldest_ms ? (double)(es_now_ms() - b->oldest_ms) / 1e3 : 0;
    es_metric_observe(M_FLUSH_SIZE, "", (double)b->events);
    es_metric_observe(M_FLUSH_AGE, "", age);
    es_metric_observe(M_FLUSH_TIME, "", took);
    es_metric_add(M_STORED, "", (double)inserted);
    json_t *f = json_pack("{s:I, s:I, s:I, s:f, s:f}", "events", (json_int_t)b->events, "inserted",
                          (json_int_t)inserted, "messages", (json_int_t)b->n, "oldestAgeMs",
                          age * 1e3, "durationMs", took * 1e3);
    if (salvaged) json_object_set_new(f, "salvaged", json_true());
    ES_LOGF(salvaged ? ES_LOG_WARN : ES_LOG_INFO, EV_COMP, f, "flush");
}

/* Flushes b and settles its deliveries.  false = the flusher is stopping
 * while the store is away: the deliveries were left unacknowledged (the
 * broker delivers them again). */
static bool flush(es_events *ev, es_consumer *cons, fbatch *b)
{
    if (b->n == 0) return true;
    int64_t hold = 100;
    for (int tries = 1;; tries++) {
        int64_t inserted = 0, t0 = es_mono_us();
        bool salvaged = false;
        int rc = store_rows(ev, b->rows.data, b->rows.len, b->events, b->oldest_ms, &inserted);
        if (rc && !transient(rc)) {
            es_metric_add(M_FLUSH_FAILS, "reason=\"data\"", 1);
            es_warn(EV_COMP, "a flush of %zu events failed (%s): storing them one by one",
                    b->events, es_strerror(rc));
            inserted = 0;
            rc = salvage(ev, b, rc, &inserted);
            salvaged = true;
            if (rc && !transient(rc)) {
                /* neither stored nor sent back nor buried: the broker's own
                 * dead-letter queue keeps them */
                es_error(EV_COMP,
                         "could not settle a failed flush (%s): %zu messages moved to %s.dead",
                         es_strerror(rc), b->n, ES_EVENTS_QUEUE);
                for (size_t i = 0; i < b->n; i++)
                    es_consumer_dead(cons, &b->d[i], "the events could not be stored or sent back");
                batch_reset(b);
                return true;
            }
        }
        if (rc == ES_OK) {
            if (es_consumer_ack_many(cons, b->d, b->n) != ES_OK)
                es_warn(EV_COMP, "ack failed after the commit: the events come again and are"
                                 " counted as duplicates");
            if ((int64_t)b->events > inserted && !salvaged)
                es_metric_add(M_DUPLICATE, "", (double)((int64_t)b->events - inserted));
            flushed(b, inserted, t0, salvaged);
            batch_reset(b);
            return true;
        }
        es_metric_add(M_FLUSH_FAILS, "reason=\"store_unavailable\"", 1);
        if (tries == 1 || tries % 20 == 0)
            es_warn(EV_COMP, "the store is unavailable (%s): holding %zu events and trying again",
                    es_strerror(rc), b->events);
        if (atomic_load(&ev->flush_stop)) {
            es_warn(EV_COMP, "stopping with %zu events unstored: the broker delivers them again",
                    b->events);
            batch_reset(b); /* unacknowledged: closing the consumer hands them back */
            return false;
        }
        es_sleep_ms(hold);
        hold = hold * 2 > HOLD_MAX_MS ? HOLD_MAX_MS : hold * 2;
    }
}

/* ------------------------------------------------------------------ the flushers */

static void *flusher_main(void *arg)
{
    es_events *ev = arg;
    const int64_t flush_ms = ev->cfg->events_flush_ms;
    const size_t batch_max = (size_t)ev->cfg->events_batch_max;
    /* A delivery holds one event or many (up to ESTEIRA_EVENTS_GROUP_MAX
     * bytes): the window is a batch of one-event deliveries, bounded so that
     * what the broker may push ahead stays within PREFETCH_MAX messages. */
    int prefetch = batch_max < PREFETCH_MAX ? (int)batch_max : PREFETCH_MAX;
    if (prefetch < (int)ev->cfg->prefetch) prefetch = (int)ev->cfg->prefetch;
    es_consumer *cons = NULL;
    fbatch b = {0};
    es_buf_init(&b.rows, 0);
    int64_t backoff = 100;
    while (!atomic_load(&ev->flush_stop)) {
        if (!cons) {
            if (es_consumer_open(ev->app->broker, ES_EVENTS_QUEUE, prefetch, &cons) != ES_OK) {
                es_sleep_ms(backoff);
                backoff = backoff < 5000 ? backoff * 2 : 5000;
                continue;
            }
            backoff = 100;
        }
        int64_t wait = IDLE_WAIT_MS;
        if (b.n) {
            wait = b.oldest_ms + flush_ms - es_now_ms();
            if (wait < 0) wait = 0;
            if (wait > IDLE_WAIT_MS) wait = IDLE_WAIT_MS;
        }
        es_delivery d;
        int rc = es_consumer_next(cons, (int)wait, &d);
        if (rc == ES_OK) {
            if (batch_add(&b, &d) != ES_OK) {
                es_delivery_finish(&d); /* unacknowledged: delivered again */
                flush(ev, cons, &b);
                continue;
            }
        } else if (rc != ES_ETIMEDOUT) {
            es_warn(EV_COMP, "consumer of %s failed: %s; reopening", ES_EVENTS_QUEUE,
                    es_strerror(rc));
            batch_reset(&b); /* the broker delivers them again to the new consumer */
            es_consumer_close(cons);
            cons = NULL;
            continue;
        }
        /* By age only once nothing more is ready: events that waited in a
         * backlog are all "old", and flushing each delivery alone would make
         * the backlog grow. */
        if (b.n && (b.events >= batch_max || b.rows.len >= BUFFER_BYTES ||
                    b.n >= (size_t)prefetch || /* the window is full: nothing more comes */
                    (rc == ES_ETIMEDOUT && es_now_ms() >= b.oldest_ms + flush_ms)))
            flush(ev, cons, &b);
    }
    if (cons) flush(ev, cons, &b); /* stopping: store what is held, once */
    batch_reset(&b);
    free(b.d);
    es_buf_finish(&b.rows);
    es_consumer_close(cons);
    return NULL;
}

int ev_store_start(es_events *ev)
{
    int n = (int)ev->cfg->events_flushers;
    if (n == 0) return ES_OK;
    ev->flushers = calloc((size_t)n, sizeof *ev->flushers);
    if (!ev->flushers) return ES_ENOMEM;
    atomic_store(&ev->flush_stop, false);
    for (; ev->nflushers < n; ev->nflushers++)
        if (pthread_create(&ev->flushers[ev->nflushers], NULL, flusher_main, ev) != 0) {
            es_error(EV_COMP, "cannot start a flusher thread");
            return ES_ENOMEM;
        }
    es_info(EV_COMP, "%d flusher(s): a flush at %lld events or %lld ms", n,
            (long long)ev->cfg->events_batch_max, (long long)ev->cfg->events_flush_ms);
    return ES_OK;
}

void ev_store_stop(es_events *ev)
{
    atomic_store(&ev->flush_stop, true);
    for (int i = 0; i < ev->nflushers; i++)
        pthread_join(ev->flushers[i], NULL);
    ev->nflushers = 0;
}

/* ------------------------------------------------------------------ dead letters, re-driven */

/* A re-driven dead job: its rows, stored with the job's `done`. */
static int run_dead_events(es_job_ctx *ctx, void *arg)
{
    es_events *ev = arg;
    const es_job *j = es_job_ctx_job(ctx);
    json_t *p = json_loads(j->payload, 0, NULL);
    const json_t *rows = p ? json_object_get(p, "rows") : NULL;
    if (!json_is_string(rows)) {
        json_decref(p);
        es_job_fail(ctx, true, "payload", "the job has no rows to store");
        return ES_EINVAL;
    }
    es_store_conn *c = NULL;
    int64_t inserted = 0;
    int rc = es_job_ctx_conn(ctx, &c);
    if (!rc)
        rc = insert_events(ev->app->store, c, json_string_value(rows), json_string_length(rows),
                           &inserted);
    if (!rc) {
        char res[64];
        snprintf(res, sizeof res, "{\"inserted\":%lld}", (long long)inserted);
        es_job_set_result(ctx, res);
        es_metric_add(M_STORED, "", (double)inserted);
    } else {
        es_job_fail(ctx, false, "store", "storing the events failed: %s", es_strerror(rc));
    }
    json_decref(p);
    return rc;
}

int ev_store_register(es_events *ev)
{
    define_metrics();
    es_job_kind k = {.name = ES_EVENTS_KIND, .run = run_dead_events, .arg = ev, .concurrency = 1};
    return es_engine_register(ev->app->engine, &k);
}
