/* registry.c - where datasets come from: the built-in ones (dataset.c), then
 * the definitions stored in the `datasets` table.  Definitions never change
 * once created, so a table made once stays right; each process remembers which
 * tables it has made sure of, and asks the store only the first time. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/upload.h"

#define COMP "datasets"

#define ENSURED_MAX 256

static pthread_mutex_t ensured_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const es_store *store;
    char table[ES_IDENT_MAX + 1];
} ensured[ENSURED_MAX];
static int nensured;

static bool is_ensured(const es_store *s, const char *table)
{
    bool yes = false;
    pthread_mutex_lock(&ensured_mu);
    for (int i = 0; i < nensured && !yes; i++)
        yes = ensured[i].store == s && strcmp(ensured[i].table, table) == 0;
    pthread_mutex_unlock(&ensured_mu);
    return yes;
}

static void set_ensured(const es_store *s, const char *table)
{
    pthread_mutex_lock(&ensured_mu);
    if (nensured < ENSURED_MAX) {
        ensured[nensured].store = s;
        es_strlcpy(ensured[nensured].table, table, sizeof ensured[nensured].table);
        nensured++;
    }
    pthread_mutex_unlock(&ensured_mu);
}

int es_datasets_ensure_table(es_store *s, const es_dataset *d)
{
    if (is_ensured(s, d->table)) return ES_OK;
    es_buf ddl;
    es_buf_init(&ddl, 0);
    int rc = es_dataset_ddl(d, es_store_dialect(s), &ddl);
    /* two processes creating it at once: PostgreSQL may refuse the second
     * CREATE … IF NOT EXISTS with a unique violation; once more settles it */
    for (int attempt = 0; rc == ES_OK && attempt < 2; attempt++) {
        es_store_conn *c;
        if ((rc = es_store_acquire(s, &c)) != ES_OK) break;
        rc = es_store_exec_script(c, es_buf_cstr(&ddl));
        es_store_release(c);
        if (rc != ES_ECONFLICT) break;
    }
    es_buf_finish(&ddl);
    if (rc == ES_OK)
        set_ensured(s, d->table);
    else
        es_error(COMP, "cannot create the table of dataset %s: %s", d->name, es_strerror(rc));
    return rc;
}

int es_datasets_get(es_store *s, const char *name, es_dataset *out)
{
    const es_dataset *b = es_dataset_builtin(name);
    if (b) {
        *out = *b;
        return ES_OK;
    }
    if (!name || !es_ident_valid(name)) return ES_ENOTFOUND;
    const char *p[] = {name};
    es_rows *r = NULL;
    int rc = es_store_exec1(s, "SELECT definition FROM datasets WHERE name = $1", 1, p, &r);
    if (rc != ES_OK) return rc;
    if (es_rows_count(r) != 1) {
        es_rows_free(r);
        return ES_ENOTFOUND;
    }
    json_t *def = json_loads(es_rows_get(r, 0, 0), 0, NULL);
    char err[200];
    rc = def ? es_dataset_from_json(def, out, err, sizeof err) : ES_EINVAL;
    if (rc != ES_OK) es_error(COMP, "the stored definition of dataset %s is unusable", name);
    json_decref(def);
    es_rows_free(r);
    return rc;
}

int es_datasets_create(es_store *s, const es_dataset *d)
{
    if (es_dataset_builtin(d->name)) return ES_ECONFLICT;
    json_t *def = es_dataset_to_json(d);
    char *text = def ? json_dumps(def, JSON_COMPACT) : NULL;
    json_decref(def);
    if (!text) return ES_ENOMEM;
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *p[] = {d->name, text, now};
    int rc = es_store_exec1(
        s, "INSERT INTO datasets (name, definition, created_ms) VALUES ($1, $2, $3)", 3, p, NULL);
    free(text);
    if (rc == ES_OK) rc = es_datasets_ensure_table(s, d);
    return rc;
}

int es_datasets_list(es_store *s, json_t **out)
{
    *out = json_array();
    if (!*out) return ES_ENOMEM;
    json_array_append_new(*out, es_dataset_to_json(es_dataset_builtin("debts")));
    es_rows *r = NULL;
    int rc = es_store_exec1(s, "SELECT definition FROM datasets ORDER BY name", 0, NULL, &r);
    for (int i = 0; rc == ES_OK && i < es_rows_count(r); i++) {
        json_t *def = json_loads(es_rows_get(r, i, 0), 0, NULL);
        if (def) json_array_append_new(*out, def);
    }
    es_rows_free(r);
    if (rc != ES_OK) {
        json_decref(*out);
        *out = NULL;
    }
    return rc;
}
