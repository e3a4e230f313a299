/* events_priv.h - what events.c (accepting, reading) and event_store.c
 * (the flushers, the dead-letter kind) share.  Not part of the contract. */
#ifndef ESTEIRA_EVENTS_PRIV_H
#define ESTEIRA_EVENTS_PRIV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "esteira/app.h"
#include "esteira/events.h"

typedef struct ev_group ev_group;

struct es_events {
    es_app *app;
    const es_config *cfg;
    char **types; /* from ESTEIRA_EVENTS_TYPES */
    size_t ntypes;
    es_event_rules rules;
    char **accepted_labels; /* 'type="view"' per type, for metrics */

    /* accepting: groups of rows waiting for a publisher, oldest first */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ev_group *head, *tail;
    size_t pending_bytes;
    bool closing; /* no new submissions; publishers leave once the list is empty */
    pthread_t *pubs;
    int npubs;

    /* storing */
    atomic_bool flush_stop;
    pthread_t *flushers;
    int nflushers;
};

/* event_store.c */
int ev_store_start(es_events *ev);
void ev_store_stop(es_events *ev);
int ev_store_register(es_events *ev);

/* events.c: the metrics both sides define */
void ev_metrics_define(void);

#define EV_COMP "events"

#endif
