/* Token exchange of the MoE layer over the expert-parallel group. */
#include "nanomoe/dispatch.h"

#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"

void nm_dispatch_init(nm_dispatch *d, MPI_Comm ep_comm, MPI_Comm rep_comm, int E, int C, size_t max_rows_in) {
    memset(d, 0, sizeof *d);
    d->comm = ep_comm;
    int nrep = 1;
    if (rep_comm != MPI_COMM_NULL) NM_MPI_CHECK(MPI_Comm_size(rep_comm, &nrep));
    d->rep = nrep > 1 ? rep_comm : MPI_COMM_NULL;
    NM_MPI_CHECK(MPI_Comm_size(ep_comm, &d->Q));
    NM_MPI_CHECK(MPI_Comm_rank(ep_comm, &d->q));
    d->E = E;
    d->El = E / d->Q;
    d->e0 = d->q * d->El;
    d->C = C;
    d->max_rows_in = max_rows_in;
    NM_MPI_CHECK(MPI_Type_contiguous(C, MPI_FLOAT, &d->row));
    NM_MPI_CHECK(MPI_Type_commit(&d->row));
    /* staging only when rows actually move; untouched pages of a large
     * worst-case buffer cost no memory */
    if (d->Q > 1) d->stage = nm_malloc(sizeof(float) * (max_rows_in > 0 ? max_rows_in : 1) * (size_t)C);
}

void nm_dispatch_free(nm_dispatch *d) {
    if (d->row) NM_MPI_CHECK(MPI_Type_free(&d->row));
    free(d->stage);
    memset(d, 0, sizeof *d);
}

void nm_dispatch_plan_alloc(nm_dispatch_plan *p, const nm_dispatch *d) {
    memset(p, 0, sizeof *p);
    p->from = nm_calloc((size_t)d->Q * d->El, sizeof(int32_t));
    p->expert_rows = nm_calloc((size_t)d->El, sizeof(int32_t));
    p->expert_offset = nm_calloc((size_t)d->El + 1, sizeof(int32_t));
    p->scount = nm_calloc((size_t)d->Q, sizeof(int));
    p->sdispl = nm_calloc((size_t)d->Q, sizeof(int));
    p->rcount = nm_calloc((size_t)d->Q, sizeof(int));
    p->rdispl = nm_calloc((size_t)d->Q, sizeof(int));
}

void nm_dispatch_plan_free(nm_dispatch_plan *p) {
    free(p->from);
    free(p->expert_rows);
    free(p->expert_offset);
    free(p->scount);
    free(p->sdispl);
    free(p->rcount);
    free(p->rdispl);
    memset(p, 0, sizeof *p);
}

void nm_dispatch_make_plan(nm_dispatch *d, nm_dispatch_plan *p, const int32_t *count) {
    int Q = d->Q, El = d->El;
    double t0 = nm_now();
    if (Q > 1) {
        /* count[] is laid out by destination rank already: El counts each */
        NM_MPI_CHECK(MPI_Alltoall(count, El, MPI_INT32_T, p->from, El, MPI_INT32_T, d->comm));
    } else {
        memcpy(p->from, count, sizeof(int32_t) * (size_t)El);
    }
    nm_timer_lap(d->timers, NM_T_ALLTOALL, &t0);
    p->rows_out = p->rows_in = 0;
    for (int s = 0; s < Q; s++) {
        int out = 0, in = 0;
        for (int e = 0; e < El; e++) {
            out += count[s * El + e];
            in += p->from[s * El + e];
        }
        p->scount[s] = out;
        p->rcount[s] = in;
        p->sdispl[s] = p->rows_out;
        p->rdispl[s] = p->rows_in;
        p->rows_out += out;
        p->rows_in += in;
    }
    if ((size_t)p->rows_in > d->max_rows_in && Q > 1)
        NM_ABORT("dispatch: %d rows received, more than the %zu sized for", p->rows_in, d->max_rows_in);
    p->expert_offset[0] = 0;
    for (int e = 0; e < El; e++) {
        int rows = 0;
        for (int s = 0; s < Q; s++) rows += p->from[s * El + e];
        p->expert_rows[e] = rows;
        p->expert_offset[e + 1] = p->expert_offset[e] + rows;
    }
}

/* Copies between source-major (for s: for e: rows) and expert-major (for e:
 * for s: rows) layouts. */
static void reorder(const nm_dispatch *d, const nm_dispatch_plan *p, const float *src, float *dst, int to_expert) {
    int Q = d->Q, El = d->El;
    size_t C = (size_t)d->C;
#pragma omp parallel for collapse(2) schedule(static) if (p->rows_in * C > 65536)
    for (int s = 0; s < Q; s++)
        for (int e = 0; e < El; e++) {
            size_t src_row = (size_t)p->rdispl[s], exp_row = (size_t)p->expert_offset[e];
            for (int e2 = 0; e2 < e; e2++) src_row += (size_t)p->from[s * El + e2];
            for (int s2 = 0; s2 < s; s2++) exp_row += (size_t)p->from[s2 * El + e];
            size_t n = (size_t)p->from[s * El + e] * C;
            if (to_expert) memcpy(dst + exp_row * C, src + src_row * C, sizeof(float) * n);
            else memcpy(dst + src_row * C, src + exp_row * C, sizeof(float) * n);
        }
}

const float *nm_dispatch_to_experts(nm_dispatch *d, const nm_dispatch_plan *p, const float *slots, float *out) {
    if (d->Q == 1) return slots;
    double t0 = nm_now();
    NM_MPI_CHECK(MPI_Alltoallv(slots, p->scount, p->sdispl, d->row, d->stage, p->rcount, p->rdispl, d->row, d->comm));
    nm_timer_lap(d->timers, NM_T_ALLTOALL, &t0);
    d->bytes_sent += (double)(p->rows_out - p->scount[d->q]) * d->C * sizeof(float);
    reorder(d, p, d->stage, out, 1);
    return out;
}

const float *nm_dispatch_from_experts(nm_dispatch *d, const nm_dispatch_plan *p, const float *rows, float *slots) {
    if (d->Q == 1) return rows;
    reorder(d, p, rows, d->stage, 0);
    double t0 = nm_now();
    NM_MPI_CHECK(MPI_Alltoallv(d->stage, p->rcount, p->rdispl, d->row, slots, p->scount, p->sdispl, d->row, d->comm));
    nm_timer_lap(d->timers, NM_T_ALLTOALL, &t0);
    d->bytes_sent += (double)(p->rows_in - p->rcount[d->q]) * d->C * sizeof(float);
    return slots;
}
