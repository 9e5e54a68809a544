/* Per-run metrics and routing statistics in out_dir/run.h5: one HDF5 file
 * opened once with the mpio driver and extended by one row every
 * stats_interval steps (chunked datasets, unlimited first dimension, flushed
 * after every row). The layout is documented in README.md. */
#ifndef NANOMOE_RUNSTATS_H
#define NANOMOE_RUNSTATS_H

#include <stdint.h>

#include "nanomoe/ckpt.h"
#include "nanomoe/data.h"
#include "nanomoe/error.h"
#include "nanomoe/model.h"

#define NM_RUN_FORMAT "nanomoe-run"
#define NM_RUN_VERSION 1

typedef struct nm_run_stats {
    int64_t file;          /* hid_t */
    nm_h5_try h5;          /* the first HDF5 failure (one process; several ranks abort) */
    int L, E, V, P;
    long rows;             /* rows written */
    /* the current interval (global sums, the same on every rank) */
    int steps;
    double loss, ce, aux, val_loss;
    double *count, *top1;  /* [L, E] */
    double *dropped, *aux_layer, *entropy; /* [L] */
    double tokens;         /* tokens seen in the interval */
    double *rows_in;       /* [L] rows this rank's experts received */
    int32_t *token_expert; /* [L, V, E] this rank's first choices per vocabulary id */
    int64_t *cumulative;   /* [L, V, E] rank 0: cumulative first choices (the file's token_expert) */
    /* since the last routing summary (for the line at each eval) */
    double *sum_count;     /* [L, E] */
    double *sum_dropped;   /* [L] */
} nm_run_stats;

/* Creates path for run run_id, or with resume_step >= 0 continues it: rank
 * 0 decides whether it exists, every rank reads its state and must see rank
 * 0's, and rows after resume_step (written after the checkpoint the run
 * resumes from) are cut off. A file of another shape, or of a run other than
 * accept_id (the id of the checkpoint resumed from), is kept as
 * path.before-step-<resume_step> and a new one is started. Collective over
 * m->comm. */
int nm_run_stats_open(nm_run_stats *rs, const char *path, const nm_model *m, const nm_vocab *vocab,
                      int stats_interval, int64_t resume_step, const char *run_id, const char *accept_id,
                      nm_error *err);
/* Closes the file (and frees rs); -1 if writing it failed. */
int nm_run_stats_close(nm_run_stats *rs);

/* Accumulates the training step that m just ran on local ids x[B, T]. */
void nm_run_stats_step(nm_run_stats *rs, const nm_model *m, const int32_t *x);
/* Records a validation loss for the current interval. */
void nm_run_stats_eval(nm_run_stats *rs, double val_loss);
/* Appends the interval as one row at `step` and starts the next. Collective.
 * -1 when the write failed (one process; several ranks abort). */
int nm_run_stats_write(nm_run_stats *rs, const nm_model *m, int64_t step, double lr, double tokens_per_s,
                       nm_error *err);

/* One line per run: per layer max/min expert load, dead experts, dropped,
 * since the previous call; resets that window. */
void nm_run_stats_summary(nm_run_stats *rs, char *buf, size_t n);

#endif
