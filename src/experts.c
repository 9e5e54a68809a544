/* One expert feed-forward network on a contiguous group of tokens. */
#include "nanomoe/experts.h"

#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "nanomoe/error.h"
#include "nanomoe/gemm.h"
#include "nanomoe/ops.h"

void nm_expert_ffn_forward(float *ys, float *u, const float *xs, const float *W1, const float *b1, const float *W2,
                           const float *b2, int M, int C, int F, float *act) {
    if (M <= 0) return;
    nm_dense_forward(u, xs, W1, b1, 1, M, C, F);
    nm_gelu_forward(act, u, (size_t)M * F);
    nm_dense_forward(ys, act, W2, b2, 1, M, F, C);
}

void nm_expert_ffn_backward(float *dxs, float *dW1, float *db1, float *dW2, float *db2, const float *dys,
                            const float *xs, const float *u, const float *W1, const float *W2, int M, int C, int F,
                            float *act, float *du) {
    if (M <= 0) return;
    nm_gemm(0, 1, M, F, C, 1.0f, dys, C, W2, C, 0.0f, du, F); /* d act = dys W2^T */
    nm_gelu_backward(du, act, u, du, (size_t)M * F);           /* du = d act * gelu'(u); act = gelu(u) */
    nm_dense_backward(NULL, dW2, db2, dys, act, W2, 1, M, F, C);
    nm_dense_backward(NULL, dW1, db1, du, xs, W1, 1, M, C, F);
    nm_gemm(0, 1, M, C, F, 1.0f, du, F, W1, F, 0.0f, dxs, C); /* dxs = du W1^T */
}

/* The tiles of all local experts, as (expert, first row, rows). */
typedef struct {
    int e, r0, n;
} tile;

static int make_tiles(tile *t, int cap, const int32_t *offset, const int32_t *count, int n_local) {
    int nt = 0;
    for (int e = 0; e < n_local; e++)
        for (int r = 0; r < count[e]; r += NM_EXPERT_TILE) {
            if (nt == cap) NM_ABORT("expert tile list overflow (%d tiles)", cap);
            int n = count[e] - r < NM_EXPERT_TILE ? count[e] - r : NM_EXPERT_TILE;
            t[nt++] = (tile){e, offset[e] + r, n};
        }
    return nt;
}

void nm_experts_forward(float *ys, float *u, const float *xs, const float *W1, const float *b1, const float *W2,
                        const float *b2, const int32_t *offset, const int32_t *count, int n_local, int C, int F,
                        float *act_scratch) {
    int rows = 0;
    for (int e = 0; e < n_local; e++) rows += count[e];
    int cap = rows / NM_EXPERT_TILE + n_local + 1;
    tile tl[cap]; /* a few dozen entries: stack, not heap, inside the step */
    int nt = make_tiles(tl, cap, offset, count, n_local);
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < nt; i++) {
        int e = tl[i].e, n = tl[i].n;
        size_t r0 = (size_t)tl[i].r0;
        float *ut = u + r0 * F, *yt = ys + r0 * C, *at = act_scratch + (size_t)omp_get_thread_num() * NM_EXPERT_TILE * F;
        const float *bb1 = b1 + (size_t)e * F, *bb2 = b2 + (size_t)e * C;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, F, C, 1.0f, xs + r0 * C, C, W1 + (size_t)e * C * F,
                    F, 0.0f, ut, F);
        for (int r = 0; r < n; r++) {
            float *ur = ut + (size_t)r * F;
#pragma omp simd
            for (int f = 0; f < F; f++) ur[f] += bb1[f];
        }
        nm_gelu_forward(at, ut, (size_t)n * F);
        for (int r = 0; r < n; r++) memcpy(yt + (size_t)r * C, bb2, sizeof(float) * (size_t)C);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, C, F, 1.0f, at, F, W2 + (size_t)e * F * C, C, 1.0f,
                    yt, C);
    }
}

void nm_experts_backward(float *dxs, float *dW1, float *db1, float *dW2, float *db2, const float *dys, const float *xs,
                         const float *u, const float *W1, const float *W2, const int32_t *offset,
                         const int32_t *count, int n_local, int C, int F, float *act, float *du) {
    int rows = 0;
    for (int e = 0; e < n_local; e++) rows += count[e];
    int cap = rows / NM_EXPERT_TILE + n_local + 1;
    tile tl[cap];
    int nt = make_tiles(tl, cap, offset, count, n_local);
    /* the per-row part on tiles: du = (dys W2^T) * gelu'(u), act = gelu(u), dxs = du W1^T */
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < nt; i++) {
        int e = tl[i].e, n = tl[i].n;
        size_t r0 = (size_t)tl[i].r0;
        float *dut = du + r0 * F;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, F, C, 1.0f, dys + r0 * C, C, W2 + (size_t)e * F * C, C,
                    0.0f, dut, F);
        nm_gelu_backward(dut, act + r0 * F, u + r0 * F, dut, (size_t)n * F);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, C, F, 1.0f, dut, F, W1 + (size_t)e * C * F, F, 0.0f,
                    dxs + r0 * C, C);
    }
    /* the weight gradients reduce over all rows of an expert: one split product each */
    for (int e = 0; e < n_local; e++) {
        int M = count[e];
        size_t r0 = (size_t)offset[e];
        if (M <= 0) continue;
        nm_dense_backward(NULL, dW2 + (size_t)e * F * C, db2 + (size_t)e * C, dys + r0 * C, act + r0 * F, NULL, 1, M, F, C);
        nm_dense_backward(NULL, dW1 + (size_t)e * C * F, db1 + (size_t)e * F, du + r0 * F, xs + r0 * C, NULL, 1, M, C, F);
    }
}
