/* client.c - client commands: status, jobs, dlq (libcurl against ESTEIRA_URL). */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/util.h"

#define CLIENT_MAX_RESPONSE (64 * 1024 * 1024)

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    es_buf *b = arg;
    return es_buf_append(b, p, size * n) == ES_OK ? size * n : 0;
}

int cli_http(const es_config *cfg, const char *method, const char *path, const char *body,
             long *status, json_t **out)
{
    *out = NULL;
    *status = 0;
    CURL *c = curl_easy_init();
    if (!c) return ES_ENOMEM;
    char url[2048], auth[600];
    snprintf(url, sizeof url, "%s%s", cfg->url, path);
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json");
    if (body) h = curl_slist_append(h, "Content-Type: application/json");
    if (cfg->token && *cfg->token) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", cfg->token);
        h = curl_slist_append(h, auth);
    }
    es_buf b;
    es_buf_init(&b, CLIENT_MAX_RESPONSE);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (body) curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    CURLcode cc = curl_easy_perform(c);
    int rc = ES_OK;
    if (cc != CURLE_OK) {
        fprintf(stderr, "esteira: cannot reach %s: %s\n", cfg->url, curl_easy_strerror(cc));
        rc = ES_EAGAIN;
    } else {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
        if (b.len) *out = json_loadb(b.data, b.len, 0, NULL);
    }
    es_buf_finish(&b);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return rc;
}

/* Prints the body; a non-2xx answer prints its error and fails. */
static int show(long status, json_t *body)
{
    if (status >= 200 && status < 300) {
        if (body) {
            char *s = json_dumps(body, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
            printf("%s\n", s);
            free(s);
        }
        json_decref(body);
        return 0;
    }
    json_t *e = json_object_get(body, "error");
    fprintf(stderr, "esteira: %ld %s: %s\n", status, e ? es_json_str(e, "code") : "error",
            e ? es_json_str(e, "message") : "(no details)");
    json_decref(body);
    return 1;
}

static int simple(const es_config *cfg, const char *method, const char *path, const char *body)
{
    long status;
    json_t *out;
    if (cli_http(cfg, method, path, body, &status, &out)) return 1;
    return show(status, out);
}

int cli_status(es_config *cfg, int argc, char **argv)
{
    if (argc != 1 || !es_uuid_valid(argv[0])) {
        fprintf(stderr, "usage: esteira status ID\n");
        return 2;
    }
    char path[128];
    snprintf(path, sizeof path, "/v1/jobs/%s", argv[0]);
    return simple(cfg, "GET", path, NULL);
}

int cli_jobs(es_config *cfg, int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "list")) {
        char path[256] = "/v1/jobs";
        if (argc >= 2) snprintf(path, sizeof path, "/v1/jobs?%s", argv[1]);
        return simple(cfg, "GET", path, NULL);
    }
    if (argc >= 2 && !strcmp(argv[0], "create")) {
        json_t *b = json_pack("{s:s}", "kind", argv[1]);
        if (argc >= 3) {
            json_t *p = json_loads(argv[2], 0, NULL);
            if (!json_is_object(p)) {
                fprintf(stderr, "esteira: the payload must be a JSON object\n");
                json_decref(p);
                json_decref(b);
                return 2;
            }
            json_object_set_new(b, "payload", p);
        }
        char *s = json_dumps(b, JSON_COMPACT);
        json_decref(b);
        int rc = simple(cfg, "POST", "/v1/jobs", s);
        free(s);
        return rc;
    }
    if (argc == 2 && (!strcmp(argv[0], "retry") || !strcmp(argv[0], "cancel"))) {
        char path[128];
        snprintf(path, sizeof path, "/v1/jobs/%s/%s", argv[1], argv[0]);
        return simple(cfg, "POST", path, NULL);
    }
    fprintf(
        stderr,
        "usage: esteira jobs list [QUERY] | create KIND [PAYLOAD_JSON] | retry ID | cancel ID\n");
    return 2;
}

int cli_dlq(es_config *cfg, int argc, char **argv)
{
    char path[128];
    if (argc == 1 && !strcmp(argv[0], "list")) return simple(cfg, "GET", "/v1/dlq", NULL);
    if (argc == 2 && !strcmp(argv[0], "retry")) {
        snprintf(path, sizeof path, "/v1/dlq/%s/retry", argv[1]);
        return simple(cfg, "POST", path, NULL);
    }
    if (argc == 2 && !strcmp(argv[0], "delete")) {
        snprintf(path, sizeof path, "/v1/dlq/%s", argv[1]);
        return simple(cfg, "DELETE", path, NULL);
    }
    if (argc == 1 && !strcmp(argv[0], "purge")) {
        /* every dead job, page by page */
        int failed = 0, n = 0;
        for (;;) {
            long status;
            json_t *out;
            if (cli_http(cfg, "GET", "/v1/dlq?limit=500", NULL, &status, &out) || status != 200)
                return show(status, out) ? 1 : 1;
            json_t *items = json_object_get(out, "items"), *it;
            size_t i;
            if (!json_array_size(items)) {
                json_decref(out);
                break;
            }
            json_array_foreach(items, i, it)
            {
                snprintf(path, sizeof path, "/v1/dlq/%s", es_json_str(it, "id"));
                long st;
                json_t *o2;
                if (cli_http(cfg, "DELETE", path, NULL, &st, &o2) || st != 204)
                    failed++;
                else
                    n++;
                json_decref(o2);
            }
            json_decref(out);
            if (failed) break;
        }
        printf("purged %d dead jobs%s\n", n, failed ? " (some could not be deleted)" : "");
        return failed ? 1 : 0;
    }
    fprintf(stderr, "usage: esteira dlq list | retry ID | delete ID | purge\n");
    return 2;
}
