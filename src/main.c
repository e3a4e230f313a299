/* main.c - the command line: picks the command, loads the settings, hands over. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "esteira/app.h"
#include "esteira/conf.h"

#define ESTEIRA_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out,
            "esteira %s - moves CSV files and event streams into a database and object storage\n\n"
            "usage: esteira [SETTINGS] COMMAND [ARGS]\n\n"
            "Servers:\n"
            "  up                 API and workers in one process (embedded defaults: nothing to "
            "set up)\n"
            "  serve              the API only\n"
            "  work               the workers only\n"
            "Administration (on the store directly):\n"
            "  migrate            apply schema migrations (also done at start)\n"
            "  config             print the effective settings (secrets masked)\n"
            "  keys create --tenant T --scopes S [--name N] | keys list | keys revoke ID\n"
            "  presign GET|PUT KEY [TYPE]  a signed, expiring URL of an object in the blob store\n"
            "Client (talks to ESTEIRA_URL with ESTEIRA_TOKEN):\n"
            "  upload FILE --dataset NAME [--wait] [--idempotency-key K] [--quiet]\n"
            "                     a CSV file into a dataset; --wait follows it to the end\n"
            "  events send --user U --type T --session S [--data JSON] [--id UUID] [--at TIME]\n"
            "  events send --file FILE|- [--chunk N] [--retries N] [--quiet]\n"
            "                     one event, or a file of NDJSON events (- = stdin) in batches\n"
            "  status ID          a job's status and history\n"
            "  jobs list [QUERY] | jobs create KIND [PAYLOAD] | jobs retry ID | jobs cancel ID\n"
            "  dlq list | dlq retry ID | dlq delete ID | dlq purge\n"
            "  version, help\n\n",
            ESTEIRA_VERSION);
    es_config_print_help(out);
}

/* Splits argv into settings (--name=value of the table) and the command's own args. */
static int split_args(int argc, char **argv, char **settings, int *ns, char **rest, int *nr)
{
    *ns = *nr = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "--", 2) && a[2]) {
            char name[80];
            const char *eq = strchr(a, '=');
            snprintf(name, sizeof name, "%.*s", eq ? (int)(eq - a - 2) : (int)strlen(a + 2), a + 2);
            const es_conf_entry *e = es_conf_find(name);
            if (e) {
                settings[(*ns)++] = argv[i];
                if (!eq && e->type != ES_CONF_BOOL && i + 1 < argc) settings[(*ns)++] = argv[++i];
                continue;
            }
        }
        rest[(*nr)++] = argv[i];
    }
    return 0;
}

int main(int argc, char **argv)
{
    char **settings = calloc((size_t)argc + 1, sizeof *settings);
    char **rest = calloc((size_t)argc + 1, sizeof *rest);
    int ns, nr;
    if (!settings || !rest) return 1;
    split_args(argc, argv, settings, &ns, rest, &nr);
    const char *cmd = nr ? rest[0] : "help";
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        usage(stdout);
        free(settings);
        free(rest);
        return 0;
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("esteira %s\n", ESTEIRA_VERSION);
        free(settings);
        free(rest);
        return 0;
    }
    es_config cfg;
    char err[512];
    if (es_config_load(&cfg, ns, settings, err, sizeof err)) {
        fprintf(stderr, "esteira: invalid setting: %s\n", err);
        es_config_finish(&cfg);
        free(settings);
        free(rest);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    int nargs = nr - 1;
    char **args = rest + 1;
    if (!strcmp(cmd, "up"))
        rc = es_app_main(&cfg, ES_ROLE_API | ES_ROLE_WORKER);
    else if (!strcmp(cmd, "serve"))
        rc = es_app_main(&cfg, ES_ROLE_API);
    else if (!strcmp(cmd, "work"))
        rc = es_app_main(&cfg, ES_ROLE_WORKER);
    else if (!strcmp(cmd, "migrate"))
        rc = cli_migrate(&cfg);
    else if (!strcmp(cmd, "config"))
        es_config_print(&cfg, stdout), rc = 0;
    else if (!strcmp(cmd, "keys"))
        rc = cli_keys(&cfg, nargs, args);
    else if (!strcmp(cmd, "presign"))
        rc = cli_presign(&cfg, nargs, args);
    else if (!strcmp(cmd, "upload"))
        rc = cli_upload(&cfg, nargs, args);
    else if (!strcmp(cmd, "events"))
        rc = cli_events(&cfg, nargs, args);
    else if (!strcmp(cmd, "status"))
        rc = cli_status(&cfg, nargs, args);
    else if (!strcmp(cmd, "jobs"))
        rc = cli_jobs(&cfg, nargs, args);
    else if (!strcmp(cmd, "dlq"))
        rc = cli_dlq(&cfg, nargs, args);
    else {
        fprintf(stderr, "esteira: unknown command '%s' (see esteira help)\n", cmd);
        rc = 2;
    }
    curl_global_cleanup();
    es_config_finish(&cfg);
    free(settings);
    free(rest);
    return rc;
}
