/* test_s3_sign.c - the S3 blob backend beyond its contract
 * (tests/contract/test_blob.c): the URLs it builds, its presigned URLs
 * compared with botocore's for the same instant and then used with plain curl,
 * retries, keep-alive and resumed reads against a scripted HTTP server, and
 * multipart uploads.
 *
 * The tests that need a real server use the first s3:// URL in
 * ESTEIRA_TEST_BLOB_URLS (scripts/services starts one) and are skipped
 * without it; those that need botocore are skipped without /usr/bin/python3
 * and python3-botocore. */
#include "testutil.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "backends/blob/blob_s3.h"
#include "esteira/blob.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/util.h"

#define NOW 1700000000 /* 2023-11-14T22:13:20Z */
#define AK  "AKIDEXAMPLE"
#define SK  "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

static char g_live[512];          /* an s3:// URL of a running server, or "" */
static char g_run[64];            /* a key prefix unique to this run */
static char *g_ak, *g_sk, *g_tok; /* the environment's credentials, for the live tests */

static void set_env(const char *name, const char *value)
{
    if (value)
        setenv(name, value, 1);
    else
        unsetenv(name);
}

static void use_creds(const char *ak, const char *sk, const char *tok)
{
    set_env("AWS_ACCESS_KEY_ID", ak);
    set_env("AWS_SECRET_ACCESS_KEY", sk);
    set_env("AWS_SESSION_TOKEN", tok);
}

static void *open_ctx(const char *url)
{
    void *ctx = NULL;
    assert_int_equal(es_blob_s3.open(url, NULL, &ctx), ES_OK);
    assert_non_null(ctx);
    return ctx;
}

/* Runs argv; its standard output goes to out (truncated, NUL-terminated).
 * Returns its exit status, or -1. */
static int run(char *const argv[], char *out, size_t size)
{
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        int dn = open("/dev/null", O_WRONLY);
        if (dn >= 0) dup2(dn, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    size_t n = 0;
    char junk[4096];
    for (;;) {
        char *dst = n + 1 < size ? out + n : junk;
        size_t room = n + 1 < size ? size - 1 - n : sizeof junk;
        ssize_t r = read(fds[0], dst, room);
        if (r <= 0) break;
        if (dst != junk) n += (size_t)r;
    }
    out[n] = '\0';
    close(fds[0]);
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A URL with its query parameters sorted, so that two signers' URLs compare. */
static void sorted_url(const char *url, char *out, size_t size)
{
    const char *q = strchr(url, '?');
    assert_non_null(q);
    char *copy = strdup(q + 1), *params[32];
    int n = 0;
    for (char *save = NULL, *t = strtok_r(copy, "&", &save); t && n < 32;
         t = strtok_r(NULL, "&", &save))
        params[n++] = t;
    for (int i = 1; i < n; i++) /* insertion sort: a dozen items */
        for (int j = i; j > 0 && strcmp(params[j - 1], params[j]) > 0; j--) {
            char *t = params[j];
            params[j] = params[j - 1];
            params[j - 1] = t;
        }
    size_t len = snprintf(out, size, "%.*s?", (int)(q - url), url);
    for (int i = 0; i < n && len < size; i++)
        len += snprintf(out + len, size - len, "%s%s", i ? "&" : "", params[i]);
    free(copy);
}

/* ------------------------------------------------------------ URLs */

static void assert_presign_prefix(const char *s3url, const char *want)
{
    void *ctx = open_ctx(s3url);
    char *url = NULL;
    assert_int_equal(es_s3_presign_at(ctx, "GET", "dir/k.txt", NULL, 60, NOW, &url), ES_OK);
    assert_int_equal(strncmp(url, want, strlen(want)), 0);
    assert_int_equal(url[strlen(want)], '?');
    free(url);
    es_blob_s3.close(ctx);
}

static void test_url_forms(void **state)
{
    (void)state;
    use_creds(AK, SK, NULL);
    set_env("AWS_REGION", NULL);
    set_env("AWS_DEFAULT_REGION", NULL);
    /* AWS: virtual hosts, in the region asked for, us-east-1 by default */
    assert_presign_prefix("s3://my-bucket",
                          "https://my-bucket.s3.us-east-1.amazonaws.com/dir/k.txt");
    assert_presign_prefix("s3://my-bucket/?region=eu-west-1",
                          "https://my-bucket.s3.eu-west-1.amazonaws.com/dir/k.txt");
    set_env("AWS_REGION", "sa-east-1");
    assert_presign_prefix("s3://my-bucket",
                          "https://my-bucket.s3.sa-east-1.amazonaws.com/dir/k.txt");
    set_env("AWS_REGION", NULL);
    /* a dotted bucket goes in the path: the certificate's wildcard would not cover it */
    assert_presign_prefix("s3://my.bucket",
                          "https://s3.us-east-1.amazonaws.com/my.bucket/dir/k.txt");
    /* an endpoint: path style, unless asked otherwise; a scheme's own port is dropped */
    assert_presign_prefix("s3://app?endpoint=http://127.0.0.1:49000&region=us-east-1",
                          "http://127.0.0.1:49000/app/dir/k.txt");
    assert_presign_prefix("s3://app?endpoint=http%3A%2F%2Fminio.local%3A9000%2F",
                          "http://minio.local:9000/app/dir/k.txt");
    assert_presign_prefix("s3://app?endpoint=http://minio.local:9000&path_style=0",
                          "http://app.minio.local:9000/dir/k.txt");
    assert_presign_prefix("s3://app?endpoint=https://s3.example.com:443",
                          "https://s3.example.com/app/dir/k.txt");
    assert_presign_prefix("s3://app?endpoint=http://[::1]:9000", "http://[::1]:9000/app/dir/k.txt");

    static const char *const bad[] = {
        "s3://",
        "s3://app/some/prefix",
        "s3://bad bucket",
        "s3://app?endpoint=ftp://host",
        "s3://app?endpoint=http://host/path",
        "s3://app?endpoint=http://user@host",
        "s3://app?endpoint=http://host:0",
        "s3://app?endpoint=http://host:99999",
        "s3://app?endpoint=http://:9000",
        "s3://app?region=EU_WEST",
        "s3://app?nosuch=1",
        "s3://app?part_size=1MB",
        "s3://app?part_size=2GB",
        "s3://app?path_style=maybe",
        "s3://app?endpoint=%zz",
    };
    for (size_t i = 0; i < ES_ARRAY_LEN(bad); i++) {
        es_blob *b = (es_blob *)&b;
        assert_int_equal(es_blob_open(bad[i], NULL, &b), ES_EINVAL);
        assert_null(b);
    }
    /* no credentials: refused at open, not at the first request */
    use_creds(NULL, SK, NULL);
    es_blob *b = NULL;
    assert_int_equal(es_blob_open("s3://app", NULL, &b), ES_EINVAL);
    use_creds(AK, NULL, NULL);
    assert_int_equal(es_blob_open("s3://app", NULL, &b), ES_EINVAL);
    use_creds(AK, SK, NULL);
    assert_int_equal(es_blob_open("s3://app?part_size=16MB&path_style=1", NULL, &b), ES_OK);
    assert_string_equal(es_blob_name(b), "s3");
    es_blob_close(b);
}

/* ------------------------------------------------------------ presigning */

/* AWS's own published example of a presigned GET (S3 API reference,
 * "Authenticating Requests: Using Query Parameters"). */
static void test_presign_aws_example(void **state)
{
    (void)state;
    use_creds("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", NULL);
    void *ctx = open_ctx("s3://examplebucket?endpoint=https://s3.amazonaws.com&path_style=0"
                         "&region=us-east-1");
    char *url = NULL;
    assert_int_equal(es_s3_presign_at(ctx, "GET", "test.txt", NULL, 86400, 1369353600, &url),
                     ES_OK);
    assert_string_equal(
        url, "https://examplebucket.s3.amazonaws.com/test.txt"
             "?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
             "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
    free(url);
    es_blob_s3.close(ctx);
}

/* Signs each group of nine arguments with botocore; one URL a line, its
 * query sorted. */
static const char botocore_py[] =
    "import sys, datetime\n"
    "from unittest import mock\n"
    "from urllib.parse import urlsplit, parse_qsl, quote\n"
    "from botocore.auth import S3SigV4QueryAuth\n"
    "from botocore.awsrequest import AWSRequest\n"
    "from botocore.credentials import Credentials\n"
    "enc = lambda s: quote(s, safe='-_.~')\n"
    "args = sys.argv[1:]\n"
    "for i in range(0, len(args), 9):\n"
    "    method, url, ct, expires, now, region, ak, sk, tok = args[i:i + 9]\n"
    "    req = AWSRequest(method=method, url=url, headers={'Content-Type': ct} if ct else {})\n"
    "    auth = S3SigV4QueryAuth(Credentials(ak, sk, tok or None), 's3', region,\n"
    "                            expires=int(expires))\n"
    "    with mock.patch('botocore.auth.datetime') as dt:\n"
    "        dt.datetime.utcnow.return_value = datetime.datetime.utcfromtimestamp(int(now))\n"
    "        auth.add_auth(req)\n"
    "    u = urlsplit(req.url)\n"
    "    q = sorted(parse_qsl(u.query, keep_blank_values=True))\n"
    "    print(u.scheme + '://' + u.netloc + u.path + '?' +\n"
    "          '&'.join(enc(k) + '=' + enc(v) for k, v in q))\n";

static bool have_botocore(void)
{
    char out[64];
    char *argv[] = {"/usr/bin/python3", "-c", "import botocore.auth; print('ok')", NULL};
    return run(argv, out, sizeof out) == 0 && strncmp(out, "ok", 2) == 0;
}

typedef struct sign_case {
    const char *s3url, *region, *token;
    const char *method, *key, *ct;
    int64_t expires;
    const char *base; /* what the URL must start with, and what botocore signs */
} sign_case;

static void test_presign_matches_botocore(void **state)
{
    (void)state;
    if (!have_botocore()) skip();
    static const sign_case cases[] = {
        {"s3://app?endpoint=http://127.0.0.1:49000&region=us-east-1", "us-east-1", NULL, "GET",
         "dir/a.txt", NULL, 300, "http://127.0.0.1:49000/app/dir/a.txt"},
        {"s3://app?endpoint=http://127.0.0.1:49000&region=us-east-1", "us-east-1", NULL, "PUT",
         "uploads/0192/photo-1.png", "image/png", 900,
         "http://127.0.0.1:49000/app/uploads/0192/photo-1.png"},
        /* spaces inside a content type are signed as SigV4 trims them */
        {"s3://app?endpoint=http://127.0.0.1:49000&region=us-east-1", "us-east-1", NULL, "PUT",
         "a/b.csv", "text/csv;   charset=utf-8", 60, "http://127.0.0.1:49000/app/a/b.csv"},
        /* temporary credentials: the token is signed too, with its '/', '+' and '=' */
        {"s3://reports?region=eu-west-1", "eu-west-1", "FwoGZXIvYXdzE+/Tok3n//x==", "PUT",
         "reports/r-1.pdf", "application/pdf", 604800,
         "https://reports.s3.eu-west-1.amazonaws.com/reports/r-1.pdf"},
        {"s3://app?endpoint=https://s3.example.com:443&path_style=0", "us-east-1", NULL, "HEAD",
         "x", NULL, 1, "https://app.s3.example.com/x"},
        /* a GET is not bound to a content type, whatever is passed */
        {"s3://app?endpoint=http://minio:9000&region=ap-south-1", "ap-south-1", NULL, "GET",
         "k_1-2.bin", "image/png", 3600, "http://minio:9000/app/k_1-2.bin"},
    };
    enum { N = ES_ARRAY_LEN(cases) };
    char *mine[N], nums[N][2][32], theirs[16384];
    char *argv[3 + 9 * N + 1];
    int argc = 0;
    argv[argc++] = "/usr/bin/python3";
    argv[argc++] = "-c";
    argv[argc++] = (char *)botocore_py;
    for (size_t i = 0; i < N; i++) {
        const sign_case *t = &cases[i];
        int64_t now = NOW + (int64_t)i;
        use_creds(AK, SK, t->token);
        void *ctx = open_ctx(t->s3url);
        char *url = NULL;
        assert_int_equal(es_s3_presign_at(ctx, t->method, t->key, t->ct, t->expires, now, &url),
                         ES_OK);
        es_blob_s3.close(ctx);
        assert_int_equal(strncmp(url, t->base, strlen(t->base)), 0);
        bool bound = strcmp(t->method, "PUT") == 0;
        assert_non_null(strstr(url, bound ? "X-Amz-SignedHeaders=content-type%3Bhost"
                                          : "X-Amz-SignedHeaders=host"));
        mine[i] = malloc(4096);
        sorted_url(url, mine[i], 4096);
        free(url);
        snprintf(nums[i][0], sizeof nums[i][0], "%lld", (long long)t->expires);
        snprintf(nums[i][1], sizeof nums[i][1], "%lld", (long long)now);
        argv[argc++] = (char *)t->method;
        argv[argc++] = (char *)t->base;
        argv[argc++] = (char *)(bound && t->ct ? t->ct : "");
        argv[argc++] = nums[i][0];
        argv[argc++] = nums[i][1];
        argv[argc++] = (char *)t->region;
        argv[argc++] = AK;
        argv[argc++] = SK;
        argv[argc++] = (char *)(t->token ? t->token : "");
    }
    argv[argc] = NULL;
    assert_int_equal(run(argv, theirs, sizeof theirs), 0);
    char *line = theirs;
    for (size_t i = 0; i < N; i++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = '\0';
        assert_string_equal(mine[i], line);
        free(mine[i]);
        line = nl + 1;
    }
}

static void test_presign_refuses(void **state)
{
    (void)state;
    use_creds(AK, SK, NULL);
    es_blob *b;
    assert_int_equal(es_blob_open("s3://app?endpoint=http://127.0.0.1:1", NULL, &b), ES_OK);
    char *url = (char *)"sentinel";
    assert_int_equal(es_blob_presign(b, "DELETE", "k", NULL, 60, &url), ES_EINVAL);
    assert_null(url);
    assert_int_equal(es_blob_presign(b, "GET", "k", NULL, 0, &url), ES_EINVAL);
    assert_int_equal(es_blob_presign(b, "GET", "k", NULL, 7 * 24 * 3600 + 1, &url), ES_EINVAL);
    assert_int_equal(es_blob_presign(b, "PUT", "k", "text/plain\r\nX-Evil: 1", 60, &url),
                     ES_EINVAL);
    assert_int_equal(es_blob_presign(b, "PUT", "k", "caf\xc3\xa9/x", 60, &url), ES_EINVAL);
    assert_int_equal(es_blob_presign(b, "GET", "../k", NULL, 60, &url), ES_EINVAL);
    assert_null(url);
    /* the longest lifetime SigV4 allows is fine, and costs no request */
    assert_int_equal(es_blob_presign(b, "GET", "k", NULL, 7 * 24 * 3600, &url), ES_OK);
    assert_non_null(strstr(url, "X-Amz-Expires=604800&"));
    free(url);
    es_blob_close(b);
}

/* ------------------------------------------------------------ a scripted server */

typedef struct fake {
    int fd, port;
    const char *const *script; /* answers in order, NULL-terminated */
    int next;
    int conns; /* connections accepted */
    char reqs[16][1024];
    int nreqs;
    volatile int stop;
    pthread_t thread;
} fake;

static void *fake_main(void *arg)
{
    fake *f = arg;
    while (!f->stop) {
        struct pollfd p = {.fd = f->fd, .events = POLLIN};
        if (poll(&p, 1, 20) <= 0) continue;
        int c = accept(f->fd, NULL, NULL);
        if (c < 0) continue;
        f->conns++;
        for (;;) {
            char buf[4096];
            size_t n = 0;
            buf[0] = '\0';
            while (!strstr(buf, "\r\n\r\n") && n < sizeof buf - 1) {
                ssize_t r = recv(c, buf + n, sizeof buf - 1 - n, 0);
                if (r <= 0) goto next_conn;
                n += (size_t)r;
                buf[n] = '\0';
            }
            if (f->nreqs < 16) snprintf(f->reqs[f->nreqs], sizeof f->reqs[0], "%s", buf);
            f->nreqs++;
            const char *resp = f->script[f->next] ? f->script[f->next++]
                                                  : "HTTP/1.1 500 Out Of Script\r\nContent-Length: "
                                                    "0\r\nConnection: close\r\n\r\n";
            if (send(c, resp, strlen(resp), MSG_NOSIGNAL) < 0) break;
            if (strstr(resp, "Connection: close")) break;
        }
    next_conn:
        close(c);
    }
    return NULL;
}

static void fake_start(fake *f, const char *const *script)
{
    memset(f, 0, sizeof *f);
    f->script = script;
    f->fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof a;
    assert_int_equal(bind(f->fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(f->fd, 8), 0);
    assert_int_equal(getsockname(f->fd, (struct sockaddr *)&a, &alen), 0);
    f->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(fake *f)
{
    f->stop = 1;
    pthread_join(f->thread, NULL);
    close(f->fd);
}

static es_blob *fake_blob(const fake *f)
{
    use_creds(AK, SK, NULL);
    char url[128];
    snprintf(url, sizeof url, "s3://app?endpoint=http://127.0.0.1:%d", f->port);
    es_blob *b = NULL;
    assert_int_equal(es_blob_open(url, NULL, &b), ES_OK);
    return b;
}

#define OK_EMPTY  "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
#define BUSY      "HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n"
#define NOT_FOUND "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

static void test_retries_and_keepalive(void **state)
{
    (void)state;
    static const char *const script[] = {BUSY, BUSY, OK_EMPTY, OK_EMPTY, OK_EMPTY, OK_EMPTY,
                                         BUSY, BUSY, BUSY,     BUSY,     NULL};
    fake f;
    fake_start(&f, script);
    es_blob *b = fake_blob(&f);
    /* two 503s, then the answer */
    assert_int_equal(es_blob_ping(b), ES_OK);
    assert_int_equal(f.nreqs, 3);
    assert_int_equal(strncmp(f.reqs[0], "HEAD /app HTTP/1.1\r\n", 20), 0);
    /* every request is signed and carries the payload hash S3 requires */
    for (int i = 0; i < 3; i++) {
        assert_non_null(strstr(f.reqs[i], "Authorization: AWS4-HMAC-SHA256 Credential=" AK "/"));
        assert_non_null(strstr(f.reqs[i], "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92"
                                          "427ae41e4649b934ca495991b7852b855"));
        assert_null(strstr(f.reqs[i], SK));
    }
    /* the handle goes back to the pool and its connection is kept */
    for (int i = 0; i < 3; i++)
        assert_int_equal(es_blob_ping(b), ES_OK);
    assert_int_equal(f.nreqs, 6);
    assert_int_equal(f.conns, 1);
    /* four 503s: given up after three retries */
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_blob_ping(b), ES_EBACKEND);
    assert_int_equal(f.nreqs, 10);
    assert_true(es_mono_ms() - t0 >= 100 + 300 + 900);
    es_blob_close(b);
    fake_stop(&f);
}

/* A part fails while the next one fills (parts go out on a thread of their
 * own): the failure still reaches the writer, at the next part or at commit,
 * and the upload is aborted; nothing is completed. */
static void test_part_failure_in_flight(void **state)
{
    (void)state;
    static const char *const script[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 87\r\nConnection: close\r\n\r\n"
        "<InitiateMultipartUploadResult><UploadId>u-1</UploadId></InitiateMultipartUploadResult>",
        /* part 1: refused before its body (curl asks Expect: 100-continue) */
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n", /* the abort */
        NULL};
    fake f; /* one connection at a time: every answer closes it */
    fake_start(&f, script);
    use_creds(AK, SK, NULL);
    char url[128];
    snprintf(url, sizeof url, "s3://app?endpoint=http://127.0.0.1:%d&part_size=5MB", f.port);
    es_blob *b = NULL;
    assert_int_equal(es_blob_open(url, NULL, &b), ES_OK);
    es_blob_writer *w;
    assert_int_equal(es_blob_writer_open(b, "k/big.bin", NULL, &w), ES_OK);
    char *chunk = calloc(1, 1024 * 1024);
    int rc = ES_OK;
    for (int i = 0; i < 11 && rc == ES_OK; i++) /* part 1 goes at 5 MB + 1, part 2 at 10 MB + 1 */
        rc = es_blob_write(w, chunk, 1024 * 1024);
    if (rc == ES_OK)
        rc = es_blob_commit(w);
    else
        es_blob_abort(w);
    assert_int_equal(rc, ES_EAUTH);
    assert_int_equal(f.nreqs, 3);
    assert_int_equal(strncmp(f.reqs[0], "POST /app/k/big.bin?uploads", 27), 0);
    assert_int_equal(strncmp(f.reqs[1], "PUT /app/k/big.bin?partNumber=1&uploadId=u-1 ", 45), 0);
    assert_int_equal(strncmp(f.reqs[2], "DELETE /app/k/big.bin?uploadId=u-1 ", 35), 0);
    free(chunk);
    es_blob_close(b);
    fake_stop(&f);
}

typedef struct collect {
    char data[64];
    size_t len;
} collect;

static int sink(void *arg, const void *data, size_t len)
{
    collect *c = arg;
    if (c->len + len > sizeof c->data) return 99;
    memcpy(c->data + c->len, data, len);
    c->len += len;
    return 0;
}

static void test_get_resumes_and_ranges(void **state)
{
    (void)state;
    static const char *const script[] = {
        /* cut after 5 of 10 bytes */
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\nETag: \"e1\"\r\nConnection: close\r\n\r\n01234",
        "HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nETag: \"e1\"\r\n\r\n56789",
        /* a server that ignores Range */
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
        /* a range at the end: 416, then a HEAD says how long the object is */
        "HTTP/1.1 416 Requested Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        "HTTP/1.1 416 Requested Range Not Satisfiable\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        /* not there: 404 for a read, fine for a delete */
        NOT_FOUND,
        NOT_FOUND,
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        /* the object was replaced while a read resumed */
        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nETag: \"e1\"\r\nConnection: close\r\n\r\nab",
        "HTTP/1.1 412 Precondition Failed\r\nContent-Length: 0\r\n\r\n",
        NULL,
    };
    fake f;
    fake_start(&f, script);
    es_blob *b = fake_blob(&f);
    collect c = {0};
    assert_int_equal(es_blob_get(b, "k", 0, sink, &c), ES_OK);
    assert_int_equal(c.len, 10);
    assert_memory_equal(c.data, "0123456789", 10);
    assert_int_equal(f.nreqs, 2);
    assert_null(strstr(f.reqs[0], "Range:"));
    assert_non_null(strstr(f.reqs[1], "Range: bytes=5-\r\n"));
    assert_non_null(strstr(f.reqs[1], "If-Match: \"e1\"\r\n"));

    memset(&c, 0, sizeof c);
    assert_int_equal(es_blob_get(b, "k", 3, sink, &c), ES_OK);
    assert_int_equal(c.len, 7);
    assert_memory_equal(c.data, "3456789", 7);
    assert_non_null(strstr(f.reqs[2], "Range: bytes=3-\r\n"));

    memset(&c, 0, sizeof c);
    assert_int_equal(es_blob_get(b, "k", 10, sink, &c), ES_OK);
    assert_int_equal(c.len, 0);
    assert_int_equal(es_blob_get(b, "k", 11, sink, &c), ES_EINVAL);

    es_blob_info info;
    assert_int_equal(es_blob_get(b, "k", 0, sink, &c), ES_ENOTFOUND);
    assert_int_equal(es_blob_head(b, "k", &info), ES_ENOTFOUND);
    assert_int_equal(es_blob_del(b, "k"), ES_OK);
    assert_non_null(strstr(f.reqs[9], "DELETE /app/k HTTP/1.1\r\n"));

    memset(&c, 0, sizeof c);
    assert_int_equal(es_blob_get(b, "k", 0, sink, &c), ES_ECONFLICT);
    assert_int_equal(f.nreqs, 12);
    es_blob_close(b);
    fake_stop(&f);
}

static void test_unreachable(void **state)
{
    (void)state;
    use_creds(AK, SK, NULL);
    es_blob *b;
    /* port 1: refused at once; retried, then an error, not a hang */
    assert_int_equal(es_blob_open("s3://app?endpoint=http://127.0.0.1:1", NULL, &b), ES_OK);
    int64_t t0 = es_mono_ms();
    assert_int_equal(es_blob_ping(b), ES_EBACKEND);
    collect c = {0};
    assert_int_equal(es_blob_get(b, "k", 0, sink, &c), ES_EBACKEND);
    assert_true(es_mono_ms() - t0 < 10000);
    es_blob_close(b);
}

/* ------------------------------------------------------------ against a server */

static void live_creds(void)
{
    use_creds(g_ak, g_sk, g_tok);
}

/* curl METHOD url [-H Content-Type: ct] [--data-binary @file] -o out: the HTTP status. */
static int curl_status(const char *method, const char *url, const char *ct, const char *upload,
                       const char *save)
{
    char hdr[256], data[600], status[16];
    char *argv[16];
    int n = 0;
    argv[n++] = "curl";
    argv[n++] = "-sS";
    argv[n++] = "-X";
    argv[n++] = (char *)method;
    argv[n++] = "-o";
    argv[n++] = (char *)(save ? save : "/dev/null");
    argv[n++] = "-w";
    argv[n++] = "%{http_code}";
    if (ct) {
        snprintf(hdr, sizeof hdr, "Content-Type: %s", ct);
        argv[n++] = "-H";
        argv[n++] = hdr;
    }
    if (upload) {
        snprintf(data, sizeof data, "@%s", upload);
        argv[n++] = "--data-binary";
        argv[n++] = data;
    }
    argv[n++] = (char *)url;
    argv[n] = NULL;
    if (run(argv, status, sizeof status) != 0) return -1;
    return (int)strtol(status, NULL, 10);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    char *buf = malloc((1 << 20) + 1);
    *len = fread(buf, 1, 1 << 20, fp);
    buf[*len] = '\0';
    fclose(fp);
    return buf;
}

static void test_presigned_with_curl(void **state)
{
    (void)state;
    if (!g_live[0]) skip();
    live_creds();
    es_blob *b;
    assert_int_equal(es_blob_open(g_live, NULL, &b), ES_OK);
    void *ctx = open_ctx(g_live);
    char *dir = test_tmpdir("s3presign");
    char body[600], got[600], other[600];
    snprintf(body, sizeof body, "%s/body.png", dir);
    snprintf(got, sizeof got, "%s/got", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    FILE *fp = fopen(body, "wb");
    assert_non_null(fp);
    for (int i = 0; i < 3000; i++)
        fputc((i * 7) & 0xff, fp);
    fclose(fp);
    fp = fopen(other, "wb");
    fputs("not the picture", fp);
    fclose(fp);

    char key[128], key2[128];
    snprintf(key, sizeof key, "%s/presign/photo.png", g_run);
    snprintf(key2, sizeof key2, "%s/presign/other.png", g_run);
    char *put = NULL, *get = NULL;
    assert_int_equal(es_blob_presign(b, "PUT", key, "image/png", 300, &put), ES_OK);
    assert_int_equal(es_blob_presign(b, "GET", key, NULL, 300, &get), ES_OK);

    /* a PUT with the type it was signed for, then a GET of what it stored */
    assert_int_equal(curl_status("PUT", put, "image/png", body, NULL), 200);
    assert_int_equal(curl_status("GET", get, NULL, NULL, got), 200);
    size_t n1, n2;
    char *a = read_file(body, &n1), *g = read_file(got, &n2);
    assert_int_equal(n1, 3000);
    assert_int_equal(n2, n1);
    assert_memory_equal(a, g, n1);
    free(a);
    free(g);
    es_blob_info info;
    assert_int_equal(es_blob_head(b, key, &info), ES_OK);
    assert_string_equal(info.content_type, "image/png");
    assert_int_equal(info.size, 3000);

    /* another type than the one signed */
    assert_int_equal(curl_status("PUT", put, "image/jpeg", other, NULL), 403);
    /* another method: the GET URL used to PUT, the PUT URL to read or delete */
    assert_int_equal(curl_status("PUT", get, "image/png", other, NULL), 403);
    assert_int_equal(curl_status("GET", put, NULL, NULL, NULL), 403);
    assert_int_equal(curl_status("DELETE", get, NULL, NULL, NULL), 403);
    /* tampered: the signature, the lifetime, the key */
    char *t = strdup(put);
    char *sig = strstr(t, "X-Amz-Signature=") + 16;
    sig[0] = sig[0] == '0' ? '1' : '0';
    assert_int_equal(curl_status("PUT", t, "image/png", other, NULL), 403);
    free(t);
    t = strdup(put);
    char *exp = strstr(t, "X-Amz-Expires=300");
    assert_non_null(exp);
    exp[16] = '9';
    assert_int_equal(curl_status("PUT", t, "image/png", other, NULL), 403);
    free(t);
    t = strdup(put);
    memcpy(strstr(t, "photo.png"), "other.png", 9);
    assert_int_equal(curl_status("PUT", t, "image/png", other, NULL), 403);
    free(t);
    assert_int_equal(es_blob_head(b, key2, &info), ES_ENOTFOUND);
    /* expired: signed an hour ago for a minute */
    char *old = NULL;
    assert_int_equal(
        es_s3_presign_at(ctx, "PUT", key, "image/png", 60, es_now_ms() / 1000 - 3600, &old), ES_OK);
    assert_int_equal(curl_status("PUT", old, "image/png", other, NULL), 403);
    free(old);
    /* none of the refused requests touched the object */
    assert_int_equal(es_blob_head(b, key, &info), ES_OK);
    assert_int_equal(info.size, 3000);
    assert_string_equal(info.content_type, "image/png");

    free(put);
    free(get);
    assert_int_equal(es_blob_del(b, key), ES_OK);
    es_blob_s3.close(ctx);
    es_blob_close(b);
    test_rmdir(dir);
}

static int count_parts(const char *logpath)
{
    FILE *fp = fopen(logpath, "r");
    if (!fp) return -1;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof line, fp))
        if (strstr(line, "sent (5242880 bytes)")) n++;
    fclose(fp);
    return n;
}

typedef struct hashsink {
    size_t len;
    size_t bad;
} hashsink;

static unsigned char pattern(size_t i)
{
    return (unsigned char)((i * 2654435761u) >> 13 ^ i);
}

static int check_sink(void *arg, const void *data, size_t len)
{
    hashsink *h = arg;
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern(h->len + i)) h->bad++;
    h->len += len;
    return 0;
}

static void test_multipart(void **state)
{
    (void)state;
    if (!g_live[0]) skip();
    live_creds();
    char url[700];
    snprintf(url, sizeof url, "%s&part_size=5MB", g_live);
    es_blob *b;
    assert_int_equal(es_blob_open(url, NULL, &b), ES_OK);
    char *dir = test_tmpdir("s3multi");
    char logpath[600];
    snprintf(logpath, sizeof logpath, "%s/log", dir);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(logfd >= 0);
    es_log_set_fd(logfd);
    es_log_set_level(ES_LOG_DEBUG);

    /* 11 MB and a bit, in odd pieces: three parts, the last one small */
    char key[128];
    snprintf(key, sizeof key, "%s/multi/big.bin", g_run);
    const size_t total = 11 * 1024 * 1024 + 5;
    unsigned char *chunk = malloc(70001);
    es_blob_writer *w;
    assert_int_equal(es_blob_writer_open(b, key, "application/x-big", &w), ES_OK);
    for (size_t off = 0; off < total;) {
        size_t n = total - off < 70001 ? total - off : 70001;
        for (size_t i = 0; i < n; i++)
            chunk[i] = pattern(off + i);
        assert_int_equal(es_blob_write(w, chunk, n), ES_OK);
        off += n;
    }
    es_blob_info info;
    assert_int_equal(es_blob_head(b, key, &info), ES_ENOTFOUND); /* two parts sent, not visible */
    assert_int_equal(es_blob_commit(w), ES_OK);
    assert_int_equal(count_parts(logpath), 2); /* the third (1 MB) is not a full part */
    assert_int_equal(es_blob_head(b, key, &info), ES_OK);
    assert_int_equal(info.size, (int64_t)total);
    assert_string_equal(info.content_type, "application/x-big");
    hashsink h = {0};
    assert_int_equal(es_blob_get(b, key, 0, check_sink, &h), ES_OK);
    assert_int_equal(h.len, total);
    assert_int_equal(h.bad, 0);

    /* an aborted multipart upload leaves the old object as it was */
    assert_int_equal(es_blob_writer_open(b, key, "text/plain", &w), ES_OK);
    for (size_t off = 0; off < 6 * 1024 * 1024; off += 70001)
        assert_int_equal(es_blob_write(w, chunk, 70001), ES_OK);
    es_blob_abort(w);                          /* waits for the part in flight */
    assert_int_equal(count_parts(logpath), 3); /* it was sent, then dropped */
    assert_int_equal(es_blob_head(b, key, &info), ES_OK);
    assert_int_equal(info.size, (int64_t)total);
    assert_string_equal(info.content_type, "application/x-big");

    /* exactly one part is one PUT */
    char key1[128];
    snprintf(key1, sizeof key1, "%s/multi/one.bin", g_run);
    unsigned char *five = calloc(1, 5 * 1024 * 1024);
    assert_int_equal(es_blob_put(b, key1, NULL, five, 5 * 1024 * 1024), ES_OK);
    assert_int_equal(count_parts(logpath), 3);
    assert_int_equal(es_blob_head(b, key1, &info), ES_OK);
    assert_int_equal(info.size, 5 * 1024 * 1024);

    es_log_set_level(ES_LOG_OFF);
    es_log_set_fd(-1);
    close(logfd);
    assert_int_equal(es_blob_del(b, key), ES_OK);
    assert_int_equal(es_blob_del(b, key1), ES_OK);
    free(five);
    free(chunk);
    es_blob_close(b);
    test_rmdir(dir);
}

typedef struct listed {
    int n, stop_at;
    char keys[8][64];
    es_blob_info info[8];
} listed;

static int collect_list(void *arg, const char *key, const es_blob_info *info)
{
    listed *l = arg;
    if (l->n < 8) {
        es_strlcpy(l->keys[l->n], key, sizeof l->keys[0]);
        l->info[l->n] = *info;
    }
    l->n++;
    return l->n == l->stop_at ? 5 : 0;
}

static char *xml_answer(const char *body)
{
    char *out = malloc(strlen(body) + 128);
    sprintf(out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: %zu\r\n\r\n%s",
            strlen(body), body);
    return out;
}

#define CONTENTS(key, size)                                                                        \
    "<Contents><Key>" key "</Key><LastModified>2026-01-02T03:04:05.678Z</LastModified>"            \
    "<ETag>&quot;e1&quot;</ETag><Size>" size "</Size><StorageClass>STANDARD</StorageClass>"        \
    "</Contents>"

/* ListObjectsV2 over two pages (s3rver cannot make continuation tokens on
 * Node 20: it ciphers them with DES, which OpenSSL 3 no longer offers). */
static void test_list_pages(void **state)
{
    (void)state;
    char *page1 = xml_answer(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>app</Name>"
        "<Prefix>p/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>"
        "<IsTruncated>true</IsTruncated><NextContinuationToken>a+b/c=</"
        "NextContinuationToken>" CONTENTS("p/b/c", "11") CONTENTS("p/a", "0")
            CONTENTS("p/bad key", "1") "</ListBucketResult>");
    char *page2 = xml_answer("<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                             "<IsTruncated>false</IsTruncated>" CONTENTS("p/c", "5")
                                 CONTENTS("q/outside", "1") "</ListBucketResult>");
    char *junk = xml_answer("<html>not a listing</html>");
    const char *script[] = {page1, page2, page1, junk, NULL};
    fake f;
    fake_start(&f, script);
    es_blob *b = fake_blob(&f);

    listed l = {0};
    assert_int_equal(es_blob_list(b, "p/", collect_list, &l), ES_OK);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.keys[0], "p/a"); /* a page is given in order */
    assert_string_equal(l.keys[1], "p/b/c");
    assert_string_equal(l.keys[2], "p/c");
    assert_int_equal(l.info[0].size, 0);
    assert_int_equal(l.info[1].size, 11);
    assert_int_equal(l.info[2].size, 5);
    assert_string_equal(l.info[1].etag, "\"e1\"");
    int64_t when;
    assert_int_equal(es_time_parse_iso("2026-01-02T03:04:05.678Z", &when), ES_OK);
    assert_int_equal(l.info[1].mtime_ms, when);
    /* the query is sorted and encoded, the token too */
    static const char first[] = "GET /app?list-type=2&prefix=p%2F HTTP/1.1\r\n";
    static const char second[] =
        "GET /app?continuation-token=a%2Bb%2Fc%3D&list-type=2&prefix=p%2F HTTP/1.1\r\n";
    assert_int_equal(strncmp(f.reqs[0], first, strlen(first)), 0);
    assert_int_equal(strncmp(f.reqs[1], second, strlen(second)), 0);

    /* the callback stops it: no second page asked for */
    memset(&l, 0, sizeof l);
    l.stop_at = 1;
    assert_int_equal(es_blob_list(b, "p/", collect_list, &l), 5);
    assert_int_equal(f.nreqs, 3);
    /* an answer that is no listing */
    memset(&l, 0, sizeof l);
    assert_int_equal(es_blob_list(b, "p/", collect_list, &l), ES_EBACKEND);
    assert_int_equal(l.n, 0);
    es_blob_close(b);
    fake_stop(&f);
    free(page1);
    free(page2);
    free(junk);
}

static void test_wrong_secret(void **state)
{
    (void)state;
    if (!g_live[0]) skip();
    char *dir = test_tmpdir("s3auth");
    char logpath[600];
    snprintf(logpath, sizeof logpath, "%s/log", dir);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    es_log_set_fd(logfd);
    es_log_set_level(ES_LOG_ERROR);
    use_creds(g_ak, "not-the-secret", NULL);
    es_blob *b;
    assert_int_equal(es_blob_open(g_live, NULL, &b), ES_OK);
    char key[128];
    snprintf(key, sizeof key, "%s/auth/k", g_run);
    es_blob_info info;
    assert_int_equal(es_blob_ping(b), ES_EAUTH);
    assert_int_equal(es_blob_head(b, key, &info), ES_EAUTH);
    assert_int_equal(es_blob_put(b, key, "text/plain", "x", 1), ES_EAUTH);
    es_blob_close(b);
    es_log_set_level(ES_LOG_OFF);
    es_log_set_fd(-1);
    close(logfd);
    /* the server's reason is logged, the secret is not */
    size_t n;
    char *log = read_file(logpath, &n);
    assert_non_null(log);
    assert_non_null(strstr(log, "HTTP 403 SignatureDoesNotMatch"));
    assert_null(strstr(log, "not-the-secret"));
    free(log);
    live_creds();
    test_rmdir(dir);
}

int main(void)
{
    es_log_set_level(ES_LOG_OFF);
    char urls[8][512];
    int n = test_urls("ESTEIRA_TEST_BLOB_URLS", "", urls, 8);
    for (int i = 0; i < n && !g_live[0]; i++)
        if (strncmp(urls[i], "s3://", 5) == 0) es_strlcpy(g_live, urls[i], sizeof g_live);
    g_ak = es_strdup(getenv("AWS_ACCESS_KEY_ID"));
    g_sk = es_strdup(getenv("AWS_SECRET_ACCESS_KEY"));
    g_tok = es_strdup(getenv("AWS_SESSION_TOKEN"));
    char run_id[ES_UUID_LEN + 1];
    es_uuid7(run_id);
    snprintf(g_run, sizeof g_run, "test-%s", run_id);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_forms),
        cmocka_unit_test(test_presign_aws_example),
        cmocka_unit_test(test_presign_matches_botocore),
        cmocka_unit_test(test_presign_refuses),
        cmocka_unit_test(test_retries_and_keepalive),
        cmocka_unit_test(test_part_failure_in_flight),
        cmocka_unit_test(test_get_resumes_and_ranges),
        cmocka_unit_test(test_unreachable),
        cmocka_unit_test(test_presigned_with_curl),
        cmocka_unit_test(test_multipart),
        cmocka_unit_test(test_list_pages),
        cmocka_unit_test(test_wrong_secret),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    free(g_ak);
    free(g_sk);
    free(g_tok);
    return failed ? 1 : 0;
}
