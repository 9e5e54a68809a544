/* Checkpoints: schema version 1 HDF5 files written and read collectively with
 * parallel HDF5 (mpio driver). The schema is documented in README.md. */
#ifndef NANOMOE_CKPT_H
#define NANOMOE_CKPT_H

#include <mpi.h>
#include <stdint.h>

#include "nanomoe/adamw.h"
#include "nanomoe/config.h"
#include "nanomoe/data.h"
#include "nanomoe/error.h"
#include "nanomoe/model.h"

#define NM_CKPT_FORMAT "nanomoe-checkpoint"
#define NM_CKPT_VERSION 1

#define NM_RUN_ID_MAX 64

typedef struct nm_ckpt_meta {
    int64_t step, tokens_seen;
    int has_optimizer;
    int64_t optimizer_step;
    char run_id[NM_RUN_ID_MAX]; /* the run that wrote it ("" in files from before run ids) */
} nm_ckpt_meta;

/* Writes m's parameters (and opt's moments when opt != NULL) with the config,
 * vocabulary, counters and run id (NULL or "": none). Collective over
 * m->comm. The file is written as `path.tmp` and renamed to `path` only when
 * complete, so `path` always holds either its previous content or the whole
 * new checkpoint. A directory some rank cannot write to is an error on every
 * rank before anything is created. A failed write returns an error and
 * removes the .tmp on one process; with several ranks it aborts every rank
 * (see NM_H5_TRY). */
int nm_ckpt_save(const char *path, const nm_model *m, const nm_adamw *opt, const nm_vocab *vocab, int64_t step,
                 int64_t tokens_seen, const char *run_id, nm_error *err);

/* Reads the root attributes, /config (on top of the defaults; model-defining
 * keys are required), and /vocab. Checks format and version. Collective over
 * comm: every rank reads the file on its own and the result must be rank
 * 0's, else every rank fails with a message naming the ranks that differ.
 * Returns 0, -1, or -2 when the file failed the same way on every rank (bad
 * for everyone, rather than seen differently by some). */
int nm_ckpt_read_header(const char *path, MPI_Comm comm, nm_config *cfg, nm_vocab *vocab, nm_ckpt_meta *meta,
                        nm_error *err);

/* Reads /params into m (created from the header's config) and, when opt is not
 * NULL, /optimizer into opt. Every dataset must exist with the shape the
 * config implies; messages name the file and the object. Collective over
 * m->comm; the dense tensors read must be the same on every rank. Returns
 * 0, -1, or -2 when it failed on every rank. */
int nm_ckpt_read_params(const char *path, nm_model *m, nm_adamw *opt, nm_error *err);

/* Reads tensors named as in the schema under `group` (e.g. "/fixture/grads")
 * into blocks with layout l, converting to float. */
int nm_ckpt_read_tree(const char *path, MPI_Comm comm, const char *group, const nm_param_layout *l, float *dense,
                      float *expert, nm_error *err);

#endif
