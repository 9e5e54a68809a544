/* Small cases with answers worked out by hand (or by the formula of
 * ../shared/reference/model-spec.md evaluated in double here): router top-k
 * order and ties, gates, the aux loss, the MoE permutation plan, AdamW steps,
 * the learning-rate schedule, dropout and batch sampling. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nanomoe/adamw.h"
#include "nanomoe/config.h"
#include "nanomoe/data.h"
#include "nanomoe/moe.h"
#include "nanomoe/ops.h"
#include "nanomoe/params.h"
#include "nanomoe/rng.h"
#include "nanomoe/router.h"

/* ------------------------------------------------------------------ router */

/* Runs the router on m[N, C] with kernel Wr[C, E]; the outputs go to caller buffers. */
static double last_ent[1024]; /* per-sequence entropy sums of the last route() */

static void route(const float *m, const float *Wr, int N, int C, int E, int K, int seq_len, float *probs,
                  int32_t *topi, float *gates, double *psum, double *top1) {
    nm_router_forward(probs, topi, gates, psum, top1, last_ent, m, Wr, N, C, E, K, seq_len);
}

/* Router entropy: ln E per token for equal logits, 0 for a one-hot softmax
 * (up to exp(-large)), and the hand value for a known two-way split. */
static void test_router_entropy(void) {
    printf("router: entropy statistics\n");
    enum { N = 4, C = 2, E = 4, K = 2 };
    float m[N * C] = {0}, Wr[C * E] = {0}, probs[N * E], gates[N * K];
    int32_t topi[N * K];
    double psum[2 * E], top1[2 * E];
    route(m, Wr, N, C, E, K, 2, probs, topi, gates, psum, top1); /* all logits 0 */
    CHECK(fabs(last_ent[0] - 2 * log(4.0)) < 1e-6 && fabs(last_ent[1] - 2 * log(4.0)) < 1e-6,
          "equal logits: entropy %g %g, expected 2 ln 4 per sequence", last_ent[0], last_ent[1]);
    /* logits (a, a, -inf-ish, -inf-ish): two-way split, entropy ln 2 */
    for (int n = 0; n < N; n++) m[n * C] = 1.0f;
    Wr[0] = 40.0f, Wr[1] = 40.0f, Wr[2] = -40.0f, Wr[3] = -40.0f;
    route(m, Wr, N, C, E, K, 4, probs, topi, gates, psum, top1);
    CHECK(fabs(last_ent[0] - 4 * log(2.0)) < 1e-5, "two-way split: entropy %g, expected 4 ln 2", last_ent[0]);
}

static void test_router_topk(void) {
    printf("router: top-k order, ties, gates, probs, statistics\n");
    enum { N = 8, E = 4, K = 2, S = 4 };
    /* Wr = identity, so the logits are the rows of m exactly (x*1 + y*0 is exact) */
    float Wr[E * E] = {0};
    for (int e = 0; e < E; e++) Wr[e * E + e] = 1.0f;
    const float m[N * E] = {
        1, 3, 2, 0,      /* t0: 3 > 2 > 1 > 0            -> [1, 2] */
        2, 2, 2, 2,      /* t1: all tied                 -> [0, 1] */
        0, 5, 1, 5,      /* t2: 5 at 1 and 3 tied        -> [1, 3] */
        0, 3, 1, 1,      /* t3: 1 at 2 and 3 tied second -> [1, 2] */
        4, 1, 4, 1,      /* t4: 4 at 0 and 2 tied        -> [0, 2] */
        -1, 2, 0, 2,     /* t5:                          -> [1, 3] */
        1, 0, 3, 3,      /* t6:                          -> [2, 3] */
        0.5f, -2, 7, 0.5f /* t7: 7, then 0.5 at 0 and 3  -> [2, 0] */
    };
    const int32_t want[N * K] = {1, 2, 0, 1, 1, 3, 1, 2, 0, 2, 1, 3, 2, 3, 2, 0};
    float probs[N * E], gates[N * K];
    int32_t topi[N * K];
    double psum[(N / S) * E], top1[(N / S) * E];
    route(m, Wr, N, E, E, K, S, probs, topi, gates, psum, top1);
    for (int i = 0; i < N * K; i++)
        CHECK(topi[i] == want[i], "token %d choice %d: expert %d, expected %d", i / K, i % K, topi[i], want[i]);
    /* gates = softmax over the two selected logits: g0 = 1 / (1 + exp(l1 - l0)) */
    for (int n = 0; n < N; n++) {
        double l0 = m[n * E + want[n * K]], l1 = m[n * E + want[n * K + 1]];
        double g0 = 1.0 / (1.0 + exp(l1 - l0)), g1 = 1.0 - g0;
        CHECK(fabs(gates[n * K] - g0) < 1e-6 && fabs(gates[n * K + 1] - g1) < 1e-6,
              "token %d gates (%.7f, %.7f), expected (%.7f, %.7f)", n, gates[n * K], gates[n * K + 1], g0, g1);
        /* full softmax over all E */
        double z = 0.0;
        for (int e = 0; e < E; e++) z += exp(m[n * E + e]);
        for (int e = 0; e < E; e++)
            CHECK(fabs(probs[n * E + e] - exp(m[n * E + e]) / z) < 1e-6, "token %d prob %d: %.7f vs %.7f", n, e,
                  probs[n * E + e], exp(m[n * E + e]) / z);
    }
    /* literal values: softmax(3, 2) = (e / (e + 1), 1 / (e + 1)); ties give 1/2 each */
    CHECK(fabs(gates[0] - 0.7310585786) < 1e-6 && fabs(gates[1] - 0.2689414214) < 1e-6, "t0 gates %.8f %.8f",
          gates[0], gates[1]);
    CHECK(gates[2] == 0.5f && gates[3] == 0.5f, "t1 (tied) gates %.8f %.8f", gates[2], gates[3]);
    CHECK(gates[4] == 0.5f && gates[5] == 0.5f, "t2 (tied top two) gates %.8f %.8f", gates[4], gates[5]);
    CHECK(fabs(probs[4] - 0.25) < 1e-7, "t1 uniform probs %.8f", probs[4]);
    /* per-sequence statistics: sequence 0 = t0..t3, 1 = t4..t7 */
    const double want_top1[2 * E] = {1, 3, 0, 0, 1, 1, 2, 0};
    for (int i = 0; i < 2 * E; i++) CHECK(top1[i] == want_top1[i], "top1[%d] = %g, expected %g", i, top1[i], want_top1[i]);
    for (int s = 0; s < 2; s++)
        for (int e = 0; e < E; e++) {
            double ps = 0.0;
            for (int n = s * S; n < (s + 1) * S; n++) {
                double z = 0.0;
                for (int j = 0; j < E; j++) z += exp(m[n * E + j]);
                ps += exp(m[n * E + e]) / z;
            }
            CHECK(fabs(psum[s * E + e] - ps) < 1e-6, "psum[%d,%d] = %.7f, expected %.7f", s, e, psum[s * E + e], ps);
        }

    /* other K on tied rows: K = 3 and K = 4 give the full order, K = 1 a gate of 1 */
    {
        const float mt[2 * E] = {1, 1, 0, 1, 0, 1, 0, 1};
        float p2[2 * E], g3[2 * 4];
        int32_t t3[2 * 4];
        double ps2[E], t12[E];
        route(mt, Wr, 1, E, E, 3, 1, p2, t3, g3, ps2, t12);
        CHECK(t3[0] == 0 && t3[1] == 1 && t3[2] == 3, "K=3 on (1,1,0,1): [%d %d %d], expected [0 1 3]", t3[0], t3[1],
              t3[2]);
        CHECK(fabs(g3[0] - 1.0 / 3) < 1e-6 && fabs(g3[2] - 1.0 / 3) < 1e-6, "K=3 tied gates %.7f %.7f %.7f", g3[0],
              g3[1], g3[2]);
        route(mt + E, Wr, 1, E, E, 4, 1, p2, t3, g3, ps2, t12);
        CHECK(t3[0] == 1 && t3[1] == 3 && t3[2] == 0 && t3[3] == 2, "K=4 on (0,1,0,1): [%d %d %d %d], expected [1 3 0 2]",
              t3[0], t3[1], t3[2], t3[3]);
        double e1 = exp(1.0);
        CHECK(fabs(g3[0] - e1 / (2 * e1 + 2)) < 1e-6 && fabs(g3[3] - 1 / (2 * e1 + 2)) < 1e-6,
              "K=4 gates = full softmax: %.7f .. %.7f", g3[0], g3[3]);
        route(m, Wr, 1, E, E, 1, 1, p2, t3, g3, ps2, t12);
        CHECK(t3[0] == 1 && g3[0] == 1.0f, "K=1: expert %d gate %.7f, expected 1 and 1", t3[0], g3[0]);
    }

    /* the kernel's orientation: logits = m @ Wr with Wr[C, E] row-major.
     * Wr = [[1, 0, 1, 1], [0, 1, 1, -1]]: logits(x, y) = (x, y, x + y, x - y) */
    {
        const float W2[2 * E] = {1, 0, 1, 1, 0, 1, 1, -1};
        const float m2[2 * 2] = {1, 2, 2, -1}; /* logits (1, 2, 3, -1) and (2, -1, 1, 3) */
        float p2[2 * E], g2[2 * K];
        int32_t t2[2 * K];
        double ps2[2 * E], t12[2 * E];
        route(m2, W2, 2, 2, E, K, 1, p2, t2, g2, ps2, t12);
        CHECK(t2[0] == 2 && t2[1] == 1 && t2[2] == 3 && t2[3] == 0, "m @ Wr orientation: [%d %d] [%d %d], expected [2 1] [3 0]",
              t2[0], t2[1], t2[2], t2[3]);
        CHECK(fabs(g2[0] - 1.0 / (1.0 + exp(-1.0))) < 1e-6 && fabs(g2[2] - 1.0 / (1.0 + exp(-1.0))) < 1e-6,
              "orientation gates %.7f %.7f", g2[0], g2[2]);
        CHECK(t12[0 * E + 2] == 1 && t12[1 * E + 3] == 1, "seq_len 1: top1 per token");
    }
}

static void test_router_aux(void) {
    printf("router: aux loss\n");
    enum { E = 4 };
    double dprob[E];
    /* 8 tokens, balanced: f = P = 1/4 -> aux = 4 * 4 * (1/16) = 1; d/dprob = E f / ntok = 1/8 */
    const double ps_bal[E] = {2, 2, 2, 2}, t1_bal[E] = {2, 2, 2, 2};
    double aux = nm_router_aux(ps_bal, t1_bal, 8.0, E, dprob);
    CHECK(fabs(aux - 1.0) < 1e-12, "balanced aux %.15f, expected 1", aux);
    for (int e = 0; e < E; e++) CHECK(fabs(dprob[e] - 0.125) < 1e-15, "balanced dprob[%d] %.15f, expected 0.125", e, dprob[e]);
    /* collapsed onto expert 0: f = P = (1, 0, 0, 0) -> aux = E = 4; dprob = (4/8, 0, 0, 0) */
    const double ps_col[E] = {8, 0, 0, 0}, t1_col[E] = {8, 0, 0, 0};
    aux = nm_router_aux(ps_col, t1_col, 8.0, E, dprob);
    CHECK(fabs(aux - 4.0) < 1e-12, "collapsed aux %.15f, expected E = 4", aux);
    CHECK(dprob[0] == 0.5 && dprob[1] == 0 && dprob[2] == 0 && dprob[3] == 0, "collapsed dprob (%g %g %g %g)",
          dprob[0], dprob[1], dprob[2], dprob[3]);
    /* in between: f = (5, 3, 0, 0)/8, P = (3, 2, 2, 1)/8 -> 4 (15 + 6) / 64 = 1.3125 */
    const double ps_mid[E] = {3, 2, 2, 1}, t1_mid[E] = {5, 3, 0, 0};
    aux = nm_router_aux(ps_mid, t1_mid, 8.0, E, NULL);
    CHECK(fabs(aux - 1.3125) < 1e-12, "aux %.15f, expected 1.3125", aux);

    /* through nm_router_forward: token i prefers expert i by the same margin
     * (a cyclic permutation of the same logits), so f = 1/4 and the mean of
     * the full softmax is 1/4 for every expert: aux = 1 */
    float Wr[E * E] = {0}, m[E * E] = {0}, probs[E * E], gates[E * 2];
    for (int e = 0; e < E; e++) Wr[e * E + e] = 1.0f;
    for (int n = 0; n < E; n++) m[n * E + n] = 2.0f;
    int32_t topi[E * 2];
    double psum[E], top1[E];
    route(m, Wr, E, E, E, 2, E, probs, topi, gates, psum, top1);
    aux = nm_router_aux(psum, top1, (double)E, E, NULL);
    CHECK(fabs(aux - 1.0) < 1e-6, "balanced routing through nm_router_forward: aux %.9f, expected 1", aux);
    for (int e = 0; e < E; e++) CHECK(top1[e] == 1.0, "balanced: top1[%d] = %g", e, top1[e]);
    /* every token strongly prefers expert 2: aux = E */
    for (int n = 0; n < E; n++)
        for (int e = 0; e < E; e++) m[n * E + e] = e == 2 ? 100.0f : 0.0f;
    route(m, Wr, E, E, E, 2, E, probs, topi, gates, psum, top1);
    aux = nm_router_aux(psum, top1, (double)E, E, dprob);
    CHECK(fabs(aux - 4.0) < 1e-6, "collapsed routing through nm_router_forward: aux %.9f, expected E = 4", aux);
    CHECK(top1[2] == 4.0 && fabs(dprob[2] - 1.0) < 1e-12 && dprob[0] == 0.0, "collapsed: top1[2] %g dprob[2] %g",
          top1[2], dprob[2]);
    /* ties at 0 among the others: second choice is expert 0 */
    CHECK(topi[0] == 2 && topi[1] == 0, "collapsed: choices [%d %d], expected [2 0]", topi[0], topi[1]);
}

/* ---------------------------------------------------------------- moe plan */

static void test_moe_plan(void) {
    printf("nm_moe_plan\n");
    {
        /* N=5, K=2, E=5; experts 1 and 4 receive nothing */
        enum { N = 5, K = 2, E = 5 };
        const int32_t topi[N * K] = {2, 0, 0, 2, 3, 0, 2, 3, 0, 3};
        /* expert 0: (t0,k1) (t1,k0) (t2,k1) (t4,k0) -> rows 0..3
         * expert 2: (t0,k0) (t1,k1) (t3,k0)         -> rows 4..6
         * expert 3: (t2,k0) (t3,k1) (t4,k1)         -> rows 7..9 */
        const int32_t want_count[E] = {4, 0, 3, 3, 0}, want_offset[E + 1] = {0, 4, 4, 7, 10, 10};
        const int32_t want_slot[N * K] = {4, 0, 1, 5, 7, 2, 6, 8, 3, 9};
        int32_t slot[N * K], count[E], offset[E + 1];
        memset(slot, 0xff, sizeof slot);
        nm_moe_plan(slot, count, offset, topi, N, K, E);
        for (int e = 0; e < E; e++) CHECK(count[e] == want_count[e], "count[%d] = %d, expected %d", e, count[e], want_count[e]);
        for (int e = 0; e <= E; e++)
            CHECK(offset[e] == want_offset[e], "offset[%d] = %d, expected %d", e, offset[e], want_offset[e]);
        for (int i = 0; i < N * K; i++)
            CHECK(slot[i] == want_slot[i], "slot[t%d,k%d] = %d, expected %d", i / K, i % K, slot[i], want_slot[i]);
        int seen[N * K] = {0};
        for (int i = 0; i < N * K; i++)
            if (slot[i] >= 0 && slot[i] < N * K) seen[slot[i]]++;
        for (int r = 0; r < N * K; r++) CHECK(seen[r] == 1, "row %d used %d times", r, seen[r]);
    }
    {
        /* K=1, first expert empty */
        const int32_t topi[3] = {2, 2, 1};
        int32_t slot[3], count[3], offset[4];
        nm_moe_plan(slot, count, offset, topi, 3, 1, 3);
        CHECK(count[0] == 0 && count[1] == 1 && count[2] == 2, "count (%d %d %d), expected (0 1 2)", count[0], count[1],
              count[2]);
        CHECK(offset[0] == 0 && offset[1] == 0 && offset[2] == 1 && offset[3] == 3, "offset (%d %d %d %d)", offset[0],
              offset[1], offset[2], offset[3]);
        CHECK(slot[0] == 1 && slot[1] == 2 && slot[2] == 0, "slot (%d %d %d), expected (1 2 0)", slot[0], slot[1],
              slot[2]);
    }
    {
        /* every token on the same two experts: groups follow token order */
        enum { N = 6, K = 2, E = 4 };
        int32_t topi[N * K], slot[N * K], count[E], offset[E + 1];
        for (int n = 0; n < N; n++) topi[n * K] = 3, topi[n * K + 1] = 1;
        nm_moe_plan(slot, count, offset, topi, N, K, E);
        CHECK(count[0] == 0 && count[1] == N && count[2] == 0 && count[3] == N, "collapsed counts (%d %d %d %d)",
              count[0], count[1], count[2], count[3]);
        for (int n = 0; n < N; n++)
            CHECK(slot[n * K] == N + n && slot[n * K + 1] == n, "collapsed slots of token %d: (%d %d), expected (%d %d)",
                  n, slot[n * K], slot[n * K + 1], N + n, n);
    }
}

/* ------------------------------------------------------------------- AdamW */

static void small_cfg(nm_config *c) {
    nm_config_defaults(c);
    c->d_model = 4, c->n_layers = 1, c->n_heads = 1, c->d_ff = 4, c->n_experts = 2, c->top_k = 1;
    c->block_size = 4, c->vocab_size = 3;
    c->adam_b1 = 0.9, c->adam_b2 = 0.999, c->adam_eps = 1e-8, c->weight_decay = 0.1;
}

/* The spec's update in double: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p).
 * Also returns per element the float32 rounding budget of each quantity:
 * the optimiser computes in float, where 1 - b2 = 1 - float(0.999) is off by
 * 1.3e-5 relative and 1 - float(0.9) by 3.6e-7, and m can cancel (b1 m and
 * (1-b1) g of opposite signs), so errors are bounded by the magnitudes of the
 * terms, not of the result:
 *   tol_m = 2e-6 (b1 |m| + (1-b1) |g|),   tol_v = 3e-5 (b2 v + (1-b2) g^2),
 *   tol_p = 2.4e-7 |p| + lr (c1 tol_m / (sqrt(vh) + eps) + 3e-5 |r| + 1e-6 wd |p|),
 * r = mh / (sqrt(vh) + eps) (relative error of vh halves through the sqrt).
 * A wrong bias correction changes r by >= 5%, a missing or extra decay term
 * moves p by lr wd |p| ~ 1e-3 |p|: both far outside these budgets. */
static void adamw_ref(double *p, double *m, double *v, double *tp, double *tm, double *tv, const float *g, size_t n,
                      int t, double lr, double wd, const nm_config *c) {
    double b1 = c->adam_b1, b2 = c->adam_b2;
    double c1 = 1 / (1 - pow(b1, t)), c2 = 1 / (1 - pow(b2, t));
    for (size_t j = 0; j < n; j++) {
        double gj = g[j];
        tm[j] = 2e-6 * (b1 * fabs(m[j]) + (1 - b1) * fabs(gj));
        tv[j] = 3e-5 * (b2 * v[j] + (1 - b2) * gj * gj);
        m[j] = b1 * m[j] + (1 - b1) * gj;
        v[j] = b2 * v[j] + (1 - b2) * gj * gj;
        double mh = m[j] * c1, vh = v[j] * c2, den = sqrt(vh) + c->adam_eps, r = mh / den;
        tp[j] = 2.4e-7 * fabs(p[j]) + lr * (c1 * tm[j] / den + 3e-5 * fabs(r) + 1e-6 * wd * fabs(p[j]));
        p[j] -= lr * (r + wd * p[j]);
    }
}

static void fill_grads(float *g[2], const nm_param_layout *l, uint64_t stream) {
    uint64_t key = nm_rng_key(7, stream, 0, 0);
    for (int b = 0; b < 2; b++) {
        size_t n = b ? l->n_expert : l->n_dense;
        for (size_t j = 0; j < n; j++)
            g[b][j] = (j % 7 == 3) ? 0.0f : (float)(0.1 * nm_rng_normal(key, (uint64_t)b * 1000000 + j));
    }
}

static void test_adamw_mode(int decay_norms_biases) {
    printf("AdamW: two steps, decay_norms_biases=%d\n", decay_norms_biases);
    nm_config cfg;
    small_cfg(&cfg);
    cfg.decay_norms_biases = decay_norms_biases;
    nm_param_layout l;
    nm_layout_init(&l, &cfg, 0, cfg.n_experts);
    size_t nb[2] = {l.n_dense, l.n_expert};
    float *p[2], *g[2];
    double *pd[2], *md[2], *vd[2], *tp[2], *tm[2], *tv[2];
    for (int b = 0; b < 2; b++) {
        p[b] = malloc(sizeof(float) * nb[b]);
        g[b] = malloc(sizeof(float) * nb[b]);
        pd[b] = malloc(sizeof(double) * nb[b]);
        md[b] = calloc(nb[b], sizeof(double));
        vd[b] = calloc(nb[b], sizeof(double));
        tp[b] = malloc(sizeof(double) * nb[b]);
        tm[b] = malloc(sizeof(double) * nb[b]);
        tv[b] = malloc(sizeof(double) * nb[b]);
    }
    uint64_t key = nm_rng_key(7, 99, 0, 0);
    for (int b = 0; b < 2; b++)
        for (size_t j = 0; j < nb[b]; j++) {
            p[b][j] = (float)(2.0 * nm_rng_uniform(key, (uint64_t)b * 1000000 + j) - 1.0);
            pd[b][j] = p[b][j];
        }
    nm_adamw opt;
    nm_adamw_init(&opt, &l, &cfg);
    CHECK(opt.decay_norms_biases == decay_norms_biases, "nm_adamw_init did not take decay_norms_biases");
    const double lrs[2] = {1e-2, 5e-3};
    int n_nodecay = 0, n_expert_nodecay = 0;
    for (int i = 0; i < l.n; i++) {
        n_nodecay += l.info[i].no_decay;
        n_expert_nodecay += l.info[i].no_decay && l.info[i].block == NM_BLOCK_EXPERT;
    }
    CHECK(n_nodecay > 0 && n_expert_nodecay > 0, "layout has %d no_decay tensors (%d expert)", n_nodecay,
          n_expert_nodecay);
    for (int t = 1; t <= 2; t++) {
        fill_grads(g, &l, (uint64_t)t);
        /* each step is compared from the optimiser's own float state, so
         * rounding does not carry over from step to step */
        for (int b = 0; b < 2; b++)
            for (size_t j = 0; j < nb[b]; j++) pd[b][j] = p[b][j], md[b][j] = opt.m[b][j], vd[b][j] = opt.v[b][j];
        nm_adamw_update(&opt, &l, p, g, lrs[t - 1]);
        CHECK(opt.step == t, "step counter %lld after %d updates", (long long)opt.step, t);
        double worst_p = 0.0, worst_m = 0.0, worst_v = 0.0;
        const char *worst_name = "";
        for (int i = 0; i < l.n; i++) {
            const nm_param_info *pi = &l.info[i];
            double wd = (pi->no_decay && !decay_norms_biases) ? 0.0 : cfg.weight_decay;
            int b = pi->block;
            size_t o = pi->offset, n = pi->count;
            adamw_ref(pd[b] + o, md[b] + o, vd[b] + o, tp[b] + o, tm[b] + o, tv[b] + o, g[b] + o, n, t, lrs[t - 1], wd,
                      &cfg);
            for (size_t j = 0; j < n; j++) {
                double dp = fabs(p[b][o + j] - pd[b][o + j]) / tp[b][o + j];
                double dm = fabs(opt.m[b][o + j] - md[b][o + j]) / (tm[b][o + j] + 1e-30);
                double dv = fabs(opt.v[b][o + j] - vd[b][o + j]) / (tv[b][o + j] + 1e-30);
                if (dp > worst_p) worst_p = dp, worst_name = pi->name;
                worst_m = fmax(worst_m, dm);
                worst_v = fmax(worst_v, dv);
            }
        }
        printf("  step %d: worst |p - ref| / tol %.3f (%s), m %.3f, v %.3f\n", t, worst_p, worst_name, worst_m,
               worst_v);
        CHECK(worst_p <= 1.0, "step %d: parameters differ from the formula by %.3g x tol (%s)", t, worst_p, worst_name);
        CHECK(worst_m <= 1.0, "step %d: first moment differs from the formula by %.3g x tol", t, worst_m);
        CHECK(worst_v <= 1.0, "step %d: second moment differs from the formula by %.3g x tol", t, worst_v);
    }
    /* decay alone, visible directly: a third step with zero gradients on a
     * fresh optimiser moves each parameter by exactly -lr wd p (m = v = 0) */
    nm_adamw o2;
    nm_adamw_init(&o2, &l, &cfg);
    for (int b = 0; b < 2; b++) memset(g[b], 0, sizeof(float) * nb[b]);
    float *before[2];
    for (int b = 0; b < 2; b++) {
        before[b] = malloc(sizeof(float) * nb[b]);
        memcpy(before[b], p[b], sizeof(float) * nb[b]);
    }
    nm_adamw_update(&o2, &l, p, g, 0.5);
    for (int i = 0; i < l.n; i++) {
        const nm_param_info *pi = &l.info[i];
        int decays = !(pi->no_decay && !decay_norms_biases);
        double worst = 0.0;
        for (size_t j = 0; j < pi->count; j++) {
            double x0 = before[pi->block][pi->offset + j], x1 = p[pi->block][pi->offset + j];
            double want = decays ? x0 * (1.0 - 0.5 * cfg.weight_decay) : x0;
            worst = fmax(worst, fabs(x1 - want) / (fabs(x0) + 1e-30));
        }
        CHECK(worst < 1e-6, "zero-gradient step on %s (no_decay %d): %s, relative deviation %.3g", pi->name,
              pi->no_decay, decays ? "expected p (1 - lr wd)" : "expected unchanged", worst);
    }
    nm_adamw_free(&o2);
    nm_adamw_free(&opt);
    for (int b = 0; b < 2; b++) {
        free(p[b]), free(g[b]), free(pd[b]), free(md[b]), free(vd[b]), free(before[b]);
        free(tp[b]), free(tm[b]), free(tv[b]);
    }
    nm_layout_free(&l);
}

/* ---------------------------------------------------------------- schedule */

static void test_lr_schedule(void) {
    printf("nm_lr_at\n");
    nm_config c;
    nm_config_defaults(&c);
    CHECK(strcmp(c.lr_schedule, "constant") == 0, "default schedule '%s', expected constant (reference)",
          c.lr_schedule);
    c.learning_rate = 3e-4;
    const int64_t steps[] = {1, 2, 250, 5000, 5001, 1000000};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++)
        CHECK(nm_lr_at(&c, steps[i]) == 3e-4, "constant: lr(%lld) = %g", (long long)steps[i], nm_lr_at(&c, steps[i]));

    /* cosine: peak 1e-3, floor 1e-4, 10 warm-up steps, 110 steps in all */
    snprintf(c.lr_schedule, sizeof c.lr_schedule, "cosine");
    c.learning_rate = 1e-3, c.min_lr = 1e-4, c.warmup_iters = 10, c.max_iters = 110;
    struct {
        int64_t step;
        double lr;
    } cases[] = {
        {1, 1e-4},                 /* warm-up: 1e-3 * 1/10 */
        {5, 5e-4},                 /* 1e-3 * 5/10 */
        {10, 1e-3},                /* end of warm-up: the peak */
        {35, 8.681980515339464e-4}, /* t = 1/4: 1e-4 + 4.5e-4 (1 + cos(pi/4)) */
        {60, 5.5e-4},              /* t = 1/2: 1e-4 + 4.5e-4 */
        {85, 2.318019484660536e-4}, /* t = 3/4: 1e-4 + 4.5e-4 (1 - cos(pi/4)) */
        {110, 1e-4},               /* t = 1: the floor */
        {111, 1e-4},               /* past the end: stays at the floor */
        {100000, 1e-4},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        double lr = nm_lr_at(&c, cases[i].step);
        CHECK(fabs(lr - cases[i].lr) < 1e-15, "cosine: lr(%lld) = %.17g, expected %.17g", (long long)cases[i].step, lr,
              cases[i].lr);
    }
    double prev = nm_lr_at(&c, 10);
    int mono = 1;
    for (int64_t s = 11; s <= 120; s++) {
        double lr = nm_lr_at(&c, s);
        mono &= lr <= prev;
        prev = lr;
    }
    CHECK(mono, "cosine: lr increases after warm-up");
    /* no warm-up: starts just under the peak */
    c.warmup_iters = 0;
    double lr1 = nm_lr_at(&c, 1), want1 = 1e-4 + 4.5e-4 * (1 + cos(M_PI / 110));
    CHECK(fabs(lr1 - want1) < 1e-15, "cosine without warm-up: lr(1) = %.17g, expected %.17g", lr1, want1);
}

/* ----------------------------------------------------------------- dropout */

static void test_dropout(void) {
    printf("nm_dropout\n");
    const size_t n = 200000;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = 1.0f + 0.25f * (float)(i % 13);
    const float ps[] = {0.1f, 0.5f};
    for (int pi = 0; pi < 2; pi++) {
        float p = ps[pi];
        uint64_t key = nm_dropout_key(42, 3, 1);
        memcpy(y, x, sizeof(float) * n);
        nm_dropout(y, n, p, key, 0);
        size_t dropped = 0, pairs = 0, badscale = 0;
        for (size_t i = 0; i < n; i++) {
            if (y[i] == 0.0f) dropped++;
            else if (fabs(y[i] - x[i] / (1.0 - p)) > 1e-6 * fabs(x[i] / (1.0 - p))) badscale++;
            if (i % 2 == 0 && y[i] == 0.0f && y[i + 1] == 0.0f) pairs++;
        }
        double frac = (double)dropped / n, pairfrac = (double)pairs / (n / 2);
        /* binomial: std sqrt(p (1-p) / n) <= 1.2e-3; 5e-3 is > 4 sigma */
        printf("  p=%.1f: dropped %.4f, both of a pair %.4f (p^2 = %.4f)\n", p, frac, pairfrac, p * p);
        CHECK(fabs(frac - p) < 5e-3, "p=%g: dropped fraction %.4f", p, frac);
        CHECK(fabs(pairfrac - p * p) < 5e-3, "p=%g: both elements of a pair dropped %.4f, expected ~p^2 = %.4f", p,
              pairfrac, p * p);
        CHECK(badscale == 0, "p=%g: %zu kept values not scaled by 1/(1-p)", p, badscale);
        /* same key and index: the same mask (applied to another array, as backward does) */
        for (size_t i = 0; i < n; i++) z[i] = 2.0f;
        nm_dropout(z, n, p, key, 0);
        size_t mism = 0;
        for (size_t i = 0; i < n; i++) mism += (z[i] == 0.0f) != (y[i] == 0.0f);
        CHECK(mism == 0, "p=%g: repeat call with the same key gives %zu different mask entries", p, mism);
        /* a slice with base = its global index gets the same mask (odd base
         * splits the pair of elements that share a 64-bit draw) */
        size_t off = 12345;
        for (size_t i = 0; i < 1000; i++) z[i] = x[off + i];
        nm_dropout(z, 1000, p, key, off);
        mism = 0;
        for (size_t i = 0; i < 1000; i++) mism += z[i] != y[off + i];
        CHECK(mism == 0, "p=%g: slice at base %zu differs from the whole in %zu places", p, off, mism);
        /* another key (other step or site): another mask */
        const uint64_t others[] = {nm_dropout_key(42, 4, 1), nm_dropout_key(42, 3, 2), nm_dropout_key(43, 3, 1)};
        for (int k = 0; k < 3; k++) {
            memcpy(z, x, sizeof(float) * n);
            nm_dropout(z, n, p, others[k], 0);
            mism = 0;
            for (size_t i = 0; i < n; i++) mism += (z[i] == 0.0f) != (y[i] == 0.0f);
            double fm = (double)mism / n; /* independent masks: 2 p (1 - p) */
            CHECK(fabs(fm - 2 * p * (1 - p)) < 1e-2, "p=%g: other key %d differs in %.4f of places, expected ~%.4f", p,
                  k, fm, 2 * p * (1 - p));
        }
    }
    /* p = 0: no-op */
    memcpy(y, x, sizeof(float) * n);
    nm_dropout(y, n, 0.0f, nm_dropout_key(1, 2, 3), 0);
    CHECK(memcmp(x, y, sizeof(float) * n) == 0, "p=0 changed the data");
    free(x), free(y), free(z);
}

/* ---------------------------------------------------------- batch sampling */

static void test_batch_sample(void) {
    printf("nm_batch_sample\n");
    enum { T = 16, B = 8 };
    const size_t len = 1000;
    int32_t *split = malloc(sizeof(int32_t) * len);
    for (size_t i = 0; i < len; i++) split[i] = (int32_t)(3 * i + 1); /* injective: start = (x - 1) / 3 */
    int32_t x[B * T], y[B * T], xs[B * T], ys[B * T];
    nm_batch_sample(split, len, T, 42, NM_STREAM_TRAIN, 5, 0, B, x, y);
    /* the same global batch whatever the slicing */
    const int cuts[][2] = {{0, 3}, {3, 5}, {5, 7}, {7, 8}};
    for (int c = 0; c < 4; c++)
        nm_batch_sample(split, len, T, 42, NM_STREAM_TRAIN, 5, cuts[c][0], cuts[c][1], xs + cuts[c][0] * T,
                        ys + cuts[c][0] * T);
    CHECK(memcmp(x, xs, sizeof x) == 0 && memcmp(y, ys, sizeof y) == 0, "sliced sampling differs from the whole batch");
    for (int b = 0; b < B; b++) {
        nm_batch_sample(split, len, T, 42, NM_STREAM_TRAIN, 5, b, b + 1, xs, ys);
        CHECK(memcmp(xs, x + b * T, sizeof(int32_t) * T) == 0 && memcmp(ys, y + b * T, sizeof(int32_t) * T) == 0,
              "sequence %d alone differs from its place in the batch", b);
    }
    /* windows: x = split[s, s+T), y = split[s+1, s+T+1), 0 <= s < len - T - 1 */
    int distinct = 0;
    for (int b = 0; b < B; b++) {
        long s = (x[b * T] - 1) / 3;
        CHECK(s >= 0 && s < (long)(len - T - 1), "start %ld outside [0, %zu)", s, len - T - 1);
        int ok = 1;
        for (int t = 0; t < T; t++) ok &= x[b * T + t] == split[s + t] && y[b * T + t] == split[s + t + 1];
        for (int t = 0; t + 1 < T; t++) ok &= y[b * T + t] == x[b * T + t + 1];
        CHECK(ok, "sequence %d is not the window at %ld with y = x shifted by one", b, s);
        distinct += b == 0 || x[b * T] != x[(b - 1) * T];
    }
    CHECK(distinct >= B - 1, "only %d distinct starts in a batch of %d", distinct, B);
    /* other step, stream or seed: another batch */
    nm_batch_sample(split, len, T, 42, NM_STREAM_TRAIN, 6, 0, B, xs, ys);
    CHECK(memcmp(x, xs, sizeof x) != 0, "step 6 gives the batch of step 5");
    nm_batch_sample(split, len, T, 42, NM_STREAM_EVAL, 5, 0, B, xs, ys);
    CHECK(memcmp(x, xs, sizeof x) != 0, "the eval stream gives the train batch");
    nm_batch_sample(split, len, T, 43, NM_STREAM_TRAIN, 5, 0, B, xs, ys);
    CHECK(memcmp(x, xs, sizeof x) != 0, "seed 43 gives the batch of seed 42");
    /* the range is exactly [0, len - T - 1): over 20000 draws both ends occur
     * (each is missed with probability (1 - 1/983)^20000 ~ 1e-9) and nothing beyond */
    long lo = 1 << 30, hi = -1;
    for (uint64_t step = 0; step < 2500; step++) {
        nm_batch_sample(split, len, T, 42, NM_STREAM_TRAIN, step, 0, B, xs, ys);
        for (int b = 0; b < B; b++) {
            long s = (xs[b * T] - 1) / 3;
            lo = s < lo ? s : lo;
            hi = s > hi ? s : hi;
        }
    }
    CHECK(lo == 0 && hi == (long)(len - T - 2), "starts span [%ld, %ld], expected [0, %zu]", lo, hi, len - T - 2);
    /* the smallest text: len = T + 3 leaves starts 0 and 1 only */
    const size_t tiny = T + 3;
    int seen[3] = {0};
    for (uint64_t step = 0; step < 50; step++) {
        nm_batch_sample(split, tiny, T, 42, NM_STREAM_TRAIN, step, 0, B, xs, ys);
        for (int b = 0; b < B; b++) {
            long s = (xs[b * T] - 1) / 3;
            if (s >= 0 && s < 3) seen[s]++;
            CHECK(ys[b * T + T - 1] == split[s + T], "tiny text: last target %d, expected %d", ys[b * T + T - 1],
                  split[s + T]);
        }
    }
    CHECK(seen[0] > 0 && seen[1] > 0 && seen[2] == 0 && seen[0] + seen[1] == 50 * B,
          "len = T + 3: starts 0/1/2 seen %d/%d/%d times, expected only 0 and 1", seen[0], seen[1], seen[2]);
    free(split);
}

int main(void) {
    test_router_entropy();
    test_router_topk();
    test_router_aux();
    test_moe_plan();
    test_adamw_mode(1);
    test_adamw_mode(0);
    test_lr_schedule();
    test_dropout();
    test_batch_sample();
    return nm_test_report("test_hand_cases");
}
