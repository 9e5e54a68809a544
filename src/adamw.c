/* AdamW with decoupled weight decay, and the learning-rate schedule. */
#include "nanomoe/adamw.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nanomoe/error.h"

void nm_adamw_init(nm_adamw *o, const nm_param_layout *l, const nm_config *c) {
    memset(o, 0, sizeof *o);
    for (int b = 0; b < 2; b++) {
        size_t n = b == NM_BLOCK_DENSE ? l->n_dense : l->n_expert;
        o->m[b] = nm_calloc(n, sizeof(float));
        o->v[b] = nm_calloc(n, sizeof(float));
    }
    o->b1 = c->adam_b1;
    o->b2 = c->adam_b2;
    o->eps = c->adam_eps;
    o->weight_decay = c->weight_decay;
    o->decay_norms_biases = c->decay_norms_biases;
}

void nm_adamw_free(nm_adamw *o) {
    for (int b = 0; b < 2; b++) {
        free(o->m[b]);
        free(o->v[b]);
    }
    memset(o, 0, sizeof *o);
}

void nm_adamw_update(nm_adamw *o, const nm_param_layout *l, float *params[2], float *const grads[2], double lr) {
    o->step++;
    float b1 = (float)o->b1, b2 = (float)o->b2, eps = (float)o->eps;
    /* bias corrections in double: b2^t is close to 1 for small t */
    float c1 = (float)(1.0 / (1.0 - pow(o->b1, (double)o->step)));
    float c2 = (float)(1.0 / (1.0 - pow(o->b2, (double)o->step)));
    float flr = (float)lr;
    for (int i = 0; i < l->n; i++) {
        const nm_param_info *pi = &l->info[i];
        float wd = (pi->no_decay && !o->decay_norms_biases) ? 0.0f : (float)o->weight_decay;
        int b = pi->block;
        float *p = params[b] + pi->offset, *m = o->m[b] + pi->offset, *v = o->v[b] + pi->offset;
        const float *g = grads[b] + pi->offset;
        size_t n = pi->count;
#pragma omp parallel for simd if (n > 65536)
        for (size_t j = 0; j < n; j++) {
            float gj = g[j];
            m[j] = b1 * m[j] + (1.0f - b1) * gj;
            v[j] = b2 * v[j] + (1.0f - b2) * gj * gj;
            float mh = m[j] * c1, vh = v[j] * c2;
            p[j] -= flr * (mh / (sqrtf(vh) + eps) + wd * p[j]);
        }
    }
}

double nm_lr_at(const nm_config *c, int64_t step) {
    if (strcmp(c->lr_schedule, "cosine") != 0) return c->learning_rate;
    if (step <= c->warmup_iters) return c->learning_rate * (double)step / (double)(c->warmup_iters > 0 ? c->warmup_iters : 1);
    double span = (double)(c->max_iters - c->warmup_iters);
    double t = span > 0 ? (double)(step - c->warmup_iters) / span : 1.0;
    if (t > 1.0) t = 1.0;
    return c->min_lr + 0.5 * (c->learning_rate - c->min_lr) * (1.0 + cos(M_PI * t));
}
