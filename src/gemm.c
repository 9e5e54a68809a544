/* Matrix products over cblas_sgemm, split across OpenMP threads.
 * Measured on 2 cores: splitting by rows with single-threaded OpenBLAS matches
 * or beats OpenBLAS's own pool on the model's shapes, and keeps one thread
 * pool for the whole program (two pools of spinning threads steal each other's cores). */
#include "nanomoe/gemm.h"

#include <cblas.h>
#include <omp.h>

/* Below this many FLOPs a product is not worth waking the other threads. */
#define SPLIT_MIN_FLOPS (1 << 21)

void nm_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
             float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    enum CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
    int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (nt <= 1 || nm_gemm_flops(M, N, K) < SPLIT_MIN_FLOPS || (M < 32 && N < 32)) {
        cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int by_rows = M >= N;
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num(), n = omp_get_num_threads();
        int total = by_rows ? M : N;
        /* chunk edges on multiples of 16 keep OpenBLAS on its full-width kernels */
        int per = ((total + n - 1) / n + 15) / 16 * 16;
        int lo = id * per, hi = lo + per < total ? lo + per : total;
        if (lo < hi) {
            if (by_rows) {
                const float *Ap = ta ? A + lo : A + (long)lo * lda;
                cblas_sgemm(CblasRowMajor, TA, TB, hi - lo, N, K, alpha, Ap, lda, B, ldb, beta, C + (long)lo * ldc,
                            ldc);
            } else {
                const float *Bp = tb ? B + (long)lo * ldb : B + lo;
                cblas_sgemm(CblasRowMajor, TA, TB, M, hi - lo, K, alpha, A, lda, Bp, ldb, beta, C + lo, ldc);
            }
        }
    }
}

void nm_gemm_seq(int tw, int B, int T, int N, int K, const float *A, int lda, const float *W, int ldw, float beta,
                 float *C, int ldc) {
    if (B <= 0 || T <= 0 || N <= 0) return;
    enum CBLAS_TRANSPOSE TW = tw ? CblasTrans : CblasNoTrans;
    /* pieces: a function of T alone; edges on multiples of 16 where possible */
    int np = (T + NM_GEMM_PIECE - 1) / NM_GEMM_PIECE, per = ((T + np - 1) / np + 15) / 16 * 16;
    np = (T + per - 1) / per;
    long tasks = (long)B * np;
    /* which thread runs a piece never changes its bits: parallelise only when worth it */
    int par = !omp_in_parallel() && omp_get_max_threads() > 1 && tasks > 1 &&
              nm_gemm_flops(B * T, N, K) >= SPLIT_MIN_FLOPS;
#pragma omp parallel for schedule(static) if (par)
    for (long i = 0; i < tasks; i++) {
        long r0 = (i / np) * T + (i % np) * per;
        int rows = (int)((i % np) == np - 1 ? T - (i % np) * per : per);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, TW, rows, N, K, 1.0f, A + r0 * lda, lda, W, ldw, beta, C + r0 * ldc,
                    ldc);
    }
}

int nm_threads_init(void) {
    openblas_set_num_threads(1);
    return omp_get_max_threads();
}
