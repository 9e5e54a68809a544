/* Causal multi-head self-attention core: per (sequence, head) two sgemms and a
 * masked softmax, parallel over (sequence, head) with one thread per pair. */
#include "nanomoe/attention.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

#include "nanomoe/fastmath.h"
#include "nanomoe/ops.h"

#include <omp.h>

/* Row lengths are rounded up to whole SIMD vectors with the masked part
 * selected out, so the loops run without scalar remainders. */
#define VEC 16

static inline int padded(int i, int T) {
    int n = (i / VEC + 1) * VEC;
    return n < T ? n : T;
}

/* Softmax of r[0..i], zeros after: masked scores (-1e9 in the reference)
 * have weight exp(-1e9 - max) = 0 exactly in float. */
static void causal_softmax_row(float *restrict r, int i, int T) {
    int n = padded(i, T);
    float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < n; j++) {
        float v = j <= i ? r[j] : -INFINITY;
        mx = v > mx ? v : mx;
    }
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < n; j++) {
        float e = j <= i ? nm_expf(r[j] - mx) : 0.0f;
        r[j] = e;
        s += e;
    }
    float inv = 1.0f / s;
#pragma omp simd
    for (int j = 0; j < n; j++) r[j] *= inv;
    if (n < T) memset(r + n, 0, sizeof(float) * (size_t)(T - n));
}

/* d[j] = p[j] (d[j] - <p, d>) over the causal part; p is zero beyond i. */
static void causal_softmax_backward_row(float *restrict d, const float *restrict p, int i, int T) {
    int n = padded(i, T);
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int j = 0; j < n; j++) dot += p[j] * d[j];
#pragma omp simd
    for (int j = 0; j < n; j++) d[j] = p[j] * (d[j] - dot);
    if (n < T) memset(d + n, 0, sizeof(float) * (size_t)(T - n));
}

/* Dropout on rows [i0, i1) of one (sequence, head) weight matrix, stored from w
 * with row stride T. */
static void apply_dropout(float *w, int T, int i0, int i1, const nm_attn_dropout *drop, int b, int h, int H) {
    uint64_t base = (((uint64_t)(drop->b_offset + b) * (uint64_t)H + (uint64_t)h) * (uint64_t)T + (uint64_t)i0) *
                    (uint64_t)T;
    nm_dropout(w, (size_t)(i1 - i0) * T, drop->p, drop->key, base);
}

/* Causal attention only needs the lower triangle: rows are processed in
 * blocks of ROWS, and a block ending at row i1 only touches columns [0, i1).
 * For T = 128 this does 62.5% of the full products (FLOP counts still use
 * the full T x T, as the reference's figures do). A multiple of VEC. */
#define ROWS 32

void nm_attention_forward(float *out, float *probs, const float *qkv, int B, int T, int C, int H,
                          const nm_attn_dropout *drop, float *scratch) {
    int hd = C / H, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
    int use_drop = drop && drop->p > 0.0f;
#pragma omp parallel
    {
        float *w = scratch + (long)omp_get_thread_num() * T * T;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            const float *q = qkv + (long)b * T * ld + h * hd;
            const float *k = q + C, *v = q + 2 * C;
            float *P = probs + (long)bh * T * T, *o = out + (long)b * T * C + h * hd;
            for (int i0 = 0; i0 < T; i0 += ROWS) {
                int i1 = i0 + ROWS < T ? i0 + ROWS : T, nr = i1 - i0;
                float *Pb = P + (long)i0 * T;
                /* scores = q k^T, scaled after the product as the reference does */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, i1, hd, scale, q + (long)i0 * ld, ld, k, ld,
                            0.0f, Pb, T);
                for (int i = i0; i < i1; i++) causal_softmax_row(P + (long)i * T, i, T);
                const float *Pd = Pb;
                if (use_drop) {
                    memcpy(w, Pb, sizeof(float) * (size_t)nr * T);
                    apply_dropout(w, T, i0, i1, drop, b, h, H);
                    Pd = w;
                }
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, i1, 1.0f, Pd, T, v, ld, 0.0f,
                            o + (long)i0 * C, C);
            }
        }
    }
}

void nm_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int B, int T, int C,
                           int H, const nm_attn_dropout *drop, float *scratch) {
    int hd = C / H, ld = 3 * C;
    float scale = 1.0f / sqrtf((float)hd);
    int use_drop = drop && drop->p > 0.0f;
#pragma omp parallel
    {
        float *w = scratch + (long)omp_get_thread_num() * 2 * T * T;
        float *dP = w + (long)T * T;
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * H; bh++) {
            int b = bh / H, h = bh % H;
            long row0 = (long)b * T * ld + h * hd;
            const float *q = qkv + row0, *k = q + C, *v = q + 2 * C;
            float *dq = dqkv + row0, *dk = dq + C, *dv = dq + 2 * C;
            const float *P = probs + (long)bh * T * T;
            const float *dO = dout + (long)b * T * C + h * hd;
            /* the last block reaches every key, so it writes dK and dV whole
             * (beta 0) and the earlier blocks add into their prefix */
            int last = (T - 1) / ROWS * ROWS;
            for (int i0 = last; i0 >= 0; i0 -= ROWS) {
                int i1 = i0 + ROWS < T ? i0 + ROWS : T, nr = i1 - i0;
                float beta = i0 == last ? 0.0f : 1.0f;
                const float *Pb = P + (long)i0 * T, *Pd = Pb;
                const float *dOb = dO + (long)i0 * C;
                if (use_drop) {
                    memcpy(w, Pb, sizeof(float) * (size_t)nr * T);
                    apply_dropout(w, T, i0, i1, drop, b, h, H);
                    Pd = w;
                }
                /* dV[0:i1] += Pd^T dO; dPd = dO V^T */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, hd, nr, 1.0f, Pd, T, dOb, C, beta, dv, ld);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nr, i1, hd, 1.0f, dOb, C, v, ld, 0.0f, dP, T);
                if (use_drop) apply_dropout(dP, T, i0, i1, drop, b, h, H);
                /* softmax backward on the causal part: dS = P (dP - <P, dP>) */
                for (int i = i0; i < i1; i++)
                    causal_softmax_backward_row(dP + (long)(i - i0) * T, P + (long)i * T, i, T);
                /* dQ = scale dS K; dK[0:i1] += scale dS^T Q */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nr, hd, i1, scale, dP, T, k, ld, 0.0f,
                            dq + (long)i0 * ld, ld);
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, i1, hd, nr, scale, dP, T, q + (long)i0 * ld, ld,
                            beta, dk, ld);
            }
        }
    }
}

void nm_attention_decode(float *out, const float *q, const float *kcache, const float *vcache, int ld, int t, int C,
                         int H, float *scores) {
    int hd = C / H;
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = 0; h < H; h++) {
        const float *qh = q + h * hd;
        float mx = -INFINITY;
        for (int j = 0; j <= t; j++) {
            const float *kj = kcache + (long)j * ld + h * hd;
            float s = 0.0f;
            for (int d = 0; d < hd; d++) s += qh[d] * kj[d];
            scores[j] = s * scale;
            mx = scores[j] > mx ? scores[j] : mx;
        }
        float sum = 0.0f;
        for (int j = 0; j <= t; j++) {
            scores[j] = nm_expf(scores[j] - mx);
            sum += scores[j];
        }
        float *oh = out + h * hd;
        for (int d = 0; d < hd; d++) oh[d] = 0.0f;
        for (int j = 0; j <= t; j++) {
            const float *vj = vcache + (long)j * ld + h * hd;
            float wj = scores[j] / sum;
            for (int d = 0; d < hd; d++) oh[d] += wj * vj[d];
        }
    }
}
