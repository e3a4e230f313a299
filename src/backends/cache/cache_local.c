/* cache_local.c - the embedded cache (URL "local:"; anything after the colon
 * is ignored): an in-process key space and publish/subscribe, with the
 * semantics of the Redis backend so that code written against one runs on
 * the other.
 *
 * The key space is a chained hash table (power-of-two buckets, doubled when
 * there are more entries than buckets, halved when it empties out) keyed by
 * SipHash-2-4 with a random key per instance, so that keys chosen by clients
 * cannot be crafted to collide.  One mutex guards it: every operation is a
 * few pointer hops and copies, shorter than the time a reader-writer lock
 * would save.
 *
 * Entries are strings, counters or hashes, each with an optional expiry on
 * the monotonic clock.  As in Redis, an expired entry is removed when it is
 * touched, and a sweep removes the ones nobody touches: every write examines a
 * few buckets, and the backend's thread examines more once a second, so
 * memory follows the live keys, not the keys ever written.  The total size is
 * bounded (LOCAL_MAX_BYTES); past it writes fail with ES_ELIMIT, as Redis does
 * with maxmemory and the noeviction policy: a cache that quietly evicted would
 * lose locks and job status.
 *
 * Locks are plain strings holding the owner token, as with SET NX PX in Redis,
 * so get() on a lock key returns its owner.
 *
 * Publish/subscribe: publish() appends to a bounded queue and returns; one
 * thread per instance (the dispatcher) takes messages off the queue and calls
 * the matching subscribers in the order they subscribed.  When the queue is
 * full the oldest message is dropped and counted, so a slow subscriber delays
 * notifications but never blocks a publisher.  A subscription only receives
 * messages published after subscribe() returned.
 *
 * Subscriptions must be ended (es_cache_unsubscribe) before the cache is
 * closed; close frees any that are left, with a warning, and their handles
 * become invalid.  Neither close nor unsubscribe of another instance may be
 * called from a callback; unsubscribing the running subscription from its own
 * callback is allowed. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "esteira/cache.h"
#include "esteira/err.h"
#include "esteira/log.h"

#define COMP "cache"

/* Bounds.  There are no settings for them yet: these are sized for what the
 * cache holds in esteira (status records, counters, locks, notifications),
 * far below them in normal use. */
#ifndef LOCAL_MAX_BYTES
#define LOCAL_MAX_BYTES ((size_t)256 << 20) /* keys + values + per-entry overhead */
#endif
#define LOCAL_QUEUE_MAX       10000              /* messages waiting for the dispatcher */
#define LOCAL_QUEUE_MAX_BYTES ((size_t)16 << 20) /* and their bytes */
#define SWEEP_PER_WRITE       8 /* buckets examined for expired entries by each write */
#define SWEEP_PER_TICK                                                                             \
    4096 /* and by the dispatcher once a tick, or a tenth of the                                   \
          * table when larger: a full pass every 10 ticks */
#define SWEEP_TICK_MS    1000
#define MIN_BUCKETS      64
#define WARN_INTERVAL_MS 10000 /* repeated warnings (full, drops) at most this often */

/* ------------------------------------------------------------ key space */

enum kind { K_STR, K_COUNTER, K_HASH };

typedef struct entry {
    struct entry *next; /* bucket chain */
    uint64_t hash;
    int64_t expire_at; /* es_mono_ms(); 0 = never */
    size_t bytes;      /* accounted against LOCAL_MAX_BYTES */
    enum kind kind;
    union {
        struct {
            char *data; /* NUL-terminated; the NUL is not counted in len */
            size_t len;
        } str;
        int64_t counter;
        struct {
            es_kv *f; /* insertion order; found by a linear scan: these hashes are
                       * status records of a few dozen fields */
            int n, cap;
        } h;
    } v;
    size_t klen;
    char key[]; /* NUL-terminated */
} entry;

typedef struct keyspace {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* a power of two */
    size_t count;
    size_t bytes;
    size_t cursor; /* where the next sweep starts */
    uint64_t k0, k1;
    int64_t full_warned_ms;
} keyspace;

/* ------------------------------------------------------------ pub/sub */

typedef struct event {
    struct event *next;
    uint64_t seq;
    size_t len;  /* of the message */
    size_t size; /* accounted against LOCAL_QUEUE_MAX_BYTES */
    char *channel;
    char data[]; /* message, NUL, channel, NUL */
} event;

struct local;

typedef struct local_sub {
    struct local_sub *next;
    struct local *l;
    es_cache_msg_fn fn;
    void *arg;
    uint64_t since;  /* the last sequence published before it subscribed */
    bool dead;       /* unsubscribed: no further callback */
    bool self_freed; /* unsubscribed from its own callback: the dispatcher frees it */
    bool prefix;     /* pattern ended in '*' */
    size_t plen;
    char pattern[]; /* without the '*' */
} local_sub;

typedef struct pubsub {
    pthread_mutex_t mu;
    pthread_cond_t wake; /* dispatcher: a message or stop */
    pthread_cond_t idle; /* unsubscribers: a callback returned */
    event *head, *tail;
    size_t qlen, qbytes;
    uint64_t seq;
    uint64_t drops;
    int64_t drop_warned_ms;
    local_sub *subs;
    local_sub *running; /* whose callback runs right now */
    bool stopping;
    pthread_t thread;
} pubsub;

typedef struct local {
    keyspace ks;
    pubsub ps;
} local;

/* ------------------------------------------------------------ hashing */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

/* SipHash-2-4 (Aumasson and Bernstein), 64-bit output. */
static uint64_t siphash(uint64_t k0, uint64_t k1, const void *in, size_t len)
{
    const unsigned char *p = in;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    size_t full = len & ~(size_t)7;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = 0;
        for (int j = 7; j >= 0; j--)
            m = (m << 8) | p[i + (size_t)j];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t j = len - full; j > 0; j--)
        b |= (uint64_t)p[full + j - 1] << (8 * (j - 1));
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ------------------------------------------------------------ entries */

static bool expired(const entry *e, int64_t now)
{
    return e->expire_at != 0 && now >= e->expire_at;
}

static int64_t deadline(int64_t now, int64_t ttl_ms)
{
    if (ttl_ms <= 0) return 0;
    return ttl_ms > INT64_MAX - now ? INT64_MAX : now + ttl_ms;
}

static void entry_clear_value(entry *e)
{
    switch (e->kind) {
    case K_STR: free(e->v.str.data); break;
    case K_HASH: es_kv_free(e->v.h.f, e->v.h.n); break;
    case K_COUNTER: break;
    }
    memset(&e->v, 0, sizeof e->v);
}

static void entry_free(entry *e)
{
    entry_clear_value(e);
    free(e);
}

static size_t entry_bytes(const entry *e)
{
    size_t n = sizeof *e + e->klen + 1;
    switch (e->kind) {
    case K_STR: n += e->v.str.len + 1; break;
    case K_HASH:
        n += (size_t)e->v.h.cap * sizeof(es_kv);
        for (int i = 0; i < e->v.h.n; i++)
            n += strlen(e->v.h.f[i].key) + strlen(e->v.h.f[i].value) + 2;
        break;
    case K_COUNTER: break;
    }
    return n;
}

static entry *entry_new(const char *key, size_t klen, uint64_t h, enum kind kind)
{
    entry *e = calloc(1, sizeof *e + klen + 1);
    if (!e) return NULL;
    e->hash = h;
    e->kind = kind;
    e->klen = klen;
    memcpy(e->key, key, klen + 1);
    return e;
}

/* ------------------------------------------------------------ the table
 * All of these run with ks->mu held. */

static void ks_account(keyspace *ks, entry *e)
{
    ks->bytes -= e->bytes;
    e->bytes = entry_bytes(e);
    ks->bytes += e->bytes;
}

static void ks_remove(keyspace *ks, entry **slot)
{
    entry *e = *slot;
    *slot = e->next;
    ks->count--;
    ks->bytes -= e->bytes;
    entry_free(e);
}

/* A failed allocation keeps the old table: lookups stay correct, chains are
 * just longer until the next try. */
static void ks_resize(keyspace *ks, size_t n)
{
    entry **nb = calloc(n, sizeof *nb);
    if (!nb) return;
    for (size_t i = 0; i < ks->nbuckets; i++) {
        entry *e = ks->buckets[i];
        while (e) {
            entry *next = e->next;
            entry **b = &nb[e->hash & (n - 1)];
            e->next = *b;
            *b = e;
            e = next;
        }
    }
    free(ks->buckets);
    ks->buckets = nb;
    ks->nbuckets = n;
}

static void ks_insert(keyspace *ks, entry *e)
{
    entry **b = &ks->buckets[e->hash & (ks->nbuckets - 1)];
    e->next = *b;
    *b = e;
    ks->count++;
    e->bytes = 0;
    ks_account(ks, e);
    /* Doubling all at once pauses this one write for a pass over every
     * entry: amortised, a constant cost per insert. */
    if (ks->count > ks->nbuckets) ks_resize(ks, ks->nbuckets * 2);
}

/* Removes expired entries from the next n buckets. */
static void ks_sweep(keyspace *ks, int64_t now, size_t n)
{
    if (n > ks->nbuckets) n = ks->nbuckets;
    for (size_t i = 0; i < n; i++) {
        entry **p = &ks->buckets[ks->cursor++ & (ks->nbuckets - 1)];
        while (*p) {
            if (expired(*p, now))
                ks_remove(ks, p);
            else
                p = &(*p)->next;
        }
    }
}

static entry **ks_slot(keyspace *ks, const char *key, size_t klen, uint64_t h)
{
    for (entry **p = &ks->buckets[h & (ks->nbuckets - 1)]; *p; p = &(*p)->next) {
        entry *e = *p;
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0) return p;
    }
    return NULL;
}

/* The live entry for key, or NULL (an expired one is removed on the way). */
static entry *ks_lookup(keyspace *ks, const char *key, size_t klen, uint64_t h, int64_t now)
{
    entry **p = ks_slot(ks, key, klen, h);
    if (!p) return NULL;
    if (expired(*p, now)) {
        ks_remove(ks, p);
        return NULL;
    }
    return *p;
}

/* Whether `need` more bytes fit.  When they don't, every bucket is swept
 * first: expired entries must never be the reason a write is refused. */
static int ks_room(keyspace *ks, size_t need, int64_t now)
{
    if (need <= LOCAL_MAX_BYTES && ks->bytes <= LOCAL_MAX_BYTES - need) return ES_OK;
    ks_sweep(ks, now, ks->nbuckets);
    if (need <= LOCAL_MAX_BYTES && ks->bytes <= LOCAL_MAX_BYTES - need) return ES_OK;
    if (ks->full_warned_ms == 0 || now - ks->full_warned_ms >= WARN_INTERVAL_MS) {
        ks->full_warned_ms = now;
        es_warn(COMP, "local cache full (%zu of %zu bytes in %zu keys): refusing writes", ks->bytes,
                LOCAL_MAX_BYTES, ks->count);
    }
    return ES_ELIMIT;
}

/* Every operation starts here: lock, read the clock, hash the key. */
typedef struct op {
    keyspace *ks;
    const char *key;
    size_t klen;
    uint64_t h;
    int64_t now;
} op;

static void op_begin(op *o, local *l, const char *key, bool write)
{
    o->ks = &l->ks;
    o->key = key;
    o->klen = strlen(key);
    o->h = siphash(l->ks.k0, l->ks.k1, key, o->klen);
    pthread_mutex_lock(&o->ks->mu);
    o->now = es_mono_ms();
    if (write) ks_sweep(o->ks, o->now, SWEEP_PER_WRITE);
}

static void op_end(op *o)
{
    pthread_mutex_unlock(&o->ks->mu);
}

static entry *op_lookup(op *o)
{
    return ks_lookup(o->ks, o->key, o->klen, o->h, o->now);
}

/* ------------------------------------------------------------ strings, counters */

static int local_get(void *ctx, const char *key, char **val, size_t *len)
{
    op o;
    int rc = ES_OK;
    op_begin(&o, ctx, key, false);
    entry *e = op_lookup(&o);
    if (!e) {
        rc = ES_ENOTFOUND;
        goto unlock;
    }
    char num[24];
    const char *src;
    size_t n;
    switch (e->kind) {
    case K_STR:
        src = e->v.str.data;
        n = e->v.str.len;
        break;
    case K_COUNTER:
        n = (size_t)snprintf(num, sizeof num, "%lld", (long long)e->v.counter);
        src = num;
        break;
    default: rc = ES_EINVAL; goto unlock;
    }
    char *copy = malloc(n + 1);
    if (!copy) {
        rc = ES_ENOMEM;
        goto unlock;
    }
    memcpy(copy, src, n);
    copy[n] = 0;
    *val = copy;
    *len = n;
unlock:
    op_end(&o);
    return rc;
}

static int local_set(void *ctx, const char *key, const char *val, size_t len, int64_t ttl_ms)
{
    op o;
    int rc;
    op_begin(&o, ctx, key, true);
    rc = ks_room(o.ks, sizeof(entry) + o.klen + len + 2, o.now);
    if (rc != ES_OK) goto unlock;
    char *copy = malloc(len + 1);
    if (!copy) {
        rc = ES_ENOMEM;
        goto unlock;
    }
    memcpy(copy, val, len);
    copy[len] = 0;
    /* SET replaces whatever was there, of any kind, and its TTL. */
    entry **slot = ks_slot(o.ks, key, o.klen, o.h);
    entry *e = slot ? *slot : entry_new(key, o.klen, o.h, K_STR);
    if (!e) {
        free(copy);
        rc = ES_ENOMEM;
        goto unlock;
    }
    entry_clear_value(e);
    e->kind = K_STR;
    e->v.str.data = copy;
    e->v.str.len = len;
    e->expire_at = deadline(o.now, ttl_ms);
    if (slot)
        ks_account(o.ks, e);
    else
        ks_insert(o.ks, e);
unlock:
    op_end(&o);
    return rc;
}

/* Deleting an absent key is not an error: the caller wanted it gone. */
static int local_del(void *ctx, const char *key)
{
    op o;
    op_begin(&o, ctx, key, true);
    entry **slot = ks_slot(o.ks, key, o.klen, o.h);
    if (slot) ks_remove(o.ks, slot);
    op_end(&o);
    return ES_OK;
}

/* A string holds an integer when all of it parses as one (no embedded NUL). */
static int str_integer(const char *s, size_t len, int64_t *out)
{
    if (strlen(s) != len) return ES_EINVAL;
    return es_parse_i64(s, INT64_MIN, INT64_MAX, out);
}

static int local_incr(void *ctx, const char *key, int64_t by, int64_t ttl_ms, int64_t *out)
{
    op o;
    int rc = ES_OK;
    int64_t cur;
    op_begin(&o, ctx, key, true);
    entry *e = op_lookup(&o);
    if (!e) {
        rc = ks_room(o.ks, sizeof(entry) + o.klen + 1, o.now);
        if (rc != ES_OK) goto unlock;
        e = entry_new(key, o.klen, o.h, K_COUNTER);
        if (!e) {
            rc = ES_ENOMEM;
            goto unlock;
        }
        e->v.counter = by;
        e->expire_at = deadline(o.now, ttl_ms);
        ks_insert(o.ks, e);
        *out = by;
        goto unlock;
    }
    switch (e->kind) {
    case K_COUNTER: cur = e->v.counter; break;
    case K_STR:
        rc = str_integer(e->v.str.data, e->v.str.len, &cur);
        if (rc != ES_OK) goto unlock;
        break;
    default: rc = ES_EINVAL; goto unlock;
    }
    int64_t next;
    if (__builtin_add_overflow(cur, by, &next)) {
        rc = ES_EINVAL;
        goto unlock;
    }
    /* An existing key keeps its TTL, whatever ttl_ms says. */
    entry_clear_value(e);
    e->kind = K_COUNTER;
    e->v.counter = next;
    ks_account(o.ks, e);
    *out = next;
unlock:
    op_end(&o);
    return rc;
}

/* ------------------------------------------------------------ hashes */

static int hash_find(const entry *e, const char *field)
{
    for (int i = 0; i < e->v.h.n; i++)
        if (strcmp(e->v.h.f[i].key, field) == 0) return i;
    return -1;
}

static int hash_reserve(entry *e, int extra)
{
    if (e->v.h.n + extra <= e->v.h.cap) return ES_OK;
    int cap = e->v.h.cap ? e->v.h.cap : 4;
    while (cap < e->v.h.n + extra)
        cap *= 2;
    es_kv *f = realloc(e->v.h.f, (size_t)cap * sizeof *f);
    if (!f) return ES_ENOMEM;
    e->v.h.f = f;
    e->v.h.cap = cap;
    return ES_OK;
}

/* Sets field to value (owned by the hash from here on; key too when the field
 * is new, else freed).  Room must have been reserved. */
static void hash_put(entry *e, char *key, char *value)
{
    int i = hash_find(e, key);
    if (i >= 0) {
        free(key);
        free(e->v.h.f[i].value);
        e->v.h.f[i].value = value;
        return;
    }
    e->v.h.f[e->v.h.n].key = key;
    e->v.h.f[e->v.h.n].value = value;
    e->v.h.n++;
}

/* The hash at key for writing: the live one, or a new (not yet inserted) one.
 * ES_EINVAL when key holds something else. */
static int hash_for_write(op *o, entry **out, bool *created)
{
    entry *e = op_lookup(o);
    *created = false;
    if (e) {
        if (e->kind != K_HASH) return ES_EINVAL;
        *out = e;
        return ES_OK;
    }
    e = entry_new(o->key, o->klen, o->h, K_HASH);
    if (!e) return ES_ENOMEM;
    *created = true;
    *out = e;
    return ES_OK;
}

static int local_hset(void *ctx, const char *key, const es_kv *fields, int n, int64_t ttl_ms)
{
    op o;
    int rc;
    entry *e = NULL;
    bool created = false;
    es_kv *copies = NULL;
    op_begin(&o, ctx, key, true);
    size_t need = sizeof(entry) + o.klen + 1;
    for (int i = 0; i < n; i++)
        need += sizeof(es_kv) + strlen(fields[i].key) + strlen(fields[i].value) + 2;
    rc = ks_room(o.ks, need, o.now);
    if (rc != ES_OK) goto unlock;
    rc = hash_for_write(&o, &e, &created);
    if (rc != ES_OK) goto unlock;
    /* Copy everything first, so that running out of memory half-way leaves
     * the hash as it was. */
    rc = ES_ENOMEM;
    if (hash_reserve(e, n) != ES_OK) goto drop_new;
    copies = calloc((size_t)n, sizeof *copies);
    if (!copies) goto drop_new;
    for (int i = 0; i < n; i++) {
        copies[i].key = strdup(fields[i].key);
        copies[i].value = strdup(fields[i].value);
        if (!copies[i].key || !copies[i].value) goto free_copies;
    }
    for (int i = 0; i < n; i++)
        hash_put(e, copies[i].key, copies[i].value);
    free(copies);
    if (ttl_ms > 0) e->expire_at = deadline(o.now, ttl_ms);
    if (created)
        ks_insert(o.ks, e);
    else
        ks_account(o.ks, e);
    rc = ES_OK;
    goto unlock;

free_copies:
    es_kv_free(copies, n);
drop_new:
    if (created) entry_free(e);
unlock:
    op_end(&o);
    return rc;
}

static int local_hgetall(void *ctx, const char *key, es_kv **fields, int *n)
{
    op o;
    int rc = ES_OK;
    op_begin(&o, ctx, key, false);
    entry *e = op_lookup(&o);
    if (!e) {
        rc = ES_ENOTFOUND;
        goto unlock;
    }
    if (e->kind != K_HASH) {
        rc = ES_EINVAL;
        goto unlock;
    }
    int cnt = e->v.h.n;
    es_kv *out = calloc((size_t)cnt, sizeof *out);
    if (!out) {
        rc = ES_ENOMEM;
        goto unlock;
    }
    for (int i = 0; i < cnt; i++) {
        out[i].key = strdup(e->v.h.f[i].key);
        out[i].value = strdup(e->v.h.f[i].value);
        if (!out[i].key || !out[i].value) {
            es_kv_free(out, cnt);
            rc = ES_ENOMEM;
            goto unlock;
        }
    }
    *fields = out;
    *n = cnt;
unlock:
    op_end(&o);
    return rc;
}

static int local_hincr(void *ctx, const char *key, const char *field, int64_t by, int64_t *out)
{
    op o;
    int rc;
    entry *e = NULL;
    bool created = false;
    char *fkey = NULL, *fval = NULL;
    op_begin(&o, ctx, key, true);
    rc = ks_room(o.ks, sizeof(entry) + o.klen + sizeof(es_kv) + strlen(field) + 24, o.now);
    if (rc != ES_OK) goto unlock;
    rc = hash_for_write(&o, &e, &created);
    if (rc != ES_OK) goto unlock;
    int64_t cur = 0, next;
    int i = hash_find(e, field);
    if (i >= 0 && es_parse_i64(e->v.h.f[i].value, INT64_MIN, INT64_MAX, &cur) != ES_OK) {
        rc = ES_EINVAL;
        goto drop_new;
    }
    if (__builtin_add_overflow(cur, by, &next)) {
        rc = ES_EINVAL;
        goto drop_new;
    }
    char num[24];
    snprintf(num, sizeof num, "%lld", (long long)next);
    rc = ES_ENOMEM;
    if (hash_reserve(e, 1) != ES_OK) goto drop_new;
    fkey = strdup(field);
    fval = strdup(num);
    if (!fkey || !fval) goto free_strings;
    hash_put(e, fkey, fval);
    if (created)
        ks_insert(o.ks, e);
    else
        ks_account(o.ks, e);
    *out = next;
    rc = ES_OK;
    goto unlock;

free_strings:
    free(fkey);
    free(fval);
drop_new:
    if (created) entry_free(e);
unlock:
    op_end(&o);
    return rc;
}

/* ------------------------------------------------------------ locks */

static bool held_by(const entry *e, const char *owner)
{
    return e->kind == K_STR && e->v.str.len == strlen(owner) &&
           memcmp(e->v.str.data, owner, e->v.str.len) == 0;
}

static int local_lock(void *ctx, const char *key, const char *owner, int64_t ttl_ms)
{
    op o;
    int rc = ES_OK;
    op_begin(&o, ctx, key, true);
    entry *e = op_lookup(&o);
    if (e) {
        /* Held (by anyone, or any other value under that key) and live. */
        if (held_by(e, owner))
            e->expire_at = deadline(o.now, ttl_ms);
        else
            rc = ES_ECONFLICT;
        goto unlock;
    }
    size_t olen = strlen(owner);
    rc = ks_room(o.ks, sizeof(entry) + o.klen + olen + 2, o.now);
    if (rc != ES_OK) goto unlock;
    rc = ES_ENOMEM;
    e = entry_new(key, o.klen, o.h, K_STR);
    if (!e) goto unlock;
    e->v.str.data = strdup(owner);
    if (!e->v.str.data) goto free_entry;
    e->v.str.len = olen;
    e->expire_at = deadline(o.now, ttl_ms);
    ks_insert(o.ks, e);
    rc = ES_OK;
    goto unlock;

free_entry:
    entry_free(e);
unlock:
    op_end(&o);
    return rc;
}

static int local_unlock(void *ctx, const char *key, const char *owner)
{
    op o;
    int rc = ES_ECONFLICT;
    op_begin(&o, ctx, key, true);
    entry **slot = ks_slot(o.ks, key, o.klen, o.h);
    if (slot && !expired(*slot, o.now) && held_by(*slot, owner)) {
        ks_remove(o.ks, slot);
        rc = ES_OK;
    }
    op_end(&o);
    return rc;
}

/* ------------------------------------------------------------ publish/subscribe */

static bool sub_matches(const local_sub *s, const char *channel)
{
    if (s->prefix) return strncmp(channel, s->pattern, s->plen) == 0;
    return strcmp(channel, s->pattern) == 0;
}

static event *queue_pop(pubsub *ps)
{
    event *ev = ps->head;
    if (!ev) return NULL;
    ps->head = ev->next;
    if (!ps->head) ps->tail = NULL;
    ps->qlen--;
    ps->qbytes -= ev->size;
    return ev;
}

static int local_publish(void *ctx, const char *channel, const char *msg, size_t len)
{
    local *l = ctx;
    pubsub *ps = &l->ps;
    size_t clen = strlen(channel);
    size_t size = sizeof(event) + len + clen + 2;
    if (size > LOCAL_QUEUE_MAX_BYTES) {
        es_warn(COMP, "message of %zu bytes on '%s' exceeds the queue bound (%zu bytes)", len,
                channel, LOCAL_QUEUE_MAX_BYTES);
        return ES_ELIMIT;
    }
    pthread_mutex_lock(&ps->mu);
    /* Nobody listening: nothing to queue (Redis drops it too). */
    bool any = false;
    for (local_sub *s = ps->subs; s && !any; s = s->next)
        any = !s->dead && sub_matches(s, channel);
    if (!any || ps->stopping) {
        pthread_mutex_unlock(&ps->mu);
        return ES_OK;
    }
    event *ev = malloc(size);
    if (!ev) {
        pthread_mutex_unlock(&ps->mu);
        return ES_ENOMEM;
    }
    ev->next = NULL;
    ev->len = len;
    ev->size = size;
    memcpy(ev->data, msg, len);
    ev->data[len] = 0;
    ev->channel = ev->data + len + 1;
    memcpy(ev->channel, channel, clen + 1);

    uint64_t dropped = 0;
    while (ps->head && (ps->qlen >= LOCAL_QUEUE_MAX || ps->qbytes + size > LOCAL_QUEUE_MAX_BYTES)) {
        free(queue_pop(ps));
        dropped++;
    }
    if (dropped) {
        ps->drops += dropped;
        int64_t now = es_mono_ms();
        if (ps->drop_warned_ms == 0 || now - ps->drop_warned_ms >= WARN_INTERVAL_MS) {
            ps->drop_warned_ms = now;
            es_warn(COMP,
                    "notification queue full (%d messages): dropped the oldest, %llu dropped so "
                    "far; a subscriber is too slow",
                    LOCAL_QUEUE_MAX, (unsigned long long)ps->drops);
        }
    }
    ev->seq = ++ps->seq;
    if (ps->tail)
        ps->tail->next = ev;
    else
        ps->head = ev;
    ps->tail = ev;
    ps->qlen++;
    ps->qbytes += size;
    pthread_cond_signal(&ps->wake);
    pthread_mutex_unlock(&ps->mu);
    return ES_OK;
}

static int local_subscribe(void *ctx, const char *channel, es_cache_msg_fn fn, void *arg,
                           void **out)
{
    local *l = ctx;
    pubsub *ps = &l->ps;
    size_t clen = strlen(channel);
    local_sub *s = calloc(1, sizeof *s + clen + 1);
    if (!s) return ES_ENOMEM;
    s->l = l;
    s->fn = fn;
    s->arg = arg;
    s->prefix = channel[clen - 1] == '*';
    s->plen = s->prefix ? clen - 1 : clen;
    memcpy(s->pattern, channel, s->plen);
    s->pattern[s->plen] = 0;

    pthread_mutex_lock(&ps->mu);
    s->since = ps->seq;
    /* At the end of the list: subscribers are called in subscription order. */
    local_sub **p = &ps->subs;
    while (*p)
        p = &(*p)->next;
    *p = s;
    pthread_mutex_unlock(&ps->mu);
    *out = s;
    return ES_OK;
}

static void subs_unlink(pubsub *ps, local_sub *s)
{
    for (local_sub **p = &ps->subs; *p; p = &(*p)->next) {
        if (*p == s) {
            *p = s->next;
            return;
        }
    }
}

static void local_unsubscribe(void *sub)
{
    local_sub *s = sub;
    pubsub *ps = &s->l->ps;
    pthread_mutex_lock(&ps->mu);
    s->dead = true;
    if (ps->running == s && pthread_equal(pthread_self(), ps->thread)) {
        /* From inside its own callback: waiting would wait for ourselves.
         * The dispatcher frees it once the callback returns. */
        s->self_freed = true;
        pthread_mutex_unlock(&ps->mu);
        return;
    }
    /* A callback in progress finishes before we return; `dead` keeps the
     * dispatcher from starting another. */
    while (ps->running == s)
        pthread_cond_wait(&ps->idle, &ps->mu);
    subs_unlink(ps, s);
    pthread_mutex_unlock(&ps->mu);
    free(s);
}

/* Calls every subscriber of ev.  Runs with ps->mu held; drops it around each
 * callback, during which `running` keeps that subscription (and so our place
 * in the list) from being unlinked. */
static void dispatch(pubsub *ps, const event *ev)
{
    local_sub *s = ps->subs;
    while (s) {
        if (s->dead || ev->seq <= s->since || !sub_matches(s, ev->channel)) {
            s = s->next;
            continue;
        }
        ps->running = s;
        pthread_mutex_unlock(&ps->mu);
        s->fn(s->arg, ev->channel, ev->data, ev->len);
        pthread_mutex_lock(&ps->mu);
        ps->running = NULL;
        local_sub *next = s->next;
        if (s->self_freed) {
            subs_unlink(ps, s);
            free(s);
        }
        pthread_cond_broadcast(&ps->idle);
        s = next;
    }
}

static void keyspace_tick(keyspace *ks)
{
    pthread_mutex_lock(&ks->mu);
    ks_sweep(ks, es_mono_ms(),
             ks->nbuckets / 10 > SWEEP_PER_TICK ? ks->nbuckets / 10 : SWEEP_PER_TICK);
    /* Give memory back once most keys are gone. */
    if (ks->nbuckets > MIN_BUCKETS && ks->count < ks->nbuckets / 8) ks_resize(ks, ks->nbuckets / 2);
    pthread_mutex_unlock(&ks->mu);
}

static void *dispatcher_main(void *arg)
{
    local *l = arg;
    pubsub *ps = &l->ps;
    struct timespec next_tick;
    clock_gettime(CLOCK_MONOTONIC, &next_tick);
    next_tick.tv_sec += SWEEP_TICK_MS / 1000;

    pthread_mutex_lock(&ps->mu);
    while (!ps->stopping) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > next_tick.tv_sec ||
            (now.tv_sec == next_tick.tv_sec && now.tv_nsec >= next_tick.tv_nsec)) {
            pthread_mutex_unlock(&ps->mu);
            keyspace_tick(&l->ks);
            pthread_mutex_lock(&ps->mu);
            next_tick = now;
            next_tick.tv_sec += SWEEP_TICK_MS / 1000;
            continue;
        }
        event *ev = queue_pop(ps);
        if (!ev) {
            pthread_cond_timedwait(&ps->wake, &ps->mu, &next_tick);
            continue;
        }
        dispatch(ps, ev);
        free(ev);
    }
    pthread_mutex_unlock(&ps->mu);
    return NULL;
}

/* ------------------------------------------------------------ lifecycle */

static int local_open(const char *url, const es_config *cfg, void **ctx)
{
    (void)url; /* "local:" and anything after it: nothing to configure yet */
    (void)cfg;
    int rc = ES_ENOMEM;
    local *l = calloc(1, sizeof *l);
    if (!l) return ES_ENOMEM;
    keyspace *ks = &l->ks;
    pubsub *ps = &l->ps;
    uint64_t key[2];
    if (es_random(key, sizeof key) != ES_OK) {
        es_error(COMP, "no random key for the local cache's hash table");
        rc = ES_EIO;
        goto free_local;
    }
    ks->k0 = key[0];
    ks->k1 = key[1];
    ks->nbuckets = MIN_BUCKETS;
    ks->buckets = calloc(ks->nbuckets, sizeof *ks->buckets);
    if (!ks->buckets) goto free_local;
    pthread_mutex_init(&ks->mu, NULL);
    pthread_mutex_init(&ps->mu, NULL);
    pthread_cond_init(&ps->idle, NULL);
    es_cond_init(&ps->wake);
    int err = pthread_create(&ps->thread, NULL, dispatcher_main, l);
    if (err != 0) {
        es_error(COMP, "cannot start the local cache's thread: %s", strerror(err));
        rc = ES_EAGAIN;
        goto destroy_sync;
    }
    pthread_setname_np(ps->thread, "es-cache");
    *ctx = l;
    return ES_OK;

destroy_sync:
    pthread_cond_destroy(&ps->wake);
    pthread_cond_destroy(&ps->idle);
    pthread_mutex_destroy(&ps->mu);
    pthread_mutex_destroy(&ks->mu);
    free(ks->buckets);
free_local:
    free(l);
    return rc;
}

static void local_close(void *ctx)
{
    local *l = ctx;
    if (!l) return;
    keyspace *ks = &l->ks;
    pubsub *ps = &l->ps;

    pthread_mutex_lock(&ps->mu);
    ps->stopping = true;
    pthread_cond_signal(&ps->wake);
    pthread_mutex_unlock(&ps->mu);
    pthread_join(ps->thread, NULL);

    for (event *ev = queue_pop(ps); ev; ev = queue_pop(ps))
        free(ev);
    int left = 0;
    while (ps->subs) {
        local_sub *s = ps->subs;
        ps->subs = s->next;
        free(s);
        left++;
    }
    if (left) es_warn(COMP, "closing the local cache with %d subscriptions still open", left);
    for (size_t i = 0; i < ks->nbuckets; i++) {
        while (ks->buckets[i])
            ks_remove(ks, &ks->buckets[i]);
    }
    free(ks->buckets);
    pthread_cond_destroy(&ps->wake);
    pthread_cond_destroy(&ps->idle);
    pthread_mutex_destroy(&ps->mu);
    pthread_mutex_destroy(&ks->mu);
    free(l);
}

static int local_ping(void *ctx)
{
    (void)ctx;
    return ES_OK;
}

const es_cache_ops es_cache_local = {
    .name = "local",
    .scheme = "local:",
    .open = local_open,
    .close = local_close,
    .get = local_get,
    .set = local_set,
    .del = local_del,
    .incr = local_incr,
    .hset = local_hset,
    .hgetall = local_hgetall,
    .hincr = local_hincr,
    .lock = local_lock,
    .unlock = local_unlock,
    .publish = local_publish,
    .subscribe = local_subscribe,
    .unsubscribe = local_unsubscribe,
    .ping = local_ping,
};
