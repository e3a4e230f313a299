/* sign.c - esteira's own signed URLs and the percent-encoding they need.
 *
 * The signed string is "v1\n" method "\n" key "\n" content type "\n" exp, with
 * exp taken exactly as the URL spells it, so "exp=0123" does not verify with the
 * signature of "exp=123".  Neither the key (a blob key) nor a content type (a
 * header value) can hold a newline, and exp is digits only, so two different
 * requests never produce the same signed string.
 *
 * The query of a signed URL carries exactly four parameters - method, ct, exp
 * and sig - each once.  Anything else is refused: an unknown parameter could be
 * read by a later handler as if it had been signed, and a duplicated one could
 * be read differently by two parsers. */
#include "esteira/sign.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define SIGN_QUERY_MAX 4096 /* longer queries are not ours */
#define SIGN_FIELD_MAX 512  /* any one decoded value */

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

char *es_urlencode(const char *s, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!s) return NULL;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += (unreserved(*p) || (keep_slash && *p == '/')) ? 1 : 3;
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p) || (keep_slash && *p == '/')) {
            *o++ = (char)*p;
        } else {
            *o++ = '%';
            *o++ = hex[*p >> 4];
            *o++ = hex[*p & 15];
        }
    }
    *o = '\0';
    return out;
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A NUL byte, raw or as %00, counts as a bad escape: the result is a C string,
 * and a value silently cut at the NUL would not be the value that was sent. */
char *es_urldecode(const char *s, size_t len, int plus_space)
{
    if (!s) return NULL;
    char *out = malloc(len + 1), *o = out;
    if (!out) return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (len - i < 3) goto bad;
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) goto bad;
            *o++ = (char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && plus_space) {
            *o++ = ' ';
        } else if (c == '\0') {
            goto bad;
        } else {
            *o++ = (char)c;
        }
    }
    *o = '\0';
    return out;
bad:
    free(out);
    return NULL;
}

/* Newlines separate the fields of the signed string; no field may hold one. */
static bool field_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

static int sign_mac(const char *secret, const char *method, const char *key, const char *ct,
                    const char *exp, unsigned char mac[32])
{
    es_buf b;
    es_buf_init(&b, 0);
    int rc = es_buf_printf(&b, "v1\n%s\n%s\n%s\n%s", method, key, ct, exp);
    if (rc == ES_OK) es_hmac_sha256(secret, strlen(secret), b.data, b.len, mac);
    es_buf_finish(&b);
    return rc;
}

char *es_sign_query(const char *secret, const char *method, const char *key,
                    const char *content_type, int64_t exp_s)
{
    const char *ct = content_type ? content_type : "";
    if (!secret || !*secret || !method || !*method || !key || exp_s < 0 || !field_ok(method) ||
        !field_ok(key) || !field_ok(ct)) {
        es_warn("sign", "cannot sign: missing secret, or a bad method, key or content type");
        return NULL;
    }
    char exp[24];
    snprintf(exp, sizeof exp, "%lld", (long long)exp_s);
    unsigned char mac[32];
    char hex[65];
    if (sign_mac(secret, method, key, ct, exp, mac) != ES_OK) return NULL;
    es_hex(mac, sizeof mac, hex);

    char *em = es_urlencode(method, 0), *ec = es_urlencode(ct, 0), *out = NULL;
    if (em && ec) {
        es_buf q;
        es_buf_init(&q, 0);
        if (es_buf_printf(&q, "method=%s&ct=%s&exp=%s&sig=%s", em, ec, exp, hex) == ES_OK)
            out = es_buf_steal(&q);
        es_buf_finish(&q);
    }
    free(em);
    free(ec);
    return out;
}

enum { P_METHOD, P_CT, P_EXP, P_SIG, P_COUNT };
static const char *const param_names[P_COUNT] = {"method", "ct", "exp", "sig"};

/* Splits the raw query into the four parameters; on failure *why says why. */
static int parse_query(const char *query, char *vals[P_COUNT], const char **why)
{
    const char *p = query;
    while (*p) {
        const char *end = strchr(p, '&');
        if (!end) end = p + strlen(p);
        if (end == p) { /* "a=1&&b=2" or a trailing '&': nothing there */
            p++;
            continue;
        }
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (!eq) {
            *why = "malformed query";
            return ES_EAUTH;
        }
        char *name = es_urldecode(p, (size_t)(eq - p), 1);
        if (!name) {
            *why = "bad percent-escape in query";
            return ES_EAUTH;
        }
        int i = 0;
        while (i < P_COUNT && strcmp(name, param_names[i]) != 0)
            i++;
        free(name);
        if (i == P_COUNT) {
            *why = "unknown parameter in signed URL";
            return ES_EAUTH;
        }
        if (vals[i]) {
            *why = "duplicated parameter";
            return ES_EAUTH;
        }
        vals[i] = es_urldecode(eq + 1, (size_t)(end - eq - 1), 1);
        if (!vals[i]) {
            *why = "bad percent-escape in query";
            return ES_EAUTH;
        }
        if (strlen(vals[i]) > SIGN_FIELD_MAX) {
            *why = "parameter too long";
            return ES_EAUTH;
        }
        p = *end ? end + 1 : end;
    }
    for (int i = 0; i < P_COUNT; i++) {
        if (!vals[i]) {
            *why = i == P_SIG ? "missing signature" : "missing parameter";
            return ES_EAUTH;
        }
    }
    return ES_OK;
}

static bool parse_exp(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 18) return false; /* 18 digits cannot overflow int64 */
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static bool parse_sig(const char *s, unsigned char out[32])
{
    if (strlen(s) != 64) return false;
    for (int i = 0; i < 32; i++) {
        int hi = hexval((unsigned char)s[2 * i]), lo = hexval((unsigned char)s[2 * i + 1]);
        if (hi < 0 || lo < 0) return false;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return true;
}

/* Checks in this order: shape, method, content type, signature, expiry.  The
 * expiry comes last so that only a genuine URL learns that it has expired. */
int es_sign_verify(const char *secret, const char *query, const char *method, const char *key,
                   const char *content_type, int64_t now_s, const char **why)
{
    const char *unused;
    if (!why) why = &unused;
    *why = "ok";
    if (!secret || !*secret) {
        *why = "no signing secret configured";
        return ES_EAUTH;
    }
    if (!method || !key) {
        *why = "no method or key to check";
        return ES_EINVAL;
    }
    if (!query || !*query) {
        *why = "missing signature";
        return ES_EAUTH;
    }
    if (strlen(query) > SIGN_QUERY_MAX) {
        *why = "query too long";
        return ES_EAUTH;
    }

    char *vals[P_COUNT] = {0};
    int64_t exp = 0;
    unsigned char want[32], got[32];
    int rc = parse_query(query, vals, why);
    if (rc != ES_OK) goto out;
    rc = ES_EAUTH;
    if (strcmp(vals[P_METHOD], method) != 0) {
        *why = "method not allowed by this URL";
        goto out;
    }
    /* A GET (or HEAD) carries no body, so its Content-Type means nothing; the
     * signature still covers the ct the URL was made with. */
    bool has_body = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
    if (has_body && strcmp(vals[P_CT], content_type ? content_type : "") != 0) {
        *why = "content type not allowed by this URL";
        goto out;
    }
    if (!parse_exp(vals[P_EXP], &exp)) {
        *why = "malformed expiry";
        goto out;
    }
    if (!parse_sig(vals[P_SIG], got)) {
        *why = "malformed signature";
        goto out;
    }
    if (!field_ok(key) || !field_ok(vals[P_METHOD]) || !field_ok(vals[P_CT])) {
        *why = "signature mismatch";
        goto out;
    }
    rc = sign_mac(secret, vals[P_METHOD], key, vals[P_CT], vals[P_EXP], want);
    if (rc != ES_OK) {
        *why = "out of memory";
        goto out;
    }
    rc = ES_EAUTH;
    if (!es_ct_equal(want, got, sizeof want)) {
        *why = "signature mismatch";
        goto out;
    }
    if (now_s >= exp) {
        *why = "expired";
        rc = ES_ETIMEDOUT;
        goto out;
    }
    rc = ES_OK;
out:
    for (int i = 0; i < P_COUNT; i++)
        free(vals[i]);
    return rc;
}
