/* Mixture-of-Experts layer: route -> permute token copies into per-expert
 * groups -> send them to the ranks that own the experts -> expert FFN per group
 * -> send the results back -> un-permute and combine with the gates. */
#ifndef NANOMOE_MOE_H
#define NANOMOE_MOE_H

#include <stdint.h>

#include "nanomoe/dispatch.h"
#include "nanomoe/params.h"
#include "nanomoe/timers.h"

/* Sizes of one MoE layer's work. */
typedef struct nm_moe_dims {
    int N;        /* this rank's tokens (B * T) */
    int seq_len;  /* tokens per sequence (for per-sequence aux statistics) */
    int C, F, E, K;
    long capacity; /* most rows an expert takes from the global batch; 0 = no limit */
} nm_moe_dims;

/* The most expert-side rows a rank can receive in one layer, with at most N
 * tokens on each rank of its group: every token sending min(K, El) copies to
 * its experts. */
size_t nm_moe_max_rows_in(int N, int K, int Q, int El);

/* What one layer keeps from forward for backward. */
typedef struct nm_moe_acts {
    float *probs;          /* [N, E] full router softmax */
    int32_t *topi;         /* [N, K] chosen experts, best first */
    float *gates;          /* [N, K] */
    int32_t *slot;         /* [N, K] row of (token, k) in the expert-grouped slot order */
    int32_t *count;        /* [E] slot rows per expert */
    int32_t *offset;       /* [E + 1] first slot row of each expert */
    float *xs;             /* [N*K, C] token copies in slot order */
    float *ys;             /* [N*K, C] expert outputs in slot order */
    nm_dispatch_plan plan; /* the exchange of this layer */
    const float *xe;       /* expert-side inputs (xs itself with one rank, else xe_buf) */
    float *xe_buf, *ye_buf;/* [rows_in, C] expert side, with more than one rank */
    float *u;              /* [rows_in, F] fc1 pre-activations */
    int32_t *kept;         /* [El] rows each local expert processed (capacity) */
    long dropped;          /* rows the local experts dropped by capacity */
    double *psum, *top1;   /* [N/seq_len, E] per-sequence router statistics */
    double *ent;           /* [N/seq_len] per-sequence summed router entropy */
} nm_moe_acts;

/* Scratch shared by all layers. */
typedef struct nm_moe_scratch {
    float *act, *du;       /* [max(rows_in, threads x tile), F] */
    float *dxs, *dys;      /* [N*K, C] slot order */
    float *dxe, *dye;      /* [rows_in, C] expert side, with more than one rank */
    float *dgates;         /* [N, K] */
    float *dlogits;        /* [N, E] */
    nm_timers *timers;     /* where to add router / permute / expert times (may be NULL) */
} nm_moe_scratch;

void nm_moe_acts_alloc(nm_moe_acts *acts, const nm_moe_dims *dims, const nm_dispatch *dispatch);
void nm_moe_acts_free(nm_moe_acts *acts);
void nm_moe_scratch_alloc(nm_moe_scratch *scratch, const nm_moe_dims *dims, const nm_dispatch *dispatch);
void nm_moe_scratch_free(nm_moe_scratch *scratch);

/* Builds the permutation from topi[N, K]: count, offset, and slot[n, k] =
 * offset[e] + (number of earlier tokens routed to e). */
void nm_moe_plan(int32_t *slot, int32_t *count, int32_t *offset, const int32_t *topi, int N, int K, int E);

/* out[N, C] = sum_k gates[n, k] * expert_{topi[n, k]}(inp[n]), the experts
 * running on the ranks of the dispatch's group that own them. Collective over the group.
 * Router statistics land in a->psum/top1; the aux loss is formed by the
 * caller (it needs statistics from every rank). */
void nm_moe_forward(float *out, nm_moe_acts *acts, const float *inp, const nm_layer_view *w, const nm_moe_dims *dims,
                    nm_moe_scratch *scratch, nm_dispatch *dispatch);

/* dinp[N, C] += gradient w.r.t. inp; router gradient into dWr (+=, NULL to skip,
 * for callers that form it per slice with nm_moe_router_weight_grad), local
 * expert gradients into g (+=). dprob[E] = dL/dprobs from the aux loss (scaled
 * by its coefficient). Collective over the dispatch's group. */
void nm_moe_backward(float *dinp, float *dWr, const nm_layer_view *g, const float *dout, const nm_moe_acts *acts,
                     const float *inp, const nm_layer_view *w, const double *dprob, const nm_moe_dims *dims,
                     nm_moe_scratch *scratch, nm_dispatch *dispatch);

/* dWr[C, E] += inp[rows]^T dlogits[rows] over rows [r0, r0 + n) of the last
 * nm_moe_backward (whose dlogits stay in scratch). */
void nm_moe_router_weight_grad(float *dWr, const float *inp, const nm_moe_scratch *scratch, int r0, int n,
                               const nm_moe_dims *dims);

#endif
