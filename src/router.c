/* Top-k router with softmax gates and the Switch load-balancing loss. */
#include "nanomoe/router.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"

#include "nanomoe/fastmath.h"
#include "nanomoe/gemm.h"
#include "nanomoe/ops.h"

void nm_router_forward(float *probs, int32_t *topi, float *gates, double *psum, double *top1, double *ent,
                       const float *m, const float *Wr, int N, int C, int E, int K, int seq_len) {
    nm_dense_forward(probs, m, Wr, NULL, N / seq_len, seq_len, C, E); /* logits, turned into probs below */
#pragma omp parallel for if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        float *r = probs + (long)n * E;
        int32_t *ti = topi + (long)n * K;
        float *g = gates + (long)n * K;
        /* top-k by repeated selection: E is small, and strict '>' keeps the
         * lower index on ties */
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= ti[j] == e;
                if (!taken && (best < 0 || r[e] > r[best])) best = e;
            }
            ti[k] = best;
        }
        float mx = r[ti[0]], s = 0.0f;
        for (int k = 0; k < K; k++) {
            g[k] = nm_expf(r[ti[k]] - mx);
            s += g[k];
        }
        for (int k = 0; k < K; k++) g[k] /= s;
        /* full softmax in place: logits become probs */
        float rmx = r[ti[0]], rs = 0.0f;
        for (int e = 0; e < E; e++) {
            r[e] = nm_expf(r[e] - rmx);
            rs += r[e];
        }
        for (int e = 0; e < E; e++) r[e] /= rs;
    }
    /* statistics in token order, one sequence per task */
    int nseq = N / seq_len;
#pragma omp parallel for if ((long)N * E > 16384)
    for (int sq = 0; sq < nseq; sq++) {
        double *ps = psum + (long)sq * E, *t1 = top1 + (long)sq * E, h = 0.0;
        for (int e = 0; e < E; e++) ps[e] = t1[e] = 0.0;
        for (int n = sq * seq_len; n < (sq + 1) * seq_len; n++) {
            const float *p = probs + (long)n * E;
            for (int e = 0; e < E; e++) {
                ps[e] += p[e];
                if (p[e] > 0.0f) h -= (double)p[e] * log((double)p[e]);
            }
            t1[topi[(long)n * K]] += 1.0;
        }
        ent[sq] = h;
    }
}

double nm_router_aux(const double *psum, const double *top1, double ntok, int E, double *dprob) {
    double aux = 0.0;
    for (int e = 0; e < E; e++) {
        double f = top1[e] / ntok, P = psum[e] / ntok;
        aux += f * P;
        if (dprob) dprob[e] = E * f / ntok;
    }
    return E * aux;
}

double nm_router_aux_seqs(const double *psum, const double *top1, int nseq, double ntok, int E, double *dprob) {
    double *ps = nm_calloc((size_t)2 * E, sizeof(double)), *t1 = ps + E;
    for (int s = 0; s < nseq; s++)
        for (int e = 0; e < E; e++) {
            ps[e] += psum[(size_t)s * E + e];
            t1[e] += top1[(size_t)s * E + e];
        }
    double aux = nm_router_aux(ps, t1, ntok, E, dprob);
    free(ps);
    return aux;
}

void nm_router_backward(float *dm, float *dWr, float *dlogits, const float *m, const float *Wr, const float *probs,
                        const int32_t *topi, const float *gates, const float *dgates, const double *dprob, int N,
                        int C, int E, int K, int seq_len) {
#pragma omp parallel for if ((long)N * E > 16384)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (long)n * E;
        float *dl = dlogits + (long)n * E;
        /* full softmax: dl_e = p_e (dp_e - sum_j p_j dp_j) */
        double dot = 0.0;
        for (int e = 0; e < E; e++) dot += p[e] * dprob[e];
        for (int e = 0; e < E; e++) dl[e] = (float)(p[e] * (dprob[e] - dot));
        /* gates = softmax of the selected logits */
        const float *g = gates + (long)n * K, *dg = dgates + (long)n * K;
        const int32_t *ti = topi + (long)n * K;
        float gdot = 0.0f;
        for (int k = 0; k < K; k++) gdot += g[k] * dg[k];
        for (int k = 0; k < K; k++) dl[ti[k]] += g[k] * (dg[k] - gdot);
    }
    nm_dense_backward(dm, dWr, NULL, dlogits, m, Wr, N / seq_len, seq_len, C, E);
}
