/* Finite-difference check of the distributed MoE layer (run under mpiexec at
 * 2 ranks): experts sharded over the ranks, tokens exchanged by all-to-all,
 * the aux loss from global statistics. The objective is global:
 * L = sum over all ranks of sum(out * R) + coeff * aux. Checked: the input
 * gradient on every rank, the router gradient summed over ranks, and every
 * expert's gradient on its owner. Central differences in double over float32
 * ops: tolerance 1e-2 relative with a floor of 1% of the largest gradient. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nanomoe/dist.h"
#include "nanomoe/moe.h"
#include "nanomoe/rng.h"
#include "nanomoe/router.h"

enum { N = 12, C = 8, F = 12, E = 4, K = 2 };
static const double COEFF = 0.5;

typedef struct {
    nm_dist d;
    nm_dispatch x;
    nm_moe_dims dims;
    nm_moe_acts a;
    nm_moe_scratch s;
    nm_layer_view w, g;
    float *m, *out, *R, *Wr, *W1, *b1, *W2, *b2; /* W* hold all experts; w points at the local ones */
    int32_t *topi0;
    long ntok;
} ctx;

/* Global objective; NaN on every rank when any rank's routing changed. */
static double objective(ctx *c, int check_routing) {
    nm_moe_forward(c->out, &c->a, c->m, &c->w, &c->dims, &c->s, &c->x);
    double local = 0.0;
    for (int i = 0; i < N * C; i++) local += (double)c->out[i] * c->R[i];
    double st[2 * E + 2];
    memset(st, 0, sizeof st);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) st[e] += c->a.psum[(size_t)n * E + e], st[E + e] += c->a.top1[(size_t)n * E + e];
    st[2 * E] = local;
    st[2 * E + 1] = check_routing && memcmp(c->a.topi, c->topi0, sizeof(int32_t) * N * K) != 0;
    MPI_Allreduce(MPI_IN_PLACE, st, 2 * E + 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (st[2 * E + 1] > 0) return NAN;
    return st[2 * E] + COEFF * nm_router_aux(st, st + E, (double)c->ntok, E, NULL);
}

/* Checks `count` elements of p against grad; all ranks call it. `mine`: this
 * rank holds (and perturbs) the tensor; `counts`: its grad[] is the one to
 * compare (one rank for a replicated tensor whose gradient is already summed). */
static void check(ctx *c, const char *name, float *p, const float *grad, int count, int mine, int counts,
                  double scale) {
    double worst = 0.0;
    int checked = 0, skipped = 0;
    for (int i = 0; i < count; i++) {
        float keep = mine ? p[i] : 0.0f;
        double h = 1e-2 * fmax(1.0, fabs(keep));
        if (mine) p[i] = (float)(keep + h);
        double hp = mine ? (double)p[i] - keep : 0.0;
        double lp = objective(c, 1);
        if (mine) p[i] = (float)(keep - h);
        double hm = mine ? keep - (double)p[i] : 0.0;
        double lm = objective(c, 1);
        if (mine) p[i] = keep;
        double hh[2] = {hp, hm};
        MPI_Allreduce(MPI_IN_PLACE, hh, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (isnan(lp) || isnan(lm)) {
            skipped++;
            continue;
        }
        double fd = (lp - lm) / (hh[0] + hh[1]), an = counts ? grad[i] : 0.0;
        MPI_Allreduce(MPI_IN_PLACE, &an, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        double err = fabs(fd - an) / fmax(fmax(fabs(fd), fabs(an)), 0.01 * scale);
        worst = fmax(worst, err);
        checked++;
    }
    int r;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    if (r == 0) printf("  %-28s checked %3d, skipped %d (routing flips), largest relative error %.2e\n", name, checked,
                       skipped, worst);
    CHECK(worst < 1e-2, "%s: relative error %.3g", name, worst);
    CHECK(checked >= count * 3 / 4, "%s: only %d of %d elements checked", name, checked, count);
}

static float *frand(int n, uint64_t key, double lo, double hi) {
    float *p = malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n; i++) p[i] = (float)(lo + (hi - lo) * nm_rng_uniform(key, (uint64_t)i));
    return p;
}

static double maxabs(const float *p, int n) {
    double m = 0.0;
    for (int i = 0; i < n; i++) m = fmax(m, fabs(p[i]));
    return m;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int P, R;
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &R);
    ctx c;
    memset(&c, 0, sizeof c);
    nm_error err;
    CHECK(nm_dist_init(&c.d, MPI_COMM_WORLD, E, 0, &err) == 0, "%s", err.msg);
    int Q = c.d.ep, El = E / Q, e0 = c.d.ep_rank * El;
    if (R == 0) printf("test_moe_dist: %d rank(s), %d expert(s) per rank\n", P, El);
    nm_dispatch_init(&c.x, c.d.ep_comm, c.d.rep_comm, E, C, nm_moe_max_rows_in(N, K, Q, El));
    c.dims = (nm_moe_dims){N, 1, C, F, E, K, 0};
    c.ntok = (long)N * P;
    nm_moe_acts_alloc(&c.a, &c.dims, &c.x);
    nm_moe_scratch_alloc(&c.s, &c.dims, &c.x);
    c.Wr = frand(C * E, 1, -0.8, 0.8);
    c.W1 = frand(E * C * F, 2, -0.5, 0.5);
    c.b1 = frand(E * F, 3, -0.3, 0.3);
    c.W2 = frand(E * F * C, 4, -0.5, 0.5);
    c.b2 = frand(E * C, 5, -0.3, 0.3);
    c.m = frand(N * C, 10 + (uint64_t)R, -1, 1);
    c.R = frand(N * C, 20 + (uint64_t)R, -1, 1);
    c.out = malloc(sizeof(float) * N * C);
    c.w = (nm_layer_view){.router_w = c.Wr, .fc1_w = c.W1 + e0 * C * F, .fc1_b = c.b1 + e0 * F,
                          .fc2_w = c.W2 + e0 * F * C, .fc2_b = c.b2 + e0 * C};
    c.g = (nm_layer_view){.router_w = calloc(C * E, sizeof(float)), .fc1_w = calloc((size_t)El * C * F, sizeof(float)),
                          .fc1_b = calloc((size_t)El * F, sizeof(float)), .fc2_w = calloc((size_t)El * F * C, sizeof(float)),
                          .fc2_b = calloc((size_t)El * C, sizeof(float))};
    /* analytic gradient */
    objective(&c, 0);
    c.topi0 = malloc(sizeof(int32_t) * N * K);
    memcpy(c.topi0, c.a.topi, sizeof(int32_t) * N * K);
    double st[2 * E];
    memset(st, 0, sizeof st);
    for (int n = 0; n < N; n++)
        for (int e = 0; e < E; e++) st[e] += c.a.psum[(size_t)n * E + e], st[E + e] += c.a.top1[(size_t)n * E + e];
    MPI_Allreduce(MPI_IN_PLACE, st, 2 * E, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    double dprob[E];
    nm_router_aux(st, st + E, (double)c.ntok, E, dprob);
    for (int e = 0; e < E; e++) dprob[e] *= COEFF;
    float *dm = calloc(N * C, sizeof(float));
    nm_moe_backward(dm, c.g.router_w, &c.g, c.R, &c.a, c.m, &c.w, dprob, &c.dims, &c.s, &c.x);
    MPI_Allreduce(MPI_IN_PLACE, c.g.router_w, C * E, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD); /* replicated: sum over ranks */
    int owner_tokens[E];
    for (int e = 0; e < E; e++) owner_tokens[e] = 0;
    for (int i = 0; i < N * K; i++) owner_tokens[c.a.topi[i]]++;
    MPI_Allreduce(MPI_IN_PLACE, owner_tokens, E, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (R == 0) {
        printf("  token copies per expert:");
        for (int e = 0; e < E; e++) printf(" %d", owner_tokens[e]);
        printf("\n");
    }

    /* inputs of every rank, one rank at a time */
    for (int r = 0; r < P; r++) {
        char nm[64];
        snprintf(nm, sizeof nm, "dm (rank %d's tokens)", r);
        double sc = R == r ? maxabs(dm, N * C) : 0.0;
        MPI_Allreduce(MPI_IN_PLACE, &sc, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        check(&c, nm, c.m, dm, N * C, R == r, R == r, sc);
    }
    check(&c, "dWr (summed over ranks)", c.Wr, c.g.router_w, C * E, 1, R == 0, maxabs(c.g.router_w, C * E));
    /* every expert on its owner */
    for (int e = 0; e < E; e++) {
        int owner_ep = e / El, mine = c.d.ep_rank == owner_ep && c.d.rep_rank == 0, le = e - e0;
        float *gw1 = mine ? c.g.fc1_w + (size_t)le * C * F : NULL, *gb1 = mine ? c.g.fc1_b + (size_t)le * F : NULL;
        float *gw2 = mine ? c.g.fc2_w + (size_t)le * F * C : NULL, *gb2 = mine ? c.g.fc2_b + (size_t)le * C : NULL;
        double s1 = mine ? maxabs(gw1, C * F) : 0, s2 = mine ? maxabs(gw2, F * C) : 0;
        double sc[4] = {s1, s2, mine ? maxabs(gb1, F) : 0, mine ? maxabs(gb2, C) : 0};
        MPI_Allreduce(MPI_IN_PLACE, sc, 4, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        char nm[64];
        /* a subset of the weights keeps the test quick */
        snprintf(nm, sizeof nm, "expert %d fc1 kernel", e);
        check(&c, nm, c.W1 + (size_t)e * C * F, gw1, 40, mine, mine, sc[0]);
        snprintf(nm, sizeof nm, "expert %d fc1 bias", e);
        check(&c, nm, c.b1 + (size_t)e * F, gb1, F, mine, mine, sc[2]);
        snprintf(nm, sizeof nm, "expert %d fc2 kernel", e);
        check(&c, nm, c.W2 + (size_t)e * F * C, gw2, 40, mine, mine, sc[1]);
        snprintf(nm, sizeof nm, "expert %d fc2 bias", e);
        check(&c, nm, c.b2 + (size_t)e * C, gb2, C, mine, mine, sc[3]);
    }
    int rc = nm_test_report("test_moe_dist"), all;
    MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    nm_moe_acts_free(&c.a);
    nm_moe_scratch_free(&c.s);
    nm_dispatch_free(&c.x);
    nm_dist_free(&c.d);
    MPI_Finalize();
    return all;
}
