/* router.c - matching a request path against the route table, and query
 * strings.
 *
 * Both functions are pure and allocate nothing: they run on every request and
 * are fuzzed on their own.  The path is checked as a whole before any route is
 * tried, so a hostile path is refused the same way whichever route it aims at:
 * at most ES_ROUTE_MAX_PATH bytes, starting with '/', every '%' followed by two
 * hex digits, no NUL (raw or encoded) and no "." or ".." segment - not even one
 * that only appears after decoding ("a%2F..%2Fb"), because a {rest*} value ends
 * up as a storage key. */
#include <stdbool.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/http.h"

#define ES_ROUTE_MAX_PATH 2048

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into out (outlen bytes, NUL-terminated); '+' is a
 * space only in query strings.  ES_EINVAL on a bad escape or an encoded NUL,
 * ES_ELIMIT when it does not fit. */
static int pct_decode(const char *s, size_t len, bool plus_is_space, char *out, size_t outlen,
                      size_t *outn)
{
    size_t o = 0;
    if (outlen == 0) return ES_ELIMIT;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= len) return ES_EINVAL;
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) return ES_EINVAL;
            c = (unsigned char)(hi << 4 | lo);
            if (c == 0) return ES_EINVAL;
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        } else if (c == 0) {
            return ES_EINVAL;
        }
        if (o + 1 >= outlen) return ES_ELIMIT;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    if (outn) *outn = o;
    return ES_OK;
}

/* "." or ".." anywhere among the '/'-separated pieces of a decoded segment. */
static bool has_dot_piece(const char *s, size_t len)
{
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i == len || s[i] == '/') {
            size_t n = i - start;
            if ((n == 1 && s[start] == '.') || (n == 2 && s[start] == '.' && s[start + 1] == '.'))
                return true;
            start = i + 1;
        }
    }
    return false;
}

static int check_path(const char *path)
{
    size_t len = strnlen(path, ES_ROUTE_MAX_PATH + 1);
    if (len > ES_ROUTE_MAX_PATH || len == 0 || path[0] != '/') return ES_EINVAL;
    char seg[ES_ROUTE_MAX_PATH + 1];
    const char *p = path + 1;
    for (;;) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        size_t dn;
        if (pct_decode(p, n, false, seg, sizeof seg, &dn) != ES_OK) return ES_EINVAL;
        if (has_dot_piece(seg, dn)) return ES_EINVAL;
        if (!end) break;
        p = end + 1;
    }
    return ES_OK;
}

/* Matches one route's pattern against an already checked path.  Returns the
 * number of literal segments matched (how specific the route is), or -1 when
 * it does not match; ES_EINVAL-worthy values (a parameter too long) count as
 * no match of this route but are reported through *too_long. */
static int match_pattern(const es_route *rt, const char *path, es_route_match *m, bool *too_long)
{
    const char *pp = rt->pattern, *sp = path;
    int literals = 0;
    m->nparams = 0;
    if (!pp || *pp != '/') return -1;
    for (;;) {
        /* both at a '/' */
        if (*pp != '/' || *sp != '/') return -1;
        pp++, sp++;
        const char *pend = strchr(pp, '/');
        size_t pn = pend ? (size_t)(pend - pp) : strlen(pp);
        const char *send = strchr(sp, '/');
        size_t sn = send ? (size_t)(send - sp) : strlen(sp);

        if (pn >= 2 && pp[0] == '{' && pp[pn - 1] == '}') {
            bool rest = pn >= 3 && pp[pn - 2] == '*';
            if (m->nparams >= ES_ROUTE_MAX_PARAMS) return -1;
            size_t rn = rest ? strlen(sp) : sn;
            if (rn == 0) return -1;      /* parameters are never empty */
            if (rest && pend) return -1; /* {rest*} must be last */
            int rc = pct_decode(sp, rn, false, m->params[m->nparams].value,
                                sizeof m->params[m->nparams].value, NULL);
            if (rc == ES_ELIMIT) {
                *too_long = true;
                return -1;
            }
            if (rc != ES_OK) return -1;
            m->params[m->nparams].name = pp + 1;
            m->params[m->nparams].name_len = pn - 2 - (rest ? 1 : 0);
            m->nparams++;
            if (rest) return literals;
        } else {
            char seg[ES_ROUTE_MAX_PATH + 1];
            size_t dn;
            if (pct_decode(sp, sn, false, seg, sizeof seg, &dn) != ES_OK) return -1;
            if (dn != pn || memcmp(seg, pp, pn) != 0) return -1;
            literals++;
        }
        pp += pn;
        sp += sn;
        if (*pp == '\0' && *sp == '\0') return literals;
        if (*pp == '\0' || *sp == '\0') return -1;
    }
}

static bool method_matches(const char *route_method, const char *method)
{
    if (!route_method || !method) return false;
    if (strcmp(route_method, method) == 0) return true;
    /* HEAD is GET without the body (libmicrohttpd drops the body itself). */
    return strcmp(method, "HEAD") == 0 && strcmp(route_method, "GET") == 0;
}

int es_route_find(const es_route *routes, size_t n, const char *method, const char *path,
                  es_route_match *m)
{
    memset(m, 0, sizeof *m);
    if (!path || !method) return ES_EINVAL;
    if (check_path(path) != ES_OK) return ES_EINVAL;

    es_route_match cand;
    int best = -1;
    bool too_long = false, other_method = false;
    for (size_t i = 0; i < n; i++) {
        memset(&cand, 0, sizeof cand);
        int score = match_pattern(&routes[i], path, &cand, &too_long);
        if (score < 0) continue;
        if (!method_matches(routes[i].method, method)) {
            other_method = true;
            continue;
        }
        /* The most literal segments wins ("/v1/uploads/presign" over
         * "/v1/uploads/{id}"); on a tie, the first in the table. */
        if (score > best) {
            best = score;
            cand.route = &routes[i];
            *m = cand;
        }
    }
    if (best >= 0) return ES_OK;
    memset(m, 0, sizeof *m);
    if (too_long) return ES_EINVAL;
    m->method_mismatch = other_method;
    return ES_ENOTFOUND;
}

/* Compares the decoded key k[0..klen) with name without decoding into memory;
 * a key with a bad escape equals nothing. */
static bool key_equals(const char *k, size_t klen, const char *name)
{
    size_t j = 0;
    for (size_t i = 0; i < klen; i++) {
        unsigned char c = (unsigned char)k[i];
        if (c == '%') {
            if (i + 2 >= klen) return false;
            int hi = hexval((unsigned char)k[i + 1]), lo = hexval((unsigned char)k[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (c == 0 || name[j] == '\0' || (unsigned char)name[j] != c) return false;
        j++;
    }
    return name[j] == '\0';
}

int es_query_get(const char *query, const char *name, char *out, size_t outlen)
{
    if (!query || !name || !*name) return ES_ENOTFOUND;
    const char *p = query;
    if (*p == '?') p++;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t klen = eq ? (size_t)(eq - p) : n;
        if (klen > 0 && key_equals(p, klen, name)) {
            const char *v = eq ? eq + 1 : p + n;
            size_t vlen = eq ? n - klen - 1 : 0;
            if (!out || outlen == 0) return ES_ELIMIT;
            return pct_decode(v, vlen, true, out, outlen, NULL);
        }
        if (!amp) break;
        p = amp + 1;
    }
    return ES_ENOTFOUND;
}
