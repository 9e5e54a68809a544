/* nanomoe: command dispatch. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/agree.h"
#include "nanomoe/api.h"

static void usage(FILE *f) {
    fprintf(f,
            "nanomoe: train and use Mixture-of-Experts character language models (MPI + OpenBLAS + HDF5)\n"
            "\n"
            "usage: nanomoe <command> [options]\n"
            "\n"
            "commands:\n"
            "  train CONFIG [key=value ...]   train a model; checkpoints and metrics go to out_dir\n"
            "  eval CKPT [--data PATH]        deterministic loss of a checkpoint on the whole validation split\n"
            "  sample CKPT [--prompt TEXT]    generate text (KV cache), streamed to stdout\n"
            "  bench [CONFIG]                 measure training throughput, FLOP rate and sgemm rate\n"
            "  inspect FILE                   describe and validate a checkpoint, a run.h5 or a token shard\n"
            "\n"
            "'nanomoe <command> --help' describes each command's options.\n"
            "Run under mpirun/srun for several ranks; without a launcher it runs as one rank.\n"
            "Threads per rank: OMP_NUM_THREADS (OpenBLAS runs single-threaded inside them).\n");
}

/* Rank 0's messages: information to stdout, warnings to stderr. */
static void print_log(int level, const char *msg, void *user) {
    (void)user;
    if (level == 0) {
        printf("%s\n", msg);
        fflush(stdout);
    } else {
        fprintf(stderr, "nanomoe: warning: %s\n", msg);
    }
}

int main(int argc, char **argv) {
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    nm_set_log(print_log, NULL);
    int rc;
    nm_error err;
    /* the same command on every rank, or none starts a collective call */
    if (!nm_agree_same(MPI_COMM_WORLD, 1, "the command", argc > 1 ? argv[1] : "", &err)) {
        rc = cli_error(&err);
    } else if (argc < 2) {
        if (nm_world_rank() == 0) usage(stderr);
        rc = 2;
    } else if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        if (nm_world_rank() == 0) usage(stdout);
        rc = 0;
    } else if (!strcmp(argv[1], "train")) {
        rc = cmd_train(argc - 1, argv + 1);
    } else if (!strcmp(argv[1], "eval")) {
        rc = cmd_eval(argc - 1, argv + 1);
    } else if (!strcmp(argv[1], "sample")) {
        rc = cmd_sample(argc - 1, argv + 1);
    } else if (!strcmp(argv[1], "bench")) {
        rc = cmd_bench(argc - 1, argv + 1);
    } else if (!strcmp(argv[1], "inspect")) {
        rc = cmd_inspect(argc - 1, argv + 1);
    } else {
        rc = cli_errorf("unknown command '%s' (expected train, eval, sample, bench or inspect; see 'nanomoe --help')", argv[1]);
        rc = 2;
    }
    MPI_Finalize();
    return rc;
}
