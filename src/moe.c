/* Mixture-of-Experts layer: route, permute into per-expert groups, exchange
 * with the ranks that own the experts, run each expert on its rows only,
 * exchange back, combine with the gates. */
#include "nanomoe/moe.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"
#include "nanomoe/experts.h"
#include "nanomoe/ops.h"
#include "nanomoe/router.h"

#define PAR_MIN 16384

/* Adds the time since *t0 to a timer and restarts the clock. */
static void lap(nm_moe_scratch *s, nm_timer_id id, double *t0) {
    if (!s->timers) return;
    double t = nm_now();
    s->timers->sec[id] += t - *t0;
    *t0 = t;
}

size_t nm_moe_max_rows_in(int N, int K, int Q, int El) {
    if (Q == 1) return (size_t)N * K;
    return (size_t)Q * N * (size_t)(K < El ? K : El);
}

static float *falloc(size_t rows, int width) { return nm_malloc(sizeof(float) * (rows ? rows : 1) * (size_t)width); }

void nm_moe_acts_alloc(nm_moe_acts *a, const nm_moe_dims *d, const nm_dispatch *x) {
    memset(a, 0, sizeof *a);
    size_t NK = (size_t)d->N * d->K, in = x->max_rows_in;
    a->probs = falloc((size_t)d->N, d->E);
    a->topi = nm_malloc(sizeof(int32_t) * (NK ? NK : 1));
    a->gates = falloc(NK, 1);
    a->slot = nm_malloc(sizeof(int32_t) * (NK ? NK : 1));
    a->count = nm_malloc(sizeof(int32_t) * (size_t)d->E);
    a->offset = nm_malloc(sizeof(int32_t) * ((size_t)d->E + 1));
    a->xs = falloc(NK, d->C);
    a->ys = falloc(NK, d->C);
    nm_dispatch_plan_alloc(&a->plan, x);
    if (x->Q > 1) {
        a->xe_buf = falloc(in, d->C);
        a->ye_buf = falloc(in, d->C);
    }
    a->u = falloc(in, d->F);
    a->kept = nm_calloc((size_t)x->El, sizeof(int32_t));
    size_t nseq = d->seq_len > 0 ? (size_t)(d->N / d->seq_len) : 0;
    a->psum = nm_malloc(sizeof(double) * (nseq ? nseq : 1) * d->E);
    a->top1 = nm_malloc(sizeof(double) * (nseq ? nseq : 1) * d->E);
    a->ent = nm_malloc(sizeof(double) * (nseq ? nseq : 1));
}

void nm_moe_acts_free(nm_moe_acts *a) {
    free(a->probs);
    free(a->topi);
    free(a->gates);
    free(a->slot);
    free(a->count);
    free(a->offset);
    free(a->xs);
    free(a->ys);
    nm_dispatch_plan_free(&a->plan);
    free(a->xe_buf);
    free(a->ye_buf);
    free(a->u);
    free(a->kept);
    free(a->psum);
    free(a->top1);
    free(a->ent);
    memset(a, 0, sizeof *a);
}

void nm_moe_scratch_alloc(nm_moe_scratch *s, const nm_moe_dims *d, const nm_dispatch *x) {
    memset(s, 0, sizeof *s);
    size_t NK = (size_t)d->N * d->K, in = x->max_rows_in;
    /* act is also the per-thread tile scratch of the expert forward */
    size_t tiles = (size_t)omp_get_max_threads() * NM_EXPERT_TILE;
    s->act = falloc(in > tiles ? in : tiles, d->F);
    s->du = falloc(in, d->F);
    s->dxs = falloc(NK, d->C);
    s->dys = falloc(NK, d->C);
    if (x->Q > 1) {
        s->dxe = falloc(in, d->C);
        s->dye = falloc(in, d->C);
    }
    s->dgates = falloc(NK, 1);
    s->dlogits = falloc((size_t)d->N, d->E);
}

void nm_moe_scratch_free(nm_moe_scratch *s) {
    free(s->act);
    free(s->du);
    free(s->dxs);
    free(s->dys);
    free(s->dxe);
    free(s->dye);
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

/* Rows each local expert keeps under the capacity limit: the first `capacity`
 * rows of the global batch in global order. Replicas of an expert see
 * consecutive parts of the batch, so a replica keeps what is left after the
 * replicas before it. */
static void apply_capacity(nm_moe_acts *a, const nm_moe_dims *d, const nm_dispatch *x) {
    int El = x->El;
    a->dropped = 0;
    if (d->capacity <= 0) {
        memcpy(a->kept, a->plan.expert_rows, sizeof(int32_t) * (size_t)El);
        return;
    }
    long before[El];
    for (int e = 0; e < El; e++) before[e] = 0;
    if (x->rep != MPI_COMM_NULL) {
        long rows[El];
        for (int e = 0; e < El; e++) rows[e] = a->plan.expert_rows[e];
        NM_MPI_CHECK(MPI_Exscan(rows, before, El, MPI_LONG, MPI_SUM, x->rep));
        int rr;
        NM_MPI_CHECK(MPI_Comm_rank(x->rep, &rr));
        if (rr == 0)
            for (int e = 0; e < El; e++) before[e] = 0; /* Exscan leaves rank 0's result undefined */
    }
    for (int e = 0; e < El; e++) {
        long left = d->capacity - before[e], rows = a->plan.expert_rows[e];
        long keep = left < 0 ? 0 : (left < rows ? left : rows);
        a->kept[e] = (int32_t)keep;
        a->dropped += rows - keep;
    }
}

/* Zeroes rows [offset + kept, offset + rows) of every local expert. */
static void zero_dropped(float *buf, const nm_moe_acts *a, int El, int C) {
    for (int e = 0; e < El; e++) {
        size_t r0 = (size_t)a->plan.expert_offset[e] + (size_t)a->kept[e];
        size_t n = (size_t)(a->plan.expert_rows[e] - a->kept[e]);
        if (n) memset(buf + r0 * C, 0, sizeof(float) * n * C);
    }
}

void nm_moe_forward(float *out, nm_moe_acts *a, const float *m, const nm_layer_view *w, const nm_moe_dims *d,
                    nm_moe_scratch *s, nm_dispatch *x) {
    int N = d->N, C = d->C, F = d->F, E = d->E, K = d->K;
    double t0 = nm_now();
    nm_router_forward(a->probs, a->topi, a->gates, a->psum, a->top1, a->ent, m, w->router_w, N, C, E, K, d->seq_len);
    lap(s, NM_T_ROUTER, &t0);
    nm_moe_plan(a->slot, a->count, a->offset, a->topi, N, K, E);
    /* permute: each (token, k) copy of m lands in its expert's group */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            memcpy(a->xs + (size_t)a->slot[(long)n * K + k] * C, m + (long)n * C, sizeof(float) * (size_t)C);
    lap(s, NM_T_PERMUTE, &t0);
    nm_dispatch_make_plan(x, &a->plan, a->count);
    a->xe = nm_dispatch_to_experts(x, &a->plan, a->xs, a->xe_buf);
    apply_capacity(a, d, x);
    t0 = nm_now();
    /* with one rank the expert side is the slot order itself */
    float *ye = x->Q == 1 ? a->ys : a->ye_buf;
    nm_experts_forward(ye, a->u, a->xe, w->fc1_w, w->fc1_b, w->fc2_w, w->fc2_b, a->plan.expert_offset, a->kept, x->El,
                       C, F, s->act);
    if (d->capacity > 0) zero_dropped(ye, a, x->El, C); /* dropped copies add nothing: the residual passes */
    lap(s, NM_T_EXPERTS, &t0);
    const float *ys = nm_dispatch_from_experts(x, &a->plan, ye, a->ys);
    t0 = nm_now();
    /* un-permute and combine with the gates */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *o = out + (long)n * C;
        for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int k = 0; k < K; k++) {
            float g = a->gates[(long)n * K + k];
            const float *y = ys + (size_t)a->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) o[c] += g * y[c];
        }
    }
    lap(s, NM_T_PERMUTE, &t0);
}

void nm_moe_backward(float *dm, float *dWr, const nm_layer_view *g, const float *dout, const nm_moe_acts *a,
                     const float *m, const nm_layer_view *w, const double *dprob, const nm_moe_dims *d,
                     nm_moe_scratch *s, nm_dispatch *x) {
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
    const float *dye = nm_dispatch_to_experts(x, &a->plan, s->dys, s->dye);
    t0 = nm_now();
    float *dxe = x->Q == 1 ? s->dxs : s->dxe;
    nm_experts_backward(dxe, g->fc1_w, g->fc1_b, g->fc2_w, g->fc2_b, dye, a->xe, a->u, w->fc1_w, w->fc2_w,
                        a->plan.expert_offset, a->kept, x->El, C, F, s->act, s->du);
    if (d->capacity > 0) zero_dropped(dxe, a, x->El, C);
    lap(s, NM_T_EXPERTS, &t0);
    const float *dxs = nm_dispatch_from_experts(x, &a->plan, dxe, s->dxs);
    t0 = nm_now();
    /* permute backward: each token gathers the gradients of its K copies */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *dmn = dm + (long)n * C;
        for (int k = 0; k < K; k++) {
            const float *dx = dxs + (size_t)a->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) dmn[c] += dx[c];
        }
    }
    lap(s, NM_T_PERMUTE, &t0);
    nm_router_backward(dm, dWr, s->dlogits, m, w->router_w, a->probs, a->topi, a->gates, s->dgates, dprob, N, C, E,
                       K, d->seq_len);
    lap(s, NM_T_ROUTER, &t0);
}

void nm_moe_router_weight_grad(float *dWr, const float *m, const nm_moe_scratch *s, int r0, int n, const nm_moe_dims *d) {
    nm_dense_backward(NULL, dWr, NULL, s->dlogits + (size_t)r0 * d->E, m + (size_t)r0 * d->C, NULL, 1, n, d->C, d->E);
}
