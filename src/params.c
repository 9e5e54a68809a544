/* Parameter layout, views and reference initialisation. */
#include "nanomoe/params.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"
#include "nanomoe/rng.h"

/* Domain tag of the initialisation streams (dropout and data use others). */
#define INIT_DOMAIN 0x696e6974ULL

static void add(nm_param_layout *l, int *cap, const char *name, int block, int layer, nm_init_kind init, int fan_in,
                int fan_out, int no_decay, int ndim, int d0, int d1, int d2) {
    if (l->n == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        nm_param_info *p = realloc(l->info, sizeof *p * (size_t)*cap);
        if (!p) NM_ABORT("out of memory growing the parameter table");
        l->info = p;
    }
    nm_param_info *p = &l->info[l->n++];
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "%s", name);
    p->block = block;
    p->layer = layer;
    p->init = init;
    p->fan_in = fan_in;
    p->fan_out = fan_out;
    p->no_decay = no_decay;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim > 1 ? d1 : 1;
    p->shape[2] = ndim > 2 ? d2 : 1;
    size_t whole = (size_t)d0 * (size_t)p->shape[1] * (size_t)p->shape[2];
    if (block == NM_BLOCK_EXPERT) {
        p->count = whole / (size_t)d0 * (size_t)l->expert_count;
        p->offset = l->n_expert;
        l->n_expert += p->count;
    } else {
        p->count = whole;
        p->offset = l->n_dense;
        l->n_dense += p->count;
    }
}

void nm_layout_init(nm_param_layout *l, const nm_config *c, int expert_begin, int expert_count) {
    memset(l, 0, sizeof *l);
    l->n_experts = c->n_experts;
    l->expert_begin = expert_begin;
    l->expert_count = expert_count;
    int cap = 0, C = c->d_model, V = c->vocab_size, E = c->n_experts, F = c->d_ff;
    char nm[96];
    add(l, &cap, "embed/tokens", NM_BLOCK_DENSE, -1, NM_INIT_NORMAL, 0, 0, 0, 2, V, C, 0);
    add(l, &cap, "embed/positions", NM_BLOCK_DENSE, -1, NM_INIT_NORMAL, 0, 0, 0, 2, c->block_size, C, 0);
    for (int i = 0; i < c->n_layers; i++) {
#define NAME(suffix) (snprintf(nm, sizeof nm, "blocks/%d/%s", i, suffix), nm)
        add(l, &cap, NAME("ln1/scale"), NM_BLOCK_DENSE, i, NM_INIT_ONE, 0, 0, 1, 1, C, 0, 0);
        add(l, &cap, NAME("ln1/bias"), NM_BLOCK_DENSE, i, NM_INIT_ZERO, 0, 0, 1, 1, C, 0, 0);
        add(l, &cap, NAME("attn/qkv/kernel"), NM_BLOCK_DENSE, i, NM_INIT_XAVIER, C, 3 * C, 0, 2, C, 3 * C, 0);
        add(l, &cap, NAME("attn/qkv/bias"), NM_BLOCK_DENSE, i, NM_INIT_ZERO, 0, 0, 1, 1, 3 * C, 0, 0);
        add(l, &cap, NAME("attn/out/kernel"), NM_BLOCK_DENSE, i, NM_INIT_XAVIER, C, C, 0, 2, C, C, 0);
        add(l, &cap, NAME("attn/out/bias"), NM_BLOCK_DENSE, i, NM_INIT_ZERO, 0, 0, 1, 1, C, 0, 0);
        add(l, &cap, NAME("ln2/scale"), NM_BLOCK_DENSE, i, NM_INIT_ONE, 0, 0, 1, 1, C, 0, 0);
        add(l, &cap, NAME("ln2/bias"), NM_BLOCK_DENSE, i, NM_INIT_ZERO, 0, 0, 1, 1, C, 0, 0);
        add(l, &cap, NAME("router/kernel"), NM_BLOCK_DENSE, i, NM_INIT_XAVIER, C, E, 0, 2, C, E, 0);
    }
    add(l, &cap, "ln_f/scale", NM_BLOCK_DENSE, -1, NM_INIT_ONE, 0, 0, 1, 1, C, 0, 0);
    add(l, &cap, "ln_f/bias", NM_BLOCK_DENSE, -1, NM_INIT_ZERO, 0, 0, 1, 1, C, 0, 0);
    add(l, &cap, "head/kernel", NM_BLOCK_DENSE, -1, NM_INIT_NORMAL, 0, 0, 0, 2, C, V, 0);
    add(l, &cap, "head/bias", NM_BLOCK_DENSE, -1, NM_INIT_ZERO, 0, 0, 1, 1, V, 0, 0);
    for (int i = 0; i < c->n_layers; i++) {
        add(l, &cap, NAME("experts/fc1/kernel"), NM_BLOCK_EXPERT, i, NM_INIT_HE, C, F, 0, 3, E, C, F);
        add(l, &cap, NAME("experts/fc1/bias"), NM_BLOCK_EXPERT, i, NM_INIT_ZERO, 0, 0, 1, 2, E, F, 0);
        add(l, &cap, NAME("experts/fc2/kernel"), NM_BLOCK_EXPERT, i, NM_INIT_HE, F, C, 0, 3, E, F, C);
        add(l, &cap, NAME("experts/fc2/bias"), NM_BLOCK_EXPERT, i, NM_INIT_ZERO, 0, 0, 1, 2, E, C, 0);
#undef NAME
    }
}

void nm_layout_free(nm_param_layout *l) {
    free(l->info);
    memset(l, 0, sizeof *l);
}

float *nm_param_ptr(const nm_param_layout *l, int i, float *dense, float *expert) {
    const nm_param_info *p = &l->info[i];
    return (p->block == NM_BLOCK_DENSE ? dense : expert) + p->offset;
}

int nm_param_find(const nm_param_layout *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->info[i].name, name) == 0) return i;
    return -1;
}

size_t nm_param_per_expert(const nm_param_info *p) { return (size_t)p->shape[1] * (size_t)p->shape[2]; }

void nm_view_init(nm_param_view *v, const nm_param_layout *l, const nm_config *c, float *dense, float *expert) {
    memset(v, 0, sizeof *v);
    v->layers = nm_calloc((size_t)c->n_layers, sizeof *v->layers);
    char nm[96];
#define P(name) nm_param_ptr(l, nm_param_find(l, name), dense, expert)
    v->tok_emb = P("embed/tokens");
    v->pos_emb = P("embed/positions");
    v->lnf_s = P("ln_f/scale");
    v->lnf_b = P("ln_f/bias");
    v->head_w = P("head/kernel");
    v->head_b = P("head/bias");
    for (int i = 0; i < c->n_layers; i++) {
        nm_layer_view *L = &v->layers[i];
#define LP(suffix) (snprintf(nm, sizeof nm, "blocks/%d/%s", i, suffix), P(nm))
        L->ln1_s = LP("ln1/scale");
        L->ln1_b = LP("ln1/bias");
        L->qkv_w = LP("attn/qkv/kernel");
        L->qkv_b = LP("attn/qkv/bias");
        L->out_w = LP("attn/out/kernel");
        L->out_b = LP("attn/out/bias");
        L->ln2_s = LP("ln2/scale");
        L->ln2_b = LP("ln2/bias");
        L->router_w = LP("router/kernel");
        L->fc1_w = LP("experts/fc1/kernel");
        L->fc1_b = LP("experts/fc1/bias");
        L->fc2_w = LP("experts/fc2/kernel");
        L->fc2_b = LP("experts/fc2/bias");
#undef LP
    }
#undef P
}

void nm_view_free(nm_param_view *v) {
    free(v->layers);
    v->layers = NULL;
}

/* FNV-1a: a stable stream id per tensor name, independent of table order. */
static uint64_t name_hash(const char *s) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

void nm_params_init(const nm_param_layout *l, int seed, float *dense, float *expert) {
    /* flax/jax truncated_normal: std of a [-2, 2]-truncated unit normal */
    const double trunc_std = 0.87962566103423978;
    for (int i = 0; i < l->n; i++) {
        const nm_param_info *p = &l->info[i];
        float *w = nm_param_ptr(l, i, dense, expert);
        uint64_t key = nm_rng_key((uint64_t)seed, INIT_DOMAIN, name_hash(p->name), 0);
        /* whole-model index of the first local element */
        size_t g0 = p->block == NM_BLOCK_EXPERT ? (size_t)l->expert_begin * nm_param_per_expert(p) : 0;
        double xavier = sqrt(6.0 / (double)(p->fan_in + p->fan_out + (p->init != NM_INIT_XAVIER)));
        double he = sqrt(2.0 / (double)(p->fan_in > 0 ? p->fan_in : 1)) / trunc_std;
        for (size_t j = 0; j < p->count; j++) {
            uint64_t g = g0 + j;
            double v = 0.0;
            switch (p->init) {
            case NM_INIT_ZERO: v = 0.0; break;
            case NM_INIT_ONE: v = 1.0; break;
            case NM_INIT_NORMAL: v = 0.02 * nm_rng_normal(key, g); break;
            case NM_INIT_XAVIER: v = xavier * (2.0 * nm_rng_uniform(key, g) - 1.0); break;
            case NM_INIT_HE: v = he * nm_rng_trunc_normal(key, g); break;
            }
            w[j] = (float)v;
        }
    }
}

nm_param_counts nm_param_count(const nm_config *c) {
    size_t C = (size_t)c->d_model, V = (size_t)c->vocab_size, E = (size_t)c->n_experts, F = (size_t)c->d_ff;
    size_t per_expert = C * F + F + F * C + C;
    size_t per_block_dense = 2 * C + C * 3 * C + 3 * C + C * C + C + 2 * C + C * E;
    nm_param_counts n;
    n.dense = V * C + (size_t)c->block_size * C + (size_t)c->n_layers * per_block_dense + 2 * C + C * V + V;
    n.experts = (size_t)c->n_layers * E * per_expert;
    n.total = n.dense + n.experts;
    n.active_per_token = n.dense + (size_t)c->n_layers * (size_t)c->top_k * per_expert;
    return n;
}
