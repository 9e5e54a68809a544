/* Mixture-of-Experts layer: route -> permute tokens into per-expert groups ->
 * expert FFN per group -> un-permute and combine with the gates. The
 * permutation is where tokens leave for the ranks that own their experts. */
#ifndef NANOMOE_MOE_H
#define NANOMOE_MOE_H

#include <stdint.h>

#include "nanomoe/params.h"
#include "nanomoe/timers.h"

/* Sizes of one MoE layer's work. */
typedef struct nm_moe_dims {
    int N;        /* tokens (B * T) */
    int seq_len;  /* tokens per sequence (for per-sequence aux statistics) */
    int C, F, E, K;
    int expert_begin, expert_count; /* local experts */
} nm_moe_dims;

/* What one layer keeps from forward for backward. */
typedef struct nm_moe_acts {
    float *probs;          /* [N, E] full router softmax */
    int32_t *topi;         /* [N, K] chosen experts, best first */
    float *gates;          /* [N, K] */
    int32_t *slot;         /* [N, K] row of (token, k) in the expert-grouped order */
    int32_t *count;        /* [E] rows per expert */
    int32_t *offset;       /* [E + 1] first row of each expert */
    float *xs;             /* [N*K, C] expert inputs, grouped by expert, token order inside */
    float *u;              /* [N*K, F] fc1 pre-activations */
    float *ys;             /* [N*K, C] expert outputs */
    double *psum, *top1;   /* [N/seq_len, E] per-sequence router statistics */
} nm_moe_acts;

/* Scratch shared by all layers. */
typedef struct nm_moe_scratch {
    float *act, *du;       /* [N*K, F] */
    float *dxs, *dys;      /* [N*K, C] */
    float *dgates;         /* [N, K] */
    float *dlogits;        /* [N, E] */
    nm_timers *timers;     /* where to add router / permute / expert times (may be NULL) */
} nm_moe_scratch;

void nm_moe_acts_alloc(nm_moe_acts *a, const nm_moe_dims *d);
void nm_moe_acts_free(nm_moe_acts *a);
void nm_moe_scratch_alloc(nm_moe_scratch *s, const nm_moe_dims *d);
void nm_moe_scratch_free(nm_moe_scratch *s);

/* Builds the permutation from topi[N, K]: count, offset, and slot[n, k] =
 * offset[e] + (number of earlier tokens routed to e). */
void nm_moe_plan(int32_t *slot, int32_t *count, int32_t *offset, const int32_t *topi, int N, int K, int E);

/* out[N, C] = sum_k gates[n, k] * expert_{topi[n, k]}(m[n]). Router statistics
 * land in a->psum/top1; the aux loss is formed by the caller (it may need
 * statistics from other ranks). */
void nm_moe_forward(float *out, nm_moe_acts *a, const float *m, const nm_layer_view *w, const nm_moe_dims *d,
                    nm_moe_scratch *s);

/* dm[N, C] += gradient w.r.t. m; g (layer gradient view) +=. dprob[E] =
 * dL/dprobs from the aux loss (scaled by its coefficient). */
void nm_moe_backward(float *dm, const nm_layer_view *g, const float *dout, const nm_moe_acts *a, const float *m,
                     const nm_layer_view *w, const double *dprob, const nm_moe_dims *d, nm_moe_scratch *s);

#endif
