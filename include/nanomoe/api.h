/* The nanomoe library API: models, training, generation and the NanoMoE layers
 * for C programs. Every function that can fail returns 0 on success and a
 * negative value on failure, with a readable message in the caller's
 * nm_error; it never exits and never prints unless a log function is set.
 * A program that does not use MPI itself needs nothing else: the library
 * starts MPI for one process when needed and finalises it at exit. */
#ifndef NANOMOE_API_H
#define NANOMOE_API_H

#include <signal.h>
#include <stdint.h>

#include "nanomoe/config.h"
#include "nanomoe/data.h"
#include "nanomoe/error.h"
#include "nanomoe/params.h"

#ifdef __cplusplus
extern "C" {
#endif

#define NM_VERSION "0.1.0"
const char *nm_version(void);

/* Messages the library would print (progress of nm_train_run, warnings):
 * level 0 = information, 1 = warning. Only rank 0 of a run calls it.
 * fn NULL (the default) keeps the library silent. */
typedef void (*nm_log_fn)(int level, const char *msg, void *user);
void nm_set_log(nm_log_fn fn, void *user);

/* Loss of a batch: loss = ce + aux_loss_coeff * aux. */
typedef struct nm_losses {
    double loss, ce, aux;
} nm_losses;

/* ------------------------------------------------------------------ models */

typedef struct nm_model nm_model;

/* A model for cfg (cfg->vocab_size set, e.g. from nm_dataset_load's vocabulary),
 * initialised from cfg->seed, for batches of up to max_batch sequences of up to
 * block_size tokens. One process: every expert is local. */
int nm_model_new(nm_model **out, const nm_config *cfg, int max_batch, nm_error *err);
/* The model of a schema-v1 checkpoint; its vocabulary goes to vocab (may be NULL). */
int nm_model_load(nm_model **out, const char *path, int max_batch, nm_vocab *vocab, nm_error *err);
/* Writes the parameters as a checkpoint (without optimizer state) at `step`. */
int nm_model_save(const nm_model *m, const char *path, const nm_vocab *vocab, int64_t step, nm_error *err);
void nm_model_delete(nm_model *m);
const nm_config *nm_model_get_config(const nm_model *m);

/* Forward (no dropout) on x[B, T] token ids: logits [B, T, V] are written to
 * `logits` if not NULL, and stay readable through nm_model_logits until the
 * next call; *aux (if not NULL) receives the model's aux loss (sum over layers). */
int nm_model_forward_tokens(nm_model *m, const int32_t *x, int B, int T, float *logits, double *aux, nm_error *err);
/* The logits [B, T, V] of the last forward. */
const float *nm_model_logits(const nm_model *m);
/* Loss of x against targets y[B, T] (no dropout): the reference's eval_step. */
int nm_model_evaluate(nm_model *m, const int32_t *x, const int32_t *y, int B, int T, nm_losses *out, nm_error *err);

/* Called with every generated token; return non-zero to stop early. */
typedef int (*nm_token_fn)(int32_t token, void *user);
/* Generates up to max_new tokens after prompt[n] with a KV cache: logits / temperature
 * (0 = greedy), top_k filtering (0 = none), sampling from `seed`. Tokens go to
 * out[max_new] (may be NULL) and to cb (may be NULL). *generated (may be NULL)
 * receives the count. The same seed gives the same tokens. */
int nm_generate(nm_model *m, const int32_t *prompt, int n, int max_new, double temperature, int top_k, uint64_t seed,
                nm_token_fn cb, void *user, int32_t *out, int *generated, nm_error *err);

/* ---------------------------------------------------------------- training */

typedef struct nm_trainer nm_trainer;

/* A model and its AdamW state for batches of cfg->batch_size sequences of
 * block_size tokens (the reference's create_train_state). */
int nm_trainer_new(nm_trainer **out, const nm_config *cfg, nm_error *err);
/* The same, continuing from a checkpoint with optimizer state (cfg must agree
 * on the keys that define the model). */
int nm_trainer_load(nm_trainer **out, const nm_config *cfg, const char *path, nm_error *err);
void nm_trainer_delete(nm_trainer *t);
/* One step (forward with dropout, backward, AdamW) on x, y [batch_size, block_size]. */
int nm_trainer_step(nm_trainer *t, const int32_t *x, const int32_t *y, nm_losses *out, nm_error *err);
/* Writes a checkpoint with the optimizer state. */
int nm_trainer_save(nm_trainer *t, const char *path, const nm_vocab *vocab, nm_error *err);
nm_model *nm_trainer_get_model(nm_trainer *t);
int64_t nm_trainer_get_step(const nm_trainer *t);

/* The training loop of `nanomoe train`: data from cfg->data, progress through
 * the log function, checkpoints and statistics in cfg->out_dir (which must be
 * set: `nanomoe train` names it runs/<config name>), resume as cfg->resume says. Runs on the ranks of MPI_COMM_WORLD (one process without
 * mpirun). Stops after the current step when *stop becomes non-zero (may be
 * NULL), writing a checkpoint. force: start a new run over existing checkpoints. */
typedef struct nm_run_options {
    int force;                 /* move the files of a previous run in out_dir aside (out_dir/replaced/<id>/) */
    volatile sig_atomic_t *stop;
} nm_run_options;
int nm_train_run(const nm_config *cfg, const nm_run_options *opt, nm_error *err);

/* Decodes ids[n] into text[n + 1] (NUL-terminated); an id outside the vocabulary is an error. */
int nm_vocab_decode(const nm_vocab *v, const int32_t *ids, size_t n, char *text, nm_error *err);

/* ---------------------------------------------------------------- layers
 * The NanoMoE layers with their own buffers, for N = B * T rows of width
 * C = d_model. Weights and gradients are nm_layer_view fields (see params.h;
 * expert tensors hold all n_experts). Backward functions ADD into gradients
 * and into the input gradient. */

/* MultiHeadAttention: out[N, C] = causal attention over x[N, C] with the
 * qkv_w/qkv_b/out_w/out_b fields of w (no dropout). */
typedef struct nm_mha nm_mha;
int nm_mha_new(nm_mha **out, int B, int T, int C, int H, nm_error *err);
int nm_mha_forward(nm_mha *a, float *out, const float *x, const nm_layer_view *w, nm_error *err);
int nm_mha_backward(nm_mha *a, float *dx, const nm_layer_view *g, const float *dout, const nm_layer_view *w,
                    nm_error *err);
void nm_mha_delete(nm_mha *a);

/* MoELayer: out[N, C] = sum over the top_k experts of gate * expert(m), with
 * router_w and fc1/fc2 of w; *aux = the layer's load-balancing loss. Backward
 * includes aux_coeff * aux. */
typedef struct nm_moe_layer nm_moe_layer;
int nm_moe_layer_new(nm_moe_layer **out, int B, int T, int C, int F, int E, int K, nm_error *err);
int nm_moe_layer_forward(nm_moe_layer *l, float *out, const float *m, const nm_layer_view *w, double *aux,
                         nm_error *err);
int nm_moe_layer_backward(nm_moe_layer *l, float *dm, const nm_layer_view *g, const float *dout,
                          const nm_layer_view *w, double aux_coeff, nm_error *err);
void nm_moe_layer_delete(nm_moe_layer *l);

/* TransformerBlock: xout = x_mid + MoE(LN2(x_mid)), x_mid = x + MHA(LN1(x)),
 * for cfg's sizes (no dropout); *aux as for the MoE layer. */
typedef struct nm_block nm_block;
int nm_block_new(nm_block **out, const nm_config *cfg, int B, int T, nm_error *err);
int nm_block_forward(nm_block *b, float *xout, const float *x, const nm_layer_view *w, double *aux, nm_error *err);
int nm_block_backward(nm_block *b, float *dx, const nm_layer_view *g, const float *dxout, const nm_layer_view *w,
                        nm_error *err);
void nm_block_delete(nm_block *b);

#ifdef __cplusplus
}
#endif

#endif
