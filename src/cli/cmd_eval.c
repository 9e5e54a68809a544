/* nanomoe eval CKPT [--data PATH] */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/agree.h"
#include "nanomoe/train.h"

static void help(void) {
    printf("usage: nanomoe eval CKPT [--data PATH] [--batch N]\n"
           "\n"
           "Prints the deterministic loss of a checkpoint on the whole validation split (the last\n"
           "10%% of the text), so that runs and implementations compare number for number:\n"
           "non-overlapping windows at 0, T, 2T, ... (T = block_size) while start + T + 1 <= len(val);\n"
           "input val[s:s+T], target val[s+1:s+T+1]; no dropout. ce is the mean cross-entropy over\n"
           "all targets, aux the mean over windows of each window's own aux loss, and\n"
           "loss = ce + aux_loss_coeff * aux. Output:\n"
           "  ce <8 decimals> aux <8 decimals> loss <8 decimals> windows <N> tokens <N*T>\n"
           "\n"
           "options:\n"
           "  --data PATH   text file (default: the checkpoint's config key 'data'); every character\n"
           "                must be in the checkpoint's vocabulary\n"
           "  --batch N     windows per forward pass, shared out over the ranks (default 32); the\n"
           "                result depends on it only at float rounding, and not on the rank count\n"
           "                wherever each expert has one copy\n"
           "  -h, --help    this help\n");
}

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {
        {"data", required_argument, 0, 'd'}, {"batch", required_argument, 0, 'b'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    const char *data_path = NULL;
    long batch = 32;
    nm_error err;
    int c;
    if (cli_same_args(argc, argv) != 0) return 1;
    while ((c = getopt_long(argc, argv, "d:b:h", opts, NULL)) != -1) {
        if (c == 'd') data_path = optarg;
        else if (c == 'b') {
            if (cli_int("--batch", optarg, 1, 65536, &batch, &err) != 0) return cli_error(&err);
        } else if (c == 'h') {
            if (nm_world_rank() == 0) help();
            return 0;
        } else return cli_errorf("see 'nanomoe eval --help'");
    }
    if (argc - optind != 1) return cli_errorf("expected one checkpoint (usage: nanomoe eval CKPT [--data PATH])");
    const char *path = argv[optind];
    nm_model m;
    nm_vocab vocab;
    nm_ckpt_meta meta;
    int P;
    MPI_Comm_size(MPI_COMM_WORLD, &P);
    /* each rank holds its slice of a round of `batch` windows */
    if (cli_load_model(path, MPI_COMM_WORLD, (int)((batch + P - 1) / P), 0, &m, &vocab, &meta, &err) != 0)
        return cli_error(&err);
    nm_dataset data;
    if (!data_path) data_path = m.cfg.data;
    if (nm_dataset_load_agreed(&data, data_path, &vocab, MPI_COMM_WORLD, &err) != 0) {
        nm_model_free(&m);
        return cli_error(&err);
    }
    size_t nval = data.n_tokens - data.n_train;
    int T = m.cfg.block_size;
    if (nval < (size_t)T + 1) {
        nm_model_free(&m);
        nm_dataset_free(&data);
        return cli_errorf("data '%s': validation split has %zu tokens, fewer than block_size + 1 = %d", data_path, nval,
                          T + 1);
    }
    nm_split_eval r = nm_evaluate_split(&m, data.tokens + data.n_train, nval, (int)batch);
    nm_log0("ce %.8f aux %.8f loss %.8f windows %ld tokens %ld\n", r.ce, r.aux, r.loss, r.windows, r.tokens);
    nm_model_free(&m);
    nm_dataset_free(&data);
    return 0;
}
