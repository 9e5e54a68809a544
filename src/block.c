/* One transformer block: x_mid = x + drop(attn(ln1(x))); xout = x_mid + drop(moe(ln2(x_mid))). */
#include "nanomoe/block.h"

#include <stdlib.h>
#include <string.h>

#include "nanomoe/attention.h"
#include "nanomoe/error.h"
#include "nanomoe/ops.h"

void nm_dense_backward_chunked(const nm_grad_chunks *k, int rb, float *dinp, const float *gW, const float *gb,
                               const float *dout, const float *inp, const float *W, int Din, int Dout) {
    long N = k->n * k->rows;
    if (dinp) nm_dense_backward(dinp, NULL, NULL, dout, inp, W, (int)(N / rb), rb, Din, Dout);
    for (int ch = 0; ch < k->n; ch++) {
        long r0 = ch * k->rows;
        nm_dense_backward(NULL, nm_chunk_ptr(k, ch, gW), gb ? nm_chunk_ptr(k, ch, gb) : NULL, dout + r0 * Dout,
                          inp + r0 * Din, NULL, 1, (int)k->rows, Din, Dout);
    }
}

void nm_layernorm_backward_chunked(const nm_grad_chunks *k, float *dinp, const float *gs, const float *gb,
                                   const float *dout, const float *inp, const float *s, const float *mean,
                                   const float *rstd, int C) {
    nm_layernorm_backward(dinp, NULL, NULL, dout, inp, s, mean, rstd, (int)(k->n * k->rows), C);
    for (int ch = 0; ch < k->n; ch++) {
        long r0 = ch * k->rows;
        nm_layernorm_backward(NULL, nm_chunk_ptr(k, ch, gs), nm_chunk_ptr(k, ch, gb), dout + r0 * C, inp + r0 * C,
                              s, mean + r0, rstd + r0, (int)k->rows, C);
    }
}

void nm_layer_acts_alloc(nm_layer_acts *a, int B, int T, int C, int H, const nm_moe_dims *d, const nm_dispatch *x) {
    long N = (long)B * T;
    a->x = nm_falloc(N * C);
    a->ln1 = nm_falloc(N * C);
    a->ln1_mean = nm_falloc(N);
    a->ln1_rstd = nm_falloc(N);
    a->qkv = nm_falloc(N * 3 * C);
    a->probs = nm_falloc((long)B * H * T * T);
    a->att = nm_falloc(N * C);
    a->x_mid = nm_falloc(N * C);
    a->ln2 = nm_falloc(N * C);
    a->ln2_mean = nm_falloc(N);
    a->ln2_rstd = nm_falloc(N);
    nm_moe_acts_alloc(&a->moe, d, x);
}

void nm_layer_acts_free(nm_layer_acts *a) {
    free(a->x);
    free(a->ln1);
    free(a->ln1_mean);
    free(a->ln1_rstd);
    free(a->qkv);
    free(a->probs);
    free(a->att);
    free(a->x_mid);
    free(a->ln2);
    free(a->ln2_mean);
    free(a->ln2_rstd);
    nm_moe_acts_free(&a->moe);
    memset(a, 0, sizeof *a);
}

void nm_block_scratch_alloc(nm_block_scratch *s, int B, int T, int C, int threads, const nm_moe_dims *d,
                            const nm_dispatch *x) {
    long N = (long)B * T;
    s->tmp = nm_falloc(N * C);
    s->dtmp = nm_falloc(N * C);
    s->dln = nm_falloc(N * C);
    s->dqkv = nm_falloc(N * 3 * C);
    s->attn = nm_falloc((long)threads * 2 * T * T);
    nm_moe_scratch_alloc(&s->moe, d, x);
}

void nm_block_scratch_free(nm_block_scratch *s) {
    free(s->tmp);
    free(s->dtmp);
    free(s->dln);
    free(s->dqkv);
    free(s->attn);
    nm_moe_scratch_free(&s->moe);
    memset(s, 0, sizeof *s);
}

void nm_block_run_forward(const nm_block_run *r, nm_layer_acts *a, const nm_layer_view *w, float *xout) {
    double t0;
    int B = r->B, T = r->T, C = r->C, H = r->H, N = B * T, l = r->layer;
    size_t NC = (size_t)N * C;
    uint64_t base_nc = (uint64_t)r->b_offset * T * C; /* global index of the first element, per [N, C] site */
    nm_block_scratch *s = r->s;
    t0 = nm_now();
    nm_layernorm_forward(a->ln1, a->ln1_mean, a->ln1_rstd, a->x, w->ln1_s, w->ln1_b, N, C, r->eps);
    nm_timer_lap(r->timers, NM_T_LAYERNORM, &t0);
    t0 = nm_now();
    int rb = r->block_rows > 0 ? r->block_rows : T;
    nm_dense_forward(a->qkv, a->ln1, w->qkv_w, w->qkv_b, N / rb, rb, C, 3 * C);
    nm_timer_lap(r->timers, NM_T_ATTN_PROJ, &t0);
    t0 = nm_now();
    nm_attn_dropout ad = {r->p, nm_dropout_key(r->seed, r->step, NM_SITE_ATTN_W(l)), r->b_offset};
    nm_attention_forward(a->att, a->probs, a->qkv, B, T, C, H, &ad, s->attn);
    nm_timer_lap(r->timers, NM_T_ATTN_CORE, &t0);
    t0 = nm_now();
    nm_dense_forward(s->tmp, a->att, w->out_w, w->out_b, N / rb, rb, C, C);
    nm_timer_lap(r->timers, NM_T_ATTN_PROJ, &t0);
    t0 = nm_now();
    nm_dropout(s->tmp, NC, r->p, nm_dropout_key(r->seed, r->step, NM_SITE_ATTN_OUT(l)), base_nc);
    nm_add(a->x_mid, a->x, s->tmp, NC);
    nm_timer_lap(r->timers, NM_T_RESIDUAL, &t0);
    t0 = nm_now();
    nm_layernorm_forward(a->ln2, a->ln2_mean, a->ln2_rstd, a->x_mid, w->ln2_s, w->ln2_b, N, C, r->eps);
    nm_timer_lap(r->timers, NM_T_LAYERNORM, &t0);
    nm_moe_forward(s->tmp, &a->moe, a->ln2, w, &r->moe, &s->moe, r->dispatch);
    t0 = nm_now();
    nm_dropout(s->tmp, NC, r->p, nm_dropout_key(r->seed, r->step, NM_SITE_MOE_OUT(l)), base_nc);
    nm_add(xout, a->x_mid, s->tmp, NC);
    nm_timer_lap(r->timers, NM_T_RESIDUAL, &t0);
}

void nm_block_run_backward(const nm_block_run *r, nm_layer_acts *a, const nm_layer_view *w, const nm_layer_view *g,
                       const nm_grad_chunks *k, float *dx, const double *dprob) {
    int rb = r->block_rows > 0 ? r->block_rows : r->T;
    double t0;
    int B = r->B, T = r->T, C = r->C, H = r->H, l = r->layer;
    size_t NC = (size_t)B * T * C;
    uint64_t base_nc = (uint64_t)r->b_offset * T * C;
    nm_block_scratch *s = r->s;
    /* xout = x_mid + dropout(moe(ln2(x_mid))) */
    t0 = nm_now();
    memcpy(s->dtmp, dx, sizeof(float) * NC);
    nm_dropout(s->dtmp, NC, r->p, nm_dropout_key(r->seed, r->step, NM_SITE_MOE_OUT(l)), base_nc);
    nm_timer_lap(r->timers, NM_T_RESIDUAL, &t0);
    memset(s->dln, 0, sizeof(float) * NC);
    nm_moe_backward(s->dln, NULL, g, s->dtmp, &a->moe, a->ln2, w, dprob, &r->moe, &s->moe, r->dispatch);
    t0 = nm_now();
    for (int ch = 0; ch < k->n; ch++)
        nm_moe_router_weight_grad(nm_chunk_ptr(k, ch, g->router_w), a->ln2, &s->moe, (int)(ch * k->rows), (int)k->rows,
                                  &r->moe);
    nm_timer_lap(r->timers, NM_T_ROUTER, &t0);
    t0 = nm_now();
    nm_layernorm_backward_chunked(k, dx, g->ln2_s, g->ln2_b, s->dln, a->x_mid, w->ln2_s, a->ln2_mean, a->ln2_rstd, C);
    nm_timer_lap(r->timers, NM_T_LAYERNORM, &t0);
    /* x_mid = x + dropout(att @ Wout + bout) */
    t0 = nm_now();
    memcpy(s->dtmp, dx, sizeof(float) * NC);
    nm_dropout(s->dtmp, NC, r->p, nm_dropout_key(r->seed, r->step, NM_SITE_ATTN_OUT(l)), base_nc);
    nm_timer_lap(r->timers, NM_T_RESIDUAL, &t0);
    t0 = nm_now();
    memset(s->dln, 0, sizeof(float) * NC);
    nm_dense_backward_chunked(k, rb, s->dln, g->out_w, g->out_b, s->dtmp, a->att, w->out_w, C, C);
    nm_timer_lap(r->timers, NM_T_ATTN_PROJ, &t0);
    t0 = nm_now();
    nm_attn_dropout ad = {r->p, nm_dropout_key(r->seed, r->step, NM_SITE_ATTN_W(l)), r->b_offset};
    nm_attention_backward(s->dqkv, s->dln, a->qkv, a->probs, B, T, C, H, &ad, s->attn);
    nm_timer_lap(r->timers, NM_T_ATTN_CORE, &t0);
    t0 = nm_now();
    memset(s->dln, 0, sizeof(float) * NC);
    nm_dense_backward_chunked(k, rb, s->dln, g->qkv_w, g->qkv_b, s->dqkv, a->ln1, w->qkv_w, C, 3 * C);
    nm_timer_lap(r->timers, NM_T_ATTN_PROJ, &t0);
    t0 = nm_now();
    nm_layernorm_backward_chunked(k, dx, g->ln1_s, g->ln1_b, s->dln, a->x, w->ln1_s, a->ln1_mean, a->ln1_rstd, C);
    nm_timer_lap(r->timers, NM_T_LAYERNORM, &t0);
}
