/* events.c - esteira events send: one event from flags to POST /v1/events, or
 * a file of NDJSON (or stdin) to POST /v1/events/batch in chunks.
 *
 * A file is read in bounded pieces and sent a chunk at a time (at most
 * --chunk events, and no more bytes than ESTEIRA_MAX_BODY), so memory does
 * not grow with the file.  Lines go out as they are, the server judges them;
 * the one change is an eventId added to every JSON object that lacks one.
 * That is what makes a resend safe: a 503 (the broker cannot take the events
 * now) is answered by sending the same chunk again after Retry-After, and an
 * event without an id would then get a second, server-made id and could be
 * stored twice.  With an id, the store keeps the first copy only.
 *
 * Output: stdout carries one JSON document - the server's answer for one
 * event, or {sent, accepted, rejected:[{line, errors}]} for a file, where line
 * is the 1-based line in the file.  Progress and errors go to stderr.  Exit
 * codes: 0 every event accepted, 1 some were rejected or the server refused or
 * could not be reached, 2 usage. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/cli.h"
#include "esteira/err.h"
#include "esteira/json.h"
#include "esteira/util.h"

#define EVENTS_USAGE                                                                               \
    "usage: esteira events send --user U --type T --session S [--data JSON] [--id UUID] "          \
    "[--at TIME]\n"                                                                                \
    "       esteira events send --file FILE|- [--chunk N] [--retries N] [--quiet]\n"
#define EVENTS_CHUNK_DEFAULT 1000
#define EVENTS_CHUNK_MAX     1000000 /* the largest ESTEIRA_EVENTS_REQUEST_MAX a server takes */
#define EVENTS_RETRIES_MAX   100
#define EVENTS_MAX_ANSWER    (64 * 1024 * 1024) /* a refused batch names every problem */
#define EVENTS_WAIT_CAP_MS   60000              /* the longest Retry-After honoured */
#define EVENTS_WAIT_MIN_MS   100                /* "Retry-After: 0" still should not hammer */
#define EVENTS_READ_PIECE    65536
#define EVENTS_PROGRESS_MS   1000 /* a progress line at most this often when not a terminal */

typedef struct events_args {
    const char *user, *type, *session, *data, *id, *at, *file;
    int64_t chunk, retries;
    bool quiet;
} events_args;

/* The connection and what every request carries. */
typedef struct events_client {
    const es_config *cfg;
    CURL *c;
    struct curl_slist *json_h, *ndjson_h;
    es_buf answer;
    int64_t retries;
    bool quiet;
} events_client;

/* ------------------------------------------------------------ arguments */

static int usage_error(const char *why, const char *what)
{
    if (why) fprintf(stderr, "esteira events: %s%s\n", why, what ? what : "");
    fputs(EVENTS_USAGE, stderr);
    return 2;
}

/* "--name VALUE" or "--name=VALUE": 1 taken, 0 another argument, -1 no value. */
static int flag_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n)) return 0;
    if (argv[*i][n] == '=') {
        *out = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n]) return 0;
    if (*i + 1 >= argc || !strncmp(argv[*i + 1], "--", 2)) return -1;
    *out = argv[++*i];
    return 1;
}

static int parse_send(int argc, char **argv, events_args *a)
{
    memset(a, 0, sizeof *a);
    a->chunk = EVENTS_CHUNK_DEFAULT;
    a->retries = 5;
    const char *chunk = NULL, *retries = NULL;
    struct {
        const char *name;
        const char **dst;
    } flags[] = {{"--user", &a->user}, {"--type", &a->type}, {"--session", &a->session},
                 {"--data", &a->data}, {"--id", &a->id},     {"--at", &a->at},
                 {"--file", &a->file}, {"--chunk", &chunk},  {"--retries", &retries}};
    for (int i = 0; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--quiet") || !strcmp(s, "-q")) {
            a->quiet = true;
            continue;
        }
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) return usage_error(NULL, NULL);
        int t = 0;
        for (size_t k = 0; k < ES_ARRAY_LEN(flags) && !t; k++)
            if ((t = flag_value(argc, argv, &i, flags[k].name, flags[k].dst)) < 0 ||
                (t > 0 && !**flags[k].dst))
                return usage_error(flags[k].name, " needs a value");
        if (!t) return usage_error(s[0] == '-' ? "unknown option " : "unexpected argument ", s);
    }
    if (chunk && es_parse_i64(chunk, 1, EVENTS_CHUNK_MAX, &a->chunk))
        return usage_error("--chunk takes a whole number from 1 to 1000000, not ", chunk);
    if (retries && es_parse_i64(retries, 0, EVENTS_RETRIES_MAX, &a->retries))
        return usage_error("--retries takes a whole number from 0 to 100, not ", retries);
    const char *one = a->user      ? "--user"
                      : a->type    ? "--type"
                      : a->session ? "--session"
                      : a->data    ? "--data"
                      : a->id      ? "--id"
                      : a->at      ? "--at"
                                   : NULL;
    if (a->file) {
        if (one) return usage_error("--file does not go with ", one);
        return 0;
    }
    if (chunk) return usage_error("--chunk goes with --file", NULL);
    if (!a->user) return usage_error("--user is required (or --file)", NULL);
    if (!a->type) return usage_error("--type is required", NULL);
    if (!a->session) return usage_error("--session is required", NULL);
    return 0;
}

/* ------------------------------------------------------------ requests */

static size_t collect(char *p, size_t size, size_t n, void *arg)
{
    return es_buf_append(arg, p, size * n) == ES_OK ? size * n : 0;
}

static struct curl_slist *headers(const es_config *cfg, const char *ctype)
{
    const char *fixed[] = {"Accept: application/json", ctype, "Expect:"};
    struct curl_slist *h = NULL, *more;
    for (size_t i = 0; i < ES_ARRAY_LEN(fixed); i++) {
        if (!(more = curl_slist_append(h, fixed[i]))) goto fail;
        h = more;
    }
    if (cfg->token && *cfg->token) {
        es_buf auth;
        es_buf_init(&auth, 0);
        more = es_buf_printf(&auth, "Authorization: Bearer %s", cfg->token)
                   ? NULL
                   : curl_slist_append(h, es_buf_cstr(&auth));
        es_buf_finish(&auth);
        if (!more) goto fail;
        h = more;
    }
    return h;
fail:
    curl_slist_free_all(h);
    return NULL;
}

static int client_init(events_client *cl, const es_config *cfg, int64_t retries, bool quiet)
{
    memset(cl, 0, sizeof *cl);
    cl->cfg = cfg;
    cl->retries = retries;
    cl->quiet = quiet;
    es_buf_init(&cl->answer, EVENTS_MAX_ANSWER);
    cl->c = curl_easy_init();
    cl->json_h = headers(cfg, "Content-Type: application/json");
    cl->ndjson_h = headers(cfg, "Content-Type: application/x-ndjson");
    if (!cl->c || !cl->json_h || !cl->ndjson_h) {
        fprintf(stderr, "esteira: out of memory\n");
        return 1;
    }
    return 0;
}

static void client_finish(events_client *cl)
{
    curl_slist_free_all(cl->json_h);
    curl_slist_free_all(cl->ndjson_h);
    curl_easy_cleanup(cl->c);
    es_buf_finish(&cl->answer);
}

/* How long the server asked us to wait: Retry-After in seconds, else a
 * doubling backoff (0.5, 1, 2, 4, 8 s). */
static int64_t wait_ms(CURL *c, int64_t attempt)
{
    struct curl_header *hd;
    int64_t s;
    if (curl_easy_header(c, "Retry-After", 0, CURLH_HEADER, -1, &hd) == CURLHE_OK &&
        es_parse_i64(hd->value, 0, INT64_MAX, &s) == ES_OK) {
        if (s > EVENTS_WAIT_CAP_MS / 1000) return EVENTS_WAIT_CAP_MS;
        return s * 1000 < EVENTS_WAIT_MIN_MS ? EVENTS_WAIT_MIN_MS : s * 1000;
    }
    return 500LL << (attempt < 4 ? attempt : 4);
}

/* POSTs body to path, again while the answer is 503 (at most --retries more
 * times).  0: answered, *status and cl->answer hold the last answer; 1: the
 * server could not be reached (said on stderr). */
static int post(events_client *cl, const char *path, bool ndjson, const char *body, size_t len,
                const char *what, long *status)
{
    char errbuf[CURL_ERROR_SIZE];
    es_buf url;
    es_buf_init(&url, 0);
    if (es_buf_printf(&url, "%s%s", cl->cfg->url, path)) {
        es_buf_finish(&url);
        fprintf(stderr, "esteira: out of memory\n");
        return 1;
    }
    int rc = 1;
    for (int64_t attempt = 0;; attempt++) {
        es_buf_reset(&cl->answer);
        errbuf[0] = 0;
        curl_easy_reset(cl->c); /* keeps the connection for the next chunk */
        curl_easy_setopt(cl->c, CURLOPT_URL, es_buf_cstr(&url));
        curl_easy_setopt(cl->c, CURLOPT_HTTPHEADER, ndjson ? cl->ndjson_h : cl->json_h);
        curl_easy_setopt(cl->c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(cl->c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(cl->c, CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(cl->c, CURLOPT_WRITEDATA, &cl->answer);
        curl_easy_setopt(cl->c, CURLOPT_ERRORBUFFER, errbuf);
        curl_easy_setopt(cl->c, CURLOPT_CONNECTTIMEOUT, 10L);
        curl_easy_setopt(cl->c, CURLOPT_TIMEOUT, 120L);
        CURLcode cc = curl_easy_perform(cl->c);
        *status = 0;
        curl_easy_getinfo(cl->c, CURLINFO_RESPONSE_CODE, status);
        if (cc != CURLE_OK) {
            fprintf(stderr, "esteira: cannot reach the server at ESTEIRA_URL=%s: %s\n",
                    cl->cfg->url, *errbuf ? errbuf : curl_easy_strerror(cc));
            break;
        }
        rc = 0;
        if (*status != 503 || attempt >= cl->retries) break;
        int64_t ms = wait_ms(cl->c, attempt);
        if (!cl->quiet)
            fprintf(stderr,
                    "esteira: the server is busy (503) with %s; sending it again in %.1f s "
                    "(retry %lld of %lld)\n",
                    what, (double)ms / 1000, (long long)attempt + 1, (long long)cl->retries);
        es_sleep_ms(ms);
    }
    es_buf_finish(&url);
    return rc;
}

/* A refusal on stderr: status, code, message and every detail. */
static void say_refusal(const char *what, long status, const json_t *body, const es_buf *raw)
{
    const json_t *e = json_object_get(body, "error");
    if (!json_is_object(e)) {
        int n = raw->len > 200 ? 200 : (int)raw->len;
        fprintf(stderr, "esteira: %s: HTTP %ld%s%.*s\n", what, status, n ? ": " : "", n,
                n ? raw->data : "");
        return;
    }
    const char *code = es_json_str(e, "code"), *msg = es_json_str(e, "message");
    fprintf(stderr, "esteira: %s: %ld %s: %s\n", what, status, code ? code : "error",
            msg ? msg : "(no message)");
    size_t i;
    const json_t *d;
    json_array_foreach(json_object_get(e, "details"), i, d)
    {
        const char *f = es_json_str(d, "field"), *p = es_json_str(d, "problem");
        fprintf(stderr, "  %s%s%s\n", f ? f : "", f && *f ? ": " : "", p ? p : "");
    }
}

static void print_json(const json_t *v)
{
    char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (s) printf("%s\n", s);
    free(s);
    fflush(stdout);
}

/* ------------------------------------------------------------ one event */

static int send_one(events_client *cl, const events_args *a)
{
    json_t *data = NULL;
    if (a->data) {
        json_error_t jerr;
        data = json_loads(a->data, JSON_DECODE_ANY, &jerr);
        if (!data) return usage_error("--data is not JSON: ", jerr.text);
    }
    char id[ES_UUID_LEN + 1];
    if (!a->id) es_uuid7(id); /* a resend after a 503 then stores it once */
    int64_t at_ms;
    bool at_is_ms = a->at && es_parse_i64(a->at, 0, INT64_MAX, &at_ms) == ES_OK;
    json_t *ev = json_pack("{s:s, s:s, s:s, s:s}", "userId", a->user, "eventType", a->type,
                           "sessionId", a->session, "eventId", a->id ? a->id : id);
    if (ev && data) json_object_set_new(ev, "eventData", data);
    if (ev && a->at)
        json_object_set_new(ev, "occurredAt",
                            at_is_ms ? json_integer((json_int_t)at_ms) : json_string(a->at));
    char *body = ev ? json_dumps(ev, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(ev);
    if (!body) {
        if (!ev) json_decref(data);
        fprintf(stderr, "esteira: out of memory (or --user/--type/--session not UTF-8)\n");
        return 1;
    }
    long status;
    int rc = post(cl, "/v1/events", false, body, strlen(body), "the event", &status);
    free(body);
    if (rc) return 1;
    json_t *answer = cl->answer.len ? json_loadb(cl->answer.data, cl->answer.len, 0, NULL) : NULL;
    if (status == 202 && answer) {
        print_json(answer);
        rc = 0;
    } else {
        /* a validation answer is data a script may want; other refusals are not */
        if (status == 400 && json_object_get(answer, "error")) print_json(answer);
        say_refusal("event refused", status, answer, &cl->answer);
        rc = 1;
    }
    json_decref(answer);
    return rc;
}

/* ------------------------------------------------------------ a file */

/* Reads a file in pieces (read(2): a pipe's lines are taken as they come). */
typedef struct line_reader {
    int fd;
    size_t pos, len;
    bool eof;
    char buf[EVENTS_READ_PIECE];
} line_reader;

/* The next line, without its '\n', into line (bounded: *too_long when it did
 * not fit; the rest of it is skipped).  1 a line, 0 the end, -1 a read error
 * (errno). */
static int next_line(line_reader *r, es_buf *line, bool *too_long)
{
    es_buf_reset(line);
    *too_long = false;
    bool any = false;
    for (;;) {
        if (r->pos == r->len) {
            if (r->eof) return any;
            ssize_t n = read(r->fd, r->buf, sizeof r->buf);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return -1;
            r->pos = 0;
            r->len = (size_t)n;
            if (n == 0) {
                r->eof = true;
                return any;
            }
        }
        any = true;
        const char *p = r->buf + r->pos;
        size_t avail = r->len - r->pos;
        const char *nl = memchr(p, '\n', avail);
        size_t n = nl ? (size_t)(nl - p) : avail;
        if (!*too_long && es_buf_append(line, p, n)) *too_long = true;
        r->pos += n + (nl != NULL);
        if (nl) return 1;
    }
}

/* The events waiting to go: their text, one per line, where each starts in
 * it, and the file line each came from. */
typedef struct chunk {
    es_buf body;
    size_t *off;   /* n + 1 entries: event i is body[off[i], off[i+1]) */
    int64_t *line; /* file line of event i */
    size_t n, cap;
} chunk;

typedef struct send_state {
    events_client *cl;
    chunk ch;
    size_t limit; /* events per request; halved when the server says 413 */
    int64_t sent, accepted, stopped_at;
    json_t *rejected;
    int64_t t0, drawn_at;
    bool tty, drawn;
} send_state;

/* Same rule as the server's: only blanks, tabs, CRs (and a leading RFC 7464
 * separator) is no event, and it keeps the server's indexes and ours in step. */
static void trim(const char *s, size_t len, size_t *from, size_t *to)
{
    size_t a = 0, b = len;
    while (a < b && (s[a] == ' ' || s[a] == '\t' || s[a] == '\r' || s[a] == 0x1e))
        a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\r'))
        b--;
    *from = a;
    *to = b;
}

/* Appends one line to the chunk, with an eventId put in after its '{' when it
 * is a JSON object without one; anything else goes as it is. */
static int chunk_add(chunk *ch, const char *s, size_t len, size_t from, size_t to, int64_t line)
{
    if (ch->n == ch->cap) {
        size_t cap = ch->cap ? ch->cap * 2 : 256;
        size_t *off = realloc(ch->off, (cap + 1) * sizeof *off);
        if (!off) return ES_ENOMEM;
        ch->off = off;
        int64_t *ln = realloc(ch->line, cap * sizeof *ln);
        if (!ln) return ES_ENOMEM;
        ch->line = ln;
        ch->cap = cap;
    }
    ch->off[ch->n] = ch->body.len;
    json_t *v = s[from] == '{' ? json_loadb(s + from, to - from, 0, NULL) : NULL;
    int rc;
    if (json_is_object(v) && !json_object_get(v, "eventId")) {
        char id[ES_UUID_LEN + 1];
        es_uuid7(id);
        rc = es_buf_append(&ch->body, s, from + 1);
        if (!rc)
            rc = es_buf_printf(&ch->body, "\"eventId\":\"%s\"%s", id,
                               json_object_size(v) ? "," : "");
        if (!rc) rc = es_buf_append(&ch->body, s + from + 1, len - from - 1);
    } else {
        rc = es_buf_append(&ch->body, s, len);
    }
    json_decref(v);
    if (!rc) rc = es_buf_append(&ch->body, "\n", 1);
    if (rc) {
        ch->body.len = ch->off[ch->n];
        return rc;
    }
    ch->line[ch->n++] = line;
    ch->off[ch->n] = ch->body.len;
    return ES_OK;
}

static void chunk_reset(chunk *ch)
{
    es_buf_reset(&ch->body);
    ch->n = 0;
}

static void reject(send_state *st, int64_t line, json_t *errors)
{
    json_array_append_new(st->rejected, json_pack("{s:I, s:o}", "line", (json_int_t)line, "errors",
                                                  errors ? errors : json_array()));
}

static void progress(send_state *st, bool last)
{
    if (st->cl->quiet) return;
    int64_t now = es_mono_ms();
    if (!last && !st->tty && now - st->drawn_at < EVENTS_PROGRESS_MS) return;
    st->drawn_at = now;
    /* on a terminal the line is redrawn in place (\033[K clears what is left of the last) */
    fprintf(stderr, "%sevents: %lld sent, %lld accepted, %zu rejected in %.1f s%s%s",
            st->tty ? "\r" : "", (long long)st->sent, (long long)st->accepted,
            json_array_size(st->rejected), (double)(now - st->t0) / 1000, st->tty ? "\033[K" : "",
            st->tty && !last ? "" : "\n");
    fflush(stderr);
    st->drawn = st->tty && !last;
}

/* Moves below a progress line that is being redrawn, before other output. */
static void progress_break(send_state *st)
{
    if (st->drawn) fputc('\n', stderr);
    st->drawn = false;
}

/* The server's 400 for a batch of which nothing is valid: its details are
 * named "[index].field"; each becomes an error of that event's line. */
static void reject_all(send_state *st, size_t a, size_t b, const json_t *err)
{
    size_t n = b - a;
    json_t **errs = calloc(n, sizeof *errs);
    if (!errs) return;
    size_t i;
    const json_t *d;
    json_array_foreach(json_object_get(err, "details"), i, d)
    {
        const char *f = es_json_str(d, "field");
        char *end;
        if (!f || f[0] != '[') continue;
        unsigned long long k = strtoull(f + 1, &end, 10);
        if (end[0] != ']' || k >= n) continue;
        if (!errs[k]) errs[k] = json_array();
        json_array_append_new(errs[k],
                              json_pack("{s:s, s:O?}", "field", end[1] == '.' ? end + 2 : end + 1,
                                        "problem", json_object_get(d, "problem")));
    }
    for (size_t k = 0; k < n; k++) {
        if (!errs[k]) /* not named: the request's own message is all there is */
            errs[k] =
                json_pack("[{s:s, s:s?}]", "field", "", "problem", es_json_str(err, "message"));
        reject(st, st->ch.line[a + k], errs[k]);
    }
    free(errs);
}

/* Sends events [a, b) of the chunk; 0 answered (accepted and rejected
 * counted), 1 stopped (said on stderr). */
static int send_range(send_state *st, size_t a, size_t b)
{
    chunk *ch = &st->ch;
    char what[64];
    snprintf(what, sizeof what, "the events from line %lld", (long long)ch->line[a]);
    long status;
    if (post(st->cl, "/v1/events/batch", true, ch->body.data + ch->off[a], ch->off[b] - ch->off[a],
             what, &status)) {
        st->stopped_at = ch->line[a];
        return 1;
    }
    es_buf *raw = &st->cl->answer;
    json_t *ans = raw->len ? json_loadb(raw->data, raw->len, 0, NULL) : NULL;
    const json_t *err = json_object_get(ans, "error");
    int rc = 0;
    if (status == 202 && json_is_integer(json_object_get(ans, "accepted"))) {
        st->sent += (int64_t)(b - a);
        st->accepted += es_json_int(ans, "accepted", 0);
        size_t i;
        const json_t *r;
        json_array_foreach(json_object_get(ans, "rejected"), i, r)
        {
            int64_t k = es_json_int(r, "index", -1);
            if (k < 0 || (size_t)k >= b - a) continue;
            reject(st, ch->line[a + (size_t)k], json_incref(json_object_get(r, "errors")));
        }
    } else if (status == 400 && json_is_object(err) &&
               !strcmp(es_json_str(err, "code") ? es_json_str(err, "code") : "",
                       "validation_failed")) {
        st->sent += (int64_t)(b - a);
        reject_all(st, a, b, err);
    } else if (status == 413 && b - a > 1) {
        /* the server takes fewer events (or bytes) than we sent: halve */
        size_t mid = a + (b - a) / 2;
        if (st->limit > mid - a) {
            st->limit = mid - a;
            if (!st->cl->quiet) {
                progress_break(st);
                fprintf(stderr,
                        "esteira: the server refused %zu events in one request (413); "
                        "sending at most %zu at a time\n",
                        b - a, st->limit);
            }
        }
        json_decref(ans);
        return send_range(st, a, mid) || send_range(st, mid, b);
    } else {
        progress_break(st);
        say_refusal(status == 503 ? "events not taken (retries exhausted)" : "events refused",
                    status, ans, raw);
        rc = 1;
    }
    json_decref(ans);
    if (rc) st->stopped_at = ch->line[a];
    return rc;
}

static int send_chunk(send_state *st)
{
    int rc = 0;
    /* the limit may shrink while a range goes (413), so the next starts where it ended */
    for (size_t a = 0, b; a < st->ch.n && !rc; a = b) {
        b = a + st->limit < st->ch.n ? a + st->limit : st->ch.n;
        rc = send_range(st, a, b);
    }
    chunk_reset(&st->ch);
    progress(st, false);
    return rc;
}

static int send_file(events_client *cl, const events_args *a)
{
    bool from_stdin = !strcmp(a->file, "-");
    int fd = from_stdin ? STDIN_FILENO : open(a->file, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    const char *why = fd < 0 || fstat(fd, &sb) != 0 ? strerror(errno)
                      : S_ISDIR(sb.st_mode)         ? "it is a directory"
                                                    : NULL;
    if (why) {
        fprintf(stderr, "esteira events: cannot read '%s': %s\n", a->file, why);
        if (fd >= 0 && !from_stdin) close(fd);
        return 2;
    }
    line_reader *r = malloc(sizeof *r);
    send_state st = {.cl = cl,
                     .limit = (size_t)a->chunk,
                     .rejected = json_array(),
                     .t0 = es_mono_ms(),
                     .drawn_at = es_mono_ms(),
                     .tty = isatty(STDERR_FILENO)};
    es_buf line;
    /* a line longer than a request body could be cannot be sent */
    size_t line_max = cl->cfg->max_body ? (size_t)cl->cfg->max_body : 1024 * 1024;
    es_buf_init(&line, line_max);
    es_buf_init(&st.ch.body, 0);
    int rc = 1;
    if (!r || !st.rejected) {
        fprintf(stderr, "esteira: out of memory\n");
        goto free_state;
    }
    *r = (line_reader){.fd = fd};
    int64_t lineno = 0;
    bool too_long;
    int got;
    while ((got = next_line(r, &line, &too_long)) > 0) {
        lineno++;
        if (too_long) {
            /* the events before it go first, so the rejects stay in line order */
            if (st.ch.n && send_chunk(&st)) goto summary;
            char msg[96];
            snprintf(msg, sizeof msg, "longer than %zu bytes (ESTEIRA_MAX_BODY): not sent",
                     line_max);
            reject(&st, lineno, json_pack("[{s:s, s:s}]", "field", "", "problem", msg));
            continue;
        }
        size_t from, to;
        trim(line.data ? line.data : "", line.len, &from, &to);
        if (from == to) continue;
        /* a full chunk (by count, or by the bytes one request may carry) goes */
        if (st.ch.n && (st.ch.n >= (size_t)a->chunk || st.ch.body.len + line.len + 64 > line_max))
            if (send_chunk(&st)) goto summary;
        if (chunk_add(&st.ch, line.data, line.len, from, to, lineno)) {
            progress_break(&st);
            fprintf(stderr, "esteira: out of memory\n");
            goto summary;
        }
    }
    if (got < 0) {
        progress_break(&st);
        fprintf(stderr, "esteira events: reading '%s' failed at line %lld: %s\n", a->file,
                (long long)lineno + 1, strerror(errno));
        if (!st.stopped_at) st.stopped_at = lineno + 1;
        goto summary;
    }
    if (st.ch.n && send_chunk(&st)) goto summary;
    rc = json_array_size(st.rejected) ? 1 : 0;
summary:
    progress(&st, true);
    if (rc && !st.stopped_at && st.ch.n) st.stopped_at = st.ch.line[0];
    {
        json_t *out = json_pack("{s:I, s:I, s:O}", "sent", (json_int_t)st.sent, "accepted",
                                (json_int_t)st.accepted, "rejected", st.rejected);
        /* where to start again: the lines from here on were not answered */
        if (out && st.stopped_at)
            json_object_set_new(out, "stoppedAtLine", json_integer((json_int_t)st.stopped_at));
        if (out) print_json(out);
        json_decref(out);
    }
free_state:
    es_buf_finish(&line);
    es_buf_finish(&st.ch.body);
    free(st.ch.off);
    free(st.ch.line);
    json_decref(st.rejected);
    free(r);
    if (!from_stdin) close(fd);
    return rc;
}

/* ------------------------------------------------------------ the command */

int cli_events(es_config *cfg, int argc, char **argv)
{
    if (argc < 1) return usage_error("no subcommand given (send)", NULL);
    if (strcmp(argv[0], "send")) return usage_error("unknown subcommand ", argv[0]);
    events_args a;
    int rc = parse_send(argc - 1, argv + 1, &a);
    if (rc) return rc;
    events_client cl;
    if (client_init(&cl, cfg, a.retries, a.quiet) == 0)
        rc = a.file ? send_file(&cl, &a) : send_one(&cl, &a);
    else
        rc = 1;
    client_finish(&cl);
    return rc;
}
