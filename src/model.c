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

/* b_global: sequences of the global batch, for the capacity limit (0: none). */
static nm_moe_dims moe_dims(const nm_model *m, int B, int T, long b_global) {
    const nm_config *c = &m->cfg;
    nm_moe_dims d = {.N = B * T, .seq_len = T, .C = c->d_model, .F = c->d_ff, .E = c->n_experts, .K = c->top_k};
    if (c->capacity_factor > 0 && b_global > 0)
        d.capacity = (long)ceil(c->capacity_factor * (double)b_global * T * c->top_k / c->n_experts);
    return d;
}

/* Rows of one fixed-shape product block of a pass (see nm_forward_opts). */
static int block_rows(int B, int T, const nm_forward_opts *o) {
    return T * (o->block_seqs > 1 && B % o->block_seqs == 0 ? o->block_seqs : 1);
}

/* The per-block settings of a pass over B x T tokens. */
static nm_block_run block_run(nm_model *m, int B, int T, const nm_forward_opts *o) {
    const nm_config *c = &m->cfg;
    nm_block_run r = {.B = B,
                      .T = T,
                      .C = c->d_model,
                      .H = c->n_heads,
                      .eps = (float)c->layer_norm_eps,
                      .p = o->training ? (float)c->dropout_rate : 0.0f,
                      .seed = (uint64_t)c->seed,
                      .step = o->step,
                      .b_offset = o->b_offset,
                      .block_rows = block_rows(B, T, o),
                      .moe = moe_dims(m, B, T, o->b_global),
                      .dispatch = &m->dispatch,
                      .s = &m->acts.block,
                      .timers = &m->timers};
    return r;
}

static void acts_alloc(nm_model *m) {
    const nm_config *c = &m->cfg;
    int B = m->cap_B, T = m->cap_T, C = c->d_model, H = c->n_heads, V = c->vocab_size, L = c->n_layers;
    long N = (long)B * T;
    nm_acts *a = &m->acts;
    nm_moe_dims d = moe_dims(m, B, T, 0);
    a->layers = nm_calloc((size_t)L, sizeof *a->layers);
    for (int l = 0; l < L; l++) nm_layer_acts_alloc(&a->layers[l], B, T, C, H, &d, &m->dispatch);
    a->x_final = nm_falloc(N * C);
    a->lnf = nm_falloc(N * C);
    a->lnf_mean = nm_falloc(N);
    a->lnf_rstd = nm_falloc(N);
    a->logits = nm_falloc(N * V);
    a->losses = nm_falloc(N);
    a->ids = nm_malloc(sizeof(int32_t) * (size_t)(N > 0 ? N : 1));
    a->targets = nm_malloc(sizeof(int32_t) * (size_t)(N > 0 ? N : 1));
    a->dx = nm_falloc(N * C);
    a->dln = nm_falloc(N * C);
    a->dlogits = nm_falloc(N * V);
    nm_block_scratch_alloc(&a->block, B, T, C, m->nthreads, &d, &m->dispatch);
    a->block.moe.timers = &m->timers;
}

static void acts_free(nm_model *m) {
    nm_acts *a = &m->acts;
    if (!a->layers) return;
    for (int l = 0; l < m->cfg.n_layers; l++) nm_layer_acts_free(&a->layers[l]);
    free(a->layers);
    free(a->x_final);
    free(a->lnf);
    free(a->lnf_mean);
    free(a->lnf_rstd);
    free(a->logits);
    free(a->losses);
    free(a->ids);
    free(a->targets);
    free(a->dx);
    free(a->dln);
    free(a->dlogits);
    nm_block_scratch_free(&a->block);
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


/* The statistics vector of the last forward over the global batch, summed
 * like the gradients: per sequence, per chunk in order, as a tree over
 * chunks, then over ranks; so it carries the same bits on any rank count that
 * can follow the tree. */
static void stats_reduce(nm_model *m, int have_targets) {
    const nm_config *c = &m->cfg;
    int B = m->B, T = m->T, L = c->n_layers, E = c->n_experts;
    const nm_acts *a = &m->acts;
    size_t S = nm_stats_len(c);
    memset(m->seq_stats, 0, sizeof(double) * (size_t)B * S);
    for (int b = 0; b < B; b++) {
        double *v = m->seq_stats + (size_t)b * S;
        if (have_targets)
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
    for (int l = 0; l < L; l++) m->dropped[l] = m->stats[NM_STAT_LAYER(l, E) + NM_STAT_DROPPED(E)];
}

/* The aux loss of every layer from the global statistics, and d aux / d probs
 * (scaled by aux_loss_coeff for backward). */
static void aux_from_stats(nm_model *m) {
    const nm_config *c = &m->cfg;
    int L = c->n_layers, E = c->n_experts;
    double ntok = (double)m->fwd.b_global * m->T;
    m->aux = 0.0;
    for (int l = 0; l < L; l++) {
        const double *sl = m->stats + NM_STAT_LAYER(l, E);
        m->aux_layer[l] = nm_router_aux(sl + NM_STAT_PSUM, sl + NM_STAT_TOP1(E), ntok, E, m->dprob + (size_t)l * E);
        m->aux += m->aux_layer[l];
        for (int e = 0; e < E; e++)
            m->dprob_scaled[(size_t)l * E + e] = c->aux_loss_coeff * m->dprob[(size_t)l * E + e];
    }
}

void nm_model_forward(nm_model *m, const int32_t *x, const int32_t *y, int B, int T, const nm_forward_opts *o) {
    double t0;
    const nm_config *c = &m->cfg;
    int C = c->d_model, V = c->vocab_size, L = c->n_layers;
    long N = (long)B * T;
    if (B > m->cap_B || T > m->cap_T)
        NM_ABORT("forward on %d x %d exceeds the activation capacity %d x %d", B, T, m->cap_B, m->cap_T);
    nm_acts *a = &m->acts;
    m->B = B;
    m->T = T;
    m->fwd = *o;
    float p = o->training ? (float)c->dropout_rate : 0.0f;
    uint64_t seed = (uint64_t)c->seed;
    /* global element index of this rank's first activation, per [N, C] site */
    uint64_t base_nc = (uint64_t)o->b_offset * T * C;

    memcpy(a->ids, x, sizeof(int32_t) * (size_t)N);
    if (y) memcpy(a->targets, y, sizeof(int32_t) * (size_t)N);
    t0 = nm_now();
    float *x0 = a->layers[0].x;
    nm_embedding_forward(x0, x, m->p.tok_emb, m->p.pos_emb, B, T, C);
    nm_dropout(x0, (size_t)N * C, p, nm_dropout_key(seed, o->step, NM_SITE_EMBED), base_nc);
    nm_timer_lap(&m->timers, NM_T_EMBED, &t0);

    nm_block_run run = block_run(m, B, T, o);
    for (int l = 0; l < L; l++) {
        run.layer = l;
        nm_block_run_forward(&run, &a->layers[l], &m->p.layers[l], l + 1 < L ? a->layers[l + 1].x : a->x_final);
    }

    t0 = nm_now();
    nm_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, a->x_final, m->p.lnf_s, m->p.lnf_b, (int)N, C,
                         (float)c->layer_norm_eps);
    int rb = block_rows(B, T, o);
    nm_dense_forward(a->logits, a->lnf, m->p.head_w, m->p.head_b, (int)(N / rb), rb, C, V);
    if (y) nm_crossentropy_forward(a->losses, a->logits, y, (int)N, V);
    nm_timer_lap(&m->timers, NM_T_HEAD, &t0);

    t0 = nm_now();
    stats_reduce(m, y != NULL);
    nm_timer_lap(&m->timers, NM_T_ALLREDUCE, &t0);
    aux_from_stats(m);
    double ntok = (double)o->b_global * T;
    m->ce = y ? m->stats[0] / ntok : NAN;
    m->loss = m->ce + c->aux_loss_coeff * m->aux;
}

int nm_model_block_seqs(const nm_model *m, int B) {
    return m->tree_reduce && m->grad_chunks >= 1 && B % m->grad_chunks == 0 ? B / m->grad_chunks : 1;
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

void nm_model_backward(nm_model *m) {
    double t0;
    const nm_config *c = &m->cfg;
    int B = m->B, T = m->T, C = c->d_model, V = c->vocab_size, L = c->n_layers, E = c->n_experts;
    long N = (long)B * T;
    size_t NC = (size_t)N * C;
    const nm_forward_opts *o = &m->fwd;
    nm_acts *a = &m->acts;
    const nm_param_view *g = &m->g, *w = &m->p;
    /* dense parameter gradients per chunk of consecutive local sequences */
    nm_grad_chunks k = {1, N, m->chunk_grads, m->grads[0]};
    if (m->grad_chunks > 1 && B % m->grad_chunks == 0) {
        k.n = m->grad_chunks;
        k.rows = N / k.n;
    }

    t0 = nm_now();
    nm_crossentropy_backward(a->dlogits, a->logits, a->targets, (int)N, V, (float)(1.0 / ((double)o->b_global * T)));
    memset(a->dln, 0, sizeof(float) * NC);
    int rb = block_rows(B, T, o);
    nm_dense_backward_chunked(&k, rb, a->dln, g->head_w, g->head_b, a->dlogits, a->lnf, w->head_w, C, V);
    memset(a->dx, 0, sizeof(float) * NC);
    nm_layernorm_backward_chunked(&k, a->dx, g->lnf_s, g->lnf_b, a->dln, a->x_final, w->lnf_s, a->lnf_mean,
                                  a->lnf_rstd, C);
    nm_timer_lap(&m->timers, NM_T_HEAD, &t0);

    nm_block_run run = block_run(m, B, T, o);
    for (int l = L - 1; l >= 0; l--) {
        run.layer = l;
        nm_block_run_backward(&run, &a->layers[l], &w->layers[l], &g->layers[l], &k, a->dx,
                          m->dprob_scaled + (size_t)l * E);
    }
    t0 = nm_now();
    float p = o->training ? (float)c->dropout_rate : 0.0f;
    nm_dropout(a->dx, NC, p, nm_dropout_key((uint64_t)c->seed, o->step, NM_SITE_EMBED), (uint64_t)o->b_offset * T * C);
    int seqs = B / k.n;
    for (int ch = 0; ch < k.n; ch++)
        nm_embedding_backward(nm_chunk_ptr(&k, ch, g->tok_emb), nm_chunk_ptr(&k, ch, g->pos_emb),
                              a->dx + ch * k.rows * C, a->ids + ch * k.rows, seqs, T, C);
    nm_timer_lap(&m->timers, NM_T_EMBED, &t0);
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
