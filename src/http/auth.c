/* auth.c - API keys: "es_<id>_<secret>", stored as SHA-256(secret). */
#include "esteira/auth.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/http.h"
#include "esteira/log.h"
#include "esteira/util.h"

static const struct {
    const char *name;
    unsigned bit;
} scope_names[] = {
    {"ingest", ES_SCOPE_INGEST}, {"read", ES_SCOPE_READ},   {"reports", ES_SCOPE_REPORTS},
    {"files", ES_SCOPE_FILES},   {"admin", ES_SCOPE_ADMIN},
};

int es_scopes_parse(const char *s, unsigned *out, const char **bad)
{
    static __thread char badbuf[64];
    unsigned bits = 0;
    const char *p = s ? s : "";
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        bool found = false;
        for (size_t i = 0; i < ES_ARRAY_LEN(scope_names); i++) {
            if (strlen(scope_names[i].name) == n && strncmp(scope_names[i].name, p, n) == 0) {
                bits |= scope_names[i].bit;
                found = true;
            }
        }
        if (!found && !(n == 3 && strncmp(p, "all", 3) == 0)) {
            snprintf(badbuf, sizeof badbuf, "%.*s", (int)(n < 60 ? n : 60), p);
            if (bad) *bad = badbuf;
            return ES_EINVAL;
        }
        if (n == 3 && strncmp(p, "all", 3) == 0) bits |= ES_SCOPE_ALL;
        p += n + (comma ? 1 : 0);
    }
    if (!bits) {
        if (bad) *bad = "(none)";
        return ES_EINVAL;
    }
    *out = bits;
    return ES_OK;
}

void es_scopes_format(unsigned scopes, char *out, size_t len)
{
    size_t o = 0;
    out[0] = 0;
    for (size_t i = 0; i < ES_ARRAY_LEN(scope_names); i++) {
        if (!(scopes & scope_names[i].bit)) continue;
        int w = snprintf(out + o, len - o, "%s%s", o ? "," : "", scope_names[i].name);
        if (w < 0 || (size_t)w >= len - o) break;
        o += (size_t)w;
    }
}

int es_keys_create(es_store *s, const char *tenant, unsigned scopes, const char *name, char **token,
                   char key_id[40])
{
    if (!tenant || !*tenant || strlen(tenant) > 64 || !es_ident_valid(tenant)) return ES_EINVAL;
    unsigned char idb[8], sec[32];
    if (es_random(idb, sizeof idb) || es_random(sec, sizeof sec)) return ES_EIO;
    char id[17], secret[44], hash[65], scopes_s[16], now[24];
    es_hex(idb, sizeof idb, id);
    es_b64url(sec, sizeof sec, secret);
    /* the secret alphabet has '_' and '-': the id (hex) is parsed up to the second '_' */
    es_sha256_hex(secret, strlen(secret), hash);
    snprintf(scopes_s, sizeof scopes_s, "%u", scopes);
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *p[] = {id, tenant, name ? name : "", hash, scopes_s, now};
    int rc =
        es_store_exec1(s,
                       "INSERT INTO api_keys (id, tenant, name, secret_hash, scopes, created_ms)"
                       " VALUES ($1, $2, $3, $4, $5, $6)",
                       6, p, NULL);
    if (rc) return rc;
    size_t tl = 3 + 16 + 1 + strlen(secret) + 1;
    *token = malloc(tl);
    if (!*token) return ES_ENOMEM;
    snprintf(*token, tl, "es_%s_%s", id, secret);
    es_strlcpy(key_id, id, 40);
    return ES_OK;
}

int es_keys_list(es_store *s, json_t **out)
{
    es_rows *r = NULL;
    int rc = es_store_exec1(s,
                            "SELECT id, tenant, name, scopes, created_ms, last_used_ms, revoked_ms"
                            " FROM api_keys ORDER BY created_ms, id",
                            0, NULL, &r);
    if (rc) return rc;
    json_t *a = json_array();
    for (int i = 0; i < es_rows_count(r); i++) {
        char sc[64], ts[25];
        es_scopes_format((unsigned)es_rows_int(r, i, 3, 0), sc, sizeof sc);
        json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "id", es_rows_get(r, i, 0), "tenant",
                              es_rows_get(r, i, 1), "name",
                              es_rows_get(r, i, 2) ? es_rows_get(r, i, 2) : "", "scopes", sc);
        es_time_iso(es_rows_int(r, i, 4, 0), ts);
        json_object_set_new(o, "createdAt", json_string(ts));
        if (es_rows_get(r, i, 5)) {
            es_time_iso(es_rows_int(r, i, 5, 0), ts);
            json_object_set_new(o, "lastUsedAt", json_string(ts));
        }
        if (es_rows_get(r, i, 6)) {
            es_time_iso(es_rows_int(r, i, 6, 0), ts);
            json_object_set_new(o, "revokedAt", json_string(ts));
        }
        json_array_append_new(a, o);
    }
    es_rows_free(r);
    *out = a;
    return ES_OK;
}

int es_keys_revoke(es_store *s, const char *key_id)
{
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)es_now_ms());
    const char *p[] = {now, key_id};
    es_rows *r = NULL;
    int rc = es_store_exec1(
        s, "UPDATE api_keys SET revoked_ms = $1 WHERE id = $2 AND revoked_ms IS NULL", 2, p, &r);
    if (rc) return rc;
    int64_t n = es_rows_affected(r);
    es_rows_free(r);
    return n == 1 ? ES_OK : ES_ENOTFOUND;
}

int es_keys_count(es_store *s, int64_t *n)
{
    es_rows *r = NULL;
    int rc =
        es_store_exec1(s, "SELECT COUNT(*) FROM api_keys WHERE revoked_ms IS NULL", 0, NULL, &r);
    if (rc) return rc;
    *n = es_rows_int(r, 0, 0, 0);
    es_rows_free(r);
    return ES_OK;
}

/* Keys last seen valid, for when the store cannot be asked: ingestion must
 * go on through a store outage (events wait in the broker).  While the store
 * answers, every check asks it, so a revocation takes effect at once. */
#define SEEN_SLOTS  256
#define SEEN_MAX_MS (10 * 60 * 1000) /* how stale a key may be while the store is away */

typedef struct seen_key {
    char id[17];
    char hash[65];
    char tenant[65];
    unsigned scopes;
    int64_t at_ms;
} seen_key;

static seen_key seen[SEEN_SLOTS];
static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;

static seen_key *seen_slot(const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return &seen[h % SEEN_SLOTS];
}

static void seen_put(const char *id, const char *hash, const char *tenant, unsigned scopes)
{
    pthread_mutex_lock(&seen_mu);
    seen_key *k = seen_slot(id);
    es_strlcpy(k->id, id, sizeof k->id);
    es_strlcpy(k->hash, hash, sizeof k->hash);
    es_strlcpy(k->tenant, tenant, sizeof k->tenant);
    k->scopes = scopes;
    k->at_ms = es_mono_ms();
    pthread_mutex_unlock(&seen_mu);
}

static void seen_drop(const char *id)
{
    pthread_mutex_lock(&seen_mu);
    seen_key *k = seen_slot(id);
    if (strcmp(k->id, id) == 0) memset(k, 0, sizeof *k);
    pthread_mutex_unlock(&seen_mu);
}

/* ES_OK when the key was seen valid recently with this secret's hash. */
static int seen_check(const char *id, const char *hash, es_principal *out)
{
    int rc = ES_ENOTFOUND;
    pthread_mutex_lock(&seen_mu);
    seen_key *k = seen_slot(id);
    if (strcmp(k->id, id) == 0 && es_mono_ms() - k->at_ms <= SEEN_MAX_MS &&
        es_ct_equal(k->hash, hash, 64)) {
        es_strlcpy(out->tenant, k->tenant, sizeof out->tenant);
        es_strlcpy(out->key_id, id, sizeof out->key_id);
        out->scopes = k->scopes;
        rc = ES_OK;
    }
    pthread_mutex_unlock(&seen_mu);
    return rc;
}

int es_auth_check(es_store *s, const char *authorization, bool open_mode, es_principal *out)
{
    memset(out, 0, sizeof *out);
    if (!authorization || !*authorization) {
        if (!open_mode) return ES_EAUTH;
        es_strlcpy(out->tenant, ES_DEFAULT_TENANT, sizeof out->tenant);
        out->scopes = ES_SCOPE_ALL;
        out->anonymous = true;
        return ES_OK;
    }
    if (strncasecmp(authorization, "Bearer ", 7) != 0) return ES_EAUTH;
    const char *tok = authorization + 7;
    while (*tok == ' ')
        tok++;
    /* es_<16 hex>_<secret> */
    if (strncmp(tok, "es_", 3) != 0 || strlen(tok) < 3 + 16 + 2 || tok[19] != '_') return ES_EAUTH;
    char id[17];
    memcpy(id, tok + 3, 16);
    id[16] = 0;
    for (int i = 0; i < 16; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f'))) return ES_EAUTH;
    const char *secret = tok + 20;
    if (strlen(secret) > 128) return ES_EAUTH;
    char hash[65];
    es_sha256_hex(secret, strlen(secret), hash);
    const char *p[] = {id};
    es_rows *r = NULL;
    int rc = es_store_exec1(s,
                            "SELECT tenant, secret_hash, scopes FROM api_keys"
                            " WHERE id = $1 AND revoked_ms IS NULL",
                            1, p, &r);
    if (rc) {
        if (seen_check(id, hash, out) != ES_OK) return rc;
        es_warn("auth", "the store is unavailable (%s): key %s accepted as last seen",
                es_strerror(rc), id);
        return ES_OK;
    }
    rc = ES_EAUTH;
    if (es_rows_count(r) == 1 && strlen(es_rows_get(r, 0, 1)) == 64 &&
        es_ct_equal(es_rows_get(r, 0, 1), hash, 64)) {
        es_strlcpy(out->tenant, es_rows_get(r, 0, 0), sizeof out->tenant);
        es_strlcpy(out->key_id, id, sizeof out->key_id);
        out->scopes = (unsigned)es_rows_int(r, 0, 2, 0);
        if (out->scopes & ES_SCOPE_ADMIN) out->scopes |= ES_SCOPE_ALL;
        seen_put(id, hash, out->tenant, out->scopes);
        rc = ES_OK;
    } else {
        seen_drop(id);
    }
    es_rows_free(r);
    return rc;
}
