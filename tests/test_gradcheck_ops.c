/* Central finite-difference checks of the op backward functions: embedding,
 * layernorm, dense, GELU, cross-entropy, attention (method in gradcheck.h). */
#include "gradcheck.h"

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
    int B, T, N, Din, Dout;
} dense_ctx;

static double dense_obj(void *p) {
    dense_ctx *c = p;
    nm_dense_forward(c->out, c->inp, c->W, c->b, c->B, c->T, c->Din, c->Dout);
    return dotd(c->out, c->R, (size_t)c->N * c->Dout);
}

static void test_dense_case(int B, int T, int Din, int Dout, int subset) {
    char nm[80];
    int N = B * T;
    printf("nm_dense_backward N=%d Din=%d Dout=%d%s\n", N, Din, Dout,
           subset ? " (threaded nm_gemm path, random subset)" : "");
    size_t ni = (size_t)N * Din, nw = (size_t)Din * Dout, no = (size_t)N * Dout;
    dense_ctx c = {falloc(no), falloc(ni), falloc(nw), falloc(Dout), falloc(no), B, T, N, Din, Dout};
    fill_normal(c.inp, ni, 0, 1);
    fill_normal(c.W, nw, 0, 1.0 / sqrt(Din));
    fill_normal(c.b, Dout, 0, 0.5);
    fill_normal(c.R, no, 0, 1);
    float *di = falloc(ni), *dW = falloc(nw), *db = falloc(Dout);
    float *di2 = falloc(ni), *dW2 = falloc(nw), *db2 = falloc(Dout);
    dense_obj(&c);
    nm_dense_backward(di, dW, db, c.R, c.inp, c.W, B, T, Din, Dout);
    fill_const(di2, ni, 1.5f), fill_const(dW2, nw, 1.5f), fill_const(db2, Dout, 1.5f);
    nm_dense_backward(di2, dW2, db2, c.R, c.inp, c.W, B, T, Din, Dout);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dinp adds", N, Din, Dout);
    check_adds(nm, di, di2, ni, 1.5f);
    snprintf(nm, sizeof nm, "dense %dx%dx%d dW adds", N, Din, Dout);
    check_adds(nm, dW, dW2, nw, 1.5f);
    snprintf(nm, sizeof nm, "dense %dx%dx%d db adds", N, Din, Dout);
    check_adds(nm, db, db2, Dout, 1.5f);
    /* dinp = NULL and db = NULL are skipped, dW unchanged */
    float *dW3 = falloc(nw);
    nm_dense_backward(NULL, dW3, NULL, c.R, c.inp, c.W, B, T, Din, Dout);
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


int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    double t0 = MPI_Wtime();
    test_embedding();
    test_layernorm();
    test_dense_case(1, 5, 7, 9, 0);
    test_dense_case(2, 3, 7, 9, 0);
    test_dense_case(4, 64, 64, 160, 1);
    test_dense_case(1, 300, 64, 160, 1); /* a sequence longer than NM_GEMM_PIECE: two pieces */
    test_gelu();
    test_crossentropy();
    test_attention(2, 8, 16, 2, 0.0f, 0);
    test_attention(2, 8, 16, 2, 0.1f, 3);
    /* T = 21: rows longer than one 16-wide vector and not a multiple of it */
    test_attention(1, 21, 12, 3, 0.0f, 0);
    test_attention(1, 21, 12, 3, 0.1f, 1);
    const char *groups[] = {"embedding", "layernorm", "dense", "gelu", "crossentropy", "attention dqkv (p=0)",
                            "attention dqkv (p=0.1)"};
    int rc = gc_summary("test_gradcheck_ops", groups, sizeof groups / sizeof *groups, t0);
    MPI_Finalize();
    return rc;
}
