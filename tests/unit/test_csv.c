/* test_csv.c - the streaming CSV parser: records, line numbers, chunking,
 * BOM, bounds and errors. */
#include "testutil.h"

#include "esteira/csv.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

/* What a parse produced: every record as "LINE:f1|f2|…\n" (CR and LF inside
 * fields shown as \r and \n), then the outcome. */
typedef struct result {
    es_buf out;
    int rc;
    char err[256];
    int64_t records, bytes;
    int calls;
    int stop_at; /* the callback returns stop_rc on this call (1-based); 0 = never */
    int stop_rc;
    int after_err; /* calls after the callback stopped (must stay 0) */
} result;

static int collect(void *arg, int64_t line, const char *const *fields, const size_t *lens,
                   int nfields)
{
    result *r = arg;
    if (r->stop_at && r->calls >= r->stop_at) r->after_err++;
    r->calls++;
    assert_true(nfields > 0);
    es_buf_printf(&r->out, "%lld:", (long long)line);
    for (int i = 0; i < nfields; i++) {
        /* handed over NUL-terminated, with the right length */
        assert_int_equal(fields[i][lens[i]], '\0');
        assert_int_equal(strlen(fields[i]), lens[i]);
        if (i) es_buf_puts(&r->out, "|");
        for (size_t j = 0; j < lens[i]; j++) {
            char c = fields[i][j];
            if (c == '\n')
                es_buf_puts(&r->out, "\\n");
            else if (c == '\r')
                es_buf_puts(&r->out, "\\r");
            else
                es_buf_append(&r->out, &c, 1);
        }
    }
    es_buf_puts(&r->out, "\n");
    if (r->stop_at && r->calls == r->stop_at) return r->stop_rc;
    return 0;
}

static void result_init(result *r)
{
    memset(r, 0, sizeof *r);
    es_buf_init(&r->out, 0);
}

/* Feeds `in` in chunks of `chunk` bytes (0 = whole), then finishes. */
static void run_into(result *r, const char *in, size_t len, size_t chunk, const es_csv_limits *lim)
{
    es_csv *p = NULL;
    assert_int_equal(es_csv_create(lim, collect, r, &p), ES_OK);
    if (!chunk) chunk = len ? len : 1;
    int rc = ES_OK;
    for (size_t off = 0; off < len && rc == ES_OK; off += chunk)
        rc = es_csv_feed(p, in + off, len - off < chunk ? len - off : chunk);
    if (rc == ES_OK) rc = es_csv_finish(p);
    r->rc = rc;
    snprintf(r->err, sizeof r->err, "%s", es_csv_error(p));
    r->records = es_csv_records(p);
    r->bytes = es_csv_bytes(p);
    es_csv_destroy(p);
}

static void run(result *r, const char *in, size_t chunk, const es_csv_limits *lim)
{
    result_init(r);
    run_into(r, in, strlen(in), chunk, lim);
}

/* Parses whole, then in every chunk size from 1 up: the same records and the
 * same outcome each time.  Leaves the whole parse in *r. */
static void run_all_chunks(result *r, const char *in, size_t len, const es_csv_limits *lim)
{
    result_init(r);
    run_into(r, in, len, 0, lim);
    for (size_t chunk = 1; chunk <= len; chunk++) {
        result c;
        result_init(&c);
        run_into(&c, in, len, chunk, lim);
        assert_string_equal(es_buf_cstr(&c.out), es_buf_cstr(&r->out));
        assert_int_equal(c.rc, r->rc);
        assert_string_equal(c.err, r->err);
        assert_int_equal(c.records, r->records);
        es_buf_finish(&c.out);
    }
}

static void done(result *r)
{
    es_buf_finish(&r->out);
}

/* ------------------------------------------------------------------ tests */

static void test_simple(void **state)
{
    (void)state;
    result r;
    const char *in = "name,age,city\nAna,31,Recife\nBruno,,Natal\n";
    run(&r, in, 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:name|age|city\n2:Ana|31|Recife\n3:Bruno||Natal\n");
    assert_int_equal(r.records, 3);
    assert_int_equal(r.bytes, (int64_t)strlen(in));
    assert_string_equal(r.err, "");
    done(&r);

    /* empty fields at the edges, and a lone field */
    run(&r, ",a,\nx\n,\n", 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:|a|\n2:x\n3:|\n");
    done(&r);
}

static void test_quoted(void **state)
{
    (void)state;
    result r;
    run(&r, "\"a,b\",\"say \"\"hi\"\"\",\"\",\"\"\"\"\n", 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:a,b|say \"hi\"||\"\n");
    done(&r);
}

static void test_embedded_newlines(void **state)
{
    (void)state;
    result r;
    /* a record after a multi-line field starts on the line an editor shows */
    const char *in = "id,note\n"
                     "1,\"two\nlines\"\n"
                     "2,\"crlf\r\ninside\r\nthree\",x\n"
                     "3,\"\n\n\"\n"
                     "4,last\n";
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:id|note\n"
                                             "2:1|two\\nlines\n"
                                             "4:2|crlf\\r\\ninside\\r\\nthree|x\n"
                                             "7:3|\\n\\n\n"
                                             "10:4|last\n");
    done(&r);
}

static void test_crlf_and_lf(void **state)
{
    (void)state;
    result lf, crlf;
    run(&lf, "a,b\n\"c\nd\",e\nf,\"g\"\n", 0, NULL);
    run(&crlf, "a,b\r\n\"c\nd\",e\r\nf,\"g\"\r\n", 0, NULL);
    assert_int_equal(lf.rc, ES_OK);
    assert_int_equal(crlf.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&lf.out), "1:a|b\n2:c\\nd|e\n4:f|g\n");
    assert_string_equal(es_buf_cstr(&crlf.out), es_buf_cstr(&lf.out));
    done(&lf);
    done(&crlf);

    /* a CRLF split between two feeds */
    const char *in = "a,b\r\nc,d\r\n";
    result r;
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b\n2:c|d\n");
    done(&r);

    /* a lone CR ends a record but not the line (lines are counted by LF) */
    run(&r, "a\rb\nc\n", 0, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:a\n1:b\n2:c\n");
    done(&r);
}

static void test_bom(void **state)
{
    (void)state;
    result r;
    const char *in = "\xEF\xBB\xBF"
                     "a,b\nc,d\n";
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b\n2:c|d\n");
    assert_int_equal(r.bytes, (int64_t)strlen(in)); /* the BOM was consumed too */
    done(&r);

    /* split across two feeds explicitly */
    result_init(&r);
    es_csv *p;
    assert_int_equal(es_csv_create(NULL, collect, &r, &p), ES_OK);
    assert_int_equal(es_csv_feed(p, "\xEF\xBB", 2), ES_OK);
    assert_int_equal(es_csv_feed(p, "\xBFx,y\n", 5), ES_OK);
    assert_int_equal(es_csv_finish(p), ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:x|y\n");
    assert_int_equal(es_csv_bytes(p), 7);
    es_csv_destroy(p);
    done(&r);

    /* only the first one is skipped; later ones are data */
    run(&r, "\xEF\xBB\xBF\xEF\xBB\xBFq\n\xEF\xBB\xBFz\n", 0, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:\xEF\xBB\xBFq\n2:\xEF\xBB\xBFz\n");
    done(&r);

    /* a BOM prefix that turns out not to be one is data, held bytes included */
    in = "\xEF\xBBx,y\n";
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:\xEF\xBBx|y\n");
    assert_int_equal(r.bytes, (int64_t)strlen(in));
    done(&r);

    /* ... also when the input ends inside it */
    run_all_chunks(&r, "\xEF\xBB", 2, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:\xEF\xBB\n");
    assert_int_equal(r.bytes, 2);
    done(&r);

    /* a BOM alone is an empty file */
    run_all_chunks(&r, "\xEF\xBB\xBF", 3, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_int_equal(r.records, 0);
    done(&r);
}

static void test_every_chunk_size(void **state)
{
    (void)state;
    const char *in = "\xEF\xBB\xBF"
                     "name,governmentId,email,debtAmount\r\n"
                     "\r\n"
                     "\"Silva, Ana\",123,\"a@x.com\",\"1,5\"\r\n"
                     "\"multi\r\nline \"\"quoted\"\"\",2,,3\n"
                     "\n"
                     " spaced , kept ,\"\",x\n"
                     "last,row,\"no\",newline";
    result r;
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:name|governmentId|email|debtAmount\n"
                                             "3:Silva, Ana|123|a@x.com|1,5\n"
                                             "4:multi\\r\\nline \"quoted\"|2||3\n"
                                             "7: spaced | kept ||x\n"
                                             "8:last|row|no|newline\n");
    assert_int_equal(r.records, 5);
    assert_int_equal(r.bytes, (int64_t)strlen(in));
    done(&r);
}

static void test_final_newline_missing(void **state)
{
    (void)state;
    result r;
    run_all_chunks(&r, "a,b\nc,d", 7, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b\n2:c|d\n");
    done(&r);
    run_all_chunks(&r, "a,b\n\"c\",\"d\"", 11, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b\n2:c|d\n");
    done(&r);
    run_all_chunks(&r, "a,", 2, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|\n");
    done(&r);
    run_all_chunks(&r, "", 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "");
    done(&r);
}

static void test_empty_lines(void **state)
{
    (void)state;
    result r;
    const char *in = "\n\na\n\r\n\nb\n\n\r\n";
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "3:a\n6:b\n");
    assert_int_equal(r.records, 2);
    done(&r);

    /* spaces are data: a line of spaces is a record, not an empty line */
    run(&r, "  \n", 0, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1:  \n");
    done(&r);
}

static void test_spaces_kept(void **state)
{
    (void)state;
    result r;
    run(&r, " a ,\tb\t, \"q\"x\n", 0, NULL);
    /* ` "q"x` is an unquoted field with a quote in it: refused */
    assert_int_equal(r.rc, ES_EINVAL);
    done(&r);
    run(&r, " a ,\tb\t,c \n", 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1: a |\tb\t|c \n");
    done(&r);
    run(&r, "\" a \",b\n", 0, NULL);
    assert_string_equal(es_buf_cstr(&r.out), "1: a |b\n");
    done(&r);
}

static void test_bound_field(void **state)
{
    (void)state;
    es_csv_limits lim = {.max_field = 4, .max_record = 100, .max_fields = 10};
    result r;
    const char *ok = "x\nabcd,\"wxyz\",\"a\"\"b\"\n";
    run_all_chunks(&r, ok, strlen(ok), &lim);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:x\n2:abcd|wxyz|a\"b\n");
    done(&r);

    const char *bad[] = {"x\nabcde\n", "x\n\"abcde\"\n", "x\nab,\"abcd\"\"\"", "x\n\"abcdef"};
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        run_all_chunks(&r, bad[i], strlen(bad[i]), &lim);
        assert_int_equal(r.rc, ES_ELIMIT);
        assert_string_equal(r.err, "line 2: field longer than 4 bytes");
        assert_string_equal(es_buf_cstr(&r.out), "1:x\n");
        done(&r);
    }
}

static void test_bound_fields(void **state)
{
    (void)state;
    es_csv_limits lim = {.max_field = 100, .max_record = 100, .max_fields = 3};
    result r;
    run_all_chunks(&r, "a,b,c\n,,\n", 9, &lim);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b|c\n2:||\n");
    done(&r);
    run_all_chunks(&r, "a,b,c\n\n\"x\ny\",b,c,d\n", 19, &lim);
    assert_int_equal(r.rc, ES_ELIMIT);
    assert_string_equal(r.err, "line 3: more than 3 fields");
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b|c\n");
    done(&r);
    run(&r, ",,,", 0, &lim);
    assert_int_equal(r.rc, ES_ELIMIT);
    done(&r);
}

static void test_bound_record(void **state)
{
    (void)state;
    es_csv_limits lim = {.max_field = 100, .max_record = 6, .max_fields = 10};
    result r;
    run_all_chunks(&r, "ab,cd,ef\n\"ab\",\"cd\",\"ef\"\n", 24, &lim);
    assert_int_equal(r.rc, ES_OK);
    assert_string_equal(es_buf_cstr(&r.out), "1:ab|cd|ef\n2:ab|cd|ef\n");
    done(&r);
    run_all_chunks(&r, "ab,cd,ef\nab,cd,efg\n", 19, &lim);
    assert_int_equal(r.rc, ES_ELIMIT);
    assert_string_equal(r.err, "line 2: record longer than 6 bytes");
    assert_string_equal(es_buf_cstr(&r.out), "1:ab|cd|ef\n");
    done(&r);
}

static void test_default_limits(void **state)
{
    (void)state;
    /* NULL limits: 65536 bytes a field, 64 fields */
    size_t n = 65536;
    char *in = malloc(n + 3);
    memset(in, 'x', n);
    memcpy(in + n, "\n", 2);
    result r;
    result_init(&r);
    run_into(&r, in, n + 1, 4096, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_int_equal(r.records, 1);
    done(&r);
    in[n] = 'x';
    memcpy(in + n + 1, "\n", 2);
    result_init(&r);
    run_into(&r, in, n + 2, 4096, NULL);
    assert_int_equal(r.rc, ES_ELIMIT);
    assert_string_equal(r.err, "line 1: field longer than 65536 bytes");
    done(&r);
    free(in);

    char row[256] = "";
    for (int i = 0; i < 64; i++)
        strcat(row, i ? ",f" : "f");
    strcat(row, "\n");
    run(&r, row, 0, NULL);
    assert_int_equal(r.rc, ES_OK);
    assert_int_equal(r.records, 1);
    done(&r);
    row[strlen(row) - 1] = '\0';
    strcat(row, ",g\n");
    run(&r, row, 0, NULL);
    assert_int_equal(r.rc, ES_ELIMIT);
    assert_string_equal(r.err, "line 1: more than 64 fields");
    done(&r);
}

/* A field that never ends is refused as soon as it passes the bound: the
 * parser does not buffer it. */
static void test_bound_memory(void **state)
{
    (void)state;
    result r;
    result_init(&r);
    es_csv *p;
    assert_int_equal(es_csv_create(NULL, collect, &r, &p), ES_OK);
    size_t mb = 1 << 20;
    char *chunk = malloc(mb);
    memset(chunk, 'x', mb);
    assert_int_equal(es_csv_feed(p, "ok\n\"", 4), ES_OK);
    assert_int_equal(es_csv_feed(p, chunk, mb), ES_ELIMIT);
    assert_string_equal(es_csv_error(p), "line 2: field longer than 65536 bytes");
    /* sticky, and nothing more is parsed */
    int64_t bytes = es_csv_bytes(p);
    assert_true(bytes < 4 + 2 * 65536 + 1);
    assert_int_equal(es_csv_feed(p, chunk, mb), ES_ELIMIT);
    assert_int_equal(es_csv_bytes(p), bytes);
    assert_int_equal(es_csv_finish(p), ES_ELIMIT);
    assert_int_equal(es_csv_records(p), 1);
    es_csv_destroy(p);
    free(chunk);
    done(&r);
}

static void test_unterminated_quote(void **state)
{
    (void)state;
    result r;
    const char *in = "a,b\n\n\"open,\nstill open\n\nc,d\n";
    run_all_chunks(&r, in, strlen(in), NULL);
    assert_int_equal(r.rc, ES_EINVAL);
    assert_string_equal(r.err, "line 3: quoted field not closed at the end of the input");
    assert_string_equal(es_buf_cstr(&r.out), "1:a|b\n");
    assert_int_equal(r.records, 1);
    done(&r);
}

static void test_malformed(void **state)
{
    (void)state;
    static const struct {
        const char *in, *err, *out;
    } cases[] = {
        {"a,b\nc\"d\n", "line 2: quote inside an unquoted field", "1:a|b\n"},
        {"\"a\"b\n", "line 1: unexpected 'b' after a closing quote", ""},
        {"\"a\" ,b\n", "line 1: unexpected ' ' after a closing quote", ""},
        {"x\n\"a\nb\"c\n", "line 2: unexpected 'c' after a closing quote (on line 3)", "1:x\n"},
        {"ok\nab,c\0d\n", "line 2: NUL byte in the data", "1:ok\n"},
        {"ok\n\"a\n\0\"\n", "line 2: NUL byte in the data (on line 3)", "1:ok\n"},
        {"\0", "line 1: NUL byte in the data", ""},
    };
    static const size_t lens[] = {8, 5, 7, 9, 10, 9, 1};
    for (size_t i = 0; i < ES_ARRAY_LEN(cases); i++) {
        result r;
        run_all_chunks(&r, cases[i].in, lens[i], NULL);
        assert_int_equal(r.rc, ES_EINVAL);
        assert_string_equal(r.err, cases[i].err);
        assert_string_equal(es_buf_cstr(&r.out), cases[i].out);
        done(&r);
    }
}

static void test_callback_stop(void **state)
{
    (void)state;
    result r;
    result_init(&r);
    r.stop_at = 2;
    r.stop_rc = 42;
    es_csv *p;
    assert_int_equal(es_csv_create(NULL, collect, &r, &p), ES_OK);
    /* records 2 and 3 are in the same feed: 3 must not be handed over */
    assert_int_equal(es_csv_feed(p, "a\n", 2), ES_OK);
    assert_int_equal(es_csv_feed(p, "b\nc\nd", 5), 42);
    assert_int_equal(es_csv_feed(p, "e\n", 2), 42);
    assert_int_equal(es_csv_finish(p), 42);
    assert_string_equal(es_csv_error(p), "line 2: stopped by the record callback (42)");
    assert_int_equal(es_csv_records(p), 2);
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.after_err, 0);
    assert_string_equal(es_buf_cstr(&r.out), "1:a\n2:b\n");
    es_csv_destroy(p);
    done(&r);

    /* negative values (es_err codes) too, and from the last record at finish */
    result_init(&r);
    r.stop_at = 1;
    r.stop_rc = ES_ECANCELED;
    assert_int_equal(es_csv_create(NULL, collect, &r, &p), ES_OK);
    assert_int_equal(es_csv_feed(p, "a", 1), ES_OK);
    assert_int_equal(es_csv_finish(p), ES_ECANCELED);
    es_csv_destroy(p);
    done(&r);
}

static void test_counters_and_lifecycle(void **state)
{
    (void)state;
    result r;
    result_init(&r);
    es_csv *p;
    assert_int_equal(es_csv_create(NULL, collect, &r, &p), ES_OK);
    assert_int_equal(es_csv_records(p), 0);
    assert_int_equal(es_csv_bytes(p), 0);
    assert_int_equal(es_csv_feed(p, "a,b\nc", 5), ES_OK);
    assert_int_equal(es_csv_records(p), 1);
    assert_int_equal(es_csv_bytes(p), 5);
    assert_int_equal(es_csv_feed(p, "", 0), ES_OK);
    assert_int_equal(es_csv_feed(p, ",d\n\n", 4), ES_OK);
    assert_int_equal(es_csv_records(p), 2);
    assert_int_equal(es_csv_bytes(p), 9);
    assert_int_equal(es_csv_finish(p), ES_OK);
    assert_int_equal(es_csv_records(p), 2);
    assert_int_equal(es_csv_finish(p), ES_OK); /* a second finish changes nothing */
    assert_int_equal(r.calls, 2);
    assert_int_equal(es_csv_feed(p, "x\n", 2), ES_EINVAL);
    es_csv_destroy(p);
    es_csv_destroy(NULL);
    assert_int_equal(es_csv_records(NULL), 0);
    done(&r);

    /* bad arguments */
    es_csv_limits bad = {.max_fields = -1};
    assert_int_equal(es_csv_create(&bad, collect, &r, &p), ES_EINVAL);
    assert_null(p);
    assert_int_equal(es_csv_create(NULL, NULL, &r, &p), ES_EINVAL);
}

/* ---------------------------------------------------------------- cuts */

typedef struct cuts {
    int64_t off[64], line[64];
    int n;
} cuts;

static cuts *cut_sink; /* es_csv_on_line's arg is the record callback's */

static void on_line(void *arg, int64_t offset, int64_t line)
{
    (void)arg;
    if (cut_sink->n < 64) {
        cut_sink->off[cut_sink->n] = offset;
        cut_sink->line[cut_sink->n++] = line;
    }
}

/* Every cut point the parser offers, parsed from there with start_at, gives
 * exactly the records the whole parse gave from that line on. */
static void test_cut_points(void **state)
{
    (void)state;
    const char *in = "\xEF\xBB\xBFh1,h2\r\n"
                     "a,b\r\n"
                     "\"multi\nline\",x\n"
                     "\n"
                     "\"q\"\"\",y\n"
                     "c,d\n"
                     "last,row";
    for (size_t chunk = 0; chunk < 8; chunk++) {
        cuts c = {0};
        cut_sink = &c;
        result whole;
        result_init(&whole);
        es_csv *p = NULL;
        assert_int_equal(es_csv_create(NULL, collect, &whole, &p), ES_OK);
        es_csv_on_line(p, on_line);
        size_t len = strlen(in), step = chunk ? chunk : len;
        for (size_t off = 0; off < len; off += step)
            assert_int_equal(es_csv_feed(p, in + off, len - off < step ? len - off : step), ES_OK);
        assert_int_equal(es_csv_finish(p), ES_OK);
        es_csv_destroy(p);
        /* line 1 (after the BOM), 2, 3, 5 (the empty line 5 too), 6, 7, 8;
         * not line 4, which is inside the quoted field */
        assert_int_equal(c.n, 7);
        assert_int_equal(c.off[0], 3);
        assert_int_equal(c.line[0], 1);
        for (int i = 0; i < c.n; i++) {
            assert_int_not_equal(c.line[i], 4);
            result tail;
            result_init(&tail);
            assert_int_equal(es_csv_create(NULL, collect, &tail, &p), ES_OK);
            es_csv_start_at(p, c.line[i]);
            assert_int_equal(es_csv_feed(p, in + c.off[i], len - (size_t)c.off[i]), ES_OK);
            assert_int_equal(es_csv_finish(p), ES_OK);
            es_csv_destroy(p);
            /* the whole parse's records from this line on */
            const char *want = es_buf_cstr(&whole.out);
            while (*want && strtoll(want, NULL, 10) < c.line[i])
                want = strchr(want, '\n') + 1;
            assert_string_equal(es_buf_cstr(&tail.out), want);
            es_buf_finish(&tail.out);
        }
        es_buf_finish(&whole.out);
    }
}

int main(void)
{
    es_log_set_level(ES_LOG_OFF);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_quoted),
        cmocka_unit_test(test_embedded_newlines),
        cmocka_unit_test(test_crlf_and_lf),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_every_chunk_size),
        cmocka_unit_test(test_final_newline_missing),
        cmocka_unit_test(test_empty_lines),
        cmocka_unit_test(test_spaces_kept),
        cmocka_unit_test(test_bound_field),
        cmocka_unit_test(test_bound_fields),
        cmocka_unit_test(test_bound_record),
        cmocka_unit_test(test_default_limits),
        cmocka_unit_test(test_bound_memory),
        cmocka_unit_test(test_unterminated_quote),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_callback_stop),
        cmocka_unit_test(test_counters_and_lifecycle),
        cmocka_unit_test(test_cut_points),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
