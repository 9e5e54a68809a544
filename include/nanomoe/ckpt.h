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

typedef struct nm_ckpt_meta {
    int64_t step, tokens_seen;
    int has_optimizer;
    int64_t optimizer_step;
} nm_ckpt_meta;

/* Writes m's parameters (and opt's moments when opt != NULL) with the config,
 * vocabulary and counters. Collective over m->comm. The file is written as
 * `path.tmp` and renamed to `path` only when complete, so `path` always holds
 * either its previous content or the whole new checkpoint. */
int nm_ckpt_save(const char *path, const nm_model *m, const nm_adamw *opt, const nm_vocab *vocab, int64_t step,
                 int64_t tokens_seen, nm_error *err);

/* Reads the root attributes, /config (on top of the defaults; model-defining
 * keys are required), and /vocab. Checks format and version. Collective over comm. */
int nm_ckpt_read_header(const char *path, MPI_Comm comm, nm_config *cfg, nm_vocab *vocab, nm_ckpt_meta *meta,
                        nm_error *err);

/* Reads /params into m (created from the header's config) and, when opt is not
 * NULL, /optimizer into opt. Every dataset must exist with the shape the
 * config implies; messages name the file and the object. */
int nm_ckpt_read_params(const char *path, nm_model *m, nm_adamw *opt, nm_error *err);

/* Reads tensors named as in the schema under `group` (e.g. "/fixture/grads")
 * into blocks with layout l, converting to float. */
int nm_ckpt_read_tree(const char *path, MPI_Comm comm, const char *group, const nm_param_layout *l, float *dense,
                      float *expert, nm_error *err);

/* Reads a scalar string attribute (fixed or variable length, any character
 * set) of an HDF5 object (hid_t) into buf; -1 if absent or not a string. */
int nm_h5_attr_string(int64_t obj, const char *name, char *buf, size_t n);

#endif
