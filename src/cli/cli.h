/* Shared pieces of the nanomoe command-line commands. */
#ifndef NANOMOE_CLI_H
#define NANOMOE_CLI_H

#include <mpi.h>

#include "nanomoe/ckpt.h"
#include "nanomoe/config.h"
#include "nanomoe/data.h"
#include "nanomoe/error.h"
#include "nanomoe/model.h"

int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_sample(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

/* Prints "nanomoe: error: msg" on rank 0 and returns 1 (errors here are
 * detected identically on every rank). */
int cli_error(const nm_error *err);
int cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Every rank must have been given the same arguments (argv[0..argc)) as
 * rank 0: an MPMD launch that gives one rank others would otherwise leave
 * ranks in different collective calls. Collective; prints the error. Returns
 * 0 when they agree, else 1 (the exit status). */
int cli_same_args(int argc, char **argv);

/* Parses an integer / a number option value, with a message naming the option. */
int cli_int(const char *opt, const char *text, long min, long max, long *out, nm_error *err);
int cli_double(const char *opt, const char *text, double min, double max, double *out, nm_error *err);

/* Loads a checkpoint into a new model with activations for B x T (T = 0 means
 * block_size). */
int cli_load_model(const char *path, MPI_Comm comm, int B, int T, nm_model *m, nm_vocab *vocab, nm_ckpt_meta *meta,
                   nm_error *err);

/* Config from a file plus key=value overrides, validated. */
int cli_config(nm_config *cfg, const char *path, int n_over, char **over, nm_error *err);

/* Prints every config key with its default and meaning. */
void cli_print_keys(FILE *f);

#endif
