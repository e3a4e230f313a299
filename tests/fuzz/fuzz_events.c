/* fuzz_events.c - es_event_check on any JSON a client may send.
 *
 * The input is parsed as the API parses a body (bounded depth); whatever it
 * holds goes through the event rules.  Checked:
 *   - the answer is OK or EINVAL; EINVAL names at least one problem, each
 *     {field, problem} with both strings, and leaves the row as it was;
 *   - OK appends exactly one row: eight fields, seven raw tabs, one newline
 *     at its end and no other raw newline (COPY text), whose fields decode to
 *     the tenant, the id given back (a lower-case UUID), an accepted type,
 *     and whole-number times;
 *   - checking the same value again gives the same answer (and, when the
 *     event carries an eventId, the same row). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "esteira/err.h"
#include "esteira/events.h"
#include "esteira/json.h"
#include "esteira/store.h"
#include "esteira/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const types[] = {"view", "purchase", "login"};
static const es_event_rules rules = {.types = types, .ntypes = 3, .data_max = 256, .field_max = 16};

static void check_row(const char *row, size_t len, const char *id)
{
    if (len == 0 || row[len - 1] != '\n') abort();
    size_t tabs = 0;
    for (size_t i = 0; i < len - 1; i++) {
        if (row[i] == '\n' || row[i] == '\r') abort();
        tabs += row[i] == '\t';
    }
    if (tabs != ES_EVENT_NCOLS - 1) abort();
    char *copy = strndup(row, len - 1);
    if (!copy) return;
    char *fields[ES_EVENT_NCOLS];
    char *p = copy;
    for (int i = 0; i < ES_EVENT_NCOLS; i++) {
        fields[i] = p;
        char *t = strchr(p, '\t');
        if (t) *t = '\0', p = t + 1;
    }
    for (int i = 0; i < ES_EVENT_NCOLS; i++)
        if (strcmp(fields[i], "\\N") != 0)
            fields[i][es_copy_unescape(fields[i], strlen(fields[i]))] = 0;
    if (strcmp(fields[0], "tenant-1") != 0) abort();
    if (strcmp(fields[1], id) != 0 || !es_uuid_valid(id)) abort();
    for (const char *c = id; *c; c++)
        if (*c >= 'A' && *c <= 'F') abort();
    bool known = false;
    for (size_t i = 0; i < rules.ntypes; i++)
        known |= strcmp(fields[3], types[i]) == 0;
    if (!known) abort();
    int64_t v;
    if (es_parse_i64(fields[6], 0, INT64_MAX, &v) || es_parse_i64(fields[7], 0, INT64_MAX, &v))
        abort();
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *v = NULL;
    char err[256];
    if (es_json_parse((const char *)data, size, 32, &v, err, sizeof err) != ES_OK) return 0;
    es_buf row;
    es_buf_init(&row, 0);
    es_buf_append(&row, "x", 1); /* what was there before stays */
    json_t *errs = json_array();
    char id[ES_UUID_LEN + 1];
    size_t type = 99;
    const int64_t now = 1795000000000;
    int rc = es_event_check(&rules, v, "tenant-1", now, &row, id, &type, errs);
    if (rc == ES_OK) {
        if (json_array_size(errs) != 0 || type >= rules.ntypes) abort();
        check_row(row.data + 1, row.len - 1, id);
    } else if (rc == ES_EINVAL) {
        if (row.len != 1 || json_array_size(errs) == 0) abort();
        size_t i;
        json_t *e;
        json_array_foreach(errs, i, e) if (!json_is_string(json_object_get(e, "field")) ||
                                           !json_is_string(json_object_get(e, "problem"))) abort();
    } else if (rc != ES_ENOMEM) {
        abort();
    }
    /* again: the same answer; the same row when the id came with the event */
    es_buf again;
    es_buf_init(&again, 0);
    char id2[ES_UUID_LEN + 1];
    int rc2 = es_event_check(&rules, v, "tenant-1", now, &again, id2, NULL, NULL);
    if (rc2 != rc && rc2 != ES_ENOMEM && rc != ES_ENOMEM) abort();
    if (rc == ES_OK && rc2 == ES_OK && json_is_object(v) &&
        json_is_string(json_object_get(v, "eventId")) &&
        (strcmp(id, id2) != 0 || again.len != row.len - 1 ||
         memcmp(again.data, row.data + 1, again.len) != 0))
        abort();
    es_buf_finish(&again);
    es_buf_finish(&row);
    json_decref(errs);
    json_decref(v);
    return 0;
}
