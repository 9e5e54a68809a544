/* The NanoMoE layers as stand-alone objects for library users: multi-head
 * attention, the MoE layer and the transformer block, each with its own
 * buffers, on one process. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/api.h"
#include "nanomoe/attention.h"
#include "nanomoe/block.h"
#include "nanomoe/dist.h"
#include "nanomoe/gemm.h"
#include "nanomoe/ops.h"
#include "nanomoe/router.h"

/* ------------------------------------------------------- multi-head attention */

struct nm_mha {
    int B, T, C, H;
    float *x, *qkv, *probs, *att, *datt, *dqkv, *scratch;
};

void nm_mha_delete(nm_mha *a) {
    if (!a) return;
    free(a->x), free(a->qkv), free(a->probs), free(a->att), free(a->datt), free(a->dqkv), free(a->scratch);
    free(a);
}

int nm_mha_new(nm_mha **out, int B, int T, int C, int H, nm_error *err) {
    NM_NEED(out, "nm_mha_new: out is NULL");
    *out = NULL;
    NM_NEED(B >= 1 && T >= 1 && C >= 1 && H >= 1, "nm_mha_new: B=%d T=%d C=%d H=%d (expected all >= 1)", B, T, C, H);
    NM_NEED(C % H == 0, "nm_mha_new: C=%d must be divisible by H=%d", C, H);
    nm_mha *a = calloc(1, sizeof *a);
    NM_NEED(a, "nm_mha_new: out of memory");
    size_t N = (size_t)B * T;
    *a = (nm_mha){.B = B,
                  .T = T,
                  .C = C,
                  .H = H,
                  .x = nm_fcalloc(N * C),
                  .qkv = nm_fcalloc(N * 3 * C),
                  .probs = nm_fcalloc((size_t)B * H * T * T),
                  .att = nm_fcalloc(N * C),
                  .datt = nm_fcalloc(N * C),
                  .dqkv = nm_fcalloc(N * 3 * C),
                  .scratch = nm_fcalloc((size_t)nm_threads_init() * 2 * T * T)};
    if (!a->x || !a->qkv || !a->probs || !a->att || !a->datt || !a->dqkv || !a->scratch) {
        nm_mha_delete(a);
        return nm_fail(err, "nm_mha_new: out of memory");
    }
    *out = a;
    return 0;
}

int nm_mha_forward(nm_mha *a, float *out, const float *x, const nm_layer_view *w, nm_error *err) {
    NM_NEED(a && out && x && w, "nm_mha_forward: layer, out, x and w must not be NULL");
    NM_NEED(w->qkv_w && w->qkv_b && w->out_w && w->out_b, "nm_mha_forward: w needs qkv_w, qkv_b, out_w and out_b");
    int N = a->B * a->T, C = a->C;
    memcpy(a->x, x, sizeof(float) * (size_t)N * C);
    nm_dense_forward(a->qkv, a->x, w->qkv_w, w->qkv_b, a->B, a->T, C, 3 * C);
    nm_attention_forward(a->att, a->probs, a->qkv, a->B, a->T, C, a->H, NULL, a->scratch);
    nm_dense_forward(out, a->att, w->out_w, w->out_b, a->B, a->T, C, C);
    return 0;
}

int nm_mha_backward(nm_mha *a, float *dx, const nm_layer_view *g, const float *dout, const nm_layer_view *w,
                    nm_error *err) {
    NM_NEED(a && dx && g && dout && w, "nm_mha_backward: layer, dx, g, dout and w must not be NULL");
    NM_NEED(g->qkv_w && g->qkv_b && g->out_w && g->out_b, "nm_mha_backward: g needs qkv_w, qkv_b, out_w and out_b");
    int N = a->B * a->T, C = a->C;
    memset(a->datt, 0, sizeof(float) * (size_t)N * C);
    nm_dense_backward(a->datt, g->out_w, g->out_b, dout, a->att, w->out_w, a->B, a->T, C, C);
    nm_attention_backward(a->dqkv, a->datt, a->qkv, a->probs, a->B, a->T, C, a->H, NULL, a->scratch);
    nm_dense_backward(dx, g->qkv_w, g->qkv_b, a->dqkv, a->x, w->qkv_w, a->B, a->T, C, 3 * C);
    return 0;
}

/* ------------------------------------------------------------- MoE layer */

/* An expert exchange over one process: the identity. */
static int self_dispatch(nm_dispatch *d, int E, int C, size_t rows, nm_error *err) {
    NM_NEED(nm_ensure_mpi() == 0, "MPI could not be started");
    nm_dispatch_init(d, MPI_COMM_SELF, MPI_COMM_NULL, E, C, rows);
    return 0;
}

/* aux = E sum f P over all the layer's tokens; dprob = coeff * d aux / d probs. */
static double layer_aux(const nm_moe_acts *a, int nseq, int E, double ntok, double coeff, double *dprob) {
    double aux = nm_router_aux_seqs(a->psum, a->top1, nseq, ntok, E, dprob);
    if (dprob)
        for (int e = 0; e < E; e++) dprob[e] *= coeff;
    return aux;
}

struct nm_moe_layer {
    nm_moe_dims d;
    nm_dispatch x;
    nm_moe_acts a;
    nm_moe_scratch s;
    float *m;
    double *dprob;
};

void nm_moe_layer_delete(nm_moe_layer *l) {
    if (!l) return;
    nm_moe_acts_free(&l->a);
    nm_moe_scratch_free(&l->s);
    nm_dispatch_free(&l->x);
    free(l->m);
    free(l->dprob);
    free(l);
}

int nm_moe_layer_new(nm_moe_layer **out, int B, int T, int C, int F, int E, int K, nm_error *err) {
    NM_NEED(out, "nm_moe_layer_new: out is NULL");
    *out = NULL;
    NM_NEED(B >= 1 && T >= 1 && C >= 1 && F >= 1 && E >= 1 && K >= 1,
         "nm_moe_layer_new: B=%d T=%d C=%d F=%d E=%d K=%d (expected all >= 1)", B, T, C, F, E, K);
    NM_NEED(K <= E, "nm_moe_layer_new: K=%d must be <= E=%d", K, E);
    nm_moe_layer *l = calloc(1, sizeof *l);
    NM_NEED(l, "nm_moe_layer_new: out of memory");
    l->d = (nm_moe_dims){.N = B * T, .seq_len = T, .C = C, .F = F, .E = E, .K = K};
    if (self_dispatch(&l->x, E, C, (size_t)B * T * K, err) != 0) {
        free(l);
        return -1;
    }
    nm_moe_acts_alloc(&l->a, &l->d, &l->x);
    nm_moe_scratch_alloc(&l->s, &l->d, &l->x);
    l->m = nm_fcalloc((size_t)B * T * C);
    l->dprob = calloc((size_t)E, sizeof(double));
    *out = l;
    return 0;
}

int nm_moe_layer_forward(nm_moe_layer *l, float *out, const float *m, const nm_layer_view *w, double *aux,
                         nm_error *err) {
    NM_NEED(l && out && m && w, "nm_moe_layer_forward: layer, out, m and w must not be NULL");
    NM_NEED(w->router_w && w->fc1_w && w->fc1_b && w->fc2_w && w->fc2_b,
         "nm_moe_layer_forward: w needs router_w, fc1_w, fc1_b, fc2_w and fc2_b");
    memcpy(l->m, m, sizeof(float) * (size_t)l->d.N * l->d.C);
    nm_moe_forward(out, &l->a, l->m, w, &l->d, &l->s, &l->x);
    double a = layer_aux(&l->a, l->d.N / l->d.seq_len, l->d.E, (double)l->d.N, 1.0, NULL);
    if (aux) *aux = a;
    return 0;
}

int nm_moe_layer_backward(nm_moe_layer *l, float *dm, const nm_layer_view *g, const float *dout,
                          const nm_layer_view *w, double aux_coeff, nm_error *err) {
    NM_NEED(l && dm && g && dout && w, "nm_moe_layer_backward: layer, dm, g, dout and w must not be NULL");
    NM_NEED(g->router_w && g->fc1_w && g->fc1_b && g->fc2_w && g->fc2_b,
         "nm_moe_layer_backward: g needs router_w, fc1_w, fc1_b, fc2_w and fc2_b");
    layer_aux(&l->a, l->d.N / l->d.seq_len, l->d.E, (double)l->d.N, aux_coeff, l->dprob);
    nm_moe_backward(dm, g->router_w, g, dout, &l->a, l->m, w, l->dprob, &l->d, &l->s, &l->x);
    return 0;
}

/* ------------------------------------------------------ transformer block */

struct nm_block {
    nm_config cfg;
    nm_block_run run;
    nm_dispatch x;
    nm_layer_acts a;
    nm_block_scratch s;
    float *dx;
    double *dprob;
};

void nm_block_delete(nm_block *b) {
    if (!b) return;
    nm_layer_acts_free(&b->a);
    nm_block_scratch_free(&b->s);
    nm_dispatch_free(&b->x);
    free(b->dx);
    free(b->dprob);
    free(b);
}

int nm_block_new(nm_block **out, const nm_config *cfg, int B, int T, nm_error *err) {
    NM_NEED(out, "nm_block_new: out is NULL");
    *out = NULL;
    NM_NEED(cfg, "nm_block_new: cfg is NULL");
    if (nm_config_validate(cfg, err) != 0) return -1;
    NM_NEED(B >= 1 && T >= 1 && T <= cfg->block_size, "nm_block_new: B=%d T=%d (expected B >= 1, 1 <= T <= %d)", B, T,
         cfg->block_size);
    nm_block *b = calloc(1, sizeof *b);
    NM_NEED(b, "nm_block_new: out of memory");
    b->cfg = *cfg;
    int C = cfg->d_model, K = cfg->top_k, E = cfg->n_experts;
    if (self_dispatch(&b->x, E, C, (size_t)B * T * K, err) != 0) {
        free(b);
        return -1;
    }
    nm_moe_dims d = {.N = B * T, .seq_len = T, .C = C, .F = cfg->d_ff, .E = E, .K = K};
    nm_layer_acts_alloc(&b->a, B, T, C, cfg->n_heads, &d, &b->x);
    nm_block_scratch_alloc(&b->s, B, T, C, nm_threads_init(), &d, &b->x);
    b->dx = nm_fcalloc((size_t)B * T * C);
    b->dprob = calloc((size_t)E, sizeof(double));
    b->run = (nm_block_run){.B = B,
                            .T = T,
                            .C = C,
                            .H = cfg->n_heads,
                            .eps = (float)cfg->layer_norm_eps,
                            .moe = d,
                            .dispatch = &b->x,
                            .s = &b->s}; /* no dropout, no timers */
    *out = b;
    return 0;
}

int nm_block_forward(nm_block *b, float *xout, const float *x, const nm_layer_view *w, double *aux, nm_error *err) {
    NM_NEED(b && xout && x && w, "nm_block_forward: block, xout, x and w must not be NULL");
    size_t NC = (size_t)b->run.B * b->run.T * b->run.C;
    memcpy(b->a.x, x, sizeof(float) * NC);
    nm_block_run_forward(&b->run, &b->a, w, xout);
    double a = layer_aux(&b->a.moe, b->run.B, b->cfg.n_experts, (double)b->run.moe.N, 1.0, NULL);
    if (aux) *aux = a;
    return 0;
}

int nm_block_backward(nm_block *b, float *dx, const nm_layer_view *g, const float *dxout, const nm_layer_view *w,
                      nm_error *err) {
    NM_NEED(b && dx && g && dxout && w, "nm_block_backward: block, dx, g, dxout and w must not be NULL");
    size_t NC = (size_t)b->run.B * b->run.T * b->run.C;
    layer_aux(&b->a.moe, b->run.B, b->cfg.n_experts, (double)b->run.moe.N, b->cfg.aux_loss_coeff, b->dprob);
    memcpy(b->dx, dxout, sizeof(float) * NC);
    nm_grad_chunks k = {1, b->run.moe.N, NULL, NULL};
    nm_block_run_backward(&b->run, &b->a, w, g, &k, b->dx, b->dprob);
    nm_add(dx, dx, b->dx, NC);
    return 0;
}
