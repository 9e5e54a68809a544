/* Continuing a run: run identity, finding the checkpoint to resume from,
 * checking that the configuration fits it, pruning old checkpoints and moving
 * an old run aside. Facts about the directory are decided on rank 0 and
 * broadcast: every rank acts on one view of it. */
#ifndef NANOMOE_RESUME_H
#define NANOMOE_RESUME_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "nanomoe/ckpt.h"
#include "nanomoe/config.h"
#include "nanomoe/error.h"

/* A new run id: its start time (UTC) and 64 random bits,
 * "20261203T134501Z-3f9a1c2b7d4e5f60", so ids sort by start time. */
void nm_run_id_new(char *out, size_t n);

/* Checkpoints ckpt_<8 digits>.h5 in dir, newest step first. Rank 0 lists the
 * directory and broadcasts over comm. Returns the count (0 if none or no
 * directory); *paths is an array of malloc'ed strings (free with nm_ckpt_list_free). */
int nm_ckpt_list(const char *dir, MPI_Comm comm, char ***paths);
/* The checkpoints of one run, newest step first: with pick_newest, of the most
 * recently started run in dir (its id is written to run_id; files without an
 * id count as one run older than any with one), else of the run whose id is
 * run_id ("" = the files without an id). Files whose run cannot be read are
 * kept in the list, in step order, for the caller to report. Collective. */
int nm_ckpt_list_run(const char *dir, MPI_Comm comm, int pick_newest, char *run_id, size_t id_cap, char ***paths);
void nm_ckpt_list_free(char **paths, int n);

/* Keys that may differ between a run and the checkpoint it resumes from
 * without changing what is computed (max_iters, the schedule, intervals, ...). */
int nm_resume_key_free(const char *name);

/* Checks a run's configuration against a checkpoint's: a model-defining key
 * that differs is an error naming the key and both values; other keys that
 * change what training computes (seed, batch_size, ...) get a warning. */
int nm_resume_check_config(const nm_config *run, const nm_config *ckpt, const char *path, nm_error *err);

/* Rank 0 deletes all but the newest `keep` checkpoints of run run_id in dir
 * (keep 0: none); other runs' files are left alone. */
void nm_ckpt_prune(const char *dir, int keep, const char *run_id, MPI_Comm comm);

/* Rank 0 removes the ckpt_*.h5.tmp files that killed writes left in dir. */
void nm_ckpt_remove_stale(const char *dir, MPI_Comm comm);

/* Moves every file a run writes (checkpoints and their .tmp, run.h5 and the
 * copies kept of it, metrics.csv, config.ini) from dir into
 * dir/replaced/<that run's id>; nothing is deleted. *where receives the folder
 * ("" when there was nothing to move). Collective; rank 0 moves. */
int nm_run_move_aside(const char *dir, MPI_Comm comm, char *where, size_t cap, nm_error *err);

#endif
