/* upload.c - esteira upload FILE --dataset NAME [--wait]: streams a CSV file to
 * POST /v1/uploads and, with --wait, follows GET /v1/uploads/{id} until the
 * upload is done or failed.
 *
 * The file is never held in memory: curl pulls it through a read callback in
 * bounded pieces, so a 10 GB file costs what a 10 KB one does.  Every
 * invocation sends an Idempotency-Key (the user's, or a fresh UUIDv7), so a
 * request that curl resends, or that the user repeats with the same key, never
 * creates a second upload.
 *
 * Output: stdout carries exactly one JSON document (the 202 answer, or with
 * --wait the final status) so scripts can parse it; everything for humans
 * (bars, the id, the summary, errors) goes to stderr.  Bars are drawn only
 * when stderr is a terminal.  Exit codes: 0 done (rejected rows included), 1
 * the server refused or the upload failed, 2 usage. */
#include <curl/curl.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/util.h"

#define UPLOAD_USAGE                                                                               \
    "usage: esteira upload FILE --dataset NAME [--wait] [--idempotency-key K] [--quiet]\n"
#define UPLOAD_MAX_ANSWER   (1024 * 1024) /* a status document is a few hundred bytes */
#define UPLOAD_MAX_KEY      200           /* Idempotency-Key length accepted here */
#define UPLOAD_BUFFER       (512 * 1024)  /* curl's upload buffer: fewer, larger sends */
#define UPLOAD_STALL_S      300L          /* no byte either way for this long: give up */
#define UPLOAD_POLL_MS      300
#define UPLOAD_POLL_TIMEOUT 30L
#define UPLOAD_POLL_RETRIES 8 /* transient failures in a row before --wait gives up */
#define UPLOAD_REDRAW_MS    100

typedef struct upload_args {
    const char *file, *dataset, *key;
    bool wait, quiet;
} upload_args;

/* One line on stderr that is redrawn in place. */
typedef struct upload_bar {
    bool on;      /* stderr is a terminal and --quiet was not given */
    bool drawn;   /* something is on the line: end it before other output */
    int64_t last; /* when it was last drawn (monotonic ms) */
} upload_bar;

typedef struct upload_xfer {
    FILE *f;
    const char *name;
    int read_errno; /* why the file stopped being readable, 0 if it did not */
    curl_off_t size;
    int64_t t0;
    upload_bar *bar;
} upload_xfer;

/* ------------------------------------------------------------ arguments */

/* "--name VALUE" or "--name=VALUE": 1 taken (i advanced past a separate value),
 * 0 another argument, -1 the value is missing. */
static int take_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return 0;
    if (argv[*i][n] == '=') {
        *out = argv[*i] + n + 1;
        return **out ? 1 : -1;
    }
    if (argv[*i][n]) return 0;
    /* "--dataset --wait" is a forgotten name, not a dataset called "--wait" */
    if (*i + 1 >= argc || !strncmp(argv[*i + 1], "--", 2)) return -1;
    *out = argv[++*i];
    return 1;
}

static int usage_error(const char *why, const char *what)
{
    if (why) fprintf(stderr, "esteira upload: %s%s\n", why, what ? what : "");
    fputs(UPLOAD_USAGE, stderr);
    return 2;
}

static int parse_args(int argc, char **argv, upload_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        int t;
        if (!strcmp(s, "--wait"))
            a->wait = true;
        else if (!strcmp(s, "--quiet") || !strcmp(s, "-q"))
            a->quiet = true;
        else if ((t = take_value(argc, argv, &i, "--dataset", &a->dataset)) != 0) {
            if (t < 0) return usage_error("--dataset needs a name", NULL);
        } else if ((t = take_value(argc, argv, &i, "--idempotency-key", &a->key)) != 0) {
            if (t < 0) return usage_error("--idempotency-key needs a value", NULL);
        } else if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            return usage_error(NULL, NULL);
        } else if (s[0] == '-' && s[1]) {
            return usage_error("unknown option ", s);
        } else if (a->file) {
            return usage_error("one FILE at a time; also got ", s);
        } else {
            a->file = s;
        }
    }
    if (!a->file) return usage_error("no FILE given", NULL);
    if (!a->dataset) return usage_error("no --dataset given", NULL);
    if (a->key) {
        /* it becomes a header line: no control characters, bounded */
        if (strlen(a->key) > UPLOAD_MAX_KEY)
            return usage_error("--idempotency-key is too long", NULL);
        for (const char *p = a->key; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                return usage_error("--idempotency-key has a control character", NULL);
    }
    return 0;
}

/* ------------------------------------------------------------ the bar */

static int term_width(void)
{
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 40) return ws.ws_col;
    return 80;
}

/* 1234567 -> "1.2 MB" (decimal units, like the MB/s next to it) */
static void fmt_bytes(double n, char *out, size_t len)
{
    static const char *unit[] = {"B", "kB", "MB", "GB", "TB"};
    size_t u = 0;
    while (n >= 1000 && u + 1 < ES_ARRAY_LEN(unit)) {
        n /= 1000;
        u++;
    }
    snprintf(out, len, u ? "%.1f %s" : "%.0f %s", n, unit[u]);
}

/* "label [#####.....]  45%  text", fitted to the terminal; frac < 0 = no bar.
 * The bar's width depends on the terminal only, so it does not jump as the
 * text grows, and the line is cut short of the last column: a line that wraps
 * cannot be redrawn with \r. */
static void bar_draw(upload_bar *b, const char *label, double frac, const char *text)
{
    char line[512], fill[64];
    int cols = term_width();
    if (frac >= 0) {
        int w = cols - 62; /* label, percentage and the longest text */
        w = w < 10 ? 10 : w > 40 ? 40 : w;
        int full = (int)((frac > 1 ? 1 : frac) * w);
        for (int k = 0; k < w; k++)
            fill[k] = k < full ? '#' : '.';
        fill[w] = 0;
        snprintf(line, sizeof line, "%-10s [%s] %3d%%  %s", label, fill, (int)(frac * 100), text);
    } else {
        snprintf(line, sizeof line, "%-10s %s", label, text);
    }
    if (cols - 1 < (int)sizeof line) line[cols - 1] = 0;
    /* \r back to the start, \033[K clears what a longer previous line left */
    fprintf(stderr, "\r%s\033[K", line);
    fflush(stderr);
    b->drawn = true;
    b->last = es_mono_ms();
}

/* Leaves the bar's line as it is and moves below it. */
static void bar_end(upload_bar *b)
{
    if (b->drawn) fputc('\n', stderr);
    b->drawn = false;
}

static void draw_sent(upload_xfer *x, curl_off_t sent, curl_off_t total)
{
    char done[32], all[32], rate[32], text[128];
    double secs = (double)(es_mono_ms() - x->t0) / 1000;
    fmt_bytes((double)sent, done, sizeof done);
    fmt_bytes(secs > 0 ? (double)sent / secs : 0, rate, sizeof rate);
    if (total > 0) {
        fmt_bytes((double)total, all, sizeof all);
        snprintf(text, sizeof text, "%s / %s  %s/s", done, all, rate);
        bar_draw(x->bar, "uploading", (double)sent / (double)total, text);
    } else {
        snprintf(text, sizeof text, "%s  %s/s", done, rate);
        bar_draw(x->bar, "uploading", -1, text);
    }
}

/* ------------------------------------------------------------ curl callbacks */

static size_t read_file(char *buf, size_t size, size_t n, void *arg)
{
    upload_xfer *x = arg;
    size_t got = fread(buf, 1, size * n, x->f);
    if (got == 0 && ferror(x->f)) {
        x->read_errno = errno ? errno : EIO;
        return CURL_READFUNC_ABORT;
    }
    return got;
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    (void)dltotal, (void)dlnow, (void)ultotal;
    upload_xfer *x = arg;
    /* curl calls this many times a second; the terminal needs ~10 */
    if (x->bar->on && es_mono_ms() - x->bar->last >= UPLOAD_REDRAW_MS) draw_sent(x, ulnow, x->size);
    return 0;
}

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    return es_buf_append(arg, p, size * n) == ES_OK ? size * n : 0;
}

/* ------------------------------------------------------------ requests */

/* Accept, and the token when there is one; NULL when out of memory. */
static struct curl_slist *base_headers(const es_config *cfg)
{
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json");
    if (h && cfg->token && *cfg->token) {
        es_buf auth;
        es_buf_init(&auth, 0);
        if (es_buf_printf(&auth, "Authorization: Bearer %s", cfg->token) == ES_OK) {
            struct curl_slist *more = curl_slist_append(h, es_buf_cstr(&auth));
            if (!more) curl_slist_free_all(h);
            h = more;
        }
        es_buf_finish(&auth);
    }
    return h;
}

static void unreachable(const es_config *cfg, CURLcode cc, const char *detail)
{
    fprintf(stderr, "esteira: cannot reach the server at ESTEIRA_URL=%s: %s\n", cfg->url,
            *detail ? detail : curl_easy_strerror(cc));
}

/* Prints an error answer: its status, code, message and each detail. */
static void print_refusal(const char *what, long status, const es_buf *raw)
{
    json_t *body = raw->len ? json_loadb(raw->data, raw->len, 0, NULL) : NULL;
    json_t *e = json_object_get(body, "error");
    if (json_is_object(e)) {
        fprintf(stderr, "esteira: %s: %ld %s: %s\n", what, status,
                es_json_str(e, "code") ? es_json_str(e, "code") : "error",
                es_json_str(e, "message") ? es_json_str(e, "message") : "(no message)");
        json_t *d;
        size_t i;
        json_array_foreach(json_object_get(e, "details"), i, d)
        {
            const char *field = es_json_str(d, "field"), *problem = es_json_str(d, "problem");
            fprintf(stderr, "  %s%s%s\n", field ? field : "", field && problem ? ": " : "",
                    problem ? problem : "");
        }
        if (es_json_str(body, "requestId"))
            fprintf(stderr, "  (request id %s)\n", es_json_str(body, "requestId"));
    } else {
        /* not esteira's JSON (a proxy, another program on the port): show its start */
        int n = raw->len > 200 ? 200 : (int)raw->len;
        fprintf(stderr, "esteira: %s: HTTP %ld%s%.*s\n", what, status, n ? ": " : "", n,
                n ? raw->data : "");
    }
    json_decref(body);
}

/* POST /v1/uploads?dataset=NAME with the file as the body.  On a 2xx answer
 * *out is its JSON; otherwise the reason has been printed and 1 is returned. */
static int post_file(CURL *c, const es_config *cfg, const upload_args *a, upload_xfer *x,
                     json_t **out)
{
    *out = NULL;
    int rc = 1;
    char key[ES_UUID_LEN + 1], errbuf[CURL_ERROR_SIZE] = "";
    if (!a->key) es_uuid7(key);
    char *ds = curl_easy_escape(c, a->dataset, 0);
    es_buf url, idem, answer;
    es_buf_init(&url, 0);
    es_buf_init(&idem, 0);
    es_buf_init(&answer, UPLOAD_MAX_ANSWER);
    struct curl_slist *h = base_headers(cfg);
    if (!ds || !h || es_buf_printf(&url, "%s/v1/uploads?dataset=%s", cfg->url, ds) ||
        es_buf_printf(&idem, "Idempotency-Key: %s", a->key ? a->key : key)) {
        fprintf(stderr, "esteira: out of memory\n");
        goto free_request;
    }
    struct curl_slist *all = h;
    /* no "Expect: 100-continue": the server answers early on its own (404, 422) */
    const char *extra[] = {"Content-Type: text/csv", es_buf_cstr(&idem), "Expect:"};
    for (size_t i = 0; all && i < ES_ARRAY_LEN(extra); i++)
        all = curl_slist_append(h, extra[i]);
    if (!all) {
        fprintf(stderr, "esteira: out of memory\n");
        goto free_request;
    }
    curl_easy_setopt(c, CURLOPT_URL, es_buf_cstr(&url));
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_READFUNCTION, read_file);
    curl_easy_setopt(c, CURLOPT_READDATA, x);
    /* a known size goes out with Content-Length; a pipe (size -1) is chunked */
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, x->size);
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, (long)UPLOAD_BUFFER);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, x);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    /* no total timeout (a 10 GB file takes what it takes), but a stalled one ends */
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, UPLOAD_STALL_S);

    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_off_t sent = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(c, CURLINFO_SIZE_UPLOAD_T, &sent);
    if (x->bar->on) {
        draw_sent(x, sent, x->size);
        bar_end(x->bar);
    }
    if (x->read_errno) {
        fprintf(stderr, "esteira: reading '%s' failed after %lld bytes: %s\n", x->name,
                (long long)sent, strerror(x->read_errno));
        goto free_request;
    }
    /* A server that refuses early (unknown dataset, bad header) may close
     * while curl is still sending: the send fails, but the answer arrived and
     * is the thing to show. */
    if (cc != CURLE_OK && !(status >= 300 && answer.len)) {
        if (status)
            fprintf(stderr, "esteira: the upload to %s was cut off after %lld bytes: %s\n",
                    cfg->url, (long long)sent, *errbuf ? errbuf : curl_easy_strerror(cc));
        else
            unreachable(cfg, cc, errbuf);
        goto free_request;
    }
    if (status < 200 || status >= 300) {
        print_refusal("upload refused", status, &answer);
        goto free_request;
    }
    *out = answer.len ? json_loadb(answer.data, answer.len, 0, NULL) : NULL;
    if (!es_json_str(*out, "id")) {
        fprintf(stderr, "esteira: the server answered %ld without an upload id\n", status);
        json_decref(*out);
        *out = NULL;
        goto free_request;
    }
    rc = 0;
free_request:
    curl_slist_free_all(h);
    es_buf_finish(&answer);
    es_buf_finish(&idem);
    es_buf_finish(&url);
    curl_free(ds);
    return rc;
}

/* One GET of the upload's status.  0 with *out set; -1 transient (worth
 * another try: no connection, 5xx, 429); 1 a refusal, already printed. */
static int get_status(CURL *c, const es_config *cfg, struct curl_slist *h, const char *url,
                      json_t **out, bool say_transient, upload_bar *bar)
{
    *out = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    es_buf answer;
    es_buf_init(&answer, UPLOAD_MAX_ANSWER);
    curl_easy_reset(c); /* keeps the connection: one for the whole wait */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, UPLOAD_POLL_TIMEOUT);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    int rc = -1;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    bool transient = cc != CURLE_OK || status >= 500 || status == 429;
    if (cc != CURLE_OK || status != 200) {
        if (transient && !say_transient) goto free_answer;
        bar_end(bar); /* the message goes on a line of its own */
        if (cc != CURLE_OK)
            unreachable(cfg, cc, errbuf);
        else
            print_refusal("reading the upload's status", status, &answer);
        rc = transient ? -1 : 1;
        goto free_answer;
    }
    *out = answer.len ? json_loadb(answer.data, answer.len, 0, NULL) : NULL;
    if (!es_json_str(*out, "status")) {
        json_decref(*out);
        *out = NULL;
        if (say_transient) {
            bar_end(bar);
            fprintf(stderr, "esteira: the upload's status is not readable JSON\n");
        }
        goto free_answer;
    }
    rc = 0;
free_answer:
    es_buf_finish(&answer);
    return rc;
}

typedef struct upload_counts {
    int64_t total, inserted, duplicate, rejected, batches, batches_done, batches_failed;
} upload_counts;

static upload_counts counts_of(const json_t *u)
{
    const json_t *rows = json_object_get(u, "rows"), *b = json_object_get(u, "batches");
    upload_counts n = {
        .total = es_json_int(rows, "total", 0),
        .inserted = es_json_int(rows, "inserted", 0),
        .duplicate = es_json_int(rows, "duplicate", 0),
        .rejected = es_json_int(rows, "rejected", 0),
        .batches = es_json_int(b, "total", 0),
        .batches_done = es_json_int(b, "done", 0),
        .batches_failed = es_json_int(b, "failed", 0),
    };
    return n;
}

static void draw_processing(upload_bar *bar, const json_t *u)
{
    upload_counts n = counts_of(u);
    int64_t seen = n.inserted + n.duplicate + n.rejected;
    char text[192];
    int len = snprintf(text, sizeof text, "%lld / %lld rows  batches %lld/%lld", (long long)seen,
                       (long long)n.total, (long long)n.batches_done, (long long)n.batches);
    if (n.batches_failed && len > 0 && (size_t)len < sizeof text)
        snprintf(text + len, sizeof text - (size_t)len, " (%lld failed)",
                 (long long)n.batches_failed);
    /* the total is known once the file is parsed; until then, no percentage */
    bar_draw(bar, es_json_str(u, "status"), n.total > 0 ? (double)seen / (double)n.total : -1,
             text);
}

/* Polls until the upload is done or failed; *final is its last status. */
static int follow(CURL *c, const es_config *cfg, const char *id, upload_bar *bar, json_t **final)
{
    *final = NULL;
    char *eid = curl_easy_escape(c, id, 0);
    es_buf url;
    es_buf_init(&url, 0);
    struct curl_slist *h = base_headers(cfg);
    int rc = 1, failures = 0;
    if (!eid || !h || es_buf_printf(&url, "%s/v1/uploads/%s", cfg->url, eid)) {
        fprintf(stderr, "esteira: out of memory\n");
        goto free_poll;
    }
    for (;;) {
        json_t *u;
        /* a transient failure is said only when it is the last straw, so a
         * server restart in the middle of a wait does not spray messages */
        int r = get_status(c, cfg, h, es_buf_cstr(&url), &u, failures >= UPLOAD_POLL_RETRIES, bar);
        if (r > 0) break;
        if (r < 0) {
            if (++failures > UPLOAD_POLL_RETRIES) {
                fprintf(stderr,
                        "esteira: gave up following upload %s (it goes on at the server: "
                        "GET /v1/uploads/%s)\n",
                        id, id);
                break;
            }
            /* 0.5, 1, 2, 4, 4 … s: rides out a restart without hammering */
            es_sleep_ms(failures >= 4 ? 4000 : 250LL << failures);
            continue;
        }
        failures = 0;
        const char *st = es_json_str(u, "status");
        if (bar->on) draw_processing(bar, u);
        if (!strcmp(st, "done") || !strcmp(st, "failed")) {
            *final = u;
            rc = 0;
            break;
        }
        json_decref(u);
        es_sleep_ms(UPLOAD_POLL_MS);
    }
    bar_end(bar);
free_poll:
    curl_slist_free_all(h);
    es_buf_finish(&url);
    curl_free(eid);
    return rc;
}

static void print_json(const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) printf("%s\n", s);
    free(s);
    fflush(stdout);
}

/* "done: 1000000 rows, 999000 inserted, 0 duplicate, 1000 rejected in 6.2 s" */
static void summarise(const json_t *u, const char *id, int64_t t0)
{
    upload_counts n = counts_of(u);
    const char *st = es_json_str(u, "status");
    fprintf(stderr, "%s: %lld rows, %lld inserted, %lld duplicate, %lld rejected in %.1f s\n", st,
            (long long)n.total, (long long)n.inserted, (long long)n.duplicate,
            (long long)n.rejected, (double)(es_mono_ms() - t0) / 1000);
    if (!strcmp(st, "failed")) {
        const json_t *e = json_object_get(u, "error");
        const char *why =
            json_is_object(e) ? es_json_str(e, "message") : es_json_str(u, "errorMessage");
        if (!why) why = es_json_str(u, "error");
        if (why) fprintf(stderr, "  %s\n", why);
    }
    if (n.rejected)
        fprintf(stderr, "  the rejected lines and why: GET /v1/uploads/%s/rejects\n", id);
}

/* ------------------------------------------------------------ the command */

int cli_upload(es_config *cfg, int argc, char **argv)
{
    upload_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;

    upload_bar bar = {.on = !a.quiet && isatty(STDERR_FILENO)};
    upload_xfer x = {.name = a.file, .size = -1, .bar = &bar};
    bool from_stdin = !strcmp(a.file, "-");
    x.f = from_stdin ? stdin : fopen(a.file, "rb");
    if (!x.f) {
        fprintf(stderr, "esteira upload: cannot read '%s': %s\n", a.file, strerror(errno));
        return 2;
    }
    struct stat st;
    if (fstat(fileno(x.f), &st) != 0 || S_ISDIR(st.st_mode)) {
        fprintf(stderr, "esteira upload: cannot read '%s': %s\n", a.file,
                S_ISDIR(st.st_mode) ? "it is a directory" : strerror(errno));
        rc = 2;
        goto close_file;
    }
    if (S_ISREG(st.st_mode)) x.size = (curl_off_t)st.st_size;

    rc = 1;
    CURL *c = curl_easy_init();
    if (!c) {
        fprintf(stderr, "esteira: out of memory\n");
        goto close_file;
    }
    json_t *accepted = NULL, *final = NULL;
    x.t0 = es_mono_ms();
    if (post_file(c, cfg, &a, &x, &accepted)) goto free_curl;
    const char *id = es_json_str(accepted, "id");
    if (!a.quiet) {
        char size[32], rate[32];
        double secs = (double)(es_mono_ms() - x.t0) / 1000;
        double bytes = (double)es_json_int(accepted, "bytes", x.size > 0 ? x.size : 0);
        fmt_bytes(bytes, size, sizeof size);
        fmt_bytes(secs > 0 ? bytes / secs : 0, rate, sizeof rate);
        fprintf(stderr, "upload %s: %s sent in %.1f s (%s/s), %s\n", id, size, secs, rate,
                es_json_str(accepted, "status") ? es_json_str(accepted, "status") : "accepted");
    }
    if (!a.wait) {
        print_json(accepted);
        rc = 0;
        goto free_curl;
    }
    if (follow(c, cfg, id, &bar, &final)) goto free_curl;
    print_json(final);
    if (!a.quiet) summarise(final, id, x.t0);
    rc = strcmp(es_json_str(final, "status"), "done") ? 1 : 0;
free_curl:
    json_decref(final);
    json_decref(accepted);
    curl_easy_cleanup(c);
close_file:
    if (!from_stdin) fclose(x.f);
    return rc;
}
