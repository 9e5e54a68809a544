/* Run configuration: the key table, INI loading, key=value overrides and validation. */
#ifndef NANOMOE_CONFIG_H
#define NANOMOE_CONFIG_H

#include <stddef.h>

#include "nanomoe/error.h"

#define NM_PATH_MAX 1024
#define NM_NAME_MAX 64

typedef struct nm_config {
    /* model */
    int d_model, n_layers, n_heads, d_ff, n_experts, top_k, block_size;
    int vocab_size; /* from the data (or a checkpoint), never from a config file */
    double dropout_rate, aux_loss_coeff, layer_norm_eps;
    /* training */
    double learning_rate, weight_decay, adam_b1, adam_b2, adam_eps;
    int batch_size, max_iters, eval_interval, eval_iters, seed;
    /* options beyond the reference, off by default */
    char lr_schedule[NM_NAME_MAX]; /* "constant" (reference) or "cosine" */
    int warmup_iters;
    double min_lr, grad_clip;
    int decay_norms_biases; /* 1 = weight decay on every parameter (reference) */
    double capacity_factor; /* 0 = dropless (reference) */
    int grad_chunks;        /* fixed batch slices summed as a fixed tree (0 = auto) */
    /* parallelism */
    int expert_parallel;    /* 0 = min(ranks, n_experts) */
    /* run */
    char data[NM_PATH_MAX], out_dir[NM_PATH_MAX];
    int log_interval, ckpt_interval;
    int stats_interval;            /* a run.h5 row every N steps */
    int keep_last;                 /* checkpoints kept in out_dir (0 = all) */
    char resume[NM_PATH_MAX];      /* "" (new run), "auto" or a checkpoint path */
} nm_config;

typedef enum { NM_KEY_INT, NM_KEY_FLOAT, NM_KEY_STRING } nm_key_type;

/* One configuration key: how to parse, bound, describe and store it. */
typedef struct nm_config_key {
    const char *name;
    const char *section; /* "model", "training" or "run": for readability only */
    nm_key_type type;
    size_t offset;       /* into nm_config */
    size_t size;         /* bytes of the field (string capacity) */
    double min, max;     /* inclusive bounds for numbers */
    int model_defining;  /* must match a checkpoint's value on resume/load */
    int settable;        /* 0 for keys derived from data (vocab_size) */
    const char *help;
} nm_config_key;

/* Reference defaults (../shared/reference/model-spec.md), data path
 * "data/tinyshakespeare.txt", out_dir empty (= runs/<config name>). */
void nm_config_defaults(nm_config *cfg);

/* The key table. */
int nm_config_nkeys(void);
const nm_config_key *nm_config_key_at(int i);
const nm_config_key *nm_config_find(const char *name);

/* Sets one key from text; the message names the key, the value and what is allowed. */
int nm_config_set(nm_config *cfg, const char *key, const char *value, nm_error *err);

/* Parses "key=value". */
int nm_config_set_pair(nm_config *cfg, const char *pair, nm_error *err);

/* Loads an INI file on top of cfg (sections are for readability; a key means
 * the same in any section). Unknown keys and bad values are errors. */
int nm_config_load_ini(nm_config *cfg, const char *path, nm_error *err);

/* Checks value combinations that single-key bounds cannot (top_k <= n_experts, ...). */
int nm_config_validate(const nm_config *cfg, nm_error *err);

/* Formats a key's value as text (round-trips through nm_config_set). */
void nm_config_format(const nm_config *cfg, const nm_config_key *key, char *buf, size_t n);

/* Every key with its formatted value, one "key=value" line each, into out
 * (cap bytes, NUL-terminated); returns the length written. */
size_t nm_config_lines(const nm_config *cfg, char *out, size_t cap);

/* Numeric value of an int or float key. */
double nm_config_number(const nm_config *cfg, const nm_config_key *key);

/* Writes "key = value" lines, one per key, grouped by section. */
void nm_config_print(const nm_config *cfg, void *file /* FILE* */);

#endif
