/* pool.c - the bounded pool of pool.h. */
#include "esteira/pool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>

#include "esteira/err.h"
#include "esteira/util.h"

int es_pool_init(es_pool *p, int max)
{
    p->idle = calloc((size_t)max, sizeof *p->idle);
    if (!p->idle) return ES_ENOMEM;
    p->nidle = p->nopen = 0;
    p->max = max;
    pthread_mutex_init(&p->mu, NULL);
    if (es_cond_init(&p->cv)) {
        pthread_mutex_destroy(&p->mu);
        free(p->idle);
        return ES_ENOMEM;
    }
    return ES_OK;
}

void es_pool_finish(es_pool *p)
{
    if (!p->idle) return;
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->idle);
    p->idle = NULL;
}

int es_pool_take(es_pool *p, int64_t wait_ms, void **item)
{
    *item = NULL;
    struct timespec dl;
    bool timed = false;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->nidle > 0) {
            *item = p->idle[--p->nidle];
            break;
        }
        if (p->nopen < p->max) {
            p->nopen++; /* the slot is the caller's while it opens, outside the lock */
            break;
        }
        if (!timed) {
            es_deadline(&dl, wait_ms);
            timed = true;
        }
        if (pthread_cond_timedwait(&p->cv, &p->mu, &dl) == ETIMEDOUT && p->nidle == 0 &&
            p->nopen >= p->max) {
            pthread_mutex_unlock(&p->mu);
            return ES_EAGAIN;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return ES_OK;
}

void es_pool_put(es_pool *p, void *item)
{
    pthread_mutex_lock(&p->mu);
    p->idle[p->nidle++] = item; /* nidle < nopen <= max: there is room */
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void es_pool_drop(es_pool *p)
{
    pthread_mutex_lock(&p->mu);
    p->nopen--;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

void *es_pool_pop_idle(es_pool *p)
{
    void *item = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->nidle > 0) {
        item = p->idle[--p->nidle];
        p->nopen--;
    }
    pthread_mutex_unlock(&p->mu);
    return item;
}

int es_pool_in_use(es_pool *p)
{
    pthread_mutex_lock(&p->mu);
    int n = p->nopen - p->nidle;
    pthread_mutex_unlock(&p->mu);
    return n;
}
