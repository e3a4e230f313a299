/* json.c - client JSON, parsed by jansson behind a depth pre-scan.
 *
 * jansson 2.14 recurses once per nesting level and only stops at its own
 * compile-time limit (2048), so a body of "[[[[…" costs a deep stack and a
 * tree of that many nodes before any handler sees it.  The pre-scan counts
 * brackets outside strings in one pass and refuses the body before jansson
 * runs.  Duplicate keys are refused too: two "amount" fields in one object
 * would otherwise mean whichever jansson kept, and a validating proxy in front
 * of us might have read the other one. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/json.h"

static int depth_exceeds(const char *data, size_t len, int max_depth)
{
    int depth = 0;
    bool in_str = false, esc = false;
    for (size_t i = 0; i < len; i++) {
        char c = data[i];
        if (in_str) {
            if (esc)
                esc = false;
            else if (c == '\\')
                esc = true;
            else if (c == '"')
                in_str = false;
            continue;
        }
        switch (c) {
        case '"': in_str = true; break;
        case '[':
        case '{':
            if (++depth > max_depth) return 1;
            break;
        case ']':
        case '}':
            if (depth > 0) depth--;
            break;
        default: break;
        }
    }
    return 0;
}

int es_json_parse(const char *data, size_t len, int max_depth, json_t **out, char *err,
                  size_t errlen)
{
    *out = NULL;
    if (err && errlen) err[0] = '\0';
    if (max_depth < 1) max_depth = 1;
    if (!data) {
        data = "";
        len = 0;
    }
    if (depth_exceeds(data, len, max_depth)) {
        if (err && errlen) snprintf(err, errlen, "nesting deeper than %d levels", max_depth);
        return ES_ELIMIT;
    }
    json_error_t je;
    json_t *v = json_loadb(data, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        if (err && errlen)
            snprintf(err, errlen, "line %d column %d: %s", je.line, je.column, je.text);
        return ES_EINVAL;
    }
    *out = v;
    return ES_OK;
}

char *es_json_dump(const json_t *v)
{
    if (!v) return NULL;
    return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
}

const char *es_json_str(const json_t *obj, const char *key)
{
    if (!json_is_object(obj) || !key) return NULL;
    return json_string_value(json_object_get(obj, key));
}

int64_t es_json_int(const json_t *obj, const char *key, int64_t def)
{
    if (!json_is_object(obj) || !key) return def;
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v)) return def;
    return (int64_t)json_integer_value(v);
}
