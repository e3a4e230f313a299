/* csv.c - streaming CSV parsing on libcsv, with line numbers and bounds.
 *
 * libcsv does the quoting state machine.  What it does not do, and this file
 * adds:
 *
 * - Line numbers.  libcsv's callbacks get no position, so the input is handed
 *   to csv_parse() in pieces that end at a '\n' (or earlier, see below).  The
 *   bytes of one piece then all lie on one physical line, and a record that
 *   begins in a piece begins on that line, whatever the chunking.  Every '\n'
 *   counts, also one inside a quoted field, so a record after a multi-line
 *   field gets the line a text editor shows.  A lone CR ends a record (as in
 *   libcsv) but does not start a new line: lines are counted by LF.
 *
 * - Bounds.  libcsv grows its field buffer without limit.  Pieces are at most
 *   PIECE_MAX bytes, and after each piece the field in progress is checked, so
 *   its buffer never holds more than max_field + PIECE_MAX bytes; the record
 *   being assembled here is bounded by max_record.  Memory does not grow with
 *   the file.
 *
 * - Spaces are data.  By default libcsv drops spaces and tabs around unquoted
 *   fields and accepts them around quoted ones; RFC 4180 says they belong to
 *   the field, and the dataset decides per column whether to trim.  A space
 *   function that claims no character as a space gives the RFC behaviour (and
 *   in strict mode `"a" ,b` becomes an error instead of a silent trim).
 *
 * - NUL bytes are refused: fields are handed over as C strings, and a NUL
 *   would cut one short without anyone noticing.
 *
 * - Speed.  A whole line without quotes is split on commas here (memchr),
 *   which is several times faster than libcsv's byte-at-a-time loop; every
 *   other line goes through libcsv.  See split_line.
 *
 * - A UTF-8 BOM at the very start is skipped, also when it arrives split over
 *   several feeds: the bytes that might be a BOM are held back until decided.
 *
 * Fields are copied out of libcsv's buffer (which it reuses for the next
 * field) into one record buffer, each followed by a NUL, so CSV_APPEND_NULL is
 * not needed.  Errors are sticky: after the first one, feed and finish return
 * it again, and the callback is not called any more. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <csv.h>

#include "esteira/csv.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define COMP "csv"

/* Defaults for a NULL limits argument or a zero member. */
#define DEFAULT_MAX_FIELD  65536
#define DEFAULT_MAX_RECORD (1024 * 1024)
#define DEFAULT_MAX_FIELDS 64
#define MAX_FIELDS_CAP     65536 /* arrays of this many entries are allocated up front */

/* The most bytes handed to csv_parse() at once; see "Bounds" above.  Lines of
 * real files are far shorter, so this costs nothing on the hot path. */
#define PIECE_MAX (64 * 1024)

/* libcsv's growth step for its field buffer (it grows linearly). */
#define CSV_BLOCK 4096

/* libcsv's parser states (private to libcsv.c, stable since 2.0). */
#define LIBCSV_ROW_NOT_BEGUN 0

static const unsigned char bom_bytes[3] = {0xEF, 0xBB, 0xBF};

struct es_csv {
    struct csv_parser csv;
    es_csv_limits lim;
    es_csv_record_fn fn;
    void *arg;

    /* the record being assembled: field bytes, each followed by a NUL */
    es_buf rec;
    size_t rec_bytes; /* sum of the field lengths (the NULs not counted) */
    size_t *offs;     /* where each field starts in rec */
    size_t *lens;
    const char **ptrs; /* filled just before the callback (rec may move) */
    int nfields;

    int64_t line;     /* physical line of the bytes being parsed (1-based) */
    int64_t rec_line; /* line where the record in progress started */
    int64_t records;
    int64_t bytes;

    es_csv_line_fn line_fn;
    bool line_start; /* the next byte parsed begins a physical line */
    int bom;         /* BOM bytes matched and held back; -1 once decided */
    bool finished;   /* es_csv_finish was called */
    int rc;          /* the first error, or the callback's stop value */
    char err[200];
};

/* ------------------------------------------------------------------ errors */

static void fail(es_csv *p, int rc, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Records the first error only: whatever follows it is a consequence. */
static void fail(es_csv *p, int rc, const char *fmt, ...)
{
    if (p->rc) return;
    p->rc = rc;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err, sizeof p->err, fmt, ap);
    va_end(ap);
}

/* " (on line 9)" when the fault is on another line than the record's start,
 * as in a quoted field spanning lines; else "". */
static const char *where(const es_csv *p, char *buf, size_t n)
{
    buf[0] = '\0';
    if (p->line != p->rec_line) snprintf(buf, n, " (on line %" PRId64 ")", p->line);
    return buf;
}

/* --------------------------------------------------------- libcsv callbacks */

/* One more field of the record in progress, checked against the bounds. */
static void add_field(es_csv *p, const char *data, size_t len)
{
    if (p->rc) return;
    if (len > p->lim.max_field) {
        fail(p, ES_ELIMIT, "line %" PRId64 ": field longer than %zu bytes", p->rec_line,
             p->lim.max_field);
        return;
    }
    if (p->nfields >= p->lim.max_fields) {
        fail(p, ES_ELIMIT, "line %" PRId64 ": more than %d fields", p->rec_line, p->lim.max_fields);
        return;
    }
    if (len > p->lim.max_record - p->rec_bytes) {
        fail(p, ES_ELIMIT, "line %" PRId64 ": record longer than %zu bytes", p->rec_line,
             p->lim.max_record);
        return;
    }
    int rc = p->rec.len + len < p->rec.cap ? ES_OK : es_buf_reserve(&p->rec, len + 1);
    if (rc != ES_OK) {
        /* the bounds above keep rec within its maximum: only ENOMEM is left */
        es_error(COMP, "record buffer: %s", es_strerror(rc));
        fail(p, rc, "line %" PRId64 ": %s", p->rec_line, es_strerror(rc));
        return;
    }
    char *dst = p->rec.data + p->rec.len;
    if (len) memcpy(dst, data, len); /* data is NULL only for an empty field */
    dst[len] = '\0';
    p->offs[p->nfields] = p->rec.len;
    p->lens[p->nfields] = len;
    p->nfields++;
    p->rec.len += len + 1;
    p->rec_bytes += len;
}

static void on_field(void *data, size_t len, void *arg)
{
    add_field(arg, data, len);
}

static void on_record(int term, void *arg)
{
    (void)term;
    es_csv *p = arg;
    int64_t line = p->rec_line;
    /* A record ended by a lone CR is followed by another on the same line. */
    p->rec_line = p->line;
    if (p->rc || p->nfields == 0) goto reset;
    for (int i = 0; i < p->nfields; i++)
        p->ptrs[i] = p->rec.data + p->offs[i];
    p->records++;
    int rc = p->fn(p->arg, line, p->ptrs, p->lens, p->nfields);
    if (rc != 0) fail(p, rc, "line %" PRId64 ": stopped by the record callback (%d)", line, rc);
reset:
    p->nfields = 0;
    p->rec_bytes = 0;
    p->rec.len = 0;
}

/* ------------------------------------------------------------------ parsing */

/* Maps what libcsv reported after a piece into p->rc.  `at` is where csv_parse
 * stopped in the piece, `piece` the piece itself. */
static void check_piece(es_csv *p, const char *piece, size_t n, size_t at)
{
    char on[48];
    if (p->rc) return; /* a callback failed first */
    /* The field in progress.  In a quoted field libcsv holds the closing
     * quote too until it sees what follows, hence the one byte of slack; the
     * exact check is in add_field. */
    if (p->csv.entry_pos > 1 && p->csv.entry_pos - 1 > p->lim.max_field) {
        fail(p, ES_ELIMIT, "line %" PRId64 ": field longer than %zu bytes", p->rec_line,
             p->lim.max_field);
        return;
    }
    int st = csv_error(&p->csv);
    if (st == CSV_SUCCESS) {
        if (at < n) fail(p, ES_EINVAL, "line %" PRId64 ": parser stopped early", p->rec_line);
        return;
    }
    if (st == CSV_EPARSE && at < n) {
        unsigned char c = (unsigned char)piece[at];
        if (!p->csv.quoted) {
            fail(p, ES_EINVAL, "line %" PRId64 ": quote inside an unquoted field%s", p->rec_line,
                 where(p, on, sizeof on));
        } else if (c >= 0x20 && c < 0x7f) {
            fail(p, ES_EINVAL, "line %" PRId64 ": unexpected '%c' after a closing quote%s",
                 p->rec_line, c, where(p, on, sizeof on));
        } else {
            fail(p, ES_EINVAL, "line %" PRId64 ": unexpected byte 0x%02x after a closing quote%s",
                 p->rec_line, c, where(p, on, sizeof on));
        }
        return;
    }
    es_error(COMP, "libcsv: %s", csv_strerror(st));
    fail(p, st == CSV_EPARSE ? ES_EINVAL : ES_ENOMEM, "line %" PRId64 ": %s", p->rec_line,
         csv_strerror(st));
}

/* The fast path.  Most lines of a real file hold no quote, and for those the
 * CSV grammar is a split on commas; doing that here with memchr() is several
 * times faster than libcsv's byte-by-byte state machine.  It is taken only
 * for a whole line (ending in '\n') while libcsv is between records, and
 * gives exactly what libcsv would (the fuzzer compares the two through
 * different chunkings): a quote, or a CR anywhere but before the '\n', sends
 * the line to libcsv instead.  Returns false then. */
static bool split_line(es_csv *p, const char *s, size_t n)
{
    size_t end = n - 1; /* s[n - 1] is the '\n' */
    if (end && s[end - 1] == '\r') end--;
    if (memchr(s, '"', end) || memchr(s, '\r', end)) return false;
    p->rec_line = p->line;
    p->bytes += (int64_t)n;
    if (!end) return true; /* an empty line */
    const char *f = s, *stop = s + end;
    for (;;) {
        const char *comma = memchr(f, ',', (size_t)(stop - f));
        add_field(p, f, (size_t)((comma ? comma : stop) - f));
        if (!comma || p->rc) break;
        f = comma + 1;
    }
    on_record('\n', p);
    return true;
}

/* Parses bytes known not to contain a NUL, piece by piece. */
static void parse_pieces(es_csv *p, const char *data, size_t len)
{
    while (len && !p->rc) {
        size_t n = len < PIECE_MAX ? len : PIECE_MAX;
        const char *nl = memchr(data, '\n', n);
        if (nl) n = (size_t)(nl - data) + 1;
        if (p->line_start && p->line_fn && p->csv.pstate == LIBCSV_ROW_NOT_BEGUN && !p->nfields)
            p->line_fn(p->arg, p->bytes, p->line);
        p->line_start = nl != NULL;
        if (p->csv.pstate == LIBCSV_ROW_NOT_BEGUN) {
            if (nl && split_line(p, data, n)) goto next;
            p->rec_line = p->line;
        }
        size_t at = csv_parse(&p->csv, data, n, on_field, on_record, p);
        p->bytes += (int64_t)at;
        check_piece(p, data, n, at);
    next:
        if (p->rc) return;
        if (nl) p->line++;
        data += n;
        len -= n;
    }
}

/* Everything fed after the BOM check goes through here. */
static void parse(es_csv *p, const char *data, size_t len)
{
    const char *nul = memchr(data, '\0', len);
    if (!nul) {
        parse_pieces(p, data, len);
        return;
    }
    /* what comes before the NUL may hold an earlier error, or records */
    parse_pieces(p, data, (size_t)(nul - data));
    if (p->rc) return;
    if (p->csv.pstate == LIBCSV_ROW_NOT_BEGUN) p->rec_line = p->line;
    char on[48];
    fail(p, ES_EINVAL, "line %" PRId64 ": NUL byte in the data%s", p->rec_line,
         where(p, on, sizeof on));
}

/* Hands over the bytes held back as a possible BOM: they were data. */
static void release_bom(es_csv *p)
{
    int held = p->bom;
    p->bom = -1;
    if (held > 0) {
        p->bytes -= held; /* counted when they arrived; parse counts them again */
        parse(p, (const char *)bom_bytes, (size_t)held);
    }
}

/* ------------------------------------------------------------------ the API */

static int space_none(unsigned char c)
{
    (void)c;
    return 0;
}

int es_csv_create(const es_csv_limits *limits, es_csv_record_fn fn, void *arg, es_csv **out)
{
    *out = NULL;
    if (!fn) return ES_EINVAL;
    es_csv_limits lim = {DEFAULT_MAX_FIELD, DEFAULT_MAX_RECORD, DEFAULT_MAX_FIELDS};
    if (limits) {
        if (limits->max_fields < 0 || limits->max_fields > MAX_FIELDS_CAP) return ES_EINVAL;
        if (limits->max_field) lim.max_field = limits->max_field;
        if (limits->max_record) lim.max_record = limits->max_record;
        if (limits->max_fields) lim.max_fields = limits->max_fields;
    }
    /* the record buffer holds the fields and one NUL each */
    if (lim.max_record > SIZE_MAX / 2) return ES_EINVAL;

    es_csv *p = calloc(1, sizeof *p);
    if (!p) return ES_ENOMEM;
    p->lim = lim;
    p->fn = fn;
    p->arg = arg;
    p->line = p->rec_line = 1;
    p->line_start = true;
    es_buf_init(&p->rec, lim.max_record + (size_t)lim.max_fields);
    size_t nf = (size_t)lim.max_fields;
    p->offs = malloc(nf * sizeof *p->offs);
    p->lens = malloc(nf * sizeof *p->lens);
    p->ptrs = malloc(nf * sizeof *p->ptrs);
    if (!p->offs || !p->lens || !p->ptrs) goto free_p;
    if (csv_init(&p->csv, CSV_STRICT | CSV_STRICT_FINI) != 0) goto free_p;
    csv_set_space_func(&p->csv, space_none);
    csv_set_blk_size(&p->csv, CSV_BLOCK);
    *out = p;
    return ES_OK;

free_p:
    free(p->offs);
    free(p->lens);
    free(p->ptrs);
    free(p);
    return ES_ENOMEM;
}

void es_csv_destroy(es_csv *p)
{
    if (!p) return;
    csv_free(&p->csv);
    es_buf_finish(&p->rec);
    free(p->offs);
    free(p->lens);
    free(p->ptrs);
    free(p);
}

int es_csv_feed(es_csv *p, const char *data, size_t len)
{
    if (p->rc) return p->rc;
    if (p->finished) {
        fail(p, ES_EINVAL, "input fed after its end");
        return p->rc;
    }
    if (!len) return ES_OK;
    if (p->bom >= 0) {
        size_t i = 0;
        while (i < len && p->bom < 3 && (unsigned char)data[i] == bom_bytes[p->bom]) {
            p->bom++;
            i++;
        }
        p->bytes += (int64_t)i;
        data += i;
        len -= i;
        if (p->bom == 3)
            p->bom = -1; /* a whole BOM: dropped */
        else if (!len)
            return ES_OK; /* still a possible BOM: wait for more */
        else
            release_bom(p);
    }
    if (!p->rc) parse(p, data, len);
    return p->rc;
}

int es_csv_finish(es_csv *p)
{
    if (p->rc || p->finished) return p->rc;
    p->finished = true;
    if (p->bom > 0) release_bom(p);
    if (p->rc) return p->rc;
    if (p->csv.pstate == LIBCSV_ROW_NOT_BEGUN) p->rec_line = p->line;
    if (csv_fini(&p->csv, on_field, on_record, p) != 0) {
        fail(p, ES_EINVAL, "line %" PRId64 ": quoted field not closed at the end of the input",
             p->rec_line);
    }
    return p->rc;
}

const char *es_csv_error(const es_csv *p)
{
    return p ? p->err : "";
}

void es_csv_on_line(es_csv *p, es_csv_line_fn fn)
{
    p->line_fn = fn;
}

void es_csv_start_at(es_csv *p, int64_t line)
{
    p->line = p->rec_line = line > 0 ? line : 1;
    p->bom = -1;
}

int64_t es_csv_records(const es_csv *p)
{
    return p ? p->records : 0;
}

int64_t es_csv_bytes(const es_csv *p)
{
    return p ? p->bytes : 0;
}
