/* AdamW with decoupled weight decay; moments share the parameter layout. */
#ifndef NANOMOE_ADAMW_H
#define NANOMOE_ADAMW_H

#include <stdint.h>

#include "nanomoe/params.h"

typedef struct nm_adamw {
    float *m[2], *v[2]; /* first and second moments, [NM_BLOCK_DENSE], [NM_BLOCK_EXPERT] */
    int64_t step;       /* updates done */
    double b1, b2, eps, weight_decay;
    int decay_norms_biases;
} nm_adamw;

void nm_adamw_init(nm_adamw *o, const nm_param_layout *l, const nm_config *cfg);
void nm_adamw_free(nm_adamw *o);

/* One update of both blocks with learning rate lr:
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p). */
void nm_adamw_update(nm_adamw *o, const nm_param_layout *l, float *params[2], float *const grads[2], double lr);

/* Learning rate at step (1-based) under cfg's schedule. */
double nm_lr_at(const nm_config *cfg, int64_t step);

#endif
