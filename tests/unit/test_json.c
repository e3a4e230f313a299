/* test_json.c - bounded JSON parsing and the small helpers. */
#include "testutil.h"

#include "esteira/err.h"
#include "esteira/json.h"

static int parse(const char *s, int depth, json_t **v, char *err, size_t errlen)
{
    return es_json_parse(s, strlen(s), depth, v, err, errlen);
}

static void test_valid(void **st)
{
    (void)st;
    json_t *v;
    char err[200];
    assert_int_equal(parse("{\"a\":[1,2,{\"b\":\"x\"}],\"n\":null}", 8, &v, err, sizeof err),
                     ES_OK);
    assert_true(json_is_object(v));
    assert_int_equal(json_array_size(json_object_get(v, "a")), 3);
    json_decref(v);
    /* any single value, not only containers */
    assert_int_equal(parse(" 42 ", 1, &v, err, sizeof err), ES_OK);
    assert_int_equal(json_integer_value(v), 42);
    json_decref(v);
    assert_int_equal(parse("\"s\"", 1, &v, err, sizeof err), ES_OK);
    assert_string_equal(json_string_value(v), "s");
    json_decref(v);
}

static void test_depth(void **st)
{
    (void)st;
    json_t *v = (json_t *)1;
    char err[200];
    /* exactly at the limit */
    assert_int_equal(parse("[[[1]]]", 3, &v, err, sizeof err), ES_OK);
    json_decref(v);
    assert_int_equal(parse("{\"a\":{\"b\":[1]}}", 3, &v, err, sizeof err), ES_OK);
    json_decref(v);
    /* one deeper */
    v = (json_t *)1;
    assert_int_equal(parse("[[[[1]]]]", 3, &v, err, sizeof err), ES_ELIMIT);
    assert_null(v);
    assert_non_null(strstr(err, "deeper than 3"));
    assert_int_equal(parse("{\"a\":{\"b\":[{}]}}", 3, &v, err, sizeof err), ES_ELIMIT);
    /* siblings do not add up */
    assert_int_equal(parse("[[1],[2],[3],{\"a\":[4]}]", 3, &v, err, sizeof err), ES_OK);
    json_decref(v);
    /* brackets inside strings (and escaped quotes) are not nesting */
    assert_int_equal(parse("[\"[[[[[\\\"[[[[\",{\"k]\":\"{{{{\"}]", 2, &v, err, sizeof err), ES_OK);
    assert_string_equal(json_string_value(json_array_get(v, 0)), "[[[[[\"[[[[");
    json_decref(v);
    /* a deep bomb is refused before jansson sees it */
    size_t n = 100000;
    char *bomb = malloc(n + 1);
    memset(bomb, '[', n);
    bomb[n] = '\0';
    assert_int_equal(es_json_parse(bomb, n, 32, &v, err, sizeof err), ES_ELIMIT);
    free(bomb);
}

static void test_malformed_position(void **st)
{
    (void)st;
    json_t *v = (json_t *)1;
    char err[200];
    assert_int_equal(parse("{\n  \"a\": 1,\n  \"b\": tru\n}", 8, &v, err, sizeof err), ES_EINVAL);
    assert_null(v);
    assert_true(strncmp(err, "line 3 column ", 14) == 0);
    assert_non_null(strstr(err, ": "));
    assert_int_equal(parse("{\"a\" 1}", 8, &v, err, sizeof err), ES_EINVAL);
    assert_true(strncmp(err, "line 1 column 6: ", 17) == 0);
    assert_int_equal(parse("", 8, &v, err, sizeof err), ES_EINVAL);
    assert_true(strncmp(err, "line 1 ", 7) == 0);
    assert_int_equal(es_json_parse(NULL, 0, 8, &v, err, sizeof err), ES_EINVAL);
    /* invalid UTF-8 in a string */
    assert_int_equal(parse("[\"\xff\"]", 8, &v, err, sizeof err), ES_EINVAL);
    /* an encoded NUL in a string */
    assert_int_equal(parse("[\"a\\u0000b\"]", 8, &v, err, sizeof err), ES_EINVAL);
    /* the error buffer is optional and is cut, not overrun */
    assert_int_equal(parse("{", 8, &v, NULL, 0), ES_EINVAL);
    char tiny[8];
    assert_int_equal(parse("{", 8, &v, tiny, sizeof tiny), ES_EINVAL);
    assert_int_equal(strlen(tiny), 7);
}

static void test_duplicates(void **st)
{
    (void)st;
    json_t *v;
    char err[200];
    assert_int_equal(parse("{\"amount\":1,\"amount\":2}", 8, &v, err, sizeof err), ES_EINVAL);
    assert_non_null(strstr(err, "duplicate"));
    assert_int_equal(parse("{\"a\":{\"k\":1,\"k\":1}}", 8, &v, err, sizeof err), ES_EINVAL);
    /* the same key in two different objects is fine */
    assert_int_equal(parse("[{\"k\":1},{\"k\":2}]", 8, &v, err, sizeof err), ES_OK);
    json_decref(v);
}

static void test_trailing(void **st)
{
    (void)st;
    json_t *v = (json_t *)1;
    char err[200];
    assert_int_equal(parse("{\"a\":1} x", 8, &v, err, sizeof err), ES_EINVAL);
    assert_null(v);
    assert_non_null(strstr(err, "line 1 column"));
    assert_int_equal(parse("{} {}", 8, &v, err, sizeof err), ES_EINVAL);
    assert_int_equal(parse("[1]]", 8, &v, err, sizeof err), ES_EINVAL);
    /* whitespace after the value is allowed */
    assert_int_equal(parse("[1]\n\t ", 8, &v, err, sizeof err), ES_OK);
    json_decref(v);
    /* the length is what counts, not a NUL */
    assert_int_equal(es_json_parse("[1]garbage", 3, 8, &v, err, sizeof err), ES_OK);
    json_decref(v);
    assert_int_equal(es_json_parse("[1]\0x", 5, 8, &v, err, sizeof err), ES_EINVAL);
}

static void test_dump_and_getters(void **st)
{
    (void)st;
    json_t *o = json_pack("{s:s,s:I,s:f,s:[i,i]}", "name", "x y", "n", (json_int_t)1234567890123,
                          "r", 1.5, "l", 1, 2);
    char *s = es_json_dump(o);
    assert_non_null(s);
    assert_null(strstr(s, ", ")); /* compact: no spaces after separators */
    assert_null(strstr(s, ": "));
    assert_non_null(strstr(s, "\"name\":\"x y\""));
    free(s);
    json_t *seven = json_integer(7);
    s = es_json_dump(seven); /* scalars too */
    assert_string_equal(s, "7");
    free(s);
    json_decref(seven);

    assert_string_equal(es_json_str(o, "name"), "x y");
    assert_null(es_json_str(o, "n"));
    assert_null(es_json_str(o, "missing"));
    assert_null(es_json_str(NULL, "name"));
    assert_int_equal(es_json_int(o, "n", -1), 1234567890123LL);
    assert_int_equal(es_json_int(o, "r", -1), -1);
    assert_int_equal(es_json_int(o, "name", -2), -2);
    assert_int_equal(es_json_int(o, "missing", 9), 9);
    assert_int_equal(es_json_int(json_array_get(json_object_get(o, "l"), 0), "x", 5), 5);
    json_decref(o);
    assert_null(es_json_dump(NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_malformed_position),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_trailing),
        cmocka_unit_test(test_dump_and_getters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
