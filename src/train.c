/* Training step and evaluation. */
#include "nanomoe/train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/agree.h"
#include "nanomoe/ckpt.h"
#include "nanomoe/error.h"

int nm_dataset_load_agreed(nm_dataset *d, const char *path, const nm_vocab *vocab, MPI_Comm comm, nm_error *err) {
    int loaded = nm_dataset_load(d, path, vocab, err) == 0;
    char id[256] = "", what[NM_PATH_MAX + 32];
    if (loaded)
        snprintf(id, sizeof id, "bytes=%zu\nvocabulary=%d characters\ncontent hash=%016llx\n", d->n_tokens,
                 d->vocab.size, (unsigned long long)d->hash);
    snprintf(what, sizeof what, "data '%s' as read here", path);
    if (nm_agree_same(comm, loaded, what, id, err)) return 0;
    if (loaded) nm_dataset_free(d);
    return -1;
}

int nm_trainer_init(nm_trainer *t, const nm_config *cfg, const nm_dataset *data, MPI_Comm comm, nm_error *err) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    t->data = data;
    if (data && cfg->vocab_size != data->vocab.size)
        return nm_fail(err, "vocab_size=%d does not match the data's %d characters", cfg->vocab_size, data->vocab.size);
    int rank, size;
    NM_MPI_CHECK(MPI_Comm_rank(comm, &rank));
    NM_MPI_CHECK(MPI_Comm_size(comm, &size));
    if (cfg->batch_size < size)
        return nm_fail(err, "config: batch_size=%d must be >= the number of ranks (%d): each rank takes a slice of the "
                       "global batch", cfg->batch_size, size);
    int G, tree;
    if (nm_grad_chunks_plan(cfg, size, &G, &tree, err) != 0) return -1;
    nm_dist_batch_slice(cfg->batch_size, rank, size, &t->b0, &t->b1);
    int B = t->b1 - t->b0;
    if (nm_model_create(&t->model, cfg, comm, B, cfg->block_size, err) != 0) return -1;
    nm_model_set_grad_chunks(&t->model, tree ? G / size : 1, tree);
    nm_adamw_init(&t->opt, &t->model.layout, cfg);
    size_t n = (size_t)B * cfg->block_size;
    t->x = nm_malloc(sizeof(int32_t) * n);
    t->y = nm_malloc(sizeof(int32_t) * n);
    return 0;
}

void nm_trainer_free(nm_trainer *t) {
    nm_adamw_free(&t->opt);
    nm_model_free(&t->model);
    free(t->x);
    free(t->y);
    memset(t, 0, sizeof *t);
}

int nm_trainer_resume(nm_trainer *t, const char *path, nm_error *err) {
    nm_config cfg;
    nm_vocab vocab;
    nm_ckpt_meta meta;
    int rc = nm_ckpt_read_header(path, t->model.comm, &cfg, &vocab, &meta, err);
    if (rc != 0) return rc;
    /* the header is the same on every rank now: these fail everywhere (-2) */
    if (!meta.has_optimizer)
        return nm_fail(err, "checkpoint '%s' has no /optimizer: it cannot continue a run", path), -2;
    if (t->data &&
        (vocab.size != t->data->vocab.size || memcmp(vocab.bytes, t->data->vocab.bytes, (size_t)vocab.size) != 0))
        return nm_fail(err, "checkpoint '%s' was trained on another vocabulary (%d characters) than the data (%d)",
                       path, vocab.size, t->data->vocab.size), -2;
    if ((rc = nm_ckpt_read_params(path, &t->model, &t->opt, err)) != 0) return rc;
    t->step = meta.step;
    t->tokens_seen = meta.tokens_seen;
    snprintf(t->run_id, sizeof t->run_id, "%s", meta.run_id); /* continuing that run */
    return 0;
}

/* Global L2 norm of the gradient, for clipping (after the reduction: dense
 * gradients are the same on every rank, experts counted once per group). */
static double grad_norm(nm_model *m) {
    double dense = 0.0, experts = 0.0;
    const float *g = m->grads[0];
    for (size_t i = 0; i < m->layout.n_dense; i++) dense += (double)g[i] * g[i];
    g = m->grads[1];
    for (size_t i = 0; i < m->layout.n_expert; i++) experts += (double)g[i] * g[i];
    if (m->dist.ep > 1) NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &experts, 1, MPI_DOUBLE, MPI_SUM, m->dist.ep_comm));
    return sqrt(dense + experts);
}

static void scale_grads(nm_model *m, float s) {
    for (int b = 0; b < 2; b++) {
        size_t n = b == NM_BLOCK_DENSE ? m->layout.n_dense : m->layout.n_expert;
        float *g = m->grads[b];
        for (size_t i = 0; i < n; i++) g[i] *= s;
    }
}

nm_losses nm_train_step(nm_trainer *t) {
    const nm_config *c = &t->cfg;
    double t0 = nm_now();
    nm_batch_sample(t->data->tokens, t->data->n_train, c->block_size, (uint64_t)c->seed, NM_STREAM_TRAIN,
                    (uint64_t)t->step + 1, t->b0, t->b1, t->x, t->y);
    t->model.timers.sec[NM_T_DATA] += nm_now() - t0;
    return nm_train_step_on(t, t->x, t->y);
}

nm_losses nm_train_step_on(nm_trainer *t, const int32_t *x, const int32_t *y) {
    nm_model *m = &t->model;
    const nm_config *c = &t->cfg;
    int T = c->block_size, B = t->b1 - t->b0;
    uint64_t step = (uint64_t)t->step + 1;
    nm_forward_opts o = {.training = 1,
                         .step = step,
                         .b_offset = t->b0,
                         .b_global = c->batch_size,
                         .block_seqs = nm_model_block_seqs(m, B)};
    nm_model_forward(m, x, y, B, T, &o);
    nm_model_zero_grad(m);
    nm_model_backward(m);
    /* each rank's gradient is already scaled by the global token count, so the
     * sum over ranks is the gradient of the global loss */
    nm_model_reduce_grads(m);
    double t1 = nm_now();
    if (c->grad_clip > 0.0) {
        t->grad_norm = grad_norm(m);
        if (t->grad_norm > c->grad_clip) scale_grads(m, (float)(c->grad_clip / t->grad_norm));
    }
    nm_adamw_update(&t->opt, &m->layout, m->params, m->grads, nm_lr_at(c, (int64_t)step));
    m->timers.sec[NM_T_OPTIMIZER] += nm_now() - t1;
    t->step = (int64_t)step;
    t->tokens_seen += (int64_t)c->batch_size * T;
    nm_losses r = {m->loss, m->ce, m->aux};
    return r;
}

nm_losses nm_evaluate(nm_trainer *t) {
    nm_model *m = &t->model;
    const nm_config *c = &t->cfg;
    int T = c->block_size, B = t->b1 - t->b0;
    const int32_t *val = t->data->tokens + t->data->n_train;
    size_t nval = t->data->n_tokens - t->data->n_train;
    nm_losses sum = {0, 0, 0};
    for (int i = 0; i < c->eval_iters; i++) {
        /* sequence ids i*B_global + b keep eval batches distinct and rank-count independent */
        long g0 = (long)i * c->batch_size;
        nm_batch_sample(val, nval, T, (uint64_t)c->seed, NM_STREAM_EVAL, (uint64_t)t->step, (int)(g0 + t->b0),
                        (int)(g0 + t->b1), t->x, t->y);
        nm_forward_opts o = {
            .training = 0, .step = 0, .b_offset = t->b0, .b_global = c->batch_size, .block_seqs = nm_model_block_seqs(m, B)};
        nm_model_forward(m, t->x, t->y, B, T, &o);
        sum.loss += m->loss;
        sum.ce += m->ce;
        sum.aux += m->aux;
    }
    sum.loss /= c->eval_iters;
    sum.ce /= c->eval_iters;
    sum.aux /= c->eval_iters;
    return sum;
}

nm_split_eval nm_evaluate_split(nm_model *m, const int32_t *tokens, size_t len, int batch) {
    int T = m->cfg.block_size, P = m->nranks, r = m->rank;
    long nw = len >= (size_t)T + 1 ? (long)((len - (size_t)T - 1) / (size_t)T) + 1 : 0;
    int cap = m->cap_B;
    if (batch < 1) batch = 1;
    if ((batch + P - 1) / P > cap) batch = cap * P; /* never more windows than the activations hold */
    int32_t *x = nm_malloc(sizeof(int32_t) * (size_t)cap * T), *y = nm_malloc(sizeof(int32_t) * (size_t)cap * T);
    /* per-window sums, nonzero only for this rank's windows: merged over ranks
     * by a sum with zeros (exact), then added in window order, so the result
     * does not depend on the rank count */
    double *win = nm_calloc((size_t)(nw > 0 ? nw : 1) * 2, sizeof(double)); /* [nw] ce sums | [nw] aux */
    /* rounds of `batch` consecutive windows, cut into rank slices like a
     * training batch: the experts see the same rows whatever P is */
    for (long w0 = 0; w0 < nw; w0 += batch) {
        int n = nw - w0 < batch ? (int)(nw - w0) : batch, b0, b1;
        nm_dist_batch_slice(n, r, P, &b0, &b1);
        int B = b1 - b0;
        for (int b = 0; b < B; b++) {
            size_t s = (size_t)(w0 + b0 + b) * T;
            memcpy(x + (size_t)b * T, tokens + s, sizeof(int32_t) * (size_t)T);
            memcpy(y + (size_t)b * T, tokens + s + 1, sizeof(int32_t) * (size_t)T);
        }
        nm_forward_opts o = {.training = 0, .step = 0, .b_offset = w0 + b0, .b_global = n};
        nm_model_forward(m, x, y, B, T, &o);
        for (int b = 0; b < B; b++) {
            double ce = 0.0;
            for (int t = 0; t < T; t++) ce += m->acts.losses[(long)b * T + t];
            win[w0 + b0 + b] = ce;
            win[nw + w0 + b0 + b] = nm_model_seq_aux(m, b);
        }
    }
    if (P > 1 && nw > 0) NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, win, (int)(2 * nw), MPI_DOUBLE, MPI_SUM, m->comm));
    double ce = 0.0, aux = 0.0;
    for (long w = 0; w < nw; w++) {
        ce += win[w];
        aux += win[nw + w];
    }
    free(x);
    free(y);
    free(win);
    nm_split_eval res = {0};
    res.windows = nw;
    res.tokens = nw * T;
    res.ce = nw ? ce / (double)res.tokens : NAN;
    res.aux = nw ? aux / (double)nw : NAN;
    res.loss = res.ce + m->cfg.aux_loss_coeff * res.aux;
    return res;
}
