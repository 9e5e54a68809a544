/* Continuing a run: finding the checkpoint to resume from, checking that the
 * configuration fits it, and pruning old checkpoints. */
#ifndef NANOMOE_RESUME_H
#define NANOMOE_RESUME_H

#include <mpi.h>
#include <stdint.h>

#include "nanomoe/config.h"
#include "nanomoe/error.h"

/* Checkpoints ckpt_<8 digits>.h5 in dir, newest step first. Rank 0 lists the
 * directory and broadcasts over comm. Returns the count (0 if none or no
 * directory); *paths is an array of malloc'ed strings (free with nm_ckpt_list_free). */
int nm_ckpt_list(const char *dir, MPI_Comm comm, char ***paths);
void nm_ckpt_list_free(char **paths, int n);

/* Keys that may differ between a run and the checkpoint it resumes from
 * without changing what is computed (max_iters, the schedule, intervals, ...). */
int nm_resume_key_free(const char *name);

/* Checks a run's configuration against a checkpoint's: a model-defining key
 * that differs is an error naming the key and both values; other keys that
 * change what training computes (seed, batch_size, ...) get a warning. */
int nm_resume_check_config(const nm_config *run, const nm_config *ckpt, const char *path, nm_error *err);

/* Rank 0 deletes all but the newest keep checkpoints of dir (keep 0: none). */
void nm_ckpt_prune(const char *dir, int keep, MPI_Comm comm);

#endif
