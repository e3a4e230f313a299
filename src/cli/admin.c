/* admin.c - commands that work on the store directly: keys, migrate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "esteira/auth.h"
#include "esteira/blob.h"
#include "esteira/err.h"
#include "esteira/store.h"
#include "esteira/util.h"

static int open_store(es_config *cfg, es_store **s)
{
    int rc = es_store_open(cfg->database_url, cfg, s);
    if (!rc) rc = es_store_migrate(*s, NULL);
    if (rc) fprintf(stderr, "esteira: cannot open the store: %s\n", es_strerror(rc));
    return rc;
}

int cli_migrate(es_config *cfg)
{
    es_store *s = NULL;
    int rc = es_store_open(cfg->database_url, cfg, &s), n = 0;
    if (!rc) rc = es_store_migrate(s, &n);
    es_store_close(s);
    if (rc) {
        fprintf(stderr, "esteira: migration failed: %s\n", es_strerror(rc));
        return 1;
    }
    printf("%d migration%s applied\n", n, n == 1 ? "" : "s");
    return 0;
}

static const char *opt(int argc, char **argv, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], name, n) != 0) continue;
        if (argv[i][n] == '=') return argv[i] + n + 1;
        if (argv[i][n] == 0 && i + 1 < argc) return argv[i + 1];
    }
    return NULL;
}

int cli_keys(es_config *cfg, int argc, char **argv)
{
    const char *usage =
        "usage: esteira keys create --tenant T --scopes ingest,read,reports,files,admin"
        " [--name N] | list | revoke ID\n";
    if (argc < 1) {
        fputs(usage, stderr);
        return 2;
    }
    es_store *s = NULL;
    int rc = 1;
    if (!strcmp(argv[0], "create")) {
        const char *tenant = opt(argc, argv, "--tenant"), *scopes_s = opt(argc, argv, "--scopes");
        const char *bad = NULL;
        unsigned scopes;
        if (!tenant || !scopes_s) {
            fputs(usage, stderr);
            return 2;
        }
        if (!es_ident_valid(tenant)) {
            fprintf(stderr, "esteira: --tenant must match [a-z_][a-z0-9_]{0,62}\n");
            return 2;
        }
        if (es_scopes_parse(scopes_s, &scopes, &bad)) {
            fprintf(stderr,
                    "esteira: unknown scope '%s' (ingest, read, reports, files, admin, all)\n",
                    bad);
            return 2;
        }
        if (open_store(cfg, &s)) return 1;
        char *token = NULL, id[40];
        int r = es_keys_create(s, tenant, scopes, opt(argc, argv, "--name"), &token, id);
        if (r) {
            fprintf(stderr, "esteira: cannot create the key: %s\n", es_strerror(r));
        } else {
            printf("%s\n", token);
            fprintf(stderr, "key %s for tenant %s created; the token above is shown only once\n",
                    id, tenant);
            rc = 0;
        }
        free(token);
    } else if (!strcmp(argv[0], "list")) {
        json_t *list = NULL;
        if (open_store(cfg, &s)) return 1;
        if (es_keys_list(s, &list) == ES_OK) {
            char *out = json_dumps(list, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("%s\n", out);
            free(out);
            json_decref(list);
            rc = 0;
        }
    } else if (!strcmp(argv[0], "revoke") && argc == 2) {
        if (open_store(cfg, &s)) return 1;
        int r = es_keys_revoke(s, argv[1]);
        if (r)
            fprintf(stderr, "esteira: cannot revoke %s: %s\n", argv[1], es_strerror(r));
        else
            printf("revoked %s\n", argv[1]);
        rc = r ? 1 : 0;
    } else {
        fputs(usage, stderr);
        return 2;
    }
    es_store_close(s);
    return rc;
}

/* esteira presign METHOD KEY [CONTENT_TYPE]: a signed URL of the configured
 * blob store (S3's own, or esteira's /v1/blobs/ for file:), for
 * ESTEIRA_SIGNED_URL_TTL_MS. */
int cli_presign(es_config *cfg, int argc, char **argv)
{
    if (argc < 2 || argc > 3 || (strcmp(argv[0], "GET") && strcmp(argv[0], "PUT"))) {
        fprintf(stderr, "usage: esteira presign GET|PUT KEY [CONTENT_TYPE]\n");
        return 2;
    }
    if (!es_blob_key_valid(argv[1])) {
        fprintf(stderr, "esteira: invalid key '%s'\n", argv[1]);
        return 2;
    }
    if (!cfg->public_url || !*cfg->public_url) {
        free(cfg->public_url);
        cfg->public_url = strdup(cfg->url); /* file: URLs point at the server */
    }
    if ((!cfg->secret || !*cfg->secret)) {
        /* the server's generated key, as the file: backend signs with it */
        char path[1100], buf[65] = {0};
        snprintf(path, sizeof path, "%s/secret", cfg->data_dir);
        FILE *f = fopen(path, "r");
        if (f && fread(buf, 1, 64, f) == 64) {
            free(cfg->secret);
            cfg->secret = strdup(buf);
        }
        if (f) fclose(f);
    }
    es_blob *b = NULL;
    char *url = NULL;
    int rc = es_blob_open(cfg->blob_url, cfg, &b);
    if (!rc)
        rc = es_blob_presign(b, argv[0], argv[1], argc == 3 ? argv[2] : NULL,
                             cfg->signed_url_ttl_ms / 1000, &url);
    es_blob_close(b);
    if (rc) {
        fprintf(stderr, "esteira: cannot sign: %s\n", es_strerror(rc));
        return 1;
    }
    printf("%s\n", url);
    free(url);
    return 0;
}
