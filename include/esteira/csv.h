/* csv.h - streaming CSV parsing (RFC 4180, on libcsv) for uploads.
 *
 * Bytes are fed as they arrive, in chunks of any size; each complete record is
 * handed to a callback with its fields (unquoted, NUL-terminated) and the line
 * number where it starts (1 = the first line of the file).  Quotes, embedded
 * commas, quotes and newlines, CRLF or LF line ends, and a UTF-8 BOM at the
 * start are handled.  Memory is bounded: a field longer than max_field, a
 * record longer than max_record bytes or with more than max_fields fields is
 * an error that names its line.  Empty lines are skipped. */
#ifndef ESTEIRA_CSV_H
#define ESTEIRA_CSV_H

#include <stddef.h>
#include <stdint.h>

typedef struct es_csv es_csv;

/* Return 0 to go on; anything else stops the parse and is returned by feed/finish. */
typedef int (*es_csv_record_fn)(void *arg, int64_t line, const char *const *fields,
                                const size_t *lens, int nfields);

typedef struct es_csv_limits {
    size_t max_field;  /* bytes in one field */
    size_t max_record; /* bytes in one record */
    int max_fields;    /* fields in one record */
} es_csv_limits;

int es_csv_create(const es_csv_limits *limits, es_csv_record_fn fn, void *arg, es_csv **out);
void es_csv_destroy(es_csv *p); /* NULL is a no-op */
/* ES_OK, ES_ELIMIT (a bound), ES_EINVAL (malformed: e.g. a quote inside an
 * unquoted field), or the callback's non-zero value. */
int es_csv_feed(es_csv *p, const char *data, size_t len);
/* The end of the input: the last record (without a final newline) is handed
 * over; an unterminated quoted field is ES_EINVAL. */
int es_csv_finish(es_csv *p);
/* After an error: what went wrong ("line 12: field longer than 65536 bytes"). */
const char *es_csv_error(const es_csv *p);
/* Where a batch may be cut: called at the start of each physical line that
 * begins between records (not inside a quoted field), with its byte offset in
 * the input and its line number.  Parsing the input from that offset with a
 * parser started by es_csv_start_at(line) gives the same records. */
typedef void (*es_csv_line_fn)(void *arg, int64_t offset, int64_t line);
void es_csv_on_line(es_csv *p, es_csv_line_fn fn);
/* Before the first feed: the input starts at line `line` of a file, not at its
 * beginning (no BOM is looked for). */
void es_csv_start_at(es_csv *p, int64_t line);
/* Records handed over so far, and bytes consumed. */
int64_t es_csv_records(const es_csv *p);
int64_t es_csv_bytes(const es_csv *p);

#endif
