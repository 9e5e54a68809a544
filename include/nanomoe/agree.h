/* Agreement across ranks: a check that some ranks can fail becomes one
 * decision shared by every rank before the next collective call, and facts
 * that must be the same everywhere (configuration, data, files read) are
 * compared with rank 0's. A fault one rank sees therefore ends every rank
 * with the same message instead of leaving the others waiting. */
#ifndef NANOMOE_AGREE_H
#define NANOMOE_AGREE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "nanomoe/error.h"

/* Collective over comm: returns 1 if ok on every rank. Otherwise 0 on every
 * rank, with the message of the lowest failing rank in err on all of them,
 * prefixed with the failing ranks and their hosts ("rank 1 on nodeB: ...")
 * unless every rank failed. err must not be NULL. */
int nm_agree(MPI_Comm comm, int ok, nm_error *err);
/* The same, telling in *all_failed whether every rank failed (a fault of the
 * input itself rather than of one node's view of it). */
int nm_agree_ex(MPI_Comm comm, int ok, nm_error *err, int *all_failed);

/* Collective: compares `text` (lines "key=value") with rank 0's. On a
 * difference, every rank fails with a message naming `what`, the first line
 * that differs with both values, and the ranks (through nm_agree). A rank
 * whose own check already failed (ok = 0) reports that instead. */
int nm_agree_same(MPI_Comm comm, int ok, const char *what, const char *text, nm_error *err);
int nm_agree_same_ex(MPI_Comm comm, int ok, const char *what, const char *text, nm_error *err, int *all_failed);

/* Rank 0's string to every rank (buf holds cap bytes, NUL-terminated). */
void nm_bcast_text(MPI_Comm comm, char *buf, size_t cap);

/* A 64-bit hash of n bytes (not cryptographic): identity checks of files. */
uint64_t nm_hash64(const void *data, size_t n, uint64_t seed);

#endif
