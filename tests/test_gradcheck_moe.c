/* Central finite-difference checks of the router, expert FFN, MoE layer and
 * whole-model backward functions (method in gradcheck.h). */
#include "gradcheck.h"

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
    return nm_router_aux_seqs(psum, top1, nseq, ntok, E, dprob);
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
    nm_router_backward(dm, dWr, dl, c.m, c.Wr, c.probs, c.topi, c.gates, dgates, dprob, N, C, E, K, seq_len);
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
    model_ctx c = {&m, x, y, B, T, {.training = training, .step = step, .b_offset = b_offset, .b_global = b_global}, NULL};
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
    const char *groups[] = {"router", "expert_ffn", "moe", "model ", "model+dropout", "model+aux10"};
    int rc = gc_summary("test_gradcheck_moe", groups, sizeof groups / sizeof *groups, t0);
    MPI_Finalize();
    return rc;
}
