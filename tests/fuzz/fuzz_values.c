/* fuzz_values.c - es_value_normalize on arbitrary bytes, for every column type.
 *
 * Byte 0 picks the type (mod 10); byte 1 the options: bit 0 required, bit 1
 * no trim, bit 2 non-negative, bit 3 a max length of (byte 1 >> 4) + 1
 * characters, and for decimals a precision of 1 + (byte 1 >> 3) % 38 and a
 * scale of byte 1 % (precision + 1).  The rest is the value.  Checked:
 *   - the answer is OK or EINVAL; EINVAL names a problem and appends nothing;
 *   - OK appends \N exactly when the (trimmed) value is empty and optional,
 *     and otherwise COPY text with no raw tab, newline or carriage return;
 *   - a text column accepts exactly the values that an independent UTF-8
 *     decoder (Unicode's table 3-7) finds valid, with no NUL byte and within
 *     the max length; its decoded output is valid UTF-8;
 *   - normalising the decoded output again gives the same output
 *     (idempotence), for every type;
 *   - every output has PostgreSQL's binary form (pg_binary.c: a load never
 *     falls back to text for esteira's own values), and a decimal's base-10000
 *     digits spell the same number again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backends/store/pg_binary.h"
#include "esteira/dataset.h"
#include "esteira/err.h"
#include "esteira/store.h"
#include "esteira/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int collect(void *arg, const char *data, size_t len)
{
    return es_buf_append(arg, data, len);
}

static unsigned be16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

/* The decimal a binary numeric field stands for (the sum of its digits
 * times 10000^(weight - k)), written as the normaliser writes it: [-]int,
 * then a point and dscale fraction digits when dscale > 0. */
static void numeric_text(const unsigned char *f, size_t flen, es_buf *out)
{
    if (flen < 8) abort();
    int nd = (int)be16(f), weight = (int16_t)be16(f + 2);
    unsigned sign = be16(f + 4), dscale = be16(f + 6);
    if (flen != 8 + 2 * (size_t)nd || (sign != 0 && sign != 0x4000)) abort();
    char group[8];
    if (sign) es_buf_puts(out, "-");
    if (weight < 0) es_buf_puts(out, "0");
    for (int e = weight; e >= 0; e--) {
        int k = weight - e;
        unsigned v = k < nd ? be16(f + 8 + 2 * k) : 0;
        if (v > 9999) abort();
        snprintf(group, sizeof group, e == weight ? "%u" : "%04u", v);
        es_buf_puts(out, group);
    }
    if (!dscale) return;
    es_buf_puts(out, ".");
    size_t start = out->len;
    for (int e = -1; out->len - start < dscale; e--) {
        int k = weight - e;
        unsigned v = k >= 0 && k < nd ? be16(f + 8 + 2 * k) : 0;
        if (v > 9999) abort();
        snprintf(group, sizeof group, "%04u", v);
        es_buf_puts(out, group);
    }
    out->len = start + dscale;
}

/* Well-formed UTF-8 by the byte ranges of Unicode 15 table 3-7; the number
 * of code points in *chars. */
static bool utf8_ok(const unsigned char *s, size_t n, size_t *chars)
{
    size_t cp = 0;
    for (size_t i = 0; i < n; cp++) {
        unsigned char b = s[i];
        unsigned char lo = 0x80, hi = 0xBF;
        size_t k;
        if (b <= 0x7F) {
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            k = 1;
        } else if (b == 0xE0) {
            k = 2, lo = 0xA0;
        } else if (b == 0xED) {
            k = 2, hi = 0x9F;
        } else if (b >= 0xE1 && b <= 0xEF) {
            k = 2;
        } else if (b == 0xF0) {
            k = 3, lo = 0x90;
        } else if (b == 0xF4) {
            k = 3, hi = 0x8F;
        } else if (b >= 0xF1 && b <= 0xF3) {
            k = 3;
        } else {
            return false;
        }
        if (n - i - 1 < k) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t j = 2; j <= k; j++)
            if (s[i + j] < 0x80 || s[i + j] > 0xBF) return false;
        i += k + 1;
    }
    if (chars) *chars = cp;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    es_column c;
    memset(&c, 0, sizeof c);
    c.type = (es_coltype)(data[0] % 10);
    c.required = data[1] & 1;
    c.trim = !(data[1] & 2);
    c.nonneg = (data[1] & 4) != 0;
    c.max_len = (data[1] & 8) ? (data[1] >> 4) + 1 : 0;
    c.precision = 1 + (data[1] >> 3) % 38;
    c.scale = data[1] % (c.precision + 1);
    const char *in = (const char *)data + 2;
    size_t len = size - 2;

    es_buf out;
    es_buf_init(&out, 0);
    es_buf_puts(&out, "#");
    const char *problem = NULL;
    int rc = es_value_normalize(&c, in, len, &out, &problem);
    if (rc == ES_EINVAL) {
        if (!problem || !*problem || out.len != 1) abort();
    } else if (rc != ES_OK) {
        abort();
    }

    /* what trimming leaves */
    const char *t = in;
    size_t tn = len;
    if (c.trim) {
        while (tn && (*t == ' ' || *t == '\t'))
            t++, tn--;
        while (tn && (t[tn - 1] == ' ' || t[tn - 1] == '\t'))
            tn--;
    }
    if (tn == 0 && rc != (c.required ? ES_EINVAL : ES_OK)) abort();

    if (c.type == ES_COL_TEXT && tn > 0) {
        size_t chars = 0;
        bool want = utf8_ok((const unsigned char *)t, tn, &chars) && !memchr(t, 0, tn) &&
                    (c.max_len == 0 || chars <= (size_t)c.max_len);
        if (want != (rc == ES_OK)) abort();
    }
    if (rc != ES_OK) goto done;

    const char *o = out.data + 1;
    size_t on = out.len - 1;
    if (on == 2 && memcmp(o, "\\N", 2) == 0) {
        if (tn != 0) abort();
        goto done;
    }
    if (tn == 0 || on == 0) abort();
    if (memchr(o, '\t', on) || memchr(o, '\n', on) || memchr(o, '\r', on)) abort();

    /* decode, check, and normalise again */
    char *dec = malloc(on);
    if (!dec) abort();
    memcpy(dec, o, on);
    size_t dn = es_copy_unescape(dec, on);
    if (c.type == ES_COL_TEXT && !utf8_ok((const unsigned char *)dec, dn, NULL)) abort();
    es_buf again;
    es_buf_init(&again, 0);
    problem = NULL;
    if (es_value_normalize(&c, dec, dn, &again, &problem) != ES_OK) abort();
    if (again.len != on || memcmp(again.data, o, on) != 0) abort();
    es_buf_finish(&again);
    free(dec);

    /* the binary form: header (19), field count (2), length (4), value */
    es_copy_type ct = es_coltype_copy(c.type);
    if (es_pgbin_encode(&ct, 1, o, on, NULL, NULL, NULL) != ES_OK) abort();
    es_buf bin;
    es_buf_init(&bin, 0);
    if (es_pgbin_encode(&ct, 1, o, on, collect, &bin, NULL) != ES_OK || bin.len < 27) abort();
    if (c.type == ES_COL_DECIMAL) {
        es_buf back;
        es_buf_init(&back, 0);
        numeric_text((const unsigned char *)bin.data + 25, bin.len - 27, &back);
        if (back.len != on || memcmp(back.data, o, on) != 0) abort();
        es_buf_finish(&back);
    }
    es_buf_finish(&bin);

done:
    es_buf_finish(&out);
    return 0;
}
