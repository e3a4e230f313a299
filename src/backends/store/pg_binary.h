/* pg_binary.h - rows in COPY's text format (store.h) re-encoded in
 * PostgreSQL's binary COPY format, for the PostgreSQL store.
 *
 * A text COPY makes the server parse every value with its type's input
 * function (uuid_in, numeric_in, date_in, …); the binary format hands it the
 * values ready made: the same load costs PostgreSQL about a sixth less CPU.
 * libpq has no encoder for it (it only passes bytes through), so the format
 * (PostgreSQL's docs, "COPY: Binary Format") is written here.
 *
 * The values come from esteira's own normalisers, so the encoder accepts the
 * forms they write and refuses anything else with ES_EINVAL: the caller then
 * sends the text as it was and lets the server judge it. */
#ifndef ESTEIRA_PG_BINARY_H
#define ESTEIRA_PG_BINARY_H

#include <stddef.h>

#include "esteira/store.h"

/* Receives the encoded stream piece by piece; non-zero stops the encoding
 * and is returned. */
typedef int (*es_pgbin_sink)(void *arg, const char *data, size_t len);

/* Encodes the rows of `text` (ncols fields each, typed by types[]) as one
 * binary COPY stream, header and trailer included, handed to sink in pieces
 * of about 256 KB.  With sink NULL it only checks that every value has a
 * binary form.  ES_EINVAL names the first row that has none in *bad_row
 * (1-based; may be NULL). */
int es_pgbin_encode(const es_copy_type *types, int ncols, const char *text, size_t len,
                    es_pgbin_sink sink, void *arg, size_t *bad_row);

#endif
