/* nanomoe train CONFIG [key=value ...] */
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/api.h"

static void help(void) {
    printf("usage: nanomoe train CONFIG [key=value ...] [--force]\n"
           "\n"
           "Trains a model from an INI config; any key can be overridden as key=value.\n"
           "Rank 0 prints a progress line every log_interval steps and an eval line (with a routing\n"
           "summary) at step 1, every eval_interval steps and at the end. out_dir receives:\n"
           "  config.ini              the full configuration of the run\n"
           "  metrics.csv             every progress and eval figure\n"
           "                          (kind,step,loss,ce,aux,lr,tokens_per_s,elapsed_s,dropped)\n"
           "  run.h5                  metrics and per-layer routing statistics, a row every stats_interval steps\n"
           "  ckpt_<step:08d>.h5      checkpoints every ckpt_interval steps and at the end (schema v1)\n"
           "\n"
           "resume=auto continues from the newest valid checkpoint in out_dir (a new run if there is\n"
           "none); resume=PATH from that checkpoint. SIGUSR1 or SIGTERM: every rank stops after the\n"
           "current step, a checkpoint is written, and the command exits 0.\n"
           "\n"
           "options:\n"
           "  --force      start a new run even if out_dir already holds checkpoints (they are replaced)\n"
           "  -h, --help   this help\n"
           "\n"
           "config keys (INI sections are for readability; a key means the same in any section):\n");
    cli_print_keys(stdout);
}

/* SIGUSR1 / SIGTERM: the run stops after its current step with a checkpoint. */
static volatile int stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"force", no_argument, 0, 'f'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int force = 0, c;
    while ((c = getopt_long(argc, argv, "fh", opts, NULL)) != -1) {
        if (c == 'f') force = 1;
        else if (c == 'h') {
            if (nm_world_rank() == 0) help();
            return 0;
        } else return cli_errorf("see 'nanomoe train --help'");
    }
    if (argc - optind < 1) return cli_errorf("missing CONFIG (usage: nanomoe train CONFIG [key=value ...])");
    const char *path = argv[optind];
    nm_config cfg;
    nm_error err;
    if (cli_config(&cfg, path, argc - optind - 1, argv + optind + 1, &err) != 0) return cli_error(&err);
    if (!cfg.out_dir[0]) { /* runs/<config file name without extension> */
        char base[NM_PATH_MAX];
        snprintf(base, sizeof base, "%s", path);
        char *name = basename(base), *dot = strrchr(name, '.');
        if (dot && dot != name) *dot = '\0';
        snprintf(cfg.out_dir, sizeof cfg.out_dir, "runs/%s", name);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    nm_run_options opt = {force, &stop_signal};
    if (nm_train_run(&cfg, &opt, &err) != 0) return cli_error(&err);
    return 0;
}
