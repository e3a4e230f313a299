/* sqlite_ckpt.c - the WAL checkpointer thread (see sqlite_ckpt.h). */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "backends/sqlite_ckpt.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define COMP   "sqlite"
#define INLINE 8 /* x pages: the thread fell behind, the committer helps */

struct es_ckpt {
    char *path;
    int pages, every_ms, busy_ms;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool wanted;   /* a commit passed the threshold since the thread last looked */
    int wal_pages; /* WAL size after the last commit */
};

static int hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    es_ckpt *k = arg;
    __atomic_store_n(&k->wal_pages, pages, __ATOMIC_RELAXED);
    if (pages >= INLINE * k->pages) {
        sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    } else if (pages >= k->pages) {
        pthread_mutex_lock(&k->mu);
        k->wanted = true; /* not lost while the thread is busy */
        pthread_cond_signal(&k->cv);
        pthread_mutex_unlock(&k->mu);
    }
    return SQLITE_OK;
}

static void *main_loop(void *arg)
{
    es_ckpt *k = arg;
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(k->path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        es_error(COMP, "checkpointer cannot open %s: %s", k->path, sqlite3_errmsg(db));
        sqlite3_close(db);
        return NULL;
    }
    sqlite3_busy_timeout(db, k->busy_ms);
    /* A connection opens the WAL when it first reads the database; until
     * then a checkpoint through it does nothing and reports -1 frames. */
    if (sqlite3_exec(db, "PRAGMA schema_version", NULL, NULL, NULL) != SQLITE_OK)
        es_warn(COMP, "checkpointer cannot read %s: %s", k->path, sqlite3_errmsg(db));
    pthread_mutex_lock(&k->mu);
    while (!k->stop) {
        if (!k->wanted) {
            struct timespec ts;
            es_deadline(&ts, k->every_ms);
            pthread_cond_timedwait(&k->cv, &k->mu, &ts);
        }
        bool woken = k->wanted;
        k->wanted = false;
        int seen = __atomic_load_n(&k->wal_pages, __ATOMIC_RELAXED);
        if (k->stop || (!woken && seen == 0)) continue;
        pthread_mutex_unlock(&k->mu);
        int log = 0, done = 0;
        int rc = sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
        if (rc != SQLITE_OK && rc != SQLITE_BUSY)
            es_warn(COMP, "checkpoint of %s: %s", k->path, sqlite3_errmsg(db));
        else if (log >= 0 && log == done) /* unless a commit came meanwhile */
            __atomic_compare_exchange_n(&k->wal_pages, &seen, 0, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED);
        pthread_mutex_lock(&k->mu);
    }
    pthread_mutex_unlock(&k->mu);
    sqlite3_close(db);
    return NULL;
}

es_ckpt *es_ckpt_start(const char *path, int pages, int every_ms, int busy_ms)
{
    es_ckpt *k = calloc(1, sizeof *k);
    if (!k || !(k->path = strdup(path))) {
        free(k);
        return NULL;
    }
    k->pages = pages > 0 ? pages : 1;
    k->every_ms = every_ms;
    k->busy_ms = busy_ms;
    pthread_mutex_init(&k->mu, NULL);
    es_cond_init(&k->cv);
    if (pthread_create(&k->thread, NULL, main_loop, k) != 0) {
        es_warn(COMP, "no checkpointer thread for %s: commits checkpoint it", path);
        pthread_mutex_destroy(&k->mu);
        pthread_cond_destroy(&k->cv);
        free(k->path);
        free(k);
        return NULL;
    }
    return k;
}

/* The hook replaces SQLite's own checkpointing (wal_autocheckpoint is a
 * WAL hook too). */
void es_ckpt_attach(es_ckpt *k, sqlite3 *db)
{
    if (k) sqlite3_wal_hook(db, hook, k);
}

void es_ckpt_stop(es_ckpt *k)
{
    if (!k) return;
    pthread_mutex_lock(&k->mu);
    k->stop = true;
    pthread_cond_signal(&k->cv);
    pthread_mutex_unlock(&k->mu);
    pthread_join(k->thread, NULL);
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    free(k->path);
    free(k);
}
