/* Elementwise and row-wise ops as forward/backward pairs over flat float arrays.
 * Shapes are given per buffer; N = rows (tokens). Backward functions ADD into
 * parameter gradients and input gradients unless stated otherwise. */
#ifndef NANOMOE_OPS_H
#define NANOMOE_OPS_H

#include <stddef.h>
#include <stdint.h>

/* out[B*T, C] = tok[ids[b,t]] + pos[t]. */
void nm_embedding_forward(float *out, const int32_t *ids, const float *tok, const float *pos, int B, int T, int C);
/* dtok[V, C] += scatter of dout by ids; dpos[T, C] += sum over b of dout. */
void nm_embedding_backward(float *dtok, float *dpos, const float *dout, const int32_t *ids, int B, int T, int C);

/* out[N, C] = (inp - mean) * rstd * s + b; mean, rstd [N] are kept for backward. */
void nm_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *s, const float *b,
                          int N, int C, float eps);
/* dinp[N, C] += (skipped if NULL), ds[C] +=, db[C] += (skipped if ds is NULL; sums over
 * rows in row order, whatever the threads). */
void nm_layernorm_backward(float *dinp, float *ds, float *db, const float *dout, const float *inp, const float *s,
                           const float *mean, const float *rstd, int N, int C);

/* out[N, Dout] = inp[N, Din] @ W[Din, Dout] + b[Dout] (b may be NULL), for
 * N = B * T rows in B blocks of T rows (whole sequences): each block is
 * computed by products of the same shape, so a row's result does not depend
 * on B (nor on the rank or thread count); see nm_gemm_seq. */
void nm_dense_forward(float *out, const float *inp, const float *W, const float *b, int B, int T, int Din, int Dout);
/* dinp[N, Din] += dout @ W^T per sequence as in forward (skipped if dinp NULL);
 * dW[Din, Dout] += inp^T @ dout over all N rows (skipped if NULL); db[Dout] +=
 * column sums (skipped if NULL). */
void nm_dense_backward(float *dinp, float *dW, float *db, const float *dout, const float *inp, const float *W, int B,
                       int T, int Din, int Dout);
/* db[Dout] += column sums of dout[N, Dout], in row order. */
void nm_colsum_add(float *db, const float *dout, int N, int Dout);
/* Sizes the helper of nm_colsum_add for up to `rows` rows now, so that later
 * calls allocate nothing. */
void nm_colsum_reserve(size_t rows);

/* tanh GELU: out[n] = 0.5 u (1 + tanh(sqrt(2/pi)(u + 0.044715 u^3))). out may alias inp. */
void nm_gelu_forward(float *out, const float *inp, size_t n);
/* dinp[n] = dout[n] * gelu'(inp[n]) (WRITES; dinp may alias dout). If act is
 * not NULL it also receives gelu(inp), so backward needs only the pre-activation. */
void nm_gelu_backward(float *dinp, float *act, const float *inp, const float *dout, size_t n);

/* Inverted dropout in place: x[i] *= keep ? 1/(1-p) : 0, keep decided by the
 * counter-based stream `key` at global element index base + i. The same call
 * applies the mask to a gradient in backward. No-op when p == 0. */
void nm_dropout(float *x, size_t n, float p, uint64_t key, uint64_t base);
/* Key of a dropout site: (seed, step, site); sites are numbered by the model. */
uint64_t nm_dropout_key(uint64_t seed, uint64_t step, uint64_t site);

/* out[n] = a[n] + b[n] (out may alias a). */
void nm_add(float *out, const float *a, const float *b, size_t n);

/* Cross-entropy of logits[N, V] against targets[N]: writes each row's loss to
 * losses[N] and returns their sum (double, in row order). */
double nm_crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V);
/* dlogits[N, V] = scale * (softmax(logits) - onehot(target)) (WRITES). */
void nm_crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N, int V, float scale);

/* In-place softmax of each row of x[N, V]. */
void nm_softmax_rows(float *x, int N, int V);

#endif
