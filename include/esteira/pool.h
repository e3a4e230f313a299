/* pool.h - a bounded pool of reusable things (database connections): at
 * most `max` exist; a taker gets an idle one (the most recently returned, whose
 * caches are warm), or a free slot to open a new one in, or waits. */
#ifndef ESTEIRA_POOL_H
#define ESTEIRA_POOL_H

#include <pthread.h>
#include <stdint.h>

typedef struct es_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void **idle; /* a stack of idle items */
    int nidle, nopen, max;
} es_pool;

int es_pool_init(es_pool *p, int max);
void es_pool_finish(es_pool *p); /* the caller has closed every item (es_pool_pop_idle) */
/* ES_OK with *item an idle item, or *item NULL and a slot reserved for a new
 * one: the caller opens it, then keeps it (and es_pool_put()s it later) or, on
 * failure, es_pool_drop()s the slot.  ES_EAGAIN when nothing came free within
 * wait_ms. */
int es_pool_take(es_pool *p, int64_t wait_ms, void **item);
void es_pool_put(es_pool *p, void *item); /* back to the idle stack */
void es_pool_drop(es_pool *p);            /* an item (or a reserved slot) is gone */
/* Removes and returns an idle item, or NULL (closing the pool). */
void *es_pool_pop_idle(es_pool *p);
/* Items in use (taken and not put back or dropped). */
int es_pool_in_use(es_pool *p);

#endif
