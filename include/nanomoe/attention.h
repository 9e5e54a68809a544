/* Causal multi-head self-attention core (between the qkv and out projections). */
#ifndef NANOMOE_ATTENTION_H
#define NANOMOE_ATTENTION_H

#include <stdint.h>

/* Dropout on the attention weights: p, the site key, and the global index of
 * this rank's first sequence (element index = ((b_global*H + h)*T + i)*T + j). */
typedef struct nm_attn_dropout {
    float p;
    uint64_t key;
    long b_offset;
} nm_attn_dropout;

/* out[B*T, C] = per head h: dropout(softmax(mask(q k^T / sqrt(hd)))) v, heads
 * concatenated; q, k, v are the column blocks of qkv[B*T, 3C] (head h owns
 * columns h*hd..(h+1)*hd-1 of each). probs[B, H, T, T] keeps the softmax
 * (before dropout; zeros above the diagonal) for backward. scratch holds
 * T*T floats per OpenMP thread. */
void nm_attention_forward(float *out, float *probs, const float *qkv, int B, int T, int C, int H,
                          const nm_attn_dropout *drop, float *scratch);

/* dqkv[B*T, 3C] = gradient w.r.t. qkv (WRITES every element); scratch holds
 * 2*T*T floats per OpenMP thread. */
void nm_attention_backward(float *dqkv, const float *dout, const float *qkv, const float *probs, int B, int T, int C,
                           int H, const nm_attn_dropout *drop, float *scratch);

/* One query row against a KV cache (generation, no dropout): q[C] attends to
 * keys/values at positions 0..t of kcache/vcache [.., C] (row stride ld);
 * out[C]. scores holds t+1 floats. */
void nm_attention_decode(float *out, const float *q, const float *kcache, const float *vcache, int ld, int t, int C,
                         int H, float *scores);

#endif
