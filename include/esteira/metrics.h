/* metrics.h - a process-wide registry rendered as Prometheus text.
 *
 * Series are identified by a metric name and a pre-formatted label set
 * ('route="/v1/jobs",method="GET",status="200"').  Updates are thread-safe and
 * cheap (a hash lookup under a mutex). */
#ifndef ESTEIRA_METRICS_H
#define ESTEIRA_METRICS_H

#include <stdint.h>

#include "esteira/util.h"

typedef enum { ES_METRIC_COUNTER, ES_METRIC_GAUGE, ES_METRIC_HISTOGRAM } es_metric_type;

/* Declares a metric (once, before use).  Histograms use the given upper bounds. */
void es_metric_define(const char *name, es_metric_type type, const char *help,
                      const double *buckets, int nbuckets);
void es_metric_add(const char *name, const char *labels, double v);
void es_metric_set(const char *name, const char *labels, double v);
void es_metric_observe(const char *name, const char *labels, double v);
/* Appends the text exposition format. */
int es_metrics_render(es_buf *out);
void es_metrics_reset(void); /* tests */

/* Escapes a label value ('"', '\\', '\n') into out. */
void es_metric_label_escape(const char *v, char *out, size_t len);

#endif
