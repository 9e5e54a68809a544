/* Shared pieces of the command-line commands. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/agree.h"

int cli_error(const nm_error *err) {
    if (nm_world_rank() == 0) {
        fprintf(stderr, "nanomoe: error: %s\n", err->msg);
        fflush(stderr);
    }
    return 1;
}

int cli_errorf(const char *fmt, ...) {
    nm_error e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.msg, sizeof e.msg, fmt, ap);
    va_end(ap);
    return cli_error(&e);
}

int cli_same_args(int argc, char **argv) {
    size_t n = 1;
    for (int i = 0; i < argc; i++) n += strlen(argv[i]) + 1;
    char *text = nm_malloc(n);
    text[0] = '\0';
    for (int i = 0; i < argc; i++) strcat(strcat(text, argv[i]), "\n");
    nm_error err;
    int ok = nm_agree_same(MPI_COMM_WORLD, 1, "the command line", text, &err);
    free(text);
    return ok ? 0 : cli_error(&err);
}

int cli_int(const char *opt, const char *text, long min, long max, long *out, nm_error *err) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < min || v > max)
        return nm_fail(err, "%s %s: expected an integer in [%ld, %ld]", opt, text, min, max);
    *out = v;
    return 0;
}

int cli_double(const char *opt, const char *text, double min, double max, double *out, nm_error *err) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end || errno || !(v >= min && v <= max))
        return nm_fail(err, "%s %s: expected a number in [%g, %g]", opt, text, min, max);
    *out = v;
    return 0;
}

int cli_load_model(const char *path, MPI_Comm comm, int B, int T, nm_model *m, nm_vocab *vocab, nm_ckpt_meta *meta,
                   nm_error *err) {
    nm_config cfg;
    if (nm_ckpt_read_header(path, comm, &cfg, vocab, meta, err) != 0) return -1;
    cfg.expert_parallel = 0; /* how the training run was laid out does not bind this one */
    if (nm_model_create(m, &cfg, comm, B, T > 0 ? T : cfg.block_size, err) != 0) return -1;
    if (nm_ckpt_read_params(path, m, NULL, err) != 0) {
        nm_model_free(m);
        return -1;
    }
    return 0;
}

int cli_config(nm_config *cfg, const char *path, int n_over, char **over, nm_error *err) {
    nm_config_defaults(cfg);
    if (nm_config_load_ini(cfg, path, err) != 0) return -1;
    for (int i = 0; i < n_over; i++)
        if (nm_config_set_pair(cfg, over[i], err) != 0) return -1;
    return nm_config_validate(cfg, err);
}

void cli_print_keys(FILE *f) {
    nm_config d;
    nm_config_defaults(&d);
    const char *sections[] = {"model", "training", "run"};
    for (int s = 0; s < 3; s++) {
        fprintf(f, "  [%s]\n", sections[s]);
        for (int i = 0; i < nm_config_nkeys(); i++) {
            const nm_config_key *k = nm_config_key_at(i);
            if (strcmp(k->section, sections[s]) != 0 || !k->settable) continue;
            char v[64];
            nm_config_format(&d, k, v, sizeof v);
            fprintf(f, "    %-20s %-26s %s\n", k->name, v[0] ? v : "(runs/<config name>)", k->help);
        }
    }
}
