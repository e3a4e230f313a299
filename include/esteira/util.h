/* util.h - small things everyone needs: time, ids, bounded buffers, strings,
 * key/value pairs, hashing. */
#ifndef ESTEIRA_UTIL_H
#define ESTEIRA_UTIL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define ES_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
/* An integer as text in a char array buf (for SQL parameters); evaluates to buf. */
#define ES_I64(buf, v) (snprintf((buf), sizeof(buf), "%lld", (long long)(v)), (buf))
#define ES_UUID_LEN    36 /* without the NUL */

/* ---- time */
int64_t es_now_ms(void);  /* wall clock, ms since the epoch */
int64_t es_mono_ms(void); /* monotonic, ms */
int64_t es_mono_us(void);
void es_sleep_ms(int64_t ms);
/* Condition variables that time out on the monotonic clock (immune to wall
 * clock steps), and the absolute deadline "ms from now" to wait for on them. */
int es_cond_init(pthread_cond_t *cv);
void es_deadline(struct timespec *ts, int64_t ms);
/* "2026-11-22T10:00:00.123Z"; out must hold 25 bytes. */
void es_time_iso(int64_t ms, char out[25]);
/* Parses RFC 3339 / ISO 8601 ("2026-11-22T10:00:00Z", with optional fraction and
 * offset, or a date alone); ES_EINVAL when malformed. */
int es_time_parse_iso(const char *s, int64_t *ms);
/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
int64_t es_days_from_civil(int64_t y, int m, int d);
/* Days in month m (1..12) of year y, in the proleptic Gregorian calendar. */
int es_days_in_month(int y, int m);

/* ---- ids */
/* UUIDv7 (RFC 9562): 48-bit ms timestamp, version, random; lower-case text. */
void es_uuid7(char out[ES_UUID_LEN + 1]);
bool es_uuid_valid(const char *s);
/* n random bytes from the OS (getrandom); ES_EIO when it fails. */
int es_random(void *buf, size_t n);
/* Random value in [0, n). */
uint64_t es_random_below(uint64_t n);

/* ---- bounded, growable buffer: every buffer a client can fill has a maximum */
typedef struct es_buf {
    char *data;
    size_t len, cap;
    size_t max; /* 0 = unbounded (only for data esteira produces itself) */
} es_buf;

void es_buf_init(es_buf *b, size_t max);
void es_buf_finish(es_buf *b); /* frees; the buffer may be re-inited */
/* ES_ELIMIT when the maximum would be exceeded (nothing is appended then). */
int es_buf_append(es_buf *b, const void *data, size_t len);
int es_buf_puts(es_buf *b, const char *s);
int es_buf_printf(es_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int es_buf_reserve(es_buf *b, size_t extra);
void es_buf_reset(es_buf *b);
/* NUL-terminated view of the contents (the NUL is not counted in len). */
const char *es_buf_cstr(es_buf *b);
/* Hands the data over (NUL-terminated, caller frees) and resets the buffer. */
char *es_buf_steal(es_buf *b);

/* ---- key/value pairs (message headers, hash fields) */
typedef struct es_kv {
    char *key;
    char *value;
} es_kv;

void es_kv_free(es_kv *kv, int n); /* frees the strings and the array */
const char *es_kv_get(const es_kv *kv, int n, const char *key);

/* ---- strings */
/* Strict integer parsing: the whole string, in range; ES_EINVAL otherwise. */
int es_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/* Sizes with an optional unit: 10, 10k, 10KB, 64MB, 1GiB (powers of 1024). */
int es_parse_size(const char *s, uint64_t *out);
/* Durations: 1500 (ms), 1500ms, 2s, 5m, 1h. */
int es_parse_duration_ms(const char *s, int64_t *out);
int es_parse_bool(const char *s, bool *out);
/* Identifier rule of SPEC.md: [a-z_][a-z0-9_]{0,62}. */
bool es_ident_valid(const char *s);
/* Copies at most size-1 bytes and always terminates; returns strlen(src). */
size_t es_strlcpy(char *dst, const char *src, size_t size);
char *es_strdup(const char *s);              /* NULL in, NULL out */
bool es_streq(const char *a, const char *b); /* NULL-safe */
/* Constant-time comparison of two byte strings of length n. */
bool es_ct_equal(const void *a, const void *b, size_t n);

/* ---- hashing (OpenSSL) */
void es_sha256_hex(const void *data, size_t len, char out[65]);
void es_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                    unsigned char out[32]);
void es_hex(const unsigned char *in, size_t n, char *out); /* out holds 2n+1 */
/* base64url without padding; out holds 4*ceil(n/3)+1 */
void es_b64url(const unsigned char *in, size_t n, char *out);

#endif
