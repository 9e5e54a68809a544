/* The library API: argument checks, MPI started on demand, and models,
 * trainers and generation for one process. */
#include "nanomoe/api.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/ckpt.h"
#include "nanomoe/dist.h"
#include "nanomoe/resume.h"
#include "nanomoe/rng.h"
#include "nanomoe/sample.h"
#include "nanomoe/train.h"

const char *nm_version(void) { return NM_VERSION; }

static void finalize_at_exit(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

/* A program that does not use MPI still gets a one-process MPI world. */
int nm_ensure_mpi(void) {
    int init = 0;
    MPI_Initialized(&init);
    if (init) return 0;
    int provided;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) return -1;
    atexit(finalize_at_exit);
    return 0;
}

/* Token ids must index the vocabulary: a wrong id would read out of bounds. */
static int check_ids(const int32_t *ids, long n, int V, const char *what, nm_error *err) {
    for (long i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= V)
            return nm_fail(err, "%s[%ld] = %d is not a token id (expected 0 .. %d)", what, i, ids[i], V - 1);
    return 0;
}

int nm_model_new(nm_model **out, const nm_config *cfg, int max_batch, nm_error *err) {
    NM_NEED(out, "nm_model_new: out is NULL");
    *out = NULL;
    NM_NEED(cfg, "nm_model_new: cfg is NULL");
    NM_NEED(max_batch >= 1, "nm_model_new: max_batch=%d (expected >= 1)", max_batch);
    NM_NEED(cfg->vocab_size >= 1 && cfg->vocab_size <= 256, "nm_model_new: vocab_size=%d (expected 1 .. 256; set it from the data)",
         cfg->vocab_size);
    NM_NEED(nm_ensure_mpi() == 0, "nm_model_new: MPI could not be started");
    nm_config c = *cfg;
    c.expert_parallel = 0;
    nm_model *m = calloc(1, sizeof *m);
    NM_NEED(m, "nm_model_new: out of memory");
    if (nm_model_create(m, &c, MPI_COMM_SELF, max_batch, c.block_size, err) != 0) {
        free(m);
        return -1;
    }
    *out = m;
    return 0;
}

int nm_model_load(nm_model **out, const char *path, int max_batch, nm_vocab *vocab, nm_error *err) {
    NM_NEED(out, "nm_model_load: out is NULL");
    *out = NULL;
    NM_NEED(path, "nm_model_load: path is NULL");
    NM_NEED(max_batch >= 1, "nm_model_load: max_batch=%d (expected >= 1)", max_batch);
    NM_NEED(nm_ensure_mpi() == 0, "nm_model_load: MPI could not be started");
    nm_config cfg;
    nm_vocab v;
    nm_ckpt_meta meta;
    if (nm_ckpt_read_header(path, MPI_COMM_SELF, &cfg, &v, &meta, err) != 0) return -1;
    cfg.expert_parallel = 0;
    nm_model *m = calloc(1, sizeof *m);
    NM_NEED(m, "nm_model_load: out of memory");
    if (nm_model_create(m, &cfg, MPI_COMM_SELF, max_batch, cfg.block_size, err) != 0) {
        free(m);
        return -1;
    }
    if (nm_ckpt_read_params(path, m, NULL, err) != 0) {
        nm_model_delete(m);
        return -1;
    }
    if (vocab) *vocab = v;
    *out = m;
    return 0;
}

int nm_model_save(const nm_model *m, const char *path, const nm_vocab *vocab, int64_t step, nm_error *err) {
    NM_NEED(m && path && vocab, "nm_model_save: model, path and vocab must not be NULL");
    NM_NEED(vocab->size == m->cfg.vocab_size, "nm_model_save: the vocabulary has %d characters, the model %d", vocab->size,
         m->cfg.vocab_size);
    NM_NEED(step >= 0, "nm_model_save: step=%lld (expected >= 0)", (long long)step);
    return nm_ckpt_save(path, m, NULL, vocab, step, 0, NULL, err);
}

void nm_model_delete(nm_model *m) {
    if (!m) return;
    nm_model_free(m);
    free(m);
}

const nm_config *nm_model_get_config(const nm_model *m) { return m ? &m->cfg : NULL; }

/* Checks a (B, T) batch against the model's capacity and vocabulary. */
static int check_batch(const nm_model *m, const int32_t *x, const int32_t *y, int B, int T, const char *fn,
                       nm_error *err) {
    NM_NEED(m && x, "%s: model and x must not be NULL", fn);
    NM_NEED(B >= 1 && B <= m->cap_B, "%s: B=%d (expected 1 .. %d, the model's max_batch)", fn, B, m->cap_B);
    NM_NEED(T >= 1 && T <= m->cap_T, "%s: T=%d (expected 1 .. block_size=%d)", fn, T, m->cap_T);
    if (check_ids(x, (long)B * T, m->cfg.vocab_size, "x", err) != 0) return -1;
    if (y && check_ids(y, (long)B * T, m->cfg.vocab_size, "y", err) != 0) return -1;
    return 0;
}

int nm_model_forward_tokens(nm_model *m, const int32_t *x, int B, int T, float *logits, double *aux, nm_error *err) {
    if (check_batch(m, x, NULL, B, T, "nm_model_forward_tokens", err) != 0) return -1;
    nm_forward_opts o = {.training = 0, .step = 0, .b_offset = 0, .b_global = B};
    nm_model_forward(m, x, NULL, B, T, &o);
    if (logits) memcpy(logits, m->acts.logits, sizeof(float) * (size_t)B * T * m->cfg.vocab_size);
    if (aux) *aux = m->aux;
    return 0;
}

const float *nm_model_logits(const nm_model *m) { return m ? m->acts.logits : NULL; }

int nm_model_evaluate(nm_model *m, const int32_t *x, const int32_t *y, int B, int T, nm_losses *out, nm_error *err) {
    NM_NEED(y && out, "nm_model_evaluate: y and out must not be NULL");
    if (check_batch(m, x, y, B, T, "nm_model_evaluate", err) != 0) return -1;
    nm_forward_opts o = {.training = 0, .step = 0, .b_offset = 0, .b_global = B};
    nm_model_forward(m, x, y, B, T, &o);
    out->loss = m->loss;
    out->ce = m->ce;
    out->aux = m->aux;
    return 0;
}

int nm_generate(nm_model *m, const int32_t *prompt, int n, int max_new, double temperature, int top_k, uint64_t seed,
                nm_token_fn cb, void *user, int32_t *out, int *generated, nm_error *err) {
    if (generated) *generated = 0;
    NM_NEED(m && prompt, "nm_generate: model and prompt must not be NULL");
    NM_NEED(n >= 1, "nm_generate: the prompt has %d tokens (expected at least 1)", n);
    NM_NEED(max_new >= 0, "nm_generate: max_new=%d (expected >= 0)", max_new);
    NM_NEED(temperature >= 0.0, "nm_generate: temperature=%g (expected >= 0; 0 = greedy)", temperature);
    NM_NEED(top_k >= 0, "nm_generate: top_k=%d (expected >= 0; 0 = no filtering)", top_k);
    NM_NEED(m->cap_T == m->cfg.block_size, "nm_generate: the model's activations must cover block_size");
    if (check_ids(prompt, n, m->cfg.vocab_size, "prompt", err) != 0) return -1;
    int V = m->cfg.vocab_size;
    float *work = malloc(sizeof(float) * (size_t)V);
    NM_NEED(work, "nm_generate: out of memory");
    nm_sampler s;
    nm_sampler_init(&s, m);
    uint64_t key = nm_rng_key(seed, 0x73616d70ULL, 0, 0); /* the stream `nanomoe sample` uses */
    const float *logits = nm_sampler_prefill(&s, prompt, n);
    int i = 0;
    for (; i < max_new; i++) {
        int32_t t = nm_sample_logits(logits, V, temperature, top_k, key, (uint64_t)i, work);
        if (out) out[i] = t;
        if (cb && cb(t, user)) {
            i++;
            break;
        }
        if (i + 1 < max_new) logits = nm_sampler_push(&s, t);
    }
    if (generated) *generated = i;
    nm_sampler_free(&s);
    free(work);
    return 0;
}

int nm_vocab_decode(const nm_vocab *v, const int32_t *ids, size_t n, char *text, nm_error *err) {
    NM_NEED(v && ids && text, "nm_vocab_decode: vocab, ids and text must not be NULL");
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= v->size) {
            text[i] = '\0';
            return nm_fail(err, "ids[%zu] = %d is not in the vocabulary (0 .. %d)", i, ids[i], v->size - 1);
        }
        text[i] = (char)v->bytes[ids[i]];
    }
    text[n] = '\0';
    return 0;
}

/* ---------------------------------------------------------------- training */

int nm_trainer_new(nm_trainer **out, const nm_config *cfg, nm_error *err) {
    NM_NEED(out, "nm_trainer_new: out is NULL");
    *out = NULL;
    NM_NEED(cfg, "nm_trainer_new: cfg is NULL");
    NM_NEED(cfg->vocab_size >= 1 && cfg->vocab_size <= 256,
         "nm_trainer_new: vocab_size=%d (expected 1 .. 256; set it from the data)", cfg->vocab_size);
    NM_NEED(nm_ensure_mpi() == 0, "nm_trainer_new: MPI could not be started");
    nm_config c = *cfg;
    c.expert_parallel = 0;
    nm_trainer *t = calloc(1, sizeof *t);
    NM_NEED(t, "nm_trainer_new: out of memory");
    if (nm_trainer_init(t, &c, NULL, MPI_COMM_SELF, err) != 0) {
        free(t);
        return -1;
    }
    nm_run_id_new(t->run_id, sizeof t->run_id);
    *out = t;
    return 0;
}

int nm_trainer_load(nm_trainer **out, const nm_config *cfg, const char *path, nm_error *err) {
    NM_NEED(out && path, "nm_trainer_load: out and path must not be NULL");
    *out = NULL;
    NM_NEED(nm_ensure_mpi() == 0, "nm_trainer_load: MPI could not be started");
    nm_config ck;
    nm_vocab v;
    nm_ckpt_meta meta;
    if (nm_ckpt_read_header(path, MPI_COMM_SELF, &ck, &v, &meta, err) != 0) return -1;
    nm_config c = cfg ? *cfg : ck;
    c.vocab_size = ck.vocab_size;
    if (cfg && nm_resume_check_config(&c, &ck, path, err) != 0) return -1;
    if (nm_trainer_new(out, &c, err) != 0) return -1;
    if (nm_trainer_resume(*out, path, err) != 0) {
        nm_trainer_delete(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

void nm_trainer_delete(nm_trainer *t) {
    if (!t) return;
    nm_trainer_free(t);
    free(t);
}

int nm_trainer_step(nm_trainer *t, const int32_t *x, const int32_t *y, nm_losses *out, nm_error *err) {
    NM_NEED(t && x && y, "nm_trainer_step: trainer, x and y must not be NULL");
    long n = (long)t->cfg.batch_size * t->cfg.block_size;
    if (check_ids(x, n, t->cfg.vocab_size, "x", err) != 0 || check_ids(y, n, t->cfg.vocab_size, "y", err) != 0)
        return -1;
    nm_losses l = nm_train_step_on(t, x, y);
    if (out) *out = l;
    return 0;
}

int nm_trainer_save(nm_trainer *t, const char *path, const nm_vocab *vocab, nm_error *err) {
    NM_NEED(t && path && vocab, "nm_trainer_save: trainer, path and vocab must not be NULL");
    NM_NEED(vocab->size == t->cfg.vocab_size, "nm_trainer_save: the vocabulary has %d characters, the model %d",
         vocab->size, t->cfg.vocab_size);
    return nm_ckpt_save(path, &t->model, &t->opt, vocab, t->step, t->tokens_seen, t->run_id, err);
}

nm_model *nm_trainer_get_model(nm_trainer *t) { return t ? &t->model : NULL; }

int64_t nm_trainer_get_step(const nm_trainer *t) { return t ? t->step : -1; }
