/* cli.h - the commands of the esteira binary other than the servers. */
#ifndef ESTEIRA_CLI_H
#define ESTEIRA_CLI_H

#include <jansson.h>

#include "esteira/conf.h"

/* Admin commands that work on the store directly (no server needed). */
int cli_keys(es_config *cfg, int argc, char **argv);
int cli_migrate(es_config *cfg);
int cli_presign(es_config *cfg, int argc, char **argv);

/* Client commands: talk to ESTEIRA_URL with ESTEIRA_TOKEN. */
int cli_status(es_config *cfg, int argc, char **argv);
int cli_jobs(es_config *cfg, int argc, char **argv);
int cli_dlq(es_config *cfg, int argc, char **argv);
/* upload FILE --dataset NAME [--wait] [--idempotency-key K] [--quiet] (upload.c) */
int cli_upload(es_config *cfg, int argc, char **argv);
/* events send --user U --type T --session S [--data JSON] [--id UUID] [--at TIME]
 *           | --file FILE|- [--chunk N] [--retries N] [--quiet]   (events.c) */
int cli_events(es_config *cfg, int argc, char **argv);

/* One HTTP exchange with the server.  *out = parsed JSON body (or NULL). */
int cli_http(const es_config *cfg, const char *method, const char *path, const char *body,
             long *status, json_t **out);

#endif
