/* pg_binary.c - COPY text rows re-encoded as PostgreSQL's binary COPY.
 *
 * The stream: an 11-byte signature, two int32 (flags, header extension
 * length), then per row an int16 field count and per field an int32 length
 * (-1 for NULL) followed by the value in its type's send format; an int16 -1
 * ends it.  Every integer is big-endian.  The send formats used here:
 *   text, jsonb  the bytes (jsonb: a version byte 1 first)
 *   int4, int8   two's complement
 *   bool         one byte, 0 or 1
 *   date         int32 days since 2000-01-01
 *   timestamptz  int64 microseconds since 2000-01-01 00:00:00 UTC
 *   uuid         16 bytes
 *   numeric      int16 ndigits, weight, sign (0 or 0x4000), dscale, then
 *                ndigits int16 base-10000 digits, the first worth
 *                10000^weight */
#include "backends/store/pg_binary.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/util.h"

#define FLUSH_AT        (256 * 1024) /* bytes handed to the sink at a time */
#define NUMERIC_DIGITS  1000         /* PostgreSQL's NUMERIC_MAX_PRECISION */
#define NUMERIC_NEG     0x4000
#define DAYS_TO_2000    10957      /* 1970-01-01 .. 2000-01-01 */
#define FIELD_BYTES_MAX 0x3FFFFFFF /* a value's length is an int32 */

static const char SIGNATURE[11] = {'P', 'G', 'C', 'O', 'P', 'Y', '\n', '\377', '\r', '\n', '\0'};

static void be16(char *w, uint16_t v)
{
    w[0] = (char)(v >> 8);
    w[1] = (char)v;
}

static void be32(char *w, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        w[i] = (char)v;
}

static void be64(char *w, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        w[i] = (char)v;
}

/* A value of fixed size: its length word, then room for it. */
static char *fixed(es_buf *b, size_t n)
{
    if (es_buf_reserve(b, 4 + n) != ES_OK) return NULL;
    char *w = b->data + b->len;
    be32(w, (uint32_t)n);
    b->len += 4 + n;
    return w + 4;
}

static bool digits(const char *p, size_t n, int64_t *v)
{
    int64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)p[i] - '0';
        if (d > 9) return false;
        r = r * 10 + d;
    }
    *v = r;
    return true;
}

/* [-+]digits within [lo, hi] */
static bool parse_int(const char *p, size_t n, int64_t lo, int64_t hi, int64_t *out)
{
    bool neg = n && p[0] == '-';
    size_t i = n && (p[0] == '-' || p[0] == '+');
    if (i == n || n - i > 19) return false;
    uint64_t v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)p[i] - '0';
        if (d > 9) return false;
        v = v * 10 + d; /* 19 digits cannot wrap a uint64 */
    }
    if (neg ? v > (uint64_t)INT64_MAX + 1 : v > (uint64_t)INT64_MAX) return false;
    int64_t s = neg ? (int64_t)(0 - v) : (int64_t)v;
    if (s < lo || s > hi) return false;
    *out = s;
    return true;
}

/* YYYY-MM-DD, years 1..9999: days since 2000-01-01 */
static bool parse_date(const char *p, size_t n, int64_t *days)
{
    int64_t y, m, d;
    if (n != 10 || p[4] != '-' || p[7] != '-' || !digits(p, 4, &y) || !digits(p + 5, 2, &m) ||
        !digits(p + 8, 2, &d))
        return false;
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > es_days_in_month((int)y, (int)m)) return false;
    *days = es_days_from_civil(y, (int)m, (int)d) - DAYS_TO_2000;
    return true;
}

/* YYYY-MM-DD[T ]HH:MM:SS[.f{1,6}]Z: microseconds since 2000-01-01 UTC */
static bool parse_timestamp(const char *p, size_t n, int64_t *us)
{
    int64_t days, h, mi, s, frac = 0;
    if (n < 20 || p[n - 1] != 'Z' || !parse_date(p, 10, &days) || (p[10] != 'T' && p[10] != ' ') ||
        p[13] != ':' || p[16] != ':' || !digits(p + 11, 2, &h) || !digits(p + 14, 2, &mi) ||
        !digits(p + 17, 2, &s) || h > 23 || mi > 59 || s > 59)
        return false;
    size_t k = 19;
    if (p[k] == '.') {
        size_t f = ++k;
        while (k < n - 1 && k - f < 6 && (unsigned)(p[k] - '0') <= 9)
            frac = frac * 10 + (p[k++] - '0');
        if (k == f) return false;
        for (size_t z = k - f; z < 6; z++)
            frac *= 10;
    }
    if (k != n - 1) return false;
    *us = ((days * 86400 + h * 3600 + mi * 60 + s) * 1000000) + frac;
    return true;
}

/* a hex digit's value plus one; 0 for anything else */
static const unsigned char HEX1[256] = {
    ['0'] = 1,  ['1'] = 2,  ['2'] = 3,  ['3'] = 4,  ['4'] = 5,  ['5'] = 6,  ['6'] = 7,  ['7'] = 8,
    ['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
    ['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
};

/* 8-4-4-4-12 hex digits, or 32 without the hyphens */
static bool parse_uuid(const char *p, size_t n, unsigned char out[16])
{
    if (n != 36 && n != 32) return false;
    size_t k = 0;
    for (size_t i = 0; i < n; i += 2) {
        if (n == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
            if (p[i] != '-') return false;
            i--; /* the next pair begins after the hyphen */
            continue;
        }
        int hi = HEX1[(unsigned char)p[i]] - 1, lo = HEX1[(unsigned char)p[i + 1]] - 1;
        if (hi < 0 || lo < 0) return false;
        out[k++] = (unsigned char)(hi << 4 | lo);
    }
    return k == 16;
}

/* [-+]int[.frac] (one side may be empty, not both) */
static int put_numeric(es_buf *b, const char *p, size_t n)
{
    const char *end = p + n;
    bool neg = n && *p == '-';
    if (n && (*p == '-' || *p == '+')) p++;
    const char *ip = p;
    while (p < end && (unsigned)(*p - '0') <= 9)
        p++;
    const char *iend = p, *fp = p;
    if (p < end && *p == '.') {
        fp = ++p;
        while (p < end && (unsigned)(*p - '0') <= 9)
            p++;
    }
    const char *fend = p;
    if (p != end || (iend == ip && fend == fp)) return ES_EINVAL;
    while (ip < iend && *ip == '0')
        ip++;
    size_t ilen = (size_t)(iend - ip), flen = (size_t)(fend - fp);
    if (ilen + flen > NUMERIC_DIGITS) return ES_EINVAL;
    /* the integer part in groups of four counted from the point, as the
     * fraction; the first group of each padded with zeros */
    size_t igroups = (ilen + 3) / 4, fgroups = (flen + 3) / 4, ng = igroups + fgroups;
    uint16_t g[NUMERIC_DIGITS / 4 + 2];
    for (size_t k = 0; k < igroups; k++) {
        /* group k holds the digits ilen - 4 * (igroups - k) .. +4 */
        int64_t from = (int64_t)ilen - 4 * (int64_t)(igroups - k), v = 0;
        for (int64_t i = from; i < from + 4; i++)
            v = v * 10 + (i >= 0 ? ip[i] - '0' : 0);
        g[k] = (uint16_t)v;
    }
    for (size_t k = 0; k < fgroups; k++) {
        int v = 0;
        for (size_t i = 4 * k; i < 4 * k + 4; i++)
            v = v * 10 + (i < flen ? fp[i] - '0' : 0);
        g[igroups + k] = (uint16_t)v;
    }
    int weight = (int)igroups - 1;
    size_t first = 0, last = ng; /* without zero groups at either end */
    while (first < last && g[first] == 0) {
        first++;
        weight--;
    }
    while (last > first && g[last - 1] == 0)
        last--;
    size_t nd = last - first;
    if (nd == 0) { /* zero: no digits, no sign */
        weight = 0;
        neg = false;
    }
    char *w = fixed(b, 8 + 2 * nd);
    if (!w) return ES_ENOMEM;
    be16(w, (uint16_t)nd);
    be16(w + 2, (uint16_t)(int16_t)weight);
    be16(w + 4, neg ? NUMERIC_NEG : 0);
    be16(w + 6, (uint16_t)flen); /* the scale as written: 7811.00 keeps its .00 */
    for (size_t k = 0; k < nd; k++)
        be16(w + 8 + 2 * k, g[first + k]);
    return ES_OK;
}

/* One field: p[0..n) as it stands in the text row (escapes and all). */
static int put_field(es_buf *b, es_copy_type t, const char *p, size_t n, bool check)
{
    if (n == 2 && p[0] == '\\' && p[1] == 'N') {
        if (check) return ES_OK;
        char *w = fixed(b, 0);
        if (!w) return ES_ENOMEM;
        be32(w - 4, UINT32_MAX); /* -1: NULL */
        return ES_OK;
    }
    int64_t v;
    char *w;
    switch (t) {
    case ES_COPY_TEXT:
    case ES_COPY_JSONB: {
        if (n > FIELD_BYTES_MAX) return ES_EINVAL;
        if (check) return ES_OK; /* any bytes are text; the server checks the encoding */
        bool jsonb = t == ES_COPY_JSONB;
        if (!(w = fixed(b, n + jsonb))) return ES_ENOMEM;
        if (jsonb) *w++ = 1;
        memcpy(w, p, n);
        size_t m = memchr(w, '\\', n) ? es_copy_unescape(w, n) : n;
        be32(w - 4 - jsonb, (uint32_t)(m + jsonb));
        b->len -= n - m;
        return ES_OK;
    }
    case ES_COPY_INT4:
        if (!parse_int(p, n, INT32_MIN, INT32_MAX, &v)) return ES_EINVAL;
        if (!(w = fixed(b, 4))) return ES_ENOMEM;
        be32(w, (uint32_t)v);
        return ES_OK;
    case ES_COPY_INT8:
        if (!parse_int(p, n, INT64_MIN, INT64_MAX, &v)) return ES_EINVAL;
        if (!(w = fixed(b, 8))) return ES_ENOMEM;
        be64(w, (uint64_t)v);
        return ES_OK;
    case ES_COPY_BOOL: {
        bool yes = (n == 4 && memcmp(p, "true", 4) == 0) || (n == 1 && p[0] == 't');
        bool no = (n == 5 && memcmp(p, "false", 5) == 0) || (n == 1 && p[0] == 'f');
        if (!yes && !no) return ES_EINVAL;
        if (!(w = fixed(b, 1))) return ES_ENOMEM;
        *w = yes;
        return ES_OK;
    }
    case ES_COPY_DATE:
        if (!parse_date(p, n, &v)) return ES_EINVAL;
        if (!(w = fixed(b, 4))) return ES_ENOMEM;
        be32(w, (uint32_t)v);
        return ES_OK;
    case ES_COPY_TIMESTAMPTZ:
        if (!parse_timestamp(p, n, &v)) return ES_EINVAL;
        if (!(w = fixed(b, 8))) return ES_ENOMEM;
        be64(w, (uint64_t)v);
        return ES_OK;
    case ES_COPY_UUID: {
        unsigned char u[16];
        if (!parse_uuid(p, n, u)) return ES_EINVAL;
        if (!(w = fixed(b, 16))) return ES_ENOMEM;
        memcpy(w, u, 16);
        return ES_OK;
    }
    case ES_COPY_NUMERIC: return put_numeric(b, p, n);
    }
    return ES_EINVAL;
}

int es_pgbin_encode(const es_copy_type *types, int ncols, const char *text, size_t len,
                    es_pgbin_sink sink, void *arg, size_t *bad_row)
{
    if (bad_row) *bad_row = 0;
    if (ncols < 1 || ncols > INT16_MAX) return ES_EINVAL;
    bool check = sink == NULL;
    es_buf b;
    es_buf_init(&b, 0);
    int rc = ES_OK;
    if (!check) {
        char head[19];
        memcpy(head, SIGNATURE, sizeof SIGNATURE);
        memset(head + 11, 0, 8); /* flags, header extension length */
        rc = es_buf_append(&b, head, sizeof head);
    }
    size_t row = 0;
    const char *p = text, *end = text + len;
    while (rc == ES_OK && p < end) {
        row++;
        size_t row_start = b.len;
        char count[2];
        be16(count, (uint16_t)ncols);
        if (!check) rc = es_buf_append(&b, count, 2);
        /* fields end at a tab, the row at a newline (the last row may lack it) */
        for (int i = 0; rc == ES_OK && i < ncols; i++) {
            const char *f = p;
            while (p < end && *p != '\t' && *p != '\n')
                p++;
            bool row_ends = p == end || *p == '\n';
            if (row_ends != (i + 1 == ncols)) {
                rc = ES_EINVAL; /* fewer or more fields than columns */
                break;
            }
            rc = put_field(&b, types ? types[i] : ES_COPY_TEXT, f, (size_t)(p - f), check);
            if (p < end) p++;
        }
        if (rc == ES_EINVAL && bad_row) *bad_row = row;
        if (check) b.len = row_start; /* a check keeps nothing */
        if (rc == ES_OK && !check && b.len >= FLUSH_AT) {
            rc = sink(arg, b.data, b.len);
            es_buf_reset(&b);
        }
    }
    if (rc == ES_OK && !check) {
        char trailer[2];
        be16(trailer, UINT16_MAX); /* -1 */
        rc = es_buf_append(&b, trailer, 2);
        if (rc == ES_OK) rc = sink(arg, b.data, b.len);
    }
    es_buf_finish(&b);
    return rc;
}
