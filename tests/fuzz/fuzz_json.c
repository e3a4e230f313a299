/* fuzz_json.c - es_json_parse on arbitrary bytes.
 *
 * The first byte picks the depth bound (1..64), the rest is the document.
 * Besides not crashing (jansson's recursion stays bounded by the pre-scan),
 * these properties are checked:
 *   - the answer is OK, EINVAL or ELIMIT; on failure *out is NULL and the
 *     error text is set ("line L column C: …" for EINVAL);
 *   - on OK, the compact dump parses again under the same bound to an equal
 *     value (what we accept, we can write back and read again). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    int depth = 1 + data[0] % 64;
    const char *doc = (const char *)data + 1;
    size_t len = size - 1;

    json_t *v = (json_t *)1;
    char err[160];
    int rc = es_json_parse(doc, len, depth, &v, err, sizeof err);
    if (rc != ES_OK) {
        if (v != NULL || err[0] == '\0') abort();
        if (rc == ES_EINVAL && strncmp(err, "line ", 5) != 0) abort();
        if (rc != ES_EINVAL && rc != ES_ELIMIT) abort();
        return 0;
    }
    if (!v) abort();
    char *s = es_json_dump(v);
    if (!s) abort();
    json_t *again = NULL;
    if (es_json_parse(s, strlen(s), depth, &again, err, sizeof err) != ES_OK) abort();
    if (!json_equal(v, again)) abort();
    json_decref(again);
    free(s);
    json_decref(v);
    return 0;
}
