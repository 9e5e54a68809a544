/* nanomoe inspect FILE: what a checkpoint, a run.h5 or a token shard holds, and whether
 * it is valid. Reads with one process, whatever rank count wrote the file. */
#include <getopt.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "nanomoe/runstats.h"
#include "nanomoe/shards.h"
#include "nanomoe/h5util.h"
#include "nanomoe/timers.h"

static void help(void) {
    printf("usage: nanomoe inspect FILE (a checkpoint, a run.h5 or a token shard)\n"
           "\n"
           "For a checkpoint: format, step, config, parameter counts (dense / experts, total and\n"
           "active per token), per-layer expert weight norms, and a validation of the whole schema\n"
           "(every dataset present with the shape /config implies, float32, finite values).\n"
           "For a run.h5: the steps it covers, the final losses, and per layer a routing table\n"
           "(share of token copies per expert, first choices, dropped copies, router entropy).\n"
           "For a token shard (llm.c format, .bin): the header, the token count and the range of ids.\n"
           "Exit status 1 when the file is not valid. Runs without mpirun on files from any rank count.\n"
           "\n"
           "options:\n"
           "  -h, --help   this help\n");
}

static double norm(const float *p, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)p[i] * p[i];
    return sqrt(s);
}

static int inspect_ckpt(const char *path) {
    nm_config cfg;
    nm_vocab vocab;
    nm_ckpt_meta meta;
    nm_error err;
    if (nm_ckpt_read_header(path, MPI_COMM_SELF, &cfg, &vocab, &meta, &err) != 0) return cli_error(&err);
    printf("checkpoint %s\n", path);
    printf("  format %s, version %d, step %lld, tokens_seen %lld\n", NM_CKPT_FORMAT, NM_CKPT_VERSION,
           (long long)meta.step, (long long)meta.tokens_seen);
    printf("  run id %s\n", meta.run_id[0] ? meta.run_id : "(none: written before run ids, or by nm_model_save)");
    printf("  config:");
    int col = 10;
    for (int i = 0; i < nm_config_nkeys(); i++) {
        const nm_config_key *k = nm_config_key_at(i);
        char v[NM_PATH_MAX], item[NM_PATH_MAX + 64];
        nm_config_format(&cfg, k, v, sizeof v);
        int len = snprintf(item, sizeof item, " %s=%s", k->name, v[0] ? v : "\"\"");
        if (col + len > 100) {
            printf("\n         ");
            col = 9;
        }
        fputs(item, stdout);
        col += len;
    }
    printf("\n  vocabulary: %d characters\n", vocab.size);
    nm_param_counts pc = nm_param_count(&cfg);
    char a[32], b[32], c[32], d[32];
    nm_format_count((double)pc.total, a, sizeof a);
    nm_format_count((double)pc.dense, b, sizeof b);
    nm_format_count((double)pc.experts, c, sizeof c);
    nm_format_count((double)pc.active_per_token, d, sizeof d);
    printf("  parameters: %s = dense %s + experts %s; active per token %s (top_k %d of %d experts)\n", a, b, c, d,
           cfg.top_k, cfg.n_experts);
    /* reading every tensor into a model is the validation: names, shapes, readability */
    cfg.expert_parallel = 0;
    nm_model m;
    if (nm_model_create(&m, &cfg, MPI_COMM_SELF, 1, 1, &err) != 0) return cli_error(&err);
    nm_adamw opt;
    nm_adamw_init(&opt, &m.layout, &cfg);
    int rc = nm_ckpt_read_params(path, &m, meta.has_optimizer ? &opt : NULL, &err);
    if (rc != 0) {
        nm_adamw_free(&opt);
        nm_model_free(&m);
        printf("  schema: INVALID\n");
        return cli_error(&err);
    }
    long bad = 0;
    const char *first_bad = NULL;
    for (int i = 0; i < m.layout.n; i++) {
        const nm_param_info *p = &m.layout.info[i];
        float *blocks[3] = {nm_param_ptr(&m.layout, i, m.params[0], m.params[1]),
                            meta.has_optimizer ? nm_param_ptr(&m.layout, i, opt.m[0], opt.m[1]) : NULL,
                            meta.has_optimizer ? nm_param_ptr(&m.layout, i, opt.v[0], opt.v[1]) : NULL};
        for (int t = 0; t < 3; t++)
            for (size_t j = 0; blocks[t] && j < p->count; j++)
                if (!isfinite(blocks[t][j])) {
                    bad++;
                    if (!first_bad) first_bad = p->name;
                }
    }
    int E = cfg.n_experts, C = cfg.d_model, F = cfg.d_ff;
    printf("  expert weight norms (Frobenius, fc1 kernel / fc2 kernel):\n");
    for (int l = 0; l < cfg.n_layers; l++) {
        printf("    layer %d:", l);
        for (int e = 0; e < E; e++) {
            if (e && e % 6 == 0) printf("\n            ");
            printf("  e%d %.3f/%.3f", e, norm(m.p.layers[l].fc1_w + (size_t)e * C * F, (size_t)C * F),
                   norm(m.p.layers[l].fc2_w + (size_t)e * F * C, (size_t)F * C));
        }
        printf("\n");
    }
    printf("  optimizer: %s\n", meta.has_optimizer ? "AdamW moments present" : "none (cannot resume a run)");
    if (meta.has_optimizer) printf("    optimizer step %lld\n", (long long)opt.step);
    int ntensors = m.layout.n * (meta.has_optimizer ? 3 : 1);
    if (bad) printf("  schema: INVALID: %ld non-finite values (first in %s)\n", bad, first_bad);
    else printf("  schema: ok (%d tensors with the shapes /config implies, /vocab, attributes; all values finite)\n",
                ntensors);
    nm_adamw_free(&opt);
    nm_model_free(&m);
    return bad ? 1 : 0;
}

/* Reads a whole numeric dataset as doubles; NULL if absent. */
static double *read_doubles(hid_t f, const char *name, hsize_t *dims, int *nd) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t s = H5Dget_space(d);
    *nd = H5Sget_simple_extent_ndims(s);
    H5Sget_simple_extent_dims(s, dims, NULL);
    hssize_t n = H5Sget_simple_extent_npoints(s);
    double *buf = nm_malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (n > 0 && H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        free(buf);
        buf = NULL;
    }
    H5Sclose(s);
    H5Dclose(d);
    return buf;
}

static int inspect_run(const char *path, hid_t f) {
    int64_t L = 0, E = 0, V = 0, interval = 0;
    hid_t a;
    if ((a = H5Aopen(f, "n_layers", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &L), H5Aclose(a);
    if ((a = H5Aopen(f, "n_experts", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &E), H5Aclose(a);
    if ((a = H5Aopen(f, "vocab_size", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &V), H5Aclose(a);
    if ((a = H5Aopen(f, "stats_interval", H5P_DEFAULT)) >= 0) H5Aread(a, H5T_NATIVE_INT64, &interval), H5Aclose(a);
    hsize_t dims[3];
    int nd;
    double *steps = read_doubles(f, "/routing/step", dims, &nd);
    if (!steps || L < 1 || E < 1) {
        free(steps);
        return cli_errorf("run file '%s': missing /routing/step or the n_layers / n_experts attributes", path);
    }
    long N = (long)dims[0];
    char id[NM_RUN_ID_MAX] = "";
    nm_h5_attr_string(f, "run_id", id, sizeof id);
    printf("run %s\n", path);
    printf("  run id %s\n", id[0] ? id : "(none: written before run ids)");
    printf("  %lld layers, %lld experts, vocabulary %lld, a row every %lld steps\n", (long long)L, (long long)E,
           (long long)V, (long long)interval);
    if (N == 0) {
        printf("  no rows yet\n");
        free(steps);
        return 0;
    }
    printf("  rows: %ld, steps %.0f .. %.0f\n", N, steps[0], steps[N - 1]);
    const char *names[] = {"loss", "ce", "aux", "lr", "tokens_per_s", "val_loss"};
    double last[6];
    for (int i = 0; i < 6; i++) {
        char nm[64];
        snprintf(nm, sizeof nm, "/metrics/%s", names[i]);
        double *v = read_doubles(f, nm, dims, &nd);
        last[i] = v ? v[N - 1] : NAN;
        if (i == 5 && v) /* the last evaluation, wherever it was */
            for (long r = N - 1; r >= 0 && isnan(last[5]); r--) last[5] = v[r];
        free(v);
    }
    printf("  final: loss %.4f ce %.4f aux %.4f lr %.2e, %.0f tok/s; last validation loss %.4f\n", last[0], last[1],
           last[2], last[3], last[4], last[5]);
    for (int l = 0; l < L; l++) {
        char nm[96];
        snprintf(nm, sizeof nm, "/routing/blocks/%d/tokens_per_expert", l);
        double *cnt = read_doubles(f, nm, dims, &nd);
        snprintf(nm, sizeof nm, "/routing/blocks/%d/top1_per_expert", l);
        double *top1 = read_doubles(f, nm, dims, &nd);
        snprintf(nm, sizeof nm, "/routing/blocks/%d/dropped", l);
        double *drop = read_doubles(f, nm, dims, &nd);
        snprintf(nm, sizeof nm, "/routing/blocks/%d/router_entropy", l);
        double *ent = read_doubles(f, nm, dims, &nd);
        if (!cnt || !top1 || !drop || !ent) {
            free(cnt), free(top1), free(drop), free(ent), free(steps);
            return cli_errorf("run file '%s': layer %d lacks routing datasets", path, l);
        }
        double total = 0, dropped = 0, t1 = 0, lastrow = 0;
        for (long r = 0; r < N; r++) dropped += drop[r];
        for (long i = 0; i < N * E; i++) total += cnt[i], t1 += top1[i];
        for (int e = 0; e < E; e++) lastrow += cnt[(N - 1) * E + e];
        printf("  layer %d: dropped %.0f copies in all, router entropy %.3f nats at the end (max ln %lld = %.3f)\n", l,
               dropped, ent[N - 1], (long long)E, log((double)E));
        printf("    %-7s %12s %12s %12s\n", "expert", "share (run)", "share (last)", "first (run)");
        int dead = 0;
        for (int e = 0; e < E; e++) {
            double run = 0, first = 0;
            for (long r = 0; r < N; r++) run += cnt[r * E + e], first += top1[r * E + e];
            double lastshare = lastrow > 0 ? cnt[(N - 1) * E + e] / lastrow : 0;
            dead += cnt[(N - 1) * E + e] == 0;
            printf("    %-7d %11.1f%% %11.1f%% %11.1f%%%s\n", e, 100 * run / (total > 0 ? total : 1), 100 * lastshare,
                   100 * first / (t1 > 0 ? t1 : 1), cnt[(N - 1) * E + e] == 0 ? "  dead in the last row" : "");
        }
        if (dead) printf("    %d dead expert(s) in the last row\n", dead);
        free(cnt), free(top1), free(drop), free(ent);
    }
    free(steps);
    return 0;
}

/* A token shard: its header and the range of its ids (one pass over it). */
static int inspect_shard(const char *path) {
    nm_shard_info info;
    nm_error err;
    if (nm_shard_header(path, &info, &err) != 0) return cli_error(&err);
    nm_shards s;
    if (nm_shards_open(&s, path, &err) != 0) return cli_error(&err);
    int32_t buf[65536], lo = INT32_MAX, hi = -1;
    for (uint64_t pos = 0; pos < s.tokens; pos += 65536) {
        size_t n = s.tokens - pos < 65536 ? (size_t)(s.tokens - pos) : 65536;
        if (nm_shards_read(&s, pos, n, buf, 0, &err) != 0) {
            nm_shards_close(&s);
            return cli_error(&err);
        }
        for (size_t i = 0; i < n; i++) {
            lo = buf[i] < lo ? buf[i] : lo;
            hi = buf[i] > hi ? buf[i] : hi;
        }
    }
    nm_shards_close(&s);
    printf("token shard %s\n", path);
    printf("  header: magic %d, version %d: uint%d tokens (llm.c format)\n", info.magic, info.version, 8 * info.width);
    printf("  tokens: %llu (%llu bytes with the 1024-byte header)\n", (unsigned long long)info.tokens,
           (unsigned long long)info.file_bytes);
    if (info.tokens) printf("  ids: %d .. %d (vocab_size must be > %d)\n", lo, hi, hi);
    printf("  header checksum: %016llx\n", (unsigned long long)info.header_hash);
    return 0;
}

/* Does the file begin with a shard magic? */
static int looks_like_shard(const char *path) {
    FILE *f = fopen(path, "rb");
    int32_t magic = 0;
    int ok = f && fread(&magic, sizeof magic, 1, f) == 1;
    if (f) fclose(f);
    return ok && (magic == NM_SHARD_MAGIC_U16 || magic == NM_SHARD_MAGIC_U32);
}

int cmd_inspect(int argc, char **argv) {
    static const struct option opts[] = {{"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            if (nm_world_rank() == 0) help();
            return 0;
        }
        return cli_errorf("see 'nanomoe inspect --help'");
    }
    if (argc - optind != 1) return cli_errorf("expected one file (usage: nanomoe inspect FILE)");
    if (nm_world_rank() != 0) return 0; /* one reader is enough */
    const char *path = argv[optind];
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    FILE *probe = fopen(path, "rb");
    if (!probe) return cli_errorf("cannot read '%s'", path);
    fclose(probe);
    if (looks_like_shard(path)) return inspect_shard(path);
    if (H5Fis_hdf5(path) <= 0) return cli_errorf("'%s' is neither an HDF5 file nor a token shard", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return cli_errorf("cannot open '%s': the HDF5 file is truncated or corrupt", path);
    char fmt[64] = "";
    nm_h5_attr_string(f, "format", fmt, sizeof fmt);
    int rc;
    if (!strcmp(fmt, NM_RUN_FORMAT)) rc = inspect_run(path, f);
    else if (!strcmp(fmt, NM_CKPT_FORMAT)) rc = -1;
    else rc = cli_errorf("'%s': format attribute is '%s', expected '%s' or '%s'", path, fmt, NM_CKPT_FORMAT,
                         NM_RUN_FORMAT);
    H5Fclose(f);
    if (rc == -1) rc = inspect_ckpt(path);
    return rc;
}
