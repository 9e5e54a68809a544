/* Training: the optimisation step, evaluation, and the loop the CLI runs. */
#ifndef NANOMOE_TRAIN_H
#define NANOMOE_TRAIN_H

#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "nanomoe/adamw.h"
#include "nanomoe/api.h"
#include "nanomoe/ckpt.h"
#include "nanomoe/config.h"
#include "nanomoe/data.h"
#include "nanomoe/model.h"

typedef struct nm_trainer {
    nm_config cfg;
    nm_model model;
    nm_adamw opt;
    const nm_dataset *data;
    int64_t step;        /* completed optimisation steps */
    int64_t tokens_seen; /* global tokens consumed by training */
    int b0, b1;          /* this rank's sequences of the global batch */
    int32_t *x, *y;      /* [b1 - b0, T] */
    double grad_norm;    /* before clipping, when grad_clip > 0 */
    char run_id[NM_RUN_ID_MAX]; /* the run its checkpoints belong to ("" = none yet) */
} nm_trainer;


/* Loads the data on every rank of comm (nm_dataset_load) and checks that every
 * rank read rank 0's (length, vocabulary, a hash of the bytes): a node with
 * another copy of the file is an error naming it. Collective; on failure
 * nothing is left allocated. */
int nm_dataset_load_agreed(nm_dataset *d, const char *path, const nm_vocab *vocab, MPI_Comm comm, nm_error *err);

/* Creates model and optimiser for cfg over data (cfg->vocab_size must match
 * the data's vocabulary; data may be NULL for steps on given batches only).
 * Collective over comm. */
int nm_trainer_init(nm_trainer *t, const nm_config *cfg, const nm_dataset *data, MPI_Comm comm, nm_error *err);
void nm_trainer_free(nm_trainer *t);

/* Continues from a checkpoint: parameters, AdamW moments, step count and run
 * id. The data stream and dropout masks are functions of (seed, step), so
 * this is the whole state. Collective. Returns 0, -1, or -2 when the file is
 * bad for every rank (see nm_ckpt_read_header). */
int nm_trainer_resume(nm_trainer *t, const char *path, nm_error *err);

/* One step on the next global training batch: forward, backward, AdamW. */
nm_losses nm_train_step(nm_trainer *t);
/* One step on this rank's slice x, y [b1 - b0, block_size] of a given batch. */
nm_losses nm_train_step_on(nm_trainer *t, const int32_t *x, const int32_t *y);

/* The reference's evaluation: mean loss over eval_iters random validation
 * batches of batch_size windows, no dropout. Deterministic in (seed, step). */
nm_losses nm_evaluate(nm_trainer *t);

/* Deterministic loss over the whole split: windows at 0, T, 2T, ... while
 * start + T + 1 <= len; ce is the mean over all targets, aux the mean over
 * windows of each window's own aux. The windows go through in rounds of
 * `batch` consecutive windows shared out over the ranks (m's activations
 * must hold ceil(batch / ranks) of them; a larger batch is cut down). The
 * result is the same on 1, 2 or 4 ranks with one copy of each expert. */
typedef struct nm_split_eval {
    double ce, aux, loss;
    long windows, tokens;
} nm_split_eval;
nm_split_eval nm_evaluate_split(nm_model *m, const int32_t *tokens, size_t len, int batch);

#endif
