/* One expert feed-forward network, fc2(gelu(fc1(x))), on a contiguous group of tokens. */
#ifndef NANOMOE_EXPERTS_H
#define NANOMOE_EXPERTS_H

#include <stdint.h>

/* ys[M, C] = gelu(xs[M, C] @ W1[C, F] + b1[F]) @ W2[F, C] + b2[C]; u[M, F] keeps
 * the fc1 output (pre-activation) for backward; act[M, F] is scratch. */
void nm_expert_ffn_forward(float *ys, float *u, const float *xs, const float *W1, const float *b1, const float *W2,
                           const float *b2, int M, int C, int F, float *act);

/* dxs[M, C] = gradient w.r.t. xs (WRITES); dW1, db1, dW2, db2 +=.
 * act and du are [M, F] scratch (gelu(u) is recomputed, not stored). */
void nm_expert_ffn_backward(float *dxs, float *dW1, float *db1, float *dW2, float *db2, const float *dys,
                            const float *xs, const float *u, const float *W1, const float *W2, int M, int C, int F,
                            float *act, float *du);

/* Rows per tile of the grouped functions below. */
#define NM_EXPERT_TILE 512

/* All local experts at once over the expert-grouped buffers: local expert e
 * owns rows [offset[e], offset[e] + count[e]) of xs, u and ys, and weights
 * W1 + e*C*F, b1 + e*F, W2 + e*F*C, b2 + e*C. Rows are cut into tiles of
 * NM_EXPERT_TILE spread over the threads; each tile runs fc1 -> GELU -> fc2 on
 * one thread while its activations are in cache. act_scratch holds
 * NM_EXPERT_TILE * F floats per OpenMP thread. */
void nm_experts_forward(float *ys, float *u, const float *xs, const float *W1, const float *b1, const float *W2,
                        const float *b2, const int32_t *offset, const int32_t *count, int n_local, int C, int F,
                        float *act_scratch);

/* Backward of nm_experts_forward: dxs (WRITES), dW1, db1, dW2, db2 (+=).
 * act and du are scratch with the rows of u. */
void nm_experts_backward(float *dxs, float *dW1, float *db1, float *dW2, float *db2, const float *dys, const float *xs,
                         const float *u, const float *W1, const float *W2, const int32_t *offset,
                         const int32_t *count, int n_local, int C, int F, float *act, float *du);

#endif
