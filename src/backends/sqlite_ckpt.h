/* sqlite_ckpt.h - a WAL checkpointer thread for an SQLite database, shared
 * by the SQLite store and the local queue.
 *
 * SQLite's own checkpoint runs inside the commit that pushes the WAL past
 * 1000 pages, with an fsync, and every other writer waits for it: the local
 * queue's publishes took 10-60 ms then (events' p99 of 50 ms came from
 * there).  Here a commit only notes the WAL's size (es_ckpt_hook, installed
 * on every connection by es_ckpt_attach) and wakes a thread that copies the WAL back through a
 * connection of its own, concurrently with writers.  Should it fall behind (8x its threshold), a
 * commit helps. */
#ifndef ESTEIRA_SQLITE_CKPT_H
#define ESTEIRA_SQLITE_CKPT_H

#include <sqlite3.h>

typedef struct es_ckpt es_ckpt;

/* Starts the thread for the database at path: it checkpoints when a commit
 * leaves at least pages WAL pages, and every every_ms while the WAL is not
 * empty.  NULL when it cannot start (logged; SQLite's own checkpoints then
 * stay on). */
es_ckpt *es_ckpt_start(const char *path, int pages, int every_ms, int busy_ms);

/* Makes db report its commits to k instead of checkpointing in them (NULL
 * k: leaves db as it is). */
void es_ckpt_attach(es_ckpt *k, sqlite3 *db);

/* Stops and joins the thread.  NULL is fine. */
void es_ckpt_stop(es_ckpt *k);

#endif
