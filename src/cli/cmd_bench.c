/* nanomoe bench [CONFIG] [key=value ...]: training throughput, FLOP rate,
 * per-op time, and the sgemm rate on the model's own shapes in the same run. */
#include <cblas.h>
#include <getopt.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"
#include "nanomoe/gemm.h"
#include "nanomoe/rng.h"
#include "nanomoe/train.h"

static void help(void) {
    printf("usage: nanomoe bench [CONFIG] [key=value ...] [--steps N] [--warmup N]\n"
           "\n"
           "Measures training throughput of a configuration (default: the reference configuration,\n"
           "vocabulary 65) on random tokens, with the optimizer and batch sampling included:\n"
           "tokens/s, the model's matrix FLOP rate, time per step by op, peak memory, and, in the\n"
           "same run, the sgemm rate on the model's own matrix shapes, both split over threads as\n"
           "training does and with OpenBLAS's own threading, with the ratio of the two rates.\n"
           "Threads: OMP_NUM_THREADS. Compare implementations in the same shell, back to back.\n"
           "\n"
           "options:\n"
           "  --steps N     timed steps (default 20)\n"
           "  --warmup N    untimed steps first (default 3)\n"
           "  -h, --help    this help\n");
}

typedef struct {
    int ta, tb, M, N, K;
    double count; /* calls per training step */
    int attn;     /* one of B*H per-head products run in parallel, as in attention */
} shape;

static int add_dense(shape *s, int n, int M, int N, int K, double count) {
    /* forward, dX = dY W^T, dW = X^T dY */
    s[n++] = (shape){0, 0, M, N, K, count, 0};
    s[n++] = (shape){0, 1, M, K, N, count, 0};
    s[n++] = (shape){1, 0, K, N, M, count, 0};
    return n;
}

/* The products of one training step on this rank: B local sequences, El
 * local experts each with an even share of the group's token copies. */
static int model_shapes(const nm_config *c, int B, int Q, int El, shape *s) {
    int n = 0, Nt = B * c->block_size, C = c->d_model, F = c->d_ff, E = c->n_experts;
    int T = c->block_size, hd = C / c->n_heads, L = c->n_layers;
    int ne = (int)((long)Nt * Q * c->top_k / E); /* rows per expert, balanced routing */
    double BH = (double)B * c->n_heads;
    n = add_dense(s, n, Nt, 3 * C, C, L);
    n = add_dense(s, n, Nt, C, C, L);
    n = add_dense(s, n, Nt, E, C, L);
    n = add_dense(s, n, ne, F, C, (double)L * El);
    n = add_dense(s, n, ne, C, F, (double)L * El);
    n = add_dense(s, n, Nt, c->vocab_size, C, 1);
    s[n++] = (shape){0, 1, T, T, hd, BH * L * 2, 1}; /* scores fwd, dP bwd */
    s[n++] = (shape){0, 0, T, hd, T, BH * L * 2, 1}; /* P V fwd, dQ bwd */
    s[n++] = (shape){1, 0, T, hd, T, BH * L * 2, 1}; /* dV, dK bwd */
    return n;
}

/* Seconds per call of one shape. mode 0: nm_gemm (split over OpenMP threads);
 * mode 1: one cblas_sgemm on OpenBLAS's own threads. Attention shapes run
 * B*H independent products in parallel in both modes. */
static double time_shape(const shape *sh, int BH, int mode, float *A, float *B, float *Cm) {
    int lda = sh->ta ? sh->M : sh->K, ldb = sh->tb ? sh->K : sh->N;
    double t0 = nm_now(), t;
    long reps = 0;
    do {
        if (sh->attn) {
#pragma omp parallel for
            for (int i = 0; i < BH; i++)
                cblas_sgemm(CblasRowMajor, sh->ta ? CblasTrans : CblasNoTrans, sh->tb ? CblasTrans : CblasNoTrans,
                            sh->M, sh->N, sh->K, 1.0f, A + (size_t)i * sh->M * sh->K, lda,
                            B + (size_t)i * sh->K * sh->N, ldb, 0.0f, Cm + (size_t)i * sh->M * sh->N, sh->N);
            reps += BH;
        } else if (mode == 0) {
            nm_gemm(sh->ta, sh->tb, sh->M, sh->N, sh->K, 1.0f, A, lda, B, ldb, 0.0f, Cm, sh->N);
            reps++;
        } else {
            cblas_sgemm(CblasRowMajor, sh->ta ? CblasTrans : CblasNoTrans, sh->tb ? CblasTrans : CblasNoTrans, sh->M,
                        sh->N, sh->K, 1.0f, A, lda, B, ldb, 0.0f, Cm, sh->N);
            reps++;
        }
        t = nm_now() - t0;
    } while (t < 0.05 || reps < 3);
    return t / reps;
}

/* GFLOP/s of the model's matrix products on this rank, each weighted by its
 * calls per step. */
static double sgemm_rate(const nm_config *c, int Bl, int Q, int El, int mode, int nthreads) {
    shape s[32];
    int n = model_shapes(c, Bl, Q, El, s), BH = Bl * c->n_heads;
    size_t maxa = 0, maxb = 0, maxc = 0;
    for (int i = 0; i < n; i++) {
        size_t mul = s[i].attn ? (size_t)BH : 1;
        size_t a = (size_t)s[i].M * s[i].K * mul, b = (size_t)s[i].K * s[i].N * mul, cc = (size_t)s[i].M * s[i].N * mul;
        maxa = a > maxa ? a : maxa;
        maxb = b > maxb ? b : maxb;
        maxc = cc > maxc ? cc : maxc;
    }
    float *A = nm_malloc(sizeof(float) * maxa), *B = nm_malloc(sizeof(float) * maxb), *Cm = nm_malloc(sizeof(float) * maxc);
    for (size_t i = 0; i < maxa; i++) A[i] = (float)(nm_rng_uniform(1, i) - 0.5);
    for (size_t i = 0; i < maxb; i++) B[i] = (float)(nm_rng_uniform(2, i) - 0.5);
    if (mode == 1) openblas_set_num_threads(nthreads);
    double flops = 0.0, sec = 0.0;
    for (int i = 0; i < n; i++) {
        double per = time_shape(&s[i], BH, mode, A, B, Cm);
        flops += s[i].count * nm_gemm_flops(s[i].M, s[i].N, s[i].K);
        sec += s[i].count * per;
    }
    if (mode == 1) openblas_set_num_threads(1);
    free(A);
    free(B);
    free(Cm);
    return flops / sec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + 1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int cmd_bench(int argc, char **argv) {
    static const struct option opts[] = {{"steps", required_argument, 0, 's'},
                                         {"warmup", required_argument, 0, 'w'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    long steps = 20, warmup = 3;
    nm_error err;
    int c;
    if (cli_same_args(argc, argv) != 0) return 1;
    while ((c = getopt_long(argc, argv, "s:w:h", opts, NULL)) != -1) {
        if (c == 's') {
            if (cli_int("--steps", optarg, 1, 1000000, &steps, &err) != 0) return cli_error(&err);
        } else if (c == 'w') {
            if (cli_int("--warmup", optarg, 0, 1000000, &warmup, &err) != 0) return cli_error(&err);
        } else if (c == 'h') {
            if (nm_world_rank() == 0) help();
            return 0;
        } else return cli_errorf("see 'nanomoe bench --help'");
    }
    nm_config cfg;
    int npos = argc - optind;
    char **pos = argv + optind;
    if (npos > 0 && !strchr(pos[0], '=')) {
        if (cli_config(&cfg, pos[0], npos - 1, pos + 1, &err) != 0) return cli_error(&err);
    } else {
        nm_config_defaults(&cfg);
        for (int i = 0; i < npos; i++)
            if (nm_config_set_pair(&cfg, pos[i], &err) != 0) return cli_error(&err);
        if (nm_config_validate(&cfg, &err) != 0) return cli_error(&err);
    }
    if (cfg.vocab_size < 2) cfg.vocab_size = 65;
    cfg.max_iters = (int)(warmup + steps);

    /* random tokens stand in for text: throughput does not depend on it */
    nm_dataset data;
    memset(&data, 0, sizeof data);
    data.n_tokens = (size_t)cfg.block_size * 64 + 1000000;
    data.n_train = data.n_tokens * 9 / 10;
    data.tokens = nm_malloc(sizeof(int32_t) * data.n_tokens);
    for (size_t i = 0; i < data.n_tokens; i++) data.tokens[i] = (int32_t)nm_rng_below(7, i, (uint64_t)cfg.vocab_size);
    data.vocab.size = cfg.vocab_size;

    nm_trainer t;
    if (nm_trainer_init(&t, &cfg, &data, MPI_COMM_WORLD, &err) != 0) return cli_error(&err);
    nm_model *m = &t.model;
    int P = m->nranks, Q = m->dist.ep, El = cfg.n_experts / Q, B = t.b1 - t.b0;
    const char *ct = getenv("OPENBLAS_CORETYPE");
    nm_log0("nanomoe bench: d_model %d, n_layers %d, n_heads %d, d_ff %d, n_experts %d, top_k %d, batch %d x %d\n",
            cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.n_experts, cfg.top_k, cfg.batch_size, cfg.block_size);
    nm_log0("%d rank(s) x %d thread(s), expert_parallel %d; OPENBLAS_CORETYPE=%s; %ld warm-up + %ld timed steps\n", P,
            m->nthreads, Q, ct ? ct : "(unset)", warmup, steps);
    for (long i = 0; i < warmup; i++) nm_train_step(&t);
    memset(&m->timers, 0, sizeof m->timers);
    m->dispatch.bytes_sent = 0;
    double *dt = nm_malloc(sizeof(double) * (size_t)steps);
    NM_MPI_CHECK(MPI_Barrier(m->comm));
    double cpu0 = cpu_seconds();
    for (long i = 0; i < steps; i++) {
        double t0 = nm_now();
        nm_train_step(&t);
        dt[i] = nm_now() - t0;
    }
    double cpu = cpu_seconds() - cpu0; /* this process's threads, whatever else shares the cores */
    /* the slowest rank sets the pace */
    NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, dt, (int)steps, MPI_DOUBLE, MPI_MAX, m->comm));
    double total = 0.0;
    for (long i = 0; i < steps; i++) total += dt[i];
    qsort(dt, (size_t)steps, sizeof *dt, cmp_double);
    double mean = total / steps, median = dt[steps / 2];
    double tok = (double)cfg.batch_size * cfg.block_size;
    double fpt = nm_model_flops_per_token(&cfg, cfg.block_size, 1);
    double gflops = fpt * tok / mean / 1e9;
    nm_log0("\nstep time: mean %.1f ms, median %.1f ms, min %.1f ms\n", mean * 1e3, median * 1e3, dt[0] * 1e3);
    nm_log0("throughput: %.0f tokens/s\n", tok / mean);
    nm_log0("model FLOPs: %.2f MFLOP/token (%.2f forward) -> %.1f GFLOP/s\n", fpt / 1e6,
            nm_model_flops_per_token(&cfg, cfg.block_size, 0) / 1e6, gflops);

    nm_log0("\ntime per step by op (rank 0):\n");
    double tsum = 0.0;
    for (int i = 0; i < NM_T_COUNT; i++) tsum += m->timers.sec[i];
    for (int i = 0; i < NM_T_COUNT; i++)
        nm_log0("  %-12s %8.2f ms  %5.1f%%\n", nm_timer_name((nm_timer_id)i), m->timers.sec[i] / steps * 1e3,
                100.0 * m->timers.sec[i] / (tsum > 0 ? tsum : 1));
    nm_log0("  %-12s %8.2f ms  (step time not covered by the timers)\n", "other", (total - tsum) / steps * 1e3);

    /* per rank: compute, all-to-all, all-reduce, and the bytes each sends */
    double mine[5] = {0, m->timers.sec[NM_T_ALLTOALL], m->timers.sec[NM_T_ALLREDUCE], m->dispatch.bytes_sent, cpu};
    mine[0] = tsum - mine[1] - mine[2];
    double *all = nm_malloc(sizeof(double) * 5 * (size_t)P);
    NM_MPI_CHECK(MPI_Gather(mine, 5, MPI_DOUBLE, all, 5, MPI_DOUBLE, 0, m->comm));
    /* each exchange moves every token copy that leaves its rank: 4 per layer
     * and step (forward there and back, backward there and back) */
    double minimum = 4.0 * cfg.n_layers * (double)B * cfg.block_size * cfg.top_k * cfg.d_model * 4.0 * (Q - 1) / Q;
    nm_log0("\nper rank and step: wall ms in compute | all-to-all | all-reduce, CPU ms of the process, all-to-all MB "
            "sent (minimum for even routing: %.2f MB)\n", minimum / 1e6);
    for (int r = 0; r < P; r++)
        nm_log0("  rank %-3d %9.2f %12.2f %12.2f %10.2f %10.2f\n", r, all[5 * r] / steps * 1e3,
                all[5 * r + 1] / steps * 1e3, all[5 * r + 2] / steps * 1e3, all[5 * r + 4] / steps * 1e3,
                all[5 * r + 3] / steps / 1e6);
    nm_log0("dense gradient all-reduce: %zu floats = %.2f MB per step\n", m->layout.n_dense,
            m->layout.n_dense * 4.0 / 1e6);
    free(all);

    /* every rank measures its own shapes at once, as in training: the sum is the machine's rate */
    double rate[2] = {sgemm_rate(&cfg, B, Q, El, 0, m->nthreads), sgemm_rate(&cfg, B, Q, El, 1, m->nthreads)};
    NM_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, rate, 2, MPI_DOUBLE, MPI_SUM, m->comm));
    double split = rate[0], own = rate[1];
    nm_log0("\nsgemm on the model's shapes: %.1f GFLOP/s split over %d thread(s) as in training, %.1f GFLOP/s "
            "with OpenBLAS's own threading%s\n",
            split, m->nthreads, own, P > 1 ? " (summed over ranks, measured concurrently)" : "");
    double best = split > own ? split : own;
    nm_log0("ratio: step FLOP rate / best sgemm rate = %.1f / %.1f = %.2f\n", gflops, best, gflops / best);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    nm_log0("peak memory (rank 0): %.0f MB\n", ru.ru_maxrss / 1024.0);
    free(dt);
    nm_trainer_free(&t);
    free(data.tokens);
    return 0;
}
