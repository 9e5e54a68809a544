/* Finite-difference gradient checking shared by test_gradcheck_ops.c and
 * test_gradcheck_moe.c.
 *
* Method. Each check builds a scalar objective L (sum(out * R) for a fixed
 * random R, or the op's own scalar loss), evaluated by the float32 forward
 * and accumulated in double. For a checked element x_i,
 *     fd_i = (L(x_i + h) - L(x_i - h)) / (x_i+ - x_i-),   h = h0 max(1, |x_i|)
 * where x_i+ and x_i- are the float values actually stored (so rounding of the
 * perturbed input does not bias fd). The whole-model checks use the
 * fourth-order central stencil (4 fd(h) - fd(2h)) / 3 instead (see below).
 * The analytic gradient g_i comes from the backward function, with buffers
 * zeroed first where it adds and pre-filled with garbage where it WRITES.
 *
 * Error measure, per checked element:
 *     rel_i = |fd_i - g_i| / max(|fd_i|, |g_i|, floor),
 *     floor = max(1e-2 * max_j |g_j| over the tensor, abs_floor),
 * and each tensor passes when max_i rel_i < tol.
 *
 * Op-level tolerance (tol 1e-2, h0 1e-2, 2-point stencil): the forward is
 * float32, so L carries rounding of order eps_f = 6e-8 times the outputs the
 * perturbation moves (outputs it does not move are bitwise identical in L+
 * and L- and cancel exactly); divided by 2h this is a fd noise of ~1e-6..1e-4
 * for the O(1) data used here, and the O(h^2 f''') truncation of the central
 * difference is ~1e-5..1e-4 relative for these smooth ops. Measured errors
 * are <= 4e-3; a real mistake (missing term, wrong index or transpose,
 * missing dropout mask) gives O(1) errors. Elements whose gradient is below
 * 1e-2 of the tensor's largest are measured against that floor, since there
 * fd noise, not the backward, dominates.
 *
 * Model-level tolerance (tol 3e-2, abs_floor 1e-4): the loss is a mean over
 * the batch, so gradients are 1e-5..1e-1; the rounding noise of L through ~20
 * float ops per path is ~1e-8 (measured by sweeping h), i.e. ~1e-6 in fd at
 * h = 1e-2 and more when h must be halved to avoid a top-k flip, while the
 * 2-point truncation error at h = 1e-2 reaches several percent for the
 * embeddings and layer norms (the layer norm rescales 0.02-sized
 * embeddings). The 4-point stencil removes the h^2 term; elements are
 * measured against an absolute floor of 1e-4 (allowed error 3e-6 there).
 * Measured errors are <= 1.6e-2 even with 60 samples per tensor (GC_NS=60).
 * The model CE is recomputed in double from the logits (model_loss_d).
 *
 * Top-k routing: a perturbation that changes a top-k choice makes L jump.
 * The objectives compare every top-k index with the unperturbed one and
 * return NAN when one changed; the check then halves h (down to h/64 for the
 * model, h/16 for the router/MoE ops) and only then skips the element.
 * Skips are printed, and a minimum fraction checked is asserted. */
#ifndef NANOMOE_TEST_GRADCHECK_H
#define NANOMOE_TEST_GRADCHECK_H

#include <math.h>
#include <mpi.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "nanomoe/attention.h"
#include "nanomoe/config.h"
#include "nanomoe/experts.h"
#include "nanomoe/model.h"
#include "nanomoe/moe.h"
#include "nanomoe/ops.h"
#include "nanomoe/rng.h"
#include "nanomoe/router.h"

/* ------------------------------------------------------------------ helpers */

static uint64_t g_stream = 1;

static inline float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static inline void fill_normal(float *x, size_t n, double mean, double scale) {
    uint64_t key = nm_rng_key(20240601, g_stream++, 0, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + scale * nm_rng_normal(key, i));
}

static inline void fill_uniform(float *x, size_t n, double lo, double hi) {
    uint64_t key = nm_rng_key(20240601, g_stream++, 1, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * nm_rng_uniform(key, i));
}

static inline void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static inline double dotd(const float *a, const float *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * (double)b[i];
    return s;
}

/* Objective: returns L, or NAN when this perturbation must be skipped (a
 * top-k choice flipped, where L is not differentiable). */
typedef double (*gc_obj)(void *ctx);

/* Which elements to check: all, or a random subset plus the largest |g|. */
typedef struct {
    size_t *idx;
    size_t n;
} gc_pick;

static inline gc_pick pick_all(size_t n) {
    gc_pick p = {malloc(sizeof(size_t) * (n ? n : 1)), n};
    for (size_t i = 0; i < n; i++) p.idx[i] = i;
    return p;
}

/* nrand random elements of [0, n), plus nnz random elements whose analytic
 * gradient is non-zero, plus the argmax of |g|. Duplicates are harmless. */
static inline gc_pick pick_some(const float *g, size_t n, int nrand, int nnz) {
    gc_pick p = {malloc(sizeof(size_t) * (size_t)(nrand + nnz + 1)), 0};
    uint64_t key = nm_rng_key(99, g_stream++, 2, 0);
    uint64_t ctr = 0;
    for (int i = 0; i < nrand; i++) p.idx[p.n++] = (size_t)nm_rng_below(key, ctr++, n);
    size_t nz = 0, amax = 0;
    for (size_t i = 0; i < n; i++) {
        if (g[i] != 0.0f) nz++;
        if (fabsf(g[i]) > fabsf(g[amax])) amax = i;
    }
    if (nz > 0)
        for (int i = 0; i < nnz; i++) {
            size_t want = (size_t)nm_rng_below(key, ctr++, nz), seen = 0;
            for (size_t j = 0; j < n; j++)
                if (g[j] != 0.0f && seen++ == want) {
                    p.idx[p.n++] = j;
                    break;
                }
        }
    p.idx[p.n++] = amax;
    return p;
}

/* Summary of every check for the final table. */
#define MAX_RESULTS 256
static struct {
    char name[80];
    double rel;
    int checked, skipped;
    double tol;
} g_res[MAX_RESULTS];
static int g_nres = 0;

typedef struct {
    double h0;          /* step: h = h0 * max(|x|, 1) */
    double tol;         /* max relative error allowed */
    double floor_frac;  /* floor = max(floor_frac * max|g|, abs_floor) */
    double abs_floor;
    double min_checked; /* fraction of picked elements that must not be skipped */
    int stencil;        /* 2: (L(h) - L(-h)) / 2h; 4: with L(+-2h), cancelling the h^2 error term */
    int retries;        /* on a top-k flip, retry with h / 2 this many times before skipping */
} gc_opts;

static const gc_opts OPS = {1e-2, 1e-2, 1e-2, 1e-9, 1.0, 2, 0};

/* L at x[i] = x0 + t (the stored float value); *dt receives the actual step. */
static inline double eval_at(float *x, size_t i, float x0, double t, double *dt, gc_obj f, void *ctx) {
    x[i] = (float)((double)x0 + t);
    *dt = (double)x[i] - (double)x0;
    double L = f(ctx);
    x[i] = x0;
    return L;
}

/* Central difference of L in x[i] with step h (NAN if a perturbation flips top-k). */
static inline double central_diff(float *x, size_t i, double h, int stencil, gc_obj f, void *ctx) {
    float x0 = x[i];
    double tp, tm;
    double Lp = eval_at(x, i, x0, h, &tp, f, ctx), Lm = eval_at(x, i, x0, -h, &tm, f, ctx);
    double d1 = (Lp - Lm) / (tp - tm);
    if (stencil != 4) return d1;
    double Lp2 = eval_at(x, i, x0, 2 * h, &tp, f, ctx), Lm2 = eval_at(x, i, x0, -2 * h, &tm, f, ctx);
    double d2 = (Lp2 - Lm2) / (tp - tm);
    return (4.0 * d1 - d2) / 3.0; /* d1 = g + c h^2 + .., d2 = g + 4 c h^2 + .. */
}

/* Checks grad (n elements of the gradient of L w.r.t. x) at the picked
 * elements; frees the pick. Returns the largest relative error. */
static inline double gradcheck(const char *name, float *x, const float *grad, size_t n, gc_pick pick, gc_obj f, void *ctx,
                        const gc_opts *o) {
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs((double)grad[i]));
    double floor = fmax(o->floor_frac * gmax, o->abs_floor);
    double worst = 0.0, worst_fd = 0.0, worst_g = 0.0;
    size_t worst_i = 0;
    int checked = 0, skipped = 0, retried = 0;
    for (size_t p = 0; p < pick.n; p++) {
        size_t i = pick.idx[p];
        double h = o->h0 * fmax(1.0, fabs((double)x[i]));
        double fd = central_diff(x, i, h, o->stencil, f, ctx);
        for (int r = 0; r < o->retries && isnan(fd); r++) {
            h /= 2;
            fd = central_diff(x, i, h, o->stencil, f, ctx);
            if (r == 0) retried++;
        }
        if (isnan(fd)) {
            skipped++;
            continue;
        }
        checked++;
        double g = grad[i];
        double rel = fabs(fd - g) / fmax(fmax(fabs(fd), fabs(g)), floor);
        if (rel > worst || checked == 1) {
            worst = rel;
            worst_fd = fd;
            worst_g = g;
            worst_i = i;
        }
    }
    f(ctx); /* leave the objective's buffers at the unperturbed point */
    printf("  %-44s checked %4d (%2d at a smaller step) skipped %2d  max|g| %.2e  max rel err %.2e "
           "(at %zu: fd %.5e, backward %.5e)\n",
           name, checked, retried - skipped, skipped, gmax, worst, worst_i, worst_fd, worst_g);
    CHECK(worst < o->tol, "%s: max relative error %.3e >= %.1e (element %zu: fd %.8e, backward %.8e)", name, worst,
          o->tol, worst_i, worst_fd, worst_g);
    int need = (int)ceil(o->min_checked * (double)pick.n);
    CHECK(checked >= need && checked > 0, "%s: only %d of %zu elements checked (need %d)", name, checked, pick.n,
          need);
    if (g_nres < MAX_RESULTS) {
        snprintf(g_res[g_nres].name, sizeof g_res[g_nres].name, "%s", name);
        g_res[g_nres].rel = worst;
        g_res[g_nres].checked = checked;
        g_res[g_nres].skipped = skipped;
        g_res[g_nres].tol = o->tol;
        g_nres++;
    }
    free(pick.idx);
    return worst;
}

/* Backward functions that ADD: pre-filling the gradient with c must give c
 * more, up to the float rounding of sums that now start from c (at most a few
 * hundred terms here: ~1e-5 of the largest gradient); writing instead of
 * adding would be off by |c| >= 0.25. */
static inline void check_adds(const char *name, const float *from_zero, const float *from_c, size_t n, float c) {
    double worst = 0.0, scale = 1.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)from_zero[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(((double)from_c[i] - c) - (double)from_zero[i]) / scale);
    CHECK(worst < 1e-4, "%s: backward does not add into a pre-filled gradient (max deviation %.3e)", name, worst);
}

/* Prints the largest relative error per group of checks (names starting with
 * each group) and returns the test's exit status. */
static inline int gc_summary(const char *test, const char *const *groups, size_t ngroups, double t0) {
    printf("\nsummary: largest relative error per backward\n");
    for (size_t gi = 0; gi < ngroups; gi++) {
        double w = 0.0;
        int n = 0, sk = 0;
        for (int r = 0; r < g_nres; r++)
            if (strncmp(g_res[r].name, groups[gi], strlen(groups[gi])) == 0) {
                w = fmax(w, g_res[r].rel);
                n += g_res[r].checked;
                sk += g_res[r].skipped;
            }
        printf("  %-24s %.3e  (%d elements checked, %d skipped for top-k flips)\n", groups[gi], w, n, sk);
    }
    printf("elapsed %.2f s\n", MPI_Wtime() - t0);
    return nm_test_report(test);
}

#endif
