/* json.h - JSON from clients: parsed with jansson after a bounded pre-scan
 * (jansson has no depth or size option of its own). */
#ifndef ESTEIRA_JSON_H
#define ESTEIRA_JSON_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* Parses exactly one JSON value of at most max_depth nesting.  On failure
 * returns ES_EINVAL (malformed: err holds "line L column C: …") or ES_ELIMIT
 * (too deep). */
int es_json_parse(const char *data, size_t len, int max_depth, json_t **out, char *err,
                  size_t errlen);
/* Serialises compactly into a malloc'd string. */
char *es_json_dump(const json_t *v);
/* Convenience getters: NULL / def when absent or of another type. */
const char *es_json_str(const json_t *obj, const char *key);
int64_t es_json_int(const json_t *obj, const char *key, int64_t def);

#endif
