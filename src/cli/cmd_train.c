/* nanomoe train CONFIG [key=value ...] */
#include <getopt.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/agree.h"
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
           "resume=auto continues the most recently started run in out_dir from its newest valid\n"
           "checkpoint (a new run if there is none); resume=PATH continues that checkpoint's run.\n"
           "SIGUSR1 or SIGTERM: every rank stops after the current step, a checkpoint (and a run.h5\n"
           "row) is written without an evaluation, and the command exits 0.\n"
           "\n"
           "options:\n"
           "  --force      start a new run even if out_dir already holds checkpoints: the previous\n"
           "               run's files are moved to out_dir/replaced/<its run id>/ (nothing is deleted)\n"
           "  -h, --help   this help\n"
           "\n"
           "config keys (INI sections are for readability; a key means the same in any section):\n");
    cli_print_keys(stdout);
}

/* SIGUSR1 / SIGTERM: the run stops after its current step with a checkpoint. */
static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

int cmd_train(int argc, char **argv) {
    static const struct option opts[] = {{"force", no_argument, 0, 'f'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int force = 0, want_help = 0, ok = 1, c;
    nm_error err;
    while (ok && (c = getopt_long(argc, argv, "fh", opts, NULL)) != -1) {
        if (c == 'f') force = 1;
        else if (c == 'h') want_help = 1;
        else ok = nm_fail(&err, "see 'nanomoe train --help'") == 0;
    }
    if (ok && !want_help && argc - optind < 1)
        ok = nm_fail(&err, "missing CONFIG (usage: nanomoe train CONFIG [key=value ...])") == 0;
    /* what each rank parsed is agreed before anything collective; the
     * configuration itself is compared with rank 0's by nm_train_run */
    char flags[64];
    snprintf(flags, sizeof flags, "--force=%d\n--help=%d\n", force, want_help);
    if (!nm_agree_same(MPI_COMM_WORLD, ok, "the set of flags", flags, &err)) return cli_error(&err);
    if (want_help) {
        if (nm_world_rank() == 0) help();
        return 0;
    }
    const char *path = argv[optind];
    nm_config cfg;
    ok = cli_config(&cfg, path, argc - optind - 1, argv + optind + 1, &err) == 0;
    if (!nm_agree(MPI_COMM_WORLD, ok, &err)) return cli_error(&err);
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
    sa.sa_flags = SA_RESTART; /* a signal must not fail the system call it interrupts */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    nm_run_options opt = {force, &stop_signal};
    if (nm_train_run(&cfg, &opt, &err) != 0) return cli_error(&err);
    return 0;
}
