/* The NanoMoE model: forward and backward as flat lists of op calls. */
#include "nanomoe/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/attention.h"
#include "nanomoe/error.h"
#include "nanomoe/gemm.h"
#include "nanomoe/ops.h"
#include "nanomoe/router.h"

/* Dropout sites: 0 = embeddings; per layer l: 1 + 3l (attention weights),
 * 2 + 3l (attention output), 3 + 3l (MoE output). */
#define SITE_EMBED 0
#define SITE_ATTN_W(l) (1 + 3 * (uint64_t)(l))
#define SITE_ATTN_OUT(l) (2 + 3 * (uint64_t)(l))
#define SITE_MOE_OUT(l) (3 + 3 * (uint64_t)(l))

#define FALLOC(n) ((float *)nm_malloc(sizeof(float) * (size_t)(n)))

/* b_global: sequences of the global batch, for the capacity limit (0: none). */
static nm_moe_dims moe_dims(const nm_model *m, int B, int T, long b_global) {
    const nm_config *c = &m->cfg;
    nm_moe_dims d = {B * T, T, c->d_model, c->d_ff, c->n_experts, c->top_k, 0};
    if (c->capacity_factor > 0 && b_global > 0)
        d.capacity = (long)ceil(c->capacity_factor * (double)b_global * T * c->top_k / c->n_experts);
    return d;
}

static void acts_alloc(nm_model *m) {
    const nm_config *c = &m->cfg;
    int B = m->cap_B, T = m->cap_T, C = c->d_model, H = c->n_heads, V = c->vocab_size, L = c->n_layers;
    long N = (long)B * T;
    nm_acts *a = &m->acts;
    nm_moe_dims d = moe_dims(m, B, T, 0);
    a->layers = nm_calloc((size_t)L, sizeof *a->layers);
    for (int l = 0; l < L; l++) {
        nm_layer_acts *la = &a->layers[l];
        la->x = FALLOC(N * C);
        la->ln1 = FALLOC(N * C);
        la->ln1_mean = FALLOC(N);
        la->ln1_rstd = FALLOC(N);
        la->qkv = FALLOC(N * 3 * C);
        la->probs = FALLOC((long)B * H * T * T);
        la->att = FALLOC(N * C);
        la->x_mid = FALLOC(N * C);
        la->ln2 = FALLOC(N * C);
        la->ln2_mean = FALLOC(N);
        la->ln2_rstd = FALLOC(N);
        nm_moe_acts_alloc(&la->moe, &d, &m->dispatch);
    }
    a->x_final = FALLOC(N * C);
    a->lnf = FALLOC(N * C);
    a->lnf_mean = FALLOC(N);
    a->lnf_rstd = FALLOC(N);
    a->logits = FALLOC(N * V);
    a->losses = FALLOC(N);
    a->ids = nm_malloc(sizeof(int32_t) * (size_t)N);
    a->targets = nm_malloc(sizeof(int32_t) * (size_t)N);
    a->tmp = FALLOC(N * C);
    a->dx = FALLOC(N * C);
    a->dtmp = FALLOC(N * C);
    a->dln = FALLOC(N * C);
    a->dqkv = FALLOC(N * 3 * C);
    a->dlogits = FALLOC(N * V);
    a->attn_scratch = FALLOC((long)m->nthreads * 2 * T * T);
    nm_moe_scratch_alloc(&a->moe, &d, &m->dispatch);
    a->moe.timers = &m->timers;
}

static void acts_free(nm_model *m) {
    nm_acts *a = &m->acts;
    if (!a->layers) return;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        nm_layer_acts *la = &a->layers[l];
        free(la->x);
        free(la->ln1);
        free(la->ln1_mean);
        free(la->ln1_rstd);
        free(la->qkv);
        free(la->probs);
        free(la->att);
        free(la->x_mid);
        free(la->ln2);
        free(la->ln2_mean);
        free(la->ln2_rstd);
        nm_moe_acts_free(&la->moe);
    }
    free(a->layers);
    free(a->x_final);
    free(a->lnf);
    free(a->lnf_mean);
    free(a->lnf_rstd);
    free(a->logits);
    free(a->losses);
    free(a->ids);
    free(a->targets);
    free(a->tmp);
    free(a->dx);
    free(a->dtmp);
    free(a->dln);
    free(a->dqkv);
    free(a->dlogits);
    free(a->attn_scratch);
    nm_moe_scratch_free(&a->moe);
    memset(a, 0, sizeof *a);
}

int nm_model_create(nm_model *m, const nm_config *cfg, MPI_Comm comm, int B, int T, nm_error *err) {
    memset(m, 0, sizeof *m);
    if (nm_config_validate(cfg, err) != 0) return -1;
    if (cfg->vocab_size < 1) return nm_fail(err, "model: vocab_size=%d must be >= 1", cfg->vocab_size);
    if (B < 1 || T < 1 || T > cfg->block_size)
        return nm_fail(err, "model: activations for %d x %d tokens requested (expected B >= 1, 1 <= T <= block_size=%d)",
                       B, T, cfg->block_size);
    m->cfg = *cfg;
    if (nm_dist_init(&m->dist, comm, cfg->n_experts, cfg->expert_parallel, err) != 0) return -1;
    m->comm = m->dist.world;
    m->rank = m->dist.rank;
    m->nranks = m->dist.size;
    m->nthreads = nm_threads_init();
    int e0, El;
    nm_dist_experts(cfg->n_experts, m->dist.ep, m->dist.ep_rank, &e0, &El);
    nm_layout_init(&m->layout, cfg, e0, El);
    m->layout.expert_writer = m->dist.rep_rank == 0; /* one replica of each expert writes it */
    int Bmax = B; /* batch slices may differ by a sequence between ranks */
    NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &Bmax, 1, MPI_INT, MPI_MAX, m->comm));
    nm_dispatch_init(&m->dispatch, m->dist.ep_comm, m->dist.rep_comm, cfg->n_experts, cfg->d_model,
                     nm_moe_max_rows_in(Bmax * T, cfg->top_k, m->dist.ep, El));
    m->dispatch.timers = &m->timers;
    for (int b = 0; b < 2; b++) {
        size_t n = b == NM_BLOCK_DENSE ? m->layout.n_dense : m->layout.n_expert;
        m->params[b] = nm_malloc(sizeof(float) * (n ? n : 1));
        m->grads[b] = nm_calloc(n ? n : 1, sizeof(float));
    }
    nm_view_init(&m->p, &m->layout, cfg, m->params[0], m->params[1]);
    nm_view_init(&m->g, &m->layout, cfg, m->grads[0], m->grads[1]);
    nm_params_init(&m->layout, cfg->seed, m->params[0], m->params[1]);
    m->cap_B = B;
    m->cap_T = T;
    acts_alloc(m);
    size_t rows = m->dispatch.max_rows_in > (size_t)B * T ? m->dispatch.max_rows_in : (size_t)B * T;
    nm_colsum_reserve(rows); /* bias gradients of any row count, without allocating in the step */
    m->aux_layer = nm_calloc((size_t)cfg->n_layers, sizeof(double));
    m->dprob = nm_calloc((size_t)cfg->n_layers * cfg->n_experts, sizeof(double));
    m->dprob_scaled = nm_calloc((size_t)cfg->n_layers * cfg->n_experts, sizeof(double));
    size_t S = nm_stats_len(cfg);
    m->stats = nm_calloc(S, sizeof(double));
    m->seq_stats = nm_calloc((size_t)(B > 0 ? B : 1) * S, sizeof(double));
    m->dropped = nm_calloc((size_t)cfg->n_layers, sizeof(double));
    size_t nr = m->layout.n_dense > m->layout.n_expert ? m->layout.n_dense : m->layout.n_expert;
    if (nr < 2 * S) nr = 2 * S; /* the statistics reduction uses it as doubles */
    m->reduce_scratch = nm_malloc(sizeof(float) * (nr ? nr : 1));
    nm_model_set_grad_chunks(m, 1, 0);
    return 0;
}

int nm_grad_chunks_plan(const nm_config *cfg, int P, int *G, int *tree, nm_error *err) {
    int g = cfg->grad_chunks;
    if (g == 0)
        for (g = 1; g < 8 && cfg->batch_size % (2 * g) == 0;) g *= 2;
    *G = g;
    *tree = nm_is_pow2(P) && g % P == 0;
    if (cfg->grad_chunks > 0 && !*tree)
        return nm_fail(err, "config: grad_chunks=%d needs a power-of-two rank count that divides it (this run has %d)",
                       cfg->grad_chunks, P);
    return 0;
}

void nm_model_set_grad_chunks(nm_model *m, int chunks, int tree) {
    m->tree_reduce = tree;
    for (int c = 1; c < m->grad_chunks; c++) free(m->chunk_grads[c]);
    for (int c = 0; c < m->grad_chunks; c++) nm_view_free(&m->chunk_view[c]);
    free(m->chunk_grads);
    free(m->chunk_view);
    free(m->chunk_stats);
    m->grad_chunks = chunks < 1 ? 1 : chunks;
    m->chunk_stats = nm_calloc((size_t)m->grad_chunks * nm_stats_len(&m->cfg), sizeof(double));
    m->chunk_grads = nm_calloc((size_t)m->grad_chunks, sizeof(float *));
    m->chunk_view = nm_calloc((size_t)m->grad_chunks, sizeof(nm_param_view));
    for (int c = 0; c < m->grad_chunks; c++) {
        m->chunk_grads[c] = c == 0 ? m->grads[0] : nm_calloc(m->layout.n_dense ? m->layout.n_dense : 1, sizeof(float));
        nm_view_init(&m->chunk_view[c], &m->layout, &m->cfg, m->chunk_grads[c], m->grads[1]);
    }
}

void nm_model_free(nm_model *m) {
    acts_free(m);
    for (int b = 0; b < 2; b++) {
        free(m->params[b]);
        free(m->grads[b]);
    }
    nm_view_free(&m->p);
    nm_view_free(&m->g);
    nm_layout_free(&m->layout);
    for (int c = 1; c < m->grad_chunks; c++) free(m->chunk_grads[c]);
    for (int c = 0; c < m->grad_chunks; c++) nm_view_free(&m->chunk_view[c]);
    free(m->chunk_grads);
    free(m->chunk_view);
    free(m->chunk_stats);
    free(m->seq_stats);
    free(m->reduce_scratch);
    free(m->dropped);
    nm_dispatch_free(&m->dispatch);
    nm_dist_free(&m->dist);
    free(m->aux_layer);
    free(m->dprob);
    free(m->dprob_scaled);
    free(m->stats);
    memset(m, 0, sizeof *m);
}

#define TIC(id) double t_##id = nm_now()
#define TOC(id, cat) m->timers.sec[cat] += nm_now() - t_##id

void nm_model_forward(nm_model *m, const int32_t *x, const int32_t *y, int B, int T, const nm_forward_opts *o) {
    const nm_config *c = &m->cfg;
    int C = c->d_model, H = c->n_heads, V = c->vocab_size, L = c->n_layers, E = c->n_experts;
    long N = (long)B * T;
    if (B > m->cap_B || T > m->cap_T) NM_ABORT("forward on %d x %d exceeds the activation capacity %d x %d", B, T, m->cap_B, m->cap_T);
    nm_acts *a = &m->acts;
    m->B = B;
    m->T = T;
    m->fwd = *o;
    float p = o->training ? (float)c->dropout_rate : 0.0f;
    uint64_t seed = (uint64_t)c->seed;
    /* global element index of this rank's first activation, per [N, C] site */
    uint64_t base_nc = (uint64_t)o->b_offset * T * C;
    nm_moe_dims d = moe_dims(m, B, T, o->b_global);

    memcpy(a->ids, x, sizeof(int32_t) * (size_t)N);
    if (y) memcpy(a->targets, y, sizeof(int32_t) * (size_t)N);
    TIC(emb);
    float *x0 = a->layers[0].x;
    nm_embedding_forward(x0, x, m->p.tok_emb, m->p.pos_emb, B, T, C);
    nm_dropout(x0, (size_t)N * C, p, nm_dropout_key(seed, o->step, SITE_EMBED), base_nc);
    TOC(emb, NM_T_EMBED);

    for (int l = 0; l < L; l++) {
        nm_layer_acts *la = &a->layers[l];
        const nm_layer_view *w = &m->p.layers[l];
        float *xout = l + 1 < L ? a->layers[l + 1].x : a->x_final;
        TIC(ln1);
        nm_layernorm_forward(la->ln1, la->ln1_mean, la->ln1_rstd, la->x, w->ln1_s, w->ln1_b, (int)N, C,
                             (float)c->layer_norm_eps);
        TOC(ln1, NM_T_LAYERNORM);
        TIC(qkv);
        nm_dense_forward(la->qkv, la->ln1, w->qkv_w, w->qkv_b, (int)N, C, 3 * C);
        TOC(qkv, NM_T_ATTN_PROJ);
        TIC(core);
        nm_attn_dropout ad = {p, nm_dropout_key(seed, o->step, SITE_ATTN_W(l)), o->b_offset};
        nm_attention_forward(la->att, la->probs, la->qkv, B, T, C, H, &ad, a->attn_scratch);
        TOC(core, NM_T_ATTN_CORE);
        TIC(out);
        nm_dense_forward(a->tmp, la->att, w->out_w, w->out_b, (int)N, C, C);
        TOC(out, NM_T_ATTN_PROJ);
        TIC(res1);
        nm_dropout(a->tmp, (size_t)N * C, p, nm_dropout_key(seed, o->step, SITE_ATTN_OUT(l)), base_nc);
        nm_add(la->x_mid, la->x, a->tmp, (size_t)N * C);
        TOC(res1, NM_T_RESIDUAL);
        TIC(ln2);
        nm_layernorm_forward(la->ln2, la->ln2_mean, la->ln2_rstd, la->x_mid, w->ln2_s, w->ln2_b, (int)N, C,
                             (float)c->layer_norm_eps);
        TOC(ln2, NM_T_LAYERNORM);
        nm_moe_forward(a->tmp, &la->moe, la->ln2, w, &d, &a->moe, &m->dispatch);
        TIC(res2);
        nm_dropout(a->tmp, (size_t)N * C, p, nm_dropout_key(seed, o->step, SITE_MOE_OUT(l)), base_nc);
        nm_add(xout, la->x_mid, a->tmp, (size_t)N * C);
        TOC(res2, NM_T_RESIDUAL);
    }

    TIC(head);
    nm_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->x_final, m->p.lnf_s, m->p.lnf_b, (int)N, C,
                         (float)c->layer_norm_eps);
    nm_dense_forward(a->logits, a->lnf, m->p.head_w, m->p.head_b, (int)N, C, V);
    if (y) nm_crossentropy_forward(a->losses, a->logits, y, (int)N, V);
    TOC(head, NM_T_HEAD);

    /* statistics of the whole global batch, summed like the gradients: per
     * sequence, per chunk in order, as a tree over chunks, then over ranks */
    TIC(comm);
    size_t S = nm_stats_len(c);
    memset(m->seq_stats, 0, sizeof(double) * (size_t)B * S);
    for (int b = 0; b < B; b++) {
        double *v = m->seq_stats + (size_t)b * S;
        if (y)
            for (int t = 0; t < T; t++) v[0] += a->losses[(long)b * T + t];
        for (int l = 0; l < L; l++) {
            const nm_moe_acts *ma = &a->layers[l].moe;
            double *vl = v + NM_STAT_LAYER(l, E);
            memcpy(vl + NM_STAT_PSUM, ma->psum + (size_t)b * E, sizeof(double) * E);
            memcpy(vl + NM_STAT_TOP1(E), ma->top1 + (size_t)b * E, sizeof(double) * E);
            vl[NM_STAT_ENTROPY(E)] = ma->ent[b];
        }
    }
    int nch = m->grad_chunks > 1 && B % m->grad_chunks == 0 ? m->grad_chunks : 1, per = B / nch;
    double *cs = m->chunk_stats;
    memset(cs, 0, sizeof(double) * (size_t)nch * S);
    for (int ch = 0; ch < nch; ch++)
        for (int b = ch * per; b < (ch + 1) * per; b++)
            for (size_t i = 0; i < S; i++) cs[(size_t)ch * S + i] += m->seq_stats[(size_t)b * S + i];
    for (int step = 1; step < nch; step <<= 1)
        for (int ch = 0; ch + step < nch; ch += 2 * step)
            for (size_t i = 0; i < S; i++) cs[(size_t)ch * S + i] += cs[(size_t)(ch + step) * S + i];
    /* counts per rank are integers: exact in any order */
    for (int l = 0; l < L; l++) {
        const nm_moe_acts *ma = &a->layers[l].moe;
        double *vl = cs + NM_STAT_LAYER(l, E);
        for (int e = 0; e < E; e++) vl[NM_STAT_COUNT(E) + e] = ma->count[e];
        vl[NM_STAT_DROPPED(E)] = (double)ma->dropped;
    }
    memcpy(m->stats, cs, sizeof(double) * S);
    nm_dist_sum_d(m->stats, S, m->comm, m->tree_reduce, (double *)m->reduce_scratch);
    double *st = m->stats;
    for (int l = 0; l < L; l++) m->dropped[l] = st[NM_STAT_LAYER(l, E) + NM_STAT_DROPPED(E)];
    TOC(comm, NM_T_ALLREDUCE);
    double ntok = (double)o->b_global * T;
    m->aux = 0.0;
    for (int l = 0; l < L; l++) {
        const double *sl = st + NM_STAT_LAYER(l, E);
        m->aux_layer[l] = nm_router_aux(sl + NM_STAT_PSUM, sl + NM_STAT_TOP1(E), ntok, E, m->dprob + (size_t)l * E);
        m->aux += m->aux_layer[l];
        for (int e = 0; e < E; e++)
            m->dprob_scaled[(size_t)l * E + e] = c->aux_loss_coeff * m->dprob[(size_t)l * E + e];
    }
    m->ce = y ? st[0] / ntok : NAN;
    m->loss = m->ce + c->aux_loss_coeff * m->aux;
}

double nm_model_seq_aux(const nm_model *m, int b) {
    int E = m->cfg.n_experts;
    double aux = 0.0;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const nm_moe_acts *ma = &m->acts.layers[l].moe;
        aux += nm_router_aux(ma->psum + (size_t)b * E, ma->top1 + (size_t)b * E, (double)m->T, E, NULL);
    }
    return aux;
}

void nm_model_zero_grad(nm_model *m) {
    for (int c = 0; c < m->grad_chunks; c++) memset(m->chunk_grads[c], 0, sizeof(float) * m->layout.n_dense);
    memset(m->grads[1], 0, sizeof(float) * m->layout.n_expert);
}

/* Gradient chunks: parameter gradients are formed per chunk of consecutive
 * local sequences, each into its own dense block, so that the sum over the
 * global batch can be taken in an order that does not depend on how the batch
 * is split over ranks. */
typedef struct {
    nm_model *m;
    int n;     /* chunks in this backward */
    long rows; /* rows (tokens) per chunk */
} chunks;

/* The chunk's copy of a dense gradient tensor given by its pointer into grads[0]. */
static float *cg(const chunks *k, int ch, const float *g) { return k->m->chunk_grads[ch] + (g - k->m->grads[0]); }

/* y = x W + b: dinp over all rows (+=, skipped if NULL), dW and db per chunk. */
static void dense_bwd(const chunks *k, float *dinp, const float *gW, const float *gb, const float *dout,
                      const float *inp, const float *W, int Din, int Dout) {
    long N = k->n * k->rows;
    if (dinp) nm_dense_backward(dinp, NULL, NULL, dout, inp, W, (int)N, Din, Dout);
    for (int ch = 0; ch < k->n; ch++) {
        long r0 = ch * k->rows;
        nm_dense_backward(NULL, cg(k, ch, gW), gb ? cg(k, ch, gb) : NULL, dout + r0 * Dout, inp + r0 * Din, NULL,
                          (int)k->rows, Din, Dout);
    }
}

static void layernorm_bwd(const chunks *k, float *dinp, const float *gs, const float *gb, const float *dout,
                          const float *inp, const float *s, const float *mean, const float *rstd, int C) {
    nm_layernorm_backward(dinp, NULL, NULL, dout, inp, s, mean, rstd, (int)(k->n * k->rows), C);
    for (int ch = 0; ch < k->n; ch++) {
        long r0 = ch * k->rows;
        nm_layernorm_backward(NULL, cg(k, ch, gs), cg(k, ch, gb), dout + r0 * C, inp + r0 * C, s, mean + r0,
                              rstd + r0, (int)k->rows, C);
    }
}

void nm_model_backward(nm_model *m) {
    const nm_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->d_model, H = c->n_heads, V = c->vocab_size, L = c->n_layers, E = c->n_experts;
    long N = (long)B * T;
    size_t NC = (size_t)N * C;
    const nm_forward_opts *o = &m->fwd;
    nm_acts *a = &m->acts;
    float p = o->training ? (float)c->dropout_rate : 0.0f;
    uint64_t seed = (uint64_t)c->seed;
    uint64_t base_nc = (uint64_t)o->b_offset * T * C;
    nm_moe_dims d = moe_dims(m, B, T, o->b_global);
    const nm_param_view *g = &m->g, *w = &m->p;
    chunks k = {m, 1, N};
    if (m->grad_chunks > 1 && B % m->grad_chunks == 0) {
        k.n = m->grad_chunks;
        k.rows = N / k.n;
    }

    TIC(head);
    nm_crossentropy_backward(a->dlogits, a->logits, a->targets, (int)N, V, (float)(1.0 / ((double)o->b_global * T)));
    memset(a->dln, 0, sizeof(float) * NC);
    dense_bwd(&k, a->dln, g->head_w, g->head_b, a->dlogits, a->lnf, w->head_w, C, V);
    memset(a->dx, 0, sizeof(float) * NC);
    layernorm_bwd(&k, a->dx, g->lnf_s, g->lnf_b, a->dln, a->x_final, w->lnf_s, a->lnf_mean, a->lnf_rstd, C);
    TOC(head, NM_T_HEAD);

    for (int l = L - 1; l >= 0; l--) {
        nm_layer_acts *la = &a->layers[l];
        const nm_layer_view *lw = &w->layers[l];
        const nm_layer_view *lg = &g->layers[l];
        /* x_out = x_mid + dropout(moe(ln2(x_mid))) */
        TIC(res2);
        memcpy(a->dtmp, a->dx, sizeof(float) * NC);
        nm_dropout(a->dtmp, NC, p, nm_dropout_key(seed, o->step, SITE_MOE_OUT(l)), base_nc);
        TOC(res2, NM_T_RESIDUAL);
        memset(a->dln, 0, sizeof(float) * NC);
        nm_moe_backward(a->dln, NULL, lg, a->dtmp, &la->moe, la->ln2, lw, m->dprob_scaled + (size_t)l * E, &d,
                        &a->moe, &m->dispatch);
        TIC(router);
        for (int ch = 0; ch < k.n; ch++)
            nm_moe_router_weight_grad(cg(&k, ch, lg->router_w), la->ln2, &a->moe, (int)(ch * k.rows), (int)k.rows, &d);
        TOC(router, NM_T_ROUTER);
        TIC(ln2);
        layernorm_bwd(&k, a->dx, lg->ln2_s, lg->ln2_b, a->dln, la->x_mid, lw->ln2_s, la->ln2_mean, la->ln2_rstd, C);
        TOC(ln2, NM_T_LAYERNORM);
        /* x_mid = x + dropout(att @ Wout + bout) */
        TIC(res1);
        memcpy(a->dtmp, a->dx, sizeof(float) * NC);
        nm_dropout(a->dtmp, NC, p, nm_dropout_key(seed, o->step, SITE_ATTN_OUT(l)), base_nc);
        TOC(res1, NM_T_RESIDUAL);
        TIC(out);
        memset(a->dln, 0, sizeof(float) * NC);
        dense_bwd(&k, a->dln, lg->out_w, lg->out_b, a->dtmp, la->att, lw->out_w, C, C);
        TOC(out, NM_T_ATTN_PROJ);
        TIC(core);
        nm_attn_dropout ad = {p, nm_dropout_key(seed, o->step, SITE_ATTN_W(l)), o->b_offset};
        nm_attention_backward(a->dqkv, a->dln, la->qkv, la->probs, B, T, C, H, &ad, a->attn_scratch);
        TOC(core, NM_T_ATTN_CORE);
        TIC(qkv);
        memset(a->dln, 0, sizeof(float) * NC);
        dense_bwd(&k, a->dln, lg->qkv_w, lg->qkv_b, a->dqkv, la->ln1, lw->qkv_w, C, 3 * C);
        TOC(qkv, NM_T_ATTN_PROJ);
        TIC(ln1);
        layernorm_bwd(&k, a->dx, lg->ln1_s, lg->ln1_b, a->dln, la->x, lw->ln1_s, la->ln1_mean, la->ln1_rstd, C);
        TOC(ln1, NM_T_LAYERNORM);
    }
    TIC(emb);
    nm_dropout(a->dx, NC, p, nm_dropout_key(seed, o->step, SITE_EMBED), base_nc);
    int seqs = B / k.n;
    for (int ch = 0; ch < k.n; ch++)
        nm_embedding_backward(cg(&k, ch, g->tok_emb), cg(&k, ch, g->pos_emb), a->dx + ch * k.rows * C,
                              a->ids + ch * k.rows, seqs, T, C);
    TOC(emb, NM_T_EMBED);
}

void nm_model_reduce_grads(nm_model *m) {
    double t0 = nm_now();
    size_t nd = m->layout.n_dense;
    /* local chunks first, as a binary tree (their count is a power of two) */
    for (int step = 1; step < m->grad_chunks; step <<= 1)
        for (int ch = 0; ch + step < m->grad_chunks; ch += 2 * step) {
            float *dst = m->chunk_grads[ch];
            const float *src = m->chunk_grads[ch + step];
#pragma omp parallel for simd if (nd > 65536)
            for (size_t i = 0; i < nd; i++) dst[i] += src[i];
        }
    int tree = m->tree_reduce;
    nm_dist_sum(m->grads[0], nd, m->comm, tree, m->reduce_scratch);
    /* expert gradients only across replicas of the same experts */
    if (m->dist.rep_size > 1) nm_dist_sum(m->grads[1], m->layout.n_expert, m->dist.rep_comm, tree, m->reduce_scratch);
    m->timers.sec[NM_T_ALLREDUCE] += nm_now() - t0;
}

double nm_model_flops_per_token(const nm_config *c, int T, int training) {
    double C = c->d_model, F = c->d_ff, E = c->n_experts, K = c->top_k, V = c->vocab_size;
    double per_layer = 2 * C * 3 * C + 2 * C * C + 2 * C * E + K * (2 * C * F * 2) + 2 * 2 * (double)T * C;
    double fwd = c->n_layers * per_layer + 2 * C * V;
    return training ? 3 * fwd : fwd;
}
