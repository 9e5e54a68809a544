/* One expert feed-forward network on a contiguous group of tokens. */
#include "nanomoe/experts.h"

#include "nanomoe/gemm.h"
#include "nanomoe/ops.h"

void nm_expert_ffn_forward(float *ys, float *u, const float *xs, const float *W1, const float *b1, const float *W2,
                           const float *b2, int M, int C, int F, float *act) {
    if (M <= 0) return;
    nm_dense_forward(u, xs, W1, b1, M, C, F);
    nm_gelu_forward(act, u, (size_t)M * F);
    nm_dense_forward(ys, act, W2, b2, M, F, C);
}

void nm_expert_ffn_backward(float *dxs, float *dW1, float *db1, float *dW2, float *db2, const float *dys,
                            const float *xs, const float *u, const float *W1, const float *W2, int M, int C, int F,
                            float *act, float *du) {
    if (M <= 0) return;
    nm_gemm(0, 1, M, F, C, 1.0f, dys, C, W2, C, 0.0f, du, F); /* d act = dys W2^T */
    nm_gelu_backward(du, act, u, du, (size_t)M * F);           /* du = d act * gelu'(u); act = gelu(u) */
    nm_dense_backward(NULL, dW2, db2, dys, act, W2, M, F, C);
    nm_dense_backward(NULL, dW1, db1, du, xs, W1, M, C, F);
    nm_gemm(0, 1, M, C, F, 1.0f, du, F, W1, F, 0.0f, dxs, C); /* dxs = du W1^T */
}
