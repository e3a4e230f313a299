/* err.c - names and descriptions of the es_err codes. */
#include "esteira/err.h"

static const struct {
    int code;
    const char *name;
    const char *text;
} errs[] = {
    {ES_OK, "ok", "success"},
    {ES_ENOMEM, "out_of_memory", "out of memory"},
    {ES_EINVAL, "validation_failed", "invalid argument"},
    {ES_ENOTFOUND, "not_found", "not found"},
    {ES_ECONFLICT, "conflict", "conflict"},
    {ES_EAGAIN, "unavailable", "temporarily unavailable"},
    {ES_EBACKEND, "backend_error", "backend failure"},
    {ES_EIO, "io_error", "input/output error"},
    {ES_ETIMEDOUT, "timeout", "timed out"},
    {ES_ELIMIT, "limit_exceeded", "limit exceeded"},
    {ES_EAUTH, "unauthorized", "not authenticated"},
    {ES_EFORBIDDEN, "forbidden", "forbidden"},
    {ES_ECANCELED, "canceled", "canceled"},
    {ES_EUNSUPPORTED, "unsupported", "not supported"},
};

const char *es_strerror(int err)
{
    for (unsigned i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == err) return errs[i].text;
    return "unknown error";
}

const char *es_errname(int err)
{
    for (unsigned i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == err) return errs[i].name;
    return "internal";
}
