/* Matrix products: row-major cblas_sgemm, split across this process's threads. */
#ifndef NANOMOE_GEMM_H
#define NANOMOE_GEMM_H

/* C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta/tb.
 * Outside a parallel region the product is split by rows (or columns when
 * N > M) over the OpenMP threads, each calling single-threaded OpenBLAS;
 * inside one it runs on the calling thread. */
void nm_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             float beta, float *C, int ldc);

/* Puts OpenBLAS in single-threaded mode (threads come from OpenMP instead) and
 * returns the number of OpenMP threads this process uses. Idempotent. */
int nm_threads_init(void);

/* Floating-point operations of one nm_gemm call. */
static inline double nm_gemm_flops(int M, int N, int K) { return 2.0 * M * N * K; }

#endif
