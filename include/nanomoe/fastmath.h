/* Vectorisable float exp for the elementwise ops (GELU, softmax): the loops
 * that call it compile to SIMD without -ffast-math. */
#ifndef NANOMOE_FASTMATH_H
#define NANOMOE_FASTMATH_H

#include <stdint.h>

/* exp(x) with relative error below 2e-7 on [-87, 88]; inputs outside are clamped
 * (exp(-87) ~ 1.6e-38 stands in for underflow, which is what masked scores need). */
static inline float nm_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    /* x = n ln2 + r with |r| <= ln2/2; n by the 1.5 * 2^23 rounding trick */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    /* minimax polynomial of (exp(r) - 1 - r) / r^2 */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union {
        int32_t i;
        float f;
    } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

#endif
