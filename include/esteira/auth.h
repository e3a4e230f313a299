/* auth.h - API keys, scopes and tenants.
 *
 * A token is "es_<key id>_<secret>"; only SHA-256(secret) is stored.  Every
 * resource carries the tenant of the key that made it, and a request sees only
 * its own tenant's resources (another tenant's answers 404).
 *
 * ESTEIRA_AUTH=auto (default): while no key exists and the server is bound to
 * loopback, requests without a token are accepted as tenant "default" with
 * every scope (logged at start).  As soon as a key exists, or when bound to any
 * other address, or with ESTEIRA_AUTH=required, a valid token is needed. */
#ifndef ESTEIRA_AUTH_H
#define ESTEIRA_AUTH_H

#include <jansson.h>
#include <stdbool.h>

#include "esteira/store.h"

#define ES_DEFAULT_TENANT "default"

typedef struct es_principal {
    char tenant[65];
    char key_id[40];
    unsigned scopes;
    bool anonymous;
} es_principal;

/* "ingest,read" -> bits; ES_EINVAL naming the unknown scope in *bad */
int es_scopes_parse(const char *s, unsigned *out, const char **bad);
/* bits -> "ingest,read" into out */
void es_scopes_format(unsigned scopes, char *out, size_t len);

/* Creates a key: *token (malloc'd) is shown once and never stored. */
int es_keys_create(es_store *s, const char *tenant, unsigned scopes, const char *name, char **token,
                   char key_id[40]);
int es_keys_list(es_store *s, json_t **out);
int es_keys_revoke(es_store *s, const char *key_id);
int es_keys_count(es_store *s, int64_t *n); /* active keys */

/* Checks an Authorization header ("Bearer es_…") or NULL.
 * open_mode = anonymous access allowed (see above).
 * ES_OK, ES_EAUTH (missing/bad/revoked token), or the store's error when it
 * cannot be asked and the key was not seen valid in the last 10 minutes. */
int es_auth_check(es_store *s, const char *authorization, bool open_mode, es_principal *out);

#endif
