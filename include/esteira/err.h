/* err.h - the one error type of esteira.
 *
 * Every function that can fail returns an int: ES_OK (0) or one of the
 * negative codes below.  Backends translate their library's errors into these
 * and log the library's own message where it happened. */
#ifndef ESTEIRA_ERR_H
#define ESTEIRA_ERR_H

typedef enum es_err {
    ES_OK = 0,
    ES_ENOMEM = -1,       /* out of memory */
    ES_EINVAL = -2,       /* invalid argument or input */
    ES_ENOTFOUND = -3,    /* no such thing */
    ES_ECONFLICT = -4,    /* already exists, or not in a state that allows it */
    ES_EAGAIN = -5,       /* temporarily unavailable: try again later */
    ES_EBACKEND = -6,     /* a backend (database, broker, cache, storage) failed */
    ES_EIO = -7,          /* local I/O failed */
    ES_ETIMEDOUT = -8,    /* gave up waiting */
    ES_ELIMIT = -9,       /* a configured bound was exceeded */
    ES_EAUTH = -10,       /* missing or bad credentials or signature */
    ES_EFORBIDDEN = -11,  /* authenticated, but not allowed */
    ES_ECANCELED = -12,   /* stopped on request (shutdown, cancel) */
    ES_EUNSUPPORTED = -13 /* not supported by this backend or build */
} es_err;

/* A short, static, lower-case description ("not found"). */
const char *es_strerror(int err);
/* The stable machine name used in API error codes ("not_found"). */
const char *es_errname(int err);

#endif
