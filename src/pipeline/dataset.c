/* dataset.c - typed datasets: their definitions (built in, or from JSON), the
 * DDL of their tables, the mapping of a CSV header onto their columns, and the
 * validation and normalisation of every value on its way to the store.
 *
 * The table of a dataset holds its columns, in order, and then two more that
 * record where each row came from (provenance):
 *
 *   upload_id text    the upload that inserted the row
 *   line      bigint  the row's line in that upload's CSV (1 = the header)
 *
 * The loader fills them with every row, so a row can be traced back to its
 * file and line, and a re-sent file whose rows are duplicates (same key)
 * leaves the first upload's provenance in place.  Both names are therefore
 * reserved: no dataset column may use them.
 *
 * Identifiers are written into SQL without quotes (the store backends build
 * their COPY and INSERT statements the same way), so a column name must not
 * be a word that either engine reserves; the list below is the set of
 * keywords that PostgreSQL 15 or SQLite 3.40 refuse as a bare column name.
 *
 * es_value_normalize runs once per value of every row of every upload (six
 * million calls for a million-row debts file), so each type has a
 * hand-written check that touches each byte once and writes straight into
 * the caller's buffer; only json parses into a tree.  Its output is the text
 * PostgreSQL's COPY reads; SQLite's backend binds the same text, which its
 * column affinities then convert (a decimal column is NUMERIC there, so
 * 7811.00 reads back as 7811: SQLite keeps numbers, not their spelling). */
#include "esteira/dataset.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/log.h"

#define COMP "dataset"

#define DECIMAL_MAX_PRECISION 38
#define EMAIL_MAX             254
#define TEXT_MAX_LEN          (1 << 30)
#define JSON_MAX_DEPTH        64
#define PROBLEM_FIELD_MAX     200 /* bytes of a header quoted back in a problem */

/* ---------------------------------------------------------------- types */

static const char *const type_names[] = {
    [ES_COL_TEXT] = "text",           [ES_COL_INTEGER] = "integer", [ES_COL_BIGINT] = "bigint",
    [ES_COL_DECIMAL] = "decimal",     [ES_COL_BOOLEAN] = "boolean", [ES_COL_DATE] = "date",
    [ES_COL_TIMESTAMP] = "timestamp", [ES_COL_UUID] = "uuid",       [ES_COL_EMAIL] = "email",
    [ES_COL_JSON] = "json",
};

const char *es_coltype_name(es_coltype t)
{
    if ((unsigned)t >= ES_ARRAY_LEN(type_names)) return "unknown";
    return type_names[t];
}

int es_coltype_parse(const char *s)
{
    if (!s) return -1;
    for (size_t i = 0; i < ES_ARRAY_LEN(type_names); i++)
        if (strcmp(s, type_names[i]) == 0) return (int)i;
    return -1;
}

static bool is_numeric(es_coltype t)
{
    return t == ES_COL_INTEGER || t == ES_COL_BIGINT || t == ES_COL_DECIMAL;
}

/* ---------------------------------------------------------------- built-ins */

/* The Kanastra debts file: one payer may owe many debts, so only the debt id
 * is unique; amounts are money and cannot be negative. */
static const es_dataset debts = {
    .name = "debts",
    .table = "ds_debts",
    .ncols = 6,
    .key = 5,
    .cols =
        {
            {.name = "name", .header = "name", .type = ES_COL_TEXT, .required = true, .trim = true},
            {.name = "government_id",
             .header = "governmentId",
             .type = ES_COL_TEXT,
             .required = true,
             .trim = true},
            {.name = "email",
             .header = "email",
             .type = ES_COL_EMAIL,
             .required = true,
             .trim = true},
            {.name = "debt_amount",
             .header = "debtAmount",
             .type = ES_COL_DECIMAL,
             .precision = 14,
             .scale = 2,
             .required = true,
             .trim = true,
             .nonneg = true},
            {.name = "debt_due_date",
             .header = "debtDueDate",
             .type = ES_COL_DATE,
             .required = true,
             .trim = true},
            {.name = "debt_id",
             .header = "debtId",
             .type = ES_COL_UUID,
             .required = true,
             .trim = true},
        },
};

const es_dataset *es_dataset_builtin(const char *name)
{
    if (name && strcmp(name, "debts") == 0) return &debts;
    return NULL;
}

/* ---------------------------------------------------------------- names */

static const char *const reserved_words[] = {
    /* the provenance columns */
    "upload_id", "line",
    /* PostgreSQL 15 */
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "authorization",
    "binary", "both", "case", "cast", "check", "collate", "collation", "column", "concurrently",
    "constraint", "create", "cross", "current_catalog", "current_date", "current_role",
    "current_schema", "current_time", "current_timestamp", "current_user", "default", "deferrable",
    "desc", "distinct", "do", "else", "end", "except", "false", "fetch", "for", "foreign", "freeze",
    "from", "full", "grant", "group", "having", "ilike", "in", "initially", "inner", "intersect",
    "into", "is", "isnull", "join", "lateral", "leading", "left", "like", "limit", "localtime",
    "localtimestamp", "natural", "not", "notnull", "null", "offset", "on", "only", "or", "order",
    "outer", "overlaps", "placing", "primary", "references", "returning", "right", "select",
    "session_user", "similar", "some", "symmetric", "table", "tablesample", "then", "to",
    "trailing", "true", "union", "unique", "user", "using", "variadic", "verbose", "when", "where",
    "window", "with",
    /* SQLite 3.40, beyond those */
    "add", "alter", "autoincrement", "between", "commit", "delete", "drop", "escape", "exists",
    "index", "insert", "nothing", "raise", "set", "transaction", "update", "values"};

static bool reserved(const char *s)
{
    for (size_t i = 0; i < ES_ARRAY_LEN(reserved_words); i++)
        if (strcmp(s, reserved_words[i]) == 0) return true;
    return false;
}

/* ---------------------------------------------------------------- UTF-8 */

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* NULL when s is valid UTF-8 without NUL bytes (*chars = its code points),
 * else the problem.  Overlong forms, surrogates, code points past U+10FFFF
 * and truncated sequences are all invalid, as PostgreSQL has them. */
static const char *utf8_check(const unsigned char *s, size_t n, size_t *chars)
{
    size_t i = 0, cnt = 0;
    while (i < n) {
        /* eight ASCII bytes, none of them NUL, at a time: most CSV text */
        if (n - i >= 8) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (!((v | ((v - ONES) & ~v)) & HIGHS)) {
                i += 8;
                cnt += 8;
                continue;
            }
        }
        unsigned char b = s[i];
        if (b < 0x80) {
            if (b == 0) return "contains a NUL byte";
            i++;
            cnt++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
            cp = b & 0x1F;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            cp = b & 0x0F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            cp = b & 0x07;
        } else {
            return "not valid UTF-8"; /* a continuation byte, C0/C1, or F5..FF */
        }
        if (n - i - 1 < need) return "not valid UTF-8";
        for (size_t k = 1; k <= need; k++) {
            unsigned char c = s[i + k];
            if ((c & 0xC0) != 0x80) return "not valid UTF-8";
            cp = cp << 6 | (c & 0x3F);
        }
        if (need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) return "not valid UTF-8";
        if (need == 3 && (cp < 0x10000 || cp > 0x10FFFF)) return "not valid UTF-8";
        i += need + 1;
        cnt++;
    }
    if (chars) *chars = cnt;
    return NULL;
}

/* ---------------------------------------------------------------- values */

static int reject(const char **problem, const char *why)
{
    if (problem) *problem = why;
    return ES_EINVAL;
}

/* es_copy_field ends a field with a separator; the caller of
 * es_value_normalize writes its own, so the one written here is taken back. */
static int put_escaped(es_buf *out, const char *s, size_t n)
{
    int rc = es_copy_field(out, s, n, false);
    if (rc != ES_OK) return rc;
    out->data[--out->len] = '\0';
    return ES_OK;
}

static int norm_text(const es_column *c, const char *p, size_t n, es_buf *out, const char **problem)
{
    size_t chars;
    const char *why = utf8_check((const unsigned char *)p, n, &chars);
    if (why) return reject(problem, why);
    if (c->max_len > 0 && chars > (size_t)c->max_len) return reject(problem, "too long");
    return put_escaped(out, p, n);
}

/* Optional sign, digits, within [lo, hi]; written without '+' or leading
 * zeros, and 0 without a sign. */
static int norm_int(const es_column *c, const char *p, size_t n, int64_t lo, int64_t hi,
                    es_buf *out, const char **problem)
{
    size_t i = 0;
    bool neg = false;
    if (p[0] == '+' || p[0] == '-') {
        neg = p[0] == '-';
        i = 1;
    }
    if (i == n) return reject(problem, "not an integer");
    uint64_t limit = neg ? (uint64_t)(-(lo + 1)) + 1 : (uint64_t)hi, v = 0;
    bool over = false;
    for (; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)p[i] - '0';
        if (d > 9) return reject(problem, "not an integer");
        if (v > (limit - d) / 10)
            over = true; /* keep looking: "99999999999x" is not an integer at all */
        else
            v = v * 10 + d;
    }
    if (over) return reject(problem, "out of range");
    if (v == 0) neg = false;
    if (neg && c->nonneg) return reject(problem, "must not be negative");
    char buf[24], *w = buf + sizeof buf;
    do {
        *--w = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg) *--w = '-';
    return es_buf_append(out, w, (size_t)(buf + sizeof buf - w));
}

/* Optional sign, integer digits, an optional '.' and fraction digits (one side
 * may be empty, not both).  Written as [-]int.frac with exactly `scale`
 * fraction digits: 7811 -> 7811.00.  Fraction digits past the scale are
 * accepted only when they are zeros: nothing is rounded away silently. */
static int norm_decimal(const es_column *c, const char *p, size_t n, es_buf *out,
                        const char **problem)
{
    /* a column made in code without a precision gets the widest one */
    int prec = c->precision > 0 && c->precision <= DECIMAL_MAX_PRECISION ? c->precision
                                                                         : DECIMAL_MAX_PRECISION;
    int sc = c->scale > 0 ? (c->scale < prec ? c->scale : prec) : 0;
    const char *end = p + n;
    bool neg = false;
    if (*p == '+' || *p == '-') neg = *p++ == '-';
    const char *ip = p;
    while (p < end && (unsigned)(*p - '0') <= 9)
        p++;
    const char *iend = p, *fp = p, *fend = p;
    if (p < end && *p == '.') {
        fp = ++p;
        while (p < end && (unsigned)(*p - '0') <= 9)
            p++;
        fend = p;
        if (fend == fp) return reject(problem, "not a decimal number");
    }
    if (p != end || (iend == ip && fend == fp)) return reject(problem, "not a decimal number");
    while (ip < iend && *ip == '0')
        ip++;
    size_t ilen = (size_t)(iend - ip), flen = (size_t)(fend - fp), scale = (size_t)sc;
    if (flen > scale) {
        for (const char *z = fp + scale; z < fend; z++)
            if (*z != '0') return reject(problem, "too many decimal places");
        flen = scale;
    }
    if (ilen > (size_t)(prec - sc)) return reject(problem, "too many digits");
    bool zero = ilen == 0;
    for (size_t k = 0; zero && k < flen; k++)
        zero = fp[k] == '0';
    if (zero) neg = false;
    if (neg && c->nonneg) return reject(problem, "must not be negative");

    char buf[2 * DECIMAL_MAX_PRECISION + 4], *w = buf; /* ilen + scale <= prec */
    if (neg) *w++ = '-';
    if (ilen) {
        memcpy(w, ip, ilen);
        w += ilen;
    } else {
        *w++ = '0';
    }
    if (scale) {
        *w++ = '.';
        memcpy(w, fp, flen);
        memset(w + flen, '0', scale - flen);
        w += scale;
    }
    return es_buf_append(out, buf, (size_t)(w - buf));
}

static int norm_boolean(const char *p, size_t n, es_buf *out, const char **problem)
{
    char low[6];
    if (n > 5) return reject(problem, "not a boolean");
    for (size_t i = 0; i < n; i++)
        low[i] = (char)(p[i] >= 'A' && p[i] <= 'Z' ? p[i] + 32 : p[i]);
    low[n] = '\0';
    static const char *const yes[] = {"true", "t", "yes", "1"}, *const no[] = {"false", "f", "no",
                                                                               "0"};
    for (size_t i = 0; i < ES_ARRAY_LEN(yes); i++) {
        if (strcmp(low, yes[i]) == 0) return es_buf_append(out, "true", 4);
        if (strcmp(low, no[i]) == 0) return es_buf_append(out, "false", 5);
    }
    return reject(problem, "not a boolean");
}

static bool digits_at(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned)(p[i] - '0') > 9) return false;
    return true;
}

/* YYYY-MM-DD, years 0001..9999 (PostgreSQL has no year 0). */
static int norm_date(const char *p, size_t n, es_buf *out, const char **problem)
{
    if (n != 10 || p[4] != '-' || p[7] != '-' || !digits_at(p, 4) || !digits_at(p + 5, 2) ||
        !digits_at(p + 8, 2))
        return reject(problem, "not a valid date");
    int y = (p[0] - '0') * 1000 + (p[1] - '0') * 100 + (p[2] - '0') * 10 + (p[3] - '0');
    int m = (p[5] - '0') * 10 + (p[6] - '0'), d = (p[8] - '0') * 10 + (p[9] - '0');
    if (y < 1 || m < 1 || m > 12 || d < 1 || d > es_days_in_month(y, m))
        return reject(problem, "not a valid date");
    return es_buf_append(out, p, n);
}

/* 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z, in ms since the epoch */
#define TS_MIN_MS (-719162LL * 86400000LL)
#define TS_END_MS (2932897LL * 86400000LL)

/* ms since the epoch -> "YYYY-MM-DDTHH:MM:SS.mmmZ" for years 1..9999 (the
 * civil-from-days algorithm of H. Hinnant); es_time_iso covers only the
 * years gmtime/strftime print with four digits, and timestamps such as
 * 0001-01-01T00:00:00Z are common "zero" values in exported data. */
static void put_digits(char *w, int v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        w[i] = (char)('0' + v % 10);
        v /= 10;
    }
}

static void ts_format(int64_t ms, char out[24])
{
    int64_t days = ms / 86400000, rem = ms % 86400000;
    if (rem < 0) {
        rem += 86400000;
        days--;
    }
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int d = (int)(doy - (153 * mp + 2) / 5 + 1), m = (int)(mp < 10 ? mp + 3 : mp - 9);
    int y = (int)(yoe + era * 400 + (m <= 2));
    memcpy(out, "0000-00-00T00:00:00.000Z", 24);
    put_digits(out, y, 4);
    put_digits(out + 5, m, 2);
    put_digits(out + 8, d, 2);
    put_digits(out + 11, (int)(rem / 3600000), 2);
    put_digits(out + 14, (int)(rem / 60000 % 60), 2);
    put_digits(out + 17, (int)(rem / 1000 % 60), 2);
    put_digits(out + 20, (int)(rem % 1000), 3);
}

static int norm_timestamp(const char *p, size_t n, es_buf *out, const char **problem)
{
    char buf[64];
    int64_t ms;
    /* a date alone has no zone: it names a different instant in every zone */
    if (n <= 10 || n >= sizeof buf || memchr(p, '\0', n))
        return reject(problem, "not a valid timestamp");
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (es_time_parse_iso(buf, &ms) != ES_OK) return reject(problem, "not a valid timestamp");
    if (ms < TS_MIN_MS || ms >= TS_END_MS) return reject(problem, "timestamp out of range");
    char iso[24];
    ts_format(ms, iso);
    return es_buf_append(out, iso, sizeof iso);
}

static int norm_uuid(const char *p, size_t n, es_buf *out, const char **problem)
{
    char buf[ES_UUID_LEN + 1];
    if (n != ES_UUID_LEN) return reject(problem, "not a valid UUID");
    memcpy(buf, p, n);
    buf[n] = '\0';
    if (!es_uuid_valid(buf)) return reject(problem, "not a valid UUID");
    for (size_t i = 0; i < n; i++)
        if (buf[i] >= 'A' && buf[i] <= 'F') buf[i] = (char)(buf[i] + 32);
    return es_buf_append(out, buf, n);
}

/* local@domain: no spaces or control characters anywhere; a local part
 * without the characters that mark a display-name form ("Ann <a@b.c>",
 * "a@b.c, c@d.e"); a domain of letters, digits, hyphens and non-ASCII
 * (internationalised) labels, with at least one dot and no empty label.
 * Only the domain is case-insensitive, so only it is lower-cased. */
static int norm_email(const char *p, size_t n, es_buf *out, const char **problem)
{
    static const char bad_local[] = "()<>[]\\,;:\"@";
    if (n > EMAIL_MAX) return reject(problem, "e-mail address too long");
    if (utf8_check((const unsigned char *)p, n, NULL))
        return reject(problem, "not a valid e-mail address");
    const char *at = memchr(p, '@', n);
    if (!at || at == p) return reject(problem, "not a valid e-mail address");
    size_t llen = (size_t)(at - p), dlen = n - llen - 1;
    for (size_t i = 0; i < llen; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch <= 0x20 || ch == 0x7F || (ch < 0x80 && strchr(bad_local, ch)))
            return reject(problem, "not a valid e-mail address");
    }
    char buf[EMAIL_MAX];
    memcpy(buf, p, llen + 1);
    char *dom = buf + llen + 1;
    bool dot = false;
    for (size_t i = 0; i < dlen; i++) {
        unsigned char ch = (unsigned char)at[1 + i];
        if (ch == '.') {
            if (i == 0 || i == dlen - 1 || at[i] == '.')
                return reject(problem, "not a valid e-mail address");
            dot = true;
        } else if (!(ch >= 0x80 || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                     ch == '-' || (ch >= 'A' && ch <= 'Z'))) {
            return reject(problem, "not a valid e-mail address");
        }
        dom[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    }
    if (!dot) return reject(problem, "not a valid e-mail address");
    return put_escaped(out, buf, n);
}

/* Parsed by es_json_parse (syntax, UTF-8, no \u0000 - which jsonb refuses
 * too -, no repeated keys, bounded depth), then made compact by dropping the
 * whitespace between tokens of the text as given.  Re-dumping jansson's tree
 * would spell numbers through doubles (0.1 -> 0.10000000000000001) and lose
 * digits; the text keeps them. */
static int norm_json(const char *p, size_t n, es_buf *out, const char **problem)
{
    json_t *v = NULL;
    char jerr[160];
    int rc = es_json_parse(p, n, JSON_MAX_DEPTH, &v, jerr, sizeof jerr);
    if (rc == ES_ELIMIT) return reject(problem, "JSON nested too deeply");
    if (rc != ES_OK) return reject(problem, "not valid JSON");
    json_decref(v);
    char *tmp = malloc(n);
    if (!tmp) return ES_ENOMEM;
    size_t w = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (in_str) {
            tmp[w++] = ch;
            if (ch == '\\')
                tmp[w++] = p[++i]; /* jansson checked: an escape is never the last byte */
            else if (ch == '"')
                in_str = false;
        } else if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
            tmp[w++] = ch;
            in_str = ch == '"';
        }
    }
    rc = put_escaped(out, tmp, w);
    free(tmp);
    return rc;
}

int es_value_normalize(const es_column *c, const char *in, size_t len, es_buf *out,
                       const char **problem)
{
    const char *p = in ? in : "";
    size_t n = in ? len : 0;
    if (c->trim) {
        while (n && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
    }
    if (n == 0) {
        if (c->required) return reject(problem, "required");
        return es_buf_append(out, "\\N", 2);
    }
    switch (c->type) {
    case ES_COL_TEXT: return norm_text(c, p, n, out, problem);
    case ES_COL_INTEGER: return norm_int(c, p, n, INT32_MIN, INT32_MAX, out, problem);
    case ES_COL_BIGINT: return norm_int(c, p, n, INT64_MIN, INT64_MAX, out, problem);
    case ES_COL_DECIMAL: return norm_decimal(c, p, n, out, problem);
    case ES_COL_BOOLEAN: return norm_boolean(p, n, out, problem);
    case ES_COL_DATE: return norm_date(p, n, out, problem);
    case ES_COL_TIMESTAMP: return norm_timestamp(p, n, out, problem);
    case ES_COL_UUID: return norm_uuid(p, n, out, problem);
    case ES_COL_EMAIL: return norm_email(p, n, out, problem);
    case ES_COL_JSON: return norm_json(p, n, out, problem);
    }
    return reject(problem, "unknown column type");
}

/* ---------------------------------------------------------------- definitions */

static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return ES_EINVAL;
}

static bool key_in(const char *k, const char *const *keys, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(k, keys[i]) == 0) return true;
    return false;
}

/* An optional integer member in [lo, hi]; ES_ENOTFOUND when absent. */
static int opt_int(const json_t *o, const char *key, int lo, int hi, int *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v) return ES_ENOTFOUND;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return ES_EINVAL;
    *out = (int)json_integer_value(v);
    return ES_OK;
}

/* An optional boolean member; false when present and not a boolean. */
static bool opt_bool(const json_t *o, const char *key, bool *out)
{
    const json_t *v = json_object_get(o, key);
    if (!v) return true;
    if (!json_is_boolean(v)) return false;
    *out = json_is_true(v);
    return true;
}

static int column_from_json(const json_t *j, int i, es_column *c, char *err, size_t errlen)
{
    static const char *const keys[] = {"name",  "header",    "type", "required",   "precision",
                                       "scale", "maxLength", "trim", "nonNegative"};
    if (!json_is_object(j)) return fail(err, errlen, "columns[%d]: must be an object", i);
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)j, k, v)
    {
        if (!key_in(k, keys, ES_ARRAY_LEN(keys)))
            return fail(err, errlen, "columns[%d].%.64s: unknown field", i, k);
    }

    const char *name = json_string_value(json_object_get(j, "name"));
    if (!name) return fail(err, errlen, "columns[%d].name: required, a string", i);
    if (!es_ident_valid(name))
        return fail(err, errlen,
                    "columns[%d].name: must match [a-z_][a-z0-9_]*, at most %d characters", i,
                    ES_IDENT_MAX);
    if (reserved(name)) return fail(err, errlen, "columns[%d].name: '%s' is reserved", i, name);
    es_strlcpy(c->name, name, sizeof c->name);

    const json_t *h = json_object_get(j, "header");
    const char *header = name;
    if (h) {
        header = json_string_value(h);
        if (!header) return fail(err, errlen, "columns[%d].header: must be a string", i);
        size_t hl = strlen(header);
        if (hl == 0 || hl >= sizeof c->header)
            return fail(err, errlen, "columns[%d].header: 1 to %zu bytes", i, sizeof c->header - 1);
        /* headers are matched after trimming, so such a one could never match */
        if (header[0] == ' ' || header[0] == '\t' || header[hl - 1] == ' ' ||
            header[hl - 1] == '\t')
            return fail(err, errlen, "columns[%d].header: surrounding spaces", i);
        for (size_t b = 0; b < hl; b++)
            if ((unsigned char)header[b] < 0x20)
                return fail(err, errlen, "columns[%d].header: control characters", i);
    }
    es_strlcpy(c->header, header, sizeof c->header);

    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return fail(err, errlen, "columns[%d].type: required, a string", i);
    int t = es_coltype_parse(type);
    if (t < 0) return fail(err, errlen, "columns[%d].type: unknown type '%.64s'", i, type);
    c->type = (es_coltype)t;

    c->required = false;
    c->trim = true;
    c->nonneg = false;
    if (!opt_bool(j, "required", &c->required))
        return fail(err, errlen, "columns[%d].required: must be true or false", i);
    if (!opt_bool(j, "trim", &c->trim))
        return fail(err, errlen, "columns[%d].trim: must be true or false", i);
    if (!opt_bool(j, "nonNegative", &c->nonneg))
        return fail(err, errlen, "columns[%d].nonNegative: must be true or false", i);
    if (json_object_get(j, "nonNegative") && !is_numeric(c->type))
        return fail(err, errlen, "columns[%d].nonNegative: only for integer, bigint and decimal",
                    i);

    c->precision = c->scale = 0;
    if (c->type == ES_COL_DECIMAL) {
        int rc = opt_int(j, "precision", 1, DECIMAL_MAX_PRECISION, &c->precision);
        if (rc == ES_ENOTFOUND)
            return fail(err, errlen, "columns[%d].precision: required for decimal", i);
        if (rc != ES_OK)
            return fail(err, errlen, "columns[%d].precision: an integer from 1 to %d", i,
                        DECIMAL_MAX_PRECISION);
        if (opt_int(j, "scale", 0, c->precision, &c->scale) == ES_EINVAL)
            return fail(err, errlen, "columns[%d].scale: an integer from 0 to the precision (%d)",
                        i, c->precision);
    } else if (json_object_get(j, "precision") || json_object_get(j, "scale")) {
        return fail(err, errlen, "columns[%d].%s: only for decimal", i,
                    json_object_get(j, "precision") ? "precision" : "scale");
    }

    c->max_len = 0;
    if (json_object_get(j, "maxLength")) {
        if (c->type != ES_COL_TEXT)
            return fail(err, errlen, "columns[%d].maxLength: only for text", i);
        if (opt_int(j, "maxLength", 0, TEXT_MAX_LEN, &c->max_len) != ES_OK)
            return fail(err, errlen, "columns[%d].maxLength: an integer from 0 to %d", i,
                        TEXT_MAX_LEN);
    }
    return ES_OK;
}

int es_dataset_from_json(const json_t *def, es_dataset *out, char *err, size_t errlen)
{
    static const char *const keys[] = {"name", "table", "columns", "key"};
    if (err && errlen) err[0] = '\0';
    memset(out, 0, sizeof *out);
    if (!json_is_object(def)) return fail(err, errlen, "definition: must be a JSON object");
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)def, k, v)
    {
        if (!key_in(k, keys, ES_ARRAY_LEN(keys)))
            return fail(err, errlen, "%.64s: unknown field", k);
    }

    const char *name = json_string_value(json_object_get(def, "name"));
    if (!name) return fail(err, errlen, "name: required, a string");
    /* the table is ds_<name>, and it too must be an identifier */
    if (!es_ident_valid(name) || strlen(name) > ES_IDENT_MAX - 3)
        return fail(err, errlen, "name: must match [a-z_][a-z0-9_]*, at most %d characters",
                    ES_IDENT_MAX - 3);
    es_strlcpy(out->name, name, sizeof out->name);
    snprintf(out->table, sizeof out->table, "ds_%s", name);
    const json_t *table = json_object_get(def, "table");
    if (table && !es_streq(json_string_value(table), out->table))
        return fail(err, errlen, "table: must be \"%s\" (it follows the name)", out->table);

    const json_t *cols = json_object_get(def, "columns");
    if (!json_is_array(cols) || json_array_size(cols) == 0)
        return fail(err, errlen, "columns: required, a non-empty array");
    if (json_array_size(cols) > ES_DATASET_MAX_COLS)
        return fail(err, errlen, "columns: at most %d", ES_DATASET_MAX_COLS);
    size_t i;
    json_t *cj;
    json_array_foreach(cols, i, cj)
    {
        es_column *c = &out->cols[i];
        int rc = column_from_json(cj, (int)i, c, err, errlen);
        if (rc != ES_OK) return rc;
        for (size_t e = 0; e < i; e++) {
            if (strcmp(out->cols[e].name, c->name) == 0)
                return fail(err, errlen, "columns[%zu].name: repeated column '%s'", i, c->name);
            if (strcmp(out->cols[e].header, c->header) == 0)
                return fail(err, errlen, "columns[%zu].header: repeated header '%s'", i, c->header);
        }
        out->ncols++;
    }

    const char *key = json_string_value(json_object_get(def, "key"));
    if (!key) return fail(err, errlen, "key: required, the name of a column");
    out->key = -1;
    /* by column name, or by the header that feeds it ("debtId") */
    for (int c = 0; c < out->ncols && out->key < 0; c++)
        if (strcmp(out->cols[c].name, key) == 0) out->key = c;
    for (int c = 0; c < out->ncols && out->key < 0; c++)
        if (strcmp(out->cols[c].header, key) == 0) out->key = c;
    if (out->key < 0) return fail(err, errlen, "key: no column '%.64s'", key);
    if (!out->cols[out->key].required)
        return fail(err, errlen, "key: column '%s' must be required", out->cols[out->key].name);
    return ES_OK;
}

/* json_object_set_new that remembers a failure (NULL values included) */
static void set(json_t *o, const char *key, json_t *v, bool *ok)
{
    if (!v || json_object_set_new(o, key, v) != 0) *ok = false;
}

json_t *es_dataset_to_json(const es_dataset *d)
{
    bool ok = true;
    json_t *o = json_object(), *cols = json_array();
    if (!o || !cols) goto fail_alloc;
    set(o, "name", json_string(d->name), &ok);
    set(o, "table", json_string(d->table), &ok);
    for (int i = 0; i < d->ncols; i++) {
        const es_column *c = &d->cols[i];
        json_t *cj = json_object();
        if (!cj || json_array_append_new(cols, cj) != 0) goto fail_alloc;
        set(cj, "name", json_string(c->name), &ok);
        set(cj, "header", json_string(c->header), &ok);
        set(cj, "type", json_string(es_coltype_name(c->type)), &ok);
        set(cj, "required", json_boolean(c->required), &ok);
        set(cj, "trim", json_boolean(c->trim), &ok);
        if (c->type == ES_COL_DECIMAL) {
            set(cj, "precision", json_integer(c->precision), &ok);
            set(cj, "scale", json_integer(c->scale), &ok);
        }
        if (c->type == ES_COL_TEXT && c->max_len > 0)
            set(cj, "maxLength", json_integer(c->max_len), &ok);
        if (is_numeric(c->type)) set(cj, "nonNegative", json_boolean(c->nonneg), &ok);
    }
    set(o, "columns", cols, &ok);
    cols = NULL;
    if (d->key >= 0 && d->key < d->ncols) set(o, "key", json_string(d->cols[d->key].name), &ok);
    if (!ok) goto fail_alloc;
    return o;

fail_alloc:
    json_decref(cols);
    json_decref(o);
    return NULL;
}

/* ---------------------------------------------------------------- DDL */

es_copy_type es_coltype_copy(es_coltype t)
{
    switch (t) {
    case ES_COL_INTEGER: return ES_COPY_INT4;
    case ES_COL_BIGINT: return ES_COPY_INT8;
    case ES_COL_DECIMAL: return ES_COPY_NUMERIC;
    case ES_COL_BOOLEAN: return ES_COPY_BOOL;
    case ES_COL_DATE: return ES_COPY_DATE;
    case ES_COL_TIMESTAMP: return ES_COPY_TIMESTAMPTZ;
    case ES_COL_UUID: return ES_COPY_UUID;
    case ES_COL_JSON: return ES_COPY_JSONB;
    case ES_COL_TEXT:
    case ES_COL_EMAIL: break;
    }
    return ES_COPY_TEXT;
}

static int sql_type(const es_column *c, es_dialect dialect, char *buf, size_t n)
{
    if (dialect == ES_DIALECT_PG) {
        static const char *const pg[] = {
            [ES_COL_TEXT] = "text",
            [ES_COL_INTEGER] = "integer",
            [ES_COL_BIGINT] = "bigint",
            [ES_COL_DECIMAL] = "numeric",
            [ES_COL_BOOLEAN] = "boolean",
            [ES_COL_DATE] = "date",
            [ES_COL_TIMESTAMP] = "timestamptz",
            [ES_COL_UUID] = "uuid",
            [ES_COL_EMAIL] = "text",
            [ES_COL_JSON] = "jsonb",
        };
        if ((unsigned)c->type >= ES_ARRAY_LEN(pg)) return ES_EINVAL;
        if (c->type == ES_COL_DECIMAL)
            snprintf(buf, n, "numeric(%d,%d)", c->precision, c->scale);
        else
            es_strlcpy(buf, pg[c->type], n);
        return ES_OK;
    }
    /* SQLite has storage classes, not types: whole numbers are INTEGER,
     * decimals NUMERIC (kept as numbers), everything else the text the
     * normaliser wrote - ISO dates and timestamps sort as text, and
     * booleans are 'true'/'false' as COPY carries them. */
    switch (c->type) {
    case ES_COL_INTEGER:
    case ES_COL_BIGINT: es_strlcpy(buf, "INTEGER", n); return ES_OK;
    case ES_COL_DECIMAL: es_strlcpy(buf, "NUMERIC", n); return ES_OK;
    case ES_COL_TEXT:
    case ES_COL_BOOLEAN:
    case ES_COL_DATE:
    case ES_COL_TIMESTAMP:
    case ES_COL_UUID:
    case ES_COL_EMAIL:
    case ES_COL_JSON: es_strlcpy(buf, "TEXT", n); return ES_OK;
    }
    return ES_EINVAL;
}

int es_dataset_ddl(const es_dataset *d, es_dialect dialect, es_buf *out)
{
    if (d->ncols < 1 || d->ncols > ES_DATASET_MAX_COLS || d->key < 0 || d->key >= d->ncols ||
        !es_ident_valid(d->table)) {
        es_warn(COMP, "ddl: dataset '%s' is not well formed", d->name);
        return ES_EINVAL;
    }
    /* every row belongs to a tenant: the key is unique per tenant */
    int rc =
        es_buf_printf(out, "CREATE TABLE IF NOT EXISTS %s (tenant %s NOT NULL DEFAULT 'default', ",
                      d->table, dialect == ES_DIALECT_PG ? "text" : "TEXT");
    for (int i = 0; rc == ES_OK && i < d->ncols; i++) {
        const es_column *c = &d->cols[i];
        char type[32];
        if (!es_ident_valid(c->name) || sql_type(c, dialect, type, sizeof type) != ES_OK) {
            es_warn(COMP, "ddl: dataset '%s': column %d is not well formed", d->name, i);
            return ES_EINVAL;
        }
        rc = es_buf_printf(out, "%s %s%s, ", c->name, type,
                           c->required || i == d->key ? " NOT NULL" : "");
    }
    if (rc == ES_OK)
        rc = es_buf_printf(out, "%s, PRIMARY KEY (tenant, %s))",
                           dialect == ES_DIALECT_PG ? "upload_id text, line bigint"
                                                    : "upload_id TEXT, line INTEGER",
                           d->cols[d->key].name);
    return rc;
}

/* ---------------------------------------------------------------- headers */

/* A header quoted back to the client: bounded, and valid UTF-8 (a JSON
 * string must be), cut at a character boundary. */
static json_t *quoted_field(const char *s, size_t n)
{
    if (n > PROBLEM_FIELD_MAX) {
        n = PROBLEM_FIELD_MAX;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    if (utf8_check((const unsigned char *)s, n, NULL)) return json_string("(not valid UTF-8)");
    return json_stringn(s, n);
}

/* Appends {field, problem}; field is taken over, whatever happens. */
static int add_problem(json_t *list, json_t *field, const char *problem)
{
    json_t *p = json_object();
    if (!p || !field) {
        json_decref(p);
        json_decref(field);
        return ES_ENOMEM;
    }
    if (json_object_set_new(p, "field", field) != 0 ||
        json_object_set_new(p, "problem", json_string(problem)) != 0) {
        json_decref(p);
        return ES_ENOMEM;
    }
    return json_array_append_new(list, p) == 0 ? ES_OK : ES_ENOMEM;
}

int es_dataset_map_header(const es_dataset *d, const char *const *fields, const size_t *lens,
                          int nfields, es_header_map *m, json_t **problems)
{
    if (problems) *problems = NULL;
    m->nfields = 0;
    json_t *list = json_array();
    if (!list) return ES_ENOMEM;
    int rc = ES_OK;
    bool seen[ES_DATASET_MAX_COLS] = {false};
    if (nfields < 0 || (size_t)nfields > ES_ARRAY_LEN(m->col_of)) {
        char why[64];
        snprintf(why, sizeof why, "too many columns (at most %zu)", ES_ARRAY_LEN(m->col_of));
        rc = add_problem(list, json_string(""), why);
        nfields = 0;
    }
    for (int i = 0; rc == ES_OK && i < nfields; i++) {
        const char *f = fields[i] ? fields[i] : "";
        size_t n = fields[i] ? lens[i] : 0;
        while (n && (*f == ' ' || *f == '\t'))
            f++, n--;
        while (n && (f[n - 1] == ' ' || f[n - 1] == '\t'))
            n--;
        m->col_of[i] = -1;
        int col = -1;
        for (int c = 0; c < d->ncols && col < 0; c++)
            if (strlen(d->cols[c].header) == n && memcmp(d->cols[c].header, f, n) == 0) col = c;
        if (n == 0) {
            char why[48];
            snprintf(why, sizeof why, "empty header (field %d)", i + 1);
            rc = add_problem(list, json_string(""), why);
        } else if (col < 0) {
            rc = add_problem(list, quoted_field(f, n), "unknown column");
        } else if (seen[col]) {
            rc = add_problem(list, quoted_field(f, n), "repeated column");
        } else {
            seen[col] = true;
            m->col_of[i] = col;
        }
    }
    m->nfields = nfields;
    for (int c = 0; rc == ES_OK && c < d->ncols; c++)
        if (!seen[c]) rc = add_problem(list, json_string(d->cols[c].header), "missing column");
    if (rc != ES_OK) {
        json_decref(list);
        return rc;
    }
    if (json_array_size(list) == 0) {
        json_decref(list);
        return ES_OK;
    }
    if (problems)
        *problems = list;
    else
        json_decref(list);
    return ES_EINVAL;
}
