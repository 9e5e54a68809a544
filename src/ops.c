/* Elementwise and row-wise ops (embedding, layernorm, dense, GELU, dropout,
 * residual add, cross-entropy). Rows are split over OpenMP threads; every
 * reduction over rows runs in row order so results do not depend on the
 * thread count. */
#include "nanomoe/ops.h"

#include <math.h>
#include <string.h>

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>

#include "nanomoe/error.h"
#include "nanomoe/fastmath.h"
#include "nanomoe/gemm.h"
#include "nanomoe/rng.h"

/* Parallelise loops only above this many elements (thread wake-up costs ~us). */
#define PAR_MIN 16384

void nm_embedding_forward(float *out, const int32_t *ids, const float *tok, const float *pos, int B, int T, int C) {
#pragma omp parallel for if ((long)B * T * C > PAR_MIN)
    for (long n = 0; n < (long)B * T; n++) {
        const float *te = tok + (long)ids[n] * C, *pe = pos + (n % T) * C;
        float *o = out + n * C;
        for (int c = 0; c < C; c++) o[c] = te[c] + pe[c];
    }
}

void nm_embedding_backward(float *dtok, float *dpos, const float *dout, const int32_t *ids, int B, int T, int C) {
    /* columns are split over threads so that scatters into dtok never race
     * and each sum runs in row order */
#pragma omp parallel if ((long)B * T * C > PAR_MIN)
    {
#pragma omp for schedule(static)
        for (int t = 0; t < T; t++)
            for (int b = 0; b < B; b++) {
                const float *d = dout + ((long)b * T + t) * C;
                float *dp = dpos + (long)t * C;
                for (int c = 0; c < C; c++) dp[c] += d[c];
            }
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < C; c0 += 16) {
            int c1 = c0 + 16 < C ? c0 + 16 : C;
            for (long n = 0; n < (long)B * T; n++) {
                const float *d = dout + n * C;
                float *dt = dtok + (long)ids[n] * C;
                for (int c = c0; c < c1; c++) dt[c] += d[c];
            }
        }
    }
}

void nm_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *s, const float *b,
                          int N, int C, float eps) {
#pragma omp parallel for if ((long)N * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * C;
        float m = 0.0f;
#pragma omp simd reduction(+ : m)
        for (int c = 0; c < C; c++) m += x[c];
        m /= (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        v /= (float)C;
        float r = 1.0f / sqrtf(v + eps);
        float *o = out + (long)n * C;
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * s[c] + b[c];
        mean[n] = m;
        rstd[n] = r;
    }
}

void nm_layernorm_backward(float *dinp, float *ds, float *db, const float *dout, const float *inp, const float *s,
                           const float *mean, const float *rstd, int N, int C) {
#pragma omp parallel if ((long)N * C > PAR_MIN)
    {
        if (dinp) {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (long)n * C, *d = dout + (long)n * C;
            float m = mean[n], r = rstd[n];
            float dmean = 0.0f, dxhat = 0.0f;
#pragma omp simd reduction(+ : dmean, dxhat)
            for (int c = 0; c < C; c++) {
                float dn = d[c] * s[c];
                dmean += dn;
                dxhat += dn * (x[c] - m) * r;
            }
            dmean /= (float)C;
            dxhat /= (float)C;
            float *di = dinp + (long)n * C;
            for (int c = 0; c < C; c++) {
                float xh = (x[c] - m) * r;
                di[c] += r * (d[c] * s[c] - dmean - xh * dxhat);
            }
        }
        }
        if (ds) {
#pragma omp for schedule(static)
        for (int c0 = 0; c0 < C; c0 += 16) {
            int c1 = c0 + 16 < C ? c0 + 16 : C;
            for (int n = 0; n < N; n++) {
                const float *x = inp + (long)n * C, *d = dout + (long)n * C;
                float m = mean[n], r = rstd[n];
                for (int c = c0; c < c1; c++) {
                    ds[c] += d[c] * (x[c] - m) * r;
                    db[c] += d[c];
                }
            }
        }
        }
    }
}

void nm_dense_forward(float *out, const float *inp, const float *W, const float *b, int B, int T, int Din, int Dout) {
    long N = (long)B * T;
    if (b) {
#pragma omp parallel for if (N * Dout > PAR_MIN)
        for (long n = 0; n < N; n++) memcpy(out + n * Dout, b, sizeof(float) * (size_t)Dout);
    }
    nm_gemm_seq(0, B, T, Dout, Din, inp, Din, W, Dout, b ? 1.0f : 0.0f, out, Dout);
}

/* A vector of ones for column sums as matrix-vector products; it only grows,
 * so after the first step of a run nothing is allocated. */
static float *ones_vec(size_t n) {
    static float *ones = NULL;
    static size_t have = 0;
    float *r;
#pragma omp critical(nm_ones)
    {
        if (have < n) {
            float *p = realloc(ones, sizeof(float) * n);
            if (!p) NM_ABORT("out of memory allocating %zu floats", n);
            for (size_t i = have; i < n; i++) p[i] = 1.0f;
            ones = p;
            have = n;
        }
        r = ones;
    }
    return r;
}

void nm_colsum_reserve(size_t rows) { ones_vec(rows); }

void nm_colsum_add(float *db, const float *dout, int N, int Dout) {
    if (N <= 0) return;
    /* db += dout^T 1: sgemv reads the rows contiguously (3-10x faster than a
     * strided loop here); threads take column ranges, so every column is
     * summed in the same order whatever the thread count */
    const float *ones = ones_vec((size_t)N);
    int nt = omp_in_parallel() || (long)N * Dout < PAR_MIN ? 1 : omp_get_max_threads();
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num(), n = omp_get_num_threads();
        int per = ((Dout + n - 1) / n + 15) / 16 * 16;
        int j0 = id * per, j1 = j0 + per < Dout ? j0 + per : Dout;
        if (j0 < j1) cblas_sgemv(CblasRowMajor, CblasTrans, N, j1 - j0, 1.0f, dout + j0, Dout, ones, 1, 1.0f, db + j0, 1);
    }
}

void nm_dense_backward(float *dinp, float *dW, float *db, const float *dout, const float *inp, const float *W, int B,
                       int T, int Din, int Dout) {
    int N = B * T;
    if (N <= 0) return;
    if (dinp) nm_gemm_seq(1, B, T, Din, Dout, dout, Dout, W, Dout, 1.0f, dinp, Din);
    if (dW) nm_gemm(1, 0, Din, Dout, N, 1.0f, inp, Din, dout, Dout, 1.0f, dW, Dout);
    if (db) nm_colsum_add(db, dout, N, Dout);
}

/* gelu(u) = 0.5 u (1 + tanh(z)) = u * sigmoid(2z), z = sqrt(2/pi) (u + 0.044715 u^3) */
#define GELU_2C 1.5957691216057308f /* 2 sqrt(2/pi) */
#define GELU_A 0.044715f

void nm_gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float u = inp[i];
        float z2 = GELU_2C * (u + GELU_A * u * u * u);
        out[i] = u / (1.0f + nm_expf(-z2));
    }
}

void nm_gelu_backward(float *dinp, float *act, const float *inp, const float *dout, size_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        float u = inp[i];
        float z2 = GELU_2C * (u + GELU_A * u * u * u);
        float sg = 1.0f / (1.0f + nm_expf(-z2));
        /* d/du [u sg(2z)] = sg + u sg (1 - sg) d(2z)/du */
        float dz2 = GELU_2C * (1.0f + 3.0f * GELU_A * u * u);
        if (act) act[i] = u * sg;
        dinp[i] = dout[i] * (sg + u * sg * (1.0f - sg) * dz2);
    }
}

#define DROPOUT_DOMAIN 0x64726f70ULL

uint64_t nm_dropout_key(uint64_t seed, uint64_t step, uint64_t site) {
    return nm_rng_key(seed, DROPOUT_DOMAIN, step, site);
}

/* A 32-bit mixer (lowbias32 constants): cheap enough to vectorise with 32-bit
 * multiplies, which is what makes per-element dropout masks affordable. */
static inline uint32_t mix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x21f0aaadu;
    h ^= h >> 15;
    h *= 0x735a2d97u;
    h ^= h >> 15;
    return h;
}

/* The mask for elements [0, n) of a site, starting at global index base. */
static void dropout_range(float *restrict x, size_t n, uint32_t thresh, float scale, uint64_t key, uint64_t base) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        uint64_t g = base + i;
        /* fold the element index (high word first) into the site key */
        uint32_t h = mix32((uint32_t)g ^ mix32((uint32_t)(g >> 32) ^ k1) ^ k0);
        x[i] = h >= thresh ? x[i] * scale : 0.0f;
    }
}

void nm_dropout(float *x, size_t n, float p, uint64_t key, uint64_t base) {
    if (p <= 0.0f) return;
    /* keep iff a 32-bit draw >= p * 2^32 */
    double t = (double)p * 4294967296.0;
    uint32_t thresh = t >= 4294967295.0 ? 0xFFFFFFFFu : (uint32_t)t;
    float scale = 1.0f / (1.0f - p);
    if (n <= PAR_MIN || omp_in_parallel()) {
        dropout_range(x, n, thresh, scale, key, base);
        return;
    }
    const size_t chunk = 8192;
#pragma omp parallel for schedule(static)
    for (size_t c0 = 0; c0 < n; c0 += chunk)
        dropout_range(x + c0, n - c0 < chunk ? n - c0 : chunk, thresh, scale, key, base + c0);
}

void nm_add(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for simd if (n > PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

double nm_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    double total = 0.0;
    /* sum in row order: per-row losses first, then a serial sum */
#pragma omp parallel for if ((long)N * V > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (long)n * V;
        float mx = l[0];
        for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        double s = 0.0;
        for (int v = 0; v < V; v++) s += exp((double)(l[v] - mx));
        losses[n] = (float)(log(s) + mx - l[targets[n]]);
    }
    for (int n = 0; n < N; n++) total += losses[n];
    return total;
}

void nm_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
                              float scale) {
#pragma omp parallel for if ((long)N * V > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *l = logits + (long)n * V;
        float *d = dlogits + (long)n * V;
        float mx = l[0];
        for (int v = 1; v < V; v++) mx = l[v] > mx ? l[v] : mx;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int v = 0; v < V; v++) {
            d[v] = nm_expf(l[v] - mx);
            s += d[v];
        }
        float inv = scale / s;
        for (int v = 0; v < V; v++) d[v] *= inv;
        d[targets[n]] -= scale;
    }
}

void nm_softmax_rows(float *x, int N, int V) {
#pragma omp parallel for if ((long)N * V > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *r = x + (long)n * V;
        float mx = r[0];
        for (int v = 1; v < V; v++) mx = r[v] > mx ? r[v] : mx;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int v = 0; v < V; v++) {
            r[v] = nm_expf(r[v] - mx);
            s += r[v];
        }
        float inv = 1.0f / s;
        for (int v = 0; v < V; v++) r[v] *= inv;
    }
}
