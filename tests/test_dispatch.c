/* The MoE token exchange on 1, 2 or 4 ranks (run under mpiexec): random
 * routings with empty experts, all tokens on one expert, ranks with no tokens
 * for some destination or none at all. After dispatch + identity expert +
 * combine the output is the input times the gate sums; after dispatch + a
 * known per-expert function each token matches a serial computation; experts
 * see their rows in global token order; the capacity limit drops exactly the
 * rows a serial count predicts. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nanomoe/dist.h"
#include "nanomoe/experts.h"
#include "nanomoe/moe.h"
#include "nanomoe/rng.h"

#define C 8

static int P, R;

/* The per-expert function of the test: y = x * (e + 1) + e (identity if ident). */
static void expert_fn(const float *x, float *y, int e, int ident) {
    for (int c = 0; c < C; c++) y[c] = ident ? x[c] : x[c] * (float)(e + 1) + (float)e;
}

/* Routing cases: 0 random, 1 every first choice on expert E-1, 2 never expert
 * 0, 3 first choices only on the experts of rank (r+1) % Q. K distinct experts
 * per token, as top-k gives. */
static void route(int32_t *topi, float *gates, int N, int K, int E, int Q, int kase, uint64_t seed) {
    uint64_t key = nm_rng_key(seed, (uint64_t)R, (uint64_t)kase, 0);
    uint64_t ctr = 0;
    int El = E / Q, dst = (R + 1) % Q;
    for (int n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                int u = (int)nm_rng_below(key, ctr++, (uint64_t)E);
                if (k == 0 && kase == 1) e = E - 1;
                else if (kase == 2) e = 1 + u % (E - 1);
                else if (k == 0 && kase == 3) e = dst * El + u % El;
                else e = u;
                dup = 0;
                for (int j = 0; j < k; j++) dup |= topi[n * K + j] == e;
            } while (dup);
            topi[n * K + k] = e;
            gates[n * K + k] = (float)(0.25 + nm_rng_uniform(key, ctr++));
        }
    }
}

/* One exchange. Returns the number of failed checks. */
static void run_case(int N, int K, int E, int kase, int ident, long capacity) {
    nm_dist d;
    nm_error err;
    CHECK(nm_dist_init(&d, MPI_COMM_WORLD, E, 0, &err) == 0, "%s", err.msg);
    int Q = d.ep;
    nm_dispatch x;
    int Nmax;
    MPI_Allreduce(&N, &Nmax, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    nm_dispatch_init(&x, d.ep_comm, d.rep_comm, E, C, nm_moe_max_rows_in(Nmax, K, Q, E / Q));
    nm_moe_dims dims = {N, 1, C, 4, E, K, capacity};
    nm_moe_acts a;
    nm_moe_acts_alloc(&a, &dims, &x);
    /* tokens carry their global index in column 0 */
    int first;
    MPI_Exscan(&N, &first, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (R == 0) first = 0;
    float *m = calloc((size_t)(N + 1) * C, sizeof(float));
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) m[n * C + c] = c == 0 ? (float)(first + n) : (float)(0.1 * (c + 1) + 0.001 * n);
    route(a.topi, a.gates, N, K, E, Q, kase, 5);
    nm_moe_plan(a.slot, a.count, a.offset, a.topi, N, K, E);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) memcpy(a.xs + (size_t)a.slot[n * K + k] * C, m + n * C, sizeof(float) * C);
    nm_dispatch_make_plan(&x, &a.plan, a.count);
    const float *xe = nm_dispatch_to_experts(&x, &a.plan, a.xs, a.xe_buf);
    /* global token order inside every expert's rows */
    int order_ok = 1;
    for (int e = 0; e < x.El; e++)
        for (int r = a.plan.expert_offset[e] + 1; r < a.plan.expert_offset[e + 1]; r++)
            order_ok &= xe[(size_t)r * C] > xe[(size_t)(r - 1) * C];
    CHECK(order_ok, "case %d: rows of an expert are not in global token order", kase);
    /* capacity, as the MoE layer applies it: the first `capacity` rows in global order */
    long kept_rows = 0, dropped = 0;
    float *ye = x.Q == 1 ? a.ys : a.ye_buf;
    for (int e = 0; e < x.El; e++) {
        long rows = a.plan.expert_rows[e], keep = capacity > 0 && capacity < rows ? capacity : rows;
        for (int r = 0; r < rows; r++) {
            size_t row = (size_t)a.plan.expert_offset[e] + r;
            if (r < keep) expert_fn(xe + row * C, ye + row * C, x.e0 + e, ident);
            else memset(ye + row * C, 0, sizeof(float) * C);
        }
        kept_rows += keep;
        dropped += rows - keep;
    }
    const float *ys = nm_dispatch_from_experts(&x, &a.plan, ye, a.ys);
    /* serial reference: each expert's global count decides which of its rows are kept */
    int32_t *before = calloc((size_t)E, sizeof(int32_t)); /* rows of each expert on lower ranks */
    MPI_Exscan(a.count, before, E, MPI_INT32_T, MPI_SUM, d.ep_comm);
    if (d.ep_rank == 0) memset(before, 0, sizeof(int32_t) * E);
    double worst = 0.0;
    float y[C];
    for (int n = 0; n < N; n++) {
        float out[C] = {0}, ref[C] = {0};
        for (int k = 0; k < K; k++) {
            int e = a.topi[n * K + k];
            float g = a.gates[n * K + k];
            const float *yr = ys + (size_t)a.slot[n * K + k] * C;
            for (int c = 0; c < C; c++) out[c] += g * yr[c];
            long pos = before[e] + (a.slot[n * K + k] - a.offset[e]);
            if (capacity <= 0 || pos < capacity) {
                expert_fn(m + n * C, y, e, ident);
                for (int c = 0; c < C; c++) ref[c] += g * y[c];
            }
        }
        for (int c = 0; c < C; c++) worst = fmax(worst, fabs(out[c] - ref[c]) / (1.0 + fabs(ref[c])));
    }
    CHECK(worst < 1e-6, "case %d ident %d cap %ld: output differs from serial by %g", kase, ident, capacity, worst);
    /* dropped rows against a serial count over the global routing */
    if (capacity > 0) {
        int32_t *total = calloc((size_t)E, sizeof(int32_t));
        MPI_Allreduce(a.count, total, E, MPI_INT32_T, MPI_SUM, d.ep_comm);
        long serial = 0;
        for (int e = 0; e < E; e++) serial += total[e] > capacity ? total[e] - capacity : 0;
        long all = 0;
        MPI_Allreduce(&dropped, &all, 1, MPI_LONG, MPI_SUM, d.ep_comm);
        if (R == 0) printf("  capacity %ld: dropped %ld (serial count %ld)\n", capacity, all, serial);
        CHECK(all == serial && serial > 0, "dropped %ld, serial count %ld", all, serial);
        free(total);
    }
    free(before);
    free(m);
    nm_moe_acts_free(&a);
    nm_dispatch_free(&x);
    nm_dist_free(&d);
}

/* The whole MoE layer with a capacity limit, as the model runs it: a router
 * biased towards expert 0 overflows it; dropped copies must match a serial
 * count over the global routing, and every token's output a serial
 * recomputation that skips exactly the copies beyond each expert's capacity in
 * global token order. E = 2 on 4 ranks puts replicas of the experts in play. */
static void moe_layer_case(int N, int E, long capacity) {
    int K = 2, F = 6;
    nm_dist d;
    nm_error err;
    CHECK(nm_dist_init(&d, MPI_COMM_WORLD, E, 0, &err) == 0, "%s", err.msg);
    int Q = d.ep, El = E / Q, e0 = d.ep_rank * El;
    nm_dispatch x;
    nm_dispatch_init(&x, d.ep_comm, d.rep_comm, E, C, nm_moe_max_rows_in(N, K, Q, El));
    nm_moe_dims dims = {N, 1, C, F, E, K, capacity};
    nm_moe_acts a;
    nm_moe_scratch sc;
    nm_moe_acts_alloc(&a, &dims, &x);
    nm_moe_scratch_alloc(&sc, &dims, &x);
    /* every rank generates all weights; the layer gets its local experts */
    float *Wr = malloc(sizeof(float) * C * E), *W1 = malloc(sizeof(float) * E * C * F), *b1 = malloc(sizeof(float) * E * F),
          *W2 = malloc(sizeof(float) * E * F * C), *b2 = malloc(sizeof(float) * E * C);
    for (int i = 0; i < C * E; i++) Wr[i] = (float)(nm_rng_uniform(11, (uint64_t)i) - 0.5) + (i % E == 0 ? 0.6f : 0.0f);
    for (int i = 0; i < E * C * F; i++) W1[i] = (float)(nm_rng_uniform(12, (uint64_t)i) - 0.5);
    for (int i = 0; i < E * F; i++) b1[i] = (float)(nm_rng_uniform(13, (uint64_t)i) - 0.5);
    for (int i = 0; i < E * F * C; i++) W2[i] = (float)(nm_rng_uniform(14, (uint64_t)i) - 0.5);
    for (int i = 0; i < E * C; i++) b2[i] = (float)(nm_rng_uniform(15, (uint64_t)i) - 0.5);
    nm_layer_view w = {0};
    w.router_w = Wr;
    w.fc1_w = W1 + (size_t)e0 * C * F;
    w.fc1_b = b1 + (size_t)e0 * F;
    w.fc2_w = W2 + (size_t)e0 * F * C;
    w.fc2_b = b2 + (size_t)e0 * C;
    float *m = malloc(sizeof(float) * (size_t)N * C), *out = malloc(sizeof(float) * (size_t)N * C);
    for (int i = 0; i < N * C; i++) m[i] = (float)(nm_rng_uniform(16 + (uint64_t)R, (uint64_t)i) + 0.2);
    nm_moe_forward(out, &a, m, &w, &dims, &sc, &x);
    /* serial reference from the global routing: rows of expert e before this
     * rank's are those of all lower ranks, in rank order */
    int32_t *before = calloc((size_t)E, sizeof(int32_t)), *total = calloc((size_t)E, sizeof(int32_t));
    MPI_Exscan(a.count, before, E, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
    if (R == 0) memset(before, 0, sizeof(int32_t) * E);
    MPI_Allreduce(a.count, total, E, MPI_INT32_T, MPI_SUM, MPI_COMM_WORLD);
    long serial = 0, dropped = a.dropped, all = 0;
    for (int e = 0; e < E; e++) serial += total[e] > capacity ? total[e] - capacity : 0;
    MPI_Allreduce(&dropped, &all, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    double worst = 0.0;
    float u[64], act[64], y[C];
    for (int n = 0; n < N; n++) {
        float ref[C] = {0};
        for (int k = 0; k < K; k++) {
            int e = a.topi[n * K + k];
            long pos = before[e] + (a.slot[n * K + k] - a.offset[e]);
            if (pos >= capacity) continue;
            nm_expert_ffn_forward(y, u, m + (size_t)n * C, W1 + (size_t)e * C * F, b1 + (size_t)e * F,
                                  W2 + (size_t)e * F * C, b2 + (size_t)e * C, 1, C, F, act);
            for (int c = 0; c < C; c++) ref[c] += a.gates[n * K + k] * y[c];
        }
        for (int c = 0; c < C; c++) worst = fmax(worst, fabs(out[(size_t)n * C + c] - ref[c]));
    }
    if (R == 0)
        printf("  MoE layer, E=%d on %d rank(s) (expert_parallel %d), capacity %ld: dropped %ld (serial count %ld), "
               "max |out - serial| %.2g\n", E, P, Q, capacity, all, serial, worst);
    CHECK(all == serial && serial > 0, "E=%d: dropped %ld, serial count %ld", E, all, serial);
    CHECK(worst < 1e-5, "E=%d: output differs from the serial recomputation by %g", E, worst);
    free(before), free(total), free(m), free(out), free(Wr), free(W1), free(b1), free(W2), free(b2);
    nm_moe_acts_free(&a);
    nm_moe_scratch_free(&sc);
    nm_dispatch_free(&x);
    nm_dist_free(&d);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    MPI_Comm_rank(MPI_COMM_WORLD, &R);
    if (R == 0) printf("test_dispatch on %d rank(s)\n", P);
    for (int kase = 0; kase < 4; kase++)
        for (int ident = 0; ident < 2; ident++) {
            run_case(37 + 5 * R, 2, 4, kase, ident, 0);
            run_case(20, 1, 8, kase, ident, 0);
        }
    /* a rank with no tokens at all */
    run_case(R == P - 1 && P > 1 ? 0 : 16, 2, 4, 0, 0, 0);
    /* capacity: all tokens' first choice is the last expert, which overflows */
    run_case(40, 2, 4, 1, 0, 9);
    run_case(33 + R, 2, 4, 0, 0, 5);
    moe_layer_case(24, 4, 7);
    moe_layer_case(24, 2, 10);
    int rc = nm_test_report("test_dispatch");
    int all;
    MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return all;
}
