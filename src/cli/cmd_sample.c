/* nanomoe sample CKPT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S] */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/rng.h"
#include "nanomoe/sample.h"

static void help(void) {
    printf("usage: nanomoe sample CKPT [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
           "\n"
           "Streams generated text to stdout as it is produced (the prompt first). The prompt runs\n"
           "through one batched forward pass; each new token then costs one cached row while the\n"
           "context is shorter than block_size. Beyond that the context is cropped to the last\n"
           "block_size tokens, as in the reference, which shifts every position: the window is\n"
           "then recomputed for each token, so results equal the reference's full recompute.\n"
           "\n"
           "options:\n"
           "  --prompt TEXT       starting text (default: a newline); every character must be in\n"
           "                      the checkpoint's vocabulary\n"
           "  --tokens N          characters to generate (default 500)\n"
           "  --temperature T     divide logits by T (default 0.8; 0 = greedy argmax)\n"
           "  --top-k K           sample among the K most likely characters (default 40; 0 = all)\n"
           "  --seed S            seed of the sampling stream (default 0): same seed, same text\n"
           "  -h, --help          this help\n");
}

int cmd_sample(int argc, char **argv) {
    static const struct option opts[] = {{"prompt", required_argument, 0, 'p'},
                                         {"tokens", required_argument, 0, 'n'},
                                         {"temperature", required_argument, 0, 't'},
                                         {"top-k", required_argument, 0, 'k'},
                                         {"seed", required_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *prompt = "\n";
    long ntok = 500, topk = 40, seed = 0;
    double temp = 0.8;
    nm_error err;
    int c;
    if (cli_same_args(argc, argv) != 0) return 1;
    while ((c = getopt_long(argc, argv, "p:n:t:k:s:h", opts, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'n': bad = cli_int("--tokens", optarg, 0, 100000000, &ntok, &err); break;
        case 't': bad = cli_double("--temperature", optarg, 0.0, 1e6, &temp, &err); break;
        case 'k': bad = cli_int("--top-k", optarg, 0, 256, &topk, &err); break;
        case 's': bad = cli_int("--seed", optarg, 0, 2147483647L, &seed, &err); break;
        case 'h':
            if (nm_world_rank() == 0) help();
            return 0;
        default: return cli_errorf("see 'nanomoe sample --help'");
        }
        if (bad) return cli_error(&err);
    }
    if (argc - optind != 1) return cli_errorf("expected one checkpoint (usage: nanomoe sample CKPT [options])");
    size_t plen = strlen(prompt);
    if (plen == 0) return cli_errorf("--prompt is empty (expected at least one character)");
    /* generation is one token at a time: rank 0 holds the whole model and
     * generates; other ranks of a launch have nothing to do */
    if (nm_world_rank() != 0) return 0;
    nm_model m;
    nm_vocab vocab;
    nm_ckpt_meta meta;
    if (cli_load_model(argv[optind], MPI_COMM_SELF, 1, 0, &m, &vocab, &meta, &err) != 0) return cli_error(&err);
    int32_t *ids = nm_malloc(sizeof(int32_t) * plen);
    if (nm_vocab_encode(&vocab, (const unsigned char *)prompt, plen, ids, &err) != 0) {
        free(ids);
        nm_model_free(&m);
        return cli_errorf("--prompt: %s", err.msg);
    }
    int V = m.cfg.vocab_size;
    float *work = nm_malloc(sizeof(float) * (size_t)V);
    nm_sampler s;
    nm_sampler_init(&s, &m);
    int root = nm_world_rank() == 0;
    if (root) fwrite(prompt, 1, plen, stdout);
    unsigned char last = (unsigned char)prompt[plen - 1];
    uint64_t key = nm_rng_key((uint64_t)seed, 0x73616d70ULL, 0, 0);
    const float *logits = nm_sampler_prefill(&s, ids, (int)plen);
    for (long i = 0; i < ntok; i++) {
        int32_t next = nm_sample_logits(logits, V, temp, (int)topk, key, (uint64_t)i, work);
        if (root) {
            last = vocab.bytes[next];
            fputc(last, stdout);
            fflush(stdout);
        }
        if (i + 1 < ntok) logits = nm_sampler_push(&s, next);
    }
    if (root && last != '\n') fputc('\n', stdout);
    nm_sampler_free(&s);
    free(work);
    free(ids);
    nm_model_free(&m);
    return 0;
}
