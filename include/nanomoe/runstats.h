/* Per-run metrics and routing statistics in out_dir/run.h5: one HDF5 file
 * opened once with the mpio driver and extended by one row every
 * stats_interval steps (chunked datasets, unlimited first dimension, flushed
 * after every row). The layout is documented in README.md. */
#ifndef NANOMOE_RUNSTATS_H
#define NANOMOE_RUNSTATS_H

#include <stdint.h>

#include "nanomoe/data.h"
#include "nanomoe/error.h"
#include "nanomoe/model.h"

#define NM_RUN_FORMAT "nanomoe-run"
#define NM_RUN_VERSION 1

typedef struct nm_run_stats {
    int64_t file;          /* hid_t */
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

/* Creates path, or with resume_step >= 0 opens it to continue: rows after
 * resume_step (written after the checkpoint the run resumes from) are cut
 * off. Collective over m->comm. */
int nm_run_stats_open(nm_run_stats *rs, const char *path, const nm_model *m, const nm_vocab *vocab,
                      int stats_interval, int64_t resume_step, nm_error *err);
void nm_run_stats_close(nm_run_stats *rs);

/* Accumulates the training step that m just ran on local ids x[B, T]. */
void nm_run_stats_step(nm_run_stats *rs, const nm_model *m, const int32_t *x);
/* Records a validation loss for the current interval. */
void nm_run_stats_eval(nm_run_stats *rs, double val_loss);
/* Appends the interval as one row at `step` and starts the next. Collective. */
void nm_run_stats_write(nm_run_stats *rs, const nm_model *m, int64_t step, double lr, double tokens_per_s);

/* One line per run: per layer max/min expert load, dead experts, dropped,
 * since the previous call; resets that window. */
void nm_run_stats_summary(nm_run_stats *rs, char *buf, size_t n);

#endif
