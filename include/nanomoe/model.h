/* The NanoMoE model: parameters, gradients, activations, forward and backward
 * as a flat list of op calls over per-layer views. */
#ifndef NANOMOE_MODEL_H
#define NANOMOE_MODEL_H

#include <mpi.h>
#include <stdint.h>

#include "nanomoe/block.h"
#include "nanomoe/config.h"
#include "nanomoe/dispatch.h"
#include "nanomoe/dist.h"
#include "nanomoe/moe.h"
#include "nanomoe/params.h"
#include "nanomoe/timers.h"

typedef struct nm_acts {
    nm_layer_acts *layers;             /* [n_layers] */
    float *x_final;                    /* [N, C] */
    float *lnf, *lnf_mean, *lnf_rstd;  /* [N, C], [N], [N] */
    float *logits;                     /* [N, V] */
    float *losses;                     /* [N] per-token cross-entropy */
    int32_t *ids, *targets;            /* [N] copies of the last batch */
    /* scratch */
    float *dx, *dln;                   /* [N, C] */
    float *dlogits;                    /* [N, V] */
    nm_block_scratch block;
} nm_acts;

/* How a forward pass relates to the global batch. */
typedef struct nm_forward_opts {
    int training;    /* dropout on */
    uint64_t step;   /* selects the dropout masks */
    long b_offset;   /* global index of this rank's first sequence */
    long b_global;   /* sequences in the global batch (normalises CE and the aux statistics) */
    int block_seqs;  /* sequences per fixed-shape product block (0 = 1); must divide B and be
                        the same on every rank count that is to give the same bits */
} nm_forward_opts;

typedef struct nm_model {
    nm_config cfg;
    nm_param_layout layout;
    float *params[2], *grads[2]; /* [NM_BLOCK_DENSE], [NM_BLOCK_EXPERT] */
    nm_param_view p, g;
    nm_dist dist;                /* ranks, expert-parallel group, replicas */
    MPI_Comm comm;               /* = dist.world */
    int rank, nranks;
    nm_dispatch dispatch;        /* the MoE token exchange */
    int nthreads;
    int cap_B, cap_T;            /* activation capacity (this rank's sequences) */
    nm_acts acts;
    /* Dense gradients are formed per chunk of consecutive local sequences, each
     * in its own block (chunk 0 is grads[0]), and summed as a fixed tree. */
    int grad_chunks;             /* local chunks */
    int tree_reduce;             /* sums over ranks follow the fixed tree (bit-identical across rank counts) */
    float **chunk_grads;         /* [grad_chunks] dense blocks */
    nm_param_view *chunk_view;   /* [grad_chunks] views: dense part per chunk, experts shared */
    float *reduce_scratch;       /* [max(n_dense, n_expert)] */
    /* last forward */
    int B, T;
    nm_forward_opts fwd;
    double ce, aux, loss;        /* global means; loss = ce + aux_loss_coeff * aux */
    double *aux_layer;           /* [n_layers] */
    double *dropped;             /* [n_layers] token copies dropped by the capacity limit, global */
    double *dprob;               /* [n_layers, E] d aux_layer / d router probs */
    double *dprob_scaled;        /* the same times aux_loss_coeff: what backward uses */
    double *stats;               /* [nm_stats_len] sums over the global batch, see NM_STAT_* */
    double *seq_stats;           /* [cap_B, nm_stats_len] per local sequence */
    double *chunk_stats;         /* [grad_chunks, nm_stats_len] */
    nm_timers timers;
} nm_model;

/* The statistics vector of a forward: [0] summed cross-entropy, then per
 * layer l from NM_STAT_LAYER(l, E): psum[E] (router probabilities), top1[E]
 * (first choices), count[E] (token copies routed), entropy (summed over
 * tokens), dropped (copies over capacity). Summed over the global batch in the
 * same fixed tree as the gradients, so they carry the same bits on any rank
 * count that can follow it. */
#define NM_STAT_LAYER(l, E) (1 + (size_t)(l) * (3 * (size_t)(E) + 2))
#define NM_STAT_PSUM 0
#define NM_STAT_TOP1(E) (size_t)(E)
#define NM_STAT_COUNT(E) (2 * (size_t)(E))
#define NM_STAT_ENTROPY(E) (3 * (size_t)(E))
#define NM_STAT_DROPPED(E) (3 * (size_t)(E) + 1)
static inline size_t nm_stats_len(const nm_config *c) { return NM_STAT_LAYER(c->n_layers, c->n_experts); }

/* Creates a model for cfg (vocab_size set) on the ranks of comm, initialised
 * from cfg->seed, with activations for B sequences of T tokens on this rank.
 * Experts are sharded over expert-parallel groups of cfg->expert_parallel
 * ranks (0 = min(ranks, n_experts)). Collective over comm. */
int nm_model_create(nm_model *m, const nm_config *cfg, MPI_Comm comm, int B, int T, nm_error *err);
void nm_model_free(nm_model *m);

/* Forward on x[B, T] (B <= cap_B, T <= cap_T). With targets y, also the loss.
 * Router statistics are combined over the ranks of comm. */
void nm_model_forward(nm_model *m, const int32_t *x, const int32_t *y, int B, int T, const nm_forward_opts *o);

/* The product block of a training pass over B local sequences: one gradient
 * chunk (the same number of sequences on every rank count that follows the
 * fixed tree), else one sequence. Larger blocks keep the products fast. */
int nm_model_block_seqs(const nm_model *m, int B);

/* Aux loss of one local sequence of the last forward, as if it were its own batch. */
double nm_model_seq_aux(const nm_model *m, int b);

void nm_model_zero_grad(nm_model *m);
/* Adds the gradient of the last forward's loss (which must have had targets).
 * Collective over the expert-parallel group. */
void nm_model_backward(nm_model *m);
/* Sums the gradients of all ranks: dense over every rank, experts over their
 * replicas, never across owners; as a fixed tree when tree_reduce is set. */
void nm_model_reduce_grads(nm_model *m);

/* Sets how many gradient chunks the local batch of B sequences is cut into
 * (1 = plain; B must be a multiple) and whether sums over ranks follow the
 * fixed tree. */
void nm_model_set_grad_chunks(nm_model *m, int chunks, int tree);

/* The gradient slicing of a run: the global chunk count G (cfg.grad_chunks, or
 * for 0 the largest power of two <= 8 dividing batch_size), and whether P
 * ranks can follow its fixed tree (P a power of two dividing G). An explicit
 * G that P ranks cannot follow is an error. */
int nm_grad_chunks_plan(const nm_config *cfg, int P, int *G, int *tree, nm_error *err);

/* Model FLOPs per token (matrix products only; attention counted over the
 * full T x T), forward only or forward + backward (3x). */
double nm_model_flops_per_token(const nm_config *cfg, int T, int training);

#endif
