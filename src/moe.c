/* Mixture-of-Experts layer: route, permute into per-expert groups, run the
 * experts on their groups only, combine with the gates. */
#include "nanomoe/moe.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"
#include "nanomoe/experts.h"
#include "nanomoe/router.h"

#define PAR_MIN 16384

/* Adds the time since *t0 to a timer and restarts the clock. */
static void lap(nm_moe_scratch *s, nm_timer_id id, double *t0) {
    if (!s->timers) return;
    double t = nm_now();
    s->timers->sec[id] += t - *t0;
    *t0 = t;
}

void nm_moe_acts_alloc(nm_moe_acts *a, const nm_moe_dims *d) {
    size_t NK = (size_t)d->N * d->K;
    a->probs = nm_malloc(sizeof(float) * (size_t)d->N * d->E);
    a->topi = nm_malloc(sizeof(int32_t) * NK);
    a->gates = nm_malloc(sizeof(float) * NK);
    a->slot = nm_malloc(sizeof(int32_t) * NK);
    a->count = nm_malloc(sizeof(int32_t) * (size_t)d->E);
    a->offset = nm_malloc(sizeof(int32_t) * ((size_t)d->E + 1));
    a->xs = nm_malloc(sizeof(float) * NK * d->C);
    a->u = nm_malloc(sizeof(float) * NK * d->F);
    a->ys = nm_malloc(sizeof(float) * NK * d->C);
    size_t nseq = (size_t)(d->N / d->seq_len);
    a->psum = nm_malloc(sizeof(double) * nseq * d->E);
    a->top1 = nm_malloc(sizeof(double) * nseq * d->E);
}

void nm_moe_acts_free(nm_moe_acts *a) {
    free(a->probs);
    free(a->topi);
    free(a->gates);
    free(a->slot);
    free(a->count);
    free(a->offset);
    free(a->xs);
    free(a->u);
    free(a->ys);
    free(a->psum);
    free(a->top1);
    memset(a, 0, sizeof *a);
}

void nm_moe_scratch_alloc(nm_moe_scratch *s, const nm_moe_dims *d) {
    size_t NK = (size_t)d->N * d->K;
    /* act is also the per-thread tile scratch of the expert forward */
    size_t tiles = (size_t)omp_get_max_threads() * NM_EXPERT_TILE;
    s->act = nm_malloc(sizeof(float) * (NK > tiles ? NK : tiles) * d->F);
    s->du = nm_malloc(sizeof(float) * NK * d->F);
    s->dxs = nm_malloc(sizeof(float) * NK * d->C);
    s->dys = nm_malloc(sizeof(float) * NK * d->C);
    s->dgates = nm_malloc(sizeof(float) * NK);
    s->dlogits = nm_malloc(sizeof(float) * (size_t)d->N * d->E);
}

void nm_moe_scratch_free(nm_moe_scratch *s) {
    free(s->act);
    free(s->du);
    free(s->dxs);
    free(s->dys);
    free(s->dgates);
    free(s->dlogits);
    memset(s, 0, sizeof *s);
}

void nm_moe_plan(int32_t *slot, int32_t *count, int32_t *offset, const int32_t *topi, int N, int K, int E) {
    memset(count, 0, sizeof(int32_t) * (size_t)E);
    for (long i = 0; i < (long)N * K; i++) count[topi[i]]++;
    offset[0] = 0;
    for (int e = 0; e < E; e++) offset[e + 1] = offset[e] + count[e];
    /* reuse count as a fill cursor, then restore it */
    for (int e = 0; e < E; e++) count[e] = offset[e];
    for (long i = 0; i < (long)N * K; i++) slot[i] = count[topi[i]]++;
    for (int e = 0; e < E; e++) count[e] = offset[e + 1] - offset[e];
}

void nm_moe_forward(float *out, nm_moe_acts *a, const float *m, const nm_layer_view *w, const nm_moe_dims *d,
                    nm_moe_scratch *s) {
    int N = d->N, C = d->C, F = d->F, E = d->E, K = d->K;
    double t0 = nm_now();
    nm_router_forward(a->probs, a->topi, a->gates, a->psum, a->top1, m, w->router_w, N, C, E, K, d->seq_len);
    lap(s, NM_T_ROUTER, &t0);
    nm_moe_plan(a->slot, a->count, a->offset, a->topi, N, K, E);
    /* permute: each (token, k) copy of m lands in its expert's group */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            memcpy(a->xs + (size_t)a->slot[(long)n * K + k] * C, m + (long)n * C, sizeof(float) * (size_t)C);
    lap(s, NM_T_PERMUTE, &t0);
    nm_experts_forward(a->ys, a->u, a->xs, w->fc1_w, w->fc1_b, w->fc2_w, w->fc2_b, a->offset + d->expert_begin,
                       a->count + d->expert_begin, d->expert_count, C, F, s->act);
    lap(s, NM_T_EXPERTS, &t0);
    /* un-permute and combine with the gates */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *o = out + (long)n * C;
        for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int k = 0; k < K; k++) {
            float g = a->gates[(long)n * K + k];
            const float *y = a->ys + (size_t)a->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) o[c] += g * y[c];
        }
    }
    lap(s, NM_T_PERMUTE, &t0);
}

void nm_moe_backward(float *dm, const nm_layer_view *g, const float *dout, const nm_moe_acts *a, const float *m,
                     const nm_layer_view *w, const double *dprob, const nm_moe_dims *d, nm_moe_scratch *s) {
    int N = d->N, C = d->C, F = d->F, E = d->E, K = d->K;
    double t0 = nm_now();
    /* combine backward: gradient to each gate and to each expert output row */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *dO = dout + (long)n * C;
        for (int k = 0; k < K; k++) {
            size_t r = (size_t)a->slot[(long)n * K + k];
            const float *y = a->ys + r * C;
            float *dy = s->dys + r * C;
            float gate = a->gates[(long)n * K + k], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) {
                dot += dO[c] * y[c];
                dy[c] = gate * dO[c];
            }
            s->dgates[(long)n * K + k] = dot;
        }
    }
    lap(s, NM_T_PERMUTE, &t0);
    nm_experts_backward(s->dxs, g->fc1_w, g->fc1_b, g->fc2_w, g->fc2_b, s->dys, a->xs, a->u, w->fc1_w, w->fc2_w,
                        a->offset + d->expert_begin, a->count + d->expert_begin, d->expert_count, C, F, s->act, s->du);
    lap(s, NM_T_EXPERTS, &t0);
    /* permute backward: each token gathers the gradients of its K copies */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *dmn = dm + (long)n * C;
        for (int k = 0; k < K; k++) {
            const float *dx = s->dxs + (size_t)a->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) dmn[c] += dx[c];
        }
    }
    lap(s, NM_T_PERMUTE, &t0);
    nm_router_backward(dm, g->router_w, s->dlogits, m, w->router_w, a->probs, a->topi, a->gates, s->dgates, dprob, N,
                       C, E, K);
    lap(s, NM_T_ROUTER, &t0);
}
