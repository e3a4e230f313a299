/* fuzz_csv.c - the streaming CSV parser on arbitrary bytes, in arbitrary chunks.
 *
 * Input: a header byte H, then H & 7 split bytes, then (when H & 8) two limit
 * bytes, then the CSV.
 *   - split bytes: the sizes of the chunks fed (each value + 1, cycled);
 *   - limit bytes: small bounds, so that they are hit: max_field 1..16,
 *     max_fields 1..16, max_record 1..64;
 *   - H >> 4: the callback stops the parse on that record (0 = never).
 * The record stream (line, fields), the outcome and the error message must be
 * the same fed whole, in the chunks given, and byte by byte; and the same as a
 * small byte-at-a-time reference parser of the grammar written below, which
 * also checks the line numbers independently of the parser's piece logic.
 * Cut points (es_csv_on_line): parsing from one with es_csv_start_at gives
 * exactly the records the whole parse gave from there on. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/csv.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define MAX_INPUT 65536
#define STOP_RC   77

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    es_log_set_level(ES_LOG_OFF);
    return 0;
}

/* ------------------------------------------------- the record stream as bytes */

#define MAX_CUTS 16

typedef struct stream {
    es_buf out;
    int records;
    int stop_at;
    /* cut points offered: input offset, line, and the output so far */
    int64_t cut_off[MAX_CUTS], cut_line[MAX_CUTS];
    size_t cut_out[MAX_CUTS];
    int ncuts;
} stream;

static void on_cut(void *arg, int64_t offset, int64_t line)
{
    stream *s = arg;
    if (s->ncuts < MAX_CUTS) {
        s->cut_off[s->ncuts] = offset;
        s->cut_line[s->ncuts] = line;
        s->cut_out[s->ncuts++] = s->out.len;
    }
}

static void put_record(es_buf *out, int64_t line, const char *const *f, const size_t *lens, int n)
{
    es_buf_printf(out, "%lld:%d", (long long)line, n);
    for (int i = 0; i < n; i++) {
        es_buf_printf(out, ":%zu:", lens[i]);
        es_buf_append(out, f[i], lens[i]);
    }
    es_buf_append(out, "\n", 1);
}

static int on_record(void *arg, int64_t line, const char *const *fields, const size_t *lens,
                     int nfields)
{
    stream *s = arg;
    if (nfields <= 0 || line < 1) abort();
    for (int i = 0; i < nfields; i++)
        if (fields[i][lens[i]] != '\0' || strlen(fields[i]) != lens[i]) abort();
    put_record(&s->out, line, fields, lens, nfields);
    s->records++;
    return s->records == s->stop_at ? STOP_RC : 0;
}

typedef struct outcome {
    stream s;
    int rc;
    char err[256];
    int64_t records, bytes;
} outcome;

/* chunks: sizes to cycle through (NULL = whole) */
static void run(outcome *o, const es_csv_limits *lim, int stop_at, const uint8_t *in, size_t len,
                const uint8_t *chunks, size_t nchunks)
{
    memset(o, 0, sizeof *o);
    es_buf_init(&o->s.out, 0);
    o->s.stop_at = stop_at;
    es_csv *p = NULL;
    if (es_csv_create(lim, on_record, &o->s, &p) != ES_OK) abort();
    es_csv_on_line(p, on_cut);
    int rc = ES_OK;
    size_t off = 0, k = 0;
    while (off < len && rc == ES_OK) {
        size_t n = chunks ? (size_t)chunks[k++ % nchunks] + 1 : len;
        if (n > len - off) n = len - off;
        rc = es_csv_feed(p, (const char *)in + off, n);
        off += n;
    }
    if (rc == ES_OK) rc = es_csv_finish(p);
    if (rc == ES_OK && off != len) abort();
    if (rc != ES_OK && !*es_csv_error(p)) abort(); /* every error is explained */
    /* sticky */
    if (rc != ES_OK && (es_csv_feed(p, "x", 1) != rc || es_csv_finish(p) != rc)) abort();
    o->rc = rc;
    snprintf(o->err, sizeof o->err, "%s", es_csv_error(p));
    o->records = es_csv_records(p);
    o->bytes = es_csv_bytes(p);
    if (rc == ES_OK && o->bytes != (int64_t)len) abort();
    es_csv_destroy(p);
}

static void same(const outcome *a, const outcome *b)
{
    if (a->rc != b->rc || strcmp(a->err, b->err) != 0 || a->records != b->records ||
        a->s.out.len != b->s.out.len ||
        (a->s.out.len && memcmp(a->s.out.data, b->s.out.data, a->s.out.len) != 0)) {
        fprintf(stderr, "differ: rc %d/%d, '%s' / '%s', records %lld/%lld\n", a->rc, b->rc, a->err,
                b->err, (long long)a->records, (long long)b->records);
        abort();
    }
}

/* ------------------------------------------------------- the reference parser
 * RFC 4180 with LF, CRLF or CR line ends, spaces as data, empty lines skipped,
 * lines counted by LF, a leading BOM skipped, NUL refused.  A field longer
 * than max_field + 1 in progress (counting a quote that may close it) is an
 * error right away; the exact bounds are checked when a field completes. */

enum { ROW, FIELD_START, UNQUOTED, QUOTED, QUOTE_SEEN };

typedef struct ref {
    es_csv_limits lim;
    stream s;
    int state;
    int64_t line, rec_line;
    es_buf rec; /* field bytes, each followed by a NUL */
    size_t offs[64], lens[64];
    int nfields;
    size_t rec_bytes, flen; /* flen: the field in progress */
    int rc;
    int64_t err_line;
} ref;

static void ref_fail(ref *r, int rc)
{
    r->rc = rc;
    r->err_line = r->rec_line;
}

static void ref_char(ref *r, char c)
{
    if (es_buf_append(&r->rec, &c, 1) != ES_OK) abort();
    r->flen++;
}

static void ref_field(ref *r)
{
    if (r->flen > r->lim.max_field || r->nfields >= r->lim.max_fields ||
        r->flen > r->lim.max_record - r->rec_bytes) {
        ref_fail(r, ES_ELIMIT);
        return;
    }
    if (es_buf_append(&r->rec, "", 1) != ES_OK) abort();
    r->offs[r->nfields] = r->rec.len - r->flen - 1;
    r->lens[r->nfields++] = r->flen;
    r->rec_bytes += r->flen;
    r->flen = 0;
}

static void ref_record(ref *r)
{
    const char *f[64];
    for (int i = 0; i < r->nfields; i++)
        f[i] = r->rec.data + r->offs[i];
    put_record(&r->s.out, r->rec_line, f, r->lens, r->nfields);
    r->s.records++;
    if (r->s.records == r->s.stop_at) ref_fail(r, STOP_RC);
    es_buf_reset(&r->rec);
    r->nfields = 0;
    r->rec_bytes = 0;
    r->state = ROW;
}

static void ref_byte(ref *r, char c)
{
    bool term = c == '\r' || c == '\n';
    if (r->state == ROW) {
        if (term) goto done;
        r->rec_line = r->line;
        r->state = FIELD_START;
    }
    if (c == '\0') {
        ref_fail(r, ES_EINVAL);
        return;
    }
    switch (r->state) {
    case FIELD_START:
    case UNQUOTED:
        if (c == ',' || term) {
            ref_field(r);
            if (!r->rc && term)
                ref_record(r);
            else
                r->state = FIELD_START;
        } else if (c == '"') {
            if (r->state == UNQUOTED) {
                ref_fail(r, ES_EINVAL);
                return;
            }
            r->state = QUOTED;
        } else {
            ref_char(r, c);
            r->state = UNQUOTED;
        }
        break;
    case QUOTED:
        if (c == '"')
            r->state = QUOTE_SEEN;
        else
            ref_char(r, c);
        break;
    case QUOTE_SEEN:
        if (c == '"') {
            ref_char(r, c);
            r->state = QUOTED;
        } else if (c == ',' || term) {
            ref_field(r);
            if (!r->rc && term)
                ref_record(r);
            else
                r->state = FIELD_START;
        } else {
            ref_fail(r, ES_EINVAL);
            return;
        }
        break;
    }
    if (!r->rc && r->flen + (r->state == QUOTE_SEEN) > r->lim.max_field + 1) ref_fail(r, ES_ELIMIT);
done:
    if (c == '\n') r->line++;
}

static void ref_run(ref *r, const es_csv_limits *lim, int stop_at, const uint8_t *in, size_t len)
{
    memset(r, 0, sizeof *r);
    r->lim = *lim;
    r->s.stop_at = stop_at;
    es_buf_init(&r->s.out, 0);
    es_buf_init(&r->rec, 0);
    r->line = r->rec_line = 1;
    if (len >= 3 && memcmp(in, "\xEF\xBB\xBF", 3) == 0) {
        in += 3;
        len -= 3;
    }
    for (size_t i = 0; i < len && !r->rc; i++)
        ref_byte(r, (char)in[i]);
    if (r->rc) return;
    switch (r->state) {
    case ROW: break;
    case QUOTED: ref_fail(r, ES_EINVAL); break;
    default:
        ref_field(r);
        if (!r->rc) ref_record(r);
    }
}

/* ------------------------------------------------------------------ the test */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > MAX_INPUT) return 0;
    uint8_t h = data[0];
    size_t nsplit = h & 7;
    bool small = h & 8;
    int stop_at = h >> 4;
    size_t hdr = 1 + nsplit + (small ? 2 : 0);
    if (size < hdr) return 0;
    const uint8_t *splits = data + 1;
    es_csv_limits lim = {.max_field = 256, .max_record = 4096, .max_fields = 64};
    if (small) {
        uint8_t a = data[1 + nsplit], b = data[2 + nsplit];
        lim.max_field = (size_t)(a & 15) + 1;
        lim.max_fields = (a >> 4) + 1;
        lim.max_record = (size_t)(b % 64) + 1;
    }
    const uint8_t *in = data + hdr;
    size_t len = size - hdr;

    outcome whole, chunked;
    run(&whole, &lim, stop_at, in, len, NULL, 0);
    if (nsplit) {
        run(&chunked, &lim, stop_at, in, len, splits, nsplit);
        same(&whole, &chunked);
        es_buf_finish(&chunked.s.out);
    }
    if (len <= 4096) {
        static const uint8_t one = 0;
        run(&chunked, &lim, stop_at, in, len, &one, 1);
        same(&whole, &chunked);
        es_buf_finish(&chunked.s.out);
    }

    /* every cut point of a clean parse: the tail parsed alone is the same */
    for (int i = 0; whole.rc == ES_OK && stop_at == 0 && i < whole.s.ncuts; i++) {
        stream t = {0};
        es_buf_init(&t.out, 0);
        es_csv *p = NULL;
        if (es_csv_create(&lim, on_record, &t, &p) != ES_OK) abort();
        es_csv_start_at(p, whole.s.cut_line[i]);
        size_t from = (size_t)whole.s.cut_off[i];
        int rc = es_csv_feed(p, (const char *)in + from, len - from);
        if (rc == ES_OK) rc = es_csv_finish(p);
        size_t at = whole.s.cut_out[i];
        if (rc != ES_OK || t.out.len != whole.s.out.len - at ||
            (t.out.len && memcmp(t.out.data, whole.s.out.data + at, t.out.len) != 0)) {
            fprintf(stderr, "cut at offset %zu (line %lld) parses differently: rc %d\n", from,
                    (long long)whole.s.cut_line[i], rc);
            abort();
        }
        es_csv_destroy(p);
        es_buf_finish(&t.out);
    }

    ref r;
    ref_run(&r, &lim, stop_at, in, len);
    long long err_line = -1;
    if (whole.rc != ES_OK && sscanf(whole.err, "line %lld:", &err_line) != 1) abort();
    if (r.rc != whole.rc || (r.rc && r.err_line != err_line) || r.s.records != whole.records ||
        r.s.out.len != whole.s.out.len ||
        (r.s.out.len && memcmp(r.s.out.data, whole.s.out.data, r.s.out.len) != 0)) {
        fprintf(stderr, "reference differs: rc %d/%d, line %lld/%lld, records %d/%lld ('%s')\n",
                r.rc, whole.rc, (long long)r.err_line, err_line, r.s.records,
                (long long)whole.records, whole.err);
        abort();
    }
    es_buf_finish(&r.s.out);
    es_buf_finish(&r.rec);
    es_buf_finish(&whole.s.out);
    return 0;
}
