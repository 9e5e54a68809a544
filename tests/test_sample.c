/* Generation: KV-cache logits equal full-recompute logits (before and after
 * the window slides), sampling is reproducible, and top-k / temperature behave. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "testutil.h"
#include "nanomoe/rng.h"
#include "nanomoe/sample.h"

/* Logits of the last position of a full forward over ids[0, n), cropped to block_size. */
static void full_logits(nm_model *m, const int32_t *ids, int n, float *out) {
    int T = m->cfg.block_size;
    if (n > T) {
        ids += n - T;
        n = T;
    }
    nm_forward_opts o = {.training = 0, .step = 0, .b_offset = 0, .b_global = 1};
    nm_model_forward(m, ids, NULL, 1, n, &o);
    memcpy(out, m->acts.logits + (long)(n - 1) * m->cfg.vocab_size, sizeof(float) * (size_t)m->cfg.vocab_size);
}

static void generate(nm_model *m, const int32_t *prompt, int np, int n, uint64_t seed, int32_t *out) {
    nm_sampler s;
    nm_sampler_init(&s, m);
    float *work = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    uint64_t key = nm_rng_key(seed, 0x73616d70ULL, 0, 0);
    const float *lg = nm_sampler_prefill(&s, prompt, np);
    for (int i = 0; i < n; i++) {
        out[i] = nm_sample_logits(lg, m->cfg.vocab_size, 0.8, 10, key, (uint64_t)i, work);
        lg = nm_sampler_push(&s, out[i]);
    }
    free(work);
    nm_sampler_free(&s);
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    nm_config cfg;
    nm_test_small_config(&cfg);
    cfg.n_heads = 4;
    cfg.block_size = 16;
    cfg.vocab_size = 23;
    cfg.seed = 11;
    int V = cfg.vocab_size, T = cfg.block_size;
    nm_error err;
    nm_model m, full;
    CHECK(nm_model_create(&m, &cfg, MPI_COMM_WORLD, 1, T, &err) == 0, "%s", err.msg);
    CHECK(nm_model_create(&full, &cfg, MPI_COMM_WORLD, 1, T, &err) == 0, "%s", err.msg);
    /* make the biases and norms non-trivial so that every path matters */
    for (int i = 0; i < m.layout.n; i++) {
        float *p = nm_param_ptr(&m.layout, i, m.params[0], m.params[1]);
        for (size_t j = 0; j < m.layout.info[i].count; j++)
            p[j] += (float)(0.05 * (nm_rng_uniform(5, (uint64_t)i * 100000 + j) - 0.5));
    }
    memcpy(full.params[0], m.params[0], sizeof(float) * m.layout.n_dense);
    memcpy(full.params[1], m.params[1], sizeof(float) * m.layout.n_expert);

    /* KV cache against full recompute, over 3 windows so that the window slides */
    int n = 3 * T;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = (int32_t)nm_rng_below(3, (uint64_t)i, (uint64_t)V);
    float *ref = malloc(sizeof(float) * (size_t)V);
    nm_sampler s;
    nm_sampler_init(&s, &m);
    int np = 3;
    const float *lg = nm_sampler_prefill(&s, ids, np);
    double worst_inc = 0.0, worst_slide = 0.0;
    for (int len = np;; len++) {
        full_logits(&full, ids, len, ref);
        double d = 0.0;
        for (int v = 0; v < V; v++) d = fmax(d, fabs((double)lg[v] - ref[v]));
        if (len <= T) worst_inc = fmax(worst_inc, d);
        else worst_slide = fmax(worst_slide, d);
        if (len == n) break;
        lg = nm_sampler_push(&s, ids[len]);
    }
    printf("KV cache vs full recompute: max |logit diff| %.3g within the window, %.3g once it slides\n", worst_inc,
           worst_slide);
    /* float32 with different summation orders (one row vs a batched sgemm) */
    CHECK(worst_inc < 1e-4, "cached logits differ from full recompute by %g", worst_inc);
    CHECK(worst_slide < 1e-4, "logits after the window slides differ by %g", worst_slide);
    nm_sampler_free(&s);

    /* a prompt longer than the window is cropped like the reference */
    nm_sampler_init(&s, &m);
    lg = nm_sampler_prefill(&s, ids, n);
    full_logits(&full, ids, n, ref);
    double d = 0.0;
    for (int v = 0; v < V; v++) d = fmax(d, fabs((double)lg[v] - ref[v]));
    CHECK(d < 1e-4, "long prompt: logits differ by %g", d);
    nm_sampler_free(&s);

    /* reproducible sampling */
    int ng = 60;
    int32_t *a = malloc(sizeof(int32_t) * ng), *b = malloc(sizeof(int32_t) * ng), *c = malloc(sizeof(int32_t) * ng);
    generate(&m, ids, 2, ng, 42, a);
    generate(&m, ids, 2, ng, 42, b);
    generate(&m, ids, 2, ng, 43, c);
    CHECK(memcmp(a, b, sizeof(int32_t) * ng) == 0, "same seed gave different text");
    CHECK(memcmp(a, c, sizeof(int32_t) * ng) != 0, "different seeds gave the same text");

    /* nm_sample_logits: greedy, top-1, top-k support and temperature */
    float logits[8] = {0.1f, 2.0f, -1.0f, 1.5f, 0.0f, 3.0f, -2.0f, 1.0f}, work[8];
    CHECK(nm_sample_logits(logits, 8, 0.0, 0, 1, 0, work) == 5, "greedy is not the argmax");
    int top1_ok = 1, topk_ok = 1, counts[8] = {0};
    for (uint64_t i = 0; i < 20000; i++) {
        top1_ok &= nm_sample_logits(logits, 8, 1.0, 1, 9, i, work) == 5;
        int t = nm_sample_logits(logits, 8, 1.0, 3, 9, i, work);
        topk_ok &= t == 5 || t == 1 || t == 3;
        counts[nm_sample_logits(logits, 8, 1.0, 0, 10, i, work)]++;
    }
    CHECK(top1_ok, "top-k 1 sampled something other than the argmax");
    CHECK(topk_ok, "top-k 3 sampled outside the 3 largest logits");
    /* unfiltered sampling follows softmax(logits): check the two largest probabilities */
    double z = 0.0;
    for (int v = 0; v < 8; v++) z += exp(logits[v]);
    for (int v = 0; v < 8; v++) {
        double pexp = exp(logits[v]) / z, pobs = counts[v] / 20000.0;
        CHECK(fabs(pobs - pexp) < 4 * sqrt(pexp * (1 - pexp) / 20000.0) + 1e-3, "token %d: frequency %.4f, expected %.4f",
              v, pobs, pexp);
    }
    free(a);
    free(b);
    free(c);
    free(ids);
    free(ref);
    nm_model_free(&m);
    nm_model_free(&full);
    int rc = nm_test_report("test_sample");
    MPI_Finalize();
    return rc;
}
