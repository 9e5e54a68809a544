/* One transformer block (pre-norm attention + MoE), forward and backward, as
 * the model runs it for every layer. Parameter gradients can be formed per
 * chunk of rows (for sums whose order does not depend on the rank count). */
#ifndef NANOMOE_BLOCK_H
#define NANOMOE_BLOCK_H

#include <stdint.h>

#include "nanomoe/moe.h"
#include "nanomoe/params.h"
#include "nanomoe/timers.h"

/* What a block keeps from forward for backward. */
typedef struct nm_layer_acts {
    float *x;            /* [N, C] residual stream entering the block */
    float *ln1, *ln1_mean, *ln1_rstd; /* [N, C], [N], [N] */
    float *qkv;          /* [N, 3C] */
    float *probs;        /* [B, H, T, T] attention softmax */
    float *att;          /* [N, C] heads concatenated, before the out projection */
    float *x_mid;        /* [N, C] after the attention residual */
    float *ln2, *ln2_mean, *ln2_rstd;
    nm_moe_acts moe;
} nm_layer_acts;

/* Scratch shared by the blocks of a model. */
typedef struct nm_block_scratch {
    float *tmp, *dtmp, *dln;  /* [N, C] */
    float *dqkv;              /* [N, 3C] */
    float *attn;              /* threads * 2 * T * T */
    nm_moe_scratch moe;
} nm_block_scratch;

/* Everything a block's pass needs besides activations and weights. */
typedef struct nm_block_run {
    int B, T, C, H;
    int block_rows;        /* rows of one fixed-shape product block: whole sequences (0 = T) */
    float eps;             /* LayerNorm epsilon */
    float p;               /* dropout probability (0 in eval) */
    uint64_t seed, step;   /* dropout stream */
    long b_offset;         /* global index of the first local sequence */
    int layer;             /* dropout site numbering */
    nm_moe_dims moe;
    nm_dispatch *dispatch;
    nm_block_scratch *s;
    nm_timers *timers;     /* may be NULL */
} nm_block_run;

/* Dropout sites: 0 = embeddings; per layer l: 1 + 3l (attention weights),
 * 2 + 3l (attention output), 3 + 3l (MoE output). */
#define NM_SITE_EMBED 0
#define NM_SITE_ATTN_W(l) (1 + 3 * (uint64_t)(l))
#define NM_SITE_ATTN_OUT(l) (2 + 3 * (uint64_t)(l))
#define NM_SITE_MOE_OUT(l) (3 + 3 * (uint64_t)(l))

/* Parameter-gradient chunks: chunk ch gets rows [ch*rows, (ch+1)*rows) into its
 * own dense block dense[ch]; gradient views point into `base` (the block of
 * chunk 0). With base NULL (one chunk) views are used as they are. */
typedef struct nm_grad_chunks {
    int n;
    long rows;
    float *const *dense;
    const float *base;
} nm_grad_chunks;

/* The chunk's copy of a gradient tensor given by its pointer into base. */
static inline float *nm_chunk_ptr(const nm_grad_chunks *k, int ch, const float *g) {
    return k->base ? k->dense[ch] + (g - k->base) : (float *)g;
}

/* y = x W + b backward: dinp over all rows, in fixed blocks of rb rows (+=,
 * skipped if NULL); dW and db (+=, db skipped if NULL) per chunk. */
void nm_dense_backward_chunked(const nm_grad_chunks *k, int rb, float *dinp, const float *gW, const float *gb,
                               const float *dout, const float *inp, const float *W, int Din, int Dout);
/* LayerNorm backward: dinp over all rows (+=), ds and db per chunk. */
void nm_layernorm_backward_chunked(const nm_grad_chunks *k, float *dinp, const float *gs, const float *gb,
                                   const float *dout, const float *inp, const float *s, const float *mean,
                                   const float *rstd, int C);

void nm_layer_acts_alloc(nm_layer_acts *a, int B, int T, int C, int H, const nm_moe_dims *d, const nm_dispatch *x);
void nm_layer_acts_free(nm_layer_acts *a);
void nm_block_scratch_alloc(nm_block_scratch *s, int B, int T, int C, int threads, const nm_moe_dims *d,
                            const nm_dispatch *x);
void nm_block_scratch_free(nm_block_scratch *s);

/* xout[N, C] = block(a->x) with weights w; a keeps what backward needs.
 * Collective over the dispatch's expert-parallel group. */
void nm_block_run_forward(const nm_block_run *r, nm_layer_acts *a, const nm_layer_view *w, float *xout);

/* dx: in, d loss / d xout [N, C]; out, d loss / d x (overwritten in place).
 * Dense parameter gradients go to the chunk views of g (+=), expert gradients
 * to g's expert tensors (+=). dprob[E]: d loss / d router probs of the aux term. */
void nm_block_run_backward(const nm_block_run *r, nm_layer_acts *a, const nm_layer_view *w, const nm_layer_view *g,
                       const nm_grad_chunks *k, float *dx, const double *dprob);

#endif
