/* Counter-based random numbers: every draw is a pure function of (key, counter),
 * so results never depend on rank count, thread count or call order. */
#ifndef NANOMOE_RNG_H
#define NANOMOE_RNG_H

#include <math.h>
#include <stdint.h>

#define NM_RNG_GAMMA 0x9E3779B97F4A7C15ULL

/* SplitMix64 output function: a bijective 64-bit mixer. */
static inline uint64_t nm_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Derives a stream key from a seed and up to three stream coordinates. */
static inline uint64_t nm_rng_key(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    uint64_t k = nm_mix64(seed + NM_RNG_GAMMA);
    k = nm_mix64(k ^ (a + 0x632BE59BD9B4E019ULL));
    k = nm_mix64(k ^ (b + 0x8CB92BA72F3D8DD7ULL));
    k = nm_mix64(k ^ (c + 0xD1B54A32D192ED03ULL));
    return k;
}

/* The counter-th 64-bit draw of stream key (SplitMix64 over a Weyl sequence). */
static inline uint64_t nm_rng_u64(uint64_t key, uint64_t counter) {
    return nm_mix64(key + (counter + 1) * NM_RNG_GAMMA);
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline double nm_rng_uniform(uint64_t key, uint64_t counter) {
    return (double)(nm_rng_u64(key, counter) >> 11) * 0x1.0p-53;
}

/* Uniform integer in [0, n), n > 0 (multiply-shift; bias below 2^-40 for n < 2^24). */
static inline uint64_t nm_rng_below(uint64_t key, uint64_t counter, uint64_t n) {
    return (uint64_t)(((unsigned __int128)nm_rng_u64(key, counter) * n) >> 64);
}

/* Standard normal by Box-Muller from draws 2*counter and 2*counter+1. */
static inline double nm_rng_normal(uint64_t key, uint64_t counter) {
    double u1 = ((double)(nm_rng_u64(key, 2 * counter) >> 11) + 1.0) * 0x1.0p-53; /* (0, 1] */
    double u2 = nm_rng_uniform(key, 2 * counter + 1);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Standard normal truncated to [-2, 2] by rejection; attempts use disjoint counters. */
static inline double nm_rng_trunc_normal(uint64_t key, uint64_t counter) {
    for (uint64_t attempt = 0;; attempt++) {
        double z = nm_rng_normal(key, counter * 64 + attempt);
        if (z >= -2.0 && z <= 2.0) return z;
        if (attempt == 63) return 0.0; /* probability 0.0455^64: never in practice */
    }
}

#endif
