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

size_t nm_moe_max_rows_in(int N, int K, int Q, int El) {
    if (Q == 1) return (size_t)N * K;
    return (size_t)Q * N * (size_t)(K < El ? K : El);
}

void nm_moe_acts_alloc(nm_moe_acts *acts, const nm_moe_dims *dims, const nm_dispatch *dispatch) {
    memset(acts, 0, sizeof *acts);
    size_t NK = (size_t)dims->N * dims->K, in = dispatch->max_rows_in;
    acts->probs = nm_falloc((size_t)dims->N * dims->E);
    acts->topi = nm_malloc(sizeof(int32_t) * (NK ? NK : 1));
    acts->gates = nm_falloc(NK);
    acts->slot = nm_malloc(sizeof(int32_t) * (NK ? NK : 1));
    acts->count = nm_malloc(sizeof(int32_t) * (size_t)dims->E);
    acts->offset = nm_malloc(sizeof(int32_t) * ((size_t)dims->E + 1));
    acts->xs = nm_falloc(NK * dims->C);
    acts->ys = nm_falloc(NK * dims->C);
    nm_dispatch_plan_alloc(&acts->plan, dispatch);
    if (dispatch->Q > 1) {
        acts->xe_buf = nm_falloc(in * dims->C);
        acts->ye_buf = nm_falloc(in * dims->C);
    }
    acts->u = nm_falloc(in * dims->F);
    acts->kept = nm_calloc((size_t)dispatch->El, sizeof(int32_t));
    size_t nseq = dims->seq_len > 0 ? (size_t)(dims->N / dims->seq_len) : 0;
    acts->psum = nm_malloc(sizeof(double) * (nseq ? nseq : 1) * dims->E);
    acts->top1 = nm_malloc(sizeof(double) * (nseq ? nseq : 1) * dims->E);
    acts->ent = nm_malloc(sizeof(double) * (nseq ? nseq : 1));
}

void nm_moe_acts_free(nm_moe_acts *acts) {
    free(acts->probs);
    free(acts->topi);
    free(acts->gates);
    free(acts->slot);
    free(acts->count);
    free(acts->offset);
    free(acts->xs);
    free(acts->ys);
    nm_dispatch_plan_free(&acts->plan);
    free(acts->xe_buf);
    free(acts->ye_buf);
    free(acts->u);
    free(acts->kept);
    free(acts->psum);
    free(acts->top1);
    free(acts->ent);
    memset(acts, 0, sizeof *acts);
}

void nm_moe_scratch_alloc(nm_moe_scratch *scratch, const nm_moe_dims *dims, const nm_dispatch *dispatch) {
    memset(scratch, 0, sizeof *scratch);
    size_t NK = (size_t)dims->N * dims->K, in = dispatch->max_rows_in;
    /* act is also the per-thread tile scratch of the expert forward */
    size_t tiles = (size_t)omp_get_max_threads() * NM_EXPERT_TILE;
    scratch->act = nm_falloc((in > tiles ? in : tiles) * dims->F);
    scratch->du = nm_falloc(in * dims->F);
    scratch->dxs = nm_falloc(NK * dims->C);
    scratch->dys = nm_falloc(NK * dims->C);
    if (dispatch->Q > 1) {
        scratch->dxe = nm_falloc(in * dims->C);
        scratch->dye = nm_falloc(in * dims->C);
    }
    scratch->dgates = nm_falloc(NK);
    scratch->dlogits = nm_falloc((size_t)dims->N * dims->E);
}

void nm_moe_scratch_free(nm_moe_scratch *scratch) {
    free(scratch->act);
    free(scratch->du);
    free(scratch->dxs);
    free(scratch->dys);
    free(scratch->dxe);
    free(scratch->dye);
    free(scratch->dgates);
    free(scratch->dlogits);
    memset(scratch, 0, sizeof *scratch);
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
static void apply_capacity(nm_moe_acts *acts, const nm_moe_dims *dims, const nm_dispatch *dispatch) {
    int El = dispatch->El;
    acts->dropped = 0;
    if (dims->capacity <= 0) {
        memcpy(acts->kept, acts->plan.expert_rows, sizeof(int32_t) * (size_t)El);
        return;
    }
    long before[El];
    for (int e = 0; e < El; e++) before[e] = 0;
    if (dispatch->rep != MPI_COMM_NULL) {
        long rows[El];
        for (int e = 0; e < El; e++) rows[e] = acts->plan.expert_rows[e];
        NM_MPI_CHECK(MPI_Exscan(rows, before, El, MPI_LONG, MPI_SUM, dispatch->rep));
        int rr;
        NM_MPI_CHECK(MPI_Comm_rank(dispatch->rep, &rr));
        if (rr == 0)
            for (int e = 0; e < El; e++) before[e] = 0; /* Exscan leaves rank 0's result undefined */
    }
    for (int e = 0; e < El; e++) {
        long left = dims->capacity - before[e], rows = acts->plan.expert_rows[e];
        long keep = left < 0 ? 0 : (left < rows ? left : rows);
        acts->kept[e] = (int32_t)keep;
        acts->dropped += rows - keep;
    }
}

/* Zeroes rows [offset + kept, offset + rows) of every local expert. */
static void zero_dropped(float *buf, const nm_moe_acts *acts, int El, int C) {
    for (int e = 0; e < El; e++) {
        size_t r0 = (size_t)acts->plan.expert_offset[e] + (size_t)acts->kept[e];
        size_t n = (size_t)(acts->plan.expert_rows[e] - acts->kept[e]);
        if (n) memset(buf + r0 * C, 0, sizeof(float) * n * C);
    }
}

void nm_moe_forward(float *out, nm_moe_acts *acts, const float *inp, const nm_layer_view *w, const nm_moe_dims *dims,
                    nm_moe_scratch *scratch, nm_dispatch *dispatch) {
    int N = dims->N, C = dims->C, F = dims->F, E = dims->E, K = dims->K;
    double t0 = nm_now();
    nm_router_forward(acts->probs, acts->topi, acts->gates, acts->psum, acts->top1, acts->ent, inp, w->router_w, N, C,
                      E, K, dims->seq_len);
    nm_timer_lap(scratch->timers, NM_T_ROUTER, &t0);
    nm_moe_plan(acts->slot, acts->count, acts->offset, acts->topi, N, K, E);
    /* permute: each (token, k) copy of m lands in its expert's group */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            memcpy(acts->xs + (size_t)acts->slot[(long)n * K + k] * C, inp + (long)n * C, sizeof(float) * (size_t)C);
    nm_timer_lap(scratch->timers, NM_T_PERMUTE, &t0);
    nm_dispatch_make_plan(dispatch, &acts->plan, acts->count);
    acts->xe = nm_dispatch_to_experts(dispatch, &acts->plan, acts->xs, acts->xe_buf);
    apply_capacity(acts, dims, dispatch);
    t0 = nm_now();
    /* with one rank the expert side is the slot order itself */
    float *ye = dispatch->Q == 1 ? acts->ys : acts->ye_buf;
    nm_experts_forward(ye, acts->u, acts->xe, w->fc1_w, w->fc1_b, w->fc2_w, w->fc2_b, acts->plan.expert_offset,
                       acts->kept, dispatch->El, C, F, scratch->act);
    if (dims->capacity > 0)
        zero_dropped(ye, acts, dispatch->El, C); /* dropped copies add nothing: the residual passes */
    nm_timer_lap(scratch->timers, NM_T_EXPERTS, &t0);
    const float *ys = nm_dispatch_from_experts(dispatch, &acts->plan, ye, acts->ys);
    t0 = nm_now();
    /* un-permute and combine with the gates */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *o = out + (long)n * C;
        for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int k = 0; k < K; k++) {
            float g = acts->gates[(long)n * K + k];
            const float *y = ys + (size_t)acts->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) o[c] += g * y[c];
        }
    }
    nm_timer_lap(scratch->timers, NM_T_PERMUTE, &t0);
}

void nm_moe_backward(float *dinp, float *dWr, const nm_layer_view *g, const float *dout, const nm_moe_acts *acts,
                     const float *inp, const nm_layer_view *w, const double *dprob, const nm_moe_dims *dims,
                     nm_moe_scratch *scratch, nm_dispatch *dispatch) {
    int N = dims->N, C = dims->C, F = dims->F, E = dims->E, K = dims->K;
    double t0 = nm_now();
    /* combine backward: gradient to each gate and to each expert output row */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        const float *dO = dout + (long)n * C;
        for (int k = 0; k < K; k++) {
            size_t r = (size_t)acts->slot[(long)n * K + k];
            const float *y = acts->ys + r * C;
            float *dy = scratch->dys + r * C;
            float gate = acts->gates[(long)n * K + k], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++) {
                dot += dO[c] * y[c];
                dy[c] = gate * dO[c];
            }
            scratch->dgates[(long)n * K + k] = dot;
        }
    }
    nm_timer_lap(scratch->timers, NM_T_PERMUTE, &t0);
    const float *dye = nm_dispatch_to_experts(dispatch, &acts->plan, scratch->dys, scratch->dye);
    t0 = nm_now();
    float *dxe = dispatch->Q == 1 ? scratch->dxs : scratch->dxe;
    nm_experts_backward(dxe, g->fc1_w, g->fc1_b, g->fc2_w, g->fc2_b, dye, acts->xe, acts->u, w->fc1_w, w->fc2_w,
                        acts->plan.expert_offset, acts->kept, dispatch->El, C, F, scratch->act, scratch->du);
    if (dims->capacity > 0) zero_dropped(dxe, acts, dispatch->El, C);
    nm_timer_lap(scratch->timers, NM_T_EXPERTS, &t0);
    const float *dxs = nm_dispatch_from_experts(dispatch, &acts->plan, dxe, scratch->dxs);
    t0 = nm_now();
    /* permute backward: each token gathers the gradients of its K copies */
#pragma omp parallel for if ((long)N * K * C > PAR_MIN)
    for (int n = 0; n < N; n++) {
        float *dn = dinp + (long)n * C;
        for (int k = 0; k < K; k++) {
            const float *dx = dxs + (size_t)acts->slot[(long)n * K + k] * C;
            for (int c = 0; c < C; c++) dn[c] += dx[c];
        }
    }
    nm_timer_lap(scratch->timers, NM_T_PERMUTE, &t0);
    nm_router_backward(dinp, dWr, scratch->dlogits, inp, w->router_w, acts->probs, acts->topi, acts->gates,
                       scratch->dgates, dprob, N, C, E, K, dims->seq_len);
    nm_timer_lap(scratch->timers, NM_T_ROUTER, &t0);
}

void nm_moe_router_weight_grad(float *dWr, const float *inp, const nm_moe_scratch *scratch, int r0, int n,
                               const nm_moe_dims *dims) {
    nm_dense_backward(NULL, dWr, NULL, scratch->dlogits + (size_t)r0 * dims->E, inp + (size_t)r0 * dims->C, NULL, 1, n,
                      dims->C, dims->E);
}
