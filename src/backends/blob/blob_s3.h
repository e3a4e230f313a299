/* blob_s3.h - what the S3 blob backend (blob_s3.c) shows beyond its ops:
 * presigning with a given clock, so that a test can compare its URLs with
 * another SigV4 implementation's for the same instant. */
#ifndef ESTEIRA_BLOB_S3_H
#define ESTEIRA_BLOB_S3_H

#include <stdint.h>

/* es_blob_s3.presign, signed as of now_s (unix seconds) instead of the clock.
 * ctx is what es_blob_s3.open made; *url is malloc'd. */
int es_s3_presign_at(void *ctx, const char *method, const char *key, const char *content_type,
                     int64_t expires_s, int64_t now_s, char **url);

#endif
