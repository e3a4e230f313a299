/* sign.h - esteira's own signed URLs (used by the file: blob backend).
 *
 * A URL {public_url}/v1/blobs/{key}?method=PUT&ct={content type}&exp={unix s}&sig={hex}
 * where sig = HMAC-SHA256(secret, "v1\n" method "\n" key "\n" ct "\n" exp).
 * Verification takes what the request really carries (its method, key and
 * Content-Type header), so a URL used for another method, key or content type,
 * a changed parameter, or an expired URL is refused.  The query must carry
 * method, ct, exp and sig exactly once each and nothing else: an unknown or
 * duplicated parameter is refused (ES_EAUTH). */
#ifndef ESTEIRA_SIGN_H
#define ESTEIRA_SIGN_H

#include <stddef.h>
#include <stdint.h>

/* The query string (without '?') for method/key/content type, expiring at exp_s.
 * content_type may be NULL or "" (GET). Returns a malloc'd string. */
char *es_sign_query(const char *secret, const char *method, const char *key,
                    const char *content_type, int64_t exp_s);

/* Verifies a raw query string (as received, percent-encoded) against the
 * request.  ES_OK, ES_EAUTH (bad or missing signature, wrong method, key or
 * content type) or ES_ETIMEDOUT (expired).  *why names the problem. */
int es_sign_verify(const char *secret, const char *query, const char *method, const char *key,
                   const char *content_type, int64_t now_s, const char **why);

/* Percent-encodes per RFC 3986 (unreserved kept; '/' kept when keep_slash). */
char *es_urlencode(const char *s, int keep_slash);
/* Decodes %XX and '+' (when plus_space) into a malloc'd string; NULL on bad escapes. */
char *es_urldecode(const char *s, size_t len, int plus_space);

#endif
