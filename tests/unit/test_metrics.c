/* test_metrics.c - the registry and its Prometheus text. */
#include <pthread.h>

#include "testutil.h"

#include "esteira/err.h"
#include "esteira/metrics.h"

static char *render(void)
{
    es_buf b;
    es_buf_init(&b, 0);
    assert_int_equal(es_metrics_render(&b), ES_OK);
    return es_buf_steal(&b);
}

static int reset(void **st)
{
    (void)st;
    es_metrics_reset();
    return 0;
}

static void test_counter(void **st)
{
    (void)st;
    es_metric_define("jobs_total", ES_METRIC_COUNTER, "Jobs run", NULL, 0);
    es_metric_add("jobs_total", "kind=\"csv\"", 1);
    es_metric_add("jobs_total", "kind=\"csv\"", 2);
    es_metric_add("jobs_total", "kind=\"pdf\"", 0.5);
    char *s = render();
    assert_string_equal(s, "# HELP jobs_total Jobs run\n"
                           "# TYPE jobs_total counter\n"
                           "jobs_total{kind=\"csv\"} 3\n"
                           "jobs_total{kind=\"pdf\"} 0.5\n");
    free(s);
}

static void test_gauge_without_labels(void **st)
{
    (void)st;
    es_metric_define("queue_depth", ES_METRIC_GAUGE, "Messages waiting\nin the queue \\ now", NULL,
                     0);
    es_metric_set("queue_depth", NULL, 10);
    es_metric_add("queue_depth", "", -3); /* a gauge goes both ways */
    es_metric_set("temp", "", -1.25);     /* used without a define: a gauge */
    char *s = render();
    assert_string_equal(s, "# HELP queue_depth Messages waiting\\nin the queue \\\\ now\n"
                           "# TYPE queue_depth gauge\n"
                           "queue_depth 7\n"
                           "# HELP temp \n"
                           "# TYPE temp gauge\n"
                           "temp -1.25\n");
    free(s);
}

static void test_histogram(void **st)
{
    (void)st;
    const double b[] = {1, 0.1, 0.5}; /* given out of order */
    es_metric_define("lat_seconds", ES_METRIC_HISTOGRAM, "Latency", b, 3);
    es_metric_observe("lat_seconds", "route=\"/x\"", 0.05);
    es_metric_observe("lat_seconds", "route=\"/x\"", 0.1); /* on a bound: counted in it */
    es_metric_observe("lat_seconds", "route=\"/x\"", 0.7);
    es_metric_observe("lat_seconds", "route=\"/x\"", 3);
    es_metric_observe("lat_seconds", "", 0.2);
    char *s = render();
    assert_string_equal(s, "# HELP lat_seconds Latency\n"
                           "# TYPE lat_seconds histogram\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.1\"} 2\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.5\"} 2\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"1\"} 3\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
                           "lat_seconds_sum{route=\"/x\"} 3.85\n"
                           "lat_seconds_count{route=\"/x\"} 4\n"
                           "lat_seconds_bucket{le=\"0.1\"} 0\n"
                           "lat_seconds_bucket{le=\"0.5\"} 1\n"
                           "lat_seconds_bucket{le=\"1\"} 1\n"
                           "lat_seconds_bucket{le=\"+Inf\"} 1\n"
                           "lat_seconds_sum 0.2\n"
                           "lat_seconds_count 1\n");
    free(s);
    /* a counter update on a histogram is ignored, not a second series type */
    es_metric_add("lat_seconds", "route=\"/x\"", 1);
    s = render();
    assert_non_null(strstr(s, "lat_seconds_count{route=\"/x\"} 4\n"));
    free(s);
}

static void test_order_and_define_once(void **st)
{
    (void)st;
    es_metric_define("b_total", ES_METRIC_COUNTER, "B", NULL, 0);
    es_metric_define("a_total", ES_METRIC_COUNTER, "A", NULL, 0);
    es_metric_define("b_total", ES_METRIC_GAUGE, "other", NULL, 0); /* ignored */
    es_metric_add("a_total", NULL, 1);
    es_metric_add("b_total", NULL, 2);
    char *s = render();
    /* definition order, and the first definition stands */
    assert_string_equal(s, "# HELP b_total B\n# TYPE b_total counter\nb_total 2\n"
                           "# HELP a_total A\n# TYPE a_total counter\na_total 1\n");
    free(s);
    es_metrics_reset();
    s = render();
    assert_string_equal(s, "");
    free(s);
}

static void test_label_escape(void **st)
{
    (void)st;
    char out[64];
    es_metric_label_escape("a\"b\\c\nd", out, sizeof out);
    assert_string_equal(out, "a\\\"b\\\\c\\nd");
    es_metric_label_escape("/v1/jobs/{id}", out, sizeof out);
    assert_string_equal(out, "/v1/jobs/{id}");
    es_metric_label_escape(NULL, out, sizeof out);
    assert_string_equal(out, "");
    /* cut short, but never in the middle of an escape */
    es_metric_label_escape("ab\"cd", out, 4);
    assert_string_equal(out, "ab");
    es_metric_label_escape("abcdef", out, 4);
    assert_string_equal(out, "abc");

    char labels[128];
    es_metric_label_escape("say \"hi\"", out, sizeof out);
    snprintf(labels, sizeof labels, "msg=\"%s\"", out);
    es_metric_add("escaped_total", labels, 1);
    char *s = render();
    assert_non_null(strstr(s, "escaped_total{msg=\"say \\\"hi\\\"\"} 1\n"));
    free(s);
}

#define THREADS 4
#define ADDS    20000

static void *adder(void *arg)
{
    (void)arg;
    for (int i = 0; i < ADDS; i++) {
        es_metric_add("race_total", "t=\"x\"", 1);
        es_metric_observe("race_seconds", "", 0.001);
    }
    return NULL;
}

static void test_threads(void **st)
{
    (void)st;
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, adder, NULL);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    char *s = render();
    char want[64];
    snprintf(want, sizeof want, "race_total{t=\"x\"} %d\n", THREADS * ADDS);
    assert_non_null(strstr(s, want));
    snprintf(want, sizeof want, "race_seconds_count %d\n", THREADS * ADDS);
    assert_non_null(strstr(s, want));
    /* default buckets when observed without a define */
    assert_non_null(strstr(s, "race_seconds_bucket{le=\"0.005\"}"));
    free(s);
}

static void test_many_series(void **st)
{
    (void)st;
    char labels[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(labels, sizeof labels, "i=\"%d\"", i);
        es_metric_add("wide_total", labels, i);
    }
    char *s = render();
    assert_non_null(strstr(s, "wide_total{i=\"0\"} 0\n"));
    assert_non_null(strstr(s, "wide_total{i=\"2999\"} 2999\n"));
    free(s);
    /* render into a bounded buffer: ES_ELIMIT, not an overrun */
    es_buf b;
    es_buf_init(&b, 1024);
    assert_int_equal(es_metrics_render(&b), ES_ELIMIT);
    assert_true(b.len <= 1024);
    es_buf_finish(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_counter, reset),
        cmocka_unit_test_setup(test_gauge_without_labels, reset),
        cmocka_unit_test_setup(test_histogram, reset),
        cmocka_unit_test_setup(test_order_and_define_once, reset),
        cmocka_unit_test_setup(test_label_escape, reset),
        cmocka_unit_test_setup(test_threads, reset),
        cmocka_unit_test_setup(test_many_series, reset),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    es_metrics_reset();
    return rc;
}
