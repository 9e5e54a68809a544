/* Shared test fixtures: a deterministic English-like text (for tests that must
 * not depend on Tiny Shakespeare) and a small model configuration. */
#ifndef NANOMOE_TEST_UTIL_H
#define NANOMOE_TEST_UTIL_H

#include <stdio.h>
#include <string.h>

#include "nanomoe/config.h"
#include "nanomoe/rng.h"

/* The reference defaults shrunk to configs/tiny.ini's model: d_model 32, 2
 * layers, 2 heads, d_ff 64, 4 experts, top-2, block 32, batch 8. */
static inline void nm_test_small_config(nm_config *c) {
    nm_config_defaults(c);
    c->d_model = 32;
    c->n_layers = 2;
    c->n_heads = 2;
    c->d_ff = 64;
    c->n_experts = 4;
    c->top_k = 2;
    c->block_size = 32;
    c->batch_size = 8;
    c->eval_iters = 2;
}

/* Writes about `bytes` characters of sentences drawn from a small word list to path. */
static inline int nm_test_write_text(const char *path, size_t bytes, uint64_t seed) {
    static const char *words[] = {"the", "king", "and", "queen", "of", "a", "fair", "night", "shall", "speak",
                                  "my", "lord", "with", "love", "to", "thee", "we", "are", "not", "what",
                                  "good", "sir", "come", "hither", "death", "is", "sweet", "but", "time", "war"};
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    size_t n = 0, i = 0;
    uint64_t key = nm_rng_key(seed, 99, 0, 0);
    while (n < bytes) {
        int len = 4 + (int)nm_rng_below(key, i++, 8);
        for (int w = 0; w < len; w++) {
            const char *word = words[nm_rng_below(key, i++, sizeof words / sizeof *words)];
            if (w == 0) n += (size_t)fprintf(f, "%c%s", word[0] - 32, word + 1); /* capitalised */
            else n += (size_t)fprintf(f, " %s", word);
        }
        n += (size_t)fprintf(f, nm_rng_below(key, i++, 3) ? ".\n" : ",\n");
    }
    fclose(f);
    return 0;
}

#endif
