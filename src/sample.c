/* Text generation with a KV cache. */
#include "nanomoe/sample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/attention.h"
#include "nanomoe/error.h"
#include "nanomoe/ops.h"
#include "nanomoe/rng.h"

void nm_sampler_init(nm_sampler *s, nm_model *m) {
    memset(s, 0, sizeof *s);
    const nm_config *c = &m->cfg;
    int C = c->d_model, T = c->block_size, L = c->n_layers;
    s->m = m;
    s->kcache = nm_calloc((size_t)L, sizeof(float *));
    s->vcache = nm_calloc((size_t)L, sizeof(float *));
    for (int l = 0; l < L; l++) {
        s->kcache[l] = nm_falloc((long)T * C);
        s->vcache[l] = nm_falloc((long)T * C);
    }
    s->window = nm_malloc(sizeof(int32_t) * (size_t)T);
    s->x = nm_falloc(C);
    s->a = nm_falloc(C);
    s->qkv = nm_falloc(3 * C);
    s->att = nm_falloc(C);
    s->tmp = nm_falloc(C);
    s->logits = nm_falloc(c->vocab_size);
    s->scores = nm_falloc(T);
    s->mean = nm_falloc(1);
    s->rstd = nm_falloc(1);
    if (m->dispatch.Q != 1) NM_ABORT("the sampler needs every expert on its rank (expert_parallel=1)");
    nm_moe_dims d = {.N = 1, .seq_len = 1, .C = C, .F = c->d_ff, .E = c->n_experts, .K = c->top_k};
    nm_moe_acts_alloc(&s->moe, &d, &m->dispatch);
    nm_moe_scratch_alloc(&s->moe_scratch, &d, &m->dispatch);
}

void nm_sampler_free(nm_sampler *s) {
    for (int l = 0; l < s->m->cfg.n_layers; l++) {
        free(s->kcache[l]);
        free(s->vcache[l]);
    }
    free(s->kcache);
    free(s->vcache);
    free(s->window);
    free(s->x);
    free(s->a);
    free(s->qkv);
    free(s->att);
    free(s->tmp);
    free(s->logits);
    free(s->scores);
    free(s->mean);
    free(s->rstd);
    nm_moe_acts_free(&s->moe);
    nm_moe_scratch_free(&s->moe_scratch);
    memset(s, 0, sizeof *s);
}

const float *nm_sampler_prefill(nm_sampler *s, const int32_t *ids, int n) {
    nm_model *m = s->m;
    const nm_config *c = &m->cfg;
    int T = c->block_size, C = c->d_model, V = c->vocab_size;
    if (n > T) {
        ids += n - T;
        n = T;
    }
    memmove(s->window, ids, sizeof(int32_t) * (size_t)n);
    nm_forward_opts o = {.training = 0, .step = 0, .b_offset = 0, .b_global = 1};
    nm_model_forward(m, s->window, NULL, 1, n, &o);
    for (int l = 0; l < c->n_layers; l++) {
        const float *qkv = m->acts.layers[l].qkv;
        for (int t = 0; t < n; t++) {
            memcpy(s->kcache[l] + (long)t * C, qkv + (long)t * 3 * C + C, sizeof(float) * (size_t)C);
            memcpy(s->vcache[l] + (long)t * C, qkv + (long)t * 3 * C + 2 * C, sizeof(float) * (size_t)C);
        }
    }
    s->len = n;
    memcpy(s->logits, m->acts.logits + (long)(n - 1) * V, sizeof(float) * (size_t)V);
    return s->logits;
}

const float *nm_sampler_push(nm_sampler *s, int32_t token) {
    nm_model *m = s->m;
    const nm_config *c = &m->cfg;
    int T = c->block_size, C = c->d_model, H = c->n_heads, V = c->vocab_size;
    if (s->len == T) {
        /* window full: slide by one and recompute, as the reference crops */
        memmove(s->window, s->window + 1, sizeof(int32_t) * (size_t)(T - 1));
        s->window[T - 1] = token;
        return nm_sampler_prefill(s, s->window, T);
    }
    int t = s->len;
    s->window[t] = token;
    const nm_param_view *p = &m->p;
    float eps = (float)c->layer_norm_eps;
    nm_moe_dims d = {.N = 1, .seq_len = 1, .C = C, .F = c->d_ff, .E = c->n_experts, .K = c->top_k};
    nm_embedding_forward(s->x, &token, p->tok_emb, p->pos_emb + (long)t * C, 1, 1, C);
    for (int l = 0; l < c->n_layers; l++) {
        const nm_layer_view *w = &p->layers[l];
        nm_layernorm_forward(s->a, s->mean, s->rstd, s->x, w->ln1_s, w->ln1_b, 1, C, eps);
        nm_dense_forward(s->qkv, s->a, w->qkv_w, w->qkv_b, 1, 1, C, 3 * C);
        memcpy(s->kcache[l] + (long)t * C, s->qkv + C, sizeof(float) * (size_t)C);
        memcpy(s->vcache[l] + (long)t * C, s->qkv + 2 * C, sizeof(float) * (size_t)C);
        nm_attention_decode(s->att, s->qkv, s->kcache[l], s->vcache[l], C, t, C, H, s->scores);
        nm_dense_forward(s->tmp, s->att, w->out_w, w->out_b, 1, 1, C, C);
        nm_add(s->x, s->x, s->tmp, (size_t)C);
        nm_layernorm_forward(s->a, s->mean, s->rstd, s->x, w->ln2_s, w->ln2_b, 1, C, eps);
        nm_moe_forward(s->tmp, &s->moe, s->a, w, &d, &s->moe_scratch, &m->dispatch);
        nm_add(s->x, s->x, s->tmp, (size_t)C);
    }
    nm_layernorm_forward(s->a, s->mean, s->rstd, s->x, p->lnf_s, p->lnf_b, 1, C, eps);
    nm_dense_forward(s->logits, s->a, p->head_w, p->head_b, 1, 1, C, V);
    s->len = t + 1;
    return s->logits;
}

int32_t nm_sample_logits(const float *logits, int V, double temperature, int top_k, uint64_t key, uint64_t counter,
                         float *work) {
    if (temperature <= 0.0) {
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best]) best = v;
        return best;
    }
    float thr = -INFINITY;
    if (top_k > 0 && top_k < V) {
        /* k-th largest: copy and partially select */
        memcpy(work, logits, sizeof(float) * (size_t)V);
        for (int k = 0; k < top_k; k++) {
            int best = k;
            for (int v = k + 1; v < V; v++)
                if (work[v] > work[best]) best = v;
            float tmp = work[k];
            work[k] = work[best];
            work[best] = tmp;
        }
        thr = work[top_k - 1];
    }
    double mx = -INFINITY;
    for (int v = 0; v < V; v++)
        if (logits[v] >= thr && logits[v] / temperature > mx) mx = logits[v] / temperature;
    double total = 0.0;
    for (int v = 0; v < V; v++) total += logits[v] >= thr ? exp(logits[v] / temperature - mx) : 0.0;
    double u = nm_rng_uniform(key, counter) * total, acc = 0.0;
    int last = 0;
    for (int v = 0; v < V; v++) {
        if (logits[v] < thr) continue;
        acc += exp(logits[v] / temperature - mx);
        last = v;
        if (u < acc) return v;
    }
    return last;
}
