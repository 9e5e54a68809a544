/* Error reporting and rank-0 logging. */
#include "nanomoe/error.h"

#include "nanomoe/api.h"

#include <hdf5.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int nm_fail(nm_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int nm_world_rank(void) {
    int init = 0, fin = 0, rank = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    return rank;
}

static int world_size(void) {
    int init = 0, fin = 0, size = 1;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (init && !fin) MPI_Comm_size(MPI_COMM_WORLD, &size);
    return size;
}

_Noreturn void nm_abort_at(const char *file, int line, const char *fmt, ...) {
    char msg[NM_ERRMSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "nanomoe: rank %d: %s:%d: %s\n", nm_world_rank(), file, line, msg);
    fflush(stderr);
    /* MPI_Abort tears down every rank; with one rank a plain exit is quieter. */
    if (world_size() > 1) MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

void nm_mpi_check(int rc, const char *file, int line, const char *call) {
    if (rc == MPI_SUCCESS) return;
    char estr[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, estr, &len) != MPI_SUCCESS) snprintf(estr, sizeof estr, "code %d", rc);
    nm_abort_at(file, line, "%s failed: %s", call, estr);
}

/* Collects the innermost HDF5 error description for the abort message. */
static herr_t h5_walk(unsigned n, const H5E_error2_t *e, void *data) {
    char *out = data;
    if (n == 0 && e->desc) snprintf(out, 256, "%s (in %s)", e->desc, e->func_name ? e->func_name : "?");
    return 0;
}

int64_t nm_h5_check(int64_t rc, const char *file, int line, const char *call) {
    if (rc >= 0) return rc;
    char why[256] = "no HDF5 error detail";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, h5_walk, why);
    nm_abort_at(file, line, "%s failed: %s", call, why);
}

int64_t nm_h5_try_at(nm_h5_try *t, int64_t rc, const char *file, int line, const char *call) {
    if (rc >= 0) return rc;
    if (t->nranks > 1) nm_h5_check(rc, file, line, call);
    char why[256] = "no HDF5 error detail";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, h5_walk, why);
    const char *base = strrchr(file, '/');
    snprintf(t->msg, sizeof t->msg, "%s failed: %s (%s:%d)", call, why, base ? base + 1 : file, line);
    t->failed = 1;
    return rc;
}

void *nm_malloc_at(size_t bytes, const char *file, int line) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) nm_abort_at(file, line, "out of memory allocating %zu bytes", bytes);
    return p;
}

void *nm_calloc_at(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) nm_abort_at(file, line, "out of memory allocating %zu x %zu bytes", n, size);
    return p;
}

/* Where rank-0 messages go: nowhere until someone asks (nm_set_log). */
static nm_log_fn log_fn = NULL;
static void *log_user = NULL;

void nm_set_log(nm_log_fn fn, void *user) {
    log_fn = fn;
    log_user = user;
}

static void emit(int level, const char *fmt, va_list ap) {
    if (!log_fn || nm_world_rank() != 0) return;
    char msg[4096];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    if (n && msg[n - 1] == '\n') msg[n - 1] = '\0'; /* the log function ends the line */
    log_fn(level, msg, log_user);
}

void nm_log0(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(0, fmt, ap);
    va_end(ap);
}

void nm_warn0(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(1, fmt, ap);
    va_end(ap);
}
