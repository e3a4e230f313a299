/* fuzz_sign.c - signed URL verification and percent-decoding on arbitrary bytes.
 *
 * Input: one flags byte, then up to four fields separated by '\n':
 *   raw query \n method \n key \n content type
 * Besides not crashing, three properties are checked:
 *   - a decoded string re-encodes and decodes back to itself;
 *   - es_sign_verify answers only OK, EAUTH, ETIMEDOUT or EINVAL, with a reason;
 *   - a URL that es_sign_query made for method/key/ct verifies for exactly that
 *     request before its expiry, and not after it. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/sign.h"

#define SECRET "fuzz-secret"
#define NOW    1800000000

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    es_log_set_level(ES_LOG_OFF);
    return 0;
}

static void check_decode(const char *s, size_t len, int plus_space)
{
    char *d = es_urldecode(s, len, plus_space);
    if (!d) return;
    if (strlen(d) > len) abort();
    for (int keep_slash = 0; keep_slash < 2; keep_slash++) {
        char *e = es_urlencode(d, keep_slash);
        if (!e) abort();
        char *d2 = es_urldecode(e, strlen(e), 1);
        if (!d2 || strcmp(d, d2) != 0) abort();
        free(d2);
        free(e);
    }
    free(d);
}

static bool plain(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384) return 0;
    uint8_t flags = data[0];
    const char *body = (const char *)data + 1;
    size_t blen = size - 1;

    check_decode(body, blen, flags & 1);

    /* the fields, as C strings */
    char *copy = malloc(blen + 1);
    if (!copy) return 0;
    memcpy(copy, body, blen);
    copy[blen] = '\0';
    char *field[4] = {NULL, NULL, NULL, NULL};
    char *p = copy;
    for (int i = 0; i < 4 && p; i++) {
        field[i] = p;
        p = strchr(p, '\n');
        if (p) *p++ = '\0';
    }
    const char *query = field[0], *method = field[1] ? field[1] : "";
    const char *key = field[2] ? field[2] : "", *ct = field[3] ? field[3] : "";
    const char *why = NULL;
    int64_t now = NOW + (int64_t)(flags >> 1) * 1000;

    int rc = es_sign_verify(SECRET, query, method, key, ct, now, &why);
    if (rc != ES_OK && rc != ES_EAUTH && rc != ES_ETIMEDOUT && rc != ES_EINVAL) abort();
    if (!why) abort();

    /* what we sign, we accept - for that request only, and only in time */
    char *q = es_sign_query(SECRET, method, key, ct, NOW + 60);
    if (*method && plain(method) && plain(key) && plain(ct)) {
        if (!q) abort();
        if (strlen(method) <= 512 && strlen(ct) <= 512) {
            if (es_sign_verify(SECRET, q, method, key, ct, NOW, &why) != ES_OK) abort();
            if (es_sign_verify(SECRET, q, method, key, ct, NOW + 60, &why) != ES_ETIMEDOUT) abort();
            if (es_sign_verify("other" SECRET, q, method, key, ct, NOW, &why) != ES_EAUTH) abort();
            if (*key && es_sign_verify(SECRET, q, method, key + 1, ct, NOW, &why) != ES_EAUTH)
                abort();
        }
    } else if (q) {
        abort(); /* a field that could be confused with the next one was signed */
    }
    free(q);
    free(copy);
    return 0;
}
