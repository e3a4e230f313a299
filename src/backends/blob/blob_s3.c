/* blob_s3.c - the S3 blob backend: AWS S3 and servers that speak its protocol.
 *
 *   s3://bucket                                   AWS; region from AWS_REGION, else us-east-1
 *   s3://bucket?region=eu-west-1
 *   s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1
 *   options: endpoint, region, path_style=0|1, part_size=8MB (5MB..1GB)
 *
 * Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, plus
 * AWS_SESSION_TOKEN for temporary ones; they never appear in the URL or the
 * logs.  Without an endpoint a bucket is addressed the way AWS wants it,
 * https://bucket.s3.<region>.amazonaws.com/key (path style only for a bucket
 * with a dot, which the certificate's wildcard would not cover); with one,
 * the way most S3-compatible servers want it, <endpoint>/bucket/key, unless
 * path_style=0.
 *
 * libcurl signs every request (CURLOPT_AWS_SIGV4).  What it leaves to us,
 * measured with curl 7.88:
 *  - it sends no x-amz-content-sha256, which S3 requires.  Every request body
 *    here is whole in memory (a part at most), so each carries the real
 *    SHA-256 of its body: the signature then covers the data too, which
 *    matters on plain HTTP, and SHA-256 runs at ~1.6 GB/s here;
 *  - it signs the query string exactly as given, so every query is built
 *    already sorted and RFC 3986-encoded;
 *  - it signs a header passed empty (the usual way to remove "Expect:") but
 *    does not send it, and the server then computes another signature: no
 *    empty header is ever passed.  Bodies go out as POSTFIELDS, for which curl
 *    asks "Expect: 100-continue" only above 1 MB, i.e. for parts, where
 *    waiting for the server's go-ahead lets it refuse before 8 MB are sent.
 *
 * Writing: a writer gathers data in a buffer of at most one part.  An object
 * that fits is one PUT at commit; a bigger one becomes a multipart upload,
 * each part sent as it fills, by a thread of its own while the next part
 * fills (one in flight at a time), completed at commit and aborted on abort,
 * so memory stays two parts whatever the object's size.  Either way the
 * object appears whole when S3 accepts the last request.
 *
 * Easy handles are kept in a small pool: each holds its connections open, so
 * requests after the first reuse them (keep-alive).  Idempotent requests are
 * retried on 5xx answers and transport errors; a GET that fails after some of
 * the object was delivered resumes from there, bound to the same ETag.
 *
 * Presigned URLs are signed by hand (SigV4 query signing): curl signs only
 * what it sends itself. */
#include "backends/blob/blob_s3.h"

#include <curl/curl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "esteira/blob.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/sign.h"
#include "esteira/util.h"

#define COMP             "s3"
#define S3_PART_DEFAULT  (8u << 20)
#define S3_PART_MIN      (5u << 20) /* S3's minimum for every part but the last */
#define S3_PART_MAX      (1u << 30)
#define S3_MAX_PARTS     10000      /* S3's limit */
#define S3_POOL          8          /* idle handles kept */
#define S3_TRIES         4          /* one try and three retries */
#define S3_BACKOFF_MS    100        /* then x3 each retry, plus jitter */
#define S3_XML_MAX       (8u << 20) /* a page of 1000 keys of 512 bytes is under 1 MB */
#define S3_ERRBODY_MAX   (64 * 1024)
#define S3_PRESIGN_MAX_S (7 * 24 * 3600) /* SigV4's limit */
#define S3_DEFAULT_CT    "application/octet-stream"
#define S3_CT_MAX        128 /* es_blob_info.content_type */
#define S3_ETAG_MAX      80  /* es_blob_info.etag */
#define S3_KEY_MAX       512
#define EMPTY_SHA256     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

typedef struct s3_ctx {
    char *bucket;
    char *region;
    char *base; /* scheme://host[:port] of the requests, no trailing '/' */
    char *host; /* as sent in Host: without the scheme's default port */
    bool path_style;
    size_t part_size;
    char *access_key, *secret_key;
    char *token;        /* AWS_SESSION_TOKEN, or NULL */
    char *token_header; /* "x-amz-security-token: <token>" */
    char sigv4[80];     /* "aws:amz:<region>:s3" */
    pthread_mutex_t lock;
    CURL *idle[S3_POOL];
    int nidle;
} s3_ctx;

typedef char s3_etag[S3_ETAG_MAX];

typedef struct s3_writer {
    s3_ctx *c;
    int err; /* sticky: once a part failed, the object cannot be committed */
    char key[S3_KEY_MAX + 1];
    char ct[S3_CT_MAX];
    es_buf buf;      /* the part being filled; at most part_size */
    char *upload_id; /* once the object outgrew one part */
    s3_etag *etags;  /* of the parts sent, [0] is part 1 */
    int nparts, cap_parts;
    /* A full part is sent by a thread of its own while the next one fills:
     * the writer's caller (a client's upload) is not held for the PUT.  One
     * part at a time is in flight, so a writer holds at most two parts. */
    es_buf sending; /* the part in flight */
    pthread_t sender;
    bool in_flight;
    int sent_rc; /* the in-flight part's outcome, read after the join */
} s3_writer;

/* One request and what came back. */
typedef struct s3_req {
    /* what to send */
    const char *method;
    const char *key;          /* NULL: the bucket itself */
    const char *query;        /* sorted and encoded, or NULL */
    const char *content_type; /* NULL: none */
    const void *body;
    size_t body_len;
    int64_t range_from; /* < 0: the whole object */
    int64_t range_to;   /* < 0: to the end; else the last byte wanted */
    es_blob_sink sink;  /* a 2xx body streams here; anything else goes to out */
    void *sink_arg;
    bool idempotent;
    /* what came back */
    long status;
    es_buf out;
    int64_t length; /* Content-Length, -1 when absent */
    char etag[S3_ETAG_MAX];
    char ctype[S3_CT_MAX];
    int64_t mtime_ms;
    char request_id[64];
    /* streaming state */
    char if_match[S3_ETAG_MAX]; /* set when a GET resumes */
    bool started;               /* the body of this attempt has begun */
    int64_t skip;               /* bytes to drop: a server that ignored Range */
    int64_t delivered;          /* bytes given to the sink, over all attempts */
    int sink_rc;
    bool overflow;
} s3_req;

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rc;

/* Both libraries have one-time global setup that is not safe to race; it is
 * done once per process and never undone (other users may share them). */
static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? ES_OK : ES_EBACKEND;
    xmlInitParser();
}

/* ------------------------------------------------------------ small helpers */

static bool ct_ok(const char *ct)
{
    if (strlen(ct) >= S3_CT_MAX) return false;
    for (; *ct; ct++)
        if ((unsigned char)*ct < 0x20 || (unsigned char)*ct >= 0x7f) return false;
    return true;
}

static bool bucket_ok(const char *b, size_t n)
{
    if (n < 1 || n > 63) return false;
    for (size_t i = 0; i < n; i++) {
        char ch = b[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_'))
            return false;
    }
    return true;
}

static bool region_ok(const char *r)
{
    size_t n = strlen(r);
    if (n < 1 || n > 40) return false;
    for (; *r; r++)
        if (!((*r >= 'a' && *r <= 'z') || (*r >= '0' && *r <= '9') || *r == '-')) return false;
    return true;
}

static void copy_n(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size) len = size - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

static bool name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

/* ------------------------------------------------------------ XML (libxml2) */

/* S3 answers in its namespace; elements are matched by local name. */
static xmlNode *xml_child(const xmlNode *n, const char *name)
{
    for (xmlNode *k = n ? n->children : NULL; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && strcmp((const char *)k->name, name) == 0) return k;
    return NULL;
}

/* The text of n's child element name into out (truncated); false when absent. */
static bool xml_text(const xmlNode *n, const char *name, char *out, size_t size)
{
    out[0] = '\0';
    xmlNode *k = xml_child(n, name);
    if (!k) return false;
    size_t len = 0;
    for (xmlNode *t = k->children; t; t = t->next) {
        if ((t->type != XML_TEXT_NODE && t->type != XML_CDATA_SECTION_NODE) || !t->content)
            continue;
        size_t add = strlen((const char *)t->content);
        if (len + add >= size) add = size - 1 - len;
        memcpy(out + len, t->content, add);
        len += add;
    }
    out[len] = '\0';
    return true;
}

/* No network, no entity substitution (XXE), no noise on stderr. */
static xmlDoc *xml_parse(const es_buf *b)
{
    if (!b->data || b->len == 0 || b->len > (size_t)INT32_MAX) return NULL;
    return xmlReadMemory(b->data, (int)b->len, "s3.xml", NULL,
                         XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
}

/* Code and Message of an <Error> body, when there is one. */
static bool xml_error(const es_buf *b, char code[64], char msg[256])
{
    code[0] = msg[0] = '\0';
    xmlDoc *doc = xml_parse(b);
    xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
    bool is_error = root && strcmp((const char *)root->name, "Error") == 0;
    if (is_error) {
        xml_text(root, "Code", code, 64);
        xml_text(root, "Message", msg, 256);
    }
    xmlFreeDoc(doc);
    return is_error;
}

/* ------------------------------------------------------------ URL and context */

static void s3_close(void *ctx)
{
    s3_ctx *c = ctx;
    if (!c) return;
    for (int i = 0; i < c->nidle; i++)
        curl_easy_cleanup(c->idle[i]);
    pthread_mutex_destroy(&c->lock);
    free(c->bucket);
    free(c->region);
    free(c->base);
    free(c->host);
    free(c->access_key);
    if (c->secret_key) {
        explicit_bzero(c->secret_key, strlen(c->secret_key));
        free(c->secret_key);
    }
    free(c->token);
    free(c->token_header);
    free(c);
}

/* http[s]://host[:port][/] into base and Host; the scheme's own port is
 * dropped, as curl drops it from Host: (the signature covers Host). */
static int parse_endpoint(s3_ctx *c, const char *ep)
{
    bool tls;
    if (strncmp(ep, "http://", 7) == 0) {
        tls = false;
        ep += 7;
    } else if (strncmp(ep, "https://", 8) == 0) {
        tls = true;
        ep += 8;
    } else {
        es_error(COMP, "S3 endpoint must start with http:// or https://");
        return ES_EINVAL;
    }
    size_t alen = strcspn(ep, "/?#");
    if ((ep[alen] && strcmp(ep + alen, "/") != 0) || alen == 0 || alen > 255 ||
        memchr(ep, '@', alen)) {
        es_error(COMP, "S3 endpoint must be scheme://host[:port] (no path, no user)");
        return ES_EINVAL;
    }
    /* "[::1]:9000": the port's colon is the last one after the bracket */
    const char *rb = ep[0] == '[' ? memchr(ep, ']', alen) : NULL;
    const char *from = rb ? rb : ep;
    const char *colon = memrchr(from, ':', alen - (size_t)(from - ep));
    size_t hlen = colon ? (size_t)(colon - ep) : alen;
    for (size_t i = 0; i < hlen; i++) {
        char ch = ep[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || ch == '.' || ch == '-' ||
                  (rb && (ch == ':' || ch == '[' || ch == ']'));
        if (!ok) goto bad_port;
    }
    int64_t port = tls ? 443 : 80;
    if (colon) {
        char ps[8];
        size_t plen = alen - hlen - 1;
        if (plen == 0 || plen >= sizeof ps) goto bad_port;
        copy_n(ps, sizeof ps, colon + 1, plen);
        if (es_parse_i64(ps, 1, 65535, &port) != ES_OK) goto bad_port;
    }
    if (hlen == 0) goto bad_port;
    bool dflt = port == (tls ? 443 : 80);
    const char *vhost = c->path_style ? "" : c->bucket;
    es_buf b;
    es_buf_init(&b, 0);
    int rc = es_buf_printf(&b, "%s%s%.*s", vhost, *vhost ? "." : "", (int)hlen, ep);
    if (rc == ES_OK && !dflt) rc = es_buf_printf(&b, ":%lld", (long long)port);
    if (rc == ES_OK && !(c->host = es_buf_steal(&b))) rc = ES_ENOMEM;
    es_buf_finish(&b);
    if (rc != ES_OK) return rc;
    es_buf_init(&b, 0);
    rc = es_buf_printf(&b, "%s://%s", tls ? "https" : "http", c->host);
    if (rc == ES_OK && !(c->base = es_buf_steal(&b))) rc = ES_ENOMEM;
    es_buf_finish(&b);
    return rc;

bad_port:
    es_error(COMP, "S3 endpoint has a bad host or port");
    return ES_EINVAL;
}

/* parse_endpoint puts the bucket in front for virtual hosts. */
static int aws_endpoint(s3_ctx *c)
{
    char url[128];
    snprintf(url, sizeof url, "https://s3.%s.amazonaws.com", c->region);
    return parse_endpoint(c, url);
}

/* Reads the options after '?'.  Values may be percent-encoded or not (an
 * endpoint's "://" is fine either way). */
static int parse_options(const char *q, char **endpoint, char **region, int *path_style,
                         uint64_t *part_size)
{
    while (*q) {
        size_t len = strcspn(q, "&");
        const char *eq = memchr(q, '=', len);
        size_t nlen = eq ? (size_t)(eq - q) : len;
        char *v = eq ? es_urldecode(eq + 1, len - nlen - 1, 0) : strdup("");
        if (!v) {
            es_error(COMP, "bad escape in the options of the S3 URL");
            return ES_EINVAL;
        }
        int rc = ES_OK;
        bool b;
        if (name_is(q, nlen, "endpoint") && *v) {
            free(*endpoint);
            *endpoint = v;
            v = NULL;
        } else if (name_is(q, nlen, "region") && *v) {
            free(*region);
            *region = v;
            v = NULL;
        } else if (name_is(q, nlen, "path_style") && es_parse_bool(v, &b) == ES_OK) {
            *path_style = b;
        } else if (name_is(q, nlen, "part_size") && es_parse_size(v, part_size) == ES_OK &&
                   *part_size >= S3_PART_MIN && *part_size <= S3_PART_MAX) {
        } else {
            es_error(COMP,
                     "bad S3 URL option '%.*s' (known: endpoint, region, path_style, "
                     "part_size of 5MB..1GB)",
                     (int)(nlen > 32 ? 32 : nlen), q);
            rc = ES_EINVAL;
        }
        free(v);
        if (rc != ES_OK) return rc;
        q += len;
        if (*q == '&') q++;
    }
    return ES_OK;
}

static char *env_dup(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? strdup(v) : NULL;
}

static int s3_open(const char *url, const es_config *cfg, void **out)
{
    (void)cfg;
    *out = NULL;
    pthread_once(&global_once, global_init);
    if (global_rc != ES_OK) {
        es_error(COMP, "curl_global_init failed");
        return global_rc;
    }
    const char *p = url + strlen("s3://");
    size_t blen = strcspn(p, "/?#");
    const char *rest = p + blen;
    if (*rest == '/') rest++; /* s3://bucket/ */
    if (!bucket_ok(p, blen) || (*rest && *rest != '?')) {
        es_error(COMP, "S3 URL must be s3://bucket[?options], with a bucket of [A-Za-z0-9._-]");
        return ES_EINVAL;
    }
    s3_ctx *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        free(c);
        return ES_ENOMEM;
    }
    char *endpoint = NULL;
    uint64_t part_size = S3_PART_DEFAULT;
    int path_style = -1, rc = ES_ENOMEM;
    if (!(c->bucket = strndup(p, blen))) goto free_ctx;
    if (*rest == '?' &&
        (rc = parse_options(rest + 1, &endpoint, &c->region, &path_style, &part_size)) != ES_OK)
        goto free_ctx;
    rc = ES_ENOMEM;
    if (!c->region && !(c->region = env_dup("AWS_REGION")) &&
        !(c->region = env_dup("AWS_DEFAULT_REGION")) && !(c->region = strdup("us-east-1")))
        goto free_ctx;
    if (!region_ok(c->region)) {
        es_error(COMP, "bad S3 region '%.40s'", c->region);
        rc = ES_EINVAL;
        goto free_ctx;
    }
    c->part_size = (size_t)part_size;
    /* AWS wants virtual hosts; other servers mostly want paths.  A bucket with a
     * dot is not covered by AWS's certificate wildcard, so it goes in the path. */
    c->path_style = path_style >= 0 ? path_style : endpoint || strchr(c->bucket, '.');
    rc = endpoint ? parse_endpoint(c, endpoint) : aws_endpoint(c);
    if (rc != ES_OK) goto free_ctx;
    snprintf(c->sigv4, sizeof c->sigv4, "aws:amz:%s:s3", c->region);

    c->access_key = env_dup("AWS_ACCESS_KEY_ID");
    c->secret_key = env_dup("AWS_SECRET_ACCESS_KEY");
    c->token = env_dup("AWS_SESSION_TOKEN");
    if (!c->access_key || !c->secret_key) {
        es_error(COMP, "S3 needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment");
        rc = ES_EINVAL;
        goto free_ctx;
    }
    if (strchr(c->access_key, ':') || strpbrk(c->access_key, "\r\n") ||
        (c->token && strpbrk(c->token, "\r\n"))) {
        es_error(COMP, "AWS_ACCESS_KEY_ID or AWS_SESSION_TOKEN holds a bad character");
        rc = ES_EINVAL;
        goto free_ctx;
    }
    if (c->token) {
        es_buf th;
        es_buf_init(&th, 0);
        rc = es_buf_printf(&th, "x-amz-security-token: %s", c->token);
        c->token_header = rc == ES_OK ? es_buf_steal(&th) : NULL;
        es_buf_finish(&th);
        if (!c->token_header) {
            rc = ES_ENOMEM;
            goto free_ctx;
        }
    }
    free(endpoint);
    es_debug(COMP, "bucket %s at %s (%s style, region %s, parts of %zu bytes)", c->bucket, c->base,
             c->path_style ? "path" : "virtual-host", c->region, c->part_size);
    *out = c;
    return ES_OK;

free_ctx:
    free(endpoint);
    s3_close(c);
    return rc;
}

/* The path of a key (or of the bucket when key is NULL), encoded. */
static int path_of(const s3_ctx *c, const char *key, es_buf *out)
{
    int rc = c->path_style ? es_buf_printf(out, "/%s", c->bucket) : ES_OK;
    if (rc != ES_OK) return rc;
    if (!key) return c->path_style ? ES_OK : es_buf_puts(out, "/");
    char *ek = es_urlencode(key, 1);
    if (!ek) return ES_ENOMEM;
    rc = es_buf_printf(out, "/%s", ek);
    free(ek);
    return rc;
}

/* ------------------------------------------------------------ handles */

static CURL *take_handle(s3_ctx *c)
{
    CURL *h = NULL;
    pthread_mutex_lock(&c->lock);
    if (c->nidle > 0) h = c->idle[--c->nidle];
    pthread_mutex_unlock(&c->lock);
    return h ? h : curl_easy_init();
}

/* Options are reset (they point at a finished request's memory); the
 * connections the handle holds stay open for the next request. */
static void give_handle(s3_ctx *c, CURL *h)
{
    curl_easy_reset(h);
    pthread_mutex_lock(&c->lock);
    if (c->nidle < S3_POOL) {
        c->idle[c->nidle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h) curl_easy_cleanup(h);
}

/* ------------------------------------------------------------ one request */

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    s3_req *r = arg;
    size_t len = size * n, l = len;
    while (l > 0 && (p[l - 1] == '\r' || p[l - 1] == '\n'))
        l--;
    if (l >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* a new response (after a 100 Continue, say): forget the last one's */
        const char *sp = memchr(p, ' ', l);
        r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
        r->length = -1;
        r->etag[0] = r->ctype[0] = r->request_id[0] = '\0';
        r->mtime_ms = 0;
        return len;
    }
    const char *colon = memchr(p, ':', l);
    if (!colon) return len;
    size_t nlen = (size_t)(colon - p);
    const char *v = colon + 1;
    size_t vlen = l - nlen - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        vlen--;
    }
    char tmp[128];
    if (name_is(p, nlen, "content-length")) {
        copy_n(tmp, sizeof tmp, v, vlen);
        if (es_parse_i64(tmp, 0, INT64_MAX, &r->length) != ES_OK) r->length = -1;
    } else if (name_is(p, nlen, "etag")) {
        copy_n(r->etag, sizeof r->etag, v, vlen);
    } else if (name_is(p, nlen, "content-type")) {
        copy_n(r->ctype, sizeof r->ctype, v, vlen);
    } else if (name_is(p, nlen, "last-modified")) {
        copy_n(tmp, sizeof tmp, v, vlen);
        time_t t = curl_getdate(tmp, NULL);
        r->mtime_ms = t > 0 ? (int64_t)t * 1000 : 0;
    } else if (name_is(p, nlen, "x-amz-request-id")) {
        copy_n(r->request_id, sizeof r->request_id, v, vlen);
    }
    return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    s3_req *r = arg;
    size_t len = size * n, all = len;
    if (r->sink && r->status >= 200 && r->status < 300) {
        if (!r->started) {
            r->started = true;
            /* asked for a range, given the whole object: drop the bytes before it */
            if (r->status == 200 && r->range_from > 0) r->skip = r->range_from;
        }
        if (r->skip > 0) {
            size_t d = (uint64_t)r->skip < len ? (size_t)r->skip : len;
            p += d;
            len -= d;
            r->skip -= (int64_t)d;
            if (len == 0) return all;
        }
        int rc = r->sink(r->sink_arg, p, len);
        if (rc != 0) {
            r->sink_rc = rc;
            return 0; /* stops the transfer */
        }
        r->delivered += (int64_t)len;
        return all;
    }
    if (es_buf_append(&r->out, p, len) != ES_OK && !r->sink) {
        r->overflow = true;
        return 0;
    }
    return all; /* an error body larger than its bound: the start will do */
}

static bool retryable_curl(CURLcode cc, bool idempotent)
{
    /* a connection never made carried nothing: even a POST may go again */
    if (cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST) return true;
    if (!idempotent) return false;
    return cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR || cc == CURLE_GOT_NOTHING ||
           cc == CURLE_PARTIAL_FILE || cc == CURLE_OPERATION_TIMEDOUT ||
           cc == CURLE_SSL_CONNECT_ERROR;
}

static struct curl_slist *add_header(struct curl_slist *l, bool *ok, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static struct curl_slist *add_header(struct curl_slist *l, bool *ok, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof line) {
        *ok = false;
        return l;
    }
    struct curl_slist *nl = curl_slist_append(l, line);
    if (!nl) *ok = false;
    return nl ? nl : l;
}

static CURLcode perform(s3_ctx *c, CURL *h, s3_req *r, const char *url, const char *sha,
                        char errbuf[CURL_ERROR_SIZE])
{
    bool ok = true;
    struct curl_slist *hd = NULL;
    hd = add_header(hd, &ok, "x-amz-content-sha256: %s", sha);
    if (r->content_type) hd = add_header(hd, &ok, "Content-Type: %s", r->content_type);
    if (r->range_to >= 0)
        hd = add_header(hd, &ok, "Range: bytes=%lld-%lld",
                        (long long)(r->range_from > 0 ? r->range_from : 0), (long long)r->range_to);
    else if (r->range_from > 0)
        hd = add_header(hd, &ok, "Range: bytes=%lld-", (long long)r->range_from);
    if (r->if_match[0]) hd = add_header(hd, &ok, "If-Match: %s", r->if_match);
    if (c->token_header) {
        struct curl_slist *nl = curl_slist_append(hd, c->token_header);
        if (nl) hd = nl;
        ok = ok && nl;
    }
    if (!ok) {
        curl_slist_free_all(hd);
        snprintf(errbuf, CURL_ERROR_SIZE, "cannot build the request's headers");
        return CURLE_OUT_OF_MEMORY;
    }
    errbuf[0] = '\0';
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_AWS_SIGV4, c->sigv4);
    curl_easy_setopt(h, CURLOPT_USERNAME, c->access_key);
    curl_easy_setopt(h, CURLOPT_PASSWORD, c->secret_key);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    /* no total timeout (objects may be big): a transfer stalled for a minute fails */
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    if (r->sink) curl_easy_setopt(h, CURLOPT_BUFFERSIZE, 256L * 1024);
    if (strcmp(r->method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (strcmp(r->method, "GET") == 0) {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(r->method, "DELETE") == 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    } else { /* PUT, POST: the body from memory, as it is */
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, r->body ? r->body : "");
        if (strcmp(r->method, "POST") != 0) curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, r->method);
    }
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hd);
    return cc;
}

static const char *name_of(const s3_ctx *c, const s3_req *r)
{
    return r->key ? r->key : c->bucket;
}

/* Sends r, again when that is safe and may help.  ES_OK when an answer came
 * back, whatever its status (status_err judges it); the sink's code when the
 * sink stopped the read; ES_ELIMIT when an answer outgrew its bound;
 * ES_EBACKEND when no answer came. */
static int s3_do(s3_ctx *c, s3_req *r)
{
    char sha[65];
    if (r->body_len > 0)
        es_sha256_hex(r->body, r->body_len, sha);
    else
        memcpy(sha, EMPTY_SHA256, sizeof sha);
    es_buf url;
    es_buf_init(&url, 0);
    int rc = es_buf_puts(&url, c->base);
    if (rc == ES_OK) rc = path_of(c, r->key, &url);
    if (rc == ES_OK && r->query) rc = es_buf_printf(&url, "?%s", r->query);
    if (rc != ES_OK) goto finish_url;
    CURL *h = take_handle(c);
    if (!h) {
        rc = ES_ENOMEM;
        goto finish_url;
    }
    const int64_t from = r->range_from > 0 ? r->range_from : 0;
    char errbuf[CURL_ERROR_SIZE];
    for (int attempt = 1;; attempt++) {
        es_buf_reset(&r->out);
        r->status = 0;
        r->length = -1;
        r->started = false;
        r->skip = 0;
        CURLcode cc = perform(c, h, r, es_buf_cstr(&url), sha, errbuf);
        if (r->sink_rc != 0) {
            rc = r->sink_rc;
            break;
        }
        if (r->overflow) {
            es_error(COMP, "%s %s: answer larger than %zu bytes", r->method, name_of(c, r),
                     r->out.max);
            rc = ES_ELIMIT;
            break;
        }
        bool server_error = cc == CURLE_OK && r->status >= 500;
        if (cc == CURLE_OK && !server_error) {
            rc = ES_OK;
            break;
        }
        bool again = attempt < S3_TRIES &&
                     (server_error ? r->idempotent : retryable_curl(cc, r->idempotent));
        if (again && r->delivered > 0) {
            /* Resume after what the sink has, and only from the same object:
             * If-Match makes S3 answer 412 if it was replaced meanwhile. */
            if (!r->if_match[0]) es_strlcpy(r->if_match, r->etag, sizeof r->if_match);
            again = r->if_match[0] != '\0';
            r->range_from = from + r->delivered;
        }
        const char *why = cc != CURLE_OK ? (errbuf[0] ? errbuf : curl_easy_strerror(cc)) : NULL;
        if (!again) {
            if (why) {
                es_error(COMP, "%s %s at %s: %s", r->method, name_of(c, r), c->base, why);
                rc = ES_EBACKEND;
            } else {
                rc = ES_OK; /* the 5xx itself is judged and logged by status_err */
            }
            break;
        }
        if (why)
            es_warn(COMP, "%s %s: %s; retrying (%d of %d)", r->method, name_of(c, r), why,
                    attempt + 1, S3_TRIES);
        else
            es_warn(COMP, "%s %s: HTTP %ld; retrying (%d of %d)", r->method, name_of(c, r),
                    r->status, attempt + 1, S3_TRIES);
        int64_t delay = S3_BACKOFF_MS;
        for (int i = 1; i < attempt; i++)
            delay *= 3;
        es_sleep_ms(delay + (int64_t)es_random_below(S3_BACKOFF_MS));
    }
    give_handle(c, h);
finish_url:
    es_buf_finish(&url);
    return rc;
}

/* Judges an answer's status.  404 is left to the caller to log: for most
 * calls it is an ordinary answer. */
static int status_err(const s3_ctx *c, const s3_req *r)
{
    long st = r->status;
    if (st >= 200 && st < 300) return ES_OK;
    if (st == 404) return ES_ENOTFOUND;
    char code[64], msg[256];
    xml_error(&r->out, code, msg);
    int rc = st == 403                ? ES_EAUTH
             : st == 409 || st == 412 ? ES_ECONFLICT
             : st == 416              ? ES_EINVAL
                                      : ES_EBACKEND;
    es_error(COMP, "%s %s: HTTP %ld%s%s%s%s (request id %s)", r->method, name_of(c, r), st,
             code[0] ? " " : "", code, msg[0] ? ": " : "", msg,
             r->request_id[0] ? r->request_id : "none");
    return rc;
}

static void req_init(s3_req *r, const char *method, const char *key, size_t out_max)
{
    memset(r, 0, sizeof *r);
    r->method = method;
    r->key = key;
    r->range_from = -1;
    r->range_to = -1;
    r->length = -1;
    es_buf_init(&r->out, out_max);
}

/* s3_do, then status_err. */
static int s3_call(s3_ctx *c, s3_req *r)
{
    int rc = s3_do(c, r);
    return rc != ES_OK ? rc : status_err(c, r);
}

/* ------------------------------------------------------------ writing */

static int join_sender(s3_writer *w);

static void writer_free(s3_writer *w)
{
    join_sender(w);
    es_buf_finish(&w->buf);
    es_buf_finish(&w->sending);
    free(w->upload_id);
    free(w->etags);
    free(w);
}

static int s3_writer_open(void *ctx, const char *key, const char *content_type, void **out)
{
    s3_ctx *c = ctx;
    *out = NULL;
    if (!es_blob_key_valid(key)) {
        es_warn(COMP, "invalid blob key '%.80s'", key ? key : "(null)");
        return ES_EINVAL;
    }
    const char *ct = content_type && *content_type ? content_type : S3_DEFAULT_CT;
    if (!ct_ok(ct)) {
        es_warn(COMP, "invalid content type for %s", key);
        return ES_EINVAL;
    }
    s3_writer *w = calloc(1, sizeof *w);
    if (!w) return ES_ENOMEM;
    w->c = c;
    es_strlcpy(w->key, key, sizeof w->key);
    es_strlcpy(w->ct, ct, sizeof w->ct);
    es_buf_init(&w->buf, c->part_size);
    es_buf_init(&w->sending, c->part_size);
    *out = w;
    return ES_OK;
}

static int create_upload(s3_writer *w)
{
    s3_req r;
    req_init(&r, "POST", w->key, S3_ERRBODY_MAX);
    r.query = "uploads=";
    r.content_type = w->ct;
    int rc = s3_call(w->c, &r);
    if (rc == ES_OK) {
        char id[1024];
        xmlDoc *doc = xml_parse(&r.out);
        xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
        if (root && xml_text(root, "UploadId", id, sizeof id) && id[0] &&
            strlen(id) < sizeof id - 1) {
            if (!(w->upload_id = strdup(id))) rc = ES_ENOMEM;
        } else {
            es_error(COMP, "POST %s?uploads: no UploadId in the answer", w->key);
            rc = ES_EBACKEND;
        }
        xmlFreeDoc(doc);
    } else if (rc == ES_ENOTFOUND) {
        es_error(COMP, "POST %s?uploads: HTTP 404 (no bucket %s?)", w->key, w->c->bucket);
        rc = ES_EBACKEND;
    }
    es_buf_finish(&r.out);
    return rc;
}

static int upload_query(const s3_writer *w, int part, es_buf *q)
{
    char *id = es_urlencode(w->upload_id, 0);
    if (!id) return ES_ENOMEM;
    int rc = part > 0 ? es_buf_printf(q, "partNumber=%d&uploadId=%s", part, id)
                      : es_buf_printf(q, "uploadId=%s", id);
    free(id);
    return rc;
}

/* Room for the ETag of one more part; on the writer's own thread. */
static int reserve_part(s3_writer *w)
{
    if (w->nparts == S3_MAX_PARTS) {
        es_error(COMP, "%s: more than %d parts of %zu bytes", w->key, S3_MAX_PARTS,
                 w->c->part_size);
        return ES_ELIMIT;
    }
    if (w->nparts == w->cap_parts) {
        int ncap = w->cap_parts ? w->cap_parts * 2 : 16;
        s3_etag *ne = realloc(w->etags, (size_t)ncap * sizeof *ne);
        if (!ne) return ES_ENOMEM;
        w->etags = ne;
        w->cap_parts = ncap;
    }
    return ES_OK;
}

/* Sends data as part `part` (1-based; its ETag slot reserved already). */
static int upload_part(s3_writer *w, int part, const es_buf *data)
{
    es_buf q;
    es_buf_init(&q, 0);
    s3_req r;
    req_init(&r, "PUT", w->key, S3_ERRBODY_MAX);
    int rc = upload_query(w, part, &q);
    if (rc != ES_OK) goto finish;
    r.query = es_buf_cstr(&q);
    r.body = data->data;
    r.body_len = data->len;
    r.idempotent = true; /* the same part number again replaces it */
    rc = s3_call(w->c, &r);
    if (rc == ES_ENOTFOUND) {
        es_error(COMP, "PUT %s part %d: HTTP 404 (the upload is gone)", w->key, part);
        rc = ES_EBACKEND;
    }
    if (rc != ES_OK) goto finish;
    if (!r.etag[0]) {
        es_error(COMP, "PUT %s part %d: no ETag in the answer", w->key, part);
        rc = ES_EBACKEND;
        goto finish;
    }
    es_strlcpy(w->etags[part - 1], r.etag, sizeof(s3_etag));
    es_debug(COMP, "%s: part %d sent (%zu bytes)", w->key, part, data->len);
finish:
    es_buf_finish(&r.out);
    es_buf_finish(&q);
    return rc;
}

static void *sender_main(void *arg)
{
    s3_writer *w = arg;
    w->sent_rc = upload_part(w, w->nparts, &w->sending);
    return NULL;
}

/* Waits for the part in flight; its failure becomes the writer's. */
static int join_sender(s3_writer *w)
{
    if (w->in_flight) {
        pthread_join(w->sender, NULL);
        w->in_flight = false;
        if (w->sent_rc != ES_OK && w->err == ES_OK) w->err = w->sent_rc;
    }
    return w->err;
}

/* The full buffer goes out as the next part, on the sender thread when one
 * can be started (else here), once the part before it is through. */
static int send_part(s3_writer *w)
{
    int rc = join_sender(w);
    if (rc == ES_OK) rc = reserve_part(w);
    if (rc != ES_OK) return rc;
    es_buf t = w->sending;
    w->sending = w->buf;
    w->buf = t;
    es_buf_reset(&w->buf);
    w->nparts++;
    if (pthread_create(&w->sender, NULL, sender_main, w) == 0) {
        w->in_flight = true;
        return ES_OK;
    }
    return upload_part(w, w->nparts, &w->sending);
}

/* ETags are quoted hex, but nothing obliges a server to that: escape. */
static int xml_escaped(es_buf *b, const char *s)
{
    int rc = ES_OK;
    for (; *s && rc == ES_OK; s++) {
        switch (*s) {
        case '&': rc = es_buf_puts(b, "&amp;"); break;
        case '<': rc = es_buf_puts(b, "&lt;"); break;
        case '>': rc = es_buf_puts(b, "&gt;"); break;
        default: rc = es_buf_append(b, s, 1);
        }
    }
    return rc;
}

static int complete_upload(s3_writer *w)
{
    es_buf q, body;
    es_buf_init(&q, 0);
    es_buf_init(&body, 0);
    s3_req r;
    req_init(&r, "POST", w->key, S3_ERRBODY_MAX);
    int rc = upload_query(w, 0, &q);
    if (rc == ES_OK) rc = es_buf_puts(&body, "<CompleteMultipartUpload>");
    for (int i = 0; i < w->nparts && rc == ES_OK; i++) {
        rc = es_buf_printf(&body, "<Part><PartNumber>%d</PartNumber><ETag>", i + 1);
        if (rc == ES_OK) rc = xml_escaped(&body, w->etags[i]);
        if (rc == ES_OK) rc = es_buf_puts(&body, "</ETag></Part>");
    }
    if (rc == ES_OK) rc = es_buf_puts(&body, "</CompleteMultipartUpload>");
    if (rc != ES_OK) goto finish;
    r.query = es_buf_cstr(&q);
    r.content_type = "application/xml";
    r.body = body.data;
    r.body_len = body.len;
    rc = s3_call(w->c, &r);
    if (rc == ES_ENOTFOUND) {
        es_error(COMP, "POST %s?uploadId: HTTP 404 (the upload is gone)", w->key);
        rc = ES_EBACKEND;
    }
    char code[64], msg[256];
    /* S3 may answer 200 and then report a failure in the body */
    if (rc == ES_OK && xml_error(&r.out, code, msg)) {
        es_error(COMP, "POST %s?uploadId: %s: %s", w->key, code, msg);
        rc = ES_EBACKEND;
    }
finish:
    es_buf_finish(&r.out);
    es_buf_finish(&body);
    es_buf_finish(&q);
    return rc;
}

/* Frees the parts kept by S3.  A failure is logged, not returned: the object
 * never appeared, and a bucket lifecycle rule collects what is left. */
static void abort_upload(s3_writer *w)
{
    es_buf q;
    es_buf_init(&q, 0);
    s3_req r;
    req_init(&r, "DELETE", w->key, S3_ERRBODY_MAX);
    if (upload_query(w, 0, &q) == ES_OK) {
        r.query = es_buf_cstr(&q);
        r.idempotent = true;
        int rc = s3_call(w->c, &r);
        if (rc != ES_OK && rc != ES_ENOTFOUND)
            es_warn(COMP,
                    "%s: multipart upload %.64s not aborted; its parts stay until a "
                    "lifecycle rule removes them",
                    w->key, w->upload_id);
    }
    es_buf_finish(&r.out);
    es_buf_finish(&q);
}

static int s3_write(void *wp, const void *data, size_t len)
{
    s3_writer *w = wp;
    const char *p = data;
    size_t part = w->c->part_size;
    while (w->err == ES_OK && len > 0) {
        /* a full part goes out only once more data comes: an object of
         * exactly one part stays one PUT */
        if (w->buf.len == part) {
            if (!w->upload_id) w->err = create_upload(w);
            if (w->err == ES_OK) w->err = send_part(w);
            if (w->err != ES_OK) break;
        }
        size_t n = part - w->buf.len < len ? part - w->buf.len : len;
        w->err = es_buf_append(&w->buf, p, n);
        p += n;
        len -= n;
    }
    return w->err;
}

static void s3_abort(void *wp)
{
    s3_writer *w = wp;
    if (!w) return;
    join_sender(w); /* no part may land after the abort */
    if (w->upload_id) abort_upload(w);
    writer_free(w);
}

static int s3_commit(void *wp)
{
    s3_writer *w = wp;
    int rc = w->err;
    if (rc == ES_OK && !w->upload_id) {
        s3_req r;
        req_init(&r, "PUT", w->key, S3_ERRBODY_MAX);
        r.content_type = w->ct;
        r.body = w->buf.data;
        r.body_len = w->buf.len;
        r.idempotent = true;
        rc = s3_call(w->c, &r);
        if (rc == ES_ENOTFOUND) {
            es_error(COMP, "PUT %s: HTTP 404 (no bucket %s?)", w->key, w->c->bucket);
            rc = ES_EBACKEND;
        }
        es_buf_finish(&r.out);
    } else if (rc == ES_OK) {
        if (w->buf.len > 0) rc = send_part(w);
        if (rc == ES_OK) rc = join_sender(w);
        if (rc == ES_OK) rc = complete_upload(w);
    }
    if (rc != ES_OK) {
        s3_abort(w);
        return rc;
    }
    writer_free(w);
    return ES_OK;
}

/* ------------------------------------------------------------ reading */

static void info_from(const s3_req *r, es_blob_info *info)
{
    info->size = r->length >= 0 ? r->length : 0;
    info->mtime_ms = r->mtime_ms;
    es_strlcpy(info->content_type, r->ctype[0] ? r->ctype : S3_DEFAULT_CT,
               sizeof info->content_type);
    es_strlcpy(info->etag, r->etag, sizeof info->etag);
}

static int s3_head(void *ctx, const char *key, es_blob_info *info)
{
    s3_ctx *c = ctx;
    if (!es_blob_key_valid(key)) return ES_EINVAL;
    s3_req r;
    req_init(&r, "HEAD", key, S3_ERRBODY_MAX);
    r.idempotent = true;
    int rc = s3_call(c, &r);
    if (rc == ES_OK) {
        memset(info, 0, sizeof *info);
        info_from(&r, info);
    }
    es_buf_finish(&r.out);
    return rc;
}

static int s3_get(void *ctx, const char *key, int64_t offset, int64_t len, es_blob_sink sink,
                  void *arg)
{
    s3_ctx *c = ctx;
    if (!es_blob_key_valid(key)) return ES_EINVAL;
    s3_req r;
    req_init(&r, "GET", key, S3_ERRBODY_MAX);
    /* no Range from 0: S3 refuses bytes=0- on an empty object */
    r.range_from = offset > 0 ? offset : -1;
    if (len > 0) r.range_to = offset + len - 1;
    r.sink = sink;
    r.sink_arg = arg;
    r.idempotent = true;
    int rc = s3_do(c, &r);
    if (rc == ES_OK && r.status == 416) {
        /* S3 answers 416 to a range that starts at the end, which is an empty
         * read here, not an error; past the end it is one. */
        int64_t at = r.range_from;
        es_blob_info info;
        rc = s3_head(c, key, &info);
        if (rc == ES_OK && info.size < at) {
            es_warn(COMP, "read of %s at %lld, past its end (%lld)", key, (long long)at,
                    (long long)info.size);
            rc = ES_EINVAL;
        }
    } else if (rc == ES_OK) {
        rc = status_err(c, &r);
    }
    es_buf_finish(&r.out);
    return rc;
}

static int s3_del(void *ctx, const char *key)
{
    s3_ctx *c = ctx;
    if (!es_blob_key_valid(key)) return ES_EINVAL;
    s3_req r;
    req_init(&r, "DELETE", key, S3_ERRBODY_MAX);
    r.idempotent = true;
    int rc = s3_call(c, &r);
    es_buf_finish(&r.out);
    return rc == ES_ENOTFOUND ? ES_OK : rc;
}

/* ------------------------------------------------------------ listing */

typedef struct s3_entry {
    char *key;
    es_blob_info info;
} s3_entry;

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const s3_entry *)a)->key, ((const s3_entry *)b)->key);
}

/* One page of ListObjectsV2: its entries (sorted), and the next token or NULL. */
static int parse_page(const es_buf *xml, s3_entry **out, size_t *count, char **next)
{
    *out = NULL;
    *count = 0;
    *next = NULL;
    xmlDoc *doc = xml_parse(xml);
    xmlNode *root = doc ? xmlDocGetRootElement(doc) : NULL;
    if (!root || strcmp((const char *)root->name, "ListBucketResult") != 0) {
        xmlFreeDoc(doc);
        es_error(COMP, "list: the answer is no ListBucketResult");
        return ES_EBACKEND;
    }
    size_t n = 0;
    for (xmlNode *k = root->children; k; k = k->next)
        if (k->type == XML_ELEMENT_NODE && strcmp((const char *)k->name, "Contents") == 0) n++;
    s3_entry *v = n ? calloc(n, sizeof *v) : NULL;
    int rc = n && !v ? ES_ENOMEM : ES_OK;
    size_t i = 0;
    char key[S3_KEY_MAX + 2], num[32], when[64];
    for (xmlNode *k = root->children; k && rc == ES_OK; k = k->next) {
        if (k->type != XML_ELEMENT_NODE || strcmp((const char *)k->name, "Contents") != 0) continue;
        /* a key esteira could not have written (too long, odd characters) is skipped */
        if (!xml_text(k, "Key", key, sizeof key) || !es_blob_key_valid(key)) continue;
        s3_entry *e = &v[i];
        if (!(e->key = strdup(key))) {
            rc = ES_ENOMEM;
            break;
        }
        i++;
        if (xml_text(k, "Size", num, sizeof num)) es_parse_i64(num, 0, INT64_MAX, &e->info.size);
        if (xml_text(k, "LastModified", when, sizeof when))
            es_time_parse_iso(when, &e->info.mtime_ms);
        xml_text(k, "ETag", e->info.etag, sizeof e->info.etag);
    }
    char truncated[8];
    xml_text(root, "IsTruncated", truncated, sizeof truncated);
    xmlNode *tok = xml_child(root, "NextContinuationToken");
    if (rc == ES_OK && strcmp(truncated, "true") == 0) {
        xmlChar *t = tok ? xmlNodeGetContent(tok) : NULL;
        if (!t || !*t) {
            es_error(COMP, "list: a truncated answer without a NextContinuationToken");
            rc = ES_EBACKEND;
        } else if (!(*next = strdup((const char *)t))) {
            rc = ES_ENOMEM;
        }
        xmlFree(t);
    }
    xmlFreeDoc(doc);
    if (rc != ES_OK) {
        for (size_t j = 0; j < i; j++)
            free(v[j].key);
        free(v);
        return rc;
    }
    /* S3 lists in byte order; a server that walks directories (s3rver lists
     * "a/b" before "a-c") does not.  Sorting the page, at most 1000 keys, keeps
     * the contract's order on such servers for listings of one page. */
    if (i > 1) qsort(v, i, sizeof *v, entry_cmp);
    *out = v;
    *count = i;
    return ES_OK;
}

/* Content types are not listed by S3 (head() has them). */
static int s3_list(void *ctx, const char *prefix, es_blob_each each, void *arg)
{
    s3_ctx *c = ctx;
    char *token = NULL, *eprefix = es_urlencode(prefix, 0);
    char last[S3_KEY_MAX + 2] = "";
    bool warned = false;
    size_t plen = strlen(prefix);
    if (!eprefix) return ES_ENOMEM;
    int rc;
    do {
        es_buf q;
        es_buf_init(&q, 0);
        s3_req r;
        req_init(&r, "GET", NULL, S3_XML_MAX);
        r.idempotent = true;
        char *etoken = token ? es_urlencode(token, 0) : NULL;
        rc = token && !etoken ? ES_ENOMEM
                              : es_buf_printf(&q, "%s%s%slist-type=2&prefix=%s",
                                              etoken ? "continuation-token=" : "",
                                              etoken ? etoken : "", etoken ? "&" : "", eprefix);
        free(etoken);
        free(token);
        token = NULL;
        if (rc == ES_OK) {
            r.query = es_buf_cstr(&q);
            rc = s3_call(c, &r);
            if (rc == ES_ENOTFOUND) {
                es_error(COMP, "list: HTTP 404 (no bucket %s?)", c->bucket);
                rc = ES_EBACKEND;
            }
        }
        s3_entry *v = NULL;
        size_t n = 0;
        if (rc == ES_OK) rc = parse_page(&r.out, &v, &n, &token);
        for (size_t i = 0; i < n; i++) {
            if (rc == ES_OK && strncmp(v[i].key, prefix, plen) == 0) {
                if (!warned && last[0] && strcmp(v[i].key, last) <= 0) {
                    es_warn(COMP, "list: the server's pages are out of order");
                    warned = true;
                }
                es_strlcpy(last, v[i].key, sizeof last);
                rc = each(arg, v[i].key, &v[i].info);
            }
            free(v[i].key);
        }
        free(v);
        es_buf_finish(&r.out);
        es_buf_finish(&q);
    } while (rc == ES_OK && token);
    free(token);
    free(eprefix);
    return rc;
}

/* ------------------------------------------------------------ presigning */

/* SigV4 query signing.  libcurl signs only the requests it sends itself and
 * has no call that signs a URL for someone else to use, so it is done here,
 * with OpenSSL's HMAC-SHA256 (es_hmac_sha256). */

/* A header value as SigV4 canonicalises it: trimmed, runs of spaces made one. */
static void trimall(const char *in, char *out, size_t size)
{
    size_t n = 0;
    while (*in == ' ')
        in++;
    for (; *in && n + 1 < size; in++) {
        if (*in == ' ' && (in[1] == ' ' || in[1] == '\0')) continue;
        out[n++] = *in;
    }
    out[n] = '\0';
}

static void hmac(const unsigned char *key, size_t klen, const char *msg, unsigned char out[32])
{
    es_hmac_sha256(key, klen, msg, strlen(msg), out);
}

int es_s3_presign_at(void *ctx, const char *method, const char *key, const char *content_type,
                     int64_t expires_s, int64_t now_s, char **url)
{
    s3_ctx *c = ctx;
    *url = NULL;
    if (!es_blob_key_valid(key)) {
        es_warn(COMP, "invalid blob key '%.80s'", key ? key : "(null)");
        return ES_EINVAL;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "PUT") != 0 && strcmp(method, "HEAD") != 0) {
        es_warn(COMP, "cannot presign method %.16s", method);
        return ES_EINVAL;
    }
    if (expires_s <= 0 || expires_s > S3_PRESIGN_MAX_S) {
        es_warn(COMP, "presigned URL lifetime %lld s out of range (1..%d)", (long long)expires_s,
                S3_PRESIGN_MAX_S);
        return ES_EINVAL;
    }
    if (content_type && !ct_ok(content_type)) {
        es_warn(COMP, "invalid content type for a presigned URL");
        return ES_EINVAL;
    }
    /* Only a PUT sends a body, so only a PUT is bound to its type. */
    bool bind_ct = strcmp(method, "PUT") == 0 && content_type && *content_type;
    const char *signed_headers = bind_ct ? "content-type;host" : "host";
    char ct[S3_CT_MAX] = "";
    if (bind_ct) trimall(content_type, ct, sizeof ct);

    char date[16], stamp[32], scope[128];
    time_t t = (time_t)now_s;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) return ES_EINVAL;
    strftime(date, sizeof date, "%Y%m%d", &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
    snprintf(scope, sizeof scope, "%s/%s/s3/aws4_request", date, c->region);

    es_buf cred, q, path, canon, out;
    es_buf_init(&cred, 0);
    es_buf_init(&q, 0);
    es_buf_init(&path, 0);
    es_buf_init(&canon, 0);
    es_buf_init(&out, 0);
    char *ecred = NULL, *etok = NULL;
    int rc = es_buf_printf(&cred, "%s/%s", c->access_key, scope);
    if (rc != ES_OK) goto finish;
    ecred = es_urlencode(es_buf_cstr(&cred), 0);
    etok = c->token ? es_urlencode(c->token, 0) : NULL;
    rc = ES_ENOMEM;
    if (!ecred || (c->token && !etok)) goto finish;
    /* the parameters in byte order, as the canonical request wants them */
    rc = es_buf_printf(&q,
                       "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=%s&X-Amz-Date=%s"
                       "&X-Amz-Expires=%lld%s%s&X-Amz-SignedHeaders=%s",
                       ecred, stamp, (long long)expires_s, etok ? "&X-Amz-Security-Token=" : "",
                       etok ? etok : "", bind_ct ? "content-type%3Bhost" : "host");
    if (rc == ES_OK) rc = path_of(c, key, &path);
    if (rc == ES_OK)
        rc = es_buf_printf(&canon, "%s\n%s\n%s\n", method, es_buf_cstr(&path), es_buf_cstr(&q));
    if (rc == ES_OK && bind_ct) rc = es_buf_printf(&canon, "content-type:%s\n", ct);
    if (rc == ES_OK)
        rc = es_buf_printf(&canon, "host:%s\n\n%s\nUNSIGNED-PAYLOAD", c->host, signed_headers);
    if (rc != ES_OK) goto finish;

    char canon_hash[65];
    es_sha256_hex(canon.data, canon.len, canon_hash);
    char sts[256];
    snprintf(sts, sizeof sts, "AWS4-HMAC-SHA256\n%s\n%s\n%s", stamp, scope, canon_hash);

    /* the signing key: HMAC chain from "AWS4" + secret over date, region, service */
    size_t slen = strlen(c->secret_key);
    unsigned char *k0 = malloc(slen + 4), kd[32], kr[32], ks[32], kk[32], sig[32];
    if (!k0) {
        rc = ES_ENOMEM;
        goto finish;
    }
    memcpy(k0, "AWS4", 4);
    memcpy(k0 + 4, c->secret_key, slen);
    hmac(k0, slen + 4, date, kd);
    hmac(kd, 32, c->region, kr);
    hmac(kr, 32, "s3", ks);
    hmac(ks, 32, "aws4_request", kk);
    hmac(kk, 32, sts, sig);
    char sighex[65];
    es_hex(sig, sizeof sig, sighex);
    explicit_bzero(k0, slen + 4);
    explicit_bzero(kd, sizeof kd);
    explicit_bzero(kr, sizeof kr);
    explicit_bzero(ks, sizeof ks);
    explicit_bzero(kk, sizeof kk);
    free(k0);

    rc = es_buf_printf(&out, "%s%s?%s&X-Amz-Signature=%s", c->base, es_buf_cstr(&path),
                       es_buf_cstr(&q), sighex);
    if (rc == ES_OK && !(*url = es_buf_steal(&out))) rc = ES_ENOMEM;
finish:
    free(ecred);
    free(etok);
    es_buf_finish(&cred);
    es_buf_finish(&q);
    es_buf_finish(&path);
    es_buf_finish(&canon);
    es_buf_finish(&out);
    return rc;
}

static int s3_presign(void *ctx, const char *method, const char *key, const char *content_type,
                      int64_t expires_s, char **url)
{
    return es_s3_presign_at(ctx, method, key, content_type, expires_s, es_now_ms() / 1000, url);
}

static int s3_ping(void *ctx)
{
    s3_ctx *c = ctx;
    s3_req r;
    req_init(&r, "HEAD", NULL, S3_ERRBODY_MAX);
    r.idempotent = true;
    int rc = s3_call(c, &r);
    if (rc == ES_ENOTFOUND) es_error(COMP, "no bucket %s at %s", c->bucket, c->base);
    es_buf_finish(&r.out);
    return rc;
}

const es_blob_ops es_blob_s3 = {
    .name = "s3",
    .scheme = "s3://",
    .open = s3_open,
    .close = s3_close,
    .writer_open = s3_writer_open,
    .write = s3_write,
    .commit = s3_commit,
    .abort = s3_abort,
    .get = s3_get,
    .head = s3_head,
    .del = s3_del,
    .list = s3_list,
    .presign = s3_presign,
    .ping = s3_ping,
};
