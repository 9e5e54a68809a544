/* Matrix products: row-major cblas_sgemm, split across this process's threads. */
#ifndef NANOMOE_GEMM_H
#define NANOMOE_GEMM_H

/* C[M,N] = alpha * op(A) op(B) + beta * C, row-major, op = transpose when ta/tb.
 * Outside a parallel region the product is split by rows (or columns when
 * N > M) over the OpenMP threads, each calling single-threaded OpenBLAS;
 * inside one it runs on the calling thread. */
void nm_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             float beta, float *C, int ldc);

/* C[B*T, N] = A[B*T, K] op(W) + beta * C (op = transpose when tw) for rows
 * in B blocks of T rows (whole sequences: one, or a gradient slice). Every
 * block is computed by products of one fixed shape (its T rows, cut into
 * fixed pieces of at most NM_GEMM_PIECE rows), spread over the threads. BLAS
 * kernels give a row results that depend on the shape of the call and the
 * row's place in it (FMA kernels handle the last rows of a call
 * differently), so this is what makes a token's result depend on its own
 * block only: not on B, the rank count or the thread count. */
void nm_gemm_seq(int tw, int B, int T, int N, int K, const float *A, int lda, const float *W, int ldw, float beta,
                 float *C, int ldc);
#define NM_GEMM_PIECE 256

/* Puts OpenBLAS in single-threaded mode (threads come from OpenMP instead) and
 * returns the number of OpenMP threads this process uses. Idempotent. */
int nm_threads_init(void);

/* Floating-point operations of one nm_gemm call. */
static inline double nm_gemm_flops(int M, int N, int K) { return 2.0 * M * N * K; }

#endif
