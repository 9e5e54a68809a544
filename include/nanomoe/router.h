/* Top-k router with softmax gates and the Switch load-balancing loss. */
#ifndef NANOMOE_ROUTER_H
#define NANOMOE_ROUTER_H

#include <stdint.h>

/* logits = m[N, C] @ Wr[C, E] (no bias). For every token: topi[N, K] = the K
 * largest logits in descending order (ties: lower expert first), gates[N, K] =
 * softmax over those K logits, probs[N, E] = softmax over all E.
 * Per-sequence statistics for the aux loss (sequences of seq_len tokens,
 * N / seq_len of them): psum[s, E] = sum of probs, top1[s, E] = tokens whose
 * first choice is each expert, ent[s] = sum over tokens of the entropy of the
 * full softmax (nats). */
void nm_router_forward(float *probs, int32_t *topi, float *gates, double *psum, double *top1, double *ent,
                       const float *m, const float *Wr, int N, int C, int E, int K, int seq_len);

/* aux = E * sum_e f_e P_e with f = top1 / ntok and P = psum / ntok over the
 * tokens the statistics cover. Writes d aux / d probs[n, e] = E f_e / ntok
 * (the same for every token) to dprob[E] when not NULL. */
double nm_router_aux(const double *psum, const double *top1, double ntok, int E, double *dprob);
/* The same over the statistics of nseq sequences taken together (psum, top1
 * [nseq, E], summed in sequence order). */
double nm_router_aux_seqs(const double *psum, const double *top1, int nseq, double ntok, int E, double *dprob);

/* Backward through gates (dgates[N, K] = dL/dgates) and the full softmax
 * (dL/dprobs[n, e] = dprob[e], from the aux loss, already scaled by its
 * coefficient): dWr[C, E] += (skipped if NULL), dm[N, C] +=. dlogits[N, E]
 * receives d loss / d logits. Rows are sequences of seq_len tokens, as in forward. */
void nm_router_backward(float *dm, float *dWr, float *dlogits, const float *m, const float *Wr, const float *probs,
                        const int32_t *topi, const float *gates, const float *dgates, const double *dprob, int N,
                        int C, int E, int K, int seq_len);

#endif
