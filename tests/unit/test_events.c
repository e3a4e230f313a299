/* test_events.c - one event checked and turned into its COPY row: the row's
 * exact bytes, every problem named, ids, times and bounds. */
#include "testutil.h"

#include "esteira/err.h"
#include "esteira/events.h"
#include "esteira/json.h"
#include "esteira/util.h"

static const char *const types[] = {"view", "purchase", "add_to_cart"};
static const es_event_rules rules = {.types = types, .ntypes = 3, .data_max = 40, .field_max = 4};
static const int64_t NOW = 1795000000000;

/* Checks text as an event: the row appended (or NULL) and the problems as
 * "field:problem;" in *problems (malloc'd). */
static int check(const char *text, char **row, char id[ES_UUID_LEN + 1], char **problems)
{
    json_t *v = json_loads(text, 0, NULL);
    assert_non_null(v);
    es_buf b;
    es_buf_init(&b, 0);
    json_t *errs = json_array();
    size_t type = 0;
    int rc = es_event_check(&rules, v, "acme", NOW, &b, id, &type, errs);
    es_buf p;
    es_buf_init(&p, 0);
    size_t i;
    json_t *e;
    json_array_foreach(errs, i, e)
        es_buf_printf(&p, "%s:%s;", json_string_value(json_object_get(e, "field")),
                      json_string_value(json_object_get(e, "problem")));
    *problems = es_buf_steal(&p);
    *row = b.len ? es_buf_steal(&b) : NULL;
    es_buf_finish(&b);
    json_decref(errs);
    json_decref(v);
    return rc;
}

static void test_row_is_copy_text(void **state)
{
    (void)state;
    char *row, *pr, id[ES_UUID_LEN + 1];
    assert_int_equal(check("{\"userId\":\"u\\t1\",\"eventType\":\"purchase\",\"sessionId\":\"s\","
                           "\"eventData\":{\"note\":\"a\\nb\",\"n\":1},"
                           "\"eventId\":\"0190F5E0-0000-7000-8000-00000000000A\","
                           "\"occurredAt\":\"2026-11-10T10:00:00.5+02:00\"}",
                           &row, id, &pr),
                     ES_OK);
    assert_string_equal(id, "0190f5e0-0000-7000-8000-00000000000a");
    /* tabs and newlines inside values are escaped; the JSON keeps its own \n */
    assert_string_equal(row, "acme\t0190f5e0-0000-7000-8000-00000000000a\tu\\t1\tpurchase\t"
                             "{\"note\":\"a\\\\nb\",\"n\":1}\ts\t1794297600500\t1795000000000\n");
    assert_string_equal(pr, "");
    free(row);
    free(pr);
}

static void test_defaults(void **state)
{
    (void)state;
    char *row, *pr, id[ES_UUID_LEN + 1];
    assert_int_equal(check("{\"userId\":\"u\",\"eventType\":\"view\",\"sessionId\":\"s\","
                           "\"eventData\":null,\"occurredAt\":1700000000123}",
                           &row, id, &pr),
                     ES_OK);
    assert_true(es_uuid_valid(id));
    assert_int_equal(id[14], '7'); /* a new UUIDv7 */
    char want[256];
    snprintf(want, sizeof want, "acme\t%s\tu\tview\t\\N\ts\t1700000000123\t1795000000000\n", id);
    assert_string_equal(row, want);
    free(row);
    free(pr);
}

static void test_every_problem_is_named(void **state)
{
    (void)state;
    char *row, *pr, id[ES_UUID_LEN + 1];
    assert_int_equal(check("{\"userId\":\"\",\"eventType\":\"fly\",\"eventData\":\"x\","
                           "\"sessionId\":5,\"eventId\":\"1234\",\"occurredAt\":\"tomorrow\","
                           "\"zz\":1}",
                           &row, id, &pr),
                     ES_EINVAL);
    assert_null(row);
    assert_non_null(strstr(pr, "zz:unknown field;"));
    assert_non_null(strstr(pr, "userId:must not be empty;"));
    assert_non_null(strstr(pr, "sessionId:must be a string;"));
    assert_non_null(
        strstr(pr, "eventType:unknown event type (one of: view, purchase, add_to_cart);"));
    assert_non_null(strstr(pr, "eventData:must be an object;"));
    assert_non_null(strstr(pr, "eventId:must be a UUID;"));
    assert_non_null(strstr(pr, "occurredAt:must be an RFC 3339 time"));
    free(pr);
    assert_int_equal(check("{}", &row, id, &pr), ES_EINVAL);
    assert_string_equal(pr, "userId:required;sessionId:required;eventType:required;");
    free(pr);
    assert_int_equal(check("[1]", &row, id, &pr), ES_EINVAL);
    assert_string_equal(pr, ":an event must be a JSON object;");
    free(pr);
}

static void test_bounds(void **state)
{
    (void)state;
    char *row, *pr, id[ES_UUID_LEN + 1];
    /* four characters, eight bytes: within field_max */
    assert_int_equal(check("{\"userId\":\"\\u00e9\\u00e9\\u00e9\\u00e9\",\"eventType\":\"view\","
                           "\"sessionId\":\"s\"}",
                           &row, id, &pr),
                     ES_OK);
    free(row);
    free(pr);
    assert_int_equal(check("{\"userId\":\"abcde\",\"eventType\":\"view\",\"sessionId\":\"s\","
                           "\"eventData\":{\"k\":\"0123456789012345678901234567890123456789\"}}",
                           &row, id, &pr),
                     ES_EINVAL);
    assert_string_equal(pr, "userId:longer than 4 characters;eventData:larger than 40 bytes;");
    free(pr);
    /* a day and a bit ahead is refused; a few hours is clock skew */
    assert_int_equal(check("{\"userId\":\"u\",\"eventType\":\"view\",\"sessionId\":\"s\","
                           "\"occurredAt\":1795090000000}",
                           &row, id, &pr),
                     ES_EINVAL);
    free(pr);
    assert_int_equal(check("{\"userId\":\"u\",\"eventType\":\"view\",\"sessionId\":\"s\","
                           "\"occurredAt\":1795010000000}",
                           &row, id, &pr),
                     ES_OK);
    free(row);
    free(pr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_row_is_copy_text),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_problem_is_named),
        cmocka_unit_test(test_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
