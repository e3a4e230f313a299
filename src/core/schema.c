/* schema.c - the store's versioned migrations, and the one place where the
 * SQL of SQLite and PostgreSQL differs.
 *
 * A migration is applied in its own transaction together with its row in
 * schema_migrations, so a crash leaves it either applied or not.  Once
 * released, a migration is never edited: add a new one. */
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/store.h"
#include "esteira/util.h"

typedef struct migration {
    int version;
    const char *name;
    const char *sql; /* both dialects, unless one of the next two is set ("" = nothing to do) */
    const char *sqlite_sql;
    const char *pg_sql;
} migration;

/* the parts of migration 5 both dialects share */
#define EVENTS_COMMON_SQL                                                                          \
    "CREATE INDEX user_interactions_user_type"                                                     \
    " ON user_interactions (tenant, user_id, event_type, occurred_at);"                            \
    "CREATE INDEX user_interactions_time ON user_interactions (tenant, occurred_at);"              \
    "CREATE TABLE event_counts ("                                                                  \
    " tenant text NOT NULL,"                                                                       \
    " event_type text NOT NULL,"                                                                   \
    " n bigint NOT NULL DEFAULT 0,"                                                                \
    " PRIMARY KEY (tenant, event_type));"                                                          \
    "CREATE TABLE event_flushes ("                                                                 \
    " hour_ms bigint PRIMARY KEY,"                                                                 \
    " flushes bigint NOT NULL,"                                                                    \
    " events bigint NOT NULL,"                                                                     \
    " inserted bigint NOT NULL,"                                                                   \
    " age_sum_ms bigint NOT NULL,"                                                                 \
    " age_max_ms bigint NOT NULL,"                                                                 \
    " duration_sum_ms bigint NOT NULL,"                                                            \
    " duration_max_ms bigint NOT NULL,"                                                            \
    " last_ms bigint NOT NULL);"

static const migration migrations[] = {
    {1, "jobs",
     "CREATE TABLE jobs ("
     " id text PRIMARY KEY,"
     " tenant text NOT NULL,"
     " kind text NOT NULL,"
     " status text NOT NULL,"
     " attempts integer NOT NULL DEFAULT 0,"
     " max_attempts integer NOT NULL,"
     " payload text NOT NULL,"
     " result text,"
     " error_type text,"
     " error_message text,"
     " idempotency_key text,"
     " trace_id text,"
     " published integer NOT NULL DEFAULT 0,"
     " lease_until bigint,"
     " run_after bigint,"
     " created_ms bigint NOT NULL,"
     " updated_ms bigint NOT NULL);"
     /* partial indexes: a job's status changes do not touch them */
     "CREATE UNIQUE INDEX jobs_idem ON jobs (tenant, idempotency_key)"
     " WHERE idempotency_key IS NOT NULL;"
     "CREATE INDEX jobs_tenant_status ON jobs (tenant, status, id);"
     "CREATE INDEX jobs_kind_status ON jobs (kind, status);"
     "CREATE INDEX jobs_unpublished ON jobs (updated_ms) WHERE published = 0;"
     "CREATE TABLE job_events ("
     " job_id text NOT NULL,"
     " at_ms bigint NOT NULL,"
     " status text NOT NULL,"
     " attempt integer NOT NULL,"
     " error_type text,"
     " error_message text,"
     " delay_ms bigint);"
     "CREATE INDEX job_events_job ON job_events (job_id, at_ms);"
     "CREATE TABLE noop_effects (job_id text PRIMARY KEY, at_ms bigint NOT NULL);",
     NULL, NULL},
    {2, "api_keys",
     "CREATE TABLE api_keys ("
     " id text PRIMARY KEY,"
     " tenant text NOT NULL,"
     " name text,"
     " secret_hash text NOT NULL,"
     " scopes integer NOT NULL,"
     " created_ms bigint NOT NULL,"
     " last_used_ms bigint,"
     " revoked_ms bigint);",
     NULL, NULL},
    /* each claim writes its own token, so the claimer can hand over exactly
     * that claim when it cannot finish it (see abandon() in src/jobs/engine.c) */
    {3, "job_lease_owner", "ALTER TABLE jobs ADD COLUMN lease_owner text", NULL, NULL},
    /* CSV uploads (src/pipeline/upload.c): the upload with its counters, the
     * batch ledger (a batch's rows, its ledger row and the counters commit in
     * one transaction, so a batch counts once), the rejected values, and the
     * datasets defined over the API */
    {4, "uploads",
     "CREATE TABLE uploads ("
     " id text PRIMARY KEY,"
     " tenant text NOT NULL,"
     " dataset text NOT NULL,"
     " status text NOT NULL,"
     " filename text,"
     " origin text NOT NULL DEFAULT 'http',"
     " expires_ms bigint,"
     " header text,"
     " error text,"
     " idempotency_key text,"
     " bytes bigint NOT NULL DEFAULT 0,"
     " rows_total bigint NOT NULL DEFAULT 0,"
     " rows_inserted bigint NOT NULL DEFAULT 0,"
     " rows_duplicate bigint NOT NULL DEFAULT 0,"
     " rows_rejected bigint NOT NULL DEFAULT 0,"
     " batches_total integer NOT NULL DEFAULT 0,"
     " batches_done integer NOT NULL DEFAULT 0,"
     " batches_failed integer NOT NULL DEFAULT 0,"
     " created_ms bigint NOT NULL,"
     " started_ms bigint,"
     " finished_ms bigint,"
     " updated_ms bigint NOT NULL);"
     "CREATE UNIQUE INDEX uploads_idem ON uploads (tenant, idempotency_key)"
     " WHERE idempotency_key IS NOT NULL;"
     "CREATE INDEX uploads_tenant ON uploads (tenant, id);"
     "CREATE INDEX uploads_receiving ON uploads (updated_ms) WHERE status = 'receiving';"
     "CREATE TABLE upload_batches ("
     " upload_id text NOT NULL,"
     " seq integer NOT NULL,"
     " job_id text NOT NULL,"
     " rows integer NOT NULL,"
     " inserted integer NOT NULL DEFAULT 0,"
     " duplicate integer NOT NULL DEFAULT 0,"
     " rejected integer NOT NULL DEFAULT 0,"
     " done_ms bigint,"
     " PRIMARY KEY (upload_id, seq));"
     "CREATE TABLE upload_rejects ("
     " upload_id text NOT NULL,"
     " line bigint NOT NULL,"
     " col text NOT NULL,"
     " reason text NOT NULL,"
     " raw text);"
     "CREATE INDEX upload_rejects_upload ON upload_rejects (upload_id, line);"
     "CREATE TABLE datasets ("
     " name text PRIMARY KEY,"
     " definition text NOT NULL,"
     " created_ms bigint NOT NULL);",
     NULL, NULL},
    /* Events (src/pipeline/events.c).  A flush bulk-loads its events and
     * leaves out ids already stored; event_counts counts exactly the rows
     * that went in (on PostgreSQL by a statement trigger; on SQLite, since
     * migration 6, by the flush).
     * event_flushes adds up the flushes of each hour (a row per hour, not per
     * flush). */
    {5, "events", NULL,
     "CREATE TABLE user_interactions ("
     " tenant text NOT NULL,"
     " id text NOT NULL,"
     " user_id text NOT NULL,"
     " event_type text NOT NULL,"
     " event_data text,"
     " session_id text NOT NULL,"
     " occurred_at bigint NOT NULL,"
     " received_at bigint NOT NULL,"
     " processed integer NOT NULL DEFAULT 1,"
     " PRIMARY KEY (tenant, id));" EVENTS_COMMON_SQL
     "CREATE TRIGGER user_interactions_count AFTER INSERT ON user_interactions BEGIN"
     " INSERT INTO event_counts (tenant, event_type, n) VALUES (NEW.tenant, NEW.event_type, 1)"
     " ON CONFLICT (tenant, event_type) DO UPDATE SET n = n + 1;"
     " END;",
     "CREATE TABLE user_interactions ("
     " tenant text NOT NULL,"
     " id uuid NOT NULL,"
     " user_id text NOT NULL,"
     " event_type text NOT NULL,"
     " event_data json,"
     " session_id text NOT NULL,"
     " occurred_at bigint NOT NULL,"
     " received_at bigint NOT NULL,"
     " processed boolean NOT NULL DEFAULT true,"
     " PRIMARY KEY (tenant, id));" EVENTS_COMMON_SQL
     /* once per statement, over the rows it inserted; in key order, so two
      * flushes that meet on the same counters lock them in the same order */
     "CREATE OR REPLACE FUNCTION esteira_count_events() RETURNS trigger LANGUAGE plpgsql AS $$"
     " BEGIN"
     " INSERT INTO event_counts (tenant, event_type, n)"
     " SELECT tenant, event_type, count(*) FROM new_rows GROUP BY tenant, event_type"
     " ORDER BY tenant, event_type"
     " ON CONFLICT (tenant, event_type) DO UPDATE SET n = event_counts.n + excluded.n;"
     " RETURN NULL;"
     " END $$;"
     "CREATE TRIGGER user_interactions_count AFTER INSERT ON user_interactions"
     " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"
     " EXECUTE FUNCTION esteira_count_events();"},
    /* SQLite has row triggers only: one per inserted event made every insert
     * a statement transaction of its own.  Its event_counts are kept by the
     * flush instead (see insert_events in src/pipeline/event_store.c). */
    {6, "event counts by the flush on sqlite", NULL,
     "DROP TRIGGER IF EXISTS user_interactions_count;", ""},
};

static int max_version(es_store_conn *c, int64_t *out)
{
    es_rows *r = NULL;
    int rc =
        es_store_exec(c, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", 0, NULL, &r);
    if (rc) return rc;
    *out = es_rows_int(r, 0, 0, 0);
    es_rows_free(r);
    return ES_OK;
}

/* Several processes may start at once: each migration is decided and applied
 * under the database's write lock (BEGIN IMMEDIATE on SQLite, an advisory
 * transaction lock on PostgreSQL), so exactly one of them applies it. */
int es_store_migrate(es_store *s, int *applied)
{
    es_store_conn *c = NULL;
    int n = 0, rc = es_store_acquire(s, &c);
    if (rc) return rc;
    /* under the lock too: PostgreSQL answers a second concurrent CREATE TABLE
     * IF NOT EXISTS with a unique violation */
    if ((rc = es_store_begin(c))) goto release;
    if (es_store_dialect(s) == ES_DIALECT_PG)
        rc = es_store_exec(c, "SELECT pg_advisory_xact_lock(7306285)", 0, NULL, NULL);
    if (!rc)
        rc = es_store_exec_script(c, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                                     " version integer PRIMARY KEY, name text NOT NULL,"
                                     " applied_ms bigint NOT NULL)");
    rc = rc ? (es_store_rollback(c), rc) : es_store_commit(c);
    if (rc) goto release;
    for (size_t i = 0; i < ES_ARRAY_LEN(migrations); i++) {
        const migration *m = &migrations[i];
        const char *sql = m->sql;
        if (es_store_dialect(s) == ES_DIALECT_SQLITE && m->sqlite_sql) sql = m->sqlite_sql;
        if (es_store_dialect(s) == ES_DIALECT_PG && m->pg_sql) sql = m->pg_sql;
        if ((rc = es_store_begin(c))) goto release;
        if (es_store_dialect(s) == ES_DIALECT_PG)
            rc = es_store_exec(c, "SELECT pg_advisory_xact_lock(7306285)", 0, NULL, NULL);
        int64_t have = 0;
        if (!rc) rc = max_version(c, &have);
        if (!rc && have >= m->version) {
            rc = es_store_commit(c);
            if (rc) goto release;
            continue;
        }
        char ver[16], now[24];
        snprintf(ver, sizeof ver, "%d", m->version);
        snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
        const char *p[] = {ver, m->name, now};
        if (!rc && *sql) rc = es_store_exec_script(c, sql);
        if (!rc)
            rc = es_store_exec(c,
                               "INSERT INTO schema_migrations (version, name, applied_ms) "
                               "VALUES ($1, $2, $3)",
                               3, p, NULL);
        if (rc) {
            es_store_rollback(c);
            es_error("store", "migration %d (%s) failed: %s", m->version, m->name, es_strerror(rc));
            goto release;
        }
        if ((rc = es_store_commit(c))) goto release;
        es_info("store", "applied migration %d (%s)", m->version, m->name);
        n++;
    }
release:
    es_store_release(c);
    if (applied) *applied = n;
    return rc;
}
