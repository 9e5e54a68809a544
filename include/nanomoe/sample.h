/* Text generation with a KV cache: the prompt goes through one batched
 * forward, then each new token costs one row through the model. */
#ifndef NANOMOE_SAMPLE_H
#define NANOMOE_SAMPLE_H

#include <stdint.h>

#include "nanomoe/model.h"

typedef struct nm_sampler {
    nm_model *m;          /* created with activations for 1 x block_size, all experts local */
    float **kcache, **vcache; /* [n_layers][block_size, C] */
    int len;              /* positions held in the cache */
    int32_t *window;      /* [block_size] tokens of the current context */
    /* one-row buffers */
    float *x, *a, *qkv, *att, *tmp, *logits, *scores, *mean, *rstd;
    nm_moe_acts moe;
    nm_moe_scratch moe_scratch;
} nm_sampler;

void nm_sampler_init(nm_sampler *s, nm_model *m);
void nm_sampler_free(nm_sampler *s);

/* Starts a context from ids (only the last block_size are kept, as the
 * reference crops); returns the logits [V] that predict the next token. */
const float *nm_sampler_prefill(nm_sampler *s, const int32_t *ids, int n);

/* Appends one token and returns the next logits [V]. While the context is
 * shorter than block_size this is one cached row; once it is full the window
 * slides and positions shift, so (as in the reference) the whole window of
 * block_size tokens is recomputed. */
const float *nm_sampler_push(nm_sampler *s, int32_t token);

/* Draws a token from logits [V]: divide by temperature, keep the top_k largest
 * (0 = all; ties with the k-th are kept), softmax, then one uniform draw
 * number `counter` of stream `key`. temperature 0 means greedy (argmax). */
int32_t nm_sample_logits(const float *logits, int V, double temperature, int top_k, uint64_t key, uint64_t counter,
                         float *work);

#endif
