/* Central finite-difference checks of every backward function, from single ops
 * up to the whole model, printing the largest relative error of each.
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

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static void fill_normal(float *x, size_t n, double mean, double scale) {
    uint64_t key = nm_rng_key(20240601, g_stream++, 0, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(mean + scale * nm_rng_normal(key, i));
}

static void fill_uniform(float *x, size_t n, double lo, double hi) {
    uint64_t key = nm_rng_key(20240601, g_stream++, 1, 0);
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * nm_rng_uniform(key, i));
}

static void fill_const(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static double dotd(const float *a, const float *b, size_t n) {
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

static gc_pick pick_all(size_t n) {
    gc_pick p = {malloc(sizeof(size_t) * (n ? n : 1)), n};
    for (size_t i = 0; i < n; i++) p.idx[i] = i;
    return p;
}

/* nrand random elements of [0, n), plus nnz random elements whose analytic
 * gradient is non-zero, plus the argmax of |g|. Duplicates are harmless. */
static gc_pick pick_some(const float *g, size_t n, int nrand, int nnz) {
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
static double eval_at(float *x, size_t i, float x0, double t, double *dt, gc_obj f, void *ctx) {
    x[i] = (float)((double)x0 + t);
    *dt = (double)x[i] - (double)x0;
    double L = f(ctx);
    x[i] = x0;
    return L;
}

/* Central difference of L in x[i] with step h (NAN if a perturbation flips top-k). */
static double central_diff(float *x, size_t i, double h, int stencil, gc_obj f, void *ctx) {
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
static double gradcheck(const char *name, float *x, const float *grad, size_t n, gc_pick pick, gc_obj f, void *ctx,
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
static void check_adds(const char *name, const float *from_zero, const float *from_c, size_t n, float c) {
    double worst = 0.0, scale = 1.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs((double)from_zero[i]));
    for (size_t i = 0; i < n; i++) worst = fmax(worst, fabs(((double)from_c[i] - c) - (double)from_zero[i]) / scale);
    CHECK(worst < 1e-4, "%s: backward does not add into a pre-filled gradient (max deviation %.3e)", name, worst);
}

/* --------------------------------------------------------------- embedding */

typedef struct {
    float *out, *tok, *pos, *R;
    int32_t *ids;
    int B, T, C;
} emb_ctx;

static double emb_obj(void *p) {
    emb_ctx *c = p;
    nm_embedding_forward(c->out, c->ids, c->tok, c->pos, c->B, c->T, c->C);
    return dotd(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void test_embedding(void) {
    printf("nm_embedding_backward\n");
    int B = 3, T = 4, C = 20, V = 5; /* 12 tokens over ids 0..3: repeats; id 4 unused */
    size_t NC = (size_t)B * T * C;
    emb_ctx c = {falloc(NC), falloc((size_t)V * C), falloc((size_t)T * C), falloc(NC), malloc(sizeof(int32_t) * B * T),
                 B, T, C};
    for (int n = 0; n < B * T; n++) c.ids[n] = (n * 3 + n / 5) % 4;
    fill_normal(c.tok, (size_t)V * C, 0, 1);
    fill_normal(c.pos, (size_t)T * C, 0, 1);
    fill_normal(c.R, NC, 0, 1);
    float *dtok = falloc((size_t)V * C), *dpos = falloc((size_t)T * C);
    float *dtok2 = falloc((size_t)V * C), *dpos2 = falloc((size_t)T * C);
    emb_obj(&c);
    nm_embedding_backward(dtok, dpos, c.R, c.ids, B, T, C);
    fill_const(dtok2, (size_t)V * C, 0.25f);
    fill_const(dpos2, (size_t)T * C, 0.25f);
    nm_embedding_backward(dtok2, dpos2, c.R, c.ids, B, T, C);
    check_adds("embedding dtok", dtok, dtok2, (size_t)V * C, 0.25f);
    check_adds("embedding dpos", dpos, dpos2, (size_t)T * C, 0.25f);
    gradcheck("embedding dtok", c.tok, dtok, (size_t)V * C, pick_all((size_t)V * C), emb_obj, &c, &OPS);
    gradcheck("embedding dpos", c.pos, dpos, (size_t)T * C, pick_all((size_t)T * C), emb_obj, &c, &OPS);
    double unused = 0.0;
    for (int j = 0; j < C; j++) unused = fmax(unused, fabs(dtok[4 * C + j]));
    CHECK(unused == 0.0, "embedding: gradient %.3g reached the unused token row", unused);
    free(c.out), free(c.tok), free(c.pos), free(c.R), free(c.ids);
    free(dtok), free(dpos), free(dtok2), free(dpos2);
}

/* --------------------------------------------------------------- layernorm */

typedef struct {
    float *out, *mean, *rstd, *inp, *s, *b, *R;
    int N, C;
    float eps;
} ln_ctx;

static double ln_obj(void *p) {
    ln_ctx *c = p;
    nm_layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->s, c->b, c->N, c->C, c->eps);
    return dotd(c->out, c->R, (size_t)c->N * c->C);
}

static void test_layernorm(void) {
    printf("nm_layernorm_backward\n");
    int N = 6, C = 24; /* C not a multiple of 16: the column-chunk tail */
    size_t NC = (size_t)N * C;
    ln_ctx c = {falloc(NC), falloc(N), falloc(N), falloc(NC), falloc(C), falloc(C), falloc(NC), N, C, 1e-5f};
    fill_normal(c.inp, NC, 0.5, 2.0);
    fill_normal(c.s, C, 1.0, 0.3);
    fill_normal(c.b, C, 0.0, 0.2);
    fill_normal(c.R, NC, 0, 1);
    float *di = falloc(NC), *ds = falloc(C), *db = falloc(C);
    float *di2 = falloc(NC), *ds2 = falloc(C), *db2 = falloc(C);
    ln_obj(&c);
    nm_layernorm_backward(di, ds, db, c.R, c.inp, c.s, c.mean, c.rstd, N, C);
    fill_const(di2, NC, -0.5f), fill_const(ds2, C, -0.5f), fill_const(db2, C, -0.5f);
    nm_layernorm_backward(di2, ds2, db2, c.R, c.inp, c.s, c.mean, c.rstd, N, C);
    check_adds("layernorm dinp", di, di2, NC, -0.5f);
    check_adds("layernorm ds", ds, ds2, C, -0.5f);
    check_adds("layernorm db", db, db2, C, -0.5f);
    gradcheck("layernorm dinp", c.inp, di, NC, pick_all(NC), ln_obj, &c, &OPS);
    gradcheck("layernorm ds", c.s, ds, C, pick_all(C), ln_obj, &c, &OPS);
    gradcheck("layernorm db", c.b, db, C, pick_all(C), ln_obj, &c, &OPS);
    free(c.out), free(c.mean), free(c.rstd), free(c.inp), free(c.s), free(c.b), free(c.R);
    free(di), free(ds), free(db), free(di2), free(ds2), free(db2);
}

/* ------------------------------------------------------------------- dense */

typedef struct {
    float *out, *inp, *W, *b, *R;
    int N, Din, Dout;
} dense_ctx;

static double dense_obj(void *p) {
    dense_ctx *c = p;
    nm_dense_forward(c->out, c->inp, c->W, c->b, c->N, c->Din, c->Dout);
    return dotd(c->out, c->R, (size_t)c->N * c->Dout);
}

static void test_dense_case(int N, int Din, int Dout, int subset) {
    char nm[80];
    printf("nm_dense_backward N=%d Din=%d Dout=%d%s\n", N, Din, Dout,
           subset ? " (threaded nm_gemm path, random subset)" : "");
    size_t ni = (size_t)N * Din, nw = (size_t)Din * Dout, no = (size_t)N * Dout;
    dense_ctx c = {falloc(no), falloc(ni), falloc(nw), falloc(Dout), falloc(no), N, Din, Dout};
    fill_normal(c.inp, ni, 0, 1);
    fill_normal(c.W, nw, 0, 1.0 / sqrt(Din));
    fill_normal(c.b, Dout, 0, 0.5);
    fill_normal(c.R, no, 0, 1);
    float *di = falloc(ni), *dW = falloc(nw), *db = falloc(Dout);
    float *di2 = falloc(ni), *dW2 = falloc(nw), *db2 = falloc(Dout);
    dense_obj(&c);
    nm_dense_backward(di, dW, db, c.R, c.inp, c.W, N, Din, Dout);
    fill_const(di2, ni, 1.5f), fill_const(dW2, nw, 1.5f), fill_const(db2, Dout, 1.5f);
    nm_dense_backward(di2, dW2, db2, c.R, c.inp, c.W, N, Din, Dout);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dinp adds", N, Din, Dout);
    check_adds(nm, di, di2, ni, 1.5f);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dW adds", N, Din, Dout);
    check_adds(nm, dW, dW2, nw, 1.5f);
    snprintf(nm, sizeof nm, "dense %dx%dx%d db adds", N, Din, Dout);
    check_adds(nm, db, db2, Dout, 1.5f);
    /* dinp = NULL and db = NULL are skipped, dW unchanged */
    float *dW3 = falloc(nw);
    nm_dense_backward(NULL, dW3, NULL, c.R, c.inp, c.W, N, Din, Dout);
    double dd = 0.0;
    for (size_t i = 0; i < nw; i++) dd = fmax(dd, fabs((double)dW3[i] - dW[i]));
    CHECK(dd == 0.0, "dense: dW with dinp=NULL, db=NULL differs by %.3g", dd);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dinp", N, Din, Dout);
    gradcheck(nm, c.inp, di, ni, subset ? pick_some(di, ni, 40, 0) : pick_all(ni), dense_obj, &c, &OPS);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dW", N, Din, Dout);
    gradcheck(nm, c.W, dW, nw, subset ? pick_some(dW, nw, 40, 0) : pick_all(nw), dense_obj, &c, &OPS);
    snprintf(nm, sizeof nm, "dense %dx%dx%d db", N, Din, Dout);
    gradcheck(nm, c.b, db, Dout, subset ? pick_some(db, Dout, 20, 0) : pick_all(Dout), dense_obj, &c, &OPS);
    free(c.out), free(c.inp), free(c.W), free(c.b), free(c.R);
    free(di), free(dW), free(db), free(di2), free(dW2), free(db2), free(dW3);
}

/* -------------------------------------------------------------------- gelu */

typedef struct {
    float *out, *inp, *R;
    size_t n;
} gelu_ctx;

static double gelu_obj(void *p) {
    gelu_ctx *c = p;
    nm_gelu_forward(c->out, c->inp, c->n);
    return dotd(c->out, c->R, c->n);
}

static void test_gelu(void) {
    printf("nm_gelu_backward\n");
    size_t n = 97;
    gelu_ctx c = {falloc(n), falloc(n), falloc(n), n};
    fill_uniform(c.inp, n, -5.0, 5.0);
    fill_normal(c.R, n, 0, 1);
    float *di = falloc(n), *act = falloc(n), *alias = falloc(n);
    gelu_obj(&c);
    fill_const(di, n, 1234.0f); /* WRITES: garbage must be overwritten */
    nm_gelu_backward(di, act, c.inp, c.R, n);
    double da = 0.0;
    for (size_t i = 0; i < n; i++) da = fmax(da, fabs((double)act[i] - c.out[i]));
    CHECK(da <= 1e-6, "gelu_backward act differs from gelu_forward by %.3g", da);
    memcpy(alias, c.R, sizeof(float) * n);
    nm_gelu_backward(alias, NULL, c.inp, alias, n); /* dinp aliasing dout */
    CHECK(memcmp(alias, di, sizeof(float) * n) == 0, "gelu_backward with dinp == dout differs");
    gradcheck("gelu dinp", c.inp, di, n, pick_all(n), gelu_obj, &c, &OPS);
    free(c.out), free(c.inp), free(c.R), free(di), free(act), free(alias);
}

/* ----------------------------------------------------------- cross-entropy */

typedef struct {
    float *losses, *logits;
    int32_t *targets;
    int N, V;
    double scale;
} ce_ctx;

static double ce_obj(void *p) {
    ce_ctx *c = p;
    return c->scale * nm_crossentropy_forward(c->losses, c->logits, c->targets, c->N, c->V);
}

static void test_crossentropy(void) {
    printf("nm_crossentropy_backward\n");
    int N = 6, V = 11;
    size_t NV = (size_t)N * V;
    ce_ctx c = {falloc(N), falloc(NV), malloc(sizeof(int32_t) * N), N, V, 0.37};
    fill_normal(c.logits, NV, 0, 2);
    for (int n = 0; n < N; n++) c.targets[n] = (n * 7 + 3) % V;
    float *dl = falloc(NV);
    fill_const(dl, NV, 1234.0f);
    nm_crossentropy_backward(dl, c.logits, c.targets, N, V, (float)c.scale);
    gradcheck("crossentropy dlogits", c.logits, dl, NV, pick_all(NV), ce_obj, &c, &OPS);
    free(c.losses), free(c.logits), free(c.targets), free(dl);
}

/* --------------------------------------------------------------- attention */

typedef struct {
    float *out, *probs, *qkv, *R, *scratch;
    int B, T, C, H;
    nm_attn_dropout drop;
} attn_ctx;

static double attn_obj(void *p) {
    attn_ctx *c = p;
    nm_attention_forward(c->out, c->probs, c->qkv, c->B, c->T, c->C, c->H, &c->drop, c->scratch);
    return dotd(c->out, c->R, (size_t)c->B * c->T * c->C);
}

static void test_attention(int B, int T, int C, int H, float p, long b_offset) {
    printf("nm_attention_backward (causal, B=%d T=%d C=%d H=%d, dropout p=%g, b_offset=%ld)\n", B, T, C, H, p,
           b_offset);
    size_t N = (size_t)B * T;
    attn_ctx c = {falloc(N * C), falloc((size_t)B * H * T * T), falloc(N * 3 * C), falloc(N * C),
                  falloc((size_t)omp_get_max_threads() * 2 * T * T), B, T, C, H,
                  {p, nm_dropout_key(5, 11, 3), b_offset}};
    fill_normal(c.qkv, N * 3 * C, 0, 1);
    fill_normal(c.R, N * C, 0, 1);
    float *dqkv = falloc(N * 3 * C);
    attn_obj(&c);
    /* the kept softmax is causal: zero above the diagonal, rows sum to 1 */
    double above = 0.0, rowerr = 0.0;
    for (int bh = 0; bh < B * H; bh++)
        for (int i = 0; i < T; i++) {
            double s = 0.0;
            for (int j = 0; j < T; j++) {
                float v = c.probs[((size_t)bh * T + i) * T + j];
                if (j > i) above = fmax(above, fabs(v));
                else s += v;
            }
            rowerr = fmax(rowerr, fabs(s - 1.0));
        }
    CHECK(above == 0.0 && rowerr < 1e-5, "attention probs: above-diagonal %.3g, row-sum error %.3g", above, rowerr);
    fill_const(dqkv, N * 3 * C, 1234.0f); /* WRITES every element */
    nm_attention_backward(dqkv, c.R, c.qkv, c.probs, B, T, C, H, &c.drop, c.scratch);
    char nm[80];
    snprintf(nm, sizeof nm, "attention dqkv (p=%g) T=%d", p, T);
    gradcheck(nm, c.qkv, dqkv, N * 3 * C, pick_all(N * 3 * C), attn_obj, &c, &OPS);
    free(c.out), free(c.probs), free(c.qkv), free(c.R), free(c.scratch), free(dqkv);
}

/* ------------------------------------------------------------------ router */

typedef struct {
    float *probs, *gates, *m, *Wr, *wgate;
    int32_t *topi, *topi_ref;
    double *psum, *top1;
    int N, C, E, K, seq_len;
    double gcoef, coeff; /* L = gcoef * sum(wgate * gates) + coeff * aux */
    double ent[64];      /* per-sequence router entropy (not checked here) */
} router_ctx;

static double batch_aux(const double *psum, const double *top1, int nseq, int E, double ntok, double *dprob) {
    double ps[64] = {0}, t1[64] = {0};
    for (int s = 0; s < nseq; s++)
        for (int e = 0; e < E; e++) {
            ps[e] += psum[(size_t)s * E + e];
            t1[e] += top1[(size_t)s * E + e];
        }
    return nm_router_aux(ps, t1, ntok, E, dprob);
}

static double router_obj(void *p) {
    router_ctx *c = p;
    nm_router_forward(c->probs, c->topi, c->gates, c->psum, c->top1, c->ent, c->m, c->Wr, c->N, c->C, c->E, c->K,
                      c->seq_len);
    if (c->topi_ref && memcmp(c->topi, c->topi_ref, sizeof(int32_t) * (size_t)c->N * c->K) != 0) return NAN;
    double L = c->gcoef * dotd(c->gates, c->wgate, (size_t)c->N * c->K);
    return L + c->coeff * batch_aux(c->psum, c->top1, c->N / c->seq_len, c->E, (double)c->N, NULL);
}

static void test_router_case(const char *what, double gcoef, double coeff) {
    printf("nm_router_backward: %s (L = %g * sum(w * gates) + %g * aux)\n", what, gcoef, coeff);
    int N = 24, C = 12, E = 4, K = 2, seq_len = 8, nseq = N / seq_len;
    router_ctx c = {falloc((size_t)N * E), falloc((size_t)N * K), falloc((size_t)N * C), falloc((size_t)C * E),
                    falloc((size_t)N * K), malloc(sizeof(int32_t) * N * K), NULL,
                    calloc((size_t)nseq * E, sizeof(double)), calloc((size_t)nseq * E, sizeof(double)),
                    N, C, E, K, seq_len, gcoef, coeff, {0}};
    g_stream = 500; /* the same inputs for every objective */
    fill_normal(c.m, (size_t)N * C, 0, 1);
    fill_normal(c.Wr, (size_t)C * E, 0, 0.5);
    fill_normal(c.wgate, (size_t)N * K, 0, 1);
    router_obj(&c);
    c.topi_ref = malloc(sizeof(int32_t) * N * K);
    memcpy(c.topi_ref, c.topi, sizeof(int32_t) * N * K);
    double dprob[64];
    double aux = batch_aux(c.psum, c.top1, nseq, E, (double)N, dprob);
    for (int e = 0; e < E; e++) dprob[e] *= coeff;
    float *dgates = falloc((size_t)N * K), *dm = falloc((size_t)N * C), *dWr = falloc((size_t)C * E),
          *dl = falloc((size_t)N * E);
    for (int i = 0; i < N * K; i++) dgates[i] = (float)(gcoef * c.wgate[i]);
    nm_router_backward(dm, dWr, dl, c.m, c.Wr, c.probs, c.topi, c.gates, dgates, dprob, N, C, E, K);
    printf("  aux = %.6f\n", aux);
    char nm[80];
    snprintf(nm, sizeof nm, "router dm [%s]", what);
    gradcheck(nm, c.m, dm, (size_t)N * C, pick_all((size_t)N * C), router_obj, &c,
              &(gc_opts){1e-2, 1e-2, 1e-2, 1e-12, 0.9, 2, 4});
    snprintf(nm, sizeof nm, "router dWr [%s]", what);
    gradcheck(nm, c.Wr, dWr, (size_t)C * E, pick_all((size_t)C * E), router_obj, &c,
              &(gc_opts){1e-2, 1e-2, 1e-2, 1e-12, 0.9, 2, 4});
    free(c.probs), free(c.gates), free(c.m), free(c.Wr), free(c.wgate), free(c.topi), free(c.topi_ref);
    free(c.psum), free(c.top1), free(dgates), free(dm), free(dWr), free(dl);
}

/* ------------------------------------------------------------- expert FFN */

typedef struct {
    float *ys, *u, *xs, *W1, *b1, *W2, *b2, *act, *R;
    int M, C, F;
} ffn_ctx;

static double ffn_obj(void *p) {
    ffn_ctx *c = p;
    nm_expert_ffn_forward(c->ys, c->u, c->xs, c->W1, c->b1, c->W2, c->b2, c->M, c->C, c->F, c->act);
    return dotd(c->ys, c->R, (size_t)c->M * c->C);
}

static void test_expert_ffn(void) {
    printf("nm_expert_ffn_backward\n");
    int M = 6, C = 8, F = 20;
    size_t MC = (size_t)M * C, MF = (size_t)M * F, CF = (size_t)C * F;
    ffn_ctx c = {falloc(MC), falloc(MF), falloc(MC), falloc(CF), falloc(F), falloc(CF), falloc(C), falloc(MF),
                 falloc(MC), M, C, F};
    fill_normal(c.xs, MC, 0, 1);
    fill_normal(c.W1, CF, 0, sqrt(2.0 / C));
    fill_normal(c.b1, F, 0, 0.3);
    fill_normal(c.W2, CF, 0, sqrt(2.0 / F));
    fill_normal(c.b2, C, 0, 0.3);
    fill_normal(c.R, MC, 0, 1);
    float *dxs = falloc(MC), *dW1 = falloc(CF), *db1 = falloc(F), *dW2 = falloc(CF), *db2 = falloc(C),
          *act = falloc(MF), *du = falloc(MF);
    ffn_obj(&c);
    fill_const(dxs, MC, 1234.0f); /* WRITES */
    nm_expert_ffn_backward(dxs, dW1, db1, dW2, db2, c.R, c.xs, c.u, c.W1, c.W2, M, C, F, act, du);
    gradcheck("expert_ffn dxs", c.xs, dxs, MC, pick_all(MC), ffn_obj, &c, &OPS);
    gradcheck("expert_ffn dW1", c.W1, dW1, CF, pick_all(CF), ffn_obj, &c, &OPS);
    gradcheck("expert_ffn db1", c.b1, db1, F, pick_all(F), ffn_obj, &c, &OPS);
    gradcheck("expert_ffn dW2", c.W2, dW2, CF, pick_all(CF), ffn_obj, &c, &OPS);
    gradcheck("expert_ffn db2", c.b2, db2, C, pick_all(C), ffn_obj, &c, &OPS);
    free(c.ys), free(c.u), free(c.xs), free(c.W1), free(c.b1), free(c.W2), free(c.b2), free(c.act), free(c.R);
    free(dxs), free(dW1), free(db1), free(dW2), free(db2), free(act), free(du);
}

/* --------------------------------------------------------------- MoE layer */

typedef struct {
    float *out, *m, *R;
    nm_layer_view w;
    nm_moe_dims d;
    nm_moe_acts a;
    nm_moe_scratch s;
    nm_dispatch x; /* one rank: the exchange is the identity */
    int32_t *topi_ref;
    double coeff;
} moe_ctx;

static double moe_obj(void *p) {
    moe_ctx *c = p;
    nm_moe_forward(c->out, &c->a, c->m, &c->w, &c->d, &c->s, &c->x);
    if (c->topi_ref && memcmp(c->a.topi, c->topi_ref, sizeof(int32_t) * (size_t)c->d.N * c->d.K) != 0) return NAN;
    double L = dotd(c->out, c->R, (size_t)c->d.N * c->d.C);
    return L + c->coeff * batch_aux(c->a.psum, c->a.top1, c->d.N / c->d.seq_len, c->d.E, (double)c->d.N, NULL);
}

/* empty_expert: inputs > 0 and a router column of -1 so that expert E-1 is
 * never chosen (its group is empty: its gradients must be exactly zero) */
static void test_moe(int empty_expert) {
    int B = 2, T = 8, C = 16, F = 32, E = 4, K = 2;
    moe_ctx c;
    memset(&c, 0, sizeof c);
    c.d = (nm_moe_dims){B * T, T, C, F, E, K, 0};
    c.coeff = 0.5; /* large enough that the aux path is visible in dm and dWr */
    printf("nm_moe_backward (N=%d C=%d F=%d E=%d K=%d, L = sum(out * R) + %g * aux%s)\n", B * T, C, F, E, K, c.coeff,
           empty_expert ? ", expert 3 unused" : "");
    int N = B * T;
    size_t NC = (size_t)N * C;
    c.out = falloc(NC), c.m = falloc(NC), c.R = falloc(NC);
    nm_layer_view g;
    memset(&g, 0, sizeof g);
    c.w.router_w = falloc((size_t)C * E), g.router_w = falloc((size_t)C * E);
    c.w.fc1_w = falloc((size_t)E * C * F), g.fc1_w = falloc((size_t)E * C * F);
    c.w.fc1_b = falloc((size_t)E * F), g.fc1_b = falloc((size_t)E * F);
    c.w.fc2_w = falloc((size_t)E * F * C), g.fc2_w = falloc((size_t)E * F * C);
    c.w.fc2_b = falloc((size_t)E * C), g.fc2_b = falloc((size_t)E * C);
    fill_normal(c.m, NC, 0, 1);
    fill_normal(c.R, NC, 0, 1);
    fill_normal(c.w.router_w, (size_t)C * E, 0, 0.4);
    fill_normal(c.w.fc1_w, (size_t)E * C * F, 0, sqrt(2.0 / C));
    fill_normal(c.w.fc1_b, (size_t)E * F, 0, 0.2);
    fill_normal(c.w.fc2_w, (size_t)E * F * C, 0, sqrt(2.0 / F));
    fill_normal(c.w.fc2_b, (size_t)E * C, 0, 0.2);
    if (empty_expert) {
        for (size_t i = 0; i < NC; i++) c.m[i] = 0.5f + fabsf(c.m[i]);
        for (int j = 0; j < C; j++) c.w.router_w[j * E + E - 1] = -1.0f;
    }
    nm_dispatch_init(&c.x, MPI_COMM_SELF, MPI_COMM_NULL, E, C, (size_t)N * K);
    nm_moe_acts_alloc(&c.a, &c.d, &c.x);
    nm_moe_scratch_alloc(&c.s, &c.d, &c.x);
    moe_obj(&c);
    c.topi_ref = malloc(sizeof(int32_t) * N * K);
    memcpy(c.topi_ref, c.a.topi, sizeof(int32_t) * N * K);
    printf("  tokens per expert:");
    for (int e = 0; e < E; e++) printf(" %d", c.a.count[e]);
    printf("\n");
    CHECK(!empty_expert || c.a.count[E - 1] == 0, "expert %d got %d tokens, expected none", E - 1, c.a.count[E - 1]);
    double dprob[64];
    batch_aux(c.a.psum, c.a.top1, N / T, E, (double)N, dprob);
    for (int e = 0; e < E; e++) dprob[e] *= c.coeff;
    float *dm = falloc(NC);
    nm_moe_backward(dm, g.router_w, &g, c.R, &c.a, c.m, &c.w, dprob, &c.d, &c.s, &c.x);
    gc_opts o = {1e-2, 1e-2, 1e-2, 1e-12, 0.9, 2, 4};
    if (empty_expert) {
        double z = 0.0;
        for (int i = 0; i < C * F; i++) z = fmax(z, fabs(g.fc1_w[(size_t)(E - 1) * C * F + i]) + fabs(g.fc2_w[(size_t)(E - 1) * F * C + i]));
        for (int i = 0; i < F; i++) z = fmax(z, fabs(g.fc1_b[(size_t)(E - 1) * F + i]));
        for (int i = 0; i < C; i++) z = fmax(z, fabs(g.fc2_b[(size_t)(E - 1) * C + i]));
        CHECK(z == 0.0, "unused expert got gradient %.3g", z);
        /* fd on the unused expert's first elements: must be 0 as well */
        gc_pick pk = {malloc(sizeof(size_t) * 8), 8};
        for (int i = 0; i < 8; i++) pk.idx[i] = (size_t)(E - 1) * C * F + (size_t)i * 37;
        gradcheck("moe dfc1_w [unused expert]", c.w.fc1_w, g.fc1_w, (size_t)E * C * F, pk, moe_obj, &c, &o);
    }
    const char *sfx = empty_expert ? " [expert 3 unused]" : "";
    char nm[96];
#define MOE_NAME(t) (snprintf(nm, sizeof nm, "moe %s%s", t, sfx), nm)
    gradcheck(MOE_NAME("dm"), c.m, dm, NC, pick_all(NC), moe_obj, &c, &o);
    gradcheck(MOE_NAME("drouter_w"), c.w.router_w, g.router_w, (size_t)C * E, pick_all((size_t)C * E), moe_obj, &c,
              &o);
    gradcheck(MOE_NAME("dfc1_w"), c.w.fc1_w, g.fc1_w, (size_t)E * C * F, pick_some(g.fc1_w, (size_t)E * C * F, 150, 50),
              moe_obj, &c, &o);
    gradcheck(MOE_NAME("dfc1_b"), c.w.fc1_b, g.fc1_b, (size_t)E * F, pick_all((size_t)E * F), moe_obj, &c, &o);
    gradcheck(MOE_NAME("dfc2_w"), c.w.fc2_w, g.fc2_w, (size_t)E * F * C, pick_some(g.fc2_w, (size_t)E * F * C, 150, 50),
              moe_obj, &c, &o);
    gradcheck(MOE_NAME("dfc2_b"), c.w.fc2_b, g.fc2_b, (size_t)E * C, pick_all((size_t)E * C), moe_obj, &c, &o);
#undef MOE_NAME
    nm_moe_acts_free(&c.a);
    nm_moe_scratch_free(&c.s);
    nm_dispatch_free(&c.x);
    free(c.out), free(c.m), free(c.R), free(c.topi_ref), free(dm);
    free(c.w.router_w), free(c.w.fc1_w), free(c.w.fc1_b), free(c.w.fc2_w), free(c.w.fc2_b);
    free(g.router_w), free(g.fc1_w), free(g.fc1_b), free(g.fc2_w), free(g.fc2_b);
}

/* ------------------------------------------------------------ whole model */

typedef struct {
    nm_model *m;
    const int32_t *x, *y;
    int B, T;
    nm_forward_opts o;
    int32_t *topi_ref; /* [L, N, K] */
} model_ctx;

static int model_topi_differs(const model_ctx *c) {
    size_t NK = (size_t)c->B * c->T * c->m->cfg.top_k;
    for (int l = 0; l < c->m->cfg.n_layers; l++)
        if (memcmp(c->m->acts.layers[l].moe.topi, c->topi_ref + l * NK, sizeof(int32_t) * NK) != 0) return 1;
    return 0;
}

/* The model's loss, ce + aux_loss_coeff * aux, with the cross-entropy
 * recomputed in double from the float logits: nm_model_forward rounds each
 * token's loss to float (~2.4e-7 absolute at CE ~ 4), which would dominate
 * the fd noise; from the logits on the noise is ~1e-9. The backward is the
 * gradient of the same mathematical function. */
static double model_loss_d(const nm_model *m, const int32_t *y) {
    int N = m->B * m->T, V = m->cfg.vocab_size;
    double ce = 0.0;
    for (int n = 0; n < N; n++) {
        const float *l = m->acts.logits + (size_t)n * V;
        double mx = l[0], s = 0.0;
        for (int v = 1; v < V; v++) mx = fmax(mx, (double)l[v]);
        for (int v = 0; v < V; v++) s += exp((double)l[v] - mx);
        ce += log(s) + mx - (double)l[y[n]];
    }
    return ce / ((double)m->fwd.b_global * m->T) + m->cfg.aux_loss_coeff * m->aux;
}

static double model_obj(void *p) {
    model_ctx *c = p;
    nm_model_forward(c->m, c->x, c->y, c->B, c->T, &c->o);
    if (c->topi_ref && model_topi_differs(c)) return NAN;
    return model_loss_d(c->m, c->y);
}

static int load_tiny(nm_config *cfg) {
    nm_error err;
    nm_config_defaults(cfg);
    if (nm_config_load_ini(cfg, "../configs/tiny.ini", &err) != 0) {
        /* the same shape as configs/tiny.ini, for runs outside tests/ */
        printf("  (configs/tiny.ini not readable from here: %s; using its values inline)\n", err.msg);
        cfg->d_model = 32, cfg->n_layers = 2, cfg->n_heads = 2, cfg->d_ff = 64, cfg->n_experts = 4;
        cfg->top_k = 2, cfg->block_size = 32, cfg->aux_loss_coeff = 0.01, cfg->seed = 1234;
    }
    cfg->vocab_size = 65;
    return 0;
}

static void test_model(const char *label, double dropout, double aux_coeff, int training, uint64_t step,
                       long b_offset, long b_global) {
    nm_config cfg;
    load_tiny(&cfg);
    cfg.dropout_rate = dropout;
    cfg.aux_loss_coeff = aux_coeff;
    int B = 2, T = 16, V = cfg.vocab_size;
    printf("whole model [%s]: d_model %d, n_layers %d, n_heads %d, d_ff %d, E %d, K %d, V %d; B=%d T=%d; "
           "dropout %g, aux_loss_coeff %g, training=%d step=%llu b_offset=%ld b_global=%ld\n",
           label, cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.n_experts, cfg.top_k, V, B, T, dropout,
           aux_coeff, training, (unsigned long long)step, b_offset, b_global);
    CHECK(cfg.d_model == 32 && cfg.n_layers == 2 && cfg.n_heads == 2 && cfg.d_ff == 64 && cfg.n_experts == 4 &&
              cfg.top_k == 2 && cfg.block_size == 32,
          "configs/tiny.ini no longer has the expected model shape");
    nm_model m;
    nm_error err;
    if (nm_model_create(&m, &cfg, MPI_COMM_WORLD, B, T, &err) != 0) {
        CHECK(0, "nm_model_create: %s", err.msg);
        return;
    }
    int32_t *x = malloc(sizeof(int32_t) * B * T), *y = malloc(sizeof(int32_t) * B * T);
    uint64_t key = nm_rng_key(31, 41, 59, 26);
    for (int i = 0; i < B * T; i++) x[i] = (int32_t)nm_rng_below(key, (uint64_t)i, (uint64_t)V);
    for (int i = 0; i < B * T; i++) y[i] = (int32_t)nm_rng_below(key, (uint64_t)(1000 + i), (uint64_t)V);
    /* non-zero biases and non-unit norms, so that their gradients and the
     * paths through them are exercised at a generic point */
    for (int i = 0; i < m.layout.n; i++) {
        const nm_param_info *pi = &m.layout.info[i];
        float *w = nm_param_ptr(&m.layout, i, m.params[0], m.params[1]);
        if (pi->init == NM_INIT_ZERO) fill_normal(w, pi->count, 0.0, 0.05);
        if (pi->init == NM_INIT_ONE) fill_normal(w, pi->count, 1.0, 0.1);
    }
    model_ctx c = {&m, x, y, B, T, {training, step, b_offset, b_global}, NULL};
    model_obj(&c);
    double Ld = model_loss_d(&m, y);
    printf("  loss %.6f (ce %.6f, aux %.6f); recomputed in double %.8f\n", m.loss, m.ce, m.aux, Ld);
    CHECK(fabs(Ld - m.loss) < 1e-5, "model loss %.8f vs recomputed %.8f", m.loss, Ld);
    size_t NK = (size_t)B * T * cfg.top_k;
    c.topi_ref = malloc(sizeof(int32_t) * NK * cfg.n_layers);
    for (int l = 0; l < cfg.n_layers; l++) memcpy(c.topi_ref + l * NK, m.acts.layers[l].moe.topi, sizeof(int32_t) * NK);
    nm_model_zero_grad(&m);
    nm_model_backward(&m);
    float *g[2];
    for (int b = 0; b < 2; b++) {
        size_t n = b ? m.layout.n_expert : m.layout.n_dense;
        g[b] = malloc(sizeof(float) * n);
        memcpy(g[b], m.grads[b], sizeof(float) * n);
    }
    /* Loss gradients here are 1e-5 .. 1e-1; the loss (~4.2) carries float
     * rounding of ~1e-7 relative, i.e. fd noise of ~1e-6..1e-5 at h = 1e-2, so
     * elements are measured against an absolute floor of 2e-4 (two decades
     * above that noise, a few percent of the typical gradient). */
    gc_opts o = {1e-2, 3e-2, 1e-2, 1e-4, 0.75, 4, 6};
    int nsamp = getenv("GC_NS") ? atoi(getenv("GC_NS")) : 4; /* GC_NS=30: a deeper (slower) check */
    int total_checked_tensors = 0, n_checked = 0, n_skipped = 0;
    for (int i = 0; i < m.layout.n; i++) {
        const nm_param_info *pi = &m.layout.info[i];
        float *w = nm_param_ptr(&m.layout, i, m.params[0], m.params[1]);
        const float *gi = g[pi->block] + pi->offset;
        size_t n = pi->count;
        if (strcmp(pi->name, "embed/positions") == 0) n = (size_t)T * cfg.d_model; /* rows >= T unused */
        char nm[160];
        snprintf(nm, sizeof nm, "%s %s", label, pi->name);
        gradcheck(nm, w, gi, n, pick_some(gi, n, nsamp, nsamp), model_obj, &c, &o);
        total_checked_tensors++;
        n_checked += g_res[g_nres - 1].checked;
        n_skipped += g_res[g_nres - 1].skipped;
    }
    /* a flip that persists down to h/64 means a router logit gap below ~1e-5:
     * rare, and the great majority must be checked */
    printf("  %d elements checked, %d skipped\n", n_checked, n_skipped);
    CHECK(n_checked >= 5 * m.layout.n && n_skipped * 20 <= n_checked,
          "%s: %d elements checked, %d skipped (need >= 95%% checked)", label, n_checked, n_skipped);
    CHECK(total_checked_tensors == m.layout.n, "only %d of %d tensors checked", total_checked_tensors, m.layout.n);
    /* positions beyond T get no gradient */
    double beyond = 0.0;
    const float *gp = g[0] + m.layout.info[nm_param_find(&m.layout, "embed/positions")].offset;
    for (size_t j = (size_t)T * cfg.d_model; j < (size_t)cfg.block_size * cfg.d_model; j++)
        beyond = fmax(beyond, fabs(gp[j]));
    CHECK(beyond == 0.0, "embed/positions rows >= T got gradient %.3g", beyond);
    free(g[0]), free(g[1]), free(c.topi_ref), free(x), free(y);
    nm_model_free(&m);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    double t0 = MPI_Wtime();
    test_embedding();
    test_layernorm();
    test_dense_case(5, 7, 9, 0);
    test_dense_case(256, 64, 160, 1);
    test_gelu();
    test_crossentropy();
    test_attention(2, 8, 16, 2, 0.0f, 0);
    test_attention(2, 8, 16, 2, 0.1f, 3);
    /* T = 21: rows longer than one 16-wide vector and not a multiple of it */
    test_attention(1, 21, 12, 3, 0.0f, 0);
    test_attention(1, 21, 12, 3, 0.1f, 1);
    test_router_case("gates only", 1.0, 0.0);
    test_router_case("aux only", 0.0, 1.0);
    test_router_case("gates + aux", 1.0, 0.3);
    test_expert_ffn();
    test_moe(0);
    test_moe(1);
    test_model("model", 0.0, 0.01, 1, 1, 0, 2);
    /* dropout on: masks are a function of (seed, step, site, global index), so
     * L is a fixed smooth function of the parameters; b_offset 2 of b_global 4
     * is what rank 1 of 2 sees */
    test_model("model+dropout", 0.1, 0.01, 1, 7, 2, 4);
    /* at aux_loss_coeff 0.01 the aux part is a minor share of most
     * gradients; at 10 it dominates the router and the layers below it, so
     * the model-level wiring of the aux gradient (dprob per layer, scaled by
     * the coefficient) is checked where it matters most */
    test_model("model+aux10", 0.0, 10.0, 1, 1, 0, 2);

    printf("\nsummary: largest relative error per backward\n");
    const char *groups[] = {"embedding", "layernorm", "dense", "gelu", "crossentropy", "attention dqkv (p=0)",
                            "attention dqkv (p=0.1)", "router", "expert_ffn", "moe", "model ", "model+dropout",
                            "model+aux10"};
    for (size_t gi = 0; gi < sizeof groups / sizeof *groups; gi++) {
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
    int rc = nm_test_report("test_gradcheck");
    MPI_Finalize();
    return rc;
}
