/* Parameter layout: a table of every tensor in checkpoint-schema naming, packed
 * into two flat blocks: dense (replicated on every rank) and experts (the
 * local shard). Gradients and AdamW moments share the same layout. */
#ifndef NANOMOE_PARAMS_H
#define NANOMOE_PARAMS_H

#include <stddef.h>

#include "nanomoe/config.h"

typedef enum { NM_INIT_ZERO, NM_INIT_ONE, NM_INIT_NORMAL, NM_INIT_XAVIER, NM_INIT_HE } nm_init_kind;

enum { NM_BLOCK_DENSE = 0, NM_BLOCK_EXPERT = 1 };

/* One tensor. Expert tensors have the expert index as their first dimension;
 * shape[] is always the whole-model shape, the local shard holds experts
 * [expert_begin, expert_begin + expert_count). */
typedef struct nm_param_info {
    char name[96];        /* path under /params, e.g. "blocks/0/attn/qkv/kernel" */
    int block;            /* NM_BLOCK_DENSE or NM_BLOCK_EXPERT */
    int ndim;
    int shape[3];
    size_t offset;        /* float offset within its block */
    size_t count;         /* floats stored locally */
    int layer;            /* block index, -1 outside blocks */
    nm_init_kind init;
    int fan_in, fan_out;
    int no_decay;         /* bias or norm parameter */
} nm_param_info;

typedef struct nm_param_layout {
    int n;
    nm_param_info *info;
    size_t n_dense, n_expert;       /* floats in each block */
    int n_experts;                  /* whole model */
    int expert_begin, expert_count; /* local shard */
    int expert_writer;              /* this rank writes its shard to checkpoints (one replica of each) */
} nm_param_layout;

/* Per-layer views into a block. */
typedef struct nm_layer_view {
    float *ln1_s, *ln1_b;   /* [C] */
    float *qkv_w, *qkv_b;   /* [C, 3C], [3C] */
    float *out_w, *out_b;   /* [C, C], [C] */
    float *ln2_s, *ln2_b;   /* [C] */
    float *router_w;        /* [C, E] */
    float *fc1_w, *fc1_b;   /* [El, C, F], [El, F] (local experts) */
    float *fc2_w, *fc2_b;   /* [El, F, C], [El, C] */
} nm_layer_view;

typedef struct nm_param_view {
    float *tok_emb, *pos_emb; /* [V, C], [block_size, C] */
    nm_layer_view *layers;    /* [n_layers] */
    float *lnf_s, *lnf_b;     /* [C] */
    float *head_w, *head_b;   /* [C, V], [V] */
} nm_param_view;

/* Builds the table for cfg with local experts [expert_begin, expert_begin + expert_count). */
void nm_layout_init(nm_param_layout *l, const nm_config *cfg, int expert_begin, int expert_count);
void nm_layout_free(nm_param_layout *l);

/* Points a view at the two blocks (either may be NULL-free storage of the layout's sizes). */
void nm_view_init(nm_param_view *v, const nm_param_layout *l, const nm_config *cfg, float *dense, float *expert);
void nm_view_free(nm_param_view *v);

/* Address of tensor i inside the given blocks. */
float *nm_param_ptr(const nm_param_layout *l, int i, float *dense, float *expert);

/* Index of a tensor by schema name, -1 if absent. */
int nm_param_find(const nm_param_layout *l, const char *name);

/* Floats per expert of an expert tensor (product of shape[1..]). */
size_t nm_param_per_expert(const nm_param_info *p);

/* Fills both blocks with the reference initialisation. Every value is a pure
 * function of (seed, tensor, whole-model element index), so a shard gets the
 * same experts whatever the rank count. */
void nm_params_init(const nm_param_layout *l, int seed, float *dense, float *expert);

/* Whole-model parameter counts. */
typedef struct nm_param_counts {
    size_t total, dense, experts, active_per_token; /* active: dense + top_k experts */
} nm_param_counts;
nm_param_counts nm_param_count(const nm_config *cfg);

#endif
