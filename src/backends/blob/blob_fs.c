/* blob_fs.c - the embedded blob backend: objects are files under a directory.
 *
 *   file:./esteira-data/blobs   file:/abs/dir   file:///abs/dir
 *
 * Layout under the root:
 *   <key>          the object itself
 *   .meta/<key>    its sidecar: {"contentType": "..."} (JSON, so more can be added)
 *   .tmp/          objects being written, named <pid>-<random>
 *
 * A writer streams into a temporary file; commit fsyncs it, puts the sidecar in
 * place (itself renamed over the old one) and then renames the data over the
 * key.  rename() is atomic, so a reader sees the old object or the new one,
 * never a part, and a crash leaves only files in .tmp/, which the next open
 * removes once their process is gone.  The ETag is made of the inode, mtime and
 * size: every commit is a new inode, and hashing every object as it is written
 * would cost the upload path more than it is worth.
 *
 * A key that is the "directory" of another ("a" and "a/b") cannot exist on a
 * file system; such a put fails with ES_ECONFLICT. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "esteira/blob.h"
#include "esteira/err.h"
#include "esteira/log.h"
#include "esteira/sign.h"
#include "esteira/util.h"

#define COMP             "blob"
#define FS_PATH_MAX      4096
#define FS_ROOT_MAX      3000 /* leaves room for "/.meta/" and a 512-byte key */
#define FS_CHUNK         (64 * 1024)
#define FS_TMP_STALE_S   (24 * 3600) /* a temp file this old is garbage whoever wrote it */
#define FS_PRESIGN_MAX_S (7 * 24 * 3600)
#define FS_DEFAULT_CT    "application/octet-stream"
#define FS_CT_MAX        128 /* es_blob_info.content_type */

typedef struct fs_ctx {
    char *root; /* no trailing '/' */
    size_t root_len;
    char *secret;
    char *public_url; /* no trailing '/' */
} fs_ctx;

typedef struct fs_writer {
    fs_ctx *ctx;
    int fd;
    int err; /* sticky: once a write failed, the object cannot be committed */
    char key[513];
    char ct[FS_CT_MAX];
    char tmp[FS_PATH_MAX];
    size_t used;
    unsigned char buf[FS_CHUNK]; /* small writes are gathered into one write(2) */
} fs_writer;

static const char *errstr(int e, char *buf, size_t n)
{
    return strerror_r(e, buf, n);
}

static int io_error(const char *what, const char *path, int e)
{
    char eb[128];
    es_error(COMP, "%s %s: %s", what, path, errstr(e, eb, sizeof eb));
    return ES_EIO;
}

/* ".tmp" and ".meta" at the top are ours, not keys. */
static bool reserved(const char *key)
{
    return (strncmp(key, ".tmp", 4) == 0 && (key[4] == '/' || key[4] == '\0')) ||
           (strncmp(key, ".meta", 5) == 0 && (key[5] == '/' || key[5] == '\0'));
}

static int check_key(const char *key)
{
    if (es_blob_key_valid(key) && !reserved(key)) return ES_OK;
    es_warn(COMP, "invalid blob key '%.80s'", key ? key : "(null)");
    return ES_EINVAL;
}

/* area is "" (the object), ".meta/" or ".tmp/". */
static void path_of(const fs_ctx *c, const char *area, const char *key, char out[FS_PATH_MAX])
{
    snprintf(out, FS_PATH_MAX, "%s/%s%s", c->root, area, key);
}

static int mkdir_p(char *path, size_t start)
{
    for (char *p = strchr(path + start, '/'); p; p = strchr(p + 1, '/')) {
        if (p == path) continue;
        *p = '\0';
        int rc = mkdir(path, 0755) == 0 || errno == EEXIST ? 0 : errno;
        *p = '/';
        if (rc == ENOTDIR) return ES_ECONFLICT;
        if (rc) return io_error("cannot create directory for", path, rc);
    }
    return ES_OK;
}

/* Renames from over to, creating to's missing parents.  A concurrent delete may
 * remove a parent that has just been emptied; then the rename is tried again. */
static int rename_into(const fs_ctx *c, const char *from, char *to)
{
    for (int tries = 0;; tries++) {
        if (rename(from, to) == 0) return ES_OK;
        int e = errno;
        if (e == ENOENT && tries < 5) {
            int rc = mkdir_p(to, c->root_len + 1);
            if (rc != ES_OK) goto fail;
            continue;
        }
        if (e == EISDIR || e == ENOTDIR || e == ENOTEMPTY || e == EEXIST) goto fail;
        return io_error("cannot rename into", to, e);
    fail:
        es_warn(COMP, "cannot store %s: a key is a prefix directory of another", to);
        return ES_ECONFLICT;
    }
}

/* Removes the now empty directories above path, up to (not including) the root
 * of its area.  A directory that is not empty stops it. */
static void prune_dirs(char *path, size_t area_len)
{
    for (char *slash = strrchr(path, '/'); slash && (size_t)(slash - path) > area_len;
         slash = strrchr(path, '/')) {
        *slash = '\0';
        if (rmdir(path) != 0) return;
    }
}

static bool pid_gone(const char *name)
{
    char *end;
    errno = 0;
    long pid = strtol(name, &end, 10);
    if (errno || end == name || *end != '-' || pid <= 0) return true;
    return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Temp files of a process that died (or of any process, days ago). */
static void clean_tmp(fs_ctx *c)
{
    char dir[FS_PATH_MAX];
    path_of(c, ".tmp", "", dir);
    DIR *d = opendir(dir);
    if (!d) return;
    time_t now = time(NULL);
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (!pid_gone(e->d_name) && now - st.st_mtime < FS_TMP_STALE_S) continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
    }
    closedir(d);
    if (removed) es_info(COMP, "removed %d unfinished object(s) from %s", removed, dir);
}

static void fs_close(void *ctx)
{
    fs_ctx *c = ctx;
    if (!c) return;
    free(c->root);
    free(c->secret);
    free(c->public_url);
    free(c);
}

static int fs_open(const char *url, const es_config *cfg, void **out)
{
    *out = NULL;
    const char *p = url + strlen("file:");
    if (strncmp(p, "//", 2) == 0) {
        p += 2;
        if (*p != '/') {
            es_error(COMP, "file: URLs name no host: use file:///abs/dir or file:./dir");
            return ES_EINVAL;
        }
    }
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/')
        n--;
    if (n == 0 || n > FS_ROOT_MAX) {
        es_error(COMP, "file: URL needs a directory of at most %d bytes", FS_ROOT_MAX);
        return ES_EINVAL;
    }
    fs_ctx *c = calloc(1, sizeof *c);
    if (!c) return ES_ENOMEM;
    int rc = ES_ENOMEM;
    c->root = strndup(p, n);
    c->root_len = n;
    if (!c->root) goto free_ctx;
    if (cfg && cfg->secret && *cfg->secret && !(c->secret = strdup(cfg->secret))) goto free_ctx;
    if (cfg && cfg->public_url && *cfg->public_url) {
        size_t un = strlen(cfg->public_url);
        while (un > 0 && cfg->public_url[un - 1] == '/')
            un--;
        if (un > 0 && !(c->public_url = strndup(cfg->public_url, un))) goto free_ctx;
    }

    /* The root and the two private areas, each made if missing. */
    char path[FS_PATH_MAX];
    path_of(c, ".meta/", "", path);
    if ((rc = mkdir_p(path, 0)) != ES_OK) goto free_ctx;
    path_of(c, ".tmp/", "", path);
    if ((rc = mkdir_p(path, 0)) != ES_OK) goto free_ctx;
    struct stat st;
    if (stat(c->root, &st) != 0 || !S_ISDIR(st.st_mode)) {
        rc = io_error("cannot use blob root", c->root, S_ISDIR(st.st_mode) ? errno : ENOTDIR);
        goto free_ctx;
    }
    clean_tmp(c);
    *out = c;
    return ES_OK;

free_ctx:
    fs_close(c);
    return rc;
}

static bool ct_ok(const char *ct)
{
    for (; *ct; ct++)
        if ((unsigned char)*ct < 0x20 || *ct == 0x7f) return false;
    return true;
}

static int open_tmp(fs_ctx *c, char out[FS_PATH_MAX], const char *suffix)
{
    unsigned char rnd[8];
    char hex[17];
    if (es_random(rnd, sizeof rnd) != ES_OK) return ES_EIO;
    es_hex(rnd, sizeof rnd, hex);
    char name[64];
    snprintf(name, sizeof name, "%ld-%s%s", (long)getpid(), hex, suffix);
    path_of(c, ".tmp/", name, out);
    for (int tries = 0;; tries++) {
        int fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) return fd;
        int e = errno;
        if (e == ENOENT && tries == 0) { /* .tmp/ was removed under us: make it again */
            char dir[FS_PATH_MAX];
            path_of(c, ".tmp/", "", dir);
            if (mkdir_p(dir, 0) == ES_OK) continue;
        }
        return io_error("cannot create", out, e);
    }
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fs_writer_open(void *ctx, const char *key, const char *content_type, void **out)
{
    fs_ctx *c = ctx;
    *out = NULL;
    int rc = check_key(key);
    if (rc != ES_OK) return rc;
    const char *ct = content_type && *content_type ? content_type : FS_DEFAULT_CT;
    if (strlen(ct) >= FS_CT_MAX || !ct_ok(ct)) {
        es_warn(COMP, "invalid content type for %s", key);
        return ES_EINVAL;
    }
    fs_writer *w = malloc(sizeof *w);
    if (!w) return ES_ENOMEM;
    w->ctx = c;
    w->err = ES_OK;
    w->used = 0;
    es_strlcpy(w->key, key, sizeof w->key);
    es_strlcpy(w->ct, ct, sizeof w->ct);
    w->fd = open_tmp(c, w->tmp, "");
    if (w->fd < 0) {
        rc = w->fd;
        free(w);
        return rc;
    }
    *out = w;
    return ES_OK;
}

static int flush_buf(fs_writer *w)
{
    if (w->used == 0) return ES_OK;
    int e = write_all(w->fd, w->buf, w->used);
    w->used = 0;
    if (e) w->err = io_error("cannot write", w->tmp, e);
    return w->err;
}

static int fs_write(void *wp, const void *data, size_t len)
{
    fs_writer *w = wp;
    if (w->err != ES_OK) return w->err;
    if (w->used + len <= sizeof w->buf) {
        memcpy(w->buf + w->used, data, len);
        w->used += len;
        return ES_OK;
    }
    if (flush_buf(w) != ES_OK) return w->err;
    if (len >= sizeof w->buf) { /* big pieces go straight through */
        int e = write_all(w->fd, data, len);
        if (e) w->err = io_error("cannot write", w->tmp, e);
        return w->err;
    }
    memcpy(w->buf, data, len);
    w->used = len;
    return ES_OK;
}

static void fs_abort(void *wp)
{
    fs_writer *w = wp;
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    unlink(w->tmp);
    free(w);
}

/* The sidecar goes through .tmp/ too, so it is replaced whole.  It is not
 * fsynced: after a power loss a torn sidecar reads as the default type, while
 * the data, which matters, was. */
static int write_sidecar(fs_ctx *c, const char *key, const char *ct)
{
    char tmp[FS_PATH_MAX], dst[FS_PATH_MAX];
    json_t *o = json_pack("{s:s}", "contentType", ct);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return ES_ENOMEM;
    int rc;
    int fd = open_tmp(c, tmp, ".meta");
    if (fd < 0) {
        rc = fd;
        goto free_text;
    }
    int e = write_all(fd, text, strlen(text));
    if (close(fd) != 0 && !e) e = errno;
    if (e) {
        rc = io_error("cannot write", tmp, e);
        goto unlink_tmp;
    }
    path_of(c, ".meta/", key, dst);
    rc = rename_into(c, tmp, dst);
    if (rc != ES_OK) goto unlink_tmp;
    free(text);
    return ES_OK;

unlink_tmp:
    unlink(tmp);
free_text:
    free(text);
    return rc;
}

static int fs_commit(void *wp)
{
    fs_writer *w = wp;
    fs_ctx *c = w->ctx;
    char dst[FS_PATH_MAX];
    int rc = w->err;
    if (rc != ES_OK) goto abort;
    if ((rc = flush_buf(w)) != ES_OK) goto abort;
    if (fsync(w->fd) != 0) {
        rc = io_error("cannot fsync", w->tmp, errno);
        goto abort;
    }
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0) {
        rc = io_error("cannot close", w->tmp, errno);
        goto abort;
    }
    if ((rc = write_sidecar(c, w->key, w->ct)) != ES_OK) goto abort;
    path_of(c, "", w->key, dst);
    if ((rc = rename_into(c, w->tmp, dst)) != ES_OK) goto abort;
    free(w);
    return ES_OK;

abort:
    fs_abort(w);
    return rc;
}

static int fs_get(void *ctx, const char *key, int64_t offset, int64_t len, es_blob_sink sink,
                  void *arg)
{
    (void)len; /* the sink is cut at len: reading on costs at most one chunk */
    fs_ctx *c = ctx;
    int rc = check_key(key);
    if (rc != ES_OK) return rc;
    char path[FS_PATH_MAX];
    path_of(c, "", key, path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return ES_ENOTFOUND;
        return io_error("cannot open", path, errno);
    }
    struct stat st;
    char *buf = NULL;
    if (fstat(fd, &st) != 0) {
        rc = io_error("cannot stat", path, errno);
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) { /* "a" when only "a/b" exists */
        rc = ES_ENOTFOUND;
        goto close_fd;
    }
    if (offset > st.st_size) {
        es_warn(COMP, "read of %s at %lld, past its end (%lld)", key, (long long)offset,
                (long long)st.st_size);
        rc = ES_EINVAL;
        goto close_fd;
    }
    (void)posix_fadvise(fd, offset, 0, POSIX_FADV_SEQUENTIAL);
    if (!(buf = malloc(FS_CHUNK))) {
        rc = ES_ENOMEM;
        goto close_fd;
    }
    for (off_t pos = offset;;) {
        ssize_t n = pread(fd, buf, FS_CHUNK, pos);
        if (n < 0) {
            if (errno == EINTR) continue;
            rc = io_error("cannot read", path, errno);
            break;
        }
        if (n == 0) break;
        if ((rc = sink(arg, buf, (size_t)n)) != 0) break;
        pos += n;
    }
    free(buf);
close_fd:
    close(fd);
    return rc;
}

static void info_from_stat(const struct stat *st, es_blob_info *info)
{
    info->size = st->st_size;
    info->mtime_ms = (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
    snprintf(info->etag, sizeof info->etag, "\"%llx-%llx-%llx\"", (unsigned long long)st->st_ino,
             (unsigned long long)st->st_mtim.tv_sec * 1000000000ull +
                 (unsigned long long)st->st_mtim.tv_nsec,
             (unsigned long long)st->st_size);
}

static void read_sidecar(fs_ctx *c, const char *key, es_blob_info *info)
{
    char path[FS_PATH_MAX];
    path_of(c, ".meta/", key, path);
    es_strlcpy(info->content_type, FS_DEFAULT_CT, sizeof info->content_type);
    json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
    const char *ct = json_string_value(json_object_get(o, "contentType"));
    if (ct && *ct && ct_ok(ct)) es_strlcpy(info->content_type, ct, sizeof info->content_type);
    json_decref(o);
}

static int fs_head(void *ctx, const char *key, es_blob_info *info)
{
    fs_ctx *c = ctx;
    int rc = check_key(key);
    if (rc != ES_OK) return rc;
    char path[FS_PATH_MAX];
    path_of(c, "", key, path);
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return ES_ENOTFOUND;
        return io_error("cannot stat", path, errno);
    }
    if (!S_ISREG(st.st_mode)) return ES_ENOTFOUND;
    memset(info, 0, sizeof *info);
    info_from_stat(&st, info);
    read_sidecar(c, key, info);
    return ES_OK;
}

static int fs_del(void *ctx, const char *key)
{
    fs_ctx *c = ctx;
    int rc = check_key(key);
    if (rc != ES_OK) return rc;
    char path[FS_PATH_MAX];
    path_of(c, "", key, path);
    /* EISDIR: "a" while "a/b" exists is no object either */
    if (unlink(path) != 0 && errno != ENOENT && errno != ENOTDIR && errno != EISDIR)
        return io_error("cannot delete", path, errno);
    prune_dirs(path, c->root_len);
    path_of(c, ".meta/", key, path);
    if (unlink(path) != 0 && errno != ENOENT && errno != ENOTDIR && errno != EISDIR)
        return io_error("cannot delete", path, errno);
    prune_dirs(path, c->root_len + strlen("/.meta"));
    return ES_OK;
}

/* ---- listing: a depth-first walk in lexical order of the keys.  Sorting the
 * entries of a directory by name, with a '/' after each subdirectory's name,
 * gives the order of the full keys: "a-c" < "a/b" because '-' < '/'. */

typedef struct fs_entry {
    char *name; /* a subdirectory's ends with '/' */
    struct stat st;
} fs_entry;

typedef struct fs_walk {
    fs_ctx *c;
    const char *prefix;
    size_t plen;
    es_blob_each each;
    void *arg;
    char rel[520];         /* the directory being walked, relative to the root, '/'-terminated */
    char dir[FS_PATH_MAX]; /* the same, as a path; only needed before going deeper */
} fs_walk;

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const fs_entry *)a)->name, ((const fs_entry *)b)->name);
}

static void free_entries(fs_entry *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i].name);
    free(v);
}

/* Reads one directory whole (closing it before the walk goes deeper, so the
 * depth of the tree never costs open descriptors). */
static int read_entries(fs_walk *wk, const char *dir, bool top, fs_entry **out, size_t *count)
{
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT || errno == ENOTDIR) return ES_OK;
        return io_error("cannot list", dir, errno);
    }
    fs_entry *v = NULL;
    size_t n = 0, cap = 0;
    int rc = ES_OK;
    for (struct dirent *e; (e = readdir(d));) {
        const char *name = e->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        if (top && (strcmp(name, ".tmp") == 0 || strcmp(name, ".meta") == 0)) continue;
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* gone */
        bool isdir = S_ISDIR(st.st_mode);
        if (!isdir && !S_ISREG(st.st_mode)) continue;
        size_t len = strlen(name);
        if (strlen(wk->rel) + len > 512) continue; /* no key that long */
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            fs_entry *nv = realloc(v, ncap * sizeof *nv);
            if (!nv) {
                rc = ES_ENOMEM;
                break;
            }
            v = nv;
            cap = ncap;
        }
        char *copy = malloc(len + 2);
        if (!copy) {
            rc = ES_ENOMEM;
            break;
        }
        memcpy(copy, name, len);
        copy[len] = isdir ? '/' : '\0';
        copy[len + 1] = '\0';
        v[n].name = copy;
        v[n].st = st;
        n++;
    }
    closedir(d);
    if (rc != ES_OK) {
        free_entries(v, n);
        return rc;
    }
    if (n) qsort(v, n, sizeof *v, entry_cmp);
    *out = v;
    *count = n;
    return ES_OK;
}

static int walk_dir(fs_walk *wk)
{
    size_t rel_len = strlen(wk->rel);
    snprintf(wk->dir, sizeof wk->dir, "%s/%s", wk->c->root, wk->rel);
    fs_entry *v;
    size_t n;
    int rc = read_entries(wk, wk->dir, rel_len == 0, &v, &n);
    if (rc != ES_OK) return rc;
    for (size_t i = 0; i < n && rc == 0; i++) {
        size_t len = strlen(v[i].name);
        memcpy(wk->rel + rel_len, v[i].name, len + 1);
        const char *key = wk->rel;
        size_t klen = rel_len + len;
        size_t cmp = klen < wk->plen ? klen : wk->plen;
        if (strncmp(key, wk->prefix, cmp) != 0) continue; /* neither leads to the other */
        if (v[i].name[len - 1] == '/') {
            rc = walk_dir(wk);
        } else if (klen >= wk->plen && es_blob_key_valid(key)) {
            es_blob_info info;
            memset(&info, 0, sizeof info);
            info_from_stat(&v[i].st, &info);
            rc = wk->each(wk->arg, key, &info);
        }
    }
    wk->rel[rel_len] = '\0';
    free_entries(v, n);
    return rc;
}

static bool prefix_ok(const char *prefix)
{
    if (!*prefix) return true;
    if (*prefix == '/' || strlen(prefix) > 512 || strstr(prefix, "..") || strstr(prefix, "//"))
        return false;
    for (const char *p = prefix; *p; p++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-", *p))
            return false;
    return true;
}

/* Content types are not read for a listing (one more file per key); callers
 * that need one ask head(). */
static int fs_list(void *ctx, const char *prefix, es_blob_each each, void *arg)
{
    if (!prefix_ok(prefix)) {
        es_warn(COMP, "invalid blob prefix '%.80s'", prefix);
        return ES_EINVAL;
    }
    fs_walk *wk = malloc(sizeof *wk);
    if (!wk) return ES_ENOMEM;
    wk->c = ctx;
    wk->prefix = prefix;
    wk->plen = strlen(prefix);
    wk->each = each;
    wk->arg = arg;
    /* Start in the deepest directory the prefix names: "uploads/x/batch-" walks uploads/x/. */
    const char *slash = strrchr(prefix, '/');
    size_t start = slash ? (size_t)(slash - prefix) + 1 : 0;
    memcpy(wk->rel, prefix, start);
    wk->rel[start] = '\0';
    int rc = reserved(wk->rel) ? ES_OK : walk_dir(wk);
    free(wk);
    return rc;
}

static int fs_presign(void *ctx, const char *method, const char *key, const char *content_type,
                      int64_t expires_s, char **url)
{
    fs_ctx *c = ctx;
    *url = NULL;
    int rc = check_key(key);
    if (rc != ES_OK) return rc;
    if (strcmp(method, "GET") != 0 && strcmp(method, "PUT") != 0 && strcmp(method, "HEAD") != 0) {
        es_warn(COMP, "cannot presign method %.16s", method);
        return ES_EINVAL;
    }
    if (expires_s <= 0 || expires_s > FS_PRESIGN_MAX_S) {
        es_warn(COMP, "presigned URL lifetime %lld s out of range", (long long)expires_s);
        return ES_EINVAL;
    }
    if (content_type && !ct_ok(content_type)) {
        es_warn(COMP, "invalid content type for a presigned URL");
        return ES_EINVAL;
    }
    if (!c->secret || !c->public_url) {
        es_error(COMP, "presigned URLs need a secret and a public URL");
        return ES_EINVAL;
    }
    int64_t exp = es_now_ms() / 1000 + expires_s;
    char *query = es_sign_query(c->secret, method, key, content_type, exp);
    char *ekey = es_urlencode(key, 1);
    es_buf b;
    es_buf_init(&b, 0);
    rc = ES_ENOMEM;
    if (query && ekey &&
        es_buf_printf(&b, "%s/v1/blobs/%s?%s", c->public_url, ekey, query) == ES_OK) {
        *url = es_buf_steal(&b);
        rc = *url ? ES_OK : ES_ENOMEM;
    }
    es_buf_finish(&b);
    free(query);
    free(ekey);
    return rc;
}

static int fs_ping(void *ctx)
{
    fs_ctx *c = ctx;
    char path[FS_PATH_MAX];
    path_of(c, ".tmp", "", path);
    if (access(path, W_OK | X_OK) != 0) return io_error("cannot write to", path, errno);
    return ES_OK;
}

const es_blob_ops es_blob_fs = {
    .name = "file",
    .scheme = "file:",
    .open = fs_open,
    .close = fs_close,
    .writer_open = fs_writer_open,
    .write = fs_write,
    .commit = fs_commit,
    .abort = fs_abort,
    .get = fs_get,
    .head = fs_head,
    .del = fs_del,
    .list = fs_list,
    .presign = fs_presign,
    .ping = fs_ping,
};
