/* testutil.h - shared by the C tests (cmocka). */
#ifndef ESTEIRA_TESTUTIL_H
#define ESTEIRA_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A fresh temporary directory (removed by test_rmdir). */
static inline char *test_tmpdir(const char *tag)
{
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "%s/esteira-test-%s-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", tag);
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

static inline void test_rmdir(char *dir)
{
    if (!dir) return;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    free(dir);
}

/* Backend URLs for contract suites: the env var (space-separated list) or the default. */
static inline int test_urls(const char *env, const char *def, char urls[][512], int max)
{
    const char *v = getenv(env);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", v && *v ? v : def);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t && n < max;
         t = strtok_r(NULL, " ", &save))
        snprintf(urls[n++], 512, "%s", t);
    return n;
}

#endif
