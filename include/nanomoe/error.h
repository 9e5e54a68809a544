/* Error reporting: recoverable errors return -1 with a message in nm_error;
 * failed MPI/HDF5 library calls abort every rank with file:line. */
#ifndef NANOMOE_ERROR_H
#define NANOMOE_ERROR_H

#include <stddef.h>
#include <stdint.h>

#define NM_ERRMSG_MAX 1024

/* Caller-owned message buffer for recoverable errors (bad input, bad files). */
typedef struct nm_error {
    char msg[NM_ERRMSG_MAX];
} nm_error;

/* Format a message into err (if not NULL) and return -1, so callers can
 * write `return nm_fail(err, "...")`. */
int nm_fail(nm_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print "nanomoe: rank R: file:line: message" and abort all ranks
 * (MPI_Abort when MPI runs with several ranks, exit(1) otherwise). */
_Noreturn void nm_abort_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define NM_ABORT(...) nm_abort_at(__FILE__, __LINE__, __VA_ARGS__)

/* Argument checks of the library API: return the error from a function that
 * has an `nm_error *err` when cond is false. */
#define NM_NEED(cond, ...)                             \
    do {                                               \
        if (!(cond)) return nm_fail(err, __VA_ARGS__); \
    } while (0)

/* Checks the return code of an MPI call; aborts all ranks with the MPI error string. */
void nm_mpi_check(int rc, const char *file, int line, const char *call);
#define NM_MPI_CHECK(call) nm_mpi_check((call), __FILE__, __LINE__, #call)

/* Checks an HDF5 call (herr_t or hid_t, negative = failure); evaluates to its value. */
int64_t nm_h5_check(int64_t rc, const char *file, int line, const char *call);
#define NM_H5_CHECK(call) nm_h5_check((int64_t)(call), __FILE__, __LINE__, #call)

/* HDF5 calls of a write that can fail without killing a library user's
 * program. The first failure is recorded in t (call, file:line, HDF5's
 * reason) and later calls are skipped, so the caller can clean up and return
 * the error -- on one process. With several ranks (t->nranks > 1) a failure
 * aborts every rank instead, as NM_H5_CHECK does: a rank that stopped making
 * the collective calls would leave the others waiting forever. */
typedef struct nm_h5_try {
    int nranks;
    int failed;
    char msg[512];
} nm_h5_try;
int64_t nm_h5_try_at(nm_h5_try *t, int64_t rc, const char *file, int line, const char *call);
#define NM_H5_TRY(t, call) ((t)->failed ? (int64_t)-1 : nm_h5_try_at((t), (int64_t)(call), __FILE__, __LINE__, #call))

/* malloc/calloc that abort with the requested size on failure. */
void *nm_malloc_at(size_t bytes, const char *file, int line);
void *nm_calloc_at(size_t n, size_t size, const char *file, int line);
#define nm_malloc(bytes) nm_malloc_at((bytes), __FILE__, __LINE__)
#define nm_calloc(n, size) nm_calloc_at((n), (size), __FILE__, __LINE__)
/* n floats, uninitialised / zeroed, with the same abort. */
#define nm_falloc(n) ((float *)nm_malloc(sizeof(float) * (size_t)(n)))
#define nm_fcalloc(n) ((float *)nm_calloc((size_t)(n), sizeof(float)))

/* This process's rank in MPI_COMM_WORLD (0 before MPI_Init or without MPI). */
int nm_world_rank(void);

/* A message from rank 0 to the log function set with nm_set_log (api.h);
 * silent when none is set. nm_log0: information, nm_warn0: a warning. */
void nm_log0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void nm_warn0(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
