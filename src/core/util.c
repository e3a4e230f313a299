/* util.c - time, ids, bounded buffers, parsing and hashing helpers. */
#include "esteira/util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "esteira/err.h"

/* ---------------------------------------------------------------- time */

int64_t es_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t es_mono_ms(void)
{
    return es_mono_us() / 1000;
}

int64_t es_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void es_sleep_ms(int64_t ms)
{
    if (ms <= 0) return;
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int es_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    if (pthread_condattr_init(&a) != 0) return ES_ENOMEM;
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
    return rc == 0 ? ES_OK : ES_ENOMEM;
}

void es_deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    if (ms < 0) ms = 0;
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void es_time_iso(int64_t ms, char out[25])
{
    time_t s = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    if (frac < 0) {
        frac += 1000;
        s -= 1;
    }
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, 25, "%Y-%m-%dT%H:%M:%S", &tm);
    if (n != 19) { /* years beyond 9999: not a timestamp esteira makes */
        es_strlcpy(out, "9999-12-31T23:59:59.999Z", 25);
        return;
    }
    out[19] = '.';
    out[20] = (char)('0' + frac / 100);
    out[21] = (char)('0' + frac / 10 % 10);
    out[22] = (char)('0' + frac % 10);
    out[23] = 'Z';
    out[24] = 0;
}

int64_t es_days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int es_days_in_month(int y, int m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return dm[m - 1];
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)(*p)[i])) return ES_EINVAL;
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    *out = v;
    return ES_OK;
}

int es_time_parse_iso(const char *s, int64_t *ms)
{
    int y, mo, d, h = 0, mi = 0, sec = 0, frac_ms = 0, off_min = 0;
    const char *p = s;
    if (!s || digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d))
        return ES_EINVAL;
    if (mo < 1 || mo > 12 || d < 1 || d > es_days_in_month(y, mo)) return ES_EINVAL;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi)) return ES_EINVAL;
        if (*p == ':') {
            p++;
            if (digits(&p, 2, &sec)) return ES_EINVAL;
            if (*p == '.' || *p == ',') {
                p++;
                int n = 0;
                while (isdigit((unsigned char)*p)) {
                    if (n < 3) frac_ms = frac_ms * 10 + (*p - '0');
                    n++, p++;
                }
                if (n == 0) return ES_EINVAL;
                for (; n < 3; n++)
                    frac_ms *= 10;
            }
        }
        if (h > 23 || mi > 59 || sec > 60) return ES_EINVAL;
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1, oh, om;
            if (digits(&p, 2, &oh)) return ES_EINVAL;
            if (*p == ':') p++;
            if (digits(&p, 2, &om) || oh > 23 || om > 59) return ES_EINVAL;
            off_min = sign * (oh * 60 + om);
        } else {
            return ES_EINVAL; /* a time needs a zone */
        }
    }
    if (*p) return ES_EINVAL;
    int64_t days = es_days_from_civil(y, mo, d);
    *ms = ((days * 86400 + h * 3600 + mi * 60 + sec) - (int64_t)off_min * 60) * 1000 + frac_ms;
    return ES_OK;
}

/* ---------------------------------------------------------------- ids */

int es_random(void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return ES_EIO;
        }
        p += r;
        n -= (size_t)r;
    }
    return ES_OK;
}

uint64_t es_random_below(uint64_t n)
{
    uint64_t v = 0;
    if (n == 0) return 0;
    es_random(&v, sizeof v);
    return v % n;
}

/* Ids are made on every hot path (one per event): random bytes come from a
 * per-thread pool refilled by one getrandom call, not a call per id. */
static void random_pooled(unsigned char *out, size_t n)
{
    static _Thread_local unsigned char pool[512];
    static _Thread_local size_t left;
    if (n > sizeof pool) {
        es_random(out, n);
        return;
    }
    if (left < n) {
        es_random(pool, sizeof pool);
        left = sizeof pool;
    }
    memcpy(out, pool + sizeof pool - left, n);
    memset(pool + sizeof pool - left, 0, n); /* used bytes do not linger */
    left -= n;
}

void es_uuid7(char out[ES_UUID_LEN + 1])
{
    unsigned char b[16];
    uint64_t ms = (uint64_t)es_now_ms();
    random_pooled(b + 6, 10);
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f)); /* version 7 */
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f)); /* variant 10 */
    static const char hx[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hx[b[i] >> 4];
        *o++ = hx[b[i] & 15];
    }
    *o = 0;
}

bool es_uuid_valid(const char *s)
{
    if (!s || strlen(s) != ES_UUID_LEN) return false;
    for (int i = 0; i < ES_UUID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* ---------------------------------------------------------------- buffers */

void es_buf_init(es_buf *b, size_t max)
{
    b->data = NULL;
    b->len = b->cap = 0;
    b->max = max;
}

void es_buf_finish(es_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int es_buf_reserve(es_buf *b, size_t extra)
{
    if (b->max && (extra > b->max || b->len > b->max - extra)) return ES_ELIMIT;
    size_t need = b->len + extra + 1; /* room for a NUL */
    if (need <= b->cap) return ES_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    if (b->max && cap > b->max + 1) cap = b->max + 1;
    if (cap < need) cap = need;
    char *d = realloc(b->data, cap);
    if (!d) return ES_ENOMEM;
    b->data = d;
    b->cap = cap;
    return ES_OK;
}

int es_buf_append(es_buf *b, const void *data, size_t len)
{
    int rc = es_buf_reserve(b, len);
    if (rc) return rc;
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
    return ES_OK;
}

int es_buf_puts(es_buf *b, const char *s)
{
    return es_buf_append(b, s, strlen(s));
}

int es_buf_printf(es_buf *b, const char *fmt, ...)
{
    va_list ap;
    char small[256];
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return ES_EINVAL;
    if ((size_t)n < sizeof small) return es_buf_append(b, small, (size_t)n);
    int rc = es_buf_reserve(b, (size_t)n);
    if (rc) return rc;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return ES_OK;
}

void es_buf_reset(es_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = 0;
}

const char *es_buf_cstr(es_buf *b)
{
    if (!b->data && es_buf_reserve(b, 0) != ES_OK) return "";
    b->data[b->len] = 0;
    return b->data;
}

char *es_buf_steal(es_buf *b)
{
    if (!b->data && es_buf_reserve(b, 0) != ES_OK) return NULL;
    char *d = b->data;
    d[b->len] = 0;
    b->data = NULL;
    b->len = b->cap = 0;
    return d;
}

/* ---------------------------------------------------------------- key/value */

void es_kv_free(es_kv *kv, int n)
{
    if (!kv) return;
    for (int i = 0; i < n; i++) {
        free(kv[i].key);
        free(kv[i].value);
    }
    free(kv);
}

const char *es_kv_get(const es_kv *kv, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (kv[i].key && strcmp(kv[i].key, key) == 0) return kv[i].value;
    return NULL;
}

/* ---------------------------------------------------------------- strings */

int es_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s || isspace((unsigned char)*s)) return ES_EINVAL;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max) return ES_EINVAL;
    *out = v;
    return ES_OK;
}

static int parse_number_unit(const char *s, double *num, const char **unit)
{
    if (!s || !*s || isspace((unsigned char)*s) || *s == '-' || *s == '+') return ES_EINVAL;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return ES_EINVAL;
    *num = v;
    *unit = end;
    return ES_OK;
}

int es_parse_size(const char *s, uint64_t *out)
{
    double v;
    const char *u;
    if (parse_number_unit(s, &v, &u)) return ES_EINVAL;
    static const struct {
        const char *name;
        double mul;
    } units[] = {{"", 1},
                 {"b", 1},
                 {"k", 1024.0},
                 {"kb", 1024.0},
                 {"kib", 1024.0},
                 {"m", 1048576.0},
                 {"mb", 1048576.0},
                 {"mib", 1048576.0},
                 {"g", 1073741824.0},
                 {"gb", 1073741824.0},
                 {"gib", 1073741824.0}};
    for (size_t i = 0; i < ES_ARRAY_LEN(units); i++) {
        if (strcasecmp(u, units[i].name) == 0) {
            double r = v * units[i].mul;
            if (r > 9.0e18) return ES_EINVAL;
            *out = (uint64_t)r;
            return ES_OK;
        }
    }
    return ES_EINVAL;
}

int es_parse_duration_ms(const char *s, int64_t *out)
{
    double v;
    const char *u;
    if (parse_number_unit(s, &v, &u)) return ES_EINVAL;
    double mul;
    if (!*u || strcmp(u, "ms") == 0)
        mul = 1;
    else if (strcmp(u, "s") == 0)
        mul = 1000;
    else if (strcmp(u, "m") == 0 || strcmp(u, "min") == 0)
        mul = 60000;
    else if (strcmp(u, "h") == 0)
        mul = 3600000;
    else
        return ES_EINVAL;
    double r = v * mul;
    if (r > 9.0e15) return ES_EINVAL;
    *out = (int64_t)r;
    return ES_OK;
}

int es_parse_bool(const char *s, bool *out)
{
    static const char *yes[] = {"1", "true", "yes", "on"}, *no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; s && i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = true, ES_OK;
        if (strcasecmp(s, no[i]) == 0) return *out = false, ES_OK;
    }
    return ES_EINVAL;
}

bool es_ident_valid(const char *s)
{
    if (!s || !((*s >= 'a' && *s <= 'z') || *s == '_')) return false;
    size_t n = 1;
    for (const char *p = s + 1; *p; p++, n++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return false;
    return n <= 63;
}

size_t es_strlcpy(char *dst, const char *src, size_t size)
{
    size_t n = strlen(src);
    if (size) {
        size_t c = n < size - 1 ? n : size - 1;
        memcpy(dst, src, c);
        dst[c] = 0;
    }
    return n;
}

char *es_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

bool es_streq(const char *a, const char *b)
{
    if (!a || !b) return a == b;
    return strcmp(a, b) == 0;
}

bool es_ct_equal(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

/* ---------------------------------------------------------------- hashing */

void es_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = 0;
}

void es_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256(data, len, md);
    es_hex(md, sizeof md, out);
}

void es_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                    unsigned char out[32])
{
    unsigned int olen = 32;
    HMAC(EVP_sha256(), key, (int)klen, data, len, out, &olen);
}

void es_b64url(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n) v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n) v |= in[i + 2];
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        if (i + 1 < n) out[o++] = t[(v >> 6) & 63];
        if (i + 2 < n) out[o++] = t[v & 63];
    }
    out[o] = 0;
}
