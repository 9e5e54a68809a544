/* Tiny test helper: CHECK counts failures; a test exits non-zero if any failed. */
#ifndef NANOMOE_TEST_CHECK_H
#define NANOMOE_TEST_CHECK_H

#include <math.h>
#include <stdio.h>

static int nm_test_failures = 0;
static int nm_test_checks = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        nm_test_checks++;                                                 \
        if (!(cond)) {                                                    \
            nm_test_failures++;                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* |a - b| <= tol * max(|a|, |b|, floor) */
static inline int nm_close(double a, double b, double tol, double floor) {
    double s = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    if (s < floor) s = floor;
    return fabs(a - b) <= tol * s;
}

static inline int nm_test_report(const char *name) {
    if (nm_test_failures) fprintf(stderr, "%s: %d of %d checks FAILED\n", name, nm_test_failures, nm_test_checks);
    else printf("%s: all %d checks passed\n", name, nm_test_checks);
    return nm_test_failures ? 1 : 0;
}

#endif
