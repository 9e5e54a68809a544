/* Run configuration: key table, INI loading (libinih), overrides and validation. */
#include "nanomoe/config.h"

#include <errno.h>
#include <ini.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define OFF(field) offsetof(nm_config, field)
#define SZ(field) sizeof(((nm_config *)0)->field)
#define BIG 1e18

static const nm_config_key KEYS[] = {
    {"d_model", "model", NM_KEY_INT, OFF(d_model), SZ(d_model), 1, 65536, 1, 1, "model width C"},
    {"n_layers", "model", NM_KEY_INT, OFF(n_layers), SZ(n_layers), 1, 1024, 1, 1, "transformer blocks"},
    {"n_heads", "model", NM_KEY_INT, OFF(n_heads), SZ(n_heads), 1, 4096, 1, 1, "attention heads (must divide d_model)"},
    {"d_ff", "model", NM_KEY_INT, OFF(d_ff), SZ(d_ff), 1, 1 << 20, 1, 1, "expert FFN inner width"},
    {"n_experts", "model", NM_KEY_INT, OFF(n_experts), SZ(n_experts), 1, 4096, 1, 1, "experts per MoE layer"},
    {"top_k", "model", NM_KEY_INT, OFF(top_k), SZ(top_k), 1, 4096, 1, 1, "experts per token (<= n_experts)"},
    {"block_size", "model", NM_KEY_INT, OFF(block_size), SZ(block_size), 2, 1 << 20, 1, 1, "context length T"},
    {"vocab_size", "model", NM_KEY_INT, OFF(vocab_size), SZ(vocab_size), 1, 256, 1, 0, "from the data: distinct bytes of the text"},
    {"dropout_rate", "model", NM_KEY_FLOAT, OFF(dropout_rate), SZ(dropout_rate), 0, 1, 0, 1, "dropout probability at all four sites, in [0, 1)"},
    {"aux_loss_coeff", "model", NM_KEY_FLOAT, OFF(aux_loss_coeff), SZ(aux_loss_coeff), 0, BIG, 0, 1, "weight of the load-balancing loss"},
    {"layer_norm_eps", "model", NM_KEY_FLOAT, OFF(layer_norm_eps), SZ(layer_norm_eps), 1e-30, 1, 1, 1, "LayerNorm epsilon"},
    {"learning_rate", "training", NM_KEY_FLOAT, OFF(learning_rate), SZ(learning_rate), 0, 10, 0, 1, "AdamW learning rate (peak, with a schedule)"},
    {"weight_decay", "training", NM_KEY_FLOAT, OFF(weight_decay), SZ(weight_decay), 0, BIG, 0, 1, "decoupled weight decay"},
    {"adam_b1", "training", NM_KEY_FLOAT, OFF(adam_b1), SZ(adam_b1), 0, 0.999999999, 0, 1, "AdamW beta1, in [0, 1)"},
    {"adam_b2", "training", NM_KEY_FLOAT, OFF(adam_b2), SZ(adam_b2), 0, 0.999999999, 0, 1, "AdamW beta2, in [0, 1)"},
    {"adam_eps", "training", NM_KEY_FLOAT, OFF(adam_eps), SZ(adam_eps), 1e-30, 1, 0, 1, "AdamW epsilon"},
    {"batch_size", "training", NM_KEY_INT, OFF(batch_size), SZ(batch_size), 1, 1 << 20, 0, 1, "sequences per step (global batch)"},
    {"max_iters", "training", NM_KEY_INT, OFF(max_iters), SZ(max_iters), 1, 2000000000, 0, 1, "training steps"},
    {"eval_interval", "training", NM_KEY_INT, OFF(eval_interval), SZ(eval_interval), 0, 2000000000, 0, 1, "evaluate every N steps and at step 1 (0 = never)"},
    {"eval_iters", "training", NM_KEY_INT, OFF(eval_iters), SZ(eval_iters), 1, 1000000, 0, 1, "random validation batches per evaluation"},
    {"seed", "training", NM_KEY_INT, OFF(seed), SZ(seed), 0, 2147483647, 0, 1, "seed of initialisation, data order and dropout"},
    {"lr_schedule", "training", NM_KEY_STRING, OFF(lr_schedule), SZ(lr_schedule), 0, 0, 0, 1, "constant (reference) or cosine (warm-up then cosine to min_lr)"},
    {"warmup_iters", "training", NM_KEY_INT, OFF(warmup_iters), SZ(warmup_iters), 0, 2000000000, 0, 1, "linear warm-up steps (cosine schedule only)"},
    {"min_lr", "training", NM_KEY_FLOAT, OFF(min_lr), SZ(min_lr), 0, 10, 0, 1, "final learning rate of the cosine schedule"},
    {"grad_clip", "training", NM_KEY_FLOAT, OFF(grad_clip), SZ(grad_clip), 0, BIG, 0, 1, "clip the global gradient norm to this (0 = off, reference)"},
    {"decay_norms_biases", "training", NM_KEY_INT, OFF(decay_norms_biases), SZ(decay_norms_biases), 0, 1, 0, 1, "1 = weight decay on every parameter (reference); 0 = not on biases and norms"},
    {"capacity_factor", "training", NM_KEY_FLOAT, OFF(capacity_factor), SZ(capacity_factor), 0, 1e6, 0, 1, "expert capacity as a multiple of an even share of the global batch's token slots; extra slots skip the expert (0 = dropless, reference)"},
    {"grad_chunks", "training", NM_KEY_INT, OFF(grad_chunks), SZ(grad_chunks), 0, 65536, 0, 1, "sum gradients over this many fixed slices of the batch as a fixed tree, so that runs on any power-of-two rank count dividing it are bit-identical (0 = auto: the largest power of two <= 8 dividing batch_size)"},
    {"expert_parallel", "run", NM_KEY_INT, OFF(expert_parallel), SZ(expert_parallel), 0, 65536, 0, 1, "ranks sharing one copy of the experts; must divide ranks and n_experts (0 = min(ranks, n_experts))"},
    {"data", "run", NM_KEY_STRING, OFF(data), SZ(data), 0, 0, 0, 1, "training text file (bytes are tokens)"},
    {"out_dir", "run", NM_KEY_STRING, OFF(out_dir), SZ(out_dir), 0, 0, 0, 1, "run directory (default runs/<config name>)"},
    {"log_interval", "run", NM_KEY_INT, OFF(log_interval), SZ(log_interval), 1, 2000000000, 0, 1, "progress line every N steps"},
    {"ckpt_interval", "run", NM_KEY_INT, OFF(ckpt_interval), SZ(ckpt_interval), 0, 2000000000, 0, 1, "checkpoint every N steps (0 = only at the end)"},
    {"stats_interval", "run", NM_KEY_INT, OFF(stats_interval), SZ(stats_interval), 1, 2000000000, 0, 1, "append a row of metrics and routing statistics to out_dir/run.h5 every N steps"},
    {"keep_last", "run", NM_KEY_INT, OFF(keep_last), SZ(keep_last), 0, 2000000000, 0, 1, "keep only the newest N checkpoints of the run in out_dir (0 = keep all)"},
    {"resume", "run", NM_KEY_STRING, OFF(resume), SZ(resume), 0, 0, 0, 1, "auto (the most recently started run in out_dir, from its newest valid checkpoint; else a new run) or a checkpoint path (continues its run); empty = new run"},
};
#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

void nm_config_defaults(nm_config *c) {
    memset(c, 0, sizeof *c);
    c->d_model = 128;
    c->n_layers = 4;
    c->n_heads = 4;
    c->d_ff = 512;
    c->n_experts = 4;
    c->top_k = 2;
    c->block_size = 128;
    c->vocab_size = 65;
    c->dropout_rate = 0.1;
    c->aux_loss_coeff = 0.01;
    c->layer_norm_eps = 1e-6;
    c->learning_rate = 3e-4;
    c->weight_decay = 0.1;
    c->adam_b1 = 0.9;
    c->adam_b2 = 0.999;
    c->adam_eps = 1e-8;
    c->batch_size = 32;
    c->max_iters = 5000;
    c->eval_interval = 250;
    c->eval_iters = 50;
    c->seed = 42;
    strcpy(c->lr_schedule, "constant");
    c->warmup_iters = 0;
    c->min_lr = 0.0;
    c->grad_clip = 0.0;
    c->decay_norms_biases = 1;
    strcpy(c->data, "data/tinyshakespeare.txt");
    c->out_dir[0] = '\0';
    c->log_interval = 10;
    c->ckpt_interval = 0;
    c->stats_interval = 10;
    c->keep_last = 0;
    c->resume[0] = '\0';
}

int nm_config_nkeys(void) { return NKEYS; }

const nm_config_key *nm_config_key_at(int i) { return (i >= 0 && i < NKEYS) ? &KEYS[i] : NULL; }

const nm_config_key *nm_config_find(const char *name) {
    for (int i = 0; i < NKEYS; i++)
        if (strcmp(KEYS[i].name, name) == 0) return &KEYS[i];
    return NULL;
}

/* Edit distance, for "did you mean" hints on unknown keys. */
static int edit_distance(const char *a, const char *b) {
    int la = (int)strlen(a), lb = (int)strlen(b);
    if (la > 63 || lb > 63) return 99;
    int d[64][64];
    for (int i = 0; i <= la; i++) d[i][0] = i;
    for (int j = 0; j <= lb; j++) d[0][j] = j;
    for (int i = 1; i <= la; i++)
        for (int j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb];
}

static int unknown_key(const char *key, nm_error *err) {
    const char *best = NULL;
    int bestd = 4;
    for (int i = 0; i < NKEYS; i++) {
        int d = edit_distance(key, KEYS[i].name);
        if (d < bestd) bestd = d, best = KEYS[i].name;
    }
    if (best) return nm_fail(err, "unknown config key '%s' (did you mean '%s'? 'nanomoe train --help' lists all keys)", key, best);
    return nm_fail(err, "unknown config key '%s' ('nanomoe train --help' lists all keys)", key);
}

static void format_bound(double v, char *buf, size_t n) {
    if (v >= BIG) snprintf(buf, n, "inf");
    else snprintf(buf, n, "%.10g", v);
}

int nm_config_set(nm_config *c, const char *key, const char *value, nm_error *err) {
    const nm_config_key *k = nm_config_find(key);
    if (!k) return unknown_key(key, err);
    if (!k->settable) return nm_fail(err, "config key '%s' cannot be set: %s", key, k->help);
    if (!value || !*value) return nm_fail(err, "config key '%s' has no value (expected %s)", key, k->help);
    char lo[32], hi[32];
    format_bound(k->min, lo, sizeof lo);
    format_bound(k->max, hi, sizeof hi);
    char *p = (char *)c + k->offset;
    if (k->type == NM_KEY_STRING) {
        if (strlen(value) >= k->size)
            return nm_fail(err, "config key '%s': value is too long (%zu characters)", key, strlen(value));
        if (strcmp(key, "lr_schedule") == 0 && strcmp(value, "constant") != 0 && strcmp(value, "cosine") != 0)
            return nm_fail(err, "config: lr_schedule=%s is not allowed (expected constant or cosine)", value);
        strcpy(p, value);
        return 0;
    }
    errno = 0;
    char *end = NULL;
    if (k->type == NM_KEY_INT) {
        long long v = strtoll(value, &end, 10);
        if (end == value || *end != '\0' || errno == ERANGE)
            return nm_fail(err, "config: %s=%s is not an integer (expected an integer in [%s, %s])", key, value, lo, hi);
        if ((double)v < k->min || (double)v > k->max)
            return nm_fail(err, "config: %s=%s is out of range (expected an integer in [%s, %s])", key, value, lo, hi);
        *(int *)p = (int)v;
    } else {
        double v = strtod(value, &end);
        if (end == value || *end != '\0' || errno == ERANGE || !isfinite(v))
            return nm_fail(err, "config: %s=%s is not a finite number (expected a number in [%s, %s])", key, value, lo, hi);
        if (v < k->min || v > k->max)
            return nm_fail(err, "config: %s=%s is out of range (expected a number in [%s, %s])", key, value, lo, hi);
        *(double *)p = v;
    }
    return 0;
}

int nm_config_set_pair(nm_config *c, const char *pair, nm_error *err) {
    const char *eq = strchr(pair, '=');
    if (!eq) return nm_fail(err, "expected key=value, got '%s'", pair);
    char key[NM_NAME_MAX];
    size_t n = (size_t)(eq - pair);
    if (n == 0 || n >= sizeof key) return nm_fail(err, "expected key=value, got '%s'", pair);
    memcpy(key, pair, n);
    key[n] = '\0';
    return nm_config_set(c, key, eq + 1, err);
}

typedef struct {
    nm_config *cfg;
    nm_error *err;
    const char *path;
    int failed;
    FILE *file;
    int line;      /* lines read so far */
    int long_line; /* first line that did not fit libinih's buffer, 0 if none */
    int buf_size;
} ini_ctx;

static int on_ini_pair(void *user, const char *section, const char *name, const char *value) {
    ini_ctx *ctx = user;
    (void)section;
    if (ctx->failed || ctx->long_line) return 1; /* keep only the first error */
    nm_error e;
    if (nm_config_set(ctx->cfg, name, value, &e) != 0) {
        ctx->failed = 1;
        nm_fail(ctx->err, "%s: %s", ctx->path, e.msg);
    }
    return 1;
}

/* fgets for libinih that notices lines longer than its fixed buffer (which it
 * would otherwise split silently into two lines). */
static char *ini_read_line(char *str, int num, void *stream) {
    ini_ctx *ctx = stream;
    if (!fgets(str, num, ctx->file)) return NULL;
    ctx->line++;
    size_t n = strlen(str);
    if (n + 1 == (size_t)num && str[n - 1] != '\n') {
        int ch = fgetc(ctx->file);
        if (ch == EOF || ch == '\n') return str; /* it fitted exactly */
        while (ch != EOF && ch != '\n') ch = fgetc(ctx->file);
        const char *p = str;
        while (*p == ' ' || *p == '\t') p++;
        if (*p == ';' || *p == '#') return str; /* the start of a comment is still a comment */
        if (!ctx->long_line) ctx->long_line = ctx->line;
        ctx->buf_size = num;
        str[0] = '\0'; /* hand libinih an empty line instead of half of one */
    }
    return str;
}

int nm_config_load_ini(nm_config *c, const char *path, nm_error *err) {
    struct stat st;
    if (stat(path, &st) != 0) return nm_fail(err, "cannot read config file '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return nm_fail(err, "config file '%s' is not a regular file", path);
    FILE *f = fopen(path, "r");
    if (!f) return nm_fail(err, "cannot read config file '%s': %s", path, strerror(errno));
    ini_ctx ctx = {c, err, path, 0, f, 0, 0, 0};
    int rc = ini_parse_stream(ini_read_line, &ctx, on_ini_pair, &ctx);
    fclose(f);
    if (ctx.long_line)
        return nm_fail(err, "%s:%d: line longer than %d characters (the INI parser's limit; give long values on the "
                       "command line as key=value)", path, ctx.long_line, ctx.buf_size - 2);
    if (ctx.failed) return -1;
    if (rc > 0) return nm_fail(err, "%s:%d: syntax error (expected 'key = value', '[section]' or a ; comment)", path, rc);
    if (rc != 0) return nm_fail(err, "cannot parse config file '%s'", path);
    return 0;
}

int nm_config_validate(const nm_config *c, nm_error *err) {
    if (c->top_k > c->n_experts)
        return nm_fail(err, "config: top_k=%d must be <= n_experts=%d", c->top_k, c->n_experts);
    if (c->d_model % c->n_heads != 0)
        return nm_fail(err, "config: d_model=%d must be divisible by n_heads=%d", c->d_model, c->n_heads);
    if (c->dropout_rate >= 1.0)
        return nm_fail(err, "config: dropout_rate=%g must be in [0, 1)", c->dropout_rate);
    if (strcmp(c->lr_schedule, "cosine") == 0 && c->warmup_iters > c->max_iters)
        return nm_fail(err, "config: warmup_iters=%d must be <= max_iters=%d", c->warmup_iters, c->max_iters);
    if (strcmp(c->lr_schedule, "cosine") == 0 && c->min_lr > c->learning_rate)
        return nm_fail(err, "config: min_lr=%g must be <= learning_rate=%g", c->min_lr, c->learning_rate);
    if (strcmp(c->lr_schedule, "constant") != 0 && strcmp(c->lr_schedule, "cosine") != 0)
        return nm_fail(err, "config: lr_schedule=%s is not allowed (expected constant or cosine)", c->lr_schedule);
    if (!c->data[0]) return nm_fail(err, "config: data is empty (expected a path to a text file)");
    if (c->grad_chunks > 0 && (c->grad_chunks & (c->grad_chunks - 1)) != 0)
        return nm_fail(err, "config: grad_chunks=%d must be 0 or a power of two", c->grad_chunks);
    if (c->grad_chunks > 0 && c->batch_size % c->grad_chunks != 0)
        return nm_fail(err, "config: grad_chunks=%d must divide batch_size=%d", c->grad_chunks, c->batch_size);
    return 0;
}

double nm_config_number(const nm_config *c, const nm_config_key *k) {
    const char *p = (const char *)c + k->offset;
    if (k->type == NM_KEY_INT) return *(const int *)p;
    if (k->type == NM_KEY_FLOAT) return *(const double *)p;
    return NAN;
}

void nm_config_format(const nm_config *c, const nm_config_key *k, char *buf, size_t n) {
    const char *p = (const char *)c + k->offset;
    if (k->type == NM_KEY_INT) snprintf(buf, n, "%d", *(const int *)p);
    else if (k->type == NM_KEY_FLOAT) {
        /* shortest text that reads back to the same double */
        double v = *(const double *)p;
        snprintf(buf, n, "%.15g", v);
        if (strtod(buf, NULL) != v) snprintf(buf, n, "%.17g", v);
    }
    else snprintf(buf, n, "%s", p);
}

size_t nm_config_lines(const nm_config *c, char *out, size_t cap) {
    size_t o = 0;
    if (cap) out[0] = '\0';
    for (int i = 0; i < NKEYS && o < cap; i++) {
        char v[NM_PATH_MAX];
        nm_config_format(c, &KEYS[i], v, sizeof v);
        int n = snprintf(out + o, cap - o, "%s=%s\n", KEYS[i].name, v);
        o = n < 0 ? o : (o + (size_t)n < cap ? o + (size_t)n : cap - 1);
    }
    return o;
}

void nm_config_print(const nm_config *c, void *file) {
    FILE *f = file;
    const char *sections[] = {"model", "training", "run"};
    for (int s = 0; s < 3; s++) {
        fprintf(f, "[%s]\n", sections[s]);
        for (int i = 0; i < NKEYS; i++) {
            if (strcmp(KEYS[i].section, sections[s]) != 0) continue;
            char buf[NM_PATH_MAX + 32];
            nm_config_format(c, &KEYS[i], buf, sizeof buf);
            fprintf(f, "%s = %s\n", KEYS[i].name, buf);
        }
    }
}
